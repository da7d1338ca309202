"""drivers.rfid without a port: framing, idTag formats, debouncing and option checks."""

from __future__ import annotations

import pytest

from drivers.rfid import (
    Pn532Frame,
    Pn532FrameParser,
    Rdm6300Parser,
    format_id_tag,
    pn532_frame,
    pn532_from_options,
    rdm6300_from_options,
    rdm6300_id_tag,
)

# 0x02, "0A1B2C3D4E", checksum 0A^1B^2C^3D^4E = 0x4E, 0x03
RDM_GOOD = b"\x020A1B2C3D4E4E\x03"
RDM_DATA = bytes.fromhex("0A1B2C3D4E")


# ------------------------------------------------------------------ RDM6300


def test_rdm6300_frame_byte_by_byte() -> None:
    parser = Rdm6300Parser()
    out = [data for b in RDM_GOOD for data in parser.feed(bytes([b]))]
    assert out == [RDM_DATA]
    assert parser.rejected == 0


def test_rdm6300_resynchronises_on_garbage_and_truncation() -> None:
    parser = Rdm6300Parser()
    stream = b"\xff\x00junk" + RDM_GOOD[:6] + b"\x13" + RDM_GOOD[:9] + RDM_GOOD + b"x" + RDM_GOOD
    assert parser.feed(stream) == [RDM_DATA, RDM_DATA]
    assert parser.rejected == 2  # the cut-off frames


@pytest.mark.parametrize(
    "bad",
    [
        b"\x020A1B2C3D4E4F\x03",  # checksum
        b"\x020A1B2C3D4G4E\x03",  # not hex
        b"\x020A1B2C3D4E4E\x04",  # no ETX
        b"\x020A1B2C3D4E4E",  # truncated, then the next frame
    ],
)
def test_rdm6300_bad_frames_are_dropped(bad: bytes) -> None:
    parser = Rdm6300Parser()
    assert parser.feed(bad + RDM_GOOD) == [RDM_DATA]
    assert parser.rejected >= 1


def test_rdm6300_lower_case_hex() -> None:
    assert Rdm6300Parser().feed(RDM_GOOD.lower()) == [RDM_DATA]


# ------------------------------------------------------------------ PN532


def test_pn532_frame_known_vector() -> None:
    # SAMConfiguration, normal mode: the frame from the PN532 user manual's examples.
    frame = pn532_frame(bytes.fromhex("d414010001"))
    assert frame == bytes.fromhex("0000ff05fbd4140100011600")


def test_pn532_parser_ack_nack_error_and_data() -> None:
    parser = Pn532FrameParser()
    stream = (
        bytes.fromhex("0000ff00ff00")  # ACK
        + bytes.fromhex("0000ffff0000")  # NACK
        + bytes.fromhex("0000ff01ff7f8100")  # error frame
        + bytes.fromhex("0000ff02fed5151600")  # SAMConfiguration answer
    )
    frames = [f for b in stream for f in parser.feed(bytes([b]))]
    assert frames == [
        Pn532Frame("ack"),
        Pn532Frame("nack"),
        Pn532Frame("error", tfi=0x7F),
        Pn532Frame("data", tfi=0xD5, data=b"\x15"),
    ]


def test_pn532_parser_resynchronises() -> None:
    parser = Pn532FrameParser()
    answer = pn532_frame(bytes.fromhex("d54b00"))
    cut = pn532_frame(bytes.fromhex("d54b0101000408040badc0de"))[:9]
    bad_dcs = bytearray(answer)
    bad_dcs[-2] ^= 1
    frames = parser.feed(b"\x55\x13\x00\xff\x07\x11" + cut + answer + bytes(bad_dcs) + answer)
    kinds = [f.kind for f in frames]
    assert kinds.count("data") == 2
    assert all(f.data == b"\x4b\x00" for f in frames if f.kind == "data")
    assert "bad" in kinds


# ------------------------------------------------------------------ idTag formats


@pytest.mark.parametrize(
    ("uid", "fmt", "tag"),
    [
        ("04a1b2c3", "hex", "04A1B2C3"),
        ("04a1b2c3", "hex-reversed", "C3B2A104"),
        ("04a1b2c3", "decimal", "0077705923"),
        ("00000001", "decimal", "0000000001"),
        ("04112233445566", "decimal", "01144738493519206"),
        ("112233445566778899aa", "hex", "112233445566778899AA"),
    ],
)
def test_format_id_tag(uid: str, fmt: str, tag: str) -> None:
    assert format_id_tag(bytes.fromhex(uid), fmt) == tag  # type: ignore[arg-type]


def test_format_id_tag_refuses_more_than_20_characters() -> None:
    with pytest.raises(ValueError, match="20"):
        format_id_tag(bytes(10), "decimal")


def test_rdm6300_id_tag() -> None:
    assert rdm6300_id_tag(RDM_DATA, "hex") == "0A1B2C3D4E"
    assert rdm6300_id_tag(RDM_DATA, "hex-reversed") == "4E3D2C1B0A"
    assert rdm6300_id_tag(RDM_DATA, "decimal") == "0455884110"


# ------------------------------------------------------------------ factories


def test_factories_apply_the_defaults() -> None:
    rdm = rdm6300_from_options({"device": "/dev/ttyS0"})
    assert (rdm.device, rdm.baudrate, rdm.id_tag_format, rdm.repeat_s) == (
        "/dev/ttyS0",
        9600,
        "hex",
        2.0,
    )
    pn = pn532_from_options({"device": "/dev/ttyUSB0", "id_tag_format": "decimal"})
    assert (pn.baudrate, pn.id_tag_format, pn.repeat_s, pn.poll_interval_s) == (
        115200,
        "decimal",
        2.0,
        0.2,
    )


@pytest.mark.parametrize(
    ("factory", "options", "message"),
    [
        (rdm6300_from_options, {}, "'device'.*required"),
        (rdm6300_from_options, {"device": ""}, "'device'"),
        (rdm6300_from_options, {"device": "/dev/x", "baudrate": 115200}, "'baudrate'"),
        (rdm6300_from_options, {"device": "/dev/x", "id_tag_format": "HEX"}, "'id_tag_format'"),
        (rdm6300_from_options, {"device": "/dev/x", "repeat_s": 0}, "'repeat_s'"),
        (rdm6300_from_options, {"device": "/dev/x", "repeat_s": True}, "'repeat_s'"),
        (rdm6300_from_options, {"device": "/dev/x", "poll_interval_s": 1}, "poll_interval_s"),
        (pn532_from_options, {"device": "/dev/x", "baudrate": 19200}, "'baudrate'"),
        (pn532_from_options, {"device": "/dev/x", "poll_interval_s": "1"}, "'poll_interval_s'"),
        (pn532_from_options, {"device": "/dev/x", "poll_interval_s": 0.01}, "'poll_interval_s'"),
        (pn532_from_options, {"device": 3}, "'device'"),
    ],
)
def test_factories_refuse_bad_options(
    factory: object, options: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        factory(options)  # type: ignore[operator]
