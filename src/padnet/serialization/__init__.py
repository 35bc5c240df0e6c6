"""``padnet.save(model, path)`` / ``padnet.load(path)``: one safetensors file, no pickle.

The file is a plain safetensors file (readable by any safetensors tool) whose header metadata key
``"padnet"`` holds a JSON record with everything needed to rebuild the model:

- ``arch``: how to build the base (unconverted) model, ``{"name": ..., "kwargs": {...}}``, resolved
  through a small registry (``padnet.arch.register_arch``). Built in: ``"torchvision.<builder>"`` (any
  ``torchvision.models`` builder, always with ``weights=None``) and ``"padnet.<name>"``
  (``padnet.models.build``). ``load(path, model_factory=...)`` is the escape hatch for anything else.
- ``padnet_config``: ``model.padnet_config`` as ``padnet.convert`` recorded it; load re-runs convert.
- ``predict``: what prediction on new inputs needs (``model.padnet_predict``: task, label names,
  preprocessing or tokenizer; ``padnet.predict``), or null.
- ``form``: ``"plain"`` (never converted), ``"training"``, or ``"deployed"``; ``compacted`` lists
  the PAD layers that were compacted; ``temperatures`` the DY-Conv temperatures that are not 1.

Masks come back from the tensors themselves (``<layer>.mask`` or, deployed, ``<layer>.dynamic_index``),
then compact/deploy is replayed and the state dict is loaded strictly. Loading runs no code from the
file: the JSON names a builder from the registry, and tensors are read by safetensors.

How a model gets its ``arch``: ``padnet.arch.build_arch(name, **kwargs)`` builds and tags it;
``padnet.arch.tag_arch(model, name, **kwargs)`` tags a model built elsewhere; or pass ``arch=`` to ``save``.

Modules, one concern each: ``record`` (the JSON record: written, then checked and bounded when read),
``reader`` (the file through ``safetensors.safe_open``; the memory a file may make ``load`` allocate),
``replay`` (convert, masks, compaction, temperatures and deploy re-run as the record says) and
``rebuild`` (the model built on the meta device, checked against the file, then given its tensors).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save as safetensors_bytes
from torch import nn

from ..errors import ModelFileError, UsageError, cut
from ..files import atomic_write_bytes
from .reader import check_build_memory, open_model_file
from .rebuild import rebuild
from .record import FORMAT, model_record
from .replay import restore_pad_layers

__all__ = ["check_build_memory", "load", "read_record", "restore_pad_layers", "save"]


def save(model: nn.Module, path: str | os.PathLike[str], arch: dict | str | None = None) -> Path:
    """Write ``model`` (training or deployed form) to ``path`` as one safetensors file, atomically.

    ``arch`` overrides ``model.padnet_arch``: a registered name or ``{"name": ..., "kwargs": {...}}``.
    Without either, a model that ``padnet.arch.detect_arch`` recognises (built by a torchvision builder,
    or a Hugging Face model) is recorded as such; any other still saves, but ``load`` then needs a
    ``model_factory``.

    Args:
        model: a plain, converted (training form, compacted or not) or deployed model.
        path: the ``.safetensors`` file to write (its directory must exist).
        arch: how ``load`` rebuilds the base model, if ``model.padnet_arch`` is absent or wrong.

    Returns the path written.
    """
    if isinstance(arch, str):
        arch = {"name": arch, "kwargs": {}}
    if arch is not None and not (isinstance(arch, dict) and isinstance(arch.get("name"), str)):
        raise UsageError(f"arch must be a name or {{'name': str, 'kwargs': dict}}; got {arch!r}")
    record = model_record(model, arch)
    try:
        header = json.dumps(record, sort_keys=True)
    except TypeError as exc:
        raise UsageError(f"model.padnet_config / arch must be JSON-serialisable: {exc}") from None
    # Clone so tensors sharing storage (tied weights) are written independently; safetensors refuses aliases.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    payload = safetensors_bytes(tensors, metadata={FORMAT: header})
    path = Path(path)
    directory = path.parent
    if not directory.is_dir():
        raise UsageError(f"cannot save to {path}: directory {directory} does not exist")
    atomic_write_bytes(path, payload)
    return path


def read_record(path) -> dict:
    """The padnet JSON record of a file, after checking it is a well-formed safetensors file whose record
    is well-formed and within bounds."""
    with open_model_file(Path(path)) as file:
        return file.record


def load(path: str | os.PathLike[str], model_factory: Callable[[], nn.Module] | None = None,
         map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model saved at ``path`` (training or deployed form) and load its weights strictly.

    ``model_factory()`` builds the base model when the file's arch is not registered (or to override
    it); it must return the model as it was before ``padnet.convert``.

    Loading runs no code named by the file and fetches nothing: the record names a builder from the
    allow-list (``register_arch``: torchvision and padnet builders, with every weights argument forced
    off; Hugging Face models rebuilt with ``from_config`` from the config stored in the file), and every
    size in the record is bounded. The model is built on the ``meta`` device (no memory), converted,
    compacted and deployed there as the record says (PAD layers take their masks' sizes from the
    file), and every tensor's name, shape and kind is checked against the file's header; only then are
    the file's tensors read and put in place with ``load_state_dict(assign=True)``, so nothing is
    allocated beyond the file's own tensors (and the buffers the layers derive from them). Models whose
    values are not all in the file (Hugging Face models: ``position_ids``) are checked the same way on
    meta, then built for real. Any malformed file raises ``ModelFileError`` naming the file.

    Args:
        path: a file written by ``padnet.save``.
        model_factory: builds the base model (before ``padnet.convert``) when the file's arch is not
            registered, or to override it.
        map_location: the device the loaded tensors go to.
    """
    path = Path(path)
    with open_model_file(path) as file:
        model = None
        if model_factory is not None:
            model = model_factory()  # the caller's code: its errors are its own
            if not isinstance(model, nn.Module):
                raise UsageError(f"model_factory must return an nn.Module; got {type(model).__name__}")
        try:
            model = rebuild(file, model, map_location)
        except ModelFileError:
            raise
        except (Exception, RecursionError, MemoryError) as exc:
            raise ModelFileError(
                path, f"cannot rebuild the model it describes ({type(exc).__name__}: {cut(exc)})") from None
    predict = file.record.get("predict")
    if predict is not None:
        model.padnet_predict = predict  # padnet.predict(model, ...) reads it
    return model
