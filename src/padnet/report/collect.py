"""Finished runs (their ``results.json``) and how each task names them in a report.

A task's report view says which configuration a run belongs to (its label: the run name for image
classification, the method for GLUE), which sub-task (a GLUE task; none for image classification),
which metrics to show and what the eval set is called. Tasks without a view of their own get the
default one, so every registered task can be reported.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import RunError, shorten

DEFAULT_TASK = "image_classification"  # results written before runs recorded their task


@dataclass(frozen=True)
class FinishedRun:
    """One finished run: its results.json, where ``--copy-results`` copies it (relative to that
    directory) and its content."""

    path: Path
    copy_to: Path
    result: dict
    stale: bool = False  # kept with an older recipe than its sweep's (``padnet sweep --keep-stale``)


def _run_name(result: dict) -> str:
    return str(result["name"])


def _no_subtask(result: dict) -> str | None:
    return None


def _main_metric_only(result: dict) -> tuple[str, ...]:
    return (result["main_metric"],)


@dataclass(frozen=True)
class TaskView:
    """How a task's runs appear in a report.

    Args:
        label: the configuration a run belongs to (runs with one label are seeds of one configuration).
        subtask: the sub-task a run belongs to (e.g. the GLUE task), or None.
        metrics: the metrics shown for a run, main metric included.
        eval_name: what the ``test`` metrics of results.json were measured on ("test", "dev").
        decimals: decimals of the metrics (x100) in tables.
        subtask_order: sub-tasks shown first, in this order (the others follow alphabetically).
        floor: {sub-task: main metric of a trivial predictor} for the runs, or None.
        floor_name: the floor's name in tables and plots.
        label_name: the heading of the label column ("run", "method").
        subtask_name: the heading of the sub-task column.
        about: a sentence placed after the report's introduction (what the labels and scores mean).
    """

    label: Callable[[dict], str] = _run_name
    subtask: Callable[[dict], str | None] = _no_subtask
    metrics: Callable[[dict], tuple[str, ...]] = _main_metric_only
    eval_name: str = "test"
    decimals: int = 2
    subtask_order: tuple[str, ...] = ()
    floor: Callable[[list[dict]], dict[str, float]] | None = None
    floor_name: str = "majority"
    label_name: str = "run"
    subtask_name: str = "task"
    about: str = ""


# task -> module whose import registers its view (imported on first use, like padnet.train.tasks).
VIEW_MODULES = {"glue": "padnet.text.report"}
_VIEWS: dict[str, TaskView] = {}


def register_view(task: str, view: TaskView) -> None:
    """Register (or replace) the report view of a task.

    Args:
        task: the task name, as runs record it in results.json.
        view: how its runs are labelled, grouped and measured.
    """
    _VIEWS[task] = view


def view_of(task: str) -> TaskView:
    """The report view of ``task``: the registered one, or the default (label = run name)."""
    if task not in _VIEWS and task in VIEW_MODULES:
        importlib.import_module(VIEW_MODULES[task])
    return _VIEWS.get(task, TaskView())


def task_of(result: dict) -> str:
    return result.get("task") or (result.get("config") or {}).get("task") or DEFAULT_TASK


def collect(sources: Sequence[str | Path], task: str | None = None) -> list[FinishedRun]:
    """Every finished run under ``sources`` (sweep directories or run directories, searched recursively),
    of one task.

    Args:
        sources: directories holding results.json files.
        task: keep only the runs of this task; by default the runs must all be of one task.

    Raises:
        RunError: a source is not a directory, a results.json is unreadable or lacks a key the report
            needs, no run was found, or the runs are of several tasks and ``task`` is not given.
    """
    runs: list[FinishedRun] = []
    for source in map(Path, sources):
        if not source.is_dir():
            raise RunError(f"{source} is not a directory (give a sweep or run directory)")
        for path in sorted(source.rglob("results.json")):
            # A run directory given itself copies to <its name>/results.json, a sweep keeps its layout.
            relative = path.relative_to(source)
            copy_to = Path(source.resolve().name) / relative if relative.parent == Path(".") else relative
            runs.append(FinishedRun(path, copy_to, _read(path), (path.parent / "stale.json").is_file()))
    tasks = sorted({task_of(r.result) for r in runs})
    if task is not None:
        runs = [r for r in runs if task_of(r.result) == task]
    elif len(tasks) > 1:
        raise RunError(f"the runs under {', '.join(map(str, sources))} are of several tasks ({', '.join(tasks)}); "
                       "report one at a time with --task NAME")
    if not runs:
        of_task = f" of task {task!r} (found: {', '.join(tasks) or 'none'})" if task else ""
        raise RunError(f"no results.json{of_task} under {', '.join(map(str, sources))} "
                       "(runs write it when they finish)")
    return runs


_REQUIRED = ("name", "seed", "mode", "main_metric", "test", "parameters")


def _read(path: Path) -> dict:
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise RunError(f"{path}: not a results file ({err})") from err
    missing = [k for k in _REQUIRED if not isinstance(result, dict) or k not in result]
    if missing:
        raise RunError(f"{path}: not a results file of a finished run (no {', '.join(missing)})")
    metric = result["main_metric"]
    if not isinstance(result["test"], dict) or not isinstance(result["test"].get(metric), (int, float)):
        raise RunError(f"{path}: test.{shorten(metric)} (the main metric) is missing or not a number")
    if not isinstance(result["parameters"], dict) or "deployable" not in result["parameters"]:
        raise RunError(f"{path}: parameters.deployable is missing")
    return result


def unfinished(sources: Sequence[str | Path]) -> list[str]:
    """Run directories under ``sources`` holding a checkpoint but no results yet."""
    return sorted(str(p.parent) for source in map(Path, sources) for p in Path(source).rglob("checkpoint.pt")
                  if not (p.parent / "results.json").exists())
