"""The byte layout of TCPLS frames, and the data path's pack and unpack helpers.

The one place that knows the fixed fields of each frame (draft-04 §5.2; design: Frame
layout): :mod:`tcpls.wire.frames` builds its codecs on these structs, and the session's
data path (:mod:`tcpls.core.sender`, :mod:`tcpls.core.receiver`) packs and unpacks with
them directly, without building frame values.

The content of a decrypted TCPLS record (``TLSInnerPlaintext.content``, inner type 23) is a
sequence of frames. Each frame is its fields in the order the draft lists them, followed by
a one-byte type, which is therefore the **last** byte of the frame. Every integer is
fixed-width big-endian; there are no variable-length integers. Wire order, lowest address
first (sizes in bytes)::

    0x00 Padding           Type                                                    1
    0x01 Ping              Type                                                    1
    0x02 Stream            Data(Length) Length(2) Offset(8) StreamID(4) Type       15 + Length
    0x03 Stream with FIN   same as 0x02; the low bit of the type byte is FIN
    0x04 ACK               HighestRecordSequence(8) ConnectionID(4) Type           13
    0x05 New Token         Token(32) Sequence(1) Type                              34
    0x06 Connection Reset  ConnectionID(4) Type                                    5
    0x07 New Address       Port(2) Address(4|16) Version(1) AddressID(1) Type      9 or 21
    0x08 Remove Address    AddressID(1) Type                                       2
    0x09 Stream Change     NextRecordStreamID(4) NextOffset(8) Type                13

Each ``*_LAYOUT`` struct covers the fixed fields of a frame *including* its trailing
type byte, so the fields of a frame that ends at ``end`` are unpacked at ``end - SIZE``.
"""

from __future__ import annotations

import struct
from enum import IntEnum

__all__ = [
    "ACK_LAYOUT",
    "ACK_SIZE",
    "CONNECTION_RESET_LAYOUT",
    "CONNECTION_RESET_SIZE",
    "MAX_RECORD_PAYLOAD",
    "MAX_STREAM_DATA",
    "NEW_ADDRESS_V4_LAYOUT",
    "NEW_ADDRESS_V4_SIZE",
    "NEW_ADDRESS_V6_LAYOUT",
    "NEW_ADDRESS_V6_SIZE",
    "NEW_TOKEN_LAYOUT",
    "NEW_TOKEN_SIZE",
    "PADDING_SIZE",
    "PING_SIZE",
    "REMOVE_ADDRESS_SIZE",
    "STREAM_CHANGE_LAYOUT",
    "STREAM_CHANGE_SIZE",
    "STREAM_HEADER_LAYOUT",
    "STREAM_HEADER_SIZE",
    "TOKEN_SIZE",
    "FrameType",
    "encode_stream_header",
    "pack_ack_into",
    "unpack_ack_from",
    "unpack_stream_header_from",
    "write_ack_into",
    "write_stream_header_into",
]


class FrameType(IntEnum):
    """The frame type byte (draft-04 Table 2), the last byte of every frame."""

    PADDING = 0x00
    PING = 0x01
    STREAM = 0x02
    STREAM_FIN = 0x03
    ACK = 0x04
    NEW_TOKEN = 0x05
    CONNECTION_RESET = 0x06
    NEW_ADDRESS = 0x07
    REMOVE_ADDRESS = 0x08
    STREAM_CHANGE = 0x09


#: Most bytes of frames in one record: the TLS 1.3 plaintext limit, 2**14 (design: Records).
MAX_RECORD_PAYLOAD = 16384
#: Bytes of a Stream frame besides its data: Length(2) Offset(8) Stream ID(4) Type(1).
STREAM_HEADER_SIZE = 15
#: Most stream bytes in one record, when the Stream frame is alone in it (design: Records).
MAX_STREAM_DATA = MAX_RECORD_PAYLOAD - STREAM_HEADER_SIZE
#: Size of one Padding frame; a ``Padding(length=n)`` value stands for ``n`` of them.
PADDING_SIZE = 1
#: Size of a Ping frame.
PING_SIZE = 1
#: Size of an ACK frame.
ACK_SIZE = 13
#: Size of the token in a New Token frame (the same as :data:`tcpls.wire.extensions.TOKEN_SIZE`).
TOKEN_SIZE = 32
#: Size of a New Token frame.
NEW_TOKEN_SIZE = TOKEN_SIZE + 2
#: Size of a Connection Reset frame.
CONNECTION_RESET_SIZE = 5
#: Size of a New Address frame carrying an IPv4 address.
NEW_ADDRESS_V4_SIZE = 9
#: Size of a New Address frame carrying an IPv6 address.
NEW_ADDRESS_V6_SIZE = 21
#: Size of a Remove Address frame.
REMOVE_ADDRESS_SIZE = 2
#: Size of a Stream Change frame.
STREAM_CHANGE_SIZE = 13

