"""One component per machine: each host of the spec is a node that owns everything placed on it.

- `HeadNode` (`cluster-ai:index:HeadNode`): the head's Docker host (provider,
  bootstrap, networks), PostgreSQL, Redis and their backup, the Dask scheduler,
  the egress, Open WebUI, the public proxy, monitoring's head side, the head's
  TLS edge and exporters; on a host that is also a worker (dev), that host's
  worker services as well.
- `WorkerNode` (`cluster-ai:index:WorkerNode`): a worker host's Docker host,
  Dask workers, Ollama and its model sync, TLS edge and exporters.

`pulumi stack` and the offline plan show one subtree per host, and
`pulumi up --target <node URN> --target-dependents` converges one machine.
Nothing on a worker node waits on another node's resources (only a pool's
drain, which runs on the head when the host leaves, waits on the scheduler):
hosts converge in parallel. Cluster-wide pieces (the CAs, the operator's
certificate, generated stack secrets) are declared by `infra/program.py`.

The spec -> Args mapping lives here, one small function per service; the
components in `components/` take their typed Args and read no config.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NotRequired, TypedDict

import pulumi
from pulumi.runtime.mocks import MockMonitor
from pulumi.runtime.settings import get_monitor
from pulumi_command import remote

from components.backup import PostgresBackup
from components.bootstrap import FirewallRules, HostBootstrapArgs
from components.caddy import Egress, PublicProxy, PublicProxyArgs, Route, TlsEdge, Upstream, ollama_grants
from components.dask import DaskScheduler, DaskSchedulerArgs, DaskWorkerPool, DaskWorkerPoolArgs, DrainArgs
from components.host import DockerHost, DockerHostArgs, ssh_options
from components.monitoring import HostExporters, MonitoringStack
from components.ollama import ALIAS as OLLAMA_ALIAS
from components.ollama import PORT as OLLAMA_PORT
from components.ollama import ModelPinArgs, Ollama, OllamaArgs
from components.postgres import Postgres
from components.redis import Redis
from components.tls import CLIENT_USAGES, SERVER_USAGES, CertificateAuthority, CertSpec, IssuedCert
from components.webui import OpenWebUI, OpenWebUIArgs
from infra.config import ClusterSpec, HostSpec, TlsMode, config_path
from infra.monitoring import (
    GRAFANA_SUB_PATH,
    blackbox_identity,
    edge_routes,
    host_exporters,
    log_push_edge,
    monitoring_stack,
    needs_head_edge,
    uses_internal_proxy_ca,
)

DASHBOARD_PREFIX = "dask"
DASHBOARD_USER = "admin"


class StackConfigError(pulumi.RunError):
    """A clean, traceback-free stop: the engine prints the message and fails."""


@dataclass(frozen=True)
class Shared:
    """What every node reads: the spec, the stack's names and the cluster-wide CAs."""

    spec: ClusterSpec
    project: str
    stack: str
    ca: CertificateAuthority | None = None
    """The internal CA (TLS edges, egress, proxy in internal mode, monitoring clients)."""
    dask_ca: CertificateAuthority | None = None
    """Dask's own CA: only its certificates join the Dask cluster (comms run code on workers)."""

    def labels(self, host: HostSpec | None = None) -> dict[str, str]:
        """The labels of everything declared for this stack (and host)."""
        labels = {"cluster-ai.project": self.project, "cluster-ai.stack": self.stack}
        if host is not None:
            labels["cluster-ai.host"] = host.name
        return labels

    def cert(self, ca: CertificateAuthority, name: str, cert: CertSpec) -> IssuedCert:
        """`cert` signed by `ca` with the stack's validity and renewal window."""
        tls = self.spec.tls
        return ca.issue(
            name,
            dataclasses.replace(cert, validity_days=tls.cert_validity_days, early_renewal_days=tls.early_renewal_days),
        )

    def internal_cert(self, name: str, cert: CertSpec) -> IssuedCert:
        assert self.ca is not None, f"{name}: the internal CA exists wherever a hop crosses hosts"
        return self.cert(self.ca, name, cert)


