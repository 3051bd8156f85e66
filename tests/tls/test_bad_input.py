"""Bad input gets an alert and a clean close: never a hang, never a traceback.

Each case talks to a real tcpls server over TCP (raw bytes or our sans-I/O
client driven by hand), then checks the alert that came back and that the
server closed the connection.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator

import pytest

import tcpls
from tcpls.devcert import DevPKI
from tcpls.errors import AlertDescription, DecodeError, PeerAlert, UnexpectedMessage
from tcpls.tls.connection import TLSConnection
from tcpls.tls.events import ConnectionFailed
from tcpls.tls.hs.client import ClientEngine
from tcpls.tls.record import ContentType
from tests.helpers import SyncTLS, ThreadServer, feed_tls, pull_tls, read_until_eof


@pytest.fixture
def server(pki: DevPKI) -> Iterator[ThreadServer]:
    config = tcpls.ServerConfig(certfile=str(pki.cert_file), keyfile=str(pki.key_file))
    with ThreadServer(config) as srv:
        yield srv


@pytest.fixture(autouse=True)
def no_error_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.WARNING)
    yield
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, f"errors logged: {[r.getMessage() for r in bad]}"


def plaintext_alert(description: int) -> bytes:
    return bytes([ContentType.alert, 3, 3, 0, 2, 2, description])


def new_client(pki: DevPKI) -> TLSConnection:
    engine = ClientEngine(server_name="localhost", cafile=str(pki.ca_file))
    return TLSConnection.client(engine)


def test_garbage_instead_of_client_hello(server: ThreadServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n")
        reply = read_until_eof(sock)
    assert reply == plaintext_alert(AlertDescription.decode_error)


def test_garbage_handshake_body(server: ThreadServer) -> None:
    body = b"\x01\x00\x00\x10" + b"\xff" * 16  # a "ClientHello" of 16 junk bytes
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(bytes([22, 3, 1]) + len(body).to_bytes(2, "big") + body)
        reply = read_until_eof(sock)
    assert reply == plaintext_alert(AlertDescription.decode_error)


def test_record_over_the_size_limit(server: ThreadServer) -> None:
    length = 2**14 + 257
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(bytes([22, 3, 1]) + length.to_bytes(2, "big") + bytes(length))
        reply = read_until_eof(sock)
    assert reply == plaintext_alert(AlertDescription.record_overflow)


def test_plaintext_record_over_2_14(server: ThreadServer) -> None:
    length = 2**14 + 1  # legal for ciphertext, too long for a plaintext record
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(bytes([22, 3, 1]) + length.to_bytes(2, "big") + b"\x01" + bytes(length - 1))
        reply = read_until_eof(sock)
    assert reply == plaintext_alert(AlertDescription.record_overflow)


def test_tampered_record_gets_bad_record_mac(server: ThreadServer, pki: DevPKI) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        client = SyncTLS(new_client(pki), sock)
        client.handshake()
        client.conn.send_data(b"x" * 100)
        record = bytearray(client.conn.data_to_send())
        record[20] ^= 0x01
        sock.sendall(record)
        while not client.eof and client.failed() is None:
            client.pump()
    failure = client.failed()
    assert failure is not None and isinstance(failure.error, PeerAlert)
    assert failure.error.alert == AlertDescription.bad_record_mac


def test_handshake_message_spanning_a_key_change(server: ThreadServer, pki: DevPKI) -> None:
    conn = new_client(pki)
    conn.start()
    hello = conn.data_to_send()
    # Append the first bytes of another handshake message to the ClientHello's record:
    # the server installs new read keys after the ClientHello, so they span a key change.
    extra = b"\x14\x00\x00\x20" + bytes(8)
    length = int.from_bytes(hello[3:5], "big") + len(extra)
    record = hello[:3] + length.to_bytes(2, "big") + hello[5:] + extra
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(record)
        reply = read_until_eof(sock)
    assert reply == plaintext_alert(AlertDescription.unexpected_message)


def test_change_cipher_spec_with_a_wrong_body(server: ThreadServer, pki: DevPKI) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        client = SyncTLS(new_client(pki), sock)
        client.conn.start()
        client.flush()
        # read the server's flight; our client answers with CCS + Finished: replace them
        while not client.conn.handshake_complete:  # up to the server's Finished
            sock.settimeout(5)
            client.conn.receive_data(sock.recv(65536))
        client.conn.data_to_send()  # drop our CCS and Finished
        sock.sendall(bytes([20, 3, 3, 0, 1, 2]))
        data = read_until_eof(sock)
    _, events = feed_tls(client.conn, data)
    failures = [e for e in events if isinstance(e, ConnectionFailed)]
    assert failures and isinstance(failures[0].error, PeerAlert)
    assert failures[0].error.alert == AlertDescription.unexpected_message


def test_client_detects_server_hello_spanning_key_change(pki: DevPKI) -> None:
    """The same rule on the client side, in memory: ServerHello + extra bytes in one record."""
    from tcpls.core.endpoint import ServerEndpoint

    endpoint = ServerEndpoint(
        tcpls.ServerConfig(certfile=str(pki.cert_file), keyfile=str(pki.key_file))
    )
    server = endpoint.new_connection().tls
    client = new_client(pki)
    client.start()
    server.receive_data(client.data_to_send())
    flight = server.data_to_send()
    sh_len = int.from_bytes(flight[3:5], "big")
    sh_record = flight[: 5 + sh_len]
    tampered = (
        sh_record[:3] + (sh_len + 4).to_bytes(2, "big") + sh_record[5:] + b"\x08\x00\x00\x02"
    )
    client.receive_data(tampered)
    ev = client.next_event()
    assert isinstance(ev, ConnectionFailed) and isinstance(ev.error, UnexpectedMessage)
    assert client.data_to_send()  # the alert


def test_ccs_after_handshake_is_rejected(pki: DevPKI) -> None:
    from tcpls.core.endpoint import ServerEndpoint

    endpoint = ServerEndpoint(
        tcpls.ServerConfig(certfile=str(pki.cert_file), keyfile=str(pki.key_file))
    )
    server = endpoint.new_connection().tls
    client = new_client(pki)
    client.start()
    for _ in range(4):
        server.receive_data(client.data_to_send())
        client.receive_data(server.data_to_send())
    assert client.handshake_complete and server.handshake_complete
    pull_tls(server)
    _, events = feed_tls(server, bytes([20, 3, 3, 0, 1, 1]))
    assert any(
        isinstance(e, ConnectionFailed) and isinstance(e.error, UnexpectedMessage) for e in events
    )


def test_server_survives_bad_sessions(server: ThreadServer, pki: DevPKI) -> None:
    """After all of the above, the server still serves."""
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(b"\x16\x03\x01\x00\x05hello")
            read_until_eof(sock)
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        client = SyncTLS(new_client(pki), sock)
        assert client.handshake().tcpls


def test_only_the_initial_client_hello_record_says_tls_1_0(pki: DevPKI) -> None:
    """RFC 8446 §5.1: legacy_record_version is 0x0303 on every record but the initial
    ClientHello (where 0x0301 is allowed); the server's ServerHello record says 0x0303."""
    from tcpls.core.endpoint import ServerEndpoint

    endpoint = ServerEndpoint(
        tcpls.ServerConfig(certfile=str(pki.cert_file), keyfile=str(pki.key_file))
    )
    server = endpoint.new_connection().tls
    client = new_client(pki)
    client.start()
    hello = client.data_to_send()
    assert hello[:3] == b"\x16\x03\x01"
    server.receive_data(hello)
    flight = server.data_to_send()
    assert flight[:3] == b"\x16\x03\x03"  # the ServerHello
    pos = 0
    while pos < len(flight):  # every record of the server's flight
        assert flight[pos + 1 : pos + 3] == b"\x03\x03"
        pos += 5 + int.from_bytes(flight[pos + 3 : pos + 5], "big")


