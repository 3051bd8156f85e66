"""The asyncio protocol of one TCP connection, and the server's pending connections.

:class:`ConnectionProtocol` (an ``asyncio.BufferedProtocol``) lets the core's record
reader receive straight into its buffer, then hands the input to the session that
owns the connection, through what :class:`ConnectionOwner` declares (the session's
driver implements it).

On a server an accepted connection belongs to no session until its first
ClientHello says whether it starts one or joins one. Until then it is *pending*: it
reads into a TLS connection of its own, ends if the ClientHello does not come in
time (design: Server limits), and its server (:class:`PendingOwner`) adopts it into
a new session or hands it to the session it joins.

This module owns the per-connection state and the pending phase; it imports
nothing else from :mod:`tcpls.aio`.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from tcpls.core.endpoint import Accepted, HandOff, PendingConnection
from tcpls.core.session import CoreSession
from tcpls.errors import ConnectionClosedError
from tcpls.tls.connection import TLSConnection

__all__ = ["ConnectionOwner", "ConnectionProtocol", "PendingOwner"]

#: The transport's write buffer; the multipath tuning lowers it (design: Backpressure).
_TRANSPORT_HIGH_WATER = 1024 * 1024
#: Where the bytes of a connection no session reads any more go (see get_buffer).
_DISCARD = memoryview(bytearray(64 * 1024))


class ConnectionOwner(Protocol):
    """What a connection's protocol needs from the session it belongs to (its driver)."""

    @property
    def core(self) -> CoreSession:
        """The sans-I/O session that reads and writes the connection's records."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the session runs in (its clock)."""

    def process(self) -> None:
        """Act on what the core has now: events, wakeups, records to send."""

    def attach(self, protocol: ConnectionProtocol) -> None:
        """The protocol's transport is up: the session starts using it."""

    def detach(self, protocol: ConnectionProtocol) -> None:
        """The protocol's transport is gone: the session stops using it."""

    def writing_paused(self, connection_id: int) -> None:
        """The connection's transport buffer is full: stop writing to it."""

    def writing_resumed(self, connection_id: int) -> None:
        """The connection's transport buffer drained: it may take records again."""


class PendingOwner(Protocol):
    """What a pending connection (server side) needs from its server."""

    def pending_ended(self, protocol: ConnectionProtocol) -> None:
        """The connection no longer waits for its ClientHello (adopted, routed or ended)."""

    def adopt(self, protocol: ConnectionProtocol, core: CoreSession) -> ConnectionOwner:
        """The ClientHello started the handshake of ``core``: give it its session."""

    def joined(
        self,
        protocol: ConnectionProtocol,
        core: CoreSession,
        connection_id: int,
        tls: TLSConnection,
    ) -> None:
        """The ClientHello joined ``core`` as connection ``connection_id``: attach the
        connection to that session (or close it, with what ``tls`` has to send, if the
        session is gone)."""

    def hand_off(self, protocol: ConnectionProtocol, outcome: HandOff) -> None:
        """The ClientHello is a join for another worker's session: pass the connection
        on (design: Join handoff)."""


