"""The report's held-out test: the study's best configuration, once, on the test set, beside the
tutorial's configuration (the baseline, studies/seed.toml) trained for the study's epochs.

The baseline's result depends on nothing the search did, so it is kept in the study (user
attribute BASELINE_ATTR) keyed by everything that does determine it (`baseline_key`), and a
later report reuses it instead of training the baseline again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import datetime, timezone
from pathlib import Path

import optuna

from tuning.data import DATA_KEYS, Arrays, load_arrays
from tuning.errors import UsageError
from tuning.report_render import Section, Table
from tuning.report_stats import StudyView
from tuning.space import StudyFile, StudySettings, load_study_file
from tuning.study import check_data_matches

BASELINE_ATTR = "baseline_test"
"""Study user attribute holding the baseline's test results: {key digest: entry}."""
BASELINE_ENTRIES_KEPT = 4
"""Results kept (the newest): one per device type or code version a study is reported on."""
# The modules whose code decides what training the baseline gives: network, batches, training
# loop, evaluation, parameter resolution, device and precision.
TRAINING_MODULES = ("data", "device", "evaluate", "model", "objective", "space", "train")

log = logging.getLogger(__name__)


def study_arrays(study: optuna.Study, settings: StudySettings,
                 data_dir: Path | None) -> Arrays:
    """The study's data, read from `data_dir` (default ./data) and checked to be the study's.

    A report only reads: nothing is downloaded or created, and data not found or not the
    study's are a UsageError (with --no-test as the way round), never a stand-in.
    """
    stored = study.user_attrs.get("data", {})
    try:
        arrays = load_arrays(stored.get("name", settings.dataset), data_dir, settings.seed,
                             download=False)
    except UsageError as exc:
        raise UsageError(f"{exc}; or skip the held-out test with --no-test") from None
    check_data_matches(study, arrays.fingerprint(),
                       remedy="point --data-dir at the data it was run on, or skip the held-out "
                              "test with --no-test")
    return arrays


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
    if entry is not None and entry.get("key") == key and "metrics" in entry:
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


def held_out_test(view: StudyView, arrays: Arrays | None, device: str, artifacts,
                  seed_file: Path) -> Section:
    """The best configuration, once, on the test set; beside it the tutorial's."""
    from tuning.data import to_device
    from tuning.device import resolve_device
    from tuning.evaluate import held_out_metrics, model_for_trial

    s = Section("Held-out test")
    if not view.completed or arrays is None:
        s.paragraphs.append("No complete trial: nothing to evaluate.")
        return s
    runtime = resolve_device(device)
    data = to_device(arrays, runtime.device)
    best = view.study.best_trial
    model, how = model_for_trial(best, view.space, data, runtime,
                                 best.user_attrs.get("epochs_run", view.settings.epochs),
                                 artifacts)
    best_metrics = held_out_metrics(model, data, runtime)
    seed_metrics, seed_how = baseline_metrics(view, seed_file, data, runtime)
    s.paragraphs.append(
        f"Best trial #{best.number} ({how}) and the tutorial's configuration "
        f"({seed_file.name}, trained for the study's {view.settings.epochs} epochs with seed "
        f"{view.settings.seed}), each evaluated once on the {len(arrays.test_y)} test images, "
        "which played no part in the search.")
    s.paragraphs.append(seed_how)
    s.tables.append(("Test metrics", Table(
        ["configuration", "accuracy", "macro precision", "macro recall", "macro F1"],
        [[f"best trial #{best.number}", best_metrics["accuracy"],
          best_metrics["macro_precision"], best_metrics["macro_recall"],
          best_metrics["macro_f1"]],
         ["tutorial (seed.toml)", seed_metrics["accuracy"], seed_metrics["macro_precision"],
          seed_metrics["macro_recall"], seed_metrics["macro_f1"]]])))
    per_class = Table(["class", "precision (best)", "recall (best)", "F1 (best)",
                       "F1 (tutorial)", "support"])
    for ours, theirs in zip(best_metrics["per_class"], seed_metrics["per_class"], strict=True):
        per_class.rows.append([ours["class"], ours["precision"], ours["recall"], ours["f1"],
                               theirs["f1"], ours["support"]])
    s.tables.append(("Per class", per_class))
    for label, metrics in (("best trial", best_metrics), ("tutorial", seed_metrics)):
        cm = metrics["confusion_matrix"]
        s.tables.append((f"Confusion matrix, {label} (rows: true class, columns: predicted)",
                         Table(["true \\ pred", *map(str, range(len(cm)))],
                               [[i, *row] for i, row in enumerate(cm)])))
    s.metrics = {"best_trial": best.number, "best": best_metrics,  # type: ignore[attr-defined]
                 "tutorial": seed_metrics, "best_model_source": how}
    return s
