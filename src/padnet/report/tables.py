"""The markdown report: scores (mean ± std over seeds, n), paired differences to the baseline with their
95 % t-interval, parameters and times, per-seed values and the recipe every run shares.

Metrics that are fractions (accuracy, F1, correlations, GLUE scores) are shown x100, as GLUE reports
them: accuracy is then a percentage, the others are labelled "x100". Other metrics are shown as they are.
"""

from __future__ import annotations

import math

from ..strict_yaml import dump_yaml
from .build import Group, Report
from .stats import Stat, median

METRIC_NAMES = {"accuracy": "accuracy", "mcc": "MCC", "f1": "F1", "macro_f1": "macro F1", "pearson": "Pearson",
                "spearman": "Spearman", "score": "score"}
SHORT_NAMES = {"accuracy": "acc"}
PER_SEED_DECIMALS = 2


def metric_scale(metric: str) -> float:
    """100 for the metrics that are fractions (shown x100), 1 for any other."""
    return 100.0 if metric in METRIC_NAMES else 1.0


def metric_heading(metric: str, eval_name: str = "test") -> str:
    """'test accuracy (%)', 'dev score (x100)', 'test loss': the metric, its eval set and its unit."""
    name = METRIC_NAMES.get(metric, metric)
    unit = " (%)" if metric == "accuracy" else " (x100)" if metric in METRIC_NAMES else ""
    return f"{eval_name} {name}{unit}"


def _num(value: float, decimals: int, sign: bool = False) -> str:
    return "n/a" if math.isnan(value) else f"{value:{'+' if sign else ''}.{decimals}f}"


def _cell(values: list[float], metric: str, decimals: int) -> str:
    """'65.0 ± 7.1 (n=2)'; one seed has no std: '50.0 (n=1)'."""
    stat, scale = Stat.of(values), metric_scale(metric)
    std = "" if math.isnan(stat.std) else f" ± {stat.std * scale:.{decimals}f}"
    return f"{stat.mean * scale:.{decimals}f}{std} (n={stat.n})"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _sub(subtask: str | None) -> str:
    return subtask.upper() if subtask else ""


def markdown(report: Report, title: str, figure: str | None = None, notes: str | None = None) -> str:
    """The whole report.

    Args:
        report: from ``build_report``.
        title: the heading.
        figure: the plot's path relative to the markdown file, if one was drawn.
        notes: hand-written markdown placed after the tables (a discussion kept beside the copied results).
    """
    lines = [f"# {title}", "", _intro(report), ""]
    lines += [f"**Warning:** {w}" for w in report.warnings] + ([""] if report.warnings else [])
    if figure:
        lines += [f"![{metric_heading(report.main_metric, report.view.eval_name)} per {report.view.label_name}]"
                  f"({figure})", ""]
    if len(report.subtasks) > 1:
        lines += _matrix(report) + [""] + _resources(report)
    else:
        lines += _single(report)
    lines += _differences(report)
    if report.unfinished:
        lines += ["", f"Unfinished runs (checkpoint, no results yet): {', '.join(report.unfinished)}"]
    if notes:
        lines += ["", notes.strip()]
    lines += _per_seed(report) + _recipe(report)
    return "\n".join(lines) + "\n"


def _intro(report: Report) -> str:
    where = ", ".join(f"`{s}`" for s in report.sources) or "the given runs"
    text = (f"{report.runs} finished runs of task `{report.task}` under {where}. Scores are the final "
            f"{report.view.eval_name} metrics, mean ± sample standard deviation over seeds (n = seeds); "
            "fractions are shown x100 (accuracy in %). Time per epoch is training time only (no evaluation), "
            "the median over runs, on the machine that ran them.")
    return f"{text} {report.view.about}" if report.view.about else text


