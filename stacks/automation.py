"""`preview`, `up`, `destroy` and `drift` of a stack, through Pulumi's Automation API.

    python -m stacks preview STACK   the changes `up` would make (live state read first), policy pack applied
    python -m stacks up STACK        converge the stack on what is really there (refresh first: a
                                     change made by hand is repaired), policy pack applied
    python -m stacks destroy STACK   remove everything the stack holds, once the stack's name
                                     is typed at the prompt (or given as --yes=STACK, for CI)
    python -m stacks drift STACK     `refresh --preview-only --expect-no-changes`: a JSON report
                                     of what drifted on stdout, exit 7 on drift, 0 when none

Every command uses the same state backend as the Makefile: `file://<repo>/.pulumi-state`
with the passphrase in `.pulumi-state/passphrase`, unless PULUMI_BACKEND_URL (and
PULUMI_CONFIG_PASSPHRASE / PULUMI_CONFIG_PASSPHRASE_FILE) say otherwise. What is
missing stops the command before it starts, with one line that says what to do and
never a traceback, checked in this order: the stack file (exit 6), the Pulumi CLI
(exit 127, the shell's "command not found", so a wrapper can tell "install the
CLI" from a failed operation), then the backend login and the passphrase (exit 1).

`up` first previews (live state read first, policy pack applied), as the CLI's own
`up` does before it asks. When that preview finds nothing to change, `up` stops
there and says so: a converged stack costs one engine run, not two. When the plan
updates, replaces or deletes the PostgreSQL or Open WebUI container and the stack
declares a backup service, it takes a fresh `pg_dump` with the declared backup
script in the running backup container and names the dump before anything
changes (`--skip-backup` to go on without one).
`up`, `destroy` (and `lock` writing a file) append a line to the audit log
(stacks/audit.py).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, TypeVar

import yaml

from stacks.stackfile import REPO

T = TypeVar("T")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_NO_STACK = 6
EXIT_DRIFT = 7
# A missing tool is the shell's "command not found" (127), not a failed operation.
EXIT_NO_CLI = 127

STATE_DIR = ".pulumi-state"
PASSPHRASE_FILE = "passphrase"
POLICY_PACK_FILE = "PulumiPolicy.yaml"
INSTALL_HINT = "install it: https://www.pulumi.com/docs/iac/download-install/ (curl -fsSL https://get.pulumi.com | sh)"
# Backends that keep state in a bucket or a directory encrypt secrets with a
# passphrase unless the stack names another secrets provider.
DIY_SCHEMES = ("file://", "s3://", "gs://", "azblob://", "postgres://")


class OperationError(Exception):
    """A stack operation cannot run or failed; `exit_code` is what the command exits with."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# -- the backend -------------------------------------------------------------------


@dataclass(frozen=True)
class Backend:
    """Where state lives and the environment the CLI needs for it."""

    url: str
    env: dict[str, str]

    @property
    def is_local(self) -> bool:
        return self.url.startswith("file://")


def default_backend_url(root: Path = REPO) -> str:
    return f"file://{root / STATE_DIR}"


def resolve_backend(stack: str, *, root: Path = REPO, environ: Mapping[str, str] | None = None) -> Backend:
    """The backend and its environment, or an OperationError saying what is missing."""
    environ = os.environ if environ is None else environ
    url = environ.get("PULUMI_BACKEND_URL") or default_backend_url(root)
    env = {"PULUMI_BACKEND_URL": url, "PULUMI_SKIP_UPDATE_CHECK": "true"}
    if url.startswith("file://"):
        directory = Path(url[len("file://") :]).expanduser()
        if not directory.is_dir():
            hint = "run `make stack-ready` once" if url == default_backend_url(root) else f"create {directory}"
            raise OperationError(f"the state backend {url} does not exist: {hint}")
    elif url.startswith(("https://", "http://")):
        if not environ.get("PULUMI_ACCESS_TOKEN") and not _logged_in(url, environ):
            raise OperationError(
                f"not logged in to the state backend {url}: set PULUMI_ACCESS_TOKEN or run `pulumi login {url}`"
            )
    if url.startswith(DIY_SCHEMES) and not _stack_has_own_secrets_provider(stack, root):
        env.update(_passphrase_env(url, root, environ))
    return Backend(url, env)


