"""The pack's exceptions: each lets exactly one service do exactly one thing, and withdrawing it bites."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from policies.exceptions import PACK_CONFIG
from policies.harness import PolicyConfig, Report, run
from policies.pack import all_rules, rule
from tests.policy.fixtures import broken, dev_stack, port


def _relabel(service: str) -> Any:
    def mutate(props: dict[str, Any]) -> None:
        for label in props["labels"]:
            if label["label"] in ("cluster-ai.service", "cluster-ai.container"):
                label["value"] = service

    return mutate


def _as(service: str, **changes: Any) -> Any:
    """The dev scheduler fixture, relabelled as `service`, with `changes`."""
    relabel = _relabel(service)

    def mutate(props: dict[str, Any]) -> None:
        relabel(props)
        props.pop("ports", None)
        props.update(changes)

    return mutate


def _report(mutate: Any, config: dict[str, Any] | None = None) -> Report:
    return run(broken(dev_stack(), "scheduler", mutate), config=PolicyConfig.parse(config or {}))


ROOT_MOUNT = {"type": "bind", "source": "/", "target": "/host", "readOnly": True}
# As the node exporter declares it: the host's socket directories masked under its root mount
# (engine-socket-not-reachable refuses the root mount without them).
SOCKET_MASKS = {"/host/run": "rw,noexec,nosuid,size=1m", "/host/var/run": "rw,noexec,nosuid,size=1m"}

# (service, what it does that others may not, the rule whose exception allows it)
GRANTED = [
    ("node-exporter", {"pidMode": "host"}, "host-pid-namespace-not-shared"),
    ("node-exporter", {"mounts": [ROOT_MOUNT], "tmpfs": SOCKET_MASKS}, "sensitive-host-paths-not-mounted"),
    ("dcgm-exporter", {"gpus": "all"}, "host-devices-not-exposed"),
    ("ollama", {"gpus": "all"}, "host-devices-not-exposed"),
    ("webui", {"readOnly": False}, "root-filesystem-read-only"),
    ("webui", {"user": None}, "containers-run-as-non-root"),
    ("ollama", {"user": None}, "containers-run-as-non-root"),
    ("proxy", {"user": None}, "containers-run-as-non-root"),
    ("proxy", {"ports": [port(443, 8443, "192.0.2.10"), port(80, 8080, "192.0.2.10")]}, "privileged-ports-not-mapped"),
]


def _changes(changes: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in changes.items() if v is not None}


def _apply(service: str, changes: dict[str, Any]) -> Any:
    base = _as(service, **_changes(changes))

    def mutate(props: dict[str, Any]) -> None:
        base(props)
        for key, value in changes.items():
            if value is None:
                props.pop(key, None)

    return mutate


@pytest.mark.parametrize(("service", "changes", "rule_name"), GRANTED, ids=[f"{s}-{r}" for s, _, r in GRANTED])
def test_the_exempted_service_may(service: str, changes: dict[str, Any], rule_name: str) -> None:
    report = _report(_apply(service, changes))
    assert report.fired() == set(), [v.message for v in report.violations]


@pytest.mark.parametrize(("service", "changes", "rule_name"), GRANTED, ids=[f"{s}-{r}" for s, _, r in GRANTED])
def test_another_service_may_not(service: str, changes: dict[str, Any], rule_name: str) -> None:
    other = "redis"
    report = _report(_apply(other, changes))
    assert rule_name in report.fired(), f"{other} got {rule_name}'s exception meant for {service}"


@pytest.mark.parametrize(("service", "changes", "rule_name"), GRANTED, ids=[f"{s}-{r}" for s, _, r in GRANTED])
def test_withdrawing_the_exception_in_config_makes_the_rule_fire(
    service: str, changes: dict[str, Any], rule_name: str
) -> None:
    key = "gpuServices" if rule_name == "host-devices-not-exposed" else "exemptions"
    report = _report(_apply(service, changes), {rule_name: {key: {}}})
    assert report.fired() == {rule_name}


def test_an_exempted_host_path_must_stay_read_only() -> None:
    report = _report(_as("node-exporter", mounts=[{**ROOT_MOUNT, "readOnly": False}], tmpfs=SOCKET_MASKS))
    assert report.fired() == {"sensitive-host-paths-not-mounted"}
    assert "may mount host path / only read-only" in report.violations[0].message


def test_dcgm_gets_no_capability_back_not_even_sys_admin() -> None:
    report = _report(_as("dcgm-exporter", capabilities={"drops": ["ALL"], "adds": ["SYS_ADMIN"]}))
    assert report.fired() == {"capabilities-restricted"}
    assert [v.message.split(" adds ")[-1] for v in report.violations] == [
        "capabilities SYS_ADMIN that are not on its allow-list."
    ]


def test_the_proxy_may_publish_only_its_own_privileged_ports() -> None:
    report = _report(_as("proxy", ports=[port(22, 22, "192.0.2.10")]))
    assert "privileged-ports-not-mapped" in report.fired()


def test_every_exception_names_a_rule_and_matches_its_schema() -> None:
    rules = {r.name: r for r in all_rules()}
    for rule_name, config in PACK_CONFIG.items():
        assert rule_name in rules, f"policies/exceptions.py configures unknown rule {rule_name}"
        schema = {"type": "object", "properties": dict(rules[rule_name].config), "additionalProperties": False}
        jsonschema.validate(config, schema)


def test_every_exemption_states_its_reason() -> None:
    for rule_name, config in PACK_CONFIG.items():
        for key, value in config.items():
            if not isinstance(value, dict):
                continue
            for service, grant in value.items():
                reason = grant["reason"] if isinstance(grant, dict) else grant
                assert len(reason.split()) >= 8, f"{rule_name}.{key}.{service}: say why, in a sentence"


def test_the_prod_rules_default_to_the_prod_stack() -> None:
    for name in ("images-pinned-by-digest-in-prod", "dask-on-tls-in-prod"):
        assert rule(name).defaults()["strictStacks"] == ["prod"]
        assert PACK_CONFIG[name]["strictStacks"] == ["prod"]


def test_a_configured_exemption_lets_a_service_listen_on_every_interface() -> None:
    # None is granted by default; a user who wants the proxy on 0.0.0.0 says so, with the reason.
    mutate = _as("proxy", ports=[port(443, 8443, "0.0.0.0")])
    assert _report(mutate).fired() == {"ports-bound-to-an-address"}
    reason = "The head has several public addresses and the proxy answers on all of them."
    config = {"ports-bound-to-an-address": {"exemptions": {"proxy": {"reason": reason}}}}
    assert _report(mutate, config).fired() == set()
