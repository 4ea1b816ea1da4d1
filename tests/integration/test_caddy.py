"""The generated Caddyfiles, validated and served by a real Caddy.

The Caddyfiles are the plan's own (the `Caddyfile` uploads of the edge, egress
and proxy containers of the prod plan, hosts on loopback: tests/support/
prod_stack.py), plus both proxy modes straight from `proxy_caddyfile`. The
certificates they name are real ones issued the way the program issues them
(tests/support/pki.py). Debian's caddy is 2.6 while the image is caddy 2.8: the
program keeps its Caddyfiles valid for both, and these tests hold it to 2.6.

Outside Docker only this changes, each in `localize`: `/run/secrets/...` paths
(files holding the issued PEMs and the Caddyfile itself), the listening ports
(free ones: this machine's ports are shared by every "host" and by parallel test
runs), the upstreams that are names on a Docker network (`ollama:11434`,
`scheduler:8787`, `webui:8080`) -> local fakes speaking their HTTP contracts
(Ollama's server cannot be installed here; tests/support/fake_ollama.py follows
its documented API), and the proxy's bcrypt hash -> the hash of a password the
test knows (the plan's is a mock output). Caddy's /data and /config, tmpfs in
the containers, are temporary directories.
"""

from __future__ import annotations

import base64
import http.client
import json
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from components.caddy import EDGE_PORT, EGRESS_BASE_PORT, HEALTH_PORT, HTTP_PORT, HTTPS_PORT, Route, proxy_caddyfile
from components.hardened import SECRETS_DIR
from components.logging_config import PUSH_PATH
from components.monitoring import LOKI_UPSTREAM, NODE_EXPORTER_PORT
from components.ollama import ALIAS as OLLAMA_ALIAS
from components.ollama import PORT as OLLAMA_PORT
from infra.program import DASHBOARD_PREFIX, DASHBOARD_USER
from stacks.mocks import Evaluation, Resource, unwrap
from tests.support.fake_http import FakeUpstream
from tests.support.fake_ollama import FakeOllama
from tests.support.pki import Bundle, PlanPki
from tests.support.processes import LOOPBACK, Process, free_ports, start_process, wait_until
from tests.support.prod_stack import GPU_NODES, HEAD, loopback_prod

pytestmark = pytest.mark.integration

# Debian's caddy (.ci/run installs it): a missing one fails the tests rather than skipping them.
CADDY = shutil.which("caddy") or "/usr/bin/caddy"
CONTAINER = "docker:index/container:Container"
NODE_UPSTREAM = f"reverse_proxy node-exporter:{NODE_EXPORTER_PORT} {{"
LOKI_UPSTREAM_LINE = f"reverse_proxy {LOKI_UPSTREAM} {{"
CADDYFILE = f"{SECRETS_DIR}/Caddyfile"
DOMAIN = "ai.example.com"
INTERNAL_PROXY = {"domain": DOMAIN, "tls": "internal", "listenAddress": "192.0.2.10"}
PASSWORD = "correct horse battery staple"
# Caddy listens on every interface for `:port` and `http://127.0.0.1:port` sites
# alike (a site's host is a matcher, not a bind): ports are checked free on all.
ANY_ADDRESS = "0.0.0.0"
REQUEST_TIMEOUT_S = 10.0
COMMAND_TIMEOUT_S = 60.0
# What Go's TLS stack (Caddy) alerts when a client certificate is missing or not
# from the trusted CA: Caddy 2.6 sends `bad_certificate` for both; newer Go sends
# `certificate_required` in TLS 1.3 for a missing one.
NO_CERTIFICATE_ALERTS = {"SSLV3_ALERT_BAD_CERTIFICATE", "TLSV13_ALERT_CERTIFICATE_REQUIRED"}
BAD_CERTIFICATE_ALERTS = {"SSLV3_ALERT_BAD_CERTIFICATE", "TLSV1_ALERT_UNKNOWN_CA"}

# -- the plan's Caddy containers, outside Docker ---------------------------------------------


