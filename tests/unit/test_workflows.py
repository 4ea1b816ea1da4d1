"""The GitHub workflows: they parse, pin every action to a commit, and call commands that exist.

Every `run:` step's `python -m stacks ...` and `make ...` command is run here in a
dry form: `python -m stacks <command> --help` (and each flag the step passes must
be one the command knows), `make -n <target>`. Stack names come from the job's
matrix and must have a stack file.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from stacks.stackfile import REPO

WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))
PINNED = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+(/[A-Za-z0-9_./-]+)?@[0-9a-f]{40}$")
STACKS = re.compile(r"(?:\.venv/bin/)?python3? -m stacks ([^;&|\n>]+)")
MAKE = re.compile(r"(?:^|[;&|]\s*|\s)make ([a-z][\w-]*)")


def load(path: Path) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text())
    assert isinstance(document, dict), f"{path.name} is not a mapping"
    return document


def steps(document: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(job id, job, step) for every step of every job."""
    return [(job_id, job, step) for job_id, job in document["jobs"].items() for step in job.get("steps", [])]


def test_there_are_workflows_for_prs_deploys_drift_and_locks() -> None:
    assert [p.name for p in WORKFLOWS] == ["deploy.yml", "drift.yml", "lock.yml", "pull-request.yml"]


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_parses_with_triggers_jobs_and_least_privilege(path: Path) -> None:
    document = load(path)
    # PyYAML reads the key `on` as the boolean True.
    triggers = document.get("on", document.get(True))
    assert triggers, f"{path.name}: no triggers"
    assert document.get("permissions") == {"contents": "read"}, f"{path.name}: default token must be read-only"
    for job_id, job in document["jobs"].items():
        assert job.get("runs-on"), f"{path.name}:{job_id}: no runner"
        assert isinstance(job.get("timeout-minutes"), int), f"{path.name}:{job_id}: no timeout"
        assert job.get("steps"), f"{path.name}:{job_id}: no steps"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_action_is_pinned_to_a_full_commit_sha_with_its_version(path: Path) -> None:
    text = path.read_text()
    uses = [(job_id, step["uses"]) for job_id, _, step in steps(load(path)) if "uses" in step]
    assert uses, f"{path.name}: uses no action"
    for job_id, action in uses:
        assert PINNED.fullmatch(action), f"{path.name}:{job_id}: {action} is not pinned to a 40-hex commit"
        line = next(line for line in text.splitlines() if f"uses: {action}" in line)
        assert re.search(r"# v\d+(\.\d+)*\s*$", line), f"{path.name}: {action} has no `# vX.Y.Z` comment"


