"""The search space: its parameters, the numbers each may take, and how a trial samples them.

A parameter is a field of `TrainConfig` or `ArchConfig` (or `repeat`, or a model builder's
own, prefixed `model.`): fixed, categorical, or an int or float range. Study files
(tuning.study_file) name them in their [space] table; `sample` turns the space into one
trial's configuration and `build_configs` into the configs that train it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from tuning.errors import shorten
from tuning.model import ACTIVATIONS, HEADS, MAX_BLOCKS, MAX_CONVS, ArchConfig
from tuning.networks import MODEL_PREFIX
from tuning.train import LR_SCHEDULES, OPTIMIZERS, TrainConfig

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
# The parameters that name an implementation: what one is called, and the registry whose keys
# are the valid names (so that an error lists them from the registry itself).
NAMED: dict[str, tuple[str, Collection[str]]] = {
    "optimizer": ("an optimizer", OPTIMIZERS),
    "lr_schedule": ("a learning-rate schedule", LR_SCHEDULES),
    "activation": ("an activation", ACTIVATIONS),
    "head": ("a head", HEADS),
}
# A parameter's type in the words of a study file (TOML), for error messages.
TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
# Messages list at most this many of a parameter's choices: a grid can have thousands.
SHOWN_CHOICES = 10


def plain(value: Any) -> str:
    """A value as a study file writes it, for messages: true/false, not Python's True/False;
    cut, as every message echoes a value."""
    return ("true" if value else "false") if isinstance(value, bool) else shorten(repr(value))


def plain_list(values: Collection) -> str:
    """The first SHOWN_CHOICES of `values`, then how many more."""
    shown = ", ".join(plain(v) for v in list(values)[:SHOWN_CHOICES])
    more = len(values) - SHOWN_CHOICES
    return f"{shown} and {more} more" if more > 0 else shown


def named_problem(name: str, value: Any) -> str | None:
    """What TrainConfig or ArchConfig would refuse in a value that has its parameter's type and
    BOUNDS, in words (None: nothing): a name not in its registry, an even kernel size."""
    if name in NAMED:
        what, registry = NAMED[name]
        if value not in registry:
            return f"is not {what}; choose from {plain_list(registry)}"
    if name == "kernel" and value % 2 == 0:
        return "is even, and a kernel size must be odd (so that padding keeps the image size)"
    return None


def is_finite(value: float) -> bool:
    """Whether a number is finite. TOML integers are unbounded, and one past a float's range
    is not."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


