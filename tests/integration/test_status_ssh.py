"""`stacks status` reaches a remote Docker host with the stack's pinned host key, never known_hosts.

A real sshd (Debian's OpenSSH) on a loopback port, with its own ed25519 host key
and key-only root login, in front of this machine's real Docker engine:
`status.docker_client` dials it with exactly the ssh options every docker.Provider
of the stack uses (components/host.py `ssh_options`) and talks to the engine
through `docker system dial-stdio`. Pinned to the right key it works; pinned to
another key it is refused; and the user's known_hosts is neither read nor written.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from components.host import ssh_options
from stacks import status
from tests.support.dockerd import ensure_docker_engine
from tests.support.processes import free_port

pytestmark = pytest.mark.integration
START_TIMEOUT_S = 15.0
KNOWN_HOSTS = Path.home() / ".ssh" / "known_hosts"


@dataclass(frozen=True)
class SshHost:
    port: int
    host_key: str
    user_key: Path

    @property
    def url(self) -> str:
        return f"ssh://root@127.0.0.1:{self.port}"


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True, timeout=30)
    kind, blob = path.with_suffix(".pub").read_text().split()[:2]
    return f"{kind} {blob}"


@pytest.fixture
def ssh_host(tmp_path: Path) -> Iterator[SshHost]:
    reason = ensure_docker_engine()
    if reason is not None:
        pytest.fail(reason)  # .ci/run installs and starts the engine: absence is a broken setup
    for tool in ("sshd", "ssh", "ssh-keygen", "docker"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            pytest.fail(f"{tool} is not installed (.ci/run installs openssh-server and docker.io)")
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    host_key = _keygen(keys / "host")
    _keygen(keys / "user")
    (keys / "authorized_keys").write_text((keys / "user.pub").read_text())
    os.chmod(keys / "authorized_keys", 0o600)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    port = free_port()
    config = keys / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"ListenAddress 127.0.0.1:{port}",
                f"HostKey {keys / 'host'}",
                f"AuthorizedKeysFile {keys / 'authorized_keys'}",
                "PidFile none",
                "PermitRootLogin prohibit-password",
                "AuthenticationMethods publickey",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes no",
                "UseDNS no",
                "LogLevel VERBOSE",
            ]
        )
        + "\n"
    )
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    process = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        else:
            pytest.fail("sshd did not start listening")
        yield SshHost(port, host_key, keys / "user")
    finally:
        process.terminate()
        process.wait(timeout=10)


def _known_hosts() -> bytes | None:
    return KNOWN_HOSTS.read_bytes() if KNOWN_HOSTS.exists() else None


def test_status_reaches_the_engine_over_ssh_with_the_pinned_key(ssh_host: SshHost) -> None:
    before = _known_hosts()
    options = ssh_options("127.0.0.1", ssh_host.port, ssh_host.host_key, str(ssh_host.user_key))
    client = status.docker_client(ssh_host.url, ssh_opts=options)
    try:
        assert client.ping() is True
        assert client.version()["Version"], "the engine answered through dial-stdio"
        # The low-level list (one call): `containers.list` inspects each container and
        # races with other tests removing theirs on the same engine.
        assert isinstance(client.api.containers(all=True), list)
    finally:
        client.close()
    assert _known_hosts() == before, "status must not read or write the user's known_hosts"


def test_status_refuses_a_host_whose_key_is_not_the_pinned_one(ssh_host: SshHost, tmp_path: Path) -> None:
    other = _keygen(tmp_path / "other")
    options = ssh_options("127.0.0.1", ssh_host.port, other, str(ssh_host.user_key))
    with pytest.raises(Exception):  # noqa: B017 - docker-py wraps the broken tunnel in several ways
        client = status.docker_client(ssh_host.url, ssh_opts=options, timeout=10)
        try:
            client.ping()
        finally:
            client.close()


def test_status_will_not_dial_an_ssh_host_without_a_pinned_key(ssh_host: SshHost) -> None:
    with pytest.raises(status.UnpinnedHostError, match="no pinned host key"):
        status.docker_client(ssh_host.url, ssh_opts=["-p", str(ssh_host.port)])


def test_the_dial_command_is_the_providers_ssh_options_and_nothing_else() -> None:
    options = ssh_options("2001:db8::11", 2222, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOd6YHSn", "/k")
    argv = status.ssh_dial_argv("ssh://cluster-ai@[2001:db8::11]:2222", options)
    assert argv == ["ssh", *options, "-l", "cluster-ai", "--", "2001:db8::11", "docker", "system", "dial-stdio"]
    assert "KnownHostsCommand=/bin/echo [2001:db8::11]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOd6YHSn" in argv
