"""The cluster's own rules: what the CIS benchmark does not say but this cluster promises.

- only the public proxy publishes beyond the loopback on an address anyone may
  reach (a stack rule over every container of the graph);
- SSH host keys are pinned wherever the program reaches a host over SSH;
- in strict stacks (prod): every image pinned by digest, every Ollama model
  pinned by digest, data volumes protected, Dask on `tls://` with mutual TLS,
  and no plaintext hop between hosts.

Strict stacks are named in each prod rule's `strictStacks` (the stack part of
every resource's URN); the pack's config says `["prod"]`.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    ResourceValidationArgs,
    Severity,
    StackValidationArgs,
)

from policies.cis import image_references, is_file_holder
from policies.model import (
    CONTAINER,
    DOCKER_PROVIDER,
    LOCAL_COMMAND,
    REMOTE_COMMAND,
    REMOTE_IMAGE,
    VOLUME,
    VOLUME_LABEL,
    Group,
    Kind,
    ReportViolation,
    Rule,
    items,
    labels,
    mapping,
    number,
    register,
    service_of,
    settings,
    stack_of,
    who,
)
from policies.parsing import (
    HEX64,
    command_words,
    env_pairs,
    flag_value,
    ip_of,
    is_local_host,
    parse_image,
    urls,
)

MANDATORY = EnforcementLevel.MANDATORY


def _strict(args: ResourceValidationArgs, validator: Any) -> dict[str, Any]:
    """The rule's config; a resource of a stack that is not strict is reported "not applicable"."""
    config = settings(args, validator)
    stacks = {str(s) for s in config.get("strictStacks") or []}
    stack = stack_of(args.urn)
    if stack not in stacks:
        args.not_applicable(f"stack {stack!r} is not strict ({', '.join(sorted(stacks)) or 'none is'})")
    return config


# --- only the proxy is public (stack) -----------------------------------------


def only_proxy_publishes_publicly(args: StackValidationArgs, report: ReportViolation) -> None:
    config = settings(args, only_proxy_publishes_publicly)
    public = config.get("publicServices") or {}
    cluster = config.get("clusterServices") or {}
    for resource in args.resources:
        if resource.resource_type != CONTAINER:
            continue
        props = resource.props
        service = service_of(props)
        name = f"{resource.name} ({service})" if service else resource.name
        if props.get("publishAllPorts") is True and service not in public:
            report(f"{name} publishes every exposed port on every interface; only {_names(public)} may.", resource.urn)
        for port in items(props.get("ports")):
            if not isinstance(port, Mapping):
                continue
            address = str(port.get("ip") or "0.0.0.0")
            external = number(port.get("external"))
            shown = f"port {int(external)}" if external is not None else "a port"
            ip = ip_of(address)
            if ip is not None and ip.is_loopback:
                continue
            if service in public:
                continue
            if service in cluster and (ip is None or not ip.is_unspecified):
                continue
            if service in cluster:
                report(f"{name} publishes {shown} on every interface ({address}); a cluster service binds its "
                       "host's cluster address.", resource.urn)  # fmt: skip
            else:
                report(f"{name} publishes {shown} on {address}: only {_names(public)} is public, and only "
                       f"{_names(cluster)} may listen on a host's cluster address.", resource.urn)  # fmt: skip


def _names(services: Mapping[str, Any]) -> str:
    return ", ".join(sorted(services)) or "no service"


# --- SSH host keys ------------------------------------------------------------


def ssh_options(value: Any) -> dict[str, str]:
    """`-o Key=Value` / `-oKey=Value` / `-o Key Value` options as {key (lower): value}."""
    words = [str(w) for w in items(value)]
    options: dict[str, str] = {}
    for i, word in enumerate(words):
        text = None
        if word == "-o" and i + 1 < len(words):
            text = words[i + 1]
        elif word.startswith("-o") and len(word) > 2:
            text = word[2:]
        if text is None:
            continue
        match = re.match(r"^\s*([A-Za-z]+)\s*(?:=|\s)\s*(.*)$", text)
        if match:
            options.setdefault(match[1].lower(), match[2].strip())
    return options


