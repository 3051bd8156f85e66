"""ACK policy (design: ACK policy) and the retransmission log (design: Retransmission).

The receiving side is driven record by record (``send_over`` / ``inject``) on a fake
clock, and what it emits is opened with the peer's keys, so every assertion names the
exact ACK frame (or its absence) at an exact time.
"""

from __future__ import annotations

import ipaddress
import os

import pytest

from tcpls.config import SessionTuning
from tcpls.devcert import DevPKI
from tcpls.errors import IllegalParameter
from tcpls.wire.frames import (
    Ack,
    NewAddress,
    NewToken,
    Padding,
    Ping,
    StreamFrame,
)
from tests.core.harness import Harness
from tests.core.util import (
    Record,
    Tap,
    acks_in,
    established,
    frames_in,
    inject,
    send_over,
)

DEFAULT = SessionTuning()


def _client_records(h: Harness, n: int, size: int = 100, sid: int | None = None) -> list[int]:
    """The client sends ``n`` records of one Stream frame each; return their sequences."""
    if sid is None:
        sid = h.client.open_stream() if not h.client.streams else min(h.client.streams)
    seqs = []
    for _ in range(n):
        h.client.send(sid, os.urandom(size))
        records = send_over(h, h.client, h.server)
        assert len(records) == 1
        seqs.append(records[0].sequence)
    return seqs


def _server_ack_now(h: Harness) -> list[Record]:
    """Whatever the server sends right now on connection 0 (delivered to the client)."""
    return send_over(h, h.server, h.client)


def _frames(records: list[Record]) -> list[list[object]]:
    """The frames of each record, without the Ping that the receiving end of a transfer
    adds to its ACKs now and then (design: Failure detection: the heartbeat)."""
    return [[f for f in r.frames if f != Ping()] for r in records]


def _idle(h: Harness) -> None:
    """The server owes no ACK (other timers, such as Ping probes, may be armed)."""
    conn = h.server.connections[0]
    assert conn.ack_pending_records == 0
    assert not conn.ack_due(h.now + 10.0)
    deadline = h.server.next_deadline()
    assert deadline is None or deadline > h.now + DEFAULT.ack_delay


# ---------------------------------------------------------------- design: ACK policy timing


def test_defaults_are_those_of_w9() -> None:
    assert DEFAULT.ack_records == 16
    assert DEFAULT.ack_bytes == 256 * 1024
    assert DEFAULT.ack_delay == 0.025


def test_fifteen_records_are_acked_after_the_delay(pki: DevPKI) -> None:
    h = established(pki)
    _idle(h)
    t0 = h.now
    seqs = _client_records(h, 15)
    assert h.server.connections[0].ack_pending_records == 15
    assert h.server.next_deadline() == t0 + DEFAULT.ack_delay
    assert not h.server.wants_transmit(0)
    assert h.server.transmit(0, h.now) == b""
    # just before the deadline: still nothing
    h.now = t0 + DEFAULT.ack_delay - 0.001
    h.server.handle_timer(h.now)
    assert not h.server.wants_transmit(0)
    assert h.server.transmit(0, h.now) == b""
    client_conn = h.client.connections[0]
    assert len(client_conn.sent_log) == 15
    # at the deadline: one record holding exactly one ACK for the 15th record
    h.now = t0 + DEFAULT.ack_delay
    h.server.handle_timer(h.now)
    assert h.server.wants_transmit(0)
    records = _server_ack_now(h)
    assert _frames(records) == [[Ack(0, seqs[-1])]]
    assert client_conn.peer_acked == seqs[-1]
    assert len(client_conn.sent_log) == 0
    _idle(h)
    assert h.server.transmit(0, h.now) == b""


def test_delay_runs_from_the_first_unacknowledged_record(pki: DevPKI) -> None:
    h = established(pki)
    t0 = h.now
    _client_records(h, 1)
    h.now = t0 + 0.020
    seqs = _client_records(h, 3)  # later records do not push the deadline back
    assert h.server.next_deadline() == t0 + DEFAULT.ack_delay
    h.now = t0 + DEFAULT.ack_delay
    assert acks_in(_server_ack_now(h)) == [Ack(0, seqs[-1])]


