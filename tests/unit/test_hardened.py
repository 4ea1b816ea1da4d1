"""components/hardened.py on its own: the secure defaults and the guards every container gets.

The stack tests see these through the services the program declares; here the
helper gets specs no service sends (a task, a host path, a bad value) and each
input it turns into a container property is read back from what it registers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pulumi
import pytest

from components.hardened import (
    CONFIG_DIR,
    LOG_OPTS,
    MASK_TMPFS,
    MAX_RESTARTS,
    RESTART_POLICY,
    SECRET_ENV_LOADER,
    SECRETS_DIR,
    Healthcheck,
    HostPath,
    Mount,
    NetworkAttachment,
    Publish,
    ServiceContainer,
    child_options,
    cpus_text,
    data_volume,
    go_duration,
    hardened_container,
)
from stacks.mocks import Evaluation, Resource, Secret, evaluate_program

CONTAINER = "docker:index/container:Container"
VOLUME = "docker:index/volume:Volume"
SPEC = ServiceContainer(
    service="svc",
    image="example/svc:1",
    networks=[NetworkAttachment("net-a", aliases=["svc"]), NetworkAttachment("net-b")],
    healthcheck=Healthcheck(["CMD", "true"], interval_s=10, timeout_s=3, retries=4, start_period_s=60),
    memory_mb=256,
    cpus=0.5,
    labels={"cluster-ai.stack": "test"},
)


class Host(pulumi.ComponentResource):
    """A component to declare containers under, as every service component does."""

    def __init__(self, declare: Callable[[pulumi.ResourceOptions], Any]) -> None:
        super().__init__("cluster-ai:test:Host", "host", {}, None)
        declare(pulumi.ResourceOptions(parent=self))
        self.register_outputs({})


def declare(spec: ServiceContainer | Callable[[], ServiceContainer], name: str = "svc", **opts: Any) -> Evaluation:
    """Evaluate `spec` under a component; a callable builds the spec inside the program (Outputs
    belong to the program's event loop)."""

    def program() -> None:
        nonlocal spec
        if callable(spec):
            spec = spec()
        Host(
            lambda child: hardened_container(
                name, spec, pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(**opts))
            )
        )

    return evaluate_program(program, project="cluster-ai", stack="test", config={})


def container(ev: Evaluation, name: str = "svc") -> Resource:
    [found] = [r for r in ev.by_type(CONTAINER) if r.name == name]
    return found


def labels(resource: Resource) -> dict[str, str]:
    return {i["label"]: i["value"] for i in resource.plain_inputs()["labels"]}


# -- the defaults every service container gets -------------------------------------------


def test_a_service_gets_every_secure_default() -> None:
    svc = container(declare(SPEC))
    inputs = svc.plain_inputs()
    assert inputs["capabilities"] == {"drops": ["ALL"]}, svc.urn
    assert inputs["securityOpts"] == ["no-new-privileges:true"], svc.urn
    assert inputs["privileged"] is False and inputs["readOnly"] is True and inputs["init"] is True, svc.urn
    assert (inputs["memory"], inputs["memorySwap"], inputs["cpus"]) == (256, 256, "0.5"), svc.urn
    assert (inputs["logDriver"], inputs["logOpts"]) == ("json-file", LOG_OPTS), svc.urn
    assert (inputs["restart"], inputs["maxRetryCount"]) == (RESTART_POLICY, MAX_RESTARTS), svc.urn
    assert inputs["destroyGraceSeconds"] == 30, svc.urn
    assert "ports" not in inputs and "mounts" not in inputs and "tmpfs" not in inputs, svc.urn
    assert inputs["networksAdvanced"] == [{"name": "net-a", "aliases": ["svc"]}, {"name": "net-b"}], svc.urn
    assert labels(svc) == {
        "cluster-ai.stack": "test",
        "cluster-ai.service": "svc",
        "cluster-ai.container": "svc",
        "cluster-ai.managed-by": "pulumi",
    }, svc.urn


