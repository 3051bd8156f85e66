"""A harness for the stateful test: TCP connections modelled closely enough to be fair.

:class:`NetHarness` extends :class:`~tests.core.harness.Harness` (without changing it) with
what a real I/O layer and a real TCP stack do, so that a random test can cut links at any
moment and still demand that nothing is lost:

* each direction of a link (:class:`Path`) is ``up``, ``hold`` (a stalled path: bytes wait,
  TCP delivers them when the path is back) or ``drop`` (bytes vanish: the TCP byte stream
  is broken for good, so the link can only end in a reset); one direction can be cut alone
  (a receiver whose ACK records vanish or are delayed);
* a socket's send buffer holds at most :attr:`NetHarness.window` bytes not yet taken by the
  receiver: then the sender's transport is paused and, if the receiver does not read
  (its application is slow), the sender sees a zero window (``set_flow_blocked``, the
  flow guard of the aio layer);
* reading pauses as the aio layer does: when ``session.reading_paused`` says so, or when
  the application is slow (:meth:`NetHarness.set_app_paused`); ``set_reading_paused`` is
  called either way and nothing is delivered to that side (not even EOF) until it resumes;
  bytes are read whole through ``receive_data`` or, with :attr:`NetHarness.read_size`,
  in reads of that size through ``get_buffer``/``buffer_updated`` (the aio layer's path);
* ``TCP_USER_TIMEOUT``: bytes sent on a direction that does not deliver them for
  ``tuning.user_timeout`` seconds make the sender's socket fail (``connection_lost``);
  an unanswered Ping that TCP delivered (nothing unacknowledged) means a peer that does
  not read: ``set_peer_slow``, as the aio layer does;
* the I/O layer's duties: EOF after ``close_notify`` (after every byte the TLS holds),
  EOF then ``finish_removal`` on a drained connection, close (graceful) or abort (RST) of
  a connection the core dropped; RST reaches the other end when the path delivers it, and
  data sent to a closed socket is answered by RST; with ``auto_rejoin`` a client left
  without a working connection joins again at once (break-before-make), and with
  ``react_to_close`` an application closes when its peer closed;
* :meth:`NetHarness.advance` runs the timers at their deadlines, one by one, as an event
  loop would, and refuses a deadline in the past that does not clear.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

from tcpls.config import SessionTuning
from tcpls.core.connection import ConnectionStatus
from tcpls.core.endpoint import Accepted
from tcpls.core.events import ConnectionRemoved, SessionEvent
from tcpls.core.session import CoreSession, SessionState
from tcpls.devcert import DevPKI
from tcpls.errors import ConnectionClosedError, TCPLSError
from tests.core.harness import Harness, Link

__all__ = ["Closure", "NetHarness", "NetLink", "Path", "Side"]

Side = Literal["client", "server"]
SIDES: tuple[Side, Side] = ("client", "server")

#: What a socket may hold unacknowledged by the receiver's kernel (its send buffer).
WINDOW = 256 * 1024
#: Connections that carry a session, or will (a client without one joins again).
_CARRYING = (ConnectionStatus.ACTIVE, ConnectionStatus.DRAINING, ConnectionStatus.HANDSHAKE)


@dataclass
class Path:
    """One direction of a simulated TCP connection."""

    mode: str = "up"  # up, hold, drop
    queue: deque[bytes] = field(default_factory=deque)
    queued: int = 0  # bytes in the queue
    lost: int = 0  # bytes that vanished (the byte stream is broken for good)
    since: float | None = None  # when the oldest byte still unacknowledged by TCP left
    eof: bool = False  # the sender wrote EOF (it follows the queued bytes)
    eof_delivered: bool = False
    rst: bool = False  # the sender's socket was aborted: RST travels instead of the bytes

    @property
    def unacked(self) -> int:
        """Bytes the sender's kernel still holds (not taken by the receiver's kernel)."""
        return self.queued + self.lost

    def put(self, data: bytes, now: float) -> None:
        if self.mode == "drop":
            self.lost += len(data)
            if self.since is None:
                self.since = now
            return
        self.queue.append(data)
        self.queued += len(data)
        if self.mode == "hold" and self.since is None:
            self.since = now

    def clear(self) -> None:
        self.queue.clear()
        self.queued = 0


@dataclass
class NetLink(Link):
    """A :class:`Link` with both directions, both sockets and the faults it went through."""

    up: Path = field(default_factory=Path)  # client to server
    down: Path = field(default_factory=Path)  # server to client
    client_open: bool = True  # the client's socket exists
    server_open: bool = True
    #: Which ends were told the window is closed (``set_flow_blocked``).
    blocked: dict[str, bool] = field(default_factory=lambda: {"client": False, "server": False})
    #: Anything that could legitimately make a connection fail happened to this link.
    faulted: bool = False

    def path_from(self, side: Side) -> Path:
        return self.up if side == "client" else self.down

    def path_to(self, side: Side) -> Path:
        return self.down if side == "client" else self.up

    def is_open(self, side: Side) -> bool:
        return self.client_open if side == "client" else self.server_open

    def set_closed(self, side: Side) -> None:
        if side == "client":
            self.client_open = False
        else:
            self.server_open = False
        if not (self.client_open or self.server_open):
            self.state = "closed"
            self.up.clear()
            self.down.clear()

    @property
    def working(self) -> bool:
        """Both directions deliver and both sockets exist."""
        return (
            self.state != "closed"
            and self.client_open
            and self.server_open
            and self.up.mode == "up"
            and self.down.mode == "up"
            and not (self.up.lost or self.down.lost)
        )

    @property
    def broken(self) -> bool:
        """Bytes vanished: the link can never carry its TLS records again."""
        return bool(self.up.lost or self.down.lost)


@dataclass
class Closure:
    """When and how a session ended, and what its peer looked like at that moment."""

    now: float
    error: TCPLSError | None
    tokens: int
    connections: int
    saw_peer_close: bool  # the session's ``peer_closed``
    peer_closed: bool  # the peer session ended
    peer_tokens: int
    peer_connections: int


class NetHarness(Harness):
    """The harness of :mod:`tests.core.harness` with TCP and the I/O layer modelled."""

    def __init__(self, pki: DevPKI, *, tuning: SessionTuning, window: int = WINDOW) -> None:
        super().__init__(pki, tuning=tuning)
        self.links = [NetLink(0, self.server, 0)]
        self.window = window
        #: Bytes per read through ``get_buffer``/``buffer_updated`` (``None``: whole
        #: transmissions through ``receive_data``).
        self.read_size: int | None = None
        self.user_timeout = tuning.user_timeout
        #: The application does not read (a slow application).
        self.app_paused: dict[Side, bool] = {"client": False, "server": False}
        #: The I/O layer does not read that side's sockets (``set_reading_paused(True)``).
        self.io_paused: dict[Side, bool] = {"client": False, "server": False}
        #: When stream data of each session last moved: new bytes sent, or delivered in
        #: order (seen from outside: what makes a session not idle, give or take).
        self.activity: dict[Side, float] = {"client": self.now, "server": self.now}
        self._marks: dict[Side, dict[int, tuple[int, int]]] = {"client": {}, "server": {}}
        #: Error of the last ConnectionRemoved of each (side, connection ID).
        self.removed_errors: dict[tuple[Side, int], TCPLSError | None] = {}
        #: ConnectionRemoved events with an error, with the link they happened on.
        self.failures: list[tuple[float, Side, int, TCPLSError, NetLink | None]] = []

        self.closures: dict[Side, Closure] = {}
        #: The application called ``close()``.
        self.app_closed: dict[Side, bool] = {"client": False, "server": False}
        self._moved = False  # bytes moved since the timers last ran
        #: The application closes as soon as it sees that the peer closed (unless slow).
        self.react_to_close = False
        #: A client without a working connection joins again with a spare token.
        self.auto_rejoin = False
        #: A side did not read (its application was slow, or its buffers full) while a
        #: session was closing: the close may not finish in time.
        self.slow_during_close = False
        #: Seconds without traffic when a session began to close by itself (idle timeout).
        self.idle_gap: dict[Side, float] = {}

        self._seen = {"client": 0, "server": 0}
        self._joining = False

    # -- access ------------------------------------------------------------------

    def session(self, side: Side) -> CoreSession:
        return self.client if side == "client" else self.server

    def net_links(self) -> Iterator[NetLink]:
        for link in self.links:
            assert isinstance(link, NetLink)
            yield link

    def _end(self, link: NetLink, side: Side) -> tuple[CoreSession, int]:
        if side == "client":
            return self.client, link.client_id
        return link.server, link.server_id

    def link_of(self, side: Side, cid: int) -> NetLink | None:
        for link in self.net_links():
            if side == "client" and link.client_id == cid:
                return link
            if side == "server" and link.server is self.server and link.server_id == cid:
                return link
        return None

    def _main(self, session: CoreSession) -> Side | None:
        if session is self.client:
            return "client"
        if session is self.server:
            return "server"
        return None

    # -- moving bytes ----------------------------------------------------------------

    def pump(self, max_rounds: int = 10000) -> None:
        for _ in range(max_rounds):
            moved = False
            for link in list(self.net_links()):
                moved |= self.pump_link(link)
            self.collect_events()
            for side in SIDES:
                self.after_read(side)  # the application may have read meanwhile
            moved |= self._io_duties()
            self._note_closures()
            self._note_slow_close()
            if not moved:
                return
        raise AssertionError("pump did not settle")

    def pump_rounds(self, rounds: int) -> None:
        """Move bytes for ``rounds`` rounds only (a transfer may stay part-way)."""
        for _ in range(rounds):
            for link in list(self.net_links()):
                self.pump_link(link)
            self.collect_events()
            self._io_duties()
            self._note_closures()

    def close(self, side: Side, *, pump: bool = True) -> None:
        """The application closes its session."""
        self.app_closed[side] = True
        self.session(side).close()
        if pump:
            self.pump()

    def pump_link(self, link: Link) -> bool:
        assert isinstance(link, NetLink)
        if link.state == "closed":
            return False
        moved = self._send(link, "client") | self._send(link, "server")
        moved |= self._deliver(link, "server") | self._deliver(link, "client")
        self._update_flow(link)
        return moved

    def _send(self, link: NetLink, side: Side) -> bool:
        session, cid = self._end(link, side)
        path = link.path_from(side)
        if not link.is_open(side) or cid not in session.connections or path.rst:
            return False
        if path.unacked >= self.window:
            return False  # the socket's send buffer is full: the transport is paused
        data = session.transmit(cid, self.now)
        if not data:
            return False
        self._moved = True
        main = self._main(session)
        if main is not None:
            self._note_progress(main)
        path.put(data, self.now)
        return True

    def _deliver(self, link: NetLink, side: Side) -> bool:
        """Move what the path toward ``side`` holds, if it delivers and ``side`` reads."""
        path = link.path_to(side)
        if path.mode == "drop":
            if path.queue:
                path.lost += path.queued
                path.since = path.since if path.since is not None else self.now
                path.clear()
            path.rst = False  # an RST that vanished
            return False
        if path.mode != "up":
            return False
        session, cid = self._end(link, side)
        main = self._main(session)
        sender: Side = "server" if side == "client" else "client"
        if not link.is_open(side):
            if path.queue and link.is_open(sender):
                path.clear()
                self._rst(link, sender)  # data for a closed socket: the kernel answers RST
                return True
            path.clear()
            return False
        if path.rst:
            path.rst = False
            path.clear()
            link.set_closed(side)
            session.connection_lost(
                cid, ConnectionClosedError("connection reset by peer"), self.now
            )
            return True
        path.since = None  # the receiver's kernel takes everything in the queue
        if main is not None and self.io_paused[main]:
            return False
        moved = False
        while path.queue:
            data = path.queue.popleft()
            path.queued -= len(data)
            rest = self._feed(link, side, data)
            moved = True
            if rest:
                path.queue.appendleft(rest)  # reading paused: the rest waits in the kernel
                path.queued += len(rest)
            if main is not None and self.io_paused[main]:
                return True
        if path.eof and not path.eof_delivered:
            path.eof_delivered = True
            session, cid = self._end(link, side)
            session.receive_eof(cid, self.now)
            moved = True
        return moved

    def _feed(self, link: NetLink, side: Side, data: bytes) -> bytes:
        """Hand ``data`` to ``side`` as its I/O layer reads it; return what it did not read.

        With :attr:`read_size` unset, in one ``receive_data`` call (the harness's way);
        otherwise as the aio layer's ``BufferedProtocol`` does: ``get_buffer``, at most
        ``read_size`` bytes copied into it, ``buffer_updated``, and reading stops as soon
        as the core asks for it.
        """
        session, cid = self._end(link, side)  # a join may have rebound the link
        main = self._main(session)
        self._moved = True
        if self.read_size is None:
            session.receive_data(cid, data, self.now)
            if main is not None:
                self._note_progress(main)
                self._check_reading(main)
            return b""
        view = memoryview(data)
        pos = 0
        while pos < len(view):
            session, cid = self._end(link, side)
            if cid not in session.connections:
                return b""  # the connection is gone: the aio layer drops what comes
            buffer = session.get_buffer(cid)
            n = min(len(buffer), self.read_size, len(view) - pos)
            assert n > 0, "get_buffer() offered no room (asyncio would fail the connection)"
            buffer[:n] = view[pos : pos + n]
            pos += n
            session.buffer_updated(cid, n, self.now)
            main = self._main(session)
            if main is not None:
                self._note_progress(main)
                if self._check_reading(main):
                    return bytes(view[pos:])
        return b""

    def _note_progress(self, side: Side) -> None:
        """Stream data of ``side`` moved if a stream sent new bytes or delivered more."""
        marks = self._marks[side]
        for sid, stream in self.session(side).streams.items():
            mark = (stream.send_next, stream.recv.delivered)
            if marks.get(sid, (0, 0)) != mark:
                marks[sid] = mark
                self.activity[side] = self.now

    def _rst(self, link: NetLink, toward: Side) -> None:
        """The socket at the other end of ``toward`` was aborted: RST travels to ``toward``."""
        path = link.path_to(toward)
        path.clear()
        if link.is_open(toward) and path.mode != "drop":
            path.rst = True

    def _update_flow(self, link: NetLink) -> None:
        """The flow guard: a sender whose receiver does not read sees a zero window."""
        for sender in SIDES:
            receiver: Side = "server" if sender == "client" else "client"
            session, cid = self._end(link, sender)
            if session is not self.session(sender):
                continue
            blocked = (
                self.io_paused[receiver]
                and link.path_from(sender).mode == "up"
                and link.path_from(sender).unacked >= self.window
                and link.is_open(sender)
            )
            if blocked != link.blocked[sender] and cid in session.connections:
                link.blocked[sender] = blocked
                session.set_flow_blocked(cid, blocked)

    # -- reading pauses ---------------------------------------------------------------

    def _check_reading(self, side: Side) -> bool:
        """After input: pause reading when the core asks for it; return whether paused."""
        session = self.session(side)
        if not self.io_paused[side] and session.reading_paused:
            self.io_paused[side] = True
            session.set_reading_paused(True, self.now)
        return self.io_paused[side]

    def after_read(self, side: Side) -> None:
        """The application read: resume reading the sockets if nothing holds it back."""
        session = self.session(side)
        if self.io_paused[side] and not self.app_paused[side] and not session.reading_paused:
            self.io_paused[side] = False
            session.set_reading_paused(False, self.now)

    def set_app_paused(self, side: Side, paused: bool) -> None:
        """A slow application: the I/O layer stops reading ``side``'s sockets meanwhile."""
        self.app_paused[side] = paused
        session = self.session(side)
        if paused and not self.io_paused[side]:
            self.io_paused[side] = True
            session.set_reading_paused(True, self.now)
        elif not paused:
            self.after_read(side)

    # -- the I/O layer's duties ---------------------------------------------------------

    def collect_events(self) -> None:
        super().collect_events()
        for side, events in (("client", self.client_events), ("server", self.server_events)):
            start = self._seen[side]
            self._seen[side] = len(events)
            for ev in events[start:]:
                self._on_event(side, ev)  # type: ignore[arg-type]

    def _on_event(self, side: Side, ev: SessionEvent) -> None:
        if isinstance(ev, ConnectionRemoved):
            self.removed_errors[(side, ev.connection_id)] = ev.error
            if ev.error is not None:
                link = self.link_of(side, ev.connection_id)
                self.failures.append((self.now, side, ev.connection_id, ev.error, link))

    def _io_duties(self) -> bool:
        moved = False
        client = self.client
        if (
            self.auto_rejoin
            and client.state is SessionState.ESTABLISHED
            and client.tokens
            and not any(c.status in _CARRYING for c in client.connections.values())
        ):
            self.join(pump=False)  # break-before-make: the aio layer joins again at once
            moved = True
        for side in SIDES:
            session = self.session(side)
            if (
                self.react_to_close
                and session.peer_closed
                and session.state is SessionState.ESTABLISHED
                and not self.app_paused[side]
            ):
                self.close(side, pump=False)  # the application sees PeerClosed and closes
                moved = True
        for link in list(self.net_links()):
            if link.state == "closed":
                continue
            for side in SIDES:
                moved |= self._io_duty(link, side)
        return moved

    def _io_duty(self, link: NetLink, side: Side) -> bool:
        session, cid = self._end(link, side)
        if not link.is_open(side) or session is not self.session(side):
            return False
        path = link.path_from(side)
        conn = session.connections.get(cid)
        if session.closed:
            # the session ended: its last bytes (an alert) go, then EOF; the socket reads
            # on until the peer's EOF (the linger of the aio layer)
            if not path.eof:
                data = session.transmit(cid, self.now) if cid in session.connections else b""
                if data:
                    path.put(data, self.now)  # the transport buffers it, paused or not
                path.eof = True
                return True
            if link.path_to(side).eof_delivered:
                link.set_closed(side)
                return True
            return False
        if conn is None or conn.status in (ConnectionStatus.FAILED, ConnectionStatus.CLOSED):
            if conn is None and (side, cid) not in self.removed_errors:
                return False  # a join the client has not started yet
            error = self.removed_errors.get((side, cid))
            if error is None and conn is None:
                path.eof = True  # transport.close(): FIN after the bytes written
            else:
                self._rst(link, "server" if side == "client" else "client")  # abort
            link.set_closed(side)
            return True
        if conn.tls.pending_output or path.unacked >= self.window:
            return False  # EOF follows every byte (the transport is paused meanwhile)
        if conn.tls.close_notify_sent and not path.eof:
            path.eof = True
            return True
        if session.connection_drained(cid):
            path.eof = True
            session.finish_removal(cid)
            self.collect_events()
            return True
        return False

    def _note_slow_close(self) -> None:
        if any(self.io_paused.values()) and any(
            self.session(side).state is not SessionState.ESTABLISHED for side in SIDES
        ):
            self.slow_during_close = True

    def _note_closures(self) -> None:
        for side in SIDES:
            session = self.session(side)
            if session.closed and side not in self.closures:
                peer = self.session("server" if side == "client" else "client")
                self.closures[side] = Closure(
                    self.now,
                    session.error,
                    len(session.tokens),
                    len(session.connections),
                    session.peer_closed,
                    peer.closed,
                    len(peer.tokens),
                    len(peer.connections),
                )

    # -- time ---------------------------------------------------------------------------

    def _sessions(self) -> list[CoreSession]:
        sessions = [self.client]
        for link in self.net_links():
            if link.server not in sessions:
                sessions.append(link.server)
        return sessions

    def _user_deadlines(self) -> Iterator[tuple[float, NetLink, Side]]:
        if self.user_timeout is None:
            return
        for link in self.net_links():
            if link.state == "closed":
                continue
            for side in SIDES:
                path = link.path_from(side)
                if path.since is not None and path.mode != "up" and link.is_open(side):
                    yield path.since + self.user_timeout, link, side

    def _check_slow_peers(self) -> None:
        """What the aio layer does before a Ping counts as unanswered: if TCP holds nothing
        unacknowledged, the Ping reached the peer, which is alive but does not read."""
        timeout = self.tuning.ping_timeout
        for link in self.net_links():
            if link.state == "closed":
                continue
            for side in SIDES:
                session, cid = self._end(link, side)
                conn = session.connections.get(cid)
                if conn is None or conn.ping_sent_at is None or not link.is_open(side):
                    continue
                path = link.path_from(side)
                tcp_unacked = path.lost or (path.mode != "up" and path.queued)
                if self.now >= conn.ping_sent_at + timeout and not tcp_unacked:
                    session.set_peer_slow(cid, self.now)

    def _run_user_timeouts(self) -> None:
        for deadline, link, side in list(self._user_deadlines()):
            if deadline <= self.now and link.is_open(side):
                session, cid = self._end(link, side)
                link.faulted = True
                link.set_closed(side)
                self._rst(link, "server" if side == "client" else "client")
                error = ConnectionClosedError(f"TCP user timeout on connection {cid}")
                session.connection_lost(cid, error, self.now)

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass, running every timer at its deadline (an event loop)."""
        self.pump()  # what is ready goes before time passes
        target = self.now + seconds
        again = 0
        while True:
            # a closed session's timers are no longer run (the aio layer cancels them; see
            # test_a_closed_session_announces_no_deadline)
            deadlines = [
                d
                for s in self._sessions()
                if not s.closed and (d := s.next_deadline()) is not None
            ]
            deadlines += [d for d, _, _ in self._user_deadlines()]
            due = min(deadlines, default=target)
            if due >= target:
                break  # (the timers of ``target`` itself run below)
            if due > self.now:
                self.now = due
                again = 0
            elif self._moved and again < 100:
                # A deadline in the past after bytes moved: data sent after a silence makes
                # the Ping due at once, and the trim deadline comes back (see
                # test_traffic_without_stream_data_announces_no_past_deadline). An event
                # loop runs the timers once more: so do we, but not for ever.
                again += 1
            else:
                # a deadline in the past that handle_timer did not clear: it would fire
                # again and again (design: Timers)
                raise AssertionError(
                    f"a timer deadline in the past ({due}, now {self.now}) re-arms itself: "
                    + "; ".join(_deadlines(s) for s in self._sessions())
                    + f"; user timeouts {list(self._user_deadlines())}"
                )
            self._fire()
        self.now = max(self.now, target)
        self._fire()

    def _fire(self) -> None:
        self._moved = False
        self._check_slow_peers()
        for session in self._sessions():
            session.handle_timer(self.now)
        for side in SIDES:
            session = self.session(side)
            if (
                side not in self.idle_gap
                and not self.app_closed[side]
                and session.state is not SessionState.ESTABLISHED
            ):
                self.idle_gap[side] = self.now - self.activity[side]
        self._run_user_timeouts()
        self.pump()

    # -- links ----------------------------------------------------------------------------

    def join(self, *, pump: bool = True) -> NetLink:
        """Join a new connection with a spare token (``pump=False``: nothing moves after).

        The join's ClientHello reaches the server at once, through the accept path of
        production (:class:`~tcpls.core.endpoint.PendingConnection`); the rest of the
        join crosses the link like any other bytes.
        """
        tls, seq = self.client.start_join()
        tls.start()
        pending = self.endpoint.new_connection()
        view = memoryview(self.client.transmit(seq, self.now))
        outcome = None
        while view and outcome is None:
            target = pending.get_buffer()
            n = min(len(target), len(view))
            target[:n] = view[:n]
            view = view[n:]
            outcome = pending.buffer_updated(n, self.now)
        assert outcome is not None, "the join's ClientHello was not complete"
        if isinstance(outcome, Accepted):
            link = NetLink(seq, outcome.session, outcome.connection_id)
        else:
            # refused (the session is closing or gone): the alert, then the server closes
            link = NetLink(seq, self.server, -1, faulted=True)
            alert = pending.tls.data_to_send()
            if alert:
                link.down.put(alert, self.now)
            link.down.eof = True
            link.set_closed("server")
        self.links.append(link)
        if pump:
            self.pump()
        return link

    def cut(self, link: Link, how: str) -> None:
        """``reset``, ``stall``/``blackhole`` (both ways), or ``hold``/``drop`` one way with
        ``how = "hold:client"`` (the client's bytes wait) or ``"drop:server"`` and so on."""
        assert isinstance(link, NetLink)
        if link.state == "closed":
            return
        link.faulted = True
        if how == "reset":
            self.reset(link)
            return
        if how in ("stall", "blackhole"):
            mode = "hold" if how == "stall" else "drop"
            link.up.mode = link.down.mode = mode
            link.state = how
            return
        mode, _, side = how.partition(":")
        assert mode in ("hold", "drop") and side in SIDES, how
        link.path_from(side).mode = mode
        link.state = "stall" if mode == "hold" else "blackhole"

    def reset(self, link: NetLink) -> None:
        """RST at both ends at once."""
        link.faulted = True
        link.up.clear()
        link.down.clear()
        link.up.rst = link.down.rst = False
        for side in SIDES:
            if link.is_open(side):
                session, cid = self._end(link, side)
                link.set_closed(side)
                session.connection_lost(cid, ConnectionClosedError("reset"), self.now)
        link.state = "closed"

    def restore(self, link: Link) -> None:
        """The path works again; a link whose bytes vanished can only be reset."""
        assert isinstance(link, NetLink)
        if link.state == "closed":
            return
        if link.broken:
            self.reset(link)
            return
        for path in (link.up, link.down):
            path.mode = "up"
        link.state = "up"


def _deadlines(session: CoreSession) -> str:
    """What makes up ``session.next_deadline()`` (for the message of a timer that spins)."""
    t = session.tuning
    parts = [f"{'client' if session.is_client else 'server'} {session.state.value}"]
    for c in session.acks.pending:
        parts.append(f"ack {c.id} at {c.ack_deadline}")
    for c in session.connections.values():
        parts.append(
            f"conn {c.id} {c.status.value} ping_sent_at={c.ping_sent_at} "
            f"ping_pending={c.ping_pending} log={len(c.sent_log)} "
            f"ping at {c.last_receive + t.ping_after} flow_blocked={c.flow_blocked} "
            f"can_send={c.tls.can_send}"
        )
    parts.append(f"next {session.next_deadline()}")
    return ", ".join(parts)
