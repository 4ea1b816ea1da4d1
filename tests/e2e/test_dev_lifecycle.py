"""`python -m stacks up | drift | destroy` of the dev stack, for real.

Needs the Pulumi CLI and its plugins, a Docker engine that can pull the dev
images, and a network: users' machines and the GitHub runners have them. Where
the CLI is absent the tier is skipped, saying so (the only tier that may skip).
The stack runs against a throwaway local backend in a temporary directory, under
a unique stack name, and is destroyed at the end whatever happened.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from stacks.stackfile import REPO

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        shutil.which("pulumi") is None, reason="needs the Pulumi CLI and its plugins (not installed here)"
    ),
]

TIMEOUT_S = 1800


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, dict[str, str]]]:
    """A copy of the repository's stack files beside the real program, and a fresh backend."""
    root = tmp_path_factory.mktemp("e2e")
    stack = f"e2e{uuid.uuid4().hex[:8]}"
    for name in ("Pulumi.yaml", "Pulumi.dev.yaml"):
        shutil.copy(REPO / name, root / name)
    (root / f"Pulumi.{stack}.yaml").write_text((REPO / "Pulumi.dev.yaml").read_text())
    # The program and its packages: Pulumi.yaml's `main: infra/` resolves against the root.
    for package in ("infra", "components", "policies"):
        (root / package).symlink_to(REPO / package)
    (root / ".venv").symlink_to(REPO / ".venv")
    state = root / ".pulumi-state"
    state.mkdir(mode=0o700)
    (state / "passphrase").write_text(secrets.token_urlsafe(24))
    env = {"PULUMI_BACKEND_URL": f"file://{state}", "PULUMI_CONFIG_PASSPHRASE_FILE": str(state / "passphrase")}
    yield root, stack, env
    run(root, env, "destroy", stack)


def run(root: Path, env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "stacks", *argv, "--root", str(root)],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )


def test_up_drift_and_destroy_of_the_dev_stack(workspace: tuple[Path, str, dict[str, str]]) -> None:
    import docker

    root, stack, env = workspace
    up = run(root, env, "up", stack)
    assert up.returncode == 0, up.stdout[-4000:] + up.stderr[-4000:]

    clean = run(root, env, "drift", stack)
    assert clean.returncode == 0, clean.stderr[-4000:]
    assert json.loads(clean.stdout)["drifted"] is False

    client = docker.from_env()
    (redis,) = client.containers.list(
        all=True, filters={"label": [f"cluster-ai.stack={stack}", "cluster-ai.container=redis"]}
    )
    redis.remove(force=True)
    drifted = run(root, env, "drift", stack)
    assert drifted.returncode == 7, drifted.stderr[-4000:]
    report = json.loads(drifted.stdout)
    assert report["drifted"] is True
    assert any(r["name"] == "redis" and r["op"] == "delete" for r in report["resources"]), report

    down = run(root, env, "destroy", stack)
    assert down.returncode == 0, down.stderr[-4000:]
    assert not client.containers.list(all=True, filters={"label": f"cluster-ai.stack={stack}"})
