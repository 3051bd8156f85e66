"""Streams in the session core: IDs and parity (design: Streams), interleaving, implicit
opening, reassembly of reordered and duplicated Stream frames, and the reassembly bound
(design: Limit violations)."""

from __future__ import annotations

import itertools
import os
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tcpls.config import SessionTuning
from tcpls.core.events import StreamOpened
from tcpls.core.session import CoreSession
from tcpls.core.streams import CHUNK_OVERHEAD, HELD_OVERHEAD, ReceiveBuffer
from tcpls.devcert import DevPKI
from tcpls.errors import IllegalParameter
from tcpls.wire.frames import StreamFrame, encode_frames
from tests.core.util import (
    Tap,
    deliver_raw,
    drain_events,
    established,
    inject,
    seal_raw,
)

# ---------------------------------------------------------------- IDs and parity (design: Streams)


def test_stream_ids_client_even_server_odd(pki: DevPKI) -> None:
    h = established(pki)
    assert [h.client.open_stream() for _ in range(4)] == [0, 2, 4, 6]
    assert [h.server.open_stream() for _ in range(4)] == [1, 3, 5, 7]


def test_streams_of_both_sides_are_opened_on_the_peer_in_order(pki: DevPKI) -> None:
    h = established(pki)
    client_ids = [h.client.open_stream() for _ in range(3)]
    server_ids = [h.server.open_stream() for _ in range(3)]
    for sid in client_ids:
        h.client.send(sid, b"c%d" % sid)
    for sid in server_ids:
        h.server.send(sid, b"s%d" % sid)
    h.pump()
    assert [e.stream_id for e in h.server_events if isinstance(e, StreamOpened)] == client_ids
    assert [e.stream_id for e in h.client_events if isinstance(e, StreamOpened)] == server_ids
    for sid in client_ids:
        assert h.server.read(sid) == b"c%d" % sid
        assert h.server.streams[sid].local is False
    for sid in server_ids:
        assert h.client.read(sid) == b"s%d" % sid
        assert h.client.streams[sid].local is False


# ---------------------------------------------------------------- interleaving


def _interleave(session: CoreSession, streams: dict[int, bytes], rng: random.Random) -> None:
    """Write the payloads in random-sized chunks, round robin over the streams."""
    cursors = dict.fromkeys(streams, 0)
    for sid, payload in streams.items():
        if not payload:
            session.send_eof(sid)
    while any(cursors[s] < len(streams[s]) for s in streams):
        for sid, payload in streams.items():
            pos = cursors[sid]
            if pos >= len(payload):
                continue
            n = rng.randint(1, 40_000)
            session.send(sid, payload[pos : pos + n])
            cursors[sid] = pos + n
            if cursors[sid] >= len(payload):
                session.send_eof(sid)


@pytest.mark.parametrize("connections", [1, 2])
def test_interleaved_streams_both_directions_byte_for_byte(pki: DevPKI, connections: int) -> None:
    rng = random.Random(1234 + connections)
    h = established(pki)
    for _ in range(connections - 1):
        h.join()
    assert len(h.client.connections) == connections
    up = {h.client.open_stream(): os.urandom(rng.randint(1, 300_000)) for _ in range(4)}
    down = {h.server.open_stream(): os.urandom(rng.randint(1, 300_000)) for _ in range(3)}
    up[h.client.open_stream()] = b""  # an empty stream: FIN only
    tap = Tap(h) if connections == 1 else None
    # interleave writes of both sides, pumping now and then
    _interleave(h.client, up, rng)
    _interleave(h.server, down, rng)
    h.pump()
    h.run_until(lambda: all(h.server.streams[s].recv.complete for s in up))
    h.run_until(lambda: all(h.client.streams[s].recv.complete for s in down))
    for sid, payload in up.items():
        assert h.server.read(sid) == payload, sid
        assert h.server.streams[sid].recv.at_eof
    for sid, payload in down.items():
        assert h.client.read(sid) == payload, sid
        assert h.client.streams[sid].recv.at_eof
    assert {e.stream_id for e in h.server_events if isinstance(e, StreamOpened)} == set(up)
    assert {e.stream_id for e in h.client_events if isinstance(e, StreamOpened)} == set(down)
    if tap is not None:
        # several streams shared records, and the frames really were interleaved
        stream_frames = [
            [f for f in r.frames if isinstance(f, StreamFrame)] for r in tap.sent_by("client")
        ]
        assert any(len({f.stream_id for f in fs}) > 1 for fs in stream_frames)
        order = [f.stream_id for fs in stream_frames for f in fs if f.data]
        switches = sum(1 for a, b in itertools.pairwise(order) if a != b)
        assert switches > len(up)
    else:
        # both connections carried stream data from the client
        assert all(c.records_received > 3 for c in h.server.connections.values())


