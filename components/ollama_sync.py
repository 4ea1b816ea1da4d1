"""Converge an Ollama server on a set of pinned models, through its HTTP API.

This file is shipped verbatim to the Ollama host and run there by `python -c`
inside a throwaway container on the host's private network, so it works where
the machine running Pulumi cannot reach Ollama's port. Standard library only.

For each pin it pulls the model by tag when it is missing or carries another
digest, then compares the digest `/api/tags` reports with the pin; a mismatch
fails (and the unreviewed model is removed). Models that are not pinned are
removed. The last line on stdout is a JSON summary; every problem goes to
stderr and the exit code is 1 if there was any.

Ollama's API (docs/api.md upstream): `GET /api/tags` lists models with their
`digest`; `POST /api/pull {"model", "stream": true}` streams JSON status lines
ending in `{"status": "success"}` or carrying `{"error": ...}`;
`DELETE /api/delete {"model"}` removes one. `/api/tags` lists names the way
Ollama displays them (`library/x:1` as `x:1`), so pins are compared in that form.
A pin `{"name": "host[:port]/namespace/name:tag", "insecure": true}` pulls from a
private registry over plain HTTP (`/api/pull {"insecure": true}`).
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

USER_AGENT = "cluster-ai-model-sync"
# Ollama's default registry and namespace, which `/api/tags` leaves out of names.
DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"


class SyncError(Exception):
    """A problem with one model; the sync goes on with the others."""


class Ollama:
    """The few Ollama endpoints the sync needs."""

    def __init__(self, base_url: str, timeout: float) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise SyncError(f"--url must be an http(s) URL, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(  # noqa: S310 - the scheme is checked in __init__
            self.base_url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json", "User-Agent": USER_AGENT},
        )
        wait = self.timeout if timeout is None else timeout
        return urllib.request.urlopen(request, timeout=wait)  # noqa: S310 - the scheme is checked in __init__

    def wait_ready(self, attempts: int, delay: float, probe_timeout: float = 5.0) -> None:
        """Poll `/api/version`; a probe waits `probe_timeout`, not the long pull timeout."""
        last: BaseException | None = None
        for _ in range(attempts):
            try:
                with self._request("GET", "/api/version", timeout=min(probe_timeout, self.timeout)) as response:
                    response.read()
                return
            except (OSError, http.client.HTTPException) as exc:
                last = exc
                time.sleep(delay)
        raise SyncError(f"Ollama at {self.base_url} did not answer after {attempts} attempts: {last}")

    def tags(self) -> dict[str, str]:
        """Installed models -> digest (bare hex)."""
        with self._request("GET", "/api/tags") as response:
            document = json.load(response)
        models = {}
        for model in document.get("models") or []:
            name = model.get("model") or model.get("name")
            if name:
                models[name] = normalize_digest(model.get("digest", ""))
        return models

    def pull(self, name: str, insecure: bool = False) -> None:
        """Pull by name; `insecure` lets Ollama use plain HTTP to a private registry."""
        body: dict[str, Any] = {"model": name, "stream": True}
        if insecure:
            body["insecure"] = True
        try:
            response = self._request("POST", "/api/pull", body)
        except urllib.error.HTTPError as exc:
            raise SyncError(f"model {name}: pull failed: HTTP {exc.code} {_error_text(exc)}") from None
        except (OSError, http.client.HTTPException) as exc:
            raise SyncError(f"model {name}: pull failed: {exc!r}") from None
        last_status = None
        try:
            with response:
                for event in _json_lines(response):
                    if "error" in event:
                        raise SyncError(f"model {name}: pull failed: {event['error']}")
                    last_status = event.get("status", last_status)
        except (OSError, http.client.HTTPException) as exc:
            # A stream cut short (Ollama restarted, a silent connection timed out):
            # this model failed; the others may still converge.
            raise SyncError(f"model {name}: pull stream broke off after {last_status!r}: {exc!r}") from None
        if last_status != "success":
            raise SyncError(f"model {name}: pull ended without success (last status: {last_status!r})")

    def delete(self, name: str) -> None:
        try:
            with self._request("DELETE", "/api/delete", {"model": name}) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            raise SyncError(f"model {name}: delete failed: HTTP {exc.code} {_error_text(exc)}") from None


def listed_name(name: str) -> str:
    """A model name as `/api/tags` lists it (Ollama's `DisplayShortest`).

    The tag defaults to `latest`, and the default registry host and the
    `library/` namespace are left out: `library/qwen2.5:0.5b` is listed as
    `qwen2.5:0.5b`.
    """
    parts = name.split("/")
    if ":" not in parts[-1]:
        parts[-1] += ":latest"
    if len(parts) == 3 and parts[0].lower() == DEFAULT_HOST:
        parts = parts[1:]
    if len(parts) == 2 and parts[0].lower() == DEFAULT_NAMESPACE:
        parts = parts[1:]
    return "/".join(parts)


def normalize_digest(digest: str) -> str:
    return digest[len("sha256:") :] if digest.startswith("sha256:") else digest


def _json_lines(response: Any) -> Iterator[dict[str, Any]]:
    for raw in response:
        line = raw.strip()
        if not line:
            continue
        try:
            event = json.loads(line)
        except ValueError:
            raise SyncError(f"unexpected line from Ollama: {line[:200]!r}") from None
        if isinstance(event, dict):
            yield event


def _error_text(exc: urllib.error.HTTPError) -> str:
    try:
        body = exc.read().decode(errors="replace")
        return json.loads(body).get("error", body)[:300]
    except Exception:  # noqa: BLE001 - best effort for a message
        return ""


def sync(client: Ollama, pins: list[dict[str, Any]], prune: bool) -> tuple[dict[str, Any], list[str]]:
    """Converge; returns (summary, problems)."""
    problems: list[str] = []
    pulled: list[str] = []
    removed: list[str] = []
    installed = client.tags()
    for pin in pins:
        name, want = pin["name"] or "", pin.get("digest")
        listed = listed_name(name)
        have = installed.get(listed)
        if have is not None and (want is None or have == want):
            continue
        try:
            client.pull(name, insecure=pin.get("insecure") is True)
            pulled.append(name)
            installed = client.tags()
            got = installed.get(listed)
            if got is None:
                raise SyncError(f"model {name}: pull reported success but /api/tags does not list it")
            if want is not None and got != want:
                # Do not leave an unreviewed model serving under a pinned name.
                try:
                    client.delete(name)
                except SyncError as exc:
                    removal = f"removing it failed, so it is still installed: {exc}"
                else:
                    installed.pop(listed, None)
                    removal = "the pulled model was removed"
                raise SyncError(
                    f"model {name}: digest mismatch: expected {want}, got {got} "
                    f"(the tag moved upstream; {removal}). "
                    f"Review it and update the pin to {got} to accept it."
                )
        except SyncError as exc:
            problems.append(str(exc))
    if prune:
        pinned = {listed_name(pin["name"] or "") for pin in pins}
        for name in sorted(set(installed) - pinned):
            try:
                client.delete(name)
                removed.append(name)
                installed.pop(name, None)
            except SyncError as exc:
                problems.append(str(exc))
    summary = {
        "models": {pin["name"]: installed.get(listed_name(pin["name"] or "")) for pin in pins},
        "pulled": pulled,
        "removed": removed,
    }
    return summary, problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ollama-sync", description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="Ollama's base URL on the private network")
    parser.add_argument("--pins", required=True, help='JSON list of {"name", "digest"}')
    parser.add_argument("--no-prune", dest="prune", action="store_false", help="keep models that are not pinned")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds a request may stay silent")
    parser.add_argument("--ready-attempts", type=int, default=30)
    parser.add_argument("--ready-delay", type=float, default=2.0)
    parser.add_argument("--ready-timeout", type=float, default=5.0, help="seconds one readiness probe may wait")
    args = parser.parse_args(argv)
    try:
        pins = json.loads(args.pins)
        client = Ollama(args.url, args.timeout)
        client.wait_ready(args.ready_attempts, args.ready_delay, args.ready_timeout)
        summary, problems = sync(client, pins, args.prune)
    except (SyncError, OSError, http.client.HTTPException, ValueError) as exc:
        print(f"model sync failed: {exc}", file=sys.stderr)
        return 1
    for problem in problems:
        print(problem, file=sys.stderr)
    print(json.dumps(summary, sort_keys=True))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
