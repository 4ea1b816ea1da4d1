"""PostgreSQL: Open WebUI's database, on a protected data volume."""

from __future__ import annotations

from typing import NotRequired, TypedDict

import pulumi
import pulumi_random as random

from components.hardened import (
    Healthcheck,
    Mount,
    NetworkAttachment,
    ServiceContainer,
    child_options,
    data_volume,
    generated_options,
    hardened_container,
)

PORT = 5432
# The official image's `postgres` user: it owns PGDATA in the image, so a fresh
# named volume is writable without root and without CHOWN/SETUID capabilities.
POSTGRES_UID = "999:999"
ALIAS = "postgres"


class PostgresArgs(TypedDict):
    """A PostgreSQL server with one database and one owner role."""

    image: str
    """Pinned image reference (`postgres:16.6-bookworm[@sha256:...]`)."""
    network: pulumi.Input[str]
    """The private network clients reach it on, as `postgres:5432`."""
    database: str
    user: str
    memory_mb: int
    cpus: float
    protect: bool
    """Protect the data volume and keep it on delete (prod)."""
    labels: dict[str, str]
    initdb_args: NotRequired[str]


class Postgres(pulumi.ComponentResource):
    """PostgreSQL with a generated password that stays a secret into the container."""

    password: pulumi.Output[str]
    """The owner's generated password (secret)."""
    url: pulumi.Output[str]
    """`postgresql://user:password@postgres:5432/db` (secret)."""
    host: str
    """The DNS name clients use on the private network."""
    volume_name: pulumi.Output[str]
    """The data volume's name (for backups)."""

    def __init__(self, name: str, args: PostgresArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("cluster-ai:index:Postgres", name, {}, opts)
        child = child_options(self, opts)
        generated = random.RandomPassword(f"{name}-password", length=32, special=False, opts=generated_options(self))
        # The mock engine (and older providers) do not mark `result` secret: do it here.
        self.password = pulumi.Output.secret(generated.result)
        volume = data_volume(f"{name}-data", "postgres", protect=args["protect"], labels=args["labels"], opts=child)
        self.volume_name = volume.name
        self.host = ALIAS
        database, user = args["database"], args["user"]
        self.container = hardened_container(
            name,
            ServiceContainer(
                service="postgres",
                image=args["image"],
                networks=[NetworkAttachment(args["network"], aliases=[ALIAS])],
                env={
                    "POSTGRES_DB": database,
                    "POSTGRES_USER": user,
                    "POSTGRES_PASSWORD_FILE": "/run/secrets/postgres_password",
                    "PGDATA": "/var/lib/postgresql/data/pgdata",
                    "POSTGRES_INITDB_ARGS": args.get("initdb_args", "--auth-host=scram-sha-256"),
                },
                secret_files={"postgres_password": self.password},
                mounts=[Mount(volume=volume.name, target="/var/lib/postgresql/data")],
                tmpfs={
                    "/var/run/postgresql": "rw,noexec,nosuid,size=16m,uid=999,gid=999,mode=0775",
                    "/tmp": "rw,noexec,nosuid,size=64m",
                },
                user=POSTGRES_UID,
                healthcheck=Healthcheck(["CMD", "pg_isready", "-h", "127.0.0.1", "-U", user, "-d", database]),
                memory_mb=args["memory_mb"],
                cpus=args["cpus"],
                labels=args["labels"],
                # Give a checkpoint time to finish before the engine kills it.
                stop_grace_s=60,
            ),
            child,
        )
        self.url = pulumi.Output.secret(
            pulumi.Output.concat("postgresql://", user, ":", self.password, f"@{ALIAS}:{PORT}/{database}")
        )
        self.register_outputs({"host": self.host, "volume": self.volume_name})