def test_the_image_is_pinned_through_the_remote_image_and_kept_locally() -> None:
    ev = declare(SPEC)
    [image] = ev.by_type("docker:index/remoteImage:RemoteImage")
    assert (image.name, image.plain_inputs()) == ("svc-image", {"name": "example/svc:1", "keepLocally": True})
    assert container(ev).plain_inputs()["image"] == image.outputs["imageId"], "the container runs the image's id"


def test_a_service_is_waited_on_until_its_healthcheck_passes() -> None:
    svc = container(declare(SPEC)).plain_inputs()
    assert svc["healthcheck"] == {
        "tests": ["CMD", "true"],
        "interval": "10s",
        "timeout": "3s",
        "retries": 4,
        "startPeriod": "1m0s",
    }
    # The start period, then every retry: what the healthcheck itself allows before "unhealthy".
    assert (svc["wait"], svc["waitTimeout"]) == (True, 60 + 10 * (4 + 1))
    assert container(declare(replace(SPEC, wait_healthy=False))).plain_inputs()["wait"] is False


def test_a_task_runs_once_and_up_waits_for_its_end() -> None:
    task = replace(SPEC, healthcheck=None, run_once=True)
    inputs = container(declare(task)).plain_inputs()
    assert {k: inputs.get(k) for k in ("restart", "mustRun", "attach", "logs", "wait")} == {
        "restart": "no",
        "mustRun": False,
        "attach": True,
        "logs": True,
        "wait": False,
    }
    assert "healthcheck" not in inputs and "maxRetryCount" not in inputs


def test_capabilities_added_are_sorted_and_the_host_pid_namespace_is_declared_label_disable() -> None:
    inputs = container(declare(replace(SPEC, cap_add=["SYS_TIME", "NET_RAW"], pid_mode="host"))).plain_inputs()
    assert inputs["capabilities"] == {"drops": ["ALL"], "adds": ["NET_RAW", "SYS_TIME"]}
    assert inputs["pidMode"] == "host"
    assert inputs["securityOpts"] == ["no-new-privileges:true", "label=disable"]


def test_ports_are_published_on_their_address_and_the_container_is_replaced_stopped_first() -> None:
    ev = declare(replace(SPEC, publish=[Publish(8080, 3000, "127.0.0.1")]))
    svc = container(ev)
    assert svc.plain_inputs()["ports"] == [{"internal": 8080, "external": 3000, "ip": "127.0.0.1", "protocol": "tcp"}]
    assert svc.delete_before_replace, f"{svc.urn}: a published port cannot be held by two containers"
    assert not container(declare(SPEC)).delete_before_replace, "nothing held: create before delete"


def test_volumes_scratch_space_and_host_paths_are_mounted_as_declared() -> None:
    spec = replace(
        SPEC,
        mounts=[Mount("data-vol", "/data"), Mount("ro-vol", "/ro", read_only=True)],
        scratch=["/spill"],
        tmpfs={"/tmp": "rw,size=64m"},
        host_paths=[
            HostPath("/", "/host", propagation="rslave", masks=("/run", "/var/run")),
            HostPath("/sys", "/host/sys"),
        ],
    )
    svc = container(declare(spec))
    inputs = svc.plain_inputs()
    assert inputs["mounts"] == [
        {"type": "volume", "source": "data-vol", "target": "/data", "readOnly": False},
        {"type": "volume", "source": "ro-vol", "target": "/ro", "readOnly": True},
        {"type": "volume", "target": "/spill"},
        {"type": "bind", "source": "/", "target": "/host", "readOnly": True, "bindOptions": {"propagation": "rslave"}},
        {"type": "bind", "source": "/sys", "target": "/host/sys", "readOnly": True},
    ], svc.urn
    assert inputs["tmpfs"] == {"/tmp": "rw,size=64m", "/host/run": MASK_TMPFS, "/host/var/run": MASK_TMPFS}
    assert svc.delete_before_replace, f"{svc.urn}: a data volume cannot be held by two containers"


# -- files: secrets and config go in through a holder --------------------------------------


