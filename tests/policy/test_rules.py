"""Every rule against fixtures that break exactly one property: it fires, with its message, and no other rule does."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from policies.harness import Outcome, PolicyConfig, Report, Subject, run
from policies.pack import all_rules, rule
from tests.policy.fixtures import (
    PUBLIC_NETWORK,
    broken,
    dev_stack,
    edge_props,
    port,
    prod_stack,
    sync_props,
    ungranted_route_caddyfile,
)


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(props: dict[str, Any]) -> None:
        props[key] = value

    return mutate


def _drop(key: str) -> Callable[[dict[str, Any]], None]:
    def mutate(props: dict[str, Any]) -> None:
        del props[key]

    return mutate


def _append(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(props: dict[str, Any]) -> None:
        props[key] = [*props.get(key, []), value]

    return mutate


def _first_port(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(props: dict[str, Any]) -> None:
        if value is None:
            del props["ports"][0][key]
        else:
            props["ports"][0][key] = value

    return mutate


def _command_without(*words: str) -> Callable[[dict[str, Any]], None]:
    def mutate(props: dict[str, Any]) -> None:
        command = list(props["command"])
        for word in words:
            i = command.index(word)
            del command[i : i + 2]
        props["command"] = command

    return mutate


def _replace_in_command(old: str, new: str) -> Callable[[dict[str, Any]], None]:
    def mutate(props: dict[str, Any]) -> None:
        props["command"] = [new if w == old else w for w in props["command"]]

    return mutate


def _remove_ssh_option(option: str) -> Callable[[dict[str, Any]], None]:
    import json

    def mutate(props: dict[str, Any]) -> None:
        words = json.loads(props["sshOpts"])
        i = next(i for i, w in enumerate(words) if w.startswith(option))
        del words[i - 1 : i + 1]
        props["sshOpts"] = json.dumps(words)

    return mutate


def _connection_without(key: str) -> Callable[[dict[str, Any]], None]:
    def mutate(props: dict[str, Any]) -> None:
        del props["connection"][key]

    return mutate


@dataclass(frozen=True)
class Case:
    """One broken property and the one rule that must catch it."""

    id: str
    rule: str
    stack: str
    resource: str
    mutate: Callable[[dict[str, Any]], None]
    message: str
    options: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)


BIND = {"type": "bind", "target": "/host", "readOnly": True}
ALLOWED_PORTS = rule("only-needed-ports-published").defaults()["allowedPorts"]

CASES = [
    Case("root-user", "containers-run-as-non-root", "dev", "scheduler", _set("user", "0:0"), "runs as root (user '0:0')"),
    Case("image-user", "containers-run-as-non-root", "dev", "scheduler", _drop("user"), "runs as its image's default user"),
    Case("apparmor", "apparmor-profile-kept", "dev", "scheduler", _append("securityOpts", "apparmor=unconfined"),
         "disables AppArmor (security option 'apparmor=unconfined')"),
    Case("selinux", "selinux-labels-kept", "dev", "scheduler", _append("securityOpts", "label:disable"),
         "turns SELinux separation off (security option 'label=disable')"),
    Case("cap-add", "capabilities-restricted", "dev", "scheduler",
         _set("capabilities", {"drops": ["ALL"], "adds": ["NET_ADMIN"]}), "adds capabilities NET_ADMIN"),
    Case("cap-keep", "capabilities-restricted", "dev", "scheduler", _set("capabilities", {}),
         "keeps Docker's default capabilities"),
    Case("privileged", "no-privileged-containers", "dev", "scheduler", _set("privileged", True), "runs privileged"),
    Case("etc", "sensitive-host-paths-not-mounted", "dev", "scheduler",
         _append("mounts", {**BIND, "source": "/etc"}), "mounts sensitive host path /etc at /host"),
    Case("above-docker-data", "sensitive-host-paths-not-mounted", "dev", "scheduler",
         _append("mounts", {**BIND, "source": "/var/lib"}), "mounts sensitive host path /var/lib"),
    Case("legacy-volume", "sensitive-host-paths-not-mounted", "dev", "scheduler",
         _append("volumes", {"hostPath": "/proc", "containerPath": "/host/proc"}), "mounts sensitive host path /proc"),
    Case("sshd", "sshd-not-run", "dev", "webui", _set("command", ["/usr/sbin/sshd", "-D"]), "starts sshd"),
    Case("privileged-port", "privileged-ports-not-mapped", "dev", "scheduler", _first_port("external", 800.0),
         "publishes privileged host port 800 (below 1024)",
         # A user's allow-list replaces the default one: keep the others, let 800 through here.
         config={"only-needed-ports-published": {"allowedPorts": {**ALLOWED_PORTS, "dask-scheduler": [800, 8787]}}}),
    Case("unlisted-port", "only-needed-ports-published", "dev", "webui", _first_port("external", 3100.0),
         "publishes port 3100, not one its service allows (3000)"),
    Case("host-network", "host-network-not-shared", "dev", "scheduler", _set("networkMode", "host"),
         "shares the host's network namespace"),
    Case("no-memory", "memory-limited", "dev", "scheduler", _drop("memory"), "has no memory limit"),
    Case("tiny-memory", "memory-limited", "dev", "scheduler", _set("memory", 4.0), "below Docker's minimum of 6 MB"),
    Case("no-cpus", "cpu-limited", "dev", "scheduler", _drop("cpus"), "has no CPU limit"),
    Case("writable-root", "root-filesystem-read-only", "dev", "scheduler", _set("readOnly", False),
         "has a writable root filesystem"),
    Case("no-address", "ports-bound-to-an-address", "dev", "proxy", _first_port("ip", None),
         "publishes port 443 without an address: Docker binds it on 0.0.0.0"),
    Case("all-interfaces", "ports-bound-to-an-address", "dev", "proxy", _first_port("ip", "0.0.0.0"),
         "publishes port 443 on 0.0.0.0, every interface of the host"),
    Case("publish-all", "ports-bound-to-an-address", "dev", "proxy", _set("publishAllPorts", True),
         "publishes every exposed port on every interface (publishAllPorts)"),
    Case("restart-always", "restart-policy-bounded", "dev", "scheduler", _set("restart", "always"),
         "restarts 'always', without bound"),
    Case("restart-unbounded", "restart-policy-bounded", "dev", "scheduler", _set("maxRetryCount", 0.0),
         "restarts on failure unlimited times"),
    Case("host-pid", "host-pid-namespace-not-shared", "dev", "scheduler", _set("pidMode", "host"),
         "shares the host's process namespace"),
    Case("host-ipc", "host-ipc-namespace-not-shared", "dev", "scheduler", _set("ipcMode", "host"),
         "shares the host's IPC namespace"),
    Case("raw-device", "host-devices-not-exposed", "dev", "scheduler",
         _set("devices", [{"hostPath": "/dev/sda", "containerPath": "/dev/sda"}]), "gets raw host device /dev/sda"),
    Case("device-cgroup", "host-devices-not-exposed", "dev", "scheduler", _set("deviceCgroupRules", ["c *:* rwm"]),
         "widens the device cgroup"),
    Case("gpu-not-allowed", "host-devices-not-exposed", "dev", "scheduler", _set("gpus", "all"),
         "requests GPUs, but its service is not one allowed GPUs"),
    Case("gpu-driver", "host-devices-not-exposed", "dev", "worker",
         _set("deviceRequests", [{"driver": "amdgpu", "count": 1.0}]), "requests devices from driver 'amdgpu'"),
    Case("propagation", "mount-propagation-not-shared", "dev", "scheduler",
         _append("mounts", {**BIND, "source": "/srv/scratch", "bindOptions": {"propagation": "rshared"}}),
         "mounts /host with 'rshared' propagation"),
    Case("seccomp", "default-seccomp-kept", "dev", "scheduler", _append("securityOpts", "seccomp=unconfined"),
         "disables the default seccomp profile"),
    Case("cgroup-parent", "default-cgroup-used", "dev", "scheduler", _set("cgroupParent", "/custom"),
         "runs under cgroup parent '/custom'"),
    Case("cgroupns", "default-cgroup-used", "dev", "scheduler", _set("cgroupnsMode", "host"),
         "shares the host's cgroup namespace"),
    Case("no-new-privileges", "no-new-privileges", "dev", "scheduler", _set("securityOpts", []),
         "may gain privileges through setuid binaries"),
    Case("new-privileges-false", "no-new-privileges", "dev", "scheduler",
         _set("securityOpts", ["no-new-privileges:false"]), "may gain privileges through setuid binaries"),
    Case("no-healthcheck", "healthcheck-defined", "dev", "scheduler", _drop("healthcheck"), "has no healthcheck"),
    Case("healthcheck-none", "healthcheck-defined", "dev", "scheduler", _set("healthcheck", {"tests": ["NONE"]}),
         "has no healthcheck"),
    Case("untagged", "images-pinned", "dev", "image", _set("name", "postgres"), "postgres names no tag or digest"),
    Case("latest", "images-pinned", "dev", "image", _set("name", "postgres:latest"), "postgres:latest floats on :latest"),
    Case("container-image", "images-pinned", "dev", "scheduler", _set("image", "ghcr.io/dask/dask"),
         "ghcr.io/dask/dask names no tag or digest"),
    Case("default-bridge", "default-bridge-not-used", "dev", "scheduler",
         lambda props: (props.update(networkMode="bridge"), props.pop("networksAdvanced")),
         "is on Docker's default bridge"),
    Case("no-network", "default-bridge-not-used", "dev", "scheduler", _drop("networksAdvanced"),
         "joins no user-defined network"),
    Case("userns", "host-user-namespace-not-shared", "dev", "scheduler", _set("usernsMode", "host"),
         "shares the host's user namespace"),
    Case("docker-sock", "docker-socket-not-mounted", "dev", "scheduler",
         _append("mounts", {**BIND, "source": "/var/run/docker.sock"}),
         "mounts the container engine's socket (/var/run/docker.sock)"),
    Case("docker-sock-dir", "docker-socket-not-mounted", "dev", "scheduler",
         _append("mounts", {**BIND, "source": "/run"}), "mounts the container engine's socket (/run)"),
    Case("env-password", "no-plaintext-secrets-in-env", "dev", "webui", _append("envs", "DB_PASSWORD=hunter2"),
         "sets secret-looking env DB_PASSWORD in plain text"),
    Case("env-url-password", "no-plaintext-secrets-in-env", "dev", "webui",
         _append("envs", "REDIS_URL=redis://:hunter2@redis:6379/0"), "has a password in the URL in env REDIS_URL"),
    Case("tcp-daemon", "docker-daemon-tls", "dev", "provider", _set("host", "tcp://10.0.0.5:2376"),
         "reaches the Docker daemon at tcp://10.0.0.5:2376 without TLS client authentication"),
    Case("webui-public", "only-proxy-publishes-publicly", "dev", "webui", _first_port("ip", "192.0.2.50"),
         "webui (webui) publishes port 3000 on 192.0.2.50: only proxy is public"),
    Case("data-service-published", "only-proxy-publishes-publicly", "prod", "webui",
         _set("ports", [port(3000, 8080, "192.0.2.10")]), "webui (webui) publishes port 3000 on 192.0.2.10"),
    Case("strict-host-key", "ssh-host-keys-pinned", "prod", "provider", _remove_ssh_option("StrictHostKeyChecking"),
         "without StrictHostKeyChecking=yes"),
    Case("no-pinned-key", "ssh-host-keys-pinned", "prod", "provider", _remove_ssh_option("KnownHostsCommand"),
         "pins no host key for ssh://cluster-ai@192.0.2.11:22"),
    Case("command-host-key", "ssh-host-keys-pinned", "prod", "drain", _connection_without("hostKey"),
         "over SSH without `host_key`: the host key is not checked"),
    Case("tag-only", "images-pinned-by-digest-in-prod", "prod", "image", _set("name", "ollama/ollama:0.13.5"),
         "uses ollama/ollama:0.13.5 without a digest"),
    Case("model-digest", "models-pinned-by-digest-in-prod", "prod", "sync",
         _set("command", sync_props("prod", None)["command"]), "pulls model qwen2.5:0.5b without a digest"),
    Case("kept-running-task", "healthcheck-defined", "dev", "sync", _set("mustRun", True), "has no healthcheck"),
    Case("volume-protect", "data-volumes-protected-in-prod", "prod", "volume", lambda props: None,
         "holds ollama's data but is not protected", options={"protect": False}),
    Case("scheduler-protocol", "dask-on-tls-in-prod", "prod", "scheduler", _command_without("--protocol"),
         "runs the scheduler without `--protocol tls`"),
    Case("worker-tcp", "dask-on-tls-in-prod", "prod", "worker",
         _replace_in_command("tls://192.0.2.10:8786", "tcp://192.0.2.10:8786"),
         "speaks plaintext Dask comms (tcp://192.0.2.10:8786)"),
    Case("worker-key", "dask-on-tls-in-prod", "prod", "worker", _command_without("--tls-key"),
         "has no --tls-key: mutual TLS needs"),
    Case("unix-in-prod", "encrypted-transport-in-prod", "prod", "provider",
         _set("host", "unix:///var/run/docker.sock"), "prod reaches every host over ssh://"),
    Case("http-across-hosts", "encrypted-transport-in-prod", "prod", "webui",
         _append("envs", "EXTRA_URL=http://192.0.2.11:11434"), "sends http:// to 192.0.2.11 (EXTRA_URL)"),
    # The host's root read-only without /run masked: the socket is still connect()-able (issue 12).
    Case("root-holds-socket", "engine-socket-not-reachable", "dev", "scheduler",
         _append("mounts", {**BIND, "source": "/"}), "which holds the engine's socket /var/run/docker.sock",
         config={"sensitive-host-paths-not-mounted": {"exemptions": {
             "dask-scheduler": {"reason": "this case isolates the socket rule", "paths": ["/"]}}}}),
    Case("supplementary-gid", "no-supplementary-groups", "dev", "scheduler", _set("groupAdds", ["999"]),
         "joins supplementary group 999"),
    # An edge route that serves any certificate of the CA (issue 12): tests/policy/test_segmentation.py has more.
    Case("ungranted-edge-route", "edge-routes-name-their-clients", "prod", "edge",
         _set("uploads", edge_props("prod", ungranted_route_caddyfile())["uploads"]),
         "route 'handle_path /metrics/node*' names no client certificate subject it serves"),
    Case("scheduler-on-public-network", "only-front-services-on-public-network", "prod", "scheduler",
         _set("networksAdvanced", [{"name": "head-net"}, {"name": PUBLIC_NETWORK}]),
         "dask-scheduler (dask-scheduler) joins the public network cluster-ai-prod-head-public"),
]  # fmt: skip

STACKS = {"dev": dev_stack, "prod": prod_stack}


def _run(subjects: list[Subject], config: dict[str, Any] | None = None) -> Report:
    return run(subjects, config=PolicyConfig.parse(config or {}))


@pytest.mark.parametrize("stack", sorted(STACKS))
def test_untouched_fixtures_report_nothing(stack: str) -> None:
    report = _run(list(STACKS[stack]().values()))
    assert [(v.rule, v.urn, v.message) for v in report.violations] == []
    assert report.notes == []
    assert not report.mandatory_failed


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_breaking_one_property_fires_exactly_its_rule(case: Case) -> None:
    fixtures = STACKS[case.stack]()
    target = fixtures[case.resource]
    report = _run(broken(fixtures, case.resource, case.mutate, **case.options), case.config)
    fired = [(v.rule, v.urn) for v in report.violations]
    assert {rule for rule, _ in fired} == {case.rule}, f"{target.urn}: expected only {case.rule}, got {fired}"
    messages = [v.message for v in report.violations]
    assert any(case.message in m for m in messages), f"{target.urn}: {case.message!r} not in {messages}"
    assert all(v.urn == target.urn for v in report.violations), f"violations name {fired}, not {target.urn}"
    verdict = report.verdict(case.rule)
    expected = Outcome.FAILED if verdict.rule.enforcement.value == "mandatory" else Outcome.WARNED
    assert verdict.outcome is expected, target.urn
    assert all(v.remediation == verdict.rule.remediation for v in report.violations)


def test_every_rule_has_a_breaking_case() -> None:
    covered = {case.rule for case in CASES}
    missing = sorted(r.name for r in all_rules() if r.name not in covered)
    assert missing == [], f"rules without a test that breaks them: {missing}"


def test_prod_rules_do_not_apply_to_dev_stacks() -> None:
    report = _run(list(dev_stack().values()))
    for name in (
        "images-pinned-by-digest-in-prod",
        "models-pinned-by-digest-in-prod",
        "data-volumes-protected-in-prod",
        "dask-on-tls-in-prod",
        "encrypted-transport-in-prod",
    ):
        assert report.verdict(name).outcome is Outcome.NOT_APPLICABLE, name


def test_strict_stacks_come_from_the_rule_config() -> None:
    # The dev fixtures' tag-only image is fine in dev, and refused once dev is made strict.
    config = {"images-pinned-by-digest-in-prod": {"strictStacks": ["prod", "dev"]}}
    report = _run(list(dev_stack().values()), config)
    fired = {(v.rule, v.resource) for v in report.violations}
    assert ("images-pinned-by-digest-in-prod", "postgres-image") in fired


def test_a_port_at_the_edge_of_the_allowed_range_passes() -> None:
    fixtures = prod_stack()
    subjects = broken(fixtures, "worker", lambda p: p.update(ports=[port(8889, 8889, "192.0.2.11")]))
    assert _run(subjects).verdict("only-needed-ports-published").violations == ()
    subjects = broken(fixtures, "worker", lambda p: p.update(ports=[port(8890, 8890, "192.0.2.11")]))
    assert _run(subjects).fired() == {"only-needed-ports-published"}


def test_disabled_rule_reports_nothing() -> None:
    fixtures = dev_stack()
    report = _run(broken(fixtures, "scheduler", _set("privileged", True)), {"no-privileged-containers": "disabled"})
    assert report.violations == []
    assert report.verdict("no-privileged-containers").outcome is Outcome.DISABLED


def test_all_advisory_turns_a_mandatory_failure_into_a_warning() -> None:
    fixtures = dev_stack()
    report = _run(broken(fixtures, "scheduler", _set("privileged", True)), {"all": "advisory"})
    assert report.fired() == {"no-privileged-containers"}
    assert not report.mandatory_failed
    assert report.verdict("no-privileged-containers").outcome is Outcome.WARNED


def test_a_cluster_service_on_every_interface_is_caught_by_cis_and_the_stack_rule() -> None:
    # Listening on 0.0.0.0 breaks both promises at once: CIS 5.14 (bind one address)
    # and the cluster's (a cross-host service binds its host's cluster address).
    fixtures = prod_stack()
    report = _run(broken(fixtures, "scheduler", _first_port("ip", "0.0.0.0")))
    assert report.fired() == {"ports-bound-to-an-address", "only-proxy-publishes-publicly"}
    stack_rule = report.verdict("only-proxy-publishes-publicly").violations
    assert [v.urn for v in stack_rule] == [fixtures["scheduler"].urn]
    assert "a cluster service binds its host's cluster address" in stack_rule[0].message


def test_publishing_every_port_is_caught_by_cis_and_the_stack_rule() -> None:
    fixtures = dev_stack()
    report = _run(broken(fixtures, "webui", _set("publishAllPorts", True)))
    assert report.fired() == {"ports-bound-to-an-address", "only-proxy-publishes-publicly"}


def test_the_providers_default_network_mode_with_networks_of_its_own_is_not_the_default_bridge() -> None:
    """The real docker provider reports networkMode 'bridge' (its default) on every container;
    one with networksAdvanced is disconnected from the default bridge before it starts."""
    fixtures = dev_stack()
    report = _run(broken(fixtures, "scheduler", _set("networkMode", "bridge")), {})
    assert [v.rule for v in report.violations] == [], fixtures["scheduler"].urn


def test_the_label_docker_adds_for_the_host_pid_namespace_is_not_a_second_violation() -> None:
    """Docker adds `label=disable` to a container sharing the host's PID namespace; the
    node exporter declares it so its declaration matches the engine (no drift)."""
    fixtures = dev_stack()
    with_host_pid = _run(
        broken(fixtures, "scheduler", lambda p: p.update(securityOpts=["no-new-privileges:true", "label=disable"])),
        {},
    )
    assert "selinux-labels-kept" in {v.rule for v in with_host_pid.violations}, "label=disable alone must fire"
