"""`python -m stacks preview|up|destroy|drift`: what can be checked without the Pulumi CLI.

The missing-CLI, missing-backend and missing-passphrase errors (one line, no
traceback, non-zero exit), argument handling, the policy pack lookup, and the
drift report read from engine events shaped as the CLI's event log writes them
(`EngineEvent.from_json`). The operations themselves run in tests/e2e.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from pulumi.automation._cmd import CommandResult
from pulumi.automation.errors import CommandError
from pulumi.automation.events import EngineEvent

from stacks import audit, automation
from stacks.__main__ import main
from stacks.plan import evaluate_stack
from stacks.stackfile import REPO


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A repository copy with the dev stack, a local state dir and its passphrase."""
    shutil.copy(REPO / "Pulumi.yaml", tmp_path / "Pulumi.yaml")
    shutil.copy(REPO / "Pulumi.dev.yaml", tmp_path / "Pulumi.dev.yaml")
    (tmp_path / ".pulumi-state").mkdir(mode=0o700)
    (tmp_path / ".pulumi-state" / "passphrase").write_text("correct horse\n")
    return tmp_path


def _must_not_open(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("the stack was opened although the command should have stopped before")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in (
        "PULUMI_BACKEND_URL",
        "PULUMI_CONFIG_PASSPHRASE",
        "PULUMI_CONFIG_PASSPHRASE_FILE",
        "PULUMI_ACCESS_TOKEN",
    ):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize("operation", ["preview", "up", "destroy", "drift"])
def test_a_missing_pulumi_cli_is_one_clear_line_and_exit_127(
    operation: str,
    root: Path,
    clean_env: pytest.MonkeyPatch,
    tmp_path_factory: pytest.TempPathFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    clean_env.setenv("PATH", str(tmp_path_factory.mktemp("empty-path")))
    code = main([operation, "dev", "--root", str(root)])
    err = capsys.readouterr().err
    assert code == automation.EXIT_NO_CLI == 127
    assert err.startswith("error: the Pulumi CLI is not installed (no `pulumi` on PATH)")
    assert "https://www.pulumi.com/docs/iac/download-install/" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("operation", ["preview", "up", "destroy", "drift"])
def test_the_cli_is_checked_before_the_backend_and_the_passphrase(
    operation: str,
    root: Path,
    clean_env: pytest.MonkeyPatch,
    tmp_path_factory: pytest.TempPathFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A user without the CLI, the state directory or a passphrase gets one message: the CLI's."""
    shutil.rmtree(root / ".pulumi-state")
    clean_env.setenv("PATH", str(tmp_path_factory.mktemp("empty-path")))
    code = main([operation, "dev", "--root", str(root)])
    err = capsys.readouterr().err
    assert code == 127, err
    assert err.strip().splitlines() == [err.strip()] and "Pulumi CLI is not installed" in err
    assert "backend" not in err and "passphrase" not in err


def test_require_cli_says_so_when_pulumi_is_not_on_path() -> None:
    with pytest.raises(automation.OperationError, match="not installed") as raised:
        automation.require_cli(which=lambda name: None)
    assert raised.value.exit_code == 127


def test_the_default_backend_is_the_makefiles_local_state_with_its_passphrase_file(root: Path) -> None:
    backend = automation.resolve_backend("dev", root=root, environ={})
    assert backend.url == f"file://{root}/.pulumi-state" and backend.is_local
    assert backend.env["PULUMI_BACKEND_URL"] == backend.url
    assert backend.env["PULUMI_CONFIG_PASSPHRASE_FILE"] == str(root / ".pulumi-state" / "passphrase")


def test_a_local_backend_without_a_passphrase_stops_before_anything_runs(
    root: Path, clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (root / ".pulumi-state" / "passphrase").unlink()
    # The CLI is there (its check comes first); the stack is never opened.
    clean_env.setattr(automation, "require_cli", lambda: object())
    clean_env.setattr(automation, "open_stack", _must_not_open)
    code = main(["up", "dev", "--root", str(root)])
    err = capsys.readouterr().err
    assert code == 1
    assert "no passphrase for the secrets of this stack" in err and "PULUMI_CONFIG_PASSPHRASE_FILE" in err
    assert "make stack-ready" in err and "Traceback" not in err


def test_a_passphrase_from_the_environment_is_used_as_given(root: Path) -> None:
    (root / ".pulumi-state" / "passphrase").unlink()
    backend = automation.resolve_backend("dev", root=root, environ={"PULUMI_CONFIG_PASSPHRASE": "x"})
    assert "PULUMI_CONFIG_PASSPHRASE_FILE" not in backend.env  # the CLI reads the inherited variable
    with pytest.raises(automation.OperationError, match="names /nope, which does not exist"):
        automation.resolve_backend("dev", root=root, environ={"PULUMI_CONFIG_PASSPHRASE_FILE": "/nope"})


def test_a_missing_state_directory_says_how_to_create_it(root: Path) -> None:
    shutil.rmtree(root / ".pulumi-state")
    with pytest.raises(automation.OperationError, match="does not exist: run `make stack-ready` once"):
        automation.resolve_backend("dev", root=root, environ={})


def test_a_cloud_backend_without_a_login_is_refused(root: Path, tmp_path: Path) -> None:
    env = {"PULUMI_BACKEND_URL": "https://api.pulumi.com", "HOME": str(tmp_path)}
    with pytest.raises(automation.OperationError, match=r"not logged in to the state backend https://api\.pulumi\.com"):
        automation.resolve_backend("dev", root=root, environ=env)
    backend = automation.resolve_backend("dev", root=root, environ={**env, "PULUMI_ACCESS_TOKEN": "pul-x"})
    assert "PULUMI_CONFIG_PASSPHRASE_FILE" not in backend.env  # Pulumi Cloud encrypts secrets itself


def test_a_bucket_backend_needs_a_passphrase_unless_the_stack_names_a_kms(root: Path) -> None:
    with pytest.raises(automation.OperationError, match="no passphrase"):
        automation.resolve_backend("dev", root=root, environ={"PULUMI_BACKEND_URL": "s3://state"})
    stack_file = root / "Pulumi.dev.yaml"
    stack_file.write_text("secretsprovider: awskms://alias/cluster-ai\n" + stack_file.read_text())
    assert (
        automation.resolve_backend("dev", root=root, environ={"PULUMI_BACKEND_URL": "s3://state"}).url == "s3://state"
    )


def test_an_unknown_stack_is_exit_6(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["preview", "nope", "--root", str(root)]) == 6
    assert "no stack config Pulumi.nope.yaml" in capsys.readouterr().err


def test_the_policy_pack_is_applied_when_it_exists_and_not_when_disabled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CLUSTER_AI_POLICY_RUNTIME", raising=False)
    assert automation.policy_packs(tmp_path) == []
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "PulumiPolicy.yaml").write_text("runtime: python\n")
    assert automation.policy_packs(tmp_path) == [str(tmp_path / "policies")]
    assert automation.policy_packs(tmp_path, enabled=False) == []
    assert automation.policy_packs(REPO) == [str(REPO / "policies")]


def test_every_operation_has_help_and_takes_a_stack() -> None:
    for operation in ("preview", "up", "destroy", "drift"):
        with pytest.raises(SystemExit) as exit_info:
            main([operation])
        assert exit_info.value.code == 2  # argparse: the stack is required


# -- the drift report -----------------------------------------------------------------

URN = "urn:pulumi:dev::cluster-ai::cluster-ai:index:Redis$docker:index/container:Container::redis"
VOLUME_URN = "urn:pulumi:dev::cluster-ai::cluster-ai:index:Redis$docker:index/volume:Volume::redis-data"
NET_URN = "urn:pulumi:dev::cluster-ai::cluster-ai:index:DockerHost$docker:index/network:Network::local-net"


def step(kind: str, op: str, urn: str, rtype: str, **extra: Any) -> EngineEvent:
    metadata = {"op": op, "urn": urn, "type": rtype, "provider": "", **extra}
    return EngineEvent.from_json({"sequence": 1, "timestamp": 1, kind: {"metadata": metadata}})


def summary(**changes: int) -> EngineEvent:
    return EngineEvent.from_json(
        {
            "sequence": 9,
            "timestamp": 9,
            "summaryEvent": {
                "maybeCorrupt": False,
                "durationSeconds": 1,
                "resourceChanges": changes,
                "PolicyPacks": {},
            },
        }
    )


def test_a_refresh_with_nothing_changed_is_no_drift() -> None:
    events = [
        step(
            "resourcePreEvent", "refresh", URN, "docker:index/container:Container", old={"urn": URN}, new={"urn": URN}
        ),
        step("resOutputsEvent", "same", URN, "docker:index/container:Container"),
        summary(same=30),
    ]
    report = automation.drift_report("dev", events)
    assert not report.drifted and report.resources == []
    assert report.to_json() == {"stack": "dev", "drifted": False, "changes": {"same": 30}, "resources": []}


def test_a_deleted_container_and_a_changed_volume_are_reported_with_their_properties() -> None:
    events = [
        step(
            "resourcePreEvent", "refresh", URN, "docker:index/container:Container", old={"urn": URN}, new={"urn": URN}
        ),
        step("resOutputsEvent", "delete", URN, "docker:index/container:Container", old={"urn": URN}),
        step(
            "resOutputsEvent",
            "update",
            VOLUME_URN,
            "docker:index/volume:Volume",
            diffs=["labels"],
            detailedDiff={"labels[0].value": {"diffKind": "update", "inputDiff": False}},
        ),
        step("resOutputsEvent", "same", NET_URN, "docker:index/network:Network"),
        summary(same=28, delete=1, update=1),
    ]
    report = automation.drift_report("dev", events)
    assert report.drifted
    assert [(r.name, r.op, r.properties) for r in report.resources] == [
        ("redis", "delete", []),
        ("redis-data", "update", ["labels", "labels[0].value"]),
    ]
    assert report.to_json()["changes"] == {"delete": 1, "same": 28, "update": 1}
    assert "DRIFT in 2 resource(s)" in automation.render_drift(report)


def test_older_engines_report_refresh_steps_with_diffs_or_a_missing_new_state() -> None:
    events = [
        step("resOutputsEvent", "refresh", URN, "docker:index/container:Container", old={"urn": URN}),
        step(
            "resOutputsEvent",
            "refresh",
            VOLUME_URN,
            "docker:index/volume:Volume",
            old={"urn": VOLUME_URN},
            new={"urn": VOLUME_URN},
            diffs=["driverOpts"],
        ),
    ]
    report = automation.drift_report("dev", events)
    assert [(r.name, r.op, r.properties) for r in report.resources] == [
        ("redis", "delete", []),
        ("redis-data", "update", ["driverOpts"]),
    ]


def test_the_cli_exit_code_is_taken_from_the_automation_apis_error() -> None:
    from pulumi.automation._cmd import CommandResult
    from pulumi.automation.errors import CommandError

    error = CommandError(CommandResult(stdout="", stderr="error: one\nerror: policy violated\n", code=5))
    assert automation._exit_code(error) == 5
    assert automation._last_error_lines(error) == "error: one\nerror: policy violated"


# -- the operations, driven through the Automation API's boundary ---------------------
#
# Without a Pulumi CLI here, `require_cli` and `open_stack` are replaced by a stack
# object with the Automation API's methods; it answers with real `EngineEvent`s
# (built from the JSON the CLI's event log carries) and raises the API's real
# `CommandError` where the CLI would fail. Everything between the command line and
# that boundary is the shipped code.


CONTAINER = "docker:index/container:Container"


class FakeStack:
    """The Automation API's `Stack`, at the boundary: it records calls and replays events."""

    def __init__(
        self,
        *,
        preview_events: list[EngineEvent] | None = None,
        run_events: list[EngineEvent] | None = None,
        fail_with: int | None = None,
    ) -> None:
        self.calls: list[str] = []
        self.options: dict[str, dict[str, Any]] = {}
        self.preview_events = preview_events or []
        self.run_events = run_events or [summary(same=3)]
        self.fail_with = fail_with

    def _replay(self, name: str, events: list[EngineEvent], on_event: Any, options: dict[str, Any]) -> None:
        self.calls.append(name)
        self.options[name] = options
        if options.get("on_output") is not None:
            options["on_output"](f"{name}: the engine's own progress line")
        for event in events:
            if on_event is not None:
                on_event(event)
        if self.fail_with is not None and name != "preview":
            raise CommandError(CommandResult(stdout="", stderr=f"error: {name} failed\n", code=self.fail_with))

    def preview(self, *, on_event: Any = None, **options: Any) -> None:
        self._replay("preview", self.preview_events, on_event, options)

    def up(self, *, on_event: Any = None, **options: Any) -> None:
        self._replay("up", self.run_events, on_event, options)

    def destroy(self, *, on_event: Any = None, **options: Any) -> None:
        self._replay("destroy", self.run_events, on_event, options)

    def preview_refresh(self, *, on_event: Any = None, **options: Any) -> None:
        self._replay("preview_refresh", self.run_events, on_event, options)


class Terminal:
    """stdin as a person at a terminal: `isatty()` is true, answers are given lines."""

    def __init__(self, answer: str) -> None:
        self.answer = answer

    def isatty(self) -> bool:
        return True

    def readline(self) -> str:
        return self.answer


class FakeContainer:
    def __init__(self, output: bytes, code: int = 0) -> None:
        self.output, self.code = output, code
        self.exec_calls: list[tuple[list[str], dict[str, str]]] = []

    def exec_run(self, cmd: list[str], environment: dict[str, str]) -> tuple[int, bytes]:
        self.exec_calls.append((cmd, environment))
        return self.code, self.output


class FakeDocker:
    """docker-py's client at the boundary: one host's containers, found by their labels."""

    def __init__(self, containers: list[FakeContainer]) -> None:
        self.found = containers
        self.filters: list[Any] = []
        self.urls: list[str] = []
        self.containers = self

    def __call__(self, url: str) -> FakeDocker:
        self.urls.append(url)
        return self

    def list(self, filters: Any) -> list[FakeContainer]:
        self.filters.append(filters)
        return self.found

    def close(self) -> None:
        pass


@pytest.fixture
def boundary(root: Path, clean_env: pytest.MonkeyPatch) -> Any:
    """Install a FakeStack behind `require_cli`/`open_stack`; returns a setter."""
    clean_env.setenv("CLUSTER_AI_AUDIT_LOG", str(root / "audit.jsonl"))

    def install(stack: FakeStack) -> FakeStack:
        clean_env.setattr(automation, "require_cli", lambda: object())
        clean_env.setattr(automation, "open_stack", lambda *a, **k: stack)
        return stack

    return install


def run(argv: list[str], *, stdin: Any = None, docker: FakeDocker | None = None) -> tuple[int, str, str]:
    """`python -m stacks ARGV` through `run_operation`, with stdin and Docker at the boundary."""
    import io

    from stacks.__main__ import parser

    args = parser().parse_args(argv)
    out, err = io.StringIO(), io.StringIO()
    try:
        code = automation.run_operation(args, out=out, err=err, stdin=stdin or io.StringIO(""), client_for=docker)
    except automation.OperationError as exc:
        err.write(f"error: {exc}\n")
        code = exc.exit_code
    return code, out.getvalue(), err.getvalue()


def audit_lines(root: Path) -> list[dict[str, Any]]:
    return audit.read(root / "audit.jsonl")


# -- destroy asks for the stack's name ---------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "stdin", "message"),
    [
        (["--yes=prod"], None, "--yes=prod does not name the stack 'dev'"),
        ([], None, "needs its name typed at a terminal, or --yes=dev"),
        ([], Terminal("prod\n"), "'prod' is not 'dev'"),
        ([], Terminal("\n"), "'' is not 'dev'"),
        ([], Terminal(""), "error: no answer: nothing destroyed"),
    ],
    ids=["wrong-yes", "no-tty", "wrong-answer", "empty-answer", "eof"],
)
def test_destroy_without_the_stack_name_changes_nothing_and_exits_non_zero(
    argv: list[str], stdin: Any, message: str, root: Path, boundary: Any
) -> None:
    stack = boundary(FakeStack())
    code, _, err = run(["destroy", "dev", "--root", str(root), *argv], stdin=stdin)
    assert code == 1, err
    assert message in err and "nothing destroyed" in err
    assert stack.calls == [], "the stack was touched"
    assert audit_lines(root) == []


@pytest.mark.parametrize(("argv", "stdin"), [(["--yes=dev"], None), ([], Terminal("dev\n"))], ids=["yes", "typed"])
def test_destroy_with_the_stack_name_runs_and_is_audited(
    argv: list[str], stdin: Any, root: Path, boundary: Any
) -> None:
    stack = boundary(FakeStack(run_events=[summary(delete=12)]))
    code, _, err = run(["destroy", "dev", "--root", str(root), *argv], stdin=stdin)
    assert code == 0, err
    assert stack.calls == ["destroy"]
    (line,) = audit_lines(root)
    assert (line["operation"], line["stack"], line["result"], line["changes"]) == (
        "destroy",
        "dev",
        "succeeded",
        {"delete": 12},
    )


# -- the audit log -------------------------------------------------------------------------


def test_up_appends_one_line_with_who_where_what_and_the_counts(root: Path, boundary: Any) -> None:
    import getpass
    import socket

    boundary(FakeStack(run_events=[summary(create=2, update=1, same=40)]))
    for _ in range(2):
        code, _, err = run(["up", "dev", "--root", str(root), "--skip-backup"])
        assert code == 0, err
    lines = audit_lines(root)
    assert len(lines) == 2
    line = lines[-1]
    assert set(line) == {
        "time",
        "user",
        "machine",
        "stack",
        "operation",
        "commit",
        "dirty",
        "result",
        "changes",
        "detail",
    }
    assert line["user"] == getpass.getuser() and line["machine"] == socket.gethostname()
    assert (line["stack"], line["operation"], line["result"]) == ("dev", "up", "succeeded")
    assert line["changes"] == {"create": 2, "same": 40, "update": 1}
    assert line["detail"] == {"backup": "skipped (--skip-backup)"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", line["time"])
    # The tmp root is not a git checkout: the commit is unknown, not invented.
    assert line["commit"] is None and line["dirty"] is None
    assert f"recorded in {root / 'audit.jsonl'}" in err


def test_a_failed_up_is_audited_as_failed_with_the_clis_exit_code(root: Path, boundary: Any) -> None:
    boundary(FakeStack(run_events=[summary(create=1)], fail_with=4))
    code, _, err = run(["up", "dev", "--root", str(root), "--skip-backup"])
    assert code == 4 and "error: `up` of stack 'dev' failed:\nerror: up failed\n" in err
    (line,) = audit_lines(root)
    assert line["result"] == "failed" and line["detail"]["exitCode"] == 4 and line["changes"] == {"create": 1}


def test_preview_and_drift_change_nothing_and_are_not_audited(root: Path, boundary: Any) -> None:
    boundary(FakeStack())
    assert run(["preview", "dev", "--root", str(root)])[0] == 0
    assert run(["drift", "dev", "--root", str(root)])[0] == 0
    assert audit_lines(root) == []


def test_the_audit_log_lives_beside_a_file_backends_state(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert audit.audit_log_path(f"file://{state}", root=tmp_path, environ={}) == state / "audit.jsonl"
    assert audit.audit_log_path("s3://bucket", root=tmp_path, environ={}) == tmp_path / ".pulumi-state" / "audit.jsonl"
    assert audit.audit_log_path("s3://b", root=tmp_path, environ={"CLUSTER_AI_AUDIT_LOG": "/x/a.jsonl"}) == Path(
        "/x/a.jsonl"
    )


def test_audit_lines_name_the_checkouts_commit_and_the_file_is_private(tmp_path: Path) -> None:
    import subprocess

    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "f").write_text("x")
    subprocess.run([*git, "add", "f"], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    log = tmp_path / "logs" / "audit.jsonl"
    assert audit.append(log, audit.Entry("dev", "up", "succeeded"), root=tmp_path)
    (tmp_path / "f").write_text("changed")
    assert audit.append(log, audit.Entry("dev", "up", "succeeded"), root=tmp_path)
    first, second = audit.read(log)
    assert first["commit"] == head and first["dirty"] is False and second["dirty"] is True
    assert log.stat().st_mode & 0o777 == 0o600


def test_lock_writing_a_stack_file_is_audited(root: Path, clean_env: pytest.MonkeyPatch) -> None:
    from stacks import lock

    clean_env.setenv("CLUSTER_AI_AUDIT_LOG", str(root / "audit.jsonl"))
    text = (root / "Pulumi.dev.yaml").read_text()
    result = lock.LockResult([lock.Change("images.redis", "redis:7", "redis:7@sha256:" + "a" * 64)], text + "# x\n")
    clean_env.setattr(lock, "lock_stack", lambda *a, **k: result)
    assert main(["lock", "dev", "--root", str(root)]) == 0
    (line,) = audit_lines(root)
    assert (line["operation"], line["changes"], line["detail"]["pins"]) == ("lock", {"pins": 1}, ["images.redis"])
    assert main(["lock", "dev", "--root", str(root), "--dry-run"]) == 0
    assert len(audit_lines(root)) == 1, "a dry run writes nothing and is not audited"


# -- drift: exit 7 from the engine's events ----------------------------------------------


def test_drift_exits_7_with_the_report_on_stdout_when_the_refresh_finds_changes(root: Path, boundary: Any) -> None:
    events = [
        step("resOutputsEvent", "delete", URN, CONTAINER, old={"urn": URN}),
        summary(same=29, delete=1),
    ]
    # --expect-no-changes: the CLI fails when the refresh would change the state.
    boundary(FakeStack(run_events=events, fail_with=255))
    code, out, err = run(["drift", "dev", "--root", str(root)])
    assert code == automation.EXIT_DRIFT == 7, err
    report = json.loads(out)
    assert report["drifted"] is True and [r["name"] for r in report["resources"]] == ["redis"]
    assert "DRIFT in 1 resource(s)" in err


def test_drift_exits_0_when_the_refresh_changes_nothing(root: Path, boundary: Any) -> None:
    boundary(FakeStack(run_events=[step("resOutputsEvent", "same", URN, CONTAINER), summary(same=30)]))
    code, out, _ = run(["drift", "dev", "--root", str(root)])
    assert code == 0 and json.loads(out)["drifted"] is False


def test_a_drift_check_that_fails_without_drift_is_the_clis_error_not_exit_7(root: Path, boundary: Any) -> None:
    boundary(FakeStack(run_events=[summary(same=30)], fail_with=255))
    code, out, err = run(["drift", "dev", "--root", str(root)])
    assert code == 255 and out == ""
    assert "error: drift check of stack 'dev' failed:\nerror: preview_refresh failed\n" in err


# -- up: a fresh dump before PostgreSQL or Open WebUI changes --------------------------------

DUMP = "/var/lib/postgresql/data/openwebui-20250101T000000Z.dump"


@pytest.fixture(scope="module")
def dev_containers() -> dict[str, str]:
    """Container name -> URN in the dev stack's offline plan."""
    return {r.name: r.urn for r in evaluate_stack("dev").by_type(CONTAINER)}


def pre(op: str, urn: str, **extra: Any) -> EngineEvent:
    return step("resourcePreEvent", op, urn, CONTAINER, **extra)


@pytest.mark.parametrize(("service", "op"), [("webui", "replace"), ("postgres", "update")])
def test_up_dumps_before_a_plan_that_changes_postgres_or_webui(
    service: str, op: str, root: Path, boundary: Any, dev_containers: dict[str, str]
) -> None:
    stack = boundary(FakeStack(preview_events=[pre(op, dev_containers[service]), pre("same", dev_containers["redis"])]))
    backup = FakeContainer(b"backup: wrote " + DUMP.encode() + b"\nbackup: pruned old.dump\n")
    docker = FakeDocker([backup])
    code, out, err = run(["up", "dev", "--root", str(root)], docker=docker)
    assert code == 0, err
    assert stack.calls == ["preview", "up"]
    # The declared script, once, in the running backup container of this stack.
    from components.backup import backup_command

    assert backup.exec_calls == [(backup_command(), {"BACKUP_ONCE": "1"})]
    assert docker.filters == [{"label": ["cluster-ai.stack=dev", "cluster-ai.container=postgres-backup"]}]
    assert f"the plan changes {service} ({op})" in out
    assert f"pre-update backup: {DUMP} (container postgres-backup on host local" in out
    (line,) = audit_lines(root)
    assert line["detail"] == {"backup": DUMP, "backupContainer": "postgres-backup", "backupHost": "local"}


def test_up_takes_no_dump_when_the_data_services_do_not_change(
    root: Path, boundary: Any, dev_containers: dict[str, str]
) -> None:
    stack = boundary(
        FakeStack(
            preview_events=[
                pre("same", dev_containers["webui"]),
                pre("replace", dev_containers["redis"]),
                pre("create", dev_containers["postgres"]),  # a first `up`: nothing to dump yet
            ]
        )
    )
    docker = FakeDocker([])
    code, out, _ = run(["up", "dev", "--root", str(root)], docker=docker)
    assert code == 0 and stack.calls == ["preview", "up"]
    assert docker.urls == [] and "pre-update backup: not needed" in out


def test_a_data_container_under_an_unknown_urn_is_recognised_by_its_service_label() -> None:
    moved = "urn:pulumi:dev::cluster-ai::cluster-ai:index:HeadNode$docker:index/container:Container::webui"
    labels = [{"label": "cluster-ai.service", "value": "webui"}]
    events = [pre("replace", moved, old={"urn": moved, "inputs": {"labels": labels}})]
    assert automation.data_changes(events, watched=set()) == [automation.DataChange(moved, "replace")]
    other = [
        pre(
            "replace",
            moved,
            old={"urn": moved, "inputs": {"labels": [{"label": "cluster-ai.service", "value": "redis"}]}},
        )
    ]
    assert automation.data_changes(other, watched=set()) == []


@pytest.mark.parametrize(
    ("containers", "message"),
    [
        ([], "0 running containers 'postgres-backup' on host local"),
        ([FakeContainer(b"backup: pg_dump of openwebui failed\n", code=1)], "the pre-update dump in postgres-backup"),
    ],
    ids=["backup-not-running", "dump-fails"],
)
def test_up_stops_before_changing_anything_when_the_dump_cannot_be_taken(
    containers: list[FakeContainer], message: str, root: Path, boundary: Any, dev_containers: dict[str, str]
) -> None:
    stack = boundary(FakeStack(preview_events=[pre("replace", dev_containers["webui"])]))
    code, _, err = run(["up", "dev", "--root", str(root)], docker=FakeDocker(containers))
    assert code == 1 and message in err and "--skip-backup" in err
    assert stack.calls == ["preview"], "up ran without its dump"
    (line,) = audit_lines(root)
    assert line["result"] == "failed" and line["changes"] == {}


def test_up_with_backups_off_does_not_look_for_a_dump(root: Path, boundary: Any) -> None:
    stack_file = root / "Pulumi.dev.yaml"
    stack_file.write_text(stack_file.read_text() + "  cluster-ai:backups:\n    enabled: false\n")
    stack = boundary(FakeStack(preview_events=[pre("replace", "urn:pulumi:dev::cluster-ai::x::postgres")]))
    docker = FakeDocker([])
    code, out, err = run(["up", "dev", "--root", str(root)], docker=docker)
    assert code == 0, err
    assert stack.calls == ["preview", "up"]
    assert docker.urls == [], "a dump was looked for on a stack without backups"
    assert "pre-update backup" not in out


# -- up: nothing to change, nothing applied ---------------------------------------------------

STACK_URN = "urn:pulumi:dev::cluster-ai::pulumi:pulumi:Stack::cluster-ai-dev"


def stack_outputs(old: dict[str, Any], new: dict[str, Any]) -> EngineEvent:
    return step("resOutputsEvent", "same", STACK_URN, "pulumi:pulumi:Stack", old={"outputs": old}, new={"outputs": new})


SECRET = {"4dabf18193072939515e22adb298388d": "1b47061264138c4ac30d75fd1eb44270", "ciphertext": "[secret]"}


def converged(
    dev_containers: dict[str, str], *, outputs: tuple[dict[str, Any], dict[str, Any]] | None = None
) -> list[EngineEvent]:
    """A preview of a converged stack: refresh steps, `same` everywhere, the outputs event, the summary."""
    old, new = outputs or ({"webuiUrl": "http://127.0.0.1:3000", "adminPassword": SECRET},) * 2
    events = [pre("refresh", urn) for urn in dev_containers.values()]
    events += [pre("same", urn) for urn in dev_containers.values()]
    return [*events, stack_outputs(old, new), summary(same=len(dev_containers) + 1)]


def test_up_of_a_converged_stack_applies_nothing_and_says_so(
    root: Path, boundary: Any, dev_containers: dict[str, str]
) -> None:
    stack = boundary(FakeStack(preview_events=converged(dev_containers)))
    code, out, err = run(["up", "dev", "--root", str(root)], docker=FakeDocker([]))
    assert code == 0, err
    assert stack.calls == ["preview"], "up ran although the preview found nothing to change"
    assert f"plan: {len(dev_containers) + 1} unchanged" in out
    assert "no changes: stack 'dev' already is as declared" in out
    (line,) = audit_lines(root)
    assert line["result"] == "succeeded" and line["changes"] == {"same": len(dev_containers) + 1}
    assert line["detail"] == {"applied": False}


@pytest.mark.parametrize(
    "change",
    ["container-recreated", "output-added", "output-changed", "unfinished-preview"],
)
def test_up_applies_when_the_preview_plans_any_change(
    change: str, root: Path, boundary: Any, dev_containers: dict[str, str]
) -> None:
    plain = {"webuiUrl": "http://127.0.0.1:3000"}
    events = {
        # Removed by hand: the refresh reads it gone, the plan creates it again.
        "container-recreated": [
            *converged(dev_containers)[:-1],
            pre("create", dev_containers["redis"]),
            summary(same=3, create=1),
        ],
        "output-added": converged(dev_containers, outputs=(plain, {**plain, "grafanaUrl": "http://127.0.0.1:3001/"})),
        "output-changed": converged(dev_containers, outputs=(plain, {"webuiUrl": "http://127.0.0.1:3080"})),
        # No summary: the preview did not finish, so nothing can be concluded from it.
        "unfinished-preview": converged(dev_containers)[:-1],
    }[change]
    stack = boundary(FakeStack(preview_events=events))
    code, _, err = run(["up", "dev", "--root", str(root), "--skip-backup"])
    assert code == 0, err
    assert stack.calls == ["preview", "up"], f"{change}: the update did not run"


def test_describe_plan_counts_changes_and_unchanged_steps() -> None:
    assert automation.describe_plan({"create": 2, "update": 1, "same": 40, "refresh": 3}) == (
        "2 to create, 1 to update, 43 unchanged"
    )
    assert automation.describe_plan({}) == "0 unchanged"


# -- make targets whose output users parse ---------------------------------------------------


@pytest.mark.parametrize(
    ("target", "args"),
    [
        ("plan", "--json"),
        ("policies", "--json"),
        # Nothing answers on that socket: the report (exit 1) is still the only thing on stdout.
        ("status", "--json --timeout 1 --docker-host local=unix:///nonexistent/docker.sock"),
    ],
)
def test_make_prints_only_the_json_on_stdout(target: str, args: str) -> None:
    """`make plan ARGS=--json | jq`: no recipe echo, no prerequisite's chatter on stdout."""
    import subprocess

    result = subprocess.run(
        ["make", target, f"ARGS={args}"], cwd=REPO, capture_output=True, text=True, timeout=300, check=False
    )
    try:
        document = json.loads(result.stdout)
    except ValueError:
        pytest.fail(
            f"`make {target} ARGS={args}` stdout is not JSON: {result.stdout[:300]!r} (stderr {result.stderr[-300:]!r})"
        )
    assert document["stack"] == "dev", f"make {target}: {result.stderr[-300:]}"


# -- plan --show-secrets -------------------------------------------------------------------------


def test_plan_shows_secret_inputs_only_when_asked(capsys: pytest.CaptureFixture[str]) -> None:
    """Open WebUI's uploads (carried by its file holder) hold one secret file, so the whole list
    is secret: a reviewer reads it with --show-secrets, as with `pulumi preview --show-secrets`."""
    assert main(["plan", "dev", "--json"]) == 0
    redacted = json.loads(capsys.readouterr().out)
    assert main(["plan", "dev", "--json", "--show-secrets"]) == 0
    shown = json.loads(capsys.readouterr().out)
    webui = next(r for r in redacted["resources"] if r["name"] == "webui-files" and r["type"] == CONTAINER)
    webui_shown = next(r for r in shown["resources"] if r["urn"] == webui["urn"])
    assert webui["inputs"]["uploads"] == "[secret]" and "uploads" in webui["secrets"]
    files = sorted(u["file"] for u in webui_shown["inputs"]["uploads"])
    assert files and all(isinstance(u["content"], str) for u in webui_shown["inputs"]["uploads"]), files
    assert webui_shown["secrets"] == webui["secrets"], "the secret inputs are still named"
    assert "[secret]" not in json.dumps(shown["resources"])

    assert main(["plan", "dev", "--show-secrets"]) == 0
    text = capsys.readouterr().out
    assert main(["plan", "dev"]) == 0
    default = capsys.readouterr().out
    # The tree names the secret inputs in both modes; which values it prints depends on the shown keys.
    assert "secrets=uploads" in default and "secrets=uploads" in text


# -- the README's figures come from the code -------------------------------------------------


def test_readme_memory_figures_are_the_ones_the_code_computes() -> None:
    from stacks import footprint

    assert footprint.section((REPO / "README.md").read_text()) == footprint.generated(), (
        "README.md's host table is stale: run `python -m stacks.footprint --write`"
    )


def test_every_container_placed_on_a_host_is_in_its_footprint() -> None:
    """The memory the README states for a host is what its containers declare: every container the
    plan places there and that runs (not the never-started `*-files` ones that fill volumes), Dask
    workers aside (they get what is left)."""
    from stacks import footprint

    by_host = {f.host: f for f in footprint.stack_footprints("prod")}
    assert {"proxy", "egress", "edge", "backup", "webui", "postgres"} <= set(by_host["head"].memory_mb)
    assert {"ollama", "edge", "dcgm_exporter", "node_exporter"} <= set(by_host["gpu1"].memory_mb)
    declared: dict[str, list[tuple[str, int]]] = {}
    for r in evaluate_stack("prod").by_type(CONTAINER):
        inputs = r.plain_inputs()
        labels = automation._label_map(inputs.get("labels"))
        if inputs.get("start") is False or labels.get("cluster-ai.service") == "dask-worker":
            continue
        declared.setdefault(labels["cluster-ai.host"], []).append((r.name, int(inputs["memory"])))
    for name, f in by_host.items():
        containers = declared[name]
        assert sum(mb for _, mb in containers) == f.total_mb, (
            f"{name}: the plan's running containers declare {sorted(containers)}, the accounting {f.memory_mb}"
        )
        assert len(containers) == len(f.memory_mb), f"{name}: {sorted(containers)} vs {sorted(f.memory_mb)}"


# -- the "add a GPU node" runbook says what else changes ---------------------------------------


def test_adding_a_gpu_node_changes_what_the_runbook_says() -> None:
    """docs/operations.md lists what a new GPU host changes outside its own subtree."""
    import copy

    from stacks.stackfile import read_stack_config

    hosts = json.loads(read_stack_config("prod").config["cluster-ai:hosts"])
    gpu3 = copy.deepcopy(next(h for h in hosts if h["name"] == "gpu2"))
    gpu3.update(name="gpu3", address="192.0.2.13")
    before = {r.urn: r for r in evaluate_stack("prod")}
    after = {r.urn: r for r in evaluate_stack("prod", overrides={"cluster-ai:hosts": json.dumps([*hosts, gpu3])})}
    changed = {}
    for urn in before.keys() & after.keys():
        old, new = before[urn].plain_inputs(), after[urn].plain_inputs()
        keys = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        if keys:
            changed[before[urn].name] = keys
    # Files travel in each service's holder (`<name>-files`); the service is replaced with its
    # holder through its replacement trigger (the holder's id), which an engine preview shows.
    assert changed == {
        "egress-files": ["uploads"],
        "edge-head-files": ["uploads"],
        "head-bootstrap-run": ["stdin", "triggers"],
        "gpu1-bootstrap-run": ["stdin", "triggers"],
        "gpu2-bootstrap-run": ["stdin", "triggers"],
        "monitoring-prometheus-files": ["uploads"],
        "webui": ["envs"],
    }
    for holder in ("egress-files", "edge-head-files", "monitoring-prometheus-files"):
        service = next(r for r in after.values() if r.type == CONTAINER and r.name == holder.removesuffix("-files"))
        assert f"{holder}-id" in str(service.replacement_trigger), f"{service.urn} is not replaced with {holder}"
    runbook = (REPO / "docs" / "operations.md").read_text()
    for name, keys in changed.items():
        assert f"`~ {name}" in runbook and str(keys) in runbook, f"docs/operations.md does not list {name} {keys}"
    assert not any("gpu3" in urn for urn in before) and sum("gpu3" in urn for urn in after) > 10


# -- what each operation asks of the engine ------------------------------------------------
#
# The Automation API call is the contract with the CLI: a dropped `refresh=True` would make
# `up` blind to a container removed by hand, a dropped `policy_packs` would deploy what the
# pack refuses, `expect_no_changes` is what makes drift exit non-zero.


@pytest.fixture
def opened(root: Path, boundary: Any, clean_env: pytest.MonkeyPatch) -> dict[str, Any]:
    """The root gets a policy pack; `open_stack`'s arguments are recorded."""
    clean_env.delenv("CLUSTER_AI_POLICY_RUNTIME", raising=False)
    (root / "policies").mkdir()
    (root / "policies" / "PulumiPolicy.yaml").write_text("runtime: python\n")
    seen: dict[str, Any] = {}
    cli = object()

    def open_stack(stack: str, **kwargs: Any) -> FakeStack:
        seen.update(stack=stack, **kwargs)
        return seen["fake"]

    def install(stack: FakeStack) -> FakeStack:
        boundary(stack)
        seen["fake"] = stack
        clean_env.setattr(automation, "require_cli", lambda: cli)
        clean_env.setattr(automation, "open_stack", open_stack)
        return stack

    seen["install"], seen["cli"] = install, cli
    return seen


def test_preview_reads_the_live_state_applies_the_pack_and_streams_to_stdout(
    root: Path, opened: dict[str, Any]
) -> None:
    stack = opened["install"](FakeStack())
    code, out, err = run(["preview", "dev", "--root", str(root), "--diff"])
    assert code == 0, err
    assert stack.calls == ["preview"]
    options = stack.options["preview"]
    assert (options["refresh"], options["policy_packs"], options["diff"], options["color"]) == (
        True,
        [str(root / "policies")],
        True,
        "never",
    )
    assert "preview: the engine's own progress line\n" in out
    assert (opened["stack"], opened["root"], opened["command"], opened["create"]) == ("dev", root, opened["cli"], True)
    assert opened["backend"].url == f"file://{root / '.pulumi-state'}"


def test_preview_without_the_pack_passes_none_and_no_diff_by_default(root: Path, opened: dict[str, Any]) -> None:
    stack = opened["install"](FakeStack())
    assert run(["preview", "dev", "--root", str(root), "--no-policies"])[0] == 0
    assert (stack.options["preview"]["policy_packs"], stack.options["preview"]["diff"]) == (None, False)


def test_up_previews_then_updates_with_refresh_and_the_pack(root: Path, opened: dict[str, Any]) -> None:
    stack = opened["install"](FakeStack(preview_events=[pre("create", "urn:pulumi:dev::cluster-ai::x::redis")]))
    code, out, err = run(["up", "dev", "--root", str(root), "--skip-backup"])
    assert code == 0, err
    assert stack.calls == ["preview", "up"]
    pack = [str(root / "policies")]
    planned = stack.options["preview"]
    assert (planned["refresh"], planned["policy_packs"], planned["color"]) == (True, pack, "never")
    applied = stack.options["up"]
    assert (applied["refresh"], applied["policy_packs"], applied["diff"], applied["color"]) == (
        True,
        pack,
        False,
        "never",
    )
    assert "up: the engine's own progress line\n" in out
    assert opened["create"] is True
    (line,) = audit_lines(root)
    assert line["detail"] == {"backup": "skipped (--skip-backup)"}


@pytest.mark.parametrize("flag", [[], ["--no-policies"]])
def test_up_without_the_pack_asks_for_none(flag: list[str], root: Path, opened: dict[str, Any]) -> None:
    stack = opened["install"](FakeStack(preview_events=[pre("create", "urn:pulumi:dev::cluster-ai::x::redis")]))
    assert run(["up", "dev", "--root", str(root), "--skip-backup", "--diff", *flag])[0] == 0
    expected = None if flag else [str(root / "policies")]
    assert stack.options["preview"]["policy_packs"] == stack.options["up"]["policy_packs"] == expected
    assert stack.options["up"]["diff"] is True


def test_destroy_opens_without_creating_and_streams_to_stdout(root: Path, opened: dict[str, Any]) -> None:
    stack = opened["install"](FakeStack())
    code, out, err = run(["destroy", "dev", "--root", str(root), "--yes=dev"])
    assert code == 0, err
    assert stack.calls == ["destroy"] and stack.options["destroy"]["color"] == "never"
    assert "destroy: the engine's own progress line\n" in out
    assert opened["create"] is False


def test_drift_expects_no_changes_and_keeps_stdout_for_the_report(root: Path, opened: dict[str, Any]) -> None:
    stack = opened["install"](FakeStack(run_events=[summary(same=3)]))
    code, out, err = run(["drift", "dev", "--root", str(root)])
    assert code == 0, err
    options = stack.options["preview_refresh"]
    assert (options["expect_no_changes"], options["color"]) == (True, "never")
    assert "preview_refresh: the engine's own progress line\n" in err and "stack dev: no drift\n" in err
    assert json.loads(out) == {"stack": "dev", "drifted": False, "changes": {"same": 3}, "resources": []}
    assert out.endswith("}\n") and '\n  "stack": "dev"' in out, "the report is indented JSON"
    assert opened["create"] is False


def test_an_interrupted_up_is_audited_as_interrupted(root: Path, boundary: Any) -> None:
    class Interrupted(FakeStack):
        def up(self, *, on_event: Any = None, **options: Any) -> None:
            raise KeyboardInterrupt

    boundary(Interrupted(preview_events=[pre("create", "urn:pulumi:dev::cluster-ai::x::redis")]))
    with pytest.raises(KeyboardInterrupt):
        run(["up", "dev", "--root", str(root), "--skip-backup"])
    (line,) = audit_lines(root)
    assert line["result"] == "failed"
    assert line["detail"] == {"backup": "skipped (--skip-backup)", "interrupted": True}


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted(args: Any) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(automation, "run_operation", interrupted)
    assert main(["up", "dev"]) == 130
    assert capsys.readouterr().err == "error: interrupted\n"


# -- the pieces the engine's errors and the login go through -------------------------------


def test_the_clis_diagnosis_is_its_error_lines_and_the_line_after_each_without_warnings() -> None:
    stdout = "\n".join(
        [
            "Previewing update (dev):",
            "    warning: a warning that mentions an error",
            "  docker:index/container:Container (redis):",
            "    error: creating container: port is already allocated",
            "      Bind for 127.0.0.1:6379: address already in use",
            "  unrelated line",
            "Policy Violations:",
            "    [mandatory]  cluster-ai v1  no-privileged (postgres)",
            "    Containers must not be privileged.",
        ]
    )
    error = CommandError(CommandResult(stdout=stdout, stderr="\nerror: update failed\n", code=255))
    assert automation._last_error_lines(error) == "\n".join(
        [
            "    error: creating container: port is already allocated",
            "      Bind for 127.0.0.1:6379: address already in use",
            "Policy Violations:",
            "    [mandatory]  cluster-ai v1  no-privileged (postgres)",
            "    [mandatory]  cluster-ai v1  no-privileged (postgres)",
            "    Containers must not be privileged.",
            "error: update failed",
        ]
    )


def test_the_clis_diagnosis_keeps_the_last_lines_when_there_are_many() -> None:
    stdout = "\n".join(f"error: number {i}" for i in range(40))
    stderr = "\n".join(f"stderr {i}" for i in range(20))
    error = CommandError(CommandResult(stdout=stdout, stderr=stderr, code=1))
    lines = automation._last_error_lines(error, limit=3).splitlines()
    assert lines == [
        "error: number 37",
        "error: number 37",
        "error: number 38",
        "error: number 38",
        "error: number 39",
        "error: number 39",
        "stderr 17",
        "stderr 18",
        "stderr 19",
    ]
    assert len(automation._last_error_lines(error).splitlines()) == 12 * 2 + 12, "the default is 12 of each"


def test_stderr_alone_is_the_diagnosis_when_stdout_says_nothing() -> None:
    error = CommandError(CommandResult(stdout="", stderr="error: no stack named 'dev' found", code=255))
    assert automation._last_error_lines(error) == "error: no stack named 'dev' found"
    odd = Exception("code: 2\n stderr: error: stderr: nested")
    assert automation._last_error_lines(odd) == "error: stderr: nested"


@pytest.mark.parametrize(
    ("text", "code"),
    [("code: 5", 5), ("code: 1", 1), ("code: 255", 255), ("code: 0", 1), ("code: 256", 1), ("code: -1", 1), ("", 1)],
)
def test_the_exit_code_is_the_clis_when_it_is_one_a_shell_can_report(text: str, code: int) -> None:
    assert automation._exit_code(Exception(f"command failed\n {text}\n stdout: x")) == code


def credentials(home: Path, *urls: str) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "credentials.json").write_text(json.dumps({"accessTokens": {u: "pul-x" for u in urls}}))


def test_a_login_is_found_in_pulumi_home_first_then_in_home(tmp_path: Path) -> None:
    credentials(tmp_path / "ph", "https://api.example.test/")
    credentials(tmp_path / "home" / ".pulumi", "s3://bucket")
    env = {"PULUMI_HOME": str(tmp_path / "ph"), "HOME": str(tmp_path / "home")}
    assert automation._logged_in("https://api.example.test", env)
    assert automation._logged_in("https://api.example.test//", env), "trailing slashes do not matter"
    assert not automation._logged_in("s3://bucket", env), "PULUMI_HOME wins over HOME"
    assert automation._logged_in("s3://bucket/", {"HOME": str(tmp_path / "home")})
    assert not automation._logged_in("s3://other", {"HOME": str(tmp_path / "home")})
    assert not automation._logged_in("/api.example.test", env), "a leading slash is part of the URL"
    credentials(tmp_path / "x", "https://api.example.test/tenantX/")
    assert automation._logged_in("https://api.example.test/tenantX", {"PULUMI_HOME": str(tmp_path / "x")})
    assert not automation._logged_in("https://api.example.test/tenant", {"PULUMI_HOME": str(tmp_path / "x")})


def test_no_credentials_or_unreadable_ones_are_no_login(tmp_path: Path) -> None:
    assert not automation._logged_in("s3://bucket", {"PULUMI_HOME": str(tmp_path)})
    (tmp_path / "credentials.json").write_text("{not json")
    assert not automation._logged_in("s3://bucket", {"PULUMI_HOME": str(tmp_path)})
    (tmp_path / "credentials.json").write_text(json.dumps({"accessTokens": None}))
    assert not automation._logged_in("s3://bucket", {"PULUMI_HOME": str(tmp_path)})


def test_require_cli_looks_for_pulumi_and_explains_a_cli_that_does_not_run(monkeypatch: pytest.MonkeyPatch) -> None:
    from pulumi import automation as auto

    asked: list[str] = []
    with pytest.raises(automation.OperationError):
        automation.require_cli(lambda name: asked.append(name))  # type: ignore[func-returns-value]
    assert asked == ["pulumi"]

    def too_old() -> Any:
        raise auto.InvalidVersionError("3.1.0 < 3.200.0")

    monkeypatch.setattr(auto, "PulumiCommand", too_old)
    with pytest.raises(automation.OperationError) as raised:
        automation.require_cli(lambda name: "/usr/bin/pulumi")
    assert str(raised.value).startswith("the Pulumi CLI is too old for this SDK: 3.1.0 < 3.200.0; install it")

    def broken() -> Any:
        raise OSError("exec format error")

    monkeypatch.setattr(auto, "PulumiCommand", broken)
    with pytest.raises(automation.OperationError) as raised:
        automation.require_cli(lambda name: "/usr/bin/pulumi")
    assert str(raised.value) == "the Pulumi CLI does not run: exec format error"


def test_open_stack_creates_only_when_asked_and_names_what_is_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from pulumi import automation as auto

    calls: list[tuple[str, str, Any]] = []
    monkeypatch.setattr(auto, "create_or_select_stack", lambda s, **k: calls.append(("create", s, k)) or "created")
    monkeypatch.setattr(auto, "select_stack", lambda s, **k: calls.append(("select", s, k)) or "selected")
    backend = automation.Backend("file:///state", {"PULUMI_CONFIG_PASSPHRASE": "x"})
    cli = object()
    assert automation.open_stack("dev", root=tmp_path, backend=backend, command=cli, create=True) == "created"
    assert automation.open_stack("dev", root=tmp_path, backend=backend, command=cli, create=False) == "selected"
    for _, name, kwargs in calls:
        assert name == "dev" and kwargs["work_dir"] == str(tmp_path)
        options = kwargs["opts"]
        assert (options.work_dir, options.env_vars, options.pulumi_command) == (str(tmp_path), backend.env, cli)

    def missing(stack: str, **_: Any) -> Any:
        raise auto.StackNotFoundError(CommandResult(stdout="", stderr="no stack named 'dev'", code=255))

    monkeypatch.setattr(auto, "select_stack", missing)
    with pytest.raises(automation.OperationError) as raised:
        automation.open_stack("dev", root=tmp_path, backend=backend, command=cli, create=False)
    assert raised.value.exit_code == automation.EXIT_NO_STACK
    assert str(raised.value) == "no stack 'dev' on file:///state: run `python -m stacks up dev` first"

    def failing(stack: str, **_: Any) -> Any:
        raise auto.CommandError(CommandResult(stdout="", stderr="error: passphrase must be set", code=255))

    monkeypatch.setattr(auto, "create_or_select_stack", failing)
    with pytest.raises(automation.OperationError) as raised:
        automation.open_stack("dev", root=tmp_path, backend=backend, command=cli, create=True)
    assert raised.value.exit_code == 255
    assert str(raised.value) == "cannot open stack 'dev' on file:///state:\nerror: passphrase must be set"


def test_the_analyzer_copy_of_the_pack_links_every_file_and_names_the_runtime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import yaml

    source = tmp_path / "policies"
    (source / "__pycache__").mkdir(parents=True)
    (source / "PulumiPolicy.yaml").write_text("runtime: python\ndescription: the pack\n")
    (source / "__main__.py").write_text("# the pack\n")
    (source / "rules.py").write_text("# rules\n")
    pack = tmp_path / ".pulumi-policy-pack"
    pack.mkdir()
    (pack / "stale.py").write_text("# from an older copy\n")
    monkeypatch.setenv("CLUSTER_AI_POLICY_RUNTIME", "clusterai")
    assert automation.policy_packs(tmp_path) == [str(pack)]
    assert sorted(p.name for p in pack.iterdir()) == ["PulumiPolicy.yaml", "__main__.py", "rules.py"]
    for name in ("__main__.py", "rules.py"):
        assert (pack / name).is_symlink() and (pack / name).resolve() == source / name
    manifest = yaml.safe_load((pack / "PulumiPolicy.yaml").read_text())
    assert manifest == {
        "description": "the pack",
        "runtime": {"name": "clusterai", "options": {"virtualenv": str(tmp_path / ".venv")}},
    }
    assert list(yaml.safe_load((pack / "PulumiPolicy.yaml").read_text())) == ["runtime", "description"], "order kept"
    # A file or a link where the copy goes is replaced, not followed.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = tmp_path / "dest"
    target.symlink_to(elsewhere)
    assert automation.analyzer_pack(tmp_path, "clusterai", dest=target) == target
    assert not target.is_symlink() and list(elsewhere.iterdir()) == []
    target_file = tmp_path / "as-file"
    target_file.write_text("x")
    assert (automation.analyzer_pack(tmp_path, "py", dest=target_file) / "rules.py").is_symlink()


# -- the pre-update dump, at docker-py's boundary ----------------------------------------------


class Declared:
    """`stacks.status.declared_containers`' record of the backup service, as take_dump reads it."""

    name = "postgres-backup"
    host = "head"
    docker_url = "ssh://ops@192.0.2.10:22"
    ssh_opts = ("-o", "StrictHostKeyChecking=yes")
    labels = {"cluster-ai.stack": "prod"}


def test_the_dump_reaches_the_host_with_its_pinned_key_and_finds_the_stacks_backup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import stacks.status

    backup = FakeContainer(b"backup: wrote /backups/a.dump\nbackup: wrote /backups/b.dump\n")
    docker = FakeDocker([backup])
    opened: list[tuple[str, Any]] = []

    def client(url: str, ssh_opts: Any = ()) -> FakeDocker:
        opened.append((url, ssh_opts))
        return docker

    monkeypatch.setattr(stacks.status, "docker_client", client)
    dump = automation.take_dump(Declared())
    assert opened == [("ssh://ops@192.0.2.10:22", ("-o", "StrictHostKeyChecking=yes"))]
    assert docker.filters == [{"label": ["cluster-ai.stack=prod", "cluster-ai.container=postgres-backup"]}]
    assert dump == automation.Dump("/backups/b.dump", "postgres-backup", "head", "ssh://ops@192.0.2.10:22")
    assert dump.describe() == "/backups/b.dump (container postgres-backup on host head, ssh://ops@192.0.2.10:22)"


def test_a_declared_container_without_options_or_stack_label_is_looked_up_as_such() -> None:
    class Local:
        name, host, docker_url, labels = "postgres-backup", "local", "unix:///var/run/docker.sock", {}

    docker = FakeDocker([FakeContainer(b"backup: wrote /backups/c.dump\n")])
    assert automation.take_dump(Local(), client_for=docker).path == "/backups/c.dump"
    assert docker.urls == ["unix:///var/run/docker.sock"]
    assert docker.filters == [{"label": ["cluster-ai.stack=", "cluster-ai.container=postgres-backup"]}]


@pytest.mark.parametrize(
    ("output", "code"),
    [(b"backup: wrote /backups/x.dump\n", 1), (b"backup: pg_dump ok but nothing named\n", 0)],
    ids=["failed-after-writing", "no-dump-named"],
)
def test_a_dump_that_fails_or_names_no_file_stops_with_the_last_lines(output: bytes, code: int) -> None:
    lines = b"".join(b"line %d\n" % i for i in range(9)) + output + "caf\u00e9 \xff\n".encode("latin-1")
    docker = FakeDocker([FakeContainer(lines, code=code)])
    with pytest.raises(automation.OperationError) as raised:
        automation.take_dump(Declared(), client_for=docker)
    tail = lines.decode(errors="replace").strip().splitlines()[-5:]
    assert str(raised.value) == (
        f"the pre-update dump in postgres-backup on host head failed (exit {code}):\n"
        + "\n".join(tail)
        + "\nnothing was changed; fix the backup (or pass --skip-backup to update without a fresh dump)"
    )


def test_two_backup_containers_are_refused_rather_than_guessed() -> None:
    docker = FakeDocker([FakeContainer(b""), FakeContainer(b"")])
    with pytest.raises(automation.OperationError) as raised:
        automation.take_dump(Declared(), client_for=docker)
    assert str(raised.value).startswith("cannot take the pre-update dump: 2 running containers 'postgres-backup'")


def test_a_dump_output_given_as_text_is_read_as_text() -> None:
    class TextContainer(FakeContainer):
        def exec_run(self, cmd: list[str], environment: dict[str, str]) -> tuple[int, Any]:
            return 0, "backup: wrote /backups/t.dump"

    assert automation.take_dump(Declared(), client_for=FakeDocker([TextContainer(b"")])).path == "/backups/t.dump"


# -- the drift report, field by field ------------------------------------------------------------


def test_the_drift_report_names_each_resource_with_its_type_op_and_properties() -> None:
    events = [
        step("resOutputsEvent", "update", VOLUME_URN, "docker:index/volume:Volume", diffs=["labels"]),
        step("resOutputsEvent", "delete", URN, CONTAINER, old={"urn": URN}),
        summary(same=28, delete=1, update=1),
    ]
    report = automation.drift_report("dev", events)
    assert report.to_json() == {
        "stack": "dev",
        "drifted": True,
        "changes": {"delete": 1, "same": 28, "update": 1},
        "resources": [
            {"urn": URN, "type": CONTAINER, "name": "redis", "op": "delete", "properties": []},
            {
                "urn": VOLUME_URN,
                "type": "docker:index/volume:Volume",
                "name": "redis-data",
                "op": "update",
                "properties": ["labels"],
            },
        ],
    }
    assert automation.render_drift(report) == (
        "stack dev: DRIFT in 2 resource(s)\n"
        f"  delete  {CONTAINER}  redis\n"
        "  update  docker:index/volume:Volume  redis-data (labels)"
    )
    report.resources[1].properties.append("driverOpts")
    assert automation.render_drift(report).endswith("redis-data (labels, driverOpts)")
    assert automation.render_drift(automation.drift_report("dev", [summary(same=3)])) == "stack dev: no drift"


def test_a_delete_seen_after_an_update_of_the_same_resource_wins_and_not_the_reverse() -> None:
    update = step("resourcePreEvent", "update", URN, CONTAINER, diffs=["env"])
    delete = step("resOutputsEvent", "delete", URN, CONTAINER, old={"urn": URN})
    for events in ([update, delete], [delete, update]):
        [resource] = automation.drift_report("dev", events).resources
        assert resource.op == "delete", [e.resource_pre_event for e in events]


def test_drift_counts_come_from_the_last_summary_and_a_count_alone_is_drift() -> None:
    report = automation.drift_report("dev", [summary(same=30), summary(same=29, update=1)])
    assert report.changes == {"same": 29, "update": 1} and report.resources == []
    assert report.drifted, "an update counted by the engine is drift even when no step event named it"
    assert automation._summary_changes([summary(same=2), summary(create=1)]) == {"create": 1}
    assert automation._summary_changes([]) == {}


def test_data_changes_are_sorted_by_urn_and_carry_the_engines_op() -> None:
    a = "urn:pulumi:dev::cluster-ai::x$docker:index/container:Container::a-webui"
    b = "urn:pulumi:dev::cluster-ai::x$docker:index/container:Container::b-postgres"
    events = [
        pre("update", b),
        pre("replace", a),
        pre("replace", b),
        step("resourcePreEvent", "delete", a, "docker:index/volume:Volume"),
        pre("same", a),
    ]
    assert automation.data_changes(events, {a, b}) == [
        automation.DataChange(a, "replace"),
        automation.DataChange(b, "update"),
    ]
    assert [c.name for c in automation.data_changes(events, {a, b})] == ["a-webui", "b-postgres"]
    labelled = [
        pre("delete", b, new={"urn": b, "inputs": {"labels": [{"label": "cluster-ai.service", "value": "postgres"}]}})
    ]
    assert automation.data_changes(labelled, set()) == [automation.DataChange(b, "delete")]


# -- the backend, exactly ------------------------------------------------------------------------


def test_every_backend_turns_the_clis_update_check_off(root: Path) -> None:
    backend = automation.resolve_backend("dev", root=root, environ={"PULUMI_CONFIG_PASSPHRASE": "x"})
    assert backend.env == {"PULUMI_BACKEND_URL": f"file://{root}/.pulumi-state", "PULUMI_SKIP_UPDATE_CHECK": "true"}


def test_a_missing_state_directory_that_is_not_the_default_is_named(root: Path, tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'elsewhere'}"
    with pytest.raises(automation.OperationError) as raised:
        automation.resolve_backend("dev", root=root, environ={"PULUMI_BACKEND_URL": url})
    assert str(raised.value) == f"the state backend {url} does not exist: create {tmp_path / 'elsewhere'}"


@pytest.mark.parametrize("url", ["https://pulumi.example.test", "http://pulumi.internal:8080/"])
def test_a_self_hosted_service_backend_is_used_once_logged_in(url: str, root: Path, tmp_path: Path) -> None:
    home = tmp_path / "pulumi-home"
    with pytest.raises(automation.OperationError, match="not logged in"):
        automation.resolve_backend("dev", root=root, environ={"PULUMI_BACKEND_URL": url, "PULUMI_HOME": str(home)})
    credentials(home, url)
    backend = automation.resolve_backend(
        "dev", root=root, environ={"PULUMI_BACKEND_URL": url, "PULUMI_HOME": str(home)}
    )
    assert backend.env == {"PULUMI_BACKEND_URL": url, "PULUMI_SKIP_UPDATE_CHECK": "true"}


def test_a_passphrase_file_from_the_environment_is_handed_to_the_cli(root: Path, tmp_path: Path) -> None:
    given = tmp_path / "pass"
    given.write_text("x\n")
    env = {"PULUMI_BACKEND_URL": "s3://state", "PULUMI_CONFIG_PASSPHRASE_FILE": str(given)}
    assert automation.resolve_backend("dev", root=root, environ=env).env["PULUMI_CONFIG_PASSPHRASE_FILE"] == str(given)


def test_a_missing_passphrase_names_make_stack_ready_only_for_a_local_backend(root: Path) -> None:
    with pytest.raises(automation.OperationError) as raised:
        automation.resolve_backend("dev", root=root, environ={"PULUMI_BACKEND_URL": "s3://state"})
    assert str(raised.value) == (
        "no passphrase for the secrets of this stack on s3://state: set PULUMI_CONFIG_PASSPHRASE or "
        "PULUMI_CONFIG_PASSPHRASE_FILE"
    )
    (root / ".pulumi-state" / "passphrase").unlink()
    with pytest.raises(automation.OperationError) as raised:
        automation.resolve_backend("dev", root=root, environ={})
    assert str(raised.value).endswith(
        "PULUMI_CONFIG_PASSPHRASE_FILE (or run `make stack-ready` once to generate .pulumi-state/passphrase)"
    )


@pytest.mark.parametrize(
    ("line", "own"),
    [("", False), ("secretsprovider: passphrase\n", False), ("secretsprovider: gcpkms://projects/p/k\n", True)],
)
def test_only_a_non_passphrase_secrets_provider_is_the_stacks_own(line: str, own: bool, root: Path) -> None:
    stack_file = root / "Pulumi.dev.yaml"
    stack_file.write_text(line + stack_file.read_text())
    assert automation._stack_has_own_secrets_provider("dev", root) is own
    assert automation._stack_has_own_secrets_provider("nope", root) is False


def test_progress_lines_end_with_exactly_one_newline() -> None:
    import io

    stream = io.StringIO()
    emit = automation._printer(stream)
    emit("one")
    emit("two\n")
    assert stream.getvalue() == "one\ntwo\n"


def test_a_locked_stack_says_so(root: Path, boundary: Any) -> None:
    from pulumi import automation as auto

    class Locked(FakeStack):
        def preview(self, *, on_event: Any = None, **options: Any) -> None:
            raise auto.ConcurrentUpdateError(CommandResult(stdout="", stderr="error: the stack is locked", code=255))

    boundary(Locked())
    code, _, err = run(["preview", "dev", "--root", str(root)])
    assert (code, err) == (1, "error: stack 'dev' is locked by another update; wait, or `pulumi cancel`\n")


def test_a_step_seen_only_before_it_ran_is_drift_too() -> None:
    events = [step("resourcePreEvent", "update", URN, CONTAINER, diffs=["env"]), summary(same=1, update=1)]
    [resource] = automation.drift_report("dev", events).resources
    assert (resource.name, resource.op, resource.properties) == ("redis", "update", ["env"])


def test_a_first_up_whose_stack_outputs_are_new_is_a_change() -> None:
    new_outputs = step("resOutputsEvent", "same", STACK_URN, "pulumi:pulumi:Stack", new={"outputs": {"a": 1}})
    assert automation.nothing_to_change([new_outputs, summary(same=1)]) is False
    assert automation.nothing_to_change([summary(same=1)]) is True
    assert automation.nothing_to_change([]) is False


def test_up_says_what_the_plan_changes_before_the_dump_and_when_none_is_needed(
    root: Path, boundary: Any, dev_containers: dict[str, str]
) -> None:
    events = [pre("replace", dev_containers["webui"]), pre("update", dev_containers["postgres"])]
    boundary(FakeStack(preview_events=events))
    docker = FakeDocker([FakeContainer(b"backup: wrote " + DUMP.encode() + b"\n")])
    code, out, err = run(["up", "dev", "--root", str(root)], docker=docker)
    assert code == 0, err
    # Sorted by URN: the Open WebUI component sorts before PostgreSQL.
    assert "pre-update backup: the plan changes webui (replace), postgres (update): taking a fresh dump first\n" in out
    boundary(FakeStack(preview_events=[pre("replace", dev_containers["redis"])]))
    code, out, err = run(["up", "dev", "--root", str(root)], docker=FakeDocker([]))
    assert code == 0, err
    assert "pre-update backup: not needed (the plan does not change PostgreSQL or Open WebUI)\n" in out


def test_up_on_a_stack_file_broken_since_the_preview_is_a_config_error(root: Path, boundary: Any) -> None:
    stack_file = root / "Pulumi.dev.yaml"
    stack_file.write_text(stack_file.read_text() + "  cluster-ai:backups:\n    enabled: maybe\n")
    stack = boundary(FakeStack(preview_events=[pre("replace", "urn:pulumi:dev::cluster-ai::x::postgres")]))
    code, _, err = run(["up", "dev", "--root", str(root)], docker=FakeDocker([]))
    assert code == 2, err
    assert "cluster-ai:backups.enabled" in err and "Traceback" not in err
    assert stack.calls == ["preview"]


def test_the_stacks_own_secrets_provider_spares_the_passphrase_on_a_bucket(
    root: Path, boundary: Any, clean_env: pytest.MonkeyPatch
) -> None:
    stack_file = root / "Pulumi.dev.yaml"
    stack_file.write_text("secretsprovider: awskms://alias/cluster-ai\n" + stack_file.read_text())
    clean_env.setenv("PULUMI_BACKEND_URL", "s3://state")
    stack = boundary(FakeStack())
    code, _, err = run(["preview", "dev", "--root", str(root)])
    assert code == 0, err
    assert stack.calls == ["preview"]


@pytest.mark.parametrize(
    ("argv", "failing"),
    [(["destroy", "dev", "--yes=dev"], "destroy"), (["up", "dev"], "preview"), (["preview", "dev"], "preview")],
)
def test_a_failed_engine_call_names_the_operation_and_the_stack(
    argv: list[str], failing: str, root: Path, boundary: Any
) -> None:
    class Failing(FakeStack):
        def _replay(self, name: str, events: list[EngineEvent], on_event: Any, options: dict[str, Any]) -> None:
            raise CommandError(CommandResult(stdout="", stderr=f"error: {name} went wrong\n", code=3))

    boundary(Failing())
    code, _, err = run([*argv, "--root", str(root)])
    assert code == 3
    assert f"error: `{failing}` of stack 'dev' failed:\nerror: {failing} went wrong\n" in err


def test_without_an_override_the_audit_log_sits_beside_the_state_and_names_the_commit(
    root: Path, boundary: Any, clean_env: pytest.MonkeyPatch
) -> None:
    import subprocess

    clean_env.delenv("CLUSTER_AI_AUDIT_LOG")
    git = ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "Pulumi.yaml"], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    boundary(FakeStack())
    code, _, err = run(["destroy", "dev", "--root", str(root), "--yes=dev"])
    assert code == 0, err
    (line,) = audit.read(root / ".pulumi-state" / "audit.jsonl")
    assert (line["operation"], line["commit"]) == ("destroy", head)


def test_an_audit_log_that_cannot_be_written_is_a_warning_on_the_operations_stderr(
    root: Path, boundary: Any, clean_env: pytest.MonkeyPatch
) -> None:
    blocker = root / "not-a-directory"
    blocker.write_text("")
    clean_env.setenv("CLUSTER_AI_AUDIT_LOG", str(blocker / "audit.jsonl"))
    boundary(FakeStack())
    code, _, err = run(["destroy", "dev", "--root", str(root), "--yes=dev"])
    assert code == 0, err
    assert f"warning: could not write the audit log {blocker / 'audit.jsonl'}" in err
