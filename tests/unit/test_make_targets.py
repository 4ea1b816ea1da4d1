"""`make up`/`make preview` apply the policy pack, and a failing recipe says the command's own exit code.

make itself always exits 2 when a recipe fails; the Makefile prints the command's
code and what it means (5: a mandatory policy is violated) so users and CI logs
see the real one. Exercised for real on `make policies` (the offline plan with the
pack), with a policy config that makes the dev stack violate a mandatory rule.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from stacks.stackfile import REPO

MAKE = shutil.which("make")
pytestmark = pytest.mark.skipif(MAKE is None, reason="make is not installed")


def _make(*args: str) -> subprocess.CompletedProcess[str]:
    assert MAKE is not None
    return subprocess.run(
        [MAKE, "-s", "--no-print-directory", *args], cwd=REPO, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.mark.parametrize("target", ["up", "preview"])
def test_up_and_preview_apply_the_policy_pack(target: str) -> None:
    recipe = subprocess.run(
        [str(MAKE), "-n", target, "STACK=dev"], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    ).stdout
    line = next(line for line in recipe.splitlines() if f"-m stacks {target} " in line)
    # `python -m stacks up|preview` applies the pack unless told --no-policies.
    assert "--no-policies" not in line, line
    assert "the command exited" in line, "a failure must print the command's own exit code"


def test_the_stacks_commands_apply_the_repositorys_pack_or_its_analyzer_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import yaml

    from stacks.automation import policy_packs

    monkeypatch.delenv("CLUSTER_AI_POLICY_RUNTIME", raising=False)
    assert policy_packs(REPO) == [str(REPO / "policies")]
    assert policy_packs(REPO, enabled=False) == []
    # The offline toolchain's env.sh: the checkout's own pack, copied under the runtime
    # name the CLI's analyzer path starts (docs/engine.md).
    root = tmp_path / "checkout"
    (root / "policies").mkdir(parents=True)
    for item in (REPO / "policies").iterdir():
        if item.name != "__pycache__":
            (root / "policies" / item.name).symlink_to(item)
    monkeypatch.setenv("CLUSTER_AI_POLICY_RUNTIME", "python-analyzer")
    [pack] = policy_packs(root)
    assert pack == str(root / ".pulumi-policy-pack"), "the copy belongs to the checkout it is made for"
    manifest = yaml.safe_load((Path(pack) / "PulumiPolicy.yaml").read_text())
    assert manifest["runtime"] == {"name": "python-analyzer", "options": {"virtualenv": str(root / ".venv")}}
    shipped = {p.name for p in (REPO / "policies").iterdir() if p.name not in ("__pycache__", "PulumiPolicy.yaml")}
    assert {p.name for p in Path(pack).iterdir()} == shipped | {"PulumiPolicy.yaml"}
    assert policy_packs(root) == [pack], "made afresh on every run, at the same place"
    assert policy_packs(tmp_path) == [], "no pack in the root: nothing to copy"


def test_a_mandatory_policy_violation_is_reported_as_exit_5(tmp_path: Path) -> None:
    config = tmp_path / "policy.json"
    config.write_text(json.dumps({"images-pinned-by-digest-in-prod": {"strictStacks": ["prod", "dev"]}}))
    result = _make("policies", "STACK=dev", f"ARGS=--policy-config {config}")
    assert result.returncode == 2, "make exits 2 on any failing recipe"
    assert "make policies: the command exited 5 (a mandatory policy is violated)" in result.stderr, result.stderr


def test_a_passing_policy_run_prints_no_exit_note() -> None:
    result = _make("policies", "STACK=dev")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "the command exited" not in result.stderr
