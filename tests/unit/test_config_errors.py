"""Every bad stack config stops with a clear message naming the key path, and nothing else.

A corpus of bad configs, each the dev stack with one thing broken: `load_spec` must
raise ConfigError with a problem that starts with the key path a user would type
and says what is wrong. A representative subset goes through the real CLI
(`python -m stacks plan`), and one evaluation proves no resource is registered
before the error.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml

from infra.config import ClusterSpec, ConfigError, load_spec
from infra.program import StackConfigError
from stacks.mocks import ClusterMocks, evaluate_program
from stacks.plan import run_program
from stacks.stackfile import REPO

NS = "cluster-ai:"
DEV_DIGEST = "a8b0c51577010a279d933d14c2a8ab4b268079d44c5c8830c0a93900f1827c67"
OTHER_DIGEST = "b" * 64
EXIT_CONFIG = 2

Config = dict[str, Any]
Change = Callable[[Config], None]


# --- building bad configs from the dev stack ---------------------------------------


def encode(config: Config) -> dict[str, str]:
    """The flat map the engine hands the program: structured values as JSON text."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}


def with_key(key: str, value: Any) -> Change:
    """Set `cluster-ai:key` (a str is passed to the program as is, like raw config text)."""

    def change(c: Config) -> None:
        c[NS + key] = value

    return change


def without_key(key: str) -> Change:
    def change(c: Config) -> None:
        del c[NS + key]

    return change


_DROP = object()


def host_with(index: int = 0, **fields: Any) -> Change:
    """Change fields of hosts[index]; a field set to `_DROP` is removed."""

    def change(c: Config) -> None:
        host = c[NS + "hosts"][index]
        for name, value in fields.items():
            if value is _DROP:
                del host[name]
            else:
                host[name] = value

    return change


def plus_host(**fields: Any) -> Change:
    """Append a copy of hosts[0] with some fields changed."""

    def change(c: Config) -> None:
        hosts = c[NS + "hosts"]
        hosts.append({**copy.deepcopy(hosts[0]), **fields})

    return change


def sub_key(key: str, **fields: Any) -> Change:
    """Set fields inside an object-valued key (`images`, `ports`, `dask`, ...)."""

    def change(c: Config) -> None:
        c[NS + key] = {**c.get(NS + key, {}), **fields}

    return change


def model_with(index: int = 0, **fields: Any) -> Change:
    def change(c: Config) -> None:
        c[NS + "models"][index].update(fields)

    return change


def both(*changes: Change) -> Change:
    def change(c: Config) -> None:
        for one in changes:
            one(c)

    return change


def pinned(image: str) -> str:
    return f"{image}@sha256:{'c' * 64}"


PINNED_IMAGES = {
    "dask": pinned("ghcr.io/dask/dask:2026.8.0-py3.12"),
    "ollama": pinned("ollama/ollama:0.13.5"),
    "webui": pinned("ghcr.io/open-webui/open-webui:v0.6.5"),
    "postgres": pinned("postgres:16.6-bookworm"),
    "redis": pinned("redis:7.4.1-bookworm"),
}
HOST_JSON = '{"name": "local", "address": "127.0.0.1", "roles": ["head", "worker"], "cpus": 4, "memoryGb": %s}'


@dataclass(frozen=True)
class Bad:
    """One bad config: what to break, and the problem that must name it."""

    id: str
    category: str
    change: Change
    path: str
    fragment: str
    # The hostile value, when the case feeds one: it must never appear raw.
    hostile: str | None = None

    def apply(self, base: Config) -> Config:
        config = copy.deepcopy(base)
        self.change(config)
        return config