def ssh_host_keys_pinned(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type == DOCKER_PROVIDER:
        host = str(args.props.get("host") or "")
        if not host.lower().startswith("ssh://"):
            return
        options = ssh_options(args.props.get("sshOpts"))
        strict = options.get("stricthostkeychecking", "").lower()
        if strict != "yes":
            report(f"{who(args)} connects to {host} without StrictHostKeyChecking=yes: an unknown or changed "
                   "host key would be accepted (or asked about).")  # fmt: skip
        known_file = options.get("userknownhostsfile", "")
        if "knownhostscommand" not in options and known_file in ("", "/dev/null", "none"):
            report(f"{who(args)} pins no host key for {host}: pass it with KnownHostsCommand (or a "
                   "UserKnownHostsFile holding it).")  # fmt: skip
        return
    connection = mapping(args.props.get("connection"))
    if not connection:
        return
    host_key = connection.get("hostKey")
    if not isinstance(host_key, str) or not host_key.strip():
        report(f"{who(args)} connects to {connection.get('host', '?')} over SSH without `host_key`: "
               "the host key is not checked.")  # fmt: skip


# --- prod: digests ------------------------------------------------------------


def images_pinned_by_digest_in_prod(args: ResourceValidationArgs, report: ReportViolation) -> None:
    _strict(args, images_pinned_by_digest_in_prod)
    for reference in image_references(args):
        if not parse_image(reference).pinned_by_digest:
            report(f"{who(args)} uses {reference} without a digest: prod pins every image as repo:tag@sha256:<64 hex>.")


def _pins(words: list[str]) -> list[Any] | None:
    """The `--pins` JSON list of a model sync's command line; None when it is not one."""
    text = flag_value(words, "--pins")
    if text is None:
        return None
    try:
        pins = json.loads(text)
    except ValueError:
        return []
    return pins if isinstance(pins, list) else []


def _command_words(props: Mapping[str, Any]) -> list[str] | None:
    """A command resource's `create` split as the shell would, or a container's `command`."""
    create = props.get("create")
    if isinstance(create, str):
        try:
            return shlex.split(create)
        except ValueError:
            return None
    command = items(props.get("command"))
    if command and all(isinstance(word, str) for word in command):
        return [str(word) for word in command]
    return None


def models_pinned_by_digest_in_prod(args: ResourceValidationArgs, report: ReportViolation) -> None:
    _strict(args, models_pinned_by_digest_in_prod)
    words = _command_words(args.props)
    if words is None:
        return
    pins = _pins(words)
    if pins is None:
        return
    if not pins:
        report(f"{who(args)} syncs models from an empty or unreadable --pins list.")
    for pin in pins:
        pin = pin if isinstance(pin, Mapping) else {}
        digest = pin.get("digest")
        if not isinstance(digest, str) or HEX64.fullmatch(digest) is None:
            report(f"{who(args)} pulls model {pin.get('name', '?')} without a digest: prod pins every model "
                   "by the digest /api/tags reports.")  # fmt: skip


# --- prod: protected data volumes ---------------------------------------------


def data_volumes_protected_in_prod(args: ResourceValidationArgs, report: ReportViolation) -> None:
    _strict(args, data_volumes_protected_in_prod)
    if labels(args.props).get(VOLUME_LABEL) != "data":
        return
    if not args.opts.protect:
        report(f"{who(args)} holds {service_of(args.props) or 'a service'}'s data but is not protected: "
               "`pulumi destroy` or a rename would delete it.")  # fmt: skip


# --- prod: Dask on tls:// -----------------------------------------------------

_TLS_FLAGS = ("--tls-ca-file", "--tls-cert", "--tls-key")


def dask_on_tls_in_prod(args: ResourceValidationArgs, report: ReportViolation) -> None:
    config = _strict(args, dask_on_tls_in_prod)
    service = service_of(args.props)
    # A file holder carries the service's label but never runs its command.
    if service not in (config.get("services") or []) or is_file_holder(args.props):
        return
    words = command_words(args.props)
    role = words[1] if len(words) > 1 and words[0] == "dask" else None
    if role == "scheduler" and flag_value(words, "--protocol") != "tls":
        report(f"{who(args)} runs the scheduler without `--protocol tls`.")
    plain = sorted({w for w in words if re.match(r"^(tcp|ws|wss|ucx|inproc)://", w)})
    if plain:
        report(f"{who(args)} speaks plaintext Dask comms ({', '.join(plain)}): use tls:// addresses.")
    missing = [flag for flag in _TLS_FLAGS if flag_value(words, flag) is None]
    if missing:
        report(f"{who(args)} has no {', '.join(missing)}: mutual TLS needs the CA, the certificate and its key.")


# --- prod: no plaintext hop between hosts -------------------------------------

_PLAINTEXT_SCHEMES = frozenset({"http", "ws", "redis", "postgres", "postgresql", "mysql", "amqp", "mongodb", "ftp"})


def encrypted_transport_in_prod(args: ResourceValidationArgs, report: ReportViolation) -> None:
    _strict(args, encrypted_transport_in_prod)
    if args.resource_type == DOCKER_PROVIDER:
        host = str(args.props.get("host") or "")
        scheme = host.split("://", 1)[0].lower() if "://" in host else ""
        tls = all(args.props.get(k) for k in ("caMaterial", "certMaterial", "keyMaterial")) or args.props.get(
            "certPath"
        )
        if scheme != "ssh" and not (scheme == "tcp" and tls):
            report(f"{who(args)} reaches its Docker engine at {host or '(default)'}: prod reaches every host "
                   "over ssh:// with its host key pinned.")  # fmt: skip
        return
    texts = [(key, value) for key, value in env_pairs(args.props)]
    texts += [("command", word) for word in command_words(args.props)]
    for where, text in texts:
        for scheme, host in urls(text):
            if scheme in _PLAINTEXT_SCHEMES and not is_local_host(host):
                report(f"{who(args)} sends {scheme}:// to {host} ({where}) unencrypted across hosts: go through "
                       "the TLS edge (https with a client certificate).")  # fmt: skip


# --- the rules ---------------------------------------------------------------

_STRICT = {
    "strictStacks": {
        "type": "array",
        "items": {"type": "string"},
        "default": ["prod"],
        "description": "Stacks (the stack in each resource's URN) this rule applies to.",
    }
}
_SERVICES = {"type": "object", "additionalProperties": {"type": "string", "minLength": 10}, "default": {}}
_STRICT_SCOPE = "strict stacks (prod)"

RULES = register(
    [
        Rule(
            name="only-proxy-publishes-publicly",
            title="Only the proxy is public",
            description="Across the whole stack, only the public proxy publishes beyond the loopback freely; "
            "cross-host services bind their host's cluster address, everything else the loopback.",
            remediation="Publish the service on the loopback (dev) or not at all (prod: route it through the "
            "proxy); a service other hosts must reach gets mutual TLS and is listed in `clusterServices`.",
            severity=Severity.HIGH,
            enforcement=MANDATORY,
            validate=only_proxy_publishes_publicly,
            kind=Kind.STACK,
            group=Group.CLUSTER,
            config={
                "publicServices": {**_SERVICES, "description": "Services that may publish on any address, and why."},
                "clusterServices": {
                    **_SERVICES,
                    "description": "Services that may publish on a specific host address (not 0.0.0.0), and why.",
                },
            },
        ),
        Rule(
            name="ssh-host-keys-pinned",
            title="SSH host keys pinned",
            description="Everything that reaches a host over SSH (Docker providers, remote commands) checks the "
            "host's key against a pinned one.",
            remediation="Set the host's `ssh.hostKey` in the stack config (`ssh-keyscan -t ed25519 <address>`); "
            "the program passes it to ssh (StrictHostKeyChecking=yes, KnownHostsCommand) and to each "
            "remote command's `connection.host_key`.",
            severity=Severity.CRITICAL,
            enforcement=MANDATORY,
            validate=ssh_host_keys_pinned,
            kind=Kind.RESOURCE,
            group=Group.CLUSTER,
            resource_types=(DOCKER_PROVIDER, REMOTE_COMMAND, "command:remote:CopyToRemote", "command:remote:CopyFile"),
        ),
        Rule(
            name="images-pinned-by-digest-in-prod",
            title="Prod: images pinned by digest",
            description="In prod every image - of a container or of a `docker run` in a command - is pinned by "
            "sha256 digest.",
            remediation="Run `python -m stacks lock prod` to resolve every tag to its digest in Pulumi.prod.yaml.",
            severity=Severity.HIGH,
            enforcement=MANDATORY,
            validate=images_pinned_by_digest_in_prod,
            kind=Kind.RESOURCE,
            group=Group.CLUSTER,
            resource_types=(REMOTE_IMAGE, CONTAINER, LOCAL_COMMAND, REMOTE_COMMAND),
            config=_STRICT,
            scope=_STRICT_SCOPE,
        ),
        Rule(
            name="models-pinned-by-digest-in-prod",
            title="Prod: models pinned by digest",
            description="In prod every Ollama model the model sync pulls is pinned by the digest /api/tags reports.",
            remediation="Set `digest` for every entry of `cluster-ai:models` in Pulumi.prod.yaml.",
            severity=Severity.HIGH,
            enforcement=MANDATORY,
            validate=models_pinned_by_digest_in_prod,
            kind=Kind.RESOURCE,
            group=Group.CLUSTER,
            resource_types=(CONTAINER, LOCAL_COMMAND, REMOTE_COMMAND),
            config=_STRICT,
            scope=_STRICT_SCOPE,
        ),
        Rule(
            name="data-volumes-protected-in-prod",
            title="Prod: data volumes protected",
            description="In prod every data volume (label cluster-ai.volume=data) is protected from deletion.",
            remediation="Create data volumes with `data_volume(..., protect=True)` (it also sets retain_on_delete, "
            "which the engine does not show to policies: the unit tests check it).",
            severity=Severity.HIGH,
            enforcement=MANDATORY,
            validate=data_volumes_protected_in_prod,
            kind=Kind.RESOURCE,
            group=Group.CLUSTER,
            resource_types=(VOLUME,),
            config=_STRICT,
            scope=_STRICT_SCOPE,
        ),
        Rule(
            name="dask-on-tls-in-prod",
            title="Prod: Dask on tls:// with mutual TLS",
            description="In prod the Dask scheduler and workers speak only tls://, each with the CA, its "
            "certificate and its key.",
            remediation="Give the scheduler and worker pools the internal CA's `tls_files` (the program does in "
            "prod); never publish a tcp:// address.",
            severity=Severity.HIGH,
            enforcement=MANDATORY,
            validate=dask_on_tls_in_prod,
            kind=Kind.RESOURCE,
            group=Group.CLUSTER,
            resource_types=(CONTAINER,),
            config={
                **_STRICT,
                "services": {
                    "type": "array",
                    "items": {"type": "string"},
                    "default": ["dask-scheduler", "dask-worker"],
                    "description": "Services that run Dask.",
                },
            },
            scope=_STRICT_SCOPE,
        ),
        Rule(
            name="encrypted-transport-in-prod",
            title="Prod: no plaintext hop between hosts",
            description="In prod every Docker engine is reached over SSH and no container sends plaintext "
            "(http://, redis://, ...) to another host.",
            remediation="Reach hosts with `ssh` in the stack config; route cross-host HTTP through the head's "
            "egress and the host's TLS edge (mutual TLS), never to a host address directly.",
            severity=Severity.HIGH,
            enforcement=MANDATORY,
            validate=encrypted_transport_in_prod,
            kind=Kind.RESOURCE,
            group=Group.CLUSTER,
            resource_types=(DOCKER_PROVIDER, CONTAINER),
            config=_STRICT,
            scope=_STRICT_SCOPE,
        ),
    ]
)
