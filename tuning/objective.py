"""The Optuna objective: sample, build, train epoch by epoch, report, prune. Kept thin."""

from __future__ import annotations

import io
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

import optuna
import torch

from tuning.data import DeviceData
from tuning.device import Runtime
from tuning.errors import described
from tuning.launcher import worker_id
from tuning.limits import Limits
from tuning.networks import FAMILY_MODEL, ModelBuildError, ModelSpec
from tuning.signals import GracefulStop, NoStop
from tuning.space import REPEAT, Param, build_configs, sample, tuned
from tuning.study_file import StudySettings
from tuning.train import EpochResult, fit, seed_everything
from tuning.warm_start import WARM_START_ATTR

log = logging.getLogger("tuning")


OVER_LIMITS = "over the limits before training"
"""How the prune reason of a trial whose network is over max_params or max_latency_ms begins."""


DIVERGED = "loss diverged"
"""How the prune reason of a trial stopped for a loss not finite begins."""


BUDGET_STOP = "the run's --budget ran out"
"""How the prune reason of a trial stopped by the run's --budget begins."""


def _pruned_for(trial: optuna.trial.FrozenTrial, reason: str) -> bool:
    """Whether a trial was pruned with a prune reason that begins with `reason`."""
    return (trial.state == optuna.trial.TrialState.PRUNED
            and str(trial.user_attrs.get("prune_reason", "")).startswith(reason))


