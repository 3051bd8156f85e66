"""Fuzz targets for the parsers that read untrusted bytes.

Each target is a function taking ``bytes``. It returns normally when the input was
accepted or rejected the way the protocol says (a :class:`tcpls.errors.ProtocolError`
subclass with its alert), and raises when it found a bug: an unexpected exception
escapes, or :class:`FuzzFailure` is raised for a broken property (a round trip that
does not hold, an ``internal_error``, the catch-all of the record layer firing).

The first bytes of some inputs are options rather than wire bytes (how to cut the
input into reads, which key, which side receives); each target says how it reads its
input, and :mod:`tests.fuzz.make_corpus` writes seeds in that layout.

This module does not import atheris: the replay tests run the same functions without it.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from tcpls.config import ServerConfig, SessionTuning
from tcpls.core.endpoint import PendingConnection, ServerEndpoint
from tcpls.core.events import ConnectionRemoved, SessionClosed
from tcpls.core.session import CoreSession
from tcpls.devcert import DevPKI, make_test_pki
from tcpls.errors import (
    AlertDescription,
    BadRecordMac,
    DecodeError,
    HandshakeFailure,
    IllegalParameter,
    InternalError,
    PeerAlert,
    ProtocolError,
    RecordOverflow,
    TCPLSError,
    UnexpectedMessage,
)
from tcpls.tls.connection import TLSConnection
from tcpls.tls.events import HandshakeCompleted, JoinRequested
from tcpls.tls.handshake import JoinAttempt
from tcpls.tls.hello import (
    build_join_server_hello,
    check_client_hello,
    check_tcpls_placement,
    parse_client_hello,
    parse_join_server_hello,
)
from tcpls.tls.record import (
    HEADER_SIZE,
    MAX_CIPHERTEXT,
    MAX_PLAINTEXT,
    TAG_SIZE,
    CipherSuite,
    RecordProtection,
    RecordReader,
    TrafficKeys,
)
from tcpls.wire.extensions import (
    DEFAULT_CODEPOINTS,
    TOKEN_SIZE,
    decode_tcpls,
    decode_token_body,
    encode_token_body,
)
from tcpls.wire.frames import (
    Frame,
    Padding,
    StreamFrame,
    encode_frame,
    encode_frames,
    frame_size,
    is_ack_eliciting,
    is_retransmittable,
    parse_frames,
)
from tests.fuzz.fuzz_handshake_engine import handshake_engine

__all__ = [
    "FIXED_SUITES",
    "JOIN_SESSION_ID",
    "KNOWN_TOKEN",
    "SMALL_TUNING",
    "TARGETS",
    "FuzzFailure",
    "client_keys",
    "fuzz_pki",
    "server_keys",
]


class FuzzFailure(AssertionError):
    """A property that a target checks does not hold: a bug (in src, or in the target)."""


Target = Callable[[bytes], None]

# --------------------------------------------------------------------------- fixed material

#: The suites selected by an input's suite byte (``byte % 3``).
FIXED_SUITES: tuple[CipherSuite, ...] = (
    CipherSuite.AES_128_GCM_SHA256,
    CipherSuite.AES_256_GCM_SHA384,
    CipherSuite.CHACHA20_POLY1305_SHA256,
)
#: The join token the TLS targets accept (the test vectors' token); any other is rejected.
KNOWN_TOKEN = bytes(range(TOKEN_SIZE))
#: The legacy_session_id the join targets expect a ServerHello to echo.
JOIN_SESSION_ID = bytes(range(0x40, 0x60))
#: Small limits, so that one fuzzed input can reach them (a flag of ``session`` picks them).
#: Names that this version of :class:`SessionTuning` does not have are left out.
_SMALL_LIMITS = {
    "ack_records": 2,
    "max_peer_streams": 8,
    "max_open_streams": 8,
    "max_total_streams": 64,
    "max_reassembly_bytes": 2048,
    "stream_receive_buffer": 4096,
    "session_receive_buffer": 8192,
}
SMALL_TUNING = SessionTuning(
    **{
        name: value
        for name, value in _SMALL_LIMITS.items()
        if name in {f.name for f in dataclasses.fields(SessionTuning)}
    }
)


def _secret(suite: CipherSuite, fill: int) -> bytes:
    return bytes((fill,)) * (48 if suite == CipherSuite.AES_256_GCM_SHA384 else 32)


_CLIENT_KEYS = {s: TrafficKeys(s, _secret(s, 0x0B)) for s in FIXED_SUITES}
_SERVER_KEYS = {s: TrafficKeys(s, _secret(s, 0x0C)) for s in FIXED_SUITES}


def client_keys(suite: CipherSuite = CipherSuite.AES_128_GCM_SHA256) -> TrafficKeys:
    """The fixed keys of the client's direction (what a server target reads with)."""
    return _CLIENT_KEYS[suite]


