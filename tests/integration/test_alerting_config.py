"""The generated monitoring configs, checked by the real tools that will read them.

Taken from the offline plan (what the Prometheus, Alertmanager and blackbox
containers get uploaded): `promtool check config` / `check rules`, a
`promtool test rules` case that fires every alert rule (with its summary and
description rendered), `amtool check-config` (also with email and Slack
receivers and their secret files), the blackbox exporter's `--config.check`,
and a real Alertmanager that must hold back a dead host's other alerts.

Only paths change, each where it is rewritten: the configs name files inside
their containers (`/etc/cluster-ai/...`, `/run/secrets/...`), which here live in
the test's temporary directory (promtool checks that TLS files exist).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from components.monitoring_config import (
    BACKUP_METRIC,
    SlackReceiver,
    SmtpReceiver,
    alert_templates,
    alertmanager_config,
)
from stacks.mocks import Evaluation, unwrap
from stacks.plan import evaluate_stack
from tests.support.processes import free_port

pytestmark = pytest.mark.integration

PROMTOOL = shutil.which("promtool")
AMTOOL = shutil.which("amtool")
ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
BLACKBOX = shutil.which("prometheus-blackbox-exporter") or shutil.which("blackbox_exporter")
TIMEOUT_S = 60


def need(tool: str | None, package: str) -> str:
    if tool is None:
        pytest.fail(f"{package} is not installed (Debian package {package}; .ci/run installs it)")
    return tool


def uploads(ev: Evaluation, container: str) -> dict[str, str]:
    """The files `container` gets (carried by its file holder): path -> content."""
    resource = next(c for c in ev.by_type("docker:index/container:Container") if c.name == container)
    return {u["file"]: str(u["content"]) for u in unwrap(ev.uploads_of(resource))}


def materialize(ev: Evaluation, container: str, root: Path) -> Path:
    """Write a container's uploaded files under `root`, their in-container paths rewritten to there."""
    for path, content in uploads(ev, container).items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(localize(content, root))
    return root


def localize(text: str, root: Path) -> str:
    return text.replace("/etc/cluster-ai/", f"{root}/etc/cluster-ai/").replace("/run/secrets/", f"{root}/run/secrets/")


def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S, check=False, **kwargs)


@pytest.fixture(scope="module", params=["dev", "prod"])
def stack(request: pytest.FixtureRequest) -> Evaluation:
    return evaluate_stack(request.param)


def test_promtool_accepts_the_generated_config_and_rules(stack: Evaluation, tmp_path: Path) -> None:
    promtool = need(PROMTOOL, "prometheus")
    root = materialize(stack, "monitoring-prometheus", tmp_path)
    config = root / "etc/cluster-ai/prometheus.yml"
    result = run([promtool, "check", "config", str(config)])
    assert result.returncode == 0, f"{stack.stack}: promtool check config\n{result.stdout}{result.stderr}"
    assert "SUCCESS" in result.stdout
    result = run([promtool, "check", "rules", str(root / "etc/cluster-ai/rules.yml")])
    assert result.returncode == 0, f"{stack.stack}: promtool check rules\n{result.stdout}{result.stderr}"


def test_amtool_accepts_the_generated_alertmanager_config(stack: Evaluation, tmp_path: Path) -> None:
    amtool = need(AMTOOL, "prometheus-alertmanager")
    root = materialize(stack, "monitoring-alertmanager", tmp_path)
    result = run([amtool, "check-config", str(root / "etc/cluster-ai/alertmanager.yml")])
    assert result.returncode == 0, f"{stack.stack}: amtool check-config\n{result.stdout}{result.stderr}"
    assert "1 templates" in result.stdout, result.stdout


