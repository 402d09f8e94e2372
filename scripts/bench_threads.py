"""How the CPU layout holds up when the machine is shared: seconds per epoch of a typical
searched network, per layout, on a quiet machine and beside a competing CPU-bound process.

Layouts (each in fresh processes, since OpenMP reads its settings when torch loads):
  1x2          one worker, 2 intra-op threads (OpenMP's default, spin-waiting, wait policy)
  1x2-passive  the same with OMP_WAIT_POLICY=PASSIVE (threads sleep instead of spinning)
  1x1          one worker, 1 thread
  2x1          two workers at once, 1 thread each (throughput: two epochs per epoch time)

Reported per layout and condition: seconds per epoch (median over the epochs after the first)
and images per second over all workers. Conditions alternate layout by layout, so that a drift
in the machine's speed touches both alike.

    python scripts/bench_threads.py [--epochs 4] [--rounds 2] [--json out.json]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_args import WARM_UP, OneLineParser, at_least  # noqa: E402
from child_env import child_env  # noqa: E402

LAYOUTS = {"1x2": (1, 2, {}), "1x2-passive": (1, 2, {"OMP_WAIT_POLICY": "PASSIVE"}),
           "1x1": (1, 1, {}), "2x1": (2, 1, {})}
# A network the default mnist space samples often: 3 blocks of 16 channels, batch norm, batch 32.
TRAIN = """
import json, sys, torch
from tuning.data import load_arrays, to_device
from tuning.device import resolve_device
from tuning.model import ArchConfig, build_model
from tuning.train import TrainConfig, fit, seed_everything
torch.set_num_threads(int(sys.argv[1]))
runtime = resolve_device("cpu")
data = to_device(load_arrays("mnist-sample", None, 0), runtime.device)
model = runtime.place(build_model(ArchConfig(blocks=3, channels=16, batch_norm=True,
                                             activation="relu"), data.input_shape, 10))
generator = seed_everything(0, runtime.device)
seconds = [r.seconds for r in fit(model, data, TrainConfig(batch_size=32), runtime, generator,
                                  int(sys.argv[2]))]
print(json.dumps({"seconds": seconds, "images": len(data.train)}))
"""


def run_layout(name: str, epochs: int) -> dict:
    workers, threads, env = LAYOUTS[name]
    procs = [subprocess.Popen([sys.executable, "-c", TRAIN, str(threads), str(epochs)],
                              env=child_env(**env),
                              stdout=subprocess.PIPE, text=True) for _ in range(workers)]
    results = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    per_epoch = statistics.median(s for r in results for s in r["seconds"][1:])
    images = sum(r["images"] for r in results)
    return {"layout": name, "seconds_per_epoch": round(per_epoch, 3),
            "images_per_second": round(images / per_epoch, 1)}


def main() -> None:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=at_least(2, WARM_UP), default=4)
    parser.add_argument("--rounds", type=at_least(1), default=2)
    parser.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=LAYOUTS)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = []
    for round_ in range(args.rounds):
        for name in args.layouts:
            for loaded in (False, True):
                competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"]) \
                    if loaded else None
                try:
                    time.sleep(0.5 if loaded else 0)
                    result = run_layout(name, args.epochs)
                finally:
                    if competitor is not None:
                        competitor.kill()
                        competitor.wait()
                result.update(round=round_, loaded=loaded, load=os.getloadavg()[0])
                results.append(result)
                print(json.dumps(result), flush=True)
    print("\n| layout | quiet: s/epoch | quiet: images/s | beside a CPU-bound process: s/epoch "
          "| beside: images/s |")
    print("|---|---|---|---|---|")
    for name in args.layouts:
        cells = []
        for loaded in (False, True):
            rows = [r for r in results if r["layout"] == name and r["loaded"] == loaded]
            cells += [" / ".join(f"{r['seconds_per_epoch']:.2f}" for r in rows),
                      " / ".join(f"{r['images_per_second']:.0f}" for r in rows)]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
