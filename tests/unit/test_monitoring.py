"""Monitoring under the SDK's mocks: exporters per host, what is published, secrets, the generated configs."""

from __future__ import annotations

import base64
import json
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.monitoring_config import BACKUP_METRIC
from infra.config import NAMESPACE, ConfigError, load_spec
from stacks.mocks import Evaluation, Resource, Secret, evaluate_program, is_file_holder, unwrap
from stacks.plan import evaluate_stack, run_program
from stacks.stackfile import read_stack_config

CONTAINER = "docker:index/container:Container"
VOLUME = "docker:index/volume:Volume"
HOST_SERVICES = {"node-exporter", "cadvisor", "alloy"}
HEAD_SERVICES = {
    "prometheus",
    "alertmanager",
    "grafana",
    "loki",
    "blackbox-exporter",
    "postgres-exporter",
    "redis-exporter",
}
WEBHOOK = "https://hooks.slack.com/services/T000/B000/very-secret-token"
SMTP_PASSWORD = "smtp-password-that-must-stay-secret"
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOd6YHSn/3BbJbUHjczu3IyYXFOYcba26JmJKDnblpKp"


def prod_hosts(gpu_nodes: int) -> list[dict[str, Any]]:
    """A head and `gpu_nodes` nodes with 2 GPUs each, at 192.0.2.10, .11, ..."""
    ssh = {"user": "cluster-ai", "privateKeyPath": "~/.ssh/cluster-ai", "hostKey": HOST_KEY}
    hosts = [{"name": "head", "address": "192.0.2.10", "roles": ["head"], "cpus": 16, "memoryGb": 64, "ssh": ssh}]
    hosts += [
        {
            "name": f"gpu{i}",
            "address": f"192.0.2.{10 + i}",
            "roles": ["worker"],
            "cpus": 32,
            "memoryGb": 128,
            "gpus": 2,
            "ssh": ssh,
        }
        for i in range(1, gpu_nodes + 1)
    ]
    return hosts


def labels_of(r: Resource) -> dict[str, str]:
    return {label["label"]: label["value"] for label in r.plain_inputs().get("labels", [])}


def services(ev: Evaluation) -> list[Resource]:
    """The containers that run something; a service's file holder (`<name>-files`) is not one."""
    return [c for c in ev.by_type(CONTAINER) if not is_file_holder(c)]


def by_service(ev: Evaluation) -> dict[str, list[Resource]]:
    out: dict[str, list[Resource]] = {}
    for c in services(ev):
        out.setdefault(labels_of(c)["cluster-ai.service"], []).append(c)
    return out


DASHBOARDS = Path(__file__).resolve().parents[2] / "monitoring" / "dashboards"


def alert_rules_of(ev: Evaluation) -> Any:
    """The alert rules the plan's Prometheus loads."""
    [prometheus] = by_service(ev)["prometheus"]
    return yaml.safe_load(config_file(ev, prometheus, "rules.yml"))


def config_file(ev: Evaluation, container: Resource, name: str) -> str:
    """The config file `container` reads at /etc/cluster-ai/`name` (carried by its file holder)."""
    for upload in unwrap(ev.uploads_of(container)):
        if upload["file"] == f"/etc/cluster-ai/{name}":
            return str(upload["content"])
    raise AssertionError(f"{container.urn} gets no /etc/cluster-ai/{name}")


def named(ev: Evaluation, name: str) -> Resource:
    return next(c for c in ev.by_type(CONTAINER) if c.name == name)


def prometheus_yml(ev: Evaluation) -> dict[str, Any]:
    return yaml.safe_load(config_file(ev, named(ev, "monitoring-prometheus"), "prometheus.yml"))


def rules_yml(ev: Evaluation) -> dict[str, Any]:
    return yaml.safe_load(config_file(ev, named(ev, "monitoring-prometheus"), "rules.yml"))


def prod(gpu_nodes: int = 2, **overrides: Any) -> Evaluation:
    encoded = {f"{NAMESPACE}:hosts": json.dumps(prod_hosts(gpu_nodes))}
    encoded.update({f"{NAMESPACE}:{k}": json.dumps(v) if not isinstance(v, str) else v for k, v in overrides.items()})
    return evaluate_stack("prod", overrides=encoded)


