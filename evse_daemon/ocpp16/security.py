"""OCPP 1.6 security: the OCA white paper "Improved security for OCPP 1.6-J", edition 2 [SEC].

- Security profiles (§2): what a connection attempt sends (Basic credentials, TLS with the
  CSMS's certificate checked, a client certificate), what its failures mean, raising the
  profile over OCPP with a fall back to the old one (A05), a new AuthorizationKey (A01).
- Security events (§3, §8): every event goes to the security log; the critical ones, and those
  whose own requirement says to send them, are queued (in the store, so a power cut loses
  none) and sent as SecurityEventNotification.req when the link is up.
- The security extension's CSMS requests: InstallCertificate, DeleteCertificate,
  GetInstalledCertificateIds (M03-M05), ExtendedTriggerMessage and the certificate update
  it can start (SignCertificate → CertificateSigned, A02), GetLog of the SecurityLog (N01).

``SecurityManager`` does the work, ``SecurityHandlers`` routes the CSMS's requests to it (the
adapter's link inherits it). Certificate files, key generation and uploads run in worker
threads: nothing here blocks the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import ssl
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from ocpp.exceptions import OCPPError
from ocpp.routing import after, on
from ocpp.v16 import call, call_result
from ocpp.v16.enums import Action
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from ..certs import (
    CertificateError,
    CertificateHashData,
    CertificateStore,
    CertificateUse,
    ClientCredentials,
    DeleteOutcome,
    InstallOutcome,
    certs_dir,
    load_pem_certificates,
    sha256_name,
)
from ..clock import ClockStamp, correction, iso_utc, stamp
from ..files import write_atomically
from ..ocpp_keys import ChangeResult
from ..security_log import SecurityLog
from ..upload import SUPPORTED_SCHEMES, UploadStatus, put_file, target_url

if TYPE_CHECKING:
    from ..store import Store
    from .adapter import OcppAdapter16, _Link

log = logging.getLogger(__name__)

__all__ = (
    "CRITICAL_EVENTS",
    "SECURITY_KEYS",
    "TLS12_CIPHERS",
    "ConnectPlan",
    "HandshakeFailed",
    "ReconnectRequested",
    "SecurityHandlers",
    "SecurityManager",
    "redacted",
)

# §8: the events that are pushed to the CSMS (A04.FR.01).
CRITICAL_EVENTS = frozenset(
    {
        "FirmwareUpdated",
        "SettingSystemTime",
        "StartupOfTheDevice",
        "ResetOrReboot",
        "SecurityLogWasCleared",
        "MemoryExhaustion",
        "TamperDetectionActivated",
    }
)
# Not critical in §8, but their own requirements send them: L01.FR.02/03 ("SHALL send a
# SecurityEventNotification.req"), A00.FR.318 (cipher suites, "send to the Central System"),
# and the certificate checks whose notification the OCA test tool waits for (TC_077, TC_078).
_ALSO_SENT = frozenset(
    {
        "InvalidFirmwareSignature",
        "InvalidFirmwareSigningCertificate",
        "InvalidCentralSystemCertificate",
        "InvalidChargePointCertificate",
        "InvalidTLSVersion",
        "InvalidTLSCipherSuite",
    }
)
SENT_EVENTS = CRITICAL_EVENTS | _ALSO_SENT
# Events that are part of normal operation: logged at INFO, the others at WARNING.
_ROUTINE_EVENTS = frozenset(
    {
        "StartupOfTheDevice",
        "ResetOrReboot",
        "FirmwareUpdated",
        "SettingSystemTime",
        "ReconfigurationOfSecurityParameters",
    }
)

# The keys whose change this module decides (and that need more than the registry's rules).
SECURITY_KEYS = frozenset({"SecurityProfile", "AuthorizationKey", "CpoName"})

# A00.FR.318/422: the ECDHE-ECDSA and the RSA pair of AES-GCM suites for TLS 1.2, with
# ECDHE-RSA between them (forward secrecy for a CSMS with an RSA certificate). TLS 1.3 suites
# are all AEAD and are not affected by this list.
TLS12_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "AES128-GCM-SHA256",
        "AES256-GCM-SHA384",
    )
)

# A05.FR.08: a raised profile that cannot connect falls back to the previous one. Failures
# that cannot heal by retrying (refused credentials, an untrusted certificate) fall back at
# once; others (CSMS unreachable) get this many attempts.
PROFILE_TRIAL_ATTEMPTS = 3
# Security events waiting for the CSMS, at most; past it the oldest non-critical goes.
MAX_PENDING_EVENTS = 100
# GetLog without retries/retryInterval: the charge point's choice (N01).
DEFAULT_UPLOAD_RETRIES = 2
DEFAULT_UPLOAD_RETRY_INTERVAL_S = 30
UPLOAD_TIMEOUT_S = 60.0
_STORE_NAMESPACE = "security_events"
_STATE_NAMESPACE = "security"
_SECRET_DIR = "secrets"

# OpenSSL reasons for a TLS handshake the CSMS and this charger could not agree on. Only
# where the alert reaches this side: over asyncio a server's alert often shows as a reset or
# EOF instead (then it is an ordinary connection failure, retried with the backoff).
_TLS_VERSION_REASONS = frozenset(
    {"UNSUPPORTED_PROTOCOL", "TLSV1_ALERT_PROTOCOL_VERSION", "WRONG_SSL_VERSION"}
)
_CIPHER_REASONS = frozenset({"NO_SHARED_CIPHER", "NO_CIPHERS_AVAILABLE", "NO_CIPHER_MATCH"})
# ... and for the CSMS refusing this charger's client certificate.
_CLIENT_CERT_REASONS = frozenset(
    {
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
        "SSLV3_ALERT_CERTIFICATE_EXPIRED",
        "SSLV3_ALERT_CERTIFICATE_REVOKED",
        "TLSV1_ALERT_UNKNOWN_CA",
        "TLSV1_ALERT_ACCESS_DENIED",
    }
)


class HandshakeFailed(Exception):
    """The websocket could not be opened. The failure is logged already; the next attempt
    waits at least ``retry_after_s``."""

    def __init__(self, cause: BaseException, retry_after_s: float) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.retry_after_s = retry_after_s


class ReconnectRequested(Exception):
    """Ends a session on purpose: the next connection uses new credentials or a new profile."""


class SecuritySetupError(Exception):
    """The active profile cannot be used: no password, no client certificate."""


@dataclass(frozen=True, slots=True)
class ConnectPlan:
    """What one connection attempt uses."""

    url: str
    profile: int
    ssl_context: ssl.SSLContext | None
    headers: dict[str, str] | None


@dataclass(frozen=True, slots=True)
class _Event:
    seq: int
    type: str
    timestamp: str
    tech_info: str | None
    # When it happened, if the wall clock was not trusted then (StartupOfTheDevice on a board
    # without an RTC): its timestamp is corrected before it is sent.
    made: ClockStamp | None = None

    def record(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "timestamp": self.timestamp,
            "techInfo": self.tech_info,
            "clock": None if self.made is None else self.made.to_json(),
        }

    @classmethod
    def from_record(cls, seq: int, record: dict[str, Any]) -> _Event:
        made = record.get("clock")
        return cls(
            seq,
            record["type"],
            record["timestamp"],
            record.get("techInfo"),
            None if made is None else ClockStamp.from_json(made),
        )


@dataclass(slots=True)
class _ProfileTrial:
    previous: int
    attempts_left: int


@dataclass(frozen=True, slots=True)
class _UploadJob:
    request_id: int
    url: str
    oldest: datetime | None
    latest: datetime | None
    retries: int
    retry_interval_s: int


def redacted(action: str, payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` fit for narration and logs: an AuthorizationKey's value never leaves the
    charger's memory and its 0600 file (A01.FR.12)."""
    if action == "ChangeConfiguration" and payload.get("key") == "AuthorizationKey":
        return {**payload, "value": "<redacted>"}
    return payload


