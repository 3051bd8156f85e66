"""End to end over loopback: many concurrent streams, backpressure, reader/writer API."""

from __future__ import annotations

import asyncio
import hashlib
import random

import pytest

import tcpls
from tcpls.apps.echo import echo_handler
from tcpls.devcert import DevPKI


def _configs(pki: DevPKI, **client: object) -> tuple[tcpls.ServerConfig, tcpls.ClientConfig]:
    server = tcpls.ServerConfig(certfile=str(pki.cert_file), keyfile=str(pki.key_file))
    return server, tcpls.ClientConfig(cafile=str(pki.ca_file), **client)  # type: ignore[arg-type]


def test_hundred_concurrent_streams_of_random_sizes(pki: DevPKI) -> None:
    server_config, client_config = _configs(pki)
    rng = random.Random(1234)
    sizes = [rng.choice([0, 1, 100, 16369, 16370, 50_000, 300_000, 1_000_000]) for _ in range(100)]

    async def one(session: tcpls.Session, size: int, seed: int) -> tuple[int, bool]:
        payload = random.Random(seed).randbytes(size)
        reader, writer = await session.open_stream()

        async def send() -> None:
            view = memoryview(payload)
            step = random.Random(seed + 1).choice([1000, 16384, 65536, 1 << 20])
            for i in range(0, len(view), step):
                writer.write(view[i : i + step])
                await writer.drain()
            writer.write_eof()

        _, echoed = await asyncio.gather(send(), reader.read())
        return writer.stream_id, hashlib.sha256(echoed).digest() == hashlib.sha256(
            payload
        ).digest()

    async def run() -> None:
        async with await tcpls.serve(echo_handler, "127.0.0.1", 0, config=server_config) as server:
            async with tcpls.connect("127.0.0.1", server.port, config=client_config) as session:
                results = await asyncio.wait_for(
                    asyncio.gather(*(one(session, n, i) for i, n in enumerate(sizes))), 60
                )
        ids = [sid for sid, _ in results]
        assert sorted(ids) == list(range(0, 200, 2))  # client streams are even, in sequence
        assert all(ok for _, ok in results)

    asyncio.run(run())


def test_slow_reader_backpressure_reaches_drain(pki: DevPKI) -> None:
    """A reader that stops for longer than the user timeout: the sender's buffer stays
    bounded (drain blocks) and the connection survives (zero-window is not a failure)."""
    server_config, client_config = _configs(pki, user_timeout=0.5)
    reading = asyncio.Event()
    total = 48 << 20

    async def slow_handler(session: tcpls.Session) -> None:
        async for reader, writer in session:
            await asyncio.sleep(2.0)  # four user timeouts without reading
            reading.set()
            received = 0
            while chunk := await reader.read(1 << 16):
                received += len(chunk)
                await asyncio.sleep(0)  # a slow consumer
            writer.write(str(received).encode())
            writer.write_eof()

    async def run() -> None:
        async with await tcpls.serve(slow_handler, "127.0.0.1", 0, config=server_config) as server:
            async with tcpls.connect("127.0.0.1", server.port, config=client_config) as session:
                reader, writer = await session.open_stream()
                limit = session._core.tuning.stream_send_buffer
                chunk = random.randbytes(256 << 10)
                peak = 0
                blocked_before_reading = 0
                for _ in range(total // len(chunk)):
                    writer.write(chunk)
                    peak = max(peak, writer._buffered())
                    await writer.drain()
                    if not reading.is_set():
                        blocked_before_reading += 1
                writer.write_eof()
                assert await asyncio.wait_for(reader.read(), 30) == str(total).encode()
                # unsent bytes never exceed the high-water mark plus one write
                assert peak <= limit + len(chunk)
                # and the writer was held back while the peer did not read
                assert blocked_before_reading < total // len(chunk)
                # the unacknowledged bytes the sender keeps are bounded too
                assert session._core.unacked_bytes <= session._core.tuning.max_unacked_bytes

    asyncio.run(run())


def test_reader_api(pki: DevPKI) -> None:
    server_config, client_config = _configs(pki)

    async def run() -> None:
        async with await tcpls.serve(echo_handler, "127.0.0.1", 0, config=server_config) as server:
            async with tcpls.connect("127.0.0.1", server.port, config=client_config) as session:
                reader, writer = await session.open_stream()
                writer.write(b"line one\nline two\nABCDEFGHIJ")
                writer.write_eof()
                assert await reader.readline() == b"line one\n"
                assert await reader.readuntil(b"two\n") == b"line two\n"
                assert await reader.readexactly(4) == b"ABCD"
                with pytest.raises(asyncio.IncompleteReadError) as info:
                    await reader.readexactly(10)
                assert info.value.partial == b"EFGHIJ"
                assert reader.at_eof()
                assert await reader.read() == b""
                assert writer.get_extra_info("stream_id") == 0
                assert writer.get_extra_info("tcpls") is True
                assert writer.get_extra_info("peername")[0] == "127.0.0.1"
                await writer.wait_closed()
                assert writer.is_closing()
                with pytest.raises(tcpls.ConnectionClosedError):
                    writer.write(b"after FIN")

    asyncio.run(run())


def test_server_opens_streams_too(pki: DevPKI) -> None:
    server_config, client_config = _configs(pki)

    async def handler(session: tcpls.Session) -> None:
        _reader, writer = await session.open_stream()  # server-initiated: odd IDs
        writer.write(b"from the server")
        writer.write_eof()
        await writer.wait_closed()

    async def run() -> None:
        async with await tcpls.serve(handler, "127.0.0.1", 0, config=server_config) as server:
            async with tcpls.connect("127.0.0.1", server.port, config=client_config) as session:
                reader, _writer = await asyncio.wait_for(session.accept_stream(), 10)
                assert reader.stream_id == 1
                assert await reader.read() == b"from the server"

    asyncio.run(run())