def server_keys(suite: CipherSuite = CipherSuite.AES_128_GCM_SHA256) -> TrafficKeys:
    """The fixed keys of the server's direction (what a client target reads with)."""
    return _SERVER_KEYS[suite]


_pki_dir: Path | None = None
_pki: DevPKI | None = None
_endpoint: ServerEndpoint | None = None


def _cleanup() -> None:
    if _pki_dir is not None:
        shutil.rmtree(_pki_dir, ignore_errors=True)


def fuzz_pki() -> DevPKI:
    """A throw-away CA and server certificate, made once per process."""
    global _pki, _pki_dir
    if _pki is None:
        _pki_dir = Path(tempfile.mkdtemp(prefix="tcpls-fuzz-pki-"))
        atexit.register(_cleanup)
        _pki = make_test_pki(_pki_dir)
    return _pki


def _server_endpoint() -> ServerEndpoint:
    global _endpoint
    if _endpoint is None:
        pki = fuzz_pki()
        _endpoint = ServerEndpoint(
            ServerConfig(certfile=str(pki.cert_file), keyfile=str(pki.key_file), tcpls=True)
        )
    return _endpoint


# --------------------------------------------------------------------------- helpers


class _Recorder(logging.Handler):
    """Keeps the records logged with a traceback (the record layer's catch-all)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.failures: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.failures.append(record)


@contextlib.contextmanager
def _no_internal_errors() -> Iterator[None]:
    """Fail if tcpls logs an exception (``internal error while processing records``).

    The original exception is raised again, with its traceback, as the cause.
    """
    recorder = _Recorder()
    logger = logging.getLogger("tcpls")
    logger.addHandler(recorder)
    try:
        yield
    finally:
        logger.removeHandler(recorder)
    if recorder.failures:
        record = recorder.failures[0]
        assert record.exc_info is not None
        original = record.exc_info[1]
        raise FuzzFailure(f"tcpls logged: {record.getMessage()}") from original


def _check_error(error: object, where: str, *, peer_is_ours: bool = False) -> None:
    """An error that ended a connection or a session must be a clean protocol outcome.

    A fatal ``internal_error`` alert *received* is a bug only when the peer is our own
    code (the session target); a fuzzed peer may send any alert.
    """
    if error is None:
        return
    if not isinstance(error, TCPLSError):
        raise FuzzFailure(f"{where}: not a TCPLSError: {error!r}") from (
            error if isinstance(error, BaseException) else None
        )
    if isinstance(error, InternalError):
        raise FuzzFailure(f"{where}: internal error: {error}") from error
    received = isinstance(error, PeerAlert)
    if (
        isinstance(error, ProtocolError | PeerAlert)
        and error.alert == AlertDescription.internal_error
        and (peer_is_ours or not received)
    ):
        raise FuzzFailure(f"{where}: internal_error alert: {error!r}") from error


def _pieces(data: bytes, size: int) -> Iterator[bytes]:
    """``data`` cut into reads of ``size`` bytes (``0``: one read)."""
    if size <= 0:
        yield data
        return
    for i in range(0, len(data), size):
        yield data[i : i + size]


# --------------------------------------------------------------------------- 1. records


_ErrorTypes = tuple[type[ProtocolError], ...]
#: What a reader may raise for a header whose content type is not a TLS one (it may also
#: return the record and leave the refusal to the connection: RFC 8446 §5).
_BAD_TYPE: _ErrorTypes = (DecodeError, UnexpectedMessage)


class _Expected:
    """What an independent record cutter makes of a byte stream."""

    def __init__(self, stream: bytes) -> None:
        #: Complete records before any header that must be refused, and for each what
        #: the reader may raise instead of returning it (empty: it must return it).
        self.records: list[tuple[tuple[int, bytes, bytes], _ErrorTypes]] = []
        #: What the reader must raise at the first header that is not TLS (empty: none).
        self.must_raise: _ErrorTypes = ()
        #: What it may raise for the header of the incomplete record at the end.
        self.may_raise_last: _ErrorTypes = ()
        #: Bytes left in the reader when nothing is refused.
        self.left = 0
        pos = 0
        while len(stream) - pos >= HEADER_SIZE:
            content_type = stream[pos]
            version = int.from_bytes(stream[pos + 1 : pos + 3], "big")
            length = int.from_bytes(stream[pos + 3 : pos + 5], "big")
            may = _BAD_TYPE if not 20 <= content_type <= 23 else ()
            must: list[type[ProtocolError]] = []
            if length > MAX_CIPHERTEXT:
                must.append(RecordOverflow)
            if version >> 8 != 3:
                must.append(DecodeError)
            if must:  # the checks may come in any order
                self.must_raise = (*must, *may)
                return
            end = pos + HEADER_SIZE + length
            if end > len(stream):
                self.may_raise_last = may
                break
            header, body = stream[pos : pos + HEADER_SIZE], stream[pos + HEADER_SIZE : end]
            self.records.append(((content_type, header, body), may))
            pos = end
        self.left = len(stream) - pos

    def check(self, got: list[tuple[int, bytes, bytes]], error: ProtocolError | None) -> None:
        i = len(got)
        if i > len(self.records) or got != [r for r, _ in self.records[:i]]:
            raise FuzzFailure(f"records differ from the reference after {i} records")
        if error is None:
            if i < len(self.records):
                raise FuzzFailure(f"{len(self.records) - i} complete records not returned")
            if self.must_raise:
                raise FuzzFailure(f"a header that is not TLS was accepted ({self.must_raise})")
            return
        if i < len(self.records):
            allowed = self.records[i][1]
        else:
            allowed = self.must_raise or self.may_raise_last
        if not isinstance(error, allowed):
            raise FuzzFailure(f"{error!r} raised where {allowed or 'nothing'} was allowed")


def _open_checked(
    protection: RecordProtection, header: memoryview, body: memoryview, out: memoryview
) -> None:
    sequence = protection.sequence
    try:
        content_type, n = protection.open_into(header, body, out)
    except BadRecordMac:
        if protection.sequence != sequence:
            raise FuzzFailure("the sequence advanced on a record that failed") from None
        return
    except UnexpectedMessage:
        return  # all-zero inner plaintext
    limit = len(body) - TAG_SIZE - 1
    if not 0 <= n <= limit or content_type == 0 or out[n] != content_type:
        raise FuzzFailure(f"open_into returned type {content_type}, length {n}")
    if any(out[n + 1 : limit + 1]):
        raise FuzzFailure("open_into stripped a non-zero byte as padding")
    if protection.sequence != sequence + 1:
        raise FuzzFailure("the sequence did not advance after a record opened")


def record_reader(data: bytes) -> None:
    """:class:`RecordReader` against an independent cutter, and ``open_into`` on each body.

    Input: ``[read][connection ID][first sequence][suite]`` then the byte stream. ``read``:
    low 7 bits times 37 is the size of each read (0: one read); the high bit fills the
    reader through ``get_buffer``/``buffer_updated`` instead of ``feed``. Every record is
    opened with the fixed client keys, so the vectors' records authenticate.
    """
    if len(data) < 4:
        return
    read, cid, first_sequence, suite = data[0], data[1], data[2], data[3]
    stream = data[4:]
    protection = RecordProtection(client_keys(FIXED_SUITES[suite % 3]), cid)
    protection.sequence = first_sequence
    out = memoryview(bytearray(MAX_CIPHERTEXT))
    reader = RecordReader()
    got: list[tuple[int, bytes, bytes]] = []
    error: ProtocolError | None = None
    for piece in _pieces(stream, (read & 0x7F) * 37):
        if read & 0x80:
            mv = memoryview(piece)
            while mv:
                target = reader.get_buffer()
                n = min(len(target), len(mv))
                if n == 0:
                    raise FuzzFailure("get_buffer offered no space")
                target[:n] = mv[:n]
                reader.buffer_updated(n)
                mv = mv[n:]
        else:
            reader.feed(piece)
        while True:
            try:
                record = reader.next_record()
            except (RecordOverflow, DecodeError, UnexpectedMessage) as exc:
                error = exc
                break
            if record is None:
                break
            content_type, header, body = record
            got.append((content_type, bytes(header), bytes(body)))
            _open_checked(protection, header, body, out)
        if error is not None:
            break
    expected = _Expected(stream)
    expected.check(got, error)
    if error is None and reader.pending != expected.left:
        raise FuzzFailure(f"{reader.pending} bytes pending, expected {expected.left}")


def _aead(keys: TrafficKeys) -> AESGCM | ChaCha20Poly1305:
    if keys.cipher_suite == CipherSuite.CHACHA20_POLY1305_SHA256:
        return ChaCha20Poly1305(keys.key)
    return AESGCM(keys.key)


def record_open(data: bytes) -> None:
    """``open_into`` (and ``seal``) against records sealed independently here.

    Input: ``[suite][flags][connection ID: 4][sequence: 8]`` then the inner plaintext
    (content, content type, zero padding, exactly as fuzzed). Flags: bit 0 corrupts the
    byte at ``flags >> 1`` of the protected record; bit 1 also checks ``seal``.
    """
    if len(data) < 14:
        return
    keys = client_keys(FIXED_SUITES[data[0] % 3])
    flags = data[1]
    cid = int.from_bytes(data[2:6], "big")
    sequence = int.from_bytes(data[6:14], "big")
    inner = data[14 : 14 + MAX_CIPHERTEXT - TAG_SIZE]
    nonce = (int.from_bytes(keys.iv, "big") ^ (cid << 64) ^ sequence).to_bytes(12, "big")
    header = bytes((23, 3, 3)) + (len(inner) + TAG_SIZE).to_bytes(2, "big")
    body = bytearray(_aead(keys).encrypt(nonce, inner, header))
    corrupt = bool(flags & 1)
    if corrupt:
        body[(flags >> 1) % len(body)] ^= 0x80
    protection = RecordProtection(keys, cid)
    protection.sequence = sequence
    out = bytearray(max(len(body) - TAG_SIZE, 0))
    try:
        content_type, n = protection.open_into(
            memoryview(header), memoryview(body), memoryview(out)
        )
    except BadRecordMac:
        if not corrupt and inner:
            raise FuzzFailure("an authentic record failed to open") from None
        return
    except RecordOverflow:
        # the limit is on the whole inner plaintext, padding included (RFC 8446 §5.4)
        if len(inner) <= MAX_PLAINTEXT + 1:
            raise FuzzFailure("a record within the size limit was refused") from None
        return
    except UnexpectedMessage:
        if any(inner):
            raise FuzzFailure("a record with a content type was refused") from None
        return
    if corrupt:
        raise FuzzFailure("a corrupted record opened")
    if len(inner) > MAX_PLAINTEXT + 1:
        raise FuzzFailure("an inner plaintext over 2^14 + 1 bytes was accepted")
    stripped = inner.rstrip(b"\x00")
    if (content_type, bytes(out[:n])) != (stripped[-1], stripped[:-1]):
        raise FuzzFailure("open_into returned other content than was sealed")
    if protection.sequence != sequence + 1:
        raise FuzzFailure("the sequence did not advance")
    content = stripped[:-1]
    if flags & 2 and len(content) <= MAX_PLAINTEXT and sequence < (1 << 64) - 1:
        sealer = RecordProtection(keys, cid)
        sealer.sequence = sequence
        record = sealer.seal(content, content_type)
        plain = content + bytes((content_type,))
        header2 = bytes((23, 3, 3)) + (len(plain) + TAG_SIZE).to_bytes(2, "big")
        if record != header2 + _aead(keys).encrypt(nonce, plain, header2):
            raise FuzzFailure("seal produced another record than the reference")


# --------------------------------------------------------------------------- 2. frames


def _same(a: list[Frame], b: list[Frame]) -> bool:
    """Frames equal, comparing Stream data as bytes (views and bytes compare alike)."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if isinstance(x, StreamFrame) and isinstance(y, StreamFrame):
            if (x.stream_id, x.offset, bytes(x.data), x.fin) != (
                y.stream_id,
                y.offset,
                bytes(y.data),
                y.fin,
            ):
                return False
        elif x != y:
            return False
    return True


