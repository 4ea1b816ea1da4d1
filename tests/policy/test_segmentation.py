"""The least-privilege rules beyond their breaking cases (tests/policy/test_rules.py):
per-route client rules at the TLS edges, and who joins the head's public network."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from components.caddy import Grant, Route, edge_caddyfile
from policies.harness import PolicyConfig, Report, Subject, run
from policies.segmentation import parse_caddyfile, route_problems
from tests.policy.fixtures import (
    PUBLIC_NETWORK,
    broken,
    edge_caddyfile_text,
    edge_props,
    holder_props,
    prod_stack,
    ungranted_route_caddyfile,
)

EDGE_RULE = "edge-routes-name-their-clients"
PUBLIC_RULE = "only-front-services-on-public-network"


def _violations(report: Report, rule: str) -> list[str]:
    return [v.message for v in report.violations if v.rule == rule]


def _edge_with(caddyfile: str) -> Report:
    def mutate(props: dict[str, Any]) -> None:
        props["uploads"] = edge_props("prod", caddyfile)["uploads"]

    return run(broken(prod_stack(), "edge", mutate), config=PolicyConfig.parse({}))


def test_the_programs_edge_caddyfile_has_no_route_problem() -> None:
    assert route_problems(edge_caddyfile_text()) == []


def test_an_edge_that_does_not_require_client_certificates_fires() -> None:
    found = _violations(_edge_with(edge_caddyfile_text().replace("require_and_verify", "verify_if_given")), EDGE_RULE)
    assert found == ["edge-gpu1 (edge): no site requires and verifies a client certificate from a trusted CA."], found


def test_a_route_without_its_403_fallback_fires() -> None:
    text = edge_caddyfile_text().replace('respond "forbidden for this client certificate" 403', 'respond "ok" 200')
    found = _violations(_edge_with(text), EDGE_RULE)
    assert any("does not answer 403 to the CA's other clients" in m for m in found), found


def test_a_proxy_outside_the_granted_handlers_fires() -> None:
    """`handle_path /metrics/node* { reverse_proxy ... }` beside the grants: every CA client reaches it."""
    text = edge_caddyfile_text().replace(
        '\t\thandle {\n\t\t\trespond "forbidden',
        '\t\treverse_proxy node-exporter:9100\n\t\thandle {\n\t\t\trespond "forbidden',
        1,
    )
    assert text != edge_caddyfile_text()
    found = _violations(_edge_with(text), EDGE_RULE)
    assert any("proxies outside the handlers of its named clients" in m for m in found), found


def test_a_site_level_proxy_fires() -> None:
    text = edge_caddyfile_text().replace("\trespond 404\n}", "\treverse_proxy ollama:11434\n}")
    found = _violations(_edge_with(text), EDGE_RULE)
    assert any("proxies outside any route" in m for m in found), found


def test_an_edge_without_a_caddyfile_fires() -> None:
    def mutate(props: dict[str, Any]) -> None:
        props.pop("uploads")

    report = run(broken(prod_stack(), "edge", mutate), config=PolicyConfig.parse({}))
    assert _violations(report, EDGE_RULE) == [
        "edge-gpu1 (edge) carries no Caddyfile (nor does edge-gpu1-files): its routes cannot be checked."
    ]


def _edge_and_holder(holder_uploads: list[dict[str, Any]], **holder_changes: Any) -> tuple[list[Subject], Subject]:
    """The prod fixtures with the edge's uploads moved to a `<edge>-files` holder, as the program declares it."""
    fixtures = prod_stack()
    edge = fixtures["edge"]
    props = {k: v for k, v in edge.props.items() if k != "uploads"}
    holder_props_ = {**holder_props("prod", "edge", edge.name, holder_uploads, host="gpu1"), **holder_changes}
    holder = replace(edge, urn=edge.urn.replace("::edge-gpu1", "::edge-gpu1-files"), name="edge-gpu1-files",
                     props=holder_props_)  # fmt: skip
    return [*(s for k, s in fixtures.items() if k != "edge"), replace(edge, props=props), holder], edge


