"""The config's cross-field checks and derived numbers, at their edges, with their exact words.

test_config_errors.py walks a corpus of broken configs and checks each problem starts
with its key path; this file takes each check of infra/config.py to its boundary (the
last value accepted, the first refused) and pins the whole message a user reads.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from collections.abc import Sequence
from typing import Any

import pytest

from infra.config import (
    HOST_KEY_EXPECTED,
    ClusterSpec,
    ConfigError,
    _admin_network,
    _escape,
    _service_memory_mb,
    _usable_memory_mb,
    load_spec,
    normalise_host_key,
    normalise_model_name,
    parse_ip,
    placed_services,
)
from stacks.stackfile import read_stack_config

NS = "cluster-ai:"
Config = dict[str, Any]


def decoded(stack: str) -> Config:
    config = read_stack_config(stack).config
    return {k: json.loads(v) if v[:1] in "[{" else v for k, v in config.items()}


def real_looking(ref: str) -> str:
    """`ref@sha256:<hex>`, the hex a hash of the reference: shaped like a registry's, not a placeholder."""
    return f"{ref.split('@')[0]}@sha256:{hashlib.sha256(ref.encode()).hexdigest()}"


@pytest.fixture
def prod() -> Config:
    """The shipped prod stack with every image pinned: loads with no problem (the control)."""
    config = decoded("prod")
    config[NS + "images"] = {k: real_looking(v) for k, v in config[NS + "images"].items()}
    return config


@pytest.fixture
def dev(dev_config: Config) -> Config:
    return copy.deepcopy(dev_config)


def encode(config: Config) -> dict[str, str]:
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}


# Set with `pulumi config set --secret`: the CLI hands them over decrypted, marked secret.
SECRET_KEYS = (NS + "smtpPassword", NS + "slackWebhookUrl")


def load(config: Config) -> ClusterSpec:
    return load_spec(encode(config), SECRET_KEYS)


def problems(config: Config) -> tuple[str, ...]:
    return problems_of_raw(encode(config), SECRET_KEYS)


def problems_of_raw(config: dict[str, str], secret_keys: Sequence[str]) -> tuple[str, ...]:
    """The problems of a flat config map as the CLI hands it over (text values, secret keys)."""
    with pytest.raises(ConfigError) as caught:
        load_spec(config, secret_keys)
    return caught.value.problems


def one_problem(config: Config, starting: str) -> str:
    """The one problem that starts with `starting` (a key path)."""
    found = [p for p in problems(config) if p.startswith(starting)]
    assert len(found) == 1, f"{starting}: {found}"
    return found[0]


def test_the_bases_load(dev: Config, prod: Config) -> None:
    assert load(dev).environment == "dev" and load(prod).environment == "prod"


# -- worker ports ---------------------------------------------------------------------------


@pytest.mark.parametrize(("base", "workers"), [(65535, 1), (65534, 2)])
def test_worker_ports_may_end_at_65535(dev: Config, base: int, workers: int) -> None:
    dev[NS + "ports"] = {"workerBase": base}
    dev[NS + "hosts"][0]["workers"] = workers
    assert load(dev).ports.worker_base == base


@pytest.mark.parametrize(("base", "workers"), [(65535, 2), (65530, 7)])
def test_worker_ports_running_past_65535_are_refused(dev: Config, base: int, workers: int) -> None:
    dev[NS + "ports"] = {"workerBase": base}
    dev[NS + "hosts"][0]["workers"] = workers
    assert one_problem(dev, f"{NS}ports.workerBase") == (
        f"{NS}ports.workerBase: {workers} workers from {base} run past port 65535"
    )


@pytest.mark.parametrize(("grafana", "overlaps"), [(9001, True), (9002, True), (9003, False), (8999, False)])
def test_a_port_inside_the_worker_range_is_refused(dev: Config, grafana: int, overlaps: bool) -> None:
    dev[NS + "ports"] = {"workerBase": 9000, "grafana": grafana}
    dev[NS + "hosts"][0]["workers"] = 3  # 9000-9002
    message = f"{NS}ports.workerBase: the worker ports 9000-9002 overlap {NS}ports.grafana ({grafana})"
    if overlaps:
        assert message in problems(dev)
    else:
        assert load(dev).ports.grafana == grafana


