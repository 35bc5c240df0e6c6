"""The GPU check (issue 30): what padnet has only measured on CPUs, on the machine at hand, in one run.

    bash benchmarks/gpu_check.sh              # on a CUDA machine: ~10 minutes on one GPU
    bash benchmarks/gpu_check.sh --cpu        # a dry run on the CPU: tiny shapes, every section, ~2 minutes

Sections (each a row group of the markdown table, all in one JSON):
- ``models``: a train step (forward, loss, backward, SGD) and an eval forward of static / DY-Conv / PAD
  element / PAD channel resnets, in fp32 and bf16 (autocast), eager and ``torch.compile``d: time per
  call and the ratio to the static model of the same pass, precision and mode;
- ``moe``: the same for the FFN output block: dense / MoELinear / PADMoELinear (element and channel);
- ``ddp``: a short ``padnet train`` under ``torchrun --nproc_per_node=<GPUs>`` (nccl; gloo with 2
  processes on the CPU), its exit status and wall time;
- ``assembly``: the PAD kernel assembly, padnet's eager form against Inductor's fused kernels
  (``benchmarks/fused_assembly.py``; on a CPU they lose, 0.9-5.2x slower; on a GPU Triton writes them);
- ``onnx``: ``padnet.export_onnx`` of the deployed PAD channel model, checked in onnxruntime (the CUDA
  provider when installed), and its latency.

Timings use ``torch.utils.benchmark`` (which synchronises CUDA) in interleaved rounds
(``common.time_variants``). The dry run (``--cpu``) compiles with the ``aot_eager`` backend (dynamo's
capture and the backward graph, without Inductor's code generation) so that it stays short; pass
``--compile-backend inductor`` to time real compiled kernels on a CPU.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
import yaml
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fused_assembly
from common import environment, set_masks, time_variants

import padnet
from padnet import models as padnet_models
from padnet.layers import MoELinear, PADMoELinear
from padnet.train_step import autocast

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- variants
def model_variants(arch: str, kappa: float) -> dict[str, nn.Module]:
    """static / DY-Conv / PAD element / PAD channel (compacted) torchvision ``arch``."""
    def build():
        torch.manual_seed(0)
        if hasattr(torchvision.models, arch):
            return getattr(torchvision.models, arch)(num_classes=10)
        width, layers = ((8, [1, 1]) if arch == "small_resnet" else (16, [1, 1, 1]))  # the dry run's; the demo's
        return padnet_models.build("small_resnet", 10, 3, small_input=True, width=width, layers=layers)

    out = {"static": build(), "DY-Conv": padnet.convert(build(), dynamic="conv", pad=False)}
    for granularity in ("element", "channel"):
        pad = set_masks(padnet.convert(build(), dynamic="conv", pad=True, granularity=granularity), kappa)
        out[f"PAD {granularity}"] = padnet.compact(pad)
    return out


def moe_variants(d_in: int, d_out: int, kappa: float) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    out = {"dense": nn.Linear(d_in, d_out), "MoE": MoELinear(d_in, d_out, num_experts=8, top_k=2)}
    for granularity in ("element", "channel"):
        layer = PADMoELinear(d_in, d_out, num_experts=8, top_k=2, granularity=granularity)
        out[f"PAD-MoE {granularity}"] = padnet.compact(set_masks(nn.Sequential(layer), kappa))[0]
    return out


def step_fn(model: nn.Module, forward: nn.Module, x: torch.Tensor, target: torch.Tensor, train: bool,
            precision: str):
    """One call: a train step (SGD) or an eval forward, under the precision's autocast."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def run():
        with autocast(x.device.type, precision):
            if not train:
                with torch.no_grad():
                    return forward(x)
            out = forward(x)
            loss = F.cross_entropy(out, target) if target is not None else out.float().pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return run


