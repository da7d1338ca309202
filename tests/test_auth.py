"""The authorization rules on their own (sans-I/O): the Local Authorization List
(SendLocalList, GetLocalListVersion), the authorization cache and the offline policies of
OCPP 1.6 §3.5, with the errata. Expected values come from the specification, not the code."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from evse_daemon.auth import (
    Authorizer,
    AuthSettings,
    IdTagInfo,
    ListEntry,
    LocalListUpdate,
    UpdateStatus,
)
from evse_daemon.clock import FakeClock

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
ACCEPTED = IdTagInfo("Accepted")


def _authorizer(**settings: bool | int) -> tuple[Authorizer, FakeClock]:
    clock = FakeClock(T0)
    return Authorizer(clock, AuthSettings(**settings)), clock


def _send(auth: Authorizer, version: int, update_type: str, *entries: ListEntry) -> str:
    """SendLocalList as the adapter runs it (store left out): check, then apply."""
    checked = auth.check_local_list_update(version, update_type, list(entries))
    if isinstance(checked, UpdateStatus):
        return checked.value
    auth.apply_local_list(checked)
    return "Accepted"


def _entry(tag: str, status: str | None = "Accepted", **kw: object) -> ListEntry:
    return ListEntry(tag, None if status is None else IdTagInfo(status, **kw))


# --- the Local Authorization List ------------------------------------------------------------


def test_get_local_list_version_is_0_for_an_empty_list_and_minus_1_when_disabled() -> None:
    auth, _ = _authorizer()
    assert auth.reported_list_version() == 0  # never set: empty (§5.10)
    # OCTT TC_042_2: a Full update with version 1 and no entries still reads 0 (empty).
    assert _send(auth, 1, "Full") == "Accepted"
    assert auth.reported_list_version() == 0
    assert _send(auth, 3, "Full", _entry("A")) == "Accepted"
    assert auth.reported_list_version() == 3
    auth.settings.local_auth_list_enabled = False
    assert auth.reported_list_version() == -1  # errata 3.52: not supported


def test_send_local_list_is_not_supported_while_the_list_is_disabled() -> None:
    auth, _ = _authorizer(local_auth_list_enabled=False)
    assert _send(auth, 1, "Full", _entry("A")) == "NotSupported"
    auth.settings.local_auth_list_enabled = True
    assert auth.lookup("A") is None  # nothing was stored


def test_full_update_replaces_the_list() -> None:
    auth, _ = _authorizer()
    assert _send(auth, 1, "Full", _entry("A"), _entry("B", "Blocked")) == "Accepted"
    assert _send(auth, 2, "Full", _entry("C")) == "Accepted"
    assert auth.local_list_entry("A") is None
    assert auth.local_list_entry("B") is None
    assert auth.local_list_entry("C") == ACCEPTED
    # A Full update may go back to a lower version: only Differential ones are checked.
    assert _send(auth, 1, "Full") == "Accepted"
    assert auth.local_list_size() == 0


def test_differential_update_adds_updates_and_removes() -> None:
    auth, _ = _authorizer()
    _send(auth, 1, "Full", _entry("A"), _entry("B"), _entry("C"))
    status = _send(
        auth,
        2,
        "Differential",
        _entry("A", "Blocked"),  # updated
        _entry("B", None),  # no idTagInfo: removed (§7.1)
        _entry("D", "Accepted", parent_id_tag="P"),  # added
        _entry("NOT-THERE", None),  # removing an unknown idTag is no error
    )
    assert status == "Accepted"
    assert auth.local_list_entry("A") == IdTagInfo("Blocked")
    assert auth.local_list_entry("B") is None
    assert auth.local_list_entry("C") == ACCEPTED
    assert auth.local_list_entry("D") == IdTagInfo("Accepted", parent_id_tag="P")
    assert auth.reported_list_version() == 2


@pytest.mark.parametrize("version", [5, 4])
def test_differential_update_not_newer_than_the_list_is_a_version_mismatch(version: int) -> None:
    auth, _ = _authorizer()
    _send(auth, 5, "Full", _entry("A"))
    # §7.47: VersionMismatch when the version is less than or equal to the current one.
    assert _send(auth, version, "Differential", _entry("B")) == "VersionMismatch"
    assert auth.local_list_entry("B") is None
    assert auth.reported_list_version() == 5


@pytest.mark.parametrize(
    ("version", "update_type", "status"),
    [
        (0, "Full", "Failed"),
        (-1, "Full", "Failed"),
        (0, "Differential", "VersionMismatch"),
        (-1, "Differential", "VersionMismatch"),
    ],
)
def test_list_versions_0_and_minus_1_are_never_valid(
    version: int, update_type: str, status: str
) -> None:
    # Errata 3.52: listVersion SHALL NOT be -1 or 0 (their meaning in GetLocalListVersion).
    auth, _ = _authorizer()
    assert _send(auth, version, update_type, _entry("A")) == status
    assert auth.local_list_entry("A") is None
    assert auth.list_version == 0


def test_full_update_without_id_tag_info_fails() -> None:
    auth, _ = _authorizer()
    _send(auth, 1, "Full", _entry("KEEP"))
    # §7.1: idTagInfo is required when the update type is Full.
    assert _send(auth, 2, "Full", _entry("A"), _entry("B", None)) == "Failed"
    assert auth.local_list_entry("KEEP") == ACCEPTED
    assert auth.list_version == 1


def test_duplicate_id_tags_fail_case_insensitively() -> None:
    auth, _ = _authorizer()
    # §6.41: idTags in the list must be unique; IdToken is case-insensitive (errata 3.73).
    assert _send(auth, 1, "Full", _entry("abc"), _entry("ABC", "Blocked")) == "Failed"
    assert auth.local_list_size() == 0


def test_a_list_longer_than_its_maximum_fails_and_changes_nothing() -> None:
    auth, _ = _authorizer(local_auth_list_max_length=3, send_local_list_max_length=10)
    _send(auth, 1, "Full", _entry("A"), _entry("B"))
    too_many = [_entry(f"T{i}") for i in range(4)]
    assert _send(auth, 2, "Full", *too_many) == "Failed"
    # Differential: 2 + 2 new - 0 removed = 4 > 3.
    assert _send(auth, 2, "Differential", _entry("C"), _entry("D")) == "Failed"
    assert auth.list_version == 1
    assert auth.local_list_size() == 2
    # Removing one makes room for the other in the same update: 2 - 1 + 2 = 3.
    assert _send(auth, 2, "Differential", _entry("A", None), _entry("C"), _entry("D")) == (
        "Accepted"
    )
    assert auth.local_list_size() == 3


def test_more_entries_than_send_local_list_max_length_fail() -> None:
    auth, _ = _authorizer(local_auth_list_max_length=100, send_local_list_max_length=2)
    assert _send(auth, 1, "Full", _entry("A"), _entry("B"), _entry("C")) == "Failed"
    assert _send(auth, 1, "Differential", _entry("A"), _entry("B"), _entry("C")) == "Failed"
    assert auth.local_list_size() == 0


def test_checking_an_update_changes_nothing_until_it_is_applied() -> None:
    auth, _ = _authorizer()
    _send(auth, 1, "Full", _entry("A"))
    checked = auth.check_local_list_update(2, "Full", [_entry("B")])
    assert isinstance(checked, LocalListUpdate)
    # The store fails here: the list in effect is still version 1 with A.
    assert auth.list_version == 1
    assert auth.local_list_entry("A") == ACCEPTED
    assert auth.local_list_entry("B") is None


def test_conflict_between_the_list_and_the_csms() -> None:
    auth, _ = _authorizer()
    _send(auth, 1, "Full", _entry("A"), _entry("B", "Blocked"), _entry("C", "ConcurrentTx"))
    assert auth.conflicts_with_list("A", IdTagInfo("Blocked"))
    assert auth.conflicts_with_list("B", IdTagInfo("Accepted"))
    assert not auth.conflicts_with_list("A", IdTagInfo("Accepted"))
    assert not auth.conflicts_with_list("B", IdTagInfo("Invalid"))  # both not valid
    # Accepted and ConcurrentTx are both "valid" (§3.5.2).
    assert not auth.conflicts_with_list("C", IdTagInfo("Accepted"))
    assert not auth.conflicts_with_list("UNKNOWN", IdTagInfo("Blocked"))


# --- the authorization cache -------------------------------------------------------------------


def test_cache_learns_every_id_tag_info_and_is_case_insensitive() -> None:
    auth, _ = _authorizer()
    assert auth.remember("Card-1", ACCEPTED) is not None
    assert auth.cached("CARD-1") == ACCEPTED
    # A later answer replaces the entry (§3.5.1), even a NOT-valid one.
    assert auth.remember("card-1", IdTagInfo("Blocked")) is not None
    assert auth.cached("Card-1") == IdTagInfo("Blocked")
    # The same answer again changes nothing: nothing to write.
    assert auth.remember("card-1", IdTagInfo("Blocked")) is None


def test_list_entries_are_never_copied_into_the_cache() -> None:
    auth, _ = _authorizer()
    _send(auth, 1, "Full", _entry("LISTED"))
    assert auth.remember("listed", IdTagInfo("Blocked")) is None  # §3.5.3
    assert auth.cached("LISTED") is None
    assert auth.lookup("LISTED") == ACCEPTED


def test_list_entries_take_priority_over_the_cache() -> None:
    auth, _ = _authorizer()
    auth.remember("A", ACCEPTED)
    auth.remember("B", IdTagInfo("Blocked"))
    _send(auth, 1, "Full", _entry("A", "Blocked"), _entry("B"))
    assert auth.lookup("A") == IdTagInfo("Blocked")
    assert auth.lookup("B") == ACCEPTED
    # With the list disabled the cache is what is known.
    auth.settings.local_auth_list_enabled = False
    assert auth.lookup("A") == ACCEPTED
    assert auth.lookup("B") == IdTagInfo("Blocked")


def test_disabled_cache_is_neither_used_nor_updated() -> None:
    auth, _ = _authorizer(local_pre_authorize=True)
    auth.remember("OLD", ACCEPTED)
    auth.settings.cache_enabled = False
    assert auth.remember("NEW", ACCEPTED) is None
    assert auth.cached("NEW") is None
    assert auth.lookup("OLD") is None
    assert auth.pre_authorized("OLD") is None
    assert auth.offline_decision("OLD").status == "Invalid"


def test_cache_entry_past_its_expiry_date_is_expired() -> None:
    auth, clock = _authorizer(local_pre_authorize=True, allow_offline_tx_for_unknown_id=True)
    expiry = T0 + timedelta(hours=1)
    auth.remember("A", IdTagInfo("Accepted", expiry, "P"))
    assert auth.pre_authorized("A") == IdTagInfo("Accepted", expiry, "P")
    clock.advance(3600)
    assert auth.cached("A") == IdTagInfo("Expired", expiry, "P")
    assert auth.pre_authorized("A") is None  # asked online again
    # §3.5.4: expired by the passage of time is rejected even for unknown-id offline charging.
    assert auth.offline_decision("A").status == "Expired"


def test_full_cache_drops_not_valid_entries_then_the_oldest_valid_ones() -> None:
    clock = FakeClock(T0)
    auth = Authorizer(clock, AuthSettings(), cache_max_entries=3)
    auth.remember("OLD", ACCEPTED)
    auth.remember("BAD", IdTagInfo("Blocked"))
    auth.remember("NEW", ACCEPTED)
    update = auth.remember("NEWER", ACCEPTED)
    assert update is not None
    assert update.evicted == ("bad",)  # the NOT-valid entry goes first (§3.5.1)
    update = auth.remember("NEWEST", ACCEPTED)
    assert update is not None
    assert update.evicted == ("old",)  # then the oldest valid one
    assert auth.cached("NEW") == ACCEPTED
    assert auth.cache_size() == 3
    # An entry that expired is NOT-valid too, whatever its age.
    auth.remember("NEW", IdTagInfo("Accepted", T0 + timedelta(seconds=10)))
    clock.advance(11)
    update = auth.remember("LATEST", ACCEPTED)
    assert update is not None
    assert update.evicted == ("new",)


def test_clear_cache_forgets_every_entry_but_not_the_list() -> None:
    auth, _ = _authorizer()
    auth.remember("A", ACCEPTED)
    _send(auth, 1, "Full", _entry("L"))
    auth.clear_cache()
    assert auth.cached("A") is None
    assert auth.lookup("L") == ACCEPTED


# --- LocalPreAuthorize ----------------------------------------------------------------------------


def test_local_pre_authorize_starts_valid_local_entries_at_once() -> None:
    auth, _ = _authorizer(local_pre_authorize=True)
    auth.remember("CACHED", IdTagInfo("Accepted", parent_id_tag="P"))
    _send(auth, 1, "Full", _entry("LISTED"), _entry("BLOCKED", "Blocked"))
    assert auth.pre_authorized("CACHED") == IdTagInfo("Accepted", parent_id_tag="P")
    assert auth.pre_authorized("LISTED") == ACCEPTED
    # Unknown and NOT-valid idTags are asked online (§3.5.1).
    assert auth.pre_authorized("UNKNOWN") is None
    assert auth.pre_authorized("BLOCKED") is None
    auth.settings.local_pre_authorize = False
    assert auth.pre_authorized("CACHED") is None
    assert auth.pre_authorized("LISTED") is None


# --- offline ----------------------------------------------------------------------------------


def test_local_authorize_offline_accepts_valid_list_and_cache_entries() -> None:
    auth, _ = _authorizer(local_authorize_offline=True)
    auth.remember("CACHED", ACCEPTED)
    _send(auth, 1, "Full", _entry("LISTED", parent_id_tag="P"))
    assert auth.offline_decision("CACHED").accepted
    assert auth.offline_decision("LISTED") == IdTagInfo("Accepted", parent_id_tag="P")
    assert not auth.offline_decision("UNKNOWN").accepted
    auth.settings.local_authorize_offline = False
    assert not auth.offline_decision("CACHED").accepted
    assert not auth.offline_decision("LISTED").accepted


@pytest.mark.parametrize("status", ["Invalid", "Blocked", "Expired", "ConcurrentTx"])
def test_unknown_id_offline_still_rejects_what_the_list_rejects(status: str) -> None:
    auth, _ = _authorizer(allow_offline_tx_for_unknown_id=True)
    _send(auth, 1, "Full", _entry("LISTED", status))
    auth.remember("CACHED", IdTagInfo(status))
    # §3.5.4: idTags the list holds with a status other than Accepted MUST be rejected.
    assert auth.offline_decision("LISTED").status == status
    assert auth.offline_decision("CACHED").status == status
    assert auth.offline_decision("NEVER-SEEN").accepted


def test_unknown_id_offline_rejects_a_list_entry_past_its_expiry_date() -> None:
    auth, clock = _authorizer(allow_offline_tx_for_unknown_id=True)
    _send(auth, 1, "Full", _entry("LISTED", expiry_date=T0 + timedelta(minutes=5)))
    assert auth.offline_decision("LISTED").accepted
    clock.advance(300)
    assert auth.offline_decision("LISTED").status == "Expired"


def test_unknown_ids_are_rejected_offline_without_the_policy() -> None:
    auth, _ = _authorizer(allow_offline_tx_for_unknown_id=False)
    assert auth.offline_decision("NEVER-SEEN").status == "Invalid"
