"""K-fold cross-validation: the study's training and validation images as K stratified folds.

For small data sets one 10% validation split is noisy (on the 4,000-image sample one image is
0.25% of accuracy); a study with `cv_folds = K` scores each trial on K folds instead (see
tuning.objective for how a trial trains them and how pruning compares them). A fold is an Arrays
like the study's own, so training needs nothing new: the training and validation images are
pooled and cut into K parts, and fold i validates on part i and trains on the others. The test
split is the study's, untouched, in every fold: the search never sees it.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from tuning.data import Arrays, DeviceData, to_device
from tuning.errors import UsageError


def fold_parts(labels: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """K disjoint arrays of indices into `labels` that together cover every index once, each
    holding every class's share (its count within one of len(class) / k) and sizes within one
    of each other; chosen with `seed`."""
    rng = np.random.default_rng(seed)
    # Each class shuffled, the classes one after another, then dealt out like cards: a class's
    # images go round the folds in turn, and the next class starts where it left off, so the
    # folds' sizes, not only their classes, differ by at most one.
    order = np.concatenate([rng.permutation(np.flatnonzero(labels == cls))
                            for cls in np.unique(labels)])
    # Shuffled across classes, as stratified_split's splits are.
    return [rng.permutation(order[i::k]) for i in range(k)]


def fold_arrays(arrays: Arrays, k: int, seed: int) -> list[Arrays]:
    """The study's data as K cross-validation folds: training and validation images pooled and
    cut into K stratified parts (fold_parts, with the study's seed); fold i
    validates on part i and trains on the rest.

    Every fold keeps the study's test split and its normalization (mean and std of the
    training split, as the study recorded them), so that a fold's network sees its inputs as
    every trial of the study does.
    """
    x = np.concatenate([arrays.train_x, arrays.val_x])
    y = np.concatenate([arrays.train_y, arrays.val_y])
    if len(y) < k:
        raise UsageError(f"cv_folds = {k} needs at least {k} training and validation images, "
                         f"and {arrays.name} has {len(y)}")
    parts = fold_parts(y, k, seed)
    folds = []
    for i, val_idx in enumerate(parts):
        train_idx = np.concatenate([p for j, p in enumerate(parts) if j != i])
        folds.append(dataclasses.replace(arrays, train_x=x[train_idx], train_y=y[train_idx],
                                         val_x=x[val_idx], val_y=y[val_idx]))
    return folds


def objective_data(arrays: Arrays, cv_folds: int, seed: int,
                   device: torch.device) -> tuple[DeviceData, list[DeviceData] | None]:
    """What an Objective trains on, on `device`: (data, folds). Without cross-validation
    (cv_folds 1) the study's own split and no folds; with it the first fold stands as `data`
    (it has the same shape and classes) and the folds hold every fold, the first included.

    Each fold is a copy of the images on the device: K copies of the training and validation
    images, which cross-validation, meant for small data sets, can afford. The test split,
    which no trial reads, is kept once.
    """
    if cv_folds == 1:
        return to_device(arrays, device), None
    folds: list[DeviceData] = []
    for fold in fold_arrays(arrays, cv_folds, seed):
        data = to_device(fold, device)
        folds.append(data if not folds else dataclasses.replace(data, test=folds[0].test))
    return folds[0], folds
