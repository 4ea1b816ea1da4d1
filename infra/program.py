"""The program: load the spec, build the cluster from it, export what users need."""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_random as random
from pulumi.runtime.config import _SECRET_KEYS as SECRET_KEYS_VAR
from pulumi.runtime.config import CONFIG, get_config_env, get_config_secret_keys_env

from components.backup import PostgresBackup
from components.caddy import PublicProxy, TlsEdge
from components.dask import DaskScheduler, DaskWorkerPool
from components.host import DockerHost
from components.ollama import Ollama
from components.postgres import Postgres
from components.redis import Redis
from components.tls import CLIENT_USAGES, CertificateAuthority, CertSpec, IssuedCert
from components.webui import OpenWebUI
from infra.config import ClusterSpec, ConfigError, load_spec
from infra.monitoring import Monitoring
from infra.nodes import (
    DASHBOARD_PREFIX,
    DASHBOARD_USER,
    HeadNode,
    HeadNodeArgs,
    Shared,
    StackConfigError,
    WorkerNode,
    WorkerNodeArgs,
    drain_args,
    remote_worker_hosts,
)

__all__ = [
    "DASHBOARD_PREFIX",
    "DASHBOARD_USER",
    "GC_THRESHOLDS",
    "Cluster",
    "StackConfigError",
    "build_cluster",
    "main",
]


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

    head: HeadNode
    nodes: dict[str, HeadNode | WorkerNode]
    """One node component per host, by host name."""
    admin_password: pulumi.Output[str]
    ca: CertificateAuthority | None = None
    dask_ca: CertificateAuthority | None = None
    """Dask's own CA: only its certificates join the Dask cluster (comms run code on workers)."""
    dashboard_password: pulumi.Output[str] | None = None
    operator_cert: IssuedCert | None = None
    monitoring: Monitoring | None = None
    hosts: dict[str, DockerHost] = field(default_factory=dict)
    workers: dict[str, DaskWorkerPool] = field(default_factory=dict)
    ollamas: dict[str, Ollama] = field(default_factory=dict)
    edges: dict[str, TlsEdge] = field(default_factory=dict)
    """The worker hosts' TLS edges (the head's log-push edge is the head node's)."""

    @property
    def scheduler(self) -> DaskScheduler:
        return self.head.scheduler

    @property
    def postgres(self) -> Postgres:
        return self.head.postgres

    @property
    def redis(self) -> Redis:
        return self.head.redis

    @property
    def webui(self) -> OpenWebUI:
        return self.head.webui

    @property
    def proxy(self) -> PublicProxy | None:
        return self.head.proxy

    @property
    def backup(self) -> PostgresBackup | None:
        return self.head.backup


def _certificate_authority(
    spec: ClusterSpec, stack: str, name: str = "cluster-ca", what: str = "internal"
) -> CertificateAuthority:
    return CertificateAuthority(
        name,
        {
            "common_name": f"cluster-ai {stack} {what} CA",
            "organization": "cluster-ai",
            "curve": spec.tls.curve.value,
            "validity_days": spec.tls.ca_validity_days,
            "early_renewal_days": spec.tls.early_renewal_days,
        },
    )


def build_cluster(spec: ClusterSpec, *, project: str, stack: str) -> Cluster:
    """Declare the cluster: the cluster-wide CAs and secrets, then one node component per host.

    The head comes first only because worker pools' drains run beside its
    scheduler; no worker node's resources wait on the head's or on each other's.
    """
    tls = spec.tls_enabled
    # Dask's comms run code on the workers: they trust a CA of their own, so no
    # other certificate of the cluster (a log shipper's, the prober's) can join.
    shared = Shared(
        spec,
        project,
        stack,
        ca=_certificate_authority(spec, stack) if tls else None,
        dask_ca=_certificate_authority(spec, stack, "dask-ca", "Dask") if tls else None,
    )
    index = {h.name: i for i, h in enumerate(spec.hosts)}
    admin_password = _admin_password(spec)
    head_args: HeadNodeArgs = {
        "shared": shared,
        "host": spec.head,
        "index": index[spec.head.name],
        "admin_password": admin_password,
    }
    dashboard_password: pulumi.Output[str] | None = None
    if spec.proxy is not None:
        password = random.RandomPassword("dask-dashboard-password", length=24, special=False)
        dashboard_password = pulumi.Output.secret(password.result)
        bcrypt_hash: pulumi.Output[str] = password.bcrypt_hash
        head_args["dashboard_password_hash"] = pulumi.Output.secret(bcrypt_hash)
    head = HeadNode(spec.head.name, head_args)
    nodes: dict[str, HeadNode | WorkerNode] = {spec.head.name: head}
    remote_scheduler = f"{'tls' if tls else 'tcp'}://{spec.head.url_address}:{spec.ports.scheduler}"
    drain = drain_args(shared, index[spec.head.name], spec.head, head.scheduler)
    for host in remote_worker_hosts(spec):
        args: WorkerNodeArgs = {
            "shared": shared,
            "host": host,
            "index": index[host.name],
            "scheduler_address": remote_scheduler,
        }
        if drain is not None:
            args["drain"] = drain
        nodes[host.name] = WorkerNode(host.name, args)

    cluster = Cluster(head, nodes, admin_password, shared.ca, shared.dask_ca, dashboard_password)
    cluster.hosts = {name: node.docker for name, node in nodes.items()}
    for name, node in nodes.items():
        if node.services is not None:
            cluster.workers[name] = node.services.workers
            cluster.ollamas[name] = node.services.ollama
            if node.services.edge is not None:
                cluster.edges[name] = node.services.edge
    if head.monitoring is not None:
        exporters = {name: node.exporters for name, node in nodes.items() if node.exporters is not None}
        cluster.monitoring = Monitoring(
            head.monitoring, exporters, head.edge if head.services is None else None, head.grafana_url
        )
    if shared.dask_ca is not None:
        # Operators' Dask clients (and `stacks status`) join with a Dask certificate.
        operator = CertSpec(common_name="operator", usages=CLIENT_USAGES, role="operator")
        cluster.operator_cert = shared.cert(shared.dask_ca, "operator", operator)
    return cluster