def frames(data: bytes) -> None:
    """:func:`parse_frames` on bytes, bytearray and memoryview, then re-encoding.

    The three forms must agree. Whatever parses re-encodes to the same bytes, frame by
    frame and as a whole (each run of Padding bytes is one ``Padding(n)``, so two Padding
    values are never adjacent), and the frame sizes add up to the record's.
    """
    outcomes: list[list[Frame] | type[Exception]] = []
    for form in (bytes(data), bytearray(data), memoryview(bytearray(data))):
        try:
            outcomes.append(parse_frames(form))
        except (DecodeError, IllegalParameter) as exc:
            outcomes.append(type(exc))
    first = outcomes[0]
    for other in outcomes[1:]:
        if isinstance(first, list) and isinstance(other, list):
            if not _same(first, other):
                raise FuzzFailure("bytes and buffer inputs parse differently")
        elif first is not other:
            raise FuzzFailure(f"bytes and buffer inputs disagree: {first!r} vs {other!r}")
    view_frames = outcomes[2]
    if isinstance(view_frames, list):
        for frame in view_frames:
            if isinstance(frame, StreamFrame) and not isinstance(frame.data, memoryview):
                raise FuzzFailure("a memoryview record gave Stream data that is not a view")
    if not isinstance(first, list):
        return
    pos = 0
    previous: Frame | None = None
    for frame in first:
        if isinstance(frame, Padding) and isinstance(previous, Padding):
            raise FuzzFailure("two adjacent Padding values")
        size = frame_size(frame)
        encoded = encode_frame(frame)
        if len(encoded) != size or encoded != data[pos : pos + size]:
            raise FuzzFailure(f"{frame!r} does not re-encode to its bytes")
        is_ack_eliciting(frame)
        is_retransmittable(frame)
        pos += size
        previous = frame
    if pos != len(data):
        raise FuzzFailure(f"frame sizes add up to {pos}, not {len(data)}")
    if encode_frames(first) != data:
        raise FuzzFailure("encode_frames(parse_frames(x)) != x")


