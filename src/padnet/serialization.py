"""``padnet.save(model, path)`` / ``padnet.load(path)``: one safetensors file, no pickle.

The file is a plain safetensors file (readable by any safetensors tool) whose header metadata key
``"padnet"`` holds a JSON record with everything needed to rebuild the model:

- ``arch``: how to build the base (unconverted) model, ``{"name": ..., "kwargs": {...}}``, resolved
  through a small registry (``register_arch``). Built in: ``"torchvision.<builder>"`` (any
  ``torchvision.models`` builder, always with ``weights=None``) and ``"padnet.<name>"``
  (``padnet.models.build``, when that module exists). ``load(path, model_factory=...)`` is the escape
  hatch for anything else.
- ``padnet_config``: ``model.padnet_config`` as ``padnet.convert`` recorded it; load re-runs convert.
- ``predict``: what prediction on new inputs needs (``model.padnet_predict``: task, label names,
  preprocessing or tokenizer; ``padnet.predict``), or null.
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

import contextlib
import itertools
import json
import math
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Literal, TypeGuard, overload

import torch
from torch import nn

from . import models  # noqa: F401  (registers the "padnet." builders)
from ._version import __version__
from .arch import _ARCHS, HOW_TO_RECORD, build_arch, build_on_meta, detect_arch, register_arch, resolve_arch, tag_arch  # noqa: F401
from .convert import convert, plan_conversion
from .data.transforms import predict_record_problem
from .deploy import deploy
from .errors import ModelFileError, UsageError, cut
from .files import atomic_write_bytes
from .layers import pad_layers
from .layers.protocol import DYNAMIC_LAYERS, DeployedPartiallyDynamic, PartiallyDynamic

FORMAT = "padnet"
FORMAT_VERSION = 1
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit

# ----------------------------------------------------------------------------- save
def _record(model: nn.Module, arch: dict | None) -> dict:
    config = getattr(model, "padnet_config", None)
    if arch is None:  # a converted model was looked at by convert, before its modules changed
        arch = getattr(model, "padnet_arch", None) if config is not None else detect_arch(model)
    deployed = [n for n, m in model.named_modules() if isinstance(m, DeployedPartiallyDynamic)]
    if deployed and any(isinstance(m, PartiallyDynamic) for m in model.modules()):
        raise UsageError("the model mixes deployed and training-form PAD layers; deploy() all of them before save")
    if any(isinstance(m, DYNAMIC_LAYERS) for m in model.modules()) and config is None:
        raise UsageError("the model has padnet layers but no model.padnet_config; build it with padnet.convert")
    temperatures = {
        n: float(m.temperature) for n, m in model.named_modules()
        if hasattr(m, "temperature") and hasattr(m, "attention") and float(m.temperature) != 1.0
    }

    record = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "padnet_version": __version__,
        "arch": arch,
        "padnet_config": config,
        "form": "deployed" if deployed else ("training" if config is not None else "plain"),
        "compacted": [n for n, m in model.named_modules() if isinstance(m, PartiallyDynamic) and m.compacted],
        "temperatures": temperatures,
    }
    predict = getattr(model, "padnet_predict", None)
    if predict is not None:  # what prediction needs (task, label names, preprocessing or tokenizer): padnet.predict
        record["predict"] = predict
    return record


def save(model: nn.Module, path, arch: dict | str | None = None) -> Path:
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
    record = _record(model, arch)
    try:
        header = json.dumps(record, sort_keys=True)
    except TypeError as exc:
        raise UsageError(f"model.padnet_config / arch must be JSON-serialisable: {exc}") from None
    from safetensors.torch import save as st_save

    # Clone so tensors sharing storage (tied weights) are written independently; safetensors refuses aliases.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    payload = st_save(tensors, metadata={FORMAT: header})
    path = Path(path)
    directory = path.parent
    if not directory.is_dir():
        raise UsageError(f"cannot save to {path}: directory {directory} does not exist")
    atomic_write_bytes(path, payload)
    return path


# ----------------------------------------------------------------------------- load
FORMS = ("plain", "training", "deployed")
MAX_RECORD_INT = 2**22  # no size in a record is larger (a vocabulary, a position table: far smaller)
MAX_RECORD_NODES = 100_000
MAX_RECORD_DEPTH = 16
MAX_TENSOR_DIMS = 8
# Sizes a record can set, bounded before anything is built (a 5.5 KB file once asked for
# num_classes 400000, num_kernels 10**7 or layers [10**6]).
SIZE_LIMITS = {
    "num_classes": 100_000, "num_labels": 100_000, "in_channels": 4096, "width": 4096, "num_kernels": 64,
    "num_experts": 1024, "top_k": 1024, "reduction": 4096, "num_hidden_layers": 256, "num_attention_heads": 1024,
    "hidden_size": 65_536, "intermediate_size": 262_144, "vocab_size": 1_048_576, "max_position_embeddings": 1_048_576,
}
MAX_STAGES, MAX_BLOCKS = 8, 64  # padnet.small_resnet's layers: [blocks per stage]
# What building a file's model may allocate: parameters and buffers (persistent or not) of at most
# twice the file's size plus 64 MiB. The file holds every weight, so a model it describes honestly
# needs about its size (a deployed file's base model up to twice that) plus buffers that do not scale
# with it (position ids, normalisation statistics); a 0.3 MB file whose config sizes a causal mask of
# 20000^2 entries asks for 1.4 GB and is refused on the meta device, before anything is allocated.
BUILD_SLACK_BYTES = 64 * 2**20
# Bytes per element of each safetensors dtype.
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}




def _read_header(path: Path) -> tuple[dict, dict[str, tuple[int, ...]]]:
    """(the padnet record, {tensor name: shape}) of a file, after checking it is a well-formed safetensors
    file whose record is well-formed and within bounds. Raises only ``ModelFileError``."""
    if not path.is_file():
        raise ModelFileError(path, "no such file")
    size = path.stat().st_size
    header_len, raw = _raw_header(path, size)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ModelFileError(path, f"corrupted safetensors header ({cut(exc)})") from None
    if not isinstance(header, dict):
        raise ModelFileError(path, f"corrupted safetensors header (a JSON {type(header).__name__}, not an object)")
    record = _padnet_record(path, header.get("__metadata__"))
    shapes, end = _tensor_shapes(path, header)
    # Truncation: the data must reach as far as the furthest tensor's end offset.
    if 8 + header_len + end > size:
        raise ModelFileError(path, f"truncated: tensors need {8 + header_len + end} bytes, file has {size}")
    _check_record(path, record)
    return record, shapes


def _raw_header(path: Path, size: int) -> tuple[int, bytes]:
    """(the header's length, its bytes) of a safetensors file of ``size`` bytes."""
    with open(path, "rb") as f:
        head = f.read(8)
        header_len = struct.unpack("<Q", head)[0] if len(head) == 8 else None
        # A safetensors header is JSON: test for it first. Its 8-byte length alone can begin like a
        # pickle (a length of 128 mod 256 starts with 0x80) or a zip file.
        plausible = header_len is not None and 0 < header_len <= MAX_HEADER_BYTES and 8 + header_len <= size
        first = f.read(1) if plausible else b""
        if header_len is None or first != b"{":  # (no header length: nothing was read, first is b"")
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
        return header_len, first + f.read(header_len - 1)


def _padnet_record(path: Path, meta) -> dict:
    """The padnet record in a safetensors header's ``__metadata__``, of this format and version."""
    if not isinstance(meta, dict) or not isinstance(meta.get(FORMAT), str):
        raise ModelFileError(path, "a safetensors file without padnet metadata (not written by padnet.save)")
    try:
        record = json.loads(meta[FORMAT])
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ModelFileError(path, f"corrupted padnet metadata ({cut(exc)})") from None
    if not isinstance(record, dict):
        raise ModelFileError(path, f"corrupted padnet metadata (a JSON {type(record).__name__}, not an object)")
    if record.get("format") != FORMAT or record.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(
            path, f"unsupported format {cut(repr(record.get('format')), 80)} version "
            f"{cut(repr(record.get('format_version')), 80)}; this padnet reads {FORMAT!r} version {FORMAT_VERSION}"
        )
    return record


def _tensor_shapes(path: Path, header: dict) -> tuple[dict[str, tuple[int, ...]], int]:
    """({tensor name: shape}, the end offset of the furthest tensor's data) of a safetensors header,
    each entry checked: a dtype, a shape, and data offsets holding exactly that many bytes."""
    shapes: dict[str, tuple[int, ...]] = {}
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        shape = info.get("shape") if isinstance(info, dict) else None
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(info, dict) and isinstance(info.get("dtype"), str)
                and _ints(shape) and len(shape) <= MAX_TENSOR_DIMS
                and _ints(offsets) and len(offsets) == 2 and offsets[0] <= offsets[1]):
            raise ModelFileError(path, f"corrupted safetensors header: bad entry for tensor {cut(repr(name), 80)}")
        itemsize = DTYPE_BYTES.get(info["dtype"])
        if itemsize is None or math.prod(shape) * itemsize != offsets[1] - offsets[0]:
            # The shape must be what the bytes hold: a model checked against these shapes then cannot
            # ask for more memory than the file's own data.
            raise ModelFileError(path, f"corrupted safetensors header: tensor {cut(repr(name), 80)} has dtype "
                                       f"{cut(repr(info['dtype']), 20)} and shape {cut(shape, 80)} but "
                                       f"{offsets[1] - offsets[0]:,} bytes of data")
        shapes[name] = tuple(shape)
        end = max(end, offsets[1])
    return shapes, end


