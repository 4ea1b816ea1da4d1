"""The cluster's monitoring, wired from the spec: what is scraped, probed and shipped, and where.

The plain functions here (`scrape_targets`, `probes`, `edge_routes`, ...) decide
the topology from the spec alone, so tests can reason about it without the
engine; `build_monitoring` declares the components. The head's Prometheus
reaches its own host's exporters on the private network, and every other
host's through that host's TLS edge, presenting a client certificate from the
internal CA. Alloy on a remote host pushes logs to the head's edge the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import pulumi

from components.caddy import HTTPS_PORT as PROXY_HTTPS_PORT
from components.caddy import Grant, Route, TlsEdge
from components.grafana_config import PORT as GRAFANA_PORT
from components.grafana_config import datasources
from components.hardened import SECRETS_DIR, Publish
from components.host import DockerHost
from components.logging_config import LOKI_PORT, PUSH_PATH, loki_config
from components.monitoring import (
    ALERTMANAGER_PORT,
    BLACKBOX_PORT,
    CLIENT_TLS,
    LOKI_UPSTREAM,
    POSTGRES_EXPORTER_PORT,
    PROMETHEUS_PORT,
    REDIS_EXPORTER_PORT,
    ContainerSize,
    HostExporters,
    HostExportersArgs,
    MonitoringStack,
    MonitoringStackArgs,
    edge_route_names,
)
from components.monitoring_config import (
    JOB_ALERTMANAGER,
    JOB_ALLOY,
    JOB_BLACKBOX,
    JOB_CADVISOR,
    JOB_DCGM,
    JOB_LOKI,
    JOB_NODE,
    JOB_POSTGRES,
    JOB_PROMETHEUS,
    JOB_REDIS,
    JOB_SCHEDULER,
    JOB_WORKER,
    MODULE_HTTP,
    MODULE_MTLS,
    MODULE_PROXY,
    MODULE_TLS,
    Probe,
    RuleSettings,
    SlackReceiver,
    SmtpReceiver,
    Target,
    alert_rules,
    alert_templates,
    alertmanager_config,
    blackbox_config,
    prometheus_config,
)
from components.ollama import PORT as OLLAMA_PORT
from components.postgres import Postgres
from components.redis import Redis
from components.tls import CLIENT_USAGES, SERVER_USAGES, CertSpec, IssuedCert
from components.webui import ALIAS as WEBUI_ALIAS
from components.webui import PORT as WEBUI_PORT
from infra.config import ClusterSpec, HostSpec, TlsMode

GRAFANA_SUB_PATH = "/grafana"
RULES_FILE = "/etc/cluster-ai/rules.yml"
TEMPLATES = "/etc/cluster-ai/templates/*.tmpl"
EXPORTER_JOBS = {"node": JOB_NODE, "cadvisor": JOB_CADVISOR, "alloy": JOB_ALLOY, "dcgm": JOB_DCGM}


def _remote(spec: ClusterSpec, host: HostSpec) -> bool:
    """Reached across hosts (through its TLS edge), as opposed to the head itself."""
    return host.name != spec.head.name


def needs_head_edge(spec: ClusterSpec) -> bool:
    """The head takes log pushes from other hosts through a TLS edge of its own."""
    return spec.monitoring.enabled and any(_remote(spec, h) for h in spec.hosts)


def prometheus_identity(spec: ClusterSpec) -> CertSpec:
    """Prometheus's client certificate: the only one the edges' metrics routes admit."""
    return CertSpec(common_name=f"{spec.head.name}-prometheus", usages=CLIENT_USAGES, role="prometheus")


def blackbox_identity(spec: ClusterSpec) -> CertSpec:
    """The blackbox prober's client certificate: Ollama's version endpoint and TLS handshakes only."""
    return CertSpec(common_name=f"{spec.head.name}-blackbox", usages=CLIENT_USAGES, role="blackbox")


def alloy_identity(host: HostSpec) -> CertSpec:
    """A host's log shipper's client certificate: the head edge's Loki push route only."""
    return CertSpec(common_name=f"{host.name}-alloy", usages=CLIENT_USAGES, role="alloy")


