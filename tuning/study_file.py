"""Study files (`studies/*.toml`): the search space and the defaults a study runs with, read and
checked.

A study file has two main tables:

    [study]                 # defaults for the run; CLI flags override them
    dataset = "mnist"
    epochs = 8
    sampler = "tpe"
    pruner = "successive-halving"
    seed = 0
    cv_folds = 1            # K > 1: score each trial on K cross-validation folds

    [space]                 # one entry per tuned parameter
    optimizer = { choices = ["adam", "sgd"] }        # categorical
    lr = { low = 1e-4, high = 1e-1, log = true }     # float range (log scale)
    blocks = { low = 1, high = 3 }                   # int range (the parameter is an int)
    activation = "relu"                              # fixed value

and may have two more: [data] (how the images are read and split) and [[enqueue]]
(configurations to try first). Parameters are the fields of `TrainConfig` and `ArchConfig` (the
search space: tuning.space); one not named keeps its default, which is the tutorial's
configuration. Every number must lie within its entry of `tuning.space.BOUNDS`. Every problem
in a file is collected and reported at once, naming the key and the value given, in one message
of bounded length however large the file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuning.errors import MESSAGE_CHARS, UsageError, shorten
from tuning.limits import Limits
from tuning.model import ArchConfig
from tuning.networks import ARCH_FIELDS, MODEL_PREFIX, ModelSpec
from tuning.sources import DataConfig, dataset_problem
from tuning.space import (
    BOUNDS,
    PARAM_TYPES,
    REPEAT,
    TYPE_WORDS,
    Bounds,
    Param,
    has_type,
    is_finite,
    named_problem,
)
from tuning.strategy import PRUNERS, SAMPLERS
from tuning.train import TrainConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


# Cross-validation folds (StudySettings.cv_folds), apart from BOUNDS, whose other entries but
# epochs and seed are search-space parameters: each fold trains the trial's network again, so
# 10 folds already cost ten times a trial.
CV_FOLDS = Bounds(1, 10)
# The limits a study may set on its networks (tuning.limits).
MAX_PARAMS = Bounds(1, 10**12)
MAX_LATENCY_MS = Bounds(0.0, 3_600_000.0, low_open=True)

# Error messages echo what they were given, and a 6.5 MB study file of unknown keys must not
# make a 96 MB error line: values are cut by tuning.errors.shorten, lists of names to
# SHOWN_NAMES, and a whole message to MESSAGE_CHARS.
SHOWN_NAMES = 5
SHOWN_ITEMS = 20
# A TOML key that needs no quotes.
BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class StudySettings:
    """What a study runs with unless the command line says otherwise."""

    dataset: str = "mnist"
    """A data set of tuning.sources.SOURCES, or the path of an image folder or .npz file."""
    epochs: int = 8
    """Maximum epochs per trial (pruning may stop earlier)."""
    sampler: str = "tpe"
    """Sampler name, a key of tuning.strategy.SAMPLERS."""
    pruner: str = "successive-halving"
    """Pruner name, a key of tuning.strategy.PRUNERS."""
    seed: int = 0
    """Base seed: sampler seed, data split seed, and trial seeds (seed + trial number)."""
    cv_folds: int = 1
    """Cross-validation folds (tuning.folds): 1 validates on the study's validation split; K > 1
    trains every trial on K folds of the training and validation images and scores it on their
    mean. Studies from before it load with 1."""
    model: str = "cnn"
    """The network (tuning.networks): `cnn`, the built-in family; a torchvision classification
    architecture by name; or "package.module:function", a builder of your own whose parameters
    are the [space.model] table."""
    weights: str | None = None
    """Local weights a torchvision architecture starts every trial from (fine-tuning)."""
    max_params: int | None = None
    """Most parameters a network may have; larger ones are pruned before training."""
    max_latency_ms: float | None = None
    """Most milliseconds a network may take per image on the trial's device."""

    def network(self) -> ModelSpec:
        """The network the study trains."""
        return ModelSpec(self.model, self.weights)

    def limits(self) -> Limits:
        """The size and speed limits on its networks."""
        return Limits(self.max_params, self.max_latency_ms)

    def problems(self) -> list[str]:
        from tuning.networks import model_problem

        found = []
        problem = dataset_problem(self.dataset)
        if problem is not None:
            found.append(problem)
        problem = model_problem(self.model)
        if problem is not None:
            found.append(problem)
        if self.weights is not None:
            if not isinstance(self.weights, str) or not self.weights:
                found.append(f"weights must be the path of a weights file, got "
                             f"{_show(self.weights)}")
            elif isinstance(self.model, str) and (self.model == "cnn" or ":" in self.model):
                found.append("weights are for a torchvision architecture (model = \"resnet18\", "
                             f"...); model {_show(self.model)} starts from random weights")
        if self.max_params is not None and (not has_type(self.max_params, int)
                                            or self.max_params not in MAX_PARAMS):
            found.append(f"max_params must be {MAX_PARAMS}, got {_show(self.max_params)}")
        if self.max_latency_ms is not None and (not has_type(self.max_latency_ms, float)
                                                or self.max_latency_ms not in MAX_LATENCY_MS):
            found.append(f"max_latency_ms must be {MAX_LATENCY_MS}, "
                         f"got {_show(self.max_latency_ms)}")
        for name, bounds in (("epochs", BOUNDS["epochs"]), ("seed", BOUNDS["seed"]),
                             ("cv_folds", CV_FOLDS)):
            value = getattr(self, name)
            if not has_type(value, int) or value not in bounds:
                found.append(f"{name} must be {bounds}, got {_show(value)}")
        if self.sampler not in SAMPLERS:
            found.append(f"unknown sampler {_show(self.sampler)}; "
                         f"choose one of {', '.join(SAMPLERS)}")
        if self.pruner not in PRUNERS:
            found.append(f"unknown pruner {_show(self.pruner)}; "
                         f"choose one of {', '.join(PRUNERS)}")
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
    data: DataConfig = DataConfig()
    """How the images are read and split (the [data] table)."""
    enqueue: tuple[dict, ...] = ()
    """Configurations to try first (the `enqueue` list), each a dict of some of the space's
    parameters; the sampler chooses the rest."""
    space_given: bool = True
    """Whether the file has a [space] table: without one every parameter keeps its default."""

    def space_dict(self) -> dict:
        """The space in the JSON form a study stores it in (tuples become lists)."""
        return json.loads(json.dumps({name: p.to_dict() for name, p in self.space.items()}))


