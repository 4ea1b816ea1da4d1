"""The declared Dask command lines, run by the real `dask` CLI.

The scheduler's and workers' command lines are taken from the offline plan (the
real program under the SDK's mocks) and started as processes with this
environment's `dask` executable. Only what cannot be the same outside Docker is
changed, in `localize` (tests/support/dask_cluster.py, shared with the TLS tier in
test_dask_tls.py; each change says why); every other flag and value runs exactly
as declared, so a flag the real CLI rejects, a worker that reports other threads,
memory or resources than declared, or a health endpoint the container's
healthcheck would miss fails here rather than on a cluster.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import dask.bag as db
import distributed
import httpx
import pytest

from infra.config import NAMESPACE, DaskSpec, Images
from stacks.plan import evaluate_stack
from tests.support.dask_cluster import Cluster, command_of, flag, port_of, start_cluster
from tests.support.processes import LOOPBACK, POLL_S

pytestmark = pytest.mark.integration

REMOTE_IMAGE = "docker:index/remoteImage:RemoteImage"

# Bounds on the waits of the tests below (startup bounds are in tests/support).
RESULT_TIMEOUT_S = 30.0
PENDING_WAIT_S = 3.0

# One host with two GPUs (a one-host stack stays on plain tcp; the TLS variant
# is tests/integration/test_dask_tls.py): one worker per GPU, `GPU=1` each.
# The host's memory keeps each worker's Dask limit below this machine's RAM,
# which distributed would otherwise cap (and report) instead of the declared value.
GPU_HOSTS = [
    {"name": "gpu1", "address": "127.0.0.1", "roles": ["head", "worker"], "cpus": 8, "memoryGb": 16, "gpus": 2},
]


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
