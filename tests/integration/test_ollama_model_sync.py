"""The Ollama model sync in the cases a real Ollama cannot be made to produce.

Convergence against the real server (pull by name, digest verified against the
pin, a mismatch refused and removed, unpinned models removed, a changed pin
converging, the declared command run for real) is in test_ollama_real.py, with
the Ollama binary ci/ollama.sh builds. What stays here needs a server that
misbehaves on cue, so `tests/support/fake_ollama.py` (the part of Ollama's
documented HTTP API the sync uses) stands in for it:

- a delete that fails after a mismatched pull (a real server deletes);
- a pull that ends in an error line, an HTTP 500, a stream without "success", or
  a connection dropped mid-stream (a real server and registry do not fail on cue);
- names in Ollama's default registry (`library/x`, `x:1`): that registry is not
  reachable from here, and the dev stack pins one of those;
- a server that accepts connections and never answers (a wedged Ollama).

Every request goes to 127.0.0.1, and every wait is bounded.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from components import ollama_sync
from components.ollama import (
    ALIAS,
    PORT,
    SYNC_SCRIPT,
    ModelPinArgs,
    parse_sync_summary,
    sync_arguments,
)
from stacks.mocks import Evaluation
from tests.support.fake_ollama import FakeOllama, PullFailure, RecordedRequest

pytestmark = pytest.mark.integration

MODEL = "qwen2.5:0.5b"
OTHER = "llama3.2:1b"
STRAY = "mistral:7b"
# The dev stack's pin for qwen2.5:0.5b.
PINNED = "a8b0c51577010a279d933d14c2a8ab4b268079d44c5c8830c0a93900f1827c67"
MOVED = hashlib.sha256(b"qwen2.5:0.5b after the tag moved").hexdigest()
OTHER_DIGEST = hashlib.sha256(b"llama3.2:1b").hexdigest()
STRAY_DIGEST = hashlib.sha256(b"mistral:7b").hexdigest()

# Keep failing cases fast and bounded: a few quick readiness probes, short reads.
FAST = ["--ready-attempts", "3", "--ready-delay", "0.05", "--ready-timeout", "1", "--timeout", "10"]
SUBPROCESS_TIMEOUT_S = 60
SYNC_RESOURCE = "ollama-local-model-sync"


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """urllib honours *_proxy variables: make sure nothing leaves 127.0.0.1."""
    for name in list(os.environ):
        if name.lower() in {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}:
            monkeypatch.delenv(name)


@pytest.fixture
def ollama() -> Iterator[FakeOllama]:
    with FakeOllama() as fake:
        yield fake


def pins(*pairs: tuple[str, str | None]) -> str:
    return json.dumps([{"name": name, "digest": digest} for name, digest in pairs])


def run_sync(
    capsys: pytest.CaptureFixture[str], url: str, pins_json: str, *extra: str
) -> tuple[int, str, str, dict[str, Any] | None]:
    """Run the script's main() in process: (exit code, stdout, stderr, JSON summary or None)."""
    code = ollama_sync.main(["--url", url, "--pins", pins_json, *FAST, *extra])
    out, err = capsys.readouterr()
    return code, out, err, last_json_line(out)


def last_json_line(stdout: str) -> dict[str, Any] | None:
    lines = [line for line in stdout.splitlines() if line.strip()]
    return json.loads(lines[-1]) if lines else None


def sequence(requests: list[RecordedRequest]) -> list[tuple[str, str, Any]]:
    return [(r.method, r.path, r.body) for r in requests]


VERSION = ("GET", "/api/version", None)
TAGS = ("GET", "/api/tags", None)


def pull(model: str) -> tuple[str, str, Any]:
    return ("POST", "/api/pull", {"model": model, "stream": True})


def delete(model: str) -> tuple[str, str, Any]:
    return ("DELETE", "/api/delete", {"model": model})


# -- convergence, through main() ---------------------------------------------


