"""Configurations tried first: a study file's `enqueue` list and `--warm-start-from STUDY`.

Enqueued configurations become waiting trials, which workers take before asking the sampler
for new ones; the sampler fills in the parameters a configuration does not give.
"""

from __future__ import annotations

import logging

import optuna
from optuna.trial import TrialState

from tuning.errors import UsageError
from tuning.space import Param

log = logging.getLogger("tuning")
WARM_START_ATTR = "warm_start"
"""A trial's user attribute saying where its configuration came from."""


def queued_values(trial: optuna.trial.FrozenTrial) -> dict:
    """The values a trial was enqueued with (Optuna keeps them in a system attribute); empty
    for a trial the sampler proposed."""
    return dict(trial.system_attrs.get("fixed_params", {}))


def _configuration(trial: optuna.trial.FrozenTrial) -> dict:
    """A trial's parameters, or a waiting trial's enqueued ones."""
    return trial.params or queued_values(trial)


def enqueue(study: optuna.Study, configs: list[tuple[dict, str]]) -> int:
    """Enqueue each (configuration, where it came from) the study has not run or queued
    already; how many were enqueued. Queued again on a resume, it would run twice."""
    seen = [_configuration(t) for t in study.get_trials(deepcopy=False)]
    added = 0
    for config, source in configs:
        if any(all(other.get(k) == v for k, v in config.items()) for other in seen):
            continue
        study.enqueue_trial(config, user_attrs={WARM_START_ATTR: source},
                            skip_if_exists=False)
        seen.append(config)
        added += 1
    return added


def top_configurations(source: optuna.Study, space: dict[str, Param],
                       top: int) -> list[tuple[dict, str]]:
    """The `top` complete trials of `source` with the lowest values, as configurations of
    `space`: the parameters it searches, where the value lies in it (others are left to the
    sampler, and said so)."""
    if source.directions != [optuna.study.StudyDirection.MINIMIZE]:
        raise UsageError(f"--warm-start-from {source.study_name!r} is not a single-objective "
                         "minimizing study")
    complete = sorted(source.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)),
                      key=lambda t: t.value if t.value is not None else float("inf"))
    if not complete:
        raise UsageError(f"--warm-start-from {source.study_name!r}: that study has no complete "
                         "trial to start from")
    searched = {name: p for name, p in space.items() if p.kind != "fixed"}
    configs = []
    for trial in complete[:top]:
        config = {name: value for name, value in trial.params.items()
                  if name in searched and searched[name].admits(value)}
        left = sorted(set(trial.params) & set(searched) - set(config))
        if left:
            log.info("warm start: trial %d of %r has %s outside this study's space; the "
                     "sampler chooses them", trial.number, source.study_name, ", ".join(left))
        if config:
            configs.append((config, f"{source.study_name} trial {trial.number}"))
    if not configs:
        raise UsageError(f"--warm-start-from {source.study_name!r}: none of its best trials' "
                         "parameters lies in this study's search space")
    return configs
