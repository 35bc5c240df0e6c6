"""Sweeps (a list of runs sharing a base config, times seeds) and reports over finished runs.

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
``results.json`` is skipped; one holding ``checkpoint.pt`` resumes.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from .config import ConfigError, RunConfig, config_from_dict, merge, parse_overrides, read_yaml
from ..errors import shorten
from .io import atomic_savefig

SWEEP_KEYS = ("base", "output_dir", "seeds", "runs")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> list[RunConfig]:
    """All run configs of a sweep file, validated; ConfigError lists every problem of every run."""
    path = Path(path)
    raw = read_yaml(path)
    problems: list[str] = []
    for key in raw:
        if key not in SWEEP_KEYS:
            problems.append(f"unknown sweep key {key!r}; allowed: {', '.join(SWEEP_KEYS)}")
    base = raw.get("base", {})
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
    base = merge(base, parse_overrides(overrides, problems))
    output_dir = raw.get("output_dir", "runs/sweep")
    if not isinstance(output_dir, str):
        problems.append(f"output_dir={output_dir!r} must be a string (a directory)")
        output_dir = "runs/sweep"
    seeds = raw.get("seeds", [base.get("seed", 0)])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        problems.append(f"seeds={seeds!r} must be a non-empty list of integers >= 0")
        seeds = [0]
    runs = raw.get("runs")
    if not isinstance(runs, list) or not runs:
        problems.append(f"runs={runs!r} must be a non-empty list of {{name: ..., set: {{key: value}}}}")
        runs = []
    names: list[str] = []
    configs: list[RunConfig] = []
    for i, run in enumerate(runs):
        if not isinstance(run, dict) or not isinstance(run.get("name"), str) or set(run) - {"name", "set"}:
            problems.append(f"runs[{i}]={run!r} must be a mapping with a string 'name' and an optional 'set' mapping")
            continue
        if not _safe_name(run["name"]):
            problems.append(f"runs[{i}].name={shorten(run['name'])} must be one plain directory name (letters, digits, "
                            "'.', '_', '-', not starting with '.'), so every run stays under output_dir")
            continue
        if run["name"] in names:
            problems.append(f"runs[{i}].name={run['name']!r} is used twice; names must be unique")
        names.append(run["name"])
        settings = run.get("set") or {}
        if not isinstance(settings, dict):
            problems.append(f"runs[{i}].set={settings!r} must be a mapping of key: value")
            continue
        update = parse_overrides([f"{k}={json.dumps(v)}" for k, v in settings.items()], problems)
        for seed in seeds:
            run_raw = merge(base, update)
            run_raw.update(name=run["name"], seed=seed, run_dir=str(Path(output_dir) / run["name"] / f"seed{seed}"))
            try:
                # The data check is the same for every run: do it once, for the first.
                configs.append(config_from_dict(run_raw, source=f"runs[{i}] ({run['name']}, seed {seed})",
                                                preflight=not configs))
            except ConfigError as err:
                problems.extend(f"runs[{i}] ({run['name']}, seed {seed}): {p}" for p in err.problems)
                break
    if problems:
        raise ConfigError(problems, str(path))
    # Seed-major order.
    return sorted(configs, key=lambda c: (seeds.index(c.seed), names.index(c.name)))


def _safe_name(name: str) -> bool:
    return bool(_NAME.fullmatch(name)) and name not in (".", "..")


def run_status(config: RunConfig) -> str:
    run_dir = Path(config.run_dir)
    if (run_dir / "results.json").is_file():
        return "finished"
    if (run_dir / "checkpoint.pt").is_file():
        return "interrupted"
    return "pending"


# --------------------------------------------------------------------------------------- report
MODE_ORDER = {"static": 0, "dynamic": 1, "pad": 2}


def collect_results(root: str | Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(Path(root).rglob("results.json"))]


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, float("nan")
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def summarize(results: list[dict]) -> list[dict]:
    """One row per run name: mean and std of the main metric over seeds, parameters, time per epoch."""
    groups: dict[str, list[dict]] = {}
    for r in results:
        groups.setdefault(r["name"], []).append(r)
    rows = []
    for name, rs in groups.items():
        metric = rs[0]["main_metric"]
        mean, std = _mean_std([r["test"][metric] for r in rs])
        ratios = [r["dynamic_ratio"] for r in rs if r.get("dynamic_ratio") is not None]
        times = [r["time_per_epoch_s"] for r in rs if r.get("time_per_epoch_s") is not None]
        rows.append({
            "name": name, "mode": rs[0]["mode"], "scorer": rs[0].get("scorer"),
            "dynamic_ratio": sum(ratios) / len(ratios) if ratios else None,
            "metric": metric, "mean": mean, "std": std, "seeds": sorted(r["seed"] for r in rs),
            "values": [r["test"][metric] for r in sorted(rs, key=lambda r: r["seed"])],
            "deployable_params": rs[0]["parameters"]["deployable"],
            "time_per_epoch_s": sum(times) / len(times) if times else None,
            "epochs": rs[0].get("epochs"),
            "kind": ((rs[0].get("config") or {}).get("dynamic") or {}).get("kind", "conv"),
            "granularity": ((rs[0].get("config") or {}).get("dynamic") or {}).get("granularity", "element"),
        })
    return sorted(rows, key=lambda r: (MODE_ORDER.get(r["mode"], 9), r["scorer"] == "random",
                                       r["dynamic_ratio"] or 0, r["name"]))


def markdown_table(rows: list[dict]) -> str:
    metric = rows[0]["metric"] if rows else "accuracy"
    heading = "test accuracy (%)" if metric == "accuracy" else f"test {metric}"
    lines = [
        f"| run | mode | dynamic ratio | seeds | {heading} mean ± std | deployable params | time / epoch (s) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        scale = 100 if r["metric"] == "accuracy" else 1
        std = "n/a" if math.isnan(r["std"]) else f"{r['std'] * scale:.2f}"
        mode = r["mode"] + (", channel" if r["mode"] == "pad" and r.get("granularity") == "channel" else "") + (
            f" ({r['scorer']})" if r["scorer"] else "")
        ratio = "" if r["dynamic_ratio"] is None else f"{r['dynamic_ratio']:.3f}"
        t = "" if r["time_per_epoch_s"] is None else f"{r['time_per_epoch_s']:.1f}"
        lines.append(f"| {r['name']} | {mode} | {ratio} | {len(r['seeds'])} | {r['mean'] * scale:.2f} ± {std} | "
                     f"{r['deployable_params']:,} | {t} |")
    return "\n".join(lines)


def dynamic_host_label(rows: list[dict]) -> str:
    """The fully dynamic baseline's name: DY-Conv for conv runs, MoE for MoE runs."""
    kinds = {r.get("kind", "conv") for r in rows if r["mode"] == "dynamic"}
    return "MoE (fully dynamic)" if kinds == {"moe"} else "DY-Conv (fully dynamic)"


