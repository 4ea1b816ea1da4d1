"""Property tests: no config, however broken, gets past `load_spec` as anything but a
ClusterSpec or a ConfigError, and no config that loads makes the program crash or
publish a port on every interface.

Deterministic for CI: `derandomize=True` and no example database, so every run
tries the same examples; bounded by `max_examples`.
"""

from __future__ import annotations

import copy
import functools
import ipaddress
import json
from typing import Any

import pulumi
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from infra.config import ClusterSpec, ConfigError, load_spec
from infra.program import StackConfigError
from stacks.mocks import ClusterMocks, evaluate_program
from stacks.plan import run_program
from stacks.stackfile import project_name, read_stack_config
from tests.unit import test_hostile_configs as hostile

NS = "cluster-ai:"
CONTAINER = "docker:index/container:Container"
TOP_KEYS = [
    "environment",
    "bindAddress",
    "hosts",
    "models",
    "images",
    "ports",
    "dask",
    "webui",
    "postgres",
    "resources",
    "adminPassword",
]
# Field names of the schema: random objects built from them reach deeper validation
# than random text keys would.
FIELD_NAMES = [
    "name",
    "address",
    "roles",
    "dockerHost",
    "cpus",
    "memoryGb",
    "gpus",
    "gpuModel",
    "workers",
    "digest",
    "dask",
    "ollama",
    "webui",
    "postgres",
    "redis",
    "scheduler",
    "dashboard",
    "version",
    "threadsPerWorker",
    "memoryMb",
    "adminEmail",
    "adminName",
    "database",
    "user",
    "head",
    "worker",
]
HOSTILE = [
    "; rm -rf /",
    "$(reboot)",
    "`id`",
    "../../etc/passwd",
    "a\x00b",
    "line\nbreak",
    "\r\n",
    "\u202e",
    "\x1b[2J",
    "0.0.0.0",
    "::",
    "latest",
    "\ud800",
    "x" * 300,
    "",
    " ",
    "null",
    "[",
    "{",
    "NaN",
    "\U0001f600",
    "ollama/ollama:latest",
    "head",
    "worker",
    "prod",
    "dev",
    "127.0.0.1",
    "é",
]

LOAD_SETTINGS = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PROGRAM_SETTINGS = settings(LOAD_SETTINGS, max_examples=40)


@functools.cache
def dev_document() -> dict[str, Any]:
    """Pulumi.dev.yaml's config, decoded, keyed without the namespace."""
    config = read_stack_config("dev").config
    return {k[len(NS) :]: json.loads(v) if v[:1] in "[{" else v for k, v in config.items() if k.startswith(NS)}


def encode(document: dict[str, Any]) -> dict[str, str]:
    """The flat map the engine hands the program (JSON text for anything structured)."""
    return {NS + k: v if isinstance(v, str) else json.dumps(v) for k, v in document.items()}


def check_loads_or_names_problems(config: dict[str, str], secret_keys: list[str]) -> ClusterSpec | None:
    """The property of `load_spec`: a spec, or a ConfigError of one-line, namespaced problems."""
    try:
        spec = load_spec(config, secret_keys)
    except ConfigError as exc:
        event("config error")
        assert exc.problems, "a ConfigError lists at least one problem"
        for problem in exc.problems:
            assert problem.startswith("cluster-ai:"), problem
            assert problem.isascii() and problem.isprintable(), f"unsafe characters in {problem!r}"
            assert len(problem) < 500, f"unbounded message: {problem[:200]!r}..."
        return None
    assert isinstance(spec, ClusterSpec)
    event("loaded")
    assert_spec_invariants(spec)
    return spec


def assert_spec_invariants(spec: ClusterSpec) -> None:
    """What the cross-field checks promise of every spec that loads."""
    assert sum(h.is_head for h in spec.hosts) == 1
    assert spec.worker_hosts
    assert len({h.name for h in spec.hosts}) == len(spec.hosts)
    assert len({h.address for h in spec.hosts}) == len(spec.hosts)
    assert ipaddress.ip_address(spec.bind_address).is_loopback
    ports = spec.ports.model_dump().values()
    assert len(set(ports)) == len(ports)
    for host in spec.worker_hosts:
        assert spec.worker_memory_mb(host) >= 1024, host.name
        assert host.gpus == 0 or host.worker_count <= host.gpus, host.name
        assert spec.threads_per_worker(host) <= host.cpus, host.name
        assert spec.resources.ollama.cpus <= host.cpus, host.name
    if spec.is_prod:
        assert all("@sha256:" in ref for _, ref in spec.images.items())
        assert all(m.digest is not None for m in spec.models)


