from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tuning.data import Arrays, load_arrays, to_device

ROOT = Path(__file__).resolve().parents[1]
POSTGRES_URL = os.environ.get("TUNING_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")

# Tests must not leave workers waiting 30 s for a dead trial's heartbeat.
os.environ.setdefault("TUNING_HEARTBEAT_INTERVAL", "1")
os.environ.setdefault("TUNING_GRACE_PERIOD", "3")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def sample_arrays() -> Arrays:
    return load_arrays("mnist-sample")


@pytest.fixture(scope="session")
def tiny_arrays(sample_arrays: Arrays) -> Arrays:
    """A few hundred real digits: enough to train for a step or two in a test."""
    a = sample_arrays
    return dataclasses.replace(a, train_x=a.train_x[:512], train_y=a.train_y[:512],
                               val_x=a.val_x[:200], val_y=a.val_y[:200])


@pytest.fixture(scope="session")
def tiny_data(tiny_arrays):
    return to_device(tiny_arrays, torch.device("cpu"))


def postgres_available() -> bool:
    try:
        import psycopg

        with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test",
                             connect_timeout=3):
            return True
    except Exception:
        return False


def run_cli(*args: str, cwd: Path, timeout: float = 300, env: dict | None = None,
            module: str = "tuning.search") -> subprocess.CompletedProcess:
    """Run a CLI module in a subprocess from `cwd` (which must hold a studies/ folder)."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """An empty working directory with the project's study files, as a user's checkout has."""
    (tmp_path / "studies").mkdir()
    for toml in (ROOT / "studies").glob("*.toml"):
        (tmp_path / "studies" / toml.name).write_text(toml.read_text())
    return tmp_path
