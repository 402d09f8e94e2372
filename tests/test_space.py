"""Tier 1: study files and the search space, no training."""

from __future__ import annotations

import os
from pathlib import Path

import optuna
import pytest
from helpers import run_cli

from tuning.errors import MESSAGE_CHARS, UsageError
from tuning.model import SEED
from tuning.space import BOUNDS, build_configs, sample
from tuning.storage import fail_for_retry, queue_due_retries
from tuning.strategy import grid_size, grid_space, make_sampler
from tuning.study_file import StudySettings, load_study_file, parse_study
from tuning.train import TrainConfig
from tuning.warm_start import enqueue

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
         "unknown parameter(s) ['learning_rate']"),
        ({"space": {"lr": {"low": "a", "high": 0.1}}},
         "space.lr: expected a finite number > 0, got low='a'"),
        ({"space": {"blocks": {"low": 1.5, "high": 3}}},
         "space.blocks: expected an integer from 1 to 6, got low=1.5"),
        ({"space": {"weight_decay": {"low": 0.0, "high": 0.1, "log": True}}},
         "log range needs low > 0"),
        ({"space": {"optimizer": {"choices": ["adam", "lion"]}}},
         "space.optimizer: 'lion' is not an optimizer; choose from 'adam', 'adamw', 'sgd'"),
        ({"space": {"optimizer": {"choices": []}}}, "non-empty list"),
        # Equal values of different types: Optuna and the grid take them for one.
        ({"space": {"hidden": {"choices": [0, 128, 0.0]}}},
         "space.hidden: choices repeat a value"),
        ({"study": {"model": "pkg.models:build"},
          "space": {"model": {"depth": {"choices": [1, True]}}}}, "choices repeat a value"),
        ({"space": {"lr": {"low": 1e-4, "hi": 0.1}}}, "unknown key(s) ['hi']"),
        ({"space": {"batch_norm": {"low": 0, "high": 1}}}, "not a range"),
        ({"study": {"epochs": 0}}, "epochs must be an integer from 1 to 10000, got 0"),
        ({"study": {"sampler": "bayes"}}, "unknown sampler 'bayes'"),
        ({"study": {"colour": "red"}}, "unknown key(s) ['colour']"),
        ({"extra": {}}, "unknown top-level key(s) ['extra']"),
    ],
)
def test_bad_study_files_name_the_problem(raw, expected):
    with pytest.raises(UsageError) as err:
        parse_study(raw)
    assert expected in str(err.value)


# Messages in the words of a study file: no Python reprs of dataclasses or dicts, no `self.`.
PYTHON_INTERNALS = ("self.", "'kind'", "'name'", "{'", "True", "False", "expected str",
                    "expected bool", "a str ", "a bool ")


@pytest.mark.parametrize(
    ("space", "expected"),
    [
        ({"optimizer": {"choices": ["adamm"]}},
         "space.optimizer: 'adamm' is not an optimizer; choose from 'adam', 'adamw', 'sgd', "
         "'rmsprop'"),
        ({"activation": "tanh"},
         "space.activation: 'tanh' is not an activation; choose from 'none', 'relu'"),
        ({"lr_schedule": {"choices": ["none", "step"]}},
         "space.lr_schedule: 'step' is not a learning-rate schedule; choose from 'none'"),
        ({"kernel": {"choices": [3, 4]}},
         "space.kernel: 4 is even, and a kernel size must be odd"),
        ({"kernel": {"low": 3, "high": 7}},
         "space.kernel: a range of kernel sizes needs an even step, as only odd sizes keep the "
         "image size: e.g. { low = 3, high = 7, step = 2 }"),
        ({"lr_schedule": 3}, "space.lr_schedule: expected a string, got 3"),
        ({"batch_norm": "yes"}, "space.batch_norm: expected true or false, got 'yes'"),
        ({"batch_norm": {"low": 0, "high": 1}},
         "space.batch_norm: takes a value (true or false) or choices, not a range; "
         "got { low = 0, high = 1 }"),
    ],
)
def test_values_the_configs_refuse_are_named_in_plain_words(space, expected):
    with pytest.raises(UsageError) as err:
        parse_study({"space": space})
    message = str(err.value)
    assert expected in message
    assert not any(internal in message for internal in PYTHON_INTERNALS), message


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"optimizer": "adamm"},
         "enqueue[0]: optimizer = 'adamm' is not among its space's choices 'adam', 'sgd'"),
        ({"lr": 5.0}, "enqueue[0]: lr = 5.0 is outside its space's range 0.0001..0.1"),
        ({"lr": "fast"},
         "enqueue[0]: lr = 'fast' is not a number (its space's range is 0.0001..0.1)"),
        ({"blocks": 1.5},
         "enqueue[0]: blocks = 1.5 is not an integer (its space's range is 1..3)"),
        ({"dropout": 0.3},
         "enqueue[0]: dropout = 0.3 is not one of its space's values 0.0..0.5 in steps of 0.25"),
        ({"nesterov": 1}, "enqueue[0]: nesterov = 1 is not among its space's choices true, "
                          "false"),
    ],
)
def test_an_enqueued_value_outside_the_space_says_what_the_space_holds(config, expected):
    space = {"optimizer": {"choices": ["adam", "sgd"]},
             "lr": {"low": 1e-4, "high": 1e-1, "log": True},
             "blocks": {"low": 1, "high": 3},
             "dropout": {"low": 0.0, "high": 0.5, "step": 0.25},
             "nesterov": {"choices": [True, False]}}
    with pytest.raises(UsageError) as err:
        parse_study({"space": space, "enqueue": [config]})
    message = str(err.value)
    assert expected in message
    assert not any(internal in message for internal in PYTHON_INTERNALS), message


