"""The report's held-out test: the study's best configuration, once, on the test set, beside the
tutorial's configuration (the baseline, studies/seed.toml) trained for the study's epochs.

The baseline's result depends on nothing the search did, so it is kept in the study (user
attribute BASELINE_ATTR) keyed by everything that does determine it (`baseline_key`), and a
later report reuses it instead of training the baseline again.

Each accuracy carries its 95% Wilson interval, and McNemar's test on the images the two get
wrong says whether the best trial's difference from the tutorial is beyond noise. A best trial
without a checkpoint is retrained, and its validation loss set beside the trial's own.

`tuning export` reads the study's data with `study_arrays` and exports `reported_trial` by
default, so that its test accuracy is this section's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shlex
from datetime import datetime, timezone
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial

from tuning.data import DATA_KEYS, Arrays, load_arrays
from tuning.errors import UsageError, counted, shorten
from tuning.networks import ModelSpec, check_importable_here
from tuning.objective import best_cut_by_budget, epochs_run, recorded_val_loss
from tuning.report_figures import confusion_heatmap
from tuning.report_render import Section, Table
from tuning.report_stats import ALPHA, StudyView, p_text
from tuning.study import check_data_matches
from tuning.study_file import StudyFile, StudySettings, load_study_file

BASELINE_ATTR = "baseline_test"
"""Study user attribute holding the baseline's test results: {key digest: entry}."""
BASELINE_ENTRIES_KEPT = 4
"""Results kept (the newest): one per device type or code version a study is reported on."""
# The modules whose code decides what training the baseline gives: network, batches, training
# loop, evaluation, parameter resolution, device and precision.
TRAINING_MODULES = ("data", "device", "evaluate", "model", "objective", "space", "train")
RETRAIN_TOLERANCE = 1e-4
"""Relative difference between a CPU retrain's validation loss and the trial's beyond which the
retrain is not the trial's network (rounding alone stays orders of magnitude below)."""
CUDA_NONDETERMINISM = "cuDNN autotuning, TF32, bf16 autocast"
SKIP_TEST = "skip the held-out test with --no-test"
"""The report's way round data it cannot read or that are not the study's."""

log = logging.getLogger(__name__)


def study_arrays(study: optuna.Study, settings: StudySettings, data_dir: Path | None,
                 way_round: str | None = SKIP_TEST) -> Arrays:
    """The study's data, read from `data_dir` (default ./data; for a built-in data set not
    there and no `data_dir`, from where the study's search read it) and checked to be the
    study's, with the normalization its trials trained with.

    Only read: nothing is downloaded or created, and data not found or not the study's are a
    UsageError, never a stand-in. `way_round` ends both messages: the report's is to skip the
    test; None for a command that needs the data (tuning export).
    """
    from tuning.sources import SOURCES
    from tuning.study import point_at_data, stored_data_config

    stored = study.user_attrs.get("data", {})
    # A registered data set by the name it was loaded as (mnist may have been its sample); the
    # user's own files by their path.
    name = stored.get("name", settings.dataset)
    source = stored.get("source")

    def load(directory: Path | None) -> Arrays:
        return load_arrays(name if name in SOURCES else settings.dataset, directory,
                           settings.seed, config=stored_data_config(study, settings.dataset),
                           download=False)

    try:
        arrays = load(data_dir)
    except UsageError as exc:
        # A built-in data set not where looked, without --data-dir: where the search read it
        # from, if it is still there (the fingerprint below says whether it is the same).
        if not (data_dir is None and name in SOURCES and source and Path(source).is_dir()):
            raise _not_found(exc, settings.dataset, source, data_dir, way_round) from None
        try:
            arrays = load(Path(source))
        except UsageError as there:  # its own error: the hint would name that directory again
            raise _not_found(there, settings.dataset, None, Path(source), way_round) from None
        log.info("%s read from %s, where the study's search read it", name, source)
    remedy = point_at_data(study)
    check_data_matches(study, arrays.fingerprint(),
                       remedy=f"{remedy}, or {way_round}" if way_round else remedy)
    return arrays.normalized_as(stored)


