"""Several TCP connections in one session (draft-04 §4.2, §5.2.4-5.2.8; design: Joins,
Tokens, Retransmission, Addresses, Closing): ACKs that travel on another connection, joins
(held during the handshake, refused, replenished), the schedulers, migration and addresses.

Every transfer is checked byte for byte with :class:`Flow`.
"""

from __future__ import annotations

import ipaddress
import os

import pytest

from tcpls.core.connection import ConnectionStatus
from tcpls.core.endpoint import Refused
from tcpls.core.events import ConnectionAdded, ConnectionRemoved, TokenReceived
from tcpls.core.session import SessionState
from tcpls.devcert import DevPKI
from tcpls.errors import IllegalParameter, PeerAlert
from tcpls.wire.frames import Ack, ConnectionReset, NewAddress, RemoveAddress
from tests.core.failover_util import (
    Flow,
    begin_join,
    covered,
    deliver_join_hello,
    mute,
    pump_rounds,
    removed,
    settle,
    stream_frames,
)
from tests.core.harness import Harness, Link
from tests.core.util import (
    Tap,
    acks_in,
    alerts_received,
    drain_events,
    established,
    frames_in,
    inject,
    send_over,
)


def _after(tap: Tap, mark: int, side: str, cid: int) -> list:
    """The records ``side`` sent on ``cid`` since the Tap held ``mark`` records."""
    return [r for s, c, r in tap.records[mark:] if s == side and c == cid]


# ---------------------------------------------------------------- 6. ACK on another connection


def test_fin_acknowledged_last_on_the_other_connection_wakes_the_writer(pki: DevPKI) -> None:
    """The record carrying FIN (connection 1) is acknowledged before earlier bytes (connection 0).

    The FIN counts as acknowledged only with the ACK for connection 0, which carries
    no FIN: that ACK must wake the writer (``wait_closed``), or a server that waits for
    it never closes its session (``tcpls get --join`` waited out its 5 s ``aclose``).
    """
    h = established(pki)
    h.join()
    settle(h)
    sid = h.client.open_stream()
    h.client.pin_stream(sid, 0)
    h.client.send(sid, b"a" * 40_000)
    on_0 = send_over(h, h.client, h.server, cid=0)
    h.client.pin_stream(sid, 1)
    h.client.send(sid, b"b" * 10_000)
    h.client.send_eof(sid)
    on_1 = send_over(h, h.client, h.server, cid=1)
    assert on_0 and on_1
    stream = h.client.streams[sid]
    h.client.writable.clear()
    inject(h, h.server, h.client, [Ack(1, on_1[-1].sequence)], cid=1)  # the FIN's record
    assert stream.fin_ack_seen and not stream.fin_acked
    inject(h, h.server, h.client, [Ack(0, on_0[-1].sequence)], cid=0)  # the bytes before it
    assert stream.fin_acked
    assert sid in h.client.writable  # wait_closed() returns


def test_ack_for_one_connection_received_on_another_trims_its_log(pki: DevPKI) -> None:
    h = established(pki)
    h.join()
    settle(h)
    sid = h.client.open_stream()
    h.client.pin_stream(sid, 1)
    payload = os.urandom(5 * 16_369)
    h.client.send(sid, payload)
    records = send_over(h, h.client, h.server, cid=1)  # five records on connection 1
    assert len(records) == 5
    conn1 = h.client.connections[1]
    assert [seq for seq, _, _ in conn1.sent_log] == [r.sequence for r in records]
    # the server's ACK delay expires, and connection 1 does not carry the ACK in time
    # (design: ACK policy); the server transmits on connection 0 only
    h.now += 2 * h.tuning.ack_delay
    h.server.handle_timer(h.now)
    on_0 = send_over(h, h.server, h.client, cid=0)
    assert acks_in(on_0) == [Ack(1, records[-1].sequence)]
    assert not conn1.sent_log  # trimmed by ACK(1) that arrived on connection 0
    assert conn1.peer_acked == records[-1].sequence
    assert h.client.unacked_bytes == 0
    assert h.server.transmit(1, h.now) == b""  # nothing is owed on connection 1 any more
    assert h.server.read(sid) == payload
    stream = h.client.streams[sid]
    assert stream.send.base == len(payload)  # the acknowledged bytes were released


