"""The daemon's malloc settings: keep big transient buffers out of the long-lived heap.

Reconciling one large module allocates and frees tens of MiB (amdgpu: a 30 MiB decompressed
image, lane planes of a few MiB each). glibc serves such blocks with mmap only below a
*dynamic* threshold that rises, up to 32 MiB, every time a mapped block is freed; after the
first big module, the next ones land in the brk heap, where what they leave behind is never
given back: the daemon's RSS climbed to ~230 MB over the 50 largest Debian modules instead of
the ~45 MB it needs. A fixed threshold (which also turns the dynamic one off) keeps every
block of 128 KiB or more in its own mapping, returned to the kernel on free; two arenas are
enough for a worker thread and the merged-BTF writer.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3  # <malloc.h>
M_ARENA_MAX = -8
MMAP_THRESHOLD = 128 << 10
ARENA_MAX = 2


def tune_malloc() -> bool:
    """Apply the settings above (glibc only; elsewhere nothing happens). True if applied."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and \
        bool(mallopt(M_ARENA_MAX, ARENA_MAX))
