"""What the report's numbers say: a study's trials seen the way the report reads them
(`StudyView`), rank correlation and confidence intervals, the words a correlation earns in the
regularization table, and the warning for a best value on the edge of its range.

No tables or figures here: tuning.report_sections lays these out.
"""

from __future__ import annotations

import itertools
import math
import statistics
from dataclasses import dataclass
from typing import cast

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuning.errors import counted
from tuning.report_render import fixed, fmt
from tuning.space import BOUNDS, REPEAT, Param, tuned
from tuning.study_file import StudySettings
from tuning.train import TrainConfig
from tuning.warm_start import WARM_START_ATTR

DEFAULT_OPTIMIZER = TrainConfig().optimizer

# Parameters whose hard limit is the model's own: past it lies another architecture.
ARCHITECTURE_LIMITED = ("blocks", "convs")


# Samplers that spend more trials where they already found good results: their per-optimizer
# trial counts are unequal by design, which flatters the favoured optimizer's best value.
ADAPTIVE_SAMPLERS = ("tpe", "cmaes", "gp")


@dataclass
class StudyView:
    """A study's trials with everything the sections need.

    Which trials answer a question is decided here, once: the loss comparisons use complete
    trials only (each ran every epoch, so their losses are comparable); pruned trials are
    counted beside them; failed and running trials are in no table or plot.
    """

    study: optuna.Study
    trials: list[FrozenTrial]
    settings: StudySettings
    space: dict[str, Param]

    @property
    def completed(self) -> list[FrozenTrial]:
        return [t for t in self.trials if t.state == TrialState.COMPLETE]

    @property
    def pruned(self) -> list[FrozenTrial]:
        return [t for t in self.trials if t.state == TrialState.PRUNED]

    def population(self) -> str:
        """The sentence under each table that says which trials it counts."""
        left_out = [f"{n} {state.name.lower()}" for state in (TrialState.FAIL, TrialState.RUNNING,
                                                              TrialState.WAITING)
                    if (n := sum(t.state == state for t in self.trials))]
        epochs = counted(self.settings.epochs, "epoch")
        folds = self.settings.cv_folds
        # Under cross-validation a trial trains its epochs once on each fold.
        full = f"{epochs} on each of its {folds} folds" if folds > 1 else epochs
        n = len(self.completed)
        text = (f"Counted: the complete trial, trained for the full {full}." if n == 1 else
                f"Counted: the {n} complete trials, each trained for the full {full}, so their "
                "losses compare.")
        if self.pruned:
            text += (" The pruned trial stopped early: it is counted apart and its loss is left "
                     "out." if len(self.pruned) == 1 else
                     f" The {len(self.pruned)} pruned trials stopped early: they are counted "
                     "apart and their losses are left out.")
        if left_out:
            text += f" Left out: {', '.join(left_out)}."
        return text

    @property
    def tuned(self) -> list[str]:
        """The hyperparameters the search varied (tuning.space.tuned)."""
        return tuned(self.space)

    @property
    def has_repeats(self) -> bool:
        return REPEAT in self.space and self.space[REPEAT].kind != "fixed"

    @property
    def fixed_configuration(self) -> bool:
        """Every hyperparameter fixed: the trials are repeats of one configuration."""
        return not self.tuned

    @property
    def is_grid(self) -> bool:
        return self.settings.sampler == "grid"

    def grid_coverage(self) -> tuple[int, int] | None:
        """(distinct configurations finished, configurations in the grid) for a grid study,
        else None."""
        if not self.is_grid:
            return None
        from tuning.strategy import grid_size

        done = {tuple(sorted(t.params.items())) for t in self.trials
                if t.state in (TrialState.COMPLETE, TrialState.PRUNED)}
        return len(done), grid_size(self.space)

    def best(self) -> FrozenTrial | None:
        return self.study.best_trial if self.completed else None

    def param(self, trial: FrozenTrial, name: str):
        """A trial's value for a parameter, sampled or fixed by the study."""
        if name in trial.params:
            return trial.params[name]
        p = self.space.get(name)
        return p.value if p is not None and p.kind == "fixed" else None

    def optimizer(self, trial: FrozenTrial) -> str:
        """The optimizer a trial trained with: the default one where the space has none."""
        return str(self.param(trial, "optimizer") or DEFAULT_OPTIMIZER)

    def configuration(self, trial: FrozenTrial) -> dict:
        """A trial's hyperparameters, fixed ones included, without the seed index `repeat`."""
        fixed = {n: p.value for n, p in self.space.items() if p.kind == "fixed"}
        return {k: v for k, v in {**fixed, **trial.params}.items() if k != REPEAT}

    def final_loss(self, trial: FrozenTrial) -> float | None:
        """Best validation loss seen: the value of a complete trial, the best report of a
        pruned one."""
        if trial.value is not None and trial.state == TrialState.COMPLETE:
            return trial.value
        values = [v for v in trial.intermediate_values.values() if math.isfinite(v)]
        return min(values) if values else None

    def gap(self, trial: FrozenTrial) -> float | None:
        """Generalization gap at the last epoch: validation loss minus the training loss
        measured the same way (eval mode, plain cross-entropy). None for trials recorded
        before that measurement existed: their training loss was the training objective
        (dropout, augmentation, smoothing, L1), which makes a gap meaningless."""
        train = trial.user_attrs.get("train_eval_loss")
        if train is None or not trial.intermediate_values:
            return None
        last = trial.intermediate_values[max(trial.intermediate_values)]
        return last - train if math.isfinite(last) else None


