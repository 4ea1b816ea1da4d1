"""`python -m stacks lock STACK [--update]`: pin every image and model by digest.

Each image tag is resolved to its manifest digest through the registry's HTTP API
(the OCI distribution API, `HEAD /v2/<repo>/manifests/<tag>` with the Accept
headers of an OCI index, a Docker manifest list, a Docker v2 and an OCI
manifest, answered in `Docker-Content-Digest`), with the anonymous token flow
Docker Hub and ghcr.io use (a 401's `WWW-Authenticate: Bearer realm=...,
service=..., scope=...` names where to get a pull token). The digest is the
top-level one (a multi-arch index), the same `docker pull repo@sha256:...` and
`docker images --digests` use.

Each Ollama model tag is resolved through Ollama's model registry, which speaks
the same API (`/v2/<namespace>/<model>/manifests/<tag>` on registry.ollama.ai).
The digest `/api/tags` reports is not the registry's header: Ollama re-encodes
the manifest it pulled with Go's `json.Marshal` and reports the sha256 of those
bytes (server/images.go `PullModel` writes `json.Marshal(manifest)`;
server/manifest.go `ParseNamedManifest` hashes the file). `ollama_digest`
re-encodes the same way: compact JSON in the manifest's own key order, with
Go's HTML escaping.

The digests are written into Pulumi.STACK.yaml by targeted line edits, so every
comment and the layout of the rest of the file stay as they were; the result is
parsed back and compared with what was intended before anything is written.
Without `--update`, only missing digests are filled in; with it, every pin moves
to what its tag points at now.
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import json
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from infra.config import NAMESPACE, Images, looks_made_up, parse_image
from stacks.stackfile import REPO, load_stack_document, parse_yaml, read_stack_config

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_NO_STACK = 6

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_V2 = "application/vnd.docker.distribution.manifest.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
IMAGE_ACCEPT = ", ".join([OCI_INDEX, DOCKER_LIST, DOCKER_V2, OCI_MANIFEST])
MODEL_ACCEPT = DOCKER_V2

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
OLLAMA_REGISTRY = "registry.ollama.ai"
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
TIMEOUT_S = 30.0


class LockError(Exception):
    """A pin could not be resolved or written; nothing was written."""


# -- references ------------------------------------------------------------------


@dataclass(frozen=True)
class Location:
    """Where a manifest lives: registry host, repository path, tag."""

    registry: str
    repository: str
    tag: str


def image_location(reference: str) -> Location:
    """`postgres:16` -> docker.io, library/postgres, 16 (Docker's normalisation)."""
    ref = parse_image(reference)
    if ref.tag is None:
        raise LockError(f"{reference}: has no tag to resolve")
    first, _, rest = ref.repo.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return Location(first, rest, ref.tag)
    repository = ref.repo if rest else f"library/{ref.repo}"
    return Location(DOCKER_HUB, repository, ref.tag)


def model_location(name: str) -> Location:
    """`qwen2.5:0.5b` -> registry.ollama.ai, library/qwen2.5, 0.5b."""
    model, _, tag = name.rpartition(":")
    if not model:
        model, tag = name, "latest"
    parts = model.split("/")
    if len(parts) == 3:
        return Location(parts[0], "/".join(parts[1:]), tag)
    return Location(OLLAMA_REGISTRY, model if len(parts) == 2 else f"library/{model}", tag)


def pinned_reference(reference: str, digest: str) -> str:
    """`repo:tag[@old]` -> `repo:tag@digest`."""
    ref = parse_image(reference)
    return f"{ref.repo}:{ref.tag}@{digest}"


def _is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return False


def registry_base(registry: str, overrides: Mapping[str, str]) -> str:
    """The base URL of a registry: an override, plain HTTP for loopback, else HTTPS."""
    if registry in overrides:
        return overrides[registry].rstrip("/")
    host = DOCKER_HUB_API if registry == DOCKER_HUB else registry
    return f"{'http' if _is_loopback(host) else 'https'}://{host}"


# -- digests ---------------------------------------------------------------------


def _go_json(value: Any) -> bytes:
    """What Go's `json.Marshal` writes for a decoded JSON value (keys in their order)."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    for char, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(char, escaped)
    return text.encode()


def ollama_digest(manifest: bytes) -> str:
    """The digest Ollama's `/api/tags` reports for a model pulled with this manifest (64 hex)."""
    return hashlib.sha256(_go_json(json.loads(manifest))).hexdigest()


class Registry:
    """A client for the distribution API: anonymous pulls, with the Bearer token flow."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client
        self._tokens: dict[tuple[str, str, str], str] = {}

    def _get(self, method: str, url: str, accept: str) -> httpx.Response:
        headers = {"Accept": accept}
        try:
            response = self.client.request(method, url, headers=headers)
            if response.status_code == 401:
                token = self._token(response.headers.get("WWW-Authenticate", ""), url)
                response = self.client.request(method, url, headers={**headers, "Authorization": f"Bearer {token}"})
        except httpx.HTTPError as exc:
            raise LockError(f"{url}: {exc}") from None
        return response

    def _token(self, challenge: str, url: str) -> str:
        scheme, _, params = challenge.partition(" ")
        if scheme.lower() != "bearer":
            raise LockError(
                f"{url}: the registry wants {scheme or 'unknown'} authentication; only anonymous pulls are supported"
            )
        fields = dict(re.findall(r'(\w+)="([^"]*)"', params))
        realm = fields.get("realm")
        if not realm:
            raise LockError(f"{url}: 401 without a token realm")
        key = (realm, fields.get("service", ""), fields.get("scope", ""))
        if key not in self._tokens:
            query = {k: v for k, v in (("service", key[1]), ("scope", key[2])) if v}
            response = self.client.get(realm, params=query)
            if response.status_code != 200:
                raise LockError(f"{url}: token request to {realm} answered {response.status_code}")
            body = response.json()
            token = body.get("token") or body.get("access_token")
            if not token:
                raise LockError(f"{url}: the token service {realm} returned no token")
            self._tokens[key] = str(token)
        return self._tokens[key]

    def manifest_url(self, base: str, location: Location) -> str:
        return f"{base}/v2/{location.repository}/manifests/{location.tag}"

    def image_digest(self, base: str, location: Location) -> str:
        """The digest the tag points at (an index for a multi-arch image)."""
        url = self.manifest_url(base, location)
        response = self._get("HEAD", url, IMAGE_ACCEPT)
        digest = response.headers.get("Docker-Content-Digest", "")
        if response.status_code == 200 and DIGEST.fullmatch(digest):
            return digest
        # Some registries answer HEAD without the header (or not at all): GET the bytes.
        response = self._get("GET", url, IMAGE_ACCEPT)
        _check(response, url)
        digest = response.headers.get("Docker-Content-Digest", "")
        return digest if DIGEST.fullmatch(digest) else "sha256:" + hashlib.sha256(response.content).hexdigest()

    def model_digest(self, base: str, location: Location) -> str:
        url = self.manifest_url(base, location)
        response = self._get("GET", url, MODEL_ACCEPT)
        _check(response, url)
        try:
            return ollama_digest(response.content)
        except ValueError:
            raise LockError(f"{url}: the manifest is not JSON") from None


def _check(response: httpx.Response, url: str) -> None:
    if response.status_code == 404:
        raise LockError(f"{url}: no such tag (404)")
    if response.status_code != 200:
        raise LockError(f"{url}: the registry answered {response.status_code}")


# -- the stack file, edited in place ------------------------------------------------


class EditError(LockError):
    """The stack file's layout is not one the line editor understands."""


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _is_content(line: str) -> bool:
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith("#")


def _block(lines: list[str], start: int) -> int:
    """The index after the block of lines indented deeper than `lines[start]`."""
    base = _indent(lines[start])
    end = start + 1
    last = start + 1
    while end < len(lines):
        if _is_content(lines[end]):
            if _indent(lines[end]) <= base:
                break
            last = end + 1
        end += 1
    return last


def _find_key(lines: list[str], key: str, start: int, stop: int, indent: int | None = None) -> int | None:
    pattern = re.compile(rf"^(\s*){re.escape(key)}:(\s|$)")
    for i in range(start, stop):
        match = pattern.match(lines[i])
        if match and (indent is None or len(match[1]) == indent):
            return i
    return None


def _scalar(value: str) -> str:
    """`value` as a YAML scalar that reads back as the same string."""
    try:
        if yaml.safe_load(value) == value and "#" not in value:
            return value
    except yaml.YAMLError:
        pass
    return json.dumps(value)


def _set_value(line: str, value: str) -> str:
    match = re.match(r"^(\s*(?:- )?[\w.-]+:)\s*([^#]*?)(\s+#.*)?$", line)
    if match is None:
        raise EditError(f"cannot edit the line {line.strip()!r}")
    return f"{match[1]} {_scalar(value)}{match[3] or ''}"


def edit_stack_file(text: str, images: Mapping[str, str], model_digests: Mapping[int, str]) -> str:
    """`text` with `cluster-ai:images.<key>` and `cluster-ai:models[i].digest` set."""
    lines = text.split("\n")
    config = _find_key(lines, "config", 0, len(lines), indent=0)
    if config is None:
        raise EditError("the stack file has no top-level `config:`")
    config_end = _block(lines, config)
    child = next((_indent(lines[i]) for i in range(config + 1, config_end) if _is_content(lines[i])), 2)

    # Models first: their line numbers do not move when images are added below them.
    if model_digests:
        at = _find_key(lines, f"{NAMESPACE}:models", config + 1, config_end, indent=child)
        if at is None:
            raise EditError(f"{NAMESPACE}:models is not in the stack file")
        items = [i for i in range(at + 1, _block(lines, at)) if re.match(r"^\s*- ", lines[i])]
        item_indent = _indent(lines[items[0]]) if items else 0
        items = [i for i in items if _indent(lines[i]) == item_indent]
        for index in sorted(model_digests, reverse=True):
            if index >= len(items):
                raise EditError(f"{NAMESPACE}:models[{index}] is not in the stack file")
            start = items[index]
            stop = items[index + 1] if index + 1 < len(items) else _block(lines, at)
            if "{" in lines[start]:
                raise EditError(f"{NAMESPACE}:models[{index}] is a flow mapping; write it as a block to lock it")
            field_indent = item_indent + 2
            digest_line = next((i for i in range(start, stop) if re.match(r"^\s*(- )?digest:", lines[i])), None)
            if digest_line is not None:
                lines[digest_line] = _set_value(lines[digest_line], model_digests[index])
            else:
                name_line = next((i for i in range(start, stop) if re.match(r"^\s*(- )?name:", lines[i])), start)
                lines.insert(name_line + 1, " " * field_indent + f"digest: {_scalar(model_digests[index])}")
                config_end += 1

    if images:
        at = _find_key(lines, f"{NAMESPACE}:images", config + 1, config_end, indent=child)
        if at is None:
            block = [" " * child + f"{NAMESPACE}:images:"]
            block += [" " * (child * 2) + f"{key}: {_scalar(value)}" for key, value in images.items()]
            lines[config_end:config_end] = block
        else:
            if lines[at].split(":", 2)[-1].strip().startswith("{"):
                raise EditError(f"{NAMESPACE}:images is a flow mapping; write it as a block to lock it")
            end = _block(lines, at)
            inner = next((_indent(lines[i]) for i in range(at + 1, end) if _is_content(lines[i])), child * 2)
            for key, value in images.items():
                found = _find_key(lines, key, at + 1, end, indent=inner)
                if found is not None:
                    lines[found] = _set_value(lines[found], value)
                else:
                    lines.insert(end, " " * inner + f"{key}: {_scalar(value)}")
                    end += 1
    return "\n".join(lines)


def _expected(document: dict[str, Any], images: Mapping[str, str], model_digests: Mapping[int, str]) -> dict[str, Any]:
    config = dict(document.get("config") or {})
    if images:
        config[f"{NAMESPACE}:images"] = {**(config.get(f"{NAMESPACE}:images") or {}), **images}
    if model_digests:
        models = [dict(m) for m in config[f"{NAMESPACE}:models"]]
        for index, digest in model_digests.items():
            models[index]["digest"] = digest
        config[f"{NAMESPACE}:models"] = models
    return {**document, "config": config}


# -- the lock --------------------------------------------------------------------


@dataclass
class Change:
    """One pin: what it was, what it is now."""

    key: str
    before: str | None
    after: str

    @property
    def changed(self) -> bool:
        return self.before != self.after


@dataclass
class LockResult:
    changes: list[Change]
    text: str
    """The new stack file."""
    unresolved: list[tuple[str, str]] = field(default_factory=list)
    """(key, why) of every pin that could not be resolved: left as it was."""


def lock_stack(
    stack: str,
    *,
    root: Path = REPO,
    update: bool = False,
    registries: Mapping[str, str] | None = None,
    client: httpx.Client | None = None,
) -> LockResult:
    """Resolve the stack's pins; the new file text and what changed (nothing is written)."""
    path = root / f"Pulumi.{stack}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no stack config {path.name} in {root}")
    text = path.read_text()
    # Read as the plan reads it first: a malformed file stops here (file and line), before any registry.
    read_stack_config(stack, root)
    document = load_stack_document(path)
    config = document.get("config") or {}
    overrides = dict(registries or {})
    registry = Registry(client or httpx.Client(timeout=TIMEOUT_S, follow_redirects=True))
    changes: list[Change] = []

    declared_images = config.get(f"{NAMESPACE}:images") or {}
    effective = Images.model_validate(declared_images).items() if isinstance(declared_images, dict) else []
    image_pins: dict[str, str] = {}
    unresolved: list[tuple[str, str]] = []
    for key, reference in effective:
        current = declared_images.get(key)
        digest_now = parse_image(reference).digest
        # A placeholder (a digest typed to look like one) is no pin: resolve it even without --update.
        if digest_now is not None and not looks_made_up(digest_now) and not update:
            continue
        location = image_location(reference)
        try:
            digest = registry.image_digest(registry_base(location.registry, overrides), location)
        except LockError as exc:
            unresolved.append((f"images.{key}", str(exc)))
            continue
        pinned = pinned_reference(reference, digest)
        changes.append(Change(f"images.{key}", current, pinned))
        if pinned != current:
            image_pins[key] = pinned

    model_pins: dict[int, str] = {}
    for index, model in enumerate(config.get(f"{NAMESPACE}:models") or []):
        if not isinstance(model, dict) or "name" not in model:
            raise LockError(f"{NAMESPACE}:models[{index}]: has no name")
        current = model.get("digest")
        if current is not None and not looks_made_up(str(current)) and not update:
            continue
        location = model_location(str(model["name"]))
        base = overrides.get(location.registry) or (
            # `insecure: true` (dev only): the private registry speaks plain HTTP.
            f"http://{location.registry}"
            if model.get("insecure") is True
            else registry_base(location.registry, overrides)
        )
        try:
            digest = registry.model_digest(base, location)
        except LockError as exc:
            unresolved.append((f"models[{index}].digest ({model['name']})", str(exc)))
            continue
        before = None if current is None else str(current).removeprefix("sha256:")
        changes.append(Change(f"models[{index}].digest ({model['name']})", before, digest))
        if before != digest:
            model_pins[index] = digest

    new_text = edit_stack_file(text, image_pins, model_pins) if image_pins or model_pins else text
    if parse_yaml(new_text, path) != _expected(document, image_pins, model_pins):
        raise EditError(f"editing {path.name} in place would change more than the pins; set them by hand")
    return LockResult(changes, new_text, unresolved)


