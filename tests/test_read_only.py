"""Commands that only read (report, dashboard, worker) never create a database, a study or a
directory: a mistyped study name is one line and exit 2, with nothing left on disk."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import run_cli

from tuning.catalog import builtin_study_file

READERS = ["tuning.report", "tuning.dashboard", "tuning.worker"]


def _files(root) -> set[str]:
    """Every file under `root` but SQLite's write-ahead log and its index, which come and go
    with connections to the database."""
    return {os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs
            if not f.endswith(("-wal", "-shm"))}


def _one_line_error(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize("module", READERS)
def test_unknown_study_in_an_empty_directory_leaves_nothing(tmp_path, module):
    result = run_cli("--study", "typo", "--port", "1", module=module, cwd=tmp_path) \
        if module == "tuning.dashboard" else run_cli("--study", "typo", module=module,
                                                     cwd=tmp_path)
    assert "typo" in _one_line_error(result)
    assert _files(tmp_path) == set() and os.listdir(tmp_path) == []


@pytest.fixture(scope="module")
def existing(tmp_path_factory):
    """A directory with one real study, created the way a user creates one."""
    workdir = tmp_path_factory.mktemp("existing")
    created = run_cli("--create-only", "--study", "real", "--config",
                      str(builtin_study_file("mnist")), "--dataset", "mnist-sample", cwd=workdir)
    assert created.returncode == 0, created.stderr
    return workdir


@pytest.mark.parametrize("module", READERS)
def test_unknown_study_beside_a_real_one_changes_nothing(existing, module):
    before = {f: (existing / f).read_bytes() for f in _files(existing)}
    extra = ["--port", "1"] if module == "tuning.dashboard" else []
    result = run_cli("--study", "typo", "--storage", "sqlite:///studies/real.db", *extra,
                     module=module, cwd=existing)
    line = _one_line_error(result)
    assert "'typo' does not exist" in line
    after = {f: (existing / f).read_bytes() for f in _files(existing)}
    assert after.keys() == before.keys()  # no artifacts/, no lock file, no new database
    import optuna

    names = optuna.get_all_study_names(f"sqlite:///{existing}/studies/real.db")
    assert names == ["real"]


@pytest.mark.parametrize("module", READERS)
def test_the_default_study_asked_for_where_the_search_named_it_after_the_sample(tmp_path,
                                                                                module):
    # Offline, without MNIST's files, `tuning search` runs on the sample and names the study
    # mnist-sample: asked for `mnist`, a reader says so, and creates nothing.
    created = run_cli("--create-only", cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    before = _files(tmp_path)
    assert "studies/mnist-sample.db" in before
    extra = ["--port", "1"] if module == "tuning.dashboard" else []
    line = _one_line_error(run_cli("--study", "mnist", *extra, module=module, cwd=tmp_path))
    assert "no study database at 'studies/mnist.db'" in line
    assert line.endswith("named the study 'mnist-sample': give --study mnist-sample")
    assert _files(tmp_path) == before


def test_storage_errors_name_where_the_storage_came_from(tmp_path):
    # $TUNING_STORAGE, not a --storage nobody gave; and a reader in a directory without
    # ./studies is told there is no study database, not that a directory is missing.
    bogus = run_cli("--study", "seed", "--trials", "1", "--create-only", cwd=tmp_path,
                    env={"TUNING_STORAGE": "bogus"})
    assert _one_line_error(bogus).startswith("error: $TUNING_STORAGE 'bogus' is not a database")
    for module in ("tuning.report", "tuning.export"):
        line = _one_line_error(run_cli("--study", "own", module=module, cwd=tmp_path))
        assert "no study database at 'studies/own.db'" in line and "--storage '" not in line
        assert line.endswith("(or give --storage)")
        given = _one_line_error(run_cli("--study", "own", "--storage", "sqlite:///x.db",
                                        module=module, cwd=tmp_path))
        assert given.endswith("no study database at 'x.db'; create the study with tuning search")
    assert os.listdir(tmp_path) == []


@pytest.mark.postgres
def test_readers_leave_an_empty_postgresql_database_empty(monkeypatch, tmp_path, capsys):
    # Opened with Optuna, any database gets its tables: only a study's creation may make them.
    import importlib
    import uuid

    import psycopg
    from helpers import POSTGRES_URL

    admin = POSTGRES_URL.replace("postgresql+psycopg://", "postgresql://")
    name = f"empty_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = admin.rsplit("/", 1)[0] + f"/{name}"
    monkeypatch.chdir(tmp_path)
    try:
        for module in READERS + ["tuning.export"]:
            extra = ["--port", "1"] if module == "tuning.dashboard" else []
            code = importlib.import_module(module).main(["--study", "x", "--storage", url,
                                                         *extra])
            err = capsys.readouterr().err
            assert code == 2 and err.startswith("error: no study in "), (module, err)
        with psycopg.connect(url) as conn:
            tables = conn.execute("SELECT count(*) FROM information_schema.tables "
                                  "WHERE table_schema = 'public'").fetchone()
        assert tables == (0,)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_readers_leave_an_empty_sqlite_file_empty(monkeypatch, tmp_path, capsys):
    # What a creation stopped before its tables leaves; not a database at all, as found.
    import importlib

    monkeypatch.chdir(tmp_path)
    (tmp_path / "studies").mkdir()
    empty, other = tmp_path / "studies" / "x.db", tmp_path / "notes.db"
    empty.write_bytes(b"")
    other.write_text("not a database")
    for module in READERS + ["tuning.export", "tuning.command"]:
        extra = ["--port", "1"] if module == "tuning.dashboard" else []
        argv = ["studies", "--storage", "sqlite:///studies/x.db"] if module == "tuning.command" \
            else ["--study", "x", *extra]
        assert importlib.import_module(module).main(argv) == 2
        assert capsys.readouterr().err == (
            "error: no study in 'studies/x.db': it holds no Optuna tables (a creation cut short "
            "leaves an empty file); create the study with tuning search\n"), module
        assert importlib.import_module(module).main(
            [*argv[:-1], "sqlite:///notes.db"] if module == "tuning.command"
            else [*argv, "--storage", "sqlite:///notes.db"]) == 2
        assert "'notes.db' is not a usable SQLite database" in capsys.readouterr().err
    assert empty.read_bytes() == b"" and other.read_text() == "not a database"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["notes.db", "studies", "x.db"]


def test_a_database_in_a_read_only_directory_says_why_reading_needs_writing(monkeypatch,
                                                                            tmp_path):
    import tuning.storage
    from tuning.errors import UsageError

    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "x.db").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tuning.storage.os, "access", lambda path, mode: False)  # root ignores
    with pytest.raises(UsageError, match=r"'studies/x.db' cannot be written \(SQLite writes "
                                         r"its lock and log files beside the database, even to "
                                         r"read it: copy it somewhere writable\)"):
        tuning.storage.resolve_url("sqlite:///studies/x.db")


@pytest.mark.parametrize(("url", "expected"), [
    ("postgresql://postgres@127.0.0.1:abc/test", "is not a database URL"),
    ("postgresql://postgres@[::1/test", "is not a database URL"),
    ("postgresql://postgres@127.0.0.1:99999/test", "port 99999 is out of range (1..65535)"),
    ("sqlite:///studies/x.db?uri=true&mode=ro", "options after '?' are not supported for SQLite"),
    ("sqlite:///studies/x.db?mode=ro", "options after '?' are not supported for SQLite")],
    ids=["port not a number", "unclosed bracket", "port out of range", "sqlite uri options",
         "sqlite options"])
def test_a_malformed_storage_url_is_one_line_for_every_command(url, expected, monkeypatch,
                                                              tmp_path, capsys):
    # Refused as it is read: neither waited for as a database outage nor opened (SQLite would
    # make a second file named after the options).
    import importlib

    monkeypatch.chdir(tmp_path)
    (tmp_path / "studies").mkdir()
    for module in [*READERS, "tuning.export", "tuning.command", "tuning.search"]:
        argv = {"tuning.command": ["studies", "--storage", url],
                "tuning.search": ["--storage", url, "--create-only", "--dataset",
                                  "mnist-sample"],
                "tuning.dashboard": ["--study", "x", "--port", "1", "--storage", url]}.get(
            module, ["--study", "x", "--storage", url])
        assert importlib.import_module(module).main(argv) == 2, module
        err = capsys.readouterr().err
        assert err.startswith("error: ") and expected in err and err.count("\n") == 1, err
    assert [p.name for p in tmp_path.rglob("*")] == ["studies"]


def test_no_database_in_a_read_only_directory_says_none_can_be_made_there(monkeypatch,
                                                                            tmp_path):
    import tuning.storage
    from tuning.errors import UsageError

    (tmp_path / "studies").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tuning.storage.os, "access", lambda path, mode: False)  # root ignores
    with pytest.raises(UsageError, match=r"no database at 'studies/new.db', and directory "
                                         r"'studies' cannot be written to make one$"):
        tuning.storage.resolve_url("sqlite:///studies/new.db")


def test_an_artifact_directory_named_in_the_environment_must_exist_for_a_reader(monkeypatch,
                                                                               tmp_path):
    # As --artifacts must: else report, dashboard and export would go on without the
    # checkpoints the user pointed them at (export retraining instead).
    from tuning.errors import UsageError
    from tuning.storage import existing_artifact_store

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TUNING_ARTIFACTS", raising=False)
    assert existing_artifact_store() is None  # the default ./artifacts: no checkpoint saved
    (tmp_path / "a-file").write_text("")
    for value in ("nowhere", "a-file"):
        monkeypatch.setenv("TUNING_ARTIFACTS", value)
        with pytest.raises(UsageError, match=rf"^\$TUNING_ARTIFACTS '{value}' does not exist or "
                                             r"is not a directory$"):
            existing_artifact_store()
    (tmp_path / "kept").mkdir()
    monkeypatch.setenv("TUNING_ARTIFACTS", "kept")
    assert existing_artifact_store().path == Path("kept")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "kept"]


def test_a_driver_installed_but_not_loading_is_told_apart_from_one_not_installed(monkeypatch):
    from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg

    from tuning.errors import UsageError
    from tuning.storage import resolve_url

    def no_libpq():
        raise ImportError("no pq wrapper available: libpq library not found")

    monkeypatch.setattr(PGDialect_psycopg, "import_dbapi", staticmethod(no_libpq))
    with pytest.raises(UsageError, match=r"^--storage 'postgresql\+psycopg://u@h/db': the "
                                         r"driver 'psycopg' does not load: no pq wrapper "
                                         r"available: libpq library not found$"):
        resolve_url("postgresql+psycopg://u@h/db")


def test_the_hint_to_the_sample_names_the_flag_that_named_the_study(tmp_path, monkeypatch):
    import optuna

    from tuning.errors import UsageError
    from tuning.storage import default_storage
    from tuning.study import load_existing

    monkeypatch.chdir(tmp_path)
    (tmp_path / "studies").mkdir()
    optuna.create_study(study_name="mnist-sample", storage=default_storage("mnist-sample"))
    with pytest.raises(UsageError, match=r"named the study 'mnist-sample': give "
                                         r"--warm-start-from mnist-sample$"):
        load_existing("mnist", default_storage("mnist"), heartbeat=False,
                      flag="--warm-start-from")


def test_without_a_postgresql_driver_installed_a_url_says_what_to_install(monkeypatch):
    import importlib.util

    from tuning.errors import UsageError
    from tuning.storage import resolve_url

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
    with pytest.raises(UsageError, match=r"^PostgreSQL storage needs a driver: pip install "
                                         r"'psycopg\[binary\]'"):
        resolve_url("postgresql://u@h/db")
    with pytest.raises(UsageError, match=r"names the driver 'pg8000', which is not installed "
                                         r"\(.*\): pip install 'psycopg\[binary\]' and write "
                                         r"postgresql://$"):
        resolve_url("postgresql+pg8000://u@h/db")
