"""SignedUpdateFirmware's checks: the signing certificate chains to an installed manufacturer
root, and the signature verifies over the whole file (ECDSA, RSA-PSS, RSA PKCS#1 v1.5)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from evse_daemon.certs import CertificateUse, roots_dir
from evse_daemon.firmware_signature import (
    CertificateInvalid,
    check_signing_certificate,
    load_roots,
    signature_valid,
)
from tests.firmware_kit import install_root, manufacturer_root, sign, signing_certificate

FIRMWARE = b"firmware image " * 5000


def _now() -> datetime:
    return datetime.now(UTC)


@pytest.mark.parametrize(("kind", "scheme"), [("ec", "default"), ("rsa", "pss"), ("rsa", "pkcs1")])
def test_a_signature_by_a_certificate_of_an_installed_root_verifies(
    tmp_path: Path, kind: str, scheme: str
) -> None:
    root = manufacturer_root(kind=kind)
    signer = signing_certificate(root, kind=kind)
    install_root(tmp_path, manufacturer_root("Another Root"), "other")
    install_root(tmp_path, root)
    firmware = tmp_path / "fw.whl"
    firmware.write_bytes(FIRMWARE)

    roots = load_roots(roots_dir(tmp_path, CertificateUse.MANUFACTURER_ROOT))
    assert len(roots) == 2
    certificate = check_signing_certificate(signer.pem, roots, _now())
    assert signature_valid(firmware, sign(FIRMWARE, signer, scheme), certificate)
    # One byte changed, or the signature of another file: not valid.
    firmware.write_bytes(FIRMWARE[:-1] + b"X")
    assert not signature_valid(firmware, sign(FIRMWARE, signer, scheme), certificate)
    firmware.write_bytes(FIRMWARE)
    assert not signature_valid(firmware, sign(b"other", signer, scheme), certificate)
    assert not signature_valid(firmware, "not base64!", certificate)


def test_certificates_that_are_not_to_be_trusted(tmp_path: Path) -> None:
    root = manufacturer_root()
    roots = [root.certificate]
    stranger = signing_certificate(manufacturer_root("Unknown Root"))
    with pytest.raises(CertificateInvalid, match="not an installed manufacturer root"):
        check_signing_certificate(stranger.pem, roots, _now())
    with pytest.raises(CertificateInvalid, match="no manufacturer root"):
        check_signing_certificate(signing_certificate(root).pem, [], _now())
    expired = signing_certificate(root, valid_days=(-30, -1))
    with pytest.raises(CertificateInvalid, match="not valid at"):
        check_signing_certificate(expired.pem, roots, _now())
    # Valid by the injected clock, not the machine's: a year on it has expired.
    valid = signing_certificate(root)
    check_signing_certificate(valid.pem, roots, _now())
    with pytest.raises(CertificateInvalid, match="not valid at"):
        check_signing_certificate(valid.pem, roots, _now() + timedelta(days=400))
    no_signing = signing_certificate(root, digital_signature=False)
    with pytest.raises(CertificateInvalid, match="key usage"):
        check_signing_certificate(no_signing.pem, roots, _now())
    with pytest.raises(CertificateInvalid, match="not a PEM"):
        check_signing_certificate("-----BEGIN CERTIFICATE-----\nxx\n", roots, _now())


def test_an_unreadable_root_file_does_not_disable_the_others(tmp_path: Path) -> None:
    root = manufacturer_root()
    install_root(tmp_path, root)
    (roots_dir(tmp_path, CertificateUse.MANUFACTURER_ROOT) / "broken.pem").write_text("garbage")
    assert [
        c.subject for c in load_roots(roots_dir(tmp_path, CertificateUse.MANUFACTURER_ROOT))
    ] == [root.certificate.subject]
    assert load_roots(tmp_path / "nowhere") == []
