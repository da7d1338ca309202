"""The TOML config file (``/etc/evse-daemon/evse.toml``) parsed into typed, frozen objects.

A technician fixes a config file from the list that ``evse-daemon check-config`` prints, so
validation never stops at the first problem: it collects every error, each with the file, the
line where the offending key is written and the dotted key path, as ``FILE:LINE: key: message``.

tomli parses (its errors carry a line number on Python 3.11, tomllib's do not); the parsed
dict has no positions, so a small scanner over the raw text (``_LineLocator``) maps every key
path to the line it is written on.
"""

from __future__ import annotations

import bisect
import datetime
import difflib
import importlib.metadata
import json
import os
import re
import ssl
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

import tomli

from evse_daemon import ocpp_keys
from evse_daemon.logfields import IdTagPolicy

__all__ = (
    "DRIVER_SCHEMAS",
    "Config",
    "ConfigError",
    "ConfigInvalid",
    "ConnectorConfig",
    "ControlConfig",
    "DiagnosticsConfig",
    "DriverConfig",
    "FirmwareConfig",
    "LoggingConfig",
    "OcppSection",
    "OptionSpec",
    "StationConfig",
    "StorageConfig",
    "format_key_path",
    "load_config",
    "parse_config",
)

if TYPE_CHECKING:
    from .board import Board

KeyPath = tuple[str | int, ...]

# Data for real hardware that ships with the daemon: board profiles and meter register maps.
HARDWARE_DATA_DIR = Path(__file__).resolve().parent.parent / "hardware"
BOARDS_DIR = HARDWARE_DATA_DIR / "boards"
METER_MAPS_DIR = HARDWARE_DATA_DIR / "meters"

# --------------------------------------------------------------------------------------------
# Result objects


def _empty_options() -> Mapping[str, object]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class DriverConfig:
    """Which driver runs one part of the hardware, and its options (every key of the table
    except ``driver``, validated against ``DRIVER_SCHEMAS``)."""

    driver: str
    options: Mapping[str, object] = field(default_factory=_empty_options)


@dataclass(frozen=True, slots=True)
class StationConfig:
    id: str
    vendor: str
    model: str
    serial_number: str | None = None
    firmware_version: str = "0.0.0"
    nominal_voltage_v: float = 230.0


@dataclass(frozen=True, slots=True)
class OcppSection:
    csms_url: str
    version: str = "1.6"
    security_profile: int = 0
    basic_auth_password: str | None = None
    ca_file: str | None = None
    client_cert_file: str | None = None
    client_key_file: str | None = None
    message_timeout_s: float = 30.0
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0
    # [ocpp.config], each value already in its normalized OCPP string form.
    config: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def initial_configuration(self) -> dict[str, str]:
        """Initial values for ``OcppConfiguration.set_initial``: ``[ocpp.config]`` plus the OCPP
        keys that mirror ``[ocpp]`` settings (SecurityProfile, AuthorizationKey, MessageTimeout).

        Those three may not be written in ``[ocpp.config]`` so that each has one source.
        """
        values = dict(self.config)
        values["SecurityProfile"] = str(self.security_profile)
        values["MessageTimeout"] = str(max(1, round(self.message_timeout_s)))
        if self.basic_auth_password is not None:
            values["AuthorizationKey"] = self.basic_auth_password
        return values


@dataclass(frozen=True, slots=True)
class StorageConfig:
    state_dir: str = "/var/lib/evse-daemon"
    # Bound of the outbound transaction-message queue; past it, intermediate meter values
    # are thinned (StartTransaction/StopTransaction are never dropped).
    max_queued_messages: int = 10000


@dataclass(frozen=True, slots=True)
class SiteConfig:
    # The grid connection's limit, amperes per phase, shared fairly by the charging connectors
    # (together with any OCPP ChargePointMaxProfile). None: no site limit.
    max_current_a: float | None = None


@dataclass(frozen=True, slots=True)
class BoardConfig:
    """The board profile (hardware/boards/<profile>.toml, or a path) and its wiring, with the
    config's overrides applied (an ``evse_daemon.board.Board``)."""

    profile: str
    board: Board


@dataclass(frozen=True, slots=True)
class ControlConfig:
    socket: str = "/run/evse-daemon/control.sock"


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: str = "INFO"
    # How idTags appear in the log: "clear", "hash" (keyed with a per-install key: the same
    # card gives the same hash on this charger, the tag cannot be recovered) or "masked".
    id_tag: str = "hash"


# Placeholders the firmware commands may use, by command.
INSTALL_PLACEHOLDERS = ("file", "version", "config")
CHECK_PLACEHOLDERS = ("venv", "config")
ROLLBACK_PLACEHOLDERS = ("config",)


@dataclass(frozen=True, slots=True)
class FirmwareConfig:
    """How UpdateFirmware / SignedUpdateFirmware installs what it downloaded.

    Without ``install_command`` the built-in installer puts a wheel (or a .tar.gz/.zip of
    wheels) into a new venv ``<install_dir>/venvs/<version>`` and switches the symlink
    ``<install_dir>/venv`` to it, keeping the previous target to roll back to.
    """

    install_dir: str = "/opt/evse-daemon"
    install_command: tuple[str, ...] = ()
    rollback_command: tuple[str, ...] = ()
    # Run in the new venv before it is switched to; a failure is InstallationFailed.
    check_command: tuple[str, ...] = ("{venv}/bin/evse-daemon", "check-config", "{config}")
    pip_options: tuple[str, ...] = ()
    # When the CSMS leaves retries / retryInterval out.
    default_retries: int = 3
    default_retry_interval_s: int = 60
    install_timeout_s: float = 900.0
    # The restarted daemon must register with the CSMS within this time and within this
    # many starts, or the previous version comes back.
    confirm_timeout_s: float = 600.0
    max_unconfirmed_starts: int = 3
    max_download_bytes: int = 512 * 1024 * 1024
    # Security whitepaper L01.FR.20: with signed updates required, UpdateFirmware is refused.
    require_signed: bool = False


@dataclass(frozen=True, slots=True)
class DiagnosticsConfig:
    """What GetDiagnostics collects and how it uploads."""

    # The systemd unit whose journal is included ("" for none).
    journal_unit: str = "evse-daemon.service"
    max_journal_lines: int = 20000
    # Further log files to include (the daemon's own, if one is written).
    log_files: tuple[str, ...] = ()
    # HTTP(S) uploads: PUT to <location>/<fileName>, or POST to <location>.
    http_method: Literal["PUT", "POST"] = "PUT"
    default_retries: int = 3
    default_retry_interval_s: int = 60


@dataclass(frozen=True, slots=True)
class ConnectorConfig:
    id: int
    max_current_a: float
    phases: int
    pilot: DriverConfig
    contactor: DriverConfig
    meter: DriverConfig
    lock: DriverConfig | None = None
    rcd: DriverConfig | None = None
    temperature: DriverConfig | None = None
    max_temperature_c: float = 80.0

    @property
    def drivers(self) -> dict[str, DriverConfig]:
        """Every configured part of this connector by part name (``pilot``, ``lock``, ...)."""
        parts = {
            "pilot": self.pilot,
            "contactor": self.contactor,
            "meter": self.meter,
            "lock": self.lock,
            "rcd": self.rcd,
            "temperature": self.temperature,
        }
        return {name: d for name, d in parts.items() if d is not None}


