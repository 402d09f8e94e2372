"""Tier 1: the report's arithmetic and warnings, on hand-made studies (no training), and the
tutorial baseline's test result kept in the study (its training replaced by an untrained net)."""

from __future__ import annotations

import dataclasses
import io
import random

import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution, IntDistribution

import tuning.evaluate
from tuning.data import load_arrays
from tuning.evaluate import classification_metrics, confusion_matrix
from tuning.networks import FAMILY_MODEL
from tuning.objective import build_trial_model
from tuning.report import build_report, result_line
from tuning.report_heldout import BASELINE_ATTR
from tuning.report_regularization import reading, regularization
from tuning.report_render import Table, fmt, render_markdown
from tuning.report_stats import (
    StudyView,
    edge_warnings,
    hard_limit,
    holm,
    mean_and_ci,
    p_text,
    rank_correlation,
)
from tuning.space import BOUNDS
from tuning.study_file import StudySettings, parse_study


def _view(best_params: dict, others: int = 3, queued: bool = False) -> StudyView:
    """A study whose best trial has `best_params` (queued by hand if `queued`), beside `others`
    worse ones inside every range."""
    space = parse_study({"space": {"lr": {"low": 1e-4, "high": 1e-1, "log": True},
                                   "blocks": {"low": 1, "high": 3},
                                   "dropout": {"low": 0.0, "high": 0.5}}}).space
    dists = {"lr": FloatDistribution(1e-4, 1e-1, log=True), "blocks": IntDistribution(1, 3),
             "dropout": FloatDistribution(0.0, 0.5)}
    study = optuna.create_study()
    study.add_trial(optuna.create_trial(value=0.1, params=best_params, distributions=dists,
                                        user_attrs={"warm_start": "study file"} if queued
                                        else {}))
    for i in range(others):
        study.add_trial(optuna.create_trial(value=0.5 + i, params={"lr": 1e-2, "blocks": 2,
                                                                   "dropout": 0.2},
                                            distributions=dists))
    return StudyView(study, study.trials, StudySettings(), space)


def test_best_value_on_the_edge_of_its_range_is_flagged():
    warnings = edge_warnings(_view({"lr": 1e-4, "blocks": 3, "dropout": 0.25}))
    assert len(warnings) == 2
    blocks, lr = sorted(warnings, key=lambda w: "best lr" in w)
    # Up to 6 blocks fit the family: a range ending at 3 can be widened.
    assert "best blocks (3)" in blocks and "widen the range" in blocks
    assert "best lr" in lr and "lower edge" in lr and "widen the range" in lr


def test_a_best_value_at_the_familys_limit_needs_a_new_architecture(monkeypatch):
    import tuning.report_stats

    # The same study, as if 3 blocks were as many as the family has.
    monkeypatch.setattr(tuning.report_stats, "hard_limit",
                        lambda name, edge: 3 if (name, edge) == ("blocks", "upper") else None)
    (blocks,) = [w for w in edge_warnings(_view({"lr": 1e-3, "blocks": 3, "dropout": 0.25}))
                 if "blocks" in w]
    assert "cannot be widened" in blocks and "new architecture" in blocks


def test_best_value_inside_its_range_is_not_flagged():
    assert edge_warnings(_view({"lr": 1e-2, "blocks": 2, "dropout": 0.25})) == []


def test_an_edge_says_nothing_before_four_trials_or_of_a_configuration_queued_by_hand():
    on_edges = {"lr": 1e-4, "blocks": 3, "dropout": 0.0}
    assert len(edge_warnings(_view(on_edges))) == 3
    assert edge_warnings(_view(on_edges, others=2)) == []
    assert edge_warnings(_view(on_edges, queued=True)) == []


def test_a_space_without_an_optimizer_reports_the_default_one_trained_with():
    from tuning.report_sections import optimizers

    view = _view({"lr": 1e-3, "blocks": 1, "dropout": 0.1})
    assert [view.optimizer(t) for t in view.trials] == ["adam"] * 4
    assert "None" not in render_markdown("r", [optimizers(view)])