def test_amtool_accepts_email_and_slack_receivers_reading_secret_files(tmp_path: Path) -> None:
    amtool = need(AMTOOL, "prometheus-alertmanager")
    (tmp_path / "smtp_password").write_text("not-a-real-password\n")
    (tmp_path / "slack_webhook_url").write_text("https://hooks.slack.com/services/T000/B000/XXXX\n")
    (tmp_path / "cluster-ai.tmpl").write_text(alert_templates())
    config = alertmanager_config(
        smtp=SmtpReceiver(
            "smtp.example.com:587",
            "am@example.com",
            ["a@example.com", "b@example.com"],
            "am",
            str(tmp_path / "smtp_password"),
        ),
        slack=SlackReceiver("#alerts", str(tmp_path / "slack_webhook_url")),
        templates=[str(tmp_path / "*.tmpl")],
    )
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    result = run([amtool, "check-config", str(path)])
    assert result.returncode == 0, f"amtool check-config\n{result.stdout}{result.stderr}"
    assert "not-a-real-password" not in path.read_text()


def test_the_blackbox_exporter_accepts_its_generated_config(stack: Evaluation, tmp_path: Path) -> None:
    blackbox = need(BLACKBOX, "prometheus-blackbox-exporter")
    root = materialize(stack, "monitoring-blackbox", tmp_path)
    result = run([blackbox, f"--config.file={root}/etc/cluster-ai/blackbox.yml", "--config.check"])
    assert result.returncode == 0, f"{stack.stack}: blackbox --config.check\n{result.stdout}{result.stderr}"


# -- promtool test rules: every rule fires ------------------------------------------------


def go_value(value: float) -> str:
    """Go's `%v` of a float64, as `{{ $value }}` prints it (for the values used here)."""
    return str(int(value)) if float(value).is_integer() else repr(value)


def humanize_duration(value: float) -> str:
    """Prometheus's `humanizeDuration` for whole seconds >= 1 (template/template.go)."""
    seconds = int(value)
    days, hours, minutes, secs = seconds // 86400, seconds // 3600 % 24, seconds // 60 % 60, seconds % 60
    if days:
        return f"{days}d {hours}h {minutes}m {secs}s"
    if hours:
        return f"{hours}h {minutes}m {secs}s"
    return f"{minutes}m {secs}s" if minutes else f"{value:.4g}s"


def render(template: str, labels: dict[str, str], value: float) -> str:
    """The subset of Prometheus's alert templating the generated rules use."""

    def expand(match: re.Match[str]) -> str:
        expr = match.group(1).strip()
        if expr.startswith("$labels."):
            return labels.get(expr.removeprefix("$labels."), "")
        if expr == "$value":
            return go_value(value)
        fmt = re.fullmatch(r'\$value \| printf "(%\.\d+f)"', expr)
        if fmt:
            return fmt.group(1) % value
        if expr == "$value | humanizeDuration":
            return humanize_duration(value)
        raise AssertionError(f"the test cannot render {{{{ {expr} }}}}: extend `render`")

    return re.sub(r"\{\{(.*?)\}\}", expand, template)


