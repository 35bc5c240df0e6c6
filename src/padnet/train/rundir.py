"""A run directory belongs to padnet: a marker file says so, and a lock says who is using it.

``claim(run_dir)`` (called by the trainer before it writes anything) refuses

- an empty ``run_dir`` or the current directory (it would scatter run files among the user's own);
- a path that exists and is not a directory;
- a non-empty directory that is not a padnet run: no ``.padnet-run`` marker, and not a run directory
  written by a padnet from before the marker (a checkpoint or results, and nothing but run
  files);
- a directory another process is using: an exclusive ``fcntl.flock`` on ``.padnet-run.lock`` is held
  for the whole run, and the refusal names the process id that holds it.

Then it writes the marker (JSON: the padnet version that created the run) if it is missing and
returns the held lock; ``release()`` (or the process ending, however it ends) lets it go. The lock
file stays, holding the last holder's pid, so there is no unlink race.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
from pathlib import Path

from .._version import __version__
from ..errors import RunError
from ..files import atomic_write_bytes

MARKER = ".padnet-run"
LOCK = ".padnet-run.lock"
# What a run directory holds (a pre-marker run directory may hold only these, and temp files).
RUN_FILES = {
    "config.yaml", "train.log", "partition.json", "partition.txt", "summary.json", "summary.txt",
    "metrics.csv", "metrics.json", "tensorboard", "checkpoint.pt", "results.json", "model.safetensors",
    "stale.json", MARKER, LOCK,
}


def padnet_version() -> str:

    return __version__


def check_run_dir_name(run_dir) -> Path:
    """``run_dir`` as a Path, refusing an empty name and the current directory."""
    text = str(run_dir).strip() if run_dir is not None else ""
    path = Path(text)
    if not text or path == Path(".") or path.resolve() == Path.cwd().resolve():
        raise RunError(f"run_dir={str(run_dir)!r} is {'empty' if not text else 'the current directory'}: a run "
                       "needs a directory of its own (e.g. runs/my-run); padnet writes config.yaml, metrics.csv, "
                       "checkpoint.pt, ... there")
    return path


def _is_legacy_run(names: set[str]) -> bool:
    """A run directory written before the marker existed: only run files (and temp files), with a
    checkpoint or results (the checkpoint's own config is checked before it is resumed)."""
    plain = {n for n in names if not (n.startswith(".") and n.endswith(".tmp"))}
    return plain <= RUN_FILES and bool(plain & {"checkpoint.pt", "results.json"})


def check_ownership(run_dir: Path) -> None:
    """Refuse a run directory padnet must not write into (see the module docstring); writes nothing."""
    if not run_dir.exists() and not run_dir.is_symlink():
        return
    if not run_dir.is_dir():
        raise RunError(f"run_dir {run_dir} exists and is not a directory; use another run_dir")
    names = {p.name for p in run_dir.iterdir()} - {LOCK}
    if not names or MARKER in names or _is_legacy_run(names):
        return
    shown = ", ".join(sorted(names)[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    raise RunError(f"run_dir {run_dir} is not empty and is not a padnet run directory (no {MARKER} marker; it "
                   f"holds {shown}); padnet will not write among those files: use a new or empty run_dir")


class RunInUseError(RunError):
    """Another process holds the run directory's lock (``holder``: the pid it recorded)."""

    def __init__(self, run_dir, holder: str, lock_path: Path):
        self.holder = holder
        super().__init__(f"run_dir {run_dir} is in use by process {holder} (it holds {lock_path}); wait for it to "
                         "finish, stop it, or use another run_dir")


def lock_holder(run_dir) -> str | None:
    """The pid recorded by the process that holds ``run_dir``'s lock, or None when none does. Writes
    nothing: a probe with a shared lock, released at once (``claim`` takes the exclusive one)."""
    try:
        fd = os.open(Path(run_dir) / LOCK, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError:  # no lock file: never claimed; a link: claim() refuses it with its own message
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.read(fd, 64).decode(errors="replace").strip() or "unknown"
    finally:
        os.close(fd)  # (drops the probe's shared lock when it got one)
    return None


class RunLock:
    """An exclusive ``flock`` on ``<run_dir>/.padnet-run.lock``, held until ``release()``."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        try:
            self.fd: int | None = os.open(self.path, flags, 0o666)  # None once released
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise RunError(f"{self.path} is a symbolic link; padnet does not write through links") from None
            raise
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(self.fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(self.fd)
            raise RunInUseError(run_dir, holder, self.path) from None
        except BaseException:
            os.close(self.fd)
            raise
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None


def claim(run_dir) -> RunLock:
    """Check ``run_dir`` is padnet's (or new), create it, lock it and mark it; return the held lock."""
    run_dir = check_run_dir_name(run_dir)
    check_ownership(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = RunLock(run_dir)
    try:
        check_ownership(run_dir)  # again, under the lock: another process may have written meanwhile
        if not (run_dir / MARKER).is_file():
            marker = {"format": "padnet.run", "padnet_version": padnet_version()}
            atomic_write_bytes(run_dir / MARKER, (json.dumps(marker) + "\n").encode())
    except BaseException:
        lock.release()
        raise
    return lock


def discard(run_dir) -> None:
    """Empty a padnet run directory (its marker or its run files say it is padnet's; ``claim`` refuses
    anything else, and a directory another process uses) under its lock, so that its run starts over."""
    run_dir = Path(run_dir)
    lock = claim(run_dir)
    try:
        for entry in run_dir.iterdir():
            if entry.name == LOCK:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    finally:
        lock.release()


def remove_unused(run_dir) -> bool:
    """Remove a run directory that holds nothing but what ``claim`` wrote (the marker and the lock file),
    while its lock is still held: a run refused before it wrote anything leaves nothing behind. Returns
    whether it was removed."""
    run_dir = Path(run_dir)
    if {p.name for p in run_dir.iterdir()} - {MARKER, LOCK}:
        return False
    for name in (MARKER, LOCK):
        (run_dir / name).unlink(missing_ok=True)
    try:
        run_dir.rmdir()
    except OSError:  # another process wrote into it meanwhile: it is theirs now
        return False
    return True


__all__ = ["LOCK", "MARKER", "RUN_FILES", "RunInUseError", "RunLock", "check_ownership", "check_run_dir_name", "claim",
           "discard", "lock_holder", "remove_unused"]
