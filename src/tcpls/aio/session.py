"""The asyncio session: one :class:`tcpls.core.session.Session` and its TCP connections.

I/O lives here only. Each TCP connection has a :class:`ConnectionProtocol`
(an ``asyncio.BufferedProtocol``) that lets the core's record reader receive
straight into its buffer. After every input, timer or application call the
session runs :meth:`Session._process`: it handles core events, wakes the
stream readers and writers that have something new, and lets every connection
whose transport is not paused pull records (the pull model of ARCHITECTURE).
Application writes are batched: a flush is scheduled once per event-loop turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from tcpls.aio.sockets import configure_socket, set_notsent_lowat, set_user_timeout, tcp_info
from tcpls.aio.streams import StreamReader, StreamWriter
from tcpls.core.connection import ConnectionStatus
from tcpls.core.endpoint import PendingConnection
from tcpls.core.events import (
    ConnectionAdded,
    ConnectionRemoved,
    HandshakeDone,
    PeerClosed,
    SessionClosed,
    StreamOpened,
)
from tcpls.core.session import Session as CoreSession
from tcpls.errors import ConnectionClosedError, TCPLSError, raisable
from tcpls.tls.events import ConnectionFailed, JoinRequested

__all__ = ["ConnectionInfo", "ConnectionProtocol", "Session"]

logger = logging.getLogger(__name__)

_TRANSPORT_HIGH_WATER = 1024 * 1024
_FLUSH_BUDGET = 256 * 1024
_DISCARD = memoryview(bytearray(64 * 1024))
#: Seconds a closed session keeps reading a connection until the peer's FIN.
_LINGER = 5.0
#: The same after an error (the peer may be hostile: it holds the connection less).
_ERROR_LINGER = 1.0
#: TCP_USER_TIMEOUT while the peer advertises a zero window (see Session._flow_guard).
ZERO_WINDOW_TIMEOUT = 120.0


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """One TCP connection of a session, as reported by ``session.connections``."""

    #: Connection ID (0 for the connection that ran the handshake; design: Record nonce).
    id: int
    #: ``(host, port)`` of our end.
    local_address: tuple[str, int] | None
    #: ``(host, port)`` of the peer's end.
    remote_address: tuple[str, int] | None
    #: Status in the session: ``active``, ``draining``, ``closing``...
    status: str
    bytes_sent: int
    bytes_received: int
    records_sent: int
    records_received: int
    #: Smoothed RTT from ``TCP_INFO``, seconds (``None`` where unavailable).
    rtt: float | None
    #: Congestion window from ``TCP_INFO``, segments.
    cwnd: int | None
    #: Records sent on this connection and not yet acknowledged by the peer.
    unacknowledged: int


class ConnectionProtocol(asyncio.BufferedProtocol):
    """Feeds one TCP connection's bytes to its session, without copying."""

    def __init__(
        self,
        session: Session | None,
        connection_id: int = 0,
        *,
        pending: PendingConnection | None = None,
        server: Any = None,
    ) -> None:
        self.session = session
        self.connection_id = connection_id
        #: Server side: the accepted connection before its first ClientHello was read.
        self.pending = pending
        self._server = server
        self.transport: asyncio.Transport | None = None
        self.eof_written = False
        self.peer_eof = False
        self.configured = False  # socket options set (a join's socket moves between sessions)
        self.tuned = False  # multipath send queues applied (Session._tune_buffers)
        self.user_timeout_relaxed = False
        self.connected: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        #: Server side: ends a connection whose ClientHello does not come in time.
        self._hello_timer: asyncio.TimerHandle | None = None
        #: Closes the transport if the peer's FIN does not come after ours.
        self.linger: asyncio.TimerHandle | None = None
        self._discarding = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=_TRANSPORT_HIGH_WATER)
        if self.session is not None:
            self.session._attach(self)
        elif self.pending is not None:
            # a peer that never completes its ClientHello does not keep the connection
            timeout = self.pending.hello_timeout
            self._hello_timer = asyncio.get_running_loop().call_later(
                timeout, self._pending_timeout
            )
        if not self.connected.done():
            self.connected.set_result(None)

    def _pending_timeout(self) -> None:
        self._hello_timer = None
        if self.pending is not None and self.transport is not None:
            self._pending_done()
            self.transport.abort()

    def _pending_done(self) -> None:
        """The connection stopped waiting for its ClientHello (adopted, routed or ended)."""
        self.pending = None
        if self._hello_timer is not None:
            self._hello_timer.cancel()
            self._hello_timer = None
        if self._server is not None:
            self._server._pending_ended(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        session = self.session
        if session is None and self.pending is not None:
            return self.pending.tls.get_buffer()
        core = session._core if session is not None else None
        if core is None or core.closed or self.connection_id not in core.connections:
            # the session ended or let go of this connection: what comes is dropped
            # (read only to see the peer's FIN, so that closing sends no RST)
            self._discarding = True
            return _DISCARD
        self._discarding = False
        return core.get_buffer(self.connection_id)

    def buffer_updated(self, nbytes: int) -> None:
        session = self.session
        if session is None:
            if self.pending is not None:
                self._pending_input(nbytes)
            return
        if self._discarding:
            return
        session._core.buffer_updated(self.connection_id, nbytes, session._loop.time())
        session._process()

    def _pending_input(self, nbytes: int) -> None:
        """Bytes of a connection that does not belong to a session yet (server side)."""
        pending = self.pending
        assert pending is not None
        tls = pending.tls
        tls.buffer_updated(nbytes)
        if pending.session is not None:  # the ClientHello started a handshake
            self._pending_done()
            session = self._server._adopt(self, pending.session)
            session._core.poll_connection(0, session._loop.time())
            session._process()
            return
        while (event := tls.next_event()) is not None:
            if isinstance(event, JoinRequested):
                self._pending_done()
                self._server._route_join(self, tls, event.token)
                return
            if isinstance(event, ConnectionFailed):  # not TLS: the alert, then close
                self._pending_done()
                if self.transport is not None:
                    data = tls.data_to_send()
                    if data:
                        self.transport.write(data)
                    self.transport.close()
                return

    def eof_received(self) -> bool:
        self.peer_eof = True
        session = self.session
        if session is None or session._core.closed:
            return False
        session._core.receive_eof(self.connection_id, session._loop.time())
        session._process()
        # keep our direction open until we sent close_notify (TLS half-close)
        conn = session._core.connections.get(self.connection_id)
        return conn is not None and not conn.tls.close_notify_sent

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.connected.done():
            self.connected.set_exception(exc or ConnectionClosedError("connection lost"))
            self.connected.exception()  # retrieved: whoever waits gets its own error
        if self.pending is not None:
            self._pending_done()
        if self.linger is not None:
            self.linger.cancel()
            self.linger = None
        session = self.session
        if session is None:
            return
        session._detach(self)
        error = None
        if exc is not None:
            error = ConnectionClosedError(f"connection {self.connection_id} lost: {exc}")
        session._core.connection_lost(self.connection_id, error, session._loop.time())
        session._process()

    def pause_writing(self) -> None:
        if self.session is not None:
            self.session._paused.add(self.connection_id)

    def resume_writing(self) -> None:
        if self.session is not None:
            self.session._paused.discard(self.connection_id)
            # Not at once: the transport calls this from inside its write handler,
            # where closing it would report the connection lost twice.
            self.session._schedule_flush()


class Session:
    """A TCPLS session (or a plain TLS one after fallback) in asyncio.

    Get one from :func:`tcpls.connect` or in the handler of :func:`tcpls.serve`.
    Streams are ``(StreamReader, StreamWriter)`` pairs: open them with
    :meth:`open_stream`, take the peer's with :meth:`accept_stream` or
    ``async for reader, writer in session``.
    """

    def __init__(self, core: CoreSession, *, server: Any = None) -> None:
        self._core = core
        self._loop = asyncio.get_running_loop()
        self._server = server
        self._protocols: dict[int, ConnectionProtocol] = {}
        self._paused: set[int] = set()
        self._reading_paused = False
        self._flush_scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._readers: dict[int, StreamReader] = {}
        self._writers: dict[int, StreamWriter] = {}
        self._incoming: asyncio.Queue[tuple[StreamReader, StreamWriter] | None] = asyncio.Queue()
        self._established: asyncio.Future[None] = self._loop.create_future()
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self._fallback_stream_taken = False
        self._processing = False
        self._guard: asyncio.TimerHandle | None = None
        self._join_waiters: dict[int, asyncio.Future[TCPLSError | None]] = {}
        self._removal_waiters: list[asyncio.Future[None]] = []
        #: Where this client connected or joined, for rejoining (break-before-make).
        self._join_targets: list[tuple[str, int, tuple[str, int] | None]] = []
        self._rejoin_task: asyncio.Task[None] | None = None
        #: Addresses whose connections failed since the last rejoin (tried last).
        self._failed_targets: set[tuple[str, int]] = set()
        #: Addresses a join is under way to (a rejoin does not try them again meanwhile).
        self._joining: set[tuple[str, int]] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._multipath_buffers = False
        if core.is_client:
            core.rejoin = core.tuning.rejoin_timeout > 0

    # ------------------------------------------------------------ public API

    @property
    def tcpls_negotiated(self) -> bool:
        """Whether TCPLS is in use; false means plain TLS 1.3 fallback (design: Fallback)."""
        return bool(self._core.tcpls)

    @property
    def is_client(self) -> bool:
        """Whether this end opened the session."""
        return self._core.is_client

    @property
    def cipher_suite(self) -> str | None:
        """The negotiated TLS 1.3 cipher suite, e.g. ``TLS_AES_128_GCM_SHA256``."""
        conn = self._core.connections.get(0) or next(iter(self._core.connections.values()), None)
        suite = conn.tls.cipher_suite if conn is not None else None
        return f"TLS_{suite.name}" if suite is not None else None

    @property
    def session_resumed(self) -> bool:
        """Whether the handshake resumed an earlier session (PSK)."""
        conn = self._core.connections.get(0)
        engine = conn.tls.engine if conn is not None else None
        return bool(engine and engine.session_resumed)

    @property
    def session_ticket(self) -> Any:
        """Client: the latest ticket for resuming this session later, if the server sent one."""
        tickets = self._core.session_tickets
        return tickets[-1] if tickets else None

    def export_keying_material(
        self, label: bytes, context: bytes = b"", length: int = 32
    ) -> bytes:
        """TLS-Exporter of RFC 8446 §7.5: keying material bound to this session."""
        engine = self._core.handshake_engine
        if engine is None:
            raise TCPLSError("the exporter is available once the handshake completed")
        return engine.export_keying_material(label, context, length)

    @property
    def connections(self) -> list[ConnectionInfo]:
        """The TCP connections of the session, with counters and ``TCP_INFO``."""
        return [self._info(cid) for cid in self._core.connections]

    @property
    def peer_addresses(self) -> dict[int, tuple[str, int]]:
        """Addresses the peer advertised with New Address, by address ID (design: Addresses)."""
        return dict(self._core.peer_addresses)

    @property
    def closed(self) -> bool:
        """Whether the session ended."""
        return self._core.closed

    @property
    def error(self) -> TCPLSError | None:
        """The error that ended the session, if any."""
        return self._core.error

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """``tcpls``, ``cipher_suite``, ``peername``, ``sockname``, ``session_resumed``."""
        if name == "tcpls":
            return self.tcpls_negotiated
        if name == "cipher_suite":
            return self.cipher_suite
        if name == "session_resumed":
            return self.session_resumed
        if name in ("peername", "sockname", "socket"):
            for protocol in self._protocols.values():
                if protocol.transport is not None:
                    return protocol.transport.get_extra_info(name, default)
        return default

    async def open_stream(self) -> tuple[StreamReader, StreamWriter]:
        """Open a new stream. In plain TLS fallback, the one stream of the session."""
        await self.wait_established()
        if not self._core.tcpls:
            if self._fallback_stream_taken:
                raise TCPLSError("plain TLS fallback carries exactly one stream")
            self._fallback_stream_taken = True
            return self._pair(0)
        return self._pair(self._core.open_stream())

    async def accept_stream(self) -> tuple[StreamReader, StreamWriter]:
        """The next stream the peer opened; :class:`ConnectionClosedError` when none will come."""
        item = await self._incoming.get()
        if item is None:
            self._incoming.put_nowait(None)  # keep waking other waiters
            raise ConnectionClosedError("the session is closed")
        return item

    def __aiter__(self) -> AsyncIterator[tuple[StreamReader, StreamWriter]]:
        return self._iterate_streams()

    async def _iterate_streams(self) -> AsyncIterator[tuple[StreamReader, StreamWriter]]:
        while True:
            try:
                yield await self.accept_stream()
            except ConnectionClosedError:
                return

    # ------------------------------------------------------------- multipath

    @property
    def scheduler(self) -> str:
        """``aggregate``, ``pinned`` or ``backup`` (see :mod:`tcpls.core.scheduler`); settable."""
        return self._core.scheduler.name

    @scheduler.setter
    def scheduler(self, name: str) -> None:
        from tcpls.core.scheduler import SCHEDULERS

        if name not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {name!r} (choose from {', '.join(SCHEDULERS)})")
        self._core.scheduler.name = name
        for stream in self._core.streams.values():
            stream.pin = None if name != "pinned" else stream.pin
        self._schedule_flush()

    @property
    def spare_tokens(self) -> int:
        """Client: join tokens available for more connections."""
        return len(self._core.tokens)

    async def join(
        self,
        host: str,
        port: int,
        local_addr: tuple[str, int] | None = None,
        *,
        timeout: float | None = None,
        sock: socket.socket | None = None,
    ) -> ConnectionInfo:
        """Client: add a TCP connection to ``host:port`` to the session (draft-04 §4.2.1).

        Uses a spare token (no new key exchange) and returns the new connection's
        info. Raises ``OSError`` if the TCP connection fails (the token is kept),
        :class:`tcpls.errors.PeerAlert` if the server rejects the token, and
        :class:`TCPLSError` when no token is left.
        """
        if not self._core.is_client:
            raise TCPLSError("only the client adds connections (draft-04 §4.2)")
        await self.wait_established()
        if not self._core.tcpls:
            raise TCPLSError("joins need TCPLS; this session fell back to plain TLS")
        if self._withdrawn(host, port):
            raise TCPLSError(f"the server withdrew {host}:{port}; no new connection may go there")
        timeout = timeout if timeout is not None else self._core.tuning.handshake_timeout
        tls, cid = self._core.start_join()
        protocol = ConnectionProtocol(self, cid)
        waiter: asyncio.Future[TCPLSError | None] = self._loop.create_future()
        self._join_waiters[cid] = waiter
        if (host, port, local_addr) not in self._join_targets:
            # kept even if this attempt fails: the address may work again for a rejoin
            self._join_targets.append((host, port, local_addr))
        self._joining.add((host, port))
        try:
            try:
                async with asyncio.timeout(timeout):
                    if sock is not None:
                        await self._loop.create_connection(lambda: protocol, sock=sock)
                    else:
                        await self._loop.create_connection(
                            lambda: protocol, host, port, local_addr=local_addr
                        )
            except (OSError, TimeoutError) as exc:
                self._core.abandon_join(cid, ConnectionClosedError(str(exc)))
                self._process()
                if isinstance(exc, TimeoutError):
                    raise TimeoutError(f"timed out connecting to {host}:{port}") from None
                raise
            tls.start()
            self._process()
            try:
                async with asyncio.timeout(timeout):
                    error = await waiter
            except TimeoutError:
                self._core.fail_connection(
                    cid, ConnectionClosedError("the join timed out"), self._loop.time()
                )
                self._process()
                raise TimeoutError(f"joining {host}:{port} timed out") from None
        finally:
            self._join_waiters.pop(cid, None)
            self._joining.discard((host, port))
        if error is not None:
            raise _about_join(error, host, port)
        return self._info(cid)

    async def migrate(
        self,
        host: str,
        port: int,
        local_addr: tuple[str, int] | None = None,
        *,
        timeout: float | None = None,
    ) -> ConnectionInfo:
        """Client: move the session to a new connection to ``host:port``.

        Joins the new connection, then retires every other one (design: Closing; no new data
        on them, FIN once their records are acknowledged). No byte is lost or
        duplicated for the application. Returns the new connection's info.
        """
        info = await self.join(host, port, local_addr, timeout=timeout)
        for cid in list(self._core.connections):
            if cid != info.id:
                self._core.remove_connection(cid)
        self._schedule_flush()
        await self._wait_removed([c for c in self._core.connections if c != info.id], timeout)
        return info

    async def retire(self, connection_id: int, *, timeout: float | None = None) -> None:
        """Remove one connection gracefully (design: Closing) and wait until it is gone."""
        if connection_id not in self._core.connections:
            raise ValueError(f"no connection {connection_id} in this session")
        if len(self._core.connections) < 2:
            raise TCPLSError("cannot retire the last connection; close the session instead")
        self._core.remove_connection(connection_id)
        self._schedule_flush()
        await self._wait_removed([connection_id], timeout)

    async def _wait_removed(self, ids: list[int], timeout: float | None) -> None:
        limit = timeout if timeout is not None else max(10.0, self._core.tuning.rejoin_timeout)
        deadline = self._loop.time() + limit
        while any(cid in self._core.connections for cid in ids) and not self._core.closed:
            if self._loop.time() > deadline:
                raise TimeoutError("connections were not retired in time")
            waiter = self._loop.create_future()
            self._removal_waiters.append(waiter)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await waiter

    def _background(self, coro: Any) -> None:
        """Run ``coro`` as a task owned by the session (cancelled when it ends)."""
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _info(self, cid: int) -> ConnectionInfo:
        conn = self._core.connections.get(cid)
        if conn is None:
            raise ConnectionClosedError(f"connection {cid} is gone")
        protocol = self._protocols.get(cid)
        sock = None
        local = remote = None
        if protocol is not None and protocol.transport is not None:
            sock = protocol.transport.get_extra_info("socket")
            local = _address(protocol.transport.get_extra_info("sockname"))
            remote = _address(protocol.transport.get_extra_info("peername"))
        info = tcp_info(sock)
        return ConnectionInfo(
            id=conn.id,
            local_address=local or conn.local_address,
            remote_address=remote or conn.remote_address,
            status=conn.status.value,
            bytes_sent=conn.bytes_sent,
            bytes_received=conn.bytes_received,
            records_sent=conn.records_sent,
            records_received=conn.records_received,
            rtt=info.rtt if info else None,
            cwnd=info.cwnd if info else None,
            unacknowledged=len(conn.sent_log),
        )

    async def wait_established(self) -> None:
        """Wait for the handshake; raise its error if it failed."""
        await asyncio.shield(self._established)
        core = self._core
        if core.tcpls is None:  # the session ended before its handshake completed
            raise (
                raisable(core.error)
                if core.error is not None
                else ConnectionClosedError("the session closed during the handshake")
            )

    def close(self) -> None:
        """Start a graceful close: flush, wait for ACKs, ``close_notify``, FIN.

        See *Closing* in the design notes (design: Closing).
        """
        self._core.close(self._loop.time())
        self._process()

    def abort(self) -> None:
        """Close at once, dropping unsent data."""
        self._core.abort()
        self._process()

    async def wait_closed(self) -> None:
        """Wait until the session ended (both sides closed, or an error)."""
        await asyncio.shield(self._closed)

    async def aclose(self, timeout: float = 10.0) -> None:
        """Close gracefully and wait; abort if the peer does not finish within ``timeout``."""
        self.close()
        try:
            await asyncio.wait_for(self.wait_closed(), timeout)
        except TimeoutError:
            self.abort()
            await self.wait_closed()

    async def __aenter__(self) -> Session:
        await self.wait_established()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if exc_info[0] is not None:
            self.abort()
        await self.aclose()

    def __repr__(self) -> str:
        mode = {None: "handshake", True: "tcpls", False: "tls"}[self._core.tcpls]
        state = self._core.state.value
        return f"<tcpls.Session {mode} {state} connections={len(self._core.connections)}>"

    # ------------------------------------------------------------ internals

    def _pair(self, stream_id: int) -> tuple[StreamReader, StreamWriter]:
        reader = StreamReader(self, stream_id)
        writer = StreamWriter(self, stream_id, reader)
        self._readers[stream_id] = reader
        self._writers[stream_id] = writer
        return reader, writer

    def _attach(self, protocol: ConnectionProtocol) -> None:
        self._protocols[protocol.connection_id] = protocol
        transport = protocol.transport
        assert transport is not None
        sock = transport.get_extra_info("socket")
        if (
            not protocol.configured
            and sock is not None
            and sock.family in (socket.AF_INET, socket.AF_INET6)
        ):
            configure_socket(sock, self._user_timeout())
            protocol.configured = True
        conn = self._core.connections.get(protocol.connection_id)
        if conn is not None:
            conn.local_address = _address(transport.get_extra_info("sockname"))
            conn.remote_address = _address(transport.get_extra_info("peername"))
        self._tune_buffers()

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
            if len(self._protocols) < 2:
                return
            self._multipath_buffers = True
        for protocol in self._protocols.values():
            self._tune_transport(protocol)

    def _tune_transport(self, protocol: ConnectionProtocol) -> None:
        transport = protocol.transport
        if transport is None or transport.is_closing() or protocol.tuned:
            return
        protocol.tuned = True
        tuning = self._core.tuning
        transport.set_write_buffer_limits(high=tuning.multipath_write_buffer)
        set_notsent_lowat(transport.get_extra_info("socket"), tuning.multipath_notsent_lowat)

    def _user_timeout(self) -> float | None:
        return self._core.tuning.user_timeout

    def _detach(self, protocol: ConnectionProtocol) -> None:
        if self._protocols.get(protocol.connection_id) is protocol:
            del self._protocols[protocol.connection_id]
        self._paused.discard(protocol.connection_id)
        self._tune_buffers()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self._flush_scheduled = False
        self._process()

    def _data_consumed(self) -> None:
        if self._reading_paused and not self._core.reading_paused:
            self._reading_paused = False
            self._core.set_reading_paused(False, self._loop.time())
            for protocol in self._protocols.values():
                if protocol.transport is not None and not protocol.transport.is_closing():
                    protocol.transport.resume_reading()
            self._reschedule_timer()  # liveness probes run again

    def _reader_waiting(self, stream_id: int) -> None:
        """A reader is about to wait: make sure reading is not paused for nothing."""
        self._data_consumed()

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        now = self._loop.time()
        self._check_slow_peers(now)
        self._core.handle_timer(now)
        self._process()

    def _check_slow_peers(self, now: float) -> None:
        """Before a Ping counts as unanswered, ask TCP whether it reached the peer.

        When we have data outstanding and the kernel holds nothing unacknowledged, the
        Ping was delivered with it: the peer is alive and has stopped reading (a slow
        application, its own backpressure), so the connection is not failed. A receiver
        probing for data it waits for gets no such allowance (design: Failure detection).
        """
        timeout = self._core.tuning.ping_timeout
        for cid, conn in self._core.connections.items():
            sent = conn.ping_sent_at
            if sent is None or now < sent + timeout:
                continue
            protocol = self._protocols.get(cid)
            transport = protocol.transport if protocol is not None else None
            if not conn.sent_log:
                continue  # a receiver probing for data it waits for: silence is failure
            info = tcp_info(transport.get_extra_info("socket") if transport else None)
            if info is not None and info.unacked == 0:
                logger.debug("connection %d: the peer is alive but does not read", cid)
                self._core.set_peer_slow(cid, now)

    def _process(self) -> None:
        if self._processing:
            return
        self._processing = True
        try:
            self._process_once()
        finally:
            self._processing = False

    def _process_once(self) -> None:
        core = self._core
        loop_time = self._loop.time
        for _ in range(64):
            self._handle_events()
            if core.readable:
                readers = self._readers
                for sid in core.readable:
                    reader = readers.get(sid)
                    if reader is not None:
                        reader._wakeup()
                core.readable.clear()
            if core.writable:
                writers = self._writers
                for sid in core.writable:
                    writer = writers.get(sid)
                    if writer is not None:
                        writer._wakeup()
                core.writable.clear()
            wrote = False
            for cid, protocol in list(self._protocols.items()):
                transport = protocol.transport
                if transport is None or transport.is_closing() or cid in self._paused:
                    continue
                while cid not in self._paused and core.wants_transmit(cid):
                    data = core.transmit(cid, loop_time(), _FLUSH_BUDGET)
                    if not data:
                        break
                    transport.write(data)
                    wrote = True
                conn = core.connections.get(cid)
                if (
                    conn is not None
                    and conn.tls.close_notify_sent
                    and not protocol.eof_written
                    and transport.can_write_eof()
                ):
                    protocol.eof_written = True
                    _write_eof(transport)
                if core.closed:
                    continue  # _finish() ends every connection, after the last alert
                if conn is None or conn.status is ConnectionStatus.FAILED:
                    transport.close()
                elif core.connection_drained(cid):
                    _write_eof(transport)
                    core.finish_removal(cid)
            if wrote and self._guard is None:
                self._start_flow_guard()
            if not (core.has_events or core.readable or core.writable):
                break
        if core.closed:
            self._finish()
            return
        if core.reading_paused and not self._reading_paused:
            self._reading_paused = True
            core.set_reading_paused(True, loop_time())
            for protocol in self._protocols.values():
                if protocol.transport is not None and not protocol.transport.is_closing():
                    protocol.transport.pause_reading()
        self._reschedule_timer()

    def _start_flow_guard(self) -> None:
        timeout = self._user_timeout()
        if timeout and not self._core.closed:
            self._guard = self._loop.call_later(max(timeout / 3, 0.05), self._flow_guard)

    def _flow_guard(self) -> None:
        """Keep TCP_USER_TIMEOUT from killing a connection whose peer is merely slow.

        Linux applies TCP_USER_TIMEOUT to zero-window probes too: a peer that stops
        reading for longer than the timeout (a slow application; design: Backpressure)
        would have its connection aborted like a dead path. While the peer
        advertises a zero window the timeout is relaxed to ZERO_WINDOW_TIMEOUT,
        and restored when the window opens.
        """
        self._guard = None
        timeout = self._user_timeout()
        if not timeout or self._core.closed:
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
                self._core.set_flow_blocked(cid, True, self._loop.time())
            elif not blocked and protocol.user_timeout_relaxed:
                set_user_timeout(sock, timeout)
                protocol.user_timeout_relaxed = False
                self._core.set_flow_blocked(cid, False, self._loop.time())
            conn = self._core.connections.get(cid)
            if protocol.user_timeout_relaxed or cid in self._paused or (conn and conn.sent_log):
                active = True
        if active:
            self._start_flow_guard()

    def _has_working_connection(self) -> bool:
        """Whether a connection carries the session (joins still in their hello do not)."""
        return any(
            c.status in (ConnectionStatus.ACTIVE, ConnectionStatus.DRAINING)
            for c in self._core.connections.values()
        )

    def _withdrawn(self, host: str, port: int) -> bool:
        """Whether the server withdrew ``host:port`` (Remove Address)."""
        withdrawn = self._core.withdrawn_addresses
        if not withdrawn:
            return False
        with contextlib.suppress(ValueError):  # a name is compared as given
            host = str(ipaddress.ip_address(host.strip("[]")))
        return (host, port) in withdrawn

    def _start_rejoin(self) -> None:
        if self._rejoin_task is None or self._rejoin_task.done():
            self._rejoin_task = self._loop.create_task(self._rejoin())

    async def _rejoin(self) -> None:
        """Break-before-make: the last connection died; join again with a spare token.

        Tries the addresses the server advertised, then the ones this client
        used, until one joins or ``rejoin_timeout`` passes.
        """
        core = self._core
        limit = core.tuning.rejoin_timeout
        deadline = self._loop.time() + limit
        attempt_timeout = max(1.0, 2 * (self._user_timeout() or 1.0))
        logger.warning("every connection to the server failed; reconnecting for up to %g s", limit)
        while not self._has_working_connection() and not core.closed:
            targets: list[tuple[str, int, tuple[str, int] | None]] = [
                (host, port, None) for host, port in core.peer_addresses.values()
            ]
            targets += [t for t in reversed(self._join_targets) if t not in targets]
            targets = [t for t in targets if not self._withdrawn(t[0], t[1])]
            # not where a join is under way; the addresses that just failed come last
            ready = [t for t in targets if (t[0], t[1]) not in self._joining]
            ready.sort(key=lambda t: (t[0], t[1]) in self._failed_targets)
            for host, port, local in ready:
                remaining = deadline - self._loop.time()
                if (
                    core.closed
                    or self._has_working_connection()
                    or not core.tokens
                    or remaining <= 0
                ):
                    break
                try:
                    await self.join(host, port, local, timeout=min(attempt_timeout, remaining))
                    logger.warning("reconnected to %s:%d; the session goes on", host, port)
                    self._failed_targets.clear()
                    return
                except (OSError, TimeoutError, TCPLSError) as exc:
                    logger.info("reconnecting over %s:%d failed: %s", host, port, exc)
            if not targets or not core.tokens or self._loop.time() >= deadline:
                why = (
                    "no address is left to reconnect to"
                    if not targets
                    else "no join token is left"
                    if not core.tokens
                    else f"none answered within {limit:g} s"
                )
                core.rejoin = False
                core.abort(
                    ConnectionClosedError(f"every connection to the server failed and {why}")
                )
                self._process()
                return
            await asyncio.sleep(min(0.2, max(0.0, deadline - self._loop.time())))

    def _reschedule_timer(self) -> None:
        deadline = self._core.next_deadline()
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _handle_events(self) -> None:
        core = self._core
        while (event := core.next_event()) is not None:
            if isinstance(event, StreamOpened):
                self._incoming.put_nowait(self._pair(event.stream_id))
            elif isinstance(event, HandshakeDone):
                if not event.tcpls and not core.is_client:
                    self._fallback_stream_taken = True
                    self._incoming.put_nowait(self._pair(0))
                if not self._established.done():
                    self._established.set_result(None)
                if self._server is not None:
                    self._server._session_established(self)
            elif isinstance(event, SessionClosed):
                self._finish()
            elif isinstance(event, ConnectionRemoved):
                protocol = self._protocols.get(event.connection_id)
                if protocol is not None and protocol.transport is not None:
                    if event.error is None:
                        protocol.transport.close()
                    else:
                        protocol.transport.abort()
                waiter = self._join_waiters.get(event.connection_id)
                if waiter is not None and not waiter.done():
                    waiter.set_result(
                        event.error or ConnectionClosedError("the joined connection closed")
                    )
                for removal in self._removal_waiters:
                    if not removal.done():
                        removal.set_result(None)
                self._removal_waiters.clear()
                if event.error is not None and protocol is not None:
                    peer = _address(
                        protocol.transport and protocol.transport.get_extra_info("peername")
                    )
                    if peer is not None:
                        self._failed_targets.add(peer)
                if core.is_client and not self._has_working_connection() and not core.closed:
                    self._start_rejoin()
            elif isinstance(event, PeerClosed):
                self._incoming.put_nowait(None)  # the peer opens no more streams
            elif isinstance(event, ConnectionAdded):
                waiter = self._join_waiters.get(event.connection_id)
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)

    def _finish(self) -> None:
        core = self._core
        if self._closed.done():
            return
        error = core.error
        if not self._established.done():
            self._established.set_result(None)  # wait_established() raises the error
        for reader in self._readers.values():
            reader._wakeup()
        for writer in self._writers.values():
            writer._wakeup()
        # The application keeps the pairs it holds; the session lets go of them (they
        # refer back to it: a reference cycle would keep the session's memory).
        self._readers.clear()
        self._writers.clear()
        if error is not None:  # streams not accepted yet can no longer be completed
            while not self._incoming.empty():
                self._incoming.get_nowait()
        self._incoming.put_nowait(None)
        for task in list(self._tasks):
            task.cancel()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._guard is not None:
            self._guard.cancel()
            self._guard = None
        for cid, protocol in list(self._protocols.items()):
            transport = protocol.transport
            if transport is None:
                continue
            data = core.transmit(cid, self._loop.time())  # the alert, if any
            if data and not transport.is_closing():
                transport.write(data)
            if not protocol.peer_eof and not transport.is_closing():
                # Read on until the peer's FIN: closing with unread bytes would send an
                # RST, which can destroy what the peer has not read yet (our last data,
                # or the alert that says why the session ended). What comes is dropped.
                _write_eof(transport)
                if self._reading_paused:
                    transport.resume_reading()
                linger = _LINGER if error is None else _ERROR_LINGER
                protocol.linger = self._loop.call_later(linger, transport.close)
            else:
                transport.close()
        self._closed.set_result(None)
        if self._server is not None:
            self._server._session_closed(self)


def _about_join(error: TCPLSError, host: str, port: int) -> TCPLSError:
    """``error`` (same class and alert) with a message that names the join's address."""
    named = raisable(error)
    named.args = (f"joining {host}:{port} failed: {error}",)
    return named


def _write_eof(transport: asyncio.Transport) -> None:
    """Send FIN; a peer that already reset the connection makes this a no-op."""
    try:
        if transport.can_write_eof() and not transport.is_closing():
            transport.write_eof()
    except OSError:
        transport.abort()


def _address(value: Any) -> tuple[str, int] | None:
    if isinstance(value, tuple) and len(value) >= 2:
        return str(value[0]), int(value[1])
    return None
