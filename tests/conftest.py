from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
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


def start_search(*args: str, cwd: Path) -> subprocess.Popen:
    """`python -m tuning.search ARGS` in the background, from `cwd`."""
    return subprocess.Popen([sys.executable, "-m", "tuning.search", *args], cwd=cwd,
                            env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def load_study(url: str, name: str):
    """Read a study, opening the storage the way tuning does (under its init lock), so that
    polling never races the process that is creating the file."""
    import optuna

    from tuning.storage import open_storage

    return optuna.load_study(study_name=name, storage=open_storage(url, heartbeat=False))


def wait_for_running_trials(url: str, name: str, proc: subprocess.Popen, count: int = 1,
                            timeout: float = 120) -> list:
    """Poll until `count` trials of the study run and have recorded their worker."""
    from optuna.trial import TrialState

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        try:
            running = [t for t in load_study(url, name).trials
                       if t.state == TrialState.RUNNING and "worker" in t.user_attrs]
        except Exception:  # the study or its tables are not there yet
            running = []
        if len(running) >= count:
            return running
        time.sleep(0.3)
    raise AssertionError(f"{count} running trial(s) never appeared")


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """An empty working directory with the project's study files, as a user's checkout has."""
    (tmp_path / "studies").mkdir()
    for toml in (ROOT / "tuning" / "studies").glob("*.toml"):
        (tmp_path / "studies" / toml.name).write_text(toml.read_text())
    return tmp_path