def _ints(value) -> TypeGuard[list[int]]:
    return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)


def _check_record(path: Path, record: dict) -> None:
    """The record's fields have the types ``save`` writes and every size in it is within bounds."""
    def bad(problem):
        return ModelFileError(path, f"malformed padnet record: {problem}")

    arch = record.get("arch")
    if arch is not None:
        if not (isinstance(arch, dict) and isinstance(arch.get("name"), str) and 0 < len(arch["name"]) <= 200
                and isinstance(arch.get("kwargs", {}), dict)):
            raise bad(f"arch={cut(repr(arch), 200)} must be {{'name': str, 'kwargs': {{...}}}}")
    config = record.get("padnet_config")
    if config is not None and not isinstance(config, dict):
        raise bad(f"padnet_config must be a mapping; got {type(config).__name__}")
    if record.get("form", "plain") not in FORMS:
        raise bad(f"form={cut(repr(record.get('form')), 80)}; allowed: {', '.join(FORMS)}")
    compacted = record.get("compacted", [])
    if not (isinstance(compacted, list) and all(isinstance(n, str) for n in compacted)):
        raise bad("compacted must be a list of layer names")
    temperatures = record.get("temperatures", {})
    if not (isinstance(temperatures, dict) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
            for v in temperatures.values())):
        raise bad("temperatures must map layer names to finite numbers > 0")
    predict = record.get("predict")
    if predict is not None:
        problem = predict_record_problem(predict)
        if problem:
            raise bad(problem)
    nodes = [0]
    for where, value in (("arch", arch), ("padnet_config", config), ("predict", predict)):
        problem = _bounded(value, where, 0, nodes)
        if problem:
            raise bad(problem)


