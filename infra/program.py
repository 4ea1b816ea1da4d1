"""The program: load the spec, build the cluster from it, export what users need."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_random as random
from pulumi.runtime.config import _SECRET_KEYS as SECRET_KEYS_VAR
from pulumi.runtime.config import CONFIG, get_config_env, get_config_secret_keys_env

from components.dask import DaskScheduler, DaskSchedulerArgs, DaskWorkerPool
from components.host import DockerHost
from components.ollama import ModelPinArgs, Ollama, OllamaArgs
from components.postgres import Postgres
from components.redis import Redis
from components.webui import OpenWebUI, OpenWebUIArgs
from infra.config import ClusterSpec, ConfigError, HostSpec, load_spec


class StackConfigError(pulumi.RunError):
    """A clean, traceback-free stop: the engine prints the message and fails."""


def stack_config() -> tuple[dict[str, Any], set[str]]:
    """All config the engine handed the program, and which keys are secret."""
    config = {**get_config_env(), **CONFIG.get()}
    secret_keys = set(get_config_secret_keys_env()) | set(SECRET_KEYS_VAR.get())
    return config, secret_keys


def load() -> ClusterSpec:
    config, secret_keys = stack_config()
    try:
        return load_spec(config, secret_keys)
    except ConfigError as exc:
        raise StackConfigError(exc.render()) from None


@dataclass
class Cluster:
    """Handles to what `build_cluster` declared, for exports and tests."""

    hosts: dict[str, DockerHost]
    scheduler: DaskScheduler
    workers: dict[str, DaskWorkerPool]
    ollamas: dict[str, Ollama]
    postgres: Postgres
    redis: Redis
    webui: OpenWebUI
    admin_password: pulumi.Output[str]


def build_cluster(spec: ClusterSpec, *, project: str, stack: str) -> Cluster:
    """Declare every service of the cluster on the hosts the spec places them on."""
    labels = {"cluster-ai.project": project, "cluster-ai.stack": stack}
    hosts = {h.name: _docker_host(h, spec, labels) for h in spec.hosts}
    head = hosts[spec.head.name]
    on_head = pulumi.ResourceOptions(providers=[head.provider])
    data_net = head.data_network.name if head.data_network is not None else head.network.name
    r = spec.resources
    # Only dev publishes service ports, and only on its loopback bind address.
    publish = not spec.is_prod

    postgres = Postgres(
        "postgres",
        {
            "image": spec.images.postgres,
            "network": data_net,
            "database": spec.postgres.database,
            "user": spec.postgres.user,
            "memory_mb": r.postgres.memory_mb,
            "cpus": r.postgres.cpus,
            "protect": spec.is_prod,
            "labels": {**labels, "cluster-ai.host": spec.head.name},
        },
        on_head,
    )
    redis = Redis(
        "redis",
        {
            "image": spec.images.redis,
            "network": data_net,
            "memory_mb": r.redis.memory_mb,
            "cpus": r.redis.cpus,
            "protect": spec.is_prod,
            "labels": {**labels, "cluster-ai.host": spec.head.name},
        },
        on_head,
    )
    scheduler_args: DaskSchedulerArgs = {
        "image": spec.images.dask,
        "network": head.network.name,
        "port": spec.ports.scheduler,
        "dashboard_port": spec.ports.dashboard,
        "memory_mb": r.scheduler.memory_mb,
        "cpus": r.scheduler.cpus,
        "labels": {**labels, "cluster-ai.host": spec.head.name},
    }
    if publish:
        scheduler_args["publish_address"] = spec.bind_address
    scheduler = DaskScheduler("dask-scheduler", scheduler_args, on_head)

    workers: dict[str, DaskWorkerPool] = {}
    ollamas: dict[str, Ollama] = {}
    models: list[ModelPinArgs] = [{"name": m.name, "digest": m.digest} for m in spec.models]
    for host in spec.worker_hosts:
        docker_host = hosts[host.name]
        on_host = pulumi.ResourceOptions(providers=[docker_host.provider])
        host_labels = {**labels, "cluster-ai.host": host.name}
        workers[host.name] = DaskWorkerPool(
            f"dask-workers-{host.name}",
            {
                "image": spec.images.dask,
                "network": docker_host.network.name,
                "scheduler_address": scheduler.address,
                "count": host.worker_count,
                "nthreads": spec.threads_per_worker(host),
                "memory_mb": spec.worker_memory_mb(host),
                "memory_limit_bytes": spec.dask_memory_limit_bytes(host),
                "cpus": float(spec.threads_per_worker(host)),
                "gpus_per_worker": host.gpus_per_worker,
                "labels": host_labels,
            },
            on_host,
        )
        ollama_args: OllamaArgs = {
            "image": spec.images.ollama,
            "network": docker_host.network.name,
            "models": models,
            "sync_image": spec.images.dask,
            "memory_mb": r.ollama.memory_mb,
            "cpus": r.ollama.cpus,
            "protect": spec.is_prod,
            "labels": host_labels,
            "docker_host": host.docker_host,
        }
        if host.gpus > 0:
            ollama_args["gpus"] = "all"
        if publish:
            ollama_args["publish_address"] = spec.bind_address
            ollama_args["port"] = spec.ports.ollama
        ollamas[host.name] = Ollama(f"ollama-{host.name}", ollama_args, on_host)

    admin_password = _admin_password(spec)
    webui_args: OpenWebUIArgs = {
        "image": spec.images.webui,
        "networks": [head.network.name] + ([head.data_network.name] if head.data_network is not None else []),
        "database_url": postgres.url,
        "redis_url": redis.url,
        "ollama_urls": [o.url for o in ollamas.values()],
        "admin_email": spec.webui.admin_email,
        "admin_name": spec.webui.admin_name,
        "admin_password": admin_password,
        "name": spec.webui.name,
        "memory_mb": r.webui.memory_mb,
        "cpus": r.webui.cpus,
        "protect": spec.is_prod,
        "labels": {**labels, "cluster-ai.host": spec.head.name},
    }
    if publish:
        webui_args["publish_address"] = spec.bind_address
        webui_args["publish_port"] = spec.ports.webui
    webui = OpenWebUI(
        "webui", webui_args, pulumi.ResourceOptions(providers=[head.provider], depends_on=[postgres, redis])
    )
    return Cluster(hosts, scheduler, workers, ollamas, postgres, redis, webui, admin_password)


def _docker_host(host: HostSpec, spec: ClusterSpec, labels: dict[str, str]) -> DockerHost:
    return DockerHost(
        host.name,
        {"docker_host": host.docker_host, "labels": labels, "data_network": host.is_head},
    )


def _admin_password(spec: ClusterSpec) -> pulumi.Output[str]:
    if spec.admin_password is not None:
        return pulumi.Output.secret(spec.admin_password.get_secret_value())
    generated = random.RandomPassword("webui-admin-password", length=24, special=False)
    return pulumi.Output.secret(generated.result)


def export_outputs(spec: ClusterSpec, cluster: Cluster) -> None:
    """What users reach and read after `pulumi up`."""
    if not spec.is_prod:
        local = spec.bind_address
        pulumi.export("webuiUrl", f"http://{local}:{spec.ports.webui}")
        pulumi.export("schedulerAddress", f"tcp://{local}:{spec.ports.scheduler}")
        pulumi.export("dashboardUrl", f"http://{local}:{spec.ports.dashboard}/status")
        pulumi.export("ollamaUrl", f"http://{local}:{spec.ports.ollama}")
    pulumi.export("adminEmail", spec.webui.admin_email)
    pulumi.export("adminPassword", cluster.admin_password)
    pulumi.export("ollamaModels", {host: o.models for host, o in cluster.ollamas.items()})
    pulumi.export(
        "unpinnedModels",
        [m.name for m in spec.models if m.digest is None],
    )
    pulumi.export("daskWorkers", {host: pool.worker_names for host, pool in cluster.workers.items()})


def main() -> None:
    """The Pulumi program (run by `pulumi up` and by the offline plan)."""
    spec = load()
    cluster = build_cluster(spec, project=pulumi.get_project(), stack=pulumi.get_stack())
    export_outputs(spec, cluster)
