"""ACKs: the ones we owe the peer, and the records the peer has not acknowledged.

Owns, for one session, the two halves of TCPLS reliability:

* receiving: which connections received ack-eliciting records that wait for an ACK,
  and when that ACK is due (design: ACK policy);
* sending: the log of every record sent and not yet acknowledged, per connection,
  with the stream ranges and retransmittable control frames it carried; an ACK
  trims it and releases the stream bytes, a failed connection's log goes back to
  the streams and the control queue (design: Retransmission).

:class:`AckTracker` is the policy TCPLS runs. :class:`NoAcks` keeps no log and sends
no ACK, for benchmarks that measure what reliability costs; a session takes one or
the other and nothing else in the data path asks which.
"""

from __future__ import annotations

from collections import deque

from tcpls.config import SessionTuning
from tcpls.core.connection import Connection, LogEntry, StreamRef
from tcpls.core.streamset import StreamSet
from tcpls.errors import IllegalParameter
from tcpls.wire.frames import Ack, Frame
from tcpls.wire.layout import write_ack_into

__all__ = ["REF_COST", "AckTracker", "NoAcks"]


#: What one logged stream range costs beyond its bytes: its tuple, its share of the log,
#: and the send-buffer chunk it keeps alive (a peer that acknowledges nothing while
#: tiny frames leave must meet the unacknowledged cap as soon as with full records;
#: design: Backpressure).
REF_COST = 256