@dataclass(frozen=True, slots=True)
class Config:
    path: str
    station: StationConfig
    ocpp: OcppSection
    storage: StorageConfig
    control: ControlConfig
    rfid: DriverConfig | None
    logging: LoggingConfig
    connectors: tuple[ConnectorConfig, ...]
    site: SiteConfig = SiteConfig()
    board: BoardConfig | None = None
    firmware: FirmwareConfig = FirmwareConfig()
    diagnostics: DiagnosticsConfig = DiagnosticsConfig()

    @property
    def is_bench(self) -> bool:
        """True when every part runs on a mock driver: bench verbs are allowed only then."""
        drivers = [d for c in self.connectors for d in c.drivers.values()]
        if self.rfid is not None:
            drivers.append(self.rfid)
        return all(d.driver == "mock" for d in drivers)


# --------------------------------------------------------------------------------------------
# Errors


@dataclass(frozen=True, slots=True)
class ConfigError:
    path: str  # the config file
    line: int
    key: str  # dotted key path, e.g. connector[1].pilot.driver
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.key}: {self.message}"


class ConfigInvalid(Exception):
    """The config file has errors; ``errors`` lists all of them, ordered by line."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors))


# --------------------------------------------------------------------------------------------
# Driver option schemas

OptionKind = Literal["string", "integer", "number", "boolean"]


@dataclass(frozen=True, slots=True)
class OptionSpec:
    """One option of a driver table. Bounds apply to the value of numbers and to the length
    of strings; ``choices`` lists the only values allowed."""

    kind: OptionKind
    required: bool = False
    min_value: float | None = None
    max_value: float | None = None
    choices: frozenset[str | int] | None = None


def _schema(**options: OptionSpec) -> Mapping[str, OptionSpec]:
    return MappingProxyType(options)


_NO_OPTIONS = _schema()

# part -> driver name -> option name -> spec. To add a driver, add its entry here; the app
# maps the same names to driver classes.
DRIVER_SCHEMAS: Mapping[str, Mapping[str, Mapping[str, OptionSpec]]] = MappingProxyType(
    {
        "pilot": MappingProxyType(
            {
                "mock": _schema(
                    ev_max_current_a=OptionSpec("number", min_value=6.0, max_value=80.0),
                    ev_phases=OptionSpec("integer", choices=frozenset({1, 3})),
                ),
                # Kernel PWM + MCP300x ADC, wired as the [board] profile says.
                "rpi": _NO_OPTIONS,
                # A pilot co-processor on a UART (hardware/pilot-uart-protocol.md).
                "uart": _schema(
                    device=OptionSpec("string", required=True, min_value=1, max_value=4096),
                    baudrate=OptionSpec("integer", min_value=1200, max_value=1_000_000),
                ),
            }
        ),
        "contactor": MappingProxyType({"mock": _NO_OPTIONS, "gpio": _NO_OPTIONS}),
        "meter": MappingProxyType(
            {
                "mock": _NO_OPTIONS,
                # A Modbus meter described by a register map: hardware/meters/<model>.toml, or
                # map_file for one of the technician's own. `host` = Modbus TCP, `device` =
                # RTU on a serial port (several meters may share one port: same device).
                "modbus": _schema(
                    model=OptionSpec("string", min_value=1, max_value=64),
                    map_file=OptionSpec("string", min_value=1, max_value=4096),
                    host=OptionSpec("string", min_value=1, max_value=253),
                    port=OptionSpec("integer", min_value=1, max_value=65535),
                    device=OptionSpec("string", min_value=1, max_value=4096),
                    baudrate=OptionSpec(
                        "integer",
                        choices=frozenset({1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200}),
                    ),
                    parity=OptionSpec("string", choices=frozenset({"N", "E", "O"})),
                    stopbits=OptionSpec("integer", choices=frozenset({1, 2})),
                    unit_id=OptionSpec("integer", min_value=1, max_value=247),
                    timeout_s=OptionSpec("number", min_value=0.05, max_value=10.0),
                ),
            }
        ),
        "lock": MappingProxyType({"mock": _NO_OPTIONS, "gpio": _NO_OPTIONS}),
        "rcd": MappingProxyType({"mock": _NO_OPTIONS, "gpio": _NO_OPTIONS}),
        "temperature": MappingProxyType({"mock": _NO_OPTIONS, "adc": _NO_OPTIONS}),
        "rfid": MappingProxyType(
            {
                "mock": _NO_OPTIONS,
                # id_tag_format: how the card's id becomes the idTag. "hex" (default): upper-case
                # hex, byte 0 first (OCPP 1.6 §3.9); "hex-reversed": last byte first;
                # "decimal": the id as an unsigned decimal number (as printed on many cards).
                "rdm6300": _schema(
                    device=OptionSpec("string", required=True, min_value=1, max_value=4096),
                    baudrate=OptionSpec("integer", choices=frozenset({9600})),
                    id_tag_format=OptionSpec(
                        "string", choices=frozenset({"hex", "hex-reversed", "decimal"})
                    ),
                    repeat_s=OptionSpec("number", min_value=0.1, max_value=30.0),
                ),
                "pn532": _schema(
                    device=OptionSpec("string", required=True, min_value=1, max_value=4096),
                    baudrate=OptionSpec("integer", choices=frozenset({9600, 57600, 115200})),
                    id_tag_format=OptionSpec(
                        "string", choices=frozenset({"hex", "hex-reversed", "decimal"})
                    ),
                    repeat_s=OptionSpec("number", min_value=0.1, max_value=30.0),
                    poll_interval_s=OptionSpec("number", min_value=0.05, max_value=5.0),
                ),
            }
        ),
    }
)

# --------------------------------------------------------------------------------------------
# Key paths and line numbers

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def format_key_path(path: KeyPath) -> str:
    """``("connector", 1, "pilot", "driver")`` → ``connector[1].pilot.driver``; keys that are
    not bare TOML keys are quoted as TOML would need them."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            text = part if _BARE_KEY.fullmatch(part) else json.dumps(part, ensure_ascii=False)
            out += f".{text}" if out else text
    return out


# Characters that end a bare key (tolerant: anything else is taken as part of the key).
_KEY_STOP = frozenset(" \t.=[]{},#\"'\r\n")
# Characters that end a scalar value (number, boolean, date-time; date-times may hold a space).
_SCALAR_STOP = frozenset(",]}#\r\n")


