"""Tests of the TCPLS frame codec (tcpls.wire.frames): vectors, properties, malformed input."""

from __future__ import annotations

import ipaddress
import json
import random
import struct
import typing
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcpls.errors import AlertDescription, DecodeError, IllegalParameter, ProtocolError
from tcpls.wire import extensions
from tcpls.wire.frames import (
    ACK_SIZE,
    CONNECTION_RESET_SIZE,
    MAX_RECORD_PAYLOAD,
    MAX_STREAM_DATA,
    NEW_ADDRESS_V4_SIZE,
    NEW_ADDRESS_V6_SIZE,
    NEW_TOKEN_SIZE,
    PADDING_SIZE,
    PING_SIZE,
    REMOVE_ADDRESS_SIZE,
    STREAM_CHANGE_SIZE,
    STREAM_HEADER_SIZE,
    TOKEN_SIZE,
    Ack,
    ConnectionReset,
    Frame,
    FrameType,
    NewAddress,
    NewToken,
    Padding,
    Ping,
    RemoveAddress,
    StreamChange,
    StreamFrame,
    encode_frame,
    encode_frames,
    encode_stream_header,
    frame_size,
    is_ack_eliciting,
    is_retransmittable,
    parse_frames,
    write_stream_header_into,
)

VECTORS_PATH = Path(__file__).resolve().parent.parent / "vectors" / "vectors.json"
SHARED_VECTORS_PATH = Path("/work/shared/spec/vectors.json")
VECTORS: dict[str, Any] = json.loads(VECTORS_PATH.read_text())

U8, U16, U32, U64 = 1 << 8, 1 << 16, 1 << 32, 1 << 64


def frame_from_vector(vector: dict[str, Any]) -> Frame:
    """The frame value that a vector of ``vectors.json`` describes."""
    kind, f = vector["frame"], vector["fields"]
    if kind == "padding":
        return Padding()
    if kind == "ping":
        return Ping()
    if kind == "stream":
        data = bytes.fromhex(f["data_hex"])
        assert len(data) == f["length"]
        return StreamFrame(f["stream_id"], f["offset"], data, f["fin"])
    if kind == "ack":
        return Ack(f["connection_id"], f["highest_record_sequence"])
    if kind == "new_token":
        return NewToken(f["sequence"], bytes.fromhex(f["token_hex"]))
    if kind == "connection_reset":
        return ConnectionReset(f["connection_id"])
    if kind == "new_address":
        address = ipaddress.ip_address(f["address"])
        assert address.version == f["version"]
        return NewAddress(f["address_id"], address, f["port"])
    if kind == "remove_address":
        return RemoveAddress(f["address_id"])
    if kind == "stream_change":
        return StreamChange(f["next_record_stream_id"], f["next_offset"])
    raise AssertionError(f"unknown vector kind {kind}")


FRAME_VECTORS = VECTORS["frames"]
VECTOR_IDS = [f"{i}-{v['frame']}" for i, v in enumerate(FRAME_VECTORS)]
# Vectors of frames longer than one byte: cutting their first byte must be detected.
MULTIBYTE_VECTORS = [v for v in FRAME_VECTORS if len(v["hex"]) > 2]
MULTIBYTE_IDS = [f"{v['frame']}-{v['hex'][-8:]}" for v in MULTIBYTE_VECTORS]

INPUT_KINDS = ["bytes", "bytearray", "memoryview"]


def as_input(data: bytes, kind: str) -> bytes | bytearray | memoryview:
    if kind == "bytes":
        return data
    if kind == "bytearray":
        return bytearray(data)
    return memoryview(data)


def merge_paddings(frames: list[Frame]) -> list[Frame]:
    """``frames`` with each run of adjacent Padding values merged, as parse_frames returns."""
    merged: list[Frame] = []
    for frame in frames:
        if isinstance(frame, Padding) and merged and isinstance(merged[-1], Padding):
            merged[-1] = Padding(merged[-1].length + frame.length)
        else:
            merged.append(frame)
    return merged


# --------------------------------------------------------------------------- vectors


def test_vectors_copy_matches_shared_spec() -> None:
    if not SHARED_VECTORS_PATH.exists():
        pytest.skip("the shared spec directory is not available on this machine")
    assert json.loads(SHARED_VECTORS_PATH.read_text()) == VECTORS


