"""Dask distributed: a scheduler and pools of workers, one version everywhere.

The command lines are built by plain functions (`scheduler_command`,
`worker_command`, `retire_command`) so the integration tests run exactly what
is declared with the real `dask` CLI and a real scheduler.

Across hosts Dask speaks `tls://` with mutual TLS: every process presents a
certificate from the internal CA and accepts only peers that do (distributed
requires a client certificate whenever it is given a CA). A remote worker
listens on a fixed port published on its host's cluster address and advertises
that address (`--contact-address`), since its container address is private.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NotRequired, TypedDict

import pulumi
from pulumi_command import remote

from components.addresses import host_port
from components.hardened import (
    SECRETS_DIR,
    Healthcheck,
    NetworkAttachment,
    Publish,
    ServiceContainer,
    child_options,
    hardened_container,
)
from components.hostexec import host_command

SCHEDULER_ALIAS = "scheduler"
WORKER_HTTP_PORT = 8788
# The image's user is root; Dask needs none of it. HOME and the temporary
# directory point at tmpfs/scratch space because the root filesystem is read-only.
DASK_UID = "1000:1000"
DASK_ENV = {"HOME": "/tmp", "DASK_TEMPORARY_DIRECTORY": "/tmp", "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
# Where a Dask container finds its certificate, key and the CA (secret files).
TLS_FILES = {"ca": f"{SECRETS_DIR}/ca.pem", "cert": f"{SECRETS_DIR}/tls.crt", "key": f"{SECRETS_DIR}/tls.key"}
# How long a host's removal waits for its workers to hand their data over.
RETIRE_TIMEOUT_S = 300


def _tls_flags(tls: bool) -> list[str]:
    if not tls:
        return []
    return ["--tls-ca-file", TLS_FILES["ca"], "--tls-cert", TLS_FILES["cert"], "--tls-key", TLS_FILES["key"]]


def http_health(port: int, prefix: str = "") -> Healthcheck:
    """The Dask HTTP server's `/health` (the image has Python, no curl)."""
    path = f"/{prefix.strip('/')}/health" if prefix else "/health"
    probe = f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{port}{path}', timeout=4)"
    return Healthcheck(["CMD", "python", "-c", probe], start_period_s=60)


def scheduler_command(port: int, dashboard_port: int, *, tls: bool = False, dashboard_prefix: str = "") -> list[str]:
    """The scheduler's command line."""
    command = [
        "dask", "scheduler",
        "--host", "0.0.0.0",  # inside the container; what is published is decided by Publish
        "--port", str(port),
        "--dashboard-address", f":{dashboard_port}",
    ]  # fmt: skip
    if tls:
        command += ["--protocol", "tls", *_tls_flags(tls)]
    if dashboard_prefix:
        # Behind the proxy at https://<domain>/<prefix>/.
        command += ["--dashboard-prefix", dashboard_prefix]
    return command


@dataclass(frozen=True)
class Reachable:
    """How a worker on a remote host is reached: the host address and its own port."""

    address: str
    port: int


def worker_command(
    scheduler_address: str,
    *,
    name: str,
    nthreads: int,
    memory_limit_bytes: int,
    gpus: int,
    http_port: int = WORKER_HTTP_PORT,
    local_directory: str = "/tmp",
    tls: bool = False,
    reachable: Reachable | None = None,
) -> list[str]:
    """One worker's command line; `GPU=n` resources only where the worker has GPUs."""
    command = [
        "dask", "worker", scheduler_address,
        "--name", name,
        "--nthreads", str(nthreads),
        "--nworkers", "1",
        "--memory-limit", str(memory_limit_bytes),
        "--dashboard-address", f":{http_port}",
        "--local-directory", local_directory,
    ]  # fmt: skip
    if reachable is not None:
        protocol = "tls" if tls else "tcp"
        command += [
            "--listen-address", f"{protocol}://0.0.0.0:{reachable.port}",
            "--contact-address", f"{protocol}://{host_port(reachable.address, reachable.port)}",
        ]  # fmt: skip
    command += _tls_flags(tls)
    if gpus > 0:
        command += ["--resources", f"GPU={gpus}"]
    return command