class NodeArgs(TypedDict):
    """A host of the spec and what the whole cluster shares."""

    shared: Shared
    host: HostSpec
    index: int
    """The host's position under `hosts` (error messages name `hosts[i]`)."""


class HeadNodeArgs(NodeArgs):
    """The head: it also holds the stack's generated secrets its services use."""

    admin_password: pulumi.Output[str]
    """Open WebUI's bootstrap admin password (secret)."""
    dashboard_password_hash: NotRequired[pulumi.Output[str]]
    """bcrypt hash of the Dask dashboard's basic-auth password (with a proxy)."""


class WorkerNodeArgs(NodeArgs):
    """A worker host: where its workers find the scheduler, and how they leave."""

    scheduler_address: str
    """`tls://head:port`: workers dial it across hosts; nothing here waits on it."""
    drain: NotRequired[DrainArgs]
    """Retire the workers through the scheduler before the host's removal."""


# --- reaching a host -----------------------------------------------------------


def _is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def host_names(host: HostSpec, *extra: str) -> CertSpec:
    """SANs for a host's certificate: its name and address."""
    return CertSpec(
        common_name=host.name,
        dns_names=[*extra, host.name] + ([] if _is_ip(host.address) else [host.address]),
        ip_addresses=[host.address] if _is_ip(host.address) else [],
    )


def _under_mocks() -> bool:
    return isinstance(get_monitor(), MockMonitor)


def private_key(index: int, host: HostSpec) -> pulumi.Output[str]:
    """The SSH key pulumi-command uses for `host`, read from `ssh.privateKeyPath`.

    The offline plan runs under the SDK's mocks, where no credentials are
    needed: there a placeholder stands in for the key it does not read.
    """
    assert host.ssh is not None
    path = Path(host.ssh.private_key_path).expanduser()
    if path.is_file():
        return pulumi.Output.secret(path.read_text())
    if _under_mocks():
        return pulumi.Output.secret(f"[offline plan: {host.ssh.private_key_path} not read]")
    raise StackConfigError(
        f"{config_path(['hosts', index, 'ssh', 'privateKeyPath'])}: {host.ssh.private_key_path} is not a readable file"
    )


def connection(index: int, host: HostSpec) -> remote.ConnectionArgs:
    """SSH to a remote host for pulumi-command, its host key pinned."""
    assert host.ssh is not None
    return remote.ConnectionArgs(
        host=host.address,
        port=host.ssh.port,
        user=host.ssh.user,
        private_key=private_key(index, host),
        # Without host_key pulumi-command would accept any host: never leave it out.
        host_key=host.ssh.host_key,
    )


def firewall_rules(spec: ClusterSpec, host: HostSpec) -> FirewallRules:
    """What `host` admits: SSH from admins, the proxy on the head, Dask and edges from the cluster."""
    assert host.ssh is not None
    public: list[int] = []
    cluster: list[int] = []
    ranges: list[tuple[int, int]] = []
    if host.is_head:
        cluster.append(spec.ports.scheduler)
        if spec.proxy is not None:
            public += [80, 443]
    if (host.is_worker and not host.is_head) or (host.is_head and needs_head_edge(spec)):
        # Remote worker hosts' edges take Prometheus and the egress; the head's, log pushes.
        cluster.append(spec.ports.edge)
    if host.is_worker:
        ranges.append((spec.ports.worker_base, spec.ports.worker_base + host.worker_count - 1))
    return FirewallRules(
        ssh_port=host.ssh.port,
        admin_networks=list(spec.firewall.admin_networks),
        cluster_addresses=[h.address for h in spec.hosts],
        public_ports=public,
        cluster_ports=cluster,
        cluster_port_ranges=ranges,
        # Operators' Dask clients (with the exported operator certificate) reach the scheduler.
        admin_ports=[spec.ports.scheduler] if host.is_head else [],
    )


def head_networks(spec: ClusterSpec) -> list[str]:
    """The head's networks besides its own (components/host.py NETWORK_PURPOSES), each only if used."""
    networks = ["public", "data", "inference"]
    if spec.monitoring.enabled:
        networks.append("observe")
    if spec.proxy is not None:
        networks.append("dashboard")
    if remote_worker_hosts(spec):
        networks.append("egress")
    return networks


