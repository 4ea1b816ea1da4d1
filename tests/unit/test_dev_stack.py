"""The dev stack's resource graph, evaluated under the SDK's mocks."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import pytest

from stacks.mocks import Evaluation, Resource, Secret, contains_secret, is_file_holder, plain_strings

CONTAINER = "docker:index/container:Container"
REMOTE_IMAGE = "docker:index/remoteImage:RemoteImage"
VOLUME = "docker:index/volume:Volume"
NETWORK = "docker:index/network:Network"
PROVIDER = "pulumi:providers:docker"
PASSWORD = "random:index/randomPassword:RandomPassword"
HEAD_NODE = "cluster-ai:index:HeadNode"
WORKER_NODE = "cluster-ai:index:WorkerNode"

DIGEST = "a8b0c51577010a279d933d14c2a8ab4b268079d44c5c8830c0a93900f1827c67"
# components/monitoring.py: the host's exporters and the head's monitoring stack (tests/unit/test_monitoring.py).
MONITORING_CONTAINERS = [
    "exporters-local-alloy",
    "exporters-local-backup-metrics",
    "exporters-local-cadvisor",
    "exporters-local-node-exporter",
    "monitoring-alertmanager",
    "monitoring-blackbox",
    "monitoring-grafana",
    "monitoring-loki",
    "monitoring-postgres-exporter",
    "monitoring-prometheus",
    "monitoring-redis-exporter",
]


def containers(ev: Evaluation) -> dict[str, Resource]:
    """The service and task containers by name; file holders (`<name>-files`) are not services."""
    return {r.name: r for r in ev.by_type(CONTAINER) if not is_file_holder(r)}


def env_of(container: Resource) -> dict[str, str]:
    return dict(e.split("=", 1) for e in container.plain_inputs().get("envs", []))


def network_names_of(container: Resource) -> list[str]:
    return [n["name"] for n in container.plain_inputs().get("networksAdvanced", [])]


def aliases_on(container: Resource) -> dict[str, list[str]]:
    return {n["name"]: n.get("aliases", []) for n in container.plain_inputs().get("networksAdvanced", [])}


def test_dev_declares_every_core_service(dev: Evaluation) -> None:
    components = sorted((r.type, r.name) for r in dev if not r.custom)
    assert components == [
        ("cluster-ai:index:DaskScheduler", "dask-scheduler"),
        ("cluster-ai:index:DaskWorkerPool", "dask-workers-local"),
        ("cluster-ai:index:DockerHost", "local"),
        ("cluster-ai:index:HeadNode", "local"),
        ("cluster-ai:index:HostExporters", "exporters-local"),
        ("cluster-ai:index:MonitoringStack", "monitoring"),
        ("cluster-ai:index:Ollama", "ollama-local"),
        ("cluster-ai:index:OpenWebUI", "webui"),
        ("cluster-ai:index:Postgres", "postgres"),
        ("cluster-ai:index:PostgresBackup", "postgres-backup"),
        ("cluster-ai:index:Redis", "redis"),
    ]
    assert sorted(containers(dev)) == [
        "dask-scheduler",
        "dask-workers-local-0",
        *MONITORING_CONTAINERS,
        "ollama-local",
        "ollama-local-model-sync",
        "postgres",
        "postgres-backup",
        "redis",
        "webui",
    ]


def test_dev_uses_one_local_docker_provider_for_everything(dev: Evaluation) -> None:
    providers = dev.by_type(PROVIDER)
    assert [p.plain_inputs()["host"] for p in providers] == ["unix:///var/run/docker.sock"]
    provider_urn = providers[0].urn
    for r in dev:
        if r.type.startswith("docker:"):
            assert r.provider_urn == provider_urn, f"{r.urn} is not placed with the local Docker provider"


def test_dev_publishes_only_the_seed_ports_and_only_on_loopback(dev: Evaluation) -> None:
    published = {}
    for c in dev.by_type(CONTAINER):
        for port in c.plain_inputs().get("ports", []):
            assert port.get("ip") == "127.0.0.1", f"{c.urn} publishes {port} beyond loopback"
            published[int(port["external"])] = (c.name, int(port["internal"]))
    assert published == {
        3000: ("webui", 8080),
        8786: ("dask-scheduler", 8786),
        8787: ("dask-scheduler", 8787),
        11434: ("ollama-local", 11434),
        3001: ("monitoring-grafana", 3000),
    }
    for name in ("postgres", "redis", "dask-workers-local-0"):
        assert not containers(dev)[name].plain_inputs().get("ports"), f"{name} must not publish a port"


@pytest.mark.parametrize(
    "name", ["dask-scheduler", "dask-workers-local-0", "ollama-local", "postgres", "postgres-backup", "redis", "webui"]
)
def test_every_container_has_the_hardened_defaults(dev: Evaluation, name: str) -> None:
    c = containers(dev)[name]
    inputs = c.plain_inputs()
    urn = c.urn
    assert inputs["capabilities"] == {"drops": ["ALL"]}, urn
    assert inputs["securityOpts"] == ["no-new-privileges:true"], urn
    assert inputs["privileged"] is False, urn
    assert inputs["memory"] > 0 and inputs["memorySwap"] == inputs["memory"], urn
    assert float(inputs["cpus"]) > 0, urn
    assert inputs["restart"] == "on-failure" and inputs["maxRetryCount"] == 5, urn
    assert inputs["healthcheck"]["tests"][0] in ("CMD", "CMD-SHELL"), urn
    assert inputs["wait"] is True, urn
    assert inputs["logDriver"] == "json-file" and inputs["logOpts"] == {
        "max-size": "10m",
        "max-file": "3",
        # Each log line carries these labels, for the log shipper (components/hardened.py LOG_OPTS).
        "labels": "cluster-ai.container,cluster-ai.host,cluster-ai.service",
    }, urn
    labels = {lab["label"]: lab["value"] for lab in inputs["labels"]}
    assert labels["cluster-ai.stack"] == "dev" and labels["cluster-ai.managed-by"] == "pulumi", urn
    assert labels["cluster-ai.service"], urn
    assert network_names_of(c), f"{urn} is on no private network"
    assert "networkMode" not in inputs, f"{urn} must not use Docker's default bridge"


def test_containers_run_read_only_except_open_webui(dev: Evaluation) -> None:
    writable = sorted(n for n, c in containers(dev).items() if not c.plain_inputs()["readOnly"])
    # Open WebUI writes into its install tree at start (see components/webui.py).
    assert writable == ["webui"]


def test_every_container_runs_its_pinned_image_by_image_id(dev: Evaluation) -> None:
    for c in dev.by_type(CONTAINER):
        image_deps = c.property_dependencies.get("image", ())
        images = [dev.get(u) for u in image_deps]
        assert [i.type for i in images] == [REMOTE_IMAGE], f"{c.urn} image is not a RemoteImage's image_id"
        image = images[0]
        assert c.plain_inputs()["image"] == image.outputs["imageId"], c.urn
        reference = image.plain_inputs()["name"]
        assert ":" in reference.rsplit("/", 1)[-1] and not reference.endswith(":latest"), f"{image.urn}: {reference}"


def test_non_root_users_where_the_images_allow(dev: Evaluation) -> None:
    users = {n: c.plain_inputs().get("user") for n, c in containers(dev).items() if n not in MONITORING_CONTAINERS}
    assert users == {
        "dask-scheduler": "1000:1000",
        "dask-workers-local-0": "1000:1000",
        "postgres": "999:999",
        "postgres-backup": "999:999",
        "redis": "999:999",
        "ollama-local-model-sync": "65534:65534",
        # These two images keep their state under root-owned paths (documented in their components).
        "ollama-local": None,
        "webui": None,
    }


def test_workers_connect_to_the_scheduler_on_a_shared_network(dev: Evaluation) -> None:
    c = containers(dev)
    scheduler_aliases = aliases_on(c["dask-scheduler"])
    worker = c["dask-workers-local-0"]
    command = worker.plain_inputs()["command"]
    assert command[:3] == ["dask", "worker", "tcp://scheduler:8786"], worker.urn
    shared = set(network_names_of(worker)) & set(scheduler_aliases)
    assert shared and all("scheduler" in scheduler_aliases[n] for n in shared), worker.urn


def test_worker_resources_derive_from_the_host_spec(dev: Evaluation) -> None:
    worker = containers(dev)["dask-workers-local-0"]
    command = worker.plain_inputs()["command"]
    flags = dict(zip(command[3::2], command[4::2], strict=False))
    # dev host: 4 CPUs, 16 GB, one CPU worker.
    assert flags["--nthreads"] == "4", worker.urn
    memory_mb = int(worker.plain_inputs()["memory"])
    assert int(flags["--memory-limit"]) == int(memory_mb * 0.85) * 1024 * 1024, worker.urn
    assert "--resources" not in command, f"{worker.urn}: a CPU worker declares no GPU resources"


def test_open_webui_is_wired_to_postgres_redis_and_every_ollama(dev: Evaluation) -> None:
    c = containers(dev)
    webui = c["webui"]
    env = env_of(webui)
    assert env["OLLAMA_BASE_URLS"] == "http://ollama:11434", webui.urn
    assert env["WEBSOCKET_MANAGER"] == "redis", webui.urn
    assert env["ENABLE_SIGNUP"] == "False", webui.urn
    assert env["ENABLE_PERSISTENT_CONFIG"] == "False", webui.urn
    assert env["WEBUI_ADMIN_EMAIL"] == "admin@cluster-ai.local", webui.urn
    for secret_var in ("DATABASE_URL", "REDIS_URL", "WEBUI_SECRET_KEY", "WEBUI_ADMIN_PASSWORD"):
        assert secret_var not in env, f"{webui.urn}: {secret_var} must not be a plain env value"
    uploads = {u["file"]: u["content"] for u in dev.uploads_of(webui)}
    database_url = uploads["/run/secrets/env.DATABASE_URL"]
    redis_url = uploads["/run/secrets/env.REDIS_URL"]
    assert isinstance(database_url, Secret) and isinstance(redis_url, Secret), webui.urn
    assert database_url.value.startswith("postgresql://openwebui:") and database_url.value.endswith(
        "@postgres:5432/openwebui"
    ), webui.urn
    assert redis_url.value.startswith("redis://:") and redis_url.value.endswith("@redis:6379/0"), webui.urn
    # The aliases those URLs name exist on a network Open WebUI is on.
    webui_nets = set(network_names_of(webui))
    assert any("postgres" in a for n, a in aliases_on(c["postgres"]).items() if n in webui_nets)
    assert any("redis" in a for n, a in aliases_on(c["redis"]).items() if n in webui_nets)
    assert any("ollama" in a for n, a in aliases_on(c["ollama-local"]).items() if n in webui_nets)


def test_the_secret_env_loader_wraps_the_image_command(dev: Evaluation) -> None:
    webui = containers(dev)["webui"].plain_inputs()
    assert webui["entrypoints"][:2] == ["/bin/sh", "-c"]
    assert webui["command"] == ["bash", "start.sh"]


def test_open_webui_keys_and_passwords_come_from_the_database_and_redis_passwords(dev: Evaluation) -> None:
    passwords = {r.name: r.outputs["result"] for r in dev.by_type(PASSWORD)}
    webui = {u["file"]: u["content"] for u in dev.uploads_of(containers(dev)["webui"])}
    assert passwords["postgres-password"] in webui["/run/secrets/env.DATABASE_URL"].value
    assert passwords["redis-password"] in webui["/run/secrets/env.REDIS_URL"].value
    assert webui["/run/secrets/env.WEBUI_SECRET_KEY"].value == passwords["webui-secret-key"]
    assert webui["/run/secrets/env.WEBUI_ADMIN_PASSWORD"].value == passwords["webui-admin-password"]


def test_no_generated_password_appears_outside_a_secret(dev: Evaluation) -> None:
    passwords = [r.outputs["result"] for r in dev.by_type(PASSWORD)]
    assert len(passwords) == 5  # PostgreSQL, Redis, Open WebUI's key and admin, Grafana's admin
    for r in dev:
        for text in plain_strings(r.inputs):
            for password in passwords:
                assert password not in text, f"{r.urn} carries a password in plain text"


def test_database_passwords_reach_the_containers_as_secret_files(dev: Evaluation) -> None:
    c = containers(dev)
    postgres = c["postgres"]
    assert env_of(postgres)["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres_password", postgres.urn
    upload = next(u for u in dev.uploads_of(postgres) if u["file"] == "/run/secrets/postgres_password")
    assert isinstance(upload["content"], Secret), postgres.urn
    # Root-owned, readable by all in a volume that only PostgreSQL mounts (and read-only).
    assert (upload["permissions"], upload.get("owner"), upload.get("group")) == ("0444", None, None), postgres.urn
    redis = c["redis"]
    conf = next(u["content"] for u in dev.uploads_of(redis) if u["file"] == "/run/secrets/redis.conf")
    assert isinstance(conf, Secret) and "requirepass " in conf.value, redis.urn
    assert redis.plain_inputs()["command"] == ["redis-server", "/run/secrets/redis.conf"], redis.urn


def test_admin_password_is_exported_as_a_secret(dev: Evaluation) -> None:
    assert isinstance(dev.exports["adminPassword"], Secret)
    assert dev.exports["webuiUrl"] == "http://127.0.0.1:3000"
    assert dev.exports["schedulerAddress"] == "tcp://127.0.0.1:8786"
    assert dev.exports["unpinnedModels"] == []


def test_data_volumes_are_mounted_and_not_protected_in_dev(dev: Evaluation) -> None:
    data = [
        v for v in dev.by_type(VOLUME) if {"label": "cluster-ai.volume", "value": "data"} in v.plain_inputs()["labels"]
    ]
    assert sorted(v.name for v in data) == [
        "monitoring-alertmanager-data",
        "monitoring-grafana-data",
        "monitoring-loki-data",
        "monitoring-prometheus-data",
        "ollama-local-models",
        "postgres-backup-data",
        "postgres-data",
        "redis-data",
        "webui-data",
    ]
    for v in data:
        assert not v.protect and not v.retain_on_delete, f"{v.urn}: dev volumes can be thrown away"
    mounted = {m["source"] for c in dev.by_type(CONTAINER) for m in c.plain_inputs().get("mounts", []) if "source" in m}
    assert {v.outputs["name"] for v in data} <= mounted


def test_stateful_and_publishing_containers_are_replaced_delete_first(dev: Evaluation) -> None:
    c = containers(dev)
    for name in ("postgres", "redis", "webui", "ollama-local", "dask-scheduler"):
        assert c[name].delete_before_replace, f"{c[name].urn} would collide with its replacement"
    assert not c["dask-workers-local-0"].delete_before_replace


def test_postgres_and_redis_sit_on_an_internal_network(dev: Evaluation) -> None:
    nets = {n.outputs["name"]: n for n in dev.by_type(NETWORK)}
    c = containers(dev)
    for name in ("postgres", "redis"):
        attached = network_names_of(c[name])
        assert [nets[n].plain_inputs().get("internal") for n in attached] == [True], c[name].urn


def test_model_sync_is_a_task_on_ollamas_network_that_pins_the_dev_model(dev: Evaluation) -> None:
    sync = dev.named("ollama-local-model-sync")
    assert sync.type == CONTAINER, f"{sync.urn}: the sync runs through the host's Docker provider"
    inputs = sync.plain_inputs()
    argv = inputs["command"]
    assert argv[:2] == ["python", "-c"] and argv[2].startswith('"""Converge an Ollama server'), sync.urn
    pins = json.loads(argv[argv.index("--pins") + 1])
    assert pins == [{"digest": DIGEST, "name": "qwen2.5:0.5b"}], sync.urn
    assert argv[argv.index("--url") + 1] == "http://ollama:11434", sync.urn
    # A task: up waits for it to exit and keeps its output; an exited task is not drift.
    assert (inputs["attach"], inputs["logs"], inputs["mustRun"], inputs["restart"]) == (True, True, False, "no")
    assert "healthcheck" not in inputs and not inputs.get("wait"), sync.urn
    assert inputs["user"] == "65534:65534" and inputs["readOnly"] is True, sync.urn
    ollama = containers(dev)["ollama-local"]
    assert ollama.urn in sync.dependencies, f"{sync.urn} must wait for Ollama"
    # The sync dials `ollama` on the host's network, where Ollama carries that alias.
    assert network_names_of(sync) == ["cluster-ai-dev-local"], f"{sync.urn} is not on the host's network"
    assert "ollama" in aliases_on(ollama)["cluster-ai-dev-local"], f"{ollama.urn} has no alias on the host's network"
    assert sync.replacement_trigger is not None and ollama.outputs.get("id", f"{ollama.name}-id") in str(
        sync.replacement_trigger
    ), f"{sync.urn}: a new Ollama container must replace (re-run) the sync"


