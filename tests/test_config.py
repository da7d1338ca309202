"""The TOML config file: parsing into typed objects, and errors as FILE:LINE: key: message."""

from __future__ import annotations

import importlib.metadata
import re
import textwrap
from pathlib import Path
from types import MappingProxyType

import pytest
import tomli
from hypothesis import given, settings
from hypothesis import strategies as st

from evse_daemon import config as config_module
from evse_daemon.config import (
    Config,
    ConfigError,
    ConfigInvalid,
    ConnectorConfig,
    ControlConfig,
    DiagnosticsConfig,
    DriverConfig,
    FirmwareConfig,
    LoggingConfig,
    OcppSection,
    StationConfig,
    StorageConfig,
    load_config,
    parse_config,
)
from tests import pki

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "systemd" / "evse.toml.example"

# The bench example of design.md, verbatim.
DESIGN_EXAMPLE = """\
[station]
id = "CP-BENCH-1"                 # OCPP identity, appended to csms_url as the last path segment
vendor = "ExampleVendor"
model = "PiCharger"

[ocpp]
version = "1.6"                   # "1.6" now, "2.0.1" later
csms_url = "ws://127.0.0.1:9000/ocpp"
# security_profile = 0..3, basic_auth_password, ca_file, client_cert_file, client_key_file

[ocpp.config]                     # initial values of OCPP configuration keys; the CSMS may change them
HeartbeatInterval = 300
MeterValueSampleInterval = 60

[storage]
state_dir = "/var/lib/evse-daemon"

[control]
socket = "/run/evse-daemon/control.sock"

[rfid]
driver = "mock"

[[connector]]
id = 1
max_current_a = 32
phases = 3
pilot = { driver = "mock" }
contactor = { driver = "mock" }
meter = { driver = "mock" }

[[connector]]
id = 2
max_current_a = 16
phases = 1
pilot = { driver = "mock" }
contactor = { driver = "mock" }
meter = { driver = "mock" }
"""  # noqa: E501 - verbatim from design.md

# A minimal valid head: station and ocpp tables. Tests append connectors and the part under test.
HEAD = """\
[station]
id = "CP-1"
vendor = "V"
model = "M"

[ocpp]
csms_url = "ws://csms.example:9000/ocpp"
"""

CONNECTOR = """\
[[connector]]
id = {id}
max_current_a = 16
phases = 1
pilot = {{ driver = "mock" }}
contactor = {{ driver = "mock" }}
meter = {{ driver = "mock" }}
"""


def connector(connector_id: int = 1) -> str:
    return CONNECTOR.format(id=connector_id)


def line_of(text: str, needle: str, occurrence: int = 1) -> int:
    """1-based number of the line holding the n-th occurrence of ``needle``: an independent
    way to know where a key is written."""
    hits = [i + 1 for i, line in enumerate(text.splitlines()) if needle in line]
    assert len(hits) >= occurrence, f"{needle!r} not in text"
    return hits[occurrence - 1]


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigInvalid) as info:
        parse_config(text, "evse.toml")
    return [str(e) for e in info.value.errors]


def single_error(text: str) -> str:
    errors = errors_of(text)
    assert len(errors) == 1, errors
    return errors[0]


def tls_files(directory: Path) -> None:
    """csms-ca.pem, client.pem and client.key (0600) in ``directory``: what a TLS setup
    names, real enough for ssl to load."""
    ca = pki.make_ca()
    (directory / "csms-ca.pem").write_text(ca.cert_pem())
    pki.make_leaf(ca, "CP-1", client=True).write(directory, "client")


def mock(**options: object) -> DriverConfig:
    return DriverConfig("mock", MappingProxyType(dict(options)))


# --- valid files


def test_design_example_parses_into_the_expected_objects() -> None:
    config = parse_config(DESIGN_EXAMPLE, "evse.toml")
    firmware = config.station.firmware_version
    assert config == Config(
        path="evse.toml",
        station=StationConfig(
            id="CP-BENCH-1",
            vendor="ExampleVendor",
            model="PiCharger",
            serial_number=None,
            firmware_version=firmware,
            nominal_voltage_v=230.0,
        ),
        ocpp=OcppSection(
            version="1.6",
            csms_url="ws://127.0.0.1:9000/ocpp",
            security_profile=0,
            basic_auth_password=None,
            ca_file=None,
            client_cert_file=None,
            client_key_file=None,
            message_timeout_s=30.0,
            reconnect_min_s=1.0,
            reconnect_max_s=60.0,
            config=MappingProxyType({"HeartbeatInterval": "300", "MeterValueSampleInterval": "60"}),
        ),
        storage=StorageConfig(state_dir="/var/lib/evse-daemon"),
        control=ControlConfig(socket="/run/evse-daemon/control.sock"),
        rfid=mock(),
        logging=LoggingConfig(level="INFO"),
        connectors=(
            ConnectorConfig(
                id=1,
                max_current_a=32.0,
                phases=3,
                pilot=mock(),
                contactor=mock(),
                meter=mock(),
                lock=None,
                rcd=None,
                temperature=None,
                max_temperature_c=80.0,
            ),
            ConnectorConfig(
                id=2,
                max_current_a=16.0,
                phases=1,
                pilot=mock(),
                contactor=mock(),
                meter=mock(),
            ),
        ),
    )
    assert isinstance(config.connectors[0].max_current_a, float)
    assert config.is_bench


def test_firmware_version_defaults_to_the_package_version() -> None:
    pyproject = tomli.loads((REPO / "pyproject.toml").read_text())
    firmware = parse_config(DESIGN_EXAMPLE).station.firmware_version
    try:
        installed = importlib.metadata.version("evse-daemon")
    except importlib.metadata.PackageNotFoundError:
        assert firmware == "0.0.0"
    else:
        assert firmware == installed == pyproject["project"]["version"]


def test_parsed_values_are_read_only() -> None:
    config = parse_config(DESIGN_EXAMPLE)
    with pytest.raises(TypeError):
        config.ocpp.config["HeartbeatInterval"] = "1"  # type: ignore[index]
    with pytest.raises(AttributeError):
        config.station.id = "other"  # type: ignore[misc]


