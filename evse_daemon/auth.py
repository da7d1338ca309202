"""Authorization decisions (sans-I/O): the Local Authorization List, the authorization cache
and the offline policies of OCPP 1.6 §3.5.

The OCPP adapter asks the CSMS when it can; this module decides from what is known locally:
the Local Authorization List the CSMS sends (SendLocalList), the cache of every IdTagInfo the
CSMS answered, and the keys LocalPreAuthorize, LocalAuthorizeOffline,
AllowOfflineTxForUnknownId, AuthorizationCacheEnabled and LocalAuthListEnabled.

Nothing here touches the disk: methods that change the list or the cache return what changed
(``LocalListUpdate``, ``CacheUpdate``) so that the caller persists it off the event loop.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from .clock import Clock

ACCEPTED = "Accepted"
# §3.5.2: list entries are "valid" when Accepted or ConcurrentTx (the idTag may charge, it is
# only busy elsewhere); Blocked, Expired and Invalid are not.
VALID_STATUSES = frozenset({ACCEPTED, "ConcurrentTx"})
# OCPP 1.6 has no key for the size of the cache. Enough for every card a site sees in months;
# a cache entry is ~100 bytes in SQLite.
CACHE_MAX_ENTRIES = 1000


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
    """The OCPP configuration values this module obeys; the app keeps them current."""

    cache_enabled: bool = True
    local_pre_authorize: bool = False
    local_authorize_offline: bool = True
    allow_offline_tx_for_unknown_id: bool = False
    local_auth_list_enabled: bool = True
    local_auth_list_max_length: int = 1000
    send_local_list_max_length: int = 1000


class UpdateStatus(enum.StrEnum):
    """SendLocalList.conf status [S16 §7.47]."""

    ACCEPTED = "Accepted"
    FAILED = "Failed"
    NOT_SUPPORTED = "NotSupported"
    VERSION_MISMATCH = "VersionMismatch"


class UpdateType(enum.StrEnum):
    DIFFERENTIAL = "Differential"
    FULL = "Full"


@dataclass(frozen=True, slots=True)
class ListEntry:
    """One AuthorizationData of a SendLocalList.req; ``info`` None removes the idTag
    (Differential) and is not allowed in a Full update."""

    id_tag: str
    info: IdTagInfo | None


@dataclass(frozen=True, slots=True)
class StoredEntry:
    """An idTag as the list or the cache holds it: ``key`` is its case-folded identity."""

    key: str
    id_tag: str
    info: IdTagInfo


@dataclass(frozen=True, slots=True)
class LocalListUpdate:
    """A SendLocalList that passed every check: the caller stores it, then applies it."""

    version: int
    full: bool
    upserts: tuple[StoredEntry, ...]
    removals: tuple[str, ...]  # keys


@dataclass(frozen=True, slots=True)
class CacheUpdate:
    """What one IdTagInfo changed in the cache: the entry written (with its age, higher is
    newer) and the keys evicted to make room for it."""

    entry: StoredEntry
    seq: int
    evicted: tuple[str, ...]


def _key(id_tag: str) -> str:
    return id_tag.casefold()  # IdToken is case-insensitive (errata 3.73)


class Authorizer:
    """The Local Authorization List, the authorization cache, and the decisions made from
    them."""

    def __init__(
        self,
        clock: Clock,
        settings: AuthSettings | None = None,
        *,
        cache_max_entries: int = CACHE_MAX_ENTRIES,
    ) -> None:
        self._clock = clock
        self.settings = settings or AuthSettings()
        self._cache_max = cache_max_entries
        self._cache: dict[str, StoredEntry] = {}
        self._cache_seq: dict[str, int] = {}
        self._next_seq = 1
        self._list: dict[str, StoredEntry] = {}
        self._list_version = 0

    # --- state from the store ---------------------------------------------------------

    def restore(
        self,
        list_version: int,
        list_entries: Iterable[StoredEntry],
        cache_entries: Iterable[tuple[StoredEntry, int]],
    ) -> None:
        """Take over what a previous run stored (the list, its version, the cache)."""
        self._list_version = list_version
        self._list = {entry.key: entry for entry in list_entries}
        self._cache = {}
        self._cache_seq = {}
        for entry, seq in cache_entries:
            self._cache[entry.key] = entry
            self._cache_seq[entry.key] = seq
        self._next_seq = max(self._cache_seq.values(), default=0) + 1

    # --- the Local Authorization List (§3.5.2, §5.10, §5.15) ---------------------------

    @property
    def list_version(self) -> int:
        """The version the CSMS gave the list last (0 before any)."""
        return self._list_version

    def reported_list_version(self) -> int:
        """GetLocalListVersion.conf: -1 while the list is disabled (not supported, errata
        3.52), 0 for an empty list (§5.10, even after a Full update to an empty list with a
        version: OCTT TC_042_2), else the version of the list."""
        if not self.settings.local_auth_list_enabled:
            return -1
        if not self._list:
            return 0
        return self._list_version

    def local_list_entry(self, id_tag: str) -> IdTagInfo | None:
        """The list's entry for ``id_tag`` as sent by the CSMS (no expiry applied)."""
        entry = self._list.get(_key(id_tag))
        return entry.info if entry is not None else None

    def local_list_size(self) -> int:
        return len(self._list)

    def check_local_list_update(
        self, version: int, update_type: str, entries: Sequence[ListEntry]
    ) -> LocalListUpdate | UpdateStatus:
        """Judge a SendLocalList.req without changing anything: the update to store and
        apply, or the status to answer with."""
        settings = self.settings
        if not settings.local_auth_list_enabled:
            return UpdateStatus.NOT_SUPPORTED
        full = update_type == UpdateType.FULL
        if not full and update_type != UpdateType.DIFFERENTIAL:
            return UpdateStatus.FAILED
        if version < 1:
            # 0 and -1 mean "empty" and "not supported" in GetLocalListVersion (errata 3.52),
            # so no list can have them. A Differential one is at the same time not newer
            # than any list.
            return UpdateStatus.FAILED if full else UpdateStatus.VERSION_MISMATCH
        if len(entries) > settings.send_local_list_max_length:
            return UpdateStatus.FAILED
        keys = [_key(entry.id_tag) for entry in entries]
        if len(set(keys)) != len(keys):
            return UpdateStatus.FAILED  # idTags must be unique (§6.41); which one would win?
        if full:
            if any(entry.info is None for entry in entries):
                return UpdateStatus.FAILED  # idTagInfo is required in a Full update (§7.1)
            if len(entries) > settings.local_auth_list_max_length:
                return UpdateStatus.FAILED
            upserts = tuple(
                StoredEntry(key, entry.id_tag, entry.info)
                for key, entry in zip(keys, entries, strict=True)
                if entry.info is not None
            )
            return LocalListUpdate(version, True, upserts, ())
        # §7.47: VersionMismatch when the version of a differential update is less than or
        # equal to the version of the current list.
        if version <= self._list_version:
            return UpdateStatus.VERSION_MISMATCH
        upserts = tuple(
            StoredEntry(key, entry.id_tag, entry.info)
            for key, entry in zip(keys, entries, strict=True)
            if entry.info is not None
        )
        removals = tuple(
            key
            for key, entry in zip(keys, entries, strict=True)
            if entry.info is None and key in self._list
        )
        size = len(self._list.keys() - set(removals) | {entry.key for entry in upserts})
        if size > settings.local_auth_list_max_length:
            return UpdateStatus.FAILED
        return LocalListUpdate(version, False, upserts, removals)

    def apply_local_list(self, update: LocalListUpdate) -> None:
        """Make a checked (and stored) update the list in effect."""
        if update.full:
            self._list = {}
        for key in update.removals:
            self._list.pop(key, None)
        for entry in update.upserts:
            self._list[entry.key] = entry
        self._list_version = update.version

    def conflicts_with_list(self, id_tag: str, info: IdTagInfo) -> bool:
        """The CSMS's verdict on an idTag contradicts the list's (§3.5.2: the charge point
        then reports LocalListConflict)."""
        local = self._effective(self._list.get(_key(id_tag)))
        if local is None or not self.settings.local_auth_list_enabled:
            return False
        return (local.status in VALID_STATUSES) != (info.status in VALID_STATUSES)

    # --- the authorization cache (§3.5.1) -----------------------------------------------

    def remember(self, id_tag: str, info: IdTagInfo) -> CacheUpdate | None:
        """Update the cache from an IdTagInfo the CSMS sent (Authorize, Start, Stop).

        Returns what changed, or None when nothing did: the cache is disabled, the idTag is
        in the list (§3.5.3: list entries are never copied into the cache), or the entry is
        unchanged (nothing to write to the card; "oldest" below is least recently changed).
        """
        if not self.settings.cache_enabled:
            return None
        key = _key(id_tag)
        if self.settings.local_auth_list_enabled and key in self._list:
            return None
        entry = StoredEntry(key, id_tag, info)
        if self._cache.get(key) == entry:
            return None
        evicted: list[str] = []
        if key not in self._cache and len(self._cache) >= self._cache_max:
            evicted = self._make_room()
        seq = self._next_seq
        self._next_seq += 1
        self._cache[key] = entry
        self._cache_seq[key] = seq
        return CacheUpdate(entry, seq, tuple(evicted))

    def _make_room(self) -> list[str]:
        """§3.5.1: a full cache drops its NOT-valid entries, then the oldest valid ones."""
        not_valid = {k for k, e in self._cache.items() if not self._is_valid(self._effective(e))}
        valid_by_age = sorted(self._cache.keys() - not_valid, key=lambda k: self._cache_seq[k])
        # Room for one more entry.
        excess = len(valid_by_age) - (self._cache_max - 1)
        evicted = sorted(not_valid) + valid_by_age[: max(0, excess)]
        for key in evicted:
            del self._cache[key]
            del self._cache_seq[key]
        return evicted

    def clear_cache(self) -> None:
        self._cache.clear()
        self._cache_seq.clear()

    def cached(self, id_tag: str) -> IdTagInfo | None:
        """The cache's entry for ``id_tag``, Expired once its expiryDate has passed."""
        return self._effective(self._cache.get(_key(id_tag)))

    def cache_size(self) -> int:
        return len(self._cache)

    # --- decisions ------------------------------------------------------------------------

    def lookup(self, id_tag: str) -> IdTagInfo | None:
        """What is known locally about ``id_tag``: the list first (§3.5.3), then the cache,
        each only while enabled; an entry past its expiryDate reads Expired."""
        key = _key(id_tag)
        if self.settings.local_auth_list_enabled and key in self._list:
            return self._effective(self._list[key])
        if self.settings.cache_enabled:
            return self._effective(self._cache.get(key))
        return None

    def pre_authorized(self, id_tag: str) -> IdTagInfo | None:
        """LocalPreAuthorize: an idTag the list or the cache holds as Accepted starts at once,
        without waiting for the CSMS. Anything else (unknown, NOT-valid) is asked online:
        §3.5.1 wants a NOT-valid cache entry checked again when online."""
        if not self.settings.local_pre_authorize:
            return None
        info = self.lookup(id_tag)
        return info if info is not None and info.accepted else None

    def offline_decision(self, id_tag: str) -> IdTagInfo:
        """What to do with an idTag while the CSMS cannot be asked (§3.5, §3.5.4)."""
        settings = self.settings
        info = self.lookup(id_tag)
        if info is not None:
            if info.accepted and settings.local_authorize_offline:
                return info
            if not info.accepted:
                # Known as Invalid, Blocked, Expired (or ConcurrentTx): rejected, even where
                # unknown idTags would be let through (§3.5.4).
                return info
        if settings.allow_offline_tx_for_unknown_id:
            # Known-valid but LocalAuthorizeOffline=false falls here too: such an idTag is
            # no worse than an unknown one.
            return IdTagInfo(ACCEPTED, parent_id_tag=info.parent_id_tag if info else None)
        return IdTagInfo("Invalid")

    # --- helpers --------------------------------------------------------------------------

    def _effective(self, entry: StoredEntry | None) -> IdTagInfo | None:
        """An entry's IdTagInfo as it stands now: §3.5.1 turns an entry whose expiryDate has
        passed into Expired."""
        if entry is None:
            return None
        info = entry.info
        if info.expiry_date is not None and info.expiry_date <= self._clock.utc_now():
            return IdTagInfo("Expired", info.expiry_date, info.parent_id_tag)
        return info

    @staticmethod
    def _is_valid(info: IdTagInfo | None) -> bool:
        return info is not None and info.status in VALID_STATUSES