def test_sixteen_records_are_acked_at_once(pki: DevPKI) -> None:
    h = established(pki)
    seqs = _client_records(h, 15)
    assert h.server.transmit(0, h.now) == b""
    seqs += _client_records(h, 1)  # the 16th, with no time passing
    assert h.server.wants_transmit(0)
    records = _server_ack_now(h)
    assert _frames(records) == [[Ack(0, seqs[-1])]]
    assert h.client.connections[0].peer_acked == seqs[-1]
    _idle(h)
    # the count starts again
    more = _client_records(h, 15)
    assert h.server.transmit(0, h.now) == b""
    more += _client_records(h, 1)
    assert acks_in(_server_ack_now(h)) == [Ack(0, more[-1])]


def test_custom_record_count(pki: DevPKI) -> None:
    h = established(pki, tuning=SessionTuning(ack_records=3))
    seqs = _client_records(h, 2)
    assert h.server.transmit(0, h.now) == b""
    seqs += _client_records(h, 1)
    assert acks_in(_server_ack_now(h)) == [Ack(0, seqs[-1])]


def test_byte_threshold_acks_at_once(pki: DevPKI) -> None:
    h = established(pki, tuning=SessionTuning(ack_records=1000, ack_bytes=40_000))
    seqs = _client_records(h, 2, size=16_000)  # 2 x (16000 + 15) bytes < 40000
    assert h.server.transmit(0, h.now) == b""
    seqs += _client_records(h, 1, size=16_000)  # now above 40000
    assert acks_in(_server_ack_now(h)) == [Ack(0, seqs[-1])]


def test_default_byte_threshold(pki: DevPKI) -> None:
    """256 KiB arrive in fewer than 16 records when they are full (16 KiB each)."""
    h = established(pki, tuning=SessionTuning(ack_records=1000))
    full = 16_384 - 15
    n = -(-DEFAULT.ack_bytes // 16_384)  # records whose contents reach 256 KiB
    seqs = _client_records(h, n - 1, size=full)
    assert h.server.transmit(0, h.now) == b""
    seqs += _client_records(h, 1, size=full)
    assert acks_in(_server_ack_now(h)) == [Ack(0, seqs[-1])]


def test_ping_is_acked_at_once(pki: DevPKI) -> None:
    h = established(pki)
    seq = inject(h, h.client, h.server, [Ping()])
    assert h.server.wants_transmit(0)
    assert acks_in(_server_ack_now(h)) == [Ack(0, seq)]
    _idle(h)


def test_ping_after_pending_records_acks_them_all(pki: DevPKI) -> None:
    h = established(pki)
    _client_records(h, 5)
    assert h.server.transmit(0, h.now) == b""
    seq = inject(h, h.client, h.server, [Padding(7), Ping()])
    assert acks_in(_server_ack_now(h)) == [Ack(0, seq)]
    _idle(h)


@pytest.mark.parametrize(
    "frames",
    [
        pytest.param([Padding(1)], id="padding"),
        pytest.param([Padding(300)], id="long-padding"),
        pytest.param([Ack(0, 0)], id="ack"),
        pytest.param([Ack(0, 0), Padding(10)], id="ack-padding"),
        pytest.param([], id="empty"),
    ],
)
def test_ack_and_padding_records_do_not_elicit_an_ack(pki: DevPKI, frames: list[object]) -> None:
    h = established(pki)
    for _ in range(20):  # more than ack_records
        inject(h, h.client, h.server, frames)  # type: ignore[arg-type]
    _idle(h)
    assert not h.server.wants_transmit(0)
    h.now += 1.0
    h.server.handle_timer(h.now)
    assert h.server.transmit(0, h.now) == b""


def test_non_eliciting_records_are_still_covered_by_a_later_ack(pki: DevPKI) -> None:
    h = established(pki)
    inject(h, h.client, h.server, [Padding(4)])
    seq = inject(h, h.client, h.server, [Ping()])
    last = inject(h, h.client, h.server, [Padding(4)])
    # the ACK names the highest record received, the padding one after the Ping included
    assert acks_in(_server_ack_now(h)) == [Ack(0, last)]
    assert last == seq + 1


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(StreamFrame(0, 0, b"x"), id="stream"),
        pytest.param(StreamFrame(0, 0, b"", True), id="empty-fin"),
        pytest.param(NewAddress(3, ipaddress.ip_address("192.0.2.1"), 80), id="addr"),
    ],
)
def test_other_frames_elicit_a_delayed_ack(pki: DevPKI, frame: object) -> None:
    h = established(pki)
    t0 = h.now
    seq = inject(h, h.client, h.server, [frame])  # type: ignore[list-item]
    assert h.server.connections[0].ack_pending_records == 1
    assert h.server.transmit(0, h.now) == b""
    h.now = t0 + DEFAULT.ack_delay
    assert acks_in(_server_ack_now(h)) == [Ack(0, seq)]


