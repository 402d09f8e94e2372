"""The Optuna objective: sample, build, train epoch by epoch, report, prune. Kept thin."""

from __future__ import annotations

import math
import os
import socket
import time
from dataclasses import dataclass

import optuna
import torch

from tuning.data import DeviceData
from tuning.device import Runtime
from tuning.model import build_model
from tuning.space import Param, build_configs, sample
from tuning.train import (
    evaluate,
    make_optimizer,
    make_scheduler,
    seed_everything,
    train_epoch,
    training_batches,
)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class TrialFailed(Exception):
    """A trial that failed by itself (out of memory): recorded as FAIL, the worker goes on."""


@dataclass
class Objective:
    """Trains one network per trial and returns its best validation loss (minimized)."""

    data: DeviceData
    """The data, already on the runtime's device."""
    runtime: Runtime
    """Device and precision."""
    space: dict[str, Param]
    """The search space."""
    epochs: int
    """Maximum epochs per trial."""
    seed: int
    """Base seed; trial n is seeded with seed + n, so any trial can be retrained exactly."""

    def __call__(self, trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", worker_id())
        trial.set_user_attr("device", self.runtime.name)
        params = sample(trial, self.space)
        # A trial retried after its worker died inherits the dead trial's user attributes,
        # its seed among them, so the retry repeats the same run.
        trial_seed = trial.user_attrs.get("seed", self.seed + trial.number)
        trial.set_user_attr("seed", trial_seed)
        arch, cfg = build_configs({**self.fixed_params(), **params})

        generator = seed_everything(trial_seed, self.runtime.device)
        model = build_model(arch, self.data.input_shape, self.data.num_classes)
        model = model.to(self.runtime.device)
        if self.runtime.channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = make_optimizer(model, cfg)
        steps_per_epoch = math.ceil(len(self.data.train) / cfg.batch_size)
        scheduler = make_scheduler(optimizer, cfg, self.epochs, steps_per_epoch)

        best_loss, best_acc, train_loss, epochs_run = math.inf, 0.0, math.nan, 0
        train_seconds = 0.0
        try:
            for epoch in range(1, self.epochs + 1):
                start = time.perf_counter()
                stats = train_epoch(model, training_batches(self.data, cfg, generator),
                                    optimizer, cfg, self.runtime, scheduler)
                train_seconds += time.perf_counter() - start  # train_epoch synced already
                val = evaluate(model, self.data.val, self.runtime)
                train_loss, epochs_run = stats["loss"], epoch
                if not (math.isfinite(stats["loss"]) and math.isfinite(val["loss"])):
                    self._record(trial, best_acc, train_loss, epochs_run, train_seconds)
                    trial.set_user_attr("prune_reason", f"loss diverged (not finite) at {epoch=}")
                    raise optuna.TrialPruned(f"loss not finite at epoch {epoch}")
                if val["loss"] < best_loss:
                    best_loss, best_acc = val["loss"], val["accuracy"]
                trial.report(val["loss"], epoch)
                if trial.should_prune():
                    self._record(trial, best_acc, train_loss, epochs_run, train_seconds)
                    trial.set_user_attr("prune_reason", f"pruner stopped it after {epoch=}")
                    raise optuna.TrialPruned()
        except torch.OutOfMemoryError as exc:
            trial.set_user_attr("fail_reason", f"out of memory: {str(exc).splitlines()[0]}")
            raise TrialFailed("out of memory") from exc
        self._record(trial, best_acc, train_loss, epochs_run, train_seconds)
        return best_loss

    def fixed_params(self) -> dict:
        return {name: p.value for name, p in self.space.items() if p.kind == "fixed"}

    def _record(self, trial: optuna.Trial, val_accuracy: float, train_loss: float,
                epochs_run: int, train_seconds: float) -> None:
        samples = epochs_run * len(self.data.train)
        trial.set_user_attr("val_accuracy", val_accuracy)
        trial.set_user_attr("train_loss", train_loss if math.isfinite(train_loss) else None)
        trial.set_user_attr("epochs_run", epochs_run)
        trial.set_user_attr("train_seconds", round(train_seconds, 4))
        trial.set_user_attr("samples_per_second",
                            round(samples / train_seconds, 1) if train_seconds > 0 else None)