def docker_host(shared: Shared, index: int, host: HostSpec, parent: pulumi.Resource) -> DockerHost:
    """The host's Docker provider, its bootstrap (remote hosts) and its networks."""
    spec = shared.spec
    args: DockerHostArgs = {"docker_host": host.docker_url, "labels": shared.labels()}
    if host.is_head:
        args["networks"] = head_networks(spec)
    if host.ssh is not None:
        args["ssh_opts"] = ssh_options(host.address, host.ssh.port, host.ssh.host_key, host.ssh.private_key_path)
        bootstrap: HostBootstrapArgs = {
            "host": host.name,
            "gpu": host.gpus > 0,
            "rules": firewall_rules(spec, host),
            "connection": connection(index, host),
        }
        args["bootstrap"] = bootstrap
    return DockerHost(host.name, args, pulumi.ResourceOptions(parent=parent))


def placed(node: pulumi.ComponentResource, host: DockerHost, *after: pulumi.Resource) -> pulumi.ResourceOptions:
    """A service of `node` on `host`: parented to the node, with the host's provider, after its bootstrap."""
    depends: list[pulumi.Resource] = [host.bootstrap] if host.bootstrap is not None else []
    return pulumi.ResourceOptions(parent=node, providers=[host.provider], depends_on=[*depends, *after])


# --- the worker side (every worker host, the head too when it is one) ---------------


def remote_worker_hosts(spec: ClusterSpec) -> list[HostSpec]:
    """Worker hosts other than the head: reached through their TLS edges."""
    return [h for h in spec.worker_hosts if h.name != spec.head.name]


def pool_name(host: HostSpec) -> str:
    return f"dask-workers-{host.name}"


def worker_names(host: HostSpec) -> list[str]:
    """The `--name` of each Dask worker on `host` (DaskWorkerPool names them `<pool>-<i>`)."""
    return [f"{pool_name(host)}-{i}" for i in range(host.worker_count)]


def egress_identity(spec: ClusterSpec) -> CertSpec:
    """The head's egress certificate: the only client the edges' Ollama routes serve inference to."""
    return CertSpec(common_name=f"{spec.head.name}-egress", usages=CLIENT_USAGES, role="egress")


def edge_host_routes(spec: ClusterSpec, host: HostSpec, workers: list[str]) -> list[Route]:
    """A worker host's edge: Ollama's inference API for the egress (remote hosts), and monitoring's routes."""
    routes: list[Route] = []
    if host.name != spec.head.name:
        # Open WebUI on the head reaches this Ollama only through the egress; the
        # blackbox prober may read its version, nothing else.
        probe = [blackbox_identity(spec).subject] if spec.monitoring.enabled else []
        grants = ollama_grants([egress_identity(spec).subject], probe)
        routes.append(Route("/ollama", f"{OLLAMA_ALIAS}:{OLLAMA_PORT}", grants=grants))
    return routes + edge_routes(spec, host, workers)


@dataclass
class WorkerServices:
    """What a worker host runs."""

    workers: DaskWorkerPool
    ollama: Ollama
    edge: TlsEdge | None


def dask_workers(
    shared: Shared,
    host: HostSpec,
    docker: DockerHost,
    scheduler_address: str,
    drain: DrainArgs | None,
    opts: pulumi.ResourceOptions,
) -> DaskWorkerPool:
    spec = shared.spec
    gpu = host.gpus > 0
    args: DaskWorkerPoolArgs = {
        "image": spec.images.gpu_worker if gpu else spec.images.dask,
        "network": docker.network.name,
        "scheduler_address": scheduler_address,
        "count": host.worker_count,
        "nthreads": spec.threads_per_worker(host),
        "memory_mb": spec.worker_memory_mb(host),
        "memory_limit_bytes": spec.dask_memory_limit_bytes(host),
        "cpus": float(spec.threads_per_worker(host)),
        "gpus_per_worker": host.gpus_per_worker,
        "labels": shared.labels(host),
    }
    if drain is not None:
        args["drain"] = drain
    if shared.dask_ca is not None:
        args["tls_files"] = shared.cert(shared.dask_ca, f"dask-{host.name}", host_names(host)).files()
        args["host_address"] = host.address
        args["port_base"] = spec.ports.worker_base
    # No ordering on the scheduler: a worker keeps dialling until it answers,
    # so hosts converge in parallel and the dependency chain stays short.
    pool = DaskWorkerPool(pool_name(host), args, opts)
    if pool.worker_names != worker_names(host):
        raise AssertionError(f"{pool.urn}: worker names {pool.worker_names} are not {worker_names(host)}")
    return pool


