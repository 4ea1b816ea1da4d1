"""The node exporter, with its exact declared mounts and user, cannot reach the host's engine socket.

A real Docker engine runs a busybox container (tests/support/docker_images.py)
with what the dev plan declares for the node exporter: its user, its host-path
binds (the host's `/` read-only at `/host`, rslave), its tmpfs mounts (the masks
over `/host/run` and `/host/var/run`), the host PID namespace, a read-only root,
no capability and no-new-privileges. Its named volumes (the textfile volume) are
the plan's mock names and hold no host path: they are left out. A control
container with the same bind but neither masks nor the user shows that the
socket would be inside the mount: the check can fail.

Docker refuses an `rslave` bind of `/` while `/` is a private mount (as in some
CI containers; systemd makes it shared on real hosts): the test then marks `/`
shared (non-recursively) in the engine's mount namespace, as a host has it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from stacks.mocks import Resource
from stacks.plan import evaluate_stack
from tests.support.docker_images import build_image, docker_reason, run_label
from tests.support.dockerd import ensure_docker_engine

pytestmark = pytest.mark.integration

NODE_EXPORTER = "exporters-local-node-exporter"
ENGINE_SOCKET = Path("/run/docker.sock")
# Where an engine socket would be seen inside the exporter, through the bind or through host processes.
PROBES = (
    "/host/run/docker.sock",
    "/host/var/run/docker.sock",
    "/host/run/containerd/containerd.sock",
    "/proc/1/root/run/docker.sock",
)
RUN_TIMEOUT_S = 60
# A socket path that is absent or refused prints nothing; anything visible is named.
CHECK = (
    "id; "
    + " ".join(f"[ -e {p} ] && echo VISIBLE {p};" for p in PROBES)
    + " find /host/run /host/var/run -type s 2>/dev/null | sed 's/^/SOCKET /'; true"
)


def run_kwargs(node: Resource) -> dict[str, Any]:
    """docker-py's `containers.run` arguments for what the plan declares (host binds, not volumes)."""
    import docker

    inputs = node.plain_inputs()
    binds = [m for m in inputs.get("mounts") or [] if m["type"] == "bind"]
    mounts = [
        docker.types.Mount(
            m["target"],
            m["source"],
            type="bind",
            read_only=m["readOnly"],
            propagation=(m.get("bindOptions") or {}).get("propagation"),
        )
        for m in binds
    ]
    assert [(m["source"], m["target"]) for m in binds] == [("/", "/host")], f"{node.urn}: binds {binds}"
    return {
        "user": inputs["user"],
        "mounts": mounts,
        "tmpfs": dict(inputs["tmpfs"]),
        "pid_mode": inputs["pidMode"],
        "read_only": inputs["readOnly"],
        "cap_drop": list(inputs["capabilities"]["drops"]),
        "cap_add": list(inputs["capabilities"].get("adds") or []) or None,
        "security_opt": list(inputs["securityOpts"]),
        "group_add": list(inputs.get("groupAdds") or []) or None,
        "network_mode": "none",
    }


def run_check(client: Any, image: str, run: str, **kwargs: Any) -> str:
    container = client.containers.run(
        image, ["/bin/busybox", "sh", "-c", CHECK], detach=True, labels={"cluster-ai.test-run": run}, **kwargs
    )
    result = container.wait(timeout=RUN_TIMEOUT_S)
    output = container.logs().decode()
    assert result["StatusCode"] == 0, output
    return output


def test_node_exporter_cannot_see_or_connect_to_the_engine_socket() -> None:
    reason = ensure_docker_engine() or docker_reason()
    if reason is not None:
        pytest.fail(reason)
    assert ENGINE_SOCKET.is_socket(), f"the engine's socket is not at {ENGINE_SOCKET}: the control would prove nothing"
    import docker

    node = next(c for c in evaluate_stack("dev").by_type("docker:index/container:Container") if c.name == NODE_EXPORTER)
    kwargs = run_kwargs(node)
    client = docker.from_env(timeout=RUN_TIMEOUT_S)
    with run_label() as run:
        image = build_image(client, f"cluster-ai-test-{run}/exporter-sockets:1", f"exporter-sockets-{run}", run)
        # Control: the same bind as root without the masks sees the socket.
        control = run_check(client, image, run, mounts=kwargs["mounts"], network_mode="none")
        assert f"VISIBLE /host{ENGINE_SOCKET}" in control, f"control run did not see the socket:\n{control}"
        declared = run_check(client, image, run, **kwargs)
    assert "VISIBLE" not in declared and "SOCKET" not in declared, f"{node.urn} reaches a socket:\n{declared}"
    # nobody, and no supplementary group (a `docker` group would open the socket).
    first = declared.splitlines()[0]
    assert first == "uid=65534 gid=65534 groups=65534", f"{node.urn} runs as {first!r}"
