"""How long a search takes to start: the seconds a short budget loses before training.

Each round runs, in fresh processes, from an empty study database:
  create       `python -m tuning.search ... --create-only`: start, load the data, create the
               study, exit
  joined       a search with --workers N: seconds until the last worker says it joined
  first epoch  the same search: seconds until the first epoch of any trial ended

Every time counts from the command's start. With --checkout the same rounds run against other
copies of the repository (a `git worktree` of an older commit, say), interleaved round by
round, so that a drift in the machine's speed touches every checkout alike.

    python scripts/bench_startup.py [--rounds 3] [--workers 2] [--checkout DIR ...]
                                    [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEARCH = ["-m", "tuning.search", "--trials", "4", "--dataset", "mnist-sample", "--epochs", "1"]


def env_for(checkout: Path) -> dict[str, str]:
    """This environment with `checkout` first on the Python path."""
    path = os.pathsep.join(filter(None, (str(checkout), os.environ.get("PYTHONPATH"))))
    return {**os.environ, "PYTHONPATH": path}


def measure(checkout: Path, workers: int) -> dict:
    """One round of the three timings for one checkout."""
    with tempfile.TemporaryDirectory() as tmp:
        storage = ["--storage", f"sqlite:///{tmp}/created.db"]
        started = time.monotonic()
        subprocess.run([sys.executable, *SEARCH, *storage, "--create-only"], cwd=tmp,
                       env=env_for(checkout), capture_output=True, check=True, timeout=300)
        create = time.monotonic() - started

        storage = ["--storage", f"sqlite:///{tmp}/search.db"]
        joined: list[float] = []
        first_epoch = None
        started = time.monotonic()
        with subprocess.Popen([sys.executable, *SEARCH, *storage, "--workers", str(workers)],
                              cwd=tmp, env=env_for(checkout), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) as search:
            assert search.stdout is not None
            for line in search.stdout:
                now = time.monotonic() - started
                if " joined study " in line:
                    joined.append(now)
                elif first_epoch is None and " epoch 1/1 " in line:
                    first_epoch = now
        if search.returncode != 0 or len(joined) != workers or first_epoch is None:
            raise SystemExit(f"the search in {checkout} did not run as expected "
                             f"(exit {search.returncode}, {len(joined)} workers joined)")
    return {"checkout": str(checkout), "create_s": round(create, 2),
            "joined_s": round(max(joined), 2), "first_epoch_s": round(first_epoch, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--checkout", type=Path, action="append", default=[],
                        help="another copy of the repository to time (repeatable); this "
                             "repository is always timed")
    parser.add_argument("--json", type=Path, help="write every round's row here")
    args = parser.parse_args()
    checkouts = [ROOT, *(path.resolve() for path in args.checkout)]
    rows = []
    for round_number in range(1, args.rounds + 1):
        for checkout in checkouts:
            row = {"round": round_number, **measure(checkout, args.workers)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    print("\n| checkout | create (s) | workers joined (s) | first epoch ended (s) |")
    print("|---|---|---|---|")
    for checkout in checkouts:
        mine = [r for r in rows if r["checkout"] == str(checkout)]
        medians = [statistics.median(r[key] for r in mine)
                   for key in ("create_s", "joined_s", "first_epoch_s")]
        print(f"| {checkout} | " + " | ".join(f"{m:.2f}" for m in medians) + " |")
    if args.json:
        args.json.write_text(json.dumps({"workers": args.workers, "rounds": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
