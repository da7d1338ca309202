"""OCPP-J 1.6 RPC framing: inbound frames checked before the ``ocpp`` library sees them.

The ``ocpp`` library logs and drops frames it cannot parse, answers schema violations with the
2.0.1 spelling ``FormatViolation``, and swaps NotImplemented and NotSupported relative to the
OCPP-J 1.6 table (§4.2.3: NotImplemented = "Requested Action is not known by receiver",
NotSupported = "Requested Action is recognized but not supported by the receiver"). This
module decides, for every inbound frame, which CALLERROR OCPP-J 1.6 names, so the charger
answers a malformed frame instead of silently ignoring it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft4Validator
from jsonschema.exceptions import ValidationError
from ocpp.v16.enums import Action

MAX_MESSAGE_ID_LENGTH = 36
# A frame larger than this is answered with GenericError instead of being parsed; the
# websocket layer drops frames past its own (larger) max_size with close code 1009.
MAX_FRAME_BYTES = 256 * 1024
# Where a frame is too broken to carry a message id, the reply uses this one (OCPP 2.0.1
# part 4 §4.2.3 uses "-1" for the same situation; 1.6 is silent).
UNKNOWN_MESSAGE_ID = "-1"

CALL, CALLRESULT, CALLERROR = 2, 3, 4

_ID_PATTERN = re.compile(r'^\s*\[\s*\d+\s*,\s*"((?:[^"\\]|\\.){1,36})"')


@dataclass(frozen=True, slots=True)
class FrameError:
    """A CALLERROR to send back."""

    message_id: str
    error_code: str
    description: str
    details: dict[str, Any]

    def to_json(self) -> str:
        return json.dumps(
            [CALLERROR, self.message_id, self.error_code, self.description, self.details],
            separators=(",", ":"),
        )


@dataclass(frozen=True, slots=True)
class InboundCall:
    message_id: str
    action: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class InboundReply:
    """A CALLRESULT or CALLERROR: handed to the library, which matches it to our CALL."""

    message_id: str
    raw: str


@dataclass(frozen=True, slots=True)
class Ignored:
    reason: str


Inbound = InboundCall | InboundReply | FrameError | Ignored

# CSMS-to-charge-point actions of OCPP 1.6 (and the security whitepaper), so that an action
# sent in the wrong direction is "recognized but not supported" rather than unknown.
KNOWN_ACTIONS = frozenset(a.value for a in Action)


def _best_effort_id(text: str) -> str:
    match = _ID_PATTERN.match(text)
    return match.group(1) if match else UNKNOWN_MESSAGE_ID


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_inbound(frame: str | bytes, handled_actions: frozenset[str]) -> Inbound:
    """Classify one websocket frame; CALLs are schema-checked against OCPP 1.6."""
    if isinstance(frame, bytes):
        # OCPP-J carries text frames only (§3: "the message is sent as a text frame").
        text = frame.decode("utf-8", errors="replace")
        return FrameError(
            _best_effort_id(text), "FormationViolation", "OCPP-J frames must be text frames", {}
        )
    if len(frame.encode("utf-8", errors="replace")) > MAX_FRAME_BYTES:
        return FrameError(
            _best_effort_id(frame[:200]),
            "GenericError",
            f"frame larger than {MAX_FRAME_BYTES} bytes",
            {},
        )
    try:
        # Decimal keeps schema limits like ``multipleOf: 0.1`` exact (16.1 is not a float
        # multiple of 0.1); the schemas are loaded the same way. NaN and Infinity are not
        # JSON (RFC 8259), though Python's parser accepts them by default.
        message = json.loads(frame, parse_float=Decimal, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return FrameError(_best_effort_id(frame), "FormationViolation", "frame is not JSON", {})
    if not isinstance(message, list) or not message:
        return FrameError(
            UNKNOWN_MESSAGE_ID, "FormationViolation", "frame is not a non-empty JSON array", {}
        )
    type_id = message[0]
    message_id = message[1] if len(message) > 1 else None
    reply_id = (
        message_id
        if isinstance(message_id, str) and 0 < len(message_id) <= MAX_MESSAGE_ID_LENGTH
        else UNKNOWN_MESSAGE_ID
    )
    if isinstance(type_id, bool) or type_id not in (CALL, CALLRESULT, CALLERROR):
        # §4.1.3: an unknown message type's payload is ignored; we still say why.
        return FrameError(reply_id, "FormationViolation", f"unknown MessageTypeId {type_id!r}", {})
    if not isinstance(message_id, str):
        return FrameError(UNKNOWN_MESSAGE_ID, "FormationViolation", "UniqueId must be a string", {})
    if not message_id or len(message_id) > MAX_MESSAGE_ID_LENGTH:
        return FrameError(
            UNKNOWN_MESSAGE_ID,
            "FormationViolation",
            f"UniqueId must be 1 to {MAX_MESSAGE_ID_LENGTH} characters",
            {},
        )
    if type_id == CALLRESULT:
        if len(message) != 3 or not isinstance(message[2], dict | None):
            return Ignored("malformed CALLRESULT")
        return InboundReply(message_id, frame)
    if type_id == CALLERROR:
        if len(message) != 5 or not all(isinstance(m, str) for m in message[2:4]):
            return Ignored("malformed CALLERROR")
        return InboundReply(message_id, frame)
    # CALL
    if len(message) != 4:
        return FrameError(
            message_id,
            "FormationViolation",
            f"a CALL has 4 elements, this one has {len(message)}",
            {},
        )
    action, payload = message[2], message[3]
    if not isinstance(action, str):
        return FrameError(message_id, "FormationViolation", "Action must be a string", {})
    if action not in KNOWN_ACTIONS:
        return FrameError(message_id, "NotImplemented", f"unknown action {action!r}", {})
    if action not in handled_actions:
        return FrameError(
            message_id, "NotSupported", f"{action} is not supported by this charge point", {}
        )
    if payload is None:
        payload = {}  # §4.2.1 allows null for an empty payload
    if not isinstance(payload, dict):
        return FrameError(message_id, "FormationViolation", "payload must be a JSON object", {})
    error = _schema_error(action, payload)
    if error is not None:
        code, description, details = error
        return FrameError(message_id, code, description, details)
    return InboundCall(message_id, action, payload)


# jsonschema keyword → OCPP-J 1.6 error code.
_KEYWORD_CODES = {
    "required": "ProtocolError",  # "Payload for Action is incomplete"
    "additionalProperties": "FormationViolation",  # not conform the PDU structure
    "type": "TypeConstraintViolation",
    # OCPP's string types carry their length (CiString20Type), so too long is a type error.
    "maxLength": "TypeConstraintViolation",
    "minItems": "OccurenceConstraintViolation",
    "maxItems": "OccurenceConstraintViolation",
    "uniqueItems": "OccurenceConstraintViolation",
}


@cache
def _validator(action: str) -> Draft4Validator:
    # Our own cache: the library's caches one validator per action whichever float parser
    # built it first.
    schema = resources.files("ocpp.v16").joinpath(f"schemas/{action}.json")
    return Draft4Validator(json.loads(schema.read_text("utf-8-sig"), parse_float=Decimal))


def _schema_error(action: str, payload: dict[str, Any]) -> tuple[str, str, dict[str, Any]] | None:
    try:
        validator = _validator(action)
    except (OSError, ValueError):
        return ("NotSupported", f"no schema for {action}", {})
    errors = sorted(validator.iter_errors(payload), key=_error_rank)
    if not errors:
        return None
    first: ValidationError = errors[0]
    code = _KEYWORD_CODES.get(str(first.validator), "PropertyConstraintViolation")
    where = "/".join(str(p) for p in first.absolute_path) or "payload"
    return (code, f"{where}: {first.message}"[:200], {"field": where})


def _error_rank(error: ValidationError) -> int:
    # Report the most structural problem first: a missing field before a bad value.
    order = ["required", "additionalProperties", "type"]
    keyword = str(error.validator)
    return order.index(keyword) if keyword in order else len(order)
