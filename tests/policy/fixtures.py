"""Compliant fixtures, one per resource kind, shaped as the engine shows them to policies.

Each is a `Subject` built from what the real program registers (camelCase
inputs, numbers as floats, provider inputs that are lists as JSON text), so a
test can break exactly one property of one resource and see which rules fire.
`dev_stack()` and `prod_stack()` hold one of each kind; untouched, no rule fires
on either.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from policies.harness import Subject

CONTAINER = "docker:index/container:Container"
REMOTE_IMAGE = "docker:index/remoteImage:RemoteImage"
VOLUME = "docker:index/volume:Volume"
NETWORK = "docker:index/network:Network"
PROVIDER = "pulumi:providers:docker"
LOCAL_COMMAND = "command:local:Command"
REMOTE_COMMAND = "command:remote:Command"

DIGEST = "@sha256:" + "5f0e2d1f8b6c3a9e7d4c2b1a0f9e8d7c6b5a4938271605f4e3d2c1b0a9f8e7d6"
MODEL_DIGEST = "a8b0c51577010a279d933d14c2a8ab4b268079d44c5c8830c0a93900f1827c67"
IMAGE_ID = "sha256:" + "ab" * 32
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOd6YHSn/3BbJbUHjczu3IyYXFOYcba26JmJKDnblpKp"


def urn(stack: str, kind: str, name: str, parent: str = "cluster-ai:index:Service") -> str:
    return f"urn:pulumi:{stack}::cluster-ai::{parent}${kind}::{name}"


def _labels(stack: str, service: str, host: str, **extra: str) -> list[dict[str, str]]:
    labels = {
        "cluster-ai.container": service,
        "cluster-ai.host": host,
        "cluster-ai.managed-by": "pulumi",
        "cluster-ai.project": "cluster-ai",
        "cluster-ai.service": service,
        "cluster-ai.stack": stack,
        **extra,
    }
    return [{"label": k, "value": v} for k, v in sorted(labels.items())]


def container_props(
    stack: str,
    service: str,
    *,
    user: str | None = "1000:1000",
    command: list[str] | None = None,
    ports: list[dict[str, Any]] | None = None,
    envs: list[str] | None = None,
    network: str = "local-net",
    host: str = "local",
) -> dict[str, Any]:
    """A container as components/hardened.py declares it."""
    props: dict[str, Any] = {
        "image": IMAGE_ID,
        "capabilities": {"drops": ["ALL"]},
        "securityOpts": ["no-new-privileges:true"],
        "privileged": False,
        "readOnly": True,
        "memory": 512.0,
        "memorySwap": 512.0,
        "cpus": "1",
        "restart": "on-failure",
        "maxRetryCount": 5.0,
        "healthcheck": {
            "tests": ["CMD", "python", "-c", "import urllib.request"],
            "interval": "15s",
            "timeout": "5s",
            "startPeriod": "60s",
            "retries": 5.0,
        },
        "wait": True,
        "waitTimeout": 150.0,
        "logDriver": "json-file",
        "logOpts": {"max-size": "10m", "max-file": "3"},
        "labels": _labels(stack, service, host),
        "networksAdvanced": [{"name": network, "aliases": [service]}],
        "mounts": [{"type": "volume", "source": f"{service}-secrets", "target": "/run/secrets", "readOnly": False}],
        "tmpfs": {"/tmp": "rw,noexec,nosuid,size=256m"},
        "envs": envs if envs is not None else ["HOME=/tmp"],
        "init": True,
        "destroyGraceSeconds": 30.0,
    }
    if user is not None:
        props["user"] = user
    if command is not None:
        props["command"] = command
    if ports:
        props["ports"] = ports
    return props


def port(external: int, internal: int, ip: str) -> dict[str, Any]:
    return {"protocol": "tcp", "ip": ip, "internal": float(internal), "external": float(external)}


def _subject(stack: str, kind: str, name: str, props: dict[str, Any], **options: Any) -> Subject:
    return Subject(urn=urn(stack, kind, name), type=kind, name=name, props=props, **options)


def _ssh_opts(address: str) -> str:
    # The SDK sends a provider's list inputs as JSON text; the engine passes them on as is.
    return json.dumps(
        [
            "-o", "StrictHostKeyChecking=yes",
            "-o", "UserKnownHostsFile=/dev/null",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", f"KnownHostsCommand=/bin/echo {address} {HOST_KEY}",
            "-o", "BatchMode=yes",
            "-i", "~/.ssh/cluster-ai",
            "-p", "22",
        ]
    )  # fmt: skip


def sync_props(stack: str, digest: str | None, *, network: str = "local-net", host: str = "local") -> dict[str, Any]:
    """The Ollama model sync as components/ollama.py declares it: a run-once task container."""
    pins = json.dumps([{"digest": digest, "name": "qwen2.5:0.5b"}], sort_keys=True)
    props = container_props(
        stack,
        "ollama-model-sync",
        user="65534:65534",
        command=["python", "-c", "import sys", "--url", "http://ollama:11434", "--pins", pins],
        network=network,
        host=host,
    )
    for key in ("healthcheck", "wait", "waitTimeout", "maxRetryCount", "mounts"):
        props.pop(key)
    props.update({"restart": "no", "mustRun": False, "attach": True, "logs": True})
    props["networksAdvanced"] = [{"name": network}]
    return props


def holder_props(
    stack: str, service: str, name: str, uploads: list[dict[str, Any]], *, host: str = "local"
) -> dict[str, Any]:
    """A service's file holder as components/hardened.py `_file_holder` declares it: created, never started.

    It carries the service's uploads into its secrets/config volumes (the service mounts them
    read-only); it has no network, no user, no CPU limit, no healthcheck and a writable root.
    """
    return {
        "image": IMAGE_ID,
        "start": False,
        "mustRun": False,
        "networkMode": "none",
        "capabilities": {"drops": ["ALL"]},
        "securityOpts": ["no-new-privileges:true"],
        "privileged": False,
        "readOnly": False,
        "restart": "no",
        "memory": 16.0,
        "memorySwap": 16.0,
        "uploads": uploads,
        "mounts": [
            {"type": "volume", "source": f"{name}-secrets", "target": "/run/secrets"},
            {"type": "volume", "source": f"{name}-config", "target": "/etc/cluster-ai"},
        ],
        "labels": _labels(
            stack, service, host, **{"cluster-ai.container": f"{name}-files", "cluster-ai.role": "file-holder"}
        ),
    }


SECRET_UPLOAD = {"file": "/run/secrets/tls.key", "content": "-----BEGIN PRIVATE KEY-----", "permissions": "0444"}


PUBLIC_NETWORK = "cluster-ai-prod-head-public"
EGRESS_SUBJECT = "CN=head-egress,OU=egress,O=cluster-ai"
PROMETHEUS_SUBJECT = "CN=head-prometheus,OU=prometheus,O=cluster-ai"


def edge_caddyfile_text() -> str:
    """A worker edge's Caddyfile: Ollama's inference API for the egress, one metrics route for Prometheus."""
    from components.caddy import Grant, Route, edge_caddyfile, ollama_grants

    return edge_caddyfile(
        [
            Route("/ollama", "ollama:11434", grants=ollama_grants([EGRESS_SUBJECT])),
            Route("/metrics/node", "node-exporter:9100", grants=(Grant((PROMETHEUS_SUBJECT,)),)),
        ]
    )


def ungranted_route_caddyfile() -> str:
    """The edge's Caddyfile with its metrics route's client match taken out: any CA client gets through."""
    line = f'\t\t\tvars {{http.request.tls.client.subject}} "{PROMETHEUS_SUBJECT}"\n'
    text = edge_caddyfile_text()
    assert line in text, "the fixture's metrics route grants Prometheus by subject"
    return text.replace(line, "")


def edge_props(stack: str, caddyfile: str | None = None) -> dict[str, Any]:
    """The edge container with its Caddyfile upload (components/caddy.py `TlsEdge`)."""
    props = container_props(stack, "edge", command=["caddy", "run"], network="gpu1-net", host="gpu1")
    props["uploads"] = [
        {
            "file": "/run/secrets/Caddyfile",
            "content": edge_caddyfile_text() if caddyfile is None else caddyfile,
            "permissions": "0400",
            "owner": "1000",
            "group": "1000",
        }
    ]
    return props


def dev_stack() -> dict[str, Subject]:
    """One compliant resource of each kind, in a dev stack (one local Docker host)."""
    stack = "dev"
    provider = _subject(stack, PROVIDER, "local-docker", {"host": "unix:///var/run/docker.sock"})
    on = {"provider": provider.urn}
    scheduler_command = ["dask", "scheduler", "--host", "0.0.0.0", "--port", "8786", "--dashboard-address", ":8787"]
    return {
        "provider": provider,
        "network": _subject(stack, NETWORK, "local-net", {"driver": "bridge", "labels": []}, **on),
        "image": _subject(
            stack, REMOTE_IMAGE, "postgres-image", {"name": "postgres:16.6-bookworm", "keepLocally": True}, **on
        ),
        "volume": _subject(
            stack,
            VOLUME,
            "postgres-data",
            {"labels": _labels(stack, "postgres", "local", **{"cluster-ai.volume": "data"})},
            **on,
        ),
        "scheduler": _subject(
            stack,
            CONTAINER,
            "dask-scheduler",
            container_props(
                stack,
                "dask-scheduler",
                command=scheduler_command,
                ports=[port(8786, 8786, "127.0.0.1"), port(8787, 8787, "127.0.0.1")],
            ),
            **on,
        ),
        "worker": _subject(
            stack,
            CONTAINER,
            "dask-workers-local-0",
            {
                **container_props(stack, "dask-worker", command=["dask", "worker", "tcp://scheduler:8786"]),
                "gpus": "device=0",
            },
            **on,
        ),
        "webui": _subject(
            stack,
            CONTAINER,
            "webui",
            container_props(stack, "webui", ports=[port(3000, 8080, "127.0.0.1")], envs=["WEBUI_NAME=Cluster AI"]),
            **on,
        ),
        "proxy": _subject(
            stack,
            CONTAINER,
            "proxy",
            container_props(
                stack, "proxy", user="1000:1000", ports=[port(443, 8443, "192.0.2.10"), port(80, 8080, "192.0.2.10")]
            ),
            **on,
        ),
        "sync": _subject(stack, CONTAINER, "ollama-local-model-sync", sync_props(stack, MODEL_DIGEST), **on),
        # The scheduler's holder: a service with no exemption, so every rule a holder is spared shows.
        "holder": _subject(
            stack,
            CONTAINER,
            "dask-scheduler-files",
            holder_props(stack, "dask-scheduler", "dask-scheduler", [dict(SECRET_UPLOAD)]),
            **on,
        ),
    }


def prod_stack() -> dict[str, Subject]:
    """One compliant resource of each kind, in prod: SSH, digests, mutual TLS, protected data."""
    stack = "prod"
    provider = _subject(
        stack, PROVIDER, "gpu1-docker", {"host": "ssh://cluster-ai@192.0.2.11:22", "sshOpts": _ssh_opts("192.0.2.11")}
    )
    on = {"provider": provider.urn}
    tls = [
        "--tls-ca-file",
        "/run/secrets/ca.pem",
        "--tls-cert",
        "/run/secrets/tls.crt",
        "--tls-key",
        "/run/secrets/tls.key",
    ]
    scheduler_command = [
        "dask", "scheduler", "--host", "0.0.0.0", "--port", "8786", "--dashboard-address", ":8787",
        "--protocol", "tls", *tls, "--dashboard-prefix", "dask",
    ]  # fmt: skip
    worker_command = [
        "dask", "worker", "tls://192.0.2.10:8786", "--name", "dask-workers-gpu1-0",
        "--listen-address", "tls://0.0.0.0:8790", "--contact-address", "tls://192.0.2.11:8790", *tls,
    ]  # fmt: skip
    connection = {"host": "192.0.2.11", "port": 22.0, "user": "cluster-ai", "hostKey": HOST_KEY, "privateKey": "KEY"}
    return {
        "provider": provider,
        "image": _subject(stack, REMOTE_IMAGE, "ollama-gpu1-image", {"name": "ollama/ollama:0.13.5" + DIGEST}, **on),
        "volume": _subject(
            stack,
            VOLUME,
            "ollama-gpu1-models",
            {"labels": _labels(stack, "ollama", "gpu1", **{"cluster-ai.volume": "data"})},
            protect=True,
            **on,
        ),
        "scheduler": _subject(
            stack,
            CONTAINER,
            "dask-scheduler",
            container_props(
                stack,
                "dask-scheduler",
                command=scheduler_command,
                ports=[port(8786, 8786, "192.0.2.10")],
                network="head-net",
                host="head",
            ),
            **on,
        ),
        "worker": _subject(
            stack,
            CONTAINER,
            "dask-workers-gpu1-0",
            {
                **container_props(
                    stack,
                    "dask-worker",
                    command=worker_command,
                    ports=[port(8790, 8790, "192.0.2.11")],
                    network="gpu1-net",
                    host="gpu1",
                ),
                "gpus": "device=0",
            },
            **on,
        ),
        "webui": _subject(
            stack,
            CONTAINER,
            "webui",
            container_props(
                stack,
                "webui",
                envs=["OLLAMA_BASE_URLS=http://egress:11500;http://egress:11501", "WEBUI_URL=https://ai.example.com"],
                network=PUBLIC_NETWORK,
                host="head",
            ),
            **on,
        ),
        # The head's public network (components/host.py), found by its purpose label.
        "public-network": _subject(
            stack,
            NETWORK,
            "head-public",
            {
                "name": PUBLIC_NETWORK,
                "driver": "bridge",
                "internal": False,
                "labels": [
                    {"label": "cluster-ai.network", "value": "public"},
                    {"label": "cluster-ai.stack", "value": stack},
                ],
            },
            **on,
        ),
        # A worker host's TLS edge: its Caddyfile, as components/caddy.py writes it, among its uploads.
        "edge": _subject(stack, CONTAINER, "edge-gpu1", edge_props(stack), **on),
        "sync": _subject(
            stack,
            CONTAINER,
            "ollama-gpu1-model-sync",
            sync_props(stack, MODEL_DIGEST, network="gpu1-net", host="gpu1"),
            **on,
        ),
        # The scheduler's certificates travel in its file holder (prod rules skip a holder's missing command).
        "holder": _subject(
            stack,
            CONTAINER,
            "dask-scheduler-files",
            holder_props(stack, "dask-scheduler", "dask-scheduler", [dict(SECRET_UPLOAD)], host="head"),
            **on,
        ),
        "drain": _subject(
            stack,
            REMOTE_COMMAND,
            "dask-workers-gpu1-drain",
            {
                "create": "echo 'cluster-ai: 1 worker(s) of dask-workers-gpu1 will be retired before removal'",
                "delete": "timeout 120 docker exec \"$(docker ps -q)\" python -c 'print(1)'",
                "connection": {**connection, "host": "192.0.2.10"},
            },
        ),
    }


Mutation = Callable[[dict[str, Any]], None]


def broken(stack: dict[str, Subject], key: str, mutate: Mutation, **options: Any) -> list[Subject]:
    """The fixture stack with one resource's props changed by `mutate` (and options replaced)."""
    subjects = dict(stack)
    subject = subjects[key]
    props = copy.deepcopy(dict(subject.props))
    mutate(props)
    subjects[key] = replace(subject, props=props, **options)
    return list(subjects.values())
