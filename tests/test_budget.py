"""Runs on a budget of time and on a shared machine: `--budget` (the duration parser and the ETA,
tier 1; a trial stopped when it runs out, tier 2; a search, tier 3) and OpenMP's wait policy."""

from __future__ import annotations

import argparse
import collections
import io
import math
import os
import re
import subprocess
import sys
import time

import optuna
import pytest
import torch
from helpers import ROOT, load_study, run_cli, small_space
from optuna.trial import TrialState

from tuning.cli import Progress, duration, run_timeout
from tuning.device import resolve_device
from tuning.objective import BUDGET_STOP, OVER_LIMITS, Objective, over_limits, stopped_by_budget
from tuning.runner import NoTrial, StudyLock, out_of_patience, run_trials, take_trial
from tuning.search import main
from tuning.space import sample
from tuning.storage import open_storage
from tuning.strategy import from_unit, make_pruner, make_sampler
from tuning.study_file import StudySettings, load_study_file
from tuning.warm_start import enqueue


@pytest.mark.parametrize("text, seconds", [
    ("300", 300), ("90s", 90), ("5m", 300), ("2h", 7200), ("1h30m", 5400), ("1m30s", 90),
    ("0.5m", 30), (" 5M ", 300), ("1h30s", 3630),
])
def test_durations(text, seconds):
    assert duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "0s", "5 minutes", "-5m", "m", "1d", "5m1h", "inf",
                                  "1e309", "nan", "8785h", "99999999999999999999h"])
def test_bad_durations(text):
    with pytest.raises(argparse.ArgumentTypeError):
        duration(text)


@pytest.mark.parametrize("text", ["1h30", "5m30", "1h0m30"])
def test_a_last_number_without_its_unit_after_hours_or_minutes_is_refused(text):
    with pytest.raises(argparse.ArgumentTypeError, match="give the last number its unit"):
        duration(text)


def test_the_timeout_is_the_budget_left_when_that_is_sooner():
    now = time.monotonic()
    assert run_timeout(None, None) is None and run_timeout(60.0, None) == 60.0
    assert run_timeout(None, now + 30) == pytest.approx(30, abs=1)
    assert run_timeout(10.0, now + 30) == 10.0
    assert run_timeout(None, now - 5) == 0.0


def test_the_eta_never_runs_past_the_budget():
    progress = Progress(target=100, epochs=10, stream=io.StringIO())
    progress.timing = {0: (10, 100.0)}  # 10 s an epoch: 99 trials of 10 epochs to go
    assert progress.eta() == "2:46:40"
    progress.deadline = time.monotonic() + 125
    assert progress.eta() in {"0:02:04", "0:02:05"}
    progress.deadline = time.monotonic() - 1
    assert progress.eta() == "0:00:00"


def test_the_eta_after_the_timeout_is_at_most_one_more_trial():
    # --timeout stops starting trials; one started just before it still runs all its epochs.
    progress = Progress(target=100, epochs=10, stream=io.StringIO())
    progress.timing = {0: (10, 100.0)}  # 10 s an epoch, 100 s a trial
    progress.last_start = time.monotonic() + 60
    assert progress.eta() in {"0:02:39", "0:02:40"}
    progress.last_start = time.monotonic() - 5
    assert progress.eta() == "0:01:40"
    progress.deadline = time.monotonic() + 30  # a --budget ends trials too: the sooner holds
    assert progress.eta() in {"0:00:29", "0:00:30"}


def test_a_trial_running_when_the_budget_ends_stops_after_its_epoch(tiny_data):
    """Ask/tell: with the budget already spent, the trial trains one epoch, reports it, and
    is pruned with the reason; the last epoch of a trial is never cut."""
    study = optuna.create_study(pruner=optuna.pruners.NopPruner())
    objective = Objective(data=tiny_data, runtime=resolve_device("cpu"), space=small_space(),
                          epochs=3, seed=0, deadline=time.monotonic())
    trial = study.ask()
    with pytest.raises(optuna.TrialPruned):
        objective(trial)
    study.tell(trial, state=TrialState.PRUNED)
    frozen = study.trials[0]
    assert frozen.user_attrs["prune_reason"] == "the run's --budget ran out after epoch 1"
    assert list(frozen.intermediate_values) == [1] and frozen.user_attrs["epochs_run"] == 1
    objective.epochs = 1  # one epoch is the whole trial: nothing is left to cut
    trial = study.ask()
    assert objective(trial) > 0


