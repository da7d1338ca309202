"""The charger's controller: one state machine per connector (sans-I/O).

Fed with pilot readings, faults, authorizations and commands, and an injected clock; it
answers with actions (pilot, contactor, lock commands) and events (OCPP statuses, transaction
start and stop) collected in an outbox that the app drains after every call.

The state is *facts* (what the EV presents, which faults are active, who is authorized, the
transaction); the outputs (pilot, contactor, status) are derived from the facts by one
function, ``Connector._reconcile``, after every input. Deriving rather than toggling keeps the
safety outputs right whatever order events arrive in: the contactor is closed only while every
condition for it holds at that instant.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from drivers.protocols import CpState, MeterReading, PilotOutput, PilotReading

from .clock import Clock
from .iec61851 import (
    CONTACTOR_FEEDBACK_TIMEOUT_S,
    ENERGY_REQUEST_STATES,
    EV_PRESENT_STATES,
    MIN_CURRENT_A,
    STATE_F_AFTER_FAULT_S,
    UNEXPECTED_F_FAULT_S,
    X1_OPEN_UNDER_LOAD_S,
    duty_percent_for_current,
)
from .logfields import IdTag

log = logging.getLogger(__name__)


class Status(enum.StrEnum):
    """OCPP 1.6 ChargePointStatus."""

    AVAILABLE = "Available"
    PREPARING = "Preparing"
    CHARGING = "Charging"
    SUSPENDED_EV = "SuspendedEV"
    SUSPENDED_EVSE = "SuspendedEVSE"
    FINISHING = "Finishing"
    RESERVED = "Reserved"
    UNAVAILABLE = "Unavailable"
    FAULTED = "Faulted"


class ErrorCode(enum.StrEnum):
    """OCPP 1.6 ChargePointErrorCode."""

    NO_ERROR = "NoError"
    CONNECTOR_LOCK_FAILURE = "ConnectorLockFailure"
    EV_COMMUNICATION_ERROR = "EVCommunicationError"
    GROUND_FAILURE = "GroundFailure"
    HIGH_TEMPERATURE = "HighTemperature"
    INTERNAL_ERROR = "InternalError"
    # Connector 0 only: the CSMS's verdict on an idTag contradicts the local list (§3.5.2).
    LOCAL_LIST_CONFLICT = "LocalListConflict"
    OTHER_ERROR = "OtherError"
    POWER_METER_FAILURE = "PowerMeterFailure"
    POWER_SWITCH_FAILURE = "PowerSwitchFailure"
    READER_FAILURE = "ReaderFailure"


class StopReason(enum.StrEnum):
    """OCPP 1.6 StopTransaction reason."""

    DE_AUTHORIZED = "DeAuthorized"
    EMERGENCY_STOP = "EmergencyStop"
    EV_DISCONNECTED = "EVDisconnected"
    HARD_RESET = "HardReset"
    LOCAL = "Local"
    OTHER = "Other"
    POWER_LOSS = "PowerLoss"
    REBOOT = "Reboot"
    REMOTE = "Remote"
    SOFT_RESET = "SoftReset"
    UNLOCK_COMMAND = "UnlockCommand"


class Fault(enum.StrEnum):
    """Hardware faults, by the names the bench and the logs use."""

    RCD = "rcd"
    WELD = "weld"
    CONTACTOR_CLOSE = "contactor-close"
    PILOT_SHORT = "pilot-short"
    DIODE = "diode"
    METER = "meter"
    LOCK = "lock"
    OVERTEMP = "overtemp"
    READER = "reader"
    RCD_SELF_TEST = "rcd-self-test"


# Order matters: the first active fault names the error code reported.
FAULT_REPORTS: dict[Fault, tuple[ErrorCode, str]] = {
    Fault.RCD: (ErrorCode.GROUND_FAILURE, "residual current device tripped"),
    Fault.WELD: (ErrorCode.POWER_SWITCH_FAILURE, "contactor welded"),
    Fault.CONTACTOR_CLOSE: (ErrorCode.POWER_SWITCH_FAILURE, "contactor failed to close"),
    Fault.PILOT_SHORT: (ErrorCode.OTHER_ERROR, "control pilot shorted (state E)"),
    Fault.DIODE: (ErrorCode.OTHER_ERROR, "EV diode missing"),
    Fault.OVERTEMP: (ErrorCode.HIGH_TEMPERATURE, "over temperature"),
    Fault.METER: (ErrorCode.POWER_METER_FAILURE, "energy meter not answering"),
    Fault.LOCK: (ErrorCode.CONNECTOR_LOCK_FAILURE, "cable lock failed"),
    Fault.RCD_SELF_TEST: (ErrorCode.GROUND_FAILURE, "residual current device failed its self-test"),
}

VENDOR_ERROR_CODES: dict[Fault, str] = {
    Fault.RCD_SELF_TEST: "RcdSelfTestFailed",
    Fault.PILOT_SHORT: "PilotShort",
    Fault.DIODE: "DiodeMissing",
    Fault.CONTACTOR_CLOSE: "ContactorNoClose",
}


# ---------------------------------------------------------------------------------------
# Outputs


@dataclass(frozen=True, slots=True)
class SetPilot:
    connector_id: int
    output: PilotOutput
    duty_percent: float = 0.0


@dataclass(frozen=True, slots=True)
class SetContactor:
    connector_id: int
    closed: bool


@dataclass(frozen=True, slots=True)
class SetLock:
    connector_id: int
    locked: bool


@dataclass(frozen=True, slots=True)
class StatusChanged:
    connector_id: int  # 0 = the charge point as a whole
    status: Status
    error_code: ErrorCode
    timestamp: datetime
    info: str | None = None
    vendor_error_code: str | None = None


@dataclass(frozen=True, slots=True)
class TransactionStarted:
    connector_id: int
    local_id: int
    id_tag: str
    timestamp: datetime
    remote: bool


@dataclass(frozen=True, slots=True)
class TransactionStopped:
    connector_id: int
    local_id: int
    reason: StopReason
    timestamp: datetime
    id_tag: str | None  # the tag that stopped it, when a card stopped it


@dataclass(frozen=True, slots=True)
class AvailabilityChanged:
    connector_id: int
    operative: bool


@dataclass(frozen=True, slots=True)
class RunRcdSelfTest:
    """Exercise the connector's RCD through its test input; answer with rcd_self_tested."""

    connector_id: int


