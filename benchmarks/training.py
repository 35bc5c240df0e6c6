"""Whole-model train step and eval forward (issue 13): static, DY-Conv, PAD (kappa 0.3, compacted) and
timm's CondConv (optional peer) on torchvision resnet18, as ratios to static, all measured in one run.

    taskset -c 0 env OMP_NUM_THREADS=1 python benchmarks/training.py               # 64x64 batch 32, 224 batch 8
    python benchmarks/training.py --configs 64:32 --strategies heuristic autotune grouped
    python benchmarks/training.py --json out.json
    HF_HUB_OFFLINE=1 python benchmarks/training.py --minilm   # MiniLM train step: dense / MoE / PAD-MoE

A train step is forward, cross-entropy, backward and an SGD step (momentum 0.9); the eval forward runs
in eval mode under no_grad. Each variant is timed in interleaved rounds (``common.time_variants``), so
the ratios are what to compare. ``--strategies`` runs the dynamic variants once per conv strategy mode
(``padnet.layers.set_conv_strategy``); the autotuner's one-off timing happens in the warm-up call.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import sys
import time
from pathlib import Path

import torch
import torchvision
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, exact_mask, time_variants, timm_available

import padnet
from padnet.convert import convert
from padnet.layers import conv_strategy, pad_layers
from padnet.malloc import reuse_large_allocations


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


def dynamic_variants(package, arch: str, kappa: float, suffix: str = "") -> dict[str, nn.Module]:
    """DY-Conv and PAD (kappa, compacted) resnets converted by ``package`` (padnet, or an older padnet
    imported under another name, to time before and after in one run)."""
    module = importlib.import_module(f"{package.__name__}.convert")  # padnet.convert is also a function
    build = getattr(torchvision.models, arch)
    torch.manual_seed(0)
    dy = module.convert(build(), pad=False)
    pad = module.convert(build())
    g = torch.Generator().manual_seed(0)
    for _, layer in importlib.import_module(f"{package.__name__}.layers").pad_layers(pad):
        layer.set_mask(exact_mask(layer.kernel_shape, kappa, g))
        layer.compact()
    return {f"DY-Conv{suffix}": dy, f"PAD {kappa}{suffix}": pad}


def model_variants(arch: str, kappa: float, with_timm: bool, before=None) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    out = {"static": getattr(torchvision.models, arch)()}
    out.update(dynamic_variants(padnet, arch, kappa))
    if before is not None:
        out.update(dynamic_variants(before, arch, kappa, " (before)"))
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


def minilm_rows(min_run_time: float, rounds: int, kappa: float = 0.5) -> list[str]:
    """The GLUE recipe's model (the embedded all-MiniLM-L6-v2, 6 layers, FFN 1,536): a train step (forward,
    loss, aux loss, backward, AdamW) at batch 16 x 64 tokens for the dense model, the MoE (8 x top-2,
    upcycled) and PAD-MoE (kappa 0.5, random exact mask, compacted), the experts perturbed so they differ."""
    from padnet.layers import aux_loss
    from padnet.models.transformers_models import load_sequence_classifier

    def build(dynamic):
        torch.manual_seed(0)
        model = load_sequence_classifier(None, 2, seed=0)
        if dynamic is None:
            return model
        convert(model, dynamic="moe", pad=dynamic == "pad", init="upcycle")
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for module in model.modules():
                if hasattr(module, "router"):
                    module.router.w_gate.normal_(0, 0.05, generator=g)
                    weight = module.weight if hasattr(module, "weight") else None
                    if weight is not None:
                        weight.add_(torch.randn(weight.shape, generator=g) * 1e-3)
        for _, layer in pad_layers(model):
            layer.set_mask(exact_mask(layer.kernel_shape, kappa, g))
            layer.compact()
        return model

    models = {"dense": build(None), "MoE 8 x top-2": build("moe"), f"PAD-MoE {kappa}": build("pad")}
    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(1000, 20000, (16, 64), generator=g),
             "attention_mask": torch.ones(16, 64, dtype=torch.long), "labels": torch.randint(0, 2, (16,), generator=g)}
    fns = {}
    for name, model in models.items():
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

        def step(model=model, opt=opt):
            opt.zero_grad(set_to_none=True)
            (model(**batch).loss + aux_loss(model)).backward()
            opt.step()
        fns[name] = step
    t = time_variants(fns, min_run_time, rounds)
    return [f"| MiniLM-L6 | 16 x 64 tokens | train | {name} | {seconds * 1e3:.0f} | {seconds / t['dense']:.2f}x | "
            f"{seconds / t['MoE 8 x top-2']:.2f}x |" for name, seconds in t.items()]


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
    p.add_argument("--before", type=Path, metavar="DIR",
                   help="also time an older padnet: DIR holds it as the package 'padnet_before' (e.g. "
                        "git archive REV src/padnet | tar -x -C DIR; mv DIR/src/padnet DIR/padnet_before)")
    p.add_argument("--reuse-large-allocations", action="store_true",
                   help="apply padnet.malloc.reuse_large_allocations() first, as the padnet command does")
    p.add_argument("--minilm", action="store_true", help="only the MiniLM dense / MoE / PAD-MoE train step")
    args = p.parse_args(argv)
    if args.reuse_large_allocations and not reuse_large_allocations():
        raise SystemExit("--reuse-large-allocations: not applicable here (needs glibc on Linux)")
    if args.minilm:
        rows = minilm_rows(args.min_run_time, args.rounds)
        print(f"MiniLM train step; {environment()}.\n")
        print("| model | batch | pass | variant | ms | vs dense | vs MoE |")
        print("|---|---|---|---|---|---|---|")
        print("\n".join(rows))
        return
    for mode in args.strategies:
        conv_strategy.set_conv_strategy(mode)  # validates
    conv_strategy.set_conv_strategy("autotune")
    before = None
    if args.before is not None:
        sys.path.insert(0, str(args.before))
        before = importlib.import_module("padnet_before")
    start = time.time()
    rows, raw = [], []
    for config in args.configs:
        size, batch = (int(v) for v in config.split(":"))
        models = model_variants(args.arch, args.kappa, not args.no_timm, before)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(batch, 3, size, size, generator=g)
        y = torch.randint(0, 1000, (batch,), generator=g)
        for pass_ in args.passes:
            fns = {}
            for name, model in models.items():
                base = train_step_fn(model, x, y) if pass_ == "train" else eval_fn(model, x)
                dynamic = name.startswith(("DY", "PAD")) and "(before)" not in name
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
