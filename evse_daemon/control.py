"""The daemon's control socket: a Unix stream socket speaking one JSON object per line.

``evsectl`` (and the tests) send ``{"cmd": ...}`` requests; the daemon answers each with
``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "<one-line reason>"}``. The
server validates the shape of the commands it knows before the handler sees them, so the
handler can trust field types and a malformed request can never take the daemon down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import stat
import time
from collections.abc import Callable, Collection, Mapping
from types import MappingProxyType
from typing import Any, Protocol

__all__ = [
    "DEFAULT_SOCKET_PATH",
    "MAX_REQUEST_BYTES",
    "ControlError",
    "ControlHandler",
    "ControlServer",
    "request",
    "request_async",
]

LOGGER = logging.getLogger(__name__)

DEFAULT_SOCKET_PATH = "/run/evse-daemon/control.sock"

#: A request line longer than this is refused; it bounds the memory one client can pin.
MAX_REQUEST_BYTES = 64 * 1024

#: Responses can be larger than requests (a status of many connectors) but must stay bounded
#: so that a confused peer cannot make the client buffer forever.
MAX_RESPONSE_BYTES = 16 * 1024 * 1024

_READ_CHUNK = 64 * 1024
_PROBE_TIMEOUT_S = 1.0
_MAX_TAG_LEN = 20  # OCPP 1.6 IdToken is CiString20Type
_MAX_KIND_LEN = 64
_EV_STATES = frozenset({"A", "B", "C", "D", "E", "F"})


class ControlError(Exception):
    """A refused request or a control-socket failure; ``str()`` is the one-line reason."""

    def __init__(self, message: str) -> None:
        super().__init__(_one_line(message) or "request refused")

    @property
    def message(self) -> str:
        return str(self.args[0])


class ControlHandler(Protocol):
    async def handle_control(self, request: dict[str, Any]) -> Any:
        """Execute a validated request and return its JSON-serialisable result.

        Raise :class:`ControlError` to refuse the request with a reason for the client.
        """
        ...


def _one_line(text: str) -> str:
    # The reason is printed by evsectl as a single line, and a newline inside the JSON
    # string would still be one protocol line, but a multi-line message on a terminal
    # would not be.
    return " ".join(text.split())


# --------------------------------------------------------------------------- validation


def _require_connector(req: Mapping[str, Any]) -> int:
    value = req.get("connector")
    # bool is a subclass of int; `true` as a connector is a client bug, not connector 1.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ControlError("'connector' must be an integer >= 1")
    if value < 1:
        raise ControlError(f"'connector' must be an integer >= 1, got {value}")
    return value


def _require_kind(req: Mapping[str, Any]) -> str:
    value = req.get("kind")
    if not isinstance(value, str) or not value.strip():
        raise ControlError("'kind' must be a non-empty string")
    if len(value) > _MAX_KIND_LEN:
        raise ControlError(f"'kind' must be at most {_MAX_KIND_LEN} characters")
    return value.strip()


def _validate_connector_only(req: dict[str, Any]) -> dict[str, Any]:
    req["connector"] = _require_connector(req)
    return req


def _validate_ev(req: dict[str, Any]) -> dict[str, Any]:
    req["connector"] = _require_connector(req)
    value = req.get("state")
    if isinstance(value, str):
        if value.upper() in _EV_STATES:
            req["state"] = value.upper()
            return req
        if value.lower() == "auto":
            req["state"] = "auto"
            return req
    raise ControlError("'state' must be one of A, B, C, D, E, F or auto")


def _validate_swipe(req: dict[str, Any]) -> dict[str, Any]:
    value = req.get("tag")
    if not isinstance(value, str) or not value:
        raise ControlError("'tag' must be a non-empty string")
    if len(value) > _MAX_TAG_LEN:
        raise ControlError(f"'tag' must be at most {_MAX_TAG_LEN} characters (OCPP idTag)")
    if not value.isprintable() or value != value.strip():
        raise ControlError("'tag' must be printable without surrounding whitespace")
    return req


def _validate_fault(req: dict[str, Any]) -> dict[str, Any]:
    req["connector"] = _require_connector(req)
    req["kind"] = _require_kind(req)
    return req


_BRINGUP_PARTS = frozenset({"pilot", "contactor", "lock", "meter", "rfid", "rcd"})


def _validate_bringup(req: dict[str, Any]) -> dict[str, Any]:
    if req.get("part") not in _BRINGUP_PARTS:
        raise ControlError(f"'part' must be one of {', '.join(sorted(_BRINGUP_PARTS))}")
    if req.get("connector") is not None:
        req["connector"] = _require_connector(req)
    wait_s = req.get("wait_s")
    if wait_s is not None and (
        not isinstance(wait_s, int | float) or isinstance(wait_s, bool) or not 0 < wait_s <= 600
    ):
        raise ControlError("'wait_s' must be a number of seconds between 0 and 600")
    return req


_DEBUG_ACTIONS = frozenset({"stall-safety-loop"})
#: The longest a bench may stall the safety loop; 0 releases it.
MAX_STALL_S = 600


def _validate_debug(req: dict[str, Any]) -> dict[str, Any]:
    if req.get("what") not in _DEBUG_ACTIONS:
        raise ControlError(f"'what' must be one of {', '.join(sorted(_DEBUG_ACTIONS))}")
    seconds = req.get("seconds")
    if (
        not isinstance(seconds, int | float)
        or isinstance(seconds, bool)
        or not 0 <= seconds <= MAX_STALL_S
    ):
        raise ControlError(f"'seconds' must be a number of seconds between 0 and {MAX_STALL_S}")
    return req


def _validate_nothing(req: dict[str, Any]) -> dict[str, Any]:
    return req


_Validator = Callable[[dict[str, Any]], dict[str, Any]]

#: Known commands and the shape check each gets before the handler sees it. Read-only so
#: that no server can change what another one accepts.
KNOWN_COMMANDS: Mapping[str, _Validator] = MappingProxyType(
    {
        "status": _validate_nothing,
        "plug": _validate_connector_only,
        "unplug": _validate_connector_only,
        "ev": _validate_ev,
        "swipe": _validate_swipe,
        "fault": _validate_fault,
        "clear": _validate_fault,
        "bringup": _validate_bringup,
        "debug": _validate_debug,
    }
)


def _error(message: str) -> dict[str, Any]:
    return {"ok": False, "error": _one_line(message) or "request refused"}


# --------------------------------------------------------------------------- server


class ControlServer:
    """Serves the control socket; one asyncio task per client connection.

    ``extra_commands`` names further commands that are passed to the handler without a
    shape check (the handler validates them), so that new bring-up commands need no
    change here.
    """

    def __init__(
        self,
        path: str,
        handler: ControlHandler,
        *,
        extra_commands: Collection[str] = (),
    ) -> None:
        self._path = path
        self._handler = handler
        self._extra_commands = frozenset(extra_commands)
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()
        # (st_dev, st_ino) of the socket file we bound, so close() never deletes a socket
        # that another daemon created at the same path after us.
        self._bound_identity: tuple[int, int] | None = None

    @property
    def path(self) -> str:
        return self._path

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("control server already started")
        path = self._path
        await asyncio.to_thread(_prepare_directory, path)
        if await _someone_listens(path):
            raise ControlError(f"another daemon is listening on {path}")
        # The file, if any, is a leftover of a daemon that died without cleaning up.
        await asyncio.to_thread(_remove_stale_socket, path)
        try:
            self._server = await asyncio.start_unix_server(
                self._on_client, path=path, limit=_READ_CHUNK
            )
        except OSError as exc:
            raise ControlError(f"cannot listen on {path}: {exc.strerror or exc}") from exc
        try:
            # 0660: the group owning the directory's socket may use evsectl, others not.
            self._bound_identity = await asyncio.to_thread(_chmod_and_identify, path)
        except OSError as exc:
            await self.close()
            raise ControlError(f"cannot set permissions on {path}: {exc.strerror or exc}") from exc
        LOGGER.info("control socket listening on %s", path)

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        # On Python >= 3.12 Server.wait_closed() waits for every client connection, and an
        # idle evsectl session would hold shutdown hostage: end client tasks first.
        clients = list(self._clients)
        for task in clients:
            task.cancel()
        if clients:
            await asyncio.gather(*clients, return_exceptions=True)
        await server.wait_closed()
        identity, self._bound_identity = self._bound_identity, None
        if identity is not None:
            await asyncio.to_thread(_remove_if_ours, self._path, identity)
        LOGGER.info("control socket %s closed", self._path)

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if self._server is None or task is None:
            # Accepted just before close() but started after it: close() cannot see it.
            writer.close()
            return
        self._clients.add(task)
        try:
            await self._serve_client(reader, writer)
        except ConnectionError:
            # The client went away mid-answer; nothing to tell anyone.
            pass
        except asyncio.CancelledError:
            # Cancelled by close(): end normally, since Python 3.11's stream server logs
            # "Exception in callback" for a client task that ends cancelled.
            if self._server is not None:
                raise
        except Exception:
            LOGGER.exception("control client failed")
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        # Lines are split by hand rather than with readline(): after readline() hits its
        # limit the rest of the over-long line would be parsed as further requests.
        buf = bytearray()
        discarding = False
        while True:
            chunk = await reader.read(_READ_CHUNK)
            if not chunk:
                # A last request without a newline (e.g. `printf ... | nc -U`) still counts.
                if buf and not discarding and buf.strip():
                    await self._answer(writer, bytes(buf))
                return
            buf += chunk
            while True:
                newline = buf.find(b"\n")
                if newline < 0:
                    if len(buf) > MAX_REQUEST_BYTES:
                        if not discarding:
                            await self._send(
                                writer,
                                _error(f"request longer than {MAX_REQUEST_BYTES} bytes"),
                            )
                            discarding = True
                        buf.clear()
                    break
                line = bytes(buf[:newline])
                del buf[: newline + 1]
                if discarding:
                    # This was the tail of the over-long line, already answered.
                    discarding = False
                    continue
                if len(line) > MAX_REQUEST_BYTES:
                    await self._send(
                        writer, _error(f"request longer than {MAX_REQUEST_BYTES} bytes")
                    )
                    continue
                if not line.strip():
                    continue
                await self._answer(writer, line)

    async def _answer(self, writer: asyncio.StreamWriter, line: bytes) -> None:
        await self._send(writer, await self._dispatch(line))

    async def _send(self, writer: asyncio.StreamWriter, response: dict[str, Any]) -> None:
        try:
            data = json.dumps(response, allow_nan=False, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            LOGGER.error("control result is not JSON serialisable: %r", response.get("result"))
            data = json.dumps(_error(f"internal error: {type(exc).__name__}"))
        writer.write(data.encode("utf-8") + b"\n")
        await writer.drain()

    async def _dispatch(self, line: bytes) -> dict[str, Any]:
        try:
            req = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            return _error("invalid request: not UTF-8")
        except ValueError as exc:
            return _error(f"invalid JSON: {exc}")
        except RecursionError:
            return _error("invalid JSON: nested too deeply")
        if not isinstance(req, dict):
            return _error("invalid request: expected a JSON object")
        cmd = req.get("cmd")
        if not isinstance(cmd, str) or not cmd:
            return _error("invalid request: missing 'cmd'")
        validator = KNOWN_COMMANDS.get(cmd)
        if validator is None and cmd not in self._extra_commands:
            return _error(f"unknown command {cmd!r}")
        try:
            if validator is not None:
                req = validator(req)
            result = await self._handler.handle_control(req)
        except ControlError as exc:
            return _error(str(exc))
        except Exception as exc:
            LOGGER.exception("control command %r failed", cmd)
            return _error(f"internal error: {type(exc).__name__}")
        return {"ok": True, "result": result}


def _prepare_directory(path: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, mode=0o755, exist_ok=True)


async def _someone_listens(path: str) -> bool:
    try:
        async with asyncio.timeout(_PROBE_TIMEOUT_S):
            _reader, writer = await asyncio.open_unix_connection(path)
    except (FileNotFoundError, ConnectionRefusedError):
        return False
    except TimeoutError:
        # A listener that accepts nothing within the probe time is still a listener: a
        # full backlog of a hung daemon must not let us steal its socket.
        return True
    except PermissionError as exc:
        raise ControlError(f"cannot check {path}: permission denied") from exc
    except OSError as exc:
        raise ControlError(f"cannot check {path}: {exc.strerror or exc}") from exc
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return True


def _remove_stale_socket(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        # Never delete something we did not create, e.g. a mistyped path to a real file.
        raise ControlError(f"{path} exists and is not a socket")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    LOGGER.info("removed stale control socket %s", path)


def _chmod_and_identify(path: str) -> tuple[int, int]:
    os.chmod(path, 0o660)
    st = os.lstat(path)
    return (st.st_dev, st.st_ino)


def _remove_if_ours(path: str, identity: tuple[int, int]) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if (st.st_dev, st.st_ino) == identity:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


# --------------------------------------------------------------------------- clients


def _encode_request(req: Mapping[str, Any]) -> bytes:
    return json.dumps(dict(req), separators=(",", ":")).encode("utf-8") + b"\n"


def _decode_response(data: bytes) -> dict[str, Any]:
    try:
        response = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise ControlError("invalid response from daemon: not JSON") from exc
    if not isinstance(response, dict) or not isinstance(response.get("ok"), bool):
        raise ControlError("invalid response from daemon: no 'ok' field")
    return response


def _connect_error(path: str, exc: OSError) -> ControlError:
    if isinstance(exc, FileNotFoundError):
        return ControlError(f"daemon not running (no control socket at {path})")
    if isinstance(exc, ConnectionRefusedError):
        return ControlError(f"daemon not running (nothing listens on {path})")
    if isinstance(exc, PermissionError):
        return ControlError(
            f"permission denied on {path} (run as root or as a member of the socket's group)"
        )
    return ControlError(f"cannot connect to {path}: {exc.strerror or exc}")


def _timeout_error(path: str, timeout_s: float) -> ControlError:
    return ControlError(f"no answer from the daemon at {path} within {timeout_s:g}s")


async def request_async(
    path: str, request: dict[str, Any], timeout_s: float = 5.0
) -> dict[str, Any]:
    """Send one request and return the daemon's response object (``ok`` true or false).

    Raises :class:`ControlError` when the daemon cannot be reached or answers garbage.
    """
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout_s):
            try:
                reader, writer = await asyncio.open_unix_connection(path, limit=MAX_RESPONSE_BYTES)
            except OSError as exc:
                raise _connect_error(path, exc) from exc
            writer.write(_encode_request(request))
            await writer.drain()
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.IncompleteReadError as exc:
                raise ControlError("daemon closed the connection without answering") from exc
            except asyncio.LimitOverrunError as exc:
                raise ControlError("invalid response from daemon: too long") from exc
    except TimeoutError as exc:
        raise _timeout_error(path, timeout_s) from exc
    except ConnectionError as exc:
        raise ControlError(f"connection to the daemon lost: {exc.strerror or exc}") from exc
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
    return _decode_response(line)


def request(path: str, request: dict[str, Any], timeout_s: float = 5.0) -> dict[str, Any]:
    """Blocking variant of :func:`request_async` for evsectl (no event loop needed)."""
    deadline = time.monotonic() + timeout_s

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise _timeout_error(path, timeout_s)
        return left

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.settimeout(remaining())
            try:
                sock.connect(path)
            except TimeoutError:
                raise
            except OSError as exc:
                raise _connect_error(path, exc) from exc
            sock.settimeout(remaining())
            sock.sendall(_encode_request(request))
            buf = bytearray()
            while b"\n" not in buf:
                sock.settimeout(remaining())
                chunk = sock.recv(_READ_CHUNK)
                if not chunk:
                    raise ControlError("daemon closed the connection without answering")
                buf += chunk
                if len(buf) > MAX_RESPONSE_BYTES:
                    raise ControlError("invalid response from daemon: too long")
        except TimeoutError as exc:
            raise _timeout_error(path, timeout_s) from exc
        except ConnectionError as exc:
            raise ControlError(f"connection to the daemon lost: {exc.strerror or exc}") from exc
    return _decode_response(bytes(buf[: buf.index(b"\n")]))
