"""Interop with OpenSSL's s_server and s_client (plain TLS 1.3 fallback, design: Fallback).

Certificates come from a test CA generated per session; the client verifies
the server against it. These tests need the ``openssl`` command (``make test``
installs it as root) and skip with that reason otherwise.
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import tcpls
from tcpls.devcert import DevPKI
from tcpls.tls.connection import TLSConnection
from tcpls.tls.hs.client import ClientEngine
from tests.helpers import SyncTLS, ThreadServer, need_openssl, openssl_server

SUITES = ["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"]


def _read_stdout_until(
    proc: subprocess.Popen[bytes], needle: bytes, timeout: float = 10.0
) -> bytes:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    out = b""
    deadline = time.monotonic() + timeout
    while needle not in out:
        if time.monotonic() > deadline:
            raise AssertionError(f"{needle!r} not seen; got {out[-1000:]!r}")
        select.select([fd], [], [], 0.2)
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            continue
        if not chunk:
            raise AssertionError(f"peer exited; output {out[-1000:]!r}")
        out += chunk
    return out


def _server_args(pki: DevPKI, *extra: str) -> list[str]:
    return ["-tls1_3", "-cert", str(pki.cert_file), "-key", str(pki.key_file), *extra]


async def _client_round_trip(port: int, pki: DevPKI, suite: str | None = None) -> tcpls.Session:
    config = tcpls.ClientConfig(
        cafile=str(pki.ca_file),
        server_name="localhost",
        cipher_suites=[suite] if suite else None,
    )
    session = await tcpls.connect("127.0.0.1", port, config=config)
    assert not session.tcpls_negotiated  # OpenSSL does not speak TCPLS: plain TLS fallback
    reader, writer = await session.open_stream()
    writer.write(b"hello openssl\n")
    await writer.drain()
    line = await asyncio.wait_for(reader.readline(), 10)
    assert line == b"lssnepo olleh\n"  # s_server -rev sends each line back reversed
    return session


@pytest.mark.parametrize("suite", SUITES)
@pytest.mark.parametrize("key_type", ["ecdsa", "rsa"])
def test_our_client_against_s_server(
    suite: str, key_type: str, pki: DevPKI, pki_rsa: DevPKI
) -> None:
    keys = pki if key_type == "ecdsa" else pki_rsa
    with openssl_server(_server_args(keys, "-rev", "-ciphersuites", suite)) as (_, port):

        async def run() -> str | None:
            session = await _client_round_trip(port, keys, suite)
            suite_used = session.cipher_suite
            await session.aclose(timeout=5)
            return suite_used

        assert asyncio.run(run()) == suite


def test_data_both_ways_with_s_server_stdio(pki: DevPKI) -> None:
    """Bytes from us reach s_server's stdout; bytes on its stdin reach us."""
    with openssl_server(_server_args(pki, "-quiet")) as (proc, port):

        async def run() -> None:
            config = tcpls.ClientConfig(cafile=str(pki.ca_file), server_name="localhost")
            async with tcpls.connect("127.0.0.1", port, config=config) as session:
                reader, writer = await session.open_stream()
                payload = os.urandom(64).hex().encode() + b"\n"
                writer.write(payload)
                await writer.drain()
                await asyncio.to_thread(_read_stdout_until, proc, payload)
                assert proc.stdin is not None
                proc.stdin.write(b"from openssl\n")
                proc.stdin.flush()
                assert await asyncio.wait_for(reader.readline(), 10) == b"from openssl\n"

        asyncio.run(run())


def test_certificate_from_another_ca_is_rejected(pki: DevPKI, other_pki: DevPKI) -> None:
    with openssl_server(_server_args(pki, "-rev")) as (_, port):
        config = tcpls.ClientConfig(cafile=str(other_pki.ca_file), server_name="localhost")

        async def run() -> None:
            await tcpls.connect("127.0.0.1", port, config=config)

        with pytest.raises(tcpls.CertificateVerificationError, match="issuer"):
            asyncio.run(run())


