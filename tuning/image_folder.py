"""An image folder in torchvision's `ImageFolder` layout (`root/<class>/<image>`) read into one
uint8 array of one size and channel count, decoded once and cached on disk.

The cache is keyed by the folder's content (each image file's relative path, size and mtime) and
the options, not by its location. Workers that start together decode once, under a file lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout
from PIL import Image, ImageOps
from tqdm import tqdm  # type: ignore[import-untyped]

from tuning.array_files import MIN_SIDE
from tuning.errors import UsageError, shorten
from tuning.folder_listing import (
    first_names,
    label_order,
    list_files,
    log_ignored,
    no_classes_message,
    special_kind,
)
from tuning.settings import setting

log = logging.getLogger("tuning")

FORMAT_VERSION = 3
"""Part of every cache key: raise it when what a cache holds, or how it is decoded, changes.
(3: the channels and size are chosen from the files that decode, and only regular files are
read; a cache of 2 may hold a folder made colour by a file it skipped.)"""
GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})
MAX_UNREADABLE = 0.10
"""The share of image files that may fail to decode before the folder is an error."""
IMAGE_SIZES = (MIN_SIDE, 1024)
CHOSEN_SIZES = (16, 128)
"""The range a chosen size is clamped to when the images' sizes differ."""
NARROW_16BIT = 4096
"""16-bit images whose values all lie below this (12-bit data, say) are warned about: scaled
from 0..65535 to 8 bits, as tuning.exported decodes them too, they keep 16 grey levels or fewer."""


@dataclass(frozen=True)
class FolderImages:
    """The decoded images of one folder. Order: classes in order, then files by relative path."""

    x: np.ndarray
    """uint8, shape (N, H, W, C), C 1 or 3, channels last."""
    y: np.ndarray
    """int64, shape (N,): each image's index into `class_names`."""
    class_names: tuple[str, ...]
    """The class directories' names, sorted (or in the order of the caller's `class_names` or
    `training_classes`)."""
    skipped: tuple[str, ...]
    """Relative paths of the image files that could not be decoded."""
    narrow_16bit: int = 0
    """How many of the 16-bit images have values below NARROW_16BIT only."""
    narrow_16bit_max: int = 0
    """The largest value in those images."""


def default_cache_dir() -> Path:
    """$TUNING_CACHE_DIR, else the user's cache directory (XDG) + tuning/images."""
    chosen = setting("TUNING_CACHE_DIR")
    if chosen:
        return Path(chosen)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tuning" / "images"


