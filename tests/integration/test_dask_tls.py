"""The prod stack's Dask on mutual TLS, with real certificates and the real `dask` CLI.

Certificates issued the way the program issues them (tests/support/pki.py reads
the plan's pulumi-tls inputs: the same algorithm and curve, usages and names) let
the declared scheduler and workers of the prod plan talk over `tls://` with the
declared flags, and a client without a valid certificate is refused.

The plan is prod with its hosts on loopback addresses (tests/support/prod_stack.py:
head 127.0.0.1, GPU nodes 127.0.0.2 and 127.0.0.3), so the addresses the program
writes into command lines and certificates are ones this machine answers on.
Outside Docker only these change (tests/support/dask_cluster.py `localize`, each
change explained there): the ports (free ones: this machine's ports are shared by
every "host" and by parallel test runs), the `/run/secrets/...` paths (files
holding the issued PEMs each container would have had uploaded), the
scheduler's `--host 0.0.0.0` (loopback), and `--local-directory`. Everything else,
`--protocol tls`, the TLS flags, `--dashboard-prefix dask`, `--contact-address`,
`--resources GPU=1`, runs as declared.
"""

from __future__ import annotations

import asyncio
import re
import shlex
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import distributed
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from distributed import Client
from distributed.comm import connect
from distributed.security import Security

from components.dask import RETIRE_TIMEOUT_S
from components.hardened import SECRETS_DIR
from components.tls import CLIENT_USAGES, PEER_USAGES, SERVER_USAGES
from stacks.mocks import Evaluation, Resource, is_file_holder
from tests.support.dask_cluster import (
    CONTAINER,
    Cluster,
    command_of,
    flag,
    health_probe,
    host_of,
    start_cluster,
)
from tests.support.pki import LOCALLY_SIGNED, PlanPki, usage_extensions
from tests.support.processes import LOOPBACK, POLL_S, STOP_TIMEOUT_S, wait_until
from tests.support.prod_stack import GPU_NODES, HEAD, loopback_prod

pytestmark = pytest.mark.integration

OPERATOR_CERT = "dask-ca-operator-cert"
EDGE_CERT = "cluster-ca-edge-gpu1-cert"
# Clients of the cluster CA that must not join Dask: the log shipper and the prober.
SHIPPER_CERT = "cluster-ca-alloy-gpu1-cert"
PROBER_CERT = "cluster-ca-blackbox-cert"
DASK_CA = "dask-ca-cert"
CLUSTER_CA = "cluster-ca-cert"
DRAINED_HOST = "gpu2"
# A refused client must fail at once; the bound covers distributed's own retries.
REFUSAL_TIMEOUT_S = 5
REFUSAL_BOUND_S = 15.0
RESULT_TIMEOUT_S = 30.0
# How long retired workers must stay gone (a nanny that restarted them would re-register).
STAYS_GONE_S = 3.0
# How the scheduler and workers log a refused connection, and the client's local address.
HANDSHAKE_FAILED = "TLS handshake failed with remote 'tls://127.0.0.1:{port}'"
LOCAL_ADDRESS = re.compile(r"local=(?:tls|tcp)://127\.0\.0\.1:(\d+)")


# -- certificates ------------------------------------------------------------------------


def security(bundle: Any, ca: Path | None = None) -> Security:
    """A distributed client's TLS settings: the cluster CA and a certificate (mutual TLS)."""
    return Security(
        tls_ca_file=str(ca or bundle.ca),
        tls_client_cert=str(bundle.cert),
        tls_client_key=str(bundle.key),
        require_encryption=True,
    )


class CertificateLess(Security):
    """Trusts the cluster CA and speaks TLS, but presents no certificate.

    distributed's own `Security` builds no TLS context at all without a
    certificate (the client would fail before connecting); this one gets as far
    as the TLS handshake, where the server must refuse it.
    """

    def __init__(self, ca: Path) -> None:
        super().__init__(require_encryption=True)
        self._ca = ca

    def get_connection_args(self, role: str) -> dict[str, Any]:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self._ca))
        context.check_hostname = False  # as distributed's own client contexts: IPs, one private CA
        return {"ssl_context": context, "require_encryption": True, "extra_conn_args": {}}


@pytest.fixture(scope="module")
def plan() -> Evaluation:
    return loopback_prod()


@pytest.fixture(scope="module")
def pki(plan: Evaluation) -> PlanPki:
    return PlanPki(plan)


