"""The TCPLS session: streams over one or more TCP connections. Sans-I/O.

A :class:`Session` is a small facade over parts that each own one concern: the streams
(:mod:`~tcpls.core.streamset`), the ACKs and retransmission log (:mod:`~tcpls.core.acks`),
liveness (:mod:`~tcpls.core.liveness`), join tokens (:mod:`~tcpls.core.joins`), the peer's
addresses (:mod:`~tcpls.core.addresses`), the scheduler (:mod:`~tcpls.core.scheduler`),
the records out (:mod:`~tcpls.core.sender`) and the frames in
(:mod:`~tcpls.core.receiver`), the connections' life cycle (:mod:`~tcpls.core.links`) and
time (:mod:`~tcpls.core.clock`, :mod:`~tcpls.core.timers`).

It never touches a socket or a clock: the I/O layer passes bytes and the current time
in (:meth:`CoreSession.buffer_updated`, :meth:`CoreSession.handle_timer`), and takes bytes per
connection (:meth:`CoreSession.transmit`, the pull model), events and the streams to wake
out. :meth:`CoreSession.next_deadline` says when to call :meth:`CoreSession.handle_timer` next.
"""

from __future__ import annotations

from collections import deque

from tcpls.config import SessionTuning
from tcpls.core.acks import AckTracker, NoAcks
from tcpls.core.addresses import AddressBook
from tcpls.core.clock import SessionClock
from tcpls.core.connection import Connection
from tcpls.core.events import SessionEvent
from tcpls.core.io import IODuties
from tcpls.core.joins import TokenBook
from tcpls.core.links import CONNECTION_COST, SESSION_COST, Links, SessionState
from tcpls.core.liveness import Liveness
from tcpls.core.parts import part, writable_part
from tcpls.core.receiver import FrameReceiver
from tcpls.core.scheduler import Scheduler, SchedulerName
from tcpls.core.sender import RecordSender
from tcpls.core.streamset import StreamSet
from tcpls.core.timers import TimerSet
from tcpls.core.tokens import TokenRegistry
from tcpls.core.trace import RecordTrace, SessionTrace
from tcpls.errors import ConnectionClosedError, TCPLSError
from tcpls.tls.connection import TLSConnection
from tcpls.tls.hs.base import HandshakeEngine
from tcpls.wire.frames import Frame

__all__ = ["CONNECTION_COST", "SESSION_COST", "CoreSession", "SessionState"]


