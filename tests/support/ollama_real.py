"""The real Ollama for tests: the CPU binary ci/ollama.sh builds, serving on loopback.

`ollama_server()` runs `ollama serve` on 127.0.0.1 with its models (and its key)
in a temporary directory. `write_tiny_model()` writes a GGUF file the test makes
itself: a llama-architecture model with one block of small random tensors and a
byte-fallback SentencePiece vocabulary, so Ollama loads it and generates tokens
(nonsense ones) in well under a second on a CPU. No weights come from any hub.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.support.processes import free_port

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 60
# Commands of the CLI (create, push) against the local server.
CLI_TIMEOUT_S = 180


def _pinned(key: str) -> str:
    """A value pinned in ci/versions.env (KEY=VALUE lines)."""
    for line in (REPO / "ci" / "versions.env").read_text().splitlines():
        name, _, value = line.partition("=")
        if name.strip() == key:
            return value.strip()
    raise KeyError(f"ci/versions.env pins no {key}")


def binary() -> Path:
    """Where ci/ollama.sh puts the binary of the pinned version."""
    cache = Path(os.environ.get("CLUSTER_AI_CACHE", "/var/cache/cluster-ai"))
    return cache / "ollama" / _pinned("OLLAMA_VERSION") / "bin" / "ollama"


def available() -> str | None:
    """None when the binary is there; otherwise why not (for a skip outside CI)."""
    path = binary()
    return None if os.access(path, os.X_OK) else f"{path} is missing: run `bash ci/ollama.sh`"


@dataclass
class OllamaServer:
    """A running `ollama serve` and the environment its CLI needs to reach it."""

    port: int
    models_dir: Path
    log: Path

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def env(self) -> dict[str, str]:
        return {**_clean_env(), "OLLAMA_HOST": self.host, "OLLAMA_MODELS": str(self.models_dir)}

    def cli(self, *args: str, timeout: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        """Run `ollama ARGS` against this server; fails with its output on a non-zero exit."""
        done = subprocess.run(
            [str(binary()), *args], env=self.env(), capture_output=True, text=True, timeout=timeout, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"ollama {' '.join(args)} exited {done.returncode}: {done.stdout}{done.stderr}")
        return done

    def tags(self) -> dict[str, str]:
        """Listed name -> digest, from `/api/tags`."""
        models = httpx.get(f"{self.url}/api/tags", timeout=10).json().get("models") or []
        return {m["name"]: m["digest"] for m in models}

    def create(self, name: str, gguf: Path, *, system: str | None = None) -> str:
        """`ollama create NAME` from a Modelfile naming `gguf`; returns the digest /api/tags lists."""
        modelfile = gguf.with_suffix(f".{abs(hash(name))}.Modelfile")
        lines = [f"FROM {gguf}", "PARAMETER num_predict 8", "PARAMETER temperature 0"]
        if system is not None:
            lines.append(f"SYSTEM {json.dumps(system)}")
        modelfile.write_text("\n".join(lines) + "\n")
        self.cli("create", name, "-f", str(modelfile))
        return self.tags()[_listed(name)]

    def push(self, name: str) -> None:
        """Push to a plain-http registry (a loopback test registry)."""
        self.cli("push", "--insecure", name)

    def delete(self, name: str) -> None:
        self.cli("rm", name)


def _listed(name: str) -> str:
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def _clean_env() -> dict[str, str]:
    """The test's environment without proxies (nothing may leave loopback) or Ollama settings."""
    return {
        k: v
        for k, v in os.environ.items()
        if k.lower() not in {"http_proxy", "https_proxy", "all_proxy", "no_proxy"} and not k.startswith("OLLAMA_")
    }


