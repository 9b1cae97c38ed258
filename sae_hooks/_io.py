"""Atomic file writes: a reader (or a crash) sees the old file or the new one, never half of one.

The bytes go to a temporary file in the same folder (same file system, so the final rename is
atomic), are flushed to disk with fsync, and the temporary file then replaces the target with
``os.replace``. On any error, the temporary file is removed and the target is left as it was.

    atomic_write_text(run / "run.json", json.dumps(settings))
    atomic_write_bytes(folder / "sae_weights.safetensors", blob)
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

__all__ = ["atomic_write_bytes", "atomic_write_text"]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically; the folder must exist.

        atomic_write_bytes("out/sae.safetensors", blob)
    """
    path = Path(path)
    # os.open with 0o666 leaves the permissions to the umask, like any new file (tempfile.mkstemp's are
    # private to the user, and run folders and SAEs are shared).
    tmp = str(path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically; the folder must exist.

        atomic_write_text("runs/l6/run.json", json.dumps(settings, indent=2))
    """
    atomic_write_bytes(path, text.encode("utf-8"))
