"""Read a stack's config the way the Pulumi CLI hands it to the program.

Stack files are read strictly, as the Pulumi CLI's own YAML parser does: a key
given twice, a key that is not a string, a document that is not a mapping or a
`config:` that is not one stop with `StackFileError` naming the file and line
(exit 2 from `python -m stacks`), never a traceback. Scalars follow YAML 1.2
like the CLI's parser: `yes`/`no`/`on`/`off` are text, only `true`/`false` are
booleans, and `1:20` is text, not a base-60 number.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
# What the offline plan shows for a `secure:` value it cannot decrypt.
SECRET_PLACEHOLDER = "[secret]"
# Aliases let a few lines expand into gigabytes; no stack file needs many.
MAX_ALIASES = 100


class StackNotFoundError(Exception):
    """There is no Pulumi.<stack>.yaml."""


class StackFileError(Exception):
    """A stack or project file that cannot be read as one; names the file and line."""

    def __init__(self, path: Path, line: int | None, message: str) -> None:
        self.path, self.line, self.message = path, line, message
        where = f"{path.name}:{line}" if line is not None else path.name
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class StackConfig:
    """A stack's config as the engine passes it: flat `namespace:key` -> text."""

    project: str
    stack: str
    config: dict[str, str]
    secret_keys: frozenset[str]


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 scalars, refusing duplicate and non-string keys."""

    aliases_seen = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self.aliases_seen += 1
            if self.aliases_seen > MAX_ALIASES:
                mark = self.peek_event().start_mark
                raise yaml.constructor.ConstructorError(None, None, f"more than {MAX_ALIASES} aliases", mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        self.flatten_mapping(node)
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if not isinstance(key, str):
                raise _KeyError(line, f"the key {_shown_key(key)} is not a string; quote it")
            if key in seen:
                raise _KeyError(line, f"the key {key!r} is given twice (first on line {seen[key]})")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _shown_key(key: Any) -> str:
    text = json.dumps(key, default=str)
    return text if len(text) <= 40 else text[:40] + "..."


class _KeyError(Exception):
    def __init__(self, line: int, message: str) -> None:
        self.line, self.message = line, message
        super().__init__(message)


def _yaml12(loader: type[yaml.SafeLoader]) -> None:
    """Replace YAML 1.1's booleans and integers with YAML 1.2's core schema (what Pulumi reads)."""
    resolvers = {
        first: [(tag, regexp) for tag, regexp in entries if tag not in (_BOOL, _INT)]
        for first, entries in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    loader.yaml_implicit_resolvers = resolvers
    loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
    loader.add_implicit_resolver(
        _INT, re.compile(r"^(?:[-+]?(?:0|[1-9][0-9]*)|0x[0-9a-fA-F]+|0o[0-7]+)$"), list("-+0123456789")
    )


_BOOL = "tag:yaml.org,2002:bool"
_INT = "tag:yaml.org,2002:int"
_yaml12(_Loader)


def load_yaml(path: Path) -> Any:
    """A YAML file, strictly: StackFileError (file and line) for anything Pulumi would refuse."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise StackFileError(path, None, f"is not UTF-8 text (byte {exc.start})") from None
    return parse_yaml(text, path)


def parse_yaml(text: str, path: Path) -> Any:
    """`text` (the contents of `path`) read strictly; StackFileError names `path` and the line."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except _KeyError as exc:
        raise StackFileError(path, exc.line, exc.message) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = " ".join(p for p in (exc.context, exc.problem) if p) or "is not valid YAML"
        raise StackFileError(path, mark.line + 1 if mark else None, f"invalid YAML: {what}") from None
    except yaml.YAMLError as exc:
        raise StackFileError(path, None, f"invalid YAML: {exc}") from None


def load_stack_document(path: Path) -> dict[str, Any]:
    """A stack or project file: a mapping whose `config:` (if any) is a mapping."""
    document = load_yaml(path)
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise StackFileError(path, 1, f"must be a mapping of keys (config: ...), not {_yaml_type(document)}")
    config = document.get("config")
    if config is not None and not isinstance(config, dict):
        raise StackFileError(
            path, _line_of(path, "config"), f"`config:` must be a mapping of keys, not {_yaml_type(config)}"
        )
    return document


def _yaml_type(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return type(value).__name__


def _line_of(path: Path, key: str) -> int | None:
    """The line a top-level key is on (for messages about its value)."""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if re.match(rf"^{re.escape(key)}\s*:", line):
            return number
    return None


def _config_line(path: Path, key: str) -> int | None:
    """The line a `config:` key is on."""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if re.match(rf"^\s+['\"]?{re.escape(key)}['\"]?\s*:", line):
            return number
    return None


def project_name(root: Path = REPO) -> str:
    return str(load_stack_document(root / "Pulumi.yaml")["name"])


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
    project_path = root / "Pulumi.yaml"
    project_doc = load_stack_document(project_path)
    project = str(project_doc.get("name") or "")
    if not project:
        raise StackFileError(project_path, None, "has no project `name:`")
    path = root / f"Pulumi.{stack}.yaml"
    if not path.is_file():
        raise StackNotFoundError(f"no stack config {path.name} in {root}")
    config: dict[str, str] = {}
    for key, decl in (project_doc.get("config") or {}).items():
        full = key if ":" in key else f"{project}:{key}"
        if isinstance(decl, dict) and "default" in decl:
            config[full] = _encode(decl["default"])
        elif decl is not None and not isinstance(decl, dict):
            config[full] = _encode(decl)
    secret_keys: set[str] = set()
    stack_doc = load_stack_document(path)
    for key, value in (stack_doc.get("config") or {}).items():
        full = key if ":" in key else f"{project}:{key}"
        if value is None:
            raise StackFileError(
                path, _config_line(path, key), f"{full} has no value (null): give it one, or remove the key"
            )
        if isinstance(value, dict) and set(value) == {"secure"}:
            secret_keys.add(full)
            config[full] = SECRET_PLACEHOLDER
        else:
            config[full] = _encode(value)
    return StackConfig(project, stack, config, frozenset(secret_keys))
