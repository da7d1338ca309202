"""OCA OCPP 1.6 compliance test cases (charge point side) for authorization: the
authorization cache (TC_007_1/2, TC_061_1/2), the Local Authorization List (TC_008_1/2,
TC_042_1/2, TC_043, TC_043_1..3) and a stop by a card with the same parentIdTag (TC_069);
then the rules of OCPP 1.6 §3.5 those cases leave out (offline policies, the cache learning
from every IdTagInfo, expiry, LocalListConflict) and persistence across a restart.

Each TC test follows the scenario and the tool validations of its test case in the OCA test
case document. The document at hand describes TC_007, TC_008 and TC_061 once; their _1 and _2
variants are read as the idTag presented locally (a card) and remotely
(RemoteStartTransaction with AuthorizeRemoteTxRequests=true, so that only the cache or the
list can spare the Authorize.req).
"""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

from ocpp.v16 import call

from evse_daemon.clock import iso_utc
from tests.harness import Bench, bench, config_value


def _auth_data(tag: str, status: str | None = "Accepted", **info: str) -> dict[str, Any]:
    """One AuthorizationData; status None leaves out idTagInfo (a differential removal)."""
    if status is None:
        return {"id_tag": tag}
    return {"id_tag": tag, "id_tag_info": {"status": status, **info}}


async def _send_list(b: Bench, version: int, update_type: str, *entries: dict[str, Any]) -> str:
    result = await b.csms.call(
        call.SendLocalList(
            list_version=version,
            update_type=update_type,
            local_authorization_list=list(entries),
        )
    )
    return str(result.status)


async def _list_version(b: Bench) -> int:
    result = await b.csms.call(call.GetLocalListVersion())
    return int(result.list_version)


async def _set(b: Bench, key: str, value: str) -> None:
    result = await b.csms.call(call.ChangeConfiguration(key=key, value=value))
    assert result.status == "Accepted", (key, value, result.status)


async def _cache_id_tag(b: Bench, tag: str) -> None:
    """Memory state IdTagCached: the idTag was authorized online once. The card is presented
    without a cable and the authorization left to time out (ConnectionTimeOut 1 s meanwhile)."""
    await _set(b, "ConnectionTimeOut", "1")
    mark = b.csms.mark()
    b.swipe(tag)
    authorize = await b.csms.wait_for("Authorize", after=mark)
    assert authorize.payload == {"idTag": tag}
    await b.wait_status(1, "Preparing", after=mark)
    await b.wait_status(1, "Available", after=mark)
    await _set(b, "ConnectionTimeOut", "60")


def _record_decisions(b: Bench) -> list[tuple[str, bool]]:
    """The (idTag, accepted) of every authorization outcome the charger acts on, in order: a
    refusal leaves no other trace to wait for."""
    decisions: list[tuple[str, bool]] = []
    charger = b.app.charger
    original = charger.on_authorized

    def recording(id_tag: str, accepted: bool, parent_id_tag: str | None = None) -> int | None:
        decisions.append((id_tag, accepted))
        return original(id_tag, accepted, parent_id_tag)

    charger.on_authorized = recording  # type: ignore[method-assign]
    return decisions


# --- the authorization cache ------------------------------------------------------------------


async def test_TC_007_1_regular_start_charging_session_cached_id(tmp_path: Path) -> None:
    config = {"AuthorizationCacheEnabled": True, "LocalPreAuthorize": True}
    async with bench(tmp_path, ocpp_config=config) as b:
        await b.booted()
        await _cache_id_tag(b, "TAG-CACHED")
        mark = b.csms.mark()
        # The driver presents the card: 1. Preparing, at once from the cache.
        b.swipe("TAG-CACHED")
        preparing = await b.wait_status(1, "Preparing", after=mark)
        # The driver plugs in: 3. StartTransaction (4. Accepted), 5. Charging.
        b.ev(1).plug()
        start = await b.csms.wait_for("StartTransaction", after=mark)
        assert start.payload["idTag"] == "TAG-CACHED"
        assert start.payload["connectorId"] == 1
        charging = await b.wait_status(1, "Charging", after=mark)
        assert b.csms.received.index(preparing) < b.csms.received.index(charging)
        # LocalPreAuthorize with a cached id: no Authorize.req was needed.
        assert "Authorize" not in b.actions(mark)
        assert b.ev(1).snapshot()["contactor_commanded"] is True