class _LineLocator:
    """Maps key paths to the line they are written on, by scanning the raw TOML text.

    Only used on text tomli has already accepted, so it can be lenient; it understands tables,
    arrays of tables (counting entries so ``[[connector]]`` number 2 is ``connector[1]``),
    dotted and quoted keys, inline tables (also multi-line, as TOML 1.1 allows), arrays and all
    four string forms, so that brackets or ``=`` inside strings never confuse it.
    """

    def __init__(self, text: str) -> None:
        self._text = text
        self._n = len(text)
        self._pos = 0
        self._newlines = [i for i, c in enumerate(text) if c == "\n"]
        self._lines: dict[KeyPath, int] = {(): 1}
        # Tables that exist only because a deeper key created them: a later explicit header
        # or key is the better place to point at.
        self._implicit: set[KeyPath] = set()
        self._aot_count: dict[KeyPath, int] = {}
        self._scan()

    def line_of(self, path: KeyPath) -> int:
        """The line of ``path``, or of its nearest written ancestor (for missing keys), or 1."""
        while path not in self._lines:
            path = path[:-1]
        return self._lines[path]

    # -- helpers

    def _line(self) -> int:
        return bisect.bisect_left(self._newlines, self._pos) + 1

    def _peek(self) -> str:
        return self._text[self._pos] if self._pos < self._n else ""

    def _record(self, path: KeyPath, line: int, *, explicit: bool) -> None:
        if explicit:
            if path not in self._lines or path in self._implicit:
                self._lines[path] = line
                self._implicit.discard(path)
        elif path not in self._lines:
            self._lines[path] = line
            self._implicit.add(path)

    def _skip_trivia(self, *, newlines: bool) -> None:
        text = self._text
        while self._pos < self._n:
            c = text[self._pos]
            if c in " \t":
                self._pos += 1
            elif c == "#":
                end = text.find("\n", self._pos)
                self._pos = self._n if end < 0 else end
            elif newlines and c in "\r\n":
                self._pos += 1
            else:
                break

    def _skip_line(self) -> None:
        end = self._text.find("\n", self._pos)
        self._pos = self._n if end < 0 else end

    # -- statements

    def _scan(self) -> None:
        table: KeyPath = ()
        while True:
            self._skip_trivia(newlines=True)
            if self._pos >= self._n:
                return
            start = self._pos
            line = self._line()
            if self._text.startswith("[[", self._pos):
                self._pos += 2
                table = self._open_array_table(self._key(), line)
                self._skip_line()
            elif self._peek() == "[":
                self._pos += 1
                table = self._open_table(self._key(), line)
                self._skip_line()
            else:
                self._keyval(table)
            if self._pos == start:  # never loop on text this scanner does not understand
                self._pos += 1

    def _resolve(self, keys: list[str]) -> KeyPath:
        """A header's key path, with each array-of-tables prefix pointing at its last entry."""
        path: KeyPath = ()
        for key in keys:
            path = (*path, key)
            count = self._aot_count.get(path)
            if count:
                path = (*path, count - 1)
        return path

    def _open_table(self, keys: list[str], line: int) -> KeyPath:
        path = self._resolve(keys)
        for i in range(1, len(path)):
            self._record(path[:i], line, explicit=False)
        self._record(path, line, explicit=True)
        return path

    def _open_array_table(self, keys: list[str], line: int) -> KeyPath:
        if not keys:
            return ()
        array = (*self._resolve(keys[:-1]), keys[-1])
        index = self._aot_count.get(array, 0)
        self._aot_count[array] = index + 1
        for i in range(1, len(array) + 1):
            self._record(array[:i], line, explicit=False)
        table = (*array, index)
        self._record(table, line, explicit=True)
        return table

    def _key(self) -> list[str]:
        parts: list[str] = []
        text = self._text
        while self._pos < self._n:
            self._skip_trivia(newlines=False)
            c = self._peek()
            start = self._pos
            if c == '"':
                self._skip_basic_string()
                raw = text[start : self._pos]
                try:
                    parts.append(str(tomli.loads(f"k = {raw}")["k"]))
                except tomli.TOMLDecodeError:
                    parts.append(raw.strip('"'))
            elif c == "'":
                self._skip_literal_string()
                parts.append(text[start + 1 : self._pos - 1])
            else:
                while self._pos < self._n and text[self._pos] not in _KEY_STOP:
                    self._pos += 1
                if self._pos == start:
                    break
                parts.append(text[start : self._pos])
            self._skip_trivia(newlines=False)
            if self._peek() != ".":
                break
            self._pos += 1
        return parts

    def _keyval(self, base: KeyPath) -> None:
        line = self._line()
        keys = self._key()
        if not keys:
            return
        path = (*base, *keys)
        for i in range(len(base) + 1, len(path)):
            self._record(path[:i], line, explicit=False)
        self._record(path, line, explicit=True)
        self._skip_trivia(newlines=False)
        if self._peek() == "=":
            self._pos += 1
        self._skip_trivia(newlines=False)
        self._value(path)

    # -- values

    def _value(self, path: KeyPath) -> None:
        text = self._text
        c = self._peek()
        if text.startswith('"""', self._pos):
            self._skip_multiline_string('"""', escapes=True)
        elif text.startswith("'''", self._pos):
            self._skip_multiline_string("'''", escapes=False)
        elif c == '"':
            self._skip_basic_string()
        elif c == "'":
            self._skip_literal_string()
        elif c == "[":
            self._array(path)
        elif c == "{":
            self._inline_table(path)
        else:
            while self._pos < self._n and text[self._pos] not in _SCALAR_STOP:
                self._pos += 1

    def _skip_basic_string(self) -> None:
        text = self._text
        self._pos += 1
        while self._pos < self._n:
            c = text[self._pos]
            if c == "\\":
                self._pos += 2
            elif c == '"':
                self._pos += 1
                return
            elif c == "\n":
                return
            else:
                self._pos += 1

    def _skip_literal_string(self) -> None:
        text = self._text
        self._pos += 1
        while self._pos < self._n and text[self._pos] not in "'\n":
            self._pos += 1
        if self._peek() == "'":
            self._pos += 1

    def _skip_multiline_string(self, delimiter: str, *, escapes: bool) -> None:
        text = self._text
        self._pos += 3
        while self._pos < self._n:
            if escapes and text[self._pos] == "\\":
                self._pos += 2
            elif text.startswith(delimiter, self._pos):
                self._pos += 3
                # Up to two quotes right before the closing delimiter belong to the content.
                extra = 0
                while extra < 2 and self._peek() == delimiter[0]:
                    self._pos += 1
                    extra += 1
                return
            else:
                self._pos += 1

    def _array(self, path: KeyPath) -> None:
        self._pos += 1
        index = 0
        while self._pos < self._n:
            self._skip_trivia(newlines=True)
            c = self._peek()
            if c == "]":
                self._pos += 1
                return
            if c == ",":
                self._pos += 1
                continue
            start = self._pos
            element = (*path, index)
            self._record(element, self._line(), explicit=True)
            self._value(element)
            index += 1
            if self._pos == start:
                self._pos += 1

    def _inline_table(self, path: KeyPath) -> None:
        self._pos += 1
        while self._pos < self._n:
            self._skip_trivia(newlines=True)
            c = self._peek()
            if c == "}":
                self._pos += 1
                return
            if c == ",":
                self._pos += 1
                continue
            start = self._pos
            self._keyval(path)
            if self._pos == start:
                self._pos += 1


# --------------------------------------------------------------------------------------------
# Validation

_TOP_LEVEL_KEYS = (
    "station",
    "ocpp",
    "storage",
    "site",
    "board",
    "control",
    "rfid",
    "logging",
    "connector",
    "firmware",
    "diagnostics",
)
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_ID_TAG_POLICIES = tuple(policy.value for policy in IdTagPolicy)
_OCPP_VERSIONS_LATER = ("2.0.1",)
# OCPP keys that mirror an [ocpp] setting; writing them in [ocpp.config] would give two sources.
_OCPP_KEYS_FROM_SECTION = MappingProxyType(
    {
        "SecurityProfile": "ocpp.security_profile",
        "AuthorizationKey": "ocpp.basic_auth_password",
        "MessageTimeout": "ocpp.message_timeout_s",
    }
)
# The identity becomes the last path segment of the websocket URL, so anything a URL would
# have to escape or that would end the path is refused.
_STATION_ID = re.compile(r"[!-~]+")
_STATION_ID_FORBIDDEN = frozenset("/?#%")
# sun_path of a Unix socket address holds 108 bytes including the terminating NUL.
_MAX_SOCKET_PATH_BYTES = 107
# A {name} placeholder in a command line of [firmware].
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


