"""`python -m tuning.search`: create (or resume) a study and run it to its target.

`--trials N` is the study's target of finished trials (complete or pruned), not a number to
add: a study with 4 finished trials run again with `--trials 6` runs 2 more. With several
workers (two per GPU by default, else one per core up to 4 on the CPU) the target is exact
across all of them.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    # `python -m tuning.search` runs as `tuning search` does, before the imports below (which
    # load torch for seconds): a Ctrl-C meanwhile ends in one line, not a traceback.
    from tuning.command import run_module

    sys.exit(run_module("search"))

import argparse
import contextlib
import logging
import shlex
import signal
import statistics
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import TextIO, cast

import optuna
import torch
from optuna.trial import TrialState

from tuning.cli import (
    FINISHED,
    MAX_TRIALS,
    MAX_WORKERS,
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
    loss_text,
    positive_int,
    positive_int_up_to,
    run_timeout,
    storage_url,
    study_name,
)
from tuning.command import run_started
from tuning.data import device_data_limit, load_arrays
from tuning.device import cpu_cores, resolve_device, set_cpu_threads
from tuning.errors import (
    EXIT_DATABASE_LOST,
    EXIT_OK,
    EXIT_TRIALS_FAILING,
    UsageError,
    counted,
    shorten,
)
from tuning.folds import objective_data
from tuning.launcher import Launcher, plan_workers, visible_gpus, worker_id
from tuning.objective import Objective, best_cut_by_budget, over_limits, planned
from tuning.outage import (
    StorageFull,
    outages_of,
    refusal,
    refused_for_good,
    transient,
    without_retry,
)
from tuning.plan import DEFAULT_STUDY, make_plan, name_after_data, waits_for_the_server
from tuning.runner import StudyLock, out_of_patience, run_trials, why_grid_ended_short
from tuning.settings import setting
from tuning.signals import GracefulStop, Interrupted
from tuning.sources import SOURCES, is_path
from tuning.space import REPEAT, representative, tuned
from tuning.storage import (
    artifact_store,
    check_artifact_directory,
    check_settings,
    default_storage,
    mask_url,
    shareable_url,
)
from tuning.strategy import PRUNERS, SAMPLERS
from tuning.study import (
    Plan,
    load_existing,
    open_study,
    record_worker,
    test_folder_moved_with,
)
from tuning.warm_start import enqueue, top_configurations

log = logging.getLogger("tuning")
# Small CNNs leave a big GPU mostly idle: several workers per GPU keep it busy. 2 is a guess
# until measured on a GPU (docs/benchmarks.md says what has been measured).
DEFAULT_WORKERS_PER_GPU = 2


def add_study_arguments(parser: argparse.ArgumentParser) -> None:
    """The study's definition: its file and the settings the command line overrides."""
    add_storage_arguments(parser, "study name (default: the study file's name, else mnist)")
    parser.add_argument("--config", type=Path,
                        help="study file, or the name of one (default: ./studies/<study>.toml, "
                             "else the built-in one; `tuning studies` lists them)")
    parser.add_argument("--dataset",
                        help=f"{', '.join(SOURCES)}, or the path of an image folder "
                             "(root/<class>/<image>) or an .npz file (x_train, y_train, ...)")
    parser.add_argument("--epochs", type=positive_int, help="maximum epochs per trial")
    parser.add_argument("--sampler", choices=SAMPLERS, help="default: from the study file")
    parser.add_argument("--pruner", choices=PRUNERS, help="default: from the study file")
    parser.add_argument("--seed", type=int, help="base seed (default: from the study file)")
    add_run_arguments(parser)


