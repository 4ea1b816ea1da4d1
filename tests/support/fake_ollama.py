"""A stand-in Ollama server that speaks Ollama's documented HTTP API, for tests.

The real Ollama server cannot be installed on the test machine (no release
download, no image registry), so the model sync is tested against this server
instead. It follows the contract in Ollama's `docs/api.md` upstream (the pages
"List Local Models", "Pull a Model", "Delete a Model" and "Version"):

- `GET /` answers `Ollama is running`; `GET /api/version` answers `{"version": ...}`.
- `GET /api/tags` answers `{"models": [{"name", "model", "modified_at", "size",
  "digest", "details": {...}}]}`; the digest is the manifest's sha256 as 64 hex
  characters with no `sha256:` prefix.
- `POST /api/pull {"model", "stream": true}` answers 200 with a chunked
  `application/x-ndjson` stream of status objects: "pulling manifest", one
  `{"status": "downloading <digest>", "digest", "total", "completed"}` per
  progress step, "verifying sha256 digest", "writing manifest", "success". A
  failure while streaming is an `{"error": ...}` line in that stream (the
  server has already sent 200); an unknown tag fails that way with
  "pull model manifest: file does not exist", as the real server does.
- `DELETE /api/delete {"model"}` answers 200 with an empty body, or 404
  `{"error": "model 'x' not found"}`.

Model names are compared the way Ollama's `types/model/name.go` shows them
(`DisplayShortest`): a missing tag is `latest`, and the default registry host
and the `library/` namespace are dropped, so `library/qwen2.5:0.5b` is listed as
`qwen2.5:0.5b`.

Tests drive it through a small state: a `registry` (tag -> the digest a pull
would fetch; change it to make a tag "move upstream"), the `installed` models,
per-model failure modes for pulls and deletes, and a `stall` switch that makes
every request hang (bounded) as a wedged server would. Every request is
recorded (method, path, decoded JSON body) in `requests`.

Only 127.0.0.1 is ever bound; every wait is bounded.
"""

from __future__ import annotations

import enum
import hashlib
import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
# How long a stalled request hangs at most, and how long start/stop may take.
STALL_LIMIT_S = 30.0
THREAD_JOIN_S = 5.0
# How long the server waits for a client to send its request.
REQUEST_READ_TIMEOUT_S = 10.0


