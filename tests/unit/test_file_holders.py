"""File holders: every service's secret and config files reach it through a container that is never started.

The engine copies an upload through the container's root, which a read-only root refuses,
so components/hardened.py declares beside each service with files a holder
(`<name>-files`): created, never started, no network, writable root, carrying every
upload into the service's secrets/config volumes. The service mounts those volumes
read-only, waits for its holder, and is replaced with it (replacement trigger).
"""

from __future__ import annotations

from typing import Any

import pytest

from components.hardened import CONFIG_DIR, SECRETS_DIR
from stacks.mocks import Evaluation, Resource, Secret, contains_secret, is_file_holder, labels_of
from stacks.plan import evaluate_stack

CONTAINER = "docker:index/container:Container"
FILE_DIRS = (SECRETS_DIR, CONFIG_DIR)


@pytest.fixture(scope="module", params=["dev", "prod"])
def ev(request: pytest.FixtureRequest) -> Evaluation:
    return evaluate_stack(request.param)


def _mounts(container: Resource) -> list[dict[str, Any]]:
    return list(container.plain_inputs().get("mounts") or [])


def file_mounts(container: Resource) -> dict[str, dict[str, Any]]:
    """target -> mount, for the volumes that hold a container's secret and config files."""
    return {m["target"]: m for m in _mounts(container) if m["type"] == "volume" and m["target"] in FILE_DIRS}


def services_with_files(ev: Evaluation) -> list[Resource]:
    return [c for c in ev.by_type(CONTAINER) if not is_file_holder(c) and file_mounts(c)]


def test_every_service_with_files_has_exactly_one_holder_and_no_holder_is_orphaned(ev: Evaluation) -> None:
    services = services_with_files(ev)
    holders = sorted(c.name for c in ev.by_type(CONTAINER) if is_file_holder(c))
    assert len(services) > 5, [c.name for c in services]
    assert holders == sorted(f"{c.name}-files" for c in services)
    for service in services:
        assert ev.files_of(service).name == f"{service.name}-files", service.urn


def test_a_holder_sits_beside_its_service_on_the_same_host(ev: Evaluation) -> None:
    for service in services_with_files(ev):
        holder = ev.files_of(service)
        assert holder.provider_urn == service.provider_urn, f"{holder.urn} is on another host than {service.urn}"
        assert holder.parent == service.parent, holder.urn
        assert holder.plain_inputs()["image"] == service.plain_inputs()["image"], f"{holder.urn}: a second image"
        holder_labels, service_labels = labels_of(holder), labels_of(service)
        assert holder_labels["cluster-ai.role"] == "file-holder", holder.urn
        assert holder_labels["cluster-ai.container"] == holder.name, f"{holder.urn}: `stacks status` finds it by this"
        for key in ("cluster-ai.service", "cluster-ai.host", "cluster-ai.stack"):
            assert holder_labels[key] == service_labels[key], f"{holder.urn}: {key}"


def test_a_holder_is_never_started_and_has_no_network(ev: Evaluation) -> None:
    for service in services_with_files(ev):
        holder = ev.files_of(service)
        inputs = holder.plain_inputs()
        assert (inputs["start"], inputs["mustRun"], inputs["restart"]) == (False, False, "no"), holder.urn
        assert inputs["networkMode"] == "none" and "networksAdvanced" not in inputs, holder.urn
        assert not inputs.get("ports") and not inputs.get("publishAllPorts"), holder.urn
        assert "healthcheck" not in inputs and not inputs.get("wait"), holder.urn
        # Writable root: the engine copies uploads in through it (the reason the holder exists).
        assert inputs["readOnly"] is False, holder.urn
        assert inputs["privileged"] is False and inputs["capabilities"] == {"drops": ["ALL"]}, holder.urn
        assert inputs["securityOpts"] == ["no-new-privileges:true"], holder.urn
        assert not inputs.get("command") and not inputs.get("envs"), f"{holder.urn} is given something to run"


def test_file_volumes_are_written_by_the_holder_and_read_only_in_the_service(ev: Evaluation) -> None:
    for service in services_with_files(ev):
        holder = ev.files_of(service)
        in_service, in_holder = file_mounts(service), file_mounts(holder)
        assert {t: m["source"] for t, m in in_holder.items()} == {t: m["source"] for t, m in in_service.items()}, (
            f"{holder.urn} fills other volumes than {service.urn} mounts"
        )
        assert len(_mounts(holder)) == len(in_holder), f"{holder.urn} mounts more than the file volumes"
        for target, mount in in_service.items():
            assert mount.get("readOnly") is True, f"{service.urn} can write {target}"
            assert not in_holder[target].get("readOnly"), f"{holder.urn} cannot fill {target}"


def test_only_the_service_and_its_holder_mount_its_secrets(ev: Evaluation) -> None:
    """Secret files are 0444 (see below): what keeps them the service's own is that no other container mounts them."""
    mounted_by: dict[str, set[str]] = {}
    for container in ev.by_type(CONTAINER):
        for mount in _mounts(container):
            if mount["type"] == "volume" and "source" in mount:
                mounted_by.setdefault(mount["source"], set()).add(container.name)
    for service in services_with_files(ev):
        for target, mount in file_mounts(service).items():
            assert mounted_by[mount["source"]] == {service.name, f"{service.name}-files"}, f"{service.urn}: {target}"


def test_the_service_waits_for_its_holder_and_is_replaced_with_it(ev: Evaluation) -> None:
    for service in services_with_files(ev):
        holder = ev.files_of(service)
        assert holder.urn in service.dependencies, f"{service.urn} may start before its files are in place"
        # The mocks give each resource the id `<name>-id`: new files (a new holder) mean a new service container.
        assert f"{holder.name}-id" in str(service.replacement_trigger), f"{service.urn}: {service.replacement_trigger}"
        assert "uploads" not in service.inputs, f"{service.urn} carries uploads into its read-only root"


def test_every_upload_lands_in_a_file_volume_readable_and_never_writable(ev: Evaluation) -> None:
    for service in services_with_files(ev):
        holder = ev.files_of(service)
        uploads = ev.uploads_of(service)
        assert uploads, f"{holder.urn} carries nothing"
        targets = file_mounts(service)
        for upload in uploads:
            directory = next((d for d in FILE_DIRS if upload["file"].startswith(d + "/")), None)
            assert directory in targets, f"{holder.urn}: {upload['file']} is in no volume {service.name} mounts"
            # Root-owned (the engine can only chown to a user name it looks up on its own host).
            assert upload["permissions"] == "0444", f"{holder.urn}: {upload['file']}"
            assert "owner" not in upload and "group" not in upload, f"{holder.urn}: {upload['file']}"


def test_secret_files_stay_secret_in_the_holder(ev: Evaluation) -> None:
    secret_holders = 0
    for service in services_with_files(ev):
        holder = ev.files_of(service)
        secrets = [u for u in ev.uploads_of(service) if u["file"].startswith(SECRETS_DIR + "/")]
        for upload in secrets:
            assert isinstance(upload["content"], Secret), f"{holder.urn}: {upload['file']} is not secret"
        if secrets:
            secret_holders += 1
            assert contains_secret(holder.inputs["uploads"]), holder.urn
    assert secret_holders > 3
