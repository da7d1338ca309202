"""The certificate store (security whitepaper §2.6, A02, M03-M05): hash data, installing and
deleting roots, signing requests, accepting a signed chain, choosing the client certificate."""

from __future__ import annotations

import hashlib
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from evse_daemon.certs import (
    CertificateError,
    CertificateHashData,
    CertificateStore,
    CertificateUse,
    DeleteOutcome,
    InstallOutcome,
    hash_data,
)
from tests import pki

NOW = datetime.now(UTC)
CP = "CP-1"
CS_ROOT = CertificateUse.CENTRAL_SYSTEM_ROOT
MF_ROOT = CertificateUse.MANUFACTURER_ROOT


def store(tmp_path: Path, max_roots: int = 5) -> CertificateStore:
    return CertificateStore(tmp_path / "certs", max_roots=max_roots)


def key_bits(cert: x509.Certificate) -> bytes:
    """The subjectPublicKey BIT STRING value, computed the library's own way per key type."""
    key = cert.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        return key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    assert isinstance(key, rsa.RSAPublicKey)
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)


@pytest.mark.parametrize("kind", ["ec", "rsa"])
@pytest.mark.parametrize("algorithm", ["SHA256", "SHA384", "SHA512"])
def test_hash_data_is_ocsp_style(kind: str, algorithm: str) -> None:
    root = pki.make_ca("Root", key=pki.new_key(kind))
    sub = pki.make_ca("Sub", parent=root)
    digest = getattr(hashlib, algorithm.lower())
    # A root is its own issuer.
    assert hash_data(root.cert, root.cert, algorithm) == CertificateHashData(
        algorithm,
        digest(root.cert.subject.public_bytes()).hexdigest(),
        digest(key_bits(root.cert)).hexdigest(),
        format(root.cert.serial_number, "x"),
    )
    # A sub-CA: the issuer's name and key.
    data = hash_data(sub.cert, root.cert, algorithm)
    assert data.issuer_name_hash == digest(root.cert.subject.public_bytes()).hexdigest()
    assert data.issuer_key_hash == digest(key_bits(root.cert)).hexdigest()


def test_hash_data_matching_ignores_hex_case_and_leading_zeros() -> None:
    data = CertificateHashData("SHA256", "ab" * 32, "cd" * 32, "0a1b")
    assert data.same_certificate(CertificateHashData("SHA256", "AB" * 32, "CD" * 32, "A1B"))
    assert data.same_certificate(CertificateHashData("SHA256", "ab" * 32, "cd" * 32, "000a1b"))
    assert not data.same_certificate(CertificateHashData("SHA384", "ab" * 32, "cd" * 32, "a1b"))
    assert not data.same_certificate(CertificateHashData("SHA256", "ab" * 32, "cd" * 32, "a1c"))


