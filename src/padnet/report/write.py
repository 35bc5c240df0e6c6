"""``padnet report``'s files: the markdown, the plot beside it, the JSON summary and the copied
results.json files, every one written atomically and none through a symbolic link (all are checked
before the first is written)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from ..errors import RunError
from ..files import atomic_write_bytes, refuse_links
from .build import Report, build_report
from .collect import collect, unfinished
from .figure import plot
from .stats import median
from .tables import markdown


def to_dict(report: Report) -> dict:
    """The report as JSON-able data (nan -> None): every group's per-seed values and statistics, the
    paired differences, the averages, floors and the shared recipe."""
    groups = [{
        "label": g.label, "subtask": g.subtask, "mode": g.mode, "kind": g.kind, "scorer": g.scorer,
        "dynamic_ratio": g.dynamic_ratio, "seeds": g.seeds, "parameters": g.parameters,
        "parameters_per_seed": g.seed_parameters,
        "metrics": {m: {"values": v, **asdict(g.stat(m))} for m, v in g.values.items()},
        "time_per_epoch_s": {"values": g.times, "median": median(g.times)},
        "partition_s": {"values": g.partition_times, "median": median(g.partition_times)},
    } for g in report.groups]
    differences = [{"subtask": d.subtask, "label": d.label, **asdict(d.paired)} for d in report.differences]
    return _finite({
        "task": report.task, "sources": report.sources, "runs": report.runs, "main_metric": report.main_metric,
        "labels": report.labels, "subtasks": report.subtasks, "baseline": report.baseline, "groups": groups,
        "differences": differences, "average_over": report.average_over, "averages": report.averages,
        "floors": report.floors, "recipe": report.recipe, "varies": report.varies, "unfinished": report.unfinished,
        "warnings": report.warnings,
    })


def _finite(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_report(sources: Sequence[str | Path], out: str | Path | None = None, plot_path: str | Path | None = None,
                 json_path: str | Path | None = None, copy_results: str | Path | None = None,
                 notes: str | Path | None = None, title: str | None = None, baseline: str | None = None,
                 task: str | None = None) -> tuple[Report, str]:
    """Collect, aggregate and write a report; returns it and its markdown.

    Args:
        sources: sweep or run directories (searched recursively for results.json).
        out: the markdown file (default: none written).
        plot_path: the PNG (default: ``out`` with .png; none without ``out``).
        json_path: the JSON summary (default: ``copy_results``/report.json; none without it).
        copy_results: copy every results.json here, keeping each sweep's layout.
        notes: markdown placed after the tables (default: ``copy_results``/NOTES.md when present).
        title: the heading (default: "Results: <the directory's name>").
        baseline: the label the paired differences subtract (default: the fully dynamic configuration).
        task: report only the runs of this task (needed when the directories hold several).
    """
    runs = collect(sources, task)
    report = build_report(runs, [str(s) for s in sources], baseline)
    report.unfinished = unfinished(sources)
    dest = Path(copy_results) if copy_results else None
    plot_path = Path(plot_path) if plot_path else (Path(out).with_suffix(".png") if out else None)
    json_path = Path(json_path) if json_path else (dest / "report.json" if dest else None)
    copies = _copies(runs, dest) if dest else []
    for path in (out, plot_path, json_path):  # every link refused before anything is written
        if path is not None:
            refuse_links(path, _link_root(path, dest))
    for target, _ in copies:
        refuse_links(target, dest)
    figure = None
    if plot_path is not None:
        plot(report, plot_path, no_links_under=_link_root(plot_path, dest))
        figure = os.path.relpath(plot_path, Path(out).parent if out else Path.cwd())
    notes = Path(notes) if notes else (dest / "NOTES.md" if dest else None)
    title = title or f"Results: {Path(sources[0]).resolve().name}" + (" and others" if len(sources) > 1 else "")
    text = markdown(report, title, figure, notes.read_text(encoding="utf-8") if notes and notes.is_file() else None)
    for target, source in copies:
        atomic_write_bytes(target, source.read_bytes(), no_links_under=dest)
    if json_path is not None:
        data = (json.dumps(to_dict(report), indent=2) + "\n").encode()
        atomic_write_bytes(json_path, data, no_links_under=_link_root(json_path, dest))
    if out is not None:
        atomic_write_bytes(out, text.encode(), no_links_under=_link_root(Path(out), dest))
    return report, text


def _link_root(path: str | Path, dest: Path | None) -> Path:
    """Where the no-links check of ``path`` stops: the copy directory for a file inside it (no link on the
    way down from it), else the file itself."""
    return dest if dest is not None and dest in Path(path).parents else Path(path)


def _copies(runs, dest: Path) -> list[tuple[Path, Path]]:
    copies: dict[Path, Path] = {}
    for run in runs:
        target = dest / run.copy_to
        if target in copies:
            raise RunError(f"--copy-results {dest}: {copies[target]} and {run.path} would both be copied to "
                           f"{target}; report them separately")
        copies[target] = run.path
    return list(copies.items())
