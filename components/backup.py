"""Scheduled PostgreSQL backups: `pg_dump` in custom format to a data volume, with retention.

The backup service runs the PostgreSQL image itself (its `pg_dump` is the
server's version, which a dump needs at least) next to the database on the
internal data network. Every `interval` it writes
`<database>-<UTC timestamp>.dump` (`pg_dump --format=custom`, restorable with
`pg_restore`), atomically (a partial file never carries the final name), then
records the time in `last-success` and prunes: dumps older than `keep_days`
and beyond the newest `keep_count` go, and the newest dump always stays. The
container's healthcheck fails when the last success is older than two
intervals, and `python -m stacks status` reports the age.

The script is a plain function (`backup_script`) so the integration tests run
exactly what is declared against a real PostgreSQL.
"""

from __future__ import annotations

from typing import NotRequired, TypedDict

import pulumi

from components.hardened import Healthcheck, Mount, NetworkAttachment, ServiceContainer, data_volume, hardened_container

# The official image's `postgres` user. The volume is mounted where the image has
# a directory that user owns, so a fresh volume starts out writable by it
# (Docker copies the image directory's ownership into an empty volume); the
# backup container runs no server, so nothing else lives there.
BACKUP_UID = "999:999"
BACKUP_DIR = "/var/lib/postgresql/data"
LAST_SUCCESS = "last-success"
PASSWORD_FILE = "/run/secrets/postgres_password"
DUMP_SUFFIX = ".dump"

BACKUP_SCRIPT = r"""set -eu
umask 077
: "${BACKUP_DIR:?}" "${PGDATABASE:?}" "${PGPASSWORD_FILE:?}"
: "${BACKUP_INTERVAL_S:?}" "${BACKUP_KEEP_DAYS:?}" "${BACKUP_KEEP_COUNT:?}"

log() { echo "backup: $*" >&2; }

prune() {
  now=$(date -u +%s)
  # Dump names carry their UTC time: YYYYmmddTHHMMSSZ sorts as it reads.
  cutoff=$(date -u -d "@$((now - BACKUP_KEEP_DAYS * 86400))" +%Y%m%d%H%M%S)
  n=0
  for f in $(ls -1 "$BACKUP_DIR" | grep -E "^${PGDATABASE}-[0-9]{8}T[0-9]{6}Z\.dump$" | sort -r); do
    n=$((n + 1))
    [ "$n" -eq 1 ] && continue  # the newest dump always stays
    stamp=$(echo "$f" | sed -E 's/^.*-([0-9]{8})T([0-9]{6})Z\.dump$/\1\2/')
    if [ "$n" -gt "$BACKUP_KEEP_COUNT" ] || [ "$stamp" -lt "$cutoff" ]; then
      rm -f "$BACKUP_DIR/$f" && log "pruned $f"
    fi
  done
}

backup_once() {
  stamp=$(date -u +%Y%m%dT%H%M%SZ)
  out="$BACKUP_DIR/$PGDATABASE-$stamp.dump"
  part="$BACKUP_DIR/.$PGDATABASE-$stamp.dump.partial"
  if PGPASSWORD="$(cat "$PGPASSWORD_FILE")" pg_dump --format=custom --compress=6 --no-password --file="$part"; then
    mv "$part" "$out"
    date -u +%s > "$BACKUP_DIR/.last-success.partial"
    mv "$BACKUP_DIR/.last-success.partial" "$BACKUP_DIR/last-success"
    log "wrote $out"
    prune
  else
    rm -f "$part"
    log "pg_dump of $PGDATABASE failed"
    return 1
  fi
}

if [ "${BACKUP_ONCE:-0}" = 1 ]; then
  backup_once
  exit $?
fi
while :; do
  backup_once || log "retrying at the next interval"
  sleep "$BACKUP_INTERVAL_S" &
  wait $!
done
"""


def backup_script() -> str:
    """The backup service's shell script (POSIX sh; settings come from its environment)."""
    return BACKUP_SCRIPT


def backup_command() -> list[str]:
    """The container's command: the script, run by the image's `sh`."""
    return ["sh", "-c", backup_script(), "postgres-backup"]