def with_secrets(stack: str, secrets: dict[str, str], **overrides: Any) -> Evaluation:
    """Evaluate a stack with secret config keys, marked secret as `pulumi config set --secret` would."""
    stack_config = read_stack_config(stack)
    config = dict(stack_config.config)
    config.update({f"{NAMESPACE}:{k}": json.dumps(v) if not isinstance(v, str) else v for k, v in overrides.items()})
    config.update({f"{NAMESPACE}:{k}": v for k, v in secrets.items()})
    keys = sorted(stack_config.secret_keys | {f"{NAMESPACE}:{k}" for k in secrets})
    return evaluate_program(run_program, project=stack_config.project, stack=stack, config=config, secret_keys=keys)


# -- placement ------------------------------------------------------------------------


def test_dev_runs_one_exporter_set_and_the_monitoring_stack_on_its_one_host(dev: Evaluation) -> None:
    services_ = Counter(labels_of(c)["cluster-ai.service"] for c in services(dev))
    for service in HOST_SERVICES | HEAD_SERVICES:
        assert services_[service] == 1, f"dev must run exactly one {service}, runs {services_[service]}"
    assert services_["dcgm-exporter"] == 0, "dev has no GPU: no DCGM exporter"


@pytest.mark.parametrize("gpu_nodes", [1, 3])
def test_prod_runs_one_exporter_set_per_host_and_dcgm_only_on_gpu_hosts(gpu_nodes: int) -> None:
    ev = prod(gpu_nodes)
    hosts = ["head", *(f"gpu{i}" for i in range(1, gpu_nodes + 1))]
    placed: dict[str, Counter[str]] = {h: Counter() for h in hosts}
    for c in services(ev):
        labels = labels_of(c)
        placed[labels["cluster-ai.host"]][labels["cluster-ai.service"]] += 1
    for host in hosts:
        for service in HOST_SERVICES:
            assert placed[host][service] == 1, f"host {host} runs {placed[host][service]} {service}"
        gpu = host != "head"
        assert placed[host]["dcgm-exporter"] == (1 if gpu else 0), f"host {host}: DCGM only where there are GPUs"
        for service in HEAD_SERVICES:
            assert placed[host][service] == (0 if gpu else 1), f"{service} runs on the head only, not on {host}"


def test_exporters_use_their_hosts_provider() -> None:
    ev = prod(2)
    providers = {p.name.removesuffix("-docker"): p.urn for p in ev.by_type("pulumi:providers:docker")}
    for c in ev.by_type(CONTAINER):
        labels = labels_of(c)
        if labels["cluster-ai.service"] in HOST_SERVICES | HEAD_SERVICES | {"dcgm-exporter"}:
            assert c.provider_urn == providers[labels["cluster-ai.host"]], f"{c.urn} is on the wrong host"


def test_a_gpu_dev_host_gets_a_dcgm_exporter_without_sys_admin_collecting_what_is_used(
    stack_with: Callable[..., Evaluation],
) -> None:
    hosts = [
        {"name": "gpu1", "address": "127.0.0.1", "roles": ["head", "worker"], "cpus": 8, "memoryGb": 32, "gpus": 2}
    ]
    ev = stack_with("dev", hosts=hosts)
    [dcgm] = by_service(ev)["dcgm-exporter"]
    inputs = dcgm.plain_inputs()
    assert inputs["capabilities"] == {"drops": ["ALL"]}, f"{dcgm.urn}: no capability is added back"
    env = dict(str(e).split("=", 1) for e in inputs["envs"])
    counters = config_file(ev, dcgm, "dcgm-counters.csv")
    assert env["DCGM_EXPORTER_COLLECTORS"] == "/etc/cluster-ai/dcgm-counters.csv", dcgm.urn
    fields = {line.split(",")[0] for line in counters.splitlines()}
    assert not any(f.startswith("DCGM_FI_PROF_") for f in fields), f"{dcgm.urn}: a profiling field needs SYS_ADMIN"
    # Every DCGM series a rule or a dashboard reads is collected.
    used = set(re.findall(r"DCGM_FI_[A-Z_]+", yaml.safe_dump(alert_rules_of(ev))))
    for dashboard in DASHBOARDS.glob("*.json"):
        used |= set(re.findall(r"DCGM_FI_[A-Z_]+", dashboard.read_text()))
    assert used and used <= fields, f"{dcgm.urn}: {sorted(used - fields)} are used but not collected"
    assert inputs["gpus"] == "all" and inputs["privileged"] is False, dcgm.urn
    assert not inputs.get("ports"), f"{dcgm.urn} publishes a port"


