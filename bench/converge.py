"""The dev stack's lifecycle on the real engine, beside `docker compose` running the same containers.

    python bench/converge.py                 # one run (what `make bench` runs)
    python bench/converge.py --runs 2
    python bench/converge.py --render-only EXPORT.json OUTDIR   # the compose file only, offline

On the real Pulumi engine (the CLI and plugins `make toolchain` builds, found as
tests/support/engine.py finds them) and a throwaway file backend, it times the
dev stack's (Pulumi.e2e.yaml: images from the local registry on 127.0.0.1:5000,
with `cluster-ai:models` set to [] so no model registry is needed):

- cold `up`      `pulumi up --yes --policy-pack policies` from nothing (what `make up
                 ARGS=--yes` runs: preview, policy pack, update; every service is
                 waited on until healthy, the docker provider's `wait`);
- no-op `up`     the same command again (the engine must report no change);
- `refresh`      `pulumi refresh --yes`;
- `destroy`      `pulumi destroy --yes`.

Before destroying it exports the deployed state (`pulumi stack export
--show-secrets`) and renders from it a compose file of the SAME containers (same
images, commands, entrypoints, env, users, read-only roots, tmpfs, capabilities,
healthchecks, limits, restart policies, log options, volumes, networks including
the internal ones, published ports, dependency order); the files the stack uploads
through its never-started file holders are written to a temp dir and bind-mounted
read-only where the services mount their volumes. Then, on the same engine and
the same ports, it times `docker compose up -d --wait` and `docker compose down
--volumes` (destroy removes the stack's volumes too). It prints every figure, the
ratios and the targets as PASS/FAIL lines, writes bench/converge.json and the
converge section of docs/performance.md.

Timings are a benchmark, not a test: they depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CONTAINER = "docker:index/container:Container"
NETWORK = "docker:index/network:Network"
VOLUME = "docker:index/volume:Volume"
REMOTE_IMAGE = "docker:index/remoteImage:RemoteImage"
# How Pulumi marks a secret in a state export; --show-secrets puts the JSON-encoded value in "plaintext".
SECRET_SIG = "4dabf18193072939515e22adb298388d"
HOLDER_ROLE = "file-holder"

TARGET_NOOP_UP_S = 15.0
TARGET_COLD_UP_RATIO = 1.5
STEP_TIMEOUT_S = 1800
COMPOSE_WAIT_TIMEOUT_S = 900
JSON_OUT = REPO / "bench" / "converge.json"
DOC = REPO / "docs" / "performance.md"
DOC_BEGIN = "<!-- converge:begin (bench/converge.py writes this section) -->"
DOC_END = "<!-- converge:end -->"
SERVICE_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")

# Container properties the renderer carries over, or knows need nothing in compose.
RENDERED = {
    "image", "name", "command", "entrypoints", "envs", "user", "readOnly", "capabilities", "securityOpts",
    "privileged", "memory", "memorySwap", "cpus", "restart", "maxRetryCount", "healthcheck", "logDriver",
    "logOpts", "labels", "networksAdvanced", "ports", "mounts", "tmpfs", "pidMode", "init",
    "destroyGraceSeconds", "shmSize", "workingDir",
}  # fmt: skip
# The provider's own knobs, with their compose equivalent noted in differences():
# wait/waitTimeout (`--wait`), removeVolumes (`down --volumes`), mustRun/start/attach/logs
# (a service is started and kept running), networkMode "bridge" (networks are listed).
PROVIDER_ONLY = {
    "wait", "waitTimeout", "removeVolumes", "mustRun", "start", "attach", "logs", "rm",
    "containerReadRefreshTimeoutMilliseconds", "networkMode", "uploads",
}  # fmt: skip


class BenchError(Exception):
    """A failed step: the message says which, with the tool's own diagnostics."""


# -- the compose file, rendered from a state export -------------------------------------------


def reveal(value: Any) -> Any:
    """`value` with Pulumi's secret wrappers opened and the bridge's `__defaults` markers dropped."""
    if isinstance(value, dict):
        if SECRET_SIG in value:
            if "plaintext" not in value:
                raise BenchError("the export holds encrypted secrets: export it with --show-secrets")
            return reveal(json.loads(value["plaintext"]))
        return {k: reveal(v) for k, v in value.items() if k != "__defaults"}
    if isinstance(value, list):
        return [reveal(v) for v in value]
    return value


