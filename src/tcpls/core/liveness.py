"""Liveness: Ping probes and the detection of dead connections.

Owns the probing policy of one session (design: Failure detection). The per-connection
facts it reads and sets (when something last arrived, whether a Ping is outstanding, on
which record) live on each :class:`~tcpls.core.connection.Connection`; this module decides
when a connection gets a Ping and when an unanswered one means the connection failed.

A connection whose oldest ack-eliciting record waited a probe timeout for its ACK while
nothing arrived on it becomes suspect (:mod:`tcpls.core.rtt`): it gets a Ping, new data
avoids it, and the caller sends its unacknowledged frames again elsewhere; its next probe
timeouts back off exponentially, and an ACK that covers something new makes it healthy
again. A connection with data outstanding, or whose stream data stopped coming a short
while ago, gets a Ping after ``ping_after`` of silence; if nothing answers by
``ping_after + ping_timeout`` of silence (and at least ``ping_timeout`` after the Ping),
it has failed. Probes are suspended while the I/O layer does not read (the answer would
wait unread), while the peer's TCP window is closed, and once TCP showed that the peer
received our Ping but does not read (a slow peer, not a dead one).
"""

from __future__ import annotations

from collections.abc import Iterable

from tcpls.config import SessionTuning
from tcpls.core.connection import Connection, ConnectionStatus
from tcpls.core.rtt import MAX_BACKOFF
from tcpls.errors import ConnectionClosedError

__all__ = ["QUIET_AFTER", "Liveness"]

#: A receiving connection whose stream data stopped less than this long ago is probed.
QUIET_AFTER = 5.0
_PROBED = (ConnectionStatus.ACTIVE, ConnectionStatus.DRAINING)  # (a set would hash in Python)


