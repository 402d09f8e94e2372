"""A data set's download into a data directory that several workers share, leaving nothing
behind when it fails.

Workers started together all find the data missing: one downloads under a lock file in the
directory while the others wait, then read what it fetched. An attempt that fails or is cut
short removes what it made (the folders it created, files cut short, which would fail every
later read, and its lock file), so an offline machine is left as it was.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from filelock import FileLock

T = TypeVar("T")


def download_once(root: Path, lock_name: str, written: Iterable[Path],
                  fetch: Callable[[], T | None]) -> T | None:
    """`fetch()` run under the lock file root/`lock_name`, creating `root` if need be; None
    when it fails.

    `written` are the files and folders a download writes (MNIST's root/MNIST, CIFAR's archive
    and the folder it extracts to). When `fetch` returns None or raises, whatever of them it
    made is removed, and so are the lock file and the directories created for it: a waiter
    then makes a lock file of its own; one that finds `root` gone has nothing to read (the
    attempt that made it failed) and gets None. An exception from `fetch` is raised again.
    """
    from tuning.storage import still_the_file_found

    made = [d for d in (root, *root.parents) if not d.exists()]  # innermost first
    root.mkdir(parents=True, exist_ok=True)
    lock_path = root / lock_name
    with still_the_file_found(lock_path) as found_there:
        lock = FileLock(str(lock_path))
        try:
            lock.acquire()
        except FileNotFoundError:  # `root` was removed meanwhile, by a failed attempt
            return None
        before = {path: _tree(path) for path in written}
        result = None
        try:
            result = fetch()
        finally:
            if result is None:
                for path, there in before.items():
                    _remove_new(path, there)
                if not found_there():
                    with contextlib.suppress(OSError):  # held still: a waiter makes its own
                        lock_path.unlink()
                for directory in made:
                    with contextlib.suppress(OSError):  # not empty: another's lock file
                        directory.rmdir()
            lock.release()
    return result


def _tree(path: Path) -> set[Path]:
    """`path` and, for a folder, everything under it; empty when it does not exist."""
    if path.is_dir() and not path.is_symlink():
        return {path, *path.rglob("*")}
    return {path} if path.exists() or path.is_symlink() else set()


def _remove_new(path: Path, before: set[Path]) -> None:
    """Remove what is at or under `path` but not in `before`."""
    # Deepest first, so that a folder is empty by the time its turn comes.
    for new in sorted(_tree(path) - before, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            if new.is_dir() and not new.is_symlink():
                new.rmdir()
            else:
                new.unlink()
