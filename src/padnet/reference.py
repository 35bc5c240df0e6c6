"""The published reference formulation of PAD layers, kept as a test oracle and a benchmark peer.

It aggregates all K full kernels per sample, multiplies by a dense float mask and adds a dense
masked static tensor (docs/method.md#storage); MoE experts are built one by one as full W_i' tensors. It is
deliberately plain: its value is that it is obviously the equation, not that it is fast.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UsageError
from .layers import PADConv2d, PADMoELinear
from .layers.dynamic_conv import apply_per_sample_kernels


class DenseMaskPADConv2d(nn.Module):
    """PAD DY-Conv as the reference code computes it; built from (a copy of) an uncompacted PAD conv (a
    ``PartiallyDynamic`` ``DynamicConvCompute`` with a per-sample attention)."""

    float_mask: torch.Tensor  # a buffer: the mask as 0/1 floats

    def __init__(self, layer: PADConv2d):
        super().__init__()
        if layer.compacted:
            raise UsageError("DenseMaskPADConv2d needs the uncompacted layer (it stores every entry)")
        self.layer = copy.deepcopy(layer)
        self.register_buffer("float_mask", layer.mask.to(layer.weight.dtype).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        lambda_s, lambda_d = layer.scales
        alpha = layer.attention_weights(x)
        full = torch.einsum("bk,kn->bn", alpha, layer.weight)
        mask = self.float_mask.reshape(1, -1)
        kernels = lambda_d * full * mask + lambda_s * layer.static_weight.reshape(1, -1) * (1 - mask)
        bias = alpha @ layer.bias if layer.bias is not None else None
        return apply_per_sample_kernels(
            x, kernels, bias, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
            layer.dilation, layer.groups,
        )


def per_expert_pad_moe(layer: PADMoELinear, x: torch.Tensor) -> torch.Tensor:
    """PAD MoE in the per-expert form: y = sum_{i in top-k} G_i (W_i' x + b_i) with
    W_i' = lambda_d M (.) W_i + lambda_s (1 - M) (.) W_s built for every expert."""
    lambda_s, lambda_d = layer.scales
    mask = layer.mask.to(x.dtype)
    static = layer.masked_static_kernel().reshape(layer.out_features, layer.in_features)
    dynamic = layer.masked_dynamic_kernels().reshape(layer.num_experts, layer.out_features, layer.in_features)
    tokens = x.reshape(-1, layer.in_features)
    gates = layer.router(tokens).gates
    out = torch.zeros(tokens.shape[0], layer.out_features, dtype=x.dtype)
    for i in range(layer.num_experts):
        w_i = lambda_d * mask * dynamic[i] + lambda_s * (1 - mask) * static
        b_i = layer.bias[i] if layer.bias is not None else None
        out = out + gates[:, i : i + 1] * F.linear(tokens, w_i, b_i)
    return out.reshape(*x.shape[:-1], layer.out_features)