class ConnectionProtocol(asyncio.BufferedProtocol):
    """Feeds one TCP connection's bytes to its session, without copying."""

    def __init__(
        self,
        owner: ConnectionOwner | None,
        connection_id: int = 0,
        *,
        pending: PendingConnection | None = None,
        server: PendingOwner | None = None,
        received: bytes = b"",
    ) -> None:
        #: The session the connection belongs to (``None`` while pending).
        self.owner = owner
        #: The connection's ID in its session.
        self.connection_id = connection_id
        #: Server side: the accepted connection before its first ClientHello was read.
        self.pending = pending
        self._server = server
        #: The transport, once connected.
        self.transport: asyncio.Transport | None = None
        #: Whether we sent our FIN.
        self.eof_written = False
        #: Whether the peer's FIN came.
        self.peer_eof = False
        #: Whether the socket options were set (a join's socket moves between sessions).
        self.configured = False
        #: Whether the multipath send queues were applied (see the driver's buffer tuning).
        self.tuned = False
        #: Whether TCP_USER_TIMEOUT is relaxed for a zero window (see liveness.FlowGuard).
        self.user_timeout_relaxed = False
        #: Set when the transport is up, or failed with the error that ended it.
        self.connected: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        #: Server side: ends a connection whose ClientHello does not come in time.
        self._hello_timer: asyncio.TimerHandle | None = None
        #: Closes the transport if the peer's FIN does not come after ours.
        self.linger: asyncio.TimerHandle | None = None
        self._discarding = False
        self._dropped = False
        # Server side: bytes another worker read from this connection before passing it
        # here (design: Join handoff); read first, as if they had just arrived.
        self._received = received

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Start feeding the owner, or (pending) start the ClientHello timer."""
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self._dropped:  # cut to make room before asyncio attached it
            transport.abort()
            return
        transport.set_write_buffer_limits(high=_TRANSPORT_HIGH_WATER)
        if self.owner is not None:
            self.owner.attach(self)
        elif self.pending is not None:
            # a peer that never completes its ClientHello does not keep the connection
            timeout = self.pending.hello_timeout
            self._hello_timer = asyncio.get_running_loop().call_later(
                timeout, self._pending_timeout
            )
        if not self.connected.done():
            self.connected.set_result(None)
        if self._received:
            self._replay()

    def _replay(self) -> None:
        data, self._received = memoryview(self._received), b""
        while data and (self.pending is not None or self.owner is not None):
            buffer = self.get_buffer(len(data))
            n = min(len(buffer), len(data))
            buffer[:n] = data[:n]
            data = data[n:]
            self.buffer_updated(n)

    def _pending_timeout(self) -> None:
        self._hello_timer = None
        if self.pending is not None and self.transport is not None:
            self._pending_done()
            self.transport.abort()

    def drop(self) -> None:
        """Server: give up on this connection, which still waits for its ClientHello
        (its transport is reset, now or as soon as it is attached)."""
        self._pending_done()
        self._dropped = True
        if self.transport is not None:
            self.transport.abort()

    def _pending_done(self) -> None:
        """The connection stopped waiting for its ClientHello (adopted, routed or ended)."""
        self.pending = None
        if self._hello_timer is not None:
            self._hello_timer.cancel()
            self._hello_timer = None
        if self._server is not None:
            self._server.pending_ended(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        """Where the next bytes go: the core's record buffer for this connection."""
        owner = self.owner
        if owner is None and self.pending is not None:
            return self.pending.get_buffer()
        core = owner.core if owner is not None else None
        if core is None or core.closed or self.connection_id not in core.connections:
            # the session ended or let go of this connection: what comes is dropped
            # (read only to see the peer's FIN, so that closing sends no RST)
            self._discarding = True
            return _DISCARD
        self._discarding = False
        return core.get_buffer(self.connection_id)

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` arrived in the buffer: the core reads them, the session acts."""
        owner = self.owner
        if owner is None:
            if self.pending is not None:
                self._pending_input(nbytes)
            return
        if self._discarding:
            return
        owner.core.buffer_updated(self.connection_id, nbytes, owner.loop.time())
        owner.process()

    def _pending_input(self, nbytes: int) -> None:
        """Bytes of a connection that does not belong to a session yet (server side):
        the core's accept path says what it became."""
        pending = self.pending
        server = self._server
        assert pending is not None and server is not None
        outcome = pending.buffer_updated(nbytes, asyncio.get_running_loop().time())
        if outcome is None:
            return  # the ClientHello is not complete yet
        self._pending_done()
        if isinstance(outcome, Accepted):
            if outcome.connection_id == 0:  # the ClientHello started a handshake
                server.adopt(self, outcome.session).process()
            else:
                server.joined(self, outcome.session, outcome.connection_id, pending.tls)
            return
        if isinstance(outcome, HandOff):
            server.hand_off(self, outcome)
            return
        # refused (not TLS, a bad hello, an invalid token): the alert, then close
        if self.transport is not None:
            data = pending.tls.data_to_send()
            if data:
                self.transport.write(data)
            self.transport.close()

    def eof_received(self) -> bool:
        """The peer's FIN: the core learns it; our direction stays open until our
        close_notify (TLS half-close)."""
        self.peer_eof = True
        owner = self.owner
        if owner is None or owner.core.closed:
            return False
        core = owner.core
        core.receive_eof(self.connection_id, owner.loop.time())
        owner.process()
        return core.io.keeps_writing(self.connection_id)

    def connection_lost(self, exc: Exception | None) -> None:
        """The transport closed: the session stops using it and the core learns why."""
        if not self.connected.done():
            self.connected.set_exception(exc or ConnectionClosedError("connection lost"))
            self.connected.exception()  # retrieved: whoever waits gets its own error
        if self.pending is not None:
            self._pending_done()
        if self.linger is not None:
            self.linger.cancel()
            self.linger = None
        owner = self.owner
        if owner is None:
            return
        owner.detach(self)
        error = None
        if exc is not None:
            error = ConnectionClosedError(f"connection {self.connection_id} lost: {exc}")
        owner.core.connection_lost(self.connection_id, error, owner.loop.time())
        owner.process()

    def pause_writing(self) -> None:
        """The transport's buffer is full: the session stops writing to it."""
        if self.owner is not None:
            self.owner.writing_paused(self.connection_id)

    def resume_writing(self) -> None:
        """The transport's buffer drained: the session writes to it again."""
        if self.owner is not None:
            self.owner.writing_resumed(self.connection_id)