def edge_routes(spec: ClusterSpec, host: HostSpec, workers: Sequence[str]) -> list[Route]:
    """What monitoring adds to a host's TLS edge, each route granted to its one client.

    A remote host exposes its exporters and Dask workers to the head's Prometheus
    (`/metrics/<name>/metrics` -> `/metrics` at `<name>`); the head exposes only
    Loki's push API to the other hosts' log shippers.
    """
    if not spec.monitoring.enabled:
        return []
    if _remote(spec, host):
        scraper = (Grant((prometheus_identity(spec).subject,)),)
        return [
            Route(f"/metrics/{name}", upstream, grants=scraper)
            for name, upstream in edge_route_names(workers, host.gpus > 0).items()
        ]
    if needs_head_edge(spec):
        shippers = tuple(alloy_identity(h).subject for h in spec.hosts if _remote(spec, h))
        # Only Loki's push endpoint: a shipper's certificate cannot query the logs.
        push = Grant(shippers, ("POST",), (PUSH_PATH,))
        return [Route(PUSH_PATH, LOKI_UPSTREAM, strip_prefix=False, grants=(push,))]
    return []


def scrape_targets(
    spec: ClusterSpec, workers: Mapping[str, Sequence[str]], *, dashboard_prefix: str = ""
) -> list[Target]:
    """Every exporter and service Prometheus scrapes: the head's directly, other hosts' through their edge."""
    head = spec.head
    targets = []
    for host in spec.hosts:
        for name, upstream in edge_route_names(list(workers.get(host.name, ())), host.gpus > 0).items():
            job = EXPORTER_JOBS.get(name, JOB_WORKER)
            instance = name if job == JOB_WORKER else host.name
            if _remote(spec, host):
                address = f"{host.url_address}:{spec.ports.edge}"
                targets.append(Target(job, address, host.name, instance, path=f"/metrics/{name}/metrics", tls=True))
            else:
                targets.append(Target(job, upstream, host.name, instance))
    prefix = f"/{dashboard_prefix.strip('/')}" if dashboard_prefix else ""
    targets += [
        Target(JOB_SCHEDULER, f"scheduler:{spec.ports.dashboard}", head.name, "scheduler", path=f"{prefix}/metrics"),
        Target(JOB_POSTGRES, f"postgres-exporter:{POSTGRES_EXPORTER_PORT}", head.name, "postgres"),
        Target(JOB_REDIS, f"redis-exporter:{REDIS_EXPORTER_PORT}", head.name, "redis"),
        Target(JOB_PROMETHEUS, f"localhost:{PROMETHEUS_PORT}", head.name, "prometheus"),
        Target(JOB_ALERTMANAGER, f"alertmanager:{ALERTMANAGER_PORT}", head.name, "alertmanager"),
        Target(JOB_LOKI, f"loki:{LOKI_PORT}", head.name, "loki"),
        Target(JOB_BLACKBOX, f"blackbox-exporter:{BLACKBOX_PORT}", head.name, "blackbox"),
    ]
    return targets


def grafana_sub_path(spec: ClusterSpec) -> str:
    return GRAFANA_SUB_PATH if spec.proxy is not None else ""


