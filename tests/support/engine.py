"""The real Pulumi engine for the e2e tier: the CLI, its plugins, a throwaway backend.

The CLI is the one `make toolchain` (ci/toolchain.sh) built from Go modules, found
through the `env.sh` it writes into the cache, or else a `pulumi` already on PATH
(a user's own install). In CI (`CI=true`) a missing engine is a failure, never a
skip: the e2e tier is what shows that `pulumi up` works.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from stacks.automation import analyzer_pack
from stacks.stackfile import REPO

CACHE = Path(os.environ.get("CLUSTER_AI_CACHE", "/var/cache/cluster-ai"))
ENV_FILES = (CACHE / "env.sh", CACHE / "toolchain" / "env.sh")
# Engine variables that must never leak in from the caller's shell into a test stack.
# (The workspace's `policies` already is the analyzer copy of the pack: no other is made.)
SCRUBBED = (
    "PULUMI_BACKEND_URL",
    "PULUMI_CONFIG_PASSPHRASE",
    "PULUMI_CONFIG_PASSPHRASE_FILE",
    "PULUMI_ACCESS_TOKEN",
    "CLUSTER_AI_POLICY_RUNTIME",
)
# The program's packages, linked into a workspace beside its stack files.
PROGRAM = ("infra", "components", "monitoring", "stacks")
# The policy pack's runtime name in the workspace: no language host answers to it, so
# the CLI takes its analyzer path (`pulumi-analyzer-policy-<runtime>`), run by the
# SDK's own `pulumi-analyzer-policy-python` script (docs/engine.md: the language host
# built here predates the CLI's RunPlugin request and cannot start a policy pack).
ANALYZER_RUNTIME = "python-analyzer"


def toolchain_env() -> dict[str, str] | None:
    """The environment `source env.sh` gives, or None when the toolchain was not built here."""
    for path in ENV_FILES:
        if path.is_file():
            shown = subprocess.run(
                ["bash", "-c", 'set -e; source "$1"; env -0', "env.sh", str(path)],
                capture_output=True,
                check=True,
                timeout=30,
            ).stdout
            pairs = (item.split("=", 1) for item in shown.decode().split("\0") if "=" in item)
            return {k: v for k, v in pairs if k.startswith("PULUMI") or k == "PATH"}
    return None


def engine_env_or_skip() -> dict[str, str]:
    """The engine's environment; skips (saying why) on a user's machine without one, fails in CI."""
    env = toolchain_env()
    if env is None and shutil.which("pulumi") is not None:
        env = {"PATH": os.environ["PATH"], "PULUMI_SKIP_UPDATE_CHECK": "true"}
    if env is None:
        reason = f"needs the Pulumi CLI: run `make toolchain` (no {ENV_FILES[0]}) or install Pulumi"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the e2e tier: {reason}")
        pytest.skip(reason)
    return env


@dataclass
class Workspace:
    """A directory holding Pulumi.yaml, one stack file and links to the program, with its own backend."""

    root: Path
    stack: str
    env: dict[str, str]
    log: list[str] = field(default_factory=list)

    @property
    def state_dir(self) -> Path:
        return self.root / ".pulumi-state"

    def run(self, *argv: str, timeout: float = 1800, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """`python -m stacks ARGV... --root ROOT` with the engine's environment."""
        return self._run([sys.executable, "-m", "stacks", *argv, "--root", str(self.root)], timeout, stdin)

    def pulumi(self, *argv: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """The Pulumi CLI itself, in the workspace, on its stack."""
        return self._run(["pulumi", *argv, "--stack", self.stack, "--non-interactive"], timeout, None)

    def _run(self, argv: list[str], timeout: float, stdin: str | None) -> subprocess.CompletedProcess[str]:
        environ = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
        result = subprocess.run(
            argv,
            cwd=self.root,
            env={**environ, **self.env},
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        self.log.append(f"$ {' '.join(argv[:4])} ... -> {result.returncode}")
        return result

    def outputs(self) -> dict[str, Any]:
        shown = self.pulumi("stack", "output", "--json", "--show-secrets")
        assert shown.returncode == 0, diagnostics(shown)
        outputs: dict[str, Any] = json.loads(shown.stdout)
        return outputs

    def last_update_changes(self) -> dict[str, int]:
        """The engine's own summary of the last update: op -> count."""
        history = self.pulumi("stack", "history", "--json", "--show-secrets")
        assert history.returncode == 0, diagnostics(history)
        updates = json.loads(history.stdout)
        changes: dict[str, int] = updates[0].get("resourceChanges") or {}
        return changes

    def checkpoint(self) -> str:
        """The raw state file as the file backend keeps it (secrets only as ciphertext)."""
        files = list((self.state_dir / ".pulumi" / "stacks").rglob(f"{self.stack}.json"))
        assert len(files) == 1, f"expected one checkpoint for {self.stack}, found {files}"
        return files[0].read_text()


def make_workspace(
    base: Path, stack_config: Mapping[str, Any], engine: Mapping[str, str], *, prefix: str = "e2e"
) -> Workspace:
    """Pulumi.yaml, `Pulumi.<stack>.yaml` from `stack_config`, the program linked in, a fresh backend.

    The stack is named `prefix` + 8 random hex digits (bench/converge.py uses `bench`).
    """
    import yaml

    stack = f"{prefix}{uuid.uuid4().hex[:8]}"
    shutil.copy(REPO / "Pulumi.yaml", base / "Pulumi.yaml")
    (base / f"Pulumi.{stack}.yaml").write_text(yaml.safe_dump({"config": dict(stack_config)}, sort_keys=False))
    for package in PROGRAM:
        (base / package).symlink_to(REPO / package)
    analyzer_bin = _policy_pack(base / "policies", engine)
    (base / ".venv").symlink_to(REPO / ".venv")
    state = base / ".pulumi-state"
    state.mkdir(mode=0o700)
    passphrase = state / "passphrase"
    passphrase.write_text(secrets.token_urlsafe(24))
    passphrase.chmod(0o600)
    env = {
        **engine,
        "PATH": f"{analyzer_bin}:{engine.get('PATH', os.environ.get('PATH', ''))}",
        "PULUMI_BACKEND_URL": f"file://{state}",
        "PULUMI_CONFIG_PASSPHRASE_FILE": str(passphrase),
        "PULUMI_SKIP_UPDATE_CHECK": "true",
        "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
        # The language host runs this interpreter (docs/engine.md): this checkout's venv.
        "PULUMI_PYTHON_CMD": str(REPO / ".venv" / "bin" / "python"),
    }
    workspace = Workspace(base, stack, env)
    login = workspace._run(["pulumi", "login", f"file://{state}"], 60, None)
    assert login.returncode == 0, diagnostics(login)
    return workspace


def _policy_pack(pack: Path, engine: Mapping[str, str]) -> Path:
    """The repository's pack (its files linked), started through the CLI's analyzer path.

    Returns the directory holding `pulumi-analyzer-policy-<ANALYZER_RUNTIME>`: the
    toolchain's `pulumi-analyzer-policy-python`, which runs `python -m pulumi.policy`.
    """
    analyzer_pack(REPO, ANALYZER_RUNTIME, dest=pack)
    found = shutil.which("pulumi-analyzer-policy-python", path=engine.get("PATH"))
    assert found is not None, "the toolchain has no pulumi-analyzer-policy-python (ci/toolchain.sh installs it)"
    bin_dir = pack.parent / ".analyzer-bin"
    bin_dir.mkdir()
    (bin_dir / f"pulumi-analyzer-policy-{ANALYZER_RUNTIME}").symlink_to(found)
    return bin_dir


def diagnostics(result: subprocess.CompletedProcess[str], limit: int = 6000) -> str:
    """What the engine said (stdout and stderr, the end of each), for an assertion message."""
    return (
        f"exit {result.returncode}\n--- stdout (end) ---\n{result.stdout[-limit:]}\n"
        f"--- stderr (end) ---\n{result.stderr[-limit:]}"
    )


# Keys of a secret structure that are its shape, not its secret: an upload list is
# secret as a whole when one file in it is, but its file names appear in plain env.
STRUCTURAL_KEYS = frozenset({"file", "permissions", "executable", "owner", "group", "source"})


def secret_strings(value: Any) -> Iterable[str]:
    """Every string inside a (decrypted) secret value worth grepping for: long enough to be unique."""
    if isinstance(value, str):
        if len(value) >= 12:
            yield value
            # PEM bodies: a line of one is enough to find a leaked key.
            for line in value.splitlines():
                if len(line) >= 40 and not line.startswith("-----"):
                    yield line
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if key not in STRUCTURAL_KEYS:
                yield from secret_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from secret_strings(item)