class AckTracker:
    """ACKs owed and records unacknowledged, for one session (see the module docstring)."""

    #: Whether records are logged until acknowledged (closing then waits for the ACKs).
    logs = True

    def __init__(self, tuning: SessionTuning, streams: StreamSet, control: deque[Frame]) -> None:
        self.tuning = tuning
        self._streams = streams
        self._control = control
        #: Connections with received records waiting for an ACK, in the order they got
        #: them (a dict, so that ACKs leave in a reproducible order).
        self.pending: dict[Connection, None] = {}
        #: Stream bytes sent and not yet acknowledged, over all connections.
        self.unacked_bytes = 0
        #: Stream ranges logged and not yet acknowledged (each costs :data:`REF_COST`).
        self.unacked_refs = 0
        #: Stream bytes handed back for sending again by connections that failed (statistics).
        self.reinjected_bytes = 0
        #: Stream bytes sent again elsewhere while their connection was suspect (statistics).
        self.resent_bytes = 0

    # ------------------------------------------------------------ ACKs we owe

    def eliciting(self, conn: Connection, size: int, now: float) -> None:
        """An ack-eliciting record of ``size`` bytes arrived on ``conn``."""
        conn.ack_pending_records += 1
        if conn.ack_pending_records == 1:
            # the ACK goes on its own connection; if it has not left by then, on any
            conn.ack_late_at = now + 2 * self.tuning.ack_delay
        self.pending[conn] = None
        conn.ack_pending_bytes += size
        tuning = self.tuning
        if (
            conn.ack_pending_records >= tuning.ack_records
            or conn.ack_pending_bytes >= tuning.ack_bytes
        ):
            conn.ack_now = True
        elif conn.ack_deadline is None:
            conn.ack_deadline = now + tuning.ack_delay

    def any_due(self, now: float) -> bool:
        """Whether some ACK must go out now."""
        if not self.pending:  # asked on every pass of the I/O layer, and mostly empty
            return False
        return any(c.ack_due(now) for c in self.pending)

    @staticmethod
    def _goes_on(c: Connection, conn: Connection, now: float) -> bool:
        """Whether the due ACK of ``c`` goes in a record of ``conn``: on its own connection,
        which it shows to work both ways (design: ACK policy, Failure detection), and on
        another one when its own cannot send or did not carry it in time."""
        return c.ack_due(now) and (c is conn or c.ack_elsewhere or not c.tls.can_send)

    def due_on(self, conn: Connection, now: float) -> bool:
        """Whether an ACK must go out now in a record of ``conn``."""
        if not self.pending:  # asked on every pass of the I/O layer, and mostly empty
            return False
        goes_on = self._goes_on
        return any(goes_on(c, conn, now) for c in self.pending)

    def all_due(self) -> None:
        """Everything received is acknowledged in the next record (before close_notify)."""
        for conn in self.pending:
            conn.ack_now = conn.ack_elsewhere = True

    @staticmethod
    def _sent(conn: Connection) -> None:
        conn.ack_pending_records = conn.ack_pending_bytes = 0
        conn.ack_deadline = conn.ack_late_at = None
        conn.ack_now = conn.ack_elsewhere = False

    def take(self, conn: Connection, now: float, riding: bool) -> list[Frame]:
        """The ACK frames to put in a record for ``conn``: those due there, and with
        ``riding`` (the record carries data anyway) the one ``conn`` itself owes."""
        frames: list[Frame] = []
        goes_on = self._goes_on
        for c in list(self.pending):
            if goes_on(c, conn, now) or (riding and c is conn):
                frames.append(Ack(c.id, c.highest_received))
                self._sent(c)
                del self.pending[c]
        return frames

    def pack_due(self, view: memoryview, conn: Connection, now: float) -> int:
        """Write the ACKs due in a record of ``conn`` into ``view``; returns how many bytes."""
        pos = 0
        goes_on = self._goes_on
        for c in list(self.pending):
            if goes_on(c, conn, now):
                pos = write_ack_into(view, pos, c.id, c.highest_received)
                self._sent(c)
                del self.pending[c]
        return pos

    def next_deadline(self) -> float | None:
        """When the earliest delayed ACK becomes due, or may leave on another connection."""
        earliest: float | None = None
        for conn in self.pending:
            for deadline in (conn.ack_deadline, conn.ack_late_at):
                if deadline is not None and (earliest is None or deadline < earliest):
                    earliest = deadline
        return earliest

    def handle_timer(self, now: float) -> None:
        """Delayed ACKs whose delay passed become due, and those still waiting for their
        own connection may leave on another; each deadline is cleared, so it is not
        re-armed while the connection cannot send (design: Timers)."""
        for conn in self.pending:
            deadline = conn.ack_deadline
            if deadline is not None and now >= deadline:
                conn.ack_deadline = None
                conn.ack_now = True
            late = conn.ack_late_at
            if late is not None and now >= late:
                conn.ack_late_at = None
                conn.ack_elsewhere = True

    # -------------------------------------------------- records unacknowledged

    def log_for(self, conn: Connection) -> deque[LogEntry] | None:
        """Where to log the records sent on ``conn`` (``None``: not logged, the stream
        bytes count as acknowledged once sent). After the peer's close_notify on a
        connection no ACK can come: TCP alone delivers what we still send there
        (design: Closing)."""
        return None if conn.tls.close_notify_received else conn.sent_log

    def record_sent(
        self, conn: Connection, seq: int, refs: list[StreamRef], frames: list[Frame] | None
    ) -> None:
        """A record with these stream ranges and retransmittable frames left on ``conn``."""
        if conn.tls.close_notify_received:
            self._acked_now(refs)
            return
        if refs or frames:
            conn.sent_log.append((seq, refs, frames))
            self.unacked_refs += len(refs)
            for ref in refs:
                self.unacked_bytes += ref[2]

    def logged(self, nbytes: int, refs: int) -> None:
        """The caller appended records carrying ``nbytes`` stream bytes in ``refs`` ranges
        to a log of :meth:`log_for` itself (the single-stream data path)."""
        self.unacked_bytes += nbytes
        self.unacked_refs += refs

    @property
    def unacked_cost(self) -> int:
        """What the unacknowledged stream ranges hold: their bytes, and :data:`REF_COST`
        for each range. The cap and the memory estimate use it."""
        return self.unacked_bytes + self.unacked_refs * REF_COST

    def _acked_now(self, refs: list[StreamRef]) -> None:
        streams = self._streams
        for stream_id, offset, length, fin in refs:
            stream = streams.table.get(stream_id)
            if stream is not None:
                streams.acked(stream, offset, length, fin)

    def cap(self) -> int:
        """New stream data waits while this many bytes are unacknowledged (memory bound)."""
        return self.tuning.max_unacked_bytes

    def timed(self, conn: Connection, first: int, last: int, now: float) -> None:
        """Ack-eliciting records ``first`` to ``last`` left on ``conn`` at ``now``: their
        ACK gives an RTT sample, and their wait for it a probe timeout (design: Failure
        detection). After the peer's close_notify no ACK comes: nothing is timed."""
        if not conn.tls.close_notify_received:
            conn.timing.sealed(first, last, now)

    def received(self, conn: Connection | None, ack: Ack, now: float) -> None:
        """The peer sent ``ack`` (``conn``: the connection it acknowledges, if still ours)."""
        if conn is None:
            return  # a connection already removed
        sent = conn.tls.write_protection
        if sent is None or ack.highest_sequence >= sent.sequence:
            raise IllegalParameter(
                f"ACK for record {ack.highest_sequence} of connection {ack.connection_id}, "
                "which was never sent"
            )
        if ack.highest_sequence > conn.peer_acked:
            self.acknowledge(conn, ack.highest_sequence)
            conn.timing.acknowledged(ack.highest_sequence, now)

    def acknowledge(self, conn: Connection, highest: int) -> None:
        """Records up to ``highest`` on ``conn`` arrived: trim the log, release the bytes."""
        if highest <= conn.peer_acked:
            return
        conn.peer_acked = highest
        log = conn.sent_log
        # coalesce contiguous ranges per stream: one acked() call per run
        runs: dict[int, list[int]] = {}
        acked_bytes = acked_refs = 0
        while log and log[0][0] <= highest:
            _, refs, _ = log.popleft()
            acked_refs += len(refs)
            for sid, offset, length, fin in refs:
                acked_bytes += length
                run = runs.get(sid)
                if run is not None and run[1] == offset:
                    run[1] = offset + length
                    run[2] |= fin
                    continue
                if run is not None:
                    self._run_acked(sid, run)
                runs[sid] = [offset, offset + length, fin]
        self.unacked_bytes -= acked_bytes
        self.unacked_refs -= acked_refs
        for sid, run in runs.items():
            self._run_acked(sid, run)

    def _run_acked(self, sid: int, run: list[int]) -> None:
        stream = self._streams.table.get(sid)
        if stream is not None:
            start, end, fin = run
            self._streams.acked(stream, start, end - start, bool(fin))

    def reinject(self, conn: Connection) -> None:
        """``conn`` failed: what it carried unacknowledged goes out again elsewhere, stream
        ranges by offset, control frames at the front of the queue (except what was
        sent again already while the connection was suspect)."""
        log = conn.sent_log
        streams = self._streams
        control: list[Frame] = []
        resent_through = conn.timing.resent_through
        while log:
            seq, refs, frames = log.popleft()
            self.unacked_refs -= len(refs)
            for sid, offset, length, fin in refs:
                self.unacked_bytes -= length
                if seq > resent_through:
                    self.reinjected_bytes += length
                    streams.resend(sid, offset, length, fin)
            if frames and seq > resent_through:
                control.extend(frames)
        conn.timing.forget()
        streams.sort_resends()
        self._control.extendleft(reversed(control))

    def resend_suspect(self, conn: Connection, limit: int) -> int:
        """``conn`` is suspect: send its unacknowledged frames again on the others, the
        oldest first, up to ``limit`` stream bytes more in this episode; the log keeps
        them (an ACK may still come). Returns the stream bytes handed back."""
        timing = conn.timing
        allowed = limit * timing.backoff - timing.resent_bytes
        streams = self._streams
        control: list[Frame] = []
        resent = 0
        for seq, refs, frames in conn.sent_log:
            if seq <= timing.resent_through:
                continue
            if resent >= allowed:
                break
            for sid, offset, length, fin in refs:
                resent += length
                streams.resend(sid, offset, length, fin)
            if frames:
                control.extend(frames)
            timing.resent_through = seq
        if resent:
            streams.sort_resends()
        self._control.extendleft(reversed(control))
        timing.resent_bytes += resent
        self.resent_bytes += resent
        return resent

    def forget(self, conn: Connection) -> None:
        """``conn`` is gone: it owes no ACK."""
        self.pending.pop(conn, None)

    def release(self, connections: list[Connection]) -> None:
        """The session ended: nothing is owed or kept for sending again."""
        self.pending.clear()
        self.unacked_bytes = self.unacked_refs = 0
        for conn in connections:
            conn.sent_log.clear()


class NoAcks(AckTracker):
    """No ACKs and no log: what is sent counts as delivered (benchmarks only)."""

    logs = False

    def eliciting(self, conn: Connection, size: int, now: float) -> None:
        """No ACK is owed: a session without a log (benchmarks only) acknowledges nothing."""
        return

    def log_for(self, conn: Connection) -> deque[LogEntry] | None:
        """Never a log: stream bytes count as acknowledged once sent."""
        return None

    def record_sent(
        self, conn: Connection, seq: int, refs: list[StreamRef], frames: list[Frame] | None
    ) -> None:
        """The record's stream ranges count as acknowledged at once."""
        self._acked_now(refs)

    def timed(self, conn: Connection, first: int, last: int, now: float) -> None:
        """No ACK comes: nothing is timed (and nothing becomes suspect)."""
        return

    def cap(self) -> int:
        """No bound: nothing stays unacknowledged."""
        return 1 << 62
