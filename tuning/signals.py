"""Ctrl-C, SIGTERM and SIGHUP without corrupting the study.

A signal that raises in the middle of a storage write can leave a SQLite transaction open, and
the write that marks the trial failed then waits on that lock; raised inside a garbage
collector's callback it is printed and lost. So a first signal only sets a flag, and the
training loop checks it after every step (a safe point, milliseconds away) and the worker loop
before every trial; a second signal raises wherever the process is.
"""

from __future__ import annotations

import os
import signal
import threading
import time

# A scheduler stopping a job signals every process of it, and the launcher passes the same
# signal on: a repeat this soon is one request delivered twice, not a second Ctrl-C.
REPEAT_WINDOW_S = 2.0


class Interrupted(BaseException):
    """A stop signal: the running trial is marked FAIL and the process exits 128 + signal.

    A BaseException, like KeyboardInterrupt, so that no `except Exception` swallows it.
    """

    def __init__(self, signum: int, orphaned: bool = False):
        # A launcher's worker gets SIGTERM from the kernel when the launcher dies: the reason
        # then is the launcher, not whoever sends SIGTERM.
        super().__init__(signal.Signals(signum).name
                         + (" after its parent process ended" if orphaned else ""))
        self.signum = signum
        self.trial: int | None = None
        """The number of the trial it stopped (None: it came between trials)."""
        self.trial_recorded = False
        """Whether that trial was marked failed and queued again."""

    def outcome(self) -> str:
        """What the stop did, for the worker's last line."""
        if self.trial is None:
            return f"stopped by {self}"
        if self.trial_recorded:
            return (f"stopped by {self}: its trial {self.trial} is marked failed and queued to "
                    "run again first")
        return (f"stopped by {self}: its trial {self.trial} could not be marked failed and is "
                "retried once a worker finds it stale")

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


class GracefulStop:
    """SIGINT, SIGTERM and SIGHUP (a closed terminal) handlers that make `check()` raise
    Interrupted at the next safe point."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.first_at = 0.0
        self.parent = os.getppid()
        self.orphaned = False

    def install(self) -> GracefulStop:
        global _installed
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(signum) != signal.SIG_IGN:  # ignored stays ignored (nohup)
                signal.signal(signum, self._handle)
        _installed = self
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is None:
            self.signum, self.first_at = signum, time.monotonic()
            # The kernel reparents the orphans before it sends the parent-death signal.
            self.orphaned = os.getppid() != self.parent
        elif signum != self.signum or time.monotonic() - self.first_at > REPEAT_WINDOW_S:
            raise Interrupted(self.signum, self.orphaned)  # asked twice: stop now

    def requested(self) -> Interrupted | None:
        """The stop asked for, if one was."""
        return None if self.signum is None else Interrupted(self.signum, self.orphaned)

    def check(self) -> None:
        """A safe point: raise if a stop was asked for."""
        stop = self.requested()
        if stop is not None:
            raise stop


class NoStop(GracefulStop):
    """For callers that handle signals themselves (tests, in-process benchmarks)."""

    def install(self) -> GracefulStop:
        return self


_installed: GracefulStop | None = None


def requested_stop() -> Interrupted | None:
    """The stop this process was asked for, if any: an error that follows one (a second signal
    raised inside the database's driver, which wraps it in errors of its own) is that stop's
    end, not a crash."""
    return None if _installed is None else _installed.requested()


def raise_if_stop_requested() -> None:
    """A safe point for code that is handed no GracefulStop: a storage call waiting out a
    database outage, which may last minutes, raises Interrupted here if a stop was asked for.
    In the main thread only, where trials run and Interrupted is handled; not once another
    handler replaced this one's (a test, a caller restoring its own)."""
    if (_installed is not None and threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) == _installed._handle):
        _installed.check()
