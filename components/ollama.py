"""Ollama with the stack's pinned models, verified by digest after every pull."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NotRequired, TypedDict

import pulumi

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
    insecure: NotRequired[bool]
    """Pull from a private registry over plain HTTP (never in prod: infra/config.py refuses it)."""


class OllamaArgs(TypedDict):
    """An Ollama server on one host and the models it must hold."""

    image: str
    network: pulumi.Input[str]
    models: Sequence[ModelPinArgs]
    sync_image: str
    """A pinned image with Python 3 (the Dask image) to run the model sync in."""
    memory_mb: int
    cpus: float
    sync_memory_mb: int
    """The model sync task's limits (`resources.modelSync`, counted by the host's memory check)."""
    sync_cpus: float
    protect: bool
    """Protect the model volume and keep it on delete (prod)."""
    labels: dict[str, str]
    publish_address: NotRequired[str]
    """Publish 11434 on this host address (dev)."""
    port: NotRequired[int]
    gpus: NotRequired[str]
    """`all` or `device=0,1` for a GPU host."""
    client_networks: NotRequired[Sequence[pulumi.Input[str]]]
    """Further networks the API answers on under its alias (Open WebUI's, on the head)."""


def sync_arguments(models: Sequence[ModelPinArgs]) -> list[str]:
    """The model sync's command line: the script itself, then what it must converge on.

    The pins are one JSON argument (data, never shell text); the script runs from `-c`
    so the task's read-only container needs nothing uploaded.
    """
    # `insecure` only where set, so the command of a stack without it stays as it was.
    pins = json.dumps(
        [
            {"name": m["name"], "digest": m["digest"], **({"insecure": True} if m.get("insecure") else {})}
            for m in models
        ],
        sort_keys=True,
    )
    return ["python", "-c", SYNC_SCRIPT.read_text(), "--url", f"http://{ALIAS}:{PORT}", "--pins", pins]


class ModelSyncError(Exception):
    """The model sync exited non-zero: `pulumi up` fails with its own words."""


def sync_result(exit_code: int | None, logs: str | None) -> dict[str, Any]:
    """Model -> digest from a finished sync; raise with the sync's errors when it failed.

    Unknown during a preview (no exit code yet): nothing to report.
    """
    if exit_code is None:
        return {}
    if exit_code != 0:
        lines = [line for line in (logs or "").splitlines() if line.strip()]
        detail = "\n".join(lines[-20:]) or "(no output)"
        raise ModelSyncError(f"the model sync exited with {exit_code}:\n{detail}")
    return parse_sync_summary(logs or "")


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
                networks=[
                    NetworkAttachment(net, aliases=[ALIAS])
                    for net in [args["network"], *args.get("client_networks", ())]
                ],
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
        # The sync is a task on the same host and network, run by the host's own Docker
        # provider: `up` waits for it and fails with its errors. A new Ollama container
        # or model volume replaces the task (replacement_trigger): a fresh sync runs.
        self.sync = hardened_container(
            f"{name}-model-sync",
            ServiceContainer(
                service="ollama-model-sync",
                image=args["sync_image"],
                networks=[NetworkAttachment(args["network"])],
                command=sync_arguments(args["models"]),
                healthcheck=None,
                run_once=True,
                # It needs no identity and no privilege.
                user=SYNC_USER,
                memory_mb=args["sync_memory_mb"],
                cpus=args["sync_cpus"],
                labels=args["labels"],
            ),
            pulumi.ResourceOptions.merge(
                child,
                pulumi.ResourceOptions(
                    depends_on=[self.container],
                    replacement_trigger=pulumi.Output.all(self.container.id, volume.name),
                ),
            ),
        )
        self.url = f"http://{ALIAS}:{PORT}"
        self.models = pulumi.Output.all(self.sync.exit_code, self.sync.container_logs).apply(
            lambda result: sync_result(result[0], result[1])
        )
        self.register_outputs({"url": self.url, "models": self.models})
