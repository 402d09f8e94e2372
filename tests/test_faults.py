"""Faults of real clusters: lost heartbeats, taken-over trials, duplicated seeds, restarts of the
database, full disks, leaked passwords, stray files, GPU pinning and closed terminals."""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import optuna
import pytest
import sqlalchemy
import torch
from helpers import (
    POSTGRES_URL,
    ROOT,
    exit_status,
    finished,
    load_study,
    run_cli,
    start_search,
    wait_for_running_trials,
    wait_for_training,
    worker_pid,
)
from optuna.trial import TrialState
from sqlalchemy import text

from tuning import outage, pause, runner
from tuning.errors import EXIT_TRIALS_FAILING, UsageError
from tuning.launcher import Launcher, plan_workers, visible_gpus
from tuning.outage import LOST_TO_A_PAUSE_S, outages_of, transient
from tuning.pause import PAUSE_S, TICK_S, PauseWatch
from tuning.runner import NoTrial, StudyLock, fail_stale_trials, run_trials, take_trial
from tuning.signals import Interrupted
from tuning.space import Param
from tuning.storage import (
    IDLE_IN_TRANSACTION_S,
    RETRY_DUE,
    fail_for_retry,
    grace_period,
    mask_url,
    open_storage,
    queue_due_retries,
)
from tuning.strategy import make_sampler
from tuning.study import load_existing

FAST = ("--dataset", "mnist-sample", "--epochs", "1")


def _sqlite_study(tmp_path, name="s"):
    url = f"sqlite:///{tmp_path}/{name}.db"
    study = optuna.create_study(study_name=name, storage=open_storage(url, create=True))
    return url, study


# --- a trial must never stay RUNNING without a heartbeat ------------------------------------

def test_a_running_trial_that_never_got_a_heartbeat_is_failed_and_retried(tmp_path, caplog):
    url, study = _sqlite_study(tmp_path)
    orphan = study.ask()  # created, then its worker lost the database before any heartbeat
    orphan.suggest_float("x", 0, 1)
    fail_stale_trials(study)
    assert study.trials[0].state == TrialState.RUNNING  # younger than the grace period
    time.sleep(grace_period() + 1.5)  # SQLite keeps heartbeats to the second
    with caplog.at_level(logging.WARNING, logger="tuning"):
        fail_stale_trials(study, announce=True)  # as a worker not under a launcher does
    assert "trial 0 failed: its worker stopped beating (no heartbeat for" in caplog.text
    assert caplog.text.rstrip().endswith("it runs again first")
    queue_due_retries(study)  # as the worker that failed it does next, under the same lock
    trials = study.get_trials()
    assert trials[0].state == TrialState.FAIL
    assert "stopped beating" in trials[0].user_attrs["fail_reason"]  # the report says why
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == orphan.number]
    assert len(retry) == 1 and retry[0].state == TrialState.WAITING


def test_a_dead_workers_trial_is_retried_before_a_new_trial_is_sampled(tmp_path):
    url, study = _sqlite_study(tmp_path)
    dead = study.ask()
    dead.suggest_float("x", 0, 1)
    study._storage.record_heartbeat(dead._trial_id)
    time.sleep(grace_period() + 1.5)  # SQLite keeps heartbeats to the second
    lock = StudyLock(url, "s")
    try:
        taken = take_trial(study, 5, lock)
    finally:
        lock.close()
    assert isinstance(taken, optuna.Trial)
    retry = study.trials[taken.number]
    assert retry.system_attrs.get("failed_trial") == dead.number
    assert retry.params == study.trials[dead.number].params
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.RUNNING]


def test_a_worker_waiting_on_running_trials_says_once_which_and_for_how_long(tmp_path, caplog):
    # As a search run again after a worker was killed: its trial runs on, without heartbeats,
    # until the grace period passes. Without a line the search would seem to hang.
    url, study = _sqlite_study(tmp_path)
    running = study.ask()
    study._storage.record_heartbeat(running._trial_id)
    lock = StudyLock(url, "s")
    try:
        with caplog.at_level(logging.INFO, logger="tuning"):
            stats = run_trials(study, lambda trial: 0.0, 1, lock, timeout=2.5)
    finally:
        lock.close()
    assert stats.finished == 0 and study.trials[0].state == TrialState.RUNNING
    assert [m for m in caplog.messages if m.startswith("waiting")] == [
        f"waiting for running trial 0: another worker's, or a stopped worker's, which is failed "
        f"and retried {grace_period():g} s after its last heartbeat"]


def _stopped_by(tmp_path, stop, before_stop=None):
    """A study whose one trial raised `stop` (after `before_stop(trial)`, if given)."""
    url, study = _sqlite_study(tmp_path)

    def objective(trial):
        trial.suggest_float("x", 0, 1)
        if before_stop is not None:
            before_stop(trial)
        raise stop

    lock = StudyLock(url, "s")
    try:
        with pytest.raises(type(stop)):
            run_trials(study, objective, 5, lock)
    finally:
        lock.close()
    return study


@pytest.mark.parametrize("stop", [
    Interrupted(signal.SIGTERM), KeyboardInterrupt(),
    sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection"))])
def test_a_trial_stopped_from_outside_is_queued_again(tmp_path, stop):
    # A stop signal (Ctrl-C, SIGTERM, the launcher gone) or a database lost past its patience
    # ends the worker; the trial's configuration must not be lost with it.
    stopped, retry = _stopped_by(tmp_path, stop).trials
    assert stopped.state == TrialState.FAIL and stopped.user_attrs["fail_reason"]
    assert retry.state == TrialState.WAITING and retry.params == stopped.params
    assert retry.system_attrs["failed_trial"] == stopped.number
    assert "fail_reason" not in retry.user_attrs  # the retry's own run has not failed
    # A person's Ctrl-C or a scheduler's SIGTERM is no fault of the configuration's: it does
    # not count towards giving it up, or every stop and resume would spend one of its retries.
    counted_stops = [] if isinstance(stop, (Interrupted, KeyboardInterrupt)) else [stopped.number]
    assert retry.system_attrs["retry_history"] == counted_stops


def test_a_trial_that_crashes_by_itself_is_not_queued_again(tmp_path):
    # A bug in the configuration's own run would crash every retry too.
    (crashed,) = _stopped_by(tmp_path, RuntimeError("bug")).trials
    assert crashed.state == TrialState.FAIL and "RuntimeError: bug" in \
        crashed.user_attrs["fail_reason"]


def test_a_trial_taken_over_before_it_was_stopped_is_queued_once(tmp_path):
    # Another worker failed it (and queued it) while this one was cut off; then this one is
    # stopped: it must not queue the same configuration a second time.
    def taken_over(trial):
        fail_for_retry(trial.study._storage, trial._trial_id)
        queue_due_retries(trial.study)

    trials = _stopped_by(tmp_path, Interrupted(signal.SIGINT), taken_over).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]


_KILLED_BEFORE_QUEUING = """
import os, signal, sys, optuna
from optuna.trial import TrialState
from tuning import runner
from tuning.storage import open_storage

url = sys.argv[1]
study = optuna.load_study(study_name="s", storage=open_storage(url))
write_state = study._storage.set_trial_state_values

def killed_once_failed(trial_id, state, values=None):  # the moment after failing a trial
    failed = write_state(trial_id, state, values)
    if state == TrialState.FAIL:
        os.kill(os.getpid(), signal.SIGKILL)
    return failed

study._storage.set_trial_state_values = killed_once_failed

def objective(trial):  # the worker's own trial is stopped (with no stale trial to fail first)
    trial.suggest_float("x", 0, 1)
    raise KeyboardInterrupt

runner.run_trials(study, objective, 5, runner.StudyLock(url, "s"))
"""


@pytest.mark.parametrize("cut_short", ["stopped", "stale"])
def test_a_worker_killed_between_failing_a_trial_and_queuing_its_retry_loses_nothing(
        tmp_path, cut_short):
    # Failing a trial and queuing its retry are two writes. A worker killed between them (its
    # own trial stopped by Ctrl-C; or another's, found stale) leaves the trial marked as due a
    # retry, which the next worker to take a trial queues, once.
    url, study = _sqlite_study(tmp_path)
    if cut_short == "stale":
        dead = study.ask()
        dead.suggest_float("x", 0, 1)
        study._storage.record_heartbeat(dead._trial_id)
        time.sleep(grace_period() + 1.5)  # SQLite keeps heartbeats to the second
    worker = subprocess.run([sys.executable, "-c", _KILLED_BEFORE_QUEUING, url],
                            capture_output=True, text=True, timeout=120)
    assert worker.returncode == -signal.SIGKILL, worker.stderr
    (cut,) = study.get_trials(states=(TrialState.FAIL,))
    assert RETRY_DUE in cut.system_attrs
    assert not study.get_trials(states=(TrialState.WAITING,))  # the retry was not queued
    lock = StudyLock(url, "s")
    try:
        taken = take_trial(study, 5, lock)
        queue_due_retries(study)  # a second look finds the retry there
    finally:
        lock.close()
    assert isinstance(taken, optuna.Trial)
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == cut.number]
    assert [t.number for t in retries] == [taken.number]
    assert retries[0].params == cut.params


