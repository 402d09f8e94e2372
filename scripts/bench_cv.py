"""Does k-fold cross-validation pick better configurations, and at what cost?

For each seed, runs the same search twice on the same data (the built-in mnist study's space):
once scored on the single validation split, once with `cv_folds = K`. Each study's best
configuration is then retrained once on the training split with its trial seed (keeping its
best-validation epoch) and evaluated once on the held-out test set. Reports per study: wall
time, epochs trained, the best configuration's test accuracy.

    python scripts/bench_cv.py [--dataset mnist-sample] [--trials 12] [--epochs 3] [--folds 5]
                               [--seeds 0 1 2] [--json out.json]
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import optuna

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_args import OneLineParser, at_least  # noqa: E402

from tuning import search  # noqa: E402
from tuning.data import load_arrays, to_device  # noqa: E402
from tuning.device import resolve_device  # noqa: E402
from tuning.evaluate import held_out_metrics, retrain  # noqa: E402
from tuning.study import stored_definition  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def study_file(folder: Path, folds: int) -> Path:
    """The built-in mnist study's space, with `cv_folds` set."""
    text = (ROOT / "tuning" / "studies" / "mnist.toml").read_text()
    path = folder / f"cv{folds}.toml"
    path.write_text(text.replace("[study]\n", f"[study]\ncv_folds = {folds}\n", 1))
    return path


def run_study(folder: Path, folds: int, seed: int, args) -> dict:
    name = f"cv{folds}-seed{seed}"
    url = f"sqlite:///{folder}/{name}.db"
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        status = search.main(["--config", str(study_file(folder, folds)), "--study", name,
                              "--storage", url, "--dataset", args.dataset, "--trials",
                              str(args.trials), "--epochs", str(args.epochs), "--seed",
                              str(seed), "--quiet"])
    seconds = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"search {name} exited {status}")
    study = optuna.load_study(study_name=name, storage=url)
    settings, space = stored_definition(study)
    best = study.best_trial
    assert best.value is not None  # the best trial is a complete one, which has its value
    runtime = resolve_device("cpu")
    arrays = load_arrays(args.dataset, split_seed=seed).normalized_as(study.user_attrs["data"])
    data = to_device(arrays, runtime.device)
    model = retrain(best.params, space, data, runtime, best.user_attrs["seed"], settings.epochs)
    metrics = held_out_metrics(model, data, runtime)
    return {"folds": folds, "seed": seed, "seconds": round(seconds, 1),
            "epochs_trained": sum(t.user_attrs.get("epochs_run", 0) for t in study.trials),
            "best_value": round(best.value, 4),
            "test_accuracy": round(metrics["accuracy"], 4)}


def main() -> None:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist-sample")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=at_least(1), default=3)
    parser.add_argument("--folds", type=at_least(2, "one fold is no cross-validation"), default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("TUNING_CACHE_DIR", str(Path(tmp) / "cache"))
        for seed in args.seeds:  # interleaved, so that a change in machine load hits both
            for folds in (1, args.folds):
                row = run_study(Path(tmp), folds, seed, args)
                print(json.dumps(row), flush=True)
                rows.append(row)
    summary = {}
    for folds in (1, args.folds):
        mine = [r for r in rows if r["folds"] == folds]
        summary[f"folds_{folds}"] = {
            "mean_test_accuracy": round(statistics.mean(r["test_accuracy"] for r in mine), 4),
            "mean_seconds": round(statistics.mean(r["seconds"] for r in mine), 1)}
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)},
                                         "rows": rows, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
