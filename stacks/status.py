"""`python -m stacks status STACK [--json]`: the live health of a deployed stack.

What *should* run comes from the declarations (the offline plan: the real
program under the SDK's mocks), never from a hand-kept list:

- every declared container, on the host its Docker provider points at (unix://
  in dev, ssh:// in prod), found by its labels `cluster-ai.stack` and
  `cluster-ai.container` (Docker's own name carries a random suffix): present,
  in the state its role calls for, and made from the pinned image (the
  container's image id equals what the pinned reference resolves to on that
  host). A service runs, healthy when it declares a healthcheck; a run-once task
  (the model sync) has exited 0, or is still running; a file holder
  (`<service>-files`, which only carries files into volumes) was created and never
  started. The role is read from the declaration as the policy pack reads it;
- Dask: the scheduler answers, with exactly the declared workers (by name) and
  the declared total of `GPU` resources;
- Ollama: every pinned model present, with the pinned digest (`GET /api/tags`);
- Open WebUI and the public proxy answer `/health`;
- backups: the age of the last successful dump, stale past two intervals.

A table for people, `--json` for machines; exit 0 when everything is as
declared, 1 when anything is off (2: bad config, 6: no such stack). A check
whose endpoint is unknown (e.g. prod's scheduler without `--scheduler`) is
reported as skipped, with the reason.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from components.backup import BACKUP_DIR, LAST_SUCCESS, max_age_s
from infra.config import ClusterSpec, load_spec, parse_image
from policies.cis import is_file_holder, is_task
from stacks.mocks import Evaluation, Resource
from stacks.stackfile import REPO, read_stack_config

EXIT_OK = 0
EXIT_OFF = 1
EXIT_CONFIG = 2
EXIT_NO_STACK = 6

CONTAINER = "docker:index/container:Container"
REMOTE_IMAGE = "docker:index/remoteImage:RemoteImage"
TIMEOUT_S = 10.0

OK = "ok"
FAIL = "FAIL"
SKIP = "skip"

# What a declared container is for, and so which state is healthy for it.
SERVICE = "service"
"""Runs for good: running, and healthy when it declares a healthcheck."""
TASK = "task"
"""Runs once (`pulumi up` waits for it): exited 0 when done, or still running."""
FILE_HOLDER = "file-holder"
"""Created and never started: it only carries a service's files into volumes."""


@dataclass
class Check:
    """One line of the report."""

    kind: str
    """container | dask | models | http | backup"""
    name: str
    host: str | None
    state: str
    """ok, FAIL or skip."""
    detail: str
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.state != FAIL

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "host": self.host,
            "state": self.state,
            "ok": self.ok,
            "detail": self.detail,
            **self.data,
        }


@dataclass
class Report:
    stack: str
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {
            "stack": self.stack,
            "ok": self.ok,
            "failed": sum(1 for c in self.checks if c.state == FAIL),
            "skipped": sum(1 for c in self.checks if c.state == SKIP),
            "checks": [c.to_json() for c in self.checks],
        }


# -- what is declared ------------------------------------------------------------


@dataclass(frozen=True)
class DeclaredContainer:
    """A container as the program declares it."""

    name: str
    """The Pulumi resource name: the `cluster-ai.container` label."""
    service: str
    host: str
    docker_url: str
    image: str | None
    """The pinned reference of the RemoteImage it runs."""
    has_healthcheck: bool
    command: tuple[str, ...]
    labels: Mapping[str, str]
    ssh_opts: tuple[str, ...] = ()
    """The `ssh` options of the host's Docker provider (host key pinned), for `ssh://` hosts."""
    role: str = SERVICE
    """SERVICE, TASK or FILE_HOLDER: which state counts as healthy."""


def role_of(inputs: Mapping[str, Any]) -> str:
    """A declared container's role, by the same tests the policy pack applies to its inputs."""
    if is_file_holder(inputs):
        return FILE_HOLDER
    if is_task(inputs):
        return TASK
    return SERVICE