def test_keylog_matches_openssl(pki: DevPKI, tmp_path: Path) -> None:
    ours, theirs = tmp_path / "ours.log", tmp_path / "openssl.log"
    with openssl_server(_server_args(pki, "-rev", "-keylogfile", str(theirs))) as (_, port):

        async def run() -> None:
            config = tcpls.ClientConfig(
                cafile=str(pki.ca_file), server_name="localhost", keylog_file=str(ours)
            )
            async with tcpls.connect("127.0.0.1", port, config=config) as session:
                reader, writer = await session.open_stream()
                writer.write(b"abc\n")
                assert await asyncio.wait_for(reader.readline(), 10) == b"cba\n"

        asyncio.run(run())
    labels = {
        "CLIENT_HANDSHAKE_TRAFFIC_SECRET",
        "SERVER_HANDSHAKE_TRAFFIC_SECRET",
        "CLIENT_TRAFFIC_SECRET_0",
        "SERVER_TRAFFIC_SECRET_0",
        "EXPORTER_SECRET",
    }
    our_lines = set(ours.read_text().splitlines())
    their_lines = {ln for ln in theirs.read_text().splitlines() if ln.split(" ")[0] in labels}
    assert {ln.split(" ")[0] for ln in our_lines} == labels
    # the wait_port probe leaves no lines; the only session is ours
    assert our_lines == their_lines