def test_example_file_parses() -> None:
    config = load_config(EXAMPLE)
    assert config.path == str(EXAMPLE)
    assert config.station.id == "CP-BENCH-1"
    assert config.ocpp.csms_url.startswith("ws://")
    assert [c.id for c in config.connectors] == [1, 2]
    first = config.connectors[0]
    assert (first.max_current_a, first.phases) == (32.0, 3)
    assert first.pilot == mock(ev_max_current_a=32.0, ev_phases=3)
    assert first.lock == first.rcd == first.temperature == mock()
    assert config.connectors[1].lock is None
    assert config.rfid == mock()
    assert config.is_bench


def test_example_file_stays_valid_with_every_commented_setting_enabled(tmp_path: Path) -> None:
    # The commented-out lines document defaults and options: each must be valid as written
    # (the certificate files it names are made here, where they can be).
    tls_files(tmp_path)
    text = EXAMPLE.read_text().replace("/etc/evse-daemon/", f"{tmp_path}/")
    enabled = re.sub(r"^# ([A-Za-z_]+ = )", r"\1", text, flags=re.MULTILINE)
    assert enabled.count("\n# ") < text.count("\n# ")
    config = parse_config(enabled, "enabled.toml")
    assert config.station.serial_number is not None
    assert config.ocpp.basic_auth_password is not None
    assert config.ocpp.config["ClockAlignedDataInterval"] == "900"


def test_defaults_of_optional_tables() -> None:
    config = parse_config(HEAD + connector())
    assert config.storage == StorageConfig("/var/lib/evse-daemon")
    assert config.control == ControlConfig("/run/evse-daemon/control.sock")
    assert config.logging == LoggingConfig("INFO")
    assert config.rfid is None
    assert config.ocpp.version == "1.6"
    assert config.ocpp.config == {}
    assert config.ocpp.security_profile == 0
    assert config.site.max_current_a is None


def test_site_limit() -> None:
    config = parse_config(HEAD + "[site]\nmax_current_a = 40\n" + connector())
    assert config.site.max_current_a == 40
    text = HEAD + "[site]\nmax_current_a = -1\nmax_power_w = 3\n" + connector()
    assert errors_of(text) == [
        "evse.toml:9: site.max_current_a: must be between 0 and 4000, got -1",
        "evse.toml:10: site.max_power_w: unknown key",
    ]


def test_all_optional_keys(tmp_path: Path) -> None:
    tls_files(tmp_path)
    text = textwrap.dedent(
        """\
        [station]
        id = "CP-7"
        vendor = "V"
        model = "M"
        serial_number = "SN-1"
        firmware_version = "9.9"
        nominal_voltage_v = 240

        [ocpp]
        version = "1.6"
        csms_url = "wss://csms.example/ocpp"
        security_profile = 3
        ca_file = "{tmp}/csms-ca.pem"
        client_cert_file = "{tmp}/client.pem"
        client_key_file = "{tmp}/client.key"
        message_timeout_s = 12.5
        reconnect_min_s = 0.5
        reconnect_max_s = 30

        [logging]
        level = "debug"

        [[connector]]
        id = 1
        max_current_a = 20.5
        phases = 3
        max_temperature_c = 70
        pilot = { driver = "mock" }
        contactor = { driver = "mock" }
        meter = { driver = "mock" }
        lock = { driver = "mock" }
        """
    ).replace("{tmp}", str(tmp_path))
    config = parse_config(text)
    assert config.station == StationConfig("CP-7", "V", "M", "SN-1", "9.9", 240.0)
    assert config.ocpp.security_profile == 3
    assert config.ocpp.ca_file == f"{tmp_path}/csms-ca.pem"
    assert (config.ocpp.client_cert_file, config.ocpp.client_key_file) == (
        f"{tmp_path}/client.pem",
        f"{tmp_path}/client.key",
    )
    assert config.ocpp.message_timeout_s == 12.5
    assert (config.ocpp.reconnect_min_s, config.ocpp.reconnect_max_s) == (0.5, 30.0)
    assert config.logging.level == "DEBUG"
    assert config.connectors[0].max_current_a == 20.5
    assert config.connectors[0].max_temperature_c == 70.0
    assert config.connectors[0].lock == mock()
    assert config.connectors[0].rcd is None


def test_firmware_and_diagnostics_sections() -> None:
    assert parse_config(HEAD + connector()).firmware == FirmwareConfig()
    assert parse_config(HEAD + connector()).diagnostics == DiagnosticsConfig()
    sections = textwrap.dedent(
        """\
        [firmware]
        install_dir = "/srv/evse"
        install_command = ["/usr/sbin/fw", "{file}", "--version={version}", "{config}"]
        rollback_command = ["/usr/sbin/fw", "--rollback"]
        check_command = []
        pip_options = ["--index-url", "https://mirror/simple"]
        default_retries = 0
        default_retry_interval_s = 5
        confirm_timeout_s = 30
        max_unconfirmed_starts = 1
        require_signed = true

        [diagnostics]
        journal_unit = ""
        log_files = ["/var/log/evse.log"]
        http_method = "POST"
        """
    )
    config = parse_config(HEAD + sections + connector())
    firmware = config.firmware
    assert firmware.install_dir == "/srv/evse"
    assert firmware.install_command == ("/usr/sbin/fw", "{file}", "--version={version}", "{config}")
    assert firmware.rollback_command == ("/usr/sbin/fw", "--rollback")
    assert firmware.check_command == ()
    assert firmware.pip_options == ("--index-url", "https://mirror/simple")
    assert (firmware.default_retries, firmware.default_retry_interval_s) == (0, 5)
    assert (firmware.confirm_timeout_s, firmware.max_unconfirmed_starts) == (30.0, 1)
    assert firmware.require_signed is True
    assert config.diagnostics == DiagnosticsConfig(
        journal_unit="", log_files=("/var/log/evse.log",), http_method="POST"
    )


