"""The report's answers in words: which optimizer and which learning rate, each only as far as
the trials tell them apart. A leader is named with the tests of it against every other
candidate (two-sided, as the leader was chosen by the same losses; Holm-adjusted over the
comparisons), and candidates the trials do not separate from it are named beside it.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from tuning.errors import counted
from tuning.report_render import fmt
from tuning.report_stats import (
    ALPHA,
    MIN_FOR_INTERVAL,
    differ_p,
    holm,
    mean_interval,
    p_text,
)

MIN_TO_COMPARE = 4
"""Complete trials an optimizer needs to be compared: with 3 against 3 no ordering is rare
enough to tell them apart (the most extreme, 2 in 20, two-sided)."""


@dataclass(frozen=True)
class RepeatCell:
    """The complete repeats of one configuration (every parameter but `repeat`)."""

    optimizer: str
    lr: float
    others: dict
    """The configuration's other parameters, fixed ones included."""
    n: int
    """Complete repeats."""
    repeats: frozenset
    """Their `repeat` values (seed indices)."""
    mean: float
    sd: float | None
    half: float | None
    """Half-width of the 95% interval of the mean; None for a single repeat."""
    accuracy: float | None
    """Mean validation accuracy; None where no repeat recorded one."""
    pruned: int
    """Repeats pruned: left out of the mean."""


def best_cells(cells: list[RepeatCell]) -> dict[str, RepeatCell]:
    """Each optimizer's configuration with the lowest mean loss over its repeats: of those with
    enough repeats for an interval (MIN_FOR_INTERVAL) where it has any (one lucky repeat is no
    mean)."""
    best: dict[str, RepeatCell] = {}
    for c in sorted(cells, key=lambda c: (c.n < MIN_FOR_INTERVAL, c.mean)):
        best.setdefault(c.optimizer, c)
    return best


def which_optimizer(losses: dict[str, list[float]], grid: bool) -> str:
    """From the optimizers' trials as a search ran them: the one with the lowest median
    validation loss, and which of the others it is lower than beyond chance (Mann-Whitney U:
    ranks only, so a diverged trial counts as one bad rank)."""
    comparable = {name: values for name, values in losses.items()
                  if len(values) >= MIN_TO_COMPARE}
    too_few = _too_few({name: len(values) for name, values in losses.items()}, "complete trial")
    if len(comparable) < 2:
        return "Which optimizer: " + too_few
    leader = min(comparable, key=lambda name: (statistics.median(comparable[name]), name))
    others = sorted(set(comparable) - {leader})
    among = f"of the optimizers with {MIN_TO_COMPARE} or more complete trials, " if too_few else ""
    text = (f"Which optimizer: {among}{leader} has the lowest median validation loss "
            f"({statistics.median(comparable[leader]):.4f} over "
            f"{counted(len(comparable[leader]), 'complete trial')}).")
    together = _kruskal_p(list(comparable.values())) if len(comparable) > 2 else None
    if together is not None and together >= ALPHA:
        # The leader is picked by the same losses it is then tested on: with 3 or more
        # optimizers, pairs are tested only once all of them together differ.
        text += (f" Taken together, the optimizers' losses do not differ beyond chance "
                 f"(Kruskal-Wallis, {p_text(together)}), so the trials do not tell {leader} "
                 f"apart from {_and(others)}; more trials would be needed to separate them.")
    else:
        adjusted = dict(zip(others, holm([differ_p(comparable[leader], comparable[name])
                                            for name in others]), strict=True))
        text += _verdict(leader, adjusted, "Mann-Whitney U", every=not too_few)
        if together is not None:
            text += (f" They were tested once the optimizers' losses taken together differed "
                     f"beyond chance (Kruskal-Wallis, {p_text(together)}).")
    if grid:
        text += (" Each optimizer's trials are over every learning rate the grid gave it, the "
                 "poor ones too: the means below compare them at each learning rate.")
    else:
        text += (" Each optimizer's trials had the other settings the sampler gave them, so "
                 "this compares the optimizers as the search tried them, not in a controlled "
                 "experiment (the compare-optimizers grid is one).")
    return text + (f" {too_few[0].upper()}{too_few[1:]}" if too_few else "")


def which_optimizer_at_its_best(cells: list[RepeatCell]) -> str:
    """From repeats: each optimizer at the configuration of its lowest mean loss, and which of
    the others' best the leader's is lower than beyond chance (Welch's t on the means, as the
    repeat table's intervals are Student's)."""
    best = best_cells(cells)
    comparable = {name: c for name, c in best.items()
                  if c.n >= MIN_FOR_INTERVAL and c.sd is not None}
    too_few = _too_few({name: c.n for name, c in best.items()}, "complete repeat",
                       needed=MIN_FOR_INTERVAL)
    if len(comparable) < 2:
        return "Which optimizer, each at its best configuration: " + (
            too_few or "no optimizer has repeats to compare.")
    leader = min(comparable, key=lambda name: (comparable[name].mean, name))
    others = sorted(set(comparable) - {leader})
    adjusted = dict(zip(others, holm([_welch_p(comparable[leader], comparable[name])
                                        for name in others]), strict=True))
    ahead = comparable[leader]
    among = f"of the optimizers with {MIN_FOR_INTERVAL} or more repeats, " if too_few else ""
    text = (f"Which optimizer, each at its best configuration: {among}{leader} at lr "
            f"{fmt(ahead.lr)} has the lowest mean validation loss ({ahead.mean:.4f} over "
            f"{counted(ahead.n, 'repeat')}).")
    text += _verdict(leader, adjusted, "Welch's t on each one's best configuration's repeats",
                     losses=False, every=not too_few)
    return text + (f" {too_few[0].upper()}{too_few[1:]}" if too_few else "")