def _pin(name: str, digest: str | None, insecure: bool) -> ModelPinArgs:
    pin: ModelPinArgs = {"name": name, "digest": digest}
    if insecure:
        pin["insecure"] = True
    return pin


def ollama(
    shared: Shared,
    host: HostSpec,
    docker: DockerHost,
    opts: pulumi.ResourceOptions,
    clients: Sequence[pulumi.Input[str]] = (),
) -> Ollama:
    spec, r = shared.spec, shared.spec.resources
    models = [_pin(m.name, m.digest, m.insecure) for m in spec.models]
    args: OllamaArgs = {
        "image": spec.images.ollama,
        "network": docker.network.name,
        "models": models,
        "sync_image": spec.images.dask,
        "memory_mb": r.ollama.memory_mb,
        "cpus": r.ollama.cpus,
        "sync_memory_mb": r.model_sync.memory_mb,
        "sync_cpus": r.model_sync.cpus,
        "protect": spec.is_prod,
        "labels": shared.labels(host),
    }
    if clients:
        args["client_networks"] = list(clients)
    if host.gpus > 0:
        args["gpus"] = "all"
    if not spec.tls_enabled:
        # dev publishes the seed's port on its loopback bind address.
        args["publish_address"] = spec.bind_address
        args["port"] = spec.ports.ollama
    return Ollama(f"ollama-{host.name}", args, opts)


def worker_edge(
    shared: Shared, host: HostSpec, docker: DockerHost, workers: list[str], opts: pulumi.ResourceOptions
) -> TlsEdge | None:
    """The host's TLS edge, if anything on it is reached from another host."""
    spec = shared.spec
    routes = edge_host_routes(spec, host, workers)
    if shared.ca is None or not routes:
        return None
    cert = dataclasses.replace(host_names(host), usages=SERVER_USAGES)
    return TlsEdge(
        f"edge-{host.name}",
        {
            "image": spec.images.caddy,
            "network": docker.network.name,
            "routes": routes,
            "tls_files": shared.cert(shared.ca, f"edge-{host.name}", cert).files(),
            "address": host.address,
            "port": spec.ports.edge,
            "labels": shared.labels(host),
            "memory_mb": spec.resources.edge.memory_mb,
            "cpus": spec.resources.edge.cpus,
        },
        opts,
    )


def worker_services(
    node: pulumi.ComponentResource,
    shared: Shared,
    host: HostSpec,
    docker: DockerHost,
    *,
    scheduler_address: str,
    drain: DrainArgs | None,
    ollama_clients: Sequence[pulumi.Input[str]] = (),
) -> WorkerServices:
    """Dask workers, Ollama (with its model sync) and the TLS edge of one worker host."""
    pool = dask_workers(shared, host, docker, scheduler_address, drain, placed(node, docker))
    server = ollama(shared, host, docker, placed(node, docker), ollama_clients)
    edge = worker_edge(shared, host, docker, pool.worker_names, placed(node, docker))
    return WorkerServices(pool, server, edge)


def exporters(
    node: pulumi.ComponentResource,
    shared: Shared,
    host: HostSpec,
    docker: DockerHost,
    backup_volume: pulumi.Input[str] | None = None,
) -> HostExporters | None:
    """The host's exporters and log shipper, when the stack monitors itself."""
    if not shared.spec.monitoring.enabled:
        return None
    return host_exporters(
        shared.spec,
        host,
        docker,
        issue=shared.internal_cert if shared.ca is not None else None,
        backup_volume=backup_volume,
        project=shared.project,
        stack=shared.stack,
        opts=placed(node, docker),
    )


