"""The prod stack under SDK mocks: a head and 1, 2 or 10 GPU nodes over SSH, mutual TLS across hosts."""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from typing import Any

import pytest

from components.caddy import egress_caddyfile
from stacks.mocks import Evaluation, Resource, Secret, is_file_holder, plain_strings, unwrap
from stacks.plan import evaluate_stack

CONTAINER = "docker:index/container:Container"
PROVIDER = "pulumi:providers:docker"
REMOTE_COMMAND = "command:remote:Command"
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOd6YHSn/3BbJbUHjczu3IyYXFOYcba26JmJKDnblpKp"


def prod_hosts(gpu_nodes: int) -> list[dict[str, Any]]:
    ssh = {"user": "cluster-ai", "privateKeyPath": "~/.ssh/cluster-ai", "hostKey": HOST_KEY}
    hosts = [{"name": "head", "address": "192.0.2.10", "roles": ["head"], "cpus": 16, "memoryGb": 64, "ssh": ssh}]
    for i in range(1, gpu_nodes + 1):
        hosts.append(
            {
                "name": f"gpu{i}",
                "address": f"192.0.2.{10 + i}",
                "roles": ["worker"],
                "cpus": 32,
                "memoryGb": 128,
                "gpus": 2,
                "ssh": ssh,
            }
        )
    return hosts


def prod(gpu_nodes: int) -> Evaluation:
    return evaluate_stack("prod", overrides={"cluster-ai:hosts": json.dumps(prod_hosts(gpu_nodes))})


@pytest.fixture(params=[1, 2, 10], ids=lambda n: f"{n}-gpu-nodes")
def cluster(request: pytest.FixtureRequest) -> tuple[int, Evaluation]:
    return request.param, prod(request.param)


def labels_of(r: Resource) -> dict[str, str]:
    return {label["label"]: label["value"] for label in r.plain_inputs().get("labels", [])}


def test_one_provider_per_host_and_nothing_placed_with_the_wrong_one(cluster: tuple[int, Evaluation]) -> None:
    n, ev = cluster
    providers = {p.name.removesuffix("-docker"): p for p in ev.by_type(PROVIDER)}
    assert sorted(providers) == sorted(["head", *(f"gpu{i}" for i in range(1, n + 1))])
    for p in providers.values():
        assert p.plain_inputs()["host"].startswith("ssh://cluster-ai@192.0.2."), p.urn
    for c in ev.by_type(CONTAINER):
        host = labels_of(c)["cluster-ai.host"]
        assert c.provider_urn == providers[host].urn, f"{c.urn} runs on {host} but uses another host's provider"
    for r in ev:
        if r.type.startswith("docker:") and r.type != CONTAINER:
            assert r.provider_urn in {p.urn for p in providers.values()}, f"{r.urn} has no host provider"


def test_every_docker_provider_pins_the_host_key(cluster: tuple[int, Evaluation]) -> None:
    _, ev = cluster
    for p in ev.by_type(PROVIDER):
        # Provider config reaches the engine as JSON text.
        opts = json.loads(p.plain_inputs()["sshOpts"])
        pairs = dict(o.split("=", 1) for o in opts if "=" in o)
        assert pairs["StrictHostKeyChecking"] == "yes", p.urn
        assert pairs["UserKnownHostsFile"] == "/dev/null" and pairs["GlobalKnownHostsFile"] == "/dev/null", p.urn
        assert pairs["KnownHostsCommand"].startswith("/bin/echo 192.0.2.") and pairs["KnownHostsCommand"].endswith(
            HOST_KEY
        ), p.urn


def test_every_remote_command_checks_the_host_key_and_keeps_the_key_secret(cluster: tuple[int, Evaluation]) -> None:
    _, ev = cluster
    commands = ev.by_type(REMOTE_COMMAND)
    assert commands
    for c in commands:
        raw = c.inputs["connection"]
        assert isinstance(raw, Secret), f"{c.urn}: the connection carries the private key: it must be secret"
        connection = raw.value
        assert connection["hostKey"] == HOST_KEY, c.urn
        assert isinstance(connection["privateKey"], str) and connection["privateKey"], c.urn


