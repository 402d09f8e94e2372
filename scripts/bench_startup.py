"""How long a search takes to start: the seconds a short budget loses before training.

Each round runs, in fresh processes, from an empty study database:
  create       `python -m tuning.search ... --create-only`: start, load the data, create the
               study, exit
  joined       a search with --workers N: seconds until the last worker says it joined
  first epoch  the same search: seconds until trial 0's first epoch ended (from its own
               record in the study; trial 0 is the network the built-in study queues first)

Every time counts from the command's start. With --checkout the same rounds run against other
copies of the repository (a `git worktree` of an older commit, say), interleaved round by
round, so that a drift in the machine's speed touches every checkout alike.

    python scripts/bench_startup.py [--rounds 3] [--workers 2] [--checkout DIR ...]
                                    [--json out.json]
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_args import OneLineParser, at_least  # noqa: E402
from child_env import ROOT, child_env  # noqa: E402

TIMEOUT_S = 300
SEARCH = ["-m", "tuning.search", "--trials", "4", "--dataset", "mnist-sample", "--epochs", "1"]


def first_epoch_end(database: Path) -> float | None:
    """When trial 0's first epoch ended (time.time()), from what its worker recorded: the
    trial's start and its epochs' ends in seconds after it (the launcher's progress lines come
    up to a poll later). Trial 0 of the built-in study is the network it queues first, the
    same whatever the sampler, so that a change of sampler does not pass for one of start-up."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="mnist", storage=f"sqlite:///{database}")
    first = study.trials[0] if study.trials else None
    if first is None or first.datetime_start is None or not first.user_attrs.get("epoch_ends"):
        return None
    return first.datetime_start.timestamp() + first.user_attrs["epoch_ends"][0]


def run(argv: list[str], cwd: str, checkout: Path, on_line=None) -> None:
    """Run a command to its end (killed after TIMEOUT_S), calling on_line with each line of its
    output; exit with the output's end if it fails."""
    output = []
    with subprocess.Popen([sys.executable, *argv], cwd=cwd, env=child_env(checkout),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        watchdog = threading.Timer(TIMEOUT_S, proc.kill)
        watchdog.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                output.append(line)
                if on_line is not None:
                    on_line(line)
        finally:
            watchdog.cancel()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} in {checkout} failed (exit {proc.returncode}): "
                         f"{''.join(output)[-500:]}")


def measure(checkout: Path, workers: int) -> dict:
    """One round of the three timings for one checkout."""
    with tempfile.TemporaryDirectory() as tmp:
        started = time.monotonic()
        run([*SEARCH, "--storage", f"sqlite:///{tmp}/created.db", "--create-only"], tmp,
            checkout)
        create = time.monotonic() - started

        joined: list[float] = []
        started, started_wall = time.monotonic(), time.time()

        def on_line(line: str) -> None:
            if " joined study " in line:
                joined.append(time.monotonic() - started)

        run([*SEARCH, "--storage", f"sqlite:///{tmp}/search.db", "--workers", str(workers)],
            tmp, checkout, on_line)
        first_epoch = first_epoch_end(Path(tmp) / "search.db")
        if len(joined) != workers or first_epoch is None:
            raise SystemExit(f"the search in {checkout} did not run as expected "
                             f"({len(joined)} of {workers} workers joined)")
    return {"checkout": str(checkout), "create_s": round(create, 2),
            "joined_s": round(max(joined), 2),
            "first_epoch_s": round(first_epoch - started_wall, 2)}


def main() -> int:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=at_least(1), default=3)
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
