"""The engine-socket and supplementary-group rules beyond their breaking cases (tests/policy/test_rules.py)."""

from __future__ import annotations

from typing import Any

from policies.harness import PolicyConfig, Report, run
from tests.policy.fixtures import broken, dev_stack

BIND = {"type": "bind", "readOnly": True}
EXEMPT_ROOT = {
    "sensitive-host-paths-not-mounted": {
        "exemptions": {"dask-scheduler": {"reason": "these tests isolate the socket rule", "paths": ["/", "/run"]}}
    }
}


def _socket_violations(mounts: list[dict[str, Any]], tmpfs: dict[str, str] | None = None) -> list[str]:
    def mutate(props: dict[str, Any]) -> None:
        props["mounts"] = [*props.get("mounts", []), *mounts]
        if tmpfs is not None:
            props["tmpfs"] = tmpfs

    report: Report = run(broken(dev_stack(), "scheduler", mutate), config=PolicyConfig.parse(EXEMPT_ROOT))
    return [v.message for v in report.violations if v.rule == "engine-socket-not-reachable"]


def test_root_with_both_socket_directories_masked_passes() -> None:
    masked = {"/host/run": "rw,size=1m", "/host/var/run": "rw,size=1m"}
    assert _socket_violations([{**BIND, "source": "/", "target": "/host"}], masked) == []


def test_root_with_only_run_masked_still_exposes_var_run() -> None:
    found = _socket_violations([{**BIND, "source": "/", "target": "/host"}], {"/host/run": "rw"})
    assert found and all("/var/run/docker.sock" in m for m in found), found
    assert any("/host/var/run/docker.sock" in m for m in found), found


def test_the_root_mount_is_caught_at_its_container_path() -> None:
    found = _socket_violations([{**BIND, "source": "/", "target": "/hostfs"}])
    assert any("/hostfs/var/run/docker.sock" in m for m in found), found
    assert any("/hostfs/run/containerd/containerd.sock" in m for m in found), found


def test_a_socket_directory_itself_is_left_to_cis_5_32() -> None:
    """`/run` holds the socket: CIS 5.32 reports it, whatever tmpfs says; this rule stays silent."""

    def mutate(props: dict[str, Any]) -> None:
        props["mounts"] = [*props.get("mounts", []), {**BIND, "source": "/run", "target": "/hostrun"}]

    report = run(broken(dev_stack(), "scheduler", mutate), config=PolicyConfig.parse(EXEMPT_ROOT))
    fired = {v.rule for v in report.violations}
    assert "docker-socket-not-mounted" in fired and "engine-socket-not-reachable" not in fired, fired


def test_an_unrelated_host_path_passes() -> None:
    assert _socket_violations([{**BIND, "source": "/var/log/journal", "target": "/journal"}]) == []


def test_no_group_adds_passes_and_an_exempted_gid_passes() -> None:
    def add(props: dict[str, Any]) -> None:
        props["groupAdds"] = ["44"]

    config = {"no-supplementary-groups": {"exemptions": {"dask-scheduler": {"reason": "video", "groups": ["44"]}}}}
    assert [v for v in run(list(dev_stack().values())).violations if v.rule == "no-supplementary-groups"] == []
    report = run(broken(dev_stack(), "scheduler", add), config=PolicyConfig.parse(config))
    assert [v for v in report.violations if v.rule == "no-supplementary-groups"] == []