def test_dev_stack_needs_no_command_provider(dev: Evaluation) -> None:
    """dev converges with the docker, tls and random providers alone (see docs/engine.md)."""
    commands = [r.urn for r in dev if r.type.startswith("command:")]
    assert commands == [], f"dev declares command resources: {commands}"


def test_every_resource_is_parented_to_a_component(dev: Evaluation) -> None:
    """The one host is one node at the top; each service component hangs under it; every
    resource under a component carries the component's name (stack-level secrets aside)."""
    components = {r.urn: r for r in dev if not r.custom}
    nodes = [r for r in components.values() if r.type in (HEAD_NODE, WORKER_NODE)]
    assert [(n.type, n.name) for n in nodes] == [(HEAD_NODE, "local")], "dev is one host: one node"
    for r in dev:
        if not r.custom:
            if r.type in (HEAD_NODE, WORKER_NODE):
                assert r.parent and r.parent.endswith("::cluster-ai-dev"), f"{r.urn}: a node is top-level"
            else:
                assert r.parent == nodes[0].urn, f"{r.urn} is not under the host's node"
        elif r.name == "webui-admin-password":
            continue  # a stack-level secret, generated when adminPassword is unset
        else:
            parent = components.get(r.parent or "")
            assert parent is not None and parent.type not in (HEAD_NODE, WORKER_NODE), (
                f"{r.urn} is not parented to a service component"
            )
            assert r.name.startswith(parent.name), f"{r.urn}: child names start with the component's name"