def test_only_the_pruners_stops_are_savings_and_untrained_trials_did_not_stop_early():
    from tuning.report_sections import overview

    view = _view({"lr": 1e-3, "blocks": 1, "dropout": 0.1})
    epochs = view.settings.epochs
    # Over the size limit: never trained, so it neither saved epochs nor stopped early.
    view.study.add_trial(optuna.create_trial(
        state=optuna.trial.TrialState.PRUNED,
        user_attrs={"prune_reason": "over the limits before training: 15,770 parameters"}))
    # Diverged at epoch 1: stopped by the objective, not by the pruner.
    view.study.add_trial(optuna.create_trial(
        state=optuna.trial.TrialState.PRUNED, intermediate_values={},
        user_attrs={"epochs_run": 1, "prune_reason": "loss diverged (not finite) at epoch 1"}))
    view = StudyView(view.study, view.study.trials, view.settings, view.space)
    rows = dict(overview(view).tables[0][1].rows)
    assert rows["compute saved by pruning"].startswith("0 epochs not run")
    assert rows["stopped early for a diverged loss"].startswith(
        f"1 trial, {epochs - 1} epochs not run")
    population = view.population()
    assert "The pruned trial stopped early" in population  # the diverged one
    assert "The trial pruned before training (over the study's limits) has no loss." in \
        population


def test_a_study_without_a_complete_trial_says_there_is_nothing_to_compare():
    study = optuna.create_study()
    for _ in range(2):
        study.add_trial(optuna.create_trial(
            state=optuna.trial.TrialState.PRUNED,
            user_attrs={"prune_reason": "over the limits before training: too large"}))
    view = StudyView(study, study.trials, StudySettings(), {})
    assert view.population() == (
        "Counted: no trial completed, so there are no losses to compare. The 2 trials pruned "
        "before training (over the study's limits) have no loss.")


def test_trials_the_runs_budget_stopped_are_no_saving_of_pruning():
    from tuning.report_sections import overview

    view = _view({"lr": 1e-3, "blocks": 1, "dropout": 0.1})
    view.study.add_trial(optuna.create_trial(
        state=optuna.trial.TrialState.PRUNED, intermediate_values={1: 0.4},
        user_attrs={"epochs_run": 1, "prune_reason": "the run's --budget ran out after epoch 1"}))
    view = StudyView(view.study, view.study.trials, view.settings, view.space)
    rows = dict(overview(view).tables[0][1].rows)
    left = view.settings.epochs - 1
    assert rows["compute saved by pruning"].startswith("0 epochs not run")
    assert rows["stopped by the run's --budget"].startswith(f"1 trial, {left} epochs not run")


def test_table_cells_show_four_significant_digits():
    assert fmt(0.0012345) == "0.001234"
    assert fmt(0.00149) != fmt(0.00151)
    assert fmt(0.99996) == "1.000"  # not 1.0000: that claims a fifth digit
    assert fmt(0.0340001) == "0.03400" and fmt(0.2500003) == "0.2500"
    # A value its short form gives exactly (a choice) has no trailing zeros, which say rounded.
    assert (fmt(0.001), fmt(0.034), fmt(0.1), fmt(12.0), fmt(0.9)) == \
        ("0.001", "0.034", "0.1", "12", "0.9")
    assert fmt(1234.56) == "1235" and fmt(12.000001) == "12.00"  # no trailing "."
    assert fmt(1e-5) == "1e-05" and fmt(123456.0) == "1.235e+05"
    assert fmt(0.0003) == "0.0003" and fmt(0.00012345) == "0.0001234"  # as "g" writes them
    assert fmt(9999.6) == "1.000e+04" and fmt(1.00004e-5) == "1.000e-05"  # rounded: zeros kept
    assert fmt(1234.5, digits=2) == "1.2e+03" and fmt(0.5, digits=1) == "0.5"
    assert (fmt(None), fmt(float("nan")), fmt(3), fmt(0.0)) == ("-", "-", "3", "0")


def test_p_values_never_round_across_the_significance_level():
    assert p_text(0.0498) == "p = 0.0498"  # not "p = 0.05" beside "beyond noise"
    assert p_text(0.049996) == "p = 0.049996"
    assert p_text(0.0501) == "p = 0.05" and p_text(0.5514) == "p = 0.55"
    assert p_text(8e-5) == "p < 0.0001"
    result = result_line({"best_trial": 3, "best": {"accuracy": 0.9, "accuracy_ci": [0.8, 0.95]},
                          "tutorial": {"accuracy": 0.85, "accuracy_ci": [0.75, 0.9]},
                          "mcnemar": {"b": 10, "c": 21, "p_value": 0.0498}})
    assert result.endswith("McNemar p = 0.0498 (beyond noise)")


