"""The report's plots, made to be read: every axis titled in words, losses on a log axis, numbers
written 1e-4 (not plotly's SI 100µ), a log axis labelled at powers of ten (or at 1, 2 and 5 of
a short one), complete trials in colour and pruned ones in grey, failed trials nowhere. A loss of
0, which a log axis cannot place, is drawn at the axis' floor, and the figure says so.

Each function takes plain numbers (the sections in tuning.report_sections choose the trials)
and returns a plotly figure.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative

VAL_LOSS = "validation loss (cross-entropy)"
BEST_VAL_LOSS = "best validation loss (cross-entropy)"
LEARNING_RATE = "learning rate"
EPOCH = "epoch"
PRUNED_COLOUR = "#b0b0b0"
COLOURS = qualitative.Plotly
# A log axis spanning more decades than this is labelled at powers of ten only; a shorter one at
# 1, 2 and 5 of each decade (log_ticks). Plotly's own choice labels every digit of some axes of
# several decades ("4 3 2 0.1 9 8", where 4 is 0.4), and they run into each other in a narrow
# plot.
DECADES_FOR_POWERS_OF_TEN = 2
ZERO_LOSS_FLOOR = 1e-6
"""Where a loss of 0 is drawn when no loss of the figure is above 0."""


def colour(index: int) -> str:
    return COLOURS[index % len(COLOURS)]


def finish(fig: go.Figure, title: str, height: int = 450) -> go.Figure:
    """The settings every figure shares: a title, white background, numbers as 1e-4."""
    fig.update_xaxes(exponentformat="e", showexponent="all")
    fig.update_yaxes(exponentformat="e", showexponent="all")
    title = _fitted(title)
    floor = _draw_zero_losses(fig)
    if floor is not None:
        title += (f"<br><sup>A loss of 0 cannot sit on the log axis: it is drawn at {floor:g} "
                  "(its hover says 0).</sup>")
    # The title sits in the top margin: each line below the first makes room for itself,
    # above a plot of the same height.
    below = SUBTITLE_LINE * title.count("<br>")
    fig.update_layout(title=title, template="plotly_white", height=height + below,
                      legend={"title": {"text": ""}}, margin={"t": TITLE_MARGIN + below})
    _label_log_axes(fig)
    return fig


TITLE_MARGIN = 100
"""Pixels above the plot for a one-line title (plotly's default)."""
SUBTITLE_LINE = 22
"""Pixels of one more line of a title, in <sup> type."""
TITLE_CHARS = 90
"""About the most characters of a title plotly fits on one line of a report's figure: it does
not wrap titles, it cuts them off at the figure's edge."""


def _fitted(title: str) -> str:
    """A long title as its head and, below in smaller type, the rest after its first ': ',
    wrapped into lines."""
    if len(title) <= TITLE_CHARS or "<br>" in title or ": " not in title:
        return title
    head, rest = title.split(": ", 1)
    lines = textwrap.wrap(rest, int(TITLE_CHARS / 0.7))  # <sup> is about 70% the size
    return f"{head}<br><sup>{'<br>'.join(lines)}</sup>"


def _axis(fig: go.Figure, trace, letter: str):
    """The layout axis ('x' or 'y') a trace is drawn on: 'y2' is layout.yaxis2."""
    anchor = getattr(trace, f"{letter}axis", None) or letter
    return fig.layout[f"{letter}axis{anchor[1:]}"]


def _draw_zero_losses(fig: go.Figure) -> float | None:
    """Move every value of 0 on a log y axis (a loss: a tiny easy data set reaches it) to a
    floor a decade below the smallest positive value shown, which plotly would otherwise leave
    out; its hover text gives the true value. Returns the floor, None where no value was 0."""
    on_log = [t for t in fig.data
              if getattr(t, "y", None) is not None and _axis(fig, t, "y").type == "log"]
    values = [v for t in on_log for v in t.y if v is not None and math.isfinite(v)]
    if not any(v <= 0 for v in values):
        return None
    positive = [v for v in values if v > 0]
    floor = 10.0 ** (math.floor(math.log10(min(positive))) - 1) if positive else ZERO_LOSS_FLOOR
    for trace in on_log:
        if not any(v is not None and v <= 0 for v in trace.y):
            continue
        labels = trace.text if isinstance(trace.text, (list, tuple)) else \
            [trace.text or ""] * len(trace.y)
        trace.text = [f"{label}: " * bool(label) + f"loss 0, drawn at {floor:g}"
                      if v is not None and v <= 0 else label
                      for v, label in zip(trace.y, labels, strict=True)]
        trace.y = [floor if v is not None and v <= 0 else v for v in trace.y]
    return floor


def _label_log_axes(fig: go.Figure) -> None:
    """Label each log axis by the span of its data (log_ticks)."""
    spans: dict[str, list[float]] = {}
    for trace in fig.data:
        for letter in ("x", "y"):
            values = getattr(trace, letter, None)
            if values is not None and (axis := _axis(fig, trace, letter)).type == "log":
                spans.setdefault(axis.plotly_name, []).extend(
                    v for v in values if isinstance(v, (int, float)) and 0 < v < math.inf)
    for name, values in spans.items():
        axis = fig.layout[name]
        # An x axis of one of several plots side by side has room for about 4 labels.
        narrow = name.startswith("xaxis") and axis.domain is not None and \
            axis.domain[1] - axis.domain[0] < 0.5
        if axis.range is not None:  # set by the figure (in powers of ten): label what it shows
            values = [10.0 ** axis.range[0], 10.0 ** axis.range[1]]
        if values:
            axis.update(log_ticks(min(values), max(values), narrow))


def log_ticks(low: float, high: float, narrow: bool = False) -> dict:
    """The tick settings of a log axis whose data run from `low` to `high` (both above 0):
    powers of ten on an axis of more than DECADES_FOR_POWERS_OF_TEN decades (one, if
    `narrow`); else 1, 2 and 5 of each decade, each labelled in full (plotly's own "D2" labels
    0.5 as "5"); on an axis too short for two of those, every digit. Shorter still, plotly's own
    labels, which are whole numbers there (0.28, 0.29). A single value (one trial) gets the
    decade around it: plotly's own range and labels there read "5 2 1 5 2", the second 5
    meaning 0.5."""
    if low == high:
        centre = math.log10(low)
        # Any decade holds two of 1, 2 and 5 at least.
        return {"range": [centre - 0.5, centre + 0.5],
                **log_ticks(10 ** (centre - 0.5), 10 ** (centre + 0.5))}
    decades = math.log10(high / low)
    if decades > (1 if narrow else DECADES_FOR_POWERS_OF_TEN):
        return {"dtick": 1}
    powers = range(math.floor(math.log10(low)), math.floor(math.log10(high)) + 2)
    for digits in ((1, 2, 5), range(1, 10)):
        ticks = [float(f"{d}e{k}") for k in powers for d in digits]  # 5e-6, not 4.999e-6
        if sum(low <= t <= high for t in ticks) >= 2:
            return {"tickvals": ticks, "ticktext": [_tick_text(t) for t in ticks]}
    return {}


def _tick_text(value: float) -> str:
    """0.5, 20, 2e-7: as plotly writes a tick with exponentformat 'e'."""
    text = f"{value:g}"
    if "e" not in text:
        return text
    mantissa, exponent = text.split("e")
    return f"{mantissa}e{int(exponent)}"


@dataclass(frozen=True)
class Point:
    """One trial on a scatter plot."""

    x: float
    y: float
    label: str


def lr_scatter(groups: dict[str, list[Point]], pruned: list[Point],
               good_ranges: dict[str, tuple[float, float]]) -> go.Figure:
    """Best validation loss against learning rate, one colour per optimizer, each optimizer's
    good range shaded in its colour; pruned trials in grey (their best before they stopped)."""
    fig = go.Figure()
    for i, (name, points) in enumerate(sorted(groups.items())):
        fig.add_trace(go.Scatter(x=[p.x for p in points], y=[p.y for p in points],
                                 mode="markers", name=name, marker_color=colour(i),
                                 text=[p.label for p in points]))
        if name in good_ranges:
            low, high = good_ranges[name]
            # A single learning rate still gets a visible band: ±5% on the log axis.
            fig.add_vrect(x0=low / 1.05, x1=high * 1.05, fillcolor=colour(i), opacity=0.12,
                          line_width=0, layer="below")
    if pruned:
        fig.add_trace(go.Scatter(x=[p.x for p in pruned], y=[p.y for p in pruned],
                                 mode="markers", name="pruned (best before stopping)",
                                 marker={"color": PRUNED_COLOUR, "symbol": "circle-open"},
                                 text=[p.label for p in pruned]))
    fig.update_xaxes(type="log", title_text=LEARNING_RATE)
    fig.update_yaxes(type="log", title_text=BEST_VAL_LOSS)
    return finish(fig, "Validation loss against learning rate (shaded: each optimizer's good "
                       "range)")


def optimizer_boxes(groups: dict[str, list[float]],
                    medians: dict[str, tuple[float, float]]) -> go.Figure:
    """The distribution of complete trials' validation loss per optimizer, and beside each box
    the 95% interval of its median where the table gives one (`medians`)."""
    fig = go.Figure()
    # Optimizers at 0, 1, 2 on a numeric axis named by its labels, so that the interval can
    # stand beside its box: drawn on the box's centre it would read as a whisker.
    names = sorted(groups)
    for i, name in enumerate(names):
        # The trials drawn over their box (pointpos 0): beside it, a lone trial's point sat
        # halfway to the next optimizer's label.
        fig.add_trace(go.Box(y=groups[name], x0=i, name=name, boxpoints="all", jitter=0.4,
                             pointpos=0, width=0.5, marker_color=colour(i)))
        if name in medians:
            low, high = medians[name]
            fig.add_trace(go.Scatter(
                x=[i + 0.4, i + 0.4], y=[low, high], mode="lines+markers",
                line={"color": "black", "width": 2},
                marker={"symbol": "line-ew-open", "size": 12, "color": "black"},
                name="95% interval of the median", legendgroup="median",
                showlegend=name == next(n for n in names if n in medians),
                text=[f"{name}: median's 95% interval {low:.4f} .. {high:.4f}"] * 2,
                hoverinfo="text"))
    fig.update_xaxes(title_text="optimizer", tickvals=list(range(len(names))), ticktext=names,
                     range=[-0.5, len(names) - 0.5])
    fig.update_yaxes(type="log", title_text=BEST_VAL_LOSS)
    title = "Validation loss by optimizer (complete trials)"
    if medians:
        title += ", with the 95% interval of each median (black)"
    return finish(fig, title)


@dataclass(frozen=True)
class Cell:
    """Mean and 95% interval of repeats at one learning rate."""

    lr: float
    mean: float
    interval: tuple[float, float] | None
    """The interval the table gives (tuning.report_stats.mean_interval); None where it gives
    none."""
    n: int


DASHES = ("solid", "dash", "dot", "dashdot", "longdash")
SYMBOLS = ("circle", "square", "diamond", "triangle-up", "x")


def optimizer_lr_means(groups: dict[str, list[Cell]]) -> go.Figure:
    """A fair comparison: each optimizer's mean validation loss over repeats against the
    learning rate, with its 95% interval where the table gives one. An interval cut at 0
    runs to the foot of the log axis (without an end mark: 0 is not on it)."""
    fig = go.Figure()
    # A line is broken where it has no mean at a learning rate another line has (a grid run in
    # part): drawn through, it would claim values there.
    rates = sorted({c.lr for cells in groups.values() for c in cells})
    for i, (name, cells) in enumerate(sorted(groups.items())):
        at: dict[float, Cell | None] = {lr: None for lr in rates}
        at.update({c.lr: c for c in cells})
        shown = list(at.values())
        # None draws no bar; 0 would draw an end mark that looks like an interval of nothing.
        above = [c.interval[1] - c.mean if c and c.interval else None for c in shown]
        below = [c.mean - c.interval[0] if c and c.interval else None for c in shown]
        # Lines on top of one another (adam and adamw alike) stay told apart by their dashes
        # and markers.
        fig.add_trace(go.Scatter(
            x=list(at), y=[c.mean if c else None for c in shown], mode="lines+markers",
            name=name, marker_color=colour(i), connectgaps=False,
            line={"dash": DASHES[i % len(DASHES)]},
            marker={"symbol": SYMBOLS[i % len(SYMBOLS)], "size": 8},
            error_y={"type": "data", "symmetric": False, "array": above, "arrayminus": below,
                     "visible": any(c.interval for c in cells)},
            text=[f"{name}, lr {c.lr:g}: mean of {c.n} repeats" + (
                f", 95% interval {c.interval[0]:.4f} .. {c.interval[1]:.4f}" if c.interval
                else "") if c else "" for c in shown]))
    fig.update_xaxes(type="log", title_text=LEARNING_RATE)
    fig.update_yaxes(type="log", title_text=f"mean {VAL_LOSS}")
    title = "Mean validation loss over repeats, with 95% interval, per optimizer"
    if any(c.interval and c.interval[0] == 0 for cells in groups.values() for c in cells):
        title += "<br><sup>An interval cut at 0 runs to the foot of the log axis.</sup>"
    return finish(fig, title)


@dataclass(frozen=True)
class Curve:
    """One trial's losses per epoch (None where a loss was not finite or not recorded)."""

    label: str
    epochs: list[int]
    losses: list[float | None]
    pruned: bool = False
    colour: str | None = None
    """The trial's colour, the same in every plot it is in (default: by its place in one)."""


def learning_curves(curves: list[Curve], fold_epochs: int | None = None) -> go.Figure:
    """Validation loss per epoch of every complete (coloured) and pruned (grey) trial. Under
    cross-validation (`fold_epochs`: the epochs of each fold) the folds follow one another,
    each line broken between them."""
    fig = go.Figure()
    top = _top_of_complete(curves)
    # A pruned trial whose every loss is above the cut draws nothing: not in the legend either.
    hidden = [c for c in curves if c.pruned and top is not None
              and all(v is None or v > top for v in c.losses)]
    for i, curve in enumerate(curves):
        x, y = _broken_at_folds(curve, fold_epochs)
        fig.add_trace(go.Scatter(
            x=x, y=y, mode="lines+markers", name=curve.label,
            line={"color": PRUNED_COLOUR if curve.pruned else curve.colour or colour(i),
                  "width": 1},
            marker={"size": 4}, showlegend=len(curves) <= 20 and curve not in hidden))
    _epoch_axis(fig, curves, fold_epochs)
    fig.update_yaxes(type="log", title_text=VAL_LOSS)
    title = "Learning curves: validation loss per epoch (pruned trials grey)"
    if top is not None:
        low = min(v for c in curves for v in c.losses if v is not None and v > 0)
        if any(v is not None and v <= 0 for c in curves for v in c.losses):
            low = 10.0 ** (math.floor(math.log10(low)) - 1)  # where finish draws a loss of 0
        fig.update_yaxes(range=[math.log10(low) - 0.05, math.log10(top)])
        wholly = (f"; {len(hidden)} pruned trial{'s lie' if len(hidden) != 1 else ' lies'} "
                  "wholly above it" if hidden else "")
        title += (f"<br><sup>Cut at {top:.3g}: pruned trials' losses above it (up to "
                  f"{_highest(curves):.3g}) would squeeze the complete trials' curves{wholly}."
                  "</sup>")
    return finish(fig, title)


OUTLIER_FACTOR = 3
"""A pruned trial's loss this many times the complete trials' highest is off the plot's scale."""


def _highest(curves: list[Curve]) -> float:
    return max(v for c in curves for v in c.losses if v is not None)


def _top_of_complete(curves: list[Curve]) -> float | None:
    """Where the loss axis ends when pruned trials' losses reach far above every complete
    trial's (a diverged trial's 300 beside 0.3): a little above the complete ones. None where
    nothing is that far above, or no trial completed."""
    complete = [v for c in curves if not c.pruned for v in c.losses if v is not None and v > 0]
    if not complete or _highest(curves) <= OUTLIER_FACTOR * max(complete):
        return None
    return 1.5 * max(complete)


def train_and_val_curves(pairs: list[tuple[Curve, Curve]],
                         fold_epochs: int | None = None) -> go.Figure:
    """For the best trials: training loss (dashed) and validation loss (solid) per epoch, both
    measured the same way, so the space between them is the generalization gap. Folds as in
    learning_curves."""
    fig = go.Figure()
    for i, (train, val) in enumerate(pairs):
        shade = val.colour or colour(i)
        x, y = _broken_at_folds(val, fold_epochs)
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers",
                                 name=f"{val.label}: validation", line_color=shade))
        x, y = _broken_at_folds(train, fold_epochs)
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers",
                                 name=f"{train.label}: training", line_color=shade,
                                 line_dash="dash"))
    _epoch_axis(fig, [c for p in pairs for c in p], fold_epochs)
    fig.update_yaxes(type="log", title_text="loss (cross-entropy, eval mode)")
    return finish(fig, "Best trials: training (dashed) and validation (solid) loss per epoch")


