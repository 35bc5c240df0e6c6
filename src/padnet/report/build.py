"""Finished runs grouped by configuration (label) and sub-task, aggregated over seeds: per metric mean,
sample std and n; parameters, median times; paired differences to a baseline; averages over sub-tasks;
the recipe every run shares."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ..errors import RunError, shorten
from .collect import FinishedRun, TaskView, task_of, view_of
from .stats import PairedDifference, Stat, paired_difference

MODE_ORDER = {"static": 0, "dynamic": 1, "pad": 2}
# Config keys that name or place one run, or only change its logging: never part of the shared recipe.
RUN_KEYS = ("name", "seed", "run_dir", "progress", "tensorboard", "log_every")


@dataclass
class Group:
    """The runs (one per seed) of one configuration on one sub-task."""

    label: str
    subtask: str | None
    mode: str
    kind: str
    scorer: str | None
    metrics: tuple[str, ...]
    granularity: str = "element"  # PAD's mask unit (docs/method.md#granularity): entries, or whole output channels
    routing: str = "softmax"  # conv: softmax = DY-Conv, sigmoid = CondConv
    variant: str = ""  # a PAD ablation of the recipe ("one-shot", "lambda: static only"), see _variant
    seeds: list[int] = field(default_factory=list)
    values: dict[str, list[float]] = field(default_factory=dict)  # metric -> one value per seed
    ratios: list[float] = field(default_factory=list)
    seed_parameters: list[dict[str, int]] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    partition_times: list[float] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)

    def stat(self, metric: str) -> Stat:
        return Stat.of(self.values[metric])

    def by_seed(self, metric: str) -> dict[int, float]:
        return dict(zip(self.seeds, self.values[metric]))

    @property
    def parameters(self) -> dict[str, int]:
        """Each count's most common value over the seeds: a run that counted differently (a resumed run
        from before a counting fix) does not set it."""
        keys = dict.fromkeys(k for p in self.seed_parameters for k in p)
        return {k: Counter(p[k] for p in self.seed_parameters if k in p).most_common(1)[0][0] for k in keys}

    @property
    def dynamic_ratio(self) -> float | None:
        return sum(self.ratios) / len(self.ratios) if self.ratios else None

    @property
    def method(self) -> str:
        """The fully dynamic layer this configuration starts from: MoE, CondConv or DY-Conv."""
        return "MoE" if self.kind == "moe" else "CondConv" if self.routing == "sigmoid" else "DY-Conv"

    @property
    def family(self) -> str:
        """The method family, for plot legends: the fully dynamic baseline is DY-Conv for conv runs (CondConv
        with sigmoid routing) and the MoE for MoE runs; a PAD ablation is a family of its own."""
        if self.mode == "static":
            return "static"
        if self.mode == "dynamic":
            return f"{self.method} (fully dynamic)"
        return ("PAD-MoE" if self.kind == "moe" else "PAD") + self.pad_detail

    @property
    def pad_detail(self) -> str:
        """", channel" for channel-granular PAD, then the scorer and any ablation in brackets:
        " (taylor)", " (taylor, one-shot)"."""
        channel = ", channel" if self.mode == "pad" and self.granularity == "channel" else ""
        inside = ", ".join(x for x in (self.scorer, self.variant) if x)
        return channel + (f" ({inside})" if inside else "")


@dataclass
class Difference:
    """The main metric of ``label`` minus the baseline's, paired by seed, on one sub-task."""

    subtask: str | None
    label: str
    paired: PairedDifference


@dataclass
class Report:
    """Everything a report shows, before rendering (``padnet.report.markdown``, ``plot``, ``to_dict``)."""

    task: str
    view: TaskView
    sources: list[str]
    runs: int
    main_metric: str
    groups: list[Group]
    labels: list[str]
    subtasks: list[str | None]
    baseline: str | None
    differences: list[Difference]
    average_over: list[str | None]  # [None] for a view without sub-tasks
    averages: dict[str, float]
    floors: dict[str, float]
    recipe: dict
    varies: list[str]
    unfinished: list[str] = field(default_factory=list)
    # Runs a reader must not take at face value: stale ones, and configurations whose seeds ran different recipes.
    warnings: list[str] = field(default_factory=list)

    def group(self, subtask: str | None, label: str) -> Group | None:
        return next((g for g in self.groups if g.subtask == subtask and g.label == label), None)

    def of_label(self, label: str) -> list[Group]:
        return [g for g in self.groups if g.label == label]

    @property
    def baseline_group(self) -> Group | None:
        return next(iter(self.of_label(self.baseline)), None) if self.baseline else None


