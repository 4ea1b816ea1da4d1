"""The declared host bootstrap, run for real over SSH against test hosts.

Each test builds a private LAN of network namespaces (tests/support/testhost.py):
three test hosts named as the prod stack's hosts (`head`, a CPU worker `cpu1`, a
GPU worker `gpu1`), each running Debian's sshd with key-only root login and a
private /etc, plus an `admin` node (the only address in the admin network) and
an `outsider` node (neither admin nor cluster host).

The prod plan is evaluated with the hosts' test addresses, the generated user
key and the hosts' real host keys. From it the test takes, per host, the
declared `command:remote:Command` `<host>-bootstrap-run` (its `create` command
and its `stdin`, the script) and the declared Docker provider's `sshOpts`, and
runs `ssh <sshOpts> <user>@<address> <create>` with the script on stdin from the
admin node, with Debian's OpenSSH client: nothing is substituted. (pulumi-command
dials with Go's SSH client and the connection of the Command, not `ssh`; the
test checks that the Command's connection and the provider's endpoint name the
same host, port, user and pinned key, so the provider's `ssh` options stand in
for it.)

What the firewall should admit is written here from the issue's words, not from
the generated rules: SSH from the admin network, 80/443 on the head from anyone,
the Dask scheduler port on the head and the edge and worker ports on a worker
host from the cluster's own hosts; nothing else. The cluster's own containers
count as the cluster's: on a host they reach its cluster ports at its address (two
Dask workers of one host fetch from each other at their contact addresses), from
a Docker bridge rather than a cluster address. A drop shows as a connect that
times out (bounded at PROBE_TIMEOUT_S, asked again with RETRY_TIMEOUT_S where it
should have connected) where a listener is known to accept.

Docker publishes a container's port with a DNAT rule in the host's nat
prerouting; such connections are forwarded, never seen by the input chain.
That is emulated in the head's namespace the way Docker's rule does it (`ip
daddr <host> tcp dport <published> dnat to <container>:<port>`, the container
being a namespace on a `br-<id>` bridge in the host, the host forwarding for it),
so the forward chain is checked against real DNAT'ed traffic; a listener on the
host itself stands in for docker-proxy (what a container reaching a published
port of its own host meets by default). The Docker engine itself is not
run inside the test host (one engine per machine; it would rewrite this
machine's firewall): the host reaches this machine's engine through
/run/docker.sock, which is what the bootstrap's Docker checks talk to.

Not covered: the NVIDIA runtime present (no GPU or NVIDIA runtime here), so the
GPU check is only seen failing; and `sudo -n` for a non-root SSH user (the
hosts admit root only).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import subprocess
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from components.bootstrap import NFT_TABLE, RULES_FILE
from infra.config import NAMESPACE, Ports
from stacks.plan import evaluate_stack
from tests.support.dockerd import ensure_docker_engine
from tests.support.testhost import Lab, Node, TestHost, missing_prerequisites

_missing = missing_prerequisites()
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(bool(_missing), reason=f"test hosts need: {', '.join(_missing)}"),
]

REMOTE_COMMAND = "command:remote:Command"
PROVIDER = "pulumi:providers:docker"
PROBE_TIMEOUT_S = 2.0
RETRY_TIMEOUT_S = 10.0
SSH_TIMEOUT_S = 120.0
OPEN, DROPPED = "open", "timeout"
# Per source node: (address, port) -> how a TCP connect from it ends.
Outcomes = dict[str, dict[tuple[str, int], str]]

PORTS = Ports()  # Pulumi.prod.yaml keeps the default ports
SSH_PORT = 22
UNDECLARED = 9999  # no service of the cluster uses it

# The prod stack's host shapes; addresses and SSH come from the lab.
HOST_SHAPES: dict[str, dict[str, Any]] = {
    "head": {"roles": ["head"], "cpus": 16, "memoryGb": 64},
    "cpu1": {"roles": ["worker"], "cpus": 32, "memoryGb": 128},
    "gpu1": {"roles": ["worker"], "cpus": 32, "memoryGb": 128, "gpus": 2, "gpuModel": "NVIDIA L40S"},
}


@dataclass(frozen=True)
class DeclaredBootstrap:
    """What the plan declares for reaching one host and bootstrapping it."""

    host: str
    urn: str
    user: str
    address: str
    ssh_opts: list[str]
    create: str
    script: str

    def ssh_argv(self) -> list[str]:
        return ["ssh", *self.ssh_opts, f"{self.user}@{self.address}", self.create]

    @property
    def ruleset(self) -> str:
        """The nftables ruleset the script carries as data (`FIREWALL_B64='...'`), decoded."""
        found = re.search(r"^FIREWALL_B64='([A-Za-z0-9+/=]*)'$", self.script, re.M)
        assert found is not None, f"{self.urn}: the script carries no ruleset"
        return base64.b64decode(found[1]).decode()


def declare(
    hosts: Mapping[str, TestHost],
    *,
    user_key: Path,
    admin_network: str,
    host_keys: Mapping[str, str] | None = None,
) -> dict[str, DeclaredBootstrap]:
    """Evaluate the prod plan for the lab's hosts; `host_keys` pins other keys than theirs."""
    pinned = {name: host.host_key for name, host in hosts.items()} | dict(host_keys or {})
    inventory = [
        {
            "name": name,
            "address": hosts[name].address,
            **shape,
            "ssh": {
                "user": "root",
                "port": hosts[name].ssh_port,
                "privateKeyPath": str(user_key),
                "hostKey": pinned[name],
            },
        }
        for name, shape in HOST_SHAPES.items()
    ]
    evaluation = evaluate_stack(
        "prod",
        overrides={
            f"{NAMESPACE}:hosts": json.dumps(inventory),
            f"{NAMESPACE}:firewall": json.dumps({"adminNetworks": [admin_network]}),
            # Coherence only: the proxy publishes on the head's (test) address; the
            # bootstrap does not depend on it.
            f"{NAMESPACE}:proxy": json.dumps(
                {"domain": "ai.example.com", "tls": "internal", "listenAddress": hosts["head"].address}
            ),
        },
    )
    declared = {}
    for name in HOST_SHAPES:
        run = evaluation.named(f"{name}-bootstrap-run")
        provider = evaluation.named(f"{name}-docker")
        assert run.type == REMOTE_COMMAND and provider.type == PROVIDER, (run.urn, provider.urn)
        inputs, endpoint = run.plain_inputs(), provider.plain_inputs()
        url = urlsplit(endpoint["host"])
        ssh_opts = json.loads(endpoint["sshOpts"])  # provider config reaches the engine as JSON text
        connection = inputs["connection"]
        # pulumi-command and the Docker provider must reach one host, one way.
        assert url.scheme == "ssh" and url.username == connection["user"], f"{provider.urn}: {endpoint['host']}"
        assert url.hostname == connection["host"] and url.port == int(connection["port"]), (
            f"{run.urn} vs {provider.urn}"
        )
        known_as = url.hostname if url.port == SSH_PORT else f"[{url.hostname}]:{url.port}"  # as known_hosts has it
        assert f"KnownHostsCommand=/bin/echo {known_as} {connection['hostKey']}" in ssh_opts, provider.urn
        assert inputs["create"] == inputs["update"], f"{run.urn}: update differs from create"
        assert url.username is not None and url.hostname is not None
        declared[name] = DeclaredBootstrap(
            name, run.urn, url.username, url.hostname, ssh_opts, inputs["create"], inputs["stdin"]
        )
    return declared