def test_firmware_section_errors() -> None:
    sections = textwrap.dedent(
        """\
        [firmware]
        install_command = ["/usr/sbin/fw", "{path}"]
        check_command = "evse-daemon"
        default_retries = -1
        require_signed = "yes"
        rollback_command = ["x", 3]

        [diagnostics]
        http_method = "GET"
        """
    )
    assert errors_of(HEAD + sections + connector()) == [
        "evse.toml:9: firmware.install_command[1]: unknown placeholder {path}; "
        "known: {file}, {version}, {config}",
        "evse.toml:10: firmware.check_command: expected array of strings, got string",
        "evse.toml:11: firmware.default_retries: must be between 0 and 100, got -1",
        "evse.toml:12: firmware.require_signed: expected boolean, got string",
        "evse.toml:13: firmware.rollback_command[1]: expected string, got integer",
        'evse.toml:16: diagnostics.http_method: must be "PUT" or "POST", got "GET"',
    ]
    text = HEAD + '[firmware]\nrollback_command = ["x"]\n' + connector()
    assert errors_of(text) == [
        "evse.toml:9: firmware.rollback_command: only applies with install_command "
        "(the built-in installer rolls back by itself)"
    ]


def test_connectors_are_ordered_by_id() -> None:
    config = parse_config(HEAD + connector(2) + connector(1))
    assert [c.id for c in config.connectors] == [1, 2]


def test_is_bench_is_false_as_soon_as_one_part_is_real() -> None:
    config = parse_config(DESIGN_EXAMPLE)
    assert config.is_bench
    real = DriverConfig("modbus", MappingProxyType({"port": "/dev/ttyUSB0"}))
    with_real_meter = ConnectorConfig(2, 16.0, 1, mock(), mock(), real)
    changed = Config(
        config.path,
        config.station,
        config.ocpp,
        config.storage,
        config.control,
        config.rfid,
        config.logging,
        (config.connectors[0], with_real_meter),
    )
    assert not changed.is_bench
    real_reader = Config(
        config.path,
        config.station,
        config.ocpp,
        config.storage,
        config.control,
        DriverConfig("pn532"),
        config.logging,
        config.connectors,
    )
    assert not real_reader.is_bench


def test_mock_pilot_options() -> None:
    text = HEAD + connector().replace(
        'pilot = { driver = "mock" }',
        'pilot = { driver = "mock", ev_max_current_a = 20, ev_phases = 1 }',
    )
    assert parse_config(text).connectors[0].pilot == mock(ev_max_current_a=20.0, ev_phases=1)


def test_standard_sub_tables_work_like_inline_tables() -> None:
    text = HEAD + textwrap.dedent(
        """\
        [[connector]]
        id = 1
        max_current_a = 16
        phases = 1
        contactor.driver = "mock"
        meter = { driver = "mock" }

        [connector.pilot]
        driver = "mock"
        ev_phases = 3
        """
    )
    assert parse_config(text).connectors[0].pilot == mock(ev_phases=3)


# --- error format and line numbers


def test_error_format() -> None:
    error = ConfigError("/etc/evse-daemon/evse.toml", 12, "connector[1].pilot.driver", "boom")
    assert str(error) == "/etc/evse-daemon/evse.toml:12: connector[1].pilot.driver: boom"
    exc = ConfigInvalid([error, ConfigError("f", 1, "station.id", "x")])
    assert (
        str(exc)
        == "/etc/evse-daemon/evse.toml:12: connector[1].pilot.driver: boom\nf:1: station.id: x"
    )


def test_syntax_error_names_its_line() -> None:
    text = HEAD + connector() + "[logging]\nlevel = \n"
    error = single_error(text)
    assert error.startswith(f"evse.toml:{line_of(text, 'level =')}: syntax: ")
    assert line_of(text, "level =") == 16  # by hand: HEAD (7 lines) + connector (7) + 2


def test_unknown_driver_inside_an_inline_table_of_the_second_connector() -> None:
    text = (
        HEAD
        + connector(1)
        + "\n"
        + connector(2).replace('pilot = { driver = "mock" }', 'pilot = { driver = "mokc" }')
    )
    assert single_error(text) == (
        f"evse.toml:{line_of(text, 'mokc')}: connector[1].pilot.driver: "
        'unknown driver "mokc"; known: mock, rpi, uart'
    )
    assert line_of(text, "mokc") == 20


def test_inline_table_key_on_its_own_line() -> None:
    # TOML 1.1 (tomli 2.5) allows newlines and a trailing comma in inline tables.
    text = HEAD + connector().replace(
        'meter = { driver = "mock" }', 'meter = {\n    driver = "mock",\n    colour = "red",\n}'
    )
    assert (
        single_error(text)
        == f"evse.toml:{line_of(text, 'colour')}: connector[0].meter.colour: unknown key"
    )


def test_missing_required_key_points_at_its_table_header() -> None:
    text = "# bench charger\n\n" + HEAD.replace('vendor = "V"\n', "") + connector()
    assert (
        single_error(text)
        == f"evse.toml:{line_of(text, '[station]')}: station.vendor: required key missing"
    )
    assert line_of(text, "[station]") == 3


def test_missing_key_in_second_connector_points_at_its_entry() -> None:
    text = HEAD + connector(1) + "\n" + connector(2).replace("phases = 1\n", "")
    assert single_error(text) == (
        f"evse.toml:{line_of(text, '[[connector]]', 2)}: connector[1].phases: required key missing"
    )


def test_missing_driver_table_points_at_the_connector_and_missing_driver_at_the_part() -> None:
    text = HEAD + connector().replace('meter = { driver = "mock" }\n', "").replace(
        'contactor = { driver = "mock" }', "contactor = { }"
    )
    assert errors_of(text) == [
        f"evse.toml:{line_of(text, '[[connector]]')}: connector[0].meter: required key missing",
        f"evse.toml:{line_of(text, 'contactor')}: connector[0].contactor.driver: "
        "required key missing",
    ]


def test_missing_table_is_reported_at_line_1() -> None:
    text = "\n\n" + HEAD.split("[ocpp]")[1].join(["[ocpp]", ""]) + connector()
    assert "[station]" not in text
    assert single_error(text) == "evse.toml:1: station: required key missing"


