"""File holders under the pack: a container that is created and never started is spared the rules
about a running process, and only such a container; every rule about what it holds still applies.

A holder (`<service>-files`, components/hardened.py `_file_holder`) carries a service's
uploads into volumes the service mounts read-only. The fixtures carry one in each stack
(tests/policy/fixtures.py `holder_props`); tests/policy/test_rules.py shows them untouched
and passing. Here each condition of "never started" is broken in turn: the container is
then an ordinary one, and the runtime rules fire on it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from policies.cis import is_file_holder
from policies.harness import Outcome, PolicyConfig, Report, run
from tests.policy.fixtures import broken, dev_stack, port, prod_stack

# What a never-started container is spared: rules about the process it would run.
RUNTIME_RULES = {"containers-run-as-non-root", "cpu-limited", "root-filesystem-read-only", "healthcheck-defined"}
BIND = {"type": "bind", "target": "/host", "readOnly": True}


def _run(subjects: list[Any]) -> Report:
    return run(subjects, config=PolicyConfig.parse({}))


def _fired_on(report: Report, urn: str) -> set[str]:
    return {v.rule for v in report.violations if v.urn == urn}


def _set(**changes: Any) -> Callable[[dict[str, Any]], None]:
    return lambda props: props.update(changes)


def test_the_fixture_holders_are_holders_and_the_services_are_not() -> None:
    for stack in (dev_stack(), prod_stack()):
        holder = stack["holder"]
        assert is_file_holder(holder.props), holder.urn
        for key in ("scheduler", "webui", "sync"):
            assert not is_file_holder(stack[key].props), stack[key].urn


@pytest.mark.parametrize("make", [dev_stack, prod_stack], ids=["dev", "prod"])
def test_an_untouched_holder_passes_every_rule_that_runs_on_it(make: Callable[[], dict[str, Any]]) -> None:
    """Runtime rules reach a verdict on the holder (passed), they do not skip the stack."""
    fixtures = make()
    report = _run(list(fixtures.values()))
    assert _fired_on(report, fixtures["holder"].urn) == set(), report.violations
    for name in RUNTIME_RULES:
        assert report.verdict(name).outcome is Outcome.PASSED, name


# Each breaks one condition of "never started, no network, nothing of the host": the
# runtime rules fire, plus the rule that guards the broken property where there is one.
BREAKING = [
    ("started", _set(start=True), set()),
    ("kept-running", _set(mustRun=True), set()),
    ("restarts", _set(restart="on-failure", maxRetryCount=3.0), set()),
    ("restarts-always", _set(restart="always"), {"restart-policy-bounded"}),
    ("default-network", _set(networkMode="bridge"), {"default-bridge-not-used"}),
    ("user-network", lambda p: (p.pop("networkMode"), p.update(networksAdvanced=[{"name": "local-net"}])), set()),
    ("published", _set(ports=[port(8786, 8786, "127.0.0.1")]), set()),
    ("host-path", lambda p: p["mounts"].append({**BIND, "source": "/srv/files"}), set()),
    ("sensitive-host-path", lambda p: p["mounts"].append({**BIND, "source": "/etc"}),
     {"sensitive-host-paths-not-mounted"}),
    ("docker-socket", lambda p: p["mounts"].append({**BIND, "source": "/var/run/docker.sock"}),
     {"docker-socket-not-mounted"}),
    ("cap-add", _set(capabilities={"drops": ["ALL"], "adds": ["CHOWN"]}), {"capabilities-restricted"}),
    ("privileged", _set(privileged=True), {"no-privileged-containers"}),
]  # fmt: skip


@pytest.mark.parametrize(("mutate", "guard"), [(m, g) for _, m, g in BREAKING], ids=[i for i, _, _ in BREAKING])
def test_a_holder_that_could_run_gets_the_runtime_rules(
    mutate: Callable[[dict[str, Any]], None], guard: set[str]
) -> None:
    fixtures = dev_stack()
    holder = fixtures["holder"]
    subjects = broken(fixtures, "holder", mutate)
    (changed,) = [s for s in subjects if s.urn == holder.urn]
    assert not is_file_holder(changed.props), holder.urn
    assert _fired_on(_run(subjects), holder.urn) == RUNTIME_RULES | guard, holder.urn


def test_a_started_prod_holder_of_the_scheduler_must_speak_tls() -> None:
    """The holder carries the scheduler's label and no command: harmless while it never runs."""
    fixtures = prod_stack()
    holder = fixtures["holder"]
    assert _fired_on(_run(list(fixtures.values())), holder.urn) == set()
    fired = _fired_on(_run(broken(fixtures, "holder", _set(start=True))), holder.urn)
    assert fired == RUNTIME_RULES | {"dask-on-tls-in-prod"}, holder.urn