def test_bulk_transfer_acknowledged_only_on_the_other_connection(pki: DevPKI) -> None:
    """Data on connection 1, every ACK for it on connection 0 (the server never writes on 1:
    each ACK leaves there once its own connection did not carry it in time)."""
    h = established(pki)
    h.join()
    settle(h)
    tap = Tap(h)
    mute(h, "server", 1)
    flow = Flow(h)
    sid = flow.open("client")
    h.client.pin_stream(sid, 1)
    flow.send("client", sid, 4_000_000)
    flow.finish("client", sid)
    longest = 0
    for _ in range(400):
        pump_rounds(h, 1)  # (256 KiB per round)
        h.now += 0.01  # (an ACK waits 2 x ack_delay for its own connection first)
        h.client.handle_timer(h.now)
        h.server.handle_timer(h.now)
        longest = max(longest, len(h.client.connections[1].sent_log))
        if flow.delivered() and not h.client.connections[1].sent_log:
            break
    flow.check()
    assert not h.client.connections[1].sent_log
    assert h.client.unacked_bytes == 0
    acks_for_1 = [a for a in acks_in(tap.sent_by("server", 0)) if a.connection_id == 1]
    assert acks_for_1  # ACKs on connection 0 trimmed the log
    assert [a.highest_sequence for a in acks_for_1] == sorted(
        {a.highest_sequence for a in acks_for_1}
    )
    assert tap.sent_by("server", 1) == []
    assert covered(tap.sent_by("client", 1), sid) == [(0, 4_000_000)]
    assert longest < 4_000_000 // 16_369 // 2  # the log never held the whole transfer


def test_ack_for_a_removed_connection_is_ignored(pki: DevPKI) -> None:
    h = established(pki)
    link = h.join()
    settle(h)
    sid = h.client.open_stream()
    h.client.pin_stream(sid, 1)
    h.client.send(sid, b"z" * 40_000)
    records = send_over(h, h.client, h.server, cid=1)
    h.cut(link, "reset")  # the client reinjects; the server acknowledged nothing yet
    h.pump()
    settle(h)
    assert h.server.read(sid) == b"z" * 40_000
    # a late ACK for the dead connection (as if delayed on connection 0) changes nothing
    inject(h, h.server, h.client, [Ack(1, records[-1].sequence)], cid=0)
    assert not h.client.closed and 1 not in h.client.connections


# ---------------------------------------------------------------- 7. joins


def test_join_during_the_handshake_is_held_until_the_client_finished(pki: DevPKI) -> None:
    """design: Tokens / draft-04 §4.2.2: token 1 comes in the handshake; a join with it reaches the
    server before the client Finished and is answered only once Finished is verified."""
    h = Harness(pki)
    hello = h.client.transmit(0, h.now)
    h.server.receive_data(0, hello, h.now)
    flight = h.server.transmit(0, h.now)  # ServerHello ... Finished, tcpls_token(1)
    h.client.receive_data(0, flight, h.now)
    assert h.client.state is SessionState.ESTABLISHED
    assert 1 in h.client.tokens
    client_finished = h.client.transmit(0, h.now)  # held back in the network for now
    assert h.server.state is SessionState.HANDSHAKE
    link = begin_join(h)
    deliver_join_hello(h, link)
    assert link.server is h.server and link.server_id == 1
    held = h.server.connections[1]
    assert held.status is ConnectionStatus.HANDSHAKE
    assert h.server.transmit(1, h.now) == b""  # not answered yet
    assert h.rejected_joins == 0
    # the client Finished arrives: the session is established, the join is accepted
    h.server.receive_data(0, client_finished, h.now)
    assert h.server.state is SessionState.ESTABLISHED
    assert held.status is ConnectionStatus.ACTIVE
    h.pump()
    assert h.client.connections[1].status is ConnectionStatus.ACTIVE
    assert ConnectionAdded(1) in h.client_events
    assert ConnectionAdded(1) in h.server_events + drain_events(h.server)
    h.advance(0.1)
    # both connections carry data both ways
    flow = Flow(h)
    up, down = flow.open("client"), flow.open("server")
    flow.send("client", up, 800_000)
    flow.send("server", down, 800_000)
    flow.finish_all()
    flow.run(limit=5)
    flow.check()
    assert all(c.records_received > 5 for c in h.server.connections.values())
    assert all(c.records_received > 5 for c in h.client.connections.values())
    assert sorted(h.client.tokens) == [2, 3]


