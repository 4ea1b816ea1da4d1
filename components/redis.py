"""Redis: Open WebUI's websocket and session store."""

from __future__ import annotations

from typing import TypedDict

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

PORT = 6379
# The official image's `redis` user owns /data in the image.
REDIS_UID = "999:999"
ALIAS = "redis"


class RedisArgs(TypedDict):
    """A password-protected Redis with append-only persistence."""

    image: str
    network: pulumi.Input[str]
    memory_mb: int
    cpus: float
    protect: bool
    """Protect the data volume and keep it on delete (prod)."""
    labels: dict[str, str]


def redis_conf(password: str, maxmemory_mb: int) -> str:
    """The server config. The image has no `*_FILE` support, so the password
    travels in this uploaded file, never on the command line or in env."""
    return "\n".join(
        [
            "bind 0.0.0.0 -::*",
            f"port {PORT}",
            "protected-mode yes",
            f"requirepass {password}",
            "dir /data",
            "appendonly yes",
            # Leave headroom under the container limit for fork + buffers.
            f"maxmemory {max(16, int(maxmemory_mb * 0.75))}mb",
            "maxmemory-policy allkeys-lru",
            # Dangerous admin commands off: nothing in the cluster needs them.
            'rename-command FLUSHALL ""',
            'rename-command FLUSHDB ""',
            'rename-command DEBUG ""',
            'rename-command CONFIG ""',
            "",
        ]
    )


class Redis(pulumi.ComponentResource):
    """Redis with a generated password that stays a secret into the container."""

    password: pulumi.Output[str]
    """The generated password (secret)."""
    url: pulumi.Output[str]
    """`redis://:password@redis:6379/0` (secret)."""

    def __init__(self, name: str, args: RedisArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("cluster-ai:index:Redis", name, {}, opts)
        child = child_options(self, opts)
        generated = random.RandomPassword(f"{name}-password", length=32, special=False, opts=generated_options(self))
        self.password = pulumi.Output.secret(generated.result)
        volume = data_volume(f"{name}-data", "redis", protect=args["protect"], labels=args["labels"], opts=child)
        memory_mb = args["memory_mb"]
        self.container = hardened_container(
            name,
            ServiceContainer(
                service="redis",
                image=args["image"],
                networks=[NetworkAttachment(args["network"], aliases=[ALIAS])],
                command=["redis-server", "/run/secrets/redis.conf"],
                secret_files={
                    "redis.conf": self.password.apply(lambda pw: redis_conf(pw, memory_mb)),
                    "redis_password": self.password,
                },
                mounts=[Mount(volume=volume.name, target="/data")],
                tmpfs={"/tmp": "rw,noexec,nosuid,size=16m"},
                user=REDIS_UID,
                healthcheck=Healthcheck(
                    [
                        "CMD-SHELL",
                        'REDISCLI_AUTH="$(cat /run/secrets/redis_password)" redis-cli -h 127.0.0.1 ping | grep -q PONG',
                    ]
                ),
                memory_mb=memory_mb,
                cpus=args["cpus"],
                labels=args["labels"],
            ),
            child,
        )
        self.url = pulumi.Output.secret(pulumi.Output.concat("redis://:", self.password, f"@{ALIAS}:{PORT}/0"))
        self.register_outputs({"volume": volume.name})
