"""Every sink of a plan where config text could turn into code, and the real tools that read them.

A plan is safe when each of its shell scripts parses (`bash -n`) to the same
structure as the plan of a plain config, each firewall ruleset loads in `nft -c`,
and each Caddyfile adapts (`caddy adapt`) to the same routes. "Structure" is what
the real parser makes of the text with every literal (quoted string, base64
payload, heredoc body) blanked out: bash's own re-printing of the script as a
function body (`declare -f`), Caddy's JSON with every string value blanked but
handler names. A value that stays data changes only literals; a value that
escapes its quotes adds commands, lines or routes.
"""

from __future__ import annotations

import base64
import datetime
import functools
import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from stacks.mocks import Evaluation

COMMAND_TYPES = ("command:remote:Command", "command:local:Command")
CONTAINER = "docker:index/container:Container"
SHELLS = ("sh", "bash", "/bin/sh", "/bin/bash")
PAYLOAD = re.compile(r"^([A-Z][A-Z0-9_]*_B64)='([A-Za-z0-9+/=]*)'$", re.M)
TOOL_TIMEOUT_S = 30


@dataclass(frozen=True)
class Sink:
    """One piece of text a tool will read: where it is (resource name and field) and the text."""

    where: str
    text: str


def shell_scripts(evaluation: Evaluation) -> list[Sink]:
    """Commands' create/update/delete/stdin, `sh -c` container commands, CMD-SHELL healthchecks
    and uploaded `.sh` files."""
    out: list[Sink] = []
    for r in evaluation.resources:
        inputs = r.plain_inputs()
        if r.type in COMMAND_TYPES:
            out += [
                Sink(f"{r.name}.{f}", str(inputs[f])) for f in ("create", "update", "delete", "stdin") if inputs.get(f)
            ]
        if r.type != CONTAINER:
            continue
        for field in ("entrypoint", "command"):
            argv = [str(a) for a in inputs.get(field) or []]
            if len(argv) >= 3 and argv[0] in SHELLS and argv[1] == "-c":
                out.append(Sink(f"{r.name}.{field}", argv[2]))
        tests = [str(t) for t in (inputs.get("healthcheck") or {}).get("tests") or []]
        if len(tests) >= 2 and tests[0] == "CMD-SHELL":
            out.append(Sink(f"{r.name}.healthcheck", tests[1]))
        for upload in inputs.get("uploads") or []:
            if str(upload.get("file", "")).endswith(".sh") and upload.get("content") is not None:
                out.append(Sink(f"{r.name}:{upload['file']}", str(upload["content"])))
    return out


def firewall_rulesets(evaluation: Evaluation) -> list[Sink]:
    """The nftables rulesets the bootstrap scripts carry (`FIREWALL_B64`), decoded."""
    out = []
    for script in shell_scripts(evaluation):
        for name, encoded in PAYLOAD.findall(script.text):
            if name == "FIREWALL_B64":
                out.append(Sink(script.where, base64.b64decode(encoded).decode()))
    return out


def caddyfiles(evaluation: Evaluation) -> list[Sink]:
    out = []
    for r in evaluation.by_type(CONTAINER):
        for upload in r.plain_inputs().get("uploads") or []:
            if str(upload.get("file", "")).endswith("Caddyfile"):
                out.append(Sink(r.name, str(upload["content"])))
    return out


def _run(argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, check=False)


def shell_structure(script: str) -> str:
    """bash's own reading of `script` with every literal blanked; AssertionError if it does not parse.

    The script is parsed as the body of a function and printed back by bash
    (`declare -f`): bash re-prints what it parsed, one command per line.
    """
    if "\x00" in script:
        raise AssertionError("a NUL byte in a script")
    checked = _run(["bash", "-n"], script)
    assert checked.returncode == 0, f"bash -n refuses the script: {checked.stderr.strip()}"
    body = re.sub(r"^#!.*\n", "", script)
    printed = _run(["bash", "-c", f"__plan() {{\n{body}\n}}\ndeclare -f __plan"])
    assert printed.returncode == 0, f"bash cannot re-print the script: {printed.stderr.strip()}"
    text = printed.stdout
    text = PAYLOAD.sub(lambda m: f"{m[1]}='_'", text)
    text = re.sub(r"'[^']*'", "'_'", text)
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '"_"', text)
    # An assignment's plain word (`HOST=gpu1`) is a literal too.
    return re.sub(r"\b([A-Za-z_][A-Za-z0-9_]*)=[^\s;'\"]+", r"\1=_", text)