def test_secret_files_and_env_are_files_in_a_volume_of_their_own_read_only_in_the_service() -> None:
    ev = declare(
        lambda: replace(
            SPEC,
            command=["serve"],
            secret_files={"db.password": pulumi.Output.secret("s3cret")},
            secret_env={"API_TOKEN": pulumi.Output.secret("t0ken")},
            config_files={"/app.yml": "a: 1\n"},
        )
    )
    svc, holder = container(ev), container(ev, "svc-files")
    volumes = {v.name: v for v in ev.by_type(VOLUME)}
    assert set(volumes) == {"svc-secrets", "svc-config"}
    for kind, volume in (("secrets", volumes["svc-secrets"]), ("config", volumes["svc-config"])):
        assert labels(volume) == {"cluster-ai.stack": "test", "cluster-ai.service": "svc", "cluster-ai.volume": kind}
    inputs = svc.plain_inputs()
    assert inputs["mounts"] == [
        {"type": "volume", "source": volumes["svc-secrets"].outputs["name"], "target": SECRETS_DIR, "readOnly": True},
        {"type": "volume", "source": volumes["svc-config"].outputs["name"], "target": CONFIG_DIR, "readOnly": True},
    ]
    # No secret in the environment: the loader reads /run/secrets/env.* at start.
    assert inputs["entrypoints"] == ["/bin/sh", "-c", SECRET_ENV_LOADER, "load-secret-env"]
    assert inputs["command"] == ["serve"] and inputs["envs"] == []
    uploads = holder.plain_inputs()["uploads"]
    assert [(u["file"], u["content"], u["permissions"]) for u in uploads] == [
        (f"{SECRETS_DIR}/db.password", "s3cret", "0444"),
        (f"{SECRETS_DIR}/env.API_TOKEN", "t0ken", "0444"),
        (f"{CONFIG_DIR}/app.yml", "a: 1\n", "0444"),
    ]
    assert holder.urn in svc.dependencies, "the service starts after its files are in"


def test_the_holder_is_created_never_started_with_no_network_and_labelled_as_such() -> None:
    ev = declare(lambda: replace(SPEC, secret_files={"k": pulumi.Output.secret("v")}))
    holder = container(ev, "svc-files")
    inputs = holder.plain_inputs()
    assert {
        k: inputs[k] for k in ("start", "mustRun", "networkMode", "restart", "readOnly", "memory", "memorySwap")
    } == {
        "start": False,
        "mustRun": False,
        "networkMode": "none",
        "restart": "no",
        "readOnly": False,
        "memory": 16,
        "memorySwap": 16,
    }
    assert inputs["capabilities"] == {"drops": ["ALL"]} and inputs["securityOpts"] == ["no-new-privileges:true"]
    assert labels(holder)["cluster-ai.role"] == "file-holder" and labels(holder)["cluster-ai.container"] == "svc-files"
    assert holder.parent == container(ev).parent, "the holder sits beside its service"


def test_new_files_replace_the_service_and_the_services_own_trigger_is_kept() -> None:
    ev = declare(lambda: replace(SPEC, secret_files={"k": pulumi.Output.secret("v")}))
    holder_id = "svc-files-id"  # the mocks give every resource `<name>-id`
    assert container(ev).replacement_trigger == holder_id
    both = declare(lambda: replace(SPEC, secret_files={"k": pulumi.Output.secret("v")}), replacement_trigger="model-1")
    assert container(both).replacement_trigger == ["model-1", holder_id]
    assert container(declare(SPEC, replacement_trigger="model-1")).replacement_trigger == "model-1"


def test_plain_env_and_output_env_are_key_equals_value_in_name_order() -> None:
    spec = lambda: replace(SPEC, env={"ZED": "1", "ALPHA": pulumi.Output.from_input("two")})  # noqa: E731
    assert container(declare(spec)).plain_inputs()["envs"] == ["ALPHA=two", "ZED=1"]


