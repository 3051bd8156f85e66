"""The session driver: moves bytes between one core session and its TCP connections.

After every input, timer or application call the driver runs :meth:`SessionDriver.process`
(the pump): it handles the core's events, wakes the stream readers and writers that
have something new, and lets every connection whose transport is not paused pull
records from the core. Application writes are batched: one flush is scheduled per
turn of the event loop.

This module owns the I/O state of a session: the connections' transports (socket
options, send-queue tuning, FIN, lingering after the end), the session's timer,
pausing and resuming reads (design: Backpressure), the stream pairs it wakes, and the
futures the public :class:`tcpls.aio.session.Session` waits on. The connection
protocols and the stream pairs reach it through :class:`tcpls.aio.protocol.ConnectionOwner`
and :class:`tcpls.aio.streams.StreamOwner`; joins and rejoins are in
:mod:`tcpls.aio.joins`, the zero-window guard and slow-peer checks in
:mod:`tcpls.aio.liveness`.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from tcpls.aio.info import ConnectionInfo, connection_info
from tcpls.aio.liveness import FlowGuard, check_quiet_paths, check_slow_peers
from tcpls.aio.protocol import ConnectionProtocol
from tcpls.aio.sockets import configure_socket, host_port, set_notsent_lowat
from tcpls.aio.streams import IncomingStreams, StreamReader, StreamSession, StreamWriter
from tcpls.core.events import (
    AddressAdvertised,
    ConnectionAdded,
    ConnectionRemoved,
    PeerClosed,
    SessionClosed,
    SessionEstablished,
    StreamOpened,
    TokenReceived,
)
from tcpls.core.io import TransportAction
from tcpls.core.session import CoreSession
from tcpls.errors import ConnectionClosedError, TCPLSError, raisable

__all__ = ["SessionDriver", "SessionObserver"]

#: The most one connection sends in one go before the others get their turn.
_FLUSH_BUDGET = 256 * 1024
#: Seconds a closed session keeps reading a connection until the peer's FIN.
_LINGER = 5.0
#: The same after an error (the peer may be hostile: it holds the connection less).
_ERROR_LINGER = 1.0
#: Least seconds a join with no spare token waits for the server's first New Tokens.
_FIRST_TOKENS_MIN_WAIT = 0.25


class SessionObserver(Protocol):
    """What a driver tells the server that accepted its session (none on a client)."""

    def session_established(self, core: CoreSession) -> None:
        """The handshake of ``core`` completed: the server runs its handler."""

    def session_closed(self, core: CoreSession) -> None:
        """The session of ``core`` ended: the server forgets it."""


class SessionDriver:
    """The I/O of one session: its connections' transports, its timer and its pump."""

    def __init__(self, core: CoreSession, *, observer: SessionObserver | None = None) -> None:
        #: The sans-I/O session.
        self.core = core
        #: The event loop the session runs in.
        self.loop = asyncio.get_running_loop()
        #: The protocol of each TCP connection of the session, by connection ID.
        self.protocols: dict[int, ConnectionProtocol] = {}
        #: The server that accepted the session, if any.
        self.observer = observer
        #: The application's view of the session (a :class:`tcpls.Session` sets itself
        #: here); the pairs of the peer's streams refer to it. Dropped when the session
        #: ends, with :attr:`rejoin`: nothing ties the driver back to it then
        #: (design: Ownership).
        self.session: StreamSession | None = None
        #: Client: called when no connection carries the session any more (set by
        #: :class:`tcpls.aio.joins.Joins`).
        self.rejoin: Callable[[], None] | None = None
        #: Called with each address the peer advertises (a client following them, see
        #: Joins.follow_advertised).
        self.address_advertised: Callable[[str, int], None] | None = None
        #: Addresses whose connections failed since the last rejoin (tried last).
        self.failed_targets: set[tuple[str, int]] = set()
        #: Stream pairs the peer opened, for ``accept_stream``; ``None`` once none will
        #: come (put back by each taker, so that it wakes every waiter).
        self.incoming = IncomingStreams()  # (no asyncio.Queue: design: Idle memory)
        #: Set when the handshake completed, or when the session ended before.
        self.established: asyncio.Future[None] = self.loop.create_future()
        #: Client: the server's address on the first connection (what advertised
        #: addresses are compared with, design: Addresses).
        self.server_host: str | None = None
        #: Loop times at which the session started and its handshake completed.
        self.started_at = self.loop.time()
        self.established_at: float | None = None
        # Client: joins waiting for a token (design: Tokens); made when one waits.
        self._token_waiters: list[asyncio.Future[None]] | None = None
        #: Set when the session ended.
        self.ended: asyncio.Future[None] = self.loop.create_future()
        self._paused: set[int] = set()
        self._reading_paused = False
        self._flush_scheduled = False
        self._processing = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._readers: dict[int, StreamReader] = {}
        self._writers: dict[int, StreamWriter] = {}
        self._fallback_stream_taken = False
        #: Client: stream 0 carries early data; the first open_stream() returns it.
        self.early_stream = False
        #: Client: new TCP connections use TCP Fast Open (design: TCP Fast Open).
        self.fastopen = False
        self._join_waiters: dict[int, asyncio.Future[TCPLSError | None]] = {}
        self._removal_waiters: list[asyncio.Future[None]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._multipath_buffers = False
        self._guard = FlowGuard(core, self.loop, self.protocols, self._paused)

    # -------------------------------------------------- the connections (ConnectionOwner)

    def attach(self, protocol: ConnectionProtocol) -> None:
        """Use ``protocol``'s transport for its connection (socket options, addresses)."""
        self.protocols[protocol.connection_id] = protocol
        transport = protocol.transport
        assert transport is not None
        sock = transport.get_extra_info("socket")
        if (
            not protocol.configured
            and sock is not None
            and sock.family in (socket.AF_INET, socket.AF_INET6)
        ):
            configure_socket(sock, self.core.tuning.user_timeout)
            protocol.configured = True
        peer = host_port(transport.get_extra_info("peername"))
        self.core.io.connected(
            protocol.connection_id, host_port(transport.get_extra_info("sockname")), peer
        )
        if self.server_host is None and self.core.is_client and peer is not None:
            self.server_host = peer[0]
        self._tune_buffers()

    def detach(self, protocol: ConnectionProtocol) -> None:
        """``protocol``'s transport is gone: stop using it."""
        if self.protocols.get(protocol.connection_id) is protocol:
            del self.protocols[protocol.connection_id]
        self._paused.discard(protocol.connection_id)
        self._tune_buffers()

    def writing_paused(self, connection_id: int) -> None:
        """The connection's transport buffer is full: the pump skips it."""
        self._paused.add(connection_id)

    def writing_resumed(self, connection_id: int) -> None:
        """The connection's transport buffer drained: it pulls records again."""
        self._paused.discard(connection_id)
        # Not at once: the transport calls this from inside its write handler,
        # where closing it would report the connection lost twice.
        self.schedule_flush()

    def _tune_buffers(self) -> None:
        """Short send queues when several connections share the data (aggregation).

        Records handed to a connection are committed to it. With one connection,
        deep queues (1 MiB in the transport, the kernel's autotuned buffer) are
        fastest. With several, bytes queued on a slow path arrive late and the
        receiver must reorder around them, so each connection keeps at most
        ``multipath_write_buffer`` in the transport and ``multipath_notsent_lowat``
        unsent in the kernel (TCP_NOTSENT_LOWAT): every path pulls at its own rate.
        """
        # Once a session used several connections it keeps the short queues: a
        # session that joins and retires connections would otherwise flap.
        if not self._multipath_buffers:
            if len(self.protocols) < 2:
                return
            self._multipath_buffers = True
        tuning = self.core.tuning
        for protocol in self.protocols.values():
            transport = protocol.transport
            if transport is None or transport.is_closing() or protocol.tuned:
                continue
            protocol.tuned = True
            transport.set_write_buffer_limits(high=tuning.multipath_write_buffer)
            set_notsent_lowat(transport.get_extra_info("socket"), tuning.multipath_notsent_lowat)

    # -------------------------------------------------------- the streams (StreamOwner)

    def schedule_flush(self) -> None:
        """Run the pump once at the next turn of the event loop (writes are batched)."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self._flush_scheduled = False
        self.process()

    def data_consumed(self) -> None:
        """The application read bytes: resume reading if the core no longer holds too much."""
        if self._reading_paused and not self.core.reading_paused:
            self._reading_paused = False
            self.core.set_reading_paused(False, self.loop.time())
            for protocol in self.protocols.values():
                if protocol.transport is not None and not protocol.transport.is_closing():
                    protocol.transport.resume_reading()
            self._reschedule_timer()  # liveness probes run again

    def reader_waiting(self, stream_id: int) -> None:
        """A reader is about to wait: make sure reading is not paused for nothing."""
        self.data_consumed()

    def open_stream(self, session: StreamSession) -> tuple[StreamReader, StreamWriter]:
        """A new stream of ours (established sessions); with plain TLS, the one stream."""
        if self.early_stream:
            # the stream the early data went on (design: Early data)
            self.early_stream = False
            self._fallback_stream_taken = True
            return self._pair(0, session)
        if not self.core.tcpls:
            if self._fallback_stream_taken:
                raise TCPLSError("plain TLS fallback carries exactly one stream")
            self._fallback_stream_taken = True
            return self._pair(0, session)
        return self._pair(self.core.open_stream(), session)

    def _pair(self, stream_id: int, session: StreamSession) -> tuple[StreamReader, StreamWriter]:
        reader = StreamReader(self, stream_id)
        writer = StreamWriter(self, session, stream_id, reader)
        self._readers[stream_id] = reader
        self._writers[stream_id] = writer
        return reader, writer

    # ------------------------------------------------------------- the session's life

    async def wait_established(self) -> None:
        """Wait for the handshake; raise its error if it failed."""
        await asyncio.shield(self.established)
        core = self.core
        if core.tcpls is None:  # the session ended before its handshake completed
            raise (
                raisable(core.error)
                if core.error is not None
                else ConnectionClosedError("the session closed during the handshake")
            )

    def info(self, connection_id: int) -> ConnectionInfo:
        """The report on one connection; :class:`ConnectionClosedError` if it is gone."""
        view = self.core.io.connection(connection_id)
        if view is None:
            raise ConnectionClosedError(f"connection {connection_id} is gone")
        protocol = self.protocols.get(connection_id)
        return connection_info(view, protocol.transport if protocol is not None else None)

    def has_working_connection(self) -> bool:
        """Whether a connection carries the session (joins still in their hello do not)."""
        return self.core.io.has_working_connection()

    def background(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` as a task owned by the session (cancelled when it ends)."""
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def expect_join(self, connection_id: int) -> asyncio.Future[TCPLSError | None]:
        """A future for the join of ``connection_id``: ``None`` when the connection was
        added, the error when it was removed first. Call :meth:`forget_join` after."""
        waiter: asyncio.Future[TCPLSError | None] = self.loop.create_future()
        self._join_waiters[connection_id] = waiter
        return waiter

    def first_tokens_window(self) -> float:
        """Client: seconds left during which the server's first New Tokens may still be on
        their way (it sends them once it has our Finished, a round trip after the
        handshake completed here): a join with no spare token waits that long for one
        (design: Tokens). Zero before the handshake completed, and once it is over."""
        if self.established_at is None:
            return 0.0
        handshake = self.established_at - self.started_at
        window = max(_FIRST_TOKENS_MIN_WAIT, 2 * handshake)
        return max(0.0, self.established_at + window - self.loop.time())

    async def wait_token(self, timeout: float) -> None:
        """Client: wait up to ``timeout`` seconds for a New Token (or the session's end)."""
        waiter: asyncio.Future[None] = self.loop.create_future()
        if self._token_waiters is None:
            self._token_waiters = []
        self._token_waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except TimeoutError:
            pass
        finally:
            if self._token_waiters is not None and waiter in self._token_waiters:
                self._token_waiters.remove(waiter)

    def _wake_token_waiters(self) -> None:
        waiters, self._token_waiters = self._token_waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def forget_join(self, connection_id: int) -> None:
        """The join of ``connection_id`` is no longer awaited."""
        self._join_waiters.pop(connection_id, None)

    def next_removal(self) -> asyncio.Future[None]:
        """A future set when a connection is next removed from the session."""
        waiter: asyncio.Future[None] = self.loop.create_future()
        self._removal_waiters.append(waiter)
        return waiter

    # ------------------------------------------------------------------------- the pump

    def process(self) -> None:
        """Act on what the core has now: events, wakeups, records to send (not re-entered)."""
        if self._processing:
            return
        self._processing = True
        try:
            self._process_once()
        finally:
            self._processing = False

    def _process_once(self) -> None:
        core = self.core
        io = core.io
        loop_time = self.loop.time
        guard = self._guard
        readers, writers = self._readers, self._writers
        # with several connections, one pull takes no more than a transport holds: what a
        # connection queues here waits behind it, and a failover waits for the queue
        # (design: Failure detection)
        budget = _FLUSH_BUDGET
        if self._multipath_buffers:
            budget = min(budget, core.tuning.multipath_write_buffer)
        now = loop_time()  # one instant for the whole pump (it never waits)
        for _ in range(64):
            self._handle_events()
            if core.readable or core.writable:  # (empty on most passes)
                readable, writable = io.wakeups()
                for sid in readable:
                    reader = readers.get(sid)
                    if reader is not None:
                        reader.wakeup()
                for sid in writable:
                    writer = writers.get(sid)
                    if writer is not None:
                        writer.wakeup()
                for sid in readable:  # (a stream that ended: its pair goes; design: Idle memory)
                    if sid not in core.streams:
                        readers.pop(sid, None)
                        writers.pop(sid, None)
            wrote = False
            for cid, protocol in list(self.protocols.items()):
                transport = protocol.transport
                if transport is None or transport.is_closing() or cid in self._paused:
                    continue
                # (nothing after our EOF: TCP would refuse it; design: Closing)
                while (
                    not protocol.eof_written
                    and cid not in self._paused
                    and core.wants_transmit(cid, now)
                ):
                    data = core.transmit(cid, now, budget)
                    if not data:
                        break
                    transport.write(data)
                    wrote = True
                action = io.poll_transport(cid)
                if action is TransportAction.WRITE_EOF:
                    if not protocol.eof_written and transport.can_write_eof():
                        protocol.eof_written = True
                        _write_eof(transport)
                elif action is TransportAction.CLOSE:
                    transport.close()
                elif action is TransportAction.RETIRE and not protocol.eof_written:
                    protocol.eof_written = True
                    _write_eof(transport)  # (design: Closing)
            if wrote and guard.timer is None:
                guard.start()
            if not (core.has_events or core.readable or core.writable):
                break
        if core.closed:
            self._finish()
            return
        if core.reading_paused and not self._reading_paused:
            self._reading_paused = True
            core.set_reading_paused(True, loop_time())
            for protocol in self.protocols.values():
                if protocol.transport is not None and not protocol.transport.is_closing():
                    protocol.transport.pause_reading()
        self._reschedule_timer()

    def _reschedule_timer(self) -> None:
        deadline = self.core.next_deadline()
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is not None:
            self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        now = self.loop.time()
        check_slow_peers(self.core, self.protocols, now)
        check_quiet_paths(self.core, self.protocols, now)
        self.core.handle_timer(now)
        self.process()

    def _handle_events(self) -> None:
        core = self.core
        while (event := core.next_event()) is not None:
            if isinstance(event, StreamOpened):
                if self.session is not None:
                    self.incoming.put_nowait(self._pair(event.stream_id, self.session))
            elif isinstance(event, SessionEstablished):
                if not event.tcpls and not core.is_client:
                    self._fallback_stream_taken = True
                    if self.session is not None:
                        self.incoming.put_nowait(self._pair(0, self.session))
                if not self.established.done():
                    self.established.set_result(None)
                    self.established_at = self.loop.time()
                if self.observer is not None:
                    self.observer.session_established(core)
            elif isinstance(event, SessionClosed):
                self._finish()
            elif isinstance(event, ConnectionRemoved):
                self._connection_removed(event)
            elif isinstance(event, AddressAdvertised):
                if self.address_advertised is not None:
                    self.address_advertised(event.host, event.port)
            elif isinstance(event, PeerClosed):
                self.incoming.put_nowait(None)  # the peer opens no more streams
            elif isinstance(event, ConnectionAdded):
                waiter = self._join_waiters.get(event.connection_id)
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
            elif isinstance(event, TokenReceived):
                self._wake_token_waiters()

    def _connection_removed(self, event: ConnectionRemoved) -> None:
        core = self.core
        protocol = self.protocols.get(event.connection_id)
        if protocol is not None and protocol.transport is not None:
            if event.error is None:
                protocol.transport.close()
            else:
                protocol.transport.abort()
        waiter = self._join_waiters.get(event.connection_id)
        if waiter is not None and not waiter.done():
            waiter.set_result(event.error or ConnectionClosedError("the joined connection closed"))
        for removal in self._removal_waiters:
            if not removal.done():
                removal.set_result(None)
        self._removal_waiters.clear()
        if event.error is not None and protocol is not None:
            peer = host_port(protocol.transport and protocol.transport.get_extra_info("peername"))
            if peer is not None:
                self.failed_targets.add(peer)
        rejoin = self.rejoin  # None once the session ended
        if (
            rejoin is not None
            and core.is_client
            and not self.has_working_connection()
            and not core.closed
            and not core.close_requested  # a session we close ends its connections itself
            and not core.peer_closed  # the server ended the session: nothing to rejoin
        ):
            rejoin()

    def _finish(self) -> None:
        core = self.core
        if self.ended.done():
            return
        error = core.error
        if not self.established.done():
            self.established.set_result(None)  # wait_established() raises the error
        for reader in self._readers.values():
            reader.wakeup()
        for writer in self._writers.values():
            writer.wakeup()
        # The application keeps the pairs it holds; the session lets go of them (they
        # refer back to it: a reference cycle would keep the session's memory).
        self._readers.clear()
        self._writers.clear()
        if error is not None:  # streams not accepted yet can no longer be completed
            while not self.incoming.empty():
                self.incoming.get_nowait()
        self.incoming.put_nowait(None)
        for task in list(self._tasks):
            task.cancel()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._guard.cancel()
        for cid, protocol in list(self.protocols.items()):
            transport = protocol.transport
            if transport is None:
                continue
            data = core.transmit(cid, self.loop.time())  # the alert, if any
            if data and not transport.is_closing() and not protocol.eof_written:
                transport.write(data)
            if not protocol.peer_eof and not transport.is_closing():
                # Read on until the peer's FIN: closing with unread bytes would send an
                # RST, which can destroy what the peer has not read yet (our last data,
                # or the alert that says why the session ended). What comes is dropped.
                _write_eof(transport)
                if self._reading_paused:
                    transport.resume_reading()
                linger = _LINGER if error is None else _ERROR_LINGER
                protocol.linger = self.loop.call_later(linger, transport.close)
            else:
                transport.close()
        self.ended.set_result(None)
        self._wake_token_waiters()
        if self.observer is not None:
            self.observer.session_closed(core)
        # the same for the references back to the application's view and the joins
        self.session = None
        self.rejoin = None


def _write_eof(transport: asyncio.Transport) -> None:
    """Send FIN; a peer that already reset the connection makes this a no-op."""
    try:
        if transport.can_write_eof() and not transport.is_closing():
            transport.write_eof()
    except OSError:
        transport.abort()
