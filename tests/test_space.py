"""Tier 1: study files and the search space, no training."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from tuning.errors import UsageError
from tuning.model import SEED
from tuning.space import build_configs, grid_space, load_study_file, parse_study, sample
from tuning.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def test_inverted_range_is_rejected_naming_key_and_values():
    with pytest.raises(UsageError) as err:
        parse_study({"space": {"lr": {"low": 0.1, "high": 0.001, "log": True}}})
    assert "space.lr" in str(err.value)
    assert "low=0.1" in str(err.value) and "high=0.001" in str(err.value)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"space": {"lr": {"low": 0.1, "high": 0.1}}}, "empty or inverted range"),
        ({"space": {"learning_rate": {"low": 1e-4, "high": 1e-1}}},
         "unknown parameter 'learning_rate'"),
        ({"space": {"lr": {"low": "a", "high": 0.1}}}, "expected float, got 'a'"),
        ({"space": {"blocks": {"low": 1.5, "high": 3}}}, "expected int, got 1.5"),
        ({"space": {"weight_decay": {"low": 0.0, "high": 0.1, "log": True}}},
         "log range needs low > 0"),
        ({"space": {"optimizer": {"choices": ["adam", "lion"]}}}, "'lion' is not allowed"),
        ({"space": {"optimizer": {"choices": []}}}, "non-empty list"),
        ({"space": {"lr": {"low": 1e-4, "hi": 0.1}}}, "unknown key(s) ['hi']"),
        ({"space": {"batch_norm": {"low": 0, "high": 1}}}, "not a range"),
        ({"study": {"epochs": 0}}, "epochs must be a positive integer, got 0"),
        ({"study": {"sampler": "bayes"}}, "unknown sampler 'bayes'"),
        ({"study": {"colour": "red"}}, "unknown key(s) ['colour']"),
        ({"extra": {}}, "unknown top-level key(s) ['extra']"),
    ],
)
def test_bad_study_files_name_the_problem(raw, expected):
    with pytest.raises(UsageError) as err:
        parse_study(raw)
    assert expected in str(err.value)


def test_all_problems_are_reported_at_once():
    with pytest.raises(UsageError) as err:
        parse_study({"space": {"lr": {"low": 1, "high": 0}, "blocks": 9}})
    assert "space.lr" in str(err.value) and "space.blocks" in str(err.value)


def test_seed_study_is_the_tutorial_configuration():
    study = load_study_file(ROOT / "studies" / "seed.toml")
    assert all(p.kind == "fixed" for p in study.space.values())
    arch, train = build_configs({n: p.value for n, p in study.space.items()})
    assert arch == SEED
    assert (train.optimizer, train.lr, train.batch_size) == ("adam", 0.001, 100)
    assert train.crop_padding == 4 and train.hflip is False
    assert train == TrainConfig()  # the dataclass defaults are the tutorial's too


@pytest.mark.parametrize("path", sorted((ROOT / "studies").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_study_file_parses(path):
    load_study_file(path)


def test_conditional_parameters_are_sampled_only_where_they_apply():
    space = load_study_file(ROOT / "studies" / "mnist.toml").space
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(40):
        trial = study.ask()
        params = sample(trial, space)
        seen.add(params["optimizer"])
        assert ("momentum" in params) == (params["optimizer"] in {"sgd", "rmsprop"})
        assert ("nesterov" in params) == (params["optimizer"] == "sgd")
        build_configs(params)  # every sample is a valid configuration
        study.tell(trial, 1.0)
    assert seen == {"adam", "adamw", "sgd", "rmsprop"}


def test_grid_covers_choices_and_spreads_ranges():
    space = parse_study({"space": {
        "optimizer": {"choices": ["adam", "sgd"]},
        "lr": {"low": 1e-4, "high": 1e-2, "log": True},
        "blocks": {"low": 1, "high": 3},
        "hflip": False,
    }}).space
    grid = grid_space(space)
    assert grid["optimizer"] == ["adam", "sgd"]
    assert grid["blocks"] == [1, 2, 3]
    assert grid["lr"] == pytest.approx([1e-4, 1e-3, 1e-2])
    assert "hflip" not in grid


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        load_study_file(tmp_path / "nope.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[space\nlr = ")
    with pytest.raises(UsageError, match="not valid TOML"):
        load_study_file(broken)


def test_space_survives_the_roundtrip_through_study_attributes():
    from tuning.space import space_from_dict

    study = load_study_file(ROOT / "studies" / "mnist.toml")
    assert space_from_dict(study.space_dict()) == study.space