def _type_name(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "table"
    if isinstance(value, datetime.datetime):
        return "date-time"
    if isinstance(value, datetime.date):
        return "date"
    if isinstance(value, datetime.time):
        return "time"
    return type(value).__name__


def _num(value: float) -> str:
    return f"{value:g}"


def _unknown_message(key: str, known: Collection[str], what: str = "unknown key") -> str:
    lowered = {k.lower(): k for k in known}
    match = lowered.get(key.lower())
    if match is None:
        close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.75)
        match = close[0] if close else None
    return f'{what} (did you mean "{match}"?)' if match else what


def _package_version() -> str:
    try:
        return importlib.metadata.version("evse-daemon")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


def _choices_text(choices: Collection[str | int]) -> str:
    words = [json.dumps(c) if isinstance(c, str) else str(c) for c in sorted(choices, key=str)]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _range_problem(value: float, lo: float | None, hi: float | None) -> str | None:
    # Written as "not (inside)" so that NaN, which compares false with everything, is refused.
    if lo is not None and hi is not None:
        if not lo <= value <= hi:
            return f"must be between {_num(lo)} and {_num(hi)}, got {_num(value)}"
    elif lo is not None:
        if not value >= lo:
            return f"must be at least {_num(lo)}, got {_num(value)}"
    elif hi is not None and not value <= hi:
        return f"must be at most {_num(hi)}, got {_num(value)}"
    return None


class _Checker:
    """Collects errors with their line numbers. The typed getters return None when a value is
    absent or wrong (after recording why), so that building goes on and finds further errors."""

    def __init__(self, file: str, locator: _LineLocator) -> None:
        self.file = file
        self.locator = locator
        self.errors: list[ConfigError] = []

    def error(self, path: KeyPath, message: str) -> None:
        line = self.locator.line_of(path)
        self.errors.append(ConfigError(self.file, line, format_key_path(path), message))

    def mark(self) -> int:
        return len(self.errors)

    def failed_since(self, mark: int) -> bool:
        return len(self.errors) > mark

    def unknown_keys(
        self, table: Mapping[str, object], path: KeyPath, known: Collection[str]
    ) -> None:
        for key in table:
            if key not in known:
                self.error((*path, key), _unknown_message(key, known))

    def table(
        self, parent: Mapping[str, object], path: KeyPath, key: str, *, required: bool
    ) -> Mapping[str, object] | None:
        value = self._get(parent, path, key, required=required)
        if value is None:
            return None
        if not isinstance(value, dict):
            self.error((*path, key), f"expected table, got {_type_name(value)}")
            return None
        return value

    def _get(
        self, table: Mapping[str, object], path: KeyPath, key: str, *, required: bool
    ) -> object:
        # TOML has no null, so None can only mean "absent".
        if key in table:
            return table[key]
        if required:
            self.error((*path, key), "required key missing")
        return None

    def string(
        self,
        table: Mapping[str, object],
        path: KeyPath,
        key: str,
        *,
        required: bool = False,
        min_len: int = 1,
        max_len: int | None = None,
    ) -> str | None:
        value = self._get(table, path, key, required=required)
        if value is None:
            return None
        return self.check_string((*path, key), value, min_len=min_len, max_len=max_len)

    def integer(
        self,
        table: Mapping[str, object],
        path: KeyPath,
        key: str,
        *,
        required: bool = False,
        lo: int | None = None,
        hi: int | None = None,
        choices: Collection[int] | None = None,
    ) -> int | None:
        value = self._get(table, path, key, required=required)
        if value is None:
            return None
        return self.check_integer((*path, key), value, lo=lo, hi=hi, choices=choices)

    def number(
        self,
        table: Mapping[str, object],
        path: KeyPath,
        key: str,
        *,
        required: bool = False,
        lo: float | None = None,
        hi: float | None = None,
    ) -> float | None:
        value = self._get(table, path, key, required=required)
        if value is None:
            return None
        return self.check_number((*path, key), value, lo=lo, hi=hi)

    def check_string(
        self,
        path: KeyPath,
        value: object,
        *,
        min_len: int = 1,
        max_len: int | None = None,
        choices: Collection[str] | None = None,
    ) -> str | None:
        if not isinstance(value, str):
            self.error(path, f"expected string, got {_type_name(value)}")
            return None
        problem = None
        if choices is not None and value not in choices:
            problem = f"must be {_choices_text(choices)}, got {json.dumps(value)}"
        elif len(value) < min_len:
            problem = "must not be empty" if min_len == 1 else f"needs {min_len} characters or more"
        elif max_len is not None and len(value) > max_len:
            problem = f"must be at most {max_len} characters, got {len(value)}"
        if problem is not None:
            self.error(path, problem)
            return None
        return value

    def check_integer(
        self,
        path: KeyPath,
        value: object,
        *,
        lo: int | None = None,
        hi: int | None = None,
        choices: Collection[int] | None = None,
    ) -> int | None:
        # bool is a subclass of int in Python, but `true` is not a number in TOML.
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(path, f"expected integer, got {_type_name(value)}")
            return None
        if choices is not None:
            problem = None if value in choices else f"must be {_choices_text(choices)}, got {value}"
        else:
            problem = _range_problem(value, lo, hi)
        if problem is not None:
            self.error(path, problem)
            return None
        return value

    def check_number(
        self, path: KeyPath, value: object, *, lo: float | None = None, hi: float | None = None
    ) -> float | None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.error(path, f"expected number, got {_type_name(value)}")
            return None
        problem = _range_problem(float(value), lo, hi)
        if problem is not None:
            self.error(path, problem)
            return None
        return float(value)

    def check_boolean(self, path: KeyPath, value: object) -> bool | None:
        if not isinstance(value, bool):
            self.error(path, f"expected boolean, got {_type_name(value)}")
            return None
        return value

    def boolean(self, table: Mapping[str, object], path: KeyPath, key: str) -> bool | None:
        value = self._get(table, path, key, required=False)
        if value is None:
            return None
        return self.check_boolean((*path, key), value)

    def string_list(
        self,
        table: Mapping[str, object],
        path: KeyPath,
        key: str,
        *,
        placeholders: Collection[str] | None = None,
    ) -> tuple[str, ...] | None:
        """An array of strings (a command line); with ``placeholders``, every ``{name}`` in
        it must be one of them."""
        value = self._get(table, path, key, required=False)
        if value is None:
            return None
        if not isinstance(value, list):
            self.error((*path, key), f"expected array of strings, got {_type_name(value)}")
            return None
        items: list[str] = []
        for index, item in enumerate(value):
            checked = self.check_string((*path, key, index), item)
            if checked is None:
                return None
            if placeholders is not None:
                for name in _PLACEHOLDER.findall(checked):
                    if name not in placeholders:
                        self.error(
                            (*path, key, index),
                            f"unknown placeholder {{{name}}}; "
                            f"known: {', '.join('{' + p + '}' for p in placeholders)}",
                        )
                        return None
            items.append(checked)
        return tuple(items)

    def check_option(self, path: KeyPath, value: object, spec: OptionSpec) -> object:
        """A driver option checked against its spec; None if it is wrong."""
        lo, hi = spec.min_value, spec.max_value
        if spec.kind == "string":
            choices = (
                None if spec.choices is None else [c for c in spec.choices if isinstance(c, str)]
            )
            return self.check_string(
                path,
                value,
                min_len=int(lo) if lo is not None else 1,
                max_len=int(hi) if hi is not None else None,
                choices=choices,
            )
        if spec.kind == "integer":
            int_choices = (
                None if spec.choices is None else [c for c in spec.choices if isinstance(c, int)]
            )
            return self.check_integer(
                path,
                value,
                lo=int(lo) if lo is not None else None,
                hi=int(hi) if hi is not None else None,
                choices=int_choices,
            )
        if spec.kind == "number":
            return self.check_number(path, value, lo=lo, hi=hi)
        return self.check_boolean(path, value)