def test_nothing_is_published_on_every_interface_and_only_the_proxy_is_public(cluster: tuple[int, Evaluation]) -> None:
    _, ev = cluster
    for c in ev.by_type(CONTAINER):
        labels = labels_of(c)
        host = labels["cluster-ai.host"]
        host_address = "192.0.2.10" if host == "head" else f"192.0.2.{10 + int(host.removeprefix('gpu'))}"
        for port in c.plain_inputs().get("ports", []):
            assert port.get("ip") and port["ip"] != "0.0.0.0", f"{c.urn} publishes on every interface"
            if labels["cluster-ai.service"] == "proxy":
                assert int(port["external"]) in (80, 443), c.urn
            else:
                assert port["ip"] == host_address, f"{c.urn} publishes {port} off its host's cluster address"
    published = {
        (labels_of(c)["cluster-ai.service"], int(p["external"]))
        for c in ev.by_type(CONTAINER)
        for p in c.plain_inputs().get("ports", [])
    }
    services = {s for s, _ in published}
    assert services == {"proxy", "dask-scheduler", "dask-worker", "edge"}, published
    assert ("dask-scheduler", 8787) not in published, "the dashboard is reached through the proxy only"


def test_every_cross_host_url_is_tls(cluster: tuple[int, Evaluation]) -> None:
    n, ev = cluster
    containers = {c.name: c for c in ev.by_type(CONTAINER)}
    scheduler = containers["dask-scheduler"].plain_inputs()["command"]
    assert scheduler[scheduler.index("--protocol") + 1] == "tls"
    for flag in ("--tls-ca-file", "--tls-cert", "--tls-key"):
        assert flag in scheduler
    for i in range(1, n + 1):
        for w in range(2):
            worker = containers[f"dask-workers-gpu{i}-{w}"]
            command = worker.plain_inputs()["command"]
            assert command[2] == "tls://192.0.2.10:8786", worker.urn
            assert command[command.index("--contact-address") + 1] == f"tls://192.0.2.{10 + i}:{8790 + w}", worker.urn
            assert command[command.index("--listen-address") + 1].startswith("tls://"), worker.urn
            assert command[command.index("--resources") + 1] == "GPU=1", worker.urn
            assert worker.plain_inputs()["gpus"] == f"device={w}", worker.urn
    webui = containers["webui"].plain_inputs()
    env = dict(e.split("=", 1) for e in webui["envs"])
    urls = env["OLLAMA_BASE_URLS"].split(";")
    assert urls == [f"http://egress:{11500 + i}" for i in range(n)], "every GPU node through the egress"
    egress = next(u for u in unwrap(ev.uploads_of(containers["egress"])) if u["file"].endswith("Caddyfile"))
    for i in range(1, n + 1):
        assert f"reverse_proxy https://192.0.2.{10 + i}:8443" in egress["content"]
    assert "tls_client_auth /run/secrets/tls.crt /run/secrets/tls.key" in egress["content"]


def test_edges_require_a_client_certificate_from_the_ca(cluster: tuple[int, Evaluation]) -> None:
    n, ev = cluster
    edges = [c for c in ev.by_type(CONTAINER) if labels_of(c)["cluster-ai.service"] == "edge" and not is_file_holder(c)]
    # One per GPU node, and the head's (it takes the other hosts' log pushes for Loki).
    assert len(edges) == n + 1
    for edge in edges:
        caddyfile = next(u["content"] for u in unwrap(ev.uploads_of(edge)) if u["file"].endswith("Caddyfile"))
        assert "mode require_and_verify" in caddyfile and "trusted_ca_cert_file /run/secrets/ca.pem" in caddyfile, (
            edge.urn
        )


def test_every_private_key_is_secret(cluster: tuple[int, Evaluation]) -> None:
    _, ev = cluster
    keys = ev.by_type("tls:index/privateKey:PrivateKey")
    pems = {
        k.outputs["privateKeyPem"].value
        if isinstance(k.outputs["privateKeyPem"], Secret)
        else k.outputs["privateKeyPem"]
        for k in keys
    }
    assert len(pems) == len(keys) > 3
    for k in keys:
        assert k.plain_inputs() == {"algorithm": "ECDSA", "ecdsaCurve": "P256"}, k.urn
    for r in ev:
        for text in plain_strings(r.inputs):
            for pem in pems:
                assert pem not in text, f"{r.urn} carries a private key in plain text"
    assert isinstance(ev.exports["operatorKey"], Secret)
    assert isinstance(ev.exports["dashboardPassword"], Secret)


