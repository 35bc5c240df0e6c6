"""One speed report (issue 29): every row the speed issues track, as ratios measured in one run, with
the target beside each, in about ten minutes on one thread.

    taskset -c 0 env OMP_NUM_THREADS=1 PADNET_BENCH_THREADS=1 python benchmarks/speed.py
    ... python benchmarks/speed.py --json docs/results/speed.json       # also the raw seconds
    ... python benchmarks/speed.py --before DIR     # an older padnet beside (DIR/padnet_before, see below)
    ... python benchmarks/speed.py --compile        # also torch.compile'd models (minutes of compiling)

Rows (each a ratio of two variants timed interleaved in the same rounds, ``common.time_variants``):

- resnet18 64x64 batch 32, train step (forward, cross-entropy, backward, SGD) and eval forward: element
  PAD (kappa 0.3, compacted) / DY-Conv, and channel PAD (kappa 0.3) / static;
- MiniLM's FFN output shape (1,536 -> 384, 1,024 tokens, 8 experts top-2): MoELinear / dense linear and
  PADMoELinear (kappa 0.5) / MoELinear, forward + backward, with the routing balance it ran with;
- deployed resnet50 224x224 batch 1, channel PAD kappa 0.3 / static, and the memory the kept rows hold;
- ``padnet.partition`` of resnet18 (4 batches of 16 at 32x32, 5 rounds) / 4 training steps (not
  interleaved: one partition against four steps, as ``partition_cost.py --quick``).

``--before DIR``: DIR holds an older padnet as the package ``padnet_before`` (``git archive REV src/padnet
| tar -x -C DIR && mv DIR/src/padnet DIR/padnet_before``); its DY-Conv, element and channel PAD resnets
and its MoE layers are timed in the same rounds, so "before" and "after" ratios share one machine state.
``--compile``: the resnet18 and MoE rows again with every model ``torch.compile``d (Inductor's warm-up
is printed; on a CPU it is minutes).
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, exact_mask, set_masks, time_variants
from training import eval_fn, train_step_fn

import padnet
from padnet.layers import conv_strategy
from padnet.malloc import reuse_large_allocations

ROWS = ("resnet18", "moe", "deployed", "partition")
# row -> target ratio (the table)
TARGETS = {
    "resnet18 train: element PAD / DY-Conv": 1.0,
    "resnet18 eval: element PAD / DY-Conv": 1.0,
    "resnet18 train: channel PAD / static": 1.5,
    "resnet18 eval: channel PAD / static": None,
    "MoE fwd+bwd: MoELinear / dense": 2.2,
    "MoE fwd+bwd: PADMoELinear / MoELinear": 1.05,
    "deployed resnet50 b1: channel PAD / static": 1.15,
    "partition resnet18: 4 batches x 5 rounds / 4 steps": 5.2,
}


def resnet_variants(package, kappa: float, suffix: str = "") -> dict[str, torch.nn.Module]:
    """DY-Conv, element and channel PAD resnet18s (masks random with exact kappa, compacted), converted by
    ``package`` (padnet, or an older one imported under another name)."""
    convert = importlib.import_module(f"{package.__name__}.convert").convert
    layers = importlib.import_module(f"{package.__name__}.layers")

    def build():
        torch.manual_seed(0)
        return torchvision.models.resnet18()
    out = {f"DY-Conv{suffix}": convert(build(), pad=False)}
    for granularity in ("element", "channel"):
        model = set_masks(convert(build(), granularity=granularity), kappa, find=layers.pad_layers)
        for _, layer in layers.pad_layers(model):
            layer.compact()
        out[f"PAD {granularity}{suffix}"] = model
    return out


def compiled(models: dict[str, torch.nn.Module], on: bool) -> dict[str, torch.nn.Module]:
    return {f"{name} [compiled]": torch.compile(copy.deepcopy(m)) for name, m in models.items()} if on else models


def resnet_rows(before, compile_: bool, min_run_time: float, rounds: int, results: dict) -> None:
    torch.manual_seed(0)
    models = {"static": torchvision.models.resnet18(), **resnet_variants(padnet, 0.3)}
    if before is not None:
        models.update(resnet_variants(before, 0.3, " (before)"))
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 3, 64, 64, generator=g), torch.randint(0, 1000, (32,), generator=g)
    for tag in ("", " [compiled]") if compile_ else ("",):
        for pass_ in ("train", "eval"):
            chosen = compiled(models, bool(tag))
            fns = {name: (train_step_fn(m, x, y) if pass_ == "train" else eval_fn(m, x)) for name, m in chosen.items()}
            start = time.perf_counter()
            for fn in fns.values():
                fn()  # the compile, when compiling: timed here, once
            if tag:
                print(f"compile warm-up, resnet18 {pass_}, {len(fns)} models: {time.perf_counter() - start:.0f} s",
                      file=sys.stderr)
            t = time_variants(fns, min_run_time, rounds)
            results.setdefault("seconds", {})[f"resnet18 64x64 b32 {pass_}{tag}"] = t
            for suffix in ("", " (before)") if before is not None else ("",):
                ratios = results["ratios"]
                ratios[f"resnet18 {pass_}: element PAD / DY-Conv{suffix}{tag}"] = (
                    t[f"PAD element{suffix}{tag}"] / t[f"DY-Conv{suffix}{tag}"])
                ratios[f"resnet18 {pass_}: channel PAD / static{suffix}{tag}"] = (
                    t[f"PAD channel{suffix}{tag}"] / t[f"static{tag}"])
            print(f"resnet18 {pass_}{tag}: " + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in t.items()),
                  file=sys.stderr)


def moe_layers(package, suffix: str = "") -> dict[str, torch.nn.Module]:
    """MoELinear and PADMoELinear (kappa 0.5, compacted) on MiniLM's FFN output shape, one router shared
    (a trained-looking spread, std 0.05), so both split the tokens alike."""
    layers = importlib.import_module(f"{package.__name__}.layers")
    torch.manual_seed(0)
    moe = layers.MoELinear(1536, 384, num_experts=8, top_k=2)
    pad = layers.PADMoELinear(1536, 384, num_experts=8, top_k=2)
    pad.set_mask(exact_mask(pad.kernel_shape, 0.5, torch.Generator().manual_seed(0)))
    torch.nn.init.normal_(moe.router.w_gate, std=0.05)
    pad.router.load_state_dict(moe.router.state_dict())
    return {f"MoELinear{suffix}": moe, f"PADMoELinear{suffix}": pad.compact()}


def moe_rows(before, compile_: bool, min_run_time: float, rounds: int, results: dict) -> None:
    torch.manual_seed(0)
    mods = {"dense": torch.nn.Linear(1536, 384), **moe_layers(padnet)}
    if before is not None:
        mods.update(moe_layers(before, " (before)"))
    x = torch.randn(1024, 1536)
    with torch.no_grad():
        counts = torch.bincount(mods["MoELinear"].eval().router(x).top_indices.flatten(), minlength=8).tolist()
    results["moe_tokens_per_expert"] = counts
    print(f"MoE routing (eval): tokens per expert {counts}, max/mean {max(counts) / (sum(counts) / 8):.2f}",
          file=sys.stderr)
    for tag in ("", " [compiled]") if compile_ else ("",):
        fns = {}
        start = time.perf_counter()
        for name, mod in compiled(mods, bool(tag)).items():
            mod.train()

            def step(mod=mod):
                mod.zero_grad(set_to_none=True)
                mod(x).sum().backward()
            fns[name] = step
            step()  # the compile, when compiling
        if tag:  # compiled, the MoE layers take the dense dispatch (padnet.layers.moe.static_dispatch)
            print(f"compile warm-up, MoE fwd+bwd, {len(fns)} layers: {time.perf_counter() - start:.0f} s",
                  file=sys.stderr)
        t = time_variants(fns, min_run_time, rounds)
        results.setdefault("seconds", {})[f"MoE fwd+bwd{tag}"] = t
        for suffix in ("", " (before)") if before is not None else ("",):
            results["ratios"][f"MoE fwd+bwd: MoELinear / dense{suffix}{tag}"] = (
                t[f"MoELinear{suffix}{tag}"] / t[f"dense{tag}"])
            results["ratios"][f"MoE fwd+bwd: PADMoELinear / MoELinear{suffix}{tag}"] = (
                t[f"PADMoELinear{suffix}{tag}"] / t[f"MoELinear{suffix}{tag}"])
        print(f"MoE fwd+bwd{tag}: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in t.items()), file=sys.stderr)


def deployed_row(min_run_time: float, rounds: int, results: dict) -> None:
    from padnet.layers import assemble

    def build():
        torch.manual_seed(0)
        return torchvision.models.resnet50().eval()
    static = build()
    pad = padnet.deploy(set_masks(padnet.convert(build(), granularity="channel"), 0.3).eval())
    x = torch.randn(1, 3, 224, 224)
    assemble.release_workspace()
    fns = {"static": eval_fn(static, x), "PAD channel deployed": eval_fn(pad, x)}
    t = time_variants(fns, min_run_time, rounds)
    results.setdefault("seconds", {})["deployed resnet50 b1"] = t
    results["ratios"]["deployed resnet50 b1: channel PAD / static"] = t["PAD channel deployed"] / t["static"]
    # Counted while fns holds the timed copies: the kept rows belong to their layers (weak keys).
    held = sum(e[2].numel() * e[2].element_size() for e in (assemble._local.prefilled or {}).values())
    results["deployed_kept_rows_mib"] = held / 2**20
    results["resnet50_weights_mib"] = sum(p.numel() * p.element_size() for p in static.parameters()) / 2**20
    print(f"deployed resnet50 b1: static {t['static'] * 1e3:.1f} ms, PAD channel {t['PAD channel deployed'] * 1e3:.1f} "
          f"ms; kept static rows {held / 2**20:.0f} MiB", file=sys.stderr)


def partition_row(before, results: dict) -> None:
    """Wall time of ``partition`` (4 batches x 5 rounds) against 4 training steps of the same PAD resnet18,
    for this padnet and, with ``before``, the older one (alternating, on the same batches)."""
    from partition_cost import small_input_resnet

    packages = {"": padnet, **({" (before)": before} if before is not None else {})}
    data = [(torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))) for _ in range(4)]

    def loss_fn(m, batch):
        return torch.nn.functional.cross_entropy(m(batch[0]), batch[1])
    models = {}
    for suffix, package in packages.items():
        torch.manual_seed(0)
        models[suffix] = model = package.convert(small_input_resnet("resnet18", 10)).train()
        loss_fn(model, data[0]).backward()  # warm-up
    for suffix, package in packages.items():
        model = models[suffix]
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        start = time.perf_counter()
        for batch in data:
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model, batch).backward()
            optimizer.step()
        train_s = time.perf_counter() - start
        optimizer.zero_grad(set_to_none=True)
        start = time.perf_counter()
        package.partition(model, data, loss_fn, 0.3, rounds=5)
        partition_s = time.perf_counter() - start
        results.setdefault("seconds", {})[f"partition resnet18{suffix}"] = {"4 training steps": train_s,
                                                                          "partition": partition_s}
        results["ratios"][f"partition resnet18: 4 batches x 5 rounds / 4 steps{suffix}"] = partition_s / train_s
        print(f"partition{suffix}: {partition_s:.1f} s, 4 training steps {train_s:.1f} s", file=sys.stderr)


def table(results: dict) -> str:
    lines = ["| row | measured | target | met |", "|---|---:|---:|---|"]
    for row, value in results["ratios"].items():
        base = row.replace(" (before)", "").replace(" [compiled]", "")
        target = TARGETS.get(base)
        met = "" if target is None or row != base else ("yes" if value <= target else "no")
        lines.append(f"| {row} | {value:.2f}x | {'' if target is None else f'<= {target:.2f}x'} | {met} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", type=Path, metavar="DIR", help="DIR/padnet_before: an older padnet timed beside")
    p.add_argument("--compile", action="store_true", help="also the resnet18 and MoE rows with torch.compile'd models")
    p.add_argument("--min-run-time", type=float, default=4.0, help="seconds of timing per variant and row")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--json", type=Path, help="write the ratios, seconds and environment here")
    p.add_argument("--conv-strategy", default="heuristic", choices=conv_strategy.STRATEGY_MODES,
                   help="how dynamic convs compute (heuristic: the rule, as a run's default; autotune: timed per "
                        "shape on first use, so the picks can differ between runs)")
    p.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS), help="a subset of the rows")
    p.add_argument("--no-malloc-tuning", action="store_true",
                   help="leave glibc's allocation thresholds as they are (the padnet command raises them: "
                        "padnet.malloc)")
    args = p.parse_args(argv)
    conv_strategy.set_conv_strategy(args.conv_strategy)
    if not args.no_malloc_tuning:
        reuse_large_allocations()  # as the padnet command does; without it, page faults vary run to run
    before = None
    if args.before is not None:
        sys.path.insert(0, str(args.before))
        before = importlib.import_module("padnet_before")
        importlib.import_module("padnet_before.layers.conv_strategy").set_conv_strategy(args.conv_strategy)
    start = time.time()
    results: dict = {"environment": environment(), "conv_strategy": args.conv_strategy,
                     "malloc_tuning": not args.no_malloc_tuning, "ratios": {}}
    if "resnet18" in args.rows:
        resnet_rows(before, args.compile, args.min_run_time, args.rounds, results)
    if "moe" in args.rows:
        moe_rows(before, args.compile, args.min_run_time, args.rounds, results)
    if "deployed" in args.rows:
        deployed_row(args.min_run_time, args.rounds, results)
    if "partition" in args.rows:
        partition_row(before, results)
    results["wall_s"] = time.time() - start
    print(f"Speed report; {results['environment']}; conv strategy {args.conv_strategy}; "
          f"{results['wall_s']:.0f} s.\n")
    print(table(results))
    if "moe" in args.rows:
        print(f"\nMoE routing (eval): tokens per expert {results['moe_tokens_per_expert']}")
    if "deployed" in args.rows:
        print(f"deployed channel PAD keeps {results['deployed_kept_rows_mib']:.0f} MiB of static rows (resnet50's "
              f"weights: {results['resnet50_weights_mib']:.0f} MiB)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