async def test_TC_007_2_remote_start_charging_session_cached_id(tmp_path: Path) -> None:
    config = {
        "AuthorizationCacheEnabled": True,
        "LocalPreAuthorize": True,
        "AuthorizeRemoteTxRequests": True,
    }
    async with bench(tmp_path, ocpp_config=config) as b:
        await b.booted()
        await _cache_id_tag(b, "TAG-CACHED")
        mark = b.csms.mark()
        result = await b.csms.call(call.RemoteStartTransaction(id_tag="TAG-CACHED", connector_id=1))
        assert result.status == "Accepted"
        await b.wait_status(1, "Preparing", after=mark)
        b.ev(1).plug()
        start = await b.csms.wait_for("StartTransaction", after=mark)
        assert start.payload["idTag"] == "TAG-CACHED"
        await b.wait_status(1, "Charging", after=mark)
        # AuthorizeRemoteTxRequests=true authorizes like a local card: from the cache.
        assert "Authorize" not in b.actions(mark)


async def test_TC_061_1_clear_authorization_cache_local(tmp_path: Path) -> None:
    config = {"AuthorizationCacheEnabled": True, "LocalPreAuthorize": True, "ConnectionTimeOut": 1}
    async with bench(tmp_path, ocpp_config=config) as b:
        await b.booted()
        mark = b.csms.mark()
        # Reusable state Authorized (the idTag is authorized online, so now cached);
        # 1. Preparing.
        b.swipe("TAG-CLEAR")
        await b.csms.wait_for("Authorize", after=mark)
        await b.wait_status(1, "Preparing", after=mark)
        # 3. No cable within ConnectionTimeOut: Available.
        await b.wait_status(1, "Available", after=mark)
        # 5-6. ClearCache: Accepted.
        result = await b.csms.call(call.ClearCache())
        assert result.status == "Accepted"
        # 7. The same card again: no longer cached, so Authorize.req (with LocalPreAuthorize
        # a cached id would have started without one, as in TC_007_1).
        mark = b.csms.mark()
        b.swipe("TAG-CLEAR")
        authorize = await b.csms.wait_for("Authorize", after=mark)
        assert authorize.payload == {"idTag": "TAG-CLEAR"}


async def test_TC_061_2_clear_authorization_cache_remote(tmp_path: Path) -> None:
    config = {
        "AuthorizationCacheEnabled": True,
        "LocalPreAuthorize": True,
        "ConnectionTimeOut": 1,
        "AuthorizeRemoteTxRequests": True,
    }
    async with bench(tmp_path, ocpp_config=config) as b:
        await b.booted()
        mark = b.csms.mark()
        # Reusable state Authorized, remotely: the remote start is authorized online.
        result = await b.csms.call(call.RemoteStartTransaction(id_tag="TAG-CLEAR", connector_id=1))
        assert result.status == "Accepted"
        await b.csms.wait_for("Authorize", after=mark)
        await b.wait_status(1, "Preparing", after=mark)
        await b.wait_status(1, "Available", after=mark)
        result = await b.csms.call(call.ClearCache())
        assert result.status == "Accepted"
        mark = b.csms.mark()
        result = await b.csms.call(call.RemoteStartTransaction(id_tag="TAG-CLEAR", connector_id=1))
        assert result.status == "Accepted"
        authorize = await b.csms.wait_for("Authorize", after=mark)
        assert authorize.payload == {"idTag": "TAG-CLEAR"}
        await b.wait_status(1, "Preparing", after=mark)


