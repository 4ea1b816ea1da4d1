"""The images `make images` builds run exactly as the e2e stack declares them, and turn healthy.

For every service container of `Pulumi.e2e.yaml` (the real program evaluated
under the SDK's mocks), the test creates a container on the real engine with
what the plan declares: the image reference, entrypoint, command, user,
environment, read-only root, tmpfs mounts, dropped capabilities,
`no-new-privileges`, init, memory and CPU limits, restart policy, healthcheck,
volumes (with their declared driver and options), read-only host paths, pid mode,
and networks with their aliases (the data network internal). The never-started
file holders are created too, and get the uploaded files exactly as the docker
provider sends them (one archive per file, extracted at `/`). Services start once
the containers they depend on are healthy, as `pulumi up` starts them, and each
must reach `healthy` within the time the plan lets `pulumi up` wait for it.

Not carried over: published ports (a dev or e2e stack on this machine may hold
them; no healthcheck uses them) and the `cluster-ai.stack` labels (`stacks status`
of a real stack must not see these containers). Names, networks and volumes are
unique per run and removed in finalizers; every wait is bounded.

The images come from ci/images.sh; CI builds them before the tests, so a missing
image is a failure, not a skip.
"""

from __future__ import annotations

import io
import re
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stacks.mocks import Evaluation, Resource, unwrap
from stacks.plan import evaluate_stack
from stacks.stackfile import REPO
from tests.support.docker_images import docker_reason, run_label
from tests.support.dockerd import ensure_docker_engine

pytestmark = pytest.mark.integration

STACK = "e2e"
CONTAINER = "docker:index/container:Container"
IMAGE = "docker:index/remoteImage:RemoteImage"
NETWORK = "docker:index/network:Network"
VOLUME = "docker:index/volume:Volume"
IMAGES_LIST = REPO / "ci" / "images" / "images.list"
REGISTRY = "127.0.0.1:5000"
POLL_S = 3
# On top of the longest wait the plan gives one container (`waitTimeout`): all
# start at once on two shared cores, so the slowest is later than it would be alone.
EXTRA_WAIT_S = 120
# Postgres and Redis, which the monitoring and Open WebUI wait for, are up in well under this.
START_ORDER_S = 240
# Go's time.Duration.String(): how the program spells durations (components/hardened.go_duration).
DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(\d+)s$")
# Containers the images run as declared but the program itself keeps from turning
# healthy (docs/images.md, "Found by running the real images"): name -> (why, a shell
# probe run in the container that succeeds while the bug is there). The probe is
# asserted, so the entry must go when the program is fixed.
KNOWN_PROGRAM_BUGS: dict[str, tuple[str, str]] = {}


# -- the plan ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plan() -> Evaluation:
    return evaluate_stack(STACK)


def image_of(container: Resource, evaluation: Evaluation) -> str:
    """The reference the container's RemoteImage names (its `image` input is that image's id)."""
    for urn in container.property_dependencies.get("image", ()):
        dep = evaluation.get(urn)
        if dep.type == IMAGE:
            return str(dep.inputs["name"])
    raise AssertionError(f"{container.urn}: no RemoteImage behind its image")


def listed_images() -> dict[str, str]:
    """Config key -> reference, from ci/images/images.list (what ci/images.sh builds)."""
    listed = {}
    for line in IMAGES_LIST.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, _dir, repotag, _package = line.split()
        listed[key] = f"{REGISTRY}/{repotag}"
    return listed


def seconds(duration: str) -> int:
    match = DURATION.match(duration)
    assert match, f"healthcheck duration {duration!r} is not a Go duration (15s, 1m0s)"
    hours, minutes, secs = (int(part or 0) for part in match.groups())
    return hours * 3600 + minutes * 60 + secs


# -- the engine ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine() -> Iterator[Any]:
    import docker

    reason = ensure_docker_engine() or docker_reason()
    if reason is not None:
        pytest.fail(reason)  # .ci/run starts dockerd: no engine is a broken setup, not a skip
    client = docker.from_env(timeout=120)
    yield client
    client.close()


@pytest.fixture(scope="module")
def run_id(engine: Any) -> Iterator[str]:
    with run_label() as run:
        yield run
        for volume in engine.volumes.list(filters={"label": f"cluster-ai.test-run={run}"}):
            volume.remove(force=True)
        for network in engine.networks.list(filters={"label": f"cluster-ai.test-run={run}"}):
            network.remove()


