"""The asyncio server: :class:`Server`, the sessions it holds and the limits on them.

This module owns the server side of setting sessions up: listening, the limits on
what clients can make a server hold (design: Server limits), running the handler of
each session, and the table of a server's sessions and of its connections still
waiting for their ClientHello. :func:`tcpls.serve` (in :mod:`tcpls.aio.api`) starts one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from tcpls.aio.driver import SessionDriver
from tcpls.aio.handoff import HandoffChannel
from tcpls.aio.protocol import ConnectionProtocol
from tcpls.aio.ratelog import RateLimitedLog
from tcpls.aio.session import Session
from tcpls.core.endpoint import HandOff, ServerEndpoint
from tcpls.core.session import CoreSession, SessionState
from tcpls.errors import InternalError, TCPLSError
from tcpls.qlog.tracer import trace_session
from tcpls.tls.connection import TLSConnection

__all__ = ["Handler", "Server"]

# The server's messages keep the name of the module that has the public entry points.
logger = logging.getLogger("tcpls.aio.api")

#: What :func:`tcpls.serve` runs for each session.
Handler = Callable[[Session], Awaitable[Any]]


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
        """A server that runs ``handler`` for each session of ``endpoint``; it listens once
        :meth:`listen` is called (:func:`serve` does both)."""
        self._handler = handler
        self._endpoint = endpoint
        self._servers: list[asyncio.Server] = []
        self._table = _SessionTable(
            endpoint, self._session_adopted, self._session_established, self._hand_out
        )
        #: Where joins for the other workers go, and theirs come from (design: Join handoff).
        self._handoff: HandoffChannel | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        self._draining = False
        self._grace_deadline = 0.0
        #: Sessions that started here, and the address ID and port of this worker's own
        #: port (see :meth:`advertise_local_port`).
        self._served = 0
        self._local_port: tuple[int, int] | None = None
        #: The memory of all sessions, as last estimated (see :meth:`_watch_memory`).
        self.memory_use = 0
        self._over_budget = False
        self._watch: asyncio.TimerHandle | None = None
        self._refusals = RateLimitedLog(logger)
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
        return list(self._table.sessions.values())

    async def listen(self, host: str | None, port: int | None, **kwargs: Any) -> None:
        """Listen on ``host:port`` too (:func:`serve` calls this once); ``kwargs`` go to
        :meth:`asyncio.loop.create_server`."""
        loop = asyncio.get_running_loop()
        server = await loop.create_server(self._protocol_factory, host, port, **kwargs)
        self._servers.append(server)
        steering = self._endpoint.config.steering
        if self._handoff is None and steering is not None and steering.handoff_dir is not None:
            self._handoff = HandoffChannel(
                steering.handoff_dir, steering.worker, self._hand_in, self._hand_in
            )
            self._handoff.start(loop)

    @property
    def counters(self) -> dict[str, int]:
        """Sessions open and served, and what this server did with joins that were not
        its own: ``joins_passed`` (to another worker; resumptions of another worker's
        tickets count too), ``joins_received`` (from one), ``joins_not_passed`` (that
        worker was gone or busy) and ``joins_foreign`` (their token named another machine,
        or hand-off is off; refused with illegal_parameter). See design: Join handoff."""
        channel = self._handoff
        return {
            "sessions": len(self._table.sessions),
            "sessions_served": self._served,
            "joins_passed": channel.sent if channel else 0,
            "joins_received": channel.received if channel else 0,
            "joins_not_passed": channel.failed if channel else 0,
            "joins_foreign": self._endpoint.foreign_joins,
        }

    def _hand_out(self, protocol: ConnectionProtocol, outcome: HandOff) -> None:
        """Pass a join to the worker that holds its session."""
        transport = protocol.transport
        channel = self._handoff
        if transport is None or channel is None:
            return
        sock = transport.get_extra_info("socket")
        own = sock.dup() if sock is not None else None
        transport.abort()  # closes this descriptor only: the connection lives on in ``own``
        if own is not None:
            channel.send(outcome.worker, own, outcome.received)

    def _hand_in(self, sock: socket.socket, received: bytes) -> None:
        """Another worker passed a connection here, or one could not be passed: read it as
        a connection just accepted, never to be passed on (a join for another worker is
        then refused with illegal_parameter, a resumption gets a full handshake)."""
        if self._closing:
            sock.close()
            return
        self._make_room()  # (passed joins count among the connections still waiting)
        protocol = ConnectionProtocol(
            None,
            0,
            pending=self._endpoint.new_connection(handed_off=True),
            server=self._table,
            received=received,
        )
        self._table.pending[protocol] = None
        loop = asyncio.get_running_loop()
        task = loop.create_task(self._adopt_socket(loop, protocol, sock))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _adopt_socket(
        self, loop: asyncio.AbstractEventLoop, protocol: ConnectionProtocol, sock: socket.socket
    ) -> None:
        try:
            await loop.connect_accepted_socket(lambda: protocol, sock)
        except OSError as exc:
            self._table.pending_ended(protocol)
            sock.close()
            logger.debug("a connection passed by another worker failed: %s", exc)

    def _protocol_factory(self) -> asyncio.BaseProtocol:
        self._make_room()
        # No session yet: the first ClientHello says whether this connection starts
        # one or joins one (then it needs none).
        protocol = ConnectionProtocol(
            None, 0, pending=self._endpoint.new_connection(), server=self._table
        )
        self._table.pending[protocol] = None
        return protocol

    def _make_room(self) -> None:
        """At ``max_pending_connections``, reset the connection that waited longest."""
        config = self._endpoint.config
        pending = self._table.pending
        if len(pending) >= config.max_pending_connections:
            # Make room by resetting the connection that waited longest: a client sends
            # its ClientHello within a round trip, so only a flood of connections that
            # never send one is cut short, and new clients keep being served
            # (design: Server limits).
            self._refusals.log(
                "resetting connections that waited longest for their ClientHello: %d "
                "are waiting (max_pending_connections)",
                len(pending),
            )
            next(iter(pending)).drop()

    def _session_gate(self) -> str | None:
        """Why a new session may not start now, or ``None`` (design: Server limits)."""
        config = self._endpoint.config
        reason = None
        sessions = len(self._table.sessions)
        if self._closing:
            # (while draining, the listeners are closed: new sessions come only from
            # connections accepted before, or passed by another worker, and are served)
            reason = "the server is shutting down"
        elif sessions >= config.max_sessions:
            # Sessions still in their handshake make room: the one that started first ends,
            # so unanswered hellos cannot lock new clients out (design: Server limits).
            waiting = next(
                (c for c in self._table.sessions if c.state is SessionState.HANDSHAKE), None
            )
            if waiting is None:
                reason = f"{sessions} sessions are open (max_sessions)"
            else:
                self._refusals.log(
                    "ending the oldest handshake to make room: %d sessions", sessions
                )
                self._table.sessions[waiting].abort()
        elif self._over_budget:
            reason = (
                f"the sessions hold about {self.memory_use >> 20} MiB "
                f"(memory_budget {config.memory_budget >> 20} MiB)"
            )
        if reason is not None:
            self._refusals.log("refusing a new session: %s", reason)
        return reason

    def _session_adopted(self, protocol: ConnectionProtocol, core: CoreSession) -> None:
        self._served += 1
        if self._local_port is not None and protocol.transport is not None:
            sockname = protocol.transport.get_extra_info("sockname")
            if isinstance(sockname, tuple):
                address_id, port = self._local_port
                core.advertise_address(address_id, sockname[0], port)
        if self._watch is None:
            self._watch = asyncio.get_running_loop().call_later(
                _WATCH_INTERVAL, self._watch_memory
            )

    def _watch_memory(self) -> None:
        """Every quarter second while sessions exist: estimate their memory, shed the largest
        while the total is above ``memory_budget`` (design: Server limits)."""
        self._watch = None
        table = self._table
        if not table.sessions:
            self.memory_use = 0
            self._over_budget = False
            return
        budget = self._endpoint.config.memory_budget
        uses = [
            (core.memory_use(), session, table.drivers[core])
            for core, session in table.sessions.items()
        ]
        total = sum(use for use, _, _ in uses)
        if total > budget:
            uses.sort(key=lambda item: item[0], reverse=True)
            for use, session, driver in uses:
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
                driver.core.abort(InternalError("the server is over its memory budget"))
                driver.process()
                total -= use
        if total > budget * 0.9:
            total = self._shed_stalled(uses, total, budget)
        self.memory_use = total
        self._over_budget = total > budget * 0.9
        self._watch = asyncio.get_running_loop().call_later(_WATCH_INTERVAL, self._watch_memory)

    def _shed_stalled(
        self, uses: list[tuple[int, Session, SessionDriver]], total: int, budget: int
    ) -> int:
        """Near the budget, new sessions are refused: end the largest sessions in which no
        stream data moved for :data:`_STALLED_FOR` seconds, until the total is back under
        80 % of the budget, so that peers who hold memory and do nothing cannot keep the
        others out (design: Server limits). Returns the new total."""
        now = asyncio.get_running_loop().time()
        stalled = [
            (use, session, driver)
            for use, session, driver in uses
            if use >= _STALLED_MIN
            and not driver.core.closed
            and now - driver.core.clock.last_moved() >= _STALLED_FOR
        ]
        stalled.sort(key=lambda item: item[0], reverse=True)
        for use, session, driver in stalled:
            if total <= budget * 0.8:
                break
            logger.warning(
                "ending the session of %s (about %d KiB, nothing moved for %g s): the server "
                "is near its memory budget (%d MiB) and refusing new sessions",
                _format_peer(session.get_extra_info("peername")),
                use >> 10,
                _STALLED_FOR,
                budget >> 20,
            )
            driver.core.abort(InternalError("the server is near its memory budget"))
            driver.process()
            total -= use
        return total

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

    # -- addresses (design: Addresses) --------------------------------------------------------

    def advertise(self, address: str) -> int:
        """Advertise another ``"ip:port"`` of this server to all sessions (New Address)."""
        address_id = self._endpoint.advertise(address, self._live_cores())
        for driver in self._table.drivers.values():
            driver.schedule_flush()
        return address_id

    def withdraw(self, address: str) -> None:
        """Withdraw an advertised address (Remove Address): clients close connections to it."""
        self._endpoint.withdraw(address, self._live_cores())
        for driver in self._table.drivers.values():
            driver.schedule_flush()

    def _live_cores(self) -> list[CoreSession]:
        return [core for core in self._table.sessions if core.tcpls]

    def advertise_local_port(self, port: int) -> None:
        """Advertise ``port`` to every new session, at the address its client reached
        (New Address): a worker's own port, so that joins come straight to it (design:
        Workers)."""
        self._local_port = (self._endpoint.reserve_address_id(), port)

    async def shutdown(self, grace: float) -> None:
        """Graceful stop: stop listening at once, give the open sessions, and the
        connections already accepted or passed here by another worker, ``grace`` seconds
        to end (or until :meth:`end_grace`), then close the rest with ``close_notify``
        (design: Graceful restart)."""
        self._draining = True
        for server in self._servers:
            server.close()
        loop = asyncio.get_running_loop()
        self._grace_deadline = loop.time() + grace
        table = self._table
        while (table.sessions or table.pending) and loop.time() < self._grace_deadline:
            await asyncio.sleep(0.05)
        self.close()
        await self.wait_closed()

    def end_grace(self) -> None:
        """Cut short the grace period of :meth:`shutdown`: close the sessions now."""
        self._grace_deadline = 0.0

    # -- asyncio.Server shape ----------------------------------------------------

    def close(self) -> None:
        """Stop listening and close every session gracefully."""
        self._closing = True
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        for protocol in list(self._table.pending):
            if protocol.transport is not None:
                protocol.transport.abort()
        for server in self._servers:
            server.close()
        if self._handoff is not None:
            self._handoff.close()  # (kept: its counters stay readable)
        for session in list(self._table.sessions.values()):
            session.close()

    async def wait_closed(self) -> None:
        """Wait until the listeners and the sessions are closed: each session flushes and
        sends ``close_notify`` (10 s at most), then gets 1 s for the peer's before it is
        aborted."""
        sessions = list(self._table.sessions.items())
        if sessions:
            await asyncio.wait([asyncio.ensure_future(_finish(*pair)) for pair in sessions])
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=10)
        # last: from Python 3.12 on, an asyncio server's wait_closed() also waits for the
        # connections it accepted, which the sessions above have just let go of (a linger
        # for the peer's FIN holds them 5 s at most)
        for server in self._servers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 6.0)

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
        """The server itself (it is listening already)."""
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Close the server and wait until it is closed."""
        self.close()
        await self.wait_closed()


