from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch
from helpers import POSTGRES_URL, ROOT, postgres_available

from tuning.data import Arrays, load_arrays, to_device
from tuning.storage import mask_url

# Tests must not leave workers waiting 30 s for a dead trial's heartbeat.
os.environ.setdefault("TUNING_HEARTBEAT_INTERVAL", "1")
os.environ.setdefault("TUNING_GRACE_PERIOD", "3")
# Under pytest-xdist the test processes share the cores: one thread each.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else
                      max(1, min(2, os.cpu_count() or 1)))

# Files whose tests restart, cut off or fill shared system state; they run in one process.
SERIAL_FILES = {"test_faults.py", "test_multihost.py", "test_full_disk.py"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Group the tests that must not overlap (see SERIAL_FILES; and every test of the one
    PostgreSQL server, which one of them restarts) for `--dist loadgroup`."""
    for item in items:
        if item.path.name in SERIAL_FILES or item.get_closest_marker("postgres"):
            item.add_marker(pytest.mark.xdist_group("serial"))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tests marked `postgres` skip when no server answers at POSTGRES_URL. The server is
    probed when the first such test is set up, not while tests are collected."""
    if item.get_closest_marker("postgres") and not postgres_available():
        pytest.skip(f"no PostgreSQL at {mask_url(POSTGRES_URL)}")


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


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """An empty working directory with the project's study files, as a user's checkout has."""
    (tmp_path / "studies").mkdir()
    for toml in (ROOT / "tuning" / "studies").glob("*.toml"):
        (tmp_path / "studies" / toml.name).write_text(toml.read_text())
    return tmp_path
