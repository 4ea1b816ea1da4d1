"""Scale properties that hold by construction (timings live in bench/plan_scaling.py, not in tests)."""

from __future__ import annotations

import gc
import importlib.util
import json
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest

from stacks.mocks import ClusterMocks, evaluate_program
from stacks.plan import evaluate_stack

REPO = Path(__file__).resolve().parents[2]


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("plan_scaling", REPO / "bench" / "plan_scaling.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_bench()


def test_longest_dependency_chain_is_a_small_constant(bench: ModuleType) -> None:
    chains = {n: bench.longest_chain(bench.evaluate(n)) for n in (1, 3, 12)}
    assert len(set(chains.values())) == 1, f"the chain grows with the hosts: {chains}"
    # The longest: the Dask CA's key -> its certificate -> a worker's certificate -> the worker's
    # file holder -> the worker -> its drain. A service that waits for another (Open WebUI for
    # PostgreSQL and Redis) prepares its image and files in parallel: only its container waits.
    assert chains[1] <= 6, chains


def test_no_component_waits_on_another_hosts_resources(bench: ModuleType) -> None:
    """Hosts converge in parallel: a GPU host's resources depend on nothing placed on
    another GPU host (the drain waits on the head's scheduler, by design)."""
    ev = bench.evaluate(3)
    host_of = {}
    for r in ev:
        for label in r.plain_inputs().get("labels", []) if isinstance(r.plain_inputs().get("labels"), list) else []:
            if label.get("label") == "cluster-ai.host":
                host_of[r.urn] = label["value"]
    for r in ev:
        mine = host_of.get(r.urn)
        if mine is None or not mine.startswith("gpu"):
            continue
        for dep in r.dependencies:
            other = host_of.get(dep)
            assert other in (None, mine, "head"), f"{r.urn} on {mine} waits on {dep} on {other}"


def test_the_program_makes_no_invokes() -> None:
    """A blocking invoke per host would make evaluation quadratic; the mocks fail on any."""
    ev = evaluate_stack("prod", overrides={"cluster-ai:hosts": json.dumps(load_bench().prod_hosts(4))})
    assert len(ev.by_type("pulumi:providers:docker")) == 5


def test_the_floor_registers_the_programs_multiset_of_types(bench: ModuleType) -> None:
    program = bench.evaluate(2)
    resources = [{"type": r.type, "name": r.name, "custom": r.custom, "inputs": r.plain_inputs()} for r in program]
    floor = evaluate_program(
        bench.floor_program(resources), project="cluster-ai", stack="prod", config={}, mocks=ClusterMocks()
    )
    assert Counter(r.type for r in floor) == Counter(r.type for r in program)
    assert all(not r.dependencies and not any(r.property_dependencies.values()) for r in floor), "the floor is flat"


def test_the_program_tunes_gc_and_each_evaluation_restores_it() -> None:
    before = gc.get_threshold()
    seen: list[tuple[int, int, int]] = []

    class Watching(ClusterMocks):
        def new_resource(self, args):  # type: ignore[no-untyped-def]
            seen.append(gc.get_threshold())
            return super().new_resource(args)

    from stacks.plan import run_program
    from stacks.stackfile import read_stack_config

    config = read_stack_config("dev")
    evaluate_program(
        run_program,
        project=config.project,
        stack="dev",
        config=config.config,
        secret_keys=sorted(config.secret_keys),
        mocks=Watching(),
    )
    from infra.program import GC_THRESHOLDS

    assert seen and all(t == GC_THRESHOLDS for t in seen), "registration runs with the tuned collector"
    assert gc.get_threshold() == before, "the evaluation put the collector back"
    assert gc.get_freeze_count() == 0