def test_certificates_name_their_hosts_and_carry_the_right_usages() -> None:
    ev = prod(2)
    certs = {c.name: c.plain_inputs() for c in ev.by_type("tls:index/locallySignedCert:LocallySignedCert")}
    csrs = {c.name: c.plain_inputs() for c in ev.by_type("tls:index/certRequest:CertRequest")}
    assert set(certs["cluster-ca-edge-gpu1-cert"]["allowedUses"]) == {
        "digital_signature",
        "key_encipherment",
        "server_auth",
    }
    assert "client_auth" in certs["cluster-ca-egress-cert"]["allowedUses"]
    assert {"server_auth", "client_auth"} <= set(certs["dask-ca-dask-gpu2-cert"]["allowedUses"])
    assert csrs["cluster-ca-edge-gpu1-csr"]["ipAddresses"] == ["192.0.2.11"]
    assert "scheduler" in csrs["dask-ca-dask-scheduler-csr"]["dnsNames"]
    for name in ("cluster-ca-cert", "dask-ca-cert"):
        ca = ev.named(name).plain_inputs()
        assert ca["isCaCertificate"] is True and "cert_signing" in ca["allowedUses"], name


def test_dask_certificates_come_from_dask_ca_and_nothing_else_does() -> None:
    ev = prod(2)
    cas = {c.outputs["certPem"]: c.name for c in ev.by_type("tls:index/selfSignedCert:SelfSignedCert")}
    for cert in ev.by_type("tls:index/locallySignedCert:LocallySignedCert"):
        issuer = cas[cert.plain_inputs()["caCertPem"]]
        dask = cert.name.startswith(("dask-ca-dask-", "dask-ca-operator-"))
        assert issuer == ("dask-ca-cert" if dask else "cluster-ca-cert"), f"{cert.urn} is signed by {issuer}"
    for c in ev.by_type(CONTAINER):
        service = labels_of(c)["cluster-ai.service"]
        if service not in ("dask-scheduler", "dask-worker") or is_file_holder(c):
            continue
        uploads = {u["file"]: u["content"] for u in unwrap(ev.uploads_of(c))}
        assert uploads["/run/secrets/ca.pem"] == ev.named("dask-ca-cert").outputs["certPem"], (
            f"{c.urn} must trust only Dask's CA"
        )


def test_client_certificates_carry_their_role_as_subject_ou() -> None:
    ev = prod(2)
    subjects = {c.name: c.plain_inputs()["subject"] for c in ev.by_type("tls:index/certRequest:CertRequest")}
    expected = {
        "cluster-ca-egress-csr": ("head-egress", "egress"),
        "cluster-ca-prometheus-csr": ("head-prometheus", "prometheus"),
        "cluster-ca-blackbox-csr": ("head-blackbox", "blackbox"),
        "cluster-ca-alloy-gpu1-csr": ("gpu1-alloy", "alloy"),
        "dask-ca-operator-csr": ("operator", "operator"),
    }
    for name, (common_name, role) in expected.items():
        assert subjects[name] == {
            "commonName": common_name,
            "organization": "cluster-ai",
            "organizationalUnit": role,
        }, name
    # Host certificates carry no role: no host name can pose as a client role.
    assert "organizationalUnit" not in subjects["dask-ca-dask-gpu1-csr"]
    assert "organizationalUnit" not in subjects["cluster-ca-edge-gpu1-csr"]


def test_data_volumes_are_protected_and_retained() -> None:
    ev = prod(2)
    data = [
        v
        for v in ev.by_type("docker:index/volume:Volume")
        if {"label": "cluster-ai.volume", "value": "data"} in v.plain_inputs()["labels"]
    ]
    assert len(data) >= 6
    for v in data:
        assert v.protect and v.retain_on_delete, f"{v.urn} must be protected and retained in prod"