# -- nothing published outside the cluster network -------------------------------------


def test_dev_publishes_grafana_on_loopback_and_no_other_monitoring_port(dev: Evaluation) -> None:
    for c in services(dev):
        service = labels_of(c)["cluster-ai.service"]
        ports = c.plain_inputs().get("ports", [])
        if service == "grafana":
            assert [(p["ip"], int(p["external"]), int(p["internal"])) for p in ports] == [("127.0.0.1", 3001, 3000)]
        elif service in HOST_SERVICES | HEAD_SERVICES:
            assert not ports, f"{c.urn} publishes {ports}"
    assert dev.exports["grafanaUrl"] == "http://127.0.0.1:3001/"


def test_prod_publishes_no_monitoring_port_and_routes_grafana_through_the_proxy() -> None:
    ev = prod(2)
    for c in ev.by_type(CONTAINER):
        service = labels_of(c)["cluster-ai.service"]
        if service in HOST_SERVICES | HEAD_SERVICES | {"dcgm-exporter"}:
            assert not c.plain_inputs().get("ports"), f"{c.urn} publishes a port: exporters are reached via the edge"
    proxy = named(ev, "proxy")
    caddyfile = next(u["content"] for u in unwrap(ev.uploads_of(proxy)) if u["file"].endswith("Caddyfile"))
    assert "handle /grafana* {" in caddyfile and "reverse_proxy grafana:3000" in caddyfile, proxy.urn
    assert ev.exports["grafanaUrl"] == "https://ai.example.com/grafana/"
    env = dict(e.split("=", 1) for e in named(ev, "monitoring-grafana").plain_inputs()["envs"])
    assert env["GF_SERVER_ROOT_URL"] == "https://ai.example.com/grafana/"
    assert env["GF_SERVER_SERVE_FROM_SUB_PATH"] == "true"
    assert env["GF_SECURITY_COOKIE_SECURE"] == "true"


def test_every_remote_edge_routes_the_hosts_exporters_and_workers() -> None:
    ev = prod(2)
    for i in (1, 2):
        edge = named(ev, f"edge-gpu{i}")
        caddyfile = next(u["content"] for u in unwrap(ev.uploads_of(edge)) if u["file"].endswith("Caddyfile"))
        for path, upstream in [
            ("/metrics/node", "node-exporter:9100"),
            ("/metrics/cadvisor", "cadvisor:8080"),
            ("/metrics/dcgm", "dcgm-exporter:9400"),
            ("/metrics/alloy", "alloy:12345"),
            (f"/metrics/dask-workers-gpu{i}-0", f"dask-workers-gpu{i}-0:8788"),
            (f"/metrics/dask-workers-gpu{i}-1", f"dask-workers-gpu{i}-1:8788"),
        ]:
            assert f"handle_path {path}* {{" in caddyfile and f"reverse_proxy {upstream} {{" in caddyfile, (
                f"{edge.urn} does not route {path} to {upstream}"
            )
        assert "mode require_and_verify" in caddyfile, edge.urn


def test_the_head_takes_log_pushes_through_its_own_edge_and_firewall() -> None:
    ev = prod(2)
    edge = named(ev, "edge-head")
    caddyfile = next(u["content"] for u in unwrap(ev.uploads_of(edge)) if u["file"].endswith("Caddyfile"))
    assert "handle /loki/api/v1/push* {" in caddyfile and "reverse_proxy loki:3100" in caddyfile, edge.urn
    assert "/metrics" not in caddyfile, f"{edge.urn}: the head's exporters are scraped on its private network"
    assert [(p["ip"], int(p["external"])) for p in edge.plain_inputs()["ports"]] == [("192.0.2.10", 8443)]
    bootstrap = next(c for c in ev.by_type("command:remote:Command") if c.name == "head-bootstrap-run")
    # The ruleset travels base64-encoded in the script (components/bootstrap.py `payload`).
    encoded = re.search(r"^FIREWALL_B64='([^']*)'$", bootstrap.plain_inputs()["stdin"], re.M)
    assert encoded is not None, bootstrap.urn
    assert "8443" in base64.b64decode(encoded[1]).decode(), "the head's firewall must admit the cluster to its edge"
    for i in (1, 2):
        alloy = config_file(ev, named(ev, f"exporters-gpu{i}-alloy"), "config.alloy")
        assert 'url = "https://192.0.2.10:8443/loki/api/v1/push"' in alloy
        assert 'cert_file = "/run/secrets/tls.crt"' in alloy
    head_alloy = config_file(ev, named(ev, "exporters-head-alloy"), "config.alloy")
    assert 'url = "http://loki:3100/loki/api/v1/push"' in head_alloy and "tls_config" not in head_alloy


