"""Client and server processes shared by the benchmarks: tcpls and stdlib ``ssl`` sinks.

A *sink* server counts the bytes of every upload and answers with the count, as
ASCII digits and a newline. A tcpls upload ends with the stream's FIN
(``write_eof``). asyncio's TLS transport cannot half-close, so a stdlib ``ssl``
upload starts with its length as an 8-byte big-endian integer instead and the
server reads exactly that many bytes.

Every function named ``*_server`` or ``*_client`` is a child-process target for
:class:`common.Child` (see :mod:`common` for the protocol with the parent). The
clients connect (handshake included) before saying ``ready``; what they measure
starts at ``go`` and ends when every answer has arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

from common import (
    CIPHER_SUITE,
    CLOSE_TIMEOUT,
    HOST,
    BenchmarkError,
    Control,
    Meter,
    MiB,
    Pki,
    check_ssl_cipher,
    check_tcpls_session,
    chunk_sizes,
    memory_mb,
    run_child,
    serve_asyncio_server,
    serve_commands,
    ssl_client_context,
    ssl_server_context,
)

#: Size of the reads of every server (the writers write ``--chunk`` bytes at a time).
READ_SIZE = MiB


async def _measure_uploads(
    control: Control,
    meter: Meter,
    pairs: Sequence[tuple[Any, Any]],
    upload: Callable[[Any, Any], Awaitable[int]],
    each: int,
    finished: list[float],
    cipher: str,
    name: str,
) -> None:
    """Wait for ``go``, run the uploads concurrently, check their counts, report to the parent."""
    await control.ready()
    memory_before = memory_mb()
    meter.start()
    counts = await asyncio.gather(*(upload(reader, writer) for reader, writer in pairs))
    measured = meter.stop()
    _check_counts(list(counts), each, name)
    control.reply(
        {
            **measured,
            "bytes": len(pairs) * each,
            "stream_seconds": sorted(finished),
            "cipher": cipher,
            "memory_before_mb": memory_before,
            "memory_mb": memory_mb(),
        }
    )


def _check_counts(counts: list[int], expected: int, what: str) -> None:
    wrong = [c for c in counts if c != expected]
    if wrong:
        raise BenchmarkError(f"{what}: server counted {wrong[0]} bytes, expected {expected}")


# -- tcpls --------------------------------------------------------------------------


def tcpls_sink_server(conn: Connection, pki: Pki, reliable: bool) -> None:
    """tcpls server: every stream of every session is counted and answered on its FIN."""
    run_child(conn, lambda control: _tcpls_sink(control, pki, reliable))


async def _tcpls_sink(control: Control, pki: Pki, reliable: bool) -> None:
    import tcpls
    from tcpls.errors import TCPLSError

    extra: dict[str, Any] = {"sessions": 0, "streams": 0, "bytes": 0, "tcpls_sessions": 0}

    async def consume(reader: tcpls.StreamReader, writer: tcpls.StreamWriter) -> None:
        count = 0
        while data := await reader.read(READ_SIZE):
            count += len(data)
        writer.write(b"%d\n" % count)
        writer.write_eof()
        await writer.drain()
        extra["streams"] += 1
        extra["bytes"] += count

    async def handler(session: tcpls.Session) -> None:
        extra["sessions"] += 1
        extra["tcpls_sessions"] += int(session.tcpls_negotiated)
        tasks: list[asyncio.Task[None]] = []
        async for reader, writer in session:
            tasks.append(asyncio.ensure_future(consume(reader, writer)))
        # the session is over: a stream that did not finish was cut by the peer
        for result in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(result, BaseException) and not isinstance(result, TCPLSError):
                raise result

    config = tcpls.ServerConfig(
        certfile=pki.cert_file, keyfile=pki.key_file, cipher_suites=[CIPHER_SUITE]
    )
    server = await tcpls.serve(handler, HOST, 0, config=config, reliable=reliable)
    try:
        await serve_commands(control, server.port, extra)
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), CLOSE_TIMEOUT)


def tcpls_upload_client(
    conn: Connection,
    port: int,
    pki: Pki,
    streams: int,
    bytes_per_stream: int,
    chunk: int,
    reliable: bool,
) -> None:
    """tcpls client: one session, ``streams`` streams uploading concurrently."""
    run_child(
        conn,
        lambda control: _tcpls_upload(
            control, port, pki, streams, bytes_per_stream, chunk, reliable
        ),
    )


async def _tcpls_upload(
    control: Control,
    port: int,
    pki: Pki,
    streams: int,
    bytes_per_stream: int,
    chunk: int,
    reliable: bool,
) -> None:
    import tcpls

    payload = os.urandom(chunk)
    meter = Meter()
    finished: list[float] = []  # seconds from go to each stream's answer

    async def upload(reader: tcpls.StreamReader, writer: tcpls.StreamWriter) -> int:
        for size in chunk_sizes(bytes_per_stream, chunk):
            writer.write(payload if size == chunk else payload[:size])
            await writer.drain()
        writer.write_eof()
        count = int(await reader.read())
        finished.append(meter.stop()["seconds"])
        return count

    config = tcpls.ClientConfig(cafile=pki.ca_file, cipher_suites=[CIPHER_SUITE])
    async with tcpls.connect(HOST, port, config=config, reliable=reliable) as session:
        cipher = check_tcpls_session(session, tcpls_expected=True)
        pairs = [await session.open_stream() for _ in range(streams)]
        await _measure_uploads(
            control, meter, pairs, upload, bytes_per_stream, finished, cipher, "tcpls",
        )  # fmt: skip


# -- stdlib ssl over asyncio streams --------------------------------------------------


def ssl_sink_server(conn: Connection, pki: Pki) -> None:
    """stdlib ``ssl`` server: counts each length-prefixed upload and answers with the count.

    A connection that closes before sending a length (a handshake-only client) is
    simply closed.
    """
    run_child(conn, lambda control: _ssl_sink(control, pki))


async def _ssl_sink(control: Control, pki: Pki) -> None:
    extra: dict[str, Any] = {"connections": 0, "uploads": 0, "bytes": 0}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        extra["connections"] += 1
        try:
            try:
                header = await reader.readexactly(8)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            expected = int.from_bytes(header, "big")
            count = 0
            while count < expected:
                data = await reader.read(min(READ_SIZE, expected - count))
                if not data:
                    break
                count += len(data)
            writer.write(b"%d\n" % count)
            await writer.drain()
            extra["uploads"] += 1
            extra["bytes"] += count
            with contextlib.suppress(ConnectionError):
                await reader.read()  # the client closes
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), CLOSE_TIMEOUT)

    server = await asyncio.start_server(
        handle, HOST, 0, ssl=ssl_server_context(pki), limit=READ_SIZE
    )
    await serve_asyncio_server(control, server, extra)


def ssl_upload_client(
    conn: Connection,
    port: int,
    pki: Pki,
    connections: int,
    bytes_per_connection: int,
    chunk: int,
) -> None:
    """stdlib ``ssl`` client: ``connections`` TLS connections uploading concurrently."""
    run_child(
        conn,
        lambda control: _ssl_upload(control, port, pki, connections, bytes_per_connection, chunk),
    )


async def _ssl_upload(
    control: Control,
    port: int,
    pki: Pki,
    connections: int,
    bytes_per_connection: int,
    chunk: int,
) -> None:
    payload = os.urandom(chunk)
    ctx = ssl_client_context(pki)
    meter = Meter()
    finished: list[float] = []  # seconds from go to each connection's answer

    async def upload(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
        writer.write(bytes_per_connection.to_bytes(8, "big"))
        for size in chunk_sizes(bytes_per_connection, chunk):
            writer.write(payload if size == chunk else payload[:size])
            await writer.drain()
        count = int(await reader.readline())
        finished.append(meter.stop()["seconds"])
        return count

    pairs = [
        await asyncio.open_connection(HOST, port, ssl=ctx, server_hostname=HOST, limit=READ_SIZE)
        for _ in range(connections)
    ]
    try:
        cipher = ""
        for _, writer in pairs:
            cipher = check_ssl_cipher(writer)
        await _measure_uploads(
            control, meter, pairs, upload, bytes_per_connection, finished, cipher, "ssl",
        )  # fmt: skip
    finally:
        for _, writer in pairs:
            writer.close()
        for _, writer in pairs:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), CLOSE_TIMEOUT)