# --- the Local Authorization List -------------------------------------------------------------

LIST_CONFIG = {
    "LocalPreAuthorize": True,
    "AuthorizationCacheEnabled": False,
    "LocalAuthListEnabled": True,
}


async def test_TC_008_1_regular_start_charging_session_id_in_local_list(tmp_path: Path) -> None:
    async with bench(tmp_path, ocpp_config=LIST_CONFIG) as b:
        await b.booted()
        # 1-2. GetLocalListVersion: nothing sent yet, so empty.
        assert await _list_version(b) == 0
        # 3-4. SendLocalList with the valid idTag: Accepted.
        assert await _send_list(b, 1, "Full", _auth_data("TAG-LIST")) == "Accepted"
        mark = b.csms.mark()
        # The driver presents the card: 5. Preparing.
        b.swipe("TAG-LIST")
        await b.wait_status(1, "Preparing", after=mark)
        # The driver plugs in: 7. StartTransaction, 9. Charging.
        b.ev(1).plug()
        start = await b.csms.wait_for("StartTransaction", after=mark)
        assert start.payload["idTag"] == "TAG-LIST"
        await b.wait_status(1, "Charging", after=mark)
        # Authorized from the list (LocalPreAuthorize), not by the CSMS.
        assert "Authorize" not in b.actions(mark)


async def test_TC_008_2_remote_start_charging_session_id_in_local_list(tmp_path: Path) -> None:
    config = {**LIST_CONFIG, "AuthorizeRemoteTxRequests": True}
    async with bench(tmp_path, ocpp_config=config) as b:
        await b.booted()
        assert await _list_version(b) == 0
        assert await _send_list(b, 1, "Full", _auth_data("TAG-LIST")) == "Accepted"
        mark = b.csms.mark()
        result = await b.csms.call(call.RemoteStartTransaction(id_tag="TAG-LIST", connector_id=1))
        assert result.status == "Accepted"
        await b.wait_status(1, "Preparing", after=mark)
        b.ev(1).plug()
        start = await b.csms.wait_for("StartTransaction", after=mark)
        assert start.payload["idTag"] == "TAG-LIST"
        await b.wait_status(1, "Charging", after=mark)
        assert "Authorize" not in b.actions(mark)


async def test_TC_042_1_get_local_list_version_not_supported(tmp_path: Path) -> None:
    async with bench(tmp_path, ocpp_config={"LocalAuthListEnabled": False}) as b:
        await b.booted()
        # 1-2. listVersion -1: the list is not supported while disabled (errata 3.52).
        assert await _list_version(b) == -1


async def test_TC_042_2_get_local_list_version_empty(tmp_path: Path) -> None:
    async with bench(tmp_path, ocpp_config={"LocalAuthListEnabled": True}) as b:
        await b.booted()
        # 1-2. SendLocalList Full, listVersion 1, localAuthorizationList omitted: Accepted.
        reply = await b.csms.send_raw(
            '[2,"tc042-2","SendLocalList",{"listVersion":1,"updateType":"Full"}]'
        )
        assert reply == [3, "tc042-2", {"status": "Accepted"}]
        # 3-4. The list is empty: listVersion 0 (§5.10).
        assert await _list_version(b) == 0