CASES: list[Bad] = [
    # --- wrong types
    Bad("cpus-as-string", "type", host_with(cpus="4"), "cluster-ai:hosts[0].cpus", "must be an integer, got '4'"),
    Bad("memory-as-bool", "type", host_with(memoryGb=True), "cluster-ai:hosts[0].memoryGb", "must be a number"),
    Bad(
        "hosts-as-object",
        "type",
        lambda c: c.update({NS + "hosts": c[NS + "hosts"][0]}),
        "cluster-ai:hosts",
        "must be a list",
    ),
    Bad(
        "images-as-list",
        "type",
        with_key("images", ["ollama/ollama:0.13.5"]),
        "cluster-ai:images",
        "must be an object with keys",
    ),
    Bad("roles-as-number", "type", host_with(roles=5), "cluster-ai:hosts[0].roles", "must be a list, got 5 (a number)"),
    Bad(
        "hosts-json-does-not-parse",
        "type",
        with_key("hosts", '[{"name": "local", "cpus": 4,'),
        "cluster-ai:hosts",
        "is not valid JSON",
    ),
    Bad(
        "models-json-does-not-parse",
        "type",
        with_key("models", "[{name: qwen}]"),
        "cluster-ai:models",
        "is not valid JSON",
    ),
    Bad(
        "nan-is-not-json",
        "type",
        with_key("hosts", "[" + HOST_JSON % "NaN" + "]"),
        "cluster-ai:hosts",
        "NaN is not a JSON number",
    ),
    Bad(
        "environment-unknown",
        "type",
        with_key("environment", "staging"),
        "cluster-ai:environment",
        "must be one of 'dev' or 'prod', got 'staging'",
    ),
    Bad(
        "role-unknown",
        "type",
        host_with(roles=["head", "boss"]),
        "cluster-ai:hosts[0].roles[1]",
        "must be one of 'head' or 'worker'",
    ),
    Bad("digest-as-number", "type", model_with(digest=5), "cluster-ai:models[0].digest", "must be a string"),
    Bad("cpus-fractional", "type", host_with(cpus=4.5), "cluster-ai:hosts[0].cpus", "must be an integer"),
    # --- missing required keys
    Bad("no-environment", "missing", without_key("environment"), "cluster-ai:environment", "is required"),
    Bad("no-hosts", "missing", without_key("hosts"), "cluster-ai:hosts", "is required"),
    Bad("empty-hosts", "missing", with_key("hosts", []), "cluster-ai:hosts", "at least 1 item"),
    Bad("host-without-cpus", "missing", host_with(cpus=_DROP), "cluster-ai:hosts[0].cpus", "is required"),
    Bad("host-without-memory", "missing", host_with(memoryGb=_DROP), "cluster-ai:hosts[0].memoryGb", "is required"),
    Bad("host-without-roles", "missing", host_with(roles=_DROP), "cluster-ai:hosts[0].roles", "is required"),
    Bad("host-with-no-roles", "missing", host_with(roles=[]), "cluster-ai:hosts[0].roles", "at least 1 item"),
    Bad(
        "limit-without-cpus",
        "missing",
        with_key("resources", {"ollama": {"memoryMb": 4096}}),
        "cluster-ai:resources.ollama.cpus",
        "is required",
    ),
    # --- unknown keys
    Bad("top-level-typo", "unknown", with_key("hsots", "[]"), "cluster-ai:hsots", "did you mean 'hosts'?"),
    Bad(
        "top-level-camel-typo",
        "unknown",
        with_key("bindAdress", "127.0.0.1"),
        "cluster-ai:bindAdress",
        "did you mean 'bindAddress'?",
    ),
    Bad("host-unknown-key", "unknown", host_with(gpu=1), "cluster-ai:hosts[0].gpu", "is not a known key"),
    Bad(
        "images-unknown-key",
        "unknown",
        sub_key("images", kibana="kibana:8.15.0"),
        "cluster-ai:images.kibana",
        "is not a known key",
    ),
    Bad("ports-unknown-key", "unknown", sub_key("ports", kibana=5601), "cluster-ai:ports.kibana", "is not a known key"),
    Bad("unknown-key-named-str", "unknown", model_with(str="x"), "cluster-ai:models[0].str", "is not a known key"),
    # --- duplicates
    Bad(
        "duplicate-host-name",
        "duplicate",
        plus_host(address="10.0.0.2", roles=["worker"]),
        "cluster-ai:hosts[1].name",
        "'local' is already used by cluster-ai:hosts[0]",
    ),
    Bad(
        "duplicate-host-address",
        "duplicate",
        plus_host(name="gpu1", roles=["worker"]),
        "cluster-ai:hosts[1].address",
        "'127.0.0.1' is already used by cluster-ai:hosts[0]",
    ),
    Bad(
        "model-listed-twice",
        "duplicate",
        lambda c: c[NS + "models"].append(dict(c[NS + "models"][0])),
        "cluster-ai:models[1]",
        "model 'qwen2.5:0.5b' is listed twice",
    ),
    Bad(
        "model-pinned-twice",
        "duplicate",
        lambda c: c[NS + "models"].append({"name": "qwen2.5:0.5b", "digest": OTHER_DIGEST}),
        "cluster-ai:models[1].digest",
        "pinned twice with different digests (see cluster-ai:models[0])",
    ),
    Bad(
        "two-services-one-port",
        "duplicate",
        sub_key("ports", webui=8786),
        "cluster-ai:ports.webui",
        "port 8786 is used by more than one service",
    ),
    Bad(
        "role-listed-twice",
        "duplicate",
        host_with(roles=["head", "worker", "head"]),
        "cluster-ai:hosts[0].roles",
        "lists a role twice",
    ),
    # --- impossible combinations
    Bad(
        "no-head",
        "combination",
        host_with(roles=["worker"]),
        "cluster-ai:hosts",
        "exactly one host must have the role 'head' (found: none)",
    ),
    Bad(
        "two-heads",
        "combination",
        plus_host(name="head2", address="10.0.0.2", roles=["head"]),
        "cluster-ai:hosts",
        "(found: cluster-ai:hosts[0], cluster-ai:hosts[1])",
    ),
    Bad(
        "no-worker-host",
        "combination",
        host_with(roles=["head"]),
        "cluster-ai:hosts",
        "at least one host must have the role 'worker'",
    ),
    Bad(
        "more-workers-than-gpus",
        "combination",
        host_with(gpus=1, workers=2, memoryGb=64),
        "cluster-ai:hosts[0].workers",
        "2 workers need at least 2 GPUs, but the host declares gpus=1",
    ),
    Bad(
        "workers-without-worker-role",
        "combination",
        both(host_with(roles=["head"], workers=2), plus_host(name="gpu1", address="10.0.0.2", roles=["worker"])),
        "cluster-ai:hosts[0].workers",
        "is set but the host has no 'worker' role",
    ),
    Bad(
        "gpu-model-without-gpus",
        "combination",
        host_with(gpuModel="A100"),
        "cluster-ai:hosts[0].gpuModel",
        "is set but the host declares gpus=0",
    ),
    Bad(
        "memory-too-small",
        "combination",
        host_with(memoryGb=4),
        "cluster-ai:hosts[0].memoryGb",
        "4 GB cannot hold what is placed on host 'local'",
    ),
    Bad(
        "service-cpus-above-host-cpus",
        "combination",
        host_with(cpus=1),
        "cluster-ai:resources.ollama.cpus",
        "2 CPUs exceed the 1 of host 'local' (cluster-ai:hosts[0].cpus)",
    ),
    Bad(
        "threads-per-worker-above-host-cpus",
        "combination",
        sub_key("dask", threadsPerWorker=16),
        "cluster-ai:dask.threadsPerWorker",
        "16 CPUs exceed the 4 of host 'local'",
    ),
    Bad(
        "dask-image-version-mismatch",
        "combination",
        sub_key("dask", version="2026.7.0"),
        "cluster-ai:images.dask",
        "must equal cluster-ai:dask.version (2026.7.0)",
    ),
    Bad(
        "prod-unpinned-model",
        "combination",
        both(
            with_key("environment", "prod"),
            with_key("images", PINNED_IMAGES),
            with_key("models", [{"name": "qwen2.5:0.5b"}]),
        ),
        "cluster-ai:models[0].digest",
        "prod refuses an unpinned model",
    ),
    Bad(
        "prod-image-pinned-by-tag",
        "combination",
        both(with_key("environment", "prod"), with_key("images", {**PINNED_IMAGES, "ollama": "ollama/ollama:0.13.5"})),
        "cluster-ai:images.ollama",
        "prod requires a digest",
    ),
    Bad(
        "image-on-latest",
        "combination",
        sub_key("images", ollama="ollama/ollama:latest"),
        "cluster-ai:images.ollama",
        "must not float on ':latest'",
    ),
    Bad(
        "image-without-tag",
        "combination",
        sub_key("images", redis="redis"),
        "cluster-ai:images.redis",
        "must name a version tag or a digest",
    ),
    # --- out-of-range numbers
    Bad("negative-gpus", "range", host_with(gpus=-1), "cluster-ai:hosts[0].gpus", "must be >= 0"),
    Bad("zero-cpus", "range", host_with(cpus=0), "cluster-ai:hosts[0].cpus", "must be >= 1"),
    Bad("zero-workers", "range", host_with(workers=0), "cluster-ai:hosts[0].workers", "must be >= 1"),
    Bad("privileged-port", "range", sub_key("ports", webui=80), "cluster-ai:ports.webui", "must be >= 1024"),
    Bad("port-beyond-65535", "range", sub_key("ports", ollama=70000), "cluster-ai:ports.ollama", "must be <= 65535"),
    Bad("huge-cpus", "range", host_with(cpus=10**30), "cluster-ai:hosts[0].cpus", "must be <= 1024"),
    Bad(
        "infinite-memory",
        "range",
        with_key("hosts", "[" + HOST_JSON % "1e999" + "]"),
        "cluster-ai:hosts[0].memoryGb",
        "must be <= 65536",
    ),
    Bad(
        "integer-too-long-to-read",
        "range",
        with_key("hosts", "[" + HOST_JSON % ("9" * 5000) + "]"),
        "cluster-ai:hosts",
        "is not valid JSON",
    ),
    # --- bad addresses
    Bad(
        "bind-on-every-interface",
        "address",
        with_key("bindAddress", "0.0.0.0"),
        "cluster-ai:bindAddress",
        "must not be the unspecified address",
    ),
    Bad(
        "bind-on-every-ipv6-interface",
        "address",
        with_key("bindAddress", "::"),
        "cluster-ai:bindAddress",
        "must not be the unspecified address",
    ),
    Bad(
        "bind-not-loopback",
        "address",
        with_key("bindAddress", "192.168.1.10"),
        "cluster-ai:bindAddress",
        "must be a loopback address",
    ),
    Bad(
        "bind-not-an-ip",
        "address",
        with_key("bindAddress", "localhost"),
        "cluster-ai:bindAddress",
        "must be an IP address",
    ),
    Bad(
        "host-address-not-ip-or-dns",
        "address",
        host_with(address="not a host!"),
        "cluster-ai:hosts[0].address",
        "must be an IP address or a DNS name",
    ),
    Bad(
        "host-address-bad-octet",
        "address",
        host_with(address="999.1.1.1"),
        "cluster-ai:hosts[0].address",
        "must be an IP address or a DNS name",
    ),
    Bad(
        "host-address-short-ip",
        "address",
        host_with(address="10.1.2"),
        "cluster-ai:hosts[0].address",
        "must be an IP address or a DNS name",
    ),
    Bad(
        "host-address-unspecified",
        "address",
        host_with(address="0.0.0.0"),
        "cluster-ai:hosts[0].address",
        "not the unspecified address",
    ),
    Bad(
        "host-address-unspecified-ipv6",
        "address",
        host_with(address="::"),
        "cluster-ai:hosts[0].address",
        "not the unspecified address",
    ),
    # --- secrets
    Bad(
        "admin-password-in-plain-text",
        "secret",
        with_key("adminPassword", "hunter2"),
        "cluster-ai:adminPassword",
        "`pulumi config set --secret adminPassword <value>`",
    ),
    # --- hostile strings
    Bad(
        "shell-metacharacters-in-host-name",
        "hostile",
        host_with(name="x; rm -rf /"),
        "cluster-ai:hosts[0].name",
        "'x; rm -rf /' does not match",
    ),
    Bad(
        "command-substitution-in-host-name",
        "hostile",
        host_with(name="$(reboot)"),
        "cluster-ai:hosts[0].name",
        "'$(reboot)' does not match",
    ),
    Bad(
        "backticks-in-model-name",
        "hostile",
        model_with(name="`reboot`:1b"),
        "cluster-ai:models[0].name",
        "'`reboot`:1b' must be [host[:port]/]namespace/name:tag",
    ),
    Bad(
        "newline-in-model-name",
        "hostile",
        model_with(name="qwen2.5\n:0.5b"),
        "cluster-ai:models[0].name",
        r"'qwen2.5\n:0.5b' must be [host[:port]/]namespace/name:tag",
        hostile="qwen2.5\n:0.5b",
    ),
    Bad(
        "path-traversal-in-model-name",
        "hostile",
        model_with(name="../../etc/passwd:latest"),
        "cluster-ai:models[0].name",
        "'../../etc/passwd:latest' must be [host[:port]/]namespace/name:tag",
    ),
    Bad(
        "very-long-host-name",
        "hostile",
        host_with(name="a" * 10_000),
        "cluster-ai:hosts[0].name",
        "'" + "a" * 60 + "...' does not match",
        hostile="a" * 61,
    ),
    Bad(
        "right-to-left-override-in-host-name",
        "hostile",
        host_with(name="local\u202egnp.exe"),
        "cluster-ai:hosts[0].name",
        r"'local\u202egnp.exe'",
        hostile="\u202e",
    ),
    Bad(
        "nul-byte-in-host-name",
        "hostile",
        host_with(name="lo\x00cal"),
        "cluster-ai:hosts[0].name",
        r"'lo\x00cal'",
        hostile="\x00",
    ),
    Bad(
        "newline-after-image-tag",
        "hostile",
        sub_key("images", ollama="ollama/ollama:0.13.5\n"),
        "cluster-ai:images.ollama",
        r"'ollama/ollama:0.13.5\n' is not an image reference",
        hostile="\n",
    ),
    Bad(
        "newline-after-host-address",
        "hostile",
        host_with(address="gpu1.example.com\n"),
        "cluster-ai:hosts[0].address",
        r"'gpu1.example.com\n' must be an IP address",
        hostile="\n",
    ),
    Bad(
        "newline-in-unknown-key",
        "hostile",
        with_key("hosts\n; rm -rf /", "x"),
        r"cluster-ai:'hosts\n; rm -rf /'",
        "is not a known key",
        hostile="\n",
    ),
    Bad(
        "escape-sequence-in-nested-key",
        "hostile",
        host_with(**{"\x1b[2Jgpu": 1}),
        r"cluster-ai:hosts[0].'\x1b[2Jgpu'",
        "is not a known key",
        hostile="\x1b",
    ),
    Bad(
        "unpaired-surrogate-in-json",
        "hostile",
        with_key(
            "hosts",
            '[{"name": "\\ud800", "address": "127.0.0.1", "roles": ["head", "worker"], "cpus": 4, "memoryGb": 8}]',
        ),
        "cluster-ai:hosts[0].name",
        "unpaired surrogate",
    ),
    Bad(
        "json-nested-past-any-schema",
        "hostile",
        with_key("hosts", "[" * 100 + "]" * 100),
        "cluster-ai:hosts" + "[0]" * 17,
        "is nested more than 16 levels deep",
    ),
    Bad(
        "json-nested-past-the-parser",
        "hostile",
        with_key("images", '{"a":' * 50_000 + "1" + "}" * 50_000),
        "cluster-ai:images",
        "is not valid JSON: nested",
    ),
]

