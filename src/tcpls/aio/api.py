"""The public asyncio entry points: :func:`connect` and :func:`serve`.

This module owns setting a client's session up: connecting from one local address,
or from several at once (robust establishment). :func:`serve` starts a
:class:`tcpls.aio.server.Server`, which is re-exported here.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import replace
from typing import Any

from tcpls.aio import fastopen
from tcpls.aio.driver import SessionDriver
from tcpls.aio.protocol import ConnectionProtocol
from tcpls.aio.server import Handler, Server
from tcpls.aio.session import Session
from tcpls.config import ClientConfig, ServerConfig
from tcpls.core.endpoint import ServerEndpoint, client_session
from tcpls.core.scheduler import SchedulerName
from tcpls.errors import ConnectionClosedError, TCPLSError
from tcpls.qlog.tracer import trace_session
from tcpls.tls.connection import ConnectionState

__all__ = ["Server", "connect", "serve"]

logger = logging.getLogger(__name__)


class _Connect:
    """What :func:`connect` returns: awaitable, and an async context manager."""

    def __init__(self, coro_factory: Callable[[], Awaitable[Session]]) -> None:
        self._factory = coro_factory
        self._session: Session | None = None

    def __await__(self) -> Generator[Any, None, Session]:
        return self._factory().__await__()

    async def __aenter__(self) -> Session:
        self._session = await self._factory()
        return self._session

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._session is not None
        await self._session.__aexit__(*exc_info)


def connect(
    host: str,
    port: int,
    *,
    config: ClientConfig | None = None,
    local_addr: tuple[str, int] | None = None,
    local_addrs: Sequence[str] | None = None,
    scheduler: SchedulerName = "aggregate",
    reliable: bool = True,
    early_data: bytes | None = None,
) -> _Connect:
    """Open a session to ``host:port``: ``async with tcpls.connect(...) as session``.

    Also usable as ``session = await tcpls.connect(...)``. The TLS handshake
    offers TCPLS; against an ordinary TLS 1.3 server the session is plain TLS
    (``session.tcpls_negotiated`` is false). Raises ``OSError`` when the host
    cannot be reached, :class:`tcpls.errors.ProtocolError` or
    :class:`tcpls.errors.PeerAlert` when the handshake fails,
    :class:`tcpls.errors.CertificateVerificationError` for a bad certificate,
    and ``TimeoutError`` when connecting or the handshake takes too long.

    ``local_addrs`` gives several local addresses (a multihomed host): TCP
    connections are opened from all of them at once, the first one up runs the
    TLS handshake, and each of the others joins the session with the token the
    server sends during that handshake (robust establishment, draft-04 §4.2.2).

    ``early_data`` is the start of the session's first stream, the one the first
    :meth:`Session.open_stream` returns. With ``config.early_data`` and a ticket that
    allows it, it leaves as 0-RTT early data with the ClientHello
    (``session.early_data_accepted`` tells whether the server took it); otherwise, or
    if the server declines it, it is sent once the handshake completes. It arrives
    exactly once either way, but early data can be replayed by an attacker to another
    server: send only requests that are safe to repeat (design: Early data).
    """
    config = config or ClientConfig()
    if local_addrs:
        if early_data:
            raise ValueError("early_data is not available with local_addrs")
        addrs = list(local_addrs)
        return _Connect(lambda: _connect_robust(host, port, config, addrs, scheduler, reliable))
    return _Connect(
        lambda: _connect_one(host, port, config, local_addr, scheduler, reliable, early_data)
    )


def _effective(config: ClientConfig) -> ClientConfig:
    if config.user_timeout is not None and config.tuning.user_timeout != config.user_timeout:
        config = replace(config, tuning=replace(config.tuning, user_timeout=config.user_timeout))
    return config


async def _connect_one(
    host: str,
    port: int,
    config: ClientConfig,
    local_addr: tuple[str, int] | None,
    scheduler: SchedulerName,
    reliable: bool,
    early_data: bytes | None = None,
) -> Session:
    session, _ = await _connect(
        host, port, config, local_addr, scheduler, reliable, early_data=early_data
    )
    return session


async def _connect(
    host: str,
    port: int,
    config: ClientConfig,
    local_addr: tuple[str, int] | None,
    scheduler: SchedulerName,
    reliable: bool,
    sock: socket.socket | None = None,
    early_data: bytes | None = None,
) -> tuple[Session, SessionDriver]:
    """A session over a new TCP connection (``sock`` when given, already connected from
    ``local_addr``), with its driver."""
    config = _effective(config)
    core = client_session(config, host, scheduler=scheduler, reliable=reliable)
    loop = asyncio.get_running_loop()
    trace_session(core, config, loop.time())  # qlog and the session log (design: qlog)
    driver = SessionDriver(core)
    if early_data:
        core.queue_early_data(early_data)
        driver.early_stream = True
    session = Session(driver, target=(host, port, local_addr))
    if config.join_advertised:
        session.follow_advertised()
    protocol = ConnectionProtocol(driver, 0)
    driver.fastopen = config.fastopen
    try:
        if sock is not None:
            await loop.create_connection(lambda: protocol, sock=sock)
        elif config.fastopen:
            await asyncio.wait_for(
                fastopen.open_connection(lambda: protocol, host, port, local_addr),
                config.connect_timeout,
            )
        else:
            await asyncio.wait_for(
                loop.create_connection(lambda: protocol, host, port, local_addr=local_addr),
                config.connect_timeout,
            )
    except TimeoutError:
        raise TimeoutError(f"timed out connecting to {host}:{port}") from None
    first = core.connections.get(0)
    if core.closed or first is None or first.tls.state is not ConnectionState.START:
        # the server closed or reset the connection as soon as it was accepted (a load
        # balancer with no server up does)
        raise ConnectionClosedError(
            f"{host}:{port} closed the connection before the TLS handshake began"
        )
    core.io.start_handshake()
    driver.process()
    try:
        await asyncio.wait_for(session.wait_established(), config.tuning.handshake_timeout)
    except TimeoutError:
        session.abort()
        raise TimeoutError(f"the TLS handshake with {host}:{port} timed out") from None
    return session, driver


async def _tcp_connect(host: str, port: int, local: str, timeout: float) -> socket.socket:
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in local else socket.AF_INET
    infos = await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_STREAM)
    if not infos:
        raise OSError(f"{host} has no address usable from {local}")
    _, _, proto, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM, proto)
    try:
        sock.setblocking(False)
        sock.bind((local, 0))
        await asyncio.wait_for(loop.sock_connect(sock, address), timeout)
    except BaseException:
        sock.close()
        raise
    return sock


async def _connect_robust(
    host: str,
    port: int,
    config: ClientConfig,
    local_addrs: list[str],
    scheduler: SchedulerName,
    reliable: bool,
) -> Session:
    """Connect from several local addresses at once; the first up runs the handshake."""
    config = _effective(config)
    attempts = {
        asyncio.create_task(_tcp_connect(host, port, local, config.connect_timeout)): local
        for local in local_addrs
    }
    winner: socket.socket | None = None
    errors: list[BaseException] = []
    pending = set(attempts)
    ready: list[asyncio.Task[socket.socket]] = []  # connected too, to join later
    while pending and winner is None:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            failure = task.exception()
            if failure is not None:
                errors.append(failure)
            elif winner is None:
                winner = task.result()
            else:
                ready.append(task)
    if winner is None:
        raise errors[0] if errors else OSError(f"cannot connect to {host}:{port}")
    # a rejoin binds the address the session started from
    local = (winner.getsockname()[0], 0)
    session, driver = await _connect(host, port, config, local, scheduler, reliable, sock=winner)

    async def join_late(task: asyncio.Task[socket.socket]) -> None:
        try:
            sock = await task
        except (OSError, TimeoutError):
            return
        try:
            await session.join(host, port, sock=sock)
        except (OSError, TimeoutError, TCPLSError) as exc:
            logger.info("robust establishment: join from %s failed: %s", attempts[task], exc)

    for task in [*ready, *pending]:
        driver.background(join_late(task))
    return session


async def serve(
    handler: Handler,
    host: str | None = None,
    port: int = 0,
    *,
    config: ServerConfig,
    scheduler: SchedulerName = "aggregate",
    reliable: bool = True,
    **listen_kwargs: Any,
) -> Server:
    """Listen on ``host:port`` and run ``await handler(session)`` for every session.

    Shaped like :func:`asyncio.start_server`. The certificate and key of
    ``config`` are read now: a missing or bad file raises
    :class:`tcpls.errors.ConfigurationError` before anything listens. When the
    handler returns, the session is closed gracefully; an exception in one
    handler never stops the server.
    """
    endpoint = ServerEndpoint(config, scheduler=scheduler, reliable=reliable)
    server = Server(handler, endpoint)
    if listen_kwargs.get("sock") is not None:  # a socket of its own (workers, design: Workers)
        await server.listen(None, None, **listen_kwargs)
    else:
        await server.listen(host, port, **listen_kwargs)
    if config.fastopen:
        fastopen.enable_on_listener(server.sockets)
    return server
