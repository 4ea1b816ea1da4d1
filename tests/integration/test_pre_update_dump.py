"""`stacks up`'s pre-update dump, against a real Docker engine and a real PostgreSQL.

A PostgreSQL server and the backup service run as containers of the PostgreSQL
image `make images` builds (Pulumi.e2e.yaml's `images.postgres`), the backup one
with exactly the command, environment and user the dev stack declares for
`postgres-backup` (only the schedule is stretched so no second scheduled dump
races the test). `automation.take_dump` then finds it by its labels, runs the
declared script once in it, and must name a dump that `pg_restore` can read and
that holds the rows written after the scheduled dump.
"""

from __future__ import annotations

import io
import os
import tarfile
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from stacks import automation
from stacks.plan import evaluate_stack
from stacks.stackfile import REPO
from stacks.status import SERVICE, DeclaredContainer, declared_containers
from tests.support.dockerd import ensure_docker_engine

pytestmark = pytest.mark.integration

DOCKER_URL = "unix:///var/run/docker.sock"
PASSWORD = "pre-update-dump-test"  # a throwaway server's password, never deployed
WAIT_S = 90.0
INIT_SQL = "CREATE TABLE chats (id int); INSERT INTO chats VALUES (1);\n"


def postgres_image() -> str:
    config = yaml.safe_load((REPO / "Pulumi.e2e.yaml").read_text())["config"]
    return str(config["cluster-ai:images"]["postgres"])


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    import docker

    reason = ensure_docker_engine()
    if reason is not None:
        pytest.skip(reason)
    engine = docker.DockerClient(base_url=DOCKER_URL)
    try:
        engine.images.get(postgres_image())
    except docker.errors.ImageNotFound:
        why = f"{postgres_image()} is not built: `make images` (ci/images.sh) builds it"
        if os.environ.get("CI"):
            pytest.fail(f"{why}; CI builds the images before the tests")
        pytest.skip(why)
    yield engine
    engine.close()


def _wait(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {WAIT_S:g}s waiting for {what}")


def _psql(container: Any, sql: str) -> str:
    code, out = container.exec_run(["psql", "-U", "openwebui", "-d", "openwebui", "-tAc", sql], user="postgres")
    assert code == 0, out.decode()
    return str(out.decode().strip())


def _tar(name: str, content: str, *, mode: int, owner: int = 0) -> bytes:
    """One file, as `put_archive` takes it."""
    data = content.encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        if "/" in name:  # its directory too, as the stack's secrets volume provides it
            directory = tarfile.TarInfo(name.rsplit("/", 1)[0])
            directory.type, directory.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(directory)
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.uid, info.gid = len(data), mode, owner, owner
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def deployed(client: Any) -> Iterator[tuple[DeclaredContainer, Any, Any]]:
    """A server and the declared backup service on a private network, labelled as the stack labels them."""
    # The backup service itself, not its file holder (same service label, never started).
    declared = next(
        c for c in declared_containers(evaluate_stack("dev")) if c.service == "backup" and c.role == SERVICE
    )
    backup_inputs = next(r for r in evaluate_stack("dev").by_type(automation.CONTAINER) if r.name == declared.name)
    inputs = backup_inputs.plain_inputs()
    env = dict(item.split("=", 1) for item in inputs["envs"])
    env["BACKUP_INTERVAL_S"] = "3600"  # one scheduled dump at start, then none during the test
    run = f"dump-{uuid.uuid4().hex[:8]}"
    labels = {**declared.labels, "cluster-ai.stack": run}
    network = client.networks.create(run, internal=True)
    volume = client.volumes.create(f"{run}-backups")
    created: list[Any] = []
    try:
        server = client.containers.create(
            postgres_image(),
            name=f"{run}-postgres",
            environment={"POSTGRES_USER": "openwebui", "POSTGRES_DB": "openwebui", "POSTGRES_PASSWORD": PASSWORD},
            network=run,
        )
        created.append(server)
        network.disconnect(server)
        network.connect(server, aliases=[env["PGHOST"]])
        # The table the dumps must carry, created by the image's own init hook.
        assert server.put_archive("/docker-entrypoint-initdb.d", _tar("chats.sql", INIT_SQL, mode=0o444))
        server.start()
        # The entrypoint runs a temporary server for initdb first: wait for the real one.
        _wait(lambda: b"init process complete" in server.logs(), "the server's initialisation")
        _wait(
            lambda: server.exec_run(["pg_isready", "-U", "openwebui"], user="postgres")[0] == 0,
            "the server to accept connections",
        )
        backup = client.containers.create(
            postgres_image(),
            name=f"{run}-backup",
            entrypoint=[],
            command=inputs["command"],
            environment=env,
            user=inputs["user"],
            labels=labels,
            network=run,
            volumes={volume.name: {"bind": env["BACKUP_DIR"], "mode": "rw"}},
        )
        created.append(backup)
        # As the file holder leaves it in the secrets volume: root-owned, 0444 (read by uid 999).
        assert backup.put_archive("/run", _tar("secrets/postgres_password", PASSWORD, mode=0o444, owner=0))
        backup.start()
        _wait(lambda: b"backup: wrote" in backup.logs(), "the scheduled dump at start")
        # Written after the scheduled dump: only a fresh dump holds it.
        _psql(server, "INSERT INTO chats VALUES (2);")
        yield (
            DeclaredContainer(
                name=declared.name,
                service=declared.service,
                host=declared.host,
                docker_url=DOCKER_URL,
                image=declared.image,
                has_healthcheck=declared.has_healthcheck,
                command=declared.command,
                labels=labels,
            ),
            server,
            backup,
        )
    finally:
        for container in reversed(created):
            container.remove(force=True)
        volume.remove(force=True)
        network.remove()


def test_the_pre_update_dump_runs_the_declared_script_in_the_running_backup_container(
    deployed: tuple[DeclaredContainer, Any, Any],
) -> None:
    declared, _, backup = deployed
    scheduled = backup.logs().decode()
    # Dump names carry the time to the second: one taken in the same second as the
    # scheduled dump would have its name (seen once in CI). Let that second pass.
    time.sleep(1.1)
    dump = automation.take_dump(declared)
    assert dump.path.startswith("/var/lib/postgresql/data/openwebui-") and dump.path.endswith(".dump"), dump
    assert dump.path not in scheduled, "the named dump is the scheduled one, not a fresh one"
    assert (dump.container, dump.host) == ("postgres-backup", "local")
    # pg_restore reads it, and it holds the row written after the scheduled dump.
    code, out = backup.exec_run(["pg_restore", "--data-only", "--table=chats", "-f", "-", dump.path])
    assert code == 0, out.decode()
    rows = [line for line in out.decode().splitlines() if line.strip() in ("1", "2")]
    assert rows == ["1", "2"], out.decode()


def test_a_backup_service_of_another_stack_is_not_used(deployed: tuple[DeclaredContainer, Any, Any]) -> None:
    declared, _, _ = deployed
    other = DeclaredContainer(**{**declared.__dict__, "labels": {**declared.labels, "cluster-ai.stack": "nope"}})
    with pytest.raises(automation.OperationError, match="0 running containers 'postgres-backup'"):
        automation.take_dump(other)
