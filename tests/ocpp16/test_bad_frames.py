"""Malformed inbound frames from the CSMS, checked against the OCPP-J 1.6 RPC framework (§4).

Every frame is sent raw by the real CSMS over the real websocket; the charger's answer (if any)
is read off the wire. A GetConfiguration after each frame is both a barrier (the charger handles
frames in order, so any answer to the bad frame arrives before it) and the proof that the
connection survived.

Where OCPP-J 1.6 names no error code for a situation, the expectation is the choice documented
in ``evse_daemon/ocpp16/frames.py``; each such case says so in its comment.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ocpp.v16 import call

from evse_daemon.bench.csms import UNSOLICITED
from tests.harness import Bench, bench

# frames.py: a frame too broken to carry a usable UniqueId is answered with this id (the
# OCPP 2.0.1 convention; 1.6 is silent). A readable id is always echoed (§4.2.3).
NO_ID = "-1"
ID36 = "0123456789abcdef0123456789abcdef0123"  # the longest UniqueId allowed (§4.1.4)
ID37 = ID36 + "4"


@dataclass(frozen=True)
class Case:
    name: str
    frame: str | bytes
    # ("error", unique id, errorCode) | ("result", unique id, payload check) | ("none",)
    expect: tuple[Any, ...]


def _error(name: str, frame: str | bytes, unique_id: str, code: str) -> Case:
    return Case(name, frame, ("error", unique_id, code))


def _result(name: str, frame: str, unique_id: str, payload: dict[str, Any] | None = None) -> Case:
    return Case(name, frame, ("result", unique_id, payload))


def _call(unique_id: Any, action: Any, payload: Any) -> str:
    return json.dumps([2, unique_id, action, payload])


FV = "FormationViolation"
DEEP = 100_000

CASES = [
    # --- not an OCPP-J message at all: §4.1.2 "MUST be valid JSON". OCPP-J names no code for
    # this; frames.py answers FormationViolation ("not conform the PDU structure").
    _error("not JSON", "hello charger", NO_ID, FV),
    # frames.py echoes the id when the start of a broken frame still shows it.
    _error("truncated JSON", '[2,"trunc","GetConfiguration",{', "trunc", FV),
    _error("garbage after the JSON", '[2,"trail","GetConfiguration",{}] x', "trail", FV),
    # NaN and Infinity are not JSON (RFC 8259), though Python's parser accepts them.
    _error("NaN literal", '[2,"nan","UnlockConnector",{"connectorId":NaN}]', "nan", FV),
    _error("Infinity literal", '[2,"inf","UnlockConnector",{"connectorId":Infinity}]', "inf", FV),
    _error(
        "deeply nested JSON",
        '[2,"deep","GetConfiguration",{"key":' + "[" * DEEP + "]" * DEEP + "}]",
        "deep",
        FV,
    ),
    # --- JSON, but not an array: FormationViolation (frames.py).
    _error("JSON object", '{"messageTypeId":2,"uniqueId":"obj"}', NO_ID, FV),
    _error("empty array", "[]", NO_ID, FV),
    _error("number", "42", NO_ID, FV),
    _error("string", '"GetConfiguration"', NO_ID, FV),
    _error("null", "null", NO_ID, FV),
    # --- MessageTypeId not 2/3/4: §4.1.3 says to ignore the payload; frames.py still tells
    # the sender why, with FormationViolation.
    _error("MessageTypeId 9", '[9,"t9","GetConfiguration",{}]', "t9", FV),
    _error("MessageTypeId 0", '[0,"t0","GetConfiguration",{}]', "t0", FV),
    _error("MessageTypeId as string", '["2","ts","GetConfiguration",{}]', "ts", FV),
    _error("MessageTypeId 2.5", '[2.5,"tf","GetConfiguration",{}]', "tf", FV),
    _error("MessageTypeId true", '[true,"tb","GetConfiguration",{}]', "tb", FV),
    # --- UniqueId (§4.1.4: a string of at most 36 characters). An id that cannot be echoed
    # validly gets NO_ID (frames.py).
    _error("UniqueId a number", _call(123, "GetConfiguration", {}), NO_ID, FV),
    _error("UniqueId null", _call(None, "GetConfiguration", {}), NO_ID, FV),
    _error("UniqueId empty", _call("", "GetConfiguration", {}), NO_ID, FV),
    _error("UniqueId 37 characters", _call(ID37, "GetConfiguration", {}), NO_ID, FV),
    # --- CALL structure (§4.2.1: always 4 elements, Action a string).
    _error("CALL with 3 elements", '[2,"c3","GetConfiguration"]', "c3", FV),
    _error("CALL with 5 elements", '[2,"c5","GetConfiguration",{},{}]', "c5", FV),
    _error("Action a number", _call("an", 42, {}), "an", FV),
    # --- Actions (§4.2.3: NotImplemented = not known, NotSupported = known, not supported).
    _error("unknown Action", _call("ua", "FooBar", {}), "ua", "NotImplemented"),
    _error("Action in the wrong case", _call("uc", "getconfiguration", {}), "uc", "NotImplemented"),
    _error("empty Action", _call("ue", "", {}), "ue", "NotImplemented"),
    _error(
        "CP-to-CS action sent to the charger",
        _call("bn", "BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"}),
        "bn",
        "NotSupported",
    ),
    _error(
        "known action not supported",
        _call("rn", "ReserveNow", {}),
        "rn",
        "NotSupported",
    ),
    # --- Payload not an object (§4.2.1: a JSON object, or null for none).
    _error("payload a list", _call("pl", "GetConfiguration", []), "pl", FV),
    _error("payload a string", _call("ps", "GetConfiguration", "key"), "ps", FV),
    _error("payload a number", _call("pn", "GetConfiguration", 7), "pn", FV),
    # --- Schema violations (§4.2.3 error table).
    # "ProtocolError: Payload for Action is incomplete".
    _error(
        "required field missing",
        _call("rq", "ChangeConfiguration", {"key": "HeartbeatInterval"}),
        "rq",
        "ProtocolError",
    ),
    _error("payload empty", _call("re", "UnlockConnector", {}), "re", "ProtocolError"),
    # "TypeConstraintViolation: ... fields violates data type constraints".
    _error(
        "integer as string",
        _call("ts1", "UnlockConnector", {"connectorId": "1"}),
        "ts1",
        "TypeConstraintViolation",
    ),
    _error(
        "integer as decimal",
        _call("ts2", "UnlockConnector", {"connectorId": 1.5}),
        "ts2",
        "TypeConstraintViolation",
    ),
    _error(
        "integer as boolean",
        _call("ts3", "UnlockConnector", {"connectorId": True}),
        "ts3",
        "TypeConstraintViolation",
    ),
    _error(
        "array item of the wrong type",
        _call("ts4", "GetConfiguration", {"key": [1]}),
        "ts4",
        "TypeConstraintViolation",
    ),
    # "FormationViolation: ... not conform the PDU structure" (a field the PDU does not have).
    _error("extra field", _call("xf", "GetConfiguration", {"foo": 1}), "xf", FV),
    # "PropertyConstraintViolation: ... at least one field contains an invalid value".
    _error(
        "bad enum value",
        _call("en", "Reset", {"type": "Medium"}),
        "en",
        "PropertyConstraintViolation",
    ),
    _error(
        "bad enum value (case)",
        _call("en2", "ChangeAvailability", {"connectorId": 1, "type": "operative"}),
        "en2",
        "PropertyConstraintViolation",
    ),
    # Too long for a CiString50Type/CiString500Type: OCPP-J names no code; the length is part
    # of the data type, so frames.py (like the ocpp library) says TypeConstraintViolation.
    _error(
        "key longer than 50",
        _call("tl", "ChangeConfiguration", {"key": "K" * 51, "value": "1"}),
        "tl",
        "TypeConstraintViolation",
    ),
    _error(
        "value longer than 500",
        _call("tl2", "ChangeConfiguration", {"key": "HeartbeatInterval", "value": "1" * 501}),
        "tl2",
        "TypeConstraintViolation",
    ),
    # --- Transport. Larger than 256 KiB (but under the websocket limit of 1 MiB): answered
    # with GenericError instead of being parsed (frames.py).
    _error(
        "frame over 256 KiB",
        _call("big", "DataTransfer", {"vendorId": "x", "data": "a" * (300 * 1024)}),
        "big",
        "GenericError",
    ),
    # OCPP-J carries text frames; a binary frame is refused with FormationViolation
    # (frames.py; OCPP-J 1.6 does not name a code).
    _error("binary frame", b'[2,"bin","GetConfiguration",{}]', "bin", FV),
    # --- Valid after all.
    _result("payload null means {}", _call("nul", "GetConfiguration", None), "nul"),
    _result("UniqueId of 36 characters", _call(ID36, "GetConfiguration", {}), ID36),
    _result("whitespace around the frame", ' \n\t[2,"ws","GetConfiguration",{}] \r\n', "ws"),
    # connectorId < 0: the 1.6 JSON schemas set no minimum (only the PDU tables say > 0 or
    # >= 0), and the OCTT expects a regular answer for a connector that does not exist
    # (TC_027, TC_031, TC_055), not a CALLERROR (§4.2.2: covered by the response definition).
    _result(
        "negative connectorId: UnlockConnector",
        _call("ng1", "UnlockConnector", {"connectorId": -1}),
        "ng1",
        {"status": "NotSupported"},
    ),
    _result(
        "negative connectorId: ChangeAvailability",
        _call("ng2", "ChangeAvailability", {"connectorId": -1, "type": "Inoperative"}),
        "ng2",
        {"status": "Rejected"},
    ),
    _result(
        "negative connectorId: TriggerMessage",
        _call("ng3", "TriggerMessage", {"requestedMessage": "MeterValues", "connectorId": -1}),
        "ng3",
        {"status": "Rejected"},
    ),
    # --- Replies to calls the charger never made: ignored, no answer (§4.1.4, a reply's id
    # must be that of a CALL the charger sent).
    Case("CALLRESULT for an unknown id", '[3,"nobody-1",{"status":"Accepted"}]', ("none",)),
    Case("CALLERROR for an unknown id", '[4,"nobody-2","GenericError","",{}]', ("none",)),
    Case("malformed CALLRESULT", '[3,"nobody-3"]', ("none",)),
]


async def _barrier(b: Bench) -> None:
    result = await b.csms.call(call.GetConfiguration(key=["NumberOfConnectors"]))
    assert result.configuration_key == [
        {"key": "NumberOfConnectors", "readonly": True, "value": "1"}
    ]


def _check(case: Case, replies: list[list[Any]]) -> str | None:
    """None if the replies are what OCPP-J expects for this case, else what is wrong."""
    kind = case.expect[0]
    if kind == "none":
        return None if not replies else f"expected no answer, got {replies}"
    if len(replies) != 1:
        return f"expected one answer, got {replies}"
    (reply,) = replies
    if kind == "error":
        _, unique_id, code = case.expect
        ok = (
            len(reply) == 5
            and reply[0] == 4
            and reply[1] == unique_id
            and reply[2] == code
            and isinstance(reply[3], str)
            and isinstance(reply[4], dict)
        )
        return None if ok else f"expected [4, {unique_id!r}, {code!r}, str, {{}}], got {reply}"
    _, unique_id, payload = case.expect
    ok = len(reply) == 3 and reply[0] == 3 and reply[1] == unique_id and isinstance(reply[2], dict)
    if ok and payload is not None:
        ok = reply[2] == payload
    elif ok:
        ok = bool(reply[2].get("configurationKey"))
    return None if ok else f"expected [3, {unique_id!r}, {payload or '{...}'}], got {reply}"


async def test_bad_inbound_frames_are_answered_per_ocpp_j(tmp_path: Path) -> None:
    async with bench(tmp_path, connectors=1) as b:
        await b.booted()
        assert len({c.name for c in CASES}) == len(CASES) >= 30
        failures = []
        for case in CASES:
            mark = b.csms.mark()
            await b.csms.send_raw(case.frame, expect_reply=False)
            await _barrier(b)
            # Every answer to a raw frame reaches the CSMS as a reply to nothing it sent.
            replies = [
                json.loads(m.payload["raw"])
                for m in b.csms.received[mark:]
                if m.action == UNSOLICITED
            ]
            problem = _check(case, replies)
            if problem is not None:
                failures.append(f"{case.name}: {problem}")
        assert failures == []

        # No crash, no reconnect: still the first websocket connection, still registered once.
        assert b.csms.connections == 1
        assert b.app.adapter.connection_count == 1
        assert not b.task.done()
        assert len(b.csms.messages("BootNotification")) == 1
        # The charger's own calls still work after the stray replies sat in its queue.
        mark = b.csms.mark()
        result = await b.csms.call(call.TriggerMessage(requested_message="Heartbeat"))
        assert result.status == "Accepted"
        await b.csms.wait_for("Heartbeat", after=mark)

        # Larger than the websocket limit (1 MiB): the charger closes with 1009 "message too
        # big" (RFC 6455 §7.4.1), reconnects, and keeps working without a new
        # BootNotification (OCPP-J §5.4).
        mark = b.csms.mark()
        session = b.csms._session
        assert session is not None
        huge = _call("huge", "DataTransfer", {"vendorId": "x", "data": "a" * (1024 * 1024 + 1)})
        await b.csms.send_raw(huge, expect_reply=False)
        await asyncio.wait_for(session.closed.wait(), 10)
        assert session.ws.close_code == 1009
        await b.csms.wait_connected(after=1)
        await _barrier(b)
        assert b.csms.connections == 2
        assert b.app.adapter.connection_count == 2
        assert [m for m in b.csms.received[mark:] if m.action == "BootNotification"] == []
        assert [m for m in b.csms.received[mark:] if m.action == UNSOLICITED] == []
        assert not b.task.done()