def test_several_streams_in_one_record_largest_first(pki: DevPKI) -> None:
    """design: Records: the sender puts Stream frames first, the largest at the start."""
    h = established(pki)
    tap = Tap(h)
    a, b, c = (h.client.open_stream() for _ in range(3))
    h.client.send(a, b"x" * 10)
    h.client.send(b, b"y" * 3000)
    h.client.send(c, b"z" * 700)
    h.pump()
    (record,) = [r for r in tap.sent_by("client") if r.frames]
    frames = [f for f in record.frames if isinstance(f, StreamFrame)]
    assert frames == record.frames and len(frames) == 3
    assert [f.stream_id for f in frames] == [b, c, a]


# ---------------------------------------------------------------- implicit opening (design:
# Streams)


def test_frame_for_higher_client_stream_opens_the_ones_below(pki: DevPKI) -> None:
    h = established(pki)
    inject(h, h.client, h.server, [StreamFrame(6, 0, b"six")])
    assert drain_events(h.server) == [StreamOpened(0), StreamOpened(2), StreamOpened(4),
                                      StreamOpened(6)]  # fmt: skip
    assert sorted(h.server.streams) == [0, 2, 4, 6]
    assert h.server.read(6) == b"six"
    assert h.server.read(2) == b""
    # a frame for an implicitly opened stream does not open it again
    inject(h, h.client, h.server, [StreamFrame(2, 0, b"two", fin=True)])
    assert drain_events(h.server) == []
    assert h.server.read(2) == b"two"
    assert h.server.streams[2].recv.at_eof
    # the next new stream continues after the highest seen
    inject(h, h.client, h.server, [StreamFrame(10, 0, b"ten")])
    assert drain_events(h.server) == [StreamOpened(8), StreamOpened(10)]
    assert not h.server.closed


def test_frame_for_higher_server_stream_opens_the_ones_below(pki: DevPKI) -> None:
    h = established(pki)
    inject(h, h.server, h.client, [StreamFrame(5, 0, b"five")])
    assert drain_events(h.client) == [StreamOpened(1), StreamOpened(3), StreamOpened(5)]
    assert h.client.read(5) == b"five"
    assert not h.client.closed
    # the client's own numbering is unaffected
    assert h.client.open_stream() == 0


def test_locally_opened_stream_accepts_peer_data_without_stream_opened(pki: DevPKI) -> None:
    h = established(pki)
    sid = h.client.open_stream()
    h.client.send(sid, b"ping")
    h.pump()
    h.server.send(sid, b"pong")
    h.pump()
    assert h.client.read(sid) == b"pong"
    assert not [e for e in h.client_events if isinstance(e, StreamOpened)]


def test_stream_id_far_above_the_highest_seen_is_refused(pki: DevPKI) -> None:
    """One frame must not make the receiver allocate millions of streams."""
    h = established(pki, tuning=SessionTuning(max_open_streams=16))
    inject(h, h.client, h.server, [StreamFrame(2 * 7, 0, b"ok")])  # opens 8 streams
    assert not h.server.closed
    inject(h, h.client, h.server, [StreamFrame(2 * 7 + 2 * 8 + 2, 0, b"too far")])
    assert h.server.closed
    assert isinstance(h.server.error, IllegalParameter)


