"""Stream reader/writer pairs, shaped like ``asyncio.open_connection``'s.

A :class:`StreamReader` reads the bytes the peer sent on one stream, in order;
a :class:`StreamWriter` queues bytes on it. Backpressure is real: ``drain()``
waits while the stream holds more unsent bytes than its high-water mark, and
those leave only as fast as the TCP connections take records.

This module owns the pairs only. The bytes are in the core session; the pairs
reach the session's I/O through :class:`StreamOwner` (its driver) and hand out
the session itself as a :class:`StreamSession`; neither is imported from here,
so that the session module can import this one.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Protocol

from tcpls.core.session import CoreSession
from tcpls.errors import ConnectionClosedError, raisable

__all__ = ["IncomingStreams", "StreamOwner", "StreamReader", "StreamSession", "StreamWriter"]

_DEFAULT_LIMIT = 64 * 1024


class StreamOwner(Protocol):
    """What a stream pair needs from the I/O of its session (the session's driver)."""

    @property
    def core(self) -> CoreSession:
        """The sans-I/O session that holds the streams' bytes."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the session runs in."""

    def schedule_flush(self) -> None:
        """Send what the streams queued, once, at the next turn of the event loop."""

    def data_consumed(self) -> None:
        """The application read bytes: reading resumes if it was paused for them."""

    def reader_waiting(self, stream_id: int) -> None:
        """A reader of ``stream_id`` is about to wait for bytes."""


class StreamSession(Protocol):
    """The session a stream pair belongs to, as the pair hands it out.

    It is the :class:`tcpls.Session`; these are the parts a stream handler needs
    most (``writer.session.wait_closed()``).
    """

    @property
    def closed(self) -> bool:
        """Whether the session ended."""

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """Information about the session (see :meth:`tcpls.Session.get_extra_info`)."""

    def close(self) -> None:
        """Start a graceful close of the whole session."""

    def abort(self) -> None:
        """Close the whole session at once, dropping unsent data."""

    async def wait_closed(self) -> None:
        """Wait until the session ended."""


class StreamReader:
    """Reads one stream (like :class:`asyncio.StreamReader`)."""

    def __init__(self, owner: StreamOwner, stream_id: int, limit: int = _DEFAULT_LIMIT) -> None:
        self._owner = owner
        self._core = owner.core
        #: The stream's ID in the session.
        self.stream_id = stream_id
        self._limit = limit
        self._waiter: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"<tcpls.StreamReader stream={self.stream_id}>"

    # -- called by the session ---------------------------------------------------

    def wakeup(self) -> None:
        """Wake the coroutine waiting to read, if any (the session calls this when the
        stream has new bytes, an end or an error)."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        if self._waiter is not None:
            raise RuntimeError("another coroutine is already reading this stream")
        self._waiter = self._owner.loop.create_future()
        self._owner.reader_waiting(self.stream_id)
        try:
            await self._waiter
        finally:
            self._waiter = None

    # -- state -----------------------------------------------------------------

    def _buffered(self) -> int:
        stream = self._core.io.stream(self.stream_id)
        return stream.readable if stream is not None else 0

    @property
    def early_data_bytes(self) -> int:
        """Server: how many of this stream's first bytes arrived as 0-RTT early data.

        Those bytes came before the handshake completed and an attacker can replay them
        (to this server after a restart, or to another one sharing its tickets): act on
        them only if doing so twice is harmless (design: Early data).
        """
        stream = self._core.io.stream(self.stream_id)
        return stream.early_bytes if stream is not None else 0

    def at_eof(self) -> bool:
        """Whether the peer ended the stream and every byte was read."""
        stream = self._core.io.stream(self.stream_id)
        if stream is None:
            return True
        return stream.at_eof

    def exception(self) -> BaseException | None:
        """The error that ended the session before this stream was complete, if any."""
        stream = self._core.io.stream(self.stream_id)
        if self._core.closed and (stream is None or not stream.complete):
            return self._core.error or None
        return None

    def _raise_if_broken(self) -> None:
        stream = self._core.io.stream(self.stream_id)
        if stream is None:
            return
        if self._core.closed and not stream.complete:
            error = self._core.error
            raise (
                raisable(error)
                if error is not None
                else ConnectionClosedError("the session closed before the stream ended")
            )

    # -- reading ---------------------------------------------------------------

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (``-1``: until EOF). ``b""`` at EOF."""
        if n == 0:
            return b""
        if n < 0:
            parts: list[bytes] = []
            while True:
                chunk = await self.read(1 << 20)
                if not chunk:
                    return b"".join(parts)
                parts.append(chunk)
        while True:
            data = self._core.read(self.stream_id, n)
            if data:
                self._owner.data_consumed()
                return data
            if self.at_eof():
                return b""
            self._raise_if_broken()
            await self._wait()

    async def readexactly(self, n: int) -> bytes:
        """Exactly ``n`` bytes; :class:`asyncio.IncompleteReadError` if EOF comes first."""
        if n < 0:
            raise ValueError("readexactly size can not be less than zero")
        parts: list[bytes] = []
        need = n
        while need:
            chunk = await self.read(need)
            if not chunk:
                raise asyncio.IncompleteReadError(b"".join(parts), n)
            parts.append(chunk)
            need -= len(chunk)
        return b"".join(parts)

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        """Bytes up to and including ``separator`` (like ``asyncio.StreamReader.readuntil``)."""
        if not separator:
            raise ValueError("separator should be at least one-byte string")
        start = 0
        while True:
            stream = self._core.io.stream(self.stream_id)
            if stream is not None:
                index = stream.find(separator, start)
                if index >= 0:
                    if index + len(separator) > self._limit:
                        raise asyncio.LimitOverrunError(
                            "separator found, but chunk is longer than the limit", index
                        )
                    data = self._core.read(self.stream_id, index + len(separator))
                    self._owner.data_consumed()
                    return data
                buffered = stream.readable
                if buffered > self._limit:
                    raise asyncio.LimitOverrunError(
                        "separator not found, limit exceeded", buffered
                    )
                start = max(0, buffered - len(separator) + 1)
            if self.at_eof() or stream is None or stream.complete:
                partial = self._core.read(self.stream_id)
                self._owner.data_consumed()
                raise asyncio.IncompleteReadError(partial, None)
            self._raise_if_broken()
            await self._wait()

    async def readline(self) -> bytes:
        """A line ending with ``\\n``, or what is left at EOF."""
        try:
            return await self.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            return exc.partial

    def __aiter__(self) -> StreamReader:
        return self

    async def __anext__(self) -> bytes:
        line = await self.readline()
        if not line:
            raise StopAsyncIteration
        return line


class StreamWriter:
    """Writes one stream (like :class:`asyncio.StreamWriter`)."""

    def __init__(
        self, owner: StreamOwner, session: StreamSession, stream_id: int, reader: StreamReader
    ) -> None:
        self._owner = owner
        self._session = session
        self._core = owner.core
        #: The stream's ID in the session.
        self.stream_id = stream_id
        self._reader = reader
        self._closing = False
        self._drain_waiter: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"<tcpls.StreamWriter stream={self.stream_id}>"

    @property
    def session(self) -> StreamSession:
        """The session this stream belongs to (a :class:`tcpls.Session`)."""
        return self._session

    def wakeup(self) -> None:
        """Wake the coroutine waiting in :meth:`drain` or :meth:`wait_closed`, if any (the
        session calls this when the stream can take more, or ended)."""
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data``; it is sent as the connections can take it."""
        self._core.send(self.stream_id, data)
        self._owner.schedule_flush()

    def writelines(self, data: Any) -> None:
        """Queue each buffer of an iterable."""
        for chunk in data:
            self.write(chunk)

    def can_write_eof(self) -> bool:
        """Always true: every stream can end its direction."""
        return True

    def write_eof(self) -> None:
        """End our direction of the stream (FIN) after what was queued."""
        self._core.send_eof(self.stream_id)
        self._owner.schedule_flush()

    def _buffered(self) -> int:
        stream = self._core.io.stream(self.stream_id)
        return stream.send_pending if stream is not None else 0

    async def drain(self) -> None:
        """Wait until the bytes written and not yet sent are below the high-water mark.

        Bytes sent but not yet acknowledged by the peer are kept for reinjection
        (design: Retransmission) but do not count here: TCP flow control bounds them, and counting
        them would deadlock a peer that has paused reading (design: Backpressure) and therefore
        cannot see our ACKs.
        """
        limit = self._core.tuning.stream_send_buffer
        while True:
            if self._core.closed:
                error = self._core.error
                if error is not None:
                    raise raisable(error)
                raise ConnectionClosedError("the session is closed")
            if self._buffered() <= limit and not self._core.send_blocked:
                return
            self._drain_waiter = self._owner.loop.create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None

    def close(self) -> None:
        """End our direction (FIN) if not done yet; use :meth:`wait_closed` to wait."""
        if not self._closing:
            self._closing = True
            stream = self._core.io.stream(self.stream_id)
            if stream is not None and not stream.fin_queued and not self._core.closed:
                self.write_eof()

    def is_closing(self) -> bool:
        """Whether :meth:`close` or :meth:`write_eof` was called."""
        stream = self._core.io.stream(self.stream_id)
        return self._closing or stream is None or stream.fin_queued

    async def wait_closed(self) -> None:
        """Wait until the peer acknowledged everything we sent, FIN included."""
        while True:
            stream = self._core.io.stream(self.stream_id)
            if stream is None or stream.fin_acked or self._core.closed or self._core.peer_closed:
                return
            self._drain_waiter = self._owner.loop.create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None

    def pin(self, connection_id: int | None) -> None:
        """Keep this stream's data on one TCP connection (``None``: let the scheduler choose)."""
        self._core.pin_stream(self.stream_id, connection_id)
        self._owner.schedule_flush()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """``stream_id``, ``session``, ``tcpls``, ``cipher_suite``, ``peername``, ``sockname``."""
        if name == "stream_id":
            return self.stream_id
        if name == "session":
            return self._session
        return self._session.get_extra_info(name, default)


#: A pair of the peer's streams, or ``None``: no more will come.
Incoming = tuple[StreamReader, StreamWriter] | None


class IncomingStreams:
    """The stream pairs the peer opened, until the application accepts them: the part of
    :class:`asyncio.Queue` a session needs (``put_nowait``, ``get``, ``get_nowait``,
    ``empty``), holding nothing while empty. A queue holds four deques, about 3 KiB, in
    every idle session (design: Idle memory)."""

    __slots__ = ("_items", "_waiters")

    def __init__(self) -> None:
        self._items: deque[Incoming] | None = None
        self._waiters: list[asyncio.Future[None]] | None = None

    def empty(self) -> bool:
        """Whether no pair waits."""
        return not self._items

    def put_nowait(self, item: Incoming) -> None:
        """Add a pair (or ``None``) and wake the first coroutine waiting in :meth:`get`."""
        if self._items is None:
            self._items = deque()
        self._items.append(item)
        self._wake()

    def get_nowait(self) -> Incoming:
        """The oldest pair; :class:`asyncio.QueueEmpty` if none waits."""
        items = self._items
        if not items:
            raise asyncio.QueueEmpty
        item = items.popleft()
        if not items:
            self._items = None
        return item

    async def get(self) -> Incoming:
        """The oldest pair, once there is one."""
        while not self._items:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            if self._waiters is None:
                self._waiters = []
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                self._forget(waiter)
                if self._items and not waiter.cancelled():
                    self._wake()  # (it was woken, then cancelled: pass the turn on)
                raise
            self._forget(waiter)
        return self.get_nowait()

    def _wake(self) -> None:
        for waiter in self._waiters or ():
            if not waiter.done():
                waiter.set_result(None)
                return

    def _forget(self, waiter: asyncio.Future[None]) -> None:
        waiters = self._waiters
        if waiters is not None and waiter in waiters:
            waiters.remove(waiter)
            if not waiters:
                self._waiters = None