def container(plan: Evaluation, name: str) -> Resource:
    [found] = [r for r in plan.by_type(CONTAINER) if r.name == name]
    return found


def localize(text: str, replacements: Mapping[str, str], secrets: Path, every: frozenset[str] = frozenset()) -> str:
    """The Caddyfile with the Docker-only values replaced; each must be found exactly once
    (those in `every`: at least once, e.g. an upstream several grants of a route proxy to)."""
    for old, new in replacements.items():
        count = text.count(old)
        assert count == 1 or (old in every and count > 1), f"{old!r} occurs {count} times in:\n{text}"
        text = text.replace(old, new)
    # The container's secrets volume: here the directory holding the real PEMs.
    return text.replace(f"{SECRETS_DIR}/", f"{secrets}/")


def write_caddyfile(
    plan_container: Resource,
    pki: PlanPki,
    directory: Path,
    replacements: Mapping[str, str] | None = None,
    every: frozenset[str] = frozenset(),
) -> Path:
    """The container's uploads (real PEMs) in `directory`, its Caddyfile localized beside them."""
    files = pki.write_uploads(plan_container, directory / "secrets")
    assert CADDYFILE in files, f"{plan_container.urn}: no Caddyfile upload"
    local = directory / "Caddyfile"
    local.write_text(localize(files[CADDYFILE].read_text(), replacements or {}, directory / "secrets", every))
    return local


def caddy_env(directory: Path) -> dict[str, str]:
    """Caddy's data and config directories (tmpfs in the containers): the test's own."""
    (directory / "data").mkdir(parents=True, exist_ok=True)
    (directory / "config").mkdir(parents=True, exist_ok=True)
    return {
        "HOME": str(directory),
        "XDG_DATA_HOME": str(directory / "data"),
        "XDG_CONFIG_HOME": str(directory / "config"),
    }


def validate(caddyfile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CADDY, "validate", "--adapter", "caddyfile", "--config", str(caddyfile)],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        env={**caddy_env(caddyfile.parent), "PATH": "/usr/bin:/bin"},
        check=False,
    )


def hash_password(password: str) -> str:
    """A bcrypt hash as Caddy makes them (what `random.RandomPassword.bcrypt_hash` would be)."""
    done = subprocess.run(
        [CADDY, "hash-password", "--plaintext", password],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=True,
    )
    return done.stdout.strip()


def ok(port: int) -> bool:
    try:
        return request(port, "/healthz").body == b"ok"
    except OSError:
        return False


def run_caddy(plan_container: Resource, caddyfile: Path, health_port: int, request_: pytest.FixtureRequest) -> Process:
    """The container's declared command with real Caddy; up once its health listener says ok."""
    declared = [str(part) for part in plan_container.plain_inputs()["command"]]
    assert declared == ["caddy", "run", "--config", CADDYFILE, "--adapter", "caddyfile"], declared
    # The image's caddy is on its PATH and its Caddyfile under /run/secrets; here Debian's and the test's.
    argv = [CADDY, *declared[1:]]
    argv[argv.index(CADDYFILE)] = str(caddyfile)
    directory = caddyfile.parent
    process = start_process(
        plan_container.name, argv, log=directory / "caddy.log", cwd=directory, env=caddy_env(directory)
    )
    request_.addfinalizer(process.stop)
    wait_until(lambda: ok(health_port), [process], f"{plan_container.urn}'s health listener to answer ok")
    return process


# -- talking to it ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


def tls_context(ca: Path, client: Bundle | None = None) -> ssl.SSLContext:
    """Verifies the server against `ca` (name included); presents `client`'s certificate if given."""
    context = ssl.create_default_context(cafile=str(ca))
    if client is not None:
        context.load_cert_chain(str(client.cert), str(client.key))
    return context


