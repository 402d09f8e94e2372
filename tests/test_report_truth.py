"""Tier 1 (plus one short training): the report counts one population per question, measures
the generalization gap honestly, reads fair-comparison studies as such, and titles every axis."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState

from tuning.report_history import importance
from tuning.report_regularization import regularization
from tuning.report_sections import learning_rate, optimizers, overview
from tuning.report_stats import StudyView
from tuning.study_file import parse_study

SPACE = {"optimizer": {"choices": ["adam", "sgd"]},
         "lr": {"low": 1e-4, "high": 1e-1, "log": True},
         "dropout": {"low": 0.0, "high": 0.5}}
DISTS = {"optimizer": CategoricalDistribution(["adam", "sgd"]),
         "lr": FloatDistribution(1e-4, 1e-1, log=True), "dropout": FloatDistribution(0.0, 0.5)}


def _view(study: optuna.Study, space: dict, sampler: str = "tpe") -> StudyView:
    parsed = parse_study({"study": {"sampler": sampler, "epochs": 3}, "space": space})
    return StudyView(study, study.get_trials(), parsed.settings, parsed.space)


def _mixed_study() -> optuna.Study:
    """8 complete, 2 pruned and 2 failed trials (the failed ones with reported losses, as a
    trial stopped by a crash at epoch 2 has)."""
    study = optuna.create_study()
    for i in range(8):
        params = {"optimizer": ["adam", "sgd"][i % 2], "lr": 10 ** (-4 + i * 0.4),
                  "dropout": 0.05 * i}
        loss = 0.1 + 0.02 * i
        study.add_trial(optuna.create_trial(
            value=loss, params=params, distributions=DISTS,
            intermediate_values={1: loss * 2, 2: loss * 1.5, 3: loss},
            user_attrs={"val_accuracy": 0.9, "train_eval_loss": loss * 0.8,
                        "train_eval_losses": [loss * 1.8, loss * 1.2, loss * 0.8]}))
    for state, lr in ((TrialState.PRUNED, 2e-4), (TrialState.PRUNED, 3e-4),
                      (TrialState.FAIL, 5e-2), (TrialState.FAIL, 6e-2)):
        study.add_trial(optuna.create_trial(
            state=state, params={"optimizer": "adam", "lr": lr, "dropout": 0.1},
            distributions=DISTS, intermediate_values={1: 0.01, 2: 0.005}))
    return study


def _figure_points(section) -> list[float]:
    """Every x value plotted in a section's figures."""
    return [x for fig in section.figures for trace in fig.data
            for x in (getattr(trace, "x", None) or ())]


def test_every_section_counts_the_same_complete_trials_and_no_failed_one():
    view = _view(_mixed_study(), SPACE)
    per_optimizer = optimizers(view).tables[0][1]
    assert sum(row[1] for row in per_optimizer.rows) == 8  # complete trials
    assert sum(row[2] for row in per_optimizer.rows) == 2  # pruned, counted apart
    lr = learning_rate(view)
    assert sum(row[1] for row in lr.tables[0][1].rows) == 8
    # The failed trials' losses (0.005) are lower than any other: they would be "best".
    assert min(row[4] for row in lr.tables[0][1].rows) == pytest.approx(0.1)
    assert not {5e-2, 6e-2} & set(_figure_points(lr))
    regular = regularization(view).tables[0][1]
    assert [row[1] for row in regular.rows] == [8]
    for section in (optimizers(view), learning_rate(view), regularization(view)):
        notes = [t.note for _, t in section.tables if t.note]
        assert notes and all("8 complete" in n and "2 pruned" in n and "2 fail" in n
                             for n in notes)
    curves = importance(view)
    plotted = {trace.name for fig in curves.figures for trace in fig.data if trace.name}
    assert not {"trial 10", "trial 11"} & plotted  # the failed trials


def test_gap_uses_the_eval_mode_training_loss_and_old_trials_have_none():
    study = _mixed_study()
    study.add_trial(optuna.create_trial(
        value=0.3, params={"optimizer": "adam", "lr": 1e-3, "dropout": 0.1},
        distributions=DISTS, intermediate_values={1: 0.3},
        user_attrs={"train_loss": 0.9}))  # an old trial: the training objective only
    view = _view(study, SPACE)
    gaps = [view.gap(t) for t in view.completed]
    assert gaps[:8] == pytest.approx([(0.1 + 0.02 * i) * 0.2 for i in range(8)])
    assert gaps[8] is None
    assert any("no generalization gap" in p for p in regularization(view).paragraphs)


def _grid_study(repeats: int, trials: int) -> tuple[optuna.Study, dict]:
    space = {"optimizer": {"choices": ["adam", "sgd"]}, "lr": {"choices": [0.001, 0.01]},
             "repeat": {"choices": list(range(repeats))}}
    dists = {"optimizer": CategoricalDistribution(["adam", "sgd"]),
             "lr": CategoricalDistribution([0.001, 0.01]),
             "repeat": CategoricalDistribution(list(range(repeats)))}
    study = optuna.create_study()
    cells = [(o, lr, r) for o in ("adam", "sgd") for lr in (0.001, 0.01) for r in range(repeats)]
    for i, (opt, lr, r) in enumerate(cells[:trials]):
        study.add_trial(optuna.create_trial(
            value=0.2 + 0.01 * i, params={"optimizer": opt, "lr": lr, "repeat": r},
            distributions=dists, intermediate_values={1: 0.2 + 0.01 * i},
            user_attrs={"val_accuracy": 0.9}))
    return study, space


def test_a_partial_grid_is_flagged_and_repeat_is_no_hyperparameter():
    study, space = _grid_study(repeats=3, trials=9)
    view = _view(study, space, sampler="grid")
    first = overview(view)
    assert any("the grid ran 9 of its 12 configurations" in p for p in first.paragraphs)
    best_config = dict(first.tables[1][1].rows)
    assert "repeat" not in best_config and "optimizer" in best_config
    what_mattered = importance(view)
    scores = dict(what_mattered.tables[0][1].rows)
    assert "repeat" not in scores and set(scores) <= {"optimizer", "lr"}
    assert all(score == float(f"{score:.2g}") for score in scores.values())  # no false digits
    parallel = what_mattered.figures[-1]
    assert parallel.layout.title.text.startswith("Parallel coordinates")
    assert set(parallel.layout.xaxis.ticktext) == {"validation loss", "optimizer", "lr"}
    # A grid spends its budget evenly by construction: no adaptive-sampler warning.
    assert not any("adaptive" in p for p in optimizers(view).paragraphs)
    complete_grid = _view(_grid_study(repeats=3, trials=12)[0], space, sampler="grid")
    assert not any("grid ran" in p for p in overview(complete_grid).paragraphs)


