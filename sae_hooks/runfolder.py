"""The rules of a run folder: one run at a time, never mixing two runs, deleting only what a run wrote.

A run of ``sae_hooks.train`` writes into its folder ``out``:

    run.json          the run marker: settings (the resume fingerprint), SAEs, status
    metrics.jsonl     one row per step (training batch stats, live held-out metrics)
    metrics.json      final held-out metrics          summary.txt, curves.png   the report
    saes/<name>/      the SAEs (SAELens layout)       checkpoints/              ckpt_<step>.pt
    wandb/            Weights & Biases files, when asked for
    .sae_hooks.lock   the lock, present while a run holds the folder

Rules, in the order they are applied:

- **Lock.** A run holds an exclusive advisory lock (``flock``) on ``.sae_hooks.lock`` for its whole
  life; the file names the holder (pid, host, start time). A second run on the folder is refused at
  once, naming the holder. The kernel drops the lock when the holder's process ends, however it ends,
  so a lock file left by a killed run is stale by construction and the next run takes it over.
- **Refuse, resume or overwrite.** An empty or new folder starts a run. A folder holding a run needs
  ``resume`` (same fingerprint; a finished run has nothing to resume) or ``overwrite``. ``overwrite``
  deletes only the names listed above, and refuses a folder that is not a run (no ``run.json``),
  naming what it holds: a user's files are never deleted, and ``out="."`` is safe.
- **Nothing before the inputs are read.** ``plan`` only looks; ``start`` (called once the model and
  the corpus have loaded) deletes and writes. A refused run leaves the folder as it found it (a folder
  it had to create for its lock is removed again).

    folder = RunFolder("runs/l6")
    with folder.locked():
        plan = folder.plan(resume=False, overwrite=False, fingerprint=cfg.fingerprint())
        ...  # load the model, read the corpus
        folder.start(plan, {"settings": cfg.fingerprint(), "saes": [...]})
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ._io import atomic_write_text

__all__ = ["LOCK_NAME", "RUN_DIRS", "RUN_FILES", "RunFolder", "RunFolderBusy"]

LOCK_NAME = ".sae_hooks.lock"
RUN_FILES = ("run.json", "metrics.jsonl", "metrics.json", "summary.txt", "curves.png")
"""Files a run writes (besides the lock); ``overwrite`` deletes these and ``RUN_DIRS``, nothing else."""
RUN_DIRS = ("saes", "checkpoints", "wandb")
PLANS = ("fresh", "resume", "overwrite")


class RunFolderBusy(RuntimeError):
    """Another live run holds the folder's lock."""


