"""Round-trip time of each connection, measured on our records, and its suspicion.

Owns, per connection, what failure detection needs to act at the speed of the path
(design: Failure detection):

* when the ack-eliciting records not yet acknowledged were sealed: one mark per batch
  of records sealed at the same instant (the records of one pull, or one record), so
  that keeping them costs O(1) per batch, not per record. The marks are bounded by
  the retransmission log they index (and one heartbeat);
* the RTT estimate: each ACK that covers a newly acknowledged ack-eliciting record
  gives one sample, the time from sealing that record to the ACK. The smoothed RTT
  and its variation follow the exponentially weighted averages of RFC 9002 §5 (gains
  1/8 and 1/4). The ACK frame says nothing of how long the peer held it, so samples
  are not adjusted; the probe timeout adds the peer's largest ACK delay instead;
* the suspect state of the connection (design: Failure detection): when it began,
  how many probe timeouts expired since, and how far its log was sent again.

The samples include the time records wait in our own send queues and in the path's
queues: that is the delay a record sees, and what the probe timeout must outwait.
"""

from __future__ import annotations

from collections import deque

__all__ = ["INITIAL_RTT", "MAX_BACKOFF", "PathTiming"]

#: The RTT assumed before the first sample (the probe timeout is then about 1 s).
INITIAL_RTT = 0.333
#: The smallest variation term of the probe timeout (the clock's granularity, seconds).
GRANULARITY = 0.001
#: Probe timeouts double up to 2 ** this within one suspect episode.
MAX_BACKOFF = 6
#: A sample above this (seconds) is taken as this: a peer that holds its ACKs for
#: minutes slows its own failover, but cannot push the timeouts out of range.
MAX_SAMPLE = 60.0


class PathTiming:
    """The records in flight on one connection, its RTT estimate and its suspicion."""

    __slots__ = (
        "backoff",
        "heartbeat_at",
        "latest_rtt",
        "marks",
        "min_rtt",
        "resent_bytes",
        "resent_through",
        "rttvar",
        "samples",
        "srtt",
        "suspect",
        "suspect_since",
    )

    def __init__(self) -> None:
        #: ``[first sequence, last sequence, time]`` of the ack-eliciting records sealed
        #: at one instant and not all acknowledged yet, oldest first.
        self.marks: deque[list[float]] = deque()
        self.srtt = INITIAL_RTT
        self.rttvar = INITIAL_RTT / 2
        self.min_rtt: float | None = None
        self.latest_rtt: float | None = None
        self.samples = 0
        #: Probe timeouts expired in a row (the next one waits 2 ** backoff longer).
        self.backoff = 0
        #: Whether the connection is suspect: no new data goes on it while another
        #: connection is healthy (design: Failure detection).
        self.suspect = False
        #: When the current suspect episode began (``None``: healthy).
        self.suspect_since: float | None = None
        #: The last record whose frames were sent again on another connection.
        self.resent_through = -1
        #: Stream bytes sent again during the current episode (capped).
        self.resent_bytes = 0
        #: The receiving end of a transfer: when its ACKs may carry a Ping again.
        self.heartbeat_at = 0.0

    # ---------------------------------------------------------------- send times

    def sealed(self, first: int, last: int, now: float) -> None:
        """Ack-eliciting records ``first`` to ``last`` were sealed at ``now``."""
        marks = self.marks
        if marks and marks[-1][2] == now:
            marks[-1][1] = last
        else:
            marks.append([first, last, now])

    @property
    def oldest(self) -> float | None:
        """When the oldest ack-eliciting record not acknowledged was sealed."""
        marks = self.marks
        return marks[0][2] if marks else None

    def acknowledged(self, highest: int, now: float) -> None:
        """The peer acknowledged every record up to ``highest``: one RTT sample if that
        covers an ack-eliciting record not acknowledged before."""
        marks = self.marks
        sent: float | None = None
        while marks and marks[0][1] <= highest:
            sent = marks.popleft()[2]
        if marks and marks[0][0] <= highest:
            sent = marks[0][2]
        if sent is None:
            return
        self._sample(min(max(now - sent, 0.0), MAX_SAMPLE))
        since = self.suspect_since
        if since is None:
            self.backoff = 0
        elif sent >= since:
            # a record sealed once the connection was suspect (its Ping, at least) was
            # acknowledged: the path works again (an old ACK that was merely late is not
            # enough: it may have left just before the path died)
            self.suspect = False
            self.suspect_since = None
            self.backoff = 0

    def forget(self) -> None:
        """No ACK can come any more (close_notify, failure): nothing is in flight."""
        self.marks.clear()

    def _sample(self, rtt: float) -> None:
        self.latest_rtt = rtt
        if self.min_rtt is None or rtt < self.min_rtt:
            self.min_rtt = rtt
        if self.samples == 0:
            self.srtt = rtt
            self.rttvar = rtt / 2
        else:
            self.rttvar += (abs(self.srtt - rtt) - self.rttvar) / 4
            self.srtt += (rtt - self.srtt) / 8
        self.samples += 1

    # ---------------------------------------------------------------- timeouts

    def probe_timeout(self, peer_ack_delay: float, floor: float) -> float:
        """How long the oldest record may wait for its ACK (and the connection stay
        silent) before the connection is suspect, backoff included."""
        base = self.srtt + max(4 * self.rttvar, GRANULARITY) + peer_ack_delay
        return max(base, floor) * (1 << self.backoff)
