"""`tuning export` and `tuning predict`, end to end on tiny real studies: the exported files, the
model loaded again (tuning.load_model, and model.pt2 in a Python without tuning), its test
accuracy against the study's own evaluation, --refit, a torchvision architecture, and every bad
input as one line with exit status 2."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna
import pytest
import torch
from helpers import ROOT, run_cli
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial
from PIL import Image

import tuning
from tuning.command import main as tuning_main
from tuning.data import load_arrays, to_device
from tuning.device import resolve_device
from tuning.errors import UsageError
from tuning.evaluate import held_out_metrics, trial_model
from tuning.export import best_epoch, choose_trial
from tuning.export import main as export_main
from tuning.exported import (
    OUTPUT_CHECK_IMAGES,
    BuilderUnavailable,
    Classifier,
    ExportError,
    NetworkChanged,
    NotRebuilt,
    load_model,
    load_program,
    output_check_images,
)
from tuning.model import ArchConfig
from tuning.model_card import model_card
from tuning.networks import ModelBuildError, ModelSpec
from tuning.portable import ProgramRejected, check_inputs, check_program, write_programs
from tuning.report_heldout import reported_trial
from tuning.report_stats import StudyView
from tuning.reproduce import reproduction
from tuning.sources import DataConfig
from tuning.space import Param
from tuning.storage import artifact_store, open_storage
from tuning.study import stored_definition
from tuning.study_file import StudySettings, load_study_file, parse_study, tomllib
from tuning.train import TrainConfig

pytestmark = pytest.mark.slow

STUDY_FILE = """
[study]
dataset = "mnist-sample"
epochs = 1
sampler = "grid"
pruner = "none"
seed = 0

[space]
lr = { choices = [0.003, 0.01] }
channels = 4
activation = "relu"
batch_size = 256
"""


def _load(workdir, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(
        f"sqlite:///{workdir}/studies/{name}.db", heartbeat=False))


def _export(workdir, name: str, out, *extra: str) -> int:
    return export_main(["--study", name, "--storage", f"sqlite:///{workdir}/studies/{name}.db",
                        "--artifacts", str(workdir / "artifacts"), "--out", str(out),
                        "--device", "cpu", "--quiet", *extra])


def _test_images(arrays) -> torch.Tensor:
    """The test split as the exported model takes it: float (N, C, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(arrays.test_x.transpose(0, 3, 1, 2))).float() \
        .div(255.0)


def _one_line_error(capsys) -> str:
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1, captured.err
    assert "Traceback" not in captured.err and err.startswith("error:")
    return err


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    """A real 2-trial, 1-epoch study on mnist-sample, with its checkpoints."""
    workdir = tmp_path_factory.mktemp("export")
    (workdir / "studies").mkdir()
    (workdir / "studies" / "tiny.toml").write_text(STUDY_FILE)
    result = run_cli("--study", "tiny", "--trials", "2", "--device", "cpu", cwd=workdir)
    assert result.returncode == 0, result.stderr
    return workdir


@pytest.fixture(scope="module")
def exported(study_dir):
    out = study_dir / "exported"
    assert _export(study_dir, "tiny", out) == 0
    return out


@pytest.fixture(scope="module")
def arrays():
    return load_arrays("mnist-sample")


def test_export_writes_weights_config_programs_and_card(exported, study_dir, capsys):
    names = {p.name for p in exported.iterdir()}
    assert {"weights.pt", "config.json", "model.pt2", "README.md"} <= names
    assert "model.onnx" not in names  # onnx is not installed here: skipped and said
    config = json.loads((exported / "config.json").read_text())
    study = _load(study_dir, "tiny")
    assert config["trial"] == study.best_trial.number
    assert config["params"] == {"lr": study.best_trial.params["lr"], "channels": 4,
                                "activation": "relu", "batch_size": 256}
    assert config["model"] == {"model": "cnn", "weights": None}
    assert config["input_shape"] == [1, 28, 28] and config["num_classes"] == 10
    assert config["class_names"] == [str(i) for i in range(10)]
    assert config["normalization"]["mean"] == study.user_attrs["data"]["mean"]
    assert config["data"]["sha256"] == study.user_attrs["data"]["sha256"]
    assert config["weights"]["source"] == "checkpoint"
    assert config["files"]["model.onnx"] == "skipped: the onnx package is not installed"
    assert config["test"]["n"] == 1000
    low, high = config["test"]["accuracy_ci"]
    assert low < config["test"]["accuracy"] < high
    assert {"torch", "torchvision", "tuning"} <= set(config["versions"])
    # The same strings as the study's worker records give.
    worker = next(v for k, v in study.user_attrs.items() if k.startswith("worker:"))
    assert config["versions"]["torchvision"] == worker["torchvision"]
    # Loadable as plain tensors, into the network the config describes.
    state = torch.load(exported / "weights.pt", weights_only=True)
    network = ModelSpec(**config["model"]).build(config["params"], (1, 28, 28), 10,
                                                 load_weights=False)
    network.load_state_dict(state)
    card = (exported / "README.md").read_text()
    assert f"{config['test']['accuracy']:.4f}" in card and "checkpoint artifact" in card
    assert "tuning export --study tiny --trial" in card and "torch.export.load" in card
    assert "model.onnx`: skipped" in card
    assert "- `reproduce.toml`: a study file that trains this trial again" in card


def test_loaded_model_reproduces_the_test_accuracy_of_the_study(exported, study_dir, arrays):
    config = json.loads((exported / "config.json").read_text())
    model = tuning.load_model(exported)
    assert not model.training and model.device == torch.device("cpu")
    assert model.class_names == tuple(config["class_names"]) and model.input_shape == (1, 28, 28)
    with torch.no_grad():
        predicted = model(_test_images(arrays)).argmax(1).numpy()
    accuracy = float((predicted == arrays.test_y).mean())
    assert accuracy == config["test"]["accuracy"]
    # The study's own evaluation of the trial (what the report's held-out test computes).
    study = _load(study_dir, "tiny")
    settings, space = stored_definition(study)
    runtime = resolve_device("cpu")
    data = to_device(arrays.normalized_as(study.user_attrs["data"]), runtime.device)
    obtained = trial_model(study.best_trial, space, data, runtime, settings.epochs,
                           artifact_store(study_dir / "artifacts"), settings.network())
    assert obtained.retrained_val_loss is None  # its checkpoint
    assert held_out_metrics(obtained.model, data, runtime)["accuracy"] == accuracy


