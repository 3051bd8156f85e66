"""The public asyncio session: :class:`Session`, the application's view of a TCPLS session.

A :class:`Session` is thin: it answers questions about the session from the core
session, and hands the rest to the session's driver (:mod:`tcpls.aio.driver`: the
connections, the pump, the timers) and to its joins (:mod:`tcpls.aio.joins`). It owns
no I/O state of its own.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from cryptography import x509

from tcpls.aio.driver import SessionDriver
from tcpls.aio.info import ConnectionInfo
from tcpls.aio.joins import Joins, Target
from tcpls.aio.stats import SessionStats, session_stats
from tcpls.aio.streams import StreamReader, StreamWriter
from tcpls.core.scheduler import SCHEDULERS
from tcpls.errors import ConnectionClosedError, TCPLSError
from tcpls.tls.hs.groups import group_name

__all__ = ["ConnectionInfo", "Session"]


class Session:
    """A TCPLS session (or a plain TLS one after fallback) in asyncio.

    Get one from :func:`tcpls.connect` or in the handler of :func:`tcpls.serve`.
    Streams are ``(StreamReader, StreamWriter)`` pairs: open them with
    :meth:`open_stream`, take the peer's with :meth:`accept_stream` or
    ``async for reader, writer in session``.
    """

    def __init__(self, driver: SessionDriver, *, target: Target | None = None) -> None:
        """The view of the session ``driver`` runs; a client gives the ``target`` it
        connected to (a rejoin may connect there again)."""
        self._driver = driver
        self._core = driver.core
        self._loop = driver.loop
        #: The connections' protocols by connection ID (the driver's table).
        self._protocols = driver.protocols
        self._joins = Joins(driver, target)
        driver.session = self

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
        suite = self._core.io.cipher_suite
        return f"TLS_{suite.name}" if suite is not None else None

    @property
    def session_resumed(self) -> bool:
        """Whether the handshake resumed an earlier session (PSK)."""
        engine = self._core.handshake_engine
        return bool(engine and engine.session_resumed)

    @property
    def group(self) -> str | None:
        """The negotiated key exchange group, e.g. ``X25519MLKEM768`` (``None`` before it)."""
        engine = self._core.handshake_engine
        if engine is None or engine.group is None:
            return None
        return group_name(engine.group)

    @property
    def early_data_accepted(self) -> bool:
        """Whether the server accepted the client's early data (0-RTT, design: Early data)."""
        engine = self._core.handshake_engine
        return bool(engine and engine.early_data_accepted)

    @property
    def peer_certificate(self) -> x509.Certificate | None:
        """The peer's certificate: the server's, or the client's when the server asked for
        one (design: Client certificates)."""
        engine = self._core.handshake_engine
        return engine.peer_certificate if engine is not None else None

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
        info = self._driver.info
        return [info(cid) for cid in self._core.connections]

    def stats(self) -> SessionStats:
        """Counters of the session: per connection (with ``TCP_INFO``: RTT, congestion
        window, retransmissions), per open stream, and totals (:mod:`tcpls.aio.stats`)."""
        transports = {cid: p.transport for cid, p in self._protocols.items()}
        return session_stats(self._core, transports)

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
        return self._driver.open_stream(self)

    async def accept_stream(self) -> tuple[StreamReader, StreamWriter]:
        """The next stream the peer opened; :class:`ConnectionClosedError` when none will come."""
        incoming = self._driver.incoming
        item = await incoming.get()
        if item is None:
            incoming.put_nowait(None)  # keep waking other waiters
            raise ConnectionClosedError("the session is closed")
        return item

    def __aiter__(self) -> AsyncIterator[tuple[StreamReader, StreamWriter]]:
        """The streams the peer opens, until it opens no more (the session is its own
        iterator: no generator kept per session; design: Idle memory)."""
        return self

    async def __anext__(self) -> tuple[StreamReader, StreamWriter]:
        """The next stream of ``async for``: :meth:`accept_stream`, which ends the loop
        when no more will come."""
        try:
            return await self.accept_stream()
        except ConnectionClosedError:
            raise StopAsyncIteration from None

    # ------------------------------------------------------------- multipath

    @property
    def scheduler(self) -> str:
        """``aggregate``, ``pinned`` or ``backup`` (see :mod:`tcpls.core.scheduler`); settable."""
        return self._core.scheduler.name

    @scheduler.setter
    def scheduler(self, name: str) -> None:
        if name not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {name!r} (choose from {', '.join(SCHEDULERS)})")
        self._core.set_scheduler(name)
        self._driver.schedule_flush()

    @property
    def spare_tokens(self) -> int:
        """Client: join tokens available for more connections."""
        return len(self._core.tokens)

    @property
    def spare_token_sequences(self) -> tuple[int, ...]:
        """Client: the sequence numbers of the spare join tokens (each becomes the
        Connection ID of the connection it joins)."""
        return tuple(sorted(self._core.tokens))

    @property
    def connections_joined(self) -> int:
        """Connections that joined this session so far (the first one not counted)."""
        return len(self._core.token_book.used_connection_ids) - 1

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
        return await self._joins.join(host, port, local_addr, timeout=timeout, sock=sock)

    def follow_advertised(self) -> None:
        """Client: from now on, join each address the server advertises (New Address) as
        soon as it is advertised, once, while spare tokens last (``ClientConfig.
        join_advertised`` calls this). A join that fails is logged, not raised."""
        self._joins.follow_advertised()

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
        return await self._joins.migrate(host, port, local_addr, timeout=timeout)

    async def retire(self, connection_id: int, *, timeout: float | None = None) -> None:
        """Remove one connection gracefully (design: Closing) and wait until it is gone."""
        await self._joins.retire(connection_id, timeout=timeout)

    def _background(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` as a task owned by the session (cancelled when it ends)."""
        self._driver.background(coro)

    async def wait_established(self) -> None:
        """Wait for the handshake; raise its error if it failed."""
        await self._driver.wait_established()

    def close(self) -> None:
        """Start a graceful close: flush, wait for ACKs, ``close_notify``, FIN.

        See *Closing* in the design notes (design: Closing).
        """
        self._core.close(self._loop.time())
        self._driver.process()

    def abort(self) -> None:
        """Close at once, dropping unsent data."""
        self._core.abort()
        self._driver.process()

    async def wait_closed(self) -> None:
        """Wait until the session ended (both sides closed, or an error)."""
        await asyncio.shield(self._driver.ended)

    async def aclose(self, timeout: float = 10.0) -> None:
        """Close gracefully and wait; abort if the peer does not finish within ``timeout``."""
        self.close()
        try:
            await asyncio.wait_for(self.wait_closed(), timeout)
        except TimeoutError:
            self.abort()
            await self.wait_closed()

    async def __aenter__(self) -> Session:
        """Wait for the handshake (``async with await tcpls.connect(...)``)."""
        await self.wait_established()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Abort on an exception; then close gracefully and wait."""
        if exc_info[0] is not None:
            self.abort()
        await self.aclose()

    def __repr__(self) -> str:
        mode = {None: "handshake", True: "tcpls", False: "tls"}[self._core.tcpls]
        state = self._core.state.value
        return f"<tcpls.Session {mode} {state} connections={len(self._core.connections)}>"
