"""Training and evaluation as plain functions. Knows nothing of Optuna.

Losses and accuracies are accumulated on the device and read once per epoch: `.item()` in the
step loop would force a CPU-GPU sync per step.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tuning.data import DeviceData, Split, augment, batches
from tuning.device import Runtime


@dataclass(frozen=True)
class TrainConfig:
    """How one network is trained: optimizer, regularization and augmentation."""

    optimizer: str = "adam"
    """Optimizer, a key of OPTIMIZERS."""
    lr: float = 1e-3
    """Peak learning rate."""
    momentum: float = 0.9
    """Momentum for sgd and rmsprop (Adam's beta1 stays 0.9)."""
    nesterov: bool = False
    """Nesterov momentum (sgd only)."""
    weight_decay: float = 0.0
    """L2 penalty (decoupled for adamw)."""
    l1: float = 0.0
    """L1 penalty on conv and linear weights, added to the loss."""
    label_smoothing: float = 0.0
    """Label smoothing of the cross-entropy loss."""
    batch_size: int = 100
    """Training batch size."""
    crop_padding: int = 4
    """Random crop with this padding (0: no crop); the tutorial used 4."""
    hflip: bool = False
    """Random horizontal flip (only for data where a flip keeps the label)."""
    lr_schedule: str = "none"
    """Learning-rate schedule over the planned epochs, a key of LR_SCHEDULES."""

    def __post_init__(self) -> None:
        problems = []
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"optimizer must be one of {list(OPTIMIZERS)}, got {self.optimizer=}")
        if not self.lr > 0:
            problems.append(f"lr must be positive, got {self.lr=}")
        if not 0.0 <= self.momentum < 1.0:
            problems.append(f"momentum must be in [0, 1), got {self.momentum=}")
        if self.weight_decay < 0 or self.l1 < 0:
            problems.append(f"penalties must be >= 0, got {self.weight_decay=}, {self.l1=}")
        if not 0.0 <= self.label_smoothing < 1.0:
            problems.append(f"label_smoothing must be in [0, 1), got {self.label_smoothing=}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be positive, got {self.batch_size=}")
        if self.crop_padding < 0:
            problems.append(f"crop_padding must be >= 0, got {self.crop_padding=}")
        if self.lr_schedule not in LR_SCHEDULES:
            problems.append(f"lr_schedule must be one of {list(LR_SCHEDULES)}, "
                            f"got {self.lr_schedule=}")
        if problems:
            raise ValueError("; ".join(problems))


def seed_everything(seed: int, device: torch.device) -> torch.Generator:
    """Seed weight init (global RNG) and return the generator for shuffling and augmentation."""
    torch.manual_seed(seed)
    return torch.Generator(device=device).manual_seed(seed)


# (model parameters, config) -> optimizer.
OPTIMIZERS: dict[str, Callable[[Iterator[nn.Parameter], TrainConfig], torch.optim.Optimizer]] = {
    "adam": lambda params, cfg: torch.optim.Adam(params, lr=cfg.lr,
                                                 weight_decay=cfg.weight_decay),
    "adamw": lambda params, cfg: torch.optim.AdamW(params, lr=cfg.lr,
                                                   weight_decay=cfg.weight_decay),
    "sgd": lambda params, cfg: torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                                               nesterov=cfg.nesterov and cfg.momentum > 0,
                                               weight_decay=cfg.weight_decay),
    "rmsprop": lambda params, cfg: torch.optim.RMSprop(params, lr=cfg.lr, momentum=cfg.momentum,
                                                       weight_decay=cfg.weight_decay),
}

# (optimizer, config, total steps) -> a scheduler stepped once per step, or None for a constant
# learning rate.
LR_SCHEDULES: dict[str, Callable[[torch.optim.Optimizer, TrainConfig, int],
                                 torch.optim.lr_scheduler.LRScheduler | None]] = {
    "none": lambda optimizer, cfg, total: None,
    # Annealed to 0 at the end of the planned epochs.
    "cosine": lambda optimizer, cfg, total: torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=total),
    "onecycle": lambda optimizer, cfg, total: torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.lr, total_steps=total),
}


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    return OPTIMIZERS[cfg.optimizer](model.parameters(), cfg)


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, epochs: int, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """A per-step schedule over the whole planned run (pruning may cut it short)."""
    return LR_SCHEDULES[cfg.lr_schedule](optimizer, cfg, max(1, epochs * steps_per_epoch))


