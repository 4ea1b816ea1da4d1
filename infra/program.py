"""The program: load the spec, build the cluster from it, export what users need."""

from __future__ import annotations

import dataclasses
import gc
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import pulumi_random as random
from pulumi.runtime.config import _SECRET_KEYS as SECRET_KEYS_VAR
from pulumi.runtime.config import CONFIG, get_config_env, get_config_secret_keys_env
from pulumi.runtime.mocks import MockMonitor
from pulumi.runtime.settings import get_monitor
from pulumi_command import remote

from components.backup import PostgresBackup
from components.bootstrap import FirewallRules, HostBootstrapArgs
from components.caddy import Egress, PublicProxy, PublicProxyArgs, Route, TlsEdge, Upstream, ollama_grants
from components.dask import DaskScheduler, DaskSchedulerArgs, DaskWorkerPool, DaskWorkerPoolArgs, DrainArgs
from components.host import DockerHost, DockerHostArgs, ssh_options
from components.ollama import ALIAS as OLLAMA_ALIAS
from components.ollama import PORT as OLLAMA_PORT
from components.ollama import ModelPinArgs, Ollama, OllamaArgs
from components.postgres import Postgres
from components.redis import Redis
from components.tls import CLIENT_USAGES, SERVER_USAGES, CertificateAuthority, CertSpec, IssuedCert
from components.webui import OpenWebUI, OpenWebUIArgs
from infra.config import ClusterSpec, ConfigError, HostSpec, TlsMode, config_path, load_spec
from infra.monitoring import (
    GRAFANA_SUB_PATH,
    Monitoring,
    blackbox_identity,
    build_monitoring,
    edge_routes,
    needs_head_edge,
    uses_internal_proxy_ca,
)

DASHBOARD_PREFIX = "dask"
DASHBOARD_USER = "admin"


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
    ca: CertificateAuthority | None = None
    dask_ca: CertificateAuthority | None = None
    """Dask's own CA: only its certificates join the Dask cluster (comms run code on workers)."""
    edges: dict[str, TlsEdge] = field(default_factory=dict)
    proxy: PublicProxy | None = None
    dashboard_password: pulumi.Output[str] | None = None
    operator_cert: IssuedCert | None = None
    backup: PostgresBackup | None = None
    monitoring: Monitoring | None = None


def _is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def _names(host: HostSpec, *extra: str) -> CertSpec:
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


def _docker_host(index: int, host: HostSpec, spec: ClusterSpec, labels: dict[str, str]) -> DockerHost:
    args: DockerHostArgs = {"docker_host": host.docker_url, "labels": labels, "data_network": host.is_head}
    if host.ssh is not None:
        args["ssh_opts"] = ssh_options(host.address, host.ssh.port, host.ssh.host_key, host.ssh.private_key_path)
        bootstrap: HostBootstrapArgs = {
            "host": host.name,
            "gpu": host.gpus > 0,
            "rules": firewall_rules(spec, host),
            "connection": connection(index, host),
        }
        args["bootstrap"] = bootstrap
    return DockerHost(host.name, args)


def _on(host: DockerHost, *after: pulumi.Resource) -> pulumi.ResourceOptions:
    """Place a component on `host`: its provider, after its bootstrap (if any)."""
    depends: list[pulumi.Resource] = [host.bootstrap] if host.bootstrap is not None else []
    return pulumi.ResourceOptions(providers=[host.provider], depends_on=[*depends, *after])


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


def _cert(ca: CertificateAuthority, spec: ClusterSpec, name: str, cert: CertSpec) -> IssuedCert:
    lifetime = dataclasses.replace(
        cert, validity_days=spec.tls.cert_validity_days, early_renewal_days=spec.tls.early_renewal_days
    )
    return ca.issue(name, lifetime)


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


