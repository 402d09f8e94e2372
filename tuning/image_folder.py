"""An image folder in torchvision's `ImageFolder` layout (`root/<class>/<image>`) read into one
uint8 array of one size and channel count, decoded once and cached on disk.

The cache is keyed by the folder's content (each image file's relative path, size and mtime) and
the options, not by its location. Workers that start together decode once, under a file lock.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout
from PIL import Image, ImageOps
from tqdm import tqdm  # type: ignore[import-untyped]

from tuning.errors import UsageError, shorten
from tuning.settings import setting

log = logging.getLogger("tuning")

FORMAT_VERSION = 1
"""Part of every cache key: raise it when what a cache holds, or how it is decoded, changes."""
EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".pgm"})
GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})
MAX_UNREADABLE = 0.10
"""The share of image files that may fail to decode before the folder is an error."""
IMAGE_SIZES = (4, 1024)
CHOSEN_SIZES = (16, 128)
"""The range a chosen size is clamped to when the images' sizes differ."""


@dataclass(frozen=True)
class FolderImages:
    """The decoded images of one folder. Order: classes in order, then files by relative path."""

    x: np.ndarray
    """uint8, shape (N, H, W, C), C 1 or 3, channels last."""
    y: np.ndarray
    """int64, shape (N,): each image's index into `class_names`."""
    class_names: tuple[str, ...]
    """The class directories' names, sorted (or the `class_names` the caller gave)."""
    skipped: tuple[str, ...]
    """Relative paths of the image files that could not be decoded."""


def default_cache_dir() -> Path:
    """$TUNING_CACHE_DIR, else the user's cache directory (XDG) + tuning/images."""
    chosen = setting("TUNING_CACHE_DIR")
    if chosen:
        return Path(chosen)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tuning" / "images"


def read_image_folder(root: Path, *, image_size: int | None = None, channels: int | None = None,
                      class_names: tuple[str, ...] | None = None,
                      cache_dir: Path | None = None, progress: bool = True) -> FolderImages:
    """The images under `root/<class>/`, from the cache when the folder has not changed.

    `image_size`: square side to resize and centre-crop to (default: the images' common size,
    else a chosen one). `channels`: 1 or 3 (default 3 if any image has colour).
    `class_names`: the training folder's classes when `root` is a separate test folder.
    """
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int)
                                   or not IMAGE_SIZES[0] <= image_size <= IMAGE_SIZES[1]):
        raise UsageError(f"image_size must be {IMAGE_SIZES[0]}..{IMAGE_SIZES[1]}, "
                         f"got {image_size}")
    # 1.0 and True equal 1: they would pass `in (1, 3)` and fail where the array is made.
    if channels is not None and (isinstance(channels, bool) or not isinstance(channels, int)
                                 or channels not in (1, 3)):
        raise UsageError(f"channels must be 1 or 3, got {channels}")
    root = Path(root).expanduser()
    if not root.exists():
        raise UsageError(f"image folder {shorten(str(root), 200)} does not exist")
    if not root.is_dir():
        raise UsageError(f"image folder {shorten(str(root), 200)} is not a directory")
    by_class, ignored = _list_files(root)
    names = _class_names(root, by_class, class_names)
    if ignored:
        log.info("ignored %d files in %s that are not images by their extension (e.g. %s)",
                 len(ignored), root, ignored[0])
    files = [(rel, names.index(name)) for name, rels in by_class.items() for rel in rels]
    stamps = []
    for rel, _ in files:
        stat = (root / rel).stat()
        stamps.append((rel, stat.st_size, stat.st_mtime_ns))
    key = hashlib.sha256(json.dumps({
        "version": FORMAT_VERSION, "files": stamps, "image_size": image_size,
        "channels": channels, "class_names": class_names}).encode()).hexdigest()

    def decode() -> FolderImages:
        return _decode(root, files, names, image_size, channels, progress)

    images = _cached(Path(cache_dir or default_cache_dir()), key, decode)
    if images.skipped:
        log.warning("skipped %d of %d image files in %s that cannot be decoded: %s",
                    len(images.skipped), len(files), root, _first(images.skipped))
    return images