def which_lr(cells: list[RepeatCell]) -> list[str]:
    """Under repeats, per optimizer: the learning rate of the lowest mean loss (of those with an
    interval, where it has any), and the others whose 95% interval overlaps its own (the
    repeats do not clearly separate them)."""
    answers = []
    for optimizer, best in sorted(best_cells(cells).items()):
        own = [c for c in cells if c.optimizer == optimizer and c.lr != best.lr]
        interval = mean_interval(best.mean, best.half, best.n)
        if interval is None:
            answers.append(f"{optimizer}: lr {fmt(best.lr)} has the lowest mean validation loss "
                           f"({best.mean:.4f} over {counted(best.n, 'repeat')}); too few repeats "
                           "for an interval, so how far it is ahead of the others is not known.")
            continue
        short = sorted({c.lr for c in own if c.n < MIN_FOR_INTERVAL})
        lower_short = any(c.mean < best.mean for c in own if c.n < MIN_FOR_INTERVAL)
        text = (f"{optimizer}: lr {fmt(best.lr)} has the lowest mean validation loss "
                + ("of the rates with an interval " if lower_short else "")
                + f"({best.mean:.4f} over {counted(best.n, 'repeat')}, 95% CI "
                f"{interval[0]:.4f}..{interval[1]:.4f})")
        overlapping = sorted({c.lr for c in own
                              if (other := mean_interval(c.mean, c.half, c.n)) is not None
                              and other[0] <= interval[1] and interval[0] <= other[1]})
        rates = ", ".join(fmt(lr) for lr in overlapping)
        if not overlapping:
            text += "; no other learning rate's interval overlaps it"
        elif len(overlapping) == 1:
            text += f"; the interval of lr {rates} overlaps it: the repeats do not clearly " \
                    "separate them"
        else:
            text += f"; the intervals of lr {rates} overlap it: the repeats do not clearly " \
                    "separate them"
        if short:
            text += (f" (lr {', '.join(fmt(lr) for lr in short)}: too few repeats for an "
                     "interval)")
        answers.append(text + ".")
    return answers


def _verdict(leader: str, adjusted: dict[str, float], test: str, losses: bool = True,
             every: bool = True) -> str:
    """Which candidates the leader is ahead of beyond chance (`adjusted`: each one's p-value,
    Holm-adjusted), which it is not, and the test; of their `losses`, else of their means.
    `every`: whether the candidates are all the optimizers (else no advice to use the leader:
    one with too few trials to compare may be better)."""
    its, others = ("Its losses are", "losses are") if losses else ("Its mean is", "mean is")
    lower = [name for name in adjusted if adjusted[name] < ALPHA]
    level = [name for name in adjusted if adjusted[name] >= ALPHA]

    def listed(names: list[str]) -> str:
        return ", ".join(f"{name} ({p_text(adjusted[name])})" for name in names)

    if not level:
        text = (f" {its} lower than every other {'' if every else 'such '}optimizer's beyond "
                f"chance: {listed(lower)}." + (f" On these data, use {leader}." if every else ""))
    elif not lower:
        text = (f" No other optimizer's {others} higher beyond chance: {listed(level)}, so the "
                f"trials do not tell {leader} apart from {_and(level)}; more trials would be "
                "needed to separate them.")
    else:
        text = (f" {its} lower beyond chance than {listed(lower)}, but not than "
                f"{listed(level)}: choose among {_and([leader, *level])}.")
    if len(adjusted) == 1:
        return text + f" The p-value is a two-sided test of the difference ({test})."
    return text + (f" The p-values are two-sided tests of the leader against each other "
                   f"optimizer ({test}), Holm-adjusted for the {len(adjusted)} comparisons.")


def _kruskal_p(groups: list[list[float]]) -> float:
    """The p-value of the groups' losses differing by chance alone, all together (Kruskal-Wallis:
    ranks, as Mann-Whitney U's); 1 where every loss is the same."""
    from scipy.stats import kruskal

    values = [v for group in groups for v in group]
    if len(set(values)) < 2:
        return 1.0
    return float(kruskal(*groups).pvalue)


def _welch_p(these: RepeatCell, those: RepeatCell) -> float:
    """Two-sided p-value of the two means differing by chance alone (Welch's t); 1 where
    neither varies over its repeats (no spread to test against)."""
    from scipy.stats import ttest_ind_from_stats

    if not these.sd and not those.sd:
        return 1.0
    p = float(ttest_ind_from_stats(these.mean, these.sd or 0.0, these.n, those.mean,
                                   those.sd or 0.0, those.n, equal_var=False).pvalue)
    return 1.0 if math.isnan(p) else p


def _too_few(counts: dict[str, int], unit: str, needed: int = MIN_TO_COMPARE) -> str:
    """'too few complete trials to compare (adam: 2; 3 needed).', or '' where none is short."""
    short = sorted(name for name, n in counts.items() if n < needed)
    if not short:
        return ""
    return (f"too few {unit}s to compare (" + ", ".join(f"{name}: {counts[name]}"
                                                       for name in short)
            + f"; {needed} needed).")


def _and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + f" and {names[-1]}"