def _bounded(value, where: str, depth: int, nodes: list[int]) -> str | None:
    """The first size in ``value`` past its bound (``SIZE_LIMITS``, ``MAX_RECORD_INT``), or None."""
    nodes[0] += 1
    if depth > MAX_RECORD_DEPTH or nodes[0] > MAX_RECORD_NODES:
        return f"{where}: nested deeper than {MAX_RECORD_DEPTH} levels or more than {MAX_RECORD_NODES} values"
    key = where.rsplit(".", 1)[-1]
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        limit = SIZE_LIMITS.get(key, MAX_RECORD_INT)
        if abs(value) > limit:
            return f"{where}={cut(value, 40)} is larger than padnet allows ({limit:,})"
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) or key.endswith("eps") else f"{where}={value} is not finite"
    if isinstance(value, dict):
        for k, v in value.items():
            problem = _bounded(v, f"{where}.{k}", depth + 1, nodes)
            if problem:
                return problem
        return None
    if isinstance(value, list):
        if key == "layers" and (len(value) > MAX_STAGES or any(isinstance(v, int) and v > MAX_BLOCKS for v in value)):
            return f"{where}={cut(value, 80)}: at most {MAX_STAGES} stages of at most {MAX_BLOCKS} blocks"
        for i, v in enumerate(value):
            problem = _bounded(v, f"{where}", depth + 1, nodes)
            if problem:
                return problem
        return None
    if isinstance(value, str):
        return None if len(value) <= 100_000 else f"{where}: a string of {len(value):,} characters"
    return f"{where}: unexpected {type(value).__name__}"