def build_cluster(spec: ClusterSpec, *, project: str, stack: str) -> Cluster:
    """Declare every service of the cluster on the hosts the spec places them on."""
    labels = {"cluster-ai.project": project, "cluster-ai.stack": stack}
    hosts = {h.name: _docker_host(i, h, spec, labels) for i, h in enumerate(spec.hosts)}
    host_index = {h.name: i for i, h in enumerate(spec.hosts)}
    head_spec = spec.head
    head = hosts[head_spec.name]
    head_labels = {**labels, "cluster-ai.host": head_spec.name}
    data_net = head.data_network.name if head.data_network is not None else head.network.name
    r = spec.resources
    tls = spec.tls_enabled
    ca = _certificate_authority(spec, stack) if tls else None
    # Dask's comms run code on the workers: they trust a CA of their own, so no
    # other certificate of the cluster (a log shipper's, the prober's) can join.
    dask_ca = _certificate_authority(spec, stack, "dask-ca", "Dask") if tls else None
    # dev publishes the seed's ports on its loopback bind address; prod publishes
    # only what other hosts need, on the host's cluster address, and the proxy.
    local_publish = not tls

    def drain_on_head() -> DrainArgs | None:
        """Where a pool's drain runs: beside the scheduler, on the head, over SSH.

        A stack on one local Docker host (dev) has no other host to move a leaving
        worker's results to, so it declares no drain: its stack needs no command provider.
        """
        if head_spec.ssh is None:
            return None
        return {"scheduler": scheduler, "connection": connection(host_index[head_spec.name], head_spec)}

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
            "labels": head_labels,
        },
        _on(head),
    )
    backup = None
    if spec.backups.enabled:
        backup = PostgresBackup(
            "postgres-backup",
            {
                "image": spec.images.postgres,
                "network": data_net,
                "host": postgres.host,
                "database": spec.postgres.database,
                "user": spec.postgres.user,
                "password": postgres.password,
                "interval_hours": spec.backups.interval_hours,
                "keep_days": spec.backups.keep_days,
                "keep_count": spec.backups.keep_count,
                "memory_mb": r.backup.memory_mb,
                "cpus": r.backup.cpus,
                "protect": spec.is_prod,
                "labels": head_labels,
            },
            _on(head, postgres),
        )
    redis = Redis(
        "redis",
        {
            "image": spec.images.redis,
            "network": data_net,
            "memory_mb": r.redis.memory_mb,
            "cpus": r.redis.cpus,
            "protect": spec.is_prod,
            "labels": head_labels,
        },
        _on(head),
    )

    scheduler_args: DaskSchedulerArgs = {
        "image": spec.images.dask,
        "network": head.network.name,
        "port": spec.ports.scheduler,
        "dashboard_port": spec.ports.dashboard,
        "memory_mb": r.scheduler.memory_mb,
        "cpus": r.scheduler.cpus,
        "labels": head_labels,
    }
    if dask_ca is not None:
        scheduler_args["tls_files"] = _cert(dask_ca, spec, "dask-scheduler", _names(head_spec, "scheduler")).files()
        scheduler_args["publish_address"] = head_spec.address
        scheduler_args["publish_dashboard"] = False  # through the proxy, behind auth
        if spec.proxy is not None:
            scheduler_args["dashboard_prefix"] = DASHBOARD_PREFIX
    else:
        scheduler_args["publish_address"] = spec.bind_address
    scheduler = DaskScheduler("dask-scheduler", scheduler_args, _on(head))
    remote_scheduler = f"{'tls' if tls else 'tcp'}://{head_spec.url_address}:{spec.ports.scheduler}"

    workers: dict[str, DaskWorkerPool] = {}
    ollamas: dict[str, Ollama] = {}
    edges: dict[str, TlsEdge] = {}
    ollama_urls: list[str] = []
    upstreams: list[Upstream] = []
    models: list[ModelPinArgs] = [{"name": m.name, "digest": m.digest} for m in spec.models]
    for host in spec.worker_hosts:
        docker_host = hosts[host.name]
        host_labels = {**labels, "cluster-ai.host": host.name}
        same_host = host.name == head_spec.name
        gpu = host.gpus > 0
        pool_args: DaskWorkerPoolArgs = {
            "image": spec.images.gpu_worker if gpu else spec.images.dask,
            "network": docker_host.network.name,
            "scheduler_address": scheduler.address if same_host else remote_scheduler,
            "count": host.worker_count,
            "nthreads": spec.threads_per_worker(host),
            "memory_mb": spec.worker_memory_mb(host),
            "memory_limit_bytes": spec.dask_memory_limit_bytes(host),
            "cpus": float(spec.threads_per_worker(host)),
            "gpus_per_worker": host.gpus_per_worker,
            "labels": host_labels,
        }
        drain = drain_on_head()
        if drain is not None:
            pool_args["drain"] = drain
        if dask_ca is not None:
            pool_args["tls_files"] = _cert(dask_ca, spec, f"dask-{host.name}", _names(host)).files()
            pool_args["host_address"] = host.address
            pool_args["port_base"] = spec.ports.worker_base
        # No ordering on the scheduler: a worker keeps dialling until it answers,
        # so hosts converge in parallel and the dependency chain stays short.
        workers[host.name] = DaskWorkerPool(f"dask-workers-{host.name}", pool_args, _on(docker_host))

        ollama_args: OllamaArgs = {
            "image": spec.images.ollama,
            "network": docker_host.network.name,
            "models": models,
            "sync_image": spec.images.dask,
            "memory_mb": r.ollama.memory_mb,
            "cpus": r.ollama.cpus,
            "sync_memory_mb": r.model_sync.memory_mb,
            "sync_cpus": r.model_sync.cpus,
            "protect": spec.is_prod,
            "labels": host_labels,
        }
        if gpu:
            ollama_args["gpus"] = "all"
        if local_publish:
            ollama_args["publish_address"] = spec.bind_address
            ollama_args["port"] = spec.ports.ollama
        ollamas[host.name] = Ollama(f"ollama-{host.name}", ollama_args, _on(docker_host))

        routes = edge_host_routes(spec, host, workers[host.name].worker_names)
        if ca is not None and routes:
            edges[host.name] = TlsEdge(
                f"edge-{host.name}",
                {
                    "image": spec.images.caddy,
                    "network": docker_host.network.name,
                    "routes": routes,
                    "tls_files": _cert(
                        ca, spec, f"edge-{host.name}", dataclasses.replace(_names(host), usages=SERVER_USAGES)
                    ).files(),
                    "address": host.address,
                    "port": spec.ports.edge,
                    "labels": host_labels,
                    "memory_mb": r.edge.memory_mb,
                    "cpus": r.edge.cpus,
                },
                _on(docker_host),
            )
        if same_host:
            ollama_urls.append(ollamas[host.name].url)
        else:
            upstreams.append(Upstream(host.name, host.address, spec.ports.edge))

    if upstreams:
        assert ca is not None
        egress = Egress(
            "egress",
            {
                "image": spec.images.caddy,
                "network": head.network.name,
                "upstreams": upstreams,
                "tls_files": _cert(ca, spec, "egress", egress_identity(spec)).files(),
                "labels": head_labels,
                "memory_mb": r.egress.memory_mb,
                "cpus": r.egress.cpus,
            },
            _on(head),
        )
        ollama_urls += egress.urls

    admin_password = _admin_password(spec)
    webui_args: OpenWebUIArgs = {
        "image": spec.images.webui,
        "networks": [head.network.name] + ([head.data_network.name] if head.data_network is not None else []),
        "database_url": postgres.url,
        "redis_url": redis.url,
        "ollama_urls": ollama_urls,
        "admin_email": spec.webui.admin_email,
        "admin_name": spec.webui.admin_name,
        "admin_password": admin_password,
        "name": spec.webui.name,
        "memory_mb": r.webui.memory_mb,
        "cpus": r.webui.cpus,
        "protect": spec.is_prod,
        "labels": head_labels,
    }
    if local_publish:
        webui_args["publish_address"] = spec.bind_address
        webui_args["publish_port"] = spec.ports.webui
    if spec.proxy is not None:
        webui_args["public_url"] = f"https://{spec.proxy.domain}"
    webui = OpenWebUI("webui", webui_args, _on(head, postgres, redis))

    cluster = Cluster(hosts, scheduler, workers, ollamas, postgres, redis, webui, admin_password, ca, dask_ca, edges)
    cluster.backup = backup
    if spec.proxy is not None:
        _public_proxy(spec, cluster, head, head_labels)
    if spec.monitoring.enabled:
        cluster.monitoring = build_monitoring(
            spec,
            hosts=hosts,
            workers={name: pool.worker_names for name, pool in workers.items()},
            postgres=postgres,
            redis=redis,
            backup_volume=backup.volume_name if backup is not None else None,
            issue=(lambda name, cert: _cert(ca, spec, name, cert)) if ca is not None else None,
            place=_on,
            project=project,
            stack=stack,
            dashboard_prefix=DASHBOARD_PREFIX if spec.proxy is not None and ca is not None else "",
            proxy_ca=ca.cert_pem if ca is not None and uses_internal_proxy_ca(spec) else None,
        )
    if dask_ca is not None:
        # Operators' Dask clients (and `stacks status`) join with a Dask certificate.
        operator = CertSpec(common_name="operator", usages=CLIENT_USAGES, role="operator")
        cluster.operator_cert = _cert(dask_ca, spec, "operator", operator)
    return cluster


