"""Dask distributed: a scheduler and pools of workers, one version everywhere.

The command lines are built by plain functions (`scheduler_command`,
`worker_command`) so the integration tests can run exactly what is declared
with the real `dask` CLI.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NotRequired, TypedDict

import pulumi

from components.hardened import Healthcheck, NetworkAttachment, Publish, ServiceContainer, hardened_container

SCHEDULER_ALIAS = "scheduler"
WORKER_HTTP_PORT = 8788
# The image's user is root; Dask needs none of it. HOME and the temporary
# directory point at tmpfs/scratch space because the root filesystem is read-only.
DASK_UID = "1000:1000"
DASK_ENV = {"HOME": "/tmp", "DASK_TEMPORARY_DIRECTORY": "/tmp", "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}


def _http_health(port: int) -> Healthcheck:
    # The Dask image has Python but no curl.
    probe = f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{port}/health', timeout=4)"
    return Healthcheck(["CMD", "python", "-c", probe], start_period_s=60)


def scheduler_command(port: int, dashboard_port: int) -> list[str]:
    """The scheduler's command line."""
    return [
        "dask",
        "scheduler",
        "--host",
        "0.0.0.0",  # inside the container; what is published is decided by Publish
        "--port",
        str(port),
        "--dashboard-address",
        f":{dashboard_port}",
    ]


def worker_command(
    scheduler_address: str,
    *,
    name: str,
    nthreads: int,
    memory_limit_bytes: int,
    gpus: int,
    http_port: int = WORKER_HTTP_PORT,
    local_directory: str = "/tmp",
) -> list[str]:
    """One worker's command line; `GPU=n` resources only where the worker has GPUs."""
    command = [
        "dask",
        "worker",
        scheduler_address,
        "--name",
        name,
        "--nthreads",
        str(nthreads),
        "--nworkers",
        "1",
        "--memory-limit",
        str(memory_limit_bytes),
        "--dashboard-address",
        f":{http_port}",
        "--local-directory",
        local_directory,
    ]
    if gpus > 0:
        command += ["--resources", f"GPU={gpus}"]
    return command


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
    """Publish the scheduler and dashboard ports on this host address."""


class DaskScheduler(pulumi.ComponentResource):
    """The Dask scheduler (comm port and dashboard)."""

    address: str
    """What workers and clients on the private network connect to."""
    dashboard_url: str
    """The dashboard inside the private network."""

    def __init__(self, name: str, args: DaskSchedulerArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("cluster-ai:index:DaskScheduler", name, {}, opts)
        port, dashboard = args["port"], args["dashboard_port"]
        publish: list[Publish] = []
        if "publish_address" in args:
            publish = [
                Publish(port, port, args["publish_address"]),
                Publish(dashboard, dashboard, args["publish_address"]),
            ]
        self.container = hardened_container(
            name,
            ServiceContainer(
                service="dask-scheduler",
                image=args["image"],
                networks=[NetworkAttachment(args["network"], aliases=[SCHEDULER_ALIAS])],
                command=scheduler_command(port, dashboard),
                env=DASK_ENV,
                tmpfs={"/tmp": "rw,noexec,nosuid,size=256m"},
                publish=publish,
                user=DASK_UID,
                healthcheck=_http_health(dashboard),
                memory_mb=args["memory_mb"],
                cpus=args["cpus"],
                labels=args["labels"],
            ),
            pulumi.ResourceOptions(parent=self),
        )
        self.address = f"tcp://{SCHEDULER_ALIAS}:{port}"
        self.dashboard_url = f"http://{SCHEDULER_ALIAS}:{dashboard}/status"
        self.register_outputs({"address": self.address, "dashboardUrl": self.dashboard_url})


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


class DaskWorkerPool(pulumi.ComponentResource):
    """Dask workers on one host, each its own container."""

    worker_names: list[str]
    """The `--name` of each worker, as the scheduler reports them."""

    def __init__(self, name: str, args: DaskWorkerPoolArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("cluster-ai:index:DaskWorkerPool", name, {}, opts)
        if args["count"] < 1:
            raise ValueError(f"{name}: count must be >= 1")
        self.worker_names = []
        self.containers = []
        devices = list(args.get("gpu_devices", []))
        per = args["gpus_per_worker"]
        for i in range(args["count"]):
            worker_name = f"{name}-{i}"
            gpus = per
            gpu_selector = None
            if per > 0:
                mine = devices[i * per : (i + 1) * per] if devices else [str(d) for d in range(i * per, (i + 1) * per)]
                gpu_selector = "device=" + ",".join(mine)
            self.worker_names.append(worker_name)
            self.containers.append(
                hardened_container(
                    worker_name,
                    ServiceContainer(
                        service="dask-worker",
                        image=args["image"],
                        networks=[NetworkAttachment(args["network"])],
                        command=worker_command(
                            args["scheduler_address"],
                            name=worker_name,
                            nthreads=args["nthreads"],
                            memory_limit_bytes=args["memory_limit_bytes"],
                            gpus=gpus,
                        ),
                        env=DASK_ENV,
                        # Spill space on disk, removed with the container.
                        scratch=["/tmp"],
                        user=DASK_UID,
                        healthcheck=_http_health(WORKER_HTTP_PORT),
                        memory_mb=args["memory_mb"],
                        cpus=args["cpus"],
                        gpus=gpu_selector,
                        labels={**args["labels"], "cluster-ai.dask-worker": worker_name},
                    ),
                    pulumi.ResourceOptions(parent=self),
                )
            )
        self.register_outputs({"workers": self.worker_names})