def read_record(path) -> dict:
    """The padnet JSON record of a file, after checking it is a well-formed safetensors file."""
    return _read_header(Path(path))[0]


def load(path, model_factory: Callable[[], nn.Module] | None = None, map_location="cpu") -> nn.Module:
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
    record, shapes = _read_header(path)
    model = None
    if model_factory is not None:
        model = model_factory()  # the caller's code: its errors are its own
        if not isinstance(model, nn.Module):
            raise UsageError(f"model_factory must return an nn.Module; got {type(model).__name__}")
    try:
        model = _load(path, record, shapes, model, map_location)
        if record.get("predict") is not None:
            model.padnet_predict = record["predict"]  # padnet.predict(model, ...) reads it
        return model
    except ModelFileError:
        raise
    except (Exception, RecursionError, MemoryError) as exc:
        raise ModelFileError(
            path, f"cannot rebuild the model it describes ({type(exc).__name__}: {cut(exc)})") from None


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
        if meta and name in _ARCHS and not name.startswith(("torchvision.", "padnet.", "transformers.")):
            return None
        raise ModelFileError(path, f"cannot rebuild architecture {name!r}: {cut(exc)}") from None
    if not isinstance(model, nn.Module):
        raise ModelFileError(path, f"arch {name!r} did not build an nn.Module")
    if getattr(model, "padnet_arch", None) is None:
        setattr(model, "padnet_arch", arch)  # a plain attribute (nn.Module's typed __setattr__ is for tensors)
    return model


class _FileTensors:
    """The file's tensors, read one at a time (masks and index lists, before the model is checked) or
    all at once (once it is)."""

    def __init__(self, path: Path, map_location):
        self.path, self.map_location = path, map_location

    def get(self, name: str, shapes: dict) -> torch.Tensor | None:
        if name not in shapes:
            return None
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(self.path), framework="pt", device="cpu") as f:
                return f.get_tensor(name)
        except (SafetensorError, OSError, RuntimeError) as exc:
            raise ModelFileError(self.path, f"corrupted tensor data ({cut(exc)})") from None

    def all(self) -> dict[str, torch.Tensor]:
        from safetensors import SafetensorError, safe_open

        device = torch.device(self.map_location)
        out = {}
        try:
            with safe_open(str(self.path), framework="pt", device="cpu") as f:
                for name in f.keys():
                    tensor = f.get_tensor(name)
                    if device.type == "cpu" and tensor.data_ptr() % 64:
                        # Tensors read from a file sit at any offset; CPU kernels (oneDNN convolutions)
                        # take other code paths on unaligned data and round differently. A parameter
                        # allocated by torch is 64-byte aligned: so is each tensor put in place here.
                        tensor = tensor.clone()
                    out[name] = tensor.to(device)
        except (SafetensorError, OSError, RuntimeError) as exc:
            raise ModelFileError(self.path, f"corrupted tensor data ({cut(exc)})") from None
        return out


def check_build_memory(path: Path, model: nn.Module, what: str) -> None:
    """``ModelFileError`` when ``model`` (built on the meta device from the file's record) would take
    more memory for real than a file of this size may ask for (``BUILD_SLACK_BYTES``)."""
    need = sum(t.numel() * t.element_size() for t in itertools.chain(model.parameters(), model.buffers()))
    size = path.stat().st_size
    budget = 2 * size + BUILD_SLACK_BYTES
    if need > budget:
        raise ModelFileError(path, f"{what} would allocate {need:,} bytes of parameters and buffers; a file of "
                                   f"{size:,} bytes may ask for at most {budget:,} (twice its size + 64 MiB): its "
                                   "record sizes tensors its own data does not hold")