def test_install_list_and_delete_roots(tmp_path: Path) -> None:
    certs = store(tmp_path)
    first, second = pki.make_ca("First"), pki.make_ca("Second")
    assert certs.install_root(CS_ROOT, first.cert_pem(), NOW) is InstallOutcome.ACCEPTED
    assert certs.install_root(MF_ROOT, second.cert_pem(), NOW) is InstallOutcome.ACCEPTED
    assert certs.install_root(CS_ROOT, first.cert_pem(), NOW) is InstallOutcome.ACCEPTED
    name = hashlib.sha256(first.cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    assert [p.name for p, _ in certs.root_files(CS_ROOT)] == [f"{name}.pem"]
    assert certs.roots(MF_ROOT) == [second.cert]
    listed = certs.installed_hash_data(CS_ROOT)
    assert listed == [hash_data(first.cert, first.cert)]
    found = certs.find_root(listed[0])
    assert found is not None and found[1] == first.cert
    assert certs.find_root(hash_data(second.cert, second.cert, "SHA512")) is not None
    assert certs.delete_root(found[0]) is DeleteOutcome.ACCEPTED
    assert certs.find_root(listed[0]) is None
    assert certs.delete_root(found[0]) is DeleteOutcome.NOT_FOUND


def test_a_sub_ca_is_identified_by_its_installed_issuer(tmp_path: Path) -> None:
    certs = store(tmp_path)
    root = pki.make_ca("Root")
    sub = pki.make_ca("Sub", parent=root)
    certs.install_root(CS_ROOT, root.cert_pem(), NOW)
    certs.install_root(CS_ROOT, sub.cert_pem(), NOW)
    assert hash_data(sub.cert, root.cert) in certs.installed_hash_data(CS_ROOT)


def test_install_refuses_what_is_not_a_valid_ca(tmp_path: Path) -> None:
    certs = store(tmp_path, max_roots=1)
    root = pki.make_ca("Root")
    past = NOW - timedelta(days=10)
    refused = {
        "not PEM": "hello",
        "a leaf": pki.make_leaf(root, "leaf").cert_pem(),
        "no CA flag": pki.make_ca("Fake", ca=False).cert_pem(),
        "expired": pki.make_ca("Old", not_before=past, not_after=past + timedelta(1)).cert_pem(),
        "not yet valid": pki.make_ca("New", not_before=NOW + timedelta(days=1)).cert_pem(),
        "weak key": pki.make_ca("Weak", key=pki.new_key("rsa", 1024)).cert_pem(),
    }
    for why, pem in refused.items():
        with pytest.raises(CertificateError):
            certs.install_root(CS_ROOT, pem, NOW)
        assert certs.root_count() == 0, why
    assert certs.install_root(MF_ROOT, root.cert_pem(), NOW) is InstallOutcome.ACCEPTED
    # M05.FR.03: CertificateStoreMaxLength counts both uses.
    with pytest.raises(CertificateError, match="maximum of 1"):
        certs.install_root(CS_ROOT, pki.make_ca("Another").cert_pem(), NOW)


def _csr(certs: CertificateStore) -> str:
    return certs.new_signing_request(CP, "Test CPO")


def test_signing_request_keeps_its_key_private(tmp_path: Path) -> None:
    certs = store(tmp_path)
    csr = x509.load_pem_x509_csr(_csr(certs).encode())
    assert csr.is_signature_valid
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == CP
    assert csr.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "Test CPO"
    key = certs.directory / "ChargePointCertificate" / "pending.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700


def test_signed_chain_through_a_sub_ca_is_accepted_and_used(tmp_path: Path) -> None:
    certs = store(tmp_path)
    root = pki.make_ca("Root")
    sub = pki.make_ca("Sub", parent=root)
    signed = pki.sign_csr(sub, _csr(certs))
    leaf = certs.accept_signed_chain(
        signed.chain_pem(),
        NOW,
        trusted_roots=[root.cert],
        max_chain_chars=10000,
        expected_common_name=CP,
    )
    assert leaf == signed.cert
    (credentials,) = certs.client_credentials(NOW)
    assert x509.load_pem_x509_certificates(credentials.cert_file.read_bytes()) == [
        signed.cert,
        sub.cert,
    ]
    assert stat.S_IMODE(credentials.key_file.stat().st_mode) == 0o600
    assert not (certs.directory / "ChargePointCertificate" / "pending.key").exists()


def test_the_newest_valid_client_certificate_is_used(tmp_path: Path) -> None:
    certs = store(tmp_path)
    root = pki.make_ca("Root")
    for start in (NOW - timedelta(days=3), NOW - timedelta(days=1), NOW + timedelta(days=1)):
        signed = pki.sign_csr(root, _csr(certs), not_before=start)
        certs.accept_signed_chain(
            signed.chain_pem(),
            NOW,
            trusted_roots=[root.cert],
            max_chain_chars=10000,
            expected_common_name=CP,
        )
    valid = certs.client_credentials(NOW)
    # The one not valid yet is kept for later (A02.FR.08) but not offered now.
    assert [c.not_before.date() for c in valid] == [
        (NOW - timedelta(days=1)).date(),
        (NOW - timedelta(days=3)).date(),
    ]


@pytest.mark.parametrize(
    "problem",
    ["untrusted", "other key", "wrong CN", "no O", "expired", "too long", "no request"],
)
def test_invalid_signed_chains_are_refused(tmp_path: Path, problem: str) -> None:
    certs = store(tmp_path)
    root = pki.make_ca("Root")
    csr = _csr(certs)
    limit = 10000
    public_key = x509.load_pem_x509_csr(csr.encode()).public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    if problem == "untrusted":
        chain = pki.sign_csr(pki.make_ca("Elsewhere"), csr).chain_pem()
    elif problem == "other key":
        chain = pki.make_leaf(root, CP, client=True).cert_pem()
    elif problem == "wrong CN":
        chain = pki.make_leaf(root, "CP-2", client=True, public_key=public_key).cert_pem()
    elif problem == "no O":
        chain = pki.make_leaf(
            root, CP, organization=None, client=True, public_key=public_key
        ).cert_pem()
    elif problem == "expired":
        past = NOW - timedelta(days=10)
        chain = pki.make_leaf(
            root, CP, client=True, public_key=public_key, not_before=past, not_after=past
        ).cert_pem()
    elif problem == "too long":
        chain = pki.sign_csr(root, csr).chain_pem()
        limit = len(chain) - 1
    else:
        chain = pki.sign_csr(root, csr).chain_pem()
        (certs.directory / "ChargePointCertificate" / "pending.key").unlink()
    with pytest.raises(CertificateError):
        certs.accept_signed_chain(
            chain, NOW, trusted_roots=[root.cert], max_chain_chars=limit, expected_common_name=CP
        )
    assert certs.client_credentials(NOW) == []