def training_batches(
    data: DeviceData, cfg: TrainConfig, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of shuffled, augmented training batches, all on the device; a last batch of
    one image is left out (`steps_per_epoch`)."""
    hflip = cfg.hflip and data.hflip_allowed
    for x, y in itertools.islice(batches(data.train, cfg.batch_size, generator),
                                 steps_per_epoch(len(data.train), cfg.batch_size)):
        yield augment(x, cfg.crop_padding, hflip, data.pad_value, generator), y


def steps_per_epoch(images: int, batch_size: int) -> int:
    """Training batches in an epoch: a last batch of a single image is left out (another one
    each epoch, as they are shuffled), since batch norm cannot train on one value per channel
    (a 1 x 1 map, or a vector) and one image makes a step of noise."""
    steps = -(-images // batch_size)
    return steps - 1 if steps > 1 and images % batch_size == 1 else steps


def l1_penalty(model: nn.Module) -> torch.Tensor:
    # Weights only (ndim > 1): penalizing biases and norm scales is not what L1 is for.
    return sum(p.abs().sum() for p in model.parameters() if p.ndim > 1)  # type: ignore[return-value]


def train_epoch(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    cfg: TrainConfig,
    runtime: Runtime,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    on_step: Callable[[], None] | None = None,
) -> dict[str, float]:
    """One pass over `batches`; returns mean training loss and accuracy (of the seen batches).

    `on_step` runs after every optimizer step (a place where it is safe to raise and stop).
    """
    model.train()
    device = runtime.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    for x, y in batches:
        if runtime.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        runtime.step_begins()
        with runtime.autocast():
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
        if cfg.l1 > 0:
            loss = loss + cfg.l1 * l1_penalty(model)
        # Read the logits before backward: under CUDA graphs (--compile reduce-overhead) a
        # graph's outputs live only until the next replay.
        correct += (logits.argmax(1) == y).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        loss_sum += loss.detach() * len(y)
        seen += len(y)
        if on_step is not None:
            on_step()
    # The one host sync of the epoch.
    return {"loss": loss_sum.item() / max(seen, 1), "accuracy": correct.item() / max(seen, 1)}


@dataclass(frozen=True)
class EpochResult:
    """What one epoch of `fit` produced."""

    epoch: int
    """Epoch number, from 1."""
    train: dict
    """train_epoch's result: the training objective (with label smoothing and the L1
    penalty, in train mode with dropout and augmentation) and accuracy, averaged while the
    weights changed. Not comparable with the validation loss."""
    train_eval: dict
    """evaluate's result on `training_probe`: the training loss measured exactly as the
    validation loss is, so that validation minus this is the generalization gap."""
    val: dict
    """evaluate's result on the validation split: loss, accuracy."""
    seconds: float
    """Wall time of the training pass (the device is synced by then)."""


def training_probe(data: DeviceData) -> Split:
    """A fixed subset of the training images, as many as the validation split has.

    The training split is a seeded permutation, so its first images are a random sample; a
    slice is a view, so this costs no memory, and one evaluation of it per epoch costs about as
    much as the validation pass.
    """
    n = min(len(data.val), len(data.train))
    return data.train.first(n)


def fit(
    model: nn.Module,
    data: DeviceData,
    cfg: TrainConfig,
    runtime: Runtime,
    generator: torch.Generator,
    epochs: int,
    on_step: Callable[[], None] | None = None,
) -> Iterator[EpochResult]:
    """Train `model` for up to `epochs`, yielding after each epoch; the caller may stop early.

    With a compiling runtime, steps run through a compiled callable that shares `model`'s
    parameters: `model` itself stays a plain module (its state_dict keys unchanged)."""
    network = runtime.compiled(model)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, epochs,
                               steps_per_epoch(len(data.train), cfg.batch_size))
    probe = training_probe(data)
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        stats = train_epoch(network, training_batches(data, cfg, generator), optimizer, cfg,
                            runtime, scheduler, on_step)
        seconds = time.perf_counter() - start  # train_epoch ended with a host sync
        yield EpochResult(epoch, stats, evaluate(network, probe, runtime),
                          evaluate(network, data.val, runtime), seconds)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    split: Split,
    runtime: Runtime,
    return_predictions: bool = False,
) -> dict:
    """Mean cross-entropy and accuracy on `split` (no label smoothing, no augmentation).

    With `return_predictions`, also the predicted class per example (a CPU tensor).
    """
    model.eval()
    loss_sum = torch.zeros((), device=runtime.device)
    predictions = []
    for x, y in batches(split, runtime.eval_batch_size):
        if runtime.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with runtime.autocast():
            logits = model(x).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        predictions.append(logits.argmax(1))
    predicted = torch.cat(predictions)
    result: dict[str, Any] = {
        "loss": loss_sum.item() / len(split),
        "accuracy": (predicted == split.y).float().mean().item(),
    }
    if return_predictions:
        result["predictions"] = predicted.cpu()
    return result