# -- the guards ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (replace(SPEC, networks=[]), "svc: a service container needs at least one private network"),
        (
            replace(SPEC, pid_mode="container:x"),
            "svc: pid_mode may only be 'host' (an exporter reading the host's processes)",
        ),
        (
            replace(SPEC, healthcheck=None),
            "svc: a service needs a healthcheck, and only a task (run_once) goes without one",
        ),
        (
            replace(SPEC, run_once=True),
            "svc: a service needs a healthcheck, and only a task (run_once) goes without one",
        ),
        (
            lambda: replace(SPEC, secret_env={"K": pulumi.Output.secret("v")}),
            "svc: secret_env needs the image's command and no entrypoint override",
        ),
        (
            lambda: replace(SPEC, command=["x"], entrypoint=["/x"], secret_env={"K": pulumi.Output.secret("v")}),
            "svc: secret_env needs the image's command and no entrypoint override",
        ),
    ],
    ids=[
        "no-network",
        "pid-mode",
        "service-without-healthcheck",
        "task-with-healthcheck",
        "secret-env-no-command",
        "secret-env-entrypoint",
    ],
)
def test_a_spec_the_helper_cannot_harden_is_refused_naming_the_container(
    spec: ServiceContainer | Callable[[], ServiceContainer], message: str
) -> None:
    with pytest.raises(ValueError) as raised:
        declare(spec)
    assert str(raised.value) == message


def test_a_container_outside_a_component_is_refused() -> None:
    def program() -> None:
        hardened_container("loose", SPEC, pulumi.ResourceOptions())

    with pytest.raises(ValueError, match=r"^hardened resources are always declared as children of a component$"):
        evaluate_program(program, project="cluster-ai", stack="test", config={})


@pytest.mark.parametrize(("address", "public"), [("0.0.0.0", False), ("::", False)])
def test_publishing_on_every_address_is_refused_unless_public(address: str, public: bool) -> None:
    with pytest.raises(ValueError) as raised:
        Publish(80, 8080, address, public)
    assert str(raised.value) == f"port 8080: refusing to publish on {address}"
    assert Publish(443, 443, address, public=True).public


# -- host paths --------------------------------------------------------------------------------


@pytest.mark.parametrize(("source", "target"), [("host", "/host"), ("/", "host"), ("relative/dir", "/x")])
def test_a_host_path_must_be_absolute_on_both_sides(source: str, target: str) -> None:
    with pytest.raises(ValueError) as raised:
        HostPath(source, target)
    assert str(raised.value) == f"host path {source} -> {target}: both must be absolute"


@pytest.mark.parametrize(
    ("source", "masks", "missing"),
    [("/", (), "/run, /var/run"), ("/", ("/run",), "/var/run"), ("/var", (), "/var/run"), ("/var/", (), "/var/run")],
    ids=["root", "root-half-masked", "var", "var-trailing-slash"],
)
def test_a_host_path_above_a_socket_directory_must_mask_it(source: str, masks: tuple[str, ...], missing: str) -> None:
    with pytest.raises(ValueError) as raised:
        HostPath(source, "/host", masks=masks)
    assert str(raised.value) == f"host path {source}: mask {missing} (the container engine's socket)"


@pytest.mark.parametrize(
    "source",
    ["/run", "/run/", "/var/run", "/var/run/docker.sock", "/run/containerd", "/run/user/1000", "/srv/app/api.sock"],
)
def test_a_host_path_to_an_engine_socket_or_its_directory_is_refused(source: str) -> None:
    with pytest.raises(ValueError) as raised:
        HostPath(source, "/host")
    assert str(raised.value) == (
        f"host path {source}: refusing to mount the container engine's socket or its directory"
    )


def test_a_mask_must_lie_below_the_host_path() -> None:
    with pytest.raises(ValueError) as raised:
        HostPath("/var", "/host", masks=("/var/run", "/etc"))
    assert str(raised.value) == "host path /var: mask /etc is not below it"
    HostPath("/var", "/host", masks=("/var/run",))  # below it: accepted
    HostPath("/", "/host", masks=("/run", "/var/run"))


@pytest.mark.parametrize("propagation", [None, "rslave", "slave", "rprivate", "private"])
def test_propagation_that_cannot_reach_the_host_is_accepted(propagation: str | None) -> None:
    assert HostPath("/sys", "/host/sys", propagation=propagation).propagation == propagation