def _list_files(root: Path) -> tuple[dict[str, list[str]], list[str]]:
    """Image files per class directory and the other files, as sorted relative paths.

    Like torchvision, a class directory's subdirectories are searched too. Names starting with
    '.' (.DS_Store, .ipynb_checkpoints) are skipped; a directory without images is no class.
    """
    by_class: dict[str, list[str]] = {}
    ignored: list[str] = []
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            ignored.append(entry.name)
            continue
        images: list[str] = []
        for dirpath, dirnames, filenames in os.walk(entry):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(n for n in filenames if not n.startswith(".")):
                rel = (Path(dirpath) / name).relative_to(root).as_posix()
                is_image = os.path.splitext(name)[1].lower() in EXTENSIONS
                (images if is_image else ignored).append(rel)
        if images:
            by_class[entry.name] = sorted(images)
    return by_class, ignored


def _class_names(root: Path, by_class: dict[str, list[str]],
                 given: tuple[str, ...] | None) -> tuple[str, ...]:
    if not by_class:
        raise UsageError(f"{shorten(str(root), 200)} holds no class directories with images "
                         "(expected <folder>/<class>/<image>.png, .jpg, ...)")
    if given is not None:
        unknown = [name for name in by_class if name not in given]
        if unknown:
            raise UsageError(f"{shorten(str(root), 200)} has class directory "
                             f"{shorten(unknown[0])!r}, not one of the training classes "
                             f"{shorten(', '.join(given), 200)}")
    names = tuple(given) if given is not None else tuple(by_class)
    if len(names) < 2:
        raise UsageError(f"{shorten(str(root), 200)} holds one class ({shorten(names[0])!r}): "
                         "a classifier needs at least two class directories")
    return names


def _cached(cache_dir: Path, key: str, decode: Callable[[], FolderImages]) -> FolderImages:
    """`decode()`'s result, read from `cache_dir` or decoded once under a lock and saved there."""
    path = cache_dir / f"{key}.npz"
    # First without the lock: a cache prepared on a read-only disk is still used.
    images = _load(path, warn=True)
    if images is not None:
        return images
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(cache_dir / f"{key}.lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log.info("waiting for another process decoding the same images (%s)", lock.lock_file)
            lock.acquire()
    except OSError as exc:
        log.warning("cannot write the image cache in %s (%s): decoding without caching",
                    cache_dir, exc.strerror or exc)
        return decode()
    try:
        images = _load(path, warn=False)  # built by the process that held the lock before us
        if images is None:
            images = decode()
            _save(images, path)
        return images
    finally:
        lock.release()


def _load(path: Path, *, warn: bool) -> FolderImages | None:
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            images = FolderImages(x=f["x"], y=f["y"],
                                  class_names=tuple(str(n) for n in f["class_names"]),
                                  skipped=tuple(str(s) for s in f["skipped"]))
        if images.x.dtype != np.uint8 or images.x.ndim != 4 or len(images.y) != len(images.x):
            raise ValueError("arrays of the wrong shape or type")
    except Exception as exc:  # any kind of damage (cut short, not a zip, wrong keys): rebuild
        if warn:
            log.warning("the image cache %s is damaged (%s): decoding again", path,
                        shorten(str(exc), 100))
        return None
    log.info("read %d images from the cache %s", len(images.y), path)
    return images


def _save(images: FolderImages, path: Path) -> None:
    # A temporary file then os.replace: a reader never sees half a file. A file cut short by a
    # crash of the machine is caught by _load and rebuilt.
    tmp = None
    try:
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.stem, suffix=".tmp",
                                         delete=False) as f:
            tmp = f.name
            np.savez(f, x=images.x, y=images.y, class_names=np.array(images.class_names, str),
                     skipped=np.array(images.skipped, str))
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot write the image cache %s (%s): the images are decoded again next "
                    "time", path, exc.strerror or exc)
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def _decode(root: Path, files: list[tuple[str, int]], names: tuple[str, ...],
            image_size: int | None, channels: int | None, progress: bool) -> FolderImages:
    started = time.perf_counter()
    failed: dict[int, str] = {}
    size = (image_size, image_size) if image_size is not None else None
    if size is None or channels is None:
        # A first pass over the headers alone (Image.open does not decode) decides the size and
        # channels, so that the decoding pass can write each image straight into the array.
        headers = {}
        for i, (rel, _) in enumerate(files):
            try:
                with Image.open(root / rel) as img:
                    headers[i] = (img.height, img.width, img.mode)
            except Exception as exc:  # Pillow raises many kinds for a bad file: all unreadable
                failed[i] = str(exc)
        if not headers:
            _check_failures(root, files, failed)  # says none is readable; 10% is checked below
        if channels is None:
            colour = any(mode not in GRAY_MODES and not mode.startswith("I;16")
                         for _, _, mode in headers.values())
            channels = 3 if colour else 1
        if size is None:
            size = _choose_size(root, [(h, w) for h, w, _ in headers.values()])
    mode = "RGB" if channels == 3 else "L"
    x = np.empty((len(files), *size, channels), np.uint8)
    bar = progress and sys.stderr.isatty()  # else a log file would fill with redrawn bars
    if not bar:
        log.info("decoding %d images from %s", len(files), root)
    for i, (rel, _) in enumerate(tqdm(files, desc=f"decoding {root.name}", unit="img",
                                      file=sys.stderr, disable=not bar)):
        if i not in failed:
            try:
                x[i] = _decode_one(root / rel, mode, size).reshape(*size, channels)
            except Exception as exc:  # as above: truncated, corrupt or an unsupported variant
                failed[i] = str(exc)
    _check_failures(root, files, failed)
    keep = np.array([i not in failed for i in range(len(files))], dtype=bool)
    images = FolderImages(x=x[keep] if failed else x,
                          y=np.array([label for _, label in files], np.int64)[keep],
                          class_names=names,
                          skipped=tuple(files[i][0] for i in sorted(failed)))
    if not bar:
        log.info("decoded %d images from %s in %.1f s", len(images.y), root,
                 time.perf_counter() - started)
    return images


