"""Components on their own: naming, parenting, outputs and the hardened defaults' guards."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pulumi
import pytest

from components.dask import DaskScheduler, DaskWorkerPool
from components.hardened import Healthcheck, NetworkAttachment, Publish, ServiceContainer, hardened_container
from components.host import DockerHost
from components.ollama import Ollama
from components.postgres import Postgres
from components.redis import Redis, redis_conf
from components.webui import OpenWebUI
from stacks.mocks import Evaluation, Secret, evaluate_program

LABELS = {"cluster-ai.stack": "test"}


def run(program) -> Evaluation:  # type: ignore[no-untyped-def]
    return evaluate_program(program, project="cluster-ai", stack="test", config={})


def two_of_everything() -> None:
    for suffix in ("a", "b"):
        host = DockerHost(
            f"host-{suffix}", {"docker_host": "unix:///var/run/docker.sock", "labels": LABELS, "data_network": True}
        )
        opts = pulumi.ResourceOptions(providers=[host.provider])
        net = host.network.name
        pg = Postgres(
            f"pg-{suffix}",
            {
                "image": "postgres:16.6",
                "network": net,
                "database": "db",
                "user": "u",
                "memory_mb": 256,
                "cpus": 1,
                "protect": False,
                "labels": LABELS,
            },
            opts,
        )
        rd = Redis(
            f"rd-{suffix}",
            {"image": "redis:7.4.1", "network": net, "memory_mb": 128, "cpus": 1, "protect": False, "labels": LABELS},
            opts,
        )
        sched = DaskScheduler(
            f"sched-{suffix}",
            {
                "image": "ghcr.io/dask/dask:2026.8.0-py3.12",
                "network": net,
                "port": 8786,
                "dashboard_port": 8787,
                "memory_mb": 256,
                "cpus": 1,
                "labels": LABELS,
            },
            opts,
        )
        DaskWorkerPool(
            f"pool-{suffix}",
            {
                "image": "ghcr.io/dask/dask:2026.8.0-py3.12",
                "network": net,
                "scheduler_address": sched.address,
                "count": 2,
                "nthreads": 1,
                "memory_mb": 1024,
                "memory_limit_bytes": 800 * 2**20,
                "cpus": 1,
                "gpus_per_worker": 1,
                "labels": LABELS,
            },
            opts,
        )
        ollama = Ollama(
            f"ol-{suffix}",
            {
                "image": "ollama/ollama:0.13.5",
                "network": net,
                "models": [{"name": "qwen2.5:0.5b", "digest": None}],
                "sync_image": "ghcr.io/dask/dask:2026.8.0-py3.12",
                "memory_mb": 1024,
                "cpus": 1,
                "sync_memory_mb": 256,
                "sync_cpus": 0.5,
                "protect": False,
                "labels": LABELS,
            },
            opts,
        )
        ui = OpenWebUI(
            f"ui-{suffix}",
            {
                "image": "ghcr.io/open-webui/open-webui:v0.6.5",
                "networks": [net],
                "database_url": pg.url,
                "redis_url": rd.url,
                "ollama_urls": [ollama.url],
                "admin_email": "a@b.c",
                "admin_name": "A",
                "admin_password": pulumi.Output.secret("pw"),
                "name": "UI",
                "memory_mb": 512,
                "cpus": 1,
                "protect": False,
                "labels": LABELS,
            },
            opts,
        )
        pulumi.export(f"pg-url-{suffix}", pg.url)
        pulumi.export(f"rd-url-{suffix}", rd.url)
        pulumi.export(f"ui-key-{suffix}", ui.secret_key)


def test_two_instances_of_each_component_do_not_collide() -> None:
    ev = run(two_of_everything)
    counts = Counter(r.urn for r in ev)
    assert [u for u, n in counts.items() if n > 1] == []
    names = Counter((r.type, r.name) for r in ev)
    assert [k for k, n in names.items() if n > 1] == []


def test_children_are_parented_and_prefixed_by_their_component() -> None:
    ev = run(two_of_everything)
    components = {r.urn: r for r in ev if not r.custom}
    for r in ev:
        if r.custom:
            parent = components.get(r.parent or "")
            assert parent is not None, f"{r.urn} has no component parent"
            assert r.name.startswith(parent.name + "-") or r.name == parent.name, (
                f"{r.urn} is not named after {parent.name}"
            )


def test_component_children_inherit_the_hosts_provider() -> None:
    ev = run(two_of_everything)
    providers = {p.name: p.urn for p in ev.by_type("pulumi:providers:docker")}
    for r in ev:
        if r.type.startswith("docker:"):
            suffix = (
                r.name.split("-")[1]
                if r.name.startswith(("host-", "pg-", "rd-", "sched-", "pool-", "ol-", "ui-"))
                else None
            )
            assert suffix in ("a", "b"), r.urn
            assert r.provider_urn == providers[f"host-{suffix}-docker"], f"{r.urn} is placed on the wrong host"


def test_connection_urls_and_keys_are_secret_outputs() -> None:
    ev = run(two_of_everything)
    for key in ("pg-url-a", "rd-url-a", "ui-key-a"):
        assert isinstance(ev.exports[key], Secret), key
    assert ev.exports["pg-url-a"].value.endswith("@postgres:5432/db")


def test_gpu_workers_each_get_their_own_device() -> None:
    ev = run(two_of_everything)
    pool = sorted(
        (r for r in ev.by_type("docker:index/container:Container") if r.name.startswith("pool-a-")),
        key=lambda r: r.name,
    )
    assert [w.plain_inputs()["gpus"] for w in pool] == ["device=0", "device=1"]
    for w in pool:
        command = w.plain_inputs()["command"]
        assert command[command.index("--resources") + 1] == "GPU=1", w.urn


def _container(
    publish: tuple[Publish, ...] = (), networks: tuple[NetworkAttachment, ...] = (NetworkAttachment("n"),)
) -> ServiceContainer:
    return ServiceContainer(
        service="x",
        image="busybox:1.36",
        networks=networks,
        healthcheck=Healthcheck(["CMD", "true"]),
        memory_mb=64,
        cpus=1,
        publish=publish,
    )


def test_publishing_on_the_unspecified_address_is_refused() -> None:
    with pytest.raises(ValueError, match=r"refusing to publish on 0\.0\.0\.0"):
        Publish(80, 8080, "0.0.0.0")
    with pytest.raises(ValueError, match="refusing to publish on ::"):
        Publish(80, 8080, "::")


def test_a_container_without_a_private_network_is_refused() -> None:
    def program() -> None:
        class Holder(pulumi.ComponentResource):
            def __init__(self) -> None:
                super().__init__("cluster-ai:test:Holder", "h", {}, None)
                hardened_container("h-c", _container(networks=()), pulumi.ResourceOptions(parent=self))

        Holder()

    with pytest.raises(ValueError, match="needs at least one private network"):
        run(program)


def test_redis_conf_requires_the_password_and_disables_admin_commands() -> None:
    conf = redis_conf("s3cret", 256)
    assert "requirepass s3cret" in conf
    assert "protected-mode yes" in conf
    assert 'rename-command CONFIG ""' in conf
    assert "maxmemory 192mb" in conf


def test_a_secret_file_stays_secret_even_when_the_caller_passes_a_plain_value() -> None:
    """`secret_files` takes Outputs; one that is not marked secret is marked by the helper."""

    def program() -> None:
        class Holder(pulumi.ComponentResource):
            def __init__(self) -> None:
                super().__init__("cluster-ai:test:Holder", "h", {}, None)
                spec = _container()
                plain = pulumi.Output.from_input("hunter2-plain")  # the caller forgot Output.secret
                spec = ServiceContainer(**{**spec.__dict__, "secret_files": {"token": plain}})
                hardened_container("h-c", spec, pulumi.ResourceOptions(parent=self))

        Holder()

    ev = run(program)
    container = ev.named("h-c")
    holder = ev.files_of(container)
    assert "uploads" not in container.inputs, f"{container.urn}: the service carries no uploads, its holder does"
    uploads = holder.inputs["uploads"]
    assert isinstance(uploads, Secret), f"{holder.urn}: uploads are not secret: {uploads!r}"
    (upload,) = ev.uploads_of(container)
    assert isinstance(upload["content"], Secret), holder.urn
    assert upload["file"] == "/run/secrets/token" and upload["content"].value == "hunter2-plain", holder.urn
    # Root-owned and read-only for all: the volume is mounted (read-only) by this one service.
    assert upload["permissions"] == "0444" and "owner" not in upload and "group" not in upload, holder.urn


@pytest.mark.parametrize(
    ("overrides", "ca_hours", "leaf_hours", "renewal_hours"),
    [
        ({}, 3650 * 24, 365 * 24, 30 * 24),
        ({"caValidityDays": 730, "certValidityDays": 90, "earlyRenewalDays": 10}, 730 * 24, 90 * 24, 10 * 24),
    ],
    ids=["defaults", "configured"],
)
def test_issued_certificates_are_valid_for_the_configured_days_in_hours(
    stack_with: Callable[..., Evaluation], overrides: dict[str, int], ca_hours: int, leaf_hours: int, renewal_hours: int
) -> None:
    """pulumi-tls takes hours: a days value passed as hours would issue 365-hour certificates."""
    ev = stack_with("prod", tls=overrides) if overrides else stack_with("prod")
    cas = ev.by_type("tls:index/selfSignedCert:SelfSignedCert")
    leaves = ev.by_type("tls:index/locallySignedCert:LocallySignedCert")
    assert len(cas) == 2 and len(leaves) >= 10, (len(cas), len(leaves))
    for cert, hours in [(c, ca_hours) for c in cas] + [(c, leaf_hours) for c in leaves]:
        inputs = cert.plain_inputs()
        assert inputs["validityPeriodHours"] == hours, f"{cert.urn}: {inputs['validityPeriodHours']} h, want {hours}"
        assert inputs["earlyRenewalHours"] == renewal_hours, f"{cert.urn}: renews {inputs['earlyRenewalHours']} h early"
        assert (inputs.get("isCaCertificate") is True) == (cert in cas), cert.urn
