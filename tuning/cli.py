"""Pieces every command line of tuning shares: argument types, one-line errors, progress."""

from __future__ import annotations

import argparse
import logging
import re
import shutil
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import NoReturn, TextIO, cast

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuning.errors import EXIT_DATABASE_LOST, EXIT_USAGE, MESSAGE_CHARS, UsageError, shorten
from tuning.settings import setting

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
TARGET_ATTR = "target_trials"
"""The study's user attribute holding its target of finished trials, set by the latest search
(tuning.study) and followed by every worker (tuning.runner.current_goal)."""
PATIENCE_ATTR = "patience"
"""The study's user attribute holding the latest search's --patience (None: off)."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit status 2, and a flag is
    spelled out: `--trial 3` (export's flag) to search is refused, not taken for --trials."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        # A value that begins like a negative number (`--budget -5s`) is taken as the flag's
        # value, which its type refuses in words, not as an unknown flag ("expected one
        # argument"); as Python 3.13's argparse does. No flag of ours begins with a digit.
        self._negative_number_matcher = re.compile(r"^-\.?\d")

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


MAX_INDEX = 2**31 - 1
"""The highest worker index: a label, which a scheduler's job or task id may be."""


def non_negative_int(text: str) -> int:
    """A whole number from 0 up to MAX_INDEX (an index)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_INDEX:
        raise argparse.ArgumentTypeError(f"expected a whole number from 0 to {MAX_INDEX:,}, "
                                         f"got {text[:40]!r}")
    return value


def positive_int_up_to(high: int) -> Callable[[str], int]:
    """positive_int, refused above `high`: a number no run could mean (100,000 worker
    processes, which would be started one after another for minutes)."""

    def parse(text: str) -> int:
        value = positive_int(text)
        if value > high:
            raise argparse.ArgumentTypeError(f"expected at most {high:,}, got {text[:40]!r}")
        return value

    return parse


MAX_WORKERS = 1024
"""Worker processes one command may start (--workers, --workers-per-gpu, $TUNING_WORKERS)."""
MAX_THREADS = 1024
"""torch CPU threads a worker may be given (--threads): past the cores of any machine."""
MAX_TRIALS = 10_000_000
"""A study's target of finished trials: more than a search could run."""


_DURATION = re.compile(r"(?:(\d+(?:\.\d*)?)h)?(?:(\d+(?:\.\d*)?)m)?(?:(\d+(?:\.\d*)?)(s?))?")


MAX_DURATION_S = 366 * 24 * 3600


