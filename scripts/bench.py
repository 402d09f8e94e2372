"""One benchmark command for the whole service, on whatever device it finds.

    python scripts/bench.py [--dataset mnist-sample] [--trials 12] [--epochs 3] [--out bench.json]

Measures, in one run:
1. per-epoch training throughput of studies/seed.toml against the tutorial's own pipeline;
2. trials per hour of one fixed search (same seed, same budget) with 1, 2, 4 workers (on a GPU:
   1..8 workers per GPU) and the GPU's utilization while it runs;
3. Optuna's share of wall time (sampler and storage) per trial, for SQLite and PostgreSQL;
4. pruning: epochs run, wall time and best validation loss with no pruner, median, successive
   halving and hyperband, at the same number of trials;
5. time to quality: wall time until the search first reaches --target-accuracy;
6. torch.compile against eager for the seed network: compile time, steady throughput, and the
   first epoch of a second network of the same architecture (compiled code reused);
7. several trials trained at once in one process (vmap, scripts/bench_grouped.py) against the
   same trials one after another;
8. evaluation throughput by evaluation batch size (what Runtime.eval_batch_size is set from);
9. the target search (on a GPU by default, --target-search elsewhere):
   `python -m tuning.search --study fashion-mnist --trials 100` in a fresh process, its wall
   time and GPU utilization, then `python -m tuning.report` for the best trial's test accuracy.

Warm-up is excluded where it can be (throughput: first epoch); every search of section 2
starts from a fresh process, so its figures include start-up, as a user's would; sections 2-5
report the median of --repeats runs (default 3) and keep each run's wall time. Clocks are
read after the device is synchronized (train_epoch ends with a host sync).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_grouped  # noqa: E402
import bench_throughput  # noqa: E402
import optuna  # noqa: E402
import torch  # noqa: E402
import tutorial_pipeline  # noqa: E402
from bench_args import WARM_UP, OneLineParser, at_least  # noqa: E402
from child_env import child_env  # noqa: E402

from tuning.cli import configure_logging  # noqa: E402
from tuning.data import load_arrays, to_device  # noqa: E402
from tuning.device import resolve_device, set_cpu_threads  # noqa: E402
from tuning.objective import Objective  # noqa: E402
from tuning.runner import StudyLock, run_trials  # noqa: E402
from tuning.storage import open_storage, resolve_url  # noqa: E402
from tuning.strategy import make_pruner, make_sampler  # noqa: E402
from tuning.study_file import load_study_file  # noqa: E402
from tuning.train import TrainConfig  # noqa: E402

POSTGRES_URL = os.environ.get("TUNING_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


class GpuSampler:
    """Samples nvidia-smi's utilization every 0.5 s while a search runs."""

    def __init__(self):
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(0.5):
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu",
                                      "--format=csv,noheader,nounits"], capture_output=True,
                                     text=True, timeout=5).stdout
                self.samples.append(statistics.fmean(float(v) for v in out.split()))
            except (OSError, ValueError, subprocess.TimeoutExpired):
                return

    def __enter__(self):
        if shutil.which("nvidia-smi") and torch.cuda.is_available():
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()

    def summary(self) -> dict:
        if not self.samples:
            return {}
        busy = sum(s >= 50 for s in self.samples) / len(self.samples)
        return {"gpu_util_mean": round(statistics.fmean(self.samples), 1),
                "gpu_busy_share": round(busy, 3)}


def throughput(arrays, runtime, epochs: int = 6) -> dict:
    n = len(arrays.train_y)
    ours = bench_throughput.tuning_epoch_seconds(arrays, runtime, epochs)[0][1:]  # training
    theirs = tutorial_pipeline.epoch_seconds(arrays.train_x, arrays.train_y, runtime.device,
                                             epochs)[1:]
    result: dict[str, float] = {"tuning_images_per_s": round(n / statistics.median(ours)),
                                "tutorial_images_per_s": round(n / statistics.median(theirs))}
    result["speedup"] = round(result["tuning_images_per_s"] / result["tutorial_images_per_s"], 2)
    return result


