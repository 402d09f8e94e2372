"""The held-out test: a configuration evaluated once on the test set, with the metrics a reader
needs to trust it (accuracy, macro precision/recall/F1, per-class table, confusion matrix)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import optuna
import torch

from tuning.data import DeviceData
from tuning.device import Runtime
from tuning.objective import build_trial_model
from tuning.space import Param
from tuning.train import evaluate, fit


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def classification_metrics(cm: np.ndarray) -> dict:
    """Accuracy, macro precision/recall/F1 and a per-class table from a confusion matrix."""
    tp = np.diag(cm).astype(float)
    predicted = cm.sum(axis=0).astype(float)
    support = cm.sum(axis=1).astype(float)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {
        "accuracy": float(tp.sum() / cm.sum()),
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
        "per_class": [
            {"class": i, "precision": float(precision[i]), "recall": float(recall[i]),
             "f1": float(f1[i]), "support": int(support[i])}
            for i in range(len(tp))
        ],
        "confusion_matrix": cm.tolist(),
    }


def held_out_metrics(model: torch.nn.Module, data: DeviceData, runtime: Runtime) -> dict:
    result = evaluate(model, data.test, runtime, return_predictions=True)
    cm = confusion_matrix(data.test.y.cpu().numpy(), result["predictions"].numpy(),
                          data.num_classes)
    return {**classification_metrics(cm), "test_loss": result["loss"]}


def retrain(params: dict, space: dict[str, Param], data: DeviceData, runtime: Runtime,
            seed: int, epochs: int) -> torch.nn.Module:
    """Train a configuration as its trial did (same seed), keeping the best-validation epoch."""
    model, cfg, generator = build_trial_model(params, space, data, runtime, seed)
    best_loss, best_state = float("inf"), None
    for result in fit(model, data, cfg, runtime, generator, epochs):
        if result.val["loss"] < best_loss:
            best_loss = result.val["loss"]
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if best_state is not None:
        model.load_state_dict(best_state)
    return model


def model_for_trial(trial: optuna.trial.FrozenTrial, space: dict[str, Param], data: DeviceData,
                    runtime: Runtime, epochs: int, artifacts=None) -> tuple[torch.nn.Module, str]:
    """The trial's network: from its checkpoint artifact when there is one, else retrained
    with its seed. Returns (model, how it was obtained)."""
    seed = trial.user_attrs.get("seed", 0)
    artifact_id = trial.user_attrs.get("checkpoint_artifact")
    model, _, _ = build_trial_model(trial.params, space, data, runtime, seed)
    if artifact_id and artifacts is not None:
        try:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "weights.pt"
                optuna.artifacts.download_artifact(artifact_store=artifacts,
                                                   file_path=str(path), artifact_id=artifact_id)
                state = torch.load(path, map_location=runtime.device, weights_only=True)
            model.load_state_dict(state)
            return model, f"checkpoint artifact {artifact_id}"
        except Exception:  # noqa: BLE001 - a missing or foreign artifact: retrain instead
            pass
    return (retrain(trial.params, space, data, runtime, seed, epochs),
            f"retrained with seed {seed} for {epochs} epochs")