def test_a_long_list_of_choices_is_cut_in_an_enqueue_message():
    with pytest.raises(UsageError) as err:
        parse_study({"space": {"channels": {"choices": list(range(1, 101))}},
                     "enqueue": [{"channels": 500}]})
    assert "choices 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 and 90 more" in str(err.value)


def test_all_problems_are_reported_at_once():
    with pytest.raises(UsageError) as err:
        parse_study({"space": {"lr": {"low": 1, "high": 0}, "blocks": 9}})
    assert "space.lr" in str(err.value) and "space.blocks" in str(err.value)


def test_seed_study_is_the_tutorial_configuration():
    study = load_study_file(ROOT / "tuning" / "studies" / "seed.toml")
    assert all(p.kind == "fixed" for p in study.space.values())
    arch, train = build_configs({n: p.value for n, p in study.space.items()})
    assert arch == SEED
    assert (train.optimizer, train.lr, train.batch_size) == ("adam", 0.001, 100)
    assert train.crop_padding == 4 and train.hflip is False
    assert train == TrainConfig()  # the dataclass defaults are the tutorial's too


@pytest.mark.parametrize("path", sorted((ROOT / "tuning" / "studies").glob("*.toml")),
                         ids=lambda p: p.name)
def test_every_shipped_study_file_parses(path):
    load_study_file(path)


def test_the_default_study_starts_from_two_batch_normalized_cnns_with_nothing_left_to_chance():
    study_file = load_study_file(ROOT / "tuning" / "studies" / "mnist.toml")
    first, second = study_file.enqueue
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    enqueue(study, [(first, "study file"), (second, "study file")])
    for queued in (first, second):
        params = sample(study.ask(), study_file.space)
        # Every parameter the sampler would draw for it is given: a parameter added to the
        # space needs a value here too, or a queued trial would be partly random.
        assert {k: v for k, v in params.items() if study_file.space[k].kind != "fixed"} == queued
    arch, train = build_configs(params)
    assert [arch.block_channels(i) for i in range(arch.blocks)] == [32, 64, 128]
    assert (arch.activation, arch.batch_norm, arch.dropout, arch.hidden) == ("relu", True, 0.25, 0)
    assert (train.optimizer, train.lr, train.batch_size, train.lr_schedule) == (
        "adam", 0.003, 64, "cosine")
    # The second is the first with random crops.
    assert {k: v for k, v in second.items() if first[k] != v} == {"crop_padding": 1}


def test_conditional_parameters_are_sampled_only_where_they_apply():
    space = load_study_file(ROOT / "tuning" / "studies" / "mnist.toml").space
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


@pytest.mark.parametrize("optimizers", [["adam", "sgd"], "sgd", "adam"])
def test_the_grid_visits_each_configuration_once(optimizers):
    # Momentum applies to sgd only: crossed with adam, its values would run adam's
    # configurations twice each.
    optimizer = {"choices": optimizers} if isinstance(optimizers, list) else optimizers
    space = parse_study({"study": {"sampler": "grid"}, "space": {
        "optimizer": optimizer, "momentum": {"choices": [0.0, 0.9]},
        "lr": {"choices": [0.001, 0.01]}, "repeat": {"choices": [0, 1]}}}).space
    expected = {("adam", "sgd"): 12, "sgd": 8, "adam": 4}[
        tuple(optimizers) if isinstance(optimizers, list) else optimizers]
    assert grid_size(space) == expected
    study = optuna.create_study(sampler=make_sampler("grid", 3, space))
    configurations = []
    for _ in range(expected):
        trial = study.ask()
        configurations.append(tuple(sorted(sample(trial, space).items())))
        study.tell(trial, 1.0)
    assert len(set(configurations)) == expected
    # A retried point (its trial failed, then queued again with its grid point) fills its
    # own place: the grid still ends with every configuration once.
    study = optuna.create_study(sampler=make_sampler("grid", 3, space))
    first = study.ask()
    cut_short = tuple(sorted(sample(first, space).items()))
    fail_for_retry(study._storage, first._trial_id)
    queue_due_retries(study)
    configurations = []
    for _ in range(expected):
        trial = study.ask()
        configurations.append(tuple(sorted(sample(trial, space).items())))
        study.tell(trial, 1.0)
    assert configurations[0] == cut_short and len(set(configurations)) == expected