def _repeat_a_value(choices: list) -> bool:
    """Whether two choices are equal: 1, 1.0 and true too, which Optuna and the grid take for
    one value (unhashable choices, already reported, compare by repr)."""
    try:
        return len(set(choices)) != len(choices)
    except TypeError:
        return len(set(map(repr, choices))) != len(choices)


def _show(value: Any, depth: int = 0) -> str:
    """repr(value), but a table as the study file writes it ({ low = 1 }), cut: how every
    message echoes a value. Only the first SHOWN_ITEMS of a list or table, and SHOWN_ITEMS
    levels of nesting, are written out: the cut would drop the rest anyway."""
    if isinstance(value, (list, tuple, dict)) and depth >= SHOWN_ITEMS:
        return "..."
    if isinstance(value, (list, tuple)):
        shown = [_show(v, depth + 1) for v in value[:SHOWN_ITEMS]]
        return shorten("[" + _items(shown, len(value)) + "]")
    if isinstance(value, dict):
        shown = [f"{k if BARE_KEY.fullmatch(str(k)) else _show(k)} = {_show(v, depth + 1)}"
                 for k, v in list(value.items())[:SHOWN_ITEMS]]
        return shorten("{ " + _items(shown, len(value)) + " }" if value else "{}")
    return shorten(repr(value))


def _items(shown: list[str], count: int) -> str:
    """The items of a list or table, and "..." for those not shown."""
    return ", ".join(shown + ["..."] * (count > len(shown)))