# -- the narrow exceptions ---------------------------------------------------------------


def _binds(c: Resource) -> list[dict[str, Any]]:
    return [m for m in c.plain_inputs().get("mounts", []) if m.get("type") == "bind"]


def test_host_level_exporters_get_only_their_named_exceptions(dev: Evaluation) -> None:
    allowed_binds = {
        "node-exporter": {("/", "/host")},
        "backup-metrics": set(),
        "cadvisor": {("/sys", "/sys")},
        "alloy": {("/var/lib/docker/containers", "/var/lib/docker/containers")},
    }
    for c in services(dev):
        service = labels_of(c)["cluster-ai.service"]
        inputs = c.plain_inputs()
        binds = _binds(c)
        assert {(m["source"], m["target"]) for m in binds} == allowed_binds.get(service, set()), c.urn
        for m in binds:
            assert m["readOnly"] is True, f"{c.urn} mounts host {m['source']} writable"
            assert "docker.sock" not in m["source"] and not m["source"].startswith(("/var/run", "/run")), c.urn
        assert inputs.get("pidMode") == ("host" if service == "node-exporter" else None), c.urn
        assert inputs["readOnly"] is True or service == "webui", f"{c.urn} has a writable root"
        # Docker adds label=disable to a container in the host's PID namespace: declared as such.
        expected_opts = ["no-new-privileges:true", *(["label=disable"] if service == "node-exporter" else [])]
        assert inputs["securityOpts"] == expected_opts and inputs["privileged"] is False, c.urn
        if service in HOST_SERVICES | HEAD_SERVICES:
            assert inputs["capabilities"] == {"drops": ["ALL"]}, c.urn


def test_node_exporter_runs_as_nobody_with_the_hosts_sockets_masked(dev: Evaluation) -> None:
    node = named(dev, "exporters-local-node-exporter")
    inputs = node.plain_inputs()
    assert inputs["user"] == "65534:65534", f"{node.urn}: nobody, not {inputs['user']}"
    assert not inputs.get("groupAdds"), f"{node.urn}: no supplementary group"
    tmpfs = inputs["tmpfs"]
    for masked in ("/host/run", "/host/var/run"):
        assert tmpfs.get(masked, "").startswith("ro,"), f"{node.urn}: {masked} is not masked by a read-only tmpfs"
    command = inputs["command"]
    assert any(c.startswith("--collector.filesystem.mount-points-exclude=^/(dev|proc|run|") for c in command), node.urn


# -- data and secrets ------------------------------------------------------------------------


def test_prometheus_keeps_its_data_on_a_protected_volume_in_prod() -> None:
    ev = prod(1)
    prometheus = named(ev, "monitoring-prometheus")
    mounts = {m["target"]: m["source"] for m in prometheus.plain_inputs()["mounts"] if m["type"] == "volume"}
    volume = next(v for v in ev.by_type(VOLUME) if v.outputs.get("name") == mounts["/prometheus"])
    assert {"label": "cluster-ai.volume", "value": "data"} in volume.plain_inputs()["labels"], volume.urn
    assert volume.protect and volume.retain_on_delete, f"{volume.urn} must be protected in prod"
    command = prometheus.plain_inputs()["command"]
    assert "--storage.tsdb.retention.time=30d" in command and "--storage.tsdb.retention.size=100GB" in command