def _labels(inputs: Mapping[str, Any]) -> dict[str, str]:
    return {str(item["label"]): str(item["value"]) for item in inputs.get("labels") or []}


def _image_of(container: Resource, evaluation: Evaluation) -> str | None:
    for urn in container.property_dependencies.get("image", ()):
        dep = evaluation.get(urn)
        if dep.type == REMOTE_IMAGE:
            return str(dep.plain_inputs().get("name"))
    return None


def declared_containers(evaluation: Evaluation) -> list[DeclaredContainer]:
    """Every container the stack declares, with the Docker endpoint of its host."""
    out = []
    for r in evaluation.by_type(CONTAINER):
        inputs = r.plain_inputs()
        labels = _labels(inputs)
        provider = evaluation.get(r.provider_urn) if r.provider_urn else None
        provider_inputs = provider.plain_inputs() if provider else {}
        docker_url = str(provider_inputs.get("host", ""))
        ssh_opts = tuple(str(o) for o in provider_inputs.get("sshOpts") or [])
        command = tuple(str(part) for part in inputs.get("command") or [])
        out.append(
            DeclaredContainer(
                name=r.name,
                service=labels.get("cluster-ai.service", ""),
                host=labels.get("cluster-ai.host", ""),
                docker_url=docker_url or "unix:///var/run/docker.sock",
                image=_image_of(r, evaluation),
                has_healthcheck=bool(inputs.get("healthcheck")),
                command=command,
                labels=labels,
                ssh_opts=ssh_opts,
                role=role_of(inputs),
            )
        )
    return sorted(out, key=lambda c: (c.host, c.name))


@dataclass(frozen=True)
class DeclaredWorker:
    name: str
    gpus: int


def declared_workers(containers: Sequence[DeclaredContainer]) -> list[DeclaredWorker]:
    """Dask workers by their `--name`, with the `GPU=n` resources they declare."""
    workers = []
    for c in containers:
        if c.service != "dask-worker" or c.role != SERVICE:
            continue
        flags = list(c.command)
        name = flags[flags.index("--name") + 1] if "--name" in flags else c.name
        gpus = 0
        if "--resources" in flags:
            for part in flags[flags.index("--resources") + 1].split(","):
                key, _, value = part.partition("=")
                if key.strip() == "GPU":
                    gpus += int(float(value))
        workers.append(DeclaredWorker(name, gpus))
    return sorted(workers, key=lambda w: w.name)


# -- endpoints --------------------------------------------------------------------


@dataclass
class TlsFiles:
    """A client certificate for a scheduler that requires mutual TLS."""

    ca_file: str
    cert: str
    key: str

    def security(self) -> Any:
        from distributed import Security

        return Security(
            tls_ca_file=self.ca_file, tls_client_cert=self.cert, tls_client_key=self.key, require_encryption=True
        )


@dataclass
class Endpoints:
    """Where the checks reach the services; defaults come from the stack config."""

    scheduler: str | None = None
    ollama: dict[str, str] = field(default_factory=dict)
    """Worker host -> Ollama base URL."""
    webui: str | None = None
    proxy: str | None = None
    docker: dict[str, str] = field(default_factory=dict)
    """Host -> Docker endpoint, overriding the declared provider's."""
    tls: TlsFiles | None = None


def default_endpoints(spec: ClusterSpec, containers: Sequence[DeclaredContainer]) -> Endpoints:
    """dev publishes on its loopback bind address; prod is reached through its proxy."""
    endpoints = Endpoints()
    if not spec.is_prod and not spec.tls_enabled:
        bind = spec.bind_address
        endpoints.scheduler = f"tcp://{bind}:{spec.ports.scheduler}"
        endpoints.webui = f"http://{bind}:{spec.ports.webui}"
        endpoints.ollama = {
            c.host: f"http://{bind}:{spec.ports.ollama}"
            for c in containers
            if c.service == "ollama" and c.role == SERVICE
        }
    if spec.proxy is not None:
        endpoints.proxy = f"https://{spec.proxy.domain}"
    return endpoints


