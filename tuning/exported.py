"""A model written by `tuning export`, loaded again: `load_model(DIR)`.

    model = tuning.load_model("exports/mnist")       # an nn.Module, eval mode, on the CPU
    model.predict(["digit.png"])                     # [("7", 0.998)]
    logits = model(images)                           # float images in [0, 1], (N, C, H, W)

The network is rebuilt from the directory's config.json (the study's model spec and the
trial's parameters) and its weights.pt (a plain state dict, loaded with weights_only=True), so
loading runs no code but tuning's and torch's. The normalization the trial trained with is part
of the model: callers give images as they are, scaled to [0, 1].

`Classifier`, the normalization and the network as one module, is also what `tuning export`
hands to torch.export and TorchScript for the portable programs that need no `tuning` at all.
`load_program(DIR)` loads such a program behind the same `predict`: what `tuning predict` runs
when the network's builder cannot be imported where it runs.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import nn

from tuning.device import missing_gpu
from tuning.errors import UsageError, shorten
from tuning.folder_listing import special_kind
from tuning.image_folder import convert_mode, open_image

FORMAT = "tuning-export"
"""config.json's `format`: how a directory written by `tuning export` is told from others."""
FORMAT_VERSION = 1
"""config.json's `format_version`: raise it when what the files hold changes incompatibly."""
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.pt"
PREDICT_BATCH = 256
"""Images per forward pass in `predict`: bounded memory for any number of images."""

ImageInput = str | Path | Image.Image
"""What `preprocess` and `predict` take: a file's path or a PIL image."""
IMAGE_FILES = ("decoded with Pillow to grayscale (L) or RGB as the model has 1 or 3 channels "
               "(16-bit grayscale divided by 257, 32-bit float grayscale in 0..1 times 255, "
               "transparent pixels on black); where the size "
               "differs from input_shape's, PIL.ImageOps.fit to its width x height with "
               "bilinear resampling (the shorter side scaled to fit, the centre cropped); "
               "pixels divided by 255")
"""How `ExportedModel.pixels` reads an image file, as config.json records it for programs
that read images without tuning."""


class ExportError(UsageError):
    """A directory that is not a usable export (missing, foreign, damaged), or an image that
    cannot be read: one line for the user."""


class NotRebuilt(ExportError):
    """An export whose network cannot be rebuilt here with its weights: the builder cannot
    be imported, fails or makes another network; weights.pt is missing, damaged or does not
    fit. Its portable program (program_file), which holds the network and its weights and
    needs torch alone, may still run it: load_program, as `tuning predict` does."""


class BuilderUnavailable(NotRebuilt):
    """An export whose network a user's builder makes, and that builder cannot be imported
    here. `not_installed`: its module is not there at all (the expected case on a machine
    with torch alone), rather than there and failing."""

    def __init__(self, message: str, not_installed: bool):
        super().__init__(message)
        self.not_installed = not_installed


class NetworkChanged(NotRebuilt):
    """An export whose network, rebuilt here with its weights, does not give the logits the
    export recorded (config.json's `output_check`): its builder's code, or torch's or
    torchvision's, differs from the export's."""


OUTPUT_CHECK_IMAGES = 3
"""How many images config.json's `output_check` holds the exported network's logits of."""


def output_check_images(input_shape: Sequence[int]) -> torch.Tensor:
    """The images of config.json's `output_check`: uniform in [0, 1], from a seeded generator,
    the same on every machine."""
    generator = torch.Generator().manual_seed(0)
    return torch.rand((OUTPUT_CHECK_IMAGES, *input_shape), generator=generator)


MAX_FLOAT_PIXEL = 1.5
"""The highest float pixel taken: resizing may overshoot 1 a little; 0..255 goes far past."""