def _driver(
    chk: _Checker, parent: Mapping[str, object], path: KeyPath, part: str, *, required: bool
) -> DriverConfig | None:
    table = chk.table(parent, path, part, required=required)
    if table is None:
        return None
    tpath = (*path, part)
    name = chk.string(table, tpath, "driver", required=True)
    if name is None:
        return None
    drivers = DRIVER_SCHEMAS[part]
    schema = drivers.get(name)
    if schema is None:
        known = ", ".join(sorted(drivers))
        chk.error((*tpath, "driver"), f"unknown driver {json.dumps(name)}; known: {known}")
        return None
    mark = chk.mark()
    options: dict[str, object] = {}
    for key, value in table.items():
        if key == "driver":
            continue
        spec = schema.get(key)
        if spec is None:
            chk.error((*tpath, key), _unknown_message(key, ["driver", *schema]))
            continue
        checked = chk.check_option((*tpath, key), value, spec)
        if checked is not None:
            options[key] = checked
    for key, spec in schema.items():
        if spec.required and key not in table:
            chk.error((*tpath, key), "required key missing")
    if chk.failed_since(mark):
        return None
    return DriverConfig(name, MappingProxyType(options))


def _station(chk: _Checker, data: Mapping[str, object]) -> StationConfig | None:
    table = chk.table(data, (), "station", required=True)
    if table is None:
        return None
    path: KeyPath = ("station",)
    mark = chk.mark()
    chk.unknown_keys(
        table,
        path,
        ("id", "vendor", "model", "serial_number", "firmware_version", "nominal_voltage_v"),
    )
    # Lengths are the CiString limits of BootNotification.req and of the websocket identity.
    station_id = chk.string(table, path, "id", required=True, max_len=48)
    if station_id is not None and not (
        _STATION_ID.fullmatch(station_id) and not _STATION_ID_FORBIDDEN & set(station_id)
    ):
        chk.error(
            (*path, "id"),
            "may hold only printable ASCII without spaces or any of / ? # % "
            "(it becomes the last path segment of the CSMS URL)",
        )
    vendor = chk.string(table, path, "vendor", required=True, max_len=20)
    model = chk.string(table, path, "model", required=True, max_len=20)
    serial = chk.string(table, path, "serial_number", max_len=25)
    firmware = chk.string(table, path, "firmware_version", max_len=50)
    voltage = chk.number(table, path, "nominal_voltage_v", lo=100.0, hi=480.0)
    if chk.failed_since(mark) or station_id is None or vendor is None or model is None:
        return None
    return StationConfig(
        id=station_id,
        vendor=vendor,
        model=model,
        serial_number=serial,
        firmware_version=firmware if firmware is not None else _package_version(),
        nominal_voltage_v=voltage if voltage is not None else 230.0,
    )


def _url_problem(url: str) -> str | None:
    if any(c.isspace() for c in url):
        return "must not contain spaces"
    if not url.lower().startswith(("ws://", "wss://")):
        return "must start with ws:// or wss://"
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - urlsplit checks the port only when it is read
    except ValueError as exc:
        return f"invalid URL: {exc}"
    if not host:
        return "has no host"
    if parts.username is not None or parts.password is not None:
        return "must not contain a user or password; use basic_auth_password"
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        return (
            "must not contain a query (?) or fragment (#): "
            "the station id is appended as the last path segment"
        )
    return None


_OCPP_SECTION_KEYS = (
    "version",
    "csms_url",
    "security_profile",
    "basic_auth_password",
    "ca_file",
    "client_cert_file",
    "client_key_file",
    "message_timeout_s",
    "reconnect_min_s",
    "reconnect_max_s",
    "config",
)


def _ocpp(
    chk: _Checker, data: Mapping[str, object], connectors: int, file: str
) -> OcppSection | None:
    table = chk.table(data, (), "ocpp", required=True)
    if table is None:
        return None
    path: KeyPath = ("ocpp",)
    mark = chk.mark()
    chk.unknown_keys(table, path, _OCPP_SECTION_KEYS)
    version = chk.string(table, path, "version")
    if version is not None and version != "1.6":
        if version in _OCPP_VERSIONS_LATER:
            chk.error((*path, "version"), f"OCPP {version} is not supported yet")
        else:
            chk.error((*path, "version"), f"unknown OCPP version {json.dumps(version)}; use 1.6")
    url = chk.string(table, path, "csms_url", required=True)
    url_ok = False
    if url is not None:
        problem = _url_problem(url)
        if problem is not None:
            chk.error((*path, "csms_url"), problem)
        url_ok = problem is None
    profile = chk.integer(table, path, "security_profile", lo=0, hi=3)
    password = _basic_auth_password(chk, table, path, connectors)
    ca_file, cert_file, key_file = _tls_files(chk, table, path, file)
    timeout = chk.number(table, path, "message_timeout_s", lo=1.0, hi=600.0)
    reconnect_min = chk.number(table, path, "reconnect_min_s", lo=0.01, hi=3600.0)
    reconnect_max = chk.number(table, path, "reconnect_max_s", lo=0.01, hi=3600.0)
    rmin = reconnect_min if reconnect_min is not None else 1.0
    if reconnect_max is not None and reconnect_max < rmin:
        chk.error(
            (*path, "reconnect_max_s"),
            f"must be at least reconnect_min_s ({_num(rmin)}), got {_num(reconnect_max)}",
        )
    # A long reconnect_min_s alone should not trip over the default maximum.
    rmax = reconnect_max if reconnect_max is not None else max(60.0, rmin)
    if profile is not None or "security_profile" not in table:
        _check_security_profile(chk, table, path, profile or 0, url if url_ok else None)
    config = _ocpp_config(chk, table, path, connectors)
    if chk.failed_since(mark) or url is None or config is None:
        return None
    return OcppSection(
        csms_url=url,
        version="1.6",
        security_profile=profile if profile is not None else 0,
        basic_auth_password=password,
        ca_file=ca_file,
        client_cert_file=cert_file,
        client_key_file=key_file,
        message_timeout_s=timeout if timeout is not None else 30.0,
        reconnect_min_s=rmin,
        reconnect_max_s=rmax,
        config=config,
    )


def _basic_auth_password(
    chk: _Checker, table: Mapping[str, object], path: KeyPath, connectors: int
) -> str | None:
    password = chk.string(table, path, "basic_auth_password")
    if password is None:
        return None
    # The same rule as the AuthorizationKey OCPP key it initialises (16 to 40 characters,
    # OCPP security whitepaper), so that the CSMS can later set what the file could.
    keydef = ocpp_keys.core_keys(connectors)["AuthorizationKey"]
    if ocpp_keys.parse_value(keydef, password) is None:
        chk.error(
            (*path, "basic_auth_password"),
            f"must be {keydef.min_value} to {keydef.max_value} characters, got {len(password)}",
        )
        return None
    return password


