"""Test hosts in network namespaces, each with a real OpenSSH server, for tests.

A `Lab` is a small private LAN: one namespace holds a bridge (the switch), and
every node is a namespace of its own plugged into it by a veth pair, with an
address from the lab's /24. A `TestHost` is a node that also runs Debian's
`/usr/sbin/sshd` with a generated host key and key-only root login (one
generated user key for the whole lab), like a freshly installed server.

Each host's sshd runs in its own mount namespace (`unshare --mount
--propagation private`) with a private copy of this machine's /etc bind-mounted
over /etc: whatever a session on the host writes to /etc (a bootstrap's
/etc/cluster-ai, /etc/nftables.conf) lands in `TestHost.etc`, never on this
machine. Its network namespace is its own too, so the nftables rules a session
installs filter only that host's traffic. The rest of the filesystem is shared:
/run/docker.sock reaches this machine's Docker engine, as a host's own engine
would (`docker=False` covers it with /dev/null in the host's mounts: an engine
that is not running).

Nothing touches the root network namespace, so this machine's network and
Docker's own firewall rules there stay out of the picture (Docker's FORWARD
policy drop in the root namespace would otherwise decide for the lab). Names
carry the pid and a per-process serial, so parallel runs (`pytest -n auto`)
never collide; the /24 is derived from them too, though a lab's addresses are
only ever seen inside its own LAN. Teardown always runs (an ExitStack, with a
callback registered right after each thing is made): it kills the processes
this lab started and any left in its namespaces, by pid, then deletes the
namespaces (which takes their veths and the bridge with them) and the files.
Every wait is bounded.

It needs root, `ip` (iproute2), `unshare`/`nsenter` (util-linux), `ssh-keygen`
and `/usr/sbin/sshd` (openssh-server); `missing_prerequisites()` says what is
absent.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

SSHD = "/usr/sbin/sshd"
TOOLS = ("ip", "unshare", "nsenter", "ssh", "ssh-keygen", "nft", SSHD)

SSHD_START_TIMEOUT_S = 30.0
COMMAND_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0
POLL_S = 0.05

_serial = itertools.count(1)


def missing_prerequisites() -> list[str]:
    """What this helper needs and this machine lacks (empty when it can run)."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if os.geteuid() != 0:
        missing.append("root (network namespaces)")
    return missing


def _run(argv: Sequence[str], *, timeout: float = COMMAND_TIMEOUT_S) -> str:
    """Run a setup command; fail with its output when it fails."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def lab_subnet(pid: int, serial: int) -> ipaddress.IPv4Network:
    """A /24 in 10.0.0.0/8 derived from (pid, serial): distinct for concurrent labs."""
    index = (pid * 64 + serial) % (256 * 256)
    return ipaddress.IPv4Network(f"10.{index >> 8}.{index & 0xFF}.0/24")


@dataclass
class Node:
    """A network namespace with one interface (`eth0`) on a LAN."""

    name: str
    netns: str
    address: str
    """Its IPv4 address, without prefix length."""


@dataclass
class TestHost(Node):
    """A node that runs sshd, in a mount namespace with a private /etc."""

    __test__ = False  # not a pytest test class, despite its name

    dir: Path = Path()
    etc: Path = Path()
    """The host's /etc, as seen from this machine."""
    host_key: str = ""
    """The host's public key as known_hosts has it: `ssh-ed25519 AAAA...`."""
    ssh_port: int = 22
    sshd_log: Path = Path()
    sshd: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        """sshd's pid: its namespaces are the host's."""
        assert self.sshd is not None
        return self.sshd.pid

    def log(self) -> str:
        """What sshd logged (for failure messages)."""
        try:
            return self.sshd_log.read_text(errors="replace")
        except OSError:
            return ""