def test_join_with_an_invalid_token_is_refused_with_illegal_parameter(pki: DevPKI) -> None:
    h = established(pki)
    flow = Flow(h)
    sid = flow.open("client")
    flow.send("client", sid, 500_000)
    pump_rounds(h, 1)
    h.client.tokens[1] = os.urandom(32)  # forged
    link = begin_join(h)
    data = h.client.transmit(1, h.now)
    pending = link.pending
    assert pending is not None
    target = pending.get_buffer()
    target[: len(data)] = data
    outcome = pending.buffer_updated(len(data), h.now)  # the accept path routes the join
    assert isinstance(outcome, Refused) and isinstance(outcome.error, IllegalParameter)
    alert = pending.tls.data_to_send()
    assert alert == b"\x15\x03\x03\x00\x02\x02\x2f"  # plaintext fatal illegal_parameter
    h.client.receive_data(1, alert, h.now)
    link.state = "closed"
    events = drain_events(h.client)
    (gone,) = removed(events)
    assert gone.connection_id == 1
    assert isinstance(gone.error, PeerAlert) and gone.error.alert == 47
    assert 47 in alerts_received(h.client, events)
    # the session itself is untouched
    assert not h.client.closed and not h.server.closed
    assert sorted(h.client.connections) == [0] and sorted(h.server.connections) == [0]
    assert len(h.endpoint.registry) == 3  # the genuine tokens stay valid
    flow.send("client", sid, 100_000)
    flow.finish_all()
    flow.run(limit=5)
    flow.check()
    nxt = h.join()
    assert nxt.client_id == 2 and h.rejected_joins == 0


@pytest.mark.parametrize("when", ["connection_alive", "connection_failed"])
def test_join_with_a_used_token_is_refused(pki: DevPKI, when: str) -> None:
    h = established(pki)
    token1 = h.client.tokens[1]
    link = h.join()
    assert link.client_id == 1
    if when == "connection_failed":
        h.cut(link, "reset")
        h.pump()
        settle(h)
        seq = 1  # the client could try the same Connection ID again
    else:
        seq = 9
    spare = dict(h.client.tokens)
    h.client.tokens.clear()
    h.client.tokens[seq] = token1
    flow = Flow(h)
    sid = flow.open("server")
    flow.send("server", sid, 300_000)
    before = sorted(h.server.connections)
    again = h.join()
    assert again.client_id == seq and again.state == "closed"
    assert h.rejected_joins == 1
    (gone,) = [
        e
        for e in removed(h.client_events)
        if e.connection_id == seq and isinstance(e.error, PeerAlert)
    ]
    assert isinstance(gone.error, PeerAlert) and gone.error.alert == 47
    assert sorted(h.server.connections) == before
    assert not h.client.closed and not h.server.closed
    h.client.tokens.update(spare)
    flow.finish_all()
    flow.run(limit=5)
    flow.check()


def test_join_while_the_server_session_closes_is_refused(pki: DevPKI) -> None:
    h = established(pki)
    h.server.close()
    h.pump()
    assert h.server.state is SessionState.CLOSING  # waits for the client's close_notify
    link = h.join()
    assert link.state == "closed" and h.rejected_joins == 1
    assert 47 in alerts_received(h.client, h.client_events)
    assert not h.client.closed
    h.client.close()
    h.pump()
    assert h.client.closed and h.client.error is None
    assert h.server.closed and h.server.error is None


def test_tokens_are_replenished_with_new_sequences_as_connections_leave(pki: DevPKI) -> None:
    h = established(pki)
    flow = Flow(h)
    sid = flow.open("client")
    connection_ids: list[int] = [0]
    for round_ in range(8):
        link = h.join()
        connection_ids.append(link.client_id)
        flow.send("client", sid, 50_000)
        h.pump()
        if round_ % 2:
            h.cut(link, "reset")
        else:
            # a graceful removal (design: Closing) counts as leaving too
            h.client.remove_connection(link.client_id)
            h.run_until(lambda cid=link.client_id: h.client.connection_drained(cid), limit=2)
            h.client.finish_removal(link.client_id)
            link.state = "closed"
            h.server.receive_eof(link.server_id, h.now)
        settle(h)
        # one live connection + spare tokens = the limit of 4
        assert len(h.client.tokens) == 3, h.client.tokens
        assert len(h.server.connections) == 1
        assert len(h.endpoint.registry) == 3
    received = [e.sequence for e in h.client_events if isinstance(e, TokenReceived)]
    assert received == sorted(set(received))  # never a sequence twice, always increasing
    assert received == list(range(1, 12))
    assert connection_ids == sorted(set(connection_ids))  # no Connection ID reused
    flow.finish_all()
    flow.run(limit=5)
    flow.check()


