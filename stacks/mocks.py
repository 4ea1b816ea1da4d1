"""The one mocks recorder: the real program under the Pulumi SDK's own mocks.

The offline plan and every unit and policy test evaluate the program through
`evaluate_program`. It swaps the engine for the SDK's `MockMonitor`, records what
each resource was registered with (type, name, parent, provider, inputs with
secrets still marked, dependencies, resource options), and answers with outputs
that look like a provider's, so `.apply` chains run as they would in `pulumi up`.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pulumi
from google.protobuf import json_format
from pulumi.runtime import mocks as sdk_mocks
from pulumi.runtime import rpc, settings
from pulumi.runtime import stack as sdk_stack
from pulumi.runtime.config import set_all_config


@dataclass(frozen=True)
class Secret:
    """An input the program marked secret; its value never leaves the recorder."""

    value: Any

    def __repr__(self) -> str:
        return "[secret]"


@dataclass
class Resource:
    """One registration, as the engine received it."""

    urn: str
    type: str
    name: str
    custom: bool
    parent: str | None
    provider: str | None
    inputs: dict[str, Any]
    dependencies: tuple[str, ...] = ()
    property_dependencies: dict[str, tuple[str, ...]] = field(default_factory=dict)
    protect: bool = False
    retain_on_delete: bool = False
    delete_before_replace: bool = False
    ignore_changes: tuple[str, ...] = ()
    replace_on_changes: tuple[str, ...] = ()
    additional_secret_outputs: tuple[str, ...] = ()
    outputs: dict[str, Any] = field(default_factory=dict)
    replacement_trigger: Any = None
    """The `replacement_trigger` option's value: when it changes, the resource is replaced."""

    @property
    def provider_urn(self) -> str | None:
        """The provider reference is `urn::id`; the URN is what identifies it."""
        return self.provider.rsplit("::", 1)[0] if self.provider else None

    def plain_inputs(self) -> dict[str, Any]:
        """Inputs with secrets unwrapped: for assertions on values, never for display."""
        return unwrap(self.inputs)

    def redacted_inputs(self) -> dict[str, Any]:
        """Inputs with every secret shown as `[secret]`: safe to print."""
        return redact(self.inputs)


def unwrap(value: Any) -> Any:
    if isinstance(value, Secret):
        return unwrap(value.value)
    if isinstance(value, dict):
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value


def redact(value: Any) -> Any:
    if isinstance(value, Secret):
        return "[secret]"
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def contains_secret(value: Any) -> bool:
    if isinstance(value, Secret):
        return True
    if isinstance(value, dict):
        return any(contains_secret(v) for v in value.values())
    if isinstance(value, list):
        return any(contains_secret(v) for v in value)
    return False


def plain_strings(value: Any) -> list[str]:
    """Every string in an input tree that is not inside a Secret (for secrecy checks)."""
    if isinstance(value, Secret):
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in plain_strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in plain_strings(v)]
    return []


