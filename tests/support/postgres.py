"""A throwaway PostgreSQL server for tests: Debian's binaries, a temporary cluster, 127.0.0.1.

`initdb` refuses to run as root, so when the tests run as root (CI does) the
server runs as the `postgres` system user the Debian package creates; its data
and socket live in a directory that user owns, removed when the test ends.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.processes import free_port

BIN = Path("/usr/lib/postgresql/15/bin")
START_TIMEOUT_S = 60


def available() -> str | None:
    """None when a server can be started here, else why not."""
    if not (BIN / "initdb").is_file():
        return f"PostgreSQL 15 is not installed ({BIN}/initdb): apt-get install postgresql"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root needs runuser to start PostgreSQL as the postgres user"
    return None


@dataclass
class Server:
    """A running server: connect to 127.0.0.1:port as `user` with `password`."""

    port: int
    user: str
    password: str
    password_file: Path
    as_user: Sequence[str]

    def env(self, database: str) -> dict[str, str]:
        """libpq's environment for a client of this server."""
        return {
            **os.environ,
            "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
            "PGHOST": "127.0.0.1",
            "PGPORT": str(self.port),
            "PGUSER": self.user,
            "PGDATABASE": database,
            "PGPASSWORD": self.password,
            "PGCONNECT_TIMEOUT": "10",
        }

    def psql(self, database: str, sql: str) -> str:
        result = subprocess.run(
            [str(BIN / "psql"), "-v", "ON_ERROR_STOP=1", "-At", "-c", sql],
            env=self.env(database),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise AssertionError(f"psql failed ({result.returncode}): {result.stderr}")
        return result.stdout


@contextmanager
def postgres_server(*, user: str = "openwebui", password: str = "test-password-1") -> Iterator[Server]:
    """Start a server in a fresh directory under /tmp; stop it and remove its files at exit.

    Not pytest's tmp_path: that sits below a root-only directory the postgres
    user could not enter.
    """
    root = Path(tempfile.mkdtemp(prefix="cluster-ai-pg-", dir="/tmp"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    pwfile = root / "pwfile"
    pwfile.write_text(password + "\n")
    if as_user:
        shutil.chown(pwfile, "postgres", "postgres")
    data = root / "data"
    socket_dir = root / "sock"
    port = free_port()

    def run(*argv: str) -> None:
        subprocess.run([*as_user, *argv], check=True, capture_output=True, timeout=120)

    run(str(BIN / "initdb"), "-D", str(data), "-U", user, f"--pwfile={pwfile}", "--auth=scram-sha-256", "-E", "UTF8")
    run("mkdir", "-p", str(socket_dir))
    options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={socket_dir} -c fsync=off"
    run(
        str(BIN / "pg_ctl"),
        "-D",
        str(data),
        "-o",
        options,
        "-l",
        str(root / "log"),
        "-w",
        "-t",
        str(START_TIMEOUT_S),
        "start",
    )
    server = Server(port, user, password, pwfile, as_user)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            ready = subprocess.run(
                [str(BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                capture_output=True,
                timeout=10,
                check=False,
            )
            if ready.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not become ready: {(root / 'log').read_text(errors='replace')}")
            time.sleep(0.2)
        yield server
    finally:
        subprocess.run(
            [*as_user, str(BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "-t", "30", "stop"],
            capture_output=True,
            timeout=60,
            check=False,
        )
        shutil.rmtree(root, ignore_errors=True)