def test_rank_correlation_p_value_is_exact_for_few_trials():
    # 4 trials in perfect order: 2 of the 24 orderings are as extreme (spearmanr says p = 0).
    assert rank_correlation([1, 2, 3, 4], [1, 2, 3, 4]) == pytest.approx((1.0, 2 / 24))
    assert rank_correlation([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx((0.8, 8 / 24))
    assert reading((0.8, 0.2), 4, None) == "no clear effect on validation loss (n=4, p = 0.2)"
    # No correlation to read: say why, not "too few trials" for 5 trials of one value.
    assert reading(None, 3, None) == "too few trials (n=3; 4 needed)"
    assert reading(None, 5, None, values=1).startswith("not varied")
    assert reading(None, 5, None, values=3).endswith("had the same validation loss")
    assert reading((-0.9, 0.001), 20, (-0.5, 0.3)) == \
        "more helped strongly (n=20, p = 0.001)"  # the gap's correlation is chance
    assert reading((-0.9, 0.001), 20, (-0.5, 0.01)).endswith("; narrows the gap (p = 0.01)")


def test_holm_adjusts_p_values_tested_together_in_the_order_given():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5]) == [0.5] and holm([]) == []
    assert holm([0.4, 0.9]) == pytest.approx([0.8, 0.9])  # never above 1, never decreasing


def test_a_reading_is_of_the_adjusted_p_value_and_label_smoothing_of_its_accuracy():
    # p = 0.023 alone would claim an effect; one of 5 regularizers tested, it is chance.
    assert reading((0.6, 0.023), 13, None, adjusted=0.115, tested=5) == (
        "no clear effect on validation loss (n=13, p = 0.023; adjusted for 5 regularizers: "
        "p = 0.12)")
    assert reading((0.6, 0.002), 13, None, adjusted=0.01, tested=5).startswith(
        "more hurt strongly (n=13, p = 0.002; adjusted")
    # Higher accuracy with more smoothing is help, not harm.
    assert reading((0.6, 0.002), 13, None, by_accuracy=True) == \
        "more helped strongly (accuracy; n=13, p = 0.002)"
    assert reading(None, 6, None, values=3, by_accuracy=True).endswith(
        "had the same validation accuracy")
    assert reading((-0.9, 0.001), 20, (-0.5, 0.01), gap_adjusted=0.09, tested=3) == \
        "more helped strongly (n=20, p = 0.001)"


def test_label_smoothing_is_read_by_accuracy_and_hflip_is_a_regularizer():
    """Smoothing raises validation cross-entropy whatever it does to accuracy: trials whose
    loss rises with it but whose accuracy does not move are not "hurt"."""
    from optuna.distributions import CategoricalDistribution

    space = parse_study({"space": {"label_smoothing": {"choices": [0.0, 0.05, 0.1]},
                                   "hflip": {"choices": [False, True]}}}).space
    dists = {"label_smoothing": CategoricalDistribution([0.0, 0.05, 0.1]),
             "hflip": CategoricalDistribution([False, True])}
    study = optuna.create_study()
    for i in range(12):
        smoothing = (0.0, 0.05, 0.1)[i % 3]
        study.add_trial(optuna.create_trial(
            value=0.2 + smoothing * 3 + 0.001 * i, params={"label_smoothing": smoothing,
                                                           "hflip": i % 2 == 0},
            distributions=dists, user_attrs={"val_accuracy": 0.9 + 0.001 * ((i * 7) % 5)}))
    view = StudyView(study, study.trials, StudySettings(), space)
    section = regularization(view)
    rows = {row[0]: row for row in section.tables[0][1].rows}
    assert set(rows) == {"hflip", "label_smoothing"}
    assert rows["label_smoothing"][3] > 0.9  # loss rises with it...
    assert rows["label_smoothing"][-1].startswith("no clear effect on validation accuracy")
    assert rows["hflip"][1] == 12
    assert "adjusted by Holm's method for the 2 regularizers" in " ".join(section.paragraphs)


def test_metrics_from_a_known_confusion_matrix():
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = np.array([0, 0, 1, 1, 1, 0])
    cm = confusion_matrix(y_true, y_pred, 3)
    assert cm.tolist() == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]
    m = classification_metrics(cm)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert [c["precision"] for c in m["per_class"]] == [pytest.approx(2 / 3),
                                                        pytest.approx(2 / 3), None]
    assert [c["recall"] for c in m["per_class"]] == pytest.approx([2 / 3, 1.0, 0.0])
    assert [c["f1"] for c in m["per_class"]] == pytest.approx([2 / 3, 0.8, 0.0])
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8 + 0.0) / 3)


