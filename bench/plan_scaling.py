"""How the program's evaluation scales with GPU hosts, against a floor measured in the same run.

    python bench/plan_scaling.py            # N = 1, 10, 100, 150, 300 (what `make bench` runs)
    python bench/plan_scaling.py --sizes 1 10 --no-plot

For each N it builds the prod stack's config with N GPU hosts, evaluates the
real program under the SDK's mocks (the offline plan's engine) and, in a fresh
process each, measures:

- program: the program's evaluation (its own GC tuning included);
- floor: the same multiset of resource types, registered flat with the same
  literal inputs: no Outputs, no apply, no invokes, no depends_on, default GC —
  what a naive program declaring the same resources would cost at the least.

Time and peak memory are separate passes (tracemalloc slows what it traces).
It prints a table, then the machine-readable last line
`N=300 ratio=R scaling=S memory=M chain=C policy=P`:
ratio = program/floor time at the largest N, scaling = T(300)/T(150) of the
program, memory = program/floor peak, chain = the longest dependency chain
(resources), policy = the policy pack's time over the plan's time.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import pulumi  # noqa: E402

from stacks.mocks import ClusterMocks, Evaluation, evaluate_program, unwrap  # noqa: E402
from stacks.plan import evaluate_stack  # noqa: E402
from stacks.stackfile import read_stack_config  # noqa: E402

SIZES = (1, 10, 100, 150, 300)
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOd6YHSn/3BbJbUHjczu3IyYXFOYcba26JmJKDnblpKp"


def prod_hosts(n: int) -> list[dict[str, Any]]:
    """A head and n GPU hosts (2 GPUs each), documentation-style private addresses."""
    ssh = {"user": "cluster-ai", "privateKeyPath": "~/.ssh/cluster-ai", "hostKey": HOST_KEY}
    hosts = [{"name": "head", "address": "10.0.0.1", "roles": ["head"], "cpus": 16, "memoryGb": 64, "ssh": ssh}]
    for i in range(n):
        hosts.append(
            {
                "name": f"gpu{i + 1}",
                "address": f"10.{1 + i // 250}.{i % 250}.2",
                "roles": ["worker"],
                "cpus": 32,
                "memoryGb": 128,
                "gpus": 2,
                "ssh": ssh,
            }
        )
    return hosts


def bench_pins() -> dict[str, str]:
    """Pulumi.prod.yaml leaves unconfirmed digests to `stacks lock`, and prod refuses an image
    without one: the bench pins those by sha256 of the reference (bench data, never deployed)."""
    images = json.loads(read_stack_config("prod").config.get("cluster-ai:images") or "{}")
    pinned = {
        key: ref if "@" in ref else f"{ref}@sha256:{hashlib.sha256(ref.encode()).hexdigest()}"
        for key, ref in images.items()
    }
    return {"cluster-ai:images": json.dumps(pinned)}


def overrides(n: int) -> dict[str, str]:
    return {"cluster-ai:hosts": json.dumps(prod_hosts(n)), **bench_pins()}


def evaluate(n: int) -> Evaluation:
    return evaluate_stack("prod", overrides=overrides(n))


@cache
def resource_classes() -> dict[str, tuple[type, dict[str, str]]]:
    """Type token -> (the SDK class users declare it with, pulumi name -> Python argument name).

    Read from each provider SDK's own module registry, so the floor pays what any
    program declaring these resources pays: the generated classes, not a shortcut.
    """
    import importlib
    import re

    table: dict[str, tuple[type, dict[str, str]]] = {}
    for package in ("pulumi_docker", "pulumi_tls", "pulumi_random", "pulumi_command"):
        init = Path(importlib.import_module(package).__file__).read_text()  # type: ignore[arg-type]
        match = re.search(r'resource_modules="""(.*?)"""', init, re.S)
        packages = re.search(r'resource_packages="""(.*?)"""', init, re.S)
        for entry in json.loads(match[1]) if match else []:
            module = importlib.import_module(entry["fqn"])
            for token, class_name in entry["classes"].items():
                cls = getattr(module, class_name)
                table[token] = (cls, _python_names(module, class_name))
        for entry in json.loads(packages[1]) if packages else []:
            module = importlib.import_module(entry["fqn"])
            table[f"pulumi:providers:{entry['pkg']}"] = (module.Provider, _python_names(module, "Provider"))
    return table


def _python_names(module: Any, class_name: str) -> dict[str, str]:
    from pulumi._types import input_type_py_to_pulumi_names

    args = getattr(module, f"{class_name}Args", None)
    if args is None:
        return {}
    return {pulumi_name: py for py, pulumi_name in input_type_py_to_pulumi_names(args).items()}


def floor_program(resources: list[dict[str, Any]]) -> Callable[[], None]:
    """Register the same resources flat, through the same SDK classes, with literal inputs
    and nothing else: no Outputs, no apply, no invokes, no depends_on, no parents."""
    classes = resource_classes()

    def program() -> None:
        for r in resources:
            if not r["custom"]:
                pulumi.ComponentResource(r["type"], r["name"], None)
                continue
            cls, names = classes[r["type"]]
            cls(r["name"], **{names.get(k, k): v for k, v in r["inputs"].items() if k in names})

    return program


@cache
def floor_inputs(n: int) -> list[dict[str, Any]]:
    """The program's resources as plain literals (computed outside any measurement)."""
    ev = evaluate(n)
    return [{"type": r.type, "name": r.name, "custom": r.custom, "inputs": unwrap(r.inputs)} for r in ev.resources]


