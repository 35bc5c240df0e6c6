"""The GLUE results report: per-task table (mean ± std over seeds), GLUE average, parameters, time,
and a bar chart of the same scores (PNG beside the markdown).

    python -m padnet.text.report runs/glue_sweep --out docs/results/text.md --copy-results docs/results/text

Reads every ``results.json`` of a ``glue`` run under the directory. Methods are named by the run's
dynamic mode (static = dense fine-tuning, dynamic = fully dynamic MoE, pad = PAD-MoE at its kappa).
The GLUE average of a method is taken over the tasks every method has finished, so averages compare
like with like; per-task rows show how many seeds each cell holds. ``--notes FILE`` appends a
hand-written discussion (kept in the results directory so regenerating the tables keeps it).
Scores are x100, as GLUE reports them. A "majority" row gives what a constant prediction scores on
the same dev examples, the floor any method must beat. Times are medians over runs, so one run
slowed by other load on the machine does not move them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import numpy as np

from ..metrics import TASK_METRICS, glue_metrics
from ..errors import RunError, shorten
from ..train.io import atomic_savefig, atomic_write_bytes, refuse_links

TASK_ORDER = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "mnli_mm", "qnli", "rte", "wnli")
DEFAULT_TITLE = "Text results: PAD-MoE on GLUE"
METRIC_NAMES = {"mcc": "MCC", "accuracy": "acc", "f1": "F1", "pearson": "Pearson", "spearman": "Spearman"}


def method_of(result: dict) -> str:
    mode = result["mode"]
    if mode == "static":
        return "dense"
    if mode == "dynamic":
        return "MoE"
    name = f"PAD-MoE k={result['target_dynamic_ratio']:g}"
    if result.get("config", {}).get("dynamic", {}).get("granularity") == "channel":
        name += ", channel"
    if result.get("config", {}).get("partition", {}).get("static_init") == "dynamic_mean":
        name += ", W_s from experts"
    return name


def collect(root: str | Path) -> list[dict]:
    out = []
    for path in sorted(Path(root).rglob("results.json")):
        result = json.loads(path.read_text())
        if result.get("task") == "glue":
            result["_path"] = str(path)
            out.append(result)
    return out


def _mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else float("nan")


def _fmt(values: list[float], scale: float = 100.0) -> str:
    mean, std = _mean_std(values)
    return f"{mean * scale:.1f}" + ("" if math.isnan(std) else f" ± {std * scale:.1f}")


def summarize(results: list[dict]) -> dict:
    """{task: {method: {metric: [per seed], "seeds": [...], params, time}}} plus the averages."""
    table: dict[str, dict[str, dict]] = {}
    for r in results:
        task = r["info"]["glue_task"]
        key = "mnli_mm" if r["config"]["glue"].get("eval_split") == "dev_mismatched" else task
        cell = table.setdefault(key, {}).setdefault(method_of(r), {"seeds": [], "metrics": {}, "params": {},
                                                                  "time_per_epoch_s": [], "partition_s": []})
        cell["seeds"].append(r["seed"])
        for m in list(TASK_METRICS[key]) + ["score"]:
            cell["metrics"].setdefault(m, []).append(r["test"][m])
        cell["params"] = r["parameters"]
        if r.get("time_per_epoch_s") is not None:
            cell["time_per_epoch_s"].append(r["time_per_epoch_s"])
        if r.get("partition", {}).get("wall_time_s") is not None:
            cell["partition_s"].append(r["partition"]["wall_time_s"])
    methods = sorted({m for cells in table.values() for m in cells}, key=lambda m: (m != "dense", m != "MoE", m))
    # Average over the tasks that the methods with the most finished tasks share; a method missing one
    # of them (an ablation still running) gets no average rather than one over other tasks.
    most = max(sum(m in table[t] for t in table) for m in methods)
    leaders = [m for m in methods if sum(m in table[t] for t in table) == most]
    common = [t for t in TASK_ORDER if t in table and all(m in table[t] for m in leaders)]
    averages = {m: float(np.mean([np.mean(table[t][m]["metrics"]["score"]) for t in common]))
                for m in methods if common and all(m in table[t] for t in common)}
    return {"tasks": table, "methods": methods, "average_over": common, "averages": averages}


def paired_differences(summary: dict, baseline: str) -> dict[str, dict[str, list[float]]]:
    """{task: {method: [score(method) - score(baseline) for each seed both finished]}}: the same seed
    means the same training subset order, so per-seed differences cancel part of the seed noise."""
    out: dict[str, dict[str, list[float]]] = {}
    for task, cells in summary["tasks"].items():
        if baseline not in cells:
            continue
        base = dict(zip(cells[baseline]["seeds"], cells[baseline]["metrics"]["score"]))
        for method, cell in cells.items():
            if method == baseline:
                continue
            diffs = [score - base[seed] for seed, score in zip(cell["seeds"], cell["metrics"]["score"]) if seed in base]
            if diffs:
                out.setdefault(task, {})[method] = diffs
    return out


def majority_scores(results: list[dict]) -> dict[str, float]:
    """The score of always predicting the most frequent dev label (classification) or the mean
    score (STS-B: correlations are 0), on the same dev examples the runs used."""
    from ..data import glue as glue_data

    out = {}
    for r in results:
        g = r["config"]["glue"]
        task = r["info"]["glue_task"]
        if task in out or g.get("data_dir") is None:
            continue
        try:
            dev = glue_data.read_tsv(task, g["eval_split"], g["data_dir"]).subset(g["eval_subset"], g["subset_seed"])
        except (FileNotFoundError, ValueError):
            continue
        labels = np.asarray(dev.labels)
        if glue_data.get_task(task).is_regression:
            out[task] = 0.0
        else:
            majority = np.bincount(labels.astype(int)).argmax()
            out[task] = glue_metrics(task, labels, np.full_like(labels, majority))["score"]
    return out


def _shows_average(summary: dict) -> bool:
    return bool(summary["averages"]) and len(summary["average_over"]) > 1  # an average of one task repeats it


def plot(summary: dict, path: str | Path, majority: dict[str, float] | None = None) -> Path:
    """Grouped bars: one group per task (and the average), one bar per method, mean ± std over seeds
    (x100); a dashed tick marks the majority-class floor of each task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in TASK_ORDER if t in summary["tasks"]]
    groups = tasks + (["average"] if _shows_average(summary) else [])
    methods = summary["methods"]
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 + 1.4 * len(groups)), 4))
    for i, m in enumerate(methods):
        x, y, err = [], [], []
        for g, t in enumerate(groups):
            if t == "average":
                if m not in summary["averages"]:
                    continue
                mean, std = summary["averages"][m], float("nan")
            elif m in summary["tasks"][t]:
                mean, std = _mean_std(summary["tasks"][t][m]["metrics"]["score"])
            else:
                continue
            x.append(g - 0.4 + width * (i + 0.5))
            y.append(mean * 100)
            err.append(std * 100)  # nan (one seed, the average) draws no error bar
        ax.bar(x, y, width, yerr=err, capsize=2, label=m)
    for g, t in enumerate(groups):
        if majority and t in majority:
            ax.hlines(majority[t] * 100, g - 0.45, g + 0.45, colors="k", linestyles="dashed", linewidth=1)
    ax.set_xticks(range(len(groups)), [t.upper() if t != "average" else "average" for t in groups])
    ax.set_ylabel("dev score (x100)")
    ax.set_title("GLUE dev, mean ± std over seeds\n(dashed: majority class)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_savefig(fig, path, no_links_under=path)
    return Path(path)


def markdown(summary: dict, results: list[dict], majority: dict[str, float] | None = None,
             figure: str | None = None, title: str = DEFAULT_TITLE) -> str:
    tasks = [t for t in TASK_ORDER if t in summary["tasks"]]
    methods = summary["methods"]
    lines = [f"# {title}", ""]
    if results:
        c = results[0]["config"]
        g, p, o = c["glue"], c["partition"], c["optim"]
        lines += [
            f"Model `{g['model']}` ({results[0]['info']['model_class']}). Recipe shared by every run: "
            f"max length {g['max_length']}, training subset {g['train_subset'] or 'all'} (subset seed "
            f"{g['subset_seed']}), dev subset {g['eval_subset'] or 'all'}, {c['epochs']} epoch(s), batch "
            f"{c['batch_size']}, {o['name']} lr {o['lr']:g} (wd {o['weight_decay']:g}, {o['scheduler']}, "
            f"warm-up {o['warmup_epochs']:g} epoch), grad clip {o['grad_clip']}. MoE: "
            f"{c['dynamic']['num_experts']} experts, top-{c['dynamic']['top_k']}, upcycled, aux loss on. "
            f"PAD: {p['warmup_steps']} fully dynamic warm-up steps, then {p['scorer']} partition on "
            f"{p['scoring_batches']} x {p['batch_size'] or c['batch_size']} training examples, {p['rounds']} "
            f"{p['schedule']} round(s), {p['scope']} scope, compacted.",
            "",
        ]
    lines += ["## Dev scores (x100, mean ± std over seeds)", ""]
    if figure:
        lines += [f"![GLUE dev scores per task and method]({figure})", ""]
    header = "| task | metric | " + " | ".join(methods) + (" | majority |" if majority else " |")
    lines += [header, "|" + "---|" * (2 + len(methods) + (1 if majority else 0))]
    for t in tasks:
        cells = summary["tasks"][t]
        for metric in list(TASK_METRICS[t]) + (["score"] if len(TASK_METRICS[t]) > 1 else []):
            row = [t.upper() if metric == (TASK_METRICS[t][0]) else "", METRIC_NAMES.get(metric, metric)]
            for m in methods:
                cell = cells.get(m)
                row.append(f"{_fmt(cell['metrics'][metric])} (n={len(cell['seeds'])})" if cell else "—")
            if majority:
                show = metric == "score" if len(TASK_METRICS[t]) > 1 else True
                row.append(f"{majority[t] * 100:.1f}" if t in majority and show else "")
            lines.append("| " + " | ".join(row) + " |")
    if _shows_average(summary):
        row = ["**average**", "score"] + [f"**{summary['averages'][m] * 100:.1f}**" if m in summary["averages"]
                                          else "—" for m in methods]
        if majority:
            common = summary["average_over"]
            row.append(f"{np.mean([majority[t] for t in common]) * 100:.1f}" if all(t in majority for t in common) else "")
        lines.append("| " + " | ".join(row) + " |")
        lines += ["", f"Average over the tasks the most complete methods share: {', '.join(summary['average_over'])} "
                  "(a task's score is the mean of its metrics; — = a method has not finished all of them)."]
    diffs = paired_differences(summary, "MoE")
    others = [m for m in methods if m != "MoE" and any(m in d for d in diffs.values())]
    if others:
        lines += ["", "## Score minus MoE, paired by seed (x100, mean ± std)", "",
                  "| task | " + " | ".join(others) + " |", "|---|" + "---:|" * len(others)]
        for t in [t for t in tasks if t in diffs]:
            cells = [f"{_fmt(diffs[t][m])} (n={len(diffs[t][m])})" if m in diffs[t] else "—" for m in others]
            lines.append(f"| {t.upper()} | " + " | ".join(cells) + " |")
    lines += ["", "## Parameters and time", "",
              "| method | stored params (training form) | deployable params | counted on | "
              "time / epoch (s), median over runs | partition (s), median |",
              "|---|---:|---:|---|---:|---:|"]
    for m in methods:
        cells = [summary["tasks"][t][m] for t in tasks if m in summary["tasks"][t]]
        times = [x for c in cells for x in c["time_per_epoch_s"]]
        parts = [x for c in cells for x in c["partition_s"]]
        # Counts differ between tasks by the classifier head (STS-B's regression head is smaller).
        counted_on = next(t for t in tasks if m in summary["tasks"][t])
        p = summary["tasks"][counted_on][m]["params"]
        lines.append(f"| {m} | {p['stored']:,} | {p['deployable']:,} | {counted_on.upper()} | {np.median(times):.0f} | "
                     + (f"{np.median(parts):.0f} |" if parts else "— |"))
    lines += ["", "Time per epoch per task (s, median over seeds):", "", "| task | " + " | ".join(methods) + " |",
              "|---|" + "---:|" * len(methods)]
    for t in tasks:
        row = [t.upper()]
        for m in methods:
            c = summary["tasks"][t].get(m)
            row.append(f"{np.median(c['time_per_epoch_s']):.0f}" if c and c["time_per_epoch_s"] else "—")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from ..errors import PadnetError

    try:
        return _main(argv)
    except PadnetError as err:
        print(f"padnet.text.report: {' '.join(str(err).split())}", file=sys.stderr)
        return 2


def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m padnet.text.report", description=__doc__.split("\n")[0])
    ap.add_argument("dir", help="directory searched recursively for results.json of glue runs")
    ap.add_argument("--out", help="write the markdown here (default: print it)")
    ap.add_argument("--copy-results", metavar="DIR", help="copy each run's results.json to DIR/<name>/seed<k>.json "
                    "and write DIR/summary.json")
    ap.add_argument("--notes", help="markdown file appended to the report (default: DIR/NOTES.md if present)")
    ap.add_argument("--title", default=DEFAULT_TITLE, help="the report's heading")
    ap.add_argument("--plot", help="where to write the bar chart (default: --out with .png; none without --out)")
    args = ap.parse_args(argv)
    results = collect(args.dir)
    if not results:
        raise SystemExit(f"no results.json of a glue run under {args.dir}")
    summary = summarize(results)
    majority = majority_scores(results)
    figure = None
    plot_path = Path(args.plot) if args.plot else (Path(args.out).with_suffix(".png") if args.out else None)
    if args.out:
        refuse_links(args.out, args.out)  # every link refused before anything is written
    copies = []
    if args.copy_results:
        dest = Path(args.copy_results)
        copies = [(dest / str(r["name"]) / f"seed{r['seed']}.json", Path(r["_path"])) for r in results]
        for r, (target, _) in zip(results, copies):
            refuse_links(target, dest)
            if dest.resolve() not in target.resolve().parents:
                raise RunError(f"--copy-results {dest}: the run name {shorten(r['name'])} of {r['_path']} would "
                               "write outside it; padnet copies results only into that directory")
        refuse_links(dest / "summary.json", dest)
    if plot_path is not None:
        refuse_links(plot_path, plot_path)
        plot(summary, plot_path, majority)
        start = Path(args.out).parent if args.out else Path.cwd()
        figure = os.path.relpath(plot_path, start)
    text = markdown(summary, results, majority, figure, args.title)
    notes = Path(args.notes) if args.notes else (Path(args.copy_results) / "NOTES.md" if args.copy_results else None)
    if notes is not None and notes.is_file():
        text += "\n" + notes.read_text()
    if args.copy_results:
        for target, source in copies:
            atomic_write_bytes(target, source.read_bytes(), no_links_under=dest)
        atomic_write_bytes(dest / "summary.json", (json.dumps(summary, indent=2) + "\n").encode(), no_links_under=dest)
    if args.out:
        atomic_write_bytes(args.out, text.encode(), no_links_under=args.out)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
