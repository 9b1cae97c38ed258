"""Small C kernels, compiled once per machine with the system C compiler and loaded with ctypes.

Some inner loops (matching pursuit's per-token steps) are latency-bound chains of tiny
operations that no sequence of PyTorch ops runs fast: each op streams a whole matrix through
memory. A few dozen lines of C keep one token's data in cache for all its steps. The source
ships with the package; the first use compiles it (``$CC`` or ``cc``, ~1 s) into the cache
directory (``$SAE_HOOKS_CACHE/kernels``), keyed by source, compiler flags and CPU, so later
runs just load it. Without a compiler, or with ``SAE_HOOKS_NATIVE=0``, callers fall back to
their PyTorch path (same results; one warning says why it is slower). ``SAE_HOOKS_CFLAGS``
adds compiler flags (``-mno-avx512f`` builds the portable loops on an AVX-512 machine).

    lib = load_kernel("mp_kernel")      # ctypes.CDLL, or None if unavailable
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

__all__ = ["load_kernel", "native_enabled", "NATIVE_ENV"]

NATIVE_ENV = "SAE_HOOKS_NATIVE"
CFLAGS_ENV = "SAE_HOOKS_CFLAGS"
_FLAGS = ["-O3", "-march=native", "-mprefer-vector-width=512", "-fopenmp-simd", "-fPIC", "-shared", "-std=c11"]
_lock = threading.Lock()
_loaded: dict[str, ctypes.CDLL | None] = {}


def _flags() -> list[str]:
    """Compiler flags: ours, then ``$SAE_HOOKS_CFLAGS`` (e.g. ``-mno-avx512f`` for the portable loops)."""
    return [*_FLAGS, *os.environ.get(CFLAGS_ENV, "").split()]


def native_enabled() -> bool:
    """False when ``SAE_HOOKS_NATIVE=0`` (forces the PyTorch paths, e.g. to compare them)."""
    return os.environ.get(NATIVE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def _cpu_key() -> str:
    """CPU model and flags: a library built with -march=native only runs where they match."""
    text = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "model name", "Features")):
                    text += line
                if line.strip() == "":
                    break  # the first processor's block is enough
    except OSError:
        pass
    return text


def _build(src: Path, out: Path) -> str | None:
    """Compile ``src`` to ``out`` atomically; return None on success, else why it failed."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        return "no C compiler found (set CC, or install gcc)"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".so.tmp")
        os.close(fd)
    except OSError as e:
        return f"cannot write to {out.parent}: {e}"
    try:
        p = subprocess.run([cc, *_flags(), str(src), "-o", tmp, "-lm"], capture_output=True, text=True, timeout=120)
        if p.returncode != 0:
            return f"{cc} failed: {p.stderr.strip()[-600:]}"
        os.replace(tmp, out)  # other processes see either nothing or the whole library
        return None
    except (OSError, subprocess.SubprocessError) as e:
        return f"{cc} could not run: {e}"
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_kernel(name: str) -> ctypes.CDLL | None:
    """The compiled ``sae_hooks/**/{name}.c`` as a ctypes library, or None (with one warning).

        lib = load_kernel("mp_kernel")
    """
    if not native_enabled():
        return None
    with _lock:
        if name in _loaded:
            return _loaded[name]
        lib = None
        srcs = list(Path(__file__).parent.rglob(f"{name}.c"))
        if len(srcs) != 1:
            why = f"source {name}.c not found in the installed package"
        else:
            src = srcs[0]
            from .models import cache_root

            key = hashlib.sha256(src.read_bytes() + " ".join(_flags()).encode() + _cpu_key().encode()).hexdigest()[:16]
            out = cache_root() / "kernels" / f"{name}-{key}.so"
            why = None if out.exists() else _build(src, out)
            if why is None:
                try:
                    lib = ctypes.CDLL(str(out))
                except OSError as e:
                    why = f"could not load {out}: {e}"
        if lib is None:
            warnings.warn(f"sae_hooks: the C kernel {name!r} is unavailable ({why}); using the slower PyTorch path. "
                          f"Set {NATIVE_ENV}=0 to silence this.", RuntimeWarning, stacklevel=3)
        _loaded[name] = lib
        return lib
