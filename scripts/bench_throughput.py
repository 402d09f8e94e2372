"""Per-epoch training throughput: studies/seed.toml in tuning's pipeline vs the tutorial's.

Same data, same device, same run. The first epoch of each is a warm-up and is excluded; the
figure is the median of the remaining epochs. The device is synchronized before each clock read.

    python scripts/bench_throughput.py [--dataset mnist-sample] [--epochs 6] [--device auto]
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tutorial_pipeline  # noqa: E402
from bench_args import WARM_UP, OneLineParser, at_least  # noqa: E402

from tuning.data import load_arrays, to_device  # noqa: E402
from tuning.device import COMPILE_MODES, resolve_device, set_cpu_threads  # noqa: E402
from tuning.model import build_model  # noqa: E402
from tuning.space import build_configs  # noqa: E402
from tuning.study_file import load_study_file  # noqa: E402
from tuning.train import (  # noqa: E402
    evaluate,
    make_optimizer,
    seed_everything,
    train_epoch,
    training_batches,
    training_probe,
)

ROOT = Path(__file__).resolve().parents[1]


def tuning_epoch_seconds(arrays, runtime, epochs: int) -> tuple[list[float], list[float]]:
    """Seconds per training pass, and per evaluation of the training-loss probe (the
    eval-mode training loss every epoch records for the generalization gap)."""
    study = load_study_file(ROOT / "tuning" / "studies" / "seed.toml")
    arch, cfg = build_configs({name: p.value for name, p in study.space.items()})
    data = to_device(arrays, runtime.device)
    generator = seed_everything(0, runtime.device)
    model = runtime.place(build_model(arch, data.input_shape, data.num_classes))
    optimizer = make_optimizer(model, cfg)
    network = runtime.compiled(model)
    times, probe_times = [], []
    probe = training_probe(data)
    for _ in range(epochs):
        start = time.perf_counter()
        train_epoch(network, training_batches(data, cfg, generator), optimizer, cfg, runtime)
        times.append(time.perf_counter() - start)  # train_epoch ends with a host sync
        start = time.perf_counter()
        evaluate(network, probe, runtime)  # ends with a host sync (.item())
        probe_times.append(time.perf_counter() - start)
    return times, probe_times


def main() -> None:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist-sample")
    parser.add_argument("--epochs", type=at_least(2, WARM_UP), default=6,
                        help="epochs each (2 or more), the first is warm-up")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", default="off", choices=COMPILE_MODES,
                        help="torch.compile mode for tuning's side")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    runtime = resolve_device(args.device, args.compile)
    threads = set_cpu_threads() if runtime.device.type == "cpu" else torch.get_num_threads()
    arrays = load_arrays(args.dataset)
    n = len(arrays.train_y)
    ours, probe = (times[1:] for times in tuning_epoch_seconds(arrays, runtime, args.epochs))
    theirs = tutorial_pipeline.epoch_seconds(arrays.train_x, arrays.train_y, runtime.device,
                                             args.epochs)[1:]
    result = {
        "device": runtime.name,
        "compile": runtime.compile_mode,
        "torch_threads": threads,
        "dataset": arrays.name,
        "train_images": n,
        "measured_epochs": args.epochs - 1,
        "tuning_images_per_s": round(n / statistics.median(ours)),
        "tutorial_images_per_s": round(n / statistics.median(theirs)),
    }
    result["speedup"] = round(result["tuning_images_per_s"] / result["tutorial_images_per_s"], 2)
    result["probe_share_of_epoch"] = round(statistics.median(probe) / statistics.median(ours), 3)
    print(f"{'pipeline':<22}{'images/s (median)':>20}")
    print(f"{'tuning (seed.toml)':<22}{result['tuning_images_per_s']:>20,}")
    print(f"{'tutorial (PIL+loader)':<22}{result['tutorial_images_per_s']:>20,}")
    print(f"speedup {result['speedup']}x on {result['device']}, {n} images, "
          f"{threads} threads, median of {args.epochs - 1} epochs after 1 warm-up")
    print(f"training-loss probe (eval mode, {len(arrays.val_y)} training images): "
          f"{result['probe_share_of_epoch']:.1%} of a training pass")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