def retire_script(scheduler_address: str, names: Sequence[str], *, tls: bool) -> str:
    """Python run inside the scheduler's container: retire `names` gracefully.

    The scheduler moves the workers' results to the workers that stay, then
    closes them; only then may their containers go.
    """
    security = (
        f"Security(tls_ca_file={TLS_FILES['ca']!r}, tls_client_cert={TLS_FILES['cert']!r}, "
        f"tls_client_key={TLS_FILES['key']!r}, require_encryption=True)"
        if tls
        else "None"
    )
    return "; ".join(
        [
            "from distributed import Client",
            "from distributed.security import Security",
            f"client = Client({scheduler_address!r}, security={security}, timeout=30)",
            f"print(client.retire_workers(names={list(names)!r}, close_workers=True))",
            "client.close()",
        ]
    )


def retire_command(stack: str, scheduler_address: str, names: Sequence[str], *, tls: bool) -> str:
    """The shell command that drains workers through the scheduler; never blocks a delete.

    The scheduler's container is found by its labels (its Docker name is
    generated), so the command is fully known at preview.
    """
    find = (
        f"$(docker ps -q --filter label=cluster-ai.container=dask-scheduler "
        f"--filter label=cluster-ai.stack={shlex.quote(stack)})"
    )
    script = shlex.join(["python", "-c", retire_script(scheduler_address, names, tls=tls)])
    return (
        f'timeout {RETIRE_TIMEOUT_S} docker exec "{find}" {script} '
        f"|| echo 'cluster-ai: could not retire {' '.join(names)} (scheduler gone?); removing them anyway' >&2"
    )


class DaskSchedulerArgs(TypedDict):
    """The scheduler: where it listens and what it may use."""

    image: str
    network: pulumi.Input[str]
    port: int
    dashboard_port: int
    memory_mb: int
    cpus: float
    labels: dict[str, str]
    publish_address: NotRequired[str]
    """Publish the scheduler port (and, without a proxy, the dashboard) on this address."""
    publish_dashboard: NotRequired[bool]
    tls_files: NotRequired[dict[str, pulumi.Output[str]]]
    """`tls.key`, `tls.crt`, `ca.pem`: run on `tls://` with mutual TLS."""
    dashboard_prefix: NotRequired[str]
    dashboard_network: NotRequired[pulumi.Input[str]]
    """The network the public proxy reaches the dashboard on (the scheduler's alias there too)."""


