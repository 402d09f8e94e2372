"""The held-out test: a configuration evaluated once on the test set, with the metrics a reader
needs to trust it (accuracy with its confidence interval, macro precision/recall/F1, per-class
table, confusion matrix, the images it gets wrong), and McNemar's test of two configurations on
the same images."""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import torch

from tuning.data import DeviceData
from tuning.device import Runtime
from tuning.errors import counted, shorten
from tuning.networks import FAMILY_MODEL, ModelSpec
from tuning.objective import build_trial_model
from tuning.space import Param
from tuning.train import evaluate, fit

log = logging.getLogger("tuning")

Z95 = 1.959963984540054
"""The standard normal's 97.5% quantile: two-sided 95% intervals."""


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (95% by default).

    Unlike p +- z*sqrt(p(1-p)/n) it stays inside [0, 1] and does not collapse to a point at
    an accuracy of 100%, where held-out results of small test sets often sit.
    """
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar(wrong_first: Iterable[int], wrong_second: Iterable[int]) -> dict:
    """McNemar's exact test of two classifiers on the same examples, from the indices of the
    examples each gets wrong.

    b: first wrong and second right; c: first right and second wrong. Examples both get right
    or both get wrong say nothing about which is better; under "equally good" b is
    Binomial(b + c, 1/2), and p_value is the two-sided exact binomial test of that.
    """
    from scipy.stats import binomtest

    first, second = set(wrong_first), set(wrong_second)
    b, c = len(first - second), len(second - first)
    p_value = float(binomtest(b, b + c, 0.5).pvalue) if b + c else 1.0
    return {"b": b, "c": c, "p_value": p_value}


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def classification_metrics(cm: np.ndarray) -> dict:
    """Accuracy with its 95% Wilson interval (`accuracy_ci`: [low, high]), macro
    precision/recall/F1 and a per-class table from a confusion matrix."""
    tp = np.diag(cm).astype(float)
    predicted = cm.sum(axis=0).astype(float)
    support = cm.sum(axis=1).astype(float)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    correct, n = int(tp.sum()), int(cm.sum())
    # As scikit-learn averages: over the classes in the test labels or the predictions. A
    # class with neither has no precision or recall to average; counted as 0, it would drag
    # the macro scores down for a class the test split happens to lack.
    averaged = (support > 0) | (predicted > 0)
    return {
        "accuracy": correct / n,
        "accuracy_ci": list(wilson_interval(correct, n)),
        "macro_precision": float(precision[averaged].mean()),
        "macro_recall": float(recall[averaged].mean()),
        "macro_f1": float(f1[averaged].mean()),
        "macro_classes": int(averaged.sum()),
        # Per class, a score with nothing to count is None, not 0: precision without a
        # prediction of the class, recall without a test image of it, F1 with neither (the
        # classes the macro averages leave out).
        "per_class": [
            {"class": i, "precision": float(precision[i]) if predicted[i] else None,
             "recall": float(recall[i]) if support[i] else None,
             "f1": float(f1[i]) if averaged[i] else None, "support": int(support[i])}
            for i in range(len(tp))
        ],
        "confusion_matrix": cm.tolist(),
    }


def held_out_metrics(model: torch.nn.Module, data: DeviceData, runtime: Runtime) -> dict:
    """classification_metrics on the test set, its loss, and the indices of the test images
    the model gets wrong (`wrong`): what McNemar's test pairs between two configurations."""
    result = evaluate(model, data.test, runtime, return_predictions=True)
    y_true, y_pred = data.test.y.cpu().numpy(), result["predictions"].numpy()
    cm = confusion_matrix(y_true, y_pred, data.num_classes)
    return {**classification_metrics(cm), "test_loss": result["loss"],
            "wrong": np.flatnonzero(y_true != y_pred).tolist()}