def test_every_host_is_bootstrapped_before_services_land_on_it() -> None:
    ev = prod(2)
    bootstraps = {
        c.name.removesuffix("-bootstrap-run"): c
        for c in ev.by_type(REMOTE_COMMAND)
        if c.name.endswith("-bootstrap-run")
    }
    assert sorted(bootstraps) == ["gpu1", "gpu2", "head"]
    # The host's Docker provider waits for its bootstrap, and everything on the host
    # (images, volumes, networks, containers) goes through that provider.
    providers = {r.urn: r for r in ev.resources if r.type == "pulumi:providers:docker"}
    assert sorted(p.name for p in providers.values()) == ["gpu1-docker", "gpu2-docker", "head-docker"]
    for provider in providers.values():
        host = provider.name.removesuffix("-docker")
        assert bootstraps[host].urn in provider.dependencies, f"{provider.urn} does not wait for {host}'s bootstrap"
    placed = [r for r in ev.resources if r.type.startswith("docker:index/")]
    for r in placed:
        assert r.provider_urn in providers, f"{r.urn} is not placed through a host's provider"
    for c in ev.by_type(CONTAINER):
        host = labels_of(c)["cluster-ai.host"]
        assert providers[c.provider_urn].name == f"{host}-docker", f"{c.urn} is on {host} through another host"
    assert "nvidia" in bootstraps["gpu1"].plain_inputs()["stdin"]
    assert "nvidia" not in bootstraps["head"].plain_inputs()["stdin"]


def test_model_sync_runs_on_each_gpu_node_through_its_docker_provider() -> None:
    ev = prod(2)
    for i in (1, 2):
        sync = ev.named(f"ollama-gpu{i}-model-sync")
        ollama = next(r for r in ev.by_type(CONTAINER) if r.name == f"ollama-gpu{i}")
        assert sync.type == CONTAINER, sync.urn
        assert sync.provider_urn == ollama.provider_urn, f"{sync.urn} must run on gpu{i}, where its Ollama is"
        assert (sync.provider_urn or "").endswith(f"::gpu{i}-docker"), f"{sync.urn}: {sync.provider_urn}"
        argv = sync.plain_inputs()["command"]
        pins = json.loads(argv[argv.index("--pins") + 1])
        assert all(p["digest"] for p in pins), f"{sync.urn}: prod pins every model by digest"


def test_removing_a_gpu_node_drains_it_first() -> None:
    ev = prod(2)
    drain = ev.named("dask-workers-gpu2-drain")
    workers = [
        c.urn for c in ev.by_type(CONTAINER) if c.name.startswith("dask-workers-gpu2-") and not is_file_holder(c)
    ]
    assert len(workers) == 2, workers
    assert set(workers) <= set(drain.dependencies), "the drain is deleted before the workers it retires"
    argv = shlex.split(drain.plain_inputs()["delete"])
    script = argv[argv.index("-c") + 1]
    assert "retire_workers(names=['dask-workers-gpu2-0', 'dask-workers-gpu2-1'], close_workers=True)" in script
    assert "tls://127.0.0.1:8786" in script and "require_encryption=True" in script
    assert drain.inputs["connection"].value["host"] == "192.0.2.10", "the drain runs beside the scheduler"


def test_prod_without_required_secrets_and_entry_names_each_key(stack_with: Callable[..., Evaluation]) -> None:
    from infra.program import StackConfigError

    with pytest.raises(StackConfigError) as caught:
        stack_with("prod", proxy={"domain": "ai.example.com", "tls": "acme"}, firewall={"adminNetworks": []})
    message = str(caught.value)
    assert "cluster-ai:proxy.acmeEmail: ACME needs an email" in message
    assert "cluster-ai:firewall.adminNetworks" in message


def test_egress_caddyfile_names_each_upstream_for_tls() -> None:
    from components.caddy import Upstream

    text = egress_caddyfile([Upstream("gpu1", "192.0.2.11", 8443)])
    assert ":11500 {" in text and "tls_server_name gpu1" in text and "rewrite * /ollama{uri}" in text


def edge_routes_of(caddyfile: str) -> dict[str, list[str]]:
    """Route prefix -> the lines of its block, for each top-level route of an edge's site."""
    routes: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in caddyfile.splitlines():
        if line.startswith(("\thandle_path ", "\thandle ")):
            current = routes.setdefault(line.split()[1].removesuffix("*"), [])
        elif line == "\t}":
            current = None
        elif current is not None:
            current.append(line.strip())
    return routes


def granted_subjects(block: list[str]) -> set[str]:
    return {
        s for line in block if line.startswith("vars {http.request.tls.client.subject}") for s in shlex.split(line)[2:]
    }


