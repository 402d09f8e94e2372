"""Start a host's worker processes on one study, watch them, restart the ones that crash.

One worker per visible GPU times --workers-per-gpu, each pinned with CUDA_VISIBLE_DEVICES to
the GPU's real id; or --workers N on the CPU, with the cores split between them. The study
already exists (the search command created it); the workers only load it.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TextIO

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuning.cli import FINISHED, MAX_WORKERS, TARGET_ATTR, Progress
from tuning.errors import EXIT_DATABASE_LOST, EXIT_TRIALS_FAILING, EXIT_USAGE, UsageError
from tuning.outage import outages_of, retry_seconds, transient, without_retry
from tuning.settings import whole_number_setting
from tuning.storage import fail_for_retry, split_password

MAX_RESTARTS_PER_WORKER = 3
POLL_S = 1.0
STOP_GRACE_S = 60
log = logging.getLogger("tuning")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def worker_id(pid: int | None = None) -> str:
    """A worker process's name in its trials and log lines: `host:pid` (this process's when
    `pid` is None)."""
    return f"{socket.gethostname()}:{os.getpid() if pid is None else pid}"


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


# On the CPU the searched networks are small, and one trial uses a second thread poorly: two
# single-thread workers side by side beat one worker on both cores, alone and beside another
# CPU-bound process, in trials, epochs, best loss and time to 98% (scripts/bench_budget.py,
# docs/benchmarks.md). Past this many workers each one gets more threads instead: every worker
# loads its own copy of the data and takes its turn at the study's lock (measured on 2 cores).
MAX_DEFAULT_CPU_WORKERS = 4


def default_cpu_workers(cores: int, environ: Mapping[str, str] | None = None) -> int:
    """How many CPU workers a search runs without --workers: $TUNING_WORKERS, else one per
    core up to MAX_DEFAULT_CPU_WORKERS."""
    return whole_number_setting("TUNING_WORKERS", max(1, min(cores, MAX_DEFAULT_CPU_WORKERS)),
                                low=1, high=MAX_WORKERS, unit="workers", environ=environ)


def plan_workers(gpus: list[str], workers_per_gpu: int, cpu_workers: int | None,
                 cores: int, most: int | None = None) -> list[WorkerSpec]:
    """Worker specs: per GPU when there are GPUs (unless --workers asks for the CPU), else
    `cpu_workers` on the CPU (None: default_cpu_workers); never more than `most` (the trials
    left to run: a worker more would start, load the data and find nothing to take)."""
    # Read even where the GPUs take the work: a bad $TUNING_WORKERS is an error on any machine.
    cpu_count = cpu_workers or default_cpu_workers(cores)
    if gpus and cpu_workers is None:
        count = min(len(gpus) * workers_per_gpu, most or MAX_WORKERS)
        threads = max(1, cores // count)
        return [WorkerSpec(i, "cuda", gpus[i % len(gpus)], threads) for i in range(count)]
    cpu_count = min(cpu_count, most or MAX_WORKERS)
    threads = max(1, cores // cpu_count)
    return [WorkerSpec(i, "cpu", None, threads) for i in range(cpu_count)]


def _die_with_parent() -> None:
    """In a new worker: get SIGTERM when the launcher dies, even by SIGKILL (Linux), so no
    worker is left running without anyone watching it."""
    with contextlib.suppress(Exception):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Launcher:
    """Starts the workers, restarts the ones that crash, and prints the progress of all of
    them: it reads the study (every trial's reported epochs and end), so the lines come in one
    order with one count, each naming its worker (w0, w1, ...)."""

    def __init__(self, study: optuna.Study, storage: str, specs: list[WorkerSpec],
                 data_dir: Path | None, artifacts: Path | None, timeout: float | None,
                 on_trial: Callable[[optuna.Study, FrozenTrial], None] | None = None,
                 stream: TextIO | None = None, compile_mode: str = "off",
                 progress: Progress | None = None, dataset: str | None = None,
                 deadline: float | None = None):
        self.study = study
        self.specs = specs
        self.data_dir = data_dir
        self.dataset = dataset
        """The images' path when the run gives them another than the study recorded."""
        self.artifacts = artifacts
        self.timeout = timeout
        self.started: float | None = None
        """When the first workers started (time.monotonic()): --timeout counts from then, so a
        worker restarted later is given what is left of it."""
        self.deadline = deadline
        """When the run's --budget ends (time.monotonic()): each worker is given what is left."""
        self.on_trial = on_trial
        self.progress = progress
        self.stream = stream if stream is not None else sys.stderr
        self.compile_mode = compile_mode
        self.procs: dict[int, subprocess.Popen] = {}
        self.index_of_pid: dict[int, int] = {}
        self.restarts = {spec.index: 0 for spec in specs}
        self.seen: set[int] = set()
        self.epochs_seen: dict[int, int] = {}
        self.stopping_signal: int | None = None
        self.storage_without_password, self.password = split_password(storage)

    def _command(self, spec: WorkerSpec) -> list[str]:
        cmd = [sys.executable, "-m", "tuning.worker", "--study", self.study.study_name,
               "--storage", self.storage_without_password, "--worker-index", str(spec.index),
               "--device", spec.device, "--threads", str(spec.threads), "--compile",
               self.compile_mode, "--launched"]
        if self.data_dir is not None:
            cmd += ["--data-dir", str(self.data_dir)]
        if self.dataset is not None:
            cmd += ["--dataset", self.dataset]
        if self.artifacts is not None:
            cmd += ["--artifacts", str(self.artifacts)]
        if self.timeout is not None:
            spent = 0.0 if self.started is None else time.monotonic() - self.started
            cmd += ["--timeout", f"{max(self.timeout - spent, 0.001):.3f}"]
        if self.deadline is not None:
            cmd += ["--budget", f"{max(self.deadline - time.monotonic(), 0.001):.3f}"]
        # The search's --quiet or --verbose, for the workers' own log lines too.
        if not log.isEnabledFor(logging.INFO):
            cmd.append("--quiet")
        elif log.isEnabledFor(logging.DEBUG):
            cmd.append("--verbose")
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
        # it on once; a worker hit by both could be interrupted while recording its trial.
        command = self._command(spec)
        if self.started is None:
            self.started = time.monotonic()
        proc = subprocess.Popen(command, env=env, start_new_session=True,
                                preexec_fn=_die_with_parent)
        self.procs[spec.index] = proc
        self.index_of_pid[proc.pid] = spec.index

    def _say(self, message: str) -> None:
        if self.progress is not None:
            self.progress.write(message)  # clears the status line on a terminal first
        else:
            print(message, file=self.stream, flush=True)

    def _worker(self, trial: FrozenTrial) -> str | None:
        """The trial's worker: w<index> for this launcher's, else its host:pid."""
        worker = trial.user_attrs.get("worker")
        if worker is None:
            return None
        for pid, index in self.index_of_pid.items():
            if worker == worker_id(pid):
                return f"w{index}"
        return worker

    def _report_new_trials(self) -> None:
        trials = self.study.get_trials(deepcopy=False)
        if self.progress is not None:
            self.progress.observe(trials, parallel=len(self.procs))
        ended = [t for t in trials if t.number not in self.seen
                 and t.state not in (TrialState.RUNNING, TrialState.WAITING)]
        # In the order they ended: trials that end between two polls are found in number order.
        ended.sort(key=lambda t: (t.datetime_complete or datetime.max, t.number))
        # The trials that ended before those running now: a worker's next trial starts after
        # its last one ended, and its epochs come after that trial's line.
        for trial in ended:
            self.seen.add(trial.number)
            if self.progress is not None:
                self._report_epochs(trial)  # its last epochs, before its line
            if self.on_trial is not None:
                self.on_trial(self.study, trial)
            if self.progress is not None:
                self.progress.trial(self.study, trial, self._worker(trial))
        if self.progress is not None:
            for trial in trials:
                if trial.state == TrialState.RUNNING:
                    self._report_epochs(trial)

    def _report_epochs(self, trial: FrozenTrial) -> None:
        """An epoch line for each epoch `trial` reported since the last poll."""
        assert self.progress is not None
        now = datetime.now()  # Optuna's trial times are naive local times
        steps = sorted(s for s in trial.intermediate_values
                       if s > self.epochs_seen.get(trial.number, 0))
        for step in steps:
            # Timed at the latest epoch only: the poll sees it within POLL_S of its end.
            seconds = (now - trial.datetime_start).total_seconds() if (
                step == steps[-1] and trial.state == TrialState.RUNNING
                and trial.datetime_start is not None) else None
            self.progress.epoch(trial.number, step, trial.intermediate_values[step],
                                seconds, self._worker(trial))
        if steps:
            self.epochs_seen[trial.number] = steps[-1]

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

    def _fail_trial_of(self, pid: int, how: str) -> None:
        """Fail the trial a worker was running when it died, marked as due its retry: the
        launcher saw it die, so no heartbeat grace period need pass first (a run ending
        sooner, at its --budget, left the trial running until the next run). The database
        down, its heartbeat finds it later."""
        worker = worker_id(pid)
        storage = self.study._storage
        try:
            with without_retry(storage):
                for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                    if trial.user_attrs.get("worker") == worker:
                        fail_for_retry(storage, trial._trial_id, reason=f"its worker {how}")
        except Exception as exc:
            if not transient(exc):
                raise
            outages_of(storage).failed(exc, retry_seconds())

    def _target_met(self) -> bool:
        """Whether the study met its target: a worker that dies then is not restarted. One
        that dies once --patience is spent is: a trial still running may beat the best, and
        the search then goes on with every worker (a restarted worker that finds nothing to
        wait for stops at once)."""
        try:
            with without_retry(self.study._storage):  # the launcher has workers to watch
                trials = self.study.get_trials(deepcopy=False)
                target = self.study.user_attrs[TARGET_ATTR]
        except Exception as exc:
            if not transient(exc):
                raise
            return False  # unknown while the database is down: the restarted worker waits it out
        return sum(t.state in FINISHED for t in trials) >= target

    def _handle_signal(self, signum, frame) -> None:
        # Passed on as it came, so that a Ctrl-C is a Ctrl-C in every trial's failure reason.
        self.stopping_signal = signum
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signum)

    def _start_watching(self) -> None:
        """What is on record before this run: its trials are not this run's news. A trial
        still running (another host's worker, or a dead run's whose heartbeat has not yet
        gone stale) gets lines only for the epochs it reports from now on."""
        trials = self.study.get_trials(deepcopy=False)
        self.seen = {t.number for t in trials
                     if t.state not in (TrialState.RUNNING, TrialState.WAITING)}
        self.epochs_seen = {t.number: max(t.intermediate_values) for t in trials
                            if t.state == TrialState.RUNNING and t.intermediate_values}

    def run(self) -> int:
        """Run until every worker has exited; returns the exit status for the command."""
        self._start_watching()
        # A closed terminal (SIGHUP) stops the workers too: they run in sessions of their own.
        # One it ignores (nohup's SIGHUP) stays ignored.
        previous = {s: signal.signal(s, self._handle_signal) for s in STOP_SIGNALS
                    if signal.getsignal(s) != signal.SIG_IGN}
        try:
            for spec in self.specs:
                self._start(spec)
            if log.isEnabledFor(logging.INFO):
                self._say(f"started {len(self.specs)} workers: " + ", ".join(
                    f"w{s.index} pid {self.procs[s.index].pid} "
                    f"{'gpu ' + s.gpu if s.gpu is not None else 'cpu'}" for s in self.specs))
            return self._watch()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _watch(self) -> int:
        specs = {spec.index: spec for spec in self.specs}
        status = 0
        given_up: list[str] = []
        """How the workers that died too often to restart died, the last time."""
        ended = 0
        """Workers that exited 0: done with the target, a --timeout, --budget or --patience."""
        while self.procs:
            time.sleep(POLL_S)
            self._poll_study()
            for index, proc in list(self.procs.items()):
                code = proc.poll()
                if code is None:
                    continue
                del self.procs[index]
                ended += code == 0
                if self.stopping_signal is not None or code == 0:
                    continue
                if code == EXIT_USAGE:  # the worker's own one-line error is already on stderr
                    status = EXIT_USAGE
                    continue
                if code == EXIT_TRIALS_FAILING:
                    self._say(f"worker w{index} stopped: its trials kept failing")
                    status = EXIT_TRIALS_FAILING
                    continue
                if code == EXIT_DATABASE_LOST:  # it said so; restarted, it would wait again
                    status = EXIT_DATABASE_LOST
                    continue
                how = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
                self._fail_trial_of(proc.pid, how)
                if self._target_met():
                    self._say(f"worker w{index} (pid {proc.pid}) {how}; the search is done")
                elif self.restarts[index] < MAX_RESTARTS_PER_WORKER:
                    self.restarts[index] += 1
                    self._say(f"worker w{index} (pid {proc.pid}) {how}; its trial will be "
                              f"retried; restarting it "
                              f"({self.restarts[index]}/{MAX_RESTARTS_PER_WORKER})")
                    self._start(specs[index])
                else:
                    given_up.append(how)
                    self._say(f"worker w{index} (pid {proc.pid}) {how}; not restarting it "
                              "again" + (", the other workers go on" if self.procs else ""))
            if self.stopping_signal is not None:
                self._wait_for_stop()
                break
        self._poll_study()  # not waiting out an outage: a stopped run must not hang on one
        if self.stopping_signal is not None:
            return 128 + self.stopping_signal
        if status == 0 and given_up and not ended and not self._target_met():
            # Every worker died too often: the target is not met, and a script must not take
            # the run for a success.
            one = len(given_up) == 1
            every = "the worker" if one else f"all {len(given_up)} workers"
            self._say(f"the target is not met: {every} died {MAX_RESTARTS_PER_WORKER + 1} "
                      f"times{'' if one else ' each'} (the last: {given_up[-1]}) and "
                      f"{'was' if one else 'were'} not restarted; the same command goes on, "
                      "running the failed trials again first")
            return EXIT_TRIALS_FAILING
        return status

    def _wait_for_stop(self) -> None:
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs.clear()