async def test_TC_043_send_local_authorization_list(tmp_path: Path) -> None:
    # LocalAuthorizeOffline=true (the default) lets the list authorize offline below.
    config = {"LocalAuthListEnabled": True, "LocalAuthorizeOffline": True}
    async with bench(tmp_path, ocpp_config=config) as b:
        await b.booted()
        # 1-2. Full update: Accepted.
        full = [_auth_data("TAG-A"), _auth_data("TAG-B")]
        assert await _send_list(b, 1, "Full", *full) == "Accepted"
        # 3-4. Differential update (TAG-C added, TAG-A removed): Accepted.
        diff = [_auth_data("TAG-C"), _auth_data("TAG-A", None)]
        assert await _send_list(b, 2, "Differential", *diff) == "Accepted"
        assert await _list_version(b) == 2
        # Expected: the charger authorizes drivers whose idTag is on the list, even with
        # no CSMS to ask; TAG-A, removed, is not (unknown offline ids are not allowed).
        await b.go_offline()
        decisions = _record_decisions(b)
        b.ev(1).plug()
        b.swipe("TAG-A")
        b.swipe("TAG-C")
        await b.wait_until(lambda: len(decisions) == 2, what="both cards judged")
        assert decisions == [("TAG-A", False), ("TAG-C", True)]
        tx = b.app.charger.connector(1).tx
        assert tx is not None and tx.id_tag == "TAG-C"
        await b.wait_until(lambda: b.ev(1).snapshot()["contactor_commanded"], what="charging")
        # Back online, the transaction started offline is reported.
        mark = await b.go_online()
        start = await b.csms.wait_for("StartTransaction", after=mark)
        assert start.payload["idTag"] == "TAG-C"
        assert "Authorize" not in b.actions(mark)


async def test_TC_043_1_send_local_authorization_list_not_supported(tmp_path: Path) -> None:
    # LocalPreAuthorize lets a list entry skip the Authorize.req, had the list been taken.
    config = {"LocalAuthListEnabled": False, "LocalPreAuthorize": True}
    async with bench(tmp_path, ocpp_config=config) as b:
        await b.booted()
        # 1-2. SendLocalList Full: NotSupported.
        assert await _send_list(b, 1, "Full", _auth_data("TAG-X")) == "NotSupported"
        # Expected: the charger cannot authorize from the list that was sent.
        mark = b.csms.mark()
        b.swipe("TAG-X")
        authorize = await b.csms.wait_for("Authorize", after=mark)
        assert authorize.payload == {"idTag": "TAG-X"}
        # Nothing was kept for later either.
        await _set(b, "LocalAuthListEnabled", "true")
        assert await _list_version(b) == 0
        assert b.app.authorizer.local_list_entry("TAG-X") is None


async def test_TC_043_2_send_local_authorization_list_version_mismatch(tmp_path: Path) -> None:
    async with bench(tmp_path, ocpp_config={"LocalAuthListEnabled": True}) as b:
        await b.booted()
        # 1-4. Full update, version 2.
        assert await _send_list(b, 2, "Full", _auth_data("TAG-A")) == "Accepted"
        assert await _list_version(b) == 2
        # 5-8. Differential update to version 5.
        assert await _send_list(b, 5, "Differential", _auth_data("TAG-B")) == "Accepted"
        assert await _list_version(b) == 5
        # 9-12. A differential update with a lower version: VersionMismatch (§7.47), and
        # the list stays at version 5 without the update's idTag.
        assert await _send_list(b, 4, "Differential", _auth_data("TAG-C")) == "VersionMismatch"
        assert await _list_version(b) == 5
        # Equal is not newer either.
        assert await _send_list(b, 5, "Differential", _auth_data("TAG-C")) == "VersionMismatch"
        assert await _list_version(b) == 5
        assert b.app.authorizer.local_list_entry("TAG-C") is None
        assert b.app.authorizer.local_list_entry("TAG-B") is not None


async def test_TC_043_3_send_local_authorization_list_failed(tmp_path: Path) -> None:
    async with bench(tmp_path, ocpp_config={"LocalAuthListEnabled": True}) as b:
        await b.booted()
        assert await _send_list(b, 1, "Full", _auth_data("TAG-KEEP")) == "Accepted"
        # The state in which setting the list fails: a list longer than the charger holds.
        got = await b.csms.call(call.GetConfiguration(key=["LocalAuthListMaxLength"]))
        maximum = int(config_value(got, "LocalAuthListMaxLength") or 0)
        assert maximum > 0
        too_long = [_auth_data(f"T{i:05d}") for i in range(maximum + 1)]
        # 1-2. SendLocalList Full, listVersion 2: Failed.
        assert await _send_list(b, 2, "Full", *too_long) == "Failed"
        # Nothing changed.
        assert await _list_version(b) == 1
        assert b.app.authorizer.local_list_entry("TAG-KEEP") is not None
        assert b.app.authorizer.local_list_size() == 1


