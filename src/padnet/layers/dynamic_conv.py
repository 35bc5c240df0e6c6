"""Dynamic Convolution (Chen et al. 2020) and CondConv (Yang et al. 2019): the fully dynamic host."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UsageError
from ._mixin import ModuleMixin
from ._validate import IntPair, check_positive_int, pair
from .attention import KernelAttention
from .conv_strategy import (
    MIXTURE_STRATEGIES,
    PER_SAMPLE_STRATEGIES,
    UNFOLD_MAX_POSITIONS,
    WHOLE,
    applicable_strategies,
    heuristic_strategy,
    is_plain_1x1,
    output_positions,
    resolve_strategy,
)
from .pad_base import DynamicEntries, upcycle_from

KERNEL_STRATEGIES = ("auto",) + PER_SAMPLE_STRATEGIES


def choose_kernel_strategy(
    x: torch.Tensor, kernel_size, stride, padding, dilation, groups: int, needs_grad: bool = False
) -> str:
    """The per-sample form the deterministic rule uses to apply B per-sample kernels to x (the rule of
    ``padnet.layers.conv_strategy.heuristic_strategy`` restricted to per-sample kernels):

    - a plain 1x1 conv: ``bmm``, a batched matrix product (B, C_out, C_in) @ (B, C_in, HW), 1.6x (B=1)
      to 3.5x (B=64) faster than the grouped conv forward;
    - batch 1 (inference): the one kernel in a plain conv (``grouped`` with groups = g);
    - ungrouped with at most 64 output positions: ``unfold`` + bmm. Few positions and many channels make
      the grouped conv (groups = B) slow on CPU; im2col there is tiny and bmm runs at full GEMM speed
      (training, 3x3 128->128 at 8x8, batch 32: 45 ms vs 59 ms);
    - otherwise ``grouped``: one conv call over the batch folded into channels (64->64 at 16x16: 31 ms
      vs unfold's 41 ms). One conv per sample (``loop``) is never picked automatically: 2.5x-5x slower
      in a controlled A/B.
    """
    del needs_grad  # the measured cross-overs are the same forward-only and fwd+bwd
    if is_plain_1x1(kernel_size, padding, dilation, groups):
        return "bmm"
    if x.shape[0] == 1:
        return "grouped"
    if groups == 1 and output_positions(x.shape, kernel_size, stride, padding, dilation) <= UNFOLD_MAX_POSITIONS:
        return "unfold"
    return "grouped"


def apply_per_sample_kernels(
    x: torch.Tensor,
    kernels: torch.Tensor,
    bias: torch.Tensor | None,
    out_channels: int,
    kernel_size: tuple[int, int],
    stride,
    padding,
    dilation,
    groups: int,
    strategy: str = "auto",
) -> torch.Tensor:
    """Convolve sample b of ``x`` with ``kernels[b]`` (flattened (C_out, C_in/g, kh, kw)), plus ``bias[b]``.

    ``strategy`` picks how (all give the same result): "grouped" (one conv with groups = B * g),
    "loop" (one conv per sample), "unfold" (im2col + bmm; groups = 1), "bmm" (1x1 unpadded
    ungrouped convs as a batched matmul) or "auto" (``choose_kernel_strategy``).
    """
    kernel_size, stride, padding, dilation = (tuple(v) for v in (kernel_size, stride, padding, dilation))
    if strategy == "auto":
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or kernels.requires_grad)
        strategy = choose_kernel_strategy(x, kernel_size, stride, padding, dilation, groups, needs_grad)
    if strategy not in PER_SAMPLE_STRATEGIES:
        raise UsageError(f"strategy={strategy!r} is not supported; allowed: {', '.join(map(repr, KERNEL_STRATEGIES))}")
    if strategy in ("unfold", "bmm") and groups != 1:
        raise UsageError(f"strategy={strategy!r} needs groups=1; got groups={groups} (use 'grouped' or 'loop')")
    if strategy == "bmm" and (kernel_size != (1, 1) or padding != (0, 0) or dilation != (1, 1)):
        raise UsageError(
            f"strategy='bmm' needs a 1x1 unpadded undilated conv; got kernel_size={kernel_size}, "
            f"padding={padding}, dilation={dilation}"
        )
    if not torch.jit.is_tracing() and x.shape[0] == 0:  # a trace records no branch
        return empty_batch_output(x, (kernels, bias), out_channels, kernel_size, stride, padding, dilation)
    if strategy == "grouped":
        return _grouped(x, kernels, bias, out_channels, kernel_size, stride, padding, dilation, groups)
    if strategy == "loop":
        return _loop(x, kernels, bias, out_channels, kernel_size, stride, padding, dilation, groups)
    if strategy == "bmm":
        return _bmm_1x1(x, kernels, bias, out_channels, stride)
    return _unfold(x, kernels, bias, out_channels, kernel_size, stride, padding, dilation)


def empty_batch_output(x: torch.Tensor, operands, out_channels: int, kernel_size, stride, padding,
                       dilation) -> torch.Tensor:
    """The (0, C_out, H', W') output of a batch of 0 samples, what every strategy computes for it, which
    none can reach by its own formulation (``grouped`` would need groups = 0 x g, ``loop`` a concatenation
    of nothing, the others reshape 0 elements with a -1 that no size determines). It depends on ``x`` and
    every operand (kernels, mixture weights, bias; None skipped) through a sum broadcast into the empty
    output, so backward works and gives each its gradient: zeros, as a conv of an empty batch does."""
    tie = x.sum()
    for operand in operands:
        if operand is not None:
            tie = tie + operand.sum().to(x.dtype)
    positions = [
        (x.shape[2 + i] + 2 * padding[i] - dilation[i] * (kernel_size[i] - 1) - 1) // stride[i] + 1 for i in range(2)
    ]
    return x.new_zeros(0, out_channels, *positions) + tie


def _grouped(x, kernels, bias, out_channels, kernel_size, stride, padding, dilation, groups):
    batch, in_channels, height, width = x.shape
    weight = kernels.reshape(batch * out_channels, in_channels // groups, *kernel_size)
    flat_bias = bias.reshape(-1) if bias is not None else None
    out = F.conv2d(
        x.reshape(1, batch * in_channels, height, width), weight, flat_bias, stride, padding, dilation, batch * groups
    )
    return out.reshape(batch, out_channels, *out.shape[2:])


def _loop(x, kernels, bias, out_channels, kernel_size, stride, padding, dilation, groups):
    in_per_group = x.shape[1] // groups
    outs = [
        F.conv2d(
            x[b : b + 1], kernels[b].reshape(out_channels, in_per_group, *kernel_size),
            None if bias is None else bias[b], stride, padding, dilation, groups,
        )
        for b in range(x.shape[0])
    ]
    return torch.cat(outs, 0)


def _add_bias(out: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return out if bias is None else out + bias.reshape(*bias.shape, 1, 1)


def _unfold(x, kernels, bias, out_channels, kernel_size, stride, padding, dilation):
    batch, _, height, width = x.shape
    out_h = (height + 2 * padding[0] - dilation[0] * (kernel_size[0] - 1) - 1) // stride[0] + 1
    out_w = (width + 2 * padding[1] - dilation[1] * (kernel_size[1] - 1) - 1) // stride[1] + 1
    cols = F.unfold(x, kernel_size, dilation, padding, stride)  # (B, C_in kh kw, L)
    out = torch.bmm(kernels.reshape(batch, out_channels, -1), cols)
    return _add_bias(out.reshape(batch, out_channels, out_h, out_w), bias)


def _bmm_1x1(x, kernels, bias, out_channels, stride):
    if stride != (1, 1):
        x = x[:, :, :: stride[0], :: stride[1]]
    batch, in_channels, height, width = x.shape
    out = torch.bmm(kernels.reshape(batch, out_channels, in_channels), x.reshape(batch, in_channels, height * width))
    return _add_bias(out.reshape(batch, out_channels, height, width), bias)


def apply_kernel_mixture(
    x: torch.Tensor,
    stack: torch.Tensor,
    weights: torch.Tensor,
    bias: torch.Tensor | None,
    out_channels: int,
    kernel_size: tuple[int, int],
    stride,
    padding,
    dilation,
    groups: int,
    strategy: str = "mixture",
) -> torch.Tensor:
    """y[b] = sum_j weights[b, j] conv(x[b], stack[j]) + bias[b]: the J kernels ``stack`` (J, N), each a
    flattened (C_out, C_in/g, kh, kw), mixed per sample by ``weights`` (B, J). By linearity this equals
    convolving with the per-sample kernel sum_j weights[b, j] stack[j], without building it.

    ``strategy``: "mixture" (one conv over the J C_out stacked output channels, then the weighted sum)
    or "mixture_unfold" (im2col and one (B L, C_in kh kw) @ (C_in kh kw, J C_out) product; groups = 1)."""
    kernel_size, stride, padding, dilation = (tuple(v) for v in (kernel_size, stride, padding, dilation))
    if strategy not in MIXTURE_STRATEGIES:
        raise UsageError(f"strategy={strategy!r} is not a mixture strategy; allowed: "
                         f"{', '.join(map(repr, MIXTURE_STRATEGIES))}")
    if strategy == "mixture_unfold" and groups != 1:
        raise UsageError(f"strategy='mixture_unfold' needs groups=1; got groups={groups} (use 'mixture')")
    if not torch.jit.is_tracing() and x.shape[0] == 0:  # a trace records no branch
        return empty_batch_output(x, (stack, weights, bias), out_channels, kernel_size, stride, padding, dilation)
    batch, num_mix = x.shape[0], stack.shape[0]
    weights = weights.to(x.dtype)
    if strategy == "mixture":
        per_group = out_channels // groups
        # Kernel j's output channels of group g must sit inside group g's block: (J, g, C/g) -> (g, J, C/g).
        weight = stack.reshape(num_mix, groups, per_group, -1).transpose(0, 1)
        weight = weight.reshape(groups * num_mix * per_group, x.shape[1] // groups, *kernel_size)
        out = F.conv2d(x, weight, None, stride, padding, dilation, groups)
        height, width = out.shape[2:]
        if groups == 1 and out.is_contiguous():
            # (B, 1, J) @ (B, J, C H W): the weighted sum as one batched product.
            y = torch.bmm(weights.unsqueeze(1), out.reshape(batch, num_mix, -1))
        else:
            y = torch.einsum("bgjr,bj->bgr", out.reshape(batch, groups, num_mix, -1), weights)
        return _add_bias(y.reshape(batch, out_channels, height, width), bias)
    # mixture_unfold
    cols = F.unfold(x, kernel_size, dilation, padding, stride)  # (B, C_in kh kw, L)
    positions = cols.shape[2]
    out = cols.transpose(1, 2).reshape(batch * positions, -1) @ stack.reshape(num_mix * out_channels, -1).t()
    y = torch.einsum("bljc,bj->blc", out.reshape(batch, positions, num_mix, out_channels), weights)
    out_h = (x.shape[2] + 2 * padding[0] - dilation[0] * (kernel_size[0] - 1) - 1) // stride[0] + 1
    y = y.reshape(batch, out_h, positions // out_h, out_channels).permute(0, 3, 1, 2)
    memory_format = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and not \
        x.is_contiguous() else torch.contiguous_format
    return _add_bias(y.contiguous(memory_format=memory_format), bias)


def append_kernel_weight(weights: torch.Tensor, value) -> torch.Tensor:
    """(B, J) mixture weights -> (B, J + 1): one more kernel (a static part stacked after the K dynamic
    kernels) weighted ``value`` (a number or a 0-d tensor, which keeps its gradient) in every sample."""
    column = torch.as_tensor(value, dtype=weights.dtype, device=weights.device).expand(weights.shape[0], 1)
    return torch.cat([weights, column], 1)


class DynamicConvCompute(ModuleMixin):
    """The forward every dynamic conv form shares (DY-Conv/CondConv, PAD, deployed PAD): attention,
    dynamic bias, then the strategy that ``padnet.layers.conv_strategy`` picks. A layer provides
    ``per_sample_kernels(alpha)`` -> (B, N) and ``mixture_kernels(alpha)`` -> ((J, N) kernels, (B, J)
    weights) for the same W(x); ``strategy`` (None: the global mode) pins or tunes this layer alone."""

    strategy: str | None = None
    # Set by ``init_dynamic_conv_geometry``; ``bias`` (K, C_out) or None by the layer.
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    num_kernels: int
    routing: str
    temperature: float
    attention: nn.Module  # a KernelAttention, or any module computing alpha(x, temperature)
    weight_shape: tuple[int, ...]
    bias: torch.Tensor | None

    if TYPE_CHECKING:  # what each layer provides

        def per_sample_kernels(self, alpha: torch.Tensor) -> torch.Tensor: ...

        def mixture_kernels(self, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise UsageError(f"expected input (B, {self.in_channels}, H, W); got {tuple(x.shape)}")
        alpha = self.attention(x, self.temperature)
        bias = alpha @ self.bias if self.bias is not None else None
        return self.compute(x, alpha, bias, self.pick_strategy(x, alpha, bias))

    def compute(self, x: torch.Tensor, alpha: torch.Tensor, bias: torch.Tensor | None, strategy: str) -> torch.Tensor:
        """The layer's output for attention ``alpha`` and dynamic bias ``bias``, computed with ``strategy``."""
        geometry = (self.out_channels, self.kernel_size, self.stride, self.padding, self.dilation, self.groups)
        if strategy in MIXTURE_STRATEGIES:
            stack, weights = self.mixture_kernels(alpha)
            return apply_kernel_mixture(x, stack, weights, bias, *geometry, strategy=strategy)
        return apply_per_sample_kernels(x, self.per_sample_kernels(alpha), bias, *geometry, strategy=strategy)

    def pick_strategy(self, x: torch.Tensor, alpha: torch.Tensor, bias: torch.Tensor | None) -> str:
        def needs_grad() -> bool:
            return torch.is_grad_enabled() and (x.requires_grad or alpha.requires_grad or any(
                p.requires_grad for p in self.parameters(recurse=False)))

        def key() -> str:
            layout = "cl" if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last) else "c"
            return (f"{type(self).__name__}|x={tuple(x.shape)}|{str(x.dtype).removeprefix('torch.')}|"
                    f"{x.device.type}|{layout}|out={self.out_channels}|k={self.kernel_size}|s={self.stride}|"
                    f"p={self.padding}|d={self.dilation}|g={self.groups}|K={self.num_kernels}|{self.routing}|"
                    f"grad={int(needs_grad())}{self.structure_key()}")

        def run(strategy: str):
            grad = needs_grad()
            with torch.set_grad_enabled(grad):
                inputs = [t.detach().requires_grad_(grad) for t in (x, alpha)]
                if bias is not None:
                    inputs.append(bias.detach().requires_grad_(grad))
                out = self.compute(inputs[0], inputs[1], inputs[2] if bias is not None else None, strategy)
            params: list[torch.Tensor] = [p for p in self.parameters(recurse=False) if p.requires_grad]
            return out, (inputs + params) if grad else []

        return resolve_strategy(self.strategy, self.strategy_candidates(x), lambda: self.rule_strategy(x), key, run)

    def computes_by_rows(self) -> bool:
        """Whether this layer's calls take the channel-granular row path (``padnet.layers.rows``): the one
        path that computes ``WHOLE`` as well. False here; the PAD forms say when they do."""
        return False

    def strategy_candidates(self, x: torch.Tensor) -> tuple[str, ...]:
        """The strategies that can compute this layer's call on ``x``: exactly the ones the path ``compute``
        takes can serve. The autotuner times these (``loop`` aside), the rule picks one of them, and a pin
        outside them is refused."""
        del x  # the same for every input of the layer's geometry today
        candidates = applicable_strategies(self.kernel_size, self.padding, self.dilation, self.groups)
        return candidates + (WHOLE,) if self.computes_by_rows() else candidates

    def rule_strategy(self, x: torch.Tensor) -> str:
        """The deterministic rule's pick for a call on ``x`` (always one of ``strategy_candidates(x)``):
        ``heuristic_strategy``; on the row path, whole kernels at batch 1 (one conv, one kernel) and on maps
        where the rule picks per-sample ``grouped`` convs. There the row split's grouped conv of the kappa
        dynamic rows (19 of 64, say) is slower than one grouped conv of whole kernels: channel PAD kappa 0.3,
        one thread, fwd + bwd / no-grad forward (ms): 3x3 64->64 at 16x16 batch 32, whole 50 / 17 against
        grouped rows 69 / 20; at 56x56 batch 8, 88 / 26 against 154 / 42; 3x3 128->128 at 28x28 batch 8,
        84 / 29 against 117 / 33. At 8x8 (unfold and mixtures) the rows win: 128->128, 48 / 19 against
        whole 64 / 31."""
        rule = heuristic_strategy(x.shape, self.kernel_size, self.stride, self.padding, self.dilation, self.groups)
        if self.computes_by_rows() and (x.shape[0] == 1 or rule == "grouped"):
            return WHOLE
        return rule

    def structure_key(self) -> str:
        """What the strategy cache key adds for a layer on the row path: its dynamic row count (the
        dynamic path's size); a pick made there (``WHOLE``, say) is never offered to another path."""
        if isinstance(self, DynamicEntries) and self.computes_by_rows():
            return f"|rows={self.num_dynamic // self.row_numel}"
        return ""

    def macs(self, x: torch.Tensor, output: torch.Tensor) -> tuple[int, int, int]:
        """(static, dynamic, aggregation) MACs of one call in the per-sample form. Static: work with
        weights shared by the batch, the attention MLP and, for channel granularity, the conv of the
        static channels; dynamic: the conv with per-sample kernels (all channels, or the dynamic ones);
        aggregation: K N for DY-Conv and K nnz for the partially dynamic forms (only their dynamic
        entries are aggregated), plus the dynamic bias."""
        batch = x.shape[0]
        kernel = math.prod(self.weight_shape)
        positions = batch * output.shape[2] * output.shape[3]
        structured = self.structured_static_numel if isinstance(self, DynamicEntries) else 0
        # the attention's linear layers (KernelAttention: C_in -> hidden -> K), whatever module holds them
        attention = batch * sum(m.in_features * m.out_features for m in self.attention.modules()
                                if isinstance(m, nn.Linear))
        aggregated = self.num_dynamic if isinstance(self, DynamicEntries) else kernel
        aggregation = batch * self.num_kernels * aggregated
        if self.bias is not None:
            aggregation += batch * self.num_kernels * self.out_channels
        return attention + positions * structured, positions * (kernel - structured), aggregation

    @property
    def kind(self) -> str:
        """The layer's name in cost and summary tables."""
        return type(self).__name__

    def geometry_repr(self) -> str:
        s = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"num_kernels={self.num_kernels}, routing={self.routing!r}"
        )
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.strategy is not None:
            s += f", strategy={self.strategy!r}"
        return s


