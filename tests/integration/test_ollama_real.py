"""The model sync and `stacks lock` against the real Ollama and a real registry.

Ollama is the CPU binary ci/ollama.sh builds from Go modules (the version pinned
in ci/versions.env), serving on 127.0.0.1 with its models in a temporary
directory. The models are tiny llama GGUF files the tests write themselves
(tests/support/ollama_real.py): `ollama create`d on a publishing server and
`ollama push`ed to Debian's docker-registry on loopback, a private registry
addressed as `127.0.0.1:PORT/cluster-ai/tiny:TAG` over plain HTTP (`insecure`).
The sync under test then runs against a second, empty server, as the plan ships
it: the script's `main()` and, once, the declared command's arguments and stdin.
Every wait is bounded; nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from components import ollama_sync
from components.ollama import ALIAS, PORT, SYNC_SCRIPT
from infra.config import Images
from stacks.lock import Registry as LockRegistry
from stacks.lock import lock_stack, model_location
from stacks.mocks import Evaluation
from tests.support import ollama_real
from tests.support.ollama_real import ModelRegistry, OllamaServer, model_registry, ollama_server, write_tiny_model

pytestmark = pytest.mark.integration

FAST = ["--ready-attempts", "5", "--ready-delay", "0.2", "--ready-timeout", "2", "--timeout", "60"]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def _binaries() -> None:
    reason = ollama_real.available()
    if reason is not None:
        pytest.fail(reason)  # .ci/run builds it: absence is a broken setup


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """urllib and httpx honour *_proxy variables: make sure nothing leaves 127.0.0.1."""
    for name in list(os.environ):
        if name.lower() in {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}:
            monkeypatch.delenv(name)


class Published:
    """Models pushed to the registry by a publishing Ollama; `publish` (re)pushes a tag."""

    def __init__(self, registry: ModelRegistry, publisher: OllamaServer, workdir: Path) -> None:
        self.registry = registry
        self.publisher = publisher
        self.workdir = workdir

    def name(self, tag: str) -> str:
        return f"{self.registry.host}/cluster-ai/tiny:{tag}"

    def publish(self, tag: str, seed: int) -> str:
        """Create a model from a GGUF written with `seed`, push it as `tag`; returns its registry digest."""
        gguf = write_tiny_model(self.workdir / f"tiny-{tag}-{seed}.gguf", seed=seed)
        self.publisher.create(self.name(tag), gguf)
        self.publisher.push(self.name(tag))
        return self.lock_digest(tag)

    def lock_digest(self, tag: str) -> str:
        """What `stacks lock` computes from the registry's manifest for this tag."""
        with httpx.Client(timeout=30) as client:
            return LockRegistry(client).model_digest(self.registry.url, model_location(self.name(tag)))


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Published]:
    with model_registry() as registry, ollama_server() as publisher:
        models = Published(registry, publisher, tmp_path_factory.mktemp("gguf"))
        models.publish("1", seed=1)
        models.publish("2", seed=2)
        yield models


@pytest.fixture
def ollama() -> Iterator[OllamaServer]:
    """An empty Ollama: the one the sync converges."""
    with ollama_server() as server:
        yield server


def pins(*pairs: tuple[str, str | None], insecure: bool = True) -> str:
    return json.dumps([{"name": n, "digest": d, **({"insecure": True} if insecure else {})} for n, d in pairs])


def run_sync(
    capsys: pytest.CaptureFixture[str], url: str, pins_json: str, *extra: str
) -> tuple[int, str, dict[str, Any] | None]:
    """The script's main() in process: (exit code, stderr, JSON summary or None)."""
    code = ollama_sync.main(["--url", url, "--pins", pins_json, *FAST, *extra])
    out, err = capsys.readouterr()
    lines = [line for line in out.strip().splitlines() if line.strip()]
    return code, err, json.loads(lines[-1]) if lines else None


def test_sync_pulls_a_private_model_by_name_and_verifies_the_digest_ollama_reports(
    published: Published, ollama: OllamaServer, capsys: pytest.CaptureFixture[str]
) -> None:
    name, digest = published.name("1"), published.lock_digest("1")
    code, err, summary = run_sync(capsys, ollama.url, pins((name, digest)))
    assert code == 0, err
    assert summary == {"models": {name: digest}, "pulled": [name], "removed": []}
    assert ollama.tags() == {name: digest}, "the real server lists the pinned digest"