class _Given(argparse.Action):
    """Stores the value, and that it was given (`<dest>_given`): a default is not a choice."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, values)
        setattr(namespace, f"{self.dest}_given", True)


DEFAULT_WARM_START_TOP = 3


def build_parser(prog: str = "python -m tuning.search") -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=prog,
        description="Create or resume a study and run it until it has --trials finished trials.",
    )
    parser.add_argument("--trials", type=positive_int_up_to(MAX_TRIALS), default=100,
                        action=_Given,
                        help="target number of finished (complete or pruned) trials in the "
                             "study; a rerun continues to this number (default: 100 for a new "
                             "study, an existing study's own target)")
    parser.add_argument("--patience", metavar="N", type=positive_int,
                        help="stop before the target once N trials have finished after the "
                             "best one without beating it (default: run to the target)")
    add_study_arguments(parser)
    parser.add_argument("--workers", type=positive_int_up_to(MAX_WORKERS),
                        help="worker processes on the CPU (default $TUNING_WORKERS, else one "
                             "per core up to 4, each with an equal share of the cores' "
                             "threads; on a GPU machine this runs CPU workers instead of GPU "
                             "ones)")
    parser.add_argument("--create-only", action="store_true",
                        help="create the study (definition, data, target) and exit: workers "
                             "started elsewhere with tuning worker run it (a database server "
                             "not up yet is waited for, as workers wait: TUNING_DB_RETRY_S)")
    parser.add_argument("--warm-start-from", metavar="STUDY", type=study_name,
                        help="try the best configurations of another study first (in --storage "
                             "or $TUNING_STORAGE, else in that study's own file)")
    parser.add_argument("--warm-start-top", metavar="K", type=positive_int,
                        help=f"how many of its best trials --warm-start-from takes (default "
                             f"{DEFAULT_WARM_START_TOP})")
    parser.add_argument("--workers-per-gpu", type=positive_int_up_to(MAX_WORKERS),
                        help=f"worker processes per visible GPU (default "
                             f"{DEFAULT_WORKERS_PER_GPU})")
    add_verbosity_arguments(parser, "only warnings and errors (no line per trial)")
    return parser


def summarize(study: optuna.Study, plan: Plan, args: argparse.Namespace,
              stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout  # at call time: a default of sys.stdout is the one at import
    trials = study.get_trials(deepcopy=False)
    counts = {state.name: sum(t.state == state for t in trials) for state in TrialState}
    counts_text = ", ".join(f"{n} {name.lower()}" for name, n in counts.items() if n)
    print(f"\nstudy {plan.study!r} in {mask_url(plan.storage)}: {counts_text or 'no trials yet'}",
          file=stream)
    completed = [t for t in trials if t.state == TrialState.COMPLETE]
    if completed and not tuned(plan.study_file.space):
        # One configuration: the trials differ only by seed, and the best is the luckiest.
        losses = [cast(float, t.value) for t in completed]
        spread = f" ± {statistics.stdev(losses):.4f} (sd)" if len(losses) > 1 else ""
        print(f"every parameter is fixed: {counted(len(completed), 'complete repeat')} of "
              "one configuration, val_loss "
              f"{loss_text(statistics.fmean(losses))}{spread}", file=stream)
    elif completed:
        best = study.best_trial
        folds = plan.settings.cv_folds
        # Under cross-validation a trial's steps are its epochs of every fold, one after another.
        epochs = (f"{counted(plan.settings.epochs, 'epoch')} in each of {folds} folds"
                  if folds > 1 else f"epochs {best.user_attrs.get('epochs_run')}")
        print(f"best trial #{best.number}: val_loss {loss_text(cast(float, best.value))}, "
              f"val_accuracy {best.user_attrs.get('val_accuracy', float('nan')):.4f}, "
              f"{epochs}", file=stream)
        # A repeat is a seed index, not a hyperparameter to take away.
        for name, value in ((n, v) for n, v in best.params.items() if n != REPEAT):
            shown = f"{value:.4g}" if isinstance(value, float) else value
            print(f"  {name} = {shown}", file=stream)
    storage_arg = _storage_arg(plan)
    # What the report and the export need to find: the data, and the trials' checkpoints.
    artifacts = "" if args.artifacts is None else \
        f" --artifacts {shlex.quote(str(args.artifacts))}"
    found_by = _data_args(study, plan, args) + artifacts
    print(f"dashboard: tuning dashboard --study {plan.study}{storage_arg}{artifacts}",
          file=stream)
    print(f"report:    tuning report --study {plan.study}{storage_arg}{found_by}", file=stream)
    cut = None if completed else best_cut_by_budget(trials, plan.settings.cv_folds)
    if completed or cut is not None:
        which = "" if cut is None else f" --trial {cut.number}"
        print(f"export:    tuning export --study {plan.study}{which}{storage_arg}{found_by}"
              + ("" if cut is None else f"   (no trial completed: trial {cut.number}, the "
                 "best the --budget cut short, as trained that far)"), file=stream)


def over_limits_warning(trials: list[optuna.trial.FrozenTrial]) -> str | None:
    """One line when every finished trial was over the limits and pruned before training (a
    search that ran and trained nothing), else None."""
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    if not finished or any(over_limits(t) is None for t in finished):
        return None
    last = finished[-1]
    every = "the 1 finished trial was" if len(finished) == 1 else (
        f"all {len(finished)} finished trials were")
    return (f"{every} over the limits and pruned before training, none trained (trial "
            f"{last.number}: {over_limits(last)}): allow more with max_params or "
            "max_latency_ms, or search smaller networks")


def _data_args(study: optuna.Study, plan: Plan, args: argparse.Namespace) -> str:
    """What the report needs to find the data this run read: the --data-dir it was given, and
    the images' place where it is not the one the study recorded (they moved)."""
    shown = ""
    if args.data_dir is not None:
        shown += f" --data-dir {shlex.quote(str(args.data_dir))}"
    recorded = study.user_attrs.get("settings", {}).get("dataset")
    if is_path(plan.settings.dataset) and plan.settings.dataset != recorded:
        shown += f" --dataset {shlex.quote(plan.settings.dataset)}"
    return shown