def test_no_connector_at_all() -> None:
    assert single_error(HEAD) == "evse.toml:1: connector: required key missing"
    text = "connector = []\n" + HEAD
    assert single_error(text) == "evse.toml:1: connector: at least one [[connector]] is required"
    text = HEAD + "[connector]\nid = 1\n"
    assert single_error(text) == (
        f"evse.toml:{line_of(text, '[connector]')}: connector: "
        "expected array of tables ([[connector]]), got table"
    )


def test_dotted_keys_are_located() -> None:
    text = HEAD + connector().replace('pilot = { driver = "mock" }', 'pilot.driver = "nope"')
    assert single_error(text) == (
        f"evse.toml:{line_of(text, 'nope')}: connector[0].pilot.driver: "
        'unknown driver "nope"; known: mock, rpi, uart'
    )


def test_keys_in_a_sub_table_of_the_second_connector_are_located() -> None:
    text = (
        HEAD
        + connector(1)
        + textwrap.dedent(
            """\
        [[connector]]
        id = 2
        max_current_a = 16
        phases = 1
        contactor = { driver = "mock" }
        meter = { driver = "mock" }
        [connector.pilot]
        driver = "mock"
        ev_phases = 2
        """
        )
    )
    assert single_error(text) == (
        f"evse.toml:{line_of(text, 'ev_phases')}: connector[1].pilot.ev_phases: "
        "must be 1 or 3, got 2"
    )


def test_strings_arrays_and_comments_do_not_confuse_the_line_locator() -> None:
    # Each trap is followed by a key whose error line would move if the trap were missed.
    lines = [
        "[station]",  # 1
        'id = "CP-1"   # a comment with [brackets] and key = value',
        r'vendor = "V\" [x] = 1"',
        "serial_number = 7",
        "model = 'M { }'",  # 5
        "",
        "[storage]",
        'state_dir = """',
        r'escaped quote \"""',
        "[[connector]]",  # 10
        "id = 99",
        'max_current_a = "decoy"',
        '"""',
        "[control]",
        "socket = '''",  # 15
        "[ocpp]'''''",
        "",
        "[ocpp]",
        'csms_url = "ws://h/ocpp"',
        "",  # 20
        "[ocpp.config]",
        "MeterValuesSampledData = [",
        '    "Voltage",   # ] not the end',
        '    "Current.Import",',
        "]",  # 25
        '"Heartbeat Interval" = 3',
        "",
        "[[connector]]",
        "id = 1",
        'max_current_a = "32"',  # 30
        "phases = 1",
        'pilot = { driver = "mock" }',
        'contactor = { driver = "mock" }',
        'meter = { driver = "mock" }',
    ]
    text = "\n".join(lines) + "\n"
    assert tomli.loads(text)["storage"]["state_dir"].startswith('escaped quote """\n[[connector]]')
    assert errors_of(text) == [
        "evse.toml:4: station.serial_number: expected string, got integer",
        'evse.toml:26: ocpp.config."Heartbeat Interval": '
        'unknown OCPP configuration key (did you mean "HeartbeatInterval"?)',
        "evse.toml:30: connector[0].max_current_a: expected number, got string",
    ]


def test_every_key_of_the_example_file_is_located_on_the_line_that_names_it() -> None:
    text = EXAMPLE.read_text()
    locator = config_module._LineLocator(text)
    lines = text.splitlines()

    def walk(value: object, path: tuple[str | int, ...]) -> None:
        if isinstance(value, dict):
            for key, child in value.items():
                walk(child, (*path, key))
        elif isinstance(value, list):
            for index, child in enumerate(value):
                walk(child, (*path, index))
        else:
            name = next(p for p in reversed(path) if isinstance(p, str))
            line = lines[locator.line_of(path) - 1]
            assert re.match(rf"\s*(\S+\s*=\s*{{.*)?\b{re.escape(name)}\s*=", line) or (
                isinstance(path[-1], int)
            ), (path, line)

    walk(tomli.loads(text), ())


# --- all errors at once


def test_every_error_is_reported_at_once_in_line_order() -> None:
    text = textwrap.dedent(
        """\
        [station]
        id = "CP 1"
        model = "M"
        colour = "blue"

        [ocpp]
        version = "2.0.1"
        csms_url = "http://csms.example/ocpp"

        [ocpp.config]
        HeartbeatInterval = -5
        NumberOfConnectors = 3
        Foo = 1

        [logging]
        level = "verbose"

        [[connector]]
        id = 1
        max_current_a = 100
        phases = 2
        pilot = { driver = "mokc" }
        contactor = { driver = "mock" }
        meter = { driver = "mock", port = "/dev/ttyUSB0" }

        [[connector]]
        id = 1
        max_current_a = 16
        phases = 1
        pilot = { driver = "mock" }
        contactor = { driver = "mock" }
        meter = { driver = "mock" }
        """
    )
    assert errors_of(text) == [
        "evse.toml:1: station.vendor: required key missing",
        "evse.toml:2: station.id: may hold only printable ASCII without spaces or any of / ? # % "
        "(it becomes the last path segment of the CSMS URL)",
        "evse.toml:4: station.colour: unknown key",
        "evse.toml:7: ocpp.version: OCPP 2.0.1 is not supported yet",
        "evse.toml:8: ocpp.csms_url: must start with ws:// or wss://",
        "evse.toml:11: ocpp.config.HeartbeatInterval: "
        "invalid value for integer: -5 is below the minimum 0",
        "evse.toml:12: ocpp.config.NumberOfConnectors: read-only OCPP key",
        "evse.toml:13: ocpp.config.Foo: unknown OCPP configuration key",
        'evse.toml:16: logging.level: must be "DEBUG", "ERROR", "INFO" or "WARNING", got "verbose"',
        "evse.toml:20: connector[0].max_current_a: must be between 6 and 80, got 100",
        "evse.toml:21: connector[0].phases: must be 1 or 3, got 2",
        'evse.toml:22: connector[0].pilot.driver: unknown driver "mokc"; known: mock, rpi, uart',
        "evse.toml:24: connector[0].meter.port: unknown key",
        "evse.toml:27: connector[1].id: duplicate connector id 1, first at line 19",
    ]