async def test_send_local_list_fails_when_a_differential_update_overflows_the_list(
    tmp_path: Path,
) -> None:
    async with bench(tmp_path, ocpp_config={"LocalAuthListEnabled": True}) as b:
        await b.booted()
        got = await b.csms.call(
            call.GetConfiguration(key=["LocalAuthListMaxLength", "SendLocalListMaxLength"])
        )
        maximum = int(config_value(got, "LocalAuthListMaxLength") or 0)
        per_message = int(config_value(got, "SendLocalListMaxLength") or 0)
        assert 0 < maximum <= per_message
        full = [_auth_data(f"T{i:05d}") for i in range(maximum)]
        assert await _send_list(b, 1, "Full", *full) == "Accepted"
        assert await _send_list(b, 2, "Differential", _auth_data("ONE-TOO-MANY")) == "Failed"
        assert await _list_version(b) == 1
        # Making room in the same update is fine.
        diff = [_auth_data("T00000", None), _auth_data("ONE-MORE")]
        assert await _send_list(b, 2, "Differential", *diff) == "Accepted"
        assert await _list_version(b) == 2


async def test_send_local_list_fails_when_it_cannot_be_stored(tmp_path: Path) -> None:
    async with bench(tmp_path, ocpp_config={"LocalAuthListEnabled": True}) as b:
        await b.booted()
        assert await _send_list(b, 1, "Full", _auth_data("TAG-KEEP")) == "Accepted"

        async def broken(*args: Any, **kwargs: Any) -> None:
            raise sqlite3.OperationalError("disk I/O error")

        b.app.store.write_local_list = broken  # type: ignore[method-assign]
        assert await _send_list(b, 2, "Full", _auth_data("TAG-NEW")) == "Failed"
        assert await _send_list(b, 2, "Differential", _auth_data("TAG-NEW")) == "Failed"
        # The list in effect is still the stored one.
        assert await _list_version(b) == 1
        assert b.app.authorizer.local_list_entry("TAG-NEW") is None
        assert b.app.authorizer.local_list_entry("TAG-KEEP") is not None


async def test_send_local_list_versions_0_and_minus_1_are_refused(tmp_path: Path) -> None:
    async with bench(tmp_path, ocpp_config={"LocalAuthListEnabled": True}) as b:
        await b.booted()
        # Errata 3.52: 0 and -1 are never a list's version.
        assert await _send_list(b, 0, "Full", _auth_data("A")) == "Failed"
        assert await _send_list(b, -1, "Full", _auth_data("A")) == "Failed"
        assert await _send_list(b, 0, "Differential", _auth_data("A")) == "VersionMismatch"
        assert await _list_version(b) == 0
        assert b.app.authorizer.local_list_entry("A") is None


# --- parentIdTag ------------------------------------------------------------------------------


async def test_TC_069_stop_transaction_with_same_parent_id_tag(tmp_path: Path) -> None:
    parents = {"TAG-A": "FLEET-1", "TAG-B": "FLEET-1", "TAG-OTHER": "FLEET-2"}
    async with bench(tmp_path, id_tag_parent=parents) as b:
        await b.booted()
        tx = await b.start_charging(1, "TAG-A")  # reusable state Charging
        # A card of another group is asked about but stops nothing.
        mark = b.csms.mark()
        b.swipe("TAG-OTHER")
        await b.csms.wait_for("Authorize", after=mark)
        await b.barrier()
        assert "StopTransaction" not in b.actions(mark)
        assert b.app.charger.connector(1).tx is not None
        # A different card with the same parentIdTag: 1. Authorize.req for it.
        mark = b.csms.mark()
        b.swipe("TAG-B")
        authorize = await b.csms.wait_for("Authorize", after=mark)
        assert authorize.payload == {"idTag": "TAG-B"}
        # 3. StopTransaction with the idTag of step 1; 5. Finishing.
        stop = await b.csms.wait_for("StopTransaction", after=mark)
        assert stop.payload["transactionId"] == tx
        assert stop.payload["idTag"] == "TAG-B"
        assert stop.payload.get("reason", "Local") == "Local"
        await b.wait_status(1, "Finishing", after=mark)


