"""Run a command on a cluster host: locally for a local Docker host, over SSH otherwise."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pulumi
from pulumi_command import local, remote


def host_command(
    name: str,
    *,
    create: pulumi.Input[str],
    delete: pulumi.Input[str] | None = None,
    stdin: pulumi.Input[str] | None = None,
    triggers: Sequence[Any] = (),
    connection: remote.ConnectionArgs | None = None,
    docker_host: str | None = None,
    opts: pulumi.ResourceOptions,
) -> local.Command | remote.Command:
    """A command that runs where the host's Docker engine is.

    With `connection` it runs on the host over SSH (the host key must be pinned in
    the connection); without, it runs on this machine against `docker_host`.
    """
    if connection is not None:
        return remote.Command(
            name,
            connection=connection,
            create=create,
            delete=delete,
            stdin=stdin,
            triggers=list(triggers),
            opts=opts,
        )
    return local.Command(
        name,
        create=create,
        delete=delete,
        stdin=stdin,
        triggers=list(triggers),
        environment={"DOCKER_HOST": docker_host} if docker_host else None,
        interpreter=["/bin/sh", "-c"],
        opts=opts,
    )
