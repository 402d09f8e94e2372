"""Which network a study trains, chosen by the study file's `model`, and built for a trial.

    model = "cnn"                       the built-in family (tuning.model), the default
    model = "resnet18"                  a torchvision classification model (tuning.architectures)
    model = "mypackage.models:build"    your own builder

A builder is called as `build(params, input_shape, num_classes)`: `params` is a plain dict of
the trial's values of the `[space.model]` table (names without the `model.` prefix),
`input_shape` is (channels, height, width), and it returns an `nn.Module` that maps a batch of
normalized images (N, C, H, W) to class scores (N, num_classes). The optimizer, learning rate,
regularization and augmentation of the [space] table train it as they train the family.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import sys
import sysconfig
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from tuning.errors import UsageError, described, shorten
from tuning.limits import Limits
from tuning.model import ArchConfig, build_model, count_parameters

log = logging.getLogger("tuning")
FAMILY = "cnn"
"""The built-in family's name, the default model."""
MODEL_PREFIX = "model."
"""How a builder's own parameters are named in the study (its [space.model] entries)."""
ARCH_FIELDS = frozenset(f for f in ArchConfig.__dataclass_fields__)
_BUILDER_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class ModelBuildError(Exception):
    """A builder that raised or returned something other than a module, for one trial's
    parameters: that trial fails, with this as its reason."""


def is_builder(model: str) -> bool:
    """Whether `model` names a builder function ("package.module:function")."""
    return ":" in model


def model_problem(model: object) -> str | None:
    """What is wrong with a study file's `model`, or None. Imports torchvision (a second on
    the CPU, on every command's and worker's start) only for a model that may be one of its
    architectures."""
    if not isinstance(model, str) or not model:
        return f"model must be a name, got {shorten(repr(model))}"
    if is_builder(model):
        if not _BUILDER_REF.match(model):
            return (f"model {shorten(model)!r}: a builder is named as "
                    "\"package.module:function\"")
        return None
    if model == FAMILY:
        return None
    from tuning.architectures import is_torchvision_architecture

    if is_torchvision_architecture(model):
        return None
    return (f"unknown model {shorten(model)!r}; choose cnn, a torchvision classification "
            "model (resnet18, mobilenet_v3_small, efficientnet_b0, ...) or "
            "\"package.module:function\"")


def import_builder(reference: str, for_workers: bool = True) -> Callable[..., nn.Module]:
    """The function "package.module:function" names. The directory the command runs in is
    searched too (the `tuning` console script, unlike `python -m`, does not put it on the
    path), so a builder in ./models.py is found wherever a worker starts in that directory.
    UsageError, one line, if it cannot be imported; `for_workers`: the line says every
    worker needs the module (a search's), not only this process (a report's, an export's)."""
    module_name, _, function = reference.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    # SystemExit too: a module that calls sys.exit() on import would end the command silently
    # with its own status. KeyboardInterrupt is the user's and goes on.
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the module's own error on import
        message = _import_failure(reference, module_name, exc, for_workers)
        if _not_installed(exc, module_name):
            raise BuilderNotInstalled(message, exc) from None
        raise UsageError(message) from None
    if not hasattr(module, function):
        raise UsageError(f"model builder {shorten(reference)!r}: module {module_name!r} has no "
                         f"function {function!r}")
    builder = getattr(module, function)
    if not callable(builder):
        raise UsageError(f"model builder {shorten(reference)!r}: {function!r} in module "
                         f"{module_name!r} is of type {shorten(type(builder).__name__)}, not a "
                         "function")
    return builder


class BuilderNotInstalled(UsageError):
    """The builder's module itself is not there (not installed, or another directory): not
    one that is there and fails. `cause` is the import's own error."""

    def __init__(self, message: str, cause: BaseException):
        super().__init__(message)
        self.cause = cause


def check_importable_here(spec: ModelSpec) -> None:
    """For a command that builds the network in its own process alone (report, export,
    predict): UsageError (BuilderNotInstalled where the module is not there at all) where the
    study's builder cannot be imported here, before any work."""
    if spec.kind == "builder":
        import_builder(spec.model, for_workers=False)


