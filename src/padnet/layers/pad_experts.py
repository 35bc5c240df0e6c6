"""PAD experts for pretrained MoE blocks whose experts are fused 3-D weights.

transformers' Mixtral, Qwen2-MoE, Qwen3-MoE and OLMoE blocks keep their experts in one module holding
``gate_up_proj`` (E, 2I, H) and ``down_proj`` (E, H, I) and called as ``experts(hidden_states,
top_k_index, top_k_weights)`` after the block's own router. ``PADExperts`` takes that module's place:
each of the two weights becomes a PAD layer (``PADExpertWeights``: W_i' = lambda_d M (.) W_i +
lambda_s (1 - M) (.) W_s), with W_s the experts' mean and the mask all ones, so at conversion the
block computes exactly what it did. The block's router stays as it is. The experts already differ, so
``padnet.partition``'s taylor scores are informative without a warm-up; the entries it makes static
take the experts' mean (the least-squares choice of one shared value).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from ._mixin import ModuleMixin
from .assemble import assemble_kernels
from .deployed_base import DeployedPartiallyDynamic
from .moe import static_dispatch
from .pad_base import PartiallyDynamic

ActFn = Callable[[torch.Tensor], torch.Tensor]  # a fused experts module's activation (a module or a function)
_NO_ROUTER = nn.Module()  # the block routes; the expert weights own no router (summary counts none)


class ExpertWeights(ModuleMixin):
    """What both forms of one fused expert weight share: E matrices (out, in), no bias, no router."""

    num_experts: int
    out_features: int
    in_features: int
    bias = None

    @property
    def router(self) -> nn.Module:
        return _NO_ROUTER

    def _set_geometry(self, num_experts: int, out_features: int, in_features: int) -> None:
        self.num_experts, self.out_features, self.in_features = num_experts, out_features, in_features

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, out_features={self.out_features}, in_features={self.in_features}"


class PADExpertWeights(ExpertWeights, PartiallyDynamic, nn.Module):
    """One fused expert weight (E, out, in) as a PAD layer; ``expert_weights()`` is every W_i'."""

    def __init__(self, num_experts: int, out_features: int, in_features: int, lambda_mode: str = "both"):
        super().__init__()
        self._set_geometry(num_experts, out_features, in_features)
        self.weight = nn.Parameter(torch.empty(num_experts, out_features, in_features))
        self._init_pad((out_features, in_features), lambda_mode)

    @classmethod
    @torch.no_grad()
    def from_experts(cls, weight: torch.Tensor, lambda_mode: str = "both") -> "PADExpertWeights":
        """The PAD form of a fused (E, out, in) weight: the experts as they are, W_s their mean."""
        num_experts, out_features, in_features = weight.shape
        layer = cls(num_experts, out_features, in_features, lambda_mode=lambda_mode)
        layer = layer.to(device=weight.device, dtype=weight.dtype)
        layer.weight.copy_(weight)
        layer.static_weight.copy_(weight.mean(0))
        return layer

    def expert_weights(self) -> torch.Tensor:
        """(E, out, in): lambda_s W_s with each expert's dynamic entries (times lambda_d) written in."""
        lambda_s, lambda_d = self.scales
        if self.relaxed_mask is not None:  # scoring: dL/dm sums (lambda_d W_i - lambda_s W_s) dL/dW_i'
            static = lambda_s * self.static_weight
            return static + self.relaxed_mask * (lambda_d * self.weight - static)
        kernels = assemble_kernels(self.static_weight.reshape(-1), lambda_d * self.dynamic_entries(),
                                   self.dynamic_index, scale=lambda_s, keep=self.static_keep)
        # A copy: without autograd the assembled kernels are a workspace the next assembly overwrites.
        return kernels.reshape(self.num_experts, *self.kernel_shape).clone()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self.pad_extra_repr()}"


class DeployedExpertWeights(ExpertWeights, DeployedPartiallyDynamic, nn.Module):
    """Inference form of ``PADExpertWeights``: the static entries (times lambda_s), the E x nnz dynamic
    entries (times lambda_d) and the index list; the same ``expert_weights()``."""

    def __init__(self, num_experts: int, out_features: int, in_features: int,
                 dynamic_index: torch.Tensor | None = None):
        super().__init__()
        self._set_geometry(num_experts, out_features, in_features)
        self._init_deployed((out_features, in_features), num_experts, dynamic_index)

    @classmethod
    @torch.no_grad()
    def from_pad(cls, layer: PADExpertWeights) -> "DeployedExpertWeights":
        new = cls(layer.num_experts, layer.out_features, layer.in_features, layer.dynamic_index.detach().cpu())
        new.take_entries(layer)
        return new.train(layer.training)

    def expert_weights(self) -> torch.Tensor:
        kernels = assemble_kernels(self.static_kernel, self.dynamic_values, self.dynamic_index)
        return kernels.reshape(self.num_experts, *self.kernel_shape).clone()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self.deployed_extra_repr()}"