def _show_names(names: list[str]) -> str:
    """The first SHOWN_NAMES of `names`, then how many more."""
    shown = "[" + ", ".join(_show(n) for n in names[:SHOWN_NAMES]) + "]"
    more = len(names) - SHOWN_NAMES
    return f"{shown} and {more} more" if more > 0 else shown


def _message(subject: str, problems: list[str]) -> str:
    """One message of at most MESSAGE_CHARS: as many problems as fit, and how many there are
    (said first, so that the count survives a further cut)."""
    if len(problems) == 1:
        return shorten(f"{subject}: {problems[0]}", MESSAGE_CHARS)
    budget = MESSAGE_CHARS - len(subject) - 40
    shown: list[str] = []
    for problem in problems:
        if sum(len(p) + 2 for p in shown) + len(problem) > budget:
            break
        shown.append(problem)
    if len(shown) == len(problems):
        return f"{subject}: {len(problems)} problems: " + "; ".join(shown)
    if not shown:  # not expected: each problem is short already
        shown = [shorten(problems[0], budget)]
    return (f"{subject}: {len(problems)} problems, the first {len(shown)} shown: "
            + "; ".join(shown))


def _value_problem(name: str, value: Any, role: str = "") -> str | None:
    """Check one candidate value against its parameter's type, its BOUNDS and its config's own
    validation. `role` says which value of the entry it is ("low=", "high=")."""
    expected = PARAM_TYPES[name]
    given = f"{role}{_show(value)}"
    if not has_type(value, expected):
        return f"space.{name}: expected {BOUNDS.get(name, TYPE_WORDS[expected])}, got {given}"
    if name in BOUNDS and value not in BOUNDS[name]:
        return f"space.{name}: got {given}; accepted: {BOUNDS[name]}"
    if name == REPEAT:
        return None
    problem = named_problem(name, value)
    if problem:
        return f"space.{name}: {given} {problem}"
    # What the config refuses beyond that (nothing, while named_problem keeps up with it).
    cls = TrainConfig if name in {f.name for f in dataclasses.fields(TrainConfig)} else ArchConfig
    try:
        cls(**{name: value})
    except ValueError as exc:  # its message says "got self.NAME=VALUE": drop the Python
        reason = str(exc).replace("self.", "")
        return f"space.{name}: {given} is not accepted: {shorten(reason, 200)}"
    return None


# The keys of a [space] entry that is a table: choices, or a range.
ENTRY_KEYS = ("choices", "high", "log", "low", "step")


def _unknown_entry_keys(where: str, spec: dict) -> str | None:
    """The problem with a [space] entry's table naming keys other than ENTRY_KEYS, or None."""
    unknown = sorted(set(spec) - set(ENTRY_KEYS))
    if not unknown:
        return None
    return f"{where}: unknown key(s) {_show_names(unknown)}; allowed: {list(ENTRY_KEYS)}"