# -- containers ------------------------------------------------------------------


class UnpinnedHostError(Exception):
    """An `ssh://` host whose provider declares no pinned host key: status will not dial it."""


def ssh_dial_argv(url: str, ssh_opts: Sequence[str]) -> list[str]:
    """`ssh <the provider's options> -l user -- host docker system dial-stdio` for an `ssh://` URL.

    The same options every docker.Provider of the stack uses (components/host.py
    `ssh_options`): the pinned key through KnownHostsCommand, strict checking, no
    known_hosts file of the user's read or written.
    """
    if "StrictHostKeyChecking=yes" not in ssh_opts or not any(o.startswith("KnownHostsCommand=") for o in ssh_opts):
        raise UnpinnedHostError(f"{url}: the stack declares no pinned host key for it (sshOpts)")
    parts = urlsplit(url)
    if parts.scheme != "ssh" or not parts.hostname:
        raise UnpinnedHostError(f"{url}: not an ssh:// Docker endpoint")
    argv = ["ssh", *ssh_opts]
    if parts.username:
        argv += ["-l", parts.username]
    # urlsplit takes the brackets off an IPv6 address; ssh wants it bare.
    return [*argv, "--", parts.hostname, "docker", "system", "dial-stdio"]


class SshDockerTunnel:
    """A private unix socket whose every connection is bridged to `docker system dial-stdio`
    on the host over `ssh` with the stack's pinned host key (what the Pulumi provider does)."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self._dir = tempfile.mkdtemp(prefix="cluster-ai-status-")
        self.path = f"{self._dir}/docker.sock"
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.path)
        self._listener.listen(8)
        self._processes: list[subprocess.Popen[bytes]] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"unix://{self.path}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            process = subprocess.Popen(
                self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
            )
            self._processes.append(process)
            threading.Thread(target=self._pump_in, args=(conn, process), daemon=True).start()
            threading.Thread(target=self._pump_out, args=(conn, process), daemon=True).start()

    @staticmethod
    def _pump_in(conn: socket.socket, process: subprocess.Popen[bytes]) -> None:
        assert process.stdin is not None
        try:
            while data := conn.recv(65536):
                process.stdin.write(data)
                process.stdin.flush()
        except OSError:
            pass
        finally:
            with _quietly():
                process.stdin.close()

    @staticmethod
    def _pump_out(conn: socket.socket, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        try:
            while data := os.read(process.stdout.fileno(), 65536):
                conn.sendall(data)
        except OSError:
            pass
        finally:
            with _quietly():
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        for process in self._processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=TIMEOUT_S)
        shutil.rmtree(self._dir, ignore_errors=True)


@contextmanager
def _quietly() -> Iterator[None]:
    try:
        yield
    except OSError:
        pass


def docker_client(url: str, timeout: float = TIMEOUT_S, ssh_opts: Sequence[str] = ()) -> Any:
    """A Docker API client for a host: the local socket, or `ssh://` over a tunnel that pins
    the host key exactly as the stack's docker.Provider does (never the user's known_hosts)."""
    import docker

    if not url.startswith("ssh://"):
        return docker.DockerClient(base_url=url, timeout=int(timeout))
    tunnel = SshDockerTunnel(ssh_dial_argv(url, ssh_opts))
    try:
        client = docker.DockerClient(base_url=tunnel.url, timeout=int(timeout))
    except Exception:
        tunnel.close()
        raise
    close = client.close

    def close_both() -> None:
        close()
        tunnel.close()

    client.close = close_both
    return client


def _image_id(client: Any, reference: str, cache: dict[str, str | None]) -> str | None:
    if reference in cache:
        return cache[reference]
    import docker.errors

    ref = parse_image(reference)
    # A `repo:tag@digest` reference is looked up by its digest, as Docker does.
    lookup = f"{ref.repo}@{ref.digest}" if ref.digest else reference
    try:
        found: str | None = client.images.get(lookup).id
    except docker.errors.ImageNotFound:
        found = None
    cache[reference] = found
    return found


def read_file(container: Any, path: str, limit: int = 4096) -> str | None:
    """A small file from a container's filesystem (works on stopped containers too)."""
    import docker.errors

    try:
        stream, _ = container.get_archive(path)
    except docker.errors.NotFound:
        return None
    data = b"".join(stream)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        member = tar.next()
        if member is None or not member.isfile():
            return None
        handle = tar.extractfile(member)
        return handle.read(limit).decode(errors="replace") if handle else None


