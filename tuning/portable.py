"""The portable programs of an export: the normalization and the network as programs that run
with torch alone, no tuning needed. Float images in [0, 1], (N, C, H, W), to logits; any batch
size.

    model.pt2              torch.export
    model.torchscript.pt   TorchScript tracing (deprecated in recent torch: kept while it
                           works, skipped and said when it does not)
    model.onnx             ONNX, only where the onnx package is installed

The torch.export and TorchScript programs are checked against the eager network before they are
written (ONNX is not: running it needs onnxruntime), on inputs chosen to take different paths
through a network that branches on its input's values: all-zero and all-one images (either side
of the normalization's mean), half of each, random and negative values, one image alone, a mixed
batch, and real images where the export has them (CHECK_INPUTS). A trace that torch itself warns
may not hold for other inputs (a TracerWarning) is not written either. One that cannot be made,
or does not give the network's logits, is skipped with the reason, and the export goes on
without it.

Torch says a great deal while it tries (graphs, symbolic-shape warnings, TracerWarnings), from
Python and from C++: all of it is kept off the terminal (its warnings and what it prints are
logged at DEBUG, its own logging is silenced), so that the one-line notice of what was skipped
and why is what the user reads.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from tuning.errors import shorten
from tuning.exported import Classifier

log = logging.getLogger("tuning")
_CALL_SITE = re.compile(r'File "([^"]+)", line (\d+)')
"""A traceback line in torch's error message: where in the network it stopped."""

PROGRAM_FILES = {"model.pt2": "torch.export", "model.torchscript.pt": "TorchScript",
                 "model.onnx": "ONNX"}
"""The portable programs, by file, and what writes each."""
PROGRAM_DESCRIPTIONS = {
    "model.pt2": "torch.export program of the normalization and the network (no tuning needed)",
    "model.torchscript.pt": "the same traced with TorchScript (deprecated in torch, still loads)",
    "model.onnx": "the same as ONNX",
}
"""What each program is, in the model card's list of files."""
CHECK_TOLERANCE = 1e-4
"""Largest difference in logits allowed between a portable program and the eager network (on
any of the check's inputs) before the program is not written."""
CHECK_INPUTS = ("all-zero images", "all-one images", "half-zero, half-one images",
                "random images", "negative values", "one random image alone",
                "a batch of zero, one and random images")
"""What a program is checked on (besides real images, where the export has them): config.json
records it, so that a reader knows which programs were held to it."""


class ProgramRejected(Exception):
    """A program that was made but does not do what the network does: its message is the
    notice's reason, as it stands."""


