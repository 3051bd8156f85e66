"""One TCP connection's TLS 1.3: handshake or join, records, alerts. Sans-I/O.

Theory of operation
-------------------
A :class:`TLSConnection` is fed the bytes its TCP connection receives
(:meth:`~TLSConnection.receive_data`, or :meth:`~TLSConnection.get_buffer` and
:meth:`~TLSConnection.buffer_updated` for a zero-copy ``BufferedProtocol``) and
produces bytes to send (:meth:`~TLSConnection.data_to_send`) and events
(:meth:`~TLSConnection.next_event`, see :mod:`tcpls.tls.events`). It never does
I/O and never reads a clock.

Records are processed one at a time. Handshake records are reassembled into
whole messages here (not in the engine) so that a message spanning a key
change is detected (RFC 8446 §5.1). Each message goes to the
:class:`~tcpls.tls.engine.HandshakeEngine`, which installs keys through a
callback *before* it returns the bytes of the previous epoch; this module
therefore keeps one write protection per epoch and flushes the engine's output
epoch by epoch, each with its own keys. The read protection is replaced the
moment the engine installs a new read key, so the next record is opened with
it.

Decrypted application data is handed to ``on_data`` (a callable taking a
``memoryview`` that is valid only during the call) as each record is opened:
for plain TLS (design: Fallback) it is the bytestream, for TCPLS it is a record's frames.
Without a handler, data accumulates and :meth:`~TLSConnection.read_data`
returns it.

Four ways to start: :meth:`TLSConnection.client` and :meth:`TLSConnection.server`
run a full handshake (a server also recognises joins when ``accept_joins``);
:meth:`TLSConnection.join_client` joins a new TCP connection to an existing
TCPLS session with a token (draft-04 §4.2.1, design: Joins), and a server answers
such a join with :meth:`TLSConnection.accept_join` or
:meth:`TLSConnection.reject_join` after the :class:`JoinRequested` event.

Errors never escape as exceptions from the input methods: a protocol violation
queues the matching alert, closes the connection and emits
:class:`ConnectionFailed`.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from enum import Enum

from tcpls.errors import (
    AlertDescription,
    BadRecordMac,
    ConnectionClosedError,
    DecodeError,
    HandshakeCanceled,
    IllegalParameter,
    InternalError,
    NotTLSError,
    PeerAlert,
    ProtocolError,
    RecordOverflow,
    TCPLSError,
    UnexpectedMessage,
)
from tcpls.tls.engine import Epoch, HandshakeEngine, HandshakeType
from tcpls.tls.events import (
    CloseNotifyReceived,
    ConnectionFailed,
    Event,
    HandshakeCompleted,
    JoinRequested,
    SessionTicketReceived,
    TransportEnded,
)
from tcpls.tls.hello import (
    EARLY_DATA,
    ClientHelloInfo,
    build_join_client_hello,
    build_join_server_hello,
    check_tcpls_placement,
    parse_client_hello,
    parse_join_server_hello,
)
from tcpls.tls.record import (
    HEADER_SIZE,
    MAX_PLAINTEXT,
    TAG_SIZE,
    CipherSuite,
    ContentType,
    RecordProtection,
    RecordReader,
    RecordWriter,
    TrafficKeys,
    plaintext_record,
    scratch,
)
from tcpls.wire.extensions import DEFAULT_CODEPOINTS, ExtensionCodepoints, decode_token_body

__all__ = ["ConnectionState", "TLSConnection"]

logger = logging.getLogger(__name__)

CCS_RECORD = b"\x14\x03\x03\x00\x01\x01"
MAX_HANDSHAKE_MESSAGE = 256 * 1024
#: Largest ClientHello a server reads: before it, a connection belongs to no session.
MAX_CLIENT_HELLO = 64 * 1024
#: Bytes a connection keeps while its input is held after the handshake (beyond: it fails).
_MAX_HELD = 1024 * 1024
#: Where bytes that are dropped are read into.
_DISCARD = memoryview(bytearray(4096))
#: Bytes of early data records a server that declines early data skips (RFC 8446 §4.2.10).
MAX_SKIPPED_EARLY_DATA = 64 * 1024
_ALERT_WARNING = 1
_ALERT_FATAL = 2

#: Receives decrypted application data; returns true if it kept a reference to the view.
DataHandler = Callable[[memoryview], bool | None]


class ConnectionState(Enum):
    """Life cycle of a :class:`TLSConnection`."""

    START = "start"
    HANDSHAKE = "handshake"
    JOIN_WAIT = "join-wait"  # server: a join ClientHello awaits accept_join/reject_join
    ESTABLISHED = "established"
    CLOSED = "closed"


class TLSConnection:
    """TLS 1.3 (or a TCPLS join) over one TCP connection, without I/O."""

    def __init__(
        self,
        *,
        is_client: bool,
        engine: HandshakeEngine | None = None,
        engine_factory: Callable[[], HandshakeEngine] | None = None,
        accept_joins: bool = False,
        codepoints: ExtensionCodepoints = DEFAULT_CODEPOINTS,
        max_record_size: int = MAX_PLAINTEXT,
        receive_buffer_size: int = 256 * 1024,
    ) -> None:
        if not 1 <= max_record_size <= MAX_PLAINTEXT:
            raise ValueError("max_record_size must be between 1 and 16384")
        self.is_client = is_client
        self.state = ConnectionState.START
        self.engine = engine
        self._engine_factory = engine_factory
        self._accept_joins = accept_joins
        self.codepoints = codepoints
        self.max_record_size = max_record_size
        #: Whether TCPLS is in use on this connection (set when the handshake completes).
        self.tcpls = False
        #: Whether this connection was joined to an existing session.
        self.joined = False
        self.cipher_suite: CipherSuite | None = None
        #: Handler of decrypted application data; see the module docstring.
        self.on_data: DataHandler | None = None
        self.close_notify_received = False
        self.close_notify_sent = False
        #: The error that closed the connection, if any.
        self.error: TCPLSError | None = None

        # One record at a time until the handshake is done (a stranger's connection
        # holds little); then up to receive_buffer_size per read.
        self._reader = RecordReader(0)
        self._receive_buffer_size = receive_buffer_size
        self._writer = RecordWriter()
        self._events: deque[Event] = deque()
        self._received = bytearray()
        self._read: RecordProtection | None = None
        self._read_epoch = Epoch.INITIAL
        self._write: dict[Epoch, RecordProtection] = {}
        self._write_epoch = Epoch.INITIAL
        self._hs_buffer = bytearray()
        self._ccs_allowed = False
        self._ccs_sent = False
        self._alert_sent = False
        self._first_record_version = 0x0301  # legacy version of the initial ClientHello
        #: Server: refuses a ClientHello it cannot complete before any work is done.
        self.hello_check: Callable[[ClientHelloInfo], None] | None = None
        # Server: bytes of early data records still to skip after declining early data
        self._early_data_skip = 0
        # join state
        self._join_session_id = b""
        self._join_keys: tuple[TrafficKeys, TrafficKeys, int] | None = None
        self._join_client_hello: ClientHelloInfo | None = None
        self._pending_hello: bytes | None = None
        # Set when the handshake completes: stop reading records until the owner
        # has seen HandshakeCompleted and installed its data handler.
        self._hold_input = False
        self._held_bytes = bytearray()

    # -- construction ----------------------------------------------------------

    @classmethod
    def client(cls, engine: HandshakeEngine, **kwargs: object) -> TLSConnection:
        """A client that runs a full handshake with ``engine``. Call :meth:`start`."""
        conn = cls(is_client=True, engine=engine, **kwargs)  # type: ignore[arg-type]
        engine._on_secret = conn._on_secret
        return conn

    @classmethod
    def server(
        cls,
        engine_factory: Callable[[], HandshakeEngine],
        *,
        accept_joins: bool = False,
        **kwargs: object,
    ) -> TLSConnection:
        """A server; the engine is built when a ClientHello that is not a join arrives."""
        conn = cls(
            is_client=False,
            engine_factory=engine_factory,
            accept_joins=accept_joins,
            **kwargs,  # type: ignore[arg-type]
        )
        conn.state = ConnectionState.HANDSHAKE
        return conn

    @classmethod
    def join_client(
        cls,
        token: bytes,
        *,
        read_keys: TrafficKeys,
        write_keys: TrafficKeys,
        connection_id: int,
        server_name: str | None,
        codepoints: ExtensionCodepoints = DEFAULT_CODEPOINTS,
        **kwargs: object,
    ) -> TLSConnection:
        """A client joining this TCP connection to a session with ``token`` (design: Joins).

        ``read_keys``/``write_keys`` are the session's application traffic keys
        (server's and client's); ``connection_id`` is the token's sequence number.
        Call :meth:`start` to send the join ClientHello.
        """
        conn = cls(is_client=True, codepoints=codepoints, **kwargs)  # type: ignore[arg-type]
        conn._join_keys = (read_keys, write_keys, connection_id)
        suite = write_keys.cipher_suite
        hello, session_id = build_join_client_hello(
            token,
            server_name=server_name,
            cipher_suites=[suite, *(s for s in CipherSuite if s != suite)],
            codepoints=codepoints,
        )
        conn._join_session_id = session_id
        conn._pending_hello = hello
        return conn

    # -- public properties -----------------------------------------------------

    @property
    def handshake_complete(self) -> bool:
        """Whether application data may be sent."""
        return self.state is ConnectionState.ESTABLISHED

    @property
    def can_send(self) -> bool:
        """Whether application data may be sent now."""
        return self.state is ConnectionState.ESTABLISHED and not self.close_notify_sent

    @property
    def buffer_memory(self) -> int:
        """Bytes held by this connection's record buffers now."""
        return self._reader.capacity + self._writer.capacity + len(self._hs_buffer)

    @property
    def pending_output(self) -> int:
        """Bytes sealed and waiting in :meth:`data_to_send`."""
        return len(self._writer)

    @property
    def write_protection(self) -> RecordProtection | None:
        """The protection application records are sealed with (its ``sequence`` is next)."""
        return self._write.get(Epoch.ONE_RTT)

    @property
    def read_protection(self) -> RecordProtection | None:
        """The protection incoming records are opened with."""
        return self._read

    def traffic_keys(self) -> tuple[TrafficKeys, TrafficKeys]:
        """The application ``(read, write)`` keys, for joining more connections."""
        read, write = self._read, self._write.get(Epoch.ONE_RTT)
        if read is None or write is None or self.state is not ConnectionState.ESTABLISHED:
            raise RuntimeError("application keys are not available before the handshake")
        return read.keys, write.keys

    # -- driving ---------------------------------------------------------------

    def start(self) -> None:
        """Client: send the ClientHello (full handshake or join)."""
        if self.state is not ConnectionState.START or not self.is_client:
            raise RuntimeError("start() is for a client that has not started")
        self.state = ConnectionState.HANDSHAKE
        self._ccs_allowed = True
        hello = self._pending_hello
        if hello is not None:
            self._writer.append(
                plaintext_record(ContentType.handshake, hello, self._first_record_version)
            )
            return
        assert self.engine is not None
        try:
            self._flush(self.engine.start())
        except ProtocolError as exc:
            self._fail(exc)

    def next_event(self) -> Event | None:
        """The next event, or ``None``."""
        return self._events.popleft() if self._events else None

    def data_to_send(self) -> bytes:
        """Bytes to write to the TCP connection (empty when there are none)."""
        return self._writer.take() if len(self._writer) else b""

    def read_data(self) -> bytes:
        """Application data received so far, when no ``on_data`` handler is set."""
        data = bytes(self._received)
        self._received.clear()
        return data

    # -- input -----------------------------------------------------------------

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Writable space for incoming bytes (``asyncio.BufferedProtocol.get_buffer``).

        Never empty: when the reader is full because input is not being processed (a
        join not answered yet), the peer sent what it may not, and the connection
        fails; what comes then is dropped.
        """
        view = self._reader.get_buffer(sizehint)
        if not view:
            self._overflow()
            return _DISCARD
        return view

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` were written into :meth:`get_buffer`; process them."""
        self._reader.buffer_updated(nbytes)
        self._process()

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Process bytes received from the TCP connection."""
        mv = memoryview(data)
        while mv and self.state is not ConnectionState.CLOSED:
            target = self._reader.get_buffer()
            n = min(len(target), len(mv))
            if n == 0:
                if not self._hold_input or len(self._held_bytes) > _MAX_HELD:
                    self._overflow()
                    return
                # the buffer is full while input is held (after the handshake):
                # keep the rest until process_pending()
                self._held_bytes += mv
                return
            target[:n] = mv[:n]
            mv = mv[n:]
            self.buffer_updated(n)

    def receive_eof(self) -> None:
        """The TCP connection delivered EOF (FIN)."""
        if self.state is ConnectionState.CLOSED:
            return
        if self.state is not ConnectionState.ESTABLISHED:
            self._fail(
                ConnectionClosedError("the peer closed the connection during the handshake"),
                send_alert=False,
            )
            return
        self._events.append(TransportEnded(close_notify_received=self.close_notify_received))

    # -- output ----------------------------------------------------------------

    def send_data(self, data: bytes | bytearray | memoryview) -> None:
        """Send application data, cut into records of at most ``max_record_size`` bytes."""
        self._check_can_send()
        mv = memoryview(data)
        size = self.max_record_size
        staging = scratch.staging
        for i in range(0, len(mv), size):
            chunk = mv[i : i + size]
            n = len(chunk)
            staging[:n] = chunk
            self._seal(n, ContentType.application_data)

    def staging_buffer(self) -> memoryview:
        """A view of 16 KiB in which the caller writes one record's content.

        Then call :meth:`seal_staged`. This lets a TCPLS session build frames
        in place with a single copy of the stream data.
        """
        return scratch.staging[:MAX_PLAINTEXT]

    def seal_staged(self, length: int, check: bool = True) -> int:
        """Seal the first ``length`` bytes of :meth:`staging_buffer` as one application record.

        Returns the record's sequence number on this connection. ``check=False``
        skips the state checks for a caller that made them (``can_send``) already.
        """
        if check:
            self._check_can_send()
            if not 0 <= length <= MAX_PLAINTEXT:
                raise ValueError("record content larger than 2^14 bytes")
        protection = self._write[Epoch.ONE_RTT]
        seq = protection.sequence
        writer = self._writer
        out = writer.reserve(length + 1 + TAG_SIZE + HEADER_SIZE)
        writer.commit(protection.seal_into(scratch.staging, length, 23, out))
        return seq

    def send_record(self, content: bytes | bytearray | memoryview) -> int:
        """Seal ``content`` (at most 16 KiB) as one application record; return its sequence."""
        n = len(content)
        if n > MAX_PLAINTEXT:
            raise ValueError("record content larger than 2^14 bytes")
        scratch.staging[:n] = content
        return self.seal_staged(n)

    def close(self) -> None:
        """Send ``close_notify``: we will send no more data on this connection."""
        if self.close_notify_sent or self.state is ConnectionState.CLOSED:
            return
        self.close_notify_sent = True
        if self.state is ConnectionState.ESTABLISHED:
            self._send_alert(AlertDescription.close_notify, _ALERT_WARNING)
        else:
            self._send_alert(AlertDescription.user_canceled, _ALERT_WARNING)
            self._send_alert(AlertDescription.close_notify, _ALERT_WARNING)
            self.state = ConnectionState.CLOSED

    def process_pending(self) -> None:
        """Resume reading records after :class:`HandshakeCompleted` (input is held until then).

        Records that arrived with the last handshake message wait in the buffer so
        that the owner can install ``on_data`` before application data is delivered.
        """
        if self._hold_input:
            self._hold_input = False
            self._process()
            if self._held_bytes:
                held, self._held_bytes = self._held_bytes, bytearray()
                self.receive_data(held)

    def detach(self) -> None:
        """Drop every callback into the owner (its session ended): no reference cycles."""
        self.on_data = None
        self.hello_check = None
        self._engine_factory = None
        if self.engine is not None:
            self.engine.detach(ended=True)

    def trim(self) -> None:
        """Give back the record buffers while nothing is pending (an idle connection)."""
        self._reader.trim()
        self._writer.trim()

    def abort(self, error: TCPLSError) -> None:
        """Close the connection because of ``error`` (sends its alert if it is a ProtocolError)."""
        self._fail(error)

    def key_update(self, request_peer_update: bool = True) -> None:
        """Plain TLS only: send KeyUpdate and switch to the next write keys (RFC 8446 §4.6.3)."""
        self._check_can_send()
        if self.tcpls:
            raise RuntimeError("KeyUpdate is not used in TCPLS mode")
        self._send_key_update(request_peer_update)

    # -- joins (server side) ---------------------------------------------------

    def accept_join(
        self, *, read_keys: TrafficKeys, write_keys: TrafficKeys, connection_id: int
    ) -> None:
        """Accept the pending join: ServerHello + ChangeCipherSpec, then the session's keys."""
        if self.state is not ConnectionState.JOIN_WAIT or self._join_client_hello is None:
            raise RuntimeError("no join is pending on this connection")
        try:
            hello = build_join_server_hello(self._join_client_hello, write_keys.cipher_suite)
        except ProtocolError as exc:
            self._fail(exc)
            return
        self._writer.append(plaintext_record(ContentType.handshake, hello))
        if self._join_client_hello.legacy_session_id:
            self._writer.append(CCS_RECORD)
            self._ccs_sent = True
        self._install_join_keys(read_keys, write_keys, connection_id)
        self._process()

    def reject_join(self, error: ProtocolError | None = None) -> None:
        """Refuse the pending join with a plaintext alert (``illegal_parameter`` by default)."""
        if self.state is ConnectionState.CLOSED:
            return  # it failed meanwhile (the peer sent more than its ClientHello)
        if self.state is not ConnectionState.JOIN_WAIT:
            raise RuntimeError("no join is pending on this connection")
        self._fail(error or IllegalParameter("invalid, used or expired TCPLS token"))

    # -- internals: keys -------------------------------------------------------

    def _on_secret(self, is_write: bool, epoch: Epoch, suite: CipherSuite, secret: bytes) -> None:
        protection = RecordProtection(TrafficKeys(suite, secret))
        self.cipher_suite = suite
        if is_write:
            self._write[epoch] = protection
        else:
            self._read = protection
            self._read_epoch = epoch

    def _install_join_keys(
        self, read_keys: TrafficKeys, write_keys: TrafficKeys, connection_id: int
    ) -> None:
        self._read = RecordProtection(read_keys, connection_id)
        self._read_epoch = Epoch.ONE_RTT
        self._write[Epoch.ONE_RTT] = RecordProtection(write_keys, connection_id)
        self._write_epoch = Epoch.ONE_RTT
        self.cipher_suite = write_keys.cipher_suite
        self.tcpls = True
        self.joined = True
        self._reader.max_capacity = max(self._reader.max_capacity, self._receive_buffer_size)
        self.state = ConnectionState.ESTABLISHED
        self._hold_input = True
        self._events.append(
            HandshakeCompleted(tcpls=True, cipher_suite=write_keys.cipher_suite, joined=True)
        )

    # -- internals: output -----------------------------------------------------

    def _check_can_send(self) -> None:
        if self.state is not ConnectionState.ESTABLISHED:
            if self.state is ConnectionState.CLOSED:
                raise ConnectionClosedError(
                    f"connection closed: {self.error}" if self.error else "connection closed"
                )
            raise RuntimeError("the handshake is not complete")
        if self.close_notify_sent:
            raise ConnectionClosedError("close_notify was sent; no more data may be sent")

    def _seal(self, length: int, content_type: int, epoch: Epoch = Epoch.ONE_RTT) -> None:
        protection = self._write[epoch]
        out = self._writer.reserve(length + 1 + TAG_SIZE + HEADER_SIZE)
        self._writer.commit(protection.seal_into(scratch.staging, length, content_type, out))

    def _send_protected(self, content_type: int, payload: bytes, epoch: Epoch) -> None:
        staging = scratch.staging
        for i in range(0, max(len(payload), 1), MAX_PLAINTEXT):
            chunk = payload[i : i + MAX_PLAINTEXT]
            staging[: len(chunk)] = chunk
            self._seal(len(chunk), content_type, epoch)

    def _flush(self, outputs: list[tuple[Epoch, bytes]]) -> None:
        for epoch, data in outputs:
            if epoch is Epoch.INITIAL:
                self._writer.append(
                    plaintext_record(ContentType.handshake, data, self._first_record_version)
                )
                self._first_record_version = 0x0303
                if not self.is_client and self.engine and self.engine.legacy_session_id:
                    self._send_ccs()  # middlebox compatibility: CCS right after ServerHello
            else:
                if self.is_client:
                    self._send_ccs()  # before the client's first protected record
                self._send_protected(ContentType.handshake, data, epoch)
        if self._write:
            self._write_epoch = max(self._write)

    def _send_ccs(self) -> None:
        if not self._ccs_sent:
            self._ccs_sent = True
            self._writer.append(CCS_RECORD)

    def _send_alert(self, description: int, level: int = _ALERT_FATAL) -> None:
        payload = bytes((level, description))
        protection = self._write.get(self._write_epoch)
        if protection is None:
            self._writer.append(plaintext_record(ContentType.alert, payload))
        else:
            self._send_protected(ContentType.alert, payload, self._write_epoch)

    def _send_key_update(self, request: bool) -> None:
        self._send_protected(
            ContentType.handshake,
            bytes((HandshakeType.key_update, 0, 0, 1, 1 if request else 0)),
            Epoch.ONE_RTT,
        )
        current = self._write[Epoch.ONE_RTT]
        self._write[Epoch.ONE_RTT] = RecordProtection(
            current.keys.next_generation(), current.connection_id
        )

    # -- internals: input ------------------------------------------------------

    def _overflow(self) -> None:
        """Input arrives that is not processed and cannot be held: the peer broke the rules."""
        self._fail(UnexpectedMessage("the peer sent data before its join was answered"))

    def _fail(self, error: TCPLSError, *, send_alert: bool = True) -> None:
        if self.state is ConnectionState.CLOSED:
            return
        if self.state is ConnectionState.JOIN_WAIT:
            # the join failed before anyone answered it: nobody must answer it now
            self._events = deque(e for e in self._events if not isinstance(e, JoinRequested))
        # The error outlives this call (session.error): drop the frames it references.
        error.__traceback__ = None
        self.error = error
        if isinstance(error, HandshakeCanceled):
            send_alert = False
            self._send_alert(AlertDescription.user_canceled, _ALERT_WARNING)
            self._send_alert(AlertDescription.close_notify, _ALERT_WARNING)
        if send_alert and isinstance(error, ProtocolError) and not self._alert_sent:
            self._alert_sent = True
            try:
                self._send_alert(error.alert)
            except Exception:  # pragma: no cover - best effort only
                logger.debug("could not send alert", exc_info=True)
        self.state = ConnectionState.CLOSED
        self._events.append(ConnectionFailed(error))

    def _process(self) -> None:
        try:
            self._process_records()
        except NotTLSError as exc:
            self._fail(NotTLSError(exc.sent, "server" if self.is_client else "client"))
        except TCPLSError as exc:
            self._fail(exc)
        except Exception as exc:  # a bug: report it cleanly, keep the traceback in the log
            logger.exception("internal error while processing records")
            self._fail(InternalError(f"internal error: {exc.__class__.__name__}: {exc}"))

    def _process_records(self) -> None:
        reader = self._reader
        plain = scratch.plain
        while (
            self.state is not ConnectionState.CLOSED
            and self.state is not ConnectionState.JOIN_WAIT
            and not self._hold_input
        ):
            record = reader.next_record()
            if record is None:
                return
            content_type, header, body = record
            if self.close_notify_received:
                continue  # data after close_notify is ignored (RFC 8446 §6.1)
            protection = self._read
            if content_type == ContentType.application_data and protection is not None:
                if self._early_data_skip and self._skip_early_data(
                    protection, header, body, plain
                ):
                    continue
                inner_type, n = protection.open_into(header, body, plain)
                if n > MAX_PLAINTEXT:
                    raise RecordOverflow("protected record content exceeds 2^14 bytes")
                if inner_type == ContentType.application_data:
                    if self.state is not ConnectionState.ESTABLISHED:
                        raise UnexpectedMessage("application data before the handshake completed")
                    if self._ccs_allowed and self.joined:
                        self._ccs_allowed = False
                    handler = self.on_data
                    if handler is None:
                        self._received += plain[:n]
                    elif handler(plain[:n]):
                        # the handler kept a view of the record: use a new buffer
                        scratch.plain = plain = memoryview(bytearray(MAX_PLAINTEXT + 256))
                elif inner_type == ContentType.handshake:
                    self._handle_handshake_fragment(plain[:n])
                elif inner_type == ContentType.alert:
                    self._handle_alert(plain[:n])
                else:
                    raise UnexpectedMessage(f"unexpected inner content type {inner_type}")
            elif content_type == ContentType.change_cipher_spec:
                if len(body) != 1 or body[0] != 1:
                    raise UnexpectedMessage("ChangeCipherSpec with a wrong body")
                if not self._ccs_allowed:
                    raise UnexpectedMessage("ChangeCipherSpec outside the handshake")
            elif content_type == ContentType.alert and self.state is not (
                ConnectionState.ESTABLISHED
            ):
                # Plaintext alerts are accepted during the handshake: a peer that
                # failed before it had our keys cannot protect them.
                self._handle_alert(body)
            elif content_type == ContentType.handshake and protection is None:
                if len(body) > MAX_PLAINTEXT:
                    raise RecordOverflow("plaintext record exceeds 2^14 bytes")
                self._handle_handshake_fragment(body)
            elif content_type in (ContentType.handshake, ContentType.alert):
                raise UnexpectedMessage(f"unprotected record of type {content_type} after keys")
            elif content_type == ContentType.application_data:
                raise UnexpectedMessage("application data before the handshake")
            else:
                raise UnexpectedMessage(f"unknown record content type {content_type}")

    def _skip_early_data(
        self,
        protection: RecordProtection,
        header: memoryview,
        body: memoryview,
        plain: memoryview,
    ) -> bool:
        """Server, early data declined: whether this record is early data to skip.

        A record that fails to open with the handshake key is early data, skipped
        up to :data:`MAX_SKIPPED_EARLY_DATA` bytes; the first one that opens ends
        the skipping (and is opened again by the caller, with the same sequence).
        """
        sequence = protection.sequence
        try:
            protection.open_into(header, body, plain)
        except BadRecordMac:
            self._early_data_skip -= len(body)
            if self._early_data_skip <= 0:
                self._early_data_skip = 0
                raise BadRecordMac(
                    "more early data than a server that declines it skips"
                ) from None
            return True
        protection.sequence = sequence
        self._early_data_skip = 0
        return False

    def _handle_alert(self, body: memoryview) -> None:
        if len(body) != 2:
            raise DecodeError("malformed alert")
        level, description = body[0], body[1]
        if description == AlertDescription.close_notify:
            if self.state is not ConnectionState.ESTABLISHED:
                raise ConnectionClosedError(
                    "the server canceled the handshake (it is full or shutting down)"
                    if self.is_client
                    else "the client canceled the handshake"
                )
            self.close_notify_received = True
            self._events.append(CloseNotifyReceived())
        elif description == AlertDescription.user_canceled and level == _ALERT_WARNING:
            return  # followed by close_notify
        else:
            self.error = PeerAlert(description)
            self.state = ConnectionState.CLOSED
            self._events.append(ConnectionFailed(self.error))

    def _handle_handshake_fragment(self, fragment: memoryview) -> None:
        if not fragment:
            raise UnexpectedMessage("empty handshake record")
        buf = self._hs_buffer
        buf += fragment
        while len(buf) >= 4:
            length = int.from_bytes(buf[1:4], "big")
            limit = MAX_HANDSHAKE_MESSAGE
            if not self.is_client and self.engine is None and self._join_keys is None:
                limit = MAX_CLIENT_HELLO  # no session yet: a stranger's first message
            if length > limit:
                raise DecodeError(f"handshake message of {length} bytes is too large")
            if len(buf) < 4 + length:
                return
            message = bytes(buf[: 4 + length])
            del buf[: 4 + length]
            read_before = self._read
            output_mark, epoch_mark = len(self._writer), self._write_epoch
            self._handle_handshake_message(message)
            if self._read is not read_before and buf:
                # Do not send the flight this message produced: the alert must be
                # readable by the peer in the epoch it is still in.
                self._writer.truncate(output_mark)
                self._write_epoch = epoch_mark
                raise UnexpectedMessage("a handshake message spans a key change")
            if self.state in (ConnectionState.CLOSED, ConnectionState.JOIN_WAIT):
                if buf and self.state is ConnectionState.JOIN_WAIT:
                    raise UnexpectedMessage("data after the join ClientHello")
                return

    def _handle_handshake_message(self, message: bytes) -> None:
        msg_type = message[0]
        if self.state is ConnectionState.ESTABLISHED:
            self._handle_post_handshake(msg_type, message)
            return
        if self._join_keys is not None:  # join client: expect the ServerHello
            if msg_type != HandshakeType.server_hello:
                raise UnexpectedMessage("expected a ServerHello answering the join")
            read_keys, write_keys, connection_id = self._join_keys
            parse_join_server_hello(
                message,
                legacy_session_id=self._join_session_id,
                cipher_suite=write_keys.cipher_suite,
            )
            self._send_ccs()
            self._install_join_keys(read_keys, write_keys, connection_id)
            self._ccs_allowed = True  # the server's CCS may follow its ServerHello
            return
        if self.engine is None:  # server: first ClientHello decides full handshake or join
            self._start_server(msg_type, message)
            if self.engine is None:
                return
        engine = self.engine
        if engine.offers_tcpls:
            check_tcpls_placement(msg_type, message, self.codepoints)
        self._flush(engine.handle_message(message))
        if engine.complete:
            self._complete_handshake(engine)

    def _start_server(self, msg_type: int, message: bytes) -> None:
        if msg_type != HandshakeType.client_hello:
            raise UnexpectedMessage("expected a ClientHello")
        self._ccs_allowed = True
        info = parse_client_hello(message)
        cp = self.codepoints
        if self._accept_joins and info.has_extension(cp.tcpls_token):
            raise IllegalParameter("tcpls_token in a ClientHello (only a server sends tokens)")
        if self._accept_joins and info.has_extension(cp.tcpls_join):
            token = decode_token_body(info.extensions[cp.tcpls_join])
            if not info.has_extension(cp.tcpls):
                raise IllegalParameter("a join ClientHello must carry tcpls")
            self._join_client_hello = info
            self.state = ConnectionState.JOIN_WAIT
            self._events.append(JoinRequested(token=token, client_hello=info))
            return
        if self._engine_factory is None:
            raise InternalError("server connection without a handshake engine")
        if self.hello_check is not None:
            self.hello_check(info)
        if info.has_extension(EARLY_DATA):
            # Early data is declined (the engine never accepts it): its records, which
            # we cannot decrypt, are skipped (RFC 8446 §4.2.10).
            self._early_data_skip = MAX_SKIPPED_EARLY_DATA
        self.engine = self._engine_factory()
        self.engine._on_secret = self._on_secret

    def _complete_handshake(self, engine: HandshakeEngine) -> None:
        self.state = ConnectionState.ESTABLISHED
        self._reader.max_capacity = max(self._reader.max_capacity, self._receive_buffer_size)
        self._engine_factory = None  # needed for the ClientHello only
        engine.detach()
        self._hold_input = True
        self._ccs_allowed = False
        self.tcpls = engine.tcpls_negotiated
        assert engine.cipher_suite is not None
        self._events.append(
            HandshakeCompleted(
                tcpls=engine.tcpls_negotiated,
                cipher_suite=engine.cipher_suite,
                session_resumed=engine.session_resumed,
                alpn_protocol=engine.alpn_protocol,
                token=engine.peer_token,
            )
        )
        self._report_tickets(engine)

    def _report_tickets(self, engine: HandshakeEngine) -> None:
        while engine.session_tickets:
            self._events.append(SessionTicketReceived(engine.session_tickets.pop(0)))

    def _handle_post_handshake(self, msg_type: int, message: bytes) -> None:
        if msg_type == HandshakeType.new_session_ticket and self.is_client:
            if self.engine is None:
                raise UnexpectedMessage("NewSessionTicket on a joined connection")
            self.engine.handle_message(message)
            self._report_tickets(self.engine)
        elif msg_type == HandshakeType.key_update:
            if self.tcpls:
                raise UnexpectedMessage("KeyUpdate is not allowed in TCPLS mode")
            if len(message) != 5:
                raise DecodeError("malformed KeyUpdate")
            request = message[4]
            if request not in (0, 1):
                raise IllegalParameter("KeyUpdate request_update must be 0 or 1")
            assert self._read is not None
            self._read = RecordProtection(self._read.keys.next_generation())
            if request == 1 and not self.close_notify_sent:
                self._send_key_update(False)
        else:
            raise UnexpectedMessage(f"unexpected post-handshake message type {msg_type}")
