"""Model pins from a private registry, and the environment Open WebUI is declared with.

What Open WebUI does with that environment is checked against the real release in
tests/integration/test_webui_real.py; here: what each stack declares.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from infra.config import ConfigError, ModelPin, load_spec
from stacks.mocks import Evaluation
from stacks.stackfile import read_stack_config

CONTAINER = "docker:index/container:Container"


def webui_env(plan: Evaluation) -> dict[str, str]:
    webui = next(r for r in plan.by_type(CONTAINER) if r.name == "webui")
    return dict(e.split("=", 1) for e in webui.plain_inputs()["envs"])


def dev_config_with(**overrides: Any) -> dict[str, str]:
    config = dict(read_stack_config("dev").config)
    config.update({f"cluster-ai:{k}": json.dumps(v) for k, v in overrides.items()})
    return config


# -- model names ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "normalised"),
    [
        ("qwen2.5:0.5b", "qwen2.5:0.5b"),
        ("library/phi3:mini", "library/phi3:mini"),
        ("Models.Example.COM/team/tiny:1", "models.example.com/team/tiny:1"),
        ("models.example.com:5000/team/tiny:1", "models.example.com:5000/team/tiny:1"),
        ("10.0.0.5:443/team/tiny:v1.2", "10.0.0.5:443/team/tiny:v1.2"),
        ("localhost:5000/team/tiny:1", "localhost:5000/team/tiny:1"),
    ],
)
def test_a_model_name_with_a_registry_host_is_normalised(written: str, normalised: str) -> None:
    assert ModelPin(name=written).name == normalised


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("[::1]:5000/team/tiny:1", "an IPv6 address cannot be used"),
        ("10.0.0.5:0/team/tiny:1", "port must be 1-65535"),
        ("10.0.0.5:65536/team/tiny:1", "port must be 1-65535"),
        ("10.0.0.5:05000/team/tiny:1", "port must be 1-65535"),
        ("1.2.3/team/tiny:1", "neither a DNS name nor an IPv4 address"),
        ("bad_host.example/team/tiny:1", "neither a DNS name nor an IPv4 address"),
        ("host/a/b/tiny:1", "explicit tag"),
        ("models.example.com/team/tiny", "explicit tag"),
        ("models.example.com/team/Tiny:1", "explicit tag"),
        ("host:5000/te am/tiny:1", "explicit tag"),
    ],
)
def test_a_malformed_registry_or_name_is_refused_saying_why(name: str, says: str) -> None:
    with pytest.raises(ValueError, match=says.replace("(", r"\(")):
        ModelPin(name=name)


def test_insecure_needs_a_private_registry_on_a_private_address() -> None:
    assert ModelPin(name="10.1.2.3:5000/team/tiny:1", insecure=True).insecure is True
    assert ModelPin(name="registry.lan:5000/team/tiny:1", insecure=True).insecure is True
    assert ModelPin(name="10.1.2.3:5000/team/tiny:1").insecure is False, "off by default"
    with pytest.raises(ValueError, match="applies to a model from a private registry"):
        ModelPin(name="qwen2.5:0.5b", insecure=True)
    with pytest.raises(ValueError, match="a public address, is refused"):
        ModelPin(name="8.8.8.8:5000/team/tiny:1", insecure=True)


def test_prod_refuses_an_insecure_registry_naming_the_key() -> None:
    prod = dict(read_stack_config("prod").config)
    models = [{"name": "10.1.2.3:5000/team/tiny:1", "digest": "a" * 64, "insecure": True}]
    prod["cluster-ai:models"] = json.dumps(models)
    with pytest.raises(ConfigError) as error:
        load_spec(prod)
    assert any(p.startswith("cluster-ai:models[0].insecure: prod refuses") for p in error.value.problems), error.value


def test_dev_accepts_an_insecure_private_model_and_ships_the_flag_to_the_sync(
    stack_with: Callable[..., Evaluation],
) -> None:
    models = [{"name": "10.1.2.3:5000/Team/tiny:1".lower(), "digest": "b" * 64, "insecure": True}]
    plan = stack_with("dev", models=models)
    sync = plan.named("ollama-local-model-sync")
    command = sync.plain_inputs()["command"]
    assert json.loads(command[command.index("--pins") + 1]) == models, sync.urn


# -- Open WebUI's environment ----------------------------------------------------------


def test_dev_webui_allows_only_its_published_origin_and_sends_cookies_over_http(dev: Evaluation) -> None:
    env = webui_env(dev)
    assert env["CORS_ALLOW_ORIGIN"] == "http://127.0.0.1:3000"
    assert "WEBUI_AUTH_COOKIE_SECURE" not in env and "WEBUI_SESSION_COOKIE_SECURE" not in env, "dev has no TLS"


def test_prod_webui_allows_only_the_public_url_and_keeps_cookies_on_tls(stack_with: Callable[..., Evaluation]) -> None:
    env = webui_env(stack_with("prod"))
    assert env["WEBUI_URL"] == "https://ai.example.com"
    assert env["CORS_ALLOW_ORIGIN"] == "https://ai.example.com"
    assert env["WEBUI_AUTH_COOKIE_SECURE"] == "True" and env["WEBUI_SESSION_COOKIE_SECURE"] == "True"


def test_webui_env_creates_the_admin_keeps_signup_off_and_env_authoritative(dev: Evaluation) -> None:
    env = webui_env(dev)
    assert env["WEBUI_ADMIN_EMAIL"] == "admin@cluster-ai.local" and env["WEBUI_ADMIN_NAME"] == "Admin"
    assert env["ENABLE_SIGNUP"] == "False" and env["ENABLE_PERSISTENT_CONFIG"] == "False"
    # Nothing the release does not read (the integration tier checks the rest against the code).
    assert "SCARF_NO_ANALYTICS" not in env and "WEBSOCKET_REDIS_URL" not in env