def test_grafana_admin_password_is_generated_secret_and_read_from_a_file(dev: Evaluation) -> None:
    grafana = named(dev, "monitoring-grafana")
    env = dict(e.split("=", 1) for e in grafana.plain_inputs()["envs"])
    assert env["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana_admin_password", grafana.urn
    assert "GF_SECURITY_ADMIN_PASSWORD" not in env, grafana.urn
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false" and env["GF_USERS_ALLOW_SIGN_UP"] == "false", grafana.urn
    password_file = next(u for u in dev.uploads_of(grafana) if u["file"] == "/run/secrets/grafana_admin_password")
    assert isinstance(password_file["content"], Secret), f"{grafana.urn}: the admin password upload must be secret"
    assert isinstance(dev.exports["grafanaPassword"], Secret)
    password = dev.named("monitoring-grafana-admin-password").outputs["result"]
    assert dev.exports["grafanaPassword"].value == password


def test_grafana_is_provisioned_with_every_dashboard_and_datasource(dev: Evaluation) -> None:
    grafana = named(dev, "monitoring-grafana")
    files = {u["file"] for u in dev.uploads_of(grafana)}
    for name in ("cluster-overview", "gpus", "dask", "services"):
        assert f"/etc/cluster-ai/dashboards/{name}.json" in files, f"{grafana.urn} lacks the {name} dashboard"
    sources = yaml.safe_load(config_file(dev, grafana, "provisioning/datasources/cluster-ai.yaml"))
    assert {(d["uid"], d["url"]) for d in sources["datasources"]} == {
        ("prometheus", "http://prometheus:9090"),
        ("loki", "http://loki:3100"),
        ("alertmanager", "http://alertmanager:9093"),
    }


def test_alert_receivers_get_their_credentials_as_secret_files_only() -> None:
    ev = with_secrets(
        "dev",
        {"smtpPassword": SMTP_PASSWORD, "slackWebhookUrl": WEBHOOK},
        monitoring={
            "smtp": {"host": "smtp.example.com", "from": "am@example.com", "to": ["ops@example.com"], "user": "am"},
            "slack": {"channel": "#alerts"},
        },
    )
    am = named(ev, "monitoring-alertmanager")
    secret_files = [u for u in ev.uploads_of(am) if u["file"].startswith("/run/secrets/")]
    assert secret_files and all(isinstance(u["content"], Secret) for u in secret_files), am.urn
    uploads = {u["file"]: u["content"] for u in unwrap(ev.uploads_of(am))}
    assert uploads["/run/secrets/smtp_password"] == SMTP_PASSWORD
    assert uploads["/run/secrets/slack_webhook_url"] == WEBHOOK
    config = yaml.safe_load(uploads["/etc/cluster-ai/alertmanager.yml"])
    assert config["global"]["smtp_auth_password_file"] == "/run/secrets/smtp_password"
    assert config["global"]["slack_api_url_file"] == "/run/secrets/slack_webhook_url"
    assert config["route"]["receiver"] == "oncall"
    for r in ev:
        for key, value in r.plain_inputs().items():
            if key in ("uploads",):
                continue
            text = json.dumps(value, default=str)
            assert SMTP_PASSWORD not in text and WEBHOOK not in text, f"{r.urn}.{key} carries a receiver secret"


def test_dev_without_receivers_routes_alerts_to_a_null_receiver(dev: Evaluation) -> None:
    config = yaml.safe_load(config_file(dev, named(dev, "monitoring-alertmanager"), "alertmanager.yml"))
    assert config["route"]["receiver"] == "null" and config["receivers"] == [{"name": "null"}]


@pytest.mark.parametrize(
    ("monitoring", "secrets", "expected"),
    [
        (
            {"smtp": {"host": "smtp.example.com", "from": "a@example.com", "to": ["b@example.com"], "user": "a"}},
            {},
            "cluster-ai:smtpPassword: is required because cluster-ai:monitoring.smtp.user is set; "
            "set it with `pulumi config set --secret smtpPassword <password>`",
        ),
        (
            {"slack": {"channel": "#alerts"}},
            {},
            "cluster-ai:slackWebhookUrl: is required because cluster-ai:monitoring.slack is set; "
            "set it with `pulumi config set --secret slackWebhookUrl https://hooks.slack.com/services/...`",
        ),
        ({}, {"slackWebhookUrl": WEBHOOK}, "cluster-ai:slackWebhookUrl: is set but cluster-ai:monitoring.slack is not"),
        (
            {"smtp": {"host": "smtp.example.com", "from": "a@example.com", "to": ["b@example.com"]}},
            {"smtpPassword": SMTP_PASSWORD},
            "cluster-ai:smtpPassword: is set but cluster-ai:monitoring.smtp.user is not",
        ),
        (
            {"smtp": {"host": "smtp.example.com", "from": "a@example.com", "to": []}},
            {},
            "cluster-ai:monitoring.smtp.to",
        ),
        ({"slack": {"channel": "alerts"}}, {"slackWebhookUrl": WEBHOOK}, "cluster-ai:monitoring.slack.channel"),
    ],
)
def test_a_receiver_without_its_secret_names_the_command(
    dev_config: dict[str, Any], monitoring: dict[str, Any], secrets: dict[str, str], expected: str
) -> None:
    config = {k: json.dumps(v) if isinstance(v, dict | list) else v for k, v in dev_config.items()}
    config[f"{NAMESPACE}:monitoring"] = json.dumps(monitoring)
    config.update({f"{NAMESPACE}:{k}": v for k, v in secrets.items()})
    with pytest.raises(ConfigError) as caught:
        load_spec(config, [f"{NAMESPACE}:{k}" for k in secrets])
    assert any(p.startswith(expected) for p in caught.value.problems), caught.value.problems
    for problem in caught.value.problems:
        assert SMTP_PASSWORD not in problem and WEBHOOK not in problem


def test_a_receiver_secret_in_plain_text_is_refused(dev_config: dict[str, Any]) -> None:
    config = {k: json.dumps(v) if isinstance(v, dict | list) else v for k, v in dev_config.items()}
    config[f"{NAMESPACE}:monitoring"] = json.dumps({"slack": {"channel": "#alerts"}})
    config[f"{NAMESPACE}:slackWebhookUrl"] = WEBHOOK
    with pytest.raises(ConfigError) as caught:
        load_spec(config)
    assert (
        "cluster-ai:slackWebhookUrl: is stored in plain text; set it with "
        "`pulumi config set --secret slackWebhookUrl <value>`" in caught.value.problems
    )


def test_prod_without_any_receiver_is_refused(stack_with: Callable[..., Evaluation]) -> None:
    from infra.program import StackConfigError

    with pytest.raises(StackConfigError, match=r"cluster-ai:monitoring: prod must route alerts somewhere"):
        stack_with("prod", monitoring={})


def test_monitoring_memory_counts_against_the_host(dev_config: dict[str, Any]) -> None:
    config = {k: json.dumps(v) if isinstance(v, dict | list) else v for k, v in dev_config.items()}
    hosts = dev_config[f"{NAMESPACE}:hosts"]
    # 9 GB holds the services, the backup and the model sync (counted since issue 12), not monitoring too.
    config[f"{NAMESPACE}:hosts"] = json.dumps([{**hosts[0], "memoryGb": 9}])
    with pytest.raises(ConfigError, match=r"hosts\[0\]\.memoryGb: 9 GB cannot hold"):
        load_spec(config)
    config[f"{NAMESPACE}:monitoring"] = json.dumps({"enabled": False})
    assert load_spec(config).monitoring.enabled is False


def test_monitoring_can_be_turned_off(stack_with: Callable[..., Evaluation]) -> None:
    ev = stack_with("dev", monitoring={"enabled": False})
    running = {labels_of(c)["cluster-ai.service"] for c in ev.by_type(CONTAINER)}
    assert not running & (HOST_SERVICES | HEAD_SERVICES)
    assert "grafanaUrl" not in ev.exports


# -- the generated configs ---------------------------------------------------------------------


def test_prometheus_scrapes_remote_hosts_through_their_edges_with_a_client_certificate() -> None:
    ev = prod(2)
    config = prometheus_yml(ev)
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert set(jobs) >= {"node", "cadvisor", "dcgm", "alloy", "dask-scheduler", "dask-worker", "postgres", "redis"}
    for name in ("node", "cadvisor", "alloy", "dask-worker", "dcgm"):
        job = jobs[name]
        assert job["tls_config"] == {
            "ca_file": "/run/secrets/ca.pem",
            "cert_file": "/run/secrets/tls.crt",
            "key_file": "/run/secrets/tls.key",
        }, name
        for static in job["static_configs"]:
            labels = static["labels"]
            if labels["host"] == "head":
                assert "__scheme__" not in labels, f"{name}: the head's own exporters are scraped in the clear"
            else:
                address = f"192.0.2.{10 + int(labels['host'].removeprefix('gpu'))}:8443"
                assert static["targets"] == [address], f"{name}: {labels['host']} is not scraped through its edge"
                assert labels["__scheme__"] == "https"
                path = labels["__metrics_path__"]
                assert path.startswith("/metrics/") and path.endswith("/metrics"), f"{name}: {path}"
    workers = {s["labels"]["instance"]: s for s in jobs["dask-worker"]["static_configs"]}
    assert sorted(workers) == [
        "dask-workers-gpu1-0",
        "dask-workers-gpu1-1",
        "dask-workers-gpu2-0",
        "dask-workers-gpu2-1",
    ]
    assert workers["dask-workers-gpu2-1"]["labels"]["__metrics_path__"] == "/metrics/dask-workers-gpu2-1/metrics"
    [scheduler] = jobs["dask-scheduler"]["static_configs"]
    assert scheduler["targets"] == ["scheduler:8787"] and scheduler["labels"]["__metrics_path__"] == "/dask/metrics"
    prometheus = named(ev, "monitoring-prometheus")
    files = {u["file"] for u in ev.uploads_of(prometheus)}
    assert {"/run/secrets/tls.crt", "/run/secrets/tls.key", "/run/secrets/ca.pem"} <= files, prometheus.urn
    cert = ev.named("cluster-ca-prometheus-cert").plain_inputs()
    assert "client_auth" in cert["allowedUses"] and "server_auth" not in cert["allowedUses"]


def test_dev_scrapes_everything_on_the_private_network(dev: Evaluation) -> None:
    config = prometheus_yml(dev)
    for job in config["scrape_configs"]:
        assert "tls_config" not in job, job["job_name"]
        for static in job.get("static_configs", []):
            assert "__scheme__" not in static["labels"], job["job_name"]
    targets = {j["job_name"]: [t for s in j["static_configs"] for t in s["targets"]] for j in config["scrape_configs"]}
    assert targets["dask-worker"] == ["dask-workers-local-0:8788"]
    assert targets["dask-scheduler"] == ["scheduler:8787"]
    assert targets["node"] == ["node-exporter:9100"]


@pytest.mark.parametrize("gpu_nodes", [1, 3])
def test_the_workers_alert_threshold_is_the_declared_worker_count(gpu_nodes: int) -> None:
    rules = {r["alert"]: r for r in rules_yml(prod(gpu_nodes))["groups"][0]["rules"]}
    assert rules["DaskWorkersMissing"]["expr"] == f"sum(dask_scheduler_workers) < {2 * gpu_nodes}"


def test_every_rule_has_a_summary_a_runbook_and_a_severity(dev: Evaluation) -> None:
    rules = rules_yml(dev)["groups"][0]["rules"]
    assert {r["alert"] for r in rules} == {
        "HostDown",
        "TargetDown",
        "GpuTooHot",
        "GpuOutOfMemory",
        "DaskWorkersMissing",
        "ProbeFailed",
        "DiskFillingUp",
        "CertificateExpiresSoon",
        "BackupTooOld",
        "BackupMissing",
    }
    for rule in rules:
        assert rule["annotations"]["summary"] and rule["annotations"]["runbook"].startswith("docs/monitoring.md#")
        assert rule["labels"]["severity"] in ("critical", "warning")


def test_backup_rules_follow_the_backup_interval(stack_with: Callable[..., Evaluation]) -> None:
    ev = stack_with("dev", backups={"intervalHours": 6})
    rules = {r["alert"]: r for r in rules_yml(ev)["groups"][0]["rules"]}
    assert rules["BackupTooOld"]["expr"] == f"time() - {BACKUP_METRIC} > {12 * 3600}"
    ev = stack_with("dev", backups={"enabled": False})
    rules = {r["alert"]: r for r in rules_yml(ev)["groups"][0]["rules"]}
    assert "BackupTooOld" not in rules and "BackupMissing" not in rules
    node = named(ev, "exporters-local-node-exporter")
    assert not node.plain_inputs().get("entrypoints"), "no backup: no textfile writer"


def test_the_backups_age_reaches_the_node_exporter_through_a_sidecar_of_the_backups_uid(dev: Evaluation) -> None:
    node = named(dev, "exporters-local-node-exporter")
    sidecar = named(dev, "exporters-local-backup-metrics")
    backup = named(dev, "postgres-backup")
    backup_volume = next(
        m["source"] for m in backup.plain_inputs()["mounts"] if m["target"] == "/var/lib/postgresql/data"
    )
    side = {m["target"]: m for m in sidecar.plain_inputs()["mounts"] if m["type"] == "volume"}
    assert side["/backup"]["source"] == backup_volume and side["/backup"]["readOnly"] is True, sidecar.urn
    # The dump's last-success file is 0600, the backup service's own: the sidecar reads it as that uid.
    assert sidecar.plain_inputs()["user"] == backup.plain_inputs()["user"], sidecar.urn
    mounts = {m["target"]: m for m in node.plain_inputs()["mounts"] if m["type"] == "volume"}
    assert "/backup" not in mounts, f"{node.urn} must not see the dumps"
    assert mounts["/textfile"]["source"] == side["/textfile"]["source"], "the two share the textfile volume"
    assert mounts["/textfile"]["readOnly"] is True and not side["/textfile"].get("readOnly"), node.urn
    volume = next(v for v in dev.by_type("docker:index/volume:Volume") if v.name == "exporters-local-textfile")
    assert volume.plain_inputs()["driverOpts"]["type"] == "tmpfs", volume.urn


def test_probes_cover_webui_ollama_the_dashboard_grafana_the_edges_and_the_proxy() -> None:
    ev = prod(2)
    [probe_job] = [j for j in prometheus_yml(ev)["scrape_configs"] if j["job_name"] == "probe"]
    probes = {(s["labels"]["service"], s["labels"]["host"]): s for s in probe_job["static_configs"]}
    assert set(probes) == {
        ("webui", "head"),
        ("dask-dashboard", "head"),
        ("grafana", "head"),
        ("ollama", "gpu1"),
        ("ollama", "gpu2"),
        ("edge", "head"),
        ("proxy", "head"),
    }
    assert probes[("ollama", "gpu1")]["targets"] == ["https://192.0.2.11:8443/ollama/api/version"]
    assert probes[("ollama", "gpu1")]["labels"]["__param_module"] == "http_2xx_mtls"
    assert probes[("proxy", "head")]["labels"]["__param_module"] == "https_proxy"
    blackbox = yaml.safe_load(config_file(ev, named(ev, "monitoring-blackbox"), "blackbox.yml"))
    assert blackbox["modules"]["https_proxy"]["http"]["headers"] == {"Host": "ai.example.com"}
    assert blackbox["modules"]["https_proxy"]["http"]["tls_config"]["server_name"] == "ai.example.com"


def test_config_files_go_read_only_into_a_config_volume_of_their_own(dev: Evaluation) -> None:
    prometheus = named(dev, "monitoring-prometheus")
    inputs = prometheus.plain_inputs()
    mounts = {m["target"]: m for m in inputs["mounts"] if m["type"] == "volume" and "source" in m}
    assert mounts["/etc/cluster-ai"].get("readOnly") is True, f"{prometheus.urn} can write its own config"
    volume = next(v for v in dev.by_type(VOLUME) if v.outputs.get("name") == mounts["/etc/cluster-ai"]["source"])
    assert {"label": "cluster-ai.volume", "value": "config"} in volume.plain_inputs()["labels"], volume.urn
    assert not volume.protect, f"{volume.urn}: config is rewritten on every up, not kept"
    configs = [u for u in unwrap(dev.uploads_of(prometheus)) if u["file"].startswith("/etc/cluster-ai/")]
    assert {u["file"] for u in configs} == {"/etc/cluster-ai/prometheus.yml", "/etc/cluster-ai/rules.yml"}
    for upload in configs:
        # Root-owned (no owner given), readable, never writable: the service mounts the volume read-only.
        assert (upload["permissions"], upload.get("owner"), upload.get("group")) == ("0444", None, None), prometheus.urn
