"""Moving bytes between a TCP connection and a stream, and the control stream.

:class:`Relay` owns one tunneled connection: its TCP side (closed or reset by it) and
the task that reads that side. :class:`Control` owns a session's control stream and the
table of its relays, by stream ID, that ``STOP`` lines refer to. See *Ends of
connections* in :mod:`tcpls.apps.tunnel`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Callable

from tcpls.aio.ratelog import RateLimitedLog
from tcpls.aio.streams import StreamReader, StreamSession, StreamWriter
from tcpls.apps.tunnel.protocol import (
    CHUNK,
    DRAIN_TIMEOUT,
    MAX_CONTROL_LINE,
    TCP_WRITE_HIGH,
    drain,
)
from tcpls.errors import TCPLSError

__all__ = ["STALL_TIMEOUT", "Control", "Relay", "TcpPair", "reset"]

logger = logging.getLogger("tcpls.tunnel")
_stalled = RateLimitedLog(logger)

#: Seconds a connection's TCP side may take none of the bytes waiting for it before it
#: is reset: the session's streams share its TCP connections, and a stream nobody reads
#: stops them all (see *Ends of connections* in :mod:`tcpls.apps.tunnel`).
STALL_TIMEOUT = 15.0

#: An asyncio TCP connection: its reader and its writer.
TcpPair = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def reset(tcp: asyncio.StreamWriter) -> None:
    """Close a TCP connection with a reset (RST), dropping what it holds: its peer sees
    an error, not an end of file that could pass for a complete transfer."""
    sock = tcp.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    tcp.transport.abort()


class Relay:
    """Moves bytes both ways between one TCP connection and one stream.

    *Outbound* is the TCP connection's bytes going to the stream, *inbound* the
    stream's bytes going to the TCP connection. ``stop()`` asks the peer to stop
    sending (a ``STOP`` line).
    """

    def __init__(
        self, tcp: TcpPair, reader: StreamReader, writer: StreamWriter, stop: Callable[[], None]
    ) -> None:
        """A relay between ``tcp`` and the stream of ``reader``/``writer``."""
        self._tcp_reader, self._tcp = tcp
        self._reader = reader
        self._writer = writer
        self._send_stop = stop
        self._outbound: asyncio.Task[None] | None = None
        self._tcp_broken = False  # the TCP side takes no more bytes
        self._stop_received = False
        self._inbound_done = False
        self._tcp.transport.set_write_buffer_limits(high=TCP_WRITE_HIGH)

    def start_outbound(self) -> None:
        """Start moving the TCP connection's bytes to the stream (unless stopped)."""
        if self._outbound is None and not self._stop_received and not self._tcp_broken:
            self._outbound = asyncio.get_running_loop().create_task(self._tcp_to_stream())

    async def _tcp_to_stream(self) -> None:
        writer = self._writer
        while True:
            try:
                data = await self._tcp_reader.read(CHUNK)
            except OSError:
                self._tcp_failed()
                return
            if not data:
                break
            writer.write(data)
            await writer.drain()
        self._end_stream()

    def _end_stream(self) -> None:
        with contextlib.suppress(TCPLSError):
            if not self._writer.is_closing():
                self._writer.write_eof()

    def _stop_outbound(self) -> None:
        task = self._outbound
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        self._end_stream()

    def _tcp_failed(self) -> None:
        """The TCP connection broke: end our direction and have the peer stop its."""
        if not self._tcp_broken:
            self._tcp_broken = True
            if not self._stop_received:
                self._send_stop()
            self._stop_outbound()

    def answered(self) -> None:
        """Client: the server answered ``OK``. A ``STOP`` sent before may have come before
        the server knew the stream, so a connection that broke meanwhile says it again."""
        if self._tcp_broken and not self._stop_received:
            self._send_stop()

    def stop_sending(self) -> None:
        """The peer's TCP side takes no more (``STOP``): stop reading ours, end the stream."""
        self._stop_received = True
        self._stop_outbound()

    async def _stream_to_tcp(self, data: bytes) -> None:
        tcp = self._tcp
        while True:
            if data and not self._tcp_broken:
                if tcp.is_closing():
                    self._tcp_failed()
                else:
                    tcp.write(data)
                    try:
                        await asyncio.wait_for(tcp.drain(), STALL_TIMEOUT)
                    except OSError:
                        self._tcp_failed()
                    except TimeoutError:
                        # its reader took nothing for that long: every other connection
                        # of the session waits behind this stream, so it goes
                        _stalled.log(
                            "resetting a connection whose other end took nothing for %g s "
                            "(the session's other connections were waiting behind it)",
                            STALL_TIMEOUT,
                        )
                        reset(tcp)
                        self._tcp_failed()
            data = await self._reader.read(CHUNK)  # after a failure: read and drop
            if not data:
                break
        self._inbound_done = True
        if not self._tcp_broken:
            with contextlib.suppress(OSError, RuntimeError):
                tcp.write_eof()

    async def run(self, first: bytes = b"") -> None:
        """Relay until both directions ended (``first``: stream bytes read already), then
        close the TCP connection. If the session fails first, reset it and raise the
        session's error."""
        self.start_outbound()
        outbound = self._outbound  # None if stopped before it started
        clean = False
        try:
            await self._stream_to_tcp(first)
            if outbound is not None:
                await asyncio.wait([outbound])
                failure = None if outbound.cancelled() else outbound.exception()
                if failure is not None:
                    raise failure
            clean = True
        finally:
            if outbound is not None:
                outbound.cancel()
                if outbound.done() and not outbound.cancelled():
                    outbound.exception()  # retrieved: raised above, or the session's error
            # a connection whose stream ended cleanly keeps what it was sent
            self.close(abort=not clean and not self._inbound_done)

    async def refused(self) -> None:
        """The server refused the connection: stop, close the TCP side, read the stream
        to its end (for at most ``DRAIN_TIMEOUT`` seconds)."""
        self._stop_outbound()
        self.close(abort=False)
        await drain(self._reader, DRAIN_TIMEOUT)

    def close(self, abort: bool) -> None:
        """Close the TCP connection after what it was given; ``abort``: reset it now."""
        if self._outbound is not None:
            self._outbound.cancel()
        if abort:
            reset(self._tcp)
        else:
            self._tcp.close()

    def session_ended(self) -> None:
        """The session ended: reset the connection unless its stream had ended."""
        if not self._inbound_done:
            self.close(abort=True)


