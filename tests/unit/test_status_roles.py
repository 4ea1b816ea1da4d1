"""`stacks status` judges each declared container by its role: a service runs, a task finishes, a holder never starts.

The roles come from the dev plan itself; the states are Docker's `State` objects as the
engine reports them (tests/integration/test_status_docker.py makes each for real).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from stacks import status
from stacks.plan import evaluate_stack

IMAGE_ID = "sha256:" + "ab" * 32


@pytest.fixture(scope="module")
def declared() -> dict[str, status.DeclaredContainer]:
    return {c.name: c for c in status.declared_containers(evaluate_stack("dev"))}


@dataclass
class EngineContainer:
    """What `stacks status` reads of a container from the Docker SDK: its name and `attrs`."""

    name: str
    state: dict[str, Any]
    attrs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.attrs = {"State": self.state, "Image": IMAGE_ID}


CREATED = {"Status": "created", "Running": False, "ExitCode": 0}
RUNNING_HEALTHY = {"Status": "running", "Running": True, "ExitCode": 0, "Health": {"Status": "healthy"}}
RUNNING = {"Status": "running", "Running": True, "ExitCode": 0}
EXITED_0 = {"Status": "exited", "Running": False, "ExitCode": 0}
EXITED_1 = {"Status": "exited", "Running": False, "ExitCode": 1}


def check(c: status.DeclaredContainer, state: dict[str, Any]) -> status.Check:
    # The pinned reference resolves to the image the container was made from.
    return status._container_check(c, [EngineContainer(f"x-{c.name}", state)], None, {str(c.image): IMAGE_ID})


def test_roles_come_from_the_declarations(declared: dict[str, status.DeclaredContainer]) -> None:
    roles = {name: c.role for name, c in declared.items()}
    assert roles["ollama-local-model-sync"] == status.TASK
    assert roles["webui-files"] == roles["postgres-files"] == status.FILE_HOLDER
    assert roles["webui"] == roles["postgres"] == roles["dask-scheduler"] == status.SERVICE
    holders = sorted(n for n, r in roles.items() if r == status.FILE_HOLDER)
    assert holders and all(n.endswith("-files") and roles[n.removesuffix("-files")] == status.SERVICE for n in holders)


def test_holders_are_not_counted_as_workers(declared: dict[str, status.DeclaredContainer]) -> None:
    workers = status.declared_workers(list(declared.values()))
    assert [w.name for w in workers] == ["dask-workers-local-0"]


@pytest.mark.parametrize(
    ("name", "state", "ok", "detail"),
    [
        ("webui-files", CREATED, True, "created, never started (carries files)"),
        ("webui-files", RUNNING, False, "a file holder must never start, but it is running"),
        ("webui-files", EXITED_0, False, "a file holder must never start, but it is exited"),
        ("ollama-local-model-sync", EXITED_0, True, "finished (exit 0)"),
        ("ollama-local-model-sync", RUNNING, True, "running (a task, not finished yet)"),
        ("ollama-local-model-sync", EXITED_1, False, "task failed (exit 1)"),
        ("ollama-local-model-sync", CREATED, False, "task never ran"),
        ("webui", RUNNING_HEALTHY, True, "running, healthy"),
        ("webui", CREATED, False, "not running (created, exit 0)"),
        ("webui", EXITED_0, False, "not running (exited, exit 0)"),
        ("webui", RUNNING, False, "health unknown"),
    ],
)
def test_each_role_is_healthy_in_its_own_terms(
    declared: dict[str, status.DeclaredContainer], name: str, state: dict[str, Any], ok: bool, detail: str
) -> None:
    result = check(declared[name], state)
    assert result.ok is ok and detail in result.detail, f"{name} {state}: {result.state} {result.detail}"
    assert result.data["role"] == declared[name].role and result.data["pinned"] is True, name


def test_a_holder_made_from_another_image_fails(declared: dict[str, status.DeclaredContainer]) -> None:
    holder = declared["webui-files"]
    result = status._container_check(holder, [EngineContainer("x", CREATED)], None, {str(holder.image): "sha256:00"})
    assert not result.ok and "not the pinned" in result.detail, result.detail
