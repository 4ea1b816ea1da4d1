"""The provisioned Grafana files, Loki's and Alloy's configs, and the healthcheck helpers, without binaries.

Grafana, Loki and Alloy cannot run here: their files are checked against the
essentials of their documented formats (Grafana's dashboard JSON model and
provisioning files, Loki's single-binary config, Alloy's component syntax).
That every query names metrics real targets expose is checked against real
targets in tests/integration/test_prometheus_scrape.py.
"""

from __future__ import annotations

import http.server
import json
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from components.grafana_config import DASHBOARDS_DIR, LOKI_UID, PROMETHEUS_UID, dashboard_provider, dashboards
from components.logging_config import LINE_LABELS, alloy_config, loki_config
from components.monitoring import bash_health
from components.monitoring_config import TlsClient

PANEL_TYPES = {"timeseries", "stat", "table", "logs", "gauge", "bargauge"}
DATASOURCES = {"prometheus": PROMETHEUS_UID, "loki": LOKI_UID}
BOARDS = sorted(DASHBOARDS_DIR.glob("*.json"))


def load(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def test_the_four_dashboards_are_there() -> None:
    assert [p.name for p in BOARDS] == ["cluster-overview.json", "dask.json", "gpus.json", "services.json"]
    assert sorted(dashboards()) == [p.name for p in BOARDS]


@pytest.mark.parametrize("path", BOARDS, ids=lambda p: p.name)
def test_dashboard_json_has_the_grafana_essentials(path: Path) -> None:
    board = load(path)
    assert isinstance(board["uid"], str) and re.fullmatch(r"[a-z0-9-]{1,40}", board["uid"]), path.name
    assert board["title"].startswith("Cluster AI / "), path.name
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36, path.name
    assert board["editable"] is False, f"{path.name}: provisioned dashboards are changed in the repo"
    assert "id" not in board or board["id"] is None, f"{path.name}: a provisioned dashboard carries no database id"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), f"{path.name}: panel ids {ids} are not unique"
    for panel in board["panels"]:
        where = f"{path.name} / {panel.get('title')}"
        assert panel["type"] in PANEL_TYPES, where
        assert panel["title"], where
        assert panel["datasource"]["type"] in DATASOURCES, where
        assert panel["datasource"]["uid"] == DATASOURCES[panel["datasource"]["type"]], where
        grid = panel["gridPos"]
        assert grid["w"] > 0 and grid["h"] > 0 and 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, where
        assert panel["targets"], f"{where}: no query"
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), where
        for target in panel["targets"]:
            assert target["expr"].strip(), where
            assert target["datasource"] == panel["datasource"], where
            if panel["datasource"]["type"] == "loki":
                assert re.match(r"^\{[a-z_]+=~?\"[^\"]*\"(, *[a-z_]+=~?\"[^\"]*\")*\}", target["expr"]), where
    for variable in board["templating"]["list"]:
        assert variable["datasource"]["uid"] == PROMETHEUS_UID, f"{path.name}: variable {variable['name']}"
        used = any(f"${variable['name']}" in t["expr"] for p in board["panels"] for t in p["targets"])
        assert used, f"{path.name}: variable ${variable['name']} is never used"


def test_no_two_dashboards_share_a_uid() -> None:
    uids = [load(p)["uid"] for p in BOARDS]
    assert len(uids) == len(set(uids)), uids


def test_the_logs_are_browsable_by_the_labels_alloy_sets() -> None:
    logs = [p for p in load(DASHBOARDS_DIR / "services.json")["panels"] if p["type"] == "logs"]
    assert logs and logs[0]["datasource"]["uid"] == LOKI_UID
    labels = set(re.findall(r"([a-z_]+)=~?\"", logs[0]["targets"][0]["expr"]))
    assert labels <= {"host", "service", "container", "stream"}, labels


def test_the_dashboard_provider_points_at_the_uploaded_files() -> None:
    provider = dashboard_provider()["providers"][0]
    assert provider["type"] == "file" and provider["options"]["path"] == "/etc/cluster-ai/dashboards"
    assert provider["allowUiUpdates"] is False and provider["disableDeletion"] is True


# -- Loki and Alloy ---------------------------------------------------------------------------


