"""A Docker host of the cluster: its provider and its private networks."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NotRequired, TypedDict

import pulumi
import pulumi_docker as docker

from components.addresses import ssh_address, url_host
from components.bootstrap import HostBootstrap, HostBootstrapArgs

__all__ = [
    "HOST_NETWORK",
    "NETWORK_PURPOSES",
    "DockerHost",
    "DockerHostArgs",
    "known_hosts_line",
    "ssh_options",
    "url_host",
]


# What may reach ssh's KnownHostsCommand: ssh splits it on spaces and expands `%`
# tokens in it, so only an address or DNS name and a `type base64` key get there.
_HOST_KEY = re.compile(r"^[a-z0-9-]{1,40} [A-Za-z0-9+/]{16,}={0,2}$")


def known_hosts_line(address: str, port: int, host_key: str) -> str:
    """The known_hosts entry for a pinned key (`[address]:port` off port 22, IPv6 included)."""
    address = ssh_address(address)
    if not _HOST_KEY.fullmatch(host_key):
        raise ValueError(f"host key {host_key!r}: must be `type base64`, as ssh-keyscan prints it")
    return f"{address if port == 22 else f'[{address}]:{port}'} {host_key}"


def ssh_options(address: str, port: int, host_key: str, private_key_path: str) -> list[str]:
    """`ssh` options that check the host key against the pinned one and nothing else.

    The key is handed to ssh by KnownHostsCommand (OpenSSH 8.5+), so no
    known_hosts file on the machine running Pulumi is read or written; strict
    checking refuses any host whose key differs.
    """
    return [
        "-o", "StrictHostKeyChecking=yes",
        "-o", "UserKnownHostsFile=/dev/null",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", f"KnownHostsCommand=/bin/echo {known_hosts_line(address, port, host_key)}",
        "-o", "BatchMode=yes",
        "-o", "IdentitiesOnly=yes",
        "-o", "ConnectTimeout=15",
        "-o", "ServerAliveInterval=30",
        # `-i` takes the next word whatever it is; a path is never an option.
        "-i", private_key_path if not private_key_path.startswith("-") else f"./{private_key_path}",
        "-p", str(int(port)),
    ]  # fmt: skip


# A host's networks besides its own, by purpose (the Docker name gets `-<purpose>`,
# the network the label `cluster-ai.network=<purpose>`), and whether each is
# internal (no route out of the host). Who joins which: docs/architecture.md.
NETWORK_PURPOSES: dict[str, bool] = {
    # The internet-facing side: the proxy, Open WebUI, Grafana (and the prober
    # that checks them). Not internal: published ports and ACME need a route.
    "public": False,
    # PostgreSQL and Redis, and only what logs in to them.
    "data": True,
    # Open WebUI to its model servers: the egress and a local Ollama.
    "inference": True,
    # Grafana to Prometheus, Loki and Alertmanager.
    "observe": True,
    # The proxy to the Dask dashboard.
    "dashboard": True,
    # The egress's own route to other hosts' edges: nothing else joins it.
    "egress": False,
}
HOST_NETWORK = "host"
"""The `cluster-ai.network` label of a host's own private network."""


class DockerHostArgs(TypedDict):
    """How to reach a host's Docker engine, and what to label its resources with."""

    docker_host: pulumi.Input[str]
    """The engine's endpoint: `unix:///var/run/docker.sock` for a local host."""
    labels: dict[str, str]
    """Labels every network on the host carries (stack, project)."""
    data_network: NotRequired[bool]
    """Also create an internal network (no route out) for the data services."""
    networks: NotRequired[Sequence[str]]
    """Further networks to create, by purpose (keys of `NETWORK_PURPOSES`)."""
    ssh_opts: NotRequired[list[str]]
    """For an `ssh://` endpoint: the `ssh` client options, host key pinned (see `ssh_options`)."""
    bootstrap: NotRequired[HostBootstrapArgs]
    """For a remote host: check it and install its firewall before anything lands on it."""


class DockerHost(pulumi.ComponentResource):
    """A host's `docker.Provider` and its private bridge networks.

    Everything placed on the host is declared with this host's provider, so no
    container can land on the wrong machine.
    """

    provider: docker.Provider
    """The Docker provider every resource on this host uses."""
    network: docker.Network
    """The host's private network: services and their DNS aliases live here."""
    data_network: docker.Network | None
    """An internal network without egress for PostgreSQL and Redis (head only)."""
    networks: dict[str, docker.Network]
    """Every network of the host but its own, by purpose (`data`, `public`, ...)."""
    bootstrap: HostBootstrap | None
    """The remote host's checks and firewall; services on the host wait for it."""

    def __init__(self, name: str, args: DockerHostArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("cluster-ai:index:DockerHost", name, {}, opts)
        self.bootstrap = None
        if "bootstrap" in args:
            self.bootstrap = HostBootstrap(f"{name}-bootstrap", args["bootstrap"], pulumi.ResourceOptions(parent=self))
        # Everything on the host goes through this provider, so everything on it (images
        # pulled, volumes, networks, containers) waits for the host's checks and firewall.
        self.provider = docker.Provider(
            f"{name}-docker",
            host=args["docker_host"],
            ssh_opts=args.get("ssh_opts"),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.bootstrap] if self.bootstrap else None),
        )
        child = pulumi.ResourceOptions(parent=self, provider=self.provider)
        # Names fixed from the stack and host (not auto-named): they are known at
        # preview, so commands that name the network (the model sync) are too.
        stack = args["labels"].get("cluster-ai.stack", "stack")
        self.network = _network(f"{name}-net", f"cluster-ai-{stack}-{name}", HOST_NETWORK, args["labels"], child)
        purposes = list(args.get("networks", ()))
        if args.get("data_network", False) and "data" not in purposes:
            purposes.insert(0, "data")
        unknown = sorted(set(purposes) - set(NETWORK_PURPOSES))
        if unknown:
            raise ValueError(f"{name}: networks {unknown} are none of {sorted(NETWORK_PURPOSES)}")
        self.networks = {
            purpose: _network(
                f"{name}-{purpose}",
                f"cluster-ai-{stack}-{name}-{purpose}",
                purpose,
                args["labels"],
                child,
                internal=NETWORK_PURPOSES[purpose],
            )
            for purpose in purposes
        }
        self.data_network = self.networks.get("data")
        self.register_outputs({"network": self.network.name, "networks": {p: n.name for p, n in self.networks.items()}})


def _network(
    resource_name: str,
    docker_name: str,
    purpose: str,
    labels: dict[str, str],
    opts: pulumi.ResourceOptions,
    *,
    internal: bool = False,
) -> docker.Network:
    """A bridge network labelled with its purpose (the policy pack finds the public one by it)."""
    tagged = {**labels, "cluster-ai.network": purpose}
    return docker.Network(
        resource_name,
        name=docker_name,
        driver="bridge",
        # An internal network has no route out of the host: nothing can leave from it.
        internal=internal,
        labels=[docker.NetworkLabelArgs(label=k, value=v) for k, v in sorted(tagged.items())],
        opts=opts,
    )
