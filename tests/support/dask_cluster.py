"""The plan's declared Dask processes, started with this environment's real `dask` CLI.

The scheduler's and workers' command lines are taken from the offline plan (the
real program under the SDK's mocks) and run as processes. Only what cannot be
the same outside Docker is changed, in `localize` (each change says why); every
other flag and value runs exactly as declared, so a flag the real CLI rejects,
a worker that reports other threads, memory or resources than declared, or a
health endpoint the container's healthcheck would miss fails in the tests
rather than on a cluster. Used by tests/integration/test_dask_cli.py (dev, tcp)
and tests/integration/test_dask_tls.py (prod, mutual TLS).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from distributed import Client
from distributed.security import Security

from components.hardened import SECRETS_DIR
from stacks.mocks import Evaluation, Resource, is_file_holder
from tests.support.pki import PlanPki
from tests.support.processes import (
    LOOPBACK,
    STARTUP_TIMEOUT_S,
    Process,
    free_ports,
    start_process,
    stop_all,
    wait_until,
)

CONTAINER = "docker:index/container:Container"
SCHEDULER = "dask-scheduler"
WORKER_PREFIX = "dask-workers-"

# The venv's own CLI: the same distributed the clients in the tests import.
DASK = Path(sys.executable).with_name("dask")
# The URL a container's healthcheck probes (`urlopen('http://127.0.0.1:PORT/PATH'`).
HEALTH_URL = re.compile(r"http://127\.0\.0\.1:(\d+)(/[^'\"\s]*)")


# -- the plan ---------------------------------------------------------------------


def dask_containers(evaluation: Evaluation) -> tuple[Resource, list[Resource]]:
    """The scheduler container and the worker containers, as the plan declares them."""
    # A service's file holder (`<name>-files`) runs nothing: its files are written per process below.
    containers = {r.name: r for r in evaluation.by_type(CONTAINER) if not is_file_holder(r)}
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


def host_of(address: str) -> str:
    """The host of `scheme://host:port`."""
    return address.partition("://")[2].rpartition(":")[0]


def health_probe(container: Resource) -> tuple[int, str]:
    """The (port, path) the container's Docker healthcheck probes."""
    probe = " ".join(container.plain_inputs()["healthcheck"]["tests"])
    match = HEALTH_URL.search(probe)
    assert match is not None, f"{container.urn}: healthcheck {probe!r} probes no http://127.0.0.1 URL"
    return int(match[1]), match[2]


# -- running a declared command line outside Docker ----------------------------------


@dataclass(frozen=True)
class Local:
    """What replaces the values that only make sense inside a container."""

    local_directory: Path
    port: int | None = None
    dashboard_port: int | None = None
    scheduler_address: str | None = None
    listen_port: int | None = None
    """Replaces the port of `--listen-address` and `--contact-address` (a remote worker)."""
    secrets: Mapping[str, Path] = field(default_factory=dict)
    """Container path under /run/secrets -> the local file holding its content."""


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
        elif previous == "--listen-address" and local.listen_port is not None:
            # The container listens on all its interfaces at the port its host publishes;
            # here the worker listens on its host's loopback address (the one it
            # advertises), at a free port: two "hosts" share this machine's ports.
            scheme, _, rest = value.partition("://")
            assert rest.startswith("0.0.0.0:"), f"--listen-address {value}: expected all interfaces"
            argv[i] = f"{scheme}://{host_of(flag(declared, '--contact-address'))}:{local.listen_port}"
            replaced.add("--listen-address")
        elif previous == "--contact-address" and local.listen_port is not None:
            # The address is the host's as declared; only the port is the free one above.
            argv[i] = f"{value.rpartition(':')[0]}:{local.listen_port}"
            replaced.add("--contact-address")
        elif value.startswith(f"{SECRETS_DIR}/"):
            # The container's secrets volume; here the files the test wrote (real PEMs).
            assert value in local.secrets, f"{value}: the container has no such upload ({sorted(local.secrets)})"
            argv[i] = str(local.secrets[value])
            replaced.add(value)
        elif i == 2 and declared[1] == "worker" and local.scheduler_address:
            # The scheduler runs on loopback at a free port: the declared address (the
            # alias only resolves on the Docker network; a host's address at the
            # declared port) must keep its scheme and host's meaning, checked by the caller.
            assert value.startswith(("tcp://", "tls://")), f"dask worker {value}: not a scheduler address"
            argv[i] = local.scheduler_address
            replaced.add("scheduler address")
    # --host and --local-directory are replaced wherever they appear; these must appear.
    expected = {
        name
        for name, given in (
            ("--port", local.port),
            ("--dashboard-address", local.dashboard_port),
            ("scheduler address", local.scheduler_address),
            ("--listen-address", local.listen_port),
            ("--contact-address", local.listen_port),
        )
        if given is not None
    }
    missing = expected - replaced
    assert not missing, f"{declared}: nothing to replace for {sorted(missing)}"
    return argv


