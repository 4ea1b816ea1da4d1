"""The offline plan: the real program for a stack, evaluated under the SDK's mocks.

Like `cdk synth` or `helm template`: it shows what a stack declares with no
Pulumi CLI, backend, Docker engine or credentials. Tests build on the same
evaluation (`evaluate_stack`).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import runpy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from stacks.mocks import Evaluation, Resource, contains_secret, evaluate_program, redact, unwrap
from stacks.stackfile import REPO, read_stack_config

PROGRAM = REPO / "infra" / "__main__.py"


def run_program(path: Path = PROGRAM) -> None:
    """Run the program file exactly as the Pulumi language host does."""
    runpy.run_path(str(path), run_name="__main__")


def evaluate_stack(
    stack: str,
    *,
    overrides: Mapping[str, str] | None = None,
    preview: bool = False,
    root: Path = REPO,
) -> Evaluation:
    """Evaluate the program for `Pulumi.<stack>.yaml` (plus `overrides`, full keys)."""
    stack_config = read_stack_config(stack, root)
    config = {**stack_config.config, **(overrides or {})}
    return evaluate_program(
        run_program,
        project=stack_config.project,
        stack=stack,
        config=config,
        secret_keys=sorted(stack_config.secret_keys),
        preview=preview,
    )


# The inputs worth a line in the tree, per resource type; the JSON has them all.
KEY_INPUTS: dict[str, tuple[str, ...]] = {
    "pulumi:providers:docker": ("host",),
    "docker:index/remoteImage:RemoteImage": ("name",),
    "docker:index/network:Network": ("driver", "internal"),
    "docker:index/volume:Volume": (),
    "docker:index/container:Container": ("ports", "user", "readOnly", "memory", "cpus", "gpus", "command"),
    "random:index/randomPassword:RandomPassword": ("length",),
    # Commands get their scripts in full below their line (`_command_lines`).
    "command:local:Command": (),
    "command:remote:Command": (),
}
COMMAND_TYPES = ("command:local:Command", "command:remote:Command")
# What a command runs, in the order it matters; `stdin` is the script of `bash -s`.
COMMAND_FIELDS = ("create", "update", "delete", "stdin")
# `NAME_B64='<base64>'` in a script: data handed over encoded (components/bootstrap.py
# `payload`); the plan decodes it so a reviewer reads what the host will get.
PAYLOAD = re.compile(r"^([A-Z][A-Z0-9_]*_B64)='([A-Za-z0-9+/=]*)'$", re.M)


def _integral(value: Any) -> Any:
    """The engine's wire form makes every number a float: show 8786, not 8786.0."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value


def _shown(value: Any, show_secrets: bool) -> Any:
    """Secrets as `[secret]`, or (`--show-secrets`, like `pulumi preview --show-secrets`) in plain text."""
    return unwrap(value) if show_secrets else redact(value)


