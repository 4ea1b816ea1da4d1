"""bench/converge.py renders a compose file of the same containers the dev stack deploys.

The export is built from the real program's evaluation of Pulumi.e2e.yaml (models
[]) under the SDK's mocks, shaped as `pulumi stack export --show-secrets` shapes it:
secrets wrapped with their plaintext JSON-encoded. The benchmark's timings are not
tested (they are a benchmark); what it compares against is.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from stacks.mocks import Evaluation, Secret
from stacks.plan import evaluate_stack
from stacks.stackfile import REPO

SIG = "4dabf18193072939515e22adb298388d"


@pytest.fixture(scope="module")
def converge() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_converge", REPO / "bench" / "converge.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_converge"] = module
    spec.loader.exec_module(module)
    return module


def exported(value: Any) -> Any:
    """A mock input value as a state export with --show-secrets holds it."""
    if isinstance(value, Secret):
        return {SIG: "1b47061264138c4ac30d75fd1eb44270", "plaintext": json.dumps(plain(value.value))}
    if isinstance(value, dict):
        return {k: exported(v) for k, v in value.items()}
    if isinstance(value, list):
        return [exported(v) for v in value]
    return value


def plain(value: Any) -> Any:
    if isinstance(value, Secret):
        return plain(value.value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


@pytest.fixture(scope="module")
def evaluation() -> Evaluation:
    return evaluate_stack("e2e", overrides={"cluster-ai:models": "[]"})


@pytest.fixture(scope="module")
def export(evaluation: Evaluation) -> dict[str, Any]:
    resources = [
        {
            "urn": r.urn,
            "type": r.type,
            "custom": r.custom,
            "parent": r.parent,
            "dependencies": list(r.dependencies),
            "inputs": exported(r.inputs),
            "outputs": exported(r.outputs),
        }
        for r in evaluation.resources
    ]
    return {"version": 3, "deployment": {"resources": resources}}


@pytest.fixture(scope="module")
def rendered(converge: ModuleType, export: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Any:
    return converge.render_compose(export, tmp_path_factory.mktemp("files"), "cluster-ai-test")


def containers(evaluation: Evaluation) -> dict[str, dict[str, Any]]:
    """Each container's declared inputs, with the name the engine gave it (an output)."""
    return {
        r.name: {**r.plain_inputs(), "name": r.outputs["name"]}
        for r in evaluation.by_type("docker:index/container:Container")
    }


def labels(inputs: dict[str, Any]) -> dict[str, str]:
    return {item["label"]: item["value"] for item in inputs.get("labels") or []}


def test_every_service_container_is_a_compose_service_and_only_holders_and_the_task_are_left_out(
    rendered: Any, evaluation: Evaluation
) -> None:
    declared = containers(evaluation)
    holders = {n for n, c in declared.items() if labels(c).get("cluster-ai.role") == "file-holder"}
    tasks = {n for n, c in declared.items() if not c.get("healthcheck") and n not in holders}
    assert tasks == {"ollama-local-model-sync"}, tasks
    assert set(rendered.compose["services"]) == set(declared) - holders - tasks
    assert set(rendered.left_out) == holders | tasks
    assert not rendered.unrendered, f"container properties the compose file would drop: {rendered.unrendered}"


