"""The report's section on what mattered: hyperparameter importance (and how far to trust it),
the search history, learning curves, training against validation loss for the best trials,
parallel coordinates of the most important parameters, and best values on the edge of their
range.
"""

from __future__ import annotations

import math
import warnings

import optuna
from optuna.trial import TrialState

from tuning import report_figures as figures
from tuning.errors import shorten
from tuning.report_render import Section, Table
from tuning.report_stats import StudyView, edge_warnings, objective_value, objective_values

IMPORTANCE_EVALUATOR = ("fANOVA (optuna.importance.FanovaImportanceEvaluator, seed 0); Optuna "
                        "4.x used it by default, 5.x defaults to PED-ANOVA")
# fANOVA fits a random forest to the trials: with fewer, its ranking changes from seed to seed.
MIN_TRIALS_FOR_IMPORTANCE = 20
# Parallel coordinates with more axes than this are a tangle nobody reads.
PARALLEL_AXES = 5
# Low loss dark blue, high loss orange: optuna's Blues drew the worst trials white on white.
PARALLEL_COLOURS = [[0.0, "#08306b"], [0.5, "#807dba"], [1.0, "#e6550d"]]
BEST_CURVES = 3


def importance(view: StudyView) -> Section:
    s = Section("Importance and history")
    scores = _importance(view, s)
    complete = view.completed
    if complete:
        s.figures.append(figures.history([t.number for t in complete],
                                         objective_values(complete)))
    # In the order of the trials' numbers, pruned ones among them: the legend lists them so.
    # A complete trial has one colour in both plots of curves.
    shades = {t.number: figures.colour(i)
              for i, t in enumerate(sorted(complete, key=lambda t: t.number))}
    curves = [_curve(t, pruned=t.state == TrialState.PRUNED, colour=shades.get(t.number))
              for t in sorted(complete + view.pruned, key=lambda t: t.number)
              if t.intermediate_values]
    # Under cross-validation a curve runs fold after fold, `epochs` steps each.
    fold_epochs = view.settings.epochs if view.settings.cv_folds > 1 else None
    if curves:
        s.figures.append(figures.learning_curves(curves, fold_epochs))
    best = sorted(complete, key=objective_value)[:BEST_CURVES]
    pairs = [(figures.Curve(f"trial {t.number}", list(range(1, len(losses) + 1)), losses),
              _curve(t, colour=shades[t.number]))
             for t in best if (losses := t.user_attrs.get("train_eval_losses"))]
    if pairs:
        s.figures.append(figures.train_and_val_curves(pairs, fold_epochs))
    if len(complete) >= 2 and view.tuned:
        s.figures.append(_parallel(view, scores))
    s.paragraphs.append("Learning curves show every complete trial's validation loss per epoch "
                        "and, in grey, the pruned ones, which stop early. Failed trials are left "
                        "out of every plot.")
    s.paragraphs += edge_warnings(view)
    return s


def _importance(view: StudyView, s: Section) -> dict[str, float]:
    """fANOVA importance of the tuned parameters (never `repeat`, a seed index), with a warning
    when there are too few trials to trust it."""
    complete = view.completed
    # Parameters sampled only for some trials (momentum, nesterov) cannot be scored.
    always = [n for n in view.tuned if all(n in t.params for t in complete)]
    # One that took one value in every complete trial explains nothing, yet fANOVA shares
    # importance out to it.
    constant = [n for n in always if len({repr(t.params[n]) for t in complete}) < 2]
    varied = [n for n in always if n not in constant]
    if len(complete) < 2 or not varied:
        return {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scores = optuna.importance.get_param_importances(
                view.study, params=varied,
                evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    except Exception as exc:  # noqa: BLE001 - e.g. no parameter varies
        s.paragraphs.append(f"Importance could not be computed: {exc}")
        return {}
    # Two significant digits: fANOVA's forest moves the third with its seed.
    s.tables.append(("Hyperparameter importance",
                     Table(["parameter", "importance"],
                           [[k, float(f"{v:.2g}")] for k, v in scores.items()])))
    s.paragraphs.append(f"Importance evaluator: {IMPORTANCE_EVALUATOR}. Parameters sampled only "
                        "for some trials (momentum, nesterov) and the seed index `repeat` are "
                        "left out" + (f", and so are those that took one value in every "
                                      f"complete trial ({shorten(', '.join(constant), 200)})"
                                      if constant else "") + ".")
    if len(complete) < MIN_TRIALS_FOR_IMPORTANCE:
        s.paragraphs.append(
            f"Warning: importance from {len(complete)} complete trials is a rough hint, not a "
            f"ranking: fANOVA needs about {MIN_TRIALS_FOR_IMPORTANCE} or more to be stable.")
    return scores


def _curve(trial: optuna.trial.FrozenTrial, pruned: bool = False,
           colour: str | None = None) -> figures.Curve:
    epochs = sorted(trial.intermediate_values)
    losses: list[float | None] = [trial.intermediate_values[e] for e in epochs]
    return figures.Curve(f"trial {trial.number}", epochs,
                         [v if v is not None and math.isfinite(v) else None for v in losses],
                         pruned, colour)


def _parallel(view: StudyView, scores: dict[str, float]):
    """Parallel coordinates of the most important tuned parameters (complete trials only):
    those of importance above 0, at least 2; every tuned one up to PARALLEL_AXES where
    importance was not computed."""
    from optuna import visualization as vis

    title = "Parallel coordinates (complete trials)"
    if scores:
        important = [n for n, score in scores.items() if score > 0]
        shown = important[:PARALLEL_AXES] if len(important) >= 2 else list(scores)[:2]
        if len(shown) < len(scores):
            title += f": the {len(shown)} most important of {len(scores)} parameters"
        zero_shown = [n for n in shown if scores[n] <= 0]
        zero_left_out = sum(scores[n] <= 0 and n not in shown for n in scores)
        if zero_shown:
            title += f"; {', '.join(zero_shown)} of importance 0, shown to make two axes"
        if zero_left_out:
            title += f"; {zero_left_out} of importance 0 left out"
    else:
        shown = view.tuned[:PARALLEL_AXES]
        if len(shown) < len(view.tuned):
            title += f": the first {len(shown)} of {len(view.tuned)} parameters (importance " \
                     "not computed)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fig = vis.plot_parallel_coordinate(view.study, params=shown,
                                           target_name="validation loss")
    _recolour(fig)
    return figures.finish(fig, title)


def _recolour(fig) -> None:
    """Optuna draws each trial as a line coloured from Blues, the worst trial white on the white
    page: its lines and colour bar in PARALLEL_COLOURS instead. A line starts on the validation
    loss axis at its loss's place between the lowest (0) and highest (1), which is where the
    colour bar's scale puts it too."""
    from plotly.colors import sample_colorscale

    for trace in fig.data:
        if trace.mode == "lines" and trace.y:
            if trace.y[0] is None:  # no loss to place (a trial pruned before it trained)
                continue
            place = min(1.0, max(0.0, trace.y[0]))
            trace.line.color = sample_colorscale(PARALLEL_COLOURS, place)[0]
        elif trace.marker.colorscale is not None:  # the trace that carries the colour bar
            trace.marker.update(colorscale=PARALLEL_COLOURS, reversescale=False)
