"""Cross-validation (`cv_folds = K`): the folds, and the objective's semantics through ask/tell
on a few hundred real digits; one end-to-end run of the CLI."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter

import numpy as np
import optuna
import pytest
import torch
from helpers import run_cli, small_space
from optuna.trial import TrialState

from tuning.device import resolve_device
from tuning.errors import UsageError
from tuning.folds import fold_arrays, fold_parts, objective_data
from tuning.objective import Objective
from tuning.report_sections import overview
from tuning.report_stats import StudyView
from tuning.strategy import PRUNERS, make_pruner
from tuning.study import stored_definition
from tuning.study_file import StudySettings, parse_study

SPACE = small_space()
EPOCHS = 2


def _images(x: np.ndarray) -> Counter:
    return Counter(row.tobytes() for row in x.reshape(len(x), -1))


@pytest.fixture(scope="module")
def fold_data(tiny_arrays):
    """Two folds of the tiny digits, on the CPU: (data, folds) for an Objective."""
    return objective_data(tiny_arrays, 2, seed=0, device=torch.device("cpu"))


def cv_objective(fold_data, **kwargs) -> Objective:
    data, folds = fold_data
    return Objective(data=data, folds=folds, runtime=resolve_device("cpu"), space=SPACE,
                     epochs=EPOCHS, seed=0, **kwargs)


# -- the folds ------------------------------------------------------------------------------------


def test_fold_parts_are_disjoint_cover_every_index_once_and_are_stratified():
    labels = np.repeat(np.arange(4), [50, 31, 7, 2])
    parts = fold_parts(labels, 5, seed=3)
    together = np.concatenate(parts)
    assert sorted(together) == list(range(len(labels)))  # each index in exactly one part
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    for cls, n in Counter(labels).items():
        counts = [int(np.sum(labels[p] == cls)) for p in parts]
        assert sum(counts) == n and max(counts) - min(counts) <= 1, (cls, counts)


def test_folds_validate_on_every_training_and_validation_image_once(tiny_arrays):
    a = tiny_arrays
    folds = fold_arrays(a, 3, seed=0)
    pooled = _images(np.concatenate([a.train_x, a.val_x]))
    validated = sum((_images(f.val_x) for f in folds), Counter())
    assert validated == pooled
    for fold in folds:
        # Each fold trains on everything it does not validate on.
        assert _images(fold.train_x) + _images(fold.val_x) == pooled
        assert Counter(fold.train_y.tolist()) + Counter(fold.val_y.tolist()) == Counter(
            np.concatenate([a.train_y, a.val_y]).tolist())
        # Stratified: each class's share of the validation part is its share of the whole.
        for cls, n in Counter(np.concatenate([a.train_y, a.val_y]).tolist()).items():
            assert abs(int(np.sum(fold.val_y == cls)) - n / 3) < 1


def test_folds_keep_the_test_split_and_the_studys_normalization(tiny_arrays):
    for fold in fold_arrays(tiny_arrays, 4, seed=0):
        assert fold.test_x is tiny_arrays.test_x and fold.test_y is tiny_arrays.test_y
        assert (fold.mean, fold.std) == (tiny_arrays.mean, tiny_arrays.std)
        assert fold.class_names == tiny_arrays.class_names and fold.leaks == tiny_arrays.leaks
        assert not set(_images(fold.test_x)) & (set(_images(fold.train_x))
                                                | set(_images(fold.val_x)))


def test_folds_are_the_same_for_a_seed_and_differ_between_seeds(tiny_arrays):
    first, again = fold_arrays(tiny_arrays, 3, seed=7), fold_arrays(tiny_arrays, 3, seed=7)
    other = fold_arrays(tiny_arrays, 3, seed=8)
    assert all(np.array_equal(f.val_x, g.val_x) and np.array_equal(f.train_y, g.train_y)
               for f, g in zip(first, again, strict=True))
    assert not np.array_equal(first[0].val_y, other[0].val_y)


def test_more_folds_than_images_is_a_usage_error(tiny_arrays):
    few = dataclasses.replace(tiny_arrays, train_x=tiny_arrays.train_x[:3],
                              train_y=tiny_arrays.train_y[:3], val_x=tiny_arrays.val_x[:1],
                              val_y=tiny_arrays.val_y[:1])
    with pytest.raises(UsageError, match="cv_folds = 5 needs at least 5"):
        fold_arrays(few, 5, seed=0)


def test_one_fold_is_the_studys_own_split(tiny_arrays):
    data, folds = objective_data(tiny_arrays, 1, seed=0, device=torch.device("cpu"))
    assert folds is None and len(data.train) == len(tiny_arrays.train_y)
    assert len(data.val) == len(tiny_arrays.val_y)


# -- the objective through ask/tell ---------------------------------------------------------------


def test_a_trial_is_scored_on_the_mean_of_its_folds_best_losses(fold_data):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    entries: list[dict] = []
    value = cv_objective(fold_data, on_epoch=lambda t, e: entries.append(e))(trial)
    study.tell(trial, value)
    frozen = study.trials[0]
    steps = frozen.intermediate_values
    # Fold after fold, one step per epoch: fold 1 is steps 1..2, fold 2 steps 3..4.
    assert sorted(steps) == [1, 2, 3, 4]
    fold_bests = [min(steps[1], steps[2]), min(steps[3], steps[4])]
    attrs = frozen.user_attrs
    assert attrs["fold_losses"] == [pytest.approx(b, abs=1e-6) for b in fold_bests]
    assert value == pytest.approx(sum(fold_bests) / 2)
    assert frozen.value == value
    assert attrs["epochs_run"] == 4  # every epoch trained, over both folds
    assert len(attrs["train_eval_losses"]) == len(attrs["train_objectives"]) == 4
    assert 0.0 <= attrs["val_accuracy"] <= 1.0
    # The progress callback sees the trial's steps, and where in which fold each is.
    assert [(e["epoch"], e["fold"], e["fold_epoch"]) for e in entries] == [
        (1, 1, 1), (2, 1, 2), (3, 2, 1), (4, 2, 2)]
    assert [e["val_loss"] for e in entries] == [steps[s] for s in (1, 2, 3, 4)]


def test_every_fold_trains_with_the_trial_seed_and_the_trial_repeats_exactly(fold_data):
    values, curves = [], []
    for _ in range(2):
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=5))
        trial = study.ask()
        values.append(cv_objective(fold_data)(trial))
        curves.append(study.trials[0].intermediate_values)
    assert values[0] == values[1] and curves[0] == curves[1]


class PruneAtStep(optuna.pruners.BasePruner):
    """Prunes a trial when it reports step `step`."""

    def __init__(self, step: int):
        self.step = step

    def prune(self, study, trial) -> bool:
        return trial.last_step == self.step


def test_a_trial_pruned_in_its_second_fold_records_what_it_ran(fold_data):
    study = optuna.create_study(pruner=PruneAtStep(EPOCHS + 1))  # fold 2, epoch 1
    trial = study.ask()
    with pytest.raises(optuna.TrialPruned):
        cv_objective(fold_data)(trial)
    study.tell(trial, state=TrialState.PRUNED)
    frozen = study.trials[0]
    assert sorted(frozen.intermediate_values) == [1, 2, 3]
    assert frozen.user_attrs["epochs_run"] == 3
    assert len(frozen.user_attrs["fold_losses"]) == 2  # fold 1 whole, fold 2 cut short
    assert frozen.user_attrs["prune_reason"] == "pruner stopped it after epoch 1 of fold 2"


def test_a_pruner_that_prunes_at_once_stops_the_trial_in_its_first_fold(fold_data):
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=1e-9))
    trial = study.ask()
    with pytest.raises(optuna.TrialPruned):
        cv_objective(fold_data)(trial)
    study.tell(trial, state=TrialState.PRUNED)
    frozen = study.trials[0]
    assert list(frozen.intermediate_values) == [1] and frozen.user_attrs["epochs_run"] == 1
    assert frozen.user_attrs["fold_losses"] == [pytest.approx(frozen.intermediate_values[1],
                                                              abs=1e-6)]


def test_the_median_pruner_compares_trials_on_the_same_fold():
    """Step 3 is fold 2's first epoch in every trial. The median pruner sets a trial's best
    loss so far against the others' at that step: one that was bad in fold 1 and is bad in fold
    2 is pruned there, one that was good in fold 1 is not."""
    study = optuna.create_study(pruner=make_pruner("median", EPOCHS))
    for value in [0.5, 0.4, 0.45, 0.5, 0.42]:
        study.add_trial(optuna.create_trial(value=value, intermediate_values={
            1: value + 0.2, 2: value, 3: value + 0.25, 4: value + 0.05}))
    trial = study.ask()
    for step, loss in {1: 1.0, 2: 0.9, 3: 1.2}.items():
        trial.report(loss, step)
    assert trial.should_prune()
    good = study.ask()
    for step, loss in {1: 0.6, 2: 0.4, 3: 0.6}.items():
        good.report(loss, step)
    assert not good.should_prune()


@pytest.mark.parametrize("name", sorted(PRUNERS))
def test_every_pruner_takes_the_steps_of_every_fold(name):
    folds = 3
    steps = folds * EPOCHS
    study = optuna.create_study(pruner=make_pruner(name, EPOCHS))
    for value in [0.5, 0.4, 0.45, 0.5, 0.42, 0.47]:
        study.add_trial(optuna.create_trial(
            value=value, intermediate_values={s: value + 0.01 * (s % EPOCHS)
                                              for s in range(1, steps + 1)}))
    trial = study.ask()
    for step in range(1, steps + 1):
        trial.report(0.45, step)
        trial.should_prune()  # must not raise, whatever it decides


def test_under_cross_validation_the_checkpoint_is_the_best_folds(fold_data, tmp_path):
    from optuna.artifacts import FileSystemArtifactStore, download_artifact

    store = FileSystemArtifactStore(str(tmp_path))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    study.tell(trial, cv_objective(fold_data, artifacts=store)(trial))
    attrs = study.trials[0].user_attrs
    losses = attrs["fold_losses"]
    assert attrs["checkpoint_fold"] == 1 + losses.index(min(losses))
    path = tmp_path / "weights.pt"
    download_artifact(artifact_store=store, artifact_id=attrs["checkpoint_artifact"],
                      file_path=str(path))
    assert torch.load(path, weights_only=True)  # a plain state dict


# -- settings -------------------------------------------------------------------------------------


def test_settings_stored_before_cv_folds_load_without_it():
    study = optuna.create_study()
    study.set_user_attr("settings", {"dataset": "mnist", "epochs": 3, "sampler": "tpe",
                                     "pruner": "median", "seed": 0})
    study.set_user_attr("space", {})
    settings, _ = stored_definition(study)
    assert settings.cv_folds == 1


def test_a_study_file_sets_cv_folds():
    for folds in (1, 5, 10):
        assert parse_study({"study": {"cv_folds": folds}}).settings.cv_folds == folds
    assert StudySettings().cv_folds == 1


@pytest.mark.parametrize("value", [0, 11, -1, 2.0, True, "3"])
def test_cv_folds_out_of_bounds_is_a_one_line_error(value):
    with pytest.raises(UsageError) as raised:
        parse_study({"study": {"cv_folds": value}})
    message = str(raised.value)
    assert "\n" not in message
    assert f"cv_folds must be an integer from 1 to 10, got {value!r}" in message


def test_the_overview_says_the_study_cross_validates():
    parsed = parse_study({"study": {"cv_folds": 5, "epochs": 3}, "space": {"lr": 0.01}})
    study = optuna.create_study()
    study.add_trial(optuna.create_trial(value=0.3, intermediate_values={
        s: 0.3 for s in range(1, 16)}, user_attrs={"epochs_run": 15, "val_accuracy": 0.9}))
    study.add_trial(optuna.create_trial(state=TrialState.PRUNED, intermediate_values={
        1: 0.9, 2: 0.8, 3: 0.7, 4: 0.9}, user_attrs={"epochs_run": 4}))
    rows = dict(overview(StudyView(study, study.get_trials(), parsed.settings,
                                   parsed.space)).tables[0][1].rows)
    assert rows["cross-validation"].startswith("5 stratified folds")
    assert "means over its folds" in rows["cross-validation"]
    assert rows["compute saved by pruning"].startswith("11 epochs not run")  # 5 x 3 - 4
    plain = parse_study({"study": {"epochs": 3}, "space": {"lr": 0.01}})
    rows = dict(overview(StudyView(study, study.get_trials(), plain.settings,
                                   plain.space)).tables[0][1].rows)
    assert "cross-validation" not in rows


# -- end to end -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_cross_validated_study_runs_from_the_command_line(workdir):
    config = workdir / "studies" / "cv.toml"
    config.write_text((workdir / "studies" / "mnist.toml").read_text()
                      .replace("seed = 0", "seed = 0\ncv_folds = 2", 1))
    # No pruning: every trial trains both folds (the default pruner may stop the second trial
    # after fold 1, as it should).
    result = run_cli("--config", str(config), "--dataset", "mnist-sample", "--epochs", "1",
                     "--trials", "2", "--pruner", "none", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert ", 1 epoch in each of 2 folds\n" in result.stdout  # the best trial's line
    study = optuna.load_study(study_name="cv", storage=f"sqlite:///{workdir}/studies/cv.db")
    assert study.user_attrs["settings"]["cv_folds"] == 2
    trials = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(trials) == 2
    for trial in trials:
        assert sorted(trial.intermediate_values) == [1, 2]  # one epoch on each fold
        assert trial.user_attrs["epochs_run"] == 2
        assert len(trial.user_attrs["fold_losses"]) == 2
        if trial.state == TrialState.COMPLETE:
            assert math.isclose(trial.value, sum(trial.user_attrs["fold_losses"]) / 2,
                                abs_tol=1e-5)
    bad = config.with_name("bad.toml")
    bad.write_text(config.read_text().replace("cv_folds = 2", "cv_folds = 11"))
    refused = run_cli("--config", str(bad), "--dataset", "mnist-sample", "--trials", "1",
                      cwd=workdir)
    assert refused.returncode == 2
    assert "cv_folds must be an integer from 1 to 10, got 11" in refused.stderr
