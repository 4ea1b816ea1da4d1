"""The one place that owns the secure defaults of every container in the cluster.

Every service component describes its container with a `ServiceContainer` and
hands it to `hardened_container`, which adds what no service gets to forget:
the image pinned through `RemoteImage.image_id`, every capability dropped,
`no-new-privileges`, a read-only root filesystem unless the image cannot run on
one, memory and CPU limits, a healthcheck, a bounded restart policy, log rotation,
labels, private networks only, and no published port unless one is asked for,
bound to an explicit address. Secrets never go into the container's environment:
they are files (read-only, root-owned 0444) in a small volume of their own, which
only that service mounts (read-only). The engine refuses uploads into a read-only
container, so the files go in through a "file holder": a container created for
the purpose and never started (`_file_holder`). A run-once task (`run_once`) is
the other kind of container: `up` waits for it to finish and keeps its output.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_docker as docker

SECRETS_DIR = "/run/secrets"
# Plain (non-secret) config files a service reads, uploaded into a volume of their own.
CONFIG_DIR = "/etc/cluster-ai"
# Host paths no container gets, not even read-only: they are root on the host.
FORBIDDEN_HOST_PATHS = ("/var/run", "/run", "/var/run/docker.sock", "/run/docker.sock", "/run/containerd")
# Where engine sockets live (Docker's, containerd's, rootless Docker's under
# /run/user): a host path above them must mask them with an empty tmpfs.
SOCKET_DIRS = ("/run", "/var/run")
MASK_TMPFS = "ro,nosuid,nodev,noexec,size=4k,mode=0555"
# Images without `*_FILE` support get their secret env vars from files through
# this loader: the values never appear in `docker inspect` or in the env input.
SECRET_ENV_PREFIX = "env."
SECRET_ENV_LOADER = (
    'for f in /run/secrets/env.*; do [ -f "$f" ] || continue; export "${f##*/env.}=$(cat "$f")"; done; exec "$@"'
)
# `labels` makes the json-file driver write these container labels into every
# log line (`attrs`): the log shipper names each line's service and container
# from the file alone, with no access to the Docker socket.
LOG_LABELS = ("cluster-ai.container", "cluster-ai.host", "cluster-ai.service")
LOG_OPTS = {"max-size": "10m", "max-file": "3", "labels": ",".join(LOG_LABELS)}
# CIS Docker Benchmark 5.15: restart on failure, at most five times.
RESTART_POLICY = "on-failure"
MAX_RESTARTS = 5


@dataclass(frozen=True)
class Publish:
    """A published port. The address is required: Docker's default is 0.0.0.0.

    Only a port marked `public` (the TLS proxy's 443/80) may use the unspecified
    address; every other one is bound to a host or loopback address.
    """

    internal: int
    external: int
    address: str
    public: bool = False

    def __post_init__(self) -> None:
        if ipaddress.ip_address(self.address).is_unspecified and not self.public:
            raise ValueError(f"port {self.external}: refusing to publish on {self.address}")


@dataclass(frozen=True)
class Healthcheck:
    """A Docker healthcheck; `test` is the exec form (`CMD` or `CMD-SHELL` first)."""

    test: Sequence[str]
    interval_s: int = 15
    timeout_s: int = 5
    retries: int = 5
    start_period_s: int = 30


@dataclass(frozen=True)
class Mount:
    """A named volume mounted into the container."""

    volume: pulumi.Input[str]
    target: str
    read_only: bool = False


@dataclass(frozen=True)
class HostPath:
    """A host path mounted read-only: the narrow exception an exporter reporting on its host needs.

    Always read-only; never the container engine's socket, nor a directory holding it
    (a read-only mount does not stop `connect()` on a socket: that would be root on the host).
    """

    source: str
    target: str
    propagation: str | None = None
    """`rslave` for the host's root, so filesystems mounted later are seen too."""
    masks: Sequence[str] = ()
    """Host paths under `source` hidden under an empty read-only tmpfs in the container.

    Required for every socket directory (`SOCKET_DIRS`) below `source`: a mount of
    the host's `/` must not carry the engine's socket with it."""

    def __post_init__(self) -> None:
        if not self.source.startswith("/") or not self.target.startswith("/"):
            raise ValueError(f"host path {self.source} -> {self.target}: both must be absolute")
        normalized = self.source.rstrip("/") or "/"
        below = [d for d in SOCKET_DIRS if normalized == "/" or d.startswith(normalized + "/")]
        unmasked = [d for d in below if d not in self.masks]
        if unmasked:
            raise ValueError(f"host path {self.source}: mask {', '.join(unmasked)} (the container engine's socket)")
        for mask in self.masks:
            if not (normalized == "/" or mask.startswith(normalized + "/")):
                raise ValueError(f"host path {self.source}: mask {mask} is not below it")
        if normalized.endswith(".sock") or any(
            normalized == p or normalized.startswith(p + "/") for p in FORBIDDEN_HOST_PATHS
        ):
            raise ValueError(
                f"host path {self.source}: refusing to mount the container engine's socket or its directory"
            )
        if self.propagation not in (None, "rslave", "slave", "rprivate", "private"):
            raise ValueError(f"host path {self.source}: propagation {self.propagation!r} could reach the host")


@dataclass(frozen=True)
class NetworkAttachment:
    """A private network and the DNS names the container answers to on it."""

    network: pulumi.Input[str]
    aliases: Sequence[str] = ()


@dataclass(frozen=True)
class ServiceContainer:
    """What a service needs from its container; the secure rest is added for it."""

    service: str
    """The service's name: its label, and the role the policy pack knows it by."""
    image: str
    networks: Sequence[NetworkAttachment]
    healthcheck: Healthcheck | None
    """Required for a service; None for a task (`run_once`), which has nothing to probe."""
    memory_mb: int
    cpus: float
    command: Sequence[pulumi.Input[str]] | None = None
    entrypoint: Sequence[str] | None = None
    env: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)
    secret_env: Mapping[str, pulumi.Output[str]] = field(default_factory=dict)
    """Env vars for images with no `*_FILE` support: loaded from files at start."""
    secret_files: Mapping[str, pulumi.Output[str]] = field(default_factory=dict)
    """File name under /run/secrets -> secret content."""
    mounts: Sequence[Mount] = ()
    scratch: Sequence[str] = ()
    """Paths that get an anonymous volume, removed with the container (spill space)."""
    tmpfs: Mapping[str, str] = field(default_factory=dict)
    publish: Sequence[Publish] = ()
    user: str | None = None
    """`uid:gid` to run as; None keeps the image's user (documented per service)."""
    read_only_root: bool = True
    cap_add: Sequence[str] = ()
    gpus: str | None = None
    config_files: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)
    """Path relative to CONFIG_DIR -> content: plain config, uploaded (0444) into a volume of its own."""
    host_paths: Sequence[HostPath] = ()
    """Host paths mounted read-only, for exporters that report on the host (each one an exception)."""
    pid_mode: str | None = None
    """`host` for an exporter that must see the host's processes; nothing else is accepted."""
    labels: Mapping[str, str] = field(default_factory=dict)
    stop_grace_s: int = 30
    wait_healthy: bool = True
    """Let `pulumi up` wait for the healthcheck, so dependants start on a live service."""
    run_once: bool = False
    """A task, not a service: `pulumi up` waits for it to exit (attach) and records its exit
    code and output; it is never restarted, and a task that has exited is not drift. It runs
    through the host's own Docker provider, so it needs no other connection to the host."""