async def test_parent_id_tag_from_the_local_list_stops_without_asking(tmp_path: Path) -> None:
    # The CSMS answers without parentIdTag; the list is the only one to know the group, and
    # a StartTransaction.conf without one must not make the charger forget it.
    config = {"LocalPreAuthorize": True, "LocalAuthListEnabled": True}
    async with bench(tmp_path, ocpp_config=config) as b:
        await b.booted()
        entries = [
            _auth_data("TAG-A", parentIdTag="FLEET-1"),
            _auth_data("TAG-B", parentIdTag="FLEET-1"),
        ]
        assert await _send_list(b, 1, "Full", *entries) == "Accepted"
        tx = await b.start_charging(1, "TAG-A")
        mark = b.csms.mark()
        b.swipe("TAG-B")
        stop = await b.csms.wait_for("StopTransaction", after=mark)
        assert stop.payload["transactionId"] == tx
        assert stop.payload["idTag"] == "TAG-B"
        assert "Authorize" not in b.actions(mark)


# --- the cache learns from every IdTagInfo; expiry; disabled cache ----------------------------


async def test_cache_learns_from_start_and_stop_transaction_conf(tmp_path: Path) -> None:
    # No Authorize.req at all: the remote start is not authorized first, and the card that
    # started the transaction stops it without one (§4.1).
    config = {"AuthorizeRemoteTxRequests": False, "LocalPreAuthorize": True}
    async with bench(tmp_path, ocpp_config=config) as b:
        await b.booted()
        mark = b.csms.mark()
        b.ev(1).plug()
        result = await b.csms.call(call.RemoteStartTransaction(id_tag="TAG-R", connector_id=1))
        assert result.status == "Accepted"
        await b.csms.wait_for("StartTransaction", after=mark)
        await b.wait_until(lambda: b.app.authorizer.cached("TAG-R") is not None)
        cached = b.app.authorizer.cached("TAG-R")
        assert cached is not None and cached.status == "Accepted"
        # Meanwhile the CSMS blocked the card; the stop's answer says so.
        b.csms.id_tag_status["TAG-R"] = "Blocked"
        b.swipe("TAG-R")
        await b.csms.wait_for("StopTransaction", after=mark)
        await b.wait_until(
            lambda: getattr(b.app.authorizer.cached("TAG-R"), "status", None) == "Blocked",
            what="cache updated from StopTransaction.conf",
        )
        assert "Authorize" not in b.actions(mark)


async def test_cache_honours_the_expiry_date(tmp_path: Path) -> None:
    config = {"AuthorizationCacheEnabled": True, "LocalPreAuthorize": True}
    async with bench(tmp_path, ocpp_config=config) as b:
        await b.booted()
        expiry = b.app.clock.utc_now() + timedelta(seconds=1)
        b.csms.id_tag_expiry["TAG-SHORT"] = iso_utc(expiry)
        await _cache_id_tag(b, "TAG-SHORT")
        await _cache_id_tag(b, "TAG-LONG")  # no expiryDate: valid until told otherwise
        await b.wait_until(lambda: b.app.clock.utc_now() > expiry, what="expiry passed")
        # Expired in the cache: asked online again (§3.5.1).
        await _set(b, "ConnectionTimeOut", "1")
        mark = b.csms.mark()
        b.swipe("TAG-SHORT")
        authorize = await b.csms.wait_for("Authorize", after=mark)
        assert authorize.payload == {"idTag": "TAG-SHORT"}
        await b.wait_status(1, "Preparing", after=mark)
        await b.wait_status(1, "Available", after=mark)
        # TAG-LONG never expires: no Authorize.req.
        mark = b.csms.mark()
        b.swipe("TAG-LONG")
        await b.wait_status(1, "Preparing", after=mark)
        assert "Authorize" not in b.actions(mark)