def ensure_image(engine: Any, reference: str) -> None:
    """The image is local, or pulled from the local registry; otherwise `make images` did not run."""
    import docker

    try:
        engine.images.get(reference)
    except docker.errors.ImageNotFound:
        try:
            engine.images.pull(reference)
        except docker.errors.APIError as exc:
            pytest.fail(f"{reference} is neither local nor in the registry: run `make images` ({exc})")


def put_uploads(engine: Any, container: Any, uploads: list[dict[str, Any]]) -> None:
    """The provider's `uploads`, as it sends them: one archive per file, extracted at "/",
    with the file's mode, and its owner and group when set (`copyUIDGID`).

    The daemon refuses that for a container with a read-only root even when the file
    lands in a volume, which is why the program puts files into file-holder
    containers: an upload into a read-only container fails here as it would on `up`.
    """
    for upload in uploads:
        data = str(upload["content"]).encode()
        info = tarfile.TarInfo(str(upload["file"]))
        info.size = len(data)
        info.mode = int(str(upload.get("permissions") or "0644"), 8)
        info.uid = int(upload.get("owner") or 0)
        info.gid = int(upload.get("group") or 0)
        info.mtime = int(time.time())
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            tar.addfile(info, io.BytesIO(data))
        params = {"path": "/", "copyUIDGID": "true" if upload.get("owner") or upload.get("group") else "false"}
        response = engine.api._put(
            engine.api._url("/containers/{0}/archive", container.id), params=params, data=buffer.getvalue()
        )
        assert response.status_code == 200, f"upload of {upload['file']} into {container.name}: {response.text}"


def create_args(inputs: dict[str, Any], run: str, volumes: dict[str, str]) -> dict[str, Any]:
    """docker-py `create` arguments for what the plan declares (ports and stack labels left out)."""
    from docker.types import Mount

    mounts = []
    for m in inputs.get("mounts") or []:
        if m["type"] == "volume":
            source = volumes[m["source"]] if m.get("source") else None
            mounts.append(Mount(m["target"], source, type="volume", read_only=bool(m.get("readOnly"))))
        else:
            propagation = (m.get("bindOptions") or {}).get("propagation")
            mounts.append(Mount(m["target"], m["source"], type="bind", read_only=True, propagation=propagation))
    memory = int(inputs["memory"])
    return {
        "entrypoint": inputs.get("entrypoints"),
        "command": inputs.get("command"),
        "user": inputs.get("user"),
        "environment": list(inputs.get("envs") or []),
        "read_only": bool(inputs.get("readOnly")),
        "tmpfs": dict(inputs.get("tmpfs") or {}),
        "cap_drop": list(inputs["capabilities"]["drops"]),
        "cap_add": list(inputs["capabilities"].get("adds") or []) or None,
        "security_opt": list(inputs["securityOpts"]),
        "privileged": bool(inputs["privileged"]),
        "init": bool(inputs.get("init")),
        "mem_limit": f"{memory}m",
        "memswap_limit": f"{int(inputs['memorySwap'])}m",
        "nano_cpus": int(float(inputs["cpus"]) * 1e9) if "cpus" in inputs else None,
        "pid_mode": inputs.get("pidMode"),
        "restart_policy": restart_policy(inputs),
        "healthcheck": healthcheck(inputs),
        "mounts": mounts,
        "labels": {"cluster-ai.test-run": run},
        "log_config": {"type": "json-file", "config": {"max-size": "10m", "max-file": "3"}},
    }


def restart_policy(inputs: dict[str, Any]) -> dict[str, Any]:
    if inputs.get("restart", "no") == "no":
        return {"Name": "no"}
    return {"Name": inputs["restart"], "MaximumRetryCount": int(inputs.get("maxRetryCount") or 0)}


def healthcheck(inputs: dict[str, Any]) -> dict[str, Any] | None:
    health = inputs.get("healthcheck")
    if health is None:
        return None
    return {
        "test": list(health["tests"]),
        "interval": seconds(health["interval"]) * 1_000_000_000,
        "timeout": seconds(health["timeout"]) * 1_000_000_000,
        "retries": int(health["retries"]),
        "start_period": seconds(health["startPeriod"]) * 1_000_000_000,
    }


def services(plan: Evaluation) -> list[Resource]:
    """The long-running containers: those with a healthcheck (one-shot jobs have none)."""
    return [c for c in plan.by_type(CONTAINER) if "healthcheck" in c.inputs]


def file_holders(plan: Evaluation) -> list[Resource]:
    """Containers created and never started: they hold the files uploaded into a volume."""
    return [c for c in plan.by_type(CONTAINER) if c.inputs.get("start") is False]