CASE_IDS = [c.id for c in CASES]


def problems_of(config: Config, secret_keys: tuple[str, ...] = ()) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as caught:
        load_spec(encode(config), secret_keys)
    return caught.value.problems


def assert_safe(problem: str) -> None:
    """A problem is one bounded line of printable ASCII: safe in a terminal and a CI log."""
    assert problem.isascii() and problem.isprintable(), f"unsafe characters in {problem!r}"
    assert len(problem) < 500, f"unbounded message ({len(problem)} chars): {problem[:200]!r}..."


def test_corpus_covers_every_category() -> None:
    categories = {c.category for c in CASES}
    assert categories == {
        "type",
        "missing",
        "unknown",
        "duplicate",
        "combination",
        "range",
        "address",
        "secret",
        "hostile",
    }
    assert len(CASES) >= 30
    assert len(set(CASE_IDS)) == len(CASE_IDS), "case ids must be unique"


def test_dev_stack_loads(dev_config: Config) -> None:
    """The control case: the untouched dev config is valid, so every failure below is the change's."""
    spec = load_spec(encode(dev_config))
    assert isinstance(spec, ClusterSpec)
    assert spec.environment == "dev"
    assert [h.name for h in spec.hosts] == ["local"]
    assert spec.head.name == "local"
    assert [m.digest for m in spec.models] == [DEV_DIGEST]


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_bad_config_names_the_key_path(case: Bad, dev_config: Config) -> None:
    problems = problems_of(case.apply(dev_config))
    matching = [p for p in problems if p.startswith(case.path + ":") and case.fragment in p]
    assert matching, f"{case.id}: no problem starts with {case.path!r} and contains {case.fragment!r}: {problems}"
    for problem in problems:
        assert problem.startswith("cluster-ai:"), problem
        assert_safe(problem)
        if case.hostile is not None:
            assert case.hostile not in problem, f"{case.id}: the hostile value appears raw in {problem!r}"