def _parse_param(name: str, spec: Any) -> tuple[Param | None, list[str]]:
    if not isinstance(spec, dict):
        problem = _value_problem(name, spec)
        return (None, [problem]) if problem else (Param(name, "fixed", value=spec), [])

    problem = _unknown_entry_keys(f"space.{name}", spec)
    if problem:
        return None, [problem]
    if "choices" in spec:
        choices = spec["choices"]
        if set(spec) != {"choices"}:
            others = sorted(set(spec) - {"choices"})
            return None, [f"space.{name}: 'choices' cannot be combined with {others}"]
        if not isinstance(choices, list) or not choices:
            return None, [f"space.{name}: choices must be a non-empty list, "
                          f"got {_show(choices)}"]
        problems = [p for c in choices if (p := _value_problem(name, c))]
        if _repeat_a_value(choices):
            problems.append(f"space.{name}: choices repeat a value: {_show(choices)}")
        if problems:
            return None, problems
        return Param(name, "categorical", choices=tuple(choices)), []

    expected = PARAM_TYPES[name]
    if expected not in (int, float):
        return None, [f"space.{name}: takes a value ({TYPE_WORDS[expected]}) or choices, "
                      f"not a range; got {_show(spec)}"]
    if "low" not in spec or "high" not in spec:
        return None, [f"space.{name}: a range needs both 'low' and 'high', got {_show(spec)}"]
    low, high, log, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
    problems = [p for role, v in (("low=", low), ("high=", high))
                if (p := _value_problem(name, v, role))]
    if not isinstance(log, bool):
        problems.append(f"space.{name}: log must be true or false, got {_show(log)}")
    if step is not None and (not has_type(step, expected) or not is_finite(step) or step <= 0):
        problems.append(f"space.{name}: step must be a finite positive {expected.__name__}, "
                        f"got {_show(step)}")
    if problems:
        return None, problems
    if not low < high:
        problems.append(f"space.{name}: empty or inverted range low={_show(low)} "
                        f"high={_show(high)} (need low < high; for a fixed value write "
                        f"{name} = {_show(low)})")
    if log and low <= 0:
        problems.append(f"space.{name}: a log range needs low > 0, got low={_show(low)}")
    if log and step is not None:
        problems.append(f"space.{name}: log and step cannot be combined, got {_show(spec)}")
    if name == "kernel" and (step is None or step % 2):
        # Both ends are odd (checked above); an even step keeps every size between them odd.
        problems.append(f"space.kernel: a range of kernel sizes needs an even step, as only "
                        f"odd sizes keep the image size: e.g. {{ low = {low}, high = {high}, "
                        "step = 2 }")
    if problems:
        return None, problems
    kind = "int" if expected is int else "float"
    return Param(name, kind, low=low, high=high, log=log, step=step), []


def _model_name(name: str) -> str | None:
    """A problem with the name of a [space.model] entry, or None."""
    if not name.isidentifier():
        return f"space.model: {_show(name)} is not a parameter name (letters, digits, _)"
    return None


def _parse_model_param(key: str, spec: Any) -> tuple[Param | None, list[str]]:
    """One entry of [space.model]: a model builder's own parameter, typed by its values (a
    range of integers is an int parameter, else float; choices and fixed values are any TOML
    string, number or boolean)."""
    name, where = MODEL_PREFIX + key, f"space.model.{key}"

    def scalar(value: Any) -> bool:
        return isinstance(value, (str, bool, int, float)) and (
            not isinstance(value, float) or is_finite(value))

    if not isinstance(spec, dict):
        if not scalar(spec):
            return None, [f"{where}: expected a string, number or boolean, got {_show(spec)}"]
        return Param(name, "fixed", value=spec), []
    problem = _unknown_entry_keys(where, spec)
    if problem:
        return None, [problem]
    if "choices" in spec:
        choices = spec["choices"]
        if set(spec) != {"choices"} or not isinstance(choices, list) or not choices \
                or not all(scalar(c) for c in choices):
            return None, [f"{where}: choices must be a non-empty list of strings, numbers or "
                          f"booleans, alone, got {_show(spec)}"]
        if _repeat_a_value(choices):
            return None, [f"{where}: choices repeat a value: {_show(choices)}"]
        return Param(name, "categorical", choices=tuple(choices)), []
    low: Any = spec.get("low")
    high: Any = spec.get("high")
    log, step = spec.get("log", False), spec.get("step")
    if not all(has_type(v, float) and is_finite(v) for v in (low, high)):
        return None, [f"{where}: a range needs finite numbers 'low' and 'high', "
                      f"got {_show(spec)}"]
    kind = "int" if all(has_type(v, int) for v in (low, high)) else "float"
    problems = []
    if not isinstance(log, bool):
        problems.append(f"{where}: log must be true or false, got {_show(log)}")
    if step is not None and (not has_type(step, int if kind == "int" else float)
                             or not is_finite(step) or step <= 0):
        problems.append(f"{where}: step must be a finite positive number, got {_show(step)}")
    if not low < high:
        problems.append(f"{where}: empty or inverted range low={_show(low)} high={_show(high)}")
    if log is True and low <= 0:
        problems.append(f"{where}: a log range needs low > 0, got low={_show(low)}")
    if log is True and step is not None:
        problems.append(f"{where}: log and step cannot be combined")
    if problems:
        return None, problems
    return Param(name, kind, low=low, high=high, log=log, step=step), []


