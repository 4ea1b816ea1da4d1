"""Caddy in three roles: the public proxy, a TLS edge per remote host, the head's egress.

- `PublicProxy` (head): the only public listener (443, and 80 for the redirect
  and ACME), routing Open WebUI, the Dask dashboard (behind basic auth) and
  other head services; certificate from ACME or from the internal CA.
- `TlsEdge` (each remote worker host): Ollama has no auth of its own and the
  exporters none either, so they are reachable from other hosts only through
  this edge, which demands a client certificate from the internal CA.
- `Egress` (head): Open WebUI speaks plain HTTP to it on an internal network
  the two share with nothing but a local Ollama; it carries each request to a
  host's edge with the head's client certificate, over a network of its own.

The Caddyfiles are built by plain functions so tests run them through the real
`caddy validate` and a real Caddy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NotRequired, TypedDict

import pulumi
import pulumi_docker as docker

from components.addresses import host_port
from components.hardened import (
    SECRETS_DIR,
    Healthcheck,
    Mount,
    NetworkAttachment,
    Publish,
    ServiceContainer,
    child_options,
    data_volume,
    hardened_container,
)

# Caddy listens on high ports inside its container: binding 80/443 would need
# NET_BIND_SERVICE, which `no-new-privileges` and a dropped capability set deny.
HTTP_PORT = 8080
HTTPS_PORT = 8443
EDGE_PORT = 8443
HEALTH_PORT = 8081
EGRESS_ALIAS = "egress"
EGRESS_BASE_PORT = 11500
CADDY_UID = "1000:1000"
HEALTH = Healthcheck(["CMD", "wget", "-q", "-O", "/dev/null", f"http://127.0.0.1:{HEALTH_PORT}/healthz"])
CERT = f"{SECRETS_DIR}/tls.crt"
KEY = f"{SECRETS_DIR}/tls.key"
CA = f"{SECRETS_DIR}/ca.pem"
# Every Caddy here runs the Caddyfile uploaded beside its certificates.
CADDY_RUN = ["caddy", "run", "--config", f"{SECRETS_DIR}/Caddyfile", "--adapter", "caddyfile"]


# Ollama's inference API (https://github.com/ollama/ollama/blob/main/docs/api.md and
# its OpenAI-compatible endpoints): what Open WebUI needs to list, describe and run
# the pinned models. Pull, push, create, copy, delete and blobs are absent: models
# are declared in the stack and synced on the host, never managed from the cluster.
OLLAMA_INFERENCE_GET = ("/api/tags", "/api/version", "/api/ps", "/v1/models", "/v1/models/*")
OLLAMA_INFERENCE_POST = (
    "/api/chat",
    "/api/generate",
    "/api/embed",
    "/api/embeddings",
    "/api/show",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
)
# The client certificate's subject, as Caddy 2.6+ shows it (Go's `pkix.Name.String()`).
CLIENT_SUBJECT = "{http.request.tls.client.subject}"


@dataclass(frozen=True)
class Grant:
    """Who may use an edge route: client certificate subjects, optionally only some methods and paths.

    Paths are matched after the route's prefix is stripped (exact, or a `*` suffix);
    no paths means every path of the route, no methods every method.
    """

    subjects: tuple[str, ...]
    methods: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.subjects:
            raise ValueError("a grant names at least one client certificate subject")
        for subject in self.subjects:
            if '"' in subject or "\\" in subject or "\n" in subject or "{" in subject:
                raise ValueError(f"client subject {subject!r} cannot be matched literally in a Caddyfile")
        for path in self.paths:
            if not path.startswith("/") or any(c.isspace() or c in '"{}' for c in path):
                raise ValueError(f"grant path {path!r} is not a plain absolute path")


def ollama_grants(inference: Sequence[str], version_probe: Sequence[str] = ()) -> tuple[Grant, ...]:
    """Ollama behind an edge: `inference` clients get the inference API, `version_probe` only its version."""
    grants = [
        Grant(tuple(inference), ("GET", "HEAD"), OLLAMA_INFERENCE_GET),
        Grant(tuple(inference), ("POST",), OLLAMA_INFERENCE_POST),
    ]
    if version_probe:
        grants.append(Grant(tuple(version_probe), ("GET",), ("/api/version",)))
    return tuple(grants)


@dataclass(frozen=True)
class Route:
    """A path prefix and the upstream (`host:port` on the private network) it goes to.

    On a TLS edge a route answers only the clients its `grants` name (403 for any
    other certificate of the CA): an edge route without grants is refused.
    """

    prefix: str
    upstream: str
    strip_prefix: bool = True
    basic_auth_user: str | None = None
    grants: tuple[Grant, ...] = ()


@dataclass(frozen=True)
class Upstream:
    """A remote host's edge, as the egress reaches it."""

    name: str
    address: str
    port: int
    prefix: str = "/ollama"


