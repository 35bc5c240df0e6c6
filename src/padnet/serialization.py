"""``padnet.save(model, path)`` / ``padnet.load(path)``: one safetensors file, no pickle.

The file is a plain safetensors file (readable by any safetensors tool) whose header metadata key
``"padnet"`` holds a JSON record with everything needed to rebuild the model:

- ``arch``: how to build the base (unconverted) model, ``{"name": ..., "kwargs": {...}}``, resolved
  through a small registry (``register_arch``). Built in: ``"torchvision.<builder>"`` (any
  ``torchvision.models`` builder, always with ``weights=None``) and ``"padnet.<name>"``
  (``padnet.models.build``, when that module exists). ``load(path, model_factory=...)`` is the escape
  hatch for anything else.
- ``padnet_config``: ``model.padnet_config`` as ``padnet.convert`` recorded it; load re-runs convert.
- ``form``: ``"plain"`` (never converted), ``"training"``, or ``"deployed"``; ``compacted`` lists
  the PAD layers that were compacted; ``temperatures`` the DY-Conv temperatures that are not 1.

Masks come back from the tensors themselves (``<layer>.mask`` or, deployed, ``<layer>.dynamic_index``),
then compact/deploy is replayed and the state dict is loaded strictly. Loading runs no code from the
file: the JSON names a builder from the registry, and tensors are read by safetensors.

How a model gets its ``arch``: ``build_arch(name, **kwargs)`` builds and tags it; ``tag_arch(model,
name, **kwargs)`` tags a model built elsewhere (``padnet.models.build`` should call it); or pass
``arch=`` to ``save``.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from .errors import ModelFileError

FORMAT = "padnet"
FORMAT_VERSION = 1
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit

_ARCHS: dict[str, Callable[..., nn.Module]] = {}
_ARCH_PREFIXES: dict[str, Callable[[str], Callable[..., nn.Module]]] = {}




# ----------------------------------------------------------------------------- architecture registry
def register_arch(name: str, builder: Callable[..., nn.Module] | None = None):
    """Register ``builder(**kwargs) -> nn.Module`` under ``name``; usable as a decorator.

    A name ending in ``"."`` registers a prefix resolver instead: ``builder(rest)`` must return the
    builder for ``name + rest`` (or raise KeyError)."""

    def add(fn):
        if not isinstance(name, str) or not name:
            raise ValueError(f"arch name must be a non-empty string; got {name!r}")
        (_ARCH_PREFIXES if name.endswith(".") else _ARCHS)[name] = fn
        return fn

    return add(builder) if builder is not None else add


def _torchvision_builder(rest: str) -> Callable[..., nn.Module]:
    import torchvision.models as tvm

    try:
        builder = tvm.get_model_builder(rest)
    except ValueError as exc:
        raise KeyError(str(exc)) from None
    return lambda **kwargs: builder(weights=None, **kwargs)


def _padnet_builder(rest: str) -> Callable[..., nn.Module]:
    try:
        from . import models
    except ImportError as exc:
        raise KeyError(f"padnet.models is not available ({exc})") from None
    return lambda **kwargs: models.build(rest, **kwargs)


register_arch("torchvision.", _torchvision_builder)
register_arch("padnet.", _padnet_builder)


def resolve_arch(name: str) -> Callable[..., nn.Module]:
    """The builder registered for ``name`` (exact names first, then prefixes)."""
    if name in _ARCHS:
        return _ARCHS[name]
    for prefix, resolver in _ARCH_PREFIXES.items():
        if name.startswith(prefix):
            try:
                return resolver(name[len(prefix):])
            except KeyError as exc:
                raise ValueError(f"arch {name!r}: {exc}") from None
    known = sorted(_ARCHS) + [p + "*" for p in sorted(_ARCH_PREFIXES)]
    raise ValueError(f"arch {name!r} is not registered; known: {', '.join(known)} (see padnet.register_arch)")


def tag_arch(model: nn.Module, name: str, **kwargs) -> nn.Module:
    """Record on ``model`` how to rebuild its base architecture (JSON-serialisable kwargs only)."""
    try:
        json.dumps(kwargs)
    except TypeError as exc:
        raise ValueError(f"arch kwargs for {name!r} must be JSON-serialisable: {exc}") from None
    model.padnet_arch = {"name": name, "kwargs": dict(kwargs)}
    return model


def build_arch(name: str, **kwargs) -> nn.Module:
    """Build a registered base architecture (no pretrained weights) and tag it for ``save``."""
    return tag_arch(resolve_arch(name)(**kwargs), name, **kwargs)


# ----------------------------------------------------------------------------- save
def _record(model: nn.Module, arch: dict | None) -> dict:
    from .deploy import DEPLOYED_LAYERS
    from .layers import DynamicConv2d, PADConv2d, PADMoELinear

    arch = arch if arch is not None else getattr(model, "padnet_arch", None)
    config = getattr(model, "padnet_config", None)
    deployed = [n for n, m in model.named_modules() if isinstance(m, DEPLOYED_LAYERS)]
    if deployed and any(isinstance(m, (PADConv2d, PADMoELinear)) for m in model.modules()):
        raise ValueError("the model mixes deployed and training-form PAD layers; deploy() all of them before save")
    if (deployed or any(isinstance(m, (DynamicConv2d, PADMoELinear)) for m in model.modules())) and config is None:
        raise ValueError("the model has padnet layers but no model.padnet_config; build it with padnet.convert")
    temperatures = {
        n: float(m.temperature) for n, m in model.named_modules()
        if hasattr(m, "temperature") and hasattr(m, "attention") and float(m.temperature) != 1.0
    }
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": arch,
        "padnet_config": config,
        "form": "deployed" if deployed else ("training" if config is not None else "plain"),
        "compacted": [n for n, m in model.named_modules() if isinstance(m, (PADConv2d, PADMoELinear)) and m.compacted],
        "temperatures": temperatures,
    }


def save(model: nn.Module, path, arch: dict | str | None = None) -> Path:
    """Write ``model`` (training or deployed form) to ``path`` as one safetensors file, atomically.

    ``arch`` overrides ``model.padnet_arch``: a registered name or ``{"name": ..., "kwargs": {...}}``.
    Without either, the file still saves but ``load`` needs a ``model_factory``.
    """
    if isinstance(arch, str):
        arch = {"name": arch, "kwargs": {}}
    if arch is not None and not (isinstance(arch, dict) and isinstance(arch.get("name"), str)):
        raise ValueError(f"arch must be a name or {{'name': str, 'kwargs': dict}}; got {arch!r}")
    record = _record(model, arch)
    try:
        header = json.dumps(record, sort_keys=True)
    except TypeError as exc:
        raise ValueError(f"model.padnet_config / arch must be JSON-serialisable: {exc}") from None
    from safetensors.torch import save as st_save

    # Clone so tensors sharing storage (tied weights) are written independently; safetensors refuses aliases.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    payload = st_save(tensors, metadata={FORMAT: header})
    path = Path(path)
    _atomic_write(path, payload)
    return path


def _atomic_write(path: Path, data: bytes) -> None:
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise ValueError(f"cannot save to {path}: directory {directory} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


# ----------------------------------------------------------------------------- load
def read_record(path) -> dict:
    """The padnet JSON record of a file, after checking it is a well-formed safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(path, "no such file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        header_len = struct.unpack("<Q", head)[0] if len(head) == 8 else None
        # A safetensors header is JSON: test for it first. Its 8-byte length alone can begin like a
        # pickle (a length of 128 mod 256 starts with 0x80) or a zip file.
        plausible = header_len is not None and header_len <= MAX_HEADER_BYTES and 8 + header_len <= size
        first = f.read(1) if plausible and header_len > 0 else b""
        if first != b"{":
            if head[:1] == b"\x80" or head[:2] == b"PK":
                raise ModelFileError(
                    path, "this is a pickle / torch.save file, not a safetensors file; padnet never unpickles "
                    "(load it yourself only if you trust it, then padnet.save it)"
                )
            if header_len is None:
                raise ModelFileError(path, f"truncated: {size} bytes is too short for a safetensors header")
            raise ModelFileError(
                path, f"not a safetensors file or truncated: header length {header_len} vs file size {size}"
            )
        raw = first + f.read(header_len - 1)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(path, f"corrupted safetensors header ({exc})") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or FORMAT not in meta:
        raise ModelFileError(path, "a safetensors file without padnet metadata (not written by padnet.save)")
    try:
        record = json.loads(meta[FORMAT])
    except json.JSONDecodeError as exc:
        raise ModelFileError(path, f"corrupted padnet metadata ({exc})") from None
    if record.get("format") != FORMAT or record.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(
            path, f"unsupported format {record.get('format')!r} version {record.get('format_version')!r}; "
            f"this padnet reads {FORMAT!r} version {FORMAT_VERSION}"
        )
    # Truncation: the data must reach as far as the furthest tensor's end offset.
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    if 8 + header_len + max(ends, default=0) > size:
        raise ModelFileError(path, f"truncated: tensors need {8 + header_len + max(ends)} bytes, file has {size}")
    return record


def load(path, model_factory: Callable[[], nn.Module] | None = None, map_location="cpu") -> nn.Module:
    """Rebuild the model saved at ``path`` (training or deployed form) and load its weights strictly.

    ``model_factory()`` builds the base model when the file's arch is not registered (or to override
    it); it must return the model as it was before ``padnet.convert``.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .convert import convert, pad_layers
    from .deploy import deploy

    path = Path(path)
    record = read_record(path)
    try:
        tensors = load_file(str(path), device=str(map_location))
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise ModelFileError(path, f"corrupted tensor data ({exc})") from None

    arch = record.get("arch")
    if model_factory is not None:
        model = model_factory()
        if not isinstance(model, nn.Module):
            raise ValueError(f"model_factory must return an nn.Module; got {type(model).__name__}")
    elif arch is None:
        raise ModelFileError(path, "the file records no architecture; pass load(path, model_factory=...)")
    else:
        try:
            model = build_arch(arch["name"], **arch.get("kwargs", {}))
        except (ValueError, TypeError) as exc:
            raise ModelFileError(path, f"cannot rebuild architecture {arch!r}: {exc}") from None
    if arch is not None and getattr(model, "padnet_arch", None) is None:
        model.padnet_arch = arch
    what = arch["name"] if arch else "the model from model_factory"

    config = record.get("padnet_config")
    if config is not None:
        kwargs = {k: v for k, v in config.items() if k != "converted"}
        try:
            convert(model, **kwargs)
        except (ValueError, TypeError) as exc:
            raise ModelFileError(path, f"cannot re-apply padnet.convert to {what}: {exc}") from None
        if model.padnet_config["converted"] != config.get("converted"):
            raise ModelFileError(
                path, f"the file is for another architecture: it converted {len(config.get('converted', []))} "
                f"layers, {what} converts {len(model.padnet_config['converted'])}"
            )
        _restore_masks(path, model, tensors, pad_layers(model))
        for name, layer in pad_layers(model):
            if name in record.get("compacted", []) or record.get("form") == "deployed":
                layer.compact()
        for name, tau in record.get("temperatures", {}).items():
            model.get_submodule(name).temperature = tau
        if record.get("form") == "deployed":
            deploy(model)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        problem = str(exc).replace("\n", " ")
        raise ModelFileError(path, f"the weights do not match {what}: {problem[:1500]}") from None
    return model


def _restore_masks(path: Path, model: nn.Module, tensors: dict, layers) -> None:
    for name, layer in layers:
        mask = tensors.get(f"{name}.mask")
        index = tensors.get(f"{name}.dynamic_index")
        try:
            if mask is None and index is not None:
                flat = torch.zeros(layer.kernel_numel, dtype=torch.bool)
                flat[index.long()] = True
                mask = flat.reshape(layer.kernel_shape)
            if mask is None:
                raise ValueError("neither a mask nor a dynamic_index is stored")
            layer.set_mask(mask.to(layer.mask.device))
        except (ValueError, IndexError, RuntimeError) as exc:
            raise ModelFileError(path, f"layer {name}: bad mask: {exc}") from None