class Classifier(nn.Module):
    """`network` behind the normalization it was trained with: float images in [0, 1],
    (N, C, H, W), to logits (N, classes).

    The arithmetic is tuning.data.Split.batch's ((x - mean) / std in float32), so that the
    same images give the same logits as in the study's evaluation."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, network: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.network = network
        channels = len(mean)
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32)
                             .view(1, channels, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32)
                             .view(1, channels, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network((images - self.mean) / self.std)


class ExportedModel(Classifier):
    """An exported trial's network, ready to classify images (see the module's docstring)."""

    def __init__(self, network: nn.Module, config: dict):
        norm = config["normalization"]
        super().__init__(network, norm["mean"], norm["std"])
        self.config = config
        """config.json as a dict: the study, trial, parameters, data and test metrics."""
        self.class_names: tuple[str, ...] = tuple(config["class_names"])
        """One name per class, in the order of the logits."""
        self.input_shape: tuple[int, int, int] = tuple(config["input_shape"])
        """(C, H, W) of the images the network takes."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return super().forward(self.checked(images))

    def checked(self, images: torch.Tensor) -> torch.Tensor:
        """`images` in the network's float type; ExportError for a shape other than the
        study's (the normalization would broadcast a 1-channel batch to 3 channels and
        classify it without a word) or whole numbers (uint8 pixels of 0..255 would be taken
        as [0, 1] and classified wrongly without a word)."""
        c, h, w = self.input_shape
        if images.dim() != 4 or tuple(images.shape[1:]) != self.input_shape:
            raise ExportError(f"the model takes float images (N, {c}, {h}, {w}) in [0, 1], got "
                              f"a tensor of shape {tuple(images.shape)}: "
                              "torch.stack([model.preprocess(image), ...]) converts and fits "
                              "images into a batch")
        if not images.is_floating_point():
            raise ExportError(f"the model takes float images in [0, 1], got {images.dtype}: "
                              "divide pixels of 0..255 by 255 (images.float() / 255), or "
                              "model.preprocess(image) converts an image")
        # Float pixels of 0..255 too; not while a compiler traces it, where a tensor's values
        # are unknown.
        tracing = torch.compiler.is_compiling() or torch.jit.is_tracing()
        if not tracing and images.numel() and (top := float(images.max())) > MAX_FLOAT_PIXEL:
            raise ExportError(f"the model takes float images in [0, 1], got values up to "
                              f"{top:.4g}: divide pixels of 0..255 by 255")
        return images.to(self.mean.dtype)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def image_mode(self) -> str:
        """The Pillow mode image files are converted to: "L" or "RGB". ExportError for a
        network of other than 1 or 3 channels, which takes tensors only."""
        channels = self.input_shape[0]
        if channels not in (1, 3):
            raise ExportError(f"the model takes {channels}-channel images: give them as "
                              "tensors, not image files")
        return "L" if channels == 1 else "RGB"

    def pixels(self, image: ImageInput) -> np.ndarray:
        """`image` decoded as the study's images were (tuning.image_folder): converted to
        grayscale or RGB, fitted to H x W (shorter side, then the centre, bilinear) when its
        size differs; uint8 (H, W, C). ExportError when it cannot be read."""
        channels, height, width = self.input_shape
        mode = self.image_mode()
        if isinstance(image, Image.Image):
            img = convert_mode(image, mode)
        else:
            img = _open(Path(image), mode)
        if img.size != (width, height):
            img = ImageOps.fit(img, (width, height), Image.Resampling.BILINEAR)
        # A copy: Pillow's buffer is read-only, which torch warns about when it wraps one.
        return np.array(img, dtype=np.uint8).reshape(height, width, channels)

    def preprocess(self, image: ImageInput) -> torch.Tensor:
        """`image` (a path or a PIL image) as the network takes it: float (C, H, W) in [0, 1],
        on the model's device."""
        return _to_tensor(self.pixels(image)[None], self.device)[0]

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Softmax of the logits of float images (N, C, H, W) in [0, 1], in batches."""
        out = [torch.softmax(self._logits(images[i:i + PREDICT_BATCH]).float(), dim=1)
               for i in range(0, len(images), PREDICT_BATCH)]
        return torch.cat(out) if out else torch.empty(0, len(self.class_names))

    def _logits(self, images: torch.Tensor) -> torch.Tensor:
        logits = self(images.to(self.device))
        # A rebuilt network has as many outputs as config.json's classes (its weights must
        # fit); a program need not, where config.json was edited after the export.
        if logits.dim() != 2 or logits.shape[1] != len(self.class_names):
            raise ExportError(f"the model gives logits of shape {tuple(logits.shape)} for "
                              f"{len(images)} image{'s' * (len(images) != 1)}, not "
                              f"({len(images)}, {len(self.class_names)}): (images, classes), "
                              f"with the {len(self.class_names)} classes its {CONFIG_FILE} "
                              "names")
        return logits

    def predict(self, images: ImageInput | Sequence[ImageInput]) -> list[tuple[str, float]]:
        """The most likely class of each image (paths or PIL images) and its probability."""
        return [top[0] for top in self.predict_top(images, 1)]

    def predict_top(self, images: ImageInput | Sequence[ImageInput],
                    k: int = 5) -> list[list[tuple[str, float]]]:
        """The `k` most likely classes of each image, most likely first, with probabilities.
        Every image is decoded before any is classified: a bad one raises ExportError."""
        if isinstance(images, (str, Path, Image.Image)):
            images = [images]
        pixels = [self.pixels(image) for image in images]
        return self.top_classes(pixels, k)

    def top_classes(self, pixels: Sequence[np.ndarray], k: int) -> list[list[tuple[str, float]]]:
        """predict_top for images already decoded by `pixels` (uint8, H x W x C each).
        ValueError for a `k` below 1 (as the CLI refuses --top 0); above the number of classes,
        every class."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k is how many classes to give per image, 1 or more; got "
                             f"{shorten(repr(k))}")
        k = min(k, len(self.class_names))
        results: list[list[tuple[str, float]]] = []
        for start in range(0, len(pixels), PREDICT_BATCH):
            batch = _to_tensor(np.stack(pixels[start:start + PREDICT_BATCH]), self.device)
            values, indices = self.probabilities(batch).topk(k, dim=1)
            for row_values, row_indices in zip(values.tolist(), indices.tolist(), strict=True):
                results.append([(self.class_names[i], p)
                                for i, p in zip(row_indices, row_values, strict=True)])
        return results