def test_services_keep_the_containers_runtime_settings(rendered: Any, evaluation: Evaluation) -> None:
    images = {
        r.outputs["imageId"]: r.inputs["name"] for r in evaluation.by_type("docker:index/remoteImage:RemoteImage")
    }
    for name, service in rendered.compose["services"].items():
        declared = containers(evaluation)[name]
        assert service["container_name"] == declared["name"], name
        assert service["image"] == images[declared["image"]] and service["image"].startswith("127.0.0.1:5000/"), name
        assert service["read_only"] is bool(declared.get("readOnly")), name
        assert service["cap_drop"] == ["ALL"], name
        assert service["security_opt"] == list(declared["securityOpts"]), name
        assert "no-new-privileges:true" in service["security_opt"], name
        assert service["mem_limit"] == f"{int(declared['memory'])}m", name
        assert service["memswap_limit"] == f"{int(declared['memorySwap'])}m", name
        assert service["cpus"] == float(declared["cpus"]), name
        assert service["healthcheck"]["test"] == declared["healthcheck"]["tests"], name
        assert service.get("environment", []) == declared.get("envs", []), name
        assert service.get("user") == declared.get("user"), name
        assert service.get("entrypoint") == declared.get("entrypoints"), name
        assert service.get("command") == declared.get("command"), name
        assert service["init"] is True and service["restart"].startswith("on-failure:"), name


def test_published_ports_stay_on_loopback_and_internal_networks_stay_internal(
    rendered: Any, evaluation: Evaluation
) -> None:
    published = [p for s in rendered.compose["services"].values() for p in s.get("ports", [])]
    assert published, "the dev stack publishes ports (the proxy, Grafana, ...)"
    assert all(p["host_ip"] == "127.0.0.1" for p in published), published
    internal = {
        r.inputs["name"] for r in evaluation.by_type("docker:index/network:Network") if r.inputs.get("internal")
    }
    assert internal, "the dev stack has internal networks"
    rendered_internal = {n["name"] for n in rendered.compose["networks"].values() if n.get("internal")}
    assert rendered_internal == internal


def test_uploaded_files_become_read_only_binds_at_the_volume_paths(rendered: Any, evaluation: Evaluation) -> None:
    webui = rendered.compose["services"]["webui"]
    binds = [v for v in webui["volumes"] if v["type"] == "bind"]
    assert any(v["target"] == "/run/secrets" and v["read_only"] for v in binds), webui["volumes"]
    secret_files = [(path, mode) for path, (_, mode) in rendered.files.items() if "webui-secrets" in str(path)]
    assert secret_files and all(mode == 0o444 for _, mode in secret_files), secret_files
    # The holders' volumes are not compose volumes: the files are bound instead.
    assert not any("secrets" in key or "config" in key for key in rendered.compose["volumes"]), rendered.compose[
        "volumes"
    ]


def test_every_bind_of_uploaded_files_exists_once_written_with_the_holders_content(
    rendered: Any, evaluation: Evaluation, tmp_path: Path
) -> None:
    rendered.write(tmp_path)
    binds = [
        Path(v["source"])
        for s in rendered.compose["services"].values()
        for v in s.get("volumes", [])
        if v["type"] == "bind" and v["source"].startswith(str(rendered.files_dir))
    ]
    assert binds, "the services mount their secrets and config from the holders' files"
    missing = [str(b) for b in binds if not b.is_dir()]
    assert not missing, f"bind sources not written: {missing}"
    holder = next(r for r in evaluation.by_type("docker:index/container:Container") if r.name == "webui-files")
    volume = holder.plain_inputs()["mounts"][0]["source"]
    for upload in holder.plain_inputs()["uploads"]:
        written = rendered.files_dir / volume / upload["file"].removeprefix("/run/secrets/")
        assert written.read_text() == upload["content"], upload["file"]


def test_dependencies_become_healthy_conditions(rendered: Any) -> None:
    webui = rendered.compose["services"]["webui"]
    assert {"postgres", "redis"} <= set(webui.get("depends_on", {})), webui.get("depends_on")
    assert all(d == {"condition": "service_healthy"} for d in webui["depends_on"].values())


def test_the_written_file_escapes_dollars_so_compose_passes_them_through(
    converge: ModuleType, rendered: Any, tmp_path: Path
) -> None:
    written = yaml.safe_load(rendered.write(tmp_path).read_text())
    entrypoint = written["services"]["webui"]["entrypoint"]
    # The secret-env loader is a shell script full of `$f`: compose would expand them.
    assert any("$$f" in part for part in entrypoint), entrypoint
    assert converge.escape_interpolation({"a": ["x$y"]}) == {"a": ["x$$y"]}