def backup_env(
    *, host: str, port: int, user: str, database: str, interval_s: int, keep_days: int, keep_count: int
) -> dict[str, str]:
    """What the script reads: libpq's PG* variables and the schedule and retention."""
    return {
        "PGHOST": host,
        "PGPORT": str(port),
        "PGUSER": user,
        "PGDATABASE": database,
        "PGPASSWORD_FILE": PASSWORD_FILE,
        "BACKUP_DIR": BACKUP_DIR,
        "BACKUP_INTERVAL_S": str(interval_s),
        "BACKUP_KEEP_DAYS": str(keep_days),
        "BACKUP_KEEP_COUNT": str(keep_count),
    }


def max_age_s(interval_s: int) -> int:
    """A backup older than this is stale: two intervals (one missed run is tolerated)."""
    return 2 * interval_s


class PostgresBackupArgs(TypedDict):
    """A scheduled `pg_dump` of one database, kept on a volume of its own."""

    image: str
    """The PostgreSQL image the server runs (its pg_dump matches the server)."""
    network: pulumi.Input[str]
    """The network the server answers on."""
    host: str
    """The server's DNS name on that network."""
    port: NotRequired[int]
    database: str
    user: str
    password: pulumi.Input[str]
    """The user's password (secret); uploaded as a file, never in env."""
    interval_hours: int
    keep_days: int
    keep_count: int
    protect: bool
    """Protect the backup volume and keep it on delete (prod)."""
    labels: dict[str, str]
    memory_mb: NotRequired[int]
    cpus: NotRequired[float]


class PostgresBackup(pulumi.ComponentResource):
    """`pg_dump` every `interval_hours`, pruned by age and count, on a protected volume."""

    volume_name: pulumi.Output[str]
    """The backup volume (restore from it: see docs/operations.md)."""
    directory: str
    """Where the dumps are inside the backup container."""

    def __init__(self, name: str, args: PostgresBackupArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("cluster-ai:index:PostgresBackup", name, {}, opts)
        for key in ("interval_hours", "keep_days", "keep_count"):
            if args[key] < 1:
                raise ValueError(f"{name}: {key} must be >= 1")
        child = pulumi.ResourceOptions(parent=self)
        volume = data_volume(f"{name}-data", "backup", protect=args["protect"], labels=args["labels"], opts=child)
        self.volume_name = volume.name
        self.directory = BACKUP_DIR
        interval_s = args["interval_hours"] * 3600
        env = backup_env(
            host=args["host"],
            port=args.get("port", 5432),
            user=args["user"],
            database=args["database"],
            interval_s=interval_s,
            keep_days=args["keep_days"],
            keep_count=args["keep_count"],
        )
        age_check = (
            f"test -f {BACKUP_DIR}/{LAST_SUCCESS} && "
            f"test $(( $(date -u +%s) - $(cat {BACKUP_DIR}/{LAST_SUCCESS}) )) -lt {max_age_s(interval_s)}"
        )
        self.container = hardened_container(
            name,
            ServiceContainer(
                service="backup",
                image=args["image"],
                networks=[NetworkAttachment(args["network"])],
                command=backup_command(),
                env=env,
                secret_files={"postgres_password": pulumi.Output.secret(args["password"])},
                mounts=[Mount(volume=volume.name, target=BACKUP_DIR)],
                tmpfs={"/tmp": "rw,noexec,nosuid,size=16m"},
                user=BACKUP_UID,
                # The first dump runs at start: `up` waits for it to succeed.
                healthcheck=Healthcheck(["CMD-SHELL", age_check], interval_s=60, retries=3, start_period_s=120),
                memory_mb=args.get("memory_mb", 256),
                cpus=args.get("cpus", 0.5),
                labels=args["labels"],
            ),
            # The first dump runs at start: the container waits for what the
            # component was told to wait for (the server), not only for its inputs.
            pulumi.ResourceOptions(parent=self, depends_on=opts.depends_on if opts is not None else None),
        )
        self.register_outputs({"volume": self.volume_name, "directory": self.directory})
