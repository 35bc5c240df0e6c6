"""Process-wide settings that the ``padnet`` command applies for its runs (never on import).

``reuse_large_allocations()``: glibc serves every allocation of 32 MB or more with a fresh ``mmap``
and returns it to the system when freed, so a tensor of that size costs a page fault per 4 KB each
time it is created. A training step of a dynamic network creates several per layer (the K stacked
kernels and their gradient: 38 MB for a 3x3 512->512 layer with K = 4), every step. Raising the
mmap and trim thresholds makes freed memory stay in the process and be reused: measured on
resnet18 at 64x64, batch 32, one thread, the PAD train step went from 1.11-1.15 s to 0.95-0.98 s
(without it, system time, i.e. page faults, was 44 % of the training benchmark's CPU time); a static
model gains little (0.35 s either way). The cost: the process keeps its peak
memory instead of returning it between steps. Library users can do the same with the environment
variables ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` or with jemalloc/tcmalloc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_THRESHOLD = 1 << 30  # 1 GiB: mmap only for single tensors larger than this


def reuse_large_allocations() -> bool:
    """Keep freed large blocks in the process for reuse (glibc on Linux; elsewhere nothing). Returns
    whether it was applied."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, 2 * _THRESHOLD))