@cache
def stacks_help(command: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "stacks", command, "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"`python -m stacks {command} --help` failed: {result.stderr}"
    return result.stdout


def matrix_values(job: dict[str, Any], name: str) -> list[str]:
    values = (job.get("strategy") or {}).get("matrix", {}).get(name)
    return [str(v) for v in values] if values else []


def commands(path: Path) -> list[tuple[str, dict[str, Any], str]]:
    return [(job_id, job, step["run"]) for job_id, job, step in steps(load(path)) if "run" in step]


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_stacks_command_a_step_runs_exists_with_its_flags(path: Path) -> None:
    for job_id, job, run in commands(path):
        for match in STACKS.finditer(run):
            argv = shlex.split(match[1].replace("${{ matrix.stack }}", "MATRIX_STACK"))
            command, rest = argv[0], argv[1:]
            help_text = stacks_help(command)
            for flag in (a for a in rest if a.startswith("--")):
                assert flag in help_text, f"{path.name}:{job_id}: `stacks {command}` has no {flag}"
            for arg in (a for a in rest if not a.startswith("-")):
                names = matrix_values(job, "stack") if arg == "MATRIX_STACK" else [arg]
                assert names, f"{path.name}:{job_id}: {arg} names no stack"
                for stack in names:
                    assert (REPO / f"Pulumi.{stack}.yaml").is_file(), f"{path.name}:{job_id}: no stack {stack}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_make_target_a_step_runs_exists(path: Path) -> None:
    for job_id, _, run in commands(path):
        for target in MAKE.findall(run):
            dry = subprocess.run(
                ["make", "-n", target], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
            )
            assert dry.returncode == 0, f"{path.name}:{job_id}: `make {target}`: {dry.stderr}"


def test_ci_entry_point_the_workflows_run_is_valid_bash() -> None:
    uses_ci = [p.name for p in WORKFLOWS if ".ci/run" in p.read_text()]
    assert uses_ci == ["deploy.yml", "pull-request.yml"]
    assert subprocess.run(["bash", "-n", str(REPO / ".ci" / "run")], check=False).returncode == 0


def test_pull_requests_preview_every_stack_with_the_policy_pack_and_comment() -> None:
    document = load(REPO / ".github" / "workflows" / "pull-request.yml")
    preview = document["jobs"]["preview"]
    assert matrix_values(preview, "stack") == ["dev", "prod"]
    action = next(s for s in preview["steps"] if str(s.get("uses", "")).startswith("pulumi/actions@"))
    inputs = action["with"]
    assert inputs["command"] == "preview" and inputs["comment-on-pr"] is True
    assert (REPO / inputs["policyPacks"] / "PulumiPolicy.yaml").is_file()
    plan = document["jobs"]["plan"]
    assert any("stacks plan ${{ matrix.stack }} --policies" in s.get("run", "") for s in plan["steps"])
    assert preview["env"]["PULUMI_BACKEND_URL"] == "${{ vars.PULUMI_BACKEND_URL }}"
    assert preview["env"]["PULUMI_CONFIG_PASSPHRASE"] == "${{ secrets.PULUMI_CONFIG_PASSPHRASE }}"


def test_main_deploys_dev_then_prod_behind_a_protected_environment() -> None:
    document = load(REPO / ".github" / "workflows" / "deploy.yml")
    triggers = document.get("on", document.get(True))
    assert triggers["push"]["branches"] == ["main"]
    up = document["jobs"]["up"]
    assert up["environment"] == "${{ matrix.stack }}" and matrix_values(up, "stack") == ["dev", "prod"]
    assert up["strategy"]["max-parallel"] == 1 and up["needs"] == "test"
    assert any(s.get("run") == ".venv/bin/python -m stacks up ${{ matrix.stack }}" for s in up["steps"])


def test_drift_runs_nightly_per_stack_and_reports_exit_7_as_an_issue() -> None:
    document = load(REPO / ".github" / "workflows" / "drift.yml")
    triggers = document.get("on", document.get(True))
    assert triggers["schedule"][0]["cron"]
    job = document["jobs"]["drift"]
    assert matrix_values(job, "stack") == ["dev", "prod"]
    assert job["permissions"]["issues"] == "write"
    check = next(s for s in job["steps"] if s.get("id") == "drift")
    assert "stacks drift ${{ matrix.stack }}" in check["run"] and '"$code" = 7' in check["run"]
    report = next(s for s in job["steps"] if str(s.get("uses", "")).startswith("actions/github-script@"))
    assert report["if"] == "steps.drift.outputs.code == '7'"
    assert "issues.update" in report["with"]["script"] and "issues.create" in report["with"]["script"]


def test_the_weekly_lock_opens_a_pull_request_with_the_bumped_pins() -> None:
    document = load(REPO / ".github" / "workflows" / "lock.yml")
    job = document["jobs"]["lock"]
    runs = [s.get("run", "") for s in job["steps"]]
    assert ".venv/bin/python -m stacks lock dev --update" in runs
    assert ".venv/bin/python -m stacks lock prod --update" in runs
    assert any(str(s.get("uses", "")).startswith("peter-evans/create-pull-request@") for s in job["steps"])


# -- linted as GitHub reads them ---------------------------------------------------------

EXPRESSION = re.compile(r"\$\{\{(.*?)\}\}", re.S)


def actionlint() -> str | None:
    """The actionlint the toolchain builds from Go modules (ci/versions.env: ACTIONLINT_VERSION).

    Looked for as $ACTIONLINT, in $CLUSTER_AI_TOOLCHAIN_BIN (ci/toolchain.sh's env.sh),
    on PATH, then in the toolchain cache (${CLUSTER_AI_CACHE:-/var/cache/cluster-ai}/
    toolchain/*/bin). The PyPI wrapper downloads a release at install time, which this
    machine cannot reach.
    """
    import os
    import shutil

    given = os.environ.get("ACTIONLINT")
    if given:
        return given
    toolchain = os.environ.get("CLUSTER_AI_TOOLCHAIN_BIN")
    if toolchain and (Path(toolchain) / "actionlint").is_file():
        return str(Path(toolchain) / "actionlint")
    found = shutil.which("actionlint")
    if found:
        return found
    cache = Path(os.environ.get("CLUSTER_AI_CACHE") or "/var/cache/cluster-ai") / "toolchain"
    built = sorted(cache.glob("*/bin/actionlint"), key=lambda p: p.stat().st_mtime)
    return str(built[-1]) if built else None


def require_actionlint() -> str:
    """The binary; in CI a missing one fails (CI builds the toolchain first), elsewhere the test skips."""
    import os

    binary = actionlint()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("actionlint is not built: CI must build the toolchain (ci/toolchain.sh) before the tests")
        pytest.skip("actionlint not found: `make toolchain` builds it (or set ACTIONLINT=/path/to/actionlint)")
    return binary


def test_actionlint_passes_on_every_workflow() -> None:
    """The real actionlint: expressions, contexts per key, action inputs it knows, shellcheck-free
    syntax checks of `run:` scripts, cron syntax, job dependencies."""
    binary = require_actionlint()
    version = subprocess.run([binary, "-version"], capture_output=True, text=True, timeout=30, check=False)
    assert version.returncode == 0, version.stderr
    result = subprocess.run(
        [binary, "-no-color", "-shellcheck=", "-pyflakes=", *[str(p) for p in WORKFLOWS]],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"actionlint {version.stdout.splitlines()[0]}:\n{result.stdout}{result.stderr}"


def test_actionlint_is_able_to_fail(tmp_path: Path) -> None:
    """The same binary and flags refuse a workflow with an undefined context and a bad input."""
    binary = require_actionlint()
    bad = tmp_path / ".github" / "workflows" / "bad.yml"
    bad.parent.mkdir(parents=True)
    bad.write_text("on: push\njobs:\n  a:\n    runs-on: ubuntu-24.04\n    steps:\n      - run: echo ${{ secret.X }}\n")
    result = subprocess.run(
        [binary, "-no-color", "-shellcheck=", "-pyflakes=", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1 and "undefined variable" in result.stdout, result.stdout


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_secrets_reach_scripts_only_through_env(path: Path) -> None:
    """`${{ secrets.X }}` inside `run:` pastes the value into the script; `env:` passes it safely."""
    for job_id, _, step in steps(load(path)):
        script = str(step.get("run", ""))
        pasted = [e.strip() for e in EXPRESSION.findall(script) if "secrets." in e or "secrets[" in e]
        assert pasted == [], f"{path.name}:{job_id}: step {step.get('name', script[:40])!r} pastes {pasted} into run:"
        for key, value in (step.get("with") or {}).items():
            if key == "script":  # actions/github-script evaluates it as JavaScript: same rule
                assert "secrets." not in str(value), f"{path.name}:{job_id}: secret pasted into a script"


def test_the_secret_rule_catches_a_pasted_secret() -> None:
    step = {"run": 'printf "%s" "${{ secrets.CLUSTER_SSH_KEY }}" > key'}
    assert [e.strip() for e in EXPRESSION.findall(step["run"]) if "secrets." in e] == ["secrets.CLUSTER_SSH_KEY"]


# The inputs each pinned action declares in its action.yml at the pinned commit
# (pulumi/actions v7.0.0 = 8e5e406f, actions/upload-artifact v4.6.2 = ea165f8d).
ACTION_INPUTS = {
    "pulumi/actions@8e5e406f4007fca908480587cb9893c07090f58d": {
        "always-include-summary",
        "cloud-url",
        "color",
        "command",
        "comment-on-pr",
        "comment-on-pr-number",
        "comment-on-summary",
        "config-map",
        "continue-on-error",
        "debug",
        "diff",
        "edit-pr-comment",
        "exclude",
        "exclude-dependents",
        "exclude-protected",
        "expect-no-changes",
        "github-token",
        "log-flow",
        "log-verbosity",
        "message",
        "parallel",
        "plan",
        "policyPackConfigs",
        "policyPacks",
        "pulumi-version",
        "pulumi-version-file",
        "refresh",
        "remove",
        "replace",
        "secrets-provider",
        "stack-name",
        "suppress-outputs",
        "suppress-progress",
        "target",
        "target-dependents",
        "upsert",
        "work-dir",
    },
    "actions/upload-artifact@ea165f8d65b6e75b540449e92b4886f43607fa02": {
        "compression-level",
        "if-no-files-found",
        "include-hidden-files",
        "name",
        "overwrite",
        "path",
        "retention-days",
    },
}
# pulumi/actions v7's README: `command` is up (alias update), refresh, destroy, preview or output;
# without it the action only installs the CLI; with it, `stack-name` is required.
PULUMI_COMMANDS = {"up", "update", "refresh", "destroy", "preview", "output"}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_action_inputs_are_ones_the_pinned_version_declares(path: Path) -> None:
    for job_id, _, step in steps(load(path)):
        action = str(step.get("uses", ""))
        given = set(step.get("with") or {})
        if action.split("@")[0] in {a.split("@")[0] for a in ACTION_INPUTS}:
            assert action in ACTION_INPUTS, f"{path.name}:{job_id}: {action} is not a version whose inputs we checked"
            unknown = sorted(given - ACTION_INPUTS[action])
            assert unknown == [], f"{path.name}:{job_id}: {action} has no input(s) {unknown}"
        if action.startswith("pulumi/actions@") and "command" in given:
            inputs = step["with"]
            assert inputs["command"] in PULUMI_COMMANDS, f"{path.name}:{job_id}: command {inputs['command']!r}"
            assert inputs.get("stack-name"), f"{path.name}:{job_id}: a pulumi/actions command needs stack-name"
