"""The small computations that stay in float32 under ``torch.autocast`` (docs/usage.md#machines).

Autocast runs matmuls and convolutions in bf16/fp16, whose 8 (bf16) or 11 (fp16) significant bits are
plenty for the big products but not for decisions taken on a few logits: a router's top-k among
near-equal gate logits, or the DY-Conv attention whose logits are divided by a temperature of up to 30.
Those branches are a tiny share of a layer's work; they run with autocast off, on inputs widened to at
least float32 (float64 stays float64).
"""

from __future__ import annotations

import contextlib

import torch


def widened(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32, or in its own dtype when that is wider (float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def autocast_on(x: torch.Tensor) -> bool:
    """Whether autocast is on for ``x``'s device type (never on devices without it, such as meta)."""
    device = x.device.type
    return torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)


def without_autocast(x: torch.Tensor):
    """A context in which autocast is off on ``x``'s device type (nothing to do where it is not on)."""
    return torch.autocast(x.device.type, enabled=False) if autocast_on(x) else contextlib.nullcontext()


def as_input(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``y`` (computed widened) in ``x``'s dtype, for the products that follow, unless autocast is on (it
    casts each product's inputs itself): a model cast to bf16 keeps computing in bf16."""
    return y if autocast_on(x) else y.to(x.dtype)
