"""Who sits on which Docker network in a plan, and what each container can reach there.

Read from the plan alone: each network's purpose is its `cluster-ai.network`
label (components/host.py), each container's attachments and DNS aliases its
`networksAdvanced`. A container that joins no network (the never-started file
holders that carry uploads) is left out.
"""

from __future__ import annotations

from stacks.mocks import Evaluation, Resource

CONTAINER = "docker:index/container:Container"
NETWORK = "docker:index/network:Network"
NODES = ("cluster-ai:index:HeadNode", "cluster-ai:index:WorkerNode")


def _labels(r: Resource) -> dict[str, str]:
    return {entry["label"]: entry["value"] for entry in r.plain_inputs().get("labels", [])}


def purposes(ev: Evaluation) -> dict[str, tuple[str, str]]:
    """Docker network name -> (host, purpose)."""
    out = {}
    for net in ev.by_type(NETWORK):
        labels = _labels(net)
        # `<host>-net` / `<host>-<purpose>`: the resource name starts with the host's name.
        host = net.name.rsplit("-", 1)[0]
        out[net.plain_inputs()["name"]] = (host, labels["cluster-ai.network"])
    return out


def attachments(ev: Evaluation) -> dict[str, dict[str, list[str]]]:
    """Container name -> {network purpose: its aliases there}, for containers on some network."""
    names = purposes(ev)
    out: dict[str, dict[str, list[str]]] = {}
    for c in ev.by_type(CONTAINER):
        joined = c.plain_inputs().get("networksAdvanced", [])
        if joined:
            out[c.name] = {names[n["name"]][1]: list(n.get("aliases") or []) for n in joined}
    return out


def host_of(c: Resource) -> str:
    return _labels(c)["cluster-ai.host"]


def reachable_aliases(ev: Evaluation, name: str) -> set[str]:
    """Every DNS alias another container of the same host carries on a network `name` joins."""
    containers = {c.name: c for c in ev.by_type(CONTAINER)}
    nets = attachments(ev)
    mine = set(nets[name])
    host = host_of(containers[name])
    return {
        alias
        for other, joined in nets.items()
        if other != name and host_of(containers[other]) == host
        for purpose, aliases in joined.items()
        if purpose in mine
        for alias in aliases
    }


def dials(ev: Evaluation, client: str, alias: str) -> bool:
    """Can `client` resolve and reach `alias` (a container on a shared network carries it)?"""
    return alias in reachable_aliases(ev, client)


def node_of(ev: Evaluation, r: Resource) -> Resource | None:
    """The node component `r` sits under, if any (a linear walk per call: tests only)."""
    by_urn = {x.urn: x for x in ev}
    parent = by_urn.get(r.parent or "")
    while parent is not None:
        if parent.type in NODES:
            return parent
        parent = by_urn.get(parent.parent or "")
    return None
