"""`tuning worker`: join an existing study and run its trials until it has its target.

`tuning worker --study NAME --storage URL` joins a study that `tuning search` created, on this
host or any other. Everything it needs (search space, data set, epochs, sampler, pruner,
target) is read from the study itself, so a worker needs no study file. The trial loop itself
is tuning.runner.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    # `python -m tuning.worker` runs as `tuning worker` does, before the imports below (which
    # load torch for seconds): a Ctrl-C meanwhile ends in one line, not a traceback.
    from tuning.command import run_module

    sys.exit(run_module("worker"))

import argparse
import logging
import shlex
import time

import optuna

from tuning.cli import (
    MAX_THREADS,
    PATIENCE_ATTR,
    TARGET_ATTR,
    OneLineParser,
    Progress,
    add_run_arguments,
    add_storage_arguments,
    add_verbosity_arguments,
    configure_logging,
    count_finished,
    database_lost,
    fail,
    non_negative_int,
    positive_int_up_to,
    run_timeout,
    storage_url,
)
from tuning.command import run_started
from tuning.errors import EXIT_DATABASE_LOST, EXIT_OK, EXIT_TRIALS_FAILING, UsageError, counted
from tuning.launcher import worker_id
from tuning.outage import StorageFull, outages_of, refusal, refused_for_good, transient
from tuning.runner import (
    RunStats,
    StudyLock,
    current_goal,
    out_of_patience,
    run_trials,
    why_grid_ended_short,
)
from tuning.signals import GracefulStop, Interrupted
from tuning.storage import default_storage, mask_url, resolve_url, shareable_url

log = logging.getLogger("tuning")


def build_parser(prog: str = "python -m tuning.worker") -> argparse.ArgumentParser:
    parser = OneLineParser(prog=prog,
                           description="Join an existing study and run trials until it has its "
                                       "target number of finished trials.")
    add_storage_arguments(parser, "name of an existing study", required=True)
    add_run_arguments(parser)
    parser.add_argument("--dataset",
                        help="where the study's image folder or .npz file is on this host, "
                             "when not where the study recorded it")
    parser.add_argument("--threads", type=positive_int_up_to(MAX_THREADS),
                        help="torch CPU threads (default: all cores)")
    parser.add_argument("--worker-index", type=non_negative_int,
                        help="a label for this worker in log lines (the launcher numbers its "
                             "workers; seeds differ per trial without it)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress lines (per trial and per epoch)")
    # Started by `tuning search`'s launcher, which prints the progress of all its workers and
    # has already said what every worker would repeat (the data fallback).
    parser.add_argument("--launched", action="store_true", help=argparse.SUPPRESS)
    add_verbosity_arguments(parser, "only warnings and errors (no line per trial)")
    return parser


def prepare(args: argparse.Namespace, storage_url: str):
    """Load the study and build this worker's objective: (study, objective, target).

    UsageError when the study does not exist, was not made by tuning.search, or this host's
    data differ from the study's.
    """
    import torch

    from tuning.data import check_data_dir, device_data_limit, load_arrays
    from tuning.device import resolve_device
    from tuning.folds import objective_data
    from tuning.objective import Objective, planned
    from tuning.space import representative
    from tuning.storage import artifact_store, check_artifact_directory
    from tuning.study import (
        check_data_matches,
        check_images_found,
        check_weights_match,
        load_existing,
        record_worker,
        stored_data_config,
        stored_definition,
        use_strategy,
        with_images_at,
    )

    check_data_dir(args.data_dir)
    check_artifact_directory(args.artifacts)
    device_data_limit()  # read as the data go to the device: checked before anything is stored
    runtime = resolve_device(args.device, args.compile)
    study = load_existing(args.study, storage_url, wait=True)
    settings, space = stored_definition(study)
    settings = with_images_at(settings, args.dataset)
    check_images_found(args.study, settings)
    check_weights_match(study, settings)
    if runtime.device.type == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    arrays = load_arrays(settings.dataset, args.data_dir, settings.seed,
                         config=stored_data_config(study, settings.dataset),
                         fallback_level=logging.DEBUG if args.launched else logging.WARNING)
    check_data_matches(study, arrays.fingerprint())
    arrays = arrays.normalized_as(study.user_attrs["data"])
    settings.network().check(representative(space), arrays.input_shape, arrays.num_classes)
    use_strategy(study, settings, space)
    record_worker(study, worker_id())
    data, folds = objective_data(arrays, settings.cv_folds, settings.seed, runtime.device)
    target = int(study.user_attrs[TARGET_ATTR])
    # A worker joining a study with nothing left to run leaves no empty directory behind.
    artifacts = artifact_store(args.artifacts, create_now=count_finished(study) < target)
    objective = Objective(data=data, folds=folds, runtime=runtime, space=space,
                          epochs=settings.epochs, seed=settings.seed,
                          artifacts=artifacts,
                          stop=GracefulStop().install(), network=settings.network(),
                          limits=settings.limits(), planned=planned(settings, space))
    return study, objective, target


def main(argv: list[str] | None = None, prog: str = "python -m tuning.worker") -> int:
    args = build_parser(prog).parse_args(argv)
    configure_logging(args.quiet, args.verbose, label=worker_id())
    url = storage_url(args.storage, args.study)
    deadline = None if args.budget is None else run_started() + args.budget
    try:
        resolve_url(url)
        study, objective, target = prepare(args, url)
        objective.deadline = deadline
        patience = study.user_attrs.get(PATIENCE_ATTR)
        numbered = "" if args.worker_index is None else f" {args.worker_index}"
        log.info("worker%s joined study %r in %s (target %d%s)", numbered, args.study,
                 mask_url(url), target, "" if patience is None else f", patience {patience}")
        lock = StudyLock(url, args.study, outages_of(study._storage))
        if not (args.quiet or args.no_progress or args.launched):
            progress = Progress.for_study(study, target,
                                          objective.epochs * len(objective.folds or [None]),
                                          label=worker_id())
            objective.on_epoch = progress.on_epoch
        else:
            progress = None
        if progress is not None:
            progress.deadline = deadline
            if args.timeout is not None:
                progress.last_start = time.monotonic() + args.timeout
        stats = run_trials(study, objective, target, lock, run_timeout(args.timeout, deadline),
                           progress, objective.stop, patience, announce_stale=not args.launched)
        if not args.launched:  # a launcher says it once for all its workers
            say_why_nothing_more(study, target, patience, stats, url)
            goal, done = current_goal(study, target, patience)[0], count_finished(study)
            if deadline is not None and time.monotonic() >= deadline and done < goal:
                log.info("stopped at the --budget %g s: %d of the target %d finished",
                         args.budget, done, goal)
    except (UsageError, StorageFull) as exc:
        return fail(exc)
    except Interrupted as stopped:
        if not args.launched:  # a launcher says it once for all its workers
            log.warning("%s", stopped.outcome())
        return stopped.exit_status
    except Exception as exc:
        if refused_for_good(exc):  # as at the start: the password changed, the role went
            return fail(refusal(url, exc))
        if not transient(exc):
            raise
        if args.launched:  # its launcher says it once for all its workers
            return EXIT_DATABASE_LOST
        return database_lost(url, exc)
    return EXIT_TRIALS_FAILING if stats.stopped_by_failures else EXIT_OK


def say_why_nothing_more(study: optuna.Study, target: int, patience: int | None,
                         stats: RunStats, url: str) -> None:
    """A line where this worker stopped for the study's sake: a grid run short of its target,
    out of --patience, or a target met before it ran anything (a worker that joins a finished
    study says so, not nothing)."""
    target, patience = current_goal(study, target, patience)
    if stats.grid_run:
        short = why_grid_ended_short(study, study.get_trials(deepcopy=False), target)
        if short is not None:
            log.info("%s", short)
    elif stats.out_of_patience:
        stalled = out_of_patience(study.get_trials(deepcopy=False), patience)
        if stalled is not None:
            log.info("stopped early: %s", stalled)
    elif not (stats.finished or stats.failed) and count_finished(study) >= target:
        storage = "" if url == default_storage(study.study_name) else \
            f" --storage {shlex.quote(shareable_url(url))}"
        log.info("study %r already has its target of %s: nothing to run; raise it with "
                 "tuning search --study %s --trials N --create-only%s", study.study_name,
                 counted(target, "finished trial"), study.study_name, storage)