# Connects to every (address, port) at once; one JSON list of outcomes out.
PROBE = textwrap.dedent(
    """
    import concurrent.futures, json, socket, sys
    targets, timeout = json.loads(sys.argv[1]), float(sys.argv[2])
    def probe(target):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect((target[0], target[1]))
            return "open"
        except TimeoutError:
            return "timeout"
        except ConnectionRefusedError:
            return "refused"
        except OSError as exc:
            return f"error {exc.errno}"
        finally:
            s.close()
    with concurrent.futures.ThreadPoolExecutor(max(1, len(targets))) as pool:
        print(json.dumps(list(pool.map(probe, targets))))
    """
)

# Listens on every port given (all addresses), says "ready", accepts until stdin closes.
LISTENER = textwrap.dedent(
    """
    import selectors, socket, sys
    sel = selectors.DefaultSelector()
    for port in map(int, sys.argv[1:]):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
        s.listen(64)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    sel.register(sys.stdin, selectors.EVENT_READ)
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            if key.fileobj is sys.stdin:
                sys.exit(0)
            conn, _ = key.fileobj.accept()
            conn.close()
    """
)


class Lab:
    """A private LAN of namespaces; use as a context manager (teardown always runs)."""

    def __init__(self) -> None:
        self.serial = next(_serial)
        self.prefix = f"cai-th-{os.getpid()}-{self.serial}"
        self.subnet = lab_subnet(os.getpid(), self.serial)
        self._stack = contextlib.ExitStack()
        self._processes: list[subprocess.Popen[bytes]] = []
        self._netns: list[str] = []
        self._ports = itertools.count(1)
        self._addresses = itertools.islice(self.subnet.hosts(), 1, None)  # .1 stays free
        self._transfer = itertools.count(0)
        self.dir = Path()
        self.lan = ""
        self.user_key = Path()
        """The private key every host admits for root (an OpenSSH key file, 0600)."""
        self.nodes: dict[str, Node] = {}

    # --- lifecycle -------------------------------------------------------

    def __enter__(self) -> Lab:
        try:
            self._stack.callback(self._teardown)
            self.dir = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-"))
            self.lan = self._netns_add("lan")
            _run(["ip", "-n", self.lan, "link", "add", "br0", "type", "bridge"])
            _run(["ip", "-n", self.lan, "link", "set", "br0", "up"])
            self.user_key = self.dir / "user_ed25519"
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{self.prefix}-user", "-f", str(self.user_key)])
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self._stack.close()

    def _teardown(self) -> None:
        """Stop what this lab started, empty its namespaces, delete them and its files."""
        for process in reversed(self._processes):
            _stop(process)
        for netns in reversed(self._netns):
            for pid in _netns_pids(netns):
                # Only processes inside this lab's own namespaces (sessions sshd forked).
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for netns in reversed(self._netns):
            subprocess.run(["ip", "netns", "del", netns], capture_output=True, timeout=COMMAND_TIMEOUT_S, check=False)
        if self.dir != Path() and self.dir.is_dir():
            shutil.rmtree(self.dir, ignore_errors=True)

    def _netns_add(self, suffix: str) -> str:
        netns = f"{self.prefix}-{suffix}"
        _run(["ip", "netns", "add", netns])
        self._netns.append(netns)
        _run(["ip", "-n", netns, "link", "set", "lo", "up"])
        return netns

    # --- building --------------------------------------------------------

    def node(self, name: str) -> Node:
        """A namespace on the LAN with the next free address of the lab's /24."""
        if name in self.nodes:
            raise ValueError(f"node {name!r} exists")
        netns = self._netns_add(name)
        address = str(next(self._addresses))
        port = f"p{next(self._ports)}"
        # Both ends are made in their namespaces: no name ever exists in the root namespace.
        _run(["ip", "link", "add", "eth0", "netns", netns, "type", "veth", "peer", "name", port, "netns", self.lan])
        _run(["ip", "-n", self.lan, "link", "set", port, "master", "br0", "up"])
        _run(["ip", "-n", netns, "addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", "eth0"])
        _run(["ip", "-n", netns, "link", "set", "eth0", "up"])
        node = Node(name, netns, address)
        self.nodes[name] = node
        return node

    def host(
        self,
        name: str,
        *,
        ssh_port: int = 22,
        docker: bool = True,
        environment: Mapping[str, str] | None = None,
    ) -> TestHost:
        """A node running sshd: key-only root login with `user_key`, a private /etc.

        `docker=False` hides this machine's Docker socket from the host (an
        engine that is not running); `environment` is set for every session
        (sshd's SetEnv), as a host's own profile would.
        """
        node = self.node(name)
        home = self.dir / name
        home.mkdir(mode=0o700)
        etc = home / "etc"
        # A private copy, bind-mounted over /etc in the host's mount namespace only.
        _run(["cp", "-a", "/etc", str(etc)])
        key = home / "ssh_host_ed25519_key"
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{self.prefix}-{name}", "-f", str(key)])
        host_key = " ".join(key.with_suffix(".pub").read_text().split()[:2])
        authorized = home / "authorized_keys"
        authorized.write_text(self.user_key.with_suffix(".pub").read_text())
        authorized.chmod(0o600)
        config = home / "sshd_config"
        config.write_text(_sshd_config(node.address, ssh_port, key, authorized, environment or {}))
        log = home / "sshd.log"
        host = TestHost(
            node.name, node.netns, node.address, dir=home, etc=etc, host_key=host_key, ssh_port=ssh_port, sshd_log=log
        )
        self.nodes[name] = host

        mounts = ['mount --bind "$1" /etc']
        if not docker:
            mounts.append("if [ -e /run/docker.sock ]; then mount --bind /dev/null /run/docker.sock; fi")
        script = "set -e\n" + "\n".join(mounts) + '\nexec "$2" -D -f "$3" -E "$4"\n'
        # sshd checks that its privilege separation directory exists (Debian's unit makes it).
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        argv = ["ip", "netns", "exec", node.netns, "unshare", "--mount", "--propagation", "private", "--"]
        argv += ["/bin/sh", "-c", script, "sshd-start", str(etc), SSHD, str(config), str(log)]
        # ip, unshare and sh each exec the next: the process started is sshd itself.
        host.sshd = self._start(argv)
        self._wait_for_sshd(host)
        return host

    def container(self, host: Node, name: str) -> Node:
        """A namespace behind `host`, as a container on a Docker bridge network.

        As Docker does it: a bridge named `br-<12 hex>` in `host` holds the
        gateway address, the container's veth is a port of it, and `host`
        routes for the container. A DNAT rule in `host` can publish a port of
        it, and what it sends to `host`'s own address arrives from that bridge.
        """
        netns = self._netns_add(name)
        index = next(self._transfer)
        link = ipaddress.IPv4Network(f"172.31.{index % 256}.0/30")
        gateway, address = (str(a) for a in link.hosts())
        bridge = f"br-{os.getpid() % 0x1000000:06x}{index % 0x1000000:06x}"  # br- + 12 hex, like Docker's
        port = f"veth{next(self._ports)}"
        _run(["ip", "-n", host.netns, "link", "add", bridge, "type", "bridge"])
        _run(["ip", "-n", host.netns, "addr", "add", f"{gateway}/30", "dev", bridge])
        _run(["ip", "-n", host.netns, "link", "set", bridge, "up"])
        _run(["ip", "link", "add", port, "netns", host.netns, "type", "veth", "peer", "name", "eth0", "netns", netns])
        _run(["ip", "-n", host.netns, "link", "set", port, "master", bridge, "up"])
        _run(["ip", "-n", netns, "addr", "add", f"{address}/30", "dev", "eth0"])
        _run(["ip", "-n", netns, "link", "set", "eth0", "up"])
        _run(["ip", "-n", netns, "route", "add", "default", "via", gateway])
        _run(["ip", "netns", "exec", host.netns, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
        node = Node(name, netns, address)
        self.nodes[name] = node
        return node

    def _start(self, argv: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(argv, start_new_session=True, **kwargs)  # type: ignore[call-overload]
        self._processes.append(process)
        return process

    def _wait_for_sshd(self, host: TestHost) -> None:
        deadline = time.monotonic() + SSHD_START_TIMEOUT_S
        assert host.sshd is not None
        while time.monotonic() < deadline:
            if "Server listening on" in host.log():
                return
            if host.sshd.poll() is not None:
                raise RuntimeError(f"sshd of {host.name} exited {host.sshd.returncode}: {host.log()}")
            time.sleep(POLL_S)
        raise RuntimeError(f"sshd of {host.name} not listening after {SSHD_START_TIMEOUT_S:g}s: {host.log()}")

    # --- using -----------------------------------------------------------

    def run(
        self,
        node: Node,
        argv: Sequence[str],
        *,
        input: str | None = None,
        timeout: float = COMMAND_TIMEOUT_S,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` in `node`'s network namespace (this machine's filesystem)."""
        return subprocess.run(
            ["ip", "netns", "exec", node.netns, *argv],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=None if env is None else dict(env),
        )

    def run_on_host(
        self, host: TestHost, argv: Sequence[str], *, timeout: float = COMMAND_TIMEOUT_S
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` as the host sees the world: its network and its mounts (private /etc)."""
        return subprocess.run(
            ["nsenter", f"--target={host.pid}", "--mount", "--net", "--", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def probe(
        self, source: Node, targets: Iterable[tuple[str, int]], *, timeout: float = 2.0
    ) -> dict[tuple[str, int], str]:
        """TCP connect from `source` to each target at once: `open`, `timeout`, `refused`, ..."""
        wanted = list(targets)
        done = self.run(
            source, [sys.executable, "-c", PROBE, json.dumps(wanted), str(timeout)], timeout=timeout + COMMAND_TIMEOUT_S
        )
        if done.returncode != 0:
            raise RuntimeError(f"probe from {source.name} failed: {done.stderr}")
        return dict(zip(wanted, json.loads(done.stdout), strict=True))

    @contextlib.contextmanager
    def listening(self, node: Node, ports: Iterable[int]) -> Iterator[None]:
        """TCP listeners on `ports` (all addresses) in `node`, for the block."""
        argv = ["ip", "netns", "exec", node.netns, sys.executable, "-c", LISTENER, *map(str, ports)]
        process = self._start(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert process.stdout is not None
            # One line is expected: "ready", or nothing (EOF) if the listener failed.
            readable, _, _ = select.select([process.stdout], [], [], COMMAND_TIMEOUT_S)
            ready = bool(readable) and process.stdout.readline().strip() == b"ready"
            if not ready:
                _stop(process)
                assert process.stderr is not None
                raise RuntimeError(f"listeners in {node.name} did not start: {process.stderr.read().decode()}")
            yield
        finally:
            _stop(process)


def _sshd_config(address: str, port: int, host_key: Path, authorized_keys: Path, environment: Mapping[str, str]) -> str:
    lines = [
        "# Generated by tests/support/testhost.py: key-only root login, nothing else.",
        f"ListenAddress {address}:{port}",
        f"HostKey {host_key}",
        f"AuthorizedKeysFile {authorized_keys}",
        "PidFile none",
        "AllowUsers root",
        "PermitRootLogin prohibit-password",
        "AuthenticationMethods publickey",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        # The generated files sit under /tmp (mode 1777), which StrictModes refuses as
        # a parent of authorized_keys; the files themselves are 0600 in a 0700 directory.
        "StrictModes no",
        "PermitUserEnvironment no",
        "AllowTcpForwarding no",
        "AllowAgentForwarding no",
        "X11Forwarding no",
        "PrintMotd no",
        "UseDNS no",
        "LoginGraceTime 20",
        "MaxStartups 50",
        "LogLevel VERBOSE",
    ]
    if environment:
        lines.append("SetEnv " + " ".join(f"{k}={v}" for k, v in environment.items()))
    return "\n".join(lines) + "\n"


def _netns_pids(netns: str) -> list[int]:
    done = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True, timeout=10, check=False)
    return [int(p) for p in done.stdout.split() if p.isdigit()]


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after a bounded wait; the process's own group only."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=STOP_TIMEOUT_S)
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
