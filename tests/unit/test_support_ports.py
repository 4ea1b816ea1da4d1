"""The test servers' port allocator (tests/support/processes.py).

Parallel xdist workers once drew ports from the kernel's ephemeral pool and
collided (a Dask scheduler's dashboard moved to another port, CI 2026-11-26).
"""

from __future__ import annotations

import socket

import pytest

from tests.support import processes
from tests.support.processes import LOOPBACK, free_ports, port_slice


def test_worker_slices_are_disjoint_and_below_the_ephemeral_range() -> None:
    slices = [set(port_slice(worker, floor=32768)) for worker in range(8)]
    for i, ports in enumerate(slices):
        assert ports, f"worker gw{i} has no ports"
        assert max(ports) < 32768, f"worker gw{i} hands out ephemeral ports: {max(ports)}"
        assert min(ports) >= processes.PORT_FLOOR, f"worker gw{i} hands out ports under the floor"
        for j, other in enumerate(slices[:i]):
            assert not ports & other, f"workers gw{j} and gw{i} share ports"


def test_the_xdist_worker_name_picks_the_slice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw3")
    assert port_slice(floor=32768) == port_slice(3, floor=32768)
    monkeypatch.delenv("PYTEST_XDIST_WORKER")
    assert port_slice(floor=32768) == port_slice(0, floor=32768)


def test_free_ports_are_distinct_and_skip_a_port_in_use() -> None:
    first = free_ports(3)
    assert len(set(first)) == 3, first
    assert all(p in port_slice() for p in first), first
    # The cursor hands out the next port after the last one: occupy it.
    nxt = first[-1] + 1 if first[-1] + 1 in port_slice() else port_slice().start
    with socket.socket() as busy:
        busy.bind((LOOPBACK, nxt))
        busy.listen()
        [handed] = free_ports(1)
    assert handed != nxt, f"port {nxt} was in use and was handed out"
    assert handed in port_slice()


def test_an_exhausted_slice_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(processes, "_bindable", lambda host, port: False)
    with pytest.raises(RuntimeError, match="only 0 of 1 ports free"):
        free_ports(1)
