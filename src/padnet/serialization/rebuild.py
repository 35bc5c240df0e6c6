"""Rebuilding a file's model: build the base model its record names, replay its form, check every tensor
against the file's header, then put the file's tensors in place.

The model is built and replayed on the meta device first (no memory), checked there against the file's
size (``check_build_memory``) and shapes, and only then given the file's tensors
(``load_state_dict(assign=True)``). Models whose values are not all in the file (Hugging Face models:
``position_ids``), and user builders that cannot run on meta, are built for real instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, overload

import torch
from torch import nn

# Imported for its side effect: padnet.models registers the "padnet.<name>" builders a record may name,
# so that resolve_arch finds them however padnet.serialization was imported.
from .. import models  # noqa: F401
from ..arch import HOW_TO_RECORD, build_on_meta, is_user_arch, resolve_arch
from ..errors import ModelFileError, cut
from ..layers.protocol import DeployedPartiallyDynamic, PartiallyDynamic
from .reader import ModelFile, check_build_memory
from .replay import replay

# Non-persistent buffers that padnet's layers derive from their state when it is loaded.
DERIVED_BUFFERS = {"dynamic_index", "static_keep", "static_kernel"}


def rebuild(file: ModelFile, model: nn.Module | None, map_location) -> nn.Module:
    """``file``'s model with its weights: built from its record's arch, or ``model`` (a base model from the
    caller's ``model_factory``) when given."""
    path, arch = file.path, file.record.get("arch")
    if model is None:
        if arch is None:
            raise ModelFileError(path, f"the file records no architecture; {HOW_TO_RECORD}")
        what = arch["name"]
        meta = _build(path, arch, meta=True)
        if meta is not None:
            check_build_memory(path, meta, what)
            replay(file, meta, what, on_meta=True)
            check_build_memory(path, meta, what)
            kinds = _check_shapes(path, meta, file.shapes, what)
            # Hugging Face models (and any other whose non-persistent buffers hold values, e.g.
            # position_ids) cannot be materialised from the file alone: built on meta those buffers would
            # have no values. They were checked on meta above; they are built for real below.
            if not _underived_buffers(meta):
                tensors = _match_kinds(path, file.tensors(map_location), kinds)
                _materialise_derived(meta, map_location)
                _load_state_dict(path, meta, tensors, what, assign=True)
                if not _meta_tensors(meta):
                    return meta
                # A tensor the file does not hold and no layer derives: build for real instead.
        model = _build(path, arch, meta=False)
    else:
        what = "the model from model_factory"
        if arch is not None and getattr(model, "padnet_arch", None) is None:
            model.padnet_arch = arch
    replay(file, model, what, on_meta=False)
    _check_shapes(path, model, file.shapes, what)
    _load_state_dict(path, model, file.tensors(map_location), what, assign=False)
    return model


@overload
def _build(path: Path, arch: dict, meta: Literal[False]) -> nn.Module: ...
@overload
def _build(path: Path, arch: dict, meta: bool) -> nn.Module | None: ...
def _build(path: Path, arch: dict, meta: bool) -> nn.Module | None:
    """The base model ``arch`` describes, on the meta device if ``meta``; None when a user-registered
    builder cannot run on meta (trusted code; the model is then checked after a real build)."""
    name, kwargs = arch["name"], arch.get("kwargs", {})
    try:
        builder = resolve_arch(name)
        model = build_on_meta(builder, **kwargs) if meta else builder(**kwargs)
    except (ValueError, TypeError, KeyError) as exc:
        raise ModelFileError(path, f"cannot rebuild architecture {cut(repr(arch), 200)}: {cut(exc)}") from None
    except (NotImplementedError, RuntimeError) as exc:
        if meta and is_user_arch(name):
            return None
        raise ModelFileError(path, f"cannot rebuild architecture {name!r}: {cut(exc)}") from None
    if not isinstance(model, nn.Module):
        raise ModelFileError(path, f"arch {name!r} did not build an nn.Module")
    if getattr(model, "padnet_arch", None) is None:
        setattr(model, "padnet_arch", arch)  # a plain attribute (nn.Module's typed __setattr__ is for tensors)
    return model


def _load_state_dict(path: Path, model: nn.Module, tensors: dict, what: str, assign: bool) -> None:
    try:
        model.load_state_dict(tensors, strict=True, assign=assign)
    except RuntimeError as exc:
        problem = str(exc).replace("\n", " ")
        raise ModelFileError(path, f"the weights do not match {what}: {problem[:1500]}") from None


def _expected_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """What ``model.state_dict()`` would hold (names -> tensors, meta or not), without running state-dict
    hooks (a deployed layer's hook computes its static values, which needs data)."""
    out = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        prefix = f"{module_name}." if module_name else ""
        for name, param in module._parameters.items():
            if param is not None:
                out[prefix + name] = param
        for name, buf in module._buffers.items():
            if buf is not None and name not in module._non_persistent_buffers_set:
                out[prefix + name] = buf
        if isinstance(module, DeployedPartiallyDynamic):  # what its state-dict hook writes instead
            out.pop(prefix + "dynamic_index", None)
            for name, (shape, dtype) in module.file_tensors().items():
                out[prefix + name] = torch.empty(shape, dtype=dtype, device="meta")
    return out


def _kind(dtype: torch.dtype) -> str:
    return "bool" if dtype == torch.bool else "float" if (dtype.is_floating_point or dtype.is_complex) else "integer"


def _check_shapes(path: Path, model: nn.Module, shapes: dict, what: str) -> dict[str, torch.dtype]:
    """Every tensor the model holds has the file's shape, and the file holds no other; returns the
    model's dtype for each name."""
    expected = _expected_tensors(model)
    wrong = [f"{k}: {what} has {tuple(t.shape)}, the file {shapes[k]}" for k, t in expected.items()
             if k in shapes and tuple(t.shape) != shapes[k]]
    missing = sorted(set(expected) - set(shapes))
    extra = sorted(set(shapes) - set(expected))
    if wrong or missing or extra:
        parts = wrong[:5] + ([f"missing {', '.join(missing[:5])}"] if missing else []) + (
            [f"unexpected {', '.join(extra[:5])}"] if extra else [])
        raise ModelFileError(path, f"the weights do not match {what}: " + cut("; ".join(parts), 1500))
    return {k: t.dtype for k, t in expected.items()}


def _match_kinds(path: Path, tensors: dict, dtypes: dict) -> dict:
    """The file's tensors in the model's dtypes (a float stays a float: a float64 file loads as the
    model's float32, as ``load_state_dict`` without ``assign`` would copy it); a bool mask stored as
    floats, or weights stored as integers, are refused."""
    for name, tensor in tensors.items():
        want = dtypes[name]
        if _kind(tensor.dtype) != _kind(want):
            raise ModelFileError(path, f"tensor {name} is stored as {tensor.dtype}; the model holds {want} there")
        if tensor.dtype != want and _kind(want) == "float":
            tensors[name] = tensor.to(want)
    return tensors


def _underived_buffers(model: nn.Module) -> list[str]:
    """Names of the non-persistent buffers whose values neither the file holds nor a padnet layer derives."""
    out = []
    for module_name, module in model.named_modules():
        derived = DERIVED_BUFFERS if isinstance(module, (PartiallyDynamic, DeployedPartiallyDynamic)) else set()
        out += [f"{module_name}.{n}" for n in module._non_persistent_buffers_set
                if module._buffers.get(n) is not None and n not in derived]
    return out


def _materialise_derived(model: nn.Module, map_location) -> None:
    """Give a meta model's deployed layers a real (zero) dense static kernel: loading scatters the file's
    static values into it."""
    for module in model.modules():
        if isinstance(module, DeployedPartiallyDynamic) and module.static_kernel.is_meta:
            module.static_kernel = torch.zeros(module.static_kernel.shape, device=map_location)


def _meta_tensors(model: nn.Module) -> list[str]:
    """Names of the tensors still on the meta device (parameters, buffers and plain tensor attributes)."""
    out = []
    for module_name, module in model.named_modules():
        for name, value in [*module._parameters.items(), *module._buffers.items(), *vars(module).items()]:
            if isinstance(value, torch.Tensor) and value.is_meta:
                out.append(f"{module_name}.{name}")
    return out