def build_report(runs: list[FinishedRun], sources: list[str] | None = None, baseline: str | None = None,
                 floors: bool = True) -> Report:
    """Group and aggregate finished runs (all of one task, as ``collect`` returns them).

    Args:
        runs: the finished runs.
        sources: the directories they came from (named in the report).
        baseline: the label the paired differences subtract; default: the fully dynamic configuration
            (DY-Conv for conv runs, the MoE for MoE runs) when there is exactly one.
        floors: compute the view's floor (e.g. GLUE's majority class, which reads the dev data).

    Raises:
        RunError: two runs of one configuration have the same seed, or ``baseline`` names no configuration.
    """
    task = task_of(runs[0].result)
    view = view_of(task)
    groups = _group(runs, view)
    labels = _ordered_labels(groups)
    subtasks = _ordered_subtasks(groups, view)
    baseline = _baseline(groups, labels, baseline)
    main_metric = runs[0].result["main_metric"]
    average_over, averages = _averages(groups, labels, subtasks, main_metric)
    recipe, varies = shared_recipe([r.result.get("config") or {} for r in runs])
    return Report(
        task=task, view=view, sources=[str(s) for s in (sources or [])], runs=len(runs), main_metric=main_metric,
        groups=groups, labels=labels, subtasks=subtasks, baseline=baseline,
        differences=_differences(groups, labels, subtasks, baseline, main_metric),
        average_over=average_over, averages=averages,
        floors=view.floor([r.result for r in runs]) if floors and view.floor else {},
        recipe=recipe, varies=varies, warnings=_recipe_warnings(runs, view))


def _recipe_warnings(runs: list[FinishedRun], view: TaskView) -> list[str]:
    """A configuration whose seeds ran different recipes (a sweep re-run after its config changed), and
    the runs kept stale on purpose."""
    members: dict[tuple[str | None, str], list[dict]] = {}
    for run in runs:
        key = (view.subtask(run.result), view.label(run.result))
        members.setdefault(key, []).append(run.result.get("config") or {})
    out = []
    for (subtask, label), configs in members.items():
        varies = shared_recipe(configs)[1]
        if len(configs) > 1 and varies:
            where = f" on {subtask}" if subtask else ""
            out.append(f"{label}{where}: its seeds ran different recipes (keys: {', '.join(varies[:8])}); "
                       "re-run the sweep with --rerun-changed")
    stale = [str(run.path.parent) for run in runs if run.stale]
    if stale:
        out.append(f"stale (kept with an older recipe by padnet sweep --keep-stale): {', '.join(stale)}")
    return out


def _group(runs: list[FinishedRun], view: TaskView) -> list[Group]:
    groups: dict[tuple[str | None, str], Group] = {}
    for run in sorted(runs, key=lambda run: run.result["seed"]):
        r = run.result
        key = (view.subtask(r), view.label(r))
        dynamic = (r.get("config") or {}).get("dynamic") or {}
        g = groups.setdefault(key, Group(label=key[1], subtask=key[0], mode=r["mode"], kind=dynamic.get("kind", "conv"),
                                         scorer=r.get("scorer"), metrics=view.metrics(r),
                                         granularity=dynamic.get("granularity", "element"),
                                         routing=dynamic.get("routing", "softmax"), variant=_variant(r)))
        if r["seed"] in g.seeds:
            raise RunError(f"{g.paths[g.seeds.index(r['seed'])]} and {run.path} are both seed {r['seed']} of "
                           f"{shorten(g.label)}; report one of them (give the directories to report)")
        g.seeds.append(r["seed"])
        g.paths.append(str(run.path))
        g.seed_parameters.append(r["parameters"])
        for metric in dict.fromkeys(g.metrics + (r["main_metric"],)):
            g.values.setdefault(metric, []).append(r["test"][metric])
        if r.get("dynamic_ratio") is not None:
            g.ratios.append(r["dynamic_ratio"])
        if r.get("time_per_epoch_s") is not None:
            g.times.append(r["time_per_epoch_s"])
        if (r.get("partition") or {}).get("wall_time_s") is not None:
            g.partition_times.append(r["partition"]["wall_time_s"])
    return list(groups.values())


