"""``padnet.predict(model_or_path, inputs)`` and ``padnet predict``: a trained model on new inputs.

An exported model file (``padnet export``) records what prediction needs under ``predict`` (see
``padnet.train.tasks.TaskParts.predict``): the task, the label names, and how inputs become tensors,
either an image preprocessing record (``padnet.data.transforms``) or a text record
(``{"kind": "text", "tokenizer": ..., "max_length": ..., "columns": [...]}``). Nothing is copied by hand.

Images: inputs are image files or folders (searched recursively, hidden files skipped, sorted).
Text: inputs are strings, or ``(text, text_pair)`` pairs for pair tasks; ``read_text_inputs`` reads them
from files (one example per line, or a CSV/TSV/JSON-lines file with the recorded text columns).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from .data.transforms import predict_record_problem
from .errors import DataError, ModelFileError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def prediction_spec(model: nn.Module, where: str = "the model") -> dict:
    """``model.padnet_predict`` (set by ``padnet.load`` from the file), checked."""
    spec = getattr(model, "padnet_predict", None)
    if spec is None:
        raise ModelFileError(where, "records nothing about its inputs (no 'predict' entry); export it with "
                                    "`padnet export` of this padnet, whose task records its preprocessing")
    problem = predict_record_problem(spec)
    if problem:
        raise ModelFileError(where, problem)
    return spec


def predict(model_or_path: nn.Module | str | os.PathLike[str], inputs: Iterable | str | os.PathLike[str],
            batch_size: int = 32, device: str = "cpu", progress: bool = False,
            tokenizer: str | None = None) -> list[dict]:
    """Predict a label (and its probability) or, for regression, a value per input.

    Args:
        model_or_path: a model file written by ``padnet export`` (or ``padnet.save`` of a model with
            ``padnet_predict``), or a model ``padnet.load`` returned.
        inputs: image models: paths of images or folders of images; text models: strings (or
            ``(text, text_pair)`` tuples).
        batch_size: inputs per forward pass.
        device: where the model runs ("cpu", "cuda").
        progress: show a tqdm bar.
        tokenizer: text models: the tokenizer (a name, or a folder you trust) instead of the one the file
            records; needed when the file names a folder, which padnet never loads on the file's say-so.

    Returns one dict per input, in order: ``{"input", "label", "probability"}`` (classification) or
    ``{"input", "value"}`` (regression).
    """
    from .serialization import load

    where = str(model_or_path) if not isinstance(model_or_path, nn.Module) else "the model"
    model = model_or_path if isinstance(model_or_path, nn.Module) else load(model_or_path)
    spec = prediction_spec(model, where)
    model = model.to(device).eval()
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if spec["input"]["kind"] == "image":
        names, batches = _image_batches(spec["input"], list(inputs), batch_size)
    else:
        names, batches = _text_batches(spec["input"], list(inputs), batch_size, where, tokenizer)
    outputs = []
    with torch.no_grad():
        for batch in _progress(batches, len(names), batch_size, progress):
            outputs.append(_forward(model, batch, device).float().cpu())
    return _results(spec, names, torch.cat(outputs) if outputs else torch.zeros(0, 1), where)


def _progress(batches, total: int, batch_size: int, on: bool):
    if not on:
        return batches
    return tqdm(batches, total=-(-total // batch_size), desc="predict", unit="batch")


def _forward(model: nn.Module, batch, device: str) -> torch.Tensor:
    if isinstance(batch, dict):
        out = model(**{k: v.to(device) for k, v in batch.items()})
        return out.logits if hasattr(out, "logits") else out
    return model(batch.to(device))


def _results(spec: dict, names: list[str], logits: torch.Tensor, where: str) -> list[dict]:
    if spec.get("problem") == "regression":
        return [{"input": n, "value": float(v)} for n, v in zip(names, logits.reshape(len(names), -1)[:, 0])]
    labels = spec.get("label_names") or [str(i) for i in range(logits.shape[1])]
    if len(labels) != logits.shape[1]:
        raise ModelFileError(where, f"predict.label_names has {len(labels)} names but the model has "
                                    f"{logits.shape[1]} outputs")
    probs = torch.softmax(logits, dim=1)
    best = probs.argmax(1)
    return [{"input": n, "label": labels[int(k)], "probability": float(probs[i, k])}
            for i, (n, k) in enumerate(zip(names, best))]


# ----------------------------------------------------------------------------- images
def image_paths(inputs: Iterable) -> list[Path]:
    """Image files of ``inputs``: files as given, folders searched recursively (hidden entries skipped)."""
    out: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = []
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found += [Path(root) / f for f in sorted(files)
                          if not f.startswith(".") and f.lower().endswith(IMAGE_SUFFIXES)]
            if not found:
                raise DataError(f"{path}: no image files in this folder (looked for {', '.join(IMAGE_SUFFIXES)})")
            out += found
        elif path.is_file():
            out.append(path)
        elif path.exists():  # opening a FIFO would wait for a writer; a device would stream without end
            raise DataError(f"{path}: not a regular file (a FIFO or device); give image files or folders")
        else:
            raise DataError(f"{path}: no such image file or folder")
    return out


def _image_batches(record: dict, inputs: list, batch_size: int):
    from .data.folder import load_image
    from .data.transforms import eval_transform

    paths = image_paths(inputs)
    transform = eval_transform(record)

    def batches():
        for start in range(0, len(paths), batch_size):
            yield torch.stack([transform(load_image(str(p))) for p in paths[start:start + batch_size]])

    return [str(p) for p in paths], batches()


# ----------------------------------------------------------------------------- text
def _names_a_folder(name: str) -> bool:
    return os.path.isabs(name) or name.startswith((".", "~")) or Path(name).is_dir()


def _text_batches(record: dict, inputs: list, batch_size: int, where: str, chosen: str | None):
    from .models.transformers_models import load_tokenizer, local_files_only

    name = chosen if chosen is not None else record["tokenizer"]
    if chosen is None and _names_a_folder(name):
        # A folder's tokenizer files can name code (auto_map) or simply be another tokenizer: the user
        # chooses a folder, the file never does.
        raise ModelFileError(where, f"predict.input.tokenizer={name!r} names a folder, and padnet never loads a "
                                    "tokenizer from a folder a model file names: pass --tokenizer FOLDER (or "
                                    "padnet.predict(..., tokenizer=...)) if you trust it")
    with local_files_only(where):  # a tokenizer named by a file comes from the local cache or not at all
        try:
            tokenizer = load_tokenizer(name)
        except (OSError, ValueError, KeyError) as err:  # transformers' own errors: one line naming the field
            field = "--tokenizer" if chosen is not None else "predict.input.tokenizer"
            raise ModelFileError(where, f"{field}={name!r} cannot be loaded "
                                        f"({type(err).__name__}: {str(err)[:300]})") from None
    pairs = [tuple(x) if isinstance(x, (tuple, list)) else (x, None) for x in inputs]
    for text, pair in pairs:
        if not isinstance(text, str) or not (pair is None or isinstance(pair, str)):
            raise DataError(f"text input {str((text, pair))[:100]} must be a string or a (text, text_pair) pair")
    paired = len(record.get("columns", [])) > 1
    if paired and any(p is None for _, p in pairs):
        raise DataError(f"{where}: this model classifies pairs of texts ({' + '.join(record['columns'])}); give "
                        "(text, text_pair) tuples, or a CSV/TSV/JSON-lines file with those columns")
    def batches():
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start:start + batch_size]
            enc = tokenizer([a for a, _ in chunk], [b for _, b in chunk] if paired else None, truncation=True,
                            max_length=record["max_length"], padding=True, return_tensors="pt")
            yield {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}

    names = [a if b is None else f"{a} ||| {b}" for a, b in pairs]
    return names, batches()


def read_text_inputs(path: str | Path, columns: list[str]) -> list:
    """Examples from a file: CSV/TSV/JSON-lines with the ``columns`` (text, and text_pair for pair
    tasks), or any other file as one example per line (blank lines skipped)."""
    from .data.text_files import read_lines, read_records

    path = Path(path)
    if path.suffix.lower() in (".csv", ".tsv", ".jsonl"):
        rows = read_records(path, columns)
        return [row[columns[0]] if len(columns) == 1 else tuple(row[c] for c in columns) for _, row in rows]
    lines = [line.rstrip("\r\n") for _, line in read_lines(path) if line.strip()]
    if not lines:
        raise DataError(f"{path}: no examples (an empty file)")
    return lines


def format_results(results: list[dict], style: str) -> str:
    """``results`` as ``text`` (aligned columns), ``json`` or ``csv``."""
    if style == "json":
        return json.dumps(results, indent=2)
    keys = list(results[0]) if results else ["input", "label", "probability"]
    if style == "csv":
        import csv
        import io

        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=keys, lineterminator="\n")
        writer.writeheader()
        writer.writerows(results)
        return buffer.getvalue().rstrip("\n")
    lines = []
    for r in results:
        value = f"{r['label']}\t{r['probability']:.4f}" if "label" in r else f"{r['value']:.4f}"
        lines.append(f"{value}\t{r['input']}")
    return "\n".join(lines)