class RunFolder:
    """A run folder and its rules (see the module docstring).

        folder = RunFolder("runs/l6"); folder.log_path, folder.checkpoints, folder.saes
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.run_file = self.path / "run.json"
        self.log_path = self.path / "metrics.jsonl"
        self.checkpoints = self.path / "checkpoints"
        self.saes = self.path / "saes"
        self.lock_file = self.path / LOCK_NAME
        self.stale_holder: str | None = None
        """The holder named by a stale lock file this run took over (its process had ended), else None."""
        self._fd: int | None = None
        self._created = False

    # ---- the lock ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[RunFolder]:
        """Hold the folder's lock for the ``with`` block (creating the folder if needed; a folder
        created here and still empty at the end is removed again)."""
        self._acquire()
        try:
            yield self
        finally:
            self._release()

    def _acquire(self) -> None:
        import fcntl  # POSIX; the lock is advisory, between runs of this tool

        if self.path.exists() and not self.path.is_dir():
            raise NotADirectoryError(f"--out {self.path} is a file, not a folder. Choose a folder for the run.")
        self._created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_fd(fd) or "a run that is just starting"
                os.close(fd)
                self._drop_created()
                raise RunFolderBusy(f"Run folder {self.path} is in use by another run ({holder}). Wait for it to "
                                    "finish or stop it, or choose another --out.") from None
            except OSError as e:
                os.close(fd)
                self._drop_created()
                raise OSError(e.errno, f"Cannot lock run folder {self.path} ({e.strerror}): its file system does "
                                       "not support file locks. Choose a folder on a local disk.") from e
            # A holder that was finishing may have unlinked the file we opened just before we locked it;
            # then lock the file that is there now.
            try:
                same = os.stat(self.lock_file).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self.stale_holder = _read_fd(fd) or None
        os.ftruncate(fd, 0)
        os.pwrite(fd, (f"pid {os.getpid()} on host {socket.gethostname()}, started "
                       f"{time.strftime('%Y-%m-%d %H:%M:%S')}").encode(), 0)
        self._fd = fd

    def _release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.lock_file)  # while still holding it: a waiting run then locks a fresh file
        os.close(self._fd)
        self._fd = None
        self._drop_created()

    def _drop_created(self) -> None:
        if self._created:
            with contextlib.suppress(OSError):
                self.path.rmdir()  # only if empty: the run was refused before it wrote anything

    # ---- refuse / resume / overwrite -----------------------------------------------------------

    def read_run(self) -> dict[str, Any] | None:
        """The run marker (``run.json``), or None when the folder holds no run."""
        if not self.run_file.is_file():
            return None
        try:
            info = json.loads(self.run_file.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{self.run_file} is unreadable ({e}); it does not describe a run. Move it away "
                             "or choose another --out.") from None
        if not isinstance(info, dict) or not isinstance(info.get("settings"), dict):
            raise ValueError(f"{self.run_file} is not the marker of an sae-hooks run (no 'settings'). Move it "
                             "away or choose another --out.")
        return info

    def plan(self, *, resume: bool, overwrite: bool, fingerprint: dict[str, Any],
             upgrade: Callable[[dict], dict] = dict) -> str:
        """``"fresh"``, ``"resume"`` or ``"overwrite"``, or a ValueError saying why the folder is refused.
        Looks only; call with the lock held. ``upgrade`` maps a fingerprint recorded by an older version
        onto today's fields before comparing."""
        if resume and overwrite:
            raise ValueError("--resume and --overwrite exclude each other: --resume continues the run in --out, "
                             "--overwrite deletes it.")
        info = self.read_run()
        if resume:
            if info is None:
                raise FileNotFoundError(f"--resume: {self.path} holds no run (no run.json). Drop --resume to "
                                        "start one there.")
            old = upgrade(info["settings"])
            diff = {k: (old.get(k), v) for k, v in fingerprint.items() if json.dumps(old.get(k)) != json.dumps(v)}
            if diff:
                shown = ", ".join(f"{k}: was {a!r}, now {b!r}" for k, (a, b) in diff.items())
                hint = ""
                if "dtype" in diff:  # --dtype auto resolves per device: the same command can differ on another machine
                    hint = (f" The model ran in {diff['dtype'][0]} (--dtype auto picks bf16 only where the device "
                            f"multiplies bf16 natively): pass --dtype {diff['dtype'][0]} to resume it here.")
                raise ValueError(f"--resume: the run in {self.path} was started with other settings ({shown}). "
                                 f"Resume with the original settings, or use --overwrite / another --out.{hint}")
            if self.finished(info):
                raise ValueError(f"--resume: the run in {self.path} is finished ({info.get('steps', '?')} steps; its "
                                 f"SAEs are in {self.saes}), so there is nothing to resume. Use --overwrite to "
                                 "train it again, or another --out.")
            return "resume"
        entries = self._entries()
        if not entries:
            return "fresh"
        if info is None:
            why = "--overwrite deletes only what a run wrote, so it refuses this folder; c" if overwrite else "C"
            raise ValueError(f"--out {self.path} is not a run folder (no run.json) and holds {_describe(entries)}. "
                             f"{why}hoose a new or empty folder.")
        if not overwrite:
            raise ValueError(f"--out {self.path} already holds another run. Pass --resume to continue it, --overwrite "
                             "to replace it, or choose another --out.")
        return "overwrite"

    def finished(self, info: dict[str, Any]) -> bool:
        """Whether the run completed (runs from before the status field: its final metrics exist)."""
        return info.get("status", "finished" if (self.path / "metrics.json").is_file() else None) == "finished"

    def _entries(self) -> list[Path]:
        return sorted(p for p in self.path.iterdir() if p.name != LOCK_NAME) if self.path.is_dir() else []

    # ---- writing -------------------------------------------------------------------------------

    def start(self, plan: str, record: dict[str, Any], resume_step: int | None = None) -> None:
        """Commit to ``plan``: ``overwrite`` deletes the previous run's files; ``fresh``/``overwrite``
        write ``record`` as run.json; ``resume`` cuts metrics.jsonl back to ``resume_step``."""
        if plan not in PLANS:
            raise ValueError(f"RunFolder.start: plan={plan!r}; valid: {', '.join(PLANS)}.")
        if plan == "overwrite":
            self.clear()
        if plan == "resume":
            self.cut_log(int(resume_step or 0))
            self.update(status="running")
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run_file, json.dumps({**record, "status": "running"}, indent=1, default=str))

    def clear(self) -> None:
        """Delete what a run wrote (``RUN_FILES``, ``RUN_DIRS``); other files stay."""
        for name in RUN_FILES:
            with contextlib.suppress(FileNotFoundError):
                (self.path / name).unlink()
        for name in RUN_DIRS:
            if (self.path / name).is_dir():
                shutil.rmtree(self.path / name)

    def update(self, **fields: Any) -> None:
        """Set fields of run.json (e.g. ``status="finished"``), atomically."""
        info = self.read_run() or {}
        atomic_write_text(self.run_file, json.dumps({**info, **fields}, indent=1, default=str))

    def cut_log(self, step: int) -> int:
        """Keep the metrics rows of steps ``<= step`` (what a resumed run continues from); a row torn by a
        kill mid-write ends the log there. Returns how many rows were dropped."""
        if not self.log_path.is_file():
            return 0
        lines = self.log_path.read_text().splitlines()
        kept = []
        for line in lines:
            try:
                row = json.loads(line)
            except ValueError:
                break
            if not (isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step):
                break
            kept.append(line)
        dropped = len(lines) - len(kept)
        if dropped:
            atomic_write_text(self.log_path, "".join(ln + "\n" for ln in kept))
        return dropped


def _read_fd(fd: int) -> str:
    try:
        return os.pread(fd, 512, 0).decode(errors="replace").strip()
    except OSError:
        return ""


def _describe(entries: list[Path], shown: int = 5) -> str:
    names = [p.name + ("/" if p.is_dir() else "") for p in entries]
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
