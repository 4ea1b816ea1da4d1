"""Prometheus, its alert rules, the blackbox probes and Alertmanager, as plain data.

Every file the monitoring containers read is built here by a pure function from
plain values, so the tests hand exactly what a stack declares to the real
`promtool`, `amtool`, blackbox exporter and Prometheus. The program
(infra/monitoring.py) decides *what* is scraped; these functions decide *how*.

Scrape targets carry their cluster host in a `host` label and a readable
`instance` (the host, worker or service name, never an address: every target
behind one TLS edge shares its address). A target reached through a remote
host's TLS edge is scraped over https with Prometheus's client certificate
(`tls_config`), on a path the edge maps to the exporter: `/metrics/<name>/metrics`
becomes `/metrics` at `<name>`. `__scheme__` and `__metrics_path__` are set per
target, so one job (`node`, `dask-worker`, ...) spans local and remote targets.

Valid for Prometheus 2.42 (Debian's, in the tests) and 3.x (the image): only
keys both accept are used.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# Jobs: one per kind of exporter, whatever host it runs on.
JOB_NODE = "node"
JOB_CADVISOR = "cadvisor"
JOB_DCGM = "dcgm"
JOB_ALLOY = "alloy"
JOB_SCHEDULER = "dask-scheduler"
JOB_WORKER = "dask-worker"
JOB_POSTGRES = "postgres"
JOB_REDIS = "redis"
JOB_PROMETHEUS = "prometheus"
JOB_ALERTMANAGER = "alertmanager"
JOB_LOKI = "loki"
JOB_BLACKBOX = "blackbox"
JOB_PROBE = "probe"

# Blackbox modules.
MODULE_HTTP = "http_2xx"
MODULE_MTLS = "http_2xx_mtls"
MODULE_PROXY = "https_proxy"
MODULE_TLS = "tls_connect"

# The metric the head's node exporter publishes from the backup service's
# `last-success` file (textfile collector; see `backup_textfile_script`).
BACKUP_METRIC = "cluster_ai_backup_last_success_timestamp_seconds"

# Filesystems that are not a host's disks.
PSEUDO_FS = "tmpfs|ramfs|devtmpfs|overlay|squashfs|nsfs|fuse.lxcfs|autofs|proc|sysfs|cgroup2?"

RUNBOOKS = "docs/monitoring.md"


@dataclass(frozen=True)
class TlsClient:
    """Files of a client certificate from the internal CA, as the container sees them."""

    ca_file: str
    cert_file: str
    key_file: str

    def config(self, server_name: str | None = None) -> dict[str, Any]:
        out = {"ca_file": self.ca_file, "cert_file": self.cert_file, "key_file": self.key_file}
        if server_name is not None:
            out["server_name"] = server_name
        return out


@dataclass(frozen=True)
class Target:
    """One scrape target."""

    job: str
    address: str
    """`host:port` Prometheus connects to."""
    host: str
    """The cluster host the exporter reports on."""
    instance: str
    """A readable, unique-per-job name: the host, the worker, the service."""
    path: str = "/metrics"
    tls: bool = False
    """Through a TLS edge: https, with the client certificate."""


@dataclass(frozen=True)
class Probe:
    """One blackbox probe: a URL, the module that checks it, what it is about."""

    url: str
    module: str
    host: str
    service: str


def _scrape_config(job: str, targets: Sequence[Target], tls: TlsClient | None) -> dict[str, Any]:
    config: dict[str, Any] = {"job_name": job, "honor_labels": False}
    if any(t.tls for t in targets):
        if tls is None:
            raise ValueError(f"job {job}: targets behind a TLS edge need the client certificate")
        # Applies to the https targets only; plain ones ignore it.
        config["tls_config"] = tls.config()
    static = []
    for t in targets:
        labels = {"host": t.host, "instance": t.instance}
        if t.tls:
            labels["__scheme__"] = "https"
        if t.path != "/metrics":
            labels["__metrics_path__"] = t.path
        static.append({"targets": [t.address], "labels": labels})
    config["static_configs"] = static
    return config


def _probe_config(probes: Sequence[Probe], blackbox: str) -> dict[str, Any]:
    return {
        "job_name": JOB_PROBE,
        "metrics_path": "/probe",
        "static_configs": [
            {"targets": [p.url], "labels": {"host": p.host, "service": p.service, "__param_module": p.module}}
            for p in probes
        ],
        "relabel_configs": [
            {"source_labels": ["__address__"], "target_label": "__param_target"},
            {"source_labels": ["__param_target"], "target_label": "instance"},
            {"target_label": "__address__", "replacement": blackbox},
        ],
    }


def prometheus_config(
    *,
    scrape_interval_s: int,
    targets: Sequence[Target],
    probes: Sequence[Probe],
    alertmanager: str,
    blackbox: str,
    rule_files: Sequence[str],
    tls: TlsClient | None = None,
    external_labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """prometheus.yml: every job, the probes through the blackbox exporter, the Alertmanager."""
    if scrape_interval_s < 1:
        raise ValueError("scrape_interval_s must be >= 1")
    jobs: dict[str, list[Target]] = {}
    for t in targets:
        jobs.setdefault(t.job, []).append(t)
    for job, members in jobs.items():
        seen = [t.instance for t in members]
        duplicates = sorted({i for i in seen if seen.count(i) > 1})
        if duplicates:
            raise ValueError(f"job {job}: instances {duplicates} are not unique")
    interval = f"{scrape_interval_s}s"
    config: dict[str, Any] = {
        "global": {
            "scrape_interval": interval,
            # A scrape may not outlast its interval.
            "scrape_timeout": f"{min(10, scrape_interval_s)}s",
            "evaluation_interval": interval,
            "external_labels": dict(external_labels or {}),
        },
        "rule_files": list(rule_files),
        "alerting": {
            "alertmanagers": [{"api_version": "v2", "static_configs": [{"targets": [alertmanager]}]}],
        },
        "scrape_configs": [_scrape_config(job, members, tls) for job, members in jobs.items()],
    }
    if probes:
        config["scrape_configs"].append(_probe_config(probes, blackbox))
    return config


# -- alert rules ------------------------------------------------------------------


@dataclass(frozen=True)
class RuleSettings:
    """What the alert rules are generated from (the stack's spec, flattened)."""

    declared_workers: int
    """Dask workers the stack declares: fewer connected is an alert."""
    gpu_temperature_c: int = 85
    gpu_memory_percent: int = 95
    disk_free_percent: int = 10
    cert_expiry_days: int = 14
    backup_max_age_s: int | None = None
    """None: backups are off, and so are their rules."""
    backup_host: str = "head"
    """Where the backup runs (its alerts carry this host, so a dead head silences them)."""
    for_durations: Mapping[str, str] = field(default_factory=dict)
    """Override of an alert's `for` (tests only shorten them where they must)."""


def _rule(
    settings: RuleSettings,
    alert: str,
    expr: str,
    duration: str,
    severity: str,
    summary: str,
    description: str,
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "alert": alert,
        "expr": expr,
        "for": settings.for_durations.get(alert, duration),
        "labels": {"severity": severity, **(labels or {})},
        "annotations": {
            "summary": summary,
            "description": description,
            "runbook": f"{RUNBOOKS}#{alert.lower()}",
        },
    }


def alert_rules(settings: RuleSettings) -> dict[str, Any]:
    """The alert rules file: what pages someone, each with a summary and its runbook."""
    if settings.declared_workers < 1:
        raise ValueError("declared_workers must be >= 1")
    s = settings
    disk = f'fstype!~"{PSEUDO_FS}"'
    rules = [
        _rule(s, "HostDown", f'up{{job="{JOB_NODE}"}} == 0', "2m", "critical",
              "Host {{ $labels.host }} is down or unreachable",
              "The node exporter of {{ $labels.host }} has not answered for 2 minutes: the host, its "
              "network, or (remote hosts) its TLS edge is down. Other alerts from this host are held back."),
        _rule(s, "TargetDown", f'up{{job!="{JOB_NODE}"}} == 0', "5m", "warning",
              "{{ $labels.job }} on {{ $labels.host }} ({{ $labels.instance }}) is down",
              "Prometheus could not scrape {{ $labels.instance }} ({{ $labels.job }}) for 5 minutes."),
        _rule(s, "GpuTooHot", f"DCGM_FI_DEV_GPU_TEMP > {s.gpu_temperature_c}", "5m", "critical",
              "GPU {{ $labels.gpu }} on {{ $labels.host }} is at {{ $value }} C",
              f"Above {s.gpu_temperature_c} C for 5 minutes: the GPU will throttle, then fail."),
        _rule(s, "GpuOutOfMemory",
              f"100 * DCGM_FI_DEV_FB_USED / (DCGM_FI_DEV_FB_USED + DCGM_FI_DEV_FB_FREE) > {s.gpu_memory_percent}",
              "5m", "warning",
              "GPU {{ $labels.gpu }} on {{ $labels.host }} has {{ $value | printf \"%.0f\" }}% of its memory in use",
              f"More than {s.gpu_memory_percent}% of the framebuffer for 5 minutes: new models and tasks "
              "on this GPU fail to allocate."),
        _rule(s, "DaskWorkersMissing", f"sum(dask_scheduler_workers) < {s.declared_workers}", "2m", "critical",
              "{{ $value }} of " + str(s.declared_workers) + " declared Dask workers are connected",
              "The scheduler knows fewer workers than the stack declares: a worker died, was OOM-killed, "
              "or cannot reach the scheduler."),
        _rule(s, "ProbeFailed", "probe_success == 0", "3m", "critical",
              "{{ $labels.service }} on {{ $labels.host }} fails its probe",
              "The blackbox probe of {{ $labels.instance }} has failed for 3 minutes."),
        _rule(s, "DiskFillingUp",
              f"100 * node_filesystem_avail_bytes{{{disk}}} / node_filesystem_size_bytes{{{disk}}} "
              f"< {s.disk_free_percent} and node_filesystem_readonly{{{disk}}} == 0",
              "10m", "warning",
              "{{ $labels.mountpoint }} on {{ $labels.host }} has {{ $value | printf \"%.1f\" }}% free",
              f"Less than {s.disk_free_percent}% free for 10 minutes."),
        _rule(s, "CertificateExpiresSoon",
              f"(probe_ssl_earliest_cert_expiry - time()) / 86400 < {s.cert_expiry_days}", "10m", "warning",
              "The certificate of {{ $labels.instance }} expires in {{ $value | printf \"%.0f\" }} days",
              f"Less than {s.cert_expiry_days} days left: internal certificates are renewed by "
              "`pulumi up`, the proxy's ACME certificate by Caddy."),
    ]  # fmt: skip
    if s.backup_max_age_s is not None:
        hours = s.backup_max_age_s // 3600
        rules += [
            _rule(s, "BackupTooOld", f"time() - {BACKUP_METRIC} > {s.backup_max_age_s}", "10m", "critical",
                  "The last PostgreSQL backup is {{ $value | humanizeDuration }} old",
                  f"No successful backup for more than {hours} hours."),
            _rule(s, "BackupMissing", f"absent({BACKUP_METRIC})", "30m", "critical",
                  "No PostgreSQL backup has been recorded",
                  "The backup service has not written its last-success time, or the head's node "
                  "exporter cannot read it.", labels={"host": s.backup_host}),
        ]  # fmt: skip
    return {"groups": [{"name": "cluster-ai", "rules": rules}]}


# -- blackbox ---------------------------------------------------------------------


def blackbox_config(
    *,
    tls: TlsClient | None = None,
    proxy_server_name: str | None = None,
    proxy_ca_file: str | None = None,
    timeout_s: int = 5,
) -> dict[str, Any]:
    """blackbox.yml: plain HTTP, HTTP through a TLS edge (client certificate), and the public proxy."""
    http: dict[str, Any] = {"preferred_ip_protocol": "ip4", "ip_protocol_fallback": True, "follow_redirects": False}
    modules: dict[str, Any] = {
        MODULE_HTTP: {"prober": "http", "timeout": f"{timeout_s}s", "http": dict(http)},
    }
    if tls is not None:
        modules[MODULE_MTLS] = {
            "prober": "http",
            "timeout": f"{timeout_s}s",
            "http": {**http, "fail_if_not_ssl": True, "tls_config": tls.config()},
        }
        # A TLS handshake only (an edge with no HTTP route to probe): its certificate's expiry.
        modules[MODULE_TLS] = {
            "prober": "tcp",
            "timeout": f"{timeout_s}s",
            "tcp": {"preferred_ip_protocol": "ip4", "tls": True, "tls_config": tls.config()},
        }
    if proxy_server_name is not None:
        # The proxy answers by name: the probe dials it on the private network and
        # asks for the public site (SNI and Host), so its certificate is what users see.
        tls_config: dict[str, Any] = {"server_name": proxy_server_name}
        if proxy_ca_file is not None:
            tls_config["ca_file"] = proxy_ca_file
        modules[MODULE_PROXY] = {
            "prober": "http",
            "timeout": f"{timeout_s}s",
            "http": {
                **http,
                "fail_if_not_ssl": True,
                "headers": {"Host": proxy_server_name},
                "tls_config": tls_config,
            },
        }
    return {"modules": modules}


# -- Alertmanager -----------------------------------------------------------------


@dataclass(frozen=True)
class SmtpReceiver:
    """Email through a relay; the password is a file (a secret), never in the config."""

    smarthost: str
    """`host:port`."""
    sender: str
    to: Sequence[str]
    user: str | None = None
    password_file: str | None = None
    require_tls: bool = True


@dataclass(frozen=True)
class SlackReceiver:
    """A Slack channel; the webhook URL is a file (a secret)."""

    channel: str
    api_url_file: str


RECEIVER = "oncall"
NULL_RECEIVER = "null"
GROUP_BY = ("host", "alertname")


def alertmanager_config(
    *,
    smtp: SmtpReceiver | None = None,
    slack: SlackReceiver | None = None,
    templates: Sequence[str] = (),
) -> dict[str, Any]:
    """alertmanager.yml: one receiver (email and/or Slack), grouped by host and alert, and
    inhibition so a dead host pages once: its HostDown holds back every other alert
    from that host, and the missing Dask workers it explains.

    With no receiver (dev) alerts still show in Alertmanager and Grafana, and go nowhere.
    """
    global_: dict[str, Any] = {"resolve_timeout": "5m"}
    receiver: dict[str, Any] = {"name": RECEIVER}
    if smtp is not None:
        if (smtp.user is None) != (smtp.password_file is None):
            raise ValueError("smtp: user and password_file go together")
        global_.update(
            {"smtp_smarthost": smtp.smarthost, "smtp_from": smtp.sender, "smtp_require_tls": smtp.require_tls}
        )
        if smtp.user is not None:
            global_["smtp_auth_username"] = smtp.user
            global_["smtp_auth_password_file"] = smtp.password_file
        receiver["email_configs"] = [
            {
                "to": ", ".join(smtp.to),
                "send_resolved": True,
                "headers": {"Subject": '{{ template "cluster_ai.title" . }}'},
                "text": '{{ template "cluster_ai.text" . }}',
            }
        ]
    if slack is not None:
        global_["slack_api_url_file"] = slack.api_url_file
        receiver["slack_configs"] = [
            {
                "channel": slack.channel,
                "send_resolved": True,
                "title": '{{ template "cluster_ai.title" . }}',
                "text": '{{ template "cluster_ai.text" . }}',
            }
        ]
    routed = smtp is not None or slack is not None
    return {
        "global": global_,
        "templates": list(templates),
        "route": {
            "receiver": RECEIVER if routed else NULL_RECEIVER,
            "group_by": list(GROUP_BY),
            "group_wait": "30s",
            "group_interval": "5m",
            "repeat_interval": "4h",
        },
        "inhibit_rules": [
            {
                "source_matchers": ['alertname="HostDown"'],
                "target_matchers": ['alertname!="HostDown"'],
                "equal": ["host"],
            },
            {
                # A dead worker host explains missing workers: one page, not two.
                "source_matchers": ['alertname="HostDown"'],
                "target_matchers": ['alertname="DaskWorkersMissing"'],
            },
            {
                "source_matchers": ['severity="critical"'],
                "target_matchers": ['severity="warning"'],
                "equal": ["host", "alertname"],
            },
        ],
        "receivers": [receiver] if routed else [{"name": NULL_RECEIVER}],
    }


ALERT_TEMPLATES = """{{ define "cluster_ai.title" -}}
[{{ .Status | toUpper }}{{ if eq .Status "firing" }}:{{ .Alerts.Firing | len }}{{ end }}] {{ .CommonLabels.alertname }}{{ if .CommonLabels.host }} on {{ .CommonLabels.host }}{{ end }}
{{- end }}

{{ define "cluster_ai.text" -}}
{{ range .Alerts -}}
* {{ .Annotations.summary }}
  {{ .Annotations.description }}
  runbook: {{ .Annotations.runbook }}
  labels:{{ range .Labels.SortedPairs }} {{ .Name }}={{ .Value }}{{ end }}
{{ end -}}
{{- end }}
"""


def alert_templates() -> str:
    """The notification templates both receivers use (title and text)."""
    return ALERT_TEMPLATES


# -- the backup's age, through the node exporter's textfile collector -------------

BACKUP_TEXTFILE_SCRIPT = r"""set -u
# Publish the backup service's last-success time (epoch seconds, written by
# components/backup.py) for the node exporter's textfile collector.
src="$1"; out="$2/backup.prom"; interval="$3"
while :; do
  if [ -f "$src" ]; then
    value=$(cat "$src" 2>/dev/null | tr -d ' \n')
    case "$value" in
      ''|*[!0-9]*) ;;
      *)
        {
          echo "# HELP __METRIC__ When the last PostgreSQL backup succeeded (Unix time)."
          echo "# TYPE __METRIC__ gauge"
          echo "__METRIC__ $value"
        } > "$out.tmp" && mv "$out.tmp" "$out"
        ;;
    esac
  fi
  sleep "$interval"
done
""".replace("__METRIC__", BACKUP_METRIC)


def backup_textfile_script() -> str:
    """POSIX sh, run beside the head's node exporter: `sh -c SCRIPT name SRC DIR INTERVAL`."""
    return BACKUP_TEXTFILE_SCRIPT