def check_containers(
    declared: Sequence[DeclaredContainer],
    *,
    stack_label: str,
    docker_urls: Mapping[str, str] | None = None,
    backup_max_age_s: int | None = None,
    now: float | None = None,
) -> list[Check]:
    """Each declared container on its host: present, running, healthy, pinned image."""
    checks: list[Check] = []
    by_url: dict[str, list[DeclaredContainer]] = {}
    for c in declared:
        by_url.setdefault((docker_urls or {}).get(c.host, c.docker_url), []).append(c)
    for url, group in by_url.items():
        try:
            client = docker_client(url, ssh_opts=group[0].ssh_opts)
            found = client.containers.list(all=True, filters={"label": [f"cluster-ai.stack={stack_label}"]})
        except Exception as exc:  # noqa: BLE001 - any failure to reach a host is a finding, not a crash
            for c in group:
                checks.append(Check("container", c.name, c.host, FAIL, f"Docker on {url} unreachable: {exc}"))
            continue
        try:
            index: dict[str, list[Any]] = {}
            for container in found:
                index.setdefault(container.labels.get("cluster-ai.container", ""), []).append(container)
            images: dict[str, str | None] = {}
            for c in group:
                checks.append(_container_check(c, index.get(c.name, []), client, images))
                if c.service == "backup" and c.role == SERVICE and index.get(c.name):
                    checks.append(_backup_check(c, index[c.name][0], backup_max_age_s, now))
        finally:
            client.close()
    return checks


def _container_check(c: DeclaredContainer, matches: list[Any], client: Any, images: dict[str, str | None]) -> Check:
    if not matches:
        return Check("container", c.name, c.host, FAIL, "missing: no container with this label", {"present": False})
    if len(matches) > 1:
        names = ", ".join(sorted(m.name for m in matches))
        return Check("container", c.name, c.host, FAIL, f"{len(matches)} containers claim this name: {names}")
    container = matches[0]
    state = container.attrs.get("State", {})
    running = bool(state.get("Running"))
    health = (state.get("Health") or {}).get("Status")
    expected = _image_id(client, c.image, images) if c.image else None
    actual = container.attrs.get("Image")
    data = {
        "present": True,
        "role": c.role,
        "status": state.get("Status"),
        "exitCode": state.get("ExitCode"),
        "running": running,
        "health": health,
        "image": c.image,
        "imageId": actual,
        "pinnedImageId": expected,
        "docker": container.name,
    }
    summary, problems = _state_problems(c, state, health)
    if c.image is not None and expected is None:
        problems.append(f"pinned image {c.image} is not on the host")
    elif expected is not None and actual != expected:
        problems.append(f"made from {str(actual)[:19]}, not the pinned {c.image} ({expected[:19]})")
    data["pinned"] = expected is not None and actual == expected
    if problems:
        return Check("container", c.name, c.host, FAIL, "; ".join(problems), data)
    return Check("container", c.name, c.host, OK, f"{summary}, pinned image", data)


