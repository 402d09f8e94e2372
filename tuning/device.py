"""Decide device and precision once, in one place, and pass the result down."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from tuning.errors import UsageError

COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")
# Each architecture of a search is its own compiled graph (train and eval mode apart): room for
# every architecture a study samples, where torch's default of 8 would fall back to eager.
COMPILED_GRAPHS_PER_WORKER = 256


@dataclass(frozen=True)
class Runtime:
    """Where and how a trial computes."""

    device: torch.device
    """The device every tensor of a trial lives on."""
    autocast_dtype: torch.dtype | None
    """bf16 autocast on CUDA; None (full fp32) on the CPU, where bf16 is slower for small convs."""
    channels_last: bool
    """Use channels_last memory format (faster convolutions with cuDNN)."""
    eval_batch_size: int = 2048
    """Batch size of evaluation: large on a GPU (fewer launches), cache-sized on the CPU, where
    2,048 was 2-4x slower than 128 (docs/benchmarks.md)."""
    compile_mode: str = "off"
    """torch.compile mode for trial networks ('off': eager). Compiled code is cached per
    architecture inside a worker: the next trial of the same architecture reuses it."""

    def place(self, model: nn.Module) -> nn.Module:
        """`model` on this device, in this runtime's memory format."""
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def compiled(self, model: nn.Module) -> nn.Module:
        """`model` itself (eager), or a compiled callable sharing its parameters."""
        if self.compile_mode == "off":
            return model
        import torch._dynamo  # noqa: PLC0415 - only loaded when compiling

        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit,
                                                    COMPILED_GRAPHS_PER_WORKER)
        mode = None if self.compile_mode == "default" else self.compile_mode
        # torch.compile of a module returns an OptimizedModule; its overloads say Callable.
        return cast(nn.Module, torch.compile(model, mode=mode))

    def step_begins(self) -> None:
        """Mark a new training step for CUDA graphs (reduce-overhead), so a graph's outputs
        from the previous step may be overwritten."""
        if self.compile_mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()

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


def missing_gpu(device: torch.device) -> str | None:
    """Why CUDA device `device` is not here, in words (torch's own error is a paragraph about
    drivers); None when it is, or is not a CUDA device."""
    if device.type != "cuda":
        return None
    if not torch.cuda.is_available():
        return "no CUDA device is available here"
    if (device.index or 0) >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        return ("only 1 GPU here (cuda:0)" if count == 1
                else f"only {count} GPUs here (cuda:0..cuda:{count - 1})")
    return None


def resolve_device(requested: str = "auto", compile_mode: str = "off") -> Runtime:
    """'auto' picks CUDA when present, else the CPU; 'cpu', 'cuda' and 'cuda:N' are explicit."""
    if compile_mode not in COMPILE_MODES:
        raise UsageError(f"--compile {compile_mode!r}: choose one of {', '.join(COMPILE_MODES)}")
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise UsageError(
            f"--device {requested!r} is not a device; use auto, cpu, cuda or cuda:N"
        ) from None
    if device.type == "cuda":
        missing = missing_gpu(device)
        if missing:
            raise UsageError(f"--device {requested!r}: {missing}")
        torch.backends.cudnn.benchmark = True  # fixed input shapes: autotuning pays for itself
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        return Runtime(device, torch.bfloat16, channels_last=True, eval_batch_size=2048,
                       compile_mode=compile_mode)
    if device.type != "cpu":
        raise UsageError(f"--device {requested!r} is not supported; use auto, cpu or cuda[:N]")
    # channels_last helps oneDNN on the CPU as much as cuDNN: 6x for the seed conv and pool.
    return Runtime(device, None, channels_last=True, eval_batch_size=128,
                   compile_mode=compile_mode)


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
