"""RTT estimate and suspect connections (design: Failure detection), in memory.

The estimator on its own (:class:`PathTiming`), with hostile ACKs; then sessions in the
harness: a blackholed connection becomes suspect within a probe timeout and its data
goes on the other one at once, long before it is declared failed; a stalled one that
comes back is used again without a join or a Connection Reset; the receiving end
suspects the dead path too; a suspect episode resends no more than its cap.
"""

from __future__ import annotations

import pytest

from tcpls.config import ClientConfig, SessionTuning
from tcpls.core.connection import ConnectionStatus
from tcpls.core.rtt import INITIAL_RTT, MAX_SAMPLE, PathTiming
from tcpls.devcert import DevPKI
from tcpls.errors import ConfigurationError, IllegalParameter
from tcpls.wire.frames import Ack, ConnectionReset
from tests.core.failover_util import Flow, removed, settle
from tests.core.util import Tap, established, inject

DEFAULT = SessionTuning()


# ---------------------------------------------------------------- the estimator


def test_first_sample_then_smoothing() -> None:
    t = PathTiming()
    assert (t.srtt, t.rttvar, t.min_rtt) == (INITIAL_RTT, INITIAL_RTT / 2, None)
    t.sealed(0, 3, 10.0)
    t.acknowledged(3, 10.1)
    assert t.srtt == pytest.approx(0.1) and t.rttvar == pytest.approx(0.05)
    t.sealed(4, 4, 11.0)
    t.acknowledged(4, 11.3)
    # 7/8 and 3/4 of the old values, 1/8 of the sample and 1/4 of the deviation
    assert t.srtt == pytest.approx(0.875 * 0.1 + 0.125 * 0.3)
    assert t.rttvar == pytest.approx(0.75 * 0.05 + 0.25 * 0.2)
    assert t.min_rtt == pytest.approx(0.1) and t.latest_rtt == pytest.approx(0.3)
    assert not t.marks


def test_one_sample_per_ack_from_the_newest_record_it_covers() -> None:
    t = PathTiming()
    t.sealed(0, 1, 1.0)
    t.sealed(2, 2, 1.5)
    t.sealed(5, 6, 2.0)  # (3 and 4: records that elicit no ACK)
    t.acknowledged(4, 2.6)  # covers 0-2: the newest of them left at 1.5
    assert t.samples == 1 and t.latest_rtt == pytest.approx(1.1)
    assert t.oldest == 2.0
    t.acknowledged(4, 2.7)  # nothing new: no sample
    t.acknowledged(5, 2.8)  # part of the last batch
    assert t.samples == 2 and t.latest_rtt == pytest.approx(0.8)
    assert t.oldest == 2.0  # record 6 still waits
    t.acknowledged(6, 2.9)
    assert t.oldest is None


def test_a_peer_that_acknowledges_too_early_cannot_shrink_the_timeout_below_its_floor() -> None:
    t = PathTiming()
    for i in range(50):
        t.sealed(i, i, 5.0 + i)
        t.acknowledged(i, 5.0 + i)  # acknowledged the instant it was sealed
    assert t.srtt == 0 and t.min_rtt == 0
    assert t.probe_timeout(DEFAULT.ack_delay, DEFAULT.suspect_timeout_min) == pytest.approx(
        DEFAULT.suspect_timeout_min
    )


def test_a_peer_that_holds_its_acks_cannot_push_the_timeout_out_of_range() -> None:
    t = PathTiming()
    t.sealed(0, 0, 0.0)
    t.acknowledged(0, 1e9)  # "held" for 30 years
    assert t.latest_rtt == MAX_SAMPLE
    assert t.probe_timeout(DEFAULT.ack_delay, DEFAULT.suspect_timeout_min) < 4 * MAX_SAMPLE
    t.sealed(1, 1, 5.0)
    t.acknowledged(1, 4.0)  # a clock that went back: no negative sample
    assert t.latest_rtt == 0


