"""Samplers and pruners by name: how the study chooses trials and which ones it stops early."""

from __future__ import annotations

import optuna

from tuning.space import Param, grid_space


class TargetGridSampler(optuna.samplers.GridSampler):
    """GridSampler that leaves stopping to the study's target of finished trials.

    GridSampler.after_trial calls study.stop() once the grid is covered, which Optuna allows
    only inside study.optimize; our worker loop (tuning.worker.run_trials) stops at the target.
    """

    def after_trial(self, study, trial, state, values) -> None:
        return None


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


def make_sampler(name: str, seed: int, space: dict[str, Param]) -> optuna.samplers.BaseSampler:
    if name == "grid":
        # One seed for all: it orders the grid, and workers take grid points by number from
        # the study, so they never share one.
        return TargetGridSampler(grid_space(space), seed=seed)
    return TrialSeededSampler(lambda trial_seed: _base_sampler(name, trial_seed, space), seed)


def _base_sampler(name: str, seed: int, space: dict[str, Param]) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        # multivariate TPE models parameter interactions (lr x optimizer, lr x batch size);
        # constant_liar keeps parallel workers from all sampling the same promising point.
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True,
                                          constant_liar=True, n_startup_trials=10)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        # CMA-ES handles only numbers; categoricals go to its independent (random) sampler.
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if name == "qmc":
        # Unscrambled, so that its seed only draws the categoricals: the point index is
        # counted in the study, and the sequence is the same whatever the trial's seed.
        return optuna.samplers.QMCSampler(scramble=False, seed=seed,
                                          warn_independent_sampling=False,
                                          warn_asynchronous_seeding=False)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    raise ValueError(f"unknown sampler {name!r}")


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    # Never prune on epoch 1 (steps are epochs, from 1), nor before 5 trials have finished:
    # the first epoch says more about the learning rate than about the final loss.
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2)
    if name == "percentile":
        return optuna.pruners.PercentilePruner(25.0, n_startup_trials=5, n_warmup_steps=2)
    if name == "successive-halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs,
                                              reduction_factor=3)
    if name == "wilcoxon":
        # Compares a trial's per-epoch losses with the best trial's, epoch by epoch.
        return optuna.pruners.WilcoxonPruner(p_threshold=0.1, n_startup_steps=2)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"unknown pruner {name!r}")
