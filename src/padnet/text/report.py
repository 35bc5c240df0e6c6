"""How GLUE runs appear in ``padnet report`` (``padnet.report``): one sub-task per GLUE task (MNLI's
mismatched dev set is its own), one column per method, every metric of the task and its score, and the
majority-class floor.

    padnet report runs/glue_sweep --out docs/results/text.md --copy-results docs/results/text \\
        --title "Text results: PAD-MoE on GLUE"

Methods are named by the run's dynamic mode (static = dense fine-tuning, dynamic = fully dynamic MoE,
pad = PAD-MoE at its kappa). Scores are x100, as GLUE reports them, with one decimal.
"""

from __future__ import annotations

import numpy as np

from ..metrics import TASK_METRICS, glue_metrics
from ..report.collect import TaskView, register_view
from .glue_task import metric_key

TASK_ORDER = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "mnli_mm", "qnli", "rte", "wnli")


def method_of(result: dict) -> str:
    """'dense', 'MoE' or 'PAD-MoE k=<kappa>' (', W_s from experts' with ``partition.static_init: dynamic_mean``)."""
    mode = result["mode"]
    if mode == "static":
        return "dense"
    if mode == "dynamic":
        return "MoE"
    name = f"PAD-MoE k={result['target_dynamic_ratio']:g}"
    config = result.get("config") or {}
    if (config.get("dynamic") or {}).get("granularity") == "channel":
        name += ", channel"
    if (config.get("partition") or {}).get("static_init") == "dynamic_mean":
        name += ", W_s from experts"
    return name


def glue_task_of(result: dict) -> str:
    """The GLUE task, with MNLI's mismatched dev set as 'mnli_mm'."""
    return metric_key(result["info"]["glue_task"], result["config"]["glue"].get("eval_split"))


def metrics_of(result: dict) -> tuple[str, ...]:
    """The task's metrics, and its score (their mean) when there are several."""
    metrics = TASK_METRICS[glue_task_of(result)]
    return tuple(metrics) + (("score",) if len(metrics) > 1 else ())


def majority_scores(results: list[dict]) -> dict[str, float]:
    """The score of always predicting the most frequent dev label (classification) or the mean
    score (STS-B: correlations are 0), on the same dev examples the runs used."""
    from ..data import glue as glue_data

    out = {}
    for r in results:
        g = r["config"]["glue"]
        task = r["info"]["glue_task"]
        if task in out or g.get("data_dir") is None:
            continue
        try:
            dev = glue_data.read_tsv(task, g["eval_split"], g["data_dir"]).subset(g["eval_subset"], g["subset_seed"])
        except (FileNotFoundError, ValueError):
            continue
        labels = np.asarray(dev.labels)
        if glue_data.get_task(task).is_regression:
            out[task] = 0.0
        else:
            majority = np.bincount(labels.astype(int)).argmax()
            out[task] = glue_metrics(task, labels, np.full_like(labels, majority))["score"]
    return out


GLUE_VIEW = TaskView(label=method_of, subtask=glue_task_of, metrics=metrics_of, eval_name="dev", decimals=1,
                     subtask_order=TASK_ORDER, floor=majority_scores, floor_name="majority", label_name="method",
                     about="Methods: dense = static fine-tuning, MoE = fully dynamic (upcycled experts), PAD-MoE "
                           "k = PAD at dynamic ratio kappa. A task's score is the mean of its metrics (GLUE's "
                           "convention); majority = the score of always predicting the most frequent dev label "
                           "(STS-B: 0).")
register_view("glue", GLUE_VIEW)
