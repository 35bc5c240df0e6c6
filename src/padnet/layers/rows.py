"""Channel-granular PAD compute (docs/method.md#granularity): static rows once for the whole batch, the dynamic path
on the dynamic rows only, the two results written into one output in the original row order.

With an element mask every sample needs its own full kernel; with a channel mask the static output
channels share one kernel across the batch, so they are one ordinary conv (or matmul), and only kappa of
the rows go through the per-sample (or mixture) path. At 3x3 256 -> 256, 14x14, batch 64, one thread,
kappa 0.3, issue 16 measured DY-Conv 3.4x the static conv, element PAD 1.7-3.0x and this split 1.6x;
the deployed layer here measured 1.17x with the ``grouped`` split (under load, docs/results/efficiency.md).
Each part is written once into the output (``index_copy_``): no concatenation and no permutation copy of
the whole output.

Used by the training, compacted and deployed forms alike; they differ only in where the static rows and
the dynamic rows' K kernels come from.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .assemble import mixed_kernels, prefilled_workspace, workspace_allowed, workspace_like
from .conv_strategy import MIXTURE_STRATEGIES, WHOLE


def place_rows(parts: list[tuple[torch.Tensor, torch.Tensor]], rows: int) -> torch.Tensor:
    """One output with ``rows`` channels (dim 1) holding each ``(row_index, values)`` part at its rows,
    in the memory format of the first part."""
    first = parts[0][1]
    shape = (first.shape[0], rows, *first.shape[2:])
    channels_last = first.dim() == 4 and not first.is_contiguous() and first.is_contiguous(
        memory_format=torch.channels_last)
    # Under autocast the static rows (a plain matmul) come out in bf16 and the mixed dynamic rows in
    # float32: the output takes the wider of the two.
    dtype = functools.reduce(torch.promote_types, (values.dtype for _, values in parts))
    out = torch.empty(shape, dtype=dtype, device=first.device,
                      memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    for index, values in parts:
        out.index_copy_(1, index, values.to(dtype))
    return out


def keep_in_graph(static: torch.Tensor, dynamic: torch.Tensor, weights: torch.Tensor, static_rows: torch.Tensor,
                  dynamic_rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(static, weights) with an exact zero added that ties the empty part to the graph: a layer whose
    rows are all static (or all dynamic, as a global partition may leave it) still gives every parameter
    a (zero) gradient, so DistributedDataParallel without ``find_unused_parameters`` sees them all. The
    sums run over empty tensors or the tiny (B, K) weights, never over the data."""
    if not dynamic_rows.numel():
        static = static + (dynamic.sum() + 0 * weights.sum()).to(static.dtype)
    if not static_rows.numel():
        weights = weights + static.sum().to(weights.dtype)
    return static, weights


