"""Whether this process was just paused, so that what it sees of the other workers is stale.

A worker stopped for a while (SIGSTOP, a frozen cgroup, a suspended VM, a job suspended by its
scheduler) finds every other worker's last heartbeat old once it runs again; on SQLite it may
even have held the write lock that kept them from beating. Those workers are alive: their
trials must not be failed as dead until they have had a grace period to beat again. A thread
notes the time every TICK_S; a gap between two notes far longer than that is a pause.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

TICK_S = 0.5
PAUSE_S = 2.0
"""A gap this long between ticks is a pause. A busy process is late by milliseconds (its
threads share the interpreter, switching every 5 ms); one that is wrongly taken for paused
only waits a grace period longer before failing dead workers' trials."""


class PauseWatch:
    """When this process last resumed from a pause, as far as its clock shows."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._last_tick = clock()
        self._resumed_at = -float("inf")

    def tick(self) -> None:
        now = self._clock()
        if now - self._last_tick > PAUSE_S:
            self._resumed_at = now
        self._last_tick = now

    def paused_within(self, seconds: float) -> bool:
        """Whether the process resumed from a pause in the last `seconds`, or is resuming
        now (the ticking thread has not run since)."""
        now = self._clock()
        return now - self._last_tick > PAUSE_S or now - self._resumed_at < seconds


_watch: PauseWatch | None = None
_start_lock = threading.Lock()


def _keep_ticking(watch: PauseWatch) -> None:
    while True:
        time.sleep(TICK_S)
        watch.tick()


def pause_watch() -> PauseWatch:
    """This process's PauseWatch, ticking from the first call on."""
    global _watch
    with _start_lock:
        if _watch is None:
            _watch = PauseWatch()
            threading.Thread(target=_keep_ticking, args=(_watch,), name="pause-watch",
                             daemon=True).start()
        return _watch


def paused_within(seconds: float) -> bool:
    """Whether this process resumed from a pause in the last `seconds`; False where nothing
    watches (a process that runs no trials)."""
    watch = _watch
    return watch is not None and watch.paused_within(seconds)