@dataclass(frozen=True, slots=True)
class CableHoldChanged:
    """A cable is now held locked for ``held_for`` (idTag, parentIdTag) after a DeAuthorized
    stop, or no longer (None). Persisted, so that a restart keeps the hold."""

    connector_id: int
    held_for: tuple[str, str | None] | None


@dataclass(frozen=True, slots=True)
class AuthorizationExpired:
    connector_id: int
    id_tag: str


Action = (
    SetPilot
    | SetContactor
    | SetLock
    | StatusChanged
    | TransactionStarted
    | TransactionStopped
    | AvailabilityChanged
    | AuthorizationExpired
    | CableHoldChanged
    | RunRcdSelfTest
)


# ---------------------------------------------------------------------------------------
# Facts


@dataclass
class ChargerSettings:
    """The OCPP configuration values the controller obeys; the app keeps them current."""

    connection_timeout_s: float = 60.0
    stop_tx_on_ev_side_disconnect: bool = True
    unlock_on_ev_side_disconnect: bool = True
    stop_tx_on_invalid_id: bool = True
    # MaxEnergyOnInvalidId: with StopTransactionOnInvalidId=false, the energy a transaction
    # whose idTag the CSMS rejected may still deliver so the EV can drive away (errata
    # 3.17). Counted from the transaction's meterStart: a transaction that already took
    # more while offline gets nothing further.
    max_energy_on_invalid_id_wh: float = 0.0


@dataclass
class Authorization:
    id_tag: str
    remote: bool
    expires_at: float  # monotonic; only matters until an EV is connected
    parent_id_tag: str | None = None


@dataclass
class Transaction:
    local_id: int
    id_tag: str
    started_at: datetime
    remote: bool
    parent_id_tag: str | None = None
    # The meter's register when the transaction started (None: no reading yet).
    meter_start_wh: float | None = None
    # True once the CSMS said the idTag is not valid and StopTransactionOnInvalidId=false:
    # the transaction goes on, and energy is offered only up to MaxEnergyOnInvalidId.
    id_tag_rejected: bool = False
    ev_side_disconnected: bool = False


@dataclass(frozen=True, slots=True)
class ConnectorView:
    """A read-only snapshot of one connector, for status displays and the OCPP adapter."""

    connector_id: int
    status: Status
    error_code: ErrorCode
    info: str | None
    cp_state: CpState
    pilot_output: PilotOutput
    duty_percent: float
    contactor_closed: bool
    offered_current_a: float
    max_current_a: float
    phases: int
    operative: bool
    scheduled_operative: bool | None
    faults: tuple[str, ...]
    transaction_local_id: int | None
    transaction_id_tag: str | None
    authorized_id_tag: str | None
    meter: MeterReading | None
    maintenance: bool = False


