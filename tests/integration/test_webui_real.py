"""Open WebUI itself, started exactly as the dev plan declares it, against real services.

The release is the one ci/webui.sh installs from PyPI (WEBUI_VERSION in
ci/versions.env, the same release the stacks' `images.webui` names). What is the
plan's and what stands in for the image is spelled out in
tests/support/webui_real.py: the plan's entrypoint (the secret-env loader, run
literally by /bin/sh), its environment and its uploaded secret files are used
unchanged except for an explicit translation of container paths to a temporary
directory and of service aliases (postgres:5432, redis:6379, ollama:11434) to
loopback ports; the image's `bash start.sh` is stood in for by the pip package's
`open-webui serve` (the same uvicorn app) on loopback.

The services are real: PostgreSQL 15 (the role, password and database are the
ones the plan's DATABASE_URL names), redis-server with the plan's Redis
password, and the Ollama binary ci/ollama.sh builds, serving a tiny model the
test writes itself. In dev the plan wires Open WebUI directly to Ollama
(OLLAMA_BASE_URLS=http://ollama:11434), and that is the path used here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from stacks.plan import evaluate_stack
from tests.support import ollama_real, postgres, webui_real
from tests.support.ollama_real import OllamaServer, ollama_server, write_tiny_model
from tests.support.processes import free_port
from tests.support.webui_real import (
    CONTAINER_PATHS,
    Addresses,
    Declared,
    WebUI,
    bearer,
    declared_webui,
    install_uploads,
    start_webui,
    translate_paths,
    untranslated_paths,
)

# Starting Open WebUI takes 15 s on an idle machine and minutes on a loaded one; a
# restart test starts it up to three times.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

SECRETS = "/run/secrets"
MODEL = "cluster-ai-tiny:1"
REDIS_START_TIMEOUT_S = 30


@pytest.fixture(scope="module")
def declared() -> Declared:
    return declared_webui(evaluate_stack("dev"))


# -- the translation, checked on its own ---------------------------------------------


def test_every_container_path_the_declaration_names_is_translated(declared: Declared) -> None:
    values = [declared.entrypoint[2], *declared.env.values(), *declared.uploads]
    assert untranslated_paths(values) == [], f"{declared.urn}: add them to CONTAINER_PATHS"
    root = Path("/tmp/t")
    assert translate_paths(declared.entrypoint[2], root).count(str(root / CONTAINER_PATHS[SECRETS])) == 1
    assert SECRETS not in translate_paths(declared.entrypoint[2], root)
    assert translate_paths("/app/backend/data", root) == str(root / "app-backend-data")
    assert translate_paths("/run/secretsX /x/run/secrets", root) == "/run/secretsX /x/run/secrets"


def test_address_translation_changes_only_the_host_and_port_of_known_services() -> None:
    addresses = Addresses({"postgres:5432": 15432, "ollama:11434": 21434})
    url = "postgresql://openwebui:p%40ss@postgres:5432/openwebui"
    assert addresses.translate(url) == "postgresql://openwebui:p%40ss@127.0.0.1:15432/openwebui"
    assert (
        addresses.translate("http://ollama:11434;http://egress:11500") == "http://127.0.0.1:21434;http://egress:11500"
    )
    assert addresses.translate("http://notollama:11434") == "http://notollama:11434"


def test_the_declared_environment_is_what_open_webui_reads(declared: Declared) -> None:
    """Every declared variable is read by the installed release (or by the dependency its comment names)."""
    site = next((webui_real.venv() / "lib").glob("python3*/site-packages"))
    sources = "\n".join(p.read_text(errors="replace") for p in (site / "open_webui").glob("*.py"))
    readers = {
        "HF_HUB_OFFLINE": "huggingface_hub",
        "DO_NOT_TRACK": "huggingface_hub",
        "ANONYMIZED_TELEMETRY": "chromadb",
    }
    secret_names = {Path(p).name.removeprefix("env.") for p in declared.uploads}
    for name in sorted(set(declared.env) | secret_names):
        if name in readers:
            package = site / readers[name]
            text = "\n".join(p.read_text(errors="replace") for p in package.rglob("*.py"))
            assert name in text or name.lower() in text, f"{declared.urn}: {readers[name]} does not read {name}"
        else:
            assert f"'{name}'" in sources, (
                f"{declared.urn}: Open WebUI {webui_real.pinned('WEBUI_VERSION')} never reads {name}"
            )


# -- the running application ---------------------------------------------------------


@dataclass
class Services:
    """The real services the declared Open WebUI talks to, and where its files go."""

    root: Path
    db: postgres.Server
    ollama: OllamaServer
    addresses: Addresses
    port: int

    def database_files(self) -> list[Path]:
        data = self.root / CONTAINER_PATHS["/app/backend/data"]
        return sorted(p for p in data.rglob("*.db") if p.is_file())


def _redis(password: str, port: int, workdir: Path) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [
            "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--requirepass", password,
            "--save", "", "--appendonly", "no", "--dir", str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + REDIS_START_TIMEOUT_S
    while time.monotonic() < deadline:
        ping = subprocess.run(
            ["redis-cli", "-p", str(port), "--no-auth-warning", "-a", password, "ping"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        if ping.stdout.strip() == "PONG":
            return process
        time.sleep(0.2)
    process.kill()
    raise AssertionError("redis-server did not answer PING")


@pytest.fixture(scope="module")
def services(declared: Declared) -> Iterator[Services]:
    reason = webui_real.available() or ollama_real.available() or postgres.available()
    if reason is None and shutil.which("redis-server") is None:
        reason = "redis-server is missing: apt-get install redis-server"
    if reason is not None:
        pytest.fail(reason)  # .ci/run installs and builds all of them: absence is a broken setup
    database_url = urlsplit(declared.uploads[f"{SECRETS}/env.DATABASE_URL"][0])
    redis_url = urlsplit(declared.uploads[f"{SECRETS}/env.REDIS_URL"][0])
    assert database_url.username and database_url.password and redis_url.password, declared.urn
    root = Path(tempfile.mkdtemp(prefix="cluster-ai-webui-"))
    redis_port = free_port()
    redis = _redis(redis_url.password, redis_port, root)
    try:
        with (
            postgres.postgres_server(user=database_url.username, password=database_url.password) as db,
            ollama_server() as ollama,
        ):
            db.psql("postgres", f'CREATE DATABASE "{database_url.path.lstrip("/")}"')
            ollama.create(MODEL, write_tiny_model(root / "tiny.gguf"))
            addresses = Addresses(
                {
                    f"{database_url.hostname}:{database_url.port}": db.port,
                    f"{redis_url.hostname}:{redis_url.port}": redis_port,
                    "ollama:11434": ollama.port,
                }
            )
            install_uploads(declared, root, addresses)
            yield Services(root, db, ollama, addresses, free_port())
    finally:
        redis.terminate()
        redis.wait(timeout=15)
        shutil.rmtree(root, ignore_errors=True)


class Running:
    """The one Open WebUI of this module; tests that restart it leave one running."""

    def __init__(self, declared: Declared, services: Services) -> None:
        self.declared = declared
        self.services = services
        self.webui: WebUI | None = None

    def start(self) -> WebUI:
        self.webui = start_webui(self.declared, self.services.root, self.services.addresses, self.services.port)
        return self.webui

    def restart(self, replace: dict[str, str] | None = None) -> WebUI:
        """Stop, rewrite the uploads (`replace`: container path -> new content), start again."""
        assert self.webui is not None
        self.webui.stop()
        install_uploads(self.declared, self.services.root, self.services.addresses, replace)
        return self.start()

    @property
    def url(self) -> str:
        assert self.webui is not None
        return self.webui.url

    def sign_in(self) -> str:
        email = self.declared.env["WEBUI_ADMIN_EMAIL"]
        password = self.declared.uploads[f"{SECRETS}/env.WEBUI_ADMIN_PASSWORD"][0]
        response = httpx.post(
            f"{self.url}/api/v1/auths/signin", json={"email": email, "password": password}, timeout=60
        )
        assert response.status_code == 200, f"{self.declared.urn}: the exported admin cannot sign in: {response.text}"
        return str(response.json()["token"])


@pytest.fixture(scope="module")
def webui(declared: Declared, services: Services) -> Iterator[Running]:
    running = Running(declared, services)
    running.start()
    try:
        yield running
    finally:
        if running.webui is not None:
            running.webui.stop()


def test_it_answers_health_and_keeps_its_tables_in_postgresql_not_sqlite(webui: Running, services: Services) -> None:
    health = httpx.get(f"{webui.url}/health", timeout=10)
    assert health.status_code == 200 and health.json().get("status") is True, health.text
    tables = set(services.db.psql("openwebui", "SELECT tablename FROM pg_tables WHERE schemaname = 'public'").split())
    assert {"user", "auth", "config", "chat"} <= tables, f"{webui.declared.urn}: tables in PostgreSQL: {sorted(tables)}"
    assert not (services.root / CONTAINER_PATHS["/app/backend/data"] / "webui.db").exists(), "a SQLite user DB"


def test_signup_is_refused(webui: Running) -> None:
    response = httpx.post(
        f"{webui.url}/api/v1/auths/signup",
        json={"name": "Mallory", "email": "mallory@example.com", "password": "a-long-password-1"},
        timeout=30,
    )
    assert response.status_code == 403, f"{webui.declared.urn}: signup answered {response.status_code}"


def test_the_exported_admin_signs_in_with_the_generated_password(webui: Running) -> None:
    token = webui.sign_in()
    me = httpx.get(f"{webui.url}/api/v1/auths/", headers=bearer(token), timeout=30)
    assert me.status_code == 200, me.text
    assert me.json()["role"] == "admin" and me.json()["email"] == webui.declared.env["WEBUI_ADMIN_EMAIL"]


def test_the_model_list_shows_the_models_of_the_wired_ollama_and_a_chat_completes(
    webui: Running, services: Services
) -> None:
    token = webui.sign_in()
    models = httpx.get(f"{webui.url}/api/models", headers=bearer(token), timeout=60)
    assert models.status_code == 200, models.text
    ids = {m["id"] for m in models.json()["data"]}
    assert ids == set(services.ollama.tags()), f"Open WebUI lists {ids}, the wired Ollama {set(services.ollama.tags())}"
    chat = httpx.post(
        f"{webui.url}/api/chat/completions",
        headers=bearer(token),
        json={"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "stream": False},
        timeout=180,
    )
    assert chat.status_code == 200, chat.text
    body: dict[str, Any] = chat.json()
    assert body["choices"][0]["message"]["role"] == "assistant", body
    assert isinstance(body["choices"][0]["message"]["content"], str), body


def test_a_setting_changed_through_the_admin_api_does_not_survive_a_restart(webui: Running) -> None:
    token = webui.sign_in()
    url = f"{webui.url}/api/v1/auths/admin/config"
    config = httpx.get(url, headers=bearer(token), timeout=30).json()
    assert config["ENABLE_SIGNUP"] is False
    changed = httpx.post(url, headers=bearer(token), json={**config, "ENABLE_SIGNUP": True}, timeout=30)
    assert changed.status_code == 200 and changed.json()["ENABLE_SIGNUP"] is True, changed.text

    webui.restart()
    token = webui.sign_in()
    after = httpx.get(url, headers=bearer(token), timeout=30).json()
    assert after["ENABLE_SIGNUP"] is False, f"{webui.declared.urn}: a UI change outlived the restart"


def test_a_token_survives_a_restart_and_dies_with_a_new_secret_key(webui: Running) -> None:
    token = webui.sign_in()
    webui.restart()
    assert httpx.get(f"{webui.url}/api/v1/auths/", headers=bearer(token), timeout=30).status_code == 200

    key_file = f"{SECRETS}/env.WEBUI_SECRET_KEY"
    new_key = "another-generated-key-" + os.urandom(12).hex()
    webui.restart({key_file: new_key})
    try:
        stale = httpx.get(f"{webui.url}/api/v1/auths/", headers=bearer(token), timeout=30)
        assert stale.status_code == 401, f"a token signed with the old key answered {stale.status_code}"
    finally:
        webui.restart()  # back to the declared key