def read_image_folder(root: Path, *, image_size: int | None = None, channels: int | None = None,
                      class_names: tuple[str, ...] | None = None,
                      training_classes: tuple[str, ...] | None = None,
                      cache_dir: Path | None = None, progress: bool = True) -> FolderImages:
    """The images under `root/<class>/`, from the cache when the folder has not changed.

    `image_size`: square side to resize and centre-crop to (default: the images' common size,
    else a chosen one). `channels`: 1 or 3 (default 3 if any image has colour). Both defaults
    count the images that decode only: not the files skipped.
    `class_names`: the label order, naming exactly the class directories (default: sorted).
    `training_classes`: when `root` is a separate test folder, the training folder's classes:
    labels follow them, and the test folder may lack some but have no others.
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
    listing = list_files(root)
    if not listing.by_class:
        raise UsageError(no_classes_message(root, listing))
    log_ignored(root, listing)
    names = label_order(root, tuple(listing.by_class), class_names, training_classes)
    files = [(rel, names.index(name)) for name, rels in listing.by_class.items() for rel in rels]
    stamps = [(rel, *_stamp(root / rel)) for rel, _ in files]
    key = hashlib.sha256(json.dumps({
        "version": FORMAT_VERSION, "files": stamps, "image_size": image_size,
        "channels": channels, "class_names": names}).encode()).hexdigest()

    def decode() -> FolderImages:
        return _decode(root, files, names, image_size, channels, progress)

    images = _cached(Path(cache_dir or default_cache_dir()), key, decode)
    # A link whose target is gone is no image that failed to decode: said apart.
    broken = tuple(rel for rel in images.skipped
                   if (root / rel).is_symlink() and not (root / rel).exists())
    undecoded = tuple(rel for rel in images.skipped if rel not in broken)
    if undecoded:
        log.warning("skipped %d of %d image files in %s that cannot be decoded: %s",
                    len(undecoded), len(files), root, first_names(undecoded))
    if broken:
        log.warning("skipped %d of %d image files in %s that are symbolic links to nothing: %s",
                    len(broken), len(files), root, first_names(broken))
    if images.narrow_16bit:
        # The scaling stays: the exported model decodes a user's image the same way.
        levels = images.narrow_16bit_max // 257 + 1
        log.warning("%d of the %d images in %s are 16- or 32-bit integer images with values up "
                    "to %d only (read as 0..65535): scaled to 8 bits they keep %s; save them as "
                    "8-bit images, scaled as you want them", images.narrow_16bit, len(images.y),
                    root, images.narrow_16bit_max,
                    "1 grey level" if levels == 1 else f"{levels} grey levels")
    return images


def _stamp(path: Path) -> tuple[int, int]:
    """(size, modification time): what the cache key holds of one file. (-1, -1) when it cannot
    be read (a dangling link): decoding it then fails, and it is skipped like any such file."""
    try:
        stat = path.stat()
    except OSError:
        return -1, -1
    return stat.st_size, stat.st_mtime_ns


def _cached(cache_dir: Path, key: str, decode: Callable[[], FolderImages]) -> FolderImages:
    """`decode()`'s result, read from `cache_dir` or decoded once under a lock and saved there."""
    path = cache_dir / f"{key}.npz"
    # First without the lock: a cache prepared on a read-only disk is still used.
    images = _load(path, warn=True)
    if images is not None:
        return images
    from tuning.storage import still_the_file_found

    lock_path = cache_dir / f"{key}.lock"
    with contextlib.ExitStack() as held:
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            found_there = held.enter_context(still_the_file_found(lock_path))
            lock = FileLock(str(lock_path))
            try:
                lock.acquire(timeout=0)
            except Timeout:
                log.info("waiting for another process decoding the same images (%s)",
                         lock.lock_file)
                lock.acquire()
        except OSError as exc:
            log.warning("cannot write the image cache in %s (%s): decoding without caching",
                        cache_dir, exc.strerror or exc)
            return decode()
        try:
            images = _load(path, warn=False)  # built by the process that held the lock before
            if images is None:
                try:
                    images = decode()
                except BaseException:
                    # Bad images leave no lock file behind (one found here is not ours).
                    # Removed while still held: a process waiting for it finds the file it
                    # opened gone and makes its own, which filelock checks for.
                    if not found_there():
                        with contextlib.suppress(OSError):
                            lock_path.unlink()
                    raise
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
                                  skipped=tuple(str(s) for s in f["skipped"]),
                                  narrow_16bit=int(f["narrow_16bit"]),
                                  narrow_16bit_max=int(f["narrow_16bit_max"]))
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
                     skipped=np.array(images.skipped, str),
                     narrow_16bit=images.narrow_16bit, narrow_16bit_max=images.narrow_16bit_max)
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
    headers: dict[int, tuple[int, int, str]] = {}
    if image_size is None or channels is None:
        # A first pass over the headers alone (Image.open does not decode) decides the size and
        # channels, so that the decoding pass can write each image straight into the array.
        headers = _read_headers(root, files, failed)
        if not headers:
            _check_failures(root, files, names, failed)  # none is readable; the rest below
    shape = _choose_shape(root, headers, image_size, channels)
    bar = progress and sys.stderr.isatty()  # else a log file would fill with redrawn bars
    while True:
        if image_size is None:
            _log_resizing(root, [(h, w) for h, w, _ in headers.values()], shape[:2])
        x, narrow_maxima = _decode_all(root, files, shape, failed, bar)
        _check_failures(root, files, names, failed)
        # A file whose header reads but whose pixels do not (a truncated JPEG) took part in the
        # choice: without it, the images used may all be grayscale, or of one size. Chosen
        # again from those alone, and only where that changes the shape (rare) decoded again.
        # It ends: a shape changes only when more files failed, and they only ever join.
        for i in failed:
            headers.pop(i, None)
        chosen = _choose_shape(root, headers, image_size, channels)
        if chosen == shape:
            break
        log.info("the images in %s that decode are %dx%dx%d, not %dx%dx%d as with the files "
                 "that do not: decoding them again", root, chosen[2], chosen[0], chosen[1],
                 shape[2], shape[0], shape[1])
        shape = chosen
    keep = np.array([i not in failed for i in range(len(files))], dtype=bool)
    images = FolderImages(x=x[keep] if failed else x,
                          y=np.array([label for _, label in files], np.int64)[keep],
                          class_names=names,
                          skipped=tuple(files[i][0] for i in sorted(failed)),
                          narrow_16bit=len(narrow_maxima),
                          narrow_16bit_max=max(narrow_maxima, default=0))
    if not bar:
        log.info("decoded %d images from %s in %.1f s", len(images.y), root,
                 time.perf_counter() - started)
    return images