def health_report(container: Any) -> str:
    container.reload()
    state = container.attrs["State"]
    log = (state.get("Health") or {}).get("Log") or []
    last = log[-1]["Output"].strip()[-600:] if log else "(no healthcheck run yet)"
    tail = container.logs(tail=25).decode(errors="replace")
    return (
        f"status={state.get('Status')} health={(state.get('Health') or {}).get('Status')} "
        f"exit={state.get('ExitCode')} restarts={container.attrs.get('RestartCount')}\n"
        f"last healthcheck: {last}\nlog tail:\n{tail}"
    )


@pytest.fixture(scope="module")
def deployed(engine: Any, plan: Evaluation, run_id: str) -> Iterator[dict[str, Any]]:
    """Every service container of the plan running on the engine: resource name -> container.

    File holders are created (their uploads put in) and never started, as declared."""
    containers = services(plan)
    holders = file_holders(plan)
    for container in [*containers, *holders]:
        ensure_image(engine, image_of(container, plan))
    networks = {}
    for net in plan.by_type(NETWORK):
        inputs = unwrap(net.inputs)
        networks[inputs["name"]] = engine.networks.create(
            f"ci-images-{run_id}-{net.name}",
            driver=inputs.get("driver", "bridge"),
            internal=bool(inputs.get("internal")),
            labels={"cluster-ai.test-run": run_id},
        )
    sources = {
        m["source"]
        for c in [*containers, *holders]
        for m in unwrap(c.inputs).get("mounts") or []
        if m["type"] == "volume" and m.get("source")
    }
    # Each volume with its declared driver and options (a tmpfs-backed one keeps its uid).
    declared_volumes = {v.name: unwrap(v.inputs) for v in plan.by_type(VOLUME)}
    volumes = {
        s: engine.volumes.create(
            f"ci-images-{run_id}-{s}",
            driver=declared_volumes.get(s, {}).get("driver") or "local",
            driver_opts=declared_volumes.get(s, {}).get("driverOpts") or None,
            labels={"cluster-ai.test-run": run_id},
        ).name
        for s in sorted(sources)
    }
    created: dict[str, Any] = {}
    held: list[Any] = []
    try:
        for resource in holders:
            inputs = unwrap(resource.inputs)
            holder = engine.containers.create(
                image_of(resource, plan),
                name=f"ci-images-{run_id}-{resource.name}",
                network_mode=inputs.get("networkMode"),
                **create_args(inputs, run_id, volumes),
            )
            held.append(holder)
            put_uploads(engine, holder, inputs.get("uploads") or [])
        for resource in containers:
            inputs = unwrap(resource.inputs)
            attachments = inputs["networksAdvanced"]
            first, rest = attachments[0], attachments[1:]
            container = engine.containers.create(
                image_of(resource, plan),
                name=f"ci-images-{run_id}-{resource.name}",
                network=networks[first["name"]].name,
                networking_config={
                    networks[first["name"]].name: engine.api.create_endpoint_config(
                        aliases=first.get("aliases") or None
                    )
                },
                **create_args(inputs, run_id, volumes),
            )
            created[resource.name] = container
            for extra in rest:
                networks[extra["name"]].connect(container, aliases=extra.get("aliases") or None)
            if inputs.get("uploads"):
                put_uploads(engine, container, inputs["uploads"])
        start_in_order(created, container_dependencies(containers), START_ORDER_S)
        yield created
    finally:
        for container in [*created.values(), *held]:
            container.remove(force=True, v=True)


def container_dependencies(containers: list[Resource]) -> dict[str, set[str]]:
    """Resource name -> the names of the containers it depends on (the engine waits for them)."""
    names = {c.urn: c.name for c in containers}
    return {c.name: {names[d] for d in c.dependencies if d in names} for c in containers}


def health_of(container: Any) -> str:
    container.reload()
    return str((container.attrs["State"].get("Health") or {}).get("Status", "none"))


def start_in_order(containers: dict[str, Any], dependencies: dict[str, set[str]], deadline_s: float) -> None:
    """Start each container once the containers it depends on are healthy, as `pulumi up`
    does with `wait=True` (a backup started before its database would wait a whole interval)."""
    deadline = time.monotonic() + deadline_s
    pending = dict(containers)
    while pending:
        healthy = {n for n, c in containers.items() if n not in pending and health_of(c) == "healthy"}
        ready = [n for n in pending if dependencies[n] <= healthy]
        for name in ready:
            pending.pop(name).start()
        if pending and time.monotonic() > deadline:
            waiting = {n: sorted(dependencies[n] - healthy) for n in pending}
            raise AssertionError(f"dependencies never turned healthy: {waiting}")
        if pending and not ready:
            time.sleep(POLL_S)


