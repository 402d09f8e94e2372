"""The most good trials per hour: tuning against a plain Optuna script and Ray Tune (OptunaSearch
+ ASHA) on an equal wall-clock budget.

    python scripts/bench_budget.py [--budget 240] [--rounds 3] [--seed 0] [--load none,cpu]
        [--variant NAME=ARGS ...] [--tools tuning,optuna,ray,optuna-queued,ray-queued]
        [--ray-python PATH]
        [--device auto] [--json F] [--events-dir DIR]

Every tool searches the same space (the built-in study `mnist`'s [space], sampled by
tuning.space.sample), trains the same network family (tuning.networks) with the same
optimizers and schedules, on the same split of mnist-sample, for the same budget, each run in
a fresh process and counted from its start (imports and data loading included):

  tuning   `python -m tuning.search` as a user runs it (its defaults, or a --variant's
           arguments added: `--variant asha="--pruner successive-halving"`);
  optuna   a script written the way optuna-examples are: one process, images through PIL
           transforms and a DataLoader, TPE and the median pruner at their defaults,
           study.optimize with the time left as its timeout;
  ray      Ray Tune with OptunaSearch (TPE) and ASHA (grace period 1 epoch, Ray's defaults
           otherwise), two 1-CPU trials at a time (on a GPU: two per GPU, as tuning's
           workers), the optuna tool's training loop. Only when `ray[tune]` imports in
           --ray-python (an optional extra, never a test dependency).
  optuna-queued, ray-queued
           the same, given the built-in study's queued configurations (its `enqueue` list)
           to try first, as tuning is: Optuna's enqueue_trial, Ray's points_to_evaluate.
           They measure the search itself where the plain tools measure what a user of each
           gets out of the box.

All train on --device (default: a GPU when there is one, else the CPU).

Runs are interleaved (round by round, condition by condition, tool by tool), so that a drift
in the machine's speed touches every tool alike. Each round has its own seed, the same for
every tool in it: the data split, the samplers' draws, the initial weights. `--load cpu` runs
a CPU-bound process (a busy loop) beside the run, as on a shared workstation or cluster node.

Reported per run, from the epochs that ended within the budget: trials that trained, epochs,
best validation loss and the second it was found, seconds to 97% and 98% validation accuracy
(the end of the first epoch that reached it), the test accuracy of the best trial's best epoch
within the budget (tuning: the trial trained again with its seed and stopped at that epoch;
the others evaluate the test split at each trial's new best epoch, which only costs them),
and the load average at the end. The table gives each tool's median over the rounds.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:  # DataLoader's annotation asks for a Dataset subclass,
    from torch.utils.data import Dataset
else:  # which it does not need at run time; torch is imported only where it is used
    Dataset = object

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_args import OneLineParser, at_least  # noqa: E402
from child_env import child_env  # noqa: E402

DATASET = "mnist-sample"
THRESHOLDS = (0.97, 0.98)
TOOLS = ("tuning", "optuna", "ray", "optuna-queued", "ray-queued")
# Epochs may end a little after the budget (a trial's last epoch is never cut short); the run
# is stopped outright this long after it.
GRACE_S = 60


# --- the competitors' side: one training loop, written as optuna-examples write theirs -------

@functools.cache
def _study_space():
    from tuning.study_file import load_study_file

    return load_study_file(ROOT / "tuning" / "studies" / "mnist.toml")


class ImageDataset(Dataset):
    """uint8 images (N, H, W, C) as a torch Dataset through PIL transforms."""

    def __init__(self, x, y, mean, std, crop_padding: int = 0):
        from torchvision import transforms

        steps = [transforms.RandomCrop(x.shape[1], padding=crop_padding)] if crop_padding else []
        self.x, self.y = x, y
        self.transform = transforms.Compose(
            [*steps, transforms.ToTensor(), transforms.Normalize(mean, std)])

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        from PIL import Image

        image = self.x[i]
        image = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
        return self.transform(image), int(self.y[i])


def train_trial(params: dict, space: dict, arrays, epochs: int, seed: int, report,
                device: str) -> None:
    """Train one configuration for up to `epochs` on `device`, calling `report(epoch, metrics)`
    after each; `report` raises to stop the trial (a pruner). Test accuracy is measured at each
    new best validation loss of the trial."""
    import torch
    from torch.utils.data import DataLoader

    from tuning.data import DeviceData
    from tuning.device import resolve_device
    from tuning.objective import build_trial_model
    from tuning.train import l1_penalty, make_optimizer, make_scheduler

    runtime = resolve_device(device)
    torch.manual_seed(seed)
    shape = arrays.input_shape

    class Shape:  # what the network builder reads of the data
        input_shape = shape
        num_classes = arrays.num_classes

    # build_trial_model reads no more of its DeviceData than Shape has.
    model, cfg, _ = build_trial_model(params, space, cast(DeviceData, Shape()), runtime, seed)
    train = DataLoader(ImageDataset(arrays.train_x, arrays.train_y, arrays.mean, arrays.std,
                                    cfg.crop_padding), batch_size=cfg.batch_size, shuffle=True)
    val = DataLoader(ImageDataset(arrays.val_x, arrays.val_y, arrays.mean, arrays.std), 256)
    test = DataLoader(ImageDataset(arrays.test_x, arrays.test_y, arrays.mean, arrays.std), 256)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, epochs, len(train))
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    def measure(loader) -> tuple[float, float]:
        model.eval()
        loss, right, n = 0.0, 0, 0
        with torch.no_grad():
            for x, y in loader:
                x, y = x.to(runtime.device), y.to(runtime.device)
                out = model(x)
                loss += torch.nn.functional.cross_entropy(out, y, reduction="sum").item()
                right += (out.argmax(1) == y).sum().item()
                n += len(y)
        return loss / n, right / n

    best, test_accuracy = math.inf, None
    for epoch in range(1, epochs + 1):
        model.train()
        for x, y in train:
            x, y = x.to(runtime.device), y.to(runtime.device)
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            if cfg.l1:
                loss = loss + cfg.l1 * l1_penalty(model)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
        val_loss, val_accuracy = measure(val)
        if not math.isfinite(val_loss):
            val_loss = math.inf
        if val_loss < best:
            best, test_accuracy = val_loss, measure(test)[1]
        report(epoch, {"val_loss": val_loss, "val_accuracy": val_accuracy,
                       "test_accuracy": test_accuracy, "at": time.time()})


def run_optuna(budget: float, started: float, out: Path, seed: int, device: str,
               queued: bool) -> None:
    import optuna

    from tuning.data import load_arrays
    from tuning.space import sample

    study_file = _study_space()
    arrays = load_arrays(DATASET, None, seed)
    epochs = study_file.settings.epochs

    def objective(trial: optuna.Trial) -> float:
        params = sample(trial, study_file.space)
        best = math.inf

        def report(epoch: int, metrics: dict) -> None:
            nonlocal best
            with out.open("a") as lines:  # as it goes: the run is stopped at its budget
                lines.write(json.dumps({"trial": trial.number, "epoch": epoch, **metrics,
                                        "params": params}) + "\n")
            best = min(best, metrics["val_loss"])
            trial.report(metrics["val_loss"], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()

        train_trial(params, study_file.space, arrays, epochs, seed + trial.number, report,
                    device)
        return best

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize",
                                sampler=optuna.samplers.TPESampler(seed=seed))
    for config in study_file.enqueue if queued else ():
        study.enqueue_trial(config)
    study.optimize(objective, timeout=max(budget - (time.time() - started), 1.0))


def ray_space(trial) -> None:
    """OptunaSearch's define-by-run space: the study's, sampled as tuning samples it."""
    from tuning.space import sample

    sample(trial, _study_space().space)


def ray_trainable(config: dict, arrays=None, space=None, epochs: int = 1,
                  seed: int = 0, device: str = "cpu") -> None:
    """One Ray trial. Everything it uses comes as an argument: Ray's workers cannot import
    this script, which runs as __main__."""
    import torch
    from ray import tune

    torch.set_num_threads(1)
    # Ray numbers no trials for the trainable: a seed from the configuration instead.
    number = zlib.crc32(json.dumps(config, sort_keys=True).encode()) % 10_000

    def report(epoch: int, metrics: dict) -> None:
        tune.report({**metrics, "epoch": epoch})

    train_trial(config, space, arrays, epochs, seed + number, report, device)


def run_ray(budget: float, started: float, out: Path, seed: int, device: str,
            queued: bool) -> None:
    import optuna
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from tuning.data import load_arrays
    from tuning.device import resolve_device

    epochs = _study_space().settings.epochs
    # Ray gives each trial its GPU through CUDA_VISIBLE_DEVICES: inside, it is always "cuda".
    device = resolve_device(device).device.type
    # Two trials per GPU, as tuning runs two workers per GPU by default.
    resources = {"cpu": 1, "gpu": 0.5} if device == "cuda" else {"cpu": 1}
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")
    search = OptunaSearch(space=ray_space, metric="val_loss", mode="min",
                          sampler=optuna.samplers.TPESampler(seed=seed),
                          points_to_evaluate=([dict(c) for c in _study_space().enqueue]
                                              if queued else None))
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(
            ray_trainable, arrays=load_arrays(DATASET, None, seed),
            space=_study_space().space, epochs=epochs, seed=seed, device=device), resources),
        tune_config=tune.TuneConfig(search_alg=search, num_samples=-1,
                                    scheduler=ASHAScheduler(metric="val_loss", mode="min",
                                                            max_t=epochs, grace_period=1),
                                    time_budget_s=max(budget - (time.time() - started), 1.0),
                                    max_concurrent_trials=os.cpu_count()),
        run_config=tune.RunConfig(storage_path=str(out.parent / "ray"), verbose=0))
    grid = tuner.fit()
    events = []
    for number, result in enumerate(grid):
        frame = result.metrics_dataframe
        if frame is None:
            continue
        for row in frame.to_dict("records"):
            if "val_loss" in row:
                events.append({"trial": number, "epoch": int(row["epoch"]),
                               **{k: row[k] for k in ("val_loss", "val_accuracy",
                                                      "test_accuracy", "at")},
                               "params": result.config})
    out.write_text("".join(json.dumps(event) + "\n" for event in events))
    ray.shutdown()


# --- tuning's side: the CLI, then the study read back ------------------------------------------

def tuning_events(folder: Path, started: float, budget: float, seed: int,
                  device: str) -> list[dict]:
    """Every epoch of the study in `folder`, with its wall time, and the test accuracy of the
    best epoch within the budget (on the held-out split)."""
    import optuna

    study = optuna.load_study(study_name="bench", storage=f"sqlite:///{folder}/bench.db")
    events = []
    for trial in study.trials:
        attrs = trial.user_attrs
        start = trial.datetime_start.timestamp() if trial.datetime_start else None
        accuracies, ends = attrs.get("val_accuracies", []), attrs.get("epoch_ends", [])
        for epoch, (accuracy, end) in enumerate(zip(accuracies, ends, strict=True), start=1):
            if start is None or end is None or epoch not in trial.intermediate_values:
                continue
            events.append({"trial": trial.number, "epoch": epoch, "val_loss":
                           trial.intermediate_values[epoch], "val_accuracy": accuracy,
                           "test_accuracy": None, "at": start + end, "params": trial.params,
                           "state": trial.state.name,
                           "prune_reason": attrs.get("prune_reason")})
    inside = [e for e in events if e["at"] - started <= budget]
    if not inside:
        return events
    best = min(inside, key=lambda e: e["val_loss"])
    frozen = study.trials[best["trial"]]
    accuracy = _test_accuracy_at(frozen, best["epoch"], best["val_loss"], seed, device,
                                 study.user_attrs["settings"]["epochs"])
    for event in events:
        if event["trial"] == frozen.number:
            event["test_accuracy"] = accuracy
    return events


def _test_accuracy_at(trial, epoch: int, val_loss: float, seed: int, device: str,
                      epochs: int) -> float:
    """The test accuracy of `trial`'s network as it was after `epoch`: trained again with the
    trial's seed and threads, on its schedule, and stopped there. Its checkpoint would not do:
    a pruned trial keeps none, and a complete one keeps its best epoch, which may have ended
    after the budget."""
    from tuning.data import load_arrays, to_device
    from tuning.device import resolve_device
    from tuning.evaluate import build_trial_model, cpu_threads, held_out_metrics
    from tuning.train import fit

    study_file = _study_space()
    runtime = resolve_device(device)
    data = to_device(load_arrays(DATASET, None, seed), runtime.device)
    with cpu_threads(trial.user_attrs.get("cpu_threads")):
        model, cfg, generator = build_trial_model(trial.params, study_file.space, data,
                                                  runtime, trial.user_attrs["seed"])
        for result in fit(model, data, cfg, runtime, generator, epochs):
            if result.epoch == epoch:
                break
    if not math.isclose(result.val["loss"], val_loss, rel_tol=1e-4):
        print(f"trial {trial.number} trained again to epoch {epoch}: validation loss "
              f"{result.val['loss']:.4f}, not the trial's {val_loss:.4f}; its test accuracy is "
              "of that network", file=sys.stderr)
    return held_out_metrics(model, data, runtime)["accuracy"]


def command(tool: str, extra: list[str], budget: float, seed: int, started: float,
            folder: Path, ray_python: str, device: str) -> list[str]:
    if tool == "tuning":
        return [sys.executable, "-m", "tuning.search", "--study", "bench", "--config",
                str(ROOT / "tuning" / "studies" / "mnist.toml"), "--storage",
                f"sqlite:///{folder}/bench.db", "--dataset", DATASET, "--trials", "100000",
                "--budget", f"{budget:g}", "--seed", str(seed), "--artifacts",
                str(folder / "artifacts"), "--device", device, "-q", *extra]
    competitor, _, queued = tool.partition("-")
    python = ray_python if competitor == "ray" else sys.executable
    return [python, str(Path(__file__).resolve()), "--run", competitor, "--budget",
            f"{budget:g}", "--seed", str(seed), "--started", repr(started), "--events",
            str(folder / "events.jsonl"), "--device", device,
            *(["--queued"] if queued else [])]


def summarize(events: list[dict], started: float, budget: float) -> dict:
    inside = sorted((e for e in events if e["at"] - started <= budget), key=lambda e: e["at"])
    row: dict = {"trials": len({e["trial"] for e in inside}), "epochs": len(inside),
                 "best_val_loss": None, "test_accuracy": None}
    if inside:
        best = min(inside, key=lambda e: e["val_loss"])
        row["best_val_loss"] = round(best["val_loss"], 4)
        row["best_at_s"] = round(best["at"] - started, 1)
        row["test_accuracy"] = best["test_accuracy"]
        row["best_params"] = best.get("params")
        # tuning's trials only: COMPLETE, or PRUNED (by the pruner, or cut by the budget).
        row["best_state"] = best.get("state")
    for threshold in THRESHOLDS:
        reached = [e["at"] - started for e in inside if e["val_accuracy"] >= threshold]
        row[f"s_to_{round(threshold * 100)}"] = round(reached[0], 1) if reached else None
    return row


def run_one(name: str, tool: str, extra: list[str], budget: float, seed: int, load: str,
            ray_python: str, device: str, events_dir: Path | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-budget-") as tmp:
        folder = Path(tmp)
        hog = (subprocess.Popen([sys.executable, "-c", "while True: pass"])
               if load == "cpu" else None)
        try:
            started = time.time()
            argv = command(tool, extra, budget, seed, started, folder, ray_python, device)
            env = child_env()
            try:
                # The optuna script lets a running trial finish, however long, and its epochs
                # past the budget do not count: it is stopped at the budget.
                result = subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True,
                                        timeout=budget + (5 if tool.startswith("optuna")
                                                          else GRACE_S))
                failed = result.returncode != 0 and result.stderr.strip()[-500:]
            except subprocess.TimeoutExpired:
                failed = False  # stopped past the budget: its epochs so far still count
            wall = time.time() - started
            loadavg = os.getloadavg()[0]
        finally:
            if hog is not None:
                hog.kill()
                hog.wait()
        if failed:
            raise SystemExit(f"{name} failed: {failed}")
        lines = folder / "events.jsonl"
        events = (tuning_events(folder, started, budget, seed, device) if tool == "tuning" else
                  [json.loads(line) for line in lines.read_text().splitlines()]
                  if lines.exists() else [])
    if events_dir is not None:
        events_dir.mkdir(parents=True, exist_ok=True)
        kept = events_dir / f"{name}-{load}-seed{seed}.jsonl"
        kept.write_text("".join(json.dumps({**e, "s": round(e["at"] - started, 2)}) + "\n"
                                for e in sorted(events, key=lambda e: e["at"])))
    return {"tool": name, "load": load, "seed": seed, "wall_s": round(wall, 1),
            "loadavg": round(loadavg, 2), **summarize(events, started, budget)}


def median_rows(rows: list[dict]) -> list[dict]:
    table = []
    for key in dict.fromkeys((r["tool"], r["load"]) for r in rows):
        runs = [r for r in rows if (r["tool"], r["load"]) == key]
        row: dict = {"tool": key[0], "load": key[1], "rounds": len(runs)}
        for field in ("trials", "epochs", "best_val_loss", "s_to_97", "s_to_98",
                      "test_accuracy", "loadavg"):
            values = [r[field] for r in runs]
            known = [v for v in values if v is not None]
            # A run that never reached an accuracy counts as past the budget.
            if field.startswith("s_to") and len(known) < len(values):
                row[field] = (statistics.median(known + [math.inf] * (len(values) - len(known)))
                              if known else None)
            else:
                row[field] = statistics.median(known) if known else None
        table.append(row)
    return table


def markdown(table: list[dict]) -> str:
    fields = ["tool", "load", "rounds", "trials", "epochs", "best_val_loss", "s_to_97",
              "s_to_98", "test_accuracy", "loadavg"]
    lines = ["| " + " | ".join(fields) + " |", "|" + "---|" * len(fields)]
    for row in table:
        cells = []
        for field in fields:
            value = row[field]
            cells.append("never" if value is None or value == math.inf else
                         f"{value:.4g}" if isinstance(value, float) else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ray_available(python: str) -> bool:
    probe = subprocess.run([python, "-c", "import ray.tune.search.optuna"], capture_output=True)
    return probe.returncode == 0


def main() -> None:
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=240.0,
                        help="seconds per run (the defaults run 18 runs: about 72 min)")
    parser.add_argument("--rounds", type=at_least(1), default=3)
    parser.add_argument("--seed", type=int, default=0,
                        help="round r runs every tool with seed + r - 1: the data split, the "
                             "samplers and the trials' initial weights")
    parser.add_argument("--load", default="none,cpu",
                        help="conditions, comma-separated: none (quiet), cpu (a busy process "
                             "beside the run)")
    parser.add_argument("--tools", default="tuning,optuna,ray",
                        help=f"comma-separated, of {', '.join(TOOLS)} (the -queued ones "
                             "start from the study's queued configurations, as tuning does)")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=ARGS",
                        help="a tuning run with these extra search arguments, in place of "
                             "tuning's defaults (repeatable)")
    parser.add_argument("--ray-python", default=sys.executable,
                        help="the Python that has ray[tune] (default: this one)")
    parser.add_argument("--device", default="auto",
                        help="where every tool trains: tuning's --device, and the Optuna and Ray "
                             "scripts' too (default: a GPU if there is one)")
    parser.add_argument("--json", type=Path, help="write every run's row here")
    parser.add_argument("--events-dir", type=Path,
                        help="keep every run's epochs here, one JSON line each "
                             "(TOOL-LOAD-seedN.jsonl; s: seconds from the run's start)")
    parser.add_argument("--run", choices=["optuna", "ray"], help=argparse.SUPPRESS)
    parser.add_argument("--started", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--events", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--queued", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.run:  # one competitor run, in its own process
        (run_optuna if args.run == "optuna" else run_ray)(args.budget, args.started, args.events,
                                                          args.seed, args.device, args.queued)
        return

    runs: list[tuple[str, str, list[str]]] = []
    for tool in args.tools.split(","):
        if tool == "tuning" and args.variant:
            for variant in args.variant:
                name, _, extra = variant.partition("=")
                runs.append((name, "tuning", shlex.split(extra)))
        elif tool not in TOOLS:
            parser.error(f"unknown tool {tool!r}; choose from {', '.join(TOOLS)}")
        elif tool.startswith("ray") and not ray_available(args.ray_python):
            print(f"ray[tune] does not import in {args.ray_python}: {tool} left out",
                  file=sys.stderr)
        else:
            runs.append((tool, tool, []))
    loads = args.load.split(",")
    total_s = args.budget * args.rounds * len(loads) * len(runs)
    print(f"{len(runs)} tools x {len(loads)} loads x {args.rounds} rounds x {args.budget:g} s: "
          f"about {total_s / 60:.0f} min in all", file=sys.stderr, flush=True)
    rows = []
    for round_ in range(1, args.rounds + 1):
        for load in loads:
            for name, tool, extra in runs:
                row = {"round": round_, **run_one(name, tool, extra, args.budget,
                                                  args.seed + round_ - 1, load,
                                                  args.ray_python, args.device,
                                                  args.events_dir)}
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    if args.json:
        args.json.write_text(json.dumps({
            "machine": f"{os.cpu_count()} cores", "date": datetime.now().isoformat("T", "minutes"),
            "budget_s": args.budget, "runs": rows}, indent=1))
    print(markdown(median_rows(rows)))


if __name__ == "__main__":
    main()