def _global(*options: str) -> list[str]:
    # No `persist_config off`: Caddy 2.6 (Debian's, which the tests run) rejects
    # the option. What Caddy autosaves goes to /config, a tmpfs in every Caddy
    # container here, so nothing outlives the container either way.
    lines = ["{", "\tadmin off"]
    lines += [f"\t{o}" for o in options]
    return [*lines, "}", ""]


def _health_site() -> list[str]:
    # A plain listener on the container's loopback, for the Docker healthcheck.
    return [f"http://127.0.0.1:{HEALTH_PORT} {{", '\trespond /healthz "ok" 200', "}", ""]


def _quoted(value: str) -> str:
    return f'"{value}"'


def _proxy(upstream: str, indent: str) -> list[str]:
    return [f"{indent}reverse_proxy {upstream} {{", f"{indent}\tflush_interval -1", f"{indent}}}"]


def _route_block(route: Route, basic_auth_hash: str | None) -> list[str]:
    directive = "handle_path" if route.strip_prefix else "handle"
    lines = [f"\t{directive} {route.prefix}* {{"]
    if route.basic_auth_user is not None:
        if basic_auth_hash is None:
            raise ValueError(f"route {route.prefix}: basic auth needs a password hash")
        # `basicauth` is understood by Caddy 2.6 and (deprecated, still accepted) by 2.8+.
        lines += ["\t\tbasicauth {", f"\t\t\t{route.basic_auth_user} {basic_auth_hash}", "\t\t}"]
    lines += [*_proxy(route.upstream, "\t\t"), "\t}"]
    return lines


def _granted_route_block(index: int, route: Route) -> list[str]:
    """An edge route: each grant a named matcher (subject AND method AND path), anything else 403.

    Matchers are evaluated after `handle_path` strips the prefix, so grant paths
    are the upstream's own. Caddy's path matcher compares the cleaned, unescaped
    path, so a `..` or `%xx` spelling of a refused endpoint is refused too.
    """
    if not route.grants:
        raise ValueError(f"edge route {route.prefix}: no client is granted it (every edge route names its clients)")
    directive = "handle_path" if route.strip_prefix else "handle"
    lines = [f"\t{directive} {route.prefix}* {{"]
    for i, grant in enumerate(route.grants):
        matcher = f"@route{index}_grant{i}"
        lines += [
            f"\t\t{matcher} {{",
            f"\t\t\tvars {CLIENT_SUBJECT} {' '.join(_quoted(s) for s in grant.subjects)}",
        ]
        if grant.methods:
            lines.append(f"\t\t\tmethod {' '.join(grant.methods)}")
        if grant.paths:
            lines.append(f"\t\t\tpath {' '.join(grant.paths)}")
        lines += ["\t\t}", f"\t\thandle {matcher} {{", *_proxy(route.upstream, "\t\t\t"), "\t\t}"]
    lines += ["\t\thandle {", '\t\t\trespond "forbidden for this client certificate" 403', "\t\t}", "\t}"]
    return lines


def edge_caddyfile(routes: Sequence[Route]) -> str:
    """A host's edge: TLS with a required, verified client certificate from the CA,
    and per route only the certificates (subjects) its grants name."""
    # With client_auth Caddy turns on strict SNI-Host matching and answers 421
    # whenever the Host header is not the TLS server name: the egress (SNI = the
    # host's name, Host = the egress's own) and Prometheus (Host = an address)
    # would always get 421. The check guards listeners whose sites differ in
    # client auth; this listener has one site and demands a certificate on every
    # connection, so it guards nothing here.
    lines = _global("auto_https off", "servers {\n\t\tstrict_sni_host insecure_off\n\t}")
    lines += _health_site()
    lines += [
        f":{EDGE_PORT} {{",
        f"\ttls {CERT} {KEY} {{",
        "\t\tprotocols tls1.2 tls1.3",
        "\t\tclient_auth {",
        "\t\t\tmode require_and_verify",
        f"\t\t\ttrusted_ca_cert_file {CA}",
        "\t\t}",
        "\t}",
    ]
    for index, route in enumerate(routes):
        lines += _granted_route_block(index, route)
    lines += ["\trespond 404", "}", ""]
    return "\n".join(lines)