def _passphrase_env(url: str, root: Path, environ: Mapping[str, str]) -> dict[str, str]:
    if "PULUMI_CONFIG_PASSPHRASE" in environ:
        return {}
    given = environ.get("PULUMI_CONFIG_PASSPHRASE_FILE")
    if given:
        if not Path(given).expanduser().is_file():
            raise OperationError(f"PULUMI_CONFIG_PASSPHRASE_FILE names {given}, which does not exist")
        return {"PULUMI_CONFIG_PASSPHRASE_FILE": given}
    default = root / STATE_DIR / PASSPHRASE_FILE
    if url == default_backend_url(root) and default.is_file():
        return {"PULUMI_CONFIG_PASSPHRASE_FILE": str(default)}
    raise OperationError(
        f"no passphrase for the secrets of this stack on {url}: set PULUMI_CONFIG_PASSPHRASE or "
        f"PULUMI_CONFIG_PASSPHRASE_FILE"
        + (
            " (or run `make stack-ready` once to generate .pulumi-state/passphrase)"
            if url.startswith("file://")
            else ""
        )
    )


def _stack_has_own_secrets_provider(stack: str, root: Path) -> bool:
    path = root / f"Pulumi.{stack}.yaml"
    if not path.is_file():
        return False
    doc = yaml.safe_load(path.read_text()) or {}
    provider = str(doc.get("secretsprovider") or "")
    return bool(provider) and not provider.startswith("passphrase")


def _logged_in(url: str, environ: Mapping[str, str]) -> bool:
    home = Path(environ.get("PULUMI_HOME") or Path(environ.get("HOME") or Path.home()) / ".pulumi")
    try:
        credentials = json.loads((home / "credentials.json").read_text())
    except (OSError, ValueError):
        return False
    return url.rstrip("/") in {str(k).rstrip("/") for k in (credentials.get("accessTokens") or {})}


# -- the CLI -----------------------------------------------------------------------


def require_cli(which: Callable[[str], str | None] = shutil.which) -> Any:
    """The Automation API's handle on the Pulumi CLI, or an OperationError that says how to get it."""
    from pulumi import automation as auto

    if which("pulumi") is None:
        raise OperationError(f"the Pulumi CLI is not installed (no `pulumi` on PATH): {INSTALL_HINT}", EXIT_NO_CLI)
    try:
        return auto.PulumiCommand()
    except auto.InvalidVersionError as exc:
        raise OperationError(f"the Pulumi CLI is too old for this SDK: {exc}; {INSTALL_HINT}") from None
    except (OSError, ValueError) as exc:
        raise OperationError(f"the Pulumi CLI does not run: {exc}") from None


# -- policy packs ------------------------------------------------------------------


# `CLUSTER_AI_POLICY_RUNTIME` (set by the offline toolchain's env.sh): start the pack
# through the CLI's analyzer path, `pulumi-analyzer-policy-<runtime>`, from a copy of
# it whose runtime is that name. The toolchain's language host is too old to start a
# Python pack for this CLI (docs/engine.md); a regular Pulumi install runs it as shipped.
POLICY_RUNTIME_ENV = "CLUSTER_AI_POLICY_RUNTIME"
ANALYZER_PACK_DIR = ".pulumi-policy-pack"