# --- individual checks


def test_duplicate_connector_ids_name_the_first() -> None:
    text = HEAD + connector(1) + connector(2) + connector(1)
    assert single_error(text) == (
        f"evse.toml:{line_of(text, 'id = 1', 2)}: connector[2].id: duplicate connector id 1, "
        f"first at line {line_of(text, 'id = 1', 1)}"
    )


def test_connector_ids_must_not_leave_gaps() -> None:
    text = HEAD + connector(1) + connector(3)
    assert single_error(text) == (
        f"evse.toml:{line_of(text, 'id = 3')}: connector[1].id: must be between 1 and 2 "
        "(the number of connectors, as OCPP numbers them), got 3"
    )


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://csms.example/ocpp", "must start with ws:// or wss://"),
        ("csms.example/ocpp", "must start with ws:// or wss://"),
        ("ws://", "has no host"),
        ("ws:///ocpp", "has no host"),
        (
            "ws://csms.example/ocpp?token=1",
            "must not contain a query (?) or fragment (#): "
            "the station id is appended as the last path segment",
        ),
        (
            "ws://csms.example/ocpp#x",
            "must not contain a query (?) or fragment (#): "
            "the station id is appended as the last path segment",
        ),
        ("ws://csms example/ocpp", "must not contain spaces"),
        (
            "ws://user:pw@csms.example/ocpp",
            "must not contain a user or password; use basic_auth_password",
        ),
        ("ws://csms.example:99999/ocpp", "invalid URL: Port out of range 0-65535"),
        ("", "must not be empty"),
    ],
)
def test_bad_csms_urls(url: str, message: str) -> None:
    text = HEAD.replace("ws://csms.example:9000/ocpp", url) + connector()
    assert single_error(text) == f"evse.toml:7: ocpp.csms_url: {message}"


@pytest.mark.parametrize(
    "url",
    [
        "ws://127.0.0.1:9000/ocpp",
        "wss://csms.example/ocpp/v16",
        "ws://[::1]:9000",
        "WSS://Csms.Example",
    ],
)
def test_good_csms_urls(url: str) -> None:
    text = HEAD.replace("ws://csms.example:9000/ocpp", url) + connector()
    assert parse_config(text).ocpp.csms_url == url


def test_unknown_ocpp_version() -> None:
    text = HEAD + 'version = "1.5"\n' + connector()
    assert single_error(text) == 'evse.toml:8: ocpp.version: unknown OCPP version "1.5"; use 1.6'


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('max_current_a = "32"', "connector[0].max_current_a: expected number, got string"),
        ("max_current_a = true", "connector[0].max_current_a: expected number, got boolean"),
        ("max_current_a = nan", "connector[0].max_current_a: must be between 6 and 80, got nan"),
        ("max_current_a = 5.9", "connector[0].max_current_a: must be between 6 and 80, got 5.9"),
        ("max_current_a = 80.5", "connector[0].max_current_a: must be between 6 and 80, got 80.5"),
        ("max_current_a = [16]", "connector[0].max_current_a: expected number, got array"),
        ("phases = true", "connector[0].phases: expected integer, got boolean"),
        ("phases = 3.0", "connector[0].phases: expected integer, got float"),
        ('phases = "3"', "connector[0].phases: expected integer, got string"),
        ("phases = 2", "connector[0].phases: must be 1 or 3, got 2"),
        ("phases = 1979-05-27", "connector[0].phases: expected integer, got date"),
    ],
)
def test_wrong_types_and_ranges_in_a_connector(line: str, message: str) -> None:
    key = line.split(" =")[0]
    text = HEAD + re.sub(rf"^{key} = .*$", line, connector(), flags=re.MULTILINE)
    assert single_error(text) == f"evse.toml:{line_of(text, line)}: {message}"


def test_connector_id_range() -> None:
    text = HEAD + connector(0)
    assert (
        single_error(text)
        == f"evse.toml:{line_of(text, 'id = 0')}: connector[0].id: must be between 1 and 32, got 0"
    )


def test_int_is_accepted_where_a_float_is_expected_and_vice_versa_not() -> None:
    assert parse_config(HEAD + connector()).connectors[0].max_current_a == 16.0
    text = HEAD + connector().replace("id = 1", "id = 1.0")
    assert (
        single_error(text)
        == f"evse.toml:{line_of(text, 'id = 1.0')}: connector[0].id: expected integer, got float"
    )


def test_unknown_top_level_table_suggests_the_known_name() -> None:
    text = HEAD + connector() + "[stations]\nfoo = 1\n"
    assert single_error(text) == (
        f'evse.toml:{line_of(text, "[stations]")}: stations: unknown key (did you mean "station"?)'
    )


def test_unknown_option_of_a_known_driver() -> None:
    text = HEAD + connector().replace(
        'meter = { driver = "mock" }', 'meter = { driver = "mock", baudrate = 9600 }'
    )
    assert (
        single_error(text)
        == f"evse.toml:{line_of(text, 'baudrate')}: connector[0].meter.baudrate: unknown key"
    )


def test_driver_table_must_be_a_table_with_a_string_driver() -> None:
    text = HEAD + connector().replace('pilot = { driver = "mock" }', 'pilot = "mock"').replace(
        'meter = { driver = "mock" }', "meter = { driver = 1 }"
    )
    assert errors_of(text) == [
        f"evse.toml:{line_of(text, 'pilot')}: connector[0].pilot: expected table, got string",
        f"evse.toml:{line_of(text, 'meter')}: connector[0].meter.driver: "
        "expected string, got integer",
    ]


def test_unknown_rfid_driver() -> None:
    text = HEAD + connector() + '\n[rfid]\ndriver = "pn999"\n'
    assert (
        single_error(text)
        == f'evse.toml:{line_of(text, "pn999")}: rfid.driver: unknown driver "pn999"; '
        "known: mock, pn532, rdm6300"
    )


