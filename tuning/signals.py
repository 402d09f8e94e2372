"""Ctrl-C and SIGTERM without corrupting the study.

A signal that raises in the middle of a storage write can leave a SQLite transaction open, and
the write that marks the trial failed then waits on that lock. So a first signal raises at once
only while the process is training (no storage call under way) and is otherwise held until the
next safe point; a second signal raises wherever the process is.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from typing import TypeVar

T = TypeVar("T")


class Interrupted(BaseException):
    """A stop signal: the running trial is marked FAIL and the process exits 128 + signal.

    A BaseException, like KeyboardInterrupt, so that no `except Exception` swallows it.
    """

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


class GracefulStop:
    """Installs SIGINT and SIGTERM handlers that raise Interrupted only at safe points."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._training = False

    def install(self) -> GracefulStop:
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        second = self.signum is not None
        self.signum = self.signum or signum
        if self._training or second:
            raise Interrupted(self.signum)

    def check(self) -> None:
        """A safe point: raise if a stop was asked for."""
        if self.signum is not None:
            raise Interrupted(self.signum)

    @contextlib.contextmanager
    def training(self):
        """While inside, a stop signal raises at once."""
        self.check()
        self._training = True
        try:
            yield
        finally:
            self._training = False

    def interruptible(self, items: Iterator[T]) -> Iterator[T]:
        """Iterate, with each step (an epoch of training) inside `training()`."""
        while True:
            with self.training():
                item = next(items, None)
            if item is None:
                return
            yield item


class NoStop(GracefulStop):
    """For callers that handle signals themselves (tests, in-process benchmarks)."""

    def install(self) -> GracefulStop:
        return self
