"""``evse-daemon demo``: a local CSMS, the daemon on mock drivers, and a narrated session.

Everything here is the real thing except the hardware: the CSMS is built on ``ocpp`` and
listens on 127.0.0.1, the daemon is the same App that runs in the field, and the bench
commands go through the control socket exactly as ``evsectl`` sends them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ocpp.v16 import call

from .app import App
from .bench.csms import BenchCsms
from .config import load_config
from .control import request_async
from .hardware import build_hardware

DEMO_TAG = "04A2B3C4"

CONFIG = """\
[station]
id = "CP-DEMO-1"
vendor = "ExampleVendor"
model = "PiCharger"

[ocpp]
version = "1.6"
csms_url = "{url}"
reconnect_min_s = 0.2
reconnect_max_s = 2.0

[ocpp.config]
HeartbeatInterval = 300
MeterValueSampleInterval = {sample_s}
MeterValuesSampledData = "Energy.Active.Import.Register,Power.Active.Import,Current.Offered"

[storage]
state_dir = "{state}"

[control]
socket = "{socket}"

[rfid]
driver = "mock"

[[connector]]
id = 1
max_current_a = 16
phases = 3
pilot = {{ driver = "mock" }}
contactor = {{ driver = "mock" }}
meter = {{ driver = "mock" }}
lock = {{ driver = "mock" }}
"""

# Fields that make a line long without telling a reader anything.
_QUIET_FIELDS = {"timestamp", "currentTime", "meterValue", "chargePointVendor"}


class Timeline:
    def __init__(self) -> None:
        self._t0 = time.monotonic()

    def say(self, who: str, text: str) -> None:
        print(f"{time.monotonic() - self._t0:7.2f}s  {who:<8} {text}", flush=True)

    def ocpp(self, direction: str, action: str, payload: dict[str, Any]) -> None:
        arrow = "→ CSMS" if direction == "in" else "← CSMS"
        if action == "MeterValues" and direction == "in":
            values = {
                v["measurand"]: f"{v['value']} {v['unit']}"
                for mv in payload.get("meterValue", [])
                for v in mv.get("sampledValue", [])
            }
            text = ", ".join(f"{k.split('.')[0]} {v}" for k, v in values.items())
            self.say("ocpp", f"{arrow} MeterValues  {text}")
            return
        shown = {k: v for k, v in payload.items() if k not in _QUIET_FIELDS}
        self.say("ocpp", f"{arrow} {action}  {json.dumps(shown, default=str)}")

    def daemon(self, kind: str, what: str, data: dict[str, Any]) -> None:
        if kind == "hw" and what == "pilot":
            duty = data["duty_percent"]
            extra = f" {duty:.2f} % duty" if data["output"] == "pwm" else ""
            self.say("pilot", f"connector {data['connector']}: {data['output']}{extra}")
        elif kind == "hw" and what == "contactor":
            state = "CLOSED" if data["closed"] else "open"
            self.say("relay", f"connector {data['connector']}: contactor {state}")
        elif kind == "status":
            self.say("status", f"connector {data['connector']}: {what}")
        elif kind == "card":
            self.say("reader", f"card {what} presented")


async def _wait(csms: BenchCsms, action: str, after: int, timeout_s: float = 15.0) -> None:
    await csms.wait_for(action, after=after, timeout_s=timeout_s)


async def run_demo(speed: float = 1.0) -> int:
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    timeline = Timeline()
    sample_s = max(1, round(2 / speed))
    with tempfile.TemporaryDirectory(prefix="evse-demo-") as tmp:
        csms = BenchCsms(on_message=timeline.ocpp)
        url = await csms.start()
        timeline.say("demo", f"CSMS listening on {url}")
        config_path = Path(tmp) / "evse.toml"
        socket_path = str(Path(tmp) / "control.sock")
        config_path.write_text(
            CONFIG.format(url=url, sample_s=sample_s, state=Path(tmp) / "state", socket=socket_path)
        )
        config = load_config(config_path)
        hardware = build_hardware(config)
        app = App(config, hardware, narrator=timeline.daemon)
        run = asyncio.create_task(app.run())
        try:
            await _session(csms, app, socket_path, timeline, sample_s)
        except (TimeoutError, RuntimeError) as exc:
            timeline.say("demo", f"FAILED: {exc}")
            return 1
        finally:
            app.request_stop()
            await asyncio.wait_for(run, 15)
            await hardware.shutdown()
            await csms.stop()
    timeline.say("demo", "done")
    return 0


async def _evsectl(socket_path: str, timeline: Timeline, *words: str) -> Any:
    timeline.say("evsectl", " ".join(words))
    command: dict[str, Any] = {"cmd": words[0]}
    if words[0] in ("plug", "unplug"):
        command["connector"] = int(words[1])
    elif words[0] == "swipe":
        command["tag"] = words[1]
    reply = await request_async(socket_path, command)
    if not reply.get("ok"):
        raise RuntimeError(f"evsectl {' '.join(words)}: {reply.get('error')}")
    return reply.get("result")


async def _session(
    csms: BenchCsms, app: App, socket_path: str, timeline: Timeline, sample_s: int
) -> None:
    await app.started.wait()
    await csms.wait_for("StatusNotification", lambda p: p["connectorId"] == 1, timeout_s=15)
    timeline.say("demo", "--- the driver plugs in the car")
    mark = csms.mark()
    await _evsectl(socket_path, timeline, "plug", "1")
    await csms.wait_for("StatusNotification", lambda p: p["status"] == "Preparing", after=mark)
    timeline.say("demo", "--- and presents a card")
    await _evsectl(socket_path, timeline, "swipe", DEMO_TAG)
    await _wait(csms, "StartTransaction", mark)
    await csms.wait_for("StatusNotification", lambda p: p["status"] == "Charging", after=mark)
    timeline.say("demo", f"--- charging; meter values every {sample_s} s")
    for _ in range(2):
        await _wait(csms, "MeterValues", csms.mark(), timeout_s=sample_s * 3 + 5)
    status = await _evsectl(socket_path, timeline, "status")
    connector = status["connectors"][0]
    timeline.say(
        "status",
        f"{connector['status']}, pilot {connector['pilot_state']}, "
        f"{connector['offered_current_a']} A offered, {connector['power_w']} W, "
        f"{connector['energy_wh']} Wh on the meter",
    )
    timeline.say("demo", "--- the operator stops the session from the CSMS")
    transaction_id = max(csms.transaction_ids)
    await csms.call(call.RemoteStopTransaction(transaction_id=transaction_id))
    await _wait(csms, "StopTransaction", mark)
    await csms.wait_for("StatusNotification", lambda p: p["status"] == "Finishing", after=mark)
    timeline.say("demo", "--- the driver unplugs")
    await _evsectl(socket_path, timeline, "unplug", "1")
    await csms.wait_for("StatusNotification", lambda p: p["status"] == "Available", after=mark)
    start = csms.messages("StartTransaction")[-1].payload
    stop = csms.messages("StopTransaction")[-1].payload
    delivered = stop["meterStop"] - start["meterStart"]
    timeline.say(
        "demo",
        f"session {transaction_id}: {delivered} Wh delivered "
        f"(meter {start['meterStart']} → {stop['meterStop']} Wh), reason {stop['reason']}",
    )
