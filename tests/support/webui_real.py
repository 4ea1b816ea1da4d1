"""Open WebUI as the plan declares it, run from the venv ci/webui.sh installs.

What is the project's and what is the image's:

- The project's (taken from the offline plan, unchanged): the container's
  entrypoint (the secret-env loader, `/bin/sh -c LOADER load-secret-env`), its
  command (`bash start.sh`), its plain environment, and the files it uploads
  (`/run/secrets/env.NAME`, the loader's input, mode 0400).
- The image's, stood in for here: `start.sh` is the image's start command; in
  the image it runs `uvicorn open_webui.main:app --host 0.0.0.0 --port 8080
  --forwarded-allow-ips '*'` in /app/backend, where the image keeps the
  frontend beside the backend. `start_sh()` runs the pip package's own start
  command, `open-webui serve` (the same uvicorn app and options, with the
  package's layout: the frontend inside it), on loopback. `IMAGE_ENV` is the part of the image's
  `ENV` lines that Open WebUI reads (an empty WEBUI_SECRET_KEY among them, which
  the loader must override).
- The translation from the container to this machine, and nothing else:
  `CONTAINER_PATHS` maps each container path the plan names to a directory of
  the test's, and `Addresses` maps each service alias:port on the private
  network to a loopback port. Both are applied to the loader's text, the
  environment's values and the uploaded files' names and contents; every other
  byte is the plan's.
"""

from __future__ import annotations

import os
import re
import shlex
import stat
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from stacks.mocks import Evaluation, Resource, unwrap

REPO = Path(__file__).resolve().parents[2]
CONTAINER = "docker:index/container:Container"
WEBUI_CONTAINER = "webui"
# Container path -> directory name under the test's root.
CONTAINER_PATHS = {"/run/secrets": "run-secrets", "/app/backend/data": "app-backend-data"}
# The image's ENV lines Open WebUI reads (ENV, PORT: start.sh; the rest: open_webui/env.py, config.py).
IMAGE_ENV = {
    "ENV": "prod",
    "PORT": "8080",
    "OLLAMA_BASE_URL": "/ollama",
    "OPENAI_API_KEY": "",
    "WEBUI_SECRET_KEY": "",
}
START_TIMEOUT_S = 240.0
STOP_TIMEOUT_S = 20.0


def pinned(key: str) -> str:
    """A value pinned in ci/versions.env."""
    for line in (REPO / "ci" / "versions.env").read_text().splitlines():
        name, _, value = line.partition("=")
        if name.strip() == key:
            return value.strip()
    raise KeyError(f"ci/versions.env pins no {key}")


def venv() -> Path:
    cache = Path(os.environ.get("CLUSTER_AI_CACHE", "/var/cache/cluster-ai"))
    return cache / "webui" / pinned("WEBUI_VERSION") / "venv"


def available() -> str | None:
    python = venv() / "bin" / "python"
    return None if os.access(python, os.X_OK) else f"{python} is missing: run `bash ci/webui.sh`"


def start_sh(port: int) -> list[str]:
    """The stand-in for the image's `bash start.sh`: the pip package's `open-webui serve`, on loopback."""
    return [str(venv() / "bin" / "open-webui"), "serve", "--host", "127.0.0.1", "--port", str(port)]


# -- what the plan declares -------------------------------------------------------


@dataclass(frozen=True)
class Declared:
    """The webui container as the plan registers it (secrets unwrapped)."""

    urn: str
    entrypoint: list[str]
    command: list[str]
    env: dict[str, str]
    uploads: dict[str, tuple[str, str]]
    """Container path -> (content, permissions)."""


def declared_webui(plan: Evaluation) -> Declared:
    resource: Resource = next(r for r in plan.by_type(CONTAINER) if r.name == WEBUI_CONTAINER)
    inputs = resource.plain_inputs()
    env = dict(entry.split("=", 1) for entry in inputs.get("envs") or [])
    # The files it gets travel in its file holder (`webui-files`), written before it starts.
    uploads = {u["file"]: (u["content"], u.get("permissions", "")) for u in unwrap(plan.uploads_of(resource))}
    return Declared(resource.urn, list(inputs["entrypoints"]), list(inputs["command"]), env, uploads)


# -- the translation ----------------------------------------------------------------