@pytest.mark.parametrize("vector", FRAME_VECTORS, ids=VECTOR_IDS)
def test_vector_encodes_exactly(vector: dict[str, Any]) -> None:
    frame = frame_from_vector(vector)
    assert encode_frame(frame).hex() == vector["hex"]
    assert encode_frames([frame]).hex() == vector["hex"]
    assert frame_size(frame) == len(vector["hex"]) // 2


@pytest.mark.parametrize("kind", INPUT_KINDS)
@pytest.mark.parametrize("vector", FRAME_VECTORS, ids=VECTOR_IDS)
def test_vector_parses_to_its_fields(vector: dict[str, Any], kind: str) -> None:
    frames = parse_frames(as_input(bytes.fromhex(vector["hex"]), kind))
    assert frames == [frame_from_vector(vector)]
    assert type(frames[0]) is type(frame_from_vector(vector))


@pytest.mark.parametrize("kind", INPUT_KINDS)
def test_record_content_example(kind: str) -> None:
    example = VECTORS["record_content_example"]
    content = bytes.fromhex(example["hex"])
    frames = parse_frames(as_input(content, kind))
    assert frames == [StreamFrame(0, 0, b"hello"), Ack(0, 5), Padding(2)]
    assert encode_frames(frames) == content
    assert sum(frame_size(f) for f in frames) == len(content)


def test_record_vectors_plaintext_parses() -> None:
    for record in VECTORS["records"]:
        frames = parse_frames(bytes.fromhex(record["plaintext_frames_hex"]))
        assert frames == [StreamFrame(0, 0, b"hello"), Ack(0, 5), Padding(2)]


# --------------------------------------------------------------------------- sizes and constants


def test_size_constants() -> None:
    assert MAX_RECORD_PAYLOAD == 16384
    assert STREAM_HEADER_SIZE == 15
    assert MAX_STREAM_DATA == 16369
    assert PADDING_SIZE == 1
    assert PING_SIZE == 1
    assert ACK_SIZE == 13
    assert TOKEN_SIZE == 32 == extensions.TOKEN_SIZE
    assert NEW_TOKEN_SIZE == 34
    assert CONNECTION_RESET_SIZE == 5
    assert NEW_ADDRESS_V4_SIZE == 9
    assert NEW_ADDRESS_V6_SIZE == 21
    assert REMOVE_ADDRESS_SIZE == 2
    assert STREAM_CHANGE_SIZE == 13


@pytest.mark.parametrize(
    ("frame", "size"),
    [
        (Padding(), 1),
        (Padding(700), 700),
        (Ping(), 1),
        (StreamFrame(1, 2, b""), 15),
        (StreamFrame(1, 2, b"abc", True), 18),
        (Ack(1, 2), 13),
        (NewToken(1, bytes(32)), 34),
        (ConnectionReset(1), 5),
        (NewAddress(0, ipaddress.IPv4Address("192.0.2.1"), 1), 9),
        (NewAddress(0, ipaddress.IPv6Address("2001:db8::2"), 1), 21),
        (RemoveAddress(3), 2),
        (StreamChange(4, 5), 13),
    ],
)
def test_frame_sizes(frame: Frame, size: int) -> None:
    assert frame_size(frame) == size
    assert len(encode_frame(frame)) == size


def test_full_stream_frame_fills_a_record() -> None:
    data = bytes(range(256)) * 63 + bytes(MAX_STREAM_DATA - 256 * 63)
    frame = StreamFrame(8, 123456789, data, fin=True)
    encoded = encode_frame(frame)
    assert len(encoded) == MAX_RECORD_PAYLOAD == frame_size(frame)
    assert encoded[:MAX_STREAM_DATA] == data
    assert parse_frames(encoded) == [frame]


def test_stream_type_byte_carries_fin() -> None:
    assert encode_frame(StreamFrame(0, 0, b"x"))[-1] == 0x02 == FrameType.STREAM
    assert encode_frame(StreamFrame(0, 0, b"x", True))[-1] == 0x03 == FrameType.STREAM_FIN
    assert parse_frames(bytes.fromhex("0000000000000000000c0000000303")) == [
        StreamFrame(3, 12, b"", fin=True)
    ]


