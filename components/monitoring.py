"""Monitoring: every host's exporters and log shipper, and the head's Prometheus stack.

- `HostExporters` (every host): the node exporter, cAdvisor and Grafana Alloy,
  plus NVIDIA's DCGM exporter on a GPU host. They publish no port: the head's
  Prometheus reaches its own host's exporters on the private network, and a
  remote host's through that host's TLS edge (client certificate required).
- `MonitoringStack` (the head): Prometheus (data on a protected volume),
  Alertmanager (email / Slack, credentials from secret files), Grafana
  (provisioned datasources and dashboards, generated admin password), Loki,
  the blackbox exporter, and the PostgreSQL and Redis exporters.

Host-level exporters need narrow exceptions to the hardened defaults, each
stated here and keyed on the `cluster-ai.service` label for the policy pack:

| service | exception | why |
|---|---|---|
| node-exporter | host PID namespace; host `/` read-only at `/host`, its `/run` and `/var/run` masked by empty tmpfs; nobody, no supplementary group | the host's processes, filesystems and hardware, never its sockets |
| cadvisor | host `/sys` read-only; runs as root (no capability) | cgroup statistics of every container; `/sys` holds no socket |
| alloy | host `/var/lib/docker/containers` read-only; runs as root (no capability) | container log files are root's, mode 0640; no socket lives there |
| dcgm-exporter | the GPUs; runs as root (no capability) | device fields only (`DCGM_COUNTERS`): no profiling field, so no SYS_ADMIN |
| backup-metrics (head) | the backup volume read-only, as the backup's uid | publishes its last-success time for the node exporter (a shared tmpfs) |

No container gets the Docker socket (CIS 5.31): cAdvisor therefore reports
containers by cgroup id, and Alloy reads the json-file logs, whose lines carry
the container's labels (components/hardened.py `LOG_OPTS`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import NotRequired, TypedDict

import pulumi
import pulumi_docker as docker
import pulumi_random as random
import yaml

from components.backup import BACKUP_UID, LAST_SUCCESS
from components.dask import WORKER_HTTP_PORT
from components.grafana_config import PORT as GRAFANA_PORT
from components.grafana_config import grafana_env, provisioning_files
from components.hardened import (
    CONFIG_DIR,
    SECRETS_DIR,
    SOCKET_DIRS,
    Healthcheck,
    HostPath,
    Mount,
    NetworkAttachment,
    Publish,
    ServiceContainer,
    child_options,
    data_volume,
    generated_options,
    hardened_container,
)
from components.logging_config import ALLOY_PORT, DOCKER_LOGS, LOKI_DIR, LOKI_PORT, alloy_config
from components.monitoring_config import TlsClient, backup_textfile_script

NODE_EXPORTER_PORT = 9100
CADVISOR_PORT = 8080
DCGM_PORT = 9400
PROMETHEUS_PORT = 9090
ALERTMANAGER_PORT = 9093
BLACKBOX_PORT = 9115
POSTGRES_EXPORTER_PORT = 9187
REDIS_EXPORTER_PORT = 9121

NOBODY = "65534:65534"
# The node exporter's default exclusion, plus /run (masked, a tmpfs on every host).
NODE_MOUNT_POINTS_EXCLUDE = "^/(dev|proc|run|sys|var/lib/docker/.+|var/lib/containers/storage/.+)($|/)"
DCGM_COUNTERS_FILE = "dcgm-counters.csv"
# Every DCGM field the alert rules (components/monitoring_config.py) and the
# dashboards (monitoring/dashboards) use; none is a profiling (DCGM_FI_PROF_*) one.
DCGM_COUNTERS = (
    ("DCGM_FI_DEV_GPU_TEMP", "gauge", "GPU temperature (in C)."),
    ("DCGM_FI_DEV_POWER_USAGE", "gauge", "Power draw (in W)."),
    ("DCGM_FI_DEV_SM_CLOCK", "gauge", "SM clock frequency (in MHz)."),
    ("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization (in %)."),
    ("DCGM_FI_DEV_MEM_COPY_UTIL", "gauge", "Memory utilization (in %)."),
    ("DCGM_FI_DEV_FB_FREE", "gauge", "Framebuffer memory free (in MiB)."),
    ("DCGM_FI_DEV_FB_USED", "gauge", "Framebuffer memory used (in MiB)."),
    ("DCGM_FI_DEV_XID_ERRORS", "gauge", "Value of the last XID error encountered."),
)
GRAFANA_UID = "472:0"
LOKI_UID = "10001:10001"
# TLS files of a service's client certificate, where hardened_container puts secrets.
CLIENT_TLS = TlsClient(f"{SECRETS_DIR}/ca.pem", f"{SECRETS_DIR}/tls.crt", f"{SECRETS_DIR}/tls.key")
BACKUP_MOUNT = "/backup"
TEXTFILE_DIR = "/textfile"
TEXTFILE_INTERVAL_S = 60


def wget_health(port: int, path: str = "/", **kwargs: int) -> Healthcheck:
    """An HTTP check with the busybox `wget` the Prometheus-family images ship."""
    return Healthcheck(["CMD", "wget", "-q", "-O", "/dev/null", f"http://127.0.0.1:{port}{path}"], **kwargs)


def bash_health(port: int, path: str, **kwargs: int) -> Healthcheck:
    """An HTTP check for images with bash but no HTTP client (Alloy, DCGM): `/dev/tcp`, status 200."""
    script = (
        f"exec 3<>/dev/tcp/127.0.0.1/{port} && "
        f"printf 'GET {path} HTTP/1.0\\r\\nHost: 127.0.0.1\\r\\n\\r\\n' >&3 && "
        "read -r status <&3 && case \"$status\" in *' 200 '*) exit 0;; *) exit 1;; esac"
    )
    return Healthcheck(["CMD", "bash", "-c", script], **kwargs)


class ContainerSize(TypedDict):
    """A monitoring container's pinned image and limits."""

    image: str
    memory_mb: int
    cpus: float