def retrain(params: dict, space: dict[str, Param], data: DeviceData, runtime: Runtime,
            seed: int, epochs: int, network: ModelSpec = FAMILY_MODEL,
            stop_after: int | None = None) -> torch.nn.Module:
    """Train a configuration as its trial did (same seed), keeping the best-validation epoch.
    `stop_after`: the epoch its trial was stopped after, of the `epochs` its learning-rate
    schedule was planned for (a trial cut short by the run's --budget)."""
    model, cfg, generator = build_trial_model(params, space, data, runtime, seed, network)
    best_loss, best_state = float("inf"), None
    for result in fit(model, data, cfg, runtime, generator, epochs):
        if result.val["loss"] < best_loss:
            best_loss = result.val["loss"]
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if stop_after is not None and result.epoch >= stop_after:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    return model


@dataclass(frozen=True)
class TrialModel:
    """A trial's network and where it came from."""

    model: torch.nn.Module
    """The network, on the runtime's device."""
    how: str
    """How it was obtained, for people: the checkpoint artifact, or the retraining."""
    retrained_val_loss: float | None
    """The retrained network's validation loss, to hold against the trial's recorded value;
    None when the weights are the trial's own (its checkpoint)."""
    unused_checkpoint: str | None = None
    """Why a retrained trial's checkpoint was not used (None: it kept none)."""


def trial_model(trial: optuna.trial.FrozenTrial, space: dict[str, Param], data: DeviceData,
                runtime: Runtime, epochs: int, artifacts=None,
                network: ModelSpec = FAMILY_MODEL, stop_after: int | None = None) -> TrialModel:
    """The trial's network: from its checkpoint artifact when there is one, else retrained
    with its seed (for `epochs`, or the first `stop_after` of them: retrain) and evaluated on
    the validation split (a retrain is only the trial's network where it reproduces the
    trial's validation loss)."""
    seed = trial.user_attrs.get("seed", 0)
    artifact_id = trial.user_attrs.get("checkpoint_artifact")
    unused: str | None = None
    if artifact_id and artifacts is not None:
        model, _, _ = build_trial_model(trial.params, space, data, runtime, seed, network,
                                        load_weights=False)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "weights.pt"
                optuna.artifacts.download_artifact(artifact_store=artifacts,
                                                   file_path=str(path), artifact_id=artifact_id)
                state = torch.load(path, map_location=runtime.device, weights_only=True)
        except Exception:  # noqa: BLE001 - missing, or not a state dict: retrain instead
            unused = f"its checkpoint artifact {artifact_id} was not found or does not load"
        else:
            try:
                model.load_state_dict(state)
                return TrialModel(model, f"checkpoint artifact {artifact_id}", None)
            except Exception as exc:  # noqa: BLE001 - shapes or names differ
                # The network is built anew from the trial's parameters: a changed builder or
                # torchvision builds another. The retrain is of that network too.
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                unused = (f"its checkpoint does not fit the network built here from its "
                          f"parameters (was the model builder or torchvision changed since?): "
                          f"{shorten(first, 160)}")
                log.warning("trial %d: %s; retraining it instead", trial.number, unused)
    elif artifact_id:
        unused = f"its checkpoint artifact {artifact_id} is in no artifact directory given"
    threads = trial.user_attrs.get("cpu_threads") if runtime.device.type == "cpu" else None
    with cpu_threads(threads):
        model = retrain(trial.params, space, data, runtime, seed, epochs, network, stop_after)
        val_loss = evaluate(model, data.val, runtime)["loss"]
    trained = (counted(epochs, "epoch") if stop_after is None
               else f"the first {'' if stop_after == 1 else f'{stop_after} '}of "
                    f"{counted(epochs, 'epoch')}")
    return TrialModel(model, f"retrained with seed {seed} for {trained}", val_loss, unused)


@contextlib.contextmanager
def cpu_threads(threads: int | None):
    """torch's CPU threads set to `threads` for the block (None: left as they are): a run
    repeats a trial's exactly only with the trial's number of threads."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def model_for_trial(trial: optuna.trial.FrozenTrial, space: dict[str, Param], data: DeviceData,
                    runtime: Runtime, epochs: int, artifacts=None,
                    network: ModelSpec = FAMILY_MODEL) -> tuple[torch.nn.Module, str]:
    """trial_model as (model, how it was obtained)."""
    obtained = trial_model(trial, space, data, runtime, epochs, artifacts, network)
    return obtained.model, obtained.how
