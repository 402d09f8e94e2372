"""Plain helpers shared by the tests: paths, the test database's address, and running the CLI
in a subprocess. Fixtures live in conftest.py; tests import these with `from helpers import ...`
(pytest puts tests/ on sys.path)."""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
POSTGRES_URL = os.environ.get("TUNING_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def small_space() -> dict:
    """A search space of a few cheap networks (8 channels, batch 128) over optimizer and lr:
    what the tests of the objective train."""
    from tuning.study_file import parse_study

    return parse_study({"space": {
    "optimizer": {"choices": ["adam", "sgd"]},
    "lr": {"low": 1e-3, "high": 1e-1, "log": True},
    "channels": 8,
    "activation": "relu",
    "batch_size": 128,
}}).space


@functools.cache
def postgres_available() -> bool:
    """Whether the server at POSTGRES_URL accepts a connection; probed once per process."""
    try:
        import psycopg

        conninfo = re.sub(r"^postgresql\+\w+://", "postgresql://", POSTGRES_URL)
        with psycopg.connect(conninfo, connect_timeout=3):
            return True
    except Exception:
        return False


def load_script(name: str) -> ModuleType:
    """Import `scripts/NAME.py` as module NAME, without putting scripts/ on sys.path."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while it executes
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def run_cli(*args: str, cwd: Path, timeout: float = 300, env: dict | None = None,
            module: str = "tuning.search") -> subprocess.CompletedProcess:
    """Run a CLI module in a subprocess from `cwd` (which must hold a studies/ folder)."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def start_search(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`python -m tuning.search ARGS` in the background, from `cwd`, with `env` added."""
    return subprocess.Popen([sys.executable, "-m", "tuning.search", *args], cwd=cwd,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
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


def wait_for_training(url: str, name: str, proc: subprocess.Popen,
                      timeout: float = 120):
    """A running trial that has recorded its seed: its parameters are sampled, it trains."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = wait_for_running_trials(url, name, proc)
        if training := [t for t in running if "seed" in t.user_attrs]:
            return training[0]
        time.sleep(0.1)
    raise AssertionError("no trial started training")


def exit_status(main, args: list[str]) -> int:
    """The exit status of a command's `main(args)` run in this process: argparse's own errors
    raise SystemExit instead of returning."""
    try:
        return main(args)
    except SystemExit as exc:
        return exc.code


def finished(study) -> list:
    """The study's finished trials: complete or pruned."""
    from optuna.trial import TrialState

    return [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def worker_pid(trial) -> int:
    """The pid of the worker running `trial` (its 'worker' attribute is host:pid)."""
    return int(trial.user_attrs["worker"].rsplit(":", 1)[1])
