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
        self.preview_events = preview_events or []
        self.run_events = run_events or [summary(same=3)]
        self.fail_with = fail_with

    def _replay(self, name: str, events: list[EngineEvent], on_event: Any) -> None:
        self.calls.append(name)
        for event in events:
            if on_event is not None:
                on_event(event)
        if self.fail_with is not None and name != "preview":
            raise CommandError(CommandResult(stdout="", stderr=f"error: {name} failed\n", code=self.fail_with))

    def preview(self, *, on_event: Any = None, **_: Any) -> None:
        self._replay("preview", self.preview_events, on_event)

    def up(self, *, on_event: Any = None, **_: Any) -> None:
        self._replay("up", self.run_events, on_event)

    def destroy(self, *, on_event: Any = None, **_: Any) -> None:
        self._replay("destroy", self.run_events, on_event)

    def preview_refresh(self, *, on_event: Any = None, **_: Any) -> None:
        self._replay("preview_refresh", self.run_events, on_event)


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
        ([], Terminal(""), "no answer"),
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
    assert code == 4 and "error: up failed" in err
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
    assert code == 255 and out == "" and "drift check of stack 'dev' failed" in err


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
    assert line["detail"]["backup"] == DUMP and line["detail"]["backupHost"] == "local"


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
