"""Grouped trials: train K trials at once in one process (torch.func + vmap) vs one by one.

K networks of one architecture, each with its own learning rate and weight decay, its own
initialization and its own shuffled, augmented batches, are stacked with
`torch.func.stack_module_state` and trained by one vmapped forward/backward per step plus a
vectorized Adam whose learning rate and weight decay are per-network tensors. The baseline is
what a worker does today: the same K networks trained one after another with `train_epoch`.

    python scripts/bench_grouped.py [--dataset mnist-sample] [--groups 1,2,4,8] [--epochs 4]

Both paths first check that they compute the same thing (same init, same batches -> the same
losses), then are timed: first epoch excluded as warm-up, median of the rest, device
synchronized before each clock read. Printed as a table and written as JSON with --json.
"""

from __future__ import annotations

import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_args import WARM_UP, OneLineParser, at_least  # noqa: E402

from tuning.data import load_arrays, to_device  # noqa: E402
from tuning.device import resolve_device, set_cpu_threads  # noqa: E402
from tuning.model import ArchConfig, build_model  # noqa: E402
from tuning.train import TrainConfig, train_epoch, training_batches  # noqa: E402

ARCHITECTURES = {
    # The tutorial's network (studies/seed.toml).
    "seed": ArchConfig(blocks=1, channels=32, kernel=3, activation="none"),
    # A small network of the searched family: where per-step overhead matters most.
    "small": ArchConfig(blocks=2, channels=8, kernel=3, activation="relu", hidden=64),
}


