"""What the kernel knows about a session's TCP connections, told to the core.

Two checks read ``TCP_INFO`` (Linux) so that TCP's own view of each path informs
the session's failure detection (design: Failure detection):

* :class:`FlowGuard` keeps ``TCP_USER_TIMEOUT`` from aborting a connection whose peer
  merely stopped reading (a zero window; design: Backpressure);
* :func:`check_slow_peers`, before a Ping counts as unanswered, asks TCP whether the
  Ping reached the peer;
* :func:`check_quiet_paths`, before a connection becomes suspect, asks TCP when it last
  heard from the peer: TCP's ACKs that still arrive (during loss recovery, or while the
  peer's application is busy) show a slow path, not a dead one.

This module owns those two checks; the session's driver runs them.
"""

from __future__ import annotations

import asyncio
import logging

from tcpls.aio.protocol import ConnectionProtocol
from tcpls.aio.sockets import set_user_timeout, tcp_info
from tcpls.core.session import CoreSession

__all__ = ["ZERO_WINDOW_TIMEOUT", "FlowGuard", "check_quiet_paths", "check_slow_peers"]

# What the session learns about its connections is the session's to log.
logger = logging.getLogger("tcpls.aio.session")

#: TCP_USER_TIMEOUT while the peer advertises a zero window (see FlowGuard).
ZERO_WINDOW_TIMEOUT = 120.0


class FlowGuard:
    """Keeps TCP_USER_TIMEOUT from killing a connection whose peer is merely slow.

    Linux applies TCP_USER_TIMEOUT to zero-window probes too: a peer that stops
    reading for longer than the timeout (a slow application; design: Backpressure)
    would have its connection aborted like a dead path. While the peer advertises a
    zero window the timeout is relaxed to :data:`ZERO_WINDOW_TIMEOUT`, and restored
    when the window opens. The guard looks every third of the timeout while data is
    in flight or a connection is blocked.
    """

    def __init__(
        self,
        core: CoreSession,
        loop: asyncio.AbstractEventLoop,
        protocols: dict[int, ConnectionProtocol],
        paused: set[int],
    ) -> None:
        self._core = core
        self._loop = loop
        #: The session's connections (the driver's table, shared).
        self._protocols = protocols
        #: The connections whose transport paused writing (the driver's set, shared).
        self._paused = paused
        #: The next look, or ``None`` while the guard is idle.
        self.timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Look again in a third of the user timeout (when there is one)."""
        timeout = self._core.tuning.user_timeout
        if timeout and not self._core.closed:
            self.timer = self._loop.call_later(max(timeout / 3, 0.05), self._check)

    def cancel(self) -> None:
        """Stop looking (the session ended)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _check(self) -> None:
        self.timer = None
        core = self._core
        timeout = core.tuning.user_timeout
        if not timeout or core.closed:
            return
        active = False
        for cid, protocol in self._protocols.items():
            transport = protocol.transport
            if transport is None or transport.is_closing():
                continue
            sock = transport.get_extra_info("socket")
            info = tcp_info(sock)
            blocked = info is not None and info.snd_wnd == 0
            if blocked and not protocol.user_timeout_relaxed:
                set_user_timeout(sock, max(ZERO_WINDOW_TIMEOUT, timeout))
                protocol.user_timeout_relaxed = True
                core.set_flow_blocked(cid, True, self._loop.time())
            elif not blocked and protocol.user_timeout_relaxed:
                set_user_timeout(sock, timeout)
                protocol.user_timeout_relaxed = False
                core.set_flow_blocked(cid, False, self._loop.time())
            if (
                protocol.user_timeout_relaxed
                or cid in self._paused
                or core.io.has_unacknowledged(cid)
            ):
                active = True
        if active:
            self.start()


def check_slow_peers(
    core: CoreSession, protocols: dict[int, ConnectionProtocol], now: float
) -> None:
    """Before a Ping counts as unanswered, ask TCP whether it reached the peer.

    When we have data outstanding and the kernel holds nothing unacknowledged, the
    Ping was delivered with it: the peer is alive and has stopped reading (a slow
    application, its own backpressure), so the connection is not failed. A receiver
    probing for data it waits for gets no such allowance (design: Failure detection).
    """
    for cid in core.io.overdue_pings(now):
        # (a receiver probing for data it waits for is not listed: silence is failure)
        protocol = protocols.get(cid)
        transport = protocol.transport if protocol is not None else None
        info = tcp_info(transport.get_extra_info("socket") if transport else None)
        if info is not None and info.unacked == 0:
            logger.debug("connection %d: the peer is alive but does not read", cid)
            core.set_peer_slow(cid, now)


def check_quiet_paths(
    core: CoreSession, protocols: dict[int, ConnectionProtocol], now: float
) -> None:
    """Before a connection becomes suspect, tell the core when TCP last received a
    segment from the peer on it (``TCP_INFO``; design: Failure detection)."""
    for cid in core.io.probes_due(core.liveness, now):
        protocol = protocols.get(cid)
        transport = protocol.transport if protocol is not None else None
        info = tcp_info(transport.get_extra_info("socket") if transport else None)
        if info is not None and info.last_heard is not None:
            core.set_transport_heard(cid, now - info.last_heard)