@pytest.fixture(scope="module")
def other_pki(plan: Evaluation) -> PlanPki:
    """Another CA issuing the very same names and usages: only the CA differs."""
    return PlanPki(plan)


@pytest.fixture(scope="module")
def operator(pki: PlanPki, tmp_path_factory: pytest.TempPathFactory) -> Security:
    """What `stacks status` and an operator's client present: the exported operator certificate."""
    return security(pki.cert(OPERATOR_CERT).write(tmp_path_factory.mktemp("operator")))


# -- clusters ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(
    request: pytest.FixtureRequest,
    plan: Evaluation,
    pki: PlanPki,
    operator: Security,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Cluster]:
    """The prod plan's scheduler and four GPU workers (two hosts), on mutual TLS."""
    yield start_cluster(plan, tmp_path_factory.mktemp("dask-tls"), request, pki=pki, client_security=operator)


@pytest.fixture
def drained_cluster(
    request: pytest.FixtureRequest,
    plan: Evaluation,
    pki: PlanPki,
    operator: Security,
    tmp_path_factory: pytest.TempPathFactory,
) -> Cluster:
    """A cluster of its own: the drain retires workers, which no other test may see."""
    return start_cluster(plan, tmp_path_factory.mktemp("dask-tls-drain"), request, pki=pki, client_security=operator)


def host_address(worker: Resource) -> str:
    """The host address a worker container is published on (its declared contact address)."""
    return host_of(flag(command_of(worker), "--contact-address"))


# -- the certificates are the program's --------------------------------------------------


def test_issued_certificates_apply_the_plans_algorithm_usages_and_names(plan: Evaluation, pki: PlanPki) -> None:
    assert sorted(pki.cas) == [CLUSTER_CA, DASK_CA], sorted(pki.cas)
    for ca in pki.cas.values():
        assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca, "the CA certificate is no CA"
    for resource in plan.by_type(LOCALLY_SIGNED):
        inputs = resource.plain_inputs()
        issued = pki.cert(resource.name).certificate
        # Dask's certificates (its processes' and the operator's) come from Dask's own CA, the rest from the cluster's.
        issued.verify_directly_issued_by(pki.cas[DASK_CA if resource.name.startswith("dask-ca-") else CLUSTER_CA])
        key = issued.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey), f"{resource.urn}: not an ECDSA key"
        # pulumi-tls defaults to P224: the program must have set P256 or better.
        assert key.curve.name in ("secp256r1", "secp384r1"), f"{resource.urn}: curve {key.curve.name}"
        key_usage, extended = usage_extensions(list(inputs["allowedUses"]))
        assert issued.extensions.get_extension_for_class(x509.KeyUsage).value == key_usage, resource.urn
        assert issued.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == extended, resource.urn
    # Who gets what: Dask peers both ways, the operator a client, an edge a server.
    assert tuple(plan.named(OPERATOR_CERT).plain_inputs()["allowedUses"]) == CLIENT_USAGES
    assert tuple(plan.named(EDGE_CERT).plain_inputs()["allowedUses"]) == SERVER_USAGES
    for name in ("dask-ca-dask-scheduler-cert", *(f"dask-ca-dask-{host}-cert" for host in GPU_NODES)):
        assert tuple(plan.named(name).plain_inputs()["allowedUses"]) == PEER_USAGES, name


def test_each_dask_container_gets_its_hosts_certificate(plan: Evaluation, pki: PlanPki, tmp_path: Path) -> None:
    """The uploads of each container are the certificate issued for its host, with its address."""
    for container in plan.by_type(CONTAINER):
        if not container.name.startswith("dask-") or is_file_holder(container):
            continue
        files = pki.write_uploads(container, tmp_path / container.name)
        cert = x509.load_pem_x509_certificate(files[f"{SECRETS_DIR}/tls.crt"].read_bytes())
        dask_ca = pki.cert(OPERATOR_CERT).ca_pem
        assert files[f"{SECRETS_DIR}/ca.pem"].read_text() == dask_ca, f"{container.urn}: ca.pem is not Dask's CA"
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        ips = [str(a) for a in sans.get_values_for_type(x509.IPAddress)]
        expected = HEAD if container.name == "dask-scheduler" else host_address(container)
        assert ips == [expected], f"{container.urn}: its certificate names {ips}, the container runs on {expected}"


# -- the declared processes on TLS ---------------------------------------------------------