def test_new_token_elicits_an_ack_from_the_client(pki: DevPKI) -> None:
    h = established(pki)
    t0 = h.now
    seq = inject(h, h.server, h.client, [NewToken(9, b"k" * 32)])
    assert h.client.transmit(0, h.now) == b""
    h.now = t0 + DEFAULT.ack_delay
    assert acks_in(send_over(h, h.client, h.server)) == [Ack(0, seq)]


def test_pending_ack_rides_on_a_data_record(pki: DevPKI) -> None:
    """design: ACK policy: prefer to append the ACK to an outgoing data record (design: Records:
    after the Stream frame).
    """
    h = established(pki)
    seqs = _client_records(h, 2)
    h.server.send(h.server.open_stream(), b"reply")
    records = _server_ack_now(h)
    assert len(records) == 1
    frames = records[0].frames
    assert [type(f) for f in frames] == [StreamFrame, Ack]
    assert frames[1] == Ack(0, seqs[-1])
    _idle(h)


def test_no_ack_for_a_connection_nothing_arrived_on(pki: DevPKI) -> None:
    """design: ACK policy: never ACK a connection from which nothing was received."""
    h = Harness(pki, tuning=SessionTuning(idle_timeout=None))
    h.pump()
    server_conn = h.server.connections[0]
    assert server_conn.records_received == 0
    assert server_conn.highest_received == -1
    tap = Tap(h)
    # the client acknowledges the New Token record; the server must not answer with an ACK
    h.advance(0.05)
    h.advance(1.0)
    client_acks = acks_in(tap.sent_by("client"))
    assert client_acks and all(a.connection_id == 0 for a in client_acks)
    assert tap.sent_by("server") == []
    assert server_conn.ack_pending_records == 0
    assert h.server.next_deadline() is None


def test_no_ack_for_an_idle_joined_connection(pki: DevPKI) -> None:
    h = established(pki)
    h.join()
    tap = Tap(h)
    up = h.client.open_stream()
    h.client.pin_stream(up, 0)
    h.client.send(up, os.urandom(200_000))
    h.pump()
    down = h.server.open_stream()
    h.server.pin_stream(down, 0)
    h.server.send(down, os.urandom(200_000))
    h.pump()
    h.advance(0.1)
    all_acks = acks_in([r for _, _, r in tap.records])
    assert {a.connection_id for a in all_acks} == {0}
    assert not tap.sent_by("client", 1) and not tap.sent_by("server", 1)


def test_ack_goes_on_its_own_connection_then_on_any(pki: DevPKI) -> None:
    """design: ACK policy: the ACK of a connection goes on that connection (it shows the
    path works both ways; design: Failure detection); one that its own connection did not
    carry within 2 x ack_delay of the first record it covers may travel on another."""
    h = established(pki)
    h.join()
    t0 = h.now
    seq = inject(h, h.client, h.server, [StreamFrame(0, 0, b"on conn 1")], cid=1)
    h.now = t0 + DEFAULT.ack_delay
    h.server.handle_timer(h.now)
    # due, but not on connection 0
    assert h.server.wants_transmit(1) and not h.server.wants_transmit(0)
    assert send_over(h, h.server, h.client, cid=0) == []
    # connection 1 did not send it: once late, connection 0 carries it
    h.now = t0 + 2 * DEFAULT.ack_delay
    assert h.server.next_deadline() == h.now
    h.server.handle_timer(h.now)
    records = send_over(h, h.server, h.client, cid=0)
    assert acks_in(records) == [Ack(1, seq)]
    assert h.server.transmit(1, h.now) == b""