class CoreSession:
    """A TCPLS (or plain TLS) session, sans-I/O. See the module docstring."""

    closed: bool = part("links.closed", "Whether the session ended.")
    state: SessionState = part("links.state", "Where the session is in its life cycle.")
    tcpls: bool | None = part("links.tcpls", "TCPLS (True), plain TLS (False), or None yet.")
    error: TCPLSError | None = part("links.error", "Why the session ended (None: cleanly).")
    peer_closed: bool = part("links.peer_closed", "The peer sent close_notify everywhere.")
    close_requested: bool = part("links.close_requested", "The application asked to close.")
    handshake_engine: HandshakeEngine | None = part(
        "links.handshake_engine", "The engine that ran the handshake (for the exporter)."
    )
    max_connections: int = part("links.max_connections", "TCP connections allowed at once.")
    reading_paused: bool = part(
        "stream_set.reading_paused",
        "Whether received data waits for the application: stop reading the sockets "
        "(:attr:`StreamSet.reading_paused`; design: Backpressure).",
    )
    readable: set[int] = part("stream_set.readable", "Streams whose readers to wake.")
    writable: set[int] = part("stream_set.writable", "Stream IDs whose writers may go on.")
    reassembly_held: int = part(
        "stream_set.reassembly_held", "Memory of the out-of-order data held, all streams."
    )
    receive_buffered: int = part(
        "stream_set.receive_buffered", "Memory of the unread in-order data, all streams."
    )
    send_pending_total: int = part(
        "stream_set.send_pending", "Bytes written on all streams that never left yet."
    )
    unacked_bytes: int = part(
        "acks.unacked_bytes", "Stream bytes sent and not acknowledged, all connections."
    )
    reliable: bool = part(
        "acks.logs", "Whether records are kept until acknowledged (off only to measure it)."
    )
    records_sealed: int = part(
        "sender.records_sealed", "Records sealed with the session's keys, all connections."
    )
    withdrawn_addresses: frozenset[tuple[str, int]] = part(
        "addresses.withdrawn",
        "Addresses the peer withdrew: no new connection may go to them (draft-04 §5.2.8).",
    )
    session_tickets: list[object] = part(
        "links.session_tickets", "Client: the newest session tickets received, oldest first."
    )
    now: float = writable_part("links.now", "The time of the last input, output or timer.")
    rejoin: bool = writable_part("links.rejoin", "Client: join again after the last failed.")

    def __init__(
        self,
        *,
        is_client: bool,
        tuning: SessionTuning | None = None,
        scheduler: SchedulerName = "aggregate",
        max_connections: int = 4,
        token_registry: TokenRegistry[CoreSession] | None = None,
        reliable: bool = True,
        server_name: str | None = None,
    ) -> None:
        self.is_client = is_client
        self.tuning = tuning = tuning or SessionTuning()
        self._events: deque[SessionEvent] = deque()
        control: deque[Frame] = deque()
        self.stream_set = StreamSet(is_client, tuning, self._events)
        self.acks = (AckTracker if reliable else NoAcks)(tuning, self.stream_set, control)
        self.scheduler = Scheduler(scheduler)
        self.liveness = Liveness(tuning)
        self.token_book: TokenBook[object] = TokenBook(self, token_registry, max_connections)  # type: ignore[arg-type]
        self.addresses = AddressBook(control)
        self.timers = TimerSet()
        self.links = Links(
            is_client=is_client,
            tuning=tuning,
            max_connections=max_connections,
            server_name=server_name,
            events=self._events,
            control=control,
            streams=self.stream_set,
            acks=self.acks,
            tokens=self.token_book,
            timers=self.timers,
        )
        self.sender = RecordSender(
            tuning, self.links, self.stream_set, self.acks, self.scheduler, control, self.timers
        )
        self.receiver = FrameReceiver(
            is_client, self.links, self.stream_set, self.acks, self.token_book, self.addresses
        )
        self.links.attach(self.receiver)
        #: The TCP connections by Connection ID (owned by the links).
        self.connections = self.links.connections
        #: The streams by ID (owned by the stream set).
        self.streams = self.stream_set.table
        #: Client: spare join tokens by sequence number (owned by the token book).
        self.tokens = self.token_book.spare
        #: Addresses the peer advertised, by address ID (design: Addresses).
        self.peer_addresses = self.addresses.peer
        #: What the I/O layer must do (wakeups, EOF, closing transports) and small views.
        self.io = IODuties(self.links, self.stream_set, tuning)
        self.clock = SessionClock(
            self.timers, self.links, self.stream_set, self.acks, self.liveness
        )
        #: The life-cycle hooks of qlog and the session log (design: qlog); see :meth:`trace`.
        self.qlog: SessionTrace | None = None

    # ------------------------------------------------------------------ events

    @property
    def has_events(self) -> bool:
        """Whether :meth:`next_event` has something."""
        return bool(self._events)

    def next_event(self) -> SessionEvent | None:
        """The next session event, or ``None``."""
        if not self._events:
            return None
        event = self._events.popleft()
        if self.qlog is not None:
            self.qlog.event(event)
        return event

    def trace(self, tracer: SessionTrace | None, records: RecordTrace | None = None) -> None:
        """Report the life cycle to ``tracer`` and every record to ``records`` (``None``:
        stop): the parts' hooks (:mod:`tcpls.core.trace`; design: qlog)."""
        self.qlog = self.links.qlog = self.stream_set.qlog = tracer
        self.sender.qlog = records
        self.receiver.qlog = records

    # ------------------------------------------------------------- connections

    def add_connection(self, tls: TLSConnection, connection_id: int = 0) -> Connection:
        """Register the TCP connection ``connection_id`` (0: the one that runs the handshake)."""
        return self.links.add(tls, connection_id)

    def redeem_join(self, tls: TLSConnection, sequence: int) -> Connection | None:
        """Server: a join with our token ``sequence`` arrived (:meth:`Links.redeem_join`)."""
        return self.links.redeem_join(tls, sequence)

    def start_join(self, **tls_kwargs: object) -> tuple[TLSConnection, int]:
        """Client: a connection that joins with a spare token (:meth:`Links.start_join`)."""
        return self.links.start_join(**tls_kwargs)

    def abandon_join(self, connection_id: int, error: TCPLSError | None = None) -> None:
        """Client: the TCP connection of a join never came up (:meth:`Links.abandon_join`)."""
        self.links.abandon_join(connection_id, error)

    def advertise_address(self, address_id: int, host: str, port: int) -> None:
        """Announce an extra address of ours with New Address (design: Addresses)."""
        if self.tcpls is not False:  # a plain TLS session has no frames
            self.addresses.advertise(address_id, host, port)

    def withdraw_address(self, address_id: int) -> None:
        """Withdraw an advertised address with Remove Address (design: Addresses)."""
        if self.tcpls is not False:
            self.addresses.withdraw(address_id)

    def remove_connection(self, connection_id: int) -> None:
        """Retire one connection gracefully: no new data, then FIN once acknowledged
        (design: Closing)."""
        self.links.remove(connection_id)

    def connection_drained(self, connection_id: int) -> bool:
        """Whether a draining connection has nothing unacknowledged left (time for FIN)."""
        conn = self.connections.get(connection_id)
        return conn is not None and conn.drained

    def finish_removal(self, connection_id: int) -> None:
        """The I/O layer sent FIN on a drained connection: forget it."""
        self.links.finish_removal(connection_id)

    def close(self, now: float | None = None) -> None:
        """Close gracefully: flush and wait for ACKs, then ``close_notify`` everywhere.

        ``now`` starts the close deadline; without it, the time of the last input or
        timer is used (design: Closing).
        """
        if now is not None:
            self.links.now = now
        self.links.close()

    # ------------------------------------------------------------------ input

    def _touch(self, now: float) -> None:
        self.links.now = now
        self.clock.touched(now)

    def get_buffer(self, connection_id: int) -> memoryview:
        """Writable space for bytes of this connection (``BufferedProtocol.get_buffer``)."""
        return self.connections[connection_id].tls.get_buffer()

    def buffer_updated(self, connection_id: int, nbytes: int, now: float) -> None:
        """``nbytes`` arrived in the buffer of :meth:`get_buffer`."""
        self._touch(now)
        conn = self.connections.get(connection_id)
        if conn is None:
            return
        Liveness.heard_from(conn, nbytes, now)
        conn.tls.buffer_updated(nbytes)
        self.links.drain_tls(conn)

    def receive_data(self, connection_id: int, data: bytes, now: float) -> None:
        """Bytes arrived on a connection: fed through :meth:`get_buffer` and
        :meth:`buffer_updated` in as many pieces as the buffers take, as the I/O layer
        does (one receive path; for tests and tools that hold bytes)."""
        view = memoryview(data)
        while view:
            conn = self.connections.get(connection_id)
            if conn is None:
                return
            target = conn.tls.get_buffer()
            n = min(len(target), len(view))
            target[:n] = view[:n]
            self.buffer_updated(connection_id, n, now)
            view = view[n:]

    def poll_connection(self, connection_id: int, now: float) -> None:
        """Take the events of a connection whose bytes were fed to its TLS directly."""
        self._touch(now)
        conn = self.connections.get(connection_id)
        if conn is not None:
            self.links.drain_tls(conn)

    def receive_eof(self, connection_id: int, now: float) -> None:
        """A connection delivered EOF."""
        self.links.now = now
        conn = self.connections.get(connection_id)
        if conn is not None:
            conn.tls.receive_eof()
            self.links.drain_tls(conn)

    def connection_lost(self, connection_id: int, error: TCPLSError | None, now: float) -> None:
        """The TCP connection is gone (reset, timeout, or closed after EOF)."""
        self.links.now = now
        conn = self.connections.get(connection_id)
        if conn is not None:
            self.links.lost(conn, error)

    def fail_connection(self, connection_id: int, error: TCPLSError, now: float) -> None:
        """The I/O layer detected a dead connection (timeout, unanswered Ping)."""
        self.links.now = now
        conn = self.connections.get(connection_id)
        if conn is not None:
            self.links.connection_failed(conn, error)

    # --------------------------------------------------------------- streams

    def open_stream(self) -> int:
        """Open a new stream; returns its ID (even for a client, odd for a server;
        design: Streams)."""
        self.links.check_open()
        if not self.tcpls:
            raise TCPLSError("plain TLS fallback carries exactly one stream")
        return self.stream_set.open_local()

    def queue_early_data(self, data: bytes | bytearray | memoryview) -> int:
        """Client, before the handshake: queue the first bytes of stream 0, which leave as
        early data when the ticket allows it, else once the handshake completes (design:
        Early data). Returns the stream's ID (0)."""
        if self.links.state is not SessionState.HANDSHAKE or not self.is_client:
            raise RuntimeError("early data is queued by a client before its handshake")
        streams = self.stream_set
        if 0 not in streams.table:
            streams.open_local()
        streams.queue(0, data)
        return 0

    def send(self, stream_id: int, data: bytes | bytearray | memoryview) -> None:
        """Queue bytes on a stream; they leave when a connection pulls records."""
        self.links.check_open(writing=True)
        self.stream_set.queue(stream_id, data)

    def send_eof(self, stream_id: int) -> None:
        """End our direction of the stream (FIN) after the queued bytes."""
        self.links.check_open()
        self.stream_set.queue_eof(stream_id)

    def read(self, stream_id: int, n: int = -1) -> bytes:
        """Up to ``n`` bytes that arrived in order on a stream (``-1``: all)."""
        return self.stream_set.read(stream_id, n)

    def set_scheduler(self, name: SchedulerName) -> None:
        """Change the scheduling policy; leaving ``pinned`` lets every stream go anywhere
        again (the pins it chose are dropped)."""
        self.scheduler.name = name
        if name != "pinned":
            self.stream_set.unpin_all()

    def pin_stream(self, stream_id: int, connection_id: int | None) -> None:
        """Keep a stream on one connection (``None``: let the scheduler choose)."""
        stream = self.stream_set.require(stream_id)
        if connection_id is not None and connection_id not in self.connections:
            raise ValueError(f"no connection {connection_id} in this session")
        stream.pin = connection_id

    @property
    def send_blocked(self) -> bool:
        """Whether ``drain()`` waits for the session's send budget (:class:`StreamSet`)."""
        return self.stream_set.send_blocked

    @property
    def reassembly_bytes(self) -> int:
        """Stream bytes held out of order now (for measurements; limits use the memory
        they cost, :attr:`reassembly_held`)."""
        return sum(stream.recv.held_bytes for stream in self.streams.values())

    def memory_use(self) -> int:
        """An estimate of the memory this session holds, in bytes (for a server's budget):
        fixed costs, record buffers, and stream bytes unread, unsent or unacknowledged."""
        total = SESSION_COST + self.stream_set.memory + self.acks.unacked_cost
        for conn in self.connections.values():
            total += CONNECTION_COST + conn.tls.buffer_memory
        return total

    # ------------------------------------------------------------------ output

    def wants_transmit(self, connection_id: int, now: float | None = None) -> bool:
        """Whether :meth:`transmit` would produce bytes for this connection now."""
        conn = self.connections.get(connection_id)
        if conn is None:
            return False
        return self.sender.wants_transmit(conn, self.now if now is None else now)

    def transmit(self, connection_id: int, now: float, budget: int = 256 * 1024) -> bytes:
        """Records for this connection, up to about ``budget`` bytes; ``b""`` if none."""
        self.links.now = now
        conn = self.connections.get(connection_id)
        return b"" if conn is None else self.sender.transmit(conn, now, budget)

    # ------------------------------------------------------------------ timers

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` must run next (``None``: no timer; design: Timers)."""
        return self.clock.next_deadline()

    def handle_timer(self, now: float) -> None:
        """Run the timers that expired (the I/O layer then transmits): delayed ACKs,
        Ping probes and failure detection, the handshake, close, idle and rejoin
        deadlines, and giving record buffers back after a second without I/O."""
        self.links.now = now
        self.clock.handle_timer(now)

    def set_reading_paused(self, paused: bool, now: float) -> None:
        """The I/O layer paused (or resumed) reading every connection (backpressure):
        probes wait meanwhile (:meth:`Liveness.set_reading_paused`)."""
        self.links.now = now
        self.liveness.set_reading_paused(paused, now, self.connections.values())

    def set_peer_slow(self, connection_id: int, now: float) -> None:
        """The I/O layer saw TCP deliver our unanswered Ping: the peer is slow, not gone
        (:meth:`Liveness.peer_slow`; design: Failure detection)."""
        self.links.now = now
        conn = self.connections.get(connection_id)
        if conn is not None:
            self.liveness.peer_slow(conn)

    def set_transport_heard(self, connection_id: int, at: float) -> None:
        """The I/O layer read from the kernel that TCP last received a segment from the
        peer at ``at`` on a connection: its silence starts then, not earlier
        (:meth:`Liveness.transport_heard`; design: Failure detection)."""
        conn = self.connections.get(connection_id)
        if conn is not None:
            self.liveness.transport_heard(conn, at)

    def set_flow_blocked(
        self, connection_id: int, blocked: bool, now: float | None = None
    ) -> None:
        """The I/O layer saw the peer's TCP window closed (or open again) on a connection."""
        if now is not None:
            self.links.now = now
        conn = self.connections.get(connection_id)
        if conn is not None:
            self.liveness.flow_blocked(conn, blocked, self.now)

    @property
    def close_notify_sent(self) -> bool:
        """Whether we sent ``close_notify`` (the I/O layer then writes EOF)."""
        return self.close_requested and all(
            c.tls.close_notify_sent for c in self.connections.values()
        )

    def abort(self, error: TCPLSError | None = None) -> None:
        """Close at once, without flushing (sends an alert when ``error`` is a ProtocolError)."""
        self.links.fail(error or ConnectionClosedError("session aborted"))
