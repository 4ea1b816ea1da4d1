"""The dev stack's whole lifecycle, run by the real Pulumi engine against a real Docker engine.

The CLI, its language host and the docker/tls/random plugins are the ones `make
toolchain` builds from Go modules (tests/support/engine.py finds them); the images
are the ones `make images` builds and serves from the local registry on
127.0.0.1:5000 (Pulumi.e2e.yaml); the model is a tiny GGUF this test writes,
`ollama create`d by the real Ollama and pushed to a private model registry on the
private address of this machine (a veth pair the test makes), where the
stack's own Ollama pulls it. Everything runs
through `python -m stacks` (the Automation API) on a throwaway file backend.

The steps are tests of one module, in order, on one deployment: `up` from
nothing; a second `up` that changes nothing; drift clean, then made by hand and
repaired; the policy pack through the real analyzer; no secret in plain text in
the state; the running cluster used as a user would; `destroy` leaving nothing.
In CI the tier never skips (tests/support/engine.py fails instead).
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from stacks.stackfile import REPO
from tests.support import ollama_real
from tests.support.dockerd import ensure_docker_engine
from tests.support.engine import Workspace, diagnostics, engine_env_or_skip, make_workspace, secret_strings

# One module, one deployment: `make test` runs with --dist loadscope, so every test of
# this module runs in the same worker, in order.
pytestmark = [pytest.mark.e2e]

UP_TIMEOUT_S = 1800
MODEL_TAG = "1"


# Two addresses of a veth pair this test makes on this machine (traffic to them
# never leaves it): containers reach the host through their gateway, and Ollama needs
# its registry and the registry's blob host under two different names.
MODEL_LINK = "cai-e2e-m"
MODEL_REGISTRY_ADDRESS = "10.213.77.1"
MODEL_FILES_ADDRESS = "10.213.77.2"


@pytest.fixture(scope="module")
def model_addresses() -> Iterator[tuple[str, str]]:
    for address in (MODEL_REGISTRY_ADDRESS, MODEL_FILES_ADDRESS):
        assert ipaddress.ip_address(address).is_private, address
    ip = ["ip", "link", "add", MODEL_LINK, "type", "veth", "peer", "name", f"{MODEL_LINK}-p"]
    subprocess.run(["ip", "link", "del", MODEL_LINK], capture_output=True, check=False, timeout=10)
    subprocess.run(ip, capture_output=True, check=True, timeout=10)
    try:
        for address in (MODEL_REGISTRY_ADDRESS, MODEL_FILES_ADDRESS):
            subprocess.run(["ip", "addr", "add", f"{address}/32", "dev", MODEL_LINK], check=True, timeout=10)
        for link in (MODEL_LINK, f"{MODEL_LINK}-p"):
            subprocess.run(["ip", "link", "set", link, "up"], check=True, timeout=10)
        yield MODEL_REGISTRY_ADDRESS, MODEL_FILES_ADDRESS
    finally:
        subprocess.run(["ip", "link", "del", MODEL_LINK], capture_output=True, check=False, timeout=10)


@pytest.fixture(scope="module")
def engine() -> dict[str, str]:
    env = engine_env_or_skip()
    reason = ensure_docker_engine()
    if reason is not None:
        pytest.fail(reason)  # .ci/run starts dockerd: no engine is a broken setup, not a skip
    return env


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, model_addresses: tuple[str, str]) -> Iterator[tuple[str, str]]:
    """(name, digest) of a tiny model in a private registry the stack's Ollama can reach."""
    from stacks.lock import Registry as LockRegistry
    from stacks.lock import model_location

    missing = ollama_real.available()
    assert missing is None, missing
    workdir = tmp_path_factory.mktemp("model")
    registry_address, files_address = model_addresses
    with (
        ollama_real.model_registry(registry_address, files_address) as registry,
        ollama_real.ollama_server() as publisher,
    ):
        name = f"{registry.host}/cluster-ai/tiny:{MODEL_TAG}"
        publisher.create(name, ollama_real.write_tiny_model(workdir / "tiny.gguf", seed=7))
        publisher.push(name)
        with httpx.Client(timeout=30) as client:
            digest = LockRegistry(client).model_digest(registry.url, model_location(name))
        yield name, digest


