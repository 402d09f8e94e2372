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
from tuning.objective import over_limits
from tuning.report_render import fixed, fmt
from tuning.space import BOUNDS, REPEAT, Param, tuned
from tuning.study_file import StudySettings
from tuning.train import TrainConfig
from tuning.warm_start import WARM_START_ATTR

DEFAULT_OPTIMIZER = TrainConfig().optimizer
DEFAULT_LR = TrainConfig().lr

# Parameters whose hard limit is the model's own: past it lies another architecture.
ARCHITECTURE_LIMITED = ("blocks", "convs")


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

    @property
    def untrained(self) -> list[FrozenTrial]:
        """Pruned trials rejected before training (over the study's size or latency limits):
        they ran no epoch, so they neither stopped early nor have a loss."""
        return [t for t in self.pruned if over_limits(t) is not None]

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
        text = ("Counted: no trial completed, so there are no losses to compare." if n == 0 else
                f"Counted: the complete trial, trained for the full {full}." if n == 1 else
                f"Counted: the {n} complete trials, each trained for the full {full}, so their "
                "losses compare.")
        untrained = len(self.untrained)
        stopped = len(self.pruned) - untrained
        if stopped:
            text += (" The pruned trial stopped early: it is counted apart and its loss is left "
                     "out." if stopped == 1 else
                     f" The {stopped} pruned trials stopped early: they are counted "
                     "apart and their losses are left out.")
        if untrained:
            text += (" The trial pruned before training (over the study's limits) has no loss."
                     if untrained == 1 else
                     f" The {untrained} trials pruned before training (over the study's limits) "
                     "have no loss.")
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

    def lr(self, trial: FrozenTrial) -> float:
        """The learning rate a trial trained with: the default one where the space has none."""
        value = self.param(trial, "lr")
        return DEFAULT_LR if value is None else float(value)

    def configuration(self, trial: FrozenTrial) -> dict:
        """A trial's hyperparameters, fixed ones included, without the seed index `repeat`,
        in the order of the search space (the study file's)."""
        fixed = {n: p.value for n, p in self.space.items() if p.kind == "fixed"}
        merged = {**fixed, **trial.params}
        ordered = [n for n in self.space if n in merged] + [n for n in merged
                                                             if n not in self.space]
        return {n: merged[n] for n in ordered if n != REPEAT}

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
# 12 is as extreme. Beyond, RANDOM_ORDERINGS orderings drawn at random (seeded: the same report
# twice says the same p), not the t approximation, which heavy ties (3 label-smoothing values
# over 10 trials) make too small.
EXACT_POINTS = 8
RANDOM_ORDERINGS = 10_000


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
    """Spearman's rank correlation and its two-sided permutation p-value, tied values sharing
    their average rank (so the order the trials come in cannot change it); None with fewer
    than 4 points or no spread. The p-value is the share of pairings of the ranks whose
    correlation is as strong: all of them up to EXACT_POINTS points, else RANDOM_ORDERINGS
    drawn at random (counting the observed one, so it is never 0)."""
    import numpy as np
    from scipy.stats import rankdata, spearmanr

    if not _correlatable(x, y):
        return None
    rho = float(spearmanr(x, y).statistic)
    rx, ry = rankdata(x), rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    scale = np.linalg.norm(rx) * np.linalg.norm(ry)
    if len(x) <= EXACT_POINTS:
        rhos = np.array(list(itertools.permutations(ry))) @ rx / scale
        return rho, float(np.mean(np.abs(rhos) >= abs(rho) - 1e-9))
    rng = np.random.default_rng(0)
    as_strong = 0
    # In blocks of 1,000 orderings: all at once, a study of 1,000 trials would take 80 MB.
    for _ in range(RANDOM_ORDERINGS // 1000):
        orderings = rng.permuted(np.tile(ry, (1000, 1)), axis=1)
        as_strong += int(np.sum(np.abs(orderings @ rx / scale) >= abs(rho) - 1e-9))
    return rho, (as_strong + 1) / (RANDOM_ORDERINGS + 1)


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


def mean_interval(mean: float, half: float | None, n: int) -> tuple[float, float] | None:
    """The 95% interval of a mean loss (mean_and_ci's `half`) as the report shows it, in
    tables and plots alike: cut at 0, below which no loss lies; None for a single value or
    fewer than MIN_FOR_INTERVAL values."""
    if half is None or n < MIN_FOR_INTERVAL:
        return None
    return max(0.0, mean - half), mean + half


def loss_interval(mean: float, half: float | None, n: int) -> str:
    """'0.2310 .. 0.4120': mean_interval in words; '-' for a single value."""
    if half is None:
        return "-"
    interval = mean_interval(mean, half, n)
    if interval is None:
        return f"too few for an interval: n={n}"
    return f"{fixed(interval[0])} .. {fixed(interval[1])}"


MIN_FOR_MEDIAN_INTERVAL = 6
"""Values a median's 95% interval needs: of 5, even min .. max covers the median only 94% of
the time (1 - 2 / 2^5)."""


def median_interval(values: list[float]) -> tuple[float, float] | None:
    """A distribution-free 95% interval of the median: from the k-th smallest value to the
    k-th largest, k the largest for which the median lies outside with probability at most
    2.5% at each end, whatever the values' distribution (the number of values below the
    median is binomial, p = 1/2). Its ends are losses of trials, so a few diverged ones cannot
    stretch it below 0 or past the data as they stretch a mean's t interval. None below
    MIN_FOR_MEDIAN_INTERVAL values."""
    n = len(values)
    k = 0
    # Probability that at most k values fall below the median: then it lies below the
    # (k + 1)-th smallest.
    while sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n <= 0.025:
        k += 1
    if k == 0:
        return None
    ordered = sorted(values)
    return ordered[k - 1], ordered[n - k]


def median_text(values: list[float]) -> str:
    """'0.5783 .. 1.7081': median_interval in words, with why there is none."""
    if len(values) < 2:
        return "-"
    interval = median_interval(values)
    if interval is None:
        return f"too few for an interval: n={len(values)}"
    return f"{fixed(interval[0])} .. {fixed(interval[1])}"


def differ_p(these: list[float], those: list[float]) -> float:
    """The two-sided p-value of `these` and `those` differing by chance alone (the Mann-Whitney
    U test: ranks only, so a diverged trial's loss of 20 counts as one worse rank, not as 20).
    Two-sided: the leader it is asked about was chosen by the same losses."""
    from scipy.stats import mannwhitneyu

    return float(mannwhitneyu(these, those, alternative="two-sided").pvalue)


def holm(p_values: list[float]) -> list[float]:
    """Holm's adjustment of p-values tested together: each as it would have to be to pass at
    ALPHA once the others are accounted for (a study that tests 5 regularizers at 0.05 each
    finds an "effect" by chance 1 time in 4). In the order given; never below the p-value."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted = [0.0] * len(p_values)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


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
