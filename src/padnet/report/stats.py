"""Statistics over seeds: mean and sample standard deviation, and paired differences with a 95 %
t-interval (Student's t quantile from scipy)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# scipy.stats.t.ppf(q, df) is special.stdtrit(df, q); scipy.special imports in a fifth of scipy.stats' time.
from scipy.special import stdtrit

from ..errors import UsageError


def t_quantile_975(df: int) -> float:
    """Student's t 0.975 quantile for ``df`` degrees of freedom (the half width of a 95 % interval in
    standard errors), ``scipy.stats.t.ppf(0.975, df)``.

    Args:
        df: degrees of freedom, >= 1 (n - 1 for n paired seeds).
    """
    if not isinstance(df, int) or isinstance(df, bool) or df < 1:
        raise UsageError(f"df={df!r} must be an integer >= 1")
    return float(stdtrit(df, 0.975))


@dataclass(frozen=True)
class Stat:
    """Mean, sample standard deviation (nan for one value) and count of some per-seed values."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        if not values:
            raise UsageError("a statistic needs at least one value")
        v = np.asarray(values, dtype=np.float64)
        with np.errstate(invalid="ignore"):  # an infinite value: std nan (inf - inf), silently
            std = float(v.std(ddof=1)) if v.size > 1 else float("nan")
        return cls(float(v.mean()), std, v.size)


@dataclass(frozen=True)
class PairedDifference:
    """``value(seed) - baseline(seed)`` over the seeds both have: mean, std, n and the 95 % t-interval
    of the mean difference (``low``/``high`` are nan below two pairs)."""

    seeds: tuple[int, ...]
    differences: tuple[float, ...]
    mean: float
    std: float
    n: int
    low: float
    high: float


def paired_difference(values: Mapping[int, float], baseline: Mapping[int, float]) -> PairedDifference | None:
    """The difference to a baseline matched by seed: the same seed means the same initialisation and data
    order, so per-seed differences cancel part of the seed noise. None when no seed is shared.

    Args:
        values: {seed: metric} of the configuration.
        baseline: {seed: metric} of the baseline configuration.
    """
    seeds = tuple(sorted(s for s in values if s in baseline))
    if not seeds:
        return None
    diffs = tuple(values[s] - baseline[s] for s in seeds)
    stat = Stat.of(diffs)
    if stat.n < 2:
        return PairedDifference(seeds, diffs, stat.mean, stat.std, stat.n, float("nan"), float("nan"))
    half = t_quantile_975(stat.n - 1) * stat.std / math.sqrt(stat.n)
    return PairedDifference(seeds, diffs, stat.mean, stat.std, stat.n, stat.mean - half, stat.mean + half)


def median(values: Sequence[float]) -> float:
    """The median (nan for no values): times are medians, so one run slowed by other load on the
    machine does not move them."""
    return statistics.median(values) if values else float("nan")