class Connector:
    def __init__(
        self,
        connector_id: int,
        *,
        max_current_a: float,
        phases: int,
        pwm_resolution_percent: float,
        has_lock: bool,
        clock: Clock,
        settings: ChargerSettings,
        outbox: list[Action],
        next_local_id: Callable[[], int],
        has_rcd_self_test: bool = False,
    ) -> None:
        self.connector_id = connector_id
        self.has_rcd_self_test = has_rcd_self_test
        # The RCD passed its self-test for the EV now connected (always True without one).
        self.rcd_tested = not has_rcd_self_test
        # The lock's feedback confirmed the cable locked since the last lock command: no
        # energy is offered on a socket before that (always True without a lock).
        self.lock_confirmed = not has_lock
        self._locking = False  # a lock command is out, its feedback not yet in
        self._feedback: bool | None = None  # the contactor's auxiliary contact, last read
        self.max_current_a = max_current_a
        self.phases = phases
        self.has_lock = has_lock
        self._pwm_resolution = pwm_resolution_percent
        self._clock = clock
        self._settings = settings
        self._outbox = outbox
        self._next_local_id = next_local_id

        self.cp_state = CpState.A
        self.faults: set[Fault] = set()
        self.operative = True
        self.scheduled_operative: bool | None = None
        # Held out of service for a firmware update (not persisted, unlike operative: the
        # update itself is, and holds the connector again after a restart).
        self.maintenance = False
        self.auth: Authorization | None = None
        self.tx: Transaction | None = None
        self.finishing = False
        # The EV side was unplugged while the socket's lock held the cable: the cable is
        # still in the socket until the lock lets it go (there is no PP sensing yet).
        self.cable_held = False
        # A transaction stopped DeAuthorized keeps the cable locked until its owner presents
        # the idTag again, or one with the same parent (§3.5.4): (idTag, parentIdTag).
        self.held_for: tuple[str, str | None] | None = None
        self.limit_a = max_current_a
        self.meter: MeterReading | None = None
        # A technician is exercising the hardware (evsectl bringup): the controller leaves
        # the outputs to the bring-up code and offers no service on this connector.
        self.commissioning = False

        # Derived outputs, as last commanded. None until the first reconcile so that the
        # first one always drives the hardware.
        self._pilot: tuple[PilotOutput, float] | None = None
        self._contactor: bool | None = None
        self._status: tuple[Status, ErrorCode, str | None, str | None] | None = None
        self._pwm_off_since: float | None = None
        self._contactor_changed_at = clock.monotonic()
        self._feedback_mismatch_since: float | None = None
        self._unexpected_f_since: float | None = None
        self._faulted_since: float | None = None
        # The cable may be unlocked once the contactor is open, never before.
        self._unlock_pending = False

    # -- derived -----------------------------------------------------------------------

    @property
    def ev_present(self) -> bool:
        return self.cp_state in EV_PRESENT_STATES

    @property
    def in_service(self) -> bool:
        """Open to new sessions: operative, and not held for maintenance."""
        return self.operative and not self.maintenance

    @property
    def blocking_fault(self) -> Fault | None:
        for fault in FAULT_REPORTS:
            if fault in self.faults:
                return fault
        return None

    @property
    def offered_current_a(self) -> float:
        return min(self.max_current_a, self.limit_a)

    @property
    def pilot_output(self) -> PilotOutput:
        return self._pilot[0] if self._pilot else PilotOutput.STATE_F

    @property
    def contactor_closed(self) -> bool:
        return bool(self._contactor)

    @property
    def status(self) -> Status:
        return self._status[0] if self._status else Status.UNAVAILABLE

    def _energy_offered(self) -> bool:
        tx = self.tx
        return (
            tx is not None
            and self.rcd_tested
            and self.lock_confirmed
            and self._energy_allowed(tx)
            and self.ev_present
            and self.offered_current_a >= MIN_CURRENT_A
        )

    def _energy_allowed(self, tx: Transaction) -> bool:
        if not tx.id_tag_rejected:
            return True
        allowance_wh = self._settings.max_energy_on_invalid_id_wh
        if allowance_wh <= 0 or tx.meter_start_wh is None or self.meter is None:
            return False  # without a reading the allowance cannot be kept: none is given
        return self.meter.energy_import_wh - tx.meter_start_wh < allowance_wh

    def _desired_pilot(self, now: float) -> tuple[PilotOutput, float]:
        if self.commissioning:
            return (PilotOutput.STATE_F, 0.0)
        if self.blocking_fault is not None:
            # State F for at least 300 ms (IEC 61851-1 table A.5) tells the EV to stop; then
            # x1, which offers no energy but lets the CP be read again: under -12 V neither a
            # pilot fault's end nor the EV leaving (which ends its transaction and frees the
            # cable) could ever be seen. The contactor stays open while the fault lasts.
            if (
                self._faulted_since is not None
                and now - self._faulted_since >= STATE_F_AFTER_FAULT_S
            ):
                return (PilotOutput.STEADY, 0.0)
            return (PilotOutput.STATE_F, 0.0)
        if not self.in_service and self.tx is None and not self._contactor:
            # (With the contactor still closed the EV gets x1 and its 6 s to stop drawing.)
            return (PilotOutput.STATE_F, 0.0)
        if self._energy_offered():
            duty = duty_percent_for_current(self.offered_current_a, self._pwm_resolution)
            return (PilotOutput.PWM, duty)
        return (PilotOutput.STEADY, 0.0)

    def _desired_contactor(self, pilot: PilotOutput, now: float) -> bool:
        if self.commissioning:
            return False
        if self.blocking_fault is not None or self._unexpected_f_since is not None:
            return False
        if pilot is PilotOutput.STATE_F:
            return False  # under -12 V the EV cannot be seen
        if self.cp_state not in ENERGY_REQUEST_STATES:
            return False  # C→B, unplug, E, F: open at once
        if pilot is PilotOutput.PWM:
            return True
        # PWM was switched off while the EV still asks for energy: it has 6 s to stop
        # drawing before the contactor opens under load.
        return (
            bool(self._contactor)
            and self._pwm_off_since is not None
            and now - self._pwm_off_since < X1_OPEN_UNDER_LOAD_S
        )

    def _desired_status(self) -> tuple[Status, ErrorCode, str | None, str | None]:
        if self.commissioning:
            return (Status.UNAVAILABLE, ErrorCode.NO_ERROR, "commissioning", None)
        fault = self.blocking_fault
        if fault is not None:
            code, info = FAULT_REPORTS[fault]
            return (Status.FAULTED, code, info, VENDOR_ERROR_CODES.get(fault))
        if self.tx is None and not self.in_service:
            return (Status.UNAVAILABLE, ErrorCode.NO_ERROR, None, None)
        tx = self.tx
        if tx is not None:
            if not self.ev_present:
                return (Status.SUSPENDED_EV, ErrorCode.NO_ERROR, "EV side disconnected", None)
            if not self._energy_offered():
                return (Status.SUSPENDED_EVSE, ErrorCode.NO_ERROR, None, None)
            if self.cp_state in ENERGY_REQUEST_STATES:
                return (Status.CHARGING, ErrorCode.NO_ERROR, None, None)
            return (Status.SUSPENDED_EV, ErrorCode.NO_ERROR, None, None)
        if self.finishing and (self.ev_present or self.cable_held):
            return (Status.FINISHING, ErrorCode.NO_ERROR, None, None)
        if self.ev_present or self.auth is not None:
            return (Status.PREPARING, ErrorCode.NO_ERROR, None, None)
        return (Status.AVAILABLE, ErrorCode.NO_ERROR, None, None)

    def reconcile(self) -> None:
        """Bring pilot, contactor and status in line with the facts."""
        now = self._clock.monotonic()
        if not self.ev_present and not self.cable_held:
            self.finishing = False
        if self.blocking_fault is None:
            self._faulted_since = None
        elif self._faulted_since is None:
            self._faulted_since = now
        pilot = self._desired_pilot(now)
        if pilot[0] is PilotOutput.PWM:
            self._pwm_off_since = None
        elif self._pwm_off_since is None:
            self._pwm_off_since = now
        # Open before changing the pilot, close after it: the contactor never carries
        # current while the pilot does not offer it, even for one step.
        closed = self._desired_contactor(pilot[0], now)
        if not closed and self._contactor is not False:
            self._set_contactor(False, now)
            pilot = self._desired_pilot(now)
        if pilot[0] is PilotOutput.STATE_F and self.cp_state in ENERGY_REQUEST_STATES:
            # Under -12 V the EV cannot be seen and sees no offer: once the pilot is released
            # it must ask for energy again (B → C) before the contactor closes.
            self.cp_state = CpState.B
        if pilot != self._pilot:
            self._pilot = pilot
            self._outbox.append(SetPilot(self.connector_id, pilot[0], pilot[1]))
        if closed and self._contactor is not True:
            self._set_contactor(True, now)
        # Unlock only once the auxiliary contact (where there is one) says the contacts are
        # open: a welded contactor must not leave a live socket unlocked.
        if self._unlock_pending and self._contactor is False and self._feedback is not True:
            self._unlock_pending = False
            self._outbox.append(SetLock(self.connector_id, False))
        status = self._desired_status()
        if status != self._status:
            self._status = status
            self._outbox.append(
                StatusChanged(
                    self.connector_id,
                    status[0],
                    status[1],
                    self._clock.utc_now(),
                    info=status[2],
                    vendor_error_code=status[3],
                )
            )

    def _set_contactor(self, closed: bool, now: float) -> None:
        self._contactor = closed
        self._contactor_changed_at = now
        self._feedback_mismatch_since = None
        self._outbox.append(SetContactor(self.connector_id, closed))

    # -- inputs ------------------------------------------------------------------------

    def on_pilot(self, reading: PilotReading) -> None:
        driving_f = self.pilot_output is PilotOutput.STATE_F
        state = reading.state
        if state is CpState.F and driving_f:
            # We drive -12 V ourselves: the reading says nothing about the EV. Keep the last
            # known EV state until the pilot is released.
            return
        if state is CpState.F:
            # -12 V while we drive +12 V or PWM: a reading sampled before our last pilot change
            # took effect, or a fault. The contactor opens at once; it becomes a fault only if
            # it lasts.
            now = self._clock.monotonic()
            if self._unexpected_f_since is None:
                self._unexpected_f_since = now
            if now - self._unexpected_f_since >= UNEXPECTED_F_FAULT_S:
                self.faults.add(Fault.PILOT_SHORT)
            return
        self._unexpected_f_since = None
        previous = self.cp_state
        if state is CpState.E:
            self.faults.add(Fault.PILOT_SHORT)
        else:
            self.faults.discard(Fault.PILOT_SHORT)
            self.cp_state = state
        # The diode check only means something while PWM runs: with steady +12 V there is
        # no negative plateau to measure. A shorted CP (E) has none either: not the diode.
        if state is not CpState.E and (
            self.pilot_output is PilotOutput.PWM or not reading.diode_ok
        ):
            if reading.diode_ok:
                self.faults.discard(Fault.DIODE)
            elif self.ev_present:
                self.faults.add(Fault.DIODE)
        if not self.ev_present:
            self.faults.discard(Fault.DIODE)
            self.faults.discard(Fault.CONTACTOR_CLOSE)  # latched until the EV leaves
            self.faults.discard(Fault.RCD_SELF_TEST)  # tested again for the next EV
        # The safety output first: open now, before any session event this reading causes.
        now = self._clock.monotonic()
        if self._contactor and not self._desired_contactor(self.pilot_output, now):
            self._set_contactor(False, now)
        if previous in EV_PRESENT_STATES and self.cp_state is CpState.A:
            self._on_ev_disconnected()
        elif previous is CpState.A and self.ev_present:
            self.cable_held = False
            if self.has_rcd_self_test:
                # Before any energy for this EV: the RCD must trip on its test input.
                self.rcd_tested = False
                self._outbox.append(RunRcdSelfTest(self.connector_id))
            self._on_ev_connected()

    def _on_ev_connected(self) -> None:
        tx = self.tx
        if tx is not None and tx.ev_side_disconnected:
            tx.ev_side_disconnected = False  # the same transaction goes on
            if self.has_lock and self._settings.unlock_on_ev_side_disconnect:
                self._lock()  # it was unlocked when the EV side went
            return
        self._maybe_start_transaction()

    def _on_ev_disconnected(self) -> None:
        tx = self.tx
        if tx is None:
            if self.held_for is not None:
                self.cable_held = True  # unplugged at the EV: the cable stays locked in
            return
        self.cable_held = self.has_lock
        if self._settings.stop_tx_on_ev_side_disconnect:
            self.stop_transaction(StopReason.EV_DISCONNECTED)
        else:
            tx.ev_side_disconnected = True
            if self.has_lock and self._settings.unlock_on_ev_side_disconnect:
                self._unlock_pending = True

    def on_locked(self) -> None:
        self._locking = False
        self.lock_confirmed = True
        self._maybe_start_transaction()

    def on_lock_failed(self) -> None:
        self._locking = False

    def on_unlocked(self) -> None:
        """The lock let the cable go: a held cable can now be taken out."""
        self.lock_confirmed = False
        self.cable_held = False
        self._set_hold(None)

    def check_contactor_feedback(self, feedback_closed: bool | None) -> None:
        """Compare the auxiliary contact with the command (called by the safety loop)."""
        self._feedback = feedback_closed
        if feedback_closed is None or self._contactor is None or self.commissioning:
            return
        now = self._clock.monotonic()
        if feedback_closed == self._contactor:
            self._feedback_mismatch_since = None
            if not feedback_closed:
                self.faults.discard(Fault.WELD)
            return
        if self._feedback_mismatch_since is None:
            self._feedback_mismatch_since = max(now, self._contactor_changed_at)
        if now - self._feedback_mismatch_since < CONTACTOR_FEEDBACK_TIMEOUT_S:
            return
        self.faults.add(Fault.WELD if feedback_closed else Fault.CONTACTOR_CLOSE)

    def set_fault(self, fault: Fault, active: bool) -> None:
        if active:
            self.faults.add(fault)
        else:
            self.faults.discard(fault)

    def tick(self) -> None:
        now = self._clock.monotonic()
        auth = self.auth
        if auth is not None and self.tx is None and not self.ev_present and now >= auth.expires_at:
            self.auth = None
            self._outbox.append(AuthorizationExpired(self.connector_id, auth.id_tag))

    # -- sessions ----------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """No transaction, no pending authorization: free for a new user."""
        return self.tx is None and self.auth is None

    def can_authorize(self) -> bool:
        return (
            self.idle
            and not self.commissioning
            and self.held_for is None
            and self.in_service
            and self.blocking_fault is None
            and self.cp_state in (CpState.A, CpState.B, CpState.C, CpState.D)
        )

    def authorize(self, id_tag: str, *, remote: bool, parent_id_tag: str | None = None) -> None:
        self.auth = Authorization(
            id_tag,
            remote,
            expires_at=self._clock.monotonic() + self._settings.connection_timeout_s,
            parent_id_tag=parent_id_tag,
        )
        self._maybe_start_transaction()

    def _maybe_start_transaction(self) -> None:
        auth = self.auth
        if auth is None or self.tx is not None or not self.ev_present:
            return
        if not self.in_service or self.blocking_fault is not None:
            return
        # Before the transaction, so that its first PWM offer can follow at once: the RCD
        # must have passed its self-test for this EV, and a socket's cable must be locked
        # (confirmed by the lock's feedback). Meanwhile the connector stays Preparing.
        if not self.rcd_tested:
            return  # rcd_self_tested() comes back here
        if self.has_lock and not self.lock_confirmed:
            if not self._locking:
                self._lock()
            return  # on_locked() comes back here
        self.auth = None
        self.finishing = False
        tx = Transaction(
            local_id=self._next_local_id(),
            id_tag=auth.id_tag,
            started_at=self._clock.utc_now(),
            remote=auth.remote,
            parent_id_tag=auth.parent_id_tag,
            meter_start_wh=self.meter.energy_import_wh if self.meter is not None else None,
        )
        self.tx = tx
        self._outbox.append(
            TransactionStarted(
                self.connector_id, tx.local_id, tx.id_tag, tx.started_at, remote=tx.remote
            )
        )

    def _lock(self) -> None:
        self._unlock_pending = False
        self.lock_confirmed = False
        self._locking = True
        self._outbox.append(SetLock(self.connector_id, True))

    def stop_transaction(self, reason: StopReason, id_tag: str | None = None) -> bool:
        tx = self.tx
        if tx is None:
            return False
        self.tx = None
        self.finishing = self.ev_present or self.cable_held
        self._outbox.append(
            TransactionStopped(
                self.connector_id, tx.local_id, reason, self._clock.utc_now(), id_tag
            )
        )
        keep_locked = (
            reason is StopReason.EV_DISCONNECTED and not self._settings.unlock_on_ev_side_disconnect
        )
        if self.has_lock and reason is StopReason.DE_AUTHORIZED:
            keep_locked = True  # until the owner comes back (§3.5.4)
            self._set_hold((tx.id_tag, tx.parent_id_tag))
        if self.has_lock and not keep_locked:
            self._unlock_pending = True  # once the contactor is open (reconcile)
        if self.scheduled_operative is not None:
            self.set_operative(self.scheduled_operative)
        return True

    def resume_start(self) -> None:
        """A condition a pending session waited for is now met."""
        self._maybe_start_transaction()

    def forget_outputs(self) -> None:
        """Something else drove the outputs: the next reconcile commands them all again."""
        self._pilot = None
        self._contactor = None

    def release_hold(self) -> None:
        """The owner of a cable held after a DeAuthorized stop came back: let it go."""
        self._set_hold(None)
        self._unlock_pending = True

    def restore_hold(self, id_tag: str, parent_id_tag: str | None) -> None:
        """A hold from before a restart: the cable stays locked for its owner."""
        if not self.has_lock:
            return
        self.held_for = (id_tag, parent_id_tag)
        self._lock()  # the lock kept its position, most likely; make sure

    def _set_hold(self, held_for: tuple[str, str | None] | None) -> None:
        if held_for != self.held_for:
            self.held_for = held_for
            self._outbox.append(CableHoldChanged(self.connector_id, held_for))

    def set_operative(self, operative: bool) -> bool:
        """ChangeAvailability: True if applied now, False if scheduled after the transaction."""
        if self.tx is not None and operative != self.operative:
            self.scheduled_operative = operative
            return False
        self.scheduled_operative = None
        if operative != self.operative:
            self.operative = operative
            self._outbox.append(AvailabilityChanged(self.connector_id, operative))
        if not operative:
            self.auth = None
        return True

    def set_maintenance(self, held: bool) -> None:
        """Hold the connector out of service (a firmware update waits for the transactions
        to end): a running transaction goes on to its end, nothing new starts, and the
        connector is Unavailable whenever it has no transaction."""
        self.maintenance = held
        if held and self.tx is None:
            self.auth = None

    def view(self) -> ConnectorView:
        status = self._status or self._desired_status()
        pilot = self._pilot or (PilotOutput.STATE_F, 0.0)
        return ConnectorView(
            connector_id=self.connector_id,
            status=status[0],
            error_code=status[1],
            info=status[2],
            cp_state=self.cp_state,
            pilot_output=pilot[0],
            duty_percent=pilot[1],
            contactor_closed=bool(self._contactor),
            offered_current_a=self.offered_current_a if pilot[0] is PilotOutput.PWM else 0.0,
            max_current_a=self.max_current_a,
            phases=self.phases,
            operative=self.operative,
            scheduled_operative=self.scheduled_operative,
            faults=tuple(sorted(f.value for f in self.faults)),
            transaction_local_id=self.tx.local_id if self.tx else None,
            transaction_id_tag=self.tx.id_tag if self.tx else None,
            authorized_id_tag=self.auth.id_tag if self.auth else None,
            meter=self.meter,
            maintenance=self.maintenance,
        )


