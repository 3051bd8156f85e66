"""Streams opened en masse, data sent and never read back, a peer that stops reading.

The hostile client opens streams the cheap way (a Stream frame for stream N opens every
client stream below it, design: Streams), sends on many streams while never reading the echo, and
stops reading its socket while the server has data and an ACK to send. The server must
refuse or stay bounded in memory and CPU, and keep serving others.

The last case is about the server's own backpressure (design: Backpressure): when its
application does not read, it stops reading the socket; that must not make either end declare the
connection failed. It runs in-process (``tcpls.serve`` / ``tcpls.connect``) because the
echo server always reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Iterator

import pytest

import tcpls
from tcpls.apps.echo import echo_handler
from tcpls.config import SessionTuning
from tcpls.devcert import DevPKI
from tcpls.wire.frames import encode_stream_header
from tests.adversarial.hostile import (
    GOOD_CLIENT_DEADLINE,
    Arena,
    MiB,
    good_client_echo_async,
)

pytestmark = pytest.mark.adversarial

#: Records of the stream bomb, one 15-byte zero-length Stream frame each; each frame
#: opens as many streams as the server's default tuning lets one frame open (10,000
#: before the limits existed: 40 records, 400,000 streams).
STREAM_BOMB_RECORDS = 40
#: Streams one frame opens when the tuning says nothing about it.
_FALLBACK_STREAMS_PER_FRAME = 10_000
#: The server either refuses (alert, session closed) or stays within these.
STREAM_BOMB_GROWTH_LIMIT = 100 * MiB
STREAM_BOMB_CPU_LIMIT = 2.0
#: How long the server may take to settle before its CPU is read.
STREAM_BOMB_SETTLE = 8.0

#: Receive budget: this many streams get this many bytes each; the echo is never read.
UNREAD_STREAMS = 600
UNREAD_BYTES_PER_STREAM = 1 * MiB
#: A write that blocks this long is backpressure: stop sending.
UNREAD_STALL = 2.0

#: Busy loop: bytes sent on one stream (more than the socket buffers of both directions
#: hold) before we stop reading; then the server's CPU is measured over BUSY_WINDOW.
BUSY_BYTES = 48 * MiB
BUSY_STALL = 1.0
BUSY_WINDOW = 5.0
#: Share of one core the server may use while it can neither send nor make progress.
BUSY_CPU_SHARE = 0.05

#: Slow reader: the server's handler sends SLOW_GREETING bytes (so it has records in
#: flight, waiting for the client's ACKs), then does not read for SLOW_PAUSE seconds while
#: the client sends SLOW_BYTES (far more than the buffers on the way hold), then reads all.
SLOW_GREETING = 4 * MiB
SLOW_PAUSE = 5.0
SLOW_BYTES = 24 * MiB


def _streams_per_frame() -> int:
    tuning = SessionTuning()
    for name in ("max_peer_streams", "max_open_streams"):
        value = getattr(tuning, name, None)
        if isinstance(value, int) and value > 0:
            return min(value, _FALLBACK_STREAMS_PER_FRAME)
    return _FALLBACK_STREAMS_PER_FRAME


def test_stream_bomb_is_refused_or_bounded(arena: Arena, peak_reset: None) -> None:
    client = arena.client()
    per_frame = _streams_per_frame()

    def records() -> Iterator[bytes]:
        for k in range(STREAM_BOMB_RECORDS):
            yield encode_stream_header(2 * per_frame * (k + 1) - 2, 0, 0, False)

    start = time.monotonic()
    sent = client.send_records(records())
    synced = client.sync(timeout=STREAM_BOMB_SETTLE)
    arena.server.wait_idle(timeout=max(STREAM_BOMB_SETTLE - (time.monotonic() - start), 0.5))
    cpu = arena.cpu_used()
    growth = arena.peak_growth()
    refused = client.alert is not None or client.eof
    arena.note(
        streams_per_frame=per_frame,
        records_sent=sent,
        streams_claimed=sent * per_frame,
        synced=synced,
        alert=client.alert,
        closed=client.eof,
        cpu_s=cpu,
        peak_growth_mib=growth / MiB,
    )
    arena.expect(
        growth < STREAM_BOMB_GROWTH_LIMIT,
        f"opening up to {sent * per_frame} streams grew the server by {growth / MiB:.1f} MiB "
        f"(limit {STREAM_BOMB_GROWTH_LIMIT / MiB:.0f} MiB; refused={refused})",
    )
    arena.expect(
        cpu < STREAM_BOMB_CPU_LIMIT,
        f"opening up to {sent * per_frame} streams cost the server {cpu:.2f} s of CPU "
        f"(limit {STREAM_BOMB_CPU_LIMIT} s; refused={refused})",
    )
    arena.finish()


def test_unread_echo_on_many_streams_is_bounded(arena: Arena) -> None:
    client = arena.client()

    def records() -> Iterator[memoryview]:
        for k in range(UNREAD_STREAMS):
            yield from client.stream_records(2 * k, UNREAD_BYTES_PER_STREAM)

    start = time.monotonic()
    sent = client.send_records(records(), stall_timeout=UNREAD_STALL, read=False)
    elapsed = time.monotonic() - start
    arena.server.wait_idle(timeout=5.0)
    arena.note(
        streams=UNREAD_STREAMS,
        records_sent=sent,
        mib_sent=client.bytes_sent / MiB,
        stalled=client.stalled,
        send_s=elapsed,
        peak_during_mib=arena.server.peak() / MiB,
    )
    # the general peak bound (PEAK_RSS_LIMIT) is the requirement of this case
    arena.finish()


def test_no_busy_loop_while_the_peer_does_not_read(arena: Arena) -> None:
    client = arena.client()
    sent = client.send_records(
        client.stream_records(0, BUSY_BYTES), stall_timeout=BUSY_STALL, read=False
    )
    # the server now has echo data it cannot send and records to acknowledge
    before = arena.server.cpu()
    time.sleep(BUSY_WINDOW)
    share = (arena.server.cpu() - before) / BUSY_WINDOW
    arena.note(
        records_sent=sent,
        mib_sent=client.bytes_sent / MiB,
        stalled=client.stalled,
        cpu_share=share,
    )
    arena.expect(
        share < BUSY_CPU_SHARE,
        f"the server used {share:.0%} of a core for {BUSY_WINDOW:g} s while its peer did not "
        f"read (limit {BUSY_CPU_SHARE:.0%})",
    )
    arena.finish()


async def _slow_reader_case(pki: DevPKI) -> dict[str, object]:
    server_side: asyncio.Future[dict[str, object]] = asyncio.get_running_loop().create_future()
    greeting = bytes(range(256)) * (SLOW_GREETING // 256)

    async def slow_handler(session: tcpls.Session) -> None:
        reader, writer = await session.accept_stream()
        writer.write(greeting)  # records in flight: the server waits for their ACKs
        await asyncio.sleep(SLOW_PAUSE)  # the application does not read
        digest = hashlib.sha256()
        total = 0
        while chunk := await reader.read(1 << 20):
            digest.update(chunk)
            total += len(chunk)
        server_side.set_result(
            {
                "bytes": total,
                "sha256": digest.hexdigest(),
                "connections": [c.id for c in session.connections],
                "error": session.error,
            }
        )
        writer.write(b"done")
        writer.write_eof()
        await writer.drain()

    async def handler(session: tcpls.Session) -> None:
        if server_side.done():  # the good client that comes after the case
            await echo_handler(session)
        else:
            await slow_handler(session)

    async def send_all(writer: tcpls.StreamWriter) -> tuple[int, str]:
        digest = hashlib.sha256()
        block = bytes(range(256)) * 1024
        sent = 0
        while sent < SLOW_BYTES:
            writer.write(block)
            digest.update(block)
            sent += len(block)
            await writer.drain()
        writer.write_eof()
        return sent, digest.hexdigest()

    config = tcpls.ServerConfig(certfile=str(pki.cert_file), keyfile=str(pki.key_file))
    server = await tcpls.serve(handler, "127.0.0.1", 0, config=config)
    try:
        client_config = tcpls.ClientConfig(cafile=str(pki.ca_file), server_name="localhost")
        session = await tcpls.connect("127.0.0.1", server.port, config=client_config)
        try:
            reader, writer = await session.open_stream()
            start = time.monotonic()
            sending = asyncio.create_task(send_all(writer))
            reply = await asyncio.wait_for(reader.read(), SLOW_PAUSE + 30)
            sent, digest = await asyncio.wait_for(sending, 5)
            received = await asyncio.wait_for(server_side, 5)
            outcome: dict[str, object] = {
                "sent": sent,
                "sha256": digest,
                "reply_ok": reply == greeting + b"done",
                "reply_bytes": len(reply),
                "seconds": time.monotonic() - start,
                "client_connections": [c.id for c in session.connections],
                "client_error": session.error,
                "server": received,
            }
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(session.aclose(), 5)
        outcome["good_client"] = await good_client_echo_async(server.port, pki)
        return outcome
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 10)


def test_server_that_stops_reading_keeps_its_connection(pki: DevPKI) -> None:
    outcome = asyncio.run(asyncio.wait_for(_slow_reader_case(pki), SLOW_PAUSE + 60))
    server = outcome["server"]
    assert isinstance(server, dict)
    good = outcome["good_client"]
    print(f"\n[adversarial] slow reader: {outcome}")
    failures = []
    if server["bytes"] != outcome["sent"] or server["sha256"] != outcome["sha256"]:
        failures.append(f"bytes lost: sent {outcome['sent']}, the handler read {server['bytes']}")
    if not outcome["reply_ok"]:
        failures.append(f"the server's reply was cut or wrong ({outcome['reply_bytes']} bytes)")
    if outcome["client_connections"] != [0] or outcome["client_error"] is not None:
        failures.append(
            f"the client declared its connection failed: connections "
            f"{outcome['client_connections']}, error {outcome['client_error']}"
        )
    if server["connections"] != [0] or server["error"] is not None:
        failures.append(
            f"the server declared the connection failed: connections {server['connections']}, "
            f"error {server['error']}"
        )
    if not getattr(good, "ok", False):
        failures.append(f"a fresh good client was not served within {GOOD_CLIENT_DEADLINE} s")
    assert not failures, "; ".join(failures)