def _resource_cells(groups: list[Group], extra: dict[str, bool]) -> list[str]:
    """Parameters (of the first group), median time per epoch and partition time over ``groups``."""
    p = groups[0].parameters
    cells = [f"{p['deployable']:,}"] + ([f"{p.get('stored', p['deployable']):,}"] if extra["stored"] else [])
    times = [t for g in groups for t in g.times]
    cells.append(_num(median(times), 1) if times else "—")
    if extra["partition"]:
        parts = [t for g in groups for t in g.partition_times]
        cells.append(_num(median(parts), 1) if parts else "—")
    return cells


def _resource_heads(report: Report) -> tuple[list[str], dict[str, bool]]:
    extra = {"stored": any(g.parameters.get("stored", g.parameters["deployable"]) != g.parameters["deployable"]
                           for g in report.groups),
             "partition": any(g.partition_times for g in report.groups)}
    heads = ["deployable params"] + (["stored params (training form)"] if extra["stored"] else [])
    heads += ["time / epoch (s)"] + (["partition (s)"] if extra["partition"] else [])
    return heads, extra


def _single(report: Report) -> list[str]:
    """One sub-task: one row per configuration, its scores, parameters and times."""
    v, subtask = report.view, report.subtasks[0]
    metrics = list(dict.fromkeys(m for g in report.groups for m in g.metrics))
    heads, extra = _resource_heads(report)
    on = f"{_sub(subtask)} " if subtask else ""  # a report of one GLUE task names it
    lines = [_row([v.label_name, "mode", "dynamic ratio"] + [f"{on}{metric_heading(m, v.eval_name)} mean ± std"
                                                            for m in metrics] + heads),
             "|---|---|---:|" + "---:|" * (len(metrics) + len(heads))]
    for label in report.labels:
        g = report.group(subtask, label)
        assert g is not None  # one sub-task: every label's runs are on it
        mode = g.mode + g.pad_detail
        ratio = "" if g.dynamic_ratio is None else f"{g.dynamic_ratio:.3f}"
        scores = [_cell(g.values[m], m, v.decimals) if m in g.values else "—" for m in metrics]
        lines.append(_row([label, mode, ratio] + scores + _resource_cells([g], extra)))
    if subtask in report.floors:
        floor = f"{report.floors[subtask] * metric_scale(report.main_metric):.{v.decimals}f}"
        lines.append(_row([f"*{v.floor_name}*", "", ""] + [floor if m == report.main_metric or len(metrics) == 1
                                                           else "" for m in metrics] + [""] * len(heads)))
    return lines


def _matrix(report: Report) -> list[str]:
    """Several sub-tasks: one row per sub-task and metric, one column per configuration."""
    v, floors = report.view, report.floors
    lines = [f"## {v.eval_name.capitalize()} scores (x100, mean ± std over seeds)", "",
             _row([v.subtask_name, "metric"] + report.labels + ([v.floor_name] if floors else [])),
             "|---|---|" + "---:|" * (len(report.labels) + (1 if floors else 0))]
    for subtask in report.subtasks:
        groups = [report.group(subtask, label) for label in report.labels]
        metrics = next(g.metrics for g in groups if g)
        floor_row = report.main_metric if report.main_metric in metrics else metrics[-1]
        for i, metric in enumerate(metrics):
            row = [_sub(subtask) if i == 0 else "", SHORT_NAMES.get(metric, METRIC_NAMES.get(metric, metric))]
            row += [_cell(g.values[metric], metric, v.decimals) if g else "—" for g in groups]
            if floors:
                row.append(f"{floors[subtask] * metric_scale(report.main_metric):.{v.decimals}f}"
                           if subtask in floors and metric == floor_row else "")
            lines.append(_row(row))
    if report.averages and len(report.average_over) > 1:  # an average of one sub-task repeats it
        lines += _average(report)
    return lines