def test_a_grid_shows_means_against_learning_rate_and_one_repeat_has_no_interval():
    study, space = _grid_study(repeats=1, trials=4)
    section = optimizers(_view(study, space, sampler="grid"))
    figure = section.figures[0]
    assert all(trace.type == "scatter" for trace in figure.data)  # not a box mixing lrs
    assert figure.layout.xaxis.title.text == "learning rate"
    assert all(not trace.error_y.visible for trace in figure.data)
    cells = section.tables[1][1]
    sd, interval = cells.columns.index("sd"), cells.columns.index("95% CI")
    assert [row[2] for row in cells.rows] == [1, 1, 1, 1]
    assert all(row[sd] is None and row[interval] == "-" for row in cells.rows)  # no interval
    study, space = _grid_study(repeats=3, trials=12)
    figure = optimizers(_view(study, space, sampler="grid")).figures[0]
    assert all(trace.error_y.visible for trace in figure.data)


def test_repeats_of_one_fixed_configuration_report_mean_and_spread_not_a_best_trial():
    study = optuna.create_study()
    for i, loss in enumerate((0.30, 0.32, 0.34)):
        study.add_trial(optuna.create_trial(value=loss, params={}, distributions={},
                                            user_attrs={"val_accuracy": 0.9 + 0.01 * i}))
    view = _view(study, {"optimizer": "adam", "lr": 0.001})
    assert view.fixed_configuration
    text = " ".join(overview(view).paragraphs)
    assert "0.3200 ± 0.0200 (sd" in text and "Best trial" not in text


def test_every_plot_titles_its_axes_in_words():
    sections = [s(_view(_mixed_study(), SPACE))
                for s in (optimizers, learning_rate, regularization, importance)]
    figures = [fig for s in sections for fig in s.figures]
    assert len(figures) >= 6
    for fig in figures:
        layout = fig.to_plotly_json()["layout"]
        axes = {k: v for k, v in layout.items() if k.startswith(("xaxis", "yaxis"))}
        if layout["title"]["text"].startswith("Parallel coordinates"):
            # Its axes are the parameters, named along the x axis.
            assert layout["xaxis"]["ticktext"][0] == "validation loss"
            assert {"lr", "optimizer", "dropout"} <= set(layout["xaxis"]["ticktext"])
            continue
        titled = [a for a in axes.values() if a.get("title", {}).get("text")]
        assert len(titled) >= 2, layout.get("title")
        assert all(a.get("exponentformat") == "e" for a in axes.values())


def test_eval_mode_gap_is_not_negative_on_an_overfitting_configuration():
    """Trained without regularization on 200 images, a network fits its training images
    better than unseen ones. The training objective with heavy dropout, smoothing and
    augmentation sits above the validation loss (the old, biased gap was negative); the
    training loss measured in eval mode does not."""
    import dataclasses

    import torch

    from tuning.data import load_arrays, to_device
    from tuning.device import resolve_device
    from tuning.model import ArchConfig, build_model
    from tuning.train import TrainConfig, fit, seed_everything

    runtime = resolve_device("cpu")
    arrays = load_arrays("mnist-sample")
    small = dataclasses.replace(arrays, train_x=arrays.train_x[:200],
                                train_y=arrays.train_y[:200])
    data = to_device(small, runtime.device)
    generator = seed_everything(0, runtime.device)
    model = build_model(ArchConfig(blocks=1, channels=16, dropout=0.5), data.input_shape,
                        data.num_classes)
    cfg = TrainConfig(lr=3e-3, batch_size=32, label_smoothing=0.3, crop_padding=4)
    results = list(fit(model, data, cfg, runtime, generator, epochs=12))
    last = results[-1]
    assert last.train["loss"] > last.val["loss"]  # the objective: a negative "gap"
    assert last.val["loss"] - last.train_eval["loss"] > 0
    assert torch.isfinite(torch.tensor(last.train_eval["loss"]))


def test_a_complete_grid_of_repeats_claims_the_same_seeds():
    study, space = _grid_study(repeats=3, trials=12)
    view = _view(study, space, sampler="grid")
    caption, _ = optimizers(view).tables[1]
    assert caption.endswith("(the same seeds for each)")
    assert any("the same seeds for each configuration" in p for p in overview(view).paragraphs)


def _random_repeats_study() -> tuple[optuna.Study, dict]:
    """A random search over optimizer, lr, batch size and repeat: adam at lr 0.01 ran with two
    batch sizes, and one of sgd's repeats was pruned."""
    space = {"optimizer": {"choices": ["adam", "sgd"]}, "lr": {"choices": [0.001, 0.01]},
             "batch_size": {"choices": [32, 256]}, "repeat": {"choices": [0, 1, 2]}}
    dists: dict[str, BaseDistribution] = {
             "optimizer": CategoricalDistribution(["adam", "sgd"]),
             "lr": CategoricalDistribution([0.001, 0.01]),
             "batch_size": CategoricalDistribution([32, 256]),
             "repeat": CategoricalDistribution([0, 1, 2])}
    study = optuna.create_study()
    runs = [("adam", 0.01, 32, 0, 0.1), ("adam", 0.01, 32, 1, 0.12),
            ("adam", 0.01, 256, 2, 0.5), ("sgd", 0.01, 32, 0, 0.3), ("sgd", 0.01, 32, 2, 0.32)]
    for opt, lr, batch, repeat, loss in runs:
        study.add_trial(optuna.create_trial(
            value=loss, params={"optimizer": opt, "lr": lr, "batch_size": batch,
                                "repeat": repeat},
            distributions=dists, intermediate_values={1: loss}))
    study.add_trial(optuna.create_trial(
        state=TrialState.PRUNED, params={"optimizer": "sgd", "lr": 0.01, "batch_size": 32,
                                         "repeat": 1},
        distributions=dists, intermediate_values={1: 0.9}))
    return study, space


