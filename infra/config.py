"""The stack config as one frozen, validated spec.

Every knob of the cluster and every default lives here, once. `load_spec` turns the
stack's flat Pulumi config (``cluster-ai:hosts`` -> JSON text, ...) into a
`ClusterSpec`, or raises `ConfigError` listing *every* problem, each named by the
config key path a user would type (``cluster-ai:hosts[1].gpus: must be >= 0``).
The program calls it before it registers anything, so a bad key never leaves a
half-built stack behind.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import ipaddress
import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property
from typing import Annotated, Any, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from components.addresses import url_host

NAMESPACE = "cluster-ai"

# What a healthy host keeps for itself (kernel, Docker, sshd) before any
# container limit is counted: a fraction of its memory.
HOST_MEMORY_RESERVE = 0.10
# The smallest memory a Dask worker container is worth starting with.
MIN_WORKER_MEMORY_MB = 1024
# The share of a worker container's memory Dask itself may use: the rest is
# headroom so the nanny restarts a worker before the kernel OOM-kills it.
DASK_MEMORY_SHARE = 0.85


class ConfigError(Exception):
    """The stack config is invalid; `problems` holds one line per problem."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = tuple(problems)
        super().__init__(self.render())

    def render(self) -> str:
        lines = [f"invalid stack config ({len(self.problems)} problem(s)):"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


class Environment(StrEnum):
    """Which shape of cluster: `prod` is strict about pins, `dev` is not."""

    DEV = "dev"
    PROD = "prod"


class Role(StrEnum):
    """What a host runs: the head (scheduler, Open WebUI, PostgreSQL, Redis) or
    workers (Dask workers and Ollama)."""

    HEAD = "head"
    WORKER = "worker"


# Names end up in container names, DNS aliases and URNs: keep them boring.
HOST_NAME = r"^[a-z](?:[a-z0-9-]{0,30}[a-z0-9])?$"
# An Ollama model reference with an explicit tag: `qwen2.5:0.5b`, `library/x:7b`; from a
# private registry `host[:port]/namespace/name:tag` (`ModelPin.name` checks the host).
MODEL_NAME = r"^[a-z0-9][a-z0-9._-]*(?:/[a-z0-9][a-z0-9._-]*)?:[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
MODEL_REGISTRY_HOST = re.compile(r"^(?P<host>[^:/\[\]]+)(?::(?P<port>[0-9]{1,5}))?$")
DIGEST_HEX = re.compile(r"^(?:sha256:)?([0-9a-f]{64})$")
# registry/repo[:tag][@sha256:digest], as Docker parses a reference.
IMAGE_REF = re.compile(
    r"^(?P<repo>[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]+)?(?:/[a-z0-9]+(?:[._-]{1,2}[a-z0-9]+)*)*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?"
    r"(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)
DNS_NAME = re.compile(
    r"^(?=.{1,253}$)(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$"
)
EMAIL = r"^[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9.-]{1,253}$"
DOCKER_SOCKET = r"^unix:///[A-Za-z0-9._/-]+$"
LOCAL_DOCKER = "unix:///var/run/docker.sock"
# Host key types OpenSSH writes in known_hosts and .pub files, and the type name
# each one's base64 blob starts with (the blob is self-describing).
HOST_KEY_TYPES = {
    "ssh-ed25519": "ssh-ed25519",
    "ecdsa-sha2-nistp256": "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384": "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521": "ecdsa-sha2-nistp521",
    "ssh-rsa": "ssh-rsa",
}
HOST_KEY_EXPECTED = (
    "must be one host public key as `ssh-keyscan -t ed25519 <address>` or a .pub file prints it: "
    "`ssh-ed25519 AAAAC3Nza...` (a leading host field and a trailing comment are accepted)"
)


def _integral(value: Any) -> Any:
    """YAML tools and `pulumi config set --path` write whole numbers as `4.0`: take them as 4."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# An int field that also takes an integral float (`cpus: 4.0`); `4.5` and `true` stay refused.
Int = Annotated[int, BeforeValidator(_integral)]
Port = Annotated[Int, Field(ge=1024, le=65535)]


def parse_ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An IP address as the schema accepts it: no IPv6 zone (`%...`), which Python accepts
    with almost any characters in it and no sink (URL, nftables, ssh) can carry."""
    if "%" in value:
        raise ValueError("must not carry an IPv6 zone (`%<interface>`): give the address alone")
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise ValueError("must be an IP address") from None


def normalise_host_key(value: str) -> str:
    """`[host] type base64 [comment]` -> `type base64`, the blob checked to be a key of that type."""
    if "\n" in value.strip() or "\r" in value:
        raise ValueError("holds more than one line: pin exactly one key")
    tokens = value.split()
    # ssh-keyscan and known_hosts put the host first; a .pub file puts a comment last.
    at = next((i for i, t in enumerate(tokens[:2]) if t in HOST_KEY_TYPES), None)
    if at is None or at + 1 >= len(tokens):
        raise ValueError(HOST_KEY_EXPECTED)
    kind, blob = tokens[at], tokens[at + 1]
    try:
        raw = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{HOST_KEY_EXPECTED}; the key after {kind} is not base64") from None
    length = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else 0
    if len(raw) < 4 + length + 16 or raw[4 : 4 + length] != HOST_KEY_TYPES[kind].encode():
        raise ValueError(f"{HOST_KEY_EXPECTED}; the base64 part is not a {kind} key")
    return f"{kind} {blob}"


class _Model(BaseModel):
    """Config models: immutable, camelCase keys as users write them, no unknown keys."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=False,
        strict=True,
    )


@dataclass(frozen=True)
class ImageRef:
    """A parsed container image reference."""

    repo: str
    tag: str | None
    digest: str | None

    @property
    def pinned_by_digest(self) -> bool:
        return self.digest is not None


# A sha256 digest is 64 hex digits with no pattern; one typed to look like one has
# them: a run (`0123...`), a repeat (`deadbeef` x8), interleaved counts (`0d1c2b3a...`).
# The most frequent step between digits some stride apart, counted: in 200,000
# real sha256 digests it never exceeded 17 (mean 9.5); the placeholders found in
# this project's history and in public stack files score 29 to 63.
MADE_UP_SCORE = 24
MAX_STRIDE = 12


def looks_made_up(hex_digest: str) -> bool:
    """Whether a 64-hex digest was typed by hand (a placeholder) rather than computed."""
    values = [int(c, 16) for c in hex_digest.removeprefix("sha256:")]
    best = 0
    for stride in range(1, MAX_STRIDE + 1):
        steps = Counter((values[i + stride] - values[i]) % 16 for i in range(len(values) - stride))
        best = max(best, max(steps.values(), default=0))
    return best >= MADE_UP_SCORE


def parse_image(ref: str) -> ImageRef:
    """Split `repo[:tag][@digest]`; raises ValueError for anything Docker would reject."""
    match = IMAGE_REF.fullmatch(ref)
    if match is None:
        raise ValueError("is not an image reference (repo[:tag][@sha256:<64 hex>])")
    return ImageRef(match["repo"], match["tag"], match["digest"])


def _validate_image(value: str) -> str:
    ref = parse_image(value)
    if ref.tag is None and ref.digest is None:
        raise ValueError("must name a version tag or a digest, not just a repository")
    if ref.tag == "latest" and ref.digest is None:
        raise ValueError("must not float on ':latest'; pin a version tag or a digest")
    return value


class Images(_Model):
    """The container image of each service. Tags in dev, digests in prod."""

    dask: str = "ghcr.io/dask/dask:2026.8.0-py3.12"
    """Scheduler and workers; its version must equal `dask.version`."""
    ollama: str = "ollama/ollama:0.13.5"
    webui: str = "ghcr.io/open-webui/open-webui:v0.12.4"
    """>= 0.7: creates the admin from WEBUI_ADMIN_* at start; the same release in every stack
    (ci/versions.env WEBUI_VERSION is the one the integration tests run)."""
    postgres: str = "postgres:16.6-bookworm"
    redis: str = "redis:7.4.1-bookworm"
    caddy: str = "caddy:2.8.4"
    """The public proxy, the per-host TLS edges and the head's egress."""
    dask_gpu: str | None = None
    """GPU workers' image (CUDA, dask-cuda) at `dask.version`; defaults to `dask`."""
    # Monitoring (components/monitoring.py): the head's Prometheus, Alertmanager,
    # Grafana, Loki and probes; every host's exporters and log shipper.
    prometheus: str = "prom/prometheus:v3.5.0"
    alertmanager: str = "prom/alertmanager:v0.28.1"
    grafana: str = "grafana/grafana:12.3.1"
    loki: str = "grafana/loki:3.7.6"
    """3.7 has `loki -health`, the only healthcheck its distroless image can run."""
    alloy: str = "grafana/alloy:v1.19.2"
    """The log shipper on every host (Promtail's successor)."""
    node_exporter: str = "prom/node-exporter:v1.9.1"
    cadvisor: str = "gcr.io/cadvisor/cadvisor:v0.52.1"
    dcgm_exporter: str = "nvcr.io/nvidia/k8s/dcgm-exporter:4.4.1-4.6.0-ubuntu22.04"
    """GPU hosts only; the Ubuntu variant has the bash its healthcheck uses."""
    postgres_exporter: str = "quay.io/prometheuscommunity/postgres-exporter:v0.17.1"
    redis_exporter: str = "oliver006/redis_exporter:v1.74.0-alpine"
    """The alpine variant: the default image is FROM scratch, with nothing to run a healthcheck."""
    blackbox_exporter: str = "prom/blackbox-exporter:v0.27.0"

    @field_validator("*")
    @classmethod
    def _pinned(cls, value: str | None) -> str | None:
        return None if value is None else _validate_image(value)

    @property
    def gpu_worker(self) -> str:
        return self.dask_gpu or self.dask

    def items(self) -> list[tuple[str, str]]:
        """(config key, reference) pairs of the images set, in declaration order."""
        return [
            (to_camel(name), getattr(self, name)) for name in type(self).model_fields if getattr(self, name) is not None
        ]


class ServiceLimit(_Model):
    """A container's memory (MB) and CPU limit."""

    memory_mb: Int = Field(ge=16, le=4_194_304)
    cpus: float = Field(gt=0, le=1024)


def _limit(memory_mb: int, cpus: float) -> ServiceLimit:
    return ServiceLimit.model_validate({"memoryMb": memory_mb, "cpus": cpus})


class Resources(_Model):
    """Limits of the head and Ollama services; workers get what their host has left."""

    scheduler: ServiceLimit = _limit(512, 1)
    webui: ServiceLimit = _limit(1536, 1)
    postgres: ServiceLimit = _limit(512, 1)
    redis: ServiceLimit = _limit(256, 0.5)
    ollama: ServiceLimit = _limit(3072, 2)
    # Monitoring on the head.
    prometheus: ServiceLimit = _limit(1024, 1)
    alertmanager: ServiceLimit = _limit(128, 0.25)
    grafana: ServiceLimit = _limit(384, 0.5)
    loki: ServiceLimit = _limit(512, 0.5)
    blackbox_exporter: ServiceLimit = _limit(64, 0.25)
    postgres_exporter: ServiceLimit = _limit(64, 0.25)
    redis_exporter: ServiceLimit = _limit(64, 0.25)
    # Monitoring on every host (DCGM on GPU hosts only).
    node_exporter: ServiceLimit = _limit(128, 0.25)
    cadvisor: ServiceLimit = _limit(256, 0.5)
    alloy: ServiceLimit = _limit(256, 0.5)
    dcgm_exporter: ServiceLimit = _limit(512, 0.5)
    # The cluster's own plumbing: counted on the host like every other container.
    proxy: ServiceLimit = _limit(512, 1)
    """The public proxy on the head (with `proxy`)."""
    edge: ServiceLimit = _limit(256, 1)
    """Each host's TLS edge (multi-host stacks)."""
    egress: ServiceLimit = _limit(256, 1)
    """The head's egress to the other hosts' Ollamas (multi-host stacks)."""
    backup: ServiceLimit = _limit(256, 0.5)
    """The PostgreSQL backup container on the head (with `backups.enabled`)."""
    backup_metrics: ServiceLimit = _limit(32, 0.1)
    model_sync: ServiceLimit = _limit(256, 0.5)
    """Each Ollama's run-once model sync task: it runs beside Ollama, so its memory is counted."""
    """The sidecar publishing the last backup's time to the node exporter (backups and monitoring)."""


class SshSpec(_Model):
    """How to reach a remote host: key-only SSH, its host key pinned."""

    user: str = Field(pattern=r"^[a-z_][a-z0-9_-]{0,31}$")
    port: Int = Field(default=22, ge=1, le=65535)
    private_key_path: str = Field(pattern=r"^[A-Za-z0-9_./~+@-]{1,255}$")
    """The key on the machine that runs Pulumi (`~` is expanded)."""
    host_key: str
    """The host's public key, stored as `type base64` (as `ssh-keyscan` prints it after the host)."""

    @field_validator("private_key_path")
    @classmethod
    def _key_path(cls, value: str) -> str:
        # `-i -o...` would be read by ssh as an option, not a file.
        if value.startswith("-"):
            raise ValueError("must be a file path, not start with '-'")
        return value

    @field_validator("host_key")
    @classmethod
    def _host_key(cls, value: str) -> str:
        return normalise_host_key(value)


class HostSpec(_Model):
    """One Docker host of the cluster."""

    name: str = Field(pattern=HOST_NAME)
    address: str
    """How the cluster reaches the host: an IP address or a DNS name."""
    roles: tuple[Role, ...] = Field(min_length=1)
    docker_host: str | None = Field(default=None, pattern=DOCKER_SOCKET)
    """The Docker endpoint of a local host (`unix:///var/run/docker.sock` when unset)."""
    ssh: SshSpec | None = None
    """Set for a remote host: Docker, bootstrap and model sync all go over SSH."""
    cpus: Int = Field(ge=1, le=1024)
    memory_gb: float = Field(gt=0, le=65536)
    gpus: Int = Field(default=0, ge=0, le=64)
    gpu_model: str | None = Field(default=None, pattern=r"^[A-Za-z0-9 ._-]{1,64}$")
    workers: Int | None = Field(default=None, ge=1, le=256)
    """Dask workers on this host; defaults to one per GPU, or one on a CPU host."""

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        if ":" not in value and not value.replace(".", "").isdigit():
            # An all-numeric last label is no DNS name: `999.1.1.1` is a typo of an
            # address, and `1.2.3` is what inet_aton (ssh) would read as 1.2.0.3.
            if DNS_NAME.fullmatch(value) is None or value.rsplit(".", 1)[-1].isdigit():
                raise ValueError("must be an IP address or a DNS name")
            return value.lower()
        try:
            ip = parse_ip(value)
        except ValueError as exc:
            raise ValueError(f"{exc} or a DNS name" if "zone" not in str(exc) else str(exc)) from None
        if ip.is_unspecified:
            raise ValueError("must be the host's own address, not the unspecified address")
        # Stored as Python writes it: one spelling per address, nothing else in it.
        return str(ip)

    @field_validator("roles")
    @classmethod
    def _roles(cls, value: tuple[Role, ...]) -> tuple[Role, ...]:
        if len(set(value)) != len(value):
            raise ValueError("lists a role twice")
        return value

    @property
    def is_remote(self) -> bool:
        return self.ssh is not None

    @property
    def url_address(self) -> str:
        """The address as the host part of a URL (`[2001:db8::1]` for IPv6)."""
        return url_host(self.address)

    @property
    def docker_url(self) -> str:
        """The Docker endpoint the host's provider uses."""
        if self.ssh is not None:
            return f"ssh://{self.ssh.user}@{self.url_address}:{self.ssh.port}"
        return self.docker_host or LOCAL_DOCKER

    @property
    def is_head(self) -> bool:
        return Role.HEAD in self.roles

    @property
    def is_worker(self) -> bool:
        return Role.WORKER in self.roles

    @property
    def worker_count(self) -> int:
        if not self.is_worker:
            return 0
        if self.workers is not None:
            return self.workers
        return self.gpus if self.gpus > 0 else 1

    @property
    def gpus_per_worker(self) -> int:
        return self.gpus // self.worker_count if self.worker_count else 0


def normalise_model_name(value: str) -> str:
    """`[host[:port]/]namespace/name:tag` or `[namespace/]name:tag`, the registry host normalised.

    A registry host is a DNS name (lowercased) or an IPv4 address (in its canonical
    form); the port, if any, is 1-65535 without leading zeros. Ollama's model
    names have no room for an IPv6 literal.
    """
    registry, slash, rest = value.partition("/")
    if slash and rest.count("/") == 1:
        match = MODEL_REGISTRY_HOST.fullmatch(registry)
        if match is None:
            raise ValueError(f"registry {registry!r}: must be host or host:port (an IPv6 address cannot be used)")
        host, port = match["host"].lower(), match["port"]
        try:
            host = str(ipaddress.IPv4Address(host))
        except ValueError:
            if DNS_NAME.fullmatch(host) is None or host.replace(".", "").isdigit():
                raise ValueError(f"registry {registry!r}: {host!r} is neither a DNS name nor an IPv4 address") from None
        if port is not None:
            if port.startswith("0") or not 1 <= int(port) <= 65535:
                raise ValueError(f"registry {registry!r}: port must be 1-65535")
            host = f"{host}:{int(port)}"
        registry, value = host, f"{host}/{rest}"
    local = rest if slash and rest.count("/") == 1 else value
    if re.fullmatch(MODEL_NAME, local) is None:
        raise ValueError(
            "must be [host[:port]/]namespace/name:tag or name:tag with an explicit tag "
            "(lowercase letters, digits, '.', '_' and '-')"
        )
    return value


class ModelPin(_Model):
    """An Ollama model pinned by name and manifest digest."""

    name: str = Field(max_length=200)
    """`qwen2.5:0.5b` (Ollama's registry) or `host[:port]/namespace/name:tag` (a private one)."""
    digest: str | None = None
    """The manifest digest `/api/tags` reports (64 hex, `sha256:` optional)."""
    insecure: bool = False
    """Pull over plain HTTP: a private registry on a private network only, and never in prod."""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return normalise_model_name(value)

    @property
    def registry(self) -> str | None:
        """`host[:port]` of a private registry, None for Ollama's own."""
        parts = self.name.split("/")
        return parts[0] if len(parts) == 3 else None

    @model_validator(mode="after")
    def _insecure_needs_a_private_registry(self) -> ModelPin:
        if not self.insecure:
            return self
        if self.registry is None:
            raise ValueError("insecure: applies to a model from a private registry (host[:port]/namespace/name:tag)")
        host = self.registry.rsplit(":", 1)[0] if ":" in self.registry else self.registry
        try:
            address = ipaddress.IPv4Address(host)
        except ValueError:
            return self  # a DNS name: whether it resolves to a private network is the operator's statement
        if not (address.is_private or address.is_loopback):
            raise ValueError(f"insecure: plain HTTP to {address}, a public address, is refused")
        return self

    @field_validator("digest")
    @classmethod
    def _digest(cls, value: str | None) -> str | None:
        if value is None:
            return None
        match = DIGEST_HEX.fullmatch(value)
        if match is None:
            raise ValueError("must be a sha256 digest: 64 lowercase hex characters")
        return match[1]


class Ports(_Model):
    """The ports users know from the seed system."""

    webui: Port = 3000
    scheduler: Port = 8786
    dashboard: Port = 8787
    ollama: Port = 11434
    edge: Port = 8443
    """Each remote worker host's TLS edge (client certificates required)."""
    worker_base: Port = 8790
    grafana: Port = 3001
    """Grafana on the loopback bind address (dev); prod reaches it through the proxy at /grafana."""
    """Remote Dask workers listen on worker_base, worker_base+1, ... of their host."""


class DaskSpec(_Model):
    """Dask: one version for the scheduler, the workers and this repo's client."""

    version: str = Field(default="2026.8.0", pattern=r"^\d{4}\.\d{1,2}\.\d{1,3}$")
    threads_per_worker: Int | None = Field(default=None, ge=1, le=512)
    """Defaults to the host's CPUs divided among its workers."""


class WebUISpec(_Model):
    """Open WebUI's bootstrap admin account and name."""

    name: str = Field(default="Cluster AI", pattern=r"^[A-Za-z0-9 ._-]{1,64}$")
    admin_email: str = Field(default="admin@cluster-ai.local", pattern=EMAIL)
    admin_name: str = Field(default="Admin", pattern=r"^[A-Za-z0-9 ._-]{1,64}$")


class PostgresSpec(_Model):
    """The database Open WebUI keeps its state in."""

    database: str = Field(default="openwebui", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    user: str = Field(default="openwebui", pattern=r"^[a-z_][a-z0-9_]{0,62}$")


class BackupSpec(_Model):
    """Scheduled `pg_dump` of Open WebUI's database to a backup volume on the head."""

    enabled: bool = True
    interval_hours: Int = Field(default=24, ge=1, le=168)
    """How often a dump is taken; `stacks status` calls a backup older than two intervals stale."""
    keep_days: Int = Field(default=14, ge=1, le=3650)
    """Dumps older than this are deleted (the newest one always stays)."""
    keep_count: Int = Field(default=14, ge=1, le=1000)
    """At most this many dumps are kept."""


class TlsMode(StrEnum):
    """Where the public proxy's certificate comes from."""

    ACME = "acme"
    INTERNAL = "internal"


class ProxySpec(_Model):
    """The public entry: Caddy on the head, 443 (and 80 for the redirect)."""

    domain: str
    """The name users reach the cluster at."""
    tls: TlsMode = TlsMode.INTERNAL
    """`acme` for a public domain (Let's Encrypt), `internal` for the cluster's CA."""
    acme_email: str | None = Field(default=None, pattern=EMAIL)
    listen_address: str | None = None
    """The head address 443/80 are published on (default: the head's address)."""

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        if DNS_NAME.fullmatch(value) is None or value.rsplit(".", 1)[-1].isdigit():
            raise ValueError("must be a DNS name")
        return value.lower()

    @field_validator("listen_address")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        if value is None:
            return None
        ip = parse_ip(value)
        if ip.is_unspecified:
            raise ValueError("must be one address of the head, not the unspecified address (every interface)")
        return str(ip)


def _admin_network(cidr: str) -> str:
    """One admin network, stored as Python writes it: one spelling, nothing else in it."""
    if "%" in cidr:
        raise ValueError("carries an IPv6 zone (`%...`): give the network alone")
    try:
        network = ipaddress.ip_network(cidr, strict=True)
    except ValueError:
        raise ValueError("is not a network in CIDR form (e.g. 198.51.100.0/24)") from None
    if network.prefixlen == 0:
        raise ValueError("admits the whole internet")
    return str(network)


class FirewallSpec(_Model):
    """Who may reach the hosts besides the cluster itself."""

    admin_networks: tuple[Annotated[str, AfterValidator(_admin_network)], ...] = ()
    """CIDRs SSH is admitted from (required in prod)."""

    @field_validator("admin_networks")
    @classmethod
    def _not_everything(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        networks = [ipaddress.ip_network(cidr) for cidr in value]
        for version, everything in ((4, "0.0.0.0/0"), (6, "::/0")):
            same: list[Any] = [n for n in networks if n.version == version]
            if ipaddress.ip_network(everything) in ipaddress.collapse_addresses(same):
                raise ValueError(f"together admit the whole IPv{version} internet ({everything})")
        return value


class Curve(StrEnum):
    P256 = "P256"
    P384 = "P384"


class TlsSpec(_Model):
    """The internal CA that authenticates every hop between hosts."""

    curve: Curve = Curve.P256
    ca_validity_days: Int = Field(default=3650, ge=30, le=7300)
    cert_validity_days: Int = Field(default=365, ge=7, le=825)
    early_renewal_days: Int = Field(default=30, ge=1, le=365)


class AlertThresholds(_Model):
    """When the alert rules fire (components/monitoring_config.py `alert_rules`)."""

    gpu_temperature_c: Int = Field(default=85, ge=40, le=120)
    """A GPU hotter than this for 5 minutes."""
    gpu_memory_percent: Int = Field(default=95, ge=50, le=100)
    """A GPU whose framebuffer is fuller than this for 5 minutes is out of memory."""
    disk_free_percent: Int = Field(default=10, ge=1, le=90)
    """A host filesystem with less free space than this."""
    cert_expiry_days: Int = Field(default=14, ge=1, le=365)
    """A certificate a probe sees that expires sooner than this."""
    backup_max_age_hours: Int | None = Field(default=None, ge=1, le=8760)
    """The last PostgreSQL backup older than this; defaults to two backup intervals."""


class SmtpSpec(_Model):
    """Alert email through an SMTP relay; the password is the secret `smtpPassword`."""

    host: str
    port: Int = Field(default=587, ge=1, le=65535)
    sender: str = Field(alias="from", pattern=EMAIL)
    to: tuple[Annotated[str, Field(pattern=EMAIL)], ...] = Field(min_length=1, max_length=50)
    user: str | None = Field(default=None, pattern=r"^[^\s]{1,256}$")
    """Set when the relay needs a login; then `smtpPassword` is required."""
    require_tls: bool = True

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        if "%" in value:
            raise ValueError("must not carry an IPv6 zone (`%<interface>`)")
        if _is_ip(value):
            return str(ipaddress.ip_address(value))
        if DNS_NAME.fullmatch(value) is None or value.rsplit(".", 1)[-1].isdigit():
            raise ValueError("must be an IP address or a DNS name")
        return value.lower()


class SlackSpec(_Model):
    """Alerts to a Slack channel; the webhook URL is the secret `slackWebhookUrl`."""

    channel: str = Field(pattern=r"^#[a-z0-9][a-z0-9._-]{0,79}$")


class MonitoringSpec(_Model):
    """Prometheus, Alertmanager, Grafana and Loki on the head; exporters and a log shipper on every host."""

    enabled: bool = True
    retention_days: Int = Field(default=15, ge=1, le=3650)
    """How long Prometheus keeps metrics."""
    storage_gb: Int = Field(default=20, ge=1, le=100_000)
    """The most Prometheus keeps on its volume; the oldest data goes first."""
    scrape_interval_s: Int = Field(default=30, ge=5, le=300)
    """How often targets are scraped and rules evaluated."""
    log_retention_days: Int = Field(default=14, ge=1, le=3650)
    """How long Loki keeps logs."""
    thresholds: AlertThresholds = AlertThresholds()
    smtp: SmtpSpec | None = None
    slack: SlackSpec | None = None

    @property
    def has_receiver(self) -> bool:
        return self.smtp is not None or self.slack is not None


# Resource-limit keys of the monitoring containers, by where they run.
HEAD_MONITORING = (
    "prometheus",
    "alertmanager",
    "grafana",
    "loki",
    "blackbox_exporter",
    "postgres_exporter",
    "redis_exporter",
)
HOST_MONITORING = ("node_exporter", "cadvisor", "alloy")
GPU_MONITORING = ("dcgm_exporter",)


class ClusterSpec(_Model):
    """The whole stack config, validated once."""

    environment: Environment
    bind_address: str = "127.0.0.1"
    """Where published ports listen on a local host: a loopback address."""
    hosts: tuple[HostSpec, ...] = Field(min_length=1, max_length=1000)
    models: tuple[ModelPin, ...] = ()
    images: Images = Images()
    ports: Ports = Ports()
    dask: DaskSpec = DaskSpec()
    webui: WebUISpec = WebUISpec()
    postgres: PostgresSpec = PostgresSpec()
    backups: BackupSpec = BackupSpec()
    monitoring: MonitoringSpec = MonitoringSpec()
    resources: Resources = Resources()
    proxy: ProxySpec | None = None
    """The public TLS proxy (required in prod)."""
    firewall: FirewallSpec = FirewallSpec()
    tls: TlsSpec = TlsSpec()
    admin_password: SecretStr | None = None
    """Open WebUI's admin password; generated (and exported as a secret) when unset."""
    smtp_password: SecretStr | None = None
    """The SMTP relay's password for alert email (with `monitoring.smtp.user`)."""
    slack_webhook_url: SecretStr | None = None
    """The Slack incoming-webhook URL alerts are posted to (with `monitoring.slack`)."""

    @field_validator("bind_address")
    @classmethod
    def _bind_address(cls, value: str) -> str:
        ip = parse_ip(value)
        if ip.is_unspecified:
            raise ValueError("must not be the unspecified address: that publishes on every interface")
        if not ip.is_loopback:
            raise ValueError("must be a loopback address (only the TLS proxy is public)")
        return str(ip)

    @property
    def is_prod(self) -> bool:
        return self.environment is Environment.PROD

    @cached_property
    def head(self) -> HostSpec:
        return next(h for h in self.hosts if h.is_head)

    @property
    def proxy_address(self) -> str | None:
        """Where the proxy publishes 443/80: its listenAddress, else the head's address."""
        if self.proxy is None:
            return None
        return self.proxy.listen_address or self.head.address

    @property
    def tls_enabled(self) -> bool:
        """Hops between hosts are encrypted and authenticated with the internal CA:
        on in prod and in any stack of more than one host; a one-host dev stack
        keeps everything on its private networks and loopback."""
        return self.is_prod or len(self.hosts) > 1 or any(h.is_remote for h in self.hosts)

    @property
    def worker_hosts(self) -> tuple[HostSpec, ...]:
        return tuple(h for h in self.hosts if h.is_worker)

    def worker_memory_mb(self, host: HostSpec) -> int:
        """Each Dask worker container's memory: what the host has left, shared."""
        if not host.is_worker:
            return 0
        return (_usable_memory_mb(host) - _service_memory_mb(self, host)) // host.worker_count

    def dask_memory_limit_bytes(self, host: HostSpec) -> int:
        """Dask's own `--memory-limit`, below the container's so the nanny acts first."""
        return int(self.worker_memory_mb(host) * DASK_MEMORY_SHARE) * 1024 * 1024

    def threads_per_worker(self, host: HostSpec) -> int:
        if self.dask.threads_per_worker is not None:
            return self.dask.threads_per_worker
        return max(1, host.cpus // max(1, host.worker_count))

    def monitoring_services(self, host: HostSpec) -> tuple[str, ...]:
        """The `resources` keys of the monitoring containers placed on `host`."""
        if not self.monitoring.enabled:
            return ()
        placed: tuple[str, ...] = HEAD_MONITORING if host.is_head else ()
        placed += HOST_MONITORING
        if host.gpus > 0:
            placed += GPU_MONITORING
        return placed

    @property
    def declared_workers(self) -> int:
        """Every Dask worker the stack declares, on all hosts."""
        return sum(h.worker_count for h in self.hosts)

    @property
    def backup_max_age_hours(self) -> int:
        """When the last backup is too old: the threshold, or two backup intervals."""
        configured = self.monitoring.thresholds.backup_max_age_hours
        return configured if configured is not None else 2 * self.backups.interval_hours

    @property
    def dask_image_version(self) -> str | None:
        tag = parse_image(self.images.dask).tag or ""
        match = re.match(r"^(\d{4}\.\d{1,2}\.\d{1,3})(?:-|$)", tag)
        return match[1] if match else None


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _usable_memory_mb(host: HostSpec) -> int:
    return int(host.memory_gb * 1024 * (1 - HOST_MEMORY_RESERVE))


def placed_services(spec: ClusterSpec, host: HostSpec) -> tuple[str, ...]:
    """The `resources` keys of every fixed-size container placed on `host` (the Dask
    workers share what is left): the one list the memory and CPU checks and the
    workers' share are computed from."""
    placed: list[str] = []
    if host.is_head:
        placed += ["scheduler", "webui", "postgres", "redis"]
        if spec.backups.enabled:
            placed.append("backup")
            if spec.monitoring.enabled:
                placed.append("backup_metrics")
        if spec.proxy is not None:
            placed.append("proxy")
        if spec.tls_enabled and any(h.is_worker and h.name != host.name for h in spec.hosts):
            placed.append("egress")
    if host.is_worker:
        placed += ["ollama", "model_sync"]
    if spec.tls_enabled:
        placed.append("edge")
    placed += spec.monitoring_services(host)
    return tuple(placed)


def _service_memory_mb(spec: ClusterSpec, host: HostSpec) -> int:
    r = spec.resources
    return sum(getattr(r, service).memory_mb for service in placed_services(spec, host))


# --- loading -----------------------------------------------------------------

SECRET_KEYS = frozenset(
    to_camel(name) for name, f in ClusterSpec.model_fields.items() if "SecretStr" in str(f.annotation)
)
# Keys whose value is a list or an object: the engine hands them over as JSON text.
STRUCTURED_KEYS = frozenset(
    to_camel(name)
    for name, f in ClusterSpec.model_fields.items()
    if get_origin(f.annotation) is tuple or (isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel))
)
# Nothing in the schema nests deeper than a few levels; pydantic's JSON parser
# stops at 200 with an error that names no key, Python's json at ~1000 with a crash.
MAX_DEPTH = 16


def load_spec(config: Mapping[str, str], secret_keys: Iterable[str] = ()) -> ClusterSpec:
    """Build the spec from a stack's flat config map (`namespace:key` -> text).

    Raises ConfigError naming every problem; nothing else escapes.
    """
    secret_keys = set(secret_keys)
    document, problems, unreadable = _document(config, secret_keys)
    try:
        spec = ClusterSpec.model_validate_json(json.dumps(document))
    except ValidationError as exc:
        # A key already reported as unreadable is not also "required".
        errors = [e for e in _primary_errors(exc.errors()) if not (e["loc"] and e["loc"][0] in unreadable)]
        raise ConfigError(problems + [_describe(e) for e in errors]) from None
    problems += cross_field_problems(spec)
    if problems:
        raise ConfigError(problems)
    return spec


def _document(config: Mapping[str, str], secret_keys: set[str]) -> tuple[dict[str, Any], list[str], set[str]]:
    """Decode our namespace's keys into one JSON document; report unknown, unreadable and
    plaintext-secret keys (the last set: keys left out of the document as unreadable)."""
    known = {to_camel(n) for n in ClusterSpec.model_fields}
    document: dict[str, Any] = {}
    problems: list[str] = []
    unreadable: set[str] = set()
    prefix = NAMESPACE + ":"
    for full_key, raw in sorted(config.items()):
        if not full_key.startswith(prefix):
            continue
        key = full_key[len(prefix) :]
        if key not in known:
            hint = difflib.get_close_matches(key, sorted(known), n=1)
            suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
            problems.append(f"{config_path([key])}: is not a known key{suggestion}")
            continue
        if key in SECRET_KEYS and full_key not in secret_keys:
            problems.append(
                f"{full_key}: is stored in plain text; set it with `pulumi config set --secret {key} <value>`"
            )
            continue
        try:
            value = _decode(raw, structured=key in STRUCTURED_KEYS, secret=key in SECRET_KEYS)
            bad = _unreadable(value, [key])
        except ValueError as exc:
            bad = ([key], str(exc))
        if bad is not None:
            problems.append(f"{config_path(bad[0])}: {bad[1]}")
            unreadable.add(key)
            continue
        document[key] = value
    return document, problems, unreadable


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _decode(raw: Any, *, structured: bool, secret: bool = False) -> Any:
    """Pulumi hands structured values to programs as JSON text, scalars as plain text.

    Raises ValueError (with a message fit for users) when a structured key's text
    starts like JSON but cannot be read as JSON.
    """
    if not isinstance(raw, str) or secret or raw[:1] not in ("{", "["):
        return raw
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except RecursionError:
        if not structured:
            return raw
        raise ValueError(f"is not valid JSON: nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as exc:
        # JSONDecodeError, NaN/Infinity, or an integer too long to convert.
        if not structured:
            return raw  # a scalar that merely starts with a bracket is text
        raise ValueError(f"is not valid JSON: {_escape(str(exc))}") from None


def _unreadable(value: Any, loc: list[int | str], depth: int = 0) -> tuple[list[int | str], str] | None:
    """The first part of a decoded value no message or model could carry, and why."""
    if depth > MAX_DEPTH:
        return loc, f"is nested more than {MAX_DEPTH} levels deep"
    if isinstance(value, str):
        return None if _is_utf8(value) else (loc, "contains an invalid unicode escape (an unpaired surrogate)")
    if isinstance(value, dict):
        for k, v in value.items():
            if not _is_utf8(k):
                return loc, "has a key with an invalid unicode escape (an unpaired surrogate)"
            found = _unreadable(v, [*loc, k], depth + 1)
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = _unreadable(v, [*loc, i], depth + 1)
            if found is not None:
                return found
    return None


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def config_path(loc: Iterable[int | str]) -> str:
    """`('hosts', 1, 'gpus')` -> `cluster-ai:hosts[1].gpus`."""
    out = NAMESPACE
    first = True
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            # A key the user mistyped may hold anything: show it quoted and escaped.
            key = part if _PLAIN_KEY.fullmatch(part) else _show(part)
            out += f":{key}" if first else f".{key}"
        first = False
    return out


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_SHOWN = 60


def _escape(text: str, limit: int = 2 * MAX_SHOWN) -> str:
    """Text as it may safely appear in a message: one line, ASCII, bounded in length."""
    if len(text) > limit:
        text = text[:limit] + "..."
    return text.encode("unicode_escape").decode("ascii")


def _show(value: Any) -> str:
    """A value as it may safely appear in a message: quoted, short, one line, escaped."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if len(text) > MAX_SHOWN:
        text = text[:MAX_SHOWN] + "..."
    # ascii() escapes control, non-printable and non-ASCII characters once (repr
    # of an already escaped text would double every backslash).
    return ascii(text)


def _got(value: Any) -> str:
    """What the user wrote, for a type error: text quoted, anything else named by its YAML type
    (`environment: yes` is text, `enabled: 1` a number, an empty value null)."""
    if isinstance(value, str):
        return _show(value)
    if value is None:
        return "null (an empty value)"
    if isinstance(value, bool):
        return f"{'true' if value else 'false'} (a YAML boolean)"
    if isinstance(value, (int, float)):
        return f"{_show(value)[1:-1]} (a number)"
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)} item(s)"
    if isinstance(value, dict):
        return "an object with keys"
    return _show(value)


_MESSAGES = {
    "missing": lambda e: "is required",
    "extra_forbidden": lambda e: "is not a known key",
    "greater_than_equal": lambda e: f"must be >= {e['ctx']['ge']}",
    "greater_than": lambda e: f"must be > {e['ctx']['gt']}",
    "less_than_equal": lambda e: f"must be <= {e['ctx']['le']}",
    "less_than": lambda e: f"must be < {e['ctx']['lt']}",
    "int_type": lambda e: f"must be an integer, got {_got(e['input'])}",
    "int_from_float": lambda e: f"must be a whole number, got {_got(e['input'])}",
    "float_type": lambda e: f"must be a number, got {_got(e['input'])}",
    "bool_type": lambda e: f"must be true or false, got {_got(e['input'])}",
    "string_type": lambda e: f"must be a string, got {_got(e['input'])}",
    "tuple_type": lambda e: f"must be a list, got {_got(e['input'])}",
    "model_type": lambda e: f"must be an object with keys, got {_got(e['input'])}",
    "model_attributes_type": lambda e: f"must be an object with keys, got {_got(e['input'])}",
    "dict_type": lambda e: f"must be an object with keys, got {_got(e['input'])}",
    "enum": lambda e: f"must be one of {e['ctx']['expected']}, got {_got(e['input'])}",
    "too_short": lambda e: f"must have at least {e['ctx']['min_length']} item(s)",
    "too_long": lambda e: f"must have at most {e['ctx']['max_length']} item(s)",
    "string_too_long": lambda e: f"must be at most {e['ctx']['max_length']} characters",
    "string_pattern_mismatch": lambda e: f"{_show(e['input'])} does not match {e['ctx']['pattern']}",
    "value_error": lambda e: f"{_show(e['input'])} {e['ctx']['error']}",
    "json_invalid": lambda e: "is not valid JSON",
}


def _primary_errors(errors: list[Any]) -> list[Any]:
    """Drop the length errors pydantic adds above an item that failed: a list whose
    only item is invalid is reported as invalid, not also as empty."""

    def below(e: Any, other: Any) -> bool:
        return len(other["loc"]) > len(e["loc"]) and tuple(other["loc"][: len(e["loc"])]) == tuple(e["loc"])

    return [e for e in errors if not (e["type"] == "too_short" and any(below(e, o) for o in errors))]


def _describe(error: Any) -> str:
    """One pydantic error -> `cluster-ai:path: what is wrong`."""
    loc = list(error["loc"])
    # Strict JSON validation of a `str | None` field reports the union member
    # in the path (`...digest.str`); users never typed that part.
    if error["type"] != "extra_forbidden":  # an unknown key may be called `str`
        loc = [p for p in loc if p not in ("str", "none", "function-after[_digest(), str]")]
    render = _MESSAGES.get(error["type"])
    message = render(error) if render else error["msg"]
    return f"{config_path(loc)}: {message}"


def cross_field_problems(spec: ClusterSpec) -> list[str]:
    """Checks that need the whole spec: each problem names its key path."""
    problems: list[str] = []
    problems += _duplicate_hosts(spec)
    problems += _roles(spec)
    problems += _workers_vs_gpus(spec)
    problems += _memory(spec)
    problems += _cpus(spec)
    problems += _model_pins(spec)
    problems += _image_pins(spec)
    problems += _ports(spec)
    problems += _remote_hosts(spec)
    problems += _prod_entry(spec)
    problems += _alert_receivers(spec)
    problems += _tls_renewal(spec)
    problems += _prod_loopback_hosts(spec)
    problems += _ssh_ports(spec)
    problems += _network_names(spec)
    return problems


def _tls_renewal(spec: ClusterSpec) -> list[str]:
    """A certificate renewed earlier than it lives is re-issued on every `up`: a perpetual diff
    that replaces every container holding it."""
    tls = spec.tls
    problems = []
    for key, days in (("caValidityDays", tls.ca_validity_days), ("certValidityDays", tls.cert_validity_days)):
        if tls.early_renewal_days >= days:
            problems.append(
                f"{config_path(['tls', 'earlyRenewalDays'])}: {tls.early_renewal_days} days must be below "
                f"{config_path(['tls', key])} ({days}): the certificate would be re-issued on every `up`"
            )
    return problems


def _prod_loopback_hosts(spec: ClusterSpec) -> list[str]:
    """In prod the bootstrap runs as root with a drop-policy firewall: on a loopback address
    that is the machine running Pulumi."""
    if not spec.is_prod:
        return []
    problems = []
    for i, host in enumerate(spec.hosts):
        loopback = host.address == "localhost" or host.address.endswith(".localhost")
        if _is_ip(host.address):
            loopback = ipaddress.ip_address(host.address).is_loopback
        if loopback:
            problems.append(
                f"{config_path(['hosts', i, 'address'])}: {_show(host.address)} is a loopback address: in prod "
                "the root bootstrap and its firewall would run on the machine running Pulumi"
            )
    return problems


def published_ports(spec: ClusterSpec, host: HostSpec) -> dict[int, str]:
    """Ports the cluster publishes on `host`, each with the config key that sets it."""
    ports = {port: config_path(["ports", to_camel(name)]) for name, port in spec.ports.model_dump().items()}
    base = spec.ports.worker_base
    for offset in range(host.worker_count):
        ports.setdefault(base + offset, config_path(["ports", "workerBase"]))
    if host.is_head and spec.proxy is not None:
        ports.update({443: f"{NAMESPACE}:proxy (443)", 80: f"{NAMESPACE}:proxy (80)"})
    return ports


def _ssh_ports(spec: ClusterSpec) -> list[str]:
    problems = []
    for i, host in enumerate(spec.hosts):
        if host.ssh is None:
            continue
        taken = published_ports(spec, host).get(host.ssh.port)
        if taken is not None:
            problems.append(
                f"{config_path(['hosts', i, 'ssh', 'port'])}: {host.ssh.port} is also published by {taken}: "
                "SSH and the service cannot share the port"
            )
    return problems


def _network_names(spec: ClusterSpec) -> list[str]:
    """Docker networks are named `cluster-ai-<stack>-<host>[-<purpose>]`: a host named like
    another's network (`head` and `head-data`) would share or break it."""
    problems = []
    for i, host in enumerate(spec.hosts):
        for j, other in enumerate(spec.hosts):
            if i != j and host.name.startswith(other.name + "-"):
                problems.append(
                    f"{config_path(['hosts', i, 'name'])}: {host.name!r} extends the name of "
                    f"{config_path(['hosts', j])} ({other.name!r}) with '-': their Docker networks "
                    f"(cluster-ai-<stack>-{other.name}-...) would collide; pick a name that is not "
                    "another host's name followed by '-'"
                )
    return problems


def _duplicate_hosts(spec: ClusterSpec) -> list[str]:
    problems = []
    for field in ("name", "address"):
        seen: dict[str, int] = {}
        for i, host in enumerate(spec.hosts):
            value = getattr(host, field)
            if value in seen:
                problems.append(
                    f"{config_path(['hosts', i, field])}: {value!r} is already used by "
                    f"{config_path(['hosts', seen[value]])}"
                )
            else:
                seen[value] = i
    return problems


def _roles(spec: ClusterSpec) -> list[str]:
    heads = [i for i, h in enumerate(spec.hosts) if h.is_head]
    problems = []
    if len(heads) != 1:
        where = ", ".join(config_path(["hosts", i]) for i in heads) or "none"
        problems.append(f"{NAMESPACE}:hosts: exactly one host must have the role 'head' (found: {where})")
    if not spec.worker_hosts:
        problems.append(f"{NAMESPACE}:hosts: at least one host must have the role 'worker'")
    return problems


def _workers_vs_gpus(spec: ClusterSpec) -> list[str]:
    problems = []
    for i, host in enumerate(spec.hosts):
        if host.workers is not None and not host.is_worker:
            problems.append(f"{config_path(['hosts', i, 'workers'])}: is set but the host has no 'worker' role")
        elif host.gpus > 0 and host.workers is not None and host.workers > host.gpus:
            problems.append(
                f"{config_path(['hosts', i, 'workers'])}: {host.workers} workers need at least "
                f"{host.workers} GPUs, but the host declares gpus={host.gpus}"
            )
        if host.gpu_model is not None and host.gpus == 0:
            problems.append(f"{config_path(['hosts', i, 'gpuModel'])}: is set but the host declares gpus=0")
    return problems


def _memory(spec: ClusterSpec) -> list[str]:
    problems = []
    for i, host in enumerate(spec.hosts):
        usable = _usable_memory_mb(host)
        needed = _service_memory_mb(spec, host) + MIN_WORKER_MEMORY_MB * host.worker_count
        if needed > usable:
            problems.append(
                f"{config_path(['hosts', i, 'memoryGb'])}: {host.memory_gb:g} GB cannot hold what is placed "
                f"on host {host.name!r}: it needs {needed} MB of limits and "
                f"{int(HOST_MEMORY_RESERVE * 100)}% reserve ({usable} MB usable)"
            )
    return problems


def _cpus(spec: ClusterSpec) -> list[str]:
    """Docker refuses a container whose CPU limit is above the host's CPU count."""
    problems = []
    r = spec.resources
    for i, host in enumerate(spec.hosts):
        placed: list[tuple[list[int | str], float]] = [
            (["resources", to_camel(service), "cpus"], getattr(r, service).cpus)
            for service in placed_services(spec, host)
        ]
        if host.is_worker and spec.dask.threads_per_worker is not None:
            # A worker's CPU limit is its thread count.
            placed.append((["dask", "threadsPerWorker"], spec.dask.threads_per_worker))
        for loc, cpus in placed:
            if cpus > host.cpus:
                problems.append(
                    f"{config_path(loc)}: {cpus:g} CPUs exceed the {host.cpus} of host {host.name!r} "
                    f"({config_path(['hosts', i, 'cpus'])}); Docker refuses a limit above the host's CPUs"
                )
    return problems


def _model_pins(spec: ClusterSpec) -> list[str]:
    problems = []
    first: dict[str, int] = {}
    for i, pin in enumerate(spec.models):
        if pin.name in first:
            j = first[pin.name]
            other = spec.models[j]
            if other.digest != pin.digest:
                problems.append(
                    f"{config_path(['models', i, 'digest'])}: model {pin.name!r} is pinned twice with "
                    f"different digests (see {config_path(['models', j])})"
                )
            else:
                problems.append(f"{config_path(['models', i])}: model {pin.name!r} is listed twice")
        else:
            first[pin.name] = i
        if spec.is_prod and pin.insecure:
            problems.append(
                f"{config_path(['models', i, 'insecure'])}: prod refuses a plain-HTTP model registry "
                f"for {pin.name!r}; serve the registry over TLS"
            )
        if spec.is_prod and pin.digest is None:
            problems.append(
                f"{config_path(['models', i, 'digest'])}: prod refuses an unpinned model; "
                f"set the digest `/api/tags` reports for {pin.name!r}"
            )
        elif spec.is_prod and pin.digest is not None and looks_made_up(pin.digest):
            problems.append(
                f"{config_path(['models', i, 'digest'])}: {pin.digest[:12]}... is a placeholder, not a digest "
                f"Ollama computed; run `python -m stacks lock prod` to resolve {pin.name!r}"
            )
    return problems


def _image_pins(spec: ClusterSpec) -> list[str]:
    problems = []
    for service, ref in spec.images.items():
        image = parse_image(ref)
        if spec.is_prod and image.digest is None:
            problems.append(
                f"{config_path(['images', service])}: prod requires a digest "
                f"({ref}@sha256:<64 hex>); run `python -m stacks lock prod`"
            )
        elif spec.is_prod and image.digest is not None and looks_made_up(image.digest):
            problems.append(
                f"{config_path(['images', service])}: {image.digest[:19]}... is a placeholder, not a digest a "
                f"registry computed; run `python -m stacks lock prod` to resolve {image.repo}:{image.tag}"
            )
    version = spec.dask_image_version
    if version != spec.dask.version:
        problems.append(
            f"{config_path(['images', 'dask'])}: the image's Dask version ({version or 'none in the tag'}) "
            f"must equal {config_path(['dask', 'version'])} ({spec.dask.version}): scheduler, "
            f"workers and client must run one version"
        )
    return problems


def _ports(spec: ClusterSpec) -> list[str]:
    ports = spec.ports.model_dump()
    counts = Counter(ports.values())
    problems = [
        f"{config_path(['ports', to_camel(name)])}: port {port} is used by more than one service"
        for name, port in ports.items()
        if counts[port] > 1
    ]
    most_workers = max((h.worker_count for h in spec.hosts), default=0)
    base = spec.ports.worker_base
    last = base + max(most_workers, 1) - 1
    if last > 65535:
        problems.append(
            f"{config_path(['ports', 'workerBase'])}: {most_workers} workers from {base} run past port 65535"
        )
    for name, port in ports.items():
        if name != "worker_base" and base < port <= last:
            problems.append(
                f"{config_path(['ports', 'workerBase'])}: the worker ports {base}-{last} overlap "
                f"{config_path(['ports', to_camel(name)])} ({port})"
            )
    return problems


def _remote_hosts(spec: ClusterSpec) -> list[str]:
    problems = []
    for i, host in enumerate(spec.hosts):
        if spec.tls_enabled and not _is_ip(host.address):
            problems.append(
                f"{config_path(['hosts', i, 'address'])}: {_show(host.address)} must be an IP address in a "
                "multi-host stack: the host's published ports are bound to it, and Docker binds only to addresses"
            )
        if host.ssh is not None and host.docker_host is not None:
            problems.append(
                f"{config_path(['hosts', i, 'dockerHost'])}: a host reached over SSH uses "
                f"ssh://{host.ssh.user}@{host.url_address}; remove dockerHost"
            )
        if spec.is_prod and host.ssh is None:
            problems.append(
                f"{config_path(['hosts', i, 'ssh'])}: prod reaches every host over SSH with its host key pinned; "
                "set user, privateKeyPath and hostKey (`ssh-keyscan -t ed25519 <address>`)"
            )
    return problems


def _prod_entry(spec: ClusterSpec) -> list[str]:
    problems = []
    if spec.is_prod and spec.proxy is None:
        problems.append(f"{NAMESPACE}:proxy: prod needs its public entry: set domain (and tls: acme|internal)")
    if spec.proxy is not None and spec.proxy.tls is TlsMode.ACME and spec.proxy.acme_email is None:
        problems.append(f"{config_path(['proxy', 'acmeEmail'])}: ACME needs an email for the account")
    if spec.is_prod and not spec.firewall.admin_networks:
        problems.append(
            f"{config_path(['firewall', 'adminNetworks'])}: prod admits SSH only from admin networks; list at least one CIDR"
        )
    listen = spec.proxy.listen_address if spec.proxy is not None else None
    if spec.is_prod and listen is not None and ipaddress.ip_address(listen).is_loopback:
        problems.append(f"{config_path(['proxy', 'listenAddress'])}: a loopback address makes the proxy unreachable")
    return problems


def _alert_receivers(spec: ClusterSpec) -> list[str]:
    """A receiver needs its secret, a secret needs its receiver, and prod needs a receiver."""
    problems = []
    monitoring = spec.monitoring
    smtp_user = monitoring.smtp.user if monitoring.smtp is not None else None
    if smtp_user is not None and spec.smtp_password is None:
        problems.append(
            f"{NAMESPACE}:smtpPassword: is required because {config_path(['monitoring', 'smtp', 'user'])} is set; "
            "set it with `pulumi config set --secret smtpPassword <password>`"
        )
    if spec.smtp_password is not None and smtp_user is None:
        problems.append(
            f"{NAMESPACE}:smtpPassword: is set but {config_path(['monitoring', 'smtp', 'user'])} is not: "
            "set the SMTP login, or remove the password (`pulumi config rm smtpPassword`)"
        )
    if monitoring.slack is not None and spec.slack_webhook_url is None:
        problems.append(
            f"{NAMESPACE}:slackWebhookUrl: is required because {config_path(['monitoring', 'slack'])} is set; "
            "set it with `pulumi config set --secret slackWebhookUrl https://hooks.slack.com/services/...`"
        )
    if spec.slack_webhook_url is not None and monitoring.slack is None:
        problems.append(
            f"{NAMESPACE}:slackWebhookUrl: is set but {config_path(['monitoring', 'slack'])} is not: "
            "set monitoring.slack.channel, or remove the URL (`pulumi config rm slackWebhookUrl`)"
        )
    if spec.is_prod and monitoring.enabled and not monitoring.has_receiver:
        problems.append(
            f"{config_path(['monitoring'])}: prod must route alerts somewhere: set monitoring.smtp "
            "(host, from, to) and/or monitoring.slack (channel, with the secret slackWebhookUrl)"
        )
    return problems
