"""Tier 3: the real CLI, in a subprocess, on tiny budgets; and every bad input exits 2."""

from __future__ import annotations

import signal

import pytest
from helpers import (
    POSTGRES_URL,
    exit_status,
    load_study,
    run_cli,
    start_search,
    wait_for_running_trials,
)
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from tuning.command import main as tuning_main
from tuning.search import main
from tuning.storage import mask_url, shareable_url

FAST = ("--dataset", "mnist-sample", "--epochs", "2")


def db_files(folder) -> list:
    return sorted(p.name for p in folder.rglob("*.db*"))


def load(workdir, name="mnist"):
    return load_study(f"sqlite:///{workdir}/studies/{name}.db", name)


@pytest.mark.slow
def test_search_runs_and_a_rerun_continues_to_the_new_target(workdir, cheap_space):
    cheap_space(workdir)
    first = run_cli("--trials", "4", *FAST, cwd=workdir)
    assert first.returncode == 0, first.stderr
    study = load(workdir)
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 4 and len(study.trials) == 4
    assert "[   4/4]" in first.stderr and "ETA" in first.stderr
    assert "best trial #" in first.stdout
    assert "tuning dashboard --study mnist" in first.stdout
    assert "tuning report --study mnist" in first.stdout
    data = study.user_attrs["data"]
    assert data["name"] == "mnist-sample" and data["n_val"] == 400 and len(data["sha256"]) == 64
    for t in study.trials:
        assert {"val_accuracy", "train_eval_loss", "epochs_run", "train_seconds",
                "samples_per_second", "device", "worker"} <= set(t.user_attrs)

    second = run_cli("--trials", "6", *FAST, cwd=workdir)
    assert second.returncode == 0, second.stderr
    study = load(workdir)
    assert len(study.trials) == 6
    assert [t.number for t in study.trials[4:]] == [4, 5]


def test_a_resumed_study_keeps_its_sampler_and_pruner_and_refuses_others(workdir,
                                                                       monkeypatch, capsys):
    # Its workers follow the stored ones: a run in this process must too, or the same command
    # would search differently by its number of workers.
    monkeypatch.chdir(workdir)
    assert main(["--create-only", "--trials", "2", "--pruner", "none", "--sampler", "random",
                 *FAST]) == 0
    capsys.readouterr()
    assert main(["--create-only", "--trials", "2", "--pruner", "median", *FAST]) == 2
    assert ("study 'mnist' runs pruner none, not --pruner median: its workers follow what it "
            "was created with; use another --study name") in capsys.readouterr().err
    assert main(["--create-only", "--trials", "3", "--dataset", "mnist-sample"]) == 2
    assert ("study 'mnist' runs 2 epochs per trial, not 8: give --epochs 2 to go on with it, or "
            "another --study name for a new one") in capsys.readouterr().err
    assert main(["--create-only", "--trials", "3", *FAST]) == 0  # the study file's are others
    assert "sampler random, pruner none" in capsys.readouterr().err
    settings = load(workdir).user_attrs["settings"]
    assert (settings["sampler"], settings["pruner"]) == ("random", "none")


def test_create_only_again_changes_what_it_is_given_and_keeps_the_rest(workdir, monkeypatch,
                                                                        capsys):
    # Workers elsewhere follow the stored target and patience: a --create-only that sets one
    # must not reset the other to its default.
    monkeypatch.chdir(workdir)

    def stored():
        attrs = load(workdir).user_attrs
        return attrs["target_trials"], attrs["patience"]

    assert main(["--create-only", "--trials", "5", "--patience", "2", *FAST]) == 0
    assert main(["--create-only", "--patience", "3", *FAST]) == 0
    assert stored() == (5, 3)
    assert main(["--create-only", "--trials", "9", *FAST]) == 0
    assert stored() == (9, 3)
    assert "(target 9, patience 3)" in capsys.readouterr().out


def test_a_search_without_trials_keeps_an_existing_studys_target(workdir, monkeypatch,
                                                                   capsys):
    """Joining a shared study from another host without --trials must not reset the target
    every worker follows to the default 100 (cutting a study of 500 short)."""
    monkeypatch.chdir(workdir)
    assert main(["--create-only", "--trials", "500", *FAST]) == 0
    assert main(["--create-only", *FAST]) == 0
    assert main(["--budget", "0.01s", *FAST]) == 0  # a run joining it, that starts no trial
    assert load(workdir).user_attrs["target_trials"] == 500
    assert "0/500 finished" in capsys.readouterr().err