def _check_security_profile(
    chk: _Checker, table: Mapping[str, object], path: KeyPath, profile: int, url: str | None
) -> None:
    # OCPP security profiles: 1 = basic auth, 2 = TLS + basic auth, 3 = TLS + client cert.
    needs: list[str] = []
    if profile in (1, 2) and "basic_auth_password" not in table:
        needs.append("basic_auth_password")
    pair = ("client_cert_file", "client_key_file")
    if profile == 3:
        needs += [k for k in pair if k not in table]
    elif (pair[0] in table) != (pair[1] in table):
        # One without the other is a half-done setup for a later upgrade to profile 3.
        given, missing = pair if pair[0] in table else pair[::-1]
        chk.error((*path, given), f"needs {missing} too")
    if profile >= 2 and url is not None and not url.lower().startswith("wss://"):
        needs.append("a wss:// csms_url")
    if needs:
        chk.error(
            (*path, "security_profile"), f"security profile {profile} needs " + " and ".join(needs)
        )


def _tls_files(
    chk: _Checker, table: Mapping[str, object], path: KeyPath, file: str
) -> tuple[str | None, str | None, str | None]:
    """ca_file, client_cert_file and client_key_file: files that exist (a relative path is
    relative to the config file), and, where this user may read them, that the daemon's TLS
    stack accepts (ssl loads them here exactly as it will when connecting)."""
    base_dir = Path(file).resolve().parent if file and not file.startswith("<") else None
    ca_file, cert_file, key_file = (
        _existing_file(chk, table, path, key, base_dir)
        for key in ("ca_file", "client_cert_file", "client_key_file")
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca_file is not None:
        try:
            context.load_verify_locations(cafile=ca_file)
        except PermissionError:
            pass  # check-config run by another user than the daemon: nothing to say
        except (ssl.SSLError, OSError) as exc:
            chk.error((*path, "ca_file"), f"no PEM certificate in {ca_file} ({_ssl_reason(exc)})")
            ca_file = None
    if cert_file is not None and key_file is not None:
        mode = os.stat(key_file).st_mode
        if mode & 0o007:
            chk.error(
                (*path, "client_key_file"),
                f"private key readable by every user (mode {mode & 0o777:04o}); chmod 600 it",
            )
        try:
            context.load_cert_chain(cert_file, key_file)
        except PermissionError:
            pass
        except (ssl.SSLError, OSError) as exc:
            chk.error(
                (*path, "client_cert_file"),
                f"{cert_file} and {key_file} are not a PEM certificate and its private key "
                f"({_ssl_reason(exc)})",
            )
    return ca_file, cert_file, key_file


def _ssl_reason(exc: OSError) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason) if reason else (exc.strerror or str(exc))


def _existing_file(
    chk: _Checker, table: Mapping[str, object], path: KeyPath, key: str, base_dir: Path | None
) -> str | None:
    name = chk.string(table, path, key)
    if name is None:
        return None
    resolved = Path(name).expanduser()
    if not resolved.is_absolute() and base_dir is not None:
        resolved = base_dir / resolved
    if not resolved.exists():
        chk.error((*path, key), f"file not found: {resolved}")
        return None
    if not resolved.is_file():
        chk.error((*path, key), f"not a file: {resolved}")
        return None
    return str(resolved)


def _ocpp_value(keydef: ocpp_keys.KeyDef, value: object) -> str | None:
    """A TOML value in the OCPP string form, if its TOML type suits the key. OCPP's own
    string form ("true", "300") is accepted too, since integrators copy values from a CSMS."""
    kind = keydef.type
    if isinstance(value, str):
        return value
    if kind is ocpp_keys.KeyType.BOOL and isinstance(value, bool):
        return "true" if value else "false"
    if kind is ocpp_keys.KeyType.INT and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if (
        kind is ocpp_keys.KeyType.CSL
        and isinstance(value, list)
        and all(isinstance(v, str) for v in value)
    ):
        return ",".join(value)
    return None


def _ocpp_config(
    chk: _Checker, ocpp: Mapping[str, object], path: KeyPath, connectors: int
) -> Mapping[str, str] | None:
    table = chk.table(ocpp, path, "config", required=False)
    if table is None:
        return None if "config" in ocpp else MappingProxyType({})
    cpath = (*path, "config")
    keys = ocpp_keys.core_keys(connectors)
    values: dict[str, str] = {}
    for name, value in table.items():
        kpath = (*cpath, name)
        keydef = keys.get(name)
        if keydef is None:
            chk.error(kpath, _unknown_message(name, keys, "unknown OCPP configuration key"))
            continue
        if keydef.readonly:
            chk.error(kpath, "read-only OCPP key")
            continue
        if name in _OCPP_KEYS_FROM_SECTION:
            chk.error(kpath, f"set {_OCPP_KEYS_FROM_SECTION[name]} instead")
            continue
        raw = _ocpp_value(keydef, value)
        if raw is None:
            wanted = keydef.type.description
            if keydef.type is ocpp_keys.KeyType.CSL:
                wanted = "string or array of strings"
            chk.error(kpath, f"expected {wanted}, got {_type_name(value)}")
            continue
        try:
            values[name] = ocpp_keys.validate_value(keydef, raw)
        except ocpp_keys.InvalidValue as exc:
            chk.error(kpath, f"invalid value for {keydef.type.description}: {exc}")
    return MappingProxyType(values)


def _storage(chk: _Checker, data: Mapping[str, object]) -> StorageConfig | None:
    table = chk.table(data, (), "storage", required=False)
    if table is None:
        return None if "storage" in data else StorageConfig()
    path: KeyPath = ("storage",)
    mark = chk.mark()
    chk.unknown_keys(table, path, ("state_dir", "max_queued_messages"))
    state_dir = chk.string(table, path, "state_dir")
    max_queued = chk.integer(table, path, "max_queued_messages", lo=10, hi=1_000_000)
    if chk.failed_since(mark):
        return None
    defaults = StorageConfig()
    return StorageConfig(
        state_dir if state_dir is not None else defaults.state_dir,
        max_queued if max_queued is not None else defaults.max_queued_messages,
    )


def _site(chk: _Checker, data: Mapping[str, object]) -> SiteConfig | None:
    table = chk.table(data, (), "site", required=False)
    if table is None:
        return None if "site" in data else SiteConfig()
    path: KeyPath = ("site",)
    mark = chk.mark()
    chk.unknown_keys(table, path, ("max_current_a",))
    max_current_a = chk.number(table, path, "max_current_a", lo=0.0, hi=4000.0)
    if chk.failed_since(mark):
        return None
    return SiteConfig(max_current_a)


# Parts whose real driver takes its wiring from the [board] profile.
BOARD_DRIVERS: Mapping[str, str] = MappingProxyType(
    {"pilot": "rpi", "contactor": "gpio", "lock": "gpio", "rcd": "gpio", "temperature": "adc"}
)


def _board(chk: _Checker, data: Mapping[str, object], file: str) -> BoardConfig | None:
    table = chk.table(data, (), "board", required=False)
    if table is None:
        return None
    path: KeyPath = ("board",)
    chk.unknown_keys(table, path, ("profile", "connector"))
    profile = chk.string(table, path, "profile", required=True)
    if profile is None:
        return None
    from . import board as board_module  # the drivers' wiring classes, only when needed

    overrides = {"connector": table["connector"]} if "connector" in table else {}
    base_dir = Path(file).resolve().parent if file and not file.startswith("<") else None
    try:
        board = board_module.load_board(profile, overrides, base_dir=base_dir)
    except board_module.BoardError as exc:
        for problem in exc.problems:
            if problem.in_override:
                chk.error(("board", *problem.key), problem.message)
            else:
                key = ".".join(problem.key)
                chk.error((*path, "profile"), f"{exc.source}: {key}: {problem.message}")
        return None
    return BoardConfig(profile, board)


