"""Image data sets stored as arrays: a NumPy `.npz` file, or CIFAR-10/100 in torchvision's layout.

Both readers return one form, `ArrayImages`: uint8 images (N, H, W, C), channels last with C 1
or 3, int64 labels 0..K-1 and one name per class, so that the rest of the service sees one
shape of data whatever the source. The files are the user's input: anything wrong with them is
a UsageError naming the file and the problem on one line (issue 12, "Your own images").
"""

from __future__ import annotations

import logging
import pickle
import socket
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from tuning.downloads import download_once
from tuning.errors import UsageError, shorten
from tuning.folder_listing import special_kind

log = logging.getLogger(__name__)

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test", "class_names")
"""The arrays read_npz uses; any other key in the file is ignored with a log line."""
MIN_SIDE = 4
"""The smallest image height or width accepted: below it a conv-and-pool stack has nothing left."""
MAX_CLASSES = 100_000
"""The most classes an .npz without class names may have: each distinct label is one."""
MAX_LABEL = 2**53
"""The largest label value: the largest whole number a float64 holds exactly, so labels saved
as floats stay distinct, and every label fits int64."""
UNSURE_FLOAT_MAX = 2.0
"""Float images whose brightest pixel is above 1 but at most this are refused: they are 0..1
images pushed past 1 (by resampling or augmentation), and read as 0..255 they would be black."""