def _not_installed(exc: BaseException, module_name: str) -> bool:
    """Whether `exc` says the module `module_name` (or its package) is not there at all."""
    missing = exc.name if isinstance(exc, ModuleNotFoundError) else None
    return missing is not None and (missing == module_name
                                    or module_name.startswith(missing + "."))


def _import_failure(reference: str, module_name: str, exc: BaseException,
                    for_workers: bool) -> str:
    """Why the builder's module did not import, in one line. Only a module that is not there
    gets the advice to install it or run elsewhere: one that is there but fails (a syntax
    error, an exception at import) is named with the error and where it happened."""
    every_worker = " (every worker needs it)" if for_workers else ""
    if isinstance(exc, ModuleNotFoundError) and exc.name is not None:
        missing = exc.name
        if _not_installed(exc, module_name):
            return (f"model builder {shorten(reference)!r} cannot be imported here: "
                    f"ModuleNotFoundError: {shorten(_first_line(exc), 200)}; install its "
                    f"package or run from the directory that holds it{every_worker}")
        return (f"model builder {shorten(reference)!r}: module {module_name!r} imports "
                f"{shorten(missing)!r} ({_where(exc)}), which is not installed here; install "
                f"it{every_worker}")
    return (f"model builder {shorten(reference)!r}: module {module_name!r} failed to import: "
            f"{_what_happened(exc)} at {_where(exc)}")


def _what_happened(exc: BaseException) -> str:
    """An exception from the user's code, for one line: its type and first line, or the
    sys.exit() call a SystemExit stands for."""
    if isinstance(exc, SystemExit):
        return f"called sys.exit({shorten(repr(exc.code))})"
    if isinstance(exc, SyntaxError):  # its str() repeats the place, said apart here
        return f"{type(exc).__name__}: {shorten(str(exc.msg), 200)}"
    return described(exc)


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [""])[0]


