"""The `tuning` command: one entry point with subcommands, installable anywhere."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import optuna
import pytest

ROOT = Path(__file__).resolve().parents[1]


def tuning(*args: str, cwd: Path, env: dict | None = None,
           pythonpath: Path = ROOT) -> subprocess.CompletedProcess:
    """`python -m tuning ARGS`: what the `tuning` console script runs."""
    full_env = {**os.environ, "PYTHONPATH": str(pythonpath), **(env or {})}
    return subprocess.run([sys.executable, "-m", "tuning", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=300)


def test_version_and_help(tmp_path):
    version = tuning("--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("tuning ")
    helped = tuning("--help", cwd=tmp_path)
    assert helped.returncode == 0
    for sub in ("search", "worker", "report", "dashboard", "studies"):
        assert f"  {sub} " in helped.stdout
    for bad in ([], ["nosuch"]):
        result = tuning(*bad, cwd=tmp_path)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("sub", ["search", "worker", "report", "dashboard"])
def test_every_subcommand_runs_its_module_under_its_own_name(tmp_path, sub):
    result = tuning(sub, "--help", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith(f"usage: tuning {sub}")
    assert "--study" in result.stdout and "--storage" in result.stdout


def test_studies_lists_built_ins_and_a_local_file_overrides_one(tmp_path):
    listed = tuning("studies", cwd=tmp_path)
    assert listed.returncode == 0
    rows = {line.split()[0]: line.split() for line in listed.stdout.splitlines()}
    assert {"mnist", "seed", "fashion-mnist", "compare-optimizers"} <= set(rows)
    assert rows["mnist"][1] == "built-in"
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "mnist.toml").write_text(
        '[study]\ndataset = "mnist-sample"\nepochs = 1\n[space]\nlr = { low = 0.001, high = 0.1, '
        'log = true }\n')
    (tmp_path / "studies" / "mine.toml").write_text("[study]\nepochs = 2\n")
    listed = tuning("studies", cwd=tmp_path)
    rows = {line.split()[0]: line.split() for line in listed.stdout.splitlines()}
    assert rows["mnist"][1] == "local" and rows["mine"][1] == "local"
    assert rows["seed"][1] == "built-in"


def python_m(module: str, *args: str, cwd: Path,
             pythonpath: Path = ROOT) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS`, as a user runs a subcommand's module."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(pythonpath)},
                          capture_output=True, text=True, timeout=300)


def test_python_m_tuning_studies_is_tuning_studies(tmp_path):
    listed = python_m("tuning.studies", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout == tuning("studies", cwd=tmp_path).stdout
    assert "seed " in listed.stdout
    helped = python_m("tuning.studies", "--help", cwd=tmp_path)
    assert helped.returncode == 0 and helped.stdout.startswith("usage: python -m tuning.studies")
    refused = python_m("tuning.studies", "extra", cwd=tmp_path)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "takes only --storage" in refused.stderr


@pytest.mark.slow
def test_a_wheel_ships_the_study_files_and_python_m_tuning_studies(tmp_path):
    """Built from a copy of the package, so that the build leaves nothing in the checkout."""
    source = tmp_path / "source"
    shutil.copytree(ROOT / "tuning", source / "tuning",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path / "wheels"), str(source)], capture_output=True, text=True,
        timeout=300)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "wheels").glob("tuning-*.whl")
    installed = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(installed)
    shipped = {p.name for p in (installed / "tuning" / "studies").iterdir()}
    assert {"__init__.py", "__main__.py", "seed.toml", "mnist.toml"} <= shipped
    listed = python_m("tuning.studies", cwd=tmp_path, pythonpath=installed)
    assert listed.returncode == 0, listed.stderr
    assert str(installed / "tuning" / "studies" / "seed.toml") in listed.stdout


@pytest.mark.slow
def test_a_local_study_file_overrides_the_built_in_one(tmp_path):
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "mnist.toml").write_text(
        '[study]\ndataset = "mnist-sample"\nepochs = 1\nsampler = "random"\n'
        '[space]\nlr = { low = 0.001, high = 0.1, log = true }\n'
        'channels = 8\nbatch_size = 256\ncrop_padding = 0\n')  # fixed: cheap to train
    result = tuning("search", "--trials", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name="mnist", storage=f"sqlite:///{tmp_path}/studies/mnist.db")
    assert set(study.trials[0].params) == {"lr"}
    assert study.user_attrs["settings"]["sampler"] == "random"


@pytest.mark.slow
def test_a_plain_install_runs_from_any_directory(tmp_path):
    """Not editable: the built-in studies and the tutorial baseline come from the package."""
    target = tmp_path / "site"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr
    assert (target / "tuning" / "studies" / "seed.toml").is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    listed = tuning("studies", cwd=elsewhere, pythonpath=target)
    assert listed.returncode == 0, listed.stderr
    assert str(target) in listed.stdout
    version = tuning("--version", cwd=elsewhere, pythonpath=target)
    assert version.stdout.strip() == "tuning 0.1.0"
    created = tuning("search", "--study", "seed", "--trials", "1", "--dataset", "mnist-sample",
                     "--epochs", "1", "--create-only", cwd=elsewhere, pythonpath=target)
    assert created.returncode == 0, created.stderr
    study = optuna.load_study(study_name="seed", storage=f"sqlite:///{elsewhere}/studies/seed.db")
    assert study.user_attrs["versions"]["tuning"] == "0.1.0"
    assert study.user_attrs["config_path"].startswith(str(target))


def test_a_search_of_the_family_cnn_starts_without_importing_torchvision(tmp_path):
    """torchvision imports torch._dynamo: a second of every search's and worker's start on the
    CPU, which a budget of a minute cannot spare. Only a torchvision model needs it."""
    probe = (
        "import sys\n"
        "from tuning.search import main\n"
        "from tuning.study import environment\n"
        "status = main(['--trials', '1', '--dataset', 'mnist-sample', '--epochs', '1',\n"
        "               '--create-only'])\n"
        "versions = environment()\n"
        "print(status, 'torchvision' in sys.modules, versions['torchvision'])\n")
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    status, imported, version = result.stdout.split()[-3:]
    assert (status, imported) == ("0", "False")
    import torchvision

    assert torchvision.__version__.startswith(version)  # the installed one, by its metadata


@pytest.mark.parametrize("setting", ["TUNING_HEARTBEAT_INTERVAL=abc", "TUNING_GRACE_PERIOD=0",
                                     "TUNING_DB_RETRY_S=-1", "TUNING_HEARTBEAT_INTERVAL=1e9",
                                     "TUNING_DEVICE_DATA_MB=nan", "TUNING_WORKERS=two",
                                     "TUNING_WORKERS=" + "9" * 5000],
                         ids=lambda setting: setting[:40])
def test_a_bad_environment_variable_is_one_line_and_exit_2(tmp_path, setting):
    name, value = setting.split("=", 1)
    result = tuning("search", "--trials", "1", "--dataset", "mnist-sample", "--epochs", "1",
                    cwd=tmp_path, env={name: value})
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and name in result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []  # no database, no artifacts: nothing stored


@pytest.mark.slow
def test_the_study_records_each_workers_environment(tmp_path):
    result = tuning("search", "--trials", "2", "--workers", "2", "--dataset", "mnist-sample",
                    "--epochs", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name="mnist", storage=f"sqlite:///{tmp_path}/studies/mnist.db")
    creator = study.user_attrs["versions"]
    assert {"tuning", "git_commit", "command", "torch", "torchvision", "optuna", "numpy",
            "cuda"} <= set(creator)
    assert "search" in creator["command"]
    workers = {k: v for k, v in study.user_attrs.items() if k.startswith("worker:")}
    assert len(workers) == 2
    assert all("tuning.worker" in env["command"] for env in workers.values())
    # Log lines say when, how bad and, from workers, which one.
    assert " INFO [" in result.stderr and "] worker 0 joined" in result.stderr


def test_a_reader_that_goes_away_early_is_no_error(tmp_path):
    # `tuning studies | head -1`: here the reader is gone before anything is written.
    proc = subprocess.Popen([sys.executable, "-m", "tuning", "studies"], cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 141 and "Traceback" not in err and "Broken pipe" not in err, err


@pytest.mark.slow
def test_studies_lists_a_stored_study_without_a_file_and_creates_nothing(tmp_path):
    # Offline, without MNIST's files, the default search names its study mnist-sample: no
    # study file has that name, and `--study mnist-sample` resumes it from its database.
    created = subprocess.run([sys.executable, "-m", "tuning.search", "--create-only"],
                             cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                             capture_output=True, text=True, timeout=300)
    assert created.returncode == 0, created.stderr
    (tmp_path / "studies" / "other.db").write_text("not a database")
    import sqlite3

    with contextlib.closing(sqlite3.connect(tmp_path / "studies" / "foreign.db")) as conn:
        conn.execute("CREATE TABLE notes (text TEXT)")  # another program's database
        conn.commit()
    foreign = (tmp_path / "studies" / "foreign.db").read_bytes()
    before = sorted(p.name for p in (tmp_path / "studies").iterdir())
    listed = tuning("studies", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    stored = [line.split() for line in listed.stdout.splitlines() if " stored " in line]
    assert [row[0] for row in stored] == ["mnist-sample"]
    assert stored[0][-1] == "studies/mnist-sample.db"
    assert sorted(p.name for p in (tmp_path / "studies").iterdir()) == before
    assert (tmp_path / "studies" / "foreign.db").read_bytes() == foreign  # left as it was
    # A storage elsewhere (a PostgreSQL URL on a cluster): every study there, with its target.
    elsewhere = f"sqlite:///{tmp_path}/studies/mnist-sample.db"
    there = tuning("studies", "--storage", elsewhere, cwd=tmp_path / "studies")
    assert there.returncode == 0, there.stderr
    (row,) = [line for line in there.stdout.splitlines() if line.endswith(elsewhere)]
    assert row.startswith("mnist-sample ") and "0 of target 100 finished" in row
    # Named by --storage where it is also the local database: listed once, with its target.
    same = tuning("studies", "--storage", "sqlite:///studies/mnist-sample.db", cwd=tmp_path)
    assert same.returncode == 0, same.stderr
    (row,) = [line for line in same.stdout.splitlines() if line.startswith("mnist-sample ")]
    assert "0 of target 100 finished" in row
    refused = tuning("studies", "--storage", f"sqlite:///{tmp_path}/none.db", cwd=tmp_path)
    assert refused.returncode == 2 and refused.stderr.startswith("error: no study database")
    assert not (tmp_path / "none.db").exists()


def test_ctrl_c_while_a_subcommand_imports_is_one_line_and_130(monkeypatch, capsys):
    import importlib

    from tuning import command

    def interrupted(name):
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib, "import_module", interrupted)
    assert command.main(["search", "--trials", "1"]) == 130
    err = capsys.readouterr().err
    assert err == "tuning search: stopped by SIGINT\n"


def test_an_error_after_a_stop_was_asked_for_is_the_stops_end(monkeypatch, capsys):
    """A second Ctrl-C raised inside the database driver comes out as the driver's error
    (psycopg's 'can't change autocommit now' inside Optuna's StorageInternalError): the
    command was asked to stop, and stops with one line and the stop's status."""
    from optuna.exceptions import StorageInternalError

    from tuning import command, signals

    stop = signals.GracefulStop()
    monkeypatch.setattr(signals, "_installed", stop)

    def stopped_then_failed():
        stop._handle(signal.SIGTERM, None)
        raise StorageInternalError("An exception is raised during the commit.")

    assert command._ended("tuning worker", stopped_then_failed) == 128 + signal.SIGTERM
    assert capsys.readouterr().err == "tuning worker: stopped by SIGTERM\n"
    # Without a stop asked for, the error is a crash, as it was.
    monkeypatch.setattr(signals, "_installed", signals.GracefulStop())
    with pytest.raises(StorageInternalError):
        command._ended("tuning worker", _crash)


def _crash():
    from optuna.exceptions import StorageInternalError

    raise StorageInternalError("a bug")


@pytest.mark.parametrize("module", ["search", "worker", "report", "dashboard", "export",
                                    "predict", "worker --launched"])
def test_ctrl_c_while_python_m_imports_its_module_is_one_line_and_130(tmp_path, module):
    # `python -m tuning.search` loads torch for seconds before its main runs: a Ctrl-C then
    # (say, on seeing a mistyped flag) must not print a traceback. Sent once the module's
    # own imports begin: -X importtime reports a module loaded after tuning.command.
    module, *flags = module.split()
    proc = subprocess.Popen([sys.executable, "-X", "importtime", "-m", f"tuning.{module}",
                             "--study", "x", *flags], cwd=tmp_path, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stderr is not None
    command_loaded = False
    for line in proc.stderr:
        if command_loaded:
            proc.send_signal(signal.SIGINT)
            break
        command_loaded = line.rstrip().endswith("| tuning.command")
    rest = [line for line in proc.stderr if not line.startswith("import time:")]
    assert proc.wait(timeout=120) == 130, rest
    # A worker its launcher started leaves the line to the launcher, which says it once.
    assert rest == ([] if flags else [f"python -m tuning.{module}: stopped by SIGINT\n"])


@pytest.mark.parametrize("args", [
    ["search", "--dataset", "{long}"], ["search", "--data-dir", "{long}"],
    ["search", "--dataset", "{long}.npz"], ["predict", "--model", "{long}", "x.png"]])
def test_a_path_with_a_name_too_long_for_the_file_system_is_one_line(tmp_path, args):
    long = str(tmp_path / ("y" * 300))  # one name of 300 bytes: over every file system's 255
    (tmp_path / "studies").mkdir()
    result = tuning(*[arg.format(long=long) for arg in args], cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: a path given is too long for the file system")
    assert len(result.stderr) < 300
    assert [p.name for p in tmp_path.iterdir()] == ["studies"]


def test_a_grid_study_targets_its_configurations_not_the_default_100(tmp_path):
    # Past the grid's end, the sampler would run its configurations again, seed and all.
    created = tuning("search", "--study", "compare-optimizers", "--dataset", "mnist-sample",
                     "--create-only", cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    assert "the grid has 48 configurations: the target is 48 trials, not 100" in created.stderr
    study = optuna.load_study(study_name="compare-optimizers",
                              storage=f"sqlite:///{tmp_path}/studies/compare-optimizers.db")
    assert study.user_attrs["target_trials"] == 48


def test_tuning_studies_keeps_its_columns_however_long_a_description(monkeypatch, capsys):
    from tuning import command

    long = "/data/projects/an/image/folder/far/down, 2 epochs, tpe / successive-halving"
    monkeypatch.setattr(command, "_stored_studies",
                        lambda known: [("own", long, Path("studies/own.db"))])
    assert command.list_studies([]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith("own ") and long in lines[-1]
    assert len({line.rindex(" ") for line in lines}) == 1  # one column of paths


def test_tuning_studies_lists_a_stored_study_it_cannot_open_with_the_reason(
        tmp_path, monkeypatch, capsys):
    # A study database in a folder mounted read-only: SQLite cannot open it there. It is
    # listed with why, not left out as if it were not there.
    import sqlite3

    from tuning import command, storage, study
    from tuning.errors import UsageError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "studies").mkdir()
    optuna.create_study(study_name="own", storage="sqlite:///studies/own.db")

    def read_only(path):
        raise sqlite3.OperationalError("unable to open database file")

    def cannot_write(url, **kwargs):
        raise UsageError("'studies/own.db' cannot be written")

    monkeypatch.setattr(storage, "optuna_tables", read_only)
    monkeypatch.setattr(study, "open_storage", cannot_write)
    assert command.list_studies([]) == 0
    (row,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("own ")]
    assert "cannot be read: 'studies/own.db' cannot be written" in row


def test_studies_says_when_the_storage_it_was_given_holds_none(tmp_path, monkeypatch, capsys):
    from tuning.command import list_studies

    url = f"sqlite:///{tmp_path}/empty.db"
    optuna.storages.RDBStorage(url)  # Optuna's tables, and no study
    monkeypatch.chdir(tmp_path)
    assert list_studies(["--storage", url]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"no study in {url}"