def test_every_edge_route_names_its_only_clients() -> None:
    ev = prod(2)
    egress, prometheus = "CN=head-egress,OU=egress,O=cluster-ai", "CN=head-prometheus,OU=prometheus,O=cluster-ai"
    blackbox = "CN=head-blackbox,OU=blackbox,O=cluster-ai"
    shippers = {f"CN=gpu{i}-alloy,OU=alloy,O=cluster-ai" for i in (1, 2)}
    for edge in (
        c for c in ev.by_type(CONTAINER) if labels_of(c)["cluster-ai.service"] == "edge" and not is_file_holder(c)
    ):
        caddyfile = next(u["content"] for u in unwrap(ev.uploads_of(edge)) if u["file"].endswith("Caddyfile"))
        routes = edge_routes_of(caddyfile)
        assert routes, f"{edge.urn}: no routes"
        for prefix, block in routes.items():
            assert 'respond "forbidden for this client certificate" 403' in block, f"{edge.urn} {prefix}: no 403"
            subjects = granted_subjects(block)
            if prefix == "/ollama":
                assert subjects == {egress, blackbox}, f"{edge.urn} {prefix}: {subjects}"
                # The prober reads the version only; inference is the egress's alone.
                assert "vars {http.request.tls.client.subject} " + f'"{blackbox}"' in block, edge.urn
                assert "path /api/version" in block, edge.urn
                assert not any(
                    p in " ".join(block) for p in ("/api/pull", "/api/delete", "/api/create", "/api/blobs")
                ), f"{edge.urn}: Ollama's management API is granted"
            elif prefix.startswith("/metrics/"):
                assert subjects == {prometheus}, f"{edge.urn} {prefix}: {subjects}"
            else:
                assert prefix == "/loki/api/v1/push" and subjects == shippers, f"{edge.urn} {prefix}: {subjects}"
                assert "method POST" in block, edge.urn


# -- one node component per machine ----------------------------------------------------

HEAD_NODE = "cluster-ai:index:HeadNode"
WORKER_NODE = "cluster-ai:index:WorkerNode"


def test_the_top_of_the_tree_is_one_node_per_host_and_the_cluster_wide_pieces(cluster: tuple[int, Evaluation]) -> None:
    n, ev = cluster
    top = sorted((r.type, r.name) for r in ev if r.parent and r.parent.endswith("::cluster-ai-prod"))
    assert top == sorted(
        [
            ("cluster-ai:index:CertificateAuthority", "cluster-ca"),
            ("cluster-ai:index:CertificateAuthority", "dask-ca"),
            (HEAD_NODE, "head"),
            *((WORKER_NODE, f"gpu{i}") for i in range(1, n + 1)),
            # Stack secrets, exported: the dashboard's basic-auth password and Open WebUI's admin's.
            ("random:index/randomPassword:RandomPassword", "dask-dashboard-password"),
            ("random:index/randomPassword:RandomPassword", "webui-admin-password"),
        ]
    ), top


def test_everything_placed_on_a_host_is_under_that_hosts_node(cluster: tuple[int, Evaluation]) -> None:
    from tests.support.networks import node_of

    n, ev = cluster
    host_of_provider = {p.urn: p.name.removesuffix("-docker") for p in ev.by_type(PROVIDER)}
    address = {h["name"]: h["address"] for h in prod_hosts(n)}
    placed = 0
    for r in ev:
        if r.type == PROVIDER:
            host = host_of_provider[r.urn]
        elif r.type.startswith("docker:"):
            host = host_of_provider[r.provider_urn or ""]
        elif r.type == REMOTE_COMMAND and not r.name.endswith("-drain"):
            host = next(h for h, a in address.items() if a == r.inputs["connection"].value["host"])
        else:
            continue
        node = node_of(ev, r)
        assert node is not None and node.name == host, f"{r.urn} is placed on {host} but sits under {node}"
        placed += 1
    assert placed > 20 * (n + 1), placed


def test_a_leaving_hosts_drain_belongs_to_its_node_and_runs_on_the_head() -> None:
    from tests.support.networks import node_of

    ev = prod(2)
    drain = ev.named("dask-workers-gpu2-drain")
    node = node_of(ev, drain)
    assert node is not None and node.name == "gpu2", f"{drain.urn}: {node}"
    assert drain.inputs["connection"].value["host"] == "192.0.2.10", drain.urn


# -- the head's networks ---------------------------------------------------------------

