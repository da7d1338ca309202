"""OCPP 1.6 configuration key registry and ChangeConfiguration/GetConfiguration rules."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from evse_daemon.ocpp_keys import (
    ChangeResult,
    ConfigurationEntry,
    InvalidValue,
    KeyDef,
    KeyType,
    OcppConfiguration,
    core_keys,
    parse_value,
    to_python,
)

# The Core keys of OCPP 1.6 ch. 9 that this charger supports, plus LocalAuthList and security.
EXPECTED_KEYS = {
    # name: (type, readonly, default)
    "AllowOfflineTxForUnknownId": (KeyType.BOOL, False, "false"),
    "AuthorizationCacheEnabled": (KeyType.BOOL, False, "true"),
    "AuthorizeRemoteTxRequests": (KeyType.BOOL, False, "false"),
    "ClockAlignedDataInterval": (KeyType.INT, False, "0"),
    "ConnectionTimeOut": (KeyType.INT, False, "60"),
    "ConnectorPhaseRotation": (KeyType.CSL, False, "0.RST"),
    "ConnectorPhaseRotationMaxLength": (KeyType.INT, True, "3"),
    "GetConfigurationMaxKeys": (KeyType.INT, True, "64"),
    "HeartbeatInterval": (KeyType.INT, False, "300"),
    "LocalAuthorizeOffline": (KeyType.BOOL, False, "true"),
    "LocalPreAuthorize": (KeyType.BOOL, False, "false"),
    "MaxEnergyOnInvalidId": (KeyType.INT, False, "0"),
    "MeterValuesAlignedData": (KeyType.CSL, False, "Energy.Active.Import.Register"),
    "MeterValuesAlignedDataMaxLength": (KeyType.INT, True, "8"),
    "MeterValuesSampledData": (
        KeyType.CSL,
        False,
        "Energy.Active.Import.Register,Power.Active.Import,Current.Import,Current.Offered,Voltage",
    ),
    "MeterValuesSampledDataMaxLength": (KeyType.INT, True, "8"),
    "MeterValueSampleInterval": (KeyType.INT, False, "60"),
    "MinimumStatusDuration": (KeyType.INT, False, "0"),
    "NumberOfConnectors": (KeyType.INT, True, "2"),
    "ResetRetries": (KeyType.INT, False, "3"),
    "StopTransactionOnEVSideDisconnect": (KeyType.BOOL, False, "true"),
    "StopTransactionOnInvalidId": (KeyType.BOOL, False, "true"),
    "StopTxnAlignedData": (KeyType.CSL, False, ""),
    "StopTxnAlignedDataMaxLength": (KeyType.INT, True, "8"),
    "StopTxnSampledData": (KeyType.CSL, False, ""),
    "StopTxnSampledDataMaxLength": (KeyType.INT, True, "8"),
    "SupportedFeatureProfiles": (
        KeyType.CSL,
        True,
        "Core,FirmwareManagement,LocalAuthListManagement,RemoteTrigger,SmartCharging",
    ),
    "SupportedFileTransferProtocols": (KeyType.CSL, True, "FTP,FTPS,HTTP,HTTPS"),
    "TransactionMessageAttempts": (KeyType.INT, False, "3"),
    "TransactionMessageRetryInterval": (KeyType.INT, False, "60"),
    "UnlockConnectorOnEVSideDisconnect": (KeyType.BOOL, False, "true"),
    "WebSocketPingInterval": (KeyType.INT, False, "60"),
    "MessageTimeout": (KeyType.INT, False, "30"),
    "LocalAuthListEnabled": (KeyType.BOOL, False, "true"),
    "LocalAuthListMaxLength": (KeyType.INT, True, "1000"),
    "SendLocalListMaxLength": (KeyType.INT, True, "1000"),
    "AuthorizationKey": (KeyType.STRING, False, ""),
    "SecurityProfile": (KeyType.INT, False, "0"),
    "CpoName": (KeyType.STRING, False, ""),
    "CertificateSignedMaxChainSize": (KeyType.INT, True, "10000"),
    "CertificateStoreMaxLength": (KeyType.INT, True, "20"),
    "AdditionalRootCertificateCheck": (KeyType.BOOL, True, "false"),
    "ChargeProfileMaxStackLevel": (KeyType.INT, True, "8"),
    "ChargingScheduleAllowedChargingRateUnit": (KeyType.CSL, True, "Current,Power"),
    "ChargingScheduleMaxPeriods": (KeyType.INT, True, "24"),
    "MaxChargingProfilesInstalled": (KeyType.INT, True, "32"),
}


def key(name: str, connectors: int = 2) -> KeyDef:
    return core_keys(connectors)[name]


def test_registry_has_exactly_the_expected_keys_with_their_defaults() -> None:
    keys = core_keys(2)
    assert set(keys) == set(EXPECTED_KEYS)
    for name, (key_type, readonly, default) in EXPECTED_KEYS.items():
        keydef = keys[name]
        assert keydef.name == name
        assert (keydef.type, keydef.readonly, keydef.default) == (key_type, readonly, default), name


def test_every_default_is_a_valid_value_of_its_key() -> None:
    for keydef in core_keys(3).values():
        if keydef.name == "AuthorizationKey":
            continue  # "" means "not set"; a set key must have 16 to 40 characters
        assert parse_value(keydef, keydef.default) == keydef.default, keydef.name


def test_connector_count_shapes_the_registry() -> None:
    keys = core_keys(4)
    assert keys["NumberOfConnectors"].default == "4"
    assert keys["ConnectorPhaseRotationMaxLength"].default == "5"
    assert keys["ConnectorPhaseRotation"].max_members_key == "ConnectorPhaseRotationMaxLength"
    with pytest.raises(ValueError):
        core_keys(0)


def test_only_authorization_key_is_write_only() -> None:
    assert [k.name for k in core_keys(1).values() if k.write_only] == ["AuthorizationKey"]


def test_measurand_lists_name_their_max_length_key() -> None:
    keys = core_keys(1)
    for name in (
        "MeterValuesAlignedData",
        "MeterValuesSampledData",
        "StopTxnAlignedData",
        "StopTxnSampledData",
    ):
        assert keys[name].max_members_key == f"{name}MaxLength"
        assert keys[f"{name}MaxLength"].readonly


# --- parse_value


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("true", "true"), ("FALSE", "false"), ("True", "true"), (" false ", "false")],
)
def test_bool_values_are_normalized_to_lower_case(raw: str, expected: str) -> None:
    assert parse_value(key("LocalPreAuthorize"), raw) == expected


@pytest.mark.parametrize("raw", ["yes", "1", "0", "", "truee", "t"])
def test_bool_rejects_anything_but_true_and_false(raw: str) -> None:
    assert parse_value(key("LocalPreAuthorize"), raw) is None


@pytest.mark.parametrize(
    ("raw", "expected"), [("900", "900"), ("0", "0"), ("007", "7"), (" 42 ", "42"), ("+5", "5")]
)
def test_int_values_are_normalized_to_decimal(raw: str, expected: str) -> None:
    assert parse_value(key("HeartbeatInterval"), raw) == expected


@pytest.mark.parametrize(
    "raw", ["", "abc", "1.5", "1e3", "1_000", "0x10", "١٢", "-1", "2147483648"]
)
def test_int_rejects_non_decimal_negative_and_huge_values(raw: str) -> None:
    assert parse_value(key("HeartbeatInterval"), raw) is None


@pytest.mark.parametrize(
    ("name", "raw", "ok"),
    [
        ("MessageTimeout", "0", False),
        ("MessageTimeout", "1", True),
        ("MessageTimeout", "3600", True),
        ("MessageTimeout", "3601", False),
        ("TransactionMessageAttempts", "0", False),
        ("TransactionMessageAttempts", "1", True),
        ("WebSocketPingInterval", "0", True),
        ("WebSocketPingInterval", "-1", False),
        ("SecurityProfile", "3", True),
        ("SecurityProfile", "4", False),
        ("ConnectionTimeOut", "86400", True),
        ("ConnectionTimeOut", "86401", False),
    ],
)
def test_int_ranges(name: str, raw: str, ok: bool) -> None:
    assert (parse_value(key(name), raw) is not None) is ok


def test_csl_members_lose_surrounding_spaces() -> None:
    raw = " Voltage , Current.Import,Energy.Active.Import.Register "
    assert (
        parse_value(key("MeterValuesSampledData"), raw)
        == "Voltage,Current.Import,Energy.Active.Import.Register"
    )


def test_empty_csl_is_valid() -> None:
    assert parse_value(key("StopTxnSampledData"), "") == ""
    assert parse_value(key("StopTxnSampledData"), "  ") == ""


@pytest.mark.parametrize(
    "raw",
    [
        "Voltage,Frequency",  # one unsupported measurand spoils the whole list
        "SoC",
        "Voltage.L1",  # no phase suffixes
        "voltage",  # measurands are case-sensitive
        "Voltage,,Current.Import",
        "Voltage,",
        "Voltage,Voltage",
    ],
)
def test_measurand_lists_reject_unsupported_or_malformed_members(raw: str) -> None:
    assert parse_value(key("MeterValuesSampledData"), raw) is None


def test_phase_rotation_members_follow_connector_dot_rotation() -> None:
    rotation = key("ConnectorPhaseRotation", connectors=2)
    assert parse_value(rotation, "0.RST, 1.RTS,2.NotApplicable") == "0.RST,1.RTS,2.NotApplicable"
    assert parse_value(rotation, "1.Unknown") == "1.Unknown"
    assert parse_value(rotation, "3.RST") is None  # there is no connector 3
    assert parse_value(rotation, "1.XYZ") is None
    assert parse_value(rotation, "1.rst") is None
    assert parse_value(rotation, "RST") is None
    assert parse_value(rotation, "1.RST,1.STR") is None  # contradicts itself


def test_csl_member_count_is_limited() -> None:
    keydef = KeyDef(
        "Test",
        KeyType.CSL,
        readonly=False,
        default="",
        allowed_values=frozenset({"a", "b", "c"}),
        max_members=2,
    )
    assert parse_value(keydef, "a,b") == "a,b"
    assert parse_value(keydef, "a,b,c") is None


def test_string_length_is_checked() -> None:
    auth = key("AuthorizationKey")
    assert parse_value(auth, "x" * 15) is None
    assert parse_value(auth, "x" * 16) == "x" * 16
    assert parse_value(auth, "y" * 40) == "y" * 40
    assert parse_value(auth, "y" * 41) is None


def test_to_python() -> None:
    assert to_python(key("LocalPreAuthorize"), "true") is True
    assert to_python(key("LocalPreAuthorize"), "false") is False
    assert to_python(key("HeartbeatInterval"), "120") == 120
    assert to_python(key("MeterValuesSampledData"), "Voltage,Current.Import") == (
        "Voltage",
        "Current.Import",
    )
    assert to_python(key("StopTxnSampledData"), "") == ()
    assert to_python(key("AuthorizationKey"), "s3cret-s3cret-s3") == "s3cret-s3cret-s3"
    with pytest.raises(InvalidValue):
        to_python(key("HeartbeatInterval"), "soon")


@given(st.text(max_size=40))
def test_normalized_values_are_stable(raw: str) -> None:
    for keydef in core_keys(2).values():
        value = parse_value(keydef, raw)
        if value is not None:
            assert parse_value(keydef, value) == value


@given(st.integers(min_value=0, max_value=2**31 - 1))
def test_any_non_negative_int32_is_a_valid_heartbeat(n: int) -> None:
    assert parse_value(key("HeartbeatInterval"), str(n)) == str(n)


# --- OcppConfiguration


def test_change_accepted_is_applied() -> None:
    config = OcppConfiguration.for_connectors(2)
    assert config.get_int("HeartbeatInterval") == 300
    assert config.change("HeartbeatInterval", "900") is ChangeResult.ACCEPTED
    assert config.get("HeartbeatInterval") == "900"
    assert config.get_int("HeartbeatInterval") == 900


def test_change_results_carry_the_ocpp_status_strings() -> None:
    assert [r.value for r in ChangeResult] == [
        "Accepted",
        "Rejected",
        "RebootRequired",
        "NotSupported",
    ]


def test_change_invalid_value_is_rejected_and_changes_nothing() -> None:
    config = OcppConfiguration(core_keys(2))
    assert config.change("HeartbeatInterval", "-5") is ChangeResult.REJECTED
    assert config.change("HeartbeatInterval", "often") is ChangeResult.REJECTED
    assert config.get("HeartbeatInterval") == "300"
    assert config.change("LocalPreAuthorize", "1") is ChangeResult.REJECTED
    assert config.get_bool("LocalPreAuthorize") is False
    assert config.snapshot() == {}


def test_change_of_read_only_key_is_rejected() -> None:
    config = OcppConfiguration(core_keys(2))
    assert config.change("NumberOfConnectors", "3") is ChangeResult.REJECTED
    assert config.change("GetConfigurationMaxKeys", "64") is ChangeResult.REJECTED
    assert config.get_int("NumberOfConnectors") == 2


def test_change_of_unknown_key_is_not_supported() -> None:
    config = OcppConfiguration(core_keys(2))
    assert config.change("LightIntensity", "50") is ChangeResult.NOT_SUPPORTED
    # Keys are case-sensitive, as in the specification.
    assert config.change("heartbeatinterval", "60") is ChangeResult.NOT_SUPPORTED
    assert config.get("HeartbeatInterval") == "300"


def test_measurand_list_with_one_unsupported_member_changes_nothing() -> None:
    config = OcppConfiguration(core_keys(1))
    before = config.get_csl("MeterValuesSampledData")
    result = config.change("MeterValuesSampledData", "Energy.Active.Import.Register,Frequency")
    assert result is ChangeResult.REJECTED
    assert config.get_csl("MeterValuesSampledData") == before
    result = config.change("MeterValuesSampledData", "Energy.Active.Import.Register, Voltage")
    assert result is ChangeResult.ACCEPTED
    assert config.get_csl("MeterValuesSampledData") == ("Energy.Active.Import.Register", "Voltage")
    assert config.get("MeterValuesSampledData") == "Energy.Active.Import.Register,Voltage"


def test_reboot_required_keys_answer_reboot_required() -> None:
    keydef = KeyDef("NeedsReboot", KeyType.INT, readonly=False, default="1", reboot_required=True)
    config = OcppConfiguration({"NeedsReboot": keydef})
    assert config.change("NeedsReboot", "2") is ChangeResult.REBOOT_REQUIRED
    assert config.get_int("NeedsReboot") == 2


def test_security_profile_may_be_raised_but_not_lowered() -> None:
    config = OcppConfiguration(core_keys(1))
    assert config.change("SecurityProfile", "2") is ChangeResult.ACCEPTED
    assert config.change("SecurityProfile", "1") is ChangeResult.REJECTED
    # The same value is not a raise either (security whitepaper A05.FR.01).
    assert config.change("SecurityProfile", "2") is ChangeResult.REJECTED
    assert config.change("SecurityProfile", "3") is ChangeResult.ACCEPTED
    assert config.get_int("SecurityProfile") == 3


def test_write_only_key_is_settable_but_never_listed() -> None:
    config = OcppConfiguration(core_keys(2))
    assert config.change("AuthorizationKey", "too-short") is ChangeResult.REJECTED
    assert config.change("AuthorizationKey", "0123456789abcdef0123") is ChangeResult.ACCEPTED
    assert config.get("AuthorizationKey") == "0123456789abcdef0123"
    listed = [entry.key for entry in config.items()]
    assert "AuthorizationKey" not in listed
    assert "0123456789abcdef0123" not in [entry.value for entry in config.items()]
    known, unknown = config.get_configuration(["AuthorizationKey", "HeartbeatInterval"])
    assert [e.key for e in known] == ["HeartbeatInterval"]
    assert unknown == ["AuthorizationKey"]


def test_items_lists_every_readable_key_with_access_and_value() -> None:
    config = OcppConfiguration(core_keys(2))
    entries = {e.key: e for e in config.items()}
    assert set(entries) == set(EXPECTED_KEYS) - {"AuthorizationKey"}
    assert entries["NumberOfConnectors"] == ConfigurationEntry("NumberOfConnectors", True, "2")
    assert entries["HeartbeatInterval"] == ConfigurationEntry("HeartbeatInterval", False, "300")


def test_get_configuration_splits_known_and_unknown_keys() -> None:
    config = OcppConfiguration(core_keys(2))
    known, unknown = config.get_configuration(["MeterValueSampleInterval", "Nope", "nope"])
    assert known == [ConfigurationEntry("MeterValueSampleInterval", False, "60")]
    assert unknown == ["Nope", "nope"]
    everything, none = config.get_configuration(None)
    assert len(everything) == len(EXPECTED_KEYS) - 1
    assert none == []


def test_typed_getters_refuse_the_wrong_type() -> None:
    config = OcppConfiguration(core_keys(1))
    with pytest.raises(TypeError):
        config.get_bool("HeartbeatInterval")
    with pytest.raises(TypeError):
        config.get_int("MeterValuesSampledData")
    with pytest.raises(KeyError):
        config.get("Nope")
    assert config.get_csl("StopTxnSampledData") == ()
    assert config.get_str("AuthorizationKey") == ""


def test_set_initial_sets_writable_keys_only() -> None:
    config = OcppConfiguration(core_keys(2))
    config.set_initial("HeartbeatInterval", "120")
    config.set_initial("LocalPreAuthorize", "TRUE")
    assert config.get_int("HeartbeatInterval") == 120
    assert config.get("LocalPreAuthorize") == "true"
    with pytest.raises(InvalidValue):
        config.set_initial("NumberOfConnectors", "5")
    with pytest.raises(InvalidValue):
        config.set_initial("HeartbeatInterval", "-1")
    with pytest.raises(KeyError):
        config.set_initial("Nope", "1")
    # The config file is not a CSMS change: nothing to persist.
    assert config.snapshot() == {}


def test_snapshot_holds_what_the_csms_changed_and_load_restores_it() -> None:
    config = OcppConfiguration(core_keys(2))
    config.set_initial("HeartbeatInterval", "120")
    config.change("HeartbeatInterval", "300")  # equal to the default, still the CSMS's choice
    config.change("MeterValuesSampledData", "Voltage")
    config.change("AuthorizationKey", "0123456789abcdef")
    snapshot = config.snapshot()
    assert snapshot == {
        "HeartbeatInterval": "300",
        "MeterValuesSampledData": "Voltage",
        "AuthorizationKey": "0123456789abcdef",
    }

    restarted = OcppConfiguration(core_keys(2))
    restarted.set_initial("HeartbeatInterval", "120")
    assert restarted.load(snapshot) == []
    assert restarted.get_int("HeartbeatInterval") == 300
    assert restarted.get_csl("MeterValuesSampledData") == ("Voltage",)
    assert restarted.get("AuthorizationKey") == "0123456789abcdef"
    assert restarted.snapshot() == snapshot


def test_load_skips_unknown_read_only_and_invalid_values() -> None:
    config = OcppConfiguration(core_keys(2))
    ignored = config.load(
        {
            "RemovedKey": "1",
            "NumberOfConnectors": "7",
            "HeartbeatInterval": "-1",
            "MeterValueSampleInterval": "15",
        }
    )
    assert sorted(ignored) == ["HeartbeatInterval", "NumberOfConnectors", "RemovedKey"]
    assert config.get_int("NumberOfConnectors") == 2
    assert config.get_int("HeartbeatInterval") == 300
    assert config.get_int("MeterValueSampleInterval") == 15
    assert config.snapshot() == {"MeterValueSampleInterval": "15"}


def test_membership_and_iteration() -> None:
    config = OcppConfiguration(core_keys(1))
    assert "HeartbeatInterval" in config
    assert "heartbeatinterval" not in config
    assert set(config) == set(EXPECTED_KEYS)
    assert config.keydef("HeartbeatInterval").type is KeyType.INT
