"""OCA OCPP 1.6 compliance test cases: security (charge point side), TC_073-TC_087.

Scenarios follow the OCA test case list and the security white paper edition 2 [SEC]. The CSMS
is the bench CSMS over a real websocket on loopback; for profiles 2 and 3 it serves real TLS
with certificates made by ``tests.pki`` (the charger checks them with OpenSSL as in the field).
TC_080/TC_081 (signed firmware) are the firmware update's.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.server
import logging
import ssl
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from ocpp.v16 import call

from evse_daemon.bench.csms import Handshake
from evse_daemon.config import load_config
from evse_daemon.ocpp16.security import TLS12_CIPHERS
from tests import pki
from tests.harness import (
    SLACK,
    STALE,
    Bench,
    bench,
    config_value,
    stale_clock,
    write_config,
)

CP = "CP-TEST-1"
PASSWORD = "0123456789abcdef0123"  # 20 characters: the whitepaper's hex AuthorizationKey
CPO = "Test CPO"


@dataclass
class Pki:
    root: pki.Issued  # the CPO's root: the CentralSystemRootCertificate
    server: pki.Issued  # the CSMS's certificate, CN and SAN localhost
    client: pki.Issued  # this charger's factory certificate, CN = its identity
    ca_file: Path
    client_cert: Path
    client_key: Path


@pytest.fixture
def tls(tmp_path: Path) -> Pki:
    root = pki.make_ca("Test CPO Root", organization=CPO)
    server = pki.make_leaf(root, "localhost", dns_names=["localhost"])
    client = pki.make_leaf(root, CP, organization=CPO, client=True)
    files = tmp_path / "pki"
    files.mkdir()
    ca_file = files / "csms-ca.pem"
    ca_file.write_text(root.cert_pem())
    client_cert, client_key = client.write(files, "client")
    return Pki(root, server, client, ca_file, client_cert, client_key)


def secure_bench(
    tmp_path: Path,
    tls: Pki,
    profile: int,
    *,
    ca_file: bool = True,
    client_files: bool | None = None,
    csms_password: str | None = PASSWORD,
    extra_ocpp: dict[str, Any] | None = None,
    **kwargs: Any,
) -> contextlib.AbstractAsyncContextManager[Bench]:
    """The bench with the charger and the CSMS both at security ``profile``."""
    extra: dict[str, Any] = {"security_profile": profile}
    csms: dict[str, Any] = {}
    if profile in (1, 2):
        extra["basic_auth_password"] = PASSWORD
        csms["basic_auth"] = {CP: csms_password} if csms_password is not None else {}
    if profile >= 2:
        if ca_file:
            extra["ca_file"] = str(tls.ca_file)
        csms["ssl_context"] = pki.server_context(tls.server, client_ca=tls.root)
        csms["url_host"] = "localhost"
    if client_files if client_files is not None else profile == 3:
        extra["client_cert_file"] = str(tls.client_cert)
        extra["client_key_file"] = str(tls.client_key)
    if profile == 3:
        csms["require_client_certificate"] = True
    extra.update(extra_ocpp or {})
    return bench(tmp_path, extra_ocpp=extra, **csms, **kwargs)


def accepted(b: Bench) -> list[Handshake]:
    return [h for h in b.csms.handshakes if h.status == 101]


def der(issued: pki.Issued | x509.Certificate) -> bytes:
    cert = issued.cert if isinstance(issued, pki.Issued) else issued
    return cert.public_bytes(serialization.Encoding.DER)


def security_log(b: Bench) -> str:
    path = b.directory / "state" / "security.log"
    return path.read_text() if path.exists() else ""


async def get_key(b: Bench, key: str) -> str | None:
    return config_value(await b.csms.call(call.GetConfiguration(key=[key])), key)


# --- TC_085 / TC_086 / TC_087: the three profiles ---------------------------------------------


async def test_TC_085_basic_authentication(tmp_path: Path, tls: Pki) -> None:
    async with secure_bench(tmp_path, tls, 1) as b:
        await b.booted()
        (handshake,) = accepted(b)
        # A00.FR.202-204: Basic credentials, the user being the identity in the URL.
        assert (handshake.user, handshake.password) == (CP, PASSWORD)
        assert handshake.path == f"/ocpp/{CP}"
        assert handshake.tls_version is None  # profile 1 is unsecured transport
        assert await get_key(b, "SecurityProfile") == "1"


async def test_TC_085_wrong_password_is_not_retried_in_a_tight_loop(
    tmp_path: Path, tls: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    # Without the longer wait, the backoff from 0.01 s would make ~8 attempts in the window.
    timing = {"reconnect_min_s": 0.01, "reconnect_max_s": 0.8}
    caplog.set_level(logging.DEBUG, logger="evse_daemon")
    async with secure_bench(
        tmp_path, tls, 1, csms_password="not-the-password-at-all", extra_ocpp=timing
    ) as b:
        await b.csms.wait_handshakes(2)
        first = len(b.csms.handshakes)
        window_s = 1.6
        await asyncio.sleep(window_s)
        during = len(b.csms.handshakes) - first
        # Every refused attempt waits reconnect_max_s: at most window / 0.8 + 1 of them.
        assert during <= window_s / timing["reconnect_max_s"] + 1, during
        assert all(h.status == 401 for h in b.csms.handshakes)
        assert b.app.adapter.connection_count == 0
        refusals = [
            r for r in caplog.records if "refused this charger's credentials" in r.getMessage()
        ]
        assert len(refusals) >= 2
        loud = [r.levelname for r in refusals if r.levelno >= logging.WARNING]
        assert loud == ["ERROR"], "logged once, not per attempt"
        assert PASSWORD not in caplog.text
        # FailedToAuthenticateAtCentralSystem is logged, not sent (§8: not critical).
        assert security_log(b).count("FailedToAuthenticateAtCentralSystem") == 1

        b.csms.basic_auth = {CP: PASSWORD}  # the CSMS learns the right password
        await b.csms.wait_connected()
        await b.booted()
        assert "FailedToAuthenticateAtCentralSystem" not in b.app.adapter.security.pending_events


@pytest.mark.parametrize("tls_version", ["TLSv1.3", "TLSv1.2"])
async def test_TC_086_tls_with_server_certificate(
    tmp_path: Path, tls: Pki, tls_version: str
) -> None:
    async with secure_bench(tmp_path, tls, 2) as b:
        if tls_version == "TLSv1.2":
            connections = b.csms.connections
            await b.csms.stop()
            b.csms.ssl_context = pki.server_context(
                tls.server, maximum_version=ssl.TLSVersion.TLSv1_2
            )
            await b.csms.start()
            await b.csms.wait_connected(after=connections)
        await b.booted()
        handshake = accepted(b)[-1]
        assert (handshake.user, handshake.password) == (CP, PASSWORD)  # TLS + Basic auth
        assert handshake.tls_version == tls_version
        if tls_version == "TLSv1.2":
            # A00.FR.318: one of the white paper's suites.
            assert handshake.cipher in TLS12_CIPHERS.split(":")
        assert handshake.client_certificate is None
        assert await get_key(b, "SecurityProfile") == "2"


@pytest.mark.parametrize("problem", ["untrusted CA", "wrong host name", "expired"])
async def test_TC_078_invalid_central_system_certificate(
    tmp_path: Path, tls: Pki, problem: str
) -> None:
    """A00.FR.309/310: an invalid CSMS certificate ends the connection attempt and triggers
    InvalidCentralSystemCertificate, which the CSMS receives once the charger can connect."""
    if problem == "untrusted CA":
        bad = pki.make_leaf(pki.make_ca("Some Other Root"), "localhost", dns_names=["localhost"])
    elif problem == "wrong host name":
        bad = pki.make_leaf(tls.root, "csms.example", dns_names=["csms.example"])
    else:
        past = datetime.now(UTC) - timedelta(days=30)
        bad = pki.make_leaf(
            tls.root,
            "localhost",
            dns_names=["localhost"],
            not_before=past,
            not_after=past + timedelta(days=1),
        )
    timing = {"reconnect_min_s": 0.01, "reconnect_max_s": 0.5}
    good_server = tls.server
    tls.server = bad
    async with secure_bench(tmp_path, tls, 2, extra_ocpp=timing) as b:
        adapter = b.app.adapter
        await b.wait_until(lambda: adapter.connection_attempts >= 2, what="two attempts")
        assert b.csms.handshakes == []  # the charger never got as far as HTTP
        first = adapter.connection_attempts
        window_s = 1.0
        await asyncio.sleep(window_s)
        # Not retried in a tight loop: each attempt waits reconnect_max_s.
        assert adapter.connection_attempts - first <= window_s / timing["reconnect_max_s"] + 1
        assert security_log(b).count("InvalidCentralSystemCertificate") == 1
        assert adapter.security.pending_events.count("InvalidCentralSystemCertificate") == 1

        await b.csms.stop()
        b.csms.ssl_context = pki.server_context(good_server)
        await b.csms.start()
        event = await b.csms.wait_for(
            "SecurityEventNotification",
            lambda p: p["type"] == "InvalidCentralSystemCertificate",
            timeout_s=15,
        )
        assert event.payload["techInfo"]
        sent = [m.payload["type"] for m in b.csms.messages("SecurityEventNotification")]
        assert sent == ["StartupOfTheDevice", "InvalidCentralSystemCertificate"]


async def test_TC_087_tls_with_client_side_certificate(tmp_path: Path, tls: Pki) -> None:
    async with secure_bench(tmp_path, tls, 3) as b:
        await b.booted()
        handshake = accepted(b)[-1]
        # A00.FR.401/402: the charge point certificate as TLS client certificate, no Basic.
        assert handshake.client_certificate == der(tls.client)
        assert handshake.user is None
        assert handshake.tls_version in ("TLSv1.2", "TLSv1.3")
        assert await get_key(b, "SecurityProfile") == "3"


# --- TC_073: a new AuthorizationKey ----------------------------------------------------------


async def test_TC_073_update_basic_auth_password(
    tmp_path: Path, tls: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    new_password = "fedcba9876543210FEDCBA98"
    async with secure_bench(tmp_path, tls, 2) as b:
        await b.booted()
        connections = b.csms.connections
        # Too short: Rejected, and the charger stays where it is.
        short = await b.csms.call(call.ChangeConfiguration(key="AuthorizationKey", value="short"))
        assert short.status == "Rejected"
        # A01.FR.03: after Accepted the CSMS takes only the new password.
        b.csms.basic_auth = {CP: new_password}
        result = await b.csms.call(
            call.ChangeConfiguration(key="AuthorizationKey", value=new_password)
        )
        assert result.status == "Accepted"
        # A01 steps 3-4: disconnect, connect with the new password.
        await b.csms.wait_connected(after=connections)
        assert accepted(b)[-1].password == new_password
        assert [h.status for h in b.csms.handshakes] == [101, 101]
        assert len(b.csms.messages("BootNotification")) == 1  # a reconnect, not a reboot

        # Write-only: never read back (GetConfiguration lists it neither by name nor in all).
        got = await b.csms.call(call.GetConfiguration(key=["AuthorizationKey"]))
        assert got.unknown_key == ["AuthorizationKey"] and not got.configuration_key
        everything = await b.csms.call(call.GetConfiguration())
        assert all(e["key"] != "AuthorizationKey" for e in everything.configuration_key)

        # Stored 0600 in its own file, not in the state database, and never logged.
        secret = b.directory / "state" / "secrets" / "AuthorizationKey"
        assert secret.read_text() == new_password
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        assert stat.S_IMODE(secret.parent.stat().st_mode) == 0o700
        for database in (b.directory / "state").glob("evse.sqlite3*"):
            assert new_password.encode() not in database.read_bytes()
        assert new_password not in caplog.text
        # A01.FR.11: the change is in the security log (its value is not: A01.FR.12).
        log_text = security_log(b)
        assert "ReconfigurationOfSecurityParameters AuthorizationKey changed" in log_text
        assert new_password not in log_text

        # The CSMS's key survives a restart (and wins over the config file's).
        connections = b.csms.connections
        await b.restart_app()
        await b.csms.wait_connected(after=connections)
        assert accepted(b)[-1].password == new_password


# --- TC_083 / TC_084: raising and lowering the profile --------------------------------------


async def test_TC_083_upgrade_security_profile(tmp_path: Path, tls: Pki) -> None:
    async with secure_bench(tmp_path, tls, 2, client_files=True) as b:
        await b.booted()
        connections = b.csms.connections
        # The CSMS now wants profile 3 from this charger: client certificate, no Basic.
        b.csms.basic_auth = None
        b.csms.require_client_certificate = True
        result = await b.csms.call(call.ChangeConfiguration(key="SecurityProfile", value="3"))
        assert result.status == "Accepted"
        await b.csms.wait_connected(after=connections)
        handshake = accepted(b)[-1]
        assert handshake.client_certificate == der(tls.client)
        assert handshake.user is None
        assert await get_key(b, "SecurityProfile") == "3"
        assert "SecurityProfile raised from 2 to 3" in security_log(b)
        # It holds across a restart: the new profile proved itself, so it was stored.
        connections = b.csms.connections
        await b.restart_app()
        await b.csms.wait_connected(after=connections)
        assert accepted(b)[-1].client_certificate == der(tls.client)
        assert b.app.adapter.security.profile == 3


async def test_a_technician_lowers_the_profile_in_the_config_file(tmp_path: Path, tls: Pki) -> None:
    # A00.FR.005: lowering is not for OCPP but for "another method": the config file. The
    # CSMS's raise holds until security_profile is changed there.
    async with secure_bench(tmp_path, tls, 2, client_files=True) as b:
        await b.booted()
        b.csms.basic_auth, b.csms.require_client_certificate = None, True
        connections = b.csms.connections
        result = await b.csms.call(call.ChangeConfiguration(key="SecurityProfile", value="3"))
        assert result.status == "Accepted"
        await b.csms.wait_connected(after=connections)
        # The technician puts profile 1 (Basic auth, here over TLS anyway) in the file.
        b.csms.basic_auth, b.csms.require_client_certificate = {CP: PASSWORD}, False
        settings = {
            "security_profile": 1,
            "basic_auth_password": PASSWORD,
            "ca_file": str(tls.ca_file),
        }
        b.config = load_config(write_config(tmp_path, b.csms.url, extra_ocpp=settings))
        connections = b.csms.connections
        await b.restart_app()
        await b.csms.wait_connected(after=connections)
        handshake = accepted(b)[-1]
        assert (handshake.user, handshake.client_certificate) == (CP, None)
        assert handshake.tls_version is not None
        assert await get_key(b, "SecurityProfile") == "1"
        # ... and it stays so across a restart with that file.
        connections = b.csms.connections
        await b.restart_app()
        await b.csms.wait_connected(after=connections)
        assert accepted(b)[-1].user == CP


async def test_TC_083_upgrade_falls_back_when_the_new_profile_cannot_connect(
    tmp_path: Path, tls: Pki
) -> None:
    # Profile 1 on ws://; profile 2 means wss:// at the same address, where this CSMS has no
    # TLS: every attempt fails, and after a few the charger goes back to profile 1 (A05.FR.08).
    async with secure_bench(tmp_path, tls, 1, extra_ocpp={"ca_file": str(tls.ca_file)}) as b:
        await b.booted()
        connections = b.csms.connections
        result = await b.csms.call(call.ChangeConfiguration(key="SecurityProfile", value="2"))
        assert result.status == "Accepted"
        await b.csms.wait_connected(after=connections, timeout_s=20)
        handshake = accepted(b)[-1]
        assert (handshake.user, handshake.tls_version) == (CP, None)
        assert await get_key(b, "SecurityProfile") == "1"
        assert b.app.adapter.connection_attempts >= 1 + 3


async def test_TC_083_upgrade_refused_by_the_csms_falls_back_at_once(
    tmp_path: Path, tls: Pki
) -> None:
    # The CSMS still expects profile 2 (Basic auth): the profile 3 attempt gets HTTP 401,
    # which retrying cannot mend, so the fall back is immediate.
    async with secure_bench(tmp_path, tls, 2, client_files=True) as b:
        await b.booted()
        connections = b.csms.connections
        result = await b.csms.call(call.ChangeConfiguration(key="SecurityProfile", value="3"))
        assert result.status == "Accepted"
        await b.csms.wait_connected(after=connections, timeout_s=20)
        assert [h.status for h in b.csms.handshakes] == [101, 401, 101]
        assert accepted(b)[-1].user == CP
        assert await get_key(b, "SecurityProfile") == "2"


async def test_raising_the_profile_needs_its_prerequisites(tmp_path: Path, tls: Pki) -> None:
    """A05.FR.02-04: Rejected while what the new profile needs is missing."""

    async def raise_to(b: Bench, profile: int) -> str:
        change = call.ChangeConfiguration(key="SecurityProfile", value=str(profile))
        return str((await b.csms.call(change)).status)

    async with bench(tmp_path, ocpp_config={"CpoName": CPO}) as b:
        await b.booted()
        assert await raise_to(b, 1) == "Rejected"  # no AuthorizationKey
        key = call.ChangeConfiguration(key="AuthorizationKey", value=PASSWORD)
        assert (await b.csms.call(key)).status == "Accepted"  # profile 0: no reconnect
        assert await raise_to(b, 2) == "Rejected"  # no CentralSystemRootCertificate
        install = call.InstallCertificate(
            certificate_type="CentralSystemRootCertificate", certificate=tls.root.cert_pem()
        )
        assert (await b.csms.call(install)).status == "Accepted"
        assert await raise_to(b, 3) == "Rejected"  # no charge point certificate
        assert await get_key(b, "SecurityProfile") == "0"
        assert b.csms.connections == 1


async def test_TC_084_downgrade_security_profile_rejected(tmp_path: Path, tls: Pki) -> None:
    async with secure_bench(tmp_path, tls, 2) as b:
        await b.booted()
        for lower in ("1", "0", "2"):  # lower, and the same (A05.FR.01)
            result = await b.csms.call(call.ChangeConfiguration(key="SecurityProfile", value=lower))
            assert result.status == "Rejected", lower
        await b.barrier()
        assert b.csms.connections == 1  # no reconnect (A05.FR.01)
        assert await get_key(b, "SecurityProfile") == "2"
        assert accepted(b)[-1].tls_version is not None


# --- TC_075 / TC_076: root certificates ------------------------------------------------------


def _expected_hash_data(cert: x509.Certificate) -> dict[str, str]:
    """CertificateHashDataType of a self-signed EC root, computed here independently."""
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    point = key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    # snake_case: the ocpp library's form on both sides (camelCase on the wire, which the
    # CSMS's schema validation of the reply checks).
    return {
        "hash_algorithm": "SHA256",
        "issuer_name_hash": hashlib.sha256(cert.issuer.public_bytes()).hexdigest(),
        "issuer_key_hash": hashlib.sha256(point).hexdigest(),
        "serial_number": format(cert.serial_number, "x"),
    }


@pytest.mark.parametrize(
    "use", ["ManufacturerRootCertificate", "CentralSystemRootCertificate"], ids=["1", "2"]
)
async def test_TC_075_install_root_certificate(tmp_path: Path, use: str) -> None:
    root = pki.make_ca("Installed Root")
    other = (
        "CentralSystemRootCertificate"
        if use == "ManufacturerRootCertificate"
        else ("ManufacturerRootCertificate")
    )
    async with bench(tmp_path) as b:
        await b.booted()
        found = await b.csms.call(call.GetInstalledCertificateIds(certificate_type=use))
        assert found.status == "NotFound"
        install = call.InstallCertificate(certificate_type=use, certificate=root.cert_pem())
        assert (await b.csms.call(install)).status == "Accepted"
        assert (await b.csms.call(install)).status == "Accepted"  # again: still one
        # The shared layout: one PEM per certificate, named by the SHA-256 of its DER.
        stored = (
            b.directory / "state" / "certs" / use / f"{hashlib.sha256(der(root)).hexdigest()}.pem"
        )
        assert x509.load_pem_x509_certificate(stored.read_bytes()) == root.cert
        found = await b.csms.call(call.GetInstalledCertificateIds(certificate_type=use))
        assert found.status == "Accepted"
        assert found.certificate_hash_data == [_expected_hash_data(root.cert)]
        elsewhere = await b.csms.call(call.GetInstalledCertificateIds(certificate_type=other))
        assert elsewhere.status == "NotFound"
        # M05.FR.06: what is not a valid CA certificate is Rejected.
        past = datetime.now(UTC) - timedelta(days=30)
        invalid = {
            "not PEM": "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
            "not a CA": pki.make_leaf(root, "leaf").cert_pem(),
            "expired": pki.make_ca(
                "Old Root", not_before=past, not_after=past + timedelta(days=1)
            ).cert_pem(),
            "two certificates": root.cert_pem() + pki.make_ca("Second").cert_pem(),
        }
        for why, pem in invalid.items():
            refused = await b.csms.call(
                call.InstallCertificate(certificate_type=use, certificate=pem)
            )
            assert refused.status == "Rejected", why
        assert "ReconfigurationOfSecurityParameters" in security_log(b)


async def test_TC_076_delete_a_specific_certificate(tmp_path: Path) -> None:
    first, second = pki.make_ca("First Root"), pki.make_ca("Second Root")
    use = "ManufacturerRootCertificate"
    async with bench(tmp_path) as b:
        await b.booted()
        for root in (first, second):
            install = call.InstallCertificate(certificate_type=use, certificate=root.cert_pem())
            assert (await b.csms.call(install)).status == "Accepted"
        listed = await b.csms.call(call.GetInstalledCertificateIds(certificate_type=use))
        assert len(listed.certificate_hash_data) == 2
        target = _expected_hash_data(first.cert)
        delete = call.DeleteCertificate(certificate_hash_data=target)
        assert (await b.csms.call(delete)).status == "Accepted"
        listed = await b.csms.call(call.GetInstalledCertificateIds(certificate_type=use))
        assert listed.certificate_hash_data == [_expected_hash_data(second.cert)]
        assert (await b.csms.call(delete)).status == "NotFound"
        # A CSMS spelling the hex in upper case (and the serial with the leading zeros that
        # fit in its 40 characters) still finds it.
        spelled = dict(_expected_hash_data(second.cert))
        spelled["serial_number"] = spelled["serial_number"].upper().rjust(40, "0")
        spelled["issuer_key_hash"] = spelled["issuer_key_hash"].upper()
        deleted = await b.csms.call(call.DeleteCertificate(certificate_hash_data=spelled))
        assert deleted.status == "Accepted"
        found = await b.csms.call(call.GetInstalledCertificateIds(certificate_type=use))
        assert found.status == "NotFound"


async def test_TC_076_the_root_verifying_the_connection_cannot_be_deleted(
    tmp_path: Path, tls: Pki
) -> None:
    # Profile 2 trusting only the installed CentralSystemRootCertificate (no ca_file).
    installed = tmp_path / "state" / "certs" / "CentralSystemRootCertificate"
    installed.mkdir(parents=True)
    (installed / f"{hashlib.sha256(der(tls.root)).hexdigest()}.pem").write_text(tls.root.cert_pem())
    async with secure_bench(tmp_path, tls, 2, ca_file=False) as b:
        await b.booted()
        delete = call.DeleteCertificate(certificate_hash_data=_expected_hash_data(tls.root.cert))
        assert (await b.csms.call(delete)).status == "Failed"  # M04.FR.06
        spare = pki.make_ca("Spare Root")
        install = call.InstallCertificate(
            certificate_type="CentralSystemRootCertificate", certificate=spare.cert_pem()
        )
        assert (await b.csms.call(install)).status == "Accepted"
        other = call.DeleteCertificate(certificate_hash_data=_expected_hash_data(spare.cert))
        assert (await b.csms.call(other)).status == "Accepted"


# --- TC_074 / TC_077: the charge point certificate -------------------------------------------


async def _signing_request(b: Bench) -> x509.CertificateSigningRequest:
    mark = b.csms.mark()
    trigger = call.ExtendedTriggerMessage(requested_message="SignChargePointCertificate")
    assert (await b.csms.call(trigger)).status == "Accepted"
    request = await b.csms.wait_for("SignCertificate", after=mark)
    return x509.load_pem_x509_csr(request.payload["csr"].encode())


async def test_TC_074_update_charge_point_certificate(tmp_path: Path, tls: Pki) -> None:
    async with secure_bench(tmp_path, tls, 3, ocpp_config={"CpoName": CPO}) as b:
        await b.booted()
        assert accepted(b)[-1].client_certificate == der(tls.client)
        csr = await _signing_request(b)
        # A02.FR.02/03/13: a new key on the charger; CN its identity, O the CpoName.
        assert csr.is_signature_valid
        assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == CP
        assert csr.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == CPO
        assert csr.public_key() != tls.client.cert.public_key()
        signed = pki.sign_csr(tls.root, csr.public_bytes(serialization.Encoding.PEM).decode())
        connections = b.csms.connections
        result = await b.csms.call(call.CertificateSigned(certificate_chain=signed.chain_pem()))
        assert result.status == "Accepted"
        # A02.FR.08: in use at once; TLS presents it on the next connection.
        await b.csms.wait_connected(after=connections)
        assert accepted(b)[-1].client_certificate == der(signed)
        # The key never left the charger and is readable by its owner only.
        own = b.directory / "state" / "certs" / "ChargePointCertificate"
        name = hashlib.sha256(der(signed)).hexdigest()
        assert stat.S_IMODE((own / f"{name}.key").stat().st_mode) == 0o600
        assert stat.S_IMODE(own.stat().st_mode) == 0o700
        assert (own / f"{name}.pem").exists()
        assert not (own / "pending.key").exists()


async def test_TC_077_invalid_charge_point_certificate_security_event(
    tmp_path: Path, tls: Pki
) -> None:
    async with bench(tmp_path, ocpp_config={"CpoName": CPO}) as b:
        await b.booted()
        install = call.InstallCertificate(
            certificate_type="CentralSystemRootCertificate", certificate=tls.root.cert_pem()
        )
        assert (await b.csms.call(install)).status == "Accepted"
        csr = await _signing_request(b)
        csr_pem = csr.public_bytes(serialization.Encoding.PEM).decode()
        impostor = pki.make_ca("Not The CPO")
        invalid = {
            "untrusted issuer": pki.sign_csr(impostor, csr_pem).chain_pem(),
            "another key": pki.make_leaf(tls.root, CP, client=True).cert_pem(),
            "not yet a certificate": "garbage",
        }
        for why, chain in invalid.items():
            mark = b.csms.mark()
            result = await b.csms.call(call.CertificateSigned(certificate_chain=chain))
            assert result.status == "Rejected", why
            # A02.FR.07: discarded, and InvalidChargePointCertificate.
            event = await b.csms.wait_for("SecurityEventNotification", after=mark)
            assert event.payload["type"] == "InvalidChargePointCertificate", why
        own = b.directory / "state" / "certs" / "ChargePointCertificate"
        assert list(own.glob("*.pem")) == []
        # The right one is still welcome afterwards.
        good = pki.sign_csr(tls.root, csr_pem).chain_pem()
        result = await b.csms.call(call.CertificateSigned(certificate_chain=good))
        assert result.status == "Accepted"


async def test_sign_certificate_needs_a_cpo_name(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        await b.booted()
        trigger = call.ExtendedTriggerMessage(requested_message="SignChargePointCertificate")
        assert (await b.csms.call(trigger)).status == "Rejected"  # A02 prerequisite


# --- TC_079: the security log ---------------------------------------------------------------


@contextlib.contextmanager
def upload_server(status: int = 201) -> Iterator[tuple[str, dict[str, bytes]]]:
    """An HTTP server on loopback that takes PUTs: (base URL, path → body received)."""
    received: dict[str, bytes] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            if status < 300:
                received[self.path] = body
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()


async def test_TC_079_get_security_log(tmp_path: Path) -> None:
    with upload_server() as (base, received):
        async with bench(tmp_path) as b:
            await b.booted()
            mark = b.csms.mark()
            result = await b.csms.call(
                call.GetLog(
                    log_type="SecurityLog", request_id=7, log={"remote_location": f"{base}/logs/"}
                )
            )
            assert result.status == "Accepted"
            assert result.filename.startswith(f"{CP}-SecurityLog-")
            uploading = await b.csms.wait_for("LogStatusNotification", after=mark)
            assert uploading.payload == {"status": "Uploading", "requestId": 7}
            done = await b.csms.wait_for(
                "LogStatusNotification", lambda p: p["status"] != "Uploading", after=mark
            )
            assert done.payload == {"status": "Uploaded", "requestId": 7}  # N01.FR.07/09
            body = received[f"/logs/{result.filename}"].decode()
            assert "StartupOfTheDevice" in body
            # N01.FR.12: triggered with no upload going on, Idle and no requestId.
            mark = b.csms.mark()
            trigger = call.ExtendedTriggerMessage(requested_message="LogStatusNotification")
            assert (await b.csms.call(trigger)).status == "Accepted"
            idle = await b.csms.wait_for("LogStatusNotification", after=mark)
            assert idle.payload == {"status": "Idle"}
            # The diagnostics log is GetDiagnostics'; an FTP location is not supported here.
            for log_type, location in (("DiagnosticsLog", base), ("SecurityLog", "ftp://h/")):
                refused = await b.csms.call(
                    call.GetLog(log_type=log_type, request_id=8, log={"remote_location": location})
                )
                assert refused.status == "Rejected"


async def test_TC_079_upload_refused_by_the_server(tmp_path: Path) -> None:
    with upload_server(status=403) as (base, _):
        async with bench(tmp_path) as b:
            await b.booted()
            mark = b.csms.mark()
            result = await b.csms.call(
                call.GetLog(
                    log_type="SecurityLog", request_id=9, retries=0, log={"remote_location": base}
                )
            )
            assert result.status == "Accepted"
            done = await b.csms.wait_for(
                "LogStatusNotification", lambda p: p["status"] != "Uploading", after=mark
            )
            assert done.payload == {"status": "PermissionDenied", "requestId": 9}


# --- security events and ExtendedTriggerMessage ----------------------------------------------


async def test_security_events_are_kept_across_a_restart_while_offline(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        await b.booted()
        startup = await b.csms.wait_for(
            "SecurityEventNotification", lambda p: p["type"] == "StartupOfTheDevice"
        )
        assert startup.payload["timestamp"].endswith("Z")
        await b.go_offline()
        # The firmware engineer's hook, and any other critical event: queued on the card.
        await b.app.adapter.security_event("TamperDetectionActivated", "lid opened")
        await b.app.adapter.security_event("InvalidMessages", "not sent: logged only")
        await b.restart_app()
        mark = await b.go_online()
        tamper = await b.csms.wait_for(
            "SecurityEventNotification",
            lambda p: p["type"] == "TamperDetectionActivated",
            after=mark,
        )
        assert tamper.payload["techInfo"] == "lid opened"
        await b.csms.wait_for(
            "SecurityEventNotification", lambda p: p["type"] == "StartupOfTheDevice", after=mark
        )
        await b.barrier()
        types = [m.payload["type"] for m in b.csms.messages("SecurityEventNotification")]
        assert "InvalidMessages" not in types
        assert "InvalidMessages not sent: logged only" in security_log(b)


async def test_a_security_event_the_csms_fails_is_sent_again(tmp_path: Path) -> None:
    # A04.FR.02: guaranteed delivery. The first try gets a CALLERROR; the event stays queued
    # and goes again after TransactionMessageRetryInterval.
    async with bench(tmp_path, ocpp_config={"TransactionMessageRetryInterval": 1}) as b:
        b.csms.call_errors["SecurityEventNotification"] = 1
        await b.booted()
        failed = await b.csms.wait_for("SecurityEventNotification", include_rejected=True)
        assert failed.error == "InternalError"
        again = await b.csms.wait_for("SecurityEventNotification", timeout_s=10)
        assert again.payload == failed.payload
        security = b.app.adapter.security
        await b.wait_until(lambda: not security.pending_events, what="the queue emptied")


async def test_events_from_before_the_time_was_known_carry_the_true_time(tmp_path: Path) -> None:
    # A board without an RTC boots years off: StartupOfTheDevice is stamped then, and sent
    # (corrected) once the CSMS has told the time, which is itself SettingSystemTime.
    booted_at = datetime.now(UTC)
    async with bench(tmp_path, clock_factory=stale_clock) as b:
        startup = await b.csms.wait_for(
            "SecurityEventNotification", lambda p: p["type"] == "StartupOfTheDevice"
        )
        stamp = datetime.fromisoformat(startup.payload["timestamp"].replace("Z", "+00:00"))
        assert booted_at - SLACK <= stamp <= datetime.now(UTC) + SLACK
        clock_set = await b.csms.wait_for(
            "SecurityEventNotification", lambda p: p["type"] == "SettingSystemTime"
        )
        moved_s = float(clock_set.payload["techInfo"].split()[3])
        assert abs(moved_s - STALE.total_seconds()) < SLACK.total_seconds()


async def test_reset_is_a_security_event(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        await b.booted()
        mark = b.csms.mark()
        assert (await b.csms.call(call.Reset(type="Soft"))).status == "Accepted"
        await b.follow_reset()
        event = await b.csms.wait_for(
            "SecurityEventNotification", lambda p: p["type"] == "ResetOrReboot", after=mark
        )
        assert event.payload["techInfo"] == "Soft reset by the CSMS"


async def test_extended_trigger_message(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        await b.booted()
        for requested, answer in (
            ("Heartbeat", "Heartbeat"),
            ("FirmwareStatusNotification", "SignedFirmwareStatusNotification"),
            ("StatusNotification", "StatusNotification"),
        ):
            mark = b.csms.mark()
            result = await b.csms.call(
                call.ExtendedTriggerMessage(requested_message=requested, connector_id=1)
            )
            assert result.status == "Accepted", requested
            message = await b.csms.wait_for(answer, after=mark)
            if answer == "SignedFirmwareStatusNotification":
                assert message.payload == {"status": "Idle"}  # L01.FR.28/29: no update
        unknown = call.ExtendedTriggerMessage(requested_message="MeterValues", connector_id=9)
        assert (await b.csms.call(unknown)).status == "Rejected"
