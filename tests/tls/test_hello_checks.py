"""What a server refuses up front, where TCPLS extensions may appear, and declined early data.

* A ClientHello the server cannot complete (no common cipher suite, no key share in a
  supported group) gets ``handshake_failure`` before any session is made.
* TCPLS extensions outside the message they belong to are ``illegal_parameter``
  (RFC 8446 §4.2).
* A ClientHello offering early data that the server declines: the early records are
  skipped and the handshake completes in one round trip (RFC 8446 §4.2.10).
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable

import pytest

from tcpls.config import ClientConfig, ServerConfig
from tcpls.core.endpoint import ServerEndpoint, client_session
from tcpls.devcert import DevPKI
from tcpls.errors import AlertDescription, BadRecordMac, HandshakeFailure, IllegalParameter
from tcpls.tls.connection import TLSConnection
from tcpls.tls.events import ConnectionFailed, Event, HandshakeCompleted
from tcpls.tls.hs.client import ClientEngine
from tcpls.tls.hs.server import ServerEngine
from tcpls.tls.hs.tickets import SessionTicket
from tcpls.wire.extensions import DEFAULT_CODEPOINTS as CP
from tests.helpers import pull_tls

_TOKEN_BODY = b"\x20" + bytes(32)


def _endpoint(pki: DevPKI) -> ServerEndpoint:
    return ServerEndpoint(ServerConfig(certfile=str(pki.cert_file), keyfile=str(pki.key_file)))


def _client_tls(pki: DevPKI) -> TLSConnection:
    config = ClientConfig(cafile=str(pki.ca_file), server_name="localhost")
    return client_session(config, "localhost").connections[0].tls


def _events(tls: TLSConnection) -> list[Event]:
    """The events of ``tls`` (its application records, read on the way, are dropped)."""
    return pull_tls(tls)[1]


def _failure(tls: TLSConnection) -> ConnectionFailed:
    failed = [e for e in _events(tls) if isinstance(e, ConnectionFailed)]
    assert failed, "the connection did not fail"
    return failed[0]


def _alert(data: bytes) -> int:
    assert data[:1] == b"\x15", data[:8].hex()
    return data[6]


def _rewrite_extensions(record: bytes, edit: Callable[[list[tuple[int, bytes]]], None]) -> bytes:
    """A plaintext hello record with its extension list changed by ``edit``."""
    msg = bytearray(record[5:])
    body = msg[4:]
    pos = 2 + 32
    pos += 1 + body[pos]  # legacy_session_id
    if msg[0] == 1:  # ClientHello: cipher suites and compression methods
        pos += 2 + int.from_bytes(body[pos : pos + 2], "big")
        pos += 1 + body[pos]
    else:  # ServerHello: one suite, one compression method
        pos += 3
    end = pos + 2 + int.from_bytes(body[pos : pos + 2], "big")
    extensions = []
    p = pos + 2
    while p < end:
        kind, length = struct.unpack(">HH", body[p : p + 4])
        extensions.append((kind, bytes(body[p + 4 : p + 4 + length])))
        p += 4 + length
    edit(extensions)
    block = b"".join(struct.pack(">HH", k, len(v)) + v for k, v in extensions)
    new_body = bytes(body[:pos]) + len(block).to_bytes(2, "big") + block + bytes(body[end:])
    new_msg = bytes((msg[0],)) + len(new_body).to_bytes(3, "big") + new_body
    return record[:3] + len(new_msg).to_bytes(2, "big") + new_msg


def _first_record(data: bytes) -> tuple[bytes, bytes]:
    length = int.from_bytes(data[3:5], "big")
    return data[: 5 + length], data[5 + length :]


# --------------------------------------------------------------- refused up front


def test_no_group_in_common_gets_handshake_failure(pki: DevPKI) -> None:
    endpoint = _endpoint(pki)
    hello = _client_tls(pki)
    hello.start()

    def p521_only(extensions: list[tuple[int, bytes]]) -> None:
        share = struct.pack(">HH", 0x0019, 133) + b"\x04" + bytes(132)
        for i, (kind, _) in enumerate(extensions):
            if kind == 51:
                extensions[i] = (51, len(share).to_bytes(2, "big") + share)
            if kind == 10:
                extensions[i] = (10, struct.pack(">HH", 2, 0x0019))

    pending = endpoint.new_connection()
    pending.tls.receive_data(_rewrite_extensions(hello.data_to_send(), p521_only))
    failure = _failure(pending.tls)
    assert isinstance(failure.error, HandshakeFailure)
    assert "group" in str(failure.error)
    assert _alert(pending.tls.data_to_send()) == AlertDescription.handshake_failure
    assert pending.session is None  # refused before a session was made


def test_only_unusable_key_shares_get_a_hello_retry_request(pki: DevPKI) -> None:
    endpoint = _endpoint(pki)
    hello = _client_tls(pki)
    hello.start()

    def p521_share(extensions: list[tuple[int, bytes]]) -> None:
        share = struct.pack(">HH", 0x0019, 133) + b"\x04" + bytes(132)
        for i, (kind, _) in enumerate(extensions):
            if kind == 51:
                extensions[i] = (51, len(share).to_bytes(2, "big") + share)
            if kind == 10:
                extensions[i] = (10, struct.pack(">HHH", 4, 0x0019, 0x001D))

    pending = endpoint.new_connection()
    pending.tls.receive_data(_rewrite_extensions(hello.data_to_send(), p521_share))
    answer = pending.tls.data_to_send()
    assert answer[5] == 2  # a ServerHello...
    assert answer[11:43] == bytes.fromhex(
        "cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c"
    )  # ...with the HelloRetryRequest random
    assert not pending.tls.has_events


def test_no_common_cipher_suite_is_refused_before_a_session_is_made(pki: DevPKI) -> None:
    endpoint = _endpoint(pki)
    record = bytearray(_first_record(_client_tls_hello(pki))[0])
    # replace every offered suite by an unknown one (the list starts after the session id)
    pos = 5 + 4 + 2 + 32
    pos += 1 + record[pos]
    count = int.from_bytes(record[pos : pos + 2], "big") // 2
    for i in range(count):
        record[pos + 2 + 2 * i : pos + 4 + 2 * i] = b"\x13\x99"
    pending = endpoint.new_connection()
    pending.tls.receive_data(bytes(record))
    assert isinstance(_failure(pending.tls).error, HandshakeFailure)
    assert pending.session is None


def _client_tls_hello(pki: DevPKI) -> bytes:
    tls = _client_tls(pki)
    tls.start()
    return tls.data_to_send()


# ------------------------------------------------------------ extension placement


def test_tcpls_token_in_a_client_hello_is_illegal(pki: DevPKI) -> None:
    record = _rewrite_extensions(
        _client_tls_hello(pki), lambda exts: exts.append((CP.tcpls_token, _TOKEN_BODY))
    )
    pending = _endpoint(pki).new_connection()
    pending.tls.receive_data(record)
    assert isinstance(_failure(pending.tls).error, IllegalParameter)
    assert _alert(pending.tls.data_to_send()) == AlertDescription.illegal_parameter


@pytest.mark.parametrize("codepoint", [CP.tcpls, CP.tcpls_join, CP.tcpls_token])
def test_tcpls_extensions_in_a_server_hello_are_illegal(pki: DevPKI, codepoint: int) -> None:
    client = _client_tls(pki)
    client.start()
    pending = _endpoint(pki).new_connection()
    pending.tls.receive_data(client.data_to_send())
    flight = pending.tls.data_to_send()
    server_hello, rest = _first_record(flight)
    body = b"" if codepoint == CP.tcpls else _TOKEN_BODY
    forged = _rewrite_extensions(server_hello, lambda exts: exts.append((codepoint, body)))
    client.receive_data(forged + rest)
    failure = _failure(client)
    assert isinstance(failure.error, IllegalParameter), failure.error
    assert _alert(client.data_to_send()[-7:]) == AlertDescription.illegal_parameter


def test_tcpls_join_in_encrypted_extensions_is_illegal(
    pki: DevPKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = ServerEngine._server_extensions

    def with_join(self: ServerEngine, early: bool) -> dict[int, bytes]:
        extensions = original(self, early)
        extensions[CP.tcpls_join] = _TOKEN_BODY
        return extensions

    monkeypatch.setattr(ServerEngine, "_server_extensions", with_join)
    client = _client_tls(pki)
    client.start()
    pending = _endpoint(pki).new_connection()
    pending.tls.receive_data(client.data_to_send())
    client.receive_data(pending.tls.data_to_send())
    assert isinstance(_failure(client).error, IllegalParameter)


def _ext(kind: int, body: bytes = b"") -> bytes:
    return struct.pack(">HH", kind, len(body)) + body


def _message(msg_type: int, body: bytes) -> bytes:
    return bytes((msg_type,)) + len(body).to_bytes(3, "big") + body


def _block(*extensions: bytes) -> bytes:
    data = b"".join(extensions)
    return len(data).to_bytes(2, "big") + data


@pytest.mark.parametrize(
    ("msg_type", "body"),
    [
        # NewSessionTicket: lifetime, age_add, nonce, ticket, extensions
        (4, bytes(8) + b"\x00" + b"\x00\x04tick" + _block(_ext(CP.tcpls))),
        # Certificate: context, one entry (cert data, extensions)
        (
            11,
            b"\x00"
            + (3 + 3 + 2 + 4).to_bytes(3, "big")
            + b"\x00\x00\x03abc"
            + _block(_ext(CP.tcpls)),
        ),
        # CertificateRequest: context, extensions
        (13, b"\x00" + _block(_ext(13, b"\x00\x02\x04\x03"), _ext(CP.tcpls_token, _TOKEN_BODY))),
        # EncryptedExtensions with tcpls_join
        (8, _block(_ext(CP.tcpls), _ext(CP.tcpls_join, _TOKEN_BODY))),
    ],
    ids=["new_session_ticket", "certificate", "certificate_request", "encrypted_extensions"],
)
def test_placement_check_of_each_message(msg_type: int, body: bytes) -> None:
    from tcpls.tls.hello import check_tcpls_placement

    with pytest.raises(IllegalParameter):
        check_tcpls_placement(msg_type, _message(msg_type, body))


def test_placement_check_accepts_what_belongs() -> None:
    from tcpls.tls.hello import check_tcpls_placement

    ee = _message(8, _block(_ext(CP.tcpls), _ext(CP.tcpls_token, _TOKEN_BODY)))
    check_tcpls_placement(8, ee)
    nst = _message(4, bytes(8) + b"\x00" + b"\x00\x04tick" + _block(_ext(42, bytes(4))))
    check_tcpls_placement(4, nst)


# ------------------------------------------------------------ declined early data


def _resumption_ticket(pki: DevPKI, endpoint: ServerEndpoint) -> SessionTicket:
    client = _client_tls(pki)
    client.start()
    pending = endpoint.new_connection()
    for _ in range(4):
        pending.tls.receive_data(client.data_to_send())
        if pending.session is not None:
            pending.session.poll_connection(0, 0.0)
            data = pending.session.transmit(0, 0.0)
        else:
            data = pending.tls.data_to_send()
        client.receive_data(data)
    tickets = [e.ticket for e in _events(client) if hasattr(e, "ticket")]
    assert tickets, "the server issued no session ticket"
    return tickets[-1]


def _early_data_client(pki: DevPKI, ticket: SessionTicket) -> TLSConnection:
    """A client that offers early data (the ticket made to allow it)."""
    engine = ClientEngine(
        server_name="localhost",
        cafile=str(pki.ca_file),
        session_ticket=dataclasses.replace(ticket, max_early_data=16384),
        early_data=True,
    )
    assert engine.early_data_offered
    return TLSConnection.client(engine)


def test_declined_early_data_is_skipped(pki: DevPKI) -> None:
    endpoint = _endpoint(pki)
    ticket = _resumption_ticket(pki, endpoint)
    client = _early_data_client(pki, ticket)
    client.start()
    hello = client.data_to_send()
    # what a 0-RTT client sends right after its ClientHello: records we cannot decrypt
    early = b"".join(b"\x17\x03\x03\x01\x00" + bytes([i]) * 256 for i in range(1, 4))
    pending = endpoint.new_connection()
    pending.tls.receive_data(hello + early)
    assert not [e for e in _events(pending.tls) if isinstance(e, ConnectionFailed)]
    assert pending.session is not None
    pending.session.poll_connection(0, 0.0)
    client.receive_data(pending.session.transmit(0, 0.0))
    assert any(isinstance(e, HandshakeCompleted) for e in _events(client))
    pending.session.receive_data(0, client.data_to_send(), 0.0)
    assert pending.session.state.value == "established", pending.session.error


def test_too_much_declined_early_data_is_refused(pki: DevPKI) -> None:
    endpoint = _endpoint(pki)
    ticket = _resumption_ticket(pki, endpoint)
    client = _early_data_client(pki, ticket)
    client.start()
    early = b"\x17\x03\x03\x40\x00" + bytes(16384)
    pending = endpoint.new_connection()
    pending.tls.receive_data(client.data_to_send() + early * 5)
    assert pending.session is not None
    pending.session.poll_connection(0, 0.0)
    assert pending.session.closed
    assert isinstance(pending.session.error, BadRecordMac)


def test_a_client_hello_larger_than_64_kib_is_refused_early(pki: DevPKI) -> None:
    pending = _endpoint(pki).new_connection()
    body = b"\x01" + (100_000).to_bytes(3, "big") + bytes(16000)
    pending.tls.receive_data(b"\x16\x03\x01" + len(body).to_bytes(2, "big") + body)
    failure = _failure(pending.tls)
    assert "too large" in str(failure.error)
    assert pending.tls.buffer_memory < 64 * 1024  # it never buffered the announced size


def _join_hello_record() -> bytes:
    from tcpls.tls.hello import build_join_client_hello

    hello, _ = build_join_client_hello(bytes(32), server_name="localhost")
    return b"\x16\x03\x01" + len(hello).to_bytes(2, "big") + hello


def test_data_after_a_join_hello_fails_the_join_before_anyone_answers_it(pki: DevPKI) -> None:
    endpoint = _endpoint(pki)
    pending = endpoint.new_connection()
    record = _join_hello_record()
    # the same record with one more byte inside it: a join hello followed by data
    body = record[5:] + b"\x01"
    pending.tls.receive_data(b"\x16\x03\x01" + len(body).to_bytes(2, "big") + body)
    events = _events(pending.tls)
    assert not [e for e in events if type(e).__name__ == "JoinRequested"]
    assert [e for e in events if isinstance(e, ConnectionFailed)]
    assert endpoint.route_join(pending.tls, bytes(32)) is None  # nothing to answer


def test_a_waiting_join_that_keeps_sending_fails_and_holds_little(pki: DevPKI) -> None:
    pending = _endpoint(pki).new_connection()
    pending.tls.receive_data(_join_hello_record())  # JOIN_WAIT: nobody answered yet
    junk = b"\x17\x03\x03\x40\x00" + bytes(16384)
    for _ in range(200):  # 3 MB the join may not send yet
        pending.tls.receive_data(junk)
    assert pending.tls.state.value == "closed"
    assert pending.tls.buffer_memory < 64 * 1024
    view = pending.tls.get_buffer()
    assert len(view) > 0  # never an empty buffer (asyncio would treat it as fatal)