def test_a_port_on_the_worker_base_itself_is_a_duplicate(dev: Config) -> None:
    dev[NS + "ports"] = {"workerBase": 9000, "grafana": 9000}
    found = problems(dev)
    assert f"{NS}ports.grafana: port 9000 is used by more than one service" in found
    assert f"{NS}ports.workerBase: port 9000 is used by more than one service" in found
    assert not [p for p in found if "overlap" in p], "the base is not also inside its own range"


# -- SSH ports against what the host publishes ------------------------------------------------


@pytest.mark.parametrize(
    ("host", "port", "publisher"),
    [
        (0, 443, f"{NS}proxy (443)"),
        (0, 80, f"{NS}proxy (80)"),
        (0, 3000, f"{NS}ports.webui"),
        (1, 8790, f"{NS}ports.workerBase"),
        (1, 8791, f"{NS}ports.workerBase"),  # gpu1 has two workers: 8790 and 8791
        (2, 8443, f"{NS}ports.edge"),
    ],
)
def test_an_ssh_port_a_host_also_publishes_is_refused(prod: Config, host: int, port: int, publisher: str) -> None:
    prod[NS + "hosts"][host]["ssh"]["port"] = port
    assert one_problem(prod, f"{NS}hosts[{host}].ssh.port") == (
        f"{NS}hosts[{host}].ssh.port: {port} is also published by {publisher}: SSH and the service cannot share the port"
    )


@pytest.mark.parametrize(("host", "port"), [(1, 443), (1, 80), (1, 8792), (0, 2222)])
def test_an_ssh_port_the_host_does_not_publish_is_accepted(prod: Config, host: int, port: int) -> None:
    """The proxy's 80/443 are the head's only; worker ports are the worker hosts' only."""
    prod[NS + "hosts"][host]["ssh"]["port"] = port
    assert load(prod).hosts[host].ssh.port == port  # type: ignore[union-attr]


def test_a_local_host_before_a_remote_one_does_not_stop_the_ssh_check(dev: Config) -> None:
    dev[NS + "hosts"].append(
        {
            "name": "gpu1",
            "address": "192.0.2.11",
            "roles": ["worker"],
            "cpus": 4,
            "memoryGb": 16,
            "ssh": {"user": "cluster-ai", "privateKeyPath": "~/.ssh/k", "hostKey": SSH_KEY, "port": 8443},
        }
    )
    assert one_problem(dev, f"{NS}hosts[1].ssh.port").endswith(
        f"8443 is also published by {NS}ports.edge: SSH and the service cannot share the port"
    )


SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFdq7bxbjPnuR51Pnb+mmpiZy7UyiQgFQXjbhtPpSvyu"


# -- prod hosts, names, TLS lifetimes --------------------------------------------------------


@pytest.mark.parametrize("address", ["localhost", "gpu1.localhost", "127.0.0.2", "::1"])
def test_a_prod_host_on_a_loopback_address_is_refused(prod: Config, address: str) -> None:
    prod[NS + "hosts"][1]["address"] = address
    assert one_problem(prod, f"{NS}hosts[1].address: {address!r} is a loopback") == (
        f"{NS}hosts[1].address: {address!r} is a loopback address: in prod the root bootstrap and its "
        "firewall would run on the machine running Pulumi"
    )


@pytest.mark.parametrize("address", ["localhost.example.com", "192.0.2.99"])
def test_a_prod_host_named_like_localhost_but_elsewhere_is_not_loopback(prod: Config, address: str) -> None:
    prod[NS + "hosts"][1]["address"] = address
    assert not [p for p in _problems_or_none(prod) if "loopback" in p]


def _problems_or_none(config: Config) -> tuple[str, ...]:
    try:
        load(config)
    except ConfigError as exc:
        return exc.problems
    return ()


def test_a_dev_host_on_loopback_is_fine(dev: Config) -> None:
    assert load(dev).hosts[0].address == "127.0.0.1"


