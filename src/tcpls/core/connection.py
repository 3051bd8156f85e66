"""Per-TCP-connection TCPLS state: ACK bookkeeping and the retransmission log.

A :class:`Connection` wraps the :class:`~tcpls.tls.connection.TLSConnection`
of one TCP connection of a session and adds what TCPLS keeps per connection:

* receive side: how many records arrived and how many ack-eliciting records
  wait for an ACK (design: ACK policy);
* send side: the log of retransmittable frames of every record not yet
  acknowledged, keyed by record sequence number (design: Retransmission);
* liveness: when something last arrived, whether a Ping is outstanding, and the RTT
  estimate and suspicion of :class:`~tcpls.core.rtt.PathTiming` (design: Failure
  detection);
* counters for ``session.connections``.
"""

from __future__ import annotations

from collections import deque
from enum import Enum
from typing import TypeAlias

from tcpls.core.rtt import PathTiming
from tcpls.tls.connection import TLSConnection
from tcpls.wire.frames import Frame

__all__ = ["Connection", "ConnectionStatus", "LogEntry", "StreamRef"]

#: A stream range carried by a record: ``(stream_id, offset, length, fin)``.
StreamRef: TypeAlias = tuple[int, int, int, bool]
#: What the log keeps per record: its sequence, stream ranges, retransmittable control frames.
LogEntry: TypeAlias = tuple[int, list[StreamRef], list[Frame] | None]


class ConnectionStatus(Enum):
    """Life cycle of a connection inside a session."""

    HANDSHAKE = "handshake"
    ACTIVE = "active"
    DRAINING = "draining"  # being removed: no new data, waiting for ACKs (design: Closing)
    CLOSING = "closing"  # close_notify sent
    CLOSED = "closed"
    FAILED = "failed"


class Connection:
    """One TCP connection of a session (see the module docstring)."""

    __slots__ = (
        "ack_deadline",
        "ack_elsewhere",
        "ack_late_at",
        "ack_now",
        "ack_pending_bytes",
        "ack_pending_records",
        "bytes_received",
        "bytes_sent",
        "eof_asked",
        "expected_stream_change",
        "flow_blocked",
        "id",
        "last_data",
        "last_receive",
        "local_address",
        "peer_acked",
        "peer_slow",
        "ping_answer",
        "ping_pending",
        "ping_sent_at",
        "ping_sequence",
        "records_received",
        "records_sent",
        "remote_address",
        "sent_log",
        "status",
        "tcp_heard_at",
        "timing",
        "tls",
    )

    def __init__(self, connection_id: int, tls: TLSConnection) -> None:
        self.id = connection_id
        self.tls = tls
        self.status = ConnectionStatus.HANDSHAKE
        self.local_address: tuple[str, int] | None = None
        self.remote_address: tuple[str, int] | None = None
        # receive side
        self.records_received = 0
        self.bytes_received = 0
        self.ack_pending_records = 0
        self.ack_pending_bytes = 0
        self.ack_deadline: float | None = None
        self.ack_now = False
        #: When the ACK owed may leave on another connection if its own did not carry it.
        self.ack_late_at: float | None = None
        self.ack_elsewhere = False  # ... and that time has come
        self.last_receive = 0.0
        #: When a record with stream data last arrived (``None``: never).
        self.last_data: float | None = None
        self.expected_stream_change: tuple[int, int] | None = None
        # send side
        self.records_sent = 0
        self.bytes_sent = 0
        self.sent_log: deque[LogEntry] = deque()
        #: The I/O layer was told to write EOF after our close_notify.
        self.eof_asked = False
        self.peer_acked = -1  # highest record sequence the peer acknowledged
        self.ping_pending = False  # a Ping is to be sent on this connection
        self.ping_answer = False  # a Ping arrived here: send an ACK on this connection
        self.ping_sent_at: float | None = None  # when the unanswered Ping left
        self.ping_sequence = -1  # the record that carried it
        #: Set by the I/O layer while the peer advertises a zero TCP window: the
        #: connection is slow, not dead, so Ping probes are suspended.
        self.flow_blocked = False
        #: Set by the I/O layer when TCP delivered our unanswered Ping to the peer: the
        #: peer is alive but does not read; cleared when anything arrives again.
        self.peer_slow = False
        #: Records in flight, the RTT estimate and the suspect state.
        self.timing = PathTiming()
        #: When TCP last received a segment from the peer, as the I/O layer read it from
        #: the kernel: a path that carries TCP's ACKs is slow, not dead.
        self.tcp_heard_at = 0.0

    @property
    def usable(self) -> bool:
        """Whether new data may be scheduled on this connection (a suspect one takes
        new data only when no healthy connection can; design: Failure detection)."""
        return (
            self.status is ConnectionStatus.ACTIVE
            and self.tls.can_send
            and not self.timing.suspect
        )

    def ping_deadline(self, ping_after: float, ping_timeout: float) -> float:
        """When the outstanding Ping counts as unanswered: ``ping_timeout`` after it left,
        and not before ``ping_after + ping_timeout`` of silence (a suspect connection's
        early Ping gives it no less time than a late one would)."""
        assert self.ping_sent_at is not None
        start = self.last_receive + ping_after
        if self.ping_sent_at > start:
            start = self.ping_sent_at
        return start + ping_timeout

    @property
    def highest_received(self) -> int:
        """Sequence number of the last record that decrypted on this connection (-1: none)."""
        protection = self.tls.read_protection
        return protection.sequence - 1 if protection is not None else -1

    def probe_at(self, ping_after: float, quiet_after: float) -> float | None:
        """When this connection should get a Ping if nothing arrives meanwhile.

        A sender with data outstanding probes after ``ping_after`` of silence. So does a
        receiver whose data stopped coming less than ``quiet_after`` ago: a path that
        died in the middle of a transfer must be noticed by the end that is only
        receiving too, since only a client can join again (design: Failure detection).
        """
        if self.ping_pending or self.tls.close_notify_received:
            return None  # (after close_notify the peer sends nothing more here)
        at = self.last_receive + ping_after
        if self.sent_log:
            return at
        last_data = self.last_data
        if last_data is not None and at < last_data + quiet_after:
            return at
        return None

    def ack_due(self, now: float) -> bool:
        """Whether an ACK for this connection must go out now (design: ACK policy)."""
        if self.ack_pending_records == 0:
            return False
        if self.ack_now:
            return True
        deadline = self.ack_deadline
        return deadline is not None and now >= deadline

    @property
    def drained(self) -> bool:
        """Whether a draining connection has nothing unacknowledged left (time for FIN)."""
        return self.status is ConnectionStatus.DRAINING and not self.sent_log

    def __repr__(self) -> str:
        return f"<Connection {self.id} {self.status.value}>"
