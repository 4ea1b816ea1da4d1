"""`stacks status` against a real Docker engine, a real Dask scheduler and Ollama's API.

A test stack (its own Pulumi.<stack>.yaml in a temporary root, the real program
evaluated under the SDK's mocks) declares the dev cluster with test images:
busybox images built FROM scratch and tagged with the references the stack
pins. Each declared container is then run on the local engine with the labels
the program declares for it (`cluster-ai.stack`, `cluster-ai.container`, ...),
so `status` finds them exactly as it finds a deployed stack's. Faults are made
for real: a stopped container, an unhealthy one, one running another image, a
missing one, a stale backup, workers missing from a real `dask scheduler`, a
model with another digest on a server speaking Ollama's `/api/tags` contract.

Everything is labelled with a per-run id and removed in finalizers; names and
stack labels are unique per run, so parallel runs never see each other's
containers. Every wait is bounded.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import docker
import pytest

from infra.config import Images
from stacks import status
from stacks.__main__ import main
from stacks.plan import evaluate_stack
from stacks.stackfile import REPO, read_stack_config
from tests.support.docker_images import build_image, docker_reason, run_label
from tests.support.fake_ollama import FakeOllama
from tests.support.processes import free_port

pytestmark = pytest.mark.integration

DASK = Path(sys.executable).with_name("dask")
MODEL = "qwen2.5:0.5b"
PINNED = "a8b0c51577010a279d933d14c2a8ab4b268079d44c5c8830c0a93900f1827c67"
OTHER_DIGEST = "b" * 64
WAIT_S = 60.0


# -- fixtures ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine() -> Iterator[Any]:
    import docker

    reason = docker_reason()
    if reason is not None:
        pytest.fail(reason)  # .ci/run starts dockerd: no engine is a broken setup, not a skip
    client = docker.from_env(timeout=60)
    yield client
    client.close()


@pytest.fixture(scope="module")
def run_id(engine: Any) -> Iterator[str]:
    with run_label() as run:
        yield run


@dataclass
class DeployedStack:
    name: str
    root: Path
    refs: dict[str, str]
    """images key -> the pinned reference (all tagged on the pinned image)."""
    pinned_id: str
    other_ref: str
    other_id: str


def write_stack(root: Path, name: str, **config: Any) -> None:
    """A stack file with `cluster-ai:` keys (values as YAML), beside a copy of Pulumi.yaml."""
    import yaml

    shutil.copy(REPO / "Pulumi.yaml", root / "Pulumi.yaml")
    document = {"config": {f"cluster-ai:{k}": v for k, v in config.items()}}
    (root / f"Pulumi.{name}.yaml").write_text(yaml.safe_dump(document, sort_keys=False))


@pytest.fixture(scope="module")
def stack(engine: Any, run_id: str, tmp_path_factory: pytest.TempPathFactory) -> DeployedStack:
    root = tmp_path_factory.mktemp("status-stack")
    name = f"st{run_id}"
    repo = f"localhost/cluster-ai-test-{run_id}"
    pinned_tag, other_ref = f"{repo}/pinned:1", f"{repo}/other:1"
    pinned_id = build_image(engine, pinned_tag, f"pinned {run_id}", run_id)
    other_id = build_image(engine, other_ref, f"other {run_id}", run_id)
    refs = {}
    for field in Images.model_fields:
        key = "".join(w if i == 0 else w.title() for i, w in enumerate(field.split("_")))
        tag = "2026.8.0-py3.12" if field.startswith("dask") else "1"
        refs[key] = f"{repo}/{field.replace('_', '-')}:{tag}"
        engine.images.get(pinned_id).tag(refs[key])
    dev = read_stack_config("dev").config
    write_stack(
        root,
        name,
        environment="dev",
        hosts=json.loads(dev["cluster-ai:hosts"]),
        models=[{"name": MODEL, "digest": PINNED}],
        images=refs,
    )
    return DeployedStack(name, root, refs, pinned_id, other_ref, other_id)


@pytest.fixture(scope="module")
def declared(stack: DeployedStack) -> list[status.DeclaredContainer]:
    return status.declared_containers(evaluate_stack(stack.name, root=stack.root))


# -- deploying the declarations by hand -----------------------------------------------

# Generous timeouts and retries: a loaded CI machine must not turn `true` unhealthy.
HEALTHY = {"test": ["CMD", "/bin/busybox", "true"], "interval": 500_000_000, "timeout": 10_000_000_000, "retries": 3}
UNHEALTHY = {**HEALTHY, "test": ["CMD", "/bin/busybox", "false"]}
SLEEP = ["/bin/busybox", "sleep", "600"]


def backup_command(age_s: int) -> list[str]:
    return [
        "/bin/busybox",
        "sh",
        "-c",
        "/bin/busybox mkdir -p /var/lib/postgresql/data && "
        f"echo $(( $(/bin/busybox date -u +%s) - {age_s} )) > /var/lib/postgresql/data/last-success && "
        "exec /bin/busybox sleep 600",
    ]


def deploy(
    engine: Any,
    run_id: str,
    declared: list[status.DeclaredContainer],
    stack_label: str,
    *,
    image: Callable[[status.DeclaredContainer], str],
    skip: tuple[str, ...] = (),
    unhealthy: tuple[str, ...] = (),
    stopped: tuple[str, ...] = (),
    backup_age_s: int = 5,
    started_holders: tuple[str, ...] = (),
    failed_tasks: tuple[str, ...] = (),
) -> None:
    """Each declared container with its declared labels, as `up` leaves it: a service runs (until
    health settles), a task has run to its exit (0, or 3 for `failed_tasks`), a file holder is
    created and never started (unless in `started_holders`)."""
    started = []
    for c in declared:
        if c.name in skip:
            continue
        labels = {**c.labels, "cluster-ai.stack": stack_label, "cluster-ai.test-run": run_id}
        common: dict[str, Any] = {
            "name": f"{stack_label}-{c.name}",
            "labels": labels,
            "network_mode": "none",
            "read_only": True,
            "cap_drop": ["ALL"],
        }
        if c.role == status.FILE_HOLDER:
            holder = engine.containers.create(image(c), command=SLEEP, **common)
            if c.name in started_holders:
                holder.start()
            continue
        if c.role == status.TASK:
            exit_code = 3 if c.name in failed_tasks else 0
            task = engine.containers.run(
                image(c), command=["/bin/busybox", "sh", "-c", f"exit {exit_code}"], detach=True, **common
            )
            assert task.wait(timeout=WAIT_S)["StatusCode"] == exit_code, task.name
            continue
        container = engine.containers.run(
            image(c),
            command=backup_command(backup_age_s) if c.service == "backup" else SLEEP,
            healthcheck=(UNHEALTHY if c.name in unhealthy else HEALTHY) if c.has_healthcheck else None,
            detach=True,
            # The backup directory is a volume, as declared (docker cp reads volumes, not tmpfs).
            mounts=[docker.types.Mount(target="/var/lib/postgresql/data", source=None, type="volume")]
            if c.service == "backup"
            else [],
            **common,
        )
        started.append(container)
    deadline = time.monotonic() + WAIT_S
    for container in started:
        while True:
            container.reload()
            health = (container.attrs["State"].get("Health") or {}).get("Status")
            wanted = "unhealthy" if container.labels["cluster-ai.container"] in unhealthy else "healthy"
            if health in (None, wanted):
                break
            assert time.monotonic() < deadline, f"{container.name} stayed {health}"
            time.sleep(0.2)
    for container in started:
        if container.labels["cluster-ai.container"] in stopped:
            container.stop(timeout=1)


# -- Dask, Open WebUI ------------------------------------------------------------------


class DaskCluster:
    """A real scheduler and named workers from this environment's `dask` CLI."""

    def __init__(self) -> None:
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.processes: list[subprocess.Popen[bytes]] = []
        self.workers: dict[str, subprocess.Popen[bytes]] = {}

    def start(self) -> DaskCluster:
        scheduler = [str(DASK), "scheduler", "--host", "127.0.0.1", "--port", str(self.port), "--no-dashboard"]
        self.processes.append(subprocess.Popen(scheduler, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        return self

    def add_worker(self, name: str, gpus: int = 0) -> None:
        command = [str(DASK), "worker", self.address, "--name", name, "--nthreads", "1", "--no-dashboard"]
        command += ["--memory-limit", "512MiB"]
        if gpus:
            command += ["--resources", f"GPU={gpus}"]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.processes.append(process)
        self.workers[name] = process

    def stop_worker(self, name: str) -> None:
        process = self.workers.pop(name)
        process.terminate()
        process.wait(timeout=30)

    def wait_for(self, count: int) -> None:
        from distributed import Client

        deadline = time.monotonic() + WAIT_S
        with Client(self.address, timeout=WAIT_S, set_as_default=False) as client:
            while len(client.scheduler_info(n_workers=-1)["workers"]) != count:
                assert time.monotonic() < deadline, f"the scheduler never saw {count} workers"
                time.sleep(0.2)

    def close(self) -> None:
        for process in reversed(self.processes):
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


@pytest.fixture
def dask_cluster() -> Iterator[DaskCluster]:
    cluster = DaskCluster().start()
    try:
        yield cluster
    finally:
        cluster.close()


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        ok = self.path == "/health"
        body = b'{"status":true}' if ok else b"{}"
        self.send_response(200 if ok else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def webui() -> Iterator[str]:
    """Answers GET /health like Open WebUI does (`{"status": true}`)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


# -- the checks ---------------------------------------------------------------------


def status_cli(stack: DeployedStack, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, dict[str, Any]]:
    code = main(["status", stack.name, "--root", str(stack.root), "--json", "--timeout", "10", *extra])
    out = capsys.readouterr().out
    return code, json.loads(out)


def by_name(report: Mapping[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(c["kind"], c["name"]): c for c in report["checks"]}


def test_a_healthy_stack_passes_every_check(
    engine: Any,
    run_id: str,
    stack: DeployedStack,
    declared: list[status.DeclaredContainer],
    dask_cluster: DaskCluster,
    webui: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    deploy(engine, run_id, declared, stack.name, image=lambda c: c.image or "")
    for worker in status.declared_workers(declared):
        dask_cluster.add_worker(worker.name, worker.gpus)
    dask_cluster.wait_for(len(status.declared_workers(declared)))

    with FakeOllama(installed={MODEL: PINNED}) as ollama:
        code, report = status_cli(
            stack,
            capsys,
            "--scheduler",
            dask_cluster.address,
            "--ollama",
            f"local={ollama.url}",
            "--webui",
            webui,
        )

    failed = [c for c in report["checks"] if not c["ok"]]
    assert code == 0 and report["ok"], f"stack {stack.name}: {failed}"
    checks = by_name(report)
    assert {c.name for c in declared} <= {name for kind, name in checks if kind == "container"}
    roles = {c.role for c in declared}
    assert roles == {status.SERVICE, status.TASK, status.FILE_HOLDER}, roles
    # Each healthy in its own terms: a service runs, a task has exited 0, a holder was never started.
    expected_state = {status.SERVICE: ("running", True), status.TASK: ("exited", False),
                      status.FILE_HOLDER: ("created", False)}  # fmt: skip
    for c in declared:
        check = checks[("container", c.name)]
        assert (check["status"], check["running"]) == expected_state[c.role] and check["pinned"], f"{c.name}: {check}"
        assert check["imageId"] == stack.pinned_id, c.name
        if c.role == status.TASK:
            assert check["exitCode"] == 0, f"{c.name}: {check}"
    assert checks[("dask", "scheduler")]["workers"] == ["dask-workers-local-0"]
    assert checks[("models", "ollama")]["state"] == "ok"
    assert checks[("http", "webui")]["state"] == "ok"
    assert checks[("backup", "postgres-backup")]["ageSeconds"] < 120


def test_stopped_unhealthy_foreign_image_and_missing_containers_are_each_reported(
    engine: Any,
    run_id: str,
    stack: DeployedStack,
    declared: list[status.DeclaredContainer],
) -> None:
    label = f"{stack.name}-faults"
    deploy(
        engine,
        run_id,
        declared,
        label,
        image=lambda c: stack.other_ref if c.name == "webui" else (c.image or ""),
        stopped=("redis",),
        unhealthy=("dask-scheduler",),
        skip=("dask-workers-local-0",),
        backup_age_s=3 * 86400,
        started_holders=("webui-files",),
        failed_tasks=("ollama-local-model-sync",),
    )
    spec_checks = status.check_containers(declared, stack_label=label, backup_max_age_s=2 * 86400)
    checks = {(c.kind, c.name): c for c in spec_checks}

    assert checks[("container", "redis")].state == "FAIL"
    assert "not running (exited" in checks[("container", "redis")].detail
    assert checks[("container", "dask-scheduler")].state == "FAIL"
    assert "health unhealthy" in checks[("container", "dask-scheduler")].detail
    webui_check = checks[("container", "webui")]
    assert webui_check.state == "FAIL" and "not the pinned" in webui_check.detail, webui_check
    assert webui_check.data["imageId"] == stack.other_id and webui_check.data["pinnedImageId"] == stack.pinned_id
    assert checks[("container", "dask-workers-local-0")].state == "FAIL"
    assert "missing" in checks[("container", "dask-workers-local-0")].detail
    backup = checks[("backup", "postgres-backup")]
    assert backup.state == "FAIL" and "stale" in backup.detail and backup.data["ageSeconds"] >= 3 * 86400 - 60
    holder = checks[("container", "webui-files")]
    assert holder.state == "FAIL" and "a file holder must never start, but it is running" in holder.detail, holder
    task = checks[("container", "ollama-local-model-sync")]
    assert task.state == "FAIL" and "task failed (exit 3)" in task.detail, task
    for name in ("postgres", "ollama-local", "postgres-backup", "postgres-files", "postgres-backup-files"):
        assert checks[("container", name)].state == "ok", checks[("container", name)]
    # The backup is read from the service, never from its holder (same `backup` service label).
    assert [k for k in checks if k[0] == "backup"] == [("backup", "postgres-backup")], sorted(checks)


def test_the_table_names_every_failure_and_the_exit_code_is_non_zero(
    stack: DeployedStack, capsys: pytest.CaptureFixture[str]
) -> None:
    # Nothing of this label runs, and nothing listens on these ports.
    code = main(
        [
            "status",
            stack.name,
            "--root",
            str(stack.root),
            "--stack-label",
            f"{stack.name}-nothing",
            "--scheduler",
            f"tcp://127.0.0.1:{free_port()}",
            "--webui",
            f"http://127.0.0.1:{free_port()}",
            "--ollama",
            f"local=http://127.0.0.1:{free_port()}",
            "--timeout",
            "2",
        ]
    )
    out = capsys.readouterr().out
    assert code == 1
    assert out.splitlines()[0].startswith(f"stack {stack.name}:") and "failed" in out.splitlines()[0]
    assert "missing: no container with this label" in out
    assert "unreachable" in out and "Connection refused" in out


def test_the_worker_count_check_passes_and_fails_against_a_real_scheduler(
    tmp_path: Path, dask_cluster: DaskCluster
) -> None:
    dev = read_stack_config("dev").config
    hosts = json.loads(dev["cluster-ai:hosts"])
    hosts[0].update({"cpus": 8, "memoryGb": 32, "gpus": 2})
    write_stack(tmp_path, "gpu", environment="dev", hosts=hosts)
    workers = status.declared_workers(status.declared_containers(evaluate_stack("gpu", root=tmp_path)))
    assert [(w.name, w.gpus) for w in workers] == [("dask-workers-local-0", 1), ("dask-workers-local-1", 1)]

    none = status.check_dask(dask_cluster.address, workers)
    assert none.state == "FAIL" and "0 workers, 2 declared" in none.detail and "0 GPUs, 2 declared" in none.detail

    for w in workers:
        dask_cluster.add_worker(w.name, w.gpus)
    dask_cluster.wait_for(2)
    full = status.check_dask(dask_cluster.address, workers)
    assert full.state == "ok", full.detail
    assert full.data["gpus"] == 2 and full.data["workers"] == ["dask-workers-local-0", "dask-workers-local-1"]

    dask_cluster.stop_worker("dask-workers-local-1")
    dask_cluster.wait_for(1)
    short = status.check_dask(dask_cluster.address, workers)
    assert (
        short.state == "FAIL"
        and "missing dask-workers-local-1" in short.detail
        and "1 GPUs, 2 declared" in short.detail
    )

    dask_cluster.add_worker("someone-else", 1)
    dask_cluster.wait_for(2)
    stranger = status.check_dask(dask_cluster.address, workers)
    assert stranger.state == "FAIL" and "missing dask-workers-local-1" in stranger.detail


def test_models_are_checked_by_name_and_digest_against_ollamas_api() -> None:
    pins = [(MODEL, PINNED), ("llama3.2:1b", None)]
    with FakeOllama(installed={MODEL: OTHER_DIGEST}) as ollama:
        wrong = status.check_models("gpu1", ollama.url, pins)
    assert wrong.state == "FAIL"
    assert f"{MODEL} has digest {OTHER_DIGEST[:12]}, pinned {PINNED[:12]}" in wrong.detail
    assert "llama3.2:1b missing" in wrong.detail
    with FakeOllama(installed={MODEL: PINNED, "llama3.2:1b": OTHER_DIGEST}) as ollama:
        right = status.check_models("gpu1", ollama.url, pins)
    assert right.state == "ok", right.detail
    assert status.check_models("gpu1", None, pins).state == "skip"