def _not_found(exc: UsageError, dataset: str, source: str | None, data_dir: Path | None,
               way_round: str | None) -> UsageError:
    """The error for the study's data not found, with how to give them, or to do without."""
    remedy = _where_the_data_were(dataset, source, data_dir)
    if way_round:
        remedy = f"{remedy}, or {way_round}" if remedy else f"or {way_round}"
    return UsageError(f"{exc}; {remedy}" if remedy else str(exc))


def _where_the_data_were(dataset: str, source: str | None, data_dir: Path | None) -> str:
    """How to give a study the data that were not found or not usable where looked for."""
    from tuning.sources import is_path

    if is_path(dataset):
        if data_dir is not None:  # the images' own path is read, and --data-dir is the error
            return ""
        there = Path(dataset).expanduser().exists()
        return ("point --dataset at the images it was run on" if there
                else "give the images' place with --dataset")
    if source and Path(source).is_dir() and (data_dir is None
                                              or Path(source) != data_dir.absolute()):
        return f"it read them from {source}: give --data-dir {shlex.quote(source)}"
    return ""


def reported_trial(view: StudyView) -> FrozenTrial:
    """The trial that stands for the study: the one the held-out test evaluates and `tuning
    export` exports by default, so that the two give the same test accuracy. The study must
    have a complete trial.

    The best trial; but with every parameter fixed the trials differ only by seed, and the best
    of them would be flattered by its seed: the first complete repeat stands for the
    configuration."""
    if view.fixed_configuration:
        return min(view.completed, key=lambda t: t.number)
    return view.study.best_trial


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def code_identity() -> str:
    """A hash of the training code's source and the torch version it runs on."""
    import importlib

    import torch

    digest = hashlib.sha256(torch.__version__.encode())
    for name in TRAINING_MODULES:
        source = importlib.import_module(f"tuning.{name}").__file__
        assert source is not None  # a module of a regular package always has a file
        digest.update(Path(source).read_bytes())
    return digest.hexdigest()[:16]


def baseline_key(seed_study: StudyFile, settings: StudySettings, fingerprint: dict,
                 runtime) -> dict:
    """What the baseline's test result is a function of. Its file's own settings are not
    used: it trains with the study's epochs and seed."""
    return {"baseline_space": _digest(seed_study.space_dict())[:16],
            "epochs": settings.epochs, "seed": settings.seed,
            "data": {k: fingerprint.get(k) for k in DATA_KEYS},
            "device_type": runtime.device.type,
            "autocast": str(runtime.autocast_dtype).removeprefix("torch."),
            "code": code_identity()}


def _usable(entry: dict, key: dict) -> bool:
    """Whether a kept entry is the baseline's result for `key`, with everything the report
    needs: an entry from before the misclassified images were kept (no `wrong`) cannot be
    paired with the best trial for McNemar's test, so it counts as missing."""
    metrics = entry.get("metrics")
    return entry.get("key") == key and isinstance(metrics, dict) and "wrong" in metrics