def test_a_place_given_back_by_a_paused_worker_does_not_wait_for_ever_once_the_target_is_met(
        tmp_path):
    """A worker paused between its lock's last check and `ask` gives its new trial back as
    waiting when it resumes; were the target met meanwhile, no worker would take it. Queued
    configurations (the study file's, retries) wait on: a higher target runs them."""
    from tuning.runner import GIVEN_BACK, UNNEEDED_PLACE

    url, study = _sqlite_study(tmp_path)
    for value in (0.3, 0.2):
        study.add_trial(optuna.create_trial(value=value))
    given_back = study.ask()
    study._storage.set_trial_system_attr(given_back._trial_id, GIVEN_BACK, True)
    study._storage.set_trial_state_values(given_back._trial_id, TrialState.WAITING)
    study.enqueue_trial({"x": 0.5})
    # The retry of a trial cut short before its first suggest: no parameters either.
    study.enqueue_trial({}, user_attrs={"failed_trial": 0})
    lock = StudyLock(url, "s")
    try:
        assert take_trial(study, 2, lock) is NoTrial.TARGET_MET
    finally:
        lock.close()
    failed = study.trials[given_back.number]
    assert failed.state == TrialState.FAIL
    assert failed.user_attrs["fail_reason"] == UNNEEDED_PLACE
    assert RETRY_DUE not in failed.system_attrs
    assert [t.state for t in study.trials[3:]] == [TrialState.WAITING] * 2  # the queued


def test_a_worker_waiting_for_a_paused_holder_of_the_sqlite_lock_says_so_and_can_stop(
        tmp_path, monkeypatch, caplog):
    from filelock import FileLock

    from tuning.signals import GracefulStop

    monkeypatch.setenv("TUNING_HEARTBEAT_INTERVAL", "1")
    monkeypatch.setenv("TUNING_GRACE_PERIOD", "2")
    url, _ = _sqlite_study(tmp_path)
    # Another worker's, stopped while it held it (released from a timer's thread).
    paused = FileLock(f"{tmp_path}/s.db.lock", thread_local=False)
    paused.acquire()
    lock = StudyLock(url, "s")
    threading.Timer(3, paused.release).start()
    with caplog.at_level(logging.WARNING, logger="tuning"), lock.hold():
        assert lock.still_held()
    assert "held by another worker for over 2 s: a worker paused while taking a trial" in \
        caplog.text
    # A Ctrl-C ends the wait, however long the holder stays paused.
    paused.acquire()
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        GracefulStop().install()
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
        with pytest.raises(Interrupted), lock.hold():
            pass
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        paused.release()


def test_a_worker_that_lost_the_study_lock_queues_no_retry(tmp_path):
    # Stalled past the server's idle limit, a worker's lock session ends and another worker
    # may take the lock and queue the retry; the first, resumed with the trials it read
    # before, must not queue it again.
    url, study = _sqlite_study(tmp_path)
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    assert fail_for_retry(study._storage, trial._trial_id)
    read_before = study.get_trials(deepcopy=False)
    queue_due_retries(study, read_before, still_held=lambda: False)
    assert len(study.trials) == 1
    queue_due_retries(study)  # the worker that holds the lock
    queue_due_retries(study)
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == trial.number]
    assert len(retries) == 1


def test_a_retry_takes_the_configuration_and_seed_not_what_the_cut_short_run_left(tmp_path):
    # A worker killed after saving its checkpoint but before `tell`: the retry must not take
    # that checkpoint, metrics or artifacts for its own (evaluate and export read them).
    from tuning.warm_start import WARM_START_ATTR

    url, study = _sqlite_study(tmp_path)
    study.enqueue_trial({"x": 0.5}, user_attrs={WARM_START_ATTR: "study file"})
    for expected_parent in range(2):
        trial = study.ask()
        trial.suggest_float("x", 0, 1)
        assert trial.user_attrs[WARM_START_ATTR] == "study file"
        trial.set_user_attr("seed", 7)
        trial.set_user_attr("checkpoint_artifact", "dead-weights")
        trial.set_user_attr("val_accuracy", 0.97)
        study._storage.set_trial_system_attr(trial._trial_id, "artifacts:dead-weights", "{}")
        study._storage.set_trial_system_attr(trial._trial_id, "completed_rung_0", 0.3)
        assert fail_for_retry(study._storage, trial._trial_id)
        queue_due_retries(study)
        retry = study.trials[-1]
        assert retry.state == TrialState.WAITING and retry.params == {"x": 0.5}
        assert retry.user_attrs == {"seed": 7, WARM_START_ATTR: "study file"}
        assert not any(key.startswith(("artifacts:", "completed_rung_", RETRY_DUE))
                       for key in retry.system_attrs)  # nor its pruner's record of its rungs
        # A retry of a retry names its own parent.
        assert retry.system_attrs["failed_trial"] == trial.number == expected_parent


def test_a_grid_trial_cut_short_is_retried_on_its_own_grid_point(tmp_path):
    # Given a new point instead, the retry would run the failed configuration again and mark
    # another point visited that nobody ran: the grid would end with a point missing.
    grid_space = {"optimizer": Param("optimizer", "categorical", choices=("adam", "sgd")),
                  "blocks": Param("blocks", "categorical", choices=(1, 2))}
    url, _ = _sqlite_study(tmp_path)
    study = optuna.load_study(study_name="s", storage=open_storage(url),
                              sampler=make_sampler("grid", 0, grid_space))

    def run(trial):
        return (trial.suggest_categorical("optimizer", ["adam", "sgd"]),
                trial.suggest_categorical("blocks", [1, 2]))

    first = study.ask()
    cut_short = run(first)
    fail_for_retry(study._storage, first._trial_id)
    queue_due_retries(study)
    ran = []
    for _ in range(4):
        trial = study.ask()
        ran.append(run(trial))
        study.tell(trial, 0.5)
    assert ran[0] == cut_short and len(set(ran)) == 4  # every point once, the failed one first


def test_a_grid_with_a_failed_configuration_ends_short_of_its_target_running_none_twice(
        tmp_path):
    from tuning.runner import why_grid_ended_short

    grid_space = {"optimizer": Param("optimizer", "categorical", choices=("adam", "sgd")),
                  "blocks": Param("blocks", "categorical", choices=(1, 2))}
    url, _ = _sqlite_study(tmp_path)
    study = optuna.load_study(study_name="s", storage=open_storage(url),
                              sampler=make_sampler("grid", 0, grid_space))
    lock = StudyLock(url, "s")

    def run(trial):
        return (trial.suggest_categorical("optimizer", ["adam", "sgd"]),
                trial.suggest_categorical("blocks", [1, 2]))

    ran, trials = [], []
    for _ in range(4):
        trial = take_trial(study, 4, lock)
        assert isinstance(trial, optuna.Trial)
        ran.append(run(trial))
        trials.append(trial)
    # One is cut short (due its retry), one runs out of memory (failed by itself).
    fail_for_retry(study._storage, trials[0]._trial_id)
    study.tell(trials[1], state=TrialState.FAIL)
    study.tell(trials[2], 0.5)
    retry = take_trial(study, 4, lock)  # the cut-short configuration, queued again
    assert isinstance(retry, optuna.Trial) and run(retry) == ran[0]
    assert take_trial(study, 4, lock) is NoTrial.WAIT  # two run: nothing new to take
    study.tell(trials[3], 0.4)
    assert take_trial(study, 4, lock) is NoTrial.WAIT  # the retry may still fail
    assert why_grid_ended_short(study, study.trials, 4) is None
    study.tell(retry, 0.3)
    assert take_trial(study, 4, lock) is NoTrial.GRID_RUN
    assert len(set(ran)) == 4 and len(study.trials) == 5
    assert why_grid_ended_short(study, study.trials, 4) == (
        "every configuration of the grid has run and 1 configuration failed (the report says "
        "why): 3 finished of the target 4")


def test_a_trial_failed_by_another_worker_between_check_and_write_is_not_completed(tmp_path):
    # Worker A ends its trial; it checks the trial is still running, then is paused before
    # writing, while worker B fails the trial as stale (and would queue it again). Resumed, A
    # must not overwrite FAIL with COMPLETE: the trial and its retry would both count.
    import threading

    url, study = _sqlite_study(tmp_path)
    trial = study.ask()
    a, b = open_storage(url), open_storage(url)
    outcome = {}

    def b_fails_it():
        try:
            b.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            outcome["b"] = "failed it"
        except optuna.exceptions.UpdateFinishedTrialError:
            outcome["b"] = "found it finished"

    b_thread = threading.Thread(target=b_fails_it)
    check = a.check_trial_is_updatable

    def paused_after_the_check(trial_id, state):
        check(trial_id, state)
        if not b_thread.is_alive() and "b" not in outcome:
            b_thread.start()
            b_thread.join(timeout=5.0)  # B either fails the trial now or waits for A's write

    a.check_trial_is_updatable = paused_after_the_check
    a.set_trial_state_values(trial._trial_id, TrialState.COMPLETE, [0.5])
    b_thread.join()
    assert outcome["b"] == "found it finished"
    assert study.trials[0].state == TrialState.COMPLETE