def test_default_limit_refuses_huge_stream_id(pki: DevPKI) -> None:
    h = established(pki)
    inject(h, h.client, h.server, [StreamFrame(2**32 - 2, 0, b"x")])
    assert h.server.closed and isinstance(h.server.error, IllegalParameter)
    assert len(h.server.streams) < 20_000


def test_closed_stream_is_forgotten_and_late_duplicates_are_ignored(pki: DevPKI) -> None:
    """design: Streams: gone when both directions finished and everything was read; a reinjected
    duplicate for it afterwards is dropped without reopening it."""
    h = established(pki)
    sid = h.client.open_stream()
    h.client.send(sid, b"question")
    h.client.send_eof(sid)
    h.pump()
    assert h.server.read(sid) == b"question"
    h.server.send(sid, b"answer")
    h.server.send_eof(sid)
    h.run_until(lambda: sid not in h.server.streams or h.server.streams[sid].fin_acked)
    h.run_until(lambda: h.client.streams[sid].fin_acked)
    assert h.client.read(sid) == b"answer"
    h.pump()
    assert sid not in h.client.streams
    assert sid not in h.server.streams
    drain_events(h.server)
    inject(h, h.client, h.server, [StreamFrame(sid, 0, b"question", fin=True)])
    assert sid not in h.server.streams
    assert drain_events(h.server) == []
    assert not h.server.closed


# ---------------------------------------------------------------- reordering and duplicates


PAYLOAD = bytes(range(256)) * 40  # 10240 bytes, every offset distinguishable


def _piece(start: int, end: int, fin: bool = False, sid: int = 0) -> StreamFrame:
    return StreamFrame(sid, start, PAYLOAD[start:end], fin)


def test_out_of_order_offsets_are_delivered_in_order(pki: DevPKI) -> None:
    h = established(pki)
    inject(h, h.client, h.server, [_piece(2000, 3000)])
    inject(h, h.client, h.server, [_piece(1000, 2000)])
    stream = h.server.streams[0]
    assert stream.recv.readable == 0
    assert h.server.read(0) == b""
    assert h.server.reassembly_held == stream.recv.held > 2000  # bytes and their overhead
    inject(h, h.client, h.server, [_piece(0, 1000)])
    assert h.server.read(0) == PAYLOAD[:3000]
    assert h.server.reassembly_held == 0
    assert stream.recv.held == 0


def test_exact_duplicates_are_delivered_once(pki: DevPKI) -> None:
    h = established(pki)
    for _ in range(3):
        inject(h, h.client, h.server, [_piece(0, 500)])
    assert h.server.read(0) == PAYLOAD[:500]
    for _ in range(2):
        inject(h, h.client, h.server, [_piece(0, 500)])
        inject(h, h.client, h.server, [_piece(500, 1000)])
    assert h.server.read(0) == PAYLOAD[500:1000]
    assert h.server.read(0) == b""


def test_duplicate_out_of_order_piece_held_twice_is_delivered_once(pki: DevPKI) -> None:
    h = established(pki)
    inject(h, h.client, h.server, [_piece(600, 900)])
    inject(h, h.client, h.server, [_piece(600, 900)])
    inject(h, h.client, h.server, [_piece(0, 600)])
    assert h.server.read(0) == PAYLOAD[:900]
    assert h.server.reassembly_held == 0


