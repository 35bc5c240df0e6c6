"""Everything the trainer writes goes through here, so that under torch.distributed only rank 0
writes (``is_main_process``), and every file is replaced atomically (temp file, fsync, ``os.replace``).

Checkpoints are ``torch.save`` of tensors and plain containers only and are read back with
``torch.load(weights_only=True)``: a checkpoint can never run code when it is loaded. A checkpoint
whose tensors hold nan/inf is never written (the previous, good one stays), and a checkpoint save
first removes the temp files that a killed save of the same file left behind.

Test hook (off by default; used by tests/reliability to kill a run at a known point): with
``PADNET_TEST_PAUSE_WRITE=NAME@N`` in the environment, the N-th atomic write of a file called NAME in
this process stops after the temp file is written and fsynced and before the rename, prints
``padnet test hook: paused writing NAME`` to stderr, and sleeps up to 10 minutes (the test kills it).
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import yaml

from ..errors import ModelFileError, NonFiniteLossError, RunError


def is_main_process() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def refuse_links(path: str | Path, root: str | Path | None = None) -> None:
    """Raise ``RunError`` naming the first symbolic link among ``path`` and, when ``root`` is given, the
    directories from ``path``'s parent up to ``root`` (included; ``root`` must be an ancestor of ``path``):
    padnet never writes through a link. Missing components are fine (they will be created)."""
    path = Path(path)
    chain = [path]
    if root is not None:
        root, parent = Path(root), path.parent
        while True:
            chain.append(parent)
            if parent == root or parent == parent.parent:
                break
            parent = parent.parent
    for component in chain:
        if component.is_symlink():

            raise RunError(f"{component} is a symbolic link; padnet does not write through links "
                           "(remove it or choose another path)")


def atomic_write_bytes(path: str | Path, data: bytes, no_links_under: str | Path | None = None) -> None:
    """Write ``data`` to ``path`` so that a crash (or a full disk) leaves either the old file or the
    new one, never a torn one: temp file in the same directory, fsync, rename, fsync the directory.
    The file gets the mode a plain ``open`` would give (0666 less the umask), and the rename replaces
    a symbolic link at ``path`` rather than writing through it. With ``no_links_under=ROOT`` a link at
    ``path`` or at a directory between it and ``ROOT`` is refused instead (``refuse_links``), checked
    before anything is created and again just before the rename. An ``OSError`` names ``path``."""
    path = Path(path)
    if no_links_under is not None:
        refuse_links(path, no_links_under)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~current_umask())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        _test_pause(path.name)
        if no_links_under is not None:
            refuse_links(path, no_links_under)
        os.replace(tmp, path)
    except BaseException as err:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(err, OSError) and err.filename is None and err.errno is not None:
            raise type(err)(err.errno, f"cannot write {path}: {err.strerror}", str(path)) from err
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:  # some filesystems do not support fsync on directories
        pass


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (``/proc/self/status``)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def open_append_nofollow(path: str | Path):
    """``path`` opened for appending text, refusing a symbolic link there (``O_NOFOLLOW``): a log must
    never append to whatever file a link points at."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as err:
        if err.errno == errno.ELOOP:

            raise RunError(f"{path} is a symbolic link; padnet does not write through links (remove it)") from None
        raise
    return os.fdopen(fd, "a", encoding="utf-8")


_PAUSE_ENV = "PADNET_TEST_PAUSE_WRITE"
_write_counts: dict[str, int] = {}


def _test_pause(name: str) -> None:
    """The test hook described in the module docstring; a no-op unless PADNET_TEST_PAUSE_WRITE is set."""
    spec = os.environ.get(_PAUSE_ENV)
    if not spec:
        return
    target, _, nth = spec.partition("@")
    if name != target:
        return
    _write_counts[name] = _write_counts.get(name, 0) + 1
    if _write_counts[name] == int(nth or 1):
        print(f"padnet test hook: paused writing {name}", file=sys.stderr, flush=True)
        time.sleep(600)


def remove_stale_temp_files(path: str | Path) -> list[Path]:
    """Delete the temp files (``.NAME.*.tmp``) that an interrupted atomic write of ``path`` left."""
    path = Path(path)
    stale = sorted(path.parent.glob(f".{path.name}.*.tmp")) if path.parent.is_dir() else []
    for tmp in stale:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
    return stale


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


def atomic_savefig(fig, path: str | Path, dpi: int = 120, no_links_under: str | Path | None = None) -> None:
    """Write a matplotlib figure as PNG atomically (temp file, then rename), then close it."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue(), no_links_under=no_links_under)


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
                                   f"{_cut(str(err))})") from err
    if not isinstance(state, dict):
        raise ModelFileError(path, f"not a padnet checkpoint: it holds a {type(state).__name__}, "
                                   "not a dict with 'format', 'model', 'optimizer', ...")
    if state.get("format") == TRAINING_CHECKPOINT:
        missing = [k for k in TRAINING_CHECKPOINT_KEYS if k not in state]
        if missing:
            raise ModelFileError(path, f"damaged padnet training checkpoint: missing {', '.join(missing)}")
    return state


def _cut(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


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
        raise ModelFileError(path, f"not a loadable padnet checkpoint (not a torch.save zip archive: {_cut(str(err))}; "
                                   "legacy and pickle files are refused)") from None
    for info in entries:
        if info.compress_type != zipfile.ZIP_STORED:
            raise ModelFileError(path, f"not a loadable padnet checkpoint (entry {info.filename!r} is compressed; "
                                       "torch.save stores entries uncompressed, so this file was not written by padnet)")
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
        self.text(name, yaml.safe_dump(obj, sort_keys=False))

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
