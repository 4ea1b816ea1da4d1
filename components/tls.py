"""The internal CA, and the certificates it issues to hosts and services.

Every hop that crosses hosts (Dask comms, Open WebUI -> Ollama, Prometheus ->
exporters) is mutual TLS with certificates from this CA: ECDSA on P-256 or
P-384 (pulumi-tls would default to P-224), server and client usages on the
certificates that need them, names and addresses of the host they serve.
Private keys are secret Outputs; the CA key never leaves the Pulumi state.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypedDict

import pulumi
import pulumi_tls as tls

SERVER_USAGES = ("digital_signature", "key_encipherment", "server_auth")
CLIENT_USAGES = ("digital_signature", "key_encipherment", "client_auth")
PEER_USAGES = ("digital_signature", "key_encipherment", "server_auth", "client_auth")
CA_USAGES = ("cert_signing", "crl_signing", "digital_signature")
ORGANIZATION = "cluster-ai"
# Names that Go prints verbatim in a subject (`pkix.Name.String()` escapes
# `,+"\<>;`, a leading `#` or space and a trailing space): a subject built from
# these is the exact text Caddy's `{http.request.tls.client.subject}` shows.
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class CertificateAuthorityArgs(TypedDict):
    """The CA's name, curve and lifetime."""

    common_name: str
    organization: str
    curve: str
    """`P256` or `P384`."""
    validity_days: int
    early_renewal_days: int


class CertificateAuthority(pulumi.ComponentResource):
    """A self-signed CA (ECDSA) for the cluster's internal mutual TLS."""

    cert_pem: pulumi.Output[str]
    """The CA certificate: every service trusts it, and only it."""
    private_key_pem: pulumi.Output[str]
    """The CA key (secret)."""
    curve: str

    def __init__(self, name: str, args: CertificateAuthorityArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("cluster-ai:index:CertificateAuthority", name, {}, opts)
        if args["curve"] not in ("P256", "P384"):
            raise ValueError(f"{name}: curve must be P256 or P384, got {args['curve']!r}")
        child = pulumi.ResourceOptions(parent=self)
        self._name = name
        self.curve = args["curve"]
        key = tls.PrivateKey(f"{name}-key", algorithm="ECDSA", ecdsa_curve=args["curve"], opts=child)
        self.private_key_pem = pulumi.Output.secret(key.private_key_pem)
        cert = tls.SelfSignedCert(
            f"{name}-cert",
            private_key_pem=self.private_key_pem,
            is_ca_certificate=True,
            subject=tls.SelfSignedCertSubjectArgs(common_name=args["common_name"], organization=args["organization"]),
            validity_period_hours=args["validity_days"] * 24,
            early_renewal_hours=args["early_renewal_days"] * 24,
            allowed_uses=list(CA_USAGES),
            set_subject_key_id=True,
            opts=child,
        )
        self.cert_pem = cert.cert_pem
        self.register_outputs({"certPem": self.cert_pem})

    def issue(self, name: str, spec: CertSpec) -> IssuedCert:
        """A certificate for `spec`, declared under this CA (`<ca name>-<name>`)."""
        return issue_certificate(f"{self._name}-{name}", self, spec, pulumi.ResourceOptions(parent=self))


@dataclass(frozen=True)
class CertSpec:
    """What one certificate is for."""

    common_name: str
    dns_names: Sequence[str] = ()
    ip_addresses: Sequence[str] = ()
    usages: Sequence[str] = PEER_USAGES
    validity_days: int = 365
    early_renewal_days: int = 30
    role: str | None = None
    """The client's role (subject OU: `egress`, `prometheus`, ...): what the TLS edges authorise.

    Host and Dask certificates carry none, so no host name can pose as a role."""

    def __post_init__(self) -> None:
        if self.role is not None:
            for what, value in (("common name", self.common_name), ("role", self.role)):
                if _PLAIN_NAME.fullmatch(value) is None:
                    raise ValueError(f"certificate {self.common_name!r}: {what} {value!r} is not a plain name")

    @property
    def subject(self) -> str:
        """The subject as Go prints it (`CN=...,OU=...,O=cluster-ai`): what the edges match."""
        return client_subject(self.common_name, self.role)


def client_subject(common_name: str, role: str | None) -> str:
    """`pkix.Name.String()` of the subject `issue_certificate` writes (reverse RDN order)."""
    parts = [f"CN={common_name}"] + ([f"OU={role}"] if role is not None else []) + [f"O={ORGANIZATION}"]
    return ",".join(parts)


@dataclass(frozen=True)
class IssuedCert:
    """A key and the certificate the CA signed for it."""

    private_key_pem: pulumi.Output[str]
    """Secret."""
    cert_pem: pulumi.Output[str]
    ca_cert_pem: pulumi.Output[str]
    subject: str = ""
    """The certificate's subject as the TLS edges see it (see `CertSpec.subject`)."""

    def files(self, prefix: str = "tls") -> dict[str, pulumi.Output[str]]:
        """The three PEM files a service mounts: `<prefix>.key`, `<prefix>.crt`, `ca.pem`."""
        return {f"{prefix}.key": self.private_key_pem, f"{prefix}.crt": self.cert_pem, "ca.pem": self.ca_cert_pem}


def issue_certificate(
    name: str,
    ca: CertificateAuthority,
    spec: CertSpec,
    opts: pulumi.ResourceOptions,
) -> IssuedCert:
    """Key, request and signed certificate, declared as children of `opts.parent`."""
    if opts.parent is None:
        raise ValueError(f"{name}: certificates are declared as children of a component")
    child = pulumi.ResourceOptions(parent=opts.parent)
    key = tls.PrivateKey(f"{name}-key", algorithm="ECDSA", ecdsa_curve=ca.curve, opts=child)
    private_key_pem: pulumi.Output[str] = pulumi.Output.secret(key.private_key_pem)
    request = tls.CertRequest(
        f"{name}-csr",
        private_key_pem=private_key_pem,
        subject=tls.CertRequestSubjectArgs(
            common_name=spec.common_name, organization=ORGANIZATION, organizational_unit=spec.role
        ),
        dns_names=list(spec.dns_names) or None,
        ip_addresses=list(spec.ip_addresses) or None,
        opts=child,
    )
    cert = tls.LocallySignedCert(
        f"{name}-cert",
        cert_request_pem=request.cert_request_pem,
        ca_private_key_pem=ca.private_key_pem,
        ca_cert_pem=ca.cert_pem,
        validity_period_hours=spec.validity_days * 24,
        early_renewal_hours=spec.early_renewal_days * 24,
        allowed_uses=list(spec.usages),
        opts=child,
    )
    return IssuedCert(private_key_pem, cert.cert_pem, ca.cert_pem, spec.subject)
