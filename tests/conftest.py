from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers import POSTGRES_URL, ROOT, postgres_available

from tuning.data import Arrays, load_arrays, to_device
from tuning.storage import mask_url

# Tests must not leave workers waiting 30 s for a dead trial's heartbeat.
os.environ.setdefault("TUNING_HEARTBEAT_INTERVAL", "1")
os.environ.setdefault("TUNING_GRACE_PERIOD", "3")
# One in-process worker unless a test asks for more: a search's default on the CPU is one
# worker per core (tests/test_workers.py checks it), which would make every end-to-end test
# start worker processes on cores the other test process is using.
os.environ.setdefault("TUNING_WORKERS", "1")
# Under pytest-xdist the test processes share the cores: one thread each.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else
                      max(1, min(2, os.cpu_count() or 1)))

# Tests that cut off or fill shared system state (a mount, a network link, the one PostgreSQL
# server, which a test restarts) run one at a time, in one process: every test of these files,
# and those marked `serial` or `postgres`.
SERIAL_FILES = {"test_multihost.py", "test_full_disk.py"}
# Module-scoped fixtures that build a real study by training (up to a minute each): the tests
# that use one run in one process, in a row, so that it is built once, not once per process.
SHARED_STUDIES = {"small_study", "tiny_study", "existing", "study_dir", "mnist_study"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "serial: shares system state with the other serial "
                                       "tests (a mount, the PostgreSQL server): one at a time")


# tryfirst: xdist reads the groups in a hook of its own, in each test process, which without
# it ran first and found none (so the serial tests ran side by side).
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Group the tests that must not overlap, and those that share a study fixture, for
    `--dist loadgroup`: it sends a group's tests to one process, largest groups first, so the
    serial group (minutes) starts at once and does not finish last."""
    for item in items:
        if (item.path.name in SERIAL_FILES or item.get_closest_marker("serial")
                or item.get_closest_marker("postgres")):
            item.add_marker(pytest.mark.xdist_group("serial"))
        elif shared := SHARED_STUDIES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.xdist_group(f"{item.path.name}:{min(shared)}"))


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


CHEAP_SPACE = """[space]
# One block of 8 channels, batches of 256, no augmentation: an epoch on mnist-sample takes
# about a second, where the built-in space's largest networks take up to 20.
optimizer = { choices = ["adam", "sgd"] }
lr = { low = 1e-3, high = 1e-1, log = true }
channels = 8
activation = "relu"
batch_size = 256
crop_padding = 0
"""


@pytest.fixture(scope="session")
def cheap_space() -> Callable[[Path], Path]:
    """`cheap_space(folder)`: the study file `mnist` in `folder`/studies keeps the built-in
    [study] table (data set, epochs, sampler, pruner, seed) but searches CHEAP_SPACE. For
    end-to-end tests of targets, workers, signals, faults and output, which hold whatever
    network a trial trains."""
    def rewrite(folder: Path) -> Path:
        builtin = (ROOT / "tuning" / "studies" / "mnist.toml").read_text()
        (folder / "studies" / "mnist.toml").write_text(builtin.split("[space]", 1)[0]
                                                       + CHEAP_SPACE)
        return folder

    return rewrite
