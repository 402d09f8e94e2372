"""Riding out database faults: a restart or a lost link is waited for, a full disk is one line.

Every storage call of a worker, the launcher and the report goes through `ResilientStorage`.
A connection error (PostgreSQL restarting, a partitioned host, SQLite busy) is retried with
backoff for up to `TUNING_DB_RETRY_S` seconds (default 300), with one log line when the outage
starts and one when it ends; a full disk is raised as `StorageFull`, which the command line
turns into one line and exit status 2.

Retrying is safe for reads and for the writes a worker makes: a write that failed was rolled
back. The one ambiguous case, a commit that reached the server just before the link broke,
can at worst create a trial nobody runs; such a trial has no heartbeat and is failed (and
retried) like a dead worker's, see `ResilientStorage._get_stale_trial_ids`.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import inspect
import itertools
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import optuna
import sqlalchemy.event
import sqlalchemy.exc
from optuna.storages._rdb import models
from optuna.storages._rdb.storage import RDBStorage, _create_scoped_session
from optuna.trial import TrialState

from tuning.pause import paused_within
from tuning.settings import number_setting
from tuning.signals import Interrupted, raise_if_stop_requested

log = logging.getLogger("tuning")

BACKOFF_S = (0.5, 1, 2, 4, 8, 10)
LOST_TO_A_PAUSE_S = 10.0
"""A connection that fails this soon after the worker resumed from a pause was lost to it: the
heartbeat thread uses the database every few seconds, and finds out first."""


def retry_seconds() -> float:
    """How long a database outage is waited out: TUNING_DB_RETRY_S (unset or empty: 300 s)."""
    return number_setting("TUNING_DB_RETRY_S", 300.0, low=0, high=86_400, unit="seconds")


class StorageFull(Exception):
    """The database's file system is full: nothing more can be stored until space is freed.
    Its message is the one line a command prints (`full_disk_message`)."""


def full_disk_message(where: str) -> str:
    """One line for a database (a file, or a masked URL) whose file system is full."""
    mount = _mount_point(Path(where)) if "://" not in where else None
    on = f" (file system {mount})" if mount else ""
    return (f"the file system of the study database {where}{on} is full; free some space "
            "and run the same command again: nothing stored is lost")


def _mount_point(path: Path) -> str | None:
    try:
        path = path.resolve()
        while not os.path.ismount(path):
            path = path.parent
        return str(path)
    except OSError:
        return None


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def root_reason(exc: BaseException) -> str:
    """The first line of what the database's driver said, under the layers Optuna and
    SQLAlchemy wrap it in (Optuna's StorageInternalError says only that a commit failed)."""
    links = list(_chain(exc))
    origins = [origin for link in links if (origin := getattr(link, "orig", None)) is not None]
    said = next((origin for origin in origins if str(origin).strip()), links[-1])
    return (str(said).strip().splitlines() or [type(said).__name__])[0]


def disk_full(exc: BaseException, sqlite_file: str | None = None) -> bool:
    """Whether an error from the database (any layer of it) means its disk is full.

    SQLite in WAL mode may say only 'disk I/O error' when it cannot grow its log, so the file
    system of a SQLite database (`sqlite_file`) is looked at too.
    """
    for link in _chain(exc):
        text = str(link).lower()
        if ("disk is full" in text or "no space left" in text
                or getattr(link, "sqlstate", None) == "53100" or getattr(link, "errno", 0) == 28):
            return True
    return sqlite_file is not None and no_space_left(
        os.path.dirname(os.path.abspath(sqlite_file)))


def no_space_left(directory: str) -> bool:
    """Whether the file system holding `directory` has (nearly) no space left for a user."""
    try:
        stats = os.statvfs(directory)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < 64 * 1024


# What a PostgreSQL server answers to a connection it will never accept: a database or a user
# that does not exist, a wrong password, a host it does not let in. Waiting does not help (a
# worker would wait out TUNING_DB_RETRY_S for nothing); the command's URL or password is wrong.
# psycopg gives no SQLSTATE for a refused connection: the server's words are matched, in
# English (a server in another language is waited for, as before).
REFUSALS = (("FATAL:", "database \"", "does not exist"), ("FATAL:", "role \"", "does not exist"),
            ("password authentication failed",), ("authentication failed for user",),
            ("no pg_hba.conf entry",), ("no password supplied",))


def refused_for_good(exc: BaseException) -> bool:
    """Whether the database server refused the connection for a reason waiting cannot fix."""
    text = " ".join(str(link) for link in _chain(exc))
    return any(all(words in text for words in refusal) for refusal in REFUSALS)


def refusal(url: str | None, exc: BaseException) -> str:
    """The line for a connection the server refused for good (`refused_for_good`)."""
    from tuning.storage import mask_url  # noqa: PLC0415 - storage imports this module

    which = f"the database {mask_url(url)}" if url else "the study's database"
    return f"{which} refused the connection: {mask_url(root_reason(exc))}"


def transient(exc: BaseException) -> bool:
    """Whether an error means the database cannot be reached right now (worth retrying)."""
    if refused_for_good(exc):
        return False
    for link in _chain(exc):
        if isinstance(link, sqlalchemy.exc.DBAPIError) and link.connection_invalidated:
            return True
        if isinstance(link, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError,
                             sqlalchemy.exc.DisconnectionError)):
            return True
    return False