def localize_env(declared: Mapping[str, str], local_directory: Path) -> dict[str, str]:
    """The declared environment; `/tmp` (the container's tmpfs/scratch) becomes the test's."""
    return {k: str(local_directory) if v == "/tmp" else v for k, v in declared.items()}


def health_ok(port: int, path: str = "/health") -> bool:
    try:
        return httpx.get(f"http://{LOOPBACK}:{port}{path}", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


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
    secrets: dict[str, dict[str, Path]] = field(default_factory=dict)
    """Container name -> its uploads (container path -> local file)."""
    listen_ports: dict[str, int] = field(default_factory=dict)
    """Worker name -> the local port of its `--listen-address`, where it listens."""

    def logs(self) -> str:
        return "\n".join(p.tail() for p in self.processes)

    def process(self, name: str) -> Process:
        return next(p for p in self.processes if p.name == name)

    def reported_workers(self) -> dict[str, dict[str, Any]]:
        """The scheduler's view of its workers, by worker name."""
        info = self.client.scheduler_info(n_workers=-1)["workers"]
        return {str(w["name"]): dict(w) for w in info.values()}


def start_cluster(
    evaluation: Evaluation,
    tmp: Path,
    request: pytest.FixtureRequest,
    *,
    pki: PlanPki | None = None,
    client_security: Security | None = None,
) -> Cluster:
    """Start the plan's scheduler and workers; every process is stopped by a finalizer.

    With `pki`, each container's uploads are written (real PEMs from it) and its
    `/run/secrets/...` arguments point at them; `client_security` is what the
    cluster's own client presents (a TLS cluster admits no other).
    """
    assert DASK.exists(), f"the dask CLI is not installed next to {sys.executable}"
    scheduler, worker_containers = dask_containers(evaluation)
    processes: list[Process] = []

    request.addfinalizer(lambda: stop_all(processes))
    secrets: dict[str, dict[str, Path]] = {}

    def launch(container: Resource, local_directory: Path, **local: Any) -> Process:
        local_directory.mkdir()
        files = pki.write_uploads(container, tmp / f"{container.name}-secrets") if pki is not None else {}
        secrets[container.name] = files
        argv = localize(command_of(container), Local(local_directory, secrets=files, **local))
        process = start_process(
            container.name,
            argv,
            log=tmp / f"{container.name}.log",
            cwd=local_directory,
            env=localize_env(env_of(container), local_directory),
        )
        processes.append(process)
        return process

    scheduler_port, scheduler_http, *worker_http = free_ports(2 + len(worker_containers))
    launch(scheduler, tmp / SCHEDULER, port=scheduler_port, dashboard_port=scheduler_http)
    # The path the container's healthcheck probes (under --dashboard-prefix, if declared).
    declared_http, health_path = health_probe(scheduler)
    assert declared_http == port_of(flag(command_of(scheduler), "--dashboard-address")), (
        f"{scheduler.urn}: the healthcheck probes another port than the dashboard's"
    )
    wait_until(lambda: health_ok(scheduler_http, health_path), processes, f"{scheduler.urn} to answer {health_path}")

    declared_port = int(flag(command_of(scheduler), "--port"))
    scheme = "tls" if "--tls-cert" in command_of(scheduler) else "tcp"
    dashboard_ports = {scheduler.name: scheduler_http}
    listen_ports: dict[str, int] = {}
    workers: dict[str, Resource] = {}
    for container, http_port in zip(worker_containers, worker_http, strict=True):
        command = command_of(container)
        target = command[2]
        assert port_of(target) == declared_port, f"{container.urn}: {target} is not the scheduler's --port"
        assert target.partition("://")[0] == scheme, f"{container.urn}: {target} is not the scheduler's protocol"
        name = flag(command, "--name")
        local: dict[str, Any] = {
            "dashboard_port": http_port,
            "scheduler_address": f"{scheme}://{LOOPBACK}:{scheduler_port}",
        }
        if "--contact-address" in command:
            [local["listen_port"]] = free_ports(1, host_of(flag(command, "--contact-address")))
            listen_ports[name] = local["listen_port"]
        launch(container, tmp / container.name, **local)
        workers[name] = container
        dashboard_ports[container.name] = http_port

    address = f"{scheme}://{LOOPBACK}:{scheduler_port}"
    client = Client(address, timeout=STARTUP_TIMEOUT_S, set_as_default=False, security=client_security)
    request.addfinalizer(client.close)  # finalizers run last-in first-out: before stop_all
    wait_until(
        lambda: len(client.scheduler_info(n_workers=-1)["workers"]) == len(workers),
        processes,
        f"{len(workers)} worker(s) to register with {scheduler.urn}",
    )
    for process in processes:
        process.remember_children()
    return Cluster(
        evaluation, scheduler, workers, processes, tmp, address, dashboard_ports, client, secrets, listen_ports
    )
