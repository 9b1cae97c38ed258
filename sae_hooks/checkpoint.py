"""Training checkpoints: atomic files, the last N kept, safe to load, everything needed to resume bit for bit.

A checkpoint is one ``torch.save`` file ``ckpt_<step>.pt`` in the run's ``checkpoints/`` folder,
written to a temporary name in the same folder, flushed to disk and renamed over
(``os.replace`` is atomic on POSIX), so a killed run leaves either the old file set or the new
one, never half a file. Saving the data position (a few integers) restores the data exactly: the
shuffle buffer's permutation is a function of the seed and the block index (``buffer.py``).

Loading never runs code from the file: ``torch.load(weights_only=True)`` accepts tensors and plain
data only (dicts, lists, tuples, numbers, strings), which is all a checkpoint of this project holds.
A file that carries anything else (a pickled object whose ``__reduce__`` would run on load) is
refused. Run folders travel between people, so a checkpoint is untrusted input.

    save_checkpoint(run / "checkpoints", step, {"trainer": trainer.state_dict(), ...}, keep=2)
    found = load_latest(run / "checkpoints")     # the newest file that loads, and why others did not
"""

from __future__ import annotations

import os
import pickle
import random
import re
import secrets
from pathlib import Path
from typing import Any, NamedTuple

import torch

__all__ = ["CheckpointError", "Latest", "latest_checkpoint", "list_checkpoints", "load_checkpoint", "load_latest",
           "rng_state", "save_checkpoint", "set_rng_state"]

_NAME = re.compile(r"^ckpt_(\d{8})\.pt$")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: unreadable, truncated, or holding more than tensors and data."""


class Latest(NamedTuple):
    """What ``load_latest`` found."""

    path: Path
    """The newest checkpoint that loaded."""
    state: dict[str, Any]
    """Its contents."""
    skipped: list[tuple[Path, str]]
    """Newer checkpoints that did not load, newest first, each with the reason."""


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

    The state is streamed to the temporary file rather than built as bytes first (``_io.atomic_write_bytes``):
    a checkpoint holds every SAE three times over (weights and two Adam moments), and a second copy in
    memory would double the peak. A failed write (a full disk) raises an ``OSError`` naming the file
    and leaves the earlier checkpoints as they were.

        save_checkpoint("runs/a/checkpoints", 40, {"trainer": trainer.state_dict()}, keep=2)
    """
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"save_checkpoint: keep={keep!r}; it must be an int >= 1.")
    p = Path(folder)
    p.mkdir(parents=True, exist_ok=True)
    final = p / f"ckpt_{step:08d}.pt"
    tmp = str(p / f".ckpt_{step:08d}.{secrets.token_hex(4)}.tmp")
    # os.open with 0o666 leaves the permissions to the umask, as for any file the run writes
    # (tempfile.mkstemp would make it private to the user, and run folders are shared).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except OSError as e:
        _unlink(tmp)
        kept = ", ".join(c.name for c in list_checkpoints(p)) or "none"
        raise OSError(e.errno, f"Could not write checkpoint {final}: {e.strerror or e}. Free space (or fix "
                               f"permissions) there and --resume; the earlier checkpoints are intact ({kept})") from e
    except BaseException:
        _unlink(tmp)
        raise
    for old in list_checkpoints(p)[:-keep]:
        old.unlink()
    return final


def _unlink(path: str) -> None:
    if os.path.exists(path):
        os.unlink(path)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint`` (on CPU), refusing anything but tensors and data.

    Raises ``CheckpointError`` naming the file and why (truncated or corrupt, or refused because it
    holds Python objects that loading would have to construct; nothing from such a file runs).

        state = load_checkpoint(latest_checkpoint(folder))
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "GLOBAL" in str(e) or "global" in _first_line(str(e), "lobal"):
            # The restricted unpickler met a reference to a Python callable or class: the file asks to
            # construct objects, which is how a pickle runs code.
            raise CheckpointError(
                f"Checkpoint {path} was refused: it holds Python objects, not only tensors and data "
                f"({_first_line(str(e), 'GLOBAL', 'lobal')}). Checkpoints written by sae-hooks never do, so this "
                "file was altered or comes from elsewhere; nothing in it was run. Delete it.") from None
        raise CheckpointError(f"Checkpoint {path} is unreadable: corrupt "
                              f"({_first_line(str(e), 'operand', 'Unpickler error')}).") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError) as e:
        # Truncated or garbage files surface as any of these, depending on where the zip reader stops.
        raise CheckpointError(f"Checkpoint {path} is unreadable: truncated or corrupt "
                              f"({type(e).__name__}: {_first_line(str(e)) or 'no detail'}).") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"Checkpoint {path} holds a {type(state).__name__}, not a checkpoint's dict.")
    return state


def _first_line(text: str, *prefer: str) -> str:
    """The first line of ``text`` that contains ``prefer[0]``, else ``prefer[1]``, ... else its first line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for p in prefer:
        for ln in lines:
            if p in ln:
                return ln.rstrip(".")[:200]
    return lines[0].rstrip(".")[:200] if lines else ""


def load_latest(folder: str | os.PathLike) -> Latest:
    """The newest checkpoint in ``folder`` that loads, falling back past unusable newer ones.

    Raises ``CheckpointError`` when there is no checkpoint at all, or when none loads (listing why
    for each file).

        found = load_latest("runs/a/checkpoints")
        for path, why in found.skipped: print(f"skipped {path}: {why}")
    """
    files = list_checkpoints(folder)
    if not files:
        raise CheckpointError(f"There is no checkpoint in {folder}.")
    skipped: list[tuple[Path, str]] = []
    for path in reversed(files):
        try:
            return Latest(path, load_checkpoint(path), skipped)
        except CheckpointError as e:
            skipped.append((path, str(e)))
    raise CheckpointError(f"No checkpoint in {folder} loads: " + " ".join(why for _, why in skipped))


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
