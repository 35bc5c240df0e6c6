"""Replay: turn a freshly built base model into the form a record describes, by re-running what made it
(``padnet.convert``, the masks, compaction, temperatures, ``padnet.deploy``), on the meta device or for
real. ``restore_pad_layers`` is also the trainer's way back from a checkpoint."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn

from ..arch import on_meta as meta_device
from ..convert import convert, plan_conversion
from ..deploy import deploy
from ..errors import ModelFileError, UsageError, cut
from ..layers import pad_layers
from .reader import ModelFile


def replay(file: ModelFile, model: nn.Module, what: str, on_meta: bool) -> None:
    """Re-apply ``padnet.convert``, the masks, compaction, temperatures and ``deploy`` to ``model`` (called
    ``what`` in messages) as ``file``'s record says; on the meta device when ``on_meta`` (PAD layers then
    take their index lists from the file)."""
    path, record = file.path, file.record
    config = record.get("padnet_config")
    if config is None:
        return
    def device():  # a fresh context each time (a generator's cannot be entered twice)
        return meta_device() if on_meta else contextlib.nullcontext()
    kwargs = {k: v for k, v in config.items() if k not in ("converted", "skipped")}
    converted = config.get("converted")
    try:
        if _converted_before_a_rule_changed(model, kwargs, converted):
            # A file written before the rule skipped some modules (squeeze-excitation convs) converted
            # them: replay exactly its modules.
            kwargs |= {"include": [fnmatch_escape(n) for n in converted], "exclude": None}
        with device():
            convert(model, **kwargs)
    except (ValueError, TypeError) as exc:
        raise ModelFileError(path, f"cannot re-apply padnet.convert to {what}: {cut(exc)}") from None
    replayed: dict = getattr(model, "padnet_config")  # what convert() just recorded
    if replayed["converted"] == converted:
        setattr(model, "padnet_config", dict(config))  # the settings as the file records them
    else:
        raise ModelFileError(
            path, f"the file is for another architecture: it converted "
            f"{len(converted) if isinstance(converted, list) else converted!r} layers, {what} converts "
            f"{len(replayed['converted'])}"
        )
    deployed = record.get("form") == "deployed"
    compacted = set(record.get("compacted", []))
    try:
        restore_pad_layers(model, file.get, lambda name: deployed or name in compacted, on_meta=on_meta)
    except ValueError as exc:
        raise ModelFileError(path, str(exc)) from None
    for name, tau in record.get("temperatures", {}).items():
        try:
            model.get_submodule(name).temperature = tau
        except AttributeError:
            raise ModelFileError(path, f"temperatures: {what} has no layer {cut(repr(name), 80)}") from None
    if deployed:
        with device():
            deploy(model, allow_unpartitioned=True)  # the file's masks, whatever they are


def _converted_before_a_rule_changed(model: nn.Module, settings: dict, converted) -> bool:
    """Whether ``converted`` (a file's list) is what ``convert(model, **settings)`` replaces today plus
    only modules its rule now skips."""
    if not (isinstance(converted, list) and all(isinstance(n, str) for n in converted)):
        return False
    planned, skipped = plan_conversion(model, **settings)
    extra = set(converted) - set(planned)
    return bool(extra) and extra <= set(skipped) and set(planned) <= set(converted)


def fnmatch_escape(name: str) -> str:
    """``name`` as an fnmatch pattern that matches only itself."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def restore_pad_layers(model: nn.Module, stored: Callable[[str], torch.Tensor | None],
                       compacted: Callable[[str], bool], on_meta: bool = False) -> None:
    """Give every PAD layer of a freshly converted ``model`` its trained mask, then compact the layers
    that were compacted: what a converted model needs before a trained state dict fits it. The one
    rebuild path of ``load`` (tensors from a file) and of the trainer (``padnet.train.checkpoint.
    restore_model``: a checkpoint's state dict).

    Args:
        model: a model just converted by ``padnet.convert``, its PAD layers not masked yet.
        stored: the tensor stored under a state-dict key, or None. A layer's mask is ``<layer>.mask``
            or, in a deployed model, comes from its list of dynamic positions ``<layer>.dynamic_index``.
        compacted: whether the layer of this name was compacted (every layer of a deployed model was).
        on_meta: the model is on the meta device: its layers get their dynamic positions only (the mask
            values come with the state dict) and are compacted on meta.

    Raises ``ValueError`` naming the layer whose mask is missing or malformed.
    """
    layers = pad_layers(model)
    for name, layer in layers:
        try:
            _set_stored_mask(layer, _stored_mask(name, layer, stored))
        except (ValueError, IndexError, RuntimeError) as exc:
            raise UsageError(f"layer {name}: bad mask: {cut(exc)}") from None
    with meta_device() if on_meta else contextlib.nullcontext():
        for name, layer in layers:
            if compacted(name):
                layer.compact()


def _stored_mask(name: str, layer, stored: Callable[[str], torch.Tensor | None]) -> torch.Tensor:
    """A PAD layer's stored mask: ``<layer>.mask``, or one built from a deployed layer's ``dynamic_index``."""
    prefix = f"{name}." if name else ""
    mask = stored(f"{prefix}mask")
    if mask is not None:
        return mask
    index = stored(f"{prefix}dynamic_index")
    if index is None:
        return _mask_from_rows(prefix, layer, stored(f"{prefix}dynamic_rows"))
    if index.dim() != 1 or index.dtype not in (torch.int32, torch.int64):
        raise UsageError(f"dynamic_index must be a 1-D integer tensor; got {index.dtype} {tuple(index.shape)}")
    flat = torch.zeros(layer.kernel_numel, dtype=torch.bool, device="cpu")
    flat[index.long()] = True
    return flat.reshape(layer.kernel_shape)


def _mask_from_rows(prefix: str, layer, rows: torch.Tensor | None) -> torch.Tensor:
    """The mask of a deployed channel-granular layer's ``dynamic_rows`` (whole rows dynamic)."""
    if rows is None:
        raise UsageError(f"none of {prefix}mask, {prefix}dynamic_index, {prefix}dynamic_rows is stored")
    if rows.dim() != 1 or rows.dtype not in (torch.int32, torch.int64):
        raise UsageError(f"dynamic_rows must be a 1-D integer tensor; got {rows.dtype} {tuple(rows.shape)}")
    if layer.granularity != "channel":
        raise UsageError(f"dynamic_rows is stored but the layer has granularity {layer.granularity!r}")
    units = torch.zeros(layer.kernel_shape[0], dtype=torch.bool)
    units[rows.long()] = True
    return layer.mask_from_units(units).clone()


def _set_stored_mask(layer, mask: torch.Tensor) -> None:
    """``layer.set_mask``; a meta layer keeps its meta mask (its values come with the state dict) and gets
    the real index list, which is all compaction and deployment need to know (``static_index`` is its
    complement)."""
    if not layer.mask.is_meta:
        layer.set_mask(mask.to(layer.mask.device))
        return
    if mask.dtype != torch.bool or tuple(mask.shape) != layer.kernel_shape:
        raise UsageError(f"mask must be a torch.bool tensor of the kernel shape {layer.kernel_shape}; "
                         f"got {mask.dtype} {tuple(mask.shape)}")
    layer.dynamic_index = mask.reshape(-1).nonzero().squeeze(1)
