"""TLS 1.3 record layer (RFC 8446 §5) with the TCPLS per-connection nonce.

This module owns record framing and record protection, nothing else: it knows
no handshake state and no streams.

* :class:`TrafficKeys` is what one traffic secret yields (AEAD key and IV). All
  TCP connections of a TCPLS session share the same keys.
* :class:`RecordProtection` seals or opens records for one direction of one TCP
  connection. It owns the implicit record sequence number and builds the nonce
  ``iv XOR (connection_id << 64) XOR sequence`` (draft-04 §4.3, design: Record nonce).
  With connection ID 0 this is exactly RFC 8446 §5.3.
* :class:`RecordReader` cuts a byte stream into records. It owns one receive
  buffer that an ``asyncio.BufferedProtocol`` can fill in place
  (:meth:`RecordReader.get_buffer`), and returns ``memoryview`` slices of it.
* :class:`RecordWriter` accumulates sealed records in one preallocated buffer so
  that many records leave in one ``write``.

Sealing and opening use ``encrypt_into``/``decrypt_into`` on preallocated
buffers: one copy of the plaintext into the staging buffer, no allocation per
record on the hot path.
"""

from __future__ import annotations

import struct
import threading
from enum import IntEnum
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from tcpls.errors import BadRecordMac, DecodeError, NotTLSError, RecordOverflow, UnexpectedMessage

__all__ = [
    "AEAD_CONTEXT_SIZE",
    "AES_GCM_RECORD_LIMIT",
    "HEADER_SIZE",
    "MAX_CIPHERTEXT",
    "MAX_PLAINTEXT",
    "TAG_SIZE",
    "CipherSuite",
    "ContentType",
    "RecordProtection",
    "RecordReader",
    "RecordWriter",
    "TrafficKeys",
    "aead_record_limit",
    "describe_bytes",
    "hkdf_expand_label",
    "scratch",
]

#: Bytes of a TLS record header: type, legacy version, length (RFC 8446 §5.1).
HEADER_SIZE: Final = 5
#: Bytes of the AEAD tag of every protected record (all TLS 1.3 suites).
TAG_SIZE: Final = 16
#: Largest TLSInnerPlaintext content (RFC 8446 §5.1).
MAX_PLAINTEXT: Final = 1 << 14
#: Largest TLSCiphertext.length (RFC 8446 §5.2): 2^14 + 256.
MAX_CIPHERTEXT: Final = MAX_PLAINTEXT + 256
LEGACY_VERSION: Final = 0x0303

_HEADER = struct.Struct(">BHH")
#: First size of a record reader's buffer, and of a writer's.
_MIN_READ_BUFFER = 4096
_MIN_WRITE_BUFFER = 4096
#: What a reader or writer without a buffer holds, shared: never written to (any growth
#: makes a new buffer), and its exported view keeps it from being resized in place.
_NO_BUFFER = bytearray()
_NO_VIEW = memoryview(_NO_BUFFER)


class ContentType(IntEnum):
    """TLS record content types."""

    change_cipher_spec = 20
    alert = 21
    handshake = 22
    application_data = 23


class CipherSuite(IntEnum):
    """The TLS 1.3 cipher suites tcpls supports."""

    AES_128_GCM_SHA256 = 0x1301
    AES_256_GCM_SHA384 = 0x1302
    CHACHA20_POLY1305_SHA256 = 0x1303


# suite -> (key length, hash algorithm class, AEAD class)
_SUITES: dict[int, tuple[int, type[hashes.HashAlgorithm], type[AESGCM | ChaCha20Poly1305]]] = {
    CipherSuite.AES_128_GCM_SHA256: (16, hashes.SHA256, AESGCM),
    CipherSuite.AES_256_GCM_SHA384: (32, hashes.SHA384, AESGCM),
    CipherSuite.CHACHA20_POLY1305_SHA256: (32, hashes.SHA256, ChaCha20Poly1305),
}

IV_SIZE: Final = 12
#: Bytes an AEAD context holds while it is built (OpenSSL's state of one key, AES-GCM or
#: ChaCha20-Poly1305 alike, as measured in RSS: design: Idle memory).
AEAD_CONTEXT_SIZE: Final = 2432