def _load(path: Path, record: dict, shapes: dict, model: nn.Module | None, map_location) -> nn.Module:
    arch = record.get("arch")
    file = _FileTensors(path, map_location)
    if model is None:
        if arch is None:
            raise ModelFileError(path, f"the file records no architecture; {HOW_TO_RECORD}")
        what = arch["name"]
        meta = _build(path, arch, meta=True)
        if meta is not None:
            check_build_memory(path, meta, what)
            _replay(path, record, shapes, file, meta, what, on_meta=True)
            check_build_memory(path, meta, what)
            kinds = _check_shapes(path, meta, shapes, what)
            # Hugging Face models (and any other whose non-persistent buffers hold values, e.g.
            # position_ids) cannot be materialised from the file alone: built on meta those buffers would
            # have no values. They were checked on meta above; they are built for real below.
            if not _underived_buffers(meta):
                tensors = _match_kinds(path, file.all(), kinds)
                _materialise_derived(meta, map_location)
                try:
                    meta.load_state_dict(tensors, strict=True, assign=True)
                except RuntimeError as exc:
                    problem = str(exc).replace("\n", " ")
                    raise ModelFileError(path, f"the weights do not match {what}: {problem[:1500]}") from None
                if not _meta_tensors(meta):
                    return meta
                # A tensor the file does not hold and no layer derives: build for real instead.
        model = _build(path, arch, meta=False)
    else:
        what = "the model from model_factory"
        if arch is not None and getattr(model, "padnet_arch", None) is None:
            model.padnet_arch = arch
    _replay(path, record, shapes, file, model, what, on_meta=False)
    _check_shapes(path, model, shapes, what)
    tensors = file.all()
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        problem = str(exc).replace("\n", " ")
        raise ModelFileError(path, f"the weights do not match {what}: {problem[:1500]}") from None
    return model


def _replay(path: Path, record: dict, shapes: dict, file: _FileTensors, model: nn.Module, what: str,
            on_meta: bool) -> None:
    """Re-apply ``padnet.convert``, the masks, compaction, temperatures and ``deploy`` as the record says;
    on the meta device when ``on_meta`` (PAD layers then take their index lists from the file)."""
    config = record.get("padnet_config")
    if config is None:
        return
    device = torch.device("meta") if on_meta else contextlib.nullcontext()
    kwargs = {k: v for k, v in config.items() if k not in ("converted", "skipped")}
    converted = config.get("converted")
    try:
        if _converted_before_a_rule_changed(model, kwargs, converted):
            # A file written before the rule skipped some modules (squeeze-excitation convs) converted
            # them: replay exactly its modules.
            kwargs |= {"include": [fnmatch_escape(n) for n in converted], "exclude": None}
        with device:
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
        restore_pad_layers(model, lambda key: file.get(key, shapes), lambda name: deployed or name in compacted,
                           on_meta=on_meta)
    except ValueError as exc:
        raise ModelFileError(path, str(exc)) from None
    for name, tau in record.get("temperatures", {}).items():
        try:
            model.get_submodule(name).temperature = tau
        except AttributeError:
            raise ModelFileError(path, f"temperatures: {what} has no layer {cut(repr(name), 80)}") from None
    if deployed:
        if on_meta:
            # from_pad reads the static positions: on meta, only their count is known
            for _, layer in pad_layers(model):
                layer.__class__ = _meta_static_index_class(type(layer))
        with device:
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
    with torch.device("meta") if on_meta else contextlib.nullcontext():
        for name, layer in layers:
            if compacted(name):
                layer.compact()


_META_CLASSES: dict[type, type] = {}


def _meta_static_index_class(cls: type) -> type:
    """``cls`` whose ``static_index`` is a meta tensor of the right length: ``deploy`` can then run on a
    meta model (the positions themselves come from the file's index list when it is loaded)."""
    if cls not in _META_CLASSES:
        def static_index(self):
            return torch.empty(self.kernel_numel - self.num_dynamic, dtype=torch.long, device="meta")

        _META_CLASSES[cls] = type(cls.__name__, (cls,), {"static_index": property(static_index),
                                                        "__module__": cls.__module__})
    return _META_CLASSES[cls]


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
    the real index list, which is all compaction and deployment need to know."""
    if not layer.mask.is_meta:
        layer.set_mask(mask.to(layer.mask.device))
        return
    if mask.dtype != torch.bool or tuple(mask.shape) != layer.kernel_shape:
        raise UsageError(f"mask must be a torch.bool tensor of the kernel shape {layer.kernel_shape}; "
                         f"got {mask.dtype} {tuple(mask.shape)}")
    layer.dynamic_index = mask.reshape(-1).nonzero().squeeze(1)


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


# Non-persistent buffers that padnet's layers derive from their state when it is loaded.
_DERIVED_BUFFERS = {"dynamic_index", "static_keep", "static_kernel"}


def _underived_buffers(model: nn.Module) -> list[str]:

    out = []
    for module_name, module in model.named_modules():
        derived = _DERIVED_BUFFERS if isinstance(module, (PartiallyDynamic, DeployedPartiallyDynamic)) else set()
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