def stopped_by_budget(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether the run's --budget stopped a trial (cut short, not judged by the pruner)."""
    return _pruned_for(trial, BUDGET_STOP)


def best_cut_by_budget(trials: list[optuna.trial.FrozenTrial],
                       cv_folds: int) -> optuna.trial.FrozenTrial | None:
    """The trial with the lowest validation loss of those the run's --budget cut short and an
    export can take (exportable_cut); None where there is none."""
    cut = [t for t in trials if exportable_cut(t, cv_folds)]
    return min(cut, key=lambda t: (recorded_val_loss(t), t.number)) if cut else None


def exportable_cut(trial: optuna.trial.FrozenTrial, cv_folds: int) -> bool:
    """Whether `trial` was cut short by the run's --budget with a finite validation loss from
    an epoch it finished, in a study without cross-validation (where a trial stands on all of
    its folds)."""
    return (stopped_by_budget(trial) and cv_folds == 1
            and math.isfinite(recorded_val_loss(trial)))


def epochs_run(trial: optuna.trial.FrozenTrial, epochs: int) -> int:
    """The epochs the trial trained, of the study's `epochs`."""
    return int(trial.user_attrs.get("epochs_run", len(trial.intermediate_values) or epochs))


def recorded_val_loss(trial: optuna.trial.FrozenTrial) -> float:
    """The trial's validation loss at its best epoch: a complete trial's value, and for a trial
    the run's --budget cut short the lowest it reported (its value is its last epoch's)."""
    if trial.state == optuna.trial.TrialState.COMPLETE:
        assert trial.value is not None  # a complete trial has a value
        return trial.value
    finite = [v for v in trial.intermediate_values.values() if math.isfinite(v)]
    return min(finite) if finite else math.inf


def diverged(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a trial was stopped for a loss not finite (by the objective, not the pruner)."""
    return _pruned_for(trial, DIVERGED)


def over_limits(trial: optuna.trial.FrozenTrial) -> str | None:
    """What a trial pruned before training was over ("3,256,330 parameters > max_params
    100,000"); None for any other trial."""
    if not _pruned_for(trial, OVER_LIMITS):
        return None
    return str(trial.user_attrs["prune_reason"])[len(OVER_LIMITS):].lstrip(": ")


class CutByBudget(Exception):  # noqa: N818 - what happened, as TrialPruned says
    """A planned trial (Objective.planned) the run's --budget cut short: failed and queued to
    run again first, as a trial stopped by Ctrl-C is, not counted towards the target."""


class TrialFailed(Exception):
    """A trial that failed by itself (out of memory, a network that cannot train with its
    configuration): recorded as FAIL, not retried, and the worker goes on."""


def _failing_the_trial(trial: optuna.Trial, epochs: Iterator[EpochResult]
                       ) -> Iterator[EpochResult]:
    """`fit`'s epochs, where an error raised while training (in the network's forward or
    backward pass, or the optimizer's step: a network that cannot train with this
    configuration) fails the trial with its reason, and the worker goes on to the next one.
    Out of memory is the caller's to say; the traceback is logged with --verbose."""
    while True:
        try:
            result = next(epochs)
        except StopIteration:
            return
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:
            reason = f"training failed: {described(exc, 180)}"
            log.debug("trial %d: %s", trial.number, reason, exc_info=True)
            trial.set_user_attr("fail_reason", reason)
            raise TrialFailed(reason) from exc
        yield result


def planned(settings: StudySettings, space: dict[str, Param]) -> bool:
    """Whether a study's trials are planned measurements (Objective.planned): a grid's points,
    or repeats of one configuration (every parameter fixed but the seed index)."""
    return settings.sampler == "grid" or not tuned(space)


def fixed_params(space: dict[str, Param]) -> dict:
    return {name: p.value for name, p in space.items() if p.kind == "fixed"}


def build_trial_model(params: dict, space: dict[str, Param], data: DeviceData, runtime: Runtime,
                      seed: int, network: ModelSpec = FAMILY_MODEL, load_weights: bool = True):
    """The network, its training config and RNG for a trial's parameters: the same every time
    for the same parameters and seed, so any trial can be retrained exactly.

    ModelBuildError when a model builder fails for these parameters."""
    all_params = {**fixed_params(space), **params}
    _, cfg = build_configs(all_params)
    generator = seed_everything(seed, runtime.device)
    model = runtime.place(network.build(all_params, data.input_shape, data.num_classes,
                                        load_weights=load_weights))
    return model, cfg, generator


@dataclass
class Objective:
    """Trains one network per trial (one per fold under cross-validation) and returns its best
    validation loss (the mean of the folds' best ones), minimized."""

    data: DeviceData
    """The data, already on the runtime's device (with folds: the first fold)."""
    runtime: Runtime
    """Device and precision."""
    space: dict[str, Param]
    """The search space."""
    epochs: int
    """Maximum epochs per trial (per fold under cross-validation)."""
    seed: int
    """Base seed; trial n is seeded with seed + n."""
    artifacts: object | None = None
    """Artifact store for the checkpoint of each new best trial (None: keep none)."""
    stop: GracefulStop = field(default_factory=NoStop)
    """Where Ctrl-C and SIGTERM may interrupt: between storage calls, not inside them."""
    on_epoch: Callable[[optuna.Trial, dict], None] | None = None
    """Called after each epoch is reported, with the trial and that epoch's entry of the
    learning curves (epoch, losses, accuracies, seconds): live progress within a trial. Under
    cross-validation the entry's epoch is the trial's step (epochs trained over its folds so
    far, as reported to Optuna), and fold and fold_epoch say where in which fold it is."""
    folds: list[DeviceData] | None = None
    """Cross-validation folds (tuning.folds.objective_data), trained one after another by every
    trial; None: train on `data`'s training split and validate on its validation split."""
    network: ModelSpec = field(default_factory=ModelSpec)
    """Which network the trials train (the study's `model` and `weights`)."""
    limits: Limits = field(default_factory=Limits)
    """Size and speed limits: a network over them is pruned before it trains."""
    deadline: float | None = None
    """When the run's --budget ends (time.monotonic()): a trial stops at the end of the last
    epoch that fits before it (_out_of_budget), pruned, with what it reached."""
    planned: bool = False
    """Whether each trial is a planned measurement (a grid's point, or a repeat of one fixed
    configuration): one the --budget cuts short is then no measurement, and runs again
    (CutByBudget) instead of being kept as pruned."""

    def __call__(self, trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", worker_id())
        trial.set_user_attr("device", self.runtime.name)
        if self.runtime.device.type == "cpu":
            # A CPU run repeats exactly only with as many threads (sums split otherwise):
            # a retrain for the report or an export uses these.
            trial.set_user_attr("cpu_threads", torch.get_num_threads())
        params = sample(trial, self.space)
        # A trial retried after its worker died inherits the dead trial's user attributes,
        # its seed among them, so the retry repeats the same run. A `repeat` parameter fixes
        # the seed instead, so that repeats are paired across configurations.
        all_params = {**fixed_params(self.space), **params}
        default_seed = self.seed + all_params.get(REPEAT, trial.number)
        attrs = trial.user_attrs
        trial_seed = attrs.get("seed", default_seed)
        trial.set_user_attr("seed", trial_seed)
        # A queued trial (the study file's `enqueue`, a warm start) runs all its epochs:
        # someone chose it as a starting point worth seeing whole. The pruner is still asked,
        # so that it records the trial's losses and judges the sampled trials against them.
        prunable = WARM_START_ATTR not in attrs
        cross_validated = self._cross_validated()
        best_loss, best_state, best_fold, curves = math.inf, None, 1, []
        # Under cross-validation a trial reports one step per epoch of each fold, fold after
        # fold: step (fold - 1) * epochs + epoch. Every trial trains the same folds in the same
        # order, so a step means the same fold and epoch in every trial, and the pruner, which
        # compares trials step by step, compares like with like. A bad configuration is mostly
        # pruned in fold 1, before the other folds cost anything. The median and percentile
        # pruners set a trial's best loss so far (over all its folds) against the others' at
        # this step, so in later folds they judge leniently, never unfairly.
        try:
            for fold, data in enumerate(self._splits(), start=1):
                # Every fold starts from the trial's seed (the same initial weights and random
                # draws), so that folds differ by their images alone and each runs as it would
                # on its own.
                try:
                    model, cfg, generator = build_trial_model(params, self.space, data,
                                                              self.runtime, trial_seed,
                                                              self.network)
                except ModelBuildError as exc:
                    trial.set_user_attr("fail_reason", str(exc))
                    raise TrialFailed(str(exc)) from exc
                if fold == 1:
                    self._check_limits(trial, model, data)
                epoch_began = time.monotonic()
                for result in _failing_the_trial(trial, fit(
                        model, data, cfg, self.runtime, generator, self.epochs,
                        on_step=self.stop.check)):
                    # An epoch's wall time, its evaluations included: what the next one takes.
                    epoch_seconds, epoch_began = time.monotonic() - epoch_began, time.monotonic()
                    step = (fold - 1) * self.epochs + result.epoch
                    where = (f"epoch {result.epoch} of fold {fold}" if cross_validated
                             else f"epoch {result.epoch}")
                    curves.append({"epoch": step,
                                   **({"fold": fold, "fold_epoch": result.epoch}
                                      if cross_validated else {}),
                                   "train_objective": result.train["loss"],
                                   "train_loss": result.train_eval["loss"],
                                   "train_accuracy": result.train_eval["accuracy"],
                                   "val_loss": result.val["loss"],
                                   "val_accuracy": result.val["accuracy"],
                                   "seconds": result.seconds,
                                   "at": _since(trial.datetime_start)})
                    if not (math.isfinite(result.train["loss"])
                            and math.isfinite(result.val["loss"])):
                        self._record(trial, curves)
                        trial.set_user_attr("prune_reason",
                                            f"{DIVERGED} (not finite) at {where}")
                        raise optuna.TrialPruned(f"loss not finite at {where}")
                    if result.val["loss"] < best_loss:
                        best_loss, best_fold = result.val["loss"], fold
                        if self.artifacts is not None:
                            best_state = {k: v.detach().to("cpu", copy=True)
                                          for k, v in model.state_dict().items()}
                    trial.report(result.val["loss"], step)
                    if self.on_epoch is not None:
                        self.on_epoch(trial, curves[-1])
                    if self._out_of_budget(fold, result.epoch, epoch_seconds):
                        self._record(trial, curves)
                        if self.planned:
                            trial.set_user_attr("fail_reason", f"{BUDGET_STOP} after {where}; "
                                                "it runs again first when the run goes on")
                            raise CutByBudget(where)
                        trial.set_user_attr("prune_reason",
                                            f"{BUDGET_STOP} after {where}")
                        raise optuna.TrialPruned("out of budget")
                    # After the last epoch nothing is left to save: the trial is complete.
                    if not self._last(fold, result.epoch) and trial.should_prune() and prunable:
                        self._record(trial, curves)
                        trial.set_user_attr("prune_reason", f"pruner stopped it after {where}")
                        raise optuna.TrialPruned()
        except torch.OutOfMemoryError as exc:
            trial.set_user_attr("fail_reason", f"out of memory: {str(exc).splitlines()[0]}")
            raise TrialFailed("out of memory") from exc
        bests = self._record(trial, curves)
        # Each fold's best epoch, as a trial without folds is scored on its best epoch; the mean
        # over the folds (of one fold: its best loss itself).
        value = math.fsum(b["val_loss"] for b in bests) / len(bests)
        if best_state is not None and self._is_new_best(trial, value):
            # Under cross-validation the weights of the fold with the lowest loss: one of the K
            # networks the trial trained (none of which saw a test image), named in the trial.
            if self._save_checkpoint(trial, best_state, curves) and cross_validated:
                trial.set_user_attr("checkpoint_fold", best_fold)
        return value

    def _last(self, fold: int, epoch: int) -> bool:
        """Whether this is the trial's last epoch (of its last fold)."""
        return fold == len(self._splits()) and epoch == self.epochs

    def _out_of_budget(self, fold: int, epoch: int, epoch_seconds: float) -> bool:
        """Whether the budget runs out before another epoch of this trial, one as long as the
        last (`epoch_seconds`), would end: the trial stops now, and the run ends within its
        budget rather than up to an epoch past it."""
        return (self.deadline is not None and not self._last(fold, epoch)
                and time.monotonic() + epoch_seconds >= self.deadline)

    def _check_limits(self, trial: optuna.Trial, model: torch.nn.Module,
                      data: DeviceData) -> None:
        """Record the network's size (and latency, when limited); prune it, untrained, when it
        is over a limit."""
        measured = self.limits.measure(model, data.input_shape, self.runtime.device)
        for name, value in measured.items():
            trial.set_user_attr(name, value)
        if not self.limits:
            return
        for name, excess in self.limits.excess(measured).items():
            trial.set_constraint(name, excess)
        over = self.limits.violations(measured)
        if over:
            trial.set_user_attr("prune_reason", f"{OVER_LIMITS}: {'; '.join(over)}")
            raise optuna.TrialPruned("; ".join(over))

    def _splits(self) -> list[DeviceData]:
        """What a trial trains and validates on, in order: the folds, or the one split."""
        return self.folds if self.folds else [self.data]

    def _cross_validated(self) -> bool:
        return len(self._splits()) > 1

    def _record(self, trial: optuna.Trial, curves: list[dict]) -> list[dict]:
        """Record what the trial did in its user attributes; returns each fold's best epoch
        (one without folds), in fold order."""
        bests = [min(entries, key=lambda c: c["val_loss"] if math.isfinite(c["val_loss"])
                     else math.inf) for entries in _by_fold(curves)]
        seconds = sum(c["seconds"] for c in curves)
        # Under cross-validation the mean accuracy of the folds' best epochs, as the trial's
        # value is the mean of their losses; without folds the best epoch's accuracy.
        trial.set_user_attr("val_accuracy",
                            math.fsum(b["val_accuracy"] for b in bests) / len(bests))
        if self._cross_validated():
            # The folds trained so far (a pruned trial's last one may be cut short).
            trial.set_user_attr("fold_losses", [_finite(b["val_loss"]) for b in bests])
        # The training loss measured as the validation loss is (eval mode, plain cross-entropy,
        # on a fixed subset of training images): validation minus it is the generalization gap.
        trial.set_user_attr("train_eval_loss", _finite(curves[-1]["train_loss"]))
        trial.set_user_attr("train_eval_losses", [_finite(c["train_loss"]) for c in curves])
        # What the optimizer minimized (label smoothing, L1, dropout and augmentation included),
        # averaged over the epoch: not comparable with the validation loss.
        trial.set_user_attr("train_objectives", [_finite(c["train_objective"]) for c in curves])
        # Every epoch's validation accuracy and when it was known (seconds after the trial
        # started): when the search first reached an accuracy, as a benchmark or a user asks.
        trial.set_user_attr("val_accuracies", [round(c["val_accuracy"], 6) for c in curves])
        trial.set_user_attr("epoch_ends", [c["at"] for c in curves])
        # Every epoch trained, over all folds: what the trial cost.
        trial.set_user_attr("epochs_run", len(curves))
        trial.set_user_attr("train_seconds", round(seconds, 4))
        splits = self._splits()
        samples = sum(len(splits[c.get("fold", 1) - 1].train) for c in curves)
        trial.set_user_attr("samples_per_second",
                            round(samples / seconds, 1) if seconds > 0 else None)
        return bests

    @staticmethod
    def _is_new_best(trial: optuna.Trial, value: float) -> bool:
        try:
            return value < trial.study.best_value
        except ValueError:  # no completed trial yet
            return True

    def _save_checkpoint(self, trial: optuna.Trial, state: dict, curves: list[dict]) -> bool:
        """The best epoch's weights (a plain state_dict: loads with weights_only=True) and the
        learning curves, as artifacts of the trial; whether they were saved.

        A checkpoint is a convenience (evaluate retrains without one), so failing to write it,
        on a full disk here or in the temporary directory, is a warning and the trial keeps
        its result. Nothing half-written is left in the store.
        """
        store = _RecordingStore(self.artifacts)
        where = f"temporary directory {tempfile.gettempdir()}{os.sep}: "
        try:
            with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:
                weights = Path(tmp) / f"trial-{trial.number}.pt"
                # Serialized in memory first: torch.save into a file on a full disk fails in
                # its zip writer with a RuntimeError that does not say why, not an OSError.
                buffer = io.BytesIO()
                torch.save(state, buffer)
                weights.write_bytes(buffer.getbuffer())
                curve_file = Path(tmp) / f"trial-{trial.number}-curves.json"
                curve_file.write_text(json.dumps(curves, indent=1))
                where = ""
                weights_id = optuna.artifacts.upload_artifact(
                    artifact_store=store, file_path=str(weights), study_or_trial=trial,
                    mimetype="application/octet-stream")
                curves_id = optuna.artifacts.upload_artifact(
                    artifact_store=store, file_path=str(curve_file), study_or_trial=trial,
                    mimetype="application/json")
        except OSError as exc:
            # All or nothing: the weights are the bulk of what a full disk is short of (other
            # workers and maybe the study's database need it more), and weights without their
            # curves are not the record the report expects; the trial's losses stay in the
            # study either way.
            store.remove_written()
            log.warning("trial %d: checkpoint not saved to %s: %s%s; the trial keeps its result",
                        trial.number, _location(self.artifacts), where, exc.strerror or exc)
            return False
        # Only now: upload_artifact records an artifact's id on the trial (a system attribute)
        # before writing the file, and Optuna cannot delete an attribute, so after a failure
        # those ids name no file. The user attributes, which evaluate and the report read,
        # name a checkpoint only when both files are there.
        trial.set_user_attr("checkpoint_artifact", weights_id)
        trial.set_user_attr("curves_artifact", curves_id)
        return True


def _by_fold(curves: list[dict]) -> list[list[dict]]:
    """Learning-curve entries grouped by fold, in fold order (entries without a fold: one)."""
    folds: dict[int, list[dict]] = {}
    for entry in curves:
        folds.setdefault(entry.get("fold", 1), []).append(entry)
    return [folds[fold] for fold in sorted(folds)]


def _since(start: datetime | None) -> float | None:
    """Seconds from a trial's start to now (Optuna records it as a naive local datetime)."""
    return None if start is None else round((datetime.now() - start).total_seconds(), 3)


def _finite(value: float) -> float | None:
    """A loss as stored in the study: rounded, None where it diverged (JSON has no NaN)."""
    return round(value, 6) if math.isfinite(value) else None


class _RecordingStore:
    """An artifact store that remembers what it was asked to write, so that a failed upload
    can be taken back: upload_artifact returns an artifact's id only when it succeeds."""

    def __init__(self, store) -> None:
        self.store = store
        self.written: list[str] = []

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        self.written.append(artifact_id)
        self.store.write(artifact_id, content_body)

    # The rest of Optuna's ArtifactStore protocol, passed through (upload_artifact only writes).
    def open_reader(self, artifact_id: str) -> BinaryIO:
        return self.store.open_reader(artifact_id)

    def remove(self, artifact_id: str) -> None:
        self.store.remove(artifact_id)

    def remove_written(self) -> None:
        from optuna.artifacts.exceptions import ArtifactNotFound

        for artifact_id in self.written:
            try:
                self.store.remove(artifact_id)  # a file cut short by the full disk
            except (ArtifactNotFound, OSError):  # never created, or cannot go: nothing to add
                pass


def _location(store) -> str:
    # FileSystemArtifactStore keeps its directory in a private attribute; name others by type.
    base = getattr(store, "_base_path", None)
    return f"{base}{os.sep}" if base is not None else type(store).__name__
