"""Pieces every command line of tuning shares: argument types, one-line errors, progress."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time
import warnings
from pathlib import Path
from typing import NoReturn

import optuna
from optuna.trial import TrialState

from tuning.errors import EXIT_USAGE, MESSAGE_CHARS, shorten

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit status 2."""

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


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


# A study name becomes a file name (studies/NAME.db) and part of URLs and lock keys: no path
# separators, no URL syntax, nothing that could reach outside studies/.
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def study_name(text: str) -> str:
    if not STUDY_NAME.fullmatch(text) or ".." in text:
        raise argparse.ArgumentTypeError(
            f"{shorten(text)!r} is not a study name: 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit")
    return text


def fail(message: str) -> int:
    """Print an error as one line of bounded length; return the usage-error exit status."""
    print(f"error: {shorten(' '.join(str(message).split()), MESSAGE_CHARS)}",
          file=sys.stderr)
    return EXIT_USAGE


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
    parser.add_argument("--data-dir", type=Path, help="directory with the data set's IDX files")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    add_compile_argument(parser)
    parser.add_argument("--timeout", type=positive_float,
                        help="stop starting trials after this many seconds")
    parser.add_argument("--artifacts", type=Path,
                        help="where best trials' checkpoints go (default ./artifacts or "
                             "$TUNING_ARTIFACTS; share it between hosts)")


def storage_url(storage: str | None, study: str) -> str:
    """The one place a study's storage is decided: --storage, else $TUNING_STORAGE, else the
    study's own SQLite file under ./studies."""
    from tuning.storage import default_storage  # noqa: PLC0415 - keeps `cli` light to import

    return storage or os.environ.get("TUNING_STORAGE") or default_storage(study)


def count_finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


class Progress:
    """One line per finished trial: n/N, state, value, best so far, elapsed, ETA."""

    def __init__(self, target: int, stream=sys.stderr):
        self.target = target
        self.stream = stream
        self.start = time.monotonic()
        self.done_at_start: int | None = None

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        done = count_finished(study)
        if self.done_at_start is None:
            self.done_at_start = done - (trial.state in FINISHED)
        finished_here = done - self.done_at_start
        elapsed = time.monotonic() - self.start
        rate = elapsed / finished_here if finished_here > 0 else None
        eta = _clock(rate * max(self.target - done, 0)) if rate else "?"
        value = "-" if trial.value is None else f"{trial.value:.4f}"
        reason = trial.user_attrs.get("fail_reason", "")
        try:
            best = f"{study.best_value:.4f} (#{study.best_trial.number})"
        except ValueError:
            best = "-"
        print(f"[{done:>4}/{self.target}] trial {trial.number:>4} {trial.state.name:<8} "
              f"val_loss {value:<7} best {best}  elapsed {_clock(elapsed)}  ETA {eta} {reason}",
              file=self.stream, flush=True)


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


# Optuna messages that say again what the progress line or our own log already says.
OPTUNA_NOISE = (
    "failed with value None",  # a failed trial: the progress line gives its reason
    "Skipped telling trial",  # a trial taken over by another worker: logged by the worker
)


class _DropKnownNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(noise in message for noise in OPTUNA_NOISE)


def add_verbosity_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quiet", "-q", action="store_true",
                       help="only warnings and errors (no line per trial)")
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
    logging.getLogger("optuna").addFilter(_DropKnownNoise())
    # Heartbeats, several samplers and the retry callback are marked experimental: noise here.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # Our worker loop (tuning.runner.run_trials) keeps the heartbeats itself.
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")


def add_compile_argument(parser: argparse.ArgumentParser) -> None:
    from tuning.device import COMPILE_MODES  # noqa: PLC0415 - imports torch: only when needed

    parser.add_argument("--compile", choices=COMPILE_MODES, default="off",
                        help="torch.compile trial networks (default off: eager measured faster "
                             "on the CPU; reduce-overhead adds CUDA graphs on a GPU; compiled "
                             "code is reused by later trials of the same architecture)")
