"""Real certificates, issued the way the program's pulumi-tls resources would issue them.

The offline plan records every `tls:index/...` resource the program declares,
with its inputs, but under the SDK's mocks their outputs are placeholder PEMs.
`PlanPki` reads those recorded inputs and does what the tls provider does with
them (terraform-provider-tls `createCertificate`, through Go's
`x509.CreateCertificate`), with the `cryptography` package:

- `PrivateKey(algorithm, ecdsaCurve | rsaBits)` -> a key of that algorithm and
  curve (the provider's default curve is P224, as FACTS.md warns), PEM as the
  provider writes `private_key_pem` (SEC1 for ECDSA, PKCS#1 for RSA);
- `CertRequest(subject, dnsNames, ipAddresses)` -> a CSR signed by its key;
- `SelfSignedCert` / `LocallySignedCert(allowedUses, isCaCertificate,
  validityPeriodHours, setSubjectKeyId)` -> a certificate whose subject and SANs
  come from the CSR (or the inputs), `allowed_uses` mapped to KeyUsage (critical)
  and ExtendedKeyUsage exactly as the provider's tables do, BasicConstraints
  (critical), a subject key id on CAs, the CA's key id as authority key id, a
  random 128-bit serial, valid from now for the declared hours.

The resources are linked the way the program linked them: a CSR's key is the
`PrivateKey` whose (mock) `privateKeyPem` output it was given, a certificate's
CSR and CA likewise. Every mock PEM maps to its real counterpart, so any text
that carried mock PEMs (a container's uploads) can be `realize`d with real ones.
Two `PlanPki`s of one plan are two unrelated CAs with identical names and usages.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from stacks.mocks import Evaluation, Resource, unwrap

PRIVATE_KEY = "tls:index/privateKey:PrivateKey"
CERT_REQUEST = "tls:index/certRequest:CertRequest"
SELF_SIGNED = "tls:index/selfSignedCert:SelfSignedCert"
LOCALLY_SIGNED = "tls:index/locallySignedCert:LocallySignedCert"

# terraform-provider-tls `keyUsages`: allowed_uses name -> x509.KeyUsage field.
KEY_USAGES = {
    "digital_signature": "digital_signature",
    "content_commitment": "content_commitment",
    "key_encipherment": "key_encipherment",
    "data_encipherment": "data_encipherment",
    "key_agreement": "key_agreement",
    "cert_signing": "key_cert_sign",
    "crl_signing": "crl_sign",
    "encipher_only": "encipher_only",
    "decipher_only": "decipher_only",
}
# terraform-provider-tls `extendedKeyUsages`: allowed_uses name -> the OID Go writes.
EXTENDED_KEY_USAGES = {
    "any_extended": ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,
    "server_auth": ExtendedKeyUsageOID.SERVER_AUTH,
    "client_auth": ExtendedKeyUsageOID.CLIENT_AUTH,
    "code_signing": ExtendedKeyUsageOID.CODE_SIGNING,
    "email_protection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
    "ipsec_end_system": ObjectIdentifier("1.3.6.1.5.5.7.3.5"),
    "ipsec_tunnel": ObjectIdentifier("1.3.6.1.5.5.7.3.6"),
    "ipsec_user": ObjectIdentifier("1.3.6.1.5.5.7.3.7"),
    "timestamping": ExtendedKeyUsageOID.TIME_STAMPING,
    "ocsp_signing": ExtendedKeyUsageOID.OCSP_SIGNING,
    "microsoft_server_gated_crypto": ObjectIdentifier("1.3.6.1.4.1.311.10.3.3"),
    "netscape_server_gated_crypto": ObjectIdentifier("2.16.840.1.113730.4.1"),
    "microsoft_commercial_code_signing": ObjectIdentifier("1.3.6.1.4.1.311.2.1.22"),
    "microsoft_kernel_code_signing": ObjectIdentifier("1.3.6.1.4.1.311.61.1.1"),
}
CURVES: dict[str, type[ec.EllipticCurve]] = {
    "P224": ec.SECP224R1,
    "P256": ec.SECP256R1,
    "P384": ec.SECP384R1,
    "P521": ec.SECP521R1,
}
# The provider's defaults when an input is absent.
DEFAULT_CURVE = "P224"
DEFAULT_RSA_BITS = 2048
# Go's pkix.Name.ToRDNSequence order, and the subject keys pulumi-tls takes.
SUBJECT_FIELDS = (
    ("country", NameOID.COUNTRY_NAME),
    ("province", NameOID.STATE_OR_PROVINCE_NAME),
    ("locality", NameOID.LOCALITY_NAME),
    ("streetAddresses", NameOID.STREET_ADDRESS),
    ("postalCode", NameOID.POSTAL_CODE),
    ("organization", NameOID.ORGANIZATION_NAME),
    ("organizationalUnit", NameOID.ORGANIZATIONAL_UNIT_NAME),
    ("commonName", NameOID.COMMON_NAME),
    ("serialNumber", NameOID.SERIAL_NUMBER),
)
PEM_BLOCK = re.compile(r"-----BEGIN [A-Z ]+-----\n.*?\n-----END [A-Z ]+-----\n?", re.DOTALL)

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def _inputs(resource: Resource) -> dict[str, Any]:
    return resource.plain_inputs()


def _output(resource: Resource, key: str) -> str:
    value = unwrap(resource.outputs.get(key))
    assert isinstance(value, str) and value, f"{resource.urn}: no recorded output {key!r}"
    return value


def generate_key(resource: Resource) -> PrivateKey:
    """The key a `tls.PrivateKey` with these inputs generates."""
    inputs = _inputs(resource)
    algorithm = inputs.get("algorithm")
    if algorithm == "ECDSA":
        curve = str(inputs.get("ecdsaCurve") or DEFAULT_CURVE)
        assert curve in CURVES, f"{resource.urn}: ecdsaCurve {curve!r} is not one pulumi-tls knows"
        return ec.generate_private_key(CURVES[curve]())
    if algorithm == "RSA":
        return rsa.generate_private_key(65537, int(inputs.get("rsaBits") or DEFAULT_RSA_BITS))
    if algorithm == "ED25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise AssertionError(f"{resource.urn}: algorithm {algorithm!r} is not one pulumi-tls knows")


def key_pem(key: PrivateKey) -> str:
    """`private_key_pem` as the provider writes it: SEC1 for ECDSA, PKCS#1 for RSA, PKCS#8 for Ed25519."""
    form = (
        serialization.PrivateFormat.PKCS8
        if isinstance(key, ed25519.Ed25519PrivateKey)
        else serialization.PrivateFormat.TraditionalOpenSSL
    )
    return key.private_bytes(serialization.Encoding.PEM, form, serialization.NoEncryption()).decode()