def duration(text: str) -> float:
    """Seconds from `300`, `90s`, `5m`, `2h` or `1h30m`; a number without its unit after
    hours or minutes (`1h30`: minutes or seconds?) is refused."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None or not any(match.groups()[:3]):
        raise argparse.ArgumentTypeError(f"expected a duration such as 300, 90s, 5m or 1h30m, "
                                         f"got {text[:40]!r}")
    *parts, seconds_unit = match.groups()
    if parts[2] and not seconds_unit and (parts[0] or parts[1]):
        raise argparse.ArgumentTypeError(f"{text[:40]!r}: give the last number its unit "
                                         "(m or s), as in 1h30m or 5m30s")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in parts)
    total = 3600 * hours + 60 * minutes + seconds
    if not total > 0:
        raise argparse.ArgumentTypeError(f"expected a positive duration, got {text[:40]!r}")
    if total > MAX_DURATION_S:  # no run means it, and far longer ones overflow timers
        raise argparse.ArgumentTypeError(f"expected at most {MAX_DURATION_S // 3600:,}h "
                                         f"(a year), got {text[:40]!r}")
    return total


def run_timeout(timeout: float | None, deadline: float | None) -> float | None:
    """Seconds in which to start trials: --timeout, or less where the --budget ends sooner."""
    if deadline is None:
        return timeout
    left = max(deadline - time.monotonic(), 0.0)
    return left if timeout is None else min(timeout, left)


def make_out_directory(out: Path) -> list[Path]:
    """Create --out `out` where missing and check that a file can be written in it, before any
    time is spent on what goes there; UsageError if it cannot (the folders it made removed
    again). Returns the folders it created, outermost first: a command that fails later
    removes them with `remove_empty`, so that it changes nothing stored."""
    created = [p for p in (out, *out.parents) if not p.exists()][::-1]
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        remove_empty(created)
        raise UsageError(f"--out {shorten(str(out), 200)!r} cannot be written: "
                         f"{exc.strerror or exc}") from None
    return created


def remove_empty(folders: list[Path]) -> None:
    """Remove the folders a command created (`make_out_directory`), those still empty."""
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:  # not empty, or never created
            return


# A study name becomes a file name (studies/NAME.db) and part of URLs and lock keys: no path
# separators, no URL syntax, nothing that could reach outside studies/.
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def study_name(text: str) -> str:
    if not STUDY_NAME.fullmatch(text) or ".." in text:
        raise argparse.ArgumentTypeError(
            f"{shorten(text)!r} is not a study name: 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit")
    return text


def database_lost(url: str | None, exc: BaseException | None) -> int:
    """A command's end when the database stayed unreachable past its patience: one line, and
    the status that says "run me again", not "fix me" (a scheduler retries it). `exc`: the
    error, whose driver's words the line gives; None for a launcher, whose workers met it: the
    words its own storage met then."""
    from tuning.outage import (  # noqa: PLC0415 - keeps `cli` light
        ongoing_outage,
        retry_seconds,
        root_reason,
    )
    from tuning.storage import mask_url  # noqa: PLC0415

    # As this process saw it: a network cut shows only once TCP gives up on it, and the last
    # try may have hung as long again, so the time waited can be longer than the setting.
    outage = ongoing_outage()
    said = root_reason(exc) if exc is not None else outage.reason if outage else ""
    reason = f": {shorten(mask_url(said), 200)}" if said else ""
    seconds = outage.seconds_down() if outage else None
    waited = max(seconds or 0.0, retry_seconds())
    which = f"the database {mask_url(url)}" if url else "the study's database"
    print(f"error: {which} could not be reached for {waited:.0f} s (TUNING_DB_RETRY_S "
          f"{retry_seconds():g}){reason}; run the same command again once it is back: "
          "nothing stored is lost, and a trial that was running is run again",
          file=sys.stderr)
    return EXIT_DATABASE_LOST


def fail(error: str | Exception) -> int:
    """Print an error as one line of bounded length; return its exit status: a UsageError's
    own (exit_status), else the usage error's."""
    print(f"error: {shorten(' '.join(str(error).split()), MESSAGE_CHARS)}", file=sys.stderr)
    return error.exit_status if isinstance(error, UsageError) else EXIT_USAGE


def add_storage_arguments(parser: argparse.ArgumentParser, study_help: str,
                          study_default: str | None = None, required: bool = False) -> None:
    """--study and --storage, the same flags for every command."""
    parser.add_argument("--study", type=study_name, default=study_default, required=required,
                        help=study_help)
    parser.add_argument("--storage",
                        help="storage URL (default: $TUNING_STORAGE, else "
                             "sqlite:///studies/<study>.db)")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """How this process runs trials: the same flags for `search` and `worker`."""
    parser.add_argument("--data-dir", type=Path,
                        help="directory with the data set's IDX or CIFAR files")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    add_compile_argument(parser)
    parser.add_argument("--timeout", type=duration, metavar="DURATION",
                        help="stop starting trials after this long (300, 90s, 5m, 1h30m; "
                             "running ones finish)")
    parser.add_argument("--budget", type=duration, metavar="DURATION",
                        help="end the run within this wall time (300, 90s, 5m, 1h30m): no "
                             "trial starts after it, and a running trial stops at its first "
                             "epoch end past it, kept as pruned with what it reached (in a "
                             "grid or repeats of one configuration: run again next time)")
    parser.add_argument("--artifacts", type=Path,
                        help="where best trials' checkpoints go (default $TUNING_ARTIFACTS, "
                             "else ./artifacts; share it between hosts)")


