"""Dynamic Convolution (Chen et al. 2020) and CondConv (Yang et al. 2019): the fully dynamic host."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._validate import check_positive_int, pair
from .attention import KernelAttention


KERNEL_STRATEGIES = ("auto", "grouped", "loop", "unfold", "bmm")

# Threshold of the "auto" rule below, from micro-benchmarks on a shared 2-core CPU (torch 2.14); noisy.
UNFOLD_MAX_POSITIONS = 49  # up to 7x7 outputs, unfold + bmm beats the grouped conv


def choose_kernel_strategy(
    x: torch.Tensor, kernel_size, stride, padding, dilation, groups: int, needs_grad: bool = False
) -> str:
    """The fastest way to apply B per-sample kernels to x, by layer shape, batch size and whether
    autograd records.

    Why each rule (CPU micro-benchmarks, 2 shared cores; ``benchmarks/layers.py`` prints the pick per row):
    - 1x1, unpadded, ungrouped: the conv is a batched matrix product (B, C_out, C_in) @ (B, C_in, HW);
      ``bmm`` skips the conv machinery and was 1.6x (B=1) to 3.5x (B=64) faster than the grouped conv.
    - batch 1: a plain conv with the one kernel; nothing to group.
    - ungrouped with at most 7x7 output positions: ``unfold`` + bmm. Few positions and many channels make
      the grouped conv (groups = B) slow on CPU; im2col there is tiny and bmm runs at full GEMM speed.
    - otherwise ``grouped``: one conv call over the batch folded into channels. One conv per sample
      (``loop``) looked faster at B=64 in one run but was 2.5x-5x slower in a controlled A/B
      (alternating runs, 3x3 64->64 @56 and 256->256 @14, B=64), so it is never picked automatically.
    - with autograd recording (training, the partition's scoring): always ``grouped``. The backward
      of ``unfold`` is a scatter-add (fold) and of ``bmm`` two more batched products; in fwd+bwd
      measurements of narrow layers (8-64 channels, 7x7 to 28x28, B = 16-128) they were 1.5x-9x
      slower than the grouped conv, whose backward mkldnn handles in one call.
    """
    batch = x.shape[0]
    if needs_grad:
        return "grouped"
    if groups == 1 and tuple(kernel_size) == (1, 1) and tuple(padding) == (0, 0) and tuple(dilation) == (1, 1):
        return "bmm"
    if batch == 1:
        return "grouped"
    if groups == 1:
        out_h = (x.shape[2] + 2 * padding[0] - dilation[0] * (kernel_size[0] - 1) - 1) // stride[0] + 1
        out_w = (x.shape[3] + 2 * padding[1] - dilation[1] * (kernel_size[1] - 1) - 1) // stride[1] + 1
        if out_h * out_w <= UNFOLD_MAX_POSITIONS:
            return "unfold"
    return "grouped"


def apply_per_sample_kernels(
    x: torch.Tensor,
    kernels: torch.Tensor,
    bias: torch.Tensor | None,
    out_channels: int,
    kernel_size: tuple[int, int],
    stride,
    padding,
    dilation,
    groups: int,
    strategy: str = "auto",
) -> torch.Tensor:
    """Convolve sample b of ``x`` with ``kernels[b]`` (flattened (C_out, C_in/g, kh, kw)), plus ``bias[b]``.

    ``strategy`` picks how (all give the same result): "grouped" (one conv with groups = B * g),
    "loop" (one conv per sample), "unfold" (im2col + bmm; groups = 1), "bmm" (1x1 unpadded
    ungrouped convs as a batched matmul) or "auto" (``choose_kernel_strategy``).
    """
    kernel_size, stride, padding, dilation = (tuple(v) for v in (kernel_size, stride, padding, dilation))
    if strategy == "auto":
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or kernels.requires_grad)
        strategy = choose_kernel_strategy(x, kernel_size, stride, padding, dilation, groups, needs_grad)
    if strategy == "grouped":
        return _grouped(x, kernels, bias, out_channels, kernel_size, stride, padding, dilation, groups)
    if strategy == "loop":
        return _loop(x, kernels, bias, out_channels, kernel_size, stride, padding, dilation, groups)
    if strategy in ("unfold", "bmm"):
        if groups != 1:
            raise ValueError(f"strategy={strategy!r} needs groups=1; got groups={groups} (use 'grouped' or 'loop')")
        if strategy == "bmm":
            if kernel_size != (1, 1) or padding != (0, 0) or dilation != (1, 1):
                raise ValueError(
                    f"strategy='bmm' needs a 1x1 unpadded undilated conv; got kernel_size={kernel_size}, "
                    f"padding={padding}, dilation={dilation}"
                )
            return _bmm_1x1(x, kernels, bias, out_channels, stride)
        return _unfold(x, kernels, bias, out_channels, kernel_size, stride, padding, dilation)
    raise ValueError(f"strategy={strategy!r} is not supported; allowed: {', '.join(map(repr, KERNEL_STRATEGIES))}")


def _grouped(x, kernels, bias, out_channels, kernel_size, stride, padding, dilation, groups):
    batch, in_channels, height, width = x.shape
    weight = kernels.reshape(batch * out_channels, in_channels // groups, *kernel_size)
    flat_bias = bias.reshape(-1) if bias is not None else None
    out = F.conv2d(
        x.reshape(1, batch * in_channels, height, width), weight, flat_bias, stride, padding, dilation, batch * groups
    )
    return out.reshape(batch, out_channels, *out.shape[2:])


def _loop(x, kernels, bias, out_channels, kernel_size, stride, padding, dilation, groups):
    in_per_group = x.shape[1] // groups
    outs = [
        F.conv2d(
            x[b : b + 1], kernels[b].reshape(out_channels, in_per_group, *kernel_size),
            None if bias is None else bias[b], stride, padding, dilation, groups,
        )
        for b in range(x.shape[0])
    ]
    return torch.cat(outs, 0)


def _add_bias(out: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return out if bias is None else out + bias.reshape(*bias.shape, 1, 1)


def _unfold(x, kernels, bias, out_channels, kernel_size, stride, padding, dilation):
    batch, _, height, width = x.shape
    out_h = (height + 2 * padding[0] - dilation[0] * (kernel_size[0] - 1) - 1) // stride[0] + 1
    out_w = (width + 2 * padding[1] - dilation[1] * (kernel_size[1] - 1) - 1) // stride[1] + 1
    cols = F.unfold(x, kernel_size, dilation, padding, stride)  # (B, C_in kh kw, L)
    out = torch.bmm(kernels.reshape(batch, out_channels, -1), cols)
    return _add_bias(out.reshape(batch, out_channels, out_h, out_w), bias)


def _bmm_1x1(x, kernels, bias, out_channels, stride):
    if stride != (1, 1):
        x = x[:, :, :: stride[0], :: stride[1]]
    batch, in_channels, height, width = x.shape
    out = torch.bmm(kernels.reshape(batch, out_channels, in_channels), x.reshape(batch, in_channels, height * width))
    return _add_bias(out.reshape(batch, out_channels, height, width), bias)


def init_dynamic_conv_geometry(
    module: nn.Module, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, num_kernels,
    reduction, routing,
) -> None:
    """Check and set what every dynamic conv form (training, PAD, deployed) knows about its shape,
    and its kernel attention; ``module.weight_shape`` is one kernel's (C_out, C_in/g, kh, kw)."""
    check_positive_int("in_channels", in_channels)
    check_positive_int("out_channels", out_channels)
    check_positive_int("groups", groups)
    check_positive_int("num_kernels", num_kernels)
    if in_channels % groups or out_channels % groups:
        raise ValueError(f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}")
    module.in_channels = in_channels
    module.out_channels = out_channels
    module.kernel_size = pair("kernel_size", kernel_size, 1)
    module.stride = pair("stride", stride, 1)
    module.padding = pair("padding", padding, 0)
    module.dilation = pair("dilation", dilation, 1)
    module.groups = groups
    module.num_kernels = num_kernels
    module.routing = routing
    module.temperature = 1.0
    module.attention = KernelAttention(in_channels, num_kernels, reduction, routing)
    # The K kernels are stored flattened, (K, N), as timm's CondConv2d does, so that channels_last
    # conversion of a whole model (which touches every 4-D and 5-D tensor) works.
    module.weight_shape = (out_channels, in_channels // groups, *module.kernel_size)


class DynamicConv2d(nn.Module):
    """y = conv(x, sum_k alpha_k(x) W_k) + sum_k alpha_k(x) b_k, per sample.

    ``routing="softmax"`` is DY-Conv (temperature-scaled softmax attention); ``routing="sigmoid"`` is
    CondConv (independent sigmoid gates, no temperature). Parameters: ``weight`` (K, N) holding K kernels of
    ``weight_shape`` = (C_out, C_in/g, kh, kw) flattened, ``bias`` (K, C_out) when ``bias=True``, and the attention ``attention.fc1``/``attention.fc2``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = False,
        num_kernels: int = 4,
        reduction: int = 16,
        routing: str = "softmax",
    ):
        super().__init__()
        init_dynamic_conv_geometry(
            self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, num_kernels,
            reduction, routing,
        )
        self.weight = nn.Parameter(torch.empty(num_kernels, math.prod(self.weight_shape)))
        self.bias = nn.Parameter(torch.zeros(num_kernels, out_channels)) if bias else None
        self.reset_parameters()

    @property
    def init_std(self) -> float:
        """Kaiming fan-out, as the reference code: N(0, sqrt(2 / (kh * kw * C_out)))."""
        return math.sqrt(2.0 / (self.kernel_size[0] * self.kernel_size[1] * self.out_channels))

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, 0.0, self.init_std)

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """alpha(x), shape (B, K)."""
        return self.attention(x, self.temperature)

    def per_sample_kernels(self, alpha: torch.Tensor) -> torch.Tensor:
        """W(x) flattened: (B, N)."""
        return alpha @ self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input (B, {self.in_channels}, H, W); got {tuple(x.shape)}")
        alpha = self.attention_weights(x)
        bias = alpha @ self.bias if self.bias is not None else None
        return apply_per_sample_kernels(
            x,
            self.per_sample_kernels(alpha),
            bias,
            self.out_channels,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
        )

    def extra_repr(self) -> str:
        s = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"num_kernels={self.num_kernels}, routing={self.routing!r}"
        )
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s