def test_scheduler_and_workers_speak_tls_at_their_declared_addresses(cluster: Cluster) -> None:
    scheduler = command_of(cluster.scheduler)
    assert flag(scheduler, "--protocol") == "tls", f"{cluster.scheduler.urn}: --protocol"
    assert cluster.address.startswith("tls://"), cluster.address
    info = cluster.client.scheduler_info(n_workers=-1)["workers"]
    reported = {str(w["name"]): address for address, w in info.items()}
    assert sorted(reported) == sorted(cluster.workers), f"workers\n{cluster.logs()}"
    for name, container in cluster.workers.items():
        # Each worker advertises its host's address (--contact-address), on tls.
        expected = f"tls://{host_address(container)}:{cluster.listen_ports[name]}"
        assert reported[name] == expected, f"{container.urn}: registered as {reported[name]}, expected {expected}"
        assert command_of(container)[2] == f"tls://{HEAD}:{flag(scheduler, '--port')}", (
            f"{container.urn}: a remote worker must reach the scheduler at the head's address"
        )


def test_health_endpoints_answer_where_the_healthchecks_probe(cluster: Cluster) -> None:
    # --dashboard-prefix moves every HTTP route, /health included: the
    # scheduler's healthcheck must probe /dask/health, and /health is gone.
    _, path = health_probe(cluster.scheduler)
    assert path == "/dask/health", f"{cluster.scheduler.urn}: the healthcheck probes {path}"
    local = cluster.dashboard_ports[cluster.scheduler.name]
    response = httpx.get(f"http://{LOOPBACK}:{local}{path}", timeout=5.0)
    assert (response.status_code, response.text) == (200, "ok"), f"{cluster.scheduler.urn}: {path}"
    assert httpx.get(f"http://{LOOPBACK}:{local}/health", timeout=5.0).status_code == 404
    for container in cluster.workers.values():
        _, path = health_probe(container)
        response = httpx.get(f"http://{LOOPBACK}:{cluster.dashboard_ports[container.name]}{path}", timeout=5.0)
        assert (response.status_code, response.text) == (200, "ok"), f"{container.urn}: {path}"


def test_workers_report_the_declared_gpu_resources_and_threads(cluster: Cluster) -> None:
    reported = cluster.reported_workers()
    for name, container in cluster.workers.items():
        command = command_of(container)
        assert flag(command, "--resources") == "GPU=1", f"{container.urn}: one worker per GPU"
        assert reported[name]["resources"] == {"GPU": 1.0}, f"{container.urn}: {reported[name]['resources']}"
        assert reported[name]["nthreads"] == int(flag(command, "--nthreads")), f"{container.urn}: nthreads"
        assert reported[name]["memory_limit"] == int(flag(command, "--memory-limit")), f"{container.urn}: memory"


def test_operator_client_computes_across_hosts_on_tls(cluster: Cluster) -> None:
    client = cluster.client
    by_host: dict[str, list[str]] = {}
    for address in client.scheduler_info(n_workers=-1)["workers"]:
        by_host.setdefault(host_of(address), []).append(address)
    assert sorted(by_host) == sorted(GPU_NODES.values()), by_host
    first, second = (by_host[GPU_NODES[h]][0] for h in sorted(GPU_NODES))

    # Nested, so cloudpickle ships them by value: the workers cannot import this module.
    def produce(n: int) -> list[int]:
        return [i * i for i in range(n)]

    def consume(values: list[int]) -> tuple[int, str]:
        return sum(values), str(distributed.get_worker().address)

    # A result made on one GPU node and used on the other: worker-to-worker
    # transfer over mutual TLS between the hosts' certificates.
    made = client.submit(produce, 100, workers=[first], resources={"GPU": 1}, pure=False)
    used = client.submit(consume, made, workers=[second], resources={"GPU": 1}, pure=False)
    total, where = used.result(RESULT_TIMEOUT_S)
    assert (total, where) == (sum(i * i for i in range(100)), second), cluster.logs()
    # The operator's client fetches straight from the workers too (a client-only certificate).
    gathered = client.gather([made], direct=True)
    assert gathered == [produce(100)], cluster.logs()
    versions = client.get_versions(check=True)
    assert versions["scheduler"]["packages"]["distributed"] == distributed.__version__


# -- refusals ----------------------------------------------------------------------------------


Refused = Callable[[Cluster, PlanPki, PlanPki, Path], tuple[Security | None, str]]
"""What a refused client presents, and the scheme it connects with."""

