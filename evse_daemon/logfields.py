"""Journal fields of the daemon's log records, and how idTags appear in the logs.

A log call marks what the journal should index:

- ``extra=journal_fields(connector=1, transaction_id=7)`` sets ``CONNECTOR=`` and
  ``TRANSACTION_ID=`` (the daemon's own transaction id, ``transaction.local_id`` in
  ``evsectl status``), so that ``journalctl -u evse-daemon CONNECTOR=1`` lists one outlet;
- an idTag is passed as ``IdTag(tag)``: ``log.info("card %s refused", IdTag(tag))``. The
  handler's :class:`IdTagFilter` writes it as ``[logging] id_tag`` says (``clear``, ``hash``:
  a keyed hash, the same for the same card on this charger but not reversible without the
  charger's key, or ``masked``) into the message and into ``ID_TAG=``. A record that reaches a
  handler without the filter shows the tag masked, never in clear.

Pure logic (no I/O): the controller imports it too.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import logging

__all__ = ["IdTag", "IdTagFilter", "IdTagPolicy", "journal_fields", "mask_id_tag"]

#: Hex digits of the keyed hash kept in the logs: 48 bits, no collision among the cards one
#: charger sees, short enough to read and to type into journalctl.
HASH_HEX_DIGITS = 12


class IdTagPolicy(enum.StrEnum):
    CLEAR = "clear"
    HASH = "hash"
    MASKED = "masked"


def mask_id_tag(tag: str) -> str:
    """Every character but the last few (at most 4, and at most a quarter) as ``*``."""
    shown = min(4, len(tag) // 4)
    return "*" * (len(tag) - shown) + tag[len(tag) - shown :]


class IdTag:
    """An idTag as a log argument, rendered by :class:`IdTagFilter`."""

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = value

    def __str__(self) -> str:
        return mask_id_tag(self.value)

    __repr__ = __str__


def journal_fields(
    *, connector: int | None = None, transaction_id: int | None = None
) -> dict[str, object]:
    """The ``extra=`` of a log call: journal fields CONNECTOR= and TRANSACTION_ID=."""
    fields: dict[str, object] = {}
    if connector is not None:
        fields["CONNECTOR"] = connector
    if transaction_id is not None:
        fields["TRANSACTION_ID"] = transaction_id
    return fields


class IdTagFilter(logging.Filter):
    """Renders the :class:`IdTag` arguments of every record a handler emits.

    The arguments themselves are replaced, not just the message: systemd's JournalHandler
    also sends ``CODE_ARGS=str(record.args)``, which would otherwise carry the clear tag.
    """

    def __init__(self, policy: IdTagPolicy, key: bytes = b"") -> None:
        super().__init__()
        if policy is IdTagPolicy.HASH and not key:
            raise ValueError("hashing idTags needs a key")
        self.policy = policy
        self._key = key

    def render(self, tag: str) -> str:
        if self.policy is IdTagPolicy.CLEAR:
            return tag
        if self.policy is IdTagPolicy.MASKED:
            return mask_id_tag(tag)
        # OCPP compares idTags case-insensitively: one card, one hash.
        digest = hmac.new(self._key, tag.casefold().encode("utf-8"), hashlib.sha256)
        return "#" + digest.hexdigest()[:HASH_HEX_DIGITS]

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and any(isinstance(a, IdTag) for a in args):
            rendered = tuple(self.render(a.value) if isinstance(a, IdTag) else a for a in args)
            record.args = rendered
            record.ID_TAG = next(
                r for a, r in zip(args, rendered, strict=True) if isinstance(a, IdTag)
            )
        return True
