"""The report's analysis, one section per question: an overview of the study, which
optimizer, which learning rate, how much regularization, and what mattered (importance,
history, learning curves, best values on the edge of their range).

Each function takes a StudyView and returns a Section of prose, tables and plotly figures;
the held-out test section is in tuning.report_heldout.
"""

from __future__ import annotations

import math
import statistics
import warnings

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuning.report_render import Section, Table
from tuning.report_stats import (
    StudyView,
    edge_warnings,
    mean_and_ci,
    objective_values,
    reading,
    spearman,
)
from tuning.space import REPEAT

REGULARIZERS = ("weight_decay", "l1", "dropout", "crop_padding", "label_smoothing")
IMPORTANCE_EVALUATOR = ("fANOVA (optuna.importance.FanovaImportanceEvaluator, seed 0); Optuna "
                        "4.x used it by default, 5.x defaults to PED-ANOVA")


def overview(view: StudyView) -> Section:
    s = Section("Overview")
    trials = view.trials
    counts = {state.name.lower(): sum(t.state == state for t in trials) for state in TrialState}
    epochs_run = sum(t.user_attrs.get("epochs_run", 0) for t in trials)
    seconds = sum(t.user_attrs.get("train_seconds", 0.0) for t in trials)
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    saved = sum(view.settings.epochs - t.user_attrs.get("epochs_run", view.settings.epochs)
                for t in pruned)
    data = view.study.user_attrs.get("data", {})
    table = Table(["item", "value"], [
        ["trials", ", ".join(f"{n} {k}" for k, n in counts.items() if n) or "none"],
        ["data", f"{data.get('name')} ({data.get('source')}): {data.get('n_train')} train, "
                 f"{data.get('n_val')} validation, {data.get('n_test')} test"],
        ["epochs per trial (max)", view.settings.epochs],
        ["sampler / pruner", f"{view.settings.sampler} / {view.settings.pruner}"],
        ["compute spent", f"{epochs_run} epochs, {seconds:.1f} s of training"],
        ["compute saved by pruning",
         f"{saved} epochs not run ({saved / max(saved + epochs_run, 1):.0%} of the full "
         "budget)"],
    ])
    s.tables.append(("Study", table))
    if view.completed:
        best = view.study.best_trial
        s.paragraphs.append(
            f"Best trial #{best.number}: validation loss {best.value:.4f}, validation accuracy "
            f"{best.user_attrs.get('val_accuracy', float('nan')):.4f}.")
        params = Table(["parameter", "best value"],
                       [[k, v] for k, v in {**{n: p.value for n, p in view.space.items()
                                                if p.kind == "fixed"},
                                             **best.params}.items()])
        s.tables.append(("Best configuration", params))
    space = Table(["parameter", "search range"], [
        [n, (f"{p.low} .. {p.high}" + (" (log)" if p.log else "")) if p.kind in ("float", "int")
         else (", ".join(map(str, p.choices)) if p.kind == "categorical" else f"fixed {p.value}")]
        for n, p in view.space.items()])
    s.tables.append(("Search space", space))
    return s


