"""Tier 1: the benchmark scripts stay runnable, and the grouped-trials experiment is measuring
the same training as one-by-one trials (else its speed comparison would mean nothing)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import ROOT, load_script

from tuning.device import resolve_device
from tuning.train import TrainConfig

SCRIPTS = ROOT / "scripts"
bench_grouped = load_script("bench_grouped")


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


@pytest.mark.parametrize("script", ["bench.py", "bench_cv.py", "bench_folder.py",
                                    "bench_grouped.py", "bench_models.py", "bench_threads.py",
                                    "bench_throughput.py"])
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