def test_macro_scores_average_the_classes_tested_or_predicted_as_scikit_learn():
    from sklearn.metrics import f1_score, precision_score, recall_score

    # Class 3 has no test image and is never predicted; class 2 has none but is predicted.
    y_true = np.array([0, 0, 0, 1, 1, 1])
    y_pred = np.array([0, 0, 2, 1, 1, 0])
    m = classification_metrics(confusion_matrix(y_true, y_pred, 4))
    assert m["macro_classes"] == 3
    assert m["macro_precision"] == pytest.approx(
        precision_score(y_true, y_pred, average="macro", zero_division=0))
    assert m["macro_recall"] == pytest.approx(
        recall_score(y_true, y_pred, average="macro", zero_division=0))
    assert m["macro_f1"] == pytest.approx(
        f1_score(y_true, y_pred, average="macro", zero_division=0))
    assert [c["support"] for c in m["per_class"]] == [3, 3, 0, 0]


def test_classes_missing_from_a_split_are_named():
    arrays = load_arrays("mnist-sample")
    assert arrays.classes_missing() == {}
    rare = arrays.train_y == 7
    lacking = dataclasses.replace(arrays, train_x=arrays.train_x[~rare],
                                  train_y=arrays.train_y[~rare],
                                  test_y=np.where(arrays.test_y == 3, 4, arrays.test_y))
    assert lacking.classes_missing() == {"training": ["7"], "test": ["3"]}


def test_images_under_two_classes_are_counted_once_each_over_the_splits():
    from tuning.data import _digests, labels_shared

    arrays = load_arrays("mnist-sample")
    assert arrays.images_in_two_classes() == (0, None)
    # Two training images copied into the test split under another label, one of them twice.
    copies = arrays.train_x[[0, 1, 1]]
    labels = (arrays.train_y[[0, 1, 1]] + 1) % 10
    test_x = np.concatenate([arrays.test_x, copies])
    test_y = np.concatenate([arrays.test_y, labels])
    shared = labels_shared([_digests(arrays.train_x), _digests(arrays.val_x), _digests(test_x)],
                           [arrays.train_y, arrays.val_y, test_y])
    mixed = dataclasses.replace(arrays, test_x=test_x, test_y=test_y, labels_shared=shared)
    count, example = mixed.images_in_two_classes()
    assert count == 2
    assert example == (arrays.class_names[arrays.train_y[0]],
                       arrays.class_names[labels[0]])


def spearman(x: list[float], y: list[float]) -> float | None:
    """rank_correlation's rho alone."""
    correlation = rank_correlation(x, y)
    return None if correlation is None else correlation[0]


def test_interval_uses_student_t_and_rank_correlation_is_monotone():
    mean, sd, half = mean_and_ci([1.0, 2.0, 3.0])
    assert (mean, sd) == (2.0, 1.0)
    assert half == pytest.approx(4.302653 / 3**0.5, rel=1e-5)  # t(0.975, 2), not 1.96
    assert spearman([1, 2, 3, 4], [10, 20, 30, 1000]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) is None  # too few points to say anything


def test_rank_correlation_averages_ties_whatever_the_order_of_the_trials():
    rng = random.Random(0)
    x = [rng.choice([0.0, 0.1, 0.2, 0.3]) for _ in range(100)]  # a grid: many ties
    y = [v + rng.gauss(0, 0.2) for v in x]
    first = spearman(x, y)
    for _ in range(5):
        order = rng.sample(range(100), 100)
        assert spearman([x[i] for i in order], [y[i] for i in order]) == pytest.approx(first)
    # Tied values share their average rank (1.5, 1.5, 3.5, 3.5), not 1, 2, 3, 4 by position.
    assert spearman([1, 1, 2, 2], [1, 2, 3, 4]) == pytest.approx(0.894427, rel=1e-5)


def test_hard_limits_are_the_search_spaces_own():
    assert (hard_limit("blocks", "lower"), hard_limit("blocks", "upper")) == (
        BOUNDS["blocks"].low, BOUNDS["blocks"].high)
    assert hard_limit("dropout", "lower") == 0 and hard_limit("dropout", "upper") is None
    assert hard_limit("lr", "lower") is None  # > 0: a range never reaches it
    warnings = edge_warnings(_view({"lr": 1e-2, "blocks": 2, "dropout": 0.0}))
    assert len(warnings) == 1 and "preferred (almost) none of it" in warnings[0]