#: Records one key may seal (RFC 8446 §5.5): AES-GCM allows 2^24.5 full-size records for a
#: safety margin of 2^-57; tcpls stops at 2^24, leaving room to close. ChaCha20-Poly1305's
#: limit (2^62) is out of reach.
AES_GCM_RECORD_LIMIT: Final = 1 << 24


def aead_record_limit(suite: int) -> int | float:
    """How many records one key of ``suite`` may seal before it must change."""
    if suite in (CipherSuite.AES_128_GCM_SHA256, CipherSuite.AES_256_GCM_SHA384):
        return AES_GCM_RECORD_LIMIT
    return float("inf")


def suite_hash(suite: int) -> hashes.HashAlgorithm:
    """The hash algorithm of a TLS 1.3 cipher suite."""
    return _SUITES[suite][1]()


def hkdf_expand_label(
    algorithm: hashes.HashAlgorithm, secret: bytes, label: bytes, context: bytes, length: int
) -> bytes:
    """HKDF-Expand-Label of RFC 8446 §7.1."""
    full_label = b"tls13 " + label
    info = (
        struct.pack(">HB", length, len(full_label)) + full_label + bytes((len(context),)) + context
    )
    return HKDFExpand(algorithm=algorithm, length=length, info=info).derive(secret)


class TrafficKeys:
    """AEAD key and IV derived from one traffic secret (RFC 8446 §7.3).

    Immutable once built; shared by every connection of a session for one
    direction. :meth:`next_generation` gives the keys after a KeyUpdate.

    The AEAD context (:attr:`aead`, about 2.4 KiB of OpenSSL state) is built when
    first used and dropped by :meth:`release` while the connections are idle
    (design: Idle memory); the key itself is kept.
    """

    __slots__ = ("_aead", "cipher_suite", "iv", "iv_int", "key", "secret")

    def __init__(self, cipher_suite: int, secret: bytes) -> None:
        try:
            key_len, hash_cls, _ = _SUITES[cipher_suite]
        except KeyError:
            raise ValueError(f"unsupported cipher suite 0x{cipher_suite:04x}") from None
        algorithm = hash_cls()
        self.cipher_suite = CipherSuite(cipher_suite)
        self.secret = secret
        self.key = hkdf_expand_label(algorithm, secret, b"key", b"", key_len)
        self.iv = hkdf_expand_label(algorithm, secret, b"iv", b"", IV_SIZE)
        self.iv_int = int.from_bytes(self.iv, "big")
        self._aead: AESGCM | ChaCha20Poly1305 | None = None

    @property
    def aead(self) -> AESGCM | ChaCha20Poly1305:
        """The AEAD context of the key (built now if it was released)."""
        aead = self._aead
        if aead is None:
            aead = self._aead = _SUITES[self.cipher_suite][2](self.key)
        return aead

    def release(self) -> None:
        """Drop the AEAD context (it is built again when next used)."""
        self._aead = None

    def next_generation(self) -> TrafficKeys:
        """The keys after a KeyUpdate: ``secret' = HKDF-Expand-Label(secret, "traffic upd")``."""
        algorithm = suite_hash(self.cipher_suite)
        secret = hkdf_expand_label(
            algorithm, self.secret, b"traffic upd", b"", algorithm.digest_size
        )
        return TrafficKeys(self.cipher_suite, secret)