@contextmanager
def ollama_server(extra_env: Mapping[str, str] | None = None) -> Iterator[OllamaServer]:
    """`ollama serve` on a free loopback port, models in a temporary directory; stopped on exit."""
    root = Path(tempfile.mkdtemp(prefix="cluster-ai-ollama-"))
    server = OllamaServer(free_port(), root / "models", root / "serve.log")
    home = root / "home"  # the server's key pair (~/.ollama/id_ed25519) lives here
    home.mkdir()
    env = {**server.env(), "HOME": str(home), "OLLAMA_KEEP_ALIVE": "1m", **(extra_env or {})}
    with server.log.open("wb") as log:
        process = subprocess.Popen([str(binary()), "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_ready(server, process)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)


def _wait_ready(server: OllamaServer, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            if httpx.get(f"{server.url}/api/version", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"ollama serve did not answer on {server.url}: {server.log.read_text(errors='replace')[-3000:]}")


# -- the tiny model -----------------------------------------------------------------

EMBEDDING = 64
HEADS = 2
FEED_FORWARD = 128
CONTEXT = 256
# SentencePiece's byte fallback: 256 byte tokens spell any text.
SPECIAL = ["<unk>", "<s>", "</s>"]
WORDS = ["\u2581", "\u2581the", "\u2581cluster", "\u2581model", "\u2581hello", "a", "e", "i", "o", "u"]
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_BYTE = 1, 2, 3, 6


def _vocabulary() -> tuple[list[str], list[float], list[int]]:
    tokens = [*SPECIAL, *(f"<0x{b:02X}>" for b in range(256)), *WORDS]
    types = [TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_CONTROL] + [TOKEN_BYTE] * 256 + [TOKEN_NORMAL] * len(WORDS)
    scores = [0.0] * (len(SPECIAL) + 256) + [-float(i + 1) for i in range(len(WORDS))]
    return tokens, scores, types


def write_tiny_model(path: Path, seed: int = 0) -> Path:
    """A one-block llama model (F32, ~100k parameters); `seed` makes a different file (and digest)."""
    import gguf  # the test dependency that writes GGUF
    import numpy as np

    rng = np.random.default_rng(seed)
    tokens, scores, types = _vocabulary()
    vocab = len(tokens)
    head_dim = EMBEDDING // HEADS

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(f"cluster-ai-tiny-{seed}")
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(EMBEDDING)
    writer.add_block_count(1)
    writer.add_feed_forward_length(FEED_FORWARD)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(HEADS)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)

    def weights(*shape: int) -> Any:
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    writer.add_tensor("token_embd.weight", weights(vocab, EMBEDDING))
    writer.add_tensor("output_norm.weight", np.ones(EMBEDDING, dtype=np.float32))
    writer.add_tensor("output.weight", weights(vocab, EMBEDDING))
    writer.add_tensor("blk.0.attn_norm.weight", np.ones(EMBEDDING, dtype=np.float32))
    writer.add_tensor("blk.0.attn_q.weight", weights(EMBEDDING, EMBEDDING))
    writer.add_tensor("blk.0.attn_k.weight", weights(EMBEDDING, EMBEDDING))
    writer.add_tensor("blk.0.attn_v.weight", weights(EMBEDDING, EMBEDDING))
    writer.add_tensor("blk.0.attn_output.weight", weights(EMBEDDING, EMBEDDING))
    writer.add_tensor("blk.0.ffn_norm.weight", np.ones(EMBEDDING, dtype=np.float32))
    writer.add_tensor("blk.0.ffn_gate.weight", weights(FEED_FORWARD, EMBEDDING))
    writer.add_tensor("blk.0.ffn_up.weight", weights(FEED_FORWARD, EMBEDDING))
    writer.add_tensor("blk.0.ffn_down.weight", weights(EMBEDDING, FEED_FORWARD))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# -- a model registry that redirects blob downloads ----------------------------------------


@dataclass
class ModelRegistry:
    """Debian's docker-registry on loopback, with blob downloads redirected to a file server.

    Ollama pulls a blob by asking the registry for it and following the redirect
    to another host (its own registry sends it to a CDN; a private registry on
    object storage does the same): it refuses a registry that serves blobs
    itself ("no Location header", server/download.go). The registry's `redirect`
    storage middleware sends each blob GET to a file server over its storage
    directory, named `localhost` so that Ollama sees another host.
    """

    port: int
    files_port: int
    address: str = "127.0.0.1"

    @property
    def host(self) -> str:
        return f"{self.address}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"


@contextmanager
def model_registry(address: str = "127.0.0.1", files_address: str | None = None) -> Iterator[ModelRegistry]:
    """The registry on `address` (loopback, or an address containers reach).

    Ollama follows a redirect to the registry's own host name and then finds no
    Location header: the file server needs another name. On loopback that is
    `localhost`; off loopback (inside a container `localhost` is the container
    itself) it is `files_address`, another address of this machine.
    """
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from tests.support.registry import serving

    root = Path(tempfile.mkdtemp(prefix="cluster-ai-model-registry-"))
    (root / "data").mkdir()

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return

    files_host = "localhost" if address == "127.0.0.1" else files_address
    if files_host is None:
        raise ValueError("a registry off loopback needs files_address: another host name for its blobs")
    bind = "127.0.0.1" if address == "127.0.0.1" else files_host
    files = ThreadingHTTPServer((bind, 0), functools.partial(Quiet, directory=str(root / "data")))
    files.daemon_threads = True
    thread = threading.Thread(target=files.serve_forever, daemon=True)
    thread.start()
    registry = ModelRegistry(free_port(), int(files.server_address[1]), address)
    config = (
        "version: 0.1\n"
        "log:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n  delete:\n    enabled: true\n"
        "middleware:\n  storage:\n    - name: redirect\n"
        f"      options:\n        baseurl: http://{files_host}:{registry.files_port}\n"
        f"http:\n  addr: {address}:{registry.port}\n"
    )
    try:
        with serving(root, config, registry.url):
            yield registry
    finally:
        files.shutdown()
        files.server_close()
        shutil.rmtree(root, ignore_errors=True)