def egress_caddyfile(upstreams: Sequence[Upstream], base_port: int = EGRESS_BASE_PORT) -> str:
    """The head's egress: one plain listener per remote edge, mutual TLS onwards."""
    lines = _global("auto_https off")
    lines += _health_site()
    for i, upstream in enumerate(upstreams):
        lines += [
            f":{base_port + i} {{",
            f"\trewrite * {upstream.prefix}{{uri}}",
            f"\treverse_proxy https://{host_port(upstream.address, upstream.port)} {{",
            "\t\tflush_interval -1",
            "\t\ttransport http {",
            f"\t\t\ttls_client_auth {CERT} {KEY}",
            f"\t\t\ttls_trusted_ca_certs {CA}",
            f"\t\t\ttls_server_name {upstream.name}",
            "\t\t}",
            "\t}",
            "}",
            "",
        ]
    return "\n".join(lines)


def proxy_caddyfile(
    domain: str,
    *,
    acme_email: str | None,
    routes: Sequence[Route],
    default_upstream: str,
    basic_auth_hash: str | None = None,
) -> str:
    """The public site: ACME when an email is given, else the internal CA's certificate."""
    options = [f"http_port {HTTP_PORT}", f"https_port {HTTPS_PORT}", "auto_https disable_redirects"]
    if acme_email is not None:
        options.append(f"email {acme_email}")
    lines = _global(*options)
    lines += _health_site()
    # Caddy's own redirect would name the container's port (8443): say 443 here.
    lines += [f"http://{domain} {{", "\tredir https://{host}{uri} permanent", "}", ""]
    lines += [f"{domain} {{"]
    if acme_email is None:
        lines += [f"\ttls {CERT} {KEY}"]
    lines += [
        "\tencode zstd gzip",
        "\theader {",
        '\t\tStrict-Transport-Security "max-age=31536000; includeSubDomains"',
        "\t\tX-Content-Type-Options nosniff",
        "\t\tReferrer-Policy strict-origin-when-cross-origin",
        "\t\t-Server",
        "\t}",
    ]
    for route in routes:
        lines += _route_block(route, basic_auth_hash)
    lines += [
        "\thandle {",
        f"\t\treverse_proxy {default_upstream} {{",
        "\t\t\tflush_interval -1",
        "\t\t}",
        "\t}",
        "}",
        "",
    ]
    return "\n".join(lines)


class TlsEdgeArgs(TypedDict):
    """A remote host's edge: its certificate and what it routes."""

    image: str
    network: pulumi.Input[str]
    routes: Sequence[Route]
    tls_files: dict[str, pulumi.Output[str]]
    """`tls.key`, `tls.crt`, `ca.pem` from the internal CA."""
    address: str
    """The host's cluster address the edge port is published on."""
    port: int
    labels: dict[str, str]
    memory_mb: int
    """The container's limits (`resources.edge`, counted by the host's memory check)."""
    cpus: float