# --------------------------------------------------------------------------- 3. extensions


def extensions(data: bytes) -> None:
    """The bodies of ``tcpls``, ``tcpls_join`` and ``tcpls_token`` (design: Token encoding)."""
    try:
        decode_tcpls(data)
    except DecodeError:
        if not data:
            raise FuzzFailure("an empty tcpls body was refused") from None
    else:
        if data:
            raise FuzzFailure("a non-empty tcpls body was accepted")
    valid = (len(data) == TOKEN_SIZE + 1 and data[0] == TOKEN_SIZE) or len(data) == TOKEN_SIZE
    try:
        token = decode_token_body(data)
    except DecodeError:
        if valid:
            raise FuzzFailure("a valid token body was refused") from None
        return
    if not valid or len(token) != TOKEN_SIZE or token != data[-TOKEN_SIZE:]:
        raise FuzzFailure(f"token body of {len(data)} bytes accepted as {token.hex()}")
    if encode_token_body(token) != bytes((TOKEN_SIZE,)) + token:
        raise FuzzFailure("encode_token_body does not round-trip")


# --------------------------------------------------------------------------- 4. hellos


def client_hello(data: bytes) -> None:
    """The handshake-message parsers of :mod:`tcpls.tls.hello` (input: one message).

    :func:`check_tcpls_placement` reads the extensions of any message type (its first
    byte). A ClientHello that :func:`parse_client_hello` accepts goes through
    :meth:`ClientHelloInfo.key_share_groups` and :func:`check_client_hello`, and must be
    answerable by a join ServerHello that :func:`parse_join_server_hello` accepts.
    """
    if data:
        with contextlib.suppress(DecodeError, UnexpectedMessage, IllegalParameter):
            check_tcpls_placement(data[0], data)
    try:
        info = parse_client_hello(data)
    except (DecodeError, UnexpectedMessage):
        return
    with contextlib.suppress(DecodeError):
        info.key_share_groups()
    with contextlib.suppress(DecodeError, HandshakeFailure):
        check_client_hello(info, [int(s) for s in FIXED_SUITES], [0x001D, 0x0017])
    if len(info.legacy_session_id) > 32:
        raise FuzzFailure("a session id longer than 32 bytes was accepted")
    if not info.cipher_suites:
        raise FuzzFailure("a ClientHello without cipher suites was accepted")
    join = info.extensions.get(DEFAULT_CODEPOINTS.tcpls_join)
    if join is not None:
        with contextlib.suppress(DecodeError):
            decode_token_body(join)
    for suite in FIXED_SUITES:
        try:
            hello = build_join_server_hello(info, suite)
        except HandshakeFailure:
            if int(suite) in info.cipher_suites:
                raise FuzzFailure(f"{suite.name} is offered but was refused") from None
            continue
        parse_join_server_hello(
            hello, legacy_session_id=info.legacy_session_id, cipher_suite=suite
        )


