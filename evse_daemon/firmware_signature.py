"""The checks of a SignedUpdateFirmware (OCPP 1.6 security whitepaper, use case L01).

- The signing certificate must be issued directly by one of the manufacturer root
  certificates installed on the charger (L01.FR.12; "the manufacturer SHALL NOT use
  intermediate certificates for the firmware signing certificate"), and both must be valid
  now. The roots are kept one PEM per file in a directory (``certs.roots_dir``).
- The signature (base64) must verify over the entire firmware file with the certificate's
  key and SHA-256 (L01.FR.04): RSA-PSS or ECDSA as the whitepaper names, and RSA PKCS#1 v1.5,
  which common signing tools (``openssl dgst -sha256 -sign``) produce for RSA keys.

Everything here blocks (file reads, hashing): call it in a worker thread. Imported only when
a signed update is checked: ``cryptography`` costs start-up time and memory on a Pi.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

log = logging.getLogger(__name__)

_BLOCK_BYTES = 1024 * 1024


class CertificateInvalid(Exception):
    """The signing certificate is not one to trust; the message says why."""


def load_roots(directory: Path) -> list[x509.Certificate]:
    """Every certificate in the ``*.pem`` files of ``directory`` (unreadable ones are logged
    and skipped: one bad file must not disable the others)."""
    roots: list[x509.Certificate] = []
    for path in sorted(directory.glob("*.pem")):
        try:
            roots.extend(x509.load_pem_x509_certificates(path.read_bytes()))
        except (OSError, ValueError) as exc:
            log.error("manufacturer root certificate %s unreadable: %s", path, exc)
    return roots


def _valid_at(certificate: x509.Certificate, now: datetime) -> bool:
    return certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc


def check_signing_certificate(
    pem: str, roots: list[x509.Certificate], now: datetime
) -> x509.Certificate:
    """The signing certificate, if it chains to one of ``roots`` and is valid at ``now``;
    CertificateInvalid otherwise."""
    try:
        certificate = x509.load_pem_x509_certificate(pem.encode("ascii", "replace"))
    except ValueError as exc:
        raise CertificateInvalid(f"not a PEM X.509 certificate: {exc}") from None
    if not roots:
        raise CertificateInvalid("no manufacturer root certificate is installed")
    if not _valid_at(certificate, now):
        raise CertificateInvalid(
            f"not valid at {now:%Y-%m-%dT%H:%M:%SZ} (valid "
            f"{certificate.not_valid_before_utc:%Y-%m-%d} to "
            f"{certificate.not_valid_after_utc:%Y-%m-%d})"
        )
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is not None and not usage.digital_signature:
        raise CertificateInvalid("its key usage does not allow digital signatures")
    for root in roots:
        try:
            certificate.verify_directly_issued_by(root)
        except (ValueError, TypeError, InvalidSignature):
            continue
        if not _valid_at(root, now):
            raise CertificateInvalid(f"its root {root.subject.rfc4514_string()} has expired")
        return certificate
    raise CertificateInvalid(
        f"issuer {certificate.issuer.rfc4514_string()} is not an installed manufacturer root"
    )


def _sha256(path: Path) -> bytes:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(_BLOCK_BYTES):
            digest.update(block)
    return digest.digest()


def signature_valid(path: Path, signature_b64: str, certificate: x509.Certificate) -> bool:
    """Whether ``signature_b64`` signs the whole of ``path`` with the certificate's key."""
    try:
        signature = base64.b64decode(signature_b64, validate=True)
    except (binascii.Error, ValueError):
        return False
    digest = _sha256(path)  # streamed: the file need not fit in memory
    prehashed = utils.Prehashed(hashes.SHA256())
    key = certificate.public_key()
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, digest, ec.ECDSA(prehashed))
            return True
        if isinstance(key, rsa.RSAPublicKey):
            schemes: list[padding.AsymmetricPadding] = [
                padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO),
                padding.PKCS1v15(),
            ]
            for scheme in schemes:
                try:
                    key.verify(signature, digest, scheme, prehashed)
                except InvalidSignature:
                    continue
                return True
            return False
    except InvalidSignature:
        return False
    log.warning("signing certificate has a %s key: not supported", type(key).__name__)
    return False