PADExpertWeights.deployed_form = DeployedExpertWeights


class PADExperts(nn.Module):
    """Drop-in for a fused experts module: ``forward(hidden_states, top_k_index, top_k_weights)`` gives
    sum over a token's k experts of weight * down_i(act(gate_i x) * up_i x), adding the experts'
    results in expert order as transformers' eager loop does, so the upcycled block is exact."""

    # the PAD forms of the two fused weights (``padnet.deploy`` swaps in their deployed forms)
    gate_up_proj: PADExpertWeights | DeployedExpertWeights
    down_proj: PADExpertWeights | DeployedExpertWeights

    def __init__(self, gate_up_proj: PADExpertWeights | DeployedExpertWeights,
                 down_proj: PADExpertWeights | DeployedExpertWeights, act_fn: ActFn):
        super().__init__()
        self.gate_up_proj = gate_up_proj
        self.down_proj = down_proj
        self.act_fn = act_fn
        self.num_experts = gate_up_proj.num_experts

    @classmethod
    def from_experts(cls, experts: nn.Module, lambda_mode: str = "both") -> "PADExperts":
        """The PAD form of a fused experts module (its ``gate_up_proj``, ``down_proj`` and ``act_fn``)."""
        # a module ``is_fused_experts`` accepts: two 3-D weights and a callable act_fn
        gate_up, down = cast(torch.Tensor, experts.gate_up_proj), cast(torch.Tensor, experts.down_proj)
        return cls(PADExpertWeights.from_experts(gate_up.detach(), lambda_mode),
                   PADExpertWeights.from_experts(down.detach(), lambda_mode), cast(ActFn, experts.act_fn))

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor):
        gate_up, down = self.gate_up_proj.expert_weights(), self.down_proj.expert_weights()
        if static_dispatch(hidden_states):
            return self._dense(hidden_states, top_k_index, top_k_weights, gate_up, down)
        out = torch.zeros_like(hidden_states)
        for expert in top_k_index.unique().tolist():
            if not 0 <= expert < self.num_experts:
                continue  # transformers marks dropped slots with E
            slot, token = (top_k_index.t() == expert).nonzero(as_tuple=True)
            gate, up = F.linear(hidden_states[token], gate_up[expert]).chunk(2, dim=-1)
            y = F.linear(self.act_fn(gate) * up, down[expert]) * top_k_weights[token, slot, None]
            out.index_add_(0, token, y.to(out.dtype))
        return out

    def _dense(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor,
               gate_up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
        """The forward with static shapes, for graph captures and meta tensors (``static_dispatch``): the
        loop above reads the routed experts back to the host and indexes with data-dependent shapes. Every
        token goes through every expert ((T, E, 2I) and (T, E, H) intermediates, E / k times the expert
        work), then each token's k slots are gathered and weighted; a dropped slot (index E) adds
        nothing. The same products as the loop; with k > 2 the slots are summed in slot order, not
        expert order (a float rounding difference)."""
        num_tokens, hidden = hidden_states.shape
        inter = down.shape[2]
        gate, up = F.linear(hidden_states, gate_up.reshape(-1, hidden)).reshape(num_tokens, -1, 2 * inter).chunk(2, -1)
        act = (self.act_fn(gate) * up).transpose(0, 1)  # (E, T, I)
        y = torch.bmm(act, down.transpose(1, 2)).transpose(0, 1)  # (T, E, H)
        valid = (top_k_index >= 0) & (top_k_index < self.num_experts)
        index = torch.where(valid, top_k_index, torch.zeros_like(top_k_index))
        slots = y.gather(1, index.unsqueeze(2).expand(-1, -1, hidden)) * top_k_weights.unsqueeze(2).to(y.dtype)
        slots = torch.where(valid.unsqueeze(2), slots, torch.zeros((), dtype=slots.dtype, device=slots.device))
        return slots.sum(1).to(hidden_states.dtype)


def is_fused_experts(module: nn.Module) -> bool:
    """A fused experts module: exactly the parameters gate_up_proj (E, 2I, H) and down_proj (E, H, I),
    and an ``act_fn``."""
    params = dict(module.named_parameters(recurse=False))
    if set(params) != {"gate_up_proj", "down_proj"}:
        return False
    gate_up, down = params["gate_up_proj"], params["down_proj"]
    if gate_up.dim() != 3 or down.dim() != 3:
        return False
    (experts, two_inter, hidden), (experts_down, hidden_down, inter) = gate_up.shape, down.shape
    shapes_fit = experts == experts_down and hidden == hidden_down and two_inter == 2 * inter
    return shapes_fit and callable(getattr(module, "act_fn", None)) and not list(module.children())[1:]
