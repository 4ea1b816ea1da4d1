"""Test images for a real Docker engine that can pull nothing: FROM scratch, with busybox.

Debian's busybox-static is a single static binary; an image of it plus a marker
file is enough to run `sleep`, `sh` and a healthcheck. Two images that differ in
their marker have different ids, which is what the "runs the pinned image"
check compares.
"""

from __future__ import annotations

import io
import tarfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

BUSYBOX = Path("/bin/busybox")
DOCKERFILE = b'FROM scratch\nCOPY busybox /bin/busybox\nCOPY marker /marker\nCMD ["/bin/busybox", "sleep", "3600"]\n'


def docker_reason() -> str | None:
    """None when a Docker engine answers and busybox is there, else why not."""
    import docker

    if not BUSYBOX.is_file():
        return f"{BUSYBOX} is missing: apt-get install busybox-static"
    try:
        client = docker.from_env(timeout=10)
        client.ping()
        client.close()
    except Exception as exc:  # noqa: BLE001 - any failure means no engine
        return f"no Docker engine: {exc}"
    return None


def _context(marker: str) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data, mode in (
            ("Dockerfile", DOCKERFILE, 0o644),
            ("busybox", BUSYBOX.read_bytes(), 0o755),
            ("marker", marker.encode(), 0o644),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = mode
            tar.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    return buffer


def build_image(client: Any, tag: str, marker: str, run: str) -> str:
    """Build a busybox image tagged `tag` whose id depends on `marker`; returns its id.

    It carries the `cluster-ai.test-run` label, so `run_label`'s finalizer removes it.
    """
    image, _ = client.images.build(
        fileobj=_context(marker),
        custom_context=True,
        tag=tag,
        rm=True,
        forcerm=True,
        labels={"cluster-ai.test-run": run},
    )
    return str(image.id)


@contextmanager
def run_label() -> Iterator[str]:
    """A unique value for the `cluster-ai.test-run` label; everything carrying it is removed at exit."""
    import docker

    run = uuid.uuid4().hex[:12]
    client = docker.from_env(timeout=30)
    try:
        yield run
    finally:
        for container in client.containers.list(all=True, filters={"label": f"cluster-ai.test-run={run}"}):
            container.remove(force=True, v=True)
        for image in client.images.list(filters={"label": f"cluster-ai.test-run={run}"}):
            client.images.remove(image.id, force=True)
        client.close()
