"""`python -m stacks plan STACK --policies`: every verdict, violations with resource/rule/remediation, exit 5."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stacks.__main__ import main


def test_plan_with_policies_passes_dev(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "dev", "--policies"]) == 0
    out = capsys.readouterr().out
    assert "stack dev (project cluster-ai)" in out
    assert "PASS  no-privileged-containers  [CIS 5.5, mandatory]" in out
    assert "N/A   dask-on-tls-in-prod" in out
    assert out.rstrip().endswith("no mandatory policy is violated")


def test_plan_exits_5_and_lists_each_violation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "policy-config.json"
    config.write_text(json.dumps({"containers-run-as-non-root": {"exemptions": {}}}))
    assert main(["plan", "dev", "--policies", "--policy-config", str(config)]) == 5
    out = capsys.readouterr().out
    # webui and ollama (the image's root), cadvisor and alloy (root-owned host files).
    assert "FAIL  containers-run-as-non-root  [CIS 4.1, mandatory]  4 violation(s)" in out
    assert "- containers-run-as-non-root (mandatory, medium) on webui" in out
    assert "remediation: Set `user` to the uid:gid" in out
    assert "urn: urn:pulumi:dev::cluster-ai::cluster-ai:index:OpenWebUI$docker:index/container:Container::webui" in out
    assert "mandatory policies violated: containers-run-as-non-root" in out


def test_an_advisory_violation_does_not_fail_the_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "policy-config.json"
    config.write_text(json.dumps({"containers-run-as-non-root": {"enforcementLevel": "advisory", "exemptions": {}}}))
    assert main(["plan", "dev", "--policies", "--policy-config", str(config)]) == 0
    assert "WARN  containers-run-as-non-root" in capsys.readouterr().out


def test_plan_json_carries_the_verdicts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "dev", "--policies", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["stack"] == "dev"
    verdicts = {v["rule"]: v for v in document["policies"]["verdicts"]}
    assert document["policies"]["mandatoryViolated"] is False
    assert verdicts["no-privileged-containers"]["outcome"] == "passed"
    assert verdicts["no-privileged-containers"]["cis"] == "5.5"


def test_a_bad_policy_config_is_a_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "policy-config.json"
    config.write_text(json.dumps({"no-such-rule": "mandatory"}))
    assert main(["plan", "dev", "--policies", "--policy-config", str(config)]) == 2
    assert "no rule named 'no-such-rule'" in capsys.readouterr().err


def test_plan_without_policies_is_unchanged(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "dev"]) == 0
    assert "policies:" not in capsys.readouterr().out
