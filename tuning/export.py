"""`tuning export --study NAME --out DIR`: a study's model, as files that need neither the study
nor its database.

The trial is --trial N, else the one the report's held-out test evaluates
(tuning.report_heldout.reported_trial): the best, or for repeats of one fixed configuration
the first complete repeat, so that the card's test accuracy is the report's.

DIR gets:

    weights.pt             the network's state dict (torch.load(..., weights_only=True))
    config.json            what rebuilds it: model spec, the trial's parameters (fixed ones
                           included), input shape, classes, normalization; the full resolved
                           configuration it trained with (`configuration`: defaults too); the
                           held-out test metrics, how the weights were obtained, the data's
                           fingerprint, versions, what the programs were checked on, and a
                           format version
    model.pt2              torch.export of the normalization and the network: float images in
                           [0, 1], (N, C, H, W), to logits; any batch size; runs without tuning
    model.torchscript.pt   the same, traced with TorchScript (deprecated in recent torch: kept
                           while it works, skipped and said when it does not)
    model.onnx             the same, only where the onnx package is installed
    README.md              a model card (tuning.model_card): data, configuration, test
                           metrics, provenance, how to load it and the command that reproduces it

The programs are written and checked by tuning.portable.

The weights are the trial's checkpoint artifact, else the trial retrained with its seed
(tuning.evaluate.trial_model, as the report does), or with --refit the configuration retrained
on training and validation images together for the trial's best epoch count. Either way the
network is evaluated once on the test set, so that with a checkpoint the card's accuracy is the
report's held-out accuracy of the same trial.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    # `python -m tuning.export` runs as `tuning export` does, before the imports below (which
    # load torch for seconds): a Ctrl-C meanwhile ends in one line, not a traceback.
    from tuning.command import run_module

    sys.exit(run_module("export"))

import argparse
import dataclasses
import io
import json
import logging
import math
import os
import platform
import shlex
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from tuning import __version__
from tuning.cli import (
    OneLineParser,
    add_storage_arguments,
    add_verbosity_arguments,
    configure_logging,
    fail,
    loss_text,
    make_out_directory,
    remove_empty,
    storage_url,
)
from tuning.data import Arrays, DeviceData, check_data_dir, to_device
from tuning.device import Runtime, resolve_device
from tuning.errors import UsageError, counted, shorten
from tuning.exported import (
    CONFIG_FILE,
    FORMAT,
    FORMAT_VERSION,
    IMAGE_FILES,
    WEIGHTS_FILE,
    Classifier,
    load_model,
    output_check_images,
)
from tuning.model_card import CARD_FILE, model_card
from tuning.networks import MODEL_PREFIX, ModelBuildError, ModelSpec, check_importable_here
from tuning.objective import (
    OVER_LIMITS,
    best_cut_by_budget,
    epochs_run,
    exportable_cut,
    fixed_params,
    over_limits,
    recorded_val_loss,
    stopped_by_budget,
)
from tuning.portable import CHECK_INPUTS, PROGRAM_FILES, write_programs
from tuning.report_heldout import reported_trial, study_arrays
from tuning.report_stats import StudyView
from tuning.reproduce import REPRODUCE_FILE, Reproduction, reproduction
from tuning.space import Param, applies, build_configs
from tuning.storage import existing_artifact_store, resolve_url, shareable_url
from tuning.study import (
    check_weights_match,
    load_existing,
    stored_data_config,
    stored_definition,
    torchvision_version,
    with_images_at,
)
from tuning.study_file import StudySettings

log = logging.getLogger("tuning")

EXPORT_FILES = (WEIGHTS_FILE, CONFIG_FILE, *PROGRAM_FILES, CARD_FILE, REPRODUCE_FILE)
"""Every file an export may write: a new export into the same directory replaces them all."""


@dataclass(frozen=True)
class Obtained:
    """The exported network and how its weights came about."""

    model: nn.Module
    """The network, on the runtime's device."""
    data: DeviceData
    """The data it is evaluated on (with --refit: training and validation images merged)."""
    provenance: dict
    """config.json's `weights`: source (checkpoint, retrained or refit), a sentence, seed,
    epochs, and the checkpoint's id or the retrain's validation loss."""


