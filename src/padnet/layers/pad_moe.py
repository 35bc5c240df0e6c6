"""PAD Mixture-of-Experts: W_i' = lambda_d M (.) W_i + lambda_s (1 - M) (.) W_s, bias b_i dynamic."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .moe import MoELinear, mix_experts
from .pad_base import PartiallyDynamic
from .router import Routing


class PADMoELinear(PartiallyDynamic, MoELinear):
    """Partially dynamic MoE linear (SPEC section 3), in the static-factored form.

    Because the top-k gates sum to 1, y = lambda_s ((1 - M) (.) W_s) x
    + sum_{i in top-k} G_i (lambda_d (M (.) W_i) x + b_i): the static path runs once per token
    instead of once per expert.
    """

    def __init__(self, *args, lambda_mode: str = "both", **kwargs):
        super().__init__(*args, **kwargs)
        self._init_pad((self.out_features, self.in_features), lambda_mode)
        bound = 1 / math.sqrt(self.in_features)
        nn.init.uniform_(self.static_weight, -bound, bound)

    def mix(self, tokens: torch.Tensor, routing: Routing) -> torch.Tensor:
        lambda_s, lambda_d = self.scales
        shape = (self.out_features, self.in_features)
        if self.relaxed_mask is not None:
            # Scoring only: the per-expert form W_i' = lambda_s W_s + m (lambda_d W_i - lambda_s W_s),
            # so dL/dm sums (lambda_d W_i - lambda_s W_s) * dL/dW_i' per expert and is exactly 0 when
            # every expert equals W_s (upcycled at init), which the partition must detect (SPEC 4).
            static = lambda_s * self.static_weight
            experts = static + self.relaxed_mask * (lambda_d * self.weight - static)
            return mix_experts(tokens, routing, experts, self.bias)
        static = self.masked_static_kernel(lambda_s).reshape(shape)
        experts = (lambda_d * self.masked_dynamic_kernels()).reshape(-1, *shape)
        return F.linear(tokens, static) + mix_experts(tokens, routing, experts, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self.pad_extra_repr()}"