def test_preview_with_unknown_outputs_evaluates(stack_with: Callable[..., Evaluation]) -> None:
    ev = stack_with("dev", preview=True)
    assert len(containers(ev)) == 8 + len(MONITORING_CONTAINERS)
    # The file holders are declared during preview as on `up` (only their volumes' names are unknown).
    holders = sorted(r.name for r in ev.by_type(CONTAINER) if is_file_holder(r))
    assert holders and holders == sorted(r.name for r in stack_with("dev").by_type(CONTAINER) if is_file_holder(r))


def test_unpinned_dev_model_is_reported_in_the_plan(stack_with: Callable[..., Evaluation]) -> None:
    from stacks.plan import render_text

    ev = stack_with("dev", models=[{"name": "qwen2.5:0.5b"}])
    assert ev.exports["unpinnedModels"] == ["qwen2.5:0.5b"]
    assert "model qwen2.5:0.5b is UNPINNED" in render_text(ev)


def test_plan_text_redacts_every_secret(dev: Evaluation) -> None:
    from stacks.plan import render_json, render_text

    passwords = [r.outputs["result"] for r in dev.by_type(PASSWORD)]
    for rendered in (render_text(dev), render_json(dev)):
        for password in passwords:
            assert password not in rendered
    document = json.loads(render_json(dev))
    assert document["stack"] == "dev"
    assert {"urn", "type", "name", "parent", "inputs"} <= set(document["resources"][0])
    # Open WebUI's files travel in its holder, whose uploads the plan shows only as "[secret]".
    webui = next(r for r in document["resources"] if r["name"] == "webui-files" and r["type"] == CONTAINER)
    assert webui["inputs"]["uploads"] == "[secret]"
    assert contains_secret(dev.files_of(containers(dev)["webui"]).inputs["uploads"])