def signature_hash(key: PrivateKey) -> hashes.HashAlgorithm | None:
    """What Go's x509 signs with for this key (by curve size for ECDSA)."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return {384: hashes.SHA384(), 521: hashes.SHA512()}.get(key.curve.key_size, hashes.SHA256())
    return hashes.SHA256()


def subject_name(subject: Mapping[str, Any] | None) -> x509.Name:
    """A pulumi-tls `subject` block as an X.509 name, in Go's attribute order."""
    subject = dict(subject or {})
    attributes = []
    for key, oid in SUBJECT_FIELDS:
        value = subject.pop(key, None)
        for item in value if isinstance(value, list) else [value] if value is not None else []:
            attributes.append(x509.NameAttribute(oid, str(item)))
    assert not subject, f"subject keys {sorted(subject)} are not mapped"
    return x509.Name(attributes)


def usage_extensions(allowed_uses: list[str]) -> tuple[x509.KeyUsage | None, x509.ExtendedKeyUsage | None]:
    """`allowed_uses` split into KeyUsage and ExtendedKeyUsage as the provider does."""
    unknown = [u for u in allowed_uses if u not in KEY_USAGES and u not in EXTENDED_KEY_USAGES]
    assert not unknown, f"allowed_uses {unknown} are not pulumi-tls usages"
    flags = {field: False for field in KEY_USAGES.values()}
    for use in allowed_uses:
        if use in KEY_USAGES:
            flags[KEY_USAGES[use]] = True
    key_usage = x509.KeyUsage(**flags) if any(flags.values()) else None
    extended = [EXTENDED_KEY_USAGES[u] for u in allowed_uses if u in EXTENDED_KEY_USAGES]
    return key_usage, (x509.ExtendedKeyUsage(extended) if extended else None)