def test_token_sequences_stop_at_255(pki: DevPKI) -> None:
    """design: Tokens: at most 255 joins per session; afterwards no token is handed out."""
    h = established(pki, max_connections=2)
    for _ in range(254):
        link = h.join()
        h.cut(link, "reset")
        h.pump()
    assert sorted(h.client.tokens) == [255]
    link = h.join()
    assert link.client_id == 255
    h.cut(link, "reset")
    settle(h)
    assert h.client.tokens == {}
    assert not h.client.closed and not h.server.closed
    flow = Flow(h)
    sid = flow.open("server")
    flow.send("server", sid, 100_000)
    flow.finish_all()
    flow.run(limit=5)
    flow.check()


# ---------------------------------------------------------------- 8. schedulers


def _two_connections(pki: DevPKI, scheduler: str = "aggregate") -> tuple[Harness, Tap]:
    h = established(pki, scheduler=scheduler)
    h.join()
    settle(h)
    return h, Tap(h)


def _connections_carrying(tap: Tap, side: str, sid: int) -> set[int]:
    return {
        cid
        for s, cid, r in tap.records
        if s == side and any(f.stream_id == sid and f.data for f in stream_frames([r]))
    }


def test_aggregate_spreads_one_stream_over_both_connections(pki: DevPKI) -> None:
    h, tap = _two_connections(pki)
    flow = Flow(h)
    up, down = flow.open("client"), flow.open("server")
    flow.send("client", up, 3_000_000)
    flow.send("server", down, 3_000_000)
    flow.finish_all()
    flow.run(limit=5)
    flow.check()
    assert _connections_carrying(tap, "client", up) == {0, 1}
    assert _connections_carrying(tap, "server", down) == {0, 1}
    for cid in (0, 1):
        share = sum(len(f.data) for f in stream_frames(tap.sent_by("client", cid)))
        assert share > 500_000  # each connection carried a real share


def test_pin_keeps_a_stream_on_its_connection(pki: DevPKI) -> None:
    h, tap = _two_connections(pki)
    flow = Flow(h)
    pinned, free = flow.open("client"), flow.open("client")
    h.client.pin_stream(pinned, 1)
    flow.send("client", pinned, 1_500_000)
    flow.send("client", free, 1_500_000)
    flow.finish_all()
    flow.run(limit=5)
    flow.check()
    assert _connections_carrying(tap, "client", pinned) == {1}
    assert _connections_carrying(tap, "client", free) == {0, 1}
    with pytest.raises(ValueError):
        h.client.pin_stream(free, 7)


def test_pinned_scheduler_keeps_every_stream_on_one_connection(pki: DevPKI) -> None:
    h, tap = _two_connections(pki, "pinned")
    flow = Flow(h)
    sids = [flow.open("client") for _ in range(4)]
    for _ in range(3):
        for sid in sids:
            flow.send("client", sid, 200_000)
        pump_rounds(h, 1)
    flow.finish_all()
    flow.run(limit=5)
    flow.check()
    homes = [_connections_carrying(tap, "client", sid) for sid in sids]
    assert all(len(home) == 1 for home in homes), homes
    assert set().union(*homes) == {0, 1}  # the streams were spread over the connections


def test_pinned_stream_moves_when_its_connection_fails(pki: DevPKI) -> None:
    h, tap = _two_connections(pki, "pinned")
    flow = Flow(h)
    sid = flow.open("client")
    h.client.pin_stream(sid, 1)
    flow.send("client", sid, 1_000_000)
    pump_rounds(h, 1)
    h.cut(h.links[1], "reset")
    flow.send("client", sid, 500_000)
    flow.finish_all()
    flow.run(limit=5)
    flow.check()
    assert _connections_carrying(tap, "client", sid) == {0, 1}


def test_backup_uses_the_primary_until_it_fails(pki: DevPKI) -> None:
    h, tap = _two_connections(pki, "backup")
    flow = Flow(h)
    up, down = flow.open("client"), flow.open("server")
    flow.send("client", up, 1_500_000)
    flow.send("server", down, 1_500_000)
    pump_rounds(h, 2)
    assert _connections_carrying(tap, "client", up) == {0}
    assert _connections_carrying(tap, "server", down) == {0}
    mark = len(tap.records)
    h.cut(h.links[0], "reset")
    flow.send("client", up, 500_000)
    flow.finish_all()
    flow.run(limit=5)
    flow.check()
    after = tap.records[mark:]
    assert {c for s, c, r in after if stream_frames([r])} == {1}
    assert h.client.scheduler.primary(h.client.connections) == 1