def _add_bias(out: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return out if bias is None else out + bias.reshape(*bias.shape, 1, 1).to(out.dtype)


def channel_conv(layer, x: torch.Tensor, rows: tuple[torch.Tensor, torch.Tensor], static: torch.Tensor,
                 dynamic: torch.Tensor, weights: torch.Tensor, bias: torch.Tensor | None,
                 strategy: str, stored_static: bool = False) -> torch.Tensor:
    """y = conv(x, W(x)) for a channel-granular conv ``layer`` (its geometry): ``rows`` = (dynamic rows,
    static rows) (``row_split``); ``static`` (n_s, R) the static rows, scale folded in; ``dynamic``
    (K, n_d R) the dynamic rows of the K kernels, mixed per sample by ``weights`` (B, K); ``bias``
    (B, C_out) or None. ``stored_static``: ``static`` is a tensor the layer stores (a deployed layer's),
    not one computed for this call, so a whole kernel may keep it written between calls (see below)."""
    from .dynamic_conv import apply_kernel_mixture, apply_per_sample_kernels

    dynamic_rows, static_rows = rows
    stored = static if stored_static else None  # the layer's own tensor, before this call changes it
    static, weights = keep_in_graph(static, dynamic, weights, static_rows, dynamic_rows)
    if layer.groups != 1 or strategy == WHOLE:  # whole kernels (see below)
        return _whole_kernels(layer, x, static, dynamic, weights, bias, strategy, dynamic_rows, static_rows, stored)
    geometry = (layer.kernel_size, layer.stride, layer.padding, layer.dilation, 1)
    parts = []
    if static_rows.numel():
        kernel = static.reshape(static_rows.numel(), layer.in_channels, *layer.kernel_size).to(x.dtype)
        y = F.conv2d(x, kernel, None, *geometry[1:])
        parts.append((static_rows, _add_bias(y, None if bias is None else bias.index_select(1, static_rows))))
    if dynamic_rows.numel():
        row_bias = None if bias is None else bias.index_select(1, dynamic_rows)
        if strategy in MIXTURE_STRATEGIES:
            y = apply_kernel_mixture(x, dynamic, weights, row_bias, dynamic_rows.numel(), *geometry, strategy=strategy)
        else:
            y = apply_per_sample_kernels(x, mixed_kernels(weights, dynamic), row_bias, dynamic_rows.numel(),
                                         *geometry, strategy=strategy)
        parts.append((dynamic_rows, y))
    return place_rows(parts, layer.out_channels)


def _whole_kernels(layer, x, static, dynamic, weights, bias, strategy, dynamic_rows, static_rows, stored=None):
    """Whole kernels built from the rows: per sample (strategy ``whole`` or a per-sample one; ``whole``
    lets the rule choose how to apply them), or as K + 1 mixture kernels (the static rows as the last
    one, weight 1). Grouped convs (depthwise ones in MobileNetV2) always take this path: a subset of
    output channels breaks the groups; they are the cheapest layers, the saving lies elsewhere.

    At batch 1 with stored static rows (``stored``: the layer's tensor) and the workspace allowed
    (inference on CPU), the kernel is this thread's buffer for the layer with the static rows written
    once: a call writes only the kappa dynamic rows. Writing the 1 - kappa static rows was most of
    building the kernel (resnet50's 3x3 256 -> 256 at 14x14: 0.5 ms to build against 3.4 ms for the
    conv); the buffers hold one kernel per such layer, about the static model's weights (resnet50:
    ~100 MB per thread, freed by ``release_workspace``). Larger batches would keep B kernels per
    layer, so they write the static rows each call, into the shared workspace."""
    from .dynamic_conv import append_kernel_weight, apply_kernel_mixture, apply_per_sample_kernels

    geometry = (layer.out_channels, layer.kernel_size, layer.stride, layer.padding, layer.dilation, layer.groups)
    rows, width = layer.out_channels, layer.row_numel
    static = static.to(x.dtype).reshape(static_rows.numel(), width)
    if strategy in MIXTURE_STRATEGIES:
        count, zeros = dynamic.shape[0], x.new_zeros(())
        body = _placed(count, rows, width, x, [(dynamic_rows, _rows_of(dynamic, dynamic_rows.numel(), width)),
                                               (static_rows, zeros.expand(count, static_rows.numel(), width))])
        last = _placed(1, rows, width, x, [(static_rows, static.unsqueeze(0)),
                                           (dynamic_rows, zeros.expand(1, dynamic_rows.numel(), width))])
        stack = torch.cat([body, last])
        weights = append_kernel_weight(weights, 1.0)
        return apply_kernel_mixture(x, stack.reshape(stack.shape[0], -1), weights, bias, *geometry, strategy=strategy)
    batch = weights.shape[0]
    mixed = _rows_of(mixed_kernels(weights, dynamic), dynamic_rows.numel(), width)  # workspace slot 0
    if stored is not None and batch == 1 and workspace_allowed(x):
        kernels = prefilled_workspace(layer, (1, rows, width), x, stored,
                                      lambda buffer: buffer.index_copy_(1, static_rows, static.unsqueeze(0)))
    else:
        kernels = workspace_like((batch, rows, width), x, slot=1)
        kernels.index_copy_(1, static_rows, static.unsqueeze(0).expand(batch, -1, -1))
    kernels.index_copy_(1, dynamic_rows, mixed.to(kernels.dtype))  # autocast: mixed in float32, x in bf16
    return apply_per_sample_kernels(x, kernels.reshape(batch, rows * width), bias, *geometry,
                                    strategy="auto" if strategy == WHOLE else strategy)


def _placed(count: int, rows: int, width: int, like: torch.Tensor, parts) -> torch.Tensor:
    """A (count, rows, width) tensor with each ``(row_index, values)`` part written at its rows (one write
    per part; rows no part covers are left uninitialised)."""
    out = torch.empty(count, rows, width, dtype=like.dtype, device=like.device)
    for index, values in parts:
        out.index_copy_(1, index, values.to(like.dtype))
    return out


def _rows_of(flat: torch.Tensor, rows: int, width: int) -> torch.Tensor:
    return flat.reshape(flat.shape[0], rows, width)


def channel_mix(tokens: torch.Tensor, routing, rows: tuple[torch.Tensor, torch.Tensor], static: torch.Tensor,
                dynamic: torch.Tensor, bias: torch.Tensor | None, out_features: int,
                gate_scale: torch.Tensor | None = None) -> torch.Tensor:
    """A channel-granular PAD-MoE layer's output for (T, in) ``tokens``: the static rows ``static``
    (n_s, in, scale folded in) once per token, and each routed expert's dynamic rows ``dynamic``
    (E, n_d, in) only, so a token costs (1 - kappa) + top_k kappa dense matmuls (the MoE: top_k).
    ``gate_scale`` multiplies the expert products (lambda_d), not the biases; ``bias`` (E, out) stays
    fully dynamic, so the static rows get the gated sum of their expert biases (a (T, E) @ (E, n_s)
    product)."""
    from .moe import mix_experts

    dynamic_rows, static_rows = rows
    if gate_scale is not None:  # training: every parameter in the graph (``keep_in_graph``)
        static, gate_scale = keep_in_graph(static, dynamic, gate_scale, static_rows, dynamic_rows)
        if not dynamic_rows.numel():
            static = static + 0 * routing.top_gates.sum().to(static.dtype)
    parts = []
    if static_rows.numel():
        weight = static.to(tokens.dtype).t()
        if bias is None:
            y = tokens @ weight
        else:
            y = torch.addmm(routing.gates.to(tokens.dtype) @ bias.index_select(1, static_rows).to(tokens.dtype),
                            tokens, weight)
        parts.append((static_rows, y))
    if dynamic_rows.numel():
        row_bias = None if bias is None else bias.index_select(1, dynamic_rows)
        if row_bias is not None and gate_scale is not None:
            row_bias = row_bias / gate_scale
        parts.append((dynamic_rows, mix_experts(tokens, routing, dynamic, row_bias, gate_scale=gate_scale)))
    return place_rows(parts, out_features)