def test_a_config_with_many_problems_lists_them_all(dev_config: Config) -> None:
    """One run reports every problem, across keys and across the two validation passes."""
    config = both(
        with_key("environment", "staging"),
        with_key("bindAddress", "0.0.0.0"),
        host_with(cpus="4", gpus=-1, gpu="x"),
        sub_key("ports", webui=80),
        with_key("hsots", "[]"),
        with_key("adminPassword", "hunter2"),
        model_with(name="qwen\n:1b"),
    )
    bad = copy.deepcopy(dev_config)
    config(bad)
    problems = problems_of(bad)
    expected = [
        "cluster-ai:environment: must be one of",
        "cluster-ai:bindAddress: '0.0.0.0' must not be the unspecified address",
        "cluster-ai:hosts[0].cpus: must be an integer",
        "cluster-ai:hosts[0].gpus: must be >= 0",
        "cluster-ai:hosts[0].gpu: is not a known key",
        "cluster-ai:ports.webui: must be >= 1024",
        "cluster-ai:hsots: is not a known key (did you mean 'hosts'?)",
        "cluster-ai:adminPassword: is stored in plain text",
        "cluster-ai:models[0].name: 'qwen\\n:1b' must be",
    ]
    for start in expected:
        assert any(p.startswith(start) for p in problems), f"missing {start!r} in {problems}"
    assert len(problems) == len(expected), problems