def trial_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a trial number, got {shorten(text)!r}"
                                         ) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a trial number (0 or more), got {value}")
    return value




def _no_complete_trial(name: str, trials: list[FrozenTrial], settings: StudySettings) -> str:
    """Why a study without a complete trial has nothing to export: "yet" only where trials are
    still to come, and a study whose every trial was over its limits is told so; where the
    run's --budget cut trials short, the best of them, which --trial exports."""
    if not trials:
        return f"study {name!r} has no complete trial yet (no trial has run): nothing to export"
    if all(over_limits(t) is not None for t in trials):
        detail = str(over_limits(trials[-1]))
        return (f"study {name!r} has no complete trial: all {len(trials)} of its trials were "
                f"pruned {OVER_LIMITS} (the last: {shorten(detail, 200)}), so nothing can be "
                "exported; loosen the limits or search networks that fit them")
    states = Counter(t.state.name for t in trials)
    shown = ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
    pending = states[TrialState.RUNNING.name] + states[TrialState.WAITING.name]
    cut = best_cut_by_budget(trials, settings.cv_folds)
    instead = "" if cut is None else (
        f"; trial {cut.number} was cut short by the run's --budget after "
        f"{epochs_run(cut, settings.epochs)} of {counted(settings.epochs, 'epoch')} "
        f"(validation loss {recorded_val_loss(cut):.4f}): --trial {cut.number} exports it as "
        "trained that far")
    return (f"study {name!r} has no complete trial{' yet' if pending else ''} ({shown}): "
            + (f"nothing to export by default{instead}" if cut else "nothing to export"))


def _not_complete(trial: FrozenTrial, study: optuna.Study, default: FrozenTrial | None,
                  settings: StudySettings) -> str:
    """Why trial `trial` (not complete) cannot be exported, with its prune or fail reason where
    it has one, and the trial to export instead (`default`, what a plain export takes)."""
    reason = trial.user_attrs.get("prune_reason") or trial.user_attrs.get("fail_reason")
    why = f" ({shorten(str(reason), 200)})" if reason else ""
    if stopped_by_budget(trial) and settings.cv_folds > 1:
        stands = ("cut short by the run's --budget, it did not train all its folds, and a "
                  "cross-validated trial stands on all of them")
    else:
        stands = "only a complete trial (or one the run's --budget cut short) has a result to " \
                 "stand on"
    return (f"trial {trial.number} of study {study.study_name!r} is {trial.state.name}, not "
            f"COMPLETE{why}: {stands}; {_instead(default)}")


def _instead(default: FrozenTrial | None) -> str:
    """What to export instead: the trial an export without --trial takes (the best, or the
    first of repeats of one configuration)."""
    return (f"without --trial the export takes #{default.number}" if default is not None
            else "the study has no complete trial")


def choose_trial(study: optuna.Study, settings: StudySettings, space: dict[str, Param],
                 number: int | None) -> FrozenTrial:
    """Trial `number`, which must be complete or cut short by the run's --budget, or the trial
    the report's held-out test evaluates: the best, or for repeats of one fixed configuration
    the first complete one."""
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    default = reported_trial(StudyView(study, trials, settings, space)) if complete else None
    if number is None:
        if default is None:
            raise UsageError(_no_complete_trial(study.study_name, trials, settings))
        return default
    by_number = {t.number: t for t in trials}
    if not by_number:
        raise UsageError(_no_complete_trial(study.study_name, trials, settings))
    if number not in by_number:
        raise UsageError(f"study {study.study_name!r} has no trial {number} (its trials are "
                         f"0-{max(by_number)}); {_instead(default)}")
    trial = by_number[number]
    if trial.state != TrialState.COMPLETE and not exportable_cut(trial, settings.cv_folds):
        raise UsageError(_not_complete(trial, study, default, settings))
    return trial