def test_a_configuration_cut_short_again_and_again_is_given_up_with_a_warning(tmp_path,
                                                                               caplog):
    from tuning.storage import MAX_RETRIES

    url, study = _sqlite_study(tmp_path)
    study.enqueue_trial({"x": 0.5})
    for _ in range(MAX_RETRIES + 1):
        trial = study.ask()
        trial.suggest_float("x", 0, 1)
        with caplog.at_level(logging.WARNING, logger="tuning"):
            assert fail_for_retry(study._storage, trial._trial_id)
        queue_due_retries(study)
    # The first run and its MAX_RETRIES retries, each taking the queued one; no more.
    assert [t.state for t in study.trials] == [TrialState.FAIL] * (MAX_RETRIES + 1)
    assert len({t.params["x"] for t in study.trials}) == 1
    assert "already retried 3 times" in caplog.text


def test_stale_trials_are_not_failed_right_after_a_database_outage(tmp_path):
    """During an outage nobody's heartbeat was recorded; the others are alive."""
    from tuning.outage import outages_of

    url, study = _sqlite_study(tmp_path)
    trial = study.ask()
    study._storage.record_heartbeat(trial._trial_id)
    time.sleep(grace_period() + 1.5)  # SQLite keeps heartbeats to the second
    outages = outages_of(study._storage)
    outages.failed(RuntimeError("connection refused"), 10)
    outages.succeeded()
    fail_stale_trials(study)
    assert study.trials[0].state == TrialState.RUNNING
    outages.last_recovery -= grace_period() + 1
    fail_stale_trials(study)
    assert study.trials[0].state == TrialState.FAIL


class _Clock:
    """A clock for a PauseWatch, and its ticking thread run by hand."""

    def __init__(self) -> None:
        self.now = time.monotonic()
        self.watch = PauseWatch(clock=lambda: self.now)

    def run(self, seconds: float, late: float = 0.0) -> None:
        """Run for `seconds`, the watch ticking every TICK_S (`late`: plus this)."""
        end = self.now + seconds
        while self.now < end:
            self.now = min(end, self.now + TICK_S + late)
            self.watch.tick()


def test_a_pause_is_told_from_busy_ticks_and_lasts_a_grace_period():
    clock = _Clock()
    clock.run(10, late=0.3)  # busy: every tick a little late
    assert not clock.watch.paused_within(3)
    clock.now += 8  # stopped: the ticking thread has not run since
    assert clock.watch.paused_within(3)
    assert not clock.watch.paused_within(3, longer_than=10)  # too short to matter
    clock.run(2.9)
    assert clock.watch.paused_within(3)  # resumed 2.9 s ago
    assert not clock.watch.paused_within(3, longer_than=10)
    # Dated by the first tick after it, up to TICK_S late: a grace period at least.
    clock.run(0.2 + TICK_S)
    assert not clock.watch.paused_within(3)


def test_stale_trials_are_not_failed_right_after_this_worker_was_paused(tmp_path, monkeypatch,
                                                                        caplog):
    """Resumed, it finds the others' heartbeats old: on SQLite it may have held the lock
    they waited on. They are alive."""
    clock = _Clock()
    monkeypatch.setattr(pause, "_watch", clock.watch)
    url, study = _sqlite_study(tmp_path)
    trial = study.ask()
    study._storage.record_heartbeat(trial._trial_id)
    time.sleep(grace_period() + 1.5)  # SQLite keeps heartbeats to the second
    clock.now += grace_period() + 1.5  # and this worker was stopped all that time
    fail_stale_trials(study)
    assert study.trials[0].state == TrialState.RUNNING
    outages = outages_of(study._storage)
    with caplog.at_level(logging.WARNING, logger="tuning"):
        outages.failed(RuntimeError("server closed the connection"), 10)
        outages.succeeded()
        clock.run(LOST_TO_A_PAUSE_S + 1)
        outages.failed(RuntimeError("server closed the connection"), 10)
        outages.succeeded()
    assert caplog.messages[0].startswith("database lost while this worker was paused (server "
                                         "closed the connection)")
    assert caplog.messages[2].startswith("database unreachable (server closed the connection)")
    outages.last_recovery -= grace_period() + 1
    fail_stale_trials(study)  # resumed over a grace period ago: the trial is stale
    assert study.trials[0].state == TrialState.FAIL


def test_a_really_stopped_process_knows_it_was_paused(tmp_path):
    script = ("import sys, time\n"
              "from tuning.pause import pause_watch\n"
              "watch = pause_watch()\n"
              "print('ready', flush=True)\n"
              "for _ in range(60):\n"
              "    time.sleep(0.1)\n"
              "    if watch.paused_within(3):\n"
              "        print('paused', flush=True)\n"
              "        sys.exit(0)\n"
              "print('never', flush=True)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGSTOP)
        time.sleep(PAUSE_S + 1)
        proc.send_signal(signal.SIGCONT)
        assert proc.stdout.readline() == "paused\n"
    finally:
        proc.kill()
        proc.wait()


# --- a worker whose trial was taken over drops its result and goes on ------------------------

def _fail_as_another_worker_would(trial):
    storage = trial.study._storage
    storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)


@pytest.mark.parametrize("when", ["before its last report", "before telling its result"])
def test_a_worker_whose_trial_was_failed_by_others_drops_it_and_goes_on(tmp_path, caplog, when):
    url, study = _sqlite_study(tmp_path)
    victims = []

    def objective(trial):
        x = trial.suggest_float("x", -1, 1)
        if trial.number == 1:
            victims.append(trial.number)
            _fail_as_another_worker_would(trial)
            if when == "before its last report":
                trial.report(x * x, 1)  # raises: the trial is no longer ours
        return x * x

    with caplog.at_level(logging.WARNING, logger="tuning"):
        stats = run_trials(study, objective, 4, StudyLock(url, "s"))
    assert victims == [1]
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) == 4 and states[1] == TrialState.FAIL
    assert stats.finished == 4 and stats.failed == 0 and not stats.stopped_by_failures
    assert sum("was failed by another worker" in r.message for r in caplog.records) == 1


# --- workers started by hand do not duplicate each other's work ------------------------------

SPACE = {"lr": Param("lr", "float", low=1e-4, high=1.0, log=True),
         "optimizer": Param("optimizer", "categorical", choices=("adam", "sgd", "rmsprop")),
         "blocks": Param("blocks", "int", low=1, high=3)}


def _suggest(trial):
    return (trial.suggest_float("lr", 1e-4, 1.0, log=True),
            trial.suggest_categorical("optimizer", ["adam", "sgd", "rmsprop"]),
            trial.suggest_int("blocks", 1, 3))


def test_an_empty_variable_reads_as_unset(monkeypatch, tmp_path):
    """A deployment template that writes `TUNING_GRACE_PERIOD=` gets the default, as an empty
    TUNING_WORKERS does, not an error."""
    from tuning.cli import storage_url
    from tuning.data import device_budget
    from tuning.errors import UsageError
    from tuning.image_folder import default_cache_dir
    from tuning.launcher import default_cpu_workers
    from tuning.outage import retry_seconds
    from tuning.storage import artifact_store, heartbeat_interval

    for name in ("TUNING_HEARTBEAT_INTERVAL", "TUNING_GRACE_PERIOD", "TUNING_DB_RETRY_S",
                 "TUNING_ARTIFACTS", "TUNING_STORAGE", "TUNING_WORKERS", "TUNING_CACHE_DIR",
                 "TUNING_DEVICE_DATA_MB"):
        monkeypatch.setenv(name, " ")
    assert (heartbeat_interval(), grace_period(), retry_seconds()) == (10, 30, 300)
    assert default_cpu_workers(2) == 2
    assert default_cache_dir().parts[-2:] == ("tuning", "images")
    assert device_budget(torch.device("cpu")) == float("inf")
    assert storage_url(None, "s") == "sqlite:///studies/s.db"
    monkeypatch.chdir(tmp_path)
    artifact_store()
    assert [p.name for p in tmp_path.iterdir()] == ["artifacts"]
    monkeypatch.setenv("TUNING_GRACE_PERIOD", " 45 ")
    assert grace_period() == 45
    monkeypatch.setenv("TUNING_GRACE_PERIOD", "\u00b2")  # a digit to str.isdigit, not to int()
    with pytest.raises(UsageError, match="TUNING_GRACE_PERIOD"):
        grace_period()


