"""Channel-granular PAD (issue 16, docs/method.md#granularity) against element PAD, the fully dynamic host and static,
as ratios measured in one run (interleaved, ``common.time_variants``).

    taskset -c 0 env OMP_NUM_THREADS=1 python benchmarks/granularity.py --inference --batches 1 8
    taskset -c 0 env OMP_NUM_THREADS=1 python benchmarks/granularity.py --inference --batches 64
    taskset -c 0 env OMP_NUM_THREADS=1 python benchmarks/granularity.py --train
    taskset -c 0 env OMP_NUM_THREADS=1 python benchmarks/granularity.py --moe

- ``--inference``: deployed resnet50 at 224x224, eval + no_grad, kappa 0.3 (random masks with exact
  counts: entries per layer for element PAD, output channels per layer for channel PAD).
  Targets: channel <= 1.15x static at batch 1, <= 1.5x at 8 and 64, below element PAD and DY-Conv.
- ``--train``: resnet18 at 64x64, batch 32, one SGD step; PAD partitioned (random masks) and compacted.
  Target: channel PAD <= 0.7x element PAD.
- ``--moe``: MiniLM's FFN output projection (1,536 -> 384), 1,024 tokens, 8 experts top-2, fwd + bwd;
  PAD kappa 0.5 compacted. Target: channel PAD-MoE <= 0.85x MoELinear.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torchvision
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, set_masks, time_variants
from training import eval_fn, train_step_fn

import padnet
from padnet.convert import convert


def resnets(arch: str, kappa: float, deployed: bool) -> dict[str, nn.Module]:
    """static, DY-Conv, element PAD and channel PAD (compacted, or deployed) of one torchvision resnet."""
    build = getattr(torchvision.models, arch)
    torch.manual_seed(0)
    out = {"static": build(), "DY-Conv": convert(build(), pad=False)}
    for granularity in ("element", "channel"):
        model = set_masks(convert(build(), granularity=granularity), kappa)
        out[f"PAD {granularity}"] = padnet.deploy(model) if deployed else padnet.compact(model)
    return out


def rows_of(results: dict[str, float], what: str) -> str:
    base = results["static"]
    cells = " | ".join(f"{t / base:.2f}x" for name, t in results.items() if name != "static")
    channel = results["PAD channel"]
    verdict = "yes" if channel < results["PAD element"] and channel < results["DY-Conv"] else "NO"
    return f"| {what} | {base * 1e3:.1f} | {cells} | {channel / results['PAD element']:.2f} | {verdict} |"


def header(names) -> list[str]:
    cells = " | ".join(n for n in names if n != "static")
    return [f"| what | static ms | {cells} | channel / element | channel below both |",
            "|---|---:|" + "---:|" * (len(names) - 1) + "---:|---|"]


def inference(batches, kappa, min_run_time, rounds) -> list[str]:
    models = {name: m.eval() for name, m in resnets("resnet50", kappa, deployed=True).items()}
    lines = header(list(models))
    for batch in batches:
        x = torch.randn(batch, 3, 224, 224)
        fns = {}
        for name, model in models.items():
            def forward(model=model):
                with torch.no_grad():
                    model(x)
            fns[name] = forward
        lines.append(rows_of(time_variants(fns, min_run_time, rounds), f"resnet50 @224 deployed, batch {batch}"))
        print(lines[-1], file=sys.stderr, flush=True)
    return lines


def train(kappa, min_run_time, rounds) -> list[str]:
    models = resnets("resnet18", kappa, deployed=False)
    x, y = torch.randn(32, 3, 64, 64), torch.randint(0, 1000, (32,))
    lines = header(list(models))
    lines.append(rows_of(time_variants({n: train_step_fn(m, x, y) for n, m in models.items()}, min_run_time, rounds),
                         "resnet18 @64 train step, batch 32"))
    lines.append(rows_of(time_variants({n: eval_fn(m, x) for n, m in models.items()}, min_run_time, rounds),
                         "resnet18 @64 eval forward, batch 32"))
    return lines


def moe(kappa, min_run_time, rounds) -> list[str]:
    from common import exact_mask
    from layers import pass_fn

    from padnet.layers import MoELinear, PADMoELinear

    torch.manual_seed(0)
    d_in, d_out, tokens = 1536, 384, 1024
    mods = {"dense": nn.Linear(d_in, d_out), "MoELinear": MoELinear(d_in, d_out)}
    for granularity in ("element", "channel"):
        pad = PADMoELinear(d_in, d_out, granularity=granularity)
        units = exact_mask((pad.num_units,), kappa, torch.Generator().manual_seed(0))
        pad.set_mask(pad.mask_from_units(units))
        mods[f"PAD-MoE {granularity}"] = pad.compact()
    for layer in list(mods.values())[1:]:  # a trained-looking router: tokens spread over the experts
        torch.nn.init.normal_(layer.router.w_gate, std=0.05)
    x = torch.randn(tokens, d_in)
    lines = ["| pass | " + " | ".join(f"{n} / MoELinear" for n in mods if n != "MoELinear") + " |",
             "|---|" + "---:|" * (len(mods) - 1)]
    for backward in (True, False):
        t = time_variants({n: pass_fn(m, x, backward) for n, m in mods.items()}, min_run_time, rounds)
        cells = " | ".join(f"{t[n] / t['MoELinear']:.2f}x" for n in mods if n != "MoELinear")
        lines.append(f"| {'fwd + bwd (train)' if backward else 'forward (eval, no_grad)'} | {cells} |")
        print(lines[-1], file=sys.stderr, flush=True)
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--inference", action="store_true")
    p.add_argument("--train", action="store_true")
    p.add_argument("--moe", action="store_true")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--kappa", type=float, default=None, help="default: 0.3 for resnets, 0.5 for the MoE")
    p.add_argument("--min-run-time", type=float, default=2.0)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    print(f"{environment()}; min_run_time {args.min_run_time} s, {args.rounds} interleaved rounds\n")
    if args.inference:
        print("\n".join(inference(args.batches, args.kappa or 0.3, args.min_run_time, args.rounds)) + "\n")
    if args.train:
        print("\n".join(train(args.kappa or 0.3, args.min_run_time, args.rounds)) + "\n")
    if args.moe:
        print("\n".join(moe(args.kappa or 0.5, args.min_run_time, args.rounds)) + "\n")


if __name__ == "__main__":
    main()