def test_repeats_are_grouped_by_the_whole_configuration_and_unpaired_seeds_are_said():
    study, space = _random_repeats_study()
    view = _view(study, space, sampler="random")
    caption, table = optimizers(view).tables[1]
    # Different batch sizes are different configurations, not repeats of adam at lr 0.01.
    rows = {(r[0], r[table.columns.index("batch_size")]): r for r in table.rows}
    assert set(rows) == {("adam", 32), ("adam", 256), ("sgd", 32)}
    repeats, mean = table.columns.index("repeats"), table.columns.index("mean val loss")
    assert rows["adam", 32][repeats] == 2 and rows["adam", 32][mean] == pytest.approx(0.11)
    assert rows["adam", 256][repeats] == 1
    # Seeds {0, 1}, {2} and {0, 2}: not paired, and the caption says so.
    assert "(the same seeds for each)" not in caption and "not the same seeds" in caption
    assert not any("same seeds" in p for p in overview(view).paragraphs)
    # sgd's repeat 1 was pruned: it is out of the mean, and the table says so.
    assert rows["sgd", 32][table.columns.index("pruned")] == 1
    assert "1 configuration lost repeats to pruning" in table.note


def test_a_fixed_optimizer_is_named_not_said_to_be_the_only_one_to_complete():
    study = optuna.create_study()
    dists: dict[str, BaseDistribution] = {"lr": FloatDistribution(1e-4, 1e-1, log=True)}
    for lr in (1e-3, 1e-2):
        study.add_trial(optuna.create_trial(value=lr, params={"lr": lr}, distributions=dists))
    section = optimizers(_view(study, {"optimizer": "sgd", "lr": SPACE["lr"]}))
    assert "Only one optimizer completed a trial." not in section.paragraphs
    assert any("fixed" in p and "sgd" in p for p in section.paragraphs)
    # Tuned, with one optimizer complete: that is what is said.
    study = optuna.create_study()
    study.add_trial(optuna.create_trial(value=0.1, params={"optimizer": "adam", "lr": 1e-3,
                                                           "dropout": 0.1}, distributions=DISTS))
    section = optimizers(_view(study, SPACE))
    assert "Only one optimizer completed a trial." in section.paragraphs
    assert not any("fixed" in p for p in section.paragraphs)


def test_the_good_lr_range_says_how_many_trials_and_tells_close_ends_apart():
    study = optuna.create_study()
    for lr, loss in ((0.00101, 0.1), (0.00104, 0.2), (0.05, 0.3), (0.09, 0.4)):
        study.add_trial(optuna.create_trial(
            value=loss, params={"optimizer": "adam", "lr": lr, "dropout": 0.1},
            distributions=DISTS))
    table = learning_rate(_view(study, SPACE)).tables[0][1]
    good = table.columns.index("good lr range")
    # max(2, ceil(4 / 4)) = 2 of 4 trials: half of them, not a quarter.
    assert table.rows[0][good] == "0.00101 .. 0.00104 (best 2 of 4)"
    assert "best quarter" not in " ".join(table.columns)


def test_a_rank_correlation_over_few_trials_claims_no_effect():
    study = optuna.create_study()
    # Loss rises with dropout in perfect order, but 4 trials: 1 ordering in 12 is as extreme.
    for i in range(4):
        study.add_trial(optuna.create_trial(
            value=0.1 + 0.1 * i, params={"optimizer": "adam", "lr": 1e-3, "dropout": 0.1 * i},
            distributions=DISTS))
    row = regularization(_view(study, SPACE)).tables[0][1].rows[0]
    assert row[3] == pytest.approx(1.0)
    assert row[-1] == "no clear effect on validation loss (n=4, p = 0.083)"
    # The same trend over 12 trials is beyond chance.
    for i in range(4, 12):
        study.add_trial(optuna.create_trial(
            value=0.1 + 0.1 * i, params={"optimizer": "adam", "lr": 1e-3, "dropout": 0.04 * i},
            distributions=DISTS))
    row = regularization(_view(study, SPACE)).tables[0][1].rows[0]
    assert row[-1].startswith("more hurt strongly (n=12, p < 0.0001")


def _momentum_grid(trials: int) -> tuple[optuna.Study, dict]:
    """A grid over optimizer x momentum x lr: momentum applies to sgd only, so adam has 2
    configurations, not 4: 6 in all."""
    space = {"optimizer": {"choices": ["adam", "sgd"]}, "momentum": {"choices": [0.0, 0.9]},
             "lr": {"choices": [0.001, 0.01]}}
    dists: dict[str, BaseDistribution] = {
             "optimizer": CategoricalDistribution(["adam", "sgd"]),
             "momentum": CategoricalDistribution([0.0, 0.9]),
             "lr": CategoricalDistribution([0.001, 0.01])}
    study = optuna.create_study()
    points = [("adam", None, lr) for lr in (0.001, 0.01)] + \
        [("sgd", m, lr) for m in (0.0, 0.9) for lr in (0.001, 0.01)]
    for i, (opt, momentum, lr) in enumerate(points[:trials]):
        params = {"optimizer": opt, "lr": lr} | ({"momentum": momentum} if opt == "sgd" else {})
        study.add_trial(optuna.create_trial(
            value=0.2 + 0.01 * i, params=params,
            distributions={n: dists[n] for n in params}, intermediate_values={1: 0.2}))
    return study, space


def test_a_finished_grid_with_optimizer_specific_parameters_is_complete():
    study, space = _momentum_grid(trials=6)
    assert not any("grid ran" in p for p in overview(_view(study, space, "grid")).paragraphs)
    study, space = _momentum_grid(trials=3)  # adam's 2 configurations, sgd's first of 4
    warning, = [p for p in overview(_view(study, space, "grid")).paragraphs if "grid ran" in p]
    assert "ran 3 of its 6 configurations" in warning and "--trials 6" in warning


def test_repeat_is_no_hyperparameter_on_the_edge_of_its_range():
    from tuning.report_stats import edge_warnings

    space = {"lr": {"low": 1e-4, "high": 1e-1, "log": True}, "repeat": {"low": 0, "high": 4}}
    dists: dict[str, BaseDistribution] = {"lr": FloatDistribution(1e-4, 1e-1, log=True),
                                          "repeat": IntDistribution(0, 4)}
    study = optuna.create_study()
    for repeat, loss in ((0, 0.1), (2, 0.2)):
        study.add_trial(optuna.create_trial(value=loss, params={"lr": 1e-2, "repeat": repeat},
                                            distributions=dists))
    assert edge_warnings(_view(study, space)) == []


def test_under_cross_validation_the_epochs_are_per_fold():
    parsed = parse_study({"study": {"epochs": 8, "cv_folds": 5}, "space": SPACE})
    view = StudyView(_mixed_study(), _mixed_study().get_trials(), parsed.settings, parsed.space)
    assert "each trained for the full 8 epochs on each of its 5 folds" in view.population()