def test_a_grid_study_begun_on_the_whole_grid_is_refused_not_run_wrong():
    # An earlier tuning's grid crossed momentum with adam too: its trials' point numbers mean
    # other configurations in the grid kept now, which would run some twice and others never.
    space = parse_study({"study": {"sampler": "grid"}, "space": {
        "optimizer": {"choices": ["adam", "sgd"]}, "momentum": {"choices": [0.0, 0.9]},
        "lr": {"choices": [0.001, 0.01]}}}).space
    study = optuna.create_study(sampler=optuna.samplers.GridSampler(grid_space(space), seed=3))
    for _ in range(4):
        trial = study.ask()
        sample(trial, space)
        study.tell(trial, 1.0)
    resumed = optuna.load_study(study_name=study.study_name, storage=study._storage,
                                sampler=make_sampler("grid", 3, space))
    with pytest.raises(UsageError, match="run by an earlier tuning"):
        resumed.ask()
    assert resumed.trials[-1].state == optuna.trial.TrialState.FAIL  # not left running


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        load_study_file(tmp_path / "nope.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[space\nlr = ")
    with pytest.raises(UsageError, match="not valid TOML"):
        load_study_file(broken)


def test_space_survives_the_roundtrip_through_study_attributes():
    from tuning.space import space_from_dict

    study = load_study_file(ROOT / "tuning" / "studies" / "mnist.toml")
    assert space_from_dict(study.space_dict()) == study.space


# Values that would reach the allocator, run for ever or flood the terminal.

@pytest.mark.parametrize(
    ("space", "expected"),
    [
        ({"channels": 10**9},
         "space.channels: got 1000000000; accepted: an integer from 1 to 1024"),
        ({"hidden": {"low": 0, "high": 10**12}},
         "space.hidden: got high=1000000000000; accepted: an integer from 0 to 8192"),
        ({"channels": {"choices": [16, 10**9]}}, "space.channels: got 1000000000;"),
        ({"channels": {"low": -4, "high": 8}}, "space.channels: got low=-4;"),
        ({"batch_size": {"choices": [64, 10**7]}}, "an integer from 1 to 65536"),
        ({"kernel": 1001}, "space.kernel: got 1001; accepted: an integer from 1 to 15"),
        ({"crop_padding": 10**6}, "space.crop_padding: got 1000000;"),
        ({"repeat": {"choices": [0, 10**12]}}, "space.repeat: got 1000000000000;"),
        ({"lr": 10**400}, "space.lr: got 1000000000"),  # no float holds it
    ],
)
def test_sizes_out_of_bounds_are_rejected_as_value_range_or_choice(space, expected):
    with pytest.raises(UsageError) as err:
        parse_study({"space": space})
    assert expected in str(err.value)


