"""The audit log: one JSON line for every `stacks` operation that changes infrastructure.

`up`, `destroy` and a `lock` that writes a stack file each append one line, after
the operation ended (succeeded or failed):

    {"time": "2025-01-31T12:00:00Z", "user": "alice", "machine": "ops-1", "stack": "prod",
     "operation": "up", "commit": "0123abcd...", "dirty": false, "result": "succeeded",
     "changes": {"update": 2, "same": 80}, "detail": {"backup": "openwebui-...dump"}}

Where the log lives ("beside the state"):

- a `file://DIR` backend (the Makefile's `.pulumi-state/` included): `DIR/audit.jsonl`,
  next to the `.pulumi/` tree the CLI keeps its state in, so whoever holds the state
  holds its history of changes;
- any other backend (Pulumi Cloud, s3://, ...), where this program cannot append
  beside the state: `.pulumi-state/audit.jsonl` in the repository checkout;
- `CLUSTER_AI_AUDIT_LOG=PATH` overrides both (CI points it at a file it keeps).

Lines are appended with one `write` on a descriptor opened `O_APPEND`, so
concurrent writers never interleave within a line; the file is created 0600 (it
names users and machines). A failure to write the log is reported on stderr and
does not change the operation's exit code: the change already happened.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

AUDIT_FILE = "audit.jsonl"
STATE_DIR = ".pulumi-state"
OVERRIDE_ENV = "CLUSTER_AI_AUDIT_LOG"

SUCCEEDED = "succeeded"
FAILED = "failed"


def audit_log_path(backend_url: str, *, root: Path, environ: Mapping[str, str] | None = None) -> Path:
    """Where the audit log of a stack on `backend_url` is kept (see the module docstring)."""
    environ = os.environ if environ is None else environ
    override = environ.get(OVERRIDE_ENV)
    if override:
        return Path(override).expanduser()
    if backend_url.startswith("file://"):
        return Path(backend_url[len("file://") :]).expanduser() / AUDIT_FILE
    return root / STATE_DIR / AUDIT_FILE


def backend_url_of(root: Path, environ: Mapping[str, str] | None = None) -> str:
    """The backend the operations use: PULUMI_BACKEND_URL, else the repository's `.pulumi-state`."""
    environ = os.environ if environ is None else environ
    return environ.get("PULUMI_BACKEND_URL") or f"file://{root / STATE_DIR}"


@dataclass(frozen=True)
class GitState:
    """The commit the operation ran from, and whether the checkout had uncommitted changes."""

    commit: str | None
    dirty: bool | None


def git_state(root: Path) -> GitState:
    """HEAD of the checkout at `root`; (None, None) when it is not a git checkout."""

    def git(*args: str) -> str | None:
        try:
            result = subprocess.run(
                ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return result.stdout.strip() if result.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return GitState(None, None)
    status = git("status", "--porcelain", "--untracked-files=no")
    return GitState(commit, None if status is None else bool(status))


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry for the uid (some containers)
        return str(os.getuid())


@dataclass
class Entry:
    """One line of the audit log."""

    stack: str
    operation: str
    result: str
    changes: dict[str, int] = field(default_factory=dict)
    """Resources per operation (`create`, `update`, `replace`, `delete`, `same`), or pins changed for `lock`."""
    detail: dict[str, Any] = field(default_factory=dict)
    time: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    user: str = field(default_factory=_user)
    machine: str = field(default_factory=socket.gethostname)

    def to_json(self, git: GitState) -> dict[str, Any]:
        return {
            "time": self.time,
            "user": self.user,
            "machine": self.machine,
            "stack": self.stack,
            "operation": self.operation,
            "commit": git.commit,
            "dirty": git.dirty,
            "result": self.result,
            "changes": dict(sorted(self.changes.items())),
            "detail": self.detail,
        }


def append(path: Path, entry: Entry, *, root: Path, err: TextIO | None = None) -> bool:
    """Append `entry` as one JSON line to `path`; False (and a warning on `err`) if it cannot be written."""
    line = json.dumps(entry.to_json(git_state(root)), sort_keys=False, separators=(",", ":")) + "\n"
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
    except OSError as exc:
        print(f"warning: could not write the audit log {path}: {exc}", file=err or sys.stderr)
        return False
    return True


def read(path: Path) -> list[dict[str, Any]]:
    """Every entry of an audit log, oldest first (an absent log has none)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
