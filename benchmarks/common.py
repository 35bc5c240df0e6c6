"""Shared pieces of the benchmarks: layer variants, exact-kappa masks, timing, markdown."""

from __future__ import annotations

import argparse
import copy
import os
import platform

import torch
from torch import nn
from torch.utils import benchmark

from padnet.layers import DeployedPADConv2d, DynamicConv2d, PADConv2d, pad_layers
from padnet.reference import DenseMaskPADConv2d

# ResNet-50 layer shapes of issue 2: (C_in, C_out, kernel, H = W)
LAYER_SHAPES = [(64, 64, 3, 56), (256, 256, 3, 14), (1024, 256, 1, 14)]


def exact_mask(shape, kappa: float, generator: torch.Generator) -> torch.Tensor:
    n = int(torch.Size(shape).numel())
    nnz = round(kappa * n)
    r = torch.rand(n, generator=generator)
    return (r <= r.kthvalue(nnz).values).reshape(shape) if nnz else torch.zeros(shape, dtype=torch.bool)


def set_masks(model: nn.Module, kappa: float, seed: int = 0, find=pad_layers) -> nn.Module:
    """Random masks with exactly round(kappa n) dynamic units per layer (entries, or output channels of
    channel-granular layers). ``find``: the ``pad_layers`` of the padnet that converted ``model`` (an older
    one imported under another name, to time before and after in one run)."""
    g = torch.Generator().manual_seed(seed)
    for _, layer in find(model):
        layer.set_mask(layer.mask_from_units(exact_mask((layer.num_units,), kappa, g)))
    return model


def layer_variants(c_in, c_out, k, kappa, with_deployed=False, with_timm=False):
    """name -> module for one conv shape: static, DY-Conv, dense-mask PAD, padnet PAD (compacted)."""
    torch.manual_seed(0)
    pad = PADConv2d(c_in, c_out, k, padding=k // 2)
    pad.set_mask(exact_mask(pad.kernel_shape, kappa, torch.Generator().manual_seed(0)))
    out = {
        "static": nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False),
        "DY-Conv": DynamicConv2d(c_in, c_out, k, padding=k // 2),
        "dense-mask PAD": DenseMaskPADConv2d(pad),
        "padnet PAD": copy.deepcopy(pad).compact(),
    }
    if with_deployed:
        out["padnet PAD deployed"] = DeployedPADConv2d.from_pad(pad.eval())
    if with_timm:
        peer = timm_condconv(c_in, c_out, k, padding=k // 2)
        if peer is not None:
            out["timm CondConv"] = peer
    return out


class TimmCondConv(nn.Module):
    """timm's CondConv2d with the routing its EfficientNet blocks use: sigmoid(Linear(GAP(x)))."""

    def __init__(self, conv):
        super().__init__()
        self.conv = conv
        self.routing = nn.Linear(conv.in_channels, conv.num_experts)

    def forward(self, x):
        return self.conv(x, torch.sigmoid(self.routing(x.mean((2, 3)))))


def timm_available() -> bool:
    try:
        import timm  # noqa: F401
    except ImportError:
        return False
    return True


def timm_condconv(c_in, c_out, k, stride=1, padding=0, dilation=1, groups=1, bias=False, num_experts=4):
    if not timm_available():
        return None
    from timm.layers import CondConv2d

    conv = CondConv2d(c_in, c_out, k, stride=stride, padding=padding, dilation=dilation, groups=groups,
                      bias=bias, num_experts=num_experts)
    return TimmCondConv(conv)


def time_variants(fns: dict, min_run_time: float, rounds: int = 3) -> dict[str, float]:
    """Seconds per call of each function, measured in ``rounds`` interleaved rounds (the order rotates
    each round) and reported as the fastest round's median (torch.utils.benchmark, 2 threads unless
    PADNET_BENCH_THREADS). Interleaving puts every variant through the same machine states, so a burst
    of load or a frequency change shifts all of them instead of one: the ratios are what we compare."""
    threads = int(os.environ.get("PADNET_BENCH_THREADS", torch.get_num_threads()))
    names = list(fns)
    for name in names:
        fns[name]()  # warm-up (allocator, oneDNN primitive cache)
    best = {name: float("inf") for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            timer = benchmark.Timer("fn()", globals={"fn": fns[name]}, num_threads=threads)
            best[name] = min(best[name], timer.blocked_autorange(min_run_time=min_run_time / rounds).median)
    return best


def environment() -> str:
    return (f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
            f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs visible")


def ratio(t, base):
    return f"{t / base:.2f}x"


def add_glue_dir(parser: argparse.ArgumentParser) -> None:
    """``--glue-dir``: GLUE in its TSV layout, default ``$PADNET_GLUE_DIR`` (the MoE benchmarks' data)."""
    parser.add_argument("--glue-dir", default=os.environ.get("PADNET_GLUE_DIR"),
                        help="GLUE in its TSV layout (SST-2/, CoLA/); default $PADNET_GLUE_DIR")

