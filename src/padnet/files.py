"""Writing files so that a crash leaves the old file or the new one, never a torn one
(``atomic_write_bytes``, ``atomic_savefig`` for a matplotlib figure), refusing symbolic links where a
run writes (``refuse_links``), and the helpers they need (``remove_stale_temp_files``,
``open_append_nofollow``, ``current_umask``). The model file, the trainer and the report all write
through here."""

from __future__ import annotations

import errno
import io
import os
import tempfile
from pathlib import Path

from .errors import RunError


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
    if path.is_dir():  # else the rename fails, naming the temp file (padnet.save(model, "runs/"))
        raise IsADirectoryError(errno.EISDIR, "a directory; give the path of a file (in it)", str(path))
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

