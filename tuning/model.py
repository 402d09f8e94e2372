"""The tutorial's CNN as the named architecture `seed`, and the family of CNNs around it.

A network is 1 to MAX_BLOCKS conv blocks (each 1 to MAX_CONVS x [conv -> [batch norm] ->
activation], then max-pool 2 while the feature map is at least 2 pixels across), then a head:
the feature maps made one vector (`flatten`, the tutorial's, or `gap`, global average pooling),
dropout, an optional hidden linear layer, and a linear layer to the classes. Every size is
derived from the input shape: the tutorial hard-coded `32 * 6 * 6`, which is wrong for 28x28
inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

ACTIVATIONS = {"none": nn.Identity, "relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}
# The family's limits, also the bounds of the study files' ranges (tuning.space.BOUNDS).
# Six blocks take a 128x128 image down to 2x2 (64x64 to 1x1).
MAX_BLOCKS = 6
MAX_CONVS = 3
# Channels double with each block until they reach this multiple of the first block's, then stay:
# unchecked doubling gives 6 blocks of 32 a 2,048-channel last block (19M weights in one conv).
# 8x is VGG's 64 -> 512, and it keeps every network of up to 3 blocks (1x, 2x, 4x) exactly as it
# was, so old studies resume with the same networks and their checkpoints load.
MAX_WIDENING = 8


class FlattenChannelsLast(nn.Module):
    """Flatten (N, C, H, W) in H, W, C order: a free view for a channels_last tensor, where
    nn.Flatten's C, H, W order forces a copy forward and a slow max-pool backward (half of a
    seed training step on the CPU). The linear layer after it learns the same function."""

    @staticmethod
    def out_features(channels: int, height: int, width: int) -> int:
        return channels * height * width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)


class GlobalAveragePool(nn.Module):
    """Average each channel over the whole feature map (N, C, H, W) -> (N, C): the linear
    layers after it have the same size for any input size (Lin et al., Network in Network,
    arXiv:1312.4400)."""

    @staticmethod
    def out_features(channels: int, height: int, width: int) -> int:
        return channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


# How a head turns the last feature maps into one vector, by the name `ArchConfig.head` takes.
# `flatten` keeps where each feature was, but its linear layer grows with the image: one block of
# 32 channels on 128x128 feeds it 131,072 features (1.3M weights for 10 classes). That is allowed
# (it is the tutorial's network on larger input); for images larger than MNIST's, `gap` is the
# choice that keeps the head's size independent of the image.
HEADS: dict[str, type[FlattenChannelsLast | GlobalAveragePool]] = {
    "flatten": FlattenChannelsLast,
    "gap": GlobalAveragePool,
}


@dataclass(frozen=True)
class ArchConfig:
    """The architecture of one network of the family."""

    blocks: int = 1
    """Number of conv blocks, 1 to MAX_BLOCKS; each halves the spatial size while it is >= 2."""
    channels: int = 32
    """Channels of the first block; each further block doubles them, up to MAX_WIDENING x."""
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
    head: str = "flatten"
    """How the last feature maps become one vector, a key of HEADS: flatten or gap."""

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
        if self.head not in HEADS:
            problems.append(f"head must be one of {list(HEADS)}, got {self.head=}")
        if problems:
            raise ValueError("; ".join(problems))

    def block_channels(self, block: int) -> int:
        """Output channels of block `block` (0-based): doubling, capped at MAX_WIDENING x."""
        return self.channels * min(2**block, MAX_WIDENING)


# The tutorial's network: Conv2d(1, 32, 3, padding=1) -> MaxPool(2) -> Linear(32*14*14, 10),
# with no activation at all (as written there).
SEED = ArchConfig(blocks=1, convs=1, channels=32, kernel=3, activation="none", batch_norm=False,
                  dropout=0.0, hidden=0, head="flatten")


class CNN(nn.Module):
    """A network of the family for inputs of `input_shape` (C, H, W).

    A block pools only while its input is at least 2 pixels in both directions. Blocks past
    that (blocks 5 and 6 on 16x16 input, which is 1x1 after 4) keep their convs and add depth
    without shrinking the map: a search that samples more blocks than its images need trains a
    deeper network rather than failing the trial (an exception here would stop the worker) or
    pooling to 0 pixels. `features` shows which blocks pool. Networks in which every block
    pools, every network that could be built before this rule, keep exactly their layers.
    """

    def __init__(self, arch: ArchConfig, input_shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        in_channels, height, width = input_shape
        layers: list[nn.Module] = []
        for block in range(arch.blocks):
            channels = arch.block_channels(block)
            for _ in range(arch.convs):
                layers.append(nn.Conv2d(in_channels, channels, arch.kernel,
                                        padding=arch.kernel // 2, bias=not arch.batch_norm))
                if arch.batch_norm:
                    layers.append(nn.BatchNorm2d(channels))
                layers.append(ACTIVATIONS[arch.activation]())
                in_channels = channels
            if min(height, width) >= 2:
                layers.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
        self.features = nn.Sequential(*layers)
        head_input = HEADS[arch.head]
        features = head_input.out_features(in_channels, height, width)
        head: list[nn.Module] = [head_input()]
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
    """Trainable and frozen parameters (not buffers such as batch norm's running statistics)."""
    return sum(p.numel() for p in model.parameters())
