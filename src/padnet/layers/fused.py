"""Opt-in fused PAD kernel assembly, compiled by Inductor: ``set_fused_assembly(True)``.

``padnet.layers.assemble.assemble_kernels`` builds ``out[b] = scale * static`` with ``out[b, index] =
dynamic[b]`` in eager PyTorch: a scaled copy and one scatter (forward); a batch sum, a multiply by the keep
mask, a dot for the scale and a gather (backward). With the fused assembly switched on, the training form
(autograd recording, outside graph captures) runs the same math as one ``torch.compile``d function each
way instead: ``where(keep, scale * static, dynamic[:, inverse])``, which writes every entry once, and
``(grad * keep).sum(0)`` with the scale's dot and the gather. Eager layers get Inductor's kernels (Triton
on a GPU) without compiling the model (where they cannot be compiled, the same functions run eagerly,
after one warning); inside ``torch.compile``, ``torch.jit.trace`` or ``torch.export``
(and with autograd off, where the eager form writes into a reused workspace) the eager form runs.

Off by default, because it is slower where it could be measured: on this project's CPU Inductor's
kernels read every entry through the inverse index in a scalar loop, 1.8-5.2x the eager forward and
0.9-2.1x its backward (``benchmarks/fused_assembly.py``; ``docs/results/efficiency.md``). On a GPU,
``bash benchmarks/gpu_check.sh`` times both forms (section ``assembly``): switch it on where that shows a
gain. The results equal the eager form's: the forward bit for bit, the gradients up to the order of
their float sums (tests against ``padnet.reference``).
"""

from __future__ import annotations

import functools
import warnings

import torch

from ..errors import UsageError, cut

_state: dict = {"enabled": False, "compile_failed": None}  # the first compile error, if any


def set_fused_assembly(enabled: bool) -> None:
    """Switch the compiled (fused) kernel assembly on or off for every PAD layer (default off)."""
    if not isinstance(enabled, bool):
        raise UsageError(f"set_fused_assembly(enabled={enabled!r}): expected True or False")
    _state["enabled"] = enabled


def fused_assembly_enabled() -> bool:
    """Whether PAD layers assemble their kernels with the compiled (fused) kernel (``set_fused_assembly``)."""
    return _state["enabled"]


def fused_forward(static, keep, inverse, dynamic, scale):
    """(B, N): ``scale * static`` where ``keep``, else ``dynamic[b, inverse[n]]`` (one pass)."""
    return torch.where(keep, scale * static, dynamic[:, inverse])


def fused_backward(grad, keep, static, index, scale):
    """The gradients of ``fused_forward``: static's (the batch sum where kept, times the scale), the
    scale's (that sum's dot with static) and dynamic's (the gather)."""
    summed = (grad * keep).sum(0)
    return summed * scale, torch.dot(summed, static), grad[:, index]


@functools.cache
def _compiled():
    # dynamic=True: one kernel per layout serves every layer's N, nnz and batch (no recompile per shape).
    return torch.compile(fused_forward, dynamic=True), torch.compile(fused_backward, dynamic=True)


def _run(which: int, *args):
    """The compiled function ``which`` (0: forward, 1: backward) on ``args``, or, where it cannot be
    compiled (no C++ compiler, a toolchain Inductor cannot use), the same function run eagerly: the
    first failure warns once and every later call runs eagerly. A failure the eager function shares (the
    inputs themselves are wrong) is raised as the eager function raises it, and is not a compile failure."""
    eager = (fused_forward, fused_backward)[which]
    if _state["compile_failed"] is None:
        try:
            return _compiled()[which](*args)
        except Exception as err:  # compile errors come as many types (BackendCompilerFailed, OSError, ...)
            out = eager(*args)  # the inputs' own error raises here, and compiling is tried again next time
            _state["compile_failed"] = f"{type(err).__name__}: {cut(err, 300)}"
            warnings.warn(f"padnet.layers.fused: the fused assembly could not be compiled "
                          f"({_state['compile_failed']}); computing the same function eagerly", RuntimeWarning,
                          stacklevel=2)
            return out
    return eager(*args)


class FusedAssembleKernels(torch.autograd.Function):
    """``_AssembleKernels`` (``padnet.layers.assemble``) computed by the compiled functions."""

    @staticmethod
    def forward(ctx, static, dynamic, index, keep, scale):
        inverse = torch.zeros(static.shape[0], dtype=torch.long, device=static.device)
        inverse.index_copy_(0, index, torch.arange(index.numel(), device=static.device))
        one = torch.ones((), dtype=static.dtype, device=static.device)
        factor = one if scale is None else scale.to(static.dtype)
        ctx.save_for_backward(static, index, keep, factor)
        ctx.has_scale = scale is not None
        return _run(0, static, keep.bool(), inverse, dynamic, factor)

    @staticmethod
    def backward(ctx, grad):
        static, index, keep, factor = ctx.saved_tensors
        grad_static, grad_scale, grad_dynamic = _run(1, grad.contiguous(), keep.to(grad.dtype), static, index, factor)
        grad_scale = grad_scale.reshape(factor.shape) if ctx.has_scale and ctx.needs_input_grad[4] else None
        return (grad_static if ctx.needs_input_grad[0] else None,
                grad_dynamic if ctx.needs_input_grad[1] else None, None, None, grad_scale)
