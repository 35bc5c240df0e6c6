"""Reading a model file, and what it may make ``load`` allocate.

safetensors' own parser (``safe_open``) checks the header: its size (at most 100 MB), its JSON, each
tensor's dtype, and that each shape holds exactly the bytes of its data offsets, the offsets tiling the
data up to the end of the file. So a model checked against the header's shapes cannot ask for more
memory than the file's own data. This module adds padnet's words for what safetensors refuses (always a
``ModelFileError`` naming the file), a bound on the dimensions of a tensor, and the bound on building the
file's model (``check_build_memory``).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from ..errors import ModelFileError, cut
from .record import parse_record

MAX_TENSOR_DIMS = 8
# What building a file's model may allocate: parameters and buffers (persistent or not) of at most
# twice the file's size plus 64 MiB. The file holds every weight, so a model it describes honestly
# needs about its size (a deployed file's base model up to twice that) plus buffers that do not scale
# with it (position ids, normalisation statistics); a 0.3 MB file whose config sizes a causal mask of
# 20000^2 entries asks for 1.4 GB and is refused on the meta device, before anything is allocated.
BUILD_SLACK_BYTES = 64 * 2**20
PICKLE = ("this is a pickle / torch.save file, not a safetensors file; padnet never unpickles "
          "(load it yourself only if you trust it, then padnet.save it)")
# safetensors' reasons that concern the file's length, as padnet says them ({size}: the file's bytes);
# any other reason (the JSON, a tensor's entry) is quoted as a corrupted header.
LENGTH_PROBLEMS = {
    "header too small": "truncated: {size:,} bytes is too short for a safetensors header",
    "invalid header length": "not a safetensors file or truncated: header length past the end of the file "
                             "({size:,} bytes)",
    "header too large": "not a safetensors file: header length over safetensors' limit of 100 MB",
    "incomplete metadata, file not fully covered": "truncated, or bytes added: the tensors' data offsets do not "
                                                   "end where the file ends ({size:,} bytes)",
}


class ModelFile:
    """An open model file: its padnet record (checked), each tensor's shape (from the header, checked by
    safetensors), and its tensors, read when asked."""

    def __init__(self, path: Path, handle):
        self.path, self._handle = path, handle
        self.shapes: dict[str, tuple[int, ...]] = {}
        for name in handle.keys():
            shape = tuple(handle.get_slice(name).get_shape())
            if len(shape) > MAX_TENSOR_DIMS:
                raise ModelFileError(path, f"tensor {cut(repr(name), 80)} has {len(shape)} dimensions; padnet "
                                           f"reads at most {MAX_TENSOR_DIMS}")
            self.shapes[name] = shape
        self.record = parse_record(path, handle.metadata())

    def get(self, name: str) -> torch.Tensor | None:
        """The tensor stored under ``name`` (on the CPU), or None when the file holds none."""
        if name not in self.shapes:
            return None
        try:
            return self._handle.get_tensor(name)
        except (SafetensorError, OSError, RuntimeError) as exc:
            raise ModelFileError(self.path, f"corrupted tensor data in {cut(repr(name), 80)} ({cut(exc)})") from None

    def tensors(self, map_location) -> dict[str, torch.Tensor]:
        """Every tensor of the file, on ``map_location``."""
        device = torch.device(map_location)
        out = {}
        for name in self.shapes:
            tensor = self.get(name)
            assert tensor is not None  # every name in shapes is stored
            if device.type == "cpu" and tensor.data_ptr() % 64:
                # Tensors read from a file sit at any offset; CPU kernels (oneDNN convolutions) take other
                # code paths on unaligned data and round differently. A parameter allocated by torch is
                # 64-byte aligned: so is each tensor put in place here.
                tensor = tensor.clone()
            out[name] = tensor.to(device)
        return out


@contextlib.contextmanager
def open_model_file(path: Path) -> Iterator[ModelFile]:
    """The model file at ``path``, open while the ``with`` block runs. Raises only ``ModelFileError``."""
    if not path.is_file():
        raise ModelFileError(path, "no such file")
    try:
        handle = safe_open(str(path), framework="pt", device="cpu")
    except SafetensorError as exc:
        raise ModelFileError(path, _refusal(path, exc)) from None
    except OSError as exc:
        raise ModelFileError(path, f"cannot read it ({cut(exc)})") from None
    with handle:
        yield ModelFile(path, handle)


def _refusal(path: Path, exc: SafetensorError) -> str:
    """What is wrong with a file that ``safe_open`` refused."""
    with open(path, "rb") as f:
        head = f.read(9)
    # A safetensors header is JSON (its 9th byte is "{"); the 8-byte length before it can begin like a
    # pickle (a length of 128 mod 256 starts with 0x80) or a zip file (torch.save), so test for JSON first.
    if head[8:9] != b"{" and (head[:1] == b"\x80" or head[:2] == b"PK"):
        return PICKLE
    reason = str(exc).removeprefix("Error while deserializing header: ")
    problem = LENGTH_PROBLEMS.get(reason)
    if problem is not None:
        return problem.format(size=path.stat().st_size)
    return f"corrupted safetensors header: {cut(reason)}"


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
