"""Reports over finished runs, for every task: ``padnet report DIR [DIR ...]``.

    padnet report runs/fmnist_sweep --out docs/results/vision.md --copy-results docs/results/vision

- ``collect``: every results.json under sweep or run directories (one task per report).
- ``build_report``: runs grouped by configuration (the label: the run name, or the method for GLUE) and
  sub-task (the GLUE task), aggregated over seeds (mean, sample std, n per metric; median times),
  the main metric's paired differences to a baseline (the fully dynamic DY-Conv or MoE unless chosen)
  with a 95 % t-interval, averages over sub-tasks, and the settings every run shares.
- ``markdown``, ``plot``, ``to_dict``: the report as markdown, a PNG and JSON.
- ``write_report``: all of it, written atomically and never through a symbolic link.

A task chooses how its runs are labelled and which metrics are shown with ``register_view`` (GLUE's is
in ``padnet.text.report``); other tasks get the default view, labelled by run name.
"""

from .build import Difference, Group, Report, build_report, shared_recipe
from .collect import FinishedRun, TaskView, collect, register_view, unfinished, view_of
from .figure import plot
from .stats import PairedDifference, Stat, median, paired_difference, t_quantile_975
from .tables import markdown, metric_heading, metric_scale
from .write import to_dict, write_report

__all__ = [
    "Difference", "FinishedRun", "Group", "PairedDifference", "Report", "Stat", "TaskView", "build_report",
    "collect", "markdown", "median", "metric_heading", "metric_scale", "paired_difference", "plot",
    "register_view", "shared_recipe", "t_quantile_975", "to_dict", "unfinished", "view_of", "write_report",
]