def test_an_artifact_directory_is_made_when_first_written_and_again_if_removed(tmp_path):
    import io

    from tuning.storage import artifact_store

    where = tmp_path / "shared" / "artifacts"
    store = artifact_store(where, create_now=False)
    assert not where.parent.exists()
    store.write("a", io.BytesIO(b"weights"))
    (where / "a").unlink()
    where.rmdir()  # cleaned up by someone while workers run
    store.write("b", io.BytesIO(b"curves"))
    assert store.open_reader("b").read() == b"curves"
    with pytest.raises(UsageError, match="cannot be created"):
        artifact_store(tmp_path / "shared" / "artifacts" / "b" / "x")  # under a file


@pytest.mark.parametrize("name", ["TUNING_HEARTBEAT_INTERVAL", "TUNING_GRACE_PERIOD",
                                  "TUNING_DB_RETRY_S", "TUNING_WORKERS", "TUNING_DEVICE_DATA_MB"])
@pytest.mark.parametrize("value", ["abc", "-5", "nan", "inf", "1e12", "\u00b2" * 100, "9" * 5000],
                         ids=lambda value: value[:8])
def test_a_numeric_variable_out_of_range_is_one_line_naming_it(monkeypatch, name, value):
    from tuning.data import device_budget
    from tuning.errors import UsageError
    from tuning.launcher import default_cpu_workers
    from tuning.outage import retry_seconds
    from tuning.storage import heartbeat_interval

    read = {"TUNING_HEARTBEAT_INTERVAL": heartbeat_interval, "TUNING_GRACE_PERIOD": grace_period,
            "TUNING_DB_RETRY_S": retry_seconds, "TUNING_WORKERS": lambda: default_cpu_workers(2),
            "TUNING_DEVICE_DATA_MB": lambda: device_budget(torch.device("cpu"))}[name]
    monkeypatch.setenv(name, value)
    with pytest.raises(UsageError, match=f"^{name} must be .* from [0-9.]+ to [0-9.]+, got") \
            as caught:
        read()
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 160


def test_numeric_variables_take_every_value_in_range(monkeypatch):
    from tuning.data import MAX_DEVICE_DATA_MB, device_budget
    from tuning.launcher import default_cpu_workers
    from tuning.outage import retry_seconds

    cpu = torch.device("cpu")
    for value, budget in ((" 512 ", 512 * 2**20), ("0", 0.0), ("0.5", 2**19),
                          (str(MAX_DEVICE_DATA_MB), MAX_DEVICE_DATA_MB * 2**20)):
        monkeypatch.setenv("TUNING_DEVICE_DATA_MB", value)
        assert device_budget(cpu) == budget
    for value, workers in (("1", 1), ("1024", 1024), (" 3\t", 3)):
        monkeypatch.setenv("TUNING_WORKERS", value)
        assert default_cpu_workers(2) == workers
    for value, seconds in (("0", 0.0), ("86400", 86_400.0), ("2.5", 2.5)):
        monkeypatch.setenv("TUNING_DB_RETRY_S", value)
        assert retry_seconds() == seconds
    monkeypatch.setenv("TUNING_HEARTBEAT_INTERVAL", "1")
    for value in ("2", "86400"):
        monkeypatch.setenv("TUNING_GRACE_PERIOD", value)
        assert grace_period() == int(value)


def test_a_grace_period_under_two_heartbeats_is_refused(monkeypatch):
    # Else a live trial looks dead between two beats: failed and retried, again and again.
    from tuning.errors import UsageError

    monkeypatch.setenv("TUNING_HEARTBEAT_INTERVAL", "30")
    monkeypatch.setenv("TUNING_GRACE_PERIOD", "59")
    with pytest.raises(UsageError, match=r"^TUNING_GRACE_PERIOD \(59 s\) must be at least "
                                         r"twice TUNING_HEARTBEAT_INTERVAL \(30 s\)"):
        grace_period()
    monkeypatch.setenv("TUNING_GRACE_PERIOD", "60")
    assert grace_period() == 60
    monkeypatch.delenv("TUNING_GRACE_PERIOD")  # the default, 30, under a 20 s interval
    monkeypatch.setenv("TUNING_HEARTBEAT_INTERVAL", "20")
    with pytest.raises(UsageError, match=r"\(30 s, the default; set it\) must be"):
        grace_period()


@pytest.mark.parametrize("sampler", ["tpe", "random", "qmc", "cmaes", "grid"])
def test_workers_with_the_same_study_seed_propose_different_points(tmp_path, sampler):
    url, _ = _sqlite_study(tmp_path)
    workers = [optuna.load_study(study_name="s", storage=open_storage(url),
                                 sampler=make_sampler(sampler, 0, SPACE)) for _ in range(3)]
    asked = []
    for _ in range(3):  # three workers each take a trial, as three processes started at once
        for study in workers:
            asked.append((study, study.ask()))
    points = [_suggest(trial) for _, trial in asked]
    assert len(set(points)) == len(points), points


@pytest.mark.parametrize("sampler", ["tpe", "random", "grid"])
def test_one_process_study_is_reproducible(tmp_path, sampler):
    runs = []
    for _ in range(2):
        study = optuna.create_study(sampler=make_sampler(sampler, 7, SPACE))
        study.optimize(lambda t: _suggest(t)[0], n_trials=12)
        runs.append([t.params for t in study.trials])
    assert runs[0] == runs[1]


# --- PostgreSQL restarted under a running search --------------------------------------------

def _pg_ctl(action: str) -> None:
    version = sorted(os.listdir("/etc/postgresql"))[0]
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action],
                   check=True, capture_output=True, timeout=120)


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.pg_restart
@pytest.mark.skipif(not Path("/etc/postgresql").is_dir() or os.geteuid() != 0,
                    reason="restarting the server needs root and pg_ctlcluster")
def test_postgres_restart_mid_search_is_ridden_out(workdir, cheap_space):
    cheap_space(workdir)
    name = f"restart-{uuid.uuid4().hex[:8]}"
    proc = start_search("--study", name, "--config", "studies/mnist.toml", "--storage",
                        POSTGRES_URL, "--trials", "8", "--workers", "2", "--dataset",
                        "mnist-sample", "--epochs", "3", cwd=workdir)
    try:
        wait_for_running_trials(POSTGRES_URL, name, proc, count=2)
        # Down for longer than the grace period: nobody's heartbeat is recorded meanwhile, and
        # no worker may take that for death once the server is back. (Not much longer: the
        # workers' retries back off to 8 s apart.)
        _pg_ctl("stop")
        try:
            time.sleep(grace_period() + 2)
        finally:
            _pg_ctl("start")
        out, err = proc.communicate(timeout=400)
        assert proc.returncode == 0, err
        assert "Traceback" not in err
        assert "database unreachable" in err and "database reachable again" in err
        study = load_study(POSTGRES_URL, name)
        assert len(finished(study)) == 8
        assert not [t for t in study.trials if t.state == TrialState.FAIL]
        assert not [t for t in study.trials if t.state in (TrialState.RUNNING,
                                                            TrialState.WAITING)]
    finally:
        if proc.poll() is None:
            proc.kill()
        optuna.delete_study(study_name=name, storage=open_storage(POSTGRES_URL, heartbeat=False))


@pytest.mark.postgres
def test_a_worker_stalled_inside_a_transaction_does_not_block_the_others():
    # A worker paused, or cut off behind a live proxy, in the middle of a heartbeat or a report
    # holds a lock on its trial's row, which failing that trial as stale has to wait for.
    name = f"stalled-{uuid.uuid4().hex[:8]}"
    stalled, other = open_storage(POSTGRES_URL), open_storage(POSTGRES_URL)
    conn = None
    try:
        trial = optuna.create_study(study_name=name, storage=stalled).ask()
        conn = stalled.engine.connect()
        # What inserting a heartbeat or an intermediate value takes, and then nothing more.
        conn.execute(text("SELECT trial_id FROM trials WHERE trial_id = :id FOR KEY SHARE"),
                     {"id": trial._trial_id})
        failing = threading.Thread(target=other.set_trial_state_values,
                                   args=(trial._trial_id, TrialState.FAIL), daemon=True)
        failing.start()
        failing.join(timeout=IDLE_IN_TRANSACTION_S + 30)
        assert not failing.is_alive(), "still waiting for the stalled worker's row lock"
        assert other.get_trial(trial._trial_id).state == TrialState.FAIL
        with pytest.raises(sqlalchemy.exc.DBAPIError, match="idle-in-transaction") as ended:
            conn.execute(text("SELECT 1"))  # the server ended the stalled session
        assert transient(ended.value)  # so a worker that resumes retries, as after an outage
    finally:
        if conn is not None:
            conn.close()  # without the timeout, this releases the lock (and the thread)
        with contextlib.suppress(KeyError):
            optuna.delete_study(study_name=name, storage=other)
        stalled.engine.dispose()
        other.engine.dispose()


@contextlib.contextmanager
def _postgres_study_and_lock():
    """A fresh PostgreSQL study, its storage and its study lock; removed afterwards."""
    name = f"lock-lost-{uuid.uuid4().hex[:8]}"
    storage = open_storage(POSTGRES_URL)
    lock = StudyLock(POSTGRES_URL, name)
    try:
        yield optuna.create_study(study_name=name, storage=storage), storage, lock
    finally:
        lock.close()
        with contextlib.suppress(KeyError):
            optuna.delete_study(study_name=name, storage=storage)
        storage.engine.dispose()


