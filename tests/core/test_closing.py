"""Closing (design: Closing, draft-04 §4.5): close_notify handshakes, waiting for ACKs before
close_notify, simultaneous close, plain TLS fallback close, removing one connection."""

from __future__ import annotations

import os

import pytest

from tcpls.core.connection import ConnectionStatus
from tcpls.core.events import ConnectionRemoved, PeerClosed, SessionClosed, SessionEvent
from tcpls.core.session import CoreSession, SessionState
from tcpls.devcert import DevPKI
from tcpls.errors import ConnectionClosedError, TCPLSError
from tcpls.wire.frames import Ack, Ping, StreamFrame
from tests.core.harness import Harness
from tests.core.util import Tap, drain_events, established, send_over


def _close_both(h: Harness, first: str = "client") -> None:
    """``first`` closes; the other closes when it sees PeerClosed (as the I/O layer does)."""
    a, b = (h.client, h.server) if first == "client" else (h.server, h.client)
    b_events = h.server_events if first == "client" else h.client_events
    a.close()
    h.run_until(lambda: PeerClosed() in b_events, limit=5)
    assert not b.closed
    b.close()
    h.run_until(lambda: a.closed and b.closed, limit=5)


def _assert_clean(h: Harness) -> None:
    for session, events in ((h.client, h.client_events), (h.server, h.server_events)):
        assert session.state is SessionState.CLOSED
        assert session.error is None
        assert [e for e in events if isinstance(e, SessionClosed)] == [SessionClosed(None)]
        assert PeerClosed() in events


@pytest.mark.parametrize("first", ["client", "server"])
def test_close_handshake_ends_both_sessions_cleanly(pki: DevPKI, first: str) -> None:
    h = established(pki)
    tap = Tap(h)
    _close_both(h, first)
    _assert_clean(h)
    # each side sent exactly one close_notify (warning alert 0)
    for side in ("client", "server"):
        alerts = [r.content for r in tap.sent_by(side) if r.is_alert]
        assert alerts == [b"\x01\x00"], (side, alerts)


def test_closing_side_waits_in_closing_state(pki: DevPKI) -> None:
    h = established(pki)
    h.client.close()
    assert h.client.state is SessionState.CLOSING
    h.pump()
    assert h.client.close_notify_sent
    assert h.client.state is SessionState.CLOSING  # until the peer's close_notify
    assert h.server.peer_closed and h.server.state is SessionState.ESTABLISHED
    h.client.close()  # a second call changes nothing
    h.server.close()
    h.pump()
    _assert_clean(h)


def test_api_refuses_new_work_while_closing(pki: DevPKI) -> None:
    h = established(pki)
    sid = h.client.open_stream()
    h.client.close()
    with pytest.raises(ConnectionClosedError):
        h.client.send(sid, b"late")
    h.server.close()
    h.pump()
    assert h.client.closed
    with pytest.raises(ConnectionClosedError):
        h.client.open_stream()


def test_close_waits_for_acks_before_close_notify(pki: DevPKI) -> None:
    h = established(pki)
    tap = Tap(h)
    sid = h.client.open_stream()
    h.client.send(sid, b"z" * 1000)
    h.client.close()
    records = send_over(h, h.client, h.server)
    assert [type(f) for r in records for f in r.frames] == [StreamFrame]
    assert not any(r.is_alert for r in records)
    assert not h.client.close_notify_sent
    assert h.client.connections[0].sent_log
    # nothing more while the ACK is delayed
    h.now += 0.010
    assert send_over(h, h.client, h.server) == []
    # the server's ACK goes out at 25 ms; then (and only then) the client's close_notify
    h.now += 0.015
    acks = send_over(h, h.server, h.client)
    # (with the Ping the receiving end of a transfer adds now and then: design: Failure
    # detection)
    assert [f for r in acks for f in r.frames if f != Ping()] == [Ack(0, records[0].sequence)]
    assert not h.client.connections[0].sent_log
    final = send_over(h, h.client, h.server)
    assert [r.content for r in final if r.is_alert] == [b"\x01\x00"]
    assert h.client.close_notify_sent
    assert h.server.read(sid) == b"z" * 1000
    # in the tap, the ACK record precedes the close_notify
    order = [(side, r.is_alert, bool(r.frames)) for side, _, r in tap.records]
    assert order.index(("server", False, True)) < order.index(("client", True, False))
    h.server.close()
    h.pump()
    _assert_clean(h)


