"""In-memory harness: a client and a server session linked by simulated TCP connections.

No sockets, a fake clock. Each :class:`Link` is one TCP connection: bytes
written on one side are delivered, in order, on the next :meth:`Harness.pump`
unless the link is cut. Cutting models the failures of design: Failure detection:

* ``reset``: both ends see the connection lost at once (RST);
* ``blackhole``: bytes silently vanish; nobody is told (a timeout must notice);
* ``stall``: bytes are held (not lost) until the link is restored.

Each link also has options for how its ends behave: ``read_size`` (the largest read of
the receiving end, as a socket read is bounded by the buffer it is given) and
``muted`` (the sides that never write on it again).

The harness runs the paths production runs: the server accepts every TCP connection,
the first and every join, through :class:`~tcpls.core.endpoint.PendingConnection`, and
both ends take bytes through the zero-copy ``get_buffer``/``buffer_updated`` pair.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from tcpls.config import ClientConfig, ServerConfig, SessionTuning
from tcpls.core.endpoint import Accepted, PendingConnection, ServerEndpoint, client_session
from tcpls.core.events import SessionEvent
from tcpls.core.session import CoreSession
from tcpls.devcert import DevPKI
from tcpls.errors import ConnectionClosedError


@dataclass
class Link:
    """One simulated TCP connection (its server end is ``pending`` until accepted)."""

    client_id: int
    server: CoreSession | None
    server_id: int
    state: str = "up"  # up, reset, blackhole, stall, closed
    to_server: list[bytes] = field(default_factory=list)
    to_client: list[bytes] = field(default_factory=list)
    client_eof_sent: bool = False
    server_eof_sent: bool = False
    bytes_to_server: int = 0
    bytes_to_client: int = 0
    #: The server's end before its ClientHello was accepted.
    pending: PendingConnection | None = None
    #: The largest read either end makes (0: whatever its buffer takes).
    read_size: int = 0
    #: The sides (``"client"``, ``"server"``) that never write on this link again.
    muted: set[str] = field(default_factory=set)


class Harness:
    """A TCPLS client and server in one process, driven by :meth:`pump`."""

    def __init__(
        self,
        pki: DevPKI,
        *,
        tuning: SessionTuning | None = None,
        client_tcpls: bool = True,
        server_tcpls: bool = True,
        max_connections: int = 4,
        reliable: bool = True,
        scheduler: str = "aggregate",
    ) -> None:
        self.now = 1000.0
        self.tuning = tuning or SessionTuning()
        self.client_config = ClientConfig(
            cafile=str(pki.ca_file),
            server_name="localhost",
            tcpls=client_tcpls,
            tuning=self.tuning,
        )
        self.endpoint = ServerEndpoint(
            ServerConfig(
                certfile=str(pki.cert_file),
                keyfile=str(pki.key_file),
                tcpls=server_tcpls,
                max_connections=max_connections,
                tuning=self.tuning,
            ),
            reliable=reliable,
            scheduler=scheduler,  # type: ignore[arg-type]
        )
        self.client = client_session(
            self.client_config,
            "localhost",
            reliable=reliable,
            scheduler=scheduler,  # type: ignore[arg-type]
        )
        #: The largest read of every link whose own ``read_size`` is 0 (0: no limit).
        self.read_size = 0
        first = Link(0, None, 0, pending=self.endpoint.new_connection())
        self.links: list[Link] = [first]
        self.client_events: list[SessionEvent] = []
        self.server_events: list[SessionEvent] = []
        self.rejected_joins = 0
        self.client.connections[0].tls.start()
        # the server's session exists once the client's first flight is accepted
        self.deliver_to_server(first, self.client.transmit(0, self.now))
        assert first.server is not None, "the server did not accept the ClientHello"
        self.server: CoreSession = first.server

    # -- driving -------------------------------------------------------------

    def pump(self, max_rounds: int = 10000) -> None:
        """Move bytes until nothing moves."""
        for _ in range(max_rounds):
            moved = False
            for link in list(self.links):
                moved |= self.pump_link(link)
            self.collect_events()
            if not moved:
                return
        raise AssertionError("pump did not settle")

    def pump_link(self, link: Link) -> bool:
        moved = False
        client, server = self.client, link.server
        if link.state in ("up", "blackhole", "stall"):
            data = (
                client.transmit(link.client_id, self.now)
                if link.client_id in client.connections and "client" not in link.muted
                else b""
            )
            if data:
                link.to_server.append(data)
                link.bytes_to_server += len(data)
                moved = True
            data = (
                server.transmit(link.server_id, self.now)
                if server is not None
                and link.server_id in server.connections
                and "server" not in link.muted
                else b""
            )
            if data:
                link.to_client.append(data)
                link.bytes_to_client += len(data)
                moved = True
            if link.state == "blackhole":
                link.to_server.clear()
                link.to_client.clear()
            if link.state == "up":
                while link.to_server:
                    self.deliver_to_server(link, link.to_server.pop(0))
                    moved = True
                while link.to_client:
                    self._feed(self.client, link.client_id, link.to_client.pop(0), link)
                    moved = True
        return moved

    def _feed(self, session: CoreSession, cid: int, data: bytes, link: Link) -> None:
        """Deliver ``data`` as the I/O layer does: reads into ``get_buffer``."""
        limit = link.read_size or self.read_size
        view = memoryview(data)
        while view and cid in session.connections:
            target = session.get_buffer(cid)
            n = min(len(target), len(view), limit or len(view))
            target[:n] = view[:n]
            session.buffer_updated(cid, n, self.now)
            view = view[n:]

    def deliver_to_server(self, link: Link, data: bytes) -> None:
        """Deliver to the server's end of ``link``: accept it first if it is pending."""
        view = memoryview(data)
        pending = link.pending
        while view and pending is not None:
            target = pending.get_buffer()
            n = min(len(target), len(view), link.read_size or self.read_size or len(view))
            target[:n] = view[:n]
            view = view[n:]
            outcome = pending.buffer_updated(n, self.now)
            if outcome is None:
                continue
            link.pending = None
            if isinstance(outcome, Accepted):
                link.server, link.server_id = outcome.session, outcome.connection_id
                pending = None
                continue
            # refused: the alert reaches the client, then the server closes
            self.rejected_joins += link.client_id != 0
            alert = pending.tls.data_to_send()
            if alert:
                self._feed(self.client, link.client_id, alert, link)
            link.state = "closed"
            return
        if view and link.server is not None:
            self._feed(link.server, link.server_id, bytes(view), link)

    def collect_events(self) -> None:
        while (ev := self.client.next_event()) is not None:
            self.client_events.append(ev)
        while (ev := self.server.next_event()) is not None:
            self.server_events.append(ev)

    def advance(self, seconds: float) -> None:
        """Move the fake clock, run timers, then pump."""
        self.now += seconds
        self.client.handle_timer(self.now)
        for session in {link.server for link in self.links if link.server is not None}:
            session.handle_timer(self.now)
        self.pump()

    def run_until(
        self, predicate: Callable[[], bool], step: float = 0.005, limit: float = 30.0
    ) -> None:
        """Advance time in steps until ``predicate()`` holds."""
        self.pump()
        waited = 0.0
        while not predicate():
            if waited > limit:
                raise AssertionError("condition not reached in simulated time")
            self.advance(step)
            waited += step

    # -- links -----------------------------------------------------------------

    def join(self) -> Link:
        """Client joins a new TCP connection with a spare token."""
        tls, seq = self.client.start_join()
        link = Link(seq, None, 0, pending=self.endpoint.new_connection())
        self.links.append(link)
        tls.start()
        self.pump()
        return link

    def cut(self, link: Link, how: str) -> None:
        """Cut a link: ``reset``, ``blackhole`` or ``stall``."""
        link.state = how
        if how == "reset":
            link.to_server.clear()
            link.to_client.clear()
            self.client.connection_lost(link.client_id, ConnectionClosedError("reset"), self.now)
            if link.server is not None:
                link.server.connection_lost(
                    link.server_id, ConnectionClosedError("reset"), self.now
                )
            link.pending = None

    def restore(self, link: Link) -> None:
        link.state = "up"
