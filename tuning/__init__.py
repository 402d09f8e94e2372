"""tuning: hyperparameter search for PyTorch image classifiers, built on Optuna.

One module per concern: data, model, train (no Optuna), space (study files), strategy
(samplers, pruners), objective, storage, study (create/check), worker (the trial loop),
launcher (processes), signals, search / worker / report / dashboard (command lines),
evaluate (held-out test metrics), report_stats / report_sections / report_render /
report_heldout (the report's statistics, sections, HTML and Markdown, and held-out test), cli
(shared CLI pieces), command (the `tuning` command and its subcommands), catalog (built-in and
local study files), outage (riding out database faults).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tuning")
except PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "unknown"
