"""`python -m tuning.search`: create (or resume) a study and run it to its target.

`--trials N` is the study's target of finished trials (complete or pruned), not a number to
add: a study with 4 finished trials run again with `--trials 6` runs 2 more.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import optuna
from optuna.trial import TrialState

from tuning.data import check_data_dir, load_arrays, to_device
from tuning.device import resolve_device, set_cpu_threads
from tuning.errors import UsageError
from tuning.objective import Objective, TrialFailed
from tuning.space import PRUNERS, SAMPLERS, StudyFile, StudySettings, grid_size, load_study_file
from tuning.storage import default_storage, mask_url, open_storage, resolve_url
from tuning.strategy import make_pruner, make_sampler

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# A worker whose trials all fail (a bug, a broken GPU) stops instead of spinning forever.
MAX_CONSECUTIVE_FAILURES = 5

log = logging.getLogger("tuning")


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


class Terminated(Exception):
    """SIGTERM arrived: the running trial is marked FAIL and the process exits 143."""


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


def add_study_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by the search and the worker entry points."""
    parser.add_argument("--study", help="study name (default: the study file's name, else mnist)")
    parser.add_argument("--storage", help="storage URL (default: sqlite:///studies/<study>.db)")
    parser.add_argument("--config", type=Path,
                        help="study file (default: studies/<study>.toml)")
    parser.add_argument("--dataset", help="mnist, mnist-sample or fashion-mnist")
    parser.add_argument("--data-dir", type=Path, help="directory with the IDX files")
    parser.add_argument("--epochs", type=positive_int, help="maximum epochs per trial")
    parser.add_argument("--sampler", choices=SAMPLERS, help="default: from the study file")
    parser.add_argument("--pruner", choices=PRUNERS, help="default: from the study file")
    parser.add_argument("--seed", type=int, help="base seed (default: from the study file)")
    parser.add_argument("--timeout", type=positive_float,
                        help="stop starting trials after this many seconds")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m tuning.search",
        description="Create or resume a study and run it until it has --trials finished trials.",
    )
    parser.add_argument("--trials", type=positive_int, default=100,
                        help="target number of finished (complete or pruned) trials in the "
                             "study; a rerun continues to this number (default 100)")
    add_study_arguments(parser)
    return parser


@dataclass(frozen=True)
class Plan:
    """Everything resolved from the command line and the study file, before anything runs."""

    study: str
    """Study name."""
    storage: str
    """Storage URL as the user gave it (may hold a password; show it masked)."""
    study_file: StudyFile
    """The parsed study file."""
    settings: StudySettings
    """The study file's settings with the CLI's overrides."""


def make_plan(args: argparse.Namespace) -> Plan:
    if args.config is None:
        name = args.study or "mnist"
        config = Path("studies") / f"{name}.toml"
    else:
        config = args.config
        name = args.study or config.stem
    study_file = load_study_file(config)
    overrides = {k: getattr(args, k) for k in ("dataset", "epochs", "sampler", "pruner", "seed")
                 if getattr(args, k) is not None}
    settings = replace(study_file.settings, **overrides)
    problems = settings.problems()
    if problems:
        raise UsageError("; ".join(problems))
    if settings.sampler == "grid" and grid_size(study_file.space) > 100_000:
        raise UsageError(f"grid sampler: the grid of {config} has {grid_size(study_file.space)} "
                         "points; narrow the space or use another sampler")
    check_data_dir(args.data_dir)
    storage = args.storage or default_storage(name)
    if args.storage is None:
        Path("studies").mkdir(exist_ok=True)
    resolve_url(storage)
    return Plan(study=name, storage=storage, study_file=study_file, settings=settings)


def open_study(plan: Plan, data_fingerprint: dict, create: bool = True) -> optuna.Study:
    """Create the study (recording what it was made from) or load it and check it matches."""
    storage = open_storage(plan.storage)
    sampler = make_sampler(plan.settings.sampler, plan.settings.seed, plan.study_file.space)
    pruner = make_pruner(plan.settings.pruner, plan.settings.epochs)
    names = {s.study_name for s in optuna.get_all_study_summaries(storage)}
    if plan.study not in names:
        if not create:
            raise UsageError(f"study {plan.study!r} does not exist in {mask_url(plan.storage)}")
        study = optuna.create_study(storage=storage, study_name=plan.study, direction="minimize",
                                    sampler=sampler, pruner=pruner, load_if_exists=True)
        if "data" not in study.user_attrs:
            study.set_user_attr("data", data_fingerprint)
            study.set_user_attr("space", plan.study_file.space_dict())
            study.set_user_attr("epochs", plan.settings.epochs)
            study.set_user_attr("settings", vars(plan.settings))
            study.set_user_attr("config_path", plan.study_file.path)
            study.set_user_attr("versions", _versions())
    study = optuna.load_study(storage=storage, study_name=plan.study, sampler=sampler,
                              pruner=pruner)
    check_study_matches(study, plan, data_fingerprint)
    return study