def test_a_host_named_like_anothers_network_is_refused(dev: Config) -> None:
    dev[NS + "hosts"][0]["name"] = "head"
    dev[NS + "hosts"].append(
        {"name": "head-data", "address": "192.0.2.12", "roles": ["worker"], "cpus": 2, "memoryGb": 8}
    )
    assert one_problem(dev, f"{NS}hosts[1].name") == (
        f"{NS}hosts[1].name: 'head-data' extends the name of {NS}hosts[0] ('head') with '-': their Docker "
        "networks (cluster-ai-<stack>-head-...) would collide; pick a name that is not another host's name "
        "followed by '-'"
    )


@pytest.mark.parametrize(
    ("tls", "key", "days"),
    [
        ({"earlyRenewalDays": 365}, "certValidityDays", 365),
        ({"earlyRenewalDays": 100, "certValidityDays": 90}, "certValidityDays", 90),
        ({"earlyRenewalDays": 60, "caValidityDays": 60, "certValidityDays": 30}, "caValidityDays", 60),
    ],
)
def test_renewing_at_or_before_issue_is_refused(dev: Config, tls: dict[str, int], key: str, days: int) -> None:
    dev[NS + "tls"] = tls
    early = tls["earlyRenewalDays"]
    assert (
        f"{NS}tls.earlyRenewalDays: {early} days must be below {NS}tls.{key} ({days}): the certificate would be "
        "re-issued on every `up`"
    ) in problems(dev)


def test_renewing_a_day_before_expiry_is_accepted(dev: Config) -> None:
    dev[NS + "tls"] = {"earlyRenewalDays": 29, "certValidityDays": 30, "caValidityDays": 30}
    assert load(dev).tls.early_renewal_days == 29


# -- model and image pins in prod -------------------------------------------------------------


def test_prod_refuses_a_plain_http_model_registry(prod: Config) -> None:
    prod[NS + "models"] = [{"name": "10.0.0.5:5000/team/tiny:1", "digest": "ab" * 32, "insecure": True}]
    assert one_problem(prod, f"{NS}models[0].insecure") == (
        f"{NS}models[0].insecure: prod refuses a plain-HTTP model registry for '10.0.0.5:5000/team/tiny:1'; "
        "serve the registry over TLS"
    )


def test_prod_refuses_a_placeholder_model_digest(prod: Config) -> None:
    prod[NS + "models"][0]["digest"] = "0123456789abcdef" * 4
    assert one_problem(prod, f"{NS}models[0].digest") == (
        f"{NS}models[0].digest: 0123456789ab... is a placeholder, not a digest Ollama computed; run "
        "`python -m stacks lock prod` to resolve 'qwen2.5:0.5b'"
    )


def test_prod_refuses_a_placeholder_image_digest(prod: Config) -> None:
    prod[NS + "images"]["redis"] = "redis:7.4.1-bookworm@sha256:" + "0123456789abcdef" * 4
    assert one_problem(prod, f"{NS}images.redis") == (
        f"{NS}images.redis: sha256:0123456789ab... is a placeholder, not a digest a registry computed; run "
        "`python -m stacks lock prod` to resolve redis:7.4.1-bookworm"
    )


def test_a_dask_image_without_a_version_in_its_tag_is_refused(dev: Config) -> None:
    dev[NS + "images"] = {"dask": "ghcr.io/dask/dask:py3.12"}
    assert one_problem(dev, f"{NS}images.dask") == (
        f"{NS}images.dask: the image's Dask version (none in the tag) must equal {NS}dask.version (2026.8.0): "
        "scheduler, workers and client must run one version"
    )


# -- what a host can hold ------------------------------------------------------------------------


def memory_gb_for(usable_mb: int) -> float:
    """A memoryGb whose usable share (90%) is `usable_mb` exactly."""
    return (usable_mb + 0.5) / (1024 * 0.9)


