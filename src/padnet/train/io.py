"""Everything the trainer writes goes through here, so that under torch.distributed only rank 0
writes (``is_main_process``), and every file is replaced atomically (temp file, fsync, ``os.replace``).

Checkpoints are ``torch.save`` of tensors and plain containers only and are read back with
``torch.load(weights_only=True)``: a checkpoint can never run code when it is loaded.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import yaml


def is_main_process() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash (or a full disk) leaves either the old file or the
    new one, never a torn one: temp file in the same directory, fsync, rename, fsync the directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:  # some filesystems do not support fsync on directories
        pass


def atomic_torch_save(obj, path: str | Path) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint with ``weights_only=True`` (no arbitrary pickle)."""
    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:
        raise ValueError(f"{path}: not a loadable padnet checkpoint ({type(err).__name__}: {err})") from err


class RunWriter:
    """The run directory's files. Every write is a no-op off rank 0."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.main = is_main_process()
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        return self.run_dir / name

    def text(self, name: str, text: str) -> None:
        if self.main:
            atomic_write_bytes(self.path(name), text.encode())

    def json(self, name: str, obj) -> None:
        self.text(name, json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n")

    def yaml(self, name: str, obj) -> None:
        self.text(name, yaml.safe_dump(obj, sort_keys=False))

    def checkpoint(self, name: str, obj) -> None:
        if self.main:
            atomic_torch_save(obj, self.path(name))

    def metrics(self, history: list[dict]) -> None:
        """metrics.csv and metrics.json, rewritten whole from the history (so a resumed run never
        holds rows of an epoch that was interrupted)."""
        if not self.main:
            return
        self.json("metrics.json", history)
        keys: list[str] = []
        for row in history:
            keys += [k for k in row if k not in keys]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)
        self.text("metrics.csv", buffer.getvalue())


def _jsonable(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
