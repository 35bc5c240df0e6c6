"""Statistics over seeds: mean and sample standard deviation, and paired differences with a 95 %
t-interval (a small table of Student's t quantiles, so reports need no scipy)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..errors import UsageError

# The 0.975 quantile of Student's t for 1..30 degrees of freedom (two-sided 95 %).
_T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
         2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
         2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)
_Z975 = 1.959963984540054


def t_quantile_975(df: int) -> float:
    """Student's t 0.975 quantile for ``df`` degrees of freedom (the half width of a 95 % interval in
    standard errors). Exact to 4 decimals: the table up to 30, a Cornish-Fisher expansion above.

    Args:
        df: degrees of freedom, >= 1 (n - 1 for n paired seeds).
    """
    if not isinstance(df, int) or isinstance(df, bool) or df < 1:
        raise UsageError(f"df={df!r} must be an integer >= 1")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return (z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)
            + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * df ** 3))


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
        n = len(values)
        mean = sum(values) / n
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else float("nan")
        return cls(mean, std, n)


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
    ordered = sorted(values)
    n = len(ordered)
    if not n:
        return float("nan")
    return ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