def _parse_model_space(table: Any, model: str, space: dict[str, Param],
                       problems: list[str]) -> None:
    """[space.model] into `space`, and the family's parameters refused for other models."""
    builder = isinstance(model, str) and ":" in model
    if table is not None:
        if not builder:
            problems.append("space.model: these are a model builder's parameters; name the "
                            "builder in [study] as model = \"package.module:function\"")
        elif not isinstance(table, dict):
            problems.append(f"space.model must be a table, got {_show(table)}")
        else:
            for key, spec in table.items():
                problem = _model_name(key)
                param, found = (None, [problem]) if problem else _parse_model_param(key, spec)
                problems += found
                if param is not None:
                    space[param.name] = param
    family = sorted(name for name in space if name in ARCH_FIELDS)
    if isinstance(model, str) and model != "cnn" and family:
        problems.append(f"space: {_show_names(family)} shape the built-in cnn family, not "
                        f"model {_show(model)}; remove them"
                        + (" or make them [space.model] parameters of the builder"
                           if builder else ""))


def _parse_enqueue(raw: Any, space: dict[str, Param], problems: list[str]) -> tuple[dict, ...]:
    """The `enqueue` list: configurations to try first, checked against the space (a value
    the space could not sample would be silently replaced by Optuna)."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(c, dict) for c in raw):
        problems.append(f"enqueue must be a list of tables of parameters, got {_show(raw)}")
        return ()
    configs = []
    for index, config in enumerate(raw[:1000]):
        where = f"enqueue[{index}]"
        found = []
        for name, value in config.items():
            param = space.get(name)
            if param is None or param.kind == "fixed":
                found.append(f"{where}: {_show(name)} is not a searched parameter of [space]")
            elif (refusal := param.refusal(value)) is not None:
                found.append(f"{where}: {name} = {_show(value)} {refusal}")
        if not config:
            found.append(f"{where}: empty; give some of the searched parameters")
        problems += found
        configs.append(config)
    if len(raw) > 1000:
        problems.append(f"enqueue: {len(raw)} configurations; at most 1000")
    return tuple(configs)


def parse_study(raw: dict, path: str = "<study>") -> StudyFile:
    problems: list[str] = []
    unknown = sorted(set(raw) - {"study", "space", "data", "enqueue"})
    if unknown:
        problems.append(f"unknown top-level key(s) {_show_names(unknown)}; "
                        "allowed: ['data', 'enqueue', 'space', 'study']")
    study = raw.get("study", {})
    space_raw = raw.get("space", {})
    settings = StudySettings()
    if not isinstance(study, dict):
        problems.append(f"[study] must be a table, got {_show(study)}")
    else:
        fields = {f.name for f in dataclasses.fields(StudySettings)}
        bad = sorted(set(study) - fields)
        if bad:
            hint = (" (a torchvision architecture is named by model = \"resnet18\")"
                    if "architecture" in bad else "")
            problems.append(f"study: unknown key(s) {_show_names(bad)}; "
                            f"allowed: {sorted(fields)}{hint}")
        values = {k: v for k, v in study.items() if k in fields}
        if isinstance(values.get("weights"), str) and values["weights"]:
            values["weights"] = os.path.normpath(
                (Path(path).parent / Path(values["weights"]).expanduser()).absolute())
        settings = StudySettings(**values)
        problems += [f"study: {p}" for p in settings.problems()]
    space: dict[str, Param] = {}
    if not isinstance(space_raw, dict):
        problems.append(f"[space] must be a table, got {_show(space_raw)}")
    else:
        space_raw = dict(space_raw)
        model_table = space_raw.pop("model", None)
        unknown = sorted(set(space_raw) - set(PARAM_TYPES))
        if unknown:
            problems.append(f"space: unknown parameter(s) {_show_names(unknown)}; "
                            f"known: {', '.join(sorted(PARAM_TYPES))}")
        for name, spec in space_raw.items():
            if name in PARAM_TYPES:
                param, found = _parse_param(name, spec)
                problems += found
                if param is not None:
                    space[name] = param
        _parse_model_space(model_table, settings.model, space, problems)
    enqueue = _parse_enqueue(raw.get("enqueue"), space, problems)
    data, data_path = _parse_data(raw.get("data", {}), Path(path).parent, problems)
    if data_path is not None:
        named = study.get("dataset") if isinstance(study, dict) else None
        if isinstance(named, str) and os.path.normpath(
                (Path(path).parent / Path(named).expanduser()).absolute()) != data_path:
            problems.append(f"[study] dataset {_show(study['dataset'])} and [data] path "
                            f"{_show(data_path)} disagree: give one")
        settings = dataclasses.replace(settings, dataset=data_path)
    if problems:
        raise UsageError(_message(f"study file {_show(path)}", problems))
    return StudyFile(path=path, settings=settings, space=space, data=data, enqueue=enqueue,
                     space_given="space" in raw)


def _parse_data(table: object, base: Path,
                problems: list[str]) -> tuple[DataConfig, str | None]:
    """The [data] table: a DataConfig and the data's `path`, if it names one. Relative paths
    are relative to the study file's folder, and stored absolute."""
    if not isinstance(table, dict):
        problems.append(f"[data] must be a table, got {_show(table)}")
        return DataConfig(), None
    values = dict(table)
    fields = {f.name for f in dataclasses.fields(DataConfig)}
    bad = sorted(set(values) - fields - {"path"})
    if bad:
        problems.append(f"data: unknown key(s) {_show_names(bad)}; "
                        f"allowed: {sorted(fields | {'path'})}")
        return DataConfig(), None
    path = values.pop("path", None)
    for key in ("path", "test"):
        value = path if key == "path" else values.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            problems.append(f"data: {key} must be a path, got {_show(value)}")
            return DataConfig(), None
    if isinstance(values.get("class_names"), list):
        values["class_names"] = tuple(values["class_names"])
    elif "class_names" in values:
        problems.append(f"data: class_names must be a list of names, "
                        f"got {_show(values['class_names'])}")
        return DataConfig(), None
    if values.get("test") is not None and "test_fraction" in values:
        # Else the fraction would be silently unused: nothing is held out of a folder's images
        # when the test images are a folder of their own.
        problems.append("data: test_fraction holds test images out of the training images; "
                        "test names a folder of test images instead: give one or the other")
        return DataConfig(), None
    if values.get("test") is not None:
        values["test"] = os.path.normpath((base / Path(values["test"]).expanduser()).absolute())
    config = DataConfig(**values)
    problems += [f"data: {p}" for p in config.problems()]
    if path is not None:
        path = os.path.normpath((base / Path(path).expanduser()).absolute())
    return config, path


