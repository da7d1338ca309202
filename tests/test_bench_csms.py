"""BenchCsms against a minimal charge point built directly on ocpp + websockets."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import json
import logging
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from ocpp.exceptions import InternalError
from ocpp.exceptions import NotImplementedError as OcppNotImplementedError
from ocpp.routing import on
from ocpp.v16 import ChargePoint, call, call_result
from ocpp.v16.enums import Action, ConfigurationStatus
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Subprotocol

from evse_daemon.bench.csms import MALFORMED, UNSOLICITED, BenchCsms
from tests import pki

BOOT = call.BootNotification(charge_point_model="PiCharger", charge_point_vendor="ExampleVendor")


class TestChargePoint(ChargePoint):  # type: ignore[misc]
    __test__ = False  # not a pytest test class

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reset_gate = asyncio.Event()

    @on(Action.get_configuration)  # type: ignore[untyped-decorator]
    async def on_get_configuration(self, **kwargs: Any) -> call_result.GetConfiguration:
        return call_result.GetConfiguration(
            configuration_key=[{"key": "HeartbeatInterval", "readonly": False, "value": "300"}],
            unknown_key=list(kwargs.get("key", [])),
        )

    @on(Action.change_configuration)  # type: ignore[untyped-decorator]
    async def on_change_configuration(self, **kwargs: Any) -> call_result.ChangeConfiguration:
        # A handler that takes its time, so that a test can drop the link mid-call.
        await self.reset_gate.wait()
        return call_result.ChangeConfiguration(status=ConfigurationStatus.accepted)


class Link:
    """A connected test charge point and its reader task."""

    def __init__(self, ws: Any, cp: TestChargePoint, reader: asyncio.Task[None]) -> None:
        self.ws = ws
        self.cp = cp
        self.reader = reader


@contextlib.asynccontextmanager
async def charge_point(url: str, cp_id: str = "CP1") -> AsyncIterator[Link]:
    async with websockets.connect(f"{url}/{cp_id}", subprotocols=[Subprotocol("ocpp1.6")]) as ws:
        cp = TestChargePoint(cp_id, ws, response_timeout=5)
        reader = asyncio.create_task(cp.start())
        try:
            yield Link(ws, cp, reader)
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)


@pytest.fixture(autouse=True)
def no_stray_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Disconnects must be handled: no unretrieved task exceptions, no handler tracebacks."""
    caplog.set_level(logging.WARNING)
    yield
    gc.collect()
    bad = [
        r
        for r in caplog.records
        if r.levelno >= logging.ERROR
        and (r.name in ("asyncio", "evse_daemon.bench.csms") or r.name.startswith("websockets"))
    ]
    assert not bad, [r.getMessage() for r in bad]


@pytest.fixture
async def csms() -> AsyncIterator[BenchCsms]:
    server = BenchCsms()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_url_and_connection(csms: BenchCsms) -> None:
    assert csms.url.startswith("ws://127.0.0.1:") and csms.url.endswith("/ocpp")
    assert not csms.connected
    async with charge_point(csms.url, "CP%201"):
        assert await csms.wait_connected(timeout_s=5) == "CP 1"
        assert csms.connections == 1
        assert csms.charge_point_id == "CP 1"
    await csms.wait_disconnected(timeout_s=5)


async def test_boot_sequence_rejected_then_accepted() -> None:
    async with BenchCsms(boot_responses=[("Rejected", 2), ("Accepted", 300)]) as csms:
        async with charge_point(csms.url) as link:
            first = await link.cp.call(BOOT)
            second = await link.cp.call(BOOT)
            third = await link.cp.call(BOOT)
    assert (first.status, first.interval) == ("Rejected", 2)
    assert (second.status, second.interval) == ("Accepted", 300)
    assert (third.status, third.interval) == ("Accepted", 300)  # the last one repeats
    assert first.current_time.endswith("Z")
    boots = csms.messages("BootNotification")
    assert len(boots) == 3
    assert boots[0].payload == {
        "chargePointModel": "PiCharger",
        "chargePointVendor": "ExampleVendor",
    }
    assert boots[0].received_at <= boots[1].received_at <= boots[2].received_at
    assert len({b.unique_id for b in boots}) == 3