def test_overlapping_partial_duplicates(pki: DevPKI) -> None:
    h = established(pki)
    inject(h, h.client, h.server, [_piece(0, 100)])
    inject(h, h.client, h.server, [_piece(50, 250)])  # half old, half new
    assert h.server.read(0) == PAYLOAD[:250]
    inject(h, h.client, h.server, [_piece(400, 700)])  # out of order
    inject(h, h.client, h.server, [_piece(600, 800)])  # overlaps the held piece
    inject(h, h.client, h.server, [_piece(200, 450)])  # overlaps delivered and held data
    assert h.server.read(0) == PAYLOAD[250:800]
    inject(h, h.client, h.server, [_piece(0, 800)])  # all old
    inject(h, h.client, h.server, [_piece(790, 1000, fin=True)])
    assert h.server.read(0) == PAYLOAD[800:1000]
    assert h.server.streams[0].recv.at_eof
    assert h.server.reassembly_held == 0


def test_gap_filled_later_and_fin_out_of_order(pki: DevPKI) -> None:
    h = established(pki)
    inject(h, h.client, h.server, [_piece(0, 1000)])
    inject(h, h.client, h.server, [_piece(3000, 4000, fin=True)])
    inject(h, h.client, h.server, [_piece(2000, 3000)])
    assert h.server.read(0) == PAYLOAD[:1000]
    recv = h.server.streams[0].recv
    assert recv.final_size == 4000 and not recv.complete
    h.pump()
    h.advance(1.0)  # time passes, the gap stays
    assert h.server.read(0) == b""
    inject(h, h.client, h.server, [_piece(1000, 2000)])
    assert h.server.read(0) == PAYLOAD[1000:4000]
    assert recv.at_eof


def test_several_stream_frames_of_one_stream_in_one_record(pki: DevPKI) -> None:
    h = established(pki)
    inject(h, h.client, h.server, [_piece(300, 600), _piece(0, 300), _piece(100, 400)])
    assert h.server.read(0) == PAYLOAD[:600]


def test_streams_reassemble_independently(pki: DevPKI) -> None:
    h = established(pki)
    inject(h, h.client, h.server, [_piece(100, 200, sid=2), _piece(0, 100, sid=0)])
    assert h.server.read(0) == PAYLOAD[:100]
    assert h.server.read(2) == b""
    inject(h, h.client, h.server, [_piece(0, 100, sid=2)])
    assert h.server.read(2) == PAYLOAD[:200]


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_session_reassembles_random_reordered_duplicated_frames(
    pki: DevPKI, data: st.DataObject
) -> None:
    h = established(pki)
    size = data.draw(st.integers(1, 6000), label="size")
    payload = os.urandom(size)
    cuts = (
        sorted(data.draw(st.sets(st.integers(1, size - 1), max_size=12), label="cuts"))
        if (size > 1)
        else []
    )
    bounds = [0, *cuts, size]
    pieces = [(a, b) for a, b in itertools.pairwise(bounds)]
    extra = data.draw(st.lists(st.sampled_from(pieces), max_size=6), label="duplicates")
    order = data.draw(st.permutations(pieces + extra), label="order")
    for a, b in order:
        inject(h, h.client, h.server, [StreamFrame(0, a, payload[a:b], b == size)])
        assert not h.server.closed, h.server.error
    assert h.server.read(0) == payload
    assert h.server.streams[0].recv.at_eof
    assert h.server.reassembly_held == 0


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_session_reassembles_large_frames_delivered_in_one_batch(
    pki: DevPKI, data: st.DataObject
) -> None:
    """Large pieces (kept as views of the decrypted record, no copy) arrive out of order
    and duplicated, many records per ``receive_data`` call: the record buffer is reused
    between records of a batch, so any view kept by mistake would corrupt the stream."""
    h = established(pki)
    size = data.draw(st.integers(20_000, 120_000), label="size")
    payload = os.urandom(size)
    bounds = [0]
    while bounds[-1] < size:
        bounds.append(min(size, bounds[-1] + data.draw(st.integers(3000, 16_000))))
    pieces = [(a, b) for a, b in itertools.pairwise(bounds)]
    extra = data.draw(st.lists(st.sampled_from(pieces), max_size=4), label="duplicates")
    order = data.draw(st.permutations(pieces + extra), label="order")
    wire = bytearray()
    for a, b in order:
        # some records carry a second, overlapping Stream frame of the same stream
        frames = [StreamFrame(2, a, payload[a:b], b == size)]
        if data.draw(st.booleans()) and 100 < b - a <= 8000:
            frames.append(StreamFrame(2, a + 50, payload[a + 50 : b - 50]))
        _, sealed = seal_raw(h.client, encode_frames(frames))
        wire += sealed
    cuts = sorted(data.draw(st.sets(st.integers(1, len(wire) - 1), max_size=4), label="cuts"))
    for lo, hi in zip([0, *cuts], [*cuts, len(wire)], strict=False):
        deliver_raw(h, h.server, bytes(wire[lo:hi]))
        assert not h.server.closed, h.server.error
    assert h.server.read(2) == payload
    assert h.server.streams[2].recv.at_eof
    assert h.server.reassembly_held == 0


