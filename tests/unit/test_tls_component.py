"""components/tls.py on its own: the CA and what it issues, as the component declares them.

The stack-level tests (test_prod_stack.py, test_components.py) see the CA through the
program, which always passes the same options; these give the component other
inputs (the other curve, a parent, bad values) and read what it registers.
"""

from __future__ import annotations

from collections.abc import Callable

import pulumi
import pytest

from components.tls import (
    CA_USAGES,
    CLIENT_USAGES,
    CertificateAuthority,
    CertificateAuthorityArgs,
    CertSpec,
    client_subject,
    issue_certificate,
)
from stacks.mocks import Evaluation, Secret, evaluate_program

PRIVATE_KEY = "tls:index/privateKey:PrivateKey"
SELF_SIGNED = "tls:index/selfSignedCert:SelfSignedCert"
CSR = "tls:index/certRequest:CertRequest"
SIGNED = "tls:index/locallySignedCert:LocallySignedCert"


def ca_args(**overrides: object) -> CertificateAuthorityArgs:
    args: CertificateAuthorityArgs = {
        "common_name": "cluster-ai test CA",
        "organization": "cluster-ai",
        "curve": "P256",
        "validity_days": 3650,
        "early_renewal_days": 30,
    }
    args.update(overrides)  # type: ignore[typeddict-item]
    return args


def run(program: Callable[[], None]) -> Evaluation:
    return evaluate_program(program, project="cluster-ai", stack="test", config={})


@pytest.mark.parametrize("curve", ["P256", "P384"])
def test_the_ca_and_every_certificate_it_issues_use_the_configured_curve(curve: str) -> None:
    def program() -> None:
        ca = CertificateAuthority("ca", ca_args(curve=curve))
        ca.issue("web", CertSpec("web.internal", dns_names=["web.internal"]))

    ev = run(program)
    keys = ev.by_type(PRIVATE_KEY)
    assert len(keys) == 2, [k.urn for k in keys]
    for key in keys:
        inputs = key.plain_inputs()
        assert (inputs["algorithm"], inputs["ecdsaCurve"]) == ("ECDSA", curve), f"{key.urn}: {inputs}"


@pytest.mark.parametrize("curve", ["P224", "P521", "p256", "RSA", ""])
def test_a_curve_other_than_p256_or_p384_is_refused_naming_the_ca_and_the_value(curve: str) -> None:
    with pytest.raises(ValueError) as raised:
        run(lambda: CertificateAuthority("internal-ca", ca_args(curve=curve)) and None)
    assert str(raised.value) == f"internal-ca: curve must be P256 or P384, got {curve!r}"


def test_the_ca_is_a_self_signed_ca_certificate_with_the_given_subject_and_usages() -> None:
    ev = run(lambda: CertificateAuthority("ca", ca_args(common_name="Acme CA", organization="acme")) and None)
    [cert] = ev.by_type(SELF_SIGNED)
    inputs = cert.plain_inputs()
    assert inputs["isCaCertificate"] is True, cert.urn
    assert inputs["subject"] == {"commonName": "Acme CA", "organization": "acme"}, cert.urn
    assert inputs["allowedUses"] == list(CA_USAGES), cert.urn
    assert inputs["setSubjectKeyId"] is True, cert.urn
    assert (inputs["validityPeriodHours"], inputs["earlyRenewalHours"]) == (3650 * 24, 30 * 24), cert.urn


def test_the_ca_and_each_leaf_are_signed_with_their_own_key_which_stays_secret() -> None:
    def program() -> None:
        ca = CertificateAuthority("ca", ca_args())
        issued = ca.issue("web", CertSpec("web"))
        pulumi.export("caKey", ca.private_key_pem)
        pulumi.export("webKey", issued.private_key_pem)

    ev = run(program)
    keys = {k.name: k.outputs["privateKeyPem"] for k in ev.by_type(PRIVATE_KEY)}
    assert set(keys) == {"ca-key", "ca-web-key"}, keys
    [ca_cert] = ev.by_type(SELF_SIGNED)
    [csr] = ev.by_type(CSR)
    [signed] = ev.by_type(SIGNED)
    uses = [
        (ca_cert, "privateKeyPem", "ca-key"),
        (csr, "privateKeyPem", "ca-web-key"),
        (signed, "caPrivateKeyPem", "ca-key"),
    ]
    for resource, prop, key in uses:
        assert isinstance(resource.inputs[prop], Secret), f"{resource.urn}: {prop} is not secret"
        assert resource.plain_inputs()[prop] == keys[key], f"{resource.urn}: {prop} is not {key}'s key"
    assert signed.plain_inputs()["caCertPem"] == ca_cert.outputs["certPem"], signed.urn
    for name in ("caKey", "webKey"):
        assert isinstance(ev.exports[name], Secret), f"the {name} output is not secret"


def test_the_ca_honours_the_options_it_is_given() -> None:
    """A parent passed in `opts` is the CA's parent (a dropped `opts` would move its URN)."""

    class Holder(pulumi.ComponentResource):
        def __init__(self) -> None:
            super().__init__("cluster-ai:test:Holder", "holder", {}, None)
            CertificateAuthority("ca", ca_args(), pulumi.ResourceOptions(parent=self))
            self.register_outputs({})

    ev = run(lambda: Holder() and None)
    [holder] = [r for r in ev.resources if r.type == "cluster-ai:test:Holder"]
    [ca] = [r for r in ev.resources if r.type == "cluster-ai:index:CertificateAuthority"]
    assert ca.parent == holder.urn, f"{ca.urn}: parent {ca.parent}"
    for child in ev.children(ca.urn):
        assert child.name.startswith("ca-"), child.urn


