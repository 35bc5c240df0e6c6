"""Sweeps: a list of runs sharing a base config, times seeds (``padnet report`` reports them: ``padnet.report``).

A sweep file::

    base: fmnist_base.yaml          # a path (relative to this file) or an inline mapping
    output_dir: runs/fmnist_sweep   # run i, seed s -> output_dir/<name>/seed<s>
    seeds: [0, 1, 2]
    runs:
      - name: static
        set: {dynamic.mode: static}
      - name: pad-0.3
        set: {dynamic.mode: pad, dynamic.dynamic_ratio: 0.3}

Every run's config is validated before the first one starts. Runs go seed-major (all runs of seed 0,
then seed 1, ...) so an interrupted sweep has comparable results early. A run whose directory holds
``results.json`` is skipped, unless it ran another recipe than the sweep's now (an edited config or
``--set``): the sweep then stops and names the changed keys, and runs again with ``--rerun-changed``
or keeps the old results, marked stale in ``padnet report``, with ``--keep-stale``. A run holding
``checkpoint.pt`` resumes; one another process is running (it holds the run directory's lock) is
skipped, so two sweep processes share one sweep's runs.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from ..errors import ConfigError, shorten
from ..plugins import PluginError, import_plugins
from ..strict_yaml import read_yaml
from ..validation import did_you_mean
from .config import RunConfig, config_from_dict, merge, parse_overrides
from .recipe import STALE, describe, recipe_changes
from .rundir import lock_holder

SWEEP_KEYS = ("base", "output_dir", "seeds", "runs")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> list[RunConfig]:
    """All run configs of a sweep file, validated; ConfigError lists every problem of every run.

    Args:
        path: the sweep YAML.
        overrides: ``KEY=VALUE`` settings applied to the base config of every run.
    """
    path = Path(path)
    raw = read_yaml(path)
    if not any(key in raw for key in SWEEP_KEYS) and any(key in RunConfig.model_fields for key in raw):
        raise ConfigError([f"this is a run config, not a sweep (no base: or runs:); train it with padnet train "
                           f"--config {path}, or make it the base: of a sweep"], str(path))
    problems = [f"unknown sweep key {key!r}{did_you_mean(str(key), SWEEP_KEYS)}; allowed: {', '.join(SWEEP_KEYS)}"
                for key in raw if key not in SWEEP_KEYS]
    base = merge(_base(raw.get("base", {}), path, problems), parse_overrides(overrides, problems))
    if isinstance(base.get("imports"), list):
        try:  # relative to the sweep file, as in a run config
            import_plugins(base["imports"], path.parent, key="imports")
        except PluginError as err:
            problems.append(str(err))
    output_dir = raw.get("output_dir", "runs/sweep")
    if not isinstance(output_dir, str):
        problems.append(f"output_dir={output_dir!r} must be a string (a directory)")
        output_dir = "runs/sweep"
    seeds = raw.get("seeds", [base.get("seed", 0)])
    if not isinstance(seeds, list) or not seeds or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        problems.append(f"seeds={seeds!r} must be a non-empty list of integers >= 0")
        seeds = [0]
    runs = raw.get("runs")
    if not isinstance(runs, list) or not runs:
        problems.append(f"runs={runs!r} must be a non-empty list of {{name: ..., set: {{key: value}}}}")
        runs = []
    names: list[str] = []
    configs: list[tuple[str, RunConfig]] = []  # (run name, config): a config's name is optional in its type
    for i, run in enumerate(runs):
        update = _run_settings(i, run, names, problems)
        if update is not None:
            for config in _seed_configs(i, run["name"], merge(base, update), seeds, output_dir, problems):
                configs.append((run["name"], config))
    if problems:
        raise ConfigError(problems, str(path))
    # Seed-major order.
    return [c for _, c in sorted(configs, key=lambda named: (seeds.index(named[1].seed), names.index(named[0])))]


def _base(base, path: Path, problems: list[str]) -> dict:
    """The base config: a mapping, or a YAML file named relative to the sweep file."""
    if isinstance(base, str):
        base_path = (path.parent / base) if not Path(base).is_absolute() else Path(base)
        try:
            base = read_yaml(base_path)
        except ConfigError as err:
            problems.extend(err.problems)
            base = {}
    if not isinstance(base, dict):
        problems.append(f"base={base!r} must be a path to a YAML config or a mapping")
        base = {}
    return base


def _run_settings(i: int, run, names: list[str], problems: list[str]) -> dict | None:
    """The overrides of ``runs[i]`` (its name appended to ``names``), or None when it is not a valid run."""
    if not isinstance(run, dict) or not isinstance(run.get("name"), str) or set(run) - {"name", "set"}:
        problems.append(f"runs[{i}]={run!r} must be a mapping with a string 'name' and an optional 'set' mapping")
        return None
    if not _safe_name(run["name"]):
        problems.append(f"runs[{i}].name={shorten(run['name'])} must be one plain directory name (letters, digits, "
                        "'.', '_', '-', not starting with '.'), so every run stays under output_dir")
        return None
    if run["name"] in names:
        problems.append(f"runs[{i}].name={run['name']!r} is used twice; names must be unique")
    names.append(run["name"])
    settings = run.get("set") or {}
    if not isinstance(settings, dict):
        problems.append(f"runs[{i}].set={settings!r} must be a mapping of key: value")
        return None
    return parse_overrides([f"{k}={json.dumps(v)}" for k, v in settings.items()], problems)


def _seed_configs(i: int, name: str, run_raw: dict, seeds: list[int], output_dir: str,
                  problems: list[str]) -> list[RunConfig]:
    """``runs[i]``'s config for each seed; the first invalid one adds its problems and ends the list. The
    task's checks of the data (files, columns) run for each run's first seed: a run's ``set`` may change
    the data, the seed does not."""
    configs: list[RunConfig] = []
    for seed in seeds:
        raw = dict(run_raw, name=name, seed=seed, run_dir=str(Path(output_dir) / name / f"seed{seed}"))
        try:
            configs.append(config_from_dict(raw, source=f"runs[{i}] ({name}, seed {seed})", preflight=not configs))
        except ConfigError as err:
            problems.extend(f"runs[{i}] ({name}, seed {seed}): {p}" for p in err.problems)
            break
    return configs


def _safe_name(name: str) -> bool:
    return bool(_NAME.fullmatch(name)) and name not in (".", "..")


CHANGED = "finished with a different recipe"


def run_status(config: RunConfig) -> str:
    """``finished``; ``finished with a different recipe: KEY OLD -> NEW, ...`` (the run directory holds a
    run of another config); ``stale: KEY OLD -> NEW, ...`` (one kept on purpose: ``--keep-stale``);
    ``in progress (pid N)`` (another process holds the run); ``interrupted``; or ``pending``."""
    run_dir = Path(config.run_dir)
    if (run_dir / "results.json").is_file():
        changes = recipe_changes(read_yaml(run_dir / "config.yaml"), config, run_dir / "config.yaml") \
            if (run_dir / "config.yaml").is_file() else []
        if not changes:
            return "finished"
        return f"{'stale' if (run_dir / STALE).is_file() else CHANGED}: {describe(changes)}"
    holder = lock_holder(run_dir)
    if holder is not None:
        return f"in progress (pid {holder})"
    if (run_dir / "checkpoint.pt").is_file():
        return "interrupted"
    return "pending"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class SweepClock:
    """Overall progress of a sweep: runs done of the runs to do, time elapsed, and an estimate of the
    time left (the mean time of the runs done so far, times the runs left)."""

    def __init__(self, todo: int, clock=time.monotonic):
        self.todo, self.finished, self._clock = todo, 0, clock
        self.started = clock()

    def done(self) -> None:
        self.finished += 1

    def line(self) -> str:
        elapsed = self._clock() - self.started
        left = self.todo - self.finished
        if self.finished and left:
            estimate = f", about {_duration(elapsed / self.finished * left)} left"
        else:
            estimate = "" if left else ", done"
        return f"{self.finished}/{self.todo} runs done, {_duration(elapsed)} elapsed{estimate}"