class RecordProtection:
    """Protection of the records of one direction of one TCP connection.

    ``sequence`` is the implicit record sequence number: it starts at 0 and is
    incremented by every record sealed or opened. The nonce is
    ``iv XOR (connection_id << 64) XOR sequence`` (design: Record nonce).
    """

    __slots__ = ("_aead", "_base", "connection_id", "keys", "sequence")

    def __init__(self, keys: TrafficKeys, connection_id: int = 0) -> None:
        if not 0 <= connection_id < 1 << 32:
            raise ValueError("connection IDs are 32-bit unsigned integers")
        self.keys = keys
        self.connection_id = connection_id
        self.sequence = 0
        #: The keys' AEAD context, taken when first needed (``None`` meanwhile).
        self._aead: AESGCM | ChaCha20Poly1305 | None = None
        self._base = keys.iv_int ^ (connection_id << 64)

    @property
    def memory(self) -> int:
        """Bytes of the AEAD context this protection holds now (0 once released)."""
        return 0 if self._aead is None else AEAD_CONTEXT_SIZE

    def release(self) -> None:
        """Drop the AEAD context while the connection is idle (design: Idle memory); the
        next record builds it again from the key."""
        self._aead = None
        self.keys.release()

    def nonce(self, sequence: int) -> bytes:
        """The 12-byte nonce of record ``sequence`` on this connection."""
        return (self._base ^ sequence).to_bytes(IV_SIZE, "big")

    def seal_into(
        self, plaintext: memoryview, length: int, content_type: int, out: memoryview
    ) -> int:
        """Seal ``plaintext[:length]`` as one record written at the start of ``out``.

        ``plaintext`` must have room for one more byte after ``length``: the inner
        content type is written there. ``out`` must hold ``length + 22`` bytes.
        Returns the number of bytes written to ``out``.
        """
        plaintext[length] = content_type
        inner = length + 1
        clen = inner + TAG_SIZE
        _HEADER.pack_into(out, 0, ContentType.application_data, LEGACY_VERSION, clen)
        seq = self.sequence
        if seq >= 0xFFFFFFFFFFFFFFFF:
            raise RecordOverflow("record sequence number exhausted")
        self.sequence = seq + 1
        aead = self._aead
        if aead is None:
            aead = self._aead = self.keys.aead
        aead.encrypt_into(
            (self._base ^ seq).to_bytes(IV_SIZE, "big"),
            plaintext[:inner],
            out[:HEADER_SIZE],
            out[HEADER_SIZE : HEADER_SIZE + clen],
        )
        return HEADER_SIZE + clen

    def seal(self, content: bytes, content_type: int = ContentType.application_data) -> bytes:
        """Seal ``content`` as one record and return the record (convenience, allocates)."""
        if len(content) > MAX_PLAINTEXT:
            raise ValueError("record content larger than 2^14 bytes")
        staging = bytearray(len(content) + 1)
        staging[: len(content)] = content
        out = bytearray(HEADER_SIZE + len(content) + 1 + TAG_SIZE)
        self.seal_into(memoryview(staging), len(content), content_type, memoryview(out))
        return bytes(out)

    def open_into(self, header: memoryview, body: memoryview, out: memoryview) -> tuple[int, int]:
        """Open one protected record into ``out``.

        Returns ``(content_type, length)``: the inner content type and the length
        of the content at the start of ``out`` (padding removed). Raises
        :class:`BadRecordMac` when authentication fails and
        :class:`UnexpectedMessage` when the inner plaintext holds no content type.
        """
        n = len(body) - TAG_SIZE
        if n < 1:
            raise BadRecordMac("record too short to be protected")
        if n > MAX_PLAINTEXT + 1:
            # the limit is on the whole TLSInnerPlaintext, padding included (RFC 8446 §5.4)
            raise RecordOverflow("protected record's inner plaintext exceeds 2^14 + 1 bytes")
        seq = self.sequence
        aead = self._aead
        if aead is None:
            aead = self._aead = self.keys.aead
        try:
            aead.decrypt_into((self._base ^ seq).to_bytes(IV_SIZE, "big"), body, header, out[:n])
        except InvalidTag:
            raise BadRecordMac("record failed authentication") from None
        self.sequence = seq + 1
        # the content type is the last non-zero byte: zero padding is stripped at C speed
        # (a peer may pad every record, so no Python loop per byte)
        n -= 1
        if out[n] == 0:
            n = len(bytes(out[:n]).rstrip(b"\x00")) - 1
            if n < 0:
                raise UnexpectedMessage("protected record without a content type")
        return out[n], n

    def open(self, record: bytes) -> tuple[int, bytes]:
        """Open one whole record (header included); convenience form that allocates."""
        if len(record) < HEADER_SIZE:
            raise DecodeError("truncated record")
        mv = memoryview(record)
        out = bytearray(max(len(record) - HEADER_SIZE - TAG_SIZE, 0))
        content_type, length = self.open_into(mv[:HEADER_SIZE], mv[HEADER_SIZE:], memoryview(out))
        return content_type, bytes(out[:length])