async def test_default_boot_response_uses_heartbeat_interval() -> None:
    async with BenchCsms(heartbeat_interval_s=42) as csms:
        async with charge_point(csms.url) as link:
            result = await link.cp.call(BOOT)
            heartbeat = await link.cp.call(call.Heartbeat())
    assert (result.status, result.interval) == ("Accepted", 42)
    assert heartbeat.current_time.endswith("Z")


async def test_wait_for_with_predicate_and_after(csms: BenchCsms) -> None:
    def status(connector: int, value: str) -> Any:
        return call.StatusNotification(connector_id=connector, error_code="NoError", status=value)

    async with charge_point(csms.url) as link:
        await link.cp.call(status(1, "Available"))
        await link.cp.call(status(2, "Available"))
        mark = csms.mark()
        assert mark == 2
        await link.cp.call(status(1, "Preparing"))

        # Already received, first match from the start.
        first = await csms.wait_for("StatusNotification", lambda p: p["connectorId"] == 1)
        assert first.payload["status"] == "Available"
        # `after` skips what came before the mark.
        later = await csms.wait_for(
            "StatusNotification", lambda p: p["connectorId"] == 1, after=mark
        )
        assert later.payload["status"] == "Preparing"

        # A future message.
        waiter = asyncio.create_task(
            csms.wait_for("StatusNotification", lambda p: p["status"] == "Charging", timeout_s=5)
        )
        await asyncio.sleep(0.05)
        assert not waiter.done()
        await link.cp.call(status(1, "Charging"))
        assert (await waiter).payload == {
            "connectorId": 1,
            "errorCode": "NoError",
            "status": "Charging",
        }

        with pytest.raises(TimeoutError) as excinfo:
            await csms.wait_for("Heartbeat", timeout_s=0.2)
    text = str(excinfo.value)
    assert "no Heartbeat" in text and "0:StatusNotification" in text
    assert len(csms.messages("StatusNotification")) == 4


async def test_call_to_the_charge_point(csms: BenchCsms) -> None:
    with pytest.raises(ConnectionError):
        await csms.call(call.GetConfiguration())
    async with charge_point(csms.url):
        await csms.wait_connected(timeout_s=5)
        result = await csms.call(call.GetConfiguration(key=["Nope"]), timeout_s=5)
        assert isinstance(result, call_result.GetConfiguration)
        assert result.configuration_key == [
            {"key": "HeartbeatInterval", "readonly": False, "value": "300"}
        ]
        assert result.unknown_key == ["Nope"]
        # The test CP has no Reset handler: the CALLERROR comes back as an exception.
        with pytest.raises(OcppNotImplementedError) as excinfo:
            await csms.call(call.Reset(type="Soft"), timeout_s=5)
        assert excinfo.value.code == "NotImplemented"


async def test_call_fails_fast_when_the_charge_point_goes_away(csms: BenchCsms) -> None:
    async with charge_point(csms.url) as link:
        await csms.wait_connected(timeout_s=5)
        pending = asyncio.create_task(
            csms.call(call.ChangeConfiguration(key="K", value="V"), timeout_s=30)
        )
        await asyncio.sleep(0.1)
        await csms.drop_connection()
        with pytest.raises(ConnectionError, match="disconnected"):
            await asyncio.wait_for(pending, 5)
        link.cp.reset_gate.set()


async def test_call_timeout(csms: BenchCsms) -> None:
    async with charge_point(csms.url) as link:
        await csms.wait_connected(timeout_s=5)
        with pytest.raises(TimeoutError, match="did not answer ChangeConfiguration"):
            await csms.call(call.ChangeConfiguration(key="K", value="V"), timeout_s=0.2)
        link.cp.reset_gate.set()
        # The late answer is not mistaken for the reply to the next call.
        await asyncio.sleep(0.1)
        result = await csms.call(call.GetConfiguration(), timeout_s=5)
        assert result.configuration_key[0]["key"] == "HeartbeatInterval"