def test_close_flushes_everything_queued(pki: DevPKI) -> None:
    h = established(pki)
    payloads = {h.client.open_stream(): os.urandom(n) for n in (1, 70_000, 400_000)}
    for sid, payload in payloads.items():
        h.client.send(sid, payload)
    h.client.close()  # before anything was sent
    h.run_until(lambda: PeerClosed() in h.server_events)
    for sid, payload in payloads.items():
        assert h.server.read(sid) == payload
        # close_notify ends every stream of the peer (final size = what arrived)
        assert h.server.streams[sid].recv.at_eof
    h.server.close()
    h.pump()
    _assert_clean(h)


def test_closing_side_acknowledges_what_it_received(pki: DevPKI) -> None:
    """Before its last record the closing side sends the ACKs it still owes."""
    h = established(pki)
    sid = h.server.open_stream()
    h.server.send(sid, b"data for the client")
    send_over(h, h.server, h.client)
    assert h.server.connections[0].sent_log
    h.client.close()  # its ACK for the server's record is not due yet
    records = send_over(h, h.client, h.server)
    assert any(isinstance(f, Ack) for r in records for f in r.frames)
    assert any(r.is_alert for r in records)
    assert not h.server.connections[0].sent_log
    h.server.close()
    h.pump()
    _assert_clean(h)


def test_both_sides_close_at_once(pki: DevPKI) -> None:
    h = established(pki)
    h.client.close()
    h.server.close()
    h.pump()
    _assert_clean(h)


def test_both_sides_close_at_once_with_data_in_flight(pki: DevPKI) -> None:
    h = established(pki)
    up, down = os.urandom(300_000), os.urandom(200_000)
    a = h.client.open_stream()
    b = h.server.open_stream()
    h.client.send(a, up)
    h.server.send(b, down)
    h.client.close()
    h.server.close()
    h.run_until(lambda: h.client.closed and h.server.closed, limit=5)
    _assert_clean(h)
    assert h.server.read(a) == up
    assert h.client.read(b) == down


def test_close_during_the_handshake(pki: DevPKI) -> None:
    h = Harness(pki)
    h.client.close()
    assert h.client.closed and h.client.error is None
    h.pump()
    assert not h.server.tcpls


def test_close_then_peer_fin_is_clean(pki: DevPKI) -> None:
    """After both close_notify, the transport ending is no error."""
    h = established(pki)
    _close_both(h)
    h.client.receive_eof(0, h.now)
    h.server.receive_eof(0, h.now)
    h.client.connection_lost(0, None, h.now)
    h.server.connection_lost(0, None, h.now)
    _assert_clean(h)


def test_close_notify_on_every_connection(pki: DevPKI) -> None:
    h = established(pki)
    h.join()
    h.join()
    tap = Tap(h)
    _close_both(h)
    _assert_clean(h)
    for side in ("client", "server"):
        for cid in (0, 1, 2):
            alerts = [r.content for r in tap.sent_by(side, cid) if r.is_alert]
            assert alerts == [b"\x01\x00"], (side, cid, alerts)


def test_close_with_data_spread_over_two_connections(pki: DevPKI) -> None:
    h = established(pki)
    h.join()
    payload = os.urandom(700_000)
    sid = h.client.open_stream()
    h.client.send(sid, payload)
    h.client.close()
    h.run_until(lambda: PeerClosed() in h.server_events, limit=5)
    assert h.server.read(sid) == payload
    assert all(c.records_received for c in h.server.connections.values())
    h.server.close()
    h.pump()
    _assert_clean(h)


def test_simultaneous_close_keeps_data_in_flight_on_another_connection(pki: DevPKI) -> None:
    h = established(pki)
    link = h.join()
    sid = h.server.open_stream()
    payload = os.urandom(600_000)
    h.server.send(sid, payload)
    h.client.close()
    h.server.close()
    h.cut(link, "stall")  # connection 1 is slow: its bytes are held, not lost
    h.pump()
    h.restore(link)
    h.pump()
    assert h.client.read(sid) == payload
    _assert_clean(h)


