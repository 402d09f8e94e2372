"""The report on a real small study: every section, honest numbers, a page that renders."""

from __future__ import annotations

import csv
import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import optuna
import pytest
import torch
from helpers import ROOT, run_cli

STUDY_FILE = """
[study]
dataset = "mnist-sample"
epochs = 2
sampler = "grid"
pruner = "median"
seed = 0

[space]
optimizer = { choices = ["adam", "sgd", "rmsprop", "adamw"] }
lr = { choices = [0.001, 0.01] }
weight_decay = { choices = [0.00001, 0.001] }
dropout = 0.1
crop_padding = 1
channels = 8
activation = "relu"
batch_size = 128
"""


@pytest.fixture(scope="module")
def small_study(tmp_path_factory):
    """A real 8-trial study (grid over 4 optimizers x 2 learning rates ...), then its report."""
    workdir = tmp_path_factory.mktemp("report")
    (workdir / "studies").mkdir()
    (workdir / "studies" / "small.toml").write_text(STUDY_FILE)
    result = run_cli("--study", "small", "--trials", "8", cwd=workdir)
    assert result.returncode == 0, result.stderr
    report = run_cli("--study", "small", module="tuning.report", cwd=workdir)
    assert report.returncode == 0, report.stderr
    return workdir


def _load(workdir):
    return optuna.load_study(study_name="small",
                             storage=f"sqlite:///{workdir}/studies/small.db")


@pytest.mark.slow
def test_report_has_every_section_and_every_optimizer(small_study):
    out = small_study / "reports" / "small"
    page = (out / "index.html").read_text()
    summary = (out / "summary.md").read_text()
    for section in ["Overview", "Optimizers", "Learning rate", "Regularization",
                    "Importance and history", "Held-out test"]:
        assert f"## {section}" in summary
        assert f">{section}</h2>" in page
    tried = {t.params["optimizer"] for t in _load(small_study).trials}
    assert tried == {"adam", "sgd", "rmsprop", "adamw"}
    optimizer_table = summary.split("### Per optimizer")[1].split("###")[0]
    for name in tried:
        assert f"| {name} |" in optimizer_table
    assert "fANOVA" in summary and "compute saved by pruning" in summary
    # Self-contained: no script, stylesheet or font fetched from anywhere.
    assert "<script src=" not in page and "<link" not in page and "@import" not in page
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert len(rows) == 8
    # Each trial's epochs: their accuracies, and when each was known (seconds into the trial).
    finished = [r for r in rows if r["state"] in ("COMPLETE", "PRUNED")]
    assert finished and all(len(json.loads(r["val_accuracies"]))
                            == len(json.loads(r["epoch_ends"])) == int(r["epochs_run"])
                            for r in finished)


@pytest.mark.slow
def test_test_metrics_agree_with_an_independent_confusion_matrix(small_study):
    from sklearn.metrics import confusion_matrix, f1_score, precision_score, recall_score

    from tuning.data import load_arrays, to_device
    from tuning.device import resolve_device
    from tuning.evaluate import model_for_trial
    from tuning.storage import artifact_store
    from tuning.study import stored_definition
    from tuning.train import evaluate

    metrics = json.loads((small_study / "reports" / "small" / "test_metrics.json").read_text())
    assert metrics["class_names"] == [str(d) for d in range(10)]
    for config in ("best", "tutorial"):
        for key in ("accuracy", "macro_precision", "macro_recall", "macro_f1"):
            assert 0.0 <= metrics[config][key] <= 1.0
    study = _load(small_study)
    settings, space = stored_definition(study)
    runtime = resolve_device("cpu")
    data = to_device(load_arrays("mnist-sample"), runtime.device)
    model, how = model_for_trial(study.best_trial, space, data, runtime, 2,
                                 artifact_store(small_study / "artifacts"))
    assert "checkpoint" in how  # the best trial's weights were saved as an artifact
    y_pred = evaluate(model, data.test, runtime, return_predictions=True)["predictions"].numpy()
    y_true = data.test.y.numpy()
    assert metrics["best"]["confusion_matrix"] == confusion_matrix(y_true, y_pred).tolist()
    assert metrics["best"]["accuracy"] == pytest.approx(float(np.mean(y_true == y_pred)))
    assert metrics["best"]["macro_precision"] == pytest.approx(
        precision_score(y_true, y_pred, average="macro", zero_division=0))
    assert metrics["best"]["macro_recall"] == pytest.approx(
        recall_score(y_true, y_pred, average="macro"))
    assert metrics["best"]["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    state = torch.load(small_study / "artifacts" / study.best_trial.user_attrs[
        "checkpoint_artifact"], weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())


@pytest.mark.slow
def test_a_second_report_does_not_train_the_tutorial_again(small_study, tmp_path, monkeypatch):
    import tuning.evaluate
    from tuning.report import build_report
    from tuning.storage import artifact_store

    def no_training(*args, **kwargs):
        raise AssertionError("the tutorial was trained again")

    monkeypatch.setattr(tuning.evaluate, "retrain", no_training)
    monkeypatch.chdir(small_study)
    metrics = build_report(_load(small_study), tmp_path, "cpu",
                           artifact_store(small_study / "artifacts"))
    first = json.loads((small_study / "reports" / "small" / "test_metrics.json").read_text())
    assert metrics["tutorial"] == first["tutorial"]
    assert "The tutorial's result was reused from a report of" in (
        tmp_path / "summary.md").read_text()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium not installed")