async def test_send_raw(csms: BenchCsms) -> None:
    async with charge_point(csms.url):
        await csms.wait_connected(timeout_s=5)
        reply = await csms.send_raw('[2,"raw-1","FooBar",{}]')
        assert reply is not None
        assert reply[:3] == [4, "raw-1", "NotSupported"]
        # Binary frames too; a reply to a known action without a handler.
        reply = await csms.send_raw(b'[2,"raw-2","Reset",{"type":"Hard"}]')
        assert reply is not None and reply[:3] == [4, "raw-2", "NotImplemented"]
        # A valid CALL gets its CALLRESULT.
        reply = await csms.send_raw('[2,"raw-3","GetConfiguration",{}]')
        assert reply is not None and reply[0:2] == [3, "raw-3"]
        assert reply[2]["configurationKey"][0]["key"] == "HeartbeatInterval"
        # An id that is not a string cannot be matched: the next foreign reply is taken.
        reply = await csms.send_raw('[2,17,"Reset",{"type":"Hard"}]')
        assert reply is not None and reply[:2] == [4, 17]
        # Not OCPP at all: the ocpp library logs and drops it, so no reply comes.
        with pytest.raises(TimeoutError, match="no reply"):
            await csms.send_raw("this is not json", timeout_s=0.3)
        assert await csms.send_raw('[2,"raw-4","FooBar",{}]', expect_reply=False) is None
        # ...whose reply, awaited by nobody, is recorded as unsolicited.
        stray = await csms.wait_for(UNSOLICITED, timeout_s=5, include_rejected=True)
        assert stray.unique_id == "raw-4"
        # Our own calls still work alongside.
        result = await csms.call(call.GetConfiguration(), timeout_s=5)
        assert result.configuration_key


async def test_frames_the_charge_point_gets_wrong_are_recorded(csms: BenchCsms) -> None:
    async with charge_point(csms.url) as link:
        await link.ws.send("garbage")
        await link.ws.send('[2,"bad-1","StatusNotification",{"connectorId":1}]')
        bad = await csms.wait_for(MALFORMED, timeout_s=5, include_rejected=True)
        assert bad.payload == {"raw": "garbage"} and bad.error == "malformed"
        refused = await csms.wait_for("StatusNotification", timeout_s=5, include_rejected=True)
        assert refused.error == "ProtocolError"
        assert refused.payload == {"connectorId": 1}
        # Rejected frames are left out unless asked for.
        assert csms.messages("StatusNotification") == []
        assert [m.action for m in csms.rejected()] == [MALFORMED, "StatusNotification"]
        with pytest.raises(TimeoutError, match=r"StatusNotification\(ProtocolError\)"):
            await csms.wait_for("StatusNotification", timeout_s=0.1)


async def test_drop_connection_and_reconnect(csms: BenchCsms) -> None:
    async with charge_point(csms.url) as link:
        await csms.wait_connected(timeout_s=5)
        await csms.drop_connection()
        assert not csms.connected
        # The charge point sees the link die without a close frame.
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(link.reader, 5)
        assert link.ws.close_code in (None, 1006)
    async with charge_point(csms.url) as link:
        assert await csms.wait_connected(timeout_s=5, after=1) == "CP1"
        assert csms.connections == 2
        await csms.drop_connection(clean=True)
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(link.reader, 5)
        assert link.ws.close_code == 1001


async def test_a_new_connection_replaces_the_old_one(csms: BenchCsms) -> None:
    async with charge_point(csms.url, "OLD") as old:
        await csms.wait_connected(timeout_s=5)
        async with charge_point(csms.url, "NEW") as new:
            assert await csms.wait_connected(timeout_s=5, after=1) == "NEW"
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(old.reader, 5)
            await new.cp.call(BOOT)
            assert csms.charge_point_id == "NEW"


async def test_not_accepting_refuses_the_handshake_with_503(csms: BenchCsms) -> None:
    csms.accepting = False
    with pytest.raises(InvalidStatus) as excinfo:
        async with charge_point(csms.url):
            pass
    assert excinfo.value.response.status_code == 503
    assert csms.connections == 0
    csms.accepting = True
    async with charge_point(csms.url):
        assert await csms.wait_connected(timeout_s=5) == "CP1"


async def test_handshake_requires_subprotocol_and_path(csms: BenchCsms) -> None:
    with pytest.raises(InvalidStatus) as excinfo:
        async with websockets.connect(csms.url + "/CP1"):
            pass
    assert excinfo.value.response.status_code == 400
    base = csms.url.removesuffix("/ocpp")
    for url in (base + "/other/CP1", csms.url, csms.url + "/"):
        with pytest.raises(InvalidStatus) as excinfo:
            async with websockets.connect(url, subprotocols=[Subprotocol("ocpp1.6")]):
                pass
        assert excinfo.value.response.status_code == 404, url
    assert csms.connections == 0