def request(
    port: int,
    path: str,
    *,
    address: str = LOOPBACK,
    context: ssl.SSLContext | None = None,
    server_name: str | None = None,
    headers: Mapping[str, str] | None = None,
    method: str = "GET",
    body: bytes | None = None,
) -> Reply:
    """GET over http, or https with `context`: connect to `address`, present `server_name` as SNI.

    Like `curl --resolve`: the name the certificate must carry is `server_name`
    (default: the address itself), while the connection goes to `address`.
    """
    if context is None:
        connection: http.client.HTTPConnection = http.client.HTTPConnection(address, port, timeout=REQUEST_TIMEOUT_S)
    else:
        name, tls = server_name or address, context

        class Resolved(http.client.HTTPSConnection):
            def connect(self) -> None:
                raw = socket.create_connection((address, port), REQUEST_TIMEOUT_S)
                self.sock = tls.wrap_socket(raw, server_hostname=name)

        connection = Resolved(address, port, timeout=REQUEST_TIMEOUT_S, context=context)
    try:
        connection.request(method, path, body=body, headers=dict(headers or {}))
        response = connection.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        connection.close()


def handshake_alert(address: str, port: int, context: ssl.SSLContext) -> ssl.SSLError:
    """The alert a server ends the handshake with, read without sending anything.

    In TLS 1.3 the client's side of the handshake completes before the server
    has judged the client's certificate; its verdict arrives as an alert on the
    first read. Sending nothing first keeps the server's close from resetting
    the connection before the alert is read.
    """
    with socket.create_connection((address, port), REQUEST_TIMEOUT_S) as raw:
        try:
            # (In TLS 1.2 the alert ends the handshake itself.)
            with context.wrap_socket(raw, server_hostname=address) as tls:
                data = tls.recv(1)
        except ssl.SSLError as error:
            return error
    pytest.fail(f"{address}:{port} answered {data!r} instead of refusing the handshake")


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plan() -> Evaluation:
    return loopback_prod()


@pytest.fixture(scope="module")
def pki(plan: Evaluation) -> PlanPki:
    return PlanPki(plan)


@pytest.fixture(scope="module")
def internal_plan() -> Evaluation:
    """The prod plan with the proxy on the internal CA instead of ACME."""
    return loopback_prod(proxy=INTERNAL_PROXY)


@pytest.fixture(scope="module")
def internal_pki(internal_plan: Evaluation) -> PlanPki:
    return PlanPki(internal_plan)


@pytest.fixture(scope="module")
def bundles(pki: PlanPki, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Bundle]:
    """Client certificates: each client role's, an edge's (server-only), Dask's operator, one from another CA."""
    tmp = tmp_path_factory.mktemp("clients")
    other = PlanPki(pki.evaluation)
    return {
        "egress": pki.cert("cluster-ca-egress-cert").write(tmp / "egress"),
        "prometheus": pki.cert("cluster-ca-prometheus-cert").write(tmp / "prometheus"),
        "blackbox": pki.cert("cluster-ca-blackbox-cert").write(tmp / "blackbox"),
        "alloy": pki.cert("cluster-ca-alloy-gpu1-cert").write(tmp / "alloy"),
        "dask operator": pki.cert("dask-ca-operator-cert").write(tmp / "dask-operator"),
        "server-only": pki.cert("cluster-ca-edge-gpu2-cert").write(tmp / "server-only"),
        "other CA": other.cert("cluster-ca-egress-cert").write(tmp / "other"),
    }


@dataclass
class Edge:
    host: str
    address: str
    port: int
    ollama: FakeOllama
    process: Process
    health_port: int
    node_exporter: FakeUpstream
    """What the edge's `/metrics/node` route proxies to (the node exporter)."""