def baseline_metrics(view: StudyView, seed_file: Path, data, runtime) -> tuple[dict, str]:
    """The baseline's held-out metrics, reused from the study when its key matches, else
    trained, evaluated and kept in the study. Returns (metrics, a sentence saying which).

    The data's fingerprint is the study's own: study_arrays checked the data against it.
    """
    from tuning.evaluate import held_out_metrics, retrain

    seed_study = load_study_file(seed_file)
    key = baseline_key(seed_study, view.settings, view.study.user_attrs.get("data", {}),
                       runtime)
    digest = _digest(key)[:16]
    cached = view.study.user_attrs.get(BASELINE_ATTR)
    cached = {d: e for d, e in cached.items() if isinstance(e, dict)} \
        if isinstance(cached, dict) else {}
    entry = cached.get(digest)
    if entry is not None and _usable(entry, key):
        return entry["metrics"], (
            f"The tutorial's result was reused from a report of {entry['computed_at']} (kept in "
            "the study, which retrains it only when the tutorial's configuration, the study's "
            "epochs or seed, the data, the device type or the training code change).")
    model = retrain({}, seed_study.space, data, runtime, view.settings.seed,
                    view.settings.epochs)
    metrics = held_out_metrics(model, data, runtime)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    cached[digest] = {"key": key, "computed_at": now, "seed_file": seed_file.name,
                      "metrics": metrics}
    newest = sorted(cached.items(), key=lambda kv: str(kv[1].get("computed_at")))
    try:
        view.study.set_user_attr(BASELINE_ATTR, dict(newest[-BASELINE_ENTRIES_KEPT:]))
    except Exception as exc:  # noqa: BLE001 - read-only storage: the report goes on without
        log.warning("the tutorial's test result could not be kept in the study: %s", exc)
        return metrics, ("The tutorial was trained for this report; its result could not be "
                         "kept in the study (the storage cannot be written), so the next "
                         "report trains it again.")
    return metrics, (f"The tutorial was trained for this report ({now}); its result is kept "
                     "in the study for later reports.")


def class_labels(arrays: Arrays, num_classes: int) -> list[str]:
    """Each class's name, or its index where the data set names fewer classes."""
    names = arrays.class_names
    return [names[i] if i < len(names) else str(i) for i in range(num_classes)]


def comparison_sentence(test: dict, n_test: int, subject: str = "the best trial") -> str:
    """McNemar's test of the reported trial (`subject`) against the tutorial, in words."""
    b, c, p = test["b"], test["c"], test["p_value"]
    if b + c == 0:
        return (f"{subject.capitalize()} and the tutorial are right and wrong on exactly the "
                f"same test images: nothing tells them apart on these {n_test:,} images.")
    counts = (f"{subject.capitalize()} is right on {c} images the tutorial gets wrong and wrong "
              f"on {b} it gets right (McNemar exact {p_text(p)})")
    if p >= ALPHA:
        return f"{counts}: not distinguishable from noise on these {n_test:,} images."
    return f"{counts}: the difference is beyond noise" + (
        ", in the tutorial's favour." if b > c else ".")


def retrain_paragraphs(recorded: float, retrained: float, device_type: str,
                       trial_device: str | None, subject: str = "the best trial") -> list[str]:
    """The retrained trial's validation loss beside the trial's own, whether they should
    agree, and a Warning where they should and do not.

    Only a CPU run retrained on the CPU repeats bit for bit; `trial_device` is the trial's
    "device" attribute (None: not recorded, taken to be this device type).
    """
    relative = abs(retrained - recorded) / max(abs(recorded), 1e-12)
    out = [f"Retrained, {subject}'s network has a validation loss of {retrained:.6f}; "
           f"the trial recorded {recorded:.6f} (relative difference {relative:.1e})."]
    if device_type == "cuda":
        out[0] += (f" On CUDA ({CUDA_NONDETERMINISM}) a retrain differs slightly from the "
                   "original run.")
        return out
    if trial_device is not None and not trial_device.startswith("cpu"):
        out[0] += (f" The trial ran on {trial_device} ({CUDA_NONDETERMINISM}), this retrain on "
                   "the CPU: they differ slightly.")
        return out
    out[0] += " Retraining on the CPU is deterministic: the two should agree to rounding."
    if relative > RETRAIN_TOLERANCE:
        out.append(f"Warning: the retrain does not reproduce the trial (validation loss "
                   f"{retrained:.6f}, not {recorded:.6f}): the training code, the torch version "
                   "or the number of CPU threads may have changed since the trial ran, so the "
                   "test results below are of a network like the trial's, not the trial's own.")
    return out


def metrics_table(rows: list[tuple[str, dict]]) -> Table:
    table = Table(["configuration", "accuracy", "accuracy 95% CI", "macro precision",
                   "macro recall", "macro F1"],
                  fixed_columns=("accuracy", "macro precision", "macro recall", "macro F1"))
    for label, m in rows:
        low, high = m["accuracy_ci"]
        table.rows.append([label, m["accuracy"], f"{low:.4f} .. {high:.4f}",
                           m["macro_precision"], m["macro_recall"], m["macro_f1"]])
    return table