ALPHA = 0.05
"""Significance level of the report's tests (rank correlations, McNemar)."""
# Up to this many points a rank correlation's p-value counts every ordering (8! = 40,320):
# spearmanr's t approximation gives p = 0 for 4 trials in perfect order, where 1 ordering in
# 12 is as extreme.
EXACT_POINTS = 8


def p_text(p: float) -> str:
    """'p = 0.032': two significant digits, more where rounding would carry p across ALPHA
    (0.0498 must not read 'p = 0.05' beside 'beyond noise')."""
    if p < 1e-4:
        return "p < 0.0001"
    for digits in range(2, 7):
        shown = f"{p:.{digits}g}"
        if (float(shown) < ALPHA) == (p < ALPHA):
            return f"p = {shown}"
    return f"p < {ALPHA:g}"  # within 1e-6 below it


def rank_correlation(x: list[float], y: list[float]) -> tuple[float, float] | None:
    """Spearman's rank correlation and its two-sided p-value, tied values sharing their average
    rank (so the order the trials come in cannot change it); None with fewer than 4 points or
    no spread. Up to EXACT_POINTS points the p-value is exact: the share of all pairings of
    the ranks whose correlation is as strong."""
    import numpy as np
    from scipy.stats import rankdata, spearmanr

    if not _correlatable(x, y):
        return None
    result = spearmanr(x, y)
    rho = float(result.statistic)
    if len(x) > EXACT_POINTS:
        return rho, float(result.pvalue)
    rx, ry = rankdata(x), rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    orderings = np.array(list(itertools.permutations(ry)))
    rhos = orderings @ rx / (np.linalg.norm(rx) * np.linalg.norm(ry))
    return rho, float(np.mean(np.abs(rhos) >= abs(rho) - 1e-9))


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rank correlation alone (rank_correlation's, without the cost of its
    p-value)."""
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic) if _correlatable(x, y) else None


def _correlatable(x: list[float], y: list[float]) -> bool:
    """At least 4 points, and spread in both."""
    return len(x) >= 4 and len(set(x)) >= 2 and len(set(y)) >= 2


def objective_value(trial: FrozenTrial) -> float:
    """The value of a complete trial (every complete trial of a single-objective study has
    one; FrozenTrial.value is typed Optional for the others)."""
    return cast(float, trial.value)


def objective_values(trials: list[FrozenTrial]) -> list[float]:
    return [objective_value(t) for t in trials]


def mean_and_ci(values: list[float]) -> tuple[float, float | None, float | None]:
    """Mean, standard deviation and the half-width of the 95% interval of the mean (Student's
    t: with 3 repeats the normal 1.96 would claim an interval half as wide as it is). One value
    has no spread: sd and interval are None, not a zero-width interval."""
    from scipy.stats import t as student_t

    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None, None
    sd = statistics.stdev(values)
    return mean, sd, float(student_t.ppf(0.975, len(values) - 1)) * sd / math.sqrt(len(values))


MIN_FOR_INTERVAL = 3
"""Values an interval of the mean is given from: from 2, Student's t (12.7 sd / sqrt 2) spans
more than any loss in the study, and says nothing."""


def loss_interval(mean: float, half: float | None, n: int) -> str:
    """'0.2310 .. 0.4120': the 95% interval of a mean loss (mean_and_ci's `half`), cut at 0,
    below which no loss lies; '-' for a single value, and no interval from fewer than
    MIN_FOR_INTERVAL values."""
    if half is None:
        return "-"
    if n < MIN_FOR_INTERVAL:
        return f"too few for an interval: n={n}"
    return f"{fixed(max(0.0, mean - half))} .. {fixed(mean + half)}"


def reading(loss: tuple[float, float] | None, n: int,
            gap: tuple[float, float] | None, values: int = 2) -> str:
    """A regularizer's rank correlations (rho, p) with validation loss and with the gap, over
    `n` trials that tried `values` distinct values of it, in words: an effect only where its
    p-value is below ALPHA, since with few trials a strong-looking rho is often chance."""
    if loss is None:
        if n >= 4 and values < 2:
            return "not varied: every complete trial had the same value"
        return f"too few trials (n={n}; 4 needed)" if n < 4 else \
            "no correlation: every complete trial had the same validation loss"
    rho, p = loss
    evidence = f"n={n}, {p_text(p)}"
    if p >= ALPHA:
        effect = f"no clear effect on validation loss ({evidence})"
    elif abs(rho) < 0.2:
        effect = f"little effect on validation loss ({evidence})"
    else:
        effect = ("more helped" if rho < 0 else "more hurt") + \
            (" strongly" if abs(rho) >= 0.5 else "") + f" ({evidence})"
    if gap is not None and gap[0] <= -0.2 and gap[1] < ALPHA:
        effect += f"; narrows the gap ({p_text(gap[1])})"
    return effect


def hard_limit(name: str, edge: str) -> float | None:
    """The `edge` ('lower' or 'upper') of what `name` accepts (tuning.space.BOUNDS), where a
    range can reach it; None where there is none or the value itself is excluded."""
    bounds = BOUNDS.get(name)
    if bounds is None:
        return None
    if edge == "lower":
        return None if bounds.low_open else bounds.low
    return None if bounds.high_open or math.isinf(bounds.high) else bounds.high


MIN_FOR_EDGES = 4
"""Complete trials before a best value on the edge of its range says something of the range."""


def edge_warnings(view: StudyView) -> list[str]:
    """Google's tuning playbook: a best value on the edge of its range means the range may be
    too narrow. Said where the search chose the best: not of a configuration queued by hand
    (its values were chosen, not found), nor before MIN_FOR_EDGES trials completed."""
    if len(view.completed) < MIN_FOR_EDGES:
        return []
    best = view.study.best_trial
    if WARM_START_ATTR in best.user_attrs:
        return []
    found = []
    # Tuned parameters only: `repeat` is a seed index, and no seed is better for being the
    # first or the last.
    for name in view.tuned:
        p = view.space[name]
        if p.kind not in ("float", "int") or name not in best.params:
            continue
        value = best.params[name]
        p_low, p_high = p.bounds()
        low, high, v = (math.log(p_low), math.log(p_high), math.log(value)) if p.log else \
            (p_low, p_high, value)
        position = (v - low) / (high - low)
        if position <= 0.05 or position >= 0.95:
            edge = "lower" if position <= 0.05 else "upper"
            end = p_low if edge == "lower" else p_high
            advice = "widen the range to see whether better values lie beyond it"
            if hard_limit(name, edge) == end:
                advice = "the range cannot be widened there"
                if name in ARCHITECTURE_LIMITED:
                    advice += ": going further needs a new architecture"
                elif edge == "lower" and end == 0:
                    advice += ": this says the search preferred (almost) none of it"
            found.append(f"Warning: the best {name} ({fmt(value)}) sits at the {edge} edge of "
                         f"its range {p.low} .. {p.high}; {advice}.")
    return found
