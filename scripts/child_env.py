"""The environment for a benchmark's child processes: this one, with the repository first on
the Python path (the caller's own PYTHONPATH kept after it, e.g. packages installed with
pip --target)."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child_env(first: Path = ROOT, /, **extra: str) -> dict[str, str]:
    """os.environ with `first` (this repository, or another copy of it) first on PYTHONPATH,
    and `extra` on top."""
    path = os.pathsep.join(filter(None, (str(first), os.environ.get("PYTHONPATH"))))
    return {**os.environ, "PYTHONPATH": path, **extra}
