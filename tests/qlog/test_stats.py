"""``session.stats()``: counters per connection with TCP_INFO, per open stream, and totals."""

from __future__ import annotations

import asyncio
import os

import tcpls
from tcpls.aio.stats import SessionStats
from tcpls.devcert import DevPKI


async def _echo(session: tcpls.Session) -> None:
    async for reader, writer in session:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
        await writer.drain()


def test_stats(pki: DevPKI) -> None:
    server_config = tcpls.ServerConfig(certfile=str(pki.cert_file), keyfile=str(pki.key_file))
    client_config = tcpls.ClientConfig(cafile=str(pki.ca_file), server_name="localhost")
    payload = os.urandom(300_000)

    async def run() -> None:
        async with await tcpls.serve(_echo, "127.0.0.1", 0, config=server_config) as srv:
            async with tcpls.connect("127.0.0.1", srv.port, config=client_config) as session:
                await session.join("127.0.0.1", srv.port)
                reader, writer = await session.open_stream()
                writer.write(payload)
                await writer.drain()
                first = await reader.readexactly(100_000)
                stats = session.stats()
                assert isinstance(stats, SessionStats)
                assert [c.id for c in stats.connections] == [0, 1]
                for conn in stats.connections:
                    assert conn.status == "active"
                    assert conn.remote_address == ("127.0.0.1", srv.port)
                    assert conn.bytes_sent > 0 and conn.bytes_received > 0
                    assert conn.rtt is not None and conn.rtt >= 0
                    assert conn.cwnd is not None and conn.cwnd > 0
                    assert conn.retransmits is not None and conn.retransmits >= 0
                assert sum(c.records_sent for c in stats.connections) > 0
                stream = stats.streams[0]
                assert stream.bytes_written == len(payload)
                assert stream.bytes_received >= 100_000
                assert not stream.fin_sent
                writer.write_eof()
                rest = await reader.read()
                assert first + rest == payload
                await writer.wait_closed()
                await asyncio.sleep(0.05)
                stats = session.stats()
                assert 0 not in stats.streams  # finished: only in the totals
                assert stats.stream_bytes_sent == len(payload)
                assert stats.stream_bytes_received == len(payload)
                assert stats.bytes_reinjected == 0
                assert stats.records_sealed >= sum(c.records_sent for c in stats.connections) - 2

    asyncio.run(run())
