"""The public asyncio entry points: :func:`connect` and :func:`serve`."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import replace
from typing import Any

from tcpls.aio.session import ConnectionProtocol, Session
from tcpls.config import ClientConfig, ServerConfig
from tcpls.core.endpoint import ServerEndpoint, client_session
from tcpls.core.scheduler import SchedulerName
from tcpls.core.session import Session as CoreSession
from tcpls.errors import InternalError, TCPLSError
from tcpls.tls.connection import TLSConnection

__all__ = ["Server", "connect", "serve"]

logger = logging.getLogger(__name__)

Handler = Callable[[Session], Awaitable[Any]]


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
    """
    config = config or ClientConfig()
    if local_addrs:
        addrs = list(local_addrs)
        return _Connect(lambda: _connect_robust(host, port, config, addrs, scheduler, reliable))
    return _Connect(lambda: _connect(host, port, config, local_addr, scheduler, reliable))


def _effective(config: ClientConfig) -> ClientConfig:
    if config.user_timeout is not None and config.tuning.user_timeout != config.user_timeout:
        config = replace(config, tuning=replace(config.tuning, user_timeout=config.user_timeout))
    return config


async def _connect(
    host: str,
    port: int,
    config: ClientConfig,
    local_addr: tuple[str, int] | None,
    scheduler: SchedulerName,
    reliable: bool,
    sock: socket.socket | None = None,
) -> Session:
    config = _effective(config)
    core = client_session(config, host, scheduler=scheduler, reliable=reliable)
    loop = asyncio.get_running_loop()
    session = Session(core)
    protocol = ConnectionProtocol(session, 0)
    try:
        if sock is not None:
            await loop.create_connection(lambda: protocol, sock=sock)
        else:
            await asyncio.wait_for(
                loop.create_connection(lambda: protocol, host, port, local_addr=local_addr),
                config.connect_timeout,
            )
    except TimeoutError:
        raise TimeoutError(f"timed out connecting to {host}:{port}") from None
    session._join_targets.append((host, port, local_addr))
    core.connections[0].tls.start()
    session._process()
    try:
        await asyncio.wait_for(session.wait_established(), config.tuning.handshake_timeout)
    except TimeoutError:
        session.abort()
        raise TimeoutError(f"the TLS handshake with {host}:{port} timed out") from None
    return session


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
    local_ip = winner.getsockname()[0]
    session = await _connect(host, port, config, None, scheduler, reliable, sock=winner)
    session._join_targets[-1] = (host, port, (local_ip, 0))

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
        session._background(join_late(task))
    return session


def _session_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or every exception of a group) is a session or socket error."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_session_error(e) for e in exc.exceptions)
    return isinstance(exc, TCPLSError | OSError)


