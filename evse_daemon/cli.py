"""The ``evse-daemon`` command: run, check-config, demo."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence

from . import __version__
from .config import Config, ConfigInvalid, load_config
from .logfields import IdTagFilter, IdTagPolicy
from .logsetup import read_id_tag_key, setup_logging

log = logging.getLogger("evse_daemon")

EXIT_CONFIG = 2
# After a firmware update: exit for the service manager to start the version now installed
# (EX_TEMPFAIL; non-zero, so that Restart=on-failure restarts the daemon too).
EXIT_RESTART_FOR_FIRMWARE = 75


def _load(path: str) -> Config | None:
    try:
        return load_config(path)
    except ConfigInvalid as exc:
        for error in exc.errors:
            print(str(error), file=sys.stderr)
        return None


async def run_daemon(config: Config) -> int:
    from .app import App, RunOutcome
    from .hardware import UnsupportedDriver, build_hardware
    from .service import Notifier, Supervisor, watchdog_interval_s

    try:
        hardware = build_hardware(config)
    except (UnsupportedDriver, OSError) as exc:
        print(f"evse-daemon: {exc}", file=sys.stderr)
        return 1
    loop = asyncio.get_running_loop()
    current: list[App] = []
    # systemd: READY=1, STATUS=, WATCHDOG=1 and STOPPING=1 (nothing outside systemd).
    supervisor = Supervisor(
        Notifier.from_environment(),
        lambda: current[0] if current else None,
        watchdog_interval_s=watchdog_interval_s(os.environ, os.getpid()),
    )
    supervision = asyncio.create_task(supervisor.run())

    def on_signal() -> None:
        log.info("SIGTERM/SIGINT: stopping")
        supervisor.stopping("stop requested")
        stopping.set()
        if current:
            current[0].request_stop()

    def on_power_failure() -> None:
        # SIGPWR: a UPS or backup-power monitor says the mains is failing. The transactions
        # are stopped with reason PowerLoss while the backup lasts, then the daemon exits.
        log.warning("SIGPWR: power failing: stopping every transaction (PowerLoss)")
        supervisor.stopping("SIGPWR, power failing")
        stopping.set()
        if current:
            current[0].request_stop(RunOutcome.POWER_LOSS)

    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    power_signal = getattr(signal, "SIGPWR", None)  # Linux only
    if power_signal is not None:
        loop.add_signal_handler(power_signal, on_power_failure)
    try:
        while True:
            app = App(config, hardware)
            current[:] = [app]
            outcome = await app.run()
            if outcome is RunOutcome.STOPPED or stopping.is_set():
                return 0
            if outcome is RunOutcome.FIRMWARE_UPDATE:
                log.warning("exiting for the new firmware to start (exit status 75)")
                return EXIT_RESTART_FOR_FIRMWARE
            # A reset restarts the application in-process: the drivers (and the EV plugged
            # into them) stay, everything above them is built anew and boots again.
            log.warning("restarting after %s", outcome.value)
            reloaded = _load(config.path)
            if reloaded is not None:
                config = reloaded
    finally:
        supervisor.stopping("exiting")
        await hardware.shutdown()
        supervision.cancel()
        # A supervisor that failed has said so in the log already.
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await supervision


def _print_logged_id_tags(config: Config, tags: Sequence[str]) -> int:
    policy = IdTagPolicy(config.logging.id_tag)
    key = b""
    if policy is IdTagPolicy.HASH:
        # Read only: a key made here, by another user than the daemon's, could lock it out.
        state_dir = config.storage.state_dir
        try:
            found = read_id_tag_key(state_dir)
        except OSError as exc:
            print(
                f"evse-daemon: cannot read the idTag hash key in {state_dir}: {exc.strerror}",
                file=sys.stderr,
            )
            return 1
        if found is None:
            print(
                f"evse-daemon: no idTag hash key in {state_dir} yet (the daemon makes it)",
                file=sys.stderr,
            )
            return 1
        key = found
    tag_filter = IdTagFilter(policy, key)
    for tag in tags:
        print(tag_filter.render(tag))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="evse-daemon", description="Charge-point daemon for AC EV chargers (OCPP 1.6J)."
    )
    parser.add_argument("--version", action="version", version=f"evse-daemon {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the daemon in the foreground")
    run.add_argument("--config", required=True, help="the TOML configuration file")
    check = commands.add_parser("check-config", help="validate a configuration file")
    check.add_argument("file")
    demo = commands.add_parser(
        "demo", help="a local CSMS, the daemon on mock drivers, and a narrated charging session"
    )
    demo.add_argument("--speed", type=float, default=1.0, help="time scale (2 = twice as fast)")
    id_tag_hash = commands.add_parser(
        "id-tag-hash",
        help="how the log writes these idTags ([logging] id_tag), to find a card in the journal",
    )
    id_tag_hash.add_argument("--config", required=True, help="the TOML configuration file")
    id_tag_hash.add_argument("tags", nargs="+", metavar="TAG")
    args = parser.parse_args(argv)

    if args.command == "check-config":
        config = _load(args.file)
        if config is None:
            return EXIT_CONFIG
        print(
            f"{args.file}: OK ({len(config.connectors)} connector(s), station {config.station.id})"
        )
        return 0
    if args.command == "run":
        config = _load(args.config)
        if config is None:
            return EXIT_CONFIG
        setup_logging(config)
        return asyncio.run(run_daemon(config))
    if args.command == "id-tag-hash":
        config = _load(args.config)
        if config is None:
            return EXIT_CONFIG
        return _print_logged_id_tags(config, args.tags)
    if args.command == "demo":
        from .demo import run_demo

        return asyncio.run(run_demo(speed=args.speed))
    parser.error(f"unknown command {args.command}")
    return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