def hardened_container(
    name: str,
    spec: ServiceContainer,
    opts: pulumi.ResourceOptions,
) -> docker.Container:
    """Declare `spec`'s image and container (and its secrets volume) under `opts.parent`."""
    if not spec.networks:
        # Without a private network Docker would attach the default bridge.
        raise ValueError(f"{name}: a service container needs at least one private network")
    if spec.pid_mode not in (None, "host"):
        raise ValueError(f"{name}: pid_mode may only be 'host' (an exporter reading the host's processes)")
    if spec.run_once != (spec.healthcheck is None):
        raise ValueError(f"{name}: a service needs a healthcheck, and only a task (run_once) goes without one")
    image = docker.RemoteImage(
        f"{name}-image",
        name=spec.image,
        # Keep the image when the container goes: another container may use it,
        # and a rollback should not have to pull again.
        keep_locally=True,
        opts=_prepared(opts),
    )
    file_mounts: list[Mount] = []
    uploads: list[docker.ContainerUploadArgs] = []
    if spec.secret_files or spec.secret_env:
        secrets = docker.Volume(
            f"{name}-secrets",
            labels=_volume_labels(spec, "secrets"),
            opts=_prepared(opts),
        )
        file_mounts.append(Mount(volume=secrets.name, target=SECRETS_DIR, read_only=True))
        files = dict(spec.secret_files)
        files.update({SECRET_ENV_PREFIX + k: v for k, v in spec.secret_env.items()})
        uploads = [_secret_upload(file_name, content) for file_name, content in sorted(files.items())]
    if spec.config_files:
        config = docker.Volume(
            f"{name}-config",
            labels=_volume_labels(spec, "config"),
            opts=_prepared(opts),
        )
        file_mounts.append(Mount(volume=config.name, target=CONFIG_DIR, read_only=True))
        uploads += [
            docker.ContainerUploadArgs(file=f"{CONFIG_DIR}/{path.lstrip('/')}", content=content, permissions="0444")
            for path, content in sorted(spec.config_files.items())
        ]
    holder = _file_holder(name, spec, image.image_id, file_mounts, uploads, opts) if uploads else None
    mounts = [*spec.mounts, *file_mounts]

    entrypoint = spec.entrypoint
    if spec.secret_env:
        if spec.entrypoint is not None or spec.command is None:
            raise ValueError(f"{name}: secret_env needs the image's command and no entrypoint override")
        entrypoint = ["/bin/sh", "-c", SECRET_ENV_LOADER, "load-secret-env"]

    container_opts = pulumi.ResourceOptions.merge(
        _child(opts),
        pulumi.ResourceOptions(
            # A published port or a data volume cannot be held by two containers
            # at once: replace by stopping the old one first.
            delete_before_replace=bool(spec.publish or spec.mounts),
            # The container's own (a task re-runs when what it works on is replaced),
            # and its files' holder: new secrets or config are read by a new container.
            replacement_trigger=_trigger(opts.replacement_trigger, holder),
            depends_on=[holder] if holder is not None else None,
        ),
    )
    return docker.Container(
        name,
        image=image.image_id,
        command=list(spec.command) if spec.command is not None else None,
        entrypoints=list(entrypoint) if entrypoint is not None else None,
        envs=[
            f"{k}={v}" if isinstance(v, str) else pulumi.Output.concat(k, "=", v) for k, v in sorted(spec.env.items())
        ],
        user=spec.user,
        read_only=spec.read_only_root,
        capabilities=docker.ContainerCapabilitiesArgs(drops=["ALL"], adds=sorted(spec.cap_add) or None),
        # Docker adds label=disable to a container in the host's PID namespace; declared,
        # so the declaration is what the engine runs (no drift on every refresh).
        security_opts=["no-new-privileges:true", *(["label=disable"] if spec.pid_mode == "host" else [])],
        privileged=False,
        memory=spec.memory_mb,
        # Swap would let a container overrun its memory limit on disk.
        memory_swap=spec.memory_mb,
        cpus=cpus_text(spec.cpus),
        **_lifecycle(spec),
        log_driver="json-file",
        log_opts=LOG_OPTS,
        labels=[docker.ContainerLabelArgs(label=k, value=v) for k, v in sorted(_labels(name, spec).items())],
        networks_advanced=[
            docker.ContainerNetworksAdvancedArgs(name=n.network, aliases=list(n.aliases) or None) for n in spec.networks
        ],
        ports=[
            docker.ContainerPortArgs(internal=p.internal, external=p.external, ip=p.address, protocol="tcp")
            for p in spec.publish
        ]
        or None,
        mounts=[
            docker.ContainerMountArgs(type="volume", source=m.volume, target=m.target, read_only=m.read_only)
            for m in mounts
        ]
        + [docker.ContainerMountArgs(type="volume", target=path) for path in spec.scratch]
        + [
            docker.ContainerMountArgs(
                type="bind",
                source=h.source,
                target=h.target,
                read_only=True,
                bind_options=docker.ContainerMountBindOptionsArgs(propagation=h.propagation) if h.propagation else None,
            )
            for h in spec.host_paths
        ]
        or None,
        tmpfs={**dict(spec.tmpfs), **_masks(spec.host_paths)} or None,
        gpus=spec.gpus,
        pid_mode=spec.pid_mode,
        init=True,
        destroy_grace_seconds=spec.stop_grace_s,
        opts=container_opts,
    )