REFUSALS: dict[str, tuple[Refused, str]] = {
    "no certificate": (
        lambda c, pki, other, tmp: (CertificateLess(pki.cert(OPERATOR_CERT).write(tmp).ca), "tls"),
        "peer did not return a certificate",
    ),
    "certificate from another CA": (
        # It trusts the right CA, so the refusal is the server's: the same names and usages, another issuer.
        lambda c, pki, other, tmp: (
            security(other.cert(OPERATOR_CERT).write(tmp / "other"), ca=pki.cert(OPERATOR_CERT).write(tmp).ca),
            "tls",
        ),
        "certificate verify failed: unable to get local issuer certificate",
    ),
    # Certificates of the cluster's other CA: valid for their edges, never for Dask. Each
    # client trusts Dask's CA, so the refusal is the listener's.
    "the log shipper's client certificate (cluster CA)": (
        lambda c, pki, other, tmp: (dask_client(pki, SHIPPER_CERT, tmp), "tls"),
        "certificate verify failed: unable to get local issuer certificate",
    ),
    "the prober's client certificate (cluster CA)": (
        lambda c, pki, other, tmp: (dask_client(pki, PROBER_CERT, tmp), "tls"),
        "certificate verify failed: unable to get local issuer certificate",
    ),
    "an edge's server certificate (cluster CA)": (
        lambda c, pki, other, tmp: (dask_client(pki, EDGE_CERT, tmp), "tls"),
        "certificate verify failed: unable to get local issuer certificate",
    ),
    "plain tcp": (
        lambda c, pki, other, tmp: (None, "tcp"),
        "wrong version number",
    ),
}


def dask_client(pki: PlanPki, name: str, tmp: Path) -> Security:
    """A client presenting the plan's certificate `name` while trusting Dask's CA."""
    return security(pki.cert(name).write(tmp / "client"), ca=pki.cert(OPERATOR_CERT).write(tmp / "dask").ca)


def assert_logged_refusal(log: Callable[[], str], error: BaseException, reason: str) -> None:
    """The listener logged the refused handshake of *this* connection, for `reason`."""
    match = LOCAL_ADDRESS.search(str(error))
    assert match is not None, f"no local address in {error!r}"
    # The listener is a TLS one whatever the client spoke: it names the peer tls://.
    line = HANDSHAKE_FAILED.format(port=match[1])

    def logged() -> bool:
        return any(line in entry and reason in entry for entry in log().splitlines())

    deadline = time.monotonic() + STOP_TIMEOUT_S
    while not logged() and time.monotonic() < deadline:
        time.sleep(POLL_S)
    assert logged(), f"no {line!r} ... {reason!r} in the listener's log:\n{log()[-3000:]}"


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_scheduler_refuses_a_client_without_a_valid_certificate(
    case: str, cluster: Cluster, pki: PlanPki, other_pki: PlanPki, tmp_path: Path
) -> None:
    make, reason = REFUSALS[case]
    client_security, scheme = make(cluster, pki, other_pki, tmp_path)
    address = cluster.address.replace("tls://", f"{scheme}://")

    def clients() -> set[str]:
        return set(cluster.client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.clients)))

    before = clients()
    started = time.monotonic()
    with pytest.raises(OSError) as refused:
        # distributed's CommClosedError is an OSError: the connection was closed on it.
        Client(address, security=client_security, timeout=REFUSAL_TIMEOUT_S, set_as_default=False)
    assert time.monotonic() - started < REFUSAL_BOUND_S, f"{case}: the refusal took too long"
    assert isinstance(refused.value, distributed.comm.CommClosedError), f"{case}: {refused.value!r}"
    assert_logged_refusal(lambda: cluster.process(cluster.scheduler.name).log.read_text(), refused.value, reason)
    assert clients() == before, f"{case}: a refused client registered with the scheduler"


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_workers_refuse_a_peer_without_a_valid_certificate(
    case: str, cluster: Cluster, pki: PlanPki, other_pki: PlanPki, tmp_path: Path
) -> None:
    """Workers listen on their host's address: they demand the same of whoever connects."""
    make, reason = REFUSALS[case]
    client_security, scheme = make(cluster, pki, other_pki, tmp_path)
    name = sorted(cluster.workers)[0]
    container = cluster.workers[name]
    address = f"{scheme}://{host_address(container)}:{cluster.listen_ports[name]}"
    args = client_security.get_connection_args("client") if client_security is not None else {}

    async def attempt() -> None:
        comm = await connect(address, timeout=REFUSAL_TIMEOUT_S, **args)
        try:
            await comm.write({"op": "identity"})
            await comm.read()
        finally:
            await comm.close()

    started = time.monotonic()
    with pytest.raises(OSError) as refused:
        asyncio.run(asyncio.wait_for(attempt(), REFUSAL_BOUND_S))
    assert time.monotonic() - started < REFUSAL_BOUND_S, f"{case}: the refusal took too long"
    assert_logged_refusal(lambda: cluster.process(container.name).log.read_text(), refused.value, reason)


