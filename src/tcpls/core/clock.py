"""Time in a session: when the I/O layer calls next, and what runs then (design: Timers).

Every deadline of a session comes from one owner: the delayed ACKs from
:mod:`tcpls.core.acks`, the Ping probes from :mod:`tcpls.core.liveness`, idleness from
when stream data last moved, and the session-wide timers (handshake, close, rejoin,
buffer trimming) from the :class:`~tcpls.core.timers.TimerSet`. :class:`SessionClock`
takes their minimum and, when called, runs what expired. Every deadline that fires is
cleared or moved by its handler, so a deadline in the past fires once and never re-arms
itself; handlers compare ``now >= deadline``, the very value announced.
"""

from __future__ import annotations

import logging

from tcpls.core.acks import AckTracker
from tcpls.core.links import Links, SessionState
from tcpls.core.liveness import Liveness
from tcpls.core.streamset import StreamSet
from tcpls.core.timers import TRIM_AFTER, Timer, TimerSet
from tcpls.errors import ConnectionClosedError

__all__ = ["SessionClock"]

logger = logging.getLogger(__name__)


class SessionClock:
    """When a session's timers run next, and what they do (see the module docstring)."""

    def __init__(
        self,
        timers: TimerSet,
        links: Links,
        streams: StreamSet,
        acks: AckTracker,
        liveness: Liveness,
    ) -> None:
        self.timers = timers
        self._links = links
        self._streams = streams
        self._acks = acks
        self._liveness = liveness

    def touched(self, now: float) -> None:
        """Bytes moved at ``now``: the record buffers are given back a second later, and
        the handshake deadline starts with the first bytes."""
        timers = self.timers
        timers.set(Timer.TRIM, now + TRIM_AFTER)
        if self._links.state is SessionState.HANDSHAKE and timers.get(Timer.HANDSHAKE) is None:
            timers.set(Timer.HANDSHAKE, now + self._links.tuning.handshake_timeout)

    def _idle_deadline(self) -> float | None:
        """When the session becomes idle: ``idle_timeout`` after stream data last moved,
        either way."""
        links = self._links
        idle = links.tuning.idle_timeout
        if idle is None or links.state is not SessionState.ESTABLISHED:
            return None
        return self.last_moved() + idle

    def last_moved(self) -> float:
        """When stream data last moved, either way (or the session last became active)."""
        links = self._links
        latest = self._streams.last_sent
        if links.last_activity > latest:
            latest = links.last_activity
        for conn in links.connections.values():
            received = conn.last_data
            if received is not None and received > latest:
                latest = received
        return latest

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` must run next (``None``: no timer).

        Every deadline is cleared or moved by :meth:`handle_timer` once it has passed, so
        a deadline in the past fires once and never re-arms itself. The I/O layer asks
        after every pass, so the owners are only asked when they may have a deadline.
        """
        links = self._links
        if links.closed:
            return None  # a closed session runs no timer
        earliest = self.timers.next()
        for deadline in (
            self._idle_deadline(),
            self._acks.next_deadline() if self._acks.pending else None,
            self._liveness.next_deadline(links.connections.values()) if links.tcpls else None,
        ):
            if deadline is not None and (earliest is None or deadline < earliest):
                earliest = deadline
        return earliest

    def handle_timer(self, now: float) -> None:
        """Run the timers that expired (the I/O layer then transmits)."""
        links = self._links
        tuning = links.tuning
        timers = self.timers
        self._acks.handle_timer(now)
        if links.tcpls:
            conns = list(links.connections.values())
            for conn in self._liveness.expired_probes(now, conns):
                # a suspect connection: what it carries unacknowledged goes out again on
                # a healthy one, if there is one (design: Failure detection)
                resent = 0
                if any(c.usable for c in conns):
                    resent = self._acks.resend_suspect(conn, tuning.suspect_resend_bytes)
                if links.qlog is not None:
                    links.qlog.connection_suspect(conn, resent)
                timing = conn.timing
                logger.debug(
                    "connection %d suspect (probe timeout %d, srtt %.1f ms, rttvar %.1f ms, "
                    "silent %.1f ms): %d bytes sent again elsewhere",
                    conn.id,
                    timing.backoff,
                    timing.srtt * 1000,
                    timing.rttvar * 1000,
                    (now - conn.last_receive) * 1000,
                    resent,
                )
            for conn, error in self._liveness.handle_timer(now, conns):
                links.connection_failed(conn, error)
        if timers.expired(Timer.REJOIN, now):
            links.set_closed(
                ConnectionClosedError(
                    f"no connection joined again within {tuning.rejoin_timeout:g} s"
                )
            )
        if timers.expired(Timer.HANDSHAKE, now) and (
            links.state is SessionState.HANDSHAKE
            or (links.state is SessionState.ESTABLISHED and not links.confirmed)
        ):
            links.fail(
                ConnectionClosedError(
                    f"the TLS handshake did not complete within {tuning.handshake_timeout:g} s"
                )
            )
        elif timers.expired(Timer.CLOSE, now) and links.state is SessionState.CLOSING:
            links.fail(
                ConnectionClosedError(
                    f"the peer did not finish closing within {tuning.close_timeout:g} s"
                )
            )
        elif (idle := self._idle_deadline()) is not None and now >= idle:
            logger.info("closing a session idle for %g s", tuning.idle_timeout)
            links.close_error = ConnectionClosedError(
                f"the session was idle for {tuning.idle_timeout:g} s"
            )
            links.close()
        if timers.expired(Timer.TRIM, now):
            timers.cancel(Timer.TRIM)
            for conn in links.connections.values():
                conn.tls.trim()