# ---------------------------------------------------------------- reassembly bound (design:
# Backpressure)


def test_out_of_order_data_is_bounded_per_session(pki: DevPKI) -> None:
    h = established(pki, tuning=SessionTuning(max_reassembly_bytes=3500))
    inject(h, h.client, h.server, [_piece(1000, 2500)])
    inject(h, h.client, h.server, [_piece(1000, 2500, sid=2)])
    assert not h.server.closed
    assert 3000 < h.server.reassembly_held <= 3500  # the bytes and what holding them costs
    inject(h, h.client, h.server, [_piece(5000, 5001, sid=2)])
    assert h.server.closed
    assert isinstance(h.server.error, IllegalParameter)
    assert "reassembly" in str(h.server.error)


def test_reassembly_bound_counts_only_data_still_held(pki: DevPKI) -> None:
    h = established(pki, tuning=SessionTuning(max_reassembly_bytes=3000))
    for _ in range(5):  # 5 x 2500 out-of-order bytes, each drained before the next
        base = h.server.streams[0].recv.delivered if 0 in h.server.streams else 0
        inject(h, h.client, h.server, [StreamFrame(0, base + 500, b"x" * 2500)])
        inject(h, h.client, h.server, [StreamFrame(0, base, b"y" * 500)])
        assert h.server.reassembly_held == 0
    assert not h.server.closed
    assert len(h.server.read(0)) == 15000


def test_full_receive_buffer_pauses_reading_until_the_application_reads(pki: DevPKI) -> None:
    """design: Backpressure: a full in-order buffer pauses reading of the TCP connections."""
    h = established(pki, tuning=SessionTuning(stream_receive_buffer=10_000))
    inject(h, h.client, h.server, [StreamFrame(0, 0, b"a" * 8000)])
    assert not h.server.reading_paused
    inject(h, h.client, h.server, [StreamFrame(0, 8000, b"b" * 4000)])
    assert h.server.reading_paused
    assert h.server.read(0, 3000) == b"a" * 3000  # 9000 left: still above half
    assert h.server.reading_paused
    assert len(h.server.read(0, 5000)) == 5000  # 4000 left
    assert not h.server.reading_paused


# ---------------------------------------------------------------- ReceiveBuffer directly


@st.composite
def _deliveries(draw: st.DrawFn) -> tuple[bytes, list[tuple[int, bytes, bool]], list[int]]:
    size = draw(st.integers(0, 3000) | st.integers(9000, 20_000))
    payload = random.Random(draw(st.integers(0, 2**32))).randbytes(size)
    size = len(payload)
    cuts = sorted(draw(st.sets(st.integers(1, max(size - 1, 1)), max_size=20))) if size > 1 else []
    bounds = [0, *cuts, size]
    pieces = [(a, b) for a, b in itertools.pairwise(bounds)]
    # arbitrary overlapping sub-ranges, as retransmission over another connection produces
    overlaps = draw(
        st.lists(
            st.tuples(st.integers(0, size), st.integers(0, size)).map(sorted).map(tuple),
            max_size=8,
        )
    )
    duplicates = draw(st.lists(st.sampled_from(pieces), max_size=8))
    chunks = [*pieces, *overlaps, *duplicates]
    order = draw(st.permutations(chunks))
    frames = [(a, payload[a:b], b == size) for a, b in order]
    reads = draw(st.lists(st.integers(0, len(frames)), max_size=5))
    return payload, frames, reads