def nft_check(ruleset: str) -> None:
    """`nft -c -f` in a network namespace of its own (checking needs no table of the host's)."""
    with tempfile.NamedTemporaryFile("w", suffix=".nft") as f:
        f.write(ruleset)
        f.flush()
        result = _run(["unshare", "-n", "nft", "-c", "-f", f.name])
    assert result.returncode == 0, f"nft -c refuses the ruleset: {result.stderr.strip()}"


def _blank(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _blank(v, k) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [_blank(v) for v in value]
    if isinstance(value, str) and key != "handler":
        return "_"
    return value


SECRETS_DIR = "/run/secrets/"


@functools.cache
def _test_ca_pem() -> str:
    """A throwaway self-signed certificate: adapting a Caddyfile reads the CA files it names."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sinks-test-ca")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def caddy_structure(caddyfile: str) -> Any:
    """What `caddy adapt` makes of a Caddyfile, every string but handler names blanked.

    The files it names under /run/secrets are a test certificate in a temporary directory.
    """
    with tempfile.TemporaryDirectory() as d:
        for name in set(re.findall(re.escape(SECRETS_DIR) + r"([A-Za-z0-9._-]+)", caddyfile)):
            (Path(d) / name).write_text(_test_ca_pem())
        caddyfile = caddyfile.replace(SECRETS_DIR, d + "/")
        path = Path(d) / "Caddyfile"
        path.write_text(caddyfile)
        result = _run(["caddy", "adapt", "--config", str(path), "--adapter", "caddyfile"])
    assert result.returncode == 0, f"caddy adapt refuses the Caddyfile: {result.stderr.strip()[-400:]}"
    return _blank(json.loads(result.stdout))


def missing_tools() -> list[str]:
    return [tool for tool in ("bash", "nft", "caddy", "unshare") if shutil.which(tool) is None]


@dataclass(frozen=True)
class SinkStructure:
    """The structure of every sink of a plan, keyed by where it is."""

    shell: dict[str, str]
    caddy: dict[str, Any]
    rulesets: int


def structure_of(evaluation: Evaluation) -> SinkStructure:
    """Parse every sink with the real tool (asserting it is accepted) and return its structure."""
    for ruleset in firewall_rulesets(evaluation):
        nft_check(ruleset.text)
    return SinkStructure(
        shell={s.where: shell_structure(s.text) for s in shell_scripts(evaluation)},
        caddy={s.where: caddy_structure(s.text) for s in caddyfiles(evaluation)},
        rulesets=len(firewall_rulesets(evaluation)),
    )


def assert_same_structure(hostile: SinkStructure, plain: SinkStructure, label: str) -> None:
    """Every script and Caddyfile of the hostile plan has a twin of the same structure in the
    plain plan (matched by structure, not name: a value may rename a host and its resources)."""
    assert sorted(hostile.shell.values()) == sorted(plain.shell.values()), (
        f"{label}: the scripts parse to other structures: "
        f"{sorted(k for k, v in hostile.shell.items() if v not in plain.shell.values())}"
    )
    shapes = sorted(json.dumps(v, sort_keys=True) for v in hostile.caddy.values())
    assert shapes == sorted(json.dumps(v, sort_keys=True) for v in plain.caddy.values()), (
        f"{label}: a Caddyfile adapts to other routes: "
        f"{sorted(k for k, v in hostile.caddy.items() if v not in plain.caddy.values())}"
    )
    assert hostile.rulesets == plain.rulesets, f"{label}: {hostile.rulesets} rulesets, not {plain.rulesets}"