@dataclass(frozen=True)
class ArrayImages:
    """A data set as arrays, split into training and (when the source has one) test images."""

    train_x: np.ndarray
    """Training images, uint8 (N, H, W, C), C in {1, 3}, channels last."""
    train_y: np.ndarray
    """Training labels, int64 (N,), each in 0..len(class_names)-1."""
    test_x: np.ndarray | None
    """Test images like train_x (M, H, W, C), or None when the source has no test split."""
    test_y: np.ndarray | None
    """Test labels, int64 (M,), or None with test_x."""
    class_names: tuple[str, ...]
    """One name per class; "0", "1", ... when the source names none."""

    def __post_init__(self) -> None:
        # The readers check the user's files; this checks the readers (and anyone else who
        # builds one), so a ValueError here is a bug, not bad input.
        x, y = self.train_x, self.train_y
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[3] not in (1, 3):
            raise ValueError(f"train_x must be uint8 (N, H, W, 1|3), got {x.dtype} {x.shape}")
        if y.dtype != np.int64 or y.shape != (len(x),):
            raise ValueError(f"train_y must be int64 ({len(x)},), got {y.dtype} {y.shape}")
        if (self.test_x is None) != (self.test_y is None):
            raise ValueError("test_x and test_y must both be given or both be None")
        if self.test_x is not None and self.test_y is not None:
            tx, ty = self.test_x, self.test_y
            if tx.dtype != np.uint8 or tx.ndim != 4 or tx.shape[1:] != x.shape[1:]:
                raise ValueError(f"test_x must be uint8 (M, {x.shape[1:]}), got {tx.dtype} "
                                 f"{tx.shape}")
            if ty.dtype != np.int64 or ty.shape != (len(tx),):
                raise ValueError(f"test_y must be int64 ({len(tx)},), got {ty.dtype} {ty.shape}")
        if len(self.class_names) < 2:
            raise ValueError(f"need at least 2 class names, got {self.class_names!r}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def read_npz(path: Path) -> ArrayImages:
    """Read `x_train`, `y_train` and optionally `x_test`, `y_test`, `class_names` from `path`.

    Images are (N, H, W) or (N, H, W, C) with C 1, 3 or 4 (alpha is dropped); uint8, another
    integer type holding 0..255, or floats in 0..1 (scaled by 255) or in 0..255 (a float set
    whose brightest pixel is at most 1 is taken as 0..1; one up to UNSURE_FLOAT_MAX is refused).
    Labels are whole numbers >= 0. With class_names they index the names, and every name needs
    a training image; without, the distinct training labels in sorted order are the classes,
    each named by its label (labels 3, 7, 9: classes 0, 1, 2 named "3", "7", "9"). Test labels
    must be among the training classes.
    """
    arrays = _load_npz(path)
    if ("x_test" in arrays) != ("y_test" in arrays):
        given, lacking = ("x_test", "y_test") if "x_test" in arrays else ("y_test", "x_test")
        raise UsageError(f"{path}: {given} without {lacking}: give both or neither")
    names = _npz_class_names(path, arrays.get("class_names"))
    train_x, train_unit = _npz_images(path, "x_train", arrays["x_train"])
    k = len(names) if names is not None else None
    train_y = _npz_labels(path, "y_train", arrays["y_train"], len(train_x), k)
    labels = _npz_classes(path, train_y, names)
    if names is None:
        names = tuple(str(label) for label in labels)
    train_y = _as_classes(path, "y_train", train_y, labels)
    if "x_test" not in arrays:
        return ArrayImages(train_x, train_y, None, None, names)

    test_x, test_unit = _npz_images(path, "x_test", arrays["x_test"])
    if test_x.shape[1:] != train_x.shape[1:]:
        raise UsageError(f"{path}: x_test images are {test_x.shape[1:]} (H, W, C) but x_train "
                         f"{train_x.shape[1:]}; shapes {arrays['x_test'].shape} and "
                         f"{arrays['x_train'].shape}")
    if None not in (train_unit, test_unit) and train_unit != test_unit:
        # Each float array picks its scale by its own maximum; both must have picked the same.
        raise UsageError(f"{path}: x_train and x_test are floats on different scales (one "
                         "within 0..1, the other up to 255): scale them the same way")
    test_y = _npz_labels(path, "y_test", arrays["y_test"], len(test_x), k)
    return ArrayImages(train_x, train_y, test_x, _as_classes(path, "y_test", test_y, labels),
                       names)


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    """The known arrays of `path` (unknown keys are logged, not loaded), or a UsageError."""
    try:
        kind = special_kind(path)  # opening a FIFO would wait for a writer, maybe forever
        if kind is not None:
            raise UsageError(f"{path} is not a regular file: it is {kind}")
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError as exc:
        raise UsageError(f"{path} cannot be read: {exc.strerror or exc}") from None
    if head == b"\x93NUMPY":
        raise UsageError(f"{path} is a single .npy array, not an .npz file: save x_train, "
                         "y_train (and x_test, y_test) together with numpy.savez")
    # Sniff the zip signature first: on other bytes numpy.load says "pickled data", which
    # would send the user looking for an object array that is not there.
    if not head.startswith(b"PK"):
        raise UsageError(f"{path} is not an .npz file (a zip of .npy arrays): it starts with "
                         f"{head.hex() or 'nothing'}")
    arrays: dict[str, np.ndarray] = {}
    key = ""
    try:
        with np.load(path, allow_pickle=False) as npz:
            present = list(npz.files)
            for key in ("x_train", "y_train"):
                if key not in present:
                    raise UsageError(f"{path}: missing key {key!r}; the file holds "
                                     f"{shorten(', '.join(present) or 'no arrays', 200)}")
            for key in [k for k in NPZ_KEYS if k in present]:
                arrays[key] = npz[key]
    except ValueError as exc:
        if "allow_pickle" in str(exc):  # numpy's words for an object array, stored as a pickle
            raise UsageError(f"{path}: {key} is an object array; object arrays are not "
                             "supported (save numbers, and class_names as strings)") from None
        raise UsageError(f"{path} is not a readable .npz file ({key or 'index'}: "
                         f"{shorten(str(exc), 100)})") from None
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:  # e.g. cut short
        raise UsageError(f"{path} is not a readable .npz file (truncated or corrupt?): "
                         f"{shorten(str(exc) or type(exc).__name__, 100)}") from None
    unknown = sorted(set(present) - set(NPZ_KEYS))
    if unknown:
        log.warning("%s: ignoring keys %s (known keys: %s)", path,
                    shorten(", ".join(unknown), 200), ", ".join(NPZ_KEYS))
    return arrays


def _npz_class_names(path: Path, names: np.ndarray | None) -> tuple[str, ...] | None:
    if names is None:
        return None
    if names.ndim != 1 or names.dtype.kind not in "US":
        raise UsageError(f"{path}: class_names must be a 1-D array of strings, got "
                         f"{names.dtype} {names.shape}")
    out = tuple(n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n)
                for n in names.tolist())
    if len(out) < 2:
        raise UsageError(f"{path}: class_names holds {len(out)} name(s); at least 2 are needed")
    blank = [i for i, n in enumerate(out) if not n.strip()]
    if blank:  # a class the report's tables and the exported model's answers could not name
        raise UsageError(f"{path}: class_names[{blank[0]}] is blank; give every class a name")
    repeated = [n for i, n in enumerate(out) if n in out[:i]]
    if repeated:
        raise UsageError(f"{path}: class_names repeats {shorten(repeated[0])!r}")
    return out


