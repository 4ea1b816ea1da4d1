"""`python -m stacks preview|up|destroy|drift`: what can be checked without the Pulumi CLI.

The missing-CLI, missing-backend and missing-passphrase errors (one line, no
traceback, non-zero exit), argument handling, the policy pack lookup, and the
drift report read from engine events shaped as the CLI's event log writes them
(`EngineEvent.from_json`). The operations themselves run in tests/e2e.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from pulumi.automation.events import EngineEvent

from stacks import automation
from stacks.__main__ import main
from stacks.stackfile import REPO


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A repository copy with the dev stack, a local state dir and its passphrase."""
    shutil.copy(REPO / "Pulumi.yaml", tmp_path / "Pulumi.yaml")
    shutil.copy(REPO / "Pulumi.dev.yaml", tmp_path / "Pulumi.dev.yaml")
    (tmp_path / ".pulumi-state").mkdir(mode=0o700)
    (tmp_path / ".pulumi-state" / "passphrase").write_text("correct horse\n")
    return tmp_path


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
def test_a_missing_pulumi_cli_is_one_clear_line_and_a_non_zero_exit(
    operation: str,
    root: Path,
    clean_env: pytest.MonkeyPatch,
    tmp_path_factory: pytest.TempPathFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    clean_env.setenv("PATH", str(tmp_path_factory.mktemp("empty-path")))
    code = main([operation, "dev", "--root", str(root)])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("error: the Pulumi CLI is not installed (no `pulumi` on PATH)")
    assert "https://www.pulumi.com/docs/iac/download-install/" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_require_cli_says_so_when_pulumi_is_not_on_path() -> None:
    with pytest.raises(automation.OperationError, match="not installed"):
        automation.require_cli(which=lambda name: None)


def test_the_default_backend_is_the_makefiles_local_state_with_its_passphrase_file(root: Path) -> None:
    backend = automation.resolve_backend("dev", root=root, environ={})
    assert backend.url == f"file://{root}/.pulumi-state" and backend.is_local
    assert backend.env["PULUMI_BACKEND_URL"] == backend.url
    assert backend.env["PULUMI_CONFIG_PASSPHRASE_FILE"] == str(root / ".pulumi-state" / "passphrase")


def test_a_local_backend_without_a_passphrase_stops_before_anything_runs(
    root: Path, clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (root / ".pulumi-state" / "passphrase").unlink()
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


def test_the_policy_pack_is_applied_when_it_exists_and_not_when_disabled(tmp_path: Path) -> None:
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
