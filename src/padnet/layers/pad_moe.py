"""PAD Mixture-of-Experts: W_i' = lambda_d M (.) W_i + lambda_s (1 - M) (.) W_s, bias b_i dynamic."""

from __future__ import annotations

import math

import torch
from torch import nn

from .assemble import assemble_kernels
from .moe import ExpertSlots, MoELinear, mix_experts, static_dispatch
from .pad_base import PartiallyDynamic
from .router import Routing
from .rows import channel_mix


def assembled_experts(
    static: torch.Tensor,
    dynamic: torch.Tensor,
    index: torch.Tensor,
    shape: tuple[int, int],
    slots: ExpertSlots | None,
    scale: torch.Tensor | None = None,
    keep: torch.Tensor | None = None,
) -> torch.Tensor | list[torch.Tensor | None]:
    """Every expert's full weight W_i' = scale * static with its dynamic entries ``dynamic[i]`` written
    at ``index`` (``assemble_kernels``): E x N element work, tiny next to the T x N token matmuls, and
    then each routed token costs one matmul, the MoE's cost. Without autograd, when only some experts
    receive tokens (decoding a few tokens), only those are assembled (None for the others); without
    ``slots`` (static dispatch: a graph capture, the meta device) all of them, as one tensor."""
    if slots is None:
        return assemble_kernels(static, dynamic, index, scale=scale, keep=keep).reshape(-1, *shape)
    active = [e for e, count in enumerate(slots.counts) if count]
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (static, dynamic, scale))
    if needs_grad or not active or len(active) == len(slots.counts):
        return assemble_kernels(static, dynamic, index, scale=scale, keep=keep).reshape(-1, *shape)
    rows = torch.tensor(active, device=dynamic.device)
    some = assemble_kernels(static, dynamic.index_select(0, rows), index, scale=scale, keep=keep).reshape(-1, *shape)
    out: list[torch.Tensor | None] = [None] * len(slots.counts)
    for position, expert in enumerate(active):
        out[expert] = some[position]
    return out


class PADMoELinear(PartiallyDynamic, MoELinear):
    """Partially dynamic MoE linear (docs/method.md#pad-layers): y = sum_{i in top-k} G_i (W_i' x + b_i) with
    W_i' = lambda_d M (.) W_i + lambda_s (1 - M) (.) W_s.

    Each expert's W_i' is assembled once per forward (``assembled_experts``), so a token costs what it
    costs in the MoE: top_k matmuls. The static-factored form (static path once per token plus the
    masked experts) is the same function but costs one more dense matmul per token: measured 1.77x the
    MoE at MiniLM's FFN-output shape, 1,024 tokens (``benchmarks/layers.py --moe``).

    With ``granularity="channel"`` (docs/method.md#granularity) the static rows are one matmul per token and each
    routed expert computes only its dynamic rows (``padnet.layers.rows.channel_mix``): (1 - kappa) +
    top_k kappa dense matmuls per token, fewer than the MoE's top_k.
    """

    def __init__(self, *args, lambda_mode: str = "both", granularity: str = "element", **kwargs):
        super().__init__(*args, **kwargs)
        self._init_pad((self.out_features, self.in_features), lambda_mode, granularity)
        bound = 1 / math.sqrt(self.in_features)
        nn.init.uniform_(self.static_weight, -bound, bound)

    def mix(self, tokens: torch.Tensor, routing: Routing) -> torch.Tensor:
        lambda_s, lambda_d = self.scales
        shape = (self.out_features, self.in_features)
        if self.relaxed_mask is not None:
            # Scoring only: the per-expert form W_i' = lambda_s W_s + m (lambda_d W_i - lambda_s W_s),
            # so dL/dm sums (lambda_d W_i - lambda_s W_s) * dL/dW_i' per expert and is exactly 0 when
            # every expert equals W_s (upcycled at init), which the partition must detect (docs/method.md#partition).
            static = lambda_s * self.static_weight
            scored = static + self.relaxed_mask * (lambda_d * self.weight - static)
            return mix_experts(tokens, routing, scored, self.bias)
        if self.granularity == "channel":
            rows = self.row_split()
            static = self.static_weight.index_select(0, rows[1]).mul(lambda_s)
            return channel_mix(tokens, routing, rows, static, self.dynamic_rows(rows[0]), self.bias,
                               self.out_features, gate_scale=lambda_d)
        # W_i' x + b_i = lambda_d (W~_i x + b_i / lambda_d) with W~_i = M W_i + lambda_s / lambda_d (1 - M) W_s
        # (lambda_d = 2 sigmoid(phi) > 0): lambda_d scales the (T, k) gates and the (E, out) biases instead
        # of the (E, nnz) dynamic entries, one pass over them fewer in forward and in backward.
        slots = None if static_dispatch(tokens) else ExpertSlots.from_routing(routing, self.num_experts)
        experts = assembled_experts(self.static_weight.reshape(-1), self.dynamic_entries(), self.dynamic_index,
                                    shape, slots, scale=lambda_s / lambda_d, keep=self.static_keep)
        bias = self.bias / lambda_d if self.bias is not None else None
        return mix_experts(tokens, routing, experts, bias, slots, gate_scale=lambda_d)

    def dynamic_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """The experts' dynamic rows, (E, n_d, in): a view once compacted, a row gather before."""
        if self.compacted:
            return self.dynamic_values.reshape(self.num_experts, rows.numel(), self.in_features)
        return self.weight.index_select(1, rows)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self.pad_extra_repr()}"
