"""Interruption: SIGINT (Ctrl+C) and SIGTERM (`ray job stop`, a preempted driver) stop a run; they
never decide anything (docs/design.md, "Interrupted runs").

While a command drives a run (`interruptible()`), the first of these signals only sets a flag and
says so. Every Ray Tune experiment of the run has `tune_stopper()` as its stopper, so Tune stops its
trials (they leave no record: `resume` trains them again) and returns; the driver then meets
`check()` before it decides or starts anything and raises `RunInterrupted`, and the run's state says
`interrupted`. Tune's own SIGINT handler is switched off (`TUNE_DISABLE_SIGINT_HANDLER`, read when
an experiment starts): it ends the experiment as if it were complete, so a stage would be decided
from the trials that happened to finish, and it suggests `Tuner.restore`, which is not how a run
continues. A second signal raises KeyboardInterrupt at once, for a driver that must stop now.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_received: list[int] = []  # the signals received while interruptible, in order


class RunInterrupted(Exception):
    """The run was interrupted by a signal; nothing was decided from partial work."""

    def __init__(self, signal_name: str):
        super().__init__(f"interrupted by {signal_name}")
        self.signal_name = signal_name

    @property
    def exit_code(self) -> int:
        """The shell's convention: 128 + the signal's number (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + signal.Signals[self.signal_name].value


def requested() -> str | None:
    """The name of the first signal received, or None."""
    return signal.Signals(_received[0]).name if _received else None


def check() -> None:
    """Raise RunInterrupted if a signal arrived: call before deciding or starting anything."""
    name = requested()
    if name is not None:
        raise RunInterrupted(name)


def _handle(signum, frame) -> None:
    if _received:
        raise KeyboardInterrupt  # the second signal: stop now, wherever the driver is
    _received.append(signum)
    print(f"\n{signal.Signals(signum).name}: stopping the running trials; nothing is decided from partial work "
          "(send it again to stop at once)", file=sys.stderr, flush=True)


@contextmanager
def interruptible():
    """SIGINT and SIGTERM set the flag inside the block (main thread only: Python handles signals
    there; elsewhere the process's handlers stay as they are). The previous handlers come back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.getsignal(number) for number in SIGNALS}
    tune_handler = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    _received.clear()
    for number in SIGNALS:
        signal.signal(number, _handle)
    try:
        yield
    finally:
        _received.clear()
        for number, handler in previous.items():
            signal.signal(number, handler)
        if tune_handler is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = tune_handler


def tune_stopper(done=None):
    """A Ray Tune `Stopper` that ends the whole experiment once a signal has arrived, or once `done()`
    says the experiment has what it needs (a decided race: the trials still running are stopped)."""
    from ray.tune.stopper import Stopper

    class InterruptStopper(Stopper):
        def __call__(self, trial_id: str, result: dict) -> bool:
            return False  # a trial ends when its training does

        def stop_all(self) -> bool:
            return bool(_received) or (done is not None and done())

    return InterruptStopper()


__all__ = ["RunInterrupted", "check", "interruptible", "requested", "tune_stopper"]