def join_server_hello(data: bytes) -> None:
    """:func:`parse_join_server_hello` (input: ``[options]`` then one handshake message).

    Options: ``% 3`` picks the session's suite; bit 7 expects an empty session id instead
    of :data:`JOIN_SESSION_ID`.
    """
    if not data:
        return
    suite = FIXED_SUITES[data[0] % 3]
    session_id = b"" if data[0] & 0x80 else JOIN_SESSION_ID
    with contextlib.suppress(DecodeError, UnexpectedMessage, IllegalParameter):
        parse_join_server_hello(data[1:], legacy_session_id=session_id, cipher_suite=suite)


def _feed_tls(tls: TLSConnection, data: bytes, read: int) -> None:
    for piece in _pieces(data, read):
        view = memoryview(piece)
        while view:
            target = tls.get_buffer()  # read as an I/O layer does
            n = min(len(target), len(view))
            target[:n] = view[:n]
            view = view[n:]
            tls.buffer_updated(n)
            _drain_tls(tls)


def _drain_tls(tls: TLSConnection, on_event: Callable[[object], None] | None = None) -> None:
    """Every event and application record ``tls`` has now (records are dropped)."""
    while True:
        while (event := tls.next_event()) is not None:
            if on_event is not None:
                on_event(event)
        if tls.read_record() is None and not tls.has_events:
            return


