"""glibc malloc tuning for long-running training processes (``sae-hooks train``).

PyTorch on CPU allocates through malloc. glibc serves blocks above its mmap threshold (at most
32 MB, adjusted at run time) with fresh mmaps and returns freed heap tops to the OS, so a
training step that allocates the same [4096, 4608] blocks every step pays page faults (the
kernel zeroing every new page) again and again: measured here, converting a 576×4608 bf16 matrix
to fp32 took 5.5 ms into a new tensor against 0.4 ms into an existing one. Raising the mmap
threshold and the trim threshold keeps freed blocks in the heap for the next step; the process
then holds its peak memory until it exits, which suits a training run.

``sae-hooks train`` calls `tune_malloc` at start (``SAE_HOOKS_MALLOC=0`` turns it off); library
users may call it themselves. It changes the whole process, so the library never calls it on
import.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

MALLOC_ENV = "SAE_HOOKS_MALLOC"
# mallopt parameter numbers from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 256 << 20  # blocks below this come from the heap (reused, no page faults)
TRIM_THRESHOLD = 1 << 30  # free heap tops are returned to the OS only past this


def tune_malloc() -> bool:
    """Set glibc's mmap and trim thresholds for a training process; True if they were set.

    False (nothing changed) off Linux/glibc, or when ``SAE_HOOKS_MALLOC=0``.

        from sae_hooks._malloc import tune_malloc
        tune_malloc()
    """
    if os.environ.get(MALLOC_ENV, "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl): leave the allocator alone
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