class Liveness:
    """When the connections of one session are probed, and when they have failed."""

    __slots__ = ("reading_suspended", "tuning")

    def __init__(self, tuning: SessionTuning) -> None:
        self.tuning = tuning
        #: The I/O layer does not read the connections: probes wait.
        self.reading_suspended = False

    def next_deadline(self, connections: Iterable[Connection]) -> float | None:
        """When a probe is due, a probe timeout expires or an outstanding Ping times
        out, the earliest."""
        if self.reading_suspended:
            return None
        tuning = self.tuning
        earliest: float | None = None
        for c in connections:
            if c.status not in _PROBED or c.flow_blocked or c.peer_slow:
                continue
            if c.ping_sent_at is not None:
                at: float | None = c.ping_deadline(tuning.ping_after, tuning.ping_timeout)
            else:
                at = c.probe_at(tuning.ping_after, QUIET_AFTER)
            suspect_at = self.suspect_at(c)
            if suspect_at is not None and (at is None or suspect_at < at):
                at = suspect_at
            if at is not None and (earliest is None or at < earliest):
                earliest = at
        return earliest

    def suspect_at(self, conn: Connection) -> float | None:
        """When ``conn``'s next probe timeout expires (``None``: not before something
        happens). With records of ours in flight: once the oldest waited a probe timeout
        for its ACK and nothing arrived for half of one. With none: once a connection
        whose last news was stream data stayed silent a probe timeout (the receiving end
        of a transfer whose path died; a sender that merely finished costs one Ping)."""
        timing = conn.timing
        if timing.backoff >= MAX_BACKOFF or conn.tls.close_notify_received:
            return None  # (after the peer's close_notify, no ACK comes: design: Closing)
        tuning = self.tuning
        pto = timing.probe_timeout(tuning.ack_delay, tuning.suspect_timeout_min)
        oldest = timing.oldest
        if oldest is None:
            if conn.last_data is None or conn.last_data < conn.last_receive:
                return None
            heard = conn.last_receive
            return (heard if heard > conn.tcp_heard_at else conn.tcp_heard_at) + pto
        heard = conn.last_receive if conn.last_receive > conn.tcp_heard_at else conn.tcp_heard_at
        quiet = heard + pto / 2
        return oldest + pto if oldest + pto > quiet else quiet

    def expired_probes(self, now: float, connections: Iterable[Connection]) -> list[Connection]:
        """The connections whose probe timeout expired: each becomes (or stays) suspect,
        gets a Ping if it has none outstanding, and backs off; the caller sends its
        unacknowledged frames again elsewhere (design: Failure detection)."""
        expired: list[Connection] = []
        if self.reading_suspended:
            return expired
        for conn in connections:
            if conn.status not in _PROBED or conn.flow_blocked or conn.peer_slow:
                continue
            at = self.suspect_at(conn)
            if at is None or now < at:
                continue
            timing = conn.timing
            if not timing.suspect:
                timing.suspect = True
                timing.suspect_since = now
                timing.resent_bytes = 0
            timing.backoff += 1
            if conn.ping_sent_at is None and not conn.tls.close_notify_received:
                conn.ping_pending = True
            expired.append(conn)
        return expired

    def handle_timer(
        self, now: float, connections: Iterable[Connection]
    ) -> list[tuple[Connection, ConnectionClosedError]]:
        """Schedule the Pings that are due; return the connections whose Ping went
        unanswered, with the error to fail them with."""
        failed: list[tuple[Connection, ConnectionClosedError]] = []
        if self.reading_suspended:
            return failed
        tuning = self.tuning
        for conn in connections:
            if conn.status not in _PROBED:
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
                elif now >= conn.ping_deadline(tuning.ping_after, tuning.ping_timeout):
                    failed.append(
                        (
                            conn,
                            ConnectionClosedError(
                                f"connection {conn.id} did not answer a Ping "
                                f"within {tuning.ping_timeout:g} s"
                            ),
                        )
                    )
            else:
                probe = conn.probe_at(tuning.ping_after, QUIET_AFTER)
                if probe is not None and now >= probe:
                    conn.ping_pending = True
        return failed

    def set_reading_paused(
        self, paused: bool, now: float, connections: Iterable[Connection]
    ) -> None:
        """The I/O layer paused or resumed reading: while paused, probes stop; when it
        resumes, the silence of the pause counts against no connection."""
        if paused == self.reading_suspended:
            return
        self.reading_suspended = paused
        for conn in connections:
            if paused:
                conn.ping_sent_at = None
                conn.ping_pending = False
            else:
                conn.last_receive = max(conn.last_receive, now)

    def probes_due(self, now: float, connections: Iterable[Connection]) -> list[Connection]:
        """The connections whose probe timeout expires by ``now`` (the I/O layer asks TCP
        whether it still hears from the peer first: :meth:`transport_heard`)."""
        if self.reading_suspended:
            return []
        due = []
        for conn in connections:
            if conn.status not in _PROBED or conn.flow_blocked or conn.peer_slow:
                continue
            at = self.suspect_at(conn)
            if at is not None and now >= at:
                due.append(conn)
        return due

    @staticmethod
    def transport_heard(conn: Connection, at: float) -> None:
        """TCP received a segment from the peer at ``at`` on ``conn`` (the kernel's
        ``TCP_INFO``): the path works, so the connection's silence starts then."""
        if at > conn.tcp_heard_at:
            conn.tcp_heard_at = at

    @staticmethod
    def peer_slow(conn: Connection) -> None:
        """TCP delivered our unanswered Ping: the peer is alive but does not read. Its
        probes stop until something arrives from it again."""
        conn.peer_slow = True
        conn.ping_sent_at = None
        conn.ping_pending = False

    @staticmethod
    def flow_blocked(conn: Connection, blocked: bool, now: float) -> None:
        """The peer's TCP window closed (or opened again) on ``conn``."""
        conn.flow_blocked = blocked
        if not blocked:
            conn.last_receive = max(conn.last_receive, now)

    @staticmethod
    def heard_from(conn: Connection, nbytes: int, now: float) -> None:
        """``nbytes`` arrived on ``conn``: it is alive, and its peer reads again."""
        conn.last_receive = now
        conn.peer_slow = False
        conn.bytes_received += nbytes