@dataclass
class Cluster:
    """A lab with the stack's three hosts, an admin node, an outsider, and the plan for them."""

    lab: Lab
    admin: Node
    outsider: Node
    hosts: dict[str, TestHost]
    declared: dict[str, DeclaredBootstrap]

    @property
    def admin_network(self) -> str:
        return f"{self.admin.address}/32"

    def bootstrap(self, host: str, declared: DeclaredBootstrap | None = None) -> subprocess.CompletedProcess[str]:
        """Run the declared bootstrap of `host` over SSH from the admin node, exactly as declared."""
        d = declared if declared is not None else self.declared[host]
        return self.lab.run(self.admin, d.ssh_argv(), input=d.script, timeout=SSH_TIMEOUT_S)

    def ruleset(self, host: str) -> subprocess.CompletedProcess[str]:
        return self.lab.run(self.hosts[host], ["nft", "list", "table", "inet", NFT_TABLE])

    def rules_file(self, host: str) -> Path:
        return self.hosts[host].etc / Path(RULES_FILE).relative_to("/etc")

    def logs(self, *names: str) -> str:
        return "\n".join(f"--- sshd of {n}:\n{self.hosts[n].log()}" for n in names or self.hosts)


@pytest.fixture(scope="session")
def docker_engine() -> None:
    """The engine the bootstrap's checks talk to (through /run/docker.sock)."""
    reason = ensure_docker_engine()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture
