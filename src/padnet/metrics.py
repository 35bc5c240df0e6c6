"""GLUE metrics, computed as the GLUE benchmark defines them, with numpy only.

Per task (``TASK_METRICS``): CoLA Matthews correlation; STS-B Pearson and Spearman correlation;
MRPC and QQP accuracy and F1 (of the positive class, label 1); every other task accuracy.
A task's score is the mean of its metrics (GLUE's leaderboard convention), and the GLUE average
is the mean of the task scores. Scores are fractions in [-1, 1] (x100 for the usual table).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .errors import UsageError

TASK_METRICS: dict[str, tuple[str, ...]] = {
    "cola": ("mcc",),
    "sst2": ("accuracy",),
    "mrpc": ("accuracy", "f1"),
    "stsb": ("pearson", "spearman"),
    "qqp": ("accuracy", "f1"),
    "mnli": ("accuracy",),
    "mnli_mm": ("accuracy",),
    "qnli": ("accuracy",),
    "rte": ("accuracy",),
    "wnli": ("accuracy",),
    "ax": ("mcc",),
}


def _pair(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(y_true), np.asarray(y_pred)
    if a.ndim != 1 or a.shape != b.shape:
        raise UsageError(f"y_true and y_pred must be 1-D of the same length; got shapes {a.shape} and {b.shape}")
    if a.size == 0:
        raise UsageError("metrics need at least one example; got none")
    return a, b


def accuracy(y_true, y_pred) -> float:
    a, b = _pair(y_true, y_pred)
    return float(np.mean(a == b))


def f1(y_true, y_pred, positive=1) -> float:
    """F1 of the positive class; 0 when there are no true and no predicted positives (sklearn's choice)."""
    a, b = _pair(y_true, y_pred)
    tp = np.sum((a == positive) & (b == positive))
    fp = np.sum((a != positive) & (b == positive))
    fn = np.sum((a == positive) & (b != positive))
    denom = 2 * tp + fp + fn
    return float(2 * tp / denom) if denom else 0.0


def matthews_corrcoef(y_true, y_pred) -> float:
    """Matthews correlation for binary or multi-class labels (Gorodkin's R_K); 0 when undefined
    (a constant prediction or a constant truth), as sklearn and GLUE report it."""
    a, b = _pair(y_true, y_pred)
    classes, idx = np.unique(np.concatenate([a, b]), return_inverse=True)
    t, p = idx[: a.size], idx[a.size :]
    c = np.zeros((classes.size, classes.size), dtype=np.float64)
    np.add.at(c, (t, p), 1)
    n = c.sum()
    true_k, pred_k = c.sum(axis=1), c.sum(axis=0)
    cov_tp = np.trace(c) * n - true_k @ pred_k
    cov_tt = n * n - true_k @ true_k
    cov_pp = n * n - pred_k @ pred_k
    if cov_tt == 0 or cov_pp == 0:
        return 0.0
    return float(cov_tp / np.sqrt(cov_tt * cov_pp))


def pearson(x, y) -> float:
    a, b = _pair(x, y)
    a, b = a.astype(np.float64), b.astype(np.float64)
    da, db = a - a.mean(), b - b.mean()
    denom = np.sqrt((da * da).sum() * (db * db).sum())
    return float((da * db).sum() / denom) if denom else 0.0


def _rank(v: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (what Spearman's rho needs)."""
    ranks = np.empty(v.size, dtype=np.float64)
    ranks[np.argsort(v, kind="stable")] = np.arange(1, v.size + 1)
    _, inverse, counts = np.unique(v, return_inverse=True, return_counts=True)
    return (np.bincount(inverse, weights=ranks) / counts)[inverse]


def spearman(x, y) -> float:
    a, b = _pair(x, y)
    return pearson(_rank(a.astype(np.float64)), _rank(b.astype(np.float64)))


_FUNCS = {"accuracy": accuracy, "f1": f1, "mcc": matthews_corrcoef, "pearson": pearson, "spearman": spearman}


def glue_metrics(task: str, y_true, y_pred) -> dict[str, float]:
    """Every metric GLUE reports for ``task`` plus ``score`` (their mean).

    ``y_pred`` holds class ids for classification tasks and real scores for STS-B.
    """
    key = task.lower().replace("-", "")
    if key not in TASK_METRICS:
        raise UsageError(f"task={task!r} has no GLUE metric; known tasks: {', '.join(TASK_METRICS)}")
    out = {name: _FUNCS[name](y_true, y_pred) for name in TASK_METRICS[key]}
    out["score"] = float(np.mean(list(out.values())))
    return out


def glue_average(scores: Mapping[str, float | Mapping[str, float]] | Sequence[float]) -> float:
    """Mean of per-task scores: a mapping task -> score (or -> the dict ``glue_metrics`` returns)
    or a plain sequence of scores."""
    values = list(scores.values()) if isinstance(scores, Mapping) else list(scores)
    if not values:
        raise UsageError("glue_average needs at least one task score; got none")
    return float(np.mean([v["score"] if isinstance(v, Mapping) else v for v in values]))


def macro_f1(y_true, y_pred) -> float:
    """The unweighted mean over the classes present in ``y_true`` or ``y_pred`` of each class's F1."""
    a, b = _pair(y_true, y_pred)
    return float(np.mean([f1(a, b, positive=c) for c in np.unique(np.concatenate([a, b]))]))


def mse(y_true, y_pred) -> float:
    a, b = _pair(y_true, y_pred)
    return float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))


_FUNCS |= {"macro_f1": macro_f1, "mse": mse}
CLASSIFICATION_METRICS = ("accuracy", "macro_f1", "mcc")
REGRESSION_METRICS = ("mse", "pearson", "spearman")


def compute_metrics(names: Sequence[str], y_true, y_pred) -> dict[str, float]:
    """The metrics ``names`` (keys of accuracy, f1, macro_f1, mcc, mse, pearson, spearman) of predictions."""
    unknown = [n for n in names if n not in _FUNCS]
    if unknown:
        raise UsageError(f"unknown metric {unknown[0]!r}; known: {', '.join(_FUNCS)}")
    return {name: _FUNCS[name](y_true, y_pred) for name in names}