def e2e_config(model: tuple[str, str]) -> dict[str, Any]:
    """Pulumi.e2e.yaml with the tiny model pinned instead of a model from Ollama's registry."""
    config: dict[str, Any] = yaml.safe_load((REPO / "Pulumi.e2e.yaml").read_text())["config"]
    name, digest = model
    config["cluster-ai:models"] = [{"name": name, "digest": digest, "insecure": True}]
    return config


@pytest.fixture(scope="module")
def stack(
    engine: dict[str, str], tiny_model: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Workspace]:
    workspace = make_workspace(tmp_path_factory.mktemp("e2e-dev"), e2e_config(tiny_model), engine)
    try:
        yield workspace
    finally:
        # Whatever happened, leave nothing behind.
        workspace.run("destroy", workspace.stack, f"--yes={workspace.stack}", timeout=UP_TIMEOUT_S)
        leftovers = stack_objects(workspace.stack)
        for kind, names in leftovers.items():
            for name in names:
                subprocess.run(["docker", kind, "rm", "-f", name], capture_output=True, check=False, timeout=60)


def stack_objects(stack: str) -> dict[str, list[str]]:
    """Containers, volumes and networks carrying the stack's label, by kind."""
    found: dict[str, list[str]] = {}
    for kind, fmt in (("container", "{{.Names}}"), ("volume", "{{.Name}}"), ("network", "{{.Name}}")):
        listed = subprocess.run(
            ["docker", kind, "ls", *(["-a"] if kind == "container" else []), "--filter",
             f"label=cluster-ai.stack={stack}", "--format", fmt],
            capture_output=True, text=True, check=True, timeout=60,
        )  # fmt: skip
        found[kind] = [line for line in listed.stdout.split() if line]
    return found


def inspect_stack_containers(stack: str) -> list[dict[str, Any]]:
    names = stack_objects(stack)["container"]
    assert names, f"no container of stack {stack} is on the engine"
    shown = subprocess.run(["docker", "inspect", *names], capture_output=True, text=True, check=True, timeout=60)
    containers: list[dict[str, Any]] = json.loads(shown.stdout)
    return containers


def container_state(container: dict[str, Any]) -> str:
    """`healthy`, `finished` (a task that exited 0), `held` (a file holder: created) or what is wrong."""
    labels = container["Config"]["Labels"] or {}
    state = container["State"]
    if labels.get("cluster-ai.role") == "file-holder":
        return "held" if state["Status"] == "created" else f"holder {state['Status']}"
    if state["Status"] == "exited":
        return "finished" if state["ExitCode"] == 0 else f"exited {state['ExitCode']}"
    health = (state.get("Health") or {}).get("Status")
    return str(health or state["Status"])


def wait_until_healthy(stack: str, timeout_s: float = 300) -> dict[str, str]:
    """Each container's state once every service is healthy, or the last states seen."""
    deadline = time.monotonic() + timeout_s
    while True:
        states = {c["Name"].lstrip("/"): container_state(c) for c in inspect_stack_containers(stack)}
        if all(s in ("healthy", "finished", "held") for s in states.values()) or time.monotonic() > deadline:
            return states
        time.sleep(5)


