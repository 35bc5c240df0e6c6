"""Deployed PAD MoE: y = S x + sum_{i in top-k} G_i (D_i x + b_i) with the lambdas folded into S and D."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .deployed_base import DeployedPartiallyDynamic
from .moe import init_moe_geometry, mix_experts
from .pad_base import dense_dynamic_kernels
from .pad_moe import PADMoELinear


class DeployedPADMoELinear(DeployedPartiallyDynamic, nn.Module):
    """Inference form of ``PADMoELinear``: the same outputs as the training form in eval mode.

    Stores ``static_values`` (N - nnz, times lambda_s), ``dynamic_values`` (E, nnz, times lambda_d),
    ``dynamic_index``, the expert biases and the unchanged ``router``. The static path runs once per
    token; each expert's sparse dynamic weight is densified per forward (E x N writes, cheap next to
    the token matmuls), so no E x N tensor is stored.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        num_experts: int = 8,
        top_k: int = 2,
        noisy_gating: bool = True,
        aux_loss_coef: float = 0.01,
        bias: bool = True,
        dynamic_index: torch.Tensor | None = None,
    ):
        super().__init__()
        init_moe_geometry(self, in_features, out_features, num_experts, top_k, noisy_gating, aux_loss_coef)
        self._init_deployed((out_features, in_features), num_experts, dynamic_index)
        self.bias = nn.Parameter(torch.zeros(num_experts, out_features), requires_grad=False) if bias else None

    @classmethod
    @torch.no_grad()
    def from_pad(cls, layer: PADMoELinear) -> "DeployedPADMoELinear":
        if layer.relaxed_mask is not None:
            raise ValueError("cannot deploy a PADMoELinear while it is being scored (relaxed_mask is set)")
        new = cls(
            layer.in_features, layer.out_features, layer.num_experts, layer.top_k, layer.router.noisy_gating,
            layer.aux_loss_coef, bias=layer.bias is not None, dynamic_index=layer.dynamic_index.detach().cpu(),
        )
        new.router = copy.deepcopy(layer.router)
        ref = layer.dynamic_entries()
        new.to(device=ref.device, dtype=ref.dtype)
        lambda_s, lambda_d = layer.scales
        static = layer.masked_static_kernel().index_select(0, layer.static_index.to(ref.device))
        new.load_folded(lambda_s * static, lambda_d * ref)
        if layer.bias is not None:
            new.bias.copy_(layer.bias)
        return new.train(layer.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"expected input (..., {self.in_features}); got {tuple(x.shape)}")
        tokens = x.reshape(-1, self.in_features)
        routing = self.router(tokens)
        self.last_aux_loss = self.aux_loss_coef * routing.balance_loss
        shape = (self.out_features, self.in_features)
        experts = dense_dynamic_kernels(self.dynamic_values, self.dynamic_index, self.kernel_numel).reshape(-1, *shape)
        y = F.linear(tokens, self.static_kernel.reshape(shape)) + mix_experts(tokens, routing, experts, self.bias)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, num_experts={self.num_experts}, "
            f"top_k={self.top_k}, bias={self.bias is not None}, {self.deployed_extra_repr()}"
        )
