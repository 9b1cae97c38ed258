"""Training checkpoints: atomic files, the last N kept, everything needed to resume bit for bit.

A checkpoint is one ``torch.save`` file ``ckpt_<step>.pt`` in the run's ``checkpoints/`` folder,
written to a temporary name in the same folder, flushed to disk and renamed over
(``os.replace`` is atomic on POSIX), so a killed run leaves either the old file set or the new
one, never half a file. Checkpoints are taken only where the shuffle buffer is empty (the end of
a block, ``buffer.py``), so saving the data position (one integer) restores the data exactly.

    save_checkpoint(run / "checkpoints", step, {"trainer": trainer.state_dict(), ...}, keep=2)
    state = load_checkpoint(latest_checkpoint(run / "checkpoints"))
"""

from __future__ import annotations

import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["latest_checkpoint", "list_checkpoints", "load_checkpoint", "rng_state", "save_checkpoint", "set_rng_state"]

_NAME = re.compile(r"^ckpt_(\d{8})\.pt$")


def list_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """Complete checkpoint files in ``folder``, oldest first (temporary files are ignored)."""
    p = Path(folder)
    if not p.is_dir():
        return []
    return sorted(f for f in p.iterdir() if _NAME.match(f.name))


def latest_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The newest checkpoint in ``folder``, or None.

        path = latest_checkpoint("runs/a/checkpoints")
    """
    found = list_checkpoints(folder)
    return found[-1] if found else None


def save_checkpoint(folder: str | os.PathLike, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write ``state`` atomically as ``ckpt_<step>.pt`` and delete all but the newest ``keep``.

        save_checkpoint("runs/a/checkpoints", 40, {"trainer": trainer.state_dict()}, keep=2)
    """
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"save_checkpoint: keep={keep!r}; it must be an int >= 1.")
    p = Path(folder)
    p.mkdir(parents=True, exist_ok=True)
    final = p / f"ckpt_{step:08d}.pt"
    fd, tmp = tempfile.mkstemp(prefix=".ckpt_", suffix=".tmp", dir=p)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    for old in list_checkpoints(p)[:-keep]:
        old.unlink()
    return final


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint`` (on CPU).

        state = load_checkpoint(latest_checkpoint(folder))
    """
    return torch.load(path, map_location="cpu", weights_only=False)


def rng_state() -> dict[str, Any]:
    """The global RNG states a run might touch (Python, torch CPU, CUDA if present)."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore ``rng_state()`` output."""
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
