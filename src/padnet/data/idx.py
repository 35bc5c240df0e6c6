"""Reader for the IDX format of MNIST / Fashion-MNIST (plain or gzip-compressed).

Layout: 2 zero bytes, a type code, the number of dimensions d, then d big-endian uint32 sizes and the
data, big-endian. Every problem is reported with the file and the byte offset (of the decompressed
stream for .gz files) where it was found.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError

# type code -> (numpy dtype, bytes per value)
_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class IDXError(DataError):
    """A malformed or truncated IDX file; the message names the file and the offset."""


_CHUNK = 1 << 24


def _read_bytes(path: Path) -> bytes:
    """The (decompressed) bytes of an IDX file, reading no more than its header declares plus one byte:
    a small gzip file cannot inflate past the size of the array it describes (a 1.5 MB gzip once
    expanded to gigabytes before any check)."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return _read_declared(f)
        return path.read_bytes()  # on disk: its size is real, no bomb
    except (EOFError, gzip.BadGzipFile, OSError, zlib.error) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise IDXError(f"{path}: cannot read the gzip stream ({err}); the file is damaged or truncated") from err


def _read_declared(f) -> bytes:
    head = f.read(4)
    if len(head) < 4 or head[:2] != b"\0\0" or head[2] not in _TYPES or head[3] == 0:
        return head  # read_idx reports the bad header
    dims = f.read(4 * head[3])
    if len(dims) < 4 * head[3]:
        return head + dims
    shape = struct.unpack(f">{head[3]}I", dims)
    remaining = math.prod(shape) * np.dtype(_TYPES[head[2]]).itemsize + 1  # +1: to see trailing bytes
    chunks = [head, dims]
    while remaining > 0:
        chunk = f.read(min(remaining, _CHUNK))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file into a numpy array of its shape and (native-endian) dtype."""
    path = Path(path)
    data = _read_bytes(path)
    where = f"{path}" + (" (decompressed)" if path.suffix == ".gz" else "")
    if len(data) < 4:
        raise IDXError(f"{where}: truncated at offset {len(data)}: the 4-byte IDX header needs 4 bytes")
    zero, code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or code not in _TYPES:
        raise IDXError(
            f"{where}: bad IDX magic number at offset 0: bytes {data[:4].hex()} "
            f"(expected 0000 followed by a type code in {[hex(c) for c in _TYPES]} and the number of dimensions)"
        )
    if ndim == 0:
        raise IDXError(f"{where}: IDX header at offset 3 declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IDXError(f"{where}: truncated at offset {len(data)} inside the dimension list (needs {header} bytes)")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_TYPES[code])
    expected = header + math.prod(shape) * dtype.itemsize
    if len(data) < expected:
        raise IDXError(
            f"{where}: truncated at offset {len(data)}: shape {tuple(shape)} needs {expected} bytes "
            f"({header} header + data)"
        )
    if len(data) > expected:
        count = "more" if path.suffix == ".gz" else len(data) - expected  # a .gz is read 1 byte past the end
        raise IDXError(f"{where}: {count} unexpected trailing bytes after offset {expected}")
    array = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file (gzip-compressed when the name ends in .gz); used by tests."""
    path = Path(path)
    array = np.asarray(array)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in _TYPES.items()}
    code = codes[array.dtype.newbyteorder("=")]
    payload = struct.pack(">HBB", 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload += array.astype(_TYPES[code]).tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)
