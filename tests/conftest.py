"""Shared fixtures: every evaluation of the program gets a fresh loop and fresh mocks."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from stacks.mocks import Evaluation
from stacks.plan import evaluate_stack
from stacks.stackfile import read_stack_config

NAMESPACE = "cluster-ai"


def config_key(key: str) -> str:
    return f"{NAMESPACE}:{key}"


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