# Study files are a few KB. Reading no more than this bounds the memory and the time of the TOML
# parser (which is quadratic in the parts of a dotted key) and of the error message.
MAX_STUDY_FILE_BYTES = 1 << 20


def load_study_file(path: Path) -> StudyFile:
    shown = f"study file {_show(str(path))}"
    try:
        with path.open("rb") as file:
            data = file.read(MAX_STUDY_FILE_BYTES + 1)
    except FileNotFoundError:
        raise UsageError(f"{shown} not found") from None
    except IsADirectoryError:
        raise UsageError(f"{shown} is a directory; give a .toml file") from None
    except OSError as exc:
        raise UsageError(f"{shown} cannot be read: {exc.strerror or type(exc).__name__}") from None
    if len(data) > MAX_STUDY_FILE_BYTES:
        raise UsageError(f"{shown} is larger than {MAX_STUDY_FILE_BYTES // 2**20} MiB; "
                         "a study file is a few KB of TOML")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{shown} is not UTF-8 text (byte {exc.start}); "
                         "a study file is TOML, which is UTF-8") from None
    try:
        raw = tomllib.loads(text)
    except ValueError as exc:  # TOMLDecodeError, or an integer of more than 4,300 digits
        raise UsageError(f"{shown} is not valid TOML: {shorten(str(exc), 200)}") from None
    except RecursionError:
        raise UsageError(f"{shown} is not valid TOML: nested too deeply") from None
    return parse_study(raw, str(path))


