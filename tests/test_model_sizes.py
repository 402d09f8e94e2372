"""Tier 1: the model family on 1 or 3 channels and images of 16 to 128 pixels (issue 12).

Forward and one backward pass on random tensors; no data sets, no training.
"""

from __future__ import annotations

import itertools
import logging

import pytest
import torch
from torch import nn

from tuning.errors import UsageError
from tuning.limits import Limits
from tuning.model import (
    HEADS,
    MAX_BLOCKS,
    MAX_WIDENING,
    SEED,
    ArchConfig,
    build_model,
    count_parameters,
)
from tuning.networks import FAMILY_MODEL
from tuning.space import build_configs, representative, space_from_dict
from tuning.study_file import parse_study

SIZES = (16, 28, 32, 64, 128)
CLASSES = 7


def _conv_widths(model: nn.Module) -> list[int]:
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


def _pools(model: nn.Module) -> int:
    return sum(isinstance(m, nn.MaxPool2d) for m in model.modules())


@pytest.mark.parametrize(
    ("in_channels", "size", "head", "blocks"),
    list(itertools.product((1, 3), SIZES, sorted(HEADS), (1, 3, MAX_BLOCKS))),
)
def test_every_shape_builds_runs_forward_and_backward(in_channels, size, head, blocks):
    arch = ArchConfig(blocks=blocks, channels=4, activation="relu", batch_norm=True,
                      dropout=0.1, hidden=16, head=head)
    # channels_last, as tuning.device.Runtime places every model.
    model = build_model(arch, (in_channels, size, size), CLASSES).to(
        memory_format=torch.channels_last)
    x = torch.randn(3, in_channels, size, size).to(memory_format=torch.channels_last)
    out = model(x)
    assert out.shape == (3, CLASSES)
    out.logsumexp(dim=1).sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads if g is not None)


@pytest.mark.parametrize("blocks", range(1, MAX_BLOCKS + 1))
@pytest.mark.parametrize("in_channels", (1, 3))
def test_gap_parameter_count_does_not_depend_on_the_image_size(blocks, in_channels):
    arch = ArchConfig(blocks=blocks, channels=32, hidden=64, head="gap")
    counts = {size: count_parameters(build_model(arch, (in_channels, size, size), 10))
              for size in SIZES}
    assert len(set(counts.values())) == 1, counts
    assert counts[32] == counts[128]
    # The flatten head of the same network grows with the image (even with 6 blocks: 2x2 at
    # 128 px against 1x1 at 32 px): what gap avoids.
    flatten = ArchConfig(blocks=blocks, channels=32, hidden=64, head="flatten")
    assert (count_parameters(build_model(flatten, (in_channels, 128, 128), 10))
            > count_parameters(build_model(flatten, (in_channels, 32, 32), 10)))


def test_gap_parameter_count_is_bounded_for_the_largest_network_of_32_channels():
    arch = ArchConfig(blocks=MAX_BLOCKS, channels=32, head="gap")
    model = build_model(arch, (3, 128, 128), 10)
    # By hand: conv weights + biases of 3->32, 32->64, 64->128, 128->256, 256->256, 256->256
    # (3x3), then Linear(256, 10). With doubling uncapped the last block alone would be
    # 512->1024, 4.7M weights.
    expected = ((3 * 32 + 32 * 64 + 64 * 128 + 128 * 256 + 256 * 256 * 2) * 9
                + (32 + 64 + 128 + 256 * 3) + 256 * 10 + 10)
    assert count_parameters(model) == expected == 1_571_146


def test_channels_stop_doubling_at_the_cap():
    model = build_model(ArchConfig(blocks=MAX_BLOCKS, channels=32, convs=2), (1, 128, 128), 10)
    assert MAX_WIDENING == 8
    assert _conv_widths(model) == [w for w in (32, 64, 128, 256, 256, 256) for _ in range(2)]
    assert max(_conv_widths(model)) == 32 * MAX_WIDENING


def test_seed_network_is_unchanged():
    # Computed by hand from the tutorial's network and checked against the code before issue 12:
    # Conv2d(1, 32, 3) = 32*9 + 32 bias, Linear(32*14*14, 10) = 62,720 + 10.
    model = build_model(SEED, (1, 28, 28), 10)
    assert SEED.head == "flatten"
    assert count_parameters(model) == 32 * 9 + 32 + 32 * 14 * 14 * 10 + 10 == 63_050
    # A checkpoint loads by these names and shapes.
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == {
        "features.0.weight": (32, 1, 3, 3), "features.0.bias": (32,),
        "head.1.weight": (10, 6272), "head.1.bias": (10,)}