def test_a_trial_stops_when_another_epoch_would_end_past_the_budget(tiny_data):
    """The run ends within its budget: a trial whose next epoch, as long as its last, would
    end after the deadline stops now, not at the end of that epoch."""
    objective = Objective(data=tiny_data, runtime=resolve_device("cpu"), space=small_space(),
                          epochs=3, seed=0, deadline=time.monotonic() + 30)
    assert objective._out_of_budget(fold=1, epoch=1, epoch_seconds=40)
    assert not objective._out_of_budget(fold=1, epoch=1, epoch_seconds=5)
    assert not objective._out_of_budget(fold=1, epoch=3, epoch_seconds=40)  # nothing left
    objective.deadline = None
    assert not objective._out_of_budget(fold=1, epoch=1, epoch_seconds=10 ** 6)


def test_a_planned_trial_the_budget_cuts_short_runs_again_instead_of_counting(tmp_path,
                                                                            tiny_data):
    """A grid's point or a repeat of a fixed configuration cut short is no measurement: it is
    failed and queued to run first next time (spending none of its retries), and does not
    count towards the target, so the same command goes on to measure it."""
    from tuning.objective import planned
    from tuning.storage import RETRY_DUE
    from tuning.study_file import StudySettings, parse_study

    fixed = parse_study({"space": {"optimizer": "adam", "lr": 0.01, "channels": 8,
                                   "batch_size": 128, "repeat": {"choices": [0, 1, 2]}}}).space
    assert planned(StudySettings(), fixed) and not planned(StudySettings(), small_space())
    assert planned(StudySettings(sampler="grid"), small_space())
    url = f"sqlite:///{tmp_path}/s.db"
    study = optuna.create_study(study_name="s", storage=open_storage(url, create=True))
    study.enqueue_trial({"repeat": 1})
    objective = Objective(data=tiny_data, runtime=resolve_device("cpu"), space=fixed, epochs=3,
                          seed=0, deadline=time.monotonic(), planned=True)
    seen = []
    lock = StudyLock(url, "s")
    try:
        stats = run_trials(study, objective, 3, lock, on_trial=lambda s, t: seen.append(t))
    finally:
        lock.close()
    cut, again = study.trials
    assert cut.state == TrialState.FAIL and seen == [cut] and stats.finished == 0
    assert cut.user_attrs["fail_reason"] == ("the run's --budget ran out after epoch 1; it runs "
                                             "again first when the run goes on")
    assert list(cut.intermediate_values) == [1] and cut.system_attrs[RETRY_DUE] == []
    assert again.state == TrialState.WAITING and again.params == {"repeat": 1}
    assert again.system_attrs["failed_trial"] == cut.number


def test_a_search_ends_within_its_budget(workdir, monkeypatch, capsys):
    """A budget shorter than a trial: the run ends at its first epoch end past the budget (or
    before any trial, if loading took it all), and exits 0 saying what it has."""
    monkeypatch.chdir(workdir)
    assert main(["--trials", "20", "--dataset", "mnist-sample", "--epochs", "8",
                 "--budget", "1s"]) == 0
    out, err = capsys.readouterr()
    assert "2 configurations queued to run first: the enqueue list of its study file" in err
    study = load_study(f"sqlite:///{workdir}/studies/mnist.db", "mnist")
    # The study's second queued configuration may still be waiting: it never started.
    trials = [t for t in study.trials if t.state != TrialState.WAITING]
    assert len(trials) <= 1 and all(t.state == TrialState.PRUNED for t in trials)
    assert all(len(t.intermediate_values) == 1 for t in trials)
    # With no trial started, the summary counts only the queued ones, still waiting.
    waiting = sum(t.state == TrialState.WAITING for t in study.trials)
    assert "the run's --budget ran out after epoch 1" in err if trials else \
        f": {waiting} waiting\n" in out
    assert re.search(r"stopped at the --budget 1 s: [01] of the target 20 finished; the same "
                     "command goes on", out), out


