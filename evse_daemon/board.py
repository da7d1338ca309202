"""Board profiles: how a charger board is wired, as data (``hardware/boards/<board>.toml``).

A profile gives, per connector and part, the fields of that part's wiring dataclass in
``drivers.rpi`` (GPIO numbers, PWM chip and channel, ADC channels, divider constants, active
levels, timings)::

    [board]
    name = "pi-evse-reference"
    description = "..."

    [connector.1.pilot]        # drivers.rpi.PilotWiring
    pwm_chip = 0
    ...
    [connector.1.contactor]    # drivers.rpi.ContactorWiring
    relay_gpio = 22

The config names a profile (``[board] profile = "pi-evse-reference"``, or a path to a file)
and may override single values in the same shape (``[board.connector.1.contactor]
relay_gpio = 17``): the override wins key by key. Every key is checked against the dataclass
field it fills (unknown keys, wrong types and the drivers' own range checks all fail with the
key named), so a typo is found by ``evse-daemon check-config``, not at the first session.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import tomli

from drivers.rpi import (
    ContactorWiring,
    LockWiring,
    PilotWiring,
    ProximityWiring,
    RcdWiring,
    TemperatureWiring,
    WatchdogWiring,
)

from .config import BOARDS_DIR

WIRING_CLASSES: Mapping[str, type[Any]] = types.MappingProxyType(
    {
        "pilot": PilotWiring,
        "proximity": ProximityWiring,
        "contactor": ContactorWiring,
        "lock": LockWiring,
        "rcd": RcdWiring,
        "temperature": TemperatureWiring,
        "watchdog": WatchdogWiring,
    }
)

KeyPath = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class BoardProblem:
    """One error: in the profile file or in the config's overrides, at a key path."""

    in_override: bool
    key: KeyPath
    message: str


class BoardError(Exception):
    def __init__(self, source: str, problems: list[BoardProblem]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(
            "; ".join(f"{'.'.join(p.key)}: {p.message}" for p in problems) or "invalid board"
        )


@dataclass(frozen=True, slots=True)
class Board:
    name: str
    source: str  # the profile file
    # connector id → part name → wiring dataclass instance
    connectors: Mapping[int, Mapping[str, Any]]

    def wiring(self, connector_id: int, part: str) -> Any | None:
        return self.connectors.get(connector_id, {}).get(part)


def profile_path(profile: str, *, base_dir: Path | None = None) -> Path:
    """A profile name (``hardware/boards/<name>.toml``) or a path (relative to the config)."""
    if "/" in profile or profile.endswith(".toml"):
        path = Path(profile)
        return path if path.is_absolute() or base_dir is None else base_dir / path
    return BOARDS_DIR / f"{profile}.toml"


def _merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _leaves(table: Mapping[str, Any], prefix: KeyPath = ()) -> set[KeyPath]:
    out: set[KeyPath] = set()
    for key, value in table.items():
        path = (*prefix, str(key))
        out |= _leaves(value, path) if isinstance(value, Mapping) else {path}
    return out


def _type_ok(value: object, annotation: Any) -> bool:
    origin = get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in get_args(annotation))
    if origin is Literal:
        return value in get_args(annotation)
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    return False


def _describe(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(annotation) if a is not type(None))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(annotation))
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        annotation, str(annotation)
    )


def _build_wiring(
    cls: type[Any], table: Mapping[str, Any], path: KeyPath, from_override: set[KeyPath]
) -> tuple[Any | None, list[BoardProblem]]:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    problems: list[BoardProblem] = []
    values: dict[str, Any] = {}
    for key, value in table.items():
        key_path = (*path, key)
        where = key_path in from_override
        if key not in fields:
            problems.append(BoardProblem(where, key_path, "unknown key"))
        elif not _type_ok(value, hints[key]):
            problems.append(
                BoardProblem(where, key_path, f"must be {_describe(hints[key])}, got {value!r}")
            )
        else:
            values[key] = float(value) if hints[key] is float else value
    for name, spec in fields.items():
        no_default = spec.default is dataclasses.MISSING
        if no_default and spec.default_factory is dataclasses.MISSING and name not in table:
            problems.append(BoardProblem(False, (*path, name), "required key missing"))
    if problems:
        return None, problems
    try:
        return cls(**values), []
    except ValueError as exc:  # the driver's own range and consistency checks
        where = any(k[: len(path)] == path for k in from_override)
        return None, [BoardProblem(where, path, str(exc))]


def load_board(
    profile: str, overrides: Mapping[str, Any] | None = None, *, base_dir: Path | None = None
) -> Board:
    """Read a profile, apply the config's overrides, and build every wiring. Raises
    BoardError naming each bad key (and whether it came from the profile or the config)."""
    path = profile_path(profile, base_dir=base_dir)
    source = str(path)
    try:
        data = tomli.loads(path.read_text("utf-8"))
    except OSError as exc:
        raise BoardError(
            source, [BoardProblem(True, ("profile",), f"cannot read {path}: {exc.strerror or exc}")]
        ) from None
    except tomli.TOMLDecodeError as exc:
        raise BoardError(source, [BoardProblem(False, ("syntax",), str(exc))]) from None
    override = dict(overrides or {})
    merged = _merge(data, override)
    from_override = _leaves(override)
    problems: list[BoardProblem] = []
    for key in merged:
        if key not in ("board", "connector"):
            problems.append(BoardProblem((key,) in from_override, (key,), "unknown table"))
    board_table = merged.get("board", {})
    name = board_table.get("name", path.stem) if isinstance(board_table, Mapping) else path.stem
    connectors: dict[int, dict[str, Any]] = {}
    raw_connectors = merged.get("connector", {})
    if not isinstance(raw_connectors, Mapping):
        problems.append(BoardProblem(False, ("connector",), "must be a table of connectors"))
        raw_connectors = {}
    for cid_text, parts in raw_connectors.items():
        cpath: KeyPath = ("connector", str(cid_text))
        if not str(cid_text).isdigit() or int(cid_text) < 1:
            problems.append(
                BoardProblem(cpath in from_override, cpath, "connector ids are 1, 2, …")
            )
            continue
        if not isinstance(parts, Mapping):
            problems.append(BoardProblem(False, cpath, "must be a table of parts"))
            continue
        built: dict[str, Any] = {}
        for part, table in parts.items():
            ppath = (*cpath, str(part))
            cls = WIRING_CLASSES.get(str(part))
            if cls is None:
                known = ", ".join(WIRING_CLASSES)
                problems.append(
                    BoardProblem(ppath in from_override, ppath, f"unknown part; known: {known}")
                )
                continue
            if not isinstance(table, Mapping):
                problems.append(BoardProblem(False, ppath, "must be a table"))
                continue
            wiring, wrong = _build_wiring(cls, table, ppath, from_override)
            problems += wrong
            if wiring is not None:
                built[str(part)] = wiring
        connectors[int(cid_text)] = built
    if problems:
        raise BoardError(source, problems)
    return Board(str(name), source, types.MappingProxyType(connectors))