# --- strategies -----------------------------------------------------------------------

texts = st.one_of(
    st.text(max_size=30),
    st.text(st.characters(categories=["Cc", "Cf", "Zl", "Zp", "Cs", "So"]), max_size=10),
    st.sampled_from(HOSTILE),
)
ints = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 1, 1023, 1024, 65535, 65536, 2**31, 2**63, 10**30]),
)
scalars = st.one_of(st.none(), st.booleans(), ints, st.floats(), texts)
keys = st.one_of(st.sampled_from(FIELD_NAMES), texts)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=12,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


def _parent(document: Any, path: tuple[Any, ...]) -> Any:
    for part in path[:-1]:
        document = document[part]
    return document


@st.composite
def mutated_dev_configs(draw: st.DrawFn) -> tuple[dict[str, str], list[str]]:
    """The dev config with one to four random mutations anywhere in it."""
    document = copy.deepcopy(dev_document())
    raw: dict[str, str] = {}  # top-level keys replaced by raw (possibly broken) text
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        op = draw(st.sampled_from(["replace", "drop", "add_key", "text", "int", "raw"]))
        paths = [p for p in _paths(document) if p]
        if op == "add_key" or not paths:
            targets = [p for p in _paths(document) if isinstance(_parent(document, (*p, None)), dict)]
            target = draw(st.sampled_from(targets))
            container = _parent(document, (*target, None))
            key = draw(st.sampled_from(TOP_KEYS) | keys) if target == () else draw(keys)
            container[key] = draw(json_values)
            continue
        path = draw(st.sampled_from(paths))
        parent = _parent(document, path)
        if op == "drop":
            del parent[path[-1]]
        elif op == "replace":
            parent[path[-1]] = draw(json_values)
        elif op == "text":
            parent[path[-1]] = draw(texts)
        elif op == "int":
            parent[path[-1]] = draw(ints)
        else:
            top = path[0]
            text = json.dumps(document[top]) if not isinstance(document[top], str) else document[top]
            cut = draw(st.integers(min_value=0, max_value=len(text)))
            raw[top] = text[:cut] + draw(st.sampled_from(["", "}", "]", ",", '"', "\\", "NaN", "\n"]))
    config = encode(document)
    config.update({NS + k: v for k, v in raw.items()})
    secret_keys = [NS + "adminPassword"] if draw(st.booleans()) else []
    return config, secret_keys


@given(mutated_dev_configs())
@LOAD_SETTINGS
def test_mutated_dev_config_loads_or_names_every_problem(case: tuple[dict[str, str], list[str]]) -> None:
    config, secret_keys = case
    check_loads_or_names_problems(config, secret_keys)


