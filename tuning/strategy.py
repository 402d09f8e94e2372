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


def make_sampler(name: str, seed: int, space: dict[str, Param]) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        # multivariate TPE models parameter interactions (lr x optimizer, lr x batch size);
        # constant_liar keeps parallel workers from all sampling the same promising point.
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True,
                                          constant_liar=True, n_startup_trials=10)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return TargetGridSampler(grid_space(space), seed=seed)
    if name == "cmaes":
        # CMA-ES handles only numbers; categoricals go to its independent (random) sampler.
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if name == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, warn_independent_sampling=False)
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