def _state_problems(c: DeclaredContainer, state: Mapping[str, Any], health: str | None) -> tuple[str, list[str]]:
    """What the container's state means for its role: a summary when healthy, else the problems.

    Docker's `State.Status` is one of created, running, paused, restarting, removing,
    exited or dead; only a container that was never started is still `created`.
    """
    status = str(state.get("Status") or "unknown")
    exit_code = state.get("ExitCode")
    if c.role == FILE_HOLDER:
        if status == "created" and not state.get("Running"):
            return "created, never started (carries files)", []
        # Started by someone: it was never meant to run anything.
        return "", [f"a file holder must never start, but it is {status} (exit {exit_code})"]
    if c.role == TASK:
        if status == "exited" and exit_code == 0:
            return "finished (exit 0)", []
        if status == "running":
            return "running (a task, not finished yet)", []
        if status == "exited":
            return "", [f"task failed (exit {exit_code})"]
        return "", [f"task {'never ran' if status == 'created' else status} (exit {exit_code})"]
    problems = []
    if not state.get("Running"):
        problems.append(f"not running ({status}, exit {exit_code})")
    if c.has_healthcheck and health != "healthy":
        problems.append(f"health {health or 'unknown'}")
    return f"running, {health or 'no healthcheck'}", problems


def _backup_check(c: DeclaredContainer, container: Any, max_age: int | None, now: float | None) -> Check:
    text = read_file(container, f"{BACKUP_DIR}/{LAST_SUCCESS}")
    if text is None or not text.strip().isdigit():
        return Check("backup", c.name, c.host, FAIL, "no successful backup yet", {"ageSeconds": None})
    age = int((time.time() if now is None else now) - int(text.strip()))
    data = {"ageSeconds": age, "maxAgeSeconds": max_age}
    detail = f"last backup {_human(age)} ago"
    if max_age is not None and age > max_age:
        return Check("backup", c.name, c.host, FAIL, f"{detail}: stale (more than {_human(max_age)})", data)
    return Check("backup", c.name, c.host, OK, detail, data)


