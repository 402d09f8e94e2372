"""Samplers and pruners by name: how the study chooses trials and which ones it stops early.

SAMPLERS and PRUNERS are the registries: a name is defined once, in its entry below, and every
list of valid names (study files, --sampler and --pruner, error messages) is read from them.
The dependency runs one way: tuning.study_file checks study files against these registries, and
this module takes its Params only as arguments, never reading a study file.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import optuna
import torch

from tuning.errors import UsageError
from tuning.space import applies
from tuning.storage import RETRY_DUE
from tuning.train import TrainConfig
from tuning.warm_start import queued_values

if TYPE_CHECKING:
    from tuning.space import Param


class TargetGridSampler(optuna.samplers.GridSampler):
    """GridSampler over a study's search space that visits each configuration once and leaves
    stopping to the study's target of finished trials.

    Optuna's grid crosses every parameter with every other, but a trial never samples a
    parameter that does not apply to its optimizer (momentum for adam): each of its values
    would give the same configuration again. The grid keeps one point of each configuration
    (the first in its shuffled order, the same in every process). GridSampler.after_trial
    calls study.stop() once the grid is covered, which Optuna allows only inside
    study.optimize; our worker loop (tuning.runner.run_trials) stops at the target.
    """

    def __init__(self, space: dict[str, Param], seed: int):
        super().__init__(grid_space(space), seed=seed)
        # GridSampler's grid, its names and its count are Optuna 5's private attributes:
        # checked, so that a release that renames them fails here instead of leaving the
        # whole grid in place.
        for attribute in ("_all_grids", "_param_names", "_n_min_trials"):
            if not hasattr(self, attribute):
                raise RuntimeError(f"optuna {optuna.__version__}'s GridSampler has no "
                                   f"{attribute}: tuning's grid needs another Optuna")
        self._fixed = {name: p.value for name, p in space.items() if p.kind == "fixed"}
        seen: set[tuple] = set()
        points = []
        for point in self._all_grids:
            configuration = tuple(self._configuration(point).items())
            if configuration not in seen:
                seen.add(configuration)
                points.append(point)
        self._repeats_removed = len(points) < len(self._all_grids)
        self._all_grids = points
        self._n_min_trials = len(points)
        self._checked = False

    def _configuration(self, point: tuple) -> dict:
        """The parameters a trial given this grid point samples."""
        config = {**self._fixed, **dict(zip(self._param_names, point, strict=True))}
        return {name: value for name, value in config.items()
                if name in self._param_names and applies(name, config)}

    def before_trial(self, study, trial) -> None:
        if self._repeats_removed and not self._checked:
            try:
                self._check_grid_ids(study)
            except UsageError as refused:
                # Optuna created the trial before asking the sampler: it must not be left
                # running, to be taken for a dead worker's and run again.
                study._storage.set_trial_user_attr(trial._trial_id, "fail_reason", str(refused))
                study._storage.set_trial_state_values(trial._trial_id,
                                                      optuna.trial.TrialState.FAIL)
                raise
            self._checked = True
        super().before_trial(study, trial)

    def _check_grid_ids(self, study) -> None:
        """Refuse a study whose trials took their points from the whole grid (tuning before
        this grid kept one point per configuration): their point numbers mean other
        configurations here, and the grid would run some twice and others never."""
        for t in study._storage.get_all_trials(study._study_id, deepcopy=False):
            grid_id = t.system_attrs.get("grid_id")
            if grid_id is None or not t.params or \
                    not self._same_search_space(t.system_attrs.get("search_space", {})):
                continue
            if grid_id >= len(self._all_grids) or \
                    self._configuration(self._all_grids[grid_id]) != t.params:
                raise UsageError(
                    f"study {study.study_name!r} was run by an earlier tuning, whose grid ran "
                    "each configuration once for every value of the parameters its optimizer "
                    "does not use: finish it with that version, or run the grid as a new "
                    "study (--study NEW_NAME)")

    def after_trial(self, study, trial, state, values) -> None:
        return None

    def all_taken(self, study, trials: list[optuna.trial.FrozenTrial]) -> bool:
        """Whether every configuration of the grid has a trial that ran it or runs it. A
        failed one counts (given up after its retries, or failing by itself: out of memory),
        unless it is due a retry; a waiting one (a retry) does not, being still to take. Past
        this point Optuna's grid would run a configuration a second time, so a grid with
        failed trials ends short of its target."""
        if self._repeats_removed and not self._checked:
            self._check_grid_ids(study)  # an earlier tuning's grid ids mean other points
            self._checked = True
        state = optuna.trial.TrialState
        taken = {t.system_attrs.get("grid_id") for t in self._own(trials)
                 if (t.state == state.RUNNING or t.state.is_finished())
                 and not (t.state == state.FAIL and RETRY_DUE in t.system_attrs)}
        return taken >= set(range(len(self._all_grids)))

    def configurations_failed(self, trials: list[optuna.trial.FrozenTrial]) -> int:
        """How many configurations of the grid have no complete or pruned trial."""
        state = optuna.trial.TrialState
        done = {t.system_attrs.get("grid_id") for t in self._own(trials)
                if t.state in (state.COMPLETE, state.PRUNED)}
        return len(set(range(len(self._all_grids))) - done)

    def _own(self, trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
        """The trials that took a point of this grid."""
        return [t for t in trials if "grid_id" in t.system_attrs
                and self._same_search_space(t.system_attrs.get("search_space", {}))]


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """A sampler seeded afresh for every trial with the study seed plus the trial's number.

    Workers that share a seed would otherwise propose the same points: three workers started
    by hand ran three identical triples of trials. Trial numbers are unique across workers,
    so every trial draws its own numbers, and a study run by one process is reproducible.
    These samplers keep their state in the study (TPE and GP read the trials, CMA-ES its
    system attributes, QMC its point index), so a fresh instance per trial loses nothing.
    """

    def __init__(self, make, seed: int):
        self._make = make
        self._seed = seed
        self._by_trial: dict[int, optuna.samplers.BaseSampler] = {}

    def _for(self, trial) -> optuna.samplers.BaseSampler:
        if trial.number not in self._by_trial:
            self._by_trial[trial.number] = self._make(self._seed + trial.number)
        return self._by_trial[trial.number]

    def before_trial(self, study, trial) -> None:
        self._for(trial).before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self._for(trial).after_trial(study, trial, state, values)
        self._by_trial.pop(trial.number, None)

    def reseed_rng(self) -> None:
        for sampler in self._by_trial.values():
            sampler.reseed_rng()


class SobolStartSampler(optuna.samplers.BaseSampler):
    """`sampler`, except that while the study has fewer than `startup_trials` finished trials
    (when TPE would draw at random) a trial takes a point of one scrambled Sobol sequence.

    The sampled trials take the sequence's points in the order of their numbers, one
    coordinate per parameter of the space (in the order of their names, so that every process
    maps a point alike): Sobol points spread over every range and every choice evenly where
    random draws clump, and a trial's number and the queued trials numbered below it are
    settled when it is created, so workers never take the same point. A queued trial that
    gives every parameter that applies to it takes no point; one that leaves some to the
    sampler takes one, and failed trials still use theirs up. In a one-minute
    search on mnist-sample it reached 98% validation accuracy sooner than random start-up
    trials (docs/benchmarks.md).
    """

    def __init__(self, sampler: optuna.samplers.BaseSampler, dimensions: list[str], seed: int,
                 startup_trials: int):
        self._sampler = sampler
        self._dimension = {name: i for i, name in enumerate(dimensions)}
        self._seed = seed % 2**32
        self._startup_trials = startup_trials
        self._points: dict[int, list[float] | None] = {}

    def _point(self, study, trial) -> list[float] | None:
        """The trial's Sobol point while the study starts up, else None; decided at the
        trial's first call, so a trial finishing elsewhere meanwhile does not split it."""
        if trial.number not in self._points:
            # As Optuna's samplers read the trials: once per trial, the read shared with TPE.
            trials = study._get_trials(deepcopy=False, use_cache=True)
            finished = sum(t.state in (optuna.trial.TrialState.COMPLETE,
                                       optuna.trial.TrialState.PRUNED) for t in trials)
            point = None
            if finished < self._startup_trials and self._dimension:
                queued_before = sum(t.number < trial.number and self._fully_queued(t)
                                    for t in trials)
                sobol = torch.quasirandom.SobolEngine(len(self._dimension), scramble=True,
                                                      seed=self._seed)
                sobol.fast_forward(trial.number - queued_before)
                point = sobol.draw(1, dtype=torch.float64)[0].tolist()
            self._points[trial.number] = point
        return self._points[trial.number]

    def _fully_queued(self, trial: optuna.trial.FrozenTrial) -> bool:
        """Whether a trial was queued with a value for every parameter that applies to it,
        so that it never asks the sampler for one."""
        given = queued_values(trial)
        return bool(given) and all(name in given or not applies(name, given)
                                   for name in self._dimension)

    def before_trial(self, study, trial) -> None:
        self._sampler.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        if self._point(study, trial) is not None:
            return {}
        return self._sampler.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        if self._point(study, trial) is not None:
            return {}
        return self._sampler.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        point = self._point(study, trial)
        if point is None or param_name not in self._dimension:
            return self._sampler.sample_independent(study, trial, param_name,
                                                    param_distribution)
        return from_unit(point[self._dimension[param_name]], param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self._sampler.after_trial(study, trial, state, values)
        self._points.pop(trial.number, None)

    def reseed_rng(self) -> None:
        self._sampler.reseed_rng()


def from_unit(u: float, distribution: optuna.distributions.BaseDistribution):
    """The value at `u` (in [0, 1)) of a distribution's range or choices, spread evenly: on
    a log scale for a log range, each choice and each step of a range taking an equal part."""
    if isinstance(distribution, optuna.distributions.CategoricalDistribution):
        choices = distribution.choices
        return choices[min(int(u * len(choices)), len(choices) - 1)]
    assert isinstance(distribution, (optuna.distributions.FloatDistribution,
                                     optuna.distributions.IntDistribution))
    low, high = distribution.low, distribution.high
    integer = isinstance(distribution, optuna.distributions.IntDistribution)
    if distribution.log:
        # An integer k takes the log-width of [k - 0.5, k + 0.5], the ends included.
        a, b = (low - 0.5, high + 0.5) if integer else (low, high)
        value = math.exp(math.log(a) + u * (math.log(b) - math.log(a)))
        return min(max(round(value), low), high) if integer else min(max(value, low), high)
    if distribution.step is not None:
        steps = round((high - low) / distribution.step)
        value = low + min(int(u * (steps + 1)), steps) * distribution.step
        return int(value) if integer else min(value, high)
    return low + u * (high - low)


def grid_space(space: dict[str, Param]) -> dict[str, list]:
    """The grid sampler's search space: every sampled (non-fixed) parameter."""
    return {name: p.grid() for name, p in space.items() if p.kind != "fixed"}


def grid_size(space: dict[str, Param]) -> int:
    """How many configurations the grid sampler visits: for each optimizer, the product of
    the grids of the parameters that apply to it (TargetGridSampler)."""
    grid = grid_space(space)
    fixed = space.get("optimizer")
    optimizers = grid.get("optimizer") or [fixed.value if fixed is not None else
                                           TrainConfig.optimizer]
    return sum(math.prod(len(values) for name, values in grid.items()
                         if name != "optimizer" and applies(name, {"optimizer": optimizer}))
               for optimizer in optimizers)


def _seeded_per_trial(
    build: Callable[[int, dict[str, Param]], optuna.samplers.BaseSampler],
) -> Callable[[int, dict[str, Param]], optuna.samplers.BaseSampler]:
    """`build` as a TrialSeededSampler: called afresh for every trial with its own seed."""
    return lambda seed, space: TrialSeededSampler(lambda trial_seed: build(trial_seed, space),
                                                  seed)


TPE_STARTUP_TRIALS = 10
"""Trials before TPE models the study (taken from the Sobol sequence)."""

# (study seed, search space) -> the study's sampler.
SAMPLERS: dict[str, Callable[[int, dict[str, Param]], optuna.samplers.BaseSampler]] = {
    # multivariate TPE models parameter interactions (lr x optimizer, lr x batch size);
    # constant_liar keeps parallel workers from all sampling the same promising point. Its 10
    # start-up trials are Sobol points (one sequence for the study, so seeded once).
    "tpe": lambda seed, space: TrialSeededSampler(lambda trial_seed: SobolStartSampler(
        optuna.samplers.TPESampler(seed=trial_seed, multivariate=True, group=True,
                                   constant_liar=True, n_startup_trials=TPE_STARTUP_TRIALS),
        sorted(name for name, p in space.items() if p.kind != "fixed"), seed,
        startup_trials=TPE_STARTUP_TRIALS), seed),
    "random": _seeded_per_trial(lambda seed, space: optuna.samplers.RandomSampler(seed=seed)),
    # One seed for all: it orders the grid, and workers take grid points by number from the
    # study, so they never share one.
    "grid": lambda seed, space: TargetGridSampler(space, seed),
    # CMA-ES handles only numbers; categoricals go to its independent (random) sampler.
    "cmaes": _seeded_per_trial(lambda seed, space: optuna.samplers.CmaEsSampler(
        seed=seed, warn_independent_sampling=False)),
    # Unscrambled, so that its seed only draws the categoricals: the point index is counted in
    # the study, and the sequence is the same whatever the trial's seed.
    "qmc": _seeded_per_trial(lambda seed, space: optuna.samplers.QMCSampler(
        scramble=False, seed=seed, warn_independent_sampling=False,
        warn_asynchronous_seeding=False)),
    "gp": _seeded_per_trial(lambda seed, space: optuna.samplers.GPSampler(seed=seed)),
}

# (maximum epochs per trial) -> the study's pruner.
PRUNERS: dict[str, Callable[[int], optuna.pruners.BasePruner]] = {
    # Never prune on epoch 1 (steps are epochs, from 1), nor before 5 trials have finished:
    # the first epoch says more about the learning rate than about the final loss.
    "median": lambda epochs: optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2),
    "percentile": lambda epochs: optuna.pruners.PercentilePruner(
        25.0, n_startup_trials=5, n_warmup_steps=2),
    # Asynchronous successive halving (ASHA), the default: rungs at epochs 1, 3, 9...; a trial
    # goes past a rung only while its loss there is in the best third of the trials that
    # reached it, so most of a budget goes to the configurations that lead, from the first
    # trials on (the first trial at a rung always goes on).
    "successive-halving": lambda epochs: optuna.pruners.SuccessiveHalvingPruner(
        min_resource=1, reduction_factor=3),
    "hyperband": lambda epochs: optuna.pruners.HyperbandPruner(
        min_resource=1, max_resource=epochs, reduction_factor=3),
    # Compares a trial's per-epoch losses with the best trial's, epoch by epoch.
    "wilcoxon": lambda epochs: optuna.pruners.WilcoxonPruner(p_threshold=0.1, n_startup_steps=2),
    "none": lambda epochs: optuna.pruners.NopPruner(),
}


def make_sampler(name: str, seed: int, space: dict[str, Param]) -> optuna.samplers.BaseSampler:
    return _lookup(SAMPLERS, "sampler", name)(seed, space)


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    return _lookup(PRUNERS, "pruner", name)(epochs)


def _lookup(registry: dict, kind: str, name: str):
    if name not in registry:
        raise ValueError(f"unknown {kind} {name!r}; choose one of {', '.join(registry)}")
    return registry[name]
