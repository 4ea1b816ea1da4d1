"""Open WebUI: the chat UI, on PostgreSQL and Redis, talking to every Ollama.

The environment is what Open WebUI 0.12 reads (open_webui/env.py and config.py of
the pinned release; tests/integration/test_webui_real.py runs that release with
exactly this environment). Every variable is read by Open WebUI itself unless its
comment names the dependency that reads it.
"""

from __future__ import annotations

import ipaddress
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
    generated_options,
    hardened_container,
)

PORT = 8080
ALIAS = "webui"
DATA_DIR = "/app/backend/data"
# The image's start command (backend/start.sh): it runs
# `uvicorn open_webui.main:app --host 0.0.0.0 --port 8080 --forwarded-allow-ips '*'`
# in /app/backend, and generates a secret key only when WEBUI_SECRET_KEY is unset.
START_COMMAND = ("bash", "start.sh")


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
        key = random.RandomPassword(f"{name}-secret-key", length=48, special=False, opts=generated_options(self))
        self.secret_key = pulumi.Output.secret(key.result)
        volume = data_volume(f"{name}-data", "webui", protect=args["protect"], labels=args["labels"], opts=child)
        publish = []
        if "publish_address" in args:
            publish = [Publish(PORT, args.get("publish_port", PORT), args["publish_address"])]
        env = webui_env(args)
        self.container = hardened_container(
            name,
            ServiceContainer(
                service="webui",
                image=args["image"],
                networks=[
                    NetworkAttachment(net, aliases=[ALIAS] if i == 0 else []) for i, net in enumerate(args["networks"])
                ],
                # The image's own start command, behind the secret-env loader.
                command=list(START_COMMAND),
                env=env,
                secret_env={
                    "DATABASE_URL": pulumi.Output.secret(args["database_url"]),
                    "REDIS_URL": pulumi.Output.secret(args["redis_url"]),
                    "WEBUI_SECRET_KEY": self.secret_key,
                    "WEBUI_ADMIN_PASSWORD": pulumi.Output.secret(args["admin_password"]),
                },
                mounts=[Mount(volume=volume.name, target=DATA_DIR)],
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


def local_origin(address: str, port: int) -> str:
    """The browser origin of a port published on `address`: `http://127.0.0.1:3000`, `http://[::1]:3000`."""
    host = ipaddress.ip_address(address)
    return f"http://[{host}]:{port}" if host.version == 6 else f"http://{host}:{port}"


def webui_env(args: OpenWebUIArgs) -> dict[str, str]:
    """The plain (non-secret) environment: what Open WebUI 0.12 reads, and nothing else.

    Secrets (DATABASE_URL, REDIS_URL, WEBUI_SECRET_KEY, WEBUI_ADMIN_PASSWORD) come
    through the secret-env loader, never through this mapping.
    """
    env = {
        "OLLAMA_BASE_URLS": ";".join(args["ollama_urls"]),
        "ENABLE_OLLAMA_API": "True",
        "ENABLE_OPENAI_API": "False",
        # Socket.IO sessions in Redis (REDIS_URL; WEBSOCKET_REDIS_URL defaults to it).
        "WEBSOCKET_MANAGER": "redis",
        "ENABLE_WEBSOCKET_SUPPORT": "True",
        # The admin account is created at the first start from these and
        # WEBUI_ADMIN_PASSWORD (only while no user exists); nobody signs up.
        "WEBUI_ADMIN_EMAIL": args["admin_email"],
        "WEBUI_ADMIN_NAME": args["admin_name"],
        "ENABLE_SIGNUP": "False",
        "DEFAULT_USER_ROLE": "pending",
        # Env stays authoritative: with persistence off, a setting changed in the
        # admin UI lives in that process only and is gone at the next start.
        "ENABLE_PERSISTENT_CONFIG": "False",
        "WEBUI_NAME": args["name"],
        "DATA_DIR": DATA_DIR,
        # No model hub downloads: the cluster's models come from Ollama.
        "OFFLINE_MODE": "True",
        # Read by huggingface_hub when it is imported (OFFLINE_MODE sets it too,
        # but only once open_webui.env runs).
        "HF_HUB_OFFLINE": "1",
        # Read by chromadb (Open WebUI's default vector store): no product telemetry.
        "ANONYMIZED_TELEMETRY": "False",
        # Read by huggingface_hub: no telemetry.
        "DO_NOT_TRACK": "True",
    }
    if "public_url" in args:
        # Behind the TLS proxy: the one origin browsers use, and cookies sent over TLS only.
        env["WEBUI_URL"] = args["public_url"]
        env["CORS_ALLOW_ORIGIN"] = args["public_url"]
        if args["public_url"].startswith("https://"):
            env["WEBUI_AUTH_COOKIE_SECURE"] = "True"
            env["WEBUI_SESSION_COOKIE_SECURE"] = "True"
    elif "publish_address" in args:
        # Dev: the published port is the only origin (Open WebUI's default is `*`).
        env["CORS_ALLOW_ORIGIN"] = local_origin(args["publish_address"], args.get("publish_port", PORT))
    return env