@given(
    key=st.sampled_from(TOP_KEYS) | keys,
    value=json_values,
    as_text=st.booleans(),
    secret=st.booleans(),
)
@LOAD_SETTINGS
def test_random_document_for_any_key_loads_or_names_every_problem(
    key: str, value: Any, as_text: bool, secret: bool
) -> None:
    """A fully random JSON document (or its text, cut short) as one key's value."""
    config = encode(dev_document())
    text = json.dumps(value)
    config[NS + key] = text[: len(text) // 2] if as_text else text
    check_loads_or_names_problems(config, [NS + key] if secret else [])


@given(st.dictionaries(st.sampled_from(TOP_KEYS) | keys, json_values, max_size=6))
@LOAD_SETTINGS
def test_random_config_from_scratch_loads_or_names_every_problem(document: dict[str, Any]) -> None:
    check_loads_or_names_problems(encode(document), [])


# --- the program under mocks -------------------------------------------------------------

MODEL_NAMES = ["qwen2.5:0.5b", "llama3.2:1b", "library/phi3:mini", "nomic-embed-text:v1.5"]
hex64 = st.text("0123456789abcdef", min_size=64, max_size=64)


@st.composite
def plausible_configs(draw: st.DrawFn) -> tuple[dict[str, str], list[str]]:
    """Mostly valid clusters of one to four hosts, in dev or prod, sometimes broken once."""
    prod = draw(st.booleans())
    count = draw(st.integers(min_value=1, max_value=4))
    head = draw(st.integers(min_value=0, max_value=count - 1))
    hosts = []
    for i in range(count):
        gpus = draw(st.sampled_from([0, 0, 1, 2, 4, 8]))
        roles = ["head"] if i == head else []
        if i != head or draw(st.booleans()):
            roles.append("worker")
        host: dict[str, Any] = {
            "name": f"{draw(st.sampled_from(['node', 'gpu', 'h']))}{i}",
            "address": draw(st.sampled_from([f"10.0.0.{i + 1}", f"node{i}.cluster.example", f"fd00::{i + 1}"])),
            "roles": roles,
            "cpus": draw(st.integers(min_value=1, max_value=128)),
            "memoryGb": draw(st.sampled_from([16, 24, 32, 64, 256, 1024, 12.5, 4])),
        }
        if gpus:
            host["gpus"] = gpus
            if draw(st.booleans()):
                host["gpuModel"] = draw(st.sampled_from(["A100", "RTX 4090", "H100-SXM"]))
        if "worker" in roles and draw(st.booleans()):
            host["workers"] = draw(st.integers(min_value=1, max_value=gpus or 4))
        hosts.append(host)
    if not any("worker" in h["roles"] for h in hosts):
        hosts[-1]["roles"] = [*hosts[-1]["roles"], "worker"]
    names = draw(st.lists(st.sampled_from(MODEL_NAMES), max_size=3, unique=True))
    models = [{"name": n, **({"digest": draw(hex64)} if prod or draw(st.booleans()) else {})} for n in names]
    # One range per service keeps them distinct without a filter; collisions are the corpus's job.
    ports = [draw(st.integers(min_value=low, max_value=low + 16127)) for low in (1024, 17152, 33280, 49408)]
    document: dict[str, Any] = {
        "environment": "prod" if prod else "dev",
        "bindAddress": draw(st.sampled_from(["127.0.0.1", "127.0.0.2", "127.10.20.30", "::1"])),
        "hosts": hosts,
        "models": models,
        "ports": dict(zip(["webui", "scheduler", "dashboard", "ollama"], ports, strict=True)),
        "dask": {
            "version": "2026.8.0",
            **({"threadsPerWorker": draw(st.integers(1, 64))} if draw(st.booleans()) else {}),
        },
    }
    if prod:
        document["images"] = {
            "dask": "ghcr.io/dask/dask:2026.8.0-py3.12@sha256:" + draw(hex64),
            "ollama": "ollama/ollama:0.13.5@sha256:" + draw(hex64),
            "webui": "ghcr.io/open-webui/open-webui@sha256:" + draw(hex64),
            "postgres": "postgres:16.6-bookworm@sha256:" + draw(hex64),
            "redis": "redis@sha256:" + draw(hex64),
        }
    if draw(st.booleans()):
        document["resources"] = {
            "ollama": {"memoryMb": draw(st.integers(64, 16384)), "cpus": draw(st.sampled_from([0.5, 1, 2, 8]))}
        }
    secret_keys: list[str] = []
    if draw(st.booleans()):
        document["adminPassword"] = draw(st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=12, max_size=40))
        secret_keys.append(NS + "adminPassword")
    # Now and then one random break, so the failing path is exercised as well.
    if draw(st.integers(min_value=0, max_value=5)) == 5:
        path = draw(st.sampled_from([p for p in _paths(document) if p]))
        _parent(document, path)[path[-1]] = draw(json_values)
    return encode(document), secret_keys


class RecordingMocks(ClusterMocks):
    """ClusterMocks that count registrations, to prove a config error registers none."""

    def __init__(self) -> None:
        self.registered: list[str] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
        self.registered.append(f"{args.typ}::{args.name}")
        return super().new_resource(args)


