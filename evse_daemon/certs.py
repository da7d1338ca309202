"""The charge point's certificates (OCPP 1.6 security whitepaper edition 2, §2.6, A02, M03-M05).

Layout under ``<state_dir>/certs/`` (shared with the firmware update code, which verifies
signing certificates against the manufacturer roots):

- ``CentralSystemRootCertificate/<sha256 of the DER>.pem`` and
  ``ManufacturerRootCertificate/<sha256 of the DER>.pem``: one CA certificate per file,
  installed with InstallCertificate.req.
- ``ChargePointCertificate/<sha256 of the leaf DER>.pem`` (the leaf and the sub-CA
  certificates the CSMS sent with it) with its private key ``<same name>.key`` (mode 0600), as
  accepted from CertificateSigned.req; ``pending.key`` is the key of the signing request in
  flight. The directory is 0700.

Everything here is synchronous and touches the disk or does public-key work: callers on the
event loop run it in a worker thread.
"""

from __future__ import annotations

import enum
import hashlib
import itertools
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID

from .files import fsync_directory, write_atomically

__all__ = (
    "CHARGE_POINT_CERTIFICATE",
    "CertificateError",
    "CertificateHashData",
    "CertificateStore",
    "CertificateUse",
    "ClientCredentials",
    "DeleteOutcome",
    "InstallOutcome",
    "check_ca_certificate",
    "hash_data",
    "load_pem_certificates",
    "sha256_name",
)


class CertificateUse(enum.StrEnum):
    """CertificateUseEnumType: the root certificates the CSMS may install."""

    CENTRAL_SYSTEM_ROOT = "CentralSystemRootCertificate"
    MANUFACTURER_ROOT = "ManufacturerRootCertificate"


# The directory of the charge point's own certificates and keys.
CHARGE_POINT_CERTIFICATE = "ChargePointCertificate"
_PENDING_KEY = "pending.key"
# A00.FR.502/503: RSA (and DSA) keys of at least 2048 bits, elliptic curves of at least 224.
MIN_RSA_KEY_BITS = 2048
MIN_EC_KEY_BITS = 224
_HASHES = {"SHA256": hashlib.sha256, "SHA384": hashlib.sha384, "SHA512": hashlib.sha512}


def certs_dir(state_dir: str | Path) -> Path:
    """The certificate store's directory in the state directory."""
    return Path(state_dir) / "certs"


def roots_dir(state_dir: str | Path, use: CertificateUse) -> Path:
    """Where the installed roots of ``use`` are, one PEM per file (the firmware updater reads
    the manufacturer roots from there)."""
    return certs_dir(state_dir) / use.value


class CertificateError(ValueError):
    """A certificate the CSMS sent is invalid; ``str()`` says why (for logs and techInfo)."""


class InstallOutcome(enum.StrEnum):
    """CertificateStatusEnumType of an InstallCertificate.conf."""

    ACCEPTED = "Accepted"
    REJECTED = "Rejected"
    FAILED = "Failed"


class DeleteOutcome(enum.StrEnum):
    """DeleteCertificateStatusEnumType of a DeleteCertificate.conf."""

    ACCEPTED = "Accepted"
    FAILED = "Failed"
    NOT_FOUND = "NotFound"


@dataclass(frozen=True, slots=True)
class CertificateHashData:
    """CertificateHashDataType: identifies a certificate the way OCSP's CertID does."""

    hash_algorithm: str
    issuer_name_hash: str
    issuer_key_hash: str
    serial_number: str

    def to_ocpp(self) -> dict[str, str]:
        """The payload form the ``ocpp`` library expects (snake_case keys)."""
        return {
            "hash_algorithm": self.hash_algorithm,
            "issuer_name_hash": self.issuer_name_hash,
            "issuer_key_hash": self.issuer_key_hash,
            "serial_number": self.serial_number,
        }

    def same_certificate(self, other: CertificateHashData) -> bool:
        """Equal up to the spelling a CSMS may choose: hex case, and leading zeros of the
        serial number (OCPP 2.0.1 says none; some CSMSs keep the DER's)."""
        return (
            self.hash_algorithm == other.hash_algorithm
            and self.issuer_name_hash.lower() == other.issuer_name_hash.lower()
            and self.issuer_key_hash.lower() == other.issuer_key_hash.lower()
            and _serial_key(self.serial_number) == _serial_key(other.serial_number)
        )


def _serial_key(serial: str) -> str:
    return serial.lower().removeprefix("0x").lstrip("0") or "0"


@dataclass(frozen=True, slots=True)
class ClientCredentials:
    """A TLS client certificate chain file and its key file (security profile 3)."""

    cert_file: Path
    key_file: Path
    not_before: datetime