def test_the_best_configuration_marks_a_fixed_value_its_optimizer_does_not_use():
    # compare-optimizers fixes momentum for sgd; the best trial may be adamw's.
    study = optuna.create_study()
    study.add_trial(optuna.create_trial(value=0.1, params={"optimizer": "adam", "lr": 1e-3,
                                                           "dropout": 0.1}, distributions=DISTS))
    section = overview(_view(study, {**SPACE, "momentum": 0.9}))
    (best,) = [table for title, table in section.tables if title == "Best configuration"]
    rows = dict(best.rows)
    assert rows["momentum"] == "0.9 (not used by adam)" and rows["lr"] == 1e-3


def test_a_log_axis_is_labelled_at_powers_of_ten_or_at_1_2_and_5_written_in_full():
    # Plotly labels every digit of some log axes ("4 3 2 0.1 9 8", where 4 is 0.4), and in a
    # narrow subplot the labels run into each other.
    space = {**SPACE, "weight_decay": {"low": 1e-6, "high": 1e-2, "log": True},
             "l1": {"low": 1e-7, "high": 1e-4, "log": True}}
    dists = {**DISTS, "weight_decay": FloatDistribution(1e-6, 1e-2, log=True),
             "l1": FloatDistribution(1e-7, 1e-4, log=True)}
    study = optuna.create_study()
    for i in range(5):
        study.add_trial(optuna.create_trial(
            value=0.3 + 0.5 * i, distributions=dists,
            params={"optimizer": "adam", "lr": 10 ** (-4 + 0.7 * i), "dropout": 0.1 * i,
                    "weight_decay": 10 ** (-6 + i), "l1": 2e-7 + 1e-7 * i}))
    view = _view(study, space)
    (fig,) = regularization(view).figures
    axes = {axis.title.text: axis for axis in (fig.layout.xaxis, fig.layout.xaxis2,
                                               fig.layout.xaxis3)}
    assert axes["weight decay"].dtick == 1  # 4 decades: powers of ten only
    # Under a decade: 1, 2 and 5 of it, labelled in full (plotly's "D2" writes 0.5 as "5").
    l1 = dict(zip(axes["l1"].tickvals, axes["l1"].ticktext, strict=True))
    assert l1[2e-7] == "2e-7" and l1[5e-7] == "5e-7" and axes["l1"].dtick is None
    assert axes["dropout"].tickvals is None and axes["dropout"].dtick is None  # linear
    # Validation losses 0.3 .. 2.3: 0.5, 1 and 2, not "5 1 2".
    (boxes,) = optimizers(view).figures
    assert {"0.5", "1", "2"} <= set(boxes.layout.yaxis.ticktext)
    (scatter,) = learning_rate(view).figures
    assert scatter.layout.xaxis.dtick == 1  # learning rates 1e-4 .. 0.06


def _zero_loss_study() -> optuna.Study:
    """6 complete trials of which 2 reached a validation loss of 0 (a tiny easy data set)."""
    study = optuna.create_study()
    for i, loss in enumerate((0.5, 0.0, 0.02, 0.0, 0.3, 1e-4)):
        study.add_trial(optuna.create_trial(
            value=loss, distributions=DISTS,
            params={"optimizer": ["adam", "sgd"][i % 2], "lr": 10 ** (-4 + 0.5 * i),
                    "dropout": 0.1 * (i % 5)},
            intermediate_values={1: 0.9, 2: loss}, user_attrs={
                "val_accuracy": 1.0, "train_eval_loss": 0.0,
                "train_eval_losses": [0.8, 0.0]}))
    return study


def test_a_loss_of_0_is_drawn_on_every_log_plot_and_said_to_be():
    view = _view(_zero_loss_study(), SPACE)
    figures = [fig for section in (optimizers(view), learning_rate(view), regularization(view),
                                   importance(view)) for fig in section.figures]
    on_log = [fig for fig in figures if fig.layout.yaxis.type == "log"]
    assert len(on_log) >= 6  # boxes, lr, regularization, history, curves, train and val
    for fig in on_log:
        assert "A loss of 0" in fig.layout.title.text and "drawn at 1e-05" in \
            fig.layout.title.text, fig.layout.title.text
        for trace in fig.data:
            if fig.layout[f"yaxis{(trace.yaxis or 'y')[1:]}"].type != "log":
                continue
            assert all(y is None or y > 0 for y in trace.y), fig.layout.title.text
            clipped = [text for y, text in zip(trace.y, trace.text or [], strict=False)
                       if y == 1e-5]
            assert all("loss 0" in text for text in clipped)
    # Every complete trial is on the box plot, the best-so-far line reaches the floor.
    boxes = on_log[0]
    assert sum(len(trace.y) for trace in boxes.data) == 6
    history = next(fig for fig in figures if fig.layout.title.text.startswith("Search history"))
    assert history.data[1].y[-1] == 1e-5


def test_regularization_axes_stay_within_what_the_parameter_can_take():
    space = {**SPACE, "weight_decay": {"low": 1e-6, "high": 1e-2, "log": True},
             "label_smoothing": {"choices": [0.0, 0.05, 0.1]}}
    dists = {**DISTS, "weight_decay": FloatDistribution(1e-6, 1e-2, log=True),
             "label_smoothing": CategoricalDistribution([0.0, 0.05, 0.1])}
    study = optuna.create_study()
    for i in range(6):
        study.add_trial(optuna.create_trial(
            value=0.1 + 0.01 * i, distributions=dists,
            params={"optimizer": "adam", "lr": 1e-3, "dropout": 0.1 * (i % 5),
                    "weight_decay": [1e-6, 1e-5, 3e-3][i % 3],
                    "label_smoothing": [0.0, 0.1][i % 2]}))
    (fig,) = regularization(_view(study, space)).figures
    axes = {axis.title.text: axis for axis in (fig.layout.xaxis, fig.layout.xaxis2,
                                               fig.layout.xaxis3)}
    dropout_low, dropout_high = axes["dropout"].range
    assert dropout_low == 0 and 0.4 < dropout_high <= 0.5  # dropout 0 .. 0.4 tried
    smoothing_low, smoothing_high = axes["label smoothing"].range
    assert (smoothing_low, smoothing_high) == (0, 0.1)  # the ends of its choices
    decay_low, decay_high = axes["weight decay"].range  # log10 on a log axis
    assert decay_low == pytest.approx(-6) and -2.5 < decay_high <= -2
    # A trial at the end of the range is drawn whole, over the axis.
    assert all(trace.cliponaxis is False for trace in fig.data)