def _broken_at_folds(curve: Curve, fold_epochs: int | None) -> tuple[list, list]:
    """A curve's points, with a gap (None) wherever a new fold starts: each fold trains a new
    network, and a line from one fold's last epoch to the next one's first would show a jump
    that no network made."""
    x: list = []
    y: list = []
    for epoch, loss in zip(curve.epochs, curve.losses, strict=True):
        if fold_epochs and x and (epoch - 1) // fold_epochs != (x[-1] - 1) // fold_epochs:
            x.append(None)
            y.append(None)
        x.append(epoch)
        y.append(loss)
    return x, y


def _epoch_axis(fig: go.Figure, curves: list[Curve], fold_epochs: int | None) -> None:
    """The epoch axis; under cross-validation, with each fold's span marked and named."""
    last = _epochs(curves)
    fig.update_xaxes(title_text=EPOCH, dtick=1 if last <= 20 else None)
    if not fold_epochs:
        return
    fig.update_xaxes(title_text=f"epoch, folds one after another ({fold_epochs} epochs each)")
    for fold in range(math.ceil(last / fold_epochs)):
        start = fold * fold_epochs + 0.5
        if fold:
            fig.add_vline(x=start, line={"color": "#999", "width": 1, "dash": "dot"})
        fig.add_annotation(x=start + fold_epochs / 2, y=1, yref="paper", yanchor="bottom",
                           text=f"fold {fold + 1}", showarrow=False)


