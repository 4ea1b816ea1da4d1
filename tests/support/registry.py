"""A real OCI distribution server for tests: Debian's docker-registry on 127.0.0.1.

Storage lives in a temporary directory; there is no authentication (the token
flow is tested against recorded challenges in the unit tier). Docker treats
127.0.0.0/8 as an insecure registry by default, so the engine pushes to it over
plain HTTP.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.support.processes import free_port

BINARY = "/usr/bin/docker-registry"
START_TIMEOUT_S = 30
DOCKER_V2 = "application/vnd.docker.distribution.manifest.v2+json"


def available() -> str | None:
    return None if Path(BINARY).is_file() else f"{BINARY} is missing: apt-get install docker-registry"


@dataclass
class Registry:
    port: int

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def push_blob(self, repository: str, data: bytes) -> str:
        """Upload a blob (monolithic upload); returns its digest."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        start = httpx.post(f"{self.url}/v2/{repository}/blobs/uploads/", timeout=30)
        assert start.status_code == 202, start.text
        location = start.headers["Location"]
        if location.startswith("/"):
            location = self.url + location
        # The Location keeps its own query (the upload state): append the digest to it.
        separator = "&" if "?" in location else "?"
        put = httpx.put(f"{location}{separator}digest={digest}", content=data, timeout=30)
        assert put.status_code == 201, put.text
        return digest

    def push_manifest(self, repository: str, tag: str, manifest: bytes, media_type: str = DOCKER_V2) -> str:
        response = httpx.put(
            f"{self.url}/v2/{repository}/manifests/{tag}",
            content=manifest,
            headers={"Content-Type": media_type},
            timeout=30,
        )
        assert response.status_code == 201, response.text
        return str(response.headers["Docker-Content-Digest"])

    def push_ollama_model(self, repository: str, tag: str, weights: bytes) -> bytes:
        """A model the way Ollama's registry stores one: a v2 manifest of a config and a model layer,
        serialised as Go's json.Marshal writes Ollama's Manifest struct."""
        config = json.dumps({"model_format": "gguf", "model_family": "qwen2", "file_type": "Q4_K_M"}).encode()
        config_digest = self.push_blob(repository, config)
        layer_digest = self.push_blob(repository, weights)
        manifest: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": DOCKER_V2,
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "digest": config_digest,
                "size": len(config),
            },
            "layers": [
                {"mediaType": "application/vnd.ollama.image.model", "digest": layer_digest, "size": len(weights)}
            ],
        }
        body = json.dumps(manifest, separators=(",", ":")).encode()
        self.push_manifest(repository, tag, body)
        return body


@contextmanager
def serving(root: Path, config: str, url: str) -> Iterator[None]:
    """Run docker-registry with `config` (written under `root`) until it answers at `url`; stop it after."""
    (root / "config.yml").write_text(config)
    log = (root / "log").open("wb")
    process = subprocess.Popen([BINARY, "serve", str(root / "config.yml")], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                if httpx.get(f"{url}/v2/", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"docker-registry did not start: {(root / 'log').read_text(errors='replace')}")
            time.sleep(0.2)
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


@contextmanager
def registry_server() -> Iterator[Registry]:
    root = Path(tempfile.mkdtemp(prefix="cluster-ai-registry-"))
    registry = Registry(free_port())
    config = (
        "version: 0.1\n"
        "log:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{registry.port}\n"
    )
    try:
        with serving(root, config, registry.url):
            yield registry
    finally:
        shutil.rmtree(root, ignore_errors=True)