@pytest.mark.postgres
def test_the_workers_command_a_create_only_prints_runs_as_copied(workdir, monkeypatch, capsys):
    """With the password in the URL, the printed worker command leaves it out (a *** copied
    with it would be sent as the password) and says where it goes."""
    import shlex
    import uuid

    import optuna

    from tuning.storage import open_storage
    from tuning.worker import main as worker

    monkeypatch.chdir(workdir)
    name = f"hint-{uuid.uuid4().hex[:8]}"
    url = make_url(POSTGRES_URL).set(password="pw").render_as_string(hide_password=False)
    try:
        assert main(["--create-only", "--study", name, "--config", "mnist", "--trials", "1",
                     "--storage", url, *FAST]) == 0
        out = capsys.readouterr().out
        command = out.split("start workers with: ")[1].split(";")[0]
        assert "pw" not in command and "***" not in command
        assert out.rstrip().endswith("; give the password in PGPASSWORD or PGPASSWORD_FILE")
        argv = shlex.split(command)
        assert argv[:2] == ["tuning", "worker"]
        monkeypatch.setenv("PGPASSWORD", "pw")  # trust authentication takes any
        assert worker([*argv[2:], "--budget", "0.01s"]) == 0
    finally:
        optuna.delete_study(study_name=name, storage=open_storage(POSTGRES_URL, heartbeat=False))


@pytest.mark.slow
def test_seed_study_runs_the_tutorial_configuration(workdir):
    # One epoch of the tutorial's 32-channel network is enough to show that it learns.
    result = run_cli("--study", "seed", "--trials", "1", "--dataset", "mnist-sample",
                     "--epochs", "1", cwd=workdir)
    assert result.returncode == 0, result.stderr
    trial = load(workdir, "seed").trials[0]
    assert trial.state == TrialState.COMPLETE and trial.params == {}  # everything fixed
    assert trial.user_attrs["val_accuracy"] > 0.5
    # Repeats of one configuration have no best trial, as the report says too.
    assert "every parameter is fixed: 1 complete repeat of one configuration, val_loss " \
        f"{trial.value:.4f}" in result.stdout
    assert "best trial #" not in result.stdout