@dataclass(frozen=True)
class Bounds:
    """The numbers a parameter or setting accepts; int bounds for an int, float for a float."""

    low: float
    """Smallest value accepted (excluded if low_open)."""
    high: float = math.inf
    """Largest value accepted (excluded if high_open); inf: any finite value."""
    low_open: bool = False
    """Exclude `low` itself (a learning rate must be > 0)."""
    high_open: bool = False
    """Exclude `high` itself (dropout must stay below 1)."""

    def __contains__(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return is_finite(value) and above and below

    def __str__(self) -> str:
        if isinstance(self.low, int) and isinstance(self.high, int):
            return f"an integer from {self.low} to {self.high}"
        if self.high == math.inf:
            return f"a finite number {'>' if self.low_open else '>='} {self.low:g}"
        return (f"a number in {'(' if self.low_open else '['}{self.low:g}, "
                f"{self.high:g}{')' if self.high_open else ']'}")


# What every number may be, checked for a fixed value, both ends of a range and each choice.
# Sizes are bounded so that no value on its own exhausts memory or time (`channels = 1e9` would
# reach the allocator, `--epochs 1000000` would run for ever), yet each bound is several times the
# largest a study of 28x28 to 256x256 images would use. Rates only need to be finite and in
# their domain. The dataclasses still check what is not a bound (an odd kernel, known names).
BOUNDS: dict[str, Bounds] = {
    # ArchConfig
    "blocks": Bounds(1, MAX_BLOCKS),  # the model's own limits
    "convs": Bounds(1, MAX_CONVS),
    "channels": Bounds(1, 1024),  # of the first block; the 4th and later have 8x
    "kernel": Bounds(1, 15),
    "hidden": Bounds(0, 8192),  # 0: no hidden layer
    "dropout": Bounds(0.0, 1.0, high_open=True),
    # TrainConfig
    "lr": Bounds(0.0, low_open=True),
    "momentum": Bounds(0.0, 1.0, high_open=True),
    "weight_decay": Bounds(0.0),
    "l1": Bounds(0.0),
    "label_smoothing": Bounds(0.0, 1.0, high_open=True),
    "batch_size": Bounds(1, 65536),  # past the whole of MNIST's 54,000 training images
    "crop_padding": Bounds(0, 32),
    REPEAT: Bounds(0, 10_000),
    # StudySettings
    "epochs": Bounds(1, 10_000),
    # numpy seeds (the data split, the samplers) must be below 2**32, and trial and sampler
    # seeds are this seed plus the trial number or the repeat: leave 2**31 of headroom.
    "seed": Bounds(0, 2**31 - 1),
}
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
        low, high = self.bounds()
        if self.kind == "int":
            return trial.suggest_int(self.name, int(low), int(high),
                                     step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, low, high, step=self.step, log=self.log)

    def admits(self, value: Any) -> bool:
        """Whether the parameter could take `value` (an enqueued configuration's)."""
        return self.refusal(value) is None

    def refusal(self, value: Any) -> str | None:
        """Why the parameter could not take `value`, in words that follow it ("is outside
        ..."), or None if it could."""
        if self.kind == "fixed":
            return None if value == self.value else f"is not its fixed value {plain(self.value)}"
        if self.kind == "categorical":
            if any(type(value) is type(c) and value == c for c in self.choices):
                return None
            return f"is not among its space's choices {plain_list(self.choices)}"
        low, high = self.bounds()
        span = f"{plain(low)}..{plain(high)}"
        expected = int if self.kind == "int" else float
        if not has_type(value, expected):
            return f"is not {TYPE_WORDS[expected]} (its space's range is {span})"
        if not low <= value <= high:
            return f"is outside its space's range {span}"
        if self.step is not None:
            steps = (value - low) / self.step
            if abs(steps - round(steps)) >= 1e-9:
                return (f"is not one of its space's values {span} in steps of "
                        f"{plain(self.step)}")
        return None

    def bounds(self) -> tuple[float, float]:
        """(low, high) of a range: a 'float' or 'int' parameter."""
        # Every 'float' and 'int' parameter has both bounds (tuning.study_file requires them).
        assert self.low is not None and self.high is not None, self
        return self.low, self.high

    def grid(self, points: int = 3) -> list:
        """Values for the grid sampler: every choice, every int of a short range, else
        `points` values spread evenly (on a log scale where the range is)."""
        if self.kind == "fixed":
            return [self.value]
        if self.kind == "categorical":
            return list(self.choices)
        low, high = self.bounds()
        step = self.step or (1 if self.kind == "int" else None)
        if step is not None and (high - low) / step + 1 <= 8:
            n = int(round((high - low) / step)) + 1
            values = [low + i * step for i in range(n)]
        elif self.log:
            ratio = (high / low) ** (1 / (points - 1))
            values = [low * ratio**i for i in range(points)]
        else:
            values = [low + (high - low) * i / (points - 1) for i in range(points)]
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


def has_type(value: Any, expected: type) -> bool:
    """Whether `value` is of a parameter's type, as TOML gives it: an int is a float too, a
    bool is neither."""
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


def tuned(space: dict[str, Param]) -> list[str]:
    """The parameters a search varies: not fixed, and not `repeat` (a seed index). None: the
    trials are repeats of one configuration."""
    return [name for name, p in space.items() if p.kind != "fixed" and name != REPEAT]


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
    for name in sorted(n for n in space if n.startswith(MODEL_PREFIX)):
        params[name] = space[name].suggest(trial)
    return params


def representative(space: dict[str, Param]) -> dict:
    """One configuration of the space without a trial (fixed values, first choices, lower
    ends of ranges): what a model is checked with before any trial runs."""
    values = {}
    for name, param in space.items():
        if param.kind == "fixed":
            values[name] = param.value
        elif param.kind == "categorical":
            values[name] = param.choices[0]
        else:
            values[name] = param.low
    return values


def build_configs(params: dict) -> tuple[ArchConfig, TrainConfig]:
    arch_fields = {f.name for f in dataclasses.fields(ArchConfig)}
    arch = ArchConfig(**{k: v for k, v in params.items() if k in arch_fields})
    train = TrainConfig(**{k: v for k, v in params.items() if k not in arch_fields
                           and k != REPEAT and not k.startswith(MODEL_PREFIX)})
    return arch, train