def test_the_search_history_numbers_trials_in_whole_numbers():
    from tuning.report_figures import history

    few = history([0, 1, 2], [0.3, 0.2, 0.25])
    assert few.layout.xaxis.dtick == 1 and few.layout.xaxis.tickformat == "d"
    assert history(list(range(40)), [0.3] * 40).layout.xaxis.dtick is None
    # The best so far steps down at the trial that improved it, not on a slope before it.
    best = few.data[1]
    assert list(best.y) == [0.3, 0.2, 0.2] and best.line.shape == "hv"


def test_learning_curves_are_listed_in_the_order_of_the_trial_numbers():
    study = optuna.create_study()
    for i in range(12):
        pruned = i in (2, 5)
        study.add_trial(optuna.create_trial(
            state=TrialState.PRUNED if pruned else TrialState.COMPLETE,
            value=None if pruned else 0.1 + 0.01 * i, distributions=DISTS,
            params={"optimizer": "adam", "lr": 1e-3, "dropout": 0.1},
            intermediate_values={1: 0.5, 2: 0.1 + 0.01 * i}))
    curves = next(fig for fig in importance(_view(study, SPACE)).figures
                  if fig.layout.title.text.startswith("Learning curves"))
    assert [trace.name for trace in curves.data] == [f"trial {i}" for i in range(12)]


def test_parallel_coordinates_show_parameters_that_matter_in_colours_seen_on_white():
    from plotly.colors import unlabel_rgb

    from tuning.report_history import _parallel

    view = _view(_mixed_study(), SPACE)
    fig = _parallel(view, {"lr": 0.7, "dropout": 0.3, "optimizer": 0.0})
    assert set(fig.layout.xaxis.ticktext) == {"validation loss", "lr", "dropout"}
    assert "1 of importance 0 left out" in fig.layout.title.text
    lines = [trace for trace in fig.data if trace.mode == "lines"]
    assert len(lines) == 8
    for trace in lines:  # no line near the page's white, the worst trial's included
        colour = trace.line.color
        red, green, blue = unlabel_rgb(colour) if colour.startswith("rgb") else (
            int(colour[i:i + 2], 16) for i in (1, 3, 5))
        assert 0.299 * red + 0.587 * green + 0.114 * blue < 200, colour
    # One parameter above 0: a second axis is shown all the same, and said to be of 0.
    fig = _parallel(view, {"lr": 1.0, "dropout": 0.0, "optimizer": 0.0})
    assert set(fig.layout.xaxis.ticktext) == {"validation loss", "lr", "dropout"}
    assert "dropout of importance 0, shown to make two axes" in fig.layout.title.text


def test_unequal_trials_count_the_samplers_choices_only():
    study = optuna.create_study()
    runs = [("adam", "study file"), ("adam", "study file"), ("rmsprop", None), ("adam", None),
            ("adam", None), ("adam", None), ("adam", None), ("adam", None)]
    for i, (name, queued) in enumerate(runs):
        study.add_trial(optuna.create_trial(
            value=0.1 + 0.01 * i, params={"optimizer": name, "lr": 1e-3, "dropout": 0.1},
            distributions={**DISTS, "optimizer": CategoricalDistribution(
                ["adam", "adamw", "rmsprop"])},
            user_attrs={"warm_start": queued} if queued else {}))
    study.add_trial(optuna.create_trial(
        state=TrialState.PRUNED, params={"optimizer": "adamw", "lr": 1e-2, "dropout": 0.1},
        distributions={**DISTS, "optimizer": CategoricalDistribution(
            ["adam", "adamw", "rmsprop"])}, intermediate_values={1: 0.9}))
    space = {**SPACE, "optimizer": {"choices": ["adam", "adamw", "rmsprop"]}}
    (unequal,) = [p for p in optimizers(_view(study, space)).paragraphs if "unequal" in p]
    assert "(adam: 5, adamw: 1, rmsprop: 1;" in unequal


def test_the_counted_sentence_speaks_of_one_trial_in_the_singular():
    study = optuna.create_study()
    for state, value in ((TrialState.COMPLETE, 0.2), (TrialState.PRUNED, None)):
        study.add_trial(optuna.create_trial(
            state=state, value=value, distributions=DISTS,
            params={"optimizer": "adam", "lr": 1e-3, "dropout": 0.1},
            intermediate_values={1: 0.5}))
    assert _view(study, SPACE).population() == (
        "Counted: the complete trial, trained for the full 3 epochs. The pruned trial stopped "
        "early: it is counted apart and its loss is left out.")
    study.add_trial(optuna.create_trial(state=TrialState.COMPLETE, value=0.3,
                                        distributions=DISTS, params={
                                            "optimizer": "sgd", "lr": 1e-2, "dropout": 0.2}))
    assert _view(study, SPACE).population().startswith(
        "Counted: the 2 complete trials, each trained for the full 3 epochs, so their losses "
        "compare.")


def _grid_of(losses: dict[tuple[str, float], list[float]]) -> StudyView:
    """A grid over optimizer x lr x repeat with the given losses of each cell's repeats."""
    repeats = max(len(v) for v in losses.values())
    space = {"optimizer": {"choices": ["adam", "sgd"]}, "lr": {"choices": [0.001, 0.01]},
             "repeat": {"choices": list(range(repeats))}}
    dists: dict[str, BaseDistribution] = {
        "optimizer": CategoricalDistribution(["adam", "sgd"]),
        "lr": CategoricalDistribution([0.001, 0.01]),
        "repeat": CategoricalDistribution(list(range(repeats)))}
    study = optuna.create_study()
    for (opt, lr), values in losses.items():
        for repeat, loss in enumerate(values):
            study.add_trial(optuna.create_trial(
                value=loss, params={"optimizer": opt, "lr": lr, "repeat": repeat},
                distributions=dists, intermediate_values={1: loss}))
    return _view(study, space, sampler="grid")


def test_the_mean_plot_draws_the_intervals_the_table_gives_and_no_others():
    # adam at 0.001 diverged once in 3 repeats: its t interval runs below 0, and the table cuts
    # it there. sgd has 2 repeats: the table gives no interval, so the plot draws none.
    view = _grid_of({("adam", 0.001): [0.3, 0.35, 20.0], ("adam", 0.01): [0.3, 0.31, 0.32],
                     ("sgd", 0.001): [0.4, 35.0], ("sgd", 0.01): [0.5, 0.6]})
    section = optimizers(view)
    table = section.tables[1][1]
    interval = table.columns.index("95% CI")
    shown = {(row[0], row[1]): row[interval] for row in table.rows}
    assert shown["sgd", 0.001] == "too few for an interval: n=2"
    assert shown["adam", 0.001].startswith("0.0000 .. ")
    adam, sgd = section.figures[0].data
    assert list(sgd.error_y.array) == [None, None] and not sgd.error_y.visible
    cut = adam.y[0]  # the bar down from the mean reaches 0, where the table's interval ends
    assert adam.error_y.arrayminus[0] == pytest.approx(cut)
    low, high = (float(v) for v in shown["adam", 0.01].split(" .. "))
    assert adam.y[1] - adam.error_y.arrayminus[1] == pytest.approx(low, abs=1e-4)
    assert adam.y[1] + adam.error_y.array[1] == pytest.approx(high, abs=1e-4)
    assert "cut at 0 runs to the foot" in section.figures[0].layout.title.text


