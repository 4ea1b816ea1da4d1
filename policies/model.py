"""What a rule is, how it reads its config, and how it reads what the engine shows it.

A rule is a plain validator function `(args, report_violation) -> None` plus its
metadata (`Rule`): name, CIS id, severity, one-sentence description, remediation
steps, enforcement level and tunables (a JSON schema whose `default`s apply when
the pack's config leaves a key out). Validators read the effective config with
`settings(args, validator)`: schema defaults, then the pack's exceptions
(`policies.exceptions`), then whatever the user configured.

What a validator sees is what the engine shows a policy: camelCase properties,
numbers as floats, secrets as plain text, provider inputs that are not strings
as JSON text, and - during preview - unknown values that raise
`UnknownValueError` when read. A rule reads what it needs and lets that error
propagate: the engine then reports "can't run during preview" as an advisory
note instead of a verdict. Where an unknown value is one the rule does not need
(a container's `image` id when the RemoteImage's name is what is checked),
`peek` reads it without raising.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, TypeAlias

from pulumi_policy import (
    EnforcementLevel,
    PolicyComplianceFramework,
    PolicyConfigSchema,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    Severity,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.proxy import UNKNOWN_STRING_VALUE, UnknownValueError

from policies.exceptions import PACK_CONFIG

# Resource types the rules look at.
CONTAINER = "docker:index/container:Container"
REMOTE_IMAGE = "docker:index/remoteImage:RemoteImage"
VOLUME = "docker:index/volume:Volume"
NETWORK = "docker:index/network:Network"
DOCKER_PROVIDER = "pulumi:providers:docker"
LOCAL_COMMAND = "command:local:Command"
REMOTE_COMMAND = "command:remote:Command"

# The labels every service container carries (components/hardened.py).
SERVICE_LABEL = "cluster-ai.service"
VOLUME_LABEL = "cluster-ai.volume"

CIS_BENCHMARK = "CIS Docker Benchmark"
CIS_VERSION = "1.6.0"


class Kind(StrEnum):
    RESOURCE = "resource"
    STACK = "stack"


class Group(StrEnum):
    """Where a rule comes from; the catalogue is ordered by it."""

    CIS = "CIS Docker Benchmark v1.6.0"
    CLUSTER = "Cluster AI"


class ReportViolation(Protocol):
    """What a validator reports with: a message, and (stack rules) the resource's URN.

    pulumi_policy types it as a two-argument callable; its implementation (and the
    harness's) takes the URN as optional, as its documentation says.
    """

    def __call__(self, message: str, urn: str | None = None, /) -> None: ...


ResourceValidator: TypeAlias = Callable[[ResourceValidationArgs, ReportViolation], None]
StackValidator: TypeAlias = Callable[[StackValidationArgs, ReportViolation], None]
Validator: TypeAlias = ResourceValidator | StackValidator


@dataclass(frozen=True)
class Rule:
    """A validator and everything a user needs to know about it."""

    name: str
    """kebab-case, unique in the pack."""
    title: str
    """A short display name."""
    description: str
    """One sentence: what must hold."""
    remediation: str
    """What to change when it does not."""
    severity: Severity
    enforcement: EnforcementLevel
    validate: Validator
    kind: Kind
    group: Group
    resource_types: tuple[str, ...] = ()
    """What a resource rule looks at (others are skipped before the validator runs)."""
    cis: str | None = None
    """The CIS Docker Benchmark v1.6.0 recommendation, e.g. `5.5`."""
    config: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Tunables: JSON schema properties, each with a `default`."""
    scope: str = "every stack"
    """Where the rule applies, in words (`strict stacks (prod)`)."""

    def defaults(self) -> dict[str, Any]:
        return {key: schema["default"] for key, schema in self.config.items() if "default" in schema}

    def tags(self) -> list[str]:
        tags = ["docker"] if self.group is Group.CIS else ["cluster-ai"]
        if self.cis is not None:
            tags.append(f"cis-{self.cis}")
        return tags

    def to_policy(self) -> ResourceValidationPolicy | StackValidationPolicy:
        """The pulumi_policy object the pack serves."""
        framework = None
        if self.cis is not None:
            framework = PolicyComplianceFramework(
                name=CIS_BENCHMARK, version=CIS_VERSION, reference=self.cis, specification=self.title
            )
        schema = PolicyConfigSchema(properties={k: dict(v) for k, v in self.config.items()}) if self.config else None
        common: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "enforcement_level": self.enforcement,
            "config_schema": schema,
            "display_name": self.title,
            "severity": self.severity,
            "framework": framework,
            "tags": self.tags(),
            "remediation_steps": self.remediation,
        }
        if self.kind is Kind.STACK:
            return StackValidationPolicy(validate=self.validate, **common)  # type: ignore[arg-type]
        return ResourceValidationPolicy(validate=_only(self.resource_types, self.validate), **common)  # type: ignore[arg-type]


def _only(types: tuple[str, ...], validate: Validator) -> ResourceValidator:
    """The validator, run only on the resource types it is about."""

    def run(args: ResourceValidationArgs, report: ReportViolation) -> None:
        if not types or args.resource_type in types:
            validate(args, report)  # type: ignore[arg-type]

    run.__name__ = getattr(validate, "__name__", "validate")
    return run


# --- config ------------------------------------------------------------------

_RULES_BY_VALIDATOR: dict[Validator, Rule] = {}


