"""Resource limits a hostile peer meets in the session core (each a regression test).

Memory is counted as it really is: out-of-order chunks carry their overhead, a kept
view of a record costs the whole record buffer, duplicates and empty frames are not
stored. Streams are bounded at once and in total, unread data per stream and per
session pauses reading, and stream offsets stop at 2^64 - 1.
"""

from __future__ import annotations

import tracemalloc

from tcpls.config import SessionTuning
from tcpls.core.streams import RETAIN_MIN, ReceiveBuffer
from tcpls.devcert import DevPKI
from tcpls.errors import AlertDescription, DecodeError, IllegalParameter
from tcpls.wire.frames import StreamFrame, encode_frames
from tests.core.harness import Harness
from tests.core.util import alerts_received, deliver_raw, established, inject, seal_raw

# ------------------------------------------------------------------ reassembly memory


def test_zero_length_frames_without_fin_are_not_stored(pki: DevPKI) -> None:
    h = established(pki)
    inject(h, h.client, h.server, [StreamFrame(0, 0, b"x")])

    def batch(base: int) -> bytes:
        wire = bytearray()
        for i in range(50):
            frames = [StreamFrame(0, base + 50 * i + j, b"") for j in range(50)]
            wire += seal_raw(h.client, encode_frames(frames))[1]
        return bytes(wire)

    for base in (1000, 4000, 7000):  # the record buffers reach their size
        deliver_raw(h, h.server, batch(base))
    wire = batch(10_000)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        deliver_raw(h, h.server, wire)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert not h.server.closed
    assert h.server.reassembly_held == 0
    assert grown < 16 * 1024, f"2,500 empty frames kept {grown} bytes"


def test_a_one_byte_out_of_order_chunk_counts_what_it_costs() -> None:
    buf = ReceiveBuffer()
    buf.receive(100, b"x", False)
    assert buf.held >= 150  # the byte, its bytes object and its heap entry


def test_an_out_of_order_chunk_sent_again_is_stored_once(pki: DevPKI) -> None:
    h = established(pki)
    inject(h, h.client, h.server, [StreamFrame(0, 5000, b"y" * 100)])
    held = h.server.reassembly_held
    for _ in range(20):
        inject(h, h.client, h.server, [StreamFrame(0, 5000, b"y" * 100)])
        inject(h, h.client, h.server, [StreamFrame(0, 5050, b"y" * 50)])
    assert h.server.reassembly_held == held
    # an overlapping chunk stores only what was missing
    inject(h, h.client, h.server, [StreamFrame(0, 4900, b"z" * 300)])
    assert h.server.reassembly_held < held + 2 * 300
    inject(h, h.client, h.server, [StreamFrame(0, 0, b"a" * 4900)])
    assert h.server.read(0) == b"a" * 4900 + b"z" * 100 + b"y" * 100 + b"z" * 100
    assert h.server.reassembly_held == 0


def test_a_small_chunk_is_copied_and_a_kept_view_costs_its_whole_record() -> None:
    record = bytearray(16640)
    buf = ReceiveBuffer()
    assert buf.receive(100_000, memoryview(record)[:4096], False) is False  # copied
    assert buf.held < 4096 + 400
    big = ReceiveBuffer()
    assert big.receive(100_000, memoryview(record)[: RETAIN_MIN + 1], False) is True
    assert big.held >= len(record)  # the view pins the whole record buffer
    assert big.receive(0, b"a" * 100_000, False) is False
    assert big.held == 0 and big.buffered >= len(record)


def test_in_order_memory_is_given_back_when_read(pki: DevPKI) -> None:
    h = established(pki)
    inject(h, h.client, h.server, [StreamFrame(0, 0, b"b" * 100)])
    inject(h, h.client, h.server, [StreamFrame(2, 0, b"c" * 10000)])
    assert h.server.receive_buffered >= 10100
    h.server.read(0, 40)
    h.server.read(2)
    assert h.server.receive_buffered == h.server.streams[0].recv.buffered > 60
    h.server.read(0)
    assert h.server.receive_buffered == 0


def test_a_stream_frame_ending_beyond_2_64_is_a_decode_error(pki: DevPKI) -> None:
    h = established(pki)
    inject(h, h.client, h.server, [StreamFrame(0, 2**64 - 2, b"abc")])
    assert h.server.closed and isinstance(h.server.error, DecodeError)
    h.pump()
    assert AlertDescription.decode_error in alerts_received(h.client, h.client_events)


def test_a_stream_frame_ending_at_2_64_minus_1_is_accepted(pki: DevPKI) -> None:
    h = established(pki, tuning=SessionTuning(max_reassembly_bytes=1 << 20))
    inject(h, h.client, h.server, [StreamFrame(0, 2**64 - 4, b"abc")])
    assert not h.server.closed


# ------------------------------------------------------------------------ streams


def test_streams_open_at_once_are_limited(pki: DevPKI) -> None:
    h = established(pki, tuning=SessionTuning(max_open_streams=100))
    # explicit frames: 50 streams in one record, then 50 more
    inject(h, h.client, h.server, [StreamFrame(2 * i, 0, b"") for i in range(50)])
    inject(h, h.client, h.server, [StreamFrame(2 * i, 0, b"") for i in range(50, 100)])
    assert not h.server.closed
    inject(h, h.client, h.server, [StreamFrame(200, 0, b"one too many")])
    assert h.server.closed and isinstance(h.server.error, IllegalParameter)
    assert "100" in str(h.server.error)
    assert len(h.server.streams) <= 100


