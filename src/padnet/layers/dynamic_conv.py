"""Dynamic Convolution (Chen et al. 2020) and CondConv (Yang et al. 2019): the fully dynamic host."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._validate import check_positive_int, pair
from .attention import KernelAttention


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
) -> torch.Tensor:
    """Convolve sample b of ``x`` with ``kernels[b]`` (flattened (C_out, C_in/g, kh, kw)).

    One grouped convolution over the batch folded into channels (groups = B * g): a single conv call
    whatever the batch size, and the per-sample kernel is used exactly once.
    """
    batch, in_channels, height, width = x.shape
    weight = kernels.reshape(batch * out_channels, in_channels // groups, *kernel_size)
    flat_bias = bias.reshape(-1) if bias is not None else None
    out = F.conv2d(
        x.reshape(1, batch * in_channels, height, width),
        weight,
        flat_bias,
        stride,
        padding,
        dilation,
        batch * groups,
    )
    return out.reshape(batch, out_channels, *out.shape[2:])


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
        check_positive_int("in_channels", in_channels)
        check_positive_int("out_channels", out_channels)
        check_positive_int("groups", groups)
        check_positive_int("num_kernels", num_kernels)
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = pair("kernel_size", kernel_size, 1)
        self.stride = pair("stride", stride, 1)
        self.padding = pair("padding", padding, 0)
        self.dilation = pair("dilation", dilation, 1)
        self.groups = groups
        self.num_kernels = num_kernels
        self.routing = routing
        self.temperature = 1.0
        self.attention = KernelAttention(in_channels, num_kernels, reduction, routing)
        # One kernel's shape; the K kernels are stored flattened, (K, N), as timm's CondConv2d does, so
        # that channels_last conversion of a whole model (which touches every 4-D tensor) works.
        self.weight_shape = (out_channels, in_channels // groups, *self.kernel_size)
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
