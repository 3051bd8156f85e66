"""In-memory harness: a client and a server session linked by simulated TCP connections.

No sockets, a fake clock. Each :class:`Link` is one TCP connection: bytes
written on one side are delivered, in order, on the next :meth:`Harness.pump`
unless the link is cut. Cutting models the failures of design: Failure detection:

* ``reset``: both ends see the connection lost at once (RST);
* ``blackhole``: bytes silently vanish; nobody is told (a timeout must notice);
* ``stall``: bytes are held (not lost) until the link is restored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from tcpls.config import ClientConfig, ServerConfig, SessionTuning
from tcpls.core.endpoint import ServerEndpoint, client_session
from tcpls.core.events import JoinRequest, SessionEvent
from tcpls.core.session import Session
from tcpls.devcert import DevPKI
from tcpls.errors import ConnectionClosedError


@dataclass
class Link:
    """One simulated TCP connection."""

    client_id: int
    server: Session
    server_id: int
    state: str = "up"  # up, reset, blackhole, stall, closed
    to_server: list[bytes] = field(default_factory=list)
    to_client: list[bytes] = field(default_factory=list)
    client_eof_sent: bool = False
    server_eof_sent: bool = False
    bytes_to_server: int = 0
    bytes_to_client: int = 0


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
        self.server = self.endpoint.new_session()
        self.links: list[Link] = [Link(0, self.server, 0)]
        self.client_events: list[SessionEvent] = []
        self.server_events: list[SessionEvent] = []
        self.rejected_joins = 0
        self.client.connections[0].tls.start()

    # -- driving -------------------------------------------------------------

    def pump(self, max_rounds: int = 10000) -> None:
        """Move bytes until nothing moves."""
        for _ in range(max_rounds):
            moved = False
            for link in list(self.links):
                moved |= self._pump_link(link)
            self._collect_events()
            if not moved:
                return
        raise AssertionError("pump did not settle")

    def _pump_link(self, link: Link) -> bool:
        moved = False
        client, server = self.client, link.server
        if link.state in ("up", "blackhole", "stall"):
            data = (
                client.transmit(link.client_id, self.now)
                if link.client_id in client.connections
                else b""
            )
            if data:
                link.to_server.append(data)
                link.bytes_to_server += len(data)
                moved = True
            data = (
                server.transmit(link.server_id, self.now)
                if link.server_id in server.connections
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
                    server.receive_data(link.server_id, link.to_server.pop(0), self.now)
                    moved = True
                    server = link.server  # a join may have rebound the link
                while link.to_client:
                    client.receive_data(link.client_id, link.to_client.pop(0), self.now)
                    moved = True
            self._route_joins(link)
        return moved

    def _route_joins(self, link: Link) -> None:
        session = link.server
        if session is self.server:
            return
        events = []
        while (ev := session.next_event()) is not None:
            events.append(ev)
        for ev in events:
            if isinstance(ev, JoinRequest):
                routed = self.endpoint.route_join(session.connections[0].tls, ev.token)
                if routed is None:
                    self.rejected_joins += 1
                    # deliver the alert, then the connection is closed by the server
                    data = session.connections[0].tls.data_to_send()
                    if data:
                        self.client.receive_data(link.client_id, data, self.now)
                    link.state = "closed"
                else:
                    session.connections.clear()  # the connection belongs to its session now
                    link.server, link.server_id = routed

    def _collect_events(self) -> None:
        while (ev := self.client.next_event()) is not None:
            self.client_events.append(ev)
        while (ev := self.server.next_event()) is not None:
            self.server_events.append(ev)

    def advance(self, seconds: float) -> None:
        """Move the fake clock, run timers, then pump."""
        self.now += seconds
        self.client.handle_timer(self.now)
        for session in {link.server for link in self.links}:
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
        pending = self.endpoint.new_session()
        link = Link(seq, pending, 0)
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
            link.server.connection_lost(link.server_id, ConnectionClosedError("reset"), self.now)

    def restore(self, link: Link) -> None:
        link.state = "up"
