"""tuning: hyperparameter search for PyTorch image classifiers, built on Optuna.

One module per concern: data, model, train (no Optuna), space (study files), strategy
(samplers, pruners), objective, storage, outage (riding out database faults), study
(create/check), runner (taking and running trials: the loop every worker runs), launcher
(worker processes), signals, search / worker / report / dashboard / export / predict (command
lines), command (the `tuning` command and its subcommands), cli (shared CLI pieces), catalog
(built-in and local study files), evaluate (held-out test metrics), report_stats /
report_sections / report_render / report_heldout (the report's statistics, sections, HTML and
Markdown, and held-out test), exported (a model written by export, loaded again).

`tuning.load_model(DIR)` loads an exported model; `import tuning` itself imports no torch.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from tuning.exported import ExportedModel

try:
    __version__ = version("tuning")
except PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "unknown"


def load_model(path: str | Path, device: str | torch.device = "cpu") -> ExportedModel:
    """The model `tuning export` wrote into directory `path`, in eval mode on `device`: see
    tuning.exported. Imported here on first use, so that `import tuning` stays light."""
    from tuning.exported import load_model as load

    return load(path, device)
