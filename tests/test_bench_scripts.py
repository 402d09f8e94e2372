"""Tier 1: the benchmark scripts stay runnable, and the grouped-trials experiment is measuring
the same training as one-by-one trials (else its speed comparison would mean nothing)."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import pytest
from helpers import ROOT, load_script

from tuning.device import resolve_device
from tuning.train import TrainConfig

SCRIPTS = ROOT / "scripts"
bench_grouped = load_script("bench_grouped")
bench_budget = load_script("bench_budget")
device_wheels = load_script("device_wheels")


def test_grouped_training_computes_what_one_by_one_training_does(tiny_data):
    # Three networks, each with its own lr, weight decay, init, shuffle and crops.
    difference = bench_grouped.check_same(bench_grouped.ARCHITECTURES["small"], tiny_data,
                                          resolve_device("cpu"),
                                          TrainConfig(batch_size=64, crop_padding=2))
    assert difference < 1e-4


def test_grouped_measurement_reports_both_paths(tiny_data):
    row = bench_grouped.measure(bench_grouped.ARCHITECTURES["small"], tiny_data,
                                resolve_device("cpu"), TrainConfig(batch_size=64), k=2, epochs=2)
    assert row["k"] == 2
    assert row["one_by_one_images_per_s"] > 0 and row["grouped_images_per_s"] > 0
    # The speedup is rounded to two decimals: on a loaded machine it can be 0.06 for 0.057.
    assert row["speedup"] == pytest.approx(
        row["grouped_images_per_s"] / row["one_by_one_images_per_s"], rel=0.01, abs=0.005)


@pytest.mark.parametrize("script", ["bench.py", "bench_budget.py", "bench_cv.py",
                                    "bench_folder.py",
                                    "bench_grouped.py", "bench_models.py", "bench_patience.py",
                                    "bench_startup.py",
                                    "bench_threads.py", "bench_throughput.py",
                                    "device_wheels.py"])
def test_benchmark_commands_start(script):
    result = subprocess.run([sys.executable, str(SCRIPTS / script), "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout


def test_the_thread_benchmark_measures_a_layout_alone_and_beside_a_competitor(tmp_path):
    out = tmp_path / "threads.json"
    result = subprocess.run([sys.executable, str(SCRIPTS / "bench_threads.py"), "--epochs", "2",
                             "--rounds", "1", "--layouts", "1x1", "--json", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = json.loads(out.read_text())
    assert [(r["layout"], r["loaded"]) for r in rows] == [("1x1", False), ("1x1", True)]
    assert all(r["seconds_per_epoch"] > 0 and r["images_per_second"] > 0 for r in rows)


def test_the_startup_benchmark_times_a_search_from_its_start_to_its_first_epoch(tmp_path):
    out = tmp_path / "startup.json"
    result = subprocess.run([sys.executable, str(SCRIPTS / "bench_startup.py"), "--rounds", "1",
                             "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(out.read_text())["rounds"]
    assert row["checkout"] == str(ROOT)
    assert row["create_s"] > 0 and row["joined_s"] > 0 and row["first_epoch_s"] > 0
    # Both timed from the search's start: a worker trains its first epoch after it joined.
    assert row["joined_s"] < row["first_epoch_s"]


def test_the_budget_benchmark_counts_only_what_ended_within_the_budget():
    events = [  # (trial, epoch, val loss, val accuracy, seconds after the start)
        {"trial": 0, "epoch": 1, "val_loss": 0.30, "val_accuracy": 0.960, "at": 110.0},
        {"trial": 0, "epoch": 2, "val_loss": 0.10, "val_accuracy": 0.975, "at": 112.0},
        {"trial": 1, "epoch": 1, "val_loss": 0.09, "val_accuracy": 0.981, "at": 118.0},
        {"trial": 1, "epoch": 2, "val_loss": 0.05, "val_accuracy": 0.990, "at": 130.0},
    ]
    for event in events:
        event["test_accuracy"] = 0.9 + event["epoch"] / 100
    events[2]["params"] = {"lr": 0.01}
    events[2]["state"] = "PRUNED"
    row = bench_budget.summarize(events, started=100.0, budget=20.0)
    assert row == {"trials": 2, "epochs": 3, "best_val_loss": 0.09, "best_at_s": 18.0,
                   "test_accuracy": 0.91, "best_params": {"lr": 0.01}, "best_state": "PRUNED",
                   "s_to_97": 12.0, "s_to_98": 18.0}
    never = bench_budget.summarize(events[:1], started=100.0, budget=20.0)
    assert never["s_to_97"] is None and never["s_to_98"] is None


def test_the_budget_benchmark_runs_tuning_and_an_optuna_script_on_one_budget(tmp_path):
    """The Optuna script given the study's queued configuration (optuna-queued) trains it
    first, as tuning does; the plain script differs from it by that enqueue alone.

    How many epochs end within the budget depends on the machine's speed and load (a loaded
    CI machine may end none in it), so each row is checked against its own kept events."""
    budget = 20
    out = tmp_path / "budget.json"
    result = subprocess.run([sys.executable, str(SCRIPTS / "bench_budget.py"), "--budget",
                             str(budget), "--rounds", "1", "--load", "none", "--tools",
                             "tuning,optuna-queued", "--json", str(out), "--events-dir",
                             str(tmp_path / "events")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    runs = json.loads(out.read_text())["runs"]
    assert [r["tool"] for r in runs] == ["tuning", "optuna-queued"]
    queued = bench_budget._study_space().enqueue[0]
    tools_with_epochs = 0
    for tool, run in zip(["tuning", "optuna-queued"], runs, strict=True):
        kept = [json.loads(line) for line in
                (tmp_path / "events" / f"{tool}-none-seed0.jsonl").read_text().splitlines()]
        if not kept:  # the slower script ended no epoch on a slow or loaded machine
            assert (run["trials"], run["epochs"]) == (0, 0), run
            continue
        tools_with_epochs += 1
        seconds = [event["s"] for event in kept]
        assert seconds == sorted(seconds)
        first = min(kept, key=lambda event: event["trial"])["params"]
        assert {name: first[name] for name in queued} == queued, (tool, first)
        # The row counts the epochs that ended within the budget: the first ones kept, as
        # they are kept in time order (their times rounded to 10 ms, the row's exact).
        inside, after = kept[:run["epochs"]], kept[run["epochs"]:]
        assert all(event["s"] <= budget + 0.01 for event in inside), run
        assert all(event["s"] >= budget - 0.01 for event in after), run
        assert run["trials"] == len({event["trial"] for event in inside}), run
        if inside:
            assert run["best_val_loss"] == round(min(e["val_loss"] for e in inside), 4)
            assert 0 < run["best_val_loss"] < 3 and 0 < run["test_accuracy"] <= 1, run
        else:
            assert run["best_val_loss"] is None and run["test_accuracy"] is None, run
    assert tools_with_epochs, "neither tool ended an epoch"
    assert "| tuning | none | 1 |" in result.stdout
    # tuning's test accuracy is of its best epoch within the budget, trained again to it: the
    # same network, or the script says it is not.
    assert "trained again" not in result.stderr


def _wheel(path, files: dict[str, bytes]):
    """A wheel file holding `files` and a RECORD that lists them."""
    record = "".join(f"{name},sha256=x,{len(data)}\n" for name, data in files.items())
    with zipfile.ZipFile(path, "w") as wheel:
        for name, data in files.items():
            wheel.writestr(name, data)
        wheel.writestr("pkg-1.0.dist-info/RECORD", record + "pkg-1.0.dist-info/RECORD,,\n")
    return path


def test_device_wheels_leave_out_only_the_matched_files_and_their_record_lines(tmp_path):
    wheel = _wheel(tmp_path / "pyarrow-1.0-cp312-cp312-linux_x86_64.whl", {
        "pyarrow/lib.so": b"l" * 5000, "pyarrow/libarrow_flight.so.2600": b"f" * 9000,
        "pyarrow/include/arrow/api.h": b"h" * 100, "pyarrow/_fs.so": b"s" * 10})
    saved = device_wheels.trim(wheel, device_wheels.TRIM["pyarrow"])
    with zipfile.ZipFile(wheel) as trimmed:
        names = set(trimmed.namelist())
        record = trimmed.read("pkg-1.0.dist-info/RECORD").decode()
    assert names == {"pyarrow/lib.so", "pyarrow/_fs.so", "pkg-1.0.dist-info/RECORD"}
    assert [line.split(",")[0] for line in record.splitlines()] == [
        "pyarrow/lib.so", "pyarrow/_fs.so", "pkg-1.0.dist-info/RECORD"]
    assert saved > 0


def test_device_wheels_are_packed_into_parts_no_larger_than_asked(tmp_path):
    sizes = {"a": 50, "b": 40, "c": 30, "d": 20, "e": 10}
    wheels = []
    for name, size in sizes.items():
        (tmp_path / f"{name}.whl").write_bytes(b"x" * size)
        wheels.append(tmp_path / f"{name}.whl")
    parts = device_wheels.pack(wheels, capacity=60)
    assert sorted(w.stem for part in parts for w in part) == sorted(sizes)
    assert all(sum(sizes[w.stem] for w in part) <= 60 for part in parts)
    assert len(parts) == 3  # 150 bytes need three parts of 60
    with pytest.raises(SystemExit, match="more than a part holds"):
        device_wheels.pack(wheels, capacity=45)
    assert device_wheels.project_name(tmp_path / "Pillow-10.0-cp312-none-any.whl") == "pillow"


@pytest.mark.parametrize(("script", "args", "words"), [
    ("bench.py", ["--repeats", "0"], "--repeats: expected 1 or more"),
    ("bench_cv.py", ["--folds", "1"], "--folds: expected 2 or more (one fold is no"),
    ("bench_threads.py", ["--epochs", "1"], "(the first epoch is a warm-up), got '1'"),
    ("bench_throughput.py", ["--epochs", "two"], "--epochs: expected 2 or more (the first"),
])
def test_benchmark_counts_too_small_to_measure_are_refused_on_one_line(script, args, words):
    result = subprocess.run([sys.executable, str(SCRIPTS / script), *args],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert words in result.stderr


def test_the_patience_replay_stops_where_a_search_with_patience_would_have(tmp_path):
    from datetime import datetime, timedelta

    import optuna
    from optuna.trial import FrozenTrial, TrialState

    from tuning.storage import open_storage

    url = f"sqlite:///{tmp_path}/s.db"
    study = optuna.create_study(study_name="s", storage=open_storage(url, create=True))
    zero = datetime(2026, 12, 1)
    # (state, value, started, ended) in seconds; the best is trial 1 until trial 6.
    complete, pruned = TrialState.COMPLETE, TrialState.PRUNED
    for number, (state, value, start, end) in enumerate([
            (complete, 0.5, 0, 10), (complete, 0.3, 0, 12), (pruned, None, 10, 13),
            (complete, 0.4, 12, 20), (pruned, None, 13, 14), (complete, 0.35, 14, 25),
            (complete, 0.1, 20, 30)]):
        study.add_trial(FrozenTrial(
            number=number, state=state, value=value,
            datetime_start=zero + timedelta(seconds=start),
            datetime_complete=zero + timedelta(seconds=end), params={}, distributions={},
            user_attrs={}, system_attrs={}, intermediate_values={}, trial_id=0))
    replay = load_script("bench_patience").replay
    trials = study.get_trials()
    assert replay(trials, None) == {"patience": None, "trials": 7, "seconds": 30.0, "best": 0.1}
    # Patience 2 runs out when trial 5 is taken (trials 2 and 4 finished after the best); the
    # running trial 3 still finishes.
    assert replay(trials, 2) == {"patience": 2, "trials": 5, "seconds": 20.0, "best": 0.3}
    assert replay(trials, 3) == {"patience": 3, "trials": 6, "seconds": 25.0, "best": 0.3}
    assert replay(trials, 4)["trials"] == 7
    assert replay(trials, 1) == {"patience": 1, "trials": 4, "seconds": 20.0, "best": 0.3}
    # Where a trial running when patience ran out beat the best, the workers that waited for
    # it go on: with trial 3 at 0.2, patience 1 stops only when trial 6 is taken.
    trials[3].value = 0.2
    assert replay(trials, 1) == {"patience": 1, "trials": 6, "seconds": 25.0, "best": 0.2}
    result = subprocess.run([sys.executable, str(SCRIPTS / "bench_patience.py"), "--storage",
                             url, "--study", "s", "--patience", "2,4", "--json",
                             str(tmp_path / "out.json")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "| 2 | 5 | 20 | 67% | 0.3000 | +0.2000 |" in result.stdout
    assert [row["trials"] for row in json.loads((tmp_path / "out.json").read_text())] == [5, 7]