def test_dev_head_networks_keep_open_webui_and_grafana_to_what_they_use(dev: Evaluation) -> None:
    from tests.support.networks import attachments, dials, reachable_aliases

    nets = attachments(dev)
    assert set(nets["webui"]) == {"public", "data", "inference"}, containers(dev)["webui"].urn
    assert set(nets["ollama-local"]) == {"host", "inference"}, containers(dev)["ollama-local"].urn
    assert nets["ollama-local"]["inference"] == ["ollama"], "Open WebUI dials ollama:11434 on the inference network"
    assert set(nets["monitoring-grafana"]) == {"public", "observe"}, containers(dev)["monitoring-grafana"].urn
    public = sorted(name for name, joined in nets.items() if "public" in joined)
    # No proxy in dev: Open WebUI and Grafana publish on loopback from the public network.
    assert public == ["monitoring-blackbox", "monitoring-grafana", "webui"]
    assert reachable_aliases(dev, "webui") == {"postgres", "redis", "ollama", "grafana"}
    assert reachable_aliases(dev, "monitoring-grafana") == {"prometheus", "loki", "alertmanager", "webui"}
    for client, alias in [("ollama-local-model-sync", "ollama"), ("dask-workers-local-0", "scheduler"),
                          ("monitoring-prometheus", "dask-workers-local-0"), ("monitoring-blackbox", "ollama")]:  # fmt: skip
        assert dials(dev, client, alias), f"{containers(dev)[client].urn} cannot reach {alias}"