def render(result: LockResult, stack: str) -> str:
    """What was resolved (pinned, moved, unchanged) and, separately, what could not be."""
    if not result.changes and not result.unresolved:
        return f"stack {stack}: every pin already has a digest (use --update to move them)"
    if not result.changes:
        return f"stack {stack}: nothing resolved"
    lines = [f"stack {stack}:"]
    for c in result.changes:
        if not c.changed:
            state = "unchanged"
        elif c.before is None or (c.key.startswith("images.") and "@" not in c.before):
            state = "pinned"
        else:
            state = "moved"
        lines.append(f"  {c.key}: {state} -> {c.after}" + (f" (was {c.before})" if c.changed and c.before else ""))
    return "\n".join(lines)


def render_unresolved(result: LockResult) -> str:
    """Every pin that could not be resolved, and why: said apart from what was written."""
    lines = [f"error: could not resolve {len(result.unresolved)} pin(s); they are left as they were:"]
    lines += [f"  {key}: {why}" for key, why in result.unresolved]
    lines.append("`plan` and `up` of a prod stack refuse an image or model without a real digest")
    return "\n".join(lines)


def _mapping(values: list[str]) -> dict[str, str]:
    out = {}
    for value in values:
        host, sep, url = value.partition("=")
        if not sep or not host or not url.startswith(("http://", "https://")):
            raise argparse.ArgumentTypeError(f"--registry {value!r}: expected REGISTRY=http(s)://HOST[:PORT]")
        out[host] = url
    return out


