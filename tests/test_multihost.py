"""Two hosts on one PostgreSQL study, one of them cut off past the grace period.

The second "host" is a network namespace joined to this one by a veth pair. PostgreSQL listens
on 127.0.0.1 only, so a small TCP relay in this process forwards the veth's host address to
it. Cutting the link is `ip link set ... down`: packets are dropped, the worker's connections
hang, and its trial's heartbeat stops. Past the grace period the host worker fails that trial
and retries it; once the link is back, the cut-off worker must drop its stale result (not
crash with `ValueError: Cannot tell a FAIL trial`) and help finish the study.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from helpers import POSTGRES_URL, ROOT, load_study, run_cli, start_search
from optuna.trial import TrialState

from tuning.storage import open_storage, resolve_url

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

POSTGRES_ADDRESS = ("127.0.0.1", 5432)
TARGET = 8


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


@dataclass(frozen=True)
class Namespace:
    """A network namespace and the veth pair that links it to this one."""

    name: str
    """The namespace, for `ip netns exec`."""
    host_link: str
    """The veth end in this namespace: setting it down cuts the link."""
    host_ip: str
    """The address of `host_link`, which the namespace reaches this host by."""

    def cut(self) -> None:
        ip("link", "set", self.host_link, "down")

    def restore(self) -> None:
        ip("link", "set", self.host_link, "up")
        # The kernel puts the subnet's route back with the link; check rather than assume.
        routes = subprocess.run(["ip", "route", "show", "dev", self.host_link],
                                capture_output=True, text=True, timeout=30).stdout
        assert self.host_ip.rsplit(".", 1)[0] in routes, routes


@pytest.fixture
def netns():
    tag = f"{os.getpid() % 100_000}{uuid.uuid4().hex[:2]}"
    name, host_link, ns_link = f"tuning-mh-{tag}", f"tmh{tag}h", f"tmh{tag}n"
    subnet = f"10.77.{os.getpid() % 250 + 1}"

    def remove() -> None:
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            ip("link", "del", host_link)  # takes its peer with it
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            ip("netns", "del", name)

    try:
        ip("netns", "add", name)
        ip("link", "add", host_link, "type", "veth", "peer", "name", ns_link)
        ip("link", "set", ns_link, "netns", name)
        ip("addr", "add", f"{subnet}.1/24", "dev", host_link)
        ip("link", "set", host_link, "up")
        for args in (["addr", "add", f"{subnet}.2/24", "dev", ns_link],
                     ["link", "set", ns_link, "up"], ["link", "set", "lo", "up"]):
            ip("netns", "exec", name, "ip", *args)
    except (OSError, subprocess.CalledProcessError) as exc:  # not root, no CAP_NET_ADMIN, no ip
        remove()
        reason = getattr(exc, "stderr", None) or exc
        pytest.skip(f"cannot create a network namespace with a veth pair: "
                    f"{str(reason).strip()}")
    try:
        yield Namespace(name, host_link, f"{subnet}.1")
    finally:
        remove()


class Relay:
    """Forwards TCP connections from `listen_host` (`port`, else a free one) to `target`, with
    threads."""

    def __init__(self, listen_host: str, target: tuple[str, int], port: int = 0) -> None:
        self._target = target
        self._server = socket.create_server((listen_host, port))
        self._server.settimeout(0.2)  # so that close() is noticed
        self.port = self._server.getsockname()[1]
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self._target, timeout=5)
            except OSError:
                client.close()
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                thread = threading.Thread(target=self._pump, args=(source, sink), daemon=True)
                self._threads.append(thread)
                thread.start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:  # one side gone: so is the other
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed.set()
        self._threads[0].join(timeout=5)  # no new connection from here on
        for s in self._sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        for thread in self._threads[1:]:
            thread.join(timeout=5)
        for s in [self._server, *self._sockets]:
            s.close()


@pytest.fixture
def relay(netns):
    r = Relay(netns.host_ip, POSTGRES_ADDRESS)
    yield r
    r.close()


@pytest.fixture
def pg_study():
    name = f"multihost-{uuid.uuid4().hex[:8]}"
    yield name
    with contextlib.suppress(KeyError):
        optuna.delete_study(study_name=name, storage=resolve_url(POSTGRES_URL))


def start_worker(study: str, storage: str, cwd: Path, log: Path,
                 prefix: tuple[str, ...] = ()) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(
            [*prefix, sys.executable, "-m", "tuning.worker", "--study", study,
             "--storage", storage, "--threads", "1"],
            cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.DEVNULL, stderr=out, text=True)


def wait_for(condition, what: str, workers: dict[str, subprocess.Popen], logs: dict[str, Path],
             timeout: float):
    """Poll `condition()` until it returns something; fail at once if a worker exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, proc in workers.items():
            assert proc.poll() is None, f"{name} worker exited early:\n{logs[name].read_text()}"
        with contextlib.suppress(Exception):  # tables not there yet, a transient error
            if found := condition():
                return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_worker_cut_off_past_the_grace_period_drops_its_trial_and_finishes(
        workdir, cheap_space, netns, relay, pg_study):
    # 8 epochs of a cheap network: a trial trains for seconds, for the cut to land in.
    cheap_space(workdir)
    created = run_cli("--create-only", "--study", pg_study, "--config", "studies/mnist.toml",
                      "--storage", POSTGRES_URL, "--dataset", "mnist-sample", "--epochs", "8",
                      "--trials", str(TARGET), cwd=workdir)
    assert created.returncode == 0, created.stderr
    # One storage for all the polling: one connection, not a new engine every 0.2 s.
    poll = open_storage(POSTGRES_URL, heartbeat=False)
    study_id = poll.get_study_id_from_name(pg_study)

    def trials():
        return poll.get_all_trials(study_id, deepcopy=False)

    logs = {"host": workdir / "host.log", "namespaced": workdir / "namespaced.log"}
    remote_url = f"postgresql://postgres@{netns.host_ip}:{relay.port}/test"
    workers = {
        "host": start_worker(pg_study, POSTGRES_URL, workdir, logs["host"]),
        "namespaced": start_worker(pg_study, remote_url, workdir, logs["namespaced"],
                                   prefix=("ip", "netns", "exec", netns.name)),
    }
    try:
        # `ip netns exec` execs the worker, so its pid is the one in the trial's "worker".
        remote = f":{workers['namespaced'].pid}"

        def remote_trial_training():
            # Its seed is recorded once its parameters are: from then on it trains.
            return [t for t in trials() if t.state == TrialState.RUNNING
                    and t.user_attrs.get("worker", "").endswith(remote)
                    and "seed" in t.user_attrs]

        for _ in range(3):
            victim = wait_for(remote_trial_training, "a trial training in the namespace",
                              workers, logs, timeout=120)[0]
            netns.cut()
            cut_at = time.monotonic()
            if trials()[victim.number].state == TrialState.RUNNING:
                break
            netns.restore()  # it finished just before the cut: take the next one
        else:
            pytest.fail("the namespaced worker's trials kept finishing before the cut")

        def victim_failed():
            return trials()[victim.number].state == TrialState.FAIL

        wait_for(victim_failed, f"the host worker to fail trial {victim.number}", workers,
                 logs, timeout=120)
        time.sleep(2)
        netns.restore()
        cut_for = time.monotonic() - cut_at
        deadline = time.monotonic() + 300
        while any(proc.poll() is None for proc in workers.values()):
            assert time.monotonic() < deadline, "still running 300 s after the restore:\n" \
                + "\n".join(f"--- {name}:\n{log.read_text()}" for name, log in logs.items())
            time.sleep(0.5)
        returncodes = {name: proc.returncode for name, proc in workers.items()}
    finally:
        for proc in workers.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        poll.engine.dispose()

    remote_log = logs["namespaced"].read_text()
    print(f"trial {victim.number} cut off for {cut_for:.1f} s; namespaced worker:\n{remote_log}")
    assert returncodes == {"host": 0, "namespaced": 0}, \
        f"{returncodes}\n--- host:\n{logs['host'].read_text()}\n--- namespaced:\n{remote_log}"
    assert "was failed by another worker" in remote_log, remote_log
    assert "Traceback" not in remote_log, remote_log

    study = load_study(POSTGRES_URL, pg_study)
    states = Counter(t.state for t in study.trials)
    assert states[TrialState.COMPLETE] + states[TrialState.PRUNED] == TARGET, states
    assert states[TrialState.RUNNING] == states[TrialState.WAITING] == 0, states
    cut_off = study.trials[victim.number]
    assert cut_off.state == TrialState.FAIL
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == victim.number]
    assert retries and retries[0].params == cut_off.params
    assert retries[0].user_attrs["seed"] == cut_off.user_attrs["seed"]