def _mark_secrets(value: Any) -> Any:
    """Turn the SDK's wire form of secrets into `Secret` markers, recursively."""
    if rpc.is_rpc_secret(value):
        return Secret(_mark_secrets(rpc.unwrap_rpc_secret(value)))
    if isinstance(value, dict):
        return {k: _mark_secrets(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mark_secrets(v) for v in value]
    return value


def _fake_digest(seed: str) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()


def _pem(kind: str, seed: str) -> str:
    return f"-----BEGIN {kind}-----\nMOCK{_fake_digest(seed)[:48]}\n-----END {kind}-----\n"


class ClusterMocks(pulumi.runtime.Mocks):
    """Outputs shaped like each provider's, deterministic per resource name."""

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
        outputs = dict(args.inputs)
        kind, name = args.typ, args.name
        if kind == "docker:index/remoteImage:RemoteImage":
            outputs["imageId"] = "sha256:" + _fake_digest(str(args.inputs.get("name")))
            outputs["repoDigest"] = f"{str(args.inputs.get('name')).split('@')[0]}@sha256:{_fake_digest(name)}"
        elif kind == "docker:index/container:Container":
            outputs.setdefault("name", name)
            outputs["exitCode"] = None
        elif kind == "docker:index/network:Network":
            outputs.setdefault("name", name)
        elif kind == "docker:index/volume:Volume":
            outputs.setdefault("name", name)
            outputs["mountpoint"] = f"/var/lib/docker/volumes/{name}/_data"
        elif kind in ("random:index/randomPassword:RandomPassword", "random:index/randomString:RandomString"):
            length = int(args.inputs.get("length", 32))
            outputs["result"] = ("mock" + _fake_digest(name))[:length]
            outputs["bcryptHash"] = "$2a$10$" + _fake_digest("bcrypt" + name)[:53]
        elif kind == "random:index/randomBytes:RandomBytes":
            outputs["hex"] = _fake_digest(name)
            outputs["base64"] = _fake_digest(name)
        elif kind == "tls:index/privateKey:PrivateKey":
            outputs["privateKeyPem"] = _pem("PRIVATE KEY", name)
            outputs["publicKeyPem"] = _pem("PUBLIC KEY", name)
            outputs["publicKeyOpenssh"] = f"ecdsa-sha2-nistp256 MOCK{_fake_digest(name)[:32]}"
        elif kind in ("tls:index/selfSignedCert:SelfSignedCert", "tls:index/locallySignedCert:LocallySignedCert"):
            outputs["certPem"] = _pem("CERTIFICATE", name)
        elif kind == "tls:index/certRequest:CertRequest":
            outputs["certRequestPem"] = _pem("CERTIFICATE REQUEST", name)
        elif kind.startswith("command:"):
            outputs["stdout"] = ""
            outputs["stderr"] = ""
        return f"{name}-id", outputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        # The program makes no invokes (they would block on every host in prod);
        # an unexpected one is a bug worth failing on.
        raise NotImplementedError(f"unexpected invoke {args.token}")


def _replacement_trigger(request: Any) -> Any:
    if not request.HasField("replacement_trigger"):
        return None
    # A protobuf `Value`, not a `Struct` entry: make it a Python value first.
    value = json_format.MessageToDict(request.replacement_trigger)
    return _mark_secrets(rpc.deserialize_property(value))


class RecordingMonitor(sdk_mocks.MockMonitor):
    """The SDK's mock monitor, plus a record of every registration request."""

    def __init__(self, mocks: pulumi.runtime.Mocks) -> None:
        super().__init__(mocks)
        self.recorded: dict[str, Resource] = {}
        self.order: list[str] = []

    def RegisterResource(self, request: Any) -> Any:  # noqa: N802 - gRPC method name
        response = super().RegisterResource(request)
        if request.type == "pulumi:pulumi:Stack":
            return response
        inputs = _mark_secrets(rpc.deserialize_properties(request.object))
        registered = self.resources.get(response.urn)
        resource = Resource(
            urn=response.urn,
            type=request.type,
            name=request.name,
            custom=bool(request.custom),
            parent=request.parent or None,
            provider=request.provider or None,
            inputs=inputs,
            dependencies=tuple(request.dependencies),
            property_dependencies={k: tuple(v.urns) for k, v in request.propertyDependencies.items()},
            protect=bool(request.protect),
            retain_on_delete=bool(request.retainOnDelete),
            delete_before_replace=bool(request.deleteBeforeReplace),
            ignore_changes=tuple(request.ignoreChanges),
            replace_on_changes=tuple(request.replaceOnChanges),
            additional_secret_outputs=tuple(request.additionalSecretOutputs),
            outputs=_mark_secrets(registered.state) if registered else {},
            replacement_trigger=_replacement_trigger(request),
        )
        self.recorded[resource.urn] = resource
        self.order.append(resource.urn)
        return response

    def RegisterResourceOutputs(self, request: Any) -> Any:  # noqa: N802 - gRPC method name
        # A component's `register_outputs`: what the engine stores as the component's outputs.
        recorded = self.recorded.get(request.urn)
        if recorded is not None:
            recorded.outputs = _mark_secrets(rpc.deserialize_properties(request.outputs))
        return super().RegisterResourceOutputs(request)


CONTAINER = "docker:index/container:Container"
# components/hardened.py labels the container that carries a service's files (never started).
ROLE_LABEL = "cluster-ai.role"
FILE_HOLDER = "file-holder"


def labels_of(resource: Resource) -> dict[str, str]:
    """A container's (or volume's, network's) Docker labels as a dict."""
    return {str(e["label"]): str(e["value"]) for e in unwrap(resource.inputs.get("labels")) or []}


def is_file_holder(resource: Resource) -> bool:
    """Is `resource` a service's file holder (`<service>-files`), not a service?"""
    return resource.type == CONTAINER and labels_of(resource).get(ROLE_LABEL) == FILE_HOLDER


def _secret_contents(uploads: Any) -> list[dict[str, Any]]:
    """Uploads as a list, each content a `Secret` when the program marked it (or the whole list) secret.

    The SDK lifts secretness to the top-level property: a list holding one secret element
    travels as one secret list, so then every upload in it counts as secret.
    """
    whole = isinstance(uploads, Secret)
    listed = uploads.value if whole else uploads or []
    out = []
    for upload in listed:
        upload = dict(upload)
        content = upload.get("content")
        if whole and not isinstance(content, Secret):
            upload["content"] = Secret(content)
        out.append(upload)
    return out


@dataclass
class Evaluation:
    """What one run of the program registered, in registration order."""

    project: str
    stack: str
    resources: list[Resource]
    exports: dict[str, Any]

    def by_type(self, token: str) -> list[Resource]:
        return [r for r in self.resources if r.type == token]

    def get(self, urn: str) -> Resource:
        for r in self.resources:
            if r.urn == urn:
                return r
        raise KeyError(urn)

    def named(self, name: str) -> Resource:
        matches = [r for r in self.resources if r.name == name]
        if len(matches) != 1:
            raise KeyError(f"{len(matches)} resources named {name!r}")
        return matches[0]

    def children(self, urn: str) -> list[Resource]:
        return [r for r in self.resources if r.parent == urn]

    def files_of(self, container: Resource) -> Resource:
        """The file holder that carries `container`'s secret and config files into its volumes.

        components/hardened.py declares it beside the service: `<name>-files`, same parent and
        provider, labelled `cluster-ai.role=file-holder`. KeyError (naming the container) if
        there is not exactly one.
        """
        found = [
            r
            for r in self.resources
            if r.name == f"{container.name}-files" and r.parent == container.parent and is_file_holder(r)
        ]
        if len(found) != 1:
            raise KeyError(f"{container.urn}: {len(found)} file holders, expected one")
        return found[0]

    def uploads_of(self, container: Resource) -> list[dict[str, Any]]:
        """The files `container` gets (`{file, content, permissions, ...}`), as its holder carries them.

        Secrets are kept: a content the program marked secret (or that travels in a secret
        list) is a `Secret`; `unwrap` gives plain values. A container with no holder gets
        its own `uploads`, if any.
        """
        holders = [r for r in self.resources if r.name == f"{container.name}-files" and is_file_holder(r)]
        source = self.files_of(container) if holders else container
        return _secret_contents(source.inputs.get("uploads"))

    def __iter__(self) -> Iterator[Resource]:
        return iter(self.resources)


def evaluate_program(
    program: Callable[[], None],
    *,
    project: str,
    stack: str,
    config: Mapping[str, str],
    secret_keys: list[str] | None = None,
    preview: bool = False,
    mocks: pulumi.runtime.Mocks | None = None,
) -> Evaluation:
    """Run `program` under mocks with this stack's config and return what it registered.

    Each call gets a fresh event loop, fresh settings and a fresh monitor, so
    evaluations never leak into each other. Exceptions from the program propagate.
    """
    monitor = RecordingMonitor(mocks or ClusterMocks())
    # The program may tune the garbage collector for its run (infra/program.py):
    # put it back as it was, so evaluations do not leak settings into each other.
    gc_thresholds = gc.get_threshold()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        set_all_config(dict(config), list(secret_keys or []))
        settings.ROOT.set(None)
        sdk_mocks.set_mocks(monitor.mocks, project=project, stack=stack, preview=preview, monitor=monitor)
        root = settings.get_root_resource()
        loop.run_until_complete(sdk_stack.run_pulumi_func(program))
        exports = _resolve_exports(loop, root)
    finally:
        gc.set_threshold(*gc_thresholds)
        gc.unfreeze()
        settings.ROOT.set(None)
        set_all_config({}, [])
        loop.close()
        asyncio.set_event_loop(None)
    return Evaluation(project, stack, [monitor.recorded[u] for u in monitor.order], exports)


def _resolve_exports(loop: asyncio.AbstractEventLoop, root: Any) -> dict[str, Any]:
    """Await the stack outputs the program exported (unknown in preview -> None)."""
    outputs = getattr(root, "outputs", {}) or {}

    async def resolve() -> dict[str, Any]:
        resolved = {}
        for key, value in outputs.items():
            out = pulumi.Output.from_input(value)
            known = await out.is_known()
            secret = await out.is_secret()
            plain = await out.future(with_unknowns=False) if known else None
            resolved[key] = Secret(plain) if secret else plain
        return resolved

    return loop.run_until_complete(resolve())