def _read_headers(root: Path, files: list[tuple[str, int]],
                  failed: dict[int, str]) -> dict[int, tuple[int, int, str]]:
    """(height, width, mode) of each file, by index, from its header; those that cannot be
    opened go into `failed`."""
    headers = {}
    for i, (rel, _) in enumerate(files):
        try:
            with open_image(root / rel) as img:
                headers[i] = (img.height, img.width, img.mode)
        except Exception as exc:  # Pillow raises many kinds for a bad file: all unreadable
            failed[i] = str(exc)
    return headers


def _choose_shape(root: Path, headers: dict[int, tuple[int, int, str]], image_size: int | None,
                  channels: int | None) -> tuple[int, int, int]:
    """(height, width, channels) of the array: those given, else from the images' headers
    (3 channels if any has colour; their common size, else a chosen one)."""
    if channels is None:
        colour = any(mode not in GRAY_MODES and not mode.startswith("I;16")
                     for _, _, mode in headers.values())
        channels = 3 if colour else 1
    if image_size is not None:
        return image_size, image_size, channels
    height, width = _choose_size(root, [(h, w) for h, w, _ in headers.values()])
    return height, width, channels


def _decode_all(root: Path, files: list[tuple[str, int]], shape: tuple[int, int, int],
                failed: dict[int, str], bar: bool) -> tuple[np.ndarray, list[int]]:
    """The images in an array, each of `shape` (the rows of `failed` files left unset), and
    the largest values of the narrow 16-bit ones. Files that fail to decode join `failed`."""
    height, width, channels = shape
    mode = "RGB" if channels == 3 else "L"
    x = np.empty((len(files), *shape), np.uint8)
    if not bar:
        log.info("decoding %d images from %s", len(files), root)
    narrow_maxima = []
    for i, (rel, _) in enumerate(tqdm(files, desc=f"decoding {root.name}", unit="img",
                                      file=sys.stderr, disable=not bar)):
        if i not in failed:
            try:
                image, deep_max = _decode_one(root / rel, mode, (height, width))
                x[i] = image.reshape(shape)
            except Exception as exc:  # as above: truncated, corrupt or an unsupported variant
                failed[i] = str(exc)
                continue
            if deep_max is not None and deep_max < NARROW_16BIT:
                narrow_maxima.append(deep_max)
    return x, narrow_maxima


def open_image(path: Path) -> Image.Image:
    """Image.open(path) (the header only) for a regular file; OSError, without opening it, for
    anything else (folder_listing.special_kind: a FIFO would block the read forever)."""
    kind = special_kind(path)
    if kind is not None:
        raise OSError(f"not a regular file ({kind})")
    with warnings.catch_warnings():
        # Pillow warns of an image over 89M pixels as a possible decompression bomb and
        # refuses one over twice that (an error, said in one line): a large photo between is
        # read as any other, without a raw warning among the command's lines.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(path)


def _decode_one(path: Path, mode: str, size: tuple[int, int]) -> tuple[np.ndarray, int | None]:
    """The image at `path` as an array of `size`, and for a 16-bit image its largest value."""
    with open_image(path) as img:
        img.load()  # decode now, so that a truncated file fails here (LOAD_TRUNCATED_IMAGES off)
        deep_max = _largest_value(img) if img.mode.startswith("I") else None
        img = convert_mode(img, mode)
    height, width = size
    if img.size != (width, height):
        # Shorter side to the target, then the centre: the aspect ratio is kept, not squashed.
        img = ImageOps.fit(img, (width, height), Image.Resampling.BILINEAR)
    return np.asarray(img), deep_max


