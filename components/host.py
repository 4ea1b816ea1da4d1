"""A Docker host of the cluster: its provider and its private networks."""

from __future__ import annotations

from typing import NotRequired, TypedDict

import pulumi
import pulumi_docker as docker


class DockerHostArgs(TypedDict):
    """How to reach a host's Docker engine, and what to label its resources with."""

    docker_host: pulumi.Input[str]
    """The engine's endpoint: `unix:///var/run/docker.sock` for a local host."""
    labels: dict[str, str]
    """Labels every network on the host carries (stack, project)."""
    data_network: NotRequired[bool]
    """Also create an internal network (no route out) for the data services."""


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

    def __init__(self, name: str, args: DockerHostArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("cluster-ai:index:DockerHost", name, {}, opts)
        self.provider = docker.Provider(
            f"{name}-docker",
            host=args["docker_host"],
            opts=pulumi.ResourceOptions(parent=self),
        )
        child = pulumi.ResourceOptions(parent=self, provider=self.provider)
        labels = [docker.NetworkLabelArgs(label=k, value=v) for k, v in sorted(args["labels"].items())]
        self.network = docker.Network(
            f"{name}-net",
            driver="bridge",
            labels=labels,
            opts=child,
        )
        self.data_network = None
        if args.get("data_network", False):
            self.data_network = docker.Network(
                f"{name}-data",
                driver="bridge",
                # Databases need no route out of the host: nothing can leave from here.
                internal=True,
                labels=labels,
                opts=child,
            )
        self.register_outputs({"network": self.network.name})