def test_backup_primary_is_the_lowest_usable_connection(pki: DevPKI) -> None:
    """A connection being removed is not usable: the next one becomes the primary."""
    h, tap = _two_connections(pki, "backup")
    flow = Flow(h)
    sid = flow.open("client")
    h.client.remove_connection(0)  # migrate away from connection 0 (design: Closing)
    flow.send("client", sid, 600_000)
    flow.finish_all()
    flow.run(limit=5)
    flow.check()
    assert _connections_carrying(tap, "client", sid) == {1}


def test_scheduler_can_change_at_run_time(pki: DevPKI) -> None:
    h, tap = _two_connections(pki)
    flow = Flow(h)
    sid = flow.open("client")
    flow.send("client", sid, 2_000_000)
    flow.run(limit=5)
    assert _connections_carrying(tap, "client", sid) == {0, 1}
    mark = len(tap.records)
    h.client.scheduler.name = "backup"
    flow.send("client", sid, 2_000_000)
    flow.run(limit=5)
    after = [(s, c, r) for s, c, r in tap.records[mark:] if s == "client" and stream_frames([r])]
    assert after and {c for _, c, _ in after} == {0}
    mark = len(tap.records)
    h.client.scheduler.name = "aggregate"
    flow.send("client", sid, 2_000_000)
    flow.finish_all()
    flow.run(limit=5)
    flow.check()
    after = [(s, c, r) for s, c, r in tap.records[mark:] if s == "client" and stream_frames([r])]
    assert {c for _, c, _ in after} == {0, 1}
    with pytest.raises(ValueError):
        type(h.client.scheduler)("fastest")  # type: ignore[arg-type]


# ---------------------------------------------------------------- 9. migration and addresses


def _remove(h: Harness, link: Link, *, limit: float = 2.0) -> None:
    """Remove the client's connection of ``link`` as the I/O layer would (design: Closing)."""
    cid = link.client_id
    h.client.remove_connection(cid)
    assert h.client.connections[cid].status is ConnectionStatus.DRAINING
    h.run_until(lambda: h.client.connection_drained(cid), limit=limit)
    h.client.finish_removal(cid)  # FIN
    h.pump()  # everything written before the FIN arrives first
    link.state = "closed"
    h.server.receive_eof(link.server_id, h.now)
    h.pump()


def test_migration_away_from_a_connection_loses_nothing(pki: DevPKI) -> None:
    h = established(pki)
    link = h.join()
    settle(h)
    tap = Tap(h)
    flow = Flow(h)
    sid = flow.open("client")
    flow.send("client", sid, 2_000_000)
    pump_rounds(h, 1)
    assert h.client.connections[1].sent_log  # connection 1 carries unacknowledged data
    h.client.remove_connection(1)
    mark = len(tap.records)
    flow.send("client", sid, 1_000_000)
    flow.finish_all()
    pump_rounds(h, 3)
    # no new stream data on the draining connection
    assert not stream_frames(_after(tap, mark, "client", 1))
    h.run_until(lambda: h.client.connection_drained(1), limit=2)
    assert h.client.connections[1].status is ConnectionStatus.DRAINING
    h.client.finish_removal(1)
    assert 1 not in h.client.connections
    h.pump()
    link.state = "closed"
    h.server.receive_eof(1, h.now)
    h.pump()
    flow.run(limit=5)
    flow.check()
    assert ConnectionRemoved(1, None) in h.client_events
    assert [e for e in removed(h.server_events)] == [ConnectionRemoved(1, None)]
    # a removal, not a failure: nobody sent Connection Reset
    assert not any(isinstance(f, ConnectionReset) for _, _, r in tap.records for f in r.frames)
    assert not h.client.closed and not h.server.closed
    settle(h)
    assert sorted(h.client.tokens) == [2, 3, 4]  # the server replenished


def test_migration_with_data_flowing_both_ways_loses_nothing(pki: DevPKI) -> None:
    """The server keeps writing on the connection being removed: at FIN it still has
    unacknowledged records there, so it treats the FIN as a failure (design: Closing) and
    reinjects."""
    h = established(pki)
    link = h.join()
    settle(h)
    flow = Flow(h)
    up, down = flow.open("client"), flow.open("server")
    flow.send("client", up, 1_000_000)
    flow.send("server", down, 1_500_000)
    pump_rounds(h, 1)
    h.client.remove_connection(1)
    h.run_until(lambda: h.client.connection_drained(1), limit=2)
    h.client.finish_removal(1)
    h.pump()
    # the server wrote more on connection 1 meanwhile: lost with the connection
    link.to_client.append(h.server.transmit(1, h.now))
    link.state = "closed"
    h.server.receive_eof(1, h.now)
    (gone,) = removed(h.server_events + drain_events(h.server))
    assert gone.connection_id == 1 and gone.error is not None  # a failure, not a removal
    flow.send("client", up, 200_000)
    flow.finish_all()
    flow.run(limit=5)
    flow.check()
    assert 1 not in h.server.connections
    assert not h.client.closed and not h.server.closed