def history(numbers: list[int], values: list[float]) -> go.Figure:
    """Each complete trial's value in the order trials were started, and the best so far."""
    best, running = [], math.inf
    for v in values:
        running = min(running, v)
        best.append(running)
    fig = go.Figure([
        go.Scatter(x=numbers, y=values, mode="markers", name="trial", marker_color=colour(0)),
        go.Scatter(x=numbers, y=best, mode="lines", name="best so far", line_color=colour(1),
                   line_shape="hv"),  # a step: the best changes at a trial, not between
    ])
    # Trial numbers are whole: over a few trials plotly's own ticks fall at 0.5, 1.5.
    few = bool(numbers) and max(numbers) - min(numbers) <= 10
    fig.update_xaxes(title_text="trial number", dtick=1 if few else None, tickformat="d")
    if numbers:
        # Half a trial either side, or a little more: plotly's own range around a single
        # trial 0 showed a trial -1, which no study has.
        pad = 0.5 + 0.02 * (max(numbers) - min(numbers))
        fig.update_xaxes(range=[min(numbers) - pad, max(numbers) + pad])
    fig.update_yaxes(type="log", title_text=BEST_VAL_LOSS)
    return finish(fig, "Search history (complete trials)")


def _epochs(curves: list[Curve]) -> int:
    return max((max(c.epochs) for c in curves if c.epochs), default=0)


