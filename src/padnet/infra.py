"""The few process and file basics the whole package shares, each defined once:

- which process this is under torchrun: ``launch_env``, ``rank``, ``world_size``, ``is_main_process``;
- which device a run uses: ``resolve_device``;
- writing a file so that a crash leaves the old one or the new one, never a torn one:
  ``atomic_write_bytes`` (with ``refuse_links``, ``remove_stale_temp_files``, ``open_append_nofollow``),
  and ``atomic_savefig`` for a matplotlib figure.

It imports nothing from padnet but ``padnet.errors``, so ``padnet.serialization`` and ``padnet.train``
both build on it without importing each other, nor ``padnet.report`` and ``padnet.train``.
(``padnet.train.distributed`` and ``padnet.train.io`` re-export these names where the trainer's callers
have always found them.)
"""

from __future__ import annotations

import errno
import io
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .errors import ConfigError, RunError

ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
DEVICES = ("cpu", "cuda", "auto")


# ------------------------------------------------------------------------------- processes
class DistributedSetupError(RuntimeError):
    """The torchrun environment or the devices do not allow the requested distributed run."""


@dataclass(frozen=True)
class LaunchEnv:
    """What torchrun told this process."""

    rank: int
    world_size: int
    local_rank: int


def launch_env(environ: Mapping[str, Any] | None = None) -> LaunchEnv | None:
    """The torchrun environment of this process, or None when it was not launched by torchrun
    (no ``WORLD_SIZE``). Raises ``DistributedSetupError`` naming the bad variable and value."""
    environ = os.environ if environ is None else environ
    if "WORLD_SIZE" not in environ:
        return None
    values = {}
    for key in ENV_KEYS:
        raw = environ.get(key, "0")  # RANK and LOCAL_RANK default to 0; WORLD_SIZE is there (above)
        try:
            values[key] = int(raw)
        except (TypeError, ValueError):
            raise DistributedSetupError(
                f"{key}={raw!r} is not an integer; torchrun sets RANK, WORLD_SIZE and LOCAL_RANK to integers "
                "(launch with torchrun, or unset WORLD_SIZE for one process)"
            ) from None
    rank, world, local = values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"]
    if world < 1:
        raise DistributedSetupError(f"WORLD_SIZE={world} must be >= 1")
    if not 0 <= rank < world:
        raise DistributedSetupError(f"RANK={rank} must be in [0, WORLD_SIZE={world})")
    if not 0 <= local < world:
        raise DistributedSetupError(f"LOCAL_RANK={local} must be in [0, WORLD_SIZE={world})")
    return LaunchEnv(rank, world, local)


def is_initialized() -> bool:
    """True when a torch.distributed process group is running."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def is_main_process() -> bool:
    """True in rank 0, and in a process outside any process group: the one that writes files."""
    return rank() == 0


def resolve_device(name: str) -> torch.device:
    """The run's device for ``device`` = ``cpu`` / ``cuda`` / ``auto``; under torchrun with several
    processes, CUDA means ``cuda:LOCAL_RANK``.

    Raises ``ConfigError`` for another name, or for ``cuda`` on a machine without CUDA, and
    ``DistributedSetupError`` when torchrun started more processes on this machine than it has GPUs."""
    if name not in DEVICES:
        raise ConfigError([f"device={name!r} is not supported; allowed: 'cpu', 'cuda', 'auto'"])
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError([f"device={name!r} but CUDA is not available; allowed here: 'cpu', 'auto'"])
    env = launch_env()
    if env is None or env.world_size == 1:
        return torch.device("cuda")
    count = torch.cuda.device_count()
    if env.local_rank >= count:
        raise DistributedSetupError(
            f"LOCAL_RANK={env.local_rank} but this machine has {count} visible CUDA device(s): launch at most "
            f"--nproc_per_node {count} processes per machine (one per GPU), or set device=cpu"
        )
    return torch.device("cuda", env.local_rank)


# ------------------------------------------------------------------------------- files
# --------------------------------------------------------------------------------------- reductions
def is_distributed() -> bool:
    """True when a process group of more than one process is running (DDP paths on)."""
    return world_size() > 1


def mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over ranks (the tensor itself in one process). A NaN or inf on any rank
    makes the result non-finite on every rank, so a check on it stops all ranks together."""
    if not is_distributed():
        return value
    out = value.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / world_size()


def average_gradients(parameters: Iterable[nn.Parameter]) -> None:
    """All-reduce and average ``.grad`` of the parameters that have one on some rank (a missing grad
    counts as zero there; a parameter without a grad on every rank keeps ``None``, as in one process),
    for training steps outside a DistributedDataParallel wrapper."""
    if not is_distributed():
        return
    params = [p for p in parameters if p.requires_grad]
    # A parameter may have a gradient on one rank and none on another: agree on which ones take part.
    has_grad = torch.tensor([p.grad is not None for p in params], dtype=torch.int64, device=comm_device())
    dist.all_reduce(has_grad, op=dist.ReduceOp.MAX)
    params = [p for p, flag in zip(params, has_grad.tolist()) if flag]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    for grads in by_dtype_and_device([p.grad for p in params if p.grad is not None]):  # (every one, set above)
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= world_size()
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()


def comm_device() -> torch.device:
    if is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def by_dtype_and_device(tensors: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    groups: dict = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    return list(groups.values())


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
    before anything is created and again just before the rename. An ``OSError`` names ``path``.

    Args:
        path: the file to write; missing parent directories are created.
        data: its new contents.
        no_links_under: refuse symbolic links from ``path`` up to this directory.
    """
    path = Path(path)
    if no_links_under is not None:
        refuse_links(path, no_links_under)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~current_umask())  # mkstemp's 0600 would ignore the umask
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
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
    _fsync_directory(path.parent)


def atomic_savefig(fig, path: str | Path, dpi: int = 120, no_links_under: str | Path | None = None) -> None:
    """Write a matplotlib figure as PNG atomically (temp file, then rename), then close it."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue(), no_links_under=no_links_under)


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
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