def _command(args: argparse.Namespace) -> int:
    try:
        registries = _mapping(args.registry)
        if args.ollama_registry:
            registries[OLLAMA_REGISTRY] = args.ollama_registry
        result = lock_stack(args.stack, root=args.root, update=args.update, registries=registries)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_NO_STACK
    except (LockError, argparse.ArgumentTypeError, httpx.HTTPError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(render(result, args.stack))
    path = args.root / f"Pulumi.{args.stack}.yaml"
    written = [c.key for c in result.changes if c.changed]
    if written:
        if args.dry_run:
            print(f"(dry run: {path.name} not written)")
        else:
            path.write_text(result.text)
            print(f"wrote {len(written)} pin(s) to {path.name}: {', '.join(written)}")
            _audit(args, result, path)
    if result.unresolved:
        print(render_unresolved(result), file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _audit(args: argparse.Namespace, result: LockResult, path: Path) -> None:
    """A written stack file changes what the next `up` deploys: one line in the audit log."""
    from stacks import audit

    moved = [c.key for c in result.changes if c.changed]
    log = audit.audit_log_path(audit.backend_url_of(args.root), root=args.root)
    entry = audit.Entry(args.stack, "lock", audit.SUCCEEDED, {"pins": len(moved)}, {"file": path.name, "pins": moved})
    if audit.append(log, entry, root=args.root):
        print(f"audit: recorded in {log}", file=sys.stderr)


def add_command(sub: argparse._SubParsersAction[argparse.ArgumentParser], *, root_default: Path = REPO) -> None:
    text = "resolve image and model tags to digests and pin them in Pulumi.STACK.yaml"
    p = sub.add_parser("lock", help=text, description=text)
    p.add_argument("stack", help="stack name: Pulumi.STACK.yaml")
    p.add_argument("--update", action="store_true", help="move every pin to the digest its tag points at now")
    p.add_argument("--dry-run", action="store_true", help="show what would change; write nothing")
    p.add_argument(
        "--registry",
        action="append",
        default=[],
        metavar="REGISTRY=URL",
        help="talk to REGISTRY (e.g. docker.io, ghcr.io) at URL instead (a mirror, or a test registry)",
    )
    p.add_argument(
        "--ollama-registry", metavar="URL", help=f"the Ollama model registry (default https://{OLLAMA_REGISTRY})"
    )
    p.add_argument(
        "--root", type=Path, default=root_default, help="directory holding the stack files (default: this repository)"
    )
    p.set_defaults(func=_command)