def _largest_value(img: Image.Image) -> int:
    extrema = img.getextrema()  # computed by Pillow without a copy of the pixels
    return int(extrema[1])  # type: ignore[arg-type]  # one band: (low, high), numbers


def convert_mode(img: Image.Image, mode: str) -> Image.Image:
    """`img` in `mode` ("L" or "RGB"), as the study's images were decoded: 16-bit grayscale
    scaled to 8 bits, float grayscale from 0..1 or 0..255, transparency composited on black.
    Multi-frame files (GIF, TIFF) give their first frame. Also what tuning.exported decodes a
    user's image with."""
    if img.mode.startswith("I"):
        # 16-bit grayscale (PNG, TIFF, PGM): Pillow's convert clips at 255, which turns most of
        # such an image white; scale 0..65535 to 0..255 instead.
        img = Image.fromarray((np.clip(np.asarray(img), 0, 65535) // 257).astype(np.uint8))
    if img.mode == "F":
        # 32-bit float grayscale (TIFF): Pillow's convert clips, which turns an image in 0..1
        # black. As an .npz's floats: 0..1 where its brightest pixel is at most 1, else 0..255.
        values = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=255.0,
                               neginf=0.0)
        scale = 255.0 if values.max(initial=0.0) <= 1.0 else 1.0
        img = Image.fromarray(np.rint(np.clip(values * scale, 0, 255)).astype(np.uint8))
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
        if min(distinct[0]) < MIN_SIDE:  # as an .npz's images: a network has nothing to pool
            raise UsageError(f"the images in {shorten(str(root), 200)} are "
                             f"{distinct[0][0]}x{distinct[0][1]}; height and width must be at "
                             f"least {MIN_SIDE}: set image_size to resize them")
        return distinct[0]
    side = min(max(_median_side(sizes), CHOSEN_SIZES[0]), CHOSEN_SIZES[1])
    return side, side


def _median_side(sizes: list[tuple[int, int]]) -> int:
    # median_low: a size that occurs, so those images are not resampled at all.
    return statistics.median_low(min(h, w) for h, w in sizes)


def _log_resizing(root: Path, sizes: list[tuple[int, int]], size: tuple[int, int]) -> None:
    """Says which size images of several `sizes` are resized to (`size`), and why. Apart from
    _choose_size, which may choose again once files fail to decode."""
    distinct = sorted(set(sizes))
    if len(distinct) < 2:
        return
    shown = ", ".join(f"{h}x{w}" for h, w in distinct[:3]) + (", ..." if len(distinct) > 3 else "")
    log.info("the images in %s have %d sizes (height x width: %s): resizing to %dx%d, the median "
             "of their shorter sides (%d) clamped to %d..%d; set image_size to choose another",
             root, len(distinct), shown, *size, _median_side(sizes), *CHOSEN_SIZES)


def _check_failures(root: Path, files: list[tuple[str, int]], names: tuple[str, ...],
                    failed: dict[int, str]) -> None:
    if len(failed) == len(files):
        first = min(failed)
        raise UsageError(f"none of the {len(files)} image files in {shorten(str(root), 200)} "
                         f"can be decoded ({shorten(files[first][0])}: "
                         f"{shorten(failed[first], 100)})")
    # A class left without images would be a label the network can never learn.
    per_class = Counter(label for _, label in files)
    failed_per_class = Counter(files[i][1] for i in failed)
    for label, count in sorted(failed_per_class.items()):
        if count == per_class[label]:
            first = min(i for i in failed if files[i][1] == label)
            raise UsageError(f"none of the {count} image files of class "
                             f"{shorten(names[label])!r} in {shorten(str(root), 200)} decodes "
                             f"({shorten(files[first][0])}: {shorten(failed[first], 100)}): "
                             "fix or remove the folder")
    if len(failed) > MAX_UNREADABLE * len(files):
        raise UsageError(f"{len(failed)} of {len(files)} image files in "
                         f"{shorten(str(root), 200)} cannot be decoded (more than "
                         f"{MAX_UNREADABLE:.0%}): "
                         f"{first_names(tuple(files[i][0] for i in sorted(failed)))}")
