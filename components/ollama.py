"""Ollama with the stack's pinned models, verified by digest after every pull."""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NotRequired, TypedDict

import pulumi
from pulumi_command import remote

from components.hardened import (
    Healthcheck,
    Mount,
    NetworkAttachment,
    Publish,
    ServiceContainer,
    child_options,
    data_volume,
    hardened_container,
)
from components.hostexec import host_command

PORT = 11434
ALIAS = "ollama"
SYNC_SCRIPT = Path(__file__).with_name("ollama_sync.py")
# The sync container needs no identity and no privilege: nobody:nogroup.
SYNC_USER = "65534:65534"


class ModelPinArgs(TypedDict):
    """A model by tag, and the manifest digest `/api/tags` must report for it."""

    name: str
    digest: str | None
    """None (dev only): the first pull records what it got."""


class OllamaArgs(TypedDict):
    """An Ollama server on one host and the models it must hold."""

    image: str
    network: pulumi.Input[str]
    models: Sequence[ModelPinArgs]
    sync_image: str
    """A pinned image with Python 3 (the Dask image) to run the model sync in."""
    memory_mb: int
    cpus: float
    protect: bool
    """Protect the model volume and keep it on delete (prod)."""
    labels: dict[str, str]
    publish_address: NotRequired[str]
    """Publish 11434 on this host address (dev)."""
    port: NotRequired[int]
    gpus: NotRequired[str]
    """`all` or `device=0,1` for a GPU host."""
    connection: NotRequired[remote.ConnectionArgs]
    """SSH to the host, for the model sync; absent for a local Docker host."""
    docker_host: NotRequired[str]
    """The local Docker endpoint, for the model sync on a local host."""


def sync_command(network: str, image: str, models: Sequence[ModelPinArgs]) -> str:
    """The shell command that runs the model sync next to Ollama; the script comes on stdin."""
    pins = json.dumps([{"name": m["name"], "digest": m["digest"]} for m in models], sort_keys=True)
    return shlex.join(
        [
            "docker", "run", "--rm", "-i",
            "--network", network,
            "--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges:true",
            "--user", SYNC_USER, "--memory", "256m", "--cpus", "0.5", "--pids-limit", "64",
            "--label", "cluster-ai.service=ollama-model-sync",
            image,
            "python", "-", "--url", f"http://{ALIAS}:{PORT}", "--pins", pins,
        ]
    )  # fmt: skip


def parse_sync_summary(stdout: str) -> dict[str, Any]:
    """The sync's last stdout line is its JSON summary."""
    lines = [line for line in stdout.strip().splitlines() if line.strip()]
    if not lines:
        return {}
    try:
        summary = json.loads(lines[-1])
    except ValueError:
        return {}
    return summary.get("models", {}) if isinstance(summary, dict) else {}


class Ollama(pulumi.ComponentResource):
    """The Ollama server, its model volume, and the model sync that pins its models."""

    url: str
    """Ollama on the host's private network."""
    models: pulumi.Output[dict[str, Any]]
    """Model -> digest, as the last sync found them."""

    def __init__(self, name: str, args: OllamaArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("cluster-ai:index:Ollama", name, {}, opts)
        child = child_options(self, opts)
        port = args.get("port", PORT)
        volume = data_volume(f"{name}-models", "ollama", protect=args["protect"], labels=args["labels"], opts=child)
        publish = [Publish(PORT, port, args["publish_address"])] if "publish_address" in args else []
        self.container = hardened_container(
            name,
            ServiceContainer(
                service="ollama",
                image=args["image"],
                networks=[NetworkAttachment(args["network"], aliases=[ALIAS])],
                env={
                    "OLLAMA_HOST": f"0.0.0.0:{PORT}",
                    "OLLAMA_KEEP_ALIVE": "10m",
                    "OLLAMA_MAX_LOADED_MODELS": "2",
                    "OLLAMA_NUM_PARALLEL": "4",
                },
                mounts=[Mount(volume=volume.name, target="/root/.ollama")],
                tmpfs={"/tmp": "rw,nosuid,size=512m"},
                publish=publish,
                # The image keeps its models and key under /root/.ollama and runs
                # as root; every capability is dropped, so root owns nothing else.
                user=None,
                gpus=args.get("gpus"),
                healthcheck=Healthcheck(["CMD", "ollama", "list"], start_period_s=30),
                memory_mb=args["memory_mb"],
                cpus=args["cpus"],
                labels=args["labels"],
            ),
            child,
        )
        models = list(args["models"])
        sync_image = args["sync_image"]
        command = pulumi.Output.from_input(args["network"]).apply(lambda net: sync_command(net, sync_image, models))
        self.sync = host_command(
            f"{name}-model-sync",
            create=command,
            stdin=SYNC_SCRIPT.read_text(),
            # A new Ollama container (or volume) must be synced again.
            triggers=[self.container.id, volume.name],
            connection=args.get("connection"),
            docker_host=args.get("docker_host"),
            opts=pulumi.ResourceOptions.merge(
                child_options(self, opts), pulumi.ResourceOptions(depends_on=[self.container])
            ),
        )
        self.url = f"http://{ALIAS}:{PORT}"
        self.models = self.sync.stdout.apply(parse_sync_summary)
        self.register_outputs({"url": self.url, "models": self.models})