class Outages:
    """When the database was last unreachable, as seen by this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.down_since: float | None = None
        self.reason = ""
        """What the driver said when the outage began."""
        self.last_recovery: float = -float("inf")

    def failed(self, exc: BaseException, retry_s: float) -> None:
        global _latest
        with self._lock:
            if self.down_since is None:
                self.down_since = time.monotonic()
                self.reason = root_reason(exc)[:200]
                # The server may well be up: it ends a transaction or a connection left
                # unanswered for long, and this worker did not answer while stopped.
                where = ("lost while this worker was paused" if paused_within(LOST_TO_A_PAUSE_S)
                         else "unreachable")
                # A name that does not resolve may be a DNS entry not there yet (a cluster's
                # service starting), or a typo, which waiting will not mend: say which to check.
                hint = ("; if the host name is mistyped, stop (Ctrl-C) and check the URL"
                        if "resolve host" in self.reason or "Name or service not known"
                        in self.reason else "")
                log.warning("database %s (%s); retrying for up to %.0f s%s",
                            where, self.reason, retry_s, hint)
            _latest = self

    def succeeded(self) -> None:
        if self.down_since is None:
            return
        with self._lock:
            if self.down_since is not None:
                log.warning("database reachable again after %.1f s",
                            time.monotonic() - self.down_since)
                self.down_since = None
                self.last_recovery = time.monotonic()

    def seconds_down(self) -> float | None:
        """How long the outage going on has lasted since it was first seen (None: none is)."""
        since = self.down_since
        return None if since is None else time.monotonic() - since

    def recent(self, seconds: float) -> bool:
        """Whether the database was down within the last `seconds` (or is down now)."""
        return self.down_since is not None or time.monotonic() - self.last_recovery < seconds


_latest: Outages | None = None


def ongoing_outage() -> Outages | None:
    """The database outage this process is in, as the last of its storages to fail saw it
    (None: none is): for the line a command ends with once it gave up waiting."""
    latest = _latest
    return latest if latest is not None and latest.down_since is not None else None


def call_with_retry(outages: Outages, retry_s: float, fn, *args, is_full=disk_full,
                    where: str = "the database", **kwargs):
    """`fn(*args, **kwargs)`, retried while the database is unreachable, up to `retry_s`
    seconds from the start of the outage (not of this call: each call a worker makes after
    the first failed, to record its trial's end, would wait a whole window again); StorageFull
    when the disk of the database `where` is full (`is_full` tells from the error)."""
    for attempt in itertools.count():
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            if is_full(exc):
                raise StorageFull(full_disk_message(where)) from exc
            if not transient(exc):
                raise
            now = time.monotonic()
            start = now if outages.down_since is None else outages.down_since
            deadline = start + retry_s
            if now >= deadline:
                raise
            outages.failed(exc, retry_s)
            _wait(min(BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)],
                      max(0.0, deadline - time.monotonic())), start, exc)
            continue
        outages.succeeded()
        return result


# A stop (Ctrl-C, SIGTERM) ends the wait for the database once the call has failed this long:
# a longer outage could hold a stopped worker for minutes, while a blip is still waited out,
# so that a trial's result or its failure is written all the same.
STOP_AFTER_OUTAGE_S = 3.0
STOP_CHECK_S = 0.2


def _wait(seconds: float, failing_since: float, error: Exception) -> None:
    """Sleep before the next try of a call failing since `failing_since` with `error`, in
    steps, each a safe point for a stop asked for (GracefulStop) past STOP_AFTER_OUTAGE_S."""
    end = time.monotonic() + seconds
    while True:
        if time.monotonic() - failing_since >= STOP_AFTER_OUTAGE_S:
            try:
                raise_if_stop_requested()
            except Interrupted as stop:
                raise stop from error  # the cause tells a stop in an outage from a repeated one
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, STOP_CHECK_S))


_depth = threading.local()


def _retrying(method):
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        # Only the outermost call retries: a storage method that calls another one would
        # otherwise multiply the waiting time.
        if getattr(_depth, "inside", False):
            return method(self, *args, **kwargs)
        _depth.inside = True
        try:
            return call_with_retry(self.outages, self.retry_s, method, self, *args,
                                   is_full=self.disk_full, where=self.location, **kwargs)
        finally:
            _depth.inside = False

    return wrapper


class ResilientStorage(RDBStorage):
    """Optuna's RDBStorage that rides out outages and fails trials that never got a heartbeat."""

    def __init__(self, *args, patience: float, **kwargs) -> None:
        """`patience`: how long an outage is waited out (retry_seconds()); SQLite's are not."""
        self.outages = Outages()
        super().__init__(*args, **kwargs)
        if self.engine.dialect.name == "postgresql":
            sqlalchemy.event.listen(self.engine, "connect", _in_utc)
            self.engine.dispose()  # the connections opened meanwhile, in the client's zone
        # SQLite has no server to come back: its errors (other than 'locked', which its busy
        # timeout already waits out) do not go away by waiting.
        self.retry_s = 0.0 if self.engine.dialect.name == "sqlite" else patience

    @property
    def location(self) -> str:
        """Where the study's data are, for messages: the SQLite file, else the URL (masked)."""
        if self.engine.dialect.name == "sqlite" and self.engine.url.database:
            return self.engine.url.database
        return self.engine.url.render_as_string(hide_password=True)

    def disk_full(self, exc: BaseException) -> bool:
        """Whether `exc` means the database's disk is full."""
        database = self.engine.url.database
        return disk_full(exc, database if self.engine.dialect.name == "sqlite" else None)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        # Optuna fails a running trial only once its heartbeat is stale; a trial whose worker
        # died (or lost the database) between creating it and its first heartbeat has none,
        # and would stay RUNNING forever, holding the study below its target. Such a trial is
        # failed once it is older than the grace period. Its start time is the creating
        # worker's clock; hosts' clocks agree to well under a grace period.
        stale = super()._get_stale_trial_ids(study_id)
        grace = self.grace_period or 2 * (self.heartbeat_interval or 0)
        cutoff = datetime.datetime.now() - datetime.timedelta(seconds=grace)
        with _create_scoped_session(self.scoped_session) as session:
            unbeaten = (session.query(models.TrialModel)
                        .outerjoin(models.TrialHeartbeatModel)
                        .filter(models.TrialModel.study_id == study_id,
                                models.TrialModel.state == TrialState.RUNNING,
                                models.TrialHeartbeatModel.trial_heartbeat_id.is_(None))
                        .all())
            # datetime_start is local time whatever Optuna stores (a property in Optuna 5).
            # Optuna's models declare plain Column attributes, which read as ints on a row.
            orphans = [cast(int, t.trial_id) for t in unbeaten if t.datetime_start is not None
                       and t.datetime_start < cutoff]
        return stale + orphans

    def set_trial_state_values(self, trial_id: int, state: TrialState,
                               values=None) -> bool:
        # Optuna reads the trial's state, checks it may still change, then writes, relying on
        # SELECT ... FOR UPDATE to keep other writers out in between. SQLite has no such
        # clause, and its transaction starts at the first write: a worker paused between the
        # check and the write would, once resumed, complete a trial that another worker has
        # failed as stale and queued again meanwhile, and both would count. A first write that
        # changes nothing takes SQLite's write lock for the whole check-and-write (Optuna's
        # session is this thread's scoped session, so it runs in the same transaction).
        if self.engine.dialect.name == "sqlite":
            session = self.scoped_session()
            try:
                session.execute(sqlalchemy.text(
                    "UPDATE trials SET state = state WHERE trial_id = :trial_id"),
                    {"trial_id": trial_id})
            except BaseException:
                session.rollback()
                session.close()
                raise
        return super().set_trial_state_values(trial_id, state, values)

    def record_heartbeat(self, trial_id: int) -> None:
        # Not retried here: the heartbeat thread beats again one interval later, and must not
        # hold up the end of its trial. A failed beat still marks the outage.
        try:
            super().record_heartbeat(trial_id)
        except Exception as exc:
            if transient(exc) and self.retry_s:
                self.outages.failed(exc, self.retry_s)
            raise
        self.outages.succeeded()


def _in_utc(dbapi_connection, connection_record) -> None:
    """Set a new PostgreSQL session's time zone to UTC. Optuna writes heartbeats as the
    server's now() in the session's time zone, without the zone, and compares them with now()
    again: a host whose sessions had another zone (PGTZ, which overrides a connection's
    options) would see live trials as hours stale, or dead ones as alive."""
    with dbapi_connection.cursor() as cursor:
        cursor.execute("SET TIME ZONE 'UTC'")
    dbapi_connection.commit()  # a SET rolled back would be undone


def _resilient(storage: optuna.storages.BaseStorage) -> ResilientStorage | None:
    backend = getattr(storage, "_backend", storage)  # Optuna wraps an RDBStorage in a cache
    return backend if isinstance(backend, ResilientStorage) else None


def outages_of(storage: optuna.storages.BaseStorage) -> Outages:
    """The outage record of a study's storage."""
    backend = _resilient(storage)
    return backend.outages if backend is not None else Outages()


@contextlib.contextmanager
def without_retry(storage: optuna.storages.BaseStorage):
    """Calls that raise at once while the database is down, for a caller with other duties."""
    backend = _resilient(storage)
    if backend is None:
        yield
        return
    patience, backend.retry_s = backend.retry_s, 0.0
    try:
        yield
    finally:
        backend.retry_s = patience


# Every method that reaches the database: BaseStorage's public ones and the private ones that
# Optuna's trial cache (_CachedStorage, which wraps every loaded study's RDBStorage) calls.
_RETRIED = [name for name, _ in inspect.getmembers(optuna.storages.BaseStorage,
                                                    inspect.isfunction)
            if not name.startswith("_") and name != "remove_session"]
_RETRIED += ["_get_stale_trial_ids", "_get_trials", "_create_new_trial", "_get_best_trial_id",
             "_set_trial_param"]
for _name in _RETRIED:
    setattr(ResilientStorage, _name, _retrying(getattr(ResilientStorage, _name)))
