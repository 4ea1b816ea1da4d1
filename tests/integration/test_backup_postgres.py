"""The backup service's script, exactly as the dev stack declares it, against a real PostgreSQL.

The script and its environment come from the offline plan (the `postgres-backup`
container's command and envs). Only what differs outside the container is
changed: where the server is (127.0.0.1 and the test server's port), where the
password file and the backup directory are, and `BACKUP_ONCE=1` so one run
returns instead of sleeping until the next interval. The dump is restored into
a fresh database with Debian's `pg_restore` and compared row by row.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from components.backup import LAST_SUCCESS
from stacks.mocks import Resource
from stacks.plan import evaluate_stack
from tests.support.postgres import BIN, Server, available, postgres_server

pytestmark = pytest.mark.integration

DATABASE = "openwebui"
SCRIPT_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def declared() -> Resource:
    (container,) = [
        r for r in evaluate_stack("dev").by_type("docker:index/container:Container") if r.name == "postgres-backup"
    ]
    return container


@pytest.fixture
def server() -> Iterator[Server]:
    reason = available()
    if reason is not None:
        pytest.fail(reason)  # .ci/run installs PostgreSQL: its absence is a broken setup, not a skip
    with postgres_server() as running:
        running.psql("postgres", f"CREATE DATABASE {DATABASE}")
        yield running


def declared_script(container: Resource) -> tuple[list[str], dict[str, str]]:
    inputs = container.plain_inputs()
    command = [str(part) for part in inputs["command"]]
    env = dict(str(e).split("=", 1) for e in inputs["envs"])
    return command, env


def run_backup(
    container: Resource, server: Server, tmp_path: Path, *, port: int | None = None, **overrides: str
) -> subprocess.CompletedProcess[str]:
    command, env = declared_script(container)
    backups = tmp_path / "backups"
    backups.mkdir(exist_ok=True)
    password = tmp_path / "password"
    password.write_text(server.password)
    env.update(
        {
            "PGHOST": "127.0.0.1",
            "PGPORT": str(port or server.port),
            "PGPASSWORD_FILE": str(password),
            "BACKUP_DIR": str(backups),
            "BACKUP_ONCE": "1",
            **overrides,
        }
    )
    path = f"{BIN}:{os.environ.get('PATH', '')}"
    return subprocess.run(
        command,
        env={**env, "PATH": path, "PGCONNECT_TIMEOUT": "5"},
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT_S,
        check=False,
    )


def dumps(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".dump"))


def stamp(days_ago: float) -> str:
    return (datetime.now(UTC) - timedelta(days=days_ago)).strftime("%Y%m%dT%H%M%SZ")


def seed(server: Server) -> None:
    server.psql(
        DATABASE,
        """
        CREATE TABLE chat (id serial PRIMARY KEY, author text NOT NULL, body text, created timestamptz DEFAULT now());
        INSERT INTO chat (author, body) VALUES ('alice', 'hello'), ('bob', 'grüße — ☃'), ('carol', NULL);
        CREATE TABLE config (key text PRIMARY KEY, value jsonb);
        INSERT INTO config VALUES ('ui', '{"theme": "dark", "models": ["qwen2.5:0.5b"]}');
        """,
    )


def table_rows(server: Server, database: str) -> dict[str, str]:
    return {
        "chat": server.psql(database, "SELECT id, author, body, created FROM chat ORDER BY id"),
        "config": server.psql(database, "SELECT key, value FROM config ORDER BY key"),
    }


def test_the_declared_backup_restores_into_a_fresh_database_with_the_same_rows(
    declared: Resource, server: Server, tmp_path: Path
) -> None:
    seed(server)
    before = time.time()

    result = run_backup(declared, server, tmp_path)

    assert result.returncode == 0, f"{declared.urn}: the backup failed:\n{result.stderr}"
    backups = tmp_path / "backups"
    written = dumps(backups)
    assert len(written) == 1 and written[0].startswith(f"{DATABASE}-"), f"{declared.urn}: {written}"
    dump = backups / written[0]
    assert dump.stat().st_mode & 0o077 == 0, f"{declared.urn}: the dump is readable by others"
    assert not [p for p in backups.iterdir() if p.name.endswith(".partial")], declared.urn
    recorded = int((backups / LAST_SUCCESS).read_text())
    assert before - 1 <= recorded <= time.time() + 1, f"{declared.urn}: last-success records {recorded}"

    server.psql("postgres", "CREATE DATABASE restored")
    restore = subprocess.run(
        [str(BIN / "pg_restore"), "--no-owner", "--exit-on-error", "-d", "restored", str(dump)],
        env=server.env("restored"),
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT_S,
        check=False,
    )
    assert restore.returncode == 0, restore.stderr
    assert table_rows(server, "restored") == table_rows(server, DATABASE)
    assert "grüße — ☃" in table_rows(server, "restored")["chat"]


def test_retention_drops_dumps_past_the_age_and_the_count_but_keeps_the_newest(
    declared: Resource, server: Server, tmp_path: Path
) -> None:
    seed(server)
    backups = tmp_path / "backups"
    backups.mkdir()
    old = {days: f"{DATABASE}-{stamp(days)}.dump" for days in (1, 2, 3, 4, 20, 30)}
    for name in old.values():
        (backups / name).write_bytes(b"an older dump")
    unrelated = ["notes.txt", f"otherdb-{stamp(40)}.dump"]
    for name in unrelated:
        (backups / name).write_text("not ours")

    # Keep 14 days (the default) and at most 4 dumps: the new one and days 1-3.
    result = run_backup(declared, server, tmp_path, BACKUP_KEEP_COUNT="4")

    assert result.returncode == 0, result.stderr
    kept = dumps(backups)
    new = [n for n in kept if n not in old.values() and n.startswith(f"{DATABASE}-")]
    assert len(new) == 1, kept
    assert sorted(kept) == sorted([*new, old[1], old[2], old[3], unrelated[1]]), kept
    assert (backups / "notes.txt").exists()


def test_retention_by_age_alone_keeps_every_recent_dump(declared: Resource, server: Server, tmp_path: Path) -> None:
    seed(server)
    backups = tmp_path / "backups"
    backups.mkdir()
    recent = [f"{DATABASE}-{stamp(d)}.dump" for d in (0.5, 6, 13)]
    expired = [f"{DATABASE}-{stamp(d)}.dump" for d in (15, 100)]
    for name in recent + expired:
        (backups / name).write_bytes(b"x")

    result = run_backup(declared, server, tmp_path, BACKUP_KEEP_DAYS="14", BACKUP_KEEP_COUNT="50")

    assert result.returncode == 0, result.stderr
    kept = dumps(backups)
    assert set(recent) <= set(kept) and not set(expired) & set(kept), kept
    assert len(kept) == len(recent) + 1


def test_a_failed_dump_deletes_nothing_and_leaves_no_partial_file(
    declared: Resource, server: Server, tmp_path: Path
) -> None:
    backups = tmp_path / "backups"
    backups.mkdir()
    expired = f"{DATABASE}-{stamp(90)}.dump"
    (backups / expired).write_bytes(b"the only copy")

    # Nothing listens on this port: pg_dump fails.
    from tests.support.processes import free_port

    result = run_backup(declared, server, tmp_path, port=free_port())

    assert result.returncode != 0, f"{declared.urn}: a failed pg_dump must fail the run"
    assert "failed" in result.stderr
    assert sorted(p.name for p in backups.iterdir()) == [expired], "a failed run must not prune or leave partials"
    assert not (backups / LAST_SUCCESS).exists()


def test_a_wrong_password_fails_the_backup(declared: Resource, server: Server, tmp_path: Path) -> None:
    command, env = declared_script(declared)
    assert env["PGPASSWORD_FILE"] == "/run/secrets/postgres_password", declared.urn
    (tmp_path / "password").write_text("not-the-password")
    backups = tmp_path / "backups"
    backups.mkdir()
    env.update(
        {
            "PGHOST": "127.0.0.1",
            "PGPORT": str(server.port),
            "PGPASSWORD_FILE": str(tmp_path / "password"),
            "BACKUP_DIR": str(backups),
            "BACKUP_ONCE": "1",
            "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
        }
    )
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=SCRIPT_TIMEOUT_S, check=False)
    assert result.returncode != 0
    assert "password authentication failed" in result.stderr
    assert dumps(backups) == []
