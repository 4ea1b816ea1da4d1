"""Prometheus scrapes a remote host's exporters through its TLS edge, with its client certificate.

The prod plan's pieces, run for real on loopback: the `edge-gpu1` Caddyfile
(real Caddy), the node exporter behind it (Debian's), and Prometheus (Debian's)
with the declared `node` and `dask-worker` jobs. Certificates are the plan's,
issued for real by tests/support/pki.py (`PlanPki`).

What the test's copy changes, and why (nothing else):
- the edge listens on free loopback ports instead of 8443/8081, and its
  upstreams `node-exporter:9100` / `dask-workers-gpu1-1:8788` (container DNS
  names) become the local node exporter and a recording stand-in for the worker;
- Prometheus dials 127.0.0.1 instead of gpu1's address, so its `tls_config`
  names the server `gpu1` (a name the edge's certificate carries, as it carries
  the address the declared config dials); secrets' paths are the test's files;
- every other target points at a closed port, and the interval is 1s.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml

from stacks.mocks import Evaluation, Resource, unwrap
from stacks.plan import evaluate_stack
from tests.support.fake_http import FakeUpstream
from tests.support.pki import PlanPki
from tests.support.processes import Process, free_ports, start_process, wait_for_prometheus, wait_until

pytestmark = pytest.mark.integration

CADDY = shutil.which("caddy")
PROMETHEUS = shutil.which("prometheus")
NODE_EXPORTER = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
LOOPBACK = "127.0.0.1"
CLOSED = f"{LOOPBACK}:9"
CONTAINER = "docker:index/container:Container"


def need(tool: str | None, package: str) -> str:
    if tool is None:
        pytest.fail(f"{package} is not installed (Debian package {package}; .ci/run installs it)")
    return tool


def container(ev: Evaluation, name: str) -> Resource:
    return next(c for c in ev.by_type(CONTAINER) if c.name == name)


def uploaded(ev: Evaluation, resource: Resource, path: str) -> str:
    """The content of the file `resource` gets at `path` (carried by its file holder)."""
    return next(str(u["content"]) for u in unwrap(ev.uploads_of(resource)) if u["file"] == path)


def replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times"
    return text.replace(old, new)


def healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://{LOOPBACK}:{port}/healthz", timeout=1).text == "ok"
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def scraped(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    caddy, prometheus, node_exporter = (
        need(CADDY, "caddy"),
        need(PROMETHEUS, "prometheus"),
        need(NODE_EXPORTER, "prometheus-node-exporter"),
    )
    tmp = tmp_path_factory.mktemp("edge-scrape")
    plan = evaluate_stack("prod")
    pki = PlanPki(plan)
    processes: list[Process] = []

    def stop() -> None:
        for p in reversed(processes):
            p.stop()

    request.addfinalizer(stop)
    edge_port, health_port, node_port, prom_port = free_ports(4)
    worker = FakeUpstream("dask-workers-gpu1-1").start()
    request.addfinalizer(worker.stop)

    node = start_process("node-exporter", [node_exporter, f"--web.listen-address={LOOPBACK}:{node_port}"],
                         log=tmp / "node.log", cwd=tmp)  # fmt: skip
    processes.append(node)

    edge = container(plan, "edge-gpu1")
    secrets = pki.write_uploads(edge, tmp / "edge-secrets")
    caddyfile = secrets["/run/secrets/Caddyfile"].read_text()
    caddyfile = replace_once(caddyfile, ":8443 {", f":{edge_port} {{")
    caddyfile = replace_once(caddyfile, "http://127.0.0.1:8081 {", f"http://{LOOPBACK}:{health_port} {{")
    caddyfile = replace_once(
        caddyfile, "reverse_proxy node-exporter:9100 {", f"reverse_proxy {LOOPBACK}:{node_port} {{"
    )
    caddyfile = replace_once(
        caddyfile, "reverse_proxy dask-workers-gpu1-1:8788 {", f"reverse_proxy {LOOPBACK}:{worker.port} {{"
    )
    caddyfile = caddyfile.replace("/run/secrets/", f"{tmp / 'edge-secrets'}/")
    (tmp / "Caddyfile").write_text(caddyfile)
    for sub in ("data", "config"):
        (tmp / sub).mkdir()
    env = {"HOME": str(tmp), "XDG_DATA_HOME": str(tmp / "data"), "XDG_CONFIG_HOME": str(tmp / "config")}
    declared = [str(p) for p in edge.plain_inputs()["command"]]
    argv = [caddy, *declared[1:]]
    argv[argv.index("/run/secrets/Caddyfile")] = str(tmp / "Caddyfile")
    processes.append(start_process("edge-gpu1", argv, log=tmp / "caddy.log", cwd=tmp, env=env))
    wait_until(lambda: healthy(health_port), processes, "the edge's health listener")

    prom = container(plan, "monitoring-prometheus")
    # Its client certificate: the /run/secrets uploads, real PEMs for the plan's mock ones.
    (tmp / "prometheus-secrets").mkdir()
    for name in ("ca.pem", "tls.crt", "tls.key"):
        (tmp / "prometheus-secrets" / name).write_text(pki.realize(uploaded(plan, prom, f"/run/secrets/{name}")))
    config = yaml.safe_load(uploaded(plan, prom, "/etc/cluster-ai/prometheus.yml"))
    config["global"].update({"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"})
    config["rule_files"] = []
    config["alerting"]["alertmanagers"][0]["static_configs"] = [{"targets": [CLOSED]}]
    kept = []
    for job in config["scrape_configs"]:
        if job["job_name"] not in ("node", "dask-worker"):
            continue
        tls = job["tls_config"]
        for key in ("ca_file", "cert_file", "key_file"):
            tls[key] = tls[key].replace("/run/secrets/", f"{tmp / 'prometheus-secrets'}/")
        tls["server_name"] = "gpu1"
        for static in job["static_configs"]:
            if static["labels"]["host"] == "gpu1":
                assert static["targets"] == ["192.0.2.11:8443"], static
                static["targets"] = [f"{LOOPBACK}:{edge_port}"]
            else:
                static["targets"] = [CLOSED]
        kept.append(job)
    config["scrape_configs"] = kept
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    processes.append(
        start_process(
            "prometheus",
            [prometheus, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address={LOOPBACK}:{prom_port}"],
            log=tmp / "prometheus.log", cwd=tmp,
        )
    )  # fmt: skip
    wait_for_prometheus(f"http://{LOOPBACK}:{prom_port}", processes)
    yield {
        "prometheus": f"http://{LOOPBACK}:{prom_port}",
        "worker": worker,
        "processes": processes,
        "edge_port": edge_port,
    }


def query(base: str, expr: str) -> list[dict[str, Any]]:
    body = httpx.get(f"{base}/api/v1/query", params={"query": expr}, timeout=5).json()
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def test_the_node_exporter_is_scraped_through_the_edge_with_the_client_certificate(scraped: dict[str, Any]) -> None:
    base = scraped["prometheus"]

    def up() -> bool:
        try:
            return any(r["value"][1] == "1" for r in query(base, 'up{job="node", host="gpu1"}'))
        except httpx.HTTPError:
            return False

    wait_until(up, scraped["processes"], "gpu1's node exporter to be scraped through its edge")
    series = query(base, 'node_load1{host="gpu1"}')
    assert [s["metric"]["instance"] for s in series] == ["gpu1"], json.dumps(series)


def test_a_worker_path_reaches_that_worker_as_metrics(scraped: dict[str, Any]) -> None:
    worker: FakeUpstream = scraped["worker"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "/metrics" not in worker.paths():
        time.sleep(0.2)
    assert "/metrics" in worker.paths(), f"the edge sent {worker.paths()} to dask-workers-gpu1-1"
    assert all(p == "/metrics" for p in worker.paths()), worker.paths()


def test_the_edge_turns_away_a_scrape_without_a_client_certificate(scraped: dict[str, Any]) -> None:
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"https://{LOOPBACK}:{scraped['edge_port']}/metrics/node/metrics", verify=False, timeout=5)