BASELINE_FILE = """
[space]
channels = 4
batch_size = 256
"""


@pytest.fixture()
def reportable(tmp_path, monkeypatch):
    """A hand-made study on mnist-sample with two complete trials, a tutorial file, and
    `retrain` replaced by an untrained network that counts the baseline's trainings."""
    settings = StudySettings(dataset="mnist-sample", epochs=1)
    space = {"lr": {"low": 1e-3, "high": 1e-1, "log": True}, "channels": 4, "batch_size": 256}
    study_file = parse_study({"space": space})
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db", study_name="s")
    study.set_user_attr("settings", dataclasses.asdict(settings))
    study.set_user_attr("space", study_file.space_dict())
    study.set_user_attr("data", load_arrays("mnist-sample", download=False).fingerprint())
    for lr, value in ((1e-2, 0.3), (3e-2, 0.4)):
        study.add_trial(optuna.create_trial(
            value=value, params={"lr": lr}, user_attrs={"val_accuracy": 1 - value},
            distributions={"lr": FloatDistribution(1e-3, 1e-1, log=True)}))
    seed_file = tmp_path / "seed.toml"
    seed_file.write_text(BASELINE_FILE)
    trained = []

    def untrained(params, space, data, runtime, seed, epochs, network=FAMILY_MODEL,
                  stop_after=None):
        trained.append(params)
        return build_trial_model(params, space, data, runtime, seed, network)[0]

    monkeypatch.setattr(tuning.evaluate, "retrain", untrained)
    baselines = lambda: sum(p == {} for p in trained)  # noqa: E731 - the best trial's are not
    return study, seed_file, baselines


def _report(study, tmp_path, seed_file) -> tuple[dict, str]:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    metrics = build_report(study, out, "cpu", seed_file=seed_file)
    return metrics, (out / "summary.md").read_text()


def test_a_second_report_reuses_the_baseline_kept_in_the_study(reportable, tmp_path):
    study, seed_file, baselines = reportable
    first, summary = _report(study, tmp_path, seed_file)
    assert baselines() == 1 and "kept in the study for later reports" in summary
    entry, = study.user_attrs[BASELINE_ATTR].values()
    assert entry["key"]["device_type"] == "cpu" and entry["key"]["epochs"] == 1
    again = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/s.db")
    second, summary = _report(again, tmp_path, seed_file)
    assert baselines() == 1  # not trained again
    assert f"reused from a report of {entry['computed_at']}" in summary
    assert second["tutorial"] == first["tutorial"]
    # Another tutorial configuration is another key: trained, and kept beside the first.
    seed_file.write_text(BASELINE_FILE.replace("channels = 4", "channels = 2"))
    _report(again, tmp_path, seed_file)
    assert baselines() == 2 and len(again.user_attrs[BASELINE_ATTR]) == 2


def test_a_read_only_storage_retrains_the_baseline_without_failing(reportable, tmp_path):
    study, seed_file, baselines = reportable
    read_only = optuna.load_study(study_name="s",
                                  storage=f"sqlite:///file:{tmp_path}/s.db?mode=ro&uri=true")
    for expected in (1, 2):
        metrics, summary = _report(read_only, tmp_path, seed_file)
        assert baselines() == expected and "could not be kept in the study" in summary
        assert 0 <= metrics["tutorial"]["accuracy"] <= 1
    assert BASELINE_ATTR not in study.user_attrs


def _searched(study: optuna.Study) -> None:
    """Mark a hand-made study as tuning.search's, which `tuning report` loads."""
    from tuning.cli import TARGET_ATTR

    study.set_user_attr(TARGET_ATTR, len(study.trials))