def test_frame_type_values() -> None:
    assert [t.value for t in FrameType] == list(range(10))
    assert [t.name for t in FrameType] == [
        "PADDING",
        "PING",
        "STREAM",
        "STREAM_FIN",
        "ACK",
        "NEW_TOKEN",
        "CONNECTION_RESET",
        "NEW_ADDRESS",
        "REMOVE_ADDRESS",
        "STREAM_CHANGE",
    ]


# --------------------------------------------------------------------------- properties

ALL_KINDS_OF_FRAMES: list[Frame] = [
    Padding(),
    Ping(),
    StreamFrame(0, 0, b"d"),
    Ack(0, 0),
    NewToken(1, bytes(32)),
    ConnectionReset(0),
    NewAddress(0, ipaddress.IPv4Address("192.0.2.1"), 443),
    RemoveAddress(0),
    StreamChange(0, 0),
]


@pytest.mark.parametrize(
    ("frame", "eliciting", "retransmittable"),
    [
        (Padding(), False, False),
        (Padding(40), False, False),
        (Ping(), True, False),
        (StreamFrame(0, 0, b"d"), True, True),
        (StreamFrame(0, 0, b"", True), True, True),
        (Ack(0, 0), False, False),
        (NewToken(1, bytes(32)), True, True),
        (ConnectionReset(0), True, True),
        (NewAddress(0, ipaddress.IPv6Address("::1"), 443), True, True),
        (RemoveAddress(0), True, True),
        (StreamChange(0, 0), True, False),
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, bool) else str(v),
)
def test_ack_eliciting_and_retransmittable(
    frame: Frame, eliciting: bool, retransmittable: bool
) -> None:
    assert is_ack_eliciting(frame) is eliciting
    assert is_retransmittable(frame) is retransmittable


def test_every_frame_class_is_covered_by_the_tables() -> None:
    assert {type(f) for f in ALL_KINDS_OF_FRAMES} == set(typing.get_args(Frame))
    for frame in ALL_KINDS_OF_FRAMES:
        is_ack_eliciting(frame)
        is_retransmittable(frame)


def test_non_frames_are_rejected() -> None:
    for bad in [(0, 5), "ack", None]:
        with pytest.raises(TypeError):
            is_ack_eliciting(bad)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            is_retransmittable(bad)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            frame_size(bad)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            encode_frame(bad)  # type: ignore[arg-type]


def test_frames_of_different_types_are_never_equal() -> None:
    assert Ack(0, 5) != StreamChange(0, 5)
    assert not Ack(0, 5) == StreamChange(0, 5)  # noqa: SIM201
    assert Padding(1) != RemoveAddress(1) != ConnectionReset(1)
    assert Ack(0, 5) != (0, 5)
    assert Ack(0, 5) == Ack(0, 5)
    assert not Ack(0, 5) != Ack(0, 5)  # noqa: SIM202
    assert len({RemoveAddress(1), ConnectionReset(1), Padding(1), RemoveAddress(1)}) == 3
    assert hash(Ack(1, 2)) == hash(Ack(1, 2))
    # Stream data compares by content whatever its buffer type.
    assert StreamFrame(0, 0, memoryview(b"ab")) == StreamFrame(0, 0, b"ab")


def test_stream_frame_repr_is_short() -> None:
    assert repr(StreamFrame(1, 2, b"hi", True)) == (
        "StreamFrame(stream_id=1, offset=2, data=b'hi', fin=True)"
    )
    long_repr = repr(StreamFrame(1, 2, memoryview(bytes(MAX_STREAM_DATA))))
    assert "<16369 bytes>" in long_repr
    assert len(long_repr) < 200


# --------------------------------------------------------------------------- data path helpers


@given(
    stream_id=st.integers(0, U32 - 1),
    offset=st.integers(0, U64 - 1),
    data=st.binary(max_size=64),
    fin=st.booleans(),
)
def test_stream_header_helpers_match_encode_frame(
    stream_id: int, offset: int, data: bytes, fin: bool
) -> None:
    expected = encode_frame(StreamFrame(stream_id, offset, data, fin))
    header = encode_stream_header(stream_id, offset, len(data), fin)
    assert len(header) == STREAM_HEADER_SIZE
    assert data + header == expected

    buf = bytearray(3 + len(data) + STREAM_HEADER_SIZE + 2)
    buf[3 : 3 + len(data)] = data
    end = write_stream_header_into(buf, 3 + len(data), stream_id, offset, len(data), fin)
    assert end == 3 + len(data) + STREAM_HEADER_SIZE
    assert bytes(buf[3:end]) == expected
    assert buf[:3] == bytes(3) and buf[end:] == bytes(2)

    view = memoryview(bytearray(len(expected)))
    view[: len(data)] = data
    assert write_stream_header_into(view, len(data), stream_id, offset, len(data), fin) == len(
        expected
    )
    assert view.tobytes() == expected