async def test_disabled_cache_is_neither_used_nor_updated(tmp_path: Path) -> None:
    config = {"AuthorizationCacheEnabled": False, "LocalPreAuthorize": True}
    async with bench(tmp_path, ocpp_config=config) as b:
        await b.booted()
        await _cache_id_tag(b, "TAG-NC")  # authorized online once...
        assert b.app.authorizer.cached("TAG-NC") is None  # ...but not cached
        mark = b.csms.mark()
        b.swipe("TAG-NC")
        authorize = await b.csms.wait_for("Authorize", after=mark)  # asked again
        assert authorize.payload == {"idTag": "TAG-NC"}


async def test_local_list_conflict_is_reported_on_connector_0(tmp_path: Path) -> None:
    # LocalPreAuthorize=false: the listed card is still checked online, and the CSMS has
    # blocked it since the list was sent.
    config = {"LocalPreAuthorize": False, "LocalAuthListEnabled": True}
    async with bench(tmp_path, ocpp_config=config, id_tag_status={"TAG-L": "Blocked"}) as b:
        await b.booted()
        assert await _send_list(b, 1, "Full", _auth_data("TAG-L")) == "Accepted"
        mark = b.csms.mark()
        b.swipe("TAG-L")
        await b.csms.wait_for("Authorize", after=mark)
        # §3.5.2: StatusNotification, connector 0, errorCode LocalListConflict.
        conflict = await b.csms.wait_for(
            "StatusNotification",
            lambda p: p["connectorId"] == 0 and p["errorCode"] == "LocalListConflict",
            after=mark,
        )
        assert conflict.payload["status"] == "Available"
        # The CSMS's answer wins for this card, and list entries never enter the cache.
        await b.barrier()
        assert b.app.charger.connector(1).auth is None
        assert b.app.authorizer.cached("TAG-L") is None
        # An answer that agrees with the list reports nothing.
        b.csms.id_tag_status["TAG-L"] = "Accepted"
        mark = b.csms.mark()
        b.swipe("TAG-L")
        await b.csms.wait_for("Authorize", after=mark)
        # A conflict would be queued before the Preparing that the accepted card causes.
        await b.wait_status(1, "Preparing", after=mark)
        assert b.statuses(0, after=mark) == []


# --- offline policies -------------------------------------------------------------------------


async def test_offline_unknown_id_is_accepted_but_not_one_the_list_blocks(tmp_path: Path) -> None:
    config = {"AllowOfflineTxForUnknownId": True, "LocalAuthListEnabled": True}
    async with bench(tmp_path, ocpp_config=config) as b:
        await b.booted()
        entries = [_auth_data("TAG-BLOCKED", "Blocked"), _auth_data("TAG-EXPIRED", "Expired")]
        assert await _send_list(b, 1, "Full", *entries) == "Accepted"
        await b.go_offline()
        decisions = _record_decisions(b)
        b.ev(1).plug()
        # §3.5.4: listed with a status other than Accepted → rejected; unknown → accepted.
        b.swipe("TAG-BLOCKED")
        b.swipe("TAG-EXPIRED")
        b.swipe("TAG-UNKNOWN")
        await b.wait_until(lambda: len(decisions) == 3, what="all cards judged")
        assert decisions == [("TAG-BLOCKED", False), ("TAG-EXPIRED", False), ("TAG-UNKNOWN", True)]
        tx = b.app.charger.connector(1).tx
        assert tx is not None and tx.id_tag == "TAG-UNKNOWN"
        mark = await b.go_online()
        start = await b.csms.wait_for("StartTransaction", after=mark)
        assert start.payload["idTag"] == "TAG-UNKNOWN"


