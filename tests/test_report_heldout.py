"""The held-out test section's uncertainty: accuracy intervals, McNemar's test against the
tutorial, the retrain check, and confusion heat maps with class names.

The statistics and sentences are checked as pure functions; one tiny real study (mnist-sample,
1 epoch, 2 trials) checks that the section puts them together and survives an old cached
baseline."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pytest
from helpers import run_cli

import tuning.evaluate
from tuning.catalog import builtin_study_file
from tuning.data import load_arrays
from tuning.evaluate import classification_metrics, mcnemar, wilson_interval
from tuning.report_figures import confusion_heatmap
from tuning.report_heldout import (
    BASELINE_ATTR,
    comparison_sentence,
    held_out_test,
    retrain_paragraphs,
)
from tuning.report_stats import StudyView
from tuning.storage import artifact_store
from tuning.study import stored_definition

SEED_STUDY_FILE = builtin_study_file("seed")  # the tutorial, as the report uses it

# Tier 1: pure statistics and sentences.


def test_wilson_interval_matches_known_values():
    assert wilson_interval(95, 100) == pytest.approx((0.8882, 0.9785), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)  # not a point
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(9812, 10000) == pytest.approx((0.9784, 0.9837), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_classification_metrics_carry_the_accuracy_interval():
    cm = np.array([[40, 2], [3, 55]])
    m = classification_metrics(cm)
    assert m["accuracy"] == pytest.approx(0.95)
    assert m["accuracy_ci"] == pytest.approx(list(wilson_interval(95, 100)))
    json.dumps(m)  # plain floats: it goes to test_metrics.json and the study


def test_mcnemar_counts_only_the_images_the_two_disagree_on():
    both = [0, 1, 2]  # wrong for both: say nothing about which is better
    best_only, tutorial_only = [10], list(range(20, 29))
    result = mcnemar(both + best_only, tutorial_only + both)
    assert (result["b"], result["c"]) == (1, 9)
    # Two-sided exact binomial: 2 * P(X <= 1), X ~ Bin(10, 1/2) = 2 * 11 / 1024.
    assert result["p_value"] == pytest.approx(22 / 1024)
    swapped = mcnemar(tutorial_only + both, both + best_only)
    assert (swapped["b"], swapped["c"]) == (9, 1)
    assert swapped["p_value"] == pytest.approx(result["p_value"])
    assert mcnemar(both, both) == {"b": 0, "c": 0, "p_value": 1.0}


def test_comparison_sentence_says_beyond_noise_only_when_it_is():
    better = comparison_sentence({"b": 12, "c": 41, "p_value": 8e-5}, 10_000)
    assert better == ("The best trial is right on 41 images the tutorial gets wrong and wrong on "
                      "12 it gets right (McNemar exact p < 0.0001): the difference is beyond "
                      "noise.")
    noise = comparison_sentence({"b": 20, "c": 25, "p_value": 0.5514}, 10_000)
    assert noise.endswith("(McNemar exact p = 0.55): not distinguishable from noise on these "
                          "10,000 images.")
    worse = comparison_sentence({"b": 41, "c": 12, "p_value": 8e-5}, 10_000)
    assert "beyond noise, in the tutorial's favour" in worse
    assert "are right and wrong on exactly the same test images" in comparison_sentence(
        {"b": 0, "c": 0, "p_value": 1.0}, 100)  # both right on all of them, say


def test_a_p_value_just_below_the_level_is_not_rounded_to_it():
    sentence = comparison_sentence({"b": 10, "c": 21, "p_value": 0.0498}, 10_000)
    assert "(McNemar exact p = 0.0498): the difference is beyond noise" in sentence


def _canned_metrics(num_classes: int, wrong: list[int]) -> dict:
    cm = np.eye(num_classes, dtype=int) * 10
    cm[0, 1] = len(wrong)
    return {**classification_metrics(cm), "wrong": wrong}


def _stubbed_section(monkeypatch, trials: list[dict], space: dict, cv_folds: int = 1,
                     model=None):
    """held_out_test on a hand-made study, every network replaced by canned test metrics and
    the best trial's weights by `model` (default: a checkpoint; nothing trained)."""
    import torch

    import tuning.report_heldout
    from tuning.evaluate import TrialModel
    from tuning.study_file import parse_study

    arrays = load_arrays("mnist-sample")
    classes = int(arrays.train_y.max()) + 1
    obtained = model or TrialModel(torch.nn.Identity(), "checkpoint artifact a", None)
    monkeypatch.setattr(tuning.evaluate, "trial_model", lambda *args, **kwargs: obtained)
    monkeypatch.setattr(tuning.evaluate, "held_out_metrics",
                        lambda *args: _canned_metrics(classes, [1, 2, 3]))
    monkeypatch.setattr(tuning.report_heldout, "baseline_metrics",
                        lambda *args: (_canned_metrics(classes, list(range(4, 30))), "kept"))
    monkeypatch.setattr(tuning.report_heldout, "class_labels",
                        lambda arrays, n: [str(i) for i in range(classes)])
    parsed = parse_study({"study": {"dataset": "mnist-sample", "epochs": 1,
                                    "cv_folds": cv_folds}, "space": space})
    study = optuna.create_study()
    for trial in trials:
        study.add_trial(optuna.trial.create_trial(**trial))
    view = StudyView(study, study.get_trials(), parsed.settings, parsed.space)
    return held_out_test(view, arrays, "cpu", None, SEED_STUDY_FILE)


