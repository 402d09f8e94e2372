"""The tutorial's CNN as the named architecture `seed`, and the family of CNNs around it.

A network is 1 to MAX_BLOCKS conv blocks (each 1 to MAX_CONVS x [conv -> [batch norm] ->
activation], then max-pool 2), then dropout, an optional hidden linear layer, and a linear head.
Every size is derived from the input shape: the tutorial hard-coded `32 * 6 * 6`, which is wrong
for 28x28 inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

ACTIVATIONS = {"none": nn.Identity, "relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}
# The family's limits, also the bounds of the study files' ranges (tuning.space.BOUNDS).
MAX_BLOCKS = 3
MAX_CONVS = 3


@dataclass(frozen=True)
class ArchConfig:
    """The architecture of one network of the family."""

    blocks: int = 1
    """Number of conv blocks, 1 to MAX_BLOCKS; each halves the spatial size."""
    channels: int = 32
    """Channels of the first block; each further block doubles them."""
    convs: int = 1
    """Conv layers per block, 1 to MAX_CONVS (the tutorial's network has one); all but the first
    keep the block's channels. Two per block is the usual step up for Fashion-MNIST-sized
    problems."""
    kernel: int = 3
    """Conv kernel size (odd: padding kernel // 2 keeps the spatial size)."""
    activation: str = "none"
    """Nonlinearity after each conv and the hidden layer: none, relu, gelu or silu."""
    batch_norm: bool = False
    """Batch normalization after each conv."""
    dropout: float = 0.0
    """Dropout before the hidden and output layers."""
    hidden: int = 0
    """Units of a hidden linear layer before the head; 0 for none."""

    def __post_init__(self) -> None:
        problems = []
        if not 1 <= self.blocks <= MAX_BLOCKS:
            problems.append(f"blocks must be 1-{MAX_BLOCKS}, got {self.blocks=}")
        if not 1 <= self.convs <= MAX_CONVS:
            problems.append(f"convs must be 1-{MAX_CONVS}, got {self.convs=}")
        if self.channels < 1:
            problems.append(f"channels must be positive, got {self.channels=}")
        if self.kernel < 1 or self.kernel % 2 == 0:
            problems.append(f"kernel must be odd and positive, got {self.kernel=}")
        if self.activation not in ACTIVATIONS:
            problems.append(
                f"activation must be one of {list(ACTIVATIONS)}, got {self.activation=}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout=}")
        if self.hidden < 0:
            problems.append(f"hidden must be >= 0, got {self.hidden=}")
        if problems:
            raise ValueError("; ".join(problems))


# The tutorial's network: Conv2d(1, 32, 3, padding=1) -> MaxPool(2) -> Linear(32*14*14, 10),
# with no activation at all (as written there).
SEED = ArchConfig(blocks=1, convs=1, channels=32, kernel=3, activation="none", batch_norm=False,
                  dropout=0.0, hidden=0)


class FlattenChannelsLast(nn.Module):
    """Flatten (N, C, H, W) in H, W, C order: a free view for a channels_last tensor, where
    nn.Flatten's C, H, W order forces a copy forward and a slow max-pool backward (half of a
    seed training step on the CPU). The linear layer after it learns the same function."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)


class CNN(nn.Module):
    def __init__(self, arch: ArchConfig, input_shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        in_channels, height, width = input_shape
        layers: list[nn.Module] = []
        channels = arch.channels
        for _ in range(arch.blocks):
            for _ in range(arch.convs):
                layers.append(nn.Conv2d(in_channels, channels, arch.kernel,
                                        padding=arch.kernel // 2, bias=not arch.batch_norm))
                if arch.batch_norm:
                    layers.append(nn.BatchNorm2d(channels))
                layers.append(ACTIVATIONS[arch.activation]())
                in_channels = channels
            layers.append(nn.MaxPool2d(2))
            height, width = height // 2, width // 2
            channels *= 2
        if height < 1 or width < 1:
            raise ValueError(f"{arch.blocks} blocks shrink a {input_shape} input to nothing")
        self.features = nn.Sequential(*layers)
        features = in_channels * height * width
        head: list[nn.Module] = [FlattenChannelsLast()]
        if arch.dropout > 0:
            head.append(nn.Dropout(arch.dropout))
        if arch.hidden > 0:
            head += [nn.Linear(features, arch.hidden), ACTIVATIONS[arch.activation]()]
            if arch.dropout > 0:
                head.append(nn.Dropout(arch.dropout))
            features = arch.hidden
        head.append(nn.Linear(features, num_classes))
        self.head = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_model(
    arch: ArchConfig, input_shape: tuple[int, int, int], num_classes: int
) -> CNN:
    return CNN(arch, input_shape, num_classes)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
