"""onnxruntime latency of ResNet-50 as static, DY-Conv (K = 4) and deployed PAD (kappa 0.3, element and
channel masks), as ratios to static measured in one run, beside PyTorch eager (issue 30).

    taskset -c 0 env OMP_NUM_THREADS=1 python benchmarks/onnx_latency.py --json out.json
    python benchmarks/onnx_latency.py --model resnet18 --size 64 --rounds 2     # a quick look

Each variant is exported with ``padnet.export_onnx`` (dynamic batch axis, dynamic convs in their mixture
form, checked in onnxruntime) and timed with one intra-op thread; variants run interleaved, each round in
another order, and the fastest round's median counts. Masks are random with exactly kappa of the units
dynamic (``common.set_masks``): latency depends on how many entries are dynamic, not which.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import padnet
from padnet.models import build

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, set_masks


def variants(model_name: str, kappa: float) -> dict:
    out = {}
    for name in ("static", "dy-conv", "pad-element", "pad-channel"):
        torch.manual_seed(0)
        model = build(model_name, 1000)
        if name != "static":
            padnet.convert(model, pad=name.startswith("pad"), granularity="channel" if "channel" in name else "element")
        if name.startswith("pad"):
            set_masks(model, kappa)
            padnet.deploy(model)
        out[name] = model.eval()
    return out


def median_seconds(fn, rounds_time: float) -> float:
    fn()  # warm-up
    times = []
    started = time.perf_counter()
    while time.perf_counter() - started < rounds_time or len(times) < 3:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    import onnxruntime

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--kappa", type=float, default=0.3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0, help="time per variant, batch and round")
    parser.add_argument("--json", help="write the measurements here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    models = variants(args.model, args.kappa)
    sessions, exported = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in models.items():
            started = time.perf_counter()
            info = export_onnx_quiet(model, torch.randn(2, 3, args.size, args.size), Path(tmp) / f"{name}.onnx")
            exported[name] = {"export_s": round(time.perf_counter() - started, 1),
                              "file_mb": info["file_bytes"] / 2**20, "max_abs_diff": info["max_abs_diff"]}
            sessions[name] = onnxruntime.InferenceSession(info["path"], options, providers=["CPUExecutionProvider"])
        best: dict = {}
        for r in range(args.rounds):
            names = list(models)[r % len(models):] + list(models)[: r % len(models)]
            for batch in args.batches:
                x = torch.randn(batch, 3, args.size, args.size)
                feed = x.numpy()
                for name in names:
                    session, model = sessions[name], models[name]
                    ort_s = median_seconds(lambda: session.run(None, {session.get_inputs()[0].name: feed}),
                                           args.seconds)
                    with torch.no_grad():
                        torch_s = median_seconds(lambda: model(x), args.seconds)
                    key = (name, batch)
                    old = best.get(key, (np.inf, np.inf))
                    best[key] = (min(old[0], ort_s), min(old[1], torch_s))
    rows = []
    print(f"{args.model} {args.size}x{args.size}, kappa {args.kappa}, one thread; {environment()}")
    print("| variant | batch | onnxruntime (ms) | vs static | PyTorch eager (ms) | vs static | ONNX file (MB) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for batch in args.batches:
        for name in models:
            ort_s, torch_s = best[(name, batch)]
            base_ort, base_torch = best[("static", batch)]
            rows.append({"variant": name, "batch": batch, "onnxruntime_ms": ort_s * 1e3, "torch_ms": torch_s * 1e3,
                         "onnxruntime_vs_static": ort_s / base_ort, "torch_vs_static": torch_s / base_torch,
                         **exported[name]})
            print(f"| {name} | {batch} | {ort_s * 1e3:.1f} | {ort_s / base_ort:.2f}x | {torch_s * 1e3:.1f} | "
                  f"{torch_s / base_torch:.2f}x | {exported[name]['file_mb']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "size": args.size, "kappa": args.kappa,
                                               "environment": environment(), "rows": rows}, indent=2) + "\n")


def export_onnx_quiet(model, example, path):
    """``padnet.export_onnx`` with the exporter's progress lines kept off the table."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        return padnet.export_onnx(model, example, path)


if __name__ == "__main__":
    main()