def test_present_model_with_pinned_digest_is_not_pulled_again(capsys: pytest.CaptureFixture[str]) -> None:
    # The tag has moved upstream since: a model that matches its pin stays as it is.
    with FakeOllama(installed={MODEL: PINNED}, registry={MODEL: MOVED}) as fake:
        code, _, err, summary = run_sync(capsys, fake.url, pins((MODEL, PINNED)))

        assert code == 0, err
        assert summary == {"models": {MODEL: PINNED}, "pulled": [], "removed": []}
        assert fake.calls("POST", "/api/pull") == []
        assert sequence(fake.requests) == [VERSION, TAGS]
        assert fake.installed == {MODEL: PINNED}


def test_digest_mismatch_whose_removal_fails_still_names_the_digests(capsys: pytest.CaptureFixture[str]) -> None:
    with FakeOllama(registry={MODEL: MOVED}) as fake:
        fake.fail_delete(MODEL)
        code, _, err, summary = run_sync(capsys, fake.url, pins((MODEL, PINNED)))

        assert code == 1
        assert f"expected {PINNED}, got {MOVED}" in err
        assert "removing it failed, so it is still installed" in err
        assert "HTTP 500" in err
        # The summary tells the truth: the unreviewed model is still there.
        assert summary is not None and summary["models"] == {MODEL: MOVED}
        assert fake.installed == {MODEL: MOVED}


def test_unpinned_model_is_pulled_and_its_digest_recorded(capsys: pytest.CaptureFixture[str]) -> None:
    with FakeOllama(registry={MODEL: MOVED}) as fake:
        code, out, err, summary = run_sync(capsys, fake.url, pins((MODEL, None)))

        assert code == 0, err
        assert summary == {"models": {MODEL: MOVED}, "pulled": [MODEL], "removed": []}
        assert fake.pulled() == [MODEL]
        assert fake.deleted() == []
        assert parse_sync_summary(out) == {MODEL: MOVED}


def test_unpinned_model_already_present_is_kept_without_a_pull(capsys: pytest.CaptureFixture[str]) -> None:
    with FakeOllama(installed={MODEL: PINNED}, registry={MODEL: MOVED}) as fake:
        code, _, err, summary = run_sync(capsys, fake.url, pins((MODEL, None)))

        assert code == 0, err
        assert summary == {"models": {MODEL: PINNED}, "pulled": [], "removed": []}
        assert fake.pulled() == []


def test_no_prune_keeps_models_not_pinned(capsys: pytest.CaptureFixture[str]) -> None:
    installed = {MODEL: PINNED, OTHER: OTHER_DIGEST}
    with FakeOllama(installed=installed, registry={MODEL: PINNED}) as fake:
        code, _, err, summary = run_sync(capsys, fake.url, pins((MODEL, PINNED)), "--no-prune")

        assert code == 0, err
        assert summary == {"models": {MODEL: PINNED}, "pulled": [], "removed": []}
        assert fake.deleted() == []
        assert fake.installed == installed


def test_pin_written_with_library_namespace_matches_the_listed_model(capsys: pytest.CaptureFixture[str]) -> None:
    # Ollama lists `library/qwen2.5:0.5b` as `qwen2.5:0.5b`: the pin must not be
    # pulled again on every run, nor its model pruned as "not pinned".
    with FakeOllama(installed={MODEL: PINNED}, registry={MODEL: PINNED}) as fake:
        code, _, err, summary = run_sync(capsys, fake.url, pins((f"library/{MODEL}", PINNED)))

        assert code == 0, err
        assert summary == {"models": {f"library/{MODEL}": PINNED}, "pulled": [], "removed": []}
        assert sequence(fake.requests) == [VERSION, TAGS]
        assert fake.installed == {MODEL: PINNED}