def _where(exc: BaseException) -> str:
    """file:line of the error: a syntax error's own place; otherwise the innermost frame of
    the traceback in the user's code (outside Python's library and the installed packages),
    else the innermost one at all."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return _place(exc.filename, exc.lineno)
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not f.filename.startswith("<")]  # importlib's frozen frames
    library = tuple({sysconfig.get_path(k) for k in ("stdlib", "purelib", "platlib")})
    own = [f for f in frames if not f.filename.startswith(library)]
    if not frames:
        return "an unknown place"
    frame = (own or frames)[-1]
    return _place(frame.filename, frame.lineno)


def _place(filename: str, lineno: int | None) -> str:
    """filename:line, relative to the working directory when it is below it; a long path
    keeps its end."""
    relative = os.path.relpath(filename) if os.path.isabs(filename) else filename
    path = filename if relative.startswith("..") else relative
    if len(path) > 120:
        path = "..." + path[-117:]
    return path if lineno is None else f"{path}:{lineno}"


@dataclass(frozen=True)
class ModelSpec:
    """The network a study trains, as its settings record it."""

    model: str = FAMILY
    """`cnn`, a torchvision architecture, or "package.module:function"."""
    weights: str | None = None
    """A local weights file to start every trial from (fine-tuning), absolute; None: random."""

    @property
    def kind(self) -> str:
        """'cnn', 'torchvision' or 'builder'."""
        if self.model == FAMILY:
            return "cnn"
        return "builder" if is_builder(self.model) else "torchvision"

    def build(self, params: dict, input_shape: tuple[int, int, int], num_classes: int,
              load_weights: bool = True) -> nn.Module:
        """The network for a trial's parameters (fixed ones included), on the CPU.

        `load_weights=False` skips the fine-tuning weights: for a network whose trained weights
        are loaded next (a checkpoint, an export)."""
        if self.kind == "cnn":
            arch = ArchConfig(**{k: v for k, v in params.items() if k in ARCH_FIELDS})
            return build_model(arch, input_shape, num_classes)
        if self.kind == "torchvision":
            from tuning.architectures import build_torchvision
            from tuning.architectures import load_weights as load_into

            network = build_torchvision(self.model, input_shape, num_classes)
            if self.weights is not None and load_weights:
                load_into(network, Path(self.weights))
            return network
        return self._from_builder(params, input_shape, num_classes)

    def _from_builder(self, params: dict, input_shape: tuple[int, int, int],
                      num_classes: int) -> nn.Module:
        builder = import_builder(self.model)
        own = builder_params(params)
        try:
            network = builder(own, tuple(input_shape), num_classes)
        except SystemExit as exc:  # would end the worker with the builder's status, silently
            raise ModelBuildError(f"model builder {self.model} {_what_happened(exc)} for "
                                  f"{shorten(repr(own), 200)}") from exc
        except Exception as exc:  # noqa: BLE001 - the user's code: any error is the trial's
            raise ModelBuildError(f"model builder {self.model} raised {type(exc).__name__}: "
                                  f"{shorten(str(exc), 200)} for {shorten(repr(own), 200)}"
                                  ) from exc
        if not isinstance(network, nn.Module):
            raise ModelBuildError(f"model builder {self.model} returned "
                                  f"{shorten(type(network).__name__)}, not a torch.nn.Module")
        if self.weights is not None:
            raise ModelBuildError("weights apply to torchvision architectures only")
        return network

    def check(self, space_values: dict, input_shape: tuple[int, int, int],
              num_classes: int, limits: Limits | None = None) -> None:
        """Build the network once for representative parameters and run two images through
        it, and one alone, before any trial: a builder that does not import, raises or
        returns no module, an architecture that cannot take these images, or weights that do
        not fit, is one line for the user (UsageError) instead of a failure in every trial.

        With `limits`, a network over max_params is a warning: other configurations may fit,
        but a builder that ignores its parameters, or an architecture without any, has one
        size for every trial, and each is pruned before it trains."""
        if self.kind == "cnn":
            if limits is not None and limits.max_params is not None:
                try:
                    network = self.build(space_values, input_shape, num_classes)
                except ValueError:  # not a configuration of the family: the trials say so
                    return
                _warn_if_over(network, limits.max_params)
            return
        try:
            network = self.build(space_values, input_shape, num_classes, load_weights=False)
        except ModelBuildError as exc:
            raise UsageError(str(exc)) from None
        if self.weights is not None:
            from tuning.architectures import load_weights

            log.info("every trial starts from %s", load_weights(network, Path(self.weights)))
        name = self.model
        try:
            from tuning.architectures import check_runs

            check_runs(network, input_shape, num_classes, name)
        except UsageError:
            raise
        except Exception as exc:  # noqa: BLE001 - the user's module, run on two images
            size = "x".join(map(str, input_shape))
            raise UsageError(f"model {shorten(name)!r} fails on two {size} images: "
                             f"{type(exc).__name__}: {shorten(str(exc), 200)}") from None
        if limits is not None and limits.max_params is not None:
            _warn_if_over(network, limits.max_params)

    def to_dict(self) -> dict:
        return {"model": self.model, "weights": self.weights}


FAMILY_MODEL = ModelSpec()
"""The built-in family: what studies without a `model` train."""


def _warn_if_over(network: nn.Module, max_params: int) -> None:
    """A warning when the network of the configuration checked before the search is over
    max_params: if no configuration fits, every trial is pruned untrained and the search ends
    with nothing."""
    count = count_parameters(network)
    if count > max_params:
        log.warning("the network of a typical configuration has %s parameters, over max_params "
                    "= %s: trials over it are pruned before training; if no configuration of "
                    "the space fits, every trial will be", f"{count:,}", f"{max_params:,}")


def builder_params(params: dict) -> dict:
    """A builder's own parameters out of a trial's, without their `model.` prefix."""
    return {name[len(MODEL_PREFIX):]: value for name, value in params.items()
            if name.startswith(MODEL_PREFIX)}