def compiled_vs_eager(arrays, device: str, gpu: bool, epochs: int = 4) -> list[dict]:
    """Seed network per compile mode: first epoch (compiling), steady images/s, and the first
    epoch of a second network of the same architecture in the same process."""
    n = len(arrays.train_y)
    rows = []
    for mode in ("off", "default", "reduce-overhead") if gpu else ("off", "default"):
        runtime = resolve_device(device, mode)
        first, _ = bench_throughput.tuning_epoch_seconds(arrays, runtime, epochs)
        second, _ = bench_throughput.tuning_epoch_seconds(arrays, runtime, 1)
        rows.append({"compile": mode, "first_epoch_s": round(first[0], 2),
                     "images_per_s": round(n / statistics.median(first[1:])),
                     "same_architecture_again_first_epoch_s": round(second[0], 2)})
    return rows


def grouped_vs_one_by_one(data, runtime, gpu: bool) -> list[dict]:
    cfg = TrainConfig(batch_size=100, crop_padding=4)
    rows = []
    for name in ("seed", "small"):
        arch = bench_grouped.ARCHITECTURES[name]
        for k in (1, 2, 4, 8) if gpu else (1, 2, 4):
            rows.append({"architecture": name,
                         **bench_grouped.measure(arch, data, runtime, cfg, k, epochs=3)})
    return rows


def eval_batch_sweep(data, runtime) -> list[dict]:
    """Images/s of `evaluate` on the test split per batch size, seed and a 3-block network."""
    from dataclasses import replace

    from tuning.model import SEED, ArchConfig, build_model
    from tuning.train import evaluate

    deep = ArchConfig(blocks=3, channels=32, activation="relu", batch_norm=True, hidden=128)
    rows = []
    for name, arch in (("seed", SEED), ("3 blocks", deep)):
        model = runtime.place(build_model(arch, data.input_shape, data.num_classes))
        for size in (64, 128, 256, 512, 2048, 8192):
            sized = replace(runtime, eval_batch_size=size)
            times = []
            for _ in range(4):
                start = time.perf_counter()
                evaluate(model, data.test, sized)  # ends with a host sync (.item())
                times.append(time.perf_counter() - start)
            rows.append({"architecture": name, "eval_batch_size": size,
                         "images_per_s": round(len(data.test) / statistics.median(times[1:]))})
    return rows


def median_row(rows: list[dict]) -> dict:
    """One row from repeated runs: the median of each number, and every run's wall time."""
    merged = {}
    for key, first in rows[0].items():
        values = [row[key] for row in rows]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if numeric:
            merged[key] = round(statistics.median(values), 4)
        else:  # e.g. a time to target that some runs never reached: show them all
            merged[key] = first if all(v == first for v in values) else values
    return {**merged, "runs": len(rows), "wall_s_each": [row["wall_s"] for row in rows]}


def search_with_workers(workers: int, args, tmp: Path, gpu: bool, run: int = 0) -> dict:
    """A fresh process running the fixed search with this many workers; trials per hour."""
    name = f"bench-w{workers}-r{run}"
    flag = ["--workers-per-gpu", str(workers)] if gpu else ["--workers", str(workers)]
    cmd = [sys.executable, "-m", "tuning.search", "--study", name, "--config",
           str(ROOT / "tuning" / "studies" / "mnist.toml"), "--storage", f"sqlite:///{tmp}/{name}.db",
           "--trials", str(args.trials), "--epochs", str(args.epochs), "--dataset",
           args.dataset, "--seed", "0", "--artifacts", str(tmp / "artifacts"), *flag]
    with GpuSampler() as gpu_sampler:
        start = time.perf_counter()
        subprocess.run(cmd, cwd=tmp, check=True, capture_output=True, env=child_env())
        wall = time.perf_counter() - start
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp}/{name}.db")
    return {"workers": workers, "wall_s": round(wall, 1),
            "trials_per_hour": round(args.trials * 3600 / wall),
            "best_val_loss": round(study.best_value, 4), **gpu_sampler.summary()}


