"""Inference latency (issue 6): static, DY-Conv, dense-mask PAD, padnet PAD (training form, compacted),
padnet PAD deployed and timm's CondConv2d (optional peer), as ratios to static, one run.

    python benchmarks/inference.py                      # quick: resnet18+resnet50 at batch 1, layers at 1/8/64
    python benchmarks/inference.py --model-batches 1 8 64 --full
    python benchmarks/inference.py --models resnet18 --skip-layers --json out.json --md out.md
    python benchmarks/inference.py --memory-only        # only the memory table of the whole models

Whole models run at 224x224 in eval mode under no_grad. Batch 64 of resnet50 at 224x224 takes minutes
per variant on a 2-core CPU, so model batches default to 1; the output states what was measured.
timm is optional (pip install 'padnet[bench]'); without it that column is skipped with a message.
The memory table gives, per whole model, what it holds in memory (parameters and every buffer, the
derived ones included; activations and the per-thread kernel workspace excluded) and what its state
dict, i.e. a saved file, holds.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
import torchvision
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    LAYER_SHAPES,
    environment,
    layer_variants,
    set_masks,
    time_variants,
    timm_available,
    timm_condconv,
)

import padnet
from padnet.convert import convert
from padnet.files import atomic_write_bytes
from padnet.layers import pad_layers
from padnet.reference import DenseMaskPADConv2d

VARIANTS = ("static", "DY-Conv", "dense-mask PAD", "padnet PAD", "padnet PAD deployed", "timm CondConv")


def _replace(model, names, build):
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, build(getattr(parent, child)))
    return model


def model_variants(arch: str, kappa: float, with_timm: bool) -> dict[str, nn.Module]:
    build = getattr(torchvision.models, arch)
    torch.manual_seed(0)
    out = {"static": build(), "DY-Conv": convert(build(), pad=False)}
    pad = set_masks(convert(build()), kappa)
    names = [n for n, _ in pad_layers(pad)]
    out["dense-mask PAD"] = _replace(copy.deepcopy(pad), names, DenseMaskPADConv2d)
    compact = copy.deepcopy(pad)
    for _, layer in pad_layers(compact):
        layer.compact()
    out["padnet PAD"] = compact
    out["padnet PAD deployed"] = padnet.deploy(pad)
    if with_timm:
        convs = [n for n, m in build().named_modules() if isinstance(m, nn.Conv2d)][1:]
        out["timm CondConv"] = _replace(build(), convs, lambda c: timm_condconv(
            c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding, c.dilation, c.groups,
            c.bias is not None))
    return out


def latencies(variants: dict[str, nn.Module], names, x: torch.Tensor, min_run_time: float, rounds: int) -> dict:
    def eval_fn(mod):
        mod.eval()

        def fn():
            with torch.no_grad():
                mod(x)
        return fn

    return time_variants({n: eval_fn(variants[n]) for n in names}, min_run_time, rounds)


def megabytes(tensors) -> float:
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def memory(variants: dict[str, nn.Module]) -> dict[str, dict[str, float]]:
    return {name: {"held_mb": megabytes([*m.parameters(), *m.buffers()]),
                   "file_mb": megabytes(m.state_dict().values())} for name, m in variants.items()}


def memory_table(rows) -> str:
    names = list(rows[0]["memory"])
    lines = ["| model | MB | " + " | ".join(names) + " |", "|---|---|" + "---:|" * len(names)]
    for r in rows:
        for key, label in (("held_mb", "held in memory"), ("file_mb", "state dict (file)")):
            lines.append(f"| {r['what']} | {label} | " + " | ".join(f"{r['memory'][n][key]:.0f}" for n in names) + " |")
    return "\n".join(lines)


def table(rows, names):
    head = ("| what | batch | static ms | " + " | ".join(n for n in names if n != "static")
            + " | deployed <= DY | deployed / dense |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        t = r["seconds"]
        cells = [f"{t[n] / t['static']:.2f}x" if n in t else "n/a" for n in names if n != "static"]
        dep, dy, dense = t["padnet PAD deployed"], t["DY-Conv"], t["dense-mask PAD"]
        lines.append(f"| {r['what']} | {r['batch']} | {t['static'] * 1e3:.1f} | " + " | ".join(cells)
                     + f" | {'yes' if dep <= dy else 'NO'} | {dep / dense:.2f} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="*", default=["resnet18", "resnet50"], choices=["resnet18", "resnet50"])
    p.add_argument("--model-batches", type=int, nargs="+", default=[1])
    p.add_argument("--layer-batches", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--skip-layers", action="store_true")
    p.add_argument("--memory-only", action="store_true",
                   help="build the whole models, report their memory, time nothing")
    p.add_argument("--kappa", type=float, default=0.3)
    p.add_argument("--full", action="store_true", help="longer timing windows")
    p.add_argument("--json", type=Path, default=Path("inference_results.json"))
    p.add_argument("--md", type=Path, default=Path("inference_results.md"))
    args = p.parse_args(argv)
    min_run_time, rounds = (3.0, 5) if args.full else (0.6, 3)
    with_timm = timm_available()
    names = [n for n in VARIANTS if with_timm or n != "timm CondConv"]
    notes = [] if with_timm else ["timm is not installed: the timm CondConv column is skipped (pip install timm)."]
    start = time.time()
    rows, memory_rows = [], []
    for arch in args.models:
        variants = model_variants(arch, args.kappa, with_timm)
        memory_rows.append({"what": f"{arch}", "memory": memory(variants)})
        print(memory_rows[-1], file=sys.stderr, flush=True)
        for batch in [] if args.memory_only else args.model_batches:
            x = torch.randn(batch, 3, 224, 224)
            t = latencies(variants, names, x, min_run_time, rounds)
            rows.append({"what": f"{arch} @224", "batch": batch, "seconds": t})
            print(rows[-1], file=sys.stderr, flush=True)
        del variants
    if not (args.skip_layers or args.memory_only):
        for c_in, c_out, k, hw in LAYER_SHAPES:
            variants = layer_variants(c_in, c_out, k, args.kappa, with_deployed=True, with_timm=with_timm)
            for batch in args.layer_batches:
                x = torch.randn(batch, c_in, hw, hw)
                t = latencies(variants, names, x, min_run_time, rounds)
                rows.append({"what": f"{k}x{k} {c_in}->{c_out} @{hw}", "batch": batch, "seconds": t})
                print(rows[-1], file=sys.stderr, flush=True)
    if args.memory_only:
        measured = f"memory of models {args.models}, no timing"
    else:
        measured = (f"models {args.models} at batches {args.model_batches} (224x224); "
                    + ("no layers" if args.skip_layers else f"layer shapes at batches {args.layer_batches}"))
    header = (f"Inference latency, eval + no_grad, kappa = {args.kappa}, K = 4; {environment()}; "
              f"{'full' if args.full else 'quick'} timing; measured: {measured}; {time.time() - start:.0f} s.")
    parts = [header, *notes]
    if rows:
        parts += ["Ratios to static (lower is better).", table(rows, names)]
    if memory_rows:
        parts += ["Memory (MB): parameters and all buffers held, and the state dict a file holds.",
                  memory_table(memory_rows)]
    md = "\n\n".join(parts) + "\n"
    print(md)
    atomic_write_bytes(args.md, md.encode())
    atomic_write_bytes(args.json, json.dumps({"environment": environment(), "kappa": args.kappa, "measured": measured,
                                              "notes": notes, "rows": rows, "memory": memory_rows}, indent=1).encode())


if __name__ == "__main__":
    main()
