"""`python -m tuning.search`: create (or resume) a study and run it to its target.

`--trials N` is the study's target of finished trials (complete or pruned), not a number to
add: a study with 4 finished trials run again with `--trials 6` runs 2 more. With several
workers (one per GPU, or --workers N on the CPU) the target is exact across all of them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState

from tuning import catalog
from tuning.cli import (
    OneLineParser,
    Progress,
    add_run_arguments,
    add_storage_arguments,
    add_verbosity_arguments,
    configure_logging,
    count_finished,
    fail,
    positive_int,
    storage_url,
    study_name,
)
from tuning.data import check_data_dir, load_arrays, to_device
from tuning.device import cpu_cores, resolve_device, set_cpu_threads
from tuning.errors import EXIT_OK, EXIT_TRIALS_FAILING, UsageError, shorten
from tuning.launcher import Launcher, plan_workers, visible_gpus
from tuning.objective import Objective, worker_id
from tuning.outage import StorageFull, outages_of
from tuning.runner import StudyLock, run_trials
from tuning.signals import GracefulStop, Interrupted
from tuning.space import load_study_file
from tuning.storage import (
    artifact_store,
    default_storage,
    mask_url,
    resolve_url,
)
from tuning.strategy import PRUNERS, SAMPLERS, grid_size
from tuning.study import Plan, open_study, record_worker

log = logging.getLogger("tuning")
# Small CNNs leave a big GPU mostly idle: several workers per GPU keep it busy. 2 is a guess
# until measured on a GPU (docs/benchmarks.md says what has been measured).
DEFAULT_WORKERS_PER_GPU = 2


def add_study_arguments(parser: argparse.ArgumentParser) -> None:
    """The study's definition: its file and the settings the command line overrides."""
    add_storage_arguments(parser, "study name (default: the study file's name, else mnist)")
    parser.add_argument("--config", type=Path,
                        help="study file (default: ./studies/<study>.toml, else the built-in "
                             "one; `tuning studies` lists them)")
    parser.add_argument("--dataset", help="mnist, mnist-sample or fashion-mnist")
    parser.add_argument("--epochs", type=positive_int, help="maximum epochs per trial")
    parser.add_argument("--sampler", choices=SAMPLERS, help="default: from the study file")
    parser.add_argument("--pruner", choices=PRUNERS, help="default: from the study file")
    parser.add_argument("--seed", type=int, help="base seed (default: from the study file)")
    add_run_arguments(parser)


def build_parser(prog: str = "python -m tuning.search") -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=prog,
        description="Create or resume a study and run it until it has --trials finished trials.",
    )
    parser.add_argument("--trials", type=positive_int, default=100,
                        help="target number of finished (complete or pruned) trials in the "
                             "study; a rerun continues to this number (default 100)")
    add_study_arguments(parser)
    parser.add_argument("--workers", type=positive_int,
                        help="worker processes on the CPU (default 1; on a GPU machine this "
                             "runs CPU workers instead of GPU ones)")
    parser.add_argument("--create-only", action="store_true",
                        help="create the study (definition, data, target) and exit: workers "
                             "started elsewhere with tuning worker run it")
    parser.add_argument("--workers-per-gpu", type=positive_int, default=DEFAULT_WORKERS_PER_GPU,
                        help=f"worker processes per visible GPU (default "
                             f"{DEFAULT_WORKERS_PER_GPU})")
    add_verbosity_arguments(parser)
    return parser


def make_plan(args: argparse.Namespace) -> Plan:
    if args.config is None:
        name = args.study or "mnist"
        config = catalog.study_file(name)
    else:
        config = args.config
        name = args.study or config.stem
        try:
            study_name(name)
        except argparse.ArgumentTypeError as exc:
            raise UsageError(f"--config {shorten(str(config))!r} names the study: {exc}; "
                             "give --study") from None
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
    storage = storage_url(args.storage, name)
    if storage == default_storage(name):
        Path("studies").mkdir(exist_ok=True)
    resolve_url(storage)
    return Plan(study=name, storage=storage, study_file=study_file, settings=settings)


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
    print(f"dashboard: tuning dashboard --study {plan.study}{storage_arg}", file=stream)
    print(f"report:    tuning report --study {plan.study}{storage_arg}", file=stream)


def main(argv: list[str] | None = None, prog: str = "python -m tuning.search") -> int:
    args = build_parser(prog).parse_args(argv)
    configure_logging(args.quiet, args.verbose)
    try:
        return _run(args)
    except (UsageError, StorageFull) as exc:
        return fail(str(exc))


def _run(args: argparse.Namespace) -> int:
    plan = make_plan(args)
    runtime = resolve_device(args.device, args.compile)
    gpus = visible_gpus(args.device, torch.cuda.device_count() if torch.cuda.is_available()
                        else 0)
    specs = plan_workers(gpus, args.workers_per_gpu, args.workers, cpu_cores())
    if len(specs) == 1 and runtime.device.type == "cpu":
        set_cpu_threads()
    arrays = load_arrays(plan.settings.dataset, args.data_dir, plan.settings.seed)
    study = open_study(plan, arrays.fingerprint(), args.trials)
    artifacts = None if len(specs) > 1 else artifact_store(args.artifacts)
    log.info("study %r (%s): %d/%d finished; data %s (%d train, %d val); %s; "
             "sampler %s, pruner %s, %d epochs", plan.study, mask_url(plan.storage),
             count_finished(study), args.trials, arrays.name, len(arrays.train_y),
             len(arrays.val_y), f"{len(specs)} workers" if len(specs) > 1 else runtime.name,
             plan.settings.sampler, plan.settings.pruner, plan.settings.epochs)
    if args.create_only:
        print(f"study {plan.study!r} ready in {mask_url(plan.storage)} (target {args.trials}); "
              f"start workers with: tuning worker --study {plan.study} "
              f"--storage '{mask_url(plan.storage)}'")
        return EXIT_OK
    progress = (lambda study, trial: None) if args.quiet else Progress(args.trials)
    try:
        if len(specs) > 1:
            # Extra processes; this one only watches (and restarts the ones that crash).
            status = Launcher(study, plan.storage, specs, args.data_dir, args.artifacts,
                              args.timeout, progress, compile_mode=args.compile).run()
            if status > 128:
                print("stopped: running trials are marked failed", file=sys.stderr)
                return status
        else:
            status = _run_here(study, plan, arrays, runtime, artifacts, args, progress)
        summarize(study, plan)
    except Interrupted as stopped:
        print(f"stopped by {stopped}: the running trial is marked failed", file=sys.stderr)
        return stopped.exit_status
    return status


def _run_here(study, plan: Plan, arrays, runtime, artifacts, args, progress) -> int:
    """Run the trials in this process (one worker)."""
    stop = GracefulStop().install()
    objective = Objective(data=to_device(arrays, runtime.device), runtime=runtime,
                          space=plan.study_file.space, epochs=plan.settings.epochs,
                          seed=plan.settings.seed, artifacts=artifacts, stop=stop)
    record_worker(study, worker_id())
    lock = StudyLock(plan.storage, plan.study, outages_of(study._storage))
    stats = run_trials(study, objective, args.trials, lock, args.timeout, progress, stop)
    total = stats.objective_seconds + stats.optuna_seconds
    if total > 0:
        log.info("time in Optuna (sampler and storage): %.1f s of %.1f s (%.1f%%)",
                 stats.optuna_seconds, total, 100 * stats.optuna_seconds / total)
    if stats.stopped_by_failures:
        print("stopped: trials kept failing (see fail_reason above)", file=sys.stderr)
        return EXIT_TRIALS_FAILING
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