def test_remove_connection_unpins_its_streams(pki: DevPKI) -> None:
    h = established(pki)
    link = h.join()
    settle(h)
    tap = Tap(h)
    flow = Flow(h)
    sid = flow.open("client")
    h.client.pin_stream(sid, 1)
    flow.send("client", sid, 300_000)
    h.pump()
    mark = len(tap.records)
    _remove(h, link)
    flow.send("client", sid, 300_000)
    flow.finish_all()
    flow.run(limit=5)
    flow.check()
    assert covered(_after(tap, mark, "client", 0), sid) == [(300_000, 600_000)]


def test_advertised_address_reaches_the_client_and_withdrawal_removes_connections(
    pki: DevPKI,
) -> None:
    h = established(pki)
    link = h.join()
    settle(h)
    tap = Tap(h)
    h.server.advertise_address(0, "10.0.0.2", 443)
    h.server.advertise_address(1, "2001:db8::2", 8443)
    h.pump()
    assert h.client.peer_addresses == {0: ("10.0.0.2", 443), 1: ("2001:db8::2", 8443)}
    sent = frames_in(tap.sent_by("server"))
    assert NewAddress(0, ipaddress.ip_address("10.0.0.2"), 443) in sent
    # the client's connection 1 goes to the advertised address, connection 0 does not
    h.client.connections[0].remote_address = ("127.0.0.1", 443)
    h.client.connections[1].remote_address = ("10.0.0.2", 443)
    flow = Flow(h)
    sid = flow.open("client")
    flow.send("client", sid, 1_000_000)
    pump_rounds(h, 1)
    h.server.withdraw_address(0)
    pump_rounds(h, 1)
    assert RemoveAddress(0) in frames_in(tap.sent_by("server"))
    assert h.client.peer_addresses == {1: ("2001:db8::2", 8443)}
    assert h.client.connections[1].status is ConnectionStatus.DRAINING
    assert h.client.connections[0].status is ConnectionStatus.ACTIVE
    h.run_until(lambda: h.client.connection_drained(1), limit=2)
    h.client.finish_removal(1)
    h.pump()
    link.state = "closed"
    h.server.receive_eof(1, h.now)
    flow.finish_all()
    flow.run(limit=5)
    flow.check()
    assert removed(h.server_events) == [ConnectionRemoved(1, None)]
    # MUST ignore a New Address for an ID that was removed (draft-04 §5.2.7)
    h.server.advertise_address(0, "10.0.0.3", 443)
    h.pump()
    assert 0 not in h.client.peer_addresses
    assert not h.client.closed and not h.server.closed


def test_address_frames_are_reinjected_after_a_failure(pki: DevPKI) -> None:
    """design: Retransmission: New Address and Remove Address are retransmittable."""
    h = established(pki)
    link = h.join()
    settle(h)
    h.cut(link, "stall")
    h.server.advertise_address(3, "192.0.2.7", 4433)
    # make sure the frame went on the stalled connection 1
    sent = h.server.transmit(1, h.now)
    assert sent and any(
        isinstance(f, NewAddress)
        for _, _, frames in h.server.connections[1].sent_log
        for f in frames or []
    )
    link.to_client.append(sent)
    h.cut(link, "reset")
    h.pump()
    settle(h)
    assert h.client.peer_addresses == {3: ("192.0.2.7", 4433)}


def test_withdrawn_address_without_matching_connection_changes_nothing(pki: DevPKI) -> None:
    h = established(pki)
    h.join()
    settle(h)
    h.server.advertise_address(0, "10.0.0.2", 443)
    h.pump()
    h.server.withdraw_address(0)
    h.server.withdraw_address(5)  # never advertised: ignored (draft-04 §5.2.8)
    h.pump()
    assert h.client.peer_addresses == {}
    assert all(c.status is ConnectionStatus.ACTIVE for c in h.client.connections.values())
    assert not h.client.closed
