"""The connections of a session and the session's life cycle.

Owns, for one session: the TCP connections by Connection ID and their status, the
session's state (handshake, established, closing, closed) and how it ended, the
application keys that joins reuse, and the rules that tie them together:

* a handshake that completes establishes the session (TCPLS or plain TLS);
* joins: the server redeems a token, the client starts one with a spare token; a join
  that fails touches only its connection (design: Joins, Tokens);
* failover: a connection that fails hands what it carried unacknowledged back for
  sending on another one, and the survivors tell the peer with ACK + Connection Reset
  (design: Failure detection, Retransmission);
* closing: flush, wait for the ACKs, close_notify on every connection; the peer is done
  once close_notify came on every connection it still has (design: Closing);
* a client left without connections joins again if it can (break-before-make); a server
  waits ``rejoin_timeout`` for it. TLS reports by events (:meth:`Links.drain_tls`);
* early data settled when the handshake completes (design: Early data).
"""

from __future__ import annotations

import logging
from collections import deque
from enum import Enum

from tcpls.config import SessionTuning
from tcpls.core.acks import AckTracker
from tcpls.core.connection import Connection, ConnectionStatus
from tcpls.core.early import EarlyData
from tcpls.core.events import (
    ConnectionAdded,
    ConnectionRemoved,
    PeerClosed,
    SessionClosed,
    SessionEstablished,
    SessionEvent,
    TokenReceived,
)
from tcpls.core.joins import TokenBook
from tcpls.core.receiver import FrameReceiver
from tcpls.core.streamset import StreamSet
from tcpls.core.timers import Timer, TimerSet
from tcpls.core.trace import SessionTrace
from tcpls.errors import ConnectionClosedError, InternalError, PeerAlert, ProtocolError, TCPLSError
from tcpls.tls.connection import TLSConnection
from tcpls.tls.events import (
    CloseNotifyReceived,
    ConnectionFailed,
    HandshakeCompleted,
    HandshakeConfirmed,
    SessionTicketReceived,
    TransportEnded,
)
from tcpls.tls.hs.base import HandshakeEngine
from tcpls.tls.record import CipherSuite, TrafficKeys, aead_record_limit
from tcpls.wire.frames import Ack, ConnectionReset, Frame

__all__ = ["CONNECTION_COST", "SESSION_COST", "Links", "SessionState"]

#: What an idle session and each of its TCP connections cost beyond their buffers, in
#: bytes: the server's RSS per idle session, as measured (design: Idle memory).
SESSION_COST = 18 * 1024
MAX_TICKETS_KEPT = 4  #: Client: the newest tickets kept from a session (servers may send many).
CONNECTION_COST = 5 * 1024  #: What each TCP connection costs beyond its buffers (see above).

logger = logging.getLogger(__name__)

_GONE = (ConnectionStatus.FAILED, ConnectionStatus.CLOSED)


class SessionState(Enum):
    """Life cycle of a session."""

    HANDSHAKE = "handshake"
    ESTABLISHED = "established"
    CLOSING = "closing"  # close() called: flushing, then close_notify
    CLOSED = "closed"


