"""`python -m stacks`: stack operations.

    python -m stacks plan STACK [--json]    the offline plan (no CLI, backend or Docker)

Exit codes follow the Pulumi CLI's: 0 ok, 2 config error, 6 no such stack.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stacks.stackfile import REPO

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_NO_STACK = 6


def _plan(args: argparse.Namespace) -> int:
    from infra.program import StackConfigError
    from stacks.plan import evaluate_stack, render_json, render_text
    from stacks.stackfile import StackNotFoundError

    try:
        evaluation = evaluate_stack(args.stack, root=args.root)
    except StackNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_NO_STACK
    except StackConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(render_json(evaluation) if args.json else render_text(evaluation))
    return EXIT_OK


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m stacks", description="Cluster AI stack operations.")
    sub = top.add_subparsers(dest="command", required=True)
    plan = sub.add_parser("plan", help="show what a stack declares, offline")
    plan.add_argument("stack", help="stack name: reads Pulumi.STACK.yaml")
    plan.add_argument("--json", action="store_true", help="print a JSON document instead of a tree")
    plan.add_argument(
        "--root",
        type=Path,
        default=REPO,
        help="directory holding Pulumi.yaml and the stack files (default: this repository)",
    )
    plan.set_defaults(func=_plan)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
