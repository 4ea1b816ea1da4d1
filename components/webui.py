"""Open WebUI: the chat UI, on PostgreSQL and Redis, talking to every Ollama."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NotRequired, TypedDict

import pulumi
import pulumi_random as random

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

PORT = 8080
ALIAS = "webui"


class OpenWebUIArgs(TypedDict):
    """Open WebUI and everything it is wired to."""

    image: str
    networks: Sequence[pulumi.Input[str]]
    """Private networks it joins: the host's, and the data network of PostgreSQL/Redis."""
    database_url: pulumi.Input[str]
    """`postgresql://...` (secret)."""
    redis_url: pulumi.Input[str]
    """`redis://...` (secret)."""
    ollama_urls: Sequence[str]
    """Every Ollama, in the order users see them."""
    admin_email: str
    admin_name: str
    admin_password: pulumi.Input[str]
    """The bootstrap admin's password (secret)."""
    name: str
    memory_mb: int
    cpus: float
    protect: bool
    labels: dict[str, str]
    publish_address: NotRequired[str]
    publish_port: NotRequired[int]
    public_url: NotRequired[str]
    """WEBUI_URL: where users reach it (through the proxy in prod)."""


class OpenWebUI(pulumi.ComponentResource):
    """Open WebUI with a fixed, generated session key and signup off."""

    url: str
    """Open WebUI on the private network."""
    secret_key: pulumi.Output[str]
    """WEBUI_SECRET_KEY (secret): fixed, so sessions survive a restart."""

    def __init__(self, name: str, args: OpenWebUIArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("cluster-ai:index:OpenWebUI", name, {}, opts)
        if not args["ollama_urls"]:
            raise ValueError(f"{name}: ollama_urls must list at least one Ollama")
        child = child_options(self, opts)
        key = random.RandomPassword(f"{name}-secret-key", length=48, special=False, opts=child)
        self.secret_key = pulumi.Output.secret(key.result)
        volume = data_volume(f"{name}-data", "webui", protect=args["protect"], labels=args["labels"], opts=child)
        publish = []
        if "publish_address" in args:
            publish = [Publish(PORT, args.get("publish_port", PORT), args["publish_address"])]
        env = {
            "OLLAMA_BASE_URLS": ";".join(args["ollama_urls"]),
            "ENABLE_OLLAMA_API": "True",
            "ENABLE_OPENAI_API": "False",
            "WEBSOCKET_MANAGER": "redis",
            "ENABLE_WEBSOCKET_SUPPORT": "True",
            "ENABLE_SIGNUP": "False",
            "DEFAULT_USER_ROLE": "pending",
            # Env stays authoritative: a setting changed in the UI does not
            # silently outlive the stack config.
            "ENABLE_PERSISTENT_CONFIG": "False",
            "WEBUI_NAME": args["name"],
            "WEBUI_ADMIN_EMAIL": args["admin_email"],
            "WEBUI_ADMIN_NAME": args["admin_name"],
            "DATA_DIR": "/app/backend/data",
            "ANONYMIZED_TELEMETRY": "False",
            "DO_NOT_TRACK": "True",
            "SCARF_NO_ANALYTICS": "True",
            # No model hub downloads at start: the cluster's models come from Ollama.
            "HF_HUB_OFFLINE": "1",
            "OFFLINE_MODE": "True",
        }
        if "public_url" in args:
            env["WEBUI_URL"] = args["public_url"]
        self.container = hardened_container(
            name,
            ServiceContainer(
                service="webui",
                image=args["image"],
                networks=[
                    NetworkAttachment(net, aliases=[ALIAS] if i == 0 else []) for i, net in enumerate(args["networks"])
                ],
                # The image's own start command, behind the secret-env loader.
                command=["bash", "start.sh"],
                env=env,
                secret_env={
                    "DATABASE_URL": pulumi.Output.secret(args["database_url"]),
                    "REDIS_URL": pulumi.Output.secret(args["redis_url"]),
                    "WEBSOCKET_REDIS_URL": pulumi.Output.secret(args["redis_url"]),
                    "WEBUI_SECRET_KEY": self.secret_key,
                    "WEBUI_ADMIN_PASSWORD": pulumi.Output.secret(args["admin_password"]),
                },
                mounts=[Mount(volume=volume.name, target="/app/backend/data")],
                tmpfs={"/tmp": "rw,nosuid,size=256m"},
                publish=publish,
                # Open WebUI writes into its own install tree at start (static
                # assets, caches) and runs as root: the root filesystem stays
                # writable, every capability is still dropped.
                read_only_root=False,
                user=None,
                healthcheck=Healthcheck(
                    ["CMD-SHELL", f"curl --fail --silent --max-time 4 http://127.0.0.1:{PORT}/health || exit 1"],
                    start_period_s=120,
                ),
                memory_mb=args["memory_mb"],
                cpus=args["cpus"],
                labels=args["labels"],
            ),
            child,
        )
        self.url = f"http://{ALIAS}:{PORT}"
        self.register_outputs({"url": self.url, "volume": volume.name})
