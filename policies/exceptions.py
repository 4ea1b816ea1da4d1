"""The pack's config: every exception the cluster needs, keyed on the service label, with its reason.

This is the PolicyPack's `initial_config`; a user's `--policy-pack-config` file
replaces a rule's key wholesale (set `"exemptions": {}` to withdraw them all).
Every exception names the `cluster-ai.service` label it applies to and says why
that service cannot do without it. Nothing here widens a rule for every service.
"""

from __future__ import annotations

from typing import Any

STRICT_STACKS = ["prod"]
"""Stacks the prod rules apply to (the stack name in each resource's URN)."""

PACK_CONFIG: dict[str, dict[str, Any]] = {
    "containers-run-as-non-root": {
        "exemptions": {
            "webui": {
                "reason": "The Open WebUI image runs as root and writes into its own install tree at start; "
                "every capability is dropped and no-new-privileges is set, so root owns nothing else.",
            },
            "ollama": {
                "reason": "The Ollama image keeps its models and identity key under root-owned /root/.ollama; "
                "it runs with every capability dropped and no-new-privileges.",
            },
            "proxy": {
                "reason": "The Caddy image keeps its ACME account and certificates under root-owned /data; "
                "it listens on high ports inside the container with every capability dropped.",
            },
            "cadvisor": {
                "reason": "cAdvisor reads every container's cgroup files, which are root-owned; it runs with "
                "every capability dropped and its host paths mounted read-only.",
            },
            "alloy": {
                "reason": "The log shipper reads Docker's json-file logs, which the engine writes root-owned "
                "0640; it runs with every capability dropped and the log directory mounted read-only.",
            },
            "dcgm-exporter": {
                "reason": "DCGM talks to the NVIDIA driver as root to read GPU counters; every capability is "
                "dropped (device fields only: no profiling field, so no SYS_ADMIN).",
            },
        },
    },
    "root-filesystem-read-only": {
        "exemptions": {
            "webui": {
                "reason": "Open WebUI writes static assets and caches into its install tree at start; its data "
                "lives on a volume and its secrets in /run/secrets, every capability is dropped.",
            },
        },
    },
    "host-pid-namespace-not-shared": {
        "exemptions": {
            "node-exporter": {
                "reason": "The node exporter reports the host's processes (procs_running, procs_blocked) from "
                "the host's /proc, which it only sees in the host PID namespace.",
            },
        },
    },
    "sensitive-host-paths-not-mounted": {
        "exemptions": {
            "node-exporter": {
                "reason": "The node exporter reads filesystem usage through the host's root, mounted read-only "
                "(never writable) at /host with /run and /var/run (the engine's socket) masked, as nobody.",
                "paths": ["/"],
            },
            "cadvisor": {
                "reason": "cAdvisor reads per-container CPU, memory and I/O from the host's /sys cgroup tree, "
                "mounted read-only.",
                "paths": ["/sys"],
            },
            "alloy": {
                "reason": "Container logs are shipped from the json-file logs under /var/lib/docker/containers, "
                "mounted read-only, instead of through the Docker socket (CIS 5.32).",
                "paths": ["/var/lib/docker/containers"],
            },
        },
    },
    # No exemption: DCGM collects device fields only, which need no SYS_ADMIN.
    "capabilities-restricted": {"exemptions": {}},
    "host-devices-not-exposed": {
        "gpuServices": {
            "dask-worker": "Dask workers run GPU tasks; each gets its own GPU by device id (one worker per GPU).",
            "ollama": "Ollama loads and runs its models on the host's GPUs (all of them, shared by its requests).",
            "dcgm-exporter": "DCGM reads every GPU's health and utilisation counters.",
        },
    },
    "privileged-ports-not-mapped": {
        "exemptions": {
            "proxy": {
                "reason": "The public entry serves HTTPS on 443 and, on 80, the HTTP->HTTPS redirect and ACME "
                "HTTP-01 challenges; inside the container Caddy listens on 8443/8080 without NET_BIND_SERVICE.",
                "ports": [80, 443],
            },
        },
    },
    "only-proxy-publishes-publicly": {
        "publicServices": {
            "proxy": "The cluster's one public entry: TLS on 443 (ACME or the internal CA) and the redirect on 80.",
        },
        "clusterServices": {
            "edge": "Each remote host's TLS edge, reached by the head across hosts; it demands a client "
            "certificate from the internal CA and the host firewall admits only the cluster's hosts.",
            "dask-scheduler": "Remote workers and clients reach the scheduler on tls:// with mutual TLS; the "
            "head's firewall admits only the cluster's hosts.",
            "dask-worker": "The scheduler and other workers reach a remote worker on tls:// with mutual TLS on its "
            "host's address; the firewall admits only the cluster's hosts.",
        },
    },
    "images-pinned-by-digest-in-prod": {"strictStacks": STRICT_STACKS},
    "models-pinned-by-digest-in-prod": {"strictStacks": STRICT_STACKS},
    "data-volumes-protected-in-prod": {"strictStacks": STRICT_STACKS},
    "dask-on-tls-in-prod": {"strictStacks": STRICT_STACKS},
    "encrypted-transport-in-prod": {"strictStacks": STRICT_STACKS},
}