def check_inputs(input_shape: tuple[int, int, int],
                 samples: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """CHECK_INPUTS (and `samples`, real images in [0, 1], when given), by name. Each is its
    own batch, of a size other than the trace example's 2, since a network may branch on
    statistics of the whole batch."""
    generator = torch.Generator().manual_seed(0)
    shape = (3, *input_shape)
    half = torch.zeros(shape)
    half[..., input_shape[-1] // 2:] = 1.0
    inputs = dict(zip(CHECK_INPUTS, (
        torch.zeros(shape), torch.ones(shape), half, torch.rand(shape, generator=generator),
        -torch.rand(shape, generator=generator), torch.rand(1, *input_shape, generator=generator),
        torch.cat([torch.zeros(1, *input_shape), torch.ones(1, *input_shape),
                   torch.rand(1, *input_shape, generator=generator)])), strict=True))
    if samples is not None and len(samples):
        inputs[f"{len(samples)} of the test images"] = samples.float()
    return inputs


def check_program(run: Callable[[torch.Tensor], torch.Tensor], reference: nn.Module,
                  inputs: dict[str, torch.Tensor]) -> None:
    """ProgramRejected unless `run` gives the eager module's logits on every one of `inputs`
    (a program that fixed its batch size, or traced one branch of an `if`, fails here)."""
    for name, images in inputs.items():
        with torch.no_grad():
            got, expected = run(images), reference(images)
        if got.shape != expected.shape:
            raise ProgramRejected(f"its logits on {name} have shape {tuple(got.shape)}, the "
                                  f"network's {tuple(expected.shape)}")
        if not torch.allclose(got, expected, atol=CHECK_TOLERANCE, rtol=CHECK_TOLERANCE):
            difference = float((got - expected).abs().max())
            raise ProgramRejected(f"its logits on {name} differ from the network's by up to "
                                  f"{difference:.3g}")


def _reason(exc: BaseException) -> str:
    """Why a program was skipped, in one short line: the exception's type and first line, and
    the line of the user's code it points at where torch names one (torch.export does)."""
    text = str(exc).strip()
    first = " ".join(text.splitlines()[0].split()) if text else ""
    calls = _CALL_SITE.findall(text)
    where = f" (at {Path(calls[-1][0]).name}:{calls[-1][1]})" if calls else ""
    return shorten(f"{type(exc).__name__}: {shorten(first, 160)}{where}", 200)


def _tracer_problem(caught: list[warnings.WarningMessage]) -> str | None:
    """The first TracerWarning among `caught`, in one line (where, and its first sentence):
    torch's word that the trace took one path through Python control flow or values and may
    give other inputs wrong logits; None when there is none."""
    for warning in caught:
        if issubclass(warning.category, torch.jit.TracerWarning):
            sentence = str(warning.message).strip().split(". ")[0].rstrip(".")
            return shorten(f"TracerWarning at {Path(warning.filename).name}:{warning.lineno}: "
                           f"{sentence}", 200)
    return None


@contextlib.contextmanager
def _quiet(what: str) -> Iterator[list[warnings.WarningMessage]]:
    """Keep torch's output while `what` is made off the terminal: its logging (silenced), its
    warnings (recorded into the list this yields, for the caller to judge) and what it prints
    from Python or, into the file descriptors themselves, from C++. The warnings and what was
    printed are logged at DEBUG afterwards; everything is restored however the attempt ends."""
    printed = io.StringIO()
    sys.stdout.flush()
    sys.stderr.flush()
    disabled_before = logging.root.manager.disable
    with tempfile.TemporaryFile() as sink, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # torch logs through its own handlers (symbolic shapes, dynamo): silence every logger
        # for the attempt; nothing of tuning's own is logged inside it.
        logging.disable(logging.CRITICAL)
        saved: dict[int, int] = {}  # descriptor -> a copy of what it was
        try:
            for fd in (1, 2):
                with contextlib.suppress(OSError):  # closed (a daemon's): nothing to keep off
                    saved[fd] = os.dup(fd)
                    os.dup2(sink.fileno(), fd)
            with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
                yield caught
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            logging.disable(disabled_before)
            sink.seek(0)
            from_fds = sink.read().decode("utf-8", errors="replace")
    for warning in caught:
        log.debug("torch warned while making %s: %s: %s", what, warning.category.__name__,
                  shorten(str(warning.message).strip(), 300))
    text = (printed.getvalue() + from_fds).strip()
    if text:
        log.debug("torch's output while making %s:\n%s", what, text)


def _write_export(classifier: Classifier, example: torch.Tensor,
                  inputs: dict[str, torch.Tensor], path: Path) -> str:
    """model.pt2: "written", else "skipped: " and why not."""
    batch = torch.export.Dim("batch", min=1)
    try:
        with _quiet(path.name):
            program = torch.export.export(classifier, (example,), dynamic_shapes=({0: batch},))
            check_program(program.module(), classifier, inputs)
            torch.export.save(program, path)
        return "written"
    except ProgramRejected as exc:
        path.unlink(missing_ok=True)
        return f"skipped: the torch.export program is wrong: {exc}"
    except Exception as exc:  # noqa: BLE001 - a network torch.export cannot capture
        path.unlink(missing_ok=True)
        return f"skipped: torch.export failed ({_reason(exc)})"


class ShapeChecked(nn.Module):
    """A traced program that refuses images of another shape than the study's, as model.pt2
    does: the trace would take them (its normalization broadcasts one channel to three) and
    give logits without a word. Scripted, so that the check runs in the saved program."""

    def __init__(self, traced: nn.Module, input_shape: tuple[int, ...]):
        super().__init__()
        self.traced = traced
        self.channels, self.height, self.width = input_shape

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if (images.dim() != 4 or images.size(1) != self.channels
                or images.size(2) != self.height or images.size(3) != self.width):
            raise ValueError(f"the model takes float images (N, {self.channels}, "
                             f"{self.height}, {self.width}) in [0, 1], got a tensor of shape "
                             f"{images.shape}")
        return self.traced(images)


def _write_torchscript(classifier: Classifier, example: torch.Tensor,
                       inputs: dict[str, torch.Tensor], path: Path) -> str:
    """model.torchscript.pt: "written", else "skipped: " and why not.

    torch.jit is deprecated in favour of torch.export; it still works and still has users (C++
    and mobile runtimes): written while it does, and the card says so."""
    try:
        with _quiet(path.name) as caught:
            traced = torch.jit.trace(classifier, example)
            # A trace records the one path the example took: where torch warns that Python
            # control flow or values were frozen into it, other images may take another path
            # (the checks below could miss it), so the trace is not trusted at all.
            problem = _tracer_problem(caught)
            if problem:
                return f"skipped: the trace may not hold for other images ({problem})"
            program = torch.jit.script(ShapeChecked(traced, tuple(example.shape[1:])))
            check_program(program, classifier, inputs)
            program.save(str(path))
        return "written"
    except ProgramRejected as exc:
        path.unlink(missing_ok=True)
        return f"skipped: the traced program is wrong: {exc}"
    except Exception as exc:  # noqa: BLE001 - a network TorchScript cannot trace or save
        path.unlink(missing_ok=True)
        return f"skipped: TorchScript failed ({_reason(exc)})"


def _write_onnx(classifier: Classifier, example: torch.Tensor, path: Path) -> str:
    """model.onnx, unchecked: "written", else "skipped: " and why not."""
    if importlib.util.find_spec("onnx") is None:
        return "skipped: the onnx package is not installed"
    batch = torch.export.Dim("batch", min=1)
    try:
        with _quiet(path.name):
            torch.onnx.export(classifier, (example,), str(path), input_names=["images"],
                              output_names=["logits"], dynamic_shapes=({0: batch},),
                              dynamo=True)
        return "written"
    except Exception as exc:  # noqa: BLE001 - missing onnxscript, or an unsupported operator
        path.unlink(missing_ok=True)
        return f"skipped: ONNX export failed ({_reason(exc)})"


def write_programs(classifier: Classifier, input_shape: tuple[int, int, int], out: Path,
                   samples: torch.Tensor | None = None) -> dict[str, str]:
    """The portable programs of `classifier` (on the CPU, eval mode) in `out`, each checked on
    check_inputs(input_shape, samples): file -> "written", else "skipped: " and why not."""
    example = torch.rand(2, *input_shape, generator=torch.Generator().manual_seed(1))
    inputs = check_inputs(input_shape, samples)
    return {"model.pt2": _write_export(classifier, example, inputs, out / "model.pt2"),
            "model.torchscript.pt": _write_torchscript(classifier, example, inputs,
                                                       out / "model.torchscript.pt"),
            "model.onnx": _write_onnx(classifier, example, out / "model.onnx")}
