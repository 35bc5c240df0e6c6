"""Noisy top-k gating (Shazeer et al. 2017) with its load-balancing loss, token-level."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UsageError
from ._validate import check_positive_int
from .precision import widened, without_autocast

NOISE_FLOOR = 0.01  # added to softplus(x W_noise) so the noise never vanishes


def cv_squared(x: torch.Tensor) -> torch.Tensor:
    """Squared coefficient of variation; 0 for a single value (nothing to balance)."""
    if x.numel() <= 1:
        return x.new_zeros(())
    x = x.float()
    return x.var() / (x.mean() ** 2 + 1e-10)


@dataclass
class Routing:
    gates: torch.Tensor  # (T, E), softmax over the top-k logits, 0 elsewhere
    top_indices: torch.Tensor  # (T, k)
    top_gates: torch.Tensor  # (T, k)
    balance_loss: torch.Tensor  # CV^2(importance) + CV^2(load), before the coefficient


class NoisyTopKRouter(nn.Module):
    """h(x) = x W_g (+ N(0,1) * (softplus(x W_noise) + 0.01) while training); G = softmax(top-k(h)).

    Both W_g and W_noise start at 0 (docs/method.md#dynamic-layers), so at init every expert is equally likely.
    Load is the smooth probability of being in the top-k while training with noise, hard counts
    otherwise.
    """

    def __init__(self, in_features: int, num_experts: int, top_k: int, noisy_gating: bool = True):
        super().__init__()
        check_positive_int("num_experts", num_experts)
        check_positive_int("top_k", top_k)
        if top_k > num_experts:
            raise UsageError(f"top_k={top_k} must be <= num_experts={num_experts}")
        self.num_experts = num_experts
        self.top_k = top_k
        self.noisy_gating = noisy_gating
        self.w_gate = nn.Parameter(torch.zeros(in_features, num_experts))
        self.w_noise = nn.Parameter(torch.zeros(in_features, num_experts)) if noisy_gating else None

    def forward(self, tokens: torch.Tensor) -> Routing:
        with without_autocast(tokens):  # float32 (padnet.layers.precision): top-k of near-equal logits
            return self._route(widened(tokens))

    def _route(self, tokens: torch.Tensor) -> Routing:
        noisy_train = self.noisy_gating and self.training
        if noisy_train:
            # One (in, 2E) product instead of two (in, E) ones: such skinny products run far below the
            # CPU's matmul speed, so the pair costs about what one does (its backward likewise).
            assert self.w_noise is not None  # built with noisy_gating=True
            weights = torch.cat([widened(self.w_gate), widened(self.w_noise)], 1)
            clean, noise_logits = (tokens @ weights).split(self.num_experts, 1)
            noise_std = F.softplus(noise_logits) + NOISE_FLOOR
            logits = clean + torch.randn_like(clean) * noise_std
        else:
            clean = logits = tokens @ widened(self.w_gate)
        k = self.top_k
        smooth_load = noisy_train and k < self.num_experts
        top_values, top_indices = logits.topk(k + 1 if smooth_load else k, dim=1)
        top_gates = torch.softmax(top_values[:, :k], dim=1)
        top_indices_k = top_indices[:, :k]
        gates = torch.zeros_like(logits).scatter(1, top_indices_k, top_gates)
        importance = gates.sum(0)
        if smooth_load:
            load = self._prob_in_top_k(clean, logits, noise_std, top_values).sum(0)
        else:
            load = (gates > 0).sum(0).to(gates.dtype)
        return Routing(gates, top_indices_k, top_gates, cv_squared(importance) + cv_squared(load))

    def _prob_in_top_k(self, clean, noisy, noise_std, top_values) -> torch.Tensor:
        """P(expert in top-k) under re-sampled noise, differentiable in W_g and W_noise."""
        k = self.top_k
        threshold_if_in = top_values[:, k : k + 1]  # the (k+1)-th value: what an insider must beat
        threshold_if_out = top_values[:, k - 1 : k]  # the k-th value: what an outsider must beat
        # The standard normal CDF as one op: torch.distributions.Normal checks its arguments' values, a
        # host read per call, which meta tensors cannot serve and graph captures cannot hold.
        prob_if_in = torch.special.ndtr((clean - threshold_if_in) / noise_std)
        prob_if_out = torch.special.ndtr((clean - threshold_if_out) / noise_std)
        return torch.where(noisy > threshold_if_in, prob_if_in, prob_if_out)

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, top_k={self.top_k}, noisy_gating={self.noisy_gating}"