def _npz_images(path: Path, key: str, x: np.ndarray) -> tuple[np.ndarray, bool | None]:
    """`x` as uint8 (N, H, W, C), and for floats whether they were read as 0..1 (else None)."""
    if x.ndim >= 1 and len(x) == 0:  # before a channel axis is added: the file's shape
        raise UsageError(f"{path}: {key} holds no images (shape {x.shape})")
    if x.ndim == 3:
        x = x[..., None]
    elif x.ndim != 4:
        raise UsageError(f"{path}: {key} has shape {x.shape}; expected (N, H, W) or (N, H, W, C)")
    if x.shape[3] == 4:
        log.info("%s: %s has 4 channels; dropping the 4th (alpha)", path, key)
        x = x[..., :3]
    elif x.shape[3] not in (1, 3):
        hint = "; channels first? move them last" if x.shape[1] in (1, 3, 4) else ""
        raise UsageError(f"{path}: {key} has {x.shape[3]} channels (shape {x.shape}); expected "
                         f"1 or 3 (or 4, alpha dropped){hint}")
    if min(x.shape[1:3]) < MIN_SIDE:
        raise UsageError(f"{path}: {key} images are {x.shape[1]}x{x.shape[2]}; height and width "
                         f"must be at least {MIN_SIDE}")
    if x.dtype.kind in "iu" and x.size and 0 <= x.min() and x.max() <= 1:
        # Integers are pixels of 0..255: 0/1 images train a network on near-black ones, which
        # then fails on every ordinary image it is given.
        log.warning("%s: %s holds integers of only 0 and 1, read as pixels of 0..255 (near "
                    "black): if 1 means white, save them times 255, or as floats of 0..1",
                    path, key)
    if x.dtype == np.uint8:
        return x, None
    if x.dtype.kind not in "iuf":
        raise UsageError(f"{path}: {key} has dtype {x.dtype}; expected uint8, another integer "
                         "type (0..255) or float (0..1 or 0..255)")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise UsageError(f"{path}: {key} holds NaN or infinite values")
    low, high = x.min(), x.max()
    if low < 0 or high > 255:
        raise UsageError(f"{path}: {key} holds values from {low:g} to {high:g}; expected "
                         "0..255 (or, as floats, 0..1)")
    if x.dtype.kind != "f":
        return x.astype(np.uint8), None
    if 1 < high <= UNSURE_FLOAT_MAX:
        raise UsageError(f"{path}: {key} holds floats from {low:g} to {high:g}, neither 0..1 "
                         "nor 0..255: clip them to 0..1 or scale them to 0..255")
    unit = bool(high <= 1)
    return np.rint(x * 255 if unit else x).astype(np.uint8), unit


def _npz_labels(path: Path, key: str, y: np.ndarray, n: int, k: int | None) -> np.ndarray:
    """`y` as int64, checked against `n` images and `k` classes (None: any label 0..MAX_LABEL)."""
    if y.ndim != 1:
        raise UsageError(f"{path}: {key} has shape {y.shape}; expected one label per image, "
                         f"shape ({n},)")
    if len(y) != n:
        raise UsageError(f"{path}: {key} has {len(y)} labels but x_{key[2:]} has {n} images")
    if y.dtype.kind == "f":
        not_whole = ~np.isfinite(y) | (y != np.round(y))
        if not_whole.any():
            i = int(np.argmax(not_whole))
            raise UsageError(f"{path}: {key} holds {y[i]} at index {i}; labels must be whole "
                             "numbers")
    elif y.dtype.kind not in "iu":
        hint = ("; for named classes save each label's index, and the names, in order, as "
                "class_names") if y.dtype.kind in "USO" else ""
        raise UsageError(f"{path}: {key} has dtype {y.dtype}; expected integer labels{hint}")
    # Range checks run on the original dtype: casting a huge float or uint64 first would wrap.
    # Without class names any label will do up to MAX_LABEL: _npz_classes maps them to 0..K-1.
    high = MAX_LABEL if k is None else k - 1
    bad = (y < 0) | (y > high)
    if bad.any():
        i = int(np.argmax(bad))
        why = ("must not be negative" if y[i] < 0 else f"above {MAX_LABEL}" if k is None
               else f"outside the classes 0..{high}")
        raise UsageError(f"{path}: {key} holds label {y[i]} at index {i}, {why}")
    return y.astype(np.int64)


