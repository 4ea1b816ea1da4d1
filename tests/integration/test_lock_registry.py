"""`stacks lock` against a real registry: Debian's docker-registry, images pushed by the real engine.

The test stack pins images in a registry on 127.0.0.1 (plain HTTP, as Docker
and `lock` both treat loopback registries) and a model in the same server laid
out the way Ollama's registry lays out models (`library/<model>`, a v2
manifest). `lock` must write exactly the digests the engine reports for its
pushes, leave every other line of the file (comments included) as it was, and
with `--update` follow a tag that was pushed again.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.config import Images, ModelPin, parse_image
from stacks.__main__ import main
from stacks.stackfile import REPO
from tests.support import registry as registry_support
from tests.support.docker_images import build_image, docker_reason, run_label
from tests.support.registry import Registry, registry_server

pytestmark = pytest.mark.integration

MODEL_REPO = "library/qwen2.5"
MODEL_TAG = "0.5b"


@pytest.fixture(scope="module")
def engine() -> Iterator[Any]:
    import docker

    reason = docker_reason() or registry_support.available()
    if reason is not None:
        pytest.fail(reason)  # .ci/run installs and starts both: absence is a broken setup
    client = docker.from_env(timeout=120)
    yield client
    client.close()


@pytest.fixture
def registry() -> Iterator[Registry]:
    with registry_server() as server:
        yield server


@pytest.fixture
def run_id(engine: Any) -> Iterator[str]:
    with run_label() as run:
        yield run


def push(engine: Any, registry: Registry, repository: str, tag: str, marker: str, run_id: str) -> str:
    """Build, tag and push an image; the digest the engine reports for the push."""
    reference = f"{registry.host}/{repository}:{tag}"
    build_image(engine, reference, marker, run_id)
    for line in engine.images.push(f"{registry.host}/{repository}", tag=tag, stream=True, decode=True):
        assert "error" not in line, line
    digests = engine.images.get(reference).attrs["RepoDigests"]
    mine = [d for d in digests if d.startswith(f"{registry.host}/{repository}@")]
    assert len(mine) == 1, digests
    return str(mine[0].split("@", 1)[1])


STACK_TEXT = """\
# A stack whose pins `lock` fills in.
config:
  cluster-ai:environment: prod   # prod refuses anything unpinned
  cluster-ai:hosts: {hosts}
  cluster-ai:proxy:
    domain: ai.example.com
  cluster-ai:firewall:
    adminNetworks: [198.51.100.0/24]
  cluster-ai:images:
    # tags only: lock resolves them
    dask: {registry}/{run}/dask:2026.8.0-py3.12   # the scheduler's image
{images}
  cluster-ai:models:
    - name: qwen2.5:0.5b
      # no digest yet
  cluster-ai:resources:
    scheduler: {{memoryMb: 512, cpus: 1}}
