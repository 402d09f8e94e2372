"""Pieces every command line of tuning shares: argument types, one-line errors, progress."""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
import warnings

import optuna
from optuna.trial import TrialState

from tuning.errors import EXIT_USAGE, MESSAGE_CHARS, shorten

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit status 2."""

    def error(self, message: str):  # type: ignore[override]
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


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    # The progress line reports every trial, failures with their reason; Optuna's own warnings
    # would repeat each failure with a traceback.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    # Heartbeats, several samplers and the retry callback are marked experimental: noise here.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # Our worker loop (tuning.worker.run_trials) keeps the heartbeats itself.
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")


def add_compile_argument(parser: argparse.ArgumentParser) -> None:
    from tuning.device import COMPILE_MODES  # noqa: PLC0415 - imports torch: only when needed

    parser.add_argument("--compile", choices=COMPILE_MODES, default="off",
                        help="torch.compile trial networks (default off: eager measured faster "
                             "on the CPU; reduce-overhead adds CUDA graphs on a GPU; compiled "
                             "code is reused by later trials of the same architecture)")
