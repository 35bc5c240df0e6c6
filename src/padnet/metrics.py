"""GLUE metrics, computed as the GLUE benchmark defines them: scikit-learn's MCC and F1, scipy's Pearson
and Spearman correlations.

Per task (``TASK_METRICS``): CoLA Matthews correlation; STS-B Pearson and Spearman correlation;
MRPC and QQP accuracy and F1 (of the positive class, label 1); every other task accuracy.
A task's score is the mean of its metrics (GLUE's leaderboard convention), and the GLUE average
is the mean of the task scores. Scores are fractions in [-1, 1] (x100 for the usual table).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .errors import UsageError

# scipy.stats and sklearn.metrics are imported where a metric is computed: together they take 1.5 s to
# import here, which a command that only reads the text tasks' settings (`padnet config --explain`, a GLUE
# sweep's `--dry-run`) would otherwise pay.

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


def _floats(x, y) -> tuple[np.ndarray, np.ndarray]:
    """The pair in float64 (scipy computes in its inputs' precision, float32 predictions included)."""
    a, b = _pair(x, y)
    return a.astype(np.float64), b.astype(np.float64)


def _constant(v: np.ndarray) -> bool:
    return bool((v == v[0]).all())


def f1(y_true, y_pred, positive=1) -> float:
    """F1 of the class ``positive`` (one against the rest, so labels may have more classes); 0 when there
    are no true and no predicted positives (sklearn's ``zero_division=0``)."""
    from sklearn.metrics import f1_score

    a, b = _pair(y_true, y_pred)
    return float(f1_score(a, b, labels=[positive], average="macro", zero_division=0.0))


def matthews_corrcoef(y_true, y_pred) -> float:
    """Matthews correlation for binary or multi-class labels (Gorodkin's R_K); 0 when undefined
    (a constant prediction or a constant truth), as sklearn and GLUE report it."""
    from sklearn.metrics import matthews_corrcoef as sklearn_mcc

    a, b = _pair(y_true, y_pred)
    if _constant(a) or _constant(b):
        return 0.0  # what sklearn returns, without its warning about a single label in both
    return float(sklearn_mcc(a, b))


def pearson(x, y) -> float:
    """Pearson's r; 0 when undefined (a constant input), where scipy warns and returns nan."""
    from scipy.stats import pearsonr

    a, b = _floats(x, y)
    return 0.0 if _constant(a) or _constant(b) else float(pearsonr(a, b).statistic)


def spearman(x, y) -> float:
    """Spearman's rho (ties get their average rank); 0 when undefined (a constant input), where scipy
    warns and returns nan."""
    from scipy.stats import spearmanr

    a, b = _floats(x, y)
    return 0.0 if _constant(a) or _constant(b) else float(spearmanr(a, b).statistic)


def macro_f1(y_true, y_pred) -> float:
    """The unweighted mean over the classes present in ``y_true`` or ``y_pred`` of each class's F1."""
    from sklearn.metrics import f1_score

    a, b = _pair(y_true, y_pred)
    return float(f1_score(a, b, average="macro"))


def mse(y_true, y_pred) -> float:
    a, b = _floats(y_true, y_pred)
    return float(np.mean((a - b) ** 2))


_FUNCS = {"accuracy": accuracy, "f1": f1, "macro_f1": macro_f1, "mcc": matthews_corrcoef, "mse": mse,
          "pearson": pearson, "spearman": spearman}
CLASSIFICATION_METRICS = ("accuracy", "macro_f1", "mcc")
REGRESSION_METRICS = ("mse", "pearson", "spearman")


def glue_metrics(task: str, y_true, y_pred) -> dict[str, float]:
    """Every metric GLUE reports for ``task`` plus ``score`` (their mean).

    ``y_pred`` holds class ids for classification tasks and real scores for STS-B.
    """
    key = task.lower().replace("-", "")
    if key not in TASK_METRICS:
        raise UsageError(f"task={task!r} has no GLUE metric; known tasks: {', '.join(TASK_METRICS)}")
    out = compute_metrics(TASK_METRICS[key], y_true, y_pred)
    out["score"] = float(np.mean(list(out.values())))
    return out


def glue_average(scores: Mapping[str, float | Mapping[str, float]] | Sequence[float]) -> float:
    """Mean of per-task scores: a mapping task -> score (or -> the dict ``glue_metrics`` returns)
    or a plain sequence of scores."""
    values = list(scores.values()) if isinstance(scores, Mapping) else list(scores)
    if not values:
        raise UsageError("glue_average needs at least one task score; got none")
    return float(np.mean([v["score"] if isinstance(v, Mapping) else v for v in values]))


def compute_metrics(names: Sequence[str], y_true, y_pred) -> dict[str, float]:
    """The metrics ``names`` (keys of accuracy, f1, macro_f1, mcc, mse, pearson, spearman) of predictions."""
    unknown = [n for n in names if n not in _FUNCS]
    if unknown:
        raise UsageError(f"unknown metric {unknown[0]!r}; known: {', '.join(_FUNCS)}")
    return {name: _FUNCS[name](y_true, y_pred) for name in names}