def test_cross_field_problems_are_all_listed(dev_config: Config) -> None:
    """Checks that need the whole spec also report together, not first-one-wins."""
    config = copy.deepcopy(dev_config)
    both(
        host_with(gpuModel="A100", memoryGb=4),
        sub_key("ports", dashboard=8786),
        sub_key("dask", version="2026.7.0"),
        lambda c: c[NS + "models"].append(dict(c[NS + "models"][0])),
    )(config)
    problems = problems_of(config)
    for start in (
        "cluster-ai:hosts[0].gpuModel: is set but the host declares gpus=0",
        "cluster-ai:hosts[0].memoryGb: 4 GB cannot hold",
        "cluster-ai:ports.scheduler: port 8786 is used by more than one service",
        "cluster-ai:ports.dashboard: port 8786 is used by more than one service",
        "cluster-ai:images.dask: the image's Dask version (2026.8.0) must equal",
        "cluster-ai:models[1]: model 'qwen2.5:0.5b' is listed twice",
    ):
        assert any(p.startswith(start) for p in problems), f"missing {start!r} in {problems}"


def test_admin_password_set_as_secret_is_accepted(dev_config: Config) -> None:
    """The same value set with --secret loads, and stays a SecretStr that never prints."""
    config = encode({**dev_config, NS + "adminPassword": "correct-horse-battery"})
    spec = load_spec(config, [NS + "adminPassword"])
    assert spec.admin_password is not None
    assert spec.admin_password.get_secret_value() == "correct-horse-battery"
    assert "correct-horse-battery" not in repr(spec)


def test_plain_text_secret_is_not_echoed(dev_config: Config) -> None:
    problems = problems_of({**dev_config, NS + "adminPassword": "hunter2-very-secret"})
    assert problems == (
        "cluster-ai:adminPassword: is stored in plain text; set it with "
        "`pulumi config set --secret adminPassword <value>`",
    )
    assert not any("hunter2" in p for p in problems)


def test_unparseable_key_is_not_also_reported_missing(dev_config: Config) -> None:
    problems = problems_of({**dev_config, NS + "hosts": '[{"name": '})
    assert len(problems) == 1, problems
    assert problems[0].startswith("cluster-ai:hosts: is not valid JSON"), problems


def test_other_namespaces_are_ignored(dev_config: Config) -> None:
    """Provider config (docker:host, ...) is not ours to judge."""
    spec = load_spec(encode({**dev_config, "docker:host": "unix:///x", "cluster-aix:foo": "1"}))
    assert spec.hosts[0].name == "local"


# --- Pulumi.yaml's typed project config ---------------------------------------------

SIMPLE_TYPES = {"string", "integer", "boolean", "array"}
DECLARATION_KEYS = {"type", "items", "description", "secret", "default", "value"}


def _items_problems(key: str, items: Any) -> list[str]:
    if not isinstance(items, dict) or "type" not in items:
        return [f"{key}: items must be an object with a type"]
    if items["type"] not in SIMPLE_TYPES:
        return [f"{key}: items type {items['type']!r} is not one of {sorted(SIMPLE_TYPES)}"]
    if items["type"] == "array":
        return _items_problems(key, items.get("items"))
    return []