# Each alert: the series that make it fire, when to look, the labels it fires with, its value.
FIRING: dict[str, dict[str, Any]] = {
    "HostDown": {
        "series": {'up{job="node", host="gpu1", instance="gpu1"}': "0x10"},
        "at": "5m",
        "labels": {"job": "node", "host": "gpu1", "instance": "gpu1"},
        "value": 0,
    },
    "TargetDown": {
        "series": {'up{job="cadvisor", host="gpu1", instance="gpu1"}': "0x15", 'up{job="node", host="gpu1"}': "1x15"},
        "at": "10m",
        "labels": {"job": "cadvisor", "host": "gpu1", "instance": "gpu1"},
        "value": 0,
    },
    "GpuTooHot": {
        "series": {'DCGM_FI_DEV_GPU_TEMP{job="dcgm", host="gpu1", instance="gpu1", gpu="0"}': "95x15"},
        "at": "10m",
        "labels": {"job": "dcgm", "host": "gpu1", "instance": "gpu1", "gpu": "0"},
        "value": 95,
    },
    "GpuOutOfMemory": {
        "series": {
            'DCGM_FI_DEV_FB_USED{job="dcgm", host="gpu2", instance="gpu2", gpu="1"}': "990x15",
            'DCGM_FI_DEV_FB_FREE{job="dcgm", host="gpu2", instance="gpu2", gpu="1"}': "10x15",
        },
        "at": "10m",
        "labels": {"job": "dcgm", "host": "gpu2", "instance": "gpu2", "gpu": "1"},
        "value": 99,
    },
    "DaskWorkersMissing": {
        # The prod stack declares 2 GPU nodes x 2 workers; one is gone.
        "series": {
            'dask_scheduler_workers{job="dask-scheduler", host="head", instance="scheduler", state="idle"}': "2x10",
            'dask_scheduler_workers{job="dask-scheduler", host="head", instance="scheduler", state="saturated"}': "1x10",
        },
        "at": "5m",
        "labels": {},
        "value": 3,
    },
    "ProbeFailed": {
        "series": {
            'probe_success{job="probe", host="gpu1", service="ollama", instance="https://192.0.2.11:8443/ollama/api/version"}': "0x10"
        },
        "at": "5m",
        "labels": {
            "job": "probe",
            "host": "gpu1",
            "service": "ollama",
            "instance": "https://192.0.2.11:8443/ollama/api/version",
        },
        "value": 0,
    },
    "DiskFillingUp": {
        "series": {
            'node_filesystem_avail_bytes{job="node", host="head", instance="head", device="/dev/sda1", fstype="ext4", mountpoint="/"}': "5x20",
            'node_filesystem_size_bytes{job="node", host="head", instance="head", device="/dev/sda1", fstype="ext4", mountpoint="/"}': "100x20",
            'node_filesystem_readonly{job="node", host="head", instance="head", device="/dev/sda1", fstype="ext4", mountpoint="/"}': "0x20",
        },
        "at": "15m",
        "labels": {
            "job": "node",
            "host": "head",
            "instance": "head",
            "device": "/dev/sda1",
            "fstype": "ext4",
            "mountpoint": "/",
        },
        "value": 5,
    },
    "CertificateExpiresSoon": {
        # Expires 3 days after the 20th minute.
        "series": {
            'probe_ssl_earliest_cert_expiry{job="probe", host="head", service="proxy", instance="https://proxy:8443/health"}': f"{1200 + 3 * 86400}x25"
        },
        "at": "20m",
        "labels": {"job": "probe", "host": "head", "service": "proxy", "instance": "https://proxy:8443/health"},
        "value": 3,
    },
    "BackupTooOld": {
        # The last success lies 2 days and 1 hour before the test's time 0.
        "series": {f'{BACKUP_METRIC}{{job="node", host="head", instance="head"}}': f"{-(2 * 86400 + 3600)}x25"},
        "at": "20m",
        "labels": {"job": "node", "host": "head", "instance": "head"},
        "value": 1200 + 2 * 86400 + 3600,
    },
    "BackupMissing": {
        "series": {'up{job="node", host="head", instance="head"}': "1x40"},
        "at": "35m",
        "labels": {"host": "head"},
        "value": 1,
    },
}
# And what must stay quiet: a full set of workers, a cool GPU, a fresh backup.
QUIET: dict[str, dict[str, str]] = {
    "DaskWorkersMissing": {'dask_scheduler_workers{job="dask-scheduler", state="idle"}': "4x10"},
    "GpuTooHot": {'DCGM_FI_DEV_GPU_TEMP{job="dcgm", host="gpu1", gpu="0"}': "60x10"},
    "BackupTooOld": {f'{BACKUP_METRIC}{{job="node", host="head"}}': "0x10"},
    "HostDown": {'up{job="node", host="gpu1"}': "1x10"},
}