def per_class_table(best: dict, tutorial: dict, names: list[str], named: str = "best") -> Table:
    """Per class, the reported trial's (`named`: how its columns call it) and the tutorial's."""
    scores = (f"precision ({named})", f"recall ({named})", f"F1 ({named})", "F1 (tutorial)")
    table = Table(["class", *scores, "support"], fixed_columns=scores)
    for ours, theirs in zip(best["per_class"], tutorial["per_class"], strict=True):
        # A score with nothing to count is None (tuning.evaluate), shown as "-".
        table.rows.append([names[ours["class"]], ours["precision"], ours["recall"], ours["f1"],
                           theirs["f1"], ours["support"]])
    if any(c["precision"] is None for c in (*best["per_class"], *tutorial["per_class"])):
        table.note = ("-: a score with nothing to count (the precision of a class never "
                      "predicted, the recall of a class without test images). The macro "
                      "averages count such a precision as 0, as scikit-learn's do.")
    return table


def confusion_table(cm: list[list[int]], names: list[str]) -> Table:
    return Table(["true \\ predicted", *names],
                 [[name, *row] for name, row in zip(names, cm, strict=True)])


def _cut_instead(view: StudyView) -> str:
    """Where no trial completed, the trial the run's --budget cut short that `tuning export
    --trial` can export and test instead ("" where there is none)."""
    cut = best_cut_by_budget(view.trials, view.settings.cv_folds)
    if cut is None:
        return ""
    return (f" The run's --budget cut trial #{cut.number} short after "
            f"{epochs_run(cut, view.settings.epochs)} of "
            f"{counted(view.settings.epochs, 'epoch')} (the lowest validation loss of such "
            f"trials, {recorded_val_loss(cut):.4f}): `tuning export --study "
            f"{shlex.quote(view.study.study_name)} --trial {cut.number}` exports it as trained "
            "that far and tests it.")


def check_network_importable(network: ModelSpec) -> None:
    """check_importable_here, its line offering the way round: the rest of the report does
    not need the network. Before the test's data are read."""
    try:
        check_importable_here(network)
    except UsageError as exc:
        raise UsageError(f"{exc}; or {SKIP_TEST}") from None