def test_the_ends_of_every_bound_are_accepted():
    for name, bounds in BOUNDS.items():
        if name in ("epochs", "seed"):
            settings = StudySettings(**{name: bounds.low}), StudySettings(**{name: bounds.high})
            assert not any(s.problems() for s in settings)
        elif isinstance(bounds.high, int) and not (name == "kernel" and bounds.high % 2 == 0):
            parse_study({"space": {name: {"choices": [bounds.low, bounds.high]}}})


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("lr = { low = nan, high = 1 }", "space.lr: got low=nan; accepted: a finite number > 0"),
        ("lr = inf", "space.lr: got inf; accepted: a finite number > 0"),
        ("weight_decay = nan", "space.weight_decay: got nan; accepted: a finite number >= 0"),
        ("l1 = { low = 0.0, high = inf }", "space.l1: got high=inf"),
        ("dropout = { choices = [0.1, -nan] }", "space.dropout: got nan"),
        ("lr = { low = 0.001, high = 0.1, step = inf }", "step must be a finite positive float"),
    ],
)
def test_nan_and_infinity_are_rejected(tmp_path, toml, expected):
    path = tmp_path / "study.toml"
    path.write_text(f"[space]\n{toml}\n")
    with pytest.raises(UsageError) as err:
        load_study_file(path)
    assert expected in str(err.value)


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"epochs": 1_000_000}, "epochs must be an integer from 1 to 10000, got 1000000"),
        ({"seed": -1}, "seed must be an integer from 0 to 2147483647, got -1"),
        ({"seed": 2**40}, "seed must be an integer from 0 to 2147483647, got 1099511627776"),
        # seed + trial number must stay below 2**32, numpy's limit
        ({"seed": 2**31}, "seed must be an integer from 0 to 2147483647, got 2147483648"),
        ({"seed": 1.5}, "seed must be an integer from 0 to 2147483647, got 1.5"),
    ],
)
def test_epochs_and_seed_are_bounded_in_the_file_and_on_the_command_line(settings, expected):
    # The command line's overrides reach the same StudySettings.problems().
    assert expected in StudySettings(**settings).problems()
    with pytest.raises(UsageError) as err:
        parse_study({"study": settings})
    assert f"study: {expected}" in str(err.value)


def _unknown_keys(count: int, width: int) -> str:
    return "".join(f"{'k' * width}{i} = {i}\n" for i in range(count))


@pytest.mark.parametrize("megabytes", [0.9, 6.5])
def test_a_huge_study_file_of_unknown_keys_gets_a_short_error(tmp_path, megabytes):
    count = int(megabytes * 1e6 / 3 / 40)
    path = tmp_path / "huge.toml"
    path.write_text(_unknown_keys(count, 30) + "[study]\n" + _unknown_keys(count, 30)
                    + "[space]\n" + _unknown_keys(count, 30))
    with pytest.raises(UsageError) as err:
        load_study_file(path)
    message = str(err.value)
    assert len(message) <= MESSAGE_CHARS and "\n" not in message
    assert f"and {count - 5} more" in message or "larger than 1 MiB" in message


def test_many_problems_are_capped_and_counted():
    choices = list(range(10**5, 2 * 10**5))
    with pytest.raises(UsageError) as err:
        parse_study({"space": {"channels": {"choices": choices}, "x" * 10**6: 1},
                     "study": {"dataset": "y" * 10**6}})
    message = str(err.value)
    assert len(message) <= MESSAGE_CHARS
    assert f"{len(choices) + 2} problems, the first" in message
    assert "unknown dataset 'yyyyy" in message and "space.channels: got 100000;" in message


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (bytes(range(256)) * 64, "is not UTF-8 text (byte 128)"),
        (b"\x00\x01garbage\xff", "is not UTF-8 text (byte 9)"),
        (b"x = " + b"[" * 5000 + b"]" * 5000, "is not valid TOML"),
        (b"[study]\nseed = 1" + b"0" * 5000, "is not valid TOML"),
        (b"x" * (2**20 + 1), "larger than 1 MiB"),
    ],
    ids=["binary", "binary-short", "deep-nesting", "huge-integer", "over-1-mib"],
)
def test_garbage_study_files_are_one_line_usage_errors(tmp_path, content, expected):
    path = tmp_path / "garbage.toml"
    path.write_bytes(content)
    with pytest.raises(UsageError) as err:
        load_study_file(path)
    assert expected in str(err.value) and "\n" not in str(err.value)
    assert len(str(err.value)) <= MESSAGE_CHARS


def test_a_directory_or_an_unopenable_path_is_named_as_such(tmp_path):
    with pytest.raises(UsageError, match="is a directory"):
        load_study_file(tmp_path)
    with pytest.raises(UsageError, match="cannot be read: File name too long"):
        load_study_file(tmp_path / ("x" * 300 + ".toml"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_an_unreadable_study_file_is_a_usage_error(tmp_path):
    locked = tmp_path / "locked.toml"
    locked.write_text("[study]\n")
    locked.chmod(0)
    with pytest.raises(UsageError, match="cannot be read: Permission denied"):
        load_study_file(locked)


@pytest.mark.slow
@pytest.mark.parametrize(("args", "expected"), [
    (["--seed", "-1"], "seed must be an integer from 0 to 2147483647, got -1"),
    (["--epochs", "1000000"], "epochs must be an integer from 1 to 10000, got 1000000"),
], ids=["seed", "epochs"])
def test_out_of_bounds_flags_exit_2_before_a_study_is_stored(workdir, args, expected):
    result = run_cli(*args, "--trials", "1", "--dataset", "mnist-sample", cwd=workdir,
                     timeout=120)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and expected in result.stderr
    assert sorted(workdir.rglob("*.db*")) == []
