"""A full disk under the artifacts or the temporary directory: the trial keeps its result;
under a report's --out: one line, and an earlier report stays whole.

Real full file systems: a few KiB of tmpfs, mounted for the test (root on Linux; skipped
elsewhere). Tier 1 calls the objective directly; tier 3 runs the real CLI.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import optuna
import pytest
import torch
from helpers import load_study, run_cli
from optuna.trial import TrialState

from tuning.device import resolve_device
from tuning.model import ArchConfig, build_model
from tuning.objective import Objective
from tuning.storage import artifact_store
from tuning.study_file import parse_study

PAGE = 4096
# Everything fixed, so that the size of the checkpoint is known before training.
ARCH = {"blocks": 1, "channels": 8, "activation": "relu"}
SPACE = parse_study({"space": {**ARCH, "optimizer": "adam", "lr": 1e-3,
                               "batch_size": 128}}).space


def checkpoint_bytes() -> int:
    """The size of a checkpoint of SPACE's network: torch.save does not compress, so it depends
    on the shapes and names of the tensors, not on their values."""
    buffer = io.BytesIO()
    torch.save(build_model(ArchConfig(**ARCH), (1, 28, 28), 10).state_dict(), buffer)
    return len(buffer.getvalue())


@pytest.fixture
def full_disk(tmp_path: Path):
    """A factory: `full_disk(free)` mounts a tmpfs with `free` bytes of room (whole pages)
    and returns its directory; every mount is undone when the test ends."""
    mounted: list[Path] = []

    def mount(free: int) -> Path:
        if os.name != "posix" or os.geteuid() != 0 or shutil.which("mount") is None:
            pytest.skip("mounting a tmpfs needs root on Linux")
        path = tmp_path / f"tmpfs{len(mounted)}"
        path.mkdir()
        size = -(-free // PAGE) * PAGE
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                                 str(path)], capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        mounted.append(path)
        assert shutil.disk_usage(path).free == size
        return path

    yield mount
    for path in reversed(mounted):
        # A file left open by a failed write keeps the mount busy: detach it lazily then.
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "--lazy", str(path)], check=True)


def run_new_best_trial(data, tmp_path: Path, artifacts: Path) -> optuna.trial.FrozenTrial:
    """One trial, the study's first, so a new best that saves a checkpoint; the study's
    database is on the ordinary disk."""
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}")
    objective = Objective(data=data, runtime=resolve_device("cpu", "off"),
                          space=SPACE, epochs=1, seed=0, artifacts=artifact_store(artifacts))
    trial = study.ask()
    study.tell(trial, objective(trial))
    return study.trials[0]


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "tuning" and r.levelno == logging.WARNING]


def assert_kept_its_result_without_a_checkpoint(trial, caplog, where: Path) -> None:
    assert trial.state == TrialState.COMPLETE
    assert trial.value == pytest.approx(min(trial.intermediate_values.values()))
    assert "checkpoint_artifact" not in trial.user_attrs
    assert "curves_artifact" not in trial.user_attrs
    (warning,) = warnings_of(caplog)
    assert warning.startswith("trial 0: checkpoint not saved to ")
    assert str(where) in warning and "No space left on device" in warning
    assert warning.endswith("the trial keeps its result")


def test_a_checkpoint_that_does_not_fit_is_a_warning_and_leaves_no_partial_file(
        tiny_data, tmp_path, full_disk, caplog):
    artifacts = full_disk(8 * 1024)
    assert checkpoint_bytes() > 8 * 1024  # the write fails partway
    trial = run_new_best_trial(tiny_data, tmp_path, artifacts)
    assert_kept_its_result_without_a_checkpoint(trial, caplog, artifacts)
    assert os.listdir(artifacts) == []


def test_weights_stored_but_curves_not_leaves_neither(tiny_data, tmp_path, full_disk, caplog):
    # Exactly the weights' pages: they fit, the curves file after them does not.
    artifacts = full_disk(checkpoint_bytes())
    trial = run_new_best_trial(tiny_data, tmp_path, artifacts)
    assert_kept_its_result_without_a_checkpoint(trial, caplog, artifacts)
    assert os.listdir(artifacts) == []
    assert shutil.disk_usage(artifacts).used == 0


def test_a_full_temporary_directory_is_the_same_warning(tiny_data, tmp_path, full_disk,
                                                        caplog, monkeypatch):
    tmp = full_disk(8 * 1024)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    artifacts = tmp_path / "artifacts"
    trial = run_new_best_trial(tiny_data, tmp_path, artifacts)
    assert_kept_its_result_without_a_checkpoint(trial, caplog, artifacts)
    assert "temporary directory" in warnings_of(caplog)[0] and str(tmp) in warnings_of(caplog)[0]
    assert os.listdir(artifacts) == [] and os.listdir(tmp) == []


@pytest.mark.slow
def test_search_on_a_full_artifact_disk_finishes_with_a_warning(workdir, cheap_space, full_disk):
    cheap_space(workdir)  # 8-channel networks, as ARCH: checkpoints larger than 8 KiB
    artifacts = full_disk(8 * 1024)
    result = run_cli("--dataset", "mnist-sample", "--epochs", "1", "--trials", "2",
                     "--artifacts", str(artifacts), cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    study = load_study(f"sqlite:///{workdir}/studies/mnist.db", "mnist")
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == len(study.trials) == 2
    warnings = [line for line in result.stderr.splitlines()
                if "checkpoint not saved to" in line]
    # The first trial is always a new best; the second only if it beats the first.
    assert 1 <= len(warnings) <= 2 and "No space left on device" in warnings[0]
    assert "trial 0: " in warnings[0] and str(artifacts) in warnings[0]
    assert not any("checkpoint_artifact" in t.user_attrs for t in study.trials)
    assert os.listdir(artifacts) == []


def small_reportable_study(tmp_path: Path) -> optuna.Study:
    """A hand-made study on mnist-sample with a few complete trials, enough for a report."""
    import dataclasses

    from optuna.distributions import FloatDistribution

    from tuning.data import load_arrays
    from tuning.study_file import StudySettings

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}", study_name="s")
    study.set_user_attr("settings", dataclasses.asdict(StudySettings(dataset="mnist-sample",
                                                                     epochs=1)))
    study.set_user_attr("space", parse_study({"space": {"lr": {"low": 1e-3, "high": 0.1,
                                                               "log": True}}}).space_dict())
    study.set_user_attr("data", load_arrays("mnist-sample", download=False).fingerprint())
    for lr, value in ((1e-2, 0.3), (3e-2, 0.4), (5e-3, 0.35)):
        study.add_trial(optuna.create_trial(
            value=value, params={"lr": lr}, user_attrs={"val_accuracy": 1 - value},
            distributions={"lr": FloatDistribution(1e-3, 0.1, log=True)}))
    return study


def test_a_report_on_a_full_disk_is_one_line_and_leaves_an_earlier_report_whole(
        tmp_path, full_disk):
    from tuning.errors import UsageError
    from tuning.report import build_report

    study = small_reportable_study(tmp_path)
    room = full_disk(16 * 1024 * 1024)  # a report holds plotly.js: about 5 MB
    first = room / "report"
    build_report(study, first, with_test=False)
    earlier = {p.name: p.read_bytes() for p in first.iterdir()}
    assert set(earlier) == {"index.html", "summary.md", "trials.csv"}
    filler = room / "filler"
    with filler.open("wb") as f:  # the rest of the room taken, but for a page
        f.write(b"\0" * (shutil.disk_usage(room).free - PAGE))
    study.add_trial(optuna.create_trial(value=0.2, params={"lr": 0.02},
                                        distributions=study.trials[0].distributions))
    with pytest.raises(UsageError, match="the report into .* failed: No space left on device"):
        build_report(study, first, with_test=False)
    # The earlier report is as it was, with no partial file beside it.
    assert {p.name: p.read_bytes() for p in first.iterdir()} == earlier
    # A new --out on the full disk: the folder made for it goes again.
    with pytest.raises(UsageError, match="No space left on device"):
        build_report(study, room / "new" / "report", with_test=False)
    assert sorted(p.name for p in room.iterdir()) == ["filler", "report"]
    filler.unlink()  # room again: the same command runs
    build_report(study, first, with_test=False)
    assert (first / "summary.md").read_bytes() != earlier["summary.md"]
    # A file a killed report left half written does not make its folder someone else's.
    from tuning.report import check_out

    leftover = room / "killed"
    leftover.mkdir()
    (leftover / ".index.html.partial").write_text("<html")
    check_out(leftover)
    (leftover / "notes.txt").write_text("someone's")
    with pytest.raises(UsageError, match="holds no earlier report"):
        check_out(leftover)