def analyzer_pack(root: Path, runtime: str, *, dest: Path | None = None) -> Path:
    """A copy of `root/policies` (its files linked) whose manifest names `runtime`.

    Made afresh under `root/.pulumi-policy-pack` (git-ignored) unless `dest` says
    where; the pack's virtualenv is `root/.venv`.
    """
    source = root / "policies"
    pack = dest if dest is not None else root / ANALYZER_PACK_DIR
    if pack.is_symlink() or pack.is_file():
        pack.unlink()
    elif pack.exists():
        shutil.rmtree(pack)
    pack.mkdir(parents=True)
    for item in sorted(source.iterdir()):
        if item.name not in (POLICY_PACK_FILE, "__pycache__"):
            (pack / item.name).symlink_to(item)
    manifest = yaml.safe_load((source / POLICY_PACK_FILE).read_text())
    manifest["runtime"] = {"name": runtime, "options": {"virtualenv": str(root / ".venv")}}
    (pack / POLICY_PACK_FILE).write_text(yaml.safe_dump(manifest, sort_keys=False))
    return pack


def policy_packs(root: Path = REPO, *, enabled: bool = True) -> list[str]:
    """The repository's policy pack, when it exists and is wanted (as the CLI must start it)."""
    pack = root / "policies"
    if not enabled or not (pack / POLICY_PACK_FILE).is_file():
        return []
    runtime = os.environ.get(POLICY_RUNTIME_ENV)
    if runtime:
        pack = analyzer_pack(root, runtime)
    return [str(pack)]


# -- drift -------------------------------------------------------------------------

# Ops that say a resource's real state differs from what the stack recorded.
DRIFT_OPS = {"update", "delete", "replace", "create", "create-replacement", "delete-replaced"}


@dataclass
class DriftedResource:
    """One resource whose live state differs from the recorded one."""

    urn: str
    type: str
    op: str
    """`update` (properties changed) or `delete` (gone from the host)."""
    properties: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.urn.rsplit("::", 1)[-1]


@dataclass
class DriftReport:
    """What `refresh --preview-only` found."""

    stack: str
    resources: list[DriftedResource]
    changes: dict[str, int]

    @property
    def drifted(self) -> bool:
        return bool(self.resources) or any(op in DRIFT_OPS and n > 0 for op, n in self.changes.items())

    def to_json(self) -> dict[str, Any]:
        return {
            "stack": self.stack,
            "drifted": self.drifted,
            "changes": dict(sorted(self.changes.items())),
            "resources": [
                {"urn": r.urn, "type": r.type, "name": r.name, "op": r.op, "properties": r.properties}
                for r in self.resources
            ],
        }


def drift_report(stack: str, events: Iterable[Any]) -> DriftReport:
    """Read the drifted resources out of a refresh's engine events.

    A refresh step's event carries the *result* op the engine computed (`update`,
    `delete`, `same`); older engines send `refresh` with the changed keys in
    `diffs`/`detailed_diff` and no `new` state for a resource that is gone.
    """
    found: dict[str, DriftedResource] = {}
    changes: dict[str, int] = {}
    for event in events:
        summary = getattr(event, "summary_event", None)
        if summary is not None:
            changes = {str(getattr(op, "value", op)): int(n) for op, n in (summary.resource_changes or {}).items()}
        for kind in ("res_outputs_event", "resource_pre_event"):
            payload = getattr(event, kind, None)
            if payload is None:
                continue
            drifted = _drifted(payload.metadata)
            if drifted is not None and (drifted.urn not in found or found[drifted.urn].op == "update"):
                found[drifted.urn] = drifted
    return DriftReport(stack, sorted(found.values(), key=lambda r: r.urn), changes)


def _drifted(meta: Any) -> DriftedResource | None:
    op = str(getattr(meta.op, "value", meta.op))
    properties = sorted(set(meta.diffs or []) | set((meta.detailed_diff or {}).keys()))
    if op == "refresh":
        if meta.old is not None and meta.new is None:
            op = "delete"
        elif properties:
            op = "update"
        else:
            return None
    if op not in DRIFT_OPS:
        return None
    return DriftedResource(urn=meta.urn, type=meta.type, op=op, properties=properties)


