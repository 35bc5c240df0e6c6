"""The report's figure: for one sub-task, the main metric against the dynamic ratio and against the
deployable parameters (one line per method family), and, when there is a baseline, each configuration's
paired difference to it with its 95 % t-interval; for several sub-tasks, grouped bars per sub-task (and
the average), with the floor (e.g. the majority class) as a dashed tick."""

from __future__ import annotations

import math
from pathlib import Path

from ..files import atomic_savefig
from .build import Report
from .stats import Stat
from .tables import metric_heading, metric_scale

MARKERS = {"static": "s", "DY-Conv (fully dynamic)": "D", "CondConv (fully dynamic)": "P", "MoE (fully dynamic)": "D"}


def plot(report: Report, path: str | Path, no_links_under: str | Path | None = None) -> Path:
    """Draw the report's figure and write it atomically as a PNG.

    Args:
        report: from ``build_report``.
        path: the PNG to write.
        no_links_under: refuse a symbolic link in ``path`` below this directory (see ``padnet.files.refuse_links``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if len(report.subtasks) > 1:
        fig, ax = plt.subplots(figsize=(max(5.0, 1.6 + 1.4 * (len(report.subtasks) + 1)), 4))
        _bars(report, ax)
    else:
        paired = [d for d in report.differences if d.subtask == report.subtasks[0]]
        fig, axes = plt.subplots(1, 3 if paired else 2, figsize=(15 if paired else 10, 4))
        _lines(report, axes[:2])
        if paired:
            _paired(report, paired, axes[2])
    fig.tight_layout()
    atomic_savefig(fig, path, no_links_under=no_links_under)  # closes the figure
    return Path(path)


def _lines(report: Report, axes) -> None:
    scale, subtask = metric_scale(report.main_metric), report.subtasks[0]
    families: dict[str, list] = {}
    for label in report.labels:
        g = report.group(subtask, label)
        assert g is not None  # one sub-task: every label's runs are on it
        families.setdefault(g.family, []).append(g)
    for family, groups in families.items():
        groups.sort(key=lambda g: g.dynamic_ratio or 0)
        stats = [g.stat(report.main_metric) for g in groups]
        y = [s.mean * scale for s in stats]
        err = [0 if math.isnan(s.std) else s.std * scale for s in stats]
        for ax, x in ((axes[0], [g.dynamic_ratio or 0 for g in groups]),
                      (axes[1], [g.parameters["deployable"] for g in groups])):
            ax.errorbar(x, y, yerr=err, marker=MARKERS.get(family, _marker(family)), capsize=3,
                        label=family, linestyle="-" if len(groups) > 1 else "none")
    floor = report.floors.get(subtask) if subtask is not None else None  # floors are per named sub-task
    for ax in axes:
        if floor is not None:
            ax.axhline(floor * scale, color="k", linestyle="dashed", linewidth=1, label=report.view.floor_name)
        ax.set_ylabel(metric_heading(report.main_metric, report.view.eval_name))
        ax.grid(alpha=0.3)
    axes[0].set_xlabel("dynamic ratio (kappa)")
    axes[1].set_xlabel("deployable parameters")
    axes[1].set_xscale("log")
    if len(families) > 5:  # many families (the ablations): below the plot, where it hides no point
        axes[0].legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2)
    else:
        axes[0].legend(fontsize=8)


def _paired(report: Report, paired: list, ax) -> None:
    """One row per configuration: the mean paired difference to the baseline and its 95 % t-interval
    (a dot without a bar below two paired seeds); the zero line is the baseline."""
    scale = metric_scale(report.main_metric)
    rows = list(reversed(paired))  # the first configuration at the top
    for y, d in enumerate(rows):
        p = d.paired
        err = None if math.isnan(p.low) else [[(p.mean - p.low) * scale], [(p.high - p.mean) * scale]]
        ax.errorbar([p.mean * scale], [y], xerr=err, marker="o", capsize=3, color="C0" if
                    (math.isnan(p.low) or p.low <= 0 <= p.high) else "C3")
    ax.axvline(0, color="k", linewidth=1)
    ax.set_yticks(range(len(rows)), [d.label for d in rows], fontsize=8)
    ax.set_xlabel(f"minus {report.baseline}, paired by seed (95 % t-interval)")
    ax.set_title("red: the interval excludes 0", fontsize=9)
    ax.grid(axis="x", alpha=0.3)


def _bars(report: Report, ax) -> None:
    scale, floors = metric_scale(report.main_metric), report.floors
    shows_average = bool(report.averages) and len(report.average_over) > 1
    columns = list(report.subtasks) + (["average"] if shows_average else [])
    width = 0.8 / len(report.labels)
    for i, label in enumerate(report.labels):
        x, y, err = [], [], []
        for c, subtask in enumerate(columns):
            if subtask == "average":
                stat = Stat(report.averages[label], float("nan"), 1) if label in report.averages else None
            else:
                g = report.group(subtask, label)
                stat = g.stat(report.main_metric) if g else None
            if stat is not None:
                x.append(c - 0.4 + width * (i + 0.5))
                y.append(stat.mean * scale)
                err.append(stat.std * scale)  # nan (one seed, the average) draws no error bar
        ax.bar(x, y, width, yerr=err, capsize=2, label=label)
    for c, subtask in enumerate(columns):
        if subtask in floors:
            ax.hlines(floors[subtask] * scale, c - 0.45, c + 0.45, colors="k", linestyles="dashed", linewidth=1)
    ax.set_xticks(range(len(columns)), [str(t).upper() if t != "average" else t for t in columns])
    ax.set_ylabel(metric_heading(report.main_metric, report.view.eval_name))
    dashed = f"\n(dashed: {report.view.floor_name})" if floors else ""
    ax.set_title(f"mean ± std over seeds{dashed}", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)


def _marker(family: str) -> str:
    """Random partitions as crosses, channel-granular PAD as triangles, the rest as dots."""
    return "x" if "random" in family else "v" if "channel" in family else "o"