def _admin_password(spec: ClusterSpec) -> pulumi.Output[str]:
    if spec.admin_password is not None:
        return pulumi.Output.secret(spec.admin_password.get_secret_value())
    generated = random.RandomPassword("webui-admin-password", length=24, special=False)
    return pulumi.Output.secret(generated.result)


def export_outputs(spec: ClusterSpec, cluster: Cluster) -> None:
    """What users reach and read after `pulumi up`."""
    if not spec.tls_enabled:
        local = spec.bind_address
        pulumi.export("webuiUrl", f"http://{local}:{spec.ports.webui}")
        pulumi.export("schedulerAddress", f"tcp://{local}:{spec.ports.scheduler}")
        pulumi.export("dashboardUrl", f"http://{local}:{spec.ports.dashboard}/status")
        pulumi.export("ollamaUrl", f"http://{local}:{spec.ports.ollama}")
    else:
        pulumi.export("schedulerAddress", f"tls://{spec.head.url_address}:{spec.ports.scheduler}")
        pulumi.export("edges", {host: edge.url for host, edge in cluster.edges.items()})
    if spec.proxy is not None:
        pulumi.export("webuiUrl", f"https://{spec.proxy.domain}")
        pulumi.export("dashboardUrl", f"https://{spec.proxy.domain}/{DASHBOARD_PREFIX}/status")
        pulumi.export("dashboardUser", DASHBOARD_USER)
        pulumi.export("dashboardPassword", cluster.dashboard_password)
    if cluster.ca is not None and cluster.dask_ca is not None and cluster.operator_cert is not None:
        # What an operator's Dask client (and `stacks status`) presents to the scheduler, and trusts.
        pulumi.export("clusterCaCert", cluster.ca.cert_pem)
        pulumi.export("daskCaCert", cluster.dask_ca.cert_pem)
        pulumi.export("operatorCert", cluster.operator_cert.cert_pem)
        pulumi.export("operatorKey", cluster.operator_cert.private_key_pem)
    pulumi.export("adminEmail", spec.webui.admin_email)
    pulumi.export("adminPassword", cluster.admin_password)
    pulumi.export("ollamaModels", {host: o.models for host, o in cluster.ollamas.items()})
    pulumi.export("unpinnedModels", [m.name for m in spec.models if m.digest is None])
    pulumi.export("daskWorkers", {host: pool.worker_names for host, pool in cluster.workers.items()})
    if cluster.monitoring is not None:
        if cluster.monitoring.grafana_url is not None:
            pulumi.export("grafanaUrl", cluster.monitoring.grafana_url)
        pulumi.export("grafanaUser", "admin")
        pulumi.export("grafanaPassword", cluster.monitoring.stack.grafana_admin_password)


# Registering a resource allocates thousands of short-lived objects (Outputs,
# futures, protobuf structs) that reference each other, so the cyclic GC keeps
# walking the ever-growing set of live ones: over half of the time at a few
# thousand resources. Raise the youngest generation's threshold while the
# program registers, and freeze what was alive before it (SDK, providers'
# modules, the spec) so no collection walks it again.
GC_THRESHOLDS = (50_000, 50, 1_000)


def tune_gc_for_registration() -> None:
    """Collect once, freeze the survivors, collect rarely from here on."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def main() -> None:
    """The Pulumi program (run by `pulumi up` and by the offline plan)."""
    spec = load()
    tune_gc_for_registration()
    cluster = build_cluster(spec, project=pulumi.get_project(), stack=pulumi.get_stack())
    export_outputs(spec, cluster)