def plot(rows: list[dict], path: str | Path, no_links_under: str | Path | None = None) -> Path:
    """Accuracy vs dynamic ratio (left) and vs deployable parameters (right), mean ± std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    scale = 100 if rows and rows[0]["metric"] == "accuracy" else 1
    dynamic_label = dynamic_host_label(rows)
    groups = {"static": [r for r in rows if r["mode"] == "static"],
              dynamic_label: [r for r in rows if r["mode"] == "dynamic"]}
    markers = {"static": "s", dynamic_label: "D"}
    for granularity, prefix in (("element", "PAD"), ("channel", "PAD channel")):
        pads = [r for r in rows if r["mode"] == "pad" and r.get("granularity", "element") == granularity]
        for scorer, marker in (("taylor", "o"), ("random", "x"), ("magnitude", "^")):
            label = f"{prefix} ({scorer})"
            groups[label] = [r for r in pads if r["scorer"] == scorer]
            markers[label] = marker if granularity == "element" else {"o": "v", "x": "+", "^": "<"}[marker]
    for label, rs in groups.items():
        if not rs:
            continue
        rs = sorted(rs, key=lambda r: r["dynamic_ratio"] or 0)
        y = [r["mean"] * scale for r in rs]
        err = [0 if math.isnan(r["std"]) else r["std"] * scale for r in rs]
        for ax, x in ((axes[0], [r["dynamic_ratio"] or 0 for r in rs]), (axes[1], [r["deployable_params"] for r in rs])):
            ax.errorbar(x, y, yerr=err, marker=markers[label], capsize=3, label=label,
                        linestyle="-" if len(rs) > 1 else "none")
    axes[0].set_xlabel("dynamic ratio (kappa)")
    axes[1].set_xlabel("deployable parameters")
    axes[1].set_xscale("log")
    for ax in axes:
        ax.set_ylabel(f"test {rows[0]['metric'] if rows else 'metric'}" + (" (%)" if scale == 100 else ""))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    atomic_savefig(fig, path, no_links_under=no_links_under)
    return path