# --------------------------------------------------------------------------------------------
# Single certificates


def load_pem_certificates(pem: str | bytes) -> list[x509.Certificate]:
    """Every certificate in a PEM text, in order; CertificateError if there is none or the
    text is not PEM."""
    data = pem.encode("ascii", errors="replace") if isinstance(pem, str) else pem
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise CertificateError(f"not a PEM encoded X.509 certificate: {exc}") from None
    if not certificates:
        raise CertificateError("no certificate in the PEM text")
    return certificates


def sha256_name(certificate: x509.Certificate) -> str:
    """The file name stem of a certificate in the store: the SHA-256 of its DER, in hex."""
    return hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()


def _subject_text(certificate: x509.Certificate) -> str:
    return certificate.subject.rfc4514_string() or "(empty subject)"


def _check_key_strength(certificate: x509.Certificate) -> None:
    """A00.FR.501-503: at least 112 bits of security."""
    key = certificate.public_key()
    if isinstance(key, rsa.RSAPublicKey | dsa.DSAPublicKey):
        if key.key_size < MIN_RSA_KEY_BITS:
            raise CertificateError(
                f"{_subject_text(certificate)}: {key.key_size}-bit key, "
                f"at least {MIN_RSA_KEY_BITS} required"
            )
    elif isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.key_size < MIN_EC_KEY_BITS:
            raise CertificateError(
                f"{_subject_text(certificate)}: {key.curve.key_size}-bit curve, "
                f"at least {MIN_EC_KEY_BITS} required"
            )
    elif not isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        raise CertificateError(f"{_subject_text(certificate)}: unsupported key type")


def _check_period(certificate: x509.Certificate, now: datetime) -> None:
    if now >= certificate.not_valid_after_utc:
        raise CertificateError(
            f"{_subject_text(certificate)} expired on {certificate.not_valid_after_utc:%Y-%m-%d}"
        )


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        return False
    return constraints.value.ca


def check_ca_certificate(certificate: x509.Certificate, now: datetime) -> None:
    """What a root (or sub-CA) certificate must be to be installed: a CA, valid now, with a
    strong enough key. CertificateError says what is wrong."""
    if not _is_ca(certificate):
        raise CertificateError(f"{_subject_text(certificate)} is not a CA certificate")
    _check_period(certificate, now)
    if now < certificate.not_valid_before_utc:
        raise CertificateError(
            f"{_subject_text(certificate)} is not valid before "
            f"{certificate.not_valid_before_utc:%Y-%m-%d}"
        )
    _check_key_strength(certificate)


def _issued_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _der_length(data: bytes, offset: int) -> tuple[int, int]:
    """(length, offset of the contents) of the DER element whose length octets start at
    ``offset``."""
    first = data[offset]
    if first < 0x80:
        return first, offset + 1
    count = first & 0x7F
    return int.from_bytes(data[offset + 1 : offset + 1 + count], "big"), offset + 1 + count


def _public_key_bits(certificate: x509.Certificate) -> bytes:
    """The subjectPublicKey BIT STRING's value (without tag, length and the unused-bits
    octet): what OCSP's issuerKeyHash, and so OCPP's, is computed over (RFC 6960 §4.1.1)."""
    spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # SubjectPublicKeyInfo ::= SEQUENCE { algorithm AlgorithmIdentifier, subjectPublicKey
    # BIT STRING }: skip the outer header and the algorithm element, then read the bits.
    _, inner = _der_length(spki, 1)
    algorithm_length, algorithm_start = _der_length(spki, inner + 1)
    bits_at = algorithm_start + algorithm_length
    bits_length, bits_start = _der_length(spki, bits_at + 1)
    return spki[bits_start + 1 : bits_start + bits_length]


def hash_data(
    certificate: x509.Certificate,
    issuer: x509.Certificate | None = None,
    algorithm: str = "SHA256",
) -> CertificateHashData:
    """The CertificateHashDataType of ``certificate``. ``issuer`` supplies the key hash; a
    self-signed root is its own issuer, and so is a certificate whose issuer is unknown here
    (the closest this charger can get, and stable across calls, so a DeleteCertificate with
    the hashes it reported still finds it)."""
    digest = _HASHES[algorithm]
    key_source = issuer if issuer is not None else certificate
    return CertificateHashData(
        hash_algorithm=algorithm,
        issuer_name_hash=digest(certificate.issuer.public_bytes()).hexdigest(),
        issuer_key_hash=digest(_public_key_bits(key_source)).hexdigest(),
        serial_number=format(certificate.serial_number, "x"),
    )


