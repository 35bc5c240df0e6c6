"""Everything the trainer writes goes through here, so that under torch.distributed only rank 0
writes (``is_main_process``), and every file is replaced atomically (``padnet.files.atomic_write_bytes``:
temp file, fsync, ``os.replace``).

Checkpoints are ``torch.save`` of tensors and plain containers only and are read back with
``torch.load(weights_only=True)``: a checkpoint can never run code when it is loaded. A checkpoint
whose tensors hold nan/inf is never written (the previous, good one stays), and a checkpoint save
first removes the temp files that a killed save of the same file left behind.
"""

from __future__ import annotations

import csv
import errno
import io
import json
from pathlib import Path

import torch

from ..distributed import is_main_process
from ..errors import ModelFileError, NonFiniteLossError, cut
from ..files import atomic_write_bytes, remove_stale_temp_files
from ..strict_yaml import dump_yaml


def non_finite_tensors(obj, prefix: str = "") -> list[str]:
    """Dotted names of the floating-point tensors in a nested dict/list that hold nan or inf."""
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() or obj.is_complex():
            return [] if bool(torch.isfinite(obj).all()) else [prefix.rstrip(".") or "<tensor>"]
        return []
    if isinstance(obj, dict):
        return [n for k, v in obj.items() for n in non_finite_tensors(v, f"{prefix}{k}.")]
    if isinstance(obj, (list, tuple)):
        return [n for i, v in enumerate(obj) for n in non_finite_tensors(v, f"{prefix}{i}.")]
    return []


def atomic_torch_save(obj, path: str | Path) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


# The trainer's checkpoint format (padnet.train.trainer.CHECKPOINT_FORMAT) and the keys it must hold.
TRAINING_CHECKPOINT = "padnet.train.checkpoint"
TRAINING_CHECKPOINT_KEYS = ("epoch", "global_step", "model", "compacted", "optimizer", "scheduler", "rng",
                            "history", "config")


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint with ``weights_only=True`` (no arbitrary pickle) and ``mmap=True``: tensors are
    mapped from the file, not inflated into memory. Only ``torch.save``'s own zip layout is read, every
    entry stored uncompressed (as ``torch.save`` writes them) and inside the file, so a small file
    cannot expand into a large allocation. Every problem is a ``ModelFileError`` naming the file."""

    path = Path(path)
    _check_checkpoint_archive(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=True)
    except FileNotFoundError:
        raise
    except Exception as err:
        raise ModelFileError(path, f"not a loadable padnet checkpoint ({type(err).__name__}: "
                                   f"{cut(str(err))})") from err
    if not isinstance(state, dict):
        raise ModelFileError(path, f"not a padnet checkpoint: it holds a {type(state).__name__}, "
                                   "not a dict with 'format', 'model', 'optimizer', ...")
    if state.get("format") == TRAINING_CHECKPOINT:
        missing = [k for k in TRAINING_CHECKPOINT_KEYS if k not in state]
        if missing:
            raise ModelFileError(path, f"damaged padnet training checkpoint: missing {', '.join(missing)}")
    return state




def _check_checkpoint_archive(path: Path) -> None:
    import zipfile

    if not path.is_file():
        if not path.exists():
            raise FileNotFoundError(errno.ENOENT, "no such checkpoint file", str(path))
        raise ModelFileError(path, "not a loadable padnet checkpoint (not a regular file)")
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
        raise ModelFileError(path, f"not a loadable padnet checkpoint (not a torch.save zip archive: {cut(str(err))}; "
                                   "legacy and pickle files are refused)") from None
    for info in entries:
        if info.compress_type != zipfile.ZIP_STORED:
            raise ModelFileError(path, f"not a loadable padnet checkpoint (entry {info.filename!r} is compressed; "
                                       "torch.save stores entries uncompressed, "
                                       "so this file was not written by padnet)")
        if info.file_size > size or info.header_offset + info.file_size > size:
            raise ModelFileError(path, f"not a loadable padnet checkpoint (entry {info.filename!r} claims "
                                       f"{info.file_size:,} bytes, beyond the file's {size:,})")


class RunWriter:
    """The run directory's files. Every write is a no-op off rank 0."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.main = is_main_process()  # the directory is created by padnet.train.rundir.claim

    def path(self, name: str) -> Path:
        return self.run_dir / name

    def text(self, name: str, text: str) -> None:
        if self.main:
            remove_stale_temp_files(self.path(name))
            atomic_write_bytes(self.path(name), text.encode())

    def json(self, name: str, obj) -> None:
        self.text(name, json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n")

    def yaml(self, name: str, obj) -> None:
        self.text(name, dump_yaml(obj))

    def checkpoint(self, name: str, obj) -> None:
        """Save ``obj`` atomically, unless a tensor in it holds nan/inf: then raise
        ``NonFiniteLossError`` and keep the previous checkpoint (the last good state). The check runs on
        every rank (DDP replicas hold the same weights), so all ranks stop together instead of rank 0
        raising while the others wait in the next collective."""
        bad = non_finite_tensors(obj)
        if bad:
            epoch = obj.get("epoch") if isinstance(obj, dict) else None
            raise NonFiniteLossError(
                f"non-finite values (nan/inf) in {len(bad)} tensors of the state to save"
                + (f" at the end of epoch {epoch}" if epoch is not None else "")
                + f", e.g. {', '.join(bad[:3])}: the run stopped and {self.path(name)} was not overwritten "
                "(it keeps the last good state, if any). Lower optim.lr or set optim.grad_clip and start a new "
                "run_dir."
            )
        if not self.main:
            return
        remove_stale_temp_files(self.path(name))
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