@pytest.fixture(scope="module")
def edges(
    request: pytest.FixtureRequest, plan: Evaluation, pki: PlanPki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Edge]]:
    """Each GPU node's edge, its Ollama a fake one, on the node's loopback address."""
    running: dict[str, Edge] = {}
    for host, address in GPU_NODES.items():
        ollama = FakeOllama().start()
        request.addfinalizer(ollama.stop)
        node_exporter = FakeUpstream(f"node-exporter-{host}").start()
        request.addfinalizer(node_exporter.stop)
        edge_port, health_port = free_ports(2, ANY_ADDRESS)
        ollama_upstream = f"reverse_proxy {OLLAMA_ALIAS}:{OLLAMA_PORT} {{"
        caddyfile = write_caddyfile(
            container(plan, f"edge-{host}"),
            pki,
            tmp_path_factory.mktemp(f"edge-{host}"),
            {
                f"\n:{EDGE_PORT} {{\n": f"\n:{edge_port} {{\n",
                f"http://127.0.0.1:{HEALTH_PORT} {{": f"http://127.0.0.1:{health_port} {{",
                ollama_upstream: f"reverse_proxy {ollama.url.removeprefix('http://')} {{",
                NODE_UPSTREAM: f"reverse_proxy 127.0.0.1:{node_exporter.port} {{",
            },
            every=frozenset({ollama_upstream}),
        )
        process = run_caddy(container(plan, f"edge-{host}"), caddyfile, health_port, request)
        running[host] = Edge(host, address, edge_port, ollama, process, health_port, node_exporter)
    yield running


@dataclass
class Egress:
    ports: list[int]
    """The local port of each declared listener, in declaration order."""
    health_port: int


@pytest.fixture(scope="module")
def egress(
    request: pytest.FixtureRequest,
    plan: Evaluation,
    pki: PlanPki,
    edges: dict[str, Edge],
    tmp_path_factory: pytest.TempPathFactory,
) -> Egress:
    """The head's egress in front of the edges: plain HTTP in, mutual TLS out."""
    hosts = sorted(GPU_NODES)
    *ports, health_port = free_ports(len(hosts) + 1, ANY_ADDRESS)
    replacements = {f"http://127.0.0.1:{HEALTH_PORT} {{": f"http://127.0.0.1:{health_port} {{"}
    for i, host in enumerate(hosts):
        edge = edges[host]
        replacements[f"\n:{EGRESS_BASE_PORT + i} {{\n"] = f"\n:{ports[i]} {{\n"
        replacements[f"https://{edge.address}:{EDGE_PORT} {{"] = f"https://{edge.address}:{edge.port} {{"
    caddyfile = write_caddyfile(container(plan, "egress"), pki, tmp_path_factory.mktemp("egress"), replacements)
    run_caddy(container(plan, "egress"), caddyfile, health_port, request)
    return Egress(ports, health_port)


@dataclass
class Proxy:
    http_port: int
    https_port: int
    health_port: int
    webui: FakeUpstream
    dashboard: FakeUpstream
    ca: Path


@pytest.fixture(scope="module")
def proxy(
    request: pytest.FixtureRequest,
    internal_plan: Evaluation,
    internal_pki: PlanPki,
    tmp_path_factory: pytest.TempPathFactory,
) -> Proxy:
    """The public proxy in internal-CA mode, Open WebUI and the dashboard fakes behind it."""
    webui = FakeUpstream("webui").start()
    request.addfinalizer(webui.stop)
    dashboard = FakeUpstream("dashboard").start()
    request.addfinalizer(dashboard.stop)
    http_port, https_port, health_port = free_ports(3, ANY_ADDRESS)
    mock_hash = unwrap(internal_plan.named("dask-dashboard-password").outputs["bcryptHash"])
    directory = tmp_path_factory.mktemp("proxy")
    caddyfile = write_caddyfile(
        container(internal_plan, "proxy"),
        internal_pki,
        directory,
        {
            f"http_port {HTTP_PORT}\n": f"http_port {http_port}\n",
            f"https_port {HTTPS_PORT}\n": f"https_port {https_port}\n",
            f"http://127.0.0.1:{HEALTH_PORT} {{": f"http://127.0.0.1:{health_port} {{",
            "reverse_proxy scheduler:8787 {": f"reverse_proxy 127.0.0.1:{dashboard.port} {{",
            "reverse_proxy webui:8080 {": f"reverse_proxy 127.0.0.1:{webui.port} {{",
            # The plan's hash is a mock output; this one's password is known.
            f" {mock_hash}\n": f" {hash_password(PASSWORD)}\n",
        },
    )
    run_caddy(container(internal_plan, "proxy"), caddyfile, health_port, request)
    return Proxy(http_port, https_port, health_port, webui, dashboard, directory / "secrets" / "ca.pem")