def _end_the_lock_session(lock: StudyLock, storage) -> None:
    """What the server does to a session idle inside its transaction too long."""
    pid = lock._held.execute(text("SELECT pg_backend_pid()")).scalar()
    with storage.engine.connect() as admin:
        admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})


@pytest.mark.postgres
def test_a_worker_whose_study_lock_was_ended_under_it_creates_no_trial(monkeypatch):
    # The server ends a session idle inside its transaction too long: the study lock's, if the
    # worker's storage calls under it stalled, which lets another worker take the lock.
    with _postgres_study_and_lock() as (study, storage, lock):
        real_counts = runner._counts

        def counts_while_the_lock_is_ended(counted):
            _end_the_lock_session(lock, storage)
            return real_counts(counted)

        monkeypatch.setattr(runner, "_counts", counts_while_the_lock_is_ended)
        assert take_trial(study, 5, lock) is NoTrial.WAIT
        assert study.trials == []
        monkeypatch.setattr(runner, "_counts", real_counts)
        assert isinstance(take_trial(study, 5, lock), optuna.Trial)  # a new session next time


@pytest.mark.postgres
def test_a_trial_created_as_the_study_lock_was_ended_goes_back_to_waiting(monkeypatch):
    # Lost after the last check, while creating the trial: another worker may have counted
    # without it and filled the target; kept running, it would overshoot by one.
    with _postgres_study_and_lock() as (study, storage, lock):
        real_ask = study.ask

        def ask_while_the_lock_is_ended():
            _end_the_lock_session(lock, storage)
            return real_ask()

        monkeypatch.setattr(study, "ask", ask_while_the_lock_is_ended)
        assert take_trial(study, 5, lock) is NoTrial.WAIT
        assert [t.state for t in study.trials] == [TrialState.WAITING]
        monkeypatch.setattr(study, "ask", real_ask)
        taken = take_trial(study, 5, lock)  # a new session next time, and the waiting trial
        assert isinstance(taken, optuna.Trial) and taken.number == 0
        assert [t.state for t in study.trials] == [TrialState.RUNNING]

        # Stalled past the grace period as well: another worker failed the new trial as an
        # orphan meanwhile. This worker waits; it does not crash.
        def ask_stall_and_be_failed():
            _end_the_lock_session(lock, storage)
            trial = real_ask()
            open_storage(POSTGRES_URL).set_trial_state_values(trial._trial_id, TrialState.FAIL)
            return trial

        monkeypatch.setattr(study, "ask", ask_stall_and_be_failed)
        assert take_trial(study, 5, lock) is NoTrial.WAIT
        assert study.trials[-1].state == TrialState.FAIL


# --- a paused worker comes back after its trial was taken over, end to end -------------------

def _writing(db: Path) -> bool:
    """Whether a process holds the SQLite database's write lock (for half a second)."""
    connection = sqlite3.connect(db, timeout=0.5)
    try:
        connection.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError:  # database is locked
        return True
    finally:
        connection.close()  # rolls back
    return False


@pytest.mark.slow
def test_a_worker_paused_past_the_grace_period_comes_back_and_the_search_exits_0(workdir,
                                                                                 cheap_space):
    cheap_space(workdir)
    # 6 epochs of a cheap network: a trial runs for seconds, for the pause to land in.
    proc = start_search("--trials", "8", "--workers", "2", "--dataset", "mnist-sample",
                        "--epochs", "6", cwd=workdir)
    url = f"sqlite:///{workdir}/studies/mnist.db"
    # Pause a worker inside a trial that has sampled its parameters (its seed is recorded),
    # not after the trial ended and not in a write to the database, which would stall the
    # other worker too; else let it go on and pause it again.
    deadline = time.monotonic() + 120
    while True:
        assert time.monotonic() < deadline, "no worker could be paused inside a trial"
        victim = wait_for_training(url, "mnist", proc)
        pid = worker_pid(victim)
        os.kill(pid, signal.SIGSTOP)
        if (load_study(url, "mnist").trials[victim.number].state == TrialState.RUNNING
                and not _writing(workdir / "studies" / "mnist.db")):
            break
        os.kill(pid, signal.SIGCONT)
    try:
        # The other worker fails the stale trial when it next takes one, after its own trial
        # ends: on a loaded machine (tests run two at a time) that can take minutes.
        deadline = time.monotonic() + 240
        while load_study(url, "mnist").trials[victim.number].state != TrialState.FAIL:
            assert time.monotonic() < deadline, "the paused worker's trial was never failed"
            time.sleep(0.5)
    finally:
        os.kill(pid, signal.SIGCONT)
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err
    assert "was failed by another worker" in err and "kept failing" not in err
    assert "Traceback" not in err
    study = load_study(url, "mnist")
    assert len(finished(study)) == 8
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == victim.number]
    assert retries and retries[0].params == study.trials[victim.number].params


# --- a full disk under the database ----------------------------------------------------------

@pytest.fixture
def tiny_fs(tmp_path):
    mount = tmp_path / "fs"
    mount.mkdir()
    # Room for SQLite's write-ahead log, which grows to about 4 MB between checkpoints.
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "--lazy", str(mount)], capture_output=True)


@pytest.mark.slow
@pytest.mark.serial
def test_a_full_database_disk_is_one_line_and_the_study_resumes(workdir, cheap_space, tiny_fs):
    cheap_space(workdir)
    url = f"sqlite:///{tiny_fs}/study.db"
    created = run_cli("--storage", url, "--trials", "1", *FAST, "--create-only", cwd=workdir)
    assert created.returncode == 0, created.stderr
    filler = tiny_fs / "filler"
    free = os.statvfs(tiny_fs).f_bavail * os.statvfs(tiny_fs).f_frsize
    filler.write_bytes(b"\0" * (free - 700 * 1024))  # room for a few trials, not for 40
    full = run_cli("--storage", url, "--trials", "40", *FAST, cwd=workdir)
    assert full.returncode == 2, full.stderr
    lines = full.stderr.strip().splitlines()
    assert "Traceback" not in full.stderr
    assert lines[-1].startswith("error: the file system of the study database")
    assert str(tiny_fs) in lines[-1] and "is full" in lines[-1]
    assert len([line for line in lines if line.startswith("error")]) == 1
    ran = len(finished(load_study(url, "mnist")))
    assert 0 < ran < 40
    filler.unlink()
    resumed = run_cli("--storage", url, "--trials", str(ran + 2), *FAST, cwd=workdir)
    assert resumed.returncode == 0, resumed.stderr
    assert len(finished(load_study(url, "mnist"))) == ran + 2


# --- bad input: one line, exit 2, nothing created --------------------------------------------