def _npz_classes(path: Path, train_y: np.ndarray, names: tuple[str, ...] | None) -> np.ndarray:
    """The label of each class, sorted: 0..K-1 with class names, else the distinct labels.

    A class without training images cannot be learned, and left in it would sit empty in every
    per-class score (labels 3, 7, 9 read as 0..9 made 7 of 10 classes empty).
    """
    present = np.unique(train_y)
    if len(present) < 2:
        raise UsageError(f"{path}: y_train holds only the class {present[0]}; a classifier "
                         "needs at least 2")
    if names is not None:
        missing = np.setdiff1d(np.arange(len(names)), present)
        if len(missing):
            first = missing[0]
            more = f", nor of {len(missing) - 1} other(s)" if len(missing) > 1 else ""
            raise UsageError(f"{path}: y_train holds no image of class {shorten(names[first])!r} "
                             f"(label {first}){more}; a class without training images cannot "
                             "be learned")
        return present
    if len(present) > MAX_CLASSES:
        raise UsageError(f"{path}: y_train holds {len(present)} distinct labels; without "
                         f"class_names at most {MAX_CLASSES} classes are accepted")
    if present[-1] != len(present) - 1:
        log.info("%s: y_train's labels are not 0..%d but %s: these %d are the classes, in "
                 "order, named by their labels", path, len(present) - 1, _show(present),
                 len(present))
    return present


