"""The tunnel server: each stream of a session connected to its destination, if allowed.

:class:`TunnelServer` owns, per session, the count of streams it serves and the session's
control stream (with its relays), and, across sessions, the count of connections to
destinations. See :mod:`tcpls.apps.tunnel` for the protocol and the limits.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
from dataclasses import dataclass, field

from tcpls.aio.session import Session
from tcpls.aio.streams import StreamReader, StreamWriter
from tcpls.apps.tunnel.protocol import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_TOTAL,
    DEFAULT_MAX_TUNNELS,
    DRAIN_TIMEOUT,
    HELLO,
    HELLO_OK,
    MAX_LINE,
    REQUEST_TIMEOUT,
    TCP_LIMIT,
    AllowList,
    Destination,
    NoLine,
    drain,
    parse_destination,
    read_line,
    why,
)
from tcpls.apps.tunnel.relay import Control
from tcpls.errors import TCPLSError

__all__ = ["TunnelServer"]

logger = logging.getLogger("tcpls.tunnel")


class _Throttled:
    """Warnings logged at most once a second, with how many were left out meanwhile."""

    def __init__(self) -> None:
        self._last = -1.0
        self._skipped = 0

    def warning(self, message: str) -> None:
        now = time.monotonic()
        if self._last >= 0 and now - self._last < 1.0:
            self._skipped += 1
            return
        more = f" (and {self._skipped} more refused meanwhile)" if self._skipped else ""
        self._last, self._skipped = now, 0
        logger.warning("%s%s", message, more)


@dataclass(eq=False)
class _Served:
    """What a server holds for one session."""

    session: Session
    #: The control stream (once the client opened it) and the relays.
    control: Control = field(default_factory=Control)
    #: Streams served now.
    streams: int = 0


class TunnelServer:
    """Connects the streams of each session to their destinations.

    Pass :meth:`handle` to :func:`tcpls.serve`; call :meth:`abort_carrying` before
    closing that server (see *Ends of connections* in :mod:`tcpls.apps.tunnel`).
    """

    def __init__(
        self,
        allow: AllowList,
        *,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        max_tunnels: int = DEFAULT_MAX_TUNNELS,
        max_total: int = DEFAULT_MAX_TOTAL,
    ) -> None:
        """A server that connects only to the destinations ``allow`` lists, within
        ``connect_timeout`` seconds; it serves at most ``max_tunnels`` streams of one
        session at once and holds at most ``max_total`` destination connections."""
        #: Where the server may connect.
        self.allow = allow
        #: Seconds allowed for connecting to a destination.
        self.connect_timeout = connect_timeout
        #: Streams of one session served at once.
        self.max_tunnels = max_tunnels
        #: Connections to destinations at once, all sessions together.
        self.max_total = max_total
        #: Connections to destinations open (or being opened) now.
        self.connected = 0
        self._sessions: set[_Served] = set()
        self._refusals = _Throttled()

    @property
    def carrying(self) -> int:
        """Connections relayed now, all sessions together."""
        return sum(len(served.control.relays) for served in self._sessions)

    async def handle(self, session: Session) -> None:
        """Serve every stream of ``session`` (the handler of :func:`tcpls.serve`)."""
        served = _Served(session)
        self._sessions.add(served)
        try:
            async with asyncio.TaskGroup() as group:
                async for reader, writer in session:
                    group.create_task(self._stream(served, reader, writer))
                served.control.session_ended()
        finally:
            self._sessions.discard(served)

    async def abort_carrying(self) -> None:
        """Abort every session that carries connections (the server is shutting down)."""
        aborts = [
            served.control.abort_session(served.session)
            for served in self._sessions
            if served.control.relays
        ]
        await asyncio.gather(*aborts)

    async def _stream(self, served: _Served, reader: StreamReader, writer: StreamWriter) -> None:
        served.streams += 1
        try:
            await self._serve(served, reader, writer)
        except (TCPLSError, OSError) as exc:
            logger.debug("stream %d ended: %s", writer.stream_id, exc)
        finally:
            served.streams -= 1

    async def _refuse(
        self, reader: StreamReader, writer: StreamWriter, code: str, reason: str
    ) -> None:
        peer = writer.get_extra_info("peername")
        where = f" from {peer[0]}" if isinstance(peer, tuple) else ""
        self._refusals.warning(f"refused a tunnel{where}: {reason}")
        line = f"ERR {code} {reason}".encode("ascii", "replace")[: MAX_LINE - 2]
        writer.write(line + b"\r\n")
        writer.write_eof()
        await drain(reader, DRAIN_TIMEOUT)

    async def _serve(self, served: _Served, reader: StreamReader, writer: StreamWriter) -> None:
        if served.streams > self.max_tunnels:
            reason = f"too many tunneled connections in this session ({self.max_tunnels})"
            return await self._refuse(reader, writer, "busy", reason)
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                line, rest = await read_line(reader, MAX_LINE)
        except TimeoutError:
            reason = f"no request within {REQUEST_TIMEOUT:g} s"
            return await self._refuse(reader, writer, "timeout", reason)
        except NoLine as exc:
            return await self._refuse(reader, writer, "bad-request", f"bad request: {exc}")
        if line == HELLO and not served.control.attached:
            writer.write(HELLO_OK)
            served.control.attach(reader, writer)
            served.streams -= 1  # the control stream carries no connection
            try:
                if await served.control.run(rest):
                    served.session.abort()  # the client aborts it
            finally:
                served.streams += 1
            return None
        verb, _, target = line.rstrip(b"\r\n").decode("ascii", "replace").partition(" ")
        try:
            if verb != "CONNECT":
                raise ValueError("expected CONNECT HOST:PORT")
            destination = parse_destination(target)
        except ValueError as exc:
            return await self._refuse(reader, writer, "bad-request", f"bad request: {exc}")
        if not self.allow.allows(destination):
            reason = f"{destination} is not on the server's allow list"
            return await self._refuse(reader, writer, "denied", reason)
        if self.connected >= self.max_total:
            reason = f"the server carries too many connections ({self.max_total})"
            return await self._refuse(reader, writer, "busy", reason)
        self.connected += 1
        try:
            await self._connect(served, reader, writer, destination, rest)
        finally:
            self.connected -= 1

    async def _connect(
        self,
        served: _Served,
        reader: StreamReader,
        writer: StreamWriter,
        destination: Destination,
        first: bytes,
    ) -> None:
        try:
            async with asyncio.timeout(self.connect_timeout):
                tcp = await asyncio.open_connection(
                    destination.host, destination.port, limit=TCP_LIMIT
                )
        except (OSError, TimeoutError) as exc:
            code, reason = _connect_failure(exc, destination, self.connect_timeout)
            return await self._refuse(reader, writer, code, reason)
        logger.info("stream %d: connected to %s", writer.stream_id, destination)
        writer.write(b"OK\r\n")
        relay = served.control.relay(tcp, reader, writer)
        try:
            await relay.run(first)
        finally:
            served.control.forget(writer)


def _connect_failure(exc: BaseException, where: Destination, timeout: float) -> tuple[str, str]:
    """The code and reason of the ``ERR`` answer for a failed connection to ``where``."""
    if isinstance(exc, TimeoutError):
        return "timeout", f"connecting to {where} timed out after {timeout:g} s"
    if isinstance(exc, socket.gaierror):
        return "unresolved", f"cannot resolve {where.host}: {why(exc)}"
    if isinstance(exc, ConnectionRefusedError):
        return "refused", f"{where} refused the connection"
    if isinstance(exc, OSError) and exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return "unreachable", f"{where} is unreachable: {why(exc)}"
    return "failed", f"cannot connect to {where}: {why(exc)}"
