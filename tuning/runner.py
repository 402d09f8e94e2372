"""Taking and running the trials of a shared study: what every worker process runs.

The target is exact across any number of workers: taking a new trial happens under a lock
shared by all workers of the study (a file lock beside a SQLite database, a PostgreSQL advisory
lock otherwise), and only while finished plus running trials are below the target. A worker
that finds the target reserved waits while trials run, since one may still fail and be retried.
A running trial beats a heartbeat; a trial whose worker stopped beating is failed and retried
by the others, and a worker that finds its trial taken over drops its result and goes on.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import optuna
from filelock import FileLock, Timeout
from optuna.trial import TrialState
from sqlalchemy import Connection, create_engine, text

from tuning.cli import FINISHED, PATIENCE_ATTR, TARGET_ATTR
from tuning.errors import counted, described, shorten
from tuning.objective import CutByBudget, TrialFailed, over_limits, stopped_by_budget
from tuning.outage import (
    Outages,
    call_with_retry,
    outages_of,
    retry_seconds,
    root_reason,
    transient,
)
from tuning.pause import pause_watch
from tuning.signals import GracefulStop, Interrupted, NoStop, raise_if_stop_requested
from tuning.storage import (
    POSTGRES_CONNECT_ARGS,
    fail_for_retry,
    grace_period,
    heartbeat_interval,
    queue_due_retries,
    resolve_url,
    sqlite_path,
)
from tuning.strategy import TargetGridSampler

if TYPE_CHECKING:
    from optuna.storages._heartbeat import BaseHeartbeat

log = logging.getLogger("tuning")

# A worker whose trials all fail (a bug, a broken GPU) stops instead of spinning forever.
MAX_CONSECUTIVE_FAILURES = 5
WAIT_POLL_S = 1.0
LOCK_POLL_S = 0.5
"""How often a worker waiting for the SQLite study lock checks for a stop."""


class StudyLock:
    """A lock shared by every worker of one study, wherever they run: a file lock beside a
    SQLite database (one host), a PostgreSQL advisory lock otherwise (any host)."""

    def __init__(self, storage_url: str, study_name: str, outages: Outages | None = None):
        resolved = resolve_url(storage_url)
        path = sqlite_path(resolved)
        self._file_lock = FileLock(f"{path}.lock") if path is not None else None
        # Its own single connection, so holding the lock never starves the storage's pool.
        self._engine = None if path is not None else create_engine(
            resolved, pool_size=1, max_overflow=0, pool_pre_ping=True,
            connect_args=POSTGRES_CONNECT_ARGS)
        self._key = zlib.crc32(f"tuning:{study_name}".encode())
        self._outages = outages or Outages()
        self._held: Connection | None = None

    def _acquire(self):
        assert self._engine is not None  # only without a file lock, i.e. with an engine
        conn = self._engine.connect()
        try:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": self._key})
        except BaseException:
            conn.close()
            raise
        return conn

    def _acquire_file_lock(self) -> None:
        """Take the file lock, however long another worker holds it, a stop (Ctrl-C, SIGTERM)
        ending the wait. One paused (SIGSTOP, Ctrl-Z) while it takes a trial keeps the lock,
        and every other worker waits until it resumes: said once the wait passes the grace
        period, which no worker's turn at the lock comes near."""
        assert self._file_lock is not None  # only with a SQLite database
        started, warned = time.monotonic(), False
        while True:
            try:
                self._file_lock.acquire(timeout=LOCK_POLL_S)
                return
            except Timeout:
                raise_if_stop_requested()
            if not warned and time.monotonic() - started > grace_period():
                warned = True
                log.warning("waiting for the study lock %s, held by another worker for over "
                            "%g s: a worker paused while taking a trial (SIGSTOP, Ctrl-Z) "
                            "keeps the others waiting until it resumes",
                            self._file_lock.lock_file, grace_period())

    @contextlib.contextmanager
    def hold(self):
        if self._file_lock is not None:
            self._acquire_file_lock()
            try:
                yield
            finally:
                self._file_lock.release()
            return
        conn = call_with_retry(self._outages, retry_seconds(), self._acquire)
        self._held = conn
        try:
            yield
        finally:
            self._held = None
            # If the database restarted meanwhile, the lock went with the session.
            with contextlib.suppress(Exception):
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": self._key})
                conn.commit()
            with contextlib.suppress(Exception):
                conn.close()

    def still_held(self) -> bool:
        """Whether the lock taken by `hold` is still this worker's. The server ends a session
        left idle inside its transaction too long (tuning.storage), which frees the lock for
        another worker: one whose storage calls under the lock stalled may have lost it."""
        if self._held is None:
            return self._file_lock is not None and self._file_lock.is_locked
        try:
            self._held.execute(text("SELECT 1"))
        except Exception:  # noqa: BLE001 - a session ended is one error or another
            return False
        return True

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