class Control:
    """The control stream of a session (``STOP`` and ``PING`` lines) and its relays."""

    def __init__(self) -> None:
        """No stream yet: :meth:`attach` gives it (until then ``STOP`` is not sent)."""
        self._reader: StreamReader | None = None
        self._writer: StreamWriter | None = None
        #: The relays by stream ID (what ``STOP`` refers to).
        self.relays: dict[int, Relay] = {}

    @property
    def attached(self) -> bool:
        """Whether the control stream is there."""
        return self._writer is not None

    def attach(self, reader: StreamReader, writer: StreamWriter) -> None:
        """The session's control stream is ``reader``/``writer``."""
        self._reader, self._writer = reader, writer

    def send(self, line: bytes) -> None:
        """Write one line (dropped when there is no control stream or it ended)."""
        writer = self._writer
        with contextlib.suppress(TCPLSError):
            if writer is not None and not writer.is_closing():
                writer.write(line)

    def relay(self, tcp: TcpPair, reader: StreamReader, writer: StreamWriter) -> Relay:
        """A relay for ``writer``'s stream, registered for ``STOP`` until :meth:`forget`."""
        sid = writer.stream_id
        relay = Relay(tcp, reader, writer, lambda: self.send(b"STOP %d\r\n" % sid))
        self.relays[sid] = relay
        return relay

    def forget(self, writer: StreamWriter) -> None:
        """The relay of ``writer``'s stream is done."""
        self.relays.pop(writer.stream_id, None)

    def session_ended(self) -> None:
        """The session ended: reset the connections whose streams had not ended."""
        for relay in list(self.relays.values()):
            relay.session_ended()

    async def abort_session(self, session: StreamSession, timeout: float = 1.0) -> None:
        """Abort ``session``, telling the peer first (``ABORT``, acknowledged within
        ``timeout`` seconds): an aborted session says nothing to the peer, which would
        otherwise wait for a rejoin before it resets the connections it carries."""
        writer = self._writer
        if writer is not None and not session.closed:
            self.send(b"ABORT\r\n")
            with contextlib.suppress(TCPLSError, TimeoutError):
                writer.write_eof()
                async with asyncio.timeout(timeout):
                    await writer.wait_closed()
        self.session_ended()
        session.abort()

    async def run(self, pending: bytes = b"") -> bool:
        """Act on the peer's lines (``pending``: bytes read already) until the control
        stream ends, then end ours. True if the peer said ``ABORT`` (the connections were
        reset; abort the session)."""
        reader = self._reader
        if reader is None:
            return False
        buffer = bytearray(pending)
        try:
            while True:
                while (end := buffer.find(b"\n")) >= 0:
                    verb, _, argument = bytes(buffer[:end]).rstrip(b"\r").partition(b" ")
                    del buffer[: end + 1]
                    if verb == b"ABORT":
                        self.session_ended()
                        return True
                    if verb == b"STOP" and argument.isdigit() and len(argument) < 11:
                        relay = self.relays.get(int(argument))
                        if relay is not None:
                            relay.stop_sending()
                if len(buffer) >= MAX_CONTROL_LINE:
                    logger.info("the peer sent a control line over %d bytes", MAX_CONTROL_LINE)
                    return False
                data = await reader.read(4096)
                if not data:
                    return False
                buffer += data
        finally:
            if self._writer is not None:
                with contextlib.suppress(TCPLSError):
                    self._writer.write_eof()
