"""Server-wide limits on loopback: sessions at once, connections waiting for a ClientHello,
the memory budget, the session send budget, and finished sessions freed at once."""

from __future__ import annotations

import asyncio
import gc
import socket
import weakref

import pytest

import tcpls
from tcpls.apps.echo import echo_handler
from tcpls.devcert import DevPKI
from tcpls.errors import ConnectionClosedError, PeerAlert, raisable


def _configs(pki: DevPKI, **server: object) -> tuple[tcpls.ServerConfig, tcpls.ClientConfig]:
    return (
        tcpls.ServerConfig(
            certfile=str(pki.cert_file),
            keyfile=str(pki.key_file),
            **server,  # type: ignore[arg-type]
        ),
        tcpls.ClientConfig(cafile=str(pki.ca_file), server_name="localhost"),
    )


async def _echo(session: tcpls.Session, data: bytes = b"ping") -> bytes:
    reader, writer = await session.open_stream()
    writer.write(data)
    writer.write_eof()
    return await reader.read()


def test_sessions_beyond_max_sessions_are_canceled(pki: DevPKI) -> None:
    server_config, client_config = _configs(pki, max_sessions=2)

    async def run() -> None:
        async with await tcpls.serve(echo_handler, "127.0.0.1", 0, config=server_config) as srv:
            first = await tcpls.connect("127.0.0.1", srv.port, config=client_config)
            second = await tcpls.connect("127.0.0.1", srv.port, config=client_config)
            with pytest.raises(ConnectionClosedError, match="canceled the handshake"):
                await tcpls.connect("127.0.0.1", srv.port, config=client_config)
            # joins are not new sessions: they are still accepted
            await first.join("127.0.0.1", srv.port)
            assert await _echo(first) == b"ping"
            await second.aclose()
            for _ in range(100):
                if len(srv.sessions) < 2:
                    break
                await asyncio.sleep(0.01)
            third = await tcpls.connect("127.0.0.1", srv.port, config=client_config)
            assert await _echo(third) == b"ping"
            await first.aclose()
            await third.aclose()

    asyncio.run(run())


def test_beyond_max_pending_the_longest_waiting_connection_is_reset(pki: DevPKI) -> None:
    """A flood of connections that send nothing cannot keep a client out: beyond
    ``max_pending_connections`` the one that waited longest makes room."""
    server_config, client_config = _configs(pki, max_pending_connections=20)

    async def run() -> None:
        async with await tcpls.serve(echo_handler, "127.0.0.1", 0, config=server_config) as srv:
            loop = asyncio.get_running_loop()
            silent = []
            for _ in range(20):
                sock = socket.create_connection(("127.0.0.1", srv.port))
                silent.append(sock)
            await asyncio.sleep(0.1)
            async with tcpls.connect("127.0.0.1", srv.port, config=client_config) as session:
                assert await _echo(session) == b"ping"
            oldest = silent[0]
            oldest.settimeout(2)
            with pytest.raises(ConnectionResetError):
                data = await loop.run_in_executor(None, oldest.recv, 10)
                if data == b"":
                    raise ConnectionResetError
            for sock in silent[1:]:  # the others still wait (their hello_timeout is 5 s)
                sock.setblocking(False)
                with pytest.raises(BlockingIOError):
                    sock.recv(10)
            for sock in silent:
                sock.close()

    asyncio.run(run())


async def _hoarder(session: tcpls.Session) -> None:
    """Reads every stream to the end and keeps it (so that the session holds memory)."""
    kept: list[bytes] = []
    async for reader, _writer in session:
        kept.append(await reader.read())
    await asyncio.sleep(30)