def test_a_first_repeat_is_never_called_the_best_trial(monkeypatch):
    repeats = [{"value": v, "params": {}, "distributions": {}} for v in (0.3, 0.2, 0.25)]
    section = _stubbed_section(monkeypatch, repeats, {"lr": 0.001, "channels": 4})
    first, *rest = section.paragraphs
    assert first.startswith("Trial #0, the first complete repeat")
    assert not any("best trial" in p for p in rest)
    assert any(p.startswith("The first repeat is right on") for p in rest)
    assert dict(section.tables)["Test metrics"].rows[0][0] == "first repeat #0"
    assert "F1 (first repeat)" in dict(section.tables)["Per class"].columns
    assert not any("best trial" in caption for caption, _ in section.tables)


def test_a_cross_validated_checkpoint_is_named_as_its_fold(monkeypatch):
    from optuna.distributions import FloatDistribution

    trial = {"value": 0.2, "params": {"lr": 0.01},
             "distributions": {"lr": FloatDistribution(1e-3, 1e-1, log=True)},
             "user_attrs": {"checkpoint_artifact": "a", "checkpoint_fold": 3}}
    section = _stubbed_section(monkeypatch, [trial], {"lr": {"low": 1e-3, "high": 1e-1,
                                                              "log": True}}, cv_folds=5)
    own, = [p for p in section.paragraphs if "its own weights" in p]
    assert "fold 3 of 5" in own and "the network the trial validated" not in own


def test_a_retrain_says_why_the_trials_checkpoint_was_not_used(monkeypatch):
    import torch
    from optuna.distributions import FloatDistribution

    from tuning.evaluate import TrialModel

    trial = {"value": 0.2, "params": {"lr": 0.01},
             "distributions": {"lr": FloatDistribution(1e-3, 1e-1, log=True)},
             "user_attrs": {"checkpoint_artifact": "a"}}
    space = {"lr": {"low": 1e-3, "high": 1e-1, "log": True}}
    section = _stubbed_section(monkeypatch, [trial], space, model=TrialModel(
        torch.nn.Identity(), "retrained with seed 0 for 1 epoch", 0.2,
        "its checkpoint artifact a is in no artifact directory given"))
    assert "The best trial was retrained because its checkpoint artifact a is in no artifact " \
        "directory given." in section.paragraphs


def test_a_cpu_retrain_that_does_not_reproduce_the_trial_is_a_warning():
    agree = retrain_paragraphs(0.250000, 0.2500001, "cpu", "cpu")
    assert len(agree) == 1 and "deterministic: the two should agree to rounding" in agree[0]
    assert "0.250000" in agree[0]
    differ = retrain_paragraphs(0.25, 0.26, "cpu", None)
    assert len(differ) == 2 and differ[1].startswith("Warning")
    # On CUDA, or for a trial that ran on CUDA, a difference is expected: said, not warned.
    for device_type, trial_device in (("cuda", "cuda:0 (NVIDIA H100)"),
                                      ("cpu", "cuda:0 (NVIDIA H100)")):
        paragraphs = retrain_paragraphs(0.25, 0.26, device_type, trial_device)
        assert len(paragraphs) == 1 and "cuDNN autotuning, TF32, bf16 autocast" in paragraphs[0]


