"""Every container's log lines name their service, container and host, as the log shipper reads them.

A real Docker engine runs a busybox container with the log options every
declared container gets (components/hardened.py `LOG_OPTS`, taken from the
dev plan's Open WebUI container) and the labels it carries. The json-file log
that Alloy tails read-only from /var/lib/docker/containers (never through the
Docker socket) is read from the same place, and Alloy's JMESPath expressions
(components/logging_config.py, evaluated by the `jmespath` package, which
implements the same specification as Alloy's go-jmespath) find the labels.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from components.hardened import LOG_LABELS
from components.logging_config import DOCKER_LOGS, LINE_LABELS
from stacks.plan import evaluate_stack
from tests.support.docker_images import build_image, docker_reason, run_label
from tests.support.dockerd import ensure_docker_engine

pytestmark = pytest.mark.integration


def test_json_file_lines_carry_the_labels_alloy_turns_into_loki_labels() -> None:
    jmespath = pytest.importorskip("jmespath")
    reason = ensure_docker_engine() or docker_reason()
    if reason is not None:
        pytest.fail(reason)
    import docker
    from docker.types import LogConfig

    webui = next(c for c in evaluate_stack("dev").by_type("docker:index/container:Container") if c.name == "webui")
    inputs = webui.plain_inputs()
    assert inputs["logDriver"] == "json-file"
    log_opts = {k: str(v) for k, v in inputs["logOpts"].items()}
    assert set(log_opts["labels"].split(",")) == set(LOG_LABELS)
    labels = {item["label"]: item["value"] for item in inputs["labels"]}

    client = docker.from_env(timeout=60)
    with run_label() as run:
        image = build_image(client, f"cluster-ai-test-{run}/log-labels:1", f"log-labels-{run}", run)
        container = client.containers.run(
            image,
            ["/bin/busybox", "sh", "-c", "echo to-stdout; echo to-stderr >&2"],
            detach=True,
            labels={**labels, "cluster-ai.test-run": run},
            log_config=LogConfig(type="json-file", config=log_opts),
        )
        container.wait(timeout=60)
        path = Path(DOCKER_LOGS) / container.id / f"{container.id}-json.log"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(path.read_text().splitlines()) < 2:
            time.sleep(0.2)
        lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 2, lines
    for line in lines:
        assert jmespath.search(LINE_LABELS["service"], line) == "webui", line
        assert jmespath.search(LINE_LABELS["container"], line) == "webui", line
        assert line["attrs"]["cluster-ai.host"] == "local", line
    assert {(line["stream"], line["log"]) for line in lines} == {("stdout", "to-stdout\n"), ("stderr", "to-stderr\n")}