def probes(spec: ClusterSpec, *, dashboard_prefix: str = "") -> list[Probe]:
    """What the blackbox exporter checks from the head, as users and services would reach it."""
    head = spec.head
    prefix = f"/{dashboard_prefix.strip('/')}" if dashboard_prefix else ""
    out = [
        Probe(f"http://{WEBUI_ALIAS}:{WEBUI_PORT}/health", MODULE_HTTP, head.name, "webui"),
        Probe(f"http://scheduler:{spec.ports.dashboard}{prefix}/health", MODULE_HTTP, head.name, "dask-dashboard"),
        Probe(f"http://grafana:{GRAFANA_PORT}{grafana_sub_path(spec)}/api/health", MODULE_HTTP, head.name, "grafana"),
    ]
    for host in spec.worker_hosts:
        if _remote(spec, host):
            # Through the host's edge, as Open WebUI reaches it: also watches the edge's certificate.
            url = f"https://{host.url_address}:{spec.ports.edge}/ollama/api/version"
            out.append(Probe(url, MODULE_MTLS, host.name, "ollama"))
        else:
            out.append(Probe(f"http://ollama:{OLLAMA_PORT}/api/version", MODULE_HTTP, host.name, "ollama"))
    if needs_head_edge(spec):
        # The head's edge takes only log pushes: a TLS handshake watches its certificate.
        out.append(Probe(f"{head.url_address}:{spec.ports.edge}", MODULE_TLS, head.name, "edge"))
    if spec.proxy is not None:
        out.append(Probe(f"https://proxy:{PROXY_HTTPS_PORT}/health", MODULE_PROXY, head.name, "proxy"))
    return out


def rule_settings(spec: ClusterSpec) -> RuleSettings:
    t = spec.monitoring.thresholds
    return RuleSettings(
        declared_workers=spec.declared_workers,
        gpu_temperature_c=t.gpu_temperature_c,
        gpu_memory_percent=t.gpu_memory_percent,
        disk_free_percent=t.disk_free_percent,
        cert_expiry_days=t.cert_expiry_days,
        backup_max_age_s=spec.backup_max_age_hours * 3600 if spec.backups.enabled else None,
        backup_host=spec.head.name,
    )


def receivers(spec: ClusterSpec) -> tuple[SmtpReceiver | None, SlackReceiver | None]:
    m = spec.monitoring
    smtp = None
    if m.smtp is not None:
        smtp = SmtpReceiver(
            smarthost=f"{m.smtp.host}:{m.smtp.port}",
            sender=m.smtp.sender,
            to=list(m.smtp.to),
            user=m.smtp.user,
            password_file=f"{SECRETS_DIR}/smtp_password" if m.smtp.user is not None else None,
            require_tls=m.smtp.require_tls,
        )
    slack = SlackReceiver(m.slack.channel, f"{SECRETS_DIR}/slack_webhook_url") if m.slack is not None else None
    return smtp, slack


def _size(spec: ClusterSpec, service: str) -> ContainerSize:
    limit = getattr(spec.resources, service)
    return {"image": getattr(spec.images, service), "memory_mb": limit.memory_mb, "cpus": limit.cpus}


def _host_cert(host: HostSpec, usages: Sequence[str]) -> CertSpec:
    import ipaddress

    try:
        ipaddress.ip_address(host.address)
        is_ip = True
    except ValueError:
        is_ip = False
    return CertSpec(
        common_name=host.name,
        dns_names=[host.name] + ([] if is_ip else [host.address]),
        ip_addresses=[host.address] if is_ip else [],
        usages=usages,
    )


@dataclass
class Monitoring:
    """Handles to what `build_monitoring` declared."""

    stack: MonitoringStack
    exporters: dict[str, HostExporters] = field(default_factory=dict)
    head_edge: TlsEdge | None = None
    grafana_url: str | None = None
    """Where users open Grafana (None: only on the head's private network)."""


def log_push_edge(
    spec: ClusterSpec,
    docker_host: DockerHost,
    *,
    issue: Callable[[str, CertSpec], IssuedCert] | None,
    project: str,
    stack: str,
    opts: pulumi.ResourceOptions,
) -> TlsEdge | None:
    """The head's own TLS edge, for other hosts' log pushes (a head that is also a
    worker routes them through its worker edge instead)."""
    head = spec.head
    if not needs_head_edge(spec) or head.is_worker:
        return None
    assert issue is not None, "hosts beyond the head need the internal CA"
    return TlsEdge(
        f"edge-{head.name}",
        {
            "image": spec.images.caddy,
            # Loki answers on the head's private network.
            "network": docker_host.network.name,
            "routes": edge_routes(spec, head, []),
            "tls_files": issue(f"edge-{head.name}", _host_cert(head, SERVER_USAGES)).files(),
            "address": head.address,
            "port": spec.ports.edge,
            "labels": _labels(project, stack, head),
            "memory_mb": spec.resources.edge.memory_mb,
            "cpus": spec.resources.edge.cpus,
        },
        opts,
    )


