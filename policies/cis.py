"""The CIS Docker Benchmark v1.6.0 checks a declared container, image or Docker provider can express.

One validator per recommendation (sections 2, 4 and 5). Recommendations a
declaration cannot express are listed in `NOT_EXPRESSIBLE` with the reason, so
the catalogue accounts for every one of section 5.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pulumi_policy import EnforcementLevel, ResourceValidationArgs, Severity

from policies.model import (
    CONTAINER,
    DOCKER_PROVIDER,
    LOCAL_COMMAND,
    REMOTE_COMMAND,
    REMOTE_IMAGE,
    Group,
    Kind,
    ReportViolation,
    Rule,
    exemption,
    exemptions_schema,
    is_unknown,
    items,
    mapping,
    number,
    peek,
    register,
    service_of,
    settings,
    who,
)
from policies.parsing import (
    command_words,
    docker_run_images,
    env_pairs,
    host_mounts,
    ip_of,
    is_image_id,
    parse_image,
    port_allowed,
    security_options,
    under,
)

MANDATORY = EnforcementLevel.MANDATORY
ADVISORY = EnforcementLevel.ADVISORY


def _ports(props: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [p for p in items(props.get("ports")) if isinstance(p, Mapping)]


def _port_number(value: Any) -> int | None:
    n = number(value)
    return int(n) if n is not None else None


# --- containers that never run -------------------------------------------------


def is_file_holder(props: Mapping[str, Any]) -> bool:
    """A container that is created and never started: it only carries uploads into volumes.

    Exactly: `start` and `mustRun` false, restart "no", no network at all, nothing
    published, no host path, no capability added, not privileged. Such a container runs
    no process, so the rules about a running process (its user, a read-only root, a
    healthcheck, CPU and memory limits) have nothing to check; every rule about what a
    created container holds (its image, mounts, capabilities, privileges, labels) still
    applies. Anything less than all of these is an ordinary container, checked in full.
    Restart "no" as well: older Docker engines started a never-started container whose
    policy was `always` when the daemon started (fixed by moby/moby#36924).
    """
    capabilities = mapping(props.get("capabilities"))
    return (
        props.get("start") is False
        and props.get("mustRun") is False
        and str(props.get("restart") or "no") == "no"
        and str(props.get("networkMode") or "") == "none"
        and not items(props.get("networksAdvanced"))
        and not _ports(props)
        and props.get("publishAllPorts") is not True
        and not any(True for _ in host_mounts(props))
        and not items(capabilities.get("adds"))
        and props.get("privileged") is not True
    )


# --- 4.1 --------------------------------------------------------------------


def _is_root(user: str) -> bool:
    name = user.split(":", 1)[0].strip()
    return name in ("0", "root")


def containers_run_as_non_root(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if is_file_holder(args.props):
        return  # never started: no process to run as a user
    config = settings(args, containers_run_as_non_root)
    if exemption(config, service_of(args.props)) is not None:
        return
    user = args.props.get("user")
    if user is None or str(user).strip() == "":
        report(f"{who(args)} runs as its image's default user, which may be root: set `user` to a non-root uid:gid.")
    elif _is_root(str(user)):
        report(f"{who(args)} runs as root (user {user!r}): set `user` to a non-root uid:gid.")


# --- 5.2 / 5.3 / 5.22 / 5.26: security options --------------------------------


def apparmor_profile_kept(args: ResourceValidationArgs, report: ReportViolation) -> None:
    for name, value in security_options(args.props):
        if name == "apparmor" and value.lower() == "unconfined":
            report(f"{who(args)} disables AppArmor (security option 'apparmor={value}').")


def selinux_labels_kept(args: ResourceValidationArgs, report: ReportViolation) -> None:
    host_pid = str(args.props.get("pidMode") or "").lower() == "host"
    for name, value in security_options(args.props):
        # Docker itself adds label=disable to a container that shares the host's PID
        # namespace; that sharing is governed (and excepted by name) by its own rule.
        if name == "label" and value.lower() == "disable" and host_pid:
            continue
        if name == "label" and (value.lower() == "disable" or value.lower() == "type:spc_t"):
            report(f"{who(args)} turns SELinux separation off (security option 'label={value}').")


def default_seccomp_kept(args: ResourceValidationArgs, report: ReportViolation) -> None:
    for name, value in security_options(args.props):
        if name == "seccomp" and value.lower() == "unconfined":
            report(f"{who(args)} disables the default seccomp profile (security option 'seccomp={value}').")


def no_new_privileges(args: ResourceValidationArgs, report: ReportViolation) -> None:
    values = [value.lower() for name, value in security_options(args.props) if name == "no-new-privileges"]
    if not values or any(v in ("false", "0") for v in values):
        report(
            f"{who(args)} may gain privileges through setuid binaries: add security option 'no-new-privileges:true'."
        )


# --- 5.4 / 5.5 ----------------------------------------------------------------


def _capability(name: Any) -> str:
    return str(name).strip().upper().removeprefix("CAP_")


def capabilities_restricted(args: ResourceValidationArgs, report: ReportViolation) -> None:
    config = settings(args, capabilities_restricted)
    capabilities = mapping(args.props.get("capabilities"))
    drops = {_capability(c) for c in items(capabilities.get("drops"))}
    if "ALL" not in drops:
        report(f"{who(args)} keeps Docker's default capabilities: drop ALL and add back only what it needs.")
    allowed = {_capability(c) for c in config.get("allowedCapabilities") or []}
    granted = exemption(config, service_of(args.props))
    if granted is not None:
        allowed |= {_capability(c) for c in granted.get("capabilities") or []}
    extra = sorted({_capability(c) for c in items(capabilities.get("adds"))} - allowed)
    if extra:
        report(f"{who(args)} adds capabilities {', '.join(extra)} that are not on its allow-list.")


def no_privileged_containers(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.props.get("privileged") is True:
        report(f"{who(args)} runs privileged: every capability, every device, no seccomp or AppArmor.")


# --- 5.6 / 5.20 / 5.32: host paths --------------------------------------------


def _exposes(path: str, sensitive: str) -> bool:
    """Does mounting host `path` expose `sensitive`: is it that directory, inside it, or above it?"""
    if sensitive == "/":
        return path == "/"
    return under(path, sensitive) or under(sensitive, path)


def sensitive_host_paths_not_mounted(args: ResourceValidationArgs, report: ReportViolation) -> None:
    config = settings(args, sensitive_host_paths_not_mounted)
    sensitive = [str(p) for p in config.get("sensitivePaths") or []]
    granted = exemption(config, service_of(args.props))
    allowed = {str(p) for p in (granted or {}).get("paths") or []}
    for mount in host_mounts(args.props):
        if not any(_exposes(mount.path, s) for s in sensitive):
            continue
        if mount.path in allowed:
            if not mount.read_only:
                report(f"{who(args)} may mount host path {mount.path} only read-only (exemption), but it is writable.")
            continue
        report(f"{who(args)} mounts sensitive host path {mount.path} at {mount.target or '?'}.")


def docker_socket_not_mounted(args: ResourceValidationArgs, report: ReportViolation) -> None:
    config = settings(args, docker_socket_not_mounted)
    if exemption(config, service_of(args.props)) is not None:
        return
    sockets = [str(p) for p in config.get("socketPaths") or []]
    for mount in host_mounts(args.props):
        # Mounting the host's root is rule 5.6's (sensitive paths), not this one's.
        if mount.path == "/":
            continue
        if mount.path.endswith("/docker.sock") or any(under(s, mount.path) for s in sockets):
            report(
                f"{who(args)} mounts the container engine's socket ({mount.path}): "
                "that is root on the host, read-only or not."
            )


def mount_propagation_not_shared(args: ResourceValidationArgs, report: ReportViolation) -> None:
    for mount in items(args.props.get("mounts")):
        if not isinstance(mount, Mapping) or mount.get("type") != "bind":
            continue
        propagation = str(mapping(mount.get("bindOptions")).get("propagation") or "").lower()
        if propagation in ("shared", "rshared"):
            report(f"{who(args)} mounts {mount.get('target', '?')} with '{propagation}' propagation.")


# --- 5.7 ----------------------------------------------------------------------


def sshd_not_run(args: ResourceValidationArgs, report: ReportViolation) -> None:
    config = settings(args, sshd_not_run)
    names = [str(n) for n in config.get("processNames") or []]
    for word in command_words(args.props):
        for name in names:
            if re.search(rf"(^|[/\s]){re.escape(name)}(\s|$)", word):
                report(f"{who(args)} starts {name}: reach containers with `docker exec`, not SSH.")
                return


# --- 5.8 / 5.9 / 5.14: published ports ----------------------------------------


def privileged_ports_not_mapped(args: ResourceValidationArgs, report: ReportViolation) -> None:
    config = settings(args, privileged_ports_not_mapped)
    minimum = int(config.get("minimumPort", 1024))
    granted = exemption(config, service_of(args.props))
    allowed = {int(p) for p in (granted or {}).get("ports") or []}
    for port in _ports(args.props):
        external = _port_number(port.get("external"))
        if external is not None and external < minimum and external not in allowed:
            report(f"{who(args)} publishes privileged host port {external} (below {minimum}).")


def only_allowed_ports(args: ResourceValidationArgs, report: ReportViolation) -> None:
    config = settings(args, only_allowed_ports)
    service = service_of(args.props)
    allowed = list((config.get("allowedPorts") or {}).get(service or "", []))
    for port in _ports(args.props):
        external = _port_number(port.get("external"))
        if external is None:
            continue
        if not port_allowed(external, allowed):
            shown = ", ".join(str(a) for a in allowed) or "none"
            report(f"{who(args)} publishes port {external}, not one its service allows ({shown}).")


def ports_bound_to_an_address(args: ResourceValidationArgs, report: ReportViolation) -> None:
    config = settings(args, ports_bound_to_an_address)
    if exemption(config, service_of(args.props)) is not None:
        return
    if args.props.get("publishAllPorts") is True:
        report(f"{who(args)} publishes every exposed port on every interface (publishAllPorts).")
    for port in _ports(args.props):
        address = port.get("ip")
        external = _port_number(port.get("external")) or _port_number(port.get("internal"))
        if address is None or str(address).strip() == "":
            report(f"{who(args)} publishes port {external} without an address: Docker binds it on 0.0.0.0.")
            continue
        ip = ip_of(str(address))
        if ip is not None and ip.is_unspecified:
            report(f"{who(args)} publishes port {external} on {address}, every interface of the host.")


# --- 5.10 / 5.16 / 5.17 / 5.31: namespaces -------------------------------------


def host_network_not_shared(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if str(args.props.get("networkMode") or "").lower() == "host":
        report(f"{who(args)} shares the host's network namespace (networkMode 'host').")


def host_pid_namespace_not_shared(args: ResourceValidationArgs, report: ReportViolation) -> None:
    config = settings(args, host_pid_namespace_not_shared)
    if exemption(config, service_of(args.props)) is not None:
        return
    if str(args.props.get("pidMode") or "").lower() == "host":
        report(f"{who(args)} shares the host's process namespace (pidMode 'host').")


def host_ipc_namespace_not_shared(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if str(args.props.get("ipcMode") or "").lower() == "host":
        report(f"{who(args)} shares the host's IPC namespace (ipcMode 'host').")


def host_user_namespace_not_shared(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if str(args.props.get("usernsMode") or "").lower() == "host":
        report(f"{who(args)} shares the host's user namespace (usernsMode 'host').")


# --- 5.11 / 5.12: limits ------------------------------------------------------


def memory_limited(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if is_file_holder(args.props):
        return  # never started: no process to limit
    config = settings(args, memory_limited)
    memory = number(args.props.get("memory"))
    minimum = float(config.get("minimumMemoryMb", 6))
    if memory is None or memory <= 0:
        report(f"{who(args)} has no memory limit: set `memory` (MB).")
    elif memory < minimum:
        report(f"{who(args)} has a memory limit of {memory:g} MB, below Docker's minimum of {minimum:g} MB.")


def cpu_limited(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if is_file_holder(args.props):
        return  # never started: no process to limit
    config = settings(args, cpu_limited)
    limits = [number(args.props.get("cpus")), number(args.props.get("cpuQuota"))]
    if config.get("acceptCpuShares"):
        limits.append(number(args.props.get("cpuShares")))
    if not any(n is not None and n > 0 for n in limits):
        report(f"{who(args)} has no CPU limit: set `cpus`.")


# --- 5.13 ---------------------------------------------------------------------


def root_filesystem_read_only(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if is_file_holder(args.props):
        return  # never started: no process to write into its root
    config = settings(args, root_filesystem_read_only)
    if exemption(config, service_of(args.props)) is not None:
        return
    if args.props.get("readOnly") is not True:
        report(f"{who(args)} has a writable root filesystem: set `read_only` and give it tmpfs or volumes.")


# --- 5.15 ---------------------------------------------------------------------


def restart_policy_bounded(args: ResourceValidationArgs, report: ReportViolation) -> None:
    config = settings(args, restart_policy_bounded)
    maximum = int(config.get("maxRetries", 5))
    policy = str(args.props.get("restart") or "no")
    if policy == "no":
        return
    if policy != "on-failure":
        report(f"{who(args)} restarts '{policy}', without bound: use 'on-failure' with max_retry_count <= {maximum}.")
        return
    retries = number(args.props.get("maxRetryCount"))
    if retries is None or retries <= 0 or retries > maximum:
        shown = "unlimited" if retries is None or retries <= 0 else f"{retries:g}"
        report(f"{who(args)} restarts on failure {shown} times: set max_retry_count between 1 and {maximum}.")


# --- 5.18 ---------------------------------------------------------------------


def host_devices_not_exposed(args: ResourceValidationArgs, report: ReportViolation) -> None:
    config = settings(args, host_devices_not_exposed)
    service = service_of(args.props)
    granted = exemption(config, service)
    allowed_devices = {str(p) for p in (granted or {}).get("devices") or []}
    for device in items(args.props.get("devices")):
        path = str(mapping(device).get("hostPath", device))
        if path not in allowed_devices:
            report(f"{who(args)} gets raw host device {path}.")
    if items(args.props.get("deviceCgroupRules")):
        report(f"{who(args)} widens the device cgroup (deviceCgroupRules): devices appear in it unlisted.")
    gpu_services = config.get("gpuServices") or {}
    requests = [mapping(r) for r in items(args.props.get("deviceRequests"))]
    gpus = args.props.get("gpus")
    if (gpus or requests) and service not in gpu_services:
        report(f"{who(args)} requests GPUs, but its service is not one allowed GPUs ({', '.join(gpu_services)}).")
    drivers = {str(d) for d in config.get("deviceRequestDrivers") or []}
    for request in requests:
        driver = str(request.get("driver") or "")
        if driver not in drivers:
            report(f"{who(args)} requests devices from driver {driver or '(default)'!r}, not {sorted(drivers)}.")


# --- 5.25 ---------------------------------------------------------------------


def default_cgroup_used(args: ResourceValidationArgs, report: ReportViolation) -> None:
    parent = args.props.get("cgroupParent")
    if parent:
        report(f"{who(args)} runs under cgroup parent {parent!r}, outside Docker's limits and accounting.")
    if str(args.props.get("cgroupnsMode") or "").lower() == "host":
        report(f"{who(args)} shares the host's cgroup namespace (cgroupnsMode 'host').")


# --- 5.27 ---------------------------------------------------------------------


def is_task(props: Mapping[str, Any]) -> bool:
    """A run-once container (`pulumi up` attaches until it exits, never restarted): nothing to probe."""
    return props.get("attach") is True and props.get("mustRun") is False and str(props.get("restart") or "no") == "no"


def healthcheck_defined(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if is_task(args.props) or is_file_holder(args.props):
        return
    tests = [str(t) for t in items(mapping(args.props.get("healthcheck")).get("tests"))]
    if not tests or tests[0].upper() == "NONE":
        report(f"{who(args)} has no healthcheck: Docker cannot tell a hung service from a live one.")


# --- 5.30 ---------------------------------------------------------------------


def default_bridge_not_used(args: ResourceValidationArgs, report: ReportViolation) -> None:
    mode = str(args.props.get("networkMode") or "").lower()
    advanced = items(args.props.get("networksAdvanced"))
    # The docker provider fills in networkMode 'bridge' (its default) and, when the
    # container names networks of its own, disconnects it from the default bridge
    # before it starts: only 'bridge' without networks of its own leaves it there.
    if mode in ("bridge", "default") and not advanced:
        report(f"{who(args)} is on Docker's default bridge (networkMode {mode!r}): use a user-defined network.")
    elif not mode and not advanced:
        report(f"{who(args)} joins no user-defined network, so Docker puts it on the default bridge.")


# --- 4.10 (runtime): secrets in env --------------------------------------------

_URL_PASSWORD = re.compile(r"://[^/@:\s]*:[^/@\s]+@")
_PLAIN_VALUES = frozenset({"", "true", "false", "yes", "no", "on", "off", "0", "1", "none", "null"})


def no_plaintext_secrets_in_env(args: ResourceValidationArgs, report: ReportViolation) -> None:
    config = settings(args, no_plaintext_secrets_in_env)
    pattern = re.compile(str(config.get("secretKeyPattern")), re.IGNORECASE)
    reference = re.compile(str(config.get("referenceKeyPattern")), re.IGNORECASE)
    allowed = {str(k) for k in config.get("allowedKeys") or []}
    for key, value in env_pairs(args.props):
        if key in allowed or is_unknown(value):
            continue
        if _URL_PASSWORD.search(value):
            report(f"{who(args)} has a password in the URL in env {key}: pass it as a secret file.")
        elif "-----BEGIN" in value and "PRIVATE KEY" in value:
            report(f"{who(args)} has a private key in env {key}: pass it as a secret file.")
        elif pattern.search(key) and not reference.search(key) and value.strip().lower() not in _PLAIN_VALUES:
            report(f"{who(args)} sets secret-looking env {key} in plain text (visible in `docker inspect`).")


# --- 5.28 (pinned images) -----------------------------------------------------


def _unpinned(reference: str, forbidden_tags: set[str]) -> str | None:
    """Why `reference` does not pin an image, or None when it does."""
    ref = parse_image(reference)
    if not ref.valid:
        return f"{reference!r} is not an image reference"
    if ref.digest is not None:
        return None
    if ref.tag is None:
        return f"{reference} names no tag or digest (it floats on :latest)"
    if ref.tag in forbidden_tags:
        return f"{reference} floats on :{ref.tag}"
    return None


def image_references(args: ResourceValidationArgs) -> list[str]:
    """The image references a resource declares: a RemoteImage's name, a container's
    image when it is a reference, and every `docker run` image in a command."""
    references: list[str] = []
    if args.resource_type == REMOTE_IMAGE:
        references.append(str(args.props.get("name")))
    elif args.resource_type == CONTAINER:
        # A container normally runs a RemoteImage's image_id (unknown in preview):
        # the RemoteImage's name is what is checked then.
        image = peek(args.props, "image")
        if isinstance(image, str) and not is_unknown(image) and not is_image_id(image):
            references.append(image)
    else:
        for key in ("create", "update", "delete"):
            text = args.props.get(key)
            if isinstance(text, str):
                references += docker_run_images(text)
    return references


def images_pinned(args: ResourceValidationArgs, report: ReportViolation) -> None:
    config = settings(args, images_pinned)
    forbidden = {str(t) for t in config.get("forbiddenTags") or []}
    for reference in image_references(args):
        problem = _unpinned(reference, forbidden)
        if problem is not None:
            report(f"{who(args)}: {problem}; pin a version tag (and in prod a digest).")


# --- 2.7: TLS to remote daemons -----------------------------------------------


def docker_daemon_tls(args: ResourceValidationArgs, report: ReportViolation) -> None:
    host = str(args.props.get("host") or "")
    scheme = host.split("://", 1)[0].lower() if "://" in host else ""
    if scheme not in ("tcp", "http", "https"):
        return
    material = all(args.props.get(k) for k in ("caMaterial", "certMaterial", "keyMaterial"))
    if not (material or args.props.get("certPath")):
        report(f"{who(args)} reaches the Docker daemon at {host} without TLS client authentication.")


# --- the rules ---------------------------------------------------------------

_MEMBERS = {"type": "array", "items": {"type": "string"}}
# CIS 5.6's list, and where Docker and containerd keep every container's data.
SENSITIVE_PATHS = [
    "/", "/boot", "/dev", "/etc", "/lib", "/lib64", "/proc", "/sys", "/usr", "/root",
    "/var/lib/docker", "/var/lib/containerd",
]  # fmt: skip

RULES = register(
    [
        Rule(
            name="containers-run-as-non-root",
            title="Containers run as a non-root user",
            cis="4.1",
            description="Every container runs as an explicit non-root user, not as its image's default (often root).",
            remediation="Set `user` to the uid:gid the image's data belongs to (ServiceContainer.user); if the "
            "image cannot run without root, add an exemption for its service with the reason.",
            severity=Severity.MEDIUM,
            enforcement=MANDATORY,
            validate=containers_run_as_non_root,
            kind=Kind.RESOURCE,
            group=Group.CIS,
            resource_types=(CONTAINER,),
            config={"exemptions": exemptions_schema("Services that keep their image's root user, and why.")},
        ),
        Rule(
            name="apparmor-profile-kept",
            title="AppArmor profile kept",
            cis="5.2",
            description="No container runs unconfined by AppArmor; Docker's default profile (or a stricter one) applies.",
            remediation="Remove the 'apparmor=unconfined' security option; write a custom profile if the default "
            "one blocks something the service needs.",
            severity=Severity.HIGH,
            enforcement=MANDATORY,
            validate=apparmor_profile_kept,
            kind=Kind.RESOURCE,
            group=Group.CIS,
            resource_types=(CONTAINER,),
        ),
        Rule(
            name="selinux-labels-kept",
            title="SELinux separation kept",
            cis="5.3",
            description="No container turns SELinux label separation off or runs as the super-privileged spc_t type.",
            remediation="Remove the 'label=disable' or 'label=type:spc_t' security option; relabel volumes "
            "(`:z`) instead.",
            severity=Severity.MEDIUM,
            enforcement=MANDATORY,
            validate=selinux_labels_kept,
            kind=Kind.RESOURCE,
            group=Group.CIS,
            resource_types=(CONTAINER,),
        ),
        Rule(
            name="capabilities-restricted",
            title="Capabilities dropped, additions allow-listed",
            cis="5.4",
            description="Every container drops ALL Linux capabilities and adds back only allow-listed ones.",
            remediation="Declare `capabilities.drops=['ALL']` (the hardened-container helper does) and add a "
            "capability only through an exemption for the service that needs it, with the reason.",
            severity=Severity.HIGH,
            enforcement=MANDATORY,
            validate=capabilities_restricted,
            kind=Kind.RESOURCE,
            group=Group.CIS,
            resource_types=(CONTAINER,),
            config={
                "allowedCapabilities": {
                    **_MEMBERS,
                    "default": [],
                    "description": "Capabilities any container may add back.",
                },
                "exemptions": exemptions_schema("Capabilities one service may add, and why.", capabilities=_MEMBERS),
            },
        ),
        Rule(
            name="no-privileged-containers",
            title="No privileged containers",
            cis="5.5",
            description="No container runs privileged.",
            remediation="Set `privileged=False` and grant the one capability or device the service needs instead.",
            severity=Severity.CRITICAL,
            enforcement=MANDATORY,
            validate=no_privileged_containers,
            kind=Kind.RESOURCE,
            group=Group.CIS,
            resource_types=(CONTAINER,),
        ),
        Rule(
            name="sensitive-host-paths-not-mounted",
            title="No sensitive host paths mounted",
            cis="5.6",
            description="No container mounts a sensitive host directory (/, /etc, /proc, /sys, /var/lib/docker, ...), "
            "nor a directory holding one.",
            remediation="Use a named volume instead of a bind mount; if a service must read host state, exempt "
            "exactly that path for its service, mounted read-only.",
            severity=Severity.HIGH,
            enforcement=MANDATORY,
            validate=sensitive_host_paths_not_mounted,
            kind=Kind.RESOURCE,
            group=Group.CIS,
            resource_types=(CONTAINER,),
            config={
                "sensitivePaths": {
                    **_MEMBERS,
                    "default": SENSITIVE_PATHS,
                    "description": "Host paths no container may mount (nor anything inside or above them).",
                },
                "exemptions": exemptions_schema(
                    "Host paths one service may mount, always read-only, and why.", paths=_MEMBERS
                ),
            },
        ),
        Rule(
            name="sshd-not-run",
            title="No SSH daemon in containers",
            cis="5.7",
            description="No container's command starts an SSH daemon.",
            remediation="Remove sshd from the command; operators use `docker exec` on the host (over SSH to the host).",
            severity=Severity.LOW,
            enforcement=ADVISORY,
            validate=sshd_not_run,
            kind=Kind.RESOURCE,
            group=Group.CIS,
            resource_types=(CONTAINER,),
            config={"processNames": {**_MEMBERS, "default": ["sshd", "dropbear"], "description": "SSH daemons."}},
        ),
        Rule(
            name="privileged-ports-not-mapped",
            title="No privileged host ports",
            cis="5.8",
            description="No container publishes a host port below 1024 unless its service is exempted for that port.",
            remediation="Publish a port at or above 1024; only the public proxy is exempted for 443 and 80.",
            severity=Severity.MEDIUM,
            enforcement=MANDATORY,
            validate=privileged_ports_not_mapped,
            kind=Kind.RESOURCE,
            group=Group.CIS,
            resource_types=(CONTAINER,),
            config={
                "minimumPort": {"type": "integer", "default": 1024, "description": "The lowest unprivileged port."},
                "exemptions": exemptions_schema(
                    "Privileged ports one service may publish, and why.",
                    ports={"type": "array", "items": {"type": "integer"}},
                ),
            },
        ),
        Rule(
            name="only-needed-ports-published",
            title="Only the service's own ports published",
            cis="5.9",
            description="A container publishes only ports on its service's allow-list.",
            remediation="Publish only what clients use, or add the port to `allowedPorts` for the service when "
            "the stack config moves it.",
            severity=Severity.LOW,
            enforcement=ADVISORY,
            validate=only_allowed_ports,
            kind=Kind.RESOURCE,
            group=Group.CIS,
            resource_types=(CONTAINER,),
            config={
                "allowedPorts": {
                    "type": "object",
                    "additionalProperties": {"type": "array", "items": {"type": ["integer", "string"]}},
                    "default": {
                        "webui": [3000],
                        "dask-scheduler": [8786, 8787],
                        "dask-worker": ["8790-8889"],
                        "ollama": [11434],
                        "proxy": [80, 443],
                        "edge": [8443],
                        "grafana": [3001],
                    },
                    "description": "Host ports (or 'low-high' ranges) each service may publish; the defaults "
                    "are the stack config's default ports.",
                },
            },
        ),
        Rule(
            name="host-network-not-shared",
            title="Host network namespace not shared",
            cis="5.10",
            description="No container uses the host's network namespace.",
            remediation="Remove `network_mode='host'`; attach a user-defined network and publish the ports needed.",
            severity=Severity.HIGH,
            enforcement=MANDATORY,
            validate=host_network_not_shared,
            kind=Kind.RESOURCE,
            group=Group.CIS,
            resource_types=(CONTAINER,),
        ),
        Rule(
            name="memory-limited",
            title="Memory limited",
            cis="5.11",
            description="Every container has a memory limit.",
            remediation="Set `memory` (MB), and `memory_swap` equal to it so the limit cannot overrun on disk.",
            severity=Severity.MEDIUM,
            enforcement=MANDATORY,
            validate=memory_limited,
            kind=Kind.RESOURCE,
            group=Group.CIS,
            resource_types=(CONTAINER,),
            config={"minimumMemoryMb": {"type": "number", "default": 6, "description": "Docker's smallest limit."}},
        ),
        Rule(
            name="cpu-limited",
            title="CPU limited",
            cis="5.12",
            description="Every container has a CPU limit, so one service cannot starve the host.",
            remediation="Set `cpus` (the hardened-container helper takes it from the stack's resources).",
            severity=Severity.MEDIUM,
            enforcement=MANDATORY,
            validate=cpu_limited,
            kind=Kind.RESOURCE,
            group=Group.CIS,
            resource_types=(CONTAINER,),
            config={
                "acceptCpuShares": {
                    "type": "boolean",
                    "default": False,
                    "description": "Accept relative CPU shares in place of a hard limit.",
                },
            },
        ),
        Rule(
            name="root-filesystem-read-only",
            title="Read-only root filesystem",
            cis="5.13",
            description="Every container's root filesystem is read-only; writes go to tmpfs or volumes.",
            remediation="Set `read_only=True` with tmpfs for scratch paths and volumes for data; exempt a service "
            "only when its image writes into its own install tree, with the reason.",
            severity=Severity.MEDIUM,
            enforcement=MANDATORY,
            validate=root_filesystem_read_only,
            kind=Kind.RESOURCE,
            group=Group.CIS,
            resource_types=(CONTAINER,),
            config={"exemptions": exemptions_schema("Services whose root filesystem stays writable, and why.")},
        ),
        Rule(
            name="ports-bound-to-an-address",
            title="Published ports bound to an address",
            cis="5.14",
            description="Every published port is bound to one host address, never to all interfaces.",
            remediation="Give each port an `ip` (the loopback in dev, the host's cluster address in prod); never "
            "set `publish_all_ports`.",
            severity=Severity.HIGH,
            enforcement=MANDATORY,
            validate=ports_bound_to_an_address,
            kind=Kind.RESOURCE,
            group=Group.CIS,
            resource_types=(CONTAINER,),
            config={"exemptions": exemptions_schema("Services that may listen on every interface, and why.")},
        ),
        Rule(
            name="restart-policy-bounded",
            title="Restart on failure, a bounded number of times",
            cis="5.15",
            description="A container restarts only on failure and at most a few times, so a crash loop stops.",
            remediation="Set `restart='on-failure'` and `max_retry_count` between 1 and the maximum (5).",
            severity=Severity.LOW,
            enforcement=MANDATORY,
            validate=restart_policy_bounded,
            kind=Kind.RESOURCE,
            group=Group.CIS,
            resource_types=(CONTAINER,),
            config={"maxRetries": {"type": "integer", "default": 5, "description": "The most restarts allowed."}},
        ),
        Rule(
            name="host-pid-namespace-not-shared",
            title="Host PID namespace not shared",
            cis="5.16",
            description="No container shares the host's process namespace unless its service is exempted.",
            remediation="Remove `pid_mode='host'`; only an exempted exporter reads the host's processes.",
            severity=Severity.HIGH,
            enforcement=MANDATORY,
            validate=host_pid_namespace_not_shared,
            kind=Kind.RESOURCE,
            group=Group.CIS,
            resource_types=(CONTAINER,),
            config={"exemptions": exemptions_schema("Services that see the host's processes, and why.")},
        ),
        Rule(
            name="host-ipc-namespace-not-shared",
            title="Host IPC namespace not shared",
            cis="5.17",
            description="No container shares the host's IPC namespace.",
            remediation="Remove `ipc_mode='host'`; size `shm_size` if the service needs shared memory.",
            severity=Severity.HIGH,
            enforcement=MANDATORY,
            validate=host_ipc_namespace_not_shared,
            kind=Kind.RESOURCE,
            group=Group.CIS,
            resource_types=(CONTAINER,),
        ),
        Rule(
            name="host-devices-not-exposed",
            title="No raw host devices; GPUs only where allowed",
            cis="5.18",
            description="No container gets raw host devices; GPUs come through `gpus` or NVIDIA device requests, "
            "only to allow-listed services.",
            remediation="Remove `devices` and `device_cgroup_rules`; request GPUs with `gpus` (or a device request "
            "with the nvidia driver) for a service in `gpuServices`.",
            severity=Severity.HIGH,
            enforcement=MANDATORY,
            validate=host_devices_not_exposed,
            kind=Kind.RESOURCE,
            group=Group.CIS,
            resource_types=(CONTAINER,),
            config={
                "gpuServices": {
                    "type": "object",
                    "additionalProperties": {"type": "string", "minLength": 10},
                    "default": {},
                    "description": "Services that may request GPUs, each with the reason.",
                },
                "deviceRequestDrivers": {
                    **_MEMBERS,
                    "default": ["nvidia"],
                    "description": "Drivers a device request may name.",
                },
                "exemptions": exemptions_schema("Raw devices one service may get, and why.", devices=_MEMBERS),
            },
        ),
        Rule(
            name="mount-propagation-not-shared",
            title="No shared mount propagation",
            cis="5.20",
            description="No bind mount uses shared propagation, which would let the container's mounts reach the host.",
            remediation="Use the default (rprivate) or 'rslave' propagation.",
            severity=Severity.MEDIUM,
            enforcement=MANDATORY,
            validate=mount_propagation_not_shared,
            kind=Kind.RESOURCE,
            group=Group.CIS,
            resource_types=(CONTAINER,),
        ),
        Rule(
            name="default-seccomp-kept",
            title="Seccomp profile kept",
            cis="5.22",
            description="No container disables Docker's default seccomp profile.",
            remediation="Remove the 'seccomp=unconfined' security option; pass a custom profile if a syscall is "
            "missing.",
            severity=Severity.HIGH,
            enforcement=MANDATORY,
            validate=default_seccomp_kept,
            kind=Kind.RESOURCE,
            group=Group.CIS,
            resource_types=(CONTAINER,),
        ),
        Rule(
            name="default-cgroup-used",
            title="Docker's cgroup used",
            cis="5.25",
            description="Every container runs in the cgroup Docker makes for it, in its own cgroup namespace.",
            remediation="Remove `cgroup_parent` and `cgroupns_mode='host'`.",
            severity=Severity.MEDIUM,
            enforcement=MANDATORY,
            validate=default_cgroup_used,
            kind=Kind.RESOURCE,
            group=Group.CIS,
            resource_types=(CONTAINER,),
        ),
        Rule(
            name="no-new-privileges",
            title="No new privileges",
            cis="5.26",
            description="Every container sets no-new-privileges, so setuid binaries cannot raise its privileges.",
            remediation="Add the security option 'no-new-privileges:true' (the hardened-container helper does).",
            severity=Severity.HIGH,
            enforcement=MANDATORY,
            validate=no_new_privileges,
            kind=Kind.RESOURCE,
            group=Group.CIS,
            resource_types=(CONTAINER,),
        ),
        Rule(
            name="healthcheck-defined",
            title="Healthcheck defined",
            cis="5.27",
            description="Every container declares a healthcheck (CIS 4.6 at runtime), so Docker and `wait` see its health.",
            remediation="Give the service a `Healthcheck` that probes what clients use (an HTTP /health, "
            "pg_isready, redis-cli ping).",
            severity=Severity.LOW,
            enforcement=MANDATORY,
            validate=healthcheck_defined,
            kind=Kind.RESOURCE,
            group=Group.CIS,
            resource_types=(CONTAINER,),
        ),
        Rule(
            name="images-pinned",
            title="Images pinned to a version",
            cis="5.28",
            description="Every image is pinned by version tag or digest, never a floating or missing tag, so what "
            "runs is what was reviewed.",
            remediation="Name a version tag (`redis:7.4.1-bookworm`) or a digest (`@sha256:...`) in the stack's "
            "`images`; `python -m stacks lock` resolves digests.",
            severity=Severity.MEDIUM,
            enforcement=MANDATORY,
            validate=images_pinned,
            kind=Kind.RESOURCE,
            group=Group.CIS,
            resource_types=(REMOTE_IMAGE, CONTAINER, LOCAL_COMMAND, REMOTE_COMMAND),
            config={
                "forbiddenTags": {
                    **_MEMBERS,
                    "default": ["latest", "stable", "main", "master", "edge", "nightly"],
                    "description": "Tags that float.",
                },
            },
        ),
        Rule(
            name="default-bridge-not-used",
            title="Default bridge not used",
            cis="5.30",
            description="Every container joins a user-defined network, never Docker's default bridge.",
            remediation="Attach the host's private network through `networks_advanced`; do not set "
            "`network_mode='bridge'`.",
            severity=Severity.MEDIUM,
            enforcement=MANDATORY,
            validate=default_bridge_not_used,
            kind=Kind.RESOURCE,
            group=Group.CIS,
            resource_types=(CONTAINER,),
        ),
        Rule(
            name="host-user-namespace-not-shared",
            title="Host user namespace not shared",
            cis="5.31",
            description="No container opts out of the daemon's user-namespace remapping.",
            remediation="Remove `userns_mode='host'`.",
            severity=Severity.MEDIUM,
            enforcement=MANDATORY,
            validate=host_user_namespace_not_shared,
            kind=Kind.RESOURCE,
            group=Group.CIS,
            resource_types=(CONTAINER,),
        ),
        Rule(
            name="docker-socket-not-mounted",
            title="Docker socket never mounted",
            cis="5.32",
            description="No container mounts the Docker (or containerd) socket or a directory holding it.",
            remediation="Remove the mount; a service that needs the Docker API is an operator's job, run from "
            "the host (or through a filtering socket proxy, exempted with its reason).",
            severity=Severity.CRITICAL,
            enforcement=MANDATORY,
            validate=docker_socket_not_mounted,
            kind=Kind.RESOURCE,
            group=Group.CIS,
            resource_types=(CONTAINER,),
            config={
                "socketPaths": {
                    **_MEMBERS,
                    "default": ["/var/run/docker.sock", "/run/docker.sock", "/run/containerd/containerd.sock"],
                    "description": "Container engine sockets on the host.",
                },
                "exemptions": exemptions_schema("Services that may reach the engine's socket, and why."),
            },
        ),
        Rule(
            name="no-plaintext-secrets-in-env",
            title="No secrets in plain env",
            cis="4.10",
            description="No container gets a password, token or key as a plain env value, where `docker inspect` "
            "and the state show it.",
            remediation="Pass it as a secret file (ServiceContainer.secret_files, or secret_env for images without "
            "`*_FILE` support) and point the service at the file.",
            severity=Severity.HIGH,
            enforcement=MANDATORY,
            validate=no_plaintext_secrets_in_env,
            kind=Kind.RESOURCE,
            group=Group.CIS,
            resource_types=(CONTAINER,),
            config={
                "secretKeyPattern": {
                    "type": "string",
                    "default": r"PASSWORD|PASSWD|PASSPHRASE|SECRET|TOKEN|API_?KEY|PRIVATE_?KEY|ACCESS_?KEY|CREDENTIAL",
                    "description": "Env names that hold secrets (a regular expression).",
                },
                "referenceKeyPattern": {
                    "type": "string",
                    "default": r"_(FILE|PATH|DIR)$",
                    "description": "Env names that point at a secret instead of holding it.",
                },
                "allowedKeys": {**_MEMBERS, "default": [], "description": "Env names never treated as secrets."},
            },
        ),
        Rule(
            name="docker-daemon-tls",
            title="TLS to remote Docker daemons",
            cis="2.7",
            description="A Docker provider that reaches a daemon over TCP authenticates it with TLS client "
            "certificates; SSH and local sockets need none.",
            remediation="Reach remote hosts over `ssh://` (what the stack config does), or give the provider "
            "`ca_material`, `cert_material` and `key_material` (or `cert_path`).",
            severity=Severity.CRITICAL,
            enforcement=MANDATORY,
            validate=docker_daemon_tls,
            kind=Kind.RESOURCE,
            group=Group.CIS,
            resource_types=(DOCKER_PROVIDER,),
        ),
    ]
)

NOT_EXPRESSIBLE: dict[str, str] = {
    "4.2-4.4, 4.7-4.9, 4.11, 4.12": "Image build and supply-chain practice: decided where images are built, "
    "not in a container's declaration (prod pins digests; see images-pinned-by-digest-in-prod).",
    "4.5": "Content trust is a client setting (DOCKER_CONTENT_TRUST); prod pins digests instead.",
    "5.1": "Swarm mode is a daemon setting; the cluster does not use it.",
    "5.19": "Overriding default ulimits is advice, not a property that is wrong when absent.",
    "5.21": "pulumi_docker's Container has no UTS namespace setting: the host's cannot be shared.",
    "5.23, 5.24": "`docker exec` is an operator action, not part of a declaration.",
    "5.29": "pulumi_docker's Container has no PIDs limit; the model sync's `docker run` sets --pids-limit.",
}