def render_drift(report: DriftReport) -> str:
    if not report.drifted:
        return f"stack {report.stack}: no drift"
    lines = [f"stack {report.stack}: DRIFT in {len(report.resources)} resource(s)"]
    for r in report.resources:
        detail = f" ({', '.join(r.properties)})" if r.properties else ""
        lines.append(f"  {r.op:<7} {r.type}  {r.name}{detail}")
    return "\n".join(lines)


# -- running -----------------------------------------------------------------------


def _exit_code(exc: Exception) -> int:
    match = re.search(r"\bcode: (-?\d+)", str(exc))
    code = int(match[1]) if match else EXIT_FAILED
    return code if 0 < code < 256 else EXIT_FAILED


# Lines of the CLI's stdout that carry its diagnosis: policy violations, resource errors.
_DIAGNOSIS = re.compile(r"error|fail|violat|\[mandatory\]|\[advisory\]|policy", re.IGNORECASE)


def _last_error_lines(exc: Exception, limit: int = 12) -> str:
    """The CLI's own diagnosis, without the Automation API's wrapping.

    The CLI writes resource errors and policy violations to stdout and only a one-line
    verdict ("error: preview failed") to stderr: both are shown, stdout's diagnostic
    lines (and the line after each, which says what is wrong) first.
    """
    text = str(exc)
    stdout, _, stderr = text.partition(" stderr:")
    stdout = stdout.split(" stdout:", 1)[1] if " stdout:" in stdout else ""
    out_lines = stdout.strip().splitlines()
    picked: list[str] = []
    for i, line in enumerate(out_lines):
        if _DIAGNOSIS.search(line) and not line.lstrip().startswith("warning:"):
            picked += [line.rstrip(), *(out_lines[i + 1 : i + 2])]
    err_lines = [line for line in stderr.strip().splitlines() if line.strip()]
    shown = [line for line in picked if line.strip()][-limit * 2 :] + err_lines[-limit:]
    return "\n".join(shown)


def open_stack(stack: str, *, root: Path, backend: Backend, command: Any, create: bool) -> Any:
    """Select (or, for preview/up, create) the stack in the repository's workspace."""
    from pulumi import automation as auto

    options = auto.LocalWorkspaceOptions(work_dir=str(root), env_vars=backend.env, pulumi_command=command)
    try:
        if create:
            return auto.create_or_select_stack(stack, work_dir=str(root), opts=options)
        return auto.select_stack(stack, work_dir=str(root), opts=options)
    except auto.StackNotFoundError:
        raise OperationError(
            f"no stack {stack!r} on {backend.url}: run `python -m stacks up {stack}` first", EXIT_NO_STACK
        ) from None
    except auto.CommandError as exc:
        raise OperationError(
            f"cannot open stack {stack!r} on {backend.url}:\n{_last_error_lines(exc)}", _exit_code(exc)
        ) from None


def _printer(stream: TextIO) -> Callable[[str], None]:
    def emit(line: str) -> None:
        stream.write(line if line.endswith("\n") else line + "\n")
        stream.flush()

    return emit


# -- destroy: typed confirmation ---------------------------------------------------


def confirm_destroy(stack: str, given: str | None, *, stdin: TextIO, err: TextIO) -> None:
    """Go on only when the stack's name was given (`--yes=STACK`) or typed; else an OperationError.

    A wrong name, an empty line, end of input or no terminal to ask on all refuse:
    nothing has been touched when this raises.
    """
    if given is not None:
        if given != stack:
            raise OperationError(f"--yes={given} does not name the stack {stack!r}: nothing destroyed")
        return
    if not stdin.isatty():
        raise OperationError(
            f"destroying stack {stack!r} needs its name typed at a terminal, or --yes={stack}: nothing destroyed"
        )
    err.write(f"This removes every resource of stack {stack!r} (protected volumes stay).\n")
    err.write(f"Type the stack name ({stack}) to go on: ")
    err.flush()
    answer = stdin.readline()
    if answer.strip() != stack:
        reason = "no answer" if not answer else f"{answer.strip()!r} is not {stack!r}"
        raise OperationError(f"{reason}: nothing destroyed")


