"""The TCPLS session: streams over one or more TCP connections. Sans-I/O.

Theory of operation
-------------------
A :class:`Session` owns everything TCPLS keeps beyond a single TCP
connection: the connections by Connection ID, the streams, the join tokens,
the ACK state and retransmission log of each connection (kept in
:class:`~tcpls.core.connection.Connection`), the scheduler, and the queue of
control frames. It never touches a socket or a clock: the I/O layer passes
bytes and the current time in, and takes bytes (per connection) and events
out.

Input. Bytes of connection *c* go to its :class:`TLSConnection`, which opens
records one at a time and hands each application record to
:meth:`Session._on_record`. Frames are dispatched there: Stream → the stream's
reassembly buffer; ACK → trim the retransmission log; New Token → spare
tokens; Ping → ACK at once; Connection Reset → treat the connection as failed.
In plain TLS fallback (design: Fallback) there are no frames: the bytestream is stream 0.

Output (the pull model). When the transport of connection *c* can take more
bytes, the I/O layer calls :meth:`Session.transmit`. Records are built there:
stream data first (chosen by the :class:`~tcpls.core.scheduler.Scheduler`,
largest Stream frame at the start, design: Records), then control frames and any ACKs that
are due (design: ACK policy). The stream ranges and retransmittable frames of each record are
logged under its sequence number until the peer acknowledges it (design: Retransmission).

Failure (design: Failure detection). When a connection fails, the frames logged for it are put back
at the front of the send queues and go out on another connection; the peer
deduplicates by stream offset. The survivor tells the peer with ACK +
Connection Reset. A client left without connections reports it so that the I/O
layer can join a new one with a spare token (break-before-make).

Time. :meth:`next_deadline` says when :meth:`handle_timer` must run next (ACK
delay, Ping probes).
"""

from __future__ import annotations

import ipaddress
import logging
import struct

from tcpls.core.connection import Connection, ConnectionStatus
from tcpls.core.events import (
    ConnectionAdded,
    ConnectionRemoved,
    HandshakeDone,
    JoinRequest,
    PeerClosed,
    SessionClosed,
    SessionEvent,
    TokenReceived,
)
from tcpls.core.receiving import ReceivingMixin
from tcpls.core.sending import SendingMixin
from tcpls.core.state import SessionState
from tcpls.core.streams import Stream
from tcpls.core.tokens import MAX_TOKEN_SEQUENCE
from tcpls.errors import (
    ConnectionClosedError,
    PeerAlert,
    ProtocolError,
    TCPLSError,
)
from tcpls.tls.connection import TLSConnection
from tcpls.tls.events import (
    CloseNotifyReceived,
    ConnectionFailed,
    HandshakeCompleted,
    JoinRequested,
    SessionTicketReceived,
    TransportEnded,
)
from tcpls.tls.record import aead_record_limit
from tcpls.wire.frames import (
    Ack,
    ConnectionReset,
    Frame,
    NewAddress,
    NewToken,
    RemoveAddress,
)

__all__ = ["Session", "SessionState"]

logger = logging.getLogger(__name__)

_RETRANSMITTED_CONTROL = (NewToken, NewAddress, RemoveAddress, ConnectionReset)
_PROBED = frozenset({ConnectionStatus.ACTIVE, ConnectionStatus.DRAINING})
_STREAM_HEADER = struct.Struct(">HQIB")  # Length, Offset, Stream ID, Type (design: Frame layout)
_ACK = struct.Struct(">QIB")  # Highest Record Sequence, Connection ID, Type
#: Stop adding Stream frames to a record when less room than this is left.
_MIN_STREAM_CHUNK = 512
#: Seconds without traffic after which the connections give their record buffers back.
TRIM_AFTER = 1.0
#: A receiving connection whose stream data stopped less than this long ago is probed.
QUIET_AFTER = 5.0
#: What an idle session and each of its TCP connections cost beyond their buffers
#: (Python objects, the handshake state kept for the exporter), measured in bytes.
SESSION_COST = 32 * 1024
CONNECTION_COST = 8 * 1024