def storage_url(storage: str | None, study: str) -> str:
    """The one place a study's storage is decided: --storage, else $TUNING_STORAGE, else the
    study's own SQLite file under ./studies."""
    from tuning.storage import default_storage  # noqa: PLC0415 - keeps `cli` light to import

    return storage or setting("TUNING_STORAGE") or default_storage(study)


def count_finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def loss_text(loss: float) -> str:
    """A loss in a progress line: 4 decimals, or 4 significant digits from 10 on, so that a
    diverged trial's 61496.6406 does not push the line's columns aside (6.15e+04), and below
    0.001, where 4 decimals would show a near-perfect fit as 0.0000 (4.049e-05)."""
    return f"{loss:.4f}" if 0.001 <= abs(loss) < 10 or loss == 0 else f"{loss:.4g}"


class Progress:
    """What a run prints as it goes: a line per finished trial (n/N, state, value, best so far,
    elapsed, ETA, why it was pruned or failed) and, within a trial, a line per epoch; on a
    terminal the epoch lines are one status line rewritten in place.

    The ETA counts epochs, not trials: a rate of finished trials is unknown until one ends and
    early on is skewed by start-up and by trials that differ in length (pruned ones stop early),
    which put it off by several times. Here the seconds per epoch are measured on this run's
    trials as they go (but a trial's far slower than the median's), and the epochs still to run
    are estimated from how long the study's finished trials ran.
    """

    def __init__(self, target: int, epochs: int, finished: int = 0,
                 stream: TextIO | None = None, label: str | None = None):
        self.target = target
        self.epochs = epochs
        self.count = finished
        """Finished trials so far: the n of n/N, which only ever goes up by one."""
        self.stream = stream if stream is not None else sys.stderr
        self.label = label
        """Names this process's trials where workers share a log (a `tuning worker`)."""
        self.live = self.stream.isatty()
        self.start = time.monotonic()
        self.parallel = 1
        """How many trials run at once (the workers)."""
        self.epochs_run: list[int] = []
        """Epochs each finished trial of the study ran."""
        self.timing: dict[int, tuple[int, float]] = {}
        """This run's trials: epochs done and wall seconds since the trial started."""
        self.running: dict[int, tuple[str | None, int, float]] = {}
        """Trials in progress: worker, last epoch, its validation loss."""
        self._status_shown = False
        self.deadline: float | None = None
        """When the run's --budget ends (time.monotonic()), if it has one: the ETA is never
        later."""
        self.last_start: float | None = None
        """When the run stops starting trials (its --timeout), if it has one: the ETA is never
        later than that plus one trial."""

    @classmethod
    def for_study(cls, study: optuna.Study, target: int, epochs: int,
                  stream: TextIO | None = None, label: str | None = None) -> Progress:
        """Progress from where `study` stands, which other workers may be running too."""
        trials = study.get_trials(deepcopy=False)
        progress = cls(target, epochs, sum(t.state in FINISHED for t in trials), stream, label)
        progress.observe(trials, parallel=1 + sum(t.state == TrialState.RUNNING for t in trials))
        return progress

    def observe(self, trials: list[optuna.trial.FrozenTrial], parallel: int = 1) -> None:
        """Take what the study holds: how long its finished trials ran, and how many trials
        run at once."""
        self.epochs_run = [t.user_attrs["epochs_run"] for t in trials
                           if t.state in FINISHED and t.user_attrs.get("epochs_run")]
        self.parallel = max(1, parallel)
        # A trial that ended without a line here (taken over by another worker after an
        # outage) no longer runs.
        running = {t.number for t in trials if t.state == TrialState.RUNNING}
        self.running = {n: v for n, v in self.running.items() if n in running}

    # -- events -------------------------------------------------------------------------------

    def on_epoch(self, trial: optuna.Trial, entry: dict) -> None:
        """Objective.on_epoch for trials run in this process."""
        self.epoch(trial.number, entry["epoch"], entry["val_loss"], entry["at"])

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """run_trials' on_trial for trials run in this process. Workers elsewhere may finish
        trials too: the study's count keeps n/N true, and their running trials share the work."""
        trials = study.get_trials(deepcopy=False)
        # A later search may have raised or lowered the target, which the workers follow.
        self.target = int(study.user_attrs.get(TARGET_ATTR, self.target))
        running_elsewhere = sum(t.state == TrialState.RUNNING for t in trials)
        self.observe(trials, parallel=1 + running_elsewhere)
        self.trial(study, trial, at_least=sum(t.state in FINISHED for t in trials))

    def epoch(self, number: int, epoch: int, val_loss: float, seconds: float | None,
              worker: str | None = None) -> None:
        """Trial `number` finished `epoch`, `seconds` after the trial started (None: unknown)."""
        worker = worker or self.label
        if seconds is not None and epoch > 0:
            self.timing[number] = (epoch, seconds)
        self.running[number] = (worker, epoch, val_loss)
        if self.live:
            self._show_status()
        else:
            self.write(f"{'':>10}{_who(worker)}trial {number:>4} epoch {epoch}/{self.epochs} "
                       f"val_loss {loss_text(val_loss)}  ETA {self.eta()}")

    def trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial,
              worker: str | None = None, at_least: int = 0) -> None:
        """The line for a trial that ended; `at_least` is the study's finished count."""
        worker = worker or self.label
        self.running.pop(trial.number, None)
        epochs = trial.user_attrs.get("epochs_run")
        # Not a failed trial's: failed as stale, its time runs on after its worker died.
        if trial.state in FINISHED and epochs and trial.datetime_start \
                and trial.datetime_complete:
            self.timing[trial.number] = (
                epochs, (trial.datetime_complete - trial.datetime_start).total_seconds())
        if trial.state in FINISHED:
            self.count = max(self.count + 1, at_least)
            count = f"{self.count:>4}"
        else:  # a failed trial does not count towards the target, so it takes no number
            count = f"{'-':>4}"
        value = "-" if trial.value is None else loss_text(trial.value)
        reason = trial.user_attrs.get("prune_reason" if trial.state == TrialState.PRUNED
                                      else "fail_reason", "")
        best_trial = _best_when(study, trial)
        best = "-" if best_trial is None else \
            f"{loss_text(cast(float, best_trial.value))} (#{best_trial.number})"
        elapsed = time.monotonic() - self.start
        self.write(f"[{count}/{self.target}] {_who(worker)}trial {trial.number:>4} "
                   f"{trial.state.name:<8} val_loss {value:<7} best {best}  elapsed "
                   f"{_clock(elapsed)}  ETA {self.eta()}" + (f"  {reason}" if reason else ""))
        if self.live and self.running:
            self._show_status()

    # -- output -------------------------------------------------------------------------------

    def eta(self) -> str:
        measured = [(e, s) for e, s in self.timing.values() if e > 0]
        if not measured:
            return "?"
        # Not a trial that waited out a database outage, at minutes an epoch: over 3 times the
        # median trial's. The rest weighed by their epochs, so that a trial pruned after one
        # (much of it start-up) counts for one epoch.
        typical = 3 * statistics.median(s / e for e, s in measured)
        usual = [(e, s) for e, s in measured if s / e <= typical]
        per_epoch = sum(s for _, s in usual) / sum(e for e, _ in usual)
        to_start = max(self.target - self.count - len(self.running), 0)
        epochs = to_start * self._epochs_left(0) + sum(
            self._epochs_left(done) for _, done, _ in self.running.values())
        at_once = min(self.parallel, max(1, to_start + len(self.running)))
        seconds = epochs * per_epoch / at_once
        if self.last_start is not None:
            one_trial = self._epochs_left(0) * per_epoch
            seconds = min(seconds, max(self.last_start - time.monotonic(), 0.0) + one_trial)
        if self.deadline is not None:
            seconds = min(seconds, max(self.deadline - time.monotonic(), 0.0))
        return _clock(seconds)

    def _epochs_left(self, done: int) -> float:
        """Expected epochs still to run for a trial that has run `done`: from the finished
        trials that got further (so pruning counts), else all the epochs left."""
        longer = [n - done for n in self.epochs_run if n > done]
        return sum(longer) / len(longer) if longer else max(self.epochs - done, 0)

    def write(self, line: str) -> None:
        """A line of its own, clearing the status line first."""
        self.close()
        print(line, file=self.stream, flush=True)

    def close(self) -> None:
        """Clear the status line, so that what is printed next starts on a clean line."""
        if self._status_shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._status_shown = False

    def _show_status(self) -> None:
        parts = [f"{_who(worker)}trial {number} epoch {epoch}/{self.epochs} val_loss "
                 f"{loss_text(loss)}"
                 for number, (worker, epoch, loss) in sorted(self.running.items())]
        text = f"{' | '.join(parts)}  ETA {self.eta()}"
        width = shutil.get_terminal_size().columns - 1  # the last column would wrap the line
        self.stream.write("\r\x1b[K" + text[:width])
        self.stream.flush()
        self._status_shown = True