def test_stacks_lock_computes_the_digest_the_real_server_reports(
    published: Published, ollama: OllamaServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    name = published.name("2")
    shutil.copy(REPO / "Pulumi.yaml", tmp_path / "Pulumi.yaml")
    # Every image already carries a digest, so lock resolves the model alone (no registry
    # for images is reachable). These digests are stand-ins: nothing pulls them.
    images = {key: f"{ref}@sha256:{hashlib.sha256(ref.encode()).hexdigest()}" for key, ref in Images().items()}
    lines = ["config:", "  cluster-ai:images:", *(f"    {key}: {ref}" for key, ref in images.items())]
    lines += ["  cluster-ai:models:", f"    - name: {name}", "      insecure: true"]
    (tmp_path / "Pulumi.t.yaml").write_text("\n".join(lines) + "\n")
    result = lock_stack("t", root=tmp_path)
    (change,) = [c for c in result.changes if c.key.startswith("models[0]")]
    code, err, _ = run_sync(capsys, ollama.url, pins((name, None)))
    assert code == 0, err
    assert change.after == ollama.tags()[name], "lock's digest is the one /api/tags reports after a real pull"


def test_a_pull_whose_digest_differs_from_the_pin_is_refused_and_removed(
    published: Published, ollama: OllamaServer, capsys: pytest.CaptureFixture[str]
) -> None:
    name, actual = published.name("1"), published.lock_digest("1")
    expected = published.lock_digest("2")  # a real digest, of another model
    code, err, summary = run_sync(capsys, ollama.url, pins((name, expected)))
    assert code == 1
    assert name in err and f"expected {expected}" in err and f"got {actual}" in err, err
    assert "the pulled model was removed" in err, err
    assert name not in ollama.tags(), "the unreviewed model must not stay installed"
    assert summary is not None and summary["models"] == {name: None}


def test_models_that_are_not_pinned_are_removed(
    published: Published, ollama: OllamaServer, capsys: pytest.CaptureFixture[str]
) -> None:
    one, two = published.name("1"), published.name("2")
    ollama.cli("pull", "--insecure", two)
    code, err, summary = run_sync(capsys, ollama.url, pins((one, published.lock_digest("1"))))
    assert code == 0, err
    assert summary is not None and summary["removed"] == [two]
    assert set(ollama.tags()) == {one}


def test_a_changed_pin_converges_on_the_new_digest(
    published: Published, ollama: OllamaServer, capsys: pytest.CaptureFixture[str]
) -> None:
    name = published.name("moving")
    first = published.publish("moving", seed=10)
    code, err, _ = run_sync(capsys, ollama.url, pins((name, first)))
    assert code == 0, err
    second = published.publish("moving", seed=11)  # the tag moved: a new model under the same name
    assert second != first
    code, err, summary = run_sync(capsys, ollama.url, pins((name, second)))
    assert code == 0, err
    assert summary is not None and summary["pulled"] == [name]
    assert ollama.tags() == {name: second}


def test_without_the_insecure_flag_a_plain_http_registry_is_refused(
    published: Published, ollama: OllamaServer, capsys: pytest.CaptureFixture[str]
) -> None:
    name = published.name("1")
    code, err, _ = run_sync(capsys, ollama.url, pins((name, published.lock_digest("1")), insecure=False))
    assert code == 1
    assert f"model {name}: pull failed" in err, err
    assert ollama.tags() == {}


def test_the_declared_sync_command_pulls_the_private_model_the_stack_pins(
    published: Published,
    ollama: OllamaServer,
    stack_with: Callable[..., Evaluation],
    tmp_path: Path,
) -> None:
    """The dev stack with a private, insecure model: the plan's command line and stdin, run for real."""
    name, digest = published.name("1"), published.lock_digest("1")
    plan = stack_with("dev", models=[{"name": name, "digest": digest, "insecure": True}])
    resource = plan.named("ollama-local-model-sync")
    command = list(resource.plain_inputs()["command"])
    assert command[:3] == ["python", "-c", SYNC_SCRIPT.read_text()], f"{resource.urn}: not the sync script"
    args = command[3:]
    # The declared URL names the container alias on the stack's network; here it is the loopback server.
    at = args.index("--url") + 1
    assert args[at] == f"http://{ALIAS}:{PORT}", resource.urn
    args[at] = ollama.url
    done = subprocess.run(
        [sys.executable, "-c", command[2], *args, *FAST],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")},
        check=False,
    )
    assert done.returncode == 0, f"{resource.urn}: {done.stderr}"
    assert json.loads(done.stdout.strip().splitlines()[-1])["models"] == {name: digest}
    assert ollama.tags() == {name: digest}


def test_a_converged_server_is_left_alone_on_the_next_run(
    published: Published, ollama: OllamaServer, capsys: pytest.CaptureFixture[str]
) -> None:
    name, digest = published.name("1"), published.lock_digest("1")
    assert run_sync(capsys, ollama.url, pins((name, digest)))[0] == 0
    code, err, summary = run_sync(capsys, ollama.url, pins((name, digest)))
    assert code == 0, err
    assert summary == {"models": {name: digest}, "pulled": [], "removed": []}


def test_an_unpinned_model_is_pulled_and_the_digest_it_got_is_reported(
    published: Published, ollama: OllamaServer, capsys: pytest.CaptureFixture[str]
) -> None:
    name = published.name("2")
    code, err, summary = run_sync(capsys, ollama.url, pins((name, None)))
    assert code == 0, err
    assert summary is not None and summary["models"] == {name: published.lock_digest("2")}


def test_a_tag_missing_from_the_registry_fails_naming_the_model(
    published: Published, ollama: OllamaServer, capsys: pytest.CaptureFixture[str]
) -> None:
    name = published.name("never-pushed")
    code, err, summary = run_sync(capsys, ollama.url, pins((name, None)))
    assert code == 1
    assert f"model {name}: pull failed" in err, err
    assert summary == {"models": {name: None}, "pulled": [], "removed": []}