def run_floor(n: int) -> int:
    resources = floor_inputs(n)
    ev = evaluate_program(floor_program(resources), project="cluster-ai", stack="prod", config={}, mocks=ClusterMocks())
    return len(ev.resources)


def run_program(n: int) -> int:
    return len(evaluate(n).resources)


def measure(kind: str, n: int, memory: bool) -> dict[str, Any]:
    """One measurement in this process (called in a fresh subprocess)."""
    if kind == "floor":
        floor_inputs(n)  # prepared before the clock starts
        gc.collect()
    runner = run_floor if kind == "floor" else run_program
    if memory:
        tracemalloc.start()
        count = runner(n)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return {"resources": count, "peak_bytes": peak}
    start = time.perf_counter()
    count = runner(n)
    return {"resources": count, "seconds": time.perf_counter() - start}


def in_subprocess(kind: str, n: int, memory: bool) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--measure", kind, "--n", str(n)] + (["--memory"] if memory else [])
    out = subprocess.run(argv, check=True, capture_output=True, text=True, cwd=REPO).stdout
    return json.loads(out.strip().splitlines()[-1])


def longest_chain(ev: Evaluation) -> int:
    """Resources on the longest path of declared dependencies."""
    deps = {
        r.urn: set(r.dependencies) | {u for us in r.property_dependencies.values() for u in us} for r in ev.resources
    }
    memo: dict[str, int] = {}

    def depth(urn: str) -> int:
        if urn not in memo:
            memo[urn] = 1 + max((depth(d) for d in deps.get(urn, ()) if d in deps), default=0)
        return memo[urn]

    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))
    return max((depth(u) for u in deps), default=0)


def policy_seconds(ev: Evaluation) -> float:
    """The policy pack's time over the graph, if the pack is importable."""
    from stacks.policy_check import check

    start = time.perf_counter()
    report = check(ev)
    elapsed = time.perf_counter() - start
    if report.mandatory_failed:
        print(f"warning: {len(ev.resources)} resources: a mandatory policy fails", file=sys.stderr)
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--repeat", type=int, default=1, help="timing passes per size (median)")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--measure", choices=["program", "floor"], help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--memory", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.n, args.memory)))
        return 0

    rows = []
    header = f"{'N':>5} {'resources':>9} {'program s':>10} {'floor s':>8} {'ratio':>6} {'prog MiB':>9} {'floor MiB':>9} {'mem':>5} {'chain':>5} {'policy s':>8}"
    print(header)
    for n in args.sizes:
        program_t = statistics.median(in_subprocess("program", n, False)["seconds"] for _ in range(args.repeat))
        floor_t = statistics.median(in_subprocess("floor", n, False)["seconds"] for _ in range(args.repeat))
        program_m = in_subprocess("program", n, True)
        floor_m = in_subprocess("floor", n, True)
        ev = evaluate(n)
        chain = longest_chain(ev)
        policy = policy_seconds(ev)
        row = {
            "n": n,
            "resources": len(ev.resources),
            "program_s": program_t,
            "floor_s": floor_t,
            "ratio": program_t / floor_t,
            "program_mib": program_m["peak_bytes"] / 2**20,
            "floor_mib": floor_m["peak_bytes"] / 2**20,
            "memory": program_m["peak_bytes"] / floor_m["peak_bytes"],
            "chain": chain,
            "policy_s": policy,
        }
        rows.append(row)
        print(
            f"{n:>5} {row['resources']:>9} {program_t:>10.2f} {floor_t:>8.2f} {row['ratio']:>6.2f} "
            f"{row['program_mib']:>9.1f} {row['floor_mib']:>9.1f} {row['memory']:>5.2f} {chain:>5} "
            f"{policy if policy is not None else float('nan'):>8.3f}",
            flush=True,
        )
    (REPO / "bench" / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    if not args.no_plot:
        plot(rows, REPO / "docs" / "plan_scaling.png")
    last = rows[-1]
    by_n = {r["n"]: r for r in rows}
    scaling = by_n[300]["program_s"] / by_n[150]["program_s"] if 300 in by_n and 150 in by_n else float("nan")
    policy_share = last["policy_s"] / last["program_s"] if last["policy_s"] is not None else float("nan")
    print(
        f"N={last['n']} ratio={last['ratio']:.2f} scaling={scaling:.2f} memory={last['memory']:.2f} "
        f"chain={last['chain']} policy={policy_share:.3f}"
    )
    return 0


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Time against N, program and floor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [r["n"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    ax.plot(ns, [r["program_s"] for r in rows], "o-", label="program (offline plan)")
    ax.plot(ns, [r["floor_s"] for r in rows], "s--", label="floor (flat, literal inputs, default GC)")
    ax.set_xlabel("GPU hosts (N)")
    ax.set_ylabel("seconds")
    ax.set_title("Evaluating the prod stack under the SDK's mocks")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
