"""The offline toolchain's pins (ci/versions.env) agree with what the program runs.

ci/toolchain.sh builds the Pulumi CLI at PULUMI_VERSION and the bridged providers
from ci/providers/go.mod; the Python SDK comes from pyproject.toml. A CLI built at
one version while the venv runs another, or a go.mod drifting from the pins the
cache key and docs/engine.md state, is caught here.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import tomllib
from importlib import resources
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VERSIONS = ROOT / "ci" / "versions.env"
GO_MOD = ROOT / "ci" / "providers" / "go.mod"


def read_env(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a shell env file (comments and blanks skipped)."""
    pins: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Z][A-Z0-9_]*", key), f"{path}:{number}: not KEY=VALUE: {line!r}"
        assert key not in pins, f"{path}:{number}: {key} set twice"
        pins[key] = value
    return pins


def go_mod_versions(path: Path) -> dict[str, str]:
    """Module -> version of every require and replace target in a go.mod."""
    versions: dict[str, str] = {}
    text = path.read_text()
    for module, version in re.findall(r"^\s*(?:require\s+)?([\w./-]+) (v[\w.+-]+)(?: // indirect)?$", text, re.M):
        versions[module] = version
    for source, target, version in re.findall(r"^\s*(?:replace\s+)?([\w./-]+) => ([\w./-]+) (v[\w.+-]+)$", text, re.M):
        versions[f"{source} => {target}"] = version
    return versions


@pytest.fixture(scope="module")
def pins() -> dict[str, str]:
    return read_env(VERSIONS)


def pulumi_requirement() -> str:
    """The `pulumi` requirement string of pyproject.toml's dependencies."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found = [dep for dep in project["dependencies"] if re.match(r"pulumi\s*[=<>!~]", dep)]
    assert len(found) == 1, f"pyproject.toml: expected one `pulumi` requirement, found {found}"
    return found[0]


def test_pyproject_pins_pulumi_to_the_cli_version(pins: dict[str, str]) -> None:
    assert pulumi_requirement().replace(" ", "") == f"pulumi=={pins['PULUMI_VERSION']}", (
        "pyproject.toml's pulumi pin and ci/versions.env PULUMI_VERSION differ: the CLI "
        "ci/toolchain.sh builds must be the SDK's version"
    )


def test_installed_pulumi_sdk_is_the_pinned_version(pins: dict[str, str]) -> None:
    assert importlib.metadata.version("pulumi") == pins["PULUMI_VERSION"], (
        "the venv's pulumi differs from ci/versions.env PULUMI_VERSION: run `make deps`"
    )


@pytest.mark.parametrize("name", ["docker", "tls", "random", "command"])
def test_recorded_sdk_plugin_versions_match_installed_sdks(pins: dict[str, str], name: str) -> None:
    plugin = json.loads(resources.files(f"pulumi_{name}").joinpath("pulumi-plugin.json").read_text())
    assert plugin["version"] == pins[f"SDK_PULUMI_{name.upper()}_VERSION"], (
        f"pulumi_{name} asks for plugin {plugin['version']}; ci/versions.env records "
        f"SDK_PULUMI_{name.upper()}_VERSION={pins[f'SDK_PULUMI_{name.upper()}_VERSION']}"
    )


def test_providers_go_mod_uses_the_pinned_pulumi_and_bridge(pins: dict[str, str]) -> None:
    versions = go_mod_versions(GO_MOD)
    expected = {
        "github.com/pulumi/pulumi/pkg/v3": f"v{pins['PULUMI_VERSION']}",
        "github.com/pulumi/pulumi/sdk/v3": f"v{pins['PULUMI_VERSION']}",
        "github.com/pulumi/pulumi-terraform-bridge/v3": pins["PULUMI_TERRAFORM_BRIDGE_VERSION"],
        "github.com/hashicorp/terraform-plugin-sdk/v2 => github.com/pulumi/terraform-plugin-sdk/v2": pins[
            "TERRAFORM_PLUGIN_SDK_FORK_VERSION"
        ],
        "github.com/terraform-providers/terraform-provider-docker => github.com/kreuzwerker/terraform-provider-docker": pins[
            "TF_PROVIDER_DOCKER_VERSION"
        ],
        "github.com/terraform-providers/terraform-provider-random": pins["TF_PROVIDER_RANDOM_VERSION"],
        "github.com/hashicorp/terraform-provider-tls": pins["TF_PROVIDER_TLS_VERSION"],
    }
    wrong = {module: (versions.get(module), want) for module, want in expected.items() if versions.get(module) != want}
    assert not wrong, f"ci/providers/go.mod disagrees with ci/versions.env (module: (go.mod, pin)): {wrong}"


@pytest.mark.parametrize(
    ("shim", "module", "key"),
    [
        ("random", "github.com/terraform-providers/terraform-provider-random", "TF_PROVIDER_RANDOM_VERSION"),
        ("tls", "github.com/hashicorp/terraform-provider-tls", "TF_PROVIDER_TLS_VERSION"),
        (
            "docker",
            "github.com/terraform-providers/terraform-provider-docker => github.com/kreuzwerker/terraform-provider-docker",
            "TF_PROVIDER_DOCKER_VERSION",
        ),
    ],
)
def test_shim_modules_require_the_pinned_upstream_provider(
    pins: dict[str, str], shim: str, module: str, key: str
) -> None:
    path = ROOT / "ci" / "providers" / "shims" / shim / "go.mod"
    assert go_mod_versions(path).get(module) == pins[key], (
        f"{path}: {module} is not at ci/versions.env {key}={pins[key]}"
    )


def test_versions_env_rejects_malformed_lines(tmp_path: Path) -> None:
    bad = tmp_path / "versions.env"
    bad.write_text("# comment\nPULUMI_VERSION=3.260.0\nnot a pin\n")
    with pytest.raises(AssertionError, match=r"versions.env:3: not KEY=VALUE"):
        read_env(bad)