def _find_issuer(
    certificate: x509.Certificate, candidates: Iterable[x509.Certificate]
) -> x509.Certificate | None:
    if certificate.issuer == certificate.subject and _issued_by(certificate, certificate):
        return certificate
    for candidate in candidates:
        if candidate.subject == certificate.issuer and _issued_by(certificate, candidate):
            return candidate
    return None


def _common_name(certificate: x509.Certificate | x509.CertificateSigningRequest) -> str | None:
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


# --------------------------------------------------------------------------------------------
# Files


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)


class CertificateStore:
    """The certificates installed on this charger, in ``directory`` (``<state_dir>/certs``).

    ``max_roots`` is CertificateStoreMaxLength: how many root/CA certificates, of both uses
    together, may be installed.
    """

    def __init__(self, directory: Path, *, max_roots: int) -> None:
        self.directory = directory
        self.max_roots = max_roots

    def root_dir(self, use: CertificateUse) -> Path:
        """Where the roots of ``use`` are, one PEM per file (the firmware updater reads the
        manufacturer roots from there)."""
        return self.directory / use.value

    @property
    def _own_dir(self) -> Path:
        return self.directory / CHARGE_POINT_CERTIFICATE

    # -- roots ------------------------------------------------------------------------------

    def root_files(self, use: CertificateUse) -> list[tuple[Path, x509.Certificate]]:
        """The installed certificates of one use, oldest file first. A file that cannot be
        read as a certificate is skipped: it trusts nothing, and the rest still works."""
        directory = self.root_dir(use)
        if not directory.is_dir():
            return []
        found = []
        for path in sorted(directory.glob("*.pem"), key=_mtime):
            try:
                found.append((path, load_pem_certificates(path.read_bytes())[0]))
            except (OSError, CertificateError):
                continue
        return found

    def roots(self, use: CertificateUse) -> list[x509.Certificate]:
        return [cert for _, cert in self.root_files(use)]

    def root_count(self) -> int:
        return sum(len(self.root_files(use)) for use in CertificateUse)

    def install_root(self, use: CertificateUse, pem: str, now: datetime) -> InstallOutcome:
        """InstallCertificate.req (M05). Raises CertificateError for a certificate that is
        invalid (answered Rejected, with the reason logged)."""
        certificates = load_pem_certificates(pem)
        if len(certificates) != 1:
            raise CertificateError(f"{len(certificates)} certificates where one is expected")
        certificate = certificates[0]
        check_ca_certificate(certificate, now)
        path = self.root_dir(use) / f"{sha256_name(certificate)}.pem"
        if path.exists():
            return InstallOutcome.ACCEPTED  # installed already: the CSMS's wish holds
        if self.root_count() >= self.max_roots:
            # M05.FR.03: no room (CertificateStoreMaxLength).
            raise CertificateError(f"the store holds its maximum of {self.max_roots} certificates")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(path, certificate.public_bytes(serialization.Encoding.PEM), mode=0o644)
        except OSError:
            return InstallOutcome.FAILED
        return InstallOutcome.ACCEPTED

    def installed_hash_data(self, use: CertificateUse) -> list[CertificateHashData]:
        """GetInstalledCertificateIds.req (M03): the hash data of every certificate of a use."""
        everything = self._all_known()
        return [hash_data(cert, _find_issuer(cert, everything)) for cert in self.roots(use)]

    def find_root(self, wanted: CertificateHashData) -> tuple[Path, x509.Certificate] | None:
        """The installed root that ``wanted`` names (in the hash algorithm it was given in)."""
        everything = self._all_known()
        for use in CertificateUse:
            for path, cert in self.root_files(use):
                issuer = _find_issuer(cert, everything)
                if hash_data(cert, issuer, wanted.hash_algorithm).same_certificate(wanted):
                    return path, cert
        return None

    def delete_root(self, path: Path) -> DeleteOutcome:
        try:
            path.unlink()
            fsync_directory(path.parent)
        except FileNotFoundError:
            return DeleteOutcome.NOT_FOUND
        except OSError:
            return DeleteOutcome.FAILED
        return DeleteOutcome.ACCEPTED

    def _all_known(self) -> list[x509.Certificate]:
        return [cert for use in CertificateUse for cert in self.roots(use)]

    # -- the charge point's own certificate -------------------------------------------------

    def new_signing_request(self, common_name: str, organization: str) -> str:
        """A02.FR.02/03: a new key pair, kept on the charger (0600), and a PEM CSR for it with
        CN = the charge point's identity and O = CpoName (A02.FR.13)."""
        # P-256: 128-bit security, the ECDHE-ECDSA suites of A00.FR.318, and generated in
        # milliseconds even on a Pi (an RSA-2048 key can take seconds there).
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            ]
        )
        request = (
            x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
        )
        _private_dir(self._own_dir)
        write_atomically(
            self._own_dir / _PENDING_KEY,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            mode=0o600,
        )
        return request.public_bytes(serialization.Encoding.PEM).decode("ascii")

    def accept_signed_chain(
        self,
        chain_pem: str,
        now: datetime,
        *,
        trusted_roots: Sequence[x509.Certificate],
        max_chain_chars: int,
        expected_common_name: str,
    ) -> x509.Certificate:
        """CertificateSigned.req (A02.FR.06): check the chain and install it with the key of
        the pending signing request. Returns the new leaf certificate; CertificateError (the
        certificate is discarded, A02.FR.07) if anything is wrong."""
        if len(chain_pem) > max_chain_chars:
            raise CertificateError(
                f"certificateChain of {len(chain_pem)} characters is longer than "
                f"CertificateSignedMaxChainSize ({max_chain_chars})"
            )
        chain = load_pem_certificates(chain_pem)
        leaf = chain[0]
        pending = self._own_dir / _PENDING_KEY
        try:
            key = serialization.load_pem_private_key(pending.read_bytes(), password=None)
        except FileNotFoundError:
            raise CertificateError("no certificate signing request is pending") from None
        except (OSError, ValueError) as exc:
            raise CertificateError(f"the pending key cannot be read: {exc}") from None
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        if leaf.public_key().public_bytes(serialization.Encoding.DER, spki) != (
            key.public_key().public_bytes(serialization.Encoding.DER, spki)
        ):
            raise CertificateError("the certificate is not for the key of the signing request")
        self._check_leaf(leaf, now, expected_common_name)
        self._check_chain(chain, now, trusted_roots)
        stem = sha256_name(leaf)
        _private_dir(self._own_dir)
        write_atomically(
            self._own_dir / f"{stem}.pem",
            b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain),
            mode=0o644,
        )
        # The key keeps its 0600 mode across the rename; written last, so that a key file
        # always has its certificate beside it.
        os.replace(pending, self._own_dir / f"{stem}.key")
        fsync_directory(self._own_dir)
        return leaf

    @staticmethod
    def _check_leaf(leaf: x509.Certificate, now: datetime, expected_common_name: str) -> None:
        if _is_ca(leaf):
            raise CertificateError("the charge point certificate is a CA certificate")
        _check_period(leaf, now)
        _check_key_strength(leaf)
        common_name = _common_name(leaf)
        if common_name != expected_common_name:
            raise CertificateError(
                f"certificate CN {common_name!r} is not this charge point "
                f"({expected_common_name!r})"
            )
        if not leaf.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME):
            raise CertificateError("the certificate subject has no O (organizationName)")

    @staticmethod
    def _check_chain(
        chain: Sequence[x509.Certificate],
        now: datetime,
        trusted_roots: Sequence[x509.Certificate],
    ) -> None:
        """Each certificate issued by the next one, the last by a trusted root: part of the
        Charge Point Operator hierarchy (A02.FR.06)."""
        for child, parent in itertools.pairwise(chain):
            if not _is_ca(parent):
                raise CertificateError(f"{_subject_text(parent)} in the chain is not a CA")
            _check_period(parent, now)
            if not _issued_by(child, parent):
                raise CertificateError(
                    f"{_subject_text(child)} is not issued by {_subject_text(parent)}"
                )
        top = chain[-1]
        for root in trusted_roots:
            if top == root or _issued_by(top, root):
                _check_period(root, now)
                return
        raise CertificateError(
            f"{_subject_text(top)} does not chain to an installed CentralSystemRootCertificate"
        )

    def client_credentials(self, now: datetime) -> list[ClientCredentials]:
        """The accepted charge point certificates valid now, newest first (A02.FR.09: the
        newest, by the start of its validity, is the one to use)."""
        directory = self._own_dir
        if not directory.is_dir():
            return []
        found = []
        for cert_file in directory.glob("*.pem"):
            key_file = cert_file.with_suffix(".key")
            if not key_file.exists():
                continue
            try:
                leaf = load_pem_certificates(cert_file.read_bytes())[0]
            except (OSError, CertificateError):
                continue
            if leaf.not_valid_before_utc <= now < leaf.not_valid_after_utc:
                found.append(ClientCredentials(cert_file, key_file, leaf.not_valid_before_utc))
        return sorted(found, key=lambda c: c.not_before, reverse=True)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