@pytest.mark.slow
def test_data_that_differ_from_the_study_are_refused(workdir, cheap_space):
    cheap_space(workdir)
    assert run_cli("--trials", "1", *FAST, cwd=workdir).returncode == 0
    before = (workdir / "studies" / "mnist.db").read_bytes()
    other = run_cli("--trials", "2", "--dataset", "mnist-sample", "--epochs", "2", "--seed", "7",
                    cwd=workdir)
    assert other.returncode == 2
    assert other.stderr.strip().count("\n") == 0 and "use another --study" in other.stderr
    assert len(load(workdir).trials) == 1
    assert (workdir / "studies" / "mnist.db").read_bytes() == before


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_marks_the_running_trial_failed(workdir, cheap_space, sig, code):
    cheap_space(workdir)
    proc = start_search("--trials", "50", "--dataset", "mnist-sample", "--epochs", "50",
                        cwd=workdir)
    wait_for_running_trials(f"sqlite:///{workdir}/studies/mnist.db", "mnist", proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    states = [t.state for t in load(workdir).trials]
    assert TrialState.RUNNING not in states and TrialState.FAIL in states


BAD_INPUTS = {
    "zero trials": (["--trials", "0"], "--trials"),
    "negative trials": (["--trials", "-3"], "--trials"),
    "non-numeric trials": (["--trials", "many"], "'many'"),
    "a target no search could run": (["--trials", "99999999999999999999999"],
                                     "at most 10,000,000"),
    "a hundred thousand workers": (["--workers", "100000"], "--workers: expected at most 1,024"),
    "too many workers per gpu": (["--workers-per-gpu", "2000"], "--workers-per-gpu"),
    "an endless timeout": (["--timeout", "inf"], "--timeout: expected a duration"),
    "zero epochs": (["--epochs", "0"], "--epochs"),
    "a negative duration": (["--budget", "-5s"], "argument --budget: expected a duration such "
                                                "as 300, 90s, 5m or 1h30m, got '-5s'"),
    "a flag cut short": (["--trial", "3"], "unrecognized arguments: --trial 3"),
    "unknown dataset": (["--dataset", "cifar"], "unknown dataset 'cifar'"),
    "unknown sampler": (["--sampler", "bayes"], "'bayes'"),
    "unknown pruner": (["--pruner", "early"], "'early'"),
    "missing study file": (["--config", "studies/nope.toml"], "not found"),
    "broken study file": (["--config", "studies/broken.toml"], "not valid TOML"),
    "invalid study file": (["--config", "studies/inverted.toml"], "space.lr"),
    "malformed storage": (["--storage", "not a url"], "not a database URL"),
    "unsupported storage": (["--storage", "redis://127.0.0.1:6379/0"], "unsupported backend"),
    "a driver not installed": (["--storage", "postgresql+pg8000://u:s3cret@127.0.0.1/x"],
                               "names the driver 'pg8000', which is not installed"),
    "a driver unknown": (["--storage", "postgresql+nosuch://u:s3cret@127.0.0.1/x"],
                         "'postgresql+nosuch' is not a database and driver that SQLAlchemy "
                         "knows"),
    "unwritable storage": (["--storage", "sqlite:////nonexistent/dir/x.db"], "does not exist"),
    "storage is a directory": (["--storage", "sqlite:///studies"], "is a directory"),
    "missing data dir": (["--data-dir", "no/such/dir"], "--data-dir"),
    "data dir beside a path": (["--dataset", "studies", "--data-dir", "studies"],
                               "leave --data-dir out"),
    "warm-start top without a study": (["--warm-start-top", "3"],
                                       "give that too, or leave it out"),
    "artifacts in a file": (["--artifacts", "studies/broken.toml"],
                            "artifact directory 'studies/broken.toml' is not a directory"),
    "artifacts under a file": (["--artifacts", "studies/broken.toml/a"],
                               "cannot be created: 'studies/broken.toml' is not a directory"),
    "bad device": (["--device", "tpu"], "--device"),
    "unknown compile mode": (["--compile", "fast"], "'fast'"),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line_and_stores_nothing(case, workdir, monkeypatch, capsys):
    args, expected = BAD_INPUTS[case]
    (workdir / "studies" / "broken.toml").write_text("[space\n")
    (workdir / "studies" / "inverted.toml").write_text("[space]\nlr = {low = 1.0, high = 0.1}\n")
    monkeypatch.chdir(workdir)
    code = exit_status(main, [*args, "--dataset", "mnist-sample"] if "--dataset" not in args
                       else args)
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert expected in err and "Traceback" not in err
    assert "s3cret" not in err
    assert db_files(workdir) == []


@pytest.mark.parametrize("command, args", [
    ("search", ["--dataset", "mnist-sample"]), ("search", ["--study", "mine"]),
    ("worker", ["--study", "mine"]),
    ("report", ["--study", "mine"]), ("export", ["--study", "mine"]),
    ("dashboard", ["--study", "mine"]), ("studies", [])])
def test_a_server_that_does_not_answer_is_one_line_and_status_4_for_every_command(
        command, args, workdir, monkeypatch, capsys):
    """Not waited for by a command run by hand (a mistyped host should not take minutes), but
    not a usage error either: the server may be restarting, and a script or scheduler tells
    "run it again" (4) from "fix the command" (2). A worker waits, then ends with 4 too."""
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("TUNING_DB_RETRY_S", "1")
    url = "postgresql://u:s3cret@127.0.0.1:1/x"  # nothing listens there
    assert exit_status(tuning_main, [command, *args, "--storage", url]) == 4
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: ") and "Traceback" not in err, err
    assert "s3cret" not in err and "127.0.0.1:1" in lines[-1]
    if command != "worker":
        assert len(lines) == 1 and "is the server up and the URL right?" in err, err
    assert db_files(workdir) == []


@pytest.mark.parametrize("args", [["--dataset", "no/such/folder"],
                                  ["--dataset", "one-class"],
                                  ["--dataset", "mnist-sample", "--device", "tpu"]],
                         ids=["missing images", "one class", "bad device"])
def test_a_refused_search_in_an_empty_directory_leaves_it_empty(args, tmp_path, monkeypatch,
                                                                  capsys):
    # The default database's folder, studies/, comes with the study and not before it.
    (tmp_path / "one-class" / "digit").mkdir(parents=True)
    (tmp_path / "one-class" / "digit" / "0.pgm").write_bytes(b"P5 4 4 255 " + bytes(16))
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    monkeypatch.chdir(tmp_path)
    assert exit_status(main, [*args, "--trials", "1"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


@pytest.mark.slow
@pytest.mark.parametrize("case",
                         ["non-numeric trials", "invalid study file", "unwritable storage"])
def test_bad_input_in_a_real_process(case, workdir):
    args, expected = BAD_INPUTS[case]
    (workdir / "studies" / "inverted.toml").write_text("[space]\nlr = {low = 1.0, high = 0.1}\n")
    result = run_cli(*args, "--dataset", "mnist-sample", cwd=workdir)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and expected in result.stderr
    assert db_files(workdir) == []


@pytest.mark.slow
def test_timeout_stops_starting_trials(workdir, cheap_space):
    cheap_space(workdir)
    result = run_cli("--trials", "100", "--timeout", "1", *FAST, cwd=workdir)
    assert result.returncode == 0, result.stderr
    study = load(workdir)
    assert 1 <= len(study.trials) < 100  # the running trial finishes; no new one starts
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)


def test_workers_per_gpu_without_a_gpu_says_it_does_not_apply(workdir, cheap_space,
                                                                 monkeypatch, capsys):
    cheap_space(workdir)
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU, whatever the machine has
    assert main(["--workers-per-gpu", "3", "--trials", "1", *FAST]) == 0
    err = capsys.readouterr().err
    assert "--workers-per-gpu 3 does not apply: no GPU is visible, so 1 worker runs on the " \
           "CPU" in err
    # With --create-only no worker runs here at all: such flags are refused.
    assert main(["--workers-per-gpu", "3", "--budget", "1m", "--create-only", *FAST]) == 2
    assert ("--workers-per-gpu and --budget with --create-only: no trial runs here, so they do "
            "nothing; leave them out") in capsys.readouterr().err


# --- URLs shown and URLs to copy --------------------------------------------------------------

@pytest.mark.parametrize(("url", "masked", "shareable"), [
    ("postgresql://u@h/db?sslpassword=abc&password=x",
     "postgresql://u@h/db?sslpassword=***&password=***", "postgresql://u@h/db"),
    ("postgresql://postgres:secret@127.0.0.1:5432/test",
     "postgresql://postgres:***@127.0.0.1:5432/test", "postgresql://postgres@127.0.0.1:5432/test"),
    ("postgresql://u:secret@h:5432/db?sslmode=require&SSLPassword=secret&application_name=w",
     "postgresql://u:***@h:5432/db?sslmode=require&SSLPassword=***&application_name=w",
     "postgresql://u@h:5432/db?sslmode=require&application_name=w"),
    ("postgresql://u@h/db?pass%77ord=secret&sslmode=require",
     "postgresql://u@h/db?pass%77ord=***&sslmode=require", "postgresql://u@h/db?sslmode=require"),
    ("postgresql+psycopg://u:secret@with@h/db", "postgresql+psycopg://u:***@h/db",
     "postgresql+psycopg://u@h/db"),  # a raw '@' in the password: left out whole
    ("postgresql://u@h/db?application_name=a@b&passwords=kept",
     "postgresql://u@h/db?application_name=a@b&passwords=kept",
     "postgresql://u@h/db?application_name=a@b&passwords=kept"),
    ("sqlite:///studies/mnist.db", "sqlite:///studies/mnist.db", "sqlite:///studies/mnist.db"),
])
def test_every_password_in_a_url_is_masked_for_showing_and_left_out_for_copying(
        url, masked, shareable):
    assert mask_url(url) == masked
    # A copied command must not send *** as the password: PGPASSWORD(_FILE) gives it.
    assert shareable_url(url) == shareable and "secret" not in shareable and "*" not in shareable
    parsed = make_url(shareable)
    assert parsed.password is None
    assert not any(key.lower().endswith("password") for key in parsed.query)
    kept = make_url(url.replace("secret@with@", "secret%40with@"))  # as resolve_url asks
    assert (parsed.username, parsed.host, parsed.port, parsed.database) == (
        kept.username, kept.host, kept.port, kept.database)


def test_a_diverged_loss_keeps_the_progress_line_in_its_columns():
    from tuning.cli import loss_text

    assert [loss_text(v) for v in (0.1234567, 9.99994, 12.3456, 61496.64)] == \
        ["0.1235", "9.9999", "12.35", "6.15e+04"]
    assert max(len(loss_text(10.0 ** k)) for k in range(1, 40)) <= 8
    # A near-perfect fit is not shown as 0.0000.
    assert [loss_text(v) for v in (4.0494582e-05, 0.0012345, 0.0)] == \
        ["4.049e-05", "0.0012", "0.0000"]
    assert max(len(loss_text(10.0 ** -k)) for k in range(1, 40)) <= 9