def _storage_arg(plan: Plan) -> str:
    return "" if plan.storage == default_storage(plan.study) else \
        f" --storage {shlex.quote(shareable_url(plan.storage))}"


def _seconds(duration: float | None) -> str | None:
    """A --budget or --timeout as the command line gives it (90s)."""
    return None if duration is None else f"{duration:g}s"


def continue_command(prog: str, plan: Plan, args: argparse.Namespace) -> str:
    """The command that goes on with this run: the same study, target and definition (a
    study refuses other epochs, data or split), the same workers, and the same --budget and
    --timeout (each counted afresh)."""
    given = {"--patience": args.patience,
             "--config": args.config, "--dataset": args.dataset, "--epochs": args.epochs,
             "--sampler": args.sampler, "--pruner": args.pruner, "--seed": args.seed,
             "--data-dir": args.data_dir, "--workers": args.workers,
             "--budget": _seconds(args.budget), "--timeout": _seconds(args.timeout),
             "--workers-per-gpu": args.workers_per_gpu, "--artifacts": args.artifacts,
             "--device": None if args.device == "auto" else args.device,
             "--compile": None if args.compile == "off" else args.compile}
    flags = "".join(f" {flag} {shlex.quote(str(value))}" for flag, value in given.items()
                    if value is not None)
    # A name derived from data that fell back (mnist-sample) has no study file of its own: the
    # command without --study derives it again.
    derived = args.study is None and args.config is None and plan.study != DEFAULT_STUDY
    study = "" if derived else f" --study {plan.study}"
    return f"{prog}{study} --trials {args.trials}{flags}{_storage_arg(plan)}"


def main(argv: list[str] | None = None, prog: str = "python -m tuning.search") -> int:
    args = build_parser(prog).parse_args(argv)
    configure_logging(args.quiet, args.verbose)
    try:
        return _run(args, prog)
    except (UsageError, StorageFull) as exc:
        return fail(exc)
    except Interrupted as stopped:  # after the trials: the search's last lines were cut short
        print(f"stopped by {stopped}", file=sys.stderr)
        return stopped.exit_status
    except Exception as exc:
        # The study's name may come from its data, known only inside _run: name the URL
        # only where the user gave it.
        url = args.storage or setting("TUNING_STORAGE")
        if refused_for_good(exc):  # as at the start: the password changed, the role went
            return fail(refusal(url, exc))
        if not transient(exc):
            raise
        return database_lost(url, exc)


def _refuse_idle_flags(args: argparse.Namespace) -> None:
    """UsageError for flags that would do nothing: --warm-start-top without the study it takes
    from; with --create-only, those of running trials (none runs here)."""
    if args.warm_start_top is not None and args.warm_start_from is None:
        raise UsageError("--warm-start-top takes the best trials of the study --warm-start-from "
                         "names: give that too, or leave it out")
    if not args.create_only:
        return
    idle = [flag for flag, value in (("--workers", args.workers),
                                     ("--workers-per-gpu", args.workers_per_gpu),
                                     ("--timeout", args.timeout), ("--budget", args.budget))
            if value is not None]
    if idle:
        raise UsageError(f"{' and '.join(idle)} with --create-only: no trial runs here, so "
                         f"{'it does' if len(idle) == 1 else 'they do'} nothing; leave "
                         f"{'it' if len(idle) == 1 else 'them'} out"
                         + ("" if not {"--timeout", "--budget"} & set(idle)
                            else " (tuning worker takes --timeout and --budget)"))


