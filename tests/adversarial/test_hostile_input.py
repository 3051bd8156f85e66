"""Hostile input the server already handles: regression cover, with the alert each must get.

Malformed bytes before and after the handshake, bad hellos, forged and reused join
tokens, frames that break the protocol's rules. design: Alerts: malformed or truncated
frame, unknown frame type: ``decode_error``; a client's New Token: ``unexpected_message``;
bad token, stream parity: ``illegal_parameter``; AEAD failure: ``bad_record_mac``. Every
case ends, like the others of the suite, with a good client served and the peak RSS
checked.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time

import pytest

from tcpls.devcert import DevPKI
from tcpls.errors import AlertDescription
from tcpls.wire.frames import (
    Ack,
    NewToken,
    Ping,
    StreamFrame,
    encode_frames,
    encode_stream_header,
)
from tests.adversarial.hostile import (
    Arena,
    HostileClient,
    client_hello_record,
    plaintext_alert,
    raw_exchange,
    rewrite_client_hello,
)

pytestmark = pytest.mark.adversarial

#: Records of 16,384 Ping frames each (the most frames a record can carry).
PING_RECORDS = 200
#: CPU the server may spend on one such record (1.6 ms measured; a full data record
#: costs ~30 µs): a regression bound, three times what it costs today.
PING_RECORD_CPU_LIMIT = 0.005


def _expect_plain_reply(arena: Arena, data: bytes, alert: int | None, what: str) -> None:
    reply, closed = raw_exchange(arena.port, data)
    expected = b"" if alert is None else plaintext_alert(alert)
    arena.note(reply=reply.hex(), closed=closed)
    arena.expect(closed, f"{what}: the server did not close the connection")
    arena.expect(reply == expected, f"{what}: expected {expected.hex()!r}, got {reply.hex()!r}")


def _expect_session_works(arena: Arena, connections: list[HostileClient], stream_id: int) -> None:
    """The session answers a Ping on each connection and echoes on a new stream (the echo
    may come back on any of its connections)."""
    for conn in connections:
        synced = conn.sync(5.0)
        arena.expect(
            synced,
            f"the session must be untouched: connection {conn.connection_id} did not answer "
            f"a Ping (alert {conn.alert}, eof {conn.eof})",
        )
    message = b"still here"
    connections[0].send_frames([StreamFrame(stream_id, 0, message, True)])
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and not any(stream_id in c.stream_fin for c in connections):
        for conn in connections:
            conn.pump(0.02)
    echoed = b"".join(bytes(c.stream_data.get(stream_id, b"")) for c in connections)
    arena.expect(echoed == message, f"the session must still echo: got {echoed!r}")


# ----------------------------------------------------------------------------- before keys


def test_garbage_instead_of_client_hello(arena: Arena) -> None:
    _expect_plain_reply(
        arena, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", AlertDescription.decode_error, "garbage"
    )
    arena.finish()


def test_oversized_record_header(arena: Arena) -> None:
    length = 2**14 + 256 + 1
    data = bytes([23, 3, 3]) + length.to_bytes(2, "big") + bytes(64)
    _expect_plain_reply(arena, data, AlertDescription.record_overflow, "record > 2^14 + 256")
    arena.finish()


def test_truncated_record_then_fin_before_the_handshake(arena: Arena, pki: DevPKI) -> None:
    hello = client_hello_record(pki)
    reply, closed = raw_exchange(arena.port, hello[: len(hello) // 2], shutdown=True)
    arena.note(reply=reply.hex(), closed=closed)
    arena.expect(closed, "the server did not close after a truncated record and FIN")
    arena.expect(reply in (b"", plaintext_alert(AlertDescription.decode_error)), reply.hex())
    arena.finish()


def test_truncated_record_then_fin_after_the_handshake(arena: Arena) -> None:
    client = arena.client()
    client.tls.send_record(encode_frames([StreamFrame(0, 0, b"cut short")]))
    record = client.tls.data_to_send()
    client.send_raw(record[: len(record) // 2])
    client.sock.shutdown(socket.SHUT_WR)
    closed = client.wait_closed(5.0)
    arena.note(alert=client.alert, closed=closed)
    arena.expect(closed, "the server did not close after a truncated record and FIN")
    arena.finish()


@pytest.mark.parametrize("cut", [1, 40, 150])
def test_truncated_client_hello(arena: Arena, pki: DevPKI, cut: int) -> None:
    data = rewrite_client_hello(client_hello_record(pki), cut=cut)
    _expect_plain_reply(arena, data, AlertDescription.decode_error, f"ClientHello cut by {cut}")
    arena.finish()


def test_client_hello_without_tls_13(arena: Arena, pki: DevPKI) -> None:
    data = rewrite_client_hello(client_hello_record(pki), supported_versions=b"\x02\x03\x03")
    _expect_plain_reply(arena, data, AlertDescription.protocol_version, "TLS 1.2 only")
    arena.finish()


# ----------------------------------------------------------------------------- joins


def test_forged_join_token(arena: Arena) -> None:
    client = arena.client()
    for attempt in range(3):
        joiner = arena.track(client.join(os.urandom(32), 1 + attempt, complete=False))
        with contextlib.suppress(ConnectionError, TimeoutError):
            joiner.complete_handshake()
        arena.expect(
            joiner.alert == AlertDescription.illegal_parameter and joiner.handshake is None,
            f"a forged token must get illegal_parameter: alert {joiner.alert}",
        )
    _expect_session_works(arena, [client], 0)
    arena.finish()


def test_reused_join_token(arena: Arena) -> None:
    client = arena.client()
    client.sync()
    sequence = min(client.tokens)
    token = client.tokens[sequence]
    first = arena.track(client.join(token, sequence))
    arena.expect(first.handshake is not None, "a valid token must be accepted")
    again = arena.track(client.join(token, sequence, complete=False))
    with contextlib.suppress(ConnectionError, TimeoutError):
        again.complete_handshake()
    arena.note(reuse_alert=again.alert, tokens=sorted(client.tokens))
    arena.expect(
        again.alert == AlertDescription.illegal_parameter,
        f"a reused token must get illegal_parameter: alert {again.alert}",
    )
    _expect_session_works(arena, [client, first], 0)
    arena.finish()


# ----------------------------------------------------------------------------- frames


@pytest.mark.parametrize("frame_type", [0x0A, 0x7F, 0xFF])
def test_unknown_frame_type(arena: Arena, frame_type: int) -> None:
    client = arena.client()
    client.send_record(bytes([0x01, frame_type]))  # a Ping, then the unknown type
    arena.expect_alert(client, AlertDescription.decode_error, f"frame type {frame_type:#x}")
    arena.finish()


def test_truncated_stream_frame(arena: Arena) -> None:
    client = arena.client()
    header = encode_stream_header(0, 0, 100, False)  # claims 100 bytes, 10 precede it
    client.send_record(b"0123456789" + header)
    arena.expect_alert(client, AlertDescription.decode_error, "Stream length past the record")
    arena.finish()


def test_records_full_of_pings(arena: Arena) -> None:
    client = arena.client()
    content = bytes([0x01]) * 16384
    before = arena.server.cpu()
    sent = client.send_records(content for _ in range(PING_RECORDS))
    synced = client.sync()
    per_record = (arena.server.cpu() - before) / max(sent, 1)
    arena.note(records=sent, synced=synced, cpu_per_record_ms=per_record * 1000)
    arena.expect(synced and sent == PING_RECORDS, f"the session ended: alert {client.alert}")
    arena.expect(
        per_record < PING_RECORD_CPU_LIMIT,
        f"a record of 16384 Pings costs {per_record * 1000:.2f} ms of server CPU "
        f"(limit {PING_RECORD_CPU_LIMIT * 1000:g} ms)",
    )
    arena.finish()


def test_stream_of_ours_never_opened(arena: Arena) -> None:
    client = arena.client()
    client.send_frames([StreamFrame(1, 0, b"server stream?")])
    arena.expect_alert(client, AlertDescription.illegal_parameter, "odd stream never opened")
    arena.finish()


def test_ack_for_a_record_never_sent(arena: Arena) -> None:
    client = arena.client()
    client.sync()
    client.send_frames([Ack(0, client.highest_received() + 1000)])
    arena.expect_alert(client, AlertDescription.illegal_parameter, "ACK of a future record")
    arena.finish()


def test_new_token_from_a_client(arena: Arena) -> None:
    client = arena.client()
    client.send_frames([Ping(), NewToken(9, os.urandom(32))])
    arena.expect_alert(client, AlertDescription.unexpected_message, "New Token from a client")
    arena.finish()


def test_tampered_record(arena: Arena) -> None:
    client = arena.client()
    client.tls.send_record(b"\x01" * 100)
    record = bytearray(client.tls.data_to_send())
    record[20] ^= 0x01
    client.send_raw(bytes(record))
    arena.expect_alert(client, AlertDescription.bad_record_mac, "a tampered record")
    arena.finish()
