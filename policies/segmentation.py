"""Least privilege between services: who may reach what, inside the cluster.

- `edge-routes-name-their-clients`: a host's TLS edge admits any certificate of
  the internal CA at the handshake, so each of its routes must say which client
  certificates (subjects) it serves, and refuse every other one. Read from the
  edge's Caddyfile, wherever the graph carries it: in the edge container's own
  uploads, or in those of its file holder (`<edge>-files`).
- `only-front-services-on-public-network`: the head's public network (label
  `cluster-ai.network=public`) holds the internet-facing proxy and what users
  reach through it; everything else stays on internal networks.

Both are stack rules: each needs more than one resource (the edge and its
holder; a container and the networks it names).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pulumi_policy import EnforcementLevel, Severity, StackValidationArgs

from policies.cis import is_file_holder
from policies.model import (
    CONTAINER,
    NETWORK,
    Group,
    Kind,
    ReportViolation,
    Rule,
    is_unknown,
    items,
    labels,
    mapping,
    register,
    service_of,
    settings,
)

NETWORK_LABEL = "cluster-ai.network"
# The matcher components/caddy.py writes for a grant: the client certificate's subject.
SUBJECT_MATCH = "vars {http.request.tls.client.subject}"


# --- a Caddyfile as nested blocks ----------------------------------------------------


@dataclass
class Block:
    """A Caddyfile block: its head (`handle_path /ollama*`) and its lines and sub-blocks."""

    head: str
    body: list[str | Block] = field(default_factory=list)

    def blocks(self, *prefixes: str) -> list[Block]:
        return [b for b in self.body if isinstance(b, Block) and b.head.split(" ", 1)[0] in prefixes]

    def lines(self) -> list[str]:
        return [line for line in self.body if isinstance(line, str)]

    def walk(self) -> list[str | Block]:
        """Every line and block under this one, depth first."""
        out: list[str | Block] = []
        for item in self.body:
            out.append(item)
            if isinstance(item, Block):
                out += item.walk()
        return out


def parse_caddyfile(text: str) -> Block:
    """Blocks by `{` at a line's end and `}` alone on a line (the shape Caddy's own formatter writes).

    Raises ValueError on unbalanced braces.
    """
    root = Block("")
    stack = [root]
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line == "}":
            if len(stack) == 1:
                raise ValueError(f"line {number}: `}}` closes nothing")
            stack.pop()
        elif line.endswith("{"):
            block = Block(line[:-1].strip())
            stack[-1].body.append(block)
            stack.append(block)
        else:
            stack[-1].body.append(line)
    if len(stack) != 1:
        raise ValueError(f"{len(stack) - 1} block(s) left open")
    return root


def _requires_client_certificates(site: Block) -> bool:
    for tls in site.blocks("tls"):
        for auth in tls.blocks("client_auth"):
            words = [line.split() for line in auth.lines()]
            modes = {w[1] for w in words if len(w) > 1 and w[0] == "mode"}
            trusted = any(w and w[0] in ("trusted_ca_cert_file", "trust_pool", "trusted_ca_cert") for w in words)
            if modes == {"require_and_verify"} and trusted:
                return True
    return False


def _granted_matchers(route: Block) -> dict[str, list[str]]:
    """`@name` -> the subjects its `vars` line names, for each named matcher of a route."""
    grants = {}
    for matcher in (b for b in route.body if isinstance(b, Block) and b.head.startswith("@")):
        subjects = [
            line.removeprefix(SUBJECT_MATCH).strip() for line in matcher.lines() if line.startswith(SUBJECT_MATCH)
        ]
        if subjects and all(subjects):
            grants[matcher.head] = subjects
    return grants


def _proxies(items_: Sequence[str | Block]) -> bool:
    return any(
        (isinstance(i, str) and i.split(" ", 1)[0] == "reverse_proxy")
        or (isinstance(i, Block) and i.head.split(" ", 1)[0] == "reverse_proxy")
        for i in items_
    )


def route_problems(caddyfile: str) -> list[str]:
    """What in an edge's Caddyfile lets a client of the CA through without being named."""
    try:
        root = parse_caddyfile(caddyfile)
    except ValueError as exc:
        return [f"its Caddyfile does not parse ({exc})"]
    sites = [b for b in root.body if isinstance(b, Block) and _requires_client_certificates(b)]
    if not sites:
        return ["no site requires and verifies a client certificate from a trusted CA"]
    problems = []
    for site in sites:
        if _proxies(site.body):
            problems.append(f"site {site.head!r} proxies outside any route: every client of the CA gets through")
        for route in site.blocks("handle", "handle_path", "route"):
            problems += _route_problems(route)
    return problems


def _route_problems(route: Block) -> list[str]:
    grants = _granted_matchers(route)
    handlers = route.blocks("handle")
    granted = [h for h in handlers if len(h.head.split()) == 2 and h.head.split()[1] in grants]
    refused = [
        h
        for h in handlers
        if h.head == "handle"
        and not _proxies(h.walk())
        and any(line.startswith("respond") and " 403" in line for line in h.lines())
    ]
    problems = []
    if not granted:
        problems.append(f"route {route.head!r} names no client certificate subject it serves")
    if not refused:
        problems.append(f"route {route.head!r} does not answer 403 to the CA's other clients")
    rest = [
        i for i in route.body if not (isinstance(i, Block) and (i in granted or i in refused or i.head.startswith("@")))
    ]
    if _proxies(rest) or any(_proxies(b.walk()) for b in rest if isinstance(b, Block)):
        problems.append(f"route {route.head!r} proxies outside the handlers of its named clients")
    return problems