def test_a_budget_spent_before_the_workers_start_starts_none(workdir, monkeypatch, capsys):
    """Reading the data took the whole budget: workers started now would each read the data
    again, then stop, overrunning it several times; none is started."""
    import tuning.search

    def no_launcher(*args, **kwargs):
        raise AssertionError("workers were started after the budget ran out")

    monkeypatch.setattr(tuning.search, "Launcher", no_launcher)
    monkeypatch.chdir(workdir)
    assert main(["--trials", "4", "--dataset", "mnist-sample", "--workers", "2",
                 "--budget", "0.01s"]) == 0
    out = capsys.readouterr().out
    assert "stopped at the --budget 0.01 s: 0 of the target 4 finished" in out


def test_given_both_the_limit_that_ended_the_run_is_named(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    assert main(["--trials", "4", "--dataset", "mnist-sample", "--workers", "1",
                 "--budget", "10m", "--timeout", "0.01s"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"stopped at the --timeout 0.01 s: [01] of the target 4 finished", out), out


def test_a_worker_stopped_by_its_budget_says_so(workdir, monkeypatch, capsys):
    from tuning.worker import main as worker

    monkeypatch.chdir(workdir)
    assert main(["--trials", "4", "--dataset", "mnist-sample", "--create-only"]) == 0
    assert worker(["--study", "mnist", "--budget", "0.01s"]) == 0
    assert "stopped at the --budget 0.01 s: 0 of the target 4 finished" in \
        capsys.readouterr().err


def test_a_budget_counts_from_the_commands_start_before_torch_loads(workdir, monkeypatch,
                                                                    capsys):
    # Importing torch and reading the data take seconds of the user's budget too.
    from tuning import command

    def body() -> int:
        time.sleep(0.2)
        seen.append((command.run_started(), time.monotonic()))
        return 0

    seen: list[tuple[float, float]] = []
    assert command._guarded("tuning x", body) == 0
    started, now = seen[0]
    assert now - started >= 0.2 and command._started is None  # outside a command: now
    monkeypatch.setattr(command, "_started", time.monotonic() - 10)  # began 10 s ago
    monkeypatch.chdir(workdir)
    assert main(["--trials", "4", "--dataset", "mnist-sample", "--budget", "5s"]) == 0
    assert "stopped at the --budget 5 s: 0 of the target 4 finished" in capsys.readouterr().out
    trials = load_study(f"sqlite:///{workdir}/studies/mnist.db", "mnist").trials
    assert all(t.state == TrialState.WAITING for t in trials)  # none started


def _run(study: optuna.Study, losses: list[float]) -> TrialState:
    """A trial through ask and tell that reports `losses`, one per epoch, until pruned."""
    trial = study.ask()
    for epoch, loss in enumerate(losses, start=1):
        trial.report(loss, epoch)
        if trial.should_prune():
            study.tell(trial, state=TrialState.PRUNED)
            return TrialState.PRUNED
    study.tell(trial, min(losses))
    return TrialState.COMPLETE


def test_the_default_pruner_stops_a_clearly_worst_trial_after_its_first_epoch():
    """Most of a budget goes to the first epochs of configurations that turn out bad: once a
    handful of trials have run, one that is clearly the worst after epoch 1 (chance level on
    ten classes) stops there, and one that is the best so far goes on."""
    settings = StudySettings()
    study = optuna.create_study(pruner=make_pruner(settings.pruner, settings.epochs))
    curves = [[0.5 - 0.03 * e - 0.02 * k for e in range(settings.epochs)] for k in range(5)]
    for losses in curves:
        _run(study, losses)
    assert _run(study, [2.3] * settings.epochs) == TrialState.PRUNED
    assert study.trials[-1].last_step == 1
    assert _run(study, [0.3 - 0.02 * e for e in range(settings.epochs)]) == TrialState.COMPLETE


def test_the_default_samplers_start_up_trials_spread_over_every_range_and_choice():
    """The first trials, before TPE has a model, are points of a scrambled Sobol sequence:
    eight of them put one learning rate in each eighth of its (log) range and take every
    optimizer and batch size twice, where eight random draws almost never would. Once 10
    trials have finished, TPE chooses."""
    space = load_study_file(ROOT / "tuning" / "studies" / "mnist.toml").space
    study = optuna.create_study(sampler=make_sampler(StudySettings().sampler, 3, space))
    for _ in range(11):
        trial = study.ask()
        study.tell(trial, sample(trial, space)["lr"])
    first = [t.params for t in study.trials[:8]]
    eighths = {int(8 * math.log(p["lr"] / 1e-4) / math.log(0.3 / 1e-4)) for p in first}
    assert eighths == set(range(8))
    for name in ("optimizer", "batch_size"):
        counts = collections.Counter(p[name] for p in first)
        assert sorted(counts.values()) == [2] * 4, counts
    # Trial n takes point n of the sequence the study seed scrambles, up to trial 9; trial 10
    # is TPE's, not point 10's.
    dimensions = sorted(name for name, p in space.items() if p.kind != "fixed")
    points = torch.quasirandom.SobolEngine(len(dimensions), scramble=True, seed=3).draw(
        11, dtype=torch.float64)
    sobol_lrs = [from_unit(points[n][dimensions.index("lr")].item(),
                           study.trials[n].distributions["lr"]) for n in range(11)]
    lrs = [t.params["lr"] for t in study.trials]
    assert lrs[:10] == pytest.approx(sobol_lrs[:10])
    assert lrs[10] != pytest.approx(sobol_lrs[10])


def test_queued_trials_leave_the_start_up_points_to_the_sampled_trials():
    """The built-in study's two queued trials bring their own values; the eight trials after
    them still take the sequence's first eight points, one learning rate in each eighth."""
    study_file = load_study_file(ROOT / "tuning" / "studies" / "mnist.toml")
    space = study_file.space
    study = optuna.create_study(sampler=make_sampler(StudySettings().sampler, 3, space))
    assert enqueue(study, [(config, "study file") for config in study_file.enqueue]) == 2
    for _ in range(10):
        trial = study.ask()
        study.tell(trial, sample(trial, space)["lr"])
    assert [t.params["lr"] for t in study.trials[:2]] == [0.003, 0.003]
    sampled = [t.params for t in study.trials[2:10]]
    eighths = {int(8 * math.log(p["lr"] / 1e-4) / math.log(0.3 / 1e-4)) for p in sampled}
    assert eighths == set(range(8))


def test_a_partly_queued_trial_takes_its_own_start_up_point():
    """A configuration that gives only some parameters leaves the rest to the sampler: it
    takes a Sobol point for them, and the trial after it the next one, not the same."""
    space = load_study_file(ROOT / "tuning" / "studies" / "mnist.toml").space
    study = optuna.create_study(sampler=make_sampler(StudySettings().sampler, 3, space))
    enqueue(study, [({"optimizer": "adam", "lr": 0.001}, "study file")])
    for _ in range(2):
        trial = study.ask()
        study.tell(trial, sample(trial, space)["lr"])
    partly_queued, sampled = (t.params for t in study.trials)
    assert (partly_queued["optimizer"], partly_queued["lr"]) == ("adam", 0.001)
    left_to_sampler = ("batch_size", "dropout", "weight_decay", "blocks")
    assert [partly_queued[n] for n in left_to_sampler] != [sampled[n] for n in left_to_sampler]


def test_a_unit_coordinate_maps_evenly_onto_ranges_steps_and_choices():
    dist = optuna.distributions
    assert from_unit(0.5, dist.FloatDistribution(1e-4, 1e-2, log=True)) == pytest.approx(1e-3)
    assert from_unit(0.25, dist.FloatDistribution(0.0, 0.4)) == pytest.approx(0.1)
    assert [from_unit(u, dist.IntDistribution(1, 3)) for u in (0, 0.34, 0.67, 0.999)] == \
        [1, 2, 3, 3]
    assert from_unit(0.99, dist.FloatDistribution(0.0, 1.0, step=0.25)) == 1.0
    assert [from_unit(u, dist.CategoricalDistribution(["a", "b"])) for u in (0.1, 0.6)] == \
        ["a", "b"]
    almost_one = math.nextafter(1.0, 0.0)
    assert [from_unit(u, dist.IntDistribution(1, 64, log=True)) for u in (0, almost_one)] == \
        [1, 64]
    assert from_unit(almost_one, dist.FloatDistribution(1e-4, 0.3, log=True)) <= 0.3
    assert from_unit(almost_one, dist.FloatDistribution(0.0, 0.5)) <= 0.5
    assert from_unit(almost_one, dist.FloatDistribution(0.0, 1.0, step=0.1)) == pytest.approx(1.0)
    assert from_unit(almost_one, dist.IntDistribution(0, 3)) == 3
    assert from_unit(almost_one, dist.CategoricalDistribution([32, 64, 128])) == 128


def test_a_trial_is_never_pruned_after_its_last_epoch(tiny_data):
    """Pruning saves the epochs still to come: after the last one there are none, and a
    trial that trained them all is complete, whatever a pruner that judges at that step (a
    rung of successive halving at the last epoch, say) would say."""
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=1e-9))
    objective = Objective(data=tiny_data, runtime=resolve_device("cpu"), space=small_space(),
                          epochs=1, seed=0)
    trial = study.ask()
    study.tell(trial, objective(trial))
    assert study.trials[0].state == TrialState.COMPLETE


