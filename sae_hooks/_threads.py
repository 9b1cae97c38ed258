"""Process-wide thread pools for CPU work split over Python threads.

numpy scans, the ctypes C kernels and torch ops release the GIL, so a few Python threads can keep
every core busy where one call would not (a numpy scan is single-threaded; independent SAE steps
are too small each to use all cores well). The pools live for the process: starting threads at
every call cost ~0.1–0.3 ms each time here.

    futures = [thread_pool("scan", 2).submit(fn, part) for part in parts]
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

__all__ = ["thread_pool"]

_POOLS: dict[tuple[int, str, int], ThreadPoolExecutor] = {}
_lock = threading.Lock()


def thread_pool(name: str, workers: int) -> ThreadPoolExecutor:
    """The pool ``name`` of ``workers`` threads for this process, made on first use.

    Keyed by process id (a forked child does not inherit its parent's threads). Work that can run
    inside another pool's task takes a pool of its own name: a task waiting on work queued behind
    it in its own pool would wait forever.
    """
    key = (os.getpid(), name, workers)
    with _lock:
        pool = _POOLS.get(key)
        if pool is None:
            pool = _POOLS[key] = ThreadPoolExecutor(workers, thread_name_prefix=f"sae_hooks_{name}")
    return pool