def test_unreliable_mode_sends_no_acks_and_keeps_no_log(pki: DevPKI) -> None:
    h = established(pki, reliable=False)
    tap = Tap(h)
    sid = h.client.open_stream()
    h.client.send(sid, os.urandom(300_000))
    h.client.send_eof(sid)
    h.pump()
    h.advance(0.1)
    assert len(h.server.read(sid)) == 300_000
    assert acks_in([r for _, _, r in tap.records]) == []
    assert not h.client.connections[0].sent_log
    assert h.client.unacked_bytes == 0


# ---------------------------------------------------------------- design: Retransmission: the
# retransmission log


def test_stream_records_are_logged_until_acknowledged(pki: DevPKI) -> None:
    h = established(pki)
    conn = h.client.connections[0]
    sid = h.client.open_stream()
    seqs = []
    for i in range(6):
        h.client.send(sid, bytes([i]) * 1000)
        seqs.append(send_over(h, h.client, h.server)[0].sequence)
    assert [entry[0] for entry in conn.sent_log] == seqs
    assert [entry[1] for entry in conn.sent_log] == [
        [(sid, i * 1000, 1000, False)] for i in range(6)
    ]
    assert all(entry[2] is None or entry[2] == [] for entry in conn.sent_log)
    assert h.client.unacked_bytes == 6000
    stream = h.client.streams[sid]
    assert len(stream.send) == 6000  # kept for retransmission
    # a partial ACK trims the head of the log only
    inject(h, h.server, h.client, [Ack(0, seqs[2])])
    assert [entry[0] for entry in conn.sent_log] == seqs[3:]
    assert conn.peer_acked == seqs[2]
    assert h.client.unacked_bytes == 3000
    assert stream.send.base <= 3000 and stream.send.end == 6000
    # a stale ACK changes nothing
    inject(h, h.server, h.client, [Ack(0, seqs[0])])
    assert [entry[0] for entry in conn.sent_log] == seqs[3:]
    assert conn.peer_acked == seqs[2]
    # the rest
    inject(h, h.server, h.client, [Ack(0, seqs[-1])])
    assert not conn.sent_log
    assert h.client.unacked_bytes == 0
    assert len(stream.send) == 0
    assert not h.client.closed


def test_fin_is_logged_and_acknowledged(pki: DevPKI) -> None:
    h = established(pki)
    conn = h.client.connections[0]
    sid = h.client.open_stream()
    h.client.send_eof(sid)
    (record,) = send_over(h, h.client, h.server)
    assert list(conn.sent_log) in (
        [(record.sequence, [(sid, 0, 0, True)], None)],
        [(record.sequence, [(sid, 0, 0, True)], [])],
    )
    stream = h.client.streams[sid]
    assert not stream.fin_acked
    inject(h, h.server, h.client, [Ack(0, record.sequence)])
    assert stream.fin_acked
    assert not conn.sent_log


def test_ack_records_are_not_logged(pki: DevPKI) -> None:
    h = established(pki)
    client_conn = h.client.connections[0]
    t0 = h.now
    inject(h, h.server, h.client, [Ping()])
    inject(h, h.server, h.client, [StreamFrame(1, 0, b"x")])
    sent_before = client_conn.records_sent
    records = send_over(h, h.client, h.server)  # the Ping is acked at once
    h.now = t0 + 1.0
    records += send_over(h, h.client, h.server)
    assert [type(f) for f in frames_in(records)] == [Ack]
    assert client_conn.records_sent > sent_before
    assert not client_conn.sent_log


def test_new_token_frames_are_logged_until_acknowledged(pki: DevPKI) -> None:
    h = Harness(pki)
    h.pump()
    conn = h.server.connections[0]
    logged = [f for _, _, frames in conn.sent_log for f in (frames or [])]
    assert sorted(f.sequence for f in logged if isinstance(f, NewToken)) == [2, 3]
    assert all(isinstance(f, NewToken) for f in logged)
    assert all(not refs for _, refs, _ in conn.sent_log)
    h.advance(DEFAULT.ack_delay)
    assert not conn.sent_log


def test_records_hold_logged_and_unlogged_frames_together(pki: DevPKI) -> None:
    """A data record that also carries an ACK is logged for its Stream frame only."""
    h = established(pki)
    _client_records(h, 1)
    h.server.send(h.server.open_stream(), b"reply")
    (record,) = _server_ack_now(h)
    conn = h.server.connections[0]
    (entry,) = conn.sent_log
    assert entry[0] == record.sequence
    assert entry[1] == [(1, 0, 5, False)]
    assert not entry[2]