def make_cluster(docker_engine: None) -> Iterator[Callable[..., Cluster]]:
    """Build a fresh cluster lab per call; every lab is torn down when the test ends."""
    with contextlib.ExitStack() as stack:

        def make(*, without_docker: tuple[str, ...] = (), ssh_ports: Mapping[str, int] | None = None) -> Cluster:
            lab = stack.enter_context(Lab())
            admin, outsider = lab.node("admin"), lab.node("outsider")
            hosts = {
                name: lab.host(name, docker=name not in without_docker, ssh_port=(ssh_ports or {}).get(name, SSH_PORT))
                for name in HOST_SHAPES
            }
            declared = declare(hosts, user_key=lab.user_key, admin_network=f"{admin.address}/32")
            return Cluster(lab, admin, outsider, hosts, declared)

        yield make


@pytest.fixture
def cluster(make_cluster: Callable[..., Cluster]) -> Cluster:
    return make_cluster()


def _sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def _table_absent(c: Cluster, host: str) -> bool:
    return c.ruleset(host).returncode != 0 and not (c.hosts[host].etc / "cluster-ai").exists()


# -- idempotent ------------------------------------------------------------------------------


def test_bootstrap_succeeds_twice_in_a_row_with_the_same_rules(cluster: Cluster) -> None:
    this_machine = (Path("/etc/cluster-ai").exists(), _sha256(Path("/etc/nftables.conf")))
    for host in ("head", "cpu1"):
        d = cluster.declared[host]
        assert _table_absent(cluster, host), f"{d.urn}: {host} is not fresh"
        runs, rulesets, files, confs = [], [], [], []
        for attempt in (1, 2):
            run = cluster.bootstrap(host)
            assert run.returncode == 0, (
                f"{d.urn}: run {attempt} exited {run.returncode}: {run.stderr}\n{cluster.logs(host)}"
            )
            listed = cluster.ruleset(host)
            assert listed.returncode == 0, f"{d.urn}: run {attempt} left no table inet {NFT_TABLE}: {listed.stderr}"
            runs.append(run.stdout)
            rulesets.append(listed.stdout)
            files.append(cluster.rules_file(host).read_text())
            confs.append((cluster.hosts[host].etc / "nftables.conf").read_text())
        assert runs[0] == runs[1] == f"cluster-ai bootstrap: host {host} ready\n", f"{d.urn}: {runs}"
        assert rulesets[0] == rulesets[1], f"{d.urn}: the second run changed the live rules"
        assert files[0] == files[1], f"{d.urn}: the second run changed {RULES_FILE}"
        assert files[0] == d.ruleset, f"{d.urn}: {RULES_FILE} is not the ruleset the script declares"
        assert confs[0] == confs[1], f"{d.urn}: the second run changed /etc/nftables.conf"
        assert confs[1].count(f'include "{RULES_FILE}"') == 1, f"{d.urn}: /etc/nftables.conf:\n{confs[1]}"
        assert not cluster.rules_file(host).with_suffix(".nft.new").exists(), f"{d.urn}: left its temporary file"
        assert cluster.rules_file(host).stat().st_mode & 0o077 == 0, f"{d.urn}: {RULES_FILE} is readable by others"

        # A reboot: the distribution loads /etc/nftables.conf, which now includes the rules.
        reboot = cluster.lab.run_on_host(cluster.hosts[host], ["nft", "-f", "/etc/nftables.conf"])
        assert reboot.returncode == 0, f"{d.urn}: /etc/nftables.conf does not load: {reboot.stderr}"
        assert cluster.ruleset(host).stdout == rulesets[0], f"{d.urn}: after a reload the rules differ"
    # Everything landed in the hosts' private /etc, nothing on this machine.
    assert (Path("/etc/cluster-ai").exists(), _sha256(Path("/etc/nftables.conf"))) == this_machine


# -- the rules admit what the cluster needs, and drop the rest ----------------------------------


def _expect(rules: dict[int, set[str]], sources: Mapping[str, Node], target: TestHost) -> Outcomes:
    """Per source node name: (address, port) -> OPEN if the source's role is admitted, else DROPPED."""
    expected: Outcomes = {}
    for role, node in sources.items():
        for port, roles in rules.items():
            expected.setdefault(node.name, {})[(target.address, port)] = OPEN if role in roles else DROPPED
    return expected