class PullFailure(enum.Enum):
    """How a pull of one model goes wrong."""

    ERROR_LINE = "error-line"
    """200, a few status lines, then `{"error": ...}` (how Ollama reports a failed pull)."""
    HTTP_500 = "http-500"
    """500 with `{"error": ...}` before any stream starts."""
    NO_SUCCESS = "no-success"
    """200, progress lines, then a cleanly finished stream that never says success."""
    DROPPED = "dropped"
    """200, progress lines, then the connection is cut in the middle of the chunked stream."""


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server received it."""

    method: str
    path: str
    body: Any
    """The JSON body decoded, or None when there was none."""


def display_name(name: str) -> str:
    """The name as Ollama lists it: tag filled in, default host and `library/` dropped."""
    parts = name.split("/")
    last = parts[-1]
    if ":" not in last:
        parts[-1] = f"{last}:latest"
    if len(parts) == 3 and parts[0].lower() == DEFAULT_HOST:
        parts = parts[1:]
    if len(parts) == 2 and parts[0].lower() == DEFAULT_NAMESPACE:
        parts = parts[1:]
    return "/".join(parts)


def blob_digest(manifest_digest: str) -> str:
    """A stable layer digest for a manifest, for the progress lines."""
    return "sha256:" + hashlib.sha256(f"layer:{manifest_digest}".encode()).hexdigest()


class FakeOllama:
    """An Ollama API server on 127.0.0.1 with a random port; use it as a context manager."""

    def __init__(
        self,
        *,
        registry: dict[str, str] | None = None,
        installed: dict[str, str] | None = None,
        version: str = "0.13.5",
        model_size: int = 397_821_319,
    ) -> None:
        self.version = version
        self.model_size = model_size
        self._lock = threading.Lock()
        self._registry = {display_name(k): v for k, v in (registry or {}).items()}
        self._installed = {display_name(k): v for k, v in (installed or {}).items()}
        self._pull_failures: dict[str, PullFailure] = {}
        self._delete_failures: set[str] = set()
        self._requests: list[RecordedRequest] = []
        self._stall = False
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- test-facing state -------------------------------------------------

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the fake Ollama server is not running")
        port = self._server.server_address[1]
        return f"http://127.0.0.1:{port}"

    def set_upstream(self, name: str, digest: str) -> None:
        """What a pull of `name` fetches from now on (a tag moving upstream)."""
        with self._lock:
            self._registry[display_name(name)] = digest

    def fail_pull(self, name: str, failure: PullFailure) -> None:
        with self._lock:
            self._pull_failures[display_name(name)] = failure

    def fail_delete(self, name: str) -> None:
        """Deletes of `name` answer 500 (e.g. a model file that is still in use)."""
        with self._lock:
            self._delete_failures.add(display_name(name))

    def stall(self, on: bool = True) -> None:
        """Every request hangs, unanswered, until the server stops (at most STALL_LIMIT_S)."""
        with self._lock:
            self._stall = on

    @property
    def installed(self) -> dict[str, str]:
        with self._lock:
            return dict(self._installed)

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def calls(self, method: str | None = None, path: str | None = None) -> list[RecordedRequest]:
        """Recorded requests, filtered by method and/or path."""
        return [r for r in self.requests if (method is None or r.method == method) and (path is None or r.path == path)]

    def pulled(self) -> list[str]:
        """The model of every POST /api/pull, in order."""
        return [r.body.get("model") for r in self.calls("POST", "/api/pull")]

    def deleted(self) -> list[str]:
        """The model of every DELETE /api/delete, in order."""
        return [r.body.get("model") for r in self.calls("DELETE", "/api/delete")]

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> FakeOllama:
        handler = type("BoundHandler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-ollama", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(THREAD_JOIN_S)
            if self._thread.is_alive():
                raise RuntimeError("the fake Ollama server thread did not stop")

    def __enter__(self) -> FakeOllama:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- the API, called by the handler ------------------------------------

    def _record(self, method: str, path: str, body: Any) -> bool:
        """Record a request; returns whether it must stall."""
        with self._lock:
            self._requests.append(RecordedRequest(method, path, body))
            return self._stall

    def _tags(self) -> dict[str, Any]:
        with self._lock:
            installed = sorted(self._installed.items())
        return {
            "models": [
                {
                    "name": name,
                    "model": name,
                    "modified_at": "2025-01-02T03:04:05.123456789Z",
                    "size": self.model_size,
                    "digest": digest,
                    "details": {
                        "parent_model": "",
                        "format": "gguf",
                        "family": "qwen2",
                        "families": ["qwen2"],
                        "parameter_size": "494.03M",
                        "quantization_level": "Q4_K_M",
                    },
                }
                for name, digest in installed
            ]
        }

    def _pull_plan(self, model: str) -> tuple[PullFailure | None, str | None]:
        """(failure mode, digest upstream) for a pull of `model`."""
        with self._lock:
            return self._pull_failures.get(model), self._registry.get(model)

    def _install(self, model: str, digest: str) -> None:
        with self._lock:
            self._installed[model] = digest

    def _delete(self, model: str) -> int:
        with self._lock:
            if model in self._delete_failures:
                return 500
            if self._installed.pop(model, None) is None:
                return 404
            return 200


class _Handler(BaseHTTPRequestHandler):
    """Routes requests to the FakeOllama bound as `fake`."""

    fake: FakeOllama
    protocol_version = "HTTP/1.1"
    server_version = "FakeOllama/1"
    timeout = REQUEST_READ_TIMEOUT_S

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tests assert on `requests`, not on a log."""

    # -- plumbing ----------------------------------------------------------

    def _body(self) -> tuple[Any, bool]:
        """(decoded JSON body or None, whether it was valid)."""
        length = int(self.headers.get("Content-Length") or 0)
        if length <= 0:
            return None, True
        raw = self.rfile.read(length)
        try:
            return json.loads(raw), True
        except ValueError:
            return raw.decode(errors="replace"), False

    def _send(self, status: int, payload: Any = None, *, text: str | None = None) -> None:
        if text is not None:
            data, content_type = text.encode(), "text/plain; charset=utf-8"
        elif payload is None:
            data, content_type = b"", None
        else:
            data, content_type = json.dumps(payload).encode(), "application/json; charset=utf-8"
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _chunk(self, event: dict[str, Any]) -> None:
        line = json.dumps(event).encode() + b"\n"
        self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
        self.wfile.flush()

    def _handle(self, method: str) -> None:
        body, valid = self._body()
        path = self.path.split("?", 1)[0]
        if self.fake._record(method, path, body):
            # A wedged server: the connection is open, nothing comes back.
            self.fake._stopping.wait(STALL_LIMIT_S)
            self.close_connection = True
            return
        route = {
            ("GET", "/"): self._root,
            ("GET", "/api/version"): self._version,
            ("GET", "/api/tags"): self._tags,
            ("POST", "/api/pull"): self._pull,
            ("DELETE", "/api/delete"): self._delete,
        }.get((method, path))
        if route is None:
            known_paths = {"/", "/api/version", "/api/tags", "/api/pull", "/api/delete"}
            if path in known_paths:
                self._send(405, text="405 method not allowed")
            else:
                self._send(404, text="404 page not found")
            return
        if not valid or (body is not None and not isinstance(body, dict)):
            self._send(400, {"error": "invalid request body"})
            return
        route(body or {})

    # -- endpoints ---------------------------------------------------------

    def _root(self, body: dict[str, Any]) -> None:
        self._send(200, text="Ollama is running")

    def _version(self, body: dict[str, Any]) -> None:
        self._send(200, {"version": self.fake.version})

    def _tags(self, body: dict[str, Any]) -> None:
        self._send(200, self.fake._tags())

    def _pull(self, body: dict[str, Any]) -> None:
        requested = body.get("model") or body.get("name")
        if not isinstance(requested, str) or not requested:
            self._send(400, {"error": "model is required"})
            return
        model = display_name(requested)
        failure, digest = self.fake._pull_plan(model)
        if failure is PullFailure.HTTP_500:
            self._send(500, {"error": f"pull model manifest: 500 Internal Server Error ({model})"})
            return
        if body.get("stream") is False:
            # Not what the sync uses; the documented non-streaming reply.
            if digest is None or failure is not None:
                self._send(500, {"error": "pull model manifest: file does not exist"})
                return
            self.fake._install(model, digest)
            self._send(200, {"status": "success"})
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self._chunk({"status": "pulling manifest"})
        if digest is None:
            self._chunk({"error": "pull model manifest: file does not exist"})
            self._end_stream()
            return
        layer = blob_digest(digest)
        total = self.fake.model_size
        for completed in (0, total // 2):
            self._chunk({"status": f"downloading {layer}", "digest": layer, "total": total, "completed": completed})
        if failure is PullFailure.ERROR_LINE:
            self._chunk({"error": f"max retries exceeded: unexpected EOF downloading {layer}"})
            self._end_stream()
            return
        if failure is PullFailure.DROPPED:
            # Half a chunk, then the socket closes: what a crashed server leaves behind.
            self.wfile.write(b'40\r\n{"status": "downl')
            self.wfile.flush()
            self.close_connection = True
            return
        self._chunk({"status": f"downloading {layer}", "digest": layer, "total": total, "completed": total})
        if failure is PullFailure.NO_SUCCESS:
            self._end_stream()
            return
        self._chunk({"status": "verifying sha256 digest"})
        self._chunk({"status": "writing manifest"})
        self.fake._install(model, digest)
        self._chunk({"status": "success"})
        self._end_stream()

    def _end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _delete(self, body: dict[str, Any]) -> None:
        requested = body.get("model") or body.get("name")
        if not isinstance(requested, str) or not requested:
            self._send(400, {"error": "model is required"})
            return
        status = self.fake._delete(display_name(requested))
        if status == 200:
            self._send(200)
        elif status == 404:
            self._send(404, {"error": f"model '{requested}' not found"})
        else:
            self._send(500, {"error": f"remove {requested}: device or resource busy"})

    # -- methods -------------------------------------------------------------

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def do_PUT(self) -> None:
        self._handle("PUT")