def describe_bytes(data: bytes) -> str:
    """A short, printable account of unexpected bytes: the text, or the first bytes in hex."""
    text = data.split(b"\r")[0].split(b"\n")[0][:48]
    if len(text) >= 4 and all(32 <= b < 127 for b in text):
        return repr(text.decode("ascii"))
    return f"bytes {data[:8].hex(' ')}"


class RecordReader:
    """Cuts incoming bytes into TLS records, in one reusable buffer.

    Fill it either with :meth:`feed` or, without a copy, by writing into
    :meth:`get_buffer` and calling :meth:`buffer_updated` (the shape of
    ``asyncio.BufferedProtocol``). Then call :meth:`next_record` until it
    returns ``None``. Returned views are valid until the next call that
    changes the buffer.

    The buffer is allocated when bytes come, starts small, grows to hold the
    record being read, and doubles, up to ``max_capacity``, whenever a read fills
    all the space offered, so a busy connection reads up to 256 KiB per system
    call. :meth:`trim` gives it back while nothing is pending (an idle
    connection holds no buffer; design: Idle memory).
    """

    __slots__ = ("_buf", "_end", "_need", "_offered", "_start", "_view", "max_capacity")

    def __init__(self, max_capacity: int = 256 * 1024) -> None:
        self.max_capacity = max(max_capacity, HEADER_SIZE + MAX_CIPHERTEXT)
        self._buf, self._view = _NO_BUFFER, _NO_VIEW
        self._start = 0
        self._end = 0
        self._offered = 0
        self._need = 0  # size of the record being read, when it does not fit

    @property
    def capacity(self) -> int:
        """The size of the buffer now (0 when it was given back)."""
        return len(self._buf)

    @property
    def pending(self) -> int:
        """Bytes received but not yet returned as records."""
        return self._end - self._start

    def _resize(self, capacity: int) -> None:
        start, end = self._start, self._end
        buf = bytearray(capacity)
        buf[: end - start] = self._view[start:end]
        self._buf, self._view = buf, memoryview(buf)
        self._start, self._end = 0, end - start

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """A writable view of the free space at the end of the buffer."""
        start, end = self._start, self._end
        capacity = len(self._buf)
        if start == end:
            self._start = self._end = 0
        elif start and capacity - end < HEADER_SIZE + MAX_CIPHERTEXT:
            n = end - start  # compact: move the partial record to the front
            self._buf[:n] = self._view[start:end]
            self._start, self._end = 0, n
        if self._end == capacity or self._need > capacity:
            grown = min(max(2 * capacity, self._need, _MIN_READ_BUFFER), self.max_capacity)
            if grown > capacity:
                self._resize(grown)
        view = self._view[self._end :]
        self._offered = len(view)
        return view

    def buffer_updated(self, nbytes: int) -> None:
        """Record that ``nbytes`` were written into the last :meth:`get_buffer` view."""
        self._end += nbytes
        capacity = len(self._buf)
        if nbytes >= self._offered and capacity < self.max_capacity:
            self._resize(min(2 * capacity, self.max_capacity))

    def trim(self) -> None:
        """Give the buffer back if nothing is pending (it is allocated again when needed)."""
        if self._start == self._end and self._buf:
            self._buf, self._view = _NO_BUFFER, _NO_VIEW
            self._start = self._end = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` into the buffer (for callers that have bytes already)."""
        mv = memoryview(data)
        while mv:
            target = self.get_buffer()
            n = min(len(target), len(mv))
            if n == 0:
                raise RuntimeError("record reader buffer full; drain records first")
            target[:n] = mv[:n]
            self.buffer_updated(n)
            mv = mv[n:]

    def next_record(self) -> tuple[int, memoryview, memoryview] | None:
        """The next complete record as ``(content_type, header, body)``, or ``None``.

        Raises :class:`RecordOverflow` for a record longer than 2^14 + 256 bytes
        and :class:`NotTLSError` for bytes that are not a TLS record header.
        """
        start = self._start
        if self._end - start < HEADER_SIZE:
            if start == self._end:
                self._start = self._end = 0
            return None
        content_type, version, length = _HEADER.unpack_from(self._buf, start)
        if version >> 8 != 0x03 or not 20 <= content_type <= 23:
            raise NotTLSError(
                describe_bytes(bytes(self._view[start : min(self._end, start + 64)]))
            )
        if length > MAX_CIPHERTEXT:
            raise RecordOverflow(f"record of {length} bytes exceeds 2^14 + 256")
        end = start + HEADER_SIZE + length
        if end > self._end:
            self._need = HEADER_SIZE + length
            return None
        self._need = 0
        self._start = end
        view = self._view
        return content_type, view[start : start + HEADER_SIZE], view[start + HEADER_SIZE : end]


class RecordWriter:
    """Accumulates outgoing records in one buffer, so that many leave in one ``write``.

    :meth:`reserve` returns a view with room for one sealed record; after
    writing, :meth:`commit` the bytes used. :meth:`take` returns everything
    accumulated as ``bytes`` and empties the buffer. The buffer is allocated
    when a record is written and grows as needed; :meth:`trim` gives it back
    while it is empty.
    """

    __slots__ = ("_buf", "_end", "_view")

    def __init__(self) -> None:
        self._buf, self._view = _NO_BUFFER, _NO_VIEW
        self._end = 0

    def __len__(self) -> int:
        return self._end

    @property
    def capacity(self) -> int:
        """The size of the buffer now (0 when it was given back)."""
        return len(self._buf)

    def reserve(self, size: int) -> memoryview:
        """A writable view of at least ``size`` bytes at the end of the pending data."""
        if self._end + size > len(self._buf):
            # grow into a new buffer (views of the old one may still exist)
            capacity = max(self._end + size, 2 * len(self._buf), _MIN_WRITE_BUFFER)
            buf = bytearray(capacity)
            buf[: self._end] = self._view[: self._end]
            self._buf, self._view = buf, memoryview(buf)
        return self._view[self._end :]

    def commit(self, size: int) -> None:
        """Mark ``size`` bytes of the last :meth:`reserve` view as written."""
        self._end += size

    def append(self, data: bytes) -> None:
        """Append raw bytes (plaintext records such as the ClientHello)."""
        n = len(data)
        self.reserve(n)[:n] = data
        self._end += n

    def truncate(self, size: int) -> None:
        """Forget what was accumulated after the first ``size`` bytes."""
        self._end = min(self._end, size)

    def take(self) -> bytes:
        """Everything accumulated, as bytes; the buffer is emptied."""
        data = bytes(self._view[: self._end])
        self._end = 0
        return data

    def trim(self) -> None:
        """Give the buffer back if it is empty (it is allocated again when needed)."""
        if not self._end and self._buf:
            self._buf, self._view = _NO_BUFFER, _NO_VIEW


class _Scratch(threading.local):
    """Buffers used only for the length of one call, shared by the connections of a thread."""

    def __init__(self) -> None:
        #: Where a record's content is built before it is sealed (content, type byte).
        self.staging = memoryview(bytearray(MAX_PLAINTEXT + 1))
        #: Where a record is opened; replaced when a caller keeps a view of it.
        self.plain = memoryview(bytearray(MAX_PLAINTEXT + 256))


#: Per-thread scratch buffers (see :class:`_Scratch`): an idle connection holds none.
scratch = _Scratch()


def plaintext_record(content_type: int, payload: bytes, version: int = LEGACY_VERSION) -> bytes:
    """One or more unprotected records holding ``payload`` (split at 2^14 bytes)."""
    out = bytearray()
    for i in range(0, max(len(payload), 1), MAX_PLAINTEXT):
        chunk = payload[i : i + MAX_PLAINTEXT]
        out += _HEADER.pack(content_type, version, len(chunk)) + chunk
    return bytes(out)