# --- edge-routes-name-their-clients --------------------------------------------------


def _caddyfile_of(name: str, containers: Mapping[str, Mapping[str, Any]]) -> str | None:
    """The edge's Caddyfile: in its own uploads, or in its file holder's."""
    for candidate in (name, f"{name}-files"):
        props = containers.get(candidate)
        if props is None:
            continue
        for upload in items(props.get("uploads")):
            upload = mapping(upload)
            if str(upload.get("file", "")).endswith("/Caddyfile"):
                content = upload.get("content")
                return content if isinstance(content, str) else None
    return None


def edge_routes_name_their_clients(args: StackValidationArgs, report: ReportViolation) -> None:
    config = settings(args, edge_routes_name_their_clients)
    edge_services = set(config.get("services") or [])
    containers = {r.name: r.props for r in args.resources if r.resource_type == CONTAINER}
    for resource in args.resources:
        if resource.resource_type != CONTAINER:
            continue
        props = resource.props
        # A holder is skipped by what it is (never started, no network), not by its label:
        # a running edge that calls itself a holder is still an edge.
        if service_of(props) not in edge_services or is_file_holder(props):
            continue
        caddyfile = _caddyfile_of(resource.name, containers)
        who = f"{resource.name} ({service_of(props)})"
        if caddyfile is None:
            report(f"{who} carries no Caddyfile (nor does {resource.name}-files): its routes cannot be checked.",
                   resource.urn)  # fmt: skip
            continue
        if is_unknown(caddyfile):
            continue
        for problem in route_problems(caddyfile):
            report(f"{who}: {problem}.", resource.urn)


# --- only-front-services-on-public-network -------------------------------------------


def only_front_services_on_public_network(args: StackValidationArgs, report: ReportViolation) -> None:
    config = settings(args, only_front_services_on_public_network)
    allowed = config.get("services") or {}
    purpose = str(config.get("purpose") or "public")
    public = {
        str(r.props.get("name"))
        for r in args.resources
        if r.resource_type == NETWORK and labels(r.props).get(NETWORK_LABEL) == purpose and r.props.get("name")
    }
    if not public:
        return
    for resource in args.resources:
        if resource.resource_type != CONTAINER:
            continue
        service = service_of(resource.props)
        joined = {str(mapping(n).get("name")) for n in items(resource.props.get("networksAdvanced"))}
        on_public = sorted(joined & public)
        if on_public and service not in allowed:
            report(f"{resource.name} ({service or 'no service label'}) joins the {purpose} network "
                   f"{', '.join(on_public)}: only {', '.join(sorted(allowed)) or 'nothing'} may sit beside the "
                   "internet-facing proxy.", resource.urn)  # fmt: skip


RULES = register(
    [
        Rule(
            name="edge-routes-name-their-clients",
            title="TLS edge routes name their clients",
            description="Every route of a TLS edge serves only the client certificate subjects it names and "
            "answers 403 to every other certificate of the CA.",
            remediation="Give each edge `Route` its `grants` (components/caddy.py): the subjects (and methods and "
            "paths) it serves; the edge's Caddyfile then refuses every other client of the CA.",
            severity=Severity.HIGH,
            enforcement=EnforcementLevel.MANDATORY,
            validate=edge_routes_name_their_clients,
            kind=Kind.STACK,
            group=Group.CLUSTER,
            config={
                "services": {
                    "type": "array",
                    "items": {"type": "string"},
                    "default": ["edge"],
                    "description": "Services (cluster-ai.service label) that are TLS edges.",
                }
            },
        ),
        Rule(
            name="only-front-services-on-public-network",
            title="Only front services on the public network",
            description="Only the proxy and what users reach through it (and the prober that checks them) join "
            "the network labelled cluster-ai.network=public.",
            remediation="Attach the container to the internal network of what it serves (data, inference, "
            "observe, dashboard or the host's own, components/host.py), never to the public one.",
            severity=Severity.HIGH,
            enforcement=EnforcementLevel.MANDATORY,
            validate=only_front_services_on_public_network,
            kind=Kind.STACK,
            group=Group.CLUSTER,
            config={
                "purpose": {
                    "type": "string",
                    "default": "public",
                    "description": "The cluster-ai.network label of the internet-facing network.",
                },
                "services": {
                    "type": "object",
                    "additionalProperties": {"type": "string", "minLength": 10},
                    "default": {
                        "proxy": "the internet-facing entry itself",
                        "webui": "Open WebUI, the proxy's default upstream",
                        "grafana": "Grafana, served by the proxy under /grafana",
                        "blackbox-exporter": "probes Open WebUI, Grafana and the proxy where users reach them",
                    },
                    "description": "Services that may join the public network, and why.",
                },
            },
        ),
    ]
)