def _file_holder(
    name: str,
    spec: ServiceContainer,
    image_id: pulumi.Input[str],
    mounts: Sequence[Mount],
    uploads: Sequence[docker.ContainerUploadArgs],
    opts: pulumi.ResourceOptions,
) -> docker.Container:
    """A container that is created and never started: it carries `uploads` into the volumes.

    The engine copies an upload into a container through its root (`/`), which Docker
    refuses for a read-only root even when the file lands in a volume. So the files go
    in through this holder (writable root, never run, no network), and the service
    mounts the same volumes read-only.
    """
    return docker.Container(
        f"{name}-files",
        image=image_id,
        start=False,
        # Never started: a created container is its finished state, not drift.
        must_run=False,
        network_mode="none",
        capabilities=docker.ContainerCapabilitiesArgs(drops=["ALL"]),
        security_opts=["no-new-privileges:true"],
        privileged=False,
        read_only=False,
        restart="no",
        memory=16,
        memory_swap=16,
        uploads=list(uploads),
        mounts=[docker.ContainerMountArgs(type="volume", source=m.volume, target=m.target) for m in mounts],
        labels=[
            docker.ContainerLabelArgs(label=k, value=v)
            for k, v in sorted({**_labels(f"{name}-files", spec), "cluster-ai.role": "file-holder"}.items())
        ],
        opts=_prepared(opts),
    )


