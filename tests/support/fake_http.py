"""A stand-in HTTP upstream that records what reaches it, for tests of proxies.

It answers every GET with 200 and a plain-text body naming itself and the path
it was asked for, so a test can tell which upstream a proxy chose and what the
proxy made of the path. Only 127.0.0.1 is bound; start and stop are bounded.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

THREAD_JOIN_S = 5.0
REQUEST_READ_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Seen:
    """One request as the upstream received it."""

    method: str
    path: str
    """The request target, query included."""
    headers: dict[str, str]


class FakeUpstream:
    """`GET <path>` -> 200 `"<name> <path>"`; every request is recorded in `seen`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._seen: list[Seen] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError(f"the fake upstream {self.name} is not running")
        return int(self._server.server_address[1])

    @property
    def seen(self) -> list[Seen]:
        with self._lock:
            return list(self._seen)

    def paths(self) -> list[str]:
        return [s.path for s in self.seen]

    def _record(self, seen: Seen) -> None:
        with self._lock:
            self._seen.append(seen)

    def start(self) -> FakeUpstream:
        handler = type("BoundHandler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"fake-{self.name}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(THREAD_JOIN_S)
            if self._thread.is_alive():
                raise RuntimeError(f"the fake upstream {self.name} did not stop")

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    fake: FakeUpstream
    protocol_version = "HTTP/1.1"
    server_version = "FakeUpstream/1"
    timeout = REQUEST_READ_TIMEOUT_S

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests assert on `seen`."""

    def do_POST(self) -> None:
        """Like GET, after reading (and dropping) the body: a push endpoint's contract is its status."""
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._answer("POST")

    def do_GET(self) -> None:
        self._answer("GET")

    def _answer(self, method: str) -> None:
        self.fake._record(Seen(method, self.path, {k.lower(): v for k, v in self.headers.items()}))
        body = f"{self.fake.name} {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
