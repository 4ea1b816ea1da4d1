"""A real Prometheus, with the generated scrape config and rules, scraping real targets.

The stack is the dev stack with one host declaring two Dask workers. Started
from the plan, as real processes on loopback:

- the Dask scheduler and both workers, from their declared command lines (the
  same localization tests/integration/test_dask_cli.py does, reused from there);
- the node exporter (Debian's `prometheus-node-exporter`) with its declared
  flags, and the backup-metrics sidecar's declared command (the backup-textfile
  script its file holder carries) writing the directory the exporter reads;
- Prometheus (Debian's, 2.42) with the declared `prometheus.yml` and `rules.yml`.

What the test's copy changes, and why (nothing else):
- target addresses: the containers' DNS names (`scheduler:8787`, ...) become the
  local processes' ports; targets not running here (cAdvisor, Loki, ...) point
  at a closed loopback port, and so do the Alertmanager and the blackbox exporter;
- the scrape and evaluation intervals become 1s, and the `for` of
  DaskWorkersMissing 2s, so the alert fires within seconds, not minutes;
- `--path.rootfs=/host` becomes `/` (the host's root is the container's /host),
  the textfile directory, the script and the backup file move into the test's
  directory, the image's `/bin/node_exporter` is Debian's, and the textfile
  script's 60s period becomes 1s.

Then: the scheduler's and workers' `/metrics` are scraped, the backup's time
arrives through the textfile collector, and stopping a worker fires
DaskWorkersMissing. The dashboards are checked against the same targets: every
panel's query runs on this Prometheus, and every metric it names is one these
real targets expose, or (exporters not installable here) one their
documentation lists (below, with the source of each list).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.bag as db
import httpx
import pytest
import yaml
from distributed import Client

from components.grafana_config import DASHBOARDS_DIR
from components.monitoring_config import BACKUP_METRIC
from infra.config import NAMESPACE
from stacks.mocks import Evaluation, Resource, is_file_holder, unwrap
from stacks.plan import evaluate_stack
from tests.support.dask_cluster import Local, command_of, env_of, flag, localize, localize_env
from tests.support.processes import Process, free_ports, wait_for_prometheus

pytestmark = pytest.mark.integration

PROMETHEUS = shutil.which("prometheus")
NODE_EXPORTER = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
BLACKBOX = shutil.which("prometheus-blackbox-exporter") or shutil.which("blackbox_exporter")
REDIS_EXPORTER = shutil.which("prometheus-redis-exporter") or shutil.which("redis_exporter")
REDIS_SERVER = shutil.which("redis-server")
POSTGRES_EXPORTER = shutil.which("prometheus-postgres-exporter") or shutil.which("postgres_exporter")
LOOPBACK = "127.0.0.1"
CLOSED = f"{LOOPBACK}:9"  # the discard port: nothing listens, a scrape fails at once
TIMEOUT_S = 90.0
POLL_S = 0.25
CONTAINER = "docker:index/container:Container"

HOSTS = [
    {"name": "local", "address": "127.0.0.1", "roles": ["head", "worker"], "cpus": 4, "memoryGb": 16, "workers": 2}
]

# Metric names of exporters that cannot run here, from their documentation.
# cAdvisor: docs/storage/prometheus.md (google/cadvisor), "Prometheus container metrics".
CADVISOR_DOCUMENTED = {
    "container_cpu_usage_seconds_total",
    "container_memory_working_set_bytes",
    "container_memory_usage_bytes",
    "container_network_receive_bytes_total",
    "container_network_transmit_bytes_total",
    "container_fs_usage_bytes",
    "container_last_seen",
}
# NVIDIA DCGM exporter: etc/default-counters.csv (NVIDIA/dcgm-exporter), the fields it exports by default.
DCGM_DOCUMENTED = {
    "DCGM_FI_DEV_SM_CLOCK",
    "DCGM_FI_DEV_MEM_CLOCK",
    "DCGM_FI_DEV_MEMORY_TEMP",
    "DCGM_FI_DEV_GPU_TEMP",
    "DCGM_FI_DEV_POWER_USAGE",
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
    "DCGM_FI_DEV_PCIE_REPLAY_COUNTER",
    "DCGM_FI_DEV_GPU_UTIL",
    "DCGM_FI_DEV_MEM_COPY_UTIL",
    "DCGM_FI_DEV_ENC_UTIL",
    "DCGM_FI_DEV_DEC_UTIL",
    "DCGM_FI_DEV_XID_ERRORS",
    "DCGM_FI_DEV_FB_FREE",
    "DCGM_FI_DEV_FB_USED",
}
# blackbox_exporter: prober/tls.go and prober/http.go (prometheus/blackbox_exporter) name this one
# for any TLS probe; probe_success and probe_duration_seconds are checked for real below.
BLACKBOX_DOCUMENTED = {"probe_ssl_earliest_cert_expiry"}
# Grafana Alloy: the loki.source.file reference, "Debug metrics" (grafana.com/docs/alloy).
ALLOY_DOCUMENTED = {"loki_source_file_read_lines_total", "loki_source_file_read_bytes_total"}
# Prometheus's own series for every target and alert: `up` and `ALERTS` (Prometheus docs,
# "Jobs and instances" / "Alerting rules: inspecting alerts during runtime").
PROMETHEUS_SYNTHETIC = {"up", "ALERTS", "ALERTS_FOR_STATE"}


def need(tool: str | None, package: str) -> str:
    if tool is None:
        pytest.fail(f"{package} is not installed (Debian package {package}; .ci/run installs it)")
    return tool


@dataclass
class Running:
    """The started processes and where they answer."""

    evaluation: Evaluation
    tmp: Path
    prometheus: str
    client: Client
    workers: dict[str, Process]
    processes: list[Process] = field(default_factory=list)
    backup_time: int = 0
    rules: dict[str, Any] = field(default_factory=dict)

    def query(self, expr: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.prometheus}/api/v1/query", params={"query": expr}, timeout=5)
        body = response.json()
        assert body["status"] == "success", f"{expr}: {body}"
        return list(body["data"]["result"])

    def alerts(self) -> list[dict[str, Any]]:
        return list(httpx.get(f"{self.prometheus}/api/v1/alerts", timeout=5).json()["data"]["alerts"])

    def logs(self) -> str:
        return "\n".join(p.tail() for p in self.processes)


def wait_for(condition: Callable[[], bool], running: Running, what: str, timeout: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process in running.processes:
            if process.name in running.workers and process.popen.poll() is not None:
                continue  # a worker the test stopped
            process.check_alive()
        try:
            if condition():
                return
        except (httpx.HTTPError, KeyError, IndexError):
            pass
        time.sleep(POLL_S)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n{running.logs()}")


def container(ev: Evaluation, name: str) -> Resource:
    return next(c for c in ev.by_type(CONTAINER) if c.name == name)


def uploaded(ev: Evaluation, resource: Resource, path: str) -> str:
    """The content of the file `resource` gets at `path` (carried by its file holder)."""
    for upload in unwrap(ev.uploads_of(resource)):
        if upload["file"] == path:
            return str(upload["content"])
    raise AssertionError(f"{resource.urn} gets no {path}")


def localize_prometheus(config: dict[str, Any], addresses: dict[str, str], rules: Path) -> dict[str, Any]:
    """The declared config with local addresses, 1s intervals and the test's rules file (see the docstring)."""
    config = json.loads(json.dumps(config))
    config["global"].update({"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"})
    config["rule_files"] = [str(rules)]
    config["alerting"]["alertmanagers"][0]["static_configs"] = [{"targets": [CLOSED]}]
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            if job["job_name"] == "probe":
                continue  # probe targets are URLs handed to the blackbox exporter, not addresses
            static["targets"] = [addresses.get(t, CLOSED) for t in static["targets"]]
        for relabel in job.get("relabel_configs", []):
            if relabel.get("target_label") == "__address__":
                relabel["replacement"] = addresses.get(relabel["replacement"], CLOSED)
    return config