def test_station_checks() -> None:
    text = (
        HEAD.replace('id = "CP-1"', 'id = "' + "X" * 49 + '"')
        .replace('vendor = "V"', 'vendor = "ABCDEFGHIJKLMNOPQRSTU"\nnominal_voltage_v = 90')
        .replace('model = "M"', 'model = ""\nserial_number = 7')
        + connector()
    )
    assert errors_of(text) == [
        "evse.toml:2: station.id: must be at most 48 characters, got 49",
        "evse.toml:3: station.vendor: must be at most 20 characters, got 21",
        "evse.toml:4: station.nominal_voltage_v: must be between 100 and 480, got 90",
        "evse.toml:5: station.model: must not be empty",
        "evse.toml:6: station.serial_number: expected string, got integer",
    ]


@pytest.mark.parametrize("station_id", ["CP/1", "CP 1", "CP?1", "CP#1", "CP%201", "ČP-1", "CP\t1"])
def test_station_id_must_fit_in_a_url_path_segment(station_id: str) -> None:
    text = HEAD.replace('"CP-1"', '"' + station_id.replace("\t", "\\t") + '"') + connector()
    assert single_error(text).startswith("evse.toml:2: station.id: may hold only printable ASCII")


def test_reconnect_bounds() -> None:
    text = HEAD + "reconnect_min_s = 10\nreconnect_max_s = 5\n" + connector()
    assert (
        single_error(text)
        == "evse.toml:9: ocpp.reconnect_max_s: must be at least reconnect_min_s (10), got 5"
    )
    # A long minimum alone raises the default maximum with it instead of failing.
    config = parse_config(HEAD + "reconnect_min_s = 120\n" + connector())
    assert (config.ocpp.reconnect_min_s, config.ocpp.reconnect_max_s) == (120.0, 120.0)
    text = HEAD + "message_timeout_s = 0\nreconnect_min_s = 0\n" + connector()
    assert errors_of(text) == [
        "evse.toml:8: ocpp.message_timeout_s: must be between 1 and 600, got 0",
        "evse.toml:9: ocpp.reconnect_min_s: must be between 0.01 and 3600, got 0",
    ]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ("security_profile = 1", "security profile 1 needs basic_auth_password"),
        (
            "security_profile = 2",
            "security profile 2 needs basic_auth_password and a wss:// csms_url",
        ),
        (
            'security_profile = 3\nclient_cert_file = "{tmp}/client.pem"',
            "security profile 3 needs client_key_file and a wss:// csms_url",
        ),
        ("security_profile = 4", "must be between 0 and 3, got 4"),
    ],
)
def test_security_profile_needs_its_settings(settings: str, message: str, tmp_path: Path) -> None:
    tls_files(tmp_path)
    text = HEAD + settings.replace("{tmp}", str(tmp_path)) + "\n" + connector()
    assert single_error(text) == f"evse.toml:8: ocpp.security_profile: {message}"


def test_security_profile_2_with_everything() -> None:
    text = (
        HEAD.replace("ws://", "wss://")
        + 'security_profile = 2\nbasic_auth_password = "0123456789abcdef"\n'
        + connector()
    )
    ocpp = parse_config(text).ocpp
    assert (ocpp.security_profile, ocpp.basic_auth_password) == (2, "0123456789abcdef")
    assert ocpp.initial_configuration() == {
        "SecurityProfile": "2",
        "AuthorizationKey": "0123456789abcdef",
        "MessageTimeout": "30",
    }


def test_basic_auth_password_length() -> None:
    text = HEAD + 'basic_auth_password = "short"\n' + connector()
    assert (
        single_error(text)
        == "evse.toml:8: ocpp.basic_auth_password: must be 16 to 40 characters, got 5"
    )


def test_tls_files_must_exist_relative_to_the_config_file(tmp_path: Path) -> None:
    tls_files(tmp_path)
    body = (
        'ca_file = "csms-ca.pem"\nclient_cert_file = "client.pem"\n'
        'client_key_file = "missing.key"\n'
    )
    path = tmp_path / "evse.toml"
    path.write_text(HEAD + body + connector())
    with pytest.raises(ConfigInvalid) as info:
        load_config(path)
    assert [str(e) for e in info.value.errors] == [
        f"{path}:10: ocpp.client_key_file: file not found: {tmp_path}/missing.key"
    ]
    path.write_text(HEAD + body.replace("missing.key", "client.key") + connector())
    ocpp = load_config(path).ocpp
    assert (ocpp.ca_file, ocpp.client_cert_file, ocpp.client_key_file) == (
        f"{tmp_path}/csms-ca.pem",
        f"{tmp_path}/client.pem",
        f"{tmp_path}/client.key",
    )


def test_tls_file_contents_are_checked_as_the_tls_stack_reads_them(tmp_path: Path) -> None:
    tls_files(tmp_path)
    (tmp_path / "notes.txt").write_text("not a certificate\n")
    other = pki.make_leaf(pki.make_ca(), "CP-1", client=True)
    other.write(tmp_path, "other")
    text = (
        HEAD
        + f'ca_file = "{tmp_path}/notes.txt"\n'
        + f'client_cert_file = "{tmp_path}/client.pem"\n'
        + f'client_key_file = "{tmp_path}/other.key"\n'
        + connector()
    )
    errors = errors_of(text)
    assert len(errors) == 2, errors
    assert errors[0].startswith(f"evse.toml:8: ocpp.ca_file: no PEM certificate in {tmp_path}")
    assert errors[1].startswith(
        f"evse.toml:9: ocpp.client_cert_file: {tmp_path}/client.pem and {tmp_path}/other.key "
        "are not a PEM certificate and its private key ("
    )


def test_private_key_readable_by_everyone_is_refused(tmp_path: Path) -> None:
    tls_files(tmp_path)
    (tmp_path / "client.key").chmod(0o644)
    text = (
        HEAD
        + f'client_cert_file = "{tmp_path}/client.pem"\n'
        + f'client_key_file = "{tmp_path}/client.key"\n'
        + connector()
    )
    assert single_error(text) == (
        "evse.toml:9: ocpp.client_key_file: private key readable by every user (mode 0644); "
        "chmod 600 it"
    )