def build_certificate(
    *,
    subject: x509.Name,
    public_key: Any,
    issuer: x509.Name,
    signing_key: PrivateKey,
    inputs: Mapping[str, Any],
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    authority_key_id: x509.SubjectKeyIdentifier | None = None,
) -> x509.Certificate:
    """`createCertificate` of the tls provider, for a self-signed or a locally signed cert."""
    now = dt.datetime.now(dt.UTC)
    hours = int(inputs["validityPeriodHours"])
    is_ca = bool(inputs.get("isCaCertificate", False))
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        # A random serial below 2^128, as the provider's rand.Int (X.509 wants it positive).
        .serial_number(secrets.randbits(128) or 1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(hours=hours))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    key_usage, extended = usage_extensions(list(inputs.get("allowedUses") or []))
    if key_usage is not None:
        builder = builder.add_extension(key_usage, critical=True)
    if extended is not None:
        builder = builder.add_extension(extended, critical=False)
    if is_ca or inputs.get("setSubjectKeyId"):
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    if authority_key_id is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier(authority_key_id.digest, None, None), critical=False
        )
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(signing_key, signature_hash(signing_key))


def _pem(cert: x509.Certificate | x509.CertificateSigningRequest) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@dataclass(frozen=True)
class Issued:
    """A certificate the plan declares, issued for real: its key, certificate and CA."""

    name: str
    """The `LocallySignedCert` resource name (e.g. `cluster-ca-operator-cert`)."""
    key_pem: str
    cert_pem: str
    ca_pem: str
    certificate: x509.Certificate

    def write(self, directory: Path) -> Bundle:
        """The three files a service mounts, as `components.tls.IssuedCert.files()` names them."""
        directory.mkdir(parents=True, exist_ok=True)
        bundle = Bundle(directory / "ca.pem", directory / "tls.crt", directory / "tls.key")
        bundle.ca.write_text(self.ca_pem)
        bundle.cert.write_text(self.cert_pem)
        bundle.key.write_text(self.key_pem)
        bundle.key.chmod(0o600)
        return bundle


@dataclass(frozen=True)
class Bundle:
    """Paths of a CA certificate, a certificate and its key."""

    ca: Path
    cert: Path
    key: Path