def test_an_export_without_show_secrets_is_refused_clearly(converge: ModuleType) -> None:
    with pytest.raises(converge.BenchError, match="--show-secrets"):
        converge.reveal({SIG: "1b47061264138c4ac30d75fd1eb44270", "ciphertext": "v1:abc"})


def test_the_doc_section_is_replaced_not_duplicated(converge: ModuleType, tmp_path: Path) -> None:
    doc = tmp_path / "performance.md"
    doc.write_text("# Performance\n\nplan scaling stays.\n")
    converge.write_doc(f"{converge.DOC_BEGIN}\nfirst\n{converge.DOC_END}\n", doc)
    converge.write_doc(f"{converge.DOC_BEGIN}\nsecond\n{converge.DOC_END}\n", doc)
    text = doc.read_text()
    assert "plan scaling stays." in text and "second" in text and "first" not in text
    assert text.count(converge.DOC_BEGIN) == 1


def fake_run(
    converge: ModuleType, cold: float, compose_up: float, noop: float, changes: dict[str, int]
) -> dict[str, Any]:
    seconds = {
        "cold_up": cold,
        "noop_up": noop,
        "noop_up_stacks": noop + 2,
        "refresh": 5.0,
        "destroy": 20.0,
        "compose_up": compose_up,
        "compose_down": 10.0,
    }
    return {"run": 1, "seconds": seconds, "ratios": converge.ratios(seconds), "noopChanges": changes}


def test_targets_pass_and_fail_on_the_worst_run(converge: ModuleType) -> None:
    good = fake_run(converge, 90.0, 80.0, 11.0, {"same": 120})
    verdicts = {v["target"]: v["pass"] for v in converge.verdicts([good])}
    assert all(verdicts.values()), verdicts
    slow = fake_run(converge, 130.0, 80.0, 16.0, {"same": 119, "update": 1})
    verdicts = {v["target"]: v["pass"] for v in converge.verdicts([good, slow])}
    assert verdicts == {
        "no-op up <= 15 s": False,
        "no-op `python -m stacks up` <= 15 s": False,
        "cold up <= 1.5x compose up": False,
        "no-op up changes nothing": False,
    }


def test_the_doc_section_has_a_row_per_run_and_the_verdicts(converge: ModuleType) -> None:
    runs = [fake_run(converge, 90.0, 80.0, 12.0, {"same": 120}), fake_run(converge, 100.0, 80.0, 13.0, {"same": 120})]
    runs[1]["run"] = 2
    facts = {"cpus": 2, "loadavg": "1.00 1.00 1.00", "docker": "20.10", "compose": "2.40.3", "pulumi": "pulumi v3"}
    section = converge.doc_section(converge.report(runs, facts))
    assert section.startswith(converge.DOC_BEGIN) and section.rstrip().endswith(converge.DOC_END)
    assert "| 1 | 90.0 | 80.0 | 1.12 | 12.0 | 14.0 |" in section, section
    assert "| 2 | 100.0 | 80.0 | 1.25 | 13.0 | 15.0 |" in section, section
    assert "| cold up <= 1.5x compose up | 1.25x | PASS |" in section, section


def test_volumes_keep_their_driver_options(rendered: Any, evaluation: Evaluation) -> None:
    declared = {
        r.outputs["name"]: r.plain_inputs()
        for r in evaluation.by_type("docker:index/volume:Volume")
        if r.plain_inputs().get("driverOpts")
    }
    assert declared, "the dev stack has a volume with driver options (the textfile tmpfs)"
    volumes = {v["name"]: v for v in rendered.compose["volumes"].values()}
    for name, inputs in declared.items():
        assert volumes[name]["driver_opts"] == inputs["driverOpts"], name
        assert volumes[name]["driver"] == inputs["driver"], name
