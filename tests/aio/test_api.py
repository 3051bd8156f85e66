"""The asyncio API between our own client and server: TCPLS is negotiated."""

from __future__ import annotations

import asyncio
import os

import pytest

import tcpls
from tcpls.apps.echo import echo_handler
from tcpls.devcert import DevPKI


def _configs(pki: DevPKI, **client: object) -> tuple[tcpls.ServerConfig, tcpls.ClientConfig]:
    server = tcpls.ServerConfig(certfile=str(pki.cert_file), keyfile=str(pki.key_file))
    return server, tcpls.ClientConfig(cafile=str(pki.ca_file), **client)  # type: ignore[arg-type]


def test_our_client_and_server_negotiate_tcpls(pki: DevPKI) -> None:
    server_config, client_config = _configs(pki)

    async def run() -> None:
        async with await tcpls.serve(echo_handler, "127.0.0.1", 0, config=server_config) as server:
            async with tcpls.connect("127.0.0.1", server.port, config=client_config) as session:
                assert session.tcpls_negotiated
                reader, writer = await session.open_stream()
                payload = os.urandom(1_000_000)
                writer.write(payload)
                writer.write_eof()
                await writer.drain()
                assert await asyncio.wait_for(reader.read(), 20) == payload
                (conn,) = session.connections
                assert conn.id == 0 and conn.bytes_sent > len(payload)
                assert conn.rtt is not None and conn.cwnd

    asyncio.run(run())


@pytest.mark.parametrize("suite", ["TLS_AES_128_GCM_SHA256", "TLS_CHACHA20_POLY1305_SHA256"])
def test_cipher_suite_choice(pki: DevPKI, suite: str) -> None:
    server_config, client_config = _configs(pki, cipher_suites=[suite])

    async def run() -> None:
        async with await tcpls.serve(echo_handler, "127.0.0.1", 0, config=server_config) as server:
            async with tcpls.connect("127.0.0.1", server.port, config=client_config) as session:
                assert session.cipher_suite == suite

    asyncio.run(run())


def test_plain_tls_when_client_does_not_offer_tcpls(pki: DevPKI) -> None:
    server_config, client_config = _configs(pki, tcpls=False)

    async def run() -> None:
        async with await tcpls.serve(echo_handler, "127.0.0.1", 0, config=server_config) as server:
            async with tcpls.connect("127.0.0.1", server.port, config=client_config) as session:
                assert not session.tcpls_negotiated
                reader, writer = await session.open_stream()
                writer.write(b"plain\n")
                assert await asyncio.wait_for(reader.readline(), 10) == b"plain\n"
                with pytest.raises(tcpls.TCPLSError):
                    await session.open_stream()

    asyncio.run(run())


def test_plain_tls_when_server_does_not_offer_tcpls(pki: DevPKI) -> None:
    server_config, client_config = _configs(pki)
    server_config = tcpls.ServerConfig(
        certfile=server_config.certfile, keyfile=server_config.keyfile, tcpls=False
    )

    async def run() -> None:
        async with await tcpls.serve(echo_handler, "127.0.0.1", 0, config=server_config) as server:
            async with tcpls.connect("127.0.0.1", server.port, config=client_config) as session:
                assert not session.tcpls_negotiated
                reader, writer = await session.open_stream()
                writer.write(b"x" * 100_000)
                writer.write_eof()
                assert len(await asyncio.wait_for(reader.read(), 10)) == 100_000

    asyncio.run(run())


def test_bad_server_files_fail_before_listening(pki: DevPKI, tmp_path: object) -> None:
    async def run(config: tcpls.ServerConfig) -> None:
        await tcpls.serve(echo_handler, "127.0.0.1", 0, config=config)

    with pytest.raises(tcpls.ConfigurationError, match="not found"):
        asyncio.run(
            run(tcpls.ServerConfig(certfile="/nonexistent.pem", keyfile=str(pki.key_file)))
        )
    with pytest.raises(tcpls.ConfigurationError, match="does not match"):
        other = tcpls.ServerConfig(certfile=str(pki.cert_file), keyfile=str(pki.ca_key_file))
        asyncio.run(run(other))


def test_wrong_server_name_is_rejected(pki: DevPKI) -> None:
    server_config, client_config = _configs(pki, server_name="wrong.example")

    async def run() -> None:
        async with await tcpls.serve(echo_handler, "127.0.0.1", 0, config=server_config) as server:
            with pytest.raises(tcpls.CertificateVerificationError, match=r"wrong\.example"):
                await tcpls.connect("127.0.0.1", server.port, config=client_config)

    asyncio.run(run())


def test_silent_and_slow_clients_are_dropped(pki: DevPKI) -> None:
    """A connection that never sends a ClientHello, or never finishes its handshake,
    is closed after hello_timeout: it cannot hold server resources for ever."""
    import socket
    import time

    config = tcpls.ServerConfig(
        certfile=str(pki.cert_file), keyfile=str(pki.key_file), hello_timeout=0.3
    )

    async def run() -> None:
        async with await tcpls.serve(echo_handler, "127.0.0.1", 0, config=config) as server:
            loop = asyncio.get_running_loop()

            def silent() -> float:
                with socket.create_connection(("127.0.0.1", server.port)) as sock:
                    start = time.monotonic()
                    sock.settimeout(5)
                    assert sock.recv(100) == b""  # closed by the server
                    return time.monotonic() - start

            def half_hello() -> float:
                from tcpls.tls.hello import build_join_client_hello

                hello, _ = build_join_client_hello(bytes(32), server_name="localhost")
                record = bytes([22, 3, 1]) + len(hello).to_bytes(2, "big") + hello
                with socket.create_connection(("127.0.0.1", server.port)) as sock:
                    sock.sendall(record[: len(record) // 2])
                    start = time.monotonic()
                    sock.settimeout(5)
                    while sock.recv(100):
                        pass
                    return time.monotonic() - start

            for probe in (silent, half_hello):
                waited = await loop.run_in_executor(None, probe)
                assert 0.2 < waited < 3

    asyncio.run(run())


def test_a_server_that_closes_at_once_is_a_connection_error() -> None:
    """A listener that accepts and closes before the ClientHello (a load balancer with no
    server up does): connect raises ConnectionClosedError (or an OSError), never an
    internal error."""
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))

    def slam() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.close()

    threading.Thread(target=slam, daemon=True).start()

    async def run() -> set[str]:
        seen: set[str] = set()
        for _ in range(60):
            try:
                await tcpls.connect(
                    "127.0.0.1", listener.getsockname()[1], config=tcpls.ClientConfig(verify=False)
                )
            except (tcpls.ConnectionClosedError, OSError) as exc:
                seen.add(type(exc).__name__)
        return seen

    try:
        assert asyncio.run(run())
    finally:
        listener.close()