def test_probe_timeouts_back_off_and_an_ack_resets_them() -> None:
    t = PathTiming()
    t.sealed(0, 0, 0.0)
    t.acknowledged(0, 0.2)
    base = t.probe_timeout(0.025, 0.1)
    t.backoff = 3
    assert t.probe_timeout(0.025, 0.1) == pytest.approx(8 * base)
    t.sealed(1, 1, 1.0)
    t.acknowledged(1, 1.2)
    assert t.backoff == 0


def test_hostile_acks_leave_the_session_and_estimate_sane(pki: DevPKI) -> None:
    h = established(pki)
    conn = h.client.connections[0]
    samples = conn.timing.samples
    # an ACK for a record never sent ends the session (illegal_parameter)
    inject(h, h.server, h.client, [Ack(0, conn.tls.write_protection.sequence + 1000)])
    assert h.client.closed and isinstance(h.client.error, IllegalParameter)
    assert conn.timing.samples == samples


def test_tuning_check() -> None:
    SessionTuning().check()
    for bad in (
        SessionTuning(suspect_timeout_min=0),
        SessionTuning(suspect_resend_bytes=-1),
        SessionTuning(ack_delay=0),
    ):
        with pytest.raises(ConfigurationError):
            bad.check()
    with pytest.raises(ConfigurationError, match="suspect_timeout_min"):
        ClientConfig(tuning=SessionTuning(suspect_timeout_min=1e-6)).check()


# ---------------------------------------------------------------- sessions


def _two_connections(pki: DevPKI, **tuning: object):  # type: ignore[no-untyped-def]
    h = established(pki, tuning=SessionTuning(idle_timeout=None, **tuning))  # type: ignore[arg-type]
    link = h.join()
    settle(h)
    return h, link


def _download(h, flow: Flow, size: int) -> int:  # type: ignore[no-untyped-def]
    sid = flow.open("client")
    flow.send("client", sid, 1)
    h.pump()
    flow.track("server", sid)
    flow.send("server", sid, size)
    flow.finish("server", sid)
    return sid


def _step(h, until, limit: float = 5.0, step: float = 0.01) -> float:  # type: ignore[no-untyped-def]
    start = h.now
    while not until():
        assert h.now - start < limit, "not reached in simulated time"
        h.advance(step)
    return h.now - start


def test_blackholed_connection_is_suspect_and_its_data_moves_at_once(pki: DevPKI) -> None:
    """Default settings: the download completes a few probe timeouts after the cut, long
    before ``ping_after + ping_timeout``; the connection is declared failed only then."""
    h, link = _two_connections(pki)
    flow = Flow(h)
    _download(h, flow, 3_000_000)
    h.advance(0.01)
    h.cut(link, "blackhole")
    server1 = h.server.connections[1]
    took = _step(h, lambda: server1.timing.suspect)
    assert took < 0.3
    assert 1 in h.server.connections and not removed(h.server_events)  # suspect, not failed
    assert h.server.acks.resent_bytes > 0
    took = _step(h, flow.delivered)
    assert took < 0.5, took
    flow.check(complete=False)
    # the hard signals come later: the unanswered Ping after ping_after + ping_timeout
    _step(h, lambda: 1 not in h.server.connections, limit=3.0)
    assert h.now - link_cut_at(h, took) >= 0


def link_cut_at(h, took: float) -> float:  # type: ignore[no-untyped-def]
    return h.now - took


def test_receiving_end_suspects_the_dead_path_too(pki: DevPKI) -> None:
    """The client only receives; the Pings on its ACKs keep a record of its in flight,
    so it suspects a blackholed connection about as fast as the sender does."""
    h, link = _two_connections(pki)
    flow = Flow(h)
    _download(h, flow, 6_000_000)
    for _ in range(5):
        h.advance(0.01)
    assert h.client.connections[1].timing.samples > 0  # the heartbeat was answered
    h.cut(link, "blackhole")
    client1 = h.client.connections[1]
    took = _step(h, lambda: client1.timing.suspect)
    assert took < 0.4, took
    assert 1 in h.client.connections


