"""Rules that keep a container from reaching the host through its engine.

- The container engine's socket must not be reachable through the host's root
  mounted into a container (the node exporter's `/`): the socket's directories
  must be masked inside the container by a tmpfs. A read-only mount does not
  stop `connect()` on a socket, and the engine's API is root on the host. Any
  other host path that holds a socket is CIS 5.32's (`docker-socket-not-mounted`),
  which leaves `/` to 5.6 (sensitive paths), where the node exporter is exempted.
- No container gets a supplementary group: on a host where that gid is the
  `docker` group (or any other privileged one), the group is the privilege.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pulumi_policy import EnforcementLevel, ResourceValidationArgs, Severity

from policies.model import (
    CONTAINER,
    Group,
    Kind,
    ReportViolation,
    Rule,
    exemption,
    exemptions_schema,
    items,
    register,
    service_of,
    settings,
    who,
)
from policies.parsing import host_mounts, normalize_path, under

MANDATORY = EnforcementLevel.MANDATORY
_MEMBERS = {"type": "array", "items": {"type": "string"}}
ENGINE_SOCKETS = ["/var/run/docker.sock", "/run/docker.sock", "/run/containerd/containerd.sock"]


def _masked(container_path: str, tmpfs: Mapping[str, Any]) -> bool:
    """Is `container_path` hidden under a tmpfs the container mounts over it (or a parent)?"""
    return any(under(container_path, normalize_path(str(mount))) for mount in tmpfs)


def engine_socket_not_reachable(args: ResourceValidationArgs, report: ReportViolation) -> None:
    config = settings(args, engine_socket_not_reachable)
    if exemption(config, service_of(args.props)) is not None:
        return
    sockets = [normalize_path(str(p)) for p in config.get("socketPaths") or []]
    declared = args.props.get("tmpfs")
    tmpfs: Mapping[str, Any] = declared if isinstance(declared, Mapping) else {}
    for mount in host_mounts(args.props):
        # Every other path holding a socket is docker-socket-not-mounted's (CIS 5.32).
        if mount.path != "/":
            continue
        for socket in sockets:
            if not under(socket, mount.path):
                continue
            # Where the socket appears inside the container.
            inside = normalize_path(mount.target.rstrip("/") + "/" + socket[len(mount.path) :].lstrip("/"))
            if _masked(inside, tmpfs):
                continue
            report(
                f"{who(args)} mounts host path {mount.path} at {mount.target or '?'}, which holds the engine's "
                f"socket {socket} (reachable at {inside}): that is root on the host, read-only or not."
            )


def no_supplementary_groups(args: ResourceValidationArgs, report: ReportViolation) -> None:
    config = settings(args, no_supplementary_groups)
    granted = exemption(config, service_of(args.props))
    allowed = {str(g) for g in (granted or {}).get("groups") or []}
    for group in items(args.props.get("groupAdds")):
        if str(group) not in allowed:
            report(
                f"{who(args)} joins supplementary group {group}: on a host where that gid is privileged "
                "(the `docker` group), so is the container."
            )


RULES = register(
    [
        Rule(
            name="engine-socket-not-reachable",
            title="The engine's socket is not reachable through any mount",
            description="A container that mounts the host's root has every engine socket's directory masked by "
            "a tmpfs inside it, so the socket cannot be reached through the mount.",
            remediation="Mount only the host paths the service needs; when it needs the host's root (the node "
            "exporter), mask `/run` and `/var/run` under the mount point with empty tmpfs mounts.",
            severity=Severity.CRITICAL,
            enforcement=MANDATORY,
            validate=engine_socket_not_reachable,
            kind=Kind.RESOURCE,
            group=Group.CLUSTER,
            resource_types=(CONTAINER,),
            config={
                "socketPaths": {**_MEMBERS, "default": ENGINE_SOCKETS, "description": "Engine sockets on the host."},
                "exemptions": exemptions_schema("Services that may reach the engine's socket, and why."),
            },
        ),
        Rule(
            name="no-supplementary-groups",
            title="No supplementary groups",
            description="No container joins a supplementary group (`group_add`).",
            remediation="Remove `group_adds`; give the service's own uid/gid access to what it needs instead "
            "(a volume owned by it, a file uploaded with its owner).",
            severity=Severity.HIGH,
            enforcement=MANDATORY,
            validate=no_supplementary_groups,
            kind=Kind.RESOURCE,
            group=Group.CLUSTER,
            resource_types=(CONTAINER,),
            config={
                "exemptions": exemptions_schema(
                    "Services that may join a supplementary group, and why.", groups=_MEMBERS
                ),
            },
        ),
    ]
)