def test_a_host_holding_exactly_what_is_placed_on_it_is_accepted_and_one_mb_less_is_refused(dev: Config) -> None:
    spec = load(dev)
    host = spec.hosts[0]
    needed = _service_memory_mb(spec, host) + 1024 * host.worker_count
    dev[NS + "hosts"][0]["memoryGb"] = memory_gb_for(needed)
    assert _usable_memory_mb(load(dev).hosts[0]) == needed
    short = memory_gb_for(needed - 1)
    dev[NS + "hosts"][0]["memoryGb"] = short
    assert one_problem(dev, f"{NS}hosts[0].memoryGb") == (
        f"{NS}hosts[0].memoryGb: {short:g} GB cannot hold what is placed on host 'local': it needs {needed} MB "
        f"of limits and 10% reserve ({needed - 1} MB usable)"
    )


def test_a_limit_of_all_the_hosts_cpus_is_accepted_and_more_is_refused(dev: Config) -> None:
    dev[NS + "resources"] = {"scheduler": {"memoryMb": 512, "cpus": 4}}
    assert load(dev).resources.scheduler.cpus == 4
    dev[NS + "resources"] = {"scheduler": {"memoryMb": 512, "cpus": 4.5}}
    assert one_problem(dev, f"{NS}resources.scheduler.cpus") == (
        f"{NS}resources.scheduler.cpus: 4.5 CPUs exceed the 4 of host 'local' ({NS}hosts[0].cpus); "
        "Docker refuses a limit above the host's CPUs"
    )


@pytest.mark.parametrize(("gpus", "workers", "refused"), [(2, 2, False), (2, 1, False), (2, 3, True), (0, 3, False)])
def test_gpu_hosts_run_at_most_one_worker_per_gpu(dev: Config, gpus: int, workers: int, refused: bool) -> None:
    dev[NS + "hosts"][0].update(gpus=gpus, workers=workers)
    message = f"{NS}hosts[0].workers: {workers} workers need at least {workers} GPUs, but the host declares gpus={gpus}"
    assert (message in _problems_or_none(dev)) is refused


# -- derived numbers ---------------------------------------------------------------------------


def test_workers_share_what_the_host_has_left_and_dask_stops_at_85_percent_of_it(dev: Config) -> None:
    dev[NS + "hosts"][0]["workers"] = 3
    spec = load(dev)
    host = spec.hosts[0]
    left = _usable_memory_mb(host) - _service_memory_mb(spec, host)
    each = spec.worker_memory_mb(host)
    assert each == left // 3 and isinstance(each, int), (each, left)
    assert spec.dask_memory_limit_bytes(host) == int(each * 0.85) * 1024 * 1024
    assert _usable_memory_mb(host) == int(16 * 1024 * 0.9)


def test_a_host_without_the_worker_role_has_no_worker_memory(prod: Config) -> None:
    spec = load(prod)
    assert spec.worker_memory_mb(spec.hosts[0]) == 0 and spec.dask_memory_limit_bytes(spec.hosts[0]) == 0
    assert spec.worker_memory_mb(spec.hosts[1]) > 1024


@pytest.mark.parametrize(("cpus", "workers", "threads"), [(8, 3, 2), (8, 1, 8), (2, 3, 1), (1, 1, 1)])
def test_threads_per_worker_split_the_hosts_cpus(dev: Config, cpus: int, workers: int, threads: int) -> None:
    dev[NS + "hosts"][0].update(cpus=cpus, workers=workers)
    dev[NS + "resources"] = {name: {"memoryMb": 64, "cpus": 1} for name in ("scheduler", "webui", "postgres", "ollama")}
    spec = load(dev)
    assert spec.threads_per_worker(spec.hosts[0]) == threads


def test_the_dcgm_exporter_goes_on_gpu_hosts_only(dev: Config) -> None:
    dev[NS + "hosts"][0]["gpus"] = 1
    assert "dcgm_exporter" in load(dev).monitoring_services(load(dev).hosts[0])
    dev[NS + "hosts"][0]["gpus"] = 0
    assert "dcgm_exporter" not in load(dev).monitoring_services(load(dev).hosts[0])