# -- up: a fresh dump before the data changes ---------------------------------------

CONTAINER = "docker:index/container:Container"
# The services whose update or replacement can touch the database's content or schema
# (Open WebUI migrates its database on start): a dump is taken before either changes.
DATA_SERVICES = ("postgres", "webui")
BACKUP_SERVICE = "backup"
# Steps that stop, recreate or remove an existing container.
CHANGING_OPS = {"update", "replace", "create-replacement", "delete-replaced", "delete"}
WROTE = re.compile(r"backup: wrote (\S+)")


def _label_map(labels: Any) -> dict[str, str]:
    """`labels` as pulumi_docker takes them (a list of {label, value}) as a mapping."""
    if not isinstance(labels, list):
        return {}
    return {str(i.get("label")): str(i.get("value")) for i in labels if isinstance(i, Mapping)}


def data_container_urns(evaluation: Any) -> set[str]:
    """The URNs of the declared PostgreSQL and Open WebUI containers (offline plan)."""
    return {
        r.urn
        for r in evaluation.by_type(CONTAINER)
        if _label_map(r.plain_inputs().get("labels")).get("cluster-ai.service") in DATA_SERVICES
    }


@dataclass(frozen=True)
class DataChange:
    """A planned step on a PostgreSQL or Open WebUI container."""

    urn: str
    op: str

    @property
    def name(self) -> str:
        return self.urn.rsplit("::", 1)[-1]


def data_changes(events: Iterable[Any], watched: set[str]) -> list[DataChange]:
    """The preview's steps that update, replace or delete a watched container.

    A container counts when its URN is one the offline plan declares for PostgreSQL or
    Open WebUI, or when the step's old or new inputs carry such a service label (the
    same resource under a URN the plan no longer has).
    """
    found: dict[str, DataChange] = {}
    for event in events:
        pre = getattr(event, "resource_pre_event", None)
        if pre is None:
            continue
        meta = pre.metadata
        op = str(getattr(meta.op, "value", meta.op))
        if op not in CHANGING_OPS or meta.type != CONTAINER:
            continue
        services = {
            _label_map((getattr(state, "inputs", None) or {}).get("labels")).get("cluster-ai.service")
            for state in (meta.old, meta.new)
            if state is not None
        }
        if meta.urn in watched or services & set(DATA_SERVICES):
            found.setdefault(meta.urn, DataChange(meta.urn, op))
    return sorted(found.values(), key=lambda c: c.urn)


@dataclass(frozen=True)
class Dump:
    """A dump the backup service wrote."""

    path: str
    """Inside the backup container (the backup volume is mounted there)."""
    container: str
    """The container's resource name (label `cluster-ai.container`)."""
    host: str
    docker_url: str

    def describe(self) -> str:
        return f"{self.path} (container {self.container} on host {self.host}, {self.docker_url})"


