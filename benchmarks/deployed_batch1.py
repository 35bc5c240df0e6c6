"""Deployed resnet50, channel PAD kappa 0.3, batch 1 (issue 29 item 3): the kept static rows against
writing them on every call, both in one run, interleaved, as ratios to the static resnet50.

    taskset -c 0 env OMP_NUM_THREADS=1 PADNET_BENCH_THREADS=1 python benchmarks/deployed_batch1.py

"before" is the same model with ``stored_static`` switched off for the call (the static rows written into
the shared workspace every call, as before the change); the outputs of both are checked equal first. Also
prints the memory the kept kernels hold.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, set_masks, time_variants

import padnet
from padnet.layers import assemble, deployed_conv, rows


def main() -> None:
    def build():
        torch.manual_seed(0)
        return torchvision.models.resnet50()

    static = build().eval()
    pad = set_masks(padnet.convert(build(), dynamic="conv", pad=True, granularity="channel"), 0.3).eval()
    padnet.deploy(pad)
    x = torch.randn(1, 3, 224, 224)
    kept = rows.channel_conv

    def rewritten(*args, **kwargs):
        return kept(*args, **{**kwargs, "stored_static": False})

    def before():
        deployed_conv.channel_conv = rewritten
        try:
            with torch.no_grad():
                return pad(x)
        finally:
            deployed_conv.channel_conv = kept

    def after():
        with torch.no_grad():
            return pad(x)

    def plain():
        with torch.no_grad():
            return static(x)

    assert torch.equal(after(), before()), "the kept static rows changed the output"
    times = time_variants({"static": plain, "PAD channel, static rows kept (after)": after,
                           "PAD channel, static rows written per call (before)": before}, 12.0, 4)
    print(f"deployed resnet50 224x224 batch 1, kappa 0.3 channel; {environment()}\n")
    print("| variant | ms | vs static |\n|---|---:|---:|")
    for name, seconds in times.items():
        print(f"| {name} | {seconds * 1e3:.1f} | {seconds / times['static']:.2f}x |")
    held = sum(entry[2].numel() * entry[2].element_size() for entry in assemble._local.prefilled.values())
    weights = sum(p.numel() * p.element_size() for p in static.parameters())
    print(f"\nkept kernels: {held / 2**20:.1f} MiB over {len(assemble._local.prefilled)} layers (this thread); "
          f"the static resnet50's weights: {weights / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
