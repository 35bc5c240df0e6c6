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
        if self.relaxed_mask is not None:  # scoring only: the float mask carries gradient
            m = self.relaxed_mask
            static = lambda_s * (1 - m) * self.static_weight
            experts = lambda_d * m * self.weight
        else:
            static = (lambda_s * self.masked_static_kernel()).reshape(shape)
            experts = (lambda_d * self.masked_dynamic_kernels()).reshape(-1, *shape)
        return F.linear(tokens, static) + mix_experts(tokens, routing, experts, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self.pad_extra_repr()}"
