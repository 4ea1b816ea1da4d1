"""The pack as the Pulumi CLI gets it: every rule documented, and `policies/` served by the real analyzer."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml
from google.protobuf import empty_pb2, json_format, struct_pb2
from pulumi.runtime.proto import analyzer_pb2, analyzer_pb2_grpc
from pulumi_policy import EnforcementLevel

from policies.cis import NOT_EXPRESSIBLE
from policies.model import Group, Kind
from policies.pack import all_rules
from stacks.stackfile import REPO

PACK = REPO / "policies"
RULES = all_rules()


@pytest.mark.parametrize("rule", RULES, ids=[r.name for r in RULES])
def test_every_rule_is_documented_and_explicit(rule: object) -> None:
    from policies.model import Rule

    assert isinstance(rule, Rule)
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)+", rule.name), f"{rule.name}: kebab-case"
    # One sentence: it ends with a period and has none inside.
    assert rule.description.endswith(".") and ". " not in rule.description, rule.name
    assert len(rule.remediation) > 20, rule.name
    assert rule.enforcement in (EnforcementLevel.MANDATORY, EnforcementLevel.ADVISORY), rule.name
    if rule.group is Group.CIS:
        assert rule.cis is not None and re.fullmatch(r"[245]\.\d+", rule.cis), rule.name
    if rule.kind is Kind.RESOURCE:
        assert rule.resource_types, f"{rule.name}: say which resource types it looks at"
    for key, schema in rule.config.items():
        assert "default" in schema and "description" in schema, f"{rule.name}.{key}"


def test_rule_count_and_cis_coverage() -> None:
    cis = [r for r in RULES if r.group is Group.CIS]
    assert len(cis) >= 25
    section5 = {r.cis for r in cis if r.cis and r.cis.startswith("5.")}
    listed = {part.strip() for key in NOT_EXPRESSIBLE for part in key.split(",") if part.strip().startswith("5.")}
    accounted = section5 | listed | {"5.23", "5.24"}
    assert {f"5.{i}" for i in range(1, 33)} <= accounted, "every CIS section 5 recommendation is a rule or says why not"


def test_pulumi_policy_yaml_runs_python_in_the_project_venv() -> None:
    document = yaml.safe_load((PACK / "PulumiPolicy.yaml").read_text())
    assert document["runtime"]["name"] == "python"
    assert (PACK / document["runtime"]["options"]["virtualenv"]).resolve() == (REPO / ".venv").resolve()
    requirements = (PACK / "requirements.txt").read_text()
    assert "pulumi-policy>=" in requirements


@pytest.fixture(scope="module")
def analyzer() -> Iterator[analyzer_pb2_grpc.AnalyzerStub]:
    """`policies/` served exactly as the CLI's Python analyzer host runs it (in a process of its own)."""
    process = subprocess.Popen(
        [sys.executable, "-u", "-m", "pulumi.policy", "127.0.0.1:0", str(PACK)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path("/"),
    )
    try:
        assert process.stdout is not None
        port = process.stdout.readline().strip()
        assert port.isdigit(), f"the pack did not start: {process.stderr.read() if process.stderr else ''}"
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=30)
        yield analyzer_pb2_grpc.AnalyzerStub(channel)
        channel.close()
    finally:
        process.kill()
        process.wait(timeout=30)


def test_the_served_pack_lists_every_rule_with_its_metadata(analyzer: analyzer_pb2_grpc.AnalyzerStub) -> None:
    info = analyzer.GetAnalyzerInfo(empty_pb2.Empty())
    assert info.name == "cluster-ai"
    served = {p.name: p for p in info.policies}
    assert sorted(served) == sorted(r.name for r in RULES)
    for rule in RULES:
        policy = served[rule.name]
        assert policy.description == rule.description
        assert policy.remediation_steps == rule.remediation
        if rule.cis:
            assert policy.framework.reference == rule.cis
    assert "containers-run-as-non-root" in info.initialConfig


def test_the_served_pack_refuses_a_privileged_container(analyzer: analyzer_pb2_grpc.AnalyzerStub) -> None:
    props = struct_pb2.Struct()
    json_format.ParseDict(
        {
            "privileged": True,
            "labels": [{"label": "cluster-ai.service", "value": "rogue"}],
            "securityOpts": ["no-new-privileges:true"],
        },
        props,
    )
    urn = "urn:pulumi:dev::cluster-ai::docker:index/container:Container::rogue"
    response = analyzer.Analyze(
        analyzer_pb2.AnalyzeRequest(type="docker:index/container:Container", properties=props, urn=urn, name="rogue")
    )
    by_policy = {d.policyName: d for d in response.diagnostics}
    assert "no-privileged-containers" in by_policy
    assert "rogue (rogue) runs privileged" in by_policy["no-privileged-containers"].message
    assert by_policy["no-privileged-containers"].enforcementLevel == analyzer_pb2.MANDATORY
    assert "no-new-privileges" not in by_policy


def test_the_served_pack_notes_an_unknown_instead_of_failing(analyzer: analyzer_pb2_grpc.AnalyzerStub) -> None:
    props = struct_pb2.Struct()
    unknown = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"
    json_format.ParseDict({"host": unknown}, props)
    urn = "urn:pulumi:dev::cluster-ai::pulumi:providers:docker::h"
    response = analyzer.Analyze(
        analyzer_pb2.AnalyzeRequest(type="pulumi:providers:docker", properties=props, urn=urn, name="h")
    )
    messages = {d.policyName: d for d in response.diagnostics}
    assert "can't run policy 'docker-daemon-tls'" in messages["docker-daemon-tls"].message
    assert messages["docker-daemon-tls"].enforcementLevel == analyzer_pb2.ADVISORY


def test_rules_never_write_to_the_props_they_share() -> None:
    """The harness builds each resource's props once and hands them to every rule
    (policies/harness.py `_Prepared`): that is only sound while no rule writes."""
    import copy
    from collections.abc import Mapping, Sequence

    from policies import harness
    from stacks.plan import evaluate_stack
    from stacks.policy_check import subjects

    def snapshot(value: object) -> object:
        # pulumi_policy's proxies are Mapping/Sequence look-alikes: copy them into plain data.
        if isinstance(value, Mapping):
            return {k: snapshot(v) for k, v in value.items()}
        if isinstance(value, str):
            return value
        if isinstance(value, Sequence) or (hasattr(value, "__len__") and hasattr(value, "__getitem__")):
            return [snapshot(value[i]) for i in range(len(value))]  # type: ignore[arg-type,index]
        return copy.deepcopy(value)

    for stack in ("dev", "prod"):
        subs = subjects(evaluate_stack(stack))
        prepared = harness._Prepared({s.urn: s for s in subs})
        before = {s.urn: snapshot(prepared.resource(s)[0]) for s in subs}
        for rule in all_rules():
            harness.run(subs, rules=[rule])
        original_run = harness._Prepared
        try:
            harness._Prepared = lambda by_urn, shared=prepared: shared  # type: ignore[assignment,misc]
            harness.run(subs)
        finally:
            harness._Prepared = original_run  # type: ignore[misc]
        after = {s.urn: snapshot(prepared.resource(s)[0]) for s in subs}
        changed = [urn for urn in before if before[urn] != after[urn]]
        assert changed == [], f"{stack}: rules changed the props of {changed}"