class _SessionTable:
    """A server's sessions, and its connections still waiting for their ClientHello.

    It is what those call back: a pending connection (:class:`PendingOwner`) is adopted
    into a new session, handed to the session it joins, or forgotten; a session's
    driver (:class:`SessionObserver`) says when the handshake completed and when the
    session ended.
    """

    def __init__(
        self,
        endpoint: ServerEndpoint,
        adopted: Callable[[ConnectionProtocol, CoreSession], None],
        established: Callable[[Session], None],
        hand_out: Callable[[ConnectionProtocol, HandOff], None],
    ) -> None:
        self._endpoint = endpoint
        self._adopted = adopted
        self._established = established
        self._hand_out = hand_out
        #: Accepted connections whose ClientHello has not come yet.
        #: Connections waiting for their ClientHello, the longest waiting first.
        self.pending: dict[ConnectionProtocol, None] = {}
        #: The open sessions, by core session.
        self.sessions: dict[CoreSession, Session] = {}
        #: The drivers of the open sessions, by core session.
        self.drivers: dict[CoreSession, SessionDriver] = {}

    # -- PendingOwner -------------------------------------------------------------

    def pending_ended(self, protocol: ConnectionProtocol) -> None:
        """``protocol`` no longer waits for its ClientHello."""
        self.pending.pop(protocol, None)

    def adopt(self, protocol: ConnectionProtocol, core: CoreSession) -> SessionDriver:
        """A pending connection started a handshake: give it its session."""
        trace_session(core, self._endpoint.config, asyncio.get_running_loop().time())
        driver = SessionDriver(core, observer=self)
        self.sessions[core] = Session(driver)
        self.drivers[core] = driver
        protocol.owner = driver
        driver.attach(protocol)
        self._adopted(protocol, core)
        return driver

    def joined(
        self,
        protocol: ConnectionProtocol,
        core: CoreSession,
        connection_id: int,
        tls: TLSConnection,
    ) -> None:
        """A pending connection joined ``core``: attach it to that session's driver."""
        transport = protocol.transport
        target = self.drivers.get(core)
        if target is None:  # the session is gone: what the connection has, then close
            if transport is not None:
                data = tls.data_to_send()
                if data:
                    transport.write(data)
                transport.close()
            return
        protocol.owner = target
        protocol.connection_id = connection_id
        target.attach(protocol)
        target.process()

    def hand_off(self, protocol: ConnectionProtocol, outcome: HandOff) -> None:
        """A pending connection is a join for another worker: pass it on."""
        self._hand_out(protocol, outcome)

    # -- SessionObserver ----------------------------------------------------------

    def session_established(self, core: CoreSession) -> None:
        """The handshake completed: the server runs its handler."""
        session = self.sessions.get(core)
        if session is not None:
            self._established(session)

    def session_closed(self, core: CoreSession) -> None:
        """The session ended: forget it."""
        self.sessions.pop(core, None)
        self.drivers.pop(core, None)


#: Seconds between two estimates of the sessions' memory.
_WATCH_INTERVAL = 0.25
#: Near the memory budget, a session this large in which no stream data moved for this
#: many seconds is ended (see Server._shed_stalled).
_STALLED_MIN = 1 << 20
_STALLED_FOR = 10.0
#: Seconds a closing session has to flush and send close_notify, then to get the peer's
#: close_notify, when the server closes (design: Graceful restart).
_FLUSH_WAIT = 10.0
_PEER_CLOSE_WAIT = 1.0


async def _finish(core: CoreSession, session: Session) -> None:
    """Wait for a session the server closed: until it flushed and sent close_notify
    (:data:`_FLUSH_WAIT` at most), then a moment for the peer's; abort it after that. A
    client that keeps its session open does not hold up the server's exit."""
    session.close()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _FLUSH_WAIT
    while not (core.closed or core.close_notify_sent) and loop.time() < deadline:
        await asyncio.sleep(0.05)
    try:
        await asyncio.wait_for(session.wait_closed(), _PEER_CLOSE_WAIT)
    except TimeoutError:
        session.abort()
        await session.wait_closed()


def _format_peer(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return "a client"