def _check_board_parts(
    chk: _Checker, connectors: tuple[ConnectorConfig, ...], board: BoardConfig | None
) -> None:
    """Every part on a board driver needs its wiring in the profile."""
    for index, connector in enumerate(connectors):
        for part, driver in connector.drivers.items():
            if BOARD_DRIVERS.get(part) != driver.driver:
                continue
            if board is None:
                chk.error(
                    ("connector", index, part, "driver"),
                    f'driver "{driver.driver}" needs a [board] profile',
                )
            elif board.board.wiring(connector.id, part) is None:
                chk.error(
                    ("connector", index, part, "driver"),
                    f"the board profile {board.profile!r} has no [connector.{connector.id}.{part}]",
                )


def _check_meter_maps(chk: _Checker, connectors: tuple[ConnectorConfig, ...], file: str) -> None:
    """What the schema cannot see: a meter map that does not exist or does not fit the
    options. The factory checks without opening any port. (The card readers' factories check
    nothing the schema does not already.)"""
    base_dir = Path(file).resolve().parent if file and not file.startswith("<") else None
    for index, connector in enumerate(connectors):
        if connector.meter.driver != "modbus":
            continue
        from drivers.modbus_meter import ModbusBuses, modbus_meter_from_options

        try:
            modbus_meter_from_options(
                connector.meter.options,
                phases=connector.phases,
                maps_dir=METER_MAPS_DIR,
                buses=ModbusBuses(),
                base_dir=base_dir,
            )
        except ValueError as exc:
            chk.error(("connector", index, "meter", "driver"), str(exc))


def _control(chk: _Checker, data: Mapping[str, object]) -> ControlConfig | None:
    table = chk.table(data, (), "control", required=False)
    if table is None:
        return None if "control" in data else ControlConfig()
    path: KeyPath = ("control",)
    mark = chk.mark()
    chk.unknown_keys(table, path, ("socket",))
    socket = chk.string(table, path, "socket")
    if socket is not None and len(os.fsencode(socket)) > _MAX_SOCKET_PATH_BYTES:
        chk.error(
            (*path, "socket"),
            f"must be at most {_MAX_SOCKET_PATH_BYTES} bytes (the limit of a Unix socket path)",
        )
    if chk.failed_since(mark):
        return None
    return ControlConfig() if socket is None else ControlConfig(socket)


def _logging(chk: _Checker, data: Mapping[str, object]) -> LoggingConfig | None:
    table = chk.table(data, (), "logging", required=False)
    if table is None:
        return None if "logging" in data else LoggingConfig()
    path: KeyPath = ("logging",)
    mark = chk.mark()
    chk.unknown_keys(table, path, ("level", "id_tag"))
    level = chk.string(table, path, "level")
    if level is not None and level.upper() not in _LOG_LEVELS:
        chk.error(
            (*path, "level"), f"must be {_choices_text(_LOG_LEVELS)}, got {json.dumps(level)}"
        )
    id_tag = None
    if "id_tag" in table:
        id_tag = chk.check_string((*path, "id_tag"), table["id_tag"], choices=_ID_TAG_POLICIES)
    if chk.failed_since(mark):
        return None
    defaults = LoggingConfig()
    return LoggingConfig(
        level.upper() if level is not None else defaults.level,
        id_tag if id_tag is not None else defaults.id_tag,
    )


_FIRMWARE_KEYS = (
    "install_dir",
    "install_command",
    "rollback_command",
    "check_command",
    "pip_options",
    "default_retries",
    "default_retry_interval_s",
    "install_timeout_s",
    "confirm_timeout_s",
    "max_unconfirmed_starts",
    "max_download_bytes",
    "require_signed",
)


def _firmware(chk: _Checker, data: Mapping[str, object]) -> FirmwareConfig | None:
    table = chk.table(data, (), "firmware", required=False)
    if table is None:
        return None if "firmware" in data else FirmwareConfig()
    path: KeyPath = ("firmware",)
    mark = chk.mark()
    chk.unknown_keys(table, path, _FIRMWARE_KEYS)
    defaults = FirmwareConfig()
    install_dir = chk.string(table, path, "install_dir")
    install = chk.string_list(table, path, "install_command", placeholders=INSTALL_PLACEHOLDERS)
    rollback = chk.string_list(table, path, "rollback_command", placeholders=ROLLBACK_PLACEHOLDERS)
    check = chk.string_list(table, path, "check_command", placeholders=CHECK_PLACEHOLDERS)
    pip_options = chk.string_list(table, path, "pip_options", placeholders=())
    retries = chk.integer(table, path, "default_retries", lo=0, hi=100)
    interval = chk.integer(table, path, "default_retry_interval_s", lo=0, hi=86400)
    install_timeout = chk.number(table, path, "install_timeout_s", lo=10.0, hi=86400.0)
    confirm_timeout = chk.number(table, path, "confirm_timeout_s", lo=1.0, hi=86400.0)
    starts = chk.integer(table, path, "max_unconfirmed_starts", lo=1, hi=100)
    max_bytes = chk.integer(table, path, "max_download_bytes", lo=1024, hi=2**40)
    require_signed = chk.boolean(table, path, "require_signed")
    if install and not install[0]:
        chk.error((*path, "install_command"), "the program (first element) must not be empty")
    if rollback and not install:
        chk.error(
            (*path, "rollback_command"),
            "only applies with install_command (the built-in installer rolls back by itself)",
        )
    if chk.failed_since(mark):
        return None
    return FirmwareConfig(
        install_dir=install_dir if install_dir is not None else defaults.install_dir,
        install_command=install if install is not None else defaults.install_command,
        rollback_command=rollback if rollback is not None else defaults.rollback_command,
        check_command=check if check is not None else defaults.check_command,
        pip_options=pip_options if pip_options is not None else defaults.pip_options,
        default_retries=retries if retries is not None else defaults.default_retries,
        default_retry_interval_s=(
            interval if interval is not None else defaults.default_retry_interval_s
        ),
        install_timeout_s=(
            install_timeout if install_timeout is not None else defaults.install_timeout_s
        ),
        confirm_timeout_s=(
            confirm_timeout if confirm_timeout is not None else defaults.confirm_timeout_s
        ),
        max_unconfirmed_starts=starts if starts is not None else defaults.max_unconfirmed_starts,
        max_download_bytes=max_bytes if max_bytes is not None else defaults.max_download_bytes,
        require_signed=require_signed if require_signed is not None else defaults.require_signed,
    )


_DIAGNOSTICS_KEYS = (
    "journal_unit",
    "max_journal_lines",
    "log_files",
    "http_method",
    "default_retries",
    "default_retry_interval_s",
)