class WorkerNode(pulumi.ComponentResource):
    """A worker host and everything on it: Docker host, Dask workers, Ollama, TLS edge, exporters."""

    docker: DockerHost
    """The host's provider, bootstrap and network."""
    services: WorkerServices
    exporters: HostExporters | None

    def __init__(self, name: str, args: WorkerNodeArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("cluster-ai:index:WorkerNode", name, {}, opts)
        shared, host = args["shared"], args["host"]
        if host.is_head or not host.is_worker:
            raise ValueError(f"{name}: a WorkerNode is a worker host that is not the head")
        self.docker = docker_host(shared, args["index"], host, self)
        self.services = worker_services(
            self, shared, host, self.docker, scheduler_address=args["scheduler_address"], drain=args.get("drain")
        )
        self.exporters = exporters(self, shared, host, self.docker)
        self.register_outputs({"address": host.address, "workers": self.services.workers.worker_names})


# --- the head --------------------------------------------------------------------


def _net(docker: DockerHost, purpose: str) -> pulumi.Output[str]:
    return docker.networks[purpose].name


def postgres(shared: Shared, host: HostSpec, docker: DockerHost, opts: pulumi.ResourceOptions) -> Postgres:
    spec = shared.spec
    return Postgres(
        "postgres",
        {
            "image": spec.images.postgres,
            "network": _net(docker, "data"),
            "database": spec.postgres.database,
            "user": spec.postgres.user,
            "memory_mb": spec.resources.postgres.memory_mb,
            "cpus": spec.resources.postgres.cpus,
            "protect": spec.is_prod,
            "labels": shared.labels(host),
        },
        opts,
    )


def postgres_backup(
    shared: Shared, host: HostSpec, docker: DockerHost, db: Postgres, opts: pulumi.ResourceOptions
) -> PostgresBackup | None:
    spec = shared.spec
    if not spec.backups.enabled:
        return None
    return PostgresBackup(
        "postgres-backup",
        {
            "image": spec.images.postgres,
            "network": _net(docker, "data"),
            "host": db.host,
            "database": spec.postgres.database,
            "user": spec.postgres.user,
            "password": db.password,
            "interval_hours": spec.backups.interval_hours,
            "keep_days": spec.backups.keep_days,
            "keep_count": spec.backups.keep_count,
            "memory_mb": spec.resources.backup.memory_mb,
            "cpus": spec.resources.backup.cpus,
            "protect": spec.is_prod,
            "labels": shared.labels(host),
        },
        opts,
    )


def redis(shared: Shared, host: HostSpec, docker: DockerHost, opts: pulumi.ResourceOptions) -> Redis:
    spec = shared.spec
    return Redis(
        "redis",
        {
            "image": spec.images.redis,
            "network": _net(docker, "data"),
            "memory_mb": spec.resources.redis.memory_mb,
            "cpus": spec.resources.redis.cpus,
            "protect": spec.is_prod,
            "labels": shared.labels(host),
        },
        opts,
    )


def scheduler(shared: Shared, host: HostSpec, docker: DockerHost, opts: pulumi.ResourceOptions) -> DaskScheduler:
    spec = shared.spec
    args: DaskSchedulerArgs = {
        "image": spec.images.dask,
        "network": docker.network.name,
        "port": spec.ports.scheduler,
        "dashboard_port": spec.ports.dashboard,
        "memory_mb": spec.resources.scheduler.memory_mb,
        "cpus": spec.resources.scheduler.cpus,
        "labels": shared.labels(host),
    }
    if shared.dask_ca is not None:
        args["tls_files"] = shared.cert(shared.dask_ca, "dask-scheduler", host_names(host, "scheduler")).files()
        args["publish_address"] = host.address
        args["publish_dashboard"] = False  # through the proxy, behind auth
        if spec.proxy is not None:
            args["dashboard_prefix"] = DASHBOARD_PREFIX
    else:
        args["publish_address"] = spec.bind_address
    if "dashboard" in docker.networks:
        # The proxy reaches the dashboard here, and nothing else public does.
        args["dashboard_network"] = _net(docker, "dashboard")
    return DaskScheduler("dask-scheduler", args, opts)


def egress(shared: Shared, host: HostSpec, docker: DockerHost, opts: pulumi.ResourceOptions) -> Egress | None:
    """Open WebUI's way to the other hosts' Ollama: plain in on the inference network, mutual TLS out."""
    spec = shared.spec
    upstreams = [Upstream(h.name, h.address, spec.ports.edge) for h in remote_worker_hosts(spec)]
    if not upstreams:
        return None
    return Egress(
        "egress",
        {
            "image": spec.images.caddy,
            "network": _net(docker, "inference"),
            "outbound_network": _net(docker, "egress"),
            "upstreams": upstreams,
            "tls_files": shared.internal_cert("egress", egress_identity(spec)).files(),
            "labels": shared.labels(host),
            "memory_mb": spec.resources.egress.memory_mb,
            "cpus": spec.resources.egress.cpus,
        },
        opts,
    )


def webui(
    shared: Shared,
    host: HostSpec,
    docker: DockerHost,
    *,
    db: Postgres,
    cache: Redis,
    ollama_urls: list[str],
    admin_password: pulumi.Output[str],
    opts: pulumi.ResourceOptions,
) -> OpenWebUI:
    spec = shared.spec
    args: OpenWebUIArgs = {
        "image": spec.images.webui,
        # Its alias on the public network (the proxy's upstream); PostgreSQL and
        # Redis on the data network; the egress and a local Ollama on the inference one.
        "networks": [_net(docker, "public"), _net(docker, "data"), _net(docker, "inference")],
        "database_url": db.url,
        "redis_url": cache.url,
        "ollama_urls": ollama_urls,
        "admin_email": spec.webui.admin_email,
        "admin_name": spec.webui.admin_name,
        "admin_password": admin_password,
        "name": spec.webui.name,
        "memory_mb": spec.resources.webui.memory_mb,
        "cpus": spec.resources.webui.cpus,
        "protect": spec.is_prod,
        "labels": shared.labels(host),
    }
    if not spec.tls_enabled:
        args["publish_address"] = spec.bind_address
        args["publish_port"] = spec.ports.webui
    if spec.proxy is not None:
        args["public_url"] = f"https://{spec.proxy.domain}"
    return OpenWebUI("webui", args, opts)


def proxy_routes(spec: ClusterSpec) -> list[Route]:
    """The proxy's routes besides Open WebUI (its default): the Dask dashboard, and Grafana."""
    routes = [
        Route(
            f"/{DASHBOARD_PREFIX}",
            f"scheduler:{spec.ports.dashboard}",
            strip_prefix=False,
            basic_auth_user=DASHBOARD_USER,
        )
    ]
    if spec.monitoring.enabled:
        # Grafana has its own login (anonymous access off); it serves from this sub-path.
        routes.append(Route(GRAFANA_SUB_PATH, "grafana:3000", strip_prefix=False))
    return routes


def public_proxy(
    shared: Shared,
    host: HostSpec,
    docker: DockerHost,
    password_hash: pulumi.Output[str],
    opts: pulumi.ResourceOptions,
) -> PublicProxy | None:
    spec = shared.spec
    if spec.proxy is None:
        return None
    args: PublicProxyArgs = {
        "image": spec.images.caddy,
        "network": _net(docker, "public"),
        "upstream_networks": [_net(docker, "dashboard")],
        "domain": spec.proxy.domain,
        "listen_address": spec.proxy_address or host.address,
        "routes": proxy_routes(spec),
        "default_upstream": "webui:8080",
        "labels": shared.labels(host),
        "protect": spec.is_prod,
        "memory_mb": spec.resources.proxy.memory_mb,
        "cpus": spec.resources.proxy.cpus,
        "basic_auth_hash": password_hash,
    }
    if spec.proxy.tls is TlsMode.ACME:
        assert spec.proxy.acme_email is not None
        args["acme_email"] = spec.proxy.acme_email
    else:
        site = CertSpec(common_name=spec.proxy.domain, dns_names=[spec.proxy.domain], usages=SERVER_USAGES)
        args["tls_files"] = shared.internal_cert("proxy", site).files()
    # Caddy retries its upstreams: the proxy need not wait for them.
    return PublicProxy("proxy", args, opts)


class HeadNode(pulumi.ComponentResource):
    """The head host and everything on it (and, on a head that is also a worker, its worker services)."""

    docker: DockerHost
    postgres: Postgres
    backup: PostgresBackup | None
    redis: Redis
    scheduler: DaskScheduler
    services: WorkerServices | None
    """Dask workers, Ollama and edge, when the head is also a worker (dev)."""
    egress: Egress | None
    webui: OpenWebUI
    proxy: PublicProxy | None
    edge: TlsEdge | None
    """The head's TLS edge: its worker edge, or the one taking other hosts' log pushes."""
    exporters: HostExporters | None
    monitoring: MonitoringStack | None
    grafana_url: str | None
    """Where users open Grafana (None: only on the head's networks)."""

    def __init__(self, name: str, args: HeadNodeArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("cluster-ai:index:HeadNode", name, {}, opts)
        shared, host, spec = args["shared"], args["host"], args["shared"].spec
        if not host.is_head:
            raise ValueError(f"{name}: a HeadNode is the host with the head role")
        self.docker = d = docker_host(shared, args["index"], host, self)
        self.postgres = postgres(shared, host, d, placed(self, d))
        self.backup = postgres_backup(shared, host, d, self.postgres, placed(self, d, self.postgres))
        self.redis = redis(shared, host, d, placed(self, d))
        self.scheduler = scheduler(shared, host, d, placed(self, d))
        self.services = None
        if host.is_worker:
            drain = drain_args(shared, args["index"], host, self.scheduler)
            self.services = worker_services(
                self,
                shared,
                host,
                d,
                scheduler_address=self.scheduler.address,
                drain=drain,
                ollama_clients=[_net(d, "inference")],
            )
        self.egress = egress(shared, host, d, placed(self, d))
        local = [self.services.ollama.url] if self.services is not None else []
        self.webui = webui(
            shared,
            host,
            d,
            db=self.postgres,
            cache=self.redis,
            ollama_urls=local + (self.egress.urls if self.egress is not None else []),
            admin_password=args["admin_password"],
            opts=placed(self, d, self.postgres, self.redis),
        )
        self.proxy = None
        if "dashboard_password_hash" in args:
            self.proxy = public_proxy(shared, host, d, args["dashboard_password_hash"], placed(self, d))
        self.edge = self.services.edge if self.services is not None else None
        self.exporters = self.monitoring = self.grafana_url = None
        if spec.monitoring.enabled:
            self._monitoring(shared, host)
        self.register_outputs({"address": host.address, "webui": self.webui.url})

    def _monitoring(self, shared: Shared, host: HostSpec) -> None:
        """The head's exporters, its log-push edge (if no worker edge takes pushes) and monitoring stack."""
        spec, d = shared.spec, self.docker
        issue = shared.internal_cert if shared.ca is not None else None
        pushes = log_push_edge(spec, d, issue=issue, project=shared.project, stack=shared.stack, opts=placed(self, d))
        if pushes is not None:
            self.edge = pushes
        self.exporters = exporters(self, shared, host, d, self.backup.volume_name if self.backup else None)
        with_proxy = spec.proxy is not None and shared.ca is not None
        self.monitoring, self.grafana_url = monitoring_stack(
            spec,
            d,
            workers={h.name: worker_names(h) for h in spec.worker_hosts},
            postgres=self.postgres,
            redis=self.redis,
            issue=issue,
            project=shared.project,
            stack=shared.stack,
            opts=placed(self, d, self.postgres, self.redis),
            dashboard_prefix=DASHBOARD_PREFIX if with_proxy else "",
            proxy_ca=shared.ca.cert_pem if shared.ca is not None and uses_internal_proxy_ca(spec) else None,
        )


def drain_args(shared: Shared, head_index: int, head: HostSpec, scheduler: DaskScheduler) -> DrainArgs | None:
    """Where a pool's drain runs: beside the scheduler, on the head, over SSH.

    A stack on one local Docker host (dev) has no other host to move a leaving
    worker's results to, so it declares no drain: its stack needs no command provider.
    """
    if head.ssh is None:
        return None
    return {"scheduler": scheduler, "connection": connection(head_index, head)}
