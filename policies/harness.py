"""Run the pack's rules offline, the way the Pulumi engine runs them.

The engine hands a resource policy one resource at a time: its type, URN, name,
inputs (camelCase, numbers as floats, secrets as plain text, unknowns during
preview as sentinel strings behind a proxy that raises `UnknownValueError` when
one is read), its options (`protect`, ...; never `retainOnDelete`) and its
provider's inputs. A stack policy gets every resource at once, with parents and
dependencies linked. A policy that reads an unknown value is not failed: the
engine reports that it "can't run during preview", as an advisory note.

`run` does exactly that with the pulumi_policy SDK's own argument classes and
proxy, so a rule sees here what it sees under `pulumi preview --policy-pack`.
`PolicyConfig` reads the same JSON a user passes to `--policy-pack-config`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    PolicyCustomTimeouts,
    PolicyProviderResource,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    Severity,
    StackValidationArgs,
)
from pulumi_policy.policy import _NotApplicableError
from pulumi_policy.proxy import UnknownValueError, unknown_checking_proxy

from policies.exceptions import PACK_CONFIG
from policies.model import Kind, Rule
from policies.pack import all_rules


@dataclass(frozen=True)
class Subject:
    """One resource as the engine shows it to policies."""

    urn: str
    type: str
    name: str
    props: Mapping[str, Any]
    """Inputs: plain values (secrets unwrapped), unknowns as the engine's sentinel strings."""
    protect: bool = False
    delete_before_replace: bool | None = None
    ignore_changes: tuple[str, ...] = ()
    additional_secret_outputs: tuple[str, ...] = ()
    parent: str | None = None
    provider: str | None = None
    """The provider resource's URN."""
    dependencies: tuple[str, ...] = ()
    property_dependencies: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


