"""Whole-model train step and eval forward (issue 13): static, DY-Conv, PAD (kappa 0.3, compacted) and
timm's CondConv (optional peer) on torchvision resnet18, as ratios to static, all measured in one run.

    taskset -c 0 env OMP_NUM_THREADS=1 python benchmarks/training.py               # 64x64 batch 32, 224 batch 8
    python benchmarks/training.py --configs 64:32 --strategies heuristic autotune grouped
    python benchmarks/training.py --json out.json

A train step is forward, cross-entropy, backward and an SGD step (momentum 0.9); the eval forward runs
in eval mode under no_grad. Each variant is timed in interleaved rounds (``common.time_variants``), so
the ratios are what to compare. ``--strategies`` runs the dynamic variants once per conv strategy mode
(``padnet.layers.set_conv_strategy``); the autotuner's one-off timing happens in the warm-up call.
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
from common import environment, set_masks, time_variants, timm_available  # noqa: E402

from padnet.convert import convert, pad_layers  # noqa: E402
from padnet.layers import conv_strategy  # noqa: E402


def timm_condconv_model(arch: str) -> nn.Module | None:
    """resnet18 with every conv that padnet converts replaced by timm's CondConv2d (K = 4, sigmoid
    routing from the pooled input): the peer library's fully dynamic conv in the same places."""
    if not timm_available():
        return None
    from common import timm_condconv

    model = getattr(torchvision.models, arch)()
    reference = convert(getattr(torchvision.models, arch)(), pad=False)
    for name, _ in [(n, m) for n, m in reference.named_modules() if type(m).__name__ == "DynamicConv2d"]:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        conv = getattr(parent, child)
        setattr(parent, child, timm_condconv(conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.stride[0],
                                             conv.padding[0], conv.dilation[0], conv.groups, conv.bias is not None))
    return model


def model_variants(arch: str, kappa: float, with_timm: bool) -> dict[str, nn.Module]:
    build = getattr(torchvision.models, arch)
    torch.manual_seed(0)
    out = {"static": build(), "DY-Conv": convert(build(), pad=False)}
    pad = set_masks(convert(build()), kappa)
    for _, layer in pad_layers(pad):
        layer.compact()
    out[f"PAD {kappa}"] = pad
    if with_timm:
        peer = timm_condconv_model(arch)
        if peer is not None:
            out["timm CondConv"] = peer
    return out


def train_step_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
    return step


def eval_fn(model: nn.Module, x: torch.Tensor):
    model = copy.deepcopy(model).eval()

    def forward():
        with torch.no_grad():
            model(x)
    return forward


def mode_fn(fn, mode):
    def run():
        with conv_strategy.conv_strategy(mode):
            fn()
    return run


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--configs", nargs="+", default=["64:32", "224:8"], help="resolution:batch pairs")
    p.add_argument("--kappa", type=float, default=0.3)
    p.add_argument("--strategies", nargs="+", default=["autotune"],
                   help=f"conv strategy modes for the dynamic variants; any of {conv_strategy.STRATEGY_MODES}")
    p.add_argument("--passes", nargs="+", default=["train", "eval"], choices=["train", "eval"])
    p.add_argument("--no-timm", action="store_true")
    p.add_argument("--min-run-time", type=float, default=2.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    for mode in args.strategies:
        conv_strategy.set_conv_strategy(mode)  # validates
    conv_strategy.set_conv_strategy("autotune")
    start = time.time()
    rows, raw = [], []
    for config in args.configs:
        size, batch = (int(v) for v in config.split(":"))
        models = model_variants(args.arch, args.kappa, not args.no_timm)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(batch, 3, size, size, generator=g)
        y = torch.randint(0, 1000, (batch,), generator=g)
        for pass_ in args.passes:
            fns = {}
            for name, model in models.items():
                base = train_step_fn(model, x, y) if pass_ == "train" else eval_fn(model, x)
                dynamic = name.startswith(("DY", "PAD"))
                for mode in (args.strategies if dynamic else [None]):
                    label = f"{name} [{mode}]" if dynamic and len(args.strategies) > 1 else name
                    fns[label] = mode_fn(base, mode) if dynamic else base
            t = time_variants(fns, args.min_run_time, args.rounds)
            for label, seconds in t.items():
                rows.append(f"| {args.arch} {size}x{size} | {batch} | {pass_} | {label} | {seconds * 1e3:.0f} | "
                            f"{seconds / t['static']:.2f}x |")
                print(rows[-1], file=sys.stderr, flush=True)
            raw.append(dict(arch=args.arch, size=size, batch=batch, pass_=pass_, seconds=t))
    print(f"Whole-model benchmark, kappa = {args.kappa}, K = 4; {environment()}; {time.time() - start:.0f} s.\n")
    print("| model | batch | pass | variant | ms | vs static |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    if args.json:
        args.json.write_text(json.dumps({"environment": environment(), "kappa": args.kappa, "rows": raw,
                                         "picks": conv_strategy.conv_strategy_picks()}, indent=1))


if __name__ == "__main__":
    main()