def _tmpfs(uid: str | None = None, size: str = "16m") -> str:
    opts = f"rw,noexec,nosuid,size={size}"
    if uid is not None:
        user, _, group = uid.partition(":")
        opts += f",uid={user},gid={group or user},mode=0700"
    return opts


class HostExportersArgs(TypedDict):
    """The exporters and log shipper of one host."""

    host: str
    """The host's name: every log line and metric says where it came from."""
    network: pulumi.Input[str]
    """The host's private network (the head's Prometheus or the host's edge reaches them on it)."""
    labels: dict[str, str]
    cluster: str
    """`<project>-<stack>`: the Loki label of this cluster's logs."""
    node_exporter: ContainerSize
    cadvisor: ContainerSize
    alloy: ContainerSize
    loki_url: str
    """Where Alloy pushes: Loki on the head's network, or the head's edge."""
    dcgm_exporter: NotRequired[ContainerSize]
    """GPU hosts only."""
    alloy_tls_files: NotRequired[dict[str, pulumi.Output[str]]]
    """Alloy's client certificate, for a push through the head's edge."""
    backup_volume: NotRequired[pulumi.Input[str]]
    """The head: the backup volume, whose last-success time the node exporter publishes."""


class HostExporters(pulumi.ComponentResource):
    """Node exporter, cAdvisor, Alloy (and DCGM on a GPU host) on one host; nothing published."""

    aliases: dict[str, str]
    """service -> `alias:port` on the host's network."""

    def __init__(self, name: str, args: HostExportersArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("cluster-ai:index:HostExporters", name, {}, opts)
        child = child_options(self, opts)
        net = args["network"]
        labels = args["labels"]

        node = args["node_exporter"]
        node_command = [
            "--path.rootfs=/host",
            f"--web.listen-address=:{NODE_EXPORTER_PORT}",
            f"--collector.textfile.directory={TEXTFILE_DIR}",
            # /run is masked (below) and a tmpfs anyway: not one of the host's disks.
            f"--collector.filesystem.mount-points-exclude={NODE_MOUNT_POINTS_EXCLUDE}",
        ]
        node_mounts: list[Mount] = []
        node_tmpfs = {TEXTFILE_DIR: _tmpfs(NOBODY, "1m")}
        self.backup_metrics = None
        if "backup_volume" in args:
            # The backup's last-success file is 0600, its own uid's: a sidecar of
            # that uid (and no host access) publishes it into a shared tmpfs the
            # node exporter reads, so the exporter itself stays nobody.
            textfile = textfile_volume(f"{name}-textfile", labels, child)
            node_mounts.append(Mount(volume=textfile.name, target=TEXTFILE_DIR, read_only=True))
            node_tmpfs = {}
            self.backup_metrics = _backup_metrics(
                name, node["image"], net, args["backup_volume"], textfile, labels, child
            )
        self.node_exporter = hardened_container(
            f"{name}-node-exporter",
            ServiceContainer(
                service="node-exporter",
                image=node["image"],
                networks=[NetworkAttachment(net, aliases=["node-exporter"])],
                command=node_command,
                mounts=node_mounts,
                # The host's processes (procs_running, ...) and its filesystems, but
                # not its sockets: /run and /var/run (Docker's, containerd's) are masked.
                pid_mode="host",
                host_paths=[HostPath("/", "/host", propagation="rslave", masks=SOCKET_DIRS)],
                tmpfs=node_tmpfs,
                # nobody, no supplementary group: not the docker group of any host.
                user=NOBODY,
                healthcheck=wget_health(NODE_EXPORTER_PORT),
                memory_mb=node["memory_mb"],
                cpus=node["cpus"],
                labels=labels,
            ),
            child,
        )

        cadvisor = args["cadvisor"]
        self.cadvisor = hardened_container(
            f"{name}-cadvisor",
            ServiceContainer(
                service="cadvisor",
                image=cadvisor["image"],
                networks=[NetworkAttachment(net, aliases=["cadvisor"])],
                command=[
                    f"--port={CADVISOR_PORT}",
                    # No Docker socket: containers are reported by cgroup, not by name.
                    "--docker_only=false",
                    "--housekeeping_interval=30s",
                    "--store_container_labels=false",
                    "--disable_metrics=advtcp,cpu_topology,cpuset,hugetlb,memory_numa,percpu,perf_event,"
                    "process,referenced_memory,resctrl,sched,tcp,udp",
                ],
                # cgroup statistics only: the host's disks are the node exporter's.
                host_paths=[HostPath("/sys", "/sys")],
                tmpfs={"/tmp": _tmpfs()},
                # Some cgroup files are root's; every capability is still dropped.
                user=None,
                healthcheck=wget_health(CADVISOR_PORT, "/healthz"),
                memory_mb=cadvisor["memory_mb"],
                cpus=cadvisor["cpus"],
                labels=labels,
            ),
            child,
        )

        alloy = args["alloy"]
        tls_files = args.get("alloy_tls_files")
        self.alloy = hardened_container(
            f"{name}-alloy",
            ServiceContainer(
                service="alloy",
                image=alloy["image"],
                networks=[NetworkAttachment(net, aliases=["alloy"])],
                command=[
                    "run",
                    f"--server.http.listen-addr=0.0.0.0:{ALLOY_PORT}",
                    "--storage.path=/var/lib/alloy/data",
                    "--disable-reporting",
                    f"{CONFIG_DIR}/config.alloy",
                ],
                config_files={
                    "config.alloy": alloy_config(
                        host=args["host"],
                        loki_url=args["loki_url"],
                        cluster=args["cluster"],
                        tls=CLIENT_TLS if tls_files else None,
                    )
                },
                secret_files=dict(tls_files or {}),
                host_paths=[HostPath(DOCKER_LOGS, DOCKER_LOGS)],
                # Read positions: lost with the container, then reading resumes at the files' end.
                scratch=["/var/lib/alloy/data"],
                tmpfs={"/tmp": _tmpfs()},
                # Docker's log files are root's (0640): root, with every capability dropped.
                user=None,
                healthcheck=bash_health(ALLOY_PORT, "/-/ready"),
                memory_mb=alloy["memory_mb"],
                cpus=alloy["cpus"],
                labels=labels,
            ),
            child,
        )
        self.aliases = {
            "node-exporter": f"node-exporter:{NODE_EXPORTER_PORT}",
            "cadvisor": f"cadvisor:{CADVISOR_PORT}",
            "alloy": f"alloy:{ALLOY_PORT}",
        }

        self.dcgm_exporter = None
        if "dcgm_exporter" in args:
            dcgm = args["dcgm_exporter"]
            self.dcgm_exporter = hardened_container(
                f"{name}-dcgm-exporter",
                ServiceContainer(
                    service="dcgm-exporter",
                    image=dcgm["image"],
                    networks=[NetworkAttachment(net, aliases=["dcgm-exporter"])],
                    env={
                        "DCGM_EXPORTER_LISTEN": f":{DCGM_PORT}",
                        "DCGM_EXPORTER_KUBERNETES": "false",
                        # Only the device fields the rules and dashboards use (`-f`): no
                        # profiling (DCGM_FI_PROF_*) field, so DCGM needs no SYS_ADMIN.
                        "DCGM_EXPORTER_COLLECTORS": f"{CONFIG_DIR}/{DCGM_COUNTERS_FILE}",
                    },
                    config_files={DCGM_COUNTERS_FILE: dcgm_counters_csv()},
                    gpus="all",
                    # DCGM's embedded host engine writes its log under /var/log.
                    tmpfs={"/tmp": _tmpfs(size="64m"), "/var/log": _tmpfs(size="64m")},
                    user=None,
                    healthcheck=bash_health(DCGM_PORT, "/health", start_period_s=60),
                    memory_mb=dcgm["memory_mb"],
                    cpus=dcgm["cpus"],
                    labels=labels,
                ),
                child,
            )
            self.aliases["dcgm-exporter"] = f"dcgm-exporter:{DCGM_PORT}"
        self.register_outputs({"aliases": self.aliases})


class MonitoringStackArgs(TypedDict):
    """The head's monitoring services and the files they read (generated by the program)."""

    network: pulumi.Input[str]
    """The head's private network: every head service and exporter is on it."""
    data_network: pulumi.Input[str]
    """PostgreSQL's and Redis's internal network, for their exporters."""
    observe_network: NotRequired[pulumi.Input[str]]
    """Grafana's internal network to Prometheus, Loki and Alertmanager; with `public_network`,
    Grafana leaves the head's private network for these two."""
    public_network: NotRequired[pulumi.Input[str]]
    """Where the proxy reaches Grafana and the blackbox prober reaches what users do."""
    labels: dict[str, str]
    protect: bool
    """Protect the data volumes and keep them on delete (prod)."""
    prometheus: ContainerSize
    alertmanager: ContainerSize
    grafana: ContainerSize
    loki: ContainerSize
    blackbox_exporter: ContainerSize
    postgres_exporter: ContainerSize
    redis_exporter: ContainerSize
    prometheus_config: Mapping[str, object]
    alert_rules: Mapping[str, object]
    retention_days: int
    storage_gb: int
    alertmanager_config: Mapping[str, object]
    alert_templates: str
    blackbox_config: Mapping[str, object]
    loki_config: Mapping[str, object]
    grafana_datasources: Mapping[str, object]
    grafana_root_url: str
    grafana_sub_path: bool
    """Served under /grafana by the public proxy (prod)."""
    postgres: tuple[str, str, pulumi.Input[str]]
    """(host:port/database, user, password (secret)) the PostgreSQL exporter logs in with."""
    redis: tuple[str, pulumi.Input[str]]
    """(redis://host:port, password (secret)) the Redis exporter logs in with."""
    tls_files: NotRequired[dict[str, pulumi.Output[str]]]
    """Prometheus's client certificate (targets behind TLS edges)."""
    blackbox_tls_files: NotRequired[dict[str, pulumi.Output[str]]]
    """The blackbox exporter's own client certificate (probes through TLS edges)."""
    proxy_ca: NotRequired[pulumi.Output[str]]
    """The CA of the proxy's certificate when it is the internal one (blackbox verifies it)."""
    smtp_password: NotRequired[pulumi.Output[str]]
    slack_webhook_url: NotRequired[pulumi.Output[str]]
    grafana_publish: NotRequired[Publish]
    """dev: Grafana on the loopback bind address."""


GRAFANA_ADMIN = "admin"


def _yaml(document: Mapping[str, object]) -> str:
    return yaml.safe_dump(dict(document), sort_keys=False, default_flow_style=False)


class MonitoringStack(pulumi.ComponentResource):
    """Prometheus, Alertmanager, Grafana, Loki, probes and database exporters on the head."""

    grafana_url: str
    """Grafana on the head's private network."""
    grafana_admin_password: pulumi.Output[str]
    """Generated; secret."""

    def __init__(self, name: str, args: MonitoringStackArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("cluster-ai:index:MonitoringStack", name, {}, opts)
        child = child_options(self, opts)
        net, labels, protect = args["network"], args["labels"], args["protect"]
        tls_files = dict(args.get("tls_files", {}))
        observe, public = args.get("observe_network"), args.get("public_network")

        def read_by_grafana(alias: str) -> list[NetworkAttachment]:
            """The private network (Prometheus's targets, log pushes), and Grafana's, under one alias."""
            return [NetworkAttachment(n, aliases=[alias]) for n in (net, observe) if n is not None]

        prometheus = args["prometheus"]
        prometheus_data = data_volume(
            f"{name}-prometheus-data", "prometheus", protect=protect, labels=labels, opts=child
        )
        self.prometheus = hardened_container(
            f"{name}-prometheus",
            ServiceContainer(
                service="prometheus",
                image=prometheus["image"],
                networks=read_by_grafana("prometheus"),
                command=[
                    f"--config.file={CONFIG_DIR}/prometheus.yml",
                    "--storage.tsdb.path=/prometheus",
                    f"--storage.tsdb.retention.time={args['retention_days']}d",
                    f"--storage.tsdb.retention.size={args['storage_gb']}GB",
                    f"--web.listen-address=:{PROMETHEUS_PORT}",
                ],
                config_files={
                    "prometheus.yml": _yaml(args["prometheus_config"]),
                    "rules.yml": _yaml(args["alert_rules"]),
                },
                secret_files=tls_files,
                mounts=[Mount(volume=prometheus_data.name, target="/prometheus")],
                user=NOBODY,
                healthcheck=wget_health(PROMETHEUS_PORT, "/-/healthy"),
                memory_mb=prometheus["memory_mb"],
                cpus=prometheus["cpus"],
                labels=labels,
                stop_grace_s=60,  # the TSDB head is flushed on shutdown
            ),
            child,
        )

        alertmanager = args["alertmanager"]
        am_secrets: dict[str, pulumi.Output[str]] = {}
        if "smtp_password" in args:
            am_secrets["smtp_password"] = pulumi.Output.secret(args["smtp_password"])
        if "slack_webhook_url" in args:
            am_secrets["slack_webhook_url"] = pulumi.Output.secret(args["slack_webhook_url"])
        silences = data_volume(f"{name}-alertmanager-data", "alertmanager", protect=protect, labels=labels, opts=child)
        self.alertmanager = hardened_container(
            f"{name}-alertmanager",
            ServiceContainer(
                service="alertmanager",
                image=alertmanager["image"],
                networks=read_by_grafana("alertmanager"),
                command=[
                    f"--config.file={CONFIG_DIR}/alertmanager.yml",
                    "--storage.path=/alertmanager",
                    f"--web.listen-address=:{ALERTMANAGER_PORT}",
                    # One instance: no HA gossip port.
                    "--cluster.listen-address=",
                ],
                config_files={
                    "alertmanager.yml": _yaml(args["alertmanager_config"]),
                    "templates/cluster-ai.tmpl": args["alert_templates"],
                },
                secret_files=am_secrets,
                mounts=[Mount(volume=silences.name, target="/alertmanager")],
                user=NOBODY,
                healthcheck=wget_health(ALERTMANAGER_PORT, "/-/healthy"),
                memory_mb=alertmanager["memory_mb"],
                cpus=alertmanager["cpus"],
                labels=labels,
            ),
            child,
        )

        loki = args["loki"]
        loki_data = data_volume(f"{name}-loki-data", "loki", protect=protect, labels=labels, opts=child)
        self.loki = hardened_container(
            f"{name}-loki",
            ServiceContainer(
                service="loki",
                image=loki["image"],
                networks=read_by_grafana("loki"),
                command=[f"-config.file={CONFIG_DIR}/loki.yaml"],
                config_files={"loki.yaml": _yaml(args["loki_config"])},
                mounts=[Mount(volume=loki_data.name, target=LOKI_DIR)],
                tmpfs={"/tmp": _tmpfs(LOKI_UID, "64m")},
                user=LOKI_UID,
                # The image is distroless: the binary checks its own /ready.
                healthcheck=Healthcheck(["CMD", "/usr/bin/loki", "-health"], start_period_s=60),
                memory_mb=loki["memory_mb"],
                cpus=loki["cpus"],
                labels=labels,
            ),
            child,
        )

        blackbox = args["blackbox_exporter"]
        blackbox_secrets = dict(args.get("blackbox_tls_files", {}))
        if "proxy_ca" in args:
            blackbox_secrets["proxy-ca.pem"] = args["proxy_ca"]
        self.blackbox = hardened_container(
            f"{name}-blackbox",
            ServiceContainer(
                service="blackbox-exporter",
                image=blackbox["image"],
                # Probes what users reach (Open WebUI, Grafana, the proxy) where they reach it.
                networks=[NetworkAttachment(net, aliases=["blackbox-exporter"])]
                + ([NetworkAttachment(public)] if public is not None else []),
                command=[f"--config.file={CONFIG_DIR}/blackbox.yml", f"--web.listen-address=:{BLACKBOX_PORT}"],
                config_files={"blackbox.yml": _yaml(args["blackbox_config"])},
                secret_files=blackbox_secrets,
                user=NOBODY,
                healthcheck=wget_health(BLACKBOX_PORT, "/-/healthy"),
                memory_mb=blackbox["memory_mb"],
                cpus=blackbox["cpus"],
                labels=labels,
            ),
            child,
        )

        pg_uri, pg_user, pg_password = args["postgres"]
        pg = args["postgres_exporter"]
        self.postgres_exporter = hardened_container(
            f"{name}-postgres-exporter",
            ServiceContainer(
                service="postgres-exporter",
                image=pg["image"],
                networks=[
                    NetworkAttachment(net, aliases=["postgres-exporter"]),
                    NetworkAttachment(args["data_network"]),
                ],
                command=[f"--web.listen-address=:{POSTGRES_EXPORTER_PORT}"],
                env={
                    "DATA_SOURCE_URI": pg_uri,
                    "DATA_SOURCE_USER": pg_user,
                    "DATA_SOURCE_PASS_FILE": f"{SECRETS_DIR}/postgres_password",
                },
                secret_files={"postgres_password": pulumi.Output.secret(pg_password)},
                user=NOBODY,
                healthcheck=wget_health(POSTGRES_EXPORTER_PORT),
                memory_mb=pg["memory_mb"],
                cpus=pg["cpus"],
                labels=labels,
            ),
            child,
        )

        redis_url, redis_password = args["redis"]
        rd = args["redis_exporter"]
        passwords: pulumi.Output[str] = pulumi.Output.secret(
            pulumi.Output.from_input(redis_password).apply(lambda pw: json.dumps({redis_url: pw}))
        )
        self.redis_exporter = hardened_container(
            f"{name}-redis-exporter",
            ServiceContainer(
                service="redis-exporter",
                image=rd["image"],
                networks=[
                    NetworkAttachment(net, aliases=["redis-exporter"]),
                    NetworkAttachment(args["data_network"]),
                ],
                command=[
                    f"--redis.addr={redis_url}",
                    # A JSON map of address -> password.
                    f"--redis.password-file={SECRETS_DIR}/redis-passwords.json",
                    f"--web.listen-address=:{REDIS_EXPORTER_PORT}",
                ],
                secret_files={"redis-passwords.json": passwords},
                user=NOBODY,
                healthcheck=wget_health(REDIS_EXPORTER_PORT, "/health"),
                memory_mb=rd["memory_mb"],
                cpus=rd["cpus"],
                labels=labels,
            ),
            child,
        )

        grafana = args["grafana"]
        generated = random.RandomPassword(
            f"{name}-grafana-admin-password", length=24, special=False, opts=generated_options(self)
        )
        self.grafana_admin_password = pulumi.Output.secret(generated.result)
        grafana_data = data_volume(f"{name}-grafana-data", "grafana", protect=protect, labels=labels, opts=child)
        sub_path = "/grafana" if args["grafana_sub_path"] else ""
        self.grafana = hardened_container(
            f"{name}-grafana",
            ServiceContainer(
                service="grafana",
                image=grafana["image"],
                # Off the private network: the proxy reaches it on the public one, and it
                # reaches Prometheus, Loki and Alertmanager (nothing else) on its own.
                networks=(
                    [NetworkAttachment(public, aliases=["grafana"]), NetworkAttachment(observe)]
                    if public is not None and observe is not None
                    else [NetworkAttachment(net, aliases=["grafana"])]
                ),
                env={
                    **grafana_env(
                        root_url=args["grafana_root_url"],
                        sub_path=args["grafana_sub_path"],
                        secure_cookies=args["grafana_root_url"].startswith("https://"),
                        admin_user=GRAFANA_ADMIN,
                    ),
                    # Grafana would serve its own /metrics (behind the proxy: to the
                    # internet); nothing scrapes it, so it is off.
                    "GF_METRICS_ENABLED": "false",
                },
                config_files=dict(provisioning_files(args["grafana_datasources"])),
                secret_files={"grafana_admin_password": self.grafana_admin_password},
                mounts=[Mount(volume=grafana_data.name, target="/var/lib/grafana")],
                tmpfs={"/tmp": _tmpfs(GRAFANA_UID, "64m")},
                publish=[args["grafana_publish"]] if "grafana_publish" in args else [],
                user=GRAFANA_UID,
                healthcheck=wget_health(GRAFANA_PORT, f"{sub_path}/api/health", start_period_s=60),
                memory_mb=grafana["memory_mb"],
                cpus=grafana["cpus"],
                labels=labels,
            ),
            child,
        )
        self.grafana_url = f"http://grafana:{GRAFANA_PORT}{sub_path}"
        self.register_outputs({"grafanaUrl": self.grafana_url})


def textfile_volume(name: str, labels: Mapping[str, str], opts: pulumi.ResourceOptions) -> docker.Volume:
    """A small tmpfs-backed volume the backup sidecar writes (as its uid) and the node exporter reads."""
    uid, _, gid = BACKUP_UID.partition(":")
    return docker.Volume(
        name,
        driver="local",
        driver_opts={"type": "tmpfs", "device": "tmpfs", "o": f"size=1m,uid={uid},gid={gid},mode=0755,noexec,nosuid"},
        labels=[
            docker.VolumeLabelArgs(label=k, value=v)
            for k, v in sorted(
                {**labels, "cluster-ai.service": "backup-metrics", "cluster-ai.volume": "scratch"}.items()
            )
        ],
        opts=pulumi.ResourceOptions(parent=opts.parent, provider=opts.provider, depends_on=opts.depends_on),
    )


def _backup_metrics(
    name: str,
    image: str,
    network: pulumi.Input[str],
    backup_volume: pulumi.Input[str],
    textfile: docker.Volume,
    labels: Mapping[str, str],
    opts: pulumi.ResourceOptions,
) -> docker.Container:
    """The backup's last-success time as a textfile metric: the node exporter's image, the backup's uid."""
    prom = f"{TEXTFILE_DIR}/backup.prom"
    return hardened_container(
        f"{name}-backup-metrics",
        ServiceContainer(
            service="backup-metrics",
            image=image,
            networks=[NetworkAttachment(network)],
            entrypoint=["/bin/sh"],
            command=[
                f"{CONFIG_DIR}/backup-textfile.sh",
                f"{BACKUP_MOUNT}/{LAST_SUCCESS}",
                TEXTFILE_DIR,
                str(TEXTFILE_INTERVAL_S),
            ],
            config_files={"backup-textfile.sh": backup_textfile_script()},
            mounts=[
                Mount(volume=backup_volume, target=BACKUP_MOUNT, read_only=True),
                Mount(volume=textfile.name, target=TEXTFILE_DIR),
            ],
            user=BACKUP_UID,
            # Healthy once the metric is out, or while no backup has succeeded yet.
            healthcheck=Healthcheck(
                ["CMD-SHELL", f"test -s {prom} || test ! -f {BACKUP_MOUNT}/{LAST_SUCCESS}"], start_period_s=30
            ),
            memory_mb=32,
            cpus=0.1,
            labels=labels,
        ),
        opts,
    )


def dcgm_counters_csv() -> str:
    """dcgm-exporter's collectors file: field, Prometheus type, help (its CSV format)."""
    return "".join(f"{field}, {kind}, {help_text}\n" for field, kind, help_text in DCGM_COUNTERS)


def edge_route_names(workers: Sequence[str], gpu: bool) -> dict[str, str]:
    """Edge path name -> `alias:port` of what a remote host's edge exposes to Prometheus."""
    routes = {
        "node": f"node-exporter:{NODE_EXPORTER_PORT}",
        "cadvisor": f"cadvisor:{CADVISOR_PORT}",
        "alloy": f"alloy:{ALLOY_PORT}",
    }
    if gpu:
        routes["dcgm"] = f"dcgm-exporter:{DCGM_PORT}"
    for worker in workers:
        if worker in routes:
            raise ValueError(f"worker name {worker!r} collides with an exporter's edge path")
        routes[worker] = f"{worker}:{WORKER_HTTP_PORT}"
    return routes


LOKI_UPSTREAM = f"loki:{LOKI_PORT}"
