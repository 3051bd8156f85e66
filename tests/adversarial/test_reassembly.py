"""Out-of-order stream data from a hostile client: what the server holds must stay bounded.

Each case sends Stream frames for stream 0 that never start at offset 0 (so nothing is
ever delivered to the application) and then measures the server's peak RSS above its
baseline. design: Backpressure: out-of-order data held for reassembly is bounded per session;
exceeding the bound closes the session instead of growing memory. The budget must count
what the data really costs, not only its payload bytes.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tcpls.errors import AlertDescription
from tcpls.wire.frames import MAX_RECORD_PAYLOAD, STREAM_HEADER_SIZE, encode_stream_header
from tests.adversarial.hostile import Arena, KiB, MiB

pytestmark = pytest.mark.adversarial

#: (a) Zero-length Stream frames (no FIN) at distinct offsets beyond the delivered data.
#: Today each costs ~150 bytes of heap entry and counts 0: 300,000 of them (4.4 MiB of
#: records) grow the server by ~45 MiB.
ZERO_LENGTH_FRAMES = 300_000
#: A zero-length frame without FIN carries nothing and must not be stored: the growth
#: allowed is noise (record buffers, parsing), a few MiB.
ZERO_LENGTH_GROWTH_LIMIT = 8 * MiB

#: (b) 1-byte chunks at offsets 2, 4, 6, ... (gaps: nothing merges). ~185 bytes each
#: today, counted as 1: 800,000 of them (12.5 MiB of records) cost ~140 MiB.
TINY_CHUNKS = 800_000
#: (b), (d): the server either closes the session once its reassembly budget is exceeded
#: or stays within it; either way this is the most it may grow.
REASSEMBLY_GROWTH_LIMIT = 80 * MiB

#: (c) The same 8-byte out-of-order chunk, again and again (712 per record).
DUPLICATE_CHUNKS = 400_000
DUPLICATE_SIZE = 8
#: A duplicate of data already held must not be stored again: noise only.
DUPLICATE_GROWTH_LIMIT = 8 * MiB

#: (d) One 4 KiB out-of-order chunk per record (the smallest size kept as a view of the
#: decrypted record: each pins a ~16 KiB record buffer while 4 KiB are counted).
#: 8,000 records (33 MiB on the wire, 31 MiB counted) pin ~130 MiB today.
PINNING_RECORDS = 8_000
PINNING_CHUNK = 4 * KiB


def _frames_in_records(frames: Iterator[bytes], per_record: int, records: int) -> Iterator[bytes]:
    for _ in range(records):
        yield b"".join(next(frames) for _ in range(per_record))


def _measure(arena: Arena, sent: int, expected: int, synced: bool) -> int:
    """Note what happened; the peak RSS growth of the case."""
    client = arena.clients[0]
    arena.server.wait_idle(timeout=5.0)
    growth = arena.peak_growth()
    arena.note(
        records_sent=sent,
        records_planned=expected,
        synced=synced,
        alert=client.alert,
        closed=client.eof,
        reset=client.reset,
        write_failed=client.broken,
        peak_growth_mib=growth / MiB,
        cpu_s=arena.cpu_used(),
    )
    return growth


def test_zero_length_frames_beyond_delivered_are_not_stored(
    arena: Arena, peak_reset: None
) -> None:
    client = arena.client()
    per_record = MAX_RECORD_PAYLOAD // STREAM_HEADER_SIZE
    records = ZERO_LENGTH_FRAMES // per_record

    def frames() -> Iterator[bytes]:
        offset = 1
        while True:
            yield encode_stream_header(0, offset, 0, False)
            offset += 1

    sent = client.send_records(_frames_in_records(frames(), per_record, records))
    synced = client.sync()
    growth = _measure(arena, sent, records, synced)
    arena.expect(
        growth < ZERO_LENGTH_GROWTH_LIMIT,
        f"{sent * per_record} zero-length frames grew the server by {growth / MiB:.1f} MiB "
        f"(limit {ZERO_LENGTH_GROWTH_LIMIT / MiB:.0f} MiB: they must not be stored)",
    )
    arena.finish()


def test_tiny_out_of_order_chunks_are_bounded(arena: Arena, peak_reset: None) -> None:
    client = arena.client()
    size = STREAM_HEADER_SIZE + 1
    per_record = MAX_RECORD_PAYLOAD // size
    records = TINY_CHUNKS // per_record

    def frames() -> Iterator[bytes]:
        offset = 2
        while True:
            yield b"x" + encode_stream_header(0, offset, 1, False)
            offset += 2

    sent = client.send_records(_frames_in_records(frames(), per_record, records))
    synced = client.sync()
    growth = _measure(arena, sent, records, synced)
    arena.expect(
        growth < REASSEMBLY_GROWTH_LIMIT,
        f"{sent * per_record} 1-byte out-of-order chunks grew the server by "
        f"{growth / MiB:.1f} MiB (limit {REASSEMBLY_GROWTH_LIMIT / MiB:.0f} MiB)",
    )
    arena.finish()


def test_duplicate_out_of_order_chunk_is_not_stored_again(arena: Arena, peak_reset: None) -> None:
    client = arena.client()
    frame = b"d" * DUPLICATE_SIZE + encode_stream_header(0, 1000, DUPLICATE_SIZE, False)
    per_record = MAX_RECORD_PAYLOAD // len(frame)
    records = DUPLICATE_CHUNKS // per_record
    content = frame * per_record
    sent = client.send_records(content for _ in range(records))
    synced = client.sync()
    growth = _measure(arena, sent, records, synced)
    arena.expect(
        growth < DUPLICATE_GROWTH_LIMIT,
        f"{sent * per_record} copies of one out-of-order chunk grew the server by "
        f"{growth / MiB:.1f} MiB (limit {DUPLICATE_GROWTH_LIMIT / MiB:.0f} MiB: "
        "a duplicate must not be stored again)",
    )
    arena.expect(
        synced and client.alert is None,
        "duplicates are legal (design: Retransmission: receivers deduplicate by offset) "
        f"but the session ended (alert {client.alert})",
    )
    arena.finish()


def test_record_pinning_out_of_order_chunks_are_bounded(arena: Arena, peak_reset: None) -> None:
    client = arena.client()
    data = b"p" * PINNING_CHUNK

    def records() -> Iterator[bytes]:
        for i in range(PINNING_RECORDS):
            yield data + encode_stream_header(0, 1 + i * 2 * PINNING_CHUNK, PINNING_CHUNK, False)

    sent = client.send_records(records())
    synced = client.sync()
    growth = _measure(arena, sent, PINNING_RECORDS, synced)
    arena.expect(
        growth < REASSEMBLY_GROWTH_LIMIT,
        f"{sent} out-of-order {PINNING_CHUNK // KiB} KiB chunks (one per record) grew the "
        f"server by {growth / MiB:.1f} MiB (limit {REASSEMBLY_GROWTH_LIMIT / MiB:.0f} MiB)",
    )
    arena.finish()


@pytest.mark.parametrize("fin", [False, True], ids=["data", "fin"])
def test_stream_frame_beyond_2_64_is_a_decode_error(arena: Arena, fin: bool) -> None:
    client = arena.client()
    data = b"overflow"
    offset = (1 << 64) - 4  # offset + length = 2^64 + 4
    client.send_record(data + encode_stream_header(0, offset, len(data), fin))
    arena.expect_alert(client, AlertDescription.decode_error, "offset + length > 2^64 - 1")
    arena.finish()
