"""tuning: hyperparameter search for PyTorch image classifiers, built on Optuna.

One module per concern: data, model, train (no Optuna), space (study files), strategy
(samplers, pruners), objective, storage, study (create/check), worker (the trial loop),
launcher (processes), signals, search / worker / report / dashboard (command lines),
evaluate (held-out test metrics), cli (shared CLI pieces).
"""