# The colour bar is as tall as the matrix: a matrix of a few classes is drawn at least
# MIN_HEATMAP_HEIGHT pixels high, and below FEW_CLASSES classes its bar is labelled at 0, 5, 20,
# 50 and 100% only. With 3 classes the labels of the square-root scale's 0, 1 and 5% overlapped.
FEW_CLASSES = 6
MIN_HEATMAP_HEIGHT = 340


def confusion_heatmap(cm: list[list[int]], names: list[str], title: str):
    """The confusion matrix as a heat map: rows true class, columns predicted, counts as text.

    Colour is each cell's share of its true class, on a square-root scale: the diagonal holds
    most of every row, and on a linear scale the 1-5% confusions worth reading would all look
    like the empty cells.
    """
    counts = np.asarray(cm)
    support = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, support, out=np.zeros(counts.shape), where=support > 0)
    ticks = [0.0, 0.01, 0.05, 0.2, 0.5, 1.0] if len(names) >= FEW_CLASSES else \
        [0.0, 0.05, 0.2, 0.5, 1.0]
    fig = go.Figure(go.Heatmap(
        z=np.sqrt(share), x=names, y=names, text=counts, texttemplate="%{text}",
        customdata=100 * share, colorscale="Blues", zmin=0, zmax=1,
        hovertemplate="true %{y}, predicted %{x}: %{text} images "
                      "(%{customdata:.1f}% of the true class)<extra></extra>",
        colorbar={"title": {"text": "share of the true class"},
                  "tickvals": np.sqrt(ticks).tolist(), "ticktext": [f"{t:.0%}" for t in ticks]}))
    fig.update_layout(title=title, height=max(160 + 42 * len(names), MIN_HEATMAP_HEIGHT),
                      width=260 + 60 * len(names))
    # Category axes: digits' names ("0".."9") would otherwise become a numeric axis. True
    # class 0 at the top, as in the table.
    fig.update_xaxes(title_text="predicted class", type="category", tickangle=-30)
    fig.update_yaxes(title_text="true class", type="category", autorange="reversed")
    return fig
