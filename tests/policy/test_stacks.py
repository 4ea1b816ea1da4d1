"""Every shipped stack's graph passes every mandatory rule, on `up` and during preview (unknowns)."""

from __future__ import annotations

import json
import os
import re
from dataclasses import replace

import pytest

from policies.harness import Outcome, Report, run
from policies.model import UNKNOWN
from stacks.plan import evaluate_stack
from stacks.policy_check import check, evaluate_preview, subjects
from stacks.stackfile import REPO
from tests.policy.fixtures import broken, dev_stack

SHIPPED = sorted(p.name.removeprefix("Pulumi.").removesuffix(".yaml") for p in REPO.glob("Pulumi.*.yaml"))
PROD_RULES = (
    "images-pinned-by-digest-in-prod",
    "models-pinned-by-digest-in-prod",
    "data-volumes-protected-in-prod",
    "dask-on-tls-in-prod",
    "encrypted-transport-in-prod",
)
# What a first preview cannot know and these rules therefore check on `up`: the
# commands' lines embed a generated network or container name.
UNKNOWN_AT_PREVIEW = {"images-pinned", "images-pinned-by-digest-in-prod", "models-pinned-by-digest-in-prod"}
COMMANDS = ("command:local:Command", "command:remote:Command")


def _violations(report: Report) -> list[str]:
    return [f"{v.rule} on {v.urn}: {v.message}" for v in report.violations]


def stack_files_on_disk() -> list[str]:
    """Stack names from the repository's directory listing, read independently of SHIPPED's glob."""
    names = (re.fullmatch(r"Pulumi\.(.+)\.yaml", entry.name) for entry in os.scandir(REPO) if entry.is_file())
    return sorted(m[1] for m in names if m)


def test_the_shipped_stacks_are_found() -> None:
    assert {"dev", "prod"} <= set(SHIPPED), SHIPPED
    assert SHIPPED == stack_files_on_disk(), "SHIPPED misses or invents stack files"
    for stack in SHIPPED:
        assert stack and "/" not in stack and not stack.startswith("Pulumi") and not stack.endswith(".yaml"), stack


@pytest.mark.parametrize("stack", SHIPPED)
def test_shipped_stack_passes_every_policy(stack: str) -> None:
    report = check(evaluate_stack(stack))
    assert _violations(report) == []
    assert report.notes == []
    failed = [v.rule.name for v in report.verdicts if v.outcome in (Outcome.FAILED, Outcome.WARNED)]
    assert failed == []


@pytest.mark.parametrize("stack", SHIPPED)
def test_shipped_stack_passes_during_preview_with_unknowns(stack: str) -> None:
    evaluation = evaluate_preview(stack)
    props = json.dumps([s.props for s in subjects(evaluation)], default=str)
    assert UNKNOWN in props, "a first preview has unknown inputs (image ids, generated names)"
    report = check(evaluation)
    assert _violations(report) == []
    by_type = {s.urn: s.type for s in subjects(evaluation)}
    skipped = sorted({(n.rule, by_type[n.urn]) for n in report.notes})
    unexpected = [(r, t) for r, t in skipped if r not in UNKNOWN_AT_PREVIEW or t not in COMMANDS]
    assert unexpected == [], f"rules that could not run on resources other than commands: {unexpected}"


def test_prod_is_checked_with_its_stricter_rules() -> None:
    if "prod" not in SHIPPED:
        pytest.skip("no Pulumi.prod.yaml yet")
    report = check(evaluate_stack("prod"))
    for name in PROD_RULES:
        verdict = report.verdict(name)
        assert verdict.outcome is Outcome.PASSED and verdict.checked > 0, f"{name}: {verdict.outcome}"


def test_dev_is_not_held_to_the_prod_rules() -> None:
    report = check(evaluate_stack("dev"))
    for name in PROD_RULES:
        assert report.verdict(name).outcome is Outcome.NOT_APPLICABLE, name


def test_prod_graph_with_an_unpinned_model_fails_the_model_rule() -> None:
    if "prod" not in SHIPPED:
        pytest.skip("no Pulumi.prod.yaml yet")
    evaluation = evaluate_stack("prod")
    # The config refuses an unpinned model in prod, so the graph is edited as a
    # hand-written program could build it: one sync task whose pin is no digest.
    edited = []
    for subject in subjects(evaluation):
        if subject.name.endswith("-model-sync"):
            command = [str(w).replace('"digest": "', '"digest": "x') for w in subject.props["command"]]
            subject = replace(subject, props={**subject.props, "command": command})
        edited.append(subject)
    report = run(edited)
    assert report.fired() == {"models-pinned-by-digest-in-prod"}
    assert report.mandatory_failed


def test_a_rule_that_needs_an_unknown_value_notes_it_instead_of_failing() -> None:
    fixtures = dev_stack()
    subjects_ = broken(fixtures, "scheduler", lambda p: p.update(privileged=UNKNOWN))
    report = run(subjects_)
    assert report.violations == []
    notes = [(n.rule, n.urn) for n in report.notes]
    assert notes == [("no-privileged-containers", fixtures["scheduler"].urn)]
    assert (
        report.notes[0].message == "can't run during preview: string value at .privileged can't be known during preview"
    )


def test_container_rules_read_no_input_a_preview_leaves_unknown() -> None:
    # An image id, network and volume names are unknown in a first preview.
    fixtures = dev_stack()

    def unknowns(props: dict[str, object]) -> None:
        props["image"] = UNKNOWN
        props["networksAdvanced"] = [{"name": UNKNOWN, "aliases": ["scheduler"]}]
        props["mounts"] = [{"type": "volume", "source": UNKNOWN, "target": "/run/secrets", "readOnly": False}]

    report = run(broken(fixtures, "scheduler", unknowns))
    assert report.violations == []
    assert report.notes == []


def test_shipped_stack_files_are_what_the_tests_iterate() -> None:
    """Every per-stack test runs over every stack file on disk: a new stack is picked up
    without registering it, and none is silently left out."""
    on_disk = stack_files_on_disk()
    per_stack = [
        (function.__name__, list(mark.args[1]))
        for function in (test_shipped_stack_passes_every_policy, test_shipped_stack_passes_during_preview_with_unknowns)
        for mark in getattr(function, "pytestmark", [])
        if mark.name == "parametrize" and mark.args[0] == "stack"
    ]
    assert len(per_stack) == 2, per_stack
    for name, stacks in per_stack:
        assert sorted(stacks) == on_disk, f"{name} runs over {stacks}, the repository has {on_disk}"
