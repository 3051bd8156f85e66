"""TCPLS frames (draft-piraux-tcpls-04 §5.2).

See the design notes: Frame layout, Stream frames, Records, Alerts, Addresses, Stream
Change and Padding.

The layout of each frame is documented in :mod:`tcpls.wire.layout`.

Backward parsing
================

A receiver cannot find the second frame without parsing the first one (the Stream frame's
length sits after its data), so the draft has the receiver parse a record **from its end**:
read the type byte at the end, then the fixed fields that precede it, then (for a Stream
frame) the data before them, and continue with the byte before the frame. Field bytes are
not reversed: each integer is read big-endian from the bytes that end at the cursor.
:func:`parse_frames` works this way and returns the frames in wire order (first frame of
the record first).

Two consequences of backward parsing are worth knowing:

* A record whose first frame is cut short is detected (a field would start before the
  record), but a frame in the middle of a record that is one byte short silently takes that
  byte from the frame before it; only the start of the record is a hard boundary.
* A Padding frame is a single 0x00 byte and records may be padded with thousands of them.
  :func:`parse_frames` collapses each run of consecutive Padding frames into **one**
  ``Padding(length=n)`` value without a Python loop per byte, and ``encode_frame(Padding(n))``
  writes ``n`` zero bytes, so a parsed record re-encodes to the same bytes.

Errors (design: Alerts): an unknown frame type, a truncated frame or a Stream length larger
than the bytes before its header raises :class:`~tcpls.errors.DecodeError`
(``decode_error``); a New Address with a version other than 4 or 6 raises
:class:`~tcpls.errors.IllegalParameter` (``illegal_parameter``). Encoding functions
validate the values given by local code and raise :class:`ValueError` (or
:class:`TypeError` for a value of the wrong type), except the two data-path helpers
:func:`encode_stream_header` and :func:`write_stream_header_into`, which leave range
checking to :mod:`struct`.

Frame values are :class:`typing.NamedTuple` instances. Unlike plain tuples, two frames are
equal only if they have the same type *and* the same fields (``Ack(0, 5)`` is not equal to
``StreamChange(0, 5)`` nor to ``(0, 5)``), and their hashes differ accordingly, so frames of
different types can share a set or a dict.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from typing import NamedTuple, TypeAlias

from tcpls.errors import DecodeError, IllegalParameter
from tcpls.wire.layout import (
    ACK_LAYOUT,
    ACK_SIZE,
    CONNECTION_RESET_LAYOUT,
    CONNECTION_RESET_SIZE,
    MAX_RECORD_PAYLOAD,
    MAX_STREAM_DATA,
    NEW_ADDRESS_V4_LAYOUT,
    NEW_ADDRESS_V4_SIZE,
    NEW_ADDRESS_V6_LAYOUT,
    NEW_ADDRESS_V6_SIZE,
    NEW_TOKEN_LAYOUT,
    NEW_TOKEN_SIZE,
    PADDING_SIZE,
    PING_SIZE,
    REMOVE_ADDRESS_SIZE,
    STREAM_CHANGE_LAYOUT,
    STREAM_CHANGE_SIZE,
    STREAM_HEADER_LAYOUT,
    STREAM_HEADER_SIZE,
    TOKEN_SIZE,
    FrameType,
    encode_stream_header,
    write_stream_header_into,
)

__all__ = [
    "ACK_SIZE",
    "CONNECTION_RESET_SIZE",
    "MAX_RECORD_PAYLOAD",
    "MAX_STREAM_DATA",
    "NEW_ADDRESS_V4_SIZE",
    "NEW_ADDRESS_V6_SIZE",
    "NEW_TOKEN_SIZE",
    "PADDING_SIZE",
    "PING_SIZE",
    "REMOVE_ADDRESS_SIZE",
    "STREAM_CHANGE_SIZE",
    "STREAM_HEADER_SIZE",
    "TOKEN_SIZE",
    "Ack",
    "ConnectionReset",
    "Frame",
    "FrameType",
    "NewAddress",
    "NewToken",
    "Padding",
    "Ping",
    "RemoveAddress",
    "StreamChange",
    "StreamData",
    "StreamFrame",
    "encode_frame",
    "encode_frames",
    "encode_stream_header",
    "frame_size",
    "is_ack_eliciting",
    "is_retransmittable",
    "parse_frames",
    "write_stream_header_into",
]


#: What a Stream frame's data may be: ``bytes`` (or ``bytearray``) built locally, or a
#: ``memoryview`` slice of the record when :func:`parse_frames` was given a memoryview.
StreamData: TypeAlias = bytes | bytearray | memoryview

_U8 = 1 << 8
_U16 = 1 << 16
_U32 = 1 << 32
_U64 = 1 << 64


# --------------------------------------------------------------------------- frame values


class Padding(NamedTuple):
    """A run of ``length`` Padding frames (type 0x00), that is ``length`` zero bytes.

    The draft's Padding frame is one byte with no content. A record padded with many of them
    parses as a single ``Padding(length=n)``; ``length`` must be at least 1 to encode.
    Padding is neither ack-eliciting nor retransmitted.
    """

    length: int = 1


class Ping(NamedTuple):
    """A Ping frame (type 0x01): the receiver acknowledges the record that carried it."""


class StreamFrame(NamedTuple):
    """A Stream frame (type 0x02, or 0x03 when ``fin``): ``data`` at ``offset`` of a stream.

    With ``fin`` the stream's final size is ``offset + len(data)``; a zero-length Stream frame
    with FIN is legal (design: Stream frames).

    ``data`` as returned by :func:`parse_frames` is a ``memoryview`` slice of the record when
    the record was given as a ``memoryview`` (no copy: the caller must copy the data before the
    underlying buffer is reused), and ``bytes`` otherwise.
    """

    stream_id: int
    offset: int
    data: StreamData
    fin: bool = False

    def __repr__(self) -> str:
        data: object = self.data
        if not isinstance(data, bytes | bytearray | memoryview):
            shown = repr(data)
        elif len(data) <= 32:
            shown = repr(bytes(data))
        else:
            shown = f"{bytes(data[:16])!r}...<{len(data)} bytes>"
        return (
            f"StreamFrame(stream_id={self.stream_id}, offset={self.offset}, "
            f"data={shown}, fin={self.fin})"
        )


class Ack(NamedTuple):
    """An ACK frame (type 0x04): records up to ``highest_sequence`` of a connection arrived.

    ``connection_id`` names the connection whose records are acknowledged, which need not be
    the one carrying the frame. ACK is not ack-eliciting and is never retransmitted.
    """

    connection_id: int
    highest_sequence: int


class NewToken(NamedTuple):
    """A New Token frame (type 0x05, server only): a 32-byte join token and its sequence.

    A connection joined with this token gets ``sequence`` as its Connection ID.
    """

    sequence: int
    token: bytes


class ConnectionReset(NamedTuple):
    """A Connection Reset frame (type 0x06): the connection ``connection_id`` has failed."""

    connection_id: int


class NewAddress(NamedTuple):
    """A New Address frame (type 0x07): ``address``:``port`` is usable, under ``address_id``.

    The Address Version byte on the wire (4 or 6) follows from the type of ``address``. The
    scope of a scoped IPv6 address (``fe80::1%eth0``) cannot be sent and is dropped.
    """

    address_id: int
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int


class RemoveAddress(NamedTuple):
    """A Remove Address frame (type 0x08): the address ``address_id`` is withdrawn."""

    address_id: int


class StreamChange(NamedTuple):
    """A Stream Change frame (type 0x09): the next record on this connection carries a
    Stream frame of ``stream_id`` at ``offset``. Connection-specific; never retransmitted."""

    stream_id: int
    offset: int


#: Any TCPLS frame value.
Frame: TypeAlias = (
    Padding
    | Ping
    | StreamFrame
    | Ack
    | NewToken
    | ConnectionReset
    | NewAddress
    | RemoveAddress
    | StreamChange
)

_FRAME_CLASSES: tuple[type[tuple[object, ...]], ...] = (
    Padding,
    Ping,
    StreamFrame,
    Ack,
    NewToken,
    ConnectionReset,
    NewAddress,
    RemoveAddress,
    StreamChange,
)


def _frame_eq(self: tuple[object, ...], other: object) -> bool:
    return type(self) is type(other) and tuple.__eq__(self, other) is True


def _frame_ne(self: tuple[object, ...], other: object) -> bool:
    return not _frame_eq(self, other)


def _frame_hash(self: tuple[object, ...]) -> int:
    return hash((type(self).__name__, tuple(self)))


# A named tuple compares and hashes like a plain tuple, which would make Ack(0, 5) equal to
# StreamChange(0, 5) and RemoveAddress(1) equal to ConnectionReset(1). Frames are kept in
# sets and dicts (retransmission, design: Retransmission), so equality includes the frame type.
for _cls in _FRAME_CLASSES:
    _cls.__eq__ = _frame_eq  # type: ignore[method-assign]
    _cls.__ne__ = _frame_ne  # type: ignore[assignment]
    _cls.__hash__ = _frame_hash  # type: ignore[method-assign]
del _cls


# --------------------------------------------------------------------------- properties

_FIXED_SIZES: dict[type[tuple[object, ...]], int] = {
    Ping: PING_SIZE,
    Ack: ACK_SIZE,
    NewToken: NEW_TOKEN_SIZE,
    ConnectionReset: CONNECTION_RESET_SIZE,
    RemoveAddress: REMOVE_ADDRESS_SIZE,
    StreamChange: STREAM_CHANGE_SIZE,
}

_NOT_ACK_ELICITING = frozenset({Padding, Ack})
_RETRANSMITTABLE = frozenset({StreamFrame, NewToken, NewAddress, RemoveAddress, ConnectionReset})


def _check_frame_type(frame: object) -> None:
    if type(frame) not in _FRAME_CLASSES:
        raise TypeError(f"not a TCPLS frame: {frame!r}")


def frame_size(frame: Frame) -> int:
    """The number of bytes :func:`encode_frame` produces for ``frame``.

    ``Padding(n)`` is ``n`` bytes, a Stream frame ``15 + len(data)``, a New Address frame 9
    (IPv4) or 21 (IPv6), every other frame a constant.
    """
    if isinstance(frame, StreamFrame):
        data = frame.data
        return STREAM_HEADER_SIZE + (data.nbytes if isinstance(data, memoryview) else len(data))
    size = _FIXED_SIZES.get(type(frame))
    if size is not None:
        return size
    if isinstance(frame, Padding):
        return frame.length
    if isinstance(frame, NewAddress):
        return NEW_ADDRESS_V4_SIZE if frame.address.version == 4 else NEW_ADDRESS_V6_SIZE
    raise TypeError(f"not a TCPLS frame: {frame!r}")


def is_ack_eliciting(frame: Frame) -> bool:
    """Whether receiving ``frame`` calls for an ACK: every frame except Padding and ACK."""
    _check_frame_type(frame)
    return type(frame) not in _NOT_ACK_ELICITING


def is_retransmittable(frame: Frame) -> bool:
    """Whether ``frame`` is sent again when its record is lost (design: Retransmission).

    Stream, New Token, New Address, Remove Address and Connection Reset are; Padding, ACK,
    Stream Change (connection-specific) and Ping (a probe of one connection) are not.
    """
    _check_frame_type(frame)
    return type(frame) in _RETRANSMITTABLE


# --------------------------------------------------------------------------- encoding


def _check_uint(name: str, value: object, limit: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not 0 <= value < limit:
        raise ValueError(f"{name} {value} out of range (0 to {limit - 1})")


def _encode_into(frame: Frame, out: Callable[[StreamData], object]) -> None:
    """Validate ``frame`` and pass its encoding, in one or two pieces, to ``out``."""
    if type(frame) is StreamFrame:
        data = frame.data
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"stream data must be bytes-like, not {type(data).__name__}")
        length = data.nbytes if isinstance(data, memoryview) else len(data)
        _check_uint("stream data length", length, _U16)
        _check_uint("stream ID", frame.stream_id, _U32)
        _check_uint("stream offset", frame.offset, _U64)
        out(data)
        out(
            STREAM_HEADER_LAYOUT.pack(length, frame.offset, frame.stream_id, 3 if frame.fin else 2)
        )
    elif type(frame) is Ack:
        _check_uint("ACK connection ID", frame.connection_id, _U32)
        _check_uint("ACK highest record sequence", frame.highest_sequence, _U64)
        out(ACK_LAYOUT.pack(frame.highest_sequence, frame.connection_id, FrameType.ACK))
    elif type(frame) is Padding:
        if not isinstance(frame.length, int) or frame.length < 1:
            raise ValueError(f"Padding length must be a positive int, not {frame.length!r}")
        out(bytes(frame.length))
    elif type(frame) is Ping:
        out(b"\x01")
    elif type(frame) is NewToken:
        token = frame.token
        if not isinstance(token, bytes | bytearray | memoryview):
            raise TypeError(f"token must be bytes, not {type(token).__name__}")
        if len(token) != TOKEN_SIZE:
            raise ValueError(f"a TCPLS token is {TOKEN_SIZE} bytes, not {len(token)}")
        _check_uint("New Token sequence", frame.sequence, _U8)
        out(NEW_TOKEN_LAYOUT.pack(bytes(token), frame.sequence, FrameType.NEW_TOKEN))
    elif type(frame) is ConnectionReset:
        _check_uint("Connection Reset connection ID", frame.connection_id, _U32)
        out(CONNECTION_RESET_LAYOUT.pack(frame.connection_id, FrameType.CONNECTION_RESET))
    elif type(frame) is NewAddress:
        _check_uint("address ID", frame.address_id, _U8)
        _check_uint("port", frame.port, _U16)
        address = frame.address
        if isinstance(address, ipaddress.IPv4Address):
            out(
                NEW_ADDRESS_V4_LAYOUT.pack(
                    frame.port, int(address), 4, frame.address_id, FrameType.NEW_ADDRESS
                )
            )
        elif isinstance(address, ipaddress.IPv6Address):
            value = int(address)
            out(
                NEW_ADDRESS_V6_LAYOUT.pack(
                    frame.port,
                    value >> 64,
                    value & (_U64 - 1),
                    6,
                    frame.address_id,
                    FrameType.NEW_ADDRESS,
                )
            )
        else:
            raise TypeError(
                f"address must be an IPv4Address or IPv6Address, not {type(address).__name__}"
            )
    elif type(frame) is RemoveAddress:
        _check_uint("address ID", frame.address_id, _U8)
        out(bytes((frame.address_id, FrameType.REMOVE_ADDRESS)))
    elif type(frame) is StreamChange:
        _check_uint("Stream Change stream ID", frame.stream_id, _U32)
        _check_uint("Stream Change offset", frame.offset, _U64)
        out(STREAM_CHANGE_LAYOUT.pack(frame.stream_id, frame.offset, FrameType.STREAM_CHANGE))
    else:
        raise TypeError(f"not a TCPLS frame: {frame!r}")


def encode_frame(frame: Frame) -> bytes:
    """The wire bytes of one frame (fields in draft order, type byte last).

    Raises :class:`ValueError` for a field out of range (stream ID or connection ID of 2**32
    or more, offset or sequence of 2**64 or more, stream data of 65536 bytes or more, a token
    that is not 32 bytes, a token sequence or address ID above 255, a port above 65535, a
    Padding length below 1) and :class:`TypeError` for a value of the wrong type.
    """
    parts: list[StreamData] = []
    _encode_into(frame, parts.append)
    if len(parts) == 1 and type(parts[0]) is bytes:
        return parts[0]
    return b"".join(parts)


def encode_frames(frames: Iterable[Frame]) -> bytes:
    """The concatenated wire bytes of ``frames``, in the given order (one record's content).

    Validates like :func:`encode_frame`. The total size is not limited here; keeping a
    record within :data:`MAX_RECORD_PAYLOAD` is the caller's job.
    """
    parts: list[StreamData] = []
    out = parts.append
    for frame in frames:
        _encode_into(frame, out)
    return b"".join(parts)


# --------------------------------------------------------------------------- parsing

# Frame values are immutable: the parser shares one instance of the field-less ones.
_PING = Ping()
_PADDING_1 = Padding(1)


def _padding_run_start(view: memoryview, end: int) -> int:
    """The start of the run of zero bytes that ends at ``end`` (``view[end - 1]`` is 0).

    Gallops backwards over windows of doubling size, comparing each with zeros (a memcmp),
    until a window holds a non-zero byte or the start of the record is reached; the last
    non-zero byte of that window is then located with ``int.from_bytes(...).bit_length()``.
    A run of n bytes thus costs O(n) work in C but only O(log n) Python steps.
    """
    zero = end - 1  # invariant: view[zero:end] is all zeros
    step = 16
    while zero:
        lo = zero - step if zero > step else 0
        chunk = view[lo:zero].tobytes()
        if chunk != bytes(len(chunk)):
            # Read little-endian, the highest set bit lies in the window's last non-zero byte.
            return lo + (int.from_bytes(chunk, "little").bit_length() + 7) // 8
        zero = lo
        step *= 2
    return 0


def _truncated(name: str, need: int, end: int) -> DecodeError:
    return DecodeError(
        f"truncated {name} frame: it needs {need} bytes but its type byte at offset "
        f"{end - 1} has only {end - 1} bytes before it in the record"
    )


def parse_frames(content: bytes | bytearray | memoryview) -> list[Frame]:
    """Parse a decrypted record's content into frames, returned in wire order.

    The record is parsed from its end backwards (draft-04 §5.2). An empty content yields no
    frames. A run of consecutive Padding frames is returned as one ``Padding(length=n)``.

    Stream data: if ``content`` is a ``memoryview``, each ``StreamFrame.data`` is a
    ``memoryview`` slice of it (zero copy), so **the caller must copy the data (or be done
    with it) before the underlying buffer is reused**; if ``content`` is ``bytes`` or
    ``bytearray``, ``data`` is ``bytes``. Tokens are always ``bytes``.

    Raises :class:`~tcpls.errors.DecodeError` for an unknown frame type, a frame that runs
    past the start of the record, or a Stream frame whose Length exceeds the bytes before its
    header; :class:`~tcpls.errors.IllegalParameter` for a New Address version other than 4
    or 6. The record size limit is not checked here (the record layer enforces it).
    """
    view: memoryview
    if isinstance(content, memoryview):
        zero_copy = True
        view = content
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
    else:
        zero_copy = False
        view = memoryview(content)
    raw: bytes | None = content if isinstance(content, bytes) else None

    frames: list[Frame] = []
    append = frames.append
    end = view.nbytes
    try:
        while end:
            t = view[end - 1]
            if t == 2 or t == 3:
                if end < STREAM_HEADER_SIZE:
                    raise _truncated("Stream", STREAM_HEADER_SIZE, end)
                hdr = end - STREAM_HEADER_SIZE
                length, offset, stream_id, _ = STREAM_HEADER_LAYOUT.unpack_from(view, hdr)
                start = hdr - length
                if start < 0:
                    raise DecodeError(
                        f"Stream frame of stream {stream_id} at offset {hdr}: Length {length} "
                        f"exceeds the {hdr} bytes before its header"
                    )
                if zero_copy:
                    data: StreamData = view[start:hdr]
                elif raw is not None:
                    data = raw[start:hdr]
                else:
                    data = bytes(view[start:hdr])
                append(StreamFrame(stream_id, offset, data, t == 3))
                end = start
            elif t == 4:
                if end < ACK_SIZE:
                    raise _truncated("ACK", ACK_SIZE, end)
                end -= ACK_SIZE
                highest, connection_id, _ = ACK_LAYOUT.unpack_from(view, end)
                append(Ack(connection_id, highest))
            elif t == 0:
                # Look at a few bytes one by one (most runs are short), then gallop.
                start = end - 1
                stop = start - 4 if start > 4 else 0
                while start > stop and not view[start - 1]:
                    start -= 1
                if start == stop and stop and not view[stop - 1]:
                    start = _padding_run_start(view, stop)
                append(_PADDING_1 if start == end - 1 else Padding(end - start))
                end = start
            elif t == 1:
                append(_PING)
                end -= 1
            elif t == 5:
                if end < NEW_TOKEN_SIZE:
                    raise _truncated("New Token", NEW_TOKEN_SIZE, end)
                end -= NEW_TOKEN_SIZE
                token, sequence, _ = NEW_TOKEN_LAYOUT.unpack_from(view, end)
                append(NewToken(sequence, token))
            elif t == 6:
                if end < CONNECTION_RESET_SIZE:
                    raise _truncated("Connection Reset", CONNECTION_RESET_SIZE, end)
                end -= CONNECTION_RESET_SIZE
                connection_id, _ = CONNECTION_RESET_LAYOUT.unpack_from(view, end)
                append(ConnectionReset(connection_id))
            elif t == 7:
                if end < 3:
                    raise _truncated("New Address", NEW_ADDRESS_V4_SIZE, end)
                version = view[end - 3]
                if version == 4:
                    if end < NEW_ADDRESS_V4_SIZE:
                        raise _truncated("New Address (IPv4)", NEW_ADDRESS_V4_SIZE, end)
                    end -= NEW_ADDRESS_V4_SIZE
                    port, v4, _, address_id, _ = NEW_ADDRESS_V4_LAYOUT.unpack_from(view, end)
                    append(NewAddress(address_id, ipaddress.IPv4Address(v4), port))
                elif version == 6:
                    if end < NEW_ADDRESS_V6_SIZE:
                        raise _truncated("New Address (IPv6)", NEW_ADDRESS_V6_SIZE, end)
                    end -= NEW_ADDRESS_V6_SIZE
                    port, high, low, _, address_id, _ = NEW_ADDRESS_V6_LAYOUT.unpack_from(
                        view, end
                    )
                    address = ipaddress.IPv6Address((high << 64) | low)
                    append(NewAddress(address_id, address, port))
                else:
                    raise IllegalParameter(
                        f"New Address frame at offset {end - 1}: Address Version {version} "
                        "is neither 4 nor 6"
                    )
            elif t == 8:
                if end < REMOVE_ADDRESS_SIZE:
                    raise _truncated("Remove Address", REMOVE_ADDRESS_SIZE, end)
                end -= REMOVE_ADDRESS_SIZE
                append(RemoveAddress(view[end]))
            elif t == 9:
                if end < STREAM_CHANGE_SIZE:
                    raise _truncated("Stream Change", STREAM_CHANGE_SIZE, end)
                end -= STREAM_CHANGE_SIZE
                stream_id, offset, _ = STREAM_CHANGE_LAYOUT.unpack_from(view, end)
                append(StreamChange(stream_id, offset))
            else:
                raise DecodeError(f"unknown TCPLS frame type 0x{t:02x} at offset {end - 1}")
    finally:
        if not zero_copy:
            # Do not leave a bytearray locked by an export (e.g. through a traceback).
            view.release()
    frames.reverse()
    return frames