def time_group(variants: dict[str, nn.Module], x, target, device, args, base: str) -> list[dict]:
    """Every pass x precision x mode of ``variants``, each group timed together, as rows."""
    rows = []
    for train in (True, False):
        for precision in args.precisions:
            for compiled in (False, True):
                fns = {}
                for name, module in variants.items():
                    model = copy.deepcopy(module).to(device).train(train)
                    if args.channels_last and x.dim() == 4:
                        model = model.to(memory_format=torch.channels_last)
                    forward = torch.compile(model, backend=args.compile_backend, dynamic=False) if compiled else model
                    fns[name] = step_fn(model, forward, x, target, train, precision)
                started = time.perf_counter()
                for fn in fns.values():  # compile (and warm) every variant before any timing
                    fn()
                warm_s = time.perf_counter() - started
                times = time_variants(fns, args.min_run_time, args.rounds)
                for name, seconds in times.items():
                    rows.append({"pass": "train" if train else "eval", "precision": precision,
                                 "mode": f"compiled ({args.compile_backend})" if compiled else "eager",
                                 "variant": name, "ms": seconds * 1e3, "ratio": seconds / times[base],
                                 "first_calls_s": warm_s if compiled else None})
    return rows


# ----------------------------------------------------------------------------- sections
def models_section(args, device) -> list[dict]:
    variants = model_variants(args.arch, args.kappa)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    target = torch.randint(0, 10, (args.batch,), device=device)
    return [{"section": "models", "shape": f"{args.arch} {args.size}x{args.size} b{args.batch}", **row}
            for row in time_group(variants, x, target, device, args, "static")]


def moe_section(args, device) -> list[dict]:
    d_in, d_out = args.moe_shape
    x = torch.randn(args.tokens, d_in, device=device)
    return [{"section": "moe", "shape": f"{d_in}->{d_out}, {args.tokens} tokens", **row}
            for row in time_group(moe_variants(d_in, d_out, args.kappa), x, None, device, args, "dense")]


def ddp_section(args, device) -> list[dict]:
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    processes = gpus or 2  # one per GPU; two gloo processes on a CPU
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "ddp.yaml"
        config.write_text(yaml.safe_dump({
            "run_dir": str(Path(tmp) / "run"), "epochs": 1, "batch_size": 8, "eval_batch_size": 64, "threads": 1,
            "device": "auto" if gpus else "cpu", "progress": False, "tensorboard": False,
            "precision": args.precisions[-1],
            "data": {"name": "digits", "train_subset": 16 * processes * 4, "test_subset": 64},
            "model": {"name": "small_resnet", "width": 8, "layers": [1, 1]},
            "dynamic": {"mode": "pad", "dynamic_ratio": args.kappa, "granularity": "channel"},
            "partition": {"scoring_batches": 2, "rounds": 2}}))
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
                   "-m", "padnet", "train", "--config", str(config)]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                              env=dict(os.environ, OMP_NUM_THREADS="1"))
        wall = time.perf_counter() - started
        results = Path(tmp) / "run" / "results.json"
        finished = json.loads(results.read_text()) if results.is_file() else {}
    return [{"section": "ddp", "processes": processes, "backend": "nccl" if gpus else "gloo",
             "returncode": done.returncode, "wall_s": wall, "distributed": finished.get("distributed"),
             "stderr_tail": done.stderr[-1500:]}]


def onnx_section(args, device) -> list[dict]:
    import onnxruntime

    model = model_variants(args.arch, args.kappa)["PAD channel"].eval()
    padnet.deploy(model)
    example = torch.randn(1, 3, args.size, args.size)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pad.onnx"
        report = padnet.export_onnx(model, example, path)
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                     if p in onnxruntime.get_available_providers()]
        session = onnxruntime.InferenceSession(str(path), providers=providers)
        feed = {session.get_inputs()[0].name: example.numpy()}
        session.run(None, feed)
        started, calls = time.perf_counter(), 0
        while time.perf_counter() - started < args.min_run_time:
            session.run(None, feed)
            calls += 1
        latency = (time.perf_counter() - started) / calls
    return [{"section": "onnx", "shape": f"{args.arch} {args.size}x{args.size} b1",
             "provider": session.get_providers()[0], "ms": latency * 1e3, "file_bytes": report["file_bytes"]}]