def _labels(project: str, stack: str, host: HostSpec) -> dict[str, str]:
    return {"cluster-ai.project": project, "cluster-ai.stack": stack, "cluster-ai.host": host.name}


def host_exporters(
    spec: ClusterSpec,
    host: HostSpec,
    docker_host: DockerHost,
    *,
    issue: Callable[[str, CertSpec], IssuedCert] | None,
    backup_volume: pulumi.Input[str] | None,
    project: str,
    stack: str,
    opts: pulumi.ResourceOptions,
) -> HostExporters:
    """One host's exporters and log shipper: Prometheus reaches them on the host's
    private network (the head) or through the host's edge; Alloy pushes to Loki
    there or through the head's edge."""
    head = spec.head
    remote = _remote(spec, host)
    args: HostExportersArgs = {
        "host": host.name,
        "network": docker_host.network.name,
        "labels": _labels(project, stack, host),
        "cluster": f"{project}-{stack}",
        "node_exporter": _size(spec, "node_exporter"),
        "cadvisor": _size(spec, "cadvisor"),
        "alloy": _size(spec, "alloy"),
        "loki_url": (
            f"https://{head.url_address}:{spec.ports.edge}{PUSH_PATH}"
            if remote
            else f"http://loki:{LOKI_PORT}{PUSH_PATH}"
        ),
    }
    if host.gpus > 0:
        args["dcgm_exporter"] = _size(spec, "dcgm_exporter")
    if remote:
        assert issue is not None, "hosts beyond the head need the internal CA"
        args["alloy_tls_files"] = issue(f"alloy-{host.name}", alloy_identity(host)).files()
    if not remote and backup_volume is not None:
        args["backup_volume"] = backup_volume
    return HostExporters(f"exporters-{host.name}", args, opts)