@given(case=plausible_configs())
@PROGRAM_SETTINGS
def test_program_never_crashes_and_never_publishes_on_every_interface(
    case: tuple[dict[str, str], list[str]],
) -> None:
    """What loads, builds: with no exception, and every published port on the bind address.

    Evaluated through `evaluate_program` (what `evaluate_stack` calls) with the exact
    flat config: overrides on top of Pulumi.dev.yaml could not express a dropped key.
    """
    config, secret_keys = case
    spec = check_loads_or_names_problems(config, secret_keys)
    mocks = RecordingMocks()
    if spec is None:
        with pytest.raises(StackConfigError) as caught:
            evaluate_program(
                run_program, project=project_name(), stack="dev", config=config, secret_keys=secret_keys, mocks=mocks
            )
        assert str(caught.value).startswith("invalid stack config")
        assert mocks.registered == [], f"registered before the config error: {mocks.registered}"
        return
    evaluation = evaluate_program(
        run_program, project=project_name(), stack="dev", config=config, secret_keys=secret_keys, mocks=mocks
    )
    containers = evaluation.by_type(CONTAINER)
    assert containers, "a cluster that loads declares containers"
    published = 0
    addresses = {h.name: h.address for h in spec.hosts}
    for container in containers:
        inputs = container.plain_inputs()
        labels = {label["label"]: label["value"] for label in inputs.get("labels", [])}
        for port in inputs.get("ports") or []:
            published += 1
            assert port.get("ip"), f"{container.urn}: port {port} has no ip: Docker would publish on 0.0.0.0"
            if labels.get("cluster-ai.service") == "proxy":
                assert spec.proxy is not None and port["ip"] == spec.proxy_address, f"{container.urn}: {port}"
                assert int(port["external"]) in (80, 443), f"{container.urn}: the proxy publishes only 443/80"
                continue
            assert not ipaddress.ip_address(port["ip"]).is_unspecified, f"{container.urn}: publishes on {port}"
            if spec.tls_enabled:
                # Across hosts: bound to the host's own cluster address.
                want = addresses[labels["cluster-ai.host"]]
            else:
                want = spec.bind_address
            assert port["ip"] == want, f"{container.urn}: publishes on {port}, not {want}"
    if not spec.tls_enabled:
        assert published > 0, "a one-host dev stack publishes its services on the loopback bind address"


# --- hostile text in every string field (issue 12) ---------------------------------------

# Pieces that end a heredoc, close a quote, start a command, carry an IPv6 zone into
# ssh's `%` tokens, or are simply too much; combined with valid values so some of
# them get past the first check of a field.
HOSTILE_PIECES = [
    "\n",
    "\r",
    "\x00",
    "'",
    '"',
    "`id`",
    "$(reboot)",
    "${IFS}",
    ";",
    "%",
    "%eth0",
    " ",
    "\t",
    "}",
    "{",
    "#",
    "CLUSTER_AI_NFT",
    "\u202e",
    "\u00e9",
    "\U0001f600",
    "\\",
    "x" * 3000,
]
VALID_SEEDS = ["192.0.2.11", "2001:db8::11", "fe80::1", "head", "ai.example.com", "ops@example.com", "cluster-ai"]


@st.composite
def hostile_text(draw: st.DrawFn) -> str:
    """A valid-looking value with hostile pieces around or inside it, or arbitrary text."""
    if draw(st.booleans()):
        return draw(st.text(min_size=0, max_size=80))
    seed = draw(st.sampled_from(VALID_SEEDS))
    pieces = draw(st.lists(st.sampled_from(HOSTILE_PIECES), min_size=1, max_size=4))
    at = draw(st.integers(min_value=0, max_value=len(seed)))
    return seed[:at] + "".join(pieces) + seed[at:]


@pytest.mark.skipif(bool(hostile.missing_tools()), reason=f"sink checks need: {hostile.missing_tools()}")
@given(path=st.sampled_from(hostile.STRING_FIELDS), value=hostile_text())
@settings(LOAD_SETTINGS, max_examples=250)
def test_hostile_text_in_any_string_field_is_a_clear_error_or_a_safe_plan(
    path: tuple[str | int, ...], value: str
) -> None:
    """Either exit-2 material (ConfigError naming the key, safe message) or a plan whose every
    script, ruleset and Caddyfile the real tools read to the plain plan's structure."""
    doc = hostile.base()
    hostile.set_path(doc, path, value)
    event(hostile.outcome(doc, path, value, f"{hostile.key_path(path)}={value[:40]!r}"))
