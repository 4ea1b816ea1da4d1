"""`stacks lock` without a network (reference normalisation, the token flow, the
in-place file edit, Ollama's digest) and the backup component under the SDK's mocks.

The token flow follows the distribution spec's challenge as Docker Hub and
ghcr.io send it (`WWW-Authenticate: Bearer realm=...,service=...,scope=...`),
replayed through httpx's MockTransport; the real registry round trip is in
tests/integration/test_lock_registry.py.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

import httpx
import pytest
import yaml

from stacks import lock
from stacks.mocks import Evaluation, Secret

DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("reference", "registry", "repository", "tag"),
    [
        ("postgres:16.6-bookworm", "docker.io", "library/postgres", "16.6-bookworm"),
        ("ollama/ollama:0.13.5", "docker.io", "ollama/ollama", "0.13.5"),
        ("ghcr.io/dask/dask:2026.8.0-py3.12", "ghcr.io", "dask/dask", "2026.8.0-py3.12"),
        ("nvcr.io/nvidia/k8s/dcgm-exporter:4.4.1", "nvcr.io", "nvidia/k8s/dcgm-exporter", "4.4.1"),
        ("localhost:5000/x/y:1", "localhost:5000", "x/y", "1"),
        (f"caddy:2.8.4@{DIGEST}", "docker.io", "library/caddy", "2.8.4"),
    ],
)
def test_image_references_normalise_as_docker_does(reference: str, registry: str, repository: str, tag: str) -> None:
    assert lock.image_location(reference) == lock.Location(registry, repository, tag)


def test_model_names_map_to_the_ollama_registry() -> None:
    assert lock.model_location("qwen2.5:0.5b") == lock.Location("registry.ollama.ai", "library/qwen2.5", "0.5b")
    assert lock.model_location("someone/model:7b") == lock.Location("registry.ollama.ai", "someone/model", "7b")


def test_registry_base_is_https_except_for_loopback_and_overrides() -> None:
    assert lock.registry_base("docker.io", {}) == "https://registry-1.docker.io"
    assert lock.registry_base("ghcr.io", {}) == "https://ghcr.io"
    assert lock.registry_base("127.0.0.1:5000", {}) == "http://127.0.0.1:5000"
    assert lock.registry_base("localhost:5000", {}) == "http://localhost:5000"
    assert lock.registry_base("docker.io", {"docker.io": "http://127.0.0.1:9/"}) == "http://127.0.0.1:9"


def registry_with_token_auth(seen: list[httpx.Request]) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.host == "auth.docker.io":
            assert request.url.params["service"] == "registry.docker.io"
            assert request.url.params["scope"] == "repository:library/postgres:pull"
            return httpx.Response(200, json={"token": "t0k3n", "expires_in": 300})
        if request.headers.get("Authorization") != "Bearer t0k3n":
            challenge = (
                'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
                'scope="repository:library/postgres:pull"'
            )
            return httpx.Response(401, headers={"WWW-Authenticate": challenge})
        assert request.url.path == "/v2/library/postgres/manifests/16.6-bookworm"
        assert lock.OCI_INDEX in request.headers["Accept"] and lock.DOCKER_LIST in request.headers["Accept"]
        return httpx.Response(200, headers={"Docker-Content-Digest": DIGEST})

    return handler


def test_the_anonymous_token_flow_is_followed_and_the_token_reused() -> None:
    seen: list[httpx.Request] = []
    client = httpx.Client(transport=httpx.MockTransport(registry_with_token_auth(seen)))
    registry = lock.Registry(client)
    location = lock.image_location("postgres:16.6-bookworm")
    assert registry.image_digest("https://registry-1.docker.io", location) == DIGEST
    assert registry.image_digest("https://registry-1.docker.io", location) == DIGEST
    assert [r.url.host for r in seen].count("auth.docker.io") == 1
    # Each request is challenged once; the token is fetched once and then reused.
    statuses = [r.headers.get("Authorization") for r in seen if r.url.host != "auth.docker.io"]
    assert statuses == [None, "Bearer t0k3n", None, "Bearer t0k3n"]


def test_a_registry_without_the_digest_header_is_hashed_from_the_manifest() -> None:
    body = b'{"schemaVersion":2}'

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body if request.method == "GET" else b"")

    registry = lock.Registry(httpx.Client(transport=httpx.MockTransport(handler)))
    digest = registry.image_digest("https://r.example", lock.Location("r.example", "a/b", "1"))
    assert digest == "sha256:" + hashlib.sha256(body).hexdigest()


def test_basic_auth_registries_are_refused_with_a_clear_message() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="private"'})

    registry = lock.Registry(httpx.Client(transport=httpx.MockTransport(handler)))
    with pytest.raises(lock.LockError, match="wants Basic authentication"):
        registry.image_digest("https://r.example", lock.Location("r.example", "a/b", "1"))


def test_ollamas_digest_is_the_sha256_of_the_go_encoded_manifest() -> None:
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": DIGEST, "size": 1},
        "layers": [{"mediaType": "application/vnd.ollama.image.template", "digest": DIGEST, "size": 2}],
    }
    compact = json.dumps(manifest, separators=(",", ":")).encode()
    pretty = json.dumps(manifest, indent=2).encode()
    # Ollama re-encodes what it pulled, so whitespace in the registry's bytes does not count.
    assert lock.ollama_digest(pretty) == lock.ollama_digest(compact) == hashlib.sha256(compact).hexdigest()
    # Go escapes <, > and & in strings.
    assert lock._go_json({"t": "<a&b>"}) == b'{"t":"\\u003ca\\u0026b\\u003e"}'


STACK = """\
# comment at the top
config:
  cluster-ai:environment: prod
  cluster-ai:images:
    dask: ghcr.io/dask/dask:2026.8.0-py3.12   # keep me
    redis: "redis:7.4.1-bookworm"
  cluster-ai:models:
    - name: qwen2.5:0.5b
    - name: llama3.2:1b
      digest: 0000000000000000000000000000000000000000000000000000000000000000 # old
  cluster-ai:resources:
    redis: {memoryMb: 256, cpus: 0.5}