class DaskScheduler(pulumi.ComponentResource):
    """The Dask scheduler (comm port and dashboard)."""

    address: str
    """What workers and clients on the private network connect to."""
    local_address: str
    """The scheduler as seen from inside its own container (for `docker exec`)."""
    dashboard_url: str
    """The dashboard inside the private network."""
    tls: bool
    stack: str
    """The stack label, by which a drain finds this scheduler's container."""

    def __init__(self, name: str, args: DaskSchedulerArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("cluster-ai:index:DaskScheduler", name, {}, opts)
        port, dashboard = args["port"], args["dashboard_port"]
        self.tls = "tls_files" in args
        self.stack = args["labels"].get("cluster-ai.stack", "")
        prefix = args.get("dashboard_prefix", "")
        publish: list[Publish] = []
        if "publish_address" in args:
            publish.append(Publish(port, port, args["publish_address"]))
            if args.get("publish_dashboard", True):
                publish.append(Publish(dashboard, dashboard, args["publish_address"]))
        self.container = hardened_container(
            name,
            ServiceContainer(
                service="dask-scheduler",
                image=args["image"],
                networks=[
                    NetworkAttachment(net, aliases=[SCHEDULER_ALIAS])
                    for net in [args["network"], *([args["dashboard_network"]] if "dashboard_network" in args else [])]
                ],
                command=scheduler_command(port, dashboard, tls=self.tls, dashboard_prefix=prefix),
                env=DASK_ENV,
                secret_files=dict(args.get("tls_files", {})),
                tmpfs={"/tmp": "rw,noexec,nosuid,size=256m"},
                publish=publish,
                user=DASK_UID,
                healthcheck=http_health(dashboard, prefix),
                memory_mb=args["memory_mb"],
                cpus=args["cpus"],
                labels=args["labels"],
            ),
            child_options(self, opts),
        )
        protocol = "tls" if self.tls else "tcp"
        self.address = f"{protocol}://{SCHEDULER_ALIAS}:{port}"
        self.local_address = f"{protocol}://127.0.0.1:{port}"
        self.dashboard_url = f"http://{SCHEDULER_ALIAS}:{dashboard}/{prefix.strip('/') + '/' if prefix else ''}status"
        self.register_outputs({"address": self.address, "dashboardUrl": self.dashboard_url})


class DrainArgs(TypedDict):
    """Where the scheduler runs, so the pool's removal can retire its workers first."""

    scheduler: DaskScheduler
    connection: NotRequired[remote.ConnectionArgs]
    """SSH to the scheduler's host; absent when it is a local Docker host."""
    docker_host: NotRequired[str]


class DaskWorkerPoolArgs(TypedDict):
    """A host's workers: how many, and what each one gets."""

    image: str
    network: pulumi.Input[str]
    scheduler_address: str
    count: int
    nthreads: int
    memory_mb: int
    """Each worker container's memory limit."""
    memory_limit_bytes: int
    """Dask's own limit, below the container's."""
    cpus: float
    gpus_per_worker: int
    labels: dict[str, str]
    gpu_devices: NotRequired[Sequence[str]]
    """GPU device ids, split among the workers (one worker per GPU)."""
    tls_files: NotRequired[dict[str, pulumi.Output[str]]]
    """The host's certificate: workers speak `tls://` with mutual TLS."""
    host_address: NotRequired[str]
    """For workers reached from other hosts: publish each worker's port here."""
    port_base: NotRequired[int]
    drain: NotRequired[DrainArgs]


class DaskWorkerPool(pulumi.ComponentResource):
    """Dask workers on one host, each its own container."""

    worker_names: list[str]
    """The `--name` of each worker, as the scheduler reports them."""

    def __init__(self, name: str, args: DaskWorkerPoolArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("cluster-ai:index:DaskWorkerPool", name, {}, opts)
        if args["count"] < 1:
            raise ValueError(f"{name}: count must be >= 1")
        tls = "tls_files" in args
        self.worker_names = []
        self.containers = []
        devices = list(args.get("gpu_devices", []))
        per = args["gpus_per_worker"]
        for i in range(args["count"]):
            worker_name = f"{name}-{i}"
            gpu_selector = None
            if per > 0:
                mine = devices[i * per : (i + 1) * per] if devices else [str(d) for d in range(i * per, (i + 1) * per)]
                gpu_selector = "device=" + ",".join(mine)
            reachable = None
            publish: list[Publish] = []
            if "host_address" in args:
                reachable = Reachable(args["host_address"], args.get("port_base", 8790) + i)
                publish = [Publish(reachable.port, reachable.port, reachable.address)]
            self.worker_names.append(worker_name)
            self.containers.append(
                hardened_container(
                    worker_name,
                    ServiceContainer(
                        service="dask-worker",
                        image=args["image"],
                        # The alias lets the host's edge route /metrics to this worker.
                        networks=[NetworkAttachment(args["network"], aliases=[worker_name])],
                        command=worker_command(
                            args["scheduler_address"],
                            name=worker_name,
                            nthreads=args["nthreads"],
                            memory_limit_bytes=args["memory_limit_bytes"],
                            gpus=per,
                            tls=tls,
                            reachable=reachable,
                        ),
                        env=DASK_ENV,
                        secret_files=dict(args.get("tls_files", {})),
                        # Spill space on disk, removed with the container.
                        scratch=["/tmp"],
                        publish=publish,
                        user=DASK_UID,
                        healthcheck=http_health(WORKER_HTTP_PORT),
                        memory_mb=args["memory_mb"],
                        cpus=args["cpus"],
                        gpus=gpu_selector,
                        labels={**args["labels"], "cluster-ai.dask-worker": worker_name},
                    ),
                    child_options(self, opts),
                )
            )
        self.drain = None
        if "drain" in args:
            self.drain = self._drain(name, args["drain"])
        self.register_outputs({"workers": self.worker_names})

    def _drain(self, name: str, drain: DrainArgs) -> pulumi.Resource:
        """A command whose *delete* retires this pool's workers through the scheduler.

        It depends on the worker containers, so Pulumi deletes it first when the
        host leaves the stack: the workers hand their data over before they go.
        """
        scheduler = drain["scheduler"]
        names = list(self.worker_names)
        delete = retire_command(scheduler.stack, scheduler.local_address, names, tls=scheduler.tls)
        return host_command(
            f"{name}-drain",
            create=f"echo 'cluster-ai: {len(names)} worker(s) of {name} will be retired before removal'",
            delete=delete,
            connection=drain.get("connection"),
            docker_host=drain.get("docker_host"),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[*self.containers, scheduler.container]),
        )
