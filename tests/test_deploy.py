"""The cluster launchers in deploy/: the SLURM batch script and the Kubernetes manifests.

No scheduler or cluster runs here. The manifests are checked against the Kubernetes API's
schemas (with kubernetes-validate, where installed) and for what this project needs of them;
every command in them is parsed by the module it runs. The SLURM script is linted and run for
real with the scheduler's environment faked: it creates a study and its workers run it.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import POSTGRES_URL, ROOT, load_study, wait_for_running_trials
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

K8S = ROOT / "deploy" / "k8s"
SBATCH = ROOT / "deploy" / "slurm" / "tuning.sbatch"
# podFailurePolicy is GA (batch/v1) from Kubernetes 1.31: the oldest version to validate for.
K8S_VERSIONS = ("1.31.0", "1.37.0")

# A study that trains in a second or two per trial on the CPU.
TINY_STUDY = """\
[study]
dataset = "mnist-sample"
epochs = 1
sampler = "random"
pruner = "none"

[space]
blocks = 1
channels = 4
hidden = 0
batch_norm = false
activation = "relu"
optimizer = "adam"
lr = { low = 1e-3, high = 1e-2, log = true }
batch_size = 256
crop_padding = 0
hflip = false
"""


# --- Kubernetes ----------------------------------------------------------------------------

def manifests() -> dict[tuple[str, str], dict]:
    """Every object in deploy/k8s, by (kind, name)."""
    objects = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is None:
                continue
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in objects, f"{key} defined twice"
            objects[key] = doc
    return objects


def pod_spec(job: dict) -> dict:
    return job["spec"]["template"]["spec"]


def all_containers(job: dict) -> list[dict]:
    spec = pod_spec(job)
    return spec.get("initContainers", []) + spec["containers"]


def container_env(container: dict, objects: dict) -> dict[str, str]:
    """The environment Kubernetes gives the container: envFrom ConfigMaps, then env values."""
    env = {}
    for source in container.get("envFrom", []):
        env.update(objects[("ConfigMap", source["configMapRef"]["name"])]["data"])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
    return env


def expanded_command(container: dict, objects: dict) -> list[str]:
    """command + args with $(VAR) replaced as the kubelet does; every reference must resolve."""
    env = container_env(container, objects)
    words = container.get("command", []) + container.get("args", [])
    unresolved = [m for w in words for m in re.findall(r"\$\((\w+)\)", w) if m not in env]
    assert not unresolved, f"{container['name']}: $({unresolved[0]}) is not in its environment"
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], w) for w in words]


def module_command(words: list[str]) -> tuple[str, list[str]] | None:
    """(module, its arguments) for `python -m module ...`; None for other commands."""
    if len(words) >= 3 and Path(words[0]).name.startswith("python") and words[1] == "-m":
        return words[2], words[3:]
    return None


def parse_cli(module: str, args: list[str]):
    """The module's own parser on these arguments: a flag it does not know fails the test."""
    parser = importlib.import_module(module).build_parser()
    try:
        return parser.parse_args(args)
    except SystemExit:
        pytest.fail(f"python -m {module} rejects {shlex.join(args)}")


def jobs(objects: dict) -> dict[str, dict]:
    return {name: obj for (kind, name), obj in objects.items() if kind == "Job"}


def test_manifests_hold_a_secret_a_configmap_and_two_jobs():
    objects = manifests()
    assert sorted(objects) == [("ConfigMap", "tuning"), ("Job", "tuning-create"),
                               ("Job", "tuning-worker"), ("Secret", "tuning-postgres")]
    api_versions = {kind: obj["apiVersion"] for (kind, _), obj in objects.items()}
    assert api_versions == {"ConfigMap": "v1", "Secret": "v1", "Job": "batch/v1"}
    for job in jobs(objects).values():
        images = {c["image"] for c in all_containers(job)}
        # The image docker-compose.yml builds from the Dockerfile.
        assert images == {"tuning:latest"}
    assert (ROOT / "Dockerfile").is_file()
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert compose["x-tuning"]["image"] == "tuning:latest"


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_match_the_kubernetes_api_schema(version):
    kv = pytest.importorskip("kubernetes_validate")
    for (kind, name), obj in manifests().items():
        try:
            kv.validate(obj, version, strict=True)
        except kv.ValidationError as exc:
            pytest.fail(f"{kind}/{name} is not valid for Kubernetes {version}: "
                        f"{'.'.join(map(str, exc.path))}: {exc.message}")
    # Strict means strict: a misspelt field is caught, not ignored.
    worker = copy.deepcopy(manifests()[("Job", "tuning-worker")])
    worker["spec"]["paralelism"] = worker["spec"].pop("parallelism")
    with pytest.raises(kv.ValidationError):
        kv.validate(worker, version, strict=True)