def init_dynamic_conv_geometry(
    module: DynamicConvCompute, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, num_kernels,
    reduction, routing,
) -> None:
    """Check and set what every dynamic conv form (training, PAD, deployed) knows about its shape,
    and its kernel attention; ``module.weight_shape`` is one kernel's (C_out, C_in/g, kh, kw)."""
    check_positive_int("in_channels", in_channels)
    check_positive_int("out_channels", out_channels)
    check_positive_int("groups", groups)
    check_positive_int("num_kernels", num_kernels)
    if in_channels % groups or out_channels % groups:
        raise UsageError(f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}")
    module.in_channels = in_channels
    module.out_channels = out_channels
    module.kernel_size = pair("kernel_size", kernel_size, 1)
    module.stride = pair("stride", stride, 1)
    module.padding = pair("padding", padding, 0)
    module.dilation = pair("dilation", dilation, 1)
    module.groups = groups
    module.num_kernels = num_kernels
    module.routing = routing
    module.temperature = 1.0
    module.attention = KernelAttention(in_channels, num_kernels, reduction, routing)
    # The K kernels are stored flattened, (K, N), as timm's CondConv2d does, so that channels_last
    # conversion of a whole model (which touches every 4-D and 5-D tensor) works.
    module.weight_shape = (out_channels, in_channels // groups, *module.kernel_size)


class DynamicConv2d(DynamicConvCompute, nn.Module):
    """y = conv(x, sum_k alpha_k(x) W_k) + sum_k alpha_k(x) b_k, per sample.

    ``routing="softmax"`` is DY-Conv (temperature-scaled softmax attention); ``routing="sigmoid"`` is
    CondConv (independent sigmoid gates, no temperature). Parameters: ``weight`` (K, N) holding K kernels of
    ``weight_shape`` = (C_out, C_in/g, kh, kw) flattened, ``bias`` (K, C_out) when ``bias=True``, and the
    attention ``attention.fc1``/``attention.fc2``.
    """

    weight: torch.Tensor

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        stride: IntPair = 1,
        padding: IntPair = 0,
        dilation: IntPair = 1,
        groups: int = 1,
        bias: bool = False,
        num_kernels: int = 4,
        reduction: int = 16,
        routing: str = "softmax",
    ):
        super().__init__()
        init_dynamic_conv_geometry(
            self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, num_kernels,
            reduction, routing,
        )
        self.weight = nn.Parameter(torch.empty(num_kernels, math.prod(self.weight_shape)))
        self.bias = nn.Parameter(torch.zeros(num_kernels, out_channels)) if bias else None
        self.reset_parameters()

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, *, upcycle: bool = False, **settings) -> "DynamicConv2d":
        """This kind of layer (a subclass builds its own) with ``conv``'s geometry, bias, device and dtype:
        what ``padnet.convert`` puts in place of a convolution.

        Args:
            conv: the convolution to replace; zero padding given as ints.
            upcycle: every kernel (and a PAD layer's W_s) starts as ``conv``'s weight and every
                kernel bias as its bias, so with softmax routing the layer computes what ``conv`` did;
                False: fresh kernels (docs/method.md#dynamic-layers).
            **settings: the layer's own arguments: ``num_kernels``, ``reduction``, ``routing``, and
                ``lambda_mode`` for a PAD layer.
        """
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise UsageError(f"convert supports zero padding given as ints; got padding={conv.padding!r}, "
                             f"padding_mode={conv.padding_mode!r}")
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    conv.groups, bias=conv.bias is not None, **settings)
        layer.to(device=conv.weight.device, dtype=conv.weight.dtype)
        if upcycle:
            upcycle_from(layer, conv.weight, conv.bias)
        return layer

    @property
    def init_std(self) -> float:
        """Kaiming fan-out, as the reference code: N(0, sqrt(2 / (kh * kw * C_out)))."""
        return math.sqrt(2.0 / (self.kernel_size[0] * self.kernel_size[1] * self.out_channels))

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, 0.0, self.init_std)

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """alpha(x), shape (B, K)."""
        return self.attention(x, self.temperature)

    def per_sample_kernels(self, alpha: torch.Tensor) -> torch.Tensor:
        """W(x) flattened: (B, N)."""
        return alpha @ self.weight

    def mixture_kernels(self, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The K kernels (K, N) and their per-sample weights alpha (B, K)."""
        return self.weight, alpha

    @property
    def kind(self) -> str:
        return "CondConv" if self.routing == "sigmoid" else "DY-Conv"

    def extra_repr(self) -> str:
        return self.geometry_repr() + (", bias=False" if self.bias is None else "")
