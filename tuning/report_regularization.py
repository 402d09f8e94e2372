"""The report's answer to "how much regularization": each tuned regularizer's rank correlation
with the trials' validation loss (validation accuracy for label smoothing, which raises the
loss by design), accuracy and generalization gap, read in words only where a permutation test,
adjusted for the regularizers tested together, says it is beyond chance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tuning import report_figures as figures
from tuning.report_render import Section, Table
from tuning.report_stats import (
    ALPHA,
    EXACT_POINTS,
    RANDOM_ORDERINGS,
    StudyView,
    holm,
    objective_value,
    p_text,
    rank_correlation,
)
from tuning.space import Param

REGULARIZERS = ("weight_decay", "l1", "dropout", "crop_padding", "hflip", "label_smoothing")
JUDGED_BY_ACCURACY = ("label_smoothing",)
"""Judged by validation accuracy: label smoothing makes predictions less confident, which
raises validation cross-entropy whether or not it helps."""
MIN_TRIALS = 4


@dataclass(frozen=True)
class Measured:
    """One regularizer over the complete trials that have it."""

    name: str
    xs: list[float]
    losses: list[float]
    gaps: list[tuple[float, float]]
    """(value, gap) of the trials whose gap was measured."""
    accuracy_xs: list[float]
    """The values of the trials that recorded a validation accuracy."""
    with_loss: tuple[float, float] | None
    with_accuracy: tuple[float, float] | None
    with_gap: tuple[float, float] | None
    """(rho, p) of each: None with too few trials or no spread."""

    @property
    def by_accuracy(self) -> bool:
        return self.name in JUDGED_BY_ACCURACY

    @property
    def judged(self) -> tuple[float, float] | None:
        """The test its reading stands on: accuracy for label smoothing, else loss."""
        return self.with_accuracy if self.by_accuracy else self.with_loss

    @property
    def judged_xs(self) -> list[float]:
        """The values of the trials that test counts."""
        return self.accuracy_xs if self.by_accuracy else self.xs


def regularization(view: StudyView) -> Section:
    s = Section("Regularization")
    tuned = [n for n in REGULARIZERS if n in view.tuned]
    if not tuned:
        s.paragraphs.append("No regularization parameter was tuned in this study.")
        return s
    measured = [_measure(view, name) for name in tuned]
    judged = [m for m in measured if m.judged is not None]
    adjusted = dict(zip((m.name for m in judged),
                        holm([m.judged[1] for m in judged if m.judged]), strict=True))
    gapped = [m for m in measured if m.with_gap is not None]
    gap_adjusted = dict(zip((m.name for m in gapped),
                            holm([m.with_gap[1] for m in gapped if m.with_gap]), strict=True))
    table = Table(["regularizer", "complete trials", "best trial's value",
                   "rank corr. with val loss", "rank corr. with val accuracy",
                   "rank corr. with generalization gap", "reading"],
                  fixed_columns=("rank corr. with val loss", "rank corr. with val accuracy",
                                 "rank corr. with generalization gap"))
    best = view.best()
    for m in measured:
        table.rows.append([
            m.name, len(m.xs), view.param(best, m.name) if best else None,
            m.with_loss[0] if m.with_loss else None,
            m.with_accuracy[0] if m.with_accuracy else None,
            m.with_gap[0] if m.with_gap else None,
            reading(m.judged, len(m.judged_xs), m.with_gap, len(set(m.judged_xs)),
                    by_accuracy=m.by_accuracy, adjusted=adjusted.get(m.name),
                    gap_adjusted=gap_adjusted.get(m.name) if len(gapped) > 1 else None,
                    tested=len(judged))])
    s.figures.append(_figure(view, measured))
    table.note = view.population()
    s.tables.append(("Effect of each regularizer", table))
    s.paragraphs.append(_method(len(judged)))
    without_gap = sum(view.gap(t) is None for t in view.completed)
    if without_gap:
        s.paragraphs.append(
            f"{without_gap} complete trials were recorded before the training loss was measured "
            "in eval mode: they have no generalization gap.")
    return s


def _measure(view: StudyView, name: str) -> Measured:
    pts = [(float(x), objective_value(t), view.gap(t), t.user_attrs.get("val_accuracy"))
           for t in view.completed if (x := view.param(t, name)) is not None]
    with_acc = [(p[0], p[3]) for p in pts if p[3] is not None]
    gaps = [(p[0], p[2]) for p in pts if p[2] is not None]
    return Measured(
        name, [p[0] for p in pts], [p[1] for p in pts], gaps, [x for x, _ in with_acc],
        rank_correlation([p[0] for p in pts], [p[1] for p in pts]),
        rank_correlation([x for x, _ in with_acc], [a for _, a in with_acc]),
        rank_correlation([x for x, _ in gaps], [g for _, g in gaps]))


def reading(test: tuple[float, float] | None, n: int, gap: tuple[float, float] | None,
            values: int = 2, *, by_accuracy: bool = False, adjusted: float | None = None,
            gap_adjusted: float | None = None, tested: int = 1) -> str:
    """A regularizer's rank correlation (rho, p) with validation loss (with accuracy where
    `by_accuracy`) over `n` trials that tried `values` distinct values of it, and with the gap,
    in words: an effect only where its p-value, Holm-adjusted over the `tested` regularizers
    (`adjusted`, and the gap's `gap_adjusted`; None: p as it is), is below ALPHA, since with
    few trials a strong-looking rho is often chance."""
    measure = "validation accuracy" if by_accuracy else "validation loss"
    if test is None:
        if n >= MIN_TRIALS and values < 2:
            return "not varied: every complete trial had the same value"
        return f"too few trials (n={n}; {MIN_TRIALS} needed)" if n < MIN_TRIALS else \
            f"no correlation: every complete trial had the same {measure}"
    rho, p = test
    p_for = p if adjusted is None else adjusted
    evidence = f"n={n}, {p_text(p)}"
    if adjusted is not None and tested > 1:
        evidence += f"; adjusted for {tested} regularizers: {p_text(adjusted)}"
    if p_for >= ALPHA:
        effect = f"no clear effect on {measure} ({evidence})"
    elif abs(rho) < 0.2:
        effect = f"little effect on {measure} ({evidence})"
    else:
        helped = rho > 0 if by_accuracy else rho < 0
        effect = (("more helped" if helped else "more hurt")
                  + (" strongly" if abs(rho) >= 0.5 else "")
                  + f" ({'accuracy; ' if by_accuracy else ''}{evidence})")
    if gap is not None and gap[0] <= -0.2:
        gap_p = gap[1] if gap_adjusted is None else gap_adjusted
        if gap_p < ALPHA:
            effect += f"; narrows the gap ({p_text(gap_p)}" + (
                "" if gap_adjusted is None else ", adjusted") + ")"
    return effect


def _method(tested: int) -> str:
    adjusted = (f", adjusted by Holm's method for the {tested} regularizers tested together "
                "(each row gives the p-value and the adjusted one)" if tested > 1 else "")
    return (
        "Rank correlation (Spearman) across trials; in every column the sign says which way "
        "more of the regularizer went: with validation loss and the gap, negative is better "
        "(lower loss, smaller gap); with validation accuracy, positive is better (higher "
        "accuracy). The generalization gap is the last epoch's validation loss "
        "minus the training loss measured the same way (eval mode, plain cross-entropy, on a "
        "fixed subset of training images as large as the validation split); the training "
        "objective (with dropout, augmentation, smoothing and L1) is kept in trials.csv but is "
        "not comparable. Label smoothing raises validation cross-entropy by design (its "
        "predictions are less confident), so its reading is of validation accuracy; the "
        "others' of validation loss. Horizontal flipping (hflip) is 1 where on. A reading of "
        "one parameter can be confounded by the others, which varied at the same time (a "
        "regularizer tried mostly with a poor optimizer looks harmful): it is evidence, not "
        f"proof. The reading claims an effect only where its p-value{adjusted} is below "
        f"{ALPHA:g}: a permutation test, exact up to {EXACT_POINTS} trials, from "
        f"{RANDOM_ORDERINGS:,} random orderings beyond, so that tied values (a few choices "
        "tried many times) do not make it too small.")


def _figure(view: StudyView, measured: list[Measured]):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    # Room between the panels for each one's tick labels.
    fig = make_subplots(rows=2, cols=len(measured), vertical_spacing=0.18,
                        horizontal_spacing=min(0.12, 0.5 / len(measured)))
    for col, m in enumerate(measured, start=1):
        # Not clipped at the axis: a trial at the end of the range (dropout 0) shows whole.
        fig.add_trace(go.Scatter(x=m.xs, y=m.losses, mode="markers",
                                 marker_color=figures.colour(0), showlegend=False,
                                 cliponaxis=False), row=1, col=col)
        fig.add_trace(go.Scatter(x=[x for x, _ in m.gaps], y=[g for _, g in m.gaps],
                                 mode="markers", marker_color="indianred", showlegend=False,
                                 cliponaxis=False), row=2, col=col)
        param = view.space[m.name]
        axis: dict = {"type": "log" if param.log else "linear",
                      "range": _axis_range(param, m.xs)}
        if param.kind == "categorical" and all(isinstance(c, bool) for c in param.choices):
            axis.update(tickvals=[0, 1], ticktext=["off", "on"])
        fig.update_xaxes(title_text=m.name.replace("_", " "), row=1, col=col, **axis)
        fig.update_xaxes(title_text=m.name.replace("_", " "), row=2, col=col, **axis)
        fig.update_yaxes(type="log", row=1, col=col)
        # Labels a little apart from the axis: a trial at 0 is drawn on it.
        fig.update_yaxes(ticks="outside", ticklen=6, tickcolor="rgba(0,0,0,0)", row=1, col=col)
        fig.update_yaxes(ticks="outside", ticklen=6, tickcolor="rgba(0,0,0,0)", row=2, col=col)
        fig.update_yaxes(title_text=figures.BEST_VAL_LOSS if col == 1 else "", row=1, col=col)
        fig.update_yaxes(title_text="last epoch's gap (val − train loss)" if col == 1 else "",
                         row=2, col=col)
    return figures.finish(fig, "Regularization: best validation loss (top) and the last "
                               "epoch's generalization gap (bottom)", height=650)


def _axis_range(param: Param, xs: list[float]) -> list[float] | None:
    """A regularizer's x axis: the values the trials tried, with a margin of 5% of their spread,
    but never past the ends of the search space (plotly's own range showed dropout from -0.5).
    On a log axis in powers of ten, as plotly takes it."""
    if param.kind == "categorical":
        numbers = [float(c) for c in param.choices if isinstance(c, (int, float))]
        if not numbers:
            return None
        ends = min(numbers), max(numbers)
    elif param.kind in ("float", "int"):
        ends = param.bounds()
    else:
        return None
    scale = math.log10 if param.log else float
    values = [scale(x) for x in xs if x > 0 or not param.log]
    if not values or (param.log and ends[0] <= 0):
        return None
    low, high = min(values), max(values)
    # One value tried: a decade around it on a log axis, where log_ticks labels 1, 2 and 5.
    margin = 0.05 * (high - low) or (0.5 if param.log else 0.05 * (abs(high) or 1))
    # A trial outside the space (changed since it ran) stays on the plot.
    return [max(low - margin, min(scale(ends[0]), low)),
            min(high + margin, max(scale(ends[1]), high))]