def _probe_all(c: Cluster, expected: Outcomes) -> Outcomes:
    """Probe every target from every source at once; `expected` gives sources, targets and wants."""
    outcomes = {
        name: c.lab.probe(c.lab.nodes[name], targets, timeout=PROBE_TIMEOUT_S) for name, targets in expected.items()
    }
    # A connect that should succeed can be slow on a loaded machine: ask those again,
    # with more patience. (A drop never turns into "open", so nothing else is retried.)
    for name, targets in expected.items():
        slow = [t for t, want in targets.items() if want == OPEN and outcomes[name][t] == DROPPED]
        if slow:
            outcomes[name].update(c.lab.probe(c.lab.nodes[name], slow, timeout=RETRY_TIMEOUT_S))
    return outcomes


def _all_open(expected: Outcomes) -> Outcomes:
    return {name: dict.fromkeys(targets, OPEN) for name, targets in expected.items()}


def _merge(*parts: Outcomes) -> Outcomes:
    merged: Outcomes = {}
    for part in parts:
        for name, targets in part.items():
            merged.setdefault(name, {}).update(targets)
    return merged


ANYONE = {"admin", "cluster", "outsider"}
# From the issue: SSH from the admin network; 443/80 on the head; the Dask and
# edge ports from the cluster's own hosts; nothing else. The scheduler also
# admits the admin network: operators' Dask clients connect with the exported
# operator certificate.
HEAD_RULES: dict[int, set[str]] = {
    SSH_PORT: {"admin"},
    80: ANYONE,
    443: ANYONE,
    PORTS.scheduler: {"admin", "cluster"},
    UNDECLARED: set(),
}
# cpu1 runs one worker: worker_base is its only worker port, worker_base + 1 is not.
WORKER_RULES: dict[int, set[str]] = {
    SSH_PORT: {"admin"},
    PORTS.edge: {"cluster"},
    PORTS.worker_base: {"cluster"},
    PORTS.worker_base + 1: set(),
    80: set(),
    443: set(),
    PORTS.scheduler: set(),
    UNDECLARED: set(),
}


def test_installed_rules_admit_the_allowed_ports_and_drop_the_rest(cluster: Cluster) -> None:
    c = cluster
    head, cpu1 = c.hosts["head"], c.hosts["cpu1"]
    # The other end of each rule: a declared cluster host (cpu1 for the head, the head for cpu1).
    expected = _merge(
        _expect(HEAD_RULES, {"admin": c.admin, "cluster": cpu1, "outsider": c.outsider}, head),
        _expect(WORKER_RULES, {"admin": c.admin, "cluster": head, "outsider": c.outsider}, cpu1),
    )
    with (
        c.lab.listening(head, [p for p in HEAD_RULES if p != SSH_PORT]),
        c.lab.listening(cpu1, [p for p in WORKER_RULES if p != SSH_PORT]),
    ):
        # Without rules every listener answers everyone: a drop later is the rules' doing.
        before = _probe_all(c, _all_open(expected))
        for name, outcomes in before.items():
            assert set(outcomes.values()) == {OPEN}, f"before the bootstrap, from {name}: {outcomes}"

        for host in ("head", "cpu1"):
            run = c.bootstrap(host)
            assert run.returncode == 0, f"{c.declared[host].urn}: {run.stderr}\n{c.logs(host)}"

        after = _probe_all(c, expected)
        for name, outcomes in expected.items():
            for target, want in outcomes.items():
                host = "head" if target[0] == head.address else "cpu1"
                assert after[name][target] == want, (
                    f"{c.declared[host].urn}: {name} ({c.lab.nodes[name].address}) -> {host}:{target[1]} "
                    f"is {after[name][target]}, expected {want}"
                )
    # SSH from the admin network still works after the rules are in: the bootstrap runs again.
    again = c.bootstrap("head")
    assert again.returncode == 0, f"{c.declared['head'].urn}: SSH from the admin network refused: {again.stderr}"

    forward = c.lab.run(head, ["nft", "list", "chain", "inet", NFT_TABLE, "forward"])
    assert forward.returncode == 0, f"{c.declared['head'].urn}: {forward.stderr}"
    assert "hook forward" in forward.stdout and "ct original proto-dst" in forward.stdout, forward.stdout
    assert "ct status dnat ct state new drop" in forward.stdout, forward.stdout