def take_dump(declared: Any, *, client_for: Callable[[str], Any] | None = None) -> Dump:
    """Run the declared backup script once (`BACKUP_ONCE=1`) in the running backup container.

    The script, its environment and its user are the container's own, so the dump
    lands in the backup volume beside the scheduled ones and is pruned with them.
    """
    from components.backup import backup_command
    from stacks.status import docker_client

    # Over SSH with the stack's pinned host key (the provider's own ssh options).
    if client_for is not None:
        client = client_for(declared.docker_url)
    else:
        client = docker_client(declared.docker_url, ssh_opts=getattr(declared, "ssh_opts", ()))
    try:
        label = declared.labels.get("cluster-ai.stack", "")
        found = client.containers.list(
            filters={"label": [f"cluster-ai.stack={label}", f"cluster-ai.container={declared.name}"]}
        )
        if len(found) != 1:
            raise OperationError(
                f"cannot take the pre-update dump: {len(found)} running containers {declared.name!r} on host "
                f"{declared.host} ({declared.docker_url}); check `python -m stacks status`, or pass --skip-backup"
            )
        code, output = found[0].exec_run(backup_command(), environment={"BACKUP_ONCE": "1"})
    finally:
        client.close()
    text = output.decode(errors="replace") if isinstance(output, bytes) else str(output)
    written = WROTE.findall(text)
    if code != 0 or not written:
        tail = "\n".join(text.strip().splitlines()[-5:])
        raise OperationError(
            f"the pre-update dump in {declared.name} on host {declared.host} failed (exit {code}):\n{tail}\n"
            "nothing was changed; fix the backup (or pass --skip-backup to update without a fresh dump)"
        )
    return Dump(written[-1], declared.name, declared.host, declared.docker_url)


# Steps that change nothing: `same`, a data source read again, a refresh's own step.
UNCHANGED_OPS = {"same", "read", "refresh"}
STACK_TYPE = "pulumi:pulumi:Stack"


def _op(meta: Any) -> str:
    return str(getattr(meta.op, "value", meta.op))


def nothing_to_change(events: Iterable[Any]) -> bool:
    """True when a finished preview plans no step and no change of a stack output.

    Resource steps come from the pre-events; stack outputs are not steps (an
    output-only change is `same` everywhere), so the stack's outputs event is
    compared old against new. A secret output is masked on both sides: a change of
    a secret output alone, with no resource changing, is not seen (docs/operations.md).
    """
    finished = False
    for event in events:
        pre = getattr(event, "resource_pre_event", None)
        if pre is not None and _op(pre.metadata) not in UNCHANGED_OPS:
            return False
        outputs = getattr(event, "res_outputs_event", None)
        if outputs is not None and outputs.metadata.type == STACK_TYPE:
            old, new = outputs.metadata.old, outputs.metadata.new
            if old is None or new is None or (old.outputs or {}) != (new.outputs or {}):
                return False
        if getattr(event, "summary_event", None) is not None:
            finished = True
    return finished


def describe_plan(changes: Mapping[str, int]) -> str:
    """`2 to create, 1 to update, 40 unchanged` from a summary's counts."""
    changing = [f"{n} to {op}" for op, n in sorted(changes.items()) if op not in UNCHANGED_OPS and n]
    unchanged = sum(n for op, n in changes.items() if op in UNCHANGED_OPS)
    return ", ".join([*changing, f"{unchanged} unchanged"])


def preview_before_up(stack: Any, packs: list[str]) -> list[Any]:
    """The preview `up` starts with (refresh first, the pack applied): its engine events."""
    events: list[Any] = []
    stack.preview(on_event=events.append, policy_packs=packs or None, refresh=True, color="never")
    return events


def backup_before_up(
    events: list[Any],
    args: argparse.Namespace,
    progress: Callable[[str], None],
    *,
    client_for: Callable[[str], Any] | None = None,
) -> Dump | None:
    """If the previewed plan changes PostgreSQL or Open WebUI and backups are on, dump first."""
    from infra.program import StackConfigError
    from stacks.plan import evaluate_stack
    from stacks.status import SERVICE, declared_containers

    try:
        evaluation = evaluate_stack(args.stack, root=args.root)
    except StackConfigError as exc:
        raise OperationError(str(exc), EXIT_CONFIG) from None
    # The running backup service, not its file holder (same service label, never started).
    backups = [c for c in declared_containers(evaluation) if c.service == BACKUP_SERVICE and c.role == SERVICE]
    if not backups:
        return None  # backups are off for this stack
    changes = data_changes(events, data_container_urns(evaluation))
    if not changes:
        progress("pre-update backup: not needed (the plan does not change PostgreSQL or Open WebUI)")
        return None
    progress(
        "pre-update backup: the plan changes "
        + ", ".join(f"{c.name} ({c.op})" for c in changes)
        + ": taking a fresh dump first"
    )
    dump = take_dump(backups[0], client_for=client_for)
    progress(f"pre-update backup: {dump.describe()}")
    return dump


