"""A throw-away PKI for tests: CAs, server and client certificates, made with ``cryptography``.

Keys are P-256 unless asked otherwise (fast to make); every certificate is a real X.509
certificate that OpenSSL verifies, so the TLS in the tests is the TLS of the field.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def new_key(kind: str = "ec", bits: int = 2048) -> PrivateKey:
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=bits)
    curve: ec.EllipticCurve = ec.SECP256R1() if bits >= 256 or kind == "ec" else ec.SECP192R1()
    return ec.generate_private_key(curve)


@dataclass
class Issued:
    cert: x509.Certificate
    key: PrivateKey
    chain: tuple[x509.Certificate, ...] = ()  # sub-CAs between this and the root

    def cert_pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    def chain_pem(self) -> str:
        return "".join(
            c.public_bytes(serialization.Encoding.PEM).decode() for c in (self.cert, *self.chain)
        )

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def write(self, directory: Path, name: str) -> tuple[Path, Path]:
        """``<name>.pem`` (with the chain) and ``<name>.key`` (0600) in ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        cert_path = directory / f"{name}.pem"
        cert_path.write_text(self.chain_pem())
        key_path = directory / f"{name}.key"
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(self.key_pem())
        return cert_path, key_path


def _name(common_name: str, organization: str | None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization is not None:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attributes)


def _period(
    not_before: datetime | None, not_after: datetime | None, days: int
) -> tuple[datetime, datetime]:
    start = not_before or datetime.now(UTC) - timedelta(hours=1)
    return start, not_after or start + timedelta(days=days)


def make_ca(
    common_name: str = "Test CPO Root",
    *,
    organization: str = "Test CPO",
    parent: Issued | None = None,
    key: PrivateKey | None = None,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    ca: bool = True,
) -> Issued:
    """A root CA, or a sub-CA of ``parent``; ``ca=False`` makes a look-alike without the CA
    flag (for the refusals)."""
    key = key or new_key()
    start, end = _period(not_before, not_after, 3650)
    subject = _name(common_name, organization)
    issuer_key: CertificateIssuerPrivateKeyTypes = parent.key if parent else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(parent.cert.subject if parent else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )
    if parent is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(parent.key.public_key()), False
        )
    cert = builder.sign(issuer_key, hashes.SHA256())
    chain = (parent.cert, *parent.chain) if parent else ()
    # A root is not part of the chain a peer sends.
    chain = tuple(c for c in chain if c.issuer != c.subject)
    return Issued(cert, key, chain)


def make_leaf(
    ca: Issued,
    common_name: str,
    *,
    organization: str | None = "Test CPO",
    dns_names: Sequence[str] = (),
    client: bool = False,
    key: PrivateKey | None = None,
    public_key: CertificatePublicKeyTypes | None = None,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> Issued:
    """A server (or, with ``client``, a client) certificate issued by ``ca``."""
    key = key or new_key()
    start, end = _period(not_before, not_after, 365)
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name, organization))
        .issuer_name(ca.cert.subject)
        .public_key(public_key or key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), False
        )
    )
    if dns_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), critical=False
        )
    cert = builder.sign(ca.key, hashes.SHA256())
    chain = (ca.cert, *ca.chain) if ca.cert.issuer != ca.cert.subject else ca.chain
    return Issued(cert, key, chain)


def sign_csr(
    ca: Issued, csr_pem: str, *, not_before: datetime | None = None, days: int = 365
) -> Issued:
    """What a CPO's CA does with a charge point's SignCertificate.req: a client certificate
    for the CSR's subject and key (``key`` of the result is the CA's: the CP keeps its own)."""
    csr = x509.load_pem_x509_csr(csr_pem.encode())
    assert csr.is_signature_valid
    start, end = _period(not_before, None, days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(ca.cert.subject)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    chain = (ca.cert, *ca.chain) if ca.cert.issuer != ca.cert.subject else ca.chain
    return Issued(cert, ca.key, chain)


def server_context(
    server: Issued,
    *,
    client_ca: Issued | None = None,
    maximum_version: ssl.TLSVersion | None = None,
) -> ssl.SSLContext:
    """A TLS server context for the bench CSMS. With ``client_ca``, client certificates
    issued by it are asked for and checked (optional: the CSMS decides per profile)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # load_cert_chain reads files only.
    with tempfile.TemporaryDirectory() as tmp:
        cert_path, key_path = server.write(Path(tmp), "server")
        context.load_cert_chain(cert_path, key_path)
    if client_ca is not None:
        context.verify_mode = ssl.CERT_OPTIONAL
        context.load_verify_locations(cadata=client_ca.cert_pem())
    if maximum_version is not None:
        context.maximum_version = maximum_version
    return context