def _public_proxy(spec: ClusterSpec, cluster: Cluster, head: DockerHost, labels: dict[str, str]) -> None:
    assert spec.proxy is not None
    password = random.RandomPassword("dask-dashboard-password", length=24, special=False)
    cluster.dashboard_password = pulumi.Output.secret(password.result)
    args: PublicProxyArgs = {
        "image": spec.images.caddy,
        "network": head.network.name,
        "domain": spec.proxy.domain,
        "listen_address": spec.proxy_address or spec.head.address,
        "routes": [
            Route(
                f"/{DASHBOARD_PREFIX}",
                f"scheduler:{spec.ports.dashboard}",
                strip_prefix=False,
                basic_auth_user=DASHBOARD_USER,
            )
        ]
        # Grafana has its own login (anonymous access off); it serves from this sub-path.
        + ([Route(GRAFANA_SUB_PATH, "grafana:3000", strip_prefix=False)] if spec.monitoring.enabled else []),
        "default_upstream": "webui:8080",
        "labels": labels,
        "protect": spec.is_prod,
        "memory_mb": spec.resources.proxy.memory_mb,
        "cpus": spec.resources.proxy.cpus,
        "basic_auth_hash": pulumi.Output.secret(password.bcrypt_hash),
    }
    if spec.proxy.tls is TlsMode.ACME:
        assert spec.proxy.acme_email is not None
        args["acme_email"] = spec.proxy.acme_email
    else:
        assert cluster.ca is not None
        site = CertSpec(common_name=spec.proxy.domain, dns_names=[spec.proxy.domain], usages=SERVER_USAGES)
        args["tls_files"] = _cert(cluster.ca, spec, "proxy", site).files()
    # Caddy retries its upstreams: the proxy need not wait for them.
    cluster.proxy = PublicProxy("proxy", args, _on(head))


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