"""


def test_the_line_editor_sets_pins_and_keeps_everything_else() -> None:
    images = {"dask": f"ghcr.io/dask/dask:2026.8.0-py3.12@{DIGEST}", "caddy": f"caddy:2.8.4@{DIGEST}"}
    new = lock.edit_stack_file(STACK, images, {0: "b" * 64, 1: "c" * 64})
    config = yaml.safe_load(new)["config"]
    assert config["cluster-ai:images"] == {
        "dask": images["dask"],
        "redis": "redis:7.4.1-bookworm",
        "caddy": images["caddy"],
    }
    assert config["cluster-ai:models"] == [
        {"name": "qwen2.5:0.5b", "digest": "b" * 64},
        {"name": "llama3.2:1b", "digest": "c" * 64},
    ]
    assert "# comment at the top" in new and "   # keep me" in new and "c" * 64 + " # old" in new
    assert "    redis: {memoryMb: 256, cpus: 0.5}" in new


def test_an_absent_images_block_is_added_under_config() -> None:
    text = "config:\n  cluster-ai:environment: dev\n  cluster-ai:models:\n    - name: x:1\n"
    new = lock.edit_stack_file(text, {"redis": f"redis:7@{DIGEST}"}, {})
    assert yaml.safe_load(new)["config"]["cluster-ai:images"] == {"redis": f"redis:7@{DIGEST}"}


def test_flow_style_models_are_not_guessed_at() -> None:
    text = "config:\n  cluster-ai:models:\n    - {name: 'x:1'}\n"
    with pytest.raises(lock.EditError, match="flow mapping"):
        lock.edit_stack_file(text, {}, {0: "b" * 64})


# -- the backup component ---------------------------------------------------------------

CONTAINER = "docker:index/container:Container"


def backup(ev: Evaluation):  # type: ignore[no-untyped-def]
    (container,) = [r for r in ev.by_type(CONTAINER) if r.name == "postgres-backup"]
    return container


def test_the_backup_runs_hardened_beside_postgres_with_the_password_as_a_secret_file(dev: Evaluation) -> None:
    container = backup(dev)
    inputs = container.plain_inputs()
    labels = {item["label"]: item["value"] for item in inputs["labels"]}
    assert labels["cluster-ai.service"] == "backup" and labels["cluster-ai.container"] == "postgres-backup"
    assert inputs["readOnly"] is True and inputs["user"] == "999:999", container.urn
    assert inputs["capabilities"] == {"drops": ["ALL"]}, container.urn
    env = dict(e.split("=", 1) for e in inputs["envs"])
    assert env["PGHOST"] == "postgres" and env["PGDATABASE"] == "openwebui" and env["PGUSER"] == "openwebui"
    assert (env["BACKUP_INTERVAL_S"], env["BACKUP_KEEP_DAYS"], env["BACKUP_KEEP_COUNT"]) == ("86400", "14", "14")
    assert not any("PASSWORD=" in e for e in inputs["envs"]), f"{container.urn}: a password in env"
    uploads = dev.uploads_of(container)
    assert uploads and all(isinstance(u["content"], Secret) for u in uploads), dev.files_of(container).urn
    postgres = next(r for r in dev.by_type(CONTAINER) if r.name == "postgres")
    component = next(r for r in dev if r.type == "cluster-ai:index:Postgres")
    assert {postgres.urn, component.urn} & set(container.dependencies), f"{container.urn} must start after PostgreSQL"
    nets = [n["name"] for n in inputs["networksAdvanced"]]
    assert nets == [n["name"] for n in postgres.plain_inputs()["networksAdvanced"]], container.urn
    volume = next(m for m in inputs["mounts"] if m.get("source"))
    assert volume["target"] == "/var/lib/postgresql/data" and volume["source"] == "postgres-backup-data"


def test_retention_and_schedule_come_from_the_stack_config(stack_with: Callable[..., Evaluation]) -> None:
    ev = stack_with("dev", backups={"intervalHours": 6, "keepDays": 3, "keepCount": 5})
    env = dict(e.split("=", 1) for e in backup(ev).plain_inputs()["envs"])
    assert (env["BACKUP_INTERVAL_S"], env["BACKUP_KEEP_DAYS"], env["BACKUP_KEEP_COUNT"]) == ("21600", "3", "5")
    health = backup(ev).plain_inputs()["healthcheck"]["tests"]
    assert health[0] == "CMD-SHELL" and "-lt 43200" in health[1]  # stale after two intervals


def test_backups_can_be_turned_off(stack_with: Callable[..., Evaluation]) -> None:
    ev = stack_with("dev", backups={"enabled": False})
    assert not [r for r in ev.by_type(CONTAINER) if r.name == "postgres-backup"]


def test_bad_backup_settings_are_config_errors(stack_with: Callable[..., Evaluation]) -> None:
    from infra.program import StackConfigError

    with pytest.raises(StackConfigError, match=r"cluster-ai:backups\.keepCount: must be >= 1"):
        stack_with("dev", backups={"keepCount": 0})