class Links:
    """The connections and life cycle of one session (see the module docstring)."""

    def __init__(
        self,
        *,
        is_client: bool,
        tuning: SessionTuning,
        max_connections: int,
        server_name: str | None,
        events: deque[SessionEvent],
        control: deque[Frame],
        streams: StreamSet,
        acks: AckTracker,
        tokens: TokenBook[object],
        timers: TimerSet,
    ) -> None:
        self.is_client = is_client
        self.tuning = tuning
        self.max_connections = max_connections
        self.server_name = server_name
        self._events = events
        self._control = control
        self._streams = streams
        self._acks = acks
        self._tokens = tokens
        self._timers = timers
        self._receiver: FrameReceiver | None = None
        self.qlog: SessionTrace | None = None  #: Life-cycle hooks (design: qlog).
        self.early = EarlyData(streams)  #: 0-RTT data of the first connection
        self.connections: dict[int, Connection] = {}
        self.state = SessionState.HANDSHAKE
        self.closed = False  #: Whether the session ended (``state`` is ``CLOSED``).
        self.confirmed = False  #: Whether both Finished messages were verified.
        #: ``True`` for TCPLS, ``False`` for plain TLS fallback, ``None`` during the handshake.
        self.tcpls: bool | None = None
        self.error: TCPLSError | None = None
        self.peer_closed = False
        self.now = 0.0
        self.session_tickets: list[object] = []  # newest last (no deque: design: Idle memory)
        #: The engine that ran the handshake (for the exporter), kept after failover.
        self.handshake_engine: HandshakeEngine | None = None
        #: Client: the I/O layer joins a new connection when the last one fails
        #: (break-before-make); without it the session ends with the last connection.
        self.rejoin = False
        #: When stream data last moved besides what the streams report (the handshake).
        self.last_activity = 0.0
        self.close_requested = False
        #: Why the session closed itself cleanly (idle, key usage), reported as its error.
        self.close_error: TCPLSError | None = None
        self._close_notify_seen = False
        self._app_keys: tuple[TrafficKeys, TrafficKeys] | None = None
        self._suite: CipherSuite | None = None
        #: How many records the session's write key may seal (design: Key usage limits).
        self.aead_limit: int | float = float("inf")

    @property
    def cipher_suite(self) -> CipherSuite | None:
        """The cipher suite of the session's keys (``None`` before the handshake)."""
        return self._suite

    def attach(self, receiver: FrameReceiver) -> None:
        """The receiver that takes the records of the connections (it reports back here)."""
        self._receiver = receiver

    def check_open(self, *, writing: bool = False) -> None:
        """Raise unless the application may use the streams (``writing``: and write)."""
        if self.state is SessionState.CLOSED:
            raise ConnectionClosedError(f"session closed{f': {self.error}' if self.error else ''}")
        if self.state is SessionState.HANDSHAKE:
            raise TCPLSError("the session is not established yet")
        if writing and self.close_requested:
            raise ConnectionClosedError("the session is closing")

    # ------------------------------------------------------------- connections
    def add(self, tls: TLSConnection, connection_id: int = 0) -> Connection:
        """Register the TCP connection ``connection_id`` (0: the one that runs the handshake)."""
        if connection_id in self.connections:
            raise ValueError(f"connection {connection_id} already exists")
        conn = Connection(connection_id, tls)
        self.connections[connection_id] = conn
        self._timers.cancel(Timer.REJOIN)
        if tls.handshake_complete:
            self._ready(conn)
        return conn

    def replenish_tokens(self) -> None:
        """Server: hand out New Tokens up to the connection limit (design: Tokens)."""
        if not self._tokens.issues or not self.tcpls or self.state is not SessionState.ESTABLISHED:
            return
        live = sum(1 for c in self.connections.values() if c.status is not ConnectionStatus.FAILED)
        self._control.extend(self._tokens.replenish(live, self.max_connections))

    def redeem_join(self, tls: TLSConnection, sequence: int) -> Connection | None:
        """Server: a join with this session's token ``sequence`` arrived on ``tls``: the new
        connection, or ``None`` if the session is closing (the caller rejects the join). A
        join is held until both Finished verified (design: Tokens, draft-04 §4.2.2)."""
        self._tokens.redeemed(sequence)
        if self.state not in (SessionState.HANDSHAKE, SessionState.ESTABLISHED):
            return None
        conn = self.add(tls, sequence)
        if self._app_keys is not None:
            self._accept_join(conn)
        return conn

    def _accept_join(self, conn: Connection) -> None:
        assert self._app_keys is not None
        read_keys, write_keys = self._app_keys
        conn.tls.accept_join(read_keys=read_keys, write_keys=write_keys, connection_id=conn.id)
        self.drain_tls(conn)

    def start_join(self, **tls_kwargs: object) -> tuple[TLSConnection, int]:
        """Client: a new connection that joins this session with a spare token (design: Joins),
        registered (status ``handshake``) under the token's sequence, its Connection ID.

        Call ``tls.start()`` once TCP is up; :class:`ConnectionAdded` (or
        :class:`ConnectionRemoved`) reports the outcome. :class:`TCPLSError`: no token left.
        """
        if self._app_keys is None or not self.tcpls or self.state is not SessionState.ESTABLISHED:
            raise ConnectionClosedError("joins need an established TCPLS session")
        entry = self._tokens.take()
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
        self._tokens.joining(seq, token)
        self.add(tls, seq)
        return tls, seq

    def abandon_join(self, connection_id: int, error: TCPLSError | None = None) -> None:
        """Client: the TCP connection for a join never came up; forget it (a token never
        sent goes back to the spare tokens)."""
        conn = self.connections.get(connection_id)
        if conn is None or conn.status is not ConnectionStatus.HANDSHAKE:
            self._tokens.join_abandoned(connection_id, token_sent=True)
            return
        self._forget(conn)
        unsent = not conn.tls.pending_output and conn.tls.state.value == "start"
        self._tokens.join_abandoned(connection_id, token_sent=not unsent)
        self._events.append(ConnectionRemoved(connection_id, error))
        self._maybe_closed()

    # ------------------------------------------------------------- TLS events

    def drain_tls(self, conn: Connection) -> None:
        """Apply what the TLS connection of ``conn`` reported, and hand the records it
        has to the receiver (each after the events that came before it)."""
        tls = conn.tls
        while True:
            self._apply_tls_events(conn)
            receiver = self._receiver
            if receiver is None or conn.status is ConnectionStatus.HANDSHAKE:
                return  # (the session ended, or the connection is not ready yet)
            try:
                if conn.tls.early.pending:  # server: early data first (design: Early data)
                    self.early.deliver(conn, bool(self.tcpls))
                receiver.pull(conn, bool(self.tcpls))
                if conn.tls.early.pending:
                    self.early.deliver(conn, bool(self.tcpls))
            except TCPLSError as exc:  # the peer broke the rules (design: Alerts)
                self._tls_failed(conn, exc)
                return
            except Exception as exc:  # a bug: report it cleanly, keep the traceback
                logger.exception("internal error while processing frames")
                self.fail(InternalError(f"internal error: {exc.__class__.__name__}: {exc}"))
                return
            if not tls.has_events:
                return

    def _apply_tls_events(self, conn: Connection) -> None:
        tls = conn.tls
        while (event := tls.next_event()) is not None:
            if isinstance(event, HandshakeCompleted):
                self._handshake_completed(conn, event)
            elif isinstance(event, HandshakeConfirmed):
                self._confirmed(conn)
            elif isinstance(event, SessionTicketReceived):
                self.session_tickets = [*self.session_tickets, event.ticket][-MAX_TICKETS_KEPT:]
            elif isinstance(event, CloseNotifyReceived):
                self._close_notify(conn)
            elif isinstance(event, TransportEnded):
                self._transport_ended(conn, event.close_notify_received)
            elif isinstance(event, ConnectionFailed):
                self._tls_failed(conn, event.error)

    def _handshake_completed(self, conn: Connection, event: HandshakeCompleted) -> None:
        if event.joined:
            self._tokens.joined(conn.id)
            self._ready(conn)
            self._events.append(ConnectionAdded(conn.id))
            return
        self.tcpls = event.tcpls
        self.state = SessionState.ESTABLISHED
        self.last_activity = self.now
        self._suite = event.cipher_suite
        self.aead_limit = aead_record_limit(event.cipher_suite)
        # a server that accepted early data starts before the client's Finished: joins
        # wait for it, as they need the client's application key (design: Early data)
        started_early = event.early_data_accepted and not self.is_client
        self._app_keys = None if started_early else conn.tls.traffic_keys()
        self.handshake_engine = conn.tls.engine
        if event.token is not None and self.is_client:
            self._tokens.spare[1] = event.token
            self._events.append(TokenReceived(1))
        if not event.tcpls:
            self._control.clear()  # New Address frames queued for a TCPLS session
            self._streams.use_plain_tls()
            self._tokens.revoke_all()
        self._events.append(SessionEstablished(event.tcpls))
        self._ready(conn)
        if event.early_data_accepted and self.is_client:
            self.early.accepted(self.now)
        self.replenish_tokens()
        if not started_early:
            self._confirmed(conn)

    def _confirmed(self, conn: Connection) -> None:
        """Both Finished messages verified: answer the joins that came meanwhile."""
        self._timers.cancel(Timer.HANDSHAKE)  # (a server that started early kept it)
        self._app_keys = conn.tls.traffic_keys()
        self.confirmed = True
        for held in list(self.connections.values()):
            if held is not conn and held.status is ConnectionStatus.HANDSHAKE:
                if self.tcpls:
                    self._accept_join(held)
                else:
                    held.tls.reject_join()
                    self._forget(held)

    def _ready(self, conn: Connection) -> None:
        conn.status = ConnectionStatus.ACTIVE
        conn.last_receive = self.now

    def _close_notify(self, conn: Connection) -> None:
        # The peer sends no record on this connection any more, so no ACK: what we sent
        # there and it did not acknowledge is in TCP's hands (design: Closing).
        protection = conn.tls.write_protection
        if conn.sent_log and protection is not None:
            self._acks.acknowledge(conn, protection.sequence - 1)
        self._close_notify_seen = True
        self._check_peer_closed()
        self._maybe_closed()

    def _check_peer_closed(self) -> None:
        """The peer is done once close_notify came on every connection it still has: bytes
        sent earlier on another connection may still be in flight there, and TCP delivers
        them before that connection's own close_notify (design: Closing)."""
        if self.peer_closed or not self._close_notify_seen:
            return
        for c in self.connections.values():
            if c.status is not ConnectionStatus.HANDSHAKE and not c.tls.close_notify_received:
                return
        self.peer_closed = True
        self._streams.peer_finished(complete=self.close_error is None)
        self._events.append(PeerClosed())

    def _transport_ended(self, conn: Connection, clean: bool) -> None:
        if clean or self.peer_closed:
            # The peer is done; TLS closure is a half-close, so the connection stays
            # until our own close_notify has gone out on it.
            if conn.tls.close_notify_sent:
                self._closed(conn, None)
            self._maybe_closed()
            return
        if self.tcpls and not conn.sent_log and self._others_alive(conn):
            # FIN without close_notify and nothing unacknowledged: a removal (design: Closing)
            self._closed(conn, None)
            return
        self.connection_failed(
            conn, ConnectionClosedError("the peer closed the connection without close_notify")
        )

    def _tls_failed(self, conn: Connection, error: TCPLSError) -> None:
        if conn.status is ConnectionStatus.HANDSHAKE and conn.id != 0:
            self._join_failed(conn, error)
        elif isinstance(error, ProtocolError | PeerAlert) or not self.tcpls:
            self.fail(error)  # a fatal alert closes the whole session (design: Alerts)
        else:
            self.connection_failed(conn, error)

    def _join_failed(self, conn: Connection, error: TCPLSError) -> None:
        """A join that never completed failed (a bad token, a lost TCP connection, even
        one held during the handshake): only that connection is affected (design: Joins)."""
        self._tokens.join_failed(conn.id)
        conn.status = ConnectionStatus.FAILED
        self._forget(conn)
        self._events.append(ConnectionRemoved(conn.id, error))
        self._maybe_closed()

    # ------------------------------- failure (design: Retransmission, Failure detection)

    def _forget(self, conn: Connection) -> None:
        if self.connections.get(conn.id) is conn:
            del self.connections[conn.id]
        if conn.last_data is not None and conn.last_data > self.last_activity:
            self.last_activity = conn.last_data  # idleness survives the connection
        self._acks.forget(conn)

    def _others_alive(self, conn: Connection) -> bool:
        return any(
            c is not conn and c.status is ConnectionStatus.ACTIVE
            for c in self.connections.values()
        )

    def lost(self, conn: Connection, error: TCPLSError | None) -> None:
        """The TCP connection of ``conn`` is gone (reset, timeout, or closed after EOF)."""
        if conn.status in _GONE:
            return
        if conn.status is ConnectionStatus.CLOSING and (
            conn.tls.close_notify_received or self.peer_closed
        ):
            self._closed(conn, None)
            return
        lost = ConnectionClosedError(f"connection {conn.id} was lost")
        self.connection_failed(conn, error or lost)

    def connection_failed(
        self, conn: Connection, error: TCPLSError, *, tell_peer: bool = True
    ) -> None:
        """Connection ``conn`` is dead: reinject what it carried unacknowledged."""
        if conn.status in _GONE:
            return
        was_handshake = conn.status is ConnectionStatus.HANDSHAKE
        conn.status = ConnectionStatus.FAILED
        if conn.tls.close_notify_sent and not conn.tls.close_notify_received:
            # We sent close_notify there, so no ACK of ours told the peer what arrived:
            # it cannot send again what this connection lost. The session cannot end
            # cleanly (design: Closing).
            self.close_error = self.close_error or ConnectionClosedError(
                f"connection {conn.id} was lost before the peer finished sending on it; "
                "what it sent there may be missing"
            )
        if was_handshake and conn.id != 0 and self._app_keys is None:
            self._join_failed(conn, error)  # a held join: the session itself is untouched
            return
        if (
            self.state is SessionState.HANDSHAKE
            or not self.tcpls
            or (was_handshake and conn.id == 0)
        ):
            self.fail(error)
            return
        if self.qlog is not None:
            self.qlog.connection_failed(conn, error, tell_peer)
        self._acks.reinject(conn)
        if tell_peer and conn.records_received:
            self._control.append(Ack(conn.id, conn.highest_received))
        if tell_peer:
            self._control.append(ConnectionReset(conn.id))
        conn.ack_pending_records = 0
        self._events.append(ConnectionRemoved(conn.id, error))
        self._forget(conn)
        self.replenish_tokens()
        self._check_peer_closed()
        self._maybe_closed()

    def _closed(self, conn: Connection, error: TCPLSError | None) -> None:
        if conn.status in _GONE:
            return
        conn.status = ConnectionStatus.CLOSED
        if conn.sent_log and self.tcpls and not self.peer_closed:
            self._acks.reinject(conn)
        self._forget(conn)
        self._events.append(ConnectionRemoved(conn.id, error))
        self.replenish_tokens()
        self._check_peer_closed()
        self._maybe_closed()

    def remove(self, connection_id: int) -> None:
        """Retire one connection gracefully: no new data, then FIN once acknowledged.

        (design: Closing)
        """
        conn = self.connections.get(connection_id)
        if conn is None or conn.status is not ConnectionStatus.ACTIVE:
            return
        conn.status = ConnectionStatus.DRAINING
        for stream in self._streams.table.values():
            if stream.pin == connection_id:
                stream.pin = None

    def finish_removal(self, connection_id: int) -> None:
        """The I/O layer sent FIN on a drained connection: forget it."""
        conn = self.connections.get(connection_id)
        if conn is not None:
            self._closed(conn, None)

    # --------------------------------------------- what the receiver reports

    def peer_reset(self, connection_id: int) -> None:
        """The peer sent Connection Reset for one of our connections."""
        conn = self.connections.get(connection_id)
        if conn is not None and conn.status not in _GONE:
            error = ConnectionClosedError(f"the peer reset connection {connection_id}")
            self.connection_failed(conn, error, tell_peer=False)

    def address_withdrawn(self, host: str, port: int) -> None:
        """The peer withdrew an address: retire our connections to it."""
        for conn in list(self.connections.values()):
            remote = conn.remote_address
            if remote is not None and remote[0] == host and remote[1] == port:
                self.remove(conn.id)

    def emit(self, event: SessionEvent) -> None:
        """Report ``event`` to the I/O layer."""
        self._events.append(event)

    def tokens_needed(self) -> None:
        """A token was revoked: hand out another one."""
        self.replenish_tokens()

    # ------------------------------------------------------------------ closing
    def close(self, now: float | None = None) -> None:
        """Close gracefully: flush and wait for ACKs, then ``close_notify`` everywhere
        (design: Closing). ``now`` starts the close deadline (default: the last input or timer).
        """
        if self.state is SessionState.CLOSED or self.close_requested:
            return
        self.close_requested = True
        if self.state is SessionState.HANDSHAKE:
            for conn in self.connections.values():
                conn.tls.close()
            self.set_closed(None)
            return
        self.state = SessionState.CLOSING
        if now is not None:
            self.now = now
        self._timers.set(Timer.CLOSE, self.now + self.tuning.close_timeout)
        # close_notify goes out from transmit(), after the ACKs we still owe (design: ACK policy)
        self._maybe_closed()

    def flushed(self) -> bool:
        """Whether everything was sent and, unless the peer closed, acknowledged."""
        if self._control or self._streams.has_data_to_send():
            return False
        if not (self._acks.logs and self.tcpls and not self.peer_closed):
            return True
        if self._streams.holds_unacknowledged():
            return False
        return not any(c.sent_log for c in self.connections.values())

    def send_close_notify(self) -> None:
        """Everything is flushed: close_notify on every live connection."""
        for conn in self.connections.values():
            if conn.status in (ConnectionStatus.ACTIVE, ConnectionStatus.DRAINING):
                conn.tls.close()
                conn.status = ConnectionStatus.CLOSING
        self._maybe_closed()

    def _maybe_closed(self) -> None:
        if self.state is SessionState.CLOSED:
            return
        local_done = self.close_requested and all(
            c.tls.close_notify_sent for c in self.connections.values()
        )
        if self.tcpls is False:
            stream = self._streams.table.get(0)
            local_done = local_done or bool(stream and stream.fin_sent)
        if local_done and self.peer_closed:
            self.set_closed(None)
            return
        if self.connections or self.state is SessionState.HANDSHAKE:
            self._timers.cancel(Timer.REJOIN)
            return
        every_closed = ConnectionClosedError("every connection of the session closed")
        if self.peer_closed and (local_done or not self.is_client):
            self.set_closed(None)
        elif self.close_requested or not self.tcpls:
            self.set_closed(self.error or every_closed)
        elif self.is_client:
            if not (self._tokens.spare and self.rejoin):
                self.set_closed(self.error or every_closed)
        elif self._timers.get(Timer.REJOIN) is None:
            # break-before-make: the client may join again with a spare token
            self._timers.set(Timer.REJOIN, self.now + self.tuning.rejoin_timeout)

    def set_closed(self, error: TCPLSError | None) -> None:
        """The session ended (``error``: why, ``None``: cleanly)."""
        if self.state is SessionState.CLOSED:
            return
        self.state = SessionState.CLOSED
        self.closed = True
        self._timers.clear()
        if error is not None:
            error.__traceback__ = None  # kept in error: it must not hold frames alive
        self.error = error or self.close_error
        self._tokens.revoke_all()
        self._release()
        self._events.append(SessionClosed(error))

    def _release(self) -> None:
        """The session ended: keep only what arrived in order, for the application, and
        nothing that ties the connections back to us (design: Ownership)."""
        self._streams.release()
        self._control.clear()
        self._receiver = None  # (it refers back to us)
        conns = list(self.connections.values())
        self._acks.release(conns)
        for conn in conns:
            conn.tls.detach()
            conn.tls.trim()

    def fail(self, error: TCPLSError) -> None:
        """A fatal error: alert on every connection, the session is closed (design: Alerts)."""
        if self.state is SessionState.CLOSED:
            return
        for conn in self.connections.values():
            conn.tls.abort(error)
            conn.status = ConnectionStatus.FAILED
            while conn.tls.next_event() is not None:
                pass
        self.set_closed(error)