def test_loki_keeps_logs_for_the_retention_on_its_volume() -> None:
    config = loki_config(retention_days=14)
    assert config["limits_config"]["retention_period"] == "336h"
    assert config["compactor"]["retention_enabled"] is True
    assert config["compactor"]["delete_request_store"] == "filesystem"
    assert config["common"]["path_prefix"] == "/loki"
    [schema] = config["schema_config"]["configs"]
    assert (schema["store"], schema["schema"], schema["object_store"]) == ("tsdb", "v13", "filesystem")
    with pytest.raises(ValueError):
        loki_config(retention_days=0)


def _blocks(text: str) -> list[str]:
    """Top-level Alloy blocks (`kind "label" {`), checking every brace and quote balances."""
    depth = 0
    in_string = False
    escaped = False
    heads = []
    line_start = 0
    for i, ch in enumerate(text):
        if in_string:
            escaped = (ch == "\\") and not escaped
            if ch == '"' and not escaped:
                in_string = False
            continue
        if ch == '"':
            in_string = True
        elif ch == "\n":
            line_start = i + 1
        elif ch in "{[":
            if depth == 0 and ch == "{":
                heads.append(text[line_start:i].strip())
            depth += 1
        elif ch in "}]":
            depth -= 1
            assert depth >= 0, f"unbalanced at {i}"
    assert depth == 0 and not in_string
    return heads


def test_alloy_ships_every_container_log_with_its_labels() -> None:
    tls = TlsClient("/run/secrets/ca.pem", "/run/secrets/tls.crt", "/run/secrets/tls.key")
    text = alloy_config(host="gpu1", loki_url="https://192.0.2.10:8443/loki/api/v1/push", cluster="c", tls=tls)
    assert _blocks(text) == [
        "logging",
        'local.file_match "containers"',
        'loki.source.file "containers"',
        'loki.process "containers"',
        'loki.write "loki"',
    ]
    # Every component another one forwards to or reads from is declared.
    for kind, label, export in re.findall(r"= \[?(loki\.\w+|local\.\w+)\.(\w+)\.(receiver|targets)", text):
        assert f'{kind} "{label}"' in text, f"{kind}.{label}.{export} is referenced but not declared"
    assert '"__path__" = "/var/lib/docker/containers/*/*-json.log"' in text
    assert '"host"     = "gpu1"' in text
    assert 'service = "attrs.\\"cluster-ai.service\\""' in text
    assert 'url = "https://192.0.2.10:8443/loki/api/v1/push"' in text and 'key_file  = "/run/secrets/tls.key"' in text
    plain = alloy_config(host="head", loki_url="http://loki:3100/loki/api/v1/push", cluster="c")
    assert "tls_config" not in plain


def test_the_line_label_expressions_read_a_json_file_log_line() -> None:
    """A line as Docker's json-file driver writes it with `--log-opt labels=...` (checked by hand
    against Docker 20.10+: the labels land in `attrs`); JMESPath as Alloy's stage.json evaluates it."""
    jmespath = pytest.importorskip("jmespath")
    line = {
        "log": "hello\n",
        "stream": "stderr",
        "attrs": {"cluster-ai.container": "webui", "cluster-ai.host": "head", "cluster-ai.service": "webui"},
        "time": "2026-01-01T00:00:00.123456789Z",
    }
    assert jmespath.search(LINE_LABELS["service"], line) == "webui"
    assert jmespath.search(LINE_LABELS["container"], line) == "webui"


# -- the bash healthcheck of images without an HTTP client -----------------------------------


@pytest.fixture
def http_server() -> Iterator[int]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/-/ready" else 503)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_the_bash_healthcheck_passes_on_200_only(http_server: int) -> None:
    bash = shutil.which("bash")
    assert bash is not None
    for path, expected in (("/-/ready", 0), ("/other", 1)):
        check = bash_health(http_server, path)
        assert check.test[:2] == ["CMD", "bash"]
        done = subprocess.run([bash, *check.test[2:]], capture_output=True, timeout=10, check=False)
        assert done.returncode == expected, f"{path}: {done}"
    closed = bash_health(9, "/-/ready")
    assert subprocess.run([bash, *closed.test[2:]], capture_output=True, timeout=10, check=False).returncode != 0