def _matches(type_name: str, value: Any) -> bool:
    """Pulumi's ValidateConfigValue, for scalars: strings of numbers and booleans pass."""
    if type_name == "string":
        return isinstance(value, str)
    if type_name == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, str) and value.lstrip("-").isdigit()
        )
    if type_name == "boolean":
        return isinstance(value, bool) or value in ("true", "false")
    return isinstance(value, list)


def project_config_problems(project: dict[str, Any]) -> list[str]:
    """Pulumi's Project.Validate rules for `config:` declarations (sdk/go/common/workspace)."""
    name = project["name"]
    problems = []
    for key, decl in (project.get("config") or {}).items():
        own = ":" not in key or key.startswith(name + ":")
        if not isinstance(decl, dict):
            if not isinstance(decl, str | int | bool):
                problems.append(f"{key}: a short-form value must be a string, integer or boolean")
            continue
        extra = set(decl) - DECLARATION_KEYS
        if extra:
            problems.append(f"{key}: unknown attributes {sorted(extra)}")
        if "default" in decl and "value" in decl:
            problems.append(f"{key}: cannot have both a 'default' and 'value' attribute")
        if not own:
            if "type" in decl or "default" in decl:
                problems.append(f"{key}: not namespaced by the project: no type or default, only a value")
            continue
        if "type" not in decl:
            continue
        if decl["type"] not in SIMPLE_TYPES:
            problems.append(f"{key}: type {decl['type']!r} is not one of {sorted(SIMPLE_TYPES)}")
            continue
        if decl["type"] == "array":
            if "items" not in decl:
                problems.append(f"{key}: declares an array but no 'items'")
            else:
                problems += _items_problems(key, decl["items"])
        if "default" in decl and not _matches(decl["type"], decl["default"]):
            problems.append(f"{key}: default {decl['default']!r} is not of type {decl['type']}")
        if "description" in decl and not isinstance(decl["description"], str):
            problems.append(f"{key}: description must be a string")
        if "secret" in decl and not isinstance(decl["secret"], bool):
            problems.append(f"{key}: secret must be true or false")
    return problems


def test_project_config_declarations_obey_pulumi_rules() -> None:
    project = yaml.safe_load((REPO / "Pulumi.yaml").read_text())
    assert project["config"], "Pulumi.yaml declares typed project config"
    assert project_config_problems(project) == []


@pytest.mark.parametrize(
    ("decl", "expected"),
    [
        ({"type": "object"}, "is not one of"),
        ({"type": "array"}, "declares an array but no 'items'"),
        ({"type": "array", "items": {"type": "map"}}, "items type 'map'"),
        ({"type": "integer", "default": "eight"}, "is not of type integer"),
        ({"type": "string", "default": "a", "value": "b"}, "cannot have both"),
        ({"type": "string", "required": True}, "unknown attributes"),
    ],
    ids=[
        "object-type",
        "array-without-items",
        "bad-items-type",
        "default-of-wrong-type",
        "default-and-value",
        "unknown-attribute",
    ],
)
def test_project_config_rules_catch_bad_declarations(decl: dict[str, Any], expected: str) -> None:
    """The checker above is not vacuous: each rule fires on a declaration that breaks it."""
    problems = project_config_problems({"name": "cluster-ai", "config": {"thing": decl}})
    assert any(expected in p for p in problems), problems


def test_provider_keys_in_project_config_take_only_a_value() -> None:
    problems = project_config_problems({"name": "cluster-ai", "config": {"docker:host": {"type": "string"}}})
    assert problems and "not namespaced by the project" in problems[0]


def test_stack_values_match_the_declared_types() -> None:
    """`pulumi` refuses a stack whose value for a typed project key has the wrong type."""
    project = yaml.safe_load((REPO / "Pulumi.yaml").read_text())
    declared = {
        (k if ":" in k else f"{project['name']}:{k}"): d["type"]
        for k, d in project["config"].items()
        if isinstance(d, dict) and "type" in d
    }
    stacks = sorted(REPO.glob("Pulumi.*.yaml"))
    assert stacks, "at least one stack file ships"
    for path in stacks:
        values = (yaml.safe_load(path.read_text()) or {}).get("config") or {}
        for key, type_name in declared.items():
            if key in values and not (isinstance(values[key], dict) and set(values[key]) == {"secure"}):
                assert _matches(type_name, values[key]), f"{path.name}: {key} is not of type {type_name}"
        missing = [
            k
            for k, d in project["config"].items()
            if isinstance(d, dict)
            and "default" not in d
            and (k if ":" in k else f"{project['name']}:{k}") not in values
        ]
        assert missing == [], f"{path.name} lacks required project config {missing}"


# --- through the real CLI --------------------------------------------------------------

CLI_CASES = [
    "cpus-as-string",
    "hosts-json-does-not-parse",
    "no-environment",
    "host-without-roles",
    "top-level-typo",
    "duplicate-host-name",
    "no-head",
    "prod-image-pinned-by-tag",
    "negative-gpus",
    "bind-on-every-interface",
    "admin-password-in-plain-text",
    "newline-in-model-name",
    "nul-byte-in-host-name",
]
BY_ID = {c.id: c for c in CASES}


def test_cli_subset_covers_every_category() -> None:
    assert {BY_ID[i].category for i in CLI_CASES} == {c.category for c in CASES}