def _run(args: argparse.Namespace, prog: str) -> int:
    # The budget counts from the command's start: importing torch and loading the data are
    # part of the run.
    deadline = None if args.budget is None else run_started() + args.budget
    _refuse_idle_flags(args)
    runtime = resolve_device(args.device, args.compile)
    gpus = visible_gpus(args.device, torch.cuda.device_count() if torch.cuda.is_available()
                        else 0)
    specs = plan_workers(gpus, args.workers_per_gpu or DEFAULT_WORKERS_PER_GPU, args.workers,
                         cpu_cores())
    if args.workers_per_gpu is not None and specs[0].device == "cpu":
        log.warning("--workers-per-gpu %d does not apply: %s, so %d worker%s run%s on the CPU "
                    "(--workers sets how many)", args.workers_per_gpu,
                    "--workers asks for the CPU" if gpus else "no GPU is visible", len(specs),
                    "s" if len(specs) != 1 else "", "" if len(specs) != 1 else "s")
    # Settings read later, checked before anything is created: a bad one changes nothing.
    check_settings()
    device_data_limit()
    check_artifact_directory(args.artifacts)
    plan = make_plan(args)
    # Loaded before the study is opened: the data decide its name (name_after_data), and the
    # launcher's workers, told so, do not each repeat what loading them says.
    arrays = load_arrays(plan.settings.dataset, args.data_dir, plan.settings.seed,
                         config=test_folder_moved_with(plan.study_file.data,
                                                       plan.study_file.settings.dataset,
                                                       plan.settings.dataset))
    plan = name_after_data(plan, args, arrays)
    plan.settings.network().check(representative(plan.study_file.space), arrays.input_shape,
                                  arrays.num_classes, plan.settings.limits())
    flip = plan.study_file.space.get("hflip")
    if flip is not None and flip.kind != "fixed" and not arrays.hflip_allowed:
        log.warning("hflip is searched, but %s is not flipped (a flip may change what an image "
                    "shows): the choice has no effect; [data] hflip = true in the study file "
                    "allows it", arrays.name)
    if arrays.leaks:
        log.warning("%d of the %d test images %s of training or validation images: the test "
                    "accuracy will flatter the model", arrays.leaks, len(arrays.test_y),
                    "is an exact copy" if arrays.leaks == 1 else "are exact copies")
    in_two, example = arrays.images_in_two_classes()
    if example is not None:
        log.warning("%d image%s under two classes or more (%s and %s share one): a class "
                    "folder copied or linked into another? each such image is taught as both",
                    in_two, " is" if in_two == 1 else "s are", shorten(example[0]),
                    shorten(example[1]))
    missing = arrays.classes_missing()
    if missing:
        log.warning("some classes have too few images to be in every split: none in %s",
                    shorten("; ".join(f"{split}: {', '.join(names)}"
                                      for split, names in missing.items()), 300))
    warm_start = _warm_start_configurations(args, plan)
    if plan.storage == default_storage(plan.study):
        Path("studies").mkdir(exist_ok=True)
    # A target not given is the study's own: the default of a new study must not cut a
    # shared study's target short, or raise it, for every worker on every host.
    keep_target = not getattr(args, "trials_given", False)
    study, plan = open_study(plan, arrays.fingerprint(), args.trials, args.patience,
                             set_target=args.create_only, keep_unset=keep_target,
                             wait=waits_for_the_server(args))
    if keep_target:
        args.trials = study.user_attrs[TARGET_ATTR]
    if warm_start:
        added = enqueue(study, warm_start)
        skipped = "" if added == len(warm_start) else \
            " (the others were run or queued already)"
        log.info("warm start: %d of the %d best configurations of study %r enqueued%s", added,
                 len(warm_start), args.warm_start_from, skipped)
    arrays = arrays.normalized_as(study.user_attrs.get("data"))
    finished = count_finished(study)
    specs = plan_workers(gpus, args.workers_per_gpu or DEFAULT_WORKERS_PER_GPU, args.workers,
                         cpu_cores(), most=max(1, study.user_attrs[TARGET_ATTR] - finished))
    if len(specs) == 1 and runtime.device.type == "cpu":
        set_cpu_threads()
    log.info("study %r (%s): %d/%d finished; data %s (%d train, %d val, %d classes, %s); %s; "
             "sampler %s, pruner %s, %s%s", plan.study, mask_url(plan.storage),
             finished, args.trials, arrays.name, len(arrays.train_y),
             len(arrays.val_y), arrays.num_classes, "x".join(map(str, arrays.input_shape)),
             "no workers here (--create-only)" if args.create_only
             else f"{len(specs)} workers" if len(specs) > 1 else runtime.name,
             plan.settings.sampler, plan.settings.pruner, counted(plan.settings.epochs, "epoch"),
             f" in each of {plan.settings.cv_folds} folds" if plan.settings.cv_folds > 1 else "")
    if args.create_only:
        stored_patience = study.user_attrs.get(PATIENCE_ATTR)  # kept where not given
        patience = "" if stored_patience is None else f", patience {stored_patience}"
        met = (f": already met by its {finished} finished trials, so workers stop after the "
               "trials they run" if finished >= args.trials else "")
        shared = shareable_url(plan.storage)
        password = ("; give the password in PGPASSWORD or PGPASSWORD_FILE"
                    if shared != plan.storage else "")
        print(f"study {plan.study!r} ready in {mask_url(plan.storage)} (target {args.trials}"
              f"{patience}{met}); start workers with: tuning worker --study {plan.study} "
              f"--storage {shlex.quote(shared)}{password}")
        return EXIT_OK
    if finished >= args.trials:
        print(f"study {plan.study!r} already has {finished} finished trials (target "
              f"{args.trials}): nothing to run; raise --trials to run more")
        summarize(study, plan, args)
        return EXIT_OK
    trials = study.get_trials(deepcopy=False)
    stalled = out_of_patience(trials, args.patience)
    if stalled is not None:
        print(f"study {plan.study!r}: {stalled}: nothing to run; raise --patience or leave it "
              "out to search on")
        summarize(study, plan, args)
        return EXIT_OK
    short = why_grid_ended_short(study, trials, args.trials)
    if short is not None:
        print(f"study {plan.study!r}: nothing to run: {short}")
        summarize(study, plan, args)
        return EXIT_OK
    # Under cross-validation a trial's steps run through every fold's epochs.
    progress = None if args.quiet else Progress.for_study(
        study, args.trials, plan.settings.epochs * plan.settings.cv_folds)
    # --timeout counts from about when the workers start; --budget from the command's start.
    last_start = None if args.timeout is None else time.monotonic() + args.timeout
    if progress is not None:
        progress.start = run_started()  # elapsed as the budget counts it, imports and all
        progress.deadline = deadline
        progress.last_start = last_start
    try:
        if deadline is not None and time.monotonic() >= deadline:
            # Spent on reading the data: workers started now would each load it, then stop.
            status = EXIT_OK
        elif len(specs) > 1:
            # Extra processes; this one only watches (and restarts the ones that crash).
            status = Launcher(study, plan.storage, specs, args.data_dir, args.artifacts,
                              args.timeout, progress=progress, compile_mode=args.compile,
                              deadline=deadline,
                              dataset=plan.settings.dataset if is_path(plan.settings.dataset)
                              else None).run()
            if status > 128:
                return _stopped(study, plan, args, prog, progress, status,
                                "the running trials were")
            if status == EXIT_DATABASE_LOST:  # its workers waited it out: not again here
                return database_lost(plan.storage, None)
        else:
            artifacts = artifact_store(args.artifacts)
            status = _run_here(study, plan, arrays, runtime, artifacts, args, progress,
                               deadline)
    except Interrupted as stopped:
        return _stopped(study, plan, args, prog, progress, stopped.exit_status,
                        "the running trial was")
    trials = study.get_trials(deepcopy=False)
    finished = sum(t.state in FINISHED for t in trials)
    stalled = out_of_patience(trials, args.patience)
    short = why_grid_ended_short(study, trials, args.trials)
    if stalled is not None and finished < args.trials:
        print(f"stopped early: {stalled}")
    elif short is not None:
        print(short)
    elif finished < args.trials and status == EXIT_OK and (args.budget is not None
                                                           or args.timeout is not None):
        # The one that ended first: both may be given.
        by_budget = deadline is not None and (last_start is None or deadline <= last_start)
        limit = f"--budget {args.budget:g} s" if by_budget else f"--timeout {args.timeout:g} s"
        print(f"stopped at the {limit}: {finished} of the target {args.trials} finished; "
              "the same command goes on")
    summarize(study, plan, args)
    warning = over_limits_warning(trials)
    if warning is not None:
        log.warning("%s", warning)
    return status