class Server:
    """A listening tcpls server, shaped like :class:`asyncio.Server`."""

    def __init__(
        self,
        handler: Handler,
        endpoint: ServerEndpoint,
    ) -> None:
        self._handler = handler
        self._endpoint = endpoint
        self._servers: list[asyncio.AbstractServer] = []
        self._sessions: dict[CoreSession, Session] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        #: Accepted connections whose ClientHello has not come yet.
        self._pending: set[ConnectionProtocol] = set()
        #: The memory of all sessions, as last estimated (see :meth:`_watch_memory`).
        self.memory_use = 0
        self._over_budget = False
        self._watch: asyncio.TimerHandle | None = None
        self._refusals = _RateLimitedLog()
        endpoint.session_gate = self._session_gate

    @property
    def sockets(self) -> list[socket.socket]:
        """The listening sockets."""
        out: list[socket.socket] = []
        for server in self._servers:
            if isinstance(server, asyncio.Server):
                out.extend(server.sockets)
        return out

    @property
    def port(self) -> int:
        """The port of the first listening socket (handy with port 0)."""
        return int(self.sockets[0].getsockname()[1])

    @property
    def sessions(self) -> list[Session]:
        """The sessions currently open."""
        return list(self._sessions.values())

    def _protocol_factory(self) -> asyncio.BaseProtocol:
        config = self._endpoint.config
        if len(self._pending) >= config.max_pending_connections:
            self._refusals.log(
                "refusing connections: %d are already waiting for their ClientHello "
                "(max_pending_connections)",
                len(self._pending),
            )
            return _Refused()
        # No session yet: the first ClientHello says whether this connection starts
        # one or joins one (then it needs none).
        protocol = ConnectionProtocol(
            None, 0, pending=self._endpoint.new_connection(), server=self
        )
        self._pending.add(protocol)
        return protocol

    def _pending_ended(self, protocol: ConnectionProtocol) -> None:
        self._pending.discard(protocol)

    def _session_gate(self) -> str | None:
        """Why a new session may not start now, or ``None`` (design: Server limits)."""
        config = self._endpoint.config
        reason = None
        if self._closing:
            reason = "the server is shutting down"
        elif len(self._sessions) >= config.max_sessions:
            reason = f"{len(self._sessions)} sessions are open (max_sessions)"
        elif self._over_budget:
            reason = (
                f"the sessions hold about {self.memory_use >> 20} MiB "
                f"(memory_budget {config.memory_budget >> 20} MiB)"
            )
        if reason is not None:
            self._refusals.log("refusing a new session: %s", reason)
        return reason

    def _adopt(self, protocol: ConnectionProtocol, core: CoreSession) -> Session:
        """A pending connection started a handshake: give it its session."""
        session = Session(core, server=self)
        self._sessions[core] = session
        protocol.session = session
        session._attach(protocol)
        if self._watch is None:
            self._watch = asyncio.get_running_loop().call_later(
                _WATCH_INTERVAL, self._watch_memory
            )
        return session

    def _watch_memory(self) -> None:
        """Every quarter second while sessions exist: estimate their memory, shed the largest
        while the total is above ``memory_budget`` (design: Server limits)."""
        self._watch = None
        if not self._sessions:
            self.memory_use = 0
            self._over_budget = False
            return
        budget = self._endpoint.config.memory_budget
        uses = [(core.memory_use(), session) for core, session in self._sessions.items()]
        total = sum(use for use, _ in uses)
        if total > budget:
            uses.sort(key=lambda item: item[0], reverse=True)
            for use, session in uses:
                if total <= budget:
                    break
                peer = session.get_extra_info("peername")
                logger.warning(
                    "ending the session of %s, the largest (about %d KiB): the server "
                    "is over its memory budget (%d MiB)",
                    _format_peer(peer),
                    use >> 10,
                    budget >> 20,
                )
                session._core.abort(InternalError("the server is over its memory budget"))
                session._process()
                total -= use
        self.memory_use = total
        self._over_budget = total > budget * 0.9
        self._watch = asyncio.get_running_loop().call_later(_WATCH_INTERVAL, self._watch_memory)

    async def _listen(self, host: str | None, port: int, **kwargs: Any) -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(self._protocol_factory, host, port, **kwargs)
        self._servers.append(server)

    # -- callbacks from sessions -------------------------------------------------

    def _session_established(self, session: Session) -> None:
        if self._closing:
            session.abort()
            return
        task = asyncio.get_running_loop().create_task(self._run_handler(session))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_handler(self, session: Session) -> None:
        try:
            await self._handler(session)
        except Exception as exc:
            if _session_error(exc):
                # the session failed under the handler (peer gone, protocol error)
                logger.debug("session handler ended: %s", exc)
            else:
                logger.warning("session handler failed: %s: %s", exc.__class__.__name__, exc)
                logger.debug("handler traceback", exc_info=True)
            session.abort()
        finally:
            if not session.closed:
                await session.aclose()

    def _session_closed(self, session: Session) -> None:
        self._sessions.pop(session._core, None)

    def _route_join(self, protocol: ConnectionProtocol, tls: TLSConnection, token: bytes) -> None:
        """A pending connection is a join: hand it to the session its token belongs to."""
        transport = protocol.transport
        routed = self._endpoint.route_join(tls, token)
        target = self._sessions.get(routed[0]) if routed is not None else None
        if routed is None or target is None:
            # rejected (illegal_parameter is queued) or the session is gone
            if transport is not None:
                data = tls.data_to_send()
                if data:
                    transport.write(data)
                transport.close()
            return
        protocol.session = target
        protocol.connection_id = routed[1]
        target._attach(protocol)
        target._process()

    # -- addresses (design: Addresses) --------------------------------------------------------

    def advertise(self, address: str) -> int:
        """Advertise another ``"ip:port"`` of this server to all sessions (New Address)."""
        address_id = self._endpoint.advertise(address, self._live_cores())
        for session in self._sessions.values():
            session._schedule_flush()
        return address_id

    def withdraw(self, address: str) -> None:
        """Withdraw an advertised address (Remove Address): clients close connections to it."""
        self._endpoint.withdraw(address, self._live_cores())
        for session in self._sessions.values():
            session._schedule_flush()

    def _live_cores(self) -> list[CoreSession]:
        return [core for core in self._sessions if core.tcpls]

    # -- asyncio.Server shape ----------------------------------------------------

    def close(self) -> None:
        """Stop listening and close every session gracefully."""
        self._closing = True
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        for protocol in list(self._pending):
            if protocol.transport is not None:
                protocol.transport.abort()
        for server in self._servers:
            server.close()
        for session in list(self._sessions.values()):
            session.close()

    async def wait_closed(self) -> None:
        """Wait until the listeners and the sessions are closed."""
        for server in self._servers:
            await server.wait_closed()
        sessions = list(self._sessions.values())
        if sessions:
            await asyncio.wait([asyncio.ensure_future(s.aclose()) for s in sessions], timeout=10)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=10)

    def is_serving(self) -> bool:
        """Whether the server accepts connections."""
        return any(server.is_serving() for server in self._servers)

    async def serve_forever(self) -> None:
        """Accept sessions until cancelled."""
        try:
            await asyncio.Event().wait()
        finally:
            self.close()
            await self.wait_closed()

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        await self.wait_closed()


#: Seconds between two estimates of the sessions' memory.
_WATCH_INTERVAL = 0.25


class _Refused(asyncio.Protocol):
    """A connection accepted beyond ``max_pending_connections``: reset at once."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.abort()


class _RateLimitedLog:
    """One warning a second at most for a repeated refusal, with how many it stands for."""

    def __init__(self, interval: float = 1.0) -> None:
        self._interval = interval
        self._last = -interval
        self._missed = 0

    def log(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last < self._interval:
            self._missed += 1
            return
        if self._missed:
            message += f" ({self._missed} more refused in the last second)"
        self._last, self._missed = now, 0
        logger.warning(message, *args)


def _format_peer(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return "a client"


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
    await server._listen(host, port, **listen_kwargs)
    return server