def test_bad_input_stops_the_report_before_its_folder_is_created(reportable, tmp_path, capsys):
    from tuning.report import main as report

    study, _, baselines = reportable
    _searched(study)
    storage = ["--study", "s", "--storage", f"sqlite:///{tmp_path}/s.db"]
    out = tmp_path / "reports" / "s"
    other_data = {**study.user_attrs["data"], "sha256": "0" * 64}
    cases = [
        (["--artifacts", str(tmp_path / "nonexistent")], "--artifacts"),
        (["--device", "cuda:99"], "--device 'cuda:99'"),
        (["--dataset", str(tmp_path)], "use --data-dir"),
        (["--data-dir", str(tmp_path / "nonexistent")], "--data-dir"),
    ]
    for args, expected in cases:
        assert report([*storage, "--out", str(out), *args]) == 2, args
        err = capsys.readouterr().err
        assert expected in err and len(err.strip().splitlines()) == 1, (args, err)
        assert not (tmp_path / "reports").exists(), args
    # Images other than the study's (the same check stops a folder of one class).
    study.set_user_attr("data", other_data)
    assert report([*storage, "--out", str(out)]) == 2
    assert "run on other data" in capsys.readouterr().err
    assert not (tmp_path / "reports").exists()
    assert baselines() == 0
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    assert report([*storage, "--out", str(a_file)]) == 2
    assert capsys.readouterr().err.strip() == f"error: --out '{a_file}' is a file, not a directory"
    assert a_file.read_text() == "mine"


def test_a_report_stopped_after_creating_its_folder_removes_it(reportable, tmp_path, capsys,
                                                               monkeypatch):
    import tuning.report
    from tuning.errors import UsageError
    from tuning.report import main as report

    def refused(*args, **kwargs):
        raise UsageError("refused later")

    _searched(reportable[0])
    monkeypatch.setattr(tuning.report, "held_out_test", refused)
    kept = tmp_path / "kept"
    kept.mkdir()
    for out in (tmp_path / "reports" / "s", kept):
        assert report(["--study", "s", "--storage", f"sqlite:///{tmp_path}/s.db",
                       "--out", str(out)]) == 2
        assert "refused later" in capsys.readouterr().err
    assert not (tmp_path / "reports").exists()
    assert kept.is_dir()  # there before: the report only removes what it created


def test_tables_write_losses_and_accuracies_with_four_decimals_and_intervals_not_below_0():
    from tuning.report_render import Table, fixed
    from tuning.report_stats import loss_interval

    table = Table(["optimizer", "loss", "lr"], [["adam", 0.72, 0.001], ["sgd", 0.702, 0.0003]],
                  fixed_columns=("loss",))
    assert "| adam | 0.7200 | 0.001 |" in table.markdown()
    assert "<td>0.7020</td><td>3e-04</td>" in table.html().replace("0.0003", "3e-04")
    assert (fixed(0.0), fixed(1.0), fixed(1.2583e-7), fixed(None)) == \
        ("0.0000", "1.0000", "1.258e-07", "-")
    # A t interval of 2 losses spans more than any loss: none is given; 3 or more, cut at 0.
    assert loss_interval(0.2310, 2.2803, 2) == "too few for an interval: n=2"
    mean, _, half = mean_and_ci([0.01, 0.02, 0.5])
    assert loss_interval(mean, half, 3) == f"0.0000 .. {mean + half:.4f}"
    assert loss_interval(0.3, None, 1) == "-"


def test_one_epoch_not_run_is_singular():
    from tuning.report_sections import overview

    view = _view({"lr": 1e-3, "blocks": 1, "dropout": 0.1})
    epochs = view.settings.epochs
    view.study.add_trial(optuna.create_trial(
        state=optuna.trial.TrialState.PRUNED, intermediate_values={1: 0.4},
        user_attrs={"epochs_run": epochs - 1}))
    view = StudyView(view.study, view.study.trials, view.settings, view.space)
    assert dict(overview(view).tables[0][1].rows)["compute saved by pruning"].startswith(
        "1 epoch not run")


def test_markdown_cells_keep_a_class_named_with_a_pipe_in_its_column():
    table = Table(["class", "recall"], [["cats|dogs", 0.5], ["two\nlines", 1.0]])
    assert table.markdown().splitlines()[2:] == ["| cats\\|dogs | 0.5 |", "| two lines | 1 |"]


def test_one_line_escapes_tabs_line_breaks_and_backslashes():
    from tuning.errors import one_line

    assert one_line("a\tb\nc\\d\r") == "a\\tb\\nc\\\\d\\r"
    assert one_line("/data/ümlaut image.png") == "/data/ümlaut image.png"