def _short(value: Any, limit: int = 110, *, show_secrets: bool = False) -> str:
    text = json.dumps(_integral(_shown(value, show_secrets)), separators=(",", ":"), default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(resource: Resource, evaluation: Evaluation, *, show_secrets: bool = False) -> str:
    keys = KEY_INPUTS.get(resource.type)
    parts = []
    if resource.type == "docker:index/container:Container":
        image = _image_of(resource, evaluation)
        if image:
            parts.append(f"image={image}")
    inputs = resource.inputs
    for key in keys if keys is not None else sorted(inputs):
        if key in inputs:
            parts.append(f"{key}={_short(inputs[key], show_secrets=show_secrets)}")
    secret_inputs = sorted(k for k, v in inputs.items() if contains_secret(v))
    if secret_inputs:
        parts.append("secrets=" + ",".join(secret_inputs))
    if resource.protect:
        parts.append("protect")
    if resource.retain_on_delete:
        parts.append("retainOnDelete")
    return " ".join(parts)


def _image_of(container: Resource, evaluation: Evaluation) -> str | None:
    """The image reference behind a container's `image_id` input."""
    for urn in container.property_dependencies.get("image", ()):
        dep = evaluation.get(urn)
        if dep.type == "docker:index/remoteImage:RemoteImage":
            return str(dep.inputs.get("name"))
    return None


def ordered(evaluation: Evaluation) -> list[tuple[int, Resource]]:
    """Resources depth-first from the stack, children sorted by type and name."""
    by_parent: dict[str | None, list[Resource]] = {}
    urns = {r.urn for r in evaluation.resources}
    for r in evaluation.resources:
        parent = r.parent if r.parent in urns else None
        by_parent.setdefault(parent, []).append(r)
    out: list[tuple[int, Resource]] = []

    def walk(parent: str | None, depth: int) -> None:
        for r in sorted(by_parent.get(parent, []), key=lambda r: (r.type, r.name)):
            out.append((depth, r))
            walk(r.urn, depth + 1)

    walk(None, 0)
    return out


def warnings(evaluation: Evaluation) -> list[str]:
    """What a reviewer should see before `pulumi up`: e.g. models not pinned."""
    unpinned = evaluation.exports.get("unpinnedModels") or []
    return [f"model {name} is UNPINNED: the first pull records the digest it gets" for name in unpinned]


def _printable(text: str) -> str:
    """One line of a script as a terminal may show it: control characters escaped."""
    return "".join(c if c.isprintable() or c == "\t" else c.encode("unicode_escape").decode("ascii") for c in text)


def _decoded_payloads(script: str) -> list[tuple[str, str]]:
    out = []
    for match in PAYLOAD.finditer(script):
        try:
            out.append((match[1], base64.b64decode(match[2], validate=True).decode("utf-8")))
        except (binascii.Error, UnicodeDecodeError):
            out.append((match[1], "(not decodable as UTF-8 text)"))
    return out


def _command_lines(resource: Resource, indent: str, show_secrets: bool) -> list[str]:
    """What a command runs, in full: each of create/update/delete/stdin, and the data its
    scripts carry encoded. Secrets stay `[secret]` unless `show_secrets`."""
    lines: list[str] = []
    for field in COMMAND_FIELDS:
        value = _shown(resource.inputs.get(field), show_secrets)
        if value is None:
            continue
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        lines.append(f"{indent}{field}:")
        lines += [f"{indent}  | {_printable(line)}" for line in text.split("\n")]
        for name, data in _decoded_payloads(text):
            lines.append(f"{indent}{field} {name} (decoded):")
            lines += [f"{indent}  | {_printable(line)}" for line in data.split("\n")]
    return lines


def render_text(evaluation: Evaluation, *, show_secrets: bool = False) -> str:
    lines = [f"stack {evaluation.stack} (project {evaluation.project}): {len(evaluation.resources)} resources"]
    for depth, resource in ordered(evaluation):
        detail = _describe(resource, evaluation, show_secrets=show_secrets)
        lines.append(f"{'  ' * depth}{resource.type}  {resource.name}" + (f"  {detail}" if detail else ""))
        if resource.type in COMMAND_TYPES:
            lines += _command_lines(resource, "  " * (depth + 1) + "  ", show_secrets)
    for warning in warnings(evaluation):
        lines.append(f"warning: {warning}")
    return "\n".join(lines)


def render_json(evaluation: Evaluation, *, show_secrets: bool = False) -> str:
    """The plan as JSON; secret inputs are `[secret]` unless `show_secrets` (their names are
    listed under `secrets` either way, so a reviewer sees which values are protected)."""
    document = {
        "stack": evaluation.stack,
        "project": evaluation.project,
        "resources": [
            {
                "urn": r.urn,
                "type": r.type,
                "name": r.name,
                "parent": r.parent,
                "inputs": _integral(_shown(r.inputs, show_secrets)),
                "secrets": sorted(k for k, v in r.inputs.items() if contains_secret(v)),
            }
            for _, r in ordered(evaluation)
        ],
        "warnings": warnings(evaluation),
    }
    return json.dumps(document, indent=2, default=str)
