"""Per-sample PAD kernels: a shared static kernel with each sample's dynamic entries written in.

``assemble_kernels(static, dynamic, index, scale)`` returns ``out[b] = scale * static`` with
``out[b, index] = dynamic[b]``: one scaled copy of the static kernel per sample and one scatter of the
nnz dynamic entries, the least memory traffic any PyTorch-level form of W(x) = S + scatter(alpha(x) @ D)
has. Its backward is
written by hand because autograd's would be wasteful: the static gradient is one sum over the batch
(zeroed at the dynamic positions, which the scatter overwrote) and the dynamic gradient one gather,
where autograd would first materialise a B x N masked copy of the incoming gradient.

``scatter_`` rather than ``index_copy_``: on CPU it moves the same entries 2-3x faster (measured on
590k-entry kernels; both are single-pass scatters).
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Callable

import torch

from ..errors import UsageError
from .fused import FusedAssembleKernels, fused_assembly_enabled


class _AssembleKernels(torch.autograd.Function):
    @staticmethod
    def forward(ctx, static, dynamic, index, keep, scale):
        batch = dynamic.shape[0]
        wide = static.unsqueeze(0).expand(batch, -1)
        # The copy per sample and the scaling are one pass.
        out = wide.clone() if scale is None else torch.mul(wide, scale)
        out.scatter_(1, index.unsqueeze(0).expand(batch, -1), dynamic)
        ctx.save_for_backward(static if scale is not None else None, index, keep, scale)
        return out

    @staticmethod
    def backward(ctx, grad):
        static, index, keep, scale = ctx.saved_tensors
        grad_static = grad_dynamic = grad_scale = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[4]:
            # Zero the entries the scatter overwrote. A multiply by the uint8 keep mask is one streaming
            # pass; index_fill_ / masked_fill_ measured 5-10x slower on CPU.
            if keep is None:
                summed = grad.sum(0).index_fill_(0, index, 0)
            elif grad.shape[0] == 1:
                summed = grad[0] * keep
            else:
                summed = grad.sum(0).mul_(keep)
            if ctx.needs_input_grad[4]:
                grad_scale = torch.dot(summed, static).reshape(scale.shape)
            if ctx.needs_input_grad[0]:
                grad_static = summed if scale is None else summed.mul_(scale)
        if ctx.needs_input_grad[1]:
            grad_dynamic = grad.gather(1, index.unsqueeze(0).expand(grad.shape[0], -1))
        return grad_static, grad_dynamic, None, None, grad_scale


def assemble_kernels(
    static: torch.Tensor,
    dynamic: torch.Tensor,
    index: torch.Tensor,
    scale: torch.Tensor | None = None,
    keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, N) kernels: ``scale * static`` (static (N,), scale a 0-d tensor or None for 1) everywhere
    except at the sorted flat positions ``index`` (nnz,), which take ``dynamic`` (B, nnz). ``static``'s
    values at ``index`` are ignored and get no gradient. ``keep`` (N,), optional, is 1 - M as uint8
    (1 at the static entries): with it the backward zeroes the overwritten entries with one multiply.

    With grad mode off (``torch.no_grad``, ``torch.inference_mode``), on CPU, the result is a view of a
    per-thread workspace that the next call overwrites: consume it (convolve) before assembling again."""
    if static.dim() != 1 or dynamic.dim() != 2 or index.dim() != 1 or dynamic.shape[1] != index.numel():
        raise UsageError(f"expected static (N,), dynamic (B, nnz), index (nnz,); got {tuple(static.shape)}, "
                         f"{tuple(dynamic.shape)}, {tuple(index.shape)}")
    if scale is not None and scale.dim() != 0:
        raise UsageError(f"scale must be a 0-d tensor or None; got shape {tuple(scale.shape)}")
    if keep is not None and keep.shape != static.shape:
        raise UsageError(f"keep must have static's shape {tuple(static.shape)}; got {tuple(keep.shape)}")
    dynamic = dynamic.to(static.dtype)
    if not workspace_allowed(static):
        # opt-in (padnet.layers.fused); a layer without dynamic entries has nothing to gather
        if keep is not None and fused_assembly_enabled() and index.numel() and not tracing():
            return FusedAssembleKernels.apply(static, dynamic, index, keep, scale)
        return _AssembleKernels.apply(static, dynamic, index, keep, scale)
    batch = dynamic.shape[0]
    out = _workspace(batch * static.numel(), static.dtype).view(batch, static.numel())
    wide = static.unsqueeze(0).expand(batch, -1)
    out.copy_(wide) if scale is None else torch.mul(wide, scale, out=out)
    return out.scatter_(1, index.unsqueeze(0).expand(batch, -1), dynamic)