class Outcome(StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    """A mandatory rule was violated."""
    WARNED = "warned"
    """An advisory rule was violated."""
    NOT_APPLICABLE = "not applicable"
    DISABLED = "disabled"


@dataclass(frozen=True)
class Violation:
    rule: str
    enforcement: EnforcementLevel
    severity: Severity
    urn: str | None
    message: str
    remediation: str

    @property
    def resource(self) -> str:
        return self.urn.rsplit("::", 1)[-1] if self.urn else "(stack)"


@dataclass(frozen=True)
class Note:
    """A rule that could not run on a resource (an unknown value during preview)."""

    rule: str
    urn: str
    message: str


@dataclass(frozen=True)
class Verdict:
    rule: Rule
    enforcement: EnforcementLevel
    outcome: Outcome
    checked: int
    """How many resources (or stacks) the rule ran on to a verdict."""
    violations: tuple[Violation, ...]
    notes: tuple[Note, ...]


@dataclass(frozen=True)
class Report:
    verdicts: tuple[Verdict, ...]

    @property
    def violations(self) -> list[Violation]:
        return [v for verdict in self.verdicts for v in verdict.violations]

    @property
    def notes(self) -> list[Note]:
        return [n for verdict in self.verdicts for n in verdict.notes]

    @property
    def mandatory_failed(self) -> bool:
        return any(v.outcome is Outcome.FAILED for v in self.verdicts)

    def verdict(self, rule: str) -> Verdict:
        for verdict in self.verdicts:
            if verdict.rule.name == rule:
                return verdict
        raise KeyError(rule)

    def fired(self) -> set[str]:
        """Names of the rules that reported a violation."""
        return {v.rule for v in self.violations}


# --- config ------------------------------------------------------------------


class PolicyConfigError(ValueError):
    """The policy config file is not what `--policy-pack-config` accepts."""


@dataclass(frozen=True)
class PolicyConfig:
    """A `--policy-pack-config` document: `{"all": level, "<rule>": level | {enforcementLevel, ...}}`."""

    levels: Mapping[str, EnforcementLevel] = field(default_factory=dict)
    properties: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    all_level: EnforcementLevel | None = None

    @classmethod
    def parse(cls, document: Mapping[str, Any], rules: Iterable[Rule] | None = None) -> PolicyConfig:
        known = {r.name for r in (rules if rules is not None else all_rules())}
        levels: dict[str, EnforcementLevel] = {}
        properties: dict[str, dict[str, Any]] = {}
        all_level = None
        for name, value in document.items():
            if name == "all":
                all_level = _level(value if isinstance(value, str) else value.get("enforcementLevel"), name)
                continue
            if name not in known:
                raise PolicyConfigError(f"policy config: no rule named {name!r}")
            if isinstance(value, str):
                levels[name] = _level(value, name)
            elif isinstance(value, Mapping):
                if "enforcementLevel" in value:
                    levels[name] = _level(value["enforcementLevel"], name)
                properties[name] = {k: v for k, v in value.items() if k != "enforcementLevel"}
            else:
                raise PolicyConfigError(f"policy config: {name!r} must be a level or an object")
        return cls(levels, properties, all_level)

    @classmethod
    def load(cls, path: Path) -> PolicyConfig:
        try:
            document = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise PolicyConfigError(f"policy config {path}: {exc}") from None
        if not isinstance(document, Mapping):
            raise PolicyConfigError(f"policy config {path}: must be a JSON object")
        return cls.parse(document)

    def level(self, rule: Rule) -> EnforcementLevel:
        if rule.name in self.levels:
            return self.levels[rule.name]
        return self.all_level if self.all_level is not None else rule.enforcement

    def config_for(self, rule: Rule) -> dict[str, Any]:
        """What the engine passes the rule: the pack's initial config, then the user's keys."""
        return {**PACK_CONFIG.get(rule.name, {}), **self.properties.get(rule.name, {})}


def _level(value: Any, name: str) -> EnforcementLevel:
    try:
        return EnforcementLevel(value)
    except ValueError:
        choices = ", ".join(level.value for level in EnforcementLevel)
        raise PolicyConfigError(
            f"policy config: {name!r} has enforcement level {value!r}, not one of {choices}"
        ) from None


# --- running -----------------------------------------------------------------


def _plain(value: Any) -> Any:
    """A fresh plain tree (the proxy wraps dicts and lists; rules must not share them)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _options(subject: Subject) -> PolicyResourceOptions:
    return PolicyResourceOptions(
        protect=subject.protect,
        ignore_changes=list(subject.ignore_changes),
        delete_before_replace=subject.delete_before_replace,
        aliases=[],
        custom_timeouts=PolicyCustomTimeouts(0, 0, 0),
        additional_secret_outputs=list(subject.additional_secret_outputs),
        parent=subject.parent,
    )


def _provider(subject: Subject, by_urn: Mapping[str, Subject]) -> PolicyProviderResource | None:
    provider = by_urn.get(subject.provider or "")
    if provider is None:
        return None
    return PolicyProviderResource(
        provider.type, unknown_checking_proxy(_plain(provider.props)), provider.urn, provider.name
    )


def _stack_resources(subjects: Sequence[Subject], prepared: _Prepared) -> list[PolicyResource]:
    resources = {}
    for s in subjects:
        props, options, provider = prepared.resource(s)
        resources[s.urn] = PolicyResource(s.type, props, s.urn, s.name, options, provider, None, [], {})
    for s in subjects:
        resource = resources[s.urn]
        resource.parent = resources.get(s.parent or "")
        resource.dependencies = [resources[d] for d in s.dependencies if d in resources]
        resource.property_dependencies = {
            k: [resources[d] for d in v if d in resources] for k, v in s.property_dependencies.items()
        }
    return list(resources.values())


def run(
    subjects: Sequence[Subject],
    *,
    config: PolicyConfig | None = None,
    rules: Sequence[Rule] | None = None,
) -> Report:
    """Every rule over `subjects`: resource rules per resource, stack rules over them all."""
    config = config or PolicyConfig()
    by_urn = {s.urn: s for s in subjects}
    prepared = _Prepared(by_urn)
    by_type: dict[str, list[Subject]] = {}
    for subject in subjects:
        by_type.setdefault(subject.type, []).append(subject)
    verdicts = []
    for rule in rules if rules is not None else all_rules():
        level = config.level(rule)
        if level is EnforcementLevel.DISABLED:
            verdicts.append(Verdict(rule, level, Outcome.DISABLED, 0, (), ()))
            continue
        if level is EnforcementLevel.REMEDIATE:
            # A violation that survives remediation is reported as mandatory.
            level = EnforcementLevel.MANDATORY
        violations: list[Violation] = []
        notes: list[Note] = []
        checked = 0
        rule_config = config.config_for(rule)
        if rule.kind is Kind.STACK:
            args = StackValidationArgs(_stack_resources(subjects, prepared), rule_config)
            checked += _call(rule, args, _Reporter(rule, level, None, violations), notes, "")
        else:
            candidates = (
                [s for kind in rule.resource_types for s in by_type.get(kind, ())] if rule.resource_types else subjects
            )
            for subject in candidates:
                props, options, provider = prepared.resource(subject)
                resource_args = ResourceValidationArgs(
                    subject.type, props, subject.urn, subject.name, options, provider, rule_config
                )
                checked += _call(
                    rule, resource_args, _Reporter(rule, level, subject.urn, violations), notes, subject.urn
                )
        if violations:
            outcome = Outcome.FAILED if level is EnforcementLevel.MANDATORY else Outcome.WARNED
        elif checked:
            outcome = Outcome.PASSED
        else:
            outcome = Outcome.NOT_APPLICABLE
        verdicts.append(Verdict(rule, level, outcome, checked, tuple(violations), tuple(notes)))
    return Report(tuple(verdicts))


class _Prepared:
    """Each resource's props proxy, options and provider, built once per run.

    Building them is most of a check's cost (a deep copy behind pulumi_policy's
    unknown-checking proxy); every rule of the pack reads them and none writes
    (tests/policy/test_pack.py checks that), so the rules share one per resource.
    """

    def __init__(self, by_urn: Mapping[str, Subject]) -> None:
        self._by_urn = by_urn
        self._cache: dict[str, tuple[Any, PolicyResourceOptions, PolicyProviderResource | None]] = {}
        self._providers: dict[str, PolicyProviderResource | None] = {}

    def provider(self, subject: Subject) -> PolicyProviderResource | None:
        """One provider object per provider: a host's resources all share theirs."""
        key = subject.provider or ""
        if key not in self._providers:
            self._providers[key] = _provider(subject, self._by_urn)
        return self._providers[key]

    def resource(self, subject: Subject) -> tuple[Any, PolicyResourceOptions, PolicyProviderResource | None]:
        prepared = self._cache.get(subject.urn)
        if prepared is None:
            # The proxy builds its own tree of dicts and lists: a prior deep copy
            # would be a second one. Subjects hold plain data (stacks/policy_check.py).
            props = subject.props if type(subject.props) is dict else _plain(subject.props)
            prepared = (
                unknown_checking_proxy(props),
                _options(subject),
                self.provider(subject),
            )
            self._cache[subject.urn] = prepared
        return prepared


@dataclass(frozen=True)
class _Reporter:
    """The `report_violation` a validation gets: the resource's URN unless the rule names another."""

    rule: Rule
    level: EnforcementLevel
    urn: str | None
    violations: list[Violation]

    def __call__(self, message: str, urn: str | None = None) -> None:
        rule = self.rule
        self.violations.append(
            Violation(rule.name, self.level, rule.severity, urn or self.urn, message, rule.remediation)
        )


def _call(
    rule: Rule,
    args: ResourceValidationArgs | StackValidationArgs,
    report: _Reporter,
    notes: list[Note],
    urn: str,
) -> int:
    """Run one validation; 1 when it reached a verdict, 0 when it could not apply or run."""
    try:
        rule.validate(args, report)  # type: ignore[arg-type]
    except UnknownValueError as exc:
        notes.append(Note(rule.name, urn, f"can't run during preview: {exc.message}"))
        return 0
    except _NotApplicableError:
        return 0
    return 1
