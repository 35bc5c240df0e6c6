"""GLUE metrics against values computed by hand, and against scikit-learn/scipy called directly."""

import json
import math
import subprocess
import sys
import warnings

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as sklearn_metrics

from padnet.metrics import (
    accuracy,
    f1,
    glue_average,
    glue_metrics,
    macro_f1,
    matthews_corrcoef,
    pearson,
    spearman,
)


def test_accuracy():
    assert accuracy([0, 1, 1, 0], [0, 1, 0, 0]) == 0.75


def test_f1_of_the_positive_class():
    # tp = 2, fp = 1, fn = 1 -> 2*2 / (2*2 + 1 + 1)
    assert f1([1, 1, 0, 0, 1], [1, 0, 1, 0, 1]) == pytest.approx(2 / 3)
    assert f1([0, 0], [0, 0]) == 0.0  # no positives at all: defined as 0


def test_matthews_binary_by_hand():
    # tp = 2, tn = 1, fp = 1, fn = 1 -> (2*1 - 1*1) / sqrt(3 * 3 * 2 * 2) = 1/6
    y_true = [1, 1, 1, 0, 0]
    y_pred = [1, 1, 0, 1, 0]
    assert matthews_corrcoef(y_true, y_pred) == pytest.approx(1 / 6)
    assert matthews_corrcoef([1, 0, 1, 0], [1, 0, 1, 0]) == pytest.approx(1.0)
    assert matthews_corrcoef([1, 0, 1, 0], [0, 1, 0, 1]) == pytest.approx(-1.0)


def test_matthews_is_zero_for_a_constant_prediction():
    # CoLA's degenerate case: a model that always answers "acceptable" scores 0, not NaN.
    assert matthews_corrcoef([1, 0, 1, 1], [1, 1, 1, 1]) == 0.0


def test_undefined_metrics_are_zero_without_a_warning():
    # A constant input leaves MCC and the correlations undefined (sklearn warns about a single label,
    # scipy warns and returns nan); F1 with no positive at all divides by zero. Each is reported as 0.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert matthews_corrcoef([1, 1, 1], [1, 1, 1]) == 0.0
        assert matthews_corrcoef([0, 1, 0], [1, 1, 1]) == 0.0
        assert matthews_corrcoef([1], [0]) == 0.0
        assert f1([0, 0, 2], [0, 2, 0]) == 0.0
        for corr in (pearson, spearman):
            assert corr([1.0, 2.0, 3.0], [0.5, 0.5, 0.5]) == 0.0
            assert corr([2.0, 2.0], [1.0, 3.0]) == 0.0
            assert corr([1.0], [1.0]) == 0.0


def test_f1_of_one_class_among_several_and_macro_f1():
    # class 0: F1 1; classes 1 and 2: tp = fp = fn = 1 -> 1/2 each
    y_true, y_pred = [0, 1, 1, 2, 2], [0, 1, 2, 2, 1]
    assert f1(y_true, y_pred) == pytest.approx(1 / 2)
    assert f1(y_true, y_pred, positive=2) == pytest.approx(1 / 2)
    assert macro_f1(y_true, y_pred) == pytest.approx((1 + 1 / 2 + 1 / 2) / 3)
    assert macro_f1([0, 1, 1], [0, 1, 3]) == pytest.approx((1 + 2 / 3 + 0) / 3)  # a class only predicted counts


def test_metrics_are_python_floats():
    values = [f1([1, 0], [1, 1]), macro_f1([1, 0], [1, 1]), matthews_corrcoef([1, 0, 1], [1, 0, 0]),
              pearson([1, 2, 3], [1, 3, 2]), spearman([1, 2, 3], [1, 3, 2])]
    assert all(type(v) is float for v in values)


def test_pearson_by_hand():
    # dx = (-1, 0, 1), dy = (-4/3, -1/3, 5/3): r = 3 / sqrt(2 * 42/9) = 9 / sqrt(84)
    assert pearson([1, 2, 3], [1, 2, 4]) == pytest.approx(9 / math.sqrt(84))


def test_spearman_averages_tied_ranks():
    # ranks of y = (2, 3.5, 3.5, 1): r = -1.5 / sqrt(5 * 4.5)
    assert spearman([1, 2, 3, 4], [10, 20, 20, 5]) == pytest.approx(-1.5 / math.sqrt(22.5))


def test_task_metrics_and_score():
    m = glue_metrics("MRPC", [1, 1, 0, 0, 1], [1, 0, 1, 0, 1])
    assert set(m) == {"accuracy", "f1", "score"}
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["score"] == pytest.approx((0.6 + 2 / 3) / 2)
    s = glue_metrics("sts-b", [1, 2, 3], [1, 2, 4])
    assert s["score"] == pytest.approx((9 / math.sqrt(84) + 1.0) / 2)  # spearman: same order -> 1
    assert set(glue_metrics("cola", [1, 0], [1, 0])) == {"mcc", "score"}
    assert set(glue_metrics("rte", [1, 0], [1, 0])) == {"accuracy", "score"}


def test_glue_average():
    assert glue_average({"rte": 0.6, "cola": {"mcc": 0.2, "score": 0.2}}) == pytest.approx(0.4)
    assert glue_average([0.5, 0.7, 0.9]) == pytest.approx(0.7)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: glue_metrics("squad", [1], [1]), "known tasks"),
        (lambda: accuracy([1, 0], [1]), "same length"),
        (lambda: accuracy([], []), "at least one"),
        (lambda: glue_average({}), "at least one"),
    ],
)
def test_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_against_sklearn_and_scipy_on_random_data():
    rng = np.random.default_rng(0)
    for _ in range(5):
        t, p = rng.integers(0, 3, 200), rng.integers(0, 3, 200)
        assert matthews_corrcoef(t, p) == pytest.approx(sklearn_metrics.matthews_corrcoef(t, p))
        b, c = rng.integers(0, 2, 200), rng.integers(0, 2, 200)
        assert f1(b, c) == pytest.approx(sklearn_metrics.f1_score(b, c))
        x, y = rng.normal(size=100), rng.integers(0, 6, 100).astype(float)  # ties in y
        assert pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0])
        assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0])


@pytest.mark.slow  # a fresh interpreter
def test_importing_the_metrics_leaves_scipy_and_sklearn_for_when_a_metric_is_computed():
    """1.5 s of imports that `padnet config --explain` would otherwise pay for the text tasks' settings."""
    code = ("import json, sys, padnet\n"
            "heavy = lambda: [m for m in ('scipy.stats', 'sklearn.metrics') if m in sys.modules]\n"
            "before = heavy()\n"
            "import padnet.metrics, padnet.text\n"
            "after = heavy()\n"
            "padnet.metrics.matthews_corrcoef([0, 1, 1], [0, 1, 0])\n"
            "print(json.dumps([before, after, heavy()]))")
    before, after, used = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                                    check=True).stdout)
    if before:
        pytest.skip(f"importing padnet already imports {before}")
    assert after == [] and "sklearn.metrics" in used