# -- caddy validate ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        "edge-gpu1",
        "edge-gpu2",
        "edge-head",
        "egress",
        "proxy (acme, plan)",
        "proxy (internal, plan)",
        "proxy (acme)",
        "proxy (internal)",
    ],
)
def test_generated_caddyfiles_pass_caddy_validate(
    source: str, plan: Evaluation, pki: PlanPki, internal_plan: Evaluation, internal_pki: PlanPki, tmp_path: Path
) -> None:
    if source.endswith(", plan)"):
        the_plan, the_pki = (internal_plan, internal_pki) if "internal" in source else (plan, pki)
        caddyfile = write_caddyfile(container(the_plan, "proxy"), the_pki, tmp_path)
    elif source.startswith("proxy ("):
        # Both modes straight from the function, with the program's dashboard route.
        text = proxy_caddyfile(
            DOMAIN,
            acme_email="ops@example.com" if "acme" in source else None,
            routes=[
                Route(f"/{DASHBOARD_PREFIX}", "scheduler:8787", strip_prefix=False, basic_auth_user=DASHBOARD_USER)
            ],
            default_upstream="webui:8080",
            basic_auth_hash=hash_password(PASSWORD),
        )
        internal_pki.cert("cluster-ca-proxy-cert").write(tmp_path / "secrets")
        caddyfile = tmp_path / "Caddyfile"
        caddyfile.write_text(localize(text, {}, tmp_path / "secrets"))
    else:
        caddyfile = write_caddyfile(container(plan, source), pki, tmp_path)
    done = validate(caddyfile)
    assert done.returncode == 0 and "Valid configuration" in done.stdout + done.stderr, (
        f"{source}: caddy validate failed\n{done.stdout}\n{done.stderr}\n--- Caddyfile\n{caddyfile.read_text()}"
    )


# -- the edge ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("client", "alerts"),
    [(None, NO_CERTIFICATE_ALERTS), ("other CA", BAD_CERTIFICATE_ALERTS), ("server-only", BAD_CERTIFICATE_ALERTS)],
    ids=["no certificate", "certificate from another CA", "server-only certificate"],
)
def test_edge_refuses_a_client_without_a_valid_certificate(
    client: str | None, alerts: set[str], edges: dict[str, Edge], bundles: dict[str, Bundle]
) -> None:
    """`require_and_verify` ends the TLS handshake with an alert: no HTTP status ever comes back."""
    edge = edges["gpu1"]
    before = len(edge.ollama.requests)
    context = tls_context(bundles["egress"].ca, bundles[client] if client else None)
    alert = handshake_alert(edge.address, edge.port, context)
    assert alert.reason in alerts, f"edge-{edge.host}: {alert!r}"
    # A request sent anyway gets no answer either: the connection is closed on it
    # (the alert itself may be lost to the reset when the request crosses it).
    with pytest.raises(OSError):
        request(edge.port, "/ollama/api/version", address=edge.address, context=context)
    assert len(edge.ollama.requests) == before, f"edge-{edge.host} let a request through to Ollama"


def test_edge_forwards_a_client_with_the_egress_certificate(edges: dict[str, Edge], bundles: dict[str, Bundle]) -> None:
    for edge in edges.values():
        context = tls_context(bundles["egress"].ca, bundles["egress"])
        # The edge's certificate names the host's address (it is verified here, IP included).
        reply = request(edge.port, "/ollama/api/version", address=edge.address, context=context)
        assert reply.status == 200, f"edge-{edge.host}: {reply.status} {reply.body!r}\n{edge.process.tail()}"
        assert json.loads(reply.body) == {"version": edge.ollama.version}, reply.body
        assert [r.path for r in edge.ollama.calls("GET")][-1] == "/api/version", "the /ollama prefix must be stripped"
        # Nothing but the declared routes: the rest is 404 and never reaches Ollama.
        assert request(edge.port, "/api/version", address=edge.address, context=context).status == 404