def test_a_new_sqlite_database_appears_only_after_its_init_lock(tmp_path, monkeypatch):
    # A process that finds the database takes the creator's lock only if the lock file is
    # there: made later, both write the schema and one fails ('table ... already exists').
    db = tmp_path / "s.db"
    lock_there_when_created = []
    real_connect = sqlite3.connect

    def connect(database, *args, **kwargs):
        if Path(database) == db and not db.exists():
            lock_there_when_created.append(Path(f"{db}.init.lock").exists())
        return real_connect(database, *args, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", connect)
    open_storage(f"sqlite:///{db}", create=True)
    assert lock_there_when_created == [True]


@pytest.mark.parametrize("bad", ["random", "truncated"])
@pytest.mark.parametrize("module", ["tuning.search", "tuning.worker", "tuning.report"])
def test_a_storage_file_that_is_not_a_database_is_one_line(workdir, module, bad):
    path = workdir / "studies" / "mnist.db"
    if bad == "random":
        path.write_bytes(random.Random(0).randbytes(50_000))
    else:
        assert run_cli("--trials", "1", *FAST, "--create-only", cwd=workdir).returncode == 0
        path.write_bytes(path.read_bytes()[:3000])
    before = path.read_bytes()
    args = ["--study", "mnist"] + (["--trials", "1", *FAST] if module == "tuning.search" else [])
    result = run_cli(*args, cwd=workdir, module=module, timeout=120)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert path.read_bytes() == before


NAMED_COMMANDS = ("tuning.search", "tuning.worker", "tuning.report", "tuning.dashboard")


def _named(module: str, name: str) -> list[str]:
    return ["--study", name] + (["--create-only", *FAST] if module == "tuning.search" else [])


def _status(module: str, args: list[str]) -> int:
    """The exit status of a command's main, run in this process."""
    return exit_status(importlib.import_module(module).main, args)


def _created_nothing(workdir: Path) -> None:
    assert sorted(p.name for p in workdir.rglob("*") if p.suffix != ".toml") == ["studies"]
    assert not (workdir.parent / "evil.db").exists()


@pytest.mark.parametrize("name", ["../evil", "\udcff", "q?mode=ro", "p%2Fq", "", "a" * 65])
def test_study_names_are_validated_before_anything_is_created(workdir, name, monkeypatch,
                                                              capsys):
    """Each command's main in this process (a second each, not four processes a name); the
    next test runs them as processes."""
    monkeypatch.chdir(workdir)
    for module in NAMED_COMMANDS:
        code = _status(module, _named(module, name))
        err = capsys.readouterr().err
        assert code == 2, (module, err)
        assert len(err.strip().splitlines()) == 1, err
        assert "not a study name" in err
    _created_nothing(workdir)


@pytest.mark.parametrize("module", NAMED_COMMANDS)
def test_a_study_name_that_is_not_utf_8_is_refused_by_a_real_process(workdir, module):
    """The byte 0xff on the command line, which Python decodes to a lone surrogate."""
    env = {"PYTHONIOENCODING": "utf-8:surrogateescape"}
    result = run_cli(*_named(module, "\udcff"), cwd=workdir, module=module, timeout=60, env=env)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "not a study name" in result.stderr
    _created_nothing(workdir)


def test_empty_study_name_does_not_reset_the_default_study(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    assert _status("tuning.search", ["--trials", "3", *FAST, "--create-only"]) == 0
    assert _status("tuning.search", ["--study", "", "--trials", "1", *FAST, "--create-only"]) == 2
    assert load_study(f"sqlite:///{workdir}/studies/mnist.db", "mnist").user_attrs[
        "target_trials"] == 3


# --- secrets --------------------------------------------------------------------------------

@pytest.mark.parametrize("url", [
    "postgresql://tuner:s3cret@db:5432/test",
    "postgresql://tuner:s3cret@with@db:5432/test",
    "postgresql://tuner@db:5432/test?password=s3cret&sslmode=require",
])
def test_passwords_are_masked_and_never_on_a_worker_command_line(url):
    assert "s3cret" not in mask_url(url) and "***" in mask_url(url)
    spec = plan_workers([], 1, 2, 2)[0]
    study = optuna.create_study(study_name="s")
    launcher = Launcher(study, url.replace("s3cret@with", "s3cret%40with"), [spec], None, None,
                        None, on_trial=None)
    command = " ".join(launcher._command(spec))
    assert "s3cret" not in command and "password" not in command
    assert launcher.password in ("s3cret", "s3cret@with")


@pytest.mark.slow
@pytest.mark.postgres
def test_workers_started_by_the_launcher_show_no_password_in_ps(workdir, cheap_space):
    cheap_space(workdir)
    name = f"secret-{uuid.uuid4().hex[:8]}"
    url = POSTGRES_URL.replace("postgres@", "postgres:Very-Secret-1@")  # trust auth ignores it
    # Three trials a worker: with one each, a busy machine's poll can miss both (they take a
    # second) and find the search already over.
    proc = start_search("--study", name, "--config", "studies/mnist.toml", "--storage", url,
                        "--trials", "6", "--workers", "2", *FAST, cwd=workdir)
    try:
        running = wait_for_running_trials(POSTGRES_URL, name, proc)
        pid = worker_pid(running[0])
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        assert "tuning.worker" in ps and "Very-Secret-1" not in ps
        assert b"Very-Secret-1" not in Path(f"/proc/{pid}/cmdline").read_bytes()
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        assert "Very-Secret-1" not in out + err
    finally:
        if proc.poll() is None:
            proc.kill()
        optuna.delete_study(study_name=name, storage=open_storage(POSTGRES_URL, heartbeat=False))


# --- commands that only read create nothing --------------------------------------------------

@pytest.mark.parametrize("module", ["tuning.worker", "tuning.dashboard", "tuning.report"])
def test_read_only_commands_on_a_missing_study_create_no_database(workdir, module, monkeypatch,
                                                                  capsys):
    """In this process; tests/test_read_only.py runs these commands as processes."""
    monkeypatch.chdir(workdir)
    code = _status(module, ["--study", "typo"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "no study database" in err
    assert sorted(p.name for p in (workdir / "studies").iterdir() if p.suffix != ".toml") == []


# --- GPU pinning and a closed terminal -------------------------------------------------------

def test_workers_are_pinned_to_the_real_gpu_ids_the_scheduler_gave():
    env = {"CUDA_VISIBLE_DEVICES": "2,3"}
    assert visible_gpus("auto", 2, env) == ["2", "3"]
    assert visible_gpus("cuda:1", 2, env) == ["3"]
    assert visible_gpus("cuda", 2, {}) == ["0", "1"]
    assert visible_gpus("cuda:1", 2, {}) == ["1"]
    assert visible_gpus("cpu", 2, env) == []
    uuids = {"CUDA_VISIBLE_DEVICES": "GPU-aaa,GPU-bbb"}
    assert [s.gpu for s in plan_workers(visible_gpus("auto", 2, uuids), 2, None, 8)] == \
        ["GPU-aaa", "GPU-bbb", "GPU-aaa", "GPU-bbb"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purpose.
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def _worker_pids(launcher_pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(launcher_pid), "-f", "tuning.worker"],
                         capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _wait_dead(pids, timeout=90.0) -> None:
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids):
        assert time.monotonic() < deadline, f"workers {pids} still running"
        time.sleep(0.3)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGHUP", "SIGKILL"])
def test_no_worker_outlives_its_launcher(workdir, cheap_space, how):
    cheap_space(workdir)
    proc = start_search("--trials", "20", "--workers", "2", "--dataset", "mnist-sample",
                        "--epochs", "4", cwd=workdir)
    url = f"sqlite:///{workdir}/studies/mnist.db"
    wait_for_running_trials(url, "mnist", proc, count=2)
    workers = _worker_pids(proc.pid)
    assert len(workers) == 2
    proc.send_signal(getattr(signal, how))
    proc.communicate(timeout=120)
    assert proc.returncode == (128 + signal.SIGHUP if how == "SIGHUP" else -signal.SIGKILL)
    _wait_dead(workers)
    study = load_study(url, "mnist")
    # Stopped by the signal the launcher passed on, or by the kernel's SIGTERM when the
    # launcher died: trials are marked failed, with which it was.
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]
    stopped = {t.user_attrs["fail_reason"] for t in study.trials if t.state == TrialState.FAIL}
    assert stopped == {"stopped by SIGHUP" if how == "SIGHUP"
                       else "stopped by SIGTERM after its parent process ended"}


def test_the_launchers_exit_statuses_mean_one_thing_each(tmp_path):
    """1 (a crash) restarts the worker; 3 (trials kept failing) and 2 (usage) do not."""
    study = optuna.create_study(study_name="s",
                                storage=open_storage(f"sqlite:///{tmp_path}/s.db", create=True))
    study.set_user_attr("target_trials", 5)
    for code, restarted in ((1, True), (3, False), (2, False)):
        spec = plan_workers([], 1, 1, 1)[0]
        launcher = Launcher(study, f"sqlite:///{tmp_path}/s.db", [spec], None, None, None,
                            on_trial=lambda s, t: None)
        starts = []

        def fake_start(spec, code=code, starts=starts, launcher=launcher):
            starts.append(spec.index)
            launcher.procs[spec.index] = subprocess.Popen(
                [sys.executable, "-c", f"raise SystemExit({code if len(starts) == 1 else 0})"])

        launcher._start = fake_start
        status = launcher.run()
        assert (len(starts) > 1) == restarted, code
        assert status == (0 if restarted else code)


@pytest.mark.parametrize("finished", [3, 5])
def test_a_crashed_worker_is_restarted_unless_the_target_is_met(tmp_path, finished):
    """Out of --patience is not done: a trial still running may beat the best, and the search
    then goes on with every worker."""
    study = optuna.create_study(study_name="s",
                                storage=open_storage(f"sqlite:///{tmp_path}/s.db", create=True))
    study.set_user_attr("target_trials", 5)
    study.set_user_attr("patience", 1)
    for value in (0.5, 0.9, 0.8, 0.7, 0.6)[:finished]:  # two or more after the best
        study.add_trial(optuna.create_trial(value=value))
    study.ask()  # running elsewhere: it may beat 0.5
    spec = plan_workers([], 1, 1, 1)[0]
    launcher = Launcher(study, f"sqlite:///{tmp_path}/s.db", [spec], None, None, None,
                        on_trial=lambda s, t: None)
    starts = []

    def fake_start(spec):
        starts.append(spec.index)
        launcher.procs[spec.index] = subprocess.Popen(
            [sys.executable, "-c", f"raise SystemExit({1 if len(starts) == 1 else 0})"])

    launcher._start = fake_start
    assert launcher.run() == 0
    assert len(starts) == (2 if finished < 5 else 1)


def test_a_search_whose_every_worker_died_too_often_does_not_exit_as_if_done(tmp_path, capsys):
    """Killed again and again (an out-of-memory killer): once no worker is left the target is
    not met, and the run says so with a status a script sees."""
    from tuning.launcher import MAX_RESTARTS_PER_WORKER

    study = optuna.create_study(study_name="s",
                                storage=open_storage(f"sqlite:///{tmp_path}/s.db", create=True))
    study.set_user_attr("target_trials", 5)
    specs = plan_workers([], 1, 2, 2)
    launcher = Launcher(study, f"sqlite:///{tmp_path}/s.db", specs, None, None, None,
                        on_trial=lambda s, t: None)
    starts = []

    def killed(spec):
        starts.append(spec.index)
        launcher.procs[spec.index] = subprocess.Popen(
            [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])

    launcher._start = killed
    assert launcher.run() == EXIT_TRIALS_FAILING
    assert len(starts) == 2 * (MAX_RESTARTS_PER_WORKER + 1)
    err = capsys.readouterr().err
    assert "not restarting it again, the other workers go on" in err  # the first given up
    assert err.rstrip().endswith(
        "the target is not met: all 2 workers died 4 times each (the last: killed by signal 9) "
        "and were not restarted; the same command goes on, running the failed trials again "
        "first")


def test_a_signal_ignored_under_nohup_stays_ignored():
    """`nohup tuning search`: the terminal closing (SIGHUP) must not stop the search."""
    from tuning.signals import GracefulStop

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        stop = GracefulStop().install()
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGHUP)
        stop.check()  # nothing asked for
        assert stop.requested() is None
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def test_a_stop_signal_delivered_twice_at_once_still_stops_at_a_safe_point():
    """A scheduler signals every process of a job and the launcher passes the same signal on;
    only a second, later or different signal stops at once."""
    from tuning.signals import GracefulStop, Interrupted

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        stop = GracefulStop().install()
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # the same request again: no exception here
        with pytest.raises(Interrupted) as stopped:
            stop.check()
        assert stopped.value.exit_status == 143
        with pytest.raises(Interrupted):
            os.kill(os.getpid(), signal.SIGINT)  # another signal: stop now
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def test_a_stop_during_a_database_outage_ends_the_wait_for_the_database():
    """Ctrl-C while a worker waits out an outage stops it at once, not when the database is
    back (or its TUNING_DB_RETRY_S, minutes, has passed); the wait goes on without a stop."""
    from tuning.outage import Outages, call_with_retry
    from tuning.signals import GracefulStop

    calls = []

    def refused():
        calls.append(1)
        raise sqlalchemy.exc.OperationalError("connect", {}, Exception("Connection refused"))

    def refused_twice():
        if len(calls) < 2:
            refused()
        return "written"

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        stop = GracefulStop().install()
        with pytest.raises(sqlalchemy.exc.OperationalError):
            call_with_retry(Outages(), 1.2, refused)  # no stop: waited out until its end
        assert len(calls) >= 2
        threading.Timer(0.6, os.kill, (os.getpid(), signal.SIGINT)).start()
        with pytest.raises(Interrupted) as stopped:  # before the 20 s are over
            call_with_retry(Outages(), 20, refused)
        assert isinstance(stopped.value.__cause__, sqlalchemy.exc.OperationalError)
        # A blip (under STOP_AFTER_OUTAGE_S) is waited out even after a stop: a result or a
        # failure is still written.
        calls.clear()
        assert stop.signum is not None
        assert call_with_retry(Outages(), 20, refused_twice) == "written"
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    with pytest.raises(sqlalchemy.exc.OperationalError):  # the stop's handler is gone
        call_with_retry(Outages(), 0.6, refused)


def test_every_call_in_one_outage_shares_one_retry_window(caplog):
    """TUNING_DB_RETRY_S bounds the outage, not each call: a worker's calls after the first
    gave up (recording its trial's end) give up at once, where each waited a whole window."""
    from tuning.outage import Outages, call_with_retry

    def refused():
        raise sqlalchemy.exc.OperationalError("connect", {}, Exception("Connection refused"))

    outages = Outages()
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="tuning"):
        with pytest.raises(sqlalchemy.exc.OperationalError):
            call_with_retry(outages, 1.0, refused)
        first = time.monotonic() - started
        for _ in range(3):  # the trial's fail reason, its state, its retry: no more waiting
            with pytest.raises(sqlalchemy.exc.OperationalError):
                call_with_retry(outages, 1.0, refused)
    assert 1.0 <= first and time.monotonic() - started < first + 0.5
    assert caplog.text.count("database unreachable") == 1
    # Reachable again: the next outage has a window of its own.
    assert call_with_retry(outages, 1.0, lambda: "written") == "written"
    assert outages.down_since is None
    # Without a window (SQLite), an error is raised at once and no outage is announced.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tuning"):
        with pytest.raises(sqlalchemy.exc.OperationalError):
            call_with_retry(Outages(), 0.0, refused)
    assert "unreachable" not in caplog.text


# --- opening a database server: a restart waited out by workers; a creation race -------------

def test_a_worker_waits_for_a_database_server_being_restarted_and_a_command_does_not():
    from tuning.storage import _open_server

    calls = []

    def refused_twice():
        calls.append(1)
        if len(calls) <= 2:
            raise sqlalchemy.exc.OperationalError("connect", {}, Exception("Connection refused"))
        return "opened"

    assert _open_server(refused_twice, patience=30) == "opened" and len(calls) == 3
    calls.clear()
    with pytest.raises(sqlalchemy.exc.OperationalError):
        _open_server(refused_twice, patience=0.0)
    assert len(calls) == 1


def test_a_worker_that_waited_for_the_server_leaves_live_trials_alone_for_a_grace_period(
        tmp_path):
    # The outage it waited out stopped every worker's heartbeats: their trials look stale
    # until they beat again, and must not be failed by the newcomer's first stale check.
    from tuning.outage import ResilientStorage
    from tuning.storage import _open_server

    url = f"sqlite:///{tmp_path}/s.db"
    open_storage(url, create=True)
    calls = []

    def refused_once():
        calls.append(1)
        if len(calls) == 1:
            raise sqlalchemy.exc.OperationalError("connect", {}, Exception("Connection refused"))
        return ResilientStorage(url, patience=30)

    storage = _open_server(refused_once, patience=30)
    assert storage.outages.recent(grace_period())
    calls.clear()
    calls.append(1)  # no refusal: nothing waited for, nothing held off
    assert not _open_server(refused_once, patience=30).outages.recent(grace_period())


@pytest.mark.postgres
def test_every_host_writes_heartbeats_in_one_time_zone(monkeypatch):
    # A host with another PGTZ would write its heartbeats hours apart from the others'.
    for zone in ("America/New_York", "Asia/Tokyo"):
        monkeypatch.setenv("PGTZ", zone)
        storage = open_storage(POSTGRES_URL, heartbeat=False)
        backend = getattr(storage, "_backend", storage)
        with backend.engine.connect() as conn:
            assert conn.execute(text("SHOW timezone")).scalar() == "UTC"
            conn.rollback()  # the session's zone outlives a rolled-back transaction
            assert conn.execute(text("SHOW timezone")).scalar() == "UTC"
        backend.engine.dispose()


@pytest.mark.postgres
def test_two_processes_creating_the_tables_of_an_empty_database_at_once_both_open_it():
    # PostgreSQL refuses the second of two concurrent CREATE TABLEs (optuna#1092): searches
    # creating their studies in a new database at once.
    name = f"race_{uuid.uuid4().hex[:8]}"
    admin = sqlalchemy.create_engine(POSTGRES_URL.replace("postgresql://",
                                                          "postgresql+psycopg://"),
                                     isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    url = POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}"
    results: list = []
    start = threading.Barrier(3)

    def open_it():
        start.wait()
        try:
            results.append(open_storage(url, heartbeat=False, create=True))
        except Exception as exc:  # noqa: BLE001 - the failure is what the test reports
            results.append(exc)

    try:
        threads = [threading.Thread(target=open_it) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert all(not isinstance(r, Exception) for r in results), results
    finally:
        for storage in results:
            if not isinstance(storage, Exception):
                storage.engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.pg_restart
@pytest.mark.skipif(not Path("/etc/postgresql").is_dir() or os.geteuid() != 0,
                    reason="stopping the server needs root and pg_ctlcluster")
def test_ctrl_c_while_the_database_is_down_stops_at_once_and_loses_no_trial(workdir,
                                                                          cheap_space):
    cheap_space(workdir)
    name = f"stopdown-{uuid.uuid4().hex[:8]}"
    # No pruning and 6 epochs: both workers are inside a trial when the server stops, the
    # study's only two.
    args = ("--study", name, "--config", "studies/mnist.toml", "--storage", POSTGRES_URL,
            "--trials", "2", "--workers", "2", "--dataset", "mnist-sample", "--epochs", "6",
            "--pruner", "none")
    proc = start_search(*args, cwd=workdir)
    try:
        wait_for_running_trials(POSTGRES_URL, name, proc, 2)
        _pg_ctl("stop")
        try:
            time.sleep(2)  # the workers meet the outage and wait for the server
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=60)  # without the stop: its 300 s of retries
        finally:
            _pg_ctl("start")
        assert proc.returncode == 130, err
        assert "Traceback" not in err
        assert "could not be marked failed (the database is unreachable)" in err
        assert "stopped by SIGINT while the database is unreachable" in err
        assert f"--study {name} --trials 2 --config studies/mnist.toml" in out  # continue:
        cut_short = {t.number for t in load_study(POSTGRES_URL, name).trials
                     if t.state == TrialState.RUNNING}
        assert cut_short
        # The trials left running are found stale by the next run and retried, none lost.
        env = {"TUNING_HEARTBEAT_INTERVAL": "1", "TUNING_GRACE_PERIOD": "2"}
        proc = start_search(*args, cwd=workdir, env=env)
        out, err = proc.communicate(timeout=400)
        assert proc.returncode == 0, err
        study = load_study(POSTGRES_URL, name)
        failed = {t.number for t in study.trials if t.state == TrialState.FAIL}
        retried = {t.system_attrs.get("failed_trial") for t in study.trials}
        assert cut_short <= failed <= retried, (cut_short, failed)
        assert len(finished(study)) == 2
    finally:
        if proc.poll() is None:
            proc.kill()
        optuna.delete_study(study_name=name, storage=open_storage(POSTGRES_URL, heartbeat=False))


@pytest.mark.parametrize("module", ["tuning.search", "tuning.worker"])
def test_a_database_lost_past_its_patience_is_one_line_and_status_4(module, monkeypatch,
                                                                     capsys, tmp_path):
    command = importlib.import_module(module)
    lost = sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("Connection refused"))

    def unreachable(*args, **kwargs):
        raise lost

    monkeypatch.setattr(command, "_run" if module == "tuning.search" else "prepare", unreachable)
    monkeypatch.chdir(tmp_path)
    url = "postgresql://u:s3cret@db:5432/x"
    assert command.main(["--study", "s", "--storage", url]) == 4
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "could not be reached" in err and "run the same command again" in err
    assert "s3cret" not in err