def _warm_start_configurations(args: argparse.Namespace, plan: Plan) -> list[tuple[dict, str]]:
    """--warm-start-from's configurations, read (and refused if unusable) before the study is
    created or changed."""
    if args.warm_start_from is None:
        return []
    if args.warm_start_from == plan.study:
        raise UsageError(f"--warm-start-from {plan.study!r} is this study itself; name another")
    source = load_existing(args.warm_start_from, storage_url(args.storage, args.warm_start_from),
                           heartbeat=False, flag="--warm-start-from")
    return top_configurations(source, plan.study_file.space,
                              args.warm_start_top or DEFAULT_WARM_START_TOP)


def _run_began() -> datetime:
    """When this command began, on the clock Optuna dates trials by (local time)."""
    return datetime.now() - timedelta(seconds=time.monotonic() - run_started())


def _stopped(study: optuna.Study, plan: Plan, args: argparse.Namespace, prog: str,
             progress: Progress | None, status: int, trials_were: str) -> int:
    """After a stop signal (exit `status`): what became of the running trials (`trials_were`:
    whose they were), what the study has so far, and how to go on."""
    if progress is not None:
        progress.close()
    stopped_by = f"stopped by {signal.Signals(status - 128).name}"
    # Informative only: a second signal or an unreachable database must not turn a clean stop
    # into a traceback, nor keep it waiting for the database to come back.
    try:
        with without_retry(study._storage):
            trials = study.get_trials(deepcopy=False)
    except (Exception, Interrupted, KeyboardInterrupt) as exc:
        outage = isinstance(exc, Exception) and transient(exc)
        print(f"{stopped_by} while the database is unreachable: no summary; {trials_were} "
              "marked failed where they could be, and a trial that could not be is retried "
              "once a worker finds it stale" if outage else stopped_by, file=sys.stderr)
    else:
        # A stop while the workers were still reading the data cut no trial short.
        cut = any(t.state == TrialState.FAIL and
                  str(t.user_attrs.get("fail_reason", "")).startswith(stopped_by) and
                  t.datetime_complete is not None and t.datetime_complete >= _run_began()
                  for t in trials)
        print(f"{stopped_by}: {trials_were} marked failed and queued to run again first" if cut
              else f"{stopped_by}: no trial was running", file=sys.stderr)
        with contextlib.suppress(Exception, Interrupted, KeyboardInterrupt):
            with without_retry(study._storage):
                summarize(study, plan, args)
    print(f"continue:  {continue_command(prog, plan, args)}")
    return status