async def test_offline_cached_id_needs_local_authorize_offline(tmp_path: Path) -> None:
    config = {
        "AuthorizationCacheEnabled": True,
        "LocalAuthorizeOffline": False,
        "AllowOfflineTxForUnknownId": False,
    }
    async with bench(tmp_path, ocpp_config=config) as b:
        await b.booted()
        await _cache_id_tag(b, "TAG-C")
        # LocalAuthorizeOffline is false: the cached card is refused while offline...
        await _set(b, "LocalAuthorizeOffline", "false")
        await b.go_offline()
        decisions = _record_decisions(b)
        b.ev(1).plug()
        b.swipe("TAG-C")
        await b.wait_until(lambda: len(decisions) == 1, what="card judged")
        assert decisions == [("TAG-C", False)]
        assert b.app.charger.connector(1).tx is None
        # ...until the key allows it (set while offline through the charger's own keys, as
        # no CSMS can reach it now).
        assert b.app.keys.change("LocalAuthorizeOffline", "true").value == "Accepted"
        b.app.configuration_changed("LocalAuthorizeOffline")
        b.swipe("TAG-C")
        await b.wait_until(lambda: len(decisions) == 2, what="card judged again")
        assert decisions[1] == ("TAG-C", True)
        tx = b.app.charger.connector(1).tx
        assert tx is not None and tx.id_tag == "TAG-C"
        await b.go_online()


# --- persistence ------------------------------------------------------------------------------


async def test_local_list_version_and_cache_survive_a_restart(tmp_path: Path) -> None:
    config = {"LocalPreAuthorize": True, "AuthorizationCacheEnabled": True}
    async with bench(tmp_path, ocpp_config=config) as b:
        await b.booted()
        entries = [
            _auth_data("TAG-A", parentIdTag="FLEET", expiryDate="2099-01-01T00:00:00Z"),
            _auth_data("TAG-B", "Blocked"),
        ]
        assert await _send_list(b, 7, "Full", *entries) == "Accepted"
        assert await _send_list(b, 8, "Differential", _auth_data("TAG-D")) == "Accepted"
        await _cache_id_tag(b, "TAG-C")

        mark = b.csms.mark()
        await b.restart_app()
        await b.csms.wait_for("BootNotification", after=mark)
        await b.wait_status(1, "Available", after=mark)

        assert await _list_version(b) == 8
        authorizer = b.app.authorizer
        a = authorizer.local_list_entry("tag-a")
        assert a is not None
        assert (a.status, a.parent_id_tag) == ("Accepted", "FLEET")
        assert a.expiry_date is not None and a.expiry_date.year == 2099
        b_entry = authorizer.local_list_entry("TAG-B")
        assert b_entry is not None and b_entry.status == "Blocked"
        assert authorizer.local_list_entry("TAG-D") is not None
        assert authorizer.local_list_size() == 3
        cached = authorizer.cached("TAG-C")
        assert cached is not None and cached.status == "Accepted"
        # And it is used: the cached card starts without an Authorize.req.
        mark = b.csms.mark()
        b.swipe("TAG-C")
        await b.wait_status(1, "Preparing", after=mark)
        assert "Authorize" not in b.actions(mark)

        # A cleared cache stays cleared across a restart (the list is not the cache).
        result = await b.csms.call(call.ClearCache())
        assert result.status == "Accepted"
        mark = b.csms.mark()
        await b.restart_app()
        await b.csms.wait_for("BootNotification", after=mark)
        assert b.app.authorizer.cached("TAG-C") is None
        assert b.app.authorizer.cache_size() == 0
        assert await _list_version(b) == 8