LAMBDA_VARIANTS = {"static": "lambda: static only", "dynamic": "lambda: dynamic only", "none": "lambda: fixed"}


def _variant(result: dict) -> str:
    """The paper's ablations of a PAD run, named: a one-round (one-shot) partition, and scale factors of
    which only one or neither learns (the default, both learning, is not named)."""
    if result["mode"] != "pad":
        return ""
    config = result.get("config") or {}
    parts = ["one-shot"] if (config.get("partition") or {}).get("rounds") == 1 else []
    lambda_mode = (config.get("dynamic") or {}).get("lambda_mode", "both")
    return ", ".join(parts + ([LAMBDA_VARIANTS.get(lambda_mode, f"lambda: {lambda_mode}")]
                              if lambda_mode != "both" else []))


def _ordered_labels(groups: list[Group]) -> list[str]:
    """Static first, then fully dynamic (DY-Conv before CondConv), then PAD by scorer (random last) and ratio."""
    first: dict[str, Group] = {}
    for g in groups:
        first.setdefault(g.label, g)
    return sorted(first, key=lambda label: (MODE_ORDER.get(first[label].mode, 9), first[label].routing == "sigmoid",
                                            first[label].scorer == "random", first[label].dynamic_ratio or 0, label))


def _ordered_subtasks(groups: list[Group], view: TaskView) -> list[str | None]:
    present = {g.subtask for g in groups}
    return [t for t in view.subtask_order if t in present] + sorted(
        (t for t in present if t not in view.subtask_order), key=lambda t: (t is not None, t or ""))


def _baseline(groups: list[Group], labels: list[str], chosen: str | None) -> str | None:
    if chosen is not None:
        if chosen not in labels:
            raise RunError(f"baseline={shorten(chosen)} is not a configuration of these runs; "
                           f"choose one of: {', '.join(labels)}")
        return chosen
    dynamic = [g for g in groups if g.mode == "dynamic"]
    if len({g.label for g in dynamic}) > 1:  # DY-Conv beside CondConv: the paper's baseline is DY-Conv
        dynamic = [g for g in dynamic if g.routing != "sigmoid"]
    candidates = [label for label in labels if any(g.label == label for g in dynamic)]
    return candidates[0] if len(candidates) == 1 else None


def _differences(groups: list[Group], labels: list[str], subtasks: list[str | None], baseline: str | None,
                 metric: str) -> list[Difference]:
    if baseline is None:  # no baseline: nothing to subtract
        return []
    out = []
    by_key = {(g.subtask, g.label): g for g in groups}
    for subtask in subtasks:
        base = by_key.get((subtask, baseline))
        for label in labels:
            g = by_key.get((subtask, label))
            if base is None or g is None or label == baseline:
                continue
            paired = paired_difference(g.by_seed(metric), base.by_seed(metric))
            if paired is not None:
                out.append(Difference(subtask, label, paired))
    return out


def _averages(groups: list[Group], labels: list[str], subtasks: list[str | None],
              metric: str) -> tuple[list[str | None], dict[str, float]]:
    """The mean over sub-tasks of each configuration's mean, over the sub-tasks that the configurations
    with the most finished sub-tasks share; one missing one of them (an ablation still running) gets no
    average rather than one over other sub-tasks."""
    by_key = {(g.subtask, g.label): g for g in groups}
    if len(subtasks) < 2:
        return [], {}
    covered = {label: [t for t in subtasks if (t, label) in by_key] for label in labels}
    most = max(len(ts) for ts in covered.values())
    leaders = [label for label in labels if len(covered[label]) == most]
    common = [t for t in subtasks if all((t, label) in by_key for label in leaders)]
    averages = {label: sum(by_key[t, label].stat(metric).mean for t in common) / len(common)
                for label in labels if common and all((t, label) in by_key for t in common)}
    return common, averages


def shared_recipe(configs: list[dict]) -> tuple[dict, list[str]]:
    """The settings every run shares (nested, as in a config) and the dotted keys that differ between runs
    (a key some runs lack differs)."""
    flat = [_flatten({k: v for k, v in c.items() if k not in RUN_KEYS}) for c in configs]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    shared = [k for k in keys if all(k in f and f[k] == flat[0][k] for f in flat)]
    recipe: dict = {}
    for key in shared:
        *parents, leaf = key.split(".")
        node = recipe
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = flat[0][key]
    return recipe, [k for k in keys if k not in shared]


def _flatten(config: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
