"""Where the log goes (journal, journal stream, stderr) and how idTags appear in it."""

from __future__ import annotations

import io
import logging
import os
import socket
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from evse_daemon import cli
from evse_daemon.config import parse_config
from evse_daemon.logfields import IdTag, IdTagFilter, IdTagPolicy, journal_fields, mask_id_tag
from evse_daemon.logsetup import (
    ID_TAG_KEY_FILE,
    PriorityPrefixFormatter,
    id_tag_filter,
    make_handler,
    read_id_tag_key,
    stream_is_journal,
)
from systemd import journal  # the `systemd` extra, installed by scripts/bootstrap --test
from tests.harness import write_config

KEY = bytes(range(32))


def _record(msg: str, *args: object, level: int = logging.INFO, **extra: object) -> Any:
    record = logging.LogRecord("evse_daemon.app", level, __file__, 1, msg, args, None)
    record.__dict__.update(extra)
    return record


# --- idTags -------------------------------------------------------------------------------------


def test_hashed_id_tags_are_stable_per_key_and_case_insensitive() -> None:
    tags = IdTagFilter(IdTagPolicy.HASH, KEY)
    hashed = tags.render("04A1B2C3")
    assert hashed.startswith("#") and len(hashed) == 13
    assert "04A1B2C3" not in hashed
    assert tags.render("04a1b2c3") == hashed  # OCPP compares idTags case-insensitively
    assert tags.render("04A1B2C4") != hashed
    # Another charger (another key): another hash, so logs do not link cards across sites.
    assert IdTagFilter(IdTagPolicy.HASH, bytes(32)).render("04A1B2C3") != hashed
    with pytest.raises(ValueError):
        IdTagFilter(IdTagPolicy.HASH)


def test_masked_and_clear_id_tags() -> None:
    assert mask_id_tag("04A1B2C3") == "******C3"
    assert mask_id_tag("0123456789ABCDEF0123") == "****************0123"
    assert mask_id_tag("ABC") == "***"
    assert IdTagFilter(IdTagPolicy.MASKED).render("04A1B2C3") == "******C3"
    assert IdTagFilter(IdTagPolicy.CLEAR).render("04A1B2C3") == "04A1B2C3"
    # A record that reaches a handler without the filter never shows the tag in clear.
    assert str(IdTag("04A1B2C3")) == "******C3"


def test_filter_renders_the_arguments_and_sets_the_id_tag_field() -> None:
    record = _record("card %s at connector %d", IdTag("04A1B2C3"), 1)
    assert IdTagFilter(IdTagPolicy.MASKED).filter(record)
    assert record.getMessage() == "card ******C3 at connector 1"
    assert record.args == ("******C3", 1)  # what JournalHandler sends as CODE_ARGS=
    assert record.ID_TAG == "******C3"
    plain = _record("connector %d: Available", 1)
    assert IdTagFilter(IdTagPolicy.MASKED).filter(plain)
    assert not hasattr(plain, "ID_TAG")


# --- the per-install key --------------------------------------------------------------------


def test_the_hash_key_is_made_once_and_kept(tmp_path: Path) -> None:
    config = parse_config(write_config(tmp_path, "ws://127.0.0.1:9/ocpp").read_text())
    first, warning = id_tag_filter(config)
    assert warning is None
    key_file = tmp_path / "state" / ID_TAG_KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert list(key_file.parent.iterdir()) == [key_file]  # no temporary file left behind
    again, _ = id_tag_filter(config)
    assert again.render("04A1B2C3") == first.render("04A1B2C3")  # across restarts
    assert read_id_tag_key(tmp_path / "state") == key_file.read_bytes()


def test_an_unusable_key_is_replaced_for_the_run_never_by_clear_text(tmp_path: Path) -> None:
    text = write_config(tmp_path, "ws://127.0.0.1:9/ocpp").read_text()
    (tmp_path / "not-a-dir").write_text("")
    config = parse_config(text.replace(f"{tmp_path}/state", f"{tmp_path}/not-a-dir/state"))
    tags, warning = id_tag_filter(config)
    assert warning is not None and "for this run only" in warning
    assert tags.policy is IdTagPolicy.HASH
    assert tags.render("04A1B2C3").startswith("#")


def test_the_policy_comes_from_the_config(tmp_path: Path) -> None:
    text = write_config(tmp_path, "ws://127.0.0.1:9/ocpp").read_text()
    config = parse_config(text.replace('level = "DEBUG"', 'level = "DEBUG"\nid_tag = "masked"'))
    assert config.logging.id_tag == "masked"
    tags, _ = id_tag_filter(config)
    assert tags.policy is IdTagPolicy.MASKED
    assert not (tmp_path / "state").exists()  # no key needed, none made


# --- where the records go ---------------------------------------------------------------------