# Ollama's management API (docs/api.md upstream): none of it may be reached from the cluster.
MANAGEMENT = [
    ("POST", "/api/pull"),
    ("POST", "/api/push"),
    ("POST", "/api/create"),
    ("POST", "/api/copy"),
    ("DELETE", "/api/delete"),
    ("POST", "/api/blobs/sha256:" + "0" * 64),
    ("HEAD", "/api/blobs/sha256:" + "0" * 64),
    # The same endpoints spelled so a naive prefix or string match would let them by.
    ("POST", "/api/chat/../pull"),
    ("POST", "/api/p%75ll"),
    ("POST", "/api//pull"),
    ("GET", "/api/pull"),
]


def edge_call(edge: Edge, client: Bundle, method: str, path: str, body: bytes | None = None) -> Reply:
    context = tls_context(client.ca, client)
    return request(edge.port, path, address=edge.address, context=context, method=method, body=body)


@pytest.mark.parametrize(("method", "path"), MANAGEMENT, ids=[f"{m} {p}" for m, p in MANAGEMENT])
def test_edge_refuses_ollamas_management_api_even_to_the_egress(
    method: str, path: str, edges: dict[str, Edge], bundles: dict[str, Bundle]
) -> None:
    edge = edges["gpu1"]
    before = len(edge.ollama.requests)
    reply = edge_call(
        edge, bundles["egress"], method, f"/ollama{path}", b'{"model": "x"}' if method != "HEAD" else None
    )
    assert reply.status == 403, f"edge-{edge.host}: {method} {path} -> {reply.status} {reply.body!r}"
    assert len(edge.ollama.requests) == before, f"edge-{edge.host}: {method} {path} reached Ollama"


def test_edge_serves_the_egress_ollamas_inference_api(edges: dict[str, Edge], bundles: dict[str, Bundle]) -> None:
    edge = edges["gpu2"]
    for path in ("/api/version", "/api/tags"):
        reply = edge_call(edge, bundles["egress"], "GET", f"/ollama{path}")
        assert reply.status == 200, f"edge-{edge.host}: GET {path} -> {reply.status}\n{edge.process.tail()}"
    # Inference endpoints the fake does not implement still reach it (its 404, not the edge's 403).
    before = len(edge.ollama.calls("POST", "/api/chat"))
    reply = edge_call(edge, bundles["egress"], "POST", "/ollama/api/chat", b'{"model": "x", "messages": []}')
    assert reply.status != 403, f"edge-{edge.host}: POST /api/chat refused to the egress"
    assert len(edge.ollama.calls("POST", "/api/chat")) == before + 1, "POST /api/chat did not reach Ollama"


# Which client may do what on a worker host's edge: (client, method, path) -> allowed.
EDGE_MATRIX = [
    ("egress", "GET", "/ollama/api/tags", True),
    ("egress", "GET", "/metrics/node/metrics", False),
    ("prometheus", "GET", "/metrics/node/metrics", True),
    ("prometheus", "GET", "/ollama/api/version", False),
    ("prometheus", "POST", "/ollama/api/generate", False),
    ("blackbox", "GET", "/ollama/api/version", True),
    ("blackbox", "GET", "/ollama/api/tags", False),
    ("blackbox", "POST", "/ollama/api/chat", False),
    ("blackbox", "GET", "/metrics/node/metrics", False),
    ("alloy", "GET", "/ollama/api/version", False),
    ("alloy", "POST", "/ollama/api/chat", False),
    ("alloy", "GET", "/metrics/node/metrics", False),
]


