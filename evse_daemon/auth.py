"""Authorization decisions (sans-I/O): the authorization cache and the offline policies.

The OCPP adapter asks the CSMS when it can; this module decides what to do from what is known
locally: a cached IdTagInfo, LocalPreAuthorize, LocalAuthorizeOffline and
AllowOfflineTxForUnknownId (OCPP 1.6 §3.5).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from .clock import Clock

ACCEPTED = "Accepted"


@dataclass(frozen=True, slots=True)
class IdTagInfo:
    status: str  # Accepted, Blocked, Expired, Invalid, ConcurrentTx
    expiry_date: datetime | None = None
    parent_id_tag: str | None = None

    @property
    def accepted(self) -> bool:
        return self.status == ACCEPTED


@dataclass
class AuthSettings:
    cache_enabled: bool = True
    local_pre_authorize: bool = False
    local_authorize_offline: bool = True
    allow_offline_tx_for_unknown_id: bool = False


class Authorizer:
    """The authorization cache and the local decisions made from it."""

    def __init__(self, clock: Clock, settings: AuthSettings | None = None) -> None:
        self._clock = clock
        self.settings = settings or AuthSettings()
        self._cache: dict[str, IdTagInfo] = {}

    @staticmethod
    def _key(id_tag: str) -> str:
        return id_tag.casefold()  # IdToken is case-insensitive

    def remember(self, id_tag: str, info: IdTagInfo) -> None:
        """Update the cache from an IdTagInfo the CSMS sent (Authorize, Start, Stop)."""
        if self.settings.cache_enabled:
            self._cache[self._key(id_tag)] = info

    def clear_cache(self) -> None:
        self._cache.clear()

    def cached(self, id_tag: str) -> IdTagInfo | None:
        info = self._cache.get(self._key(id_tag))
        if info is None:
            return None
        if info.expiry_date is not None and info.expiry_date <= self._clock.utc_now():
            return IdTagInfo("Expired", info.expiry_date, info.parent_id_tag)
        return info

    def pre_authorized(self, id_tag: str) -> IdTagInfo | None:
        """LocalPreAuthorize: a valid cached tag starts at once, without waiting online."""
        if not self.settings.local_pre_authorize or not self.settings.cache_enabled:
            return None
        info = self.cached(id_tag)
        return info if info is not None and info.accepted else None

    def offline_decision(self, id_tag: str) -> IdTagInfo:
        """What to do with a tag while the CSMS cannot be asked."""
        info = self.cached(id_tag) if self.settings.cache_enabled else None
        if info is not None:
            if info.accepted and self.settings.local_authorize_offline:
                return info
            if not info.accepted:
                return info  # known invalid stays invalid, even for unknown-id policy
        if self.settings.allow_offline_tx_for_unknown_id:
            return IdTagInfo(ACCEPTED)
        return IdTagInfo("Invalid")