@dataclass(frozen=True)
class Addresses:
    """Service `alias:port` on the private network -> `127.0.0.1:port` here."""

    mapping: Mapping[str, int]

    def translate(self, text: str) -> str:
        """Replace every `alias:port` the mapping knows where it is a URL's host (after `//` or `@`)."""
        for hostport, port in self.mapping.items():
            text = re.sub(rf"(?<=[/@]){re.escape(hostport)}(?=[/;]|$)", f"127.0.0.1:{port}", text)
        return text


def translate_paths(text: str, root: Path) -> str:
    """Each container path (CONTAINER_PATHS) at the start of a path in `text` -> its directory under `root`."""
    for container_path, local in CONTAINER_PATHS.items():
        text = re.sub(rf"(?<![\w./-]){re.escape(container_path)}(?=/|\b|$)", str(root / local), text)
    return text


def untranslated_paths(values: Sequence[str]) -> list[str]:
    """Absolute container paths in `values` that CONTAINER_PATHS does not cover."""
    found = []
    for value in values:
        for path in re.findall(r"(?:^|(?<=[\s\"'=]))(/[\w.-]+(?:/[\w.*-]+)*)", value):
            if not any(path == p or path.startswith(p + "/") for p in CONTAINER_PATHS):
                found.append(path)
    return found


# -- running it ----------------------------------------------------------------------


@dataclass
class WebUI:
    """One start of Open WebUI; `stop()` ends it (bounded)."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT_S)


def install_uploads(
    declared: Declared, root: Path, addresses: Addresses, replace: Mapping[str, str] | None = None
) -> None:
    """Write each declared upload where the translated path puts it, with its declared mode.

    `replace` (container path -> content) changes one file's content: a new secret key.
    """
    for path, (content, permissions) in declared.uploads.items():
        local = Path(translate_paths(path, root))
        local.parent.mkdir(parents=True, exist_ok=True)
        if local.exists():
            local.chmod(stat.S_IWUSR | stat.S_IRUSR)
        local.write_text(addresses.translate((replace or {}).get(path, content)))
        local.chmod(int(permissions, 8))


def command_line(declared: Declared, root: Path, port: int) -> list[str]:
    """The declared entrypoint (the loader, translated) followed by the stand-in for the declared command."""
    if declared.command != ["bash", "start.sh"]:
        raise AssertionError(f"{declared.urn}: the command is {declared.command}, the stand-in is for `bash start.sh`")
    return [translate_paths(arg, root) for arg in declared.entrypoint] + start_sh(port)


def environment(declared: Declared, root: Path, addresses: Addresses) -> dict[str, str]:
    """The image's ENV, then the plan's env (translated), and the PATH/HOME any process needs."""
    env = {**IMAGE_ENV, **{k: addresses.translate(translate_paths(v, root)) for k, v in declared.env.items()}}
    env["PATH"] = f"{venv() / 'bin'}:/usr/bin:/bin"
    env["HOME"] = str(root / "home")
    return env


def start_webui(declared: Declared, root: Path, addresses: Addresses, port: int, log_name: str = "webui.log") -> WebUI:
    """Start Open WebUI as declared (uploads must be installed); returns once /health answers 200."""
    (root / "home").mkdir(exist_ok=True)
    (root / CONTAINER_PATHS["/app/backend/data"]).mkdir(exist_ok=True)
    workdir = root / "app-backend"  # the image's WORKDIR /app/backend
    workdir.mkdir(exist_ok=True)
    log = root / log_name
    with log.open("ab") as out:
        process = subprocess.Popen(
            command_line(declared, root, port),
            env=environment(declared, root, addresses),
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    webui = WebUI(f"http://127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"Open WebUI exited with {process.returncode}:\n{webui.tail()}")
        try:
            if httpx.get(f"{webui.url}/health", timeout=5).status_code == 200:
                return webui
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    webui.stop()
    raise AssertionError(f"Open WebUI did not answer /health within {START_TIMEOUT_S:.0f}s:\n{webui.tail()}")


def loader_text(declared: Declared) -> str:
    """The loader script itself (the `-c` argument), for messages."""
    return shlex.join(declared.entrypoint)


def bearer(token: str) -> dict[str, Any]:
    return {"Authorization": f"Bearer {token}"}