def _session_of(pending: PendingConnection) -> CoreSession | None:
    return pending.session


def tls_server(data: bytes) -> None:
    """A server :class:`TLSConnection` built as :class:`ServerEndpoint` builds it, fed raw
    bytes from the network. It must never raise; it may only fail with a clean alert.

    Input: ``[options]`` then the bytes. Options: low 6 bits times 11 is the size of each
    read (0: one read); bit 6 delivers EOF at the end. A join ClientHello with
    :data:`KNOWN_TOKEN` is accepted with the fixed keys (Connection ID 1, the suite the
    hello lists first), so seeds can carry records protected with :func:`client_keys`; any
    other token goes to :meth:`ServerEndpoint.route_join`, which rejects it.
    """
    if not data:
        return
    options, stream = data[0], data[1:]
    endpoint = _server_endpoint()
    pending = endpoint.new_connection()
    tls = pending.tls
    now = 1000.0
    with _no_internal_errors():
        for piece in _pieces(stream, (options & 0x3F) * 11):
            if pending.session is not None:
                pending.session.receive_data(0, piece, now)
                continue
            tls.receive_data(piece)
            made = _session_of(pending)
            if made is not None:
                made.poll_connection(0, now)  # this ClientHello made the session
                continue
            while (event := tls.next_event()) is not None:
                if isinstance(event, JoinRequested):
                    if event.token == KNOWN_TOKEN:
                        offered = event.client_hello.cipher_suites
                        suite = next((s for s in FIXED_SUITES if s in offered), FIXED_SUITES[0])
                        tls.accept_join(
                            read_keys=client_keys(suite),
                            write_keys=server_keys(suite),
                            connection_id=1,
                        )
                    else:
                        endpoint.route_join(tls, event.token)
                elif not isinstance(event, HandshakeCompleted):
                    _check_error(getattr(event, "error", None), "server connection")
            while tls.read_record() is not None:
                pass  # a joined connection's records (nobody reads them here)
        if options & 0x40:
            if pending.session is not None:
                pending.session.receive_eof(0, now)
            else:
                tls.receive_eof()
                _drain_tls(tls)
        tls.data_to_send()
        error = pending.session.error if pending.session is not None else None
        if pending.session is not None:
            # the TCP connection goes away, as every connection does in the end: the session
            # (still handshaking, mostly) is closed and its join tokens are revoked
            pending.session.connection_lost(0, None, now)
    _check_error(tls.error, "server connection")
    _check_error(error, "server session")


