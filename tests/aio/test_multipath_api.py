"""Multipath through the asyncio API on loopback: join, failover, migration, addresses."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import tcpls
from tcpls.apps.fileserve import download, make_file_handler
from tcpls.devcert import DevPKI
from tests.helpers import until


def _configs(pki: DevPKI, **server: object) -> tuple[tcpls.ServerConfig, tcpls.ClientConfig]:
    tuning = tcpls.SessionTuning(user_timeout=0.5)
    return (
        tcpls.ServerConfig(
            certfile=str(pki.cert_file),
            keyfile=str(pki.key_file),
            tuning=tuning,
            **server,  # type: ignore[arg-type]
        ),
        tcpls.ClientConfig(cafile=str(pki.ca_file), server_name="localhost", tuning=tuning),
    )


async def _digest_handler(session: tcpls.Session) -> None:
    async for reader, writer in session:
        digest = hashlib.sha256()
        while chunk := await reader.read(1 << 20):
            digest.update(chunk)
        writer.write(digest.hexdigest().encode())
        writer.write_eof()


async def _upload(session: tcpls.Session, payload: bytes, on_mib: object = None) -> str:
    reader, writer = await session.open_stream()
    view = memoryview(payload)
    for i in range(0, len(view), 1 << 20):
        writer.write(view[i : i + (1 << 20)])
        await writer.drain()
        if on_mib is not None:
            on_mib(i >> 20)  # type: ignore[operator]
    writer.write_eof()
    return (await reader.read()).decode()


def test_join_spreads_data_and_tokens_are_replenished(pki: DevPKI) -> None:
    server_config, client_config = _configs(pki)

    async def run() -> None:
        async with await tcpls.serve(_digest_handler, "127.0.0.1", 0, config=server_config) as srv:
            async with tcpls.connect("127.0.0.1", srv.port, config=client_config) as session:
                # the first token came with the handshake, the others follow our Finished
                await until(lambda: session.spare_tokens == 3)
                assert session.spare_token_sequences == (1, 2, 3)
                assert session.connections_joined == 0
                info = await session.join("127.0.0.1", srv.port)
                assert info.id in (1, 2, 3) and session.spare_tokens == 2
                assert info.id not in session.spare_token_sequences
                assert session.connections_joined == 1
                (served,) = srv.sessions
                assert served.connections_joined == 1
                payload = os.urandom(30 << 20)
                assert await _upload(session, payload) == hashlib.sha256(payload).hexdigest()
                sent = {c.id: c.bytes_sent for c in session.connections}
                assert len(sent) == 2 and all(n > 1 << 20 for n in sent.values())
                await session.retire(info.id)
                assert [c.id for c in session.connections] == [0]
                await asyncio.sleep(0.1)
                assert session.spare_tokens == 3  # the server replenished, with a new sequence

    asyncio.run(run())


def test_failover_when_a_connection_is_reset(pki: DevPKI) -> None:
    server_config, client_config = _configs(pki)

    async def run() -> None:
        async with await tcpls.serve(_digest_handler, "127.0.0.1", 0, config=server_config) as srv:
            async with tcpls.connect("127.0.0.1", srv.port, config=client_config) as session:
                await session.join("127.0.0.1", srv.port)
                payload = os.urandom(40 << 20)

                def cut(mib: int) -> None:
                    if mib == 12:
                        session._protocols[0].transport.abort()  # type: ignore[union-attr]

                got = await asyncio.wait_for(_upload(session, payload, cut), 30)
                assert got == hashlib.sha256(payload).hexdigest()
                assert [c.id for c in session.connections] != [0]

    asyncio.run(run())


def test_break_before_make_rejoins_over_an_advertised_address(pki: DevPKI) -> None:
    async def run() -> None:
        # the server listens on every loopback address and advertises 127.0.0.2
        probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = probe.sockets[0].getsockname()[1]
        probe.close()
        await probe.wait_closed()
        server_config, client_config = _configs(pki, advertise=(f"127.0.0.2:{port}",))
        async with await tcpls.serve(_digest_handler, None, port, config=server_config):
            async with tcpls.connect("127.0.0.1", port, config=client_config) as session:
                payload = os.urandom(30 << 20)
                await asyncio.sleep(0.05)
                assert list(session.peer_addresses.values()) == [("127.0.0.2", port)]

                def cut(mib: int) -> None:
                    if mib == 8:
                        session._protocols[0].transport.abort()  # type: ignore[union-attr]

                got = await asyncio.wait_for(_upload(session, payload, cut), 30)
                assert got == hashlib.sha256(payload).hexdigest()
                (conn,) = session.connections
                assert conn.id != 0 and conn.remote_address == ("127.0.0.2", port)

    asyncio.run(run())


def test_migration_during_a_download(pki: DevPKI, tmp_path: object) -> None:
    from pathlib import Path

    files = Path(str(tmp_path)) / "files"
    files.mkdir()
    payload = os.urandom(24 << 20)
    (files / "f.bin").write_bytes(payload)
    server_config, client_config = _configs(pki)

    async def run() -> None:
        handler = make_file_handler(files)
        async with await tcpls.serve(handler, "0.0.0.0", 0, config=server_config) as srv:
            async with tcpls.connect("127.0.0.1", srv.port, config=client_config) as session:
                migrated: list[int] = []

                def progress(done: int) -> None:
                    if done > 8 << 20 and not migrated:
                        migrated.append(done)
                        session._background(session.migrate("127.0.0.3", srv.port))

                sink = _Sink()
                result = await download(session, "/f.bin", sink, on_progress=progress)
                assert result.sha256 == hashlib.sha256(payload).hexdigest()
                await asyncio.sleep(0.2)
                (conn,) = session.connections
                assert conn.id != 0 and conn.remote_address is not None
                assert conn.remote_address[0] == "127.0.0.3"

    asyncio.run(run())


class _Sink:
    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes) -> int:
        self.size += len(data)
        return len(data)


def test_robust_establishment_from_several_local_addresses(pki: DevPKI) -> None:
    server_config, client_config = _configs(pki)

    async def run() -> None:
        async with await tcpls.serve(_digest_handler, "127.0.0.1", 0, config=server_config) as srv:
            session = await tcpls.connect(
                "127.0.0.1",
                srv.port,
                config=client_config,
                local_addrs=["127.0.0.1", "127.0.0.4", "127.0.0.5"],
            )
            async with session:
                for _ in range(50):
                    if len(session.connections) == 3:
                        break
                    await asyncio.sleep(0.02)
                locals_ = sorted(
                    c.local_address[0] for c in session.connections if c.local_address
                )
                assert locals_ == ["127.0.0.1", "127.0.0.4", "127.0.0.5"]
                payload = os.urandom(5 << 20)
                assert await _upload(session, payload) == hashlib.sha256(payload).hexdigest()

    asyncio.run(run())


def test_addresses_advertised_and_withdrawn_at_run_time(pki: DevPKI) -> None:
    server_config, client_config = _configs(pki)

    async def run() -> None:
        async with await tcpls.serve(_digest_handler, "0.0.0.0", 0, config=server_config) as srv:
            async with tcpls.connect("127.0.0.1", srv.port, config=client_config) as session:
                srv.advertise(f"127.0.0.6:{srv.port}")
                for _ in range(50):
                    if session.peer_addresses:
                        break
                    await asyncio.sleep(0.02)
                ((_aid, address),) = session.peer_addresses.items()
                assert address == ("127.0.0.6", srv.port)
                info = await session.join(*address)
                srv.withdraw(f"127.0.0.6:{srv.port}")
                for _ in range(100):
                    if len(session.connections) == 1:
                        break
                    await asyncio.sleep(0.02)
                assert [c.id for c in session.connections] == [0]
                assert info.id not in [c.id for c in session.connections]
                assert session.peer_addresses == {}
                payload = os.urandom(1 << 20)
                assert await _upload(session, payload) == hashlib.sha256(payload).hexdigest()

    asyncio.run(run())


def test_no_new_connection_goes_to_a_withdrawn_address(pki: DevPKI) -> None:
    """draft-04 §5.2.8: after Remove Address the client neither joins nor rejoins there."""
    server_config, client_config = _configs(pki)

    async def run() -> None:
        async with await tcpls.serve(_digest_handler, "0.0.0.0", 0, config=server_config) as srv:
            async with tcpls.connect("127.0.0.1", srv.port, config=client_config) as session:
                srv.advertise(f"127.0.0.7:{srv.port}")
                for _ in range(50):
                    if session.peer_addresses:
                        break
                    await asyncio.sleep(0.02)
                await session.join("127.0.0.7", srv.port)
                srv.withdraw(f"127.0.0.7:{srv.port}")
                for _ in range(100):
                    if len(session.connections) == 1:
                        break
                    await asyncio.sleep(0.02)
                try:
                    await session.join("127.0.0.7", srv.port)
                except tcpls.TCPLSError as exc:
                    assert "withdrew 127.0.0.7" in str(exc)
                else:
                    raise AssertionError("joined a withdrawn address")
                # the last connection dies: the rejoin may only use the first address
                session._protocols[0].transport.abort()  # type: ignore[union-attr]
                for _ in range(200):
                    if session.connections and session.connections[0].id != 0:
                        break
                    await asyncio.sleep(0.02)
                (conn,) = session.connections
                assert conn.remote_address == ("127.0.0.1", srv.port)

    asyncio.run(run())


def test_joined_download_closes_promptly_on_both_ends(pki: DevPKI, tmp_path: Path) -> None:
    """The server's last ACKs may complete its stream's FIN on either connection.

    Regression: when the ACK for the record carrying FIN arrived before the ACK for
    earlier bytes sent on the other connection, ``wait_closed`` in the file handler
    was never woken; the server never sent close_notify and the client's ``aclose``
    timed out (the 5 s of ``tcpls get --join``).
    """
    (tmp_path / "f.bin").write_bytes(os.urandom(4_000_000))
    server_config, client_config = _configs(pki)

    async def run() -> None:
        handler = make_file_handler(tmp_path)
        async with await tcpls.serve(handler, "127.0.0.1", 0, config=server_config) as srv:
            loop = asyncio.get_running_loop()
            for _ in range(8):  # the order of the last two ACKs varied from run to run
                session = await tcpls.connect("127.0.0.1", srv.port, config=client_config)
                await session.join("127.0.0.1", srv.port)
                with open(os.devnull, "wb") as out:
                    result = await download(session, "/f.bin", out)
                assert result.bytes == 4_000_000
                start = loop.time()
                await session.aclose(timeout=2.0)
                assert session.error is None  # closed gracefully, not aborted
                assert loop.time() - start < 0.5
                for _ in range(50):  # the server's session ends too
                    if not srv.sessions:
                        break
                    await asyncio.sleep(0.01)
                assert not srv.sessions

    asyncio.run(run())
