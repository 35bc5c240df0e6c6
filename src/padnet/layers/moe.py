"""Mixture-of-Experts linear layer with noisy top-k token routing: the fully dynamic MoE host."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModeError, UsageError
from ._mixin import ModuleMixin
from ._validate import check_positive_int
from .assemble import capture_mode
from .pad_base import DynamicEntries, upcycle_from
from .router import NoisyTopKRouter, Routing


class LinearLike(Protocol):
    """What ``MoELinear.from_linear`` reads from a projection y = x W^T + b: an ``nn.Linear``, or a
    ``padnet.layers.conversions.LinearView`` of another module (GPT-2's ``Conv1D``)."""

    @property
    def in_features(self) -> int: ...

    @property
    def out_features(self) -> int: ...

    @property
    def weight(self) -> torch.Tensor: ...  # (out, in)

    @property
    def bias(self) -> torch.Tensor | None: ...


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
        # The counts become Python ints for the slices: a host sync and data-dependent shapes, which no
        # graph capture can hold (``static_dispatch``: captures take ``dense_mix`` instead).
        zeros = torch.zeros(num_experts, dtype=torch.long, device=experts.device)
        counts = zeros.scatter_add_(0, experts, torch.ones_like(experts)).tolist()
        return cls(order // routing.top_indices.shape[1], inverse, counts)


class _ExpertMatmul(torch.autograd.Function):
    """y[rows of expert e] = x[rows of expert e] @ W_e^T + b_e over contiguous row slices, with every
    result written straight into its slice of one output (and the backward's into one (E, out, in)
    weight gradient). A per-expert ``F.linear`` loop needs a ``cat`` of the outputs and, in backward, a
    ``cat`` of the input gradients and a ``stack`` of the weight gradients: three extra copies that
    measured 11 ms of a 70 ms MoE step (1,536 -> 384, 1,024 tokens, 8 experts, top-2, one CPU thread)."""

    @staticmethod
    def forward(ctx, x, weights, bias, counts):
        out = x.new_empty(x.shape[0], weights.shape[1])
        start = 0
        for e, count in enumerate(counts):
            rows = slice(start, start + count)
            if bias is None:
                torch.mm(x[rows], weights[e].t(), out=out[rows])
            else:
                torch.addmm(bias[e], x[rows], weights[e].t(), out=out[rows])
            start += count
        ctx.counts = counts
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, weights)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, weights = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = x.new_empty(x.shape) if ctx.needs_input_grad[0] else None
        grad_w = weights.new_empty(weights.shape) if ctx.needs_input_grad[1] else None
        has_grad_b = ctx.has_bias and ctx.needs_input_grad[2]
        grad_b = grad.new_empty(weights.shape[0], weights.shape[1]) if has_grad_b else None
        start = 0
        for e, count in enumerate(ctx.counts):
            rows = slice(start, start + count)
            if grad_x is not None:
                torch.mm(grad[rows], weights[e], out=grad_x[rows])
            if grad_w is not None:
                torch.mm(grad[rows].t(), x[rows], out=grad_w[e])  # zeros for an expert without tokens
            if grad_b is not None:
                torch.sum(grad[rows], 0, out=grad_b[e])
            start += count
        return grad_x, grad_w, grad_b, None


def static_dispatch(tokens: torch.Tensor) -> bool:
    """Whether to route with shapes that do not depend on the routing (``dense_mix``) rather than the
    sparse eager path (``ExpertSlots``: per-expert token counts read back as Python ints). A graph capture
    cannot hold those counts: ``torch.jit.trace`` bakes the traced batch's counts into the graph (wrong at
    any other batch, silently), ``torch.export`` and ``torch.compile(fullgraph=True)`` cannot trace a
    host read. Meta tensors hold no counts to read."""
    return tokens.is_meta or capture_mode() is not None


def dense_mix(
    tokens: torch.Tensor,
    routing: Routing,
    weights: torch.Tensor,
    bias: torch.Tensor | None,
    gate_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """``mix_experts`` with static shapes (dense dispatch): every token through every expert, one
    (T, in) x (in, E out) matmul, then each token's k slots gathered from the (T, E, out) results and
    weighted by their gates exactly as the sparse path does (the same k products, summed in the same
    slot order; unselected experts are never multiplied by a zero gate, so an inf there cannot make a
    NaN). Costs E / top_k times the sparse path's expert MACs and a (T, E, out) intermediate; what graph
    captures and meta tensors run (``static_dispatch``)."""
    num_experts, out_features, in_features = weights.shape
    flat_weight = weights.to(tokens.dtype).reshape(num_experts * out_features, in_features)
    flat_bias = bias.to(tokens.dtype).reshape(-1) if bias is not None else None
    y = F.linear(tokens, flat_weight, flat_bias).reshape(-1, num_experts, out_features)
    y = y.gather(1, routing.top_indices.unsqueeze(2).expand(-1, -1, out_features))
    gates = routing.top_gates if gate_scale is None else gate_scale * routing.top_gates
    return (y * gates.unsqueeze(2).to(y.dtype)).sum(1)


def mix_experts(
    tokens: torch.Tensor,
    routing: Routing,
    weights: torch.Tensor | Sequence[torch.Tensor | None],
    bias: torch.Tensor | None,
    slots: ExpertSlots | None = None,
    gate_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """sum_{i in top-k} G_i(x) (W_i x + b_i) for (T, in) tokens and (E, out, in) weights (or a list of E
    weights, None for an expert that receives no token); ``gate_scale`` (a 0-d tensor) multiplies every
    gate, so the result is then gate_scale sum_{i in top-k} G_i(x) (W_i x + b_i).

    The pairs are sorted by expert once (``ExpertSlots``); each expert runs one matmul on its contiguous
    slice (``_ExpertMatmul``); one gather puts the results back in (token, slot) order and the gates
    weight the k slots. No scatter-add: the result does not depend on the order of floating-point additions
    (deterministic on GPUs too). Experts that receive no tokens still join the graph (an empty matmul), so their
    parameters get a zero gradient rather than none, which keeps DistributedDataParallel from reporting
    unused parameters.

    Under a graph capture or on the meta device (``static_dispatch``) the layer runs ``dense_mix``
    instead: ``weights`` must then be one (E, out, in) tensor (callers build no ``slots`` there).
    """
    if static_dispatch(tokens):
        if not isinstance(weights, torch.Tensor):
            raise UsageError("static dispatch (graph capture, meta device) needs every expert's weight: one "
                             "(E, out, in) tensor")
        return dense_mix(tokens, routing, weights, bias, gate_scale)
    slots = slots if slots is not None else ExpertSlots.from_routing(routing, len(weights))
    num_tokens, k = routing.top_indices.shape
    sorted_tokens = tokens.index_select(0, slots.token_index)
    if isinstance(weights, torch.Tensor):
        bias = bias.to(tokens.dtype) if bias is not None else None
        y = _ExpertMatmul.apply(sorted_tokens, weights.to(tokens.dtype), bias, slots.counts)
    else:  # some experts absent (None): one linear per present expert
        biases = bias.unbind(0) if bias is not None else [None] * len(weights)
        outs = []
        for chunk, weight, expert_bias in zip(sorted_tokens.split(slots.counts), weights, biases):
            if weight is None:
                if chunk.shape[0]:
                    raise UsageError("an expert that receives tokens has no weight")
                continue
            outs.append(F.linear(chunk, weight, expert_bias))
        y = torch.cat(outs)
    y = y.index_select(0, slots.inverse).reshape(num_tokens, k, y.shape[1])
    gates = routing.top_gates if gate_scale is None else gate_scale * routing.top_gates
    return (y * gates.unsqueeze(2).to(y.dtype)).sum(1)


def init_moe_geometry(
    module: MoECompute, in_features, out_features, num_experts, top_k, noisy_gating, aux_loss_coef
) -> None:
    """Check and set what every MoE form (training, PAD, deployed) knows about its shape, its router,
    and the slot for the load-balancing loss of the last forward."""
    check_positive_int("in_features", in_features)
    check_positive_int("out_features", out_features)
    if not aux_loss_coef >= 0:
        raise UsageError(f"aux_loss_coef={aux_loss_coef!r} must be >= 0")
    module.in_features = in_features
    module.out_features = out_features
    module.num_experts = num_experts
    module.top_k = top_k
    module.aux_loss_coef = aux_loss_coef
    module.router = NoisyTopKRouter(in_features, num_experts, top_k, noisy_gating)
    module.last_aux_loss = None


class MoECompute(ModuleMixin):
    """What every MoE form (MoE, PAD, deployed PAD) shares: the forward over any leading dimensions
    (route, record the load-balancing loss, ``mix``), its repr and its cost. A form provides
    ``mix(tokens, routing)``."""

    # Set by ``init_moe_geometry``; ``bias`` (E, out) or None by the layer.
    in_features: int
    out_features: int
    num_experts: int
    top_k: int
    aux_loss_coef: float
    router: NoisyTopKRouter
    last_aux_loss: torch.Tensor | None
    bias: torch.Tensor | None

    if TYPE_CHECKING:  # what each layer provides

        def mix(self, tokens: torch.Tensor, routing: Routing) -> torch.Tensor: ...

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise UsageError(f"expected input (..., {self.in_features}); got {tuple(x.shape)}")
        mode = capture_mode()
        if self.training and mode in ("torch.jit.trace", "torch.export"):
            # The graph returns only the output: the load-balancing loss the training step needs
            # (``padnet.aux_loss``) would be the traced call's, never the later calls'.
            raise ModeError(
                f"{type(self).__name__} in training mode cannot run under {mode}: the graph cannot hand back "
                f"its load-balancing loss (padnet.aux_loss). Capture the model in eval mode (model.eval()) for "
                f"inference; to train a captured model use torch.compile, which records the loss"
            )
        tokens = x.reshape(-1, self.in_features)
        routing = self.router(tokens)
        if mode is None or mode == "torch.compile":  # dynamo replays the attribute write after the graph
            self.last_aux_loss = self.aux_loss_coef * routing.balance_loss
        return self.mix(tokens, routing).reshape(*x.shape[:-1], self.out_features)

    def __getstate__(self):
        # The last forward's loss belongs to that training step: it carries the step's autograd graph (or,
        # after backward, is still a non-leaf), which neither deepcopy nor pickle can copy. A copy (an EMA
        # model, a best-model snapshot, a pickled or torch.save-d module) starts without one, like a fresh
        # layer; the original keeps its own for the step that made it.
        state = super().__getstate__()
        state["last_aux_loss"] = None
        return state

    def geometry_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, num_experts={self.num_experts}, "
            f"top_k={self.top_k}, bias={self.bias is not None}"
        )

    def macs(self, x: torch.Tensor, output: torch.Tensor) -> tuple[int, int, int]:
        """(static, dynamic, aggregation) MACs of one call. Static: the router, and for channel
        granularity the static rows once per token ((1 - kappa) N); dynamic: the top_k expert products
        per token (of the kappa N dynamic rows for channel granularity); aggregation: element-granular
        PAD forms assemble the E experts' full weights once per call (E N writes)."""
        tokens = x.numel() // x.shape[-1]
        dense = self.in_features * self.out_features
        structured = self.structured_static_numel if isinstance(self, DynamicEntries) else 0
        static = tokens * (self.in_features * self.num_experts + structured)
        element_pad = isinstance(self, DynamicEntries) and self.granularity == "element"
        assembly = self.num_experts * dense if element_pad else 0
        return static, tokens * self.top_k * (dense - structured), assembly

    @property
    def kind(self) -> str:
        """The layer's name in cost and summary tables."""
        return type(self).__name__


class MoELinear(MoECompute, nn.Module):
    """y = sum_{i in top-k} G_i(x) (W_i x + b_i), routed per token over any leading dimensions.

    After each forward, ``last_aux_loss`` holds ``aux_loss_coef * (CV^2(importance) + CV^2(load))``;
    ``padnet.aux_loss(model)`` sums it over layers so it can be added to the task loss. (A forward under
    ``torch.jit.trace`` or ``torch.export``, which serve eval mode only, records none; copies start with none.)

    Eager forwards dispatch sparsely (top_k expert matmuls per token); graph captures (``torch.jit.trace``,
    ``torch.export``, ``torch.compile``) and the meta device dispatch densely (``dense_mix``: the same
    result, E / top_k times the expert work), whose graph serves every batch size.
    """

    weight: torch.Tensor

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

    @classmethod
    def from_linear(cls, linear: LinearLike, **settings) -> "MoELinear":
        """This kind of MoE (a subclass builds its own) upcycled from ``linear``: every expert (and a PAD
        layer's W_s) starts as its weight, every expert bias as its bias, on its device and dtype, so the
        layer computes ``linear`` at init (the gates sum to 1). What ``padnet.convert`` puts in place of an
        FFN projection.

        Args:
            linear: the projection to replace.
            **settings: the layer's own arguments: ``num_experts``, ``top_k``, ``noisy_gating``,
                ``aux_loss_coef``, and ``lambda_mode`` for a PAD layer.
        """
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, **settings)
        layer.to(device=linear.weight.device, dtype=linear.weight.dtype)
        upcycle_from(layer, linear.weight, linear.bias)
        return layer

    def reset_parameters(self) -> None:
        # nn.Linear's init, per expert.
        bound = 1 / math.sqrt(self.in_features)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def mix(self, tokens: torch.Tensor, routing: Routing) -> torch.Tensor:
        return mix_experts(tokens, routing, self.weight, self.bias)

    def extra_repr(self) -> str:
        return self.geometry_repr()


def aux_loss(model: nn.Module) -> torch.Tensor:
    """Sum of the load-balancing losses of every MoE layer's last forward pass (0 if none ran).

    Add it to the task loss while training; the coefficient is each layer's ``aux_loss_coef``.
    """
    losses = [m.last_aux_loss for m in model.modules() if isinstance(m, MoECompute) and m.last_aux_loss is not None]
    if not losses:
        param = next(model.parameters(), None)
        return torch.zeros((), device=param.device if param is not None else None)
    return torch.stack([loss.to(losses[0].device) for loss in losses]).sum()