def tls_join_client(data: bytes) -> None:
    """A joining client :class:`TLSConnection` fed the server's bytes (ServerHello, CCS,
    then records protected with :func:`server_keys` and Connection ID 1).

    Input: ``[options]`` then the bytes; options as for :func:`tls_server`. The client
    offers ``FIXED_SUITES[0]`` first, and the random session id of its join ClientHello is
    replaced by :data:`JOIN_SESSION_ID` so that seeds can echo it.
    """
    if not data:
        return
    options, stream = data[0], data[1:]
    suite = FIXED_SUITES[0]
    join = JoinAttempt.build(
        KNOWN_TOKEN,
        read_keys=server_keys(suite),
        write_keys=client_keys(suite),
        connection_id=1,
        server_name="localhost",
        codepoints=DEFAULT_CODEPOINTS,
    )
    # the session id the seeds' ServerHellos echo
    tls = TLSConnection(is_client=True, join=dataclasses.replace(join, session_id=JOIN_SESSION_ID))
    with _no_internal_errors():
        tls.start()
        _feed_tls(tls, stream, (options & 0x3F) * 11)
        if options & 0x40:
            tls.receive_eof()
            _drain_tls(tls)
        tls.data_to_send()
    _check_error(tls.error, "join client connection")


# --------------------------------------------------------------------------- 5. session


def _session_errors(session: CoreSession, events: list[object]) -> Iterator[object]:
    yield session.error
    for event in events:
        if isinstance(event, ConnectionRemoved | SessionClosed):
            yield event.error
    for conn in session.connections.values():
        yield conn.tls.error