def _human(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


# -- Dask --------------------------------------------------------------------------


def check_dask(
    address: str | None,
    workers: Sequence[DeclaredWorker],
    *,
    security: Any = None,
    timeout: float = TIMEOUT_S,
) -> Check:
    """The scheduler answers with the declared workers and the declared GPUs."""
    if address is None:
        return Check("dask", "scheduler", None, SKIP, "no scheduler address: pass --scheduler")
    from distributed import Client

    try:
        with Client(address, timeout=timeout, security=security, set_as_default=False) as client:
            info = client.scheduler_info(n_workers=-1)
    except Exception as exc:  # noqa: BLE001 - unreachable is the finding
        return Check("dask", "scheduler", None, FAIL, f"scheduler {address} unreachable: {exc or type(exc).__name__}")
    live = info.get("workers", {}).values()
    names = sorted(str(w.get("name")) for w in live)
    gpus = sum(int(float((w.get("resources") or {}).get("GPU", 0))) for w in live)
    want_names = sorted(w.name for w in workers)
    want_gpus = sum(w.gpus for w in workers)
    data = {
        "address": address,
        "workers": names,
        "declaredWorkers": want_names,
        "gpus": gpus,
        "declaredGpus": want_gpus,
    }
    problems = []
    if len(names) != len(want_names):
        problems.append(f"{len(names)} workers, {len(want_names)} declared")
    missing = sorted(set(want_names) - set(names))
    if missing:
        problems.append("missing " + ", ".join(missing))
    if gpus != want_gpus:
        problems.append(f"{gpus} GPUs, {want_gpus} declared")
    if problems:
        return Check("dask", "scheduler", None, FAIL, "; ".join(problems), data)
    return Check("dask", "scheduler", None, OK, f"{len(names)} workers, {gpus} GPUs, as declared", data)


# -- models and HTTP ----------------------------------------------------------------


def display_name(name: str) -> str:
    """A model name as Ollama lists it (tag filled in, default registry and namespace dropped)."""
    parts = name.split("/")
    if ":" not in parts[-1]:
        parts[-1] += ":latest"
    if len(parts) == 3 and parts[0] == "registry.ollama.ai":
        parts = parts[1:]
    if len(parts) == 2 and parts[0] == "library":
        parts = parts[1:]
    return "/".join(parts)


def check_models(
    host: str, url: str | None, pins: Sequence[tuple[str, str | None]], *, timeout: float = TIMEOUT_S
) -> Check:
    """Every pinned model present on this Ollama, with its pinned digest."""
    if url is None:
        return Check("models", "ollama", host, SKIP, f"no Ollama endpoint for host {host}: pass --ollama {host}=URL")
    try:
        response = httpx.get(f"{url.rstrip('/')}/api/tags", timeout=timeout)
        response.raise_for_status()
        listed = {display_name(str(m.get("name"))): str(m.get("digest", "")) for m in response.json().get("models", [])}
    except (httpx.HTTPError, ValueError) as exc:
        return Check("models", "ollama", host, FAIL, f"{url}/api/tags: {exc}")
    problems = []
    for name, digest in pins:
        have = listed.get(display_name(name))
        if have is None:
            problems.append(f"{name} missing")
        elif digest is not None and have.removeprefix("sha256:") != digest:
            problems.append(f"{name} has digest {have[:12]}, pinned {digest[:12]}")
    data = {"url": url, "models": listed}
    if problems:
        return Check("models", "ollama", host, FAIL, "; ".join(problems), data)
    return Check("models", "ollama", host, OK, f"{len(pins)} pinned model(s) present with their digests", data)


def check_http(name: str, url: str | None, *, verify: bool | str = True, timeout: float = TIMEOUT_S) -> Check:
    """`GET <url>/health` answers 2xx."""
    if url is None:
        return Check("http", name, None, SKIP, f"no endpoint for {name}: pass --{name} URL")
    target = f"{url.rstrip('/')}/health"
    try:
        response = httpx.get(target, timeout=timeout, verify=verify, follow_redirects=True)
    except httpx.HTTPError as exc:
        return Check("http", name, None, FAIL, f"{target}: {exc or type(exc).__name__}", {"url": target})
    if response.is_success:
        return Check("http", name, None, OK, f"{target} answered {response.status_code}", {"url": target})
    return Check("http", name, None, FAIL, f"{target} answered {response.status_code}", {"url": target})


# -- the report ---------------------------------------------------------------------


def collect(
    evaluation: Evaluation,
    spec: ClusterSpec,
    *,
    endpoints: Endpoints,
    stack_label: str | None = None,
    timeout: float = TIMEOUT_S,
) -> Report:
    """Run every check for a stack's declarations."""
    declared = declared_containers(evaluation)
    label = stack_label or evaluation.stack
    checks = check_containers(
        declared,
        stack_label=label,
        docker_urls=endpoints.docker,
        backup_max_age_s=max_age_s(spec.backups.interval_hours * 3600),
    )
    if spec.backups.enabled and not any(c.service == "backup" for c in declared):
        checks.append(
            Check("backup", "postgres-backup", None, FAIL, "backups are enabled but no backup service is declared")
        )
    security = endpoints.tls.security() if endpoints.tls is not None else None
    checks.append(check_dask(endpoints.scheduler, declared_workers(declared), security=security, timeout=timeout))
    pins = [(m.name, m.digest) for m in spec.models]
    for host in sorted({c.host for c in declared if c.service == "ollama"}):
        checks.append(check_models(host, endpoints.ollama.get(host), pins, timeout=timeout))
    verify: bool | str = endpoints.tls.ca_file if endpoints.tls is not None else True
    checks.append(check_http("webui", endpoints.webui, timeout=timeout))
    if spec.proxy is not None or endpoints.proxy is not None:
        checks.append(check_http("proxy", endpoints.proxy, verify=verify, timeout=timeout))
    return Report(evaluation.stack, checks)


def render_table(report: Report) -> str:
    rows = [("CHECK", "NAME", "HOST", "STATE", "DETAIL")]
    rows += [(c.kind, c.name, c.host or "-", c.state, c.detail) for c in report.checks]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4] for r in rows]
    failed = sum(1 for c in report.checks if c.state == FAIL)
    verdict = "all as declared" if report.ok else f"{failed} check(s) failed"
    return "\n".join([f"stack {report.stack}: {verdict}", *lines])