# -- the drain -----------------------------------------------------------------------------------


def retire_script(plan: Evaluation, host: str) -> tuple[str, list[str]]:
    """The `python -c` script of the host's drain (its `delete` command), and the names it retires."""
    drain = plan.named(f"dask-workers-{host}-drain")
    argv = shlex.split(drain.plain_inputs()["delete"])
    assert argv[:2] == ["timeout", str(RETIRE_TIMEOUT_S)], f"{drain.urn}: the retire is not bounded: {argv}"
    # `docker exec <the scheduler's container> python -c <script>`: by name or found by its label.
    assert argv[2:4] == ["docker", "exec"], f"{drain.urn}: not a docker exec: {argv}"
    assert "dask-scheduler" in argv[4], f"{drain.urn}: not run in the scheduler's container: {argv[4]}"
    assert argv[5:7] == ["python", "-c"], f"{drain.urn}: {argv}"
    script = argv[7]
    names = re.search(r"retire_workers\(names=(\[[^\]]*\])", script)
    assert names is not None, f"{drain.urn}: no retire_workers(names=[...]) in {script!r}"
    return script, [n.strip(" '\"") for n in names[1].strip("[]").split(",")]


def test_drain_retires_the_hosts_workers_and_keeps_their_data(drained_cluster: Cluster, plan: Evaluation) -> None:
    cluster = drained_cluster
    script, names = retire_script(plan, DRAINED_HOST)
    leaving = {n for n, c in cluster.workers.items() if host_address(c) == GPU_NODES[DRAINED_HOST]}
    assert sorted(names) == sorted(leaving), f"the drain of {DRAINED_HOST} names {names}"

    # Results held only by the leaving workers must survive their retirement.
    client = cluster.client
    addresses = {str(w["name"]): a for a, w in client.scheduler_info(n_workers=-1)["workers"].items()}
    held = client.scatter(list(range(20)), workers=[addresses[n] for n in names], broadcast=False)

    # Inside the scheduler's container: its own address and certificate files.
    declared = f"tls://127.0.0.1:{flag(command_of(cluster.scheduler), '--port')}"
    assert repr(declared) in script, f"the script does not connect to {declared}: {script!r}"
    local = script.replace(repr(declared), repr(cluster.address))
    for path, file in cluster.secrets[cluster.scheduler.name].items():
        local = local.replace(repr(path), repr(str(file)))
    assert f"'{SECRETS_DIR}/" not in local, f"a secret path was left unmapped: {local!r}"

    processes = [cluster.process(cluster.workers[n].name) for n in names]
    run = subprocess.run(
        [sys.executable, "-c", local], capture_output=True, text=True, timeout=RETIRE_TIMEOUT_S, cwd=cluster.tmp
    )
    assert run.returncode == 0, f"the retire script failed:\n{run.stdout}\n{run.stderr}\n{cluster.logs()}"
    for name in names:
        assert name in run.stdout, f"{name} is not in what retire_workers returned: {run.stdout!r}"

    wait_until(
        lambda: not set(names) & set(cluster.reported_workers()),
        [p for p in cluster.processes if p not in processes],
        f"{names} to leave the scheduler",
    )
    # The retired workers' processes end (their containers may go), and nothing restarts them.
    wait_until(lambda: all(p.popen.poll() is not None for p in processes), [], f"{names} to exit")
    time.sleep(STAYS_GONE_S)
    remaining = cluster.reported_workers()
    assert not set(names) & set(remaining), f"retired workers came back: {sorted(remaining)}"
    assert sorted(remaining) == sorted(set(cluster.workers) - set(names)), f"others must stay: {sorted(remaining)}"
    assert client.gather(held) == list(range(20)), "data held by the retired workers was lost"