@settings(max_examples=300, deadline=None)
@given(case=_deliveries(), as_view=st.booleans())
def test_receive_buffer_reassembles_any_order(
    case: tuple[bytes, list[tuple[int, bytes, bool]], list[int]], as_view: bool
) -> None:
    payload, frames, reads = case
    buf = ReceiveBuffer()
    out = bytearray()
    for i, (offset, chunk, fin) in enumerate(frames):
        if i in reads:
            out += buf.read(len(payload) // 3 or 1)
        if as_view:
            # like a decrypted record: the caller reuses the buffer unless a view was kept
            record = bytearray(chunk)
            kept = buf.receive(offset, memoryview(record), fin)
            if kept is False:
                record[:] = bytes(len(record))
        else:
            buf.receive(offset, chunk, fin)
        assert buf.delivered <= len(payload)
        assert buf.final_size in (None, len(payload))
    out += buf.read()
    assert bytes(out) == payload
    assert buf.held == 0 and buf.buffered == 0
    assert buf.final_size == len(payload)
    assert buf.complete and buf.at_eof


def test_receive_buffer_held_accounting() -> None:
    per_held = CHUNK_OVERHEAD + HELD_OVERHEAD
    buf = ReceiveBuffer()
    buf.receive(10, b"abcde", False)
    buf.receive(20, b"xyz", False)
    assert buf.held == 8 + 2 * per_held and buf.delivered == 0 and buf.readable == 0
    buf.receive(0, b"0123456789", False)  # drains [10, 15)
    assert buf.delivered == 15 and buf.held == 3 + per_held and buf.readable == 15
    assert buf.buffered == 15 + 2 * CHUNK_OVERHEAD
    buf.receive(15, b"fghij", False)
    assert buf.delivered == 23 and buf.held == 0
    assert buf.read() == b"0123456789abcdefghijxyz"
    assert buf.readable == 0 and buf.buffered == 0


def test_receive_buffer_read_in_pieces_and_find() -> None:
    buf = ReceiveBuffer()
    buf.receive(0, b"hello\r\nworld", True)
    assert buf.find(b"\r\n") == 5
    assert buf.read(3) == b"hel"
    assert not buf.at_eof and buf.complete
    assert buf.read(100) == b"lo\r\nworld"
    assert buf.at_eof


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ((0, b"abc", True), (3, b"d", False)),  # data after the final size
        ((0, b"abc", True), (0, b"abcd", False)),  # data running past the final size
        ((0, b"abc", True), (0, b"ab", True)),  # final size shrinks
        ((0, b"abc", True), (3, b"d", True)),  # final size grows
        ((0, b"abcdef", False), (0, b"abc", True)),  # FIN below delivered data
        ((10, b"held", False), (0, b"abc", True)),  # FIN below held data
        ((5, b"", True), (3, b"abc", False)),  # hole data crossing the final size
    ],
)
def test_receive_buffer_final_size_violations(
    first: tuple[int, bytes, bool], second: tuple[int, bytes, bool]
) -> None:
    buf = ReceiveBuffer()
    buf.receive(*first)
    with pytest.raises(IllegalParameter):
        buf.receive(*second)


def test_receive_buffer_same_fin_twice_and_empty_fin() -> None:
    buf = ReceiveBuffer()
    buf.receive(0, b"abc", True)
    buf.receive(0, b"abc", True)
    buf.receive(3, b"", True)
    buf.receive(1, b"bc", True)
    assert buf.read() == b"abc" and buf.at_eof
    empty = ReceiveBuffer()
    empty.receive(0, b"", True)
    assert empty.complete and empty.at_eof and empty.read() == b""