def test_a_leaf_is_key_request_and_signature_under_the_ca_with_its_names_role_and_usages() -> None:
    spec = CertSpec(
        "prometheus",
        dns_names=["prometheus.internal"],
        ip_addresses=["10.0.0.5"],
        usages=CLIENT_USAGES,
        validity_days=90,
        early_renewal_days=7,
        role="prometheus",
    )

    def program() -> None:
        ca = CertificateAuthority("ca", ca_args())
        issued = ca.issue("prom", spec)
        assert issued.subject == "CN=prometheus,OU=prometheus,O=cluster-ai"

    ev = run(program)
    [ca] = [r for r in ev.resources if r.type == "cluster-ai:index:CertificateAuthority"]
    [csr] = ev.by_type(CSR)
    [signed] = ev.by_type(SIGNED)
    for resource in (csr, signed):
        assert resource.parent == ca.urn and resource.name.startswith("ca-prom-"), resource.urn
    request = csr.plain_inputs()
    assert request["subject"] == {
        "commonName": "prometheus",
        "organization": "cluster-ai",
        "organizationalUnit": "prometheus",
    }, csr.urn
    assert (request["dnsNames"], request["ipAddresses"]) == (["prometheus.internal"], ["10.0.0.5"]), csr.urn
    inputs = signed.plain_inputs()
    assert inputs["allowedUses"] == list(CLIENT_USAGES), signed.urn
    assert (inputs["validityPeriodHours"], inputs["earlyRenewalHours"]) == (90 * 24, 7 * 24), signed.urn


def test_a_leaf_without_names_declares_none_rather_than_empty_lists() -> None:
    def program() -> None:
        CertificateAuthority("ca", ca_args()).issue("client", CertSpec("operator", usages=CLIENT_USAGES))

    [csr] = run(program).by_type(CSR)
    inputs = csr.plain_inputs()
    assert "dnsNames" not in inputs and "ipAddresses" not in inputs, f"{csr.urn}: {inputs}"
    assert "organizationalUnit" not in inputs["subject"], "a certificate without a role carries no OU"


def test_a_certificate_outside_a_component_is_refused() -> None:
    def program() -> None:
        ca = CertificateAuthority("ca", ca_args())
        issue_certificate("loose", ca, CertSpec("x"), pulumi.ResourceOptions())

    with pytest.raises(ValueError, match="loose: certificates are declared as children of a component"):
        run(program)


@pytest.mark.parametrize(
    ("common_name", "role", "what"),
    [("web,O=evil", "egress", "common name"), ("web", "egress,OU=x", "role"), ("web", " egress", "role")],
)
def test_a_role_certificate_with_a_name_go_would_escape_is_refused(common_name: str, role: str, what: str) -> None:
    bad = common_name if what == "common name" else role
    with pytest.raises(ValueError) as raised:
        CertSpec(common_name, role=role)
    assert str(raised.value) == f"certificate {common_name!r}: {what} {bad!r} is not a plain name"


def test_issued_files_are_the_key_the_certificate_and_the_ca() -> None:
    def program() -> None:
        ca = CertificateAuthority("ca", ca_args())
        issued = ca.issue("web", CertSpec("web"))
        assert sorted(issued.files("server")) == ["ca.pem", "server.crt", "server.key"]
        assert sorted(issued.files()) == ["ca.pem", "tls.crt", "tls.key"], "the default prefix is tls"

    run(program)


def test_a_subject_carries_an_ou_only_for_a_role() -> None:
    assert client_subject("gpu1", None) == "CN=gpu1,O=cluster-ai"
    assert client_subject("egress", "egress") == "CN=egress,OU=egress,O=cluster-ai"
    assert CertSpec("gpu1").subject == "CN=gpu1,O=cluster-ai"


def test_every_resource_of_the_ca_and_of_its_leaves_is_a_child_of_the_ca() -> None:
    """Keys included: a key outside the CA's subtree would move its URN and leave `--target` of the CA."""

    def program() -> None:
        CertificateAuthority("ca", ca_args()).issue("web", CertSpec("web"))

    ev = run(program)
    [ca] = [r for r in ev.resources if r.type == "cluster-ai:index:CertificateAuthority"]
    tls_resources = [r for r in ev.resources if r.type.startswith("tls:")]
    assert sorted(r.name for r in tls_resources) == ["ca-cert", "ca-key", "ca-web-cert", "ca-web-csr", "ca-web-key"]
    for resource in tls_resources:
        assert resource.parent == ca.urn, f"{resource.urn}: parent {resource.parent}"


def test_an_issued_certificate_carries_its_own_signed_certificate_and_the_cas() -> None:
    """`files()` mounts these: the leaf's certificate and the CA's, never one for the other."""

    def program() -> None:
        ca = CertificateAuthority("ca", ca_args())
        issued = ca.issue("web", CertSpec("web"))
        pulumi.export("cert", issued.cert_pem)
        pulumi.export("ca", issued.ca_cert_pem)
        pulumi.export("caOwn", ca.cert_pem)

    ev = run(program)
    [ca_cert] = ev.by_type(SELF_SIGNED)
    [signed] = ev.by_type(SIGNED)
    assert ev.exports["cert"] == signed.outputs["certPem"]
    assert ev.exports["ca"] == ca_cert.outputs["certPem"] == ev.exports["caOwn"]
    assert ev.exports["cert"] != ev.exports["ca"]


def test_the_ca_component_records_its_certificate_as_its_output() -> None:
    """What `pulumi stack export` shows for the component (the mocks record `register_outputs`)."""
    ev = run(lambda: CertificateAuthority("ca", ca_args()) and None)
    [ca] = [r for r in ev.resources if r.type == "cluster-ai:index:CertificateAuthority"]
    [ca_cert] = ev.by_type(SELF_SIGNED)
    assert ca.outputs == {"certPem": ca_cert.outputs["certPem"]}