def test_each_host_is_charged_for_what_is_placed_on_it(prod: Config, dev: Config) -> None:
    spec = load(prod)
    head, gpu1 = spec.hosts[0], spec.hosts[1]
    placed = placed_services(spec, head)
    for service in ("scheduler", "webui", "postgres", "redis", "backup", "backup_metrics", "proxy", "egress", "edge"):
        assert service in placed, f"{service} is not charged to the head: {placed}"
    assert "ollama" not in placed and "model_sync" not in placed
    assert placed_services(spec, gpu1)[:3] == ("ollama", "model_sync", "edge")
    assert "scheduler" not in placed_services(spec, gpu1)
    # One host, no TLS between hosts: no egress and no edge.
    one = load(dev)
    assert not {"egress", "edge"} & set(placed_services(one, one.hosts[0]))


def test_the_default_limits_are_the_documented_ones(dev: Config) -> None:
    r = load(dev).resources
    assert (r.scheduler.memory_mb, r.scheduler.cpus) == (512, 1)
    assert (r.webui.memory_mb, r.ollama.memory_mb, r.model_sync.memory_mb) == (1536, 3072, 256)


# -- how a value is shown in a message ------------------------------------------------------------


def test_escaped_text_is_one_bounded_line_of_ascii() -> None:
    assert _escape("x" * 120) == "x" * 120
    assert _escape("x" * 121) == "x" * 120 + "..."
    assert _escape("é\nz") == "\\xe9\\nz"
    assert _escape("abc", limit=2) == "ab..."


# -- alert receivers and their secrets ------------------------------------------------------


def test_an_smtp_login_needs_its_password_and_a_password_needs_its_login(prod: Config) -> None:
    prod[NS + "monitoring"]["smtp"]["user"] = "alerts"
    assert one_problem(prod, f"{NS}smtpPassword") == (
        f"{NS}smtpPassword: is required because {NS}monitoring.smtp.user is set; "
        "set it with `pulumi config set --secret smtpPassword <password>`"
    )
    prod[NS + "smtpPassword"] = "s3cret"
    assert load(prod).monitoring.smtp.user == "alerts"
    del prod[NS + "monitoring"]["smtp"]["user"]
    assert one_problem(prod, f"{NS}smtpPassword") == (
        f"{NS}smtpPassword: is set but {NS}monitoring.smtp.user is not: "
        "set the SMTP login, or remove the password (`pulumi config rm smtpPassword`)"
    )


def test_a_slack_channel_needs_its_webhook_and_a_webhook_needs_its_channel(prod: Config) -> None:
    prod[NS + "monitoring"]["slack"] = {"channel": "#alerts"}
    assert one_problem(prod, f"{NS}slackWebhookUrl") == (
        f"{NS}slackWebhookUrl: is required because {NS}monitoring.slack is set; "
        "set it with `pulumi config set --secret slackWebhookUrl https://hooks.slack.com/services/...`"
    )
    prod[NS + "slackWebhookUrl"] = "https://hooks.slack.com/services/T0/B0/x"
    assert load(prod).monitoring.slack is not None
    del prod[NS + "monitoring"]["slack"]
    assert one_problem(prod, f"{NS}slackWebhookUrl") == (
        f"{NS}slackWebhookUrl: is set but {NS}monitoring.slack is not: "
        "set monitoring.slack.channel, or remove the URL (`pulumi config rm slackWebhookUrl`)"
    )


def test_prod_with_monitoring_must_route_alerts_somewhere(prod: Config, dev: Config) -> None:
    del prod[NS + "monitoring"]["smtp"]
    assert one_problem(prod, f"{NS}monitoring:") == (
        f"{NS}monitoring: prod must route alerts somewhere: set monitoring.smtp "
        "(host, from, to) and/or monitoring.slack (channel, with the secret slackWebhookUrl)"
    )
    prod[NS + "monitoring"]["enabled"] = False
    assert not load(prod).monitoring.enabled
    dev[NS + "monitoring"] = {"enabled": True}
    assert load(dev).monitoring.enabled, "dev may keep its alerts in Alertmanager's UI"


# -- the prod entry and the hosts it reaches -----------------------------------------------------


def test_acme_needs_an_email(prod: Config) -> None:
    prod[NS + "proxy"] = {**prod[NS + "proxy"], "tls": "acme"}
    prod[NS + "proxy"].pop("acmeEmail", None)
    assert one_problem(prod, f"{NS}proxy.acmeEmail") == f"{NS}proxy.acmeEmail: ACME needs an email for the account"