def test_the_largest_session_is_ended_beyond_the_memory_budget(pki: DevPKI) -> None:
    # the budget is small; one session sends a lot and does not read the echo back
    server_config, client_config = _configs(pki, memory_budget=6 << 20)
    stingy = tcpls.ClientConfig(
        cafile=str(pki.ca_file),
        server_name="localhost",
        tuning=tcpls.SessionTuning(stream_receive_buffer=32 << 10),
    )

    async def run() -> None:
        async with await tcpls.serve(echo_handler, "127.0.0.1", 0, config=server_config) as srv:
            small = await tcpls.connect("127.0.0.1", srv.port, config=client_config)
            big = await tcpls.connect("127.0.0.1", srv.port, config=stingy)
            writers = []
            for _ in range(32):
                _reader, writer = await big.open_stream()
                writer.write(b"z" * (1 << 20))  # echoed back, never read: the server holds it
                writers.append(writer)
            for _ in range(200):
                if len(srv.sessions) == 1:
                    break
                await asyncio.sleep(0.02)
            assert len(srv.sessions) == 1  # the big session was ended

            async def read_all(writer: tcpls.StreamWriter) -> None:
                while await writer._reader.read(1 << 20):
                    pass

            # reading again (every stream: one alone could not resume the connection
            # while the others are full), the client sees why
            results = await asyncio.gather(*(read_all(w) for w in writers), return_exceptions=True)
            assert all(isinstance(r, PeerAlert) for r in results), results
            assert "internal_error" in str(results[0])
            assert await _echo(small) == b"ping"  # the small session is untouched
            await small.aclose()

    asyncio.run(run())


def test_drain_waits_on_the_session_send_budget(pki: DevPKI) -> None:
    tuning = tcpls.SessionTuning(
        stream_send_buffer=1 << 20, session_send_buffer=2 << 20, user_timeout=None
    )
    server_config = tcpls.ServerConfig(
        certfile=str(pki.cert_file),
        keyfile=str(pki.key_file),
        tuning=tcpls.SessionTuning(session_receive_buffer=512 << 10, user_timeout=None),
    )
    client_config = tcpls.ClientConfig(
        cafile=str(pki.ca_file), server_name="localhost", tuning=tuning
    )
    release = asyncio.Event()

    async def slow(session: tcpls.Session) -> None:
        await release.wait()
        async for reader, writer in session:
            writer.write(await reader.read())
            writer.write_eof()

    async def run() -> None:
        async with await tcpls.serve(slow, "127.0.0.1", 0, config=server_config) as srv:
            async with tcpls.connect("127.0.0.1", srv.port, config=client_config) as session:
                drained = 0
                for _ in range(60):  # 60 streams x 512 KiB: each under its own limit
                    _reader, writer = await session.open_stream()
                    writer.write(b"y" * (512 << 10))
                    try:
                        await asyncio.wait_for(writer.drain(), 0.5)
                        drained += 1
                    except TimeoutError:
                        break
                core = session._core
                assert drained < 60, "drain() never waited: nothing bounds the session"
                assert core.send_pending_total <= (2 << 20) + (512 << 10)
                release.set()

    asyncio.run(run())


def test_a_finished_session_is_freed_without_garbage_collection(pki: DevPKI) -> None:
    """A session ended by a protocol error holds no cycle: its memory is freed at once."""
    server_config, client_config = _configs(pki)

    async def run() -> None:
        async with await tcpls.serve(echo_handler, "127.0.0.1", 0, config=server_config) as srv:
            session = await tcpls.connect("127.0.0.1", srv.port, config=client_config)
            assert await _echo(session) == b"ping"
            (server_session,) = srv.sessions
            server_core = weakref.ref(server_session._core)
            server_side = weakref.ref(server_session)
            del server_session
            reader, writer = await session.open_stream()
            writer.write(b"x" * 100_000)
            await writer.drain()
            # a frame type that does not exist: decode_error ends the session
            conn = session._core.connections[0]
            conn.tls.send_record(b"\x42")
            session._protocols[0].transport.write(conn.tls.data_to_send())  # type: ignore[union-attr]
            with pytest.raises(tcpls.TCPLSError):
                await asyncio.wait_for(reader.read(), 5)
            for _ in range(100):
                if not srv.sessions:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)
            assert server_side() is None, _referrers(server_side())
            assert server_core() is None, _referrers(server_core())
            session.abort()

    gc.disable()
    try:
        asyncio.run(run())
    finally:
        gc.enable()