def rule_tests(rules: dict[str, Any]) -> dict[str, Any]:
    by_name = {r["alert"]: r for r in rules["groups"][0]["rules"]}
    assert set(by_name) == set(FIRING), f"every rule needs a firing case here: {sorted(set(by_name) ^ set(FIRING))}"
    tests = []
    for alert, case in FIRING.items():
        rule = by_name[alert]
        labels = {**case["labels"], **rule["labels"]}
        annotations = {
            key: render(text, {**case["labels"], **rule["labels"]}, case["value"])
            for key, text in rule["annotations"].items()
        }
        tests.append(
            {
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in case["series"].items()],
                "alert_rule_test": [
                    {
                        "eval_time": case["at"],
                        "alertname": alert,
                        "exp_alerts": [{"exp_labels": labels, "exp_annotations": annotations}],
                    }
                ],
            }
        )
    for alert, series in QUIET.items():
        tests.append(
            {
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in series.items()],
                "alert_rule_test": [{"eval_time": "9m", "alertname": alert, "exp_alerts": []}],
            }
        )
    return {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": tests}


def test_promtool_fires_every_alert_rule_with_its_summary(tmp_path: Path) -> None:
    promtool = need(PROMTOOL, "prometheus")
    prod = evaluate_stack("prod")
    rules_text = uploads(prod, "monitoring-prometheus")["/etc/cluster-ai/rules.yml"]
    (tmp_path / "rules.yml").write_text(rules_text)
    tests = rule_tests(yaml.safe_load(rules_text))
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests, sort_keys=False))
    result = run([promtool, "test", "rules", "tests.yml"], cwd=tmp_path)
    assert result.returncode == 0, f"promtool test rules\n{result.stdout}{result.stderr}"
    assert "SUCCESS" in result.stdout


def test_the_rendered_summaries_read_well() -> None:
    """A spot check of what a person reads in the page (rendered by `render`, checked by promtool above)."""
    rules = yaml.safe_load(uploads(evaluate_stack("prod"), "monitoring-prometheus")["/etc/cluster-ai/rules.yml"])
    by_name = {r["alert"]: r for r in rules["groups"][0]["rules"]}
    summary = by_name["DaskWorkersMissing"]["annotations"]["summary"]
    assert render(summary, {}, 3) == "3 of 4 declared Dask workers are connected"
    summary = by_name["BackupTooOld"]["annotations"]["summary"]
    assert render(summary, {}, 2 * 86400 + 3600) == "The last PostgreSQL backup is 2d 1h 0m 0s old"


# -- a real Alertmanager: one dead host, one page -----------------------------------------


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    binary = need(ALERTMANAGER, "prometheus-alertmanager")
    root = materialize(evaluate_stack("prod"), "monitoring-alertmanager", tmp_path / "files")
    port = free_port()
    log = (tmp_path / "alertmanager.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={root}/etc/cluster-ai/alertmanager.yml",
            f"--storage.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            assert process.poll() is None, (tmp_path / "alertmanager.log").read_text()
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            pytest.fail("Alertmanager did not become ready\n" + (tmp_path / "alertmanager.log").read_text())
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        log.close()


def test_a_dead_host_silences_its_other_alerts_and_the_missing_workers(alertmanager: str) -> None:
    alerts = [
        {"alertname": "HostDown", "host": "gpu1", "job": "node", "severity": "critical"},
        {"alertname": "TargetDown", "host": "gpu1", "job": "cadvisor", "severity": "warning"},
        {"alertname": "ProbeFailed", "host": "gpu1", "service": "ollama", "severity": "critical"},
        {"alertname": "CertificateExpiresSoon", "host": "gpu1", "severity": "warning"},
        {"alertname": "DaskWorkersMissing", "severity": "critical"},
        {"alertname": "ProbeFailed", "host": "head", "service": "webui", "severity": "critical"},
    ]
    response = httpx.post(f"{alertmanager}/api/v2/alerts", json=[{"labels": a} for a in alerts], timeout=5)
    assert response.status_code == 200, response.text
    state: dict[str, list[str]] = {}
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        listed = httpx.get(f"{alertmanager}/api/v2/alerts", timeout=5).json()
        state = {json.dumps(a["labels"], sort_keys=True): a["status"]["inhibitedBy"] for a in listed}
        if len(state) == len(alerts):
            break
        time.sleep(0.2)

    def inhibited(labels: dict[str, str]) -> bool:
        return bool(state[json.dumps(labels, sort_keys=True)])

    assert len(state) == len(alerts), state
    assert not inhibited(alerts[0]), "HostDown itself is the one page"
    for muted in alerts[1:5]:
        assert inhibited(muted), f"{muted} must be held back while gpu1 is down"
    assert not inhibited(alerts[5]), "another host's alert must still page"
