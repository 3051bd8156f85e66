"""The tunnel client: local TCP connections carried over one TCPLS session.

:class:`TunnelClient` owns its listening sockets, the session in use (opened again when
it ended) with its control stream and the tasks that watch it, and the local
connections it carries (at most ``max_tunnels`` at once). See :mod:`tcpls.apps.tunnel`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from tcpls.aio.ratelog import RateLimitedLog
from tcpls.aio.session import Session
from tcpls.aio.streams import StreamReader, StreamWriter
from tcpls.apps.tunnel import socks
from tcpls.apps.tunnel.protocol import (
    DEFAULT_ANSWER_TIMEOUT,
    DEFAULT_MAX_TUNNELS,
    HELLO,
    HELLO_OK,
    HELLO_TIMEOUT,
    KEEPALIVE,
    MAX_LINE,
    SOCKS_TIMEOUT,
    TCP_LIMIT,
    Destination,
    NoLine,
    NotATunnelServer,
    TunnelError,
    TunnelRefused,
    connect_request,
    parse_answer,
    read_line,
    why,
)
from tcpls.apps.tunnel.relay import Control, TcpPair, reset
from tcpls.errors import TCPLSError

__all__ = ["Opener", "TunnelClient"]

logger = logging.getLogger("tcpls.tunnel")
_refusals = RateLimitedLog(logger)

#: Opens a session whose first stream starts with the given bytes (the tunnel hello):
#: ``lambda hello: tcpls.connect(host, port, config=config, early_data=hello)``.
Opener = Callable[[bytes], Awaitable[Session]]


class _Carried:
    """One session of a client: its control stream and the tasks that watch it."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.control = Control()
        self.tasks: set[asyncio.Task[Any]] = set()

    def start(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


class TunnelClient:
    """Carries local TCP connections over one TCPLS session to a :class:`TunnelServer`.

    The session comes from ``opener`` (see :data:`Opener`): at :meth:`start`, then again
    whenever a connection comes and the last session has ended. ``on_closed(session)``
    is called when a session ended (to save its ticket, say).
    """

    def __init__(
        self,
        opener: Opener,
        *,
        max_tunnels: int = DEFAULT_MAX_TUNNELS,
        answer_timeout: float = DEFAULT_ANSWER_TIMEOUT,
        on_closed: Callable[[Session], None] | None = None,
    ) -> None:
        """A client that opens its sessions with ``opener``."""
        self._opener = opener
        #: Local connections carried at once; more are closed at once.
        self.max_tunnels = max_tunnels
        #: Seconds to wait for the server's answer to a request.
        self.answer_timeout = answer_timeout
        self._on_closed = on_closed
        self._current: _Carried | None = None
        self._lock = asyncio.Lock()
        # When the last attempt to open a session failed, and why (see _carrier).
        self._failed: tuple[float, Exception] | None = None
        self._servers: list[asyncio.Server] = []
        self._handlers: set[asyncio.Task[Any]] = set()
        #: Sessions opened so far.
        self.sessions_opened = 0

    @property
    def active(self) -> int:
        """Local connections being carried (or set up) now."""
        return len(self._handlers)

    async def start(self) -> Session:
        """Open the first session now (its errors are raised), and return it."""
        return (await self._carrier()).session

    async def listen(self, host: str, port: int, to: Destination | None) -> asyncio.Server:
        """Carry each connection accepted on ``host:port`` to ``to``; ``None``: be a
        SOCKS5 proxy there (each client names its destination)."""

        async def accepted(tcp_reader: asyncio.StreamReader, tcp: asyncio.StreamWriter) -> None:
            await self._accepted((tcp_reader, tcp), to)

        server = await asyncio.start_server(accepted, host, port, limit=TCP_LIMIT)
        self._servers.append(server)
        return server

    async def aclose(self, timeout: float = 5.0) -> None:
        """Stop listening, then close the session; abort it if it carries connections."""
        for server in self._servers:
            server.close()
        current = self._current
        if current is not None and not current.session.closed:
            if current.control.relays:
                await current.control.abort_session(current.session)
            else:
                await current.session.aclose(timeout)
        for task in list(self._handlers):
            task.cancel()
        tasks = [*self._handlers, *(current.tasks if current else ())]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    # -- the session --------------------------------------------------------------------

    async def _carrier(self) -> _Carried:
        loop = asyncio.get_running_loop()
        arrived = loop.time()
        async with self._lock:
            current = self._current
            if current is None or current.session.closed:
                failed = self._failed
                if failed is not None and failed[0] >= arrived:
                    # an attempt made while we waited failed: each waiter trying again in
                    # turn would keep the last one waiting a handshake timeout per waiter
                    raise failed[1]
                try:
                    current = self._current = await self._open()
                except Exception as exc:
                    self._failed = (loop.time(), exc)
                    raise
            return current

    async def _open(self) -> _Carried:
        session = await self._opener(HELLO)
        try:
            if not session.tcpls_negotiated:
                raise NotATunnelServer("it speaks plain TLS 1.3, without TCPLS streams")
            reader, writer = await session.open_stream()
            try:
                async with asyncio.timeout(HELLO_TIMEOUT):
                    line, rest = await read_line(reader, MAX_LINE)
            except TimeoutError:
                reason = f"no answer to the tunnel hello within {HELLO_TIMEOUT:g} s"
                raise NotATunnelServer(reason) from None
            except NoLine:
                raise NotATunnelServer("it did not answer the tunnel hello") from None
            if line == HELLO:
                raise NotATunnelServer("it sent the hello back, like an echo server")
            if line != HELLO_OK:
                raise NotATunnelServer("its answer to the hello is not a tunnel answer")
        except BaseException:
            session.abort()
            raise
        carried = _Carried(session)
        carried.control.attach(reader, writer)
        carried.start(self._control(carried, rest))
        carried.start(self._keepalive(carried))
        carried.start(self._watch(carried))
        self.sessions_opened += 1
        resumed = ", resumed" if session.session_resumed else ""
        logger.info("tunnel session opened (%d so far%s)", self.sessions_opened, resumed)
        return carried

    async def _control(self, carried: _Carried, pending: bytes) -> None:
        try:
            aborted = await carried.control.run(pending)
        except TCPLSError:
            return  # the session failed: _watch reports it
        if aborted:
            logger.warning("the tunnel server aborted the session")
            carried.session.abort()

    async def _keepalive(self, carried: _Carried) -> None:
        while True:
            await asyncio.sleep(KEEPALIVE)
            if carried.control.relays:
                carried.control.send(b"PING\r\n")

    async def _watch(self, carried: _Carried) -> None:
        session = carried.session
        await session.wait_closed()
        error = session.error
        if carried.control.relays or error is not None:
            logger.warning("the tunnel session ended: %s", error or "closed by the server")
        else:
            logger.info("the tunnel session ended: %s", error or "closed")
        carried.control.session_ended()
        for task in carried.tasks:
            if task is not asyncio.current_task():
                task.cancel()
        if self._on_closed is not None:
            self._on_closed(session)

    async def _open_stream(self) -> tuple[_Carried, tuple[StreamReader, StreamWriter]]:
        """A new stream of the session, opened again if it had just ended."""
        carried = await self._carrier()
        try:
            return carried, await carried.session.open_stream()
        except TCPLSError:
            if not carried.session.closed:
                raise
        carried = await self._carrier()
        return carried, await carried.session.open_stream()

    # -- local connections ----------------------------------------------------------------

    async def _accepted(self, tcp: TcpPair, to: Destination | None) -> None:
        if self.active >= self.max_tunnels:
            _refusals.log(  # (a local flood must not flood the log too)
                "closed a local connection: %d are carried already (the limit)", self.max_tunnels
            )
            reset(tcp[1])
            return
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._carry(tcp, to)
        except (TCPLSError, OSError) as exc:
            logger.info("a tunneled connection ended: %s", why(exc))
            reset(tcp[1])
        finally:
            self._handlers.discard(task)

    async def _carry(self, tcp: TcpPair, to: Destination | None) -> None:
        tcp_reader, tcp_writer = tcp
        if to is None:
            try:
                async with asyncio.timeout(SOCKS_TIMEOUT):
                    destination = await socks.read_request(tcp_reader, tcp_writer)
            except (socks.SocksError, asyncio.IncompleteReadError, TimeoutError) as exc:
                logger.info("SOCKS5: %s", str(exc) or "no request in time")
                tcp_writer.close()
                return
        else:
            destination = to
        try:
            carried, (reader, writer) = await self._open_stream()
        except Exception as exc:  # the opener's errors are the application's
            logger.warning(
                "tunnel to %s: no session with the tunnel server: %s", destination, why(exc)
            )
            if to is None:
                tcp_writer.write(socks.reply(socks.GENERAL_FAILURE))
            tcp_writer.close()
            return
        writer.write(connect_request(destination))
        relay = carried.control.relay(tcp, reader, writer)
        try:
            if to is not None:
                relay.start_outbound()  # the first bytes go with the request
            try:
                async with asyncio.timeout(self.answer_timeout):
                    line, rest = await read_line(reader, MAX_LINE)
                parse_answer(line)
            except (TunnelError, NoLine, TimeoutError) as exc:
                self._report(destination, exc)
                if to is None:
                    code = exc.code if isinstance(exc, TunnelRefused) else None
                    tcp_writer.write(socks.reply(socks.reply_code(code)))
                await relay.refused()
                return
            relay.answered()
            if to is None:
                tcp_writer.write(socks.reply(socks.SUCCEEDED))
            await relay.run(rest)
        finally:
            carried.control.forget(writer)

    def _report(self, destination: Destination, exc: BaseException) -> None:
        """One line for a connection the server did not open."""
        if isinstance(exc, TunnelRefused):
            logger.warning("tunnel to %s refused by the server: %s", destination, exc.reason)
        elif isinstance(exc, TimeoutError):
            logger.warning(
                "tunnel to %s: no answer from the server within %g s",
                destination,
                self.answer_timeout,
            )
        else:
            logger.warning("tunnel to %s: the server's answer is not a tunnel answer", destination)