def test_frames_of_a_failed_connection_are_sent_again(pki: DevPKI) -> None:
    """design: Retransmission, Failure detection: frames (not ciphertext) of unacknowledged records
    go out on another
    connection and the receiver delivers the data exactly once."""
    h = established(pki)
    link = h.join()
    sid = h.client.open_stream()
    h.client.pin_stream(sid, 1)
    payload = os.urandom(100_000)
    h.client.send(sid, payload[:40_000])
    h.pump()
    h.cut(link, "stall")  # the rest goes out on connection 1 and is held
    h.client.send(sid, payload[40_000:])
    h.client.send_eof(sid)
    h.pump()
    assert h.client.connections[1].sent_log
    h.cut(link, "reset")
    h.run_until(lambda: sid in h.server.streams and h.server.streams[sid].recv.complete)
    assert h.server.read(sid) == payload
    h.advance(0.1)
    assert not any(c.sent_log for c in h.client.connections.values())
    assert h.client.unacked_bytes == 0


def test_stream_and_ack_in_one_record_are_both_applied(pki: DevPKI) -> None:
    """The common data-path record [Stream][ACK] (design: Records)."""
    h = established(pki)
    seqs = _client_records(h, 3)
    conn = h.client.connections[0]
    assert len(conn.sent_log) == 3
    inject(h, h.server, h.client, [StreamFrame(1, 0, b"reply"), Ack(0, seqs[1])])
    assert h.client.read(1) == b"reply"
    assert [entry[0] for entry in conn.sent_log] == [seqs[2]]
    assert conn.peer_acked == seqs[1]


def test_stream_and_ack_for_a_record_never_sent(pki: DevPKI) -> None:
    h = established(pki)
    inject(h, h.server, h.client, [StreamFrame(1, 0, b"reply"), Ack(0, 10**6)])
    assert h.client.closed
    assert isinstance(h.client.error, IllegalParameter)


def test_several_acks_in_one_record(pki: DevPKI) -> None:
    h = established(pki)
    seqs = _client_records(h, 4)
    inject(h, h.server, h.client, [Ack(0, seqs[0]), Ack(0, seqs[2]), Ack(0, seqs[1])])
    conn = h.client.connections[0]
    assert conn.peer_acked == seqs[2]
    assert [entry[0] for entry in conn.sent_log] == [seqs[3]]
    assert not h.client.closed


# ---------------------------------------------------------------- design: Failure detection: Ping
# probes


def test_ping_probe_when_data_is_outstanding_and_nothing_arrives(pki: DevPKI) -> None:
    h = established(pki, tuning=SessionTuning(ping_after=0.2, ping_timeout=0.2))
    tap = Tap(h)
    h.cut(h.links[0], "blackhole")
    sid = h.client.open_stream()
    h.client.send(sid, b"x" * 1000)
    h.pump()
    assert h.client.connections[0].sent_log
    assert h.client.next_deadline() is not None  # a probe timer is armed
    for _ in range(10):
        h.advance(0.05)
    assert any(isinstance(f, Ping) for r in tap.sent_by("client") for f in r.frames)


def test_tiny_frames_meet_the_unacknowledged_cap_as_full_records_do(pki: DevPKI) -> None:
    """A peer that never acknowledges while one-byte frames leave on hundreds of streams:
    each logged range counts :data:`REF_COST` beyond its byte, so new data stops at the
    cap long before the log holds a cap's worth of ranges (a log entry costs over 100
    bytes; counting bytes alone let the log grow to gigabytes)."""
    from tcpls.config import SessionTuning
    from tcpls.core.acks import REF_COST

    cap = 256 * 1024
    h = established(pki, tuning=SessionTuning(max_unacked_bytes=cap))
    streams = [h.server.open_stream() for _ in range(400)]
    for _ in range(20):
        for sid in streams:
            h.server.send(sid, b"x")
        h.server.transmit(0, h.now)  # sent; the client never gets to acknowledge
    acks = h.server.acks
    assert acks.unacked_cost <= cap + 400 * (1 + REF_COST)  # the cap, and one round past
    assert acks.unacked_refs <= cap // REF_COST + 400
    assert acks.unacked_bytes < 20 * 400  # new data stopped: not everything left