def test_stalled_connection_comes_back_without_join_or_reset(pki: DevPKI) -> None:
    h, link = _two_connections(pki)
    tap = Tap(h)
    flow = Flow(h)
    _download(h, flow, 2_000_000)
    h.advance(0.01)
    h.cut(link, "stall")  # held, not lost: the path comes back
    server1 = h.server.connections[1]
    _step(h, lambda: server1.timing.suspect)
    assert not server1.usable
    for _ in range(40):
        h.advance(0.01)  # 0.4 s more: still short of ping_after + ping_timeout
    h.restore(link)
    _step(h, lambda: not server1.timing.suspect, limit=1.0)
    assert server1.status is ConnectionStatus.ACTIVE and server1.usable
    _step(h, flow.delivered)
    # more data: the connection carries it again
    before = server1.records_sent
    more = flow.open("server")
    flow.send("server", more, 500_000)
    h.advance(0.01)
    assert server1.records_sent > before
    assert not removed(h.client_events) and not removed(h.server_events)
    assert sorted(h.client.connections) == [0, 1] and h.rejected_joins == 0
    assert not any(isinstance(f, ConnectionReset) for _, _, r in tap.records for f in r.frames)


def test_a_suspect_episode_resends_no_more_than_its_cap(pki: DevPKI) -> None:
    cap = 64 * 1024
    h, link = _two_connections(pki, suspect_resend_bytes=cap)
    flow = Flow(h)
    _download(h, flow, 4_000_000)
    h.advance(0.01)
    h.cut(link, "stall")
    server1 = h.server.connections[1]
    _step(h, lambda: server1.timing.suspect)
    assert 0 < server1.timing.resent_bytes <= cap + 16_384
    assert h.server.acks.resent_bytes == server1.timing.resent_bytes
    # each further probe timeout allows another cap
    backoff = server1.timing.backoff
    _step(h, lambda: server1.timing.backoff > backoff, limit=2.0)
    assert server1.timing.resent_bytes <= server1.timing.backoff * cap + 16_384


def test_a_dead_path_cannot_push_the_receiver_over_its_reassembly_limit(pki: DevPKI) -> None:
    """The hole a stalled connection leaves holds back the receiver's stream; the other
    connection keeps delivering what comes after it. New data stops half the reassembly
    limit past the first byte not acknowledged (design: Backpressure), so the receiver
    never holds more out of order than it allows (it used to end the session with
    illegal_parameter), and the download completes once the hole is sent again."""
    limit = 1 << 20
    h, link = _two_connections(pki, max_reassembly_bytes=limit)
    flow = Flow(h)
    _download(h, flow, 8_000_000)
    h.cut(link, "stall")
    peak = 0
    for _ in range(200):
        h.advance(0.01)
        peak = max(peak, h.client.reassembly_held)
        if flow.delivered():
            break
    assert not h.client.closed and not h.server.closed, h.client.error or h.server.error
    assert peak <= limit
    flow.check(complete=False)


def test_a_range_acknowledged_twice_below_the_base_does_not_stop_the_stream() -> None:
    """Data sent again while its connection was suspect can be acknowledged twice, the
    second time after the base passed it; the base must still move (it used to stop for
    good, and the stream with it once the send window filled)."""
    from tcpls.core.streams import Stream

    stream = Stream(0, local=True)
    for _ in range(3):
        stream.send.append(bytes(100_000))
    stream.send_next = 300_000
    stream.on_acked(0, 100_000, False)
    stream.on_acked(100_000, 100_000, False)
    assert stream.acked_to == stream.send.base == 200_000
    stream.on_acked(50_000, 20_000, False)  # the duplicate's ACK, late
    stream.fin_queued = stream.fin_sent = True
    stream.on_acked(200_000, 100_000, True)
    assert stream.acked_to == 300_000 and stream.fin_acked