def _who(worker: str | None) -> str:
    return f"{worker} " if worker else ""


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


# Optuna messages that say again what the progress line or our own log already says.
OPTUNA_NOISE = (
    "failed with value None",  # a failed trial: the progress line gives its reason
    "Skipped telling trial",  # a trial taken over by another worker: logged by the worker
    # Optuna's reading of trials in an outage, with its SQL: the storage's one line says it.
    "Caught an error from sqlalchemy",
)


class _DropKnownNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(noise in message for noise in OPTUNA_NOISE)


def add_verbosity_arguments(parser: argparse.ArgumentParser,
                            quiet_help: str = "only warnings and errors") -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quiet", "-q", action="store_true", help=quiet_help)
    group.add_argument("--verbose", "-v", action="store_true", help="debug messages too")


def configure_logging(quiet: bool = False, verbose: bool = False,
                      label: str | None = None) -> None:
    """Log lines with time, level and, where several processes share a terminal or a log,
    which one wrote it (`label`: the worker's host:pid)."""
    prefix = f"[{label}] " if label else ""
    logging.basicConfig(format=f"%(asctime)s %(levelname)s {prefix}%(message)s",
                        datefmt="%Y-%m-%d %H:%M:%S", stream=sys.stderr, force=True)
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    logging.getLogger("tuning").setLevel(level)
    # Optuna's own warnings go through the same handler, less the known repetitions.
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    optuna.logging.set_verbosity(logging.INFO if verbose else logging.WARNING)
    # On the handler: a logger's filter sees only what is logged at that logger, not what
    # Optuna's modules (optuna.study.study, optuna.storages...) pass up to it.
    for handler in logging.getLogger().handlers:
        handler.addFilter(_DropKnownNoise())
    # Heartbeats and several samplers are marked experimental: noise here.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # Our worker loop (tuning.runner.run_trials) keeps the heartbeats itself.
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")


def add_compile_argument(parser: argparse.ArgumentParser) -> None:
    from tuning.device import COMPILE_MODES  # noqa: PLC0415 - imports torch: only when needed

    parser.add_argument("--compile", choices=COMPILE_MODES, default="off",
                        help="torch.compile trial networks (default off: eager measured faster "
                             "on the CPU; reduce-overhead adds CUDA graphs on a GPU; compiled "
                             "code is reused by later trials of the same architecture)")


def _best_when(study: optuna.Study, ended: optuna.trial.FrozenTrial) -> FrozenTrial | None:
    """The best complete trial when `ended` ended: lines of trials that ended between two looks
    at the study come in the order they ended, each with the best of its own moment, not one
    that the next line will show ending later."""
    until = ended.datetime_complete or datetime.max
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if (t.datetime_complete or datetime.max) <= until and t.value is not None]
    return min(complete, key=lambda t: (t.value, t.number), default=None)