# -- running -----------------------------------------------------------------------


def _summary_changes(events: Iterable[Any]) -> dict[str, int]:
    """The resource counts of the engine's summary event (empty if the run never got there)."""
    changes: dict[str, int] = {}
    for event in events:
        summary = getattr(event, "summary_event", None)
        if summary is not None:
            changes = {str(getattr(op, "value", op)): int(n) for op, n in (summary.resource_changes or {}).items()}
    return changes


def run_operation(
    args: argparse.Namespace,
    *,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
    stdin: TextIO = sys.stdin,
    client_for: Callable[[str], Any] | None = None,
) -> int:
    """Run `args.operation` on `args.stack`; return the exit code."""

    root: Path = args.root
    operation: str = args.operation
    if not (root / f"Pulumi.{args.stack}.yaml").is_file():
        raise OperationError(f"no stack config Pulumi.{args.stack}.yaml in {root}", EXIT_NO_STACK)
    # The CLI first: without it nothing else is worth asking for.
    command = require_cli()
    backend = resolve_backend(args.stack, root=root)
    if operation == "destroy":
        confirm_destroy(args.stack, args.yes, stdin=stdin, err=err)
    stack = open_stack(args.stack, root=root, backend=backend, command=command, create=operation in ("preview", "up"))
    progress = _printer(err if operation == "drift" else out)
    packs = policy_packs(root, enabled=not getattr(args, "no_policies", False))
    if operation == "drift":
        return _guarded(args.stack, operation, lambda: _drift(stack, args, progress, out))
    if operation == "preview":
        _guarded(
            args.stack,
            operation,
            lambda: stack.preview(
                on_output=progress, policy_packs=packs or None, diff=args.diff, refresh=True, color="never"
            ),
        )
        return EXIT_OK
    return _changing(stack, args, backend, packs, progress, err=err, client_for=client_for)


def _guarded(name: str, operation: str, run: Callable[[], T]) -> T:
    """Run one Automation API call, turning its errors into OperationErrors."""
    from pulumi import automation as auto

    try:
        return run()
    except auto.ConcurrentUpdateError:
        raise OperationError(f"stack {name!r} is locked by another update; wait, or `pulumi cancel`") from None
    except auto.CommandError as exc:
        raise OperationError(
            f"`{operation}` of stack {name!r} failed:\n{_last_error_lines(exc)}", _exit_code(exc)
        ) from None


def _up(
    stack: Any,
    args: argparse.Namespace,
    planned: list[Any],
    packs: list[str],
    progress: Callable[[str], None],
    events: list[Any],
    detail: dict[str, Any],
    *,
    client_for: Callable[[str], Any] | None,
) -> None:
    """The pre-update dump the plan calls for, then the update itself (its events into `events`)."""
    if args.skip_backup:
        detail["backup"] = "skipped (--skip-backup)"
    else:
        dump = backup_before_up(planned, args, progress, client_for=client_for)
        if dump is not None:
            detail.update(backup=dump.path, backupContainer=dump.container, backupHost=dump.host)
    _guarded(
        args.stack,
        "up",
        lambda: stack.up(
            on_output=progress,
            on_event=events.append,
            policy_packs=packs or None,
            diff=args.diff,
            # Converge on what is really there: a container removed or changed
            # by hand is read first, then put back as declared.
            refresh=True,
            color="never",
        ),
    )


