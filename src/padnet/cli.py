"""The ``padnet`` command: train, eval, export, predict, sweep, report, config, demo.

    padnet train --config configs/fmnist_demo.yaml --set seed=1 --set optim.lr=0.05
    padnet eval --run runs/demo/pad-0.3        (or --checkpoint FILE)
    padnet export --run runs/demo/pad-0.3      (deployed model.safetensors, checked against the run)
    padnet predict --model runs/demo/pad-0.3/model.safetensors photos/ --csv
    padnet sweep --config configs/fmnist_sweep.yaml
    padnet report runs/fmnist_sweep --out docs/results/vision.md   (any task: runs/glue_sweep too)
    padnet demo

Plug-in tasks: ``--import MODULE`` (or ``imports:`` in a config, or an entry point; ``padnet.plugins``).

Under torchrun (several processes, one per GPU or several on CPU) ``train``, ``sweep`` and ``demo`` train
with DistributedDataParallel; only rank 0 prints and writes:

    torchrun --standalone --nproc_per_node 4 -m padnet train --config FILE
    torchrun --standalone --nproc_per_node 4 --no-python padnet train --config FILE
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
import time
from pathlib import Path

from ._version import __version__

# Each command imports its modules when it runs: a command pays only for what it uses (`padnet report` does
# not import transformers), and no import cycle hides behind the parser. `import padnet` itself imports torch
# (about 2.5 s of `padnet --help` here): the package's API is imported eagerly, so that importing it registers
# every built-in architecture a model file may name.


def _train(args) -> int:
    from . import distributed
    from .train import Trainer, load_config

    config = load_config(args.config, args.set)
    with distributed.process_group(config.device):
        results = Trainer(config).train()
        if not distributed.is_main_process():
            return 0
    print(json.dumps({k: results[k] for k in ("name", "seed", "dynamic_ratio", "test", "time_per_epoch_s")}
                     | {"deployable_params": results["parameters"]["deployable"], "run_dir": config.run_dir}, indent=2))
    return 0


def _one_process_only(command: str) -> None:
    from .distributed import launch_env

    env = launch_env()
    if env is not None and env.world_size > 1:
        raise SystemExit(f"padnet {command}: runs in one process (it got WORLD_SIZE={env.world_size} from torchrun); "
                         f"run `padnet {command} ...` without torchrun")


def _eval(args) -> int:
    from .train import evaluate_run

    _one_process_only("eval")
    if not (args.run or args.checkpoint):
        raise SystemExit("padnet eval: give --run DIR or --checkpoint FILE")
    print(json.dumps(evaluate_run(args.run, args.checkpoint, args.set), indent=2))
    return 0


def _export(args) -> int:
    from .train import export_run

    _one_process_only("export")
    if not (args.run or args.checkpoint):
        raise SystemExit("padnet export: give --run DIR or --checkpoint FILE")
    print(json.dumps(export_run(args.run, args.checkpoint, args.out, args.set, check=not args.no_check,
                                onnx=args.format == "onnx"), indent=2))
    return 0


def _sweep(args) -> int:
    from . import distributed
    from .train.sweep import load_sweep

    configs = load_sweep(args.config, args.set)
    if args.only:
        configs = [c for c in configs if any(fnmatch.fnmatchcase(c.name, pattern) for pattern in args.only)]
        if not configs:
            print(f"padnet sweep: --only {' '.join(args.only)} matches no run of {args.config}", file=sys.stderr)
            return 2
    if args.seeds is not None:
        configs = [c for c in configs if c.seed in args.seeds]
        if not configs:
            print(f"padnet sweep: --seeds {' '.join(map(str, args.seeds))} matches no run of {args.config}",
                  file=sys.stderr)
            return 2
    if args.dry_run or not configs:
        return _sweep_runs(args, configs, print)
    with distributed.process_group(configs[0].device):
        say = print if distributed.is_main_process() else (lambda *a, **k: None)
        return _sweep_runs(args, configs, say)


def _sweep_runs(args, configs, print) -> int:  # noqa: A002 - print: rank 0's print, a no-op elsewhere
    from .train import Trainer
    from .train.rundir import RunInUseError
    from .train.sweep import CHANGED, SweepClock, run_status

    statuses = [run_status(c) for c in configs]
    count = {kind: sum(s.startswith(kind) for s in statuses)
             for kind in ("finished", CHANGED, "stale", "in progress", "interrupted", "pending")}
    print(f"sweep {args.config}: {len(configs)} runs ({count['finished'] - count[CHANGED]} finished, {count[CHANGED]} "
          f"finished with a different recipe, {count['stale']} stale (kept), {count['in progress']} in progress "
          f"elsewhere, {count['interrupted']} interrupted, {count['pending']} pending)", flush=True)
    if args.dry_run:
        for c, s in zip(configs, statuses):
            print(f"  {s:<11} {c.run_dir}")
        _print_preprocessing(configs, print)
        return 0
    settled = _changed_runs(args, configs, statuses, print)
    if settled is None:
        return 2
    statuses = settled
    clock = SweepClock(statuses.count("pending") + statuses.count("interrupted"))
    skipped = []
    for i, (config, status) in enumerate(zip(configs, statuses)):
        if status == "finished" or status.startswith(("stale", "in progress")):
            skipped += [f"{config.run_dir}: {status}"] if status.startswith("in progress") else []
            continue
        print(f"[{i + 1}/{len(configs)}] {'resuming' if status == 'interrupted' else 'starting'} {config.run_dir} "
              f"({clock.line()})", flush=True)
        started = time.perf_counter()
        try:
            results = Trainer(config).train()
        except RunInUseError as err:  # another process took the run since the statuses were read
            print(f"[{i + 1}/{len(configs)}] skipped {config.run_dir}: in progress (pid {err.holder})", flush=True)
            skipped.append(f"{config.run_dir}: in progress (pid {err.holder})")
            clock.todo -= 1
            continue
        clock.done()
        print(f"[{i + 1}/{len(configs)}] {config.run_dir}: {results['main_metric']} "
              f"{results['test'][results['main_metric']]:.4f} ({time.perf_counter() - started:.0f}s; "
              f"{clock.line()})", flush=True)
    if skipped:
        print(f"skipped {len(skipped)} run(s) another process is running; run the sweep again once they finish to "
              "report them:\n  " + "\n  ".join(skipped), flush=True)
    return 0


def _changed_runs(args, configs, statuses, print) -> list[str] | None:  # noqa: A002
    """The statuses once the finished runs of another recipe are dealt with: refused (None, after saying
    which and how to go on), run again (``--rerun-changed``: their directories emptied, now pending) or
    kept and marked stale (``--keep-stale``)."""
    from . import distributed
    from .files import atomic_write_bytes
    from .train.recipe import STALE
    from .train.rundir import discard
    from .train.sweep import CHANGED

    # Runs kept stale before are run again with --rerun-changed, and otherwise left as they are.
    changed = [i for i, s in enumerate(statuses) if s.startswith(CHANGED) or args.rerun_changed and s.startswith(
        "stale")]
    if not changed:
        return statuses
    if not (args.rerun_changed or args.keep_stale):
        lines = [f"  {configs[i].run_dir}: {statuses[i]}" for i in changed]
        print(f"padnet sweep: {len(changed)} finished run(s) ran another recipe than {args.config} gives now:\n"
              + "\n".join(lines) + "\n--rerun-changed runs them again (their results are replaced); --keep-stale "
              "keeps their results, marked stale in padnet report", file=sys.stderr, flush=True)
        return None
    statuses = list(statuses)
    for i in changed:
        if distributed.is_main_process():  # one process changes the run directories; the others wait below
            if args.rerun_changed:
                discard(configs[i].run_dir)
            else:
                note = {"stale": True, "changes": statuses[i].partition(": ")[2]}
                atomic_write_bytes(Path(configs[i].run_dir) / STALE, (json.dumps(note) + "\n").encode())
        statuses[i] = "pending" if args.rerun_changed else "stale"
        print(f"{'rerunning' if args.rerun_changed else 'kept as stale'}: {configs[i].run_dir}", flush=True)
    distributed.barrier()
    return statuses


def _print_preprocessing(configs, print) -> None:  # noqa: A002 - print: rank 0's print
    """What the image runs of a sweep will do to their images, once per distinct data section."""
    from .data import DataConfig, preprocessing_words

    seen = set()
    for config in configs:
        if config.task != "image_classification":
            continue
        words = preprocessing_words(config.section("data", DataConfig))
        if words is not None and words not in seen:
            seen.add(words)
            runs = [c.name for c in configs if c.task == config.task and c.section("data", DataConfig)
                    == config.section("data", DataConfig)]
            print(f"preprocessing ({', '.join(sorted(set(runs)))}): {words}")


def _predict(args) -> int:
    from .prediction import format_results, predict, prediction_spec, read_text_inputs
    from .serialization import load

    _one_process_only("predict")
    model = load(args.model)
    spec = prediction_spec(model, args.model)
    inputs = list(args.inputs)
    if spec["input"]["kind"] == "text":
        columns = list(spec["input"].get("columns") or ["text"])
        inputs = [x for item in inputs for x in (read_text_inputs(item, columns) if Path(item).is_file() else [item])]
    results = predict(model, inputs, batch_size=args.batch_size, device=args.device, progress=not args.quiet,
                      tokenizer=args.tokenizer)
    print(format_results(results, "json" if args.json else "csv" if args.csv else "text"))
    return 0


def _report(args) -> int:
    from .report import write_report

    _one_process_only("report")
    report, text = write_report(args.dirs, out=args.out, plot_path=args.plot, json_path=args.json,
                                copy_results=args.copy_results, notes=args.notes, title=args.title,
                                baseline=args.baseline, task=args.task)
    if args.out:
        print(f"wrote {args.out} and {args.plot or Path(args.out).with_suffix('.png')}", file=sys.stderr)
    else:
        print(text)
    if args.copy_results:
        print(f"copied {report.runs} results.json files to {args.copy_results}", file=sys.stderr)
    return 0


def _config(args) -> int:
    from .train.explain import explain, markdown, text

    keys = explain(args.explain or None)
    print(markdown(keys) if args.markdown else text(keys))
    return 0


def _demo(args) -> int:
    from . import distributed
    from .demo import run_demo

    with distributed.process_group("cpu"):
        run_demo(args.out, args.seed, args.data, args.quiet, distributed.is_main_process())
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be an integer >= 1")
    return value


def _add_imports(p: argparse.ArgumentParser) -> None:
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import this plug-in first (a .py file, or an installed module, that calls "
                        "padnet.train.tasks.register_task); repeatable")


def _add_finished_run_parser(sub, name: str, summary: str, func) -> argparse.ArgumentParser:
    """A command on a finished run (eval, export): the run or its checkpoint, overrides, plug-ins."""
    p = sub.add_parser(name, help=summary)
    p.add_argument("--run", help="run directory (holding checkpoint.pt)")
    p.add_argument("--checkpoint", help="a checkpoint file instead of --run")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the stored config, e.g. data.root=/other/dir")
    _add_imports(p)
    p.set_defaults(func=func)
    return p


def _add_predict_parser(sub) -> None:
    p = sub.add_parser("predict", help="a model file from padnet export on new inputs: label and probability per input")
    p.add_argument("--model", required=True, help="the .safetensors file padnet export wrote")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image models: image files or folders; text models: "
                   "texts, or files (one example per line, or CSV/TSV/JSON-lines with the text columns)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print a JSON list")
    out.add_argument("--csv", action="store_true", help="print CSV (input,label,probability)")
    p.add_argument("--batch-size", type=_positive, default=32, help="inputs per forward pass (default 32)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--tokenizer", metavar="NAME_OR_FOLDER", help="text models: the tokenizer to use; needed when "
                   "the file names a folder, which padnet never loads on a file's say-so")
    _add_imports(p)
    p.set_defaults(func=_predict)


def _torch_version() -> str:
    """torch's version with its build (``2.14.1+cu130``); importing it costs nothing here, `import padnet` has."""
    import torch

    return torch.__version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="padnet", description="Partially dynamic networks (PAD-Net): train, "
                                     "evaluate, sweep and report.")
    parser.add_argument("--version", action="version", version=f"padnet {__version__} (torch {_torch_version()})")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one run from a YAML config (resumes if its run_dir holds a checkpoint)")
    p.add_argument("--config", required=True, help="YAML run config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key, e.g. optim.lr=0.05")
    _add_imports(p)
    p.set_defaults(func=_train)

    _add_finished_run_parser(sub, "eval", "evaluate a run's last checkpoint on its eval set", _eval)
    p = _add_finished_run_parser(sub, "export", "deploy a run's model, save it (padnet.save) and check the file "
                                 "reproduces the run's eval metrics", _export)
    p.add_argument("--out", help="the .safetensors file to write (default: <run dir>/model.safetensors)")
    p.add_argument("--format", choices=("safetensors", "onnx"), default="safetensors",
                   help="onnx: also write the deployed model as <out>.onnx (dynamic batch axis), checked in "
                        "onnxruntime (pip install 'padnet[onnx]')")
    p.add_argument("--no-check", action="store_true",
                   help="write the file without loading and evaluating it again (faster; the file is then not "
                        "shown to reproduce the run)")

    _add_predict_parser(sub)

    p = sub.add_parser("sweep", help="run every run of a sweep file (skips finished, resumes interrupted)")
    p.add_argument("--config", required=True, help="sweep YAML (base, output_dir, seeds, runs)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key of the base config")
    p.add_argument("--dry-run", action="store_true", help="list the runs and their status, run nothing")
    changed = p.add_mutually_exclusive_group()
    changed.add_argument("--rerun-changed", action="store_true",
                         help="run again the finished runs whose stored recipe differs from the sweep's now")
    changed.add_argument("--keep-stale", action="store_true",
                         help="keep the results of finished runs of another recipe, marked stale in padnet report")
    p.add_argument("--only", action="append", default=[], metavar="PATTERN",
                   help="run only the runs whose name matches this glob (repeatable); e.g. split a sweep over "
                        "several processes with disjoint patterns")
    p.add_argument("--seeds", type=int, nargs="+", metavar="SEED", help="run only these of the sweep's seeds")
    _add_imports(p)
    p.set_defaults(func=_sweep)

    p = sub.add_parser("report", help="markdown tables (mean ± std over seeds, paired differences to the fully "
                                      "dynamic baseline), plot and JSON of the finished runs of any task")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="sweep or run directory searched recursively for "
                                                          "results.json (several: reported together)")
    p.add_argument("--out", help="write the markdown report here (and the plot beside it); default: print it")
    p.add_argument("--plot", help="PNG path of the plot (default: --out with .png)")
    p.add_argument("--json", help="write the report's data as JSON here (default: DIR of --copy-results/report.json)")
    p.add_argument("--copy-results", metavar="DIR", help="copy every results.json here (keeping each sweep's layout)")
    p.add_argument("--notes", help="markdown placed after the tables (default: NOTES.md of --copy-results, if any)")
    p.add_argument("--title", help="the report's heading (default: 'Results: <DIR name>')")
    p.add_argument("--baseline", metavar="LABEL", help="the configuration the paired differences subtract "
                                                      "(default: the fully dynamic one, DY-Conv or MoE)")
    p.add_argument("--task", help="report only the runs of this task (when the directories hold several)")
    p.set_defaults(func=_report)

    p = sub.add_parser("config", help="what every run-config key means: type, default, allowed values")
    p.add_argument("--explain", nargs="?", const="", metavar="KEY", required=True,
                   help="one key or a section (e.g. optim.lr, partition); every key when no KEY is given")
    p.add_argument("--markdown", action="store_true", help="the reference page (docs/config.md) instead of lines")
    _add_imports(p)
    p.set_defaults(func=_config)

    p = sub.add_parser("demo", help="Fashion-MNIST in about 3 minutes: static vs DY-Conv vs PAD (kappa 0.3), "
                                    "exported, timed, tabled and plotted")
    p.add_argument("--data", help="Fashion-MNIST directory (default: auto-detect)")
    p.add_argument("--out", default="runs/demo", help="run directory root (default: runs/demo)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .distributed import DistributedSetupError, launch_env
    from .errors import ConfigError, NonFiniteLossError, PadnetError
    from .malloc import reuse_large_allocations
    from .plugins import import_plugins
    from .train import ExportCheckError

    args = build_parser().parse_args(argv)
    reuse_large_allocations()  # freed tensors of 32 MB+ stay in the process: see padnet.malloc
    try:
        env = launch_env()
    except DistributedSetupError as err:
        print(f"padnet {args.command}: {err}", file=sys.stderr)
        return _exit(2, argv)
    # Under torchrun every rank reports its own error; say which one it is.
    where = f" (rank {env.rank} of {env.world_size})" if env is not None and env.world_size > 1 else ""
    try:
        import_plugins(getattr(args, "imports", None))
        code = args.func(args)
    except ConfigError as err:
        print(f"padnet {args.command}{where}: invalid config: {err}", file=sys.stderr)
        code = 2
    except (NonFiniteLossError, ExportCheckError) as err:
        print(f"padnet {args.command}{where}: {err}", file=sys.stderr)
        code = 1
    except (PadnetError, DistributedSetupError, OSError, UnicodeDecodeError) as err:
        # Bad input the user can fix, a full or read-only disk, a file in the wrong encoding: one clear
        # line naming the file (and the line where known), no traceback.
        print(f"padnet {args.command}{where}: {_one_line(err)}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print(f"\npadnet {args.command}{where}: interrupted; run the same command to resume", file=sys.stderr)
        code = 130
    return _exit(code, argv)


def _one_line(err: BaseException) -> str:
    """``err`` as one line that names the file: OSError's filename, UnicodeDecodeError's file and line
    (set by padnet's readers as ``err.padnet_path`` / ``err.padnet_line``)."""
    if isinstance(err, UnicodeDecodeError):
        path = getattr(err, "padnet_path", None)
        line = getattr(err, "padnet_line", None)
        where = f"{path}:{line}: " if path and line else f"{path}: " if path else ""
        return (f"{where}not UTF-8 text ({err.reason} at byte {err.start}); save the file as UTF-8")
    text = str(err)
    if isinstance(err, OSError) and err.strerror:
        names = [str(n) for n in (err.filename, err.filename2) if n is not None]
        text = f"{' -> '.join(names)}: {err.strerror}" if names else err.strerror
    return " ".join(text.split())


def _exit(code: int, argv) -> int:
    if argv is None:
        sys.exit(code)
    return code