def _decode_one(path: Path, mode: str, size: tuple[int, int]) -> np.ndarray:
    with Image.open(path) as img:
        img.load()  # decode now, so that a truncated file fails here (LOAD_TRUNCATED_IMAGES off)
        img = convert_mode(img, mode)
    height, width = size
    if img.size != (width, height):
        # Shorter side to the target, then the centre: the aspect ratio is kept, not squashed.
        img = ImageOps.fit(img, (width, height), Image.Resampling.BILINEAR)
    return np.asarray(img)


def convert_mode(img: Image.Image, mode: str) -> Image.Image:
    """`img` in `mode` ("L" or "RGB"), as the study's images were decoded: 16-bit grayscale
    scaled to 8 bits, transparency composited on black. Multi-frame files (GIF, TIFF) give
    their first frame. Also what tuning.exported decodes a user's image with."""
    if img.mode.startswith("I"):
        # 16-bit grayscale (PNG, TIFF, PGM): Pillow's convert clips at 255, which turns most of
        # such an image white; scale 0..65535 to 0..255 instead.
        img = Image.fromarray((np.clip(np.asarray(img), 0, 65535) // 257).astype(np.uint8))
    if img.mode == "PA" or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA"):
        # Composited on black rather than converted: transparent pixels store an arbitrary colour
        # (black, white or leftovers), which alpha says to ignore; on black they all look alike.
        canvas = Image.new(mode, img.size)
        canvas.paste(img.convert(mode), mask=img.getchannel("A"))
        return canvas
    return img if img.mode == mode else img.convert(mode)


def _choose_size(root: Path, sizes: list[tuple[int, int]]) -> tuple[int, int]:
    """The images' common (height, width), else a square side from their shorter sides."""
    distinct = sorted(set(sizes))
    if len(distinct) == 1:
        return distinct[0]
    # median_low: a size that occurs, so those images are not resampled at all.
    median = statistics.median_low(min(h, w) for h, w in sizes)
    side = min(max(median, CHOSEN_SIZES[0]), CHOSEN_SIZES[1])
    shown = ", ".join(f"{h}x{w}" for h, w in distinct[:3]) + (", ..." if len(distinct) > 3 else "")
    log.info("the images in %s have %d sizes (%s): resizing to %dx%d, the median of their shorter "
             "sides (%d) clamped to %d..%d; set image_size to choose another", root,
             len(distinct), shown, side, side, median, *CHOSEN_SIZES)
    return side, side


def _check_failures(root: Path, files: list[tuple[str, int]], failed: dict[int, str]) -> None:
    if len(failed) == len(files):
        first = min(failed)
        raise UsageError(f"none of the {len(files)} image files in {shorten(str(root), 200)} "
                         f"can be decoded ({shorten(files[first][0])}: "
                         f"{shorten(failed[first], 100)})")
    if len(failed) > MAX_UNREADABLE * len(files):
        raise UsageError(f"{len(failed)} of {len(files)} image files in "
                         f"{shorten(str(root), 200)} cannot be decoded (more than "
                         f"{MAX_UNREADABLE:.0%}): "
                         f"{_first(tuple(files[i][0] for i in sorted(failed)))}")


def _first(names: tuple[str, ...], count: int = 3) -> str:
    return ", ".join(shorten(n) for n in names[:count]) + (", ..." if len(names) > count else "")