def by_label(stack: str, container: str) -> str:
    """The engine's name of the container the program declared as `container`."""
    listed = subprocess.run(
        ["docker", "ps", "-a", "--filter", f"label=cluster-ai.stack={stack}",
         "--filter", f"label=cluster-ai.container={container}", "--format", "{{.Names}}"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    names = listed.stdout.split()
    assert len(names) == 1, f"{container}: {names}"
    return names[0]


# -- 1. up from nothing ------------------------------------------------------------------


def test_up_from_nothing_converges_every_container_and_syncs_the_model(
    stack: Workspace, tiny_model: tuple[str, str]
) -> None:
    up = stack.run("up", stack.stack, timeout=UP_TIMEOUT_S)
    assert up.returncode == 0, diagnostics(up)
    states = wait_until_healthy(stack.stack)
    unhealthy = {name: s for name, s in states.items() if s not in ("healthy", "finished", "held")}
    assert not unhealthy, f"not healthy after up: {unhealthy}"
    assert any(s == "finished" for s in states.values()), f"the model sync did not run: {states}"
    name, digest = tiny_model
    models = stack.outputs()["ollamaModels"]["local"]
    reported = {str(v).removeprefix("sha256:") for v in models.values()}
    assert digest in reported, f"the model sync reported {models}, not {name} at {digest}"


# -- 2. a second up changes nothing ------------------------------------------------------


def test_a_second_up_changes_nothing(stack: Workspace) -> None:
    # `stacks up` (what `make up` runs): its preview finds nothing, so nothing is applied.
    up = stack.run("up", stack.stack, timeout=UP_TIMEOUT_S)
    assert up.returncode == 0, diagnostics(up)
    assert f"no changes: stack '{stack.stack}' already is as declared" in up.stdout, (
        f"the second `stacks up` planned changes (a perpetual diff):\n{diagnostics(up)}"
    )
    # The engine's own update, recorded in the stack's history, says the same.
    engine_up = stack.pulumi("up", "--yes", "--refresh", "--skip-preview", timeout=UP_TIMEOUT_S)
    assert engine_up.returncode == 0, diagnostics(engine_up)
    changes = stack.last_update_changes()
    changed = {op: n for op, n in changes.items() if op != "same" and n}
    assert not changed, f"the second up changed {changed} (a perpetual diff):\n{engine_up.stdout[-6000:]}"
    assert changes.get("same", 0) > 50, changes


# -- 3. drift: clean, made by hand, repaired ---------------------------------------------


def drift(stack: Workspace) -> tuple[int, dict[str, Any], str]:
    result = stack.run("drift", stack.stack, timeout=900)
    try:
        report: dict[str, Any] = json.loads(result.stdout)
    except ValueError:
        report = {}
    return result.returncode, report, diagnostics(result)


def test_drift_is_clean_then_named_then_repaired_by_up(stack: Workspace) -> None:
    code, report, shown = drift(stack)
    assert code == 0 and report.get("drifted") is False, f"a fresh stack drifted:\n{shown}"

    removed = by_label(stack.stack, "monitoring-redis-exporter")
    subprocess.run(["docker", "rm", "-f", removed], capture_output=True, check=True, timeout=60)
    # Docker cannot change a live container's environment (a different env is a
    # different container, which drift reports as this one gone); the runtime
    # settings it can change by hand are limits: this is that kind of edit.
    edited = by_label(stack.stack, "monitoring-blackbox")
    subprocess.run(
        ["docker", "update", "--memory", "200m", "--memory-swap", "200m", edited],
        capture_output=True,
        check=True,
        timeout=60,
    )

    code, report, shown = drift(stack)
    assert code == 7, f"drift must exit 7 when containers changed by hand:\n{shown}"
    named = {r["name"]: r for r in report["resources"]}
    assert "monitoring-redis-exporter" in named, f"the removed container is not named: {sorted(named)}"
    assert "monitoring-blackbox" in named, f"the edited container is not named: {sorted(named)}"
    assert "memory" in named["monitoring-blackbox"]["properties"] or named["monitoring-blackbox"]["op"] != "same", (
        named["monitoring-blackbox"]
    )

    up = stack.run("up", stack.stack, timeout=UP_TIMEOUT_S)
    assert up.returncode == 0, diagnostics(up)
    code, report, shown = drift(stack)
    assert code == 0 and report.get("drifted") is False, f"up did not repair the drift:\n{shown}"
    assert all(s in ("healthy", "finished", "held") for s in wait_until_healthy(stack.stack).values())


# -- 4. the policy pack, through the real analyzer ---------------------------------------


def test_the_policy_pack_passes_and_a_violation_fails_the_preview_naming_the_policy(
    stack: Workspace, tmp_path: Path
) -> None:
    preview = stack.run("preview", stack.stack, timeout=900)
    assert preview.returncode == 0, diagnostics(preview)
    assert "Policies:" in preview.stdout or "policies" in preview.stdout.lower(), preview.stdout[-3000:]

    # The same pack, told that this stack is a strict (prod) one: its tag-only
    # images break the mandatory digest rule.
    config = tmp_path / "strict.json"
    config.write_text(
        json.dumps(
            {"images-pinned-by-digest-in-prod": {"enforcementLevel": "mandatory", "strictStacks": [stack.stack]}}
        )
    )
    strict = stack.pulumi(
        "preview", "--policy-pack", str(stack.root / "policies"), "--policy-pack-config", str(config), timeout=900
    )
    assert strict.returncode != 0, f"a mandatory violation did not fail the preview:\n{diagnostics(strict)}"
    assert "images-pinned-by-digest-in-prod" in strict.stdout + strict.stderr, diagnostics(strict)


# -- 5. no secret in plain text in the state ---------------------------------------------


def secret_paths(encrypted: Any, plain: Any) -> Iterator[Any]:
    """The decrypted values of every `secure` value in a stack export (the two walked in step)."""
    sig = "4dabf18193072939515e22adb298388d"
    if isinstance(encrypted, dict):
        if sig in encrypted and "ciphertext" in encrypted:
            # Revealed, the same wrapper carries the value as JSON text in `plaintext`
            # (the signature itself is in every checkpoint: it is not the secret).
            yield plain.get("plaintext") if isinstance(plain, dict) and sig in plain else plain
            return
        for key, value in encrypted.items():
            if isinstance(plain, dict) and key in plain:
                yield from secret_paths(value, plain[key])
    elif isinstance(encrypted, list) and isinstance(plain, list):
        for a, b in zip(encrypted, plain, strict=False):
            yield from secret_paths(a, b)


def test_the_state_holds_no_secret_in_plain_text(stack: Workspace) -> None:
    outputs = stack.outputs()
    exported = stack.pulumi("stack", "export")
    revealed = stack.pulumi("stack", "export", "--show-secrets")
    assert exported.returncode == 0 and revealed.returncode == 0, diagnostics(exported) + diagnostics(revealed)
    secrets = set(secret_strings([outputs["adminPassword"], outputs["grafanaPassword"]]))
    for value in secret_paths(json.loads(exported.stdout), json.loads(revealed.stdout)):
        decoded = value
        if isinstance(value, str):
            try:
                decoded = json.loads(value)
            except ValueError:
                decoded = value
        secrets.update(secret_strings(decoded))
    assert len(secrets) >= 5, f"expected the generated passwords and keys among the secrets, found {len(secrets)}"
    raw = stack.checkpoint()
    leaked = sorted(s[:8] + "..." for s in secrets if s in raw)
    assert not leaked, f"{len(leaked)} secret value(s) in plain text in the checkpoint: {leaked}"


# -- 6. the cluster, used as a user would ------------------------------------------------


def test_status_is_green_webui_signs_in_and_dask_computes(stack: Workspace) -> None:
    status = stack.run("status", stack.stack, timeout=300)
    assert status.returncode == 0, diagnostics(status)

    outputs = stack.outputs()
    with httpx.Client(base_url=outputs["webuiUrl"], timeout=30) as client:
        signin = client.post(
            "/api/v1/auths/signin", json={"email": outputs["adminEmail"], "password": outputs["adminPassword"]}
        )
        assert signin.status_code == 200, f"the exported admin password does not sign in: {signin.text[:500]}"
        token = signin.json()["token"]
        models = client.get("/api/models", headers={"Authorization": f"Bearer {token}"})
        assert models.status_code == 200, models.text[:500]

    from distributed import Client

    with Client(outputs["schedulerAddress"], timeout=60) as dask:
        assert dask.submit(sum, [1, 2, 3, 4]).result(timeout=60) == 10


# -- 7. destroy ----------------------------------------------------------------------------


def test_destroy_leaves_no_container_volume_or_network(stack: Workspace) -> None:
    destroyed = stack.run("destroy", stack.stack, f"--yes={stack.stack}", timeout=UP_TIMEOUT_S)
    assert destroyed.returncode == 0, diagnostics(destroyed)
    left = {kind: names for kind, names in stack_objects(stack.stack).items() if names}
    assert not left, f"destroy left {left}"
