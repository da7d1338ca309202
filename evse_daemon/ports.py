"""What an OCPP adapter may ask of the charger, so that adapters never reach drivers.

The app implements this; an OCPP 1.6 adapter (and later a 2.0.1 one) uses only this.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Protocol

from .charger import ConnectorView, StatusChanged
from .profiles import ChargingProfile, CompositePeriod, ProfilePurpose, RateUnit


class ResetKind(enum.StrEnum):
    SOFT = "Soft"
    HARD = "Hard"


class UnlockResult(enum.StrEnum):
    UNLOCKED = "Unlocked"
    FAILED = "UnlockFailed"
    NOT_SUPPORTED = "NotSupported"


class AvailabilityResult(enum.StrEnum):
    ACCEPTED = "Accepted"
    REJECTED = "Rejected"
    SCHEDULED = "Scheduled"


class ChargerPort(Protocol):
    @property
    def connector_ids(self) -> list[int]: ...

    def views(self) -> list[ConnectorView]: ...

    def view(self, connector_id: int) -> ConnectorView: ...

    def current_status(self, connector_id: int) -> StatusChanged:
        """The status of a connector (0 = charge point) now, for a StatusNotification."""

    def can_remote_start(self, connector_id: int | None) -> bool: ...

    def remote_start(
        self, connector_id: int | None, id_tag: str, parent_id_tag: str | None = None
    ) -> bool:
        """Authorize ``id_tag`` on the connector (None = the charger chooses); its parent
        idTag, when known, lets a card of the same group stop the transaction."""

    def remote_stop(self, connector_id: int) -> bool: ...

    async def unlock(self, connector_id: int) -> UnlockResult: ...

    async def change_availability(
        self, connector_id: int, operative: bool
    ) -> AvailabilityResult: ...

    def request_reset(self, kind: ResetKind) -> None:
        """Stop the transactions and restart (after the adapter has answered)."""

    def transaction_rejected(self, connector_id: int, local_id: int) -> None:
        """The CSMS did not accept the idTag of a started transaction."""

    def set_parent_id_tag(self, connector_id: int, local_id: int, parent: str | None) -> None: ...

    def configuration_changed(self, key: str) -> None:
        """An OCPP configuration value changed; settings that derive from it must follow."""

    def clock_set(self) -> None:
        """The wall clock was set (from the CSMS's time): what is planned on it (charging
        schedules) is planned again."""

    # Smart charging

    def remote_start_profile(
        self, connector_id: int | None, id_tag: str, profile: ChargingProfile | None
    ) -> None:
        """The TxProfile of a RemoteStartTransaction (None: it had none, or it was not
        Accepted), for the transaction it starts. Called before the start is attempted:
        with the EV already plugged in, the transaction starts at once."""

    async def set_charging_profile(self, connector_id: int, profile: ChargingProfile) -> str | None:
        """Install a profile: None if Accepted, else the reason it is Rejected."""

    async def clear_charging_profile(
        self,
        profile_id: int | None,
        connector_id: int | None,
        purpose: ProfilePurpose | None,
        stack_level: int | None,
    ) -> bool:
        """ClearChargingProfile: True if any profile was removed (Accepted), else Unknown."""

    def composite_schedule(
        self, connector_id: int, duration_s: int, unit: RateUnit | None
    ) -> tuple[datetime, RateUnit, list[CompositePeriod]] | None:
        """GetCompositeSchedule from now: (scheduleStart, unit, periods), or None if Rejected."""
