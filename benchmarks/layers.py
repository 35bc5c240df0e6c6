"""Layer benchmark (issue 2 item 4): static conv, DY-Conv, dense-mask PAD and padnet PAD (kappa = 0.3,
compacted) on ResNet-50 layer shapes, forward and forward+backward, as ratios to the static conv,
all measured in one run.

    python benchmarks/layers.py            # --quick (default): fits in < 5 minutes on a 2-core CPU
    python benchmarks/layers.py --full     # longer timing windows
    python benchmarks/layers.py --batches 1 8 --json out.json
    python benchmarks/layers.py --moe      # only the MoE block: dense / MoELinear / PADMoELinear

Targets: padnet PAD <= DY-Conv at every point and <= 0.8x dense-mask PAD.
The per-sample kernels are applied with padnet.layers.choose_kernel_strategy's pick; the table names it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import LAYER_SHAPES, environment, layer_variants, time_variants  # noqa: E402

from padnet.layers import choose_kernel_strategy  # noqa: E402

VARIANTS = ("static", "DY-Conv", "dense-mask PAD", "padnet PAD")


def measure(c_in, c_out, k, hw, batch, kappa, min_run_time, backward: bool, rounds: int) -> dict[str, float]:
    mods = layer_variants(c_in, c_out, k, kappa)
    x = torch.randn(batch, c_in, hw, hw)
    fns = {}
    for name in VARIANTS:
        mod = mods[name].train(backward)
        if backward:
            def fn(mod=mod):
                mod.zero_grad(set_to_none=True)
                mod(x).sum().backward()
        else:
            def fn(mod=mod):
                with torch.no_grad():
                    mod(x)
        fns[name] = fn
    return time_variants(fns, min_run_time, rounds)


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
    for layer in (moe, pad):  # a trained-looking router: tokens spread over the experts
        torch.nn.init.normal_(layer.router.w_gate, std=0.05)
    pad.compact()
    mods = {"dense": torch.nn.Linear(d_in, d_out), "MoELinear": moe, f"PADMoELinear {kappa}": pad}
    x = torch.randn(tokens, d_in)
    rows = []
    for backward in (True, False):
        fns = {}
        for name, mod in mods.items():
            mod.train(backward)
            if backward:
                def fn(mod=mod):
                    mod.zero_grad(set_to_none=True)
                    mod(x).sum().backward()
            else:
                def fn(mod=mod):
                    with torch.no_grad():
                        mod(x)
            fns[name] = fn
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
    args = p.parse_args(argv)
    min_run_time, rounds = (3.0, 5) if args.full else (0.6, 3)
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
                strategy = choose_kernel_strategy(x, (k, k), (1, 1), (k // 2, k // 2), (1, 1), 1, backward)
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
                    f"{t['static'] * 1e3:.2f} | {r['DY-Conv']:.2f} | {r['dense-mask PAD']:.2f} | {r['padnet PAD']:.2f} | "
                    f"{t['padnet PAD'] / t['dense-mask PAD']:.2f} | {'yes' if ok_dy else 'NO'} | "
                    f"{'yes' if ok_dense else 'NO' if attainable else 'NO (unattainable)'} |"
                )
                print(rows[-1], file=sys.stderr, flush=True)
    print(f"Layer benchmark, kappa = {args.kappa}, K = 4; {environment()}; "
          f"{'full' if args.full else 'quick'} mode; {time.time() - start:.0f} s.\n")
    print(f"Times are the fastest of {rounds} interleaved rounds' medians; DY/dense/padnet columns are ratios "
          "to the static conv (lower is better).\n")
    print("| layer | batch | pass | strategy | static ms | DY-Conv | dense-mask PAD | padnet PAD | padnet/dense | "
          "padnet <= DY | padnet <= 0.8 dense |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    if args.json:
        args.json.write_text(json.dumps({"environment": environment(), "kappa": args.kappa, "rows": raw}, indent=1))


if __name__ == "__main__":
    main()