@pytest.mark.parametrize(
    ("alert_record", "expected"),
    [
        (b"\x15\x03\x03\x00\x00", UnexpectedMessage),  # an empty alert record
        (b"\x15\x03\x03\x00\x01\x02", DecodeError),  # half an alert
    ],
)
def test_an_empty_alert_record_is_unexpected_and_a_short_one_malformed(
    pki: DevPKI, alert_record: bytes, expected: type
) -> None:
    from tcpls.core.endpoint import ServerEndpoint

    endpoint = ServerEndpoint(
        tcpls.ServerConfig(certfile=str(pki.cert_file), keyfile=str(pki.key_file))
    )
    server = endpoint.new_connection().tls
    client = new_client(pki)
    client.start()
    server.receive_data(client.data_to_send())
    server.data_to_send()
    _, events = feed_tls(server, alert_record)
    (failed,) = [e for e in events if isinstance(e, ConnectionFailed)]
    assert type(failed.error) is expected
    assert server.data_to_send()  # its alert (protected: the server has handshake keys)


def test_a_second_change_cipher_spec_is_unexpected(pki: DevPKI) -> None:
    """Middlebox compatibility allows one ChangeCipherSpec during the handshake; any
    number was accepted. The second is an unexpected_message (as OpenSSL does since
    CVE-2020-25648)."""
    from tcpls.core.endpoint import ServerEndpoint

    endpoint = ServerEndpoint(
        tcpls.ServerConfig(certfile=str(pki.cert_file), keyfile=str(pki.key_file))
    )
    ccs = bytes([20, 3, 3, 0, 1, 1])
    server = endpoint.new_connection().tls
    client = new_client(pki)
    client.start()
    _, events = feed_tls(server, client.data_to_send() + ccs)
    assert not [e for e in events if isinstance(e, ConnectionFailed)]
    _, events = feed_tls(server, ccs)
    (failed,) = [e for e in events if isinstance(e, ConnectionFailed)]
    assert isinstance(failed.error, UnexpectedMessage)