def test_keylog_from_environment(
    pki: DevPKI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "env.log"
    monkeypatch.setenv("SSLKEYLOGFILE", str(path))
    with openssl_server(_server_args(pki, "-rev")) as (_, port):

        async def run() -> None:
            config = tcpls.ClientConfig(cafile=str(pki.ca_file), server_name="localhost")
            session = await tcpls.connect("127.0.0.1", port, config=config)
            await session.aclose(timeout=5)

        asyncio.run(run())
    assert len(path.read_text().splitlines()) == 5


def test_psk_resumption_against_s_server(pki: DevPKI) -> None:
    with openssl_server(_server_args(pki, "-rev")) as (_, port):

        async def run() -> None:
            config = tcpls.ClientConfig(cafile=str(pki.ca_file), server_name="localhost")
            first = await tcpls.connect("127.0.0.1", port, config=config)
            reader, writer = await first.open_stream()
            writer.write(b"one\n")
            assert await asyncio.wait_for(reader.readline(), 10) == b"eno\n"
            ticket = first.session_ticket
            assert ticket is not None and not first.session_resumed
            await first.aclose(timeout=5)
            config2 = tcpls.ClientConfig(
                cafile=str(pki.ca_file), server_name="localhost", session_ticket=ticket
            )
            second = await tcpls.connect("127.0.0.1", port, config=config2)
            assert second.session_resumed
            reader, writer = await second.open_stream()
            writer.write(b"two\n")
            assert await asyncio.wait_for(reader.readline(), 10) == b"owt\n"
            await second.aclose(timeout=5)

        asyncio.run(run())


def test_psk_resumption_survives_early_data_tickets(pki: DevPKI) -> None:
    """A ticket that allows 0-RTT must not make us offer early data (design: Early data)."""
    with openssl_server(_server_args(pki, "-rev", "-max_early_data", "16384")) as (_, port):

        async def run() -> None:
            config = tcpls.ClientConfig(cafile=str(pki.ca_file), server_name="localhost")
            first = await tcpls.connect("127.0.0.1", port, config=config)
            reader, writer = await first.open_stream()
            writer.write(b"x\n")
            await asyncio.wait_for(reader.readline(), 10)
            ticket = first.session_ticket
            await first.aclose(timeout=5)
            config2 = tcpls.ClientConfig(
                cafile=str(pki.ca_file), server_name="localhost", session_ticket=ticket
            )
            second = await tcpls.connect("127.0.0.1", port, config=config2)
            assert second.session_resumed
            reader, writer = await second.open_stream()
            writer.write(b"ab\n")
            assert await asyncio.wait_for(reader.readline(), 10) == b"ba\n"
            await second.aclose(timeout=5)

        asyncio.run(run())


def _sync_client(pki: DevPKI, port: int) -> SyncTLS:
    engine = ClientEngine(server_name="localhost", cafile=str(pki.ca_file))
    client = SyncTLS(TLSConnection.client(engine), socket.create_connection(("127.0.0.1", port)))
    client.handshake()
    return client


def test_key_update_initiated_by_openssl(pki: DevPKI) -> None:
    # without -quiet, a "K" line on s_server's stdin sends KeyUpdate(update_requested)
    with openssl_server(_server_args(pki)) as (proc, port):
        client = _sync_client(pki, port)
        read_before = client.conn.read_protection
        write_before = client.conn.write_protection
        assert read_before is not None and write_before is not None
        assert proc.stdin is not None
        proc.stdin.write(b"K\n")
        proc.stdin.flush()
        time.sleep(0.3)
        proc.stdin.write(b"after update\n")
        proc.stdin.flush()
        client.recv_until(lambda b: b"after update\n" in b)
        read_after, write_after = client.conn.read_protection, client.conn.write_protection
        assert read_after is not None and write_after is not None
        assert read_after.keys.secret == read_before.keys.next_generation().secret
        # we answered the request by updating our own keys too
        assert write_after.keys.secret == write_before.keys.next_generation().secret
        client.send(b"we still talk\n")
        _read_stdout_until(proc, b"we still talk\n")
        client.sock.close()


def test_key_update_initiated_by_us(pki: DevPKI) -> None:
    with openssl_server(_server_args(pki, "-rev")) as (_, port):
        client = _sync_client(pki, port)
        read_before = client.conn.read_protection
        assert read_before is not None
        for i in range(3):
            client.conn.key_update(request_peer_update=True)
            client.send(f"round {i}\n".encode())
            client.recv_until(lambda b, i=i: f"{i} dnuor\n".encode() in b)
        read_after = client.conn.read_protection
        assert read_after is not None
        # OpenSSL answered each request with a KeyUpdate of its own
        expected = read_before.keys
        for _ in range(3):
            expected = expected.next_generation()
        assert read_after.keys.secret == expected.secret
        client.sock.close()


# ----------------------------------------------------------- s_client -> our server


def _s_client(
    args: list[str], payload: bytes, expect: bytes | None = None, quiet: bool = True
) -> bytes:
    """Run s_client: send ``payload``, wait until ``expect`` (default: payload) came back,
    then close standard input and return everything it printed."""
    exe = need_openssl()
    proc = subprocess.Popen(
        [exe, "s_client", *args, *(["-quiet"] if quiet else []), "-no_ign_eof"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdin is not None
        proc.stdin.write(payload)
        proc.stdin.flush()
        out = _read_stdout_until(proc, expect if expect is not None else payload)
        proc.stdin.close()
        assert proc.wait(10) == 0, proc.stderr.read() if proc.stderr else b""
        return out
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def our_server(pki: DevPKI) -> Iterator[ThreadServer]:
    config = tcpls.ServerConfig(certfile=str(pki.cert_file), keyfile=str(pki.key_file))
    with ThreadServer(config) as srv:
        yield srv


@pytest.mark.parametrize("suite", SUITES)
def test_s_client_against_our_server(suite: str, pki: DevPKI, our_server: ThreadServer) -> None:
    payload = b"hello from s_client " + suite.encode() + b"\n"
    args = [
        "-connect",
        f"127.0.0.1:{our_server.port}",
        "-tls1_3",
        "-ciphersuites",
        suite,
        "-CAfile",
        str(pki.ca_file),
        "-servername",
        "localhost",
        "-verify_return_error",
    ]
    assert _s_client(args, payload) == payload  # echoed back over plain TLS 1.3


def test_s_client_with_rsa_certificate(pki_rsa: DevPKI) -> None:
    config = tcpls.ServerConfig(certfile=str(pki_rsa.cert_file), keyfile=str(pki_rsa.key_file))
    with ThreadServer(config) as srv:
        args = [
            "-connect",
            f"127.0.0.1:{srv.port}",
            "-tls1_3",
            "-CAfile",
            str(pki_rsa.ca_file),
            "-servername",
            "localhost",
            "-verify_return_error",
        ]
        assert _s_client(args, b"rsa\n") == b"rsa\n"


def test_s_client_keylog_matches_ours(pki: DevPKI, tmp_path: Path) -> None:
    ours, theirs = tmp_path / "server.log", tmp_path / "s_client.log"
    config = tcpls.ServerConfig(
        certfile=str(pki.cert_file), keyfile=str(pki.key_file), keylog_file=str(ours)
    )
    with ThreadServer(config) as srv:
        args = [
            "-connect",
            f"127.0.0.1:{srv.port}",
            "-tls1_3",
            "-CAfile",
            str(pki.ca_file),
            "-servername",
            "localhost",
            "-keylogfile",
            str(theirs),
        ]
        _s_client(args, b"hello\n")
    their = {ln for ln in theirs.read_text().splitlines() if not ln.startswith("#")}
    assert set(ours.read_text().splitlines()) == their


@pytest.mark.parametrize("command", [b"k", b"K"])
def test_key_update_from_s_client_to_our_server(
    command: bytes, pki: DevPKI, our_server: ThreadServer
) -> None:
    """s_client sends KeyUpdate on a "k" line ("K": and requests ours); data still flows."""
    exe = need_openssl()
    proc = subprocess.Popen(
        [
            exe,
            "s_client",
            "-connect",
            f"127.0.0.1:{our_server.port}",
            "-tls1_3",
            "-CAfile",
            str(pki.ca_file),
            "-servername",
            "localhost",
            "-no_ign_eof",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert proc.stdin is not None
        # without -quiet, a read that is exactly "k\n" is a command, not data
        proc.stdin.write(b"before\n")
        proc.stdin.flush()
        out = _read_stdout_until(proc, b"\nbefore\n")
        proc.stdin.write(command + b"\n")
        proc.stdin.flush()
        out += _read_stdout_until(proc, b"KEYUPDATE\n")
        proc.stdin.write(b"after\n")
        proc.stdin.flush()
        out += _read_stdout_until(proc, b"after\n")
    finally:
        proc.kill()
        proc.wait()
    assert out.endswith(b"KEYUPDATE\nafter\n")


def test_exporter_matches_openssl(pki: DevPKI) -> None:
    """RFC 8446 §7.5 keying material equals what OpenSSL exports for the same session."""
    label = "EXPERIMENTAL-tcpls-test"
    args = _server_args(pki, "-keymatexport", label, "-keymatexportlen", "32")
    with openssl_server(args) as (proc, port):

        async def run() -> tuple[bytes, bytes]:
            config = tcpls.ClientConfig(cafile=str(pki.ca_file), server_name="localhost")
            async with tcpls.connect("127.0.0.1", port, config=config) as session:
                _reader, writer = await session.open_stream()
                writer.write(b"marker\n")
                await writer.drain()
                printed = await asyncio.to_thread(_read_stdout_until, proc, b"marker\n")
                return session.export_keying_material(label.encode(), b"", 32), printed

        ours, printed = asyncio.run(run())
    # s_server prints "    Keying material: <HEX>" once the handshake completed
    line = next(ln for ln in printed.decode().splitlines() if "Keying material:" in ln)
    assert ours.hex().upper() == line.split(":", 1)[1].strip().upper()
