"""The prod stack, its hosts moved onto loopback addresses, for tests that run it for real.

A multi-host stack requires IP addresses; the whole 127.0.0.0/8 is loopback on
Linux, so the head and two GPU nodes get 127.0.0.1, 127.0.0.2 and 127.0.0.3:
every address the program writes into a command line, a certificate or a
Caddyfile is then one this machine answers on. Everything else is
`Pulumi.prod.yaml` as shipped, except `environment`: the schema refuses a prod
host on a loopback address (prod's root bootstrap and drop-policy firewall would
run on the machine running Pulumi), so the plan is evaluated as a multi-host dev
stack, which declares the same TLS edges, egress, proxy and Dask-over-TLS
command lines (only volume protection and the strict pin checks differ). The GPU nodes' memory keeps each Dask worker's
limit (what is left after Ollama's 32 GB) below this machine's RAM, which
distributed would otherwise cap.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from infra.config import NAMESPACE, Images, parse_image
from stacks.mocks import Evaluation
from stacks.plan import evaluate_stack

HEAD = "127.0.0.1"
GPU_NODES = {"gpu1": "127.0.0.2", "gpu2": "127.0.0.3"}
# Shaped like Pulumi.prod.yaml's; under the SDK's mocks the key file is not read.
SSH = {
    "user": "cluster-ai",
    "privateKeyPath": "~/.ssh/cluster-ai",
    "hostKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOd6YHSn/3BbJbUHjczu3IyYXFOYcba26JmJKDnblpKp",
}
HOSTS: list[dict[str, Any]] = [
    {"name": "head", "address": HEAD, "roles": ["head"], "cpus": 16, "memoryGb": 64, "ssh": SSH},
    *(
        {"name": name, "address": address, "roles": ["worker"], "cpus": 8, "memoryGb": 48, "gpus": 2, "ssh": SSH}
        for name, address in GPU_NODES.items()
    ),
]


def loopback_prod(**config: Any) -> Evaluation:
    """The prod plan with the loopback hosts; `config` overrides other keys (`proxy={...}`)."""
    overrides = {f"{NAMESPACE}:hosts": json.dumps(HOSTS), f"{NAMESPACE}:environment": "dev"}
    overrides.update({f"{NAMESPACE}:{key}": json.dumps(value) for key, value in config.items()})
    return evaluate_stack("prod", overrides=overrides)


def test_digest(reference: str) -> str:
    """A digest for tests only: sha256 of the reference's text. Test data, never a claim
    about what any registry serves."""
    return "sha256:" + hashlib.sha256(reference.encode()).hexdigest()


def as_locked(config: Mapping[str, str]) -> dict[str, str]:
    """A stack's flat config with every unpinned image pinned by a test digest, as
    `python -m stacks lock` would leave it (the shipped Pulumi.prod.yaml carries no
    made-up digests, so the plan refuses it until it is locked)."""
    key = f"{NAMESPACE}:images"
    images = json.loads(config.get(key) or "{}")
    merged = {k: images.get(k, ref) for k, ref in Images().items()} | images
    locked = {k: ref if parse_image(ref).digest else f"{ref}@{test_digest(ref)}" for k, ref in merged.items()}
    return {**config, key: json.dumps(locked)}
