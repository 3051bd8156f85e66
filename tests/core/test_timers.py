"""Timers of the session core: a deadline in the past fires once, and liveness probes
wait while the I/O layer does not read (a slow reader is not a dead path)."""

from __future__ import annotations

from tcpls.config import SessionTuning
from tcpls.devcert import DevPKI
from tcpls.wire.frames import Ping
from tests.core.harness import Harness
from tests.core.util import Tap, established


def test_a_due_ack_that_cannot_be_sent_does_not_rearm_its_timer(pki: DevPKI) -> None:
    h = established(pki)
    sid = h.client.open_stream()
    h.client.send(sid, b"x" * 100)
    # deliver the record to the server, but never let the server transmit (paused transport)
    data = h.client.transmit(0, h.now)
    h.server.receive_data(0, data, h.now)
    deadline = h.server.next_deadline()
    assert deadline is not None and deadline > h.now  # the ACK delay
    for step in range(1, 6):
        now = deadline + step * 0.001
        h.server.handle_timer(now)
        later = h.server.next_deadline()
        assert later is None or later > now, "a past deadline would fire again at once"
    assert h.server.wants_transmit(0)  # the ACK is due and waits for the transport
    h.pump()
    assert not h.server.wants_transmit(0)


def test_no_ping_while_reading_is_paused(pki: DevPKI) -> None:
    """The server's application is slow: the server stops reading. Its own data waits
    for ACKs it does not read; it must not probe, and must not fail the connection."""
    tuning = SessionTuning(ping_after=0.5, ping_timeout=0.5)
    h = established(pki, tuning=tuning)
    sid = h.client.open_stream()
    h.client.send(sid, b"q")
    h.pump()
    h.advance(0.1)  # acknowledged: the client has nothing outstanding
    h.server.send(sid, b"a" * 50_000)
    link = h.links[0]
    h.server.set_reading_paused(True, h.now)
    h.cut(link, "stall")  # nothing the client sends is read
    for _ in range(50):
        h.advance(0.1)
    conn = h.server.connections[0]
    assert not h.server.closed and conn.status.value == "active"
    assert conn.ping_sent_at is None
    h.restore(link)
    h.server.set_reading_paused(False, h.now)
    h.pump()
    h.advance(0.1)
    assert not h.server.closed
    assert h.client.read(sid) == b"a" * 50_000
    assert not h.server.connections[0].sent_log


def test_probes_resume_after_reading_resumes(pki: DevPKI) -> None:
    tuning = SessionTuning(ping_after=0.5, ping_timeout=0.5)
    h = established(pki, tuning=tuning)
    sid = h.server.open_stream()
    h.server.set_reading_paused(True, h.now)
    h.server.set_reading_paused(False, h.now)
    link = h.links[0]
    h.cut(link, "blackhole")  # now the path is really dead
    h.server.send(sid, b"lost")
    h.pump()
    h.run_until(lambda: h.server.closed or 0 not in h.server.connections, limit=5)


def test_a_handshake_that_stalls_ends_at_its_deadline(pki: DevPKI) -> None:
    h = Harness(pki, tuning=SessionTuning(handshake_timeout=3.0))
    hello = h.client.transmit(0, h.now)
    h.server.receive_data(0, hello, h.now)  # the server answers; the client never does
    h.server.handle_timer(h.now + 2.9)
    assert not h.server.closed
    deadline = h.server.next_deadline()
    assert deadline == h.now + 3.0
    h.server.handle_timer(deadline)
    assert h.server.closed and "3 s" in str(h.server.error)


def test_an_idle_session_is_closed(pki: DevPKI) -> None:
    h = established(pki, tuning=SessionTuning(idle_timeout=20.0))
    sid = h.client.open_stream()
    h.client.send(sid, b"hello")
    h.pump()
    for _ in range(19):
        h.advance(1.0)
    assert not h.server.closed
    h.advance(1.5)
    h.run_until(lambda: h.server.closed and h.client.closed, limit=2)
    assert "idle" in str(h.server.error)


def test_a_close_the_peer_never_finishes_is_aborted(pki: DevPKI) -> None:
    h = established(pki, tuning=SessionTuning(close_timeout=2.0))
    h.cut(h.links[0], "blackhole")
    h.server.close()
    h.advance(1.0)
    assert not h.server.closed
    h.advance(1.5)
    assert h.server.closed and "closing" in str(h.server.error)


def test_idle_connections_give_their_buffers_back(pki: DevPKI) -> None:
    h = established(pki)
    sid = h.client.open_stream()
    h.client.send(sid, b"x" * 300_000)
    h.pump()
    reader = h.server.connections[0].tls._reader
    assert reader.capacity > 0
    h.advance(0.5)
    assert reader.capacity > 0
    for _ in range(8):  # a second without data, then the last probes of the receiver
        h.advance(1.0)
    h.advance(0.1)
    assert reader.capacity == 0
    assert h.server.connections[0].tls.buffer_memory == 0
    assert h.server.read(sid) == b"x" * 300_000
    h.client.send(sid, b"more")
    h.pump()
    assert h.server.read(sid) == b"more"


def test_closing_a_long_idle_session_starts_its_deadline_now(pki: DevPKI) -> None:
    """The core's clock only moves with input and timers: close() takes the time."""
    h = established(pki, tuning=SessionTuning(close_timeout=10.0))
    h.advance(2.0)  # buffers given back: no timer left until the idle timeout
    later = h.now + 60.0
    h.now = later
    h.client.close(later)
    h.server.close(later)
    h.client.handle_timer(later)
    assert not h.client.closed  # the close deadline is 10 s from now, not from the past
    h.pump()
    assert h.client.closed and h.client.error is None


def test_a_receiver_notices_a_path_that_died_in_a_transfer(pki: DevPKI) -> None:
    """Only receiving, the client has nothing unacknowledged; when its data stops in the
    middle of a transfer it probes, so a dead path is noticed (and a client can rejoin)."""
    tuning = SessionTuning(ping_after=0.5, ping_timeout=0.5)
    h = established(pki, tuning=tuning)
    sid = h.client.open_stream()
    h.client.send(sid, b"GET")
    h.pump()
    h.server.send(sid, b"d" * 200_000)  # no FIN: more is to come
    h.pump()
    h.advance(0.05)  # everything acknowledged
    assert not h.client.connections[0].sent_log
    h.cut(h.links[0], "blackhole")
    for _ in range(20):
        h.advance(0.1)
    assert 0 not in h.client.connections  # declared failed after ping_after + ping_timeout


def test_a_quiet_receiver_stops_probing(pki: DevPKI) -> None:
    h = established(pki)
    sid = h.client.open_stream()
    h.client.send(sid, b"GET")
    h.pump()
    h.server.send(sid, b"d" * 1000)
    h.pump()
    tap = Tap(h)
    for _ in range(30):
        h.advance(1.0)
    pings = [f for r in tap.sent_by("client") for f in r.frames if isinstance(f, Ping)]
    assert 1 <= len(pings) <= 6  # a few probes after the data stopped, then none
    assert h.client.next_deadline() is None or h.client.next_deadline() > h.now + 60