@contextlib.contextmanager
def heartbeat(storage: optuna.storages.BaseStorage, trial: optuna.Trial):
    """Record the trial's heartbeat every interval while it runs (what study.optimize does).

    A beat that fails (the database is down) is tried again one interval later; once the
    outage outlasts the grace period the other workers take the trial over, and this worker
    drops its result (see `run_trials`).
    """
    interval = getattr(storage, "get_heartbeat_interval", lambda: None)()
    if not interval:
        yield
        return
    beating = cast("BaseHeartbeat", storage)  # it has a heartbeat interval
    stop = threading.Event()
    trial_id = trial._trial_id  # Optuna offers no public id; its own optimize loop uses this

    def beat():
        while True:
            try:
                beating.record_heartbeat(trial_id)
            except Exception as exc:  # noqa: BLE001 - any failure: beat again next interval
                log.debug("heartbeat of trial %d failed: %s", trial.number, exc)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, daemon=True, name=f"heartbeat-{trial.number}")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _counts(trials: list[optuna.trial.FrozenTrial]) -> tuple[int, int]:
    """Finished and running trials."""
    return (sum(t.state in FINISHED for t in trials),
            sum(t.state == TrialState.RUNNING for t in trials))


class NoTrial(enum.Enum):
    """Why `take_trial` gave no trial."""

    WAIT = "running trials reserve the rest of the target: wait, one may fail and be retried"
    TARGET_MET = "the study has its target of finished trials"
    GRID_RUN = "every configuration of the grid has run short of the target: none is left"
    OUT_OF_PATIENCE = "--patience trials have finished since the best without beating it"


@dataclass(frozen=True)
class OutOfPatience:
    """The search ran out of --patience: `finished_after` trials numbered after the best
    finished and none beat it."""

    best: optuna.trial.FrozenTrial
    finished_after: int
    patience: int

    def __str__(self) -> str:
        return (f"the {counted(self.finished_after, 'finished trial')} after the best "
                f"(#{self.best.number}, val_loss {self.best.value:.4f}) did not beat it "
                f"(--patience {self.patience})")


