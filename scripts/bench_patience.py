"""What --patience would have saved and cost on searches that ran without it.

A finished study records when each trial started and finished. Replayed in that order, a
search with --patience N stops creating trials at the first moment a new trial was created
while N trials numbered after the best had finished without beating it (the rule
`tuning.runner.out_of_patience` applies when a worker takes a trial) and none of the trials
running then went on to beat it; those still finish. For each N this prints where that search
would have stopped: trials created, seconds from the first trial's start to the last one's
end, its best validation loss, and the same for the whole search. Where a running trial did
beat the best, the real search waited for it before going on: its later times are a little
later than the replay's.

    python scripts/bench_patience.py --storage sqlite:///studies/mnist.db --study mnist \
        [--patience 10,20,40,80] [--json out.json]

Several --study (each in --storage) are replayed one after the other.
"""

from __future__ import annotations

import copy
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import cast

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import optuna  # noqa: E402
from bench_args import OneLineParser  # noqa: E402
from optuna.trial import FrozenTrial, TrialState  # noqa: E402

from tuning.errors import UsageError  # noqa: E402
from tuning.runner import out_of_patience  # noqa: E402
from tuning.storage import open_storage  # noqa: E402


def _as_of(trial: FrozenTrial, moment: datetime) -> FrozenTrial:
    """`trial` as a worker taking a trial at `moment` saw it: running if it ended later."""
    if trial.datetime_complete is not None and trial.datetime_complete <= moment:
        return trial
    seen = copy.copy(trial)
    seen.state, seen.value = TrialState.RUNNING, None
    return seen


def replay(trials: list[FrozenTrial], patience: int | None) -> dict:
    """Where a search of these trials would have stopped with `patience` (None: the whole
    search). Trials are in number order, which is the order they were created in."""
    ran = [t for t in trials if t.datetime_start is not None]
    stop = len(ran)
    for index, trial in enumerate(ran if patience is not None else []):
        seen = [_as_of(t, cast(datetime, trial.datetime_start)) for t in ran[:index]]
        stalled = out_of_patience(seen, patience)
        if stalled is None:
            continue
        # The workers wait for the trials running then; where one beats the best, the
        # search goes on (later than it did here, by that wait).
        running = [t for t, as_seen in zip(ran[:index], seen, strict=True)
                   if as_seen.state == TrialState.RUNNING]
        if not any(t.state == TrialState.COMPLETE and t.value is not None
                   and t.value < cast(float, stalled.best.value) for t in running):
            stop = index
            break
    kept = ran[:stop]
    complete = [t.value for t in kept if t.state == TrialState.COMPLETE and t.value is not None]
    ends = [t.datetime_complete for t in kept if t.datetime_complete is not None]
    start = ran[0].datetime_start if ran else None
    return {"patience": patience, "trials": len(kept),
            "seconds": (max(ends) - start).total_seconds() if ends and start else 0.0,
            "best": min(complete) if complete else None}


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", required=True, help="the studies' storage URL")
    parser.add_argument("--study", action="append", required=True, help="a study to replay")
    parser.add_argument("--patience", default="10,20,40,80",
                        help="comma-separated values of --patience to replay")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    try:
        values = [int(v) for v in args.patience.split(",")]
    except ValueError:
        parser.error(f"--patience takes whole numbers separated by commas, got "
                     f"{args.patience[:40]!r}")
    if any(v < 1 for v in values):
        parser.error("--patience values must be at least 1")
    try:
        storage = open_storage(args.storage, heartbeat=False)  # refuses a missing SQLite file
    except UsageError as exc:
        parser.error(str(exc)[:200])
    results = []
    for name in args.study:
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            parser.error(f"no study {name[:60]!r} in {args.storage[:100]}")
        trials = study.get_trials(deepcopy=False)
        whole = replay(trials, None)
        print(f"\n{name}: {whole['trials']} trials, {whole['seconds']:.0f} s, best val loss "
              f"{whole['best']:.4f}" if whole["best"] is not None
              else f"\n{name}: no complete trial")
        print("| --patience | trials | seconds | share of the time | best val loss | "
              "over the whole search's |")
        print("|---|---|---|---|---|---|")
        for patience in values:
            row = replay(trials, patience)
            share = row["seconds"] / whole["seconds"] if whole["seconds"] else 1.0
            over = (row["best"] - whole["best"]) if row["best"] is not None and \
                whole["best"] is not None else None
            print(f"| {patience} | {row['trials']} | {row['seconds']:.0f} | {share:.0%} | "
                  + (f"{row['best']:.4f}" if row["best"] is not None else "-") + " | "
                  + (f"+{over:.4f}" if over is not None else "-") + " |")
            results.append({"study": name, **row, "whole": whole})
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