def monitoring_stack(
    spec: ClusterSpec,
    head_host: DockerHost,
    *,
    workers: Mapping[str, Sequence[str]],
    postgres: Postgres,
    redis: Redis,
    issue: Callable[[str, CertSpec], IssuedCert] | None,
    project: str,
    stack: str,
    opts: pulumi.ResourceOptions,
    dashboard_prefix: str = "",
    proxy_ca: pulumi.Output[str] | None = None,
) -> tuple[MonitoringStack, str | None]:
    """The head's Prometheus, Alertmanager, Grafana, Loki, prober and database exporters,
    and where users open Grafana (None: only on the head's networks).

    `issue(name, cert)` signs a certificate with the internal CA (None in a
    one-host stack, where nothing crosses hosts).
    """
    head = spec.head
    cluster_label = f"{project}-{stack}"
    head_labels = _labels(project, stack, head)
    remote_tls = issue is not None and any(_remote(spec, h) for h in spec.hosts)
    smtp, slack = receivers(spec)
    sub_path = grafana_sub_path(spec)
    stack_args: MonitoringStackArgs = {
        "network": head_host.network.name,
        "data_network": (head_host.data_network or head_host.network).name,
        "labels": head_labels,
        "protect": spec.is_prod,
        "prometheus": _size(spec, "prometheus"),
        "alertmanager": _size(spec, "alertmanager"),
        "grafana": _size(spec, "grafana"),
        "loki": _size(spec, "loki"),
        "blackbox_exporter": _size(spec, "blackbox_exporter"),
        "postgres_exporter": _size(spec, "postgres_exporter"),
        "redis_exporter": _size(spec, "redis_exporter"),
        "prometheus_config": prometheus_config(
            scrape_interval_s=spec.monitoring.scrape_interval_s,
            targets=scrape_targets(spec, workers, dashboard_prefix=dashboard_prefix),
            probes=probes(spec, dashboard_prefix=dashboard_prefix),
            alertmanager=f"alertmanager:{ALERTMANAGER_PORT}",
            blackbox=f"blackbox-exporter:{BLACKBOX_PORT}",
            rule_files=[RULES_FILE],
            tls=CLIENT_TLS if remote_tls else None,
            external_labels={"cluster": cluster_label},
        ),
        "alert_rules": alert_rules(rule_settings(spec)),
        "retention_days": spec.monitoring.retention_days,
        "storage_gb": spec.monitoring.storage_gb,
        "alertmanager_config": alertmanager_config(smtp=smtp, slack=slack, templates=[TEMPLATES]),
        "alert_templates": alert_templates(),
        "blackbox_config": blackbox_config(
            tls=CLIENT_TLS if remote_tls else None,
            proxy_server_name=spec.proxy.domain if spec.proxy is not None else None,
            proxy_ca_file=f"{SECRETS_DIR}/proxy-ca.pem" if proxy_ca is not None else None,
        ),
        "loki_config": loki_config(retention_days=spec.monitoring.log_retention_days),
        "grafana_datasources": datasources(
            prometheus_url=f"http://prometheus:{PROMETHEUS_PORT}",
            loki_url=f"http://loki:{LOKI_PORT}",
            alertmanager_url=f"http://alertmanager:{ALERTMANAGER_PORT}",
            scrape_interval_s=spec.monitoring.scrape_interval_s,
        ),
        "grafana_root_url": "",
        "grafana_sub_path": bool(sub_path),
        "postgres": (
            f"{postgres.host}:5432/{spec.postgres.database}?sslmode=disable",
            spec.postgres.user,
            postgres.password,
        ),
        "redis": ("redis://redis:6379", redis.password),
    }
    grafana_url: str | None
    if spec.proxy is not None:
        grafana_url = f"https://{spec.proxy.domain}{GRAFANA_SUB_PATH}/"
    elif not spec.tls_enabled:
        # dev: the seed's Grafana port, on the loopback bind address only.
        grafana_url = f"http://{spec.bind_address}:{spec.ports.grafana}/"
        stack_args["grafana_publish"] = Publish(GRAFANA_PORT, spec.ports.grafana, spec.bind_address)
    else:
        grafana_url = None
    stack_args["grafana_root_url"] = grafana_url or f"http://grafana:{GRAFANA_PORT}/"
    if remote_tls:
        assert issue is not None
        # Two certificates, two identities: the edges give each only its own routes.
        stack_args["tls_files"] = issue("prometheus", prometheus_identity(spec)).files()
        stack_args["blackbox_tls_files"] = issue("blackbox", blackbox_identity(spec)).files()
    if proxy_ca is not None:
        stack_args["proxy_ca"] = proxy_ca
    if spec.smtp_password is not None:
        stack_args["smtp_password"] = pulumi.Output.secret(spec.smtp_password.get_secret_value())
    if spec.slack_webhook_url is not None:
        stack_args["slack_webhook_url"] = pulumi.Output.secret(spec.slack_webhook_url.get_secret_value())
    if "observe" in head_host.networks and "public" in head_host.networks:
        stack_args["observe_network"] = head_host.networks["observe"].name
        stack_args["public_network"] = head_host.networks["public"].name
    # The exporters log in to PostgreSQL and Redis: after them (`opts` says so).
    return MonitoringStack("monitoring", stack_args, opts), grafana_url


def uses_internal_proxy_ca(spec: ClusterSpec) -> bool:
    """The proxy's certificate comes from the internal CA: the blackbox probe must trust it."""
    return spec.proxy is not None and spec.proxy.tls is TlsMode.INTERNAL