@pytest.mark.parametrize(("caddyfile", "fires"), [(edge_caddyfile_text(), False), (ungranted_route_caddyfile(), True)])
def test_the_caddyfile_is_read_from_the_edges_file_holder(caddyfile: str, fires: bool) -> None:
    """Uploads travel in a never-started `<edge>-files` container that the edge mounts from."""
    subjects, edge = _edge_and_holder(edge_props("prod", caddyfile)["uploads"])
    report = run(subjects, config=PolicyConfig.parse({}))
    found = _violations(report, EDGE_RULE)
    assert bool(found) is fires, found
    assert all(v.urn == edge.urn for v in report.violations if v.rule == EDGE_RULE), "the edge is named, not its holder"
    assert report.fired() == ({EDGE_RULE} if fires else set()), report.violations


def test_a_started_edge_labelled_as_a_holder_is_still_checked_as_an_edge() -> None:
    """The holder label is no exemption: a container that runs is an edge, whatever it calls itself."""
    subjects, _ = _edge_and_holder(edge_props("prod", ungranted_route_caddyfile())["uploads"], start=True)
    report = run(subjects, config=PolicyConfig.parse({}))
    holder_urn = next(s.urn for s in subjects if s.name == "edge-gpu1-files")
    found = [v for v in report.violations if v.rule == EDGE_RULE and v.urn == holder_urn]
    assert any("names no client certificate subject it serves" in v.message for v in found), report.violations


def test_the_parser_reads_blocks_and_refuses_unbalanced_braces() -> None:
    root = parse_caddyfile(edge_caddyfile([Route("/metrics/x", "x:1", grants=(Grant(("CN=a",)),))]))
    sites = [b.head for b in root.blocks(":8443")]
    assert sites == [":8443"], root
    (route,) = root.blocks(":8443")[0].blocks("handle_path")
    assert route.head == "handle_path /metrics/x*" and [b.head for b in route.blocks("handle")] == [
        "handle @route0_grant0",
        "handle",
    ]
    with pytest.raises(ValueError, match="left open"):
        parse_caddyfile(":8443 {\n\thandle {\n")
    assert route_problems(":8443 {\n}\n}\n") == ["its Caddyfile does not parse (line 3: `}` closes nothing)"]


@pytest.mark.parametrize("service", ["proxy", "webui", "grafana", "blackbox-exporter"])
def test_front_services_may_join_the_public_network(service: str) -> None:
    def mutate(props: dict[str, Any]) -> None:
        props["labels"] = [
            {**entry, "value": service} if entry["label"] == "cluster-ai.service" else entry
            for entry in props["labels"]
        ]
        props["networksAdvanced"] = [{"name": PUBLIC_NETWORK}]

    report = run(broken(prod_stack(), "scheduler", mutate), config=PolicyConfig.parse({}))
    assert _violations(report, PUBLIC_RULE) == [], service


@pytest.mark.parametrize("service", ["prometheus", "egress", "postgres", "loki", "alertmanager"])
def test_internal_services_on_the_public_network_fire(service: str) -> None:
    def mutate(props: dict[str, Any]) -> None:
        props["labels"] = [
            {**entry, "value": service} if entry["label"] == "cluster-ai.service" else entry
            for entry in props["labels"]
        ]
        props["networksAdvanced"] = [{"name": "head-net"}, {"name": PUBLIC_NETWORK}]

    report = run(broken(prod_stack(), "scheduler", mutate), config=PolicyConfig.parse({}))
    found = _violations(report, PUBLIC_RULE)
    assert len(found) == 1 and f"({service}) joins the public network {PUBLIC_NETWORK}" in found[0], found


def test_a_network_is_public_by_its_label_not_its_name() -> None:
    """Relabelled, the network named `...-public` is not the public one: the label decides."""

    def join(props: dict[str, Any]) -> None:
        props["networksAdvanced"] = [{"name": PUBLIC_NETWORK}]

    def relabel(props: dict[str, Any]) -> None:
        props["labels"] = [{"label": "cluster-ai.network", "value": "data"}]

    joined = {s.name: s for s in broken(prod_stack(), "scheduler", join)}
    assert _violations(run(list(joined.values()), config=PolicyConfig.parse({})), PUBLIC_RULE), "labelled: public"
    fixtures = {**prod_stack(), "scheduler": joined["dask-scheduler"]}
    relabelled = broken(fixtures, "public-network", relabel)
    assert _violations(run(relabelled, config=PolicyConfig.parse({})), PUBLIC_RULE) == []