def test_client_certificate_without_its_key(tmp_path: Path) -> None:
    tls_files(tmp_path)
    text = HEAD + f'client_cert_file = "{tmp_path}/client.pem"\n' + connector()
    assert single_error(text) == "evse.toml:8: ocpp.client_cert_file: needs client_key_file too"


def test_logging_level_is_case_insensitive() -> None:
    text = HEAD + connector() + '[logging]\nlevel = "warning"\n'
    assert parse_config(text).logging.level == "WARNING"


def test_logging_id_tag_policy() -> None:
    assert parse_config(HEAD + connector()).logging.id_tag == "hash"  # private by default
    text = HEAD + connector() + '[logging]\nid_tag = "masked"\n'
    assert parse_config(text).logging.id_tag == "masked"
    text = HEAD + connector() + '[logging]\nid_tag = "plain"\n'
    assert single_error(text) == (
        f"evse.toml:{line_of(text, 'id_tag')}: logging.id_tag: "
        'must be "clear", "hash" or "masked", got "plain"'
    )


def test_control_socket_path_must_fit_a_unix_socket_address() -> None:
    text = HEAD + connector() + '[control]\nsocket = "/run/' + "s" * 103 + '"\n'
    assert single_error(text) == (
        f"evse.toml:{line_of(text, 'socket')}: control.socket: "
        "must be at most 107 bytes (the limit of a Unix socket path)"
    )


def test_optional_table_of_the_wrong_type() -> None:
    text = 'storage = "/var/lib"\n' + HEAD + connector()
    assert single_error(text) == "evse.toml:1: storage: expected table, got string"


# --- [ocpp.config]


def ocpp_config(body: str, connectors: int = 2) -> str:
    return (
        HEAD
        + "\n[ocpp.config]\n"
        + body
        + "\n"
        + "".join(connector(i + 1) for i in range(connectors))
    )


def test_ocpp_config_values_become_ocpp_strings() -> None:
    text = ocpp_config(
        textwrap.dedent(
            """\
            HeartbeatInterval = 120
            LocalPreAuthorize = true
            AllowOfflineTxForUnknownId = "TRUE"
            MeterValuesSampledData = ["Energy.Active.Import.Register", "Voltage"]
            StopTxnSampledData = "Energy.Active.Import.Register , Current.Import"
            MeterValuesAlignedData = []
            ConnectorPhaseRotation = "0.RST,1.RST,2.RTS"
            """
        )
    )
    assert dict(parse_config(text).ocpp.config) == {
        "HeartbeatInterval": "120",
        "LocalPreAuthorize": "true",
        "AllowOfflineTxForUnknownId": "true",
        "MeterValuesSampledData": "Energy.Active.Import.Register,Voltage",
        "StopTxnSampledData": "Energy.Active.Import.Register,Current.Import",
        "MeterValuesAlignedData": "",
        "ConnectorPhaseRotation": "0.RST,1.RST,2.RTS",
    }


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            "Heartbeatinterval = 60",
            'unknown OCPP configuration key (did you mean "HeartbeatInterval"?)',
        ),
        ("LightIntensity = 50", "unknown OCPP configuration key"),
        ("NumberOfConnectors = 2", "read-only OCPP key"),
        ('SupportedFeatureProfiles = "Core"', "read-only OCPP key"),
        ("HeartbeatInterval = -1", "invalid value for integer: -1 is below the minimum 0"),
        ('HeartbeatInterval = "soon"', "invalid value for integer: 'soon' is not an integer"),
        ("HeartbeatInterval = true", "expected integer, got boolean"),
        ("HeartbeatInterval = 1.5", "expected integer, got float"),
        ("LocalPreAuthorize = 1", "expected boolean, got integer"),
        ('LocalPreAuthorize = "yes"', "invalid value for boolean: 'yes' is not true or false"),
        (
            'MeterValuesSampledData = ["Voltage", "Frequency"]',
            "invalid value for comma-separated list: unsupported member 'Frequency'; supported: "
            "Current.Import, Current.Offered, Energy.Active.Import.Register, Power.Active.Import, "
            "Voltage",
        ),
        ("MeterValuesSampledData = [1, 2]", "expected string or array of strings, got array"),
        (
            'ConnectorPhaseRotation = "3.RST"',
            "invalid value for comma-separated list: malformed member '3.RST'",
        ),
        ("SecurityProfile = 1", "set ocpp.security_profile instead"),
        ('AuthorizationKey = "0123456789abcdef"', "set ocpp.basic_auth_password instead"),
        ("MessageTimeout = 10", "set ocpp.message_timeout_s instead"),
        ("[ocpp.config.Nested]", "unknown OCPP configuration key"),
    ],
)
def test_ocpp_config_errors(entry: str, message: str) -> None:
    text = ocpp_config(entry)
    key = entry.strip("[]").split(" =")[0].removeprefix("ocpp.config.")
    assert single_error(text) == f"evse.toml:{line_of(text, entry)}: ocpp.config.{key}: {message}"


def test_ocpp_config_must_be_a_table() -> None:
    text = HEAD + 'config = "HeartbeatInterval=5"\n' + connector()
    assert single_error(text) == "evse.toml:8: ocpp.config: expected table, got string"


def test_initial_configuration_merges_ocpp_keys_from_the_ocpp_table() -> None:
    text = ocpp_config("HeartbeatInterval = 120").replace(
        'csms_url = "ws://csms.example:9000/ocpp"',
        'csms_url = "ws://csms.example:9000/ocpp"\nmessage_timeout_s = 12.6',
    )
    assert parse_config(text).ocpp.initial_configuration() == {
        "HeartbeatInterval": "120",
        "SecurityProfile": "0",
        "MessageTimeout": "13",
    }


# --- files


def test_load_config_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "evse.toml"
    path.write_text(DESIGN_EXAMPLE)
    assert load_config(path) == parse_config(DESIGN_EXAMPLE, str(path))


