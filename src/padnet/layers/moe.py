"""Mixture-of-Experts linear layer with noisy top-k token routing: the fully dynamic MoE host."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._validate import check_positive_int
from .router import NoisyTopKRouter, Routing


def mix_experts(
    tokens: torch.Tensor, routing: Routing, weights: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """sum_{i in top-k} G_i(x) (W_i x + b_i) for (T, in) tokens and (E, out, in) weights.

    Each expert runs once on the tokens routed to it. Experts that receive no tokens still join the
    graph (an empty matmul), so their parameters get a zero gradient rather than none, which keeps
    DistributedDataParallel from reporting unused parameters.
    """
    out = tokens.new_zeros(tokens.shape[0], weights.shape[1])
    # unbind, not weights[e]: its backward stacks the E gradients once instead of allocating a
    # full (E, out, in) gradient per expert.
    biases = bias.unbind(0) if bias is not None else [None] * weights.shape[0]
    for expert, (weight, expert_bias) in enumerate(zip(weights.unbind(0), biases)):
        token_idx, slot = (routing.top_indices == expert).nonzero(as_tuple=True)
        y = F.linear(tokens.index_select(0, token_idx), weight, expert_bias)
        out = out.index_add(0, token_idx, routing.top_gates[token_idx, slot].unsqueeze(1) * y)
    return out


def init_moe_geometry(
    module: nn.Module, in_features, out_features, num_experts, top_k, noisy_gating, aux_loss_coef
) -> None:
    """Check and set what every MoE form (training, PAD, deployed) knows about its shape, its router,
    and the slot for the load-balancing loss of the last forward."""
    check_positive_int("in_features", in_features)
    check_positive_int("out_features", out_features)
    if not aux_loss_coef >= 0:
        raise ValueError(f"aux_loss_coef={aux_loss_coef!r} must be >= 0")
    module.in_features = in_features
    module.out_features = out_features
    module.num_experts = num_experts
    module.top_k = top_k
    module.aux_loss_coef = aux_loss_coef
    module.router = NoisyTopKRouter(in_features, num_experts, top_k, noisy_gating)
    module.last_aux_loss = None


class MoELinear(nn.Module):
    """y = sum_{i in top-k} G_i(x) (W_i x + b_i), routed per token over any leading dimensions.

    After each forward, ``last_aux_loss`` holds ``aux_loss_coef * (CV^2(importance) + CV^2(load))``;
    ``padnet.aux_loss(model)`` sums it over layers so it can be added to the task loss.
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
    ):
        super().__init__()
        init_moe_geometry(self, in_features, out_features, num_experts, top_k, noisy_gating, aux_loss_coef)
        self.weight = nn.Parameter(torch.empty(num_experts, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(num_experts, out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Linear's init, per expert.
        bound = 1 / math.sqrt(self.in_features)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"expected input (..., {self.in_features}); got {tuple(x.shape)}")
        tokens = x.reshape(-1, self.in_features)
        routing = self.router(tokens)
        self.last_aux_loss = self.aux_loss_coef * routing.balance_loss
        return self.mix(tokens, routing).reshape(*x.shape[:-1], self.out_features)

    def mix(self, tokens: torch.Tensor, routing: Routing) -> torch.Tensor:
        return mix_experts(tokens, routing, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, num_experts={self.num_experts}, "
            f"top_k={self.top_k}, bias={self.bias is not None}"
        )


def aux_loss(model: nn.Module) -> torch.Tensor:
    """Sum of the load-balancing losses of every MoE layer's last forward pass (0 if none ran).

    Add it to the task loss while training; the coefficient is each layer's ``aux_loss_coef``.
    """
    losses = [m.last_aux_loss for m in model.modules() if isinstance(m, MoELinear) and m.last_aux_loss is not None]
    if not losses:
        param = next(model.parameters(), None)
        return torch.zeros((), device=param.device if param is not None else None)
    return torch.stack([loss.to(losses[0].device) for loss in losses]).sum()