def test_per_optimizer_losses_show_the_median_and_its_interval_in_table_and_plot():
    study = optuna.create_study()
    losses = {"adam": [0.3, 0.35, 0.4, 0.45, 0.5, 25.0], "sgd": [0.6, 0.7, 0.8]}
    for name, values in losses.items():
        for i, loss in enumerate(values):
            study.add_trial(optuna.create_trial(
                value=loss, params={"optimizer": name, "lr": 10 ** (-3 + 0.1 * i),
                                    "dropout": 0.1}, distributions=DISTS))
    section = optimizers(_view(study, SPACE))
    table = section.tables[0][1]
    column = table.columns.index("median's 95% interval")
    assert [row[column] for row in table.rows] == ["0.3000 .. 25.0000",
                                                   "too few for an interval: n=3"]
    assert not any("mean" in c for c in table.columns)  # decided by one diverged trial
    intervals = [trace for trace in section.figures[0].data if trace.type == "scatter"]
    assert len(intervals) == 1 and list(intervals[0].y) == [0.3, 25.0]


def test_the_optimizer_table_says_its_accuracy_is_the_highest_not_the_best_trials():
    """The trial with the lowest loss need not have the highest accuracy: the column says which
    it shows, and the regularization plot says which loss each row draws."""
    study = optuna.create_study()
    for loss, acc, lr in ((0.2, 0.94, 1e-3), (0.3, 0.96, 1e-2)):
        study.add_trial(optuna.create_trial(
            value=loss, params={"optimizer": "adam", "lr": lr, "dropout": 0.1},
            distributions=DISTS, user_attrs={"val_accuracy": acc}))
    table = optimizers(_view(study, SPACE)).tables[0][1]
    row = dict(zip(table.columns, table.rows[0], strict=True))
    assert row["best val loss"] == 0.2 and row["lr of the best"] == 1e-3
    assert row["highest val acc"] == 0.96 and "best val acc" not in row
    figure = regularization(_view(_mixed_study(), SPACE)).figures[0]
    assert figure.layout.yaxis.title.text.startswith("best validation loss")
    assert "last epoch" in figure.layout.yaxis2.title.text


def test_importance_leaves_out_a_parameter_that_never_varied():
    # fANOVA shares importance out to a parameter of one value: it explains nothing.
    study = optuna.create_study()
    for i, loss in enumerate((0.3, 0.2, 0.25)):
        study.add_trial(optuna.create_trial(
            value=loss, params={"optimizer": "adam", "lr": 1e-3, "dropout": 0.1 * i},
            distributions=DISTS))
    section = importance(_view(study, SPACE))
    table = dict(section.tables[0][1].rows)
    assert list(table) == ["dropout"]
    assert any("took one value in every complete trial (optimizer, lr)" in p
               for p in section.paragraphs)


def test_a_fixed_learning_rate_is_said_to_be_fixed_not_given_a_good_range():
    study = optuna.create_study()
    for i in range(7):
        study.add_trial(optuna.create_trial(
            value=0.1 + 0.01 * i,
            params={"optimizer": ["adam", "sgd"][i % 2], "dropout": 0.05 * i},
            distributions={n: DISTS[n] for n in ("optimizer", "dropout")}))
    section = learning_rate(_view(study, {**SPACE, "lr": 0.01}))
    assert section.paragraphs == [
        "The learning rate was fixed, not tuned: every trial trained with lr 0.01."]
    assert not section.tables and not section.figures


def test_the_regularization_reading_says_what_each_sign_means_and_that_others_confound():
    text = " ".join(regularization(_view(_mixed_study(), SPACE)).paragraphs)
    assert "with validation accuracy, positive is better" in text
    assert "can be confounded by the others, which varied at the same time" in text


def test_cross_validated_curves_break_between_folds_and_say_so():
    from tuning.report_figures import Curve, learning_curves, train_and_val_curves

    steps = [1, 2, 3, 4, 5, 6]  # 3 folds of 2 epochs
    val = Curve("trial 0", steps, [0.9, 0.5, 0.8, 0.4, 0.85, 0.45])
    fig = learning_curves([val], fold_epochs=2)
    assert list(fig.data[0].x) == [1, 2, None, 3, 4, None, 5, 6]
    assert fig.layout.xaxis.title.text == "epoch, folds one after another (2 epochs each)"
    assert [a.text for a in fig.layout.annotations] == ["fold 1", "fold 2", "fold 3"]
    pair = train_and_val_curves([(Curve("trial 0", steps, [0.5] * 6), val)], fold_epochs=2)
    assert all(None in trace.x for trace in pair.data)
    plain = learning_curves([val])
    assert None not in plain.data[0].x and plain.layout.xaxis.title.text == "epoch"


def test_the_cross_validation_row_says_what_a_fold_trains_and_validates_on():
    parsed = parse_study({"study": {"cv_folds": 3, "epochs": 2}, "space": SPACE})
    study = optuna.create_study()
    study.set_user_attr("data", {"name": "mnist-sample", "n_train": 3600, "n_val": 400,
                                 "n_test": 1000})
    study.add_trial(optuna.create_trial(value=0.3, params={"optimizer": "adam", "lr": 1e-3,
                                                           "dropout": 0.1}, distributions=DISTS))
    rows = dict(overview(StudyView(study, study.get_trials(), parsed.settings,
                                   parsed.space)).tables[0][1].rows)
    assert "(4,000): each fold validates on 1,333 or 1,334 of them and trains on the other " \
        "2,666 or 2,667" in rows["cross-validation"]
    assert "pooled into the folds" in rows["data"]