def _basic_credentials(user: str, password: str) -> str:
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


def _ssl_error(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error behind a failed handshake, also where websockets wrapped it (a refused
    client certificate shows up while the HTTP response is read, in TLS 1.3)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _describe(exc: BaseException) -> str:
    """An exception for a log line; some (a reset connection) have no message of their own."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _write_secret(path: Path, value: str) -> None:
    """The AuthorizationKey on the card: 0600 in a 0700 directory (A01.FR.10)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomically(path, value.encode("utf-8"), mode=0o600)


def _read_secret(path: Path) -> str | None:
    try:
        return path.read_text("utf-8")
    except FileNotFoundError:
        return None


def _verified_chain(ssl_object: Any) -> list[bytes]:
    """The DER certificates of the CSMS's verified chain, leaf first. Python 3.13 has this
    public; 3.11 has it on the private object; else only the leaf is known."""
    getter = getattr(ssl_object, "get_verified_chain", None)
    if getter is None:
        getter = getattr(getattr(ssl_object, "_sslobj", None), "get_verified_chain", None)
    if getter is not None:
        try:
            chain = getter()
        except (ssl.SSLError, ValueError):
            chain = None
        if chain:
            # 3.13 gives DER bytes; 3.11's private objects give PEM by default.
            return [
                c if isinstance(c, bytes) else ssl.PEM_cert_to_DER_cert(c.public_bytes())
                for c in chain
            ]
    leaf = ssl_object.getpeercert(binary_form=True)
    return [leaf] if leaf else []


class SecurityManager:
    """The security state of one adapter: profile, credentials, certificates, events."""

    def __init__(self, adapter: OcppAdapter16, state_dir: Path | None) -> None:
        self._adapter = adapter
        self.certs: CertificateStore | None = None
        self.security_log: SecurityLog | None = None
        self._secret_path: Path | None = None
        if state_dir is not None:
            self.certs = CertificateStore(
                certs_dir(state_dir),
                max_roots=adapter.keys.get_int("CertificateStoreMaxLength"),
            )
            self.security_log = SecurityLog(state_dir / "security.log")
            self._secret_path = state_dir / _SECRET_DIR / "AuthorizationKey"
        self._events: deque[_Event] = deque()
        self._events_changed = asyncio.Event()
        self._next_seq = 1
        self._log_lock = asyncio.Lock()
        self._trial: _ProfileTrial | None = None
        self._failure_kind: str | None = None
        self._root_in_use: str | None = None
        self._tls_connected = False
        # Set while a CSMS request is handled; acted on after its answer is sent.
        self._reconnect_reason: str | None = None
        self._pending_upload: _UploadJob | None = None
        self._uploads: asyncio.Queue[_UploadJob] = asyncio.Queue()
        self._upload_task: asyncio.Task[None] | None = None
        self._upload_status: tuple[str, int] | None = None
        #: Set by the firmware update code: sends SignedFirmwareStatusNotification with the
        #: last status when an ExtendedTriggerMessage asks (L01.FR.28/29). Without it, no
        #: signed update can be running, and the answer is Idle.
        self.firmware_status_trigger: Callable[[], Coroutine[Any, Any, None]] | None = None

    # --- start-up -----------------------------------------------------------------------

    async def load(self) -> None:
        """The AuthorizationKey the CSMS set (it wins over the config file, like every key
        the CSMS changed), and the security events still to be sent."""
        adapter = self._adapter
        if self._secret_path is not None:
            secret = await asyncio.to_thread(_read_secret, self._secret_path)
            if secret is not None and adapter.keys.load({"AuthorizationKey": secret}):
                log.error("the stored AuthorizationKey is not a valid one; the config file's holds")
        store = adapter._store
        if store is not None:
            await self._profile_from_the_file(store)
            stored = await store.get_all(_STORE_NAMESPACE)
            for key in sorted(stored):
                self._events.append(_Event.from_record(int(key), stored[key]))
            if self._events:
                self._next_seq = self._events[-1].seq + 1
                self._events_changed.set()
        await self.event("StartupOfTheDevice")

    async def _profile_from_the_file(self, store: Store) -> None:
        """A profile the CSMS raised holds across restarts, until a technician changes
        ocpp.security_profile in the config file: lowering is for "another method than OCPP"
        (A00.FR.005), and editing the file on the charger is one."""
        adapter = self._adapter
        in_file = adapter.section.security_profile
        recorded = (await store.get_all(_STATE_NAMESPACE)).get("file_profile")
        if self.profile == in_file:
            return
        if recorded is None or recorded == in_file:
            log.info(
                "security profile %d, raised by the CSMS (ocpp.security_profile = %d)",
                self.profile,
                in_file,
            )
            return
        log.warning(
            "ocpp.security_profile changed to %d in the config file: it replaces profile %d "
            "the CSMS had set",
            in_file,
            self.profile,
        )
        adapter.keys.load({"SecurityProfile": str(in_file)})
        if adapter._persist_key is not None:
            await adapter._persist_key("SecurityProfile", str(in_file))
        await store.delete(_STATE_NAMESPACE, "file_profile")
        await self.event(
            "ReconfigurationOfSecurityParameters", f"SecurityProfile {in_file} from the config file"
        )

    async def run(self) -> None:
        """Runs log uploads one at a time, for as long as the adapter runs. A new GetLog
        cancels the upload in progress (N01.FR.11)."""
        while True:
            job = await self._uploads.get()
            task = asyncio.create_task(self._upload(job))
            self._upload_task = task
            try:
                await asyncio.wait({task})
            finally:
                self._upload_task = None
                if not task.done():  # the adapter stops
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            if not task.cancelled() and task.exception() is not None:
                log.error("security log upload failed", exc_info=task.exception())

    # --- security events -----------------------------------------------------------------

    async def event(self, event_type: str, tech_info: str | None = None) -> None:
        """A security event: into the security log, and queued for the CSMS if it is one
        that is sent (see SENT_EVENTS)."""
        adapter = self._adapter
        tech = tech_info[:255] if tech_info else None
        now = adapter.clock.utc_now()
        pushed = event_type in SENT_EVENTS
        log.log(
            logging.INFO if event_type in _ROUTINE_EVENTS else logging.WARNING,
            "security event %s%s",
            event_type,
            f": {tech}" if tech else "",
        )
        if self.security_log is not None:
            async with self._log_lock:
                try:
                    await asyncio.to_thread(self.security_log.append, now, event_type, tech)
                except OSError as exc:
                    log.error("security log not written: %s", exc)
        if not pushed:
            return
        if event_type not in CRITICAL_EVENTS and any(
            e.type == event_type and e.tech_info == tech for e in self._events
        ):
            return  # the same failure again (a reconnect loop): one notification says it
        made = stamp(adapter.clock, adapter._boot_id)
        entry = _Event(self._next_seq, event_type[:50], iso_utc(now), tech, made)
        self._next_seq += 1
        self._events.append(entry)
        if len(self._events) > MAX_PENDING_EVENTS:
            victim = next((e for e in self._events if e.type not in CRITICAL_EVENTS), None)
            victim = victim or self._events[0]
            self._events.remove(victim)
            await self._unstore(victim)
        store = adapter._store
        if store is not None:
            try:
                await store.put(_STORE_NAMESPACE, f"{entry.seq:012d}", entry.record())
            except (RuntimeError, OSError) as exc:  # closed while shutting down
                log.warning("security event %s kept in memory only: %s", event_type, exc)
        self._events_changed.set()

    async def _unstore(self, entry: _Event) -> None:
        store = self._adapter._store
        if store is not None:
            with contextlib.suppress(RuntimeError, OSError):
                await store.delete(_STORE_NAMESPACE, f"{entry.seq:012d}")

    @property
    def pending_events(self) -> list[str]:
        return [e.type for e in self._events]

    async def send_events(self, link: _Link) -> None:
        """A session task: the queued SecurityEventNotifications, oldest first, each until
        the CSMS has confirmed it (A04.FR.02: guaranteed delivery)."""
        adapter = self._adapter
        while True:
            if not self._events:
                self._events_changed.clear()
                await self._events_changed.wait()
                continue
            entry = self._events[0]
            try:
                await adapter._call(
                    link,
                    call.SecurityEventNotification(
                        type=entry.type, timestamp=self._true_time(entry), tech_info=entry.tech_info
                    ),
                )
            except OCPPError as exc:
                if exc.code in ("NotImplemented", "NotSupported"):
                    # A CSMS without the security extension will never take it: retrying
                    # would repeat the CALLERROR forever. The security log keeps it.
                    log.warning("CSMS does not take SecurityEventNotification (%s)", exc.code)
                else:
                    log.warning("SecurityEventNotification %s failed: %s", entry.type, exc)
                    await asyncio.sleep(self._retry_interval_s())
                    continue
            except TimeoutError:
                log.warning("SecurityEventNotification %s not answered", entry.type)
                await asyncio.sleep(self._retry_interval_s())
                continue
            if self._events and self._events[0] is entry:
                self._events.popleft()
            await self._unstore(entry)

    def _true_time(self, entry: _Event) -> str:
        """The event's timestamp, corrected if it was taken before the time was known and
        the time is known now (as transaction messages are)."""
        adapter = self._adapter
        if entry.made is None:
            return entry.timestamp
        error = correction(adapter.clock, entry.made, adapter._boot_id)
        if error is None:
            return entry.timestamp
        moment = datetime.fromisoformat(entry.timestamp.replace("Z", "+00:00")) + error
        return iso_utc(moment)

    def _retry_interval_s(self) -> int:
        return max(1, self._adapter.keys.get_int("TransactionMessageRetryInterval"))

    async def clock_set(self, step_s: float) -> None:
        """The clock took the CSMS's time (it moved by ``step_s``): SettingSystemTime."""
        await self.event("SettingSystemTime", f"clock moved by {step_s:+.1f} s to the CSMS's time")

    # --- connecting ----------------------------------------------------------------------

    @property
    def profile(self) -> int:
        return self._adapter.keys.get_int("SecurityProfile")

    async def connect_plan(self) -> ConnectPlan:
        """URL, TLS context and headers for a connection with the active profile; raises
        HandshakeFailed (logged) if the profile cannot be used."""
        profile = self.profile
        adapter = self._adapter
        url = adapter._url()
        if profile >= 2 and url.lower().startswith("ws://"):
            # A profile raised over OCPP from an unsecured one: the same endpoint over TLS.
            url = "wss://" + url[len("ws://") :]
        headers = None
        try:
            if profile in (1, 2):
                password = adapter.keys.get("AuthorizationKey")
                if not password:
                    raise SecuritySetupError(
                        f"security profile {profile} needs an AuthorizationKey "
                        "(ocpp.basic_auth_password)"
                    )
                headers = {"Authorization": _basic_credentials(adapter.station.id, password)}
            context = None
            if profile >= 2:
                context = await asyncio.to_thread(self._tls_context, profile)
            elif url.lower().startswith("wss://"):
                # Profiles 0 and 1 over TLS anyway: the server is checked against ca_file or
                # the system's store, as before security profiles (built here, in a thread,
                # rather than by websockets on the event loop).
                context = await asyncio.to_thread(
                    ssl.create_default_context, cafile=adapter.section.ca_file
                )
        except SecuritySetupError as exc:
            raise await self.handshake_failed(exc) from exc
        except (OSError, ssl.SSLError) as exc:
            # A CA file or key gone or unreadable: no use trying to connect.
            problem = SecuritySetupError(f"TLS set-up failed: {_describe(exc)}")
            raise await self.handshake_failed(problem) from exc
        return ConnectPlan(url, profile, context, headers)

    def _tls_context(self, profile: int) -> ssl.SSLContext:
        """A00.FR.307-324, 411-426: TLS 1.2 or later, the whitepaper's suites, no
        compression, the CSMS's certificate checked (chain and host name), and for profile 3
        this charger's certificate."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers(TLS12_CIPHERS)
        context.options |= ssl.OP_NO_COMPRESSION
        # A00.FR.308/412 name the commonName; OpenSSL prefers the subjectAltName and uses
        # the CN when there is none.
        context.hostname_checks_common_name = True
        ca_file = self._adapter.section.ca_file
        installed = self._installed_roots_pem()
        if ca_file:
            context.load_verify_locations(cafile=ca_file)
        if installed:
            context.load_verify_locations(cadata=installed)
        if not ca_file and not installed:
            # The documented default of a config without ca_file: the system's CA store
            # (a CSMS with a certificate from a public CA).
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        if profile == 3:
            credentials = self._client_credentials()
            if credentials is None:
                raise SecuritySetupError(
                    "security profile 3 needs a charge point certificate "
                    "(ocpp.client_cert_file and client_key_file, or one from CertificateSigned)"
                )
            context.load_cert_chain(credentials.cert_file, credentials.key_file)
        return context

    def _installed_roots_pem(self) -> str:
        if self.certs is None:
            return ""
        return "".join(
            path.read_text("ascii", errors="replace")
            for path, _ in self.certs.root_files(CertificateUse.CENTRAL_SYSTEM_ROOT)
        )

    def _configured_roots(self) -> list[x509.Certificate]:
        ca_file = self._adapter.section.ca_file
        if not ca_file:
            return []
        try:
            return load_pem_certificates(Path(ca_file).read_bytes())
        except (OSError, CertificateError):
            return []

    def _trusted_roots(self) -> list[x509.Certificate]:
        """The Charge Point Operator hierarchy's roots: ca_file and the installed ones."""
        installed = self.certs.roots(CertificateUse.CENTRAL_SYSTEM_ROOT) if self.certs else []
        return [*installed, *self._configured_roots()]

    def _client_credentials(self) -> ClientCredentials | None:
        """The newest valid charge point certificate (A02.FR.09): one from CertificateSigned
        or the one the config file names."""
        now = self._adapter.clock.utc_now()
        candidates = self.certs.client_credentials(now) if self.certs else []
        section = self._adapter.section
        if section.client_cert_file and section.client_key_file:
            try:
                leaf = load_pem_certificates(Path(section.client_cert_file).read_bytes())[0]
            except (OSError, CertificateError) as exc:
                log.error("client_cert_file %s unusable: %s", section.client_cert_file, exc)
            else:
                if leaf.not_valid_before_utc <= now < leaf.not_valid_after_utc:
                    candidates.append(
                        ClientCredentials(
                            Path(section.client_cert_file),
                            Path(section.client_key_file),
                            leaf.not_valid_before_utc,
                        )
                    )
        return max(candidates, key=lambda c: c.not_before, default=None)

    async def handshake_failed(self, exc: BaseException) -> HandshakeFailed:
        """Judge a failed connection attempt: log it (once per kind of failure: a reconnect
        loop does not fill the log), raise the security event it is, fall back from a raised
        profile that does not work, and say how long to wait before the next attempt."""
        section = self._adapter.section
        longest_s = section.reconnect_max_s
        kind, message, event, tech = self._classify(exc)
        definitive = event is not None or kind.startswith(("setup", "refused"))
        repeated = kind == self._failure_kind
        self._failure_kind = kind
        if repeated:
            log.debug("%s (again)", message)
        else:
            log.log(logging.ERROR if definitive else logging.WARNING, "%s", message)
        self._after_trial_failure(definitive, message)
        if event is not None and not repeated:
            await self.event(event, tech)
        # Refused credentials or certificates do not heal by retrying soon, and a CSMS may
        # block a station that keeps trying: the longest wait, at once.
        return HandshakeFailed(exc, longest_s if definitive else 0.0)

    def _classify(self, exc: BaseException) -> tuple[str, str, str | None, str | None]:
        """(kind, log message, security event or None, techInfo)."""
        if isinstance(exc, SecuritySetupError):
            return f"setup:{exc}", f"cannot connect: {exc}", None, None
        if isinstance(exc, InvalidStatus):
            code = exc.response.status_code
            if code in (401, 403):
                credential = "charge point certificate" if self.profile == 3 else "AuthorizationKey"
                return (
                    f"refused:{code}",
                    f"CSMS refused this charger's credentials (HTTP {code}): check the "
                    f"{credential} (security profile {self.profile}); retrying every "
                    f"{self._adapter.section.reconnect_max_s:g} s",
                    "FailedToAuthenticateAtCentralSystem",
                    f"HTTP {code}",
                )
            return f"http:{code}", f"CSMS refused the websocket handshake: HTTP {code}", None, None
        tls = _ssl_error(exc)
        if isinstance(tls, ssl.SSLCertVerificationError):
            detail = tls.verify_message or tls.reason or str(tls)
            return (
                f"cert:{detail}",
                f"CSMS certificate rejected: {detail} (trusted: ocpp.ca_file and the installed "
                "CentralSystemRootCertificates); not connecting",
                "InvalidCentralSystemCertificate",
                str(detail),
            )
        if tls is not None:
            reason = str(tls.reason or "")
            if reason in _TLS_VERSION_REASONS:
                return (
                    f"tls:{reason}",
                    f"CSMS offers no TLS version this charger accepts (1.2 or later): {tls}",
                    "InvalidTLSVersion",
                    reason,
                )
            if reason in _CIPHER_REASONS:
                return (
                    f"tls:{reason}",
                    f"CSMS offers none of the cipher suites of the security profiles: {tls}",
                    "InvalidTLSCipherSuite",
                    reason,
                )
            if reason in _CLIENT_CERT_REASONS:
                return (
                    f"refused:{reason}",
                    f"CSMS refused this charger's certificate ({reason})",
                    "FailedToAuthenticateAtCentralSystem",
                    reason,
                )
            return f"tls:{reason}", f"CSMS connection failed (TLS): {tls}", None, None
        return "connect", f"CSMS connection failed: {_describe(exc)}", None, None

    def _after_trial_failure(self, definitive: bool, message: str) -> None:
        trial = self._trial
        if trial is None:
            return
        trial.attempts_left -= 1
        if not definitive and trial.attempts_left > 0:
            return
        raised = self.profile
        self._trial = None
        self._adapter.keys.load({"SecurityProfile": str(trial.previous)})
        log.error(
            "security profile %d does not connect (%s): back to security profile %d",
            raised,
            message,
            trial.previous,
        )

    async def connected(self, ws: ClientConnection) -> None:
        """A connection is open: a raised profile has proven itself (A05.FR.07), and the
        root that verified the CSMS is now the one DeleteCertificate may not remove."""
        self._failure_kind = None
        ssl_object = ws.transport.get_extra_info("ssl_object")
        self._tls_connected = ssl_object is not None
        self._root_in_use = None
        if ssl_object is not None and self.certs is not None:
            chain = _verified_chain(ssl_object)
            self._root_in_use = await asyncio.to_thread(self._root_among, chain)
        trial, self._trial = self._trial, None
        if trial is not None:
            adapter = self._adapter
            value = str(self.profile)
            if adapter._persist_key is not None:
                await adapter._persist_key("SecurityProfile", value)
            if adapter._store is not None:
                # What the file said then: a later edit of it is a technician's decision.
                await adapter._store.put(
                    _STATE_NAMESPACE, "file_profile", adapter.section.security_profile
                )
            log.info("security profile %s in use (was %d)", value, trial.previous)
            await self.event(
                "ReconfigurationOfSecurityParameters",
                f"SecurityProfile raised from {trial.previous} to {value}",
            )

    def _root_among(self, chain: list[bytes]) -> str | None:
        """Which installed CentralSystemRootCertificate anchors the CSMS's chain, if any."""
        if self.certs is None:
            return None
        certificates = []
        for der in chain:
            with contextlib.suppress(ValueError):
                certificates.append(x509.load_der_x509_certificate(der))
        if not certificates:
            return None
        names = {sha256_name(c) for c in certificates}
        top = certificates[-1]  # the root, or the leaf where only the leaf is known
        for path, root in self.certs.root_files(CertificateUse.CENTRAL_SYSTEM_ROOT):
            if path.stem in names:
                return path.stem
            with contextlib.suppress(ValueError, TypeError, InvalidSignature):
                top.verify_directly_issued_by(root)
                return path.stem
        return None

    def disconnected(self) -> None:
        self._tls_connected = False

    # --- configuration keys --------------------------------------------------------------

    async def change_configuration(self, key: str, value: str) -> str:
        """ChangeConfiguration.req of a key in SECURITY_KEYS; the answer's status."""
        keys = self._adapter.keys
        if key == "SecurityProfile":
            return (await self._raise_profile(value)).value
        if key == "AuthorizationKey":
            return (await self._new_authorization_key(value)).value
        result = keys.change(key, value)
        if result is ChangeResult.ACCEPTED and self._adapter._persist_key is not None:
            await self._adapter._persist_key(key, keys.get(key))
        return result.value

    async def _raise_profile(self, raw: str) -> ChangeResult:
        keys = self._adapter.keys
        current = self.profile
        wanted = raw.strip()
        refusal = None
        if not wanted.isdigit() or not 0 <= int(wanted) <= 3:
            refusal = f"{raw!r} is not a security profile"
        elif int(wanted) <= current:
            # A05.FR.01 / A00.FR.005: never lowered (nor "raised" to itself) over OCPP.
            refusal = f"{wanted} is not above the current profile {current}"
        else:
            refusal = await asyncio.to_thread(self._profile_unmet, int(wanted))
        if refusal is not None:
            log.warning("SecurityProfile %s Rejected: %s", raw, refusal)
            return ChangeResult.REJECTED
        result = keys.change("SecurityProfile", wanted)
        if result is ChangeResult.ACCEPTED:
            # Kept in memory until a connection with it works (A05.FR.08): a restart before
            # that comes back with the profile that is known to work.
            self._trial = _ProfileTrial(current, PROFILE_TRIAL_ATTEMPTS)
            self._reconnect_reason = f"SecurityProfile raised to {wanted}"
        return result

    def _profile_unmet(self, profile: int) -> str | None:
        """A05.FR.02-04: what the profile needs and is missing, or None."""
        if profile in (1, 2) and not self._adapter.keys.get("AuthorizationKey"):
            return "no AuthorizationKey is set"
        if profile >= 2 and not self._trusted_roots():
            return "no CentralSystemRootCertificate is installed (nor ocpp.ca_file)"
        if profile == 3 and self._client_credentials() is None:
            return "no valid charge point certificate"
        return None

    async def _new_authorization_key(self, value: str) -> ChangeResult:
        keys = self._adapter.keys
        previous = keys.get("AuthorizationKey")
        result = keys.change("AuthorizationKey", value)
        if result is not ChangeResult.ACCEPTED:
            log.warning("AuthorizationKey Rejected: not 16 to 40 characters")
            return result
        if self._secret_path is not None:
            try:
                await asyncio.to_thread(
                    _write_secret, self._secret_path, keys.get("AuthorizationKey")
                )
            except OSError as exc:
                # Not stored means not changed: Accepted would make the CSMS drop the key
                # this charger comes back with after a restart (A01.FR.03).
                keys.load({"AuthorizationKey": previous} if previous else {})
                log.error("AuthorizationKey not stored (%s): Rejected", exc)
                return ChangeResult.REJECTED
        await self.event("ReconfigurationOfSecurityParameters", "AuthorizationKey changed")
        if self.profile in (1, 2):
            self._reconnect_reason = "new AuthorizationKey"  # A01 step 3-4
        return ChangeResult.ACCEPTED

    def after_csms_request(self) -> None:
        """After the answer to a request that changed the credentials: reconnect with them."""
        reason, self._reconnect_reason = self._reconnect_reason, None
        if reason is not None:
            self._adapter.request_reconnect(reason)

    # --- certificates --------------------------------------------------------------------

    async def install_certificate(self, certificate_type: str, pem: str) -> str:
        certs = self.certs
        if certs is None:
            return InstallOutcome.FAILED.value
        use = CertificateUse(certificate_type)
        now = self._adapter.clock.utc_now()
        try:
            outcome = await asyncio.to_thread(certs.install_root, use, pem, now)
        except CertificateError as exc:
            log.warning("InstallCertificate %s Rejected: %s", use.value, exc)
            return InstallOutcome.REJECTED.value
        if outcome is InstallOutcome.ACCEPTED:
            await self.event("ReconfigurationOfSecurityParameters", f"{use.value} installed")
        else:
            log.error("InstallCertificate %s: the certificate could not be stored", use.value)
        return outcome.value

    async def delete_certificate(self, raw: dict[str, Any]) -> str:
        certs = self.certs
        if certs is None:
            return DeleteOutcome.NOT_FOUND.value
        wanted = CertificateHashData(
            hash_algorithm=str(raw["hash_algorithm"]),
            issuer_name_hash=str(raw["issuer_name_hash"]),
            issuer_key_hash=str(raw["issuer_key_hash"]),
            serial_number=str(raw["serial_number"]),
        )
        found = await asyncio.to_thread(certs.find_root, wanted)
        if found is None:
            return DeleteOutcome.NOT_FOUND.value
        path, _ = found
        if self._tls_connected and path.stem == self._root_in_use:
            # M04.FR.06: the root that verified this very connection stays.
            log.warning("DeleteCertificate: %s verifies the current connection; Failed", path.name)
            return DeleteOutcome.FAILED.value
        outcome = await asyncio.to_thread(certs.delete_root, path)
        if outcome is DeleteOutcome.ACCEPTED:
            await self.event(
                "ReconfigurationOfSecurityParameters", f"{path.parent.name} {path.stem} deleted"
            )
        return outcome.value

    async def installed_certificates(self, certificate_type: str) -> list[dict[str, str]]:
        if self.certs is None:
            return []
        use = CertificateUse(certificate_type)
        found = await asyncio.to_thread(self.certs.installed_hash_data, use)
        return [data.to_ocpp() for data in found]

    async def certificate_signed(self, chain_pem: str) -> str:
        """CertificateSigned.req (A02.FR.06-08)."""
        certs = self.certs
        adapter = self._adapter
        if certs is None:
            return "Rejected"
        now = adapter.clock.utc_now()

        def accept() -> x509.Certificate:
            assert certs is not None
            return certs.accept_signed_chain(
                chain_pem,
                now,
                trusted_roots=self._trusted_roots(),
                max_chain_chars=adapter.keys.get_int("CertificateSignedMaxChainSize"),
                expected_common_name=adapter.station.id,
            )

        try:
            leaf = await asyncio.to_thread(accept)
        except CertificateError as exc:
            log.warning("CertificateSigned Rejected: %s", exc)
            await self.event("InvalidChargePointCertificate", str(exc))
            return "Rejected"
        except OSError as exc:
            log.error("CertificateSigned: the certificate could not be stored: %s", exc)
            return "Rejected"
        await self.event(
            "ReconfigurationOfSecurityParameters",
            f"ChargePointCertificate serial {leaf.serial_number:x} installed",
        )
        if self.profile == 3 and leaf.not_valid_before_utc <= now:
            # A02.FR.08: in use as soon as it is valid; TLS only presents it on a new
            # connection. (One valid later is picked up by the next connection after then.)
            self._reconnect_reason = "new charge point certificate"
        return "Accepted"

    async def sign_certificate(self, link: _Link) -> None:
        """A02 steps 3-4: a new key pair and its CSR, sent as SignCertificate.req."""
        adapter = self._adapter
        certs = self.certs
        if certs is None:
            return
        organization = adapter.keys.get("CpoName")
        try:
            csr = await asyncio.to_thread(
                certs.new_signing_request, adapter.station.id, organization
            )
        except (OSError, ValueError) as exc:
            log.error("no certificate signing request: %s", exc)
            return
        result = await adapter._call(link, call.SignCertificate(csr=csr))
        if result.status != "Accepted":
            # A02 error handling: the operator re-runs the update; the charger does not retry.
            log.warning("SignCertificate %s by the CSMS", result.status)

    # --- ExtendedTriggerMessage ----------------------------------------------------------

    _CORE_TRIGGERS = frozenset(
        {"BootNotification", "Heartbeat", "MeterValues", "StatusNotification"}
    )

    def trigger_status(self, requested: str, connector_id: int | None) -> str:
        adapter = self._adapter
        if requested in self._CORE_TRIGGERS:
            return adapter.trigger_status(requested, connector_id)
        if requested in ("FirmwareStatusNotification", "LogStatusNotification"):
            return "Accepted"
        if requested == "SignChargePointCertificate":
            if self.certs is None or not adapter.keys.get("CpoName"):
                # A02 prerequisite: CpoName is the O of the request.
                return "Rejected"
            return "Accepted"
        return "NotImplemented"

    def after_trigger(self, requested: str, connector_id: int | None) -> None:
        adapter = self._adapter
        link = adapter._link
        if self.trigger_status(requested, connector_id) != "Accepted" or link is None:
            return
        if requested in self._CORE_TRIGGERS:
            adapter.after_trigger(requested, connector_id)
        elif requested == "FirmwareStatusNotification":
            trigger = self.firmware_status_trigger
            if trigger is not None:
                adapter._spawn(trigger())
            else:
                adapter._spawn(
                    adapter._call_quietly(
                        link, call.SignedFirmwareStatusNotification(status="Idle", request_id=None)
                    )
                )
        elif requested == "LogStatusNotification":
            status, request_id = self._upload_status or ("Idle", None)
            adapter._spawn(
                adapter._call_quietly(
                    link, call.LogStatusNotification(status=status, request_id=request_id)
                )
            )
        elif requested == "SignChargePointCertificate":
            adapter._spawn(self.sign_certificate(link))

    # --- GetLog --------------------------------------------------------------------------

    def get_log(
        self,
        log_type: str,
        request_id: int,
        parameters: dict[str, Any],
        retries: int | None,
        retry_interval: int | None,
    ) -> tuple[str, str | None]:
        """GetLog.req (N01): (status, filename). The upload starts after the answer."""
        location = str(parameters.get("remote_location", ""))
        if log_type != "SecurityLog" or self.security_log is None:
            # The diagnostics of this daemon are its journal; GetDiagnostics covers them.
            log.info("GetLog %s Rejected: not available", log_type)
            return "Rejected", None
        scheme = urlsplit(location).scheme.lower()
        if scheme not in SUPPORTED_SCHEMES:
            log.info("GetLog Rejected: %r uploads are not supported", scheme)
            return "Rejected", None
        now = self._adapter.clock.utc_now()
        filename = f"{self._adapter.station.id}-SecurityLog-{now:%Y%m%dT%H%M%SZ}.log"
        status = "Accepted"
        if self._upload_task is not None or not self._uploads.empty():
            status = "AcceptedCanceled"  # N01.FR.11
        self._pending_upload = _UploadJob(
            request_id=request_id,
            url=target_url(location, filename),
            oldest=_parse_time(parameters.get("oldest_timestamp")),
            latest=_parse_time(parameters.get("latest_timestamp")),
            retries=DEFAULT_UPLOAD_RETRIES if retries is None else max(0, retries),
            retry_interval_s=(
                DEFAULT_UPLOAD_RETRY_INTERVAL_S
                if retry_interval is None
                else max(0, retry_interval)
            ),
        )
        return status, filename

    def after_get_log(self) -> None:
        job, self._pending_upload = self._pending_upload, None
        if job is None:
            return
        while not self._uploads.empty():
            self._uploads.get_nowait()
        if self._upload_task is not None:
            self._upload_task.cancel()
        self._uploads.put_nowait(job)

    async def _upload(self, job: _UploadJob) -> None:
        self._upload_status = ("Uploading", job.request_id)
        await self._log_status("Uploading", job.request_id)
        status = UploadStatus.UPLOAD_FAILURE
        try:
            assert self.security_log is not None
            data = await asyncio.to_thread(self.security_log.export, job.oldest, job.latest)
            context = await asyncio.to_thread(self._upload_context)
            for attempt in range(job.retries + 1):
                if attempt:
                    await asyncio.sleep(job.retry_interval_s)
                status = await asyncio.to_thread(
                    put_file, job.url, data, ssl_context=context, timeout_s=UPLOAD_TIMEOUT_S
                )
                if status is UploadStatus.UPLOADED or status in (
                    UploadStatus.PERMISSION_DENIED,
                    UploadStatus.NOT_SUPPORTED_OPERATION,
                ):
                    break
        except OSError as exc:
            log.error("security log upload %d failed: %s", job.request_id, exc)
        log.info("security log upload %d: %s", job.request_id, status.value)
        self._upload_status = None
        await self._log_status(status.value, job.request_id)

    def _upload_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        ca_file = self._adapter.section.ca_file
        if ca_file:
            context.load_verify_locations(cafile=ca_file)
        installed = self._installed_roots_pem()
        if installed:
            context.load_verify_locations(cadata=installed)
        return context

    async def _log_status(self, status: str, request_id: int) -> None:
        adapter = self._adapter
        link = adapter._link
        if link is None or not adapter.online:
            log.info("LogStatusNotification %s not sent: offline", status)
            return
        try:
            await adapter._call(
                link, call.LogStatusNotification(status=status, request_id=request_id)
            )
        except (TimeoutError, OCPPError, ConnectionClosed) as exc:
            log.warning("LogStatusNotification %s failed: %s", status, exc)


class SecurityHandlers:
    """The CSMS's security-extension requests, as handlers of the adapter's link."""

    _adapter: OcppAdapter16

    @on(Action.install_certificate, skip_schema_validation=True)
    async def _install_certificate(
        self, certificate_type: str, certificate: str, **_: Any
    ) -> call_result.InstallCertificate:
        status = await self._adapter.security.install_certificate(certificate_type, certificate)
        return call_result.InstallCertificate(status=status)

    @on(Action.delete_certificate, skip_schema_validation=True)
    async def _delete_certificate(
        self, certificate_hash_data: dict[str, Any], **_: Any
    ) -> call_result.DeleteCertificate:
        status = await self._adapter.security.delete_certificate(certificate_hash_data)
        return call_result.DeleteCertificate(status=status)

    @on(Action.get_installed_certificate_ids, skip_schema_validation=True)
    async def _get_installed_certificate_ids(
        self, certificate_type: str, **_: Any
    ) -> call_result.GetInstalledCertificateIds:
        found = await self._adapter.security.installed_certificates(certificate_type)
        if not found:
            return call_result.GetInstalledCertificateIds(status="NotFound")
        return call_result.GetInstalledCertificateIds(
            status="Accepted", certificate_hash_data=found
        )

    @on(Action.certificate_signed, skip_schema_validation=True)
    async def _certificate_signed(
        self, certificate_chain: str, **_: Any
    ) -> call_result.CertificateSigned:
        status = await self._adapter.security.certificate_signed(certificate_chain)
        return call_result.CertificateSigned(status=status)

    @after(Action.certificate_signed)
    def _after_certificate_signed(self, **_: Any) -> None:
        self._adapter.security.after_csms_request()

    @after(Action.change_configuration)
    def _after_change_configuration(self, **_: Any) -> None:
        self._adapter.security.after_csms_request()

    @on(Action.extended_trigger_message, skip_schema_validation=True)
    def _extended_trigger(
        self, requested_message: str, connector_id: int | None = None, **_: Any
    ) -> call_result.ExtendedTriggerMessage:
        status = self._adapter.security.trigger_status(requested_message, connector_id)
        return call_result.ExtendedTriggerMessage(status=status)

    @after(Action.extended_trigger_message)
    def _after_extended_trigger(
        self, requested_message: str, connector_id: int | None = None, **_: Any
    ) -> None:
        self._adapter.security.after_trigger(requested_message, connector_id)

    @on(Action.get_log, skip_schema_validation=True)
    def _get_log(
        self,
        log_type: str,
        request_id: int,
        log: dict[str, Any],
        retries: int | None = None,
        retry_interval: int | None = None,
        **_: Any,
    ) -> call_result.GetLog:
        status, filename = self._adapter.security.get_log(
            log_type, request_id, log, retries, retry_interval
        )
        return call_result.GetLog(status=status, filename=filename)

    @after(Action.get_log)
    def _after_get_log(self, **_: Any) -> None:
        self._adapter.security.after_get_log()
