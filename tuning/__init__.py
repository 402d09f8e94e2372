"""tuning: hyperparameter search for PyTorch image classifiers, built on Optuna.

One module per concern: data, model, train (no Optuna), space (study files), strategy
(samplers, pruners), objective, storage, outage (riding out database faults), pause (a
worker resumed from a pause, whose view of the others is stale), study
(create/check), runner (taking and running trials: the loop every worker runs), launcher
(worker processes), signals, plan (which study, study file and settings a search runs),
search / worker / report / dashboard / export / predict (command lines), command (the
`tuning` command and its subcommands), cli (shared CLI pieces), catalog
(built-in and local study files), evaluate (held-out test metrics), report_stats /
report_sections / report_render / report_heldout (the report's statistics, sections, HTML and
Markdown, and held-out test), exported (a model written by export, loaded again).

`tuning.load_model(DIR)` loads an exported model; `import tuning` itself imports no torch, and
sets OpenMP's wait policy for the torch it will load.
"""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from tuning.exported import ExportedModel

# OpenMP's threads spin while they wait for work. Beside another CPU-bound process, a trial
# with 2 threads on 2 cores then ran an epoch 35x slower (scripts/bench_threads.py,
# docs/benchmarks.md); told to sleep instead they lose a little on an idle machine and keep
# their pace on a shared one. Set before anything loads torch (and its OpenMP), and only where
# the user has not chosen; worker processes inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

try:
    __version__ = version("tuning")
except PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "unknown"


def load_model(path: str | Path, device: str | torch.device = "cpu") -> ExportedModel:
    """The model `tuning export` wrote into directory `path`, in eval mode on `device`: see
    tuning.exported. Imported here on first use, so that `import tuning` stays light."""
    from tuning.exported import load_model as load

    return load(path, device)