def test_confusion_heatmap_names_the_classes_and_colours_by_share_of_row():
    cm = [[8, 2, 0], [0, 5, 0], [1, 1, 3]]
    fig = confusion_heatmap(cm, ["0", "1", "2"], "Confusion matrix, x")
    heat = fig.data[0]
    assert list(heat.x) == list(heat.y) == ["0", "1", "2"]
    assert fig.layout.xaxis.title.text == "predicted class"
    assert fig.layout.yaxis.title.text == "true class"
    assert fig.layout.xaxis.type == "category"  # "0".."9" must not become a number line
    assert np.asarray(heat.text).tolist() == cm
    assert np.asarray(heat.z)[2] == pytest.approx(np.sqrt([0.2, 0.2, 0.6]))


def test_a_small_confusion_matrix_has_colour_bar_labels_apart():
    # On the square-root scale 0%, 1% and 5% sit 0.1 and 0.12 of the bar apart: on the short
    # bar of 3 classes their labels overlapped.
    small = confusion_heatmap([[8, 2, 0], [0, 5, 0], [1, 1, 3]], ["0", "1", "2"], "x")
    assert "1%" not in small.data[0].colorbar.ticktext
    assert small.layout.height >= 340
    large = confusion_heatmap(np.eye(10, dtype=int).tolist(), [str(i) for i in range(10)], "x")
    assert "1%" in large.data[0].colorbar.ticktext


# One tiny real study: the section puts it all together.

STUDY_FILE = """
[study]
dataset = "mnist-sample"
epochs = 1
sampler = "grid"
pruner = "none"
seed = 0

[space]
lr = { choices = [0.001, 0.003] }
channels = 4
batch_size = 256
"""


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    """A real 2-trial, 1-epoch study on mnist-sample, with its checkpoints."""
    workdir = tmp_path_factory.mktemp("heldout")
    (workdir / "studies").mkdir()
    (workdir / "studies" / "tiny.toml").write_text(STUDY_FILE)
    result = run_cli("--study", "tiny", "--trials", "2", "--device", "cpu", cwd=workdir)
    assert result.returncode == 0, result.stderr
    return workdir


def _section(workdir, artifacts: bool = False):
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{workdir}/studies/tiny.db")
    settings, space = stored_definition(study)
    view = StudyView(study, study.get_trials(deepcopy=False), settings, space)
    store = artifact_store(workdir / "artifacts") if artifacts else None
    return study, held_out_test(view, load_arrays("mnist-sample"), "cpu", store, SEED_STUDY_FILE)


@pytest.fixture(scope="module")
def retrained(tiny_study):
    """The section with no artifact store: the best trial is retrained."""
    return _section(tiny_study)[1]


@pytest.mark.slow
def test_section_metrics_carry_intervals_wrong_images_and_mcnemar(retrained):
    metrics = retrained.metrics
    json.dumps(metrics)
    n_test = len(load_arrays("mnist-sample").test_y)
    for config in ("best", "tutorial"):
        m = metrics[config]
        correct = int(np.trace(np.asarray(m["confusion_matrix"])))
        assert len(m["wrong"]) == n_test - correct
        assert m["accuracy"] == pytest.approx(correct / n_test)
        low, high = m["accuracy_ci"]
        assert low < m["accuracy"] < high
        assert (low, high) == pytest.approx(wilson_interval(correct, n_test))
    best, tutorial = set(metrics["best"]["wrong"]), set(metrics["tutorial"]["wrong"])
    test = metrics["mcnemar"]
    assert (test["b"], test["c"]) == (len(best - tutorial), len(tutorial - best))
    assert 0 <= test["p_value"] <= 1
    assert comparison_sentence(test, n_test) in retrained.paragraphs
    table = dict(retrained.tables)["Test metrics"]
    assert table.columns[2] == "accuracy 95% CI"
    assert table.rows[0][2] == "{:.4f} .. {:.4f}".format(*metrics["best"]["accuracy_ci"])


@pytest.mark.slow
def test_a_cpu_retrain_of_the_best_trial_reproduces_its_validation_loss(retrained):
    check = retrained.metrics["retrain_check"]
    assert check["retrained_val_loss"] == pytest.approx(check["recorded_val_loss"], rel=1e-4)
    assert any("Retraining on the CPU is deterministic" in p for p in retrained.paragraphs)
    assert not any(p.startswith("Warning") for p in retrained.paragraphs)