# What a created container holds is checked on a holder as on any container.
KEPT = [
    ("floating-image", _set(image="ghcr.io/dask/dask"), "images-pinned"),
    ("default-capabilities", _set(capabilities={}), "capabilities-restricted"),
    ("new-privileges", _set(securityOpts=[]), "no-new-privileges"),
    ("seccomp", _set(securityOpts=["no-new-privileges:true", "seccomp=unconfined"]), "default-seccomp-kept"),
    ("host-pid", _set(pidMode="host"), "host-pid-namespace-not-shared"),
    ("supplementary-group", _set(groupAdds=["999"]), "no-supplementary-groups"),
    ("raw-device", _set(devices=[{"hostPath": "/dev/sda", "containerPath": "/dev/sda"}]), "host-devices-not-exposed"),
    ("secret-env", _set(envs=["DB_PASSWORD=hunter2"]), "no-plaintext-secrets-in-env"),
]


@pytest.mark.parametrize(("mutate", "rule"), [(m, r) for _, m, r in KEPT], ids=[i for i, _, _ in KEPT])
def test_a_holder_is_checked_for_what_it_holds(mutate: Callable[[dict[str, Any]], None], rule: str) -> None:
    fixtures = dev_stack()
    holder = fixtures["holder"]
    subjects = broken(fixtures, "holder", mutate)
    (changed,) = [s for s in subjects if s.urn == holder.urn]
    assert is_file_holder(changed.props), f"{holder.urn}: the case must stay a holder"
    assert _fired_on(_run(subjects), holder.urn) == {rule}, holder.urn


# -- the shipped prod graph: its edges' Caddyfiles are in their holders ---------------------------

EDGE_RULE = "edge-routes-name-their-clients"


def _without_subject_matches(text: str) -> str:
    """The Caddyfile with every route's client-subject match taken out: any CA client gets through."""
    from policies.segmentation import SUBJECT_MATCH

    lines = text.splitlines(keepends=True)
    kept = [line for line in lines if not line.strip().startswith(SUBJECT_MATCH)]
    assert len(kept) < len(lines), "the edge's Caddyfile names its clients by subject"
    return "".join(kept)


def test_the_prod_edges_are_checked_through_their_holders() -> None:
    from dataclasses import replace

    from policies.pack import rule
    from stacks.plan import evaluate_stack
    from stacks.policy_check import subjects

    graph = subjects(evaluate_stack("prod"))
    by_name = {s.name: s for s in graph if s.type == "docker:index/container:Container"}
    edge, holder = by_name["edge-gpu1"], by_name["edge-gpu1-files"]
    assert "uploads" not in edge.props and is_file_holder(holder.props), holder.urn
    untouched = run(graph, config=PolicyConfig.parse({}), rules=[rule(EDGE_RULE)])
    assert untouched.verdict(EDGE_RULE).outcome is Outcome.PASSED, untouched.violations

    uploads = [
        {**u, "content": _without_subject_matches(u["content"])} if str(u["file"]).endswith("/Caddyfile") else u
        for u in holder.props["uploads"]
    ]
    edited = [replace(s, props={**s.props, "uploads": uploads}) if s.urn == holder.urn else s for s in graph]
    report = run(edited, config=PolicyConfig.parse({}), rules=[rule(EDGE_RULE)])
    assert {v.urn for v in report.violations} == {edge.urn}, report.violations
    assert any("names no client certificate subject it serves" in v.message for v in report.violations)