def failure_rules(job: dict) -> list[dict]:
    return job["spec"]["podFailurePolicy"]["rules"]


def fails_job_on_exit_2(job: dict) -> bool:
    return any(rule["action"] == "FailJob" and rule["onExitCodes"]["operator"] == "In"
               and 2 in rule["onExitCodes"]["values"]
               for rule in failure_rules(job) if "onExitCodes" in rule)


def test_jobs_stop_on_a_usage_error_instead_of_retrying():
    for name, job in jobs(manifests()).items():
        # The API server accepts a podFailurePolicy only with restartPolicy Never.
        assert pod_spec(job)["restartPolicy"] == "Never", name
        assert fails_job_on_exit_2(job), name
        assert 0 < job["spec"]["backoffLimit"] <= 10, name
        names = {c["name"] for c in all_containers(job)}
        for rule in failure_rules(job):
            codes = rule.get("onExitCodes", {})
            assert 0 not in codes.get("values", []), name  # the API server rejects 0
            if "containerName" in codes:
                assert codes["containerName"] in names, name


def test_worker_job_runs_parallel_gpu_workers_after_the_study_exists():
    objects = manifests()
    job = objects[("Job", "tuning-worker")]
    spec = job["spec"]
    assert spec["parallelism"] >= 2
    # Each worker exits 0 once the target is met: the Job must complete when they all have.
    assert spec.get("completions") in (None, spec["parallelism"])
    # A preempted or evicted worker is replaced without using up the backoffLimit.
    assert any(rule["action"] == "Ignore"
               and {"type": "DisruptionTarget", "status": "True"} in rule["onPodConditions"]
               for rule in failure_rules(job) if "onPodConditions" in rule)
    (worker,) = pod_spec(job)["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    module, args = module_command(expanded_command(worker, objects))
    assert module == "tuning.worker"
    parsed = parse_cli(module, args)
    assert parsed.device == "cuda"  # the container sees only its own GPU
    assert parsed.study == objects[("ConfigMap", "tuning")]["data"]["TUNING_STUDY"]
    # The worker exits 2 on a study that does not exist: an init container waits for it.
    (init,) = pod_spec(job)["initContainers"]
    words = expanded_command(init, objects)
    assert words[:2] == ["python", "-c"]
    compile(words[2], init["name"], "exec")  # the script at least is Python
    assert pod_spec(job)["terminationGracePeriodSeconds"] >= 30  # time to finish a step


def test_creator_job_only_creates_the_study():
    objects = manifests()
    job = objects[("Job", "tuning-create")]
    (creator,) = pod_spec(job)["containers"]
    module, args = module_command(expanded_command(creator, objects))
    assert module == "tuning.search"
    parsed = parse_cli(module, args)
    data = objects[("ConfigMap", "tuning")]["data"]
    assert parsed.create_only
    assert (parsed.study, parsed.storage, parsed.trials) == (
        data["TUNING_STUDY"], data["TUNING_STORAGE"], int(data["TUNING_TRIALS"]))
    assert (ROOT / "tuning" / "studies" / f"{parsed.study}.toml").is_file()
    assert "nvidia.com/gpu" not in str(creator.get("resources", {}))


def test_password_comes_from_the_secret_never_from_a_url_or_command_line():
    objects = manifests()
    secret = objects[("Secret", "tuning-postgres")]
    placeholder = secret["stringData"]["password"]
    assert placeholder == "REPLACE-ME"  # docs/cluster.md says to replace it
    url = objects[("ConfigMap", "tuning")]["data"]["TUNING_STORAGE"]
    assert make_url(url).password is None and "password=" not in url
    assert placeholder not in (K8S / "tuning.yaml").read_text()
    for name, job in jobs(objects).items():
        volumes = {v["name"]: v for v in pod_spec(job).get("volumes", [])}
        for container in all_containers(job):
            env = container_env(container, objects)
            assert "PGPASSWORD" not in env, f"{name}/{container['name']}: a literal password"
            for word in expanded_command(container, objects):
                if "://" in word:
                    assert make_url(word).password is None
            # PGPASSWORD_FILE names a file of a volume made from the Secret's `password` key.
            path = Path(env["PGPASSWORD_FILE"])
            (mount,) = [m for m in container["volumeMounts"]
                        if Path(m["mountPath"]) == path.parent]
            assert mount.get("readOnly") is True
            source = volumes[mount["name"]]["secret"]
            assert source["secretName"] == secret["metadata"]["name"]
            assert {"key": "password", "path": path.name} in source["items"]


# --- SLURM ---------------------------------------------------------------------------------

def sbatch_env(**settings: str) -> dict[str, str]:
    """This environment less what a scheduler or the user may have set, plus `settings`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TUNING_", "SLURM_", "PGPASSWORD", "CUDA_VISIBLE_DEVICES"))}
    for key in ("TUNING_HEARTBEAT_INTERVAL", "TUNING_GRACE_PERIOD"):  # conftest's short ones
        env[key] = os.environ[key]
    env.update(PYTHONPATH=str(ROOT), TUNING_PYTHON=sys.executable, **settings)
    return env


def run_sbatch(*args: str, cwd: Path = ROOT, timeout: float = 300,
               **settings: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SBATCH), *args], cwd=cwd, env=sbatch_env(**settings),
                          capture_output=True, text=True, timeout=timeout)


def dry_run(*args: str, **settings: str) -> list[tuple[dict[str, str], str, list[str]]]:
    """The commands the script would start: (environment, module, arguments) each."""
    result = run_sbatch(*args, TUNING_DRY_RUN="1",
                        TUNING_STORAGE="postgresql://tuning@db-host:5432/tuning", **settings)
    assert result.returncode == 0, result.stderr
    commands = []
    for line in result.stdout.splitlines():
        words = shlex.split(line)
        env = {}
        while "=" in words[0]:
            key, value = words.pop(0).split("=", 1)
            env[key] = value
        assert words[0] == sys.executable
        module, args = module_command(words)
        commands.append((env, module, args))
    return commands


def test_sbatch_script_is_valid_bash():
    result = subprocess.run(["bash", "-n", str(SBATCH)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_sbatch_script_passes_shellcheck():
    result = subprocess.run(["shellcheck", str(SBATCH)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_sbatch_directives_come_before_the_first_command():
    # sbatch stops reading #SBATCH lines at the first command: a directive after it is ignored.
    lines = SBATCH.read_text().splitlines()
    first_command = next(i for i, line in enumerate(lines[1:], 1)
                         if line.strip() and not line.startswith("#"))
    directives = dict(line.split()[1].lstrip("-").partition("=")[::2]
                      for line in lines if line.startswith("#SBATCH"))
    assert all(i < first_command for i, line in enumerate(lines) if line.startswith("#SBATCH"))
    # The shell (B:) is told a minute before the time limit; it tells the workers.
    assert re.fullmatch(r"B:TERM@\d+", directives["signal"])
    assert directives["gres"].startswith("gpu:") and directives["ntasks"] == "1"


@pytest.mark.parametrize(("visible", "per_gpu", "expected"), [
    ("2,3", "1", ["2", "3"]),  # the scheduler's own ids, not positions 0..n-1
    ("GPU-5f0c,GPU-8a1d", "2", ["GPU-5f0c", "GPU-5f0c", "GPU-8a1d", "GPU-8a1d"]),
    ("", "1", [None]),
    ("NoDevFiles", "1", [None]),
])
def test_sbatch_pins_each_worker_to_one_gpu_of_the_task(visible, per_gpu, expected):
    commands = dry_run(CUDA_VISIBLE_DEVICES=visible, TUNING_WORKERS_PER_GPU=per_gpu,
                       SLURM_CPUS_PER_TASK="8", SLURM_ARRAY_TASK_ID="1",
                       TUNING_DATA_DIR="/shared/data")
    assert [env.get("CUDA_VISIBLE_DEVICES") for env, _, _ in commands] == expected
    for env, module, args in commands:
        assert module == "tuning.worker"
        parsed = parse_cli(module, args)
        assert parsed.device == ("cpu" if expected == [None] else "cuda")
        assert (parsed.study, parsed.storage) == ("mnist", "postgresql://tuning@db-host:5432/tuning")
        assert parsed.data_dir == Path("/shared/data")
        assert env["OMP_NUM_THREADS"] == str(8 // len(expected))  # the task's cores, shared


def test_sbatch_create_mode_runs_search_create_only():
    ((env, module, args),) = dry_run("create", TUNING_STUDY="fashion-mnist", TUNING_TRIALS="40",
                                     TUNING_SEARCH_ARGS="--epochs 3 --seed 7")
    parsed = parse_cli(module, args)
    assert module == "tuning.search" and parsed.create_only
    assert (parsed.study, parsed.trials, parsed.epochs, parsed.seed) == ("fashion-mnist", 40, 3, 7)
    # Without TUNING_TRIALS the study keeps its own target: the create job run again must not
    # reset a study's target to the default 100.
    ((env, module, args),) = dry_run("create")
    assert "--trials" not in args


@pytest.mark.parametrize(("args", "settings", "message"), [
    ((), {"TUNING_STORAGE": "postgresql://tuning:s3cret@db-host/tuning"}, "holds a password"),
    ((), {"TUNING_STORAGE": "postgresql://tuning@db-host/tuning?password=s3cret"},
     "holds a password"),
    ((), {}, "set TUNING_STORAGE"),
    (("run",), {"TUNING_STORAGE": "sqlite:///x.db"}, "unknown mode 'run'"),
    ((), {"TUNING_STORAGE": "sqlite:///x.db", "TUNING_WORKERS_PER_GPU": "0"}, "positive integer"),
])
def test_sbatch_refuses_bad_settings_with_one_line(args, settings, message):
    result = run_sbatch(*args, TUNING_DRY_RUN="1", **settings)
    assert result.returncode == 2 and result.stdout == ""
    assert message in result.stderr and len(result.stderr.splitlines()) == 1
    assert "s3cret" not in result.stderr


# --- Real runs ------------------------------------------------------------------------------

@pytest.fixture
def tiny(workdir: Path) -> dict[str, str]:
    """Settings for a 2-trial study in a SQLite file, as a user would export them."""
    (workdir / "studies" / "tiny.toml").write_text(TINY_STUDY)
    return {"TUNING_STUDY": "tiny", "TUNING_STORAGE": f"sqlite:///{workdir / 'tiny.db'}",
            "TUNING_TRIALS": "2", "TUNING_ARTIFACTS": str(workdir / "artifacts")}


@pytest.mark.slow
def test_every_module_the_launchers_run_answers_help():
    objects = manifests()
    commands = [module_command(expanded_command(c, objects))
                for job in jobs(objects).values() for c in all_containers(job)]
    modules = {command[0] for command in commands if command is not None}
    modules |= {module for mode in ("create", "work") for _, module, _ in dry_run(mode)}
    assert modules == {"tuning.search", "tuning.worker"}
    for module in sorted(modules):
        result = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and "usage:" in result.stdout, result.stderr


@pytest.mark.slow
def test_sbatch_creates_the_study_and_its_workers_meet_the_target(workdir, tiny):
    # An array task started before the study exists stops at once with status 2: why the
    # array is submitted with --dependency=afterok on the creating job.
    early = run_sbatch(cwd=workdir, SLURM_ARRAY_TASK_ID="0", **tiny)
    assert early.returncode == 2, early.stderr
    created = run_sbatch("create", cwd=workdir, **tiny)
    assert created.returncode == 0, created.stderr
    worked = run_sbatch(cwd=workdir, SLURM_ARRAY_TASK_ID="0", SLURM_CPUS_PER_TASK="1", **tiny)
    assert worked.returncode == 0, worked.stderr
    trials = load_study(tiny["TUNING_STORAGE"], "tiny").trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert trials[0].user_attrs["device"] == "cpu"


@pytest.mark.slow
def test_sbatch_passes_sigterm_on_to_its_workers_and_waits(workdir, tiny):
    long = {**tiny, "TUNING_TRIALS": "20", "TUNING_SEARCH_ARGS": "--epochs 50"}
    assert run_sbatch("create", cwd=workdir, **long).returncode == 0
    # Its own process group, so that a failing test leaves no worker behind.
    proc = subprocess.Popen(["bash", str(SBATCH)], cwd=workdir, text=True,
                            env=sbatch_env(**tiny, SLURM_CPUS_PER_TASK="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        wait_for_running_trials(tiny["TUNING_STORAGE"], "tiny", proc)
        proc.send_signal(signal.SIGTERM)  # what --signal=B:TERM@60 does: the shell alone
        _, stderr = proc.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "SIGTERM: stopping the workers" in stderr
    states = [t.state for t in load_study(tiny["TUNING_STORAGE"], "tiny").trials]
    assert TrialState.RUNNING not in states and TrialState.FAIL in states
    pid = int(re.search(r"worker 0 \(pid (\d+)\)", stderr).group(1))
    assert not Path(f"/proc/{pid}").exists()  # waited for, not left behind


@pytest.mark.slow
def test_worker_pods_wait_for_the_creator_job(workdir, tiny):
    """The worker Job's init container, run for real: it waits while the study is missing,
    and returns once the creator Job's own command has made it."""
    objects = manifests()
    worker_job, create_job = objects[("Job", "tuning-worker")], objects[("Job", "tuning-create")]
    (init,) = pod_spec(worker_job)["initContainers"]
    (creator,) = pod_spec(create_job)["containers"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), **tiny}

    def run_init(wait_s: str) -> subprocess.Popen:
        _, flag, script = expanded_command(init, objects)
        return subprocess.Popen([sys.executable, flag, script], cwd=workdir, text=True,
                                env={**env, "TUNING_WAIT_S": wait_s},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    gave_up = run_init("0")
    out, err = gave_up.communicate(timeout=60)
    assert gave_up.returncode == 2 and "did not appear" in err, out + err

    waiting = run_init("120")
    try:
        time.sleep(1)
        assert waiting.poll() is None
        module, args = module_command(expanded_command(creator, {
            **objects, ("ConfigMap", "tuning"): {"data": {**tiny}}}))
        created = subprocess.run([sys.executable, "-m", module, *args], cwd=workdir, env=env,
                                 capture_output=True, text=True, timeout=300)
        assert created.returncode == 0, created.stderr
        out, err = waiting.communicate(timeout=60)
    finally:
        waiting.kill()
    assert waiting.returncode == 0, err
    assert "study 'tiny' is ready" in out
    # Before the creator made the tables, in words, not the database's error.
    assert re.search(r"waiting for study 'tiny' in \S+: not created yet", out), out
    assert "no such table" not in out


@pytest.mark.postgres
@pytest.mark.parametrize("change", [{"database": "no_such_db"}, {"username": "no_such_role"}])
def test_worker_pods_stop_at_once_on_a_database_that_refuses_them_for_good(tmp_path, change):
    """The init container does not wait out its 30 minutes for a database or role that does
    not exist (or a wrong password): one line, exit 2, and the Job fails."""
    objects = manifests()
    (init,) = pod_spec(objects[("Job", "tuning-worker")])["initContainers"]
    _, flag, script = expanded_command(init, objects)
    url = make_url(POSTGRES_URL).set(**change).render_as_string(hide_password=False)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TUNING_STORAGE": url,
           "TUNING_STUDY": "tiny", "TUNING_WAIT_S": "120"}
    started = time.monotonic()
    result = subprocess.run([sys.executable, flag, script], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert time.monotonic() - started < 30  # not waited for
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: the database ") and "refused the connection" in line
    assert f'"{next(iter(change.values()))}" does not exist' in line
