"""Decide device and precision once, in one place, and pass the result down."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

from tuning.errors import UsageError


@dataclass(frozen=True)
class Runtime:
    """Where and how a trial computes."""

    device: torch.device
    """The device every tensor of a trial lives on."""
    autocast_dtype: torch.dtype | None
    """bf16 autocast on CUDA; None (full fp32) on the CPU, where bf16 is slower for small convs."""
    channels_last: bool
    """Use channels_last memory format (faster convolutions with cuDNN)."""

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    @property
    def name(self) -> str:
        if self.device.type == "cuda":
            index = self.device.index or 0
            return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
        return str(self.device)


def resolve_device(requested: str = "auto") -> Runtime:
    """'auto' picks CUDA when present, else the CPU; 'cpu', 'cuda' and 'cuda:N' are explicit."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise UsageError(
            f"--device {requested!r} is not a device; use auto, cpu, cuda or cuda:N"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {requested!r}: no CUDA device is available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {requested!r}: only {torch.cuda.device_count()} GPU(s)")
        torch.backends.cudnn.benchmark = True  # fixed input shapes: autotuning pays for itself
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        return Runtime(device, torch.bfloat16, channels_last=True)
    if device.type != "cpu":
        raise UsageError(f"--device {requested!r} is not supported; use auto, cpu or cuda[:N]")
    # channels_last helps oneDNN on the CPU as much as cuDNN: 6x for the seed conv and pool.
    return Runtime(device, None, channels_last=True)


def cpu_cores() -> int:
    """Cores this process may run on (its affinity, not the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def set_cpu_threads(workers_on_host: int = 1) -> int:
    """Split this host's cores between its worker processes; returns the threads taken."""
    threads = max(1, cpu_cores() // max(1, workers_on_host))
    torch.set_num_threads(threads)
    return threads