def out_of_patience(trials: list[optuna.trial.FrozenTrial],
                    patience: int | None) -> OutOfPatience | None:
    """Whether `patience` trials numbered after the best complete trial have finished
    (complete or pruned) and none beat it: more trials are unlikely to help. None where they
    have not, or `patience` is None. A trial that said nothing of its configuration does not
    count: one the run's --budget cut short, or one over the study's limits, never trained.
    Counted by trial number, which every host agrees on, not by finishing time, which each
    host's clock writes."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    if patience is None or not complete:
        return None
    best = min(complete, key=lambda t: (cast(float, t.value), t.number))
    after = sum(t.state in FINISHED and t.number > best.number and not stopped_by_budget(t)
                and over_limits(t) is None for t in trials)
    return OutOfPatience(best, after, patience) if after >= patience else None


def why_grid_ended_short(study: optuna.Study, trials: list[optuna.trial.FrozenTrial],
                         target: int) -> str | None:
    """Why a grid search ended short of its target: every configuration ran, and some failed
    (`TargetGridSampler.all_taken`); None where it has not."""
    finished, running = _counts(trials)
    grid = study.sampler
    if (finished >= target or running or not isinstance(grid, TargetGridSampler)
            or not grid.all_taken(study, trials)):
        return None
    failed = grid.configurations_failed(trials)
    return ("every configuration of the grid has run"
            + (f" and {counted(failed, 'configuration')} failed (the report says why)"
               if failed else "") + f": {finished} finished of the target {target}")


def current_goal(study: optuna.Study, target: int,
                 patience: int | None) -> tuple[int, int | None]:
    """The target and patience the latest search stored in the study, read afresh (a rerun may
    raise or lower them while workers run: every worker follows); `target` and `patience`
    where the study stores none (one not made by tuning.search)."""
    attrs = study.user_attrs
    if TARGET_ATTR not in attrs:
        return target, patience
    return int(attrs[TARGET_ATTR]), attrs.get(PATIENCE_ATTR)


def take_trial(study: optuna.Study, target: int, lock: StudyLock,
               patience: int | None = None, announce: bool = True) -> optuna.Trial | NoTrial:
    """A new trial if the target leaves room for one (and a grid a configuration), else why
    not (the target and patience: `current_goal`'s). Dead workers' trials are failed first,
    and every retry due is queued (a worker killed after failing its trial and before queuing
    the retry left it due), under the same lock: the retries are then waiting trials, which
    `ask` takes before sampling. Queued apart, another worker's retry could land between `ask`
    finding no waiting trial and creating a new one, which would then take the place in the
    target that the retry was to fill, leaving the retry waiting at the end. `announce`: say
    which trials of dead workers it failed (a launcher's workers leave it to the launcher)."""
    with lock.hold():
        fail_stale_trials(study, announce)
        trials = study.get_trials(deepcopy=False)
        queue_due_retries(study, trials, lock.still_held)  # waiting: the counts below stand
        finished, running = _counts(trials)
        target, patience = current_goal(study, target, patience)
        if finished >= target:
            if lock.still_held():  # another worker may be raising the target and taking it
                _fail_unneeded_places(study, trials)
            return NoTrial.TARGET_MET
        if out_of_patience(trials, patience) is not None:
            # Stop once no trial runs: one of them may still beat the best, and the search
            # then goes on with every worker, not with those whose trials were running.
            return NoTrial.WAIT if running else NoTrial.OUT_OF_PATIENCE
        if finished + running >= target:
            return NoTrial.WAIT
        if isinstance(study.sampler, TargetGridSampler) and study.sampler.all_taken(study,
                                                                                  trials):
            return NoTrial.WAIT if running else NoTrial.GRID_RUN
        if not lock.still_held():  # another worker may be counting and creating meanwhile
            return NoTrial.WAIT
        # Only creates the trial: the sampler runs at its first suggest, in the objective,
        # after the lock is released, so workers do not queue behind one another's sampling.
        trial = study.ask()
        if not lock.still_held():
            # Lost while creating it (the worker stalled there): another worker may have
            # counted without it and filled the target. The trial goes back to waiting, to
            # be taken by whoever has room for it, so the target is not overshot. Stalled past
            # the grace period, it may have been failed (and queued again) by another worker.
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                study._storage.set_trial_system_attr(trial._trial_id, GIVEN_BACK, True)
                study._storage.set_trial_state_values(trial._trial_id, TrialState.WAITING)
            return NoTrial.WAIT
        # A first heartbeat at once, so that the trial of a worker killed before its heartbeat
        # thread starts is soon seen as stale. Should this beat fail, the trial is failed as
        # stale all the same once it is older than the grace period (tuning.outage).
        if getattr(study._storage, "get_heartbeat_interval", lambda: None)():
            with contextlib.suppress(Exception):
                cast("BaseHeartbeat", study._storage).record_heartbeat(trial._trial_id)
        return trial


UNNEEDED_PLACE = ("never run: a place in the target, given back by a worker paused as it took "
                  "it, and not needed once the target was met")


GIVEN_BACK = "given_back"
"""System attribute of a trial a worker created and gave back to wait (take_trial)."""


def _fail_unneeded_places(study: optuna.Study,
                          trials: list[optuna.trial.FrozenTrial]) -> None:
    """Fail the trials a worker created and gave back to wait, once the target is met: none
    would take them, and a study would keep them waiting for ever. Not retried. Not a grid's:
    a grid point of a failed trial counts as taken, and would not run when the target is
    raised."""
    for t in trials:
        if t.state == TrialState.WAITING and t.system_attrs.get(GIVEN_BACK) \
                and "grid_id" not in t.system_attrs:
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                study._storage.set_trial_user_attr(t._trial_id, "fail_reason", UNNEEDED_PLACE)
                study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)


def fail_stale_trials(study: optuna.Study, announce: bool = False) -> None:
    """Fail the trials of workers that stopped beating. Optuna's fail_stale_trials, but each
    marked as due its retry (which `queue_due_retries` then queues, in `take_trial`) instead
    of queued by a callback: a checker killed between failing and queuing would otherwise
    lose the configuration.

    Not within a grace period of a database outage seen by this worker: the other workers'
    heartbeats could not be recorded during it either, and they are alive. Nor within one of
    this worker resuming from a pause (tuning.pause): their beats are old to it, and on SQLite
    it may have held the lock they waited on.
    """
    storage = study._storage
    if (not getattr(storage, "get_heartbeat_interval", lambda: None)()
            or outages_of(storage).recent(grace_period())
            or pause_watch().paused_within(grace_period(), longer_than=_pause_that_matters())):
        return
    try:
        stale = storage._get_stale_trial_ids(study._study_id)  # type: ignore[attr-defined]
        reason = (f"its worker stopped beating (no heartbeat for {grace_period():g} s: killed, "
                  "paused or cut off from the database)")
        for trial_id in stale:
            if fail_for_retry(storage, trial_id, reason=reason) and announce:
                log.warning("trial %d failed: %s; it runs again first",
                            storage.get_trial(trial_id).number, reason)
    except Exception as exc:  # the database is down: stale trials are found again next time
        if not transient(exc):
            raise


def _say_why_waiting(study: optuna.Study) -> None:
    """Said once a worker starts waiting on the running trials: one may be a stopped worker's,
    which holds the wait up for a grace period after its last heartbeat."""
    with contextlib.suppress(Exception):  # the database is down: the wait says so itself
        running = [t.number for t in study.get_trials(deepcopy=False,
                                                      states=(TrialState.RUNNING,))]
        if running:
            log.info("waiting for running %s %s: another worker's, or a stopped worker's, "
                     "which is failed and retried %g s after its last heartbeat",
                     "trial" if len(running) == 1 else "trials",
                     shorten(", ".join(map(str, running)), 80), grace_period())


def _pause_that_matters() -> float:
    """The shortest pause of this worker after which a live worker's trial can look dead to
    it: the other's last beat was up to an interval before the pause began."""
    return grace_period() - heartbeat_interval()


def _taken_over(trial: optuna.Trial) -> None:
    log.warning("trial %d was failed by another worker while this one was cut off or paused "
                "(no heartbeat for over the grace period) and is retried there; this worker "
                "drops its result and goes on", trial.number)


def _rerun_later(study: optuna.Study, trial: optuna.Trial, lock: StudyLock,
                 counts: bool = False) -> None:
    """Fail a trial cut short by no fault of its configuration and queue it to run again
    first; `counts`: whether this spends one of its retries (fail_for_retry)."""
    if fail_for_retry(study._storage, trial._trial_id, counts=counts):
        # Failed and marked: should queuing fail too (the database lost, a second Ctrl-C), the
        # next worker to take a trial queues the retry.
        with contextlib.suppress(Exception, Interrupted), lock.hold():
            queue_due_retries(study, still_held=lock.still_held)


def _cut_short(study: optuna.Study, trial: optuna.Trial, exc: BaseException,
               lock: StudyLock) -> None:
    """Record a trial that raised `exc` as FAIL, with why. One stopped from outside (Ctrl-C,
    SIGTERM, its launcher gone, the database lost past its patience) is queued again, as a dead
    worker's is, so that the next run takes it first and no configuration is lost; a trial
    that raised by itself (a bug) is not, or a configuration that always crashes would run
    again and again. A worker that took the trial over meanwhile has failed and marked it:
    the retry is queued once all the same (`queue_due_retries`)."""
    with contextlib.suppress(Exception):  # the reason is for people; the state matters more
        trial.set_user_attr("fail_reason", _reason(exc))
    stopped = isinstance(exc, (Interrupted, KeyboardInterrupt))
    if not (stopped or transient(exc)):
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        return
    _rerun_later(study, trial, lock, counts=not stopped)


def _why_unrecorded(exc: BaseException) -> str:
    """Why `_cut_short` could not record its trial's failure: `exc`, what it raised."""
    if isinstance(exc, Interrupted):
        # One raised while waiting for the database has the database's error as its cause.
        return "the database is unreachable" if exc.__cause__ is not None else \
            f"stopped again by {exc}"
    # The driver's words, not Optuna's wrapper's ("invalid data in the commit").
    return shorten(root_reason(exc), 120)


def _reason(exc: BaseException) -> str:
    """Why a trial ended by an exception failed, for its line and the report."""
    if isinstance(exc, Interrupted):
        return f"stopped by {exc}"
    return described(exc)


@dataclass
class RunStats:
    """What one worker did."""

    finished: int = 0
    """Trials this worker finished (complete or pruned)."""
    failed: int = 0
    """Trials that failed in this worker."""
    stopped_by_failures: bool = False
    """Stopped because MAX_CONSECUTIVE_FAILURES trials failed in a row."""
    out_of_patience: bool = False
    """Stopped because --patience trials finished since the best without beating it."""
    grid_run: bool = False
    """Stopped because every configuration of a grid has run, short of the target: some
    failed."""
    objective_seconds: float = 0.0
    """Wall time inside the objective (training, and the sampler's per-parameter calls)."""
    optuna_seconds: float = 0.0
    """Wall time in Optuna around trials: stale checks, taking a trial (the relative sampler
    runs there), telling the result. Waiting for other workers' trials is not counted."""


def run_trials(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    target: int,
    lock: StudyLock,
    timeout: float | None = None,
    on_trial: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
    stop: GracefulStop | None = None,
    patience: int | None = None,
    announce_stale: bool = True,
) -> RunStats:
    """Run trials until `study` has `target` finished trials (or `timeout` passes, or
    `patience` trials finish after the best without beating it: `out_of_patience`); a study
    made by tuning.search stores its own target and patience, which are followed instead.
    `announce_stale`: say which dead workers' trials it failed (not under a launcher, which
    says it).

    A trial that raises TrialFailed is recorded as FAIL and the worker goes on; any other
    exception (Ctrl-C, SIGTERM, a bug) marks the running trial FAIL and propagates.
    """
    stop = stop or NoStop()
    pause_watch()  # ticking from now: a pause during the first trial is seen after it
    stats = RunStats()
    waiting = False
    consecutive_failures = 0
    deadline = None if timeout is None else time.monotonic() + timeout
    while deadline is None or time.monotonic() < deadline:
        stop.check()
        started = time.perf_counter()
        trial = take_trial(study, target, lock, patience, announce_stale)
        if trial is NoTrial.TARGET_MET:
            break
        if trial is NoTrial.GRID_RUN:
            stats.grid_run = True
            break
        if trial is NoTrial.OUT_OF_PATIENCE:
            stats.out_of_patience = True
            break
        if trial is NoTrial.WAIT:
            if not waiting and announce_stale:
                _say_why_waiting(study)
            waiting = True
            time.sleep(WAIT_POLL_S)
            continue
        waiting = False
        stats.optuna_seconds += time.perf_counter() - started
        with heartbeat(study._storage, trial):
            started = time.perf_counter()
            value, state = None, None
            try:
                value = objective(trial)
            except optuna.TrialPruned:
                state = TrialState.PRUNED
            except TrialFailed:
                state = TrialState.FAIL
            except CutByBudget:
                stats.objective_seconds += time.perf_counter() - started
                _rerun_later(study, trial, lock)
                if on_trial is not None:
                    on_trial(study, study._storage.get_trial(trial._trial_id))
                break  # the budget is spent
            except optuna.exceptions.UpdateFinishedTrialError:
                _taken_over(trial)
                continue
            except BaseException as exc:
                # Record the failure if the database lets us; the original error is the news.
                recorded = False
                try:
                    _cut_short(study, trial, exc, lock)
                    recorded = True
                except optuna.exceptions.UpdateFinishedTrialError:
                    recorded = True  # another worker failed it first, and queued its retry
                except (Exception, Interrupted) as unrecorded:
                    log.warning("trial %d could not be marked failed (%s): it stays running "
                                "in the study until a worker finds it stale, %g s after its "
                                "last heartbeat, and retries it", trial.number,
                                _why_unrecorded(unrecorded), grace_period())
                if isinstance(exc, Interrupted):
                    exc.trial, exc.trial_recorded = trial.number, recorded
                raise
            stats.objective_seconds += time.perf_counter() - started
            started = time.perf_counter()
            try:
                frozen = study.tell(trial, value, state=state, skip_if_finished=True)
            except optuna.exceptions.UpdateFinishedTrialError:  # failed between check and write
                frozen = None
            stats.optuna_seconds += time.perf_counter() - started
        if frozen is None or frozen.state != (state or TrialState.COMPLETE):
            _taken_over(trial)
            continue
        if frozen.state == TrialState.FAIL:
            stats.failed += 1
            consecutive_failures += 1
        else:
            stats.finished += 1
            consecutive_failures = 0
        if on_trial is not None:
            on_trial(study, frozen)
        if consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
            stats.stopped_by_failures = True
            break
    return stats
