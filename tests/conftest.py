"""Shared fixtures: every evaluation of the program gets a fresh loop and fresh mocks."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

from stacks.mocks import Evaluation
from stacks.plan import evaluate_stack
from stacks.stackfile import read_stack_config

NAMESPACE = "cluster-ai"


def config_key(key: str) -> str:
    return f"{NAMESPACE}:{key}"


@pytest.fixture(autouse=True, scope="session")
def prod_example_locked() -> Iterator[None]:
    """Tests evaluate the shipped prod example as `python -m stacks lock prod` leaves it.

    Pulumi.prod.yaml carries no made-up digests: the images whose published digest
    could not be confirmed have none, and `plan prod` refuses them (tested in
    tests/unit/test_hostile_configs.py). In-process evaluations of `prod` from this
    repository get those images pinned by test digests (tests/support/prod_stack.py
    `as_locked`); a test that wants the file as shipped reads it with
    `stacks.stackfile.read_stack_config`.
    """
    import stacks.plan
    import stacks.policy_check
    from stacks.stackfile import REPO, StackConfig
    from tests.support.prod_stack import as_locked

    def locked(stack: str, root: Any = REPO) -> StackConfig:
        config = read_stack_config(stack, root)
        if stack != "prod" or root != REPO:
            return config
        return StackConfig(config.project, config.stack, as_locked(config.config), config.secret_keys)

    # Session-wide, so module- and session-scoped fixtures that evaluate prod see it too.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stacks.plan, "read_stack_config", locked)
        patch.setattr(stacks.policy_check, "read_stack_config", locked)
        yield


@pytest.fixture
def dev() -> Evaluation:
    """The dev stack's graph, evaluated for this test alone."""
    return evaluate_stack("dev")


@pytest.fixture
def stack_with() -> Callable[..., Evaluation]:
    """Evaluate a shipped stack with some keys replaced: `stack_with("dev", hosts=[...])`."""

    def evaluate(stack: str, *, preview: bool = False, **overrides: Any) -> Evaluation:
        encoded: Mapping[str, str] = {
            config_key(k): v if isinstance(v, str) else json.dumps(v) for k, v in overrides.items()
        }
        return evaluate_stack(stack, overrides=encoded, preview=preview)

    return evaluate


@pytest.fixture
def dev_config() -> dict[str, Any]:
    """Pulumi.dev.yaml's config, decoded: a base for tests that change one thing."""
    config = read_stack_config("dev").config
    return {k: json.loads(v) if v[:1] in "[{" else v for k, v in config.items()}