def test_published_ports_are_filtered_by_the_port_the_client_dialled(cluster: Cluster) -> None:
    """A port Docker publishes (DNAT to a container) is admitted by its original port only."""
    c = cluster
    head, cpu1 = c.hosts["head"], c.hosts["cpu1"]
    container = c.lab.container(head, "head-ctr")
    # Published port -> the container's port; the container ports differ on purpose,
    # so a rule matching the translated port would not admit anything.
    published = {PORTS.scheduler: 18786, 443: 18443, UNDECLARED: 19999}
    rules = "\n".join(
        f"ip daddr {head.address} tcp dport {port} dnat to {container.address}:{inner}"
        for port, inner in published.items()
    )
    # What Docker adds for `-p <head>:<port>:<inner>` (nat prerouting, dstnat priority).
    docker_nat = (
        "table ip docker_emulation {\n chain prerouting {\n"
        "  type nat hook prerouting priority dstnat; policy accept;\n"
        f"  {rules}\n }}\n}}\n"
    )
    nat = c.lab.run(head, ["nft", "-f", "-"], input=docker_nat)
    assert nat.returncode == 0, nat.stderr
    expected = _expect(
        {PORTS.scheduler: {"admin", "cluster"}, 443: ANYONE, UNDECLARED: set()},
        {"admin": c.admin, "cluster": cpu1, "outsider": c.outsider},
        head,
    )
    with c.lab.listening(container, published.values()):
        before = _probe_all(c, _all_open(expected))
        for name, outcomes in before.items():
            assert set(outcomes.values()) == {OPEN}, f"the DNAT path does not work from {name}: {outcomes}"

        run = c.bootstrap("head")
        assert run.returncode == 0, f"{c.declared['head'].urn}: {run.stderr}"

        after = _probe_all(c, expected)
        for name, outcomes in expected.items():
            for target, want in outcomes.items():
                assert after[name][target] == want, (
                    f"{c.declared['head'].urn}: {name} -> published head:{target[1]} "
                    f"(container :{published[target[1]]}) is {after[name][target]}, expected {want}"
                )
    # The bootstrap replaces its own table only: Docker's NAT rules are still there.
    assert c.lab.run(head, ["nft", "list", "table", "ip", "docker_emulation"]).returncode == 0


def test_containers_reach_the_cluster_ports_of_their_own_host(cluster: Cluster) -> None:
    """Two Dask workers on one host fetch data from each other at their contact
    address (`<host address>:<worker port>`); Prometheus and the egress on the head
    reach what the head publishes the same way. Such traffic comes from the host's
    own Docker bridge, not from a cluster address: through docker-proxy (Docker's
    default for a container reaching a published port of its own host) it meets the
    input chain, through Docker's DNAT (another network, or no userland proxy) the
    forward chain. Both must admit the cluster ports, and only those."""
    c = cluster
    cpu1 = c.hosts["cpu1"]
    worker_a = c.lab.container(cpu1, "cpu1-worker-a")
    worker_b = c.lab.container(cpu1, "cpu1-worker-b")
    inner = 18790
    # Docker's rule for `-p <cpu1>:<worker_base>:<inner>` on worker_b's network.
    docker_nat = (
        "table ip docker_emulation {\n chain prerouting {\n"
        "  type nat hook prerouting priority dstnat; policy accept;\n"
        f"  ip daddr {cpu1.address} tcp dport {PORTS.worker_base} dnat to {worker_b.address}:{inner}\n }}\n}}\n"
    )
    assert c.lab.run(cpu1, ["nft", "-f", "-"], input=docker_nat).returncode == 0
    # PORTS.edge and UNDECLARED answer on the host itself, as docker-proxy would.
    expected: Outcomes = {
        worker_a.name: {
            (cpu1.address, PORTS.edge): OPEN,
            (cpu1.address, PORTS.worker_base): OPEN,
            (cpu1.address, UNDECLARED): DROPPED,
            (cpu1.address, SSH_PORT): DROPPED,
        },
        c.outsider.name: {(cpu1.address, PORTS.worker_base): DROPPED, (cpu1.address, PORTS.edge): DROPPED},
    }
    with c.lab.listening(cpu1, [PORTS.edge, UNDECLARED]), c.lab.listening(worker_b, [inner]):
        before = _probe_all(c, _all_open(expected))
        for name, outcomes in before.items():
            assert set(outcomes.values()) == {OPEN}, f"before the bootstrap, from {name}: {outcomes}"
        run = c.bootstrap("cpu1")
        assert run.returncode == 0, f"{c.declared['cpu1'].urn}: {run.stderr}"
        after = _probe_all(c, expected)
        assert after == expected, f"{c.declared['cpu1'].urn}: from the host's own containers: {after}"