def _open(path: Path, mode: str) -> Image.Image:
    shown = shorten(str(path), 200)
    if not path.exists():
        raise ExportError(f"image {shown!r} does not exist")
    if path.is_dir():
        raise ExportError(f"image {shown!r} is a directory; give the images in it "
                          f"({shorten(str(path), 40)}/*)")
    # Checked before opening: opening a FIFO waits for a writer, forever if none comes.
    kind = special_kind(path)
    if kind is not None:
        raise ExportError(f"image {shown!r} is not a regular file: it is {kind}")
    try:
        with open_image(path) as img:
            img.load()  # decode now: a truncated file fails here, not later
            return convert_mode(img, mode)
    except Exception as exc:  # Pillow raises many kinds for a bad file: all mean unreadable
        reason = shorten(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, 120)
        raise ExportError(f"image {shown!r} cannot be decoded: {reason}") from None


def _to_tensor(pixels: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (N, H, W, C) to float (N, C, H, W) in [0, 1], scaled as tuning.data does."""
    images = torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)))
    return images.to(device).float().div_(255.0)


def _refuse_special(file: Path) -> None:
    """ExportError for a file of the export that is not a regular file: reading a FIFO waits
    for a writer, forever if none comes. FileNotFoundError where there is none."""
    kind = special_kind(file)
    if kind is not None:
        raise ExportError(f"{shorten(str(file), 200)!r} is not a regular file: it is {kind}")


def read_config(path: str | Path) -> dict:
    """config.json of the export in directory `path`; ExportError when there is none, or
    when a field the model is rebuilt from is missing or of the wrong type or count."""
    directory = Path(path).expanduser()
    shown = shorten(str(directory), 200)
    if not directory.is_dir():
        # Offline, the default study is mnist-sample and its export lands beside: say so.
        sample = directory.with_name(f"{directory.name}-sample")
        where = (f"; {shorten(str(sample), 200)!r} is one" if directory.name
                 and sample.is_dir() else "")
        raise ExportError(f"no exported model at {shown!r}: not a directory (give the "
                          f"directory `tuning export --out` wrote{where})")
    file = directory / CONFIG_FILE
    try:
        _refuse_special(file)
        config = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExportError(f"{shown!r} is not an exported model: it has no {CONFIG_FILE} "
                          "(give the directory `tuning export --out` wrote)") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ExportError(f"{shorten(str(file), 200)!r} cannot be read: "
                          f"{shorten(str(exc), 120)}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ExportError(f"{shorten(str(file), 200)!r} was not written by tuning export")
    version = config.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ExportError(f"{shown!r} is an export of format version {shorten(repr(version))}; "
                          f"this tuning reads up to {FORMAT_VERSION}: upgrade tuning")
    missing = [key for key in ("model", "params", "input_shape", "num_classes", "class_names",
                               "normalization") if key not in config]
    if missing:
        raise ExportError(f"{shorten(str(file), 200)!r} lacks {', '.join(missing)}")
    problems = _field_problems(config)
    if problems:
        raise ExportError(shorten(f"{shorten(str(file), 200)!r} cannot be used: "
                                  + "; ".join(problems), 600))
    return config


def _field_problems(config: dict) -> list[str]:
    """What config.json's fields that rebuild the model get wrong (a hand edit, say), each
    naming the field and its value. Unchecked, they fail far from the cause: too few class
    names an IndexError in predict, a std of 0 NaN probabilities with exit status 0."""
    problems = []
    for key in ("model", "params"):
        if not isinstance(config[key], dict):
            problems.append(f"{key} is {_shown(config[key])}, not an object")
    shape = config["input_shape"]
    channels = None
    if isinstance(shape, list) and len(shape) == 3 and all(_count(n) for n in shape):
        channels = shape[0]
    else:
        problems.append(f"input_shape is {_shown(shape)}, not [channels, height, width] "
                        "(positive integers)")
    classes = config["num_classes"]
    if not _count(classes):
        problems.append(f"num_classes is {_shown(classes)}, not a positive integer")
    names = config["class_names"]
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        problems.append(f"class_names is {_shown(names)}, not a list of names (strings)")
    elif _count(classes) and len(names) != classes:
        problems.append(f"class_names has {len(names)} names, not one per class "
                        f"(num_classes is {classes})")
    norm = config["normalization"]
    if not isinstance(norm, dict):
        problems.append(f"normalization is {_shown(norm)}, not an object with mean and std")
        return problems
    for key in ("mean", "std"):
        values = norm.get(key)
        field = f"normalization.{key}"
        if not isinstance(values, list) or not values or not all(map(_finite, values)):
            problems.append(f"{field} is {_shown(values)}, not a list of finite numbers")
        elif channels is not None and len(values) != channels:
            problems.append(f"{field} has {len(values)} values, not one per channel "
                            f"(input_shape has {channels})")
        elif key == "std" and any(value <= 0 for value in values):
            problems.append(f"{field} is {_shown(values)}: each must be above 0 (the images "
                            "are divided by it)")
    return problems


def _shown(value: object) -> str:
    """A value of config.json as it is written there (null, true), cut short."""
    return shorten(json.dumps(value, ensure_ascii=False), 80)


def _count(value: object) -> bool:
    """Whether `value` is a positive integer (JSON's true is not one)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _finite(value: object) -> bool:
    """Whether `value` is a finite number (JSON reads NaN and Infinity, and integers of any
    size, which float() cannot hold)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _builder_problem(spec, path: str | Path) -> BuilderUnavailable | None:
    """Why the builder of `spec` (a ModelSpec of a user's "module:function") cannot be used
    here, in a line that fits loading an export; None when it imports, and for the built-in
    and torchvision models."""
    from tuning.networks import BuilderNotInstalled, check_importable_here

    try:
        check_importable_here(spec)
    except BuilderNotInstalled as exc:
        cause = exc.cause
        why = (f"{type(cause).__name__}: {shorten(str(cause).splitlines()[0], 120)}"
               if str(cause) else shorten(str(exc), 200))
        return BuilderUnavailable(
            f"the network of {shorten(str(path), 200)!r} is built by {shorten(spec.model)!r}, "
            f"which cannot be imported here ({why}); install its package or run from the "
            "directory that holds it", not_installed=True)
    except UsageError as exc:
        # Its module is there but fails (a syntax error, an exception on import, a missing
        # dependency, no such function): the import's own line says what and where.
        return BuilderUnavailable(str(exc), not_installed=False)
    return None


def _read_state(weights: Path) -> dict:
    """The state dict in `weights`; ExportError, one line, when it is missing or not a torch
    weights file (torch's own message for that advises weights_only=False: unsafe, and no
    help with a damaged file)."""
    shown = shorten(str(weights), 200)
    try:
        _refuse_special(weights)
    except FileNotFoundError:
        raise ExportError(f"{shorten(str(weights.parent), 200)!r} has no {WEIGHTS_FILE}"
                          ) from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pickle-protocol notes: the error says enough
            state = torch.load(weights, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ExportError(f"{shorten(str(weights.parent), 200)!r} has no {WEIGHTS_FILE}"
                          ) from None
    except Exception as exc:  # noqa: BLE001 - unpickling, zip or I/O errors: all "not weights"
        raise ExportError(f"{shown!r} is not a torch weights file ({_load_reason(exc)})"
                          ) from None
    if not isinstance(state, dict):
        raise ExportError(f"{shown!r} is not a state dict (names to tensors): it holds "
                          f"{shorten(type(state).__name__)}")
    return state


def _load_reason(exc: BaseException) -> str:
    """torch.load's error in a few words: the unpickler's own complaint where there is one,
    else the first sentence."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        lines = [line.strip() for line in text.split(marker, 1)[1].splitlines()]
        return shorten(next((line for line in lines if line), "cannot be unpickled"), 120)
    first = text.strip().splitlines()[0].split(". ")[0] if text.strip() else ""
    return shorten(f"{type(exc).__name__}: {first}" if first else type(exc).__name__, 120)


def _state_mismatch(expected: dict, state: dict) -> str | None:
    """How `state` does not fit a network whose state dict is `expected`: the first missing
    entry, else the first unexpected one, else the first of another shape, with the counts;
    None when it fits. (load_state_dict's own message begins with a line that names none.)"""
    missing = [name for name in expected if name not in state]
    unexpected = [name for name in state if name not in expected]
    reshaped = [name for name in expected if name in state
                and isinstance(state[name], torch.Tensor)
                and isinstance(expected[name], torch.Tensor)
                and state[name].shape != expected[name].shape]
    ours = " and ".join(f"{len(names)} {what}" for names, what in (
        (missing, "missing"), (reshaped, "of another shape")) if names)
    counts = "; ".join(([f"of the network's {len(expected)} entries, {ours}"] if ours else [])
                       + ([f"{len(unexpected)} not the network's"] if unexpected else []))
    if missing:
        first = f"it lacks {shorten(missing[0], 80)!r}"
    elif unexpected:
        first = f"it has {shorten(unexpected[0], 80)!r}, which the network does not"
    elif reshaped:
        name = reshaped[0]
        first = (f"{shorten(name, 80)!r} is {_shape(state[name])} in it, "
                 f"{_shape(expected[name])} in the network")
    else:
        return None
    return f"{first} ({counts})"


def _shape(tensor: torch.Tensor) -> str:
    return "x".join(map(str, tensor.shape)) or "a scalar"


def load_model(path: str | Path, device: str | torch.device = "cpu") -> ExportedModel:
    """The model `tuning export` wrote into directory `path`, in eval mode on `device`.
    NotRebuilt when its network cannot be rebuilt here with its weights: BuilderUnavailable
    when its network is a builder's that cannot be imported here; NetworkChanged when the
    network rebuilt here does not give the logits the export recorded (its builder, torch or
    torchvision changed since)."""
    from tuning.networks import ModelBuildError, ModelSpec

    config = read_config(path)
    target = _device(device)
    try:
        spec = ModelSpec(**config["model"])
    except TypeError as exc:
        raise ExportError(f"the network of {shorten(str(path), 200)!r} cannot be rebuilt: "
                          f"{shorten(str(exc), 200)}") from None
    problem = _builder_problem(spec, path)
    if problem is not None:
        raise problem
    try:
        network = spec.build(config["params"], tuple(config["input_shape"]),
                             int(config["num_classes"]), load_weights=False)
    except UsageError:
        raise
    except (ModelBuildError, TypeError, ValueError) as exc:
        raise NotRebuilt(f"the network of {shorten(str(path), 200)!r} cannot be rebuilt: "
                         f"{shorten(str(exc), 200)}") from None
    weights = Path(path).expanduser() / WEIGHTS_FILE
    try:
        state = _read_state(weights)
    except ExportError as exc:
        raise NotRebuilt(str(exc)) from None
    # A builder's network that the weights do not fit is most likely the builder changed.
    built_here = " rebuilt here" if spec.kind == "builder" else ""
    mismatch = _state_mismatch(network.state_dict(), state)
    if mismatch:
        raise NotRebuilt(f"{shorten(str(weights), 200)!r} does not fit the network{built_here} "
                         f"config.json describes: {mismatch}")
    try:
        network.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001 - what the comparison above cannot foresee
        reason = shorten(" ".join(str(exc).split()) or type(exc).__name__, 200)
        raise NotRebuilt(f"{shorten(str(weights), 200)!r} does not load into the "
                         f"network{built_here} config.json describes: {reason}") from None
    model = ExportedModel(network, config).eval()
    _check_outputs(model, config, path)
    return _placed(model, target, device)


def _check_outputs(model: ExportedModel, config: dict, path: str | Path) -> None:
    """NetworkChanged unless `model` (on the CPU, eval mode) gives the logits config.json's
    `output_check` recorded at the export (an export without one is not checked): weights
    that fit a network by their names and shapes alone may sit in another network."""
    expected = config.get("output_check")
    if expected is None:
        return
    shape = (OUTPUT_CHECK_IMAGES, len(model.class_names))
    try:
        recorded = torch.tensor(expected, dtype=torch.float32)
    except (TypeError, ValueError, OverflowError, RuntimeError):
        recorded = None
    if recorded is None or tuple(recorded.shape) != shape or not recorded.isfinite().all():
        raise ExportError(f"{CONFIG_FILE} of {shorten(str(path), 200)!r}: output_check is not "
                          f"a {shape[0]} x {shape[1]} table of finite numbers")
    with torch.no_grad():
        got = model(output_check_images(model.input_shape))
    if tuple(got.shape) == shape and torch.allclose(got, recorded, rtol=1e-3, atol=1e-4):
        return
    difference = ((got - recorded).abs().max().item() if tuple(got.shape) == shape
                  else f"shape {tuple(got.shape)}, not {shape}")
    raise NetworkChanged(
        f"the network of {shorten(str(path), 200)!r} rebuilt here (model "
        f"{shorten(str(config['model'].get('model')))!r}) "
        f"does not give the logits recorded at its export (largest difference "
        f"{difference if isinstance(difference, str) else f'{difference:.3g}'}): its "
        "builder, or torch or torchvision, differs from the export's")


Model = TypeVar("Model", bound=ExportedModel)


def _device(device: str | torch.device) -> torch.device:
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError):
        raise ExportError(f"device {shorten(str(device))!r} is not a device (cpu, cuda, "
                          "cuda:N)") from None
    missing = missing_gpu(target)
    if missing:
        raise ExportError(f"device {shorten(str(device))!r}: {missing}")
    return target


def _placed(model: Model, target: torch.device, device: str | torch.device) -> Model:
    """`model` on `target`, in eval mode; ExportError when there is no such device."""
    try:
        model.to(target)
    except (RuntimeError, AssertionError) as exc:  # no CUDA here, or no such GPU
        raise ExportError(f"device {shorten(str(device))!r}: {shorten(str(exc), 120)}") from None
    return model.eval()


class ProgramModel(ExportedModel):
    """An export's portable program (model.pt2 or model.torchscript.pt, the normalization
    inside) with ExportedModel's reading of images and predictions: what `tuning predict`
    runs when the network cannot be rebuilt here. It was exported in eval mode and stays so."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(self.checked(images))

    def train(self, mode: bool = True) -> ProgramModel:
        # torch.export's modules refuse train() and eval() alike: the program is fixed in eval
        # mode, so only this wrapper's flag is set, and training mode is refused.
        if mode:
            raise ExportError("a portable program runs in eval mode only")
        self.training = False
        return self


def program_file(config: dict) -> str | None:
    """The program of an export that can stand in for its network, or None: model.pt2, else a
    TorchScript trace checked on varied inputs (config.json's `program_checks`: an export
    written before that check may hold a trace of one branch of the network)."""
    files = config.get("files")
    if not isinstance(files, dict):
        return None
    if files.get("model.pt2") == "written":
        return "model.pt2"
    if files.get("model.torchscript.pt") == "written" and config.get("program_checks"):
        return "model.torchscript.pt"
    return None


def load_program(path: str | Path, device: str | torch.device = "cpu") -> ProgramModel:
    """The export in directory `path` as its portable program (program_file), on `device`:
    the same logits as load_model's, with torch alone (no builder, no rebuilt network).
    ExportError when it has no such program or the program does not load."""
    config = read_config(path)
    target = _device(device)
    name = program_file(config)
    shown = shorten(str(path), 200)
    if name is None:
        raise ExportError(f"{shown!r} has no checked model.pt2 or model.torchscript.pt to run "
                          "instead of its network")
    file = Path(path).expanduser() / name
    try:
        _refuse_special(file)  # torch would wait on a FIFO for a writer, forever if none came
        with warnings.catch_warnings(), _quiet(logging.getLogger("torch.export")):
            # torch.jit's deprecation: the card says so. torch.export logs a warning with the
            # whole traceback of a file it cannot read, then raises: the error says enough.
            warnings.simplefilter("ignore")
            program = (torch.export.load(file).module() if name == "model.pt2"
                       else torch.jit.load(str(file), map_location="cpu"))
    except FileNotFoundError:
        raise ExportError(f"{shown!r} has no {name}, though its {CONFIG_FILE} lists it"
                          ) from None
    except ExportError:
        raise
    except Exception as exc:  # noqa: BLE001 - a missing or damaged program file
        reason = shorten(" ".join(str(exc).split()) or type(exc).__name__, 120)
        raise ExportError(f"{shorten(str(file), 200)!r} cannot be loaded: {reason}") from None
    return _placed(ProgramModel(program, config), target, device)


@contextmanager
def _quiet(logger: logging.Logger) -> Iterator[None]:
    """`logger` silent but for errors while the block runs, its own level restored after."""
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
