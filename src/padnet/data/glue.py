"""GLUE data: the original TSV layout from a local directory, or the ``datasets`` library's ``glue``.

Local layout (what GLUE's ``download_glue_data.py`` writes)::

    <data_dir>/CoLA/{train,dev}.tsv     no header; label in column 1, sentence in column 3
    <data_dir>/SST-2/{train,dev}.tsv    sentence, label
    <data_dir>/MRPC/{train,dev}.tsv     Quality, #1 ID, #2 ID, #1 String, #2 String (header may start with a BOM)
    <data_dir>/STS-B/{train,dev}.tsv    10 columns; sentence1, sentence2, score (0..5)
    <data_dir>/QQP/{train,dev}.tsv      id, qid1, qid2, question1, question2, is_duplicate
    <data_dir>/MNLI/train.tsv, dev_matched.tsv, dev_mismatched.tsv   sentence1, sentence2, ..., gold_label
    <data_dir>/QNLI/{train,dev}.tsv     index, question, sentence, label
    <data_dir>/RTE/{train,dev}.tsv      index, sentence1, sentence2, label
    <data_dir>/WNLI/{train,dev}.tsv     index, sentence1, sentence2, label

Columns are found by header name where the file has a header, so extra columns (MNLI's label1..5) do
not matter. Fields are split on tabs with no quote handling, as GLUE's own readers do (sentences contain
quote characters). Label ids follow the ``datasets`` library's ``glue`` ClassLabel order, so a model
trained on one source evaluates correctly on the other.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import DataError, UsageError

SPLITS = ("train", "dev", "dev_matched", "dev_mismatched")


@dataclass(frozen=True)
class GlueTask:
    name: str  # canonical key, as in padnet.metrics.TASK_METRICS
    directory: str  # directory name in the GLUE layout
    text_a: str | int  # header name (or column index for header-less files)
    text_b: str | int | None
    label: str | int
    label_names: tuple[str, ...] | None  # id -> name (the datasets ClassLabel order); None = regression
    tsv_labels: tuple[str, ...] | None  # id -> the string the TSV holds
    header: bool = True
    hf_fields: tuple[str, str | None] = ("sentence", None)  # text columns of datasets' glue
    dev_splits: tuple[str, ...] = ("dev",)

    def __post_init__(self):
        if (self.label_names is None) != (self.tsv_labels is None):
            raise UsageError(f"GLUE task {self.name!r}: label_names and tsv_labels are both given (classification) "
                             "or both None (regression)")

    @property
    def num_labels(self) -> int:
        return 1 if self.label_names is None else len(self.label_names)

    @property
    def is_regression(self) -> bool:
        return self.label_names is None


_BINARY = ("0", "1")
TASKS: dict[str, GlueTask] = {
    t.name: t
    for t in [
        GlueTask("cola", "CoLA", 3, None, 1, ("unacceptable", "acceptable"), _BINARY, header=False),
        GlueTask("sst2", "SST-2", "sentence", None, "label", ("negative", "positive"), _BINARY),
        GlueTask("mrpc", "MRPC", "#1 String", "#2 String", "Quality", ("not_equivalent", "equivalent"), _BINARY,
                 hf_fields=("sentence1", "sentence2")),
        GlueTask("stsb", "STS-B", "sentence1", "sentence2", "score", None, None, hf_fields=("sentence1", "sentence2")),
        GlueTask("qqp", "QQP", "question1", "question2", "is_duplicate", ("not_duplicate", "duplicate"), _BINARY,
                 hf_fields=("question1", "question2")),
        GlueTask("mnli", "MNLI", "sentence1", "sentence2", "gold_label", ("entailment", "neutral", "contradiction"),
                 ("entailment", "neutral", "contradiction"), hf_fields=("premise", "hypothesis"),
                 dev_splits=("dev_matched", "dev_mismatched")),
        GlueTask("qnli", "QNLI", "question", "sentence", "label", ("entailment", "not_entailment"),
                 ("entailment", "not_entailment"), hf_fields=("question", "sentence")),
        GlueTask("rte", "RTE", "sentence1", "sentence2", "label", ("entailment", "not_entailment"),
                 ("entailment", "not_entailment"), hf_fields=("sentence1", "sentence2")),
        GlueTask("wnli", "WNLI", "sentence1", "sentence2", "label", ("not_entailment", "entailment"), _BINARY,
                 hf_fields=("sentence1", "sentence2")),
    ]
}

# Spellings people use: the directory names, the datasets config names, with or without dashes.
_ALIASES = {k: k for k in TASKS} | {t.directory.lower().replace("-", ""): k for k, t in TASKS.items()}


def get_task(name: str) -> GlueTask:
    """The task spec for ``name`` (``"RTE"``, ``"rte"``, ``"STS-B"``, ``"stsb"``, ... all work)."""
    key = str(name).lower().replace("-", "").replace("_", "")
    if key not in _ALIASES:
        raise UsageError(f"unknown GLUE task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[_ALIASES[key]]


@dataclass
class GlueExamples:
    """One split of one task: raw texts and label ids (floats for STS-B)."""

    task: str
    split: str
    text_a: list[str]
    text_b: list[str] | None
    labels: list
    source: str = ""

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, n: int | None, seed: int = 0) -> "GlueExamples":
        """A random subset of ``n`` examples (all of them when ``n`` is None or >= len), seeded."""
        if n is None or n >= len(self):
            return self
        if n <= 0:
            raise UsageError(f"subset size must be positive; got {n}")
        idx = sorted(random.Random(seed).sample(range(len(self)), n))
        pick = lambda xs: [xs[i] for i in idx]  # noqa: E731
        return GlueExamples(self.task, self.split, pick(self.text_a), pick(self.text_b) if self.text_b else None,
                            pick(self.labels), f"{self.source} (subset of {n}, seed {seed})")


def _resolve_split(task: GlueTask, split: str) -> str:
    if split in ("validation", "dev"):
        split = task.dev_splits[0]
    allowed = ("train",) + task.dev_splits
    if split not in allowed:
        raise UsageError(f"split={split!r} is not available for GLUE task {task.name!r}; allowed: {', '.join(allowed)}")
    return split


def tsv_path(task: str | GlueTask, split: str, data_dir: str | Path) -> Path:
    """The TSV file of ``task``/``split`` under ``data_dir``; FileNotFoundError says where it looked."""
    spec = task if isinstance(task, GlueTask) else get_task(task)
    split = _resolve_split(spec, split)
    data_dir = Path(data_dir)
    candidates = [data_dir / spec.directory / f"{split}.tsv", data_dir / f"{split}.tsv"]
    if data_dir.name.lower().replace("-", "") != spec.directory.lower().replace("-", ""):
        candidates = candidates[:1]  # a bare <split>.tsv counts only inside the task's own directory
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise FileNotFoundError(
            f"GLUE {spec.directory} {split} file not found; looked for {', '.join(str(p) for p in candidates)} "
            f"(data_dir={str(data_dir)!r} should hold the GLUE layout, e.g. {spec.directory}/{split}.tsv)"
        )
    return path


def read_tsv(task: str | GlueTask, split: str, data_dir: str | Path, on_error: str = "raise") -> GlueExamples:
    """Read ``<data_dir>/<TaskDir>/<split>.tsv`` (``data_dir`` may also be the task's own directory).

    ``on_error="skip"`` drops malformed rows (QQP's train file has a few) instead of raising.
    """
    spec = task if isinstance(task, GlueTask) else get_task(task)
    split = _resolve_split(spec, split)
    if on_error not in ("raise", "skip"):
        raise UsageError(f"on_error={on_error!r} is not supported; allowed: 'raise', 'skip'")
    path = tsv_path(spec, split, data_dir)
    lines = _tsv_lines(path)
    columns, width = _columns(spec, path, lines)
    start = 1 if spec.header else 0
    text_a: list[str] = []
    text_b: list[str] | None = [] if spec.text_b is not None else None
    labels: list[int | float] = []
    for lineno, line in enumerate(lines[start:], start=start + 1):
        fields = line.rstrip("\r").split("\t")
        label, problem = _parse_row(spec, fields, columns, width)
        if problem is not None:
            if on_error == "skip":
                continue
            raise DataError(f"{path}:{lineno}: malformed GLUE {spec.directory} row: {problem}")
        text_a.append(fields[columns["text_a"]])
        if text_b is not None:
            text_b.append(fields[columns["text_b"]])
        labels.append(label)
    if not labels:
        raise DataError(f"{path}: no examples (every row was empty or skipped)")
    return GlueExamples(spec.name, split, text_a, text_b, labels, str(path))


def _tsv_lines(path: Path) -> list[str]:
    """The file's lines (UTF-8, a BOM dropped), without the empty one after a final newline."""
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8-sig")  # utf-8-sig drops MRPC's BOM
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text ({err.reason} at byte {err.start}); GLUE TSV files are "
                        "UTF-8") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def _columns(spec: GlueTask, path: Path, lines: list[str]) -> tuple[dict[str, int], int | None]:
    """({role: column index} for text_a, text_b and label, the number of fields a row must have), from
    the header line; without a header (CoLA) the spec's fixed columns, and None (rows have 4 fields)."""
    if not spec.header:
        if not isinstance(spec.text_a, int) or not isinstance(spec.label, int):
            raise UsageError(f"GLUE task {spec.name!r} has no header line, so its columns must be indices")
        return {"text_a": spec.text_a, "label": spec.label}, None
    if not lines:
        raise DataError(f"{path}: empty file; expected a header line")
    header = lines[0].rstrip("\r").split("\t")
    columns = {}
    for role in ("text_a", "text_b", "label"):
        col = getattr(spec, role)
        if col is None:
            continue
        if col not in header:
            raise DataError(f"{path}:1: header has no column {col!r} (GLUE {spec.directory} needs it); "
                             f"header: {header}")
        columns[role] = header.index(col)
    return columns, len(header)


def _parse_row(spec: GlueTask, fields: list[str], columns: dict[str, int], width: int | None):
    """(the row's label, None), or (None, what is wrong with the row)."""
    need = max(columns.values()) + 1
    if width is not None and len(fields) != width:
        return None, f"has {len(fields)} tab-separated fields; the header has {width}"
    if width is None and len(fields) != 4:
        return None, f"has {len(fields)} tab-separated fields; GLUE {spec.directory} rows have 4"
    if len(fields) < need:
        return None, f"has {len(fields)} fields; need at least {need}"
    raw = fields[columns["label"]].strip()
    if spec.tsv_labels is not None:  # classification: only the regression task (STS-B) has no TSV labels
        if raw not in spec.tsv_labels:
            return None, f"label {raw!r} is out of range; allowed: {', '.join(map(repr, spec.tsv_labels))}"
        return spec.tsv_labels.index(raw), None
    try:
        label = float(raw)
    except ValueError:
        return None, f"label {raw!r} is not a number"
    if not 0.0 <= label <= 5.0:
        return None, f"score {label} is out of range; STS-B scores lie in [0, 5]"
    return label, None


def load_hf(task: str | GlueTask, split: str) -> GlueExamples:
    """The same split from the ``datasets`` library's ``glue`` (needs the network or its cache)."""
    spec = task if isinstance(task, GlueTask) else get_task(task)
    split = _resolve_split(spec, split)
    try:
        import datasets
    except ImportError as err:  # optional: only the online path needs it
        raise ImportError("loading GLUE without data_dir needs the `datasets` package (pip install datasets); "
                          "or pass data_dir=<a directory in the GLUE TSV layout>") from err
    hf_split = {"train": "train", "dev": "validation", "dev_matched": "validation_matched",
                "dev_mismatched": "validation_mismatched"}[split]
    ds = datasets.load_dataset("glue", spec.name, split=hf_split)
    a, b = spec.hf_fields
    labels = [float(x) for x in ds["label"]] if spec.is_regression else [int(x) for x in ds["label"]]
    return GlueExamples(spec.name, split, list(ds[a]), list(ds[b]) if b else None, labels, f"datasets:glue/{spec.name}")


def load_glue(task: str, split: str, data_dir: str | Path | None = None, on_error: str = "raise") -> GlueExamples:
    """Local TSV when ``data_dir`` is given, else the ``datasets`` library's ``glue``."""
    if data_dir is not None:
        return read_tsv(task, split, data_dir, on_error)
    return load_hf(task, split)


# ----------------------------------------------------------------------------- tokenisation
@dataclass
class TokenizedGlue(torch.utils.data.Dataset):
    """Tokenised examples; items are dicts of 1-D lists, padded per batch by ``collate``."""

    features: list[dict]
    pad_token_id: int = 0
    is_regression: bool = False
    task: str = ""

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict:
        return self.features[i]

    def collate(self, items: list[dict]) -> dict[str, torch.Tensor]:
        """Pad to the longest sequence of the batch (not to max_length): short tasks run much faster."""
        longest = max(len(it["input_ids"]) for it in items)
        batch: dict[str, torch.Tensor] = {}
        for key in items[0]:
            if key == "labels":
                dtype = torch.float32 if self.is_regression else torch.long
                batch[key] = torch.tensor([it[key] for it in items], dtype=dtype)
                continue
            pad = self.pad_token_id if key == "input_ids" else 0
            batch[key] = torch.tensor([it[key] + [pad] * (longest - len(it[key])) for it in items], dtype=torch.long)
        return batch


def tokenize(examples: GlueExamples, tokenizer, max_length: int = 128, regression: bool | None = None) -> TokenizedGlue:
    """Tokenise with the model's tokenizer, truncating pairs to ``max_length`` tokens (every text task:
    GLUE and ``text_classification``). ``regression``: float labels; None: as the GLUE task says."""
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 8:
        raise UsageError(f"max_length={max_length!r} must be an integer >= 8")
    enc = tokenizer(examples.text_a, examples.text_b, truncation=True, max_length=max_length, padding=False)
    keys = [k for k in ("input_ids", "token_type_ids", "attention_mask") if k in enc]
    features = [{k: list(enc[k][i]) for k in keys} | {"labels": examples.labels[i]} for i in range(len(examples))]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    if regression is None:
        regression = get_task(examples.task).is_regression
    return TokenizedGlue(features, pad_id, regression, examples.task)