def test_a_queued_trial_runs_all_its_epochs_and_the_pruner_still_judges_by_it(tiny_data):
    """A queued configuration (the built-in study's, a warm start's) is a starting point
    someone chose to see whole: successive halving, which would stop it after epoch 1 behind a
    better trial, lets it run on, yet records its loss at the rung, so the sampled trials are
    judged against it. A sampled trial in the same place is stopped."""
    space = small_space()
    study = optuna.create_study(pruner=make_pruner("successive-halving", epochs=3),
                                sampler=optuna.samplers.RandomSampler(seed=0))
    # A trial far ahead at epoch 1: any later trial is behind it at the first rung.
    study.add_trial(optuna.create_trial(value=1e-6, intermediate_values={1: 1e-6, 3: 1e-6},
                                        system_attrs={"completed_rung_0": 1e-6}))
    objective = Objective(data=tiny_data, runtime=resolve_device("cpu"), space=space,
                          epochs=3, seed=0)
    enqueue(study, [({"optimizer": "adam", "lr": 0.01}, "the study file")])
    queued = study.ask()
    study.tell(queued, objective(queued))
    frozen = study.trials[-1]
    assert frozen.state == TrialState.COMPLETE and frozen.user_attrs["epochs_run"] == 3
    assert any(key.startswith("completed_rung_") for key in frozen.system_attrs)

    sampled = study.ask()
    with pytest.raises(optuna.TrialPruned):
        objective(sampled)
    study.tell(sampled, state=TrialState.PRUNED)
    assert study.trials[-1].user_attrs["epochs_run"] == 1


