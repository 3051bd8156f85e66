"""The state every part of a :class:`tcpls.core.session.Session` shares.

The session is one class assembled from parts split by concern: the frames
it receives (:mod:`tcpls.core.receiving`), the records it sends
(:mod:`tcpls.core.sending`), and the rest (:mod:`tcpls.core.session`:
connections, joins, failover, timers, closing). This module owns the
attributes they share, documented once, and declares the few methods one part
calls in another.
"""

from __future__ import annotations

from collections import deque
from enum import Enum
from typing import TYPE_CHECKING

from tcpls.config import SessionTuning
from tcpls.core.connection import Connection
from tcpls.core.events import SessionEvent
from tcpls.core.scheduler import Scheduler, SchedulerName
from tcpls.core.streams import Stream
from tcpls.core.tokens import TokenRegistry
from tcpls.errors import TCPLSError
from tcpls.tls.engine import HandshakeEngine
from tcpls.tls.record import TrafficKeys
from tcpls.wire.frames import Frame

if TYPE_CHECKING:
    from tcpls.core.session import Session

__all__ = ["SessionBase", "SessionState"]


class SessionState(Enum):
    """Life cycle of a session."""

    HANDSHAKE = "handshake"
    ESTABLISHED = "established"
    CLOSING = "closing"  # close() called: flushing, then close_notify
    CLOSED = "closed"


class SessionBase:
    """Shared state of a session (see the module docstring)."""

    def __init__(
        self,
        *,
        is_client: bool,
        tuning: SessionTuning | None = None,
        scheduler: SchedulerName = "aggregate",
        max_connections: int = 4,
        token_registry: TokenRegistry[Session] | None = None,
        reliable: bool = True,
        server_name: str | None = None,
    ) -> None:
        self.is_client = is_client
        self.tuning = tuning or SessionTuning()
        self.scheduler = Scheduler(scheduler)
        self.state = SessionState.HANDSHAKE
        #: ``True`` for TCPLS, ``False`` for plain TLS fallback, ``None`` during the handshake.
        self.tcpls: bool | None = None
        #: Keep the retransmission log and send ACKs (off only to measure their cost).
        self.reliable = reliable
        self.server_name = server_name
        self.connections: dict[int, Connection] = {}
        self.streams: dict[int, Stream] = {}
        #: Stream IDs whose readers may have something new (data, EOF or an error).
        self.readable: set[int] = set()
        #: Stream IDs whose send buffers fell below the high-water mark.
        self.writable: set[int] = set()
        self.error: TCPLSError | None = None
        self.peer_closed = False
        self.now = 0.0
        self.max_connections = max_connections
        self.session_tickets: list[object] = []
        #: Client: spare join tokens by sequence number.
        self.tokens: dict[int, bytes] = {}
        #: Addresses the peer advertised (design: Addresses), by address ID.
        self.peer_addresses: dict[int, tuple[str, int]] = {}
        self._removed_addresses: set[int] = set()
        #: Addresses the peer withdrew: no new connection may go to them (draft-04 §5.2.8).
        self.withdrawn_addresses: set[tuple[str, int]] = set()
        self._events: deque[SessionEvent] = deque()
        self._control: deque[Frame] = deque()
        self._sendable: dict[int, None] = {}
        self._full_streams: set[int] = set()
        self._next_stream_id = 0 if is_client else 1
        self._peer_next_stream_id = 1 if is_client else 0
        #: Memory of the out-of-order stream data held for reassembly, all streams.
        self.reassembly_held = 0
        #: Memory of the in-order stream data the application has not read, all streams.
        self.receive_buffered = 0
        #: Bytes the application wrote on all streams that never left yet.
        self.send_pending_total = 0
        #: drain() waits on the session's send budget until half of it left.
        self._send_full = False
        #: Records sealed with the session's application keys, over all connections,
        #: and how many its cipher may seal safely (design: Key usage limits).
        self.records_sealed = 0
        self._aead_limit: int | float = float("inf")
        #: Streams the peer opened that are not gone yet.
        self._peer_open = 0
        #: Reading is paused because the unread data of all streams exceeds the budget.
        self._session_full = False
        #: The I/O layer does not read the connections (liveness probes wait).
        self._reading_suspended = False
        #: When stream data last moved (idleness); the record buffers were given back since.
        self._last_activity = 0.0
        self._trimmed = False
        #: When bytes last moved at all: the record buffers are given back a second later.
        self._last_io = 0.0
        self._handshake_deadline: float | None = None
        self._close_deadline: float | None = None
        #: Why the session closed itself cleanly (idle), reported as its error.
        self._close_error: TCPLSError | None = None
        #: Connections with received records waiting for an ACK, in the order they got
        #: them (a dict, so that ACKs leave in a reproducible order; design: ACK policy).
        self._acks_pending: dict[Connection, None] = {}
        #: Stream bytes sent and not yet acknowledged, over all connections.
        self.unacked_bytes = 0
        self._app_keys: tuple[TrafficKeys, TrafficKeys] | None = None
        #: The engine that ran the handshake (for the exporter), kept after failover.
        self.handshake_engine: HandshakeEngine | None = None
        self._registry = token_registry
        self._next_token_sequence = 1
        self._outstanding_tokens: set[int] = set()
        self._used_connection_ids: set[int] = {0}
        self._join_tokens: dict[int, bytes] = {}  # client: tokens of joins under way
        self._close_requested = False
        self._close_notify_seen = False
        #: Server: when the session lost its last connection (it waits for a rejoin).
        self._orphaned_since: float | None = None
        #: Client: the I/O layer joins a new connection when the last one fails
        #: (break-before-make); without it the session ends with the last connection.
        self.rejoin = False

    @property
    def closed(self) -> bool:
        """Whether the session ended."""
        return self.state is SessionState.CLOSED

    # -- implemented by the other parts of Session ------------------------------

    def _connection_failed(
        self, conn: Connection, error: TCPLSError, *, tell_peer: bool = True
    ) -> None:
        raise NotImplementedError

    def _fail(self, error: TCPLSError) -> None:
        raise NotImplementedError

    def _replenish_tokens(self) -> None:
        raise NotImplementedError

    def _flushed(self) -> bool:
        raise NotImplementedError

    def _send_close_notify(self) -> None:
        raise NotImplementedError

    def remove_connection(self, connection_id: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def _stream_acked(self, stream: Stream, offset: int, length: int, fin: bool) -> None:
        raise NotImplementedError
