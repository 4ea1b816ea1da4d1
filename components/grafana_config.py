"""Grafana's provisioning, as plain data: datasources, the dashboard provider, the dashboards.

The dashboards are JSON files in `monitoring/dashboards/` (edit them in Grafana,
export, commit); they are uploaded into the container with the provisioning
files, so a fresh Grafana starts with them and nobody can drift them in the UI
(`allowUiUpdates: false`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from components.hardened import CONFIG_DIR

DASHBOARDS_DIR = Path(__file__).resolve().parent.parent / "monitoring" / "dashboards"
PORT = 3000
PROMETHEUS_UID = "prometheus"
LOKI_UID = "loki"
ALERTMANAGER_UID = "alertmanager"
PROVISIONING = f"{CONFIG_DIR}/provisioning"
DASHBOARDS = f"{CONFIG_DIR}/dashboards"


def datasources(*, prometheus_url: str, loki_url: str, alertmanager_url: str, scrape_interval_s: int) -> dict[str, Any]:
    """provisioning/datasources: Prometheus (default), Loki and Alertmanager, read-only in the UI."""
    return {
        "apiVersion": 1,
        "datasources": [
            {
                "name": "Prometheus",
                "uid": PROMETHEUS_UID,
                "type": "prometheus",
                "access": "proxy",
                "url": prometheus_url,
                "isDefault": True,
                "editable": False,
                "jsonData": {"timeInterval": f"{scrape_interval_s}s", "httpMethod": "POST"},
            },
            {
                "name": "Loki",
                "uid": LOKI_UID,
                "type": "loki",
                "access": "proxy",
                "url": loki_url,
                "editable": False,
                "jsonData": {"maxLines": 1000},
            },
            {
                "name": "Alertmanager",
                "uid": ALERTMANAGER_UID,
                "type": "alertmanager",
                "access": "proxy",
                "url": alertmanager_url,
                "editable": False,
                "jsonData": {"implementation": "prometheus", "handleGrafanaManagedAlerts": False},
            },
        ],
    }


def dashboard_provider() -> dict[str, Any]:
    """provisioning/dashboards: the uploaded JSON files, in one folder, not editable in the UI."""
    return {
        "apiVersion": 1,
        "providers": [
            {
                "name": "cluster-ai",
                "orgId": 1,
                "folder": "Cluster AI",
                "type": "file",
                "disableDeletion": True,
                "allowUiUpdates": False,
                "updateIntervalSeconds": 60,
                "options": {"path": DASHBOARDS, "foldersFromFilesStructure": False},
            }
        ],
    }


def dashboards(directory: Path = DASHBOARDS_DIR) -> dict[str, str]:
    """File name -> JSON text of every dashboard in the repository, checked to parse."""
    out = {}
    for path in sorted(directory.glob("*.json")):
        text = path.read_text()
        json.loads(text)  # a broken file fails the program, not Grafana at 3 a.m.
        out[path.name] = text
    if not out:
        raise FileNotFoundError(f"no dashboards in {directory}")
    return out


def grafana_env(*, root_url: str, sub_path: bool, secure_cookies: bool, admin_user: str) -> dict[str, str]:
    """Grafana's settings (GF_<SECTION>_<KEY>): no anonymous access, no sign-up, nothing phoned home.

    The admin password is read from a secret file (`GF_..._PASSWORD__FILE`), never from env.
    """
    return {
        "GF_PATHS_PROVISIONING": PROVISIONING,
        "GF_PATHS_DATA": "/var/lib/grafana",
        "GF_SERVER_ROOT_URL": root_url,
        "GF_SERVER_SERVE_FROM_SUB_PATH": "true" if sub_path else "false",
        "GF_SECURITY_ADMIN_USER": admin_user,
        "GF_SECURITY_ADMIN_PASSWORD__FILE": "/run/secrets/grafana_admin_password",
        "GF_SECURITY_COOKIE_SECURE": "true" if secure_cookies else "false",
        "GF_SECURITY_DISABLE_GRAVATAR": "true",
        "GF_AUTH_ANONYMOUS_ENABLED": "false",
        "GF_AUTH_BASIC_ENABLED": "true",
        "GF_USERS_ALLOW_SIGN_UP": "false",
        "GF_ANALYTICS_REPORTING_ENABLED": "false",
        "GF_ANALYTICS_CHECK_FOR_UPDATES": "false",
        "GF_ANALYTICS_CHECK_FOR_PLUGIN_UPDATES": "false",
        "GF_NEWS_NEWS_FEED_ENABLED": "false",
        # No plugin downloads at start: the cluster needs only the built-in datasources.
        "GF_PLUGINS_PREINSTALL_DISABLED": "true",
        "GF_LOG_MODE": "console",
    }


def provisioning_files(sources: Mapping[str, Any]) -> dict[str, str]:
    """Config-file path (under CONFIG_DIR) -> text, for the Grafana container."""
    import yaml

    files = {
        "provisioning/datasources/cluster-ai.yaml": yaml.safe_dump(dict(sources), sort_keys=False),
        "provisioning/dashboards/cluster-ai.yaml": yaml.safe_dump(dashboard_provider(), sort_keys=False),
    }
    files.update({f"dashboards/{name}": text for name, text in dashboards().items()})
    return files