def test_prod_without_admin_networks_is_refused(prod: Config) -> None:
    prod[NS + "firewall"] = {"adminNetworks": []}
    assert one_problem(prod, f"{NS}firewall.adminNetworks") == (
        f"{NS}firewall.adminNetworks: prod admits SSH only from admin networks; list at least one CIDR"
    )


@pytest.mark.parametrize("address", ["127.0.0.1", "::1"])
def test_a_prod_proxy_on_loopback_is_refused(prod: Config, address: str) -> None:
    prod[NS + "proxy"] = {**prod[NS + "proxy"], "listenAddress": address}
    assert one_problem(prod, f"{NS}proxy.listenAddress") == (
        f"{NS}proxy.listenAddress: a loopback address makes the proxy unreachable"
    )


def test_a_prod_host_named_rather_than_addressed_is_refused(prod: Config) -> None:
    prod[NS + "hosts"][1]["address"] = "gpu1.example.com"
    assert one_problem(prod, f"{NS}hosts[1].address") == (
        f"{NS}hosts[1].address: 'gpu1.example.com' must be an IP address in a multi-host stack: the host's "
        "published ports are bound to it, and Docker binds only to addresses"
    )


def test_a_host_reached_over_ssh_takes_no_docker_host(prod: Config) -> None:
    prod[NS + "hosts"][2]["dockerHost"] = "unix:///run/docker.sock"
    user, address = prod[NS + "hosts"][2]["ssh"]["user"], prod[NS + "hosts"][2]["address"]
    assert one_problem(prod, f"{NS}hosts[2].dockerHost") == (
        f"{NS}hosts[2].dockerHost: a host reached over SSH uses ssh://{user}@{address}; remove dockerHost"
    )


def test_a_prod_host_without_ssh_is_refused(prod: Config) -> None:
    del prod[NS + "hosts"][1]["ssh"]
    assert one_problem(prod, f"{NS}hosts[1].ssh") == (
        f"{NS}hosts[1].ssh: prod reaches every host over SSH with its host key pinned; "
        "set user, privateKeyPath and hostKey (`ssh-keyscan -t ed25519 <address>`)"
    )


# -- model names from a private registry -------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("qwen2.5:0.5b", "qwen2.5:0.5b"),
        ("library/qwen2.5:0.5b", "library/qwen2.5:0.5b"),
        ("Registry.Example.COM/team/tiny:1", "registry.example.com/team/tiny:1"),
        ("registry.internal:5000/team/tiny:1", "registry.internal:5000/team/tiny:1"),
        ("10.0.0.7:1/team/tiny:1", "10.0.0.7:1/team/tiny:1"),
        ("10.0.0.7:65535/team/tiny:1", "10.0.0.7:65535/team/tiny:1"),
        ("localhost/team/tiny:1", "localhost/team/tiny:1"),
    ],
)
def test_a_model_name_is_stored_with_its_registry_normalised(given: str, stored: str) -> None:
    assert normalise_model_name(given) == stored


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("[2001:db8::1]:5000/team/tiny:1", "registry '[2001:db8::1]:5000': must be host or host:port"),
        ("123.45/team/tiny:1", "registry '123.45': '123.45' is neither a DNS name nor an IPv4 address"),
        ("bad_host!/team/tiny:1", "registry 'bad_host!': 'bad_host!' is neither a DNS name nor an IPv4 address"),
        ("registry.internal:05000/team/tiny:1", "registry 'registry.internal:05000': port must be 1-65535"),
        ("registry.internal:0/team/tiny:1", "registry 'registry.internal:0': port must be 1-65535"),
        ("registry.internal:65536/team/tiny:1", "registry 'registry.internal:65536': port must be 1-65535"),
    ],
)
def test_a_registry_that_is_not_a_host_or_port_is_refused_naming_it(given: str, message: str) -> None:
    with pytest.raises(ValueError) as raised:
        normalise_model_name(given)
    assert str(raised.value).startswith(message), str(raised.value)