def _run_here(study, plan: Plan, arrays, runtime, artifacts, args, progress,
              deadline: float | None) -> int:
    """Run the trials in this process (one worker)."""
    stop = GracefulStop().install()
    data, folds = objective_data(arrays, plan.settings.cv_folds, plan.settings.seed,
                                 runtime.device)
    objective = Objective(data=data, folds=folds, runtime=runtime,
                          space=plan.study_file.space, epochs=plan.settings.epochs,
                          seed=plan.settings.seed, artifacts=artifacts, stop=stop,
                          on_epoch=None if progress is None else progress.on_epoch,
                          network=plan.settings.network(), limits=plan.settings.limits(),
                          deadline=deadline, planned=planned(plan.settings, plan.study_file.space))
    record_worker(study, worker_id())
    lock = StudyLock(plan.storage, plan.study, outages_of(study._storage))
    stats = run_trials(study, objective, args.trials, lock, run_timeout(args.timeout, deadline),
                       progress, stop, args.patience)
    total = stats.objective_seconds + stats.optuna_seconds
    if total > 0:
        log.info("time in Optuna (sampler and storage): %.1f s of %.1f s (%.1f%%)",
                 stats.optuna_seconds, total, 100 * stats.optuna_seconds / total)
    if stats.stopped_by_failures:
        print("stopped: trials kept failing (see fail_reason above)", file=sys.stderr)
        return EXIT_TRIALS_FAILING
    return EXIT_OK