async def test_id_tag_status_for_authorize_and_transactions() -> None:
    tags = {"BLOCKED1": "Blocked", "GOOD": "Accepted"}
    async with BenchCsms(id_tag_status=tags, default_id_tag_status="Invalid") as csms:
        async with charge_point(csms.url) as link:
            good = await link.cp.call(call.Authorize(id_tag="GOOD"))
            blocked = await link.cp.call(call.Authorize(id_tag="BLOCKED1"))
            unknown = await link.cp.call(call.Authorize(id_tag="WHO"))
            start1 = await link.cp.call(
                call.StartTransaction(
                    connector_id=1, id_tag="GOOD", meter_start=0, timestamp="2025-01-01T00:00:00Z"
                )
            )
            start2 = await link.cp.call(
                call.StartTransaction(
                    connector_id=2,
                    id_tag="BLOCKED1",
                    meter_start=10,
                    timestamp="2025-01-01T00:00:00Z",
                )
            )
            stop_with_tag = await link.cp.call(
                call.StopTransaction(
                    meter_stop=100,
                    timestamp="2025-01-01T01:00:00Z",
                    transaction_id=start1.transaction_id,
                    id_tag="WHO",
                )
            )
            stop_without = await link.cp.call(
                call.StopTransaction(
                    meter_stop=110,
                    timestamp="2025-01-01T01:00:00Z",
                    transaction_id=start2.transaction_id,
                )
            )
    assert good.id_tag_info["status"] == "Accepted"
    assert blocked.id_tag_info["status"] == "Blocked"
    assert unknown.id_tag_info["status"] == "Invalid"
    assert (start1.transaction_id, start1.id_tag_info["status"]) == (1, "Accepted")
    assert (start2.transaction_id, start2.id_tag_info["status"]) == (2, "Blocked")
    assert stop_with_tag.id_tag_info["status"] == "Invalid"
    assert stop_without.id_tag_info is None
    assert csms.transaction_ids == {1: "GOOD", 2: "BLOCKED1"}


async def test_every_cp_initiated_action_is_answered(csms: BenchCsms) -> None:
    requests = [
        call.MeterValues(
            connector_id=1,
            meter_value=[
                {"timestamp": "2025-01-01T00:00:00Z", "sampledValue": [{"value": "1000"}]}
            ],
        ),
        call.DataTransfer(vendor_id="ExampleVendor", message_id="x", data="y"),
        call.DiagnosticsStatusNotification(status="Idle"),
        call.FirmwareStatusNotification(status="Idle"),
        call.SecurityEventNotification(
            type="StartupOfTheDevice", timestamp="2025-01-01T00:00:00Z", tech_info="boot"
        ),
        call.SignCertificate(csr="-----BEGIN CERTIFICATE REQUEST-----"),
        call.SignedFirmwareStatusNotification(status="Idle", request_id=1),
        call.LogStatusNotification(status="Idle", request_id=1),
    ]
    async with charge_point(csms.url) as link:
        results = [await link.cp.call(r) for r in requests]
    assert all(r is not None for r in results)
    assert results[1].status == "Accepted"
    assert [m.action for m in csms.received] == [type(r).__name__ for r in requests]
    assert csms.rejected() == []


async def test_call_errors_fail_the_next_calls_of_an_action() -> None:
    stop = call.StopTransaction(meter_stop=1, timestamp="2025-01-01T00:00:00Z", transaction_id=1)
    async with BenchCsms(call_errors={"StopTransaction": 2, "Heartbeat": -1}) as csms:
        async with charge_point(csms.url) as link:
            for _ in range(2):
                with pytest.raises(InternalError):
                    await link.cp.call(stop, suppress=False)
            answered = await link.cp.call(stop, suppress=False)
            for _ in range(3):
                with pytest.raises(InternalError):
                    await link.cp.call(call.Heartbeat(), suppress=False)
            await link.cp.call(BOOT, suppress=False)
    assert answered is not None
    assert [(m.action, m.error) for m in csms.received] == [
        ("StopTransaction", "InternalError"),
        ("StopTransaction", "InternalError"),
        ("StopTransaction", None),
        ("Heartbeat", "InternalError"),
        ("Heartbeat", "InternalError"),
        ("Heartbeat", "InternalError"),
        ("BootNotification", None),
    ]
    assert len(csms.messages("StopTransaction")) == 1
    assert len(csms.messages("StopTransaction", include_rejected=True)) == 3


