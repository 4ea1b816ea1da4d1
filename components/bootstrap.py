"""Host bootstrap over SSH: check the engine (and the NVIDIA runtime), install the firewall.

The old `install_unified.sh` and `firewall_manager.sh`, made declarative and
idempotent: the script checks what a host must already have and fails naming
the host when something is missing, then installs an nftables table of its own
(`inet cluster_ai`) that admits only what the cluster needs:

- input: SSH from the admin networks; 80/443 on the head; the Dask and edge
  ports from the cluster's own hosts and from the host's own containers (Docker
  bridges); everything else dropped;
- forward: Docker publishes ports by DNAT, so they never reach the input chain
  (that is how Docker bypasses ufw); new DNAT'ed connections are filtered here
  by their original destination port with the same rules.

The table is replaced atomically on every run (`nft -f` of a file that deletes
and recreates it), so running the script twice is the same as once.

Config values are data, never script: every address is re-parsed here and
written in Python's own spelling (no IPv6 zone, which Python accepts with almost
any character in it), and the ruleset reaches the host as one base64 word that
the script decodes into its file, so no value can end a heredoc or a quote.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypedDict

import pulumi
from pulumi_command import remote

CONFIG_DIR = "/etc/cluster-ai"
RULES_FILE = f"{CONFIG_DIR}/firewall.nft"
NFT_TABLE = "cluster_ai"
# The interfaces Docker's bridge networks use: the default one and `br-<network id>`.
DOCKER_BRIDGES = '{ "docker0", "br-*" }'


@dataclass(frozen=True)
class FirewallRules:
    """What one host admits."""

    ssh_port: int
    admin_networks: Sequence[str]
    cluster_addresses: Sequence[str]
    public_ports: Sequence[int] = ()
    """Open to anyone (the proxy's 443/80 on the head)."""
    cluster_ports: Sequence[int] = ()
    """Open to the cluster's own hosts (Dask, edge)."""
    cluster_port_ranges: Sequence[tuple[int, int]] = field(default_factory=tuple)
    admin_ports: Sequence[int] = ()
    """Open to the admin networks besides SSH (the scheduler, for operators' Dask clients)."""


# What the plan decodes and shows beside a script: `NAME_B64='<base64>'`.
PAYLOAD_SUFFIX = "_B64"
# A host name as it may appear in the script and its messages.
_HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def nft_element(value: str) -> str:
    """An address or CIDR as an nftables set element: parsed, and written back in
    Python's spelling, so nothing but an address reaches the ruleset."""
    if "%" in value:
        raise ValueError(f"firewall address {value!r}: an IPv6 zone (%...) cannot be a set element")
    try:
        return str(ipaddress.ip_network(value, strict=True))
    except ValueError:
        raise ValueError(f"firewall address {value!r} is not an IP address or a network in CIDR form") from None


def _set(values: Sequence[str]) -> str:
    return "{ " + ", ".join(nft_element(v) for v in values) + " }"


def _port(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"firewall port {value!r} is not a port number (1-65535)")
    return value


def _ports(ports: Sequence[int], ranges: Sequence[tuple[int, int]] = ()) -> str:
    items = [str(_port(p)) for p in sorted(set(ports))]
    items += [f"{_port(a)}-{_port(b)}" if a != b else str(_port(a)) for a, b in ranges]
    return "{ " + ", ".join(items) + " }"


def _split(addresses: Sequence[str]) -> tuple[list[str], list[str]]:
    v4 = [a for a in addresses if ":" not in a]
    v6 = [a for a in addresses if ":" in a]
    return v4, v6


def firewall_ruleset(rules: FirewallRules) -> str:
    """The nftables table for one host, replacing any previous version of it."""
    admin4, admin6 = _split(list(rules.admin_networks))
    cluster4, cluster6 = _split(list(rules.cluster_addresses))
    lines = [
        "#!/usr/sbin/nft -f",
        "# Managed by cluster-ai (Pulumi): changes here are overwritten on the next `pulumi up`.",
        f"table inet {NFT_TABLE} {{}}",
        f"delete table inet {NFT_TABLE}",
        f"table inet {NFT_TABLE} {{",
    ]
    sets = {
        "admin4": ("ipv4_addr", admin4),
        "admin6": ("ipv6_addr", admin6),
        "cluster4": ("ipv4_addr", cluster4),
        "cluster6": ("ipv6_addr", cluster6),
    }
    for name, (kind, elements) in sets.items():
        lines += [f"\tset {name} {{", f"\t\ttype {kind}", "\t\tflags interval"]
        if elements:
            lines.append(f"\t\telements = {_set(elements)}")
        lines.append("\t}")

    def admitted(port: str) -> list[str]:
        """Accept rules; `port` is how the destination port is matched."""
        admin = _ports([rules.ssh_port, *rules.admin_ports])
        out = [
            f"\t\t{port} {admin} ip saddr @admin4 accept",
            f"\t\t{port} {admin} ip6 saddr @admin6 accept",
        ]
        if rules.public_ports:
            out.append(f"\t\t{port} {_ports(rules.public_ports)} accept")
        if rules.cluster_ports or rules.cluster_port_ranges:
            ports = _ports(rules.cluster_ports, rules.cluster_port_ranges)
            out += [f"\t\t{port} {ports} ip saddr @cluster4 accept", f"\t\t{port} {ports} ip6 saddr @cluster6 accept"]
            # The host's own containers reach its published cluster ports at its
            # address (Dask workers on one host fetch from each other at their
            # contact addresses); they arrive from a Docker bridge, not a cluster address.
            out.append(f"\t\tiifname {DOCKER_BRIDGES} {port} {ports} accept")
        return out

    lines += [
        "\tchain input {",
        "\t\ttype filter hook input priority filter; policy drop;",
        '\t\tiif "lo" accept',
        "\t\tct state established,related accept",
        "\t\tct state invalid drop",
        "\t\tmeta l4proto { icmp, ipv6-icmp } accept",
        *admitted("tcp dport"),
        "\t}",
        "\tchain forward {",
        # Before Docker's own filter (priority 0): a drop here is final.
        "\t\ttype filter hook forward priority filter - 1; policy accept;",
        "\t\tct state established,related accept",
        # A published port arrives DNAT'ed to the container: match what the
        # client dialled, not the container's port.
        *admitted("ct status dnat meta l4proto tcp ct original proto-dst"),
        "\t\tct status dnat ct state new drop",
        "\t}",
        "}",
        "",
    ]
    return "\n".join(lines)


def payload(name: str, data: str) -> str:
    """A shell assignment carrying `data` as one base64 word: `NAME_B64='...'`.

    Base64's alphabet has no quote, `$`, backslash or newline, so the data cannot
    change the script's structure whatever it holds; the plan decodes it for review.
    """
    encoded = base64.b64encode(data.encode()).decode("ascii")
    return f"{name}{PAYLOAD_SUFFIX}='{encoded}'"


def bootstrap_script(host: str, *, gpu: bool, ruleset: str, config_dir: str = CONFIG_DIR) -> str:
    """The idempotent bootstrap for one host; it runs as root (directly or through sudo)."""
    if not _HOST_NAME.fullmatch(host):
        raise ValueError(f"host {host!r}: a host name is letters, digits, '.', '_' and '-'")
    rules_file = f"{config_dir}/firewall.nft"
    rules = shlex.quote(rules_file)
    include_line = shlex.quote(f'include "{rules_file}"')
    gpu_check = ""
    if gpu:
        # Captured first, then matched: no pipe that pipefail could trip on.
        gpu_check = (
            "runtimes=$(docker info --format '{{json .Runtimes}}' 2>/dev/null || true)\n"
            'case "$runtimes" in\n'
            "  *'\"nvidia\"'*) ;;\n"
            '  *) fail "the NVIDIA container runtime is missing: install nvidia-container-toolkit, then '
            'nvidia-ctk runtime configure --runtime=docker, and restart Docker" ;;\n'
            "esac\n"
        )
    return f"""#!/bin/bash
# cluster-ai host bootstrap (generated; safe to run again).
set -euo pipefail
HOST={shlex.quote(host)}
fail() {{ echo "cluster-ai bootstrap: host $HOST: $*" >&2; exit 1; }}

command -v docker >/dev/null 2>&1 || fail "Docker is not installed (https://docs.docker.com/engine/install/)"
docker version --format '{{{{.Server.Version}}}}' >/dev/null 2>&1 \\
  || fail "the Docker engine is not running, or $(id -un) may not use it"
{gpu_check}command -v nft >/dev/null 2>&1 || fail "nftables (nft) is not installed"

install -d -m 0750 {shlex.quote(config_dir)}
umask 077
# The ruleset travels as data (base64), never as script text.
{payload("FIREWALL", ruleset)}
printf '%s' "$FIREWALL_B64" | base64 -d > {rules}.new || fail "could not write the firewall rules"
nft -c -f {rules}.new || fail "the generated firewall rules do not load"
mv {rules}.new {rules}
nft -f {rules}

# Survive a reboot: /etc/nftables.conf includes the table, and the unit that
# loads it at boot is enabled (Debian ships it disabled). Enabled, not started:
# starting it now would flush the rules Docker has installed.
if [ -f /etc/nftables.conf ] && ! grep -qF {include_line} /etc/nftables.conf; then
  printf '\\n%s\\n' {include_line} >> /etc/nftables.conf
fi
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
  systemctl enable --quiet nftables.service || fail "could not enable nftables.service (the rules would not survive a reboot)"
fi
echo "cluster-ai bootstrap: host $HOST ready"
"""


# Root runs the script as is; anyone else needs passwordless sudo for it.
RUN_AS_ROOT = 'if [ "$(id -u)" -eq 0 ]; then bash -s; else sudo -n bash -s; fi'


class HostBootstrapArgs(TypedDict):
    """One remote host's bootstrap."""

    host: str
    gpu: bool
    rules: FirewallRules
    connection: remote.ConnectionArgs
    """SSH with the host key pinned."""


class HostBootstrap(pulumi.ComponentResource):
    """Runs the bootstrap over SSH, again whenever the script changes."""

    script: str
    """The script, as it runs on the host."""

    def __init__(self, name: str, args: HostBootstrapArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("cluster-ai:index:HostBootstrap", name, {}, opts)
        self.script = bootstrap_script(args["host"], gpu=args["gpu"], ruleset=firewall_ruleset(args["rules"]))
        digest = hashlib.sha256(self.script.encode()).hexdigest()
        self.command = remote.Command(
            f"{name}-run",
            connection=args["connection"],
            create=RUN_AS_ROOT,
            update=RUN_AS_ROOT,
            stdin=self.script,
            triggers=[digest],
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.register_outputs({"scriptSha256": digest})