@pytest.mark.parametrize(
    ("client", "method", "path", "allowed"), EDGE_MATRIX, ids=[f"{c} {m} {p}" for c, m, p, _ in EDGE_MATRIX]
)
def test_edge_gives_each_client_certificate_only_its_own_routes(
    client: str, method: str, path: str, allowed: bool, edges: dict[str, Edge], bundles: dict[str, Bundle]
) -> None:
    edge = edges["gpu1"]
    before = len(edge.ollama.requests) + len(edge.node_exporter.seen)
    reply = edge_call(edge, bundles[client], method, path, b"{}" if method == "POST" else None)
    reached = len(edge.ollama.requests) + len(edge.node_exporter.seen) - before
    if allowed:
        assert reply.status == 200 and reached == 1, f"edge-{edge.host}: {client} {method} {path} -> {reply.status}"
    else:
        assert reply.status == 403 and reached == 0, (
            f"edge-{edge.host}: {client} {method} {path} -> {reply.status}, {reached} request(s) upstream"
        )


def test_edges_refuse_dasks_certificates_at_the_handshake(edges: dict[str, Edge], bundles: dict[str, Bundle]) -> None:
    """The operator's Dask certificate comes from Dask's CA: no edge trusts it."""
    edge = edges["gpu1"]
    context = tls_context(bundles["egress"].ca, bundles["dask operator"])
    alert = handshake_alert(edge.address, edge.port, context)
    assert alert.reason in BAD_CERTIFICATE_ALERTS, f"edge-{edge.host}: {alert!r}"


@pytest.fixture(scope="module")
def head_edge(
    request: pytest.FixtureRequest, plan: Evaluation, pki: PlanPki, tmp_path_factory: pytest.TempPathFactory
) -> tuple[int, FakeUpstream]:
    """The head's edge (Loki's push API for the other hosts' shippers), Loki a fake."""
    loki = FakeUpstream("loki").start()
    request.addfinalizer(loki.stop)
    edge_port, health_port = free_ports(2, ANY_ADDRESS)
    caddyfile = write_caddyfile(
        container(plan, "edge-head"),
        pki,
        tmp_path_factory.mktemp("edge-head"),
        {
            f"\n:{EDGE_PORT} {{\n": f"\n:{edge_port} {{\n",
            f"http://127.0.0.1:{HEALTH_PORT} {{": f"http://127.0.0.1:{health_port} {{",
            LOKI_UPSTREAM_LINE: f"reverse_proxy 127.0.0.1:{loki.port} {{",
        },
    )
    run_caddy(container(plan, "edge-head"), caddyfile, health_port, request)
    return edge_port, loki


HEAD_MATRIX = [
    ("alloy", "POST", True),
    ("alloy", "GET", False),
    ("prometheus", "POST", False),
    ("egress", "POST", False),
    ("blackbox", "POST", False),
]


@pytest.mark.parametrize(("client", "method", "allowed"), HEAD_MATRIX, ids=[f"{c} {m}" for c, m, _ in HEAD_MATRIX])
def test_head_edge_takes_log_pushes_from_shippers_only(
    client: str, method: str, allowed: bool, head_edge: tuple[int, FakeUpstream], bundles: dict[str, Bundle]
) -> None:
    port, loki = head_edge
    before = len(loki.seen)
    context = tls_context(bundles[client].ca, bundles[client])
    body = b"{}" if method == "POST" else None
    reply = request(port, PUSH_PATH, address=HEAD, context=context, method=method, body=body)
    expected = (200, 1) if allowed else (403, 0)
    assert (reply.status, len(loki.seen) - before) == expected, f"edge-head: {client} {method} {PUSH_PATH}: {reply}"


# -- the egress, in front of the edges ---------------------------------------------------------------------