def _diagnostics(chk: _Checker, data: Mapping[str, object]) -> DiagnosticsConfig | None:
    table = chk.table(data, (), "diagnostics", required=False)
    if table is None:
        return None if "diagnostics" in data else DiagnosticsConfig()
    path: KeyPath = ("diagnostics",)
    mark = chk.mark()
    chk.unknown_keys(table, path, _DIAGNOSTICS_KEYS)
    defaults = DiagnosticsConfig()
    unit = chk.string(table, path, "journal_unit", min_len=0)
    lines = chk.integer(table, path, "max_journal_lines", lo=0, hi=10_000_000)
    log_files = chk.string_list(table, path, "log_files")
    method = chk.string(table, path, "http_method")
    if method is not None and method not in ("PUT", "POST"):
        chk.error((*path, "http_method"), f'must be "PUT" or "POST", got {json.dumps(method)}')
    retries = chk.integer(table, path, "default_retries", lo=0, hi=100)
    interval = chk.integer(table, path, "default_retry_interval_s", lo=0, hi=86400)
    if chk.failed_since(mark):
        return None
    return DiagnosticsConfig(
        journal_unit=unit if unit is not None else defaults.journal_unit,
        max_journal_lines=lines if lines is not None else defaults.max_journal_lines,
        log_files=log_files if log_files is not None else defaults.log_files,
        http_method="POST" if method == "POST" else defaults.http_method,
        default_retries=retries if retries is not None else defaults.default_retries,
        default_retry_interval_s=(
            interval if interval is not None else defaults.default_retry_interval_s
        ),
    )


_CONNECTOR_KEYS = (
    "id",
    "max_current_a",
    "phases",
    "pilot",
    "contactor",
    "meter",
    "lock",
    "rcd",
    "temperature",
    "max_temperature_c",
)


def _connector(
    chk: _Checker, table: Mapping[str, object], path: KeyPath
) -> tuple[int | None, ConnectorConfig | None]:
    """(the id if valid, the connector if all of it is valid)."""
    mark = chk.mark()
    chk.unknown_keys(table, path, _CONNECTOR_KEYS)
    connector_id = chk.integer(table, path, "id", required=True, lo=1, hi=32)
    # 6 A is the least IEC 61851 lets a pilot offer; 80 A the most it can encode.
    max_current = chk.number(table, path, "max_current_a", required=True, lo=6.0, hi=80.0)
    phases = chk.integer(table, path, "phases", required=True, choices=(1, 3))
    pilot = _driver(chk, table, path, "pilot", required=True)
    contactor = _driver(chk, table, path, "contactor", required=True)
    meter = _driver(chk, table, path, "meter", required=True)
    lock = _driver(chk, table, path, "lock", required=False)
    rcd = _driver(chk, table, path, "rcd", required=False)
    temperature = _driver(chk, table, path, "temperature", required=False)
    max_temp = chk.number(table, path, "max_temperature_c", lo=40.0, hi=150.0)
    if (
        chk.failed_since(mark)
        or connector_id is None
        or max_current is None
        or phases is None
        or pilot is None
        or contactor is None
        or meter is None
    ):
        return connector_id, None
    return connector_id, ConnectorConfig(
        id=connector_id,
        max_current_a=max_current,
        phases=phases,
        pilot=pilot,
        contactor=contactor,
        meter=meter,
        lock=lock,
        rcd=rcd,
        temperature=temperature,
        max_temperature_c=max_temp if max_temp is not None else 80.0,
    )


def _connectors(chk: _Checker, data: Mapping[str, object]) -> tuple[ConnectorConfig, ...] | None:
    path: KeyPath = ("connector",)
    if "connector" not in data:
        chk.error(path, "required key missing")
        return None
    entries = data["connector"]
    if not isinstance(entries, list):
        chk.error(path, f"expected array of tables ([[connector]]), got {_type_name(entries)}")
        return None
    if not entries:
        chk.error(path, "at least one [[connector]] is required")
        return None
    mark = chk.mark()
    connectors: list[tuple[int, ConnectorConfig]] = []
    first_line: dict[int, int] = {}
    for index, entry in enumerate(entries):
        epath: KeyPath = ("connector", index)
        if not isinstance(entry, dict):
            chk.error(epath, f"expected table, got {_type_name(entry)}")
            continue
        connector_id, connector = _connector(chk, entry, epath)
        if connector_id is not None:
            if connector_id in first_line:
                chk.error(
                    (*epath, "id"),
                    f"duplicate connector id {connector_id}, "
                    f"first at line {first_line[connector_id]}",
                )
            else:
                first_line[connector_id] = chk.locator.line_of((*epath, "id"))
        if connector is not None:
            connectors.append((index, connector))
    if chk.failed_since(mark):
        return None
    # OCPP numbers connectors 1..NumberOfConnectors; with unique ids this also rules out gaps.
    count = len(connectors)
    for index, connector in connectors:
        if connector.id > count:
            chk.error(
                ("connector", index, "id"),
                f"must be between 1 and {count} (the number of connectors, as OCPP numbers "
                f"them), got {connector.id}",
            )
    if chk.failed_since(mark):
        return None
    return tuple(sorted((c for _, c in connectors), key=lambda c: c.id))


def _build(chk: _Checker, data: Mapping[str, object], file: str) -> Config | None:
    chk.unknown_keys(data, (), _TOP_LEVEL_KEYS)
    entries = data.get("connector")
    # [ocpp.config] is checked against the key registry of the charger as configured, even
    # when [[connector]] itself has errors (ConnectorPhaseRotation depends on the count).
    count = len(entries) if isinstance(entries, list) and entries else 1
    station = _station(chk, data)
    ocpp = _ocpp(chk, data, count, file)
    storage = _storage(chk, data)
    site = _site(chk, data)
    board = _board(chk, data, file)
    control = _control(chk, data)
    rfid = _driver(chk, data, (), "rfid", required=False)
    logging = _logging(chk, data)
    connectors = _connectors(chk, data)
    firmware = _firmware(chk, data)
    diagnostics = _diagnostics(chk, data)
    # (A [board] that failed to load has said so already: no second error per part.)
    if connectors is not None and (board is not None or "board" not in data):
        _check_board_parts(chk, connectors, board)
    if connectors is not None and not chk.errors:
        _check_meter_maps(chk, connectors, file)
    if (
        chk.errors
        or station is None
        or ocpp is None
        or storage is None
        or site is None
        or control is None
        or logging is None
        or connectors is None
        or firmware is None
        or diagnostics is None
    ):
        return None
    return Config(
        path=file,
        station=station,
        ocpp=ocpp,
        storage=storage,
        control=control,
        rfid=rfid,
        logging=logging,
        site=site,
        board=board,
        connectors=connectors,
        firmware=firmware,
        diagnostics=diagnostics,
    )


# --------------------------------------------------------------------------------------------
# Entry points


def parse_config(text: str, path: str = "<string>") -> Config:
    """Parse and validate config text; raises ConfigInvalid listing every error."""
    try:
        data = tomli.loads(text)
    except tomli.TOMLDecodeError as exc:
        error = ConfigError(path, exc.lineno, "syntax", f"{exc.msg} (column {exc.colno})")
        raise ConfigInvalid([error]) from None
    chk = _Checker(path, _LineLocator(text))
    config = _build(chk, data, path)
    if config is None:
        # sorted() is stable: errors on one line keep the order they were found in.
        raise ConfigInvalid(sorted(chk.errors, key=lambda e: e.line))
    return config


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read, parse and validate a config file (blocking: call it before the event loop runs,
    or in a thread). Raises ConfigInvalid, also for a file that cannot be read."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            raw = f.read()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigInvalid([ConfigError(name, 1, "file", f"cannot read: {reason}")]) from None
    try:
        # utf-8-sig: editors on Windows may save a byte-order mark, which TOML would refuse.
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigInvalid([ConfigError(name, line, "file", "not valid UTF-8")]) from None
    return parse_config(text, name)