def best_epoch(trial: FrozenTrial, epochs: int) -> int:
    """The epoch of the trial's lowest validation loss. Under cross-validation a trial reports
    step (fold - 1) * epochs + epoch: the best step's epoch within its fold."""
    values = {step: v for step, v in trial.intermediate_values.items() if math.isfinite(v)}
    if not values:
        return max(1, min(epochs, trial.user_attrs.get("epochs_run", epochs)))
    step = min(values, key=lambda s: (values[s], s))
    return (step - 1) % epochs + 1


def merged(arrays: Arrays) -> Arrays:
    """The training and validation images as one training split; the validation split stays
    (fit validates every epoch) but selects nothing. The normalization stays the study's."""
    return dataclasses.replace(arrays, train_x=np.concatenate([arrays.train_x, arrays.val_x]),
                               train_y=np.concatenate([arrays.train_y, arrays.val_y]))


def refit(trial: FrozenTrial, settings: StudySettings, space: dict[str, Param],
          arrays: Arrays, runtime: Runtime) -> Obtained:
    """The trial's configuration trained on training + validation images for its best epoch
    count, with its seed; the last epoch's weights (nothing is left to select by).

    The learning-rate schedule is planned over the study's epochs, as the trial's was, and
    training stops after the best epoch: the trial's schedule up to that point."""
    from tuning.objective import build_trial_model
    from tuning.train import fit

    seed = trial.user_attrs.get("seed", 0)
    epochs = best_epoch(trial, settings.epochs)
    data = to_device(merged(arrays), runtime.device)
    model, cfg, generator = build_trial_model(trial.params, space, data, runtime, seed,
                                              settings.network())
    for result in fit(model, data, cfg, runtime, generator, settings.epochs):
        if result.epoch >= epochs:
            break
    n = len(data.train)
    how = (f"refit: the configuration retrained on the training and validation images "
           f"together ({n:,} images) for {counted(epochs, 'epoch')} (the trial's best) with seed "
           f"{seed}, keeping the last epoch's weights")
    return Obtained(model, data, {"source": "refit", "how": how, "seed": seed,
                                  "epochs": epochs, "train_images": n})


def trial_weights(trial: FrozenTrial, settings: StudySettings, space: dict[str, Param],
                  arrays: Arrays, runtime: Runtime, artifacts) -> Obtained:
    """The trial's own network: its checkpoint, else retrained with its seed (as the report
    obtains it, so that the test metrics are the report's)."""
    from tuning.evaluate import trial_model

    data = to_device(arrays, runtime.device)
    # Under cross-validation a trial ran its epochs once per fold: a retrain runs them once.
    # One the run's --budget cut short is retrained as far as it got, on the learning-rate
    # schedule it was on: planned for all the study's epochs.
    epochs = settings.epochs if settings.cv_folds > 1 or stopped_by_budget(trial) else \
        trial.user_attrs.get("epochs_run", settings.epochs)
    stop_after = epochs_run(trial, settings.epochs) if stopped_by_budget(trial) else None
    obtained = trial_model(trial, space, data, runtime, epochs, artifacts, settings.network(),
                           stop_after)
    seed = trial.user_attrs.get("seed", 0)
    if obtained.retrained_val_loss is None:
        fold = trial.user_attrs.get("checkpoint_fold")
        how = (f"the trial's own weights at its best epoch ({obtained.how}"
               + (f", fold {fold} of {settings.cv_folds}" if fold else "") + ")")
        return Obtained(obtained.model, data, {
            "source": "checkpoint", "how": how, "seed": seed,
            "artifact_id": trial.user_attrs.get("checkpoint_artifact"), "epochs": None,
            # Under cross-validation the checkpoint is one fold's network, trained on its fold.
            "train_images": len(data.train) if settings.cv_folds == 1 else None})
    why = obtained.unused_checkpoint or "the trial kept no checkpoint"
    recorded = recorded_val_loss(trial)
    how = (f"{obtained.how}, keeping the best validation epoch ({why}); validation loss "
           f"{obtained.retrained_val_loss:.6f}, the trial recorded {recorded:.6f}")
    return Obtained(obtained.model, data, {
        "source": "retrained", "how": how, "seed": seed,
        "epochs": epochs if stop_after is None else stop_after,
        "retrained_val_loss": obtained.retrained_val_loss, "trial_val_loss": recorded,
        "train_images": len(data.train)})