@pytest.fixture
def stream(tmp_path: Path) -> Iterator[io.TextIOWrapper]:
    with (tmp_path / "stderr").open("w+") as f:
        yield f


def _journal_stream_of(f: io.TextIOWrapper) -> dict[str, str]:
    st = os.fstat(f.fileno())
    return {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}


def test_journal_stream_must_be_this_stream(stream: io.TextIOWrapper, tmp_path: Path) -> None:
    assert stream_is_journal(_journal_stream_of(stream), stream)
    assert not stream_is_journal({}, stream)
    with (tmp_path / "other").open("w") as other:
        # Inherited from a service that started us with its stderr elsewhere.
        assert not stream_is_journal(_journal_stream_of(other), stream)
    assert not stream_is_journal({"JOURNAL_STREAM": "garbage"}, stream)


def test_outside_systemd_lines_carry_a_timestamp(stream: io.TextIOWrapper) -> None:
    handler = make_handler({}, stream)
    handler.emit(_record("connector %d: Available", 1))
    stream.seek(0)
    assert stream.read().endswith(" INFO evse_daemon.app: connector 1: Available\n")


def test_journal_stream_without_journald_gets_priority_prefixes(
    stream: io.TextIOWrapper, tmp_path: Path
) -> None:
    # systemd-python is installed, but there is no journald socket: JournalHandler would
    # drop every message silently, so the stream is used.
    handler = make_handler(
        _journal_stream_of(stream), stream, journal_socket=str(tmp_path / "no-journal")
    )
    assert isinstance(handler.formatter, PriorityPrefixFormatter)
    handler.emit(_record("meter failure", level=logging.ERROR))
    handler.emit(_record("contactor opened"))
    handler.emit(_record("detail", level=logging.DEBUG))
    stream.seek(0)
    assert stream.read().splitlines() == [
        "<3>evse_daemon.app: meter failure",
        "<6>evse_daemon.app: contactor opened",
        "<7>evse_daemon.app: detail",
    ]


def test_priority_prefix_on_every_line_of_a_traceback() -> None:
    formatter = PriorityPrefixFormatter("%(message)s")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    lines = formatter.format(record).splitlines()
    assert len(lines) > 2 and all(line.startswith("<3>") for line in lines)


def test_journald_gets_structured_fields_and_no_clear_id_tag(
    stream: io.TextIOWrapper, tmp_path: Path
) -> None:
    sent: list[tuple[str, dict[str, Any]]] = []

    def capture(MESSAGE: str, **fields: Any) -> None:  # journal.send's signature
        sent.append((MESSAGE, fields))

    def journal_handler(**fields: Any) -> logging.Handler:
        # systemd-python's own handler; only the last step (the datagram to journald) is
        # replaced, since journald's socket path is fixed.
        return journal.JournalHandler(sender_function=capture, **fields)

    journald = tmp_path / "journal.socket"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(journald))
        handler = make_handler(
            _journal_stream_of(stream),
            stream,
            journal_socket=str(journald),
            journal_handler=journal_handler,
        )
    assert isinstance(handler, journal.JournalHandler)
    handler.addFilter(IdTagFilter(IdTagPolicy.HASH, KEY))
    logger = logging.getLogger("evse_daemon.test_journal")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        logger.warning(
            "connector %d: transaction %d started for %s",
            1,
            7,
            IdTag("04A1B2C3"),
            extra=journal_fields(connector=1, transaction_id=7),
        )
    finally:
        logger.removeHandler(handler)
    [(message, fields)] = sent
    hashed = IdTagFilter(IdTagPolicy.HASH, KEY).render("04A1B2C3")
    assert message == f"evse_daemon.test_journal: connector 1: transaction 7 started for {hashed}"
    assert fields["CONNECTOR"] == 1
    assert fields["TRANSACTION_ID"] == 7
    assert fields["ID_TAG"] == hashed
    assert fields["PRIORITY"] == "4"
    assert fields["SYSLOG_IDENTIFIER"] == "evse-daemon"
    assert not any("04A1B2C3" in str(value) for value in fields.values())
    assert stream.tell() == 0  # nothing went to the stream


def test_id_tag_hash_command_finds_a_card_in_the_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_path = write_config(tmp_path, "ws://127.0.0.1:9/ocpp")
    assert cli.main(["id-tag-hash", "--config", str(config_path), "04A1B2C3"]) == 1
    assert "no idTag hash key" in capsys.readouterr().err  # the daemon has not run yet
    tags, _ = id_tag_filter(parse_config(config_path.read_text()))  # as the daemon starts
    assert cli.main(["id-tag-hash", "--config", str(config_path), "04A1B2C3", "X1"]) == 0
    assert capsys.readouterr().out.split() == [tags.render("04A1B2C3"), tags.render("X1")]