class Session(ReceivingMixin, SendingMixin):
    """A TCPLS (or plain TLS) session, sans-I/O. See the module docstring."""

    # ------------------------------------------------------------------ events

    @property
    def has_events(self) -> bool:
        """Whether :meth:`next_event` has something."""
        return bool(self._events)

    def next_event(self) -> SessionEvent | None:
        """The next session event, or ``None``."""
        return self._events.popleft() if self._events else None

    # ------------------------------------------------------------- connections

    def add_connection(self, tls: TLSConnection, connection_id: int = 0) -> Connection:
        """Register the TCP connection ``connection_id`` (0: the one that runs the handshake)."""
        if connection_id in self.connections:
            raise ValueError(f"connection {connection_id} already exists")
        conn = Connection(connection_id, tls)
        self.connections[connection_id] = conn
        self._orphaned_since = None
        if tls.handshake_complete:
            self._connection_ready(conn)
        return conn

    def token_for_handshake(self) -> bytes | None:
        """Server: the token to send in ``tcpls_token`` (sequence 1), if joins are allowed."""
        if self._registry is None or self.max_connections < 2:
            return None
        return self._issue_token()

    def _issue_token(self) -> bytes:
        assert self._registry is not None
        seq = self._next_token_sequence
        self._next_token_sequence += 1
        self._outstanding_tokens.add(seq)
        return self._registry.issue(self, seq)

    def _replenish_tokens(self) -> None:
        """Server: hand out New Tokens up to the connection limit (design: Tokens)."""
        if (
            self._registry is None
            or not self.tcpls
            or self.state is not (SessionState.ESTABLISHED)
        ):
            return
        live = sum(1 for c in self.connections.values() if c.status is not ConnectionStatus.FAILED)
        while (
            live + len(self._outstanding_tokens) < self.max_connections
            and self._next_token_sequence <= MAX_TOKEN_SEQUENCE
        ):
            seq = self._next_token_sequence
            token = self._issue_token()
            self._control.append(NewToken(seq, token))

    def redeem_join(self, tls: TLSConnection, sequence: int) -> Connection | None:
        """Server: a join with this session's token ``sequence`` arrived on ``tls``.

        Returns the new connection, or ``None`` if the session cannot take it
        (closing or closed); the caller then rejects the join. A join that
        arrives while the session is still handshaking is held and answered
        once the client Finished is verified (design: Tokens, draft-04 §4.2.2).
        """
        self._outstanding_tokens.discard(sequence)
        if self.state not in (SessionState.HANDSHAKE, SessionState.ESTABLISHED):
            return None
        conn = self.add_connection(tls, sequence)
        self._used_connection_ids.add(sequence)
        if self.state is SessionState.ESTABLISHED:
            self._accept_join(conn)
        return conn

    def _accept_join(self, conn: Connection) -> None:
        assert self._app_keys is not None
        read_keys, write_keys = self._app_keys
        conn.tls.accept_join(read_keys=read_keys, write_keys=write_keys, connection_id=conn.id)
        self._drain_tls_events(conn)

    def take_token(self) -> tuple[int, bytes] | None:
        """Client: a spare token ``(sequence, token)`` for a join, removed from the store."""
        if not self.tokens:
            return None
        seq = min(self.tokens)
        return seq, self.tokens.pop(seq)

    def start_join(self, **tls_kwargs: object) -> tuple[TLSConnection, int]:
        """Client: a new connection that joins this session with a spare token (design: Joins).

        The connection is registered (status ``handshake``) under the token's
        sequence number, its Connection ID. Call ``tls.start()`` once the TCP
        connection is up; :class:`ConnectionAdded` (or :class:`ConnectionRemoved`
        with the error) reports the outcome. Raises :class:`TCPLSError` when no
        token is left.
        """
        if (
            self._app_keys is None
            or not self.tcpls
            or self.state is not (SessionState.ESTABLISHED)
        ):
            raise ConnectionClosedError("joins need an established TCPLS session")
        entry = self.take_token()
        if entry is None:
            raise TCPLSError("no join token left (the server limits the connections per session)")
        seq, token = entry
        read_keys, write_keys = self._app_keys
        tls = TLSConnection.join_client(
            token,
            read_keys=read_keys,
            write_keys=write_keys,
            connection_id=seq,
            server_name=self.server_name,
            max_record_size=self.tuning.max_record_size,
            **tls_kwargs,  # type: ignore[arg-type]
        )
        self._join_tokens[seq] = token
        self.add_connection(tls, seq)
        return tls, seq

    def abandon_join(self, connection_id: int, error: TCPLSError | None = None) -> None:
        """Client: the TCP connection for a join never came up; forget it.

        The token was never sent, so it goes back to the spare tokens.
        """
        conn = self.connections.get(connection_id)
        token = self._join_tokens.pop(connection_id, None)
        if conn is None or conn.status is not ConnectionStatus.HANDSHAKE:
            return
        self._forget_connection(conn)
        if token is not None and not conn.tls.pending_output and conn.tls.state.value == "start":
            self.tokens[connection_id] = token
        self._events.append(ConnectionRemoved(connection_id, error))
        self._maybe_closed()

    # ------------------------------------------------------------------ input

    def get_buffer(self, connection_id: int) -> memoryview:
        """Writable space for bytes of this connection (``BufferedProtocol.get_buffer``)."""
        return self.connections[connection_id].tls.get_buffer()

    def buffer_updated(self, connection_id: int, nbytes: int, now: float) -> None:
        """``nbytes`` arrived in the buffer of :meth:`get_buffer`."""
        self._touch(now)
        conn = self.connections.get(connection_id)
        if conn is None:
            return
        conn.last_receive = now
        conn.peer_slow = False
        conn.bytes_received += nbytes
        conn.tls.buffer_updated(nbytes)
        self._drain_tls_events(conn)

    def poll_connection(self, connection_id: int, now: float) -> None:
        """Take the events of a connection whose bytes were fed to its TLS directly."""
        self._touch(now)
        conn = self.connections.get(connection_id)
        if conn is not None:
            self._drain_tls_events(conn)

    def receive_data(self, connection_id: int, data: bytes, now: float) -> None:
        """Bytes arrived on a connection (copying variant of :meth:`buffer_updated`)."""
        self._touch(now)
        conn = self.connections.get(connection_id)
        if conn is None:
            return
        conn.last_receive = now
        conn.peer_slow = False
        conn.bytes_received += len(data)
        conn.tls.receive_data(data)
        self._drain_tls_events(conn)

    def receive_eof(self, connection_id: int, now: float) -> None:
        """A connection delivered EOF."""
        self.now = now
        conn = self.connections.get(connection_id)
        if conn is None:
            return
        conn.tls.receive_eof()
        self._drain_tls_events(conn)

    def connection_lost(self, connection_id: int, error: TCPLSError | None, now: float) -> None:
        """The TCP connection is gone (reset, timeout, or closed after EOF)."""
        self.now = now
        conn = self.connections.get(connection_id)
        if conn is None or conn.status in (ConnectionStatus.FAILED, ConnectionStatus.CLOSED):
            return
        if conn.status is ConnectionStatus.CLOSING and (
            conn.tls.close_notify_received or self.peer_closed
        ):
            self._connection_closed(conn, None)
            return
        self._connection_failed(
            conn, error or ConnectionClosedError(f"connection {connection_id} was lost")
        )

    def _drain_tls_events(self, conn: Connection) -> None:
        tls = conn.tls
        while (event := tls.next_event()) is not None:
            if isinstance(event, HandshakeCompleted):
                self._on_handshake_completed(conn, event)
            elif isinstance(event, SessionTicketReceived):
                self.session_tickets.append(event.ticket)
            elif isinstance(event, CloseNotifyReceived):
                self._on_close_notify(conn)
            elif isinstance(event, TransportEnded):
                self._on_transport_ended(conn, event.close_notify_received)
            elif isinstance(event, ConnectionFailed):
                self._on_tls_failed(conn, event.error)
            elif isinstance(event, JoinRequested):
                self._events.append(JoinRequest(event.token))

    def _on_handshake_completed(self, conn: Connection, event: HandshakeCompleted) -> None:
        if event.joined:
            self._join_tokens.pop(conn.id, None)
            self._used_connection_ids.add(conn.id)
            self._connection_ready(conn)
            self._events.append(ConnectionAdded(conn.id))
            return
        self.tcpls = event.tcpls
        self.state = SessionState.ESTABLISHED
        self._last_activity = self.now
        self._trimmed = False
        self._app_keys = conn.tls.traffic_keys()
        self._aead_limit = aead_record_limit(self._app_keys[1].cipher_suite)
        self.handshake_engine = conn.tls.engine
        if event.token is not None and self.is_client:
            self.tokens[1] = event.token
            self._events.append(TokenReceived(1))
        if not event.tcpls:
            self._control.clear()  # New Address frames queued for a TCPLS session
            self.streams[0] = Stream(0, local=True)
            self._next_stream_id = self._peer_next_stream_id = 2
            self._outstanding_tokens.clear()
            if self._registry is not None:
                self._registry.revoke(self)
        self._events.append(HandshakeDone(event.tcpls))
        self._connection_ready(conn)
        self._replenish_tokens()
        for held in list(self.connections.values()):
            if held is not conn and held.status is ConnectionStatus.HANDSHAKE:
                if event.tcpls:
                    self._accept_join(held)
                else:
                    held.tls.reject_join()
                    self._forget_connection(held)

    def _connection_ready(self, conn: Connection) -> None:
        conn.status = ConnectionStatus.ACTIVE
        conn.last_receive = self.now
        if self.tcpls:
            conn.tls.on_data = lambda content: self._on_record(conn, content)
        else:
            conn.tls.on_data = self._on_plain_data
        if self.tcpls is not None:
            conn.tls.process_pending()  # records that came with the handshake

    def advertise_address(self, address_id: int, host: str, port: int) -> None:
        """Announce an extra address of ours with New Address (design: Addresses)."""
        if self.tcpls is not False:  # a plain TLS session has no frames
            self._control.append(NewAddress(address_id, ipaddress.ip_address(host), port))

    def withdraw_address(self, address_id: int) -> None:
        """Withdraw an advertised address with Remove Address (design: Addresses)."""
        if self.tcpls is not False:
            self._control.append(RemoveAddress(address_id))

    # ------------------------------------------------------------- close_notify

    def _on_close_notify(self, conn: Connection) -> None:
        # The peer sends no record on this connection any more, so no ACK: what we sent
        # there and it did not acknowledge is in TCP's hands (design: Closing).
        protection = conn.tls.write_protection
        if conn.sent_log and protection is not None:
            self._acknowledge(conn, protection.sequence - 1)
        self._close_notify_seen = True
        self._check_peer_closed()
        self._maybe_closed()

    def _check_peer_closed(self) -> None:
        """The peer is done once close_notify came on every connection it still has.

        A close_notify on one connection does not end the session's data: bytes
        sent earlier on another connection may still be in flight there, and TCP
        delivers them before that connection's own close_notify (design: Closing).
        """
        if self.peer_closed or not self._close_notify_seen:
            return
        for c in self.connections.values():
            if c.status is ConnectionStatus.HANDSHAKE:
                continue
            if not c.tls.close_notify_received:
                return
        if not self.peer_closed:
            self.peer_closed = True
            for stream in self.streams.values():
                recv = stream.recv
                if recv.final_size is None and self._close_error is None:
                    recv.final_size = recv.delivered  # (else the stream stays incomplete)
                self.readable.add(stream.id)
                self.writable.add(stream.id)
            self._events.append(PeerClosed())

    def _on_transport_ended(self, conn: Connection, clean: bool) -> None:
        if clean or self.peer_closed:
            # The peer is done; TLS closure is a half-close, so the connection stays
            # until our own close_notify has gone out on it.
            if conn.tls.close_notify_sent:
                self._connection_closed(conn, None)
            self._maybe_closed()
            return
        if self.tcpls and not conn.sent_log and self._others_alive(conn):
            # FIN without close_notify and nothing unacknowledged: a removal (design: Closing)
            self._connection_closed(conn, None)
            return
        self._connection_failed(
            conn, ConnectionClosedError("the peer closed the connection without close_notify")
        )

    def _on_tls_failed(self, conn: Connection, error: TCPLSError) -> None:
        if conn.status is ConnectionStatus.HANDSHAKE and conn.id != 0:
            self._join_failed(conn, error)
        elif isinstance(error, ProtocolError | PeerAlert) or not self.tcpls:
            self._fail(error)  # a fatal alert closes the whole session (design: Alerts)
        else:
            self._connection_failed(conn, error)

    def _join_failed(self, conn: Connection, error: TCPLSError) -> None:
        """A join that never completed failed (a bad token, a lost TCP connection, even
        one held during the handshake): only that connection is affected (design: Joins)."""
        self._join_tokens.pop(conn.id, None)
        conn.status = ConnectionStatus.FAILED
        self._forget_connection(conn)
        self._events.append(ConnectionRemoved(conn.id, error))
        self._maybe_closed()

    # ------------------------------- failure (design: Retransmission, Failure detection)

    def _forget_connection(self, conn: Connection) -> None:
        if self.connections.get(conn.id) is conn:
            del self.connections[conn.id]
        if conn.last_data is not None and conn.last_data > self._last_activity:
            self._last_activity = conn.last_data  # idleness survives the connection
        self._acks_pending.pop(conn, None)

    def _others_alive(self, conn: Connection) -> bool:
        return any(
            c is not conn and c.status is ConnectionStatus.ACTIVE
            for c in self.connections.values()
        )

    def _connection_failed(
        self, conn: Connection, error: TCPLSError, *, tell_peer: bool = True
    ) -> None:
        """Connection ``conn`` is dead: reinject what it carried unacknowledged."""
        if conn.status in (ConnectionStatus.FAILED, ConnectionStatus.CLOSED):
            return
        was_handshake = conn.status is ConnectionStatus.HANDSHAKE
        conn.status = ConnectionStatus.FAILED
        if conn.tls.close_notify_sent and not conn.tls.close_notify_received:
            # We sent close_notify there, so no ACK of ours told the peer what arrived:
            # it cannot send again what this connection lost. The session cannot end
            # cleanly (design: Closing).
            self._close_error = self._close_error or ConnectionClosedError(
                f"connection {conn.id} was lost before the peer finished sending on it; "
                "what it sent there may be missing"
            )
        if was_handshake and conn.id != 0 and self.state is SessionState.HANDSHAKE:
            self._join_failed(conn, error)  # a held join: the session itself is untouched
            return
        if (
            self.state is SessionState.HANDSHAKE
            or not self.tcpls
            or (was_handshake and conn.id == 0)
        ):
            self._fail(error)
            return
        self._reinject(conn)
        if tell_peer and conn.records_received:
            self._control.append(Ack(conn.id, conn.highest_received))
        if tell_peer:
            self._control.append(ConnectionReset(conn.id))
        conn.ack_pending_records = 0
        self._events.append(ConnectionRemoved(conn.id, error))
        self._forget_connection(conn)
        self._replenish_tokens()
        self._check_peer_closed()
        self._maybe_closed()

    def _reinject(self, conn: Connection) -> None:
        log = conn.sent_log
        streams = self.streams
        control: list[Frame] = []
        while log:
            _, refs, frames = log.popleft()
            for sid, offset, length, fin in refs:
                self.unacked_bytes -= length
                stream = streams.get(sid)
                if stream is not None and not stream.fin_acked:
                    stream.send_retransmit.append((offset, length, fin))
                    self._sendable[sid] = None
            if frames:
                control.extend(frames)
        for stream in streams.values():
            if stream.send_retransmit:
                stream.send_retransmit.sort()
        self._control.extendleft(reversed(control))

    def _connection_closed(self, conn: Connection, error: TCPLSError | None) -> None:
        if conn.status in (ConnectionStatus.FAILED, ConnectionStatus.CLOSED):
            return
        conn.status = ConnectionStatus.CLOSED
        if conn.sent_log and self.tcpls and not self.peer_closed:
            self._reinject(conn)
        self._forget_connection(conn)
        self._events.append(ConnectionRemoved(conn.id, error))
        self._replenish_tokens()
        self._check_peer_closed()
        self._maybe_closed()

    def remove_connection(self, connection_id: int) -> None:
        """Retire one connection gracefully: no new data, then FIN once acknowledged.

        (design: Closing)
        """
        conn = self.connections.get(connection_id)
        if conn is None or conn.status is not ConnectionStatus.ACTIVE:
            return
        conn.status = ConnectionStatus.DRAINING
        for stream in self.streams.values():
            if stream.pin == connection_id:
                stream.pin = None

    def connection_drained(self, connection_id: int) -> bool:
        """Whether a draining connection has nothing unacknowledged left (time for FIN)."""
        conn = self.connections.get(connection_id)
        return conn is not None and conn.status is ConnectionStatus.DRAINING and not conn.sent_log

    def finish_removal(self, connection_id: int) -> None:
        """The I/O layer sent FIN on a drained connection: forget it."""
        conn = self.connections.get(connection_id)
        if conn is not None:
            self._connection_closed(conn, None)

    def fail_connection(self, connection_id: int, error: TCPLSError, now: float) -> None:
        """The I/O layer detected a dead connection (timeout, unanswered Ping)."""
        self.now = now
        conn = self.connections.get(connection_id)
        if conn is not None:
            self._connection_failed(conn, error)

    # --------------------------------------------------------------- streams

    def open_stream(self) -> int:
        """Open a new stream; returns its ID (even for a client, odd for a server).

        (design: Streams)
        """
        self._check_open()
        if not self.tcpls:
            raise TCPLSError("plain TLS fallback carries exactly one stream")
        sid = self._next_stream_id
        if sid >= 1 << 32:
            raise TCPLSError("stream IDs exhausted")
        self._next_stream_id += 2
        self.streams[sid] = Stream(sid, local=True)
        return sid

    def _check_open(self) -> None:
        if self.state is SessionState.CLOSED:
            raise ConnectionClosedError(
                f"session closed: {self.error}" if self.error else "session closed"
            )
        if self.state is SessionState.HANDSHAKE:
            raise TCPLSError("the session is not established yet")

    def _stream(self, stream_id: int) -> Stream:
        stream = self.streams.get(stream_id)
        if stream is None:
            raise ConnectionClosedError(f"stream {stream_id} is closed")
        return stream

    def send(self, stream_id: int, data: bytes | bytearray | memoryview) -> None:
        """Queue bytes on a stream; they leave when a connection pulls records."""
        self._check_open()
        if self._close_requested:
            raise ConnectionClosedError("the session is closing")
        stream = self._stream(stream_id)
        if stream.fin_queued:
            raise ConnectionClosedError(f"stream {stream_id} was closed for writing")
        if data:
            stream.send.append(data)
            self.send_pending_total += len(data)
            self._sendable[stream_id] = None

    def send_eof(self, stream_id: int) -> None:
        """End our direction of the stream (FIN) after the queued bytes."""
        self._check_open()
        stream = self._stream(stream_id)
        if not stream.fin_queued:
            stream.fin_queued = True
            self._sendable[stream_id] = None

    def read(self, stream_id: int, n: int = -1) -> bytes:
        """Up to ``n`` bytes that arrived in order on a stream (``-1``: all)."""
        stream = self.streams.get(stream_id)
        if stream is None:
            return b""
        recv = stream.recv
        before = recv.buffered
        data = recv.read(n)
        self.receive_buffered -= before - recv.buffered
        if stream_id in self._full_streams and (
            recv.buffered <= self.tuning.stream_receive_buffer // 2
        ):
            self._full_streams.discard(stream_id)
        if stream.closed:
            self._forget_stream(stream)
        return data

    def pin_stream(self, stream_id: int, connection_id: int | None) -> None:
        """Keep a stream on one connection (``None``: let the scheduler choose)."""
        stream = self._stream(stream_id)
        if connection_id is not None and connection_id not in self.connections:
            raise ValueError(f"no connection {connection_id} in this session")
        stream.pin = connection_id

    @property
    def send_blocked(self) -> bool:
        """Whether the streams together hold more unsent bytes than ``session_send_buffer``.

        ``drain()`` then waits, whatever its own stream holds, until half of it left.
        """
        if self.send_pending_total > self.tuning.session_send_buffer:
            self._send_full = True
        return self._send_full

    @property
    def reassembly_bytes(self) -> int:
        """Stream bytes held out of order now, over all streams (for measurements).

        :attr:`reassembly_held` is what they cost in memory, which is what limits use.
        """
        return sum(stream.recv.held_bytes for stream in self.streams.values())

    def memory_use(self) -> int:
        """An estimate of the memory this session holds, in bytes (for a server's budget).

        A fixed cost per session and per connection, the record buffers of each
        connection, received data not read yet (reassembly included), and stream
        bytes not sent yet or not acknowledged yet.
        """
        total = (
            SESSION_COST
            + self.receive_buffered
            + self.reassembly_held
            + self.send_pending_total
            + self.unacked_bytes
        )
        for conn in self.connections.values():
            total += CONNECTION_COST + conn.tls.buffer_memory
        return total

    @property
    def reading_paused(self) -> bool:
        """Whether received data waits for the application: stop reading the sockets.

        Reading pauses while one stream holds more unread data than
        ``stream_receive_buffer``, or all streams together more than
        ``session_receive_buffer`` (counted in real memory), and resumes when the
        application has read half of it (design: Backpressure).
        """
        budget = self.tuning.session_receive_buffer
        if self._session_full:
            self._session_full = self.receive_buffered > budget // 2
        elif self.receive_buffered > budget:
            self._session_full = True
        return self._session_full or bool(self._full_streams)

    # ------------------------------------------------------------------ timers

    def _activity(self) -> float:
        """When stream data last moved, either way (idleness is measured from it)."""
        latest = self._last_activity  # sent, or the handshake
        for conn in self.connections.values():
            received = conn.last_data
            if received is not None and received > latest:
                latest = received
        return latest

    def _touch(self, now: float) -> None:
        """Bytes arrived at ``now`` (the handshake deadline starts with the first ones)."""
        self.now = now
        self._last_io = now
        self._trimmed = False  # reading may have taken a buffer again
        if self._handshake_deadline is None and self.state is SessionState.HANDSHAKE:
            self._handshake_deadline = now + self.tuning.handshake_timeout

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` must run next (``None``: no timer).

        Every deadline is cleared or moved by :meth:`handle_timer` once it has
        passed, so a deadline in the past fires once and never re-arms itself; and
        :meth:`handle_timer` compares ``now >= start + delay``, the very sum announced
        here, so no rounding keeps it from firing at the deadline (design: Timers).
        """
        if self.state is SessionState.CLOSED:
            return None  # a closed session runs no timer
        tuning = self.tuning
        deadlines: list[float] = [
            c.ack_deadline for c in self._acks_pending if c.ack_deadline is not None
        ]
        if self.tcpls and not self._reading_suspended:
            for c in self.connections.values():
                if c.status not in _PROBED or c.flow_blocked or c.peer_slow:
                    continue
                if c.ping_sent_at is not None:
                    deadlines.append(c.ping_sent_at + tuning.ping_timeout)
                elif (probe := c.probe_at(tuning.ping_after, QUIET_AFTER)) is not None:
                    deadlines.append(probe)
        if self._orphaned_since is not None:
            deadlines.append(self._orphaned_since + tuning.rejoin_timeout)
        state = self.state
        if state is SessionState.HANDSHAKE:
            if self._handshake_deadline is not None:
                deadlines.append(self._handshake_deadline)
        elif state is SessionState.CLOSING:
            if self._close_deadline is not None:
                deadlines.append(self._close_deadline)
        elif state is SessionState.ESTABLISHED and tuning.idle_timeout is not None:
            deadlines.append(self._activity() + tuning.idle_timeout)
        if not self._trimmed:
            deadlines.append(self._last_io + TRIM_AFTER)
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> None:
        """Run the timers that expired (the I/O layer then transmits).

        ACKs (design: ACK policy): an ACK whose delay has passed becomes
        due; its deadline is cleared, so it is not re-armed while the connection
        cannot send. Liveness (design: Failure detection): a connection with data
        outstanding that received nothing for ``ping_after`` gets a Ping; if the
        Ping is not answered (no ACK for its record, nothing received) within
        ``ping_timeout``, the connection has failed. Probes are suspended while
        the I/O layer does not read (:meth:`set_reading_paused`), since answers
        would not be read. A server session left without connections waits
        ``rejoin_timeout`` for the client to join again (break-before-make).
        """
        self.now = now
        tuning = self.tuning
        for conn in self._acks_pending:
            deadline = conn.ack_deadline
            if deadline is not None and now >= deadline:
                conn.ack_deadline = None
                conn.ack_now = True
        probing = self.tcpls and not self._reading_suspended
        for conn in list(self.connections.values()):
            if conn.status not in _PROBED or not probing:
                continue
            if conn.flow_blocked or conn.peer_slow:
                conn.ping_sent_at = None
                continue
            if conn.ping_sent_at is not None:
                answered = (
                    conn.peer_acked >= conn.ping_sequence or conn.last_receive > conn.ping_sent_at
                )
                if answered:
                    conn.ping_sent_at = None
                    # the path works: the next probe waits ping_after again, even if the
                    # answer came on another connection
                    conn.last_receive = max(conn.last_receive, now)
                elif now >= conn.ping_sent_at + tuning.ping_timeout:
                    self._connection_failed(
                        conn,
                        ConnectionClosedError(
                            f"connection {conn.id} did not answer a Ping "
                            f"within {tuning.ping_timeout:g} s"
                        ),
                    )
            else:
                probe = conn.probe_at(tuning.ping_after, QUIET_AFTER)
                if probe is not None and now >= probe:
                    conn.ping_pending = True
        since = self._orphaned_since
        if since is not None and now >= since + tuning.rejoin_timeout:
            self._set_closed(
                ConnectionClosedError(
                    f"no connection joined again within {tuning.rejoin_timeout:g} s"
                )
            )
        self._check_deadlines(now)

    def _check_deadlines(self, now: float) -> None:
        """The session-wide deadlines: handshake, close, idle, and giving buffers back."""
        tuning = self.tuning
        state = self.state
        if state is SessionState.HANDSHAKE:
            deadline = self._handshake_deadline
            if deadline is not None and now >= deadline:
                self._fail(
                    ConnectionClosedError(
                        f"the TLS handshake did not complete within {tuning.handshake_timeout:g} s"
                    )
                )
        elif state is SessionState.CLOSING:
            deadline = self._close_deadline
            if deadline is not None and now >= deadline:
                self._fail(
                    ConnectionClosedError(
                        f"the peer did not finish closing within {tuning.close_timeout:g} s"
                    )
                )
        elif (
            state is SessionState.ESTABLISHED
            and tuning.idle_timeout is not None
            and now >= self._activity() + tuning.idle_timeout
        ):
            logger.info("closing a session idle for %g s", tuning.idle_timeout)
            self._close_error = ConnectionClosedError(
                f"the session was idle for {tuning.idle_timeout:g} s"
            )
            self.close()
        if not self._trimmed and now >= self._last_io + TRIM_AFTER:
            self._trimmed = True
            for conn in self.connections.values():
                conn.tls.trim()

    def set_reading_paused(self, paused: bool, now: float) -> None:
        """The I/O layer paused (or resumed) reading every connection (backpressure).

        While it does not read, the answers to our Pings would wait unread, so
        liveness probes are suspended; when reading resumes, the silence of the
        pause does not count against any connection.
        """
        self.now = now
        if paused == self._reading_suspended:
            return
        self._reading_suspended = paused
        for conn in self.connections.values():
            if paused:
                conn.ping_sent_at = None
                conn.ping_pending = False
            else:
                conn.last_receive = max(conn.last_receive, now)

    def set_peer_slow(self, connection_id: int, now: float) -> None:
        """The I/O layer saw TCP deliver our unanswered Ping: the peer is slow, not gone.

        Its application does not read (its own backpressure), so our Ping waits in its
        socket. Probes of that connection stop until something arrives from it again
        (design: Failure detection).
        """
        self.now = now
        conn = self.connections.get(connection_id)
        if conn is not None:
            conn.peer_slow = True
            conn.ping_sent_at = None
            conn.ping_pending = False

    def set_flow_blocked(
        self, connection_id: int, blocked: bool, now: float | None = None
    ) -> None:
        """The I/O layer saw the peer's TCP window closed (or open again) on a connection."""
        if now is not None:
            self.now = now
        conn = self.connections.get(connection_id)
        if conn is not None:
            conn.flow_blocked = blocked
            if not blocked:
                conn.last_receive = max(conn.last_receive, self.now)

    # ------------------------------------------------------------------ closing

    def close(self, now: float | None = None) -> None:
        """Close gracefully: flush and wait for ACKs, then ``close_notify`` everywhere.

        ``now`` starts the close deadline; without it, the time of the last input or
        timer is used.

        (design: Closing)
        """
        if self.state is SessionState.CLOSED or self._close_requested:
            return
        self._close_requested = True
        if self.state is SessionState.HANDSHAKE:
            for conn in self.connections.values():
                conn.tls.close()
            self._set_closed(None)
            return
        self.state = SessionState.CLOSING
        if now is not None:
            self.now = now
        self._close_deadline = self.now + self.tuning.close_timeout
        # close_notify goes out from transmit(), after the ACKs we still owe (design: ACK policy)
        self._maybe_closed()

    def _flushed(self) -> bool:
        """Whether everything was sent and, unless the peer closed, acknowledged."""
        if self._control:
            return False
        wait_acks = self.reliable and self.tcpls and not self.peer_closed
        for stream in self.streams.values():
            if stream.has_data_to_send:
                return False
            if wait_acks and stream.send_buffered:
                return False
        return not (wait_acks and any(c.sent_log for c in self.connections.values()))

    def _send_close_notify(self) -> None:
        for conn in self.connections.values():
            if conn.status in (ConnectionStatus.ACTIVE, ConnectionStatus.DRAINING):
                conn.tls.close()
                conn.status = ConnectionStatus.CLOSING
        self._maybe_closed()

    @property
    def close_notify_sent(self) -> bool:
        """Whether we sent ``close_notify`` (the I/O layer then writes EOF)."""
        return self._close_requested and all(
            c.tls.close_notify_sent for c in self.connections.values()
        )

    def _maybe_closed(self) -> None:
        if self.state is SessionState.CLOSED:
            return
        local_done = self._close_requested and all(
            c.tls.close_notify_sent for c in self.connections.values()
        )
        if self.tcpls is False:
            stream = self.streams.get(0)
            local_done = local_done or bool(stream and stream.fin_sent)
        if local_done and self.peer_closed:
            self._set_closed(None)
            return
        if self.connections or self.state is SessionState.HANDSHAKE:
            self._orphaned_since = None
            return
        if self.peer_closed and (local_done or not self.is_client):
            self._set_closed(None)
        elif self._close_requested or not self.tcpls:
            self._set_closed(
                self.error or ConnectionClosedError("every connection of the session closed")
            )
        elif self.is_client:
            if not (self.tokens and self.rejoin):
                self._set_closed(
                    self.error or ConnectionClosedError("every connection of the session closed")
                )
        elif self._orphaned_since is None:
            # break-before-make: the client may join again with a spare token
            self._orphaned_since = self.now

    def _set_closed(self, error: TCPLSError | None) -> None:
        if self.state is SessionState.CLOSED:
            return
        self.state = SessionState.CLOSED
        self._orphaned_since = None
        if error is not None:
            error.__traceback__ = None  # kept in error: it must not hold frames alive
        self.error = error or self._close_error
        if self._registry is not None:
            self._registry.revoke(self)
        self._release()
        self._events.append(SessionClosed(error))

    def _release(self) -> None:
        """The session ended: free what can no longer be used (design: Ownership).

        Out-of-order data can never be completed and unsent or unacknowledged data can
        never be delivered; only what arrived in order stays, for the application to
        read. The record handlers are dropped, so nothing ties the connections back
        to the session.
        """
        for stream in self.streams.values():
            self.readable.add(stream.id)
            self.writable.add(stream.id)
            stream.recv.release()
            stream.release_send()
        self.reassembly_held = 0
        self.send_pending_total = 0
        self.unacked_bytes = 0
        self._control.clear()
        self._sendable.clear()
        self._acks_pending.clear()
        for conn in self.connections.values():
            conn.sent_log.clear()
            conn.tls.detach()
            conn.tls.trim()

    def _fail(self, error: TCPLSError) -> None:
        """A fatal error: alert on every connection, the session is closed (design: Alerts)."""
        if self.state is SessionState.CLOSED:
            return
        for conn in self.connections.values():
            conn.tls.abort(error)
            conn.status = ConnectionStatus.FAILED
            while conn.tls.next_event() is not None:
                pass
        self._set_closed(error)

    def abort(self, error: TCPLSError | None = None) -> None:
        """Close at once, without flushing (sends an alert when ``error`` is a ProtocolError)."""
        self._fail(error or ConnectionClosedError("session aborted"))