def optimizers(view: StudyView) -> Section:
    import plotly.graph_objects as go

    s = Section("Optimizers")
    groups: dict[str, list[FrozenTrial]] = {}
    for t in view.trials:
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
            groups.setdefault(str(view.param(t, "optimizer")), []).append(t)
    table = Table(["optimizer", "trials", "pruned", "best val loss", "median val loss",
                   "mean ± 95% CI (complete)", "best val acc", "median val acc", "best lr"])
    fig = go.Figure()
    for name, trials in sorted(groups.items()):
        losses = [loss for t in trials if (loss := view.final_loss(t)) is not None]
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        accs = [acc for t in trials if (acc := t.user_attrs.get("val_accuracy")) is not None]
        best = min(trials, key=lambda t: _or_inf(view.final_loss(t)))
        ci = "-"
        if len(complete) > 1:
            mean, sd, half = mean_and_ci(objective_values(complete))
            ci = f"{mean:.4f} ± {half:.4f} (sd {sd:.4f}, n={len(complete)})"
        table.rows.append([name, len(trials), sum(t.state == TrialState.PRUNED for t in trials),
                           min(losses) if losses else None,
                           statistics.median(losses) if losses else None, ci,
                           max(accs) if accs else None,
                           statistics.median(accs) if accs else None,
                           view.param(best, "lr")])
        fig.add_trace(go.Box(y=losses, name=name, boxpoints="all", jitter=0.4))
    fig.update_layout(title="Validation loss by optimizer (complete and pruned trials)",
                      yaxis_title="best validation loss", yaxis_type="log")
    s.tables.append(("Per optimizer", table))
    s.figures.append(fig)
    counts = [len(v) for v in groups.values()]
    if len(counts) > 1 and max(counts) > 1.5 * min(counts):
        s.paragraphs.append(
            "The comparison is unequal: the sampler gave some optimizers more trials than others "
            f"({', '.join(f'{k}: {len(v)}' for k, v in sorted(groups.items()))}). An adaptive "
            "sampler spends its budget where it already found good results, so the favoured "
            "optimizer's best value benefits from more tries. For an equal budget with the same "
            "seeds, run studies/compare-optimizers.toml.")
    elif len(counts) == 1:
        s.paragraphs.append("Only one optimizer was tried.")
    repeats = [t for t in view.completed if REPEAT in t.params]
    if repeats:
        s.tables.append(("Optimizer x learning rate over repeats (same seeds for each)",
                         _repeat_table(view, repeats)))
    return s


def _repeat_table(view: StudyView, trials: list[FrozenTrial]) -> Table:
    cells: dict[tuple, list[FrozenTrial]] = {}
    for t in trials:
        cells.setdefault((view.param(t, "optimizer"), view.param(t, "lr")), []).append(t)
    table = Table(["optimizer", "lr", "repeats", "mean val loss", "sd", "95% CI",
                   "mean val acc"])
    for (opt, lr), group in sorted(cells.items(), key=lambda kv: (str(kv[0][0]), kv[0][1])):
        mean, sd, half = mean_and_ci(objective_values(group))
        acc = statistics.fmean(t.user_attrs.get("val_accuracy", 0.0) for t in group)
        table.rows.append([opt, lr, len(group), mean, sd,
                           f"{mean - half:.4f} .. {mean + half:.4f}", acc])
    return table


