"""Deployed PAD DY-Conv: W(x) = S + scatter(alpha(x) @ D) with the lambdas folded into S and D."""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..errors import UsageError
from ._validate import IntPair
from .assemble import assemble_kernels
from .deployed_base import DeployedPartiallyDynamic
from .dynamic_conv import DynamicConvCompute, append_kernel_weight, init_dynamic_conv_geometry
from .pad_base import dense_dynamic_kernels
from .pad_conv import PADConv2d
from .rows import channel_conv


class DeployedPADConv2d(DeployedPartiallyDynamic, DynamicConvCompute, nn.Module):
    """Inference form of ``PADConv2d``: the same outputs as the training form in eval mode.

    Stores ``static_values`` (N - nnz, times lambda_s), ``dynamic_values`` (K, nnz, times lambda_d),
    ``dynamic_index`` (nnz; for ``granularity="channel"`` the dynamic rows ``dynamic_rows`` instead),
    the dynamic bias (K, C_out) if any, and the unchanged ``attention``.
    Build one with ``DeployedPADConv2d.from_pad(layer)`` or ``padnet.deploy(model)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        stride: IntPair = 1,
        padding: IntPair = 0,
        dilation: IntPair = 1,
        groups: int = 1,
        bias: bool = False,
        num_kernels: int = 4,
        reduction: int = 16,
        routing: str = "softmax",
        dynamic_index: torch.Tensor | None = None,
        granularity: str = "element",
    ):
        super().__init__()
        init_dynamic_conv_geometry(
            self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, num_kernels,
            reduction, routing,
        )
        self._init_deployed(self.weight_shape, num_kernels, dynamic_index, granularity)
        self.bias = nn.Parameter(torch.zeros(num_kernels, out_channels), requires_grad=False) if bias else None

    @classmethod
    @torch.no_grad()
    def from_pad(cls, layer: PADConv2d) -> "DeployedPADConv2d":
        if layer.relaxed_mask is not None:
            raise UsageError("cannot deploy a PADConv2d while it is being scored (relaxed_mask is set)")
        new = cls(
            layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding, layer.dilation,
            layer.groups, bias=layer.bias is not None, num_kernels=layer.num_kernels,
            routing=layer.routing,
            dynamic_index=layer.dynamic_index.detach().cpu(), granularity=layer.granularity,
        )
        # Attention unchanged: a copy, whatever reduction built it.
        new.attention = copy.deepcopy(layer.attention)
        new.temperature = layer.temperature
        new.take_entries(layer)
        if layer.bias is not None:
            assert new.bias is not None  # built with bias=True above
            new.bias.copy_(layer.bias)
        return new.train(layer.training)

    def compute(self, x: torch.Tensor, alpha: torch.Tensor, bias: torch.Tensor | None, strategy: str) -> torch.Tensor:
        if not self.computes_by_rows():
            return super().compute(x, alpha, bias, strategy)
        # Channel granularity: ``static_kernel`` holds the static rows compact, the static conv's weight.
        return channel_conv(self, x, self.row_split(), self.static_kernel, self.dynamic_values, alpha, bias, strategy,
                            stored_static=True)

    def computes_by_rows(self) -> bool:
        return self.granularity == "channel"

    def per_sample_kernels(self, alpha: torch.Tensor) -> torch.Tensor:
        """W(x) flattened, (B, N): the dense static kernel with the nnz aggregated dynamic entries written in.
        Under no_grad on CPU this is a view of a reused workspace (``padnet.layers.assemble``)."""
        return assemble_kernels(self.static_kernel, alpha @ self.dynamic_values, self.dynamic_index)

    def mixture_kernels(self, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """As ``PADConv2d.mixture_kernels``, lambdas folded: S + D_k scattered (softmax), or the K
        densified D_k plus S as a (K + 1)-th kernel of weight 1 (sigmoid)."""
        if self.routing == "softmax":
            return assemble_kernels(self.static_kernel, self.dynamic_values, self.dynamic_index), alpha
        dynamic = dense_dynamic_kernels(self.dynamic_values, self.dynamic_index, self.kernel_numel)
        stack = torch.cat([dynamic, self.static_kernel.unsqueeze(0)])
        return stack, append_kernel_weight(alpha, 1.0)

    def extra_repr(self) -> str:
        return f"{self.geometry_repr()}, bias={self.bias is not None}, {self.deployed_extra_repr()}"


PADConv2d.deployed_form = DeployedPADConv2d
