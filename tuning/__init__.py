"""tuning: hyperparameter search for PyTorch image classifiers, built on Optuna.

One module per concern: data, model, train (no Optuna), space (study files), strategy
(samplers, pruners), objective, storage, outage (riding out database faults), study
(create/check), runner (taking and running trials: the loop every worker runs), launcher
(worker processes), signals, search / worker / report / dashboard (command lines), command (the
`tuning` command and its subcommands), cli (shared CLI pieces), catalog (built-in and local
study files), evaluate (held-out test metrics), report_stats / report_sections /
report_render / report_heldout (the report's statistics, sections, HTML and Markdown, and
held-out test).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tuning")
except PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "unknown"