def test_reply_after_peer_closed_is_not_truncated(pki: DevPKI) -> None:
    """TLS close_notify is a half-close: the side that did not close yet may still send."""
    h = established(pki)
    link = h.join()
    sid = h.server.open_stream()
    h.client.close()
    h.pump()
    assert h.server.peer_closed
    payload = os.urandom(600_000)
    h.cut(link, "stall")
    h.server.send(sid, payload)
    h.server.close()
    h.pump()
    assert not h.client.closed  # connection 1 has not delivered its close_notify yet
    h.restore(link)
    h.pump()
    assert h.client.read(sid) == payload
    _assert_clean(h)


# ---------------------------------------------------------------- plain TLS fallback (design:
# Fallback)


def test_plain_tls_close_handshake(pki: DevPKI) -> None:
    h = Harness(pki, server_tcpls=False)
    h.pump()
    assert h.client.tcpls is False
    h.client.send(0, b"request")
    h.client.close()
    h.pump()
    assert h.server.read(0) == b"request"
    assert PeerClosed() in h.server_events
    assert h.server.streams[0].recv.at_eof
    assert not h.server.closed
    h.server.close()
    h.pump()
    _assert_clean(h)


def test_plain_tls_half_close_then_reply(pki: DevPKI) -> None:
    h = Harness(pki, server_tcpls=False)
    h.pump()
    h.client.send(0, b"request")
    h.client.send_eof(0)  # TLS close_notify is a half-close
    h.pump()
    assert h.server.read(0) == b"request"
    assert h.server.streams[0].recv.at_eof
    h.server.send(0, b"response")
    h.server.send_eof(0)
    h.pump()
    assert h.client.read(0) == b"response"
    h.client.close()
    h.server.close()
    h.pump()
    assert h.client.closed and h.client.error is None
    assert h.server.closed and h.server.error is None


def test_plain_tls_server_closes_first(pki: DevPKI) -> None:
    h = Harness(pki, server_tcpls=False)
    h.pump()
    _close_both(h, first="server")
    _assert_clean(h)


# ---------------------------------------------------------------- removing one connection


def test_removing_one_connection_waits_for_its_acks(pki: DevPKI) -> None:
    h = established(pki)
    h.join()
    sid = h.client.open_stream()
    h.client.pin_stream(sid, 1)
    h.client.send(sid, b"x" * 5000)
    send_over(h, h.client, h.server, cid=1)
    h.client.remove_connection(1)
    conn = h.client.connections[1]
    assert conn.status is ConnectionStatus.DRAINING
    assert not h.client.connection_drained(1)  # its record is not acknowledged yet
    h.client.send(sid, b"y" * 5000)  # new data avoids the draining connection
    assert h.client.transmit(1, h.now) == b""
    h.pump()
    h.advance(0.05)
    assert h.client.connection_drained(1)
    h.client.finish_removal(1)  # the I/O layer sent FIN
    assert 1 not in h.client.connections
    assert ConnectionRemoved(1, None) in h.client_events + _pending(h.client)
    # the peer sees FIN with nothing unacknowledged: a removal, not a failure
    h.server.receive_eof(1, h.now)
    removed = [e for e in h.server_events + _pending(h.server) if isinstance(e, ConnectionRemoved)]
    assert removed == [ConnectionRemoved(1, None)]
    assert h.server.read(sid) == b"x" * 5000 + b"y" * 5000
    assert not h.client.closed and not h.server.closed


def _pending(session: CoreSession) -> list[SessionEvent]:
    return drain_events(session)


def test_fin_without_close_notify_and_unacked_data_is_a_failure(pki: DevPKI) -> None:
    """design: Closing, Failure detection: FIN while the receiver of the FIN still has
    unacknowledged records.
    """
    h = established(pki)
    h.join()
    sid = h.server.open_stream()
    h.server.pin_stream(sid, 1)
    h.server.send(sid, b"q" * 3000)
    send_over(h, h.server, h.client, cid=1)  # delivered, but not yet acknowledged
    assert h.server.connections[1].sent_log
    h.server.receive_eof(1, h.now)
    events = h.server_events + _pending(h.server)
    removed = [e for e in events if isinstance(e, ConnectionRemoved)]
    assert len(removed) == 1 and removed[0].connection_id == 1
    assert isinstance(removed[0].error, TCPLSError)
    assert not h.server.closed
    h.pump()
    h.advance(0.05)
    assert h.client.read(sid) == b"q" * 3000  # reinjected, deduplicated by offset
