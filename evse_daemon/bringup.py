"""Commissioning: exercise one part of a charger on its configured drivers and say what it sees.

``evsectl bringup PART [N]`` asks the running daemon (which owns the hardware) to run one of
these. They are for a field technician commissioning a charger, so each one reports what it
measured rather than pass/fail only, and each refuses while a session runs anywhere on the
charger. A connector under test is handed over by the controller (status Unavailable, outputs
left to this code, feedback checks paused) and handed back with every output driven afresh;
a fault the test provoked (a welded contactor) is then seen by the controller as usual.

Safety: the contactor is never switched with a vehicle or test box connected (the pilot must
read A under +12 V), is closed for half a second at most, and always ends open.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from drivers.protocols import CpState, MeterError, ReaderError

from .iec61851 import duty_percent_for_current

if TYPE_CHECKING:
    from .app import App

PARTS = ("pilot", "contactor", "lock", "meter", "rfid", "rcd")
PILOT_SETTLE_S = 0.3
PILOT_SAMPLES = 5
FEEDBACK_WAIT_S = 1.0
CONTACTOR_HOLD_S = 0.5
METER_READS = 3
RFID_WAIT_DEFAULT_S = 15.0
RFID_WAIT_MAX_S = 120.0


class BringupRefused(Exception):
    """The test cannot run now; the message says why, for the technician."""


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 1)


class Bringup:
    """The bring-up tests of one daemon run."""

    def __init__(self, app: App) -> None:
        self._app = app
        self._busy = False

    async def run(
        self, part: str, connector_id: int | None, wait_s: float | None
    ) -> dict[str, Any]:
        if part not in PARTS:
            raise BringupRefused(f"unknown part {part!r}; one of: {', '.join(PARTS)}")
        if self._busy:
            raise BringupRefused("another bring-up test is running")
        self._refuse_during_sessions()
        self._busy = True
        try:
            if part == "rfid":
                return await self._rfid(wait_s)
            cid = self._connector(connector_id)
            tests: dict[str, Callable[[int], Awaitable[dict[str, Any]]]] = {
                "pilot": self._pilot,
                "contactor": self._contactor,
                "lock": self._lock,
                "meter": self._meter,
                "rcd": self._rcd,
            }
            result = await tests[part](cid)
            return {"part": part, "connector": cid, **result}
        finally:
            self._busy = False

    # --- preconditions ----------------------------------------------------------------------

    def _refuse_during_sessions(self) -> None:
        busy = [c.connector_id for c in self._app.charger.connectors.values() if not c.idle]
        if busy:
            listed = ", ".join(str(c) for c in busy)
            raise BringupRefused(f"a session is running or authorized on connector {listed}")

    def _connector(self, connector_id: int | None) -> int:
        connectors = self._app.charger.connectors
        if connector_id is None:
            if len(connectors) > 1:
                raise BringupRefused("this charger has several connectors: give its number")
            return next(iter(connectors))
        if connector_id not in connectors:
            raise BringupRefused(f"no connector {connector_id}")
        return connector_id

    @contextlib.asynccontextmanager
    async def _commissioning(self, connector_id: int) -> AsyncIterator[None]:
        app = self._app
        if not app.set_commissioning(connector_id, True):
            raise BringupRefused(f"connector {connector_id} is in use")
        try:
            yield
        finally:
            hw = app.hardware.connectors[connector_id]
            hw.contactor.set_closed(False)
            hw.pilot.set_state_f()
            app.set_commissioning(connector_id, False)

    # --- the tests --------------------------------------------------------------------------

    async def _sample_pilot(self, connector_id: int) -> dict[str, Any]:
        pilot = self._app.hardware.connectors[connector_id].pilot
        await asyncio.sleep(PILOT_SETTLE_S)
        readings = []
        for _ in range(PILOT_SAMPLES):
            readings.append(pilot.read())
            await asyncio.sleep(0.04)
        return {
            "output": pilot.output.value,
            "duty_percent": round(pilot.duty_percent, 4),
            "states": [r.state.value for r in readings],
            "diode_ok": all(r.diode_ok for r in readings),
        }

    async def _pilot(self, connector_id: int) -> dict[str, Any]:
        """State F, x1, then PWM offering 6 A and the connector's rating: what the CP reads
        at each (no EV: F, A, A, A; an EV or test box in B: F, B, B/C, B/C)."""
        hw = self._app.hardware.connectors[connector_id]
        pilot = hw.pilot
        rating_a = self._app.charger.connector(connector_id).max_current_a
        steps: list[tuple[str, Callable[[], None]]] = [
            ("state F", pilot.set_state_f),
            ("x1 (+12 V)", pilot.set_steady),
            (
                "PWM 6 A",
                lambda: pilot.set_pwm(duty_percent_for_current(6.0, pilot.duty_resolution_percent)),
            ),
            (
                f"PWM {rating_a:g} A",
                lambda: pilot.set_pwm(
                    duty_percent_for_current(rating_a, pilot.duty_resolution_percent)
                ),
            ),
        ]
        results = []
        async with self._commissioning(connector_id):
            for name, drive in steps:
                drive()
                results.append({"step": name, **await self._sample_pilot(connector_id)})
        # What the technician reads is the point; the test itself fails only if the pilot
        # cannot see its own state F (the CP sensing or the -12 V stage is broken).
        sees_f = all(state == "F" for state in results[0]["states"])
        return {
            "duty_resolution_percent": pilot.duty_resolution_percent,
            "steps": results,
            "passed": sees_f,
            "verdict": "ok" if sees_f else "FAILED: the CP does not read F under state F",
        }

    async def _wait_feedback(self, connector_id: int, closed: bool) -> tuple[bool | None, float]:
        contactor = self._app.hardware.connectors[connector_id].contactor
        started = time.monotonic()
        deadline = started + FEEDBACK_WAIT_S
        feedback = contactor.feedback_closed()
        while feedback is not None and feedback != closed and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
            feedback = contactor.feedback_closed()
        return feedback, time.monotonic() - started

    async def _contactor(self, connector_id: int) -> dict[str, Any]:
        hw = self._app.hardware.connectors[connector_id]
        async with self._commissioning(connector_id):
            hw.pilot.set_steady()
            await asyncio.sleep(PILOT_SETTLE_S)
            state = hw.pilot.read().state
            if state is not CpState.A:
                raise BringupRefused(
                    f"the pilot reads {state.value}, not A: a vehicle or test box is connected; "
                    "the contactor is only switched with nothing plugged in"
                )
            hw.pilot.set_state_f()
            before = hw.contactor.feedback_closed()
            hw.contactor.set_closed(True)
            closed_feedback, close_s = await self._wait_feedback(connector_id, True)
            await asyncio.sleep(max(0.0, CONTACTOR_HOLD_S - close_s))
            hw.contactor.set_closed(False)
            open_feedback, open_s = await self._wait_feedback(connector_id, False)
        if before is None:
            verdict = "no feedback contact configured: check the relay by ear or meter"
        elif before:
            verdict = "WELDED: the feedback reads closed while the contactor is commanded open"
        elif closed_feedback is not True:
            verdict = f"FAILED TO CLOSE: no feedback within {FEEDBACK_WAIT_S:g} s"
        elif open_feedback is not False:
            verdict = f"WELDED: still closed {FEEDBACK_WAIT_S:g} s after the open command"
        else:
            verdict = "ok"
        return {
            "passed": verdict == "ok" or before is None,
            "feedback_before": before,
            "close_ms": _ms(close_s) if closed_feedback is True else None,
            "open_ms": _ms(open_s) if open_feedback is False else None,
            "verdict": verdict,
        }

    async def _lock(self, connector_id: int) -> dict[str, Any]:
        lock = self._app.hardware.connectors[connector_id].lock
        if lock is None:
            raise BringupRefused(f"connector {connector_id} has no lock configured")
        async with self._commissioning(connector_id):
            started = time.monotonic()
            locked = await lock.lock()
            lock_s = time.monotonic() - started
            started = time.monotonic()
            unlocked = await lock.unlock()
            unlock_s = time.monotonic() - started
        return {
            "lock": {"ok": locked, "ms": _ms(lock_s)},
            "unlock": {"ok": unlocked, "ms": _ms(unlock_s)},
            "feedback_locked_now": lock.locked,
            "passed": locked and unlocked,
            "verdict": "ok" if locked and unlocked else "FAILED: see which step",
        }

    async def _meter(self, connector_id: int) -> dict[str, Any]:
        meter = self._app.hardware.connectors[connector_id].meter
        reads: list[dict[str, Any]] = []
        for index in range(METER_READS):
            if index:
                await asyncio.sleep(0.5)
            started = time.monotonic()
            try:
                reading = await meter.read()
            except (MeterError, TimeoutError) as exc:
                reads.append({"error": str(exc) or type(exc).__name__})
                continue
            reads.append(
                {
                    "ms": _ms(time.monotonic() - started),
                    "energy_import_wh": reading.energy_import_wh,
                    "power_w": reading.power_w,
                    "current_a": list(reading.current_a),
                    "voltage_v": list(reading.voltage_v),
                }
            )
        failed = sum("error" in r for r in reads)
        verdict = "ok" if not failed else f"FAILED: {failed} of {METER_READS} reads"
        return {
            "driver": self._app.hardware.connectors[connector_id].drivers.get("meter"),
            "reads": reads,
            "passed": not failed,
            "verdict": verdict,
        }

    async def _rcd(self, connector_id: int) -> dict[str, Any]:
        rcd = self._app.hardware.connectors[connector_id].rcd
        if rcd is None:
            raise BringupRefused(f"connector {connector_id} has no RCD input configured")
        tripped_before = rcd.tripped()
        self_test = getattr(rcd, "self_test", None)
        result: dict[str, Any] = {"tripped": tripped_before}
        if self_test is None:
            result["self_test"] = "not available on this hardware"
            result["passed"] = not tripped_before
            result["verdict"] = "TRIPPED" if tripped_before else "ok (input only)"
            return result
        async with self._commissioning(connector_id):
            started = time.monotonic()
            passed = bool(await self_test())
            result["self_test"] = {"passed": passed, "ms": _ms(time.monotonic() - started)}
        result["tripped_after"] = rcd.tripped()
        result["passed"] = passed and not result["tripped_after"]
        result["verdict"] = "ok" if result["passed"] else "FAILED"
        return result

    async def _rfid(self, wait_s: float | None) -> dict[str, Any]:
        app = self._app
        if app.hardware.reader is None:
            raise BringupRefused("no card reader configured ([rfid])")
        wait_s = RFID_WAIT_DEFAULT_S if wait_s is None else min(wait_s, RFID_WAIT_MAX_S)
        card: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        app.capture_next_card(card)
        try:
            async with asyncio.timeout(wait_s):
                id_tag = await card
        except TimeoutError:
            return {
                "part": "rfid",
                "id_tag": None,
                "reader_fault": app.charger.reader_fault,
                "passed": False,
                "verdict": f"no card within {wait_s:g} s",
            }
        except ReaderError as exc:
            return {"part": "rfid", "id_tag": None, "passed": False, "verdict": f"FAILED: {exc}"}
        finally:
            app.capture_next_card(None)
        return {"part": "rfid", "id_tag": id_tag, "passed": True, "verdict": "ok"}
