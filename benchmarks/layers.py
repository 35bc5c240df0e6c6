"""Layer benchmark (issue 2 item 4): static conv, DY-Conv, dense-mask PAD and padnet PAD (kappa = 0.3,
compacted) on ResNet-50 layer shapes, forward and forward+backward, as ratios to the static conv,
all measured in one run.

    python benchmarks/layers.py            # --quick (default): fits in < 5 minutes on a 2-core CPU
    python benchmarks/layers.py --full     # longer timing windows
    python benchmarks/layers.py --batches 1 8 --json out.json
    python benchmarks/layers.py --moe      # only the MoE block: dense / MoELinear / PADMoELinear
    python benchmarks/layers.py --strategies   # every conv strategy on resnet18's layers (64x64, batch 32)

Targets: padnet PAD <= DY-Conv at every point and <= 0.8x dense-mask PAD.
The layers run with the library default (the autotuner picks each conv strategy on first use); the
"rule" column names the deterministic rule's pick for comparison.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import LAYER_SHAPES, environment, layer_variants, time_variants

from padnet.layers.conv_strategy import heuristic_strategy

VARIANTS = ("static", "DY-Conv", "dense-mask PAD", "padnet PAD")


def measure(c_in, c_out, k, hw, batch, kappa, min_run_time, backward: bool, rounds: int) -> dict[str, float]:
    mods = layer_variants(c_in, c_out, k, kappa)
    x = torch.randn(batch, c_in, hw, hw)
    return time_variants({name: pass_fn(mods[name], x, backward) for name in VARIANTS}, min_run_time, rounds)


def pass_fn(mod, x, backward: bool):
    """One timed call: forward + backward of sum() in training mode, or a no-grad forward in eval mode."""
    mod.train(backward)
    if backward:
        def fn():
            mod.zero_grad(set_to_none=True)
            mod(x).sum().backward()
    else:
        def fn():
            with torch.no_grad():
                mod(x)
    return fn


def moe_block(min_run_time: float, rounds: int, kappa: float = 0.5) -> list[str]:
    """MiniLM's FFN output projection (1,536 -> 384), 1,024 tokens (batch 16 x 64), 8 experts, top-2:
    dense linear, MoELinear, PADMoELinear (kappa 0.5, compacted; the mask random with exact kappa) and
    its deployed form, fwd + bwd in training mode and forward in eval mode under no_grad."""
    from common import exact_mask

    from padnet.layers import DeployedPADMoELinear, MoELinear, PADMoELinear

    torch.manual_seed(0)
    d_in, d_out, tokens = 1536, 384, 1024
    moe = MoELinear(d_in, d_out, num_experts=8, top_k=2)
    pad = PADMoELinear(d_in, d_out, num_experts=8, top_k=2)
    pad.set_mask(exact_mask(pad.kernel_shape, kappa, torch.Generator().manual_seed(0)))
    # A trained-looking router (tokens spread over the experts), the same one in both layers: with routers
    # drawn apart the two layers split the tokens differently, and an expert's matmul costs by its tokens,
    # which moved the PAD-MoE / MoE ratio between runs of different seeds.
    torch.nn.init.normal_(moe.router.w_gate, std=0.05)
    pad.router.load_state_dict(moe.router.state_dict())
    pad.compact()
    mods = {"dense": torch.nn.Linear(d_in, d_out), "MoELinear": moe, f"PADMoELinear {kappa}": pad}
    x = torch.randn(tokens, d_in)
    with torch.no_grad():
        counts = torch.bincount(moe.eval().router(x).top_indices.flatten(), minlength=8).tolist()
    moe.train()
    print(f"routing balance (eval, both layers): tokens per expert {counts}, max/mean "
          f"{max(counts) / (sum(counts) / len(counts)):.2f}; training adds router noise per call", file=sys.stderr)
    rows = []
    for backward in (True, False):
        fns = {name: pass_fn(mod, x, backward) for name, mod in mods.items()}
        if not backward:
            deployed = DeployedPADMoELinear.from_pad(pad.eval())
            fns["PADMoELinear deployed"] = lambda: deployed(x)
        t = time_variants(fns, min_run_time, rounds)
        moe_t = t["MoELinear"]
        for name, seconds in t.items():
            rows.append(f"| {d_in}->{d_out}, {tokens} tokens, 8 x top-2 | {'fwd+bwd' if backward else 'eval fwd'} | "
                        f"{name} | {seconds * 1e3:.1f} | {seconds / t['dense']:.2f}x | {seconds / moe_t:.2f}x |")
            print(rows[-1], file=sys.stderr, flush=True)
    return rows


# resnet18's distinct conv shapes at 64x64 inputs: (C_in, C_out, kernel, stride, H = W of the input)
RESNET18_64 = [(64, 64, 3, 1, 16), (64, 128, 3, 2, 16), (64, 128, 1, 2, 16), (128, 128, 3, 1, 8),
               (128, 256, 3, 2, 8), (128, 256, 1, 2, 8), (256, 256, 3, 1, 4), (256, 512, 3, 2, 4),
               (256, 512, 1, 2, 4), (512, 512, 3, 1, 2)]


def strategy_rows(batch: int, kappa: float, min_run_time: float, rounds: int) -> list[str]:
    """Every applicable strategy of DY-Conv and PAD (compacted) on each shape, fwd+bwd and forward: the
    table behind ``padnet.layers.conv_strategy.heuristic_strategy``."""
    from common import exact_mask

    from padnet.layers import DynamicConv2d, PADConv2d
    from padnet.layers.conv_strategy import applicable_strategies, heuristic_strategy

    rows = []
    for c_in, c_out, k, stride, hw in RESNET18_64:
        torch.manual_seed(0)
        dyn = DynamicConv2d(c_in, c_out, k, stride, k // 2)
        pad = PADConv2d(c_in, c_out, k, stride, k // 2)
        pad.set_mask(exact_mask(pad.kernel_shape, kappa, torch.Generator().manual_seed(0)))
        pad.compact()
        candidates = [s for s in applicable_strategies(dyn.kernel_size, dyn.padding, dyn.dilation, 1) if s != "loop"]
        for backward in (True, False):
            x = torch.randn(batch, c_in, hw, hw, requires_grad=backward)
            rule = heuristic_strategy(x.shape, dyn.kernel_size, dyn.stride, dyn.padding, dyn.dilation, 1)
            for kind, layer in (("DY-Conv", dyn), ("PAD", pad)):
                def pinned(strategy, run=pass_fn(layer, x, backward), layer=layer):
                    def fn():
                        layer.strategy = strategy
                        run()
                    return fn
                fns = {strategy: pinned(strategy) for strategy in candidates}
                t = time_variants(fns, min_run_time, rounds)
                best = min(t, key=t.get)
                cells = " | ".join(f"{t[s] * 1e3:.1f}" if s in t else "-" for s in STRATEGY_COLUMNS)
                rows.append(f"| {k}x{k} {c_in}->{c_out} /{stride} @{hw} | {kind} | "
                            f"{'fwd+bwd' if backward else 'fwd'} | {cells} | {best} | {rule} "
                            f"({t[rule] / t[best]:.2f}x best) |")
                print(rows[-1], file=sys.stderr, flush=True)
    return rows


STRATEGY_COLUMNS = ("mixture", "mixture_unfold", "grouped", "unfold", "bmm")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="short timing windows (default)")
    mode.add_argument("--full", action="store_true", help="longer timing windows")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--kappa", type=float, default=0.3)
    p.add_argument("--no-backward", action="store_true", help="forward only")
    p.add_argument("--json", type=Path, help="also write the raw timings here")
    p.add_argument("--moe", action="store_true", help="only the MoE block")
    p.add_argument("--strategies", action="store_true", help="only the strategy table on resnet18's shapes")
    args = p.parse_args(argv)
    min_run_time, rounds = (3.0, 5) if args.full else (0.6, 3)
    if args.strategies:
        batch = args.batches[0] if args.batches != [1, 8, 64] else 32
        rows = strategy_rows(batch, args.kappa, min_run_time / 2, 2)
        print(f"Conv strategies on resnet18's layers at 64x64 inputs, batch {batch}, kappa = {args.kappa}; "
              f"{environment()}. Milliseconds per call.\n")
        print(f"| layer | kind | pass | {' | '.join(STRATEGY_COLUMNS)} | fastest | rule's pick |")
        print("|---|---|---|" + "---|" * len(STRATEGY_COLUMNS) + "---|---|")
        print("\n".join(rows))
        return
    if args.moe:
        rows = moe_block(min_run_time, rounds)
        print(f"MoE block; {environment()}.\n")
        print("| layer | pass | variant | ms | vs dense | vs MoELinear |")
        print("|---|---|---|---|---|---|")
        print("\n".join(rows))
        return
    torch.manual_seed(0)
    start = time.time()
    rows, raw = [], []
    passes = [False] if args.no_backward else [False, True]
    for c_in, c_out, k, hw in LAYER_SHAPES:
        for batch in args.batches:
            x = torch.empty(batch, c_in, hw, hw)
            for backward in passes:
                strategy = heuristic_strategy(x.shape, (k, k), (1, 1), (k // 2, k // 2), (1, 1), 1)
                t = measure(c_in, c_out, k, hw, batch, args.kappa, min_run_time, backward, rounds)
                r = {n: t[n] / t["static"] for n in VARIANTS}
                ok_dy = t["padnet PAD"] <= t["DY-Conv"]
                ok_dense = t["padnet PAD"] <= 0.8 * t["dense-mask PAD"]
                # No PAD form can beat the static conv it contains: where static > 0.8 x dense-mask, the
                # 0.8x target cannot be met by any kernel assembly.
                attainable = t["static"] <= 0.8 * t["dense-mask PAD"]
                raw.append(dict(shape=[c_in, c_out, k, hw], batch=batch, backward=backward, strategy=strategy,
                                seconds=t, dense_target_attainable=attainable))
                rows.append(
                    f"| {k}x{k} {c_in}->{c_out} @{hw} | {batch} | {'fwd+bwd' if backward else 'fwd'} | {strategy} | "
                    f"{t['static'] * 1e3:.2f} | {r['DY-Conv']:.2f} | {r['dense-mask PAD']:.2f} | "
                    f"{r['padnet PAD']:.2f} | "
                    f"{t['padnet PAD'] / t['dense-mask PAD']:.2f} | {'yes' if ok_dy else 'NO'} | "
                    f"{'yes' if ok_dense else 'NO' if attainable else 'NO (unattainable)'} |"
                )
                print(rows[-1], file=sys.stderr, flush=True)
    print(f"Layer benchmark, kappa = {args.kappa}, K = 4; {environment()}; "
          f"{'full' if args.full else 'quick'} mode; {time.time() - start:.0f} s.\n")
    print(f"Times are the fastest of {rounds} interleaved rounds' medians; DY/dense/padnet columns are ratios "
          "to the static conv (lower is better).\n")
    print("| layer | batch | pass | rule | static ms | DY-Conv | dense-mask PAD | padnet PAD | padnet/dense | "
          "padnet <= DY | padnet <= 0.8 dense |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    if args.json:
        args.json.write_text(json.dumps({"environment": environment(), "kappa": args.kappa, "rows": raw}, indent=1))


if __name__ == "__main__":
    main()