def _previous_export(out: Path) -> dict | None:
    """config.json of the export in `out`, None where there is none."""
    try:
        config = json.loads((out / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return config if isinstance(config, dict) and config.get("format") == FORMAT else None


def _is_previous_export(out: Path) -> bool:
    return _previous_export(out) is not None


def check_not_another_study(out: Path, previous: dict | None, study: str,
                            replace: bool) -> None:
    """Refuse an --out that holds another study's export (`previous`, its config.json),
    unless `replace`: a shared name (exports/best) given twice by mistake would lose a model
    whose study may be gone. Its own study's export is replaced (a better trial, a refit), as
    the export says."""
    if replace or previous is None or previous.get("study") == study:
        return
    raise UsageError(f"--out {shorten(str(out), 200)!r} holds "
                     f"{replaced(previous, study, -1)}: give another --out, or --replace to "
                     "write over it")


def replaced(previous: dict | None, study: str, trial: int) -> str | None:
    """What an export of `trial` of `study` replaces that a user may not expect: another
    trial's or study's export in the same directory."""
    if previous is None or (previous.get("study"), previous.get("trial")) == (study, trial):
        return None
    if not isinstance(previous.get("trial"), int) or not isinstance(previous.get("study"), str):
        return "an earlier export"
    return f"the export of trial #{previous['trial']} of study {shorten(previous['study'])!r}"


def check_out(out: Path) -> None:
    """Refuse an --out that is a file, or a directory with other content than a previous
    export (whose files this export replaces). Creates nothing."""
    shown = shorten(str(out), 200)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {shown!r} is a file, not a directory")
    if out.is_dir() and any(not f.name.startswith(STAGING_PREFIX) for f in out.iterdir()) \
            and not _is_previous_export(out):
        raise UsageError(f"--out {shown!r} is not empty and holds no earlier export (no "
                         f"{CONFIG_FILE} of tuning export): give a new or empty directory")



def versions() -> dict:
    return {"tuning": __version__, "torch": torch.__version__,
            "torchvision": torchvision_version(), "python": platform.python_version()}


def reproduce_command(args: argparse.Namespace, trial: int) -> str:
    """The `tuning export` command that writes this export again."""
    command = ["tuning", "export", "--study", args.study, "--trial", str(trial),
               "--out", str(args.out)]
    if args.refit:
        command.append("--refit")
    for flag, value in (("--storage", args.storage and shareable_url(args.storage)),
                        ("--artifacts", args.artifacts), ("--data-dir", args.data_dir),
                        ("--dataset", args.dataset)):
        if value is not None:
            command += [flag, str(value)]
    if args.device != "auto":
        command += ["--device", args.device]
    return shlex.join(command)


def resolved_configuration(params: dict, space: dict[str, Param], network: ModelSpec,
                           hflip_allowed: bool) -> dict:
    """Everything the trial trained with, as config.json's `configuration`: the training
    configuration (tuning.train.TrainConfig) and the network's (the family's ArchConfig, or a
    builder's own parameters; a torchvision architecture has none), each value as the trial's
    network was built with it; which of them the search chose (`searched`) or the study fixed
    (`fixed`), the rest being defaults; and which had no effect, and why (`no_effect`)."""
    fixed = fixed_params(space)
    values = {**fixed, **params}
    arch, train = build_configs(values)
    training = dataclasses.asdict(train)
    if network.kind == "cnn":
        architecture = dataclasses.asdict(arch)
    else:
        architecture = {name: value for name, value in sorted(values.items())
                        if name.startswith(MODEL_PREFIX)}
    no_effect = {name: f"not used by {train.optimizer}" for name in training
                 if not applies(name, training)}
    if train.hflip and not hflip_allowed:  # tuning.train flips only where the data allows it
        no_effect["hflip"] = "this data set is not flipped (a flip may change its labels)"
    used = {*training, *architecture}
    return {"training": training, "network": architecture,
            # What neither config holds (a `repeat` index, or family parameters a builder
            # ignores): still part of how the trial was defined.
            "other": {name: value for name, value in sorted(values.items()) if name not in used},
            "searched": sorted(params), "fixed": sorted(set(fixed) - set(params)),
            "no_effect": no_effect}


def build_config(study: optuna.Study, trial: FrozenTrial, settings: StudySettings,
                 space: dict[str, Param], arrays: Arrays, obtained: Obtained, metrics: dict,
                 runtime: Runtime, command: str, reproduced: Reproduction) -> dict:
    """config.json, less the outcome of the portable programs (`files`)."""
    stored = study.user_attrs.get("data", {})
    ci_low, ci_high = metrics["accuracy_ci"]
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "study": study.study_name,
        "trial": trial.number,
        "trial_val_loss": recorded_val_loss(trial),
        # A trial the run's --budget cut short: the epochs it trained, of the study's.
        "cut_by_budget": ({"epochs_run": epochs_run(trial, settings.epochs),
                           "epochs": settings.epochs} if stopped_by_budget(trial) else None),
        "model": settings.network().to_dict(),
        "params": {**fixed_params(space), **trial.params},
        "configuration": resolved_configuration(trial.params, space, settings.network(),
                                                arrays.hflip_allowed),
        "input_shape": list(arrays.input_shape),
        "num_classes": arrays.num_classes,
        "class_names": list(arrays.class_names),
        "normalization": {"mean": list(arrays.mean), "std": list(arrays.std),
                          "input": "float images in [0, 1], (N, C, H, W)",
                          "image_files": IMAGE_FILES},
        "weights": obtained.provenance,
        "test": {"accuracy": metrics["accuracy"], "accuracy_ci": [ci_low, ci_high],
                 "loss": metrics["test_loss"], "n": len(arrays.test_y),
                 "macro_f1": metrics["macro_f1"], "evaluated_on": runtime.name},
        # Where the images were read from for this export: the study's own record names
        # where they were at the search, which they may have left since (--dataset).
        "data": {"name": stored.get("name", arrays.name), "sha256": stored.get("sha256"),
                 "source": arrays.source,
                 "n_train": len(arrays.train_y), "n_val": len(arrays.val_y),
                 "n_test": len(arrays.test_y)},
        "settings": {"dataset": settings.dataset, "epochs": settings.epochs,
                     "cv_folds": settings.cv_folds, "seed": settings.seed},
        "versions": versions(),
        "command": command,
        "reproduce": {"file": REPRODUCE_FILE, "commands": list(reproduced.commands),
                      "same_seed": reproduced.exact, "cpu_threads": reproduced.cpu_threads,
                      "device": reproduced.device},
    }



def test_sample(arrays: Arrays, count: int = 16) -> torch.Tensor:
    """The first `count` test images as the exported model takes them (float (N, C, H, W) in
    [0, 1]): real images among the inputs the portable programs are checked on."""
    images = np.ascontiguousarray(arrays.test_x[:count].transpose(0, 3, 1, 2))
    return torch.from_numpy(images).float().div(255.0)


def export(study: optuna.Study, trial: FrozenTrial, settings: StudySettings,
           space: dict[str, Param], arrays: Arrays, out: Path, runtime: Runtime, artifacts,
           refit_weights: bool, command: str, reproduced: Reproduction) -> dict:
    """Write the export of `trial` into `out` (checked and prepared); returns config.json."""
    from tuning.evaluate import held_out_metrics

    if refit_weights:
        obtained = refit(trial, settings, space, arrays, runtime)
    else:
        obtained = trial_weights(trial, settings, space, arrays, runtime, artifacts)
    metrics = held_out_metrics(obtained.model, obtained.data, runtime)
    config = build_config(study, trial, settings, space, arrays, obtained, metrics, runtime,
                          command, reproduced)
    # Written into a hidden folder inside `out`, then moved in, config.json last: an export
    # cut short (a crash, a full disk, a kill) leaves the earlier one whole, or nothing that
    # loads, never a mix of two or a half-written one that `tuning predict` would take.
    for left in out.glob(f"{STAGING_PREFIX}*"):  # by an export killed before it could clean
        shutil.rmtree(left, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))
    try:
        (staging / REPRODUCE_FILE).write_text(reproduced.text, encoding="utf-8")
        _write_export(staging, out, config, obtained.model, arrays)
        # An earlier export's files go only now: a program that this export could not write
        # must not be left over from another trial.
        for name in EXPORT_FILES:
            (out / name).unlink(missing_ok=True)
        for file in sorted(staging.iterdir(), key=lambda f: f.name == CONFIG_FILE):
            os.replace(file, out / file.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return config


STAGING_PREFIX = ".export-in-progress-"


def _write_export(staging: Path, out: Path, config: dict, model: torch.nn.Module,
                  arrays: Arrays) -> None:
    """The export's files, written into `staging`; `out`, where they will be, for the card."""
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    # Serialized in memory first: on a full disk torch.save fails in its zip writer with a
    # RuntimeError that does not say why, where a plain write raises an OSError that does.
    buffer = io.BytesIO()
    torch.save(state, buffer)
    (staging / WEIGHTS_FILE).write_bytes(buffer.getbuffer())
    config["files"] = {name: "not written yet" for name in PROGRAM_FILES}
    (staging / CONFIG_FILE).write_text(json.dumps(config, indent=1), encoding="utf-8")
    # The programs are made from the export as load_model reads it back: what they run is
    # what the files hold.
    loaded = load_model(staging)
    classifier = Classifier(loaded.network, loaded.config["normalization"]["mean"],
                            loaded.config["normalization"]["std"]).eval()
    config["files"] = write_programs(classifier, arrays.input_shape, staging, test_sample(arrays))
    config["program_checks"] = [*CHECK_INPUTS, "test images"]
    # What load_model checks a network rebuilt elsewhere against: weights that fit by their
    # names and shapes may sit in a network whose builder has changed since.
    # A network that overflows on these images has nothing to be checked against.
    with torch.no_grad():
        logits = loaded(output_check_images(arrays.input_shape))
    if logits.isfinite().all():
        config["output_check"] = logits.tolist()
    (staging / CARD_FILE).write_text(model_card(config, out), encoding="utf-8")
    (staging / CONFIG_FILE).write_text(json.dumps(config, indent=1), encoding="utf-8")


def build_parser(prog: str = "python -m tuning.export") -> OneLineParser:
    parser = OneLineParser(prog=prog, description="Export the trial a study's report tests "
                                                  "(or trial N): weights, config, portable "
                                                  "programs, card.")
    add_storage_arguments(parser, "study name", required=True)
    parser.add_argument("--trial", type=trial_number,
                        help="number of the (complete) trial to export (default: the one the "
                             "report tests: the best, or the first of repeats of one fixed "
                             "configuration)")
    parser.add_argument("--out", type=Path, help="output directory (default exports/<study>)")
    parser.add_argument("--replace", action="store_true",
                        help="write over another study's export in --out (refused without it; "
                             "an export of the same study is replaced either way)")
    parser.add_argument("--refit", action="store_true",
                        help="retrain the configuration on training + validation images for "
                             "the trial's best epoch count, then test it")
    parser.add_argument("--artifacts", type=Path,
                        help="artifact directory with checkpoints (default $TUNING_ARTIFACTS, "
                             "else ./artifacts)")
    parser.add_argument("--data-dir", type=Path,
                        help="directory with the study's IDX files (default ./data); only read")
    parser.add_argument("--dataset",
                        help="where the study's image folder or .npz file is now, when not "
                             "where the study recorded it")
    parser.add_argument("--device", default="auto",
                        help="device for retraining and the test evaluation (auto, cpu, cuda)")
    add_verbosity_arguments(parser)
    return parser


def main(argv: list[str] | None = None, prog: str = "python -m tuning.export") -> int:
    args = build_parser(prog).parse_args(argv)
    configure_logging(args.quiet, args.verbose)
    args.out = args.out if args.out is not None else Path("exports") / args.study
    url = storage_url(args.storage, args.study)
    try:
        resolve_url(url)
        check_data_dir(args.data_dir)
        check_out(args.out)
        previous = _previous_export(args.out)
        check_not_another_study(args.out, previous, args.study, args.replace)
        study = load_existing(args.study, url, heartbeat=False)
        settings, space = stored_definition(study)
        trial = choose_trial(study, settings, space, args.trial)
        settings = with_images_at(settings, args.dataset)
        check_importable_here(settings.network())
        check_weights_match(study, settings)
        artifacts = existing_artifact_store(args.artifacts)
        runtime = resolve_device(args.device)
        arrays = study_arrays(study, settings, args.data_dir, way_round=None)
        reproduced = reproduction(
            args.study, trial, settings, {**fixed_params(space), **trial.params},
            stored_data_config(study, settings.dataset), args.out / REPRODUCE_FILE,
            args.data_dir, args.refit)
        created = make_out_directory(args.out)
        try:
            config = export(study, trial, settings, space, arrays, args.out, runtime,
                            artifacts, args.refit, reproduce_command(args, trial.number),
                            reproduced)
        except BaseException as exc:
            # A failed export changes nothing stored: the folders it created go again while
            # empty (a missing weights file, a builder that does not import, a Ctrl-C before
            # anything was written); an --out that was there stays.
            remove_empty(created)
            if isinstance(exc, OSError):
                raise UsageError(f"the export into {shorten(str(args.out), 200)!r} failed: "
                                 f"{exc.strerror or exc}") from None
            raise
    except (UsageError, ModelBuildError) as exc:
        return fail(exc)
    files = config["files"]
    written = [WEIGHTS_FILE, CONFIG_FILE, *(n for n, what in files.items() if what == "written"),
               CARD_FILE, REPRODUCE_FILE]
    test = config["test"]
    low, high = test["accuracy_ci"]
    print(f"exported trial #{trial.number} of study {args.study!r} to {args.out}: "
          f"{', '.join(written)}")
    cut = config["cut_by_budget"]
    if cut:
        print(f"the run's --budget stopped trial #{trial.number} after {cut['epochs_run']} of "
              f"its {counted(cut['epochs'], 'epoch')}: it is exported as trained that far")
    other = replaced(previous, args.study, trial.number)
    if other is not None:
        print(f"it replaces {other} that was there")
    print(f"weights: {config['weights']['how']}")
    print(f"test accuracy {test['accuracy']:.4f} (95% CI {low:.4f}-{high:.4f}) on "
          f"{test['n']:,} held-out images, loss {loss_text(test['loss'])}")
    for name, what in files.items():
        if what != "written":
            print(f"{name} {what}")
    return 0

