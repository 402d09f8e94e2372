"""What an export needs to train its trial again from scratch: a study file that fixes every
parameter of the trial, with the study's data, split and epochs and the trial's seed, and the
commands that run it.

A trial trains with seed `study seed + repeat` when its space has `repeat`, so the file fixes
`repeat` to the trial's seed less the study's: the new study's one trial gets the same seed and
the same data split (which follows the study's seed) as the original. On the same device, thread
count and versions it gives the same validation loss.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from optuna.trial import FrozenTrial

from tuning.networks import MODEL_PREFIX
from tuning.sources import DataConfig, is_path
from tuning.space import BOUNDS, PARAM_TYPES, REPEAT
from tuning.study_file import StudySettings

REPRODUCE_FILE = "reproduce.toml"
BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class Reproduction:
    """The study file's text, and the commands that run it."""

    text: str
    """The study file (TOML)."""
    commands: tuple[str, ...]
    """Create the new study from the file, train its trial, export it."""
    exact: bool
    """Whether the new trial gets the original's seed (False: a seed beyond `repeat`'s range)."""
    cpu_threads: int | None
    """The CPU threads the trial trained with (None: it trained on a GPU)."""
    device: str
    """The device the trial trained on, as its worker named it."""


def reproduction(study_name: str, trial: FrozenTrial, settings: StudySettings, params: dict,
                 data: DataConfig, study_file: Path, data_dir: Path | None,
                 refit: bool) -> Reproduction:
    """How to train `trial` of study `study_name` again: the study file, to be written at
    `study_file`, that fixes `params` (every parameter it trained with, fixed ones included)
    with the study's `settings` and [data] table, and the commands that run it (with
    `--data-dir data_dir`, and exporting with `--refit` where the export was refit)."""
    params = dict(params)
    offset = trial.user_attrs.get("seed", settings.seed + params.get(REPEAT, trial.number)) \
        - settings.seed
    exact = offset in BOUNDS[REPEAT]
    if exact:
        params[REPEAT] = offset
    study = {"dataset": settings.dataset, "epochs": settings.epochs, "seed": settings.seed,
             "cv_folds": settings.cv_folds, "model": settings.model, "weights": settings.weights,
             # One configuration: nothing to sample, and nothing to stop it before its last
             # epoch (where a complete original ended; one the run's --budget cut short is
             # said to have stopped earlier, below).
             "sampler": "random", "pruner": "none"}
    data_table = {"image_size": data.image_size, "channels": data.channels, "test": data.test,
                  # Only where it held test images out: beside a test folder it is refused.
                  "test_fraction": data.test_fraction if data.test is None else None,
                  "val_fraction": data.val_fraction,
                  "hflip": data.hflip,
                  "class_names": list(data.class_names) if data.class_names else None}
    space = {k: v for k, v in sorted(params.items()) if not k.startswith(MODEL_PREFIX)}
    model_space = {k[len(MODEL_PREFIX):]: v for k, v in sorted(params.items())
                   if k.startswith(MODEL_PREFIX)}
    from tuning.objective import epochs_run, stopped_by_budget  # noqa: PLC0415 - loads torch

    lines = [f"# Trains trial #{trial.number} of study {study_name!r} again, from scratch: every",
             "# parameter fixed to the trial's, its seed (repeat), data split (seed) and epochs."]
    if stopped_by_budget(trial):
        lines.append(f"# The run's --budget stopped it after {epochs_run(trial, settings.epochs)} "
                     f"of these {settings.epochs} epochs: this trains all of them.")
    lines += ["", "[study]", *_table(study), ""]
    if is_path(settings.dataset):
        lines += ["[data]", *_table(data_table), ""]
    lines += ["[space]", *_table(space, typed=True), ""]
    if model_space:
        lines += ["[space.model]", *_table(model_space), ""]
    threads = trial.user_attrs.get("cpu_threads")
    threads = threads if isinstance(threads, int) else None
    name = ["--study", _study_name(study_name, trial.number)]
    data_flags = ["--data-dir", str(data_dir.absolute())] if data_dir is not None else []
    commands = (
        shlex.join(["tuning", "search", "--create-only", "--config", str(study_file.absolute()),
                    *name, "--trials", "1", *data_flags]),
        # A CPU run repeats exactly only on as many threads.
        shlex.join(["tuning", "worker", *name,
                    *(["--threads", str(threads)] if threads else []), *data_flags]),
        shlex.join(["tuning", "export", *name, *(["--refit"] if refit else []), *data_flags]))
    return Reproduction("\n".join(lines), commands, exact, threads,
                        str(trial.user_attrs.get("device", "not recorded")))


def _study_name(study: str, trial: int) -> str:
    suffix = f"-trial-{trial}"
    return study[:64 - len(suffix)] + suffix


def _table(values: dict, typed: bool = False) -> list[str]:
    """TOML `key = value` lines for the values that are set; `typed`: the values of the
    search space's float parameters written as floats."""
    return [f"{_key(key)} = "
            f"{_value(value, float if typed and PARAM_TYPES.get(key) is float else None)}"
            for key, value in values.items() if value is not None]


def _key(key: str) -> str:
    return key if BARE_KEY.fullmatch(key) else json.dumps(key, ensure_ascii=False)


def _value(value, as_type: type | None = None) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if as_type is float or isinstance(value, float):
        return repr(float(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    # A JSON string is a TOML basic string: the same quotes and escapes.
    return json.dumps(str(value), ensure_ascii=False)
