"""Study storage: SQLite on one host, PostgreSQL across hosts.

URLs are checked before anything is opened, so a bad one changes nothing, and passwords are
masked wherever a URL is shown.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import os
import re
import sqlite3
from pathlib import Path

import optuna
from filelock import FileLock
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from tuning.errors import UsageError

# Seconds between a running trial's heartbeats, and how long without one before the trial is
# declared dead (its worker was killed) and failed; the retry callback re-enqueues it.
HEARTBEAT_INTERVAL = int(os.environ.get("TUNING_HEARTBEAT_INTERVAL", "10"))
GRACE_PERIOD = int(os.environ.get("TUNING_GRACE_PERIOD", "30"))
SQLITE_TIMEOUT_S = 120
# Optuna 4.9 renamed failed_trial_callback and RetryFailedTrialCallback (both removed in 6.0).
_RetryCallback = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback",
                         optuna.storages.RetryFailedTrialCallback)
_STALE_CALLBACK_ARG = (
    "heartbeat_stale_trial_callback"
    if "heartbeat_stale_trial_callback"
    in inspect.signature(optuna.storages.RDBStorage.__init__).parameters
    else "failed_trial_callback"
)


def default_storage(study: str) -> str:
    return f"sqlite:///studies/{study}.db"


def mask_url(url: str) -> str:
    """The URL with any password replaced by ***."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def _password_from_env(url) -> object:
    """Fill in a missing PostgreSQL password from PGPASSWORD or the file in PGPASSWORD_FILE."""
    if url.password:
        return url
    if os.environ.get("PGPASSWORD"):
        return url.set(password=os.environ["PGPASSWORD"])
    path = os.environ.get("PGPASSWORD_FILE")
    if path:
        try:
            return url.set(password=Path(path).read_text().strip())
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
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise UsageError(
            f"--storage {mask_url(url)!r} is not a database URL "
            "(expected sqlite:///path.db or postgresql://user@host:port/db)") from None
    backend = parsed.drivername.split("+")[0]
    if backend == "sqlite":
        path = sqlite_path(url)
        if path is None:
            raise UsageError(f"--storage {url!r}: an in-memory SQLite database cannot be shared; "
                             "give a file path, e.g. sqlite:///studies/mnist.db")
        if path.is_dir():
            raise UsageError(f"--storage {url!r}: {str(path)!r} is a directory")
        parent = path.parent if str(path.parent) else Path(".")
        if not parent.is_dir():
            raise UsageError(f"--storage {url!r}: directory {str(parent)!r} does not exist")
        if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
            raise UsageError(f"--storage {url!r}: {str(path)!r} cannot be written")
        return url
    if backend in ("postgresql", "postgres"):
        if "+" not in parsed.drivername:
            if importlib.util.find_spec("psycopg") is not None:
                parsed = parsed.set(drivername="postgresql+psycopg")
            elif importlib.util.find_spec("psycopg2") is not None:
                parsed = parsed.set(drivername="postgresql+psycopg2")
            else:
                raise UsageError(
                    "PostgreSQL storage needs a driver: pip install 'tuning[postgres]'")
        return _password_from_env(parsed).render_as_string(hide_password=False)
    raise UsageError(f"--storage {mask_url(url)!r}: unsupported backend {backend!r}; "
                     "use sqlite:/// or postgresql://")


def _prepare_sqlite(path: Path) -> None:
    # WAL lets readers proceed while one process writes; it is a property of the file, so set
    # it once before Optuna opens it. Together with a long busy timeout this is what keeps a
    # host's parallel workers free of 'database is locked'.
    with sqlite3.connect(path, timeout=SQLITE_TIMEOUT_S) as conn:
        conn.execute("PRAGMA journal_mode=WAL")


def open_storage(url: str, heartbeat: bool = True) -> optuna.storages.RDBStorage:
    """Open (creating tables if needed) the storage behind a URL checked by `resolve_url`."""
    resolved = resolve_url(url)
    path = sqlite_path(resolved)
    init_lock = contextlib.nullcontext()
    if path is not None:
        _prepare_sqlite(path)
        engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
        # Opening a storage writes its schema version; two processes opening a new file at
        # once both write it and one fails ('UNIQUE constraint failed: alembic_version').
        init_lock = FileLock(f"{path}.init.lock")
    else:
        # A bounded pool per worker: a worker needs one connection, plus one for heartbeats.
        engine_kwargs = {"pool_size": 2, "max_overflow": 2, "pool_pre_ping": True,
                         "pool_recycle": 1800, "connect_args": {"connect_timeout": 10}}
    heartbeat_kwargs = {}
    if heartbeat:
        retry = _RetryCallback(max_retry=3)
        heartbeat_kwargs = {
            "heartbeat_interval": HEARTBEAT_INTERVAL,
            "grace_period": GRACE_PERIOD,
            _STALE_CALLBACK_ARG: retry,
        }
    try:
        with init_lock:
            return optuna.storages.RDBStorage(resolved, engine_kwargs=engine_kwargs,
                                              **heartbeat_kwargs)
    except Exception as exc:  # noqa: BLE001 - driver errors vary; all mean "cannot open"
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        raise UsageError(f"cannot open storage {mask_url(url)}: {mask_url(reason)}") from None


def artifact_store(directory: Path | None = None):
    """Where trials' checkpoints and curves are kept: a directory every worker can reach
    (--artifacts, else $TUNING_ARTIFACTS, else ./artifacts)."""
    from optuna.artifacts import FileSystemArtifactStore

    path = Path(directory or os.environ.get("TUNING_ARTIFACTS", "artifacts"))
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"artifact directory {str(path)!r} cannot be created: "
                         f"{exc.strerror}") from None
    return FileSystemArtifactStore(str(path))