@pytest.mark.parametrize(
    ("failure", "cause"),
    [
        pytest.param(PullFailure.ERROR_LINE, "pull failed: max retries exceeded", id="error-line"),
        pytest.param(PullFailure.HTTP_500, "pull failed: HTTP 500 pull model manifest", id="http-500"),
        pytest.param(PullFailure.NO_SUCCESS, "pull ended without success", id="stream-without-success"),
        pytest.param(PullFailure.DROPPED, "pull stream broke off", id="connection-dropped-mid-stream"),
    ],
)
def test_failed_pull_exits_1_naming_model_and_cause_and_other_pins_still_converge(
    failure: PullFailure, cause: str, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = {MODEL: PINNED, OTHER: OTHER_DIGEST}
    with FakeOllama(registry=registry, installed={STRAY: STRAY_DIGEST}) as fake:
        fake.fail_pull(MODEL, failure)
        code, _, err, summary = run_sync(capsys, fake.url, pins((MODEL, PINNED), (OTHER, OTHER_DIGEST)))

        assert code == 1
        problems = err.strip().splitlines()
        assert len(problems) == 1, err
        assert problems[0].startswith(f"model {MODEL}: "), err
        assert cause in problems[0]
        # The failure stays with its model: the next pin is pulled, the stray pruned.
        assert fake.pulled() == [MODEL, OTHER]
        assert fake.deleted() == [STRAY]
        assert fake.installed == {OTHER: OTHER_DIGEST}
        assert summary == {"models": {MODEL: None, OTHER: OTHER_DIGEST}, "pulled": [OTHER], "removed": [STRAY]}


def test_ollama_refusing_connections_fails_after_bounded_attempts(capsys: pytest.CaptureFixture[str]) -> None:
    # A port bound but not listening: connections are refused, and nobody else can take it.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"
        started = time.monotonic()
        code = ollama_sync.main(
            ["--url", url, "--pins", pins((MODEL, PINNED)), "--ready-attempts", "3", "--ready-delay", "0.05"]
        )
        elapsed = time.monotonic() - started
    out, err = capsys.readouterr()

    assert code == 1
    assert f"model sync failed: Ollama at {url} did not answer after 3 attempts" in err
    assert "Connection refused" in err
    assert out == ""
    assert elapsed < 5, f"took {elapsed:.1f}s"


def test_ollama_that_never_answers_fails_within_the_probe_timeout(
    ollama: FakeOllama, capsys: pytest.CaptureFixture[str]
) -> None:
    # A wedged server accepts the connection and says nothing. The readiness
    # probes give up after --ready-timeout, not the long pull --timeout (900 s).
    ollama.stall()
    started = time.monotonic()
    code = ollama_sync.main(
        [
            *("--url", ollama.url, "--pins", pins((MODEL, PINNED))),
            *("--ready-attempts", "2", "--ready-delay", "0.05", "--ready-timeout", "0.3"),
        ]
    )
    elapsed = time.monotonic() - started
    out, err = capsys.readouterr()

    assert code == 1
    assert f"Ollama at {ollama.url} did not answer after 2 attempts" in err
    assert "timed out" in err
    assert out == ""
    assert elapsed < 10, f"took {elapsed:.1f}s"
    assert sequence(ollama.requests) == [VERSION, VERSION]


def test_bad_pins_json_fails_cleanly(ollama: FakeOllama, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err, _ = run_sync(capsys, ollama.url, "[{not json")

    assert code == 1
    assert err.startswith("model sync failed: ")
    assert out == ""
    assert ollama.requests == []


# -- the command the dev stack declares, run as declared ------------------------


def declared_sync(dev: Evaluation) -> tuple[str, list[str]]:
    """(urn, command) of the dev stack's model sync task container."""
    resource = dev.named(SYNC_RESOURCE)
    assert resource.type == "docker:index/container:Container", resource.urn
    return resource.urn, list(resource.plain_inputs()["command"])


def run_declared(urn: str, command: list[str], url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The declared `python -c SCRIPT ARGS`, with only --url pointed at `url`.

    The declared URL is http://ollama:11434: the container alias resolves only on
    the stack's Docker network, where the task runs. Here the script runs on this
    machine, so only the URL changes.
    """
    assert command[:2] == ["python", "-c"] and command[2] == SYNC_SCRIPT.read_text(), f"{urn}: {command[:2]}"
    args = command[3:]
    assert args.count("--url") == 1 and args[args.index("--url") + 1] == f"http://{ALIAS}:{PORT}", f"{urn}: {args}"
    args[args.index("--url") + 1] = url
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    # From an empty directory: the script must need nothing but the standard library.
    return subprocess.run(
        [sys.executable, "-c", command[2], *args, *FAST],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        cwd=cwd,
        env=env,
        check=False,
    )


def test_declared_dev_sync_fails_when_the_tag_moved_upstream(dev: Evaluation, tmp_path: Path) -> None:
    urn, command = declared_sync(dev)
    assert json.loads(command[command.index("--pins") + 1]) == [{"digest": PINNED, "name": MODEL}], urn
    with FakeOllama(registry={MODEL: MOVED}) as fake:
        done = run_declared(urn, command, fake.url, tmp_path)

        assert done.returncode == 1, f"{urn}: {done.stdout}"
        assert f"model {MODEL}: digest mismatch: expected {PINNED}, got {MOVED}" in done.stderr
        assert "Traceback" not in done.stderr
        assert last_json_line(done.stdout) == {"models": {MODEL: None}, "pulled": [MODEL], "removed": []}
        assert fake.deleted() == [MODEL]
        assert fake.installed == {}


def test_declared_dev_sync_survives_a_dropped_pull_stream_without_a_traceback(dev: Evaluation, tmp_path: Path) -> None:
    urn, command = declared_sync(dev)
    with FakeOllama(registry={MODEL: PINNED}) as fake:
        fake.fail_pull(MODEL, PullFailure.DROPPED)
        done = run_declared(urn, command, fake.url, tmp_path)

        assert done.returncode == 1, f"{urn}: {done.stdout}"
        assert "Traceback" not in done.stderr, done.stderr
        assert f"model {MODEL}: pull stream broke off" in done.stderr
        assert last_json_line(done.stdout) == {"models": {MODEL: None}, "pulled": [], "removed": []}


# -- the component's helpers ------------------------------------------------------


def option(argv: list[str], flag: str) -> str:
    assert argv.count(flag) == 1, f"{flag} appears {argv.count(flag)} times in {argv}"
    return argv[argv.index(flag) + 1]


def test_sync_arguments_run_the_script_against_the_alias_with_the_pins_as_one_json_argument() -> None:
    models: list[ModelPinArgs] = [
        {"name": MODEL, "digest": PINNED},
        {"name": "10.0.0.5:5000/team/it's-$HOME:`x`", "digest": None, "insecure": True},
    ]
    argv = sync_arguments(models)

    assert argv[:3] == ["python", "-c", SYNC_SCRIPT.read_text()]
    assert option(argv, "--url") == f"http://{ALIAS}:{PORT}"
    assert json.loads(option(argv, "--pins")) == models


def test_sync_arguments_leave_insecure_out_unless_it_is_set() -> None:
    argv = sync_arguments([{"name": MODEL, "digest": PINNED}, {"name": OTHER, "digest": None, "insecure": False}])

    assert json.loads(option(argv, "--pins")) == [{"digest": PINNED, "name": MODEL}, {"digest": None, "name": OTHER}]


def test_parse_sync_summary_reads_models_from_the_last_line() -> None:
    stdout = "some progress\n" + json.dumps({"models": {MODEL: PINNED}, "pulled": [MODEL], "removed": []}) + "\n\n"

    assert parse_sync_summary(stdout) == {MODEL: PINNED}


def test_parse_sync_summary_keeps_a_failed_model_as_none() -> None:
    stdout = json.dumps({"models": {MODEL: None, OTHER: OTHER_DIGEST}, "pulled": [], "removed": []})

    assert parse_sync_summary(stdout) == {MODEL: None, OTHER: OTHER_DIGEST}


@pytest.mark.parametrize(
    "stdout",
    [
        pytest.param("", id="empty"),
        pytest.param("  \n\n", id="blank-lines"),
        pytest.param('{"models": {"x:1": "ab"}}\nmodel sync failed: boom\n', id="last-line-not-json"),
        pytest.param('["models"]', id="json-not-an-object"),
        pytest.param('{"pulled": []}', id="no-models-key"),
    ],
)
def test_parse_sync_summary_without_a_summary_is_empty(stdout: str) -> None:
    assert parse_sync_summary(stdout) == {}