def check_study_matches(study: optuna.Study, plan: Plan, data_fingerprint: dict) -> None:
    attrs = study.user_attrs
    stored = attrs.get("data")
    if stored is not None and stored != data_fingerprint:
        raise UsageError(
            f"study {plan.study!r} was run on data {stored.get('name')} "
            f"({stored.get('n_train')}/{stored.get('n_val')}/{stored.get('n_test')}, "
            f"sha256 {str(stored.get('sha256'))[:12]}) but this run has "
            f"{data_fingerprint['name']} ({data_fingerprint['n_train']}/"
            f"{data_fingerprint['n_val']}/{data_fingerprint['n_test']}, sha256 "
            f"{data_fingerprint['sha256'][:12]}); use another --study name")
    if "space" in attrs and attrs["space"] != plan.study_file.space_dict():
        raise UsageError(f"study {plan.study!r} was created with a different search space than "
                         f"{plan.study_file.path}; use another --study name")
    if "epochs" in attrs and attrs["epochs"] != plan.settings.epochs:
        raise UsageError(f"study {plan.study!r} runs {attrs['epochs']} epochs per trial, not "
                         f"--epochs {plan.settings.epochs}; use another --study name")


def _versions() -> dict:
    import platform

    import torch

    return {"python": platform.python_version(), "torch": torch.__version__,
            "optuna": optuna.__version__}


def count_finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


class Progress:
    """One line per finished trial: n/N, state, value, best so far, elapsed, ETA."""

    def __init__(self, target: int, stream=sys.stderr):
        self.target = target
        self.stream = stream
        self.start = time.monotonic()
        self.finished_here = 0
        self.consecutive_failures = 0

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state in FINISHED:
            self.finished_here += 1
            self.consecutive_failures = 0
        elif trial.state == TrialState.FAIL:
            self.consecutive_failures += 1
            if self.consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
                print(f"{MAX_CONSECUTIVE_FAILURES} trials failed in a row; stopping this worker",
                      file=self.stream)
                study.stop()
        done = count_finished(study)
        elapsed = time.monotonic() - self.start
        rate = elapsed / self.finished_here if self.finished_here else None
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
        if done >= self.target:
            study.stop()


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def run_study(study: optuna.Study, objective: Objective, target: int,
              timeout: float | None = None) -> None:
    """Run trials until the study has `target` finished trials (or `timeout` passes)."""
    if count_finished(study) >= target:
        return
    progress = Progress(target)
    study.optimize(objective, timeout=timeout, catch=(TrialFailed,), callbacks=[progress],
                   gc_after_trial=False)


def summarize(study: optuna.Study, plan: Plan, stream=sys.stdout) -> None:
    trials = study.get_trials(deepcopy=False)
    counts = {state.name: sum(t.state == state for t in trials) for state in TrialState}
    counts_text = ", ".join(f"{n} {name.lower()}" for name, n in counts.items() if n)
    print(f"\nstudy {plan.study!r} in {mask_url(plan.storage)}: {counts_text}", file=stream)
    completed = [t for t in trials if t.state == TrialState.COMPLETE]
    if completed:
        best = study.best_trial
        print(f"best trial #{best.number}: val_loss {best.value:.4f}, "
              f"val_accuracy {best.user_attrs.get('val_accuracy', float('nan')):.4f}, "
              f"epochs {best.user_attrs.get('epochs_run')}", file=stream)
        for name, value in best.params.items():
            shown = f"{value:.4g}" if isinstance(value, float) else value
            print(f"  {name} = {shown}", file=stream)
    storage_arg = "" if plan.storage == default_storage(plan.study) else \
        f" --storage '{mask_url(plan.storage)}'"
    print(f"dashboard: optuna-dashboard '{mask_url(plan.storage)}'", file=stream)
    print(f"report:    python -m tuning.report --study {plan.study}{storage_arg}", file=stream)


def _raise_terminated(signum, frame):
    raise Terminated()


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Heartbeats, several samplers and the retry callback are marked experimental: noise here.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging()
    try:
        plan = make_plan(args)
        runtime = resolve_device(args.device)
        if runtime.device.type == "cpu":
            set_cpu_threads()
        arrays = load_arrays(plan.settings.dataset, args.data_dir, plan.settings.seed)
        data = to_device(arrays, runtime.device)
        study = open_study(plan, arrays.fingerprint())
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    objective = Objective(data=data, runtime=runtime, space=plan.study_file.space,
                          epochs=plan.settings.epochs, seed=plan.settings.seed)
    log.info("study %r (%s): %d/%d finished; data %s (%d train, %d val); device %s; "
             "sampler %s, pruner %s, %d epochs", plan.study, mask_url(plan.storage),
             count_finished(study), args.trials, arrays.name, len(arrays.train_y),
             len(arrays.val_y), runtime.name, plan.settings.sampler, plan.settings.pruner,
             plan.settings.epochs)
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        run_study(study, objective, args.trials, args.timeout)
    except KeyboardInterrupt:
        print("interrupted: the running trial is marked failed", file=sys.stderr)
        return 130
    except Terminated:
        print("terminated: the running trial is marked failed", file=sys.stderr)
        return 143
    summarize(study, plan)
    return 0


if __name__ == "__main__":
    sys.exit(main())
