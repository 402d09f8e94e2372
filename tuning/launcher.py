"""Start a host's worker processes on one study, watch them, restart the ones that crash.

One worker per visible GPU times --workers-per-gpu, each pinned with CUDA_VISIBLE_DEVICES to
the GPU's real id; or --workers N on the CPU, with the cores split between them. The study
already exists (the search command created it); the workers only load it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState

from tuning.cli import count_finished
from tuning.errors import EXIT_TRIALS_FAILING, EXIT_USAGE, UsageError
from tuning.outage import outages_of, retry_seconds, transient, without_retry
from tuning.storage import split_password

MAX_RESTARTS_PER_WORKER = 3
POLL_S = 1.0
STOP_GRACE_S = 60
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass(frozen=True)
class WorkerSpec:
    """How to start one worker process."""

    index: int
    """Worker number on this host (a label in its log lines)."""
    device: str
    """--device for the worker: 'cpu' or 'cuda' (it sees only its pinned GPU)."""
    gpu: str | None
    """The GPU it is pinned to, as CUDA_VISIBLE_DEVICES names it; None on the CPU."""
    threads: int
    """torch CPU threads."""


def visible_gpus(device: str, count: int,
                 environ: Mapping[str, str] | None = None) -> list[str]:
    """The GPUs workers may use, named as CUDA_VISIBLE_DEVICES names them.

    `count` GPUs are visible to this process. Under a scheduler that set
    CUDA_VISIBLE_DEVICES=2,3 they are '2' and '3' (ids or UUIDs), not 0 and 1: a worker's own
    CUDA_VISIBLE_DEVICES must name the real GPU. `--device cuda:N` keeps only the N-th.
    """
    environ = os.environ if environ is None else environ
    if device == "cpu" or count == 0:
        return []
    listed = environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    ids = [x.strip() for x in listed.split(",")][:count] if listed else \
        [str(i) for i in range(count)]
    if device.startswith("cuda:"):
        index = int(device.split(":", 1)[1])
        if index >= len(ids):
            raise UsageError(f"--device {device}: only {len(ids)} GPU(s) visible")
        return [ids[index]]
    return ids


def plan_workers(gpus: list[str], workers_per_gpu: int, cpu_workers: int | None,
                 cores: int) -> list[WorkerSpec]:
    """Worker specs: per GPU when there are GPUs (unless --workers asks for the CPU), else CPU."""
    if gpus and cpu_workers is None:
        count = len(gpus) * workers_per_gpu
        threads = max(1, cores // count)
        return [WorkerSpec(i, "cuda", gpus[i % len(gpus)], threads) for i in range(count)]
    count = cpu_workers or 1
    threads = max(1, cores // count)
    return [WorkerSpec(i, "cpu", None, threads) for i in range(count)]


def _die_with_parent() -> None:
    """In a new worker: get SIGTERM when the launcher dies, even by SIGKILL (Linux), so no
    worker is left running without anyone watching it."""
    with contextlib.suppress(Exception):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Launcher:
    def __init__(self, study: optuna.Study, storage: str, specs: list[WorkerSpec],
                 data_dir: Path | None, artifacts: Path | None, timeout: float | None, on_trial,
                 stream=sys.stderr, compile_mode: str = "off"):
        self.study = study
        self.specs = specs
        self.data_dir = data_dir
        self.artifacts = artifacts
        self.timeout = timeout
        self.on_trial = on_trial
        self.stream = stream
        self.compile_mode = compile_mode
        self.procs: dict[int, subprocess.Popen] = {}
        self.restarts = {spec.index: 0 for spec in specs}
        self.seen: set[int] = set()
        self.stopping_signal: int | None = None
        self.storage_without_password, self.password = split_password(storage)

    def _command(self, spec: WorkerSpec) -> list[str]:
        cmd = [sys.executable, "-m", "tuning.worker", "--study", self.study.study_name,
               "--storage", self.storage_without_password, "--worker-index", str(spec.index),
               "--device", spec.device, "--threads", str(spec.threads), "--compile",
               self.compile_mode, "--no-progress"]
        if self.data_dir is not None:
            cmd += ["--data-dir", str(self.data_dir)]
        if self.artifacts is not None:
            cmd += ["--artifacts", str(self.artifacts)]
        if self.timeout is not None:
            cmd += ["--timeout", str(self.timeout)]
        return cmd

    def _start(self, spec: WorkerSpec) -> None:
        env = dict(os.environ)
        if self.password is not None:
            env["PGPASSWORD"] = self.password  # not on the command line, where ps shows it
        if spec.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = spec.gpu
        # Keep each worker's BLAS pools to its share of the cores as well.
        env["OMP_NUM_THREADS"] = str(spec.threads)
        # Its own session: a Ctrl-C in the terminal reaches only this launcher, which passes
        # one SIGTERM on; a worker hit by both could be interrupted while recording its trial.
        self.procs[spec.index] = subprocess.Popen(self._command(spec), env=env,
                                                  start_new_session=True,
                                                  preexec_fn=_die_with_parent)

    def _report_new_trials(self) -> None:
        for trial in self.study.get_trials(deepcopy=False):
            if trial.number in self.seen or trial.state in (TrialState.RUNNING,
                                                            TrialState.WAITING):
                continue
            self.seen.add(trial.number)
            self.on_trial(self.study, trial)

    def _poll_study(self) -> None:
        """Report finished trials; while the database is down, skip (the workers wait it out
        themselves) and keep watching the workers."""
        try:
            with without_retry(self.study._storage):
                self._report_new_trials()
        except Exception as exc:
            if not transient(exc):
                raise
            outages_of(self.study._storage).failed(exc, retry_seconds())

    def _target_met(self) -> bool:
        return count_finished(self.study) >= self.study.user_attrs["target_trials"]

    def _handle_signal(self, signum, frame) -> None:
        self.stopping_signal = signum
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    def run(self) -> int:
        """Run until every worker has exited; returns the exit status for the command."""
        self.seen = {t.number for t in self.study.get_trials(deepcopy=False)
                     if t.state not in (TrialState.RUNNING, TrialState.WAITING)}
        # A closed terminal (SIGHUP) stops the workers too: they run in sessions of their own.
        previous = {s: signal.signal(s, self._handle_signal) for s in STOP_SIGNALS}
        try:
            for spec in self.specs:
                self._start(spec)
            print(f"started {len(self.specs)} workers: " + ", ".join(
                f"#{s.index} pid {self.procs[s.index].pid} "
                f"{'gpu ' + s.gpu if s.gpu is not None else 'cpu'}" for s in self.specs),
                file=self.stream, flush=True)
            return self._watch()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _watch(self) -> int:
        specs = {spec.index: spec for spec in self.specs}
        status = 0
        while self.procs:
            time.sleep(POLL_S)
            self._poll_study()
            for index, proc in list(self.procs.items()):
                code = proc.poll()
                if code is None:
                    continue
                del self.procs[index]
                if self.stopping_signal is not None or code == 0:
                    continue
                if code == EXIT_USAGE:  # the worker's own one-line error is already on stderr
                    status = EXIT_USAGE
                    continue
                if code == EXIT_TRIALS_FAILING:
                    print(f"worker #{index} stopped: its trials kept failing", file=self.stream)
                    status = EXIT_TRIALS_FAILING
                    continue
                how = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
                if self._target_met():
                    print(f"worker #{index} (pid {proc.pid}) {how}; target already met",
                          file=self.stream)
                elif self.restarts[index] < MAX_RESTARTS_PER_WORKER:
                    self.restarts[index] += 1
                    print(f"worker #{index} (pid {proc.pid}) {how}; its trial will be retried; "
                          f"restarting it ({self.restarts[index]}/{MAX_RESTARTS_PER_WORKER})",
                          file=self.stream, flush=True)
                    self._start(specs[index])
                else:
                    print(f"worker #{index} (pid {proc.pid}) {how}; not restarting it again, "
                          "the other workers go on", file=self.stream)
            if self.stopping_signal is not None:
                self._wait_for_stop()
                break
        self._report_new_trials()
        if self.stopping_signal is not None:
            return 128 + self.stopping_signal
        return status

    def _wait_for_stop(self) -> None:
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs.clear()
