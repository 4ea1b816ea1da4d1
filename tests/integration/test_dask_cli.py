"""The declared Dask command lines, run by the real `dask` CLI.

The scheduler's and workers' command lines are taken from the offline plan (the
real program under the SDK's mocks) and started as processes with this
environment's `dask` executable. Only what cannot be the same outside Docker is
changed, in `localize` (each change says why); every other flag and value runs
exactly as declared, so a flag the real CLI rejects, a worker that reports other
threads, memory or resources than declared, or a health endpoint the container's
healthcheck would miss fails here rather than on a cluster.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.bag as db
import distributed
import httpx
import psutil
import pytest
from distributed import Client

from components.dask import SCHEDULER_ALIAS
from infra.config import NAMESPACE, DaskSpec, Images
from stacks.mocks import Evaluation, Resource
from stacks.plan import evaluate_stack

pytestmark = pytest.mark.integration

CONTAINER = "docker:index/container:Container"
REMOTE_IMAGE = "docker:index/remoteImage:RemoteImage"
SCHEDULER = "dask-scheduler"
WORKER_PREFIX = "dask-workers-"

# The venv's own CLI: the same distributed the client below imports.
DASK = Path(sys.executable).with_name("dask")
LOOPBACK = "127.0.0.1"

# Bounds on every wait, so a broken command line fails the test instead of hanging it.
STARTUP_TIMEOUT_S = 60.0
RESULT_TIMEOUT_S = 30.0
PENDING_WAIT_S = 3.0
STOP_TIMEOUT_S = 10.0
POLL_S = 0.2

# A head node and one GPU host with two GPUs: one worker per GPU, `GPU=1` each.
# The GPU host's memory keeps each worker's Dask limit below this machine's RAM,
# which distributed would otherwise cap (and report) instead of the declared value.
GPU_HOSTS = [
    {"name": "head", "address": "10.0.0.1", "roles": ["head"], "cpus": 4, "memoryGb": 16},
    {"name": "gpu1", "address": "10.0.0.2", "roles": ["worker"], "cpus": 8, "memoryGb": 16, "gpus": 2},
]


# -- the plan ---------------------------------------------------------------------


def dask_containers(evaluation: Evaluation) -> tuple[Resource, list[Resource]]:
    """The scheduler container and the worker containers, as the plan declares them."""
    containers = {r.name: r for r in evaluation.by_type(CONTAINER)}
    assert SCHEDULER in containers, f"stack {evaluation.stack}: no container named {SCHEDULER!r}"
    workers = [r for name, r in sorted(containers.items()) if name.startswith(WORKER_PREFIX)]
    assert workers, f"stack {evaluation.stack}: no container named {WORKER_PREFIX}*"
    return containers[SCHEDULER], workers


def command_of(container: Resource) -> list[str]:
    command = container.plain_inputs().get("command")
    assert isinstance(command, list) and command, f"{container.urn}: no command line declared"
    return [str(part) for part in command]


def env_of(container: Resource) -> dict[str, str]:
    return dict(str(e).split("=", 1) for e in container.plain_inputs().get("envs", []))


def flag(command: Sequence[str], name: str) -> str:
    """The value following `name` in a command line."""
    assert name in command, f"{name} is not in {command}"
    return command[command.index(name) + 1]


def port_of(address: str) -> int:
    """The port of `host:port`, `:port` or `scheme://host:port`."""
    return int(address.rpartition(":")[2])


# -- running a declared command line outside Docker ----------------------------------


@dataclass(frozen=True)
class Local:
    """What replaces the values that only make sense inside a container."""

    local_directory: Path
    port: int | None = None
    dashboard_port: int | None = None
    scheduler_address: str | None = None


def localize(declared: Sequence[str], local: Local) -> list[str]:
    """The declared command line with the Docker-only values replaced, nothing else.

    Each replacement must find the value it replaces, so a declaration that
    changes shape fails here instead of silently running something else.
    """
    assert declared[0] == "dask", f"not a dask command line: {declared}"
    # The container's `dask` is on its PATH; here it is the venv's.
    argv = [str(DASK), *declared[1:]]
    replaced: set[str] = set()
    for i in range(2, len(argv)):
        previous, value = argv[i - 1], argv[i]
        if previous == "--host":
            # The container listens on all of its own interfaces (what is reachable is
            # decided by the published ports); the test talks to loopback only.
            assert value == "0.0.0.0", f"--host {value}: expected 0.0.0.0 inside the container"
            argv[i] = LOOPBACK
            replaced.add("--host")
        elif previous == "--port" and local.port is not None:
            # Every container has its own network namespace; processes here share one,
            # and parallel test runs must not collide: a free port instead.
            argv[i] = str(local.port)
            replaced.add("--port")
        elif previous == "--dashboard-address" and local.dashboard_port is not None:
            # Same reason, for the HTTP port; the host part stays as declared.
            argv[i] = f"{value.rpartition(':')[0]}:{local.dashboard_port}"
            replaced.add("--dashboard-address")
        elif previous == "--local-directory":
            # /tmp is the container's own scratch space; here it is the test's.
            assert value == "/tmp", f"--local-directory {value}: expected the container's /tmp"
            argv[i] = str(local.local_directory)
            replaced.add("--local-directory")
        elif value.startswith((f"tcp://{SCHEDULER_ALIAS}:", f"tls://{SCHEDULER_ALIAS}:")) and local.scheduler_address:
            # The alias resolves only on the Docker network; the scheduler runs on loopback.
            argv[i] = local.scheduler_address
            replaced.add("scheduler address")
    # --host and --local-directory are replaced wherever they appear; these must appear.
    expected = {
        name
        for name, given in (
            ("--port", local.port),
            ("--dashboard-address", local.dashboard_port),
            ("scheduler address", local.scheduler_address),
        )
        if given is not None
    }
    missing = expected - replaced
    assert not missing, f"{declared}: nothing to replace for {sorted(missing)}"
    return argv


def localize_env(declared: Mapping[str, str], local_directory: Path) -> dict[str, str]:
    """The declared environment; `/tmp` (the container's tmpfs/scratch) becomes the test's."""
    return {k: str(local_directory) if v == "/tmp" else v for k, v in declared.items()}


def free_ports(count: int) -> list[int]:
    """Ports free on loopback right now, all different (the sockets are held together)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOOPBACK, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class Process:
    """A started `dask` process, its output in a file, and the children it spawned."""

    name: str
    argv: list[str]
    popen: subprocess.Popen[bytes]
    log: Path
    children: dict[int, psutil.Process] = field(default_factory=dict)

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- {self.name}: {' '.join(self.argv)}\n" + "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        code = self.popen.poll()
        assert code is None, f"{self.name} exited with {code}\n{self.tail()}"

    def remember_children(self) -> None:
        """Note the nanny's worker process, so it can be stopped even if the nanny dies."""
        try:
            for child in psutil.Process(self.popen.pid).children(recursive=True):
                self.children[child.pid] = child
        except psutil.NoSuchProcess:
            pass

    def stop(self) -> None:
        """Terminate, then kill after a bounded wait; the same for any child left behind."""
        if self.popen.poll() is None:
            self.remember_children()
            self.popen.terminate()
            try:
                self.popen.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(STOP_TIMEOUT_S)
        # psutil.Process checks the pid's creation time: a reused pid is never touched.
        _, alive = psutil.wait_procs(list(self.children.values()), timeout=STOP_TIMEOUT_S)
        for child in alive:
            child.terminate()
        _, alive = psutil.wait_procs(alive, timeout=STOP_TIMEOUT_S)
        for child in alive:
            child.kill()
        psutil.wait_procs(alive, timeout=STOP_TIMEOUT_S)


@dataclass
class Cluster:
    """The declared scheduler and workers, running; ports are the localized ones."""

    evaluation: Evaluation
    scheduler: Resource
    workers: dict[str, Resource]
    """Worker containers by their declared `--name`."""
    processes: list[Process]
    tmp: Path
    """Where the processes' directories and logs are."""
    address: str
    dashboard_ports: dict[str, int]
    """Container name -> the local port its declared `--dashboard-address` became."""
    client: Client

    def logs(self) -> str:
        return "\n".join(p.tail() for p in self.processes)

    def reported_workers(self) -> dict[str, dict[str, Any]]:
        """The scheduler's view of its workers, by worker name."""
        info = self.client.scheduler_info(n_workers=-1)["workers"]
        return {str(w["name"]): dict(w) for w in info.values()}


def wait_until(condition: Callable[[], bool], processes: Sequence[Process], what: str) -> None:
    """Poll `condition` until it holds, failing early if a process died, and after the timeout."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        for process in processes:
            process.check_alive()
        if condition():
            return
        time.sleep(POLL_S)
    logs = "\n".join(p.tail() for p in processes)
    pytest.fail(f"timed out after {STARTUP_TIMEOUT_S:.0f}s waiting for {what}\n{logs}")


def health_ok(port: int) -> bool:
    try:
        return httpx.get(f"http://{LOOPBACK}:{port}/health", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def start_cluster(evaluation: Evaluation, tmp: Path, request: pytest.FixtureRequest) -> Cluster:
    """Start the plan's scheduler and workers; every process is stopped by a finalizer."""
    assert DASK.exists(), f"the dask CLI is not installed next to {sys.executable}"
    scheduler, worker_containers = dask_containers(evaluation)
    processes: list[Process] = []

    def stop_all() -> None:
        for process in reversed(processes):
            process.stop()

    request.addfinalizer(stop_all)

    def launch(container: Resource, local: Local) -> Process:
        argv = localize(command_of(container), local)
        env = {**os.environ, **localize_env(env_of(container), local.local_directory)}
        log = tmp / f"{container.name}.stderr"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=local.local_directory
            )
        process = Process(container.name, argv, popen, log)
        processes.append(process)
        return process

    scheduler_port, scheduler_http, *worker_http = free_ports(2 + len(worker_containers))
    scheduler_dir = tmp / SCHEDULER
    scheduler_dir.mkdir()
    launch(scheduler, Local(scheduler_dir, port=scheduler_port, dashboard_port=scheduler_http))
    wait_until(lambda: health_ok(scheduler_http), processes, f"{scheduler.urn} to answer /health")

    declared_port = int(flag(command_of(scheduler), "--port"))
    dashboard_ports = {scheduler.name: scheduler_http}
    workers: dict[str, Resource] = {}
    for container, http_port in zip(worker_containers, worker_http, strict=True):
        command = command_of(container)
        target = next(part for part in command if part.startswith(("tcp://", "tls://")))
        assert port_of(target) == declared_port, f"{container.urn}: {target} is not the scheduler's --port"
        scheme = target.partition("://")[0]
        local_dir = tmp / container.name
        local_dir.mkdir()
        address = f"{scheme}://{LOOPBACK}:{scheduler_port}"
        launch(container, Local(local_dir, dashboard_port=http_port, scheduler_address=address))
        workers[flag(command, "--name")] = container
        dashboard_ports[container.name] = http_port

    address = f"tcp://{LOOPBACK}:{scheduler_port}"
    client = Client(address, timeout=STARTUP_TIMEOUT_S, set_as_default=False)
    request.addfinalizer(client.close)  # finalizers run last-in first-out: before stop_all
    wait_until(
        lambda: len(client.scheduler_info(n_workers=-1)["workers"]) == len(workers),
        processes,
        f"{len(workers)} worker(s) to register with {scheduler.urn}",
    )
    for process in processes:
        process.remember_children()
    return Cluster(evaluation, scheduler, workers, processes, tmp, address, dashboard_ports, client)