def _changing(
    stack: Any,
    args: argparse.Namespace,
    backend: Backend,
    packs: list[str],
    progress: Callable[[str], None],
    *,
    err: TextIO,
    client_for: Callable[[str], Any] | None,
) -> int:
    """`up` or `destroy`, recorded in the audit log whatever the outcome."""
    from stacks import audit

    operation: str = args.operation
    events: list[Any] = []
    detail: dict[str, Any] = {}
    result = audit.FAILED
    try:
        if operation == "up":
            planned = _guarded(args.stack, "preview", lambda: preview_before_up(stack, packs))
            progress(f"plan: {describe_plan(_summary_changes(planned))}")
            if nothing_to_change(planned):
                # Nothing to apply: the preview's counts are this run's.
                events = planned
                detail["applied"] = False
                progress(f"no changes: stack {args.stack!r} already is as declared (live state read first)")
            else:
                _up(stack, args, planned, packs, progress, events, detail, client_for=client_for)
        else:
            _guarded(
                args.stack, operation, lambda: stack.destroy(on_output=progress, on_event=events.append, color="never")
            )
        result = audit.SUCCEEDED
    except OperationError as exc:
        detail["exitCode"] = exc.exit_code
        raise
    except KeyboardInterrupt:
        detail["interrupted"] = True
        raise
    finally:
        path = audit.audit_log_path(backend.url, root=args.root)
        entry = audit.Entry(args.stack, operation, result, _summary_changes(events), detail)
        if audit.append(path, entry, root=args.root, err=err):
            print(f"audit: {operation} of {args.stack} {result}, recorded in {path}", file=err)
    return EXIT_OK


def _drift(stack: Any, args: argparse.Namespace, progress: Callable[[str], None], out: TextIO) -> int:
    from pulumi import automation as auto

    events: list[Any] = []
    failure: Exception | None = None
    try:
        stack.preview_refresh(expect_no_changes=True, on_output=progress, on_event=events.append, color="never")
    except auto.CommandError as exc:
        # --expect-no-changes makes the CLI fail when there is drift: the events say what.
        failure = exc
    report = drift_report(args.stack, events)
    if failure is not None and not report.drifted:
        raise OperationError(
            f"drift check of stack {args.stack!r} failed:\n{_last_error_lines(failure)}", _exit_code(failure)
        )
    progress(render_drift(report))
    out.write(json.dumps(report.to_json(), indent=2) + "\n")
    return EXIT_DRIFT if report.drifted else EXIT_OK


def _command(args: argparse.Namespace) -> int:
    try:
        return run_operation(args)
    except OperationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser], *, root_default: Path = REPO) -> None:
    """Register preview/up/destroy/drift on the `python -m stacks` parser."""
    helps = {
        "preview": "show what `up` would change (Automation API; policy pack applied)",
        "up": "deploy the stack (Automation API; progress streamed; policy pack applied)",
        "destroy": "remove every resource of the stack, once its name is typed (or given as --yes=STACK)",
        "drift": "refresh --preview-only --expect-no-changes: a JSON report on stdout (progress on stderr), exit 7 on drift",
    }
    for name, text in helps.items():
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("stack", help="stack name: Pulumi.STACK.yaml")
        p.add_argument(
            "--root", type=Path, default=root_default, help="directory holding Pulumi.yaml (default: this repository)"
        )
        if name in ("preview", "up"):
            p.add_argument("--diff", action="store_true", help="show a property-level diff")
            p.add_argument("--no-policies", action="store_true", help="do not apply the policy pack in policies/")
        if name == "up":
            p.add_argument(
                "--skip-backup",
                action="store_true",
                help="do not take the fresh PostgreSQL dump `up` takes before changing PostgreSQL or Open WebUI",
            )
        if name == "destroy":
            p.add_argument(
                "--yes",
                metavar="STACK",
                default=None,
                help="destroy without asking: the value must be the stack's name (for CI)",
            )
        p.set_defaults(func=_command, operation=name)