"""


def services() -> dict[str, str]:
    """Every image the program pins (images key -> tag), as the defaults name them."""
    return {key: str(parse_image(ref).tag) for key, ref in Images().items()}


def images_block(registry: Registry, repo: str) -> str:
    """The images after `dask`, one line each, in the test registry."""
    return "\n".join(
        f"    {key}: {registry.host}/{repo}/{key.lower()}:{tag}" for key, tag in services().items() if key != "dask"
    )


def prod_hosts() -> str:
    prod = REPO / "Pulumi.prod.yaml"
    hosts = yaml.safe_load(prod.read_text())["config"]["cluster-ai:hosts"]
    return yaml.safe_dump(hosts, default_flow_style=True, width=100000).strip()


def test_lock_pins_the_digests_the_engine_reports_and_update_follows_a_moved_tag(
    engine: Any, registry: Registry, run_id: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = f"t{run_id}"
    tags = services()
    reported = {
        svc: push(engine, registry, f"{repo}/{svc.lower()}", tag, f"{svc} {run_id}", run_id)
        for svc, tag in tags.items()
    }
    manifest = registry.push_ollama_model(MODEL_REPO, MODEL_TAG, b"weights v1 " + run_id.encode())
    model_digest = hashlib.sha256(manifest).hexdigest()

    (tmp_path / "Pulumi.yaml").write_text((REPO / "Pulumi.yaml").read_text())
    original = STACK_TEXT.format(
        hosts=prod_hosts(), registry=registry.host, run=repo, images=images_block(registry, repo)
    )
    stack_file = tmp_path / "Pulumi.locked.yaml"
    stack_file.write_text(original)

    code = main(["lock", "locked", "--root", str(tmp_path), "--ollama-registry", registry.url])

    captured = capsys.readouterr()
    out = captured.out
    assert code == 0, captured.err
    locked = stack_file.read_text()
    config = yaml.safe_load(locked)["config"]
    for svc, tag in tags.items():
        want = f"{registry.host}/{repo}/{svc.lower()}:{tag}@{reported[svc]}"
        assert config["cluster-ai:images"][svc] == want, f"images.{svc}"
    assert config["cluster-ai:models"] == [{"name": "qwen2.5:0.5b", "digest": model_digest}]
    # Only the pins changed: drop the added digest line and the `@sha256:...` suffixes,
    # and the file is the original, byte for byte (comments, flow mappings, order).
    added = [line for line in locked.splitlines() if line.startswith("      digest: ")]
    assert added == [f"      digest: {model_digest}"], added
    unpinned = re.sub(r"@sha256:[0-9a-f]{64}", "", locked).replace(added[0] + "\n", "")
    assert unpinned == original
    assert "    dask: " in locked and "   # the scheduler's image" in locked
    assert "    # tags only: lock resolves them" in locked and "      # no digest yet" in locked
    assert "scheduler: {memoryMb: 512, cpus: 1}" in locked
    # Every image the stack runs is pinned by digest as the config schema reads it, and every model too.
    images = Images.model_validate(config["cluster-ai:images"])
    assert all(parse_image(ref).pinned_by_digest for _, ref in images.items()), images
    assert all(ModelPin.model_validate(m).digest for m in config["cluster-ai:models"])

    # Without --update, pins that have a digest stay, even when the tag moves.
    moved = push(engine, registry, f"{repo}/dask", tags["dask"], f"dask rebuilt {run_id}", run_id)
    assert moved != reported["dask"]
    new_manifest = registry.push_ollama_model(MODEL_REPO, MODEL_TAG, b"weights v2 " + run_id.encode())
    assert main(["lock", "locked", "--root", str(tmp_path), "--ollama-registry", registry.url]) == 0
    assert stack_file.read_text() == locked
    assert "every pin already has a digest" in capsys.readouterr().out

    # --update moves exactly the pins whose tags moved.
    assert main(["lock", "locked", "--root", str(tmp_path), "--update", "--ollama-registry", registry.url]) == 0
    out = capsys.readouterr().out
    updated = yaml.safe_load(stack_file.read_text())["config"]
    assert updated["cluster-ai:images"]["dask"].endswith("@" + moved)
    for svc in tags.keys() - {"dask"}:
        assert updated["cluster-ai:images"][svc] == config["cluster-ai:images"][svc], svc
    assert updated["cluster-ai:models"][0]["digest"] == hashlib.sha256(new_manifest).hexdigest()
    assert "images.dask: moved" in out and "images.redis: unchanged" in out


def test_lock_of_an_unknown_tag_fails_and_writes_nothing(
    registry: Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "Pulumi.yaml").write_text((REPO / "Pulumi.yaml").read_text())
    repo = f"missing{uuid.uuid4().hex[:8]}"
    text = STACK_TEXT.format(hosts=prod_hosts(), registry=registry.host, run=repo, images=images_block(registry, repo))
    (tmp_path / "Pulumi.broken.yaml").write_text(text)

    code = main(["lock", "broken", "--root", str(tmp_path), "--ollama-registry", registry.url])

    err = capsys.readouterr().err
    assert code == 1
    assert "no such tag (404)" in err and "/manifests/2026.8.0-py3.12" in err
    assert (tmp_path / "Pulumi.broken.yaml").read_text() == text


# A placeholder is no pin; lock says what it wrote and what it could not resolve (issue 12).
PLACEHOLDER = "sha256:" + "0d1c2b3a4f5e6d7c8b9a" * 3 + "0f1e"


def test_lock_replaces_a_placeholder_writes_what_resolved_and_names_the_rest(
    engine: Any, registry: Registry, run_id: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = f"p{run_id}"
    tags = services()
    dask = push(engine, registry, f"{repo}/dask", tags["dask"], f"dask {run_id}", run_id)
    caddy = push(engine, registry, f"{repo}/caddy", tags["caddy"], f"caddy {run_id}", run_id)
    registry.push_ollama_model("library/qwen2.5", "0.5b", b"weights " + run_id.encode())
    text = STACK_TEXT.format(hosts=prod_hosts(), registry=registry.host, run=repo, images=images_block(registry, repo))
    text = text.replace(f"/dask:{tags['dask']}", f"/dask:{tags['dask']}@{PLACEHOLDER}")
    (tmp_path / "Pulumi.yaml").write_text((REPO / "Pulumi.yaml").read_text())
    stack_file = tmp_path / "Pulumi.partial.yaml"
    stack_file.write_text(text)

    code = main(["lock", "partial", "--root", str(tmp_path), "--ollama-registry", registry.url])

    out, err = capsys.readouterr()
    assert code == 1, (out, err)
    images = yaml.safe_load(stack_file.read_text())["config"]["cluster-ai:images"]
    assert images["dask"].endswith("@" + dask), "the placeholder must be replaced without --update"
    assert images["caddy"].endswith("@" + caddy)
    assert "images.dask: moved" in out or "images.dask: pinned" in out, out
    assert re.search(r"wrote 3 pin\(s\) to Pulumi.partial.yaml: .*images.dask.*images.caddy", out), out
    unresolved = [key for key in tags if key not in ("dask", "caddy")]
    assert f"could not resolve {len(unresolved)} pin(s)" in err, err
    for key in unresolved:
        assert f"images.{key}: " in err and "no such tag (404)" in err, key
    assert "every pin already has a digest" not in out
