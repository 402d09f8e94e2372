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
"""The shortest gap between ticks taken for a pause. A busy process is seldom late by more
than a fraction of a second; one wrongly taken for paused only waits a grace period longer
before failing dead workers' trials."""


def _clock() -> float:
    # Boot time counts a suspended host's sleep, which the database's clock (the heartbeats'
    # timestamps) counts too; the monotonic clock stops during it.
    if hasattr(time, "CLOCK_BOOTTIME"):
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    return time.monotonic()


class PauseWatch:
    """When this process last resumed from a pause, and how long that pause was, as far as its
    clock shows."""

    def __init__(self, clock: Callable[[], float] = _clock):
        self._clock = clock
        self._last_tick = clock()
        self._resumed_at = -float("inf")
        self._paused_for = 0.0

    def tick(self) -> None:
        now = self._clock()
        gap = now - self._last_tick
        if gap > PAUSE_S:
            self._resumed_at, self._paused_for = now, gap
        self._last_tick = now

    def paused_within(self, seconds: float, longer_than: float = PAUSE_S) -> bool:
        """Whether the process resumed in the last `seconds` from a pause of more than
        `longer_than`, or is resuming from one now (the ticking thread has not run since)."""
        now = self._clock()
        if now - self._last_tick > max(PAUSE_S, longer_than):
            return True
        return now - self._resumed_at < seconds and self._paused_for > longer_than


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