GO_DURATION = re.compile(r"^(?:[1-9]\d*h(?:[0-5]?\d)m(?:[0-5]?\d)s|[1-9]\d?m(?:[0-5]?\d)s|(?:[0-5]?\d)s)$")


def test_inputs_are_spelled_as_the_provider_reads_them_back(dev: Evaluation) -> None:
    """The real docker provider writes what it reads from the engine into its state: `cpus`
    as `1.0`/`0.5` and healthcheck durations as Go prints them (`1m0s`, never `60s`).
    Spelled otherwise, every `up` after the first replaces the container (found by the
    e2e tier's second `up`)."""
    from components.hardened import cpus_text, go_duration

    assert (cpus_text(1), cpus_text(0.5), cpus_text(2.25)) == ("1.0", "0.5", "2.25")
    assert (go_duration(15), go_duration(60), go_duration(90), go_duration(3600)) == ("15s", "1m0s", "1m30s", "1h0m0s")
    for c in dev.by_type(CONTAINER):
        inputs = c.plain_inputs()
        if "cpus" in inputs:
            assert re.fullmatch(r"\d+\.(?:0|\d*[1-9])", inputs["cpus"]), f"{c.urn}: cpus {inputs['cpus']!r}"
        for key in ("interval", "timeout", "startPeriod"):
            value = (inputs.get("healthcheck") or {}).get(key)
            if value is not None:
                assert GO_DURATION.fullmatch(value), f"{c.urn}: healthcheck {key} {value!r}"