class StackedAdam:
    """Adam over stacked parameters (leading dim K): network k uses lr[k] and weight_decay[k]."""

    def __init__(self, params, lr: torch.Tensor, weight_decay: torch.Tensor,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.params = list(params)
        self.lr, self.weight_decay = lr, weight_decay
        self.beta1, self.beta2, self.eps = *betas, eps
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        self.steps = 0

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.steps += 1
        bias1 = 1 - self.beta1 ** self.steps
        bias2 = 1 - self.beta2 ** self.steps
        for p, m, v in zip(self.params, self.exp_avg, self.exp_avg_sq, strict=True):
            shape = (-1,) + (1,) * (p.ndim - 1)
            grad = p.grad + self.weight_decay.view(shape) * p  # L2, as torch.optim.Adam
            m.lerp_(grad, 1 - self.beta1)
            v.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
            denom = (v / bias2).sqrt_().add_(self.eps)
            p.sub_(self.lr.view(shape) / bias1 * m / denom)


def epoch_batches(data, cfg: TrainConfig, generators):
    """Each network's own training batches, exactly as a worker draws them, stacked (K, B, ...)."""
    streams = [training_batches(data, cfg, g) for g in generators]
    for per_network in zip(*streams, strict=True):
        xs, ys = zip(*per_network, strict=True)
        yield torch.stack(xs), torch.stack(ys)


class Group:
    """K networks of one architecture trained as one vmapped model."""

    def __init__(self, models, lrs, weight_decays, runtime):
        self.base = copy.deepcopy(models[0]).to("meta")
        params, buffers = stack_module_state(models)
        self.params = {k: v.detach().requires_grad_() for k, v in params.items()}
        self.buffers = buffers
        device = runtime.device
        self.optimizer = StackedAdam(self.params.values(),
                                     torch.tensor(lrs, device=device),
                                     torch.tensor(weight_decays, device=device))
        self.runtime = runtime

    def _loss(self, params, buffers, x, y):
        logits = functional_call(self.base, (params, buffers), (x,))
        return F.cross_entropy(logits.float(), y)

    def train_epoch(self, batches) -> torch.Tensor:
        total = None
        step = torch.vmap(self._loss, in_dims=(0, 0, 0, 0), randomness="different")
        for x, y in batches:
            if self.runtime.channels_last:
                x = x.flatten(0, 1).contiguous(memory_format=torch.channels_last)
                x = x.unflatten(0, y.shape)
            with self.runtime.autocast():
                losses = step(self.params, self.buffers, x, y)
            self.optimizer.zero_grad()
            losses.sum().backward()  # network k's loss depends only on its own slice
            self.optimizer.step()
            total = losses.detach() if total is None else total + losses.detach()
        if total is None:
            raise ValueError("no batches: an epoch needs at least one")
        return total.cpu()  # the one host sync of the epoch


def make_models(arch, data, runtime, k):
    models = []
    for i in range(k):
        torch.manual_seed(i)
        models.append(runtime.place(build_model(arch, data.input_shape, data.num_classes)))
    return models


def generators(k, device):
    return [torch.Generator(device=device).manual_seed(100 + i) for i in range(k)]


def lrs_for(k):
    return [1e-3 * (1.5 ** i) for i in range(k)], [1e-5 * i for i in range(k)]


def check_same(arch, data, runtime, cfg) -> float:
    """Largest difference in per-network mean loss after one epoch, grouped vs one by one."""
    k = 3
    lrs, wds = lrs_for(k)
    models = make_models(arch, data, runtime, k)
    group = Group(models, lrs, wds, runtime)
    steps = -(-len(data.train) // cfg.batch_size)
    grouped = group.train_epoch(epoch_batches(data, cfg, generators(k, runtime.device))) / steps
    single = []
    for i, (model, g) in enumerate(zip(models, generators(k, runtime.device), strict=True)):
        optimizer = torch.optim.Adam(model.parameters(), lr=lrs[i], weight_decay=wds[i])
        single.append(train_epoch(model, training_batches(data, cfg, g), optimizer, cfg,
                                  runtime)["loss"])
    return max(abs(a - b) for a, b in zip(grouped.tolist(), single, strict=True))


def time_epochs(run_epoch, epochs: int) -> float:
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        run_epoch()  # ends with a host sync
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def measure(arch, data, runtime, cfg, k: int, epochs: int) -> dict:
    lrs, wds = lrs_for(k)
    models = make_models(arch, data, runtime, k)
    gens = generators(k, runtime.device)
    optimizers = [torch.optim.Adam(m.parameters(), lr=lr, weight_decay=wd)
                  for m, lr, wd in zip(models, lrs, wds, strict=True)]

    def one_by_one():
        for model, optimizer, g in zip(models, optimizers, gens, strict=True):
            train_epoch(model, training_batches(data, cfg, g), optimizer, cfg, runtime)

    sequential = time_epochs(one_by_one, epochs)
    group = Group(make_models(arch, data, runtime, k), lrs, wds, runtime)
    gens = generators(k, runtime.device)
    grouped = time_epochs(lambda: group.train_epoch(epoch_batches(data, cfg, gens)), epochs)
    images = k * len(data.train)
    return {"k": k, "one_by_one_images_per_s": round(images / sequential),
            "grouped_images_per_s": round(images / grouped),
            "speedup": round(sequential / grouped, 2)}


def main() -> None:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist-sample")
    parser.add_argument("--groups", default="1,2,4,8", help="comma-separated K")
    parser.add_argument("--epochs", type=at_least(2, WARM_UP), default=4,
                        help="epochs each, the first is warm-up")
    parser.add_argument("--architectures", default="seed,small")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    runtime = resolve_device(args.device)
    if runtime.device.type == "cpu":
        set_cpu_threads()
    data = to_device(load_arrays(args.dataset), runtime.device)
    # Both paths draw batches and crops with training_batches, each network from its own RNG.
    cfg = TrainConfig(batch_size=100, crop_padding=4)
    architectures: dict[str, dict] = {}
    results = {"device": runtime.name, "dataset": data.name, "train_images": len(data.train),
               "torch": torch.__version__, "architectures": architectures}
    for name in args.architectures.split(","):
        arch = ARCHITECTURES[name]
        difference = check_same(arch, data, runtime, cfg)
        rows = [measure(arch, data, runtime, cfg, int(k), args.epochs)
                for k in args.groups.split(",")]
        architectures[name] = {"max_loss_difference": difference, "rows": rows}
        print(f"{name}: grouped vs one-by-one mean loss differ by at most {difference:.2e}")
        print(f"{'K':>3}{'one by one img/s':>18}{'grouped img/s':>15}{'speedup':>9}")
        for row in rows:
            print(f"{row['k']:>3}{row['one_by_one_images_per_s']:>18,}"
                  f"{row['grouped_images_per_s']:>15,}{row['speedup']:>9}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
