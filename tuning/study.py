"""The study as a record: created once with what it is made of, checked by everyone who joins.

A study's user attributes hold its definition (search space, settings, epochs), its data's
fingerprint, the target number of finished trials and the package versions, so a worker on
another host needs nothing but the study's name and storage URL, and a run on other data is
refused instead of mixing results.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import logging
import os
import platform
import shlex
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState

from tuning import __version__
from tuning.cli import PATIENCE_ATTR, TARGET_ATTR, count_finished
from tuning.data import DATA_KEYS
from tuning.errors import StudyNotFound, UsageError, counted, shorten
from tuning.sources import PATH_KINDS, DataConfig, is_path
from tuning.space import space_from_dict
from tuning.storage import mask_url, open_storage, sample_study_hint
from tuning.strategy import make_pruner, make_sampler
from tuning.study_file import StudyFile, StudySettings
from tuning.warm_start import enqueue

log = logging.getLogger("tuning")

METRIC = "val_loss"
"""What a study's trials minimize: the best validation loss over a trial's epochs."""


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
    strategy_given: frozenset[str] = frozenset()
    """The strategy settings the command line gave (`sampler`, `pruner`): a resumed study
    keeps its own others (`with_stored_strategy`)."""


CREATED_ATTR = "versions"
"""The user attribute a study's creation writes last, what produced it: a study without it was
created by a command stopped before it had written the whole definition."""


def _creation_cut_short(study: optuna.Study) -> bool:
    """Whether `study` was created by a command stopped before it wrote the whole definition:
    without its last attribute, and with no trial run yet (those queued at its creation wait)."""
    return CREATED_ATTR not in study.user_attrs and all(
        t.state == TrialState.WAITING for t in study.get_trials(deepcopy=False))


def open_study(plan: Plan, data_fingerprint: dict, target: int,
               patience: int | None = None, set_target: bool = False,
               keep_unset: bool = False, wait: bool = False) -> tuple[optuna.Study, Plan]:
    """Create the study, recording what it is made from, or load it and check it matches;
    with the plan it runs (a resumed study's own sampler and pruner). `set_target`: store
    `target` even at or below the trials finished, and `patience` only where given
    (--create-only, which sets them for workers started elsewhere: they stop after their
    running trials); `keep_unset`: the target was not given either, an existing study keeps
    its own. `wait`: a database server that cannot be reached is waited for (open_storage).

    This is the one place a study is created; workers only load it (`load_existing`).
    """
    storage = open_storage(plan.storage, create=True, wait=wait)
    existed = _exists(storage, plan.study)
    study = optuna.create_study(storage=storage, study_name=plan.study, direction="minimize",
                                load_if_exists=True)
    cut_short = existed and _creation_cut_short(study)
    if existed and not cut_short:
        check_data_matches(study, data_fingerprint, seed=plan.settings.seed)
        check_definition_matches(study, plan)
        check_weights_match(study, plan.settings)
        plan = with_stored_strategy(study, plan)
    else:
        # New, or created by a command stopped before it wrote the definition (a Ctrl-C
        # between the storage calls): every step again, and queuing skips what is queued.
        if cut_short and "data" in study.user_attrs:
            check_data_matches(study, data_fingerprint, seed=plan.settings.seed)
        if cut_short and "settings" in study.user_attrs:
            check_definition_matches(study, plan)
            check_weights_match(study, plan.settings)
        queued = enqueue(study, [(config, "study file") for config in plan.study_file.enqueue])
        if queued:
            source = plan.study_file.path
            # A study named after its data (own images, mnist-sample) starts from another
            # study's file: say so, since it has no file of its own.
            whose = "its study file" if Path(source).stem == plan.study else \
                "the study file it starts from"
            log.info("%s queued to run first: the enqueue list of %s, %s",
                     counted(queued, "configuration"), whose, source)
    # optuna-dashboard shows "Objective 0" for a study without a name for its value; studies
    # created before this was set get it when they resume.
    if study.metric_names is None:
        study.set_metric_names([METRIC])
    if cut_short or "data" not in study.user_attrs:
        study.set_user_attr("data", data_fingerprint)
        study.set_user_attr("space", plan.study_file.space_dict())
        study.set_user_attr("data_config", plan.study_file.data.to_dict())
        study.set_user_attr("epochs", plan.settings.epochs)
        study.set_user_attr("settings", dataclasses.asdict(plan.settings))
        study.set_user_attr("config_path", plan.study_file.path)
        if (weights := weights_fingerprint(plan.settings)) is not None:
            study.set_user_attr(WEIGHTS_ATTR, weights)
        study.set_user_attr(CREATED_ATTR, environment())  # last: the definition is whole
    # A target at or below what is done runs nothing (tuning.search says so): leave the stored
    # one to the workers that may still be running towards it.
    if TARGET_ATTR not in study.user_attrs or (not keep_unset and (
            set_target or target > count_finished(study))):
        study.set_user_attr(TARGET_ATTR, target)
    if patience is not None or not set_target:
        study.set_user_attr(PATIENCE_ATTR, patience)  # this run's, for the workers it starts
    use_strategy(study, plan.settings, plan.study_file.space)
    return study, plan


def with_stored_strategy(study: optuna.Study, plan: Plan) -> Plan:
    """The plan with the sampler and pruner the study was created with, which its workers
    use (they read the stored settings), where the command line gave none; UsageError where
    it gave others. A study file's own may have changed since (a newer default)."""
    stored = study.user_attrs.get("settings")
    if stored is None:
        return plan
    kept = {}
    for key in ("sampler", "pruner"):
        if stored.get(key) in (None, getattr(plan.settings, key)):
            continue
        if key in plan.strategy_given:
            raise UsageError(f"study {plan.study!r} runs {key} {stored[key]}, not --{key} "
                             f"{getattr(plan.settings, key)}: its workers follow what it was "
                             "created with; use another --study name")
        kept[key] = stored[key]
    return dataclasses.replace(plan, settings=dataclasses.replace(plan.settings, **kept)) \
        if kept else plan


def point_at_data(study: optuna.Study) -> str:
    """How to give a study the data it was run on: its own images' path, or a data set's
    directory."""
    own = study.user_attrs.get("data", {}).get("name") in PATH_KINDS
    return "point --dataset at the images it was run on" if own else \
        "point --data-dir at the data it was run on"


def check_data_matches(study: optuna.Study, data_fingerprint: dict,
                       remedy: str | None = None, seed: int | None = None) -> None:
    """Refuse data other than the study's; `remedy` ends the message.

    Compared on what the data are (tuning.data.DATA_KEYS), never on `source`, where they were
    read from: the same files in another directory, spelled relatively or gzipped are the same
    data, and studies that recorded `source` in their fingerprint resume on them too.
    `seed` is the split seed the data were loaded with: the same data set split with another
    seed than the study's differs only in its hash, and the message says so.
    """
    stored = study.user_attrs.get("data")
    if stored is None:
        return
    if remedy is None:
        remedy = f"{point_at_data(study)}, or use another --study name"
    stored_seed = study.user_attrs.get("settings", {}).get("seed")
    same_set = all(stored.get(key) == data_fingerprint.get(key)
                   for key in DATA_KEYS if key != "sha256")
    if (seed is not None and stored_seed is not None and seed != stored_seed and same_set
            and stored.get("sha256") != data_fingerprint.get("sha256")):
        raise UsageError(f"seed {seed} splits the data into training and validation "
                         f"differently from seed {stored_seed}, which study "
                         f"{study.study_name!r} was run with: use --seed {stored_seed} to "
                         "resume it, or use another --study name")

    def shown(fingerprint: dict, key: str) -> object:
        value = fingerprint.get(key)
        return str(value)[:12] if key == "sha256" and value is not None else value

    differences = [f"{key} {shown(stored, key)} in the study, {shown(data_fingerprint, key)} here"
                   for key in DATA_KEYS if stored.get(key) != data_fingerprint.get(key)]
    if not differences:
        return
    source = stored.get("source")
    if source is not None and source == data_fingerprint.get("source") \
            and Path(source).is_absolute():
        # Read from the files the study read: they are not what they were.
        raise UsageError(
            f"the data in {source} changed since study {study.study_name!r} was run on them "
            f"({'; '.join(differences)}): restore them, or {remedy}")
    raise UsageError(
        f"study {study.study_name!r} was run on other data than found here "
        f"({'; '.join(differences)}); its data came from "
        f"{source or 'an unrecorded place'}: {remedy}")


def check_definition_matches(study: optuna.Study, plan: Plan) -> None:
    attrs = study.user_attrs
    if "space" in attrs and attrs["space"] != plan.study_file.space_dict():
        raise UsageError(f"study {plan.study!r} was created with a different search space than "
                         f"{plan.study_file.path}; use another --study name")
    if stored_data_config(study) != plan.study_file.data:
        raise UsageError(f"study {plan.study!r} was created with another [data] table than "
                         f"{plan.study_file.path}'s; use another --study name")
    stored_folds = attrs.get("settings", {}).get("cv_folds", 1)
    if "settings" in attrs and stored_folds != plan.settings.cv_folds:
        raise UsageError(f"study {plan.study!r} cross-validates with cv_folds = {stored_folds}, "
                         f"not {plan.settings.cv_folds}; use another --study name")
    stored = StudySettings(**attrs["settings"]) if "settings" in attrs else None
    for key in ("model", "weights", "max_params", "max_latency_ms"):
        if stored is not None and getattr(stored, key) != getattr(plan.settings, key):
            raise UsageError(f"study {plan.study!r} was created with {key} = "
                             f"{getattr(stored, key)!r}, not {getattr(plan.settings, key)!r}; "
                             "use another --study name")
    if "epochs" in attrs and attrs["epochs"] != plan.settings.epochs:
        raise UsageError(f"study {plan.study!r} runs {counted(attrs['epochs'], 'epoch')} per "
                         f"trial, not {plan.settings.epochs}: give --epochs {attrs['epochs']} to "
                         "go on with it, or another --study name for a new one")


WEIGHTS_ATTR = "weights_sha256"
"""The sha256 of the study's `weights` file when it was created: every trial starts from it."""


def weights_fingerprint(settings: StudySettings) -> str | None:
    """The sha256 of the study's weights file (None: it has none, or the file is not there,
    which loading it says)."""
    if settings.weights is None:
        return None
    digest = hashlib.sha256()
    try:
        with open(settings.weights, "rb") as file:
            while chunk := file.read(1 << 20):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def check_weights_match(study: optuna.Study, settings: StudySettings) -> None:
    """UsageError where the study's weights file holds other weights than when it was created:
    a trial from them would not start where the others did, and a retrain would not repeat
    its trial."""
    stored = study.user_attrs.get(WEIGHTS_ATTR)
    if stored is None:  # no weights, or a study from before they were recorded
        return
    now = weights_fingerprint(settings)
    if now is not None and now != stored:
        raise UsageError(f"weights file {shorten(str(settings.weights), 200)!r} has changed "
                         f"since study {study.study_name!r} was created (sha256 {stored[:12]} "
                         f"then, {now[:12]} now): its trials start from the weights it had; "
                         "put them back, or use another --study name")


def environment() -> dict:
    """What this process runs with, so that a result can be traced and reproduced: the
    package's version and git commit, the command line (passwords masked) and the versions of
    the libraries, CUDA and the GPU. Workers on other hosts may differ: each records its own."""
    import numpy
    import torch

    return {
        "tuning": __version__,
        "git_commit": _git_commit(),
        "command": shlex.join(mask_url(arg) for arg in sys.orig_argv),
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision_version(),
        "optuna": optuna.__version__,
        "numpy": numpy.__version__,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def torchvision_version() -> str | None:
    """torchvision's version as its installed metadata gives it (0.29.1, where the module's own
    string adds the build, 0.29.1+cu130), so that every record gives the same string whether
    or not the process imported it; read without importing it, which costs every worker's start
    a second (it imports torch._dynamo) where the family CNN does not use it."""
    try:
        return importlib.metadata.version("torchvision")
    except importlib.metadata.PackageNotFoundError:  # a build without installed metadata
        return getattr(sys.modules.get("torchvision"), "__version__", None)


def _git_commit() -> str | None:
    """The checkout's commit (with '+dirty' for uncommitted changes), or None when the package
    is installed from a wheel."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], text=True,
                                capture_output=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "tuning"],
                               text=True, capture_output=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def record_worker(study: optuna.Study, worker: str) -> None:
    """Record this worker's environment in the study, under `worker:<host:pid>`."""
    study.set_user_attr(f"worker:{worker}", environment())


def _exists(storage: optuna.storages.BaseStorage, study_name: str) -> bool:
    return study_name in {s.study_name for s in optuna.get_all_study_summaries(storage)}


def load_existing(study_name: str, storage_url: str, heartbeat: bool = True,
                  wait: bool = False, flag: str = "--study") -> optuna.Study:
    """Load a study made by tuning.search; UsageError if there is none or it is foreign.

    `heartbeat=False` for readers (report, dashboard) that run no trials; `wait` for workers,
    which wait for a database server being restarted (open_storage). `flag`: the flag that
    named the study, for messages.
    """
    try:
        storage = open_storage(storage_url, heartbeat=heartbeat, wait=wait)
    except UsageError as exc:  # no database file, or one that cannot be opened
        raise type(exc)(f"{exc}{sample_study_hint(study_name, storage_url, flag=flag)}") \
            from None
    if not _exists(storage, study_name):
        hint = sample_study_hint(study_name, storage_url, storage, flag=flag)
        raise StudyNotFound(f"study {study_name!r} does not exist in {mask_url(storage_url)}; "
                            f"create it with tuning search{hint}")
    study = optuna.load_study(storage=storage, study_name=study_name)
    if not {"settings", "space", "data", TARGET_ATTR} <= set(study.user_attrs):
        raise StudyNotFound(f"study {study_name!r} was not created by tuning.search, or its "
                         "creation was stopped before it had its definition: run the tuning "
                         "search command that created it again to finish it")
    return study


def stored_definition(study: optuna.Study) -> tuple[StudySettings, dict]:
    """The settings and search space a study was created with."""
    attrs = study.user_attrs
    return StudySettings(**attrs["settings"]), space_from_dict(attrs["space"])


def with_images_at(settings: StudySettings, dataset: str | None) -> StudySettings:
    """The study's settings with its images read from `dataset`, their path on this host, when
    given (moved, or mounted elsewhere); whether they are still the study's data is for the
    fingerprint to say."""
    if dataset is None:
        return settings
    if not is_path(settings.dataset):
        raise UsageError(f"--dataset gives the place of a study's image folder or .npz file; "
                         f"this study's data set is {settings.dataset!r}: use --data-dir")
    # Checked here, not only where the images are read: a report without the test reads none,
    # and a mistyped path must not pass unnoticed.
    if not is_path(dataset) or not Path(dataset).expanduser().exists():
        raise UsageError(f"--dataset {shorten(dataset)!r}: give the path of the study's image "
                         "folder or .npz file on this host (there is none there)")
    return dataclasses.replace(settings, dataset=os.path.normpath(
        Path(dataset).expanduser().absolute()))


def images_missing(dataset: str) -> bool:
    """Whether a study's data set is its own images' path with nothing there on this host
    (moved, or mounted elsewhere)."""
    return is_path(dataset) and not Path(dataset).exists()


def check_images_found(study_name: str, settings: StudySettings) -> None:
    """UsageError where the images a stored study was run on are not at the path it recorded
    (`images_missing`), saying how to give their place."""
    if images_missing(settings.dataset):
        raise UsageError(f"study {study_name!r} was run on {shorten(settings.dataset, 200)!r}, "
                         "which is not there on this host: give the images' place with "
                         "--dataset")


def stored_data_config(study: optuna.Study, dataset: str | None = None) -> DataConfig:
    """How the study's images are read and split; studies from before [data] tables have the
    defaults. `dataset`: where its images are read from now (`with_images_at`), which finds
    a separate test folder again where it moved with them (`test_folder_moved_with`)."""
    config = DataConfig.from_dict(study.user_attrs.get("data_config", {}))
    if config.test is not None:
        # Unused beside a test folder, and refused there in a study file now: a study stored
        # with both compares equal to its file without it.
        config = dataclasses.replace(config, test_fraction=DataConfig.test_fraction)
    recorded = study.user_attrs.get("settings", {}).get("dataset")
    if dataset is None or recorded is None:
        return config
    return test_folder_moved_with(config, recorded, dataset)


def test_folder_moved_with(config: DataConfig, recorded: str, dataset: str) -> DataConfig:
    """`config` with its [data] test folder where it lies now beside the training images,
    which moved from `recorded` to `dataset` (../flowers-test beside ../flowers, as before);
    unchanged where they did not move, the folder is still where it was, or is not there."""
    if config.test is None or dataset == recorded or Path(config.test).exists():
        return config
    moved = Path(os.path.normpath(Path(dataset) / os.path.relpath(config.test, recorded)))
    return dataclasses.replace(config, test=str(moved)) if moved.is_dir() else config


def use_strategy(study: optuna.Study, settings: StudySettings, space: dict) -> None:
    """Give this process's handle on the study its sampler and pruner (the sampler draws
    each trial with its own seed, so parallel workers never propose the same points)."""
    study.sampler = make_sampler(settings.sampler, settings.seed, space)
    # A trial reports every epoch of every fold: that many steps.
    study.pruner = make_pruner(settings.pruner, settings.epochs * settings.cv_folds)
