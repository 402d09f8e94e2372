"""Tier 1: the report's arithmetic and warnings, on hand-made studies (no training)."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution, IntDistribution

from tuning.evaluate import classification_metrics, confusion_matrix
from tuning.report import StudyView, edge_warnings, mean_and_ci, spearman
from tuning.space import StudySettings, parse_study


def _view(best_params: dict) -> StudyView:
    space = parse_study({"space": {"lr": {"low": 1e-4, "high": 1e-1, "log": True},
                                   "blocks": {"low": 1, "high": 3},
                                   "dropout": {"low": 0.0, "high": 0.5}}}).space
    dists = {"lr": FloatDistribution(1e-4, 1e-1, log=True), "blocks": IntDistribution(1, 3),
             "dropout": FloatDistribution(0.0, 0.5)}
    study = optuna.create_study()
    study.add_trial(optuna.create_trial(value=0.1, params=best_params, distributions=dists))
    study.add_trial(optuna.create_trial(value=0.5, params={"lr": 1e-2, "blocks": 2,
                                                           "dropout": 0.2},
                                        distributions=dists))
    return StudyView(study, study.trials, StudySettings(), space)


def test_best_value_on_the_edge_of_its_range_is_flagged():
    warnings = edge_warnings(_view({"lr": 1e-4, "blocks": 3, "dropout": 0.25}))
    assert len(warnings) == 2
    blocks, lr = sorted(warnings, key=lambda w: "best lr" in w)
    assert "best blocks (3)" in blocks and "new architecture" in blocks
    assert "best lr" in lr and "lower edge" in lr and "widen the range" in lr


def test_best_value_inside_its_range_is_not_flagged():
    assert edge_warnings(_view({"lr": 1e-2, "blocks": 2, "dropout": 0.25})) == []


def test_metrics_from_a_known_confusion_matrix():
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = np.array([0, 0, 1, 1, 1, 0])
    cm = confusion_matrix(y_true, y_pred, 3)
    assert cm.tolist() == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]
    m = classification_metrics(cm)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert [c["precision"] for c in m["per_class"]] == pytest.approx([2 / 3, 2 / 3, 0.0])
    assert [c["recall"] for c in m["per_class"]] == pytest.approx([2 / 3, 1.0, 0.0])
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8 + 0.0) / 3)


def test_interval_uses_student_t_and_rank_correlation_is_monotone():
    mean, sd, half = mean_and_ci([1.0, 2.0, 3.0])
    assert (mean, sd) == (2.0, 1.0)
    assert half == pytest.approx(4.302653 / 3**0.5, rel=1e-5)  # t(0.975, 2), not 1.96
    assert spearman([1, 2, 3, 4], [10, 20, 30, 1000]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) is None  # too few points to say anything
