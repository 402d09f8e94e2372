"""The portable programs of an export: the normalization and the network as programs that run
with torch alone, no tuning needed. Float images in [0, 1], (N, C, H, W), to logits; any batch
size.

    model.pt2              torch.export
    model.torchscript.pt   TorchScript tracing (deprecated in recent torch: kept while it
                           works, skipped and said when it does not)
    model.onnx             ONNX, only where the onnx package is installed

The torch.export and TorchScript programs are checked against the eager network on a batch size
they were not exported with before they are written (ONNX is not: running it needs
onnxruntime). One that cannot be made, or does not give the network's logits, is skipped with
the reason, and the export goes on without it.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from tuning.errors import shorten
from tuning.exported import Classifier

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
a batch size other than the one it was exported with) before the program is not written."""


def _check_program(run: Callable[[torch.Tensor], torch.Tensor], reference: nn.Module,
                   input_shape: tuple[int, int, int]) -> None:
    """Raise unless `run` gives the eager module's logits on a batch size it was not exported
    with (a program that fixed its batch size, or traced a branch, fails here)."""
    images = torch.rand(3, *input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, expected = run(images), reference(images)
    if got.shape != expected.shape or not torch.allclose(got, expected, atol=CHECK_TOLERANCE,
                                                         rtol=CHECK_TOLERANCE):
        raise RuntimeError("its logits on 3 images differ from the network's")


def _reason(exc: BaseException) -> str:
    """Why a program was skipped, in one short line: the exception's type and first line."""
    text = str(exc).strip()
    return shorten(f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}", 200)


def write_programs(classifier: Classifier, input_shape: tuple[int, int, int],
                   out: Path) -> dict[str, str]:
    """The portable programs of `classifier` (on the CPU, eval mode) in `out`: file ->
    "written", else "skipped: " and why not."""
    example = torch.rand(2, *input_shape, generator=torch.Generator().manual_seed(1))
    outcome: dict[str, str] = {}
    batch = torch.export.Dim("batch", min=1)

    path = out / "model.pt2"
    try:
        program = torch.export.export(classifier, (example,), dynamic_shapes=({0: batch},))
        _check_program(program.module(), classifier, input_shape)
        torch.export.save(program, path)
        outcome[path.name] = "written"
    except Exception as exc:  # noqa: BLE001 - a network torch.export cannot capture
        outcome[path.name] = f"skipped: torch.export failed ({_reason(exc)})"

    path = out / "model.torchscript.pt"
    try:
        with warnings.catch_warnings():
            # torch.jit is deprecated in favour of torch.export; it still works and still has
            # users (C++ and mobile runtimes): written while it does, and the card says so.
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            traced = torch.jit.trace(classifier, example)
            _check_program(traced, classifier, input_shape)
            traced.save(str(path))
        outcome[path.name] = "written"
    except Exception as exc:  # noqa: BLE001 - a network TorchScript cannot trace
        path.unlink(missing_ok=True)
        outcome[path.name] = f"skipped: TorchScript tracing failed ({_reason(exc)})"

    path = out / "model.onnx"
    if importlib.util.find_spec("onnx") is None:
        outcome[path.name] = "skipped: the onnx package is not installed"
        return outcome
    try:
        torch.onnx.export(classifier, (example,), str(path), input_names=["images"],
                          output_names=["logits"], dynamic_shapes=({0: batch},), dynamo=True)
        outcome[path.name] = "written"
    except Exception as exc:  # noqa: BLE001 - missing onnxscript, or an unsupported operator
        path.unlink(missing_ok=True)
        outcome[path.name] = f"skipped: ONNX export failed ({_reason(exc)})"
    return outcome