def start(argv: list[str], name: str, tmp: Path, running_list: list[Process], **kwargs: Any) -> Process:
    log = tmp / f"{name}.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, **kwargs)
    process = Process(name, argv, popen, log)
    running_list.append(process)
    return process


@pytest.fixture(scope="module")
def running(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    prometheus_bin = need(PROMETHEUS, "prometheus")
    node_bin = need(NODE_EXPORTER, "prometheus-node-exporter")
    tmp = tmp_path_factory.mktemp("prometheus-scrape")
    ev = evaluate_stack("dev", overrides={f"{NAMESPACE}:hosts": json.dumps(HOSTS)})
    processes: list[Process] = []

    def stop_all() -> None:
        for process in reversed(processes):
            process.stop()

    request.addfinalizer(stop_all)
    scheduler = container(ev, "dask-scheduler")
    worker_containers = [
        c for c in ev.by_type(CONTAINER) if c.name.startswith("dask-workers-local-") and not is_file_holder(c)
    ]
    assert len(worker_containers) == 2, "the stack declares two workers"
    ports = free_ports(6 + len(worker_containers))
    sched_port, sched_http, node_port, prom_port, *worker_ports = ports[: 4 + len(worker_containers)]

    # Dask, from the declared command lines.
    sched_dir = tmp / "scheduler"
    sched_dir.mkdir()
    env = {**os.environ, **localize_env(env_of(scheduler), sched_dir)}
    argv = localize(command_of(scheduler), Local(sched_dir, port=sched_port, dashboard_port=sched_http))
    processes.append(start(argv, scheduler.name, tmp, [], env=env, cwd=sched_dir))
    workers: dict[str, Process] = {}
    addresses = {
        f"scheduler:{flag(command_of(scheduler), '--dashboard-address').lstrip(':')}": f"{LOOPBACK}:{sched_http}"
    }
    for c, http in zip(worker_containers, worker_ports, strict=True):
        wdir = tmp / c.name
        wdir.mkdir()
        env = {**os.environ, **localize_env(env_of(c), wdir)}
        local = Local(wdir, dashboard_port=http, scheduler_address=f"tcp://{LOOPBACK}:{sched_port}")
        process = start(localize(command_of(c), local), c.name, tmp, [], env=env, cwd=wdir)
        processes.append(process)
        workers[flag(command_of(c), "--name")] = process
        addresses[f"{c.name}:8788"] = f"{LOOPBACK}:{http}"

    # The node exporter with its declared flags, and the backup-metrics sidecar beside it: its
    # declared command (the textfile script, from its file holder) writes into the directory
    # the exporter reads (a shared tmpfs volume in the containers).
    node = container(ev, "exporters-local-node-exporter")
    textfile = tmp / "textfile"
    textfile.mkdir()
    backup_dir = tmp / "backup"
    backup_dir.mkdir()
    backup_time = int(time.time()) - 3600
    (backup_dir / "last-success").write_text(f"{backup_time}\n")
    node_flags = []
    for part in node.plain_inputs()["command"]:
        key, _, value = part.partition("=")
        value = {"--path.rootfs": "/", "--web.listen-address": f"{LOOPBACK}:{node_port}"}.get(key, value)
        value = str(textfile) if key == "--collector.textfile.directory" else value
        node_flags.append(f"{key}={value}")
    assert "entrypoints" not in node.plain_inputs(), f"{node.urn}: the image's node_exporter is its entrypoint"
    sidecar = container(ev, "exporters-local-backup-metrics")
    (tmp / "backup-textfile.sh").write_text(uploaded(ev, sidecar, "/etc/cluster-ai/backup-textfile.sh"))
    entrypoint, command = sidecar.plain_inputs()["entrypoints"], sidecar.plain_inputs()["command"]
    assert entrypoint == ["/bin/sh"], sidecar.urn
    assert command == ["/etc/cluster-ai/backup-textfile.sh", "/backup/last-success", "/textfile", "60"], sidecar.urn
    local_command = [str(tmp / "backup-textfile.sh"), str(backup_dir / "last-success"), str(textfile), "1"]
    processes.append(start(["sh", *local_command], sidecar.name, tmp, []))
    processes.append(start([node_bin, *node_flags], node.name, tmp, []))
    addresses["node-exporter:9100"] = f"{LOOPBACK}:{node_port}"

    # Prometheus with the declared config and rules.
    prometheus = container(ev, "monitoring-prometheus")
    rules = yaml.safe_load(uploaded(ev, prometheus, "/etc/cluster-ai/rules.yml"))
    for rule in rules["groups"][0]["rules"]:
        if rule["alert"] == "DaskWorkersMissing":
            rule["for"] = "2s"
    (tmp / "rules.yml").write_text(yaml.safe_dump(rules))
    declared = yaml.safe_load(uploaded(ev, prometheus, "/etc/cluster-ai/prometheus.yml"))
    addresses[f"localhost:{prom_port}"] = f"{LOOPBACK}:{prom_port}"
    addresses["localhost:9090"] = f"{LOOPBACK}:{prom_port}"
    config = localize_prometheus(declared, addresses, tmp / "rules.yml")
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    processes.append(
        start(
            [
                prometheus_bin,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address={LOOPBACK}:{prom_port}",
            ],
            prometheus.name,
            tmp,
            [],
        )
    )
    client = Client(f"tcp://{LOOPBACK}:{sched_port}", timeout=60, set_as_default=False)
    request.addfinalizer(client.close)
    wait_for_prometheus(f"http://{LOOPBACK}:{prom_port}", processes)
    result = Running(ev, tmp, f"http://{LOOPBACK}:{prom_port}", client, workers, processes, backup_time, rules)
    for process in processes:
        process.remember_children()
    yield result


def test_the_generated_config_scrapes_the_scheduler_workers_and_node_exporter(running: Running) -> None:
    def all_up() -> bool:
        up = {(r["metric"]["job"], r["metric"]["instance"]): r["value"][1] for r in running.query("up")}
        wanted = [("dask-scheduler", "scheduler"), ("node", "local")] + [("dask-worker", w) for w in running.workers]
        return all(up.get(key) == "1" for key in wanted)

    wait_for(all_up, running, "the scheduler, both workers and the node exporter to be up")
    wait_for(
        lambda: float(running.query("sum(dask_scheduler_workers)")[0]["value"][1]) == 2,
        running,
        "the scheduler's /metrics to report 2 workers",
    )
    series = running.query('dask_scheduler_workers{job="dask-scheduler"}')
    assert {s["metric"]["host"] for s in series} == {"local"}, series
    assert {s["metric"]["state"] for s in series} >= {"idle"}, series


def test_the_backup_time_arrives_through_the_textfile_collector(running: Running) -> None:
    wait_for(lambda: bool(running.query(BACKUP_METRIC)), running, f"{BACKUP_METRIC} to be scraped")
    [sample] = running.query(BACKUP_METRIC)
    assert int(float(sample["value"][1])) == running.backup_time
    assert sample["metric"]["job"] == "node" and sample["metric"]["host"] == "local"


def test_stopping_a_worker_fires_the_workers_below_declared_alert(running: Running) -> None:
    wait_for(
        lambda: float(running.query("sum(dask_scheduler_workers)")[0]["value"][1]) == 2,
        running,
        "both workers to be connected",
    )
    # While the second worker was still connecting the alert may have fired; it must clear.
    wait_for(
        lambda: not [a for a in running.alerts() if a["labels"]["alertname"] == "DaskWorkersMissing"],
        running,
        "DaskWorkersMissing to be quiet with every declared worker connected",
    )
    name, process = sorted(running.workers.items())[-1]
    process.stop()

    def firing() -> bool:
        return any(
            a["labels"]["alertname"] == "DaskWorkersMissing" and a["state"] == "firing" for a in running.alerts()
        )

    wait_for(firing, running, f"DaskWorkersMissing to fire after {name} stopped", timeout=60)
    alert = next(a for a in running.alerts() if a["labels"]["alertname"] == "DaskWorkersMissing")
    assert float(alert["value"]) == 1.0, alert
    assert alert["annotations"]["summary"] == "1 of 2 declared Dask workers are connected", alert


# -- dashboards ------------------------------------------------------------------------------

FUNCTIONS_AND_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (label matchers, groupings, ranges and functions removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\w+", " ", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group(0)
        following = text[match.end() :].lstrip()
        if following.startswith("(") or word in FUNCTIONS_AND_KEYWORDS:
            continue
        if re.fullmatch(r"\d+[smhdwy]?", word):
            continue
        names.add(word)
    return names


def dashboard_queries() -> list[tuple[str, str, str, str]]:
    """(dashboard, panel, datasource type, expr) of every panel target."""
    out = []
    for path in sorted(DASHBOARDS_DIR.glob("*.json")):
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel["targets"]:
                out.append((path.name, panel["title"], target["datasource"]["type"], target["expr"]))
    return out


def test_metric_names_are_parsed_from_promql() -> None:
    assert metric_names('100 * (1 - avg by (host) (rate(node_cpu_seconds_total{mode="idle"}[$__rate_interval])))') == {
        "node_cpu_seconds_total"
    }
    assert metric_names("count(up == 0) or vector(0)") == {"up"}
    assert metric_names(
        'node_load1{host=~"$host"} / on (host) count by (host) (node_cpu_seconds_total{mode="idle"})'
    ) == {"node_load1", "node_cpu_seconds_total"}


@pytest.fixture(scope="module")
def real_metric_names(running: Running, tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Every metric name the real targets here expose: Dask (after a computation), node, blackbox, Redis."""
    total = running.client.compute(db.from_sequence(range(100), npartitions=4).map(lambda x: x * 2).sum())
    assert total.result(60) == 9900
    names: set[str] = set()

    def scraped() -> bool:
        values = httpx.get(f"{running.prometheus}/api/v1/label/__name__/values", timeout=5).json()["data"]
        names.update(values)
        return "dask_worker_threads" in names and "node_cpu_seconds_total" in names

    wait_for(scraped, running, "the targets' metric names")
    names |= _blackbox_names(running, tmp_path_factory.mktemp("blackbox"))
    names |= _redis_names(tmp_path_factory.mktemp("redis"), running)
    names |= _postgres_names(tmp_path_factory.mktemp("postgres-exporter"), running)
    return names


def _scrape_names(url: str) -> set[str]:
    text = httpx.get(url, timeout=10).text
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def _blackbox_names(running: Running, tmp: Path) -> set[str]:
    """probe_* names from the real blackbox exporter, probing the scheduler with the declared module."""
    binary = need(BLACKBOX, "prometheus-blackbox-exporter")
    blackbox = container(running.evaluation, "monitoring-blackbox")
    (tmp / "blackbox.yml").write_text(uploaded(running.evaluation, blackbox, "/etc/cluster-ai/blackbox.yml"))
    [port] = free_ports(1)
    process = start(
        [binary, f"--config.file={tmp / 'blackbox.yml'}", f"--web.listen-address={LOOPBACK}:{port}"],
        "blackbox",
        tmp,
        [],
    )
    try:
        target = running.prometheus + "/-/healthy"
        url = f"http://{LOOPBACK}:{port}/probe?module=http_2xx&target={target}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                names = _scrape_names(url)
                if "probe_success" in names:
                    return names
            except httpx.HTTPError:
                pass
            time.sleep(POLL_S)
        pytest.fail("the blackbox exporter did not probe\n" + process.tail())
    finally:
        process.stop()


def _redis_names(tmp: Path, running: Running) -> set[str]:
    """redis_* names from the real Redis exporter, logging in with the declared password-file form."""
    server = need(REDIS_SERVER, "redis-server")
    exporter = need(REDIS_EXPORTER, "prometheus-redis-exporter")
    redis_port, exporter_port = free_ports(2)
    password = "exporter-test-password"
    (tmp / "redis.conf").write_text(f'port {redis_port}\nbind 127.0.0.1\nrequirepass {password}\nsave ""\ndir {tmp}\n')
    declared = container(running.evaluation, "monitoring-redis-exporter")
    file_form = json.loads(uploaded(running.evaluation, declared, "/run/secrets/redis-passwords.json"))
    assert list(file_form) == ["redis://redis:6379"], file_form
    address = f"redis://{LOOPBACK}:{redis_port}"
    (tmp / "passwords.json").write_text(json.dumps({address: password}))
    redis = start([server, str(tmp / "redis.conf")], "redis", tmp, [])
    argv = [part for part in declared.plain_inputs()["command"]]
    argv = [
        f"--redis.addr={address}" if a.startswith("--redis.addr=") else
        f"--redis.password-file={tmp / 'passwords.json'}" if a.startswith("--redis.password-file=") else
        f"--web.listen-address={LOOPBACK}:{exporter_port}" if a.startswith("--web.listen-address=") else a
        for a in argv
    ]  # fmt: skip
    process = start([exporter, *argv], "redis-exporter", tmp, [])
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                text = httpx.get(f"http://{LOOPBACK}:{exporter_port}/metrics", timeout=5).text
                if "redis_up 1" in text:
                    return {
                        line.split("{")[0].split(" ")[0]
                        for line in text.splitlines()
                        if line and not line.startswith("#")
                    }
            except httpx.HTTPError:
                pass
            time.sleep(POLL_S)
        pytest.fail("the Redis exporter never logged in (redis_up 1)\n" + process.tail() + redis.tail())
    finally:
        process.stop()
        redis.stop()


def _postgres_names(tmp: Path, running: Running) -> set[str]:
    """pg_* names from the real PostgreSQL exporter (Debian's) against a real PostgreSQL, with the
    declared environment: DATA_SOURCE_URI (host and port made local), DATA_SOURCE_USER, and the
    password from DATA_SOURCE_PASS_FILE."""
    from tests.support import postgres

    reason = postgres.available()
    if reason is not None:
        pytest.fail(reason)
    exporter = need(POSTGRES_EXPORTER, "prometheus-postgres-exporter")
    declared = container(running.evaluation, "monitoring-postgres-exporter")
    env = dict(e.split("=", 1) for e in declared.plain_inputs()["envs"])
    assert env["DATA_SOURCE_PASS_FILE"] == "/run/secrets/postgres_password", env
    assert "DATA_SOURCE_PASS" not in env and "DATA_SOURCE_NAME" not in env, "the password stays in a file"
    [port] = free_ports(1)
    with postgres.postgres_server(user=env["DATA_SOURCE_USER"]) as server:
        server.psql("postgres", "CREATE DATABASE openwebui")
        (tmp / "postgres_password").write_text(server.password)
        local_env = {
            **os.environ,
            "DATA_SOURCE_URI": env["DATA_SOURCE_URI"].replace("postgres:5432", f"{LOOPBACK}:{server.port}"),
            "DATA_SOURCE_USER": env["DATA_SOURCE_USER"],
            "DATA_SOURCE_PASS_FILE": str(tmp / "postgres_password"),
        }
        argv = [
            f"--web.listen-address={LOOPBACK}:{port}" if a.startswith("--web.listen-address=") else a
            for a in declared.plain_inputs()["command"]
        ]
        process = start([exporter, *argv], "postgres-exporter", tmp, [], env=local_env)
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    names = _scrape_names(f"http://{LOOPBACK}:{port}/metrics")
                    text = httpx.get(f"http://{LOOPBACK}:{port}/metrics", timeout=5).text
                    if re.search(r"^pg_up 1", text, re.MULTILINE):
                        return names
                except httpx.HTTPError:
                    pass
                time.sleep(POLL_S)
            pytest.fail("the PostgreSQL exporter never logged in (pg_up 1)\n" + process.tail())
        finally:
            process.stop()
    raise AssertionError("unreachable")


def test_every_dashboard_query_runs_and_names_metrics_the_targets_expose(
    running: Running, real_metric_names: set[str]
) -> None:
    documented = CADVISOR_DOCUMENTED | DCGM_DOCUMENTED | BLACKBOX_DOCUMENTED | ALLOY_DOCUMENTED | PROMETHEUS_SYNTHETIC
    known = real_metric_names | documented
    queries = dashboard_queries()
    assert len(queries) > 30
    problems = []
    for board, panel, kind, expr in queries:
        if kind == "loki":
            continue  # a log query: checked for shape in tests/unit/test_dashboards.py
        runnable = expr.replace("$__rate_interval", "1m").replace("$host", ".*")
        try:
            running.query(runnable)
        except AssertionError as exc:
            problems.append(f"{board} / {panel}: {expr!r} does not run: {exc}")
        unknown = sorted(metric_names(expr) - known)
        if unknown:
            problems.append(f"{board} / {panel}: {expr!r} names {unknown}, which no target exposes")
    assert not problems, "\n".join(problems)
    # The real targets, not only the documented lists, carry the Dask and host dashboards.
    for name in ("dask_scheduler_workers", "dask_scheduler_tasks", "dask_worker_memory_bytes", "node_load1"):
        assert name in real_metric_names, name
    assert "redis_memory_used_bytes" in real_metric_names and "probe_success" in real_metric_names
    assert "pg_stat_database_numbackends" in real_metric_names and "pg_database_size_bytes" in real_metric_names


def test_alert_rules_name_only_metrics_the_targets_expose(running: Running, real_metric_names: set[str]) -> None:
    known = real_metric_names | DCGM_DOCUMENTED | BLACKBOX_DOCUMENTED | PROMETHEUS_SYNTHETIC | {BACKUP_METRIC}
    for rule in running.rules["groups"][0]["rules"]:
        unknown = sorted(metric_names(rule["expr"]) - known)
        assert not unknown, f"{rule['alert']}: {rule['expr']!r} names {unknown}"