def test_data_path_helpers_leave_range_checks_to_struct() -> None:
    with pytest.raises(struct.error):
        encode_stream_header(U32, 0, 0, False)
    with pytest.raises(struct.error):
        write_stream_header_into(bytearray(15), 0, 0, 0, U16, False)


# --------------------------------------------------------------------------- encode validation


IPV4 = ipaddress.IPv4Address("192.0.2.1")


@pytest.mark.parametrize(
    "frame",
    [
        StreamFrame(U32, 0, b""),
        StreamFrame(-1, 0, b""),
        StreamFrame(0, U64, b""),
        StreamFrame(0, -1, b""),
        StreamFrame(0, 0, bytes(U16)),
        Ack(U32, 0),
        Ack(0, U64),
        Ack(-1, 0),
        NewToken(0, bytes(31)),
        NewToken(0, bytes(33)),
        NewToken(256, bytes(32)),
        NewToken(-1, bytes(32)),
        ConnectionReset(U32),
        NewAddress(256, IPV4, 1),
        NewAddress(0, IPV4, U16),
        NewAddress(0, IPV4, -1),
        RemoveAddress(256),
        RemoveAddress(-1),
        StreamChange(U32, 0),
        StreamChange(0, U64),
        Padding(0),
        Padding(-3),
    ],
    ids=repr,
)
def test_encode_rejects_out_of_range_values(frame: Frame) -> None:
    with pytest.raises(ValueError):
        encode_frame(frame)
    with pytest.raises(ValueError):
        encode_frames([Ping(), frame])


@pytest.mark.parametrize(
    "frame",
    [
        StreamFrame(0, 0, "text"),  # type: ignore[arg-type]
        StreamFrame(1.5, 0, b""),  # type: ignore[arg-type]
        Ack(True, 0),
        NewToken(0, "x" * 32),  # type: ignore[arg-type]
        NewAddress(0, "192.0.2.1", 1),  # type: ignore[arg-type]
    ],
    ids=repr,
)
def test_encode_rejects_wrong_types(frame: Frame) -> None:
    with pytest.raises(TypeError):
        encode_frame(frame)


def test_encode_accepts_bytes_like_data() -> None:
    expected = encode_frame(StreamFrame(1, 2, b"abc"))
    assert encode_frame(StreamFrame(1, 2, bytearray(b"abc"))) == expected
    assert encode_frame(StreamFrame(1, 2, memoryview(b"abc"))) == expected
    assert encode_frame(NewToken(1, bytearray(32))) == encode_frame(NewToken(1, bytes(32)))  # type: ignore[arg-type]
    assert type(encode_frame(StreamFrame(1, 2, memoryview(b"abc")))) is bytes
    assert type(encode_frame(Ack(1, 2))) is bytes


def test_scoped_ipv6_address_loses_its_scope() -> None:
    frame = NewAddress(2, ipaddress.IPv6Address("fe80::1%eth0"), 8443)
    assert parse_frames(encode_frame(frame)) == [
        NewAddress(2, ipaddress.IPv6Address("fe80::1"), 8443)
    ]


# --------------------------------------------------------------------------- parsing details


def test_empty_record_has_no_frames() -> None:
    assert parse_frames(b"") == []
    assert parse_frames(bytearray()) == []
    assert parse_frames(memoryview(b"")) == []


def test_stream_data_type_follows_the_input_type() -> None:
    content = encode_frames([StreamFrame(4, 0, b"payload"), Ack(0, 1)])
    for kind, expected_type in [
        ("bytes", bytes),
        ("bytearray", bytes),
        ("memoryview", memoryview),
    ]:
        frames = parse_frames(as_input(content, kind))
        assert isinstance(frames[0], StreamFrame)
        assert type(frames[0].data) is expected_type
        assert frames[0].data == b"payload"


