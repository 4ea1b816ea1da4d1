"""Check a generated provider schema against the installed Python SDK of that provider.

Usage: python check_schema.py NAME SCHEMA_JSON   (NAME: random, tls or docker)

The bridged providers of ci/providers are this project's own mapping of the upstream
Terraform providers; the published SDKs (pulumi_random, pulumi_tls, pulumi_docker)
must drive them unchanged. This compares, for every resource class of the SDK and
every input type (``*Args``) the schema also defines, the type token and the input
and output property names the SDK sends and reads with the schema. An input the SDK
sends that the schema lacks, or a resource the schema lacks, is an error (exit 1);
outputs and schema-only extras are reported. Exit 2 on bad usage.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
import sys
from pathlib import Path
from types import ModuleType

import pulumi
from pulumi import _types

TOKEN_RE = re.compile(r"__init__\(\s*'([a-z]+:[^']+)'")

# SDK resources that are not part of the Terraform provider, so not of the schema.
NOT_BRIDGED = {
    "docker:index/image:Image": "pulumi-docker's native build-and-push resource (its own Go code)",
}


def sdk_resources(module: ModuleType) -> dict[str, type]:
    """The SDK's CustomResource classes by the type token their constructor registers."""
    found: dict[str, type] = {}
    for _, cls in inspect.getmembers(module, inspect.isclass):
        if not issubclass(cls, pulumi.CustomResource) or cls.__module__.split(".")[0] != module.__name__:
            continue
        match = TOKEN_RE.search(inspect.getsource(cls))
        if match and not match.group(1).startswith("pulumi:providers:"):
            found[match.group(1)] = cls
    return found


def args_class(resource_cls: type) -> type | None:
    """The ``<Resource>Args`` input class that sits beside a resource class."""
    module = sys.modules[resource_cls.__module__]
    return getattr(module, resource_cls.__name__ + "Args", None)


def compare(label: str, sdk: set[str], schema: set[str], errors: list[str], notes: list[str], fatal: bool) -> None:
    """Record names the SDK uses that the schema lacks (fatal for inputs) and schema-only extras."""
    missing = sorted(sdk - schema)
    extra = sorted(schema - sdk)
    if missing:
        (errors if fatal else notes).append(f"{label}: the SDK uses {missing}, the schema lacks them")
    if extra:
        notes.append(f"{label}: only the schema has {extra}")


def check(name: str, schema_path: Path) -> int:
    """Compare one provider's schema with its SDK; print a report; return the exit code."""
    schema = json.loads(schema_path.read_text())
    module = importlib.import_module(f"pulumi_{name}")
    errors: list[str] = []
    notes: list[str] = []
    properties_checked = 0
    resources = sdk_resources(module)
    for token, cls in sorted(resources.items()):
        spec = schema.get("resources", {}).get(token)
        if spec is None and token in NOT_BRIDGED:
            notes.append(f"{token} ({cls.__name__}): not served: {NOT_BRIDGED[token]}")
            continue
        if spec is None:
            errors.append(f"{token} ({cls.__name__}): not in the schema")
            continue
        outputs = set(_types.resource_py_to_pulumi_names(cls).values())
        compare(f"{token} outputs", outputs, set(spec.get("properties", {})), errors, notes, fatal=False)
        args = args_class(cls)
        if args is not None:
            inputs = set(_types.input_type_py_to_pulumi_names(args).values())
            properties_checked += len(inputs) + len(outputs)
            compare(f"{token} inputs", inputs, set(spec.get("inputProperties", {})), errors, notes, fatal=True)
    types_checked = 0
    try:
        input_classes = inspect.getmembers(importlib.import_module(f"pulumi_{name}._inputs"), inspect.isclass)
    except ModuleNotFoundError:  # pulumi_random has no nested input types
        input_classes = []
    for cls_name, cls in input_classes:
        if not cls_name.endswith("Args") or cls.__module__ != f"pulumi_{name}._inputs":
            continue
        base = cls_name[: -len("Args")]
        spec = schema.get("types", {}).get(f"{name}:index/{base}:{base}")
        if spec is None:
            continue
        types_checked += 1
        sdk_names = set(_types.input_type_py_to_pulumi_names(cls).values())
        properties_checked += len(sdk_names)
        compare(f"type {base}", sdk_names, set(spec.get("properties", {})), errors, notes, fatal=True)
    print(
        f"{name}: {len(resources)} SDK resources and {types_checked} input types "
        f"({properties_checked} property names) compared with {schema_path}"
    )
    for note in notes:
        print(f"  note: {note}")
    for error in errors:
        print(f"  ERROR: {error}")
    return 1 if errors else 0


def main(argv: list[str]) -> int:
    """Entry point: check NAME SCHEMA_JSON."""
    if len(argv) != 2 or argv[0] not in {"random", "tls", "docker"}:
        print("usage: check_schema.py random|tls|docker SCHEMA_JSON", file=sys.stderr)
        return 2
    return check(argv[0], Path(argv[1]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