@pytest.mark.parametrize("given", ["Team/tiny:1", "team/tiny", "registry.internal/Team/tiny:1", "a/b/c/d:1"])
def test_a_model_name_outside_ollamas_grammar_is_refused_with_the_grammar(given: str) -> None:
    with pytest.raises(ValueError) as raised:
        normalise_model_name(given)
    assert str(raised.value) == (
        "must be [host[:port]/]namespace/name:tag or name:tag with an explicit tag "
        "(lowercase letters, digits, '.', '_' and '-')"
    )


# -- addresses, admin networks and host keys, by their validators ----------------------------------


def test_an_address_with_an_ipv6_zone_is_refused_with_its_reason() -> None:
    with pytest.raises(ValueError) as raised:
        parse_ip("fe80::1%eth0")
    assert str(raised.value) == "must not carry an IPv6 zone (`%<interface>`): give the address alone"
    with pytest.raises(ValueError) as raised:
        parse_ip("gpu1")
    assert str(raised.value) == "must be an IP address"


@pytest.mark.parametrize(
    ("cidr", "message"),
    [
        ("fe80::/64%eth0", "carries an IPv6 zone (`%...`): give the network alone"),
        ("198.51.100.1/24", "is not a network in CIDR form (e.g. 198.51.100.0/24)"),
        ("admins", "is not a network in CIDR form (e.g. 198.51.100.0/24)"),
        ("0.0.0.0/0", "admits the whole internet"),
        ("::/0", "admits the whole internet"),
    ],
)
def test_an_admin_network_that_is_not_one_network_is_refused(cidr: str, message: str) -> None:
    with pytest.raises(ValueError) as raised:
        _admin_network(cidr)
    assert str(raised.value) == message


def test_an_admin_network_is_stored_as_python_writes_it_and_half_the_internet_is_one() -> None:
    assert _admin_network("2001:DB8::/32") == "2001:db8::/32"
    assert _admin_network("0.0.0.0/1") == "0.0.0.0/1", "only the union check refuses the two halves together"


def ssh_blob(kind: str, extra: int) -> str:
    """The base64 of an SSH public key blob: the type, then `extra` bytes of key material."""
    name = kind.encode()
    return base64.b64encode(len(name).to_bytes(4, "big") + name + b"k" * extra).decode()


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("ssh-ed25519 {b}", "ssh-ed25519 {b}"),
        ("192.0.2.11 ssh-ed25519 {b}", "ssh-ed25519 {b}"),
        ("ssh-ed25519 {b} root@gpu1", "ssh-ed25519 {b}"),
        ("  ssh-ed25519   {b}  \n", "ssh-ed25519 {b}"),
    ],
)
def test_a_host_key_is_stored_as_type_and_key(given: str, stored: str) -> None:
    blob = ssh_blob("ssh-ed25519", 16)  # the shortest blob accepted: 16 bytes after the type
    assert normalise_host_key(given.format(b=blob)) == stored.format(b=blob)


@pytest.mark.parametrize(
    ("given", "reason"),
    [
        ("ssh-ed25519 {b}\nssh-ed25519 {b}", "holds more than one line: pin exactly one key"),
        ("ssh-ed25519 {b}\r", "holds more than one line: pin exactly one key"),
        ("gpu1 192.0.2.11 ssh-ed25519 {b}", HOST_KEY_EXPECTED),
        ("ssh-ed25519", HOST_KEY_EXPECTED),
        ("ssh-ed25519 *{b}", f"{HOST_KEY_EXPECTED}; the key after ssh-ed25519 is not base64"),
        ("ssh-ed25519 {short}", f"{HOST_KEY_EXPECTED}; the base64 part is not a ssh-ed25519 key"),
        ("ssh-rsa {b}", f"{HOST_KEY_EXPECTED}; the base64 part is not a ssh-rsa key"),
    ],
    ids=["two-lines", "carriage-return", "type-third", "no-key", "not-base64", "too-short", "other-type"],
)
def test_a_host_key_that_is_not_one_key_of_its_type_is_refused(given: str, reason: str) -> None:
    text = given.format(b=ssh_blob("ssh-ed25519", 16), short=ssh_blob("ssh-ed25519", 15))
    with pytest.raises(ValueError) as raised:
        normalise_host_key(text)
    assert str(raised.value) == reason