def _referrers(obj: object) -> list[str]:
    return [type(r).__name__ + ":" + repr(r)[:200] for r in gc.get_referrers(obj)]


def test_raisable_copies_keep_the_class_message_and_alert() -> None:
    error = PeerAlert(50)
    copy = raisable(error)
    assert copy is not error and type(copy) is PeerAlert
    assert copy.alert == 50 and str(copy) == str(error)
    try:
        raise copy
    except PeerAlert:
        pass
    assert error.__traceback__ is None


def test_sessions_that_hold_memory_and_do_nothing_cannot_keep_others_out(
    pki: DevPKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two sessions fill 90 % of the budget with echoes they never read, then do nothing:
    new sessions are refused for a while, then the stalled sessions are ended (largest
    first) and a newcomer is served. (The stall time is 3 s for the test, not 10 s.)"""
    monkeypatch.setattr("tcpls.aio.server._STALLED_FOR", 3.0)
    budget = 8 << 20
    server_config, client_config = _configs(pki, memory_budget=budget)
    stingy = tcpls.ClientConfig(
        cafile=str(pki.ca_file),
        server_name="localhost",
        tuning=tcpls.SessionTuning(stream_receive_buffer=32 << 10),
    )

    async def run() -> None:
        async with await tcpls.serve(echo_handler, "127.0.0.1", 0, config=server_config) as srv:
            hogs = [await tcpls.connect("127.0.0.1", srv.port, config=stingy) for _ in range(2)]
            # fill to just past 90 % of the budget (not past it: that would end the
            # largest at once), 256 KiB at a time, echoed back and never read
            for i in range(64):
                if srv.memory_use > budget * 0.9:
                    break
                _reader, writer = await hogs[i % 2].open_stream()
                writer.write(b"z" * (256 << 10))
                # (the server estimates every quarter second; its record buffers go back
                # a second after the last bytes: near the mark, let them)
                await asyncio.sleep(0.3 if srv.memory_use < budget * 0.75 else 1.3)
            assert budget * 0.9 < srv.memory_use <= budget, srv.memory_use >> 10
            served = None
            refused = 0
            for _ in range(40):  # refused at first, served once the hogs are ended
                try:
                    newcomer = await tcpls.connect("127.0.0.1", srv.port, config=client_config)
                except (ConnectionClosedError, PeerAlert):
                    refused += 1
                    await asyncio.sleep(0.25)
                    continue
                served = await _echo(newcomer)
                await newcomer.aclose()
                break
            assert served == b"ping" and refused > 0
            assert len(srv.sessions) <= 1  # one hog ended at least (the newcomer left)
            for hog in hogs:
                hog.abort()

    asyncio.run(run())


def test_open_streams_count_in_a_sessions_memory(pki: DevPKI) -> None:
    """One frame opens thousands of a client's streams: each costs the server its
    objects, and the session's estimate (the memory budget's input) says so."""
    from tcpls.core.streamset import STREAM_COST

    server_config, client_config = _configs(pki)

    async def run() -> None:
        async with await tcpls.serve(echo_handler, "127.0.0.1", 0, config=server_config) as srv:
            async with tcpls.connect("127.0.0.1", srv.port, config=client_config) as session:
                await _echo(session)
                (core,) = srv._table.sessions
                before = core.memory_use()
                writers = []
                for _ in range(500):
                    _reader, writer = await session.open_stream()
                    writer.write(b"x")  # opens it on the server; no EOF: it stays open
                    writers.append(writer)
                for _ in range(100):
                    if len(core.streams) >= 500:
                        break
                    await asyncio.sleep(0.02)
                assert core.memory_use() - before >= 500 * STREAM_COST

    asyncio.run(run())