def write_project(root: Path, config: Config, stack: str = "bad") -> None:
    shutil.copy(REPO / "Pulumi.yaml", root / "Pulumi.yaml")
    # Stack files hold structured values as YAML; the stackfile reader encodes them
    # to JSON text as the engine does, and passes strings through unchanged.
    (root / f"Pulumi.{stack}.yaml").write_text(yaml.safe_dump({"config": config}, allow_unicode=False))


def run_plan(root: Path, stack: str = "bad") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stacks", "plan", stack, "--root", str(root)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("case_id", CLI_CASES)
def test_cli_plan_exits_2_naming_the_key_path(case_id: str, dev_config: Config, tmp_path: Path) -> None:
    case = BY_ID[case_id]
    write_project(tmp_path, case.apply(dev_config))
    result = run_plan(tmp_path)
    assert result.returncode == EXIT_CONFIG, f"{case_id}: exit {result.returncode}\n{result.stderr}"
    assert result.stdout == "", f"{case_id}: stdout must stay empty: {result.stdout!r}"
    assert "Traceback" not in result.stderr, f"{case_id}: {result.stderr}"
    assert f"{case.path}: " in result.stderr, f"{case_id}: {case.path} not in {result.stderr!r}"
    assert case.fragment in result.stderr, f"{case_id}: {case.fragment!r} not in {result.stderr!r}"
    for line in result.stderr.splitlines():
        assert line.isascii() and line.isprintable(), f"{case_id}: unsafe stderr line {line!r}"


