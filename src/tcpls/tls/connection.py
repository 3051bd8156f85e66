"""One TCP connection's TLS 1.3: handshake or join, records, alerts. Sans-I/O.

Theory of operation
-------------------
A :class:`TLSConnection` is fed the bytes its TCP connection receives
(:meth:`~TLSConnection.receive_data`, or :meth:`~TLSConnection.get_buffer` and
:meth:`~TLSConnection.buffer_updated` for a zero-copy ``BufferedProtocol``) and
produces bytes to send (:meth:`~TLSConnection.data_to_send`) and events
(:meth:`~TLSConnection.next_event`, see :mod:`tcpls.tls.events`). It never does
I/O and never reads a clock.

This module owns the connection's life cycle (:class:`ConnectionState`), its
events and the reading of records, one at a time, each routed by its type and the
state. Opening application records, and sealing those a TCPLS session builds in
place (:meth:`~TLSConnection.seal_staged`), the path of every record, are done
here too, on the layer's keys. Helpers that the connection owns, and that hold no
reference back to it, do the rest: the record layer (:mod:`tcpls.tls.layer`: keys,
record buffers, writing the other records, alerts), the handshake
(:mod:`tcpls.tls.handshake`: the engine, handshake messages, joins) and the early
data (:mod:`tcpls.tls.early`).

Once the handshake is complete, the owner pulls application data, one record at a
time, with :meth:`~TLSConnection.records` (for plain TLS, design: Fallback, the
bytestream; for TCPLS, a record's frames). Records wait in the reader until then, so
the owner sees every event that came before a record (the handshake's completion, for
one) before the record itself, and an error in what the owner does with a record is
the owner's to handle. Handshake messages and alerts that come after the handshake are
processed on the way.

Four ways to start: :meth:`TLSConnection.client` and :meth:`TLSConnection.server`
run a full handshake (a server also recognises joins when ``accept_joins``);
:meth:`TLSConnection.join_client` joins a new TCP connection to an existing
TCPLS session with a token (draft-04 §4.2.1, design: Joins), and a server answers
such a join with :meth:`TLSConnection.accept_join` or
:meth:`TLSConnection.reject_join` after the :class:`JoinRequested` event.

Errors never escape as exceptions from the input methods: a protocol violation queues
the matching alert, closes the connection and emits :class:`ConnectionFailed`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from enum import Enum

from tcpls.errors import (
    AlertDescription,
    ConnectionClosedError,
    IllegalParameter,
    InternalError,
    NotTLSError,
    ProtocolError,
    RecordOverflow,
    TCPLSError,
    UnexpectedMessage,
)
from tcpls.tls.early import EarlyData
from tcpls.tls.events import (
    CloseNotifyReceived,
    ConnectionFailed,
    Event,
    HandshakeCompleted,
    JoinRequested,
    TransportEnded,
)
from tcpls.tls.handshake import Handshake, HelloCheck, JoinAttempt
from tcpls.tls.hs.base import Epoch, HandshakeEngine
from tcpls.tls.layer import ALERT_WARNING, RecordLayer, read_alert
from tcpls.tls.record import (
    HEADER_SIZE,
    MAX_PLAINTEXT,
    TAG_SIZE,
    CipherSuite,
    ContentType,
    RecordProtection,
    TrafficKeys,
    scratch,
)
from tcpls.wire.extensions import DEFAULT_CODEPOINTS, ExtensionCodepoints

__all__ = ["ConnectionState", "TLSConnection"]

logger = logging.getLogger(__name__)

#: Where bytes that are dropped are read into.
_DISCARD = memoryview(bytearray(4096))


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
        join: JoinAttempt | None = None,
    ) -> None:
        if not 1 <= max_record_size <= MAX_PLAINTEXT:
            raise ValueError("max_record_size must be between 1 and 16384")
        self.is_client = is_client
        self.state = ConnectionState.START
        self.codepoints = codepoints
        self.max_record_size = max_record_size
        #: Whether TCPLS is in use on this connection (set when the handshake completes).
        self.tcpls = False
        #: Whether this connection was joined to an existing session.
        self.joined = False
        self.close_notify_received = False
        self.close_notify_sent = False
        #: The error that closed the connection, if any.
        self.error: TCPLSError | None = None
        #: Server: refuses a ClientHello it cannot complete before any work is done.
        self.hello_check: HelloCheck | None = None

        self._layer = layer = RecordLayer(is_client)
        self._handshake = Handshake(
            layer,
            is_client=is_client,
            engine=engine,
            engine_factory=engine_factory,
            accept_joins=accept_joins,
            codepoints=codepoints,
            join=join,
        )
        # The layer's buffers, which every record goes through.
        self._reader = layer.reader
        self._writer = layer.writer
        self._receive_buffer_size = receive_buffer_size
        self._events: list[Event] = []  # (a few per connection's life: no deque's 700 B)
        # the peer's FIN came; TransportEnded follows once the records before it are read
        self._eof = False
        self._ended = False
        self.early = EarlyData(layer, self._handshake)  #: 0-RTT data (design: Early data)

    # -- construction ----------------------------------------------------------

    @classmethod
    def client(cls, engine: HandshakeEngine, **kwargs: object) -> TLSConnection:
        """A client that runs a full handshake with ``engine``. Call :meth:`start`."""
        return cls(is_client=True, engine=engine, **kwargs)  # type: ignore[arg-type]

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
        join = JoinAttempt.build(
            token,
            read_keys=read_keys,
            write_keys=write_keys,
            connection_id=connection_id,
            server_name=server_name,
            codepoints=codepoints,
        )
        return cls(is_client=True, codepoints=codepoints, join=join, **kwargs)  # type: ignore[arg-type]

    # -- public properties -----------------------------------------------------

    @property
    def engine(self) -> HandshakeEngine | None:
        """The handshake engine (``None``: a server before the ClientHello, or a join)."""
        return self._handshake.engine

    @property
    def cipher_suite(self) -> CipherSuite | None:
        """The cipher suite of the keys in use (``None`` before the first keys)."""
        return self._layer.cipher_suite

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
        """Bytes held by this connection's record buffers and AEAD contexts now."""
        return self._layer.memory + self._handshake.buffered

    @property
    def pending_output(self) -> int:
        """Bytes sealed and waiting in :meth:`data_to_send`."""
        return len(self._writer)

    @property
    def write_protection(self) -> RecordProtection | None:
        """The protection application records are sealed with (its ``sequence`` is next)."""
        return self._layer.write.get(Epoch.ONE_RTT)

    @property
    def read_protection(self) -> RecordProtection | None:
        """The protection incoming application records are opened with (or ``None``)."""
        layer = self._layer
        return layer.read if layer.read_epoch is Epoch.ONE_RTT else None

    def traffic_keys(self) -> tuple[TrafficKeys, TrafficKeys]:
        """The application ``(read, write)`` keys, for joining more connections."""
        read, write = self.read_protection, self._layer.write.get(Epoch.ONE_RTT)
        if read is None or write is None or self.state is not ConnectionState.ESTABLISHED:
            raise RuntimeError("application keys are not available before the handshake")
        return read.keys, write.keys

    # -- driving ---------------------------------------------------------------

    def start(self) -> None:
        """Client: send the ClientHello (full handshake or join)."""
        if self.state is not ConnectionState.START or not self.is_client:
            raise RuntimeError("start() is for a client that has not started")
        self.state = ConnectionState.HANDSHAKE
        try:
            self._handshake.start()
        except ProtocolError as exc:
            self._fail(exc)

    def next_event(self) -> Event | None:
        """The next event, or ``None``."""
        return self._events.pop(0) if self._events else None

    @property
    def has_events(self) -> bool:
        """Whether :meth:`next_event` has something."""
        return bool(self._events)

    def data_to_send(self) -> bytes:
        """Bytes to write to the TCP connection (empty when there are none)."""
        return self._writer.take() if len(self._writer) else b""

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
        """``nbytes`` were written into :meth:`get_buffer`; process them (once the
        handshake is complete, the owner reads them with :meth:`records`)."""
        self._reader.buffer_updated(nbytes)
        if self.state is not ConnectionState.ESTABLISHED:
            self._process()

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Process bytes received from the TCP connection (copying variant of
        :meth:`buffer_updated`; after the handshake, read the records they complete
        with :meth:`records` before the reader fills up)."""
        mv = memoryview(data)
        while mv and self.state is not ConnectionState.CLOSED:
            target = self._reader.get_buffer()
            n = min(len(target), len(mv))
            if n == 0:
                self._overflow()
                return
            target[:n] = mv[:n]
            mv = mv[n:]
            self.buffer_updated(n)

    def records(self) -> Iterator[memoryview]:
        """The content of each complete application data record, in order: how the owner
        reads once the handshake is complete.

        Handshake messages and alerts on the way are processed; iteration stops at each
        event they produce (read the events with :meth:`next_event`, then iterate again)
        and when no complete record is left. Each view is valid until the next one is
        taken, unless :meth:`keep_record` is called: then it is the caller's.
        """
        return self._records(True)

    def read_record(self) -> memoryview | None:
        """The next record of :meth:`records`, or ``None``."""
        return next(self.records(), None)

    def keep_record(self) -> None:
        """The caller keeps a view of the last record: decrypt the next one elsewhere."""
        scratch.plain = memoryview(bytearray(MAX_PLAINTEXT + 256))

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
        self._eof = True
        if not self._reader.pending:
            self._report_end()

    def _report_end(self) -> None:
        """EOF came and every record before it was read."""
        if not self._ended:
            self._ended = True
            self._events.append(TransportEnded(close_notify_received=self.close_notify_received))

    # -- output ----------------------------------------------------------------

    def send_data(self, data: bytes | bytearray | memoryview) -> None:
        """Send application data, cut into records of at most ``max_record_size`` bytes."""
        self._check_can_send()
        self._layer.send_application(data, self.max_record_size)

    def staging_buffer(self) -> memoryview:
        """A view of 16 KiB in which the caller writes one record's content, then calls
        :meth:`seal_staged`: a TCPLS session builds frames in place, copying data once."""
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
        # The path of every record sent: RecordLayer.seal, inlined.
        protection = self._layer.write[Epoch.ONE_RTT]
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
            self._layer.send_alert(AlertDescription.close_notify, ALERT_WARNING)
        else:
            self._layer.send_cancel()
            self.state = ConnectionState.CLOSED

    def detach(self) -> None:
        """Drop every callback into the owner (its session ended): no reference cycles."""
        self.hello_check = None
        self._handshake.detach()

    def trim(self) -> None:
        """Give back the record buffers while nothing is pending (an idle connection)."""
        self._layer.trim()

    def abort(self, error: TCPLSError) -> None:
        """Close the connection because of ``error`` (sends its alert if it is a ProtocolError)."""
        self._fail(error)

    def key_update(self, request_peer_update: bool = True) -> None:
        """Plain TLS only: send KeyUpdate and switch to the next write keys (RFC 8446 §4.6.3)."""
        self._check_can_send()
        if self.tcpls:
            raise RuntimeError("KeyUpdate is not used in TCPLS mode")
        self._layer.send_key_update(request_peer_update)

    # -- joins (server side) ---------------------------------------------------

    def accept_join(
        self, *, read_keys: TrafficKeys, write_keys: TrafficKeys, connection_id: int
    ) -> None:
        """Accept the pending join: ServerHello + ChangeCipherSpec, then the session's keys."""
        if self.state is not ConnectionState.JOIN_WAIT or self._handshake.join_hello is None:
            raise RuntimeError("no join is pending on this connection")
        try:
            completed = self._handshake.accept_join(read_keys, write_keys, connection_id)
        except ProtocolError as exc:
            self._fail(exc)
            return
        self._established(completed)
        self._events.append(completed)
        self._process()

    def reject_join(self, error: ProtocolError | None = None) -> None:
        """Refuse the pending join with a plaintext alert (``illegal_parameter`` by default)."""
        if self.state is ConnectionState.CLOSED:
            return  # it failed meanwhile (the peer sent more than its ClientHello)
        if self.state is not ConnectionState.JOIN_WAIT:
            raise RuntimeError("no join is pending on this connection")
        self._fail(error or IllegalParameter("invalid, used or expired TCPLS token"))

    # -- internals: failing ----------------------------------------------------

    def _check_can_send(self) -> None:
        if self.state is not ConnectionState.ESTABLISHED:
            if self.state is ConnectionState.CLOSED:
                raise ConnectionClosedError(
                    f"connection closed: {self.error}" if self.error else "connection closed"
                )
            raise RuntimeError("the handshake is not complete")
        if self.close_notify_sent:
            raise ConnectionClosedError("close_notify was sent; no more data may be sent")

    def _overflow(self) -> None:
        """Input arrives that is not processed and cannot be held: the peer broke the rules."""
        self._fail(UnexpectedMessage("the peer sent data before its join was answered"))

    def _fail(self, error: TCPLSError, *, send_alert: bool = True) -> None:
        if self.state is ConnectionState.CLOSED:
            return
        if self.state is ConnectionState.JOIN_WAIT:
            # the join failed before anyone answered it: nobody must answer it now
            self._events[:] = [e for e in self._events if not isinstance(e, JoinRequested)]
        # The error outlives this call (session.error): drop the frames it references.
        error.__traceback__ = None
        self.error = error
        self._layer.send_failure(error, send_alert)
        self.state = ConnectionState.CLOSED
        self._events.append(ConnectionFailed(error))

    # -- internals: reading records --------------------------------------------

    def _process(self) -> None:
        """Read the records that need no owner: the handshake's (see :meth:`records`)."""
        for _ in self._records(False):
            pass  # (no application data before the handshake completes)

    def _records(self, deliver: bool) -> Iterator[memoryview]:
        """Read records until the reader runs out; once established, only when the owner
        asks (``deliver``), yielding application records up to the next event. A protocol
        violation fails the connection (its alert, ConnectionFailed)."""
        reader = self._reader
        layer = self._layer
        handshake = self._handshake
        partial = handshake.partial  # (the same bytearray for the connection's life)
        plain = scratch.plain
        events = self._events
        try:
            while (
                self.state is not ConnectionState.CLOSED
                and self.state is not ConnectionState.JOIN_WAIT
            ):
                if self.state is ConnectionState.ESTABLISHED and (not deliver or events):
                    return  # the owner reads the rest (after seeing the events)
                record = reader.next_record()
                if record is None:
                    if self._eof:
                        self._report_end()
                    return
                content_type, header, body = record
                if self.close_notify_received:
                    continue  # data after close_notify is ignored (RFC 8446 §6.1)
                protection = layer.read
                if content_type == ContentType.application_data and protection is not None:
                    if layer.early_data_skip and layer.skip_early_data(
                        protection, header, body, plain
                    ):
                        continue
                    inner_type, n = protection.open_into(header, body, plain)
                    if n > MAX_PLAINTEXT:
                        raise RecordOverflow("protected record content exceeds 2^14 bytes")
                    if inner_type == ContentType.application_data:
                        if partial:  # between the fragments of a handshake message (§5.1)
                            raise UnexpectedMessage("application data inside a handshake message")
                        if layer.read_epoch is Epoch.EARLY and not self.is_client:
                            self.early.receive(plain[:n])
                            continue
                        if self.state is not ConnectionState.ESTABLISHED:
                            raise UnexpectedMessage(
                                "application data before the handshake completed"
                            )
                        if handshake.ccs_allowed and self.joined:
                            handshake.ccs_allowed = False
                        yield plain[:n]
                        plain = scratch.plain  # (a new buffer if the owner kept that one)
                    elif inner_type == ContentType.handshake:
                        self._handle_handshake_fragment(plain[:n])
                    elif inner_type == ContentType.alert:
                        self._handle_alert(plain[:n])
                    else:
                        raise UnexpectedMessage(f"unexpected inner content type {inner_type}")
                elif content_type == ContentType.change_cipher_spec:
                    if len(body) != 1 or body[0] != 1:
                        raise UnexpectedMessage("ChangeCipherSpec with a wrong body")
                    if not handshake.ccs_allowed:
                        raise UnexpectedMessage("ChangeCipherSpec outside the handshake")
                    # one at most, as OpenSSL accepts since CVE-2020-25648
                    handshake.ccs_allowed = False
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
                    raise UnexpectedMessage(
                        f"unprotected record of type {content_type} after keys"
                    )
                elif content_type == ContentType.application_data:
                    layer.skip_unreadable(len(body))  # early data after a HelloRetryRequest
                else:
                    raise UnexpectedMessage(f"unknown record content type {content_type}")
        except NotTLSError as exc:
            self._fail(NotTLSError(exc.sent, "server" if self.is_client else "client"))
        except TCPLSError as exc:
            self._fail(exc)
        except Exception as exc:  # a bug: report it cleanly, keep the traceback in the log
            logger.exception("internal error while processing records")
            self._fail(InternalError(f"internal error: {exc.__class__.__name__}: {exc}"))

    def _handle_alert(self, body: memoryview) -> None:
        established = self.state is ConnectionState.ESTABLISHED
        event = read_alert(body, established=established, is_client=self.is_client)
        if isinstance(event, CloseNotifyReceived):
            self.close_notify_received = True
        elif isinstance(event, ConnectionFailed):
            self.error = event.error
            self.state = ConnectionState.CLOSED
        if event is not None:
            self._events.append(event)

    # -- internals: handshake messages -----------------------------------------

    def _handle_handshake_fragment(self, fragment: memoryview) -> None:
        events = self._handshake.receive(fragment, self.hello_check, not self.close_notify_sent)
        for event in events:
            if isinstance(event, HandshakeCompleted):
                self._established(event)
            elif isinstance(event, JoinRequested):
                self.state = ConnectionState.JOIN_WAIT
            self._events.append(event)

    def _established(self, completed: HandshakeCompleted) -> None:
        self.state = ConnectionState.ESTABLISHED
        self.tcpls = completed.tcpls
        self.joined = completed.joined
        self.hello_check = None  # (for the ClientHello only)
        self._reader.max_capacity = max(self._reader.max_capacity, self._receive_buffer_size)