# -- what an error says --------------------------------------------------------------------------


def test_a_config_error_lists_every_problem_one_per_line() -> None:
    error = ConfigError([f"{NS}a: one", f"{NS}b: two"])
    assert str(error) == f"invalid stack config (2 problem(s)):\n  - {NS}a: one\n  - {NS}b: two"
    assert error.problems == (f"{NS}a: one", f"{NS}b: two")


@pytest.mark.parametrize(
    ("image", "message"),
    [
        ("redis", f"{NS}images.redis: 'redis' must name a version tag or a digest, not just a repository"),
        (
            "redis:latest",
            f"{NS}images.redis: 'redis:latest' must not float on ':latest'; pin a version tag or a digest",
        ),
    ],
)
def test_an_image_without_a_pin_is_refused_saying_how_to_pin_it(dev: Config, image: str, message: str) -> None:
    dev[NS + "images"] = {"redis": image}
    assert one_problem(dev, f"{NS}images.redis") == message


@pytest.mark.parametrize(
    ("value", "shown"),
    [(False, "false (a YAML boolean)"), (True, "true (a YAML boolean)"), ({"a": 1}, "an object with keys")],
)
def test_a_value_of_the_wrong_type_is_named_by_its_yaml_type(dev: Config, value: Any, shown: str) -> None:
    dev[NS + "dask"] = {"version": value}
    assert shown in one_problem(dev, f"{NS}dask.version")


# -- how problems are found and named -------------------------------------------------------------


def test_every_unknown_key_is_named_with_a_hint_only_when_one_is_close(dev: Config) -> None:
    dev.update({NS + "bogus": "1", NS + "hostz": [], NS + "zzzz": "2"})
    assert [p for p in problems(dev) if "is not a known key" in p] == [
        f"{NS}bogus: is not a known key",
        f"{NS}hostz: is not a known key (did you mean 'hosts'?)",
        f"{NS}zzzz: is not a known key",
    ]


def test_a_wrong_type_in_an_optional_field_names_the_field_not_the_union_member(dev: Config) -> None:
    dev[NS + "hosts"][0]["dockerHost"] = 5
    assert f"{NS}hosts[0].dockerHost: must be a string, got 5 (a number)" in problems(dev)
    dev = copy.deepcopy(dev)
    del dev[NS + "hosts"][0]["dockerHost"]
    dev[NS + "models"] = [{"name": "qwen2.5:0.5b", "digest": 5}]
    assert f"{NS}models[0].digest: must be a string, got 5 (a number)" in problems(dev)


def test_a_value_of_the_wrong_type_is_shown_whole(dev: Config) -> None:
    dev[NS + "dask"] = {"version": {"a": 1}}
    assert problems(dev) == (f"{NS}dask.version: must be a string, got an object with keys",)


def test_a_secret_that_looks_like_json_is_kept_as_text() -> None:
    config = encode(decoded("dev"))
    config[NS + "smtpPassword"] = "{not json"
    found = problems_of_raw(config, [NS + "smtpPassword"])
    assert found == (
        f"{NS}smtpPassword: is set but {NS}monitoring.smtp.user is not: "
        "set the SMTP login, or remove the password (`pulumi config rm smtpPassword`)",
    ), "the secret was read as (broken) JSON"


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ('{"version": "\\ud800"}', f"{NS}dask.version: contains an invalid unicode escape (an unpaired surrogate)"),
        ('{"\\ud800": "x"}', f"{NS}dask: has a key with an invalid unicode escape (an unpaired surrogate)"),
        ('{"a": {"b": "\\ud800"}}', f"{NS}dask.a.b: contains an invalid unicode escape (an unpaired surrogate)"),
    ],
)
def test_an_unpaired_surrogate_is_named_where_it_is(raw: str, problem: str) -> None:
    config = encode(decoded("dev"))
    config[NS + "dask"] = raw
    assert problem in problems_of_raw(config, [])