def _as_classes(path: Path, key: str, y: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """`y` with each label replaced by its class, the label's index in `labels` (sorted)."""
    classes = np.searchsorted(labels, y)
    unseen = labels[np.minimum(classes, len(labels) - 1)] != y
    if unseen.any():
        i = int(np.argmax(unseen))
        raise UsageError(f"{path}: {key} holds label {y[i]} at index {i}, which no training "
                         f"image has (y_train's labels: {_show(labels)})")
    return classes.astype(np.int64)


def _show(labels: np.ndarray) -> str:
    """Sorted distinct labels for a message: "0..9" when they run so, else a bounded list."""
    if labels[-1] == len(labels) - 1:
        return f"0..{labels[-1]}"
    return shorten(", ".join(str(label) for label in labels.tolist()), 80)


@dataclass(frozen=True)
class _Cifar:
    """Where torchvision's extracted archive keeps one CIFAR data set, and its keys."""

    folder: str
    """The folder the archive extracts to, under the data directory."""
    url: str
    """torchvision's download address of the archive."""
    train: tuple[str, ...]
    """The training batch files."""
    test: str
    """The test batch file."""
    meta: str
    """The file holding the class names."""
    labels: str
    """The labels' key in each batch."""
    names: str
    """The class names' key in the meta file."""


CIFAR = {
    "cifar10": _Cifar("cifar-10-batches-py",
                      "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                      tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch",
                      "batches.meta", "labels", "label_names"),
    "cifar100": _Cifar("cifar-100-python",
                       "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                       ("train",), "test", "meta", "fine_labels", "fine_label_names"),
}
"""The CIFAR data sets read_cifar knows, by name."""
CONNECT_TIMEOUT_S = 3.0
"""How long the check that the download host answers may take before we give up on it."""


def read_cifar(name: str, root: Path, *, download: bool = True) -> ArrayImages:
    """Read CIFAR-10 or -100 (`name` "cifar10" or "cifar100") from torchvision's layout in `root`.

    When the folder is missing and `download` is allowed, torchvision downloads it into `root`
    if its host answers within CONNECT_TIMEOUT_S. The batch files are pickles, and unpickling
    can run code: put only torchvision's own files there (torchvision reads them the same way).
    CIFAR-100 uses its 100 fine labels.
    """
    if name not in CIFAR:
        raise UsageError(f"unknown CIFAR data set {name!r}; choose one of {', '.join(CIFAR)}")
    layout = CIFAR[name]
    # --data-dir may name the extracted folder itself, not the one holding it.
    folder = root if root.name == layout.folder else root / layout.folder
    if not folder.is_dir() and download:
        _download(name, root)
    if not folder.is_dir():
        tried = " and could not download it" if download else ""
        raise UsageError(f"{name} not found: no {folder}{tried}; put torchvision's "
                         f"{layout.folder} under --data-dir DIR (from {layout.url}, extracted)")
    meta_path = folder / layout.meta
    raw_names = _unpickle(meta_path, layout.names)[layout.names]
    if not isinstance(raw_names, (list, tuple)) or len(raw_names) < 2:
        raise UsageError(f"{meta_path}: {layout.names} is not a list of class names")
    names = tuple(n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n)
                  for n in raw_names)
    train = [_cifar_batch(folder / f, layout.labels, len(names)) for f in layout.train]
    test_x, test_y = _cifar_batch(folder / layout.test, layout.labels, len(names))
    train_x = np.concatenate([x for x, _ in train])
    return ArrayImages(train_x, np.concatenate([y for _, y in train]), test_x, test_y, names)


def _unpickle(path: Path, *keys: str) -> dict[str, object]:
    """The dict pickled in `path`, keys as str, with every one of `keys`, or a UsageError."""
    try:
        with open(path, "rb") as f:
            # "bytes": the files are Python 2 pickles; their str objects arrive as bytes.
            entry = pickle.load(f, encoding="bytes")
    except FileNotFoundError:
        raise UsageError(f"{path} is missing: extract the CIFAR archive again") from None
    except Exception as exc:  # noqa: BLE001 - a corrupt pickle fails in almost any way
        raise UsageError(f"{path} is not a readable CIFAR file ({type(exc).__name__}: "
                         f"{shorten(str(exc), 80)}): extract the archive again") from None
    if not isinstance(entry, dict):
        raise UsageError(f"{path} is not a CIFAR file: it holds a {type(entry).__name__}, "
                         "not a dict")
    entry = {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}
    missing = [k for k in keys if k not in entry]
    if missing:
        raise UsageError(f"{path} is not a CIFAR file: it lacks {', '.join(missing)}")
    return entry


def _cifar_batch(path: Path, label_key: str, k: int) -> tuple[np.ndarray, np.ndarray]:
    entry = _unpickle(path, "data", label_key)
    data, labels = np.asarray(entry["data"]), np.asarray(entry[label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise UsageError(f"{path}: data is {data.dtype} {data.shape}; expected uint8 (N, 3072)")
    if labels.shape != (len(data),) or labels.dtype.kind not in "iu":
        raise UsageError(f"{path}: {label_key} is {labels.dtype} {labels.shape}; expected "
                         f"{len(data)} integer labels")
    bad = (labels < 0) | (labels >= k)
    if bad.any():
        i = int(np.argmax(bad))
        raise UsageError(f"{path}: {label_key} holds {labels[i]} at index {i}, outside the "
                         f"classes 0..{k - 1}")
    # Each row is the red 32x32 plane, then green, then blue: CHW, turned here to HWC.
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int64)


def _reachable(host: str) -> bool:
    try:
        socket.create_connection((host, 443), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        log.info("%s does not answer (%s): no download", host, exc)
        return False
    return True


def _download(name: str, root: Path) -> None:
    """Let torchvision download and extract `name` into `root`; failures are only logged, and
    leave `root` as it was."""
    layout = CIFAR[name]
    # torchvision's urlopen has no timeout, so behind a firewall that drops packets it would
    # wait for minutes: ask the host first, and bound every socket read while downloading.
    if not _reachable(urlparse(layout.url).hostname or ""):
        return
    from torchvision import datasets

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    folder = root / layout.folder
    archive = root / Path(urlparse(layout.url).path).name

    def fetch() -> bool:
        if not folder.is_dir():
            # train=False: the download fetches the whole archive; loading only the test
            # batch afterwards keeps torchvision's own read short (we read the files again).
            cls(str(root), train=False, download=True)
            log.info("downloaded %s into %s", name, root)
        return True

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(30)
    try:
        download_once(root, f".{name}.lock", [archive, folder], fetch)
    except Exception as exc:  # noqa: BLE001 - any failure here means "no download"
        log.warning("download of %s into %s failed: %s", name, root, shorten(str(exc), 200))
    finally:
        socket.setdefaulttimeout(previous)