def test_a_single_value_on_a_log_axis_is_labelled_in_full_and_no_trial_is_negative():
    from tuning.report_figures import history, log_ticks

    ticks = log_ticks(0.3, 0.3)
    assert ticks["range"] == pytest.approx([-1.0229, -0.0229], abs=1e-4)  # the decade around
    shown = [text for value, text in zip(ticks["tickvals"], ticks["ticktext"], strict=True)
             if 0.3 / 10 ** 0.5 <= value <= 0.3 * 10 ** 0.5]
    assert shown == ["0.1", "0.2", "0.5"]  # plotly's own: "1 5 2", the 5 and 2 below 1
    one = history([0], [0.3])
    low, high = one.layout.xaxis.range
    assert -1 < low < 0 < high < 1  # ticks every 1: trial 0 only, no trial -1
    assert one.layout.yaxis.ticktext is not None


def test_unequal_trials_are_flagged_without_claiming_why():
    study = optuna.create_study()
    for i, name in enumerate(["adam"] * 6 + ["sgd"] * 2):
        study.add_trial(optuna.create_trial(
            value=0.1 + 0.01 * i, params={"optimizer": name, "lr": 1e-3, "dropout": 0.1},
            distributions=DISTS))
    for sampler in ("random", "tpe"):
        (unequal,) = [p for p in optimizers(_view(study, SPACE, sampler)).paragraphs
                      if "unequal" in p]
        assert "Whether by chance or because an adaptive sampler favoured it" in unequal


def test_compute_spent_counts_the_epochs_of_a_trial_whose_worker_was_killed():
    """A trial records its epochs and time as it ends: a killed worker's trial reported its
    epochs (its losses are stored) but never recorded them."""
    study = optuna.create_study()
    params = {"optimizer": "adam", "lr": 1e-3, "dropout": 0.1}
    study.add_trial(optuna.create_trial(value=0.3, params=params, distributions=DISTS,
                                        intermediate_values={1: 0.5, 2: 0.4, 3: 0.3},
                                        user_attrs={"epochs_run": 3, "train_seconds": 6.0}))
    study.add_trial(optuna.create_trial(state=TrialState.FAIL, params=params,
                                        distributions=DISTS,
                                        intermediate_values={1: 0.6, 2: 0.45}))
    rows = dict(overview(_view(study, SPACE)).tables[0][1].rows)
    assert rows["compute spent"] == ("5 epochs, 6.0 s of training (2 of the epochs by trials "
                                     "that failed or still run, whose time is not counted)")


def test_the_optimizer_section_answers_which_optimizer_only_as_far_as_the_trials_separate_them():
    study = optuna.create_study()
    losses = {"adam": [0.10, 0.11, 0.12, 0.13, 0.14], "sgd": [0.50, 0.60, 0.70, 0.80, 0.90]}
    for name, values in losses.items():
        for loss in values:
            study.add_trial(optuna.create_trial(
                value=loss, params={"optimizer": name, "lr": 1e-3, "dropout": 0.1},
                distributions=DISTS))
    answer, = [p for p in optimizers(_view(study, SPACE)).paragraphs
               if p.startswith("Which optimizer")]
    # Exact: 2 of the C(10, 5) = 252 orderings part them as far (all of one below the other).
    assert answer.startswith("Which optimizer: adam has the lowest median validation loss "
                             "(0.1200 over 5 complete trials). Its losses are lower than every "
                             "other optimizer's beyond chance: sgd (p = 0.0079). On these data, "
                             "use adam. The p-value is a two-sided test of the difference "
                             "(Mann-Whitney U).")
    assert "not in a controlled experiment" in answer
    # Two of sgd's trials as good as adam's: no longer beyond chance.
    for loss in (0.105, 0.115, 0.125):
        study.add_trial(optuna.create_trial(
            value=loss, params={"optimizer": "sgd", "lr": 1e-3, "dropout": 0.1},
            distributions=DISTS))
    answer, = [p for p in optimizers(_view(study, SPACE)).paragraphs
               if p.startswith("Which optimizer")]
    assert "No other optimizer's losses are higher beyond chance: sgd (p = " in answer
    assert "do not tell adam apart from sgd" in answer


def test_under_repeats_the_learning_rate_is_answered_from_means_not_one_lucky_seed():
    """sgd at lr 0.01 has the single best trial (a lucky seed) but the higher mean: the
    answer is lr 0.001, and its interval overlapping 0.01's says the repeats do not separate
    them."""
    space = {"optimizer": {"choices": ["adam", "sgd"]}, "lr": {"choices": [0.001, 0.01]},
             "repeat": {"choices": [0, 1, 2]}}
    dists = {"optimizer": CategoricalDistribution(["adam", "sgd"]),
             "lr": CategoricalDistribution([0.001, 0.01]),
             "repeat": CategoricalDistribution([0, 1, 2])}
    losses = {("sgd", 0.001): [0.33, 0.34, 0.35], ("sgd", 0.01): [0.23, 0.40, 0.46],
              ("adam", 0.001): [0.20, 0.21, 0.22], ("adam", 0.01): [0.60, 0.61, 0.62]}
    study = optuna.create_study()
    for (opt, lr), values in losses.items():
        for repeat, loss in enumerate(values):
            study.add_trial(optuna.create_trial(
                value=loss, params={"optimizer": opt, "lr": lr, "repeat": repeat},
                distributions=dists))
    view = _view(study, space, sampler="grid")
    per_optimizer = optimizers(view).tables[0][1]
    rows = {row[0]: dict(zip(per_optimizer.columns, row, strict=True))
            for row in per_optimizer.rows}
    assert rows["sgd"]["lr of the best mean"] == 0.001 and rows["sgd"]["best val loss"] == 0.23
    section = learning_rate(view)
    assert section.tables[0][1].columns[2] == "best trial's lr"
    first = next(i for i, p in enumerate(section.paragraphs) if p.startswith("Which learning"))
    adam, sgd = section.paragraphs[first + 1:]  # one paragraph each
    answer = adam + sgd
    assert "adam: lr 0.001 has the lowest mean validation loss (0.2100 over 3 repeats, " \
           "95% CI 0.1852..0.2348); no other learning rate's interval overlaps it." in answer
    assert "sgd: lr 0.001 has the lowest mean validation loss (0.3400 over 3 repeats" in answer
    assert "the interval of lr 0.01 overlaps it: the repeats do not clearly separate them." \
        in answer