def test_one_frame_cannot_open_more_than_the_limit(pki: DevPKI) -> None:
    h = established(pki)
    inject(h, h.client, h.server, [StreamFrame(2 * 400_000, 0, b"x")])
    assert h.server.closed and isinstance(h.server.error, IllegalParameter)
    assert len(h.server.streams) <= h.server.tuning.max_open_streams


def _exchange(h: Harness, count: int) -> list[int]:
    """The client opens ``count`` streams, each a question and FIN; the server answers FIN."""
    ids = [h.client.open_stream() for _ in range(count)]
    for sid in ids:
        h.client.send(sid, b"q")
        h.client.send_eof(sid)
    h.pump()
    for sid in ids:
        if sid in h.server.streams:
            assert h.server.read(sid) == b"q"
            h.server.send_eof(sid)
    return ids


def test_finished_streams_make_room_for_new_ones(pki: DevPKI) -> None:
    h = established(pki, tuning=SessionTuning(max_open_streams=4))
    for _ in range(5):
        ids = _exchange(h, 4)
        assert not h.server.closed, h.server.error
        h.run_until(lambda ids=ids: all(sid not in h.server.streams for sid in ids))


def test_streams_opened_in_total_are_limited(pki: DevPKI) -> None:
    h = established(pki, tuning=SessionTuning(max_open_streams=4, max_total_streams=6))
    _exchange(h, 3)
    h.run_until(lambda: not h.server.streams)
    inject(h, h.client, h.server, [StreamFrame(sid, 0, b"q") for sid in (6, 8, 10)])
    assert not h.server.closed
    inject(h, h.client, h.server, [StreamFrame(12, 0, b"q")])
    assert h.server.closed and isinstance(h.server.error, IllegalParameter)


# ----------------------------------------------------------------- receive budget


def test_unread_data_of_all_streams_pauses_reading(pki: DevPKI) -> None:
    tuning = SessionTuning(stream_receive_buffer=1 << 20, session_receive_buffer=1 << 20)
    h = established(pki, tuning=tuning)
    for sid in range(0, 2 * 12, 2):  # 12 streams of 100 KB: no stream is full
        for offset in range(0, 100_000, 4_000):
            inject(h, h.client, h.server, [StreamFrame(sid, offset, b"d" * 4_000)])
    assert h.server.receive_buffered > 1 << 20
    assert h.server.reading_paused
    for sid in range(0, 2 * 8, 2):  # read most of it: reading resumes below half
        h.server.read(sid)
    assert not h.server.reading_paused
    for sid in range(16, 24, 2):
        assert len(h.server.read(sid)) == 100_000
    assert h.server.receive_buffered == 0


def test_a_full_stream_pauses_reading_by_its_real_memory(pki: DevPKI) -> None:
    h = established(pki, tuning=SessionTuning(stream_receive_buffer=16 * 1024))
    for offset in range(0, 500):  # 500 one-byte frames: 500 bytes, but many chunks
        inject(h, h.client, h.server, [StreamFrame(0, offset, b"z")])
    assert h.server.reading_paused
    assert h.server.read(0) == b"z" * 500
    assert not h.server.reading_paused


# ----------------------------------------------------------------- key usage limits


def test_a_tcpls_session_closes_before_its_key_usage_limit(pki: DevPKI) -> None:
    h = established(pki)
    assert h.client.links.aead_limit == 1 << 24  # AES-GCM
    h.client.links.aead_limit = h.client.records_sealed + 5
    sid = h.client.open_stream()
    for _ in range(20):
        h.client.send(sid, b"r" * 16000)
    h.run_until(lambda: h.server.peer_closed, limit=5)
    # what was written before the limit still arrived: the close is graceful
    assert len(h.server.read(sid)) == 20 * 16000
    h.server.close()
    h.run_until(lambda: h.client.closed and h.server.closed, limit=5)
    assert "records under one key" in str(h.client.error)


def test_plain_tls_changes_its_keys_at_the_limit(pki: DevPKI) -> None:
    h = Harness(pki, client_tcpls=False)
    h.pump()
    h.client.links.aead_limit = 3
    for i in range(10):
        h.client.send(0, bytes([i]) * 20000)
        h.pump()
    assert h.server.read(0) == b"".join(bytes([i]) * 20000 for i in range(10))
    protection = h.client.connections[0].tls.write_protection
    assert protection is not None and protection.sequence <= 3
    assert not h.client.closed


def test_reassembly_bytes_counts_bytes_not_memory(pki: DevPKI) -> None:
    h = established(pki)
    inject(h, h.client, h.server, [StreamFrame(0, 1000, b"a" * 300)])
    inject(h, h.client, h.server, [StreamFrame(0, 1200, b"b" * 300)])  # overlaps by 100
    assert h.server.reassembly_bytes == 500
    assert h.server.reassembly_held > 500