def test_model_pt2_runs_without_tuning(exported, arrays, tmp_path):
    images = _test_images(arrays)[:5]
    torch.save(images, tmp_path / "images.pt")
    program = textwrap.dedent(f"""
        import sys
        sys.modules["tuning"] = None  # importing tuning would fail: it must not be needed
        import torch
        images = torch.load({str(tmp_path / 'images.pt')!r}, weights_only=True)
        model = torch.export.load({str(exported / 'model.pt2')!r}).module()
        torch.save(model(images).detach(), {str(tmp_path / 'pt2.pt')!r})
        scripted = torch.jit.load({str(exported / 'model.torchscript.pt')!r})
        torch.save(scripted(images[:3]).detach(), {str(tmp_path / 'ts.pt')!r})
        assert sys.modules["tuning"] is None
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", program], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    with torch.no_grad():
        expected = load_model(exported)(images)
    assert torch.allclose(torch.load(tmp_path / "pt2.pt"), expected, atol=1e-5)
    assert torch.allclose(torch.load(tmp_path / "ts.pt"), expected[:3], atol=1e-5)


def test_import_tuning_does_not_import_torch():
    result = subprocess.run(
        [sys.executable, "-c", "import sys, tuning; assert 'torch' not in sys.modules; "
                               "assert callable(tuning.load_model)"],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_refit_trains_on_train_and_validation_and_says_so(study_dir, capsys):
    out = study_dir / "refit"
    assert _export(study_dir, "tiny", out, "--refit") == 0
    stdout = capsys.readouterr().out
    assert "refit" in stdout and "test accuracy" in stdout
    assert stdout.splitlines()[0].endswith(", README.md, reproduce.toml")  # every file written
    config = json.loads((out / "config.json").read_text())
    assert config["weights"]["source"] == "refit"
    assert config["weights"]["train_images"] == 3600 + 400 and config["weights"]["epochs"] == 1
    assert "Refit: the configuration retrained" in (out / "README.md").read_text()
    assert "--refit" in config["command"]
    assert load_model(out).config["weights"]["source"] == "refit"


def test_an_export_cut_short_leaves_the_earlier_one_whole(exported, study_dir, tmp_path,
                                                          monkeypatch):
    import shutil

    import tuning.export

    out = tmp_path / "earlier"
    shutil.copytree(exported, out)
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    (out / ".export-in-progress-x1").mkdir()  # left by an export killed before it cleaned up

    def card_fails(config, where):
        raise RuntimeError("the process dies while writing the card")

    monkeypatch.setattr(tuning.export, "model_card", card_fails)
    with pytest.raises(RuntimeError, match="dies while writing"):
        _export(study_dir, "tiny", out, "--trial", "0")
    # Not a mix of two exports, nor a half-written one that predict would take.
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before
    assert load_model(out).config["trial"] == json.loads(before["config.json"])["trial"]


def test_an_export_of_another_trial_says_which_one_it_replaces(exported, study_dir, tmp_path,
                                                                capsys):
    out = tmp_path / "earlier"
    shutil.copytree(exported, out)
    was = json.loads((out / "config.json").read_text())["trial"]
    other = 1 - was  # the study's other trial
    assert _export(study_dir, "tiny", out, "--trial", str(other)) == 0
    assert (f"it replaces the export of trial #{was} of study 'tiny' that was there"
            in capsys.readouterr().out)
    assert _export(study_dir, "tiny", out, "--trial", str(other)) == 0  # the same trial again
    assert "replaces" not in capsys.readouterr().out


def test_another_studys_export_is_written_over_only_with_replace(exported, study_dir, tmp_path,
                                                                 capsys):
    out = tmp_path / "best"
    shutil.copytree(exported, out)
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "study": "pets", "trial": 7}))
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    assert _export(study_dir, "tiny", out) == 2
    assert _one_line_error(capsys).endswith(
        "best' holds the export of trial #7 of study 'pets': give another --out, or --replace "
        "to write over it")
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before
    assert _export(study_dir, "tiny", out, "--replace") == 0
    assert ("it replaces the export of trial #7 of study 'pets' that was there"
            in capsys.readouterr().out)
    assert json.loads((out / "config.json").read_text())["study"] == "tiny"


def test_a_failed_export_leaves_no_folders_behind(study_dir, tmp_path, capsys, monkeypatch):
    """The network cannot be had (a torchvision study's weights file gone, a builder that
    fails, a Ctrl-C) after --out was made: the folders the export created go again, and an
    --out that was there before stays."""
    import tuning.export

    def failing(failure: BaseException, out: Path):
        def trial_weights(*args, **kwargs):
            assert out.is_dir()  # made before the network is obtained, to fail early
            raise failure

        monkeypatch.setattr(tuning.export, "trial_weights", trial_weights)

    out = tmp_path / "new" / "deeper" / "out"
    for failure in (UsageError("weights file /gone/resnet18.pth does not exist or is not a file"),
                    ModelBuildError("builder 'mine:build' returned None")):
        failing(failure, out)
        assert _export(study_dir, "tiny", out) == 2
        assert str(failure) in _one_line_error(capsys)
        assert not (tmp_path / "new").exists(), failure
    failing(KeyboardInterrupt(), out)
    with pytest.raises(KeyboardInterrupt):
        _export(study_dir, "tiny", out)
    assert not (tmp_path / "new").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    failing(UsageError("weights file /gone/resnet18.pth does not exist"), mine)
    assert _export(study_dir, "tiny", mine) == 2
    _one_line_error(capsys)
    assert mine.is_dir() and not list(mine.iterdir())


def test_without_a_checkpoint_the_trial_is_retrained_with_its_seed(study_dir, tmp_path,
                                                                     capsys):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "retrained"
    assert _export(study_dir, "tiny", out, "--artifacts", str(tmp_path / "empty")) == 0
    assert "retrained with seed" in capsys.readouterr().out
    weights = json.loads((out / "config.json").read_text())["weights"]
    assert weights["source"] == "retrained" and weights["epochs"] == 1
    assert "for 1 epoch," in weights["how"] and "1 epochs" not in weights["how"]
    # On the CPU a retrain repeats the trial: the same validation loss.
    assert weights["retrained_val_loss"] == pytest.approx(weights["trial_val_loss"], rel=1e-4)


def test_a_retrain_runs_with_as_many_cpu_threads_as_its_trial(monkeypatch):
    # Sums split over another number of threads round differently: a trial trained by one of
    # two single-thread workers repeats exactly only on one thread.
    from tuning import evaluate

    threads_seen = []

    def retrain(*args, **kwargs):
        threads_seen.append(torch.get_num_threads())
        return torch.nn.Linear(1, 1)

    monkeypatch.setattr(evaluate, "retrain", retrain)
    monkeypatch.setattr(evaluate, "evaluate", lambda *args: {"loss": 0.5})
    previous = torch.get_num_threads()
    torch.set_num_threads(2)  # as a report on two cores runs
    try:
        for recorded, expected in ((1, 1), (None, 2)):  # None: a trial that recorded none
            trial = create_trial(value=0.5, params={}, distributions={},
                                 user_attrs={"seed": 3, "cpu_threads": recorded})
            trial_model(trial, {}, SimpleNamespace(val=None), resolve_device("cpu", "off"),
                        epochs=1)
            assert threads_seen[-1] == expected and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)


def test_best_epoch_is_counted_within_a_cross_validation_fold():
    trial = create_trial(value=0.5, params={}, distributions={},
                         intermediate_values={1: 0.9, 2: 0.6, 3: 0.7, 4: 0.8, 5: 0.5, 6: 0.55})
    assert best_epoch(trial, epochs=3) == 2  # step 5 is fold 2's epoch 2
    assert best_epoch(trial, epochs=6) == 5


def test_by_default_a_fixed_configuration_exports_its_first_repeat_as_the_report_tests():
    """Repeats of one fixed configuration differ only by seed: the best of them is flattered by
    its seed, so export, like the report's held-out test, takes the first complete one."""
    fixed = {"lr": Param("lr", "fixed", value=0.01),
             "repeat": Param("repeat", "int", low=0, high=9)}
    study = optuna.create_study()
    study.tell(study.ask(), state=TrialState.PRUNED)
    for loss in (0.4, 0.3, 0.35):
        trial = study.ask()
        trial.suggest_int("repeat", 0, 9)
        study.tell(trial, loss)
    assert study.best_trial.number == 2
    settings = StudySettings()
    view = StudyView(study, study.get_trials(), settings, fixed)
    assert reported_trial(view).number == 1
    assert choose_trial(study, settings, fixed, None).number == 1
    # --trial still chooses any complete trial; one that is not names the default instead.
    assert choose_trial(study, settings, fixed, 2).number == 2
    with pytest.raises(UsageError, match=r"trial 0 .* is PRUNED, not COMPLETE: .*; without "
                                         r"--trial the export takes #1$"):
        choose_trial(study, settings, fixed, 0)
    searched = {**fixed, "lr": Param("lr", "float", low=1e-3, high=1e-1, log=True)}
    assert choose_trial(study, settings, searched, None).number == 2


def test_predict_prints_the_class_of_real_digits(exported, arrays, tmp_path, capsys):
    paths = []
    for i in range(4):
        path = tmp_path / f"digit{i}.png"
        Image.fromarray(arrays.test_x[i, ..., 0]).save(path)
        paths.append(str(path))
    assert tuning_main(["predict", "--model", str(exported), *paths]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    model = load_model(exported)
    with torch.no_grad():
        expected = model(_test_images(arrays)[:4]).softmax(1)
    for line, path, probs in zip(lines, paths, expected, strict=True):
        shown, name, p = line.split("\t")
        assert shown == path and name == model.class_names[int(probs.argmax())]
        assert float(p) == pytest.approx(float(probs.max()), abs=1e-4)
    assert tuning_main(["predict", "--model", str(exported), "--top", "3", paths[0]]) == 0
    assert len(capsys.readouterr().out.strip().split("\t")) == 1 + 2 * 3
    # A colour image of another size is converted and fitted as the study's images were.
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.repeat(arrays.test_x[0], 3, axis=2)).resize((56, 56)).save(rgb)
    assert model.preprocess(rgb).shape == (1, 28, 28)
    assert model.predict([rgb])[0][0] in model.class_names


def test_bad_inputs_exit_2_with_one_line(exported, study_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "studies").mkdir()
    storage = f"sqlite:///{study_dir}/studies/tiny.db"
    # A study that does not exist: refused, and no database is left behind.
    assert export_main(["--study", "nope", "--out", "x"]) == 2
    assert "no study database" in _one_line_error(capsys)
    assert not list((tmp_path / "studies").iterdir()) and not (tmp_path / "x").exists()
    assert export_main(["--study", "tiny", "--storage", storage, "--trial", "99"]) == 2
    assert "no trial 99" in _one_line_error(capsys)
    # --out with other content than an earlier export.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert export_main(["--study", "tiny", "--storage", storage, "--out", "mine"]) == 2
    assert "not empty" in _one_line_error(capsys)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    # A study without a complete trial, then one whose trial 1 was pruned.
    (tmp_path / "studies" / "empty.toml").write_text(STUDY_FILE)
    from tuning.search import main as search_main

    assert search_main(["--study", "empty", "--create-only", "--device", "cpu", "-q"]) == 0
    capsys.readouterr()
    assert export_main(["--study", "empty"]) == 2
    assert "no complete trial" in _one_line_error(capsys)
    study = _load(tmp_path, "empty")
    lr = CategoricalDistribution([0.003, 0.01])
    study.add_trial(create_trial(value=1.0, params={"lr": 0.003}, distributions={"lr": lr}))
    study.add_trial(create_trial(state=TrialState.PRUNED, params={"lr": 0.01},
                                 distributions={"lr": lr}, intermediate_values={1: 2.0}))
    assert export_main(["--study", "empty", "--trial", "1"]) == 2
    assert "PRUNED, not COMPLETE" in _one_line_error(capsys)
    # predict: a file that is not an image (after a good one: nothing is printed), a missing
    # image, a missing or foreign model directory.
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(good)
    (tmp_path / "notes.png").write_text("not an image")
    for argv, expected in (
            (["--model", str(exported), str(good), "notes.png"], "cannot be decoded"),
            (["--model", str(exported), "missing.png"], "does not exist"),
            (["--model", "no-such-dir", str(good)], "no exported model"),
            (["--model", "mine", str(good)], "not an exported model")):
        assert tuning_main(["predict", *argv]) == 2
        captured_err = _one_line_error(capsys)
        assert expected in captured_err, captured_err
    with pytest.raises(ExportError):
        load_model(tmp_path / "mine")


def test_a_torchvision_architecture_exports(tmp_path, arrays):
    """resnet18 on a small .npz: 150 digits shrunk to 8x8 (on the 28x28 sample one epoch of
    resnet18 takes minutes on a 2-core CPU)."""
    small = [np.stack([np.asarray(Image.fromarray(img[..., 0]).resize((8, 8),
                                                                      Image.Resampling.BILINEAR))
                       for img in x]) for x in (arrays.train_x[:120], arrays.test_x[:30])]
    np.savez(tmp_path / "digits.npz", x_train=small[0], y_train=arrays.train_y[:120],
             x_test=small[1], y_test=arrays.test_y[:30])
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "rn.toml").write_text(textwrap.dedent(f"""
        [study]
        dataset = "{tmp_path / 'digits.npz'}"
        model = "resnet18"
        epochs = 1
        sampler = "random"
        pruner = "none"

        [space]
        lr = 0.001
        batch_size = 128
        crop_padding = 0
    """))
    result = run_cli("--study", "rn", "--trials", "1", "--device", "cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "exported"
    assert _export(tmp_path, "rn", out) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["model"] == "resnet18" and config["input_shape"] == [1, 8, 8]
    assert config["files"]["model.pt2"] == "written"
    model = load_model(out)
    npz = load_arrays(str(tmp_path / "digits.npz"))
    with torch.no_grad():
        predicted = model(_test_images(npz)).argmax(1).numpy()
    assert float((predicted == npz.test_y).mean()) == config["test"]["accuracy"]


class Branchy(torch.nn.Module):
    """A network whose forward takes one of two paths by the values of its input: a trace
    records only the path its example took."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(4 * 4, 3)
        self.b = torch.nn.Linear(4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        if x.mean() > 0:
            return self.a(x)
        return self.b(x)


def test_a_network_that_branches_on_its_input_gets_no_program_and_torch_stays_quiet(
        tmp_path, capfd):
    """Its trace took the branch of random images: it would give all-zero images the other
    branch's logits, silently. torch's TracerWarning, graphs and shape warnings are kept off the
    terminal; the notices say why, in one line each."""
    torch.manual_seed(0)
    classifier = Classifier(Branchy(), [0.5], [0.25]).eval()
    outcome = write_programs(classifier, (1, 4, 4), tmp_path)
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == "", captured
    assert not (tmp_path / "model.torchscript.pt").exists()
    assert not (tmp_path / "model.pt2").exists()
    ts = outcome["model.torchscript.pt"]
    assert ts.startswith("skipped: the trace may not hold for other images (TracerWarning at "
                         "test_export.py:"), ts
    assert outcome["model.pt2"].startswith("skipped: torch.export failed ("), outcome
    assert all("\n" not in what and len(what) < 300 for what in outcome.values())


def test_programs_are_checked_on_images_either_side_of_the_normalization():
    """A program that agrees with the network on random images but not on all-zero ones (a
    trace of one branch) is rejected, naming the input it got wrong."""
    reference = Classifier(torch.nn.Flatten(), [0.5], [0.25]).eval()

    def one_branch(images: torch.Tensor) -> torch.Tensor:
        return reference(images) + (images.mean() < 0.01).float()

    inputs = check_inputs((1, 4, 4), torch.rand(5, 1, 4, 4))
    assert {"all-zero images", "all-one images", "negative values", "5 of the test images"} \
        <= set(inputs)
    with pytest.raises(ProgramRejected, match="on all-zero images differ"):
        check_program(one_branch, reference, inputs)
    check_program(reference, reference, inputs)


def test_programs_were_checked_on_varied_and_real_images(exported):
    config = json.loads((exported / "config.json").read_text())
    assert config["files"]["model.pt2"] == config["files"]["model.torchscript.pt"] == "written"
    assert {"all-zero images", "negative values", "test images"} <= set(config["program_checks"])


def test_both_programs_refuse_images_of_another_shape(exported):
    """A trace alone would take one channel for a colour model, or another size, and give
    logits without a word: the saved TorchScript program checks the shape, as model.pt2's
    guards do."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load's deprecation
        programs = {"model.torchscript.pt": torch.jit.load(exported / "model.torchscript.pt"),
                    "model.pt2": torch.export.load(exported / "model.pt2").module()}
    for name, program in programs.items():
        assert program(torch.rand(3, 1, 28, 28)).shape == (3, 10), name
        for shape in ((2, 3, 28, 28), (2, 1, 29, 28), (1, 28, 28)):
            with pytest.raises((torch.jit.Error, AssertionError, RuntimeError)):
                program(torch.rand(*shape))  # the check's error, or a guard's
    with pytest.raises(torch.jit.Error, match=r"takes float images \(N, 1, 28, 28\) in \[0, "
                                              r"1\], got a tensor of shape \[2, 3, 28, 28\]"):
        programs["model.torchscript.pt"](torch.rand(2, 3, 28, 28))


def _copy(exported, tmp_path, name: str = "copy", **changes):
    """A copy of the export, its config.json changed by `changes` (None: the key removed)."""
    out = tmp_path / name
    shutil.copytree(exported, out)
    config = json.loads((out / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (out / "config.json").write_text(json.dumps(config))
    return out


def test_predict_runs_model_pt2_where_the_builder_cannot_be_imported(exported, arrays,
                                                                     tmp_path, capsys):
    """The builder's module is needed to rebuild the network, not to run model.pt2: predict
    falls back to it, with the same predictions, and says so in one INFO line."""
    moved = _copy(exported, tmp_path, model={"model": "no_such_module_here:build",
                                             "weights": None})
    with pytest.raises(BuilderUnavailable, match="no_such_module_here"):
        load_model(moved)
    paths = []
    for i in range(3):
        path = tmp_path / f"digit{i}.png"
        Image.fromarray(arrays.test_x[i, ..., 0]).save(path)
        paths.append(str(path))
    assert tuning_main(["predict", "--model", str(exported), "--top", "3", *paths]) == 0
    expected = capsys.readouterr().out
    assert tuning_main(["predict", "--model", str(moved), "--top", "3", *paths]) == 0
    captured = capsys.readouterr()
    assert captured.out == expected
    assert len(captured.err.strip().splitlines()) == 1, captured.err
    assert "INFO" in captured.err and "cannot be imported here" in captured.err
    assert "model.pt2" in captured.err
    # Without a program to run instead: one line that fits predict (no workers in it). An
    # export written before the programs were checked on varied images keeps its TorchScript
    # trace out of it (it may hold one branch of the network).
    for name, files in (("none", {"model.pt2": "skipped: torch.export failed (x)",
                                  "model.torchscript.pt": "skipped: x", "model.onnx": "x"}),
                        ("old", {"model.pt2": "skipped: torch.export failed (x)",
                                 "model.torchscript.pt": "written", "model.onnx": "x"})):
        bare = _copy(moved, tmp_path, name, files=files, program_checks=None)
        assert tuning_main(["predict", "--model", str(bare), paths[0]]) == 2
        err = _one_line_error(capsys)
        assert "no_such_module_here" in err and "cannot be imported here" in err, err
        assert "worker" not in err and "no model.pt2" in err, err


def test_a_network_rebuilt_other_than_exported_is_refused_and_predict_runs_model_pt2(
        exported, arrays, tmp_path, capsys, monkeypatch):
    """Weights fit a changed builder's network by their names and shapes alone: the export
    records its logits on seeded images, and a network rebuilt here that does not give them
    is not taken for the exported one."""
    config = json.loads((exported / "config.json").read_text())
    recorded = torch.tensor(config["output_check"])
    assert recorded.shape == (OUTPUT_CHECK_IMAGES, config["num_classes"])
    program = load_program(exported)
    with torch.no_grad():  # the exported network's logits, as the program has them
        assert torch.allclose(program(output_check_images(program.input_shape)), recorded,
                              rtol=1e-3, atol=1e-4)
    image = tmp_path / "digit.png"
    Image.fromarray(arrays.test_x[0, ..., 0]).save(image)
    assert tuning_main(["predict", "--model", str(exported), "--top", "3", str(image)]) == 0
    expected = capsys.readouterr().out
    # The same layers computing another function: as a builder edited after the export.
    monkeypatch.setattr(torch.nn.ReLU, "forward", lambda self, x: torch.tanh(x))
    with pytest.raises(NetworkChanged, match="does not give the logits recorded at its export"):
        load_model(exported)
    assert tuning_main(["predict", "--model", str(exported), "--top", "3", str(image)]) == 0
    captured = capsys.readouterr()
    assert captured.out == expected  # model.pt2's, the exported network's
    assert len(captured.err.strip().splitlines()) == 1 and "WARNING" in captured.err
    assert "does not give the logits recorded" in captured.err and "model.pt2" in captured.err
    monkeypatch.undo()
    # An export written before the check has none, and loads as it did.
    assert isinstance(load_model(_copy(exported, tmp_path, output_check=None)), torch.nn.Module)
    # A damaged record is a damaged config.json, not a changed network.
    for i, damaged in enumerate(([[10 ** 400] * 10] * 3, 7, recorded[:2].tolist(),
                                 [[float("nan")] * 10] * 3)):
        bad = _copy(exported, tmp_path, f"damaged{i}", output_check=damaged)
        with pytest.raises(ExportError, match="output_check is not a 3 x 10 table of finite"):
            load_model(bad)
        assert tuning_main(["predict", "--model", str(bad), str(image)]) == 2
        assert "output_check is not" in _one_line_error(capsys)


def test_predict_runs_model_pt2_where_the_network_cannot_be_rebuilt_with_its_weights(
        exported, arrays, tmp_path, capsys, monkeypatch):
    """model.pt2 holds the network and its weights: a weights.pt missing, damaged or of
    another network, or a builder that now fails, leaves it able to classify. Each is one
    WARNING line naming what failed, and the predictions are the exported network's."""
    image = tmp_path / "digit.png"
    Image.fromarray(arrays.test_x[0, ..., 0]).save(image)
    assert tuning_main(["predict", "--model", str(exported), "--top", "3", str(image)]) == 0
    expected = capsys.readouterr().out
    missing = _copy(exported, tmp_path, "missing")
    (missing / "weights.pt").unlink()
    damaged = _copy(exported, tmp_path, "damaged")
    (damaged / "weights.pt").write_bytes(b"not weights")
    other = _copy(exported, tmp_path, "other")
    state = torch.load(other / "weights.pt", weights_only=True)
    first = next(iter(state))
    torch.save({**state, first: torch.zeros(3, *state[first].shape[1:])}, other / "weights.pt")
    for copy, why in ((missing, "has no weights.pt"),
                      (damaged, "is not a torch weights file"),
                      (other, "does not fit the network config.json describes")):
        with pytest.raises(NotRebuilt, match=why):
            load_model(copy)
        assert tuning_main(["predict", "--model", str(copy), "--top", "3", str(image)]) == 0, why
        captured = capsys.readouterr()
        assert captured.out == expected, why
        assert len(captured.err.strip().splitlines()) == 1, captured.err
        assert "WARNING" in captured.err and why in captured.err, captured.err
        assert "classifying with the export's model.pt2" in captured.err, captured.err

    def fails(*args, **kwargs):
        raise ModelBuildError("model builder mine:build raised KeyError: 'width'")

    monkeypatch.setattr(ModelSpec, "build", fails)
    assert tuning_main(["predict", "--model", str(exported), "--top", "3", str(image)]) == 0
    captured = capsys.readouterr()
    assert captured.out == expected
    assert "cannot be rebuilt: model builder mine:build raised KeyError" in captured.err
    monkeypatch.undo()
    # Nor can the program stand in: both reasons, in one line.
    (missing / "model.pt2").write_bytes(b"not a program")
    assert tuning_main(["predict", "--quiet", "--model", str(missing), str(image)]) == 2
    err = _one_line_error(capsys)
    assert "has no weights.pt; nor can its model.pt2 run instead: " in err, err


def test_the_cards_code_reads_an_image_file_as_predict_does_with_torch_alone(exported,
                                                                              arrays, tmp_path):
    """A user without tuning reads their image as the card shows (Pillow, NumPy, model.pt2):
    an image of another size and mode gets the logits tuning's own loader gives it."""
    card = (exported / "README.md").read_text()
    program, = (block.split("```")[0] for block in card.split("```python\n")[1:]
                if block.startswith("import torch"))
    assert "ImageOps.fit(image, (28, 28), Image.Resampling.BILINEAR)" in program
    digit = Image.fromarray(arrays.test_x[0, ..., 0]).resize((41, 33)).convert("RGB")
    digit.save(tmp_path / "image.png")
    scope: dict = {}
    with contextlib.chdir(tmp_path):
        exec(program, scope)  # noqa: S102 - the card's own code, as a user runs it
    with torch.no_grad():
        expected = load_model(exported)(load_model(exported).preprocess(tmp_path /
                                                                        "image.png")[None])
    assert torch.allclose(scope["logits"], expected, atol=1e-5), (scope["logits"], expected)
    config = json.loads((exported / "config.json").read_text())
    assert "PIL.ImageOps.fit" in config["normalization"]["image_files"]


def test_the_exported_model_refuses_pixels_of_0_to_255_and_takes_float64(exported, arrays):
    """uint8 pixels of 0..255 taken as [0, 1] would be classified wrongly without a word."""
    model = load_model(exported)
    pixels = torch.from_numpy(np.ascontiguousarray(arrays.test_x[:4].transpose(0, 3, 1, 2)))
    for runs in (model, load_program(exported)):
        with pytest.raises(ExportError, match=r"got torch.uint8: divide pixels of 0..255 by 255"):
            runs(pixels)
        with torch.no_grad():
            assert torch.equal(runs(pixels.double() / 255), runs(pixels.float() / 255))
        with pytest.raises(ExportError, match=r"got values up to 255: divide pixels of 0..255 "
                                              r"by 255$"):
            runs(pixels.float())


def test_predict_says_in_one_line_why_model_pt2_cannot_stand_in(exported, tmp_path, capsys):
    """Where the builder cannot be imported and model.pt2 is missing or damaged, torch's own
    warning (a traceback of twenty lines) stays off the terminal: the error line says why."""
    logger = logging.getLogger("torch.export")
    level = logger.level
    moved = _copy(exported, tmp_path, model={"model": "no_such_module_here:build",
                                             "weights": None})
    image = tmp_path / "digit.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(image)
    (moved / "model.pt2").write_bytes(b"not a program")
    assert tuning_main(["predict", "--quiet", "--model", str(moved), str(image)]) == 2
    assert "model.pt2' cannot be loaded: " in _one_line_error(capsys)
    (moved / "model.pt2").unlink()
    assert tuning_main(["predict", "--quiet", "--model", str(moved), str(image)]) == 2
    assert "has no model.pt2" in _one_line_error(capsys)
    assert logger.level == level  # quiet for the load only


def test_a_hand_edited_config_is_refused_in_one_line_naming_the_field(exported, tmp_path,
                                                                     capsys):
    """Fields that rebuild the model, of the wrong type or count, would fail far from the
    cause (an IndexError in predict, NaN probabilities with exit status 0)."""
    image = tmp_path / "digit.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(image)
    names = [str(i) for i in range(10)]
    for i, (change, expected) in enumerate((
            ({"class_names": names[:3]}, "class_names has 3 names, not one per class "
                                         "(num_classes is 10)"),
            ({"class_names": None}, "class_names is null, not a list of names"),
            ({"class_names": [*names[:9], 9]}, "class_names is [\"0\""),
            ({"num_classes": "10"}, "num_classes is \"10\", not a positive integer"),
            ({"input_shape": [1, 28]}, "input_shape is [1, 28], not [channels, height, width]"),
            ({"params": []}, "params is [], not an object"),
            ({"normalization": {"mean": [0.1], "std": [0]}}, "normalization.std is [0]: "),
            ({"normalization": {"mean": [float("nan")], "std": [1]}},
             "normalization.mean is [NaN], not a list of finite numbers"),
            ({"normalization": {"mean": [0.1, 0.1], "std": [1]}},
             "normalization.mean has 2 values, not one per channel (input_shape has 1)"),
            ({"normalization": None}, "normalization is null"))):
        bad = _copy(exported, tmp_path, f"bad{i}")
        config = json.loads((bad / "config.json").read_text())
        (bad / "config.json").write_text(json.dumps({**config, **change}))
        assert tuning_main(["predict", "--model", str(bad), str(image)]) == 2, change
        err = _one_line_error(capsys)
        assert "config.json' cannot be used: " in err and expected in err, err
        with pytest.raises(ExportError, match="cannot be used"):
            load_model(bad)
    # Classes renamed consistently: the rebuilt network's weights do not fit, and model.pt2,
    # which stands in for a builder's network, gives another number of logits.
    with pytest.raises(ExportError, match="does not fit the network"):
        load_model(_copy(exported, tmp_path, "three", num_classes=3, class_names=names[:3]))
    fewer = _copy(exported, tmp_path, "fewer", num_classes=3, class_names=names[:3],
                  model={"model": "no_such_module_here:build", "weights": None})
    assert tuning_main(["predict", "--quiet", "--model", str(fewer), str(image)]) == 2
    assert ("logits of shape (1, 10) for 1 image, not (1, 3): (images, classes), with the 3 "
            "classes its config.json names") in _one_line_error(capsys)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_predict_refuses_a_fifo_without_opening_it(exported, tmp_path):
    fifo = tmp_path / "digit.png"
    os.mkfifo(fifo)
    # A subprocess with a timeout: opening the FIFO to read would wait for a writer, forever.
    result = run_cli("predict", "--model", str(exported), str(fifo), cwd=tmp_path, timeout=60,
                     module="tuning")
    assert result.returncode == 2 and result.stdout == "", result.stderr
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:"), result.stderr
    assert "digit.png' is not a regular file: it is a FIFO" in err, err
    # The export's own files too: its config and weights.
    for name in ("config.json", "weights.pt"):
        export = _copy(exported, tmp_path, f"fifo-{name}")
        (export / name).unlink()
        os.mkfifo(export / name)
        result = run_cli("predict", "--model", str(export), str(tmp_path / "x.png"),
                         cwd=tmp_path, timeout=60, module="tuning")
        assert result.returncode == 2, result.stderr
        assert f"{name}' is not a regular file: it is a FIFO" in result.stderr


def test_broken_weights_say_what_is_wrong(exported, tmp_path, capsys):
    garbage = _copy(exported, tmp_path, "garbage")
    (garbage / "weights.pt").write_bytes(b"garbage\n")
    with pytest.raises(ExportError) as caught:
        load_model(garbage)
    message = str(caught.value)
    assert "weights.pt' is not a torch weights file (" in message, message
    assert "weights_only" not in message and len(message) < 400
    # Another network's weights: the first entry that does not fit, by name.
    state = torch.load(exported / "weights.pt", weights_only=True)
    other = _copy(exported, tmp_path, "other")
    first = next(iter(state))
    torch.save({**state, first: torch.zeros(2, 2)}, other / "weights.pt")
    with pytest.raises(ExportError) as caught:  # predict runs model.pt2 instead: says why
        load_model(other)
    assert f"{first!r} is 2x2 in it, " in str(caught.value), caught.value
    assert "of another shape" in str(caught.value)
    renamed = {("renamed." + k if k == first else k): v for k, v in state.items()}
    torch.save(renamed, other / "weights.pt")
    with pytest.raises(ExportError, match=f"it lacks {first!r}"):
        load_model(other)


def test_the_loaded_model_refuses_a_tensor_of_another_shape_than_the_studys(exported):
    model = load_model(exported)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    for shape in ((2, 3, 28, 28), (1, 28, 28), (2, 1, 32, 32)):
        with pytest.raises(ExportError, match=r"takes float images \(N, 1, 28, 28\) in \[0, 1\], "
                                              rf"got a tensor of shape \({shape[0]}, "):
            model(torch.zeros(shape))


def test_predict_skips_unreadable_images_only_when_asked(exported, arrays, tmp_path, capsys):
    good = []
    for i in range(2):
        good.append(tmp_path / f"digit{i}.png")
        Image.fromarray(arrays.test_x[i, ..., 0]).save(good[-1])
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good[0].read_bytes()[:60])
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    images = [str(good[0]), str(truncated), str(text), str(good[1]), str(tmp_path / "gone.png")]
    assert tuning_main(["predict", "--model", str(exported), *images]) == 2
    assert "truncated.png' cannot be decoded" in _one_line_error(capsys)  # nothing printed
    assert tuning_main(["predict", "--model", str(exported), *map(str, good)]) == 0
    expected = capsys.readouterr().out
    assert tuning_main(["predict", "--skip-unreadable", "--model", str(exported), *images]) == 0
    captured = capsys.readouterr()
    assert captured.out == expected  # the readable ones, in their order
    warnings = captured.err.strip().splitlines()
    assert len(warnings) == 3 and all("WARNING skipped: image '" in w for w in warnings), warnings
    assert "truncated.png' cannot be decoded" in warnings[0] and "gone.png' does not exist" \
        in warnings[2]
    # None readable: each skipped, then an error, status 2.
    assert tuning_main(["predict", "--skip-unreadable", "--model", str(exported),
                        str(text), str(truncated)]) == 2
    *skipped, err = capsys.readouterr().err.strip().splitlines()
    assert len(skipped) == 2 and err.startswith("error: "), err
    assert "none of the 2 images can be read (the last: image '" in err
    assert "truncated.png' cannot be decoded" in err, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="asks for a GPU this machine lacks")
def test_predict_on_a_missing_gpu_says_so_in_one_short_line(exported, tmp_path, capsys):
    """torch's own error is a paragraph about drivers with a web address, cut mid-way."""
    image = tmp_path / "digit.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(image)
    for device in ("cuda", "cuda:1"):
        assert tuning_main(["predict", "--device", device, "--model", str(exported),
                            str(image)]) == 2
        assert _one_line_error(capsys) == (f"error: device {device!r}: no CUDA device is "
                                           "available here")


def test_predict_top_refuses_fewer_than_one_class(exported):
    model = load_model(exported)
    image = Image.fromarray(np.zeros((28, 28), np.uint8))
    for k in (0, -5):
        with pytest.raises(ValueError, match="1 or more"):
            model.predict_top([image], k)
    assert len(model.predict_top([image], 99)[0]) == 10


def test_choose_trial_says_why_there_is_nothing_to_export():
    """A pruned trial asked for by number is PRUNED, not "no complete trial yet"; a study whose
    every trial was over its limits before training is told so, without a "yet"."""
    study = optuna.create_study(study_name="huge")
    reason = "over the limits before training: 3,256,330 parameters > max_params 100,000"
    for _ in range(2):
        study.add_trial(create_trial(state=TrialState.PRUNED, params={}, distributions={},
                                     user_attrs={"prune_reason": reason}))
    settings, space = StudySettings(), {}
    with pytest.raises(UsageError) as caught:
        choose_trial(study, settings, space, 0)
    assert str(caught.value).startswith("trial 0 of study 'huge' is PRUNED, not COMPLETE "
                                        "(over the limits before training: 3,256,330")
    with pytest.raises(UsageError) as caught:
        choose_trial(study, settings, space, None)
    message = str(caught.value)
    assert "all 2 of its trials were pruned over the limits before training" in message
    assert "yet" not in message
    study.add_trial(create_trial(state=TrialState.FAIL, params={}, distributions={}))
    with pytest.raises(UsageError, match=r"no complete trial \(1 FAIL, 2 PRUNED"):
        choose_trial(study, settings, space, None)


def test_config_and_card_hold_the_full_resolved_configuration(exported, study_dir):
    """Defaults the study did not name are part of what the network trained with: the card
    and config.json show them, with what chose each value."""
    config = json.loads((exported / "config.json").read_text())
    resolved = config["configuration"]
    assert set(resolved["training"]) == set(TrainConfig.__dataclass_fields__)
    assert set(resolved["network"]) == set(ArchConfig.__dataclass_fields__)
    assert resolved["training"]["optimizer"] == "adam"
    assert resolved["training"]["batch_size"] == 256
    assert resolved["network"]["channels"] == 4 and resolved["network"]["kernel"] == 3
    assert resolved["searched"] == ["lr"] and "channels" in resolved["fixed"]
    card = (exported / "README.md").read_text()
    assert "| optimizer | adam | default |" in card
    assert "| channels | 4 | fixed by the study |" in card and "| lr | " in card
    assert "| momentum | 0.9 | default (no effect: not used by adam) |" in card
    assert "| kernel | 3 | default |" in card and "for up to 1 epoch " in card


def test_an_export_written_before_the_resolved_configuration_still_loads(exported, tmp_path):
    old = _copy(exported, tmp_path, "old", configuration=None, program_checks=None)
    model = load_model(old)
    assert model.config["params"]["channels"] == 4
    card = model_card(model.config, old)
    assert "| channels | 4 |" in card


def test_the_card_keeps_class_names_with_line_breaks_on_their_line(exported):
    config = json.loads((exported / "config.json").read_text())
    names = ["new\nline", "tab\tclass", "back\\slash", *config["class_names"][3:]]
    card = model_card({**config, "class_names": names}, exported)
    line, = [line for line in card.splitlines() if line.startswith("- images: ")]
    assert line.endswith("classes: new\\nline, tab\\tclass, back\\\\slash, " +
                         ", ".join(config["class_names"][3:]))


def test_the_cards_commands_train_the_trial_again_to_the_same_loss(exported, study_dir):
    """reproduce.toml and the card's commands, run as written from another directory: a new
    study of one trial with the original's seed, split, epochs and threads, which reaches the
    same validation loss and exports to the same test accuracy."""
    config = json.loads((exported / "config.json").read_text())
    card = (exported / "README.md").read_text()
    commands = config["reproduce"]["commands"]
    assert "\n".join(commands) in card and config["reproduce"]["same_seed"]
    study_file = load_study_file(exported / "reproduce.toml")
    assert all(p.kind == "fixed" for p in study_file.space.values())
    original = _load(study_dir, "tiny").trials[config["trial"]]
    assert study_file.space["repeat"].value == original.user_attrs["seed"]
    again = study_dir / "again"
    again.mkdir()
    for command in commands:
        argv = shlex.split(command)
        assert argv[0] == "tuning"
        result = subprocess.run([sys.executable, "-m", "tuning", *argv[1:]], cwd=again,
                                env={**os.environ, "PYTHONPATH": str(ROOT)},
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, (command, result.stderr)
    name = f"tiny-trial-{config['trial']}"
    trial = _load(again, name).trials[0]
    assert trial.state == TrialState.COMPLETE and trial.params == {}
    assert trial.user_attrs["seed"] == original.user_attrs["seed"]
    assert trial.value == original.value
    reexported = json.loads((again / "exports" / name / "config.json").read_text())
    assert reexported["test"]["accuracy"] == config["test"]["accuracy"]


def test_reproduce_toml_quotes_what_toml_needs_and_says_when_the_seed_cannot_follow():
    trial = create_trial(
        value=0.5, params={"model.größe": 8, "lr": 1},
        distributions={"model.größe": CategoricalDistribution([8, 16]),
                       "lr": CategoricalDistribution([1, 2])},
        user_attrs={"seed": 20_000, "device": "cuda:0"})
    settings = StudySettings(dataset='/data/my "pets"', model="mymodels:build", seed=3)
    data = DataConfig(test="/data/pets\\test", class_names=("cat", "dög"))
    reproduced = reproduction("a" * 64, trial, settings, {**trial.params, "hflip": True}, data,
                              Path("/out/reproduce.toml"), None, refit=True)
    raw = tomllib.loads(reproduced.text)
    assert raw["study"]["dataset"] == '/data/my "pets"' and raw["study"]["pruner"] == "none"
    assert raw["data"]["test"] == "/data/pets\\test" and raw["data"]["class_names"] == [
        "cat", "dög"]
    assert "test_fraction" not in raw["data"]  # beside a test folder it is refused
    assert parse_study(raw).data.test == os.path.normpath("/data/pets\\test")
    assert raw["space"] == {"hflip": True, "lr": 1.0, "model": {"größe": 8}}
    assert isinstance(raw["space"]["lr"], float)  # a float parameter, whatever Optuna stored
    assert not reproduced.exact and "repeat" not in raw["space"]  # 20,000 - 3 > 10,000
    assert reproduced.cpu_threads is None and reproduced.device == "cuda:0"
    name = shlex.split(reproduced.commands[0])[shlex.split(reproduced.commands[0]).index(
        "--study") + 1]
    assert len(name) == 64 and name.endswith(f"-trial-{trial.number}")
    assert "--threads" not in reproduced.commands[1] and "--refit" in reproduced.commands[2]


def test_a_model_directory_not_there_points_at_the_samples_export_beside_it(tmp_path):
    # Offline the default study is mnist-sample: the README's `--model exports/mnist` is not
    # there, but exports/mnist-sample is.
    (tmp_path / "mnist-sample").mkdir()
    with pytest.raises(ExportError, match=r"not a directory \(give the directory `tuning export "
                                          r"--out` wrote; '.*mnist-sample' is one\)"):
        load_model(tmp_path / "mnist")
    with pytest.raises(ExportError, match=r"wrote\)$"):
        load_model(tmp_path / "other")


CUT_STUDY_FILE = """
[study]
dataset = "mnist-sample"
epochs = 2
sampler = "grid"
pruner = "none"
seed = 0

[space]
lr = 0.01
lr_schedule = "cosine"
channels = 4
activation = "relu"
batch_size = 256
"""


def test_a_trial_the_budget_cut_short_exports_as_trained_that_far(tmp_path, capsys):
    """A run's --budget can end before any trial completes: the trial it cut short is exported
    on request, retrained for the epochs it ran on the schedule planned for all of them (its
    cosine schedule over 1 epoch would train another network), and the card says so."""
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "cut.toml").write_text(CUT_STUDY_FILE)
    result = run_cli("--study", "cut", "--trials", "1", "--workers", "1", "--device", "cpu",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "export:    tuning export --study cut\n" in result.stdout
    study = _load(tmp_path, "cut")
    whole, = study.trials
    attrs = {k: v for k, v in whole.user_attrs.items() if k != "checkpoint_artifact"}
    study.add_trial(create_trial(
        state=TrialState.PRUNED, value=whole.intermediate_values[1], params=whole.params,
        distributions=whole.distributions, intermediate_values={1: whole.intermediate_values[1]},
        user_attrs={**attrs, "epochs_run": 1,
                    "prune_reason": "the run's --budget ran out after epoch 1"}))
    capsys.readouterr()
    out = tmp_path / "cut-export"
    assert _export(tmp_path, "cut", out, "--trial", "1") == 0
    printed = capsys.readouterr().out
    assert "the run's --budget stopped trial #1 after 1 of its 2 epochs" in printed
    config = json.loads((out / "config.json").read_text())
    assert config["trial"] == 1 and config["cut_by_budget"] == {"epochs_run": 1, "epochs": 2}
    weights = config["weights"]
    assert weights["source"] == "retrained" and weights["epochs"] == 1
    assert "for the first of 2 epochs" in weights["how"]
    assert config["trial_val_loss"] == whole.intermediate_values[1]
    assert weights["retrained_val_loss"] == pytest.approx(config["trial_val_loss"], rel=1e-5)
    card = (out / "README.md").read_text()
    assert "The run's --budget stopped this trial after 1 of its 2 epochs" in card
    assert "The new trial trains all 2 epochs, where the run's --budget stopped this one" in card


def test_with_no_complete_trial_the_export_names_the_trial_the_budget_cut_short():
    study = optuna.create_study(study_name="short")
    cut = "the run's --budget ran out after epoch {}"
    for epochs, losses in ((2, {1: 0.9, 2: 0.7}), (3, {1: 0.8, 2: 0.5, 3: 0.6})):
        study.add_trial(create_trial(
            state=TrialState.PRUNED, value=losses[epochs], params={}, distributions={},
            intermediate_values=losses,
            user_attrs={"epochs_run": epochs, "prune_reason": cut.format(epochs)}))
    study.add_trial(create_trial(state=TrialState.PRUNED, value=0.1, params={},
                                 distributions={}, intermediate_values={1: 0.1},
                                 user_attrs={"prune_reason": "pruner stopped it after epoch 1"}))
    settings = StudySettings(epochs=8)
    with pytest.raises(UsageError) as caught:
        choose_trial(study, settings, {}, None)
    # Its lowest loss, not its last; the pruner's trial is no candidate.
    assert str(caught.value).endswith(
        "nothing to export by default; trial 1 was cut short by the run's --budget after 3 of "
        "8 epochs (validation loss 0.5000): --trial 1 exports it as trained that far")
    assert choose_trial(study, settings, {}, 0).number == 0
    with pytest.raises(UsageError, match="PRUNED, not COMPLETE .*pruner stopped it"):
        choose_trial(study, settings, {}, 2)
    folds = StudySettings(epochs=8, cv_folds=3)
    with pytest.raises(UsageError, match="did not train all its folds"):
        choose_trial(study, folds, {}, 0)
    with pytest.raises(UsageError) as caught:
        choose_trial(study, folds, {}, None)
    assert "--trial" not in str(caught.value)


def test_a_sigterm_mid_export_or_report_leaves_nothing_behind(study_dir, tmp_path, capsys,
                                                             monkeypatch):
    """`timeout` and schedulers stop with SIGTERM: as a Ctrl-C does, it ends the export with
    one line and exit status 143, its unfinished files and the folders it made gone."""
    import signal

    import tuning.export
    import tuning.report

    real_write = tuning.export._write_export

    def write_then_terminated(staging, *args):
        real_write(staging, *args)
        assert (staging / "weights.pt").is_file()
        os.kill(os.getpid(), signal.SIGTERM)

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(tuning.export, "_write_export", write_then_terminated)
    monkeypatch.setattr(tuning.report, "render_html", terminated)
    common = ["--study", "tiny", "--storage", f"sqlite:///{study_dir}/studies/tiny.db",
              "--artifacts", str(study_dir / "artifacts"), "--device", "cpu", "--quiet"]
    out = tmp_path / "new" / "out"
    # As a command starts: pytest's worker process may hold a handler of its own.
    before = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        assert tuning_main(["export", *common, "--out", str(out)]) == 143
        assert capsys.readouterr().err.strip() == "tuning export: stopped by SIGTERM"
        assert not (tmp_path / "new").exists()
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the command's, given back
        assert tuning_main(["report", *common, "--no-test", "--out", str(out)]) == 143
        assert not (tmp_path / "new").exists()
    finally:
        signal.signal(signal.SIGTERM, before)