def test_egress_carries_plain_http_to_each_host_through_its_edge(
    egress: Egress, edges: dict[str, Edge], plan: Evaluation
) -> None:
    """What Open WebUI does: plain `GET http://egress:<port>/api/version`, one port per host."""
    webui_env = dict(str(e).split("=", 1) for e in container(plan, "webui").plain_inputs()["envs"])
    declared = [u for u in webui_env.get("OLLAMA_BASE_URLS", "").split(";") if u]
    assert declared == [f"http://egress:{EGRESS_BASE_PORT + i}" for i in range(len(GPU_NODES))], declared
    for i, host in enumerate(sorted(GPU_NODES)):
        edge = edges[host]
        before = {h: len(e.ollama.calls("GET", "/api/version")) for h, e in edges.items()}
        reply = request(egress.ports[i], "/api/version")
        assert reply.status == 200, f"egress -> edge-{host}: {reply.status} {reply.body!r}\n{edge.process.tail()}"
        assert json.loads(reply.body) == {"version": edge.ollama.version}
        after = {h: len(e.ollama.calls("GET", "/api/version")) for h, e in edges.items()}
        # Listener i reaches host i's Ollama, and only it.
        assert after == {h: n + (h == host) for h, n in before.items()}, f"egress port {i}: {before} -> {after}"


def test_health_listeners_answer_ok(edges: dict[str, Edge], egress: Egress) -> None:
    for port in [egress.health_port, *(e.health_port for e in edges.values())]:
        reply = request(port, "/healthz")
        assert (reply.status, reply.body) == (200, b"ok"), port


# -- the public proxy, internal-CA mode -------------------------------------------------------------------------


def https(proxy: Proxy, path: str, headers: Mapping[str, str] | None = None) -> Reply:
    # SNI and Host are the domain, the connection goes to loopback (curl --resolve).
    return request(
        proxy.https_port,
        path,
        context=tls_context(proxy.ca),
        server_name=DOMAIN,
        headers={"Host": DOMAIN, **(headers or {})},
    )


def test_proxy_serves_the_internal_ca_certificate_for_the_domain_and_routes_to_webui(proxy: Proxy) -> None:
    # The handshake verifies the certificate against the cluster CA and the domain name.
    reply = https(proxy, "/")
    assert reply.status == 200, reply
    assert reply.body == b"webui /", reply.body
    assert proxy.webui.paths()[-1] == "/"
    assert reply.headers["Strict-Transport-Security"].startswith("max-age=31536000"), dict(reply.headers)
    assert "Server" not in reply.headers, dict(reply.headers)
    assert not proxy.dashboard.seen, "/ must not reach the dashboard"


def test_proxy_redirects_http_to_https_without_the_container_port(proxy: Proxy) -> None:
    reply = request(proxy.http_port, "/c/chat?x=1", headers={"Host": DOMAIN})
    assert reply.status == 301, reply  # `redir ... permanent`
    assert reply.headers["Location"] == f"https://{DOMAIN}/c/chat?x=1", reply.headers["Location"]


def test_proxy_guards_the_dashboard_with_basic_auth(proxy: Proxy) -> None:
    path = f"/{DASHBOARD_PREFIX}/status"
    refused = https(proxy, path)
    assert refused.status == 401, refused
    assert refused.headers["WWW-Authenticate"].startswith("Basic"), dict(refused.headers)
    wrong = base64.b64encode(f"{DASHBOARD_USER}:wrong".encode()).decode()
    assert https(proxy, path, {"Authorization": f"Basic {wrong}"}).status == 401
    assert not proxy.dashboard.seen, "an unauthenticated request reached the dashboard"
    right = base64.b64encode(f"{DASHBOARD_USER}:{PASSWORD}".encode()).decode()
    reply = https(proxy, path, {"Authorization": f"Basic {right}"})
    assert reply.status == 200, reply
    # The scheduler serves under --dashboard-prefix: the prefix is kept, not stripped.
    assert proxy.dashboard.paths() == [path], proxy.dashboard.paths()


def test_proxy_health_listener_answers_ok(proxy: Proxy) -> None:
    reply = request(proxy.health_port, "/healthz")
    assert (reply.status, reply.body) == (200, b"ok")