@dataclass(frozen=True, slots=True)
class ConnectorSpec:
    connector_id: int
    max_current_a: float
    phases: int
    pwm_resolution_percent: float = 0.0
    has_lock: bool = False
    # The RCD has a test input: it is exercised each time an EV arrives, before any energy.
    has_rcd_self_test: bool = False


class CardDecision(enum.Enum):
    STOPPED = "stopped"  # the card stopped its own transaction; no Authorize needed
    AUTHORIZE = "authorize"  # ask the authorization service, then call on_authorized
    IGNORED = "ignored"  # the card can neither start nor stop anything now: no Authorize


@dataclass
class _Counter:
    value: int = 0

    def __call__(self) -> int:
        self.value += 1
        return self.value


@dataclass
class Charger:
    """All connectors of one charge point, and the decisions that span them."""

    specs: Iterable[ConnectorSpec]
    clock: Clock
    settings: ChargerSettings = field(default_factory=ChargerSettings)
    next_local_tx_id: Callable[[], int] = field(default_factory=_Counter)

    def __post_init__(self) -> None:
        self._outbox: list[Action] = []
        self.connectors: dict[int, Connector] = {}
        for spec in self.specs:
            connector = Connector(
                spec.connector_id,
                max_current_a=spec.max_current_a,
                phases=spec.phases,
                pwm_resolution_percent=spec.pwm_resolution_percent,
                has_lock=spec.has_lock,
                has_rcd_self_test=spec.has_rcd_self_test,
                clock=self.clock,
                settings=self.settings,
                outbox=self._outbox,
                next_local_id=self.next_local_tx_id,
            )
            self.connectors[spec.connector_id] = connector
        self.reader_fault = False
        self._cp0_status: tuple[Status, ErrorCode] | None = None

    # -- plumbing ----------------------------------------------------------------------

    def drain(self) -> list[Action]:
        """Take the actions produced so far, in the order they must be carried out."""
        actions = self._outbox[:]
        self._outbox.clear()
        return actions

    def _reconcile(self) -> None:
        for connector in self.connectors.values():
            connector.reconcile()
        operative = any(c.operative for c in self.connectors.values())
        cp0 = (
            Status.AVAILABLE if operative else Status.UNAVAILABLE,
            ErrorCode.READER_FAILURE if self.reader_fault else ErrorCode.NO_ERROR,
        )
        if cp0 != self._cp0_status:
            self._cp0_status = cp0
            info = "card reader not answering" if self.reader_fault else None
            self._outbox.append(StatusChanged(0, cp0[0], cp0[1], self.clock.utc_now(), info))

    def start(self) -> None:
        """Drive every output to its derived state (the first call commands the hardware)."""
        self._reconcile()

    def connector(self, connector_id: int) -> Connector:
        try:
            return self.connectors[connector_id]
        except KeyError:
            raise KeyError(f"no connector {connector_id}") from None

    def views(self) -> list[ConnectorView]:
        return [c.view() for c in self.connectors.values()]

    def cp0_status(self) -> StatusChanged:
        status = self._cp0_status or (Status.AVAILABLE, ErrorCode.NO_ERROR)
        return StatusChanged(0, status[0], status[1], self.clock.utc_now())

    def current_status(self, connector_id: int) -> StatusChanged:
        """The connector's status now, as a StatusNotification would report it."""
        if connector_id == 0:
            return self.cp0_status()
        view = self.connector(connector_id).view()
        return StatusChanged(
            connector_id, view.status, view.error_code, self.clock.utc_now(), view.info
        )

    # -- hardware inputs ---------------------------------------------------------------

    def on_pilot(self, connector_id: int, reading: PilotReading) -> None:
        self.connector(connector_id).on_pilot(reading)
        self._place_card_authorization(connector_id)
        self._reconcile()

    def check_contactor_feedback(self, connector_id: int, feedback_closed: bool | None) -> None:
        self.connector(connector_id).check_contactor_feedback(feedback_closed)
        self._reconcile()

    def set_fault(self, connector_id: int, fault: Fault, active: bool) -> None:
        if fault is Fault.READER:
            self.reader_fault = active
        else:
            self.connector(connector_id).set_fault(fault, active)
        self._reconcile()

    def on_unlocked(self, connector_id: int) -> None:
        self.connector(connector_id).on_unlocked()
        self._reconcile()

    def on_locked(self, connector_id: int) -> None:
        """The lock's feedback confirms the cable is locked: a session waiting for it starts."""
        self.connector(connector_id).on_locked()
        self._reconcile()

    def on_lock_failed(self, connector_id: int) -> None:
        self.connector(connector_id).on_lock_failed()
        self._reconcile()

    def on_meter(self, connector_id: int, reading: MeterReading) -> None:
        connector = self.connector(connector_id)
        connector.meter = reading
        tx = connector.tx
        if tx is not None and tx.id_tag_rejected:
            self._reconcile()  # the MaxEnergyOnInvalidId allowance may just be used up

    def tick(self) -> None:
        """Timers: ConnectionTimeOut, the 6 s open-under-load wait, feedback timeouts."""
        for connector in self.connectors.values():
            connector.tick()
        self._reconcile()

    def set_limit(self, connector_id: int, limit_a: float) -> None:
        self.connector(connector_id).limit_a = limit_a
        self._reconcile()

    # -- users -------------------------------------------------------------------------

    def on_card(self, id_tag: str) -> CardDecision:
        """A card was presented. Its own transaction stops at once (no Authorize needed), and
        a cable held for it after a DeAuthorized stop is let go."""
        for connector in self.connectors.values():
            held = connector.held_for
            if held is not None and held[0].casefold() == id_tag.casefold():
                connector.release_hold()
                self._reconcile()
                return CardDecision.STOPPED
            tx = connector.tx
            if tx is not None and tx.id_tag.casefold() == id_tag.casefold():
                connector.stop_transaction(StopReason.LOCAL, id_tag)
                self._reconcile()
                return CardDecision.STOPPED
        # No free connector and no transaction that a card with the same parent idTag could
        # stop: asking the CSMS about this card is pointless (OCTT TC_068 step 1).
        if self._connector_for_card() is None and not any(
            (c.tx is not None and c.tx.parent_id_tag) or (c.held_for and c.held_for[1])
            for c in self.connectors.values()
        ):
            log.info("card %s ignored: no connector is free", IdTag(id_tag))
            return CardDecision.IGNORED
        return CardDecision.AUTHORIZE

    def on_authorized(
        self, id_tag: str, accepted: bool, parent_id_tag: str | None = None
    ) -> int | None:
        """The outcome of authorizing a presented card; returns the connector it applies to."""
        if not accepted:
            log.info("card %s not authorized", IdTag(id_tag))
            return None
        if parent_id_tag:
            for connector in self.connectors.values():
                held = connector.held_for
                if held is not None and held[1] and held[1].casefold() == parent_id_tag.casefold():
                    connector.release_hold()
                    self._reconcile()
                    return connector.connector_id
                tx = connector.tx
                if (
                    tx is not None
                    and tx.parent_id_tag
                    and (tx.parent_id_tag.casefold() == parent_id_tag.casefold())
                ):
                    connector.stop_transaction(StopReason.LOCAL, id_tag)
                    self._reconcile()
                    return connector.connector_id
        target = self._connector_for_card()
        if target is None:
            log.info("card %s authorized but no connector is free", IdTag(id_tag))
            return None
        target.authorize(id_tag, remote=False, parent_id_tag=parent_id_tag)
        self._reconcile()
        return target.connector_id

    def _connector_for_card(self) -> Connector | None:
        candidates = [c for c in self.connectors.values() if c.can_authorize()]
        # A connector with an EV waiting for authorization first, then an empty one.
        for connector in candidates:
            if connector.ev_present:
                return connector
        return candidates[0] if candidates else None

    def _place_card_authorization(self, plugged_id: int) -> None:
        """Identify-first with several connectors: a card authorization waiting on an empty
        connector moves to the one the driver actually plugged into."""
        plugged = self.connectors[plugged_id]
        if not plugged.ev_present or not plugged.can_authorize():
            return
        for connector in self.connectors.values():
            auth = connector.auth
            if connector is plugged or auth is None or auth.remote or connector.ev_present:
                continue
            connector.auth = None
            plugged.authorize(auth.id_tag, remote=False, parent_id_tag=auth.parent_id_tag)
            return

    def connector_for_remote_start(self, connector_id: int | None) -> Connector | None:
        """The connector a RemoteStartTransaction would use, or None (→ Rejected)."""
        if connector_id is None:
            return self._connector_for_card()
        connector = self.connectors.get(connector_id)
        if connector is None or not connector.can_authorize():
            return None
        return connector

    def remote_start(
        self, connector_id: int, id_tag: str, parent_id_tag: str | None = None
    ) -> bool:
        connector = self.connector_for_remote_start(connector_id)
        if connector is None:
            return False
        connector.authorize(id_tag, remote=True, parent_id_tag=parent_id_tag)
        self._reconcile()
        return True

    def stop(self, connector_id: int, reason: StopReason, id_tag: str | None = None) -> bool:
        stopped = self.connector(connector_id).stop_transaction(reason, id_tag)
        self._reconcile()
        return stopped

    def stop_all(self, reason: StopReason) -> list[int]:
        stopped = [c.connector_id for c in self.connectors.values() if c.stop_transaction(reason)]
        self._reconcile()
        return stopped

    def transaction_rejected(self, connector_id: int, local_id: int) -> None:
        """The CSMS answered a StartTransaction with an idTagInfo that is not Accepted."""
        connector = self.connector(connector_id)
        tx = connector.tx
        if tx is None or tx.local_id != local_id:
            return
        if self.settings.stop_tx_on_invalid_id:
            connector.stop_transaction(StopReason.DE_AUTHORIZED)
        else:
            tx.id_tag_rejected = True
        self._reconcile()

    def rcd_self_tested(self, connector_id: int, passed: bool) -> None:
        """The result of a RunRcdSelfTest: energy may flow, or the connector is faulted
        until the EV leaves."""
        connector = self.connector(connector_id)
        if passed:
            connector.rcd_tested = True
            connector.resume_start()
        else:
            connector.faults.add(Fault.RCD_SELF_TEST)
        self._reconcile()

    def set_commissioning(self, connector_id: int, on: bool) -> bool:
        """Hand a connector's outputs to the bring-up code (True if done) and back. Only an
        idle connector is handed over; on the way back every output is driven afresh."""
        connector = self.connector(connector_id)
        if on:
            if not connector.idle or connector.held_for is not None:
                return False
            connector.commissioning = True
        elif connector.commissioning:
            connector.commissioning = False
            connector.forget_outputs()
        self._reconcile()
        return True

    def restore_hold(self, connector_id: int, id_tag: str, parent_id_tag: str | None) -> None:
        self.connector(connector_id).restore_hold(id_tag, parent_id_tag)
        self._reconcile()

    def set_meter_start(self, connector_id: int, local_id: int, meter_start_wh: float) -> None:
        """The exact meterStart, from the reading taken before energy flowed (the one the
        transaction started with was only the latest reading)."""
        tx = self.connector(connector_id).tx
        if tx is not None and tx.local_id == local_id:
            tx.meter_start_wh = meter_start_wh
            self._reconcile()

    def set_parent_id_tag(self, connector_id: int, local_id: int, parent: str | None) -> None:
        tx = self.connector(connector_id).tx
        if tx is not None and tx.local_id == local_id:
            tx.parent_id_tag = parent

    def set_operative(self, connector_id: int, operative: bool) -> bool:
        """ChangeAvailability; connector 0 = all. True = Accepted, False = Scheduled."""
        targets = (
            list(self.connectors.values()) if connector_id == 0 else [self.connector(connector_id)]
        )
        applied = [c.set_operative(operative) for c in targets]
        self._reconcile()
        return all(applied)

    def set_maintenance(self, held: bool) -> None:
        """Hold every connector out of service, or release them (their availability as
        ChangeAvailability set it is untouched either way)."""
        for connector in self.connectors.values():
            connector.set_maintenance(held)
        self._reconcile()

    def transaction_on(self, connector_id: int) -> Transaction | None:
        return self.connector(connector_id).tx