def _average(report: Report) -> list[str]:
    v, scale = report.view, metric_scale(report.main_metric)
    row = ["**average**", METRIC_NAMES.get(report.main_metric, report.main_metric)]
    row += [f"**{report.averages[label] * scale:.{v.decimals}f}**" if label in report.averages else "—"
            for label in report.labels]
    over = [t for t in report.average_over if t is not None]  # all of them: an average is over named sub-tasks
    if report.floors:
        known = all(t in report.floors for t in over)
        row.append(f"{sum(report.floors[t] for t in over) / len(over) * scale:.{v.decimals}f}" if known else "")
    return [_row(row), "", f"Average of the {METRIC_NAMES.get(report.main_metric, report.main_metric)} over the "
            f"{v.subtask_name}s the most complete {v.label_name}s share: {', '.join(over)} "
            f"(— = a {v.label_name} has not finished all of them)."]


def _resources(report: Report) -> list[str]:
    """Several sub-tasks: parameters and times per configuration, then times per sub-task."""
    v = report.view
    heads, extra = _resource_heads(report)
    lines = ["## Parameters and time", "", _row([v.label_name] + heads + ["counted on"]),
             "|---|" + "---:|" * len(heads) + "---|"]
    for label in report.labels:
        groups = report.of_label(label)
        # Counts can differ between sub-tasks (GLUE: STS-B's regression head is smaller): say where.
        counted_on = next(t for t in report.subtasks if report.group(t, label))
        lines.append(_row([label] + _resource_cells(groups, extra) + [_sub(counted_on)]))
    lines += ["", f"Time per epoch per {v.subtask_name} (s, median over seeds):", "",
              _row([v.subtask_name] + report.labels), "|---|" + "---:|" * len(report.labels)]
    for subtask in report.subtasks:
        on_subtask = [report.group(subtask, label) for label in report.labels]
        lines.append(_row([_sub(subtask)] + [_num(median(g.times), 1) if g and g.times else "—" for g in on_subtask]))
    return lines


def _differences(report: Report) -> list[str]:
    if not report.differences:
        return []
    v, base = report.view, report.baseline_group
    assert base is not None  # differences are to the baseline's runs
    scale, decimals = metric_scale(report.main_metric), v.decimals
    first = [v.subtask_name] if len(report.subtasks) > 1 else []
    what = f"the fully dynamic {base.method}" if base.mode == "dynamic" else "baseline"
    lines = ["", f"## Paired by seed: {metric_heading(report.main_metric, v.eval_name)} minus {report.baseline} "
             f"({what})", "",
             "Per seed, the configuration's score minus the baseline's on the same seed (same initialisation "
             "and data order); mean, sample std and the 95 % t-interval of the mean difference over the "
             "seeds both finished.", "",
             _row(first + [v.label_name, "mean", "std", "95 % t-interval", "seeds"]),
             "|" + "---|" * len(first) + "---|---:|---:|---:|---:|"]
    for d in report.differences:
        p = d.paired
        interval = ("n/a" if math.isnan(p.low) else
                    f"[{_num(p.low * scale, decimals, True)}, {_num(p.high * scale, decimals, True)}]")
        lines.append(_row(([_sub(d.subtask)] if first else []) + [
            d.label, _num(p.mean * scale, decimals, True), _num(p.std * scale, decimals), interval, str(p.n)]))
    return lines


def _per_seed(report: Report) -> list[str]:
    scale = metric_scale(report.main_metric)
    lines = ["", f"Per-seed values ({metric_heading(report.main_metric, report.view.eval_name)}):", ""]
    for subtask in report.subtasks:
        for label in report.labels:
            g = report.group(subtask, label)
            if g is not None:
                values = ", ".join(f"seed {s}: {x * scale:.{PER_SEED_DECIMALS}f}"
                                   for s, x in zip(g.seeds, g.values[report.main_metric]))
                lines.append(f"- {_sub(subtask) + ' ' if subtask else ''}{label}: {values}")
    return lines


def _recipe(report: Report) -> list[str]:
    if not report.recipe:
        return []
    varies = f" (differing between runs: {', '.join(f'`{k}`' for k in report.varies)})" if report.varies else ""
    return ["", f"Shared recipe: the settings every run has in common{varies}.", "", "```yaml",
            dump_yaml(report.recipe).rstrip(), "```"]