def _trigger(own: pulumi.Input[object] | None, holder: docker.Container | None) -> pulumi.Input[object] | None:
    if holder is None:
        return own
    return holder.id if own is None else pulumi.Output.all(own, holder.id)


def _lifecycle(spec: ServiceContainer) -> dict[str, Any]:
    """How the container lives: a service restarts (bounded) and is waited on until healthy;
    a task runs once to its end while `up` waits for it (attach) and keeps its output (logs)."""
    if spec.healthcheck is None:
        # must_run=False: an exited task is its finished state, not drift to repair.
        return {"restart": "no", "must_run": False, "attach": True, "logs": True, "wait": False}
    check = spec.healthcheck
    return {
        "restart": RESTART_POLICY,
        "max_retry_count": MAX_RESTARTS,
        "healthcheck": docker.ContainerHealthcheckArgs(
            tests=list(check.test),
            interval=go_duration(check.interval_s),
            timeout=go_duration(check.timeout_s),
            retries=check.retries,
            start_period=go_duration(check.start_period_s),
        ),
        "wait": spec.wait_healthy,
        "wait_timeout": check.start_period_s + check.interval_s * (check.retries + 1),
    }


# The docker provider reads a container back from the engine and writes what it
# finds into its state: an input spelled otherwise than that reading is a diff on
# every `up`. These two spell values the way the provider reads them.


def cpus_text(cpus: float) -> str:
    """`--cpus` as the provider reads it back: `1.0`, `0.5`, `0.25` (nano-CPUs, trailing zeros cut)."""
    nano = round(cpus * 1_000_000_000)
    whole, fraction = divmod(nano, 1_000_000_000)
    return f"{whole}.0" if fraction == 0 else f"{whole}.{fraction:09d}".rstrip("0")