def test_a_checkpoint_that_does_not_fit_the_network_built_now_is_said(tmp_path, tiny_data,
                                                                       caplog):
    """A builder changed since the search builds another network from the trial's
    parameters: its checkpoint no longer loads. The retrain says why, loudly, where it said
    that no checkpoint was found."""
    import io

    import torch

    from tuning.device import resolve_device
    from tuning.model import ArchConfig, build_model
    from tuning.space import Param
    from tuning.storage import artifact_store

    store = artifact_store(tmp_path / "artifacts")
    other = build_model(ArchConfig(channels=8), tiny_data.input_shape, tiny_data.num_classes)
    buffer = io.BytesIO()
    torch.save(other.state_dict(), buffer)
    (tmp_path / "weights.pt").write_bytes(buffer.getvalue())
    study = optuna.create_study()
    trial = study.ask()
    artifact_id = optuna.artifacts.upload_artifact(artifact_store=store, study_or_trial=trial,
                                                   file_path=str(tmp_path / "weights.pt"))
    study.tell(trial, 0.5)
    frozen = optuna.trial.create_trial(value=0.5, params={}, distributions={}, user_attrs={
        "seed": 3, "checkpoint_artifact": artifact_id})
    space = {"channels": Param("channels", "fixed", value=4),
             "batch_size": Param("batch_size", "fixed", value=256)}
    with caplog.at_level("WARNING", logger="tuning"):
        obtained = tuning.evaluate.trial_model(frozen, space, tiny_data, resolve_device("cpu"),
                                               1, store)
    assert obtained.retrained_val_loss is not None
    assert obtained.unused_checkpoint.startswith(
        "its checkpoint does not fit the network built here from its parameters (was the "
        "model builder or torchvision changed since?): Error(s) in loading state_dict")
    assert obtained.unused_checkpoint in caplog.text
    missing = optuna.trial.create_trial(value=0.5, params={}, distributions={}, user_attrs={
        "seed": 3, "checkpoint_artifact": "no-such-artifact"})
    obtained = tuning.evaluate.trial_model(missing, space, tiny_data, resolve_device("cpu"), 1,
                                           store)
    assert obtained.unused_checkpoint == \
        "its checkpoint artifact no-such-artifact was not found or does not load"


def test_the_median_interval_lies_between_two_of_the_values_whatever_their_spread():
    from tuning.report_stats import MIN_FOR_MEDIAN_INTERVAL, median_interval, median_text

    # Of 5 values even min .. max covers the median only 1 - 2 / 32 = 94% of the time.
    assert median_interval([1.0, 2.0, 3.0, 4.0, 5.0]) is None
    assert MIN_FOR_MEDIAN_INTERVAL == 6 and median_interval([6.0, 1, 2, 3, 4, 5]) == (1, 6)
    # 10 values: from the 2nd smallest to the 2nd largest (1 - 2 * 11 / 1024 = 97.9%).
    assert median_interval([float(v) for v in range(10, 0, -1)]) == (2.0, 9.0)
    # Two diverged trials among ten: a mean's t interval ran from below 0 to past the data.
    losses = [0.3, 0.35, 0.4, 0.42, 0.5, 0.55, 0.6, 0.7, 25.0, 30.0]
    mean, _, half = mean_and_ci(losses)
    assert mean - half < 0
    assert median_text(losses) == "0.3500 .. 25.0000"
    assert median_text([0.3, 20.0]) == "too few for an interval: n=2"
    assert median_text([0.3]) == "-"


def test_a_rank_correlation_of_many_tied_trials_takes_its_p_value_from_orderings():
    from scipy.stats import spearmanr

    # 9 trials of 3 label-smoothing values: spearmanr's t approximation says p = 0.041, below
    # 0.05; of all 9! orderings 19,008 are as strong (p = 0.052), which 10,000 random ones
    # estimate.
    x = [0.0, 0.1, 0.05, 0.1, 0.05, 0.0, 0.1, 0.1, 0.0]
    y = [0.163, 0.908, 0.885, 0.921, 0.861, 0.443, 0.637, 1.164, 0.866]
    assert spearmanr(x, y).pvalue < 0.05
    rho, p = rank_correlation(x, y)
    assert p == pytest.approx(19_008 / 362_880, abs=0.005)
    assert rank_correlation(x, y) == (rho, p)  # seeded: the same report says the same p
    assert reading((rho, p), 9, None, values=3).startswith("no clear effect")