@pytest.fixture(scope="module")
def dev_cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The dev stack's declared Dask processes (CPU workers)."""
    yield start_cluster(evaluate_stack("dev"), tmp_path_factory.mktemp("dask-dev"), request)


@pytest.fixture(scope="module")
def gpu_cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The dev stack with a GPU host: workers declared with `--resources GPU=1`.

    Module-scoped so both clusters start once; the function-scoped `stack_with`
    fixture cannot serve that scope, so the override is written the way it writes it.
    """
    evaluation = evaluate_stack("dev", overrides={f"{NAMESPACE}:hosts": json.dumps(GPU_HOSTS)})
    yield start_cluster(evaluation, tmp_path_factory.mktemp("dask-gpu"), request)


@pytest.fixture(params=["dev_cluster", "gpu_cluster"])
def cluster(request: pytest.FixtureRequest) -> Cluster:
    """Each of the clusters above, for the checks that hold for both."""
    value = request.getfixturevalue(request.param)
    assert isinstance(value, Cluster)
    return value


# -- both clusters --------------------------------------------------------------------


def test_workers_register_under_their_declared_names(cluster: Cluster) -> None:
    reported = cluster.reported_workers()
    assert sorted(reported) == sorted(cluster.workers), f"{cluster.scheduler.urn}: workers\n{cluster.logs()}"
    exported = cluster.evaluation.exports["daskWorkers"]
    assert sorted(n for names in exported.values() for n in names) == sorted(cluster.workers)
    for name, container in cluster.workers.items():
        assert name == container.name, f"{container.urn}: --name {name} is not the container's name"


def test_workers_report_declared_threads_and_memory(cluster: Cluster) -> None:
    reported = cluster.reported_workers()
    for name, container in cluster.workers.items():
        command = command_of(container)
        info = reported[name]
        assert info["nthreads"] == int(flag(command, "--nthreads")), f"{container.urn}: nthreads\n{cluster.logs()}"
        assert info["memory_limit"] == int(flag(command, "--memory-limit")), (
            f"{container.urn}: memory_limit {info['memory_limit']}\n{cluster.logs()}"
        )
        # The container's memory (MB) must hold Dask's own limit, or the kernel kills first.
        container_bytes = int(container.plain_inputs()["memory"]) * 1024 * 1024
        assert info["memory_limit"] < container_bytes, f"{container.urn}: Dask's limit exceeds the container's"
        local_dir = Path(info["local_directory"])
        assert local_dir.is_relative_to(cluster.tmp / container.name), f"{container.urn}: works in {local_dir}"


def test_health_endpoints_answer_on_the_declared_dashboard_ports(cluster: Cluster) -> None:
    for container in [cluster.scheduler, *cluster.workers.values()]:
        declared = port_of(flag(command_of(container), "--dashboard-address"))
        # The container's healthcheck probes the port the command line declares.
        probe = " ".join(container.plain_inputs()["healthcheck"]["tests"])
        assert f"{LOOPBACK}:{declared}/health" in probe, f"{container.urn}: healthcheck {probe!r}"
        port = cluster.dashboard_ports[container.name]
        response = httpx.get(f"http://{LOOPBACK}:{port}/health", timeout=5.0)
        assert response.status_code == 200, f"{container.urn}: /health {response.status_code}\n{cluster.logs()}"
        assert response.text == "ok", f"{container.urn}: /health said {response.text!r}"


def test_client_scheduler_and_workers_run_one_version(cluster: Cluster) -> None:
    # check=True raises if any package that must match differs between them.
    versions = cluster.client.get_versions(check=True)
    assert isinstance(versions, dict)
    assert versions["scheduler"]["packages"]["distributed"] == distributed.__version__


# -- the dev (CPU) cluster -------------------------------------------------------------


def test_dev_cluster_runs_a_computation(dev_cluster: Cluster) -> None:
    client = dev_cluster.client
    # A bag, not an array: numpy is no dependency of this project.
    total = client.compute(db.from_sequence(range(1000), npartitions=8).map(pow, 2).sum()).result(RESULT_TIMEOUT_S)
    assert total == sum(i * i for i in range(1000)), dev_cluster.logs()
    squares = client.gather(client.map(pow, range(20), [2] * 20, pure=False))
    assert squares == [i * i for i in range(20)], dev_cluster.logs()


def test_dev_workers_declare_no_gpu_resources(dev_cluster: Cluster) -> None:
    for name, info in dev_cluster.reported_workers().items():
        container = dev_cluster.workers[name]
        assert "--resources" not in command_of(container), f"{container.urn}: a CPU worker declares resources"
        assert not info.get("resources"), f"{container.urn}: reports resources {info['resources']}"


# -- the GPU variant ---------------------------------------------------------------------


def test_gpu_workers_report_one_gpu_each(gpu_cluster: Cluster) -> None:
    assert len(gpu_cluster.workers) == 2, "one worker per GPU on a host with gpus: 2"
    reported = gpu_cluster.reported_workers()
    for name, container in gpu_cluster.workers.items():
        assert flag(command_of(container), "--resources") == "GPU=1", f"{container.urn}: --resources"
        assert reported[name]["resources"] == {"GPU": 1.0}, f"{container.urn}: resources\n{gpu_cluster.logs()}"


def test_gpu_tasks_run_on_the_gpu_workers(gpu_cluster: Cluster) -> None:
    client = gpu_cluster.client

    # Nested, so cloudpickle ships it by value: the workers cannot import this module.
    def which_worker(i: int) -> tuple[int, str]:
        return i, str(distributed.get_worker().name)

    futures = client.map(which_worker, range(8), resources={"GPU": 1}, pure=False)
    results = client.gather(futures)
    assert [i for i, _ in results] == list(range(8)), gpu_cluster.logs()
    assert {name for _, name in results} <= set(gpu_cluster.workers), f"ran on {results}"


def test_gpu_task_needing_two_gpus_stays_pending(gpu_cluster: Cluster) -> None:
    client = gpu_cluster.client

    def needs_two_gpus() -> int:
        return 2

    def task_state(dask_scheduler: distributed.Scheduler, key: str) -> tuple[str, str | None]:
        task = dask_scheduler.tasks[key]
        return task.state, task.processing_on.address if task.processing_on else None

    future = client.submit(needs_two_gpus, resources={"GPU": 2}, pure=False)
    try:
        deadline = time.monotonic() + PENDING_WAIT_S
        while time.monotonic() < deadline:
            assert future.status == "pending", f"a GPU=2 task became {future.status} on GPU=1 workers"
            time.sleep(POLL_S)
        state, worker = client.run_on_scheduler(task_state, key=future.key)
        assert (state, worker) == ("no-worker", None), f"GPU=2 task is {state} on {worker}"
    finally:
        future.cancel()


# -- versions -----------------------------------------------------------------------------


def test_dask_image_version_matches_client_and_config() -> None:
    evaluation = evaluate_stack("dev")
    images = {str(r.plain_inputs()["name"]) for r in evaluation.by_type(REMOTE_IMAGE) if "dask" in r.name}
    assert len(images) == 1, f"scheduler and workers must use one Dask image, got {sorted(images)}"
    image = images.pop()
    repo, _, tag = image.partition(":")
    assert repo == "ghcr.io/dask/dask", image
    assert tag == f"{distributed.__version__}-py3.12", f"{image}: the client runs {distributed.__version__}"
    assert DaskSpec.model_fields["version"].default == distributed.__version__, "cluster-ai:dask.version default"
    assert Images.model_fields["dask"].default == image, "cluster-ai:images.dask default"
