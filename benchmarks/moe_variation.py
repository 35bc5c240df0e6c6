"""Why PADMoELinear / MoELinear moved between 1.08x and 1.36x on an idle machine (issue 29, item 2).

    taskset -c 0 env OMP_NUM_THREADS=1 python benchmarks/moe_variation.py                # glibc as it is
    taskset -c 0 env OMP_NUM_THREADS=1 python benchmarks/moe_variation.py --malloc-tuning  # as the padnet command

Each layer is built twice, identically (same seed, same weights, same router, same tokens): a "twin" runs
the same code on the same data, so any difference between twins is the machine, not padnet. Every layer
is timed in steady state (after warm-up) for ``--rounds`` rounds of 10 forward + backward steps, and each
round reports the minor page faults and the system time per step (``resource.getrusage``).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment
from speed import moe_layers

import padnet
from padnet.malloc import reuse_large_allocations


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--malloc-tuning", action="store_true", help="padnet.malloc.reuse_large_allocations() first")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    if args.malloc_tuning:
        reuse_large_allocations()
    torch.manual_seed(0)
    layers = {"dense": torch.nn.Linear(1536, 384), **moe_layers(padnet), **moe_layers(padnet, " (twin)")}
    x = torch.randn(1024, 1536)

    def step(layer):
        layer.zero_grad(set_to_none=True)
        layer(x).sum().backward()
    for layer in layers.values():
        layer.train()
        step(layer)
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in layers}
    for _ in range(args.rounds):
        for name, layer in layers.items():
            for _ in range(3):
                step(layer)
            before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            for _ in range(10):
                step(layer)
            seconds, after = (time.perf_counter() - start) / 10, resource.getrusage(resource.RUSAGE_SELF)
            results[name].append((seconds * 1e3, (after.ru_minflt - before.ru_minflt) / 10,
                                  (after.ru_stime - before.ru_stime) / 10 * 1e3))
    print(f"MoE fwd+bwd, 1,536 -> 384, 1,024 tokens, 8 x top-2; malloc tuning "
          f"{'on' if args.malloc_tuning else 'off'}; {environment()}\n")
    print("| layer | " + " | ".join(f"round {r + 1}: ms, faults/step, sys ms" for r in range(args.rounds)) + " |")
    print("|---|" + "---|" * args.rounds)
    for name, rounds in results.items():
        cells = " | ".join(f"{ms:.1f}, {faults:.0f}, {sys_ms:.1f}" for ms, faults, sys_ms in rounds)
        print(f"| {name} | {cells} |")
    best = {name: min(ms for ms, _, _ in rounds) for name, rounds in results.items()}
    print(f"\nbest of rounds: PAD/MoE {best['PADMoELinear'] / best['MoELinear']:.2f}x, twins "
          f"{best['PADMoELinear (twin)'] / best['MoELinear (twin)']:.2f}x; MoE twin / MoE "
          f"{best['MoELinear (twin)'] / best['MoELinear']:.2f}x, PAD twin / PAD "
          f"{best['PADMoELinear (twin)'] / best['PADMoELinear']:.2f}x; MoE / dense "
          f"{best['MoELinear'] / best['dense']:.2f}x")


if __name__ == "__main__":
    main()
