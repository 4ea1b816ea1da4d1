"""The policy pack over a stack's graph, offline: what `python -m stacks plan STACK --policies` prints.

`subjects` turns an evaluation of the program (stacks.mocks) into what the
engine shows a policy: secrets unwrapped, unknown values as the engine's
sentinel strings. `evaluate_preview` evaluates a stack the way `pulumi preview`
sees it - a resource's outputs are unknown unless they echo its inputs - so the
rules can be run against the unknowns a real preview has.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pulumi
from pulumi.output import Unknown

from policies.harness import Outcome, PolicyConfig, Report, Subject, run
from policies.model import UNKNOWN
from stacks.mocks import Evaluation, Secret, evaluate_program
from stacks.plan import run_program
from stacks.stackfile import REPO, read_stack_config


def engine_value(value: Any) -> Any:
    """An input as the engine hands it to a policy: secrets in plain text, unknowns as sentinels."""
    if isinstance(value, Secret):
        return engine_value(value.value)
    if isinstance(value, Unknown):
        return UNKNOWN
    if isinstance(value, Mapping):
        return {k: engine_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [engine_value(v) for v in value]
    return value


def subjects(evaluation: Evaluation) -> list[Subject]:
    """Every registered resource, as policies see it."""
    return [
        Subject(
            urn=r.urn,
            type=r.type,
            name=r.name,
            props=engine_value(r.inputs),
            protect=r.protect,
            delete_before_replace=r.delete_before_replace or None,
            ignore_changes=r.ignore_changes,
            additional_secret_outputs=r.additional_secret_outputs,
            parent=r.parent,
            provider=r.provider_urn,
            dependencies=r.dependencies,
            property_dependencies=r.property_dependencies,
        )
        for r in evaluation.resources
    ]


@contextmanager
def _collector_for_bulk_work() -> Iterator[None]:
    """Checking allocates a proxy tree per resource while the whole graph stays
    alive: without this, the cyclic GC walks that graph over and over (the same
    reason infra/program.py tunes it while registering). Put back afterwards."""
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(50_000, 50, 1_000)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def check(evaluation: Evaluation, config: PolicyConfig | None = None) -> Report:
    """Every rule of the pack over the evaluated graph."""
    with _collector_for_bulk_work():
        return run(subjects(evaluation), config=config)


class PreviewMocks(pulumi.runtime.Mocks):
    """What a preview knows of a resource being created: its inputs, nothing the provider computes."""

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
        return "", dict(args.inputs)

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        raise NotImplementedError(f"unexpected invoke {args.token}")


def evaluate_preview(stack: str, *, overrides: Mapping[str, str] | None = None, root: Path = REPO) -> Evaluation:
    """The program for `Pulumi.<stack>.yaml` as a first `pulumi preview` sees it (ids, image ids,
    generated names and passwords all unknown)."""
    stack_config = read_stack_config(stack, root)
    return evaluate_program(
        run_program,
        project=stack_config.project,
        stack=stack,
        config={**stack_config.config, **(overrides or {})},
        secret_keys=sorted(stack_config.secret_keys),
        preview=True,
        mocks=PreviewMocks(),
    )


_MARK = {
    Outcome.PASSED: "PASS",
    Outcome.FAILED: "FAIL",
    Outcome.WARNED: "WARN",
    Outcome.NOT_APPLICABLE: "N/A ",
    Outcome.DISABLED: "OFF ",
}


def render_text(report: Report) -> str:
    """Every rule's verdict, then each violation with its resource, rule and remediation."""
    lines = [f"policies: {len(report.verdicts)} rules"]
    for verdict in report.verdicts:
        rule = verdict.rule
        cis = f"CIS {rule.cis}" if rule.cis else "cluster"
        detail = f"{len(verdict.violations)} violation(s)" if verdict.violations else f"{verdict.checked} checked"
        lines.append(f"  {_MARK[verdict.outcome]}  {rule.name}  [{cis}, {verdict.enforcement.value}]  {detail}")
    if report.violations:
        lines.append("violations:")
        for v in report.violations:
            lines += [
                f"  - {v.rule} ({v.enforcement.value}, {v.severity.value}) on {v.resource}",
                f"      {v.message}",
                f"      remediation: {v.remediation}",
            ]
            if v.urn:
                lines.append(f"      urn: {v.urn}")
    if report.notes:
        lines.append("not checked (unknown during preview):")
        lines += [f"  - {n.rule} on {n.urn.rsplit('::', 1)[-1]}: {n.message}" for n in report.notes]
    failed = [v.rule.name for v in report.verdicts if v.outcome is Outcome.FAILED]
    lines.append(f"mandatory policies violated: {', '.join(failed)}" if failed else "no mandatory policy is violated")
    return "\n".join(lines)


def render_json(report: Report) -> dict[str, Any]:
    return {
        "mandatoryViolated": report.mandatory_failed,
        "verdicts": [
            {
                "rule": v.rule.name,
                "cis": v.rule.cis,
                "enforcement": v.enforcement.value,
                "severity": v.rule.severity.value,
                "outcome": v.outcome.value,
                "checked": v.checked,
                "violations": [
                    {"urn": x.urn, "resource": x.resource, "message": x.message, "remediation": x.remediation}
                    for x in v.violations
                ],
                "notes": [{"urn": n.urn, "message": n.message} for n in v.notes],
            }
            for v in report.verdicts
        ],
    }


def dumps(report: Report) -> str:
    return json.dumps(render_json(report), indent=2)
