"""Deployed PAD MoE: y = sum_{i in top-k} G_i ((S + D_i) x + b_i) with the lambdas folded into S and D."""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..errors import UsageError
from .deployed_base import DeployedPartiallyDynamic
from .moe import ExpertSlots, MoECompute, init_moe_geometry, mix_experts, static_dispatch
from .pad_moe import PADMoELinear, assembled_experts
from .router import Routing
from .rows import channel_mix


class DeployedPADMoELinear(DeployedPartiallyDynamic, MoECompute, nn.Module):
    """Inference form of ``PADMoELinear``: the same outputs as the training form in eval mode.

    Stores ``static_values`` (N - nnz, times lambda_s), ``dynamic_values`` (E, nnz, times lambda_d),
    ``dynamic_index``, the expert biases and the unchanged ``router``. Each forward assembles the
    routed experts' full weights S + D_i (E x N element work, only the experts that receive tokens),
    so no E x N tensor is stored and a token costs top_k matmuls, as in the MoE.
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
        granularity: str = "element",
    ):
        super().__init__()
        init_moe_geometry(self, in_features, out_features, num_experts, top_k, noisy_gating, aux_loss_coef)
        self._init_deployed((out_features, in_features), num_experts, dynamic_index, granularity)
        self.bias = nn.Parameter(torch.zeros(num_experts, out_features), requires_grad=False) if bias else None

    @classmethod
    @torch.no_grad()
    def from_pad(cls, layer: PADMoELinear) -> "DeployedPADMoELinear":
        if layer.relaxed_mask is not None:
            raise UsageError("cannot deploy a PADMoELinear while it is being scored (relaxed_mask is set)")
        new = cls(
            layer.in_features, layer.out_features, layer.num_experts, layer.top_k, layer.router.noisy_gating,
            layer.aux_loss_coef, bias=layer.bias is not None, dynamic_index=layer.dynamic_index.detach().cpu(),
            granularity=layer.granularity,
        )
        new.router = copy.deepcopy(layer.router)
        new.take_entries(layer)
        if layer.bias is not None:
            assert new.bias is not None  # built with bias=True above
            new.bias.copy_(layer.bias)
        return new.train(layer.training)

    def mix(self, tokens: torch.Tensor, routing: Routing) -> torch.Tensor:
        if self.granularity == "channel":  # static rows held compact: the static matmul's weight
            rows = self.row_split()
            static = self.static_kernel.reshape(-1, self.in_features)
            dynamic = self.dynamic_values.reshape(self.num_experts, -1, self.in_features)
            return channel_mix(tokens, routing, rows, static, dynamic, self.bias, self.out_features)
        slots = None if static_dispatch(tokens) else ExpertSlots.from_routing(routing, self.num_experts)
        experts = assembled_experts(self.static_kernel, self.dynamic_values, self.dynamic_index,
                                    (self.out_features, self.in_features), slots)
        return mix_experts(tokens, routing, experts, self.bias, slots)

    def extra_repr(self) -> str:
        return f"{self.geometry_repr()}, {self.deployed_extra_repr()}"


PADMoELinear.deployed_form = DeployedPADMoELinear
