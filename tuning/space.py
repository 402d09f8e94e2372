"""Study files (`studies/*.toml`): the search space and the defaults a study runs with.

A study file has two tables:

    [study]                 # defaults for the run; CLI flags override them
    dataset = "mnist"
    epochs = 8
    sampler = "tpe"
    pruner = "median"
    seed = 0

    [space]                 # one entry per tuned parameter
    optimizer = { choices = ["adam", "sgd"] }        # categorical
    lr = { low = 1e-4, high = 1e-1, log = true }     # float range (log scale)
    blocks = { low = 1, high = 3 }                   # int range (the parameter is an int)
    activation = "relu"                              # fixed value

Parameters are the fields of `TrainConfig` and `ArchConfig`; one not named keeps its default,
which is the tutorial's configuration. Every problem in a file is collected and reported at
once, naming the key and the value given.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuning.data import DATASETS
from tuning.errors import UsageError
from tuning.model import ArchConfig
from tuning.train import TrainConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SAMPLERS = ("tpe", "random", "grid", "cmaes", "qmc", "gp")
PRUNERS = ("median", "percentile", "successive-halving", "hyperband", "wilcoxon", "none")

_FIELD_TYPES = {"int": int, "float": float, "bool": bool, "str": str}
PARAM_TYPES: dict[str, type] = {
    f.name: _FIELD_TYPES[f.type]  # type: ignore[index]
    for cls in (TrainConfig, ArchConfig)
    for f in dataclasses.fields(cls)
}
# `repeat` trains nothing differently: it picks the trial's seed (study seed + repeat), so a
# grid over optimizer x lr x repeat gives every optimizer the same seeds: a paired comparison.
REPEAT = "repeat"
PARAM_TYPES[REPEAT] = int
# Parameters that only mean something for some optimizers; elsewhere they are not sampled, so
# that importance and plots are not muddied by values that had no effect.
APPLIES_TO_OPTIMIZERS = {"momentum": {"sgd", "rmsprop"}, "nesterov": {"sgd"}}
# Sampled in this order: `optimizer` first, since other parameters depend on it.
PARAM_ORDER = tuple(sorted(PARAM_TYPES, key=lambda name: name != "optimizer"))


@dataclass(frozen=True)
class Param:
    """One parameter of the search space."""

    name: str
    """Field of TrainConfig or ArchConfig."""
    kind: str
    """'float', 'int', 'categorical' or 'fixed'."""
    low: float | None = None
    """Lower bound of a range."""
    high: float | None = None
    """Upper bound of a range (inclusive)."""
    log: bool = False
    """Sample a range on a log scale."""
    step: float | None = None
    """Step of a range, if any."""
    choices: tuple = ()
    """Choices of a categorical parameter."""
    value: Any = None
    """Value of a fixed parameter."""

    def suggest(self, trial) -> Any:
        if self.kind == "fixed":
            return self.value
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high),
                                     step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def grid(self, points: int = 3) -> list:
        """Values for the grid sampler: every choice, every int of a short range, else
        `points` values spread evenly (on a log scale where the range is)."""
        if self.kind == "fixed":
            return [self.value]
        if self.kind == "categorical":
            return list(self.choices)
        step = self.step or (1 if self.kind == "int" else None)
        if step is not None and (self.high - self.low) / step + 1 <= 8:
            n = int(round((self.high - self.low) / step)) + 1
            values = [self.low + i * step for i in range(n)]
        elif self.log:
            ratio = (self.high / self.low) ** (1 / (points - 1))
            values = [self.low * ratio**i for i in range(points)]
        else:
            values = [self.low + (self.high - self.low) * i / (points - 1) for i in range(points)]
        return [int(round(v)) for v in values] if self.kind == "int" else values

    def to_dict(self) -> dict:
        """Plain form, for the study's user attributes (JSON)."""
        if self.kind == "fixed":
            return {"name": self.name, "kind": self.kind, "value": self.value}
        if self.kind == "categorical":
            return {"name": self.name, "kind": self.kind, "choices": list(self.choices)}
        plain = {"name": self.name, "kind": self.kind, "low": self.low, "high": self.high,
                 "log": self.log}
        return plain if self.step is None else {**plain, "step": self.step}