def test_trials_csv_writes_lists_as_json(tmp_path):
    import csv
    import json

    from tuning.report_render import trials_csv

    study = optuna.create_study()
    study.add_trial(optuna.create_trial(
        state=optuna.trial.TrialState.PRUNED, intermediate_values={1: 0.5},
        user_attrs={"train_eval_losses": [None], "val_accuracies": [0.5]}))
    view = StudyView(study, study.trials, StudySettings(), {})
    row, = csv.DictReader(io.StringIO(trials_csv(view)))
    assert row["train_eval_losses"] == "[null]"  # a diverged epoch: Python wrote "[None]"
    assert json.loads(row["val_accuracies"]) == [0.5]


def test_a_long_figure_title_is_set_on_lines_that_fit():
    # plotly cuts a title off at the figure's edge: a long one goes on below, smaller.
    from tuning.report_figures import TITLE_CHARS, _fitted

    long = ("Parallel coordinates (complete trials): the 2 most important of 14 parameters; "
            "weight_decay of importance 0, shown to make two axes; 12 of importance 0 left out")
    head, rest = _fitted(long).split("<br><sup>")
    assert head == "Parallel coordinates (complete trials)"
    lines = rest.removesuffix("</sup>").split("<br>")
    assert " ".join(lines) == long.split(": ", 1)[1]
    assert all(len(line) <= TITLE_CHARS / 0.7 for line in lines)
    assert _fitted("Search history (complete trials)") == "Search history (complete trials)"


def test_a_long_title_over_a_loss_of_0_is_fitted_and_the_margin_grows_with_its_lines():
    import plotly.graph_objects as go

    from tuning.report_figures import SUBTITLE_LINE, TITLE_MARGIN, finish

    long = ("Validation loss by learning rate: complete trials of every optimizer, each one's "
            "mean and 95% interval where it has three trials or more")
    short = finish(go.Figure(go.Scatter(x=[1, 2], y=[0.5, 0.2])), "Search history")
    assert short.layout.margin.t == TITLE_MARGIN
    fig = go.Figure(go.Scatter(x=[1, 2], y=[0.5, 0.0]))
    fig.update_yaxes(type="log")
    title = finish(fig, long).layout.title.text
    head, rest = title.split("<br>", 1)
    assert head == "Validation loss by learning rate"
    assert rest.endswith("drawn at 0.01 (its hover says 0).</sup>")
    assert title.count("<br>") == 2  # the rest of the title, then the note on 0
    assert fig.layout.margin.t == TITLE_MARGIN + 2 * SUBTITLE_LINE
    assert fig.layout.height == short.layout.height + 2 * SUBTITLE_LINE  # the plot keeps its own


def test_label_smoothings_reading_counts_the_trials_that_recorded_an_accuracy():
    from optuna.distributions import CategoricalDistribution

    space = parse_study({"space": {"label_smoothing": {"choices": [0.0, 0.05, 0.1]}}}).space
    dists = {"label_smoothing": CategoricalDistribution([0.0, 0.05, 0.1])}
    study = optuna.create_study()
    for i in range(6):  # the last 3 recorded before accuracy was: no accuracy to read
        study.add_trial(optuna.create_trial(
            value=0.2 + 0.01 * i, params={"label_smoothing": (0.0, 0.05, 0.1)[i % 3]},
            distributions=dists, user_attrs={"val_accuracy": 0.9 + 0.01 * i} if i < 3 else {}))
    row, = regularization(StudyView(study, study.trials, StudySettings(), space)).tables[0][1].rows
    assert row[-1] == "too few trials (n=3; 4 needed)"


def test_a_configuration_is_listed_in_the_order_of_the_search_space():
    """The study file's order (optimizer, lr first), not fixed parameters before searched ones."""
    from tuning.study_file import StudySettings, parse_study

    space = parse_study({"space": {"optimizer": {"choices": ["adam", "sgd"]},
                                   "lr": {"low": 1e-3, "high": 1e-1, "log": True},
                                   "channels": 8, "repeat": {"choices": [0, 1]}}}).space
    frozen = optuna.trial.create_trial(
        params={"repeat": 1, "lr": 0.01, "optimizer": "sgd"},
        distributions={"repeat": optuna.distributions.CategoricalDistribution([0, 1]),
                       "lr": optuna.distributions.FloatDistribution(1e-3, 1e-1, log=True),
                       "optimizer": optuna.distributions.CategoricalDistribution(["adam", "sgd"])},
        value=0.5)
    view = StudyView(optuna.create_study(), [frozen], StudySettings(), space)
    assert list(view.configuration(frozen)) == ["optimizer", "lr", "channels"]
