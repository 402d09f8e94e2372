"""Parallel workers on one study: exact targets, no lost trials, SQLite and PostgreSQL."""

from __future__ import annotations

import io
import logging
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter

import optuna
import pytest
import yaml
from helpers import (
    POSTGRES_URL,
    ROOT,
    finished,
    load_study,
    run_cli,
    start_search,
    wait_for_running_trials,
    wait_for_training,
    worker_pid,
)
from optuna.trial import TrialState

from tuning.cli import Progress
from tuning.runner import StudyLock, run_trials
from tuning.signals import Interrupted
from tuning.storage import mask_url, open_storage, resolve_url

FAST = ("--dataset", "mnist-sample", "--epochs", "1")


def load(url, name):
    return load_study(url, name)


# --- stress: 8 processes, one SQLite file, an objective that does no training ---------------

def _quadratic(trial):
    x = trial.suggest_float("x", -10, 10)
    trial.report(x * x, 1)
    return x * x


def _stress_worker(url: str, name: str, target: int, index: int, errors) -> None:
    try:
        study = optuna.load_study(study_name=name, storage=open_storage(url),
                                  sampler=optuna.samplers.RandomSampler(seed=index))
        run_trials(study, _quadratic, target, StudyLock(url, name))
    except Exception as exc:  # reported to the parent, which fails the test
        errors.put(f"worker {index}: {type(exc).__name__}: {exc}")


@pytest.mark.slow
def test_eight_workers_on_one_sqlite_file_lose_nothing(tmp_path):
    url, name, target = f"sqlite:///{tmp_path}/stress.db", "stress", 400
    optuna.create_study(study_name=name, storage=open_storage(url, create=True))
    # Eight separate processes, each with its own storage and connections, forked from a fresh
    # server process that imported torch, Optuna and tuning once (it opened no database):
    # started by "spawn", each imported them again, eight at once on two cores.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["tuning.runner", "tuning.storage", "yaml"])
    errors = ctx.Queue()
    procs = [ctx.Process(target=_stress_worker, args=(url, name, target, i, errors))
             for i in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=600)
    problems = []
    while not errors.empty():
        problems.append(errors.get())
    assert problems == []  # no 'database is locked', no other error
    assert all(p.exitcode == 0 for p in procs)
    study = load(url, name)
    states = Counter(t.state for t in study.trials)
    assert states == {TrialState.COMPLETE: target}  # none failed, none lost, none extra
    numbers = [t.number for t in study.trials]
    assert sorted(numbers) == list(range(target))  # no duplicates, no gaps


# --- the real CLI with several workers -------------------------------------------------------

@pytest.mark.slow
def test_two_cpu_workers_share_the_study_and_hit_the_target_exactly(workdir, cheap_space):
    cheap_space(workdir)
    result = run_cli("--trials", "6", "--workers", "2", *FAST, cwd=workdir)
    assert result.returncode == 0, result.stderr
    study = load(f"sqlite:///{workdir}/studies/mnist.db", "mnist")
    assert len(finished(study)) == 6 and len(study.trials) == 6
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2
    assert "started 2 workers" in result.stderr


@pytest.mark.slow
def test_sigkill_of_a_worker_mid_trial_loses_no_trial(workdir, cheap_space):
    cheap_space(workdir)
    # 8 epochs of a cheap network: seconds of training, from its seed to its end, for the kill
    # to land in.
    proc = start_search("--trials", "4", "--workers", "2", "--dataset", "mnist-sample",
                        "--epochs", "8", cwd=workdir)
    url = f"sqlite:///{workdir}/studies/mnist.db"
    for _ in range(3):
        victim = wait_for_training(url, "mnist", proc)
        os.kill(worker_pid(victim), signal.SIGKILL)
        if load(url, "mnist").trials[victim.number].state == TrialState.RUNNING:
            break  # killed inside the trial
        # It ended just before the kill (the launcher restarts the worker): kill another.
    else:
        pytest.fail("every trial ended before its worker was killed")
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err
    assert "killed by signal 9" in err
    study = load(url, "mnist")
    by_number = {t.number: t for t in study.trials}
    killed = by_number[victim.number]  # as it is now: it had sampled its parameters by then
    assert killed.state == TrialState.FAIL
    # Failed by the launcher that saw its worker die, not a grace period later by a heartbeat.
    assert killed.user_attrs["fail_reason"] == "its worker killed by signal 9"
    assert len(finished(study)) == 4
    assert not [t for t in study.trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == victim.number]
    assert retries and retries[0].params == killed.params
    assert retries[0].user_attrs["seed"] == killed.user_attrs["seed"]


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_stopping_the_launcher_stops_every_worker_cleanly(workdir, cheap_space, sig, code):
    cheap_space(workdir)
    # No pruning: each worker stays inside one 20-epoch trial, so both are in a trial when the
    # signal comes (successive halving stops most trials after a second's epoch, and a worker
    # between two trials has none to fail).
    proc = start_search("--trials", "40", "--workers", "2", "--dataset", "mnist-sample",
                        "--epochs", "20", "--pruner", "none", cwd=workdir)
    url = f"sqlite:///{workdir}/studies/mnist.db"
    wait_for_running_trials(url, "mnist", proc, count=2)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    trials = load(url, "mnist").trials
    states = Counter(t.state for t in trials)
    assert states[TrialState.RUNNING] == 0 and states[TrialState.FAIL] == 2
    assert "Traceback" not in err
    # Each trial says which signal stopped the run: the one the launcher got.
    assert {t.user_attrs.get("fail_reason") for t in trials if t.state == TrialState.FAIL} == \
        {f"stopped by {signal.Signals(sig).name}"}
    assert f"stopped by {signal.Signals(sig).name}: the running trials were marked failed " \
        "and queued to run again first" in err


