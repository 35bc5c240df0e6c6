"""PAD kernel assembly: padnet's eager form against the fused kernels Inductor writes (issue 29, item 1).

    taskset -c 0 env OMP_NUM_THREADS=1 python benchmarks/fused_assembly.py            # CPU (C++/OpenMP)
    python benchmarks/fused_assembly.py --device cuda                                  # GPU (Triton)

The assembly ``out[b] = scale * static`` with ``out[b, index] = dynamic[b]`` (``padnet.layers.assemble``)
and its backward (the static gradient: the batch sum zeroed where the scatter wrote, times the scale;
the scale's: its dot with W_s; the dynamic gradient: a gather). Eager: a scaled copy and one scatter
(forward), a sum, a multiply by the keep mask, a dot and a gather (backward). Fused: the same math as
one ``torch.compile``d function each way, ``out = where(keep, scale * static, dynamic[:, inverse])``
(one pass that writes every entry once, reading each dynamic entry through an inverse index) and
``summed = (grad * keep).sum(0)`` with the gather (``padnet.layers.fused``, which
``padnet.layers.set_fused_assembly(True)`` switches the layers to). Both are checked equal first; the
compile warm-up is printed. Shapes: resnet18's 3x3 256->256 and 512->512 kernels at batch 32 (the per-sample
kernels) and at K = 4 (the mixture's stacked kernels, which the 64x64 train step assembles).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, time_variants

from padnet.layers.assemble import assemble_kernels
from padnet.layers.fused import fused_backward, fused_forward

SHAPES = ((256, 4), (256, 32), (512, 4), (512, 32))  # (channels, kernels): K = 4 mixture, batch 32


def eager_backward(grad, keep, static, index, scale):
    summed = grad.sum(0).mul_(keep)
    return summed * scale, torch.dot(summed, static), grad.gather(1, index.unsqueeze(0).expand(grad.shape[0], -1))


def measure(channels: int, batch: int, device: str, min_run_time: float, rounds: int = 3,
            backend: str = "inductor") -> list[dict]:
    """Eager and fused assembly of a 3x3 ``channels`` -> ``channels`` kernel for ``batch`` samples (kernels),
    forward and backward: a row each, with the times, their ratio and the compile warm-up."""
    g = torch.Generator().manual_seed(0)
    n = channels * channels * 9
    nnz = round(0.3 * n)
    index = torch.randperm(n, generator=g)[:nnz].sort().values.to(device)
    keep = torch.ones(n, dtype=torch.bool, device=device)
    keep[index] = False
    keep_u8 = keep.to(torch.uint8)
    inverse = torch.zeros(n, dtype=torch.long, device=device)
    inverse[index] = torch.arange(nnz, device=device)
    static = torch.randn(n, generator=g).to(device)
    dynamic = torch.randn(batch, nnz, generator=g).to(device)
    grad = torch.randn(batch, n, generator=g).to(device)
    scale = torch.tensor(0.7, device=device)
    forward = torch.compile(fused_forward, dynamic=False, backend=backend)
    backward = torch.compile(fused_backward, dynamic=False, backend=backend)
    start = time.perf_counter()
    out = forward(static, keep, inverse, dynamic, scale)
    grads = backward(grad, keep_u8, static, index, scale)
    warm = time.perf_counter() - start
    with torch.enable_grad():  # the training form (a fresh tensor), as a train step runs it
        eager_out = assemble_kernels(static, dynamic, index, scale=scale, keep=keep_u8)
    assert torch.equal(out, eager_out), "the fused forward differs from padnet's"
    eager_grads = eager_backward(grad, keep_u8, static, index, scale)
    assert torch.equal(grads[2], eager_grads[2]), "the fused dynamic gradient differs"
    # The sums run in another order: within the worst-case rounding bound of a float32 sum of n terms.
    column_bound = batch * 2**-23 * grad.abs().sum(0) * scale  # a sum of B terms, then one multiply
    assert bool(((grads[0] - eager_grads[0]).abs() <= column_bound).all()), "the fused static gradient differs"
    bound = n * 2**-24 * float((grads[0] / scale).abs() @ static.abs())
    assert abs(float(grads[1] - eager_grads[1])) <= bound, "the fused scale gradient differs beyond rounding"

    def sync(fn):
        def run():
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
        return run
    t = time_variants({
        "forward eager": sync(lambda: assemble_kernels(static, dynamic, index, scale=scale, keep=keep_u8)),
        "forward fused": sync(lambda: forward(static, keep, inverse, dynamic, scale)),
        "backward eager": sync(lambda: eager_backward(grad, keep_u8, static, index, scale)),
        "backward fused": sync(lambda: backward(grad, keep_u8, static, index, scale)),
    }, min_run_time, rounds)
    return [{"section": "assembly", "shape": f"3x3 {channels}->{channels}, {batch} x {n:,}", "pass": way,
             "eager_ms": t[f"{way} eager"] * 1e3, "fused_ms": t[f"{way} fused"] * 1e3,
             "ratio": t[f"{way} fused"] / t[f"{way} eager"], "compile_s": warm} for way in ("forward", "backward")]


def markdown(rows: list[dict]) -> str:
    lines = ["| kernels | pass | eager ms | fused ms | fused / eager | compile s |", "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {r['shape']} | {r['pass']} | {r['eager_ms']:.2f} | {r['fused_ms']:.2f} | {r['ratio']:.2f}x | "
              f"{r['compile_s']:.1f} |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--min-run-time", type=float, default=2.0)
    args = p.parse_args(argv)
    rows = []
    for channels, batch in SHAPES:
        rows += measure(channels, batch, args.device, args.min_run_time)
        print(markdown(rows[-2:]).splitlines()[-1], file=sys.stderr, flush=True)
    print(f"PAD kernel assembly, kappa 0.3, eager vs Inductor-fused, {args.device}; {environment()}\n")
    print(markdown(rows))


if __name__ == "__main__":
    main()