@pytest.mark.parametrize("module", ["tuning.search", "tuning.worker"])
def test_a_refusal_in_the_middle_of_a_run_is_one_line_and_status_2(module, monkeypatch,
                                                                    capsys, tmp_path):
    """A password changed or a role dropped while the workers run: the server's refusal,
    wrapped by Optuna, is one line and status 2, as it is at the start, not a traceback."""
    from optuna.exceptions import StorageInternalError

    command = importlib.import_module(module)
    refused = sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception(
        'connection to server at "db", port 5432 failed: fe_sendauth: no password supplied'))

    def refusing(*args, **kwargs):
        try:
            raise refused
        except sqlalchemy.exc.OperationalError as exc:
            raise StorageInternalError("An exception is raised during the commit.") from exc

    monkeypatch.setattr(command, "_run" if module == "tuning.search" else "prepare", refusing)
    monkeypatch.chdir(tmp_path)
    assert command.main(["--study", "s", "--storage", "postgresql://u:s3cret@db:5432/x"]) == 2
    err = capsys.readouterr().err
    assert err == ("error: the database postgresql://u:***@db:5432/x refused the connection: "
                   'connection to server at "db", port 5432 failed: fe_sendauth: no password '
                   "supplied\n")


def test_the_status_4_line_gives_the_drivers_words_under_optunas_wrapper(capsys):
    from optuna.exceptions import StorageInternalError

    from tuning.cli import database_lost

    refused = sqlalchemy.exc.OperationalError("COMMIT", {}, Exception(
        'connection to server at "127.0.0.1", port 5432 failed: Connection refused\nIs it up?'))
    try:
        try:
            raise refused
        except sqlalchemy.exc.OperationalError as exc:
            raise StorageInternalError("An exception is raised during the commit. This "
                                       "typically happens due to invalid data.") from exc
    except StorageInternalError as wrapped:
        assert database_lost("postgresql://u@db/x", wrapped) == 4
        # So does the warning of a trial its worker could not mark failed.
        assert runner._why_unrecorded(wrapped).startswith('connection to server at "127.0.0.1"')
    err = capsys.readouterr().err
    assert "(TUNING_DB_RETRY_S 300): connection to server at \"127.0.0.1\", port 5432 " \
        "failed: Connection refused; run the same command again" in err
    assert "invalid data" not in err and len(err.splitlines()) == 1