def test_a_pruned_trials_huge_losses_do_not_squeeze_the_learning_curves():
    from tuning.report_figures import Curve, learning_curves

    complete = Curve("trial 0", [1, 2, 3], [0.5, 0.3, 0.2])
    blown = Curve("trial 1", [1, 2], [34.6, 344.9], pruned=True)
    fig = learning_curves([complete, blown])
    assert fig.layout.yaxis.range == pytest.approx([math.log10(0.2) - 0.05, math.log10(0.75)])
    assert "Cut at 0.75: pruned trials' losses above it (up to 345)" in fig.layout.title.text
    mild = learning_curves([complete, Curve("trial 1", [1], [1.2], pruned=True)])
    assert mild.layout.yaxis.range is None and "Cut at" not in mild.layout.title.text
    # A pruned trial wholly above the cut draws nothing: the legend leaves it out, the title
    # counts it; one partly below stays in both.
    partly = Curve("trial 2", [1, 2], [0.6, 50.0], pruned=True)
    fig = learning_curves([complete, blown, partly])
    assert [trace.showlegend for trace in fig.data] == [True, False, True]
    assert "curves; 1 pruned trial lies wholly above it." in fig.layout.title.text


def test_a_trial_has_one_colour_in_both_plots_of_curves():
    from tuning.report_figures import Curve, learning_curves, train_and_val_curves

    val = Curve("trial 3", [1, 2], [0.5, 0.4], colour="#123456")
    curves = learning_curves([Curve("trial 1", [1], [0.9], colour="#abcdef"), val])
    pairs = train_and_val_curves([(Curve("trial 3", [1, 2], [0.45, 0.3]), val)])
    assert [t.line.color for t in curves.data] == ["#abcdef", "#123456"]
    assert {t.line.color for t in pairs.data} == {"#123456"}


def test_a_line_of_means_is_broken_at_a_learning_rate_it_did_not_run():
    from tuning.report_figures import Cell, optimizer_lr_means

    fig = optimizer_lr_means({
        "adam": [Cell(3e-4, 0.3, None, 1), Cell(1e-3, 0.25, None, 1), Cell(3e-3, 0.2, None, 1)],
        "sgd": [Cell(3e-4, 0.5, None, 1), Cell(3e-3, 0.4, None, 1)]})
    adam, sgd = fig.data
    assert list(sgd.x) == [3e-4, 1e-3, 3e-3] and list(sgd.y) == [0.5, None, 0.4]
    assert sgd.connectgaps is False and adam.line.dash != sgd.line.dash


def test_under_repeats_the_optimizers_are_compared_each_at_its_best_learning_rate():
    from tuning.report_answers import RepeatCell, which_optimizer_at_its_best

    def cell(optimizer: str, lr: float, mean: float, sd: float, n: int = 3) -> RepeatCell:
        return RepeatCell(optimizer, lr, {}, n, frozenset(range(n)), mean, sd, None, None, 0)

    cells = [cell("adam", 1e-3, 0.20, 0.01), cell("adam", 1e-2, 0.90, 0.01),
             cell("sgd", 1e-2, 0.21, 0.01), cell("sgd", 1e-3, 0.50, 0.01),
             cell("rmsprop", 1e-3, 0.40, 0.01), cell("adamw", 1e-3, 0.10, 0.0, n=1)]
    answer = which_optimizer_at_its_best(cells)
    # adam's 0.90 at lr 0.01 does not count against it: each is taken at its best.
    assert answer.startswith(
        "Which optimizer, each at its best configuration: of the optimizers with 3 or more "
        "repeats, adam at lr 0.001 has the lowest mean validation loss (0.2000 over 3 repeats). "
        "Its mean is lower beyond chance than rmsprop "
        "(p < 0.0001), but not than sgd (p = 0.29)")
    assert "choose among adam and sgd." in answer
    assert "Holm-adjusted for the 2 comparisons" in answer
    assert answer.endswith("Too few complete repeats to compare (adamw: 1; 3 needed).")


def test_no_optimizer_is_advised_over_one_with_too_few_trials_to_compare():
    """adam's 3 trials are too few to test, and lower than all: the leader of the others is
    not "the one to use"."""
    from tuning.report_answers import which_optimizer

    answer = which_optimizer({"adam": [0.01] * 3, "sgd": [0.30, 0.31, 0.32, 0.33, 0.34],
                              "rmsprop": [0.50, 0.51, 0.52, 0.53, 0.54]}, grid=False)
    assert answer.startswith("Which optimizer: of the optimizers with 4 or more complete "
                             "trials, sgd has the lowest median")
    assert "lower than every other such optimizer's beyond chance" in answer
    assert "use sgd" not in answer
    assert answer.endswith("Too few complete trials to compare (adam: 3; 4 needed).")


def test_repeats_without_spread_or_intervals_claim_nothing():
    from tuning.report_answers import RepeatCell, which_lr, which_optimizer_at_its_best

    def cell(optimizer: str, lr: float, mean: float, sd: float, n: int = 3) -> RepeatCell:
        half = None if n < 2 else 4.303 * sd / n ** 0.5
        return RepeatCell(optimizer, lr, {}, n, frozenset(range(n)), mean, sd, half, None, 0)

    # Identical repeats: no spread to test a difference against.
    flat = which_optimizer_at_its_best([cell("adam", 1e-3, 0.2, 0.0), cell("sgd", 1e-3, 0.3, 0.0)])
    assert "No other optimizer's mean is higher beyond chance: sgd (p = 1)" in flat
    # One repeat at a lower mean is no answer, and says why the others have no interval.
    answer, = which_lr([cell("adam", 1e-3, 0.05, 0.0, n=1), cell("adam", 1e-2, 0.31, 0.01)])
    assert answer == ("adam: lr 0.01 has the lowest mean validation loss of the rates with an "
                      "interval (0.3100 over 3 repeats, 95% CI 0.2852..0.3348); no other "
                      "learning rate's interval overlaps it (lr 0.001: too few repeats for an "
                      "interval).")


def test_with_three_or_more_optimizers_pairs_are_tested_only_once_all_of_them_differ():
    """The leader is chosen by the same losses it is tested on: with no difference among them
    all (Kruskal-Wallis), no pair is claimed to differ."""
    from tuning.report_answers import which_optimizer

    alike = {"adam": [0.30, 0.33, 0.36, 0.39, 0.42], "sgd": [0.31, 0.34, 0.37, 0.40, 0.43],
             "rmsprop": [0.32, 0.35, 0.38, 0.41, 0.44]}
    answer = which_optimizer(alike, grid=True)
    assert "Taken together, the optimizers' losses do not differ beyond chance (Kruskal-" \
           "Wallis, p = " in answer and "beyond chance than" not in answer
    apart = {**alike, "sgd": [0.80, 0.81, 0.82, 0.83, 0.84]}
    answer = which_optimizer(apart, grid=True)
    assert "lower beyond chance than sgd" in answer
    assert "They were tested once the optimizers' losses taken together differed" in answer
