"""The best model under a size limit, and what exporting it costs.

For each `max_params` limit, runs the built-in mnist study's space with that limit, exports the
best trial (`tuning export`: its checkpoint, evaluated once on the held-out test set), loads it
back with `tuning.load_model` and classifies the test images again. Reports per limit: the
search's wall time, trials pruned for the limit, the best network's parameters and test
accuracy, export and load seconds, and whether the loaded model's test accuracy equals the one
the export measured.

    python scripts/bench_models.py [--dataset mnist-sample] [--trials 20] [--epochs 3]
                                   [--limits 10000 50000 200000] [--json out.json]
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_args import OneLineParser, at_least  # noqa: E402

from tuning import export, search  # noqa: E402
from tuning.data import load_arrays  # noqa: E402
from tuning.exported import load_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def study_file(folder: Path, limit: int) -> Path:
    """The built-in mnist study's space, with `max_params` set."""
    text = (ROOT / "tuning" / "studies" / "mnist.toml").read_text()
    path = folder / f"limit{limit}.toml"
    path.write_text(text.replace("[study]\n", f"[study]\nmax_params = {limit}\n", 1))
    return path


def quietly(main, argv: list[str]) -> int:
    with contextlib.redirect_stdout(io.StringIO()):
        return main(argv)


def run_limit(folder: Path, limit: int, args) -> dict:
    name = f"limit{limit}"
    url = f"sqlite:///{folder}/{name}.db"
    start = time.perf_counter()
    status = quietly(search.main, ["--config", str(study_file(folder, limit)), "--study", name,
                                   "--storage", url, "--dataset", args.dataset, "--trials",
                                   str(args.trials), "--epochs", str(args.epochs), "--quiet",
                                   "--artifacts", str(folder / "artifacts")])
    search_seconds = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"search {name} exited {status}")
    trials = optuna.load_study(study_name=name, storage=url).trials
    over = sum("over the limits" in str(t.user_attrs.get("prune_reason", "")) for t in trials)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]

    out = folder / f"{name}-model"
    start = time.perf_counter()
    status = quietly(export.main, ["--study", name, "--storage", url, "--out", str(out),
                                   "--artifacts", str(folder / "artifacts")])
    export_seconds = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"export {name} exited {status}")
    config = json.loads((out / "config.json").read_text())

    start = time.perf_counter()
    model = load_model(out)
    load_seconds = time.perf_counter() - start
    arrays = load_arrays(args.dataset, None, 0)
    images = torch.from_numpy(np.ascontiguousarray(arrays.test_x.transpose(0, 3, 1, 2)))
    with torch.no_grad():
        predicted = torch.cat([model(images[i:i + 500].float() / 255).argmax(1)
                               for i in range(0, len(images), 500)]).numpy()
    loaded_accuracy = float((predicted == arrays.test_y).mean())
    params = sum(p.numel() for p in model.parameters())
    return {"max_params": limit, "trials": len(trials), "complete": len(complete),
            "pruned_over_limit": over, "search_seconds": round(search_seconds, 1),
            "best_trial": config["trial"], "best_params": params,
            "test_accuracy": config["test"]["accuracy"],
            "loaded_test_accuracy": loaded_accuracy,
            "export_seconds": round(export_seconds, 2), "load_seconds": round(load_seconds, 3)}


def main() -> None:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist-sample")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=at_least(1), default=3)
    parser.add_argument("--limits", type=int, nargs="+", default=[10_000, 50_000, 200_000])
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for limit in args.limits:
            result = run_limit(Path(tmp), limit, args)
            results.append(result)
            print(json.dumps(result), flush=True)
    print("\n| max_params | complete / trials | pruned over the limit | best network | "
          "test accuracy | search | export | load | loaded model's test accuracy |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['max_params']:,} | {r['complete']} / {r['trials']} | "
              f"{r['pruned_over_limit']} | {r['best_params']:,} | {r['test_accuracy']:.4f} | "
              f"{r['search_seconds']:.0f} s | {r['export_seconds']:.1f} s | "
              f"{r['load_seconds']:.2f} s | {r['loaded_test_accuracy']:.4f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