def test_a_stop_that_cut_no_trial_short_says_so(monkeypatch, capsys):
    """Ctrl-C while the workers still read the data: no trial was marked failed, and the last
    line must not say the running ones were."""
    from tuning import search

    study = optuna.create_study()
    study.add_trial(optuna.create_trial(  # an earlier run's stop
        state=TrialState.FAIL, user_attrs={"fail_reason": "stopped by SIGINT"}))
    monkeypatch.setattr(search, "summarize", lambda *args: None)
    monkeypatch.setattr(search, "continue_command", lambda *args: "tuning search")
    assert search._stopped(study, None, None, "tuning search", None, 130,
                           "the running trials were") == 130
    assert capsys.readouterr().err == "stopped by SIGINT: no trial was running\n"
    monkeypatch.setattr(search, "run_started", lambda: time.monotonic() - 3600)  # this run's
    search._stopped(study, None, None, "tuning search", None, 130, "the running trials were")
    assert capsys.readouterr().err == ("stopped by SIGINT: the running trials were marked "
                                       "failed and queued to run again first\n")


@pytest.mark.slow
def test_a_worker_started_by_hand_says_why_it_stopped(workdir, cheap_space):
    cheap_space(workdir)
    created = run_cli("--create-only", "--trials", "4", "--dataset", "mnist-sample", "--epochs",
                      "20", "--pruner", "none", cwd=workdir)
    assert created.returncode == 0, created.stderr
    worker = subprocess.Popen([sys.executable, "-m", "tuning.worker", "--study", "mnist"],
                              cwd=workdir, env={**os.environ, "PYTHONPATH": str(ROOT)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"sqlite:///{workdir}/studies/mnist.db"
    wait_for_running_trials(url, "mnist", worker)
    worker.send_signal(signal.SIGTERM)  # a scheduler ending the job
    _, err = worker.communicate(timeout=120)
    assert worker.returncode == 143 and "Traceback" not in err, err
    running = load_study(url, "mnist").trials[0]
    assert running.state == TrialState.FAIL
    assert f"stopped by SIGTERM: its trial {running.number} is marked failed and queued to " \
        "run again first" in err


def test_a_stop_says_what_became_of_the_trial_or_that_there_was_none():
    stop = Interrupted(signal.SIGTERM)
    assert stop.outcome() == "stopped by SIGTERM"  # between trials, or waiting for one
    stop.trial = 4
    assert stop.outcome() == "stopped by SIGTERM: its trial 4 could not be marked failed and " \
        "is retried once a worker finds it stale"
    stop.trial_recorded = True
    assert stop.outcome() == "stopped by SIGTERM: its trial 4 is marked failed and queued to " \
        "run again first"


# --- PostgreSQL: the real server ------------------------------------------------------------

@pytest.fixture
def pg_study():
    name = f"test-{uuid.uuid4().hex[:8]}"
    yield name
    try:
        optuna.delete_study(study_name=name, storage=resolve_url(POSTGRES_URL))
    except KeyError:
        pass


@pytest.mark.postgres
@pytest.mark.slow
def test_two_worker_processes_share_a_postgres_study(workdir, cheap_space, pg_study):
    cheap_space(workdir)
    created = run_cli("--create-only", "--study", pg_study, "--config", "studies/mnist.toml",
                      "--storage", POSTGRES_URL, "--trials", "4", *FAST, cwd=workdir)
    assert created.returncode == 0, created.stderr
    assert "tuning worker" in created.stdout
    workers = [subprocess.Popen(
        [sys.executable, "-m", "tuning.worker", "--study", pg_study, "--storage", POSTGRES_URL,
         "--worker-index", str(i), "--threads", "1"],
        cwd=workdir, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    for w in workers:
        _, err = w.communicate(timeout=300)
        assert w.returncode == 0, err
    study = load(POSTGRES_URL, pg_study)
    assert len(finished(study)) == 4 and len(study.trials) == 4
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2


@pytest.mark.postgres
def test_postgres_url_is_mapped_to_the_installed_driver_and_masked():
    assert resolve_url("postgresql://u@h:5432/db").startswith("postgresql+psycopg://")
    assert mask_url("postgresql://u:secret@h/db") == "postgresql://u:***@h/db"
    os.environ["PGPASSWORD"] = "from-env"
    try:
        assert ":from-env@" in resolve_url("postgresql://u@h:5432/db")
    finally:
        del os.environ["PGPASSWORD"]



def test_a_password_file_keeps_the_spaces_of_its_password(tmp_path, monkeypatch):
    from sqlalchemy.engine import make_url

    secret = tmp_path / "pgpassword"
    secret.write_text(" pass word \n")  # as `echo` writes it: the line end is not the password
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSWORD_FILE", str(secret))
    assert make_url(resolve_url("postgresql://u@h:5432/db")).password == " pass word "


@pytest.mark.parametrize("backend", ["sqlite",
                                     pytest.param("postgres", marks=pytest.mark.postgres)])
def test_storage_roundtrip_on_every_backend(backend, tmp_path):
    url = f"sqlite:///{tmp_path}/s.db" if backend == "sqlite" else POSTGRES_URL
    name = f"roundtrip-{uuid.uuid4().hex[:8]}"
    study = optuna.create_study(study_name=name, storage=open_storage(url, create=True))
    try:
        study.set_user_attr("data", {"n_train": 3})
        lock = StudyLock(url, name)
        run_trials(study, _quadratic, 3, lock)
        lock.close()
        again = load(url, name)
        assert len(finished(again)) == 3 and again.user_attrs["data"] == {"n_train": 3}
    finally:
        optuna.delete_study(study_name=name, storage=resolve_url(url))


@pytest.mark.parametrize("changed_to, runs", [(5, 5), (2, 2)])
def test_running_workers_follow_a_target_raised_or_lowered_by_a_later_search(tmp_path,
                                                                            changed_to, runs):
    # Another `tuning search --trials N` on the study while its workers run (to give a cluster
    # search more trials, or fewer): they follow the stored target, not the one they began with.
    url, name = f"sqlite:///{tmp_path}/goal.db", "goal"
    study = optuna.create_study(study_name=name, storage=open_storage(url, create=True))
    study.set_user_attr("target_trials", 3)

    def objective(trial):
        if trial.number == 0:
            study.set_user_attr("target_trials", changed_to)
        return _quadratic(trial)

    lines = io.StringIO()
    lock = StudyLock(url, name)
    try:
        run_trials(study, objective, 3, lock, on_trial=Progress(3, 1, stream=lines))
    finally:
        lock.close()
    assert len(finished(load(url, name))) == runs
    assert f"[   1/{changed_to}]" in lines.getvalue()  # its lines count to the new target


def test_the_sampler_runs_outside_the_study_lock(tmp_path):
    """The lock covers reserving a slot of the target (counting and creating the trial); the
    sampler, slow for GP or multivariate TPE on hundreds of trials, runs after it, so that
    many workers do not queue behind one another's sampling."""
    url, name = f"sqlite:///{tmp_path}/lock.db", "lock"
    lock = StudyLock(url, name)
    held_while_sampling: list[bool] = []

    class Watching(optuna.samplers.TPESampler):
        def sample_relative(self, study, trial, search_space):
            held_while_sampling.append(lock._file_lock.is_locked)
            return super().sample_relative(study, trial, search_space)

    study = optuna.create_study(study_name=name, storage=open_storage(url, create=True),
                                sampler=Watching(seed=0, multivariate=True,
                                                 n_startup_trials=2))

    def objective(trial):
        return trial.suggest_float("x", -1, 1) ** 2 + trial.suggest_float("y", -1, 1) ** 2

    run_trials(study, objective, 6, lock)
    assert held_while_sampling and not any(held_while_sampling)
    assert len(finished(load(url, name))) == 6


# --- bad input ------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [["--workers", "0"], ["--workers-per-gpu", "0"]])
def test_zero_workers_is_rejected(args, workdir):
    result = run_cli(*args, cwd=workdir)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert list(workdir.rglob("*.db")) == []


def test_worker_for_a_missing_study_exits_2(workdir):
    result = run_cli("--study", "nothing-here", module="tuning.worker", cwd=workdir)
    assert result.returncode == 2
    assert "no study database" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert list(workdir.rglob("*.db")) == []


@pytest.mark.slow
def test_worker_whose_data_differ_exits_2(workdir, sample_arrays):
    import struct

    import numpy as np

    def write_idx(folder, n_train):
        folder.mkdir()
        a = sample_arrays
        for name, array in [("train-images-idx3-ubyte", a.train_x[:n_train, ..., 0]),
                            ("train-labels-idx1-ubyte", np.tile(np.arange(10), n_train // 10)),
                            ("t10k-images-idx3-ubyte", a.test_x[:50, ..., 0]),
                            ("t10k-labels-idx1-ubyte", a.test_y[:50])]:
            header = struct.pack(">HBB", 0, 8, array.ndim)
            header += struct.pack(f">{array.ndim}I", *array.shape)
            (folder / name).write_bytes(header + array.astype(np.uint8).tobytes())

    write_idx(workdir / "a", 200)
    write_idx(workdir / "b", 300)
    created = run_cli("--create-only", "--dataset", "mnist", "--data-dir", "a", cwd=workdir)
    assert created.returncode == 0, created.stderr
    result = run_cli("--study", "mnist", "--data-dir", "b", module="tuning.worker", cwd=workdir)
    assert result.returncode == 2
    assert "was run on other data" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# --- docker-compose.yml: parsed and checked, since no Docker engine runs here --------------

def test_compose_file_structure():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "create-study", "worker", "dashboard"} <= set(services)
    pg = services["postgres"]
    assert pg["healthcheck"]["test"] and any("/var/lib/postgresql/data" in v
                                             for v in pg["volumes"])
    assert "POSTGRES_PASSWORD" not in pg["environment"]  # only the _FILE form
    assert pg["environment"]["POSTGRES_PASSWORD_FILE"].startswith("/run/secrets/")
    worker = services["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert worker["depends_on"]["create-study"]["condition"] == "service_completed_successfully"
    assert services["create-study"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "--create-only" in services["create-study"]["command"]
    # Workers write the checkpoints the dashboard shows: one volume for all of them.
    for name in ("worker", "dashboard"):
        assert "artifacts:/app/artifacts" in services[name]["volumes"], name
    assert "artifacts" in compose["volumes"]
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    text = (ROOT / "docker-compose.yml").read_text()
    assert "password:" not in text.lower().replace("pgpassword:", "")
    assert (ROOT / "Dockerfile").is_file()
    # The build context holds what the Dockerfile copies and nothing else (no .pgpassword).
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    copied = {source for line in (ROOT / "Dockerfile").read_text().splitlines()
              if line.startswith("COPY") for source in line.split()[1:-1]}
    assert set(ignored[ignored.index("*") + 1:]) == {f"!{path}" for path in copied} | {
        "**/__pycache__"}


def compose_command(service: str, env: dict[str, str]) -> list[str]:
    """A service's command as Compose interpolates it (${VAR:-default}, ${VAR:+alternative})."""
    def value(match: re.Match) -> str:
        name, op, word = match.groups()
        given = env.get(name, "")
        if op == ":-":
            return given or word
        return word if given else ""

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    command = compose["services"][service]["command"]
    return re.sub(r"\$\{(\w+)(:-|:\+)([^}]*)\}", value, command).split()


def test_compose_create_study_sets_the_target_only_when_trials_is_given():
    from tuning.search import build_parser

    plain = compose_command("create-study", {})
    assert "--trials" not in plain and "$" not in " ".join(plain)
    # Not given: an existing study keeps its own target.
    assert not getattr(build_parser().parse_args(plain[3:]), "trials_given", False)
    given = compose_command("create-study", {"TRIALS": "40", "STUDY": "fashion-mnist"})
    args = build_parser().parse_args(given[3:])
    assert (args.trials, args.study, args.create_only) == (40, "fashion-mnist", True)
    assert args.trials_given


def test_worker_plan_pins_each_worker_to_one_gpu_and_splits_cores():
    from tuning.launcher import plan_workers

    specs = plan_workers(["0", "1"], workers_per_gpu=3, cpu_workers=None, cores=12)
    assert [s.gpu for s in specs] == ["0", "1", "0", "1", "0", "1"]
    assert {s.device for s in specs} == {"cuda"} and {s.threads for s in specs} == {2}
    assert [s.index for s in specs] == list(range(6))
    cpu = plan_workers(["0", "1"], workers_per_gpu=3, cpu_workers=4, cores=2)
    assert [(s.device, s.gpu, s.threads) for s in cpu] == [("cpu", None, 1)] * 4
    # Never more workers than trials left: the others would only load the data and exit.
    assert [s.gpu for s in plan_workers(["0", "1"], 3, None, 12, most=3)] == ["0", "1", "0"]
    assert [s.threads for s in plan_workers([], 2, cpu_workers=8, cores=2, most=1)] == [2]


def test_the_cpu_runs_one_single_thread_worker_per_core_by_default(monkeypatch):
    from tuning.errors import UsageError
    from tuning.launcher import default_cpu_workers, plan_workers

    monkeypatch.delenv("TUNING_WORKERS")
    plan = plan_workers([], workers_per_gpu=2, cpu_workers=None, cores=2)
    assert [(s.device, s.threads) for s in plan] == [("cpu", 1), ("cpu", 1)]
    assert default_cpu_workers(1) == 1
    big = plan_workers([], workers_per_gpu=2, cpu_workers=None, cores=16)
    assert [s.threads for s in big] == [4, 4, 4, 4]  # at most 4 workers: more threads each
    assert len(plan_workers([], 2, cpu_workers=3, cores=2)) == 3  # --workers decides
    assert default_cpu_workers(8, {"TUNING_WORKERS": "1"}) == 1
    for bad in ("0", "two", "-1", "99999"):
        with pytest.raises(UsageError, match="TUNING_WORKERS"):
            default_cpu_workers(2, {"TUNING_WORKERS": bad})


def test_launcher_passes_device_threads_and_compile_mode_to_each_worker():
    """The launcher's worker command line is one the worker's own parser accepts."""
    from types import SimpleNamespace

    from tuning.launcher import Launcher, plan_workers
    from tuning.worker import build_parser

    spec = plan_workers(["0", "1"], workers_per_gpu=1, cpu_workers=None, cores=8)[1]
    launcher = Launcher(SimpleNamespace(study_name="s"), "sqlite:///s.db", [spec], None, None,
                        None, on_trial=None, compile_mode="reduce-overhead")
    command = launcher._command(spec)
    assert command[1:3] == ["-m", "tuning.worker"]
    args = build_parser().parse_args(command[3:])
    assert (args.study, args.device, args.threads, args.compile, args.worker_index) == \
        ("s", "cuda", 4, "reduce-overhead", 1)


def test_a_worker_restarted_late_gets_what_is_left_of_the_timeout():
    """--timeout counts from the workers' start: a worker restarted 50 s into a 60 s run
    must not start trials for another 60 s."""
    from types import SimpleNamespace

    from tuning.launcher import Launcher, plan_workers
    from tuning.worker import build_parser

    spec = plan_workers([], workers_per_gpu=1, cpu_workers=1, cores=2)[0]
    launcher = Launcher(SimpleNamespace(study_name="s"), "sqlite:///s.db", [spec], None, None,
                        timeout=60.0, on_trial=None)
    assert build_parser().parse_args(launcher._command(spec)[3:]).timeout == 60.0
    launcher.started = time.monotonic() - 50  # the first workers started 50 s ago
    assert build_parser().parse_args(launcher._command(spec)[3:]).timeout == \
        pytest.approx(10.0, abs=1)
    launcher.started = time.monotonic() - 90
    assert build_parser().parse_args(launcher._command(spec)[3:]).timeout == \
        pytest.approx(0.001)


@pytest.mark.parametrize(("level", "quiet", "verbose"), [(logging.WARNING, True, False),
                                                         (logging.INFO, False, False),
                                                         (logging.DEBUG, False, True)])
def test_launched_workers_log_as_quietly_as_the_search(level, quiet, verbose):
    from types import SimpleNamespace

    from tuning.launcher import Launcher, plan_workers
    from tuning.worker import build_parser

    logger = logging.getLogger("tuning")
    previous = logger.level
    logger.setLevel(level)  # as the search's --quiet or --verbose set it
    try:
        spec = plan_workers([], workers_per_gpu=1, cpu_workers=1, cores=2)[0]
        launcher = Launcher(SimpleNamespace(study_name="s"), "sqlite:///s.db", [spec], None,
                            None, None, on_trial=None)
        args = build_parser().parse_args(launcher._command(spec)[3:])
    finally:
        logger.setLevel(previous)
    assert (args.quiet, args.verbose) == (quiet, verbose)
