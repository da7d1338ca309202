"""What a firmware test needs from a manufacturer: a tiny real wheel, a root certificate and a
firmware signing certificate issued by it (made with ``cryptography``), and signatures."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from evse_daemon.certs import CertificateUse, roots_dir

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def build_wheel(directory: Path, version: str = "9.9.9", *, exit_code: int = 0) -> Path:
    """A real wheel of a stand-in ``evse-daemon`` whose ``evse-daemon`` console script exits
    with ``exit_code`` (what the installer's check runs), written by hand: no build tools."""
    name = f"evse_daemon-{version}"
    dist_info = f"{name}.dist-info"
    files = {
        "evse_fw_probe/__init__.py": (
            f"import sys\n\ndef main():\n    print('probe {version}')\n    sys.exit({exit_code})\n"
        ),
        f"{dist_info}/METADATA": (
            f"Metadata-Version: 2.1\nName: evse-daemon\nVersion: {version}\n"
        ),
        f"{dist_info}/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: firmware_kit\nRoot-Is-Purelib: true\n"
            "Tag: py3-none-any\n"
        ),
        f"{dist_info}/entry_points.txt": ("[console_scripts]\nevse-daemon = evse_fw_probe:main\n"),
        f"{dist_info}/top_level.txt": "evse_fw_probe\n",
    }
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    for path, text in files.items():
        digest = hashlib.sha256(text.encode()).digest()
        encoded = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        writer.writerow([path, f"sha256={encoded}", len(text.encode())])
    writer.writerow([f"{dist_info}/RECORD", "", ""])
    wheel = directory / f"{name}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, text in files.items():
            archive.writestr(path, text)
        archive.writestr(f"{dist_info}/RECORD", record.getvalue())
    return wheel


@dataclass
class Issued:
    certificate: x509.Certificate
    key: PrivateKey

    @property
    def pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode()


def _key(kind: str) -> PrivateKey:
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test Manufacturer"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def manufacturer_root(common_name: str = "Test Manufacturer Root", kind: str = "ec") -> Issued:
    key = _key(kind)
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    return Issued(certificate, key)


def signing_certificate(
    root: Issued,
    *,
    kind: str = "ec",
    valid_days: tuple[int, int] = (-1, 365),
    digital_signature: bool = True,
) -> Issued:
    key = _key(kind)
    now = datetime.now(UTC)
    usage = x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=not digital_signature,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name("Firmware Signing"))
        .issuer_name(root.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + timedelta(days=valid_days[0]))
        .not_valid_after(now + timedelta(days=valid_days[1]))
        .add_extension(usage, critical=True)
        .sign(root.key, hashes.SHA256())
    )
    return Issued(certificate, key)


def sign(data: bytes, signer: Issued, scheme: str = "default") -> str:
    """Base64 signature over ``data`` with SHA-256: ECDSA for EC keys; RSA-PSS (``pss``,
    the default) or PKCS#1 v1.5 (``pkcs1``) for RSA keys."""
    key = signer.key
    if isinstance(key, ec.EllipticCurvePrivateKey):
        raw = key.sign(data, ec.ECDSA(hashes.SHA256()))
    elif scheme == "pkcs1":
        raw = key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    else:
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH)
        raw = key.sign(data, pss, hashes.SHA256())
    return base64.b64encode(raw).decode()


def install_root(state_dir: Path, root: Issued, name: str = "manufacturer") -> Path:
    directory = roots_dir(state_dir, CertificateUse.MANUFACTURER_ROOT)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.pem"
    path.write_text(root.pem)
    return path