async def test_on_message_narrates_both_directions() -> None:
    timeline: list[tuple[str, str, dict[str, Any]]] = []
    async with BenchCsms(on_message=lambda d, a, p: timeline.append((d, a, p))) as csms:
        async with charge_point(csms.url) as link:
            await link.cp.call(BOOT)
            await csms.call(call.GetConfiguration(), timeout_s=5)
    names = [(d, a) for d, a, _ in timeline]
    assert names == [
        ("in", "BootNotification"),
        ("out", "BootNotification.conf"),
        ("out", "GetConfiguration"),
        ("in", "GetConfiguration.conf"),
    ]
    assert timeline[1][2]["status"] == "Accepted"
    assert json.dumps(timeline)  # plain JSON data, printable by a narrator


async def test_a_failing_narrator_does_not_break_the_csms(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(direction: str, action: str, payload: dict[str, Any]) -> None:
        raise RuntimeError("narrator bug")

    async with BenchCsms(on_message=broken) as csms:
        async with charge_point(csms.url) as link:
            result = await link.cp.call(BOOT)
    assert result.status == "Accepted"
    assert any("on_message callback failed" in r.getMessage() for r in caplog.records)
    caplog.clear()  # expected errors; keep the autouse check for the unexpected ones


async def test_stop_closes_the_charge_point_cleanly() -> None:
    csms = BenchCsms()
    await csms.start()
    async with charge_point(csms.url) as link:
        await csms.wait_connected(timeout_s=5)
        await asyncio.wait_for(csms.stop(), 5)
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(link.reader, 5)
        assert link.ws.close_code == 1001
    await csms.stop()  # idempotent


def test_configuration_is_checked() -> None:
    with pytest.raises(ValueError, match="boot status"):
        BenchCsms(boot_responses=[("Maybe", 10)])
    with pytest.raises(ValueError, match="idTag status"):
        BenchCsms(id_tag_status={"A": "Fine"})
    with pytest.raises(ValueError, match="idTag status"):
        BenchCsms(default_id_tag_status="Fine")


async def test_restart_on_the_same_url() -> None:
    csms = BenchCsms()
    url = await csms.start()
    try:
        async with charge_point(url):
            await csms.wait_connected(timeout_s=5)
        await csms.stop()
        with pytest.raises(OSError):
            async with charge_point(url):
                pass
        assert await csms.start() == url
        async with charge_point(url):
            assert await csms.wait_connected(timeout_s=5, after=1) == "CP1"
    finally:
        await csms.stop()


async def test_basic_auth_and_tls_client_certificates_are_checked_and_recorded(
    tmp_path: Path,
) -> None:
    root = pki.make_ca()
    server = pki.make_leaf(root, "localhost", dns_names=["localhost"])
    client = pki.make_leaf(root, "CP1", client=True)
    csms = BenchCsms(
        ssl_context=pki.server_context(server, client_ca=root),
        url_host="localhost",
        basic_auth={"CP1": "secret-password-1"},
    )
    async with csms:
        assert csms.url.startswith("wss://localhost:")
        context = ssl.create_default_context(cadata=root.cert_pem())
        protocols = [Subprotocol("ocpp1.6")]
        with pytest.raises(InvalidStatus) as refused:
            await websockets.connect(f"{csms.url}/CP1", ssl=context, subprotocols=protocols)
        assert refused.value.response.status_code == 401
        token = base64.b64encode(b"CP1:secret-password-1").decode()
        headers = {"Authorization": f"Basic {token}"}
        async with websockets.connect(
            f"{csms.url}/CP1", ssl=context, subprotocols=protocols, additional_headers=headers
        ):
            await csms.wait_connected()
        # Profile 3 from now on: a client certificate, no Basic credentials needed.
        csms.basic_auth = None
        csms.require_client_certificate = True
        with pytest.raises(InvalidStatus):
            await websockets.connect(f"{csms.url}/CP1", ssl=context, subprotocols=protocols)
        cert_path, key_path = client.write(tmp_path, "client")
        context.load_cert_chain(cert_path, key_path)
        async with websockets.connect(f"{csms.url}/CP1", ssl=context, subprotocols=protocols):
            await csms.wait_connected(after=1)
    seen = [
        (h.status, h.user, h.password, h.client_certificate is not None) for h in csms.handshakes
    ]
    assert seen == [
        (401, None, None, False),
        (101, "CP1", "secret-password-1", False),
        (401, None, None, False),
        (101, None, None, True),
    ]
    assert all(h.tls_version in ("TLSv1.2", "TLSv1.3") for h in csms.handshakes)