# -- the command ---------------------------------------------------------------------


@contextmanager
def _quiet_dask() -> Iterator[None]:
    """distributed logs connection retries at WARNING; the report says it once."""
    import logging

    logger = logging.getLogger("distributed")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _pairs(values: Sequence[str], flag: str) -> dict[str, str]:
    out = {}
    for value in values:
        key, sep, url = value.partition("=")
        if not sep or not key or not url:
            raise ValueError(f"{flag} {value!r}: expected HOST=URL")
        out[key] = url
    return out


def _command(args: argparse.Namespace) -> int:
    from infra.config import ConfigError
    from infra.program import StackConfigError
    from stacks.plan import evaluate_stack
    from stacks.stackfile import StackNotFoundError

    try:
        stack_config = read_stack_config(args.stack, args.root)
        spec = load_spec(stack_config.config, stack_config.secret_keys)
        evaluation = evaluate_stack(args.stack, root=args.root)
        declared = declared_containers(evaluation)
        endpoints = default_endpoints(spec, declared)
        if args.scheduler:
            endpoints.scheduler = args.scheduler
        endpoints.ollama.update(_pairs(args.ollama, "--ollama"))
        endpoints.docker.update(_pairs(args.docker_host, "--docker-host"))
        if args.webui:
            endpoints.webui = args.webui
        if args.proxy:
            endpoints.proxy = args.proxy
        if args.tls_ca or args.tls_cert or args.tls_key:
            if not (args.tls_ca and args.tls_cert and args.tls_key):
                raise ValueError("--tls-ca, --tls-cert and --tls-key go together")
            endpoints.tls = TlsFiles(args.tls_ca, args.tls_cert, args.tls_key)
    except StackNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_NO_STACK
    except (ConfigError, StackConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    with _quiet_dask():
        report = collect(evaluation, spec, endpoints=endpoints, stack_label=args.stack_label, timeout=args.timeout)
    print(json.dumps(report.to_json(), indent=2) if args.json else render_table(report))
    return EXIT_OK if report.ok else EXIT_OFF


def add_command(sub: argparse._SubParsersAction[argparse.ArgumentParser], *, root_default: Path = REPO) -> None:
    text = "the live health of a deployed stack, checked against what it declares"
    p = sub.add_parser("status", help=text, description=text)
    p.add_argument("stack", help="stack name: Pulumi.STACK.yaml")
    p.add_argument("--json", action="store_true", help="print a JSON document instead of a table")
    p.add_argument("--scheduler", metavar="ADDRESS", help="the Dask scheduler (default in dev: tcp://BIND:PORT)")
    p.add_argument("--ollama", action="append", default=[], metavar="HOST=URL", help="the Ollama of a worker host")
    p.add_argument("--webui", metavar="URL", help="Open WebUI's base URL (default in dev: http://BIND:PORT)")
    p.add_argument("--proxy", metavar="URL", help="the public proxy's base URL (default: https://DOMAIN)")
    p.add_argument(
        "--docker-host", action="append", default=[], metavar="HOST=URL", help="override a host's Docker endpoint"
    )
    p.add_argument("--tls-ca", metavar="FILE", help="CA bundle of the cluster (mutual TLS to the scheduler, the proxy)")
    p.add_argument("--tls-cert", metavar="FILE", help="client certificate for the scheduler")
    p.add_argument("--tls-key", metavar="FILE", help="client key for the scheduler")
    p.add_argument(
        "--stack-label",
        metavar="VALUE",
        help="the cluster-ai.stack label to look for (default: the stack name)",
    )
    p.add_argument("--timeout", type=float, default=TIMEOUT_S, help="seconds per check (default: %(default)s)")
    p.add_argument(
        "--root", type=Path, default=root_default, help="directory holding the stack files (default: this repository)"
    )
    p.set_defaults(func=_command)
