"""What an image folder in torchvision's `ImageFolder` layout (`root/<class>/<image>`) holds:
its class directories and their image files, by extension, and what lies elsewhere (loose
files, directories without images), said aloud rather than dropped in silence."""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from tuning.errors import UsageError, shorten

log = logging.getLogger("tuning")

EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".pgm"})
"""The files read as images, by extension: those of torchvision's ImageFolder, and .gif."""


@dataclass(frozen=True)
class Listing:
    """The files under a folder, as relative paths in name order."""

    by_class: dict[str, list[str]]
    """Image files (by extension) per class directory."""
    no_images: list[str]
    """Directories without an image file: no classes."""
    outside: list[str]
    """Files in the folder itself, outside any class directory."""
    others: list[str]
    """Files in class directories that are not images by their extension."""


def list_files(root: Path) -> Listing:
    """The files under `root`, by where they lie. Names starting with '.' (.DS_Store,
    .ipynb_checkpoints) are skipped."""
    listing = Listing(by_class={}, no_images=[], outside=[], others=[])
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            listing.outside.append(entry.name)
            continue
        _check_class_name(root, entry.name)
        images, others = _class_files(root, entry)
        listing.others.extend(others)
        if images:
            listing.by_class[entry.name] = images
        else:
            listing.no_images.append(entry.name)
    return listing


def _check_class_name(root: Path, name: str) -> None:
    """UsageError for a class directory whose name is not UTF-8 (bytes Python decoded as
    surrogates, from an archive made on another system): the class names are written into the
    study, the report and the export, which cannot hold such a name."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raw = os.fsencode(name)
        raise UsageError(f"class folder {shorten(repr(raw), 80)} in {shorten(str(root), 150)!r}"
                         " has a name that is not UTF-8: rename it (its class is named after "
                         "it)") from None


def _class_files(root: Path, directory: Path) -> tuple[list[str], list[str]]:
    """The image files under `directory` and its other files, as relative paths from `root`.

    Like torchvision, subdirectories are searched and links to directories followed, but not
    a link to a directory it lies in (the folder itself, say): that cycle would never end, or
    bring in the other classes' images. Nor a directory already searched through another link:
    its images would count twice.
    """
    images: list[str] = []
    others: list[str] = []
    searched: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=True):
        real = os.path.realpath(dirpath)
        parent = os.path.realpath(os.path.dirname(dirpath))
        cycle = os.path.commonpath([real, parent]) == real
        if cycle:
            log.info("not following the link %s: it leads to a directory it lies in",
                     Path(dirpath).relative_to(root).as_posix())
        if cycle or real in searched:
            dirnames[:] = []
            continue
        searched.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(n for n in filenames if not n.startswith(".")):
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            (images if is_image(name) else others).append(rel)
    return sorted(images), others


def is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in EXTENSIONS


def special_kind(path: Path) -> str | None:
    """What `path` is when it is not a regular file (links followed): "a FIFO", "a socket", "a
    device", "a directory"; None for a regular file. Only a regular file may be opened to read
    an image: opening a FIFO waits for a writer (forever, if none comes), and a device may
    never end. Found by its mode alone, without opening it. OSError when it cannot be stat'ed
    (a dangling link)."""
    mode = os.stat(path).st_mode
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "a special file"


def no_classes_message(root: Path, listing: Listing) -> str:
    found = []
    if listing.no_images:
        found.append(f"directories without such files: {first_names(tuple(listing.no_images))}")
    if loose := [name for name in listing.outside if is_image(name)]:
        found.append(f"{len(loose)} image{'s' * (len(loose) > 1)} outside any class "
                     f"directory (e.g. {shorten(loose[0])})")
    return (f"{shorten(str(root), 200)} holds no class directories with images (expected "
            f"<folder>/<class>/<image>, an image ending in {_extensions()})"
            + "".join(f"; {part}" for part in found))


def log_ignored(root: Path, listing: Listing) -> None:
    if listing.no_images:
        log.warning("ignored %d director%s in %s without image files (by their extension: %s), "
                    "so no classes: %s", len(listing.no_images),
                    "y" if len(listing.no_images) == 1 else "ies", root, _extensions(),
                    first_names(tuple(listing.no_images)))
    parts = []
    if listing.outside:
        parts.append(f"{len(listing.outside)} outside any class directory (e.g. "
                     f"{shorten(listing.outside[0])})")
    if listing.others:
        parts.append(f"{len(listing.others)} without an image extension (e.g. "
                     f"{shorten(listing.others[0])})")
    if parts:
        # An image beside the class directories is likely meant to be used: say so louder.
        lost = any(is_image(name) for name in listing.outside)
        log.log(logging.WARNING if lost else logging.INFO, "ignored %d files in %s: %s",
                len(listing.outside) + len(listing.others), root, "; ".join(parts))


def _extensions() -> str:
    return " ".join(sorted(EXTENSIONS))


def label_order(root: Path, found: tuple[str, ...], given: tuple[str, ...] | None,
                 training: tuple[str, ...] | None) -> tuple[str, ...]:
    if given is not None and sorted(given) != sorted(found):
        # Renaming by position would label each class's images with another class's name.
        raise UsageError(f"class_names {_names(given)} do not match the classes of "
                         f"{shorten(str(root), 200)}, its class directories {_names(found)}: "
                         "an image folder's directory names are its class names, and "
                         "class_names may only reorder them (or remove class_names)")
    if training is not None:
        unknown = [name for name in found if name not in training]
        if unknown:
            raise UsageError(f"{shorten(str(root), 200)} has class directory "
                             f"{shorten(unknown[0])!r}, not one of the training classes "
                             f"{_names(training)}")
    names = given or training or found
    if len(names) < 2:
        raise UsageError(f"{shorten(str(root), 200)} holds one class ({shorten(names[0])!r}): "
                         "a classifier needs at least two class directories")
    return names


def _names(names: tuple[str, ...]) -> str:
    return shorten(", ".join(names), 200)


def first_names(names: tuple[str, ...], count: int = 3) -> str:
    return ", ".join(shorten(n) for n in names[:count]) + (", ..." if len(names) > count else "")