# -- clear failures, naming the host ----------------------------------------------------------


def _docker_runtimes() -> str:
    done = subprocess.run(
        ["docker", "info", "--format", "{{json .Runtimes}}"], capture_output=True, text=True, timeout=30, check=False
    )
    return done.stdout


def test_gpu_host_without_the_nvidia_runtime_fails_naming_the_host(cluster: Cluster) -> None:
    if '"nvidia"' in _docker_runtimes():
        pytest.skip("this machine's Docker engine has the NVIDIA runtime")
    d = cluster.declared["gpu1"]
    run = cluster.bootstrap("gpu1")
    assert run.returncode != 0, f"{d.urn}: succeeded without the NVIDIA runtime: {run.stdout}"
    assert "cluster-ai bootstrap: host gpu1:" in run.stderr, f"{d.urn}: {run.stderr}"
    assert "NVIDIA container runtime is missing" in run.stderr, f"{d.urn}: {run.stderr}"
    # It stops before it changes anything.
    assert _table_absent(cluster, "gpu1"), f"{d.urn}: installed rules despite failing"


def test_host_without_a_running_docker_engine_fails_naming_the_host(make_cluster: Callable[..., Cluster]) -> None:
    c = make_cluster(without_docker=("head",))
    d = c.declared["head"]
    # The host's own view: no engine answers on its socket.
    assert c.lab.run_on_host(c.hosts["head"], ["docker", "version"]).returncode != 0
    run = c.bootstrap("head")
    assert run.returncode != 0, f"{d.urn}: succeeded without Docker: {run.stdout}"
    assert "cluster-ai bootstrap: host head:" in run.stderr, f"{d.urn}: {run.stderr}"
    assert "Docker engine is not running" in run.stderr, f"{d.urn}: {run.stderr}"
    assert _table_absent(c, "head"), f"{d.urn}: installed rules despite failing"


# -- host keys are pinned -------------------------------------------------------------------


def test_a_host_whose_key_does_not_match_is_refused(cluster: Cluster) -> None:
    c = cluster
    # The plan as if cpu1's key had been pinned for the head by mistake (or the head replaced).
    wrong = declare(
        c.hosts, user_key=c.lab.user_key, admin_network=c.admin_network, host_keys={"head": c.hosts["cpu1"].host_key}
    )["head"]
    assert c.hosts["cpu1"].host_key in " ".join(wrong.ssh_opts), wrong.urn
    run = c.bootstrap("head", wrong)
    assert run.returncode == 255, f"{wrong.urn}: ssh exited {run.returncode}: {run.stderr}"
    assert "Host key verification failed" in run.stderr, f"{wrong.urn}: {run.stderr}"
    assert "Accepted publickey" not in c.hosts["head"].log(), f"{wrong.urn}: the client authenticated anyway"
    assert _table_absent(c, "head"), f"{wrong.urn}: the script ran on a host with another key"
    # The same plan with the right key gets in: the refusal was the key's doing.
    right = c.bootstrap("head")
    assert right.returncode == 0, f"{c.declared['head'].urn}: {right.stderr}"


def test_a_host_on_another_ssh_port_is_pinned_as_known_hosts_has_it(make_cluster: Callable[..., Cluster]) -> None:
    """Off port 22, known_hosts names a host `[address]:port`: the pinned key must be found
    under that name, and the firewall admits the host's SSH port, not 22."""
    port = 2222
    c = make_cluster(ssh_ports={"head": port})
    d = c.declared["head"]
    assert f"[{d.address}]:{port} {c.hosts['head'].host_key}" in " ".join(d.ssh_opts), d.urn
    run = c.bootstrap("head")
    assert run.returncode == 0, f"{d.urn}: {run.stderr}\n{c.logs('head')}"
    with c.lab.listening(c.hosts["head"], [SSH_PORT]):
        expected: Outcomes = {c.admin.name: {(d.address, port): OPEN, (d.address, SSH_PORT): DROPPED}}
        outcomes = _probe_all(c, expected)
    assert outcomes == expected, f"{d.urn}: from admin {outcomes}"
    wrong = declare(
        c.hosts, user_key=c.lab.user_key, admin_network=c.admin_network, host_keys={"head": c.hosts["cpu1"].host_key}
    )["head"]
    refused = c.bootstrap("head", wrong)
    assert refused.returncode == 255 and "Host key verification failed" in refused.stderr, f"{wrong.urn}: {refused}"