@pytest.mark.parametrize(("shape", "expected"), [((1, 28, 28), 435_754), ((3, 32, 32), 551_018)])
def test_three_block_network_is_unchanged(shape, expected):
    # `expected` printed by count_parameters with the code before issue 12 (MAX_BLOCKS 3,
    # channels doubling) and checked by hand for 28x28: convs (1*32 + 32*32 + 32*64 + 64*64
    # + 64*128 + 128*128) * 9 = 285,984, batch norm 2 * (2*32 + 2*64 + 2*128) = 896,
    # Linear(128*3*3, 128) = 147,584, Linear(128, 10) = 1,290. For 3x32x32 the first conv has
    # 3 inputs (+576) and the map ends 4x4 (Linear(2048, 128), +114,688).
    arch = ArchConfig(blocks=3, channels=32, convs=2, kernel=3, activation="relu",
                      batch_norm=True, dropout=0.3, hidden=128)
    model = build_model(arch, shape, 10)
    assert count_parameters(model) == expected
    assert _conv_widths(model) == [32, 32, 64, 64, 128, 128]
    # Same layer indices, hence the same state_dict keys: pools at 6, 13 and 20.
    assert [i for i, m in enumerate(model.features) if isinstance(m, nn.MaxPool2d)] == [6, 13,
                                                                                          20]
    assert tuple(model.head[2].weight.shape) == (128, 128 * (shape[1] // 8) ** 2)


@pytest.mark.parametrize("shape", [(1, 16, 16), (3, 28, 28), (3, 16, 128)])
def test_more_blocks_than_the_image_has_pixels_for_still_build_and_run(shape):
    # Before issue 12 this raised ValueError at build time, which would stop the worker.
    arch = ArchConfig(blocks=MAX_BLOCKS, channels=4, activation="relu")
    model = build_model(arch, shape, 10)
    # Pools only while the map is at least 2 pixels across: 16 -> 1 after 4, 28 -> 1 after 4.
    assert _pools(model) == 4
    assert len(_conv_widths(model)) == MAX_BLOCKS  # the blocks past the last pool keep convs
    out = model(torch.randn(2, *shape))
    assert out.shape == (2, 10)
    out.sum().backward()


def test_flatten_head_on_a_large_image_is_allowed_and_counted():
    one_block = {"blocks": 1, "channels": 32}
    flatten = build_model(ArchConfig(**one_block), (1, 128, 128), 10)
    gap = build_model(ArchConfig(**one_block, head="gap"), (1, 128, 128), 10)
    assert count_parameters(flatten) == 32 * 9 + 32 + 32 * 64 * 64 * 10 + 10 == 1_311_050
    assert count_parameters(gap) == 32 * 9 + 32 + 32 * 10 + 10 == 650


@pytest.mark.parametrize("spec", ["mlp", {"choices": ["gap", "mlp"]}])
def test_unknown_head_in_a_study_file_is_rejected_listing_the_valid_ones(spec):
    with pytest.raises(UsageError) as err:
        parse_study({"space": {"head": spec}})
    message = str(err.value)
    assert "space.head" in message and "'mlp'" in message
    assert all(repr(name) in message for name in HEADS)


def test_head_is_a_searchable_choice_and_old_studies_keep_flatten():
    space = parse_study({"space": {"head": {"choices": ["flatten", "gap"]},
                                   "blocks": {"low": 1, "high": MAX_BLOCKS}}}).space
    assert space["head"].choices == ("flatten", "gap")
    assert space["blocks"].high == MAX_BLOCKS
    arch, _ = build_configs({"head": "gap", "blocks": MAX_BLOCKS})
    assert (arch.head, arch.blocks) == ("gap", MAX_BLOCKS)
    # A study stored before issue 12 has no `head` in its space: its networks stay flatten.
    stored = {"blocks": {"name": "blocks", "kind": "int", "low": 1, "high": 3, "log": False}}
    assert "head" not in space_from_dict(stored)
    assert build_configs({"blocks": 2})[0].head == "flatten"


def test_more_blocks_than_the_model_allows_are_rejected():
    with pytest.raises(UsageError, match=f"accepted: an integer from 1 to {MAX_BLOCKS}"):
        parse_study({"space": {"blocks": {"low": 1, "high": MAX_BLOCKS + 1}}})
    with pytest.raises(ValueError, match="head must be one of"):
        ArchConfig(head="mlp")


def test_a_family_network_over_max_params_before_the_search_is_a_warning(caplog):
    # The representative configuration of this space is the seed network: 63,050 parameters.
    space = parse_study({"space": {"channels": {"choices": [32, 64]}, "lr": 0.01}}).space
    with caplog.at_level(logging.WARNING, logger="tuning"):
        FAMILY_MODEL.check(representative(space), (1, 28, 28), 10, Limits(max_params=63_050))
        assert not caplog.records
        FAMILY_MODEL.check(representative(space), (1, 28, 28), 10, Limits(max_params=50_000))
    [record] = caplog.records
    assert record.getMessage().startswith("the network of a typical configuration has 63,050 "
                                          "parameters, over max_params = 50,000: ")