def test_cli_plan_of_the_unchanged_config_succeeds(dev_config: Config, tmp_path: Path) -> None:
    """The control for the CLI cases: the same files without the change plan fine."""
    write_project(tmp_path, dev_config)
    result = run_plan(tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("stack bad (project cluster-ai):"), result.stdout[:200]


def test_cli_plan_of_a_missing_stack_exits_6(tmp_path: Path) -> None:
    shutil.copy(REPO / "Pulumi.yaml", tmp_path / "Pulumi.yaml")
    result = run_plan(tmp_path, "nosuch")
    assert result.returncode == 6, result.stderr
    assert "Traceback" not in result.stderr


# --- nothing is registered before the error ---------------------------------------------


class CountingMocks(ClusterMocks):
    """ClusterMocks that remembers every registration the engine would have received."""

    def __init__(self) -> None:
        self.registered: list[tuple[str, str]] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
        self.registered.append((args.typ, args.name))
        return super().new_resource(args)


def evaluate(config: Config, mocks: CountingMocks) -> None:
    evaluate_program(run_program, project="cluster-ai", stack="bad", config=encode(config), mocks=mocks)


def test_counting_mocks_see_every_registration(dev_config: Config) -> None:
    """The control: on a good config the same recorder sees components, providers and resources."""
    mocks = CountingMocks()
    evaluate(dev_config, mocks)
    types = {t for t, _ in mocks.registered}
    assert "docker:index/container:Container" in types
    assert "pulumi:providers:docker" in types
    assert any(t.startswith("cluster-ai:index:") for t in types), types


@pytest.mark.parametrize("case_id", ["memory-too-small", "hosts-json-does-not-parse", "admin-password-in-plain-text"])
def test_bad_config_registers_no_resource_at_all(case_id: str, dev_config: Config) -> None:
    mocks = CountingMocks()
    with pytest.raises(StackConfigError) as caught:
        evaluate(BY_ID[case_id].apply(dev_config), mocks)
    assert BY_ID[case_id].path in str(caught.value)
    assert mocks.registered == [], f"{case_id}: registered before the config error: {mocks.registered}"


# --- issue 14's rough edges and issue 12's semantic checks --------------------------------

ED25519 = "AAAAC3NzaC1lZDI1NTE5AAAAIOd6YHSn/3BbJbUHjczu3IyYXFOYcba26JmJKDnblpKp"


def _prod_like(dev_config: Config, host_key: str) -> Config:
    """The dev stack with its one host reached over SSH (dev allows a remote host)."""
    config = copy.deepcopy(dev_config)
    host = config[NS + "hosts"][0]
    host.pop("dockerHost", None)
    host["address"] = "192.0.2.10"
    host["ssh"] = {"user": "cluster-ai", "privateKeyPath": "~/.ssh/k", "hostKey": host_key}
    return config


@pytest.mark.parametrize(
    "pasted",
    [
        f"192.0.2.10 ssh-ed25519 {ED25519}",  # ssh-keyscan's line
        f"[192.0.2.10]:2222 ssh-ed25519 {ED25519}",  # known_hosts off port 22
        f"ssh-ed25519 {ED25519} root@gpu1",  # a .pub line with its comment
        f"  ssh-ed25519 {ED25519}\n",  # pasted with whitespace around
    ],
)
def test_host_key_pasted_as_keyscan_or_pub_line_is_normalised(pasted: str, dev_config: Config) -> None:
    spec = load_spec(encode(_prod_like(dev_config, pasted)))
    assert spec.hosts[0].ssh is not None and spec.hosts[0].ssh.host_key == f"ssh-ed25519 {ED25519}"


@pytest.mark.parametrize(
    "bad", ["ssh-ed25519", "ssh-ed25519 not*base64", f"ssh-rsa {ED25519}", "AAAA ssh-ed25519", "x y z ssh-ed25519 AAAA"]
)
def test_host_key_refused_says_what_was_expected_without_a_regex(bad: str, dev_config: Config) -> None:
    problems = problems_of(_prod_like(dev_config, bad))
    [problem] = [p for p in problems if p.startswith("cluster-ai:hosts[0].ssh.hostKey:")]
    assert "ssh-keyscan" in problem and "ssh-ed25519 AAAAC3Nza" in problem, problem
    assert "^(" not in problem and "[A-Za-z" not in problem, f"a raw regex in {problem!r}"


def test_integral_floats_are_accepted_where_an_int_is_meant(dev_config: Config) -> None:
    config = copy.deepcopy(dev_config)
    host_with(cpus=4.0, gpus=0.0)(config)
    config[NS + "ports"] = {"webui": 3000.0}
    assert json.loads(encode(config)[NS + "hosts"])[0]["cpus"] == 4.0
    spec = load_spec(encode(config))
    assert spec.hosts[0].cpus == 4 and isinstance(spec.hosts[0].cpus, int)
    assert spec.ports.webui == 3000 and isinstance(spec.ports.webui, int)


def test_a_fractional_float_is_still_refused_where_an_int_is_meant(dev_config: Config) -> None:
    config = copy.deepcopy(dev_config)
    host_with(cpus=4.5)(config)
    assert any("hosts[0].cpus: must be" in p for p in problems_of(config)), problems_of(config)


@pytest.mark.parametrize(
    ("value", "shown"),
    [(True, "got true (a YAML boolean)"), (None, "got null (an empty value)"), (3, "got 3 (a number)")],
)
def test_type_errors_name_the_yaml_type_not_a_python_repr(value: Any, shown: str, dev_config: Config) -> None:
    config = copy.deepcopy(dev_config)
    config[NS + "webui"] = {"name": value}
    [problem] = [p for p in problems_of(config) if p.startswith("cluster-ai:webui.name:")]
    assert shown in problem, problem
    assert "'None'" not in problem and "'true'" not in problem, problem


def test_memory_check_counts_the_edge_proxy_egress_and_backup(dev_config: Config) -> None:
    """A head that holds its services and monitoring but not the TLS edge, the proxy, the egress,
    the backup and the model sync: refused (before, those were not counted)."""
    from infra.config import HOST_MEMORY_RESERVE, MIN_WORKER_MEMORY_MB, placed_services

    config = copy.deepcopy(dev_config)
    config[NS + "hosts"] = [
        {"name": "head", "address": "192.0.2.10", "roles": ["head"], "cpus": 8, "memoryGb": 64},
        {"name": "gpu1", "address": "192.0.2.11", "roles": ["worker"], "cpus": 8, "memoryGb": 64},
    ]
    config[NS + "proxy"] = {"domain": "ai.example.com"}
    spec = load_spec(encode(config))
    head = spec.head
    placed = placed_services(spec, head)
    for service in ("edge", "proxy", "egress", "backup", "backup_metrics"):
        assert service in placed, f"{service} is not counted on the head: {placed}"
    counted = sum(getattr(spec.resources, s).memory_mb for s in placed)
    plumbing = sum(getattr(spec.resources, s).memory_mb for s in ("edge", "proxy", "egress", "backup"))
    # Just enough memory for everything but the plumbing: must be refused now.
    gb = (counted - plumbing) / 1024 / (1 - HOST_MEMORY_RESERVE) + 0.01
    config[NS + "hosts"][0]["memoryGb"] = round(gb, 2)
    problems = problems_of(config)
    assert any(p.startswith("cluster-ai:hosts[0].memoryGb:") for p in problems), problems
    worker = spec.hosts[1]
    assert "model_sync" in placed_services(spec, worker) and "edge" in placed_services(spec, worker)
    assert MIN_WORKER_MEMORY_MB > 0


def test_every_container_of_the_plan_is_counted_on_its_host() -> None:
    """The memory the plan's fixed-size containers declare, per host, is the memory the check counts."""
    from infra.config import load_spec as load
    from infra.config import placed_services
    from stacks.mocks import is_file_holder
    from stacks.plan import evaluate_stack
    from stacks.stackfile import read_stack_config as read
    from tests.support.prod_stack import as_locked

    for stack in ("dev", "prod"):
        stack_config = read(stack)
        # The shipped prod example leaves unconfirmed digests to `stacks lock`: test pins stand in.
        spec = load(as_locked(stack_config.config), stack_config.secret_keys)
        declared: dict[str, float] = {}
        for c in evaluate_stack(stack).by_type("docker:index/container:Container"):
            inputs = c.plain_inputs()
            labels = {item["label"]: item["value"] for item in inputs.get("labels") or []}
            # A file holder is created and never started: it takes no memory on its host.
            if labels.get("cluster-ai.service") == "dask-worker" or not inputs.get("memory") or is_file_holder(c):
                continue
            declared[labels["cluster-ai.host"]] = declared.get(labels["cluster-ai.host"], 0) + inputs["memory"]
        for host in spec.hosts:
            counted = sum(getattr(spec.resources, s).memory_mb for s in placed_services(spec, host))
            assert declared[host.name] == counted, (
                f"{stack}/{host.name}: plan {declared[host.name]} MB, check {counted} MB"
            )
