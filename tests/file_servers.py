"""Real file servers on loopback for the firmware and diagnostics tests: an HTTP server whose
files can be made to fail, truncate or stall, and a small FTP server (passive mode)."""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@dataclass
class Served:
    """One file the HTTP server offers, and how it misbehaves."""

    body: bytes
    # HTTP statuses to answer, one per request, before the file is served (e.g. [500, 404]).
    failures: list[int] = field(default_factory=list)
    # Requests that announce the whole length but send only this many bytes, then close.
    truncations: list[int] = field(default_factory=list)
    # Per request, until used up: send half of the body, wait for the event, send the rest.
    stalls: list[threading.Event] = field(default_factory=list)
    # Per request, until used up: wait for the event before answering at all.
    holds: list[threading.Event] = field(default_factory=list)
    hits: int = 0


@dataclass
class Upload:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class HttpFiles:
    """``http://127.0.0.1:<port>/<name>``: GET the files in :attr:`files`, PUT or POST
    anything (recorded in :attr:`uploads`, answered with :attr:`upload_status`)."""

    def __init__(self) -> None:
        self.files: dict[str, Served] = {}
        self.uploads: list[Upload] = []
        self.upload_statuses: list[int] = []  # per upload request, then 201
        self.upload_attempts = 0
        # Set once a stalled response has sent its first half.
        self.stalled = threading.Event()
        self._released: list[threading.Event] = []
        self._lock = threading.Lock()
        files = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass  # the test output stays readable

            def do_GET(self) -> None:
                served = files.files.get(self.path)
                if served is None:
                    self.send_error(404)
                    return
                with files._lock:
                    hold = served.holds.pop(0) if served.holds else None
                if hold is not None:
                    hold.wait(30)
                with files._lock:
                    served.hits += 1
                    failure = served.failures.pop(0) if served.failures else None
                    cut = served.truncations.pop(0) if served.truncations else None
                    stall = served.stalls.pop(0) if served.stalls else None
                if failure is not None:
                    self.send_error(failure)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(served.body)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                if cut is not None:
                    self.wfile.write(served.body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if stall is not None:
                    half = len(served.body) // 2
                    self.wfile.write(served.body[:half])
                    self.wfile.flush()
                    files.stalled.set()
                    stall.wait(30)
                    self.wfile.write(served.body[half:])
                    return
                self.wfile.write(served.body)

            def _receive(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                with files._lock:
                    files.upload_attempts += 1
                    status = files.upload_statuses.pop(0) if files.upload_statuses else 201
                    if status < 300:
                        files.uploads.append(
                            Upload(self.command, self.path, dict(self.headers), body)
                        )
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_PUT = _receive
            do_POST = _receive

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        # A short poll: shutdown() waits for it, once per test.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}"

    def serve(self, name: str, body: bytes, **behaviour: object) -> Served:
        served = Served(body, **behaviour)  # type: ignore[arg-type]
        self._released.extend(served.stalls + served.holds)
        self.files["/" + name.lstrip("/")] = served
        return served

    def start(self) -> HttpFiles:
        self._thread.start()
        return self

    def stop(self) -> None:
        for stall in self._released:
            stall.set()
        self._server.shutdown()
        self._server.server_close()


@contextlib.contextmanager
def http_files() -> Iterator[HttpFiles]:
    server = HttpFiles().start()
    try:
        yield server
    finally:
        server.stop()


def refused_url(path: str = "firmware.whl") -> str:
    """An http:// URL on a loopback port nobody listens on (connection refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/{path}"


class FtpFiles:
    """A minimal FTP server over one directory: USER/PASS (any, or the one set), TYPE, PASV,
    SIZE, RETR, STOR, CWD, PWD, QUIT. Enough for ftplib in passive binary mode."""

    def __init__(self, root: Path, *, user: str | None = None, password: str | None = None):
        self.root = root
        self.user = user
        self.password = password
        self.stored: dict[str, bytes] = {}
        # Files whose RETR sends only this many bytes (SIZE still says the whole length).
        self.truncate: dict[str, int] = {}
        files = self

        class Handler(socketserver.StreamRequestHandler):
            def reply(self, line: str) -> None:
                self.wfile.write((line + "\r\n").encode())
                self.wfile.flush()

            def handle(self) -> None:
                cwd = ""
                passive: socket.socket | None = None
                user = ""
                self.reply("220 test FTP")
                while raw := self.rfile.readline():
                    command, _, argument = raw.decode().strip().partition(" ")
                    command = command.upper()
                    if command == "USER":
                        user = argument
                        self.reply("331 password please")
                    elif command == "PASS":
                        ok = files.user is None or (user, argument) == (files.user, files.password)
                        self.reply("230 logged in" if ok else "530 login incorrect")
                    elif command == "TYPE":
                        self.reply("200 type set")
                    elif command == "PWD":
                        self.reply(f'257 "/{cwd}"')
                    elif command == "CWD":
                        cwd = argument.strip("/")
                        self.reply("250 ok")
                    elif command == "PASV":
                        passive = socket.create_server(("127.0.0.1", 0))
                        high, low = divmod(passive.getsockname()[1], 256)
                        self.reply(f"227 Entering Passive Mode (127,0,0,1,{high},{low})")
                    elif command == "SIZE":
                        path = files.root / argument
                        if path.is_file():
                            self.reply(f"213 {path.stat().st_size}")
                        else:
                            self.reply("550 no such file")
                    elif command in ("RETR", "STOR") and passive is not None:
                        self._transfer(command, argument, cwd, passive)
                        passive = None
                    elif command == "QUIT":
                        self.reply("221 bye")
                        return
                    else:
                        self.reply("502 not implemented")

            def _transfer(self, command: str, argument: str, cwd: str, passive: socket.socket):
                with passive:
                    if command == "RETR":
                        path = files.root / argument
                        if not path.is_file():
                            self.reply("550 no such file")
                            return
                        self.reply("150 sending")
                        data, _ = passive.accept()
                        body = path.read_bytes()
                        with data:
                            data.sendall(body[: files.truncate.get(argument, len(body))])
                        self.reply("226 done")
                        return
                    self.reply("150 receiving")
                    data, _ = passive.accept()
                    chunks = []
                    with data:
                        while block := data.recv(65536):
                            chunks.append(block)
                    files.stored[f"{cwd}/{argument}".lstrip("/")] = b"".join(chunks)
                    self.reply("226 stored")

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        # A short poll: shutdown() waits for it, once per test.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    def url(self, path: str) -> str:
        credentials = f"{self.user}:{self.password}@" if self.user else ""
        return f"ftp://{credentials}127.0.0.1:{self.port}/{path.lstrip('/')}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