def register(rules: Sequence[Rule]) -> list[Rule]:
    """Make `settings` find each rule from its validator."""
    for rule in rules:
        _RULES_BY_VALIDATOR[rule.validate] = rule
    return list(rules)


def settings(args: ResourceValidationArgs | StackValidationArgs, validator: Validator) -> dict[str, Any]:
    """The rule's effective config: schema defaults < pack exceptions < the user's config."""
    rule = _RULES_BY_VALIDATOR[validator]
    configured = {k: v for k, v in (args.get_config() or {}).items() if k != "enforcementLevel"}
    pack = {k: v for k, v in PACK_CONFIG.get(rule.name, {}).items() if k != "enforcementLevel"}
    return {**rule.defaults(), **pack, **configured}


EXEMPTION_REASON: dict[str, Any] = {
    "type": "string",
    "minLength": 10,
    "description": "Why this service needs it: shown in the catalogue and in reviews.",
}


def exemptions_schema(description: str, **allowance: Mapping[str, Any]) -> dict[str, Any]:
    """`{service: {reason, ...allowance}}`: what a service may do that others may not, and why."""
    return {
        "type": "object",
        "description": description,
        "default": {},
        "additionalProperties": {
            "type": "object",
            "properties": {"reason": EXEMPTION_REASON, **{k: dict(v) for k, v in allowance.items()}},
            "required": ["reason", *allowance],
            "additionalProperties": False,
        },
    }


def exemption(config: Mapping[str, Any], service: str | None) -> Mapping[str, Any] | None:
    """The service's exemption from this rule, if the config grants one."""
    if service is None:
        return None
    granted = (config.get("exemptions") or {}).get(service)
    return granted if isinstance(granted, Mapping) else None


# --- reading properties ------------------------------------------------------

UNKNOWN = UNKNOWN_STRING_VALUE
_UNKNOWNS = frozenset(
    {
        "1c4a061d-8072-4f0a-a4cb-0ff528b18fe7",
        "3eeb2bf0-c639-47a8-9e75-3b44932eb421",
        UNKNOWN_STRING_VALUE,
        "6a19a0b0-7e62-4c92-b797-7f8e31da9cc2",
        "030794c1-ac77-496b-92df-f27374a8bd58",
        "e48ece36-62e2-4504-bad9-02848725956a",
        "dd056dcd-154b-4c76-9bd3-c8f88648b5ff",
    }
)


def is_unknown(value: Any) -> bool:
    """Is `value` one of the engine's "not known until apply" sentinels?"""
    return isinstance(value, str) and value in _UNKNOWNS


def peek(props: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """`props[key]`, `default` when absent, `UNKNOWN` (never an error) when unknown."""
    try:
        return props[key]
    except KeyError:
        return default
    except UnknownValueError:
        return UNKNOWN


def items(value: Any) -> list[Any]:
    """A list property as a list (the engine's proxies are Sequences, not lists)."""
    if value is None:
        return []
    if isinstance(value, str):
        # Provider inputs that are not strings arrive as JSON text.
        try:
            decoded = json.loads(value)
        except ValueError:
            return [value]
        return list(decoded) if isinstance(decoded, list) else [value]
    if isinstance(value, Sequence):
        return list(value)
    return [value]


def mapping(value: Any) -> Mapping[str, Any]:
    if isinstance(value, Mapping):
        return value
    if isinstance(value, str):
        try:
            decoded = json.loads(value)
        except ValueError:
            return {}
        return decoded if isinstance(decoded, Mapping) else {}
    return {}


def labels(props: Mapping[str, Any]) -> dict[str, str]:
    """Docker labels: a list of `{label, value}` on containers, volumes and networks."""
    cached = _LABELS.get(id(props))
    if cached is not None and cached[0]() is props:
        return dict(cached[1])
    found: dict[str, str] = {}
    for entry in items(props.get("labels")):
        if isinstance(entry, Mapping) and isinstance(entry.get("label"), str):
            found[entry["label"]] = str(entry.get("value", ""))
    try:
        reference = weakref.ref(props)
    except TypeError:  # a plain dict (tests): nothing to remember it by
        return found
    if len(_LABELS) > 50_000:
        _LABELS.clear()
    _LABELS[id(props)] = (reference, found)
    return dict(found)


# Nearly every rule asks for a resource's labels, and the harness hands every
# rule the same props object: read them once per object. Keyed by id, checked
# against a weak reference, so a recycled id is never mistaken for the object.
_LABELS: dict[int, tuple[weakref.ref[Any], dict[str, str]]] = {}


def service_of(props: Mapping[str, Any]) -> str | None:
    return labels(props).get(SERVICE_LABEL)


def number(value: Any) -> float | None:
    """A number the engine sent (float), or a numeric string (`cpus`); None otherwise."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def stack_of(urn: str) -> str:
    """`urn:pulumi:<stack>::<project>::<type>::<name>` -> `<stack>`."""
    head = urn.split("::", 1)[0]
    return head.removeprefix("urn:pulumi:")


def who(args: ResourceValidationArgs) -> str:
    """How a message names the resource: its service and name."""
    service = service_of(args.props) if args.resource_type in (CONTAINER, VOLUME) else None
    return f"{args.name} ({service})" if service else args.name


def walk_strings(value: Any) -> Iterator[str]:
    """Every string in a property tree."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for key in value:
            yield from walk_strings(value[key])
    elif isinstance(value, Sequence):
        for element in value:
            yield from walk_strings(element)