def test_the_creator_started_before_the_server_waits_for_it(workdir, pg_study):
    """A scheduler may start the creating job (--create-only) before the database server
    listens (a Kubernetes Job applied with the server): it waits, as workers do, and creates
    the study once the server is up, instead of exiting 2, which fails the Job for good."""
    with socket.create_server(("127.0.0.1", 0)) as probe:  # a port nothing listens on now
        port = probe.getsockname()[1]
    creator = start_search("--create-only", "--study", pg_study, "--config", "mnist",
                           "--dataset", "mnist-sample", "--trials", "3", "--storage",
                           f"postgresql://postgres@127.0.0.1:{port}/test", cwd=workdir,
                           env={"TUNING_DB_RETRY_S": "120"})
    assert creator.stderr is not None
    said = []
    relay = None
    try:
        for line in creator.stderr:  # the server comes up once the creator waits for it
            said.append(line)
            if "database unreachable" in line:
                relay = Relay("127.0.0.1", POSTGRES_ADDRESS, port)
                break
        said += creator.stderr.readlines()
        assert creator.wait(timeout=120) == 0, "".join(said)
    finally:
        creator.kill()
        if relay is not None:
            relay.close()
    assert relay is not None and "database reachable again" in "".join(said), "".join(said)
    study = load_study(POSTGRES_URL, pg_study)
    assert study.user_attrs["target_trials"] == 3
