"""How input-dependent is a trained dynamic conv's kernel attention? For finished runs of a sweep, the
spread of alpha(x) over test inputs, per dynamic layer (issue 19's pilot: why DY-Conv and static tie).

    python benchmarks/attention_spread.py runs/fmnist_evidence/dyconv/seed* runs/fmnist_evidence/pad-0.3/seed*

For every KernelAttention, over the first ``--examples`` test images at the temperature the run evaluated
with:

- ``spread``: the standard deviation over inputs of alpha_k(x), averaged over the K kernels. 0 means one
  fixed mixture of the K kernels for every input: the layer is then a static conv (its kernel is that
  mixture), whatever it stores.
- ``relative``: spread / the mean alpha_k (1/K under softmax), so softmax and sigmoid routing compare.
- ``pooled cv``: the attention's input, GAP(x), its standard deviation over inputs divided by its mean
  absolute value, averaged over channels: how much the routing signal itself varies.

Prints one markdown row per run (the mean and the largest relative spread over its layers) and, with
``--layers``, one per layer; ``--json`` writes every number.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from padnet.files import atomic_write_bytes
from padnet.layers.attention import KernelAttention
from padnet.train.rebuild import rebuild_run


def spread_of(run_dir: Path, examples: int) -> dict:
    run = rebuild_run(run_dir)
    model = run.model.eval()
    seen: dict[str, dict[str, list[torch.Tensor]]] = {}

    def record(name):
        def hook(module, inputs, alpha):
            pooled = inputs[0].mean(dim=(2, 3))
            seen.setdefault(name, {"alpha": [], "pooled": []})
            seen[name]["alpha"].append(alpha.detach().float())
            seen[name]["pooled"].append(pooled.detach().float())
        return hook

    handles = [m.register_forward_hook(record(n)) for n, m in model.named_modules() if isinstance(m, KernelAttention)]
    if not handles:
        raise SystemExit(f"{run_dir}: the model has no kernel attention (a static run?)")
    done = 0
    with torch.no_grad():
        for images, _ in run.loader:
            model(images[: examples - done])
            done += min(len(images), examples - done)
            if done >= examples:
                break
    for h in handles:
        h.remove()
    layers = {}
    for name, parts in seen.items():
        alpha, pooled = torch.cat(parts["alpha"]), torch.cat(parts["pooled"])
        spread = alpha.std(dim=0).mean().item()
        cv = (pooled.std(dim=0) / pooled.abs().mean(dim=0).clamp_min(1e-12)).mean().item()
        layers[name] = {"spread": spread, "relative": spread / alpha.mean().item(), "pooled_cv": cv,
                        "mean_alpha": alpha.mean(dim=0).tolist()}
    relative = [v["relative"] for v in layers.values()]
    return {"run": str(run_dir), "name": run.config.label, "seed": run.config.seed, "examples": done,
            "mean_relative": sum(relative) / len(relative), "max_relative": max(relative), "layers": layers}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished run directories (with checkpoint.pt)")
    parser.add_argument("--examples", type=int, default=1000, help="test images per run (default 1000)")
    parser.add_argument("--layers", action="store_true", help="also print one row per layer")
    parser.add_argument("--json", type=Path, help="write every number here")
    args = parser.parse_args(argv)
    if args.examples < 2:
        parser.error(f"--examples {args.examples}: a spread needs at least 2 images")
    torch.set_num_threads(1)
    results = [spread_of(run, args.examples) for run in args.runs]
    print("| run | seed | layers | relative spread of alpha (mean) | (largest) | pooled input cv (mean) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        cv = sum(v["pooled_cv"] for v in r["layers"].values()) / len(r["layers"])
        print(f"| {r['name']} | {r['seed']} | {len(r['layers'])} | {r['mean_relative']:.3f} | "
              f"{r['max_relative']:.3f} | {cv:.3f} |")
    if args.layers:
        print("\n| run | seed | layer | spread | relative | pooled cv |\n|---|---:|---|---:|---:|---:|")
        for r in results:
            for name, v in r["layers"].items():
                print(f"| {r['name']} | {r['seed']} | {name} | {v['spread']:.4f} | {v['relative']:.3f} | "
                      f"{v['pooled_cv']:.3f} |")
    if args.json:
        atomic_write_bytes(args.json, (json.dumps(results, indent=1) + "\n").encode())


if __name__ == "__main__":
    sys.exit(main())
