"""OCPP 1.6 configuration keys supported by this charger (sans-I/O).

The registry (``core_keys``) says which keys exist, their type, access and bounds; the
``OcppConfiguration`` object holds the current values and implements the ChangeConfiguration
and GetConfiguration rules of OCPP 1.6 §5.3/§5.8 [S16]. Persistence and the reaction to a changed
value (e.g. a new HeartbeatInterval) belong to the caller: this module only decides and stores.

Values are kept in their OCPP string form (``"true"``, ``"300"``, ``"Voltage,Current.Import"``)
because that is what travels in GetConfiguration and what gets persisted; typed accessors convert
on the way out.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

__all__ = (
    "MEASURANDS",
    "PHASE_ROTATIONS",
    "ChangeResult",
    "ConfigurationEntry",
    "InvalidValue",
    "KeyDef",
    "KeyType",
    "OcppConfiguration",
    "core_keys",
    "parse_value",
    "to_python",
    "validate_value",
)


class KeyType(enum.Enum):
    BOOL = "bool"
    INT = "int"
    STRING = "string"
    CSL = "csl"  # comma-separated list

    @property
    def description(self) -> str:
        """The word an operator reads in an error message."""
        return _TYPE_WORDS[self]


_TYPE_WORDS: Mapping[KeyType, str] = MappingProxyType(
    {
        KeyType.BOOL: "boolean",
        KeyType.INT: "integer",
        KeyType.STRING: "string",
        KeyType.CSL: "comma-separated list",
    }
)


class ChangeResult(enum.Enum):
    """ConfigurationStatus of a ChangeConfiguration.conf; the values are the OCPP strings."""

    ACCEPTED = "Accepted"
    REJECTED = "Rejected"
    REBOOT_REQUIRED = "RebootRequired"
    NOT_SUPPORTED = "NotSupported"


# The measurands this charger can actually measure. A CSL measurand key naming anything else is
# Rejected as a whole [S16 §3.16.4], so a CSMS never believes it will get data we cannot produce.
MEASURANDS: frozenset[str] = frozenset(
    {
        "Energy.Active.Import.Register",
        "Power.Active.Import",
        "Current.Import",
        "Current.Offered",
        "Voltage",
    }
)

# ConnectorPhaseRotation member suffixes [S16 §9.1.7].
PHASE_ROTATIONS: tuple[str, ...] = (
    "NotApplicable",
    "Unknown",
    "RST",
    "RTS",
    "SRT",
    "STR",
    "TRS",
    "TSR",
)

_FEATURE_PROFILES: frozenset[str] = frozenset(
    {
        "Core",
        "FirmwareManagement",
        "LocalAuthListManagement",
        "Reservation",
        "SmartCharging",
        "RemoteTrigger",
    }
)

# OCPP integers travel as JSON numbers that CSMSs commonly store as int32; anything larger is a
# typo, not a setting.
_INT32_MAX = 2**31 - 1
# ChangeConfiguration.req value is CiString500 [S16 §6.9].
_MAX_VALUE_LENGTH = 500
# Python's int() also accepts "1_000", "٣" and surrounding whitespace; OCPP values are plain
# ASCII decimals.
_INT_RE = re.compile(r"[+-]?[0-9]+")


@dataclass(frozen=True, slots=True)
class KeyDef:
    """One configuration key.

    ``min_value``/``max_value`` bound the number for INT keys and the length in characters for
    STRING keys. For CSL keys, ``allowed_values`` lists the permitted members, or
    ``member_pattern`` (a regular expression matched against each whole member) describes them;
    members must be unique, or, if the pattern has a group named ``id``, that group must be;
    ``max_members`` is the value of the companion ``max_members_key`` (both read-only, so it is
    fixed when the registry is built).
    """

    name: str
    type: KeyType
    readonly: bool
    default: str
    reboot_required: bool = False
    min_value: int | None = None
    max_value: int | None = None
    allowed_values: frozenset[str] | None = None
    max_members_key: str | None = None
    write_only: bool = False
    max_members: int | None = None
    member_pattern: str | None = None


class InvalidValue(ValueError):
    """A raw value does not fit its key; ``str()`` says why, for operators."""


def _int(name: str, default: int, *, lo: int | None = 0, hi: int | None = None) -> KeyDef:
    return KeyDef(
        name, KeyType.INT, readonly=False, default=str(default), min_value=lo, max_value=hi
    )


def _ro_int(name: str, value: int) -> KeyDef:
    return KeyDef(name, KeyType.INT, readonly=True, default=str(value))


def _bool(name: str, default: bool) -> KeyDef:
    return KeyDef(name, KeyType.BOOL, readonly=False, default="true" if default else "false")


def _measurand_csl(name: str, default: str, max_members: int) -> KeyDef:
    return KeyDef(
        name,
        KeyType.CSL,
        readonly=False,
        default=default,
        allowed_values=MEASURANDS,
        max_members_key=f"{name}MaxLength",
        max_members=max_members,
    )


def core_keys(number_of_connectors: int) -> dict[str, KeyDef]:
    """Every configuration key this charger supports, by name, with its default value.

    Defaults suit a bench charger; the config file's ``[ocpp.config]`` and the CSMS adjust them.
    """
    if number_of_connectors < 1:
        raise ValueError(f"a charger has at least one connector, not {number_of_connectors}")
    n = number_of_connectors
    measurand_max = 8
    # Connector 0 means "all connectors"; the pattern pins the connector number to 0..n so a
    # rotation for a connector that does not exist is Rejected rather than silently stored.
    connector_alt = "|".join(str(i) for i in range(n + 1))
    rotation_alt = "|".join(PHASE_ROTATIONS)
    keys = [
        _bool("AllowOfflineTxForUnknownId", False),
        _bool("AuthorizationCacheEnabled", True),
        _bool("AuthorizeRemoteTxRequests", False),
        _int("ClockAlignedDataInterval", 0),
        _int("ConnectionTimeOut", 60, hi=24 * 3600),
        KeyDef(
            "ConnectorPhaseRotation",
            KeyType.CSL,
            readonly=False,
            default="0.RST",
            max_members_key="ConnectorPhaseRotationMaxLength",
            max_members=n + 1,
            member_pattern=rf"(?P<id>{connector_alt})\.(?:{rotation_alt})",
        ),
        _ro_int("ConnectorPhaseRotationMaxLength", n + 1),
        _ro_int("GetConfigurationMaxKeys", 64),
        _int("HeartbeatInterval", 300),
        _bool("LocalAuthorizeOffline", True),
        _bool("LocalPreAuthorize", False),
        _int("MaxEnergyOnInvalidId", 0),
        _measurand_csl("MeterValuesAlignedData", "Energy.Active.Import.Register", measurand_max),
        _ro_int("MeterValuesAlignedDataMaxLength", measurand_max),
        _measurand_csl(
            "MeterValuesSampledData",
            "Energy.Active.Import.Register,Power.Active.Import,Current.Import,"
            "Current.Offered,Voltage",
            measurand_max,
        ),
        _ro_int("MeterValuesSampledDataMaxLength", measurand_max),
        _int("MeterValueSampleInterval", 60),
        _int("MinimumStatusDuration", 0),
        _ro_int("NumberOfConnectors", n),
        _int("ResetRetries", 3),
        _bool("StopTransactionOnEVSideDisconnect", True),
        _bool("StopTransactionOnInvalidId", True),
        _measurand_csl("StopTxnAlignedData", "", measurand_max),
        _ro_int("StopTxnAlignedDataMaxLength", measurand_max),
        _measurand_csl("StopTxnSampledData", "", measurand_max),
        _ro_int("StopTxnSampledDataMaxLength", measurand_max),
        KeyDef(
            "SupportedFeatureProfiles",
            KeyType.CSL,
            readonly=True,
            default="Core,FirmwareManagement,LocalAuthListManagement,RemoteTrigger,SmartCharging",
            allowed_values=_FEATURE_PROFILES,
        ),
        # FirmwareManagement (errata 3.88): how firmware is fetched and diagnostics sent.
        KeyDef(
            "SupportedFileTransferProtocols",
            KeyType.CSL,
            readonly=True,
            default="FTP,FTPS,HTTP,HTTPS",
            allowed_values=frozenset({"FTP", "FTPS", "HTTP", "HTTPS"}),
        ),
        _int("TransactionMessageAttempts", 3, lo=1),
        _int("TransactionMessageRetryInterval", 60),
        _bool("UnlockConnectorOnEVSideDisconnect", True),
        # 0 disables pings; negative values are Rejected [S16 §9.1]. The websocket takes its
        # ping interval when it connects, so a new value is stored at once but takes effect
        # on the next connection: RebootRequired, the answer for "applied, not yet effective".
        KeyDef(
            "WebSocketPingInterval",
            KeyType.INT,
            readonly=False,
            default="60",
            min_value=0,
            reboot_required=True,
        ),
        _int("MessageTimeout", 30, lo=1, hi=3600),
        _bool("LocalAuthListEnabled", True),
        _ro_int("LocalAuthListMaxLength", 1000),
        _ro_int("SendLocalListMaxLength", 1000),
        # The basic-auth password [SEC]: write-only so that a CSMS reading every key cannot end
        # up storing it in plain text. Its default "" means "not set".
        KeyDef(
            "AuthorizationKey",
            KeyType.STRING,
            readonly=False,
            default="",
            min_value=16,
            max_value=40,
            write_only=True,
        ),
        _int("SecurityProfile", 0, lo=0, hi=3),
        # Security whitepaper §7. CpoName is the O of the certificate signing requests
        # (A02.FR.13); X.520 bounds an organizationName to 64 characters.
        KeyDef("CpoName", KeyType.STRING, readonly=False, default="", max_value=64),
        # Certificate chains beyond this are Rejected; the whitepaper's ceiling is 10 000.
        _ro_int("CertificateSignedMaxChainSize", 10000),
        # Root/CA certificates of both uses together (M05.FR.03).
        _ro_int("CertificateStoreMaxLength", 20),
        # M05.FR.08-13 (a new CentralSystemRootCertificate signed by the one it replaces) are
        # not implemented; the key is required wherever TLS is, so it says so.
        KeyDef("AdditionalRootCertificateCheck", KeyType.BOOL, readonly=True, default="false"),
        # Smart Charging [S16 §9.4]. Read-only: what this charger can hold, which the config
        # file may lower (a CSMS reading them sizes its profiles to fit).
        _ro_int("ChargeProfileMaxStackLevel", 8),
        KeyDef(
            "ChargingScheduleAllowedChargingRateUnit",
            KeyType.CSL,
            readonly=True,
            default="Current,Power",
            allowed_values=frozenset({"Current", "Power"}),
        ),
        _ro_int("ChargingScheduleMaxPeriods", 24),
        _ro_int("MaxChargingProfilesInstalled", 32),
    ]
    return {k.name: k for k in keys}


def validate_value(keydef: KeyDef, raw: str) -> str:
    """The normalized OCPP string form of ``raw`` for ``keydef``; raises InvalidValue if it
    does not fit (wrong type, out of range, unknown or duplicate CSL member, too many members).
    """
    if len(raw) > _MAX_VALUE_LENGTH:
        raise InvalidValue(f"longer than {_MAX_VALUE_LENGTH} characters")
    if keydef.type is KeyType.BOOL:
        lowered = raw.strip().lower()
        if lowered not in ("true", "false"):
            raise InvalidValue(f"{raw!r} is not true or false")
        return lowered
    if keydef.type is KeyType.INT:
        return str(_validate_int(keydef, raw))
    if keydef.type is KeyType.STRING:
        return _validate_string(keydef, raw)
    return _validate_csl(keydef, raw)


def _validate_int(keydef: KeyDef, raw: str) -> int:
    text = raw.strip()
    if not _INT_RE.fullmatch(text):
        raise InvalidValue(f"{raw!r} is not an integer")
    value = int(text)
    lo = keydef.min_value
    hi = keydef.max_value if keydef.max_value is not None else _INT32_MAX
    if lo is not None and value < lo:
        raise InvalidValue(f"{value} is below the minimum {lo}")
    if value > hi:
        raise InvalidValue(f"{value} is above the maximum {hi}")
    return value


def _validate_string(keydef: KeyDef, raw: str) -> str:
    # Strings are taken verbatim: whitespace may be part of a password.
    if keydef.min_value is not None and len(raw) < keydef.min_value:
        raise InvalidValue(f"shorter than {keydef.min_value} characters")
    if keydef.max_value is not None and len(raw) > keydef.max_value:
        raise InvalidValue(f"longer than {keydef.max_value} characters")
    return raw


def _validate_csl(keydef: KeyDef, raw: str) -> str:
    if raw.strip() == "":
        return ""
    members = [m.strip() for m in raw.split(",")]
    seen: set[str] = set()
    for member in members:
        if member == "":
            raise InvalidValue("empty list member")
        if keydef.allowed_values is not None and member not in keydef.allowed_values:
            raise InvalidValue(
                f"unsupported member {member!r}; supported: "
                + ", ".join(sorted(keydef.allowed_values))
            )
        identity = member
        if keydef.member_pattern is not None:
            match = re.fullmatch(keydef.member_pattern, member)
            if match is None:
                raise InvalidValue(f"malformed member {member!r}")
            if "id" in match.re.groupindex:
                identity = match["id"]
        # A repeated measurand would be sampled twice; two rotations for one connector
        # contradict each other. Neither is a sensible setting.
        if identity in seen:
            raise InvalidValue(f"duplicate member {member!r}")
        seen.add(identity)
    if keydef.max_members is not None and len(members) > keydef.max_members:
        raise InvalidValue(f"{len(members)} members, at most {keydef.max_members} allowed")
    return ",".join(members)


def parse_value(keydef: KeyDef, raw: str) -> str | None:
    """The normalized OCPP string form of ``raw`` for ``keydef``, or None if it is invalid.

    Booleans become ``"true"``/``"false"``, integers plain decimals, CSL members lose their
    surrounding spaces. A CSL with any unsupported member is invalid as a whole.
    """
    try:
        return validate_value(keydef, raw)
    except InvalidValue:
        return None


def to_python(keydef: KeyDef, value: str) -> bool | int | str | tuple[str, ...]:
    """``value`` (an OCPP string) as a Python value: bool, int, str or a tuple of CSL members.

    Raises InvalidValue if ``value`` does not fit the key.
    """
    normalized = validate_value(keydef, value)
    if keydef.type is KeyType.BOOL:
        return normalized == "true"
    if keydef.type is KeyType.INT:
        return int(normalized)
    if keydef.type is KeyType.CSL:
        return tuple(normalized.split(",")) if normalized else ()
    return normalized


@dataclass(frozen=True, slots=True)
class ConfigurationEntry:
    """One KeyValue of a GetConfiguration.conf."""

    key: str
    readonly: bool
    value: str


class OcppConfiguration:
    """Current values of the configuration keys, with the ChangeConfiguration rules.

    Layering, lowest first: registry defaults, then ``set_initial`` (the config file), then
    ``load`` (values the CSMS changed earlier, persisted from ``snapshot``), then ``change``
    (ChangeConfiguration at run time). ``snapshot`` holds exactly what came through ``change``
    or ``load``, so a CSMS's choice survives a restart even when it equals a default, while the
    config file still supplies everything the CSMS never touched.
    """

    def __init__(self, keys: Mapping[str, KeyDef]) -> None:
        self._keys: dict[str, KeyDef] = dict(keys)
        self._values: dict[str, str] = {name: k.default for name, k in self._keys.items()}
        self._changed: set[str] = set()

    @classmethod
    def for_connectors(cls, number_of_connectors: int) -> OcppConfiguration:
        return cls(core_keys(number_of_connectors))

    def __contains__(self, name: object) -> bool:
        return name in self._keys

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def keydef(self, name: str) -> KeyDef:
        """The definition of a key; KeyError if unsupported. Names are case-sensitive."""
        return self._keys[name]

    def get(self, name: str) -> str:
        """The current OCPP string value, write-only keys included (for internal use)."""
        return self._values[name]

    def get_bool(self, name: str) -> bool:
        return self._typed(name, KeyType.BOOL) == "true"

    def get_int(self, name: str) -> int:
        return int(self._typed(name, KeyType.INT))

    def get_str(self, name: str) -> str:
        return self._typed(name, KeyType.STRING)

    def get_csl(self, name: str) -> tuple[str, ...]:
        value = self._typed(name, KeyType.CSL)
        return tuple(value.split(",")) if value else ()

    def _typed(self, name: str, expected: KeyType) -> str:
        keydef = self._keys[name]
        if keydef.type is not expected:
            raise TypeError(f"{name} is a {keydef.type.description} key")
        return self._values[name]

    def items(self) -> list[ConfigurationEntry]:
        """Every readable key with its value, in registry order, for a GetConfiguration
        without a key list. Write-only keys are left out entirely."""
        return [
            ConfigurationEntry(name, k.readonly, self._values[name])
            for name, k in self._keys.items()
            if not k.write_only
        ]

    def get_configuration(
        self, names: Sequence[str] | None = None
    ) -> tuple[list[ConfigurationEntry], list[str]]:
        """(configurationKey, unknownKey) for a GetConfiguration.req with the given key list.

        A requested write-only key is reported unknown: answering with the key but no value
        would still tell an eavesdropper which secret exists, and OCPP 1.6 has no better status.
        """
        if not names:
            return self.items(), []
        known: list[ConfigurationEntry] = []
        unknown: list[str] = []
        for name in names:
            keydef = self._keys.get(name)
            if keydef is None or keydef.write_only:
                unknown.append(name)
            else:
                known.append(ConfigurationEntry(name, keydef.readonly, self._values[name]))
        return known, unknown

    def change(self, name: str, raw: str) -> ChangeResult:
        """Apply a ChangeConfiguration.req; an invalid value changes nothing."""
        keydef = self._keys.get(name)
        if keydef is None:
            return ChangeResult.NOT_SUPPORTED
        if keydef.readonly:
            return ChangeResult.REJECTED
        value = parse_value(keydef, raw)
        if value is None:
            return ChangeResult.REJECTED
        # The security whitepaper forbids the CSMS to lower the security profile: that would
        # let anyone who can reach the CSMS endpoint downgrade the charger's link. The same
        # value is Rejected too (A05.FR.01), so that Accepted always means "reconnecting".
        if name == "SecurityProfile" and int(value) <= int(self._values[name]):
            return ChangeResult.REJECTED
        self._values[name] = value
        self._changed.add(name)
        if keydef.reboot_required:
            return ChangeResult.REBOOT_REQUIRED
        return ChangeResult.ACCEPTED

    def set_initial(self, name: str, value: str) -> None:
        """Set a value from the config file. Raises KeyError for an unknown key and
        InvalidValue for a read-only key or a value that does not fit."""
        keydef = self._keys[name]
        if keydef.readonly:
            raise InvalidValue(f"{name} is read-only")
        self._values[name] = validate_value(keydef, value)

    def snapshot(self) -> dict[str, str]:
        """The values set through ``change`` or ``load``, for persistence."""
        return {name: self._values[name] for name in self._keys if name in self._changed}

    def load(self, values: Mapping[str, str]) -> list[str]:
        """Restore persisted values. Returns the names that were ignored because the key is
        unknown, read-only or the value no longer fits (e.g. after a firmware update changed
        the registry), so that the caller can log them; everything else is applied."""
        ignored: list[str] = []
        for name, raw in values.items():
            keydef = self._keys.get(name)
            value = None if keydef is None or keydef.readonly else parse_value(keydef, raw)
            if value is None:
                ignored.append(name)
                continue
            self._values[name] = value
            self._changed.add(name)
        return ignored