def wait_healthy(containers: dict[str, Any], deadline_s: float) -> dict[str, str]:
    """Poll until every container not known to be broken is healthy, or the deadline
    passes; name -> last status."""
    deadline = time.monotonic() + deadline_s
    status: dict[str, str] = {}
    while True:
        for name, container in containers.items():
            status[name] = health_of(container)
        expected = [s for n, s in status.items() if n not in KNOWN_PROGRAM_BUGS]
        if all(s == "healthy" for s in expected) or time.monotonic() > deadline:
            return status
        time.sleep(POLL_S)


# -- tests ---------------------------------------------------------------------------


def test_e2e_stack_uses_exactly_the_images_ci_builds(plan: Evaluation) -> None:
    listed = listed_images()
    declared = {image_of(c, plan) for c in plan.by_type(CONTAINER)}
    assert declared <= set(listed.values()), (
        f"containers of {STACK} use unbuilt images: {declared - set(listed.values())}"
    )
    stack_file = (REPO / f"Pulumi.{STACK}.yaml").read_text()
    for key, reference in listed.items():
        assert f"    {key}: {reference}\n" in stack_file, f"Pulumi.{STACK}.yaml images.{key} is not {reference}"


def test_standins_are_named_standin(plan: Evaluation) -> None:
    listed = [line.split() for line in IMAGES_LIST.read_text().splitlines() if line and not line.startswith("#")]
    for key, _dir, repotag, package in listed:
        assert (package == "standin") == repotag.startswith("standin/"), f"images.list {key}: {repotag}"


def test_every_container_turns_healthy_as_declared(plan: Evaluation, deployed: dict[str, Any]) -> None:
    waits = [int(unwrap(c.inputs)["waitTimeout"]) for c in services(plan)]
    status = wait_healthy(deployed, max(waits) + EXTRA_WAIT_S)
    unhealthy = {name: s for name, s in status.items() if s != "healthy" and name not in KNOWN_PROGRAM_BUGS}
    reports = "\n\n".join(f"{name}: {health_report(deployed[name])}" for name in unhealthy)
    assert unhealthy == {}, f"containers of {STACK} not healthy:\n{reports}"
    for name, (why, probe) in KNOWN_PROGRAM_BUGS.items():
        exit_code, _ = deployed[name].exec_run(["/bin/sh", "-c", probe])
        assert exit_code == 0, f"{name} no longer shows the known bug ({why}): remove it from KNOWN_PROGRAM_BUGS"
    by_name = {c.name: c for c in services(plan)}
    for name, container in deployed.items():
        container.reload()
        declared = unwrap(by_name[name].inputs)
        config, host = container.attrs["Config"], container.attrs["HostConfig"]
        urn = by_name[name].urn
        assert config["User"] == (declared.get("user") or ""), f"{urn}: runs as {config['User']!r}"
        assert host["ReadonlyRootfs"] == bool(declared["readOnly"]), f"{urn}: read-only root differs"
        if name not in KNOWN_PROGRAM_BUGS:
            restarts = container.attrs["RestartCount"]
            assert restarts == 0, f"{urn}: restarted {restarts} times"


def test_model_sync_runs_in_its_image_as_declared(plan: Evaluation, engine: Any, run_id: str) -> None:
    """The one-shot sync container (user, read-only root, no capabilities) runs its script.

    Its real arguments would converge a server's models (the e2e tier does that):
    here the script gets `--help`, which needs the interpreter and the script only.
    """
    sync = next(c for c in plan.by_type(CONTAINER) if c.name.endswith("model-sync"))
    inputs = unwrap(sync.inputs)
    command = list(inputs["command"])
    assert command[:2] == ["python", "-c"], f"{sync.urn}: {command[:2]}"
    image = image_of(sync, plan)
    ensure_image(engine, image)
    args = create_args(inputs, run_id, {})
    args["command"] = [*command[:3], "--help"]
    container = engine.containers.create(image, name=f"ci-images-{run_id}-{sync.name}", **args)
    try:
        container.start()
        result = container.wait(timeout=120)
        output = container.logs().decode(errors="replace")
        assert result["StatusCode"] == 0, f"{sync.urn}: exit {result['StatusCode']}: {output[-800:]}"
        assert "--pins" in output, f"{sync.urn}: {output[-400:]}"
    finally:
        container.remove(force=True, v=True)


def test_images_list_paths_exist() -> None:
    for line in IMAGES_LIST.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        directory = line.split()[1]
        assert (Path(IMAGES_LIST.parent) / directory / "Dockerfile").is_file(), f"ci/images/{directory}/Dockerfile"
