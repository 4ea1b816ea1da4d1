"""`python -m stacks`: stack operations.

    python -m stacks plan STACK [--json]    the offline plan (no CLI, backend or Docker)
        [--show-secrets]                     ... with secret inputs in plain text (default: [secret])
        [--policies [--policy-config FILE]]  ... and every policy's verdict on it
    python -m stacks preview|up|destroy STACK, drift STACK   through the Automation API
        (destroy asks for the stack name, or takes --yes=STACK)
    python -m stacks status STACK [--json]  live health of a deployed stack
    python -m stacks lock STACK [--update]  pin image and model digests in Pulumi.STACK.yaml

Exit codes follow the Pulumi CLI's: 0 ok, 2 config error, 5 a mandatory policy is violated,
6 no such stack, 7 drift; and the shell's 127 when the Pulumi CLI itself is missing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from stacks.stackfile import REPO

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_POLICY = 5
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
    if not args.policies:
        shown = args.show_secrets
        print(render_json(evaluation, show_secrets=shown) if args.json else render_text(evaluation, show_secrets=shown))
        return EXIT_OK
    return _policies(args, evaluation)


def _policies(args: argparse.Namespace, evaluation: Any) -> int:
    """The plan, then every policy's verdict on it; exit 5 when a mandatory one is violated."""
    import json

    from policies.harness import PolicyConfig, PolicyConfigError
    from stacks.plan import render_json, render_text
    from stacks.policy_check import check
    from stacks.policy_check import render_json as report_json
    from stacks.policy_check import render_text as report_text

    try:
        config = PolicyConfig.load(args.policy_config) if args.policy_config is not None else None
    except PolicyConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    report = check(evaluation, config)
    if args.json:
        document = json.loads(render_json(evaluation, show_secrets=args.show_secrets))
        document["policies"] = report_json(report)
        print(json.dumps(document, indent=2, default=str))
    else:
        print(render_text(evaluation, show_secrets=args.show_secrets))
        print()
        print(report_text(report))
    return EXIT_POLICY if report.mandatory_failed else EXIT_OK


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m stacks", description="Cluster AI stack operations.")
    sub = top.add_subparsers(dest="command", required=True)
    plan = sub.add_parser("plan", help="show what a stack declares, offline")
    plan.add_argument("stack", help="stack name: reads Pulumi.STACK.yaml")
    plan.add_argument("--json", action="store_true", help="print a JSON document instead of a tree")
    plan.add_argument(
        "--show-secrets",
        action="store_true",
        help="show secret inputs in plain text (like `pulumi preview --show-secrets`); default: [secret]",
    )
    plan.add_argument(
        "--policies",
        action="store_true",
        help="also run the policy pack (policies/) on the plan; exit 5 when a mandatory policy is violated",
    )
    plan.add_argument(
        "--policy-config",
        type=Path,
        default=None,
        metavar="FILE",
        help="policy config JSON, as `pulumi preview --policy-pack-config` takes it",
    )
    plan.add_argument(
        "--root",
        type=Path,
        default=REPO,
        help="directory holding Pulumi.yaml and the stack files (default: this repository)",
    )
    plan.set_defaults(func=_plan)
    # Operations on deployed stacks (issue 6): preview/up/destroy/drift, status, lock.
    from stacks import automation, lock, status

    automation.add_commands(sub)
    status.add_command(sub)
    lock.add_command(sub)
    return top


def main(argv: list[str] | None = None) -> int:
    from stacks.stackfile import StackFileError

    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except StackFileError as exc:
        # A stack or project file that cannot be read: its file and line, no traceback.
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