def session(data: bytes) -> None:
    """Decrypted record contents injected into an established TCPLS session.

    Input: ``[flags]`` then records, each ``[u16 header][content]``: the low 15 bits of the
    header are the content length (cut to the bytes left and to 16 KiB), the high bit
    sends it on the joined connection (when there is one) instead of connection 0.
    Flags: bit 0: the server sends, the client receives (otherwise the reverse); bit 1:
    join a second connection first; bit 2: let the two sessions talk after each record
    (otherwise once at the end); bit 3: advance the clock by 0.1 s at the end (timers);
    bit 4: both sessions use :data:`SMALL_TUNING`; bit 5: the receiver first sends 3000
    bytes and FIN on a stream of its own, not yet acknowledged (so fuzzed ACKs meet a real
    retransmission log); bit 6: at the end the receiving application reads every readable
    stream and closes the session; bit 7: the client does not offer TCPLS, so the session
    is plain TLS (design: Fallback) and record contents are stream 0's bytes (no join then).

    Records are sealed with the sender's real keys (``tests.core.util.inject_raw``). The
    receiver must accept them or end with a clean protocol error and its alert; no
    session may end with ``internal_error`` and nothing may raise.
    """
    from tests.core.util import established, inject_raw

    if not data:
        return
    flags = data[0]
    plain = bool(flags & 0x80)
    h = established(
        fuzz_pki(), tuning=SMALL_TUNING if flags & 0x10 else None, client_tcpls=not plain
    )
    cids = [0]
    if flags & 0x02 and not plain:
        link = h.join()
        if link.client_id in h.client.connections and link.server is h.server:
            cids.append(link.client_id)
    sender, receiver = (h.server, h.client) if flags & 0x01 else (h.client, h.server)
    if flags & 0x20:
        own = 0 if plain else receiver.open_stream()
        receiver.send(own, bytes(3000))
        receiver.send_eof(own)
        h.pump()
    with _no_internal_errors():
        pos = 1
        while pos + 2 <= len(data):
            head = int.from_bytes(data[pos : pos + 2], "big")
            pos += 2
            n = min(head & 0x7FFF, len(data) - pos, MAX_PLAINTEXT)
            content = data[pos : pos + n]
            pos += n
            cid = cids[-1] if head & 0x8000 else 0
            conn = sender.connections.get(cid)
            if conn is None or not conn.tls.can_send:
                break
            inject_raw(h, sender, receiver, content, cid)
            if flags & 0x04:
                h.pump()
        h.pump()
        if flags & 0x08:
            h.advance(0.1)
        if flags & 0x40:
            for sid in sorted(receiver.readable):
                receiver.read(sid)
            receiver.close()
            h.pump()
            h.advance(0.1)
    _check_error_list(h.client, list(h.client_events), "client")
    _check_error_list(h.server, list(h.server_events), "server")
    error = receiver.error
    if isinstance(error, ProtocolError) and receiver.connections:
        # the offended session ends, and its alert reaches the offender and ends it
        # too, unless the offender's Connection Reset left no connection to send it on
        # (design: Alerts)
        told = sender.error
        if not receiver.closed or not (isinstance(told, PeerAlert) and told.alert == error.alert):
            raise FuzzFailure(
                f"the receiver failed with {error!r} but the sender ended with {told!r}"
            ) from error


def _check_error_list(session: CoreSession, events: list[object], side: str) -> None:
    for error in _session_errors(session, events):
        _check_error(error, f"{side} session", peer_is_ours=True)


#: Every target, by the name used on the command line and for corpus directories.
TARGETS: dict[str, Target] = {
    "record_reader": record_reader,
    "record_open": record_open,
    "frames": frames,
    "extensions": extensions,
    "client_hello": client_hello,
    "join_server_hello": join_server_hello,
    "tls_server": tls_server,
    "tls_join_client": tls_join_client,
    "session": session,
    "handshake_engine": handshake_engine,
}