def export_resources(export: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The live resources of a `pulumi stack export` (or a raw checkpoint), pending deletes left out."""
    deployment = export.get("deployment") or export.get("checkpoint", {}).get("latest") or {}
    return [r for r in deployment.get("resources") or [] if not r.get("delete")]


def urn_name(urn: str) -> str:
    return urn.rsplit("::", 1)[-1]


def declared(resource: Mapping[str, Any]) -> dict[str, Any]:
    """What the program declared (the state's inputs, secrets revealed), the name resolved from outputs."""
    props: dict[str, Any] = reveal(resource.get("inputs") or resource.get("outputs") or {})
    outputs = resource.get("outputs") or {}
    if "name" not in props and "name" in outputs:
        props["name"] = outputs["name"]
    return props


def label_map(labels: Iterable[Mapping[str, str]] | None) -> dict[str, str]:
    return {item["label"]: item["value"] for item in labels or []}


@dataclass
class Rendered:
    """A compose model, the files it bind-mounts (relative to `files_dir`), and what it left out and why."""

    compose: dict[str, Any]
    files_dir: Path
    files: dict[Path, tuple[bytes, int]] = field(default_factory=dict)
    left_out: dict[str, str] = field(default_factory=dict)
    unrendered: dict[str, list[str]] = field(default_factory=dict)

    def write(self, directory: Path) -> Path:
        """The uploaded files under `files_dir` and `directory`/compose.yaml; returns the compose file.

        The directories are 0755 and the files keep their upload's mode, as in the holders'
        volumes: the bind source is all a container sees (the temp dir above it stays 0700).
        """
        import yaml

        for relative, (content, mode) in sorted(self.files.items()):
            path = self.files_dir / relative
            for parent in reversed(path.relative_to(self.files_dir).parents):
                (self.files_dir / parent).mkdir(mode=0o755, parents=True, exist_ok=True)
                (self.files_dir / parent).chmod(0o755)
            path.write_bytes(content)
            path.chmod(mode)
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / "compose.yaml"
        target.write_text(yaml.safe_dump(escape_interpolation(self.compose), sort_keys=False, width=1000))
        return target


def escape_interpolation(value: Any) -> Any:
    """Compose expands `$VAR` in every string of the file: `$$` keeps a literal `$` (env, shell)."""
    if isinstance(value, str):
        return value.replace("$", "$$")
    if isinstance(value, dict):
        return {k: escape_interpolation(v) for k, v in value.items()}
    if isinstance(value, list):
        return [escape_interpolation(v) for v in value]
    return value


def render_compose(export: Mapping[str, Any], files_dir: Path, project: str) -> Rendered:
    """The compose model of every service container in `export`, the holders' uploads as bind mounts.

    `files_dir` is where `Rendered.write` will put the uploaded files (the bind
    sources are absolute paths under it). File holders (never started) and run-once
    tasks are not services: they are left out, and `left_out` says why.
    """
    resources = export_resources(export)
    by_type: dict[str, list[dict[str, Any]]] = {}
    for resource in resources:
        by_type.setdefault(resource["type"], []).append(resource)
    # The container names its image by ID; compose gets the tag the stack pulled.
    images: dict[str, str] = {}
    for image in by_type.get(REMOTE_IMAGE, []):
        image_id = (image.get("outputs") or {}).get("imageId")
        if image_id:
            images[str(image_id)] = str(declared(image)["name"])
    networks = {declared(r)["name"]: (urn_name(r["urn"]), declared(r)) for r in by_type.get(NETWORK, [])}
    volumes = {declared(r)["name"]: (urn_name(r["urn"]), declared(r)) for r in by_type.get(VOLUME, [])}

    rendered = Rendered({"name": project, "services": {}, "networks": {}, "volumes": {}}, files_dir)
    containers = [(r, declared(r)) for r in by_type.get(CONTAINER, [])]
    file_volumes = holder_files(containers, rendered)
    services: dict[str, str] = {}  # container URN -> service key
    for resource, props in containers:
        labels = label_map(props.get("labels"))
        key = str(labels.get("cluster-ai.container") or urn_name(resource["urn"]))
        if labels.get("cluster-ai.role") == HOLDER_ROLE:
            rendered.left_out[key] = "file holder (never started): its uploads are bind-mounted files instead"
            continue
        if not props.get("healthcheck"):
            rendered.left_out[key] = "run-once task (no healthcheck; with models [] it has nothing to sync)"
            continue
        if not SERVICE_NAME.match(key):
            raise BenchError(f"{resource['urn']}: {key!r} is not a valid compose service name")
        services[resource["urn"]] = key

    children = component_children(resources)
    for resource, props in containers:
        if resource["urn"] not in services:
            continue
        key = services[resource["urn"]]
        service, unrendered = render_service(props, images, networks, volumes, file_volumes, files_dir, rendered)
        depends = sorted(
            {services[u] for dep in resource.get("dependencies") or [] for u in children.get(dep, [dep]) if u in services}
            - {key}
        )  # fmt: skip
        if depends:
            service["depends_on"] = {d: {"condition": "service_healthy"} for d in depends}
        rendered.compose["services"][key] = service
        if unrendered:
            rendered.unrendered[key] = unrendered
    return rendered


def component_children(resources: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Component URN -> the URNs of the custom resources below it (a dependency on a component)."""
    parents = {r["urn"]: r.get("parent") for r in resources}
    out: dict[str, list[str]] = {}
    for resource in resources:
        if not resource.get("custom"):
            continue
        parent = resource.get("parent")
        while parent:
            out.setdefault(parent, []).append(resource["urn"])
            parent = parents.get(parent)
    return out


def holder_files(containers: list[tuple[dict[str, Any], dict[str, Any]]], rendered: Rendered) -> set[str]:
    """Record each holder's uploads as files under `<volume name>/`; return those volumes' names."""
    file_volumes: set[str] = set()
    for resource, props in containers:
        if label_map(props.get("labels")).get("cluster-ai.role") != HOLDER_ROLE:
            continue
        mounts = [m for m in props.get("mounts") or [] if m.get("type") == "volume" and m.get("source")]
        file_volumes.update(m["source"] for m in mounts)
        for upload in props.get("uploads") or []:
            path = upload["file"]
            mount = next((m for m in mounts if path.startswith(m["target"].rstrip("/") + "/")), None)
            if mount is None:
                raise BenchError(f"{resource['urn']}: upload {path} is in none of the holder's volumes")
            relative = Path(mount["source"]) / path[len(mount["target"].rstrip("/")) + 1 :]
            if upload.get("contentBase64"):
                content = base64.b64decode(upload["contentBase64"])
            else:
                content = str(upload.get("content") or "").encode()
            mode = 0o755 if upload.get("executable") else int(str(upload.get("permissions") or "0644"), 8)
            rendered.files[relative] = (content, mode)
    return file_volumes


def whole(value: Any) -> int:
    """A count or size from the state: JSON numbers may arrive as floats (512.0)."""
    number = float(value)
    if not number.is_integer():
        raise BenchError(f"expected a whole number, got {value!r}")
    return int(number)


def render_service(
    props: Mapping[str, Any],
    images: Mapping[str, str],
    networks: Mapping[str, tuple[str, dict[str, Any]]],
    volumes: Mapping[str, tuple[str, dict[str, Any]]],
    file_volumes: set[str],
    files_dir: Path,
    rendered: Rendered,
) -> tuple[dict[str, Any], list[str]]:
    """One container's compose service (and the top-level networks/volumes it uses)."""
    labels = label_map(props.get("labels"))
    labels["cluster-ai.managed-by"] = "compose"
    service: dict[str, Any] = {
        "container_name": props["name"],
        "image": images.get(props["image"], props["image"]),
        "pull_policy": "missing",
        "labels": labels,
    }
    for key, compose_key in (("entrypoints", "entrypoint"), ("command", "command")):
        if props.get(key):
            service[compose_key] = list(props[key])
    if props.get("envs"):
        service["environment"] = list(props["envs"])
    if props.get("user"):
        service["user"] = props["user"]
    if props.get("workingDir"):
        service["working_dir"] = props["workingDir"]
    service["read_only"] = bool(props.get("readOnly"))
    capabilities = props.get("capabilities") or {}
    if capabilities.get("drops"):
        service["cap_drop"] = list(capabilities["drops"])
    if capabilities.get("adds"):
        service["cap_add"] = list(capabilities["adds"])
    if props.get("securityOpts"):
        service["security_opt"] = list(props["securityOpts"])
    service["privileged"] = bool(props.get("privileged"))
    if props.get("init"):
        service["init"] = True
    if props.get("pidMode"):
        service["pid"] = props["pidMode"]
    # The provider's memory figures are MB.
    if props.get("memory"):
        service["mem_limit"] = f"{whole(props['memory'])}m"
    if props.get("memorySwap"):
        service["memswap_limit"] = f"{whole(props['memorySwap'])}m"
    if props.get("shmSize"):
        service["shm_size"] = f"{whole(props['shmSize'])}m"
    if props.get("cpus"):
        service["cpus"] = float(props["cpus"])
    restart = props.get("restart") or "no"
    if restart == "on-failure" and props.get("maxRetryCount"):
        restart = f"on-failure:{whole(props['maxRetryCount'])}"
    service["restart"] = restart
    if props.get("destroyGraceSeconds"):
        service["stop_grace_period"] = f"{whole(props['destroyGraceSeconds'])}s"
    if props.get("logDriver"):
        service["logging"] = {"driver": props["logDriver"], "options": dict(props.get("logOpts") or {})}
    check = props["healthcheck"]
    service["healthcheck"] = {
        "test": list(check["tests"]),
        **{k: check[k] for k in ("interval", "timeout") if check.get(k)},
        **({"retries": whole(check["retries"])} if check.get("retries") else {}),
        **({"start_period": check["startPeriod"]} if check.get("startPeriod") else {}),
    }
    if props.get("tmpfs"):
        service["tmpfs"] = [f"{path}:{options}" if options else path for path, options in props["tmpfs"].items()]
    service["networks"] = service_networks(props, networks, rendered)
    if props.get("ports"):
        service["ports"] = [
            {
                "target": whole(p["internal"]),
                "published": str(whole(p["external"])),
                "host_ip": p.get("ip") or "0.0.0.0",
                "protocol": p.get("protocol") or "tcp",
                "mode": "host",
            }
            for p in props["ports"]
        ]
    mounts = service_mounts(props, volumes, file_volumes, files_dir, rendered)
    if mounts:
        service["volumes"] = mounts
    unrendered = sorted(
        k for k, v in props.items() if k not in RENDERED | PROVIDER_ONLY and v not in (None, False, "", [], {}, 0)
    )
    return service, unrendered


def service_networks(
    props: Mapping[str, Any], networks: Mapping[str, tuple[str, dict[str, Any]]], rendered: Rendered
) -> dict[str, Any]:
    """The service's networks (aliases kept), each declared at the top level under its real name."""
    attached: dict[str, Any] = {}
    for network in props.get("networksAdvanced") or []:
        key, spec = networks.get(network["name"], (network["name"], {"name": network["name"]}))
        top: dict[str, Any] = {"name": spec["name"], "driver": spec.get("driver") or "bridge"}
        if spec.get("internal"):
            top["internal"] = True
        if spec.get("attachable"):
            top["attachable"] = True
        if spec.get("ipv6"):
            top["enable_ipv6"] = True
        if spec.get("options"):
            top["driver_opts"] = dict(spec["options"])
        if spec.get("ipamConfigs"):
            top["ipam"] = {"config": [{"subnet": c["subnet"]} for c in spec["ipamConfigs"] if c.get("subnet")]}
        if spec.get("labels"):
            top["labels"] = label_map(spec["labels"])
        rendered.compose["networks"][key] = top
        attached[key] = {"aliases": list(network["aliases"])} if network.get("aliases") else {}
    return attached


def service_mounts(
    props: Mapping[str, Any],
    volumes: Mapping[str, tuple[str, dict[str, Any]]],
    file_volumes: set[str],
    files_dir: Path,
    rendered: Rendered,
) -> list[dict[str, Any]]:
    """Volumes (named, anonymous scratch), host binds, and the holders' files as read-only binds."""
    out: list[dict[str, Any]] = []
    for mount in props.get("mounts") or []:
        source, target = mount.get("source"), mount["target"]
        if mount.get("type") == "bind":
            entry: dict[str, Any] = {"type": "bind", "source": source, "target": target}
            entry["read_only"] = bool(mount.get("readOnly"))
            propagation = (mount.get("bindOptions") or {}).get("propagation")
            if propagation:
                entry["bind"] = {"propagation": propagation}
            out.append(entry)
        elif source in file_volumes:
            out.append({"type": "bind", "source": str(files_dir / source), "target": target, "read_only": True})
        elif source:
            key, spec = volumes.get(source, (source, {"name": source}))
            top: dict[str, Any] = {"name": spec["name"]}
            if spec.get("labels"):
                top["labels"] = label_map(spec["labels"])
            if spec.get("driver"):
                top["driver"] = spec["driver"]
            if spec.get("driverOpts"):
                # e.g. the textfile volume: a tmpfs owned by the backup's uid.
                top["driver_opts"] = {k: str(v) for k, v in spec["driverOpts"].items()}
            rendered.compose["volumes"][key] = top
            out.append({"type": "volume", "source": key, "target": target, "read_only": bool(mount.get("readOnly"))})
        else:
            # An anonymous volume (scratch space), removed with the container.
            out.append({"type": "volume", "target": target})
    return out


# -- running and timing -----------------------------------------------------------------------


@dataclass
class Step:
    name: str
    seconds: float
    engine: str | None = None
    """The engine's own `Duration:` line (Pulumi steps), for the record."""


def timed(name: str, run: Callable[[], subprocess.CompletedProcess[str]]) -> tuple[Step, str]:
    """Run one step, wall-clock timed; fail with the tool's own output when it fails."""
    started = time.monotonic()
    result = run()
    seconds = time.monotonic() - started
    if result.returncode != 0:
        raise BenchError(
            f"{name} failed (exit {result.returncode}) after {seconds:.1f} s\n--- stdout (end) ---\n"
            f"{result.stdout[-5000:]}\n--- stderr (end) ---\n{result.stderr[-5000:]}"
        )
    duration = re.search(r"Duration: (\S+)", result.stdout)
    step = Step(name, round(seconds, 2), duration.group(1) if duration else None)
    print(f"  {name:<16} {seconds:8.1f} s" + (f"   (engine: {step.engine})" if step.engine else ""), flush=True)
    return step, result.stdout


def run(
    argv: list[str], *, cwd: Path | None = None, timeout: float = STEP_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


def labelled(kind: str, label: str) -> list[str]:
    """Containers, volumes or networks carrying `label` (key=value)."""
    listed = run(
        ["docker", kind, "ls", *(["-a"] if kind == "container" else []), "--filter", f"label={label}",
         "--format", "{{.Names}}" if kind == "container" else "{{.Name}}"],
        timeout=60,
    )  # fmt: skip
    return [line for line in listed.stdout.split() if line]


def container_states(stack: str) -> dict[str, str]:
    """name -> `healthy`, `finished` (exit 0), `held` (a file holder, created) or what else it is."""
    names = labelled("container", f"cluster-ai.stack={stack}")
    if not names:
        return {}
    shown = run(["docker", "inspect", *names], timeout=60)
    states: dict[str, str] = {}
    for container in json.loads(shown.stdout):
        labels = container["Config"]["Labels"] or {}
        state = container["State"]
        if labels.get("cluster-ai.role") == HOLDER_ROLE:
            states[container["Name"].lstrip("/")] = "held" if state["Status"] == "created" else state["Status"]
        elif state["Status"] == "exited":
            states[container["Name"].lstrip("/")] = (
                "finished" if state["ExitCode"] == 0 else f"exit {state['ExitCode']}"
            )
        else:
            states[container["Name"].lstrip("/")] = (state.get("Health") or {}).get("Status") or state["Status"]
    return states


def require_all_healthy(stack: str, who: str) -> dict[str, int]:
    """Counts by state after `who`'s up; fails if any service is not healthy."""
    states = container_states(stack)
    bad = {n: s for n, s in states.items() if s not in ("healthy", "finished", "held")}
    if bad or not states:
        raise BenchError(f"after {who}'s up, not healthy: {bad or 'no container at all'}")
    counts: dict[str, int] = {}
    for state in states.values():
        counts[state] = counts.get(state, 0) + 1
    return counts


def remove_leftovers(stack: str) -> dict[str, list[str]]:
    """Remove whatever still carries the stack's label; return what was left."""
    left: dict[str, list[str]] = {}
    for kind in ("container", "volume", "network"):
        names = labelled(kind, f"cluster-ai.stack={stack}")
        if names:
            left[kind] = names
            rm = ["docker", "rm", "-f", "-v"] if kind == "container" else ["docker", kind, "rm"]
            run([*rm, *names], timeout=120)
    return left


def engine_env() -> dict[str, str]:
    """The toolchain's environment (tests/support/engine.py), or a `pulumi` on PATH."""
    from tests.support.engine import toolchain_env

    env = toolchain_env()
    if env is None and shutil.which("pulumi"):
        env = {"PATH": os.environ["PATH"]}
    if env is None:
        raise BenchError("no Pulumi CLI: run `make toolchain` (or install Pulumi)")
    return env


def stack_config() -> dict[str, Any]:
    """Pulumi.e2e.yaml with no models: nothing to pull, so no model registry is needed."""
    import yaml

    config: dict[str, Any] = yaml.safe_load((REPO / "Pulumi.e2e.yaml").read_text())["config"]
    config["cluster-ai:models"] = []
    return config


def tool_version(argv: list[str]) -> str:
    shown = run(argv, timeout=60)
    return (shown.stdout or shown.stderr).strip().splitlines()[0] if shown.returncode == 0 else "unavailable"


def check_engine_is_free() -> None:
    """Another cluster-ai deployment on this engine would hold the same published ports."""
    busy = labelled("container", "cluster-ai.project=cluster-ai")
    if busy:
        raise BenchError(f"containers of another cluster-ai stack run on this engine (same ports): {busy[:5]}")


def one_run(index: int, base: Path, engine: Mapping[str, str], *, policies: bool = True) -> dict[str, Any]:
    """Pulumi's cold up, no-op up, refresh, export, destroy; then compose up --wait and down."""
    from tests.support.engine import make_workspace

    check_engine_is_free()
    workdir = base / f"run{index}"
    (workdir / "stack").mkdir(parents=True)
    workspace = make_workspace(workdir / "stack", stack_config(), engine, prefix="bench")
    stack = workspace.stack
    project = f"cluster-ai-{stack}"
    created = workspace.pulumi("stack", "init")
    if created.returncode != 0:
        raise BenchError(f"pulumi stack init {stack} failed: {created.stderr[-2000:]}")
    compose_dir = workdir / "compose"
    compose_file: Path | None = None
    steps: dict[str, Step] = {}
    record: dict[str, Any] = {"run": index, "stack": stack}
    print(f"run {index}: stack {stack} in {workdir}", flush=True)
    up = ("up", "--yes", *(("--policy-pack", "policies") if policies else ()))
    record["policyPack"] = policies
    try:
        steps["cold_up"], _ = timed("pulumi up (cold)", lambda: workspace.pulumi(*up, timeout=STEP_TIMEOUT_S))
        record["pulumiContainers"] = require_all_healthy(stack, "pulumi")
        steps["noop_up"], _ = timed("pulumi up (no-op)", lambda: workspace.pulumi(*up, timeout=STEP_TIMEOUT_S))
        record["noopChanges"] = workspace.last_update_changes()
        # The same no-op through the project's own entry point (Automation API): it
        # previews (refresh included) and, finding nothing to change, applies nothing.
        steps["noop_up_stacks"], said = timed(
            "stacks up (no-op)",
            lambda: workspace.run("up", stack, *(() if policies else ("--no-policies",)), timeout=STEP_TIMEOUT_S),
        )
        applied = "no changes: " not in said
        record["noopStacksApplied"] = applied
        record["noopChangesStacks"] = workspace.last_update_changes() if applied else {}
        steps["refresh"], _ = timed(
            "pulumi refresh", lambda: workspace.pulumi("refresh", "--yes", timeout=STEP_TIMEOUT_S)
        )
        exported = workspace.pulumi("stack", "export", "--show-secrets")
        if exported.returncode != 0:
            raise BenchError(f"stack export failed: {exported.stderr[-3000:]}")
        export = json.loads(exported.stdout)
        record["pulumiResources"] = dict(Counter(r["type"] for r in export_resources(export)))
        rendered = render_compose(export, compose_dir / "files", project)
        compose_file = rendered.write(compose_dir)
        record["composeServices"] = len(rendered.compose["services"])
        record["leftOutOfCompose"] = rendered.left_out
        record["notRendered"] = rendered.unrendered
        steps["destroy"], _ = timed(
            "pulumi destroy", lambda: workspace.pulumi("destroy", "--yes", timeout=STEP_TIMEOUT_S)
        )
        left = remove_leftovers(stack)
        if left:
            raise BenchError(f"pulumi destroy left {left}")

        compose = ["docker", "compose", "--project-name", project, "--file", str(compose_file)]
        steps["compose_up"], _ = timed(
            "compose up --wait",
            lambda: run(
                [*compose, "up", "--detach", "--wait", "--wait-timeout", str(COMPOSE_WAIT_TIMEOUT_S)], cwd=compose_dir
            ),
        )
        record["composeContainers"] = require_all_healthy(stack, "compose")
        steps["compose_down"], _ = timed("compose down", lambda: run([*compose, "down", "--volumes"], cwd=compose_dir))
        compose_file = None
        left = remove_leftovers(stack)
        if left:
            raise BenchError(f"compose down left {left}")
    finally:
        if compose_file is not None:
            run(["docker", "compose", "--project-name", project, "--file", str(compose_file), "down", "--volumes"])
        if "destroy" not in steps:
            workspace.pulumi("destroy", "--yes", timeout=STEP_TIMEOUT_S)
        remove_leftovers(stack)
    record["seconds"] = {k: s.seconds for k, s in steps.items()}
    record["engineDurations"] = {k: s.engine for k, s in steps.items() if s.engine}
    record["ratios"] = ratios(record["seconds"])
    return record


def ratios(seconds: Mapping[str, float]) -> dict[str, float]:
    return {
        "coldUpOverComposeUp": round(seconds["cold_up"] / seconds["compose_up"], 2),
        "destroyOverComposeDown": round(seconds["destroy"] / seconds["compose_down"], 2),
    }


def verdicts(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets, judged on the worst run."""
    noop = max(r["seconds"]["noop_up"] for r in runs)
    cold = max(r["ratios"]["coldUpOverComposeUp"] for r in runs)
    stacks_up = max(r["seconds"].get("noop_up_stacks", 0.0) for r in runs)
    changed = [
        changes
        for r in runs
        for changes in (r["noopChanges"], r.get("noopChangesStacks") or {})
        if any(op != "same" and n for op, n in changes.items())
    ]
    return [
        {"target": f"no-op up <= {TARGET_NOOP_UP_S:g} s", "measured": f"{noop:.1f} s", "pass": noop <= TARGET_NOOP_UP_S},
        {"target": f"no-op `python -m stacks up` <= {TARGET_NOOP_UP_S:g} s", "measured": f"{stacks_up:.1f} s", "pass": stacks_up <= TARGET_NOOP_UP_S},
        {"target": f"cold up <= {TARGET_COLD_UP_RATIO:g}x compose up", "measured": f"{cold:.2f}x", "pass": cold <= TARGET_COLD_UP_RATIO},
        {"target": "no-op up changes nothing", "measured": "no change" if not changed else str(changed), "pass": not changed},
    ]  # fmt: skip


def differences(run: Mapping[str, Any]) -> list[str]:
    """What differs between the two tools' runs, with the counts of `run`'s own export."""
    kinds = run.get("pulumiResources") or {}
    left_out = run.get("leftOutOfCompose") or {}
    holders = sum(1 for why in left_out.values() if why.startswith("file holder"))
    return [
        "Pulumi previews first and (unless the run says otherwise) runs the policy pack, as `make up` does; "
        "compose has neither.",
        f"Pulumi also manages what compose has no notion of: {kinds.get('random:index/randomPassword:RandomPassword', 0)} "
        f"generated passwords (random provider), {kinds.get(REMOTE_IMAGE, 0)} image resources (the images are "
        f"already local and kept: `keep_locally`), and {holders} never-started file holders that upload secrets "
        "and config into their volumes; compose bind-mounts the same files read-only from a temp dir instead.",
        "Pulumi runs the run-once model-sync task (with models [] it has nothing to pull); compose leaves it out "
        "(`--wait` fails on a container that exits unless a service depends on it).",
        "Both wait for every healthcheck: Pulumi per container (the provider's `wait`), in dependency order; "
        "compose with `--wait` and `depends_on: service_healthy` rendered from the same dependencies.",
        "`docker compose down --volumes`: destroy removes the stack's volumes too, so down does the same.",
        "Compose adds each service's name as one more DNS alias on its networks, and its own labels.",
    ]


def report(runs: list[dict[str, Any]], machine: Mapping[str, Any]) -> dict[str, Any]:
    pack = all(r.get("policyPack", True) for r in runs)
    results = {
        "generatedBy": "bench/converge.py",
        "machine": dict(machine),
        "stackConfig": "Pulumi.e2e.yaml with cluster-ai:models = [] (no model registry needed)",
        "commands": {
            "cold_up / noop_up": "pulumi up --yes --policy-pack policies"
            if pack
            else "pulumi up --yes (no policy pack)",
            "noop_up_stacks": "python -m stacks up STACK (the Automation API"
            + ("; policy pack applied)" if pack else ", --no-policies)"),
            "refresh": "pulumi refresh --yes",
            "destroy": "pulumi destroy --yes",
            "compose_up": f"docker compose up --detach --wait --wait-timeout {COMPOSE_WAIT_TIMEOUT_S}",
            "compose_down": "docker compose down --volumes",
        },
        "runs": runs,
        "targets": verdicts(runs),
        "differences": differences(runs[-1]),
    }
    return results


def print_summary(results: Mapping[str, Any]) -> None:
    for r in results["runs"]:
        s, q = r["seconds"], r["ratios"]
        print(
            f"run {r['run']}: cold up {s['cold_up']:.1f} s, compose up {s['compose_up']:.1f} s "
            f"(ratio {q['coldUpOverComposeUp']:.2f}); no-op up {s['noop_up']:.1f} s "
            f"(python -m stacks up: {s.get('noop_up_stacks', 0.0):.1f} s); refresh {s['refresh']:.1f} s; "
            f"destroy {s['destroy']:.1f} s, compose down {s['compose_down']:.1f} s (ratio {q['destroyOverComposeDown']:.2f})"
        )
    for verdict in results["targets"]:
        print(f"{'PASS' if verdict['pass'] else 'FAIL'}: {verdict['target']} (measured {verdict['measured']})")


def doc_section(results: Mapping[str, Any]) -> str:
    """The converge section of docs/performance.md."""
    m = results["machine"]
    lines = [
        DOC_BEGIN,
        "## The real engine: `pulumi up` of the dev stack beside `docker compose`",
        "",
        "`make bench` also runs `bench/converge.py`: on the real Pulumi engine (the toolchain",
        "`make toolchain` builds) and this machine's Docker engine, the dev stack of",
        f"{results['stackConfig']}, then `docker compose` (Compose {m['compose']}, built by `ci/compose.sh`)",
        "running the same containers from a compose file rendered from the deployed stack's",
        "`pulumi stack export --show-secrets`, in the same run, on the same ports.",
        "",
        f"Machine: {m['cpus']} cores, Docker {m['docker']}, {m['pulumi']}; load average at start {m['loadavg']}.",
        "",
        "| run | cold up s | compose up s | cold / compose | no-op up s | no-op `stacks up` s | refresh s | destroy s | compose down s | destroy / down |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["runs"]:
        s, q = r["seconds"], r["ratios"]
        lines.append(
            f"| {r['run']} | {s['cold_up']:.1f} | {s['compose_up']:.1f} | {q['coldUpOverComposeUp']:.2f} | "
            f"{s['noop_up']:.1f} | {s.get('noop_up_stacks', 0.0):.1f} | {s['refresh']:.1f} | {s['destroy']:.1f} | {s['compose_down']:.1f} | "
            f"{q['destroyOverComposeDown']:.2f} |"
        )
    lines += ["", "| target | measured (worst run) | verdict |", "|---|---|---|"]
    lines += [f"| {v['target']} | {v['measured']} | {'PASS' if v['pass'] else 'FAIL'} |" for v in results["targets"]]
    lines += [
        "",
        "`python -m stacks up` first previews (live state read first, policy pack applied): that preview",
        "decides the pre-update dump of PostgreSQL / Open WebUI, and when it plans no change `stacks up`",
        "stops there. A no-op is one engine pass; an update with changes is two (preview, then update).",
    ]
    lines += ["", "Commands:", ""]
    lines += [f"- {name}: `{command}`" for name, command in results["commands"].items()]
    lines += ["", "What differs between the two (the comparison is otherwise the same containers):", ""]
    lines += [f"- {d}" for d in results["differences"]]
    left_out = results["runs"][-1].get("leftOutOfCompose") or {}
    holders = sorted(k for k, why in left_out.items() if why.startswith("file holder"))
    others = sorted(k for k in left_out if k not in holders)
    lines += [
        "",
        f"Compose ran {results['runs'][-1].get('composeServices')} services; left out: {len(holders)} file holders"
        + "".join(f", `{k}` ({left_out[k]})" for k in others)
        + ".",
        "",
        "Reproduce: `make bench` (both benchmarks) or `make bench-converge ARGS=--runs=2` (needs",
        "`make toolchain images`; `ci/compose.sh` builds Compose). Nothing else may run a cluster-ai",
        "stack on the engine meanwhile: the ports are the same. Timings are not tests.",
        DOC_END,
    ]
    return "\n".join(lines) + "\n"


def write_doc(section: str, path: Path = DOC) -> None:
    """Replace the converge section of `path` (or append it), leaving the rest as it is."""
    text = path.read_text() if path.is_file() else ""
    if DOC_BEGIN in text and DOC_END in text:
        head, rest = text.split(DOC_BEGIN, 1)
        tail = rest.split(DOC_END, 1)[1].lstrip("\n")
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "kernel": platform.release(),
        "docker": tool_version(["docker", "version", "--format", "{{.Server.Version}}"]),
        "compose": tool_version(["docker", "compose", "version", "--short"]),
        "pulumi": "pulumi " + tool_version(["pulumi", "version"]),
    }


def render_only(export_path: Path, outdir: Path) -> int:
    """Write the compose file rendered from an export, and let compose validate it."""
    outdir = outdir.resolve()
    rendered = render_compose(json.loads(export_path.read_text()), outdir / "files", "cluster-ai-render")
    target = rendered.write(outdir)
    print(f"wrote {target} ({len(rendered.compose['services'])} services); left out: {rendered.left_out}")
    if rendered.unrendered:
        print(f"not rendered: {rendered.unrendered}")
    if shutil.which("docker") and run(["docker", "compose", "version"], timeout=60).returncode == 0:
        checked = run(["docker", "compose", "--file", str(target), "config", "--quiet"], timeout=120)
        print("docker compose config:", "ok" if checked.returncode == 0 else checked.stderr.strip())
        return checked.returncode
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=1, help="how many full runs (each: Pulumi then compose)")
    parser.add_argument("--render-only", nargs=2, metavar=("EXPORT", "OUTDIR"), type=Path)
    parser.add_argument(
        "--no-policies", action="store_true", help="`pulumi up` without the policy pack (recorded in the JSON)"
    )
    parser.add_argument("--no-write", action="store_true", help="print only: no bench/converge.json, no docs")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    try:
        if args.render_only:
            return render_only(*args.render_only)
        if run(["docker", "compose", "version"], timeout=60).returncode != 0:
            raise BenchError("no `docker compose` (v2): run `bash ci/compose.sh`")
        engine = engine_env()
        os.environ["PATH"] = engine.get("PATH", os.environ["PATH"])
        from tests.support.dockerd import ensure_docker_engine

        reason = ensure_docker_engine()  # and a shared `/`, which the node exporter's bind needs
        if reason is not None:
            raise BenchError(reason)
        facts = machine()
        print(f"machine: {facts}", flush=True)
        runs: list[dict[str, Any]] = []
        with tempfile.TemporaryDirectory(prefix="converge-") as base:
            for index in range(1, args.runs + 1):
                runs.append(one_run(index, Path(base), engine, policies=not args.no_policies))
                # Written after every run: a later run that fails keeps the earlier figures.
                results = report(runs, facts)
                if not args.no_write:
                    publish(results)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print_summary(results)
    if len(runs) > 1:
        medians = {k: statistics.median(r["seconds"][k] for r in runs) for k in runs[0]["seconds"]}
        print("medians: " + ", ".join(f"{k} {v:.1f} s" for k, v in medians.items()))
    return 0


def publish(results: Mapping[str, Any]) -> None:
    JSON_OUT.write_text(json.dumps(results, indent=2) + "\n")
    write_doc(doc_section(results))
    print(f"wrote {JSON_OUT.relative_to(REPO)} and the converge section of {DOC.relative_to(REPO)}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
