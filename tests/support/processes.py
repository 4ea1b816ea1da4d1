"""Real processes started by integration tests: free ports, bounded waits, clean stops.

Shared by the Dask and Caddy tiers. Every wait is bounded, every process is
stopped (terminate, then kill) by whoever started it, and children a process
spawned (a Dask nanny's worker) are stopped with it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest

LOOPBACK = "127.0.0.1"

# Bounds on every wait, so a broken command line fails the test instead of hanging it.
STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
POLL_S = 0.2


# Ports for the servers tests start come from below the kernel's ephemeral range
# (net.ipv4.ip_local_port_range, 32768-60999 by default). A port `bind(("", 0))`
# returns is one the kernel also hands out as the source port of any outgoing
# connection, and parallel xdist workers drawing from that one pool collided: a
# Dask scheduler found its dashboard port taken and silently moved elsewhere
# (CI, 2026-11-26). Here each xdist worker draws from a slice of its own, round
# robin, and only ports that bind right now are handed out.
PORT_FLOOR = 20000
PORT_SLICE = 1000


def _ephemeral_floor() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _worker_index() -> int:
    """0 for `gw0` (and without xdist), 1 for `gw1`, ..."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    digits = name.removeprefix("gw")
    return int(digits) if digits.isdigit() else 0


def port_slice(worker: int | None = None, *, floor: int | None = None) -> range:
    """The ports one xdist worker may hand out: a slice of [PORT_FLOOR, ephemeral floor)."""
    top = _ephemeral_floor() if floor is None else floor
    slices = max(1, (top - PORT_FLOOR) // PORT_SLICE)
    index = (_worker_index() if worker is None else worker) % slices
    start = PORT_FLOOR + index * PORT_SLICE
    return range(start, min(start + PORT_SLICE, top))


_next_port: dict[int, int] = {}


def _bindable(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """`count` different ports that bind on `host` now, from this worker's own slice."""
    ports = port_slice()
    cursor = _next_port.get(ports.start, ports.start + os.getpid() % len(ports))
    found: list[int] = []
    for _ in range(len(ports)):  # at most one pass over the slice
        port = ports[(cursor - ports.start) % len(ports)]
        cursor = port + 1
        if _bindable(host, port):
            found.append(port)
            if len(found) == count:
                _next_port[ports.start] = cursor
                return found
    raise RuntimeError(f"only {len(found)} of {count} ports free in {ports.start}-{ports.stop - 1} on {host}")


def free_port(host: str = LOOPBACK) -> int:
    """One port that binds on `host` now (see free_ports)."""
    [port] = free_ports(1, host)
    return port


@dataclass
class Process:
    """A started process, its output in a file, and the children it spawned."""

    name: str
    argv: list[str]
    popen: subprocess.Popen[bytes]
    log: Path
    children: dict[int, psutil.Process] = field(default_factory=dict)

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- {self.name}: {' '.join(self.argv)}\n" + "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        code = self.popen.poll()
        assert code is None, f"{self.name} exited with {code}\n{self.tail()}"

    def remember_children(self) -> None:
        """Note the children (a nanny's worker), so they can be stopped even if the parent dies."""
        try:
            for child in psutil.Process(self.popen.pid).children(recursive=True):
                self.children[child.pid] = child
        except psutil.NoSuchProcess:
            pass

    def terminate(self) -> None:
        """Ask the process to stop (SIGTERM), noting its children first; `stop` waits for it."""
        if self.popen.poll() is None:
            self.remember_children()
            self.popen.terminate()

    def stop(self) -> None:
        """Terminate, then kill after a bounded wait; the same for any child left behind."""
        if self.popen.poll() is None:
            self.terminate()
            try:
                self.popen.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(STOP_TIMEOUT_S)
        # psutil.Process checks the pid's creation time: a reused pid is never touched.
        _, alive = psutil.wait_procs(list(self.children.values()), timeout=STOP_TIMEOUT_S)
        for child in alive:
            child.terminate()
        _, alive = psutil.wait_procs(alive, timeout=STOP_TIMEOUT_S)
        for child in alive:
            child.kill()
        psutil.wait_procs(alive, timeout=STOP_TIMEOUT_S)


def stop_all(processes: Sequence[Process]) -> None:
    """Stop `processes` together: all are asked at once, then each is waited for (bounded)."""
    for process in processes:
        process.terminate()
    for process in processes:
        process.stop()


def start_process(
    name: str,
    argv: Sequence[str],
    *,
    log: Path,
    cwd: Path,
    env: Mapping[str, str] | None = None,
) -> Process:
    """Start `argv` with its output (both streams) in `log`; the caller stops it."""
    with log.open("wb") as out:
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=cwd,
        )
    return Process(name, list(argv), popen, log)


def wait_until(
    condition: Callable[[], bool],
    processes: Sequence[Process],
    what: str,
    timeout_s: float = STARTUP_TIMEOUT_S,
) -> None:
    """Poll `condition` until it holds, failing early if a process died, and after the timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for process in processes:
            process.check_alive()
        if condition():
            return
        time.sleep(POLL_S)
    logs = "\n".join(p.tail() for p in processes)
    pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}\n{logs}")


def http_ok(url: str, timeout_s: float = 2.0) -> bool:
    """True when `url` answers 200 now (a refused or failing request is just "not yet")."""
    try:
        return httpx.get(url, timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


def wait_for_prometheus(base: str, processes: Sequence[Process]) -> None:
    """Until Prometheus at `base` is ready: before that it answers queries 503."""
    wait_until(lambda: http_ok(f"{base}/-/ready"), processes, f"Prometheus at {base} to be ready")
