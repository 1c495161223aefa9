"""Progress lines on the terminal, read from the trial records (the source of truth, so they are
right after a resume too): trials done of the total, failures, collapsed trials, best score so far
and, where the caller can estimate it, the time left (search/time_left.py).
Used by every long run: a stage, the final evaluation, the fidelity pilot. Pure Python."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from typing import Callable

# Who else wants each progress line besides the terminal (the Python API's tqdm bar): called with
# (prefix, trials done, the line).
_listeners: list[Callable[[str, int, str], None]] = []


@contextlib.contextmanager
def listening(listener: Callable[[str, int, str], None]):
    """Pass every progress line to `listener` too while the block runs."""
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)


def quiet_tune_output() -> None:
    """Our progress lines (from the records) replace Ray Tune's tables and info logs on the terminal."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    logging.getLogger("ray.tune").setLevel(logging.WARNING)


class RecordProgress(threading.Thread):
    def __init__(self, prefix: str, read_records: Callable[[], list[dict]], total, interval_s: float = 2.0, out=None,
                 time_left: Callable[[list[dict]], str | None] | None = None):
        super().__init__(daemon=True)
        self.prefix, self.read_records, self.total, self.interval_s, self.out = prefix, read_records, total, interval_s, out
        self.time_left = time_left  # records -> "at most 3.2 min left", or None while nothing is measured
        self.stopped = threading.Event()
        self.last_line = ""

    done = 0  # trials with a record, as of the last line

    def line(self) -> str:
        records = self.read_records()
        self.done = len(records)
        failed = sum(1 for r in records if r["status"] != "finished")
        collapsed = sum(1 for r in records if r.get("collapsed"))
        scored = [(r["score"], r.get("choice") or "") for r in records if r["status"] == "finished" and r["score"] is not None]
        best = max(scored) if scored else None
        text = f"{self.prefix}: {len(records)}/{self.total} trials done"
        text += f", {failed} failed" if failed else ""
        text += f", {collapsed} collapsed" if collapsed else ""
        text += f", best trial so far {best[0]:.4f}" + (f" ({best[1]})" if best[1] else "") if best else ""
        left = self.time_left(records) if self.time_left is not None else None
        text += f", {left}" if left else ""
        return text

    def report(self) -> None:
        line = self.line()
        if line != self.last_line:
            print(line, file=self.out or sys.stdout, flush=True)
            self.last_line = line
            for listener in list(_listeners):
                listener(self.prefix, self.done, line)

    def run(self) -> None:
        while not self.stopped.wait(self.interval_s):
            self.report()

    def stop(self) -> None:
        self.stopped.set()
        self.report()


__all__ = ["RecordProgress", "listening", "quiet_tune_output"]