def mixed_kernels(weights: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """(B, M) per-sample kernels ``weights @ kernels`` for (B, K) weights and (K, M) kernels; with grad
    mode off on CPU written into the per-thread workspace (see below), so consume it before the next call."""
    weights = weights.to(kernels.dtype)
    if not workspace_allowed(kernels):
        return weights @ kernels
    out = _workspace(weights.shape[0] * kernels.shape[1], kernels.dtype).view(weights.shape[0], kernels.shape[1])
    return torch.matmul(weights, kernels, out=out)


# Inference on CPU: a fresh (B, N) kernel tensor of more than a few MB is mmap-ed by the allocator and
# page-faulted on first write, which measured 5x slower than the copy and scatter into it (B = 64,
# 3x3 256->256: 124 ms vs 23 ms). With grad mode off nothing keeps the kernels after the convolution
# consumes them, so one buffer per thread, grown to the largest layer, serves every layer in turn.
_local = threading.local()


def workspace_allowed(like: torch.Tensor) -> bool:
    """Whether kernels in ``like``'s device may be a view of the reused workspace: only on CPU, outside
    traced or compiled graphs, and with grad mode off. Grad mode alone decides, not whether the kernels'
    own inputs require grad: kernels built from frozen tensors (a deployed layer's entries, a mixture's
    stack) are still saved for backward by the convolution that consumes them whenever its input requires
    grad (training, or an input gradient in eval mode), and the next layer's assembly into the same
    buffer would then invalidate that saved tensor."""
    return not torch.is_grad_enabled() and like.device.type == "cpu" and not tracing()


def _workspace(numel: int, dtype: torch.dtype, slot: int = 0) -> torch.Tensor:
    """``numel`` elements of this thread's buffer number ``slot`` (a caller that needs two at once, e.g.
    the mixed dynamic rows and the whole kernels they are written into, takes two slots)."""
    buffers = getattr(_local, "buffers", None)
    if buffers is None:
        buffers = _local.buffers = {}
    buffer = buffers.get(slot)
    if buffer is None or buffer.dtype != dtype or buffer.numel() < numel:
        buffer = buffers[slot] = torch.empty(numel, dtype=dtype)
    return buffer[:numel]


def workspace_like(shape: tuple[int, ...], like: torch.Tensor, slot: int) -> torch.Tensor:
    """An uninitialised tensor of ``shape`` in ``like``'s dtype and device: a view of this thread's
    workspace ``slot`` where ``workspace_allowed`` (consume it before the next call), a fresh tensor
    otherwise."""
    if not workspace_allowed(like):
        return torch.empty(shape, dtype=like.dtype, device=like.device)
    return _workspace(math.prod(shape), like.dtype, slot).view(shape)


def prefilled_workspace(owner: object, shape: tuple[int, ...], like: torch.Tensor, source: torch.Tensor,
                        fill: Callable[[torch.Tensor], object]) -> torch.Tensor:
    """This thread's buffer of ``shape`` (``like``'s dtype) kept for ``owner`` (a layer) between calls:
    ``fill`` writes it from ``source`` when it is first taken and again whenever ``source`` is another
    tensor object or was changed in place (its version); the caller writes the rest on every call. The
    source is held by a weak reference: a pointer or an ``id`` could be reused by a new tensor after the
    old one is freed (a reloaded layer), an object that is alive cannot. Only where ``workspace_allowed``."""
    buffers = getattr(_local, "prefilled", None)
    if buffers is None:
        buffers = _local.prefilled = weakref.WeakKeyDictionary()
    entry = buffers.get(owner)
    key = (tuple(shape), like.dtype, source._version)
    if entry is None or entry[0] != key or entry[1]() is not source:
        buffer = torch.empty(shape, dtype=like.dtype, device=like.device)
        fill(buffer)
        buffers[owner] = entry = (key, weakref.ref(source), buffer)
    return entry[2]


def release_workspace() -> None:
    """Free this thread's inference workspace (it keeps the largest B x N seen, e.g. about 600 MB after
    a batch-64 resnet50 forward, and the deployed channel layers' batch-1 kernels, about the static
    model's size); the next no-grad forward allocates it again."""
    _local.buffers = None
    _local.prefilled = None


def capture_mode() -> str | None:
    """The graph capture running now: ``"torch.jit.trace"``, ``"torch.export"`` (strict or not: dynamo
    folds ``is_exporting`` to True under a strict export), ``"torch.compile"``, or None (eager)."""
    if torch.jit.is_tracing():
        return "torch.jit.trace"
    if torch.compiler.is_exporting():
        return "torch.export"
    if torch.compiler.is_compiling():
        return "torch.compile"
    return None


def tracing() -> bool:
    # Traced, exported or compiled graphs must not capture a buffer that the next call overwrites.
    return capture_mode() is not None
