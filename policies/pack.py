"""The pack: every rule, and the PolicyPack `policies/__main__.py` serves.

`build_pack()` is only ever called by `policies/__main__.py` (it starts a gRPC
server and blocks); everything else uses `all_rules()`.
"""

from __future__ import annotations

from typing import Any

from pulumi_policy import EnforcementLevel, PolicyPack

from policies import cis, cluster, isolation, segmentation
from policies.exceptions import PACK_CONFIG
from policies.model import Rule

PACK_NAME = "cluster-ai"
DESCRIPTION = (
    "Cluster AI's policies: the CIS Docker Benchmark v1.6.0 container checks and the cluster's own rules "
    "(only the proxy is public; prod pins digests, protects data and speaks TLS between hosts)."
)


def all_rules() -> list[Rule]:
    """Every rule of the pack, CIS first, in catalogue order."""
    rules = [*cis.RULES, *cluster.RULES, *isolation.RULES, *segmentation.RULES]
    names = [r.name for r in rules]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"rule names must be unique: {duplicates}")
    return rules


def rule(name: str) -> Rule:
    for candidate in all_rules():
        if candidate.name == name:
            return candidate
    raise KeyError(name)


def initial_config() -> dict[str, Any]:
    """The pack's config as the PolicyPack declares it (its exceptions, its strict stacks)."""
    return {name: dict(values) for name, values in PACK_CONFIG.items()}


def build_pack() -> PolicyPack:
    """Serve the pack to the Pulumi engine. Never returns."""
    return PolicyPack(
        name=PACK_NAME,
        policies=[r.to_policy() for r in all_rules()],
        enforcement_level=EnforcementLevel.ADVISORY,
        initial_config=initial_config(),
        description=DESCRIPTION,
        display_name="Cluster AI",
        provider="docker",
        tags=["docker", "cis", "cluster-ai"],
    )
