"""A small OCPP 1.6J CSMS on loopback: the real peer for the demo and the integration tests.

Built on the same ``ocpp`` and ``websockets`` libraries as the daemon, so that a test
exercises real framing, schema validation and websocket behaviour rather than a mock.

Every frame the charge point sends is observed before the ``ocpp`` library routes it:

* CALLs are recorded in :attr:`BenchCsms.received` (camelCase payload, as on the wire). The
  ``@on`` handler records it (``error=None``) after updating the CSMS's own state and
  before the answer is sent, so a test woken by :meth:`BenchCsms.wait_for` already sees,
  e.g., the transaction id it handed out. A CALL the library refuses (schema violation,
  unknown action) is recorded with ``error`` set to the CALLERROR code we answered.
* Frames that are not OCPP at all are recorded as action :data:`MALFORMED`, replies nobody
  waits for as :data:`UNSOLICITED` (both with ``error`` set).
* CALLRESULT/CALLERROR frames answer either one of our own :meth:`BenchCsms.call` calls
  (handed to the library) or a :meth:`BenchCsms.send_raw` frame.

For the OCPP security profiles it can serve TLS (``ssl``), ask for HTTP Basic credentials
(``basic_auth``) and insist on a client certificate (``require_client_certificate``); every
websocket handshake that reaches HTTP is recorded in :attr:`BenchCsms.handshakes`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import ssl
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any, TypeVar, cast
from urllib.parse import unquote, urlsplit

from ocpp.routing import on as _ocpp_on
from ocpp.v16 import ChargePoint as _ChargePoint16
from ocpp.v16 import call_result, datatypes
from ocpp.v16.enums import (
    Action,
    AuthorizationStatus,
    DataTransferStatus,
    GenericStatus,
    RegistrationStatus,
)
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

__all__ = [
    "MALFORMED",
    "UNSOLICITED",
    "BenchCsms",
    "Handshake",
    "ReceivedMessage",
]

LOGGER = logging.getLogger(__name__)

OCPP16 = Subprotocol("ocpp1.6")

#: Action recorded for a frame that is not a well-formed OCPP-J message.
MALFORMED = "<malformed>"
#: Action recorded for a CALLRESULT/CALLERROR that answers nothing we sent.
UNSOLICITED = "<unsolicited>"

_CALL, _CALLRESULT, _CALLERROR = 2, 3, 4
# Our own timeouts govern calls; the library's per-instance one only has to stay out of
# the way.
_LIBRARY_RESPONSE_TIMEOUT_S = 3600
_DROP_WAIT_S = 5.0
# The CALLERROR code of a CALL that BenchCsms.call_errors tells the CSMS to fail.
_FAILED_CALL_CODE = "InternalError"
_TIMELINE_LIMIT = 60

_F = TypeVar("_F", bound=Callable[..., Any])
_T = TypeVar("_T")

MessageCallback = Callable[[str, str, dict[str, Any]], None]


def _on(action: str) -> Callable[[_F], _F]:
    # ocpp ships no type hints; this keeps the decorated handlers typed for mypy --strict.
    return cast("Callable[[_F], _F]", _ocpp_on(action))


def _utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass
class ReceivedMessage:
    """A frame the charge point sent to the CSMS."""

    action: str
    payload: dict[str, Any]
    unique_id: str
    received_at: float
    #: None when the CSMS answered with a CALLRESULT; otherwise the CALLERROR code it
    #: answered with, or why the frame was not handled ("malformed", "unsolicited").
    error: str | None = None


@dataclass(frozen=True)
class Handshake:
    """A websocket handshake as the CSMS saw it, whether it let it through or not."""

    path: str
    #: The HTTP status answered: 101 when the connection was accepted.
    status: int
    #: HTTP Basic credentials, None without (or with an unreadable) Authorization header.
    user: str | None
    password: str | None
    #: The client certificate (DER) the charge point presented over TLS, if any.
    client_certificate: bytes | None
    tls_version: str | None
    cipher: str | None


def _basic_credentials(header: str | None) -> tuple[str, str] | None:
    if header is None or not header.startswith("Basic "):
        return None
    try:
        decoded = base64.b64decode(header[len("Basic ") :], validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


class _Session:
    """State of one charge point websocket connection."""

    def __init__(self, ws: ServerConnection, cp_id: str) -> None:
        self.ws = ws
        self.cp_id = cp_id
        self.cp: _CsmsChargePoint | None = None
        self.closed = asyncio.Event()
        # Unique ids of our own ocpp calls in flight → action: their replies go to the
        # library, and nothing else may claim them.
        self.own_calls: dict[str, str] = {}
        # Raw sends waiting for the reply with a known unique id, and those whose frame
        # had no extractable id (served first come, first served).
        self.raw_by_id: dict[str, asyncio.Future[list[Any]]] = {}
        self.raw_actions: dict[str, str] = {}
        self.raw_anonymous: deque[asyncio.Future[list[Any]]] = deque()
        # CALLs from the charge point being handled: unique id → (action, payload, time).
        self.incoming: dict[str, tuple[str, dict[str, Any], float]] = {}
        # CALLERROR codes we answered, by unique id, until route_message looks at them.
        self.answered_errors: dict[str, str] = {}

    def fail_pending(self) -> None:
        exc = ConnectionError(f"charge point {self.cp_id} disconnected")
        futures = [*self.raw_by_id.values(), *self.raw_anonymous]
        self.raw_by_id.clear()
        self.raw_anonymous.clear()
        for fut in futures:
            if not fut.done():
                fut.set_exception(exc)
                # Mark retrieved: the waiter may already have given up on it.
                fut.exception()


class _ObservedConnection:
    """What the ocpp library sees as its connection: lets the CSMS watch what it sends."""

    def __init__(self, ws: ServerConnection, csms: BenchCsms, session: _Session) -> None:
        self._ws = ws
        self._csms = csms
        self._session = session

    async def recv(self) -> str | bytes:
        return await self._ws.recv()

    async def send(self, message: str) -> None:
        self._csms._observe_outgoing(self._session, message)
        await self._ws.send(message)


class _CsmsChargePoint(_ChargePoint16):  # type: ignore[misc]  # ocpp is untyped
    """The CSMS side of one connection: answers every CP→CS action of OCPP 1.6."""

    def __init__(
        self, cp_id: str, connection: _ObservedConnection, csms: BenchCsms, session: _Session
    ) -> None:
        super().__init__(cp_id, connection, response_timeout=_LIBRARY_RESPONSE_TIMEOUT_S)
        self._csms = csms
        self._session = session

    async def route_message(self, raw_msg: str | bytes) -> None:
        forward = self._csms._before_routing(self._session, raw_msg)
        if forward is None:
            return
        try:
            pending = self._session.incoming.get(forward) if forward else None
            if pending is not None and self._csms._take(self._csms.unanswered, pending[0]):
                pass  # swallowed: the charge point's message timeout has to run out
            elif pending is not None and self._csms._take(self._csms.call_errors, pending[0]):
                # Answered with a CALLERROR instead of being handled (retry tests).
                error = [_CALLERROR, forward, _FAILED_CALL_CODE, "failed by the bench CSMS", {}]
                await self._connection.send(json.dumps(error))
            else:
                await super().route_message(raw_msg)
        finally:
            if forward:
                self._csms._after_routing(self._session, forward)

    def _accept(self, unique_id: str) -> None:
        self._csms._record_handled(self._session, unique_id)

    # -- Core profile ------------------------------------------------------------------

    @_on(Action.boot_notification)
    async def on_boot_notification(
        self, call_unique_id: str, **kwargs: Any
    ) -> call_result.BootNotification:
        status, interval = self._csms._next_boot_response()
        self._accept(call_unique_id)
        return call_result.BootNotification(
            current_time=_utc_now(), interval=interval, status=RegistrationStatus(status)
        )

    @_on(Action.heartbeat)
    async def on_heartbeat(self, call_unique_id: str, **kwargs: Any) -> call_result.Heartbeat:
        self._accept(call_unique_id)
        return call_result.Heartbeat(current_time=_utc_now())

    @_on(Action.status_notification)
    async def on_status_notification(
        self, call_unique_id: str, **kwargs: Any
    ) -> call_result.StatusNotification:
        self._accept(call_unique_id)
        return call_result.StatusNotification()

    @_on(Action.authorize)
    async def on_authorize(self, call_unique_id: str, **kwargs: Any) -> call_result.Authorize:
        info = self._csms._id_tag_info(str(kwargs.get("id_tag", "")))
        self._accept(call_unique_id)
        return call_result.Authorize(id_tag_info=info)

    @_on(Action.start_transaction)
    async def on_start_transaction(
        self, call_unique_id: str, **kwargs: Any
    ) -> call_result.StartTransaction:
        id_tag = str(kwargs.get("id_tag", ""))
        info = self._csms._id_tag_info(id_tag)
        transaction_id = self._csms._new_transaction(id_tag)
        self._accept(call_unique_id)
        return call_result.StartTransaction(transaction_id=transaction_id, id_tag_info=info)

    @_on(Action.stop_transaction)
    async def on_stop_transaction(
        self, call_unique_id: str, **kwargs: Any
    ) -> call_result.StopTransaction:
        id_tag = kwargs.get("id_tag")
        # idTagInfo is only meaningful (and only sent) when the stop names an idTag.
        info = self._csms._id_tag_info(str(id_tag)) if id_tag is not None else None
        self._accept(call_unique_id)
        return call_result.StopTransaction(id_tag_info=info)

    @_on(Action.meter_values)
    async def on_meter_values(self, call_unique_id: str, **kwargs: Any) -> call_result.MeterValues:
        self._accept(call_unique_id)
        return call_result.MeterValues()

    @_on(Action.data_transfer)
    async def on_data_transfer(
        self, call_unique_id: str, **kwargs: Any
    ) -> call_result.DataTransfer:
        self._accept(call_unique_id)
        return call_result.DataTransfer(status=DataTransferStatus.accepted)

    # -- Firmware management -------------------------------------------------------------

    @_on(Action.diagnostics_status_notification)
    async def on_diagnostics_status_notification(
        self, call_unique_id: str, **kwargs: Any
    ) -> call_result.DiagnosticsStatusNotification:
        self._accept(call_unique_id)
        return call_result.DiagnosticsStatusNotification()

    @_on(Action.firmware_status_notification)
    async def on_firmware_status_notification(
        self, call_unique_id: str, **kwargs: Any
    ) -> call_result.FirmwareStatusNotification:
        self._accept(call_unique_id)
        return call_result.FirmwareStatusNotification()

    # -- Security extension (OCPP 1.6 security whitepaper) ------------------------------------

    @_on(Action.security_event_notification)
    async def on_security_event_notification(
        self, call_unique_id: str, **kwargs: Any
    ) -> call_result.SecurityEventNotification:
        self._accept(call_unique_id)
        return call_result.SecurityEventNotification()

    @_on(Action.sign_certificate)
    async def on_sign_certificate(
        self, call_unique_id: str, **kwargs: Any
    ) -> call_result.SignCertificate:
        self._accept(call_unique_id)
        return call_result.SignCertificate(status=GenericStatus.accepted)

    @_on(Action.signed_firmware_status_notification)
    async def on_signed_firmware_status_notification(
        self, call_unique_id: str, **kwargs: Any
    ) -> call_result.SignedFirmwareStatusNotification:
        self._accept(call_unique_id)
        return call_result.SignedFirmwareStatusNotification()

    @_on(Action.log_status_notification)
    async def on_log_status_notification(
        self, call_unique_id: str, **kwargs: Any
    ) -> call_result.LogStatusNotification:
        self._accept(call_unique_id)
        return call_result.LogStatusNotification()


def _parse_frame(raw: str | bytes) -> list[Any] | None:
    try:
        frame = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return frame if isinstance(frame, list) else None


def _frame_identity(frame: str | bytes) -> tuple[str | None, str | None, Any]:
    """(unique id, action, payload) of a raw frame, as far as they can be extracted."""
    parsed = _parse_frame(frame)
    if parsed is None or len(parsed) < 2 or not isinstance(parsed[1], str):
        return None, None, None
    action = parsed[2] if parsed[0] == _CALL and len(parsed) > 2 else None
    payload = parsed[3] if parsed[0] == _CALL and len(parsed) > 3 else None
    return parsed[1], action if isinstance(action, str) else None, payload


def _reply_payload(frame: list[Any]) -> dict[str, Any]:
    if frame and frame[0] == _CALLRESULT and len(frame) > 2 and isinstance(frame[2], dict):
        return frame[2]
    if frame and frame[0] == _CALLERROR:
        keys = ("errorCode", "errorDescription", "errorDetails")
        return dict(zip(keys, frame[2:5], strict=False))
    return {"frame": frame}


def _reply_name(action: str | None, frame: list[Any]) -> str:
    suffix = ".error" if frame and frame[0] == _CALLERROR else ".conf"
    return (action or "<reply>") + suffix


class BenchCsms:
    """A CSMS for one charge point at a time, on ``ws://host:port/<path>/<charge point id>``.

    Not thread-safe; use it from the event loop that started it.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        path: str = "/ocpp",
        heartbeat_interval_s: int = 300,
        boot_responses: list[tuple[str, int]] | None = None,
        id_tag_status: dict[str, str] | None = None,
        default_id_tag_status: str = "Accepted",
        id_tag_parent: dict[str, str] | None = None,
        id_tag_expiry: dict[str, str] | None = None,
        on_message: MessageCallback | None = None,
        call_errors: dict[str, int] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        url_host: str | None = None,
        basic_auth: dict[str, str] | None = None,
        require_client_certificate: bool = False,
    ) -> None:
        responses = list(boot_responses) if boot_responses else [("Accepted", heartbeat_interval_s)]
        registration = {s.value for s in RegistrationStatus}
        for status, interval in responses:
            if status not in registration:
                raise ValueError(f"boot status {status!r} is not one of {sorted(registration)}")
            if interval < 0:
                raise ValueError(f"boot interval must be >= 0, got {interval}")
        authorization = {s.value for s in AuthorizationStatus}
        tag_status = dict(id_tag_status or {})
        for status in [*tag_status.values(), default_id_tag_status]:
            if status not in authorization:
                raise ValueError(f"idTag status {status!r} is not one of {sorted(authorization)}")
        self.host = host
        self.port = port
        # "/ocpp/" and "/ocpp" mean the same prefix; "/" means ids right under the root.
        self.path = "/" + path.strip("/") if path.strip("/") else ""
        self.heartbeat_interval_s = heartbeat_interval_s
        self.boot_responses = responses
        self.id_tag_status = tag_status
        self.default_id_tag_status = default_id_tag_status
        #: parentIdTag and expiryDate (OCPP dateTime) to answer for an idTag, if any.
        self.id_tag_parent = dict(id_tag_parent or {})
        self.id_tag_expiry = dict(id_tag_expiry or {})
        self.on_message = on_message
        #: Action → how many of its next CALLs are answered with a CALLERROR (InternalError)
        #: instead of being handled; a negative count fails them all. Such a CALL is recorded
        #: in :attr:`received` with ``error="InternalError"``.
        self.call_errors = dict(call_errors or {})
        #: Action → how many of its next CALLs get no answer at all, so that the charge
        #: point's message timeout runs out; counted like :attr:`call_errors`. Such a CALL is
        #: recorded in :attr:`received` with ``error="NoReply"``.
        self.unanswered: dict[str, int] = {}
        self.url = ""
        self.received: list[ReceivedMessage] = []
        self.connections = 0
        self.transaction_ids: dict[int, str] = {}
        #: When False, new websocket handshakes get HTTP 503 while the port stays open.
        self.accepting = True
        #: TLS for wss:// (None: plain ws://); read when the server starts.
        self.ssl_context = ssl_context
        #: The host name in :attr:`url` (e.g. the one the server certificate names); the
        #: server listens on ``host`` either way.
        self.url_host = url_host
        #: Charge point id → the HTTP Basic password it must present; None: no Basic auth.
        #: A missing or wrong one gets HTTP 401. May be changed while running.
        self.basic_auth = dict(basic_auth) if basic_auth is not None else None
        #: Refuse (HTTP 401) a connection without a TLS client certificate (the TLS context
        #: verifies one that is presented). May be changed while running.
        self.require_client_certificate = require_client_certificate
        #: Every handshake that reached HTTP, in order.
        self.handshakes: list[Handshake] = []
        self.boot_count = 0
        self._next_transaction_id = 1
        self._server: Server | None = None
        self._session: _Session | None = None
        # Replaced on every change (message recorded, connection opened or closed); waiters
        # wait on the one they saw, so no change can slip between check and wait.
        self._changed = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> str:
        if self._server is not None:
            raise RuntimeError("BenchCsms already started")
        self._server = await serve(
            self._handle_connection,
            self.host,
            self.port,
            subprotocols=[OCPP16],
            process_request=self._process_request,
            ssl=self.ssl_context,
        )
        # Kept, so that stop() and start() again simulate a CSMS restart on the same URL.
        self.port = self._server.sockets[0].getsockname()[1]
        name = self.url_host or self.host
        host = f"[{name}]" if ":" in name else name
        scheme = "wss" if self.ssl_context is not None else "ws"
        self.url = f"{scheme}://{host}:{self.port}{self.path}"
        LOGGER.info("bench CSMS listening on %s", self.url)
        return self.url

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            # Closes open connections with 1001 and waits for their handlers to return.
            server.close()
            await server.wait_closed()
        background = list(self._background)
        for task in background:
            task.cancel()
        if background:
            await asyncio.gather(*background, return_exceptions=True)

    async def __aenter__(self) -> BenchCsms:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- inspection ------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        session = self._session
        return session is not None and not session.closed.is_set()

    @property
    def charge_point_id(self) -> str | None:
        """Id of the connected charge point, None when none is connected."""
        session = self._session
        return session.cp_id if session is not None and not session.closed.is_set() else None

    def mark(self) -> int:
        return len(self.received)

    def messages(self, action: str, *, include_rejected: bool = False) -> list[ReceivedMessage]:
        return [
            m for m in self.received if m.action == action and (include_rejected or m.error is None)
        ]

    def rejected(self) -> list[ReceivedMessage]:
        """Frames from the charge point that the CSMS refused or could not parse."""
        return [m for m in self.received if m.error is not None]

    async def wait_for(
        self,
        action: str,
        predicate: Callable[[dict[str, Any]], bool] | None = None,
        timeout_s: float = 10.0,
        *,
        after: int = 0,
        include_rejected: bool = False,
    ) -> ReceivedMessage:
        position = max(after, 0)

        def find() -> ReceivedMessage | None:
            nonlocal position
            while position < len(self.received):
                message = self.received[position]
                position += 1
                if message.action != action:
                    continue
                if message.error is not None and not include_rejected:
                    continue
                if predicate is None or predicate(message.payload):
                    return message
            return None

        def explain() -> str:
            what = action + (" matching the predicate" if predicate is not None else "")
            return (
                f"no {what} from index {after} within {timeout_s:g}s; received: {self.timeline()}"
            )

        return await self._wait_until(find, timeout_s, explain)

    async def wait_connected(self, timeout_s: float = 10.0, *, after: int = 0) -> str:
        """Wait until a charge point is connected and more than ``after`` connections
        have been accepted in all (pass ``csms.connections`` to wait for a reconnection).
        Returns the charge point id."""

        def find() -> str | None:
            if self.connections > after:
                return self.charge_point_id
            return None

        def explain() -> str:
            return (
                f"no charge point connection (beyond {after}) within {timeout_s:g}s; "
                f"{self.connections} accepted so far"
            )

        return await self._wait_until(find, timeout_s, explain)

    async def wait_disconnected(self, timeout_s: float = 10.0) -> None:
        def find() -> bool | None:
            return True if not self.connected else None

        await self._wait_until(find, timeout_s, lambda: f"still connected after {timeout_s:g}s")

    def timeline(self, limit: int = _TIMELINE_LIMIT) -> str:
        """`index:Action` of the last received messages, rejected ones with their error."""
        start = max(0, len(self.received) - limit)
        parts = [
            f"{i}:{m.action}" + (f"({m.error})" if m.error else "")
            for i, m in enumerate(self.received[start:], start)
        ]
        prefix = "... " if start else ""
        return prefix + (", ".join(parts) if parts else "nothing")

    # -- CS → CP ---------------------------------------------------------------------------

    async def call(self, payload: Any, *, timeout_s: float = 10.0) -> Any:
        """Send an ``ocpp.v16.call.*`` request; return the ``call_result`` dataclass.

        A CALLERROR raises the ``ocpp.exceptions.OCPPError`` subclass for its code (with
        ``.code``, ``.description``, ``.details``), an unknown code
        ``ocpp.exceptions.UnknownCallErrorCodeError``. No answer in time raises
        TimeoutError, a disconnect while waiting ConnectionError.
        """
        session = self._require_session()
        assert session.cp is not None
        action = type(payload).__name__
        unique_id = str(uuid.uuid4())
        session.own_calls[unique_id] = action
        call_task = asyncio.ensure_future(
            session.cp.call(payload, suppress=False, unique_id=unique_id)
        )
        closed_task = asyncio.ensure_future(session.closed.wait())
        try:
            done, _ = await asyncio.wait(
                {call_task, closed_task}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
            if call_task in done:
                return call_task.result()
            if closed_task in done:
                raise ConnectionError(
                    f"charge point {session.cp_id} disconnected before answering {action}"
                )
            raise TimeoutError(
                f"charge point {session.cp_id} did not answer {action} within {timeout_s:g}s"
            )
        finally:
            await _cancel_quietly(call_task, closed_task)
            session.own_calls.pop(unique_id, None)

    async def send_raw(
        self, frame: str | bytes, *, timeout_s: float = 5.0, expect_reply: bool = True
    ) -> list[Any] | None:
        """Send a raw websocket frame (text if str, binary if bytes).

        With ``expect_reply`` returns the parsed reply frame (a list): the CALLRESULT or
        CALLERROR with the frame's unique id when one can be extracted (``frame[1]`` a
        string), else the next CALLRESULT/CALLERROR that answers none of our own calls.
        Raises TimeoutError when none arrives in time, ConnectionError on a disconnect.
        Without ``expect_reply`` returns None once the frame is sent.
        """
        session = self._require_session()
        unique_id, action, payload = _frame_identity(frame)
        future: asyncio.Future[list[Any]] | None = None
        if expect_reply:
            future = asyncio.get_running_loop().create_future()
            if unique_id is not None:
                if unique_id in session.raw_by_id or unique_id in session.own_calls:
                    raise ValueError(f"a reply to unique id {unique_id!r} is already awaited")
                session.raw_by_id[unique_id] = future
                if action is not None:
                    session.raw_actions[unique_id] = action
            else:
                session.raw_anonymous.append(future)
        if action is not None and isinstance(payload, dict):
            self._narrate("out", action, payload)
        else:
            text = frame if isinstance(frame, str) else frame.decode("utf-8", "replace")
            self._narrate("out", "<raw>", {"raw": text})
        try:
            await session.ws.send(frame)
            if future is None:
                return None
            try:
                async with asyncio.timeout(timeout_s):
                    return await future
            except TimeoutError:
                raise TimeoutError(
                    f"no reply from {session.cp_id} within {timeout_s:g}s to raw frame "
                    f"{frame[:200]!r}"
                ) from None
        finally:
            if future is not None:
                if unique_id is not None:
                    if session.raw_by_id.get(unique_id) is future:
                        del session.raw_by_id[unique_id]
                    session.raw_actions.pop(unique_id, None)
                else:
                    with contextlib.suppress(ValueError):
                        session.raw_anonymous.remove(future)

    async def drop_connection(self, *, clean: bool = False) -> None:
        """Cut the charge point's connection from the server side.

        By default the TCP connection is aborted without a close frame, as when the
        network goes away (the charge point sees close code 1006); ``clean=True`` sends
        a 1001 close frame instead. Returns once the connection is gone.
        """
        session = self._session
        if session is None or session.closed.is_set():
            return
        if clean:
            await session.ws.close(1001, "dropped by the bench CSMS")
        else:
            session.ws.transport.abort()
        try:
            async with asyncio.timeout(_DROP_WAIT_S):
                await session.closed.wait()
        except TimeoutError:
            LOGGER.warning("connection of %s did not end after being dropped", session.cp_id)

    # -- websocket server ------------------------------------------------------------------

    def _charge_point_id(self, request_path: str) -> str | None:
        path = urlsplit(request_path).path
        prefix = self.path + "/"
        if not path.startswith(prefix):
            return None
        cp_id = unquote(path[len(prefix) :].rstrip("/").rsplit("/", 1)[-1])
        return cp_id or None

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        response = self._refusal(connection, request)
        credentials = _basic_credentials(request.headers.get("Authorization"))
        ssl_object = connection.transport.get_extra_info("ssl_object")
        certificate = ssl_object.getpeercert(binary_form=True) if ssl_object else None
        cipher = ssl_object.cipher() if ssl_object else None
        self.handshakes.append(
            Handshake(
                path=request.path,
                status=response.status_code if response is not None else 101,
                user=credentials[0] if credentials else None,
                password=credentials[1] if credentials else None,
                client_certificate=certificate,
                tls_version=ssl_object.version() if ssl_object else None,
                cipher=cipher[0] if cipher else None,
            )
        )
        self._pulse()
        return response

    def _refusal(self, connection: ServerConnection, request: Request) -> Response | None:
        if not self.accepting:
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "CSMS unavailable\n")
        cp_id = self._charge_point_id(request.path)
        if cp_id is None:
            return connection.respond(
                HTTPStatus.NOT_FOUND, f"expected {self.path}/<charge point id>\n"
            )
        if self.basic_auth is not None:
            credentials = _basic_credentials(request.headers.get("Authorization"))
            expected = self.basic_auth.get(cp_id)
            if credentials is None or expected is None or credentials != (cp_id, expected):
                response = connection.respond(HTTPStatus.UNAUTHORIZED, "wrong credentials\n")
                response.headers["WWW-Authenticate"] = 'Basic realm="OCPP"'
                return response
        if self.require_client_certificate:
            ssl_object = connection.transport.get_extra_info("ssl_object")
            if ssl_object is None or not ssl_object.getpeercert(binary_form=True):
                return connection.respond(HTTPStatus.UNAUTHORIZED, "client certificate needed\n")
        return None

    async def wait_handshakes(self, count: int, timeout_s: float = 10.0) -> list[Handshake]:
        """Wait until at least ``count`` handshakes were seen; returns them all."""

        def find() -> list[Handshake] | None:
            return list(self.handshakes) if len(self.handshakes) >= count else None

        def explain() -> str:
            return f"{len(self.handshakes)} handshakes within {timeout_s:g}s, not {count}"

        return await self._wait_until(find, timeout_s, explain)

    async def _handle_connection(self, ws: ServerConnection) -> None:
        request = ws.request
        cp_id = self._charge_point_id(request.path) if request is not None else None
        if ws.subprotocol != OCPP16 or cp_id is None:
            # websockets already refuses a handshake without ocpp1.6 (HTTP 400); this is
            # the belt to that pair of braces.
            await ws.close(1002, "OCPP 1.6J requires the ocpp1.6 subprotocol")
            return
        session = _Session(ws, cp_id)
        session.cp = _CsmsChargePoint(cp_id, _ObservedConnection(ws, self, session), self, session)
        previous, self._session = self._session, session
        self.connections += 1
        LOGGER.info("charge point %s connected (connection %d)", cp_id, self.connections)
        if previous is not None and not previous.closed.is_set():
            # One charge point at a time: the newcomer wins, as a CSMS does when a charger
            # reconnects before its old socket timed out.
            self._spawn(previous.ws.close(1001, "replaced by a new connection"))
        self._pulse()
        try:
            await session.cp.start()
        except ConnectionClosed:
            pass
        except Exception:
            LOGGER.exception("charge point %s: connection handler failed", cp_id)
        finally:
            session.closed.set()
            session.fail_pending()
            if self._session is session:
                self._session = None
            LOGGER.info("charge point %s disconnected", cp_id)
            self._pulse()

    # -- hooks used by the connection's ChargePoint ------------------------------------------

    def _before_routing(self, session: _Session, raw: str | bytes) -> str | None:
        """Look at an inbound frame before the library routes it.

        Returns None when the frame was consumed here, "" to let the library route it,
        or a CALL's unique id to route it and then check that a handler recorded it.
        """
        now = time.monotonic()
        frame = _parse_frame(raw)
        if frame is None or len(frame) < 2 or frame[0] not in (_CALL, _CALLRESULT, _CALLERROR):
            self._record_bad(raw, MALFORMED, "malformed", now)
            return None
        unique_id = frame[1] if isinstance(frame[1], str) else None
        if frame[0] == _CALL:
            if (
                unique_id is None
                or len(frame) != 4
                or not isinstance(frame[2], str)
                or not isinstance(frame[3], dict)
            ):
                self._record_bad(raw, MALFORMED, "malformed", now, unique_id or "")
                return None
            action, payload = frame[2], frame[3]
            session.incoming[unique_id] = (action, payload, now)
            self._narrate("in", action, payload)
            return unique_id
        if unique_id is not None:
            future = session.raw_by_id.pop(unique_id, None)
            if future is not None:
                action_sent = session.raw_actions.get(unique_id)
                self._narrate("in", _reply_name(action_sent, frame), _reply_payload(frame))
                if not future.done():
                    future.set_result(frame)
                return None
            own_action = session.own_calls.get(unique_id)
            if own_action is not None:
                self._narrate("in", _reply_name(own_action, frame), _reply_payload(frame))
                return ""
        # A reply to none of our ids (possibly with a non-string id, the answer to a raw
        # frame whose id could not be read) goes to the oldest raw send still waiting.
        while session.raw_anonymous:
            future = session.raw_anonymous.popleft()
            if not future.done():
                self._narrate("in", _reply_name(None, frame), _reply_payload(frame))
                future.set_result(frame)
                return None
        # Not handed to the library: it would sit in its response queue and be mistaken
        # for the answer to our next call.
        self._record_bad(raw, UNSOLICITED, "unsolicited", now, str(frame[1]))
        return None

    def _after_routing(self, session: _Session, unique_id: str) -> None:
        pending = session.incoming.pop(unique_id, None)
        error = session.answered_errors.pop(unique_id, None)
        if pending is not None:
            # No handler recorded it: the library refused the CALL before dispatching it.
            action, payload, received_at = pending
            self._append(
                ReceivedMessage(action, payload, unique_id, received_at, error or "NoReply")
            )
        elif error is not None:
            # The handler ran, but our answer failed validation and became a CALLERROR.
            for message in reversed(self.received):
                if message.unique_id == unique_id:
                    message.error = error
                    break

    def _record_handled(self, session: _Session, unique_id: str) -> None:
        pending = session.incoming.pop(unique_id, None)
        if pending is None:
            LOGGER.error("handled a CALL %s that was never seen arriving", unique_id)
            return
        action, payload, received_at = pending
        self._append(ReceivedMessage(action, payload, unique_id, received_at))

    def _observe_outgoing(self, session: _Session, message: str) -> None:
        frame = _parse_frame(message)
        if frame is None or len(frame) < 3 or not isinstance(frame[1], str):
            return
        kind, unique_id = frame[0], frame[1]
        if kind == _CALL:
            self._narrate("out", str(frame[2]), frame[3] if len(frame) > 3 else {})
            return
        pending = session.incoming.get(unique_id)
        action = pending[0] if pending is not None else None
        if action is None:
            # The handler has already recorded the CALL this answers.
            for received in reversed(self.received):
                if received.unique_id == unique_id:
                    action = received.action
                    break
        if kind == _CALLERROR:
            session.answered_errors[unique_id] = str(frame[2])
        self._narrate("out", _reply_name(action, frame), _reply_payload(frame))

    def _next_boot_response(self) -> tuple[str, int]:
        index = min(self.boot_count, len(self.boot_responses) - 1)
        self.boot_count += 1
        return self.boot_responses[index]

    def _id_tag_info(self, id_tag: str) -> Any:
        status = self.id_tag_status.get(id_tag, self.default_id_tag_status)
        return datatypes.IdTagInfo(
            status=AuthorizationStatus(status),
            parent_id_tag=self.id_tag_parent.get(id_tag),
            expiry_date=self.id_tag_expiry.get(id_tag),
        )

    @staticmethod
    def _take(counts: dict[str, int], action: str) -> bool:
        remaining = counts.get(action, 0)
        if remaining == 0:
            return False
        if remaining > 0:
            counts[action] = remaining - 1
        return True

    def _new_transaction(self, id_tag: str) -> int:
        transaction_id = self._next_transaction_id
        self._next_transaction_id += 1
        self.transaction_ids[transaction_id] = id_tag
        return transaction_id

    # -- internals -------------------------------------------------------------------------

    def _require_session(self) -> _Session:
        session = self._session
        if session is None or session.closed.is_set():
            raise ConnectionError("no charge point is connected to the bench CSMS")
        return session

    def _record_bad(
        self,
        raw: str | bytes,
        action: str,
        error: str,
        received_at: float,
        unique_id: str = "",
    ) -> None:
        text = raw if isinstance(raw, str) else raw.decode("utf-8", "replace")
        LOGGER.warning("%s frame from the charge point: %.200s", error, text)
        self._narrate("in", action, {"raw": text})
        self._append(ReceivedMessage(action, {"raw": text}, unique_id, received_at, error))

    def _append(self, message: ReceivedMessage) -> None:
        self.received.append(message)
        self._pulse()

    def _pulse(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_until(
        self, find: Callable[[], _T | None], timeout_s: float, explain: Callable[[], str]
    ) -> _T:
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    changed = self._changed
                    found = find()
                    if found is not None:
                        return found
                    await changed.wait()
        except TimeoutError:
            raise TimeoutError(explain()) from None

    def _narrate(self, direction: str, action: str, payload: dict[str, Any]) -> None:
        callback = self.on_message
        if callback is None:
            return
        try:
            callback(direction, action, payload)
        except Exception:
            # A broken narrator must not break the CSMS under test.
            LOGGER.exception("on_message callback failed")

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(self._quietly(coro))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @staticmethod
    async def _quietly(coro: Any) -> None:
        try:
            await coro
        except Exception:
            LOGGER.debug("background task failed", exc_info=True)


async def _cancel_quietly(*tasks: asyncio.Future[Any]) -> None:
    pending = [t for t in tasks if not t.done()]
    for task in pending:
        task.cancel()
    # Gather everything so that no "exception was never retrieved" warning escapes.
    await asyncio.gather(*tasks, return_exceptions=True)