@dataclass(frozen=True)
class StudySettings:
    """What a study runs with unless the command line says otherwise."""

    dataset: str = "mnist"
    """Data set name."""
    epochs: int = 8
    """Maximum epochs per trial (pruning may stop earlier)."""
    sampler: str = "tpe"
    """Sampler name, one of SAMPLERS."""
    pruner: str = "median"
    """Pruner name, one of PRUNERS."""
    seed: int = 0
    """Base seed: sampler seed, data split seed, and trial seeds (seed + trial number)."""

    def problems(self) -> list[str]:
        found = []
        if self.dataset not in DATASETS:
            found.append(f"unknown dataset {self.dataset!r}; choose one of {', '.join(DATASETS)}")
        if not isinstance(self.epochs, int) or isinstance(self.epochs, bool) or self.epochs < 1:
            found.append(f"epochs must be a positive integer, got {self.epochs!r}")
        if self.sampler not in SAMPLERS:
            found.append(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if self.pruner not in PRUNERS:
            found.append(f"unknown pruner {self.pruner!r}; choose one of {', '.join(PRUNERS)}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            found.append(f"seed must be an integer, got {self.seed!r}")
        return found


@dataclass(frozen=True)
class StudyFile:
    """A parsed, validated study file."""

    path: str
    """Where it was read from."""
    settings: StudySettings
    """Defaults for the run."""
    space: dict[str, Param]
    """Parameters by name; those absent keep the TrainConfig/ArchConfig default."""

    def space_dict(self) -> dict:
        """The space in the JSON form a study stores it in (tuples become lists)."""
        return json.loads(json.dumps({name: p.to_dict() for name, p in self.space.items()}))


def _type_ok(value: Any, expected: type) -> bool:
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


def _value_problem(name: str, value: Any) -> str | None:
    """Check one candidate value against its parameter's type and its config's own validation."""
    expected = PARAM_TYPES[name]
    if not _type_ok(value, expected):
        return f"space.{name}: expected {expected.__name__}, got {value!r}"
    if name == REPEAT:
        return None if value >= 0 else f"space.{name}: must be >= 0, got {value!r}"
    cls = TrainConfig if name in {f.name for f in dataclasses.fields(TrainConfig)} else ArchConfig
    try:
        cls(**{name: value})
    except ValueError as exc:
        return f"space.{name}: {value!r} is not allowed ({exc})"
    return None


def _parse_param(name: str, spec: Any) -> tuple[Param | None, list[str]]:
    if name not in PARAM_TYPES:
        known = ", ".join(sorted(PARAM_TYPES))
        return None, [f"space: unknown parameter {name!r}; known: {known}"]
    if not isinstance(spec, dict):
        problem = _value_problem(name, spec)
        return (None, [problem]) if problem else (Param(name, "fixed", value=spec), [])

    allowed = {"choices", "low", "high", "log", "step"}
    unknown = sorted(set(spec) - allowed)
    if unknown:
        return None, [f"space.{name}: unknown key(s) {unknown}; allowed: {sorted(allowed)}"]
    if "choices" in spec:
        choices = spec["choices"]
        if set(spec) != {"choices"}:
            others = sorted(set(spec) - {"choices"})
            return None, [f"space.{name}: 'choices' cannot be combined with {others}"]
        if not isinstance(choices, list) or not choices:
            return None, [f"space.{name}: choices must be a non-empty list, got {choices!r}"]
        problems = [p for c in choices if (p := _value_problem(name, c))]
        if len(set(map(repr, choices))) != len(choices):
            problems.append(f"space.{name}: choices repeat a value: {choices!r}")
        if problems:
            return None, problems
        return Param(name, "categorical", choices=tuple(choices)), []

    expected = PARAM_TYPES[name]
    if expected not in (int, float):
        return None, [f"space.{name}: a {expected.__name__} parameter takes a value or "
                      f"choices, not a range; got {spec!r}"]
    if "low" not in spec or "high" not in spec:
        return None, [f"space.{name}: a range needs both 'low' and 'high', got {spec!r}"]
    low, high, log, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
    problems = [p for v in (low, high) if (p := _value_problem(name, v))]
    if not isinstance(log, bool):
        problems.append(f"space.{name}: log must be true or false, got {log!r}")
    if step is not None and (not _type_ok(step, expected) or not step > 0):
        problems.append(f"space.{name}: step must be a positive {expected.__name__}, got {step!r}")
    if problems:
        return None, problems
    if not low < high:
        problems.append(f"space.{name}: empty or inverted range low={low!r} high={high!r} "
                        f"(need low < high; for a fixed value write {name} = {low!r})")
    if log and low <= 0:
        problems.append(f"space.{name}: a log range needs low > 0, got low={low!r}")
    if log and step is not None:
        problems.append(f"space.{name}: log and step cannot be combined, got {spec!r}")
    if problems:
        return None, problems
    kind = "int" if expected is int else "float"
    return Param(name, kind, low=low, high=high, log=log, step=step), []


def parse_study(raw: dict, path: str = "<study>") -> StudyFile:
    problems: list[str] = []
    unknown = sorted(set(raw) - {"study", "space"})
    if unknown:
        problems.append(f"unknown top-level key(s) {unknown}; allowed: ['space', 'study']")
    study = raw.get("study", {})
    space_raw = raw.get("space", {})
    settings = StudySettings()
    if not isinstance(study, dict):
        problems.append(f"[study] must be a table, got {study!r}")
    else:
        fields = {f.name for f in dataclasses.fields(StudySettings)}
        bad = sorted(set(study) - fields)
        if bad:
            problems.append(f"study: unknown key(s) {bad}; allowed: {sorted(fields)}")
        settings = StudySettings(**{k: v for k, v in study.items() if k in fields})
        problems += [f"study: {p}" for p in settings.problems()]
    space: dict[str, Param] = {}
    if not isinstance(space_raw, dict):
        problems.append(f"[space] must be a table, got {space_raw!r}")
    else:
        for name, spec in space_raw.items():
            param, found = _parse_param(name, spec)
            problems += found
            if param is not None:
                space[name] = param
    if problems:
        raise UsageError(f"study file {path}: " + "; ".join(problems))
    return StudyFile(path=path, settings=settings, space=space)


def load_study_file(path: Path) -> StudyFile:
    if not path.is_file():
        raise UsageError(f"study file {str(path)!r} not found")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"study file {path} is not valid TOML: {exc}") from None
    return parse_study(raw, str(path))


def space_from_dict(stored: dict) -> dict[str, Param]:
    """The inverse of StudyFile.space_dict: a study's stored space, as Params again."""
    space = {}
    for name, fields in stored.items():
        fields = dict(fields)
        if "choices" in fields:
            fields["choices"] = tuple(fields["choices"])
        space[name] = Param(**fields)
    return space


def applies(name: str, params: dict) -> bool:
    """Whether parameter `name` has any effect given the parameters sampled before it."""
    optimizers = APPLIES_TO_OPTIMIZERS.get(name)
    return optimizers is None or params.get("optimizer", TrainConfig.optimizer) in optimizers


def sample(trial, space: dict[str, Param]) -> dict:
    """The search space as one function from a trial to a plain dict of parameters."""
    params: dict = {}
    for name in PARAM_ORDER:
        if name in space and applies(name, params):
            params[name] = space[name].suggest(trial)
    return params


def build_configs(params: dict) -> tuple[ArchConfig, TrainConfig]:
    arch_fields = {f.name for f in dataclasses.fields(ArchConfig)}
    arch = ArchConfig(**{k: v for k, v in params.items() if k in arch_fields})
    train = TrainConfig(**{k: v for k, v in params.items()
                           if k not in arch_fields and k != REPEAT})
    return arch, train


def grid_space(space: dict[str, Param]) -> dict[str, list]:
    """The grid sampler's search space: every sampled (non-fixed) parameter."""
    return {name: p.grid() for name, p in space.items() if p.kind != "fixed"}


def grid_size(space: dict[str, Param]) -> int:
    return math.prod(len(values) for values in grid_space(space).values())