@pytest.mark.parametrize("propagation", ["rshared", "shared", "RSLAVE"])
def test_propagation_that_could_reach_the_host_is_refused(propagation: str) -> None:
    with pytest.raises(ValueError) as raised:
        HostPath("/sys", "/host/sys", propagation=propagation)
    assert str(raised.value) == f"host path /sys: propagation {propagation!r} could reach the host"


def test_paths_beside_the_socket_directories_need_no_mask() -> None:
    for source in ("/sys", "/proc", "/var/lib", "/runner", "/var/runs"):
        assert HostPath(source, "/host").source == source


# -- data volumes, options, spellings ------------------------------------------------------------


@pytest.mark.parametrize("protect", [True, False])
def test_a_data_volume_is_labelled_and_protected_and_retained_exactly_when_asked(protect: bool) -> None:
    ev = evaluate_program(
        lambda: (
            Host(
                lambda child: data_volume(
                    "pg-data", "postgres", protect=protect, labels={"cluster-ai.stack": "t"}, opts=child
                )
            )
            and None
        ),
        project="cluster-ai",
        stack="test",
        config={},
    )
    [volume] = ev.by_type(VOLUME)
    assert labels(volume) == {"cluster-ai.stack": "t", "cluster-ai.service": "postgres", "cluster-ai.volume": "data"}
    assert (volume.protect, volume.retain_on_delete) == (protect, protect), volume.urn


def test_child_options_parent_to_the_component_and_carry_its_dependencies() -> None:
    component = object.__new__(pulumi.ComponentResource)
    dep = object.__new__(pulumi.CustomResource)
    options = child_options(component, pulumi.ResourceOptions(depends_on=[dep]))  # type: ignore[arg-type]
    assert options.parent is component and options.depends_on == [dep]
    assert child_options(component, None).depends_on is None


def test_durations_and_cpus_are_spelled_as_the_provider_reads_them_back() -> None:
    assert [go_duration(s) for s in (0, 5, 59, 60, 61, 3599, 3600, 3661)] == [
        "0s", "5s", "59s", "1m0s", "1m1s", "59m59s", "1h0m0s", "1h1m1s",
    ]  # fmt: skip
    with pytest.raises(ValueError, match=r"^a duration cannot be negative: -1$"):
        go_duration(-1)
    assert [cpus_text(c) for c in (1, 2.0, 0.5, 0.25, 1.125, 0.001)] == ["1.0", "2.0", "0.5", "0.25", "1.125", "0.001"]


def test_an_upload_stays_secret_and_a_plain_config_file_does_not_become_one() -> None:
    ev = declare(lambda: replace(SPEC, secret_files={"k": pulumi.Output.secret("v")}, config_files={"c.yml": "x"}))
    holder = container(ev, "svc-files")
    assert isinstance(holder.inputs["uploads"], Secret), "an upload list holding a secret is secret as a whole"


def test_masks_land_under_the_target_whatever_the_trailing_slashes() -> None:
    spec = replace(SPEC, host_paths=[HostPath("/var", "/host/var/", masks=("/var/run",))])
    assert container(declare(spec)).plain_inputs()["tmpfs"] == {"/host/var/run": MASK_TMPFS}
    spec = replace(SPEC, host_paths=[HostPath("/", "/rootfs/", masks=("/run", "/var/run"))])
    assert container(declare(spec)).plain_inputs()["tmpfs"] == {
        "/rootfs/run": MASK_TMPFS,
        "/rootfs/var/run": MASK_TMPFS,
    }


def test_everything_declared_for_a_container_uses_the_hosts_provider() -> None:
    def program() -> None:
        def on_host(child: pulumi.ResourceOptions) -> None:
            import pulumi_docker as docker

            provider = docker.Provider("gpu1", host="unix:///run/gpu1.sock", opts=child)
            spec = replace(SPEC, secret_files={"k": pulumi.Output.secret("v")})
            hardened_container(
                "svc", spec, pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(provider=provider))
            )

        Host(on_host)

    ev = evaluate_program(program, project="cluster-ai", stack="test", config={})
    [provider] = [r for r in ev.resources if r.type == "pulumi:providers:docker"]
    declared = [r for r in ev.resources if r.type.startswith("docker:index/")]
    assert {r.name for r in declared} == {"svc", "svc-files", "svc-image", "svc-secrets"}
    for resource in declared:
        assert resource.provider_urn == provider.urn, f"{resource.urn} is not placed on the host's engine"