class PlanPki:
    """Every key, CSR and certificate of a plan, issued for real by a fresh CA (or CAs)."""

    def __init__(self, evaluation: Evaluation) -> None:
        self.evaluation = evaluation
        self._real: dict[str, str] = {}
        """Mock PEM (a recorded output) -> the real PEM standing in for it."""
        self._keys: dict[str, PrivateKey] = {}
        """Mock private key PEM -> the key."""
        self._certs: dict[str, x509.Certificate] = {}
        """Mock certificate PEM -> the certificate."""
        self.issued: dict[str, Issued] = {}
        self.cas: dict[str, x509.Certificate] = {}
        """Self-signed CA resource name -> its certificate."""

        for resource in evaluation.by_type(PRIVATE_KEY):
            key = generate_key(resource)
            mock = _output(resource, "privateKeyPem")
            self._keys[mock] = key
            self._real[mock] = key_pem(key)

        for resource in evaluation.by_type(SELF_SIGNED):
            inputs = _inputs(resource)
            key = self._key(resource, inputs["privateKeyPem"])
            name = subject_name(inputs.get("subject"))
            cert = build_certificate(
                subject=name,
                public_key=key.public_key(),
                issuer=name,
                signing_key=key,
                inputs=inputs,
                dns_names=list(inputs.get("dnsNames") or []),
                ip_addresses=list(inputs.get("ipAddresses") or []),
            )
            self._certs[_output(resource, "certPem")] = cert
            self._real[_output(resource, "certPem")] = _pem(cert)
            self.cas[resource.name] = cert

        requests: dict[str, tuple[x509.CertificateSigningRequest, PrivateKey]] = {}
        for resource in evaluation.by_type(CERT_REQUEST):
            inputs = _inputs(resource)
            key = self._key(resource, inputs["privateKeyPem"])
            builder = x509.CertificateSigningRequestBuilder().subject_name(subject_name(inputs.get("subject")))
            names: list[x509.GeneralName] = [x509.DNSName(n) for n in inputs.get("dnsNames") or []]
            names += [x509.IPAddress(ipaddress.ip_address(a)) for a in inputs.get("ipAddresses") or []]
            if names:
                builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
            csr = builder.sign(key, signature_hash(key))
            requests[_output(resource, "certRequestPem")] = (csr, key)
            self._real[_output(resource, "certRequestPem")] = _pem(csr)

        for resource in evaluation.by_type(LOCALLY_SIGNED):
            inputs = _inputs(resource)
            request = requests.get(inputs["certRequestPem"])
            assert request is not None, f"{resource.urn}: its certRequestPem is no CertRequest of the plan"
            csr, request_key = request
            ca_cert = self._certs.get(inputs["caCertPem"])
            assert ca_cert is not None, f"{resource.urn}: its caCertPem is no certificate of the plan"
            ca_key = self._key(resource, inputs["caPrivateKeyPem"])
            assert ca_key.public_key() == ca_cert.public_key(), (
                f"{resource.urn}: caPrivateKeyPem is not the key of the CA certificate it names"
            )
            try:
                sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                dns = sans.get_values_for_type(x509.DNSName)
                ips = [str(a) for a in sans.get_values_for_type(x509.IPAddress)]
            except x509.ExtensionNotFound:
                dns, ips = [], []
            cert = build_certificate(
                subject=csr.subject,
                public_key=csr.public_key(),
                issuer=ca_cert.subject,
                signing_key=ca_key,
                inputs=inputs,
                dns_names=dns,
                ip_addresses=ips,
                authority_key_id=ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value,
            )
            mock = _output(resource, "certPem")
            self._certs[mock] = cert
            self._real[mock] = _pem(cert)
            self.issued[resource.name] = Issued(resource.name, key_pem(request_key), _pem(cert), _pem(ca_cert), cert)

    def _key(self, resource: Resource, mock_pem: str) -> PrivateKey:
        key = self._keys.get(mock_pem)
        assert key is not None, f"{resource.urn}: its private key is no PrivateKey of the plan"
        return key

    def cert(self, name: str) -> Issued:
        """The issued certificate of the `LocallySignedCert` named `name`."""
        assert name in self.issued, f"no LocallySignedCert named {name!r}; the plan has {sorted(self.issued)}"
        return self.issued[name]

    @property
    def ca_pem(self) -> str:
        """The one CA certificate of the plan."""
        assert len(self.cas) == 1, f"expected one CA, the plan has {sorted(self.cas)}"
        return _pem(next(iter(self.cas.values())))

    def realize(self, text: str) -> str:
        """`text` with every mock PEM replaced by its real counterpart; no mock may remain."""
        for block in PEM_BLOCK.findall(text):
            real = self._real.get(block) or self._real.get(block + "\n")
            assert real is not None, f"a PEM block no tls resource of the plan produced:\n{block}"
            text = text.replace(block, real if block.endswith("\n") else real.rstrip("\n"))
        return text

    def write_uploads(self, container: Resource, directory: Path, root: str = "/run/secrets") -> dict[str, Path]:
        """Write the files `container` gets (its holder's uploads) under `root` into `directory`,
        real PEMs for mock ones.

        Returns the container path -> local file map (what a command line's paths become).
        """
        directory.mkdir(parents=True, exist_ok=True)
        written: dict[str, Path] = {}
        for upload in unwrap(self.evaluation.uploads_of(container)):
            path = str(upload["file"])
            assert path.startswith(root + "/"), f"{container.urn}: upload {path} is outside {root}"
            local = directory / path.removeprefix(root + "/")
            local.write_text(self.realize(str(upload["content"])))
            local.chmod(0o600)
            written[path] = local
        return written