@pytest.mark.slow
def test_a_checkpointed_best_trial_is_its_own_weights(tiny_study):
    _, section = _section(tiny_study, artifacts=True)
    assert section.metrics["retrain_check"] is None
    assert "checkpoint artifact" in section.metrics["best_model_source"]
    assert any("its own weights" in p for p in section.paragraphs)


@pytest.mark.slow
def test_heatmaps_and_tables_name_the_classes(retrained):
    names = list(load_arrays("mnist-sample").class_names)
    assert len(retrained.figures) == 2
    for fig, config in zip(retrained.figures, ("best", "tutorial"), strict=True):
        heat = fig.data[0]
        assert list(heat.x) == list(heat.y) == names
        assert fig.layout.xaxis.title.text == "predicted class"
        assert fig.layout.yaxis.title.text == "true class"
        assert np.asarray(heat.text).tolist() == retrained.metrics[config]["confusion_matrix"]
    per_class = dict(retrained.tables)["Per class"]
    assert [row[0] for row in per_class.rows] == names


@pytest.mark.slow
def test_an_old_cached_baseline_without_wrong_images_is_trained_again(tiny_study, retrained,
                                                                      monkeypatch):
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tiny_study}/studies/tiny.db")
    old = study.user_attrs[BASELINE_ATTR]
    for entry in old.values():
        del entry["metrics"]["wrong"]
    study.set_user_attr(BASELINE_ATTR, old)
    real_retrain, trained = tuning.evaluate.retrain, []

    def counting(params, *args, **kwargs):
        trained.append(params)
        return real_retrain(params, *args, **kwargs)

    monkeypatch.setattr(tuning.evaluate, "retrain", counting)
    study, section = _section(tiny_study, artifacts=True)  # the best trial from its checkpoint
    assert trained == [{}]  # the tutorial, once
    assert any("The tutorial was trained for this report" in p for p in section.paragraphs)
    assert section.metrics["tutorial"]["wrong"] == retrained.metrics["tutorial"]["wrong"]
    kept = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tiny_study}/studies/tiny.db")
    assert all("wrong" in e["metrics"] for e in kept.user_attrs[BASELINE_ATTR].values())


def test_a_class_without_test_images_shows_no_recall():
    from tuning.evaluate import classification_metrics
    from tuning.report_heldout import per_class_table

    cm = np.array([[5, 1, 0], [0, 4, 0], [0, 0, 0]])  # class c: no test image, never predicted
    metrics = classification_metrics(cm)
    rows = per_class_table(metrics, metrics, ["a", "b", "c"]).rows
    assert rows[0][2] == 5 / 6 and rows[2][2] is None and rows[2][5] == 0
    # Nor precision (never predicted) or F1: "-", as null in test_metrics.json, not 0.
    assert rows[2][1] is None and rows[2][3] is None and rows[2][4] is None
    assert metrics["per_class"][2] == {"class": 2, "precision": None, "recall": None,
                                       "f1": None, "support": 0}
    assert "never predicted" in per_class_table(metrics, metrics, ["a", "b", "c"]).note
    # Predicted once without a test image: precision 0 and F1 0 (as the macro F1 counts it).
    predicted = classification_metrics(np.array([[5, 1, 1], [0, 4, 0], [0, 0, 0]]))
    assert predicted["per_class"][2] == {"class": 2, "precision": 0.0, "recall": None,
                                         "f1": 0.0, "support": 0}
    assert predicted["macro_f1"] == pytest.approx(
        np.mean([c["f1"] for c in predicted["per_class"]]))


def test_for_a_study_of_its_own_files_the_remedy_is_never_the_other_flag(tmp_path):
    from tuning.report_heldout import _where_the_data_were

    images = tmp_path / "digits.npz"
    images.write_bytes(b"")
    # Given --data-dir, the error says to leave it out: "point --dataset" would be wrong.
    assert _where_the_data_were(str(images), str(images), tmp_path) == ""
    assert _where_the_data_were(str(images), str(images), None) == (
        "point --dataset at the images it was run on")
    assert _where_the_data_were(str(tmp_path / "moved.npz"), None, None) == (
        "give the images' place with --dataset")
