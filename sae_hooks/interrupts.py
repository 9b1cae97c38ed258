"""SIGINT / SIGTERM during a training run: stop after the current step, never in the middle of one.

While the steps run (``stop.graceful`` True), a signal only records a request; the run checks it
after each step, writes a checkpoint and the SAEs so far, and raises ``RunInterrupted``. Outside the
steps (loading, final evaluation) and on a second signal, ``RunInterrupted`` is raised at once: the
files the run has written are complete (atomic writes), and resuming continues from the last
checkpoint. Handlers are installed only in the main thread (Python delivers signals there) and the
previous ones are restored on exit.

    with StopSignals() as stop:
        stop.graceful = True
        for batch in batches:
            trainer.step(batch)
            if stop.requested: ...   # save, then raise RunInterrupted
"""

from __future__ import annotations

import signal
import threading

__all__ = ["RunInterrupted", "StopSignals"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by SIGINT or SIGTERM. A KeyboardInterrupt, so that library code catching
    ``Exception`` does not swallow it. ``exit_code`` is the shell's convention (130, 143)."""

    def __init__(self, signum: int, message: str, resumable: bool = False):
        super().__init__(message)
        self.signum = signum
        self.resumable = resumable
        """Whether ``resume`` continues the run (it has a checkpoint to continue from)."""
        self.signal = signal.Signals(signum).name
        self.exit_code = 128 + signum

    def __str__(self) -> str:
        return str(self.args[0])


class StopSignals:
    """Turns SIGINT / SIGTERM into a stop request (see the module docstring)."""

    def __init__(self) -> None:
        self.requested: int | None = None
        """The first signal received while ``graceful``, else None."""
        self.graceful = False
        """True while the run can stop cleanly after its current step."""
        self.where = "before training started; nothing was trained"
        """What an immediate stop interrupts, for its message."""
        self.resumable = False
        """Whether the run could be resumed after an immediate stop now."""
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> bool:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
        return False

    def _handle(self, signum: int, frame) -> None:
        if self.graceful and self.requested is None:
            self.requested = signum
            return
        name = signal.Signals(signum).name
        where = "while saving after the first signal" if self.requested is not None else self.where
        raise RunInterrupted(signum, f"stopped by {name} {where}", self.resumable or self.requested is not None)