class TlsEdge(pulumi.ComponentResource):
    """Caddy that admits only clients with a certificate from the internal CA."""

    url: str
    """`https://address:port` — reachable only with a client certificate."""

    def __init__(self, name: str, args: TlsEdgeArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("cluster-ai:index:TlsEdge", name, {}, opts)
        self.container = _internal_caddy(
            name,
            service="edge",
            alias="edge",
            caddyfile=edge_caddyfile(args["routes"]),
            args=args,
            publish=[Publish(EDGE_PORT, args["port"], args["address"])],
            opts=child_options(self, opts),
        )
        self.url = f"https://{host_port(args['address'], args['port'])}"
        self.register_outputs({"url": self.url})


class EgressArgs(TypedDict):
    """The head's egress to every remote edge."""

    image: str
    network: pulumi.Input[str]
    """Where its clients (Open WebUI) reach it, by its alias."""
    outbound_network: NotRequired[pulumi.Input[str]]
    """A network with a route to other hosts, joined without an alias (nobody dials the egress there)."""
    upstreams: Sequence[Upstream]
    tls_files: dict[str, pulumi.Output[str]]
    """The head's client certificate."""
    labels: dict[str, str]
    memory_mb: int
    """The container's limits (`resources.egress`, counted by the head's memory check)."""
    cpus: float


class Egress(pulumi.ComponentResource):
    """Plain HTTP in on the private network, mutual TLS out to the edges."""

    urls: list[str]
    """One URL per upstream, in order: what Open WebUI lists in OLLAMA_BASE_URLS."""

    def __init__(self, name: str, args: EgressArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("cluster-ai:index:Egress", name, {}, opts)
        self.container = _internal_caddy(
            name,
            service="egress",
            alias=EGRESS_ALIAS,
            caddyfile=egress_caddyfile(args["upstreams"]),
            args=args,
            publish=[],
            opts=child_options(self, opts),
            extra_networks=[args["outbound_network"]] if "outbound_network" in args else [],
        )
        self.urls = [f"http://{EGRESS_ALIAS}:{EGRESS_BASE_PORT + i}" for i in range(len(args["upstreams"]))]
        self.register_outputs({"urls": self.urls})


class PublicProxyArgs(TypedDict):
    """The public entry on the head."""

    image: str
    network: pulumi.Input[str]
    """The public network: the proxy's alias, and the upstreams users reach (Open WebUI, Grafana)."""
    domain: str
    listen_address: str
    routes: Sequence[Route]
    default_upstream: str
    labels: dict[str, str]
    protect: bool
    memory_mb: int
    """The container's limits (`resources.proxy`, counted by the head's memory check)."""
    cpus: float
    acme_email: NotRequired[str]
    """ACME (Let's Encrypt) account email; without it the internal CA's certificate is served."""
    tls_files: NotRequired[dict[str, pulumi.Output[str]]]
    """The site certificate from the internal CA (internal mode)."""
    basic_auth_hash: NotRequired[pulumi.Output[str]]
    """bcrypt hash for routes with basic auth."""
    upstream_networks: NotRequired[Sequence[pulumi.Input[str]]]
    """Further networks it joins, without an alias, to reach upstreams kept off the public one (the Dask dashboard)."""


class PublicProxy(pulumi.ComponentResource):
    """The only container published on a public address: 443 and 80."""

    url: str

    def __init__(self, name: str, args: PublicProxyArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("cluster-ai:index:PublicProxy", name, {}, opts)
        child = child_options(self, opts)
        acme_email = args.get("acme_email")
        if acme_email is None and "tls_files" not in args:
            raise ValueError(f"{name}: without ACME the proxy needs tls_files from the internal CA")
        routes, domain, upstream = list(args["routes"]), args["domain"], args["default_upstream"]
        hash_input = args.get("basic_auth_hash")
        caddyfile = pulumi.Output.from_input(hash_input).apply(
            lambda h: proxy_caddyfile(
                domain, acme_email=acme_email, routes=routes, default_upstream=upstream, basic_auth_hash=h
            )
        )
        # ACME account and certificates must survive a container replacement
        # (rate limits); the volume holds nothing else.
        state = data_volume(f"{name}-state", "proxy", protect=args["protect"], labels=args["labels"], opts=child)
        self.container = hardened_container(
            name,
            ServiceContainer(
                service="proxy",
                image=args["image"],
                networks=[
                    NetworkAttachment(args["network"], aliases=["proxy"]),
                    *(NetworkAttachment(net) for net in args.get("upstream_networks", ())),
                ],
                command=CADDY_RUN,
                secret_files={**args.get("tls_files", {}), "Caddyfile": pulumi.Output.secret(caddyfile)},
                mounts=[Mount(volume=state.name, target="/data")],
                tmpfs={"/config": "rw,noexec,nosuid,size=16m", "/tmp": "rw,noexec,nosuid,size=16m"},
                publish=[
                    Publish(HTTPS_PORT, 443, args["listen_address"], public=True),
                    Publish(HTTP_PORT, 80, args["listen_address"], public=True),
                ],
                # The image keeps ACME state under root-owned /data; root with
                # no capabilities, on high ports inside the container.
                user=None,
                healthcheck=HEALTH,
                memory_mb=args["memory_mb"],
                cpus=args["cpus"],
                labels=args["labels"],
            ),
            child,
        )
        self.url = f"https://{domain}"
        self.register_outputs({"url": self.url})


def _internal_caddy(
    name: str,
    *,
    service: str,
    alias: str,
    caddyfile: str,
    args: TlsEdgeArgs | EgressArgs,
    publish: list[Publish],
    opts: pulumi.ResourceOptions,
    extra_networks: Sequence[pulumi.Input[str]] = (),
) -> docker.Container:
    """A stateless Caddy of the cluster's own (edge or egress): non-root, state on tmpfs,
    its Caddyfile and certificates as secret files."""
    return hardened_container(
        name,
        ServiceContainer(
            service=service,
            image=args["image"],
            networks=[
                NetworkAttachment(args["network"], aliases=[alias]),
                *(NetworkAttachment(net) for net in extra_networks),
            ],
            command=CADDY_RUN,
            secret_files={**args["tls_files"], "Caddyfile": pulumi.Output.from_input(caddyfile)},
            tmpfs=_caddy_tmpfs(),
            publish=publish,
            user=CADDY_UID,
            healthcheck=HEALTH,
            memory_mb=args["memory_mb"],
            cpus=args["cpus"],
            labels=args["labels"],
        ),
        opts,
    )


def _caddy_tmpfs() -> dict[str, str]:
    uid, gid = CADDY_UID.split(":")
    opts = f"rw,noexec,nosuid,size=16m,uid={uid},gid={gid},mode=0700"
    return {"/data": opts, "/config": opts}