@pytest.mark.parametrize("given, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_openmp_threads_sleep_while_waiting_unless_the_user_chose(given, expected):
    """`import tuning` sets OMP_WAIT_POLICY before torch loads OpenMP (spinning threads stall
    a shared machine), keeping a value the user set."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given is not None:
        env["OMP_WAIT_POLICY"] = given
    shown = subprocess.run([sys.executable, "-c", "import os, tuning, sys; "
                            "print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)"],
                           env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                           check=True).stdout.split()
    assert shown == [expected, "False"]


# --- --patience: stop when more trials are unlikely to help ---------------------------------

def _finished(states_and_values) -> list[optuna.trial.FrozenTrial]:
    return [optuna.trial.create_trial(state=state, value=value) if state == TrialState.COMPLETE
            else optuna.trial.create_trial(state=state)
            for state, value in states_and_values]


def test_patience_counts_the_finished_trials_after_the_best():
    complete, pruned = TrialState.COMPLETE, TrialState.PRUNED
    trials = _finished([(complete, 0.5), (complete, 0.3), (pruned, None), (complete, 0.4),
                        (TrialState.RUNNING, None), (TrialState.FAIL, None)])
    for number, trial in enumerate(trials):
        trial.number = number
    assert out_of_patience(trials, None) is None  # off
    stalled = out_of_patience(trials, 2)  # a pruned and a worse trial after the best (#1)
    assert stalled is not None and stalled.best.number == 1 and stalled.finished_after == 2
    assert "the 2 finished trials after the best (#1, val_loss 0.3000)" in str(stalled)
    assert out_of_patience(trials, 3) is None  # running and failed trials do not count
    assert out_of_patience(trials[:1], 1) is None  # nothing after the best yet
    assert out_of_patience(_finished([(pruned, None)] * 5), 1) is None  # no best yet
    tie = _finished([(complete, 0.3), (complete, 0.3)])
    for number, trial in enumerate(tie):
        trial.number = number
    assert out_of_patience(tie, 1).best.number == 0  # an equal loss does not beat it
    # A trial the run's --budget cut short, or one over the limits, said nothing of its
    # configuration: neither counts.
    cut = _finished([(complete, 0.3), (pruned, None), (pruned, None)])
    for number, trial in enumerate(cut):
        trial.number = number
    cut[1].user_attrs["prune_reason"] = f"{BUDGET_STOP} after epoch 2"
    cut[2].user_attrs["prune_reason"] = f"{OVER_LIMITS}: 3,256,330 parameters > max_params"
    assert stopped_by_budget(cut[1]) and over_limits(cut[2])
    assert out_of_patience(cut, 1) is None


def test_a_worker_out_of_patience_waits_while_a_trial_runs_that_may_beat_the_best(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    study = optuna.create_study(study_name="s", storage=open_storage(url, create=True))
    for value in (0.3, 0.5):
        study.add_trial(optuna.trial.create_trial(state=TrialState.COMPLETE, value=value))
    running = study.ask()
    lock = StudyLock(url, "s")
    try:
        assert take_trial(study, 100, lock, patience=1) is NoTrial.WAIT
        study.tell(running, 0.2)  # it beat the best: the search goes on
        assert isinstance(take_trial(study, 100, lock, patience=1), optuna.Trial)
    finally:
        lock.close()


def test_a_worker_stops_taking_trials_once_patience_runs_out(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    study = optuna.create_study(study_name="s", storage=open_storage(url, create=True))
    losses = iter([0.5, 0.3, 0.4, 0.35, 0.6, 0.1, 0.05])
    lock = StudyLock(url, "s")
    try:
        stats = run_trials(study, lambda trial: next(losses), 100, lock, patience=3)
    finally:
        lock.close()
    # The best is trial 1 (0.3); trials 2-4 do not beat it: no trial 5 is started.
    assert [t.value for t in study.trials] == [0.5, 0.3, 0.4, 0.35, 0.6]
    assert stats.out_of_patience and stats.finished == 5


def test_a_search_stops_early_when_patience_runs_out_and_says_why(workdir, cheap_space):
    cheap_space(workdir)
    search = ("--trials", "40", "--patience", "2", "--dataset", "mnist-sample", "--epochs", "1",
              "--workers", "2")
    first = run_cli(*search, cwd=workdir)
    assert first.returncode == 0, first.stderr
    assert "stopped early: the " in first.stdout and "(--patience 2)" in first.stdout
    study = load_study(f"sqlite:///{workdir}/studies/mnist.db", "mnist")
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) < 40 and study.user_attrs["patience"] == 2
    assert out_of_patience(study.trials, 2) is not None
    again = run_cli(*search, cwd=workdir)  # the same command: nothing more to learn
    assert again.returncode == 0 and "nothing to run; raise --patience" in again.stdout
    assert len(load_study(f"sqlite:///{workdir}/studies/mnist.db", "mnist").trials) == \
        len(study.trials)
    # Without --patience the search goes on to its target: the setting is this run's.
    more = run_cli("--trials", str(len(finished) + 1), *search[4:], cwd=workdir)
    assert more.returncode == 0, more.stderr
    study = load_study(f"sqlite:///{workdir}/studies/mnist.db", "mnist")
    assert study.user_attrs["patience"] is None
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED)
               for t in study.trials) == len(finished) + 1


@pytest.mark.parametrize("study, words", [("compare-optimizers", "a grid runs every"),
                                          ("seed", "every parameter is fixed")])
def test_patience_is_refused_where_trials_are_not_a_search_that_can_stall(
        workdir, monkeypatch, capsys, study, words):
    monkeypatch.chdir(workdir)
    assert main(["--study", study, "--patience", "5", "--dataset", "mnist-sample"]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1
    assert not (workdir / "studies" / f"{study}.db").exists()