def in_process_search(url: str, pruner: str, args, data, runtime, space) -> dict:
    """The same search in this process, with per-part timings from the worker loop."""
    name = f"bench-{pruner}-{uuid.uuid4().hex[:6]}"
    study = optuna.create_study(study_name=name, storage=open_storage(url, create=True),
                                sampler=make_sampler("tpe", 0, space),
                                pruner=make_pruner(pruner, args.epochs))
    objective = Objective(data=data, runtime=runtime, space=space, epochs=args.epochs, seed=0)
    start = time.perf_counter()
    stats = run_trials(study, objective, args.trials, StudyLock(url, name))
    wall = time.perf_counter() - start
    trials = study.get_trials(deepcopy=False)
    # A trial still waiting (enqueued, e.g. a retry) has no start time to count from.
    first = min(t.datetime_start for t in trials if t.datetime_start is not None)
    reached = sorted((t.datetime_complete - first).total_seconds() for t in trials
                     if t.user_attrs.get("val_accuracy", 0) >= args.target_accuracy
                     and t.datetime_complete is not None)
    result = {
        "pruner": pruner, "wall_s": round(wall, 1),
        "epochs_run": sum(t.user_attrs.get("epochs_run", 0) for t in trials),
        "best_val_loss": round(study.best_value, 4),
        "best_val_accuracy": max(t.user_attrs.get("val_accuracy", 0) for t in trials),
        "optuna_share": round(stats.optuna_seconds / (stats.optuna_seconds
                                                      + stats.objective_seconds), 4),
        "time_to_target_s": round(reached[0], 1) if reached else None,
    }
    optuna.delete_study(study_name=name, storage=resolve_url(url))
    return result


def target_search(tmp: Path, trials: int, seconds: float | None = None) -> dict:
    """The issue-5 target: the Fashion-MNIST study end to end, as a user runs it; stopped
    (SIGTERM, as a scheduler would) after `seconds` if given, and reported on as it stands."""
    storage = f"sqlite:///{tmp}/fashion-mnist.db"
    cmd = [sys.executable, "-m", "tuning.search", "--study", "fashion-mnist", "--config",
           str(ROOT / "tuning" / "studies" / "fashion-mnist.toml"), "--storage", storage,
           "--trials", str(trials), "--artifacts", str(tmp / "artifacts")]
    env = child_env()
    with GpuSampler() as gpu_sampler, (tmp / "search.log").open("w") as log:
        start = time.perf_counter()
        search = subprocess.Popen(cmd, cwd=tmp, stdout=log, stderr=subprocess.STDOUT, env=env)
        stopped = False
        try:
            search.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            stopped = True
        finally:  # also when this benchmark is stopped: never leave a search running
            if search.poll() is None:
                search.terminate()  # the search stops its workers and marks their trials
                try:
                    search.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    search.kill()
                    search.wait()
        wall = time.perf_counter() - start
    if not stopped and search.returncode != 0:
        raise RuntimeError(f"the search failed:\n{(tmp / 'search.log').read_text()[-2000:]}")
    study = optuna.load_study(study_name="fashion-mnist", storage=storage)
    states = [t.state.name for t in study.get_trials(deepcopy=False)]
    row = {"target_trials": trials, "wall_s": round(wall, 1), "stopped_at_limit": stopped,
           **gpu_sampler.summary(),
           "complete": states.count("COMPLETE"), "pruned": states.count("PRUNED")}
    if "COMPLETE" not in states:
        return row
    subprocess.run([sys.executable, "-m", "tuning.report", "--study", "fashion-mnist",
                    "--storage", storage, "--artifacts", str(tmp / "artifacts"), "--out",
                    str(tmp / "report")], cwd=tmp, check=True, capture_output=True, env=env)
    metrics = json.loads((tmp / "report" / "test_metrics.json").read_text())
    return {**row, "best_val_accuracy": study.best_trial.user_attrs.get("val_accuracy"),
            "best_test_accuracy": metrics["best"]["accuracy"],
            "tutorial_test_accuracy": metrics["tutorial"]["accuracy"]}