def test_memoryview_input_is_not_copied() -> None:
    buffer = bytearray(encode_frame(StreamFrame(4, 0, b"payload")))
    view = memoryview(buffer)
    (frame,) = parse_frames(view)
    assert isinstance(frame, StreamFrame) and isinstance(frame.data, memoryview)
    buffer[0:3] = b"PAY"  # the caller reuses its buffer: the parsed data changes with it
    assert frame.data == b"PAYload"
    frame.data.release()
    view.release()


def test_bytearray_input_is_not_left_locked() -> None:
    buffer = bytearray(encode_frames([StreamFrame(4, 0, b"payload"), Ack(0, 1)]))
    parse_frames(buffer)
    buffer.extend(b"more")  # would raise BufferError if an export were still alive
    buffer[:] = b"\x0a"
    with pytest.raises(DecodeError):
        parse_frames(buffer)
    del buffer[:]  # still not locked after an error


def test_memoryview_of_other_formats_is_read_as_bytes() -> None:
    content = encode_frames([StreamFrame(1, 0, b"abcd"), Ack(3, 4)])
    assert len(content) % 4 == 0
    for fmt in ["b", "c", "I"]:
        view = memoryview(bytearray(content)).cast(fmt)
        assert parse_frames(view) == [StreamFrame(1, 0, b"abcd"), Ack(3, 4)]
    square = memoryview(bytearray(content)).cast("B", (2, len(content) // 2))
    assert parse_frames(square) == [StreamFrame(1, 0, b"abcd"), Ack(3, 4)]


def test_memoryview_slice_of_a_larger_buffer() -> None:
    content = encode_frames([StreamFrame(1, 0, b"abcd"), Ping()])
    buf = b"\x07\x07" + content + b"\x0a"
    assert parse_frames(memoryview(buf)[2:-1]) == [StreamFrame(1, 0, b"abcd"), Ping()]


@pytest.mark.parametrize(
    "run", [1, 2, 3, 4, 5, 6, 7, 8, 16, 17, 21, 22, 64, 1000, 16384, 16385, 50000]
)
def test_padding_runs_collapse(run: int) -> None:
    assert parse_frames(bytes(run)) == [Padding(run)]
    content = encode_frames([StreamFrame(0, 0, b"\x00\x00"), Padding(run), Ping(), Padding(run)])
    assert parse_frames(content) == [
        StreamFrame(0, 0, b"\x00\x00"),
        Padding(run),
        Ping(),
        Padding(run),
    ]
    assert encode_frame(Padding(run)) == bytes(run)


def test_padding_between_many_frames() -> None:
    frames: list[Frame] = []
    for i in range(300):
        frames += [Ping(), Padding(i % 5 + 1), RemoveAddress(0)]
    content = encode_frames(frames)
    assert parse_frames(content) == frames


def test_stream_data_ending_in_zeros_is_not_padding() -> None:
    frames: list[Frame] = [Padding(3), StreamFrame(0, 0, bytes(40)), Padding(5), Ack(0, 0)]
    assert parse_frames(encode_frames(frames)) == frames


# --------------------------------------------------------------------------- malformed (design:
# Alerts)


@pytest.mark.parametrize("frame_type", range(0x0A, 0x100), ids=lambda t: f"0x{t:02x}")
def test_unknown_frame_type(frame_type: int) -> None:
    with pytest.raises(DecodeError, match=f"unknown TCPLS frame type 0x{frame_type:02x}") as info:
        parse_frames(encode_frame(StreamFrame(0, 0, b"ok")) + bytes([frame_type]))
    assert info.value.alert == AlertDescription.decode_error == 50


def test_unknown_frame_type_before_valid_frames() -> None:
    with pytest.raises(DecodeError) as info:
        parse_frames(bytes([0xFF]) + encode_frames([Ping(), Ack(1, 1), Padding(3)]))
    assert info.value.alert == 50


@pytest.mark.parametrize("kind", INPUT_KINDS)
@pytest.mark.parametrize("vector", MULTIBYTE_VECTORS, ids=MULTIBYTE_IDS)
def test_frame_truncated_at_its_start(vector: dict[str, Any], kind: str) -> None:
    encoded = bytes.fromhex(vector["hex"])
    for cut in range(1, len(encoded)):
        with pytest.raises(DecodeError) as info:
            parse_frames(as_input(encoded[cut:], kind))
        assert info.value.alert == AlertDescription.decode_error
        assert type(info.value) is DecodeError


@pytest.mark.parametrize(
    "frame",
    [
        StreamFrame(1, 0, b""),
        Ack(1, 1),
        NewToken(1, bytes(32)),
        ConnectionReset(1),
        NewAddress(1, ipaddress.IPv4Address("192.0.2.1"), 1),
        NewAddress(1, ipaddress.IPv6Address("2001:db8::1"), 1),
        RemoveAddress(1),
        StreamChange(1, 1),
    ],
    ids=lambda f: type(f).__name__,
)
def test_truncation_message_names_the_frame(frame: Frame) -> None:
    with pytest.raises(DecodeError, match=r"truncated .* frame"):
        parse_frames(encode_frame(frame)[1:])


def test_stream_length_longer_than_available() -> None:
    content = b"x" * 50 + encode_stream_header(2, 0, 100, False)
    with pytest.raises(DecodeError, match="Length 100 exceeds the 50 bytes") as info:
        parse_frames(content)
    assert info.value.alert == 50
    with pytest.raises(DecodeError):
        parse_frames(encode_stream_header(2, 0, 1, True))
    with pytest.raises(DecodeError):
        parse_frames(b"\xff" * 15)  # Length 65535 in the 0xff..ff header (type 0xff unknown)
    with pytest.raises(DecodeError, match="Length 65535"):
        parse_frames(b"\xff" * 14 + b"\x03")


@pytest.mark.parametrize("version", [0, 1, 5, 16, 41, 255])
def test_new_address_bad_version_is_illegal_parameter(version: int) -> None:
    v4 = bytearray(encode_frame(NewAddress(0, ipaddress.IPv4Address("10.10.2.2"), 8443)))
    v4[-3] = version
    with pytest.raises(IllegalParameter, match=f"Address Version {version}") as info:
        parse_frames(bytes(v4))
    assert info.value.alert == AlertDescription.illegal_parameter == 47
    # Even when there are not enough bytes for an address (the version is checked first).
    with pytest.raises(IllegalParameter):
        parse_frames(bytes([version, 0, 7]))


def test_new_address_version_5_vector_variant() -> None:
    with pytest.raises(IllegalParameter) as info:
        parse_frames(bytes.fromhex("20fb0a0a0202050007"))
    assert info.value.alert == 47


def test_new_address_version_mismatching_length() -> None:
    # A v6 version byte on a v4-sized frame at the start of a record is truncated.
    with pytest.raises(DecodeError):
        parse_frames(bytes.fromhex("20fb0a0a0202060007"))
    with pytest.raises(DecodeError):
        parse_frames(bytes.fromhex("0007"))


def test_truncated_frame_inside_a_record_borrows_bytes() -> None:
    # Backward parsing only detects truncation at the record's start: a short frame in the
    # middle takes bytes from the frame before it (here a Ping's type byte becomes an ID).
    content = encode_frame(Ping()) + encode_frame(ConnectionReset(0xAA020304))[1:]
    assert parse_frames(content) == [ConnectionReset(0x01020304)]


# --------------------------------------------------------------------------- hypothesis

u32s = st.integers(0, U32 - 1)
u64s = st.integers(0, U64 - 1)
ip_addresses = st.one_of(
    st.integers(0, (1 << 32) - 1).map(ipaddress.IPv4Address),
    st.integers(0, (1 << 128) - 1).map(ipaddress.IPv6Address),
)


def stream_frames(max_data: int = 256) -> st.SearchStrategy[StreamFrame]:
    return st.builds(StreamFrame, u32s, u64s, st.binary(max_size=max_data), st.booleans())


def frames_strategy(max_data: int = 256) -> st.SearchStrategy[Frame]:
    return st.one_of(
        st.builds(Padding, st.integers(1, 300)),
        st.just(Ping()),
        stream_frames(max_data),
        st.builds(Ack, u32s, u64s),
        st.builds(NewToken, st.integers(0, 255), st.binary(min_size=32, max_size=32)),
        st.builds(ConnectionReset, u32s),
        st.builds(NewAddress, st.integers(0, 255), ip_addresses, st.integers(0, U16 - 1)),
        st.builds(RemoveAddress, st.integers(0, 255)),
        st.builds(StreamChange, u32s, u64s),
    )


@given(frame=frames_strategy(), kind=st.sampled_from(INPUT_KINDS))
def test_single_frame_round_trip(frame: Frame, kind: str) -> None:
    encoded = encode_frame(frame)
    assert len(encoded) == frame_size(frame)
    parsed = parse_frames(as_input(encoded, kind))
    assert parsed == [frame]
    assert [type(f) for f in parsed] == [type(frame)]
    assert encode_frames(parsed) == encoded


@given(
    frames=st.lists(frames_strategy(), max_size=40).filter(
        lambda fs: sum(frame_size(f) for f in fs) <= MAX_RECORD_PAYLOAD
    ),
    kind=st.sampled_from(INPUT_KINDS),
)
def test_record_round_trip(frames: list[Frame], kind: str) -> None:
    content = encode_frames(frames)
    assert len(content) == sum(frame_size(f) for f in frames) <= MAX_RECORD_PAYLOAD
    parsed = parse_frames(as_input(content, kind))
    assert parsed == merge_paddings(frames)
    assert [type(f) for f in parsed] == [type(f) for f in merge_paddings(frames)]
    assert encode_frames(parsed) == content


@given(
    seed=st.integers(0, 2**32),
    controls=st.lists(
        st.one_of(
            st.builds(Ack, u32s, u64s), st.just(Ping()), st.builds(Padding, st.integers(1, 40))
        ),
        max_size=20,
    ),
)
@settings(max_examples=50)
def test_full_record_of_stream_data_and_controls(seed: int, controls: list[Frame]) -> None:
    # The Stream frame takes all the room the control frames leave: exactly 16384 bytes.
    room = MAX_STREAM_DATA - sum(frame_size(f) for f in controls)
    data = random.Random(seed).randbytes(room)
    frames: list[Frame] = [StreamFrame(0, 1 << 40, data), *controls]
    content = encode_frames(frames)
    assert len(content) == MAX_RECORD_PAYLOAD
    assert parse_frames(memoryview(content)) == merge_paddings(frames)
    assert parse_frames(content) == merge_paddings(frames)


def check_parse_is_safe(content: bytes) -> None:
    """Parsing arbitrary bytes either succeeds or raises a decode_error/illegal_parameter."""
    for kind in INPUT_KINDS:
        try:
            frames = parse_frames(as_input(content, kind))
        except (DecodeError, IllegalParameter) as exc:
            assert isinstance(exc, ProtocolError)
            assert exc.alert in (AlertDescription.decode_error, AlertDescription.illegal_parameter)
        else:
            # A successful parse accounts for every byte and re-encodes identically.
            assert sum(frame_size(f) for f in frames) == len(content)
            assert encode_frames(frames) == content


@given(st.binary(max_size=600))
@settings(max_examples=500)
def test_random_bytes_parse_or_raise_protocol_errors(content: bytes) -> None:
    check_parse_is_safe(content)


@given(
    st.lists(
        st.one_of(
            st.binary(max_size=40),
            st.sampled_from([bytes([t]) for t in range(12)] + [b"\x00" * 9, b"\xff"]),
        ),
        max_size=30,
    )
)
@settings(max_examples=500)
def test_frame_like_bytes_parse_or_raise_protocol_errors(pieces: list[bytes]) -> None:
    check_parse_is_safe(b"".join(pieces))


@given(
    frames=st.lists(frames_strategy(max_data=64), min_size=1, max_size=10),
    data=st.data(),
)
@settings(max_examples=300)
def test_mutated_records_parse_or_raise_protocol_errors(
    frames: list[Frame], data: st.DataObject
) -> None:
    content = bytearray(encode_frames(frames))
    position = data.draw(st.integers(0, len(content) - 1))
    action = data.draw(st.sampled_from(["flip", "cut_start", "cut_end", "insert"]))
    if action == "flip":
        content[position] = data.draw(st.integers(0, 255))
    elif action == "cut_start":
        del content[:position]
    elif action == "cut_end":
        del content[position:]
    else:
        content[position:position] = data.draw(st.binary(min_size=1, max_size=4))
    check_parse_is_safe(bytes(content))