def learning_rate(view: StudyView) -> Section:
    import plotly.graph_objects as go

    s = Section("Learning rate")
    fig = go.Figure()
    table = Table(["optimizer", "trials", "best lr", "good lr range (best quarter)",
                   "best val loss"])
    groups: dict[str, list] = {}
    for t in view.trials:
        loss = view.final_loss(t)
        lr = view.param(t, "lr")
        if loss is not None and lr is not None:
            groups.setdefault(str(view.param(t, "optimizer")), []).append((lr, loss, t))
    for name, points in sorted(groups.items()):
        fig.add_trace(go.Scatter(x=[p[0] for p in points], y=[p[1] for p in points],
                                 mode="markers", name=name,
                                 text=[f"trial {p[2].number} ({p[2].state.name.lower()})"
                                       for p in points]))
        ranked = sorted(points, key=lambda p: p[1])
        top = ranked[:max(1, len(ranked) // 4)]
        table.rows.append([name, len(points), ranked[0][0],
                           f"{min(p[0] for p in top):.2g} .. {max(p[0] for p in top):.2g}",
                           ranked[0][1]])
    fig.update_layout(title="Validation loss against learning rate", xaxis_type="log",
                      yaxis_type="log", xaxis_title="learning rate",
                      yaxis_title="best validation loss")
    s.figures.append(fig)
    s.tables.append(("Best learning rates per optimizer", table))
    s.paragraphs.append("The good range is the span of learning rates among each optimizer's "
                        "best quarter of trials.")
    return s


def regularization(view: StudyView) -> Section:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    s = Section("Regularization")
    tuned = [n for n in REGULARIZERS if n in view.space and view.space[n].kind != "fixed"]
    table = Table(["regularizer", "trials", "best trial's value",
                   "rank corr. with val loss", "rank corr. with val accuracy",
                   "rank corr. with generalization gap", "reading"])
    if not tuned:
        s.paragraphs.append("No regularization parameter was tuned in this study.")
        return s
    fig = make_subplots(rows=2, cols=len(tuned), subplot_titles=tuned * 2, vertical_spacing=0.15)
    best = view.study.best_trial if view.completed else None
    for col, name in enumerate(tuned, start=1):
        pts = [(x, loss, view.gap(t)) for t in view.trials
               if (x := view.param(t, name)) is not None
               and (loss := view.final_loss(t)) is not None]
        xs = [float(p[0]) for p in pts]
        corr_loss = spearman(xs, [p[1] for p in pts])
        with_acc = [(float(view.param(t, name)), t.user_attrs["val_accuracy"])
                    for t in view.trials if view.param(t, name) is not None
                    and t.user_attrs.get("val_accuracy") is not None]
        corr_acc = spearman([p[0] for p in with_acc], [p[1] for p in with_acc])
        with_gap = [(float(p[0]), p[2]) for p in pts if p[2] is not None]
        corr_gap = spearman([p[0] for p in with_gap], [p[1] for p in with_gap])
        table.rows.append([name, len(pts), view.param(best, name) if best else None,
                           corr_loss, corr_acc, corr_gap, reading(corr_loss, corr_gap)])
        fig.add_trace(go.Scatter(x=xs, y=[p[1] for p in pts], mode="markers",
                                 showlegend=False), row=1, col=col)
        fig.add_trace(go.Scatter(x=[p[0] for p in with_gap], y=[p[1] for p in with_gap],
                                 mode="markers", marker_color="indianred", showlegend=False),
                      row=2, col=col)
        if view.space[name].log:
            fig.update_xaxes(type="log", row=1, col=col)
            fig.update_xaxes(type="log", row=2, col=col)
        fig.update_yaxes(type="log", row=1, col=col)
    fig.update_yaxes(title_text="val loss", row=1, col=1)
    fig.update_yaxes(title_text="val − train loss", row=2, col=1)
    fig.update_layout(title="Regularization: validation loss (top) and generalization gap "
                            "(bottom)", height=600)
    s.figures.append(fig)
    s.tables.append(("Effect of each regularizer", table))
    s.paragraphs.append(
        "Rank correlation (Spearman) across trials: negative means more of it went with lower "
        "loss or a smaller gap. The generalization gap is the last epoch's validation loss "
        "minus its training loss; a large gap is how overfitting shows. Label smoothing raises "
        "validation cross-entropy by design (its predictions are less confident), so judge it "
        "by accuracy as well. Correlations across an "
        "adaptive search are evidence, not proof: parameters were not varied one at a time.")
    return s


def importance(view: StudyView) -> Section:
    s = Section("Importance and history")
    from optuna import visualization as vis

    if len(view.completed) >= 2:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                scores = optuna.importance.get_param_importances(
                    view.study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
            s.tables.append(("Hyperparameter importance",
                             Table(["parameter", "importance"], [[k, v] for k, v in
                                                                 scores.items()])))
            s.paragraphs.append(f"Importance evaluator: {IMPORTANCE_EVALUATOR}. Parameters "
                                "sampled only for some trials (momentum, nesterov) are left "
                                "out.")
        except Exception as exc:  # noqa: BLE001 - e.g. no parameter varies
            s.paragraphs.append(f"Importance could not be computed: {exc}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if view.trials:
            s.figures.append(vis.plot_optimization_history(view.study))
        if any(t.intermediate_values for t in view.trials):
            s.figures.append(vis.plot_intermediate_values(view.study))
        if len(view.completed) >= 2 and any(view.space[n].kind != "fixed" for n in view.space):
            s.figures.append(vis.plot_parallel_coordinate(view.study))
    s.paragraphs.append("Learning curves show every trial's validation loss per epoch; the "
                        "pruned ones stop early.")
    s.paragraphs += edge_warnings(view)
    return s


def _or_inf(loss: float | None) -> float:
    """A missing loss sorts last; a loss of 0.0 is the best there is, not a missing one."""
    return math.inf if loss is None else loss
