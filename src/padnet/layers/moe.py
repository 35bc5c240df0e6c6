"""Mixture-of-Experts linear layer with noisy top-k token routing: the fully dynamic MoE host."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ._validate import check_positive_int
from .router import NoisyTopKRouter, Routing


@dataclass
class ExpertSlots:
    """The (token, slot) pairs of a routing sorted by expert: one sort per forward, so every expert reads
    a contiguous slice and one gather undoes the order (no per-expert ``nonzero`` search, which also
    breaks ``torch.compile`` graphs)."""

    token_index: torch.Tensor  # (T k,): the token of each sorted pair
    inverse: torch.Tensor  # (T k,): where pair (t, slot) = t k + slot sits in the sorted order
    counts: list[int]  # (E,): pairs per expert, the lengths of the contiguous slices

    @classmethod
    def from_routing(cls, routing: Routing, num_experts: int) -> "ExpertSlots":
        experts = routing.top_indices.reshape(-1)
        order = torch.argsort(experts, stable=True)
        inverse = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=order.device))
        counts = torch.bincount(experts, minlength=num_experts).tolist()
        return cls(order // routing.top_indices.shape[1], inverse, counts)


def mix_experts(
    tokens: torch.Tensor,
    routing: Routing,
    weights: torch.Tensor | Sequence[torch.Tensor | None],
    bias: torch.Tensor | None,
    slots: ExpertSlots | None = None,
) -> torch.Tensor:
    """sum_{i in top-k} G_i(x) (W_i x + b_i) for (T, in) tokens and (E, out, in) weights (or a list of E
    weights, None for an expert that receives no token).

    The pairs are sorted by expert once (``ExpertSlots``); each expert runs one matmul on its contiguous
    slice; one gather puts the results back in (token, slot) order and the gates weight the k slots.
    No scatter-add: the result does not depend on the order of floating-point additions (deterministic
    on GPUs too). Experts that receive no tokens still join the graph (an empty matmul), so their
    parameters get a zero gradient rather than none, which keeps DistributedDataParallel from reporting
    unused parameters.
    """
    slots = slots if slots is not None else ExpertSlots.from_routing(routing, len(weights))
    num_tokens, k = routing.top_indices.shape
    # unbind, not weights[e]: its backward stacks the E gradients once instead of allocating a
    # full (E, out, in) gradient per expert.
    experts = weights.unbind(0) if isinstance(weights, torch.Tensor) else weights
    biases = bias.unbind(0) if bias is not None else [None] * len(experts)
    chunks = tokens.index_select(0, slots.token_index).split(slots.counts)
    outs = []
    for chunk, weight, expert_bias in zip(chunks, experts, biases):
        if weight is None:
            if chunk.shape[0]:
                raise ValueError("an expert that receives tokens has no weight")
            continue
        outs.append(F.linear(chunk, weight, expert_bias))
    y = torch.cat(outs)
    y = y.index_select(0, slots.inverse).reshape(num_tokens, k, y.shape[1])
    return (y * routing.top_gates.unsqueeze(2).to(y.dtype)).sum(1)


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