def test_the_services_entrypoint_command_user_and_gpus_are_passed_through() -> None:
    spec = replace(SPEC, entrypoint=["/bin/app"], command=["--serve"], user="1000:1000", gpus="device=0")
    inputs = container(declare(spec)).plain_inputs()
    assert (inputs["entrypoints"], inputs["command"]) == (["/bin/app"], ["--serve"])
    assert (inputs["user"], inputs["gpus"]) == ("1000:1000", "device=0")
    plain = container(declare(SPEC)).plain_inputs()
    assert not {"entrypoints", "command", "user", "gpus", "pidMode"} & set(plain), "the image's own, unless declared"


def test_the_holder_mounts_the_services_file_volumes_writable_and_is_not_privileged() -> None:
    ev = declare(lambda: replace(SPEC, secret_files={"k": pulumi.Output.secret("v")}, config_files={"c.yml": "x"}))
    inputs = container(ev, "svc-files").plain_inputs()
    volumes = {v.name: v.outputs["name"] for v in ev.by_type(VOLUME)}
    assert inputs["privileged"] is False
    assert inputs["mounts"] == [
        {"type": "volume", "source": volumes["svc-secrets"], "target": SECRETS_DIR},
        {"type": "volume", "source": volumes["svc-config"], "target": CONFIG_DIR},
    ], "the holder is where the files are written: its mounts are not read-only"


def test_every_resource_of_a_container_is_a_child_and_only_the_container_waits_for_other_services() -> None:
    def program() -> None:
        def on_host(child: pulumi.ResourceOptions) -> None:
            import pulumi_docker as docker

            network = docker.Network("before", opts=child)
            spec = replace(SPEC, secret_files={"k": pulumi.Output.secret("v")}, config_files={"c.yml": "x"})
            hardened_container(
                "svc", spec, pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[network]))
            )

        Host(on_host)

    ev = evaluate_program(program, project="cluster-ai", stack="test", config={})
    [host] = [r for r in ev.resources if r.type == "cluster-ai:test:Host"]
    [network] = [r for r in ev.resources if r.name == "before"]
    declared = [r for r in ev.resources if r.type.startswith("docker:index/") and r.name != "before"]
    assert {r.name for r in declared} == {"svc", "svc-files", "svc-image", "svc-secrets", "svc-config"}
    for resource in declared:
        assert resource.parent == host.urn, f"{resource.urn}: parent {resource.parent}"
        # Pulling the image and writing the files go ahead; starting the service waits.
        waits = resource.name == "svc"
        assert (network.urn in resource.dependencies) is waits, f"{resource.urn}: {resource.dependencies}"


def test_a_config_file_lands_under_the_config_directory_whatever_its_first_letter() -> None:
    ev = declare(lambda: replace(SPEC, config_files={"/Xorg.conf": "x", "/etc/X/y.conf": "y"}))
    uploads = container(ev, "svc-files").plain_inputs()["uploads"]
    assert [u["file"] for u in uploads] == [f"{CONFIG_DIR}/Xorg.conf", f"{CONFIG_DIR}/etc/X/y.conf"]


def test_a_host_path_ending_in_any_letter_is_compared_as_a_whole_path() -> None:
    with pytest.raises(ValueError, match="mask /srv/Y is not below it"):
        HostPath("/srv/X", "/host", masks=("/srv/Y",))
    spec = replace(SPEC, host_paths=[HostPath("/X/", "/host", masks=("/X/run",))])
    assert container(declare(spec)).plain_inputs()["tmpfs"] == {"/host/run": MASK_TMPFS}
    spec = replace(SPEC, host_paths=[HostPath("/", "/rootX", masks=("/run", "/var/run"))])
    assert container(declare(spec)).plain_inputs()["tmpfs"] == {"/rootX/run": MASK_TMPFS, "/rootX/var/run": MASK_TMPFS}