# What each head container joins, by network purpose (components/host.py NETWORK_PURPOSES;
# `host` is the host's own private network). docs/architecture.md says why.
PROD_HEAD_NETWORKS = {
    "proxy": {"public", "dashboard"},
    "webui": {"public", "data", "inference"},
    "monitoring-grafana": {"public", "observe"},
    "monitoring-blackbox": {"host", "public"},
    "monitoring-prometheus": {"host", "observe"},
    "monitoring-alertmanager": {"host", "observe"},
    "monitoring-loki": {"host", "observe"},
    "monitoring-postgres-exporter": {"host", "data"},
    "monitoring-redis-exporter": {"host", "data"},
    "postgres": {"data"},
    "redis": {"data"},
    "postgres-backup": {"data"},
    "egress": {"inference", "egress"},
    "dask-scheduler": {"host", "dashboard"},
    "edge-head": {"host"},
    "exporters-head-node-exporter": {"host"},
    "exporters-head-cadvisor": {"host"},
    "exporters-head-alloy": {"host"},
    "exporters-head-backup-metrics": {"host"},
}


def test_each_head_container_joins_exactly_its_networks() -> None:
    from tests.support.networks import attachments, host_of

    ev = prod(2)
    nets = attachments(ev)
    containers = {c.name: c for c in ev.by_type(CONTAINER)}
    head = {name: set(joined) for name, joined in nets.items() if host_of(containers[name]) == "head"}
    assert head == PROD_HEAD_NETWORKS
    for name, joined in nets.items():
        if host_of(containers[name]) != "head":
            assert set(joined) == {"host"}, f"{containers[name].urn}: a worker host has one network"


def test_only_the_proxy_webui_grafana_and_the_prober_are_on_the_public_network() -> None:
    from tests.support.networks import attachments

    ev = prod(2)
    public = sorted(name for name, joined in attachments(ev).items() if "public" in joined)
    assert public == ["monitoring-blackbox", "monitoring-grafana", "proxy", "webui"]
    internal = {
        n.plain_inputs()["name"]: n.plain_inputs()["internal"] for n in ev.by_type("docker:index/network:Network")
    }
    assert internal == {
        "cluster-ai-prod-head": False,
        "cluster-ai-prod-head-public": False,
        "cluster-ai-prod-head-data": True,
        "cluster-ai-prod-head-inference": True,
        "cluster-ai-prod-head-observe": True,
        "cluster-ai-prod-head-dashboard": True,
        # The egress's own route to the edges: nothing else joins it.
        "cluster-ai-prod-head-egress": False,
        "cluster-ai-prod-gpu1": False,
        "cluster-ai-prod-gpu2": False,
    }


def test_public_facing_services_reach_only_what_they_use() -> None:
    from tests.support.networks import reachable_aliases

    ev = prod(2)
    # Open WebUI: its database, Redis and the egress; the proxy and Grafana share the public network.
    assert reachable_aliases(ev, "webui") == {"postgres", "redis", "egress", "proxy", "grafana"}
    # Grafana: Prometheus, Loki, Alertmanager; and the public network's proxy and Open WebUI.
    assert reachable_aliases(ev, "monitoring-grafana") == {"prometheus", "loki", "alertmanager", "proxy", "webui"}
    # The proxy: its upstreams only (the Dask dashboard on a network of their own).
    assert reachable_aliases(ev, "proxy") == {"webui", "grafana", "scheduler"}
    # The egress takes requests from Open WebUI alone.
    for name in ("monitoring-prometheus", "monitoring-grafana", "proxy", "dask-scheduler", "exporters-head-alloy"):
        assert "egress" not in reachable_aliases(ev, name), f"{name} reaches the egress"


def test_every_alias_a_head_container_dials_is_on_a_network_it_shares() -> None:
    """What each component dials (its code and generated configs), resolved on the plan's networks."""
    from tests.support.networks import dials

    ev = prod(2)
    needs = {
        "proxy": ["webui", "grafana", "scheduler"],
        "webui": ["postgres", "redis", "egress"],
        "monitoring-grafana": ["prometheus", "loki", "alertmanager"],
        "monitoring-prometheus": [
            "node-exporter", "cadvisor", "alloy", "scheduler", "postgres-exporter", "redis-exporter",
            "alertmanager", "loki", "blackbox-exporter",
        ],
        "monitoring-blackbox": ["webui", "scheduler", "grafana", "proxy"],
        "monitoring-postgres-exporter": ["postgres"],
        "monitoring-redis-exporter": ["redis"],
        "postgres-backup": ["postgres"],
        "edge-head": ["loki"],
        "exporters-head-alloy": ["loki"],
    }  # fmt: skip
    for client, aliases in needs.items():
        for alias in aliases:
            assert dials(ev, client, alias), f"{client} (container) cannot reach {alias}"