# Each struct covers the fixed fields of a frame *including* its trailing type byte, so
# that the fields of a frame ending at ``end`` are unpacked at ``end - SIZE``.
STREAM_HEADER_LAYOUT = struct.Struct(">HQIB")  #: Length, Offset, Stream ID, Type
ACK_LAYOUT = struct.Struct(">QIB")  #: Highest Record Sequence Received, Connection ID, Type
NEW_TOKEN_LAYOUT = struct.Struct(">32sBB")  #: Token, Sequence, Type
CONNECTION_RESET_LAYOUT = struct.Struct(">IB")  #: Connection ID, Type
NEW_ADDRESS_V4_LAYOUT = struct.Struct(">HIBBB")  #: Port, Address, Version, Address ID, Type
NEW_ADDRESS_V6_LAYOUT = struct.Struct(">HQQBBB")  #: Port, Address (2 halves), Version, ID, Type
STREAM_CHANGE_LAYOUT = struct.Struct(">IQB")  #: Next Record Stream ID, Next Offset, Type

assert STREAM_HEADER_LAYOUT.size == STREAM_HEADER_SIZE
assert ACK_LAYOUT.size == ACK_SIZE
assert NEW_TOKEN_LAYOUT.size == NEW_TOKEN_SIZE
assert CONNECTION_RESET_LAYOUT.size == CONNECTION_RESET_SIZE
assert NEW_ADDRESS_V4_LAYOUT.size == NEW_ADDRESS_V4_SIZE
assert NEW_ADDRESS_V6_LAYOUT.size == NEW_ADDRESS_V6_SIZE
assert STREAM_CHANGE_LAYOUT.size == STREAM_CHANGE_SIZE


#: ``pack_ack_into(buf, pos, highest, connection_id, FrameType.ACK)``: an ACK frame at ``pos``.
pack_ack_into = ACK_LAYOUT.pack_into
#: ``unpack_ack_from(buf, pos)``: ``(highest, connection_id, type)`` of the ACK at ``pos``.
unpack_ack_from = ACK_LAYOUT.unpack_from
#: ``unpack_stream_header_from(buf, pos)``: ``(length, offset, stream_id, type)`` of the
#: Stream frame header at ``pos`` (its data ends at ``pos``).
unpack_stream_header_from = STREAM_HEADER_LAYOUT.unpack_from


def write_ack_into(buf: bytearray | memoryview, pos: int, connection_id: int, highest: int) -> int:
    """Write an ACK frame at ``buf[pos:pos + 13]``; returns the end of the frame."""
    ACK_LAYOUT.pack_into(buf, pos, highest, connection_id, FrameType.ACK)
    return pos + ACK_SIZE


def encode_stream_header(stream_id: int, offset: int, length: int, fin: bool) -> bytes:
    """The 15 bytes that follow ``length`` bytes of stream data in a Stream frame.

    Data-path helper: values are not range-checked here beyond what :mod:`struct` does
    (it raises :class:`struct.error` for a value that does not fit its field).
    """
    return STREAM_HEADER_LAYOUT.pack(length, offset, stream_id, 3 if fin else 2)


def write_stream_header_into(
    buf: bytearray | memoryview,
    pos: int,
    stream_id: int,
    offset: int,
    length: int,
    fin: bool,
) -> int:
    """Write a Stream frame header (:func:`encode_stream_header`) at ``buf[pos:pos + 15]``.

    The ``length`` data bytes are expected at ``buf[pos - length:pos]``. Returns
    ``pos + 15``, the end of the frame. Values are not range-checked beyond :mod:`struct`.
    """
    STREAM_HEADER_LAYOUT.pack_into(buf, pos, length, offset, stream_id, 3 if fin else 2)
    return pos + STREAM_HEADER_SIZE