def go_duration(seconds: int) -> str:
    """A healthcheck duration as Go's `time.Duration.String()` prints it: `15s`, `1m0s`, `1h0m0s`."""
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative: {seconds}")
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def _masks(host_paths: Sequence[HostPath]) -> dict[str, str]:
    """Container path -> tmpfs options hiding each masked host directory (see `HostPath.masks`)."""
    out: dict[str, str] = {}
    for host_path in host_paths:
        source = host_path.source.rstrip("/")
        for mask in host_path.masks:
            out[host_path.target.rstrip("/") + mask[len(source) :]] = MASK_TMPFS
    return out


def data_volume(
    name: str,
    service: str,
    *,
    protect: bool,
    labels: Mapping[str, str],
    opts: pulumi.ResourceOptions,
) -> docker.Volume:
    """A named volume that holds a service's data; protected and retained in prod."""
    return docker.Volume(
        name,
        labels=[
            docker.VolumeLabelArgs(label=k, value=v)
            for k, v in sorted({**labels, "cluster-ai.service": service, "cluster-ai.volume": "data"}.items())
        ],
        opts=pulumi.ResourceOptions.merge(
            _prepared(opts),
            pulumi.ResourceOptions(protect=protect, retain_on_delete=protect),
        ),
    )


def child_options(component: pulumi.ComponentResource, opts: pulumi.ResourceOptions | None) -> pulumi.ResourceOptions:
    """Options for a component's children: parented to it, and after what it depends on.

    Pulumi does not hand a component's `depends_on` down to its children, so a
    container would not wait for its host's bootstrap without this.
    """
    return pulumi.ResourceOptions(parent=component, depends_on=opts.depends_on if opts is not None else None)


def generated_options(component: pulumi.ComponentResource) -> pulumi.ResourceOptions:
    """Options for a value a component generates (a password, a key): its child, waiting
    for nothing. It is state only, so the component's `depends_on` (the host's bootstrap,
    the services it starts after) would only lengthen the chain to the services using it."""
    return pulumi.ResourceOptions(parent=component)


def _child(opts: pulumi.ResourceOptions) -> pulumi.ResourceOptions:
    if opts.parent is None:
        raise ValueError("hardened resources are always declared as children of a component")
    return pulumi.ResourceOptions(parent=opts.parent, provider=opts.provider, depends_on=opts.depends_on)


def _prepared(opts: pulumi.ResourceOptions) -> pulumi.ResourceOptions:
    """What a container needs before it starts (its image, file volumes and holder): the
    component's parent and provider, not its `depends_on`.

    `depends_on` orders services (Open WebUI starts after PostgreSQL and Redis are
    healthy); pulling an image or writing a file waits for nothing but the host, and
    the host's readiness is its provider's (components/host.py makes the provider wait
    for the bootstrap). Preparing in parallel keeps the longest chain at 6 resources
    however many services wait on one another (tests/unit/test_scaling.py).
    """
    child = _child(opts)
    return pulumi.ResourceOptions(parent=child.parent, provider=child.provider)


def _labels(name: str, spec: ServiceContainer) -> dict[str, str]:
    # `cluster-ai.container` is the resource name: Docker's container name gets a
    # random suffix, so `stacks status` finds a declared container by this label.
    return {
        **spec.labels,
        "cluster-ai.service": spec.service,
        "cluster-ai.container": name,
        "cluster-ai.managed-by": "pulumi",
    }


def _volume_labels(spec: ServiceContainer, kind: str) -> list[docker.VolumeLabelArgs]:
    labels = {**spec.labels, "cluster-ai.service": spec.service, "cluster-ai.volume": kind}
    return [docker.VolumeLabelArgs(label=k, value=v) for k, v in sorted(labels.items())]


def _secret_upload(file_name: str, content: pulumi.Output[str]) -> docker.ContainerUploadArgs:
    """A secret file, readable (never writable) by the service in a volume only it mounts.

    Root-owned 0444: the engine can set an upload's owner only by chowning every file
    to the holder's user, which it looks up by name on its own host, so the service's
    `uid:gid` cannot be given; no other container mounts this volume.
    """
    return docker.ContainerUploadArgs(
        file=f"{SECRETS_DIR}/{file_name}",
        # Keep it secret in state even if the caller forgot to mark it.
        content=pulumi.Output.secret(content),
        permissions="0444",
    )
