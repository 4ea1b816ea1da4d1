"""Read a stack's config the way the Pulumi CLI hands it to the program."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
# What the offline plan shows for a `secure:` value it cannot decrypt.
SECRET_PLACEHOLDER = "[secret]"


class StackNotFoundError(Exception):
    """There is no Pulumi.<stack>.yaml."""


@dataclass(frozen=True)
class StackConfig:
    """A stack's config as the engine passes it: flat `namespace:key` -> text."""

    project: str
    stack: str
    config: dict[str, str]
    secret_keys: frozenset[str]


def project_name(root: Path = REPO) -> str:
    return str(yaml.safe_load((root / "Pulumi.yaml").read_text())["name"])


def _encode(value: Any) -> str:
    # The engine passes objects and lists as JSON text, scalars as their text.
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def read_stack_config(stack: str, root: Path = REPO) -> StackConfig:
    """Project defaults from Pulumi.yaml, then Pulumi.<stack>.yaml on top.

    `secure:` values cannot be decrypted offline: they become a placeholder and
    are listed as secret keys, as the engine would list them.
    """
    project_doc = yaml.safe_load((root / "Pulumi.yaml").read_text()) or {}
    project = str(project_doc["name"])
    path = root / f"Pulumi.{stack}.yaml"
    if not path.is_file():
        raise StackNotFoundError(f"no stack config {path.name} in {root}")
    config: dict[str, str] = {}
    for key, decl in (project_doc.get("config") or {}).items():
        full = key if ":" in key else f"{project}:{key}"
        if isinstance(decl, dict) and "default" in decl:
            config[full] = _encode(decl["default"])
        elif not isinstance(decl, dict):
            config[full] = _encode(decl)
    secret_keys: set[str] = set()
    stack_doc = yaml.safe_load(path.read_text()) or {}
    for key, value in (stack_doc.get("config") or {}).items():
        full = key if ":" in key else f"{project}:{key}"
        if isinstance(value, dict) and set(value) == {"secure"}:
            secret_keys.add(full)
            config[full] = SECRET_PLACEHOLDER
        else:
            config[full] = _encode(value)
    return StackConfig(project, stack, config, frozenset(secret_keys))
