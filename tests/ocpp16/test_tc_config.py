"""OCA OCPP 1.6 compliance test cases: configuration keys and DataTransfer (charge point side).

Scenarios and tool validations follow the OCA test case document (TC_019, TC_021, TC_040_1,
TC_040_2, TC_062) and the configuration key table of OCPP 1.6 ch. 9 with the errata.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ocpp.v16 import call

from tests.harness import bench

FEATURE_PROFILES = {
    "Core",
    "FirmwareManagement",
    "LocalAuthListManagement",
    "Reservation",
    "SmartCharging",
    "RemoteTrigger",
}

# Required keys per feature profile with their accessibility [OCPP 1.6 ch. 9; errata 3.79
# makes StopTransactionOnEVSideDisconnect optional, so it is checked only when present].
# "R/RW" means the choice is the charge point's.
REQUIRED_KEYS: dict[str, dict[str, str]] = {
    "Core": {
        "AuthorizeRemoteTxRequests": "R/RW",
        "ClockAlignedDataInterval": "RW",
        "ConnectionTimeOut": "RW",
        "ConnectorPhaseRotation": "RW",
        "GetConfigurationMaxKeys": "R",
        "HeartbeatInterval": "RW",
        "LocalAuthorizeOffline": "RW",
        "LocalPreAuthorize": "RW",
        "MeterValuesAlignedData": "RW",
        "MeterValuesSampledData": "RW",
        "MeterValueSampleInterval": "RW",
        "NumberOfConnectors": "R",
        "ResetRetries": "RW",
        "StopTransactionOnInvalidId": "RW",
        "StopTxnAlignedData": "RW",
        "StopTxnSampledData": "RW",
        "SupportedFeatureProfiles": "R",
        "TransactionMessageAttempts": "RW",
        "TransactionMessageRetryInterval": "RW",
        # RW for a socket with a lock (R and false only for a fixed cable, errata 3.83).
        "UnlockConnectorOnEVSideDisconnect": "RW",
    },
    "LocalAuthListManagement": {
        "LocalAuthListEnabled": "RW",
        "LocalAuthListMaxLength": "R",
        "SendLocalListMaxLength": "R",
    },
    "SmartCharging": {
        "ChargeProfileMaxStackLevel": "R",
        "ChargingScheduleAllowedChargingRateUnit": "R",
        "ChargingScheduleMaxPeriods": "R",
        "MaxChargingProfilesInstalled": "R",
    },
    "Reservation": {},
    "FirmwareManagement": {},
    "RemoteTrigger": {},
}
OPTIONAL_KEYS = {"StopTransactionOnEVSideDisconnect": "R/RW"}


def _keys(result: Any) -> dict[str, dict[str, Any]]:
    entries = result.configuration_key or []
    by_name = {entry["key"]: entry for entry in entries}
    assert len(by_name) == len(entries), "a key is reported twice"
    return by_name


def _accessibility_ok(entry: dict[str, Any], expected: str) -> bool:
    if expected == "R/RW":
        return isinstance(entry["readonly"], bool)
    return entry["readonly"] is (expected == "R")


async def _get(b: Any, *keys: str) -> Any:
    return await b.csms.call(call.GetConfiguration(key=list(keys) if keys else None))


async def test_TC_019_retrieve_configuration(tmp_path: Path) -> None:
    async with bench(tmp_path, connectors=2) as b:
        await b.booted()
        # Steps 1-2: SupportedFeatureProfiles alone.
        result = await _get(b, "SupportedFeatureProfiles")
        assert not result.unknown_key
        keys = _keys(result)
        assert list(keys) == ["SupportedFeatureProfiles"]
        entry = keys["SupportedFeatureProfiles"]
        assert entry["readonly"] is True
        profiles = entry["value"].split(",")
        assert "Core" in profiles
        assert set(profiles) <= FEATURE_PROFILES, profiles
        assert len(set(profiles)) == len(profiles)

        # Steps 3-4: every key; all required keys of the supported profiles, with the right
        # accessibility.
        result = await _get(b)
        assert not result.unknown_key
        keys = _keys(result)
        for profile in profiles:
            for name, access in REQUIRED_KEYS[profile].items():
                assert name in keys, f"{profile} requires {name}"
                assert _accessibility_ok(keys[name], access), (name, keys[name])
        for name, access in OPTIONAL_KEYS.items():
            if name in keys:
                assert _accessibility_ok(keys[name], access), (name, keys[name])
        # Values fixed by this bench: two connectors, and the interval from the config file.
        assert keys["NumberOfConnectors"]["value"] == "2"
        assert keys["MeterValueSampleInterval"]["value"] == "0"
        # The write-only basic-auth password is never read back [security whitepaper].
        assert keys.get("AuthorizationKey", {}).get("value") in (None, "")

        # Steps 5-8: specific keys, one of them unknown.
        result = await _get(b, "HeartbeatInterval", "NumberOfConnectors", "NoSuchKeyTC019")
        keys = _keys(result)
        assert set(keys) == {"HeartbeatInterval", "NumberOfConnectors"}
        assert keys["NumberOfConnectors"] == {
            "key": "NumberOfConnectors",
            "readonly": True,
            "value": "2",
        }
        assert keys["HeartbeatInterval"]["readonly"] is False
        # The CSMS's BootNotification interval (300 s) is the heartbeat interval.
        assert keys["HeartbeatInterval"]["value"] == "300"
        assert result.unknown_key == ["NoSuchKeyTC019"]

        # Only unknown keys: an empty known list and every name in unknownKey.
        result = await _get(b, "Unknown1", "Unknown2")
        assert not result.configuration_key
        assert result.unknown_key == ["Unknown1", "Unknown2"]


async def test_TC_021_change_set_configuration(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        await b.booted()
        # Before: MeterValueSampleInterval is not the value about to be configured.
        before = _keys(await _get(b, "MeterValueSampleInterval"))
        assert before["MeterValueSampleInterval"]["value"] != "37"

        result = await b.csms.call(
            call.ChangeConfiguration(key="MeterValueSampleInterval", value="37")
        )
        assert result.status == "Accepted"
        after = _keys(await _get(b, "MeterValueSampleInterval"))
        assert after["MeterValueSampleInterval"] == {
            "key": "MeterValueSampleInterval",
            "readonly": False,
            "value": "37",
        }

        # Persisted: a restart (whose config file still says 0) keeps the CSMS's value.
        mark = b.csms.mark()
        connections = b.csms.connections
        await b.restart_app()
        await b.csms.wait_connected(after=connections)
        await b.csms.wait_for("BootNotification", after=mark)
        restarted = _keys(await _get(b, "MeterValueSampleInterval"))
        assert restarted["MeterValueSampleInterval"]["value"] == "37"


async def test_TC_040_1_configuration_key_not_supported(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        await b.booted()
        result = await b.csms.call(call.ChangeConfiguration(key="Testing", value="true"))
        assert result.status == "NotSupported"
        # And the key did not come into existence.
        check = await _get(b, "Testing")
        assert not check.configuration_key
        assert check.unknown_key == ["Testing"]


async def test_TC_040_2_configuration_key_invalid_value(tmp_path: Path) -> None:
    async with bench(tmp_path, ocpp_config={"MeterValueSampleInterval": 10}) as b:
        await b.booted()
        invalid = [
            ("MeterValueSampleInterval", "-1"),  # an interval in seconds is never negative
            ("MeterValueSampleInterval", "ten"),
            ("MeterValueSampleInterval", "1.5"),
            ("HeartbeatInterval", ""),
            ("LocalPreAuthorize", "maybe"),
            # A measurand list with one measurand nobody knows: Rejected as a whole (§3.16.4).
            ("MeterValuesSampledData", "Energy.Active.Import.Register,Bogus.Measurand"),
        ]
        before = _keys(await _get(b, *{k for k, _ in invalid}))
        for key, value in invalid:
            result = await b.csms.call(call.ChangeConfiguration(key=key, value=value))
            assert result.status == "Rejected", (key, value, result.status)
        # Nothing changed.
        after = _keys(await _get(b, *{k for k, _ in invalid}))
        assert after == before
        assert after["MeterValueSampleInterval"]["value"] == "10"
        # A read-only key cannot be written either.
        result = await b.csms.call(call.ChangeConfiguration(key="NumberOfConnectors", value="5"))
        assert result.status == "Rejected"


async def test_TC_062_data_transfer_to_charge_point(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        await b.booted()
        result = await b.csms.call(
            call.DataTransfer(
                vendor_id="org.openchargealliance.octt", message_id="TestMessage", data="42"
            )
        )
        # The tool accepts Rejected, UnknownMessageId or UnknownVendorId; a charger that does
        # not know the vendor says so.
        assert result.status == "UnknownVendorId"
        assert result.data is None
