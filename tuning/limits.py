"""Size and speed limits on the networks a study may find (`max_params`, `max_latency_ms`).

A trial whose network is over a limit is pruned before it trains, with the reason; every
complete trial is within the limits, whatever the sampler. The trial also records how far over
each limit it is as Optuna's constraints (Trial.set_constraint: above 0 is over), which TPE, GP
and NSGA-II read, so they learn to stay out of the region instead of proposing it again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Limits:
    """The limits of a study; None: no limit."""

    max_params: int | None = None
    """Most parameters a network may have (tuning.model.count_parameters)."""
    max_latency_ms: float | None = None
    """Most milliseconds a network may take to classify one image on the trial's device."""

    def __bool__(self) -> bool:
        return self.max_params is not None or self.max_latency_ms is not None

    def measure(self, network: nn.Module, input_shape: tuple[int, int, int],
                device: torch.device) -> dict:
        """What the limits are about: parameters always (cheap), latency when limited."""
        measured: dict = {"param_count": sum(p.numel() for p in network.parameters())}
        if self.max_latency_ms is not None:
            measured["latency_ms"] = round(latency_ms(network, input_shape, device), 4)
        return measured

    def excess(self, measured: dict) -> dict[str, float]:
        """Optuna's constraint values by limit: the relative excess over it (0 or less:
        within), set on the trial with Trial.set_constraint."""
        values = {}
        if self.max_params is not None:
            values["max_params"] = measured["param_count"] / self.max_params - 1.0
        if self.max_latency_ms is not None:
            values["max_latency_ms"] = measured["latency_ms"] / self.max_latency_ms - 1.0
        return values

    def violations(self, measured: dict) -> list[str]:
        """The limits `measured` is over, for people."""
        found = []
        if self.max_params is not None and measured["param_count"] > self.max_params:
            found.append(f"{measured['param_count']:,} parameters > max_params "
                         f"{self.max_params:,}")
        if self.max_latency_ms is not None and measured["latency_ms"] > self.max_latency_ms:
            found.append(f"{measured['latency_ms']:.3g} ms per image > max_latency_ms "
                         f"{self.max_latency_ms:g}")
        return found


def latency_ms(network: nn.Module, input_shape: tuple[int, int, int], device: torch.device,
               repeats: int = 10) -> float:
    """Milliseconds to classify one image (a batch of 1, eval mode, no gradients) on `device`:
    the median of `repeats` timed runs after three untimed ones."""
    was_training = network.training
    network.eval()
    image = torch.rand(1, *input_shape, device=device)
    times = []
    with torch.no_grad():
        for run in range(repeats + 3):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            network(image)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if run >= 3:
                times.append(time.perf_counter() - start)
    network.train(was_training)
    return 1000 * sorted(times)[len(times) // 2]