def assembly_section(args, device) -> list[dict]:
    shapes = ((8, 2),) if args.cpu else fused_assembly.SHAPES
    with torch.enable_grad():
        return [row for channels, kernels in shapes for row in fused_assembly.measure(
            channels, kernels, device.type, args.min_run_time, args.rounds, args.compile_backend)]


SECTIONS = {"models": models_section, "moe": moe_section, "assembly": assembly_section, "ddp": ddp_section,
            "onnx": onnx_section}


# ----------------------------------------------------------------------------- output
def markdown(rows: list[dict], header: str) -> str:
    lines = [header, "", "| section | shape | pass | precision | mode | variant | ms | ratio |",
             "|---|---|---|---|---|---|---:|---:|"]
    for r in rows:
        if r["section"] in ("models", "moe"):
            lines.append(f"| {r['section']} | {r['shape']} | {r['pass']} | {r['precision']} | {r['mode']} | "
                         f"{r['variant']} | {r['ms']:.2f} | {r['ratio']:.2f}x |")
    for r in rows:
        if r["section"] == "ddp":
            lines.append(f"\nDDP: {r['processes']} processes ({r['backend']}), exit {r['returncode']}, "
                         f"{r['wall_s']:.0f} s")
        if r["section"] == "assembly":
            lines.append(f"\nPAD assembly {r['shape']} {r['pass']}: eager {r['eager_ms']:.2f} ms, fused "
                         f"{r['fused_ms']:.2f} ms ({r['ratio']:.2f}x)")
        if r["section"] == "onnx":
            lines.append(f"\nONNX ({r['provider']}): deployed PAD channel {r['shape']}: {r['ms']:.2f} ms")
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu", action="store_true", help="the dry run: CPU, tiny shapes, aot_eager compile")
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    p.add_argument("--arch", default="resnet50",
                   help="a torchvision resnet, small_resnet (the dry run's) or demo_resnet (the demo's model)")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--moe-shape", type=int, nargs=2, default=[3072, 768], metavar=("IN", "OUT"))  # BERT-base FFN out
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--kappa", type=float, default=0.3)
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"])
    p.add_argument("--compile-backend", default="inductor")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="models and image batches in channels_last (default; --no-channels-last: contiguous)")
    p.add_argument("--min-run-time", type=float, default=1.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "gpu_check")
    args = p.parse_args(argv)
    if args.cpu:  # tiny shapes: the dry run checks every section end to end, not the numbers
        args.arch, args.size, args.batch, args.moe_shape, args.tokens = "small_resnet", 16, 2, [64, 32], 64
        args.min_run_time, args.rounds, args.compile_backend = 0.05, 1, "aot_eager"
        if args.out == REPO / "docs" / "results" / "gpu_check":
            args.out = Path(tempfile.gettempdir()) / "padnet_gpu_check_dry_run"
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device("cpu" if args.cpu or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu" and not args.cpu:
        print("no CUDA device: timing on the CPU (use --cpu for the short dry run)", file=sys.stderr)
    rows: list[dict] = []
    for name in args.sections:
        print(f"gpu_check: {name} ...", file=sys.stderr, flush=True)
        rows += SECTIONS[name](args, device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    header = f"padnet GPU check on {name} ({environment()}){' - dry run' if args.cpu else ''}"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"device": name, "dry_run": args.cpu, "rows": rows}, indent=1))
    args.out.with_suffix(".md").write_text(markdown(rows, header))
    print(markdown(rows, header))
    failed = [r for r in rows if r.get("returncode", 0) != 0]
    for r in failed:
        print(f"DDP run failed:\n{r['stderr_tail']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
