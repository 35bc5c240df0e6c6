"""Labelled text examples from files or a ``datasets`` dataset: any label set, regression, a carved
validation split. Used by the ``text_classification`` task (``padnet.text.classification``)."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from pathlib import Path
from typing import Literal

from ..data.glue import GlueExamples
from ..data.text_files import read_records
from ..errors import DataError

Problem = Literal["auto", "classification", "regression"]


def _number(value) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


MAX_CLASSES = 10_000  # a classification head this wide is almost always a regression target or an id column


def is_regression(raw_labels: list, problem: str, source: str = "the training file") -> bool:
    """``problem`` resolved: ``auto`` is regression when every label is a number and one has a fraction
    (``0.5``, ``3.0``); integer labels (``0``, ``4``) and names are classes. A column that mixes
    fractional numbers with names is refused under ``auto`` (which did the file mean?)."""
    if problem != "auto":
        return problem == "regression"
    fractional = [v for v in raw_labels if _number(v) is not None and (isinstance(v, float) or "." in str(v))]
    names = [v for v in raw_labels if _number(v) is None]
    if fractional and names:
        raise DataError(f"{source}: the labels mix numbers ({fractional[0]!r}) and names ({names[0]!r}); set "
                        "text_classification.problem to classification or regression")
    return bool(fractional)


def label_name(value) -> str:
    """A label as its name: JSON integers and strings alike (``3`` and ``"3"`` are the same class)."""
    return str(value).strip()


def label_names(raw_labels: list, given: list[str] | None, source: str = "the training file") -> list[str]:
    """The class names in id order: ``given``, or the training labels sorted (numerically when all are integers)."""
    if given:
        return [str(g) for g in given]
    names = sorted({label_name(v) for v in raw_labels})
    if len(names) > MAX_CLASSES:
        raise DataError(f"{source}: the labels have {len(names):,} distinct values; classification takes at most "
                        f"{MAX_CLASSES:,} classes (a regression target? set text_classification.problem: regression)")
    if all(n.lstrip("-").isdigit() for n in names):
        names.sort(key=int)
    return names


def names_class_ids(raw_labels: list, given: list[str] | None) -> bool:
    """Whether ``given`` (``text_classification.labels``) names integer class ids rather than listing the
    labels themselves: every training label is an integer from 0 to len(given) - 1 and none is one of the
    names (``labels: [negative, positive]`` on a 0/1 column)."""
    if not given:
        return False
    values = {label_name(v) for v in raw_labels}
    return not values & {str(g) for g in given} and all(v.isdigit() and int(v) < len(given) for v in values)


def id_names(raw: list, names: list[str]) -> list:
    """Integer class ids as their names (``names_class_ids``); anything else as it is, for
    ``encode_labels`` to refuse with its line."""
    return [names[int(label_name(v))] if label_name(v).isdigit() and int(label_name(v)) < len(names) else v
            for v in raw]


def encode_labels(raw: list, lines: list, names: list[str] | None, source: str) -> list:
    """Class ids (``names`` given) or floats (regression, ``names`` None); DataError names the line."""
    out = []
    index = {n: i for i, n in enumerate(names or [])}
    for value, line in zip(raw, lines):
        if names is None:
            number = _number(value)
            if number is None or not math.isfinite(number):
                raise DataError(f"{source}:{line}: label {value!r} is not a finite number (a regression task)")
            out.append(number)
        elif isinstance(value, float) and not math.isfinite(value):
            raise DataError(f"{source}:{line}: label {value!r} is not a class name (JSON NaN or infinity)")
        elif label_name(value) in index:
            out.append(index[label_name(value)])
        else:
            raise DataError(f"{source}:{line}: label {label_name(value)!r} is not one of the training labels "
                            f"({', '.join(map(repr, names[:20]))}{', ...' if len(names) > 20 else ''})")
    return out


def read_file(path: str | Path, split: str, text: str, pair: str | None, label: str) -> tuple[GlueExamples, list, list]:
    """(examples with raw labels still to encode, the raw labels, their line numbers) of one file."""
    columns = [text] + ([pair] if pair else []) + [label]
    rows = read_records(path, columns)
    examples = GlueExamples("text_classification", split, [str(r[text]) for _, r in rows],
                            [str(r[pair]) for _, r in rows] if pair else None, [], str(path))
    return examples, [r[label] for _, r in rows], [n for n, _ in rows]


def read_dataset(name: str, config: str | None, split: str, text: str, pair: str | None,
                 label: str) -> tuple[GlueExamples, list, list]:
    """The same from the ``datasets`` library (online or its cache); ClassLabel ids become their names."""
    try:
        import datasets
    except ImportError as err:
        raise ImportError("text_classification.dataset needs the `datasets` package (pip install datasets); or "
                          "give train_file / validation_file") from err
    ds = datasets.load_dataset(name, config, split=split)
    missing = [c for c in [text, pair, label] if c and c not in ds.column_names]
    if missing:
        raise DataError(f"dataset {name}/{split}: no column {missing[0]!r}; it has {', '.join(ds.column_names)}")
    names = getattr(ds.features[label], "names", None)
    raw = [names[v] if names else v for v in ds[label]]
    source = f"datasets:{name}{'/' + config if config else ''}/{split}"
    examples = GlueExamples("text_classification", split, [str(t) for t in ds[text]],
                            [str(t) for t in ds[pair]] if pair else None, [], source)
    return examples, raw, [f"row {i + 1}" for i in range(len(raw))]


def carve(examples: GlueExamples, labels: list, fraction: float, seed: int, stratified: bool
          ) -> tuple[GlueExamples, GlueExamples]:
    """(train, validation): ``fraction`` of the examples held out, seeded; stratified keeps every class's
    share (each class with 2+ examples gives at least one)."""
    groups: dict = defaultdict(list)
    for i, y in enumerate(labels):
        groups[y if stratified else 0].append(i)
    rng = random.Random(seed)
    held = []
    for key in sorted(groups):
        members = groups[key]
        rng.shuffle(members)
        take = min(len(members) - 1, max(1 if len(members) > 1 else 0, round(fraction * len(members))))
        held += members[:take]
    if not held:
        raise DataError(f"{examples.source}: {len(labels)} examples are too few to carve a validation split from; "
                        "give a validation file")
    held_set = set(held)
    kept = [i for i in range(len(labels)) if i not in held_set]
    return _pick(examples, labels, kept, "train"), _pick(examples, labels, sorted(held), "validation")


def _pick(examples: GlueExamples, labels: list, idx: list[int], split: str) -> GlueExamples:
    return GlueExamples(examples.task, split, [examples.text_a[i] for i in idx],
                        [examples.text_b[i] for i in idx] if examples.text_b is not None else None,
                        [labels[i] for i in idx], f"{examples.source} ({split}: {len(idx)} carved examples)")