def test_load_config_reports_errors_with_the_file_path(tmp_path: Path) -> None:
    path = tmp_path / "evse.toml"
    path.write_text(DESIGN_EXAMPLE.replace("phases = 1", "phases = 4"))
    with pytest.raises(ConfigInvalid) as info:
        load_config(str(path))
    line = line_of(DESIGN_EXAMPLE, "phases = 1")
    assert str(info.value) == f"{path}:{line}: connector[1].phases: must be 1 or 3, got 4"


def test_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigInvalid) as info:
        load_config(missing)
    assert str(info.value) == f"{missing}:1: file: cannot read: No such file or directory"


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "evse.toml"
    path.write_bytes(b'[station]\nid = "CP-1"\nvendor = "Caf\xe9"\n')
    with pytest.raises(ConfigInvalid) as info:
        load_config(path)
    assert str(info.value) == f"{path}:3: file: not valid UTF-8"


def test_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "evse.toml"
    path.write_bytes(b"\xef\xbb\xbf" + DESIGN_EXAMPLE.encode())
    assert load_config(path).station.id == "CP-BENCH-1"


def test_crlf_line_endings_keep_line_numbers(tmp_path: Path) -> None:
    text = HEAD + connector().replace("phases = 1", "phases = 5")
    path = tmp_path / "evse.toml"
    path.write_bytes(text.replace("\n", "\r\n").encode())
    with pytest.raises(ConfigInvalid) as info:
        load_config(path)
    assert [e.line for e in info.value.errors] == [line_of(text, "phases = 5")]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("[]{}=.,#\"'\\\n ab1")), max_size=80))
def test_line_locator_never_fails_on_arbitrary_text(text: str) -> None:
    # It only ever sees text tomli accepted, but must not hang or crash on anything.
    locator = config_module._LineLocator(text)
    assert 1 <= locator.line_of(("a", 0, "b")) <= text.count("\n") + 1


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=0, max_value=len(DESIGN_EXAMPLE)))
def test_a_truncated_file_gives_errors_not_crashes(cut: int) -> None:
    try:
        parse_config(DESIGN_EXAMPLE[:cut], "evse.toml")
    except ConfigInvalid as exc:
        assert exc.errors
        assert all(1 <= e.line <= DESIGN_EXAMPLE.count("\n") + 1 for e in exc.errors)


# --- [board] profiles

BOARD_CONNECTOR = """\
[[connector]]
id = 1
max_current_a = 32
phases = 3
pilot = { driver = "rpi" }
contactor = { driver = "gpio" }
meter = { driver = "mock" }
lock = { driver = "gpio" }
rcd = { driver = "gpio" }
"""


def test_board_profile_gives_the_wiring_and_the_config_overrides_single_values() -> None:
    text = (
        HEAD
        + '[board]\nprofile = "pi-evse-reference"\n'
        + "[board.connector.1.contactor]\nrelay_gpio = 17\n"
        + BOARD_CONNECTOR
    )
    config = parse_config(text)
    assert config.board is not None
    contactor = config.board.board.wiring(1, "contactor")
    assert contactor.relay_gpio == 17  # overridden
    assert contactor.feedback_gpio == 23  # from the profile
    assert config.board.board.wiring(1, "pilot").pwm_chip == 0


def test_board_override_errors_name_their_line_and_profile_errors_the_profile() -> None:
    text = (
        HEAD
        + '[board]\nprofile = "pi-evse-reference"\n'
        + '[board.connector.1.contactor]\nrelay_gpio = "GPIO17"\nrelay_gpoi = 3\n'
        + BOARD_CONNECTOR
    )
    assert errors_of(text) == [
        f"evse.toml:{line_of(text, 'relay_gpio =')}: board.connector.1.contactor.relay_gpio: "
        "must be an integer, got 'GPIO17'",
        f"evse.toml:{line_of(text, 'relay_gpoi')}: board.connector.1.contactor.relay_gpoi: "
        "unknown key",
    ]
    missing = HEAD + '[board]\nprofile = "no-such-board"\n' + BOARD_CONNECTOR
    (error,) = errors_of(missing)
    assert error.startswith(f"evse.toml:{line_of(missing, 'profile =')}: board.profile: ")
    assert "no-such-board.toml" in error


def test_board_drivers_need_a_profile_that_wires_them() -> None:
    text = HEAD + BOARD_CONNECTOR
    errors = errors_of(text)
    assert errors[0] == (
        f"evse.toml:{line_of(text, 'pilot =')}: connector[0].pilot.driver: "
        'driver "rpi" needs a [board] profile'
    )
    assert len(errors) == 4  # pilot, contactor, lock, rcd
    two = (
        HEAD
        + '[board]\nprofile = "pi-evse-reference"\n'
        + BOARD_CONNECTOR
        + BOARD_CONNECTOR.replace("id = 1", "id = 2")
    )
    assert any("has no [connector.2.pilot]" in e for e in errors_of(two))


def test_the_reference_board_config_is_valid() -> None:
    path = Path(__file__).resolve().parent.parent / "hardware/boards/pi-evse-reference.evse.toml"
    config = load_config(path)
    assert config.board is not None and config.board.profile == "pi-evse-reference"
    assert not config.is_bench
    (connector,) = config.connectors
    assert {part: d.driver for part, d in connector.drivers.items()} == {
        "pilot": "rpi",
        "contactor": "gpio",
        "meter": "modbus",
        "lock": "gpio",
        "rcd": "gpio",
        "temperature": "adc",
    }
    assert config.board.board.wiring(1, "rcd").test_gpio == 25
    assert config.rfid is not None and config.rfid.driver == "pn532"


def test_a_meter_map_that_does_not_exist_is_a_config_error() -> None:
    text = HEAD + connector().replace(
        'meter = { driver = "mock" }',
        'meter = { driver = "modbus", model = "eastron-sdm999", host = "10.0.0.5" }',
    )
    (error,) = errors_of(text)
    assert error.startswith(f"evse.toml:{line_of(text, 'sdm999')}: connector[0].meter.driver: ")
    assert "eastron-sdm999" in error
