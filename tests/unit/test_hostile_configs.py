"""A corpus of hostile and malformed stack configs: each one a clear error or a safe plan.

Each case is the prod stack (every sink present: root bootstrap scripts with
their nftables rulesets, Caddy edges, proxy and egress, ssh options, Dask over
TLS) with one value replaced. The outcome must be one of:

- a ConfigError whose problems start with the key path the case touched, each
  one bounded printable ASCII that never repeats the hostile value raw; or
- a plan whose every sink the real tools accept and read to the same structure
  as the plain plan (tests/support/sinks.py: `bash -n` and bash's own
  re-printing, `nft -c` in a namespace, `caddy adapt`).

A second table holds malformed stack files: each stops with StackFileError
naming the file and line, and the CLI exits 2 without a traceback.

The images are pinned here by test digests (sha256 of the reference: test data,
not a claim about any registry) so the corpus does not depend on the shipped pins.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from infra.config import ConfigError, Images, load_spec
from stacks.mocks import evaluate_program
from stacks.plan import run_program
from stacks.stackfile import REPO, StackFileError, read_stack_config
from tests.support.sinks import SinkStructure, assert_same_structure, missing_tools, structure_of

NS = "cluster-ai:"
EXIT_CONFIG = 2
_missing = missing_tools()
needs_tools = pytest.mark.skipif(bool(_missing), reason=f"sink checks need: {', '.join(_missing)}")

Document = dict[str, Any]


def pin_test_digests() -> dict[str, str]:
    """Every image pinned by a test digest: sha256 of its reference (fixture data)."""
    return {
        key: f"{ref.split('@')[0]}@sha256:{hashlib.sha256(ref.split('@')[0].encode()).hexdigest()}"
        for key, ref in Images().items()
    }


@functools.cache
def _base() -> Document:
    config = read_stack_config("prod").config
    doc = {k[len(NS) :]: json.loads(v) if v[:1] in "[{" else v for k, v in config.items() if k.startswith(NS)}
    doc["images"] = pin_test_digests()
    return doc


def base() -> Document:
    return copy.deepcopy(_base())


def encode(doc: Document) -> dict[str, str]:
    return {NS + k: v if isinstance(v, str) else json.dumps(v) for k, v in doc.items()}


def set_path(doc: Any, path: tuple[str | int, ...], value: Any) -> None:
    for part in path[:-1]:
        doc = doc[part]
    doc[path[-1]] = value


def key_path(path: tuple[str | int, ...]) -> str:
    out = "cluster-ai"
    for i, part in enumerate(path):
        out += f"[{part}]" if isinstance(part, int) else (f":{part}" if i == 0 else f".{part}")
    return out


# --- the corpus ---------------------------------------------------------------------

# Every string field of the prod stack a user writes (the schema's string leaves).
STRING_FIELDS: list[tuple[str | int, ...]] = [
    ("environment",),
    ("bindAddress",),
    ("hosts", 0, "name"),
    ("hosts", 0, "address"),
    ("hosts", 1, "address"),
    ("hosts", 1, "gpuModel"),
    ("hosts", 0, "ssh", "user"),
    ("hosts", 0, "ssh", "privateKeyPath"),
    ("hosts", 1, "ssh", "hostKey"),
    ("hosts", 0, "roles", 0),
    ("proxy", "domain"),
    ("proxy", "acmeEmail"),
    ("proxy", "listenAddress"),
    ("proxy", "tls"),
    ("monitoring", "smtp", "host"),
    ("monitoring", "smtp", "from"),
    ("monitoring", "smtp", "to", 0),
    ("firewall", "adminNetworks", 0),
    ("images", "caddy"),
    ("images", "dask"),
    ("models", 0, "name"),
    ("models", 0, "digest"),
]
# Text that breaks out of a heredoc, a quote, a URL, a Caddyfile token or an nftables set.
HOSTILE_VALUES: list[str] = [
    "fe80::1%eth0\nCLUSTER_AI_NFT\ntouch /tmp/pwned\n",
    "192.0.2.10%x y",
    "x'; touch /tmp/pwned; echo '",
    '"; reboot; "',
    "$(touch /tmp/pwned)",
    "`id`",
    "a\nb",
    "a\x00b",
    "}\nimport /etc/passwd\n{",
    "\u202ehost",
    "x" * 5000,
]
CASES: list[tuple[str, tuple[str | int, ...], Any]] = [
    (f"{key_path(path)}={json.dumps(value)[:24]}", path, value) for path in STRING_FIELDS for value in HOSTILE_VALUES
]
# Values that pass the schema and must come out safe at every sink.
VALID_BUT_SHARP: list[tuple[str, tuple[str | int, ...], Any]] = [
    ("ipv6-worker", ("hosts", 1, "address"), "2001:db8::11"),
    ("ipv6-worker-long-form", ("hosts", 2, "address"), "2001:0db8:0000:0000:0000:0000:0000:0012"),
    ("ipv6-head", ("hosts", 0, "address"), "2001:db8::10"),
    ("ipv6-admin-network", ("firewall", "adminNetworks"), ["2001:db8:100::/48", "198.51.100.0/24"]),
    (
        "keyscan-host-key",
        ("hosts", 1, "ssh", "hostKey"),
        "192.0.2.11 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOd6YHSn/3BbJbUHjczu3IyYXFOYcba26JmJKDnblpKp",
    ),
    (
        "pub-line-host-key",
        ("hosts", 1, "ssh", "hostKey"),
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOd6YHSn/3BbJbUHjczu3IyYXFOYcba26JmJKDnblpKp root@gpu1 $(reboot)",
    ),
    ("ssh-port", ("hosts", 1, "ssh", "port"), 2222),
    ("upper-case-domain", ("proxy", "domain"), "AI.Example.COM"),
    ("gpu-model-with-space", ("hosts", 1, "gpuModel"), "NVIDIA H100 80GB"),
]
# Whole-value type confusions and malformed structure.
MALFORMED: list[tuple[str, tuple[str | int, ...], Any]] = [
    ("hosts-null", ("hosts",), None),
    ("hosts-string", ("hosts",), "head"),
    ("host-null", ("hosts", 0), None),
    ("ssh-list", ("hosts", 0, "ssh"), ["root"]),
    ("port-string", ("hosts", 0, "ssh", "port"), "22; reboot"),
    ("port-float", ("hosts", 0, "ssh", "port"), 22.5),
    ("cpus-bool", ("hosts", 0, "cpus"), True),
    ("cpus-huge", ("hosts", 0, "cpus"), 10**30),
    ("memory-negative", ("hosts", 0, "memoryGb"), -1),
    ("roles-empty", ("hosts", 0, "roles"), []),
    ("admin-networks-object", ("firewall", "adminNetworks"), {"a": 1}),
    ("admin-network-whole-v4", ("firewall", "adminNetworks"), ["0.0.0.0/1", "128.0.0.0/1"]),
    ("admin-network-whole-v6", ("firewall", "adminNetworks"), ["::/1", "8000::/1"]),
    ("admin-network-host-bits", ("firewall", "adminNetworks"), ["198.51.100.1/24"]),
    ("listen-unspecified-v4", ("proxy", "listenAddress"), "0.0.0.0"),
    ("listen-unspecified-v6", ("proxy", "listenAddress"), "::"),
    ("prod-host-on-loopback", ("hosts", 1, "address"), "127.0.0.2"),
    ("prod-host-localhost", ("hosts", 1, "address"), "localhost"),
    ("prod-head-v6-loopback", ("hosts", 0, "address"), "::1"),
    ("ssh-port-is-edge-port", ("hosts", 1, "ssh", "port"), 8443),
    ("ssh-port-is-https", ("hosts", 0, "ssh", "port"), 443),
    ("network-name-collision", ("hosts", 1, "name"), "head-data"),
    ("renewal-not-below-cert", ("tls",), {"certValidityDays": 30, "earlyRenewalDays": 30}),
    ("renewal-not-below-ca", ("tls",), {"caValidityDays": 30, "certValidityDays": 30, "earlyRenewalDays": 365}),
    ("host-key-two-lines", ("hosts", 1, "ssh", "hostKey"), "ssh-ed25519 AAAA\nssh-rsa BBBB"),
    (
        "host-key-wrong-type",
        ("hosts", 1, "ssh", "hostKey"),
        "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIOd6YHSn/3BbJbUHjczu3IyYXFOYcba26JmJKDnblpKp",
    ),
    ("private-key-option", ("hosts", 0, "ssh", "privateKeyPath"), "-oProxyCommand=reboot"),
]
MALFORMED_PATHS = {case_id: key_path(path) for case_id, path, _ in MALFORMED}
MALFORMED_PATHS.update(
    {
        "renewal-not-below-cert": "cluster-ai:tls.earlyRenewalDays",
        "renewal-not-below-ca": "cluster-ai:tls.earlyRenewalDays",
        "admin-networks-object": "cluster-ai:firewall.adminNetworks",
        "admin-network-whole-v4": "cluster-ai:firewall.adminNetworks",
        "admin-network-whole-v6": "cluster-ai:firewall.adminNetworks",
    }
)


def test_the_corpus_is_about_two_hundred_configs() -> None:
    assert len(CASES) + len(VALID_BUT_SHARP) + len(MALFORMED) >= 200
    ids = [c[0] for c in CASES] + [c[0] for c in VALID_BUT_SHARP] + [c[0] for c in MALFORMED]
    assert len(set(ids)) == len(ids), "case ids must be unique"


def assert_clear(problems: tuple[str, ...], path: str, hostile: Any) -> None:
    """Some problem names `path`; every problem is one bounded printable ASCII line without the raw value."""
    assert any(p.startswith(path + ":") or p.startswith(path + ".") or p.startswith(path + "[") for p in problems), (
        f"no problem names {path}: {problems}"
    )
    for problem in problems:
        assert problem.isascii() and problem.isprintable(), f"unsafe characters in {problem!r}"
        assert len(problem) < 600, f"unbounded message: {problem[:200]!r}"
        if isinstance(hostile, str) and len(hostile) > 3 and not hostile.isprintable():
            assert hostile not in problem, f"the hostile value appears raw in {problem!r}"


@functools.cache
def plain_structure() -> SinkStructure:
    return structure_of(_evaluate(base()))


def _evaluate(doc: Document) -> Any:
    return evaluate_program(run_program, project="cluster-ai", stack="prod", config=encode(doc), secret_keys=[])


def outcome(doc: Document, path: tuple[str | int, ...], value: Any, label: str) -> str:
    """'error' or 'plan', asserting the clear-error or safe-plan contract."""
    try:
        load_spec(encode(doc))
    except ConfigError as exc:
        assert_clear(exc.problems, key_path(path), value)
        return "error"
    assert_same_structure(structure_of(_evaluate(doc)), plain_structure(), label)
    return "plan"


@needs_tools
@pytest.mark.parametrize(("case_id", "path", "value"), CASES, ids=[c[0] for c in CASES])
def test_hostile_value_is_a_clear_error_or_a_safe_plan(case_id: str, path: tuple[str | int, ...], value: Any) -> None:
    doc = base()
    set_path(doc, path, value)
    outcome(doc, path, value, case_id)


@needs_tools
@pytest.mark.parametrize(("case_id", "path", "value"), VALID_BUT_SHARP, ids=[c[0] for c in VALID_BUT_SHARP])
def test_sharp_but_valid_value_plans_safely(case_id: str, path: tuple[str | int, ...], value: Any) -> None:
    doc = base()
    set_path(doc, path, value)
    if path == ("hosts", 0, "address"):
        doc["proxy"]["listenAddress"] = value  # the proxy publishes on the head's address
    assert outcome(doc, path, value, case_id) == "plan", f"{case_id}: a valid value was refused"


@pytest.mark.parametrize(("case_id", "path", "value"), MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_value_is_refused_naming_its_key(case_id: str, path: tuple[str | int, ...], value: Any) -> None:
    doc = base()
    if path == ("tls",):
        doc["tls"] = value
    else:
        set_path(doc, path, value)
    with pytest.raises(ConfigError) as caught:
        load_spec(encode(doc))
    assert_clear(caught.value.problems, MALFORMED_PATHS[case_id], value)


# --- what a sink gets -------------------------------------------------------------------


def test_ipv6_hosts_are_bracketed_in_every_url() -> None:
    doc = base()
    doc["hosts"][1]["address"] = "2001:db8::11"
    evaluation = _evaluate(doc)
    provider = evaluation.named("gpu1-docker").plain_inputs()
    assert provider["host"] == "ssh://cluster-ai@[2001:db8::11]:22", provider["host"]
    caddyfiles = [
        str(u["content"])
        for r in evaluation.by_type("docker:index/container:Container")
        for u in r.plain_inputs().get("uploads") or []
        if str(u.get("file", "")).endswith("Caddyfile")
    ]
    assert any("https://[2001:db8::11]:8443" in c for c in caddyfiles), "the egress's upstream is not bracketed"
    for r in evaluation.by_type("docker:index/container:Container"):
        for part in r.plain_inputs().get("command") or []:
            assert "tls://2001:" not in str(part), f"{r.urn}: unbracketed IPv6 in {part}"


def test_addresses_are_stored_in_one_spelling() -> None:
    doc = base()
    doc["hosts"][2]["address"] = "2001:0DB8:0:0::12"
    doc["firewall"]["adminNetworks"] = ["2001:0db8:0100:0000::/56"]
    spec = load_spec(encode(doc))
    assert spec.hosts[2].address == "2001:db8::12"
    assert spec.firewall.admin_networks == ("2001:db8:100::/56",)


# --- malformed stack files --------------------------------------------------------------

STACK_FILES: list[tuple[str, str, int | None, str]] = [
    ("yaml-syntax", "config: [1\n", 2, "invalid YAML"),
    ("top-level-list", "- a\n- b\n", 1, "must be a mapping"),
    ("top-level-scalar", "hello\n", 1, "must be a mapping"),
    ("config-list", "config:\n  - a\n", 1, "`config:` must be a mapping"),
    ("config-scalar", "config: 5\n", 1, "`config:` must be a mapping"),
    ("duplicate-key", "config:\n  cluster-ai:environment: dev\n  cluster-ai:environment: prod\n", 3, "given twice"),
    ("duplicate-nested-key", "config:\n  cluster-ai:ports:\n    webui: 1\n    webui: 2\n", 4, "given twice"),
    ("duplicate-top-key", "config: {}\nconfig: {}\n", 2, "given twice"),
    ("non-string-key", "config:\n  1: x\n", 2, "not a string"),
    ("bool-key", "config:\n  true: x\n", 2, "not a string"),
    ("null-value", "config:\n  cluster-ai:environment:\n", 2, "has no value"),
    ("tab-indent", "config:\n\tcluster-ai:environment: dev\n", 2, "invalid YAML"),
    ("unclosed-quote", 'config:\n  cluster-ai:environment: "dev\n', 3, "invalid YAML"),
    ("alias-bomb", "a: &a [1]\nb: [" + ", ".join(["*a"] * 200) + "]\n", 2, "aliases"),
    ("not-utf8", "config:\n  x: \udcff\n", None, "not UTF-8"),
]


def _write_stack(root: Path, text: str) -> None:
    (root / "Pulumi.yaml").write_text((REPO / "Pulumi.yaml").read_text())
    if "\udcff" in text:
        (root / "Pulumi.bad.yaml").write_bytes(text.replace("\udcff", "").encode() + b"\xff\n")
    else:
        (root / "Pulumi.bad.yaml").write_text(text)


@pytest.mark.parametrize(("case_id", "text", "line", "fragment"), STACK_FILES, ids=[c[0] for c in STACK_FILES])
def test_malformed_stack_file_names_file_and_line(
    case_id: str, text: str, line: int | None, fragment: str, tmp_path: Path
) -> None:
    _write_stack(tmp_path, text)
    with pytest.raises(StackFileError) as caught:
        read_stack_config("bad", tmp_path)
    message = str(caught.value)
    where = f"Pulumi.bad.yaml:{line}:" if line is not None else "Pulumi.bad.yaml:"
    assert message.startswith(where), f"{case_id}: {message!r} does not start with {where!r}"
    assert fragment in message, f"{case_id}: {message!r}"


@pytest.mark.parametrize("case_id", ["yaml-syntax", "top-level-list", "duplicate-key", "non-string-key", "null-value"])
def test_cli_exits_2_on_a_malformed_stack_file_without_traceback(case_id: str, tmp_path: Path) -> None:
    text = next(t for c, t, _, _ in STACK_FILES if c == case_id)
    _write_stack(tmp_path, text)
    for argv in (["plan", "bad"], ["status", "bad"], ["lock", "bad", "--dry-run"]):
        result = subprocess.run(
            [sys.executable, "-m", "stacks", *argv, "--root", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO,
            check=False,
        )
        assert result.returncode == EXIT_CONFIG, f"{argv}: exit {result.returncode}: {result.stderr[-500:]}"
        assert "Traceback" not in result.stderr, result.stderr
        assert "Pulumi.bad.yaml:" in result.stderr, result.stderr


def test_yaml_1_1_words_are_text_as_pulumi_reads_them(tmp_path: Path) -> None:
    _write_stack(tmp_path, "config:\n  cluster-ai:environment: yes\n  cluster-ai:bindAddress: 1:20\n")
    config = read_stack_config("bad", tmp_path).config
    assert config["cluster-ai:environment"] == "yes"
    assert config["cluster-ai:bindAddress"] == "1:20"
    with pytest.raises(ConfigError) as caught:
        load_spec(config)
    assert any("environment: must be one of 'dev' or 'prod', got 'yes'" in p for p in caught.value.problems), (
        caught.value.problems
    )


# --- digests: no made-up one anywhere ------------------------------------------------------

SHIPPED_UNPINNED = {"dask", "webui", "redis", "dcgmExporter", "redisExporter"}


def test_the_shipped_prod_example_is_refused_until_locked_naming_each_image() -> None:
    """Pulumi.prod.yaml holds only digests that were published; the rest it leaves to `lock`."""
    stack_config = read_stack_config("prod")
    with pytest.raises(ConfigError) as caught:
        load_spec(stack_config.config, stack_config.secret_keys)
    named = {p.split(":", 2)[1].removeprefix("images.") for p in caught.value.problems}
    assert named == SHIPPED_UNPINNED, caught.value.problems
    assert all("run `python -m stacks lock prod`" in p for p in caught.value.problems)


@pytest.mark.parametrize(
    "placeholder",
    [
        "0" * 64,
        "0123456789abcdef" * 4,
        "deadbeef" * 8,
        "5f0e2d1f8b6c3a9e7d4c2b1a0f9e8d7c6b5a4938271605f4e3d2c1b0a9f8e7d6",
        "9c1a3e5b7d9f1a3c5e7b9d1f3a5c7e9b1d3f5a7c9e1b3d5f7a9c1e3b5d7f9a1c",
    ],
)
def test_prod_refuses_a_placeholder_digest_naming_the_key(placeholder: str) -> None:
    doc = base()
    doc["images"]["caddy"] = doc["images"]["caddy"].split("@")[0] + "@sha256:" + placeholder
    doc["models"][0]["digest"] = placeholder
    with pytest.raises(ConfigError) as caught:
        load_spec(encode(doc))
    problems = caught.value.problems
    assert any(p.startswith("cluster-ai:images.caddy: sha256:") and "placeholder" in p for p in problems), problems
    assert any(p.startswith("cluster-ai:models[0].digest: ") and "placeholder" in p for p in problems), problems


def test_real_digests_are_not_taken_for_placeholders() -> None:
    """The digests the shipped stack keeps, and 10,000 computed ones, all pass."""
    from infra.config import looks_made_up

    shipped = [
        ref.split("@sha256:")[1]
        for ref in json.loads(read_stack_config("prod").config[NS + "images"]).values()
        if "@" in ref
    ]
    assert len(shipped) == 12
    computed = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(10_000)]
    assert [d for d in shipped + computed if looks_made_up(d)] == []


# --- what the text plan shows a reviewer ------------------------------------------------------


def test_the_text_plan_shows_every_command_script_and_its_decoded_ruleset() -> None:
    from stacks.plan import render_text

    evaluation = _evaluate(base())
    text = render_text(evaluation)
    block = text.split("gpu1-bootstrap-run", 1)[1].split("command:remote:Command", 1)[0]
    assert "stdin:\n" in block and "| set -euo pipefail" in block, block[:800]
    assert "stdin FIREWALL_B64 (decoded):" in block and "| table inet cluster_ai {" in block, block[:800]
    assert "chain input" in block and "policy drop" in block
    drain = text.split("dask-workers-gpu1-drain", 1)[1]
    assert "create:\n" in drain and "delete:\n" in drain
    for line in text.splitlines():
        assert line.replace("\t", " ").isprintable(), f"a control character in the plan: {line!r}"
