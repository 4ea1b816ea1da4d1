"""A Docker host of the cluster: its provider and its private networks."""

from __future__ import annotations

import re
from typing import NotRequired, TypedDict

import pulumi
import pulumi_docker as docker

from components.addresses import ssh_address, url_host
from components.bootstrap import HostBootstrap, HostBootstrapArgs

__all__ = ["DockerHost", "DockerHostArgs", "known_hosts_line", "ssh_options", "url_host"]


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


class DockerHostArgs(TypedDict):
    """How to reach a host's Docker engine, and what to label its resources with."""

    docker_host: pulumi.Input[str]
    """The engine's endpoint: `unix:///var/run/docker.sock` for a local host."""
    labels: dict[str, str]
    """Labels every network on the host carries (stack, project)."""
    data_network: NotRequired[bool]
    """Also create an internal network (no route out) for the data services."""
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
    bootstrap: HostBootstrap | None
    """The remote host's checks and firewall; services on the host wait for it."""

    def __init__(self, name: str, args: DockerHostArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("cluster-ai:index:DockerHost", name, {}, opts)
        self.provider = docker.Provider(
            f"{name}-docker",
            host=args["docker_host"],
            ssh_opts=args.get("ssh_opts"),
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.bootstrap = None
        if "bootstrap" in args:
            self.bootstrap = HostBootstrap(f"{name}-bootstrap", args["bootstrap"], pulumi.ResourceOptions(parent=self))
        child = pulumi.ResourceOptions(parent=self, provider=self.provider)
        labels = [docker.NetworkLabelArgs(label=k, value=v) for k, v in sorted(args["labels"].items())]
        # Names fixed from the stack and host (not auto-named): they are known at
        # preview, so commands that name the network (the model sync) are too.
        stack = args["labels"].get("cluster-ai.stack", "stack")
        self.network = docker.Network(
            f"{name}-net",
            name=f"cluster-ai-{stack}-{name}",
            driver="bridge",
            labels=labels,
            opts=child,
        )
        self.data_network = None
        if args.get("data_network", False):
            self.data_network = docker.Network(
                f"{name}-data",
                name=f"cluster-ai-{stack}-{name}-data",
                driver="bridge",
                # Databases need no route out of the host: nothing can leave from here.
                internal=True,
                labels=labels,
                opts=child,
            )
        self.register_outputs({"network": self.network.name})