def postgres_reachable() -> bool:
    try:
        open_storage(POSTGRES_URL, heartbeat=False)
        return True
    except Exception:  # noqa: BLE001
        return False


def main() -> None:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist-sample")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=at_least(2, WARM_UP), default=3)
    parser.add_argument("--target-accuracy", type=float, default=0.95)
    parser.add_argument("--workers", default=None,
                        help="comma-separated worker counts (default 1,2,4; GPU 1,2,4,8)")
    parser.add_argument("--target-search", action=argparse.BooleanOptionalAction,
                        help="run section 9, the 100-trial Fashion-MNIST search (default: on a "
                             "GPU only; it takes hours on a 2-core CPU)")
    parser.add_argument("--target-trials", type=int, default=100)
    parser.add_argument("--target-seconds", type=float,
                        help="stop section 9's search after this long and report what it has")
    parser.add_argument("--repeats", type=at_least(1), default=3,
                        help="runs of each search in sections 2-5; medians are reported")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=Path("bench.json"))
    args = parser.parse_args()
    configure_logging()

    runtime = resolve_device(args.device)
    gpu = runtime.device.type == "cuda"
    if not gpu:
        set_cpu_threads()
    counts = [int(c) for c in (args.workers or ("1,2,4,8" if gpu else "1,2,4")).split(",")]
    results: dict = {"device": runtime.name, "date": time.strftime("%Y-%m-%d"),
                     "dataset": args.dataset, "trials": args.trials, "epochs": args.epochs,
                     "repeats": args.repeats,
                     "torch": torch.__version__, "optuna": optuna.__version__}
    print(f"device {runtime.name}; {args.trials} trials x up to {args.epochs} epochs on "
          f"{args.dataset}", flush=True)

    # Loaded once: every section trains and evaluates on the same splits.
    arrays = load_arrays(args.dataset)
    data = to_device(arrays, runtime.device)
    results["throughput"] = throughput(arrays, runtime)
    print("1. throughput:", results["throughput"], flush=True)

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "studies").mkdir()
        results["workers"] = [
            median_row([search_with_workers(n, args, tmp, gpu, r) for r in range(args.repeats)])
            for n in counts]
        for row in results["workers"]:
            print("2. workers:", row, flush=True)

        space = load_study_file(ROOT / "tuning" / "studies" / "mnist.toml").space
        backends = {"sqlite": f"sqlite:///{tmp}/inproc.db"}
        if postgres_reachable():
            backends["postgresql"] = POSTGRES_URL
        results["optuna_share"] = {}
        for backend, url in backends.items():
            row = median_row([in_process_search(url, "median", args, data, runtime, space)
                              for _ in range(args.repeats)])
            results["optuna_share"][backend] = row["optuna_share"]
            print(f"3. optuna share ({backend}):", row["optuna_share"], flush=True)
        results["pruning"] = [
            median_row([in_process_search(backends["sqlite"], p, args, data, runtime, space)
                        for _ in range(args.repeats)])
            for p in ("none", "median", "successive-halving", "hyperband")]
        for row in results["pruning"]:
            print("4/5. pruning:", row, flush=True)
    results["compile"] = compiled_vs_eager(arrays, args.device, gpu)
    for row in results["compile"]:
        print("6. compile:", row, flush=True)
    results["grouped"] = grouped_vs_one_by_one(data, runtime, gpu)
    for row in results["grouped"]:
        print("7. grouped:", row, flush=True)
    results["eval_batch"] = eval_batch_sweep(data, runtime)
    for row in results["eval_batch"]:
        print("8. eval batch:", row, flush=True)
    run_target_search = gpu if args.target_search is None else args.target_search
    if run_target_search:
        with tempfile.TemporaryDirectory() as tmp_name:
            (Path(tmp_name) / "studies").mkdir()
            results["target_search"] = target_search(Path(tmp_name), args.target_trials,
                                                     args.target_seconds)
        print("9. target search:", results["target_search"], flush=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
