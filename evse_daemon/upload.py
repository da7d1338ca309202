"""File upload to a location a CSMS names (GetLog.req's remoteLocation): HTTP or HTTPS PUT.

The upload is blocking (``urllib``): run it in a worker thread. The outcome is the OCPP
UploadLogStatusEnumType value that describes it best (N01.FR.10 asks for the most precise).
"""

from __future__ import annotations

import base64
import enum
import ssl
import urllib.error
import urllib.request
from urllib.parse import quote, unquote, urlsplit, urlunsplit

__all__ = ("SUPPORTED_SCHEMES", "UploadStatus", "put_file", "target_url")

SUPPORTED_SCHEMES = frozenset({"http", "https"})


class UploadStatus(enum.StrEnum):
    UPLOADED = "Uploaded"
    UPLOAD_FAILURE = "UploadFailure"
    PERMISSION_DENIED = "PermissionDenied"
    BAD_MESSAGE = "BadMessage"
    NOT_SUPPORTED_OPERATION = "NotSupportedOperation"


def target_url(location: str, filename: str) -> str:
    """Where the file goes: a location whose path ends in ``/`` (or is empty) is a directory
    and gets the file name appended; any other names the file itself."""
    parts = urlsplit(location)
    path = parts.path
    if path == "" or path.endswith("/"):
        path = (path or "/") + quote(filename)
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def put_file(
    url: str,
    data: bytes,
    *,
    content_type: str = "text/plain; charset=utf-8",
    ssl_context: ssl.SSLContext | None = None,
    timeout_s: float = 60.0,
) -> UploadStatus:
    """PUT ``data`` at ``url``; a user and password in the URL go in a Basic header."""
    parts = urlsplit(url)
    if parts.scheme not in SUPPORTED_SCHEMES:
        return UploadStatus.NOT_SUPPORTED_OPERATION
    headers = {"Content-Type": content_type}
    netloc = parts.netloc
    if parts.username is not None:
        secret = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(secret.encode()).decode("ascii")
        netloc = netloc.rsplit("@", 1)[1]
    request = urllib.request.Request(
        urlunsplit((parts.scheme, netloc, parts.path, parts.query, "")),
        data=data,
        method="PUT",
        headers=headers,
    )
    # No proxy from the environment: the daemon's traffic goes where the CSMS said, as its
    # websocket does (proxy=None there too).
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ssl_context)
    )
    try:
        with opener.open(request, timeout=timeout_s) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        return _status_of(exc.code)
    except (urllib.error.URLError, OSError, ValueError):
        return UploadStatus.UPLOAD_FAILURE
    return UploadStatus.UPLOADED


def _status_of(http_status: int) -> UploadStatus:
    if http_status in (401, 403):
        return UploadStatus.PERMISSION_DENIED
    if http_status in (405, 501):
        return UploadStatus.NOT_SUPPORTED_OPERATION
    if http_status == 400:
        return UploadStatus.BAD_MESSAGE
    return UploadStatus.UPLOAD_FAILURE