def test_report_page_renders_offline_in_headless_chromium(small_study, tmp_path):
    from PIL import Image

    shot = tmp_path / "page.png"
    subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--no-first-run",
         f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,1600",
         "--virtual-time-budget=5000", f"--screenshot={shot}",
         f"file://{small_study / 'reports' / 'small' / 'index.html'}"],
        check=True, capture_output=True, timeout=120)
    image = np.asarray(Image.open(shot).convert("L"))
    assert image.std() > 5  # not a blank page
    assert len(np.unique(image)) > 20  # text, tables and plot lines, not a flat colour
    figures = _page_figures((small_study / "reports" / "small" / "index.html").read_text())
    assert len(figures) >= 8
    for _, layout in figures:
        title = layout["title"]["text"]
        axes = {k: v for k, v in layout.items() if k.startswith(("xaxis", "yaxis"))}
        if title.startswith("Parallel coordinates"):  # its x axis names the parameters
            assert layout["xaxis"]["ticktext"][0] == "validation loss"
            continue
        titled = {k for k, a in axes.items() if a.get("title", {}).get("text")}
        # Every x axis says what it is; subplots in a row share the first one's y title.
        assert {k for k in axes if k.startswith("xaxis")} <= titled, title
        assert any(k.startswith("yaxis") for k in titled), title


def _page_figures(page: str) -> list[tuple[list, dict]]:
    """(data, layout) of every plotly figure on the page, read from its Plotly.newPlot call."""
    decoder = json.JSONDecoder()
    figures = []
    for call in page.split("Plotly.newPlot(")[1:]:
        rest = call.split(",", 1)[1].lstrip()  # after the element id
        data, end = decoder.raw_decode(rest)
        layout, _ = decoder.raw_decode(rest[end:].lstrip(", \n"))
        figures.append((data, layout))
    return figures


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_dashboard_serves_the_study_and_its_artifacts_on_loopback(small_study):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuning.dashboard", "--study", "small", "--port", str(port)],
        cwd=small_study, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        studies = None
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{base}/api/studies", timeout=2) as r:
                    studies = json.load(r)["study_summaries"]
                break
            except OSError:
                time.sleep(0.5)
        assert studies is not None, proc.stderr.read() if proc.poll() is not None else ""
        assert [s["study_name"] for s in studies] == ["small"]
        study_id = studies[0]["study_id"]
        with urllib.request.urlopen(f"{base}/api/studies/{study_id}?after=0", timeout=10) as r:
            detail = json.load(r)
        # The objective is named, not "Objective 0".
        assert detail["objective_names"] == ["val_loss"]
        artifacts = [a for t in detail["trials"] for a in t.get("artifacts", [])]
        assert any(a["filename"].endswith(".pt") for a in artifacts)
        assert any(a["filename"].endswith("-curves.json") for a in artifacts)
        # Ctrl-C while it answers requests (a browser polls it): stopped, not answered with a
        # 500 and served on, and with a stopped command's status.
        polling = threading.Thread(target=_poll_until_gone, args=(f"{base}/api/studies/"
                                                                  f"{study_id}?after=0",),
                                   daemon=True)
        polling.start()
        time.sleep(1)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130
        err = proc.stderr.read()
        assert f"on http://127.0.0.1:{port}/ (Ctrl-C to stop)\n" in err
        assert err.endswith("stopped by SIGINT\n") and "Traceback" not in err, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def _poll_until_gone(url: str) -> None:
    while True:
        try:
            urllib.request.urlopen(url, timeout=5).read()
        except urllib.error.HTTPError:
            continue  # what the server used to answer a Ctrl-C met in a request with
        except OSError:
            return


def test_dashboard_refuses_where_it_cannot_listen_before_it_starts(small_study, monkeypatch,
                                                                      capsys):
    from tuning.dashboard import main as dashboard

    monkeypatch.chdir(small_study)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        for args, expected in ((["--port", port], "Address already in use"),
                               (["--host", "", "--port", port], "--host is empty"),
                               (["--host", "no.such.host.invalid"], "is not an address here")):
            assert dashboard(["--study", "small", *args]) == 2
            err = capsys.readouterr().err
            assert err.startswith("error: ") and expected in err, err
            assert len(err.strip().splitlines()) == 1  # nothing said of a server starting
    with pytest.raises(SystemExit) as refused:
        dashboard(["--study", "small", "--port", "70000"])
    assert refused.value.code == 2 and "at most 65,535" in capsys.readouterr().err


@pytest.mark.slow
def test_report_bad_input_exits_2(small_study, tmp_path, monkeypatch, capsys):
    """The report's main in this process, as tests/test_cli.py runs bad input (a second each,
    not five; tests/test_read_only.py runs the report's refusals as processes)."""
    from tuning.report import main as report
    from tuning.search import main as search

    monkeypatch.chdir(small_study)
    (tmp_path / "studies").mkdir()
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "index.html").write_text("someone's page")
    cases = [
        (["--study", "small", "--out", str(tmp_path / "site")],
         "is not empty and holds no earlier report"),
        (["--study", "nope", "--storage", f"sqlite:///{small_study}/studies/small.db"],
         "does not exist"),
        (["--study", "small", "--storage", f"sqlite:///{tmp_path}/missing.db"], "no study"),
        (["--study", "small", "--out", "/proc/forbidden"], "cannot be written"),
    ]
    for args, expected in cases:
        code = report(args)
        err = capsys.readouterr().err
        assert code == 2, (args, err)
        assert expected in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "site" / "index.html").read_text() == "someone's page"
    empty = f"sqlite:///{tmp_path}/empty.db"
    assert search(["--create-only", "--study", "empty", "--config", "studies/small.toml",
                   "--storage", empty]) == 0
    capsys.readouterr()
    code = report(["--study", "empty", "--storage", empty])
    assert code == 2 and "no finished trials" in capsys.readouterr().err