def held_out_test(view: StudyView, arrays: Arrays | None, device: str, artifacts,
                  seed_file: Path) -> Section:
    """The best configuration, once, on the test set; beside it the tutorial's, with the
    accuracies' confidence intervals and McNemar's test of the difference."""
    from tuning.data import to_device
    from tuning.device import resolve_device
    from tuning.evaluate import held_out_metrics, mcnemar, trial_model

    s = Section("Held-out test")
    if not view.completed or arrays is None:
        s.paragraphs.append("No complete trial: nothing to evaluate." + _cut_instead(view))
        return s
    network = view.settings.network()
    runtime = resolve_device(device)
    data = to_device(arrays, runtime.device)
    best = reported_trial(view)
    cross_validated = view.settings.cv_folds > 1
    # Under cross-validation a trial ran its epochs once per fold: a retrain on the training
    # split runs them once.
    epochs_run = view.settings.epochs if cross_validated else \
        best.user_attrs.get("epochs_run", view.settings.epochs)
    obtained = trial_model(best, view.space, data, runtime, epochs_run, artifacts, network)
    best_metrics = held_out_metrics(obtained.model, data, runtime)
    seed_metrics, seed_how = baseline_metrics(view, seed_file, data, runtime)
    test = mcnemar(best_metrics["wrong"], seed_metrics["wrong"])
    n_test = len(arrays.test_y)
    epochs = view.settings.epochs
    chosen = (f"Trial #{best.number}, the first complete repeat of the study's one "
              "configuration (not the best repeat, which its seed would flatter)"
              if view.fixed_configuration else f"Best trial #{best.number}")
    # What the rest of the section calls the trial: a first repeat is not the best one.
    if view.fixed_configuration:
        subject, ours = "the first repeat", "first repeat"
    else:
        subject, ours = "the best trial", "best"
    label = f"{subject.removeprefix('the ')} #{best.number}"
    s.paragraphs.append(
        f"{chosen} ({obtained.how}) and the tutorial's configuration "
        f"({seed_file.name}, trained for the study's {counted(epochs, 'epoch')}"
        " with seed "
        f"{view.settings.seed}), each evaluated once on the {n_test:,} test images, "
        "which played no part in the search.")
    if obtained.unused_checkpoint:
        # As `tuning export` says it: a retrain where the trial kept a checkpoint (artifacts
        # moved, a model builder changed) would otherwise go unexplained.
        s.paragraphs.append(f"{subject.capitalize()} was retrained because "
                            f"{obtained.unused_checkpoint}.")
    retrain_check = None
    if obtained.retrained_val_loss is None and cross_validated:
        folds = view.settings.cv_folds
        fold = best.user_attrs.get("checkpoint_fold")
        which = f"fold {fold} of {folds}" if fold else f"one of its {folds} folds"
        s.paragraphs.append(
            f"{subject.capitalize()}'s network is its own weights from {which}, the fold with "
            "the lowest validation loss, saved at that fold's best epoch: one of the "
            f"{folds} networks the trial trained (the trial's value is the mean over all "
            f"{folds} folds, not this network's loss).")
    elif obtained.retrained_val_loss is None:
        s.paragraphs.append(f"{subject.capitalize()}'s network is its own weights, saved by "
                            "the trial at its best epoch: the network the trial validated.")
    elif cross_validated:
        s.paragraphs.append(
            f"{subject.capitalize()} kept no network, so its configuration was retrained on the "
            f"training split for {counted(epochs_run, 'epoch')} "
            "(validation loss "
            f"{obtained.retrained_val_loss:.6f}); the trial's value, {best.value:.6f}, is the "
            f"mean over its {view.settings.cv_folds} folds, so the two are not expected to "
            "agree.")
    else:
        assert best.value is not None  # the best trial is complete
        s.paragraphs += retrain_paragraphs(best.value, obtained.retrained_val_loss,
                                           runtime.device.type, best.user_attrs.get("device"),
                                           subject)
        retrain_check = {"recorded_val_loss": best.value,
                         "retrained_val_loss": obtained.retrained_val_loss}
    s.paragraphs.append(seed_how)
    s.paragraphs.append(comparison_sentence(test, n_test, subject))
    names = class_labels(arrays, data.num_classes)
    s.tables.append(("Test metrics", metrics_table([
        (label, best_metrics), (f"tutorial ({seed_file.name})", seed_metrics)])))
    s.tables.append(("Per class", per_class_table(best_metrics, seed_metrics, names, ours)))
    untested = [names[c["class"]] for c in best_metrics["per_class"] if c["support"] == 0]
    if untested:
        s.paragraphs.append(
            f"{len(untested)} of the {len(names)} classes have no test image "
            f"({shorten(', '.join(untested), 200)}): their rows show support 0 and no "
            "recall (nor precision or F1 where the network never predicted them), and the "
            "macro averages leave each of them out unless the network predicted it, as "
            "scikit-learn's do.")
    for shown, metrics in ((label, best_metrics), ("tutorial", seed_metrics)):
        cm = metrics["confusion_matrix"]
        s.tables.append((f"Confusion matrix, {shown} (rows: true class, columns: predicted)",
                         confusion_table(cm, names)))
        s.figures.append(confusion_heatmap(cm, names, f"Confusion matrix, {shown}"))
    # per_class and the confusion matrix count classes by index: class_names names them.
    s.metrics = {"best_trial": best.number, "best": best_metrics,  # type: ignore[attr-defined]
                 "class_names": list(names),
                 "tutorial": seed_metrics, "best_model_source": obtained.how,
                 "mcnemar": test, "retrain_check": retrain_check}
    return s
