"""``evsectl``: talk to a running evse-daemon over its control socket.

Kept free of the daemon's own imports (config, ocpp, drivers) so that it starts fast and
works even when the daemon's configuration is broken.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import tomli

from evse_daemon.control import DEFAULT_SOCKET_PATH, ControlError, request

ENV_SOCKET = "EVSE_CONTROL_SOCKET"
_EV_STATES = ("A", "B", "C", "D", "E", "F")
_BRINGUP_PARTS = ("pilot", "contactor", "lock", "meter", "rfid", "rcd")
# A bring-up test takes its time (the rfid one waits for a card) beyond the usual timeout.
_BRINGUP_EXTRA_S = 20.0


class _CtlError(Exception):
    """A one-line reason to print after ``evsectl: `` before exiting 1."""


def _connector(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"connector must be a number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"connector must be >= 1, got {value}")
    return value


def _ev_state(text: str) -> str:
    if text.upper() in _EV_STATES:
        return text.upper()
    if text.lower() == "auto":
        return "auto"
    raise argparse.ArgumentTypeError(f"state must be one of A-F or auto, got {text!r}")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"seconds must be a number, got {text!r}") from None
    if not 0 <= value <= 600:
        raise argparse.ArgumentTypeError(f"seconds must be between 0 and 600, got {text}")
    return value


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="evsectl",
        description="Inspect and drive a running evse-daemon through its control socket.",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--socket",
        metavar="PATH",
        help=f"control socket (default: [control] socket of --config, ${ENV_SOCKET}, "
        f"or {DEFAULT_SOCKET_PATH})",
    )
    where.add_argument("--config", metavar="FILE", help="read the socket path from this config")
    parser.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="give up when the daemon does not answer within this time (default 5)",
    )
    sub = parser.add_subparsers(dest="cmd", metavar="COMMAND", required=True)
    sub.add_parser("status", help="print the daemon's state as JSON")
    for name, text in (
        ("plug", "bench: an EV is connected to connector N"),
        ("unplug", "bench: the EV is removed from connector N"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("connector", metavar="N", type=_connector)
    p = sub.add_parser("ev", help="bench: the EV on connector N presents pilot STATE")
    p.add_argument("connector", metavar="N", type=_connector)
    p.add_argument("state", metavar="STATE", type=_ev_state, help="A-F, or auto")
    p = sub.add_parser("swipe", help="bench: present a card with this id to the reader")
    p.add_argument("tag", metavar="TAG")
    for name, text in (
        ("fault", "bench: raise a hardware fault on connector N"),
        ("clear", "bench: clear a hardware fault on connector N"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("connector", metavar="N", type=_connector)
        p.add_argument(
            "kind",
            metavar="KIND",
            help="rcd, weld, pilot-short, diode, meter, lock, reader, overtemp",
        )
    p = sub.add_parser(
        "bringup",
        help="commissioning: exercise one part and print what it sees (refused during sessions)",
    )
    p.add_argument("part", choices=_BRINGUP_PARTS, metavar="PART", help=" | ".join(_BRINGUP_PARTS))
    p.add_argument("connector", metavar="N", type=_connector, nargs="?", default=None)
    p.add_argument(
        "--wait",
        type=float,
        default=None,
        metavar="SECONDS",
        dest="wait_s",
        help="rfid: how long to wait for a card (default 15)",
    )
    p = sub.add_parser("debug", help="bench: debugging aids (refused on real drivers)")
    debug = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    p = debug.add_parser(
        "stall-safety-loop",
        help="hold the safety loop for SECONDS (0: release it) while the rest runs on; "
        "under systemd the watchdog then goes unfed and the daemon is restarted",
    )
    p.add_argument("seconds", metavar="SECONDS", type=_seconds)
    return parser


def _socket_from_config(config_path: str) -> str | None:
    try:
        with open(config_path, "rb") as f:
            data = tomli.load(f)
    except FileNotFoundError:
        raise _CtlError(f"config file {config_path} not found") from None
    except PermissionError:
        raise _CtlError(f"cannot read config file {config_path}: permission denied") from None
    except OSError as exc:
        raise _CtlError(f"cannot read config file {config_path}: {exc.strerror or exc}") from None
    except tomli.TOMLDecodeError as exc:
        raise _CtlError(f"{config_path}: invalid TOML: {exc}") from None
    control = data.get("control")
    if control is None:
        return None
    if not isinstance(control, dict):
        raise _CtlError(f"{config_path}: control: must be a table")
    value = control.get("socket")
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise _CtlError(f"{config_path}: control.socket: must be a non-empty string")
    return value


def _socket_path(args: argparse.Namespace) -> str:
    if args.socket:
        return str(args.socket)
    if args.config:
        from_config = _socket_from_config(args.config)
        if from_config is not None:
            return from_config
    return os.environ.get(ENV_SOCKET) or DEFAULT_SOCKET_PATH


def _request_for(args: argparse.Namespace) -> dict[str, Any]:
    req: dict[str, Any] = {"cmd": args.cmd}
    for field in ("connector", "state", "tag", "kind", "part", "wait_s", "what", "seconds"):
        if getattr(args, field, None) is not None:
            req[field] = getattr(args, field)
    return req


def _print_result(cmd: str, result: Any) -> None:
    if cmd in ("status", "bringup"):
        print(json.dumps(result, indent=2))
    elif result is None or result is True or result == {} or result == "ok":
        print("ok")
    elif isinstance(result, str):
        print(result)
    else:
        print(json.dumps(result))


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        # argparse exits itself on usage errors (2) and --help (0); return the code so
        # that main() can be called from tests and scripts without catching SystemExit.
        return exc.code if isinstance(exc.code, int) else 2
    if args.timeout <= 0:
        parser.print_usage(sys.stderr)
        print("evsectl: error: --timeout must be positive", file=sys.stderr)
        return 2
    try:
        path = _socket_path(args)
        timeout_s = args.timeout
        if args.cmd == "bringup":
            timeout_s += _BRINGUP_EXTRA_S + (args.wait_s or 0.0)
        response = request(path, _request_for(args), timeout_s=timeout_s)
    except (_CtlError, ControlError) as exc:
        print(f"evsectl: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    if not response["ok"]:
        reason = response.get("error")
        # Our daemon sends one line already; keep the promise even if some other does not.
        text = " ".join(reason.split()) if isinstance(reason, str) else ""
        print(f"evsectl: {text or 'request refused'}", file=sys.stderr)
        return 1
    result = response.get("result")
    try:
        _print_result(args.cmd, result)
    except BrokenPipeError:
        # `evsectl status | head` closing the pipe early is not an error worth a traceback.
        return 0
    if args.cmd == "bringup" and isinstance(result, dict) and result.get("passed") is False:
        return 3  # the test ran and found a problem (1 = it could not run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