def test_the_launchers_status_4_line_gives_what_its_storage_met_and_how_long(monkeypatch,
                                                                              capsys):
    """The launcher's workers met the outage; its own storage met it too, as it watched them:
    its line gives the driver's words and the time waited since the outage was first seen
    (a network cut shows only when TCP gives up, so it can exceed TUNING_DB_RETRY_S)."""
    from tuning.cli import database_lost

    monkeypatch.setenv("TUNING_DB_RETRY_S", "20")
    monkeypatch.setattr(outage, "_latest", None)
    assert database_lost(None, None) == 4
    assert "could not be reached for 20 s (TUNING_DB_RETRY_S 20); run the same" in \
        capsys.readouterr().err
    seen = outage.Outages()
    seen.failed(sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception(
        "connection timeout expired")), 20)
    seen.down_since -= 64
    assert database_lost("postgresql://u:pw@db/x", None) == 4
    err = capsys.readouterr().err
    assert "postgresql://u:***@db/x could not be reached for 64 s (TUNING_DB_RETRY_S 20): " \
        "connection timeout expired; run the same command again" in err
    seen.succeeded()
    assert outage.ongoing_outage() is None


def test_a_worker_that_waited_for_the_database_in_vain_ends_with_status_4(monkeypatch, capsys):
    from tuning.worker import main as worker

    monkeypatch.setenv("TUNING_DB_RETRY_S", "1")
    url = "postgresql://postgres@127.0.0.1:1/test"  # nothing listens there
    with pytest.raises(UsageError, match="cannot open storage"):  # a command: at once
        open_storage(url)
    assert worker(["--study", "s", "--storage", url]) == 4
    assert "could not be reached for 1 s" in capsys.readouterr().err


@pytest.mark.postgres
@pytest.mark.parametrize(("url", "refusal"), [
    ("postgresql://postgres@127.0.0.1:5432/no_such_database", 'database "no_such_database"'),
    ("postgresql://no_such_user@127.0.0.1:5432/test", 'role "no_such_user"')])
def test_a_worker_given_a_database_or_user_the_server_refuses_stops_at_once(url, refusal,
                                                                            monkeypatch, capsys):
    # Not an outage: waiting TUNING_DB_RETRY_S would not help, and a scheduler should see the
    # usage error (2), not "run it again" (4).
    from tuning.outage import transient
    from tuning.worker import main as worker

    monkeypatch.setenv("TUNING_DB_RETRY_S", "60")
    assert worker(["--study", "s", "--storage", url]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot open storage") and refusal in err, err
    assert "retrying" not in err  # not waited out as an outage
    restarting = sqlalchemy.exc.OperationalError("connect", {}, Exception(
        "FATAL:  the database system is starting up"))
    assert transient(restarting)  # a server restarting is waited for, as before


def test_a_study_whose_creation_was_stopped_is_finished_by_the_next_search(workdir, monkeypatch,
                                                                           capsys):
    """Ctrl-C between creating a study and writing its definition left one that every command
    refused as not tuning's, and resuming it lost the configurations its file queues: the same
    command again finishes the creation, queuing them once."""
    import tuning.study
    from tuning.search import main as search

    monkeypatch.chdir(workdir)
    argv = ["--create-only", "--trials", "3", "--dataset", "mnist-sample", "--epochs", "1"]

    def stopped():
        raise KeyboardInterrupt

    with monkeypatch.context() as patched:
        patched.setattr(tuning.study, "environment", stopped)
        with pytest.raises(KeyboardInterrupt):
            search(argv)
    url = f"sqlite:///{workdir}/studies/mnist.db"
    half = load_study(url, "mnist")
    assert "versions" not in half.user_attrs and len(half.trials) == 2  # queued, waiting
    with pytest.raises(UsageError, match="its creation was stopped before it had its "
                                         "definition: run the tuning search command"):
        load_existing("mnist", url)
    assert search(argv) == 0
    study = load_existing("mnist", url)
    assert "versions" in study.user_attrs and study.user_attrs["target_trials"] == 3
    assert [t.state for t in study.trials] == [TrialState.WAITING] * 2
    assert search(argv) == 0  # complete now: resumed as any study is, nothing queued again
    assert len(load_study(url, "mnist").trials) == 2


def test_a_host_that_does_not_resolve_is_waited_for_with_a_hint_to_check_its_name(caplog):
    from tuning.outage import Outages

    outages = Outages()
    with caplog.at_level(logging.WARNING, logger="tuning"):
        outages.failed(RuntimeError("failed to resolve host 'db-hots': [Errno -2] Name or "
                                    "service not known"), 300)
        outages.succeeded()
        outages.failed(RuntimeError("connection refused"), 300)
    assert caplog.messages[0].endswith("retrying for up to 300 s; if the host name is "
                                       "mistyped, stop (Ctrl-C) and check the URL")
    assert caplog.messages[2].endswith("retrying for up to 300 s")
