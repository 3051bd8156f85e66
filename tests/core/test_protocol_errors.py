"""Protocol violations at the session level (design: Streams, Alerts, KeyUpdate, Stream Change and
Padding): which error the
offended session ends with, and that the matching alert reaches the offender."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from tcpls.core.events import SessionClosed
from tcpls.devcert import DevPKI
from tcpls.errors import (
    AlertDescription,
    BadRecordMac,
    ConnectionClosedError,
    DecodeError,
    IllegalParameter,
    PeerAlert,
    ProtocolError,
    UnexpectedMessage,
)
from tcpls.tls.record import ContentType, RecordProtection
from tcpls.wire.frames import (
    Ack,
    Frame,
    NewAddress,
    NewToken,
    Padding,
    Ping,
    RemoveAddress,
    StreamChange,
    StreamFrame,
    encode_frames,
)
from tests.core.harness import Harness
from tests.core.util import (
    Tap,
    alerts_received,
    deliver_raw,
    drain_events,
    established,
    inject,
    inject_raw,
    seal_raw,
)


def _check_failure(
    h: Harness, *, victim: str, error: type[ProtocolError], alert: AlertDescription
) -> None:
    """``victim`` failed with ``error``; after a pump the offender got ``alert`` and ended."""
    session = h.server if victim == "server" else h.client
    offender = h.client if victim == "server" else h.server
    assert session.closed, "the session should have failed"
    assert isinstance(session.error, error), repr(session.error)
    assert session.error.alert == alert
    assert SessionClosed(session.error) in drain_events(session)
    h.pump()
    events = h.client_events if offender is h.client else h.server_events
    assert alert in alerts_received(offender, events)
    # design: Alerts: a fatal alert closes the whole session of the offender too
    assert offender.closed
    assert isinstance(offender.error, PeerAlert) and offender.error.alert == alert
    # the failed session refuses further use
    with pytest.raises(ConnectionClosedError):
        session.open_stream()


# ---------------------------------------------------------------- stream ID parity (design:
# Streams)


@pytest.mark.parametrize("sid", [1, 3, 7, 2**31 + 1])
def test_client_frame_for_a_server_stream_never_opened(pki: DevPKI, sid: int) -> None:
    h = established(pki)
    inject(h, h.client, h.server, [StreamFrame(sid, 0, b"x")])
    _check_failure(h, victim="server", error=IllegalParameter, alert=AlertDescription(47))


@pytest.mark.parametrize("sid", [0, 2, 6, 2**31])
def test_server_frame_for_a_client_stream_never_opened(pki: DevPKI, sid: int) -> None:
    h = established(pki)
    inject(h, h.server, h.client, [StreamFrame(sid, 0, b"x")])
    _check_failure(h, victim="client", error=IllegalParameter, alert=AlertDescription(47))


def test_frame_for_a_local_stream_above_those_opened(pki: DevPKI) -> None:
    """The server opened stream 1 only; stream 3 (server parity) is still illegal."""
    h = established(pki)
    assert h.server.open_stream() == 1
    inject(h, h.client, h.server, [StreamFrame(1, 0, b"fine")])
    assert not h.server.closed
    assert h.server.read(1) == b"fine"
    inject(h, h.client, h.server, [StreamFrame(3, 0, b"not fine")])
    _check_failure(h, victim="server", error=IllegalParameter, alert=AlertDescription(47))


def test_zero_length_fin_for_a_wrong_parity_stream(pki: DevPKI) -> None:
    h = established(pki)
    inject(h, h.client, h.server, [StreamFrame(1, 0, b"", True)])
    _check_failure(h, victim="server", error=IllegalParameter, alert=AlertDescription(47))


# ---------------------------------------------------------------- New Token (design: Tokens,
# Alerts)


def test_new_token_from_a_client_is_unexpected(pki: DevPKI) -> None:
    h = established(pki)
    inject(h, h.client, h.server, [NewToken(9, b"t" * 32)])
    _check_failure(h, victim="server", error=UnexpectedMessage, alert=AlertDescription(10))


def test_new_token_from_a_client_behind_stream_data(pki: DevPKI) -> None:
    h = established(pki)
    inject(h, h.client, h.server, [StreamFrame(0, 0, b"data"), NewToken(9, b"t" * 32)])
    _check_failure(h, victim="server", error=UnexpectedMessage, alert=AlertDescription(10))


def test_new_token_with_sequence_zero_is_illegal(pki: DevPKI) -> None:
    h = established(pki)
    inject(h, h.server, h.client, [NewToken(0, b"t" * 32)])
    _check_failure(h, victim="client", error=IllegalParameter, alert=AlertDescription(47))


# ---------------------------------------------------------------- malformed records (design:
# Alerts)


@pytest.mark.parametrize("kind", [0x0A, 0x10, 0x7F, 0xFF])
def test_unknown_frame_type_is_a_decode_error(pki: DevPKI, kind: int) -> None:
    h = established(pki)
    inject_raw(h, h.client, h.server, encode_frames([StreamFrame(0, 0, b"ok")]) + bytes([kind]))
    _check_failure(h, victim="server", error=DecodeError, alert=AlertDescription(50))


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"\x04", id="ack-truncated"),
        pytest.param(b"\x00" * 3 + b"\x05", id="new-token-truncated"),
        pytest.param(b"\x02", id="stream-header-truncated"),
        pytest.param(struct.pack(">HQIB", 100, 0, 0, 2), id="stream-length-too-large"),
        pytest.param(b"\x09", id="stream-change-truncated"),
    ],
)
def test_truncated_frames_are_decode_errors(pki: DevPKI, content: bytes) -> None:
    h = established(pki)
    inject_raw(h, h.client, h.server, content)
    _check_failure(h, victim="server", error=DecodeError, alert=AlertDescription(50))


def test_unknown_frame_type_from_the_server(pki: DevPKI) -> None:
    h = established(pki)
    inject_raw(h, h.server, h.client, b"\x42")
    _check_failure(h, victim="client", error=DecodeError, alert=AlertDescription(50))


# ---------------------------------------------------------------- New Address (design: Alerts,
# Addresses)


def _new_address_v(version: int, address: bytes) -> bytes:
    return struct.pack(">H", 443) + address + bytes((version, 0, 0x07))


@pytest.mark.parametrize(
    ("version", "address"),
    [(5, b"\x7f\x00\x00\x01"), (0, b"\x7f\x00\x00\x01"), (255, b"\x7f\x00\x00\x01")],
)
def test_new_address_with_a_bad_version_is_illegal(
    pki: DevPKI, version: int, address: bytes
) -> None:
    h = established(pki)
    inject_raw(h, h.server, h.client, _new_address_v(version, address))
    _check_failure(h, victim="client", error=IllegalParameter, alert=AlertDescription(47))


def test_new_address_version_5_from_the_client(pki: DevPKI) -> None:
    h = established(pki)
    inject_raw(h, h.client, h.server, _new_address_v(5, b"\x0a\x00\x00\x01"))
    _check_failure(h, victim="server", error=IllegalParameter, alert=AlertDescription(47))


def test_new_and_remove_address_are_applied_idempotently(pki: DevPKI) -> None:
    h = established(pki)
    v4 = NewAddress(0, ipaddress.ip_address("192.0.2.7"), 4443)
    v6 = NewAddress(1, ipaddress.ip_address("2001:db8::7"), 443)
    inject(h, h.server, h.client, [v4, v6])
    inject(h, h.server, h.client, [v4])  # duplicate
    inject(h, h.server, h.client, [NewAddress(0, ipaddress.ip_address("192.0.2.8"), 1)])
    assert h.client.peer_addresses == {0: ("192.0.2.7", 4443), 1: ("2001:db8::7", 443)}
    inject(h, h.server, h.client, [RemoveAddress(0)])
    inject(h, h.server, h.client, [RemoveAddress(0), RemoveAddress(9)])
    inject(h, h.server, h.client, [v4])  # a removed ID is not reused
    assert h.client.peer_addresses == {1: ("2001:db8::7", 443)}
    assert not h.client.closed


# ---------------------------------------------------------------- Stream Change (design: Alerts,
# Stream Change and Padding)


def test_stream_change_with_a_wrong_offset(pki: DevPKI) -> None:
    h = established(pki)
    inject(h, h.client, h.server, [StreamChange(0, 0)])
    inject(h, h.client, h.server, [StreamFrame(0, 5, b"x")])
    _check_failure(h, victim="server", error=UnexpectedMessage, alert=AlertDescription(10))


def test_stream_change_with_a_wrong_stream(pki: DevPKI) -> None:
    h = established(pki)
    inject(h, h.client, h.server, [StreamChange(0, 0)])
    inject(h, h.client, h.server, [StreamFrame(2, 0, b"x")])
    _check_failure(h, victim="server", error=UnexpectedMessage, alert=AlertDescription(10))


def test_stream_change_then_a_record_without_stream_frames(pki: DevPKI) -> None:
    h = established(pki)
    inject(h, h.client, h.server, [StreamChange(0, 0)])
    inject(h, h.client, h.server, [Ping()])
    _check_failure(h, victim="server", error=UnexpectedMessage, alert=AlertDescription(10))


def test_stream_change_from_the_server_mismatching(pki: DevPKI) -> None:
    h = established(pki)
    inject(h, h.server, h.client, [StreamChange(1, 0)])
    inject(h, h.server, h.client, [StreamFrame(1, 1, b"x")])
    _check_failure(h, victim="client", error=UnexpectedMessage, alert=AlertDescription(10))


def test_matching_stream_change_is_accepted(pki: DevPKI) -> None:
    h = established(pki)
    inject(h, h.client, h.server, [StreamChange(0, 0)])
    inject(h, h.client, h.server, [StreamFrame(0, 0, b"abc")])
    assert not h.server.closed, h.server.error
    assert h.server.read(0) == b"abc"


def test_stream_change_applies_to_the_next_record_only(pki: DevPKI) -> None:
    """design: Stream Change and Padding: the Stream Change is checked against the *next* record;
    the records after
    that one are not bound by it."""
    h = established(pki)
    inject(h, h.client, h.server, [StreamChange(0, 0)])
    inject(h, h.client, h.server, [StreamFrame(0, 0, b"abc")])
    inject(h, h.client, h.server, [StreamFrame(0, 3, b"def")])
    inject(h, h.client, h.server, [Ping()])
    assert not h.server.closed, h.server.error
    assert h.server.read(0) == b"abcdef"


def test_stream_change_is_per_connection(pki: DevPKI) -> None:
    """A Stream Change on connection 0 says nothing about connection 1's next record."""
    h = established(pki)
    h.join()
    inject(h, h.client, h.server, [StreamChange(0, 0)], cid=0)
    inject(h, h.client, h.server, [StreamFrame(0, 100, b"later")], cid=1)
    assert not h.server.closed, h.server.error
    inject(h, h.client, h.server, [StreamFrame(0, 0, b"x" * 100)], cid=0)
    assert not h.server.closed, h.server.error
    assert h.server.read(0) == b"x" * 100 + b"later"


# ---------------------------------------------------------------- ACK (design: Retransmission,
# Alerts)


def test_ack_for_a_record_never_sent_is_illegal(pki: DevPKI) -> None:
    h = established(pki)
    next_seq = h.server.connections[0].tls.write_protection.sequence  # type: ignore[union-attr]
    inject(h, h.client, h.server, [Ack(0, next_seq)])
    _check_failure(h, victim="server", error=IllegalParameter, alert=AlertDescription(47))


def test_ack_for_the_last_record_sent_is_fine(pki: DevPKI) -> None:
    h = established(pki)
    next_seq = h.server.connections[0].tls.write_protection.sequence  # type: ignore[union-attr]
    inject(h, h.client, h.server, [Ack(0, next_seq - 1)])
    assert not h.server.closed


def test_ack_far_beyond_what_the_client_sent(pki: DevPKI) -> None:
    h = established(pki)
    inject(h, h.server, h.client, [Ack(0, 2**63)])
    _check_failure(h, victim="client", error=IllegalParameter, alert=AlertDescription(47))


def test_ack_for_an_unknown_connection_is_ignored(pki: DevPKI) -> None:
    """A connection already removed: its ACK may still be in flight."""
    h = established(pki)
    inject(h, h.client, h.server, [Ack(7, 1000)])
    assert not h.server.closed


# ---------------------------------------------------------------- TLS-level violations


def test_key_update_in_tcpls_mode_is_unexpected(pki: DevPKI) -> None:
    """design: KeyUpdate: KeyUpdate is never used in TCPLS mode; receiving one is
    unexpected_message.
    """
    h = established(pki)
    write = h.client.connections[0].tls.write_protection
    assert write is not None
    forged = RecordProtection(write.keys, write.connection_id)
    forged.sequence = write.sequence
    record = forged.seal(bytes((24, 0, 0, 1, 0)), ContentType.handshake)
    write.sequence += 1
    deliver_raw(h, h.server, record)
    _check_failure(h, victim="server", error=UnexpectedMessage, alert=AlertDescription(10))


def test_corrupted_record_is_bad_record_mac(pki: DevPKI) -> None:
    h = established(pki)
    _, data = seal_raw(h.client, encode_frames([StreamFrame(0, 0, b"payload")]))
    corrupted = bytearray(data)
    corrupted[10] ^= 0x01
    deliver_raw(h, h.server, bytes(corrupted))
    _check_failure(h, victim="server", error=BadRecordMac, alert=AlertDescription(20))
    assert h.server.streams.get(0) is None


def test_padding_and_ping_alone_are_fine(pki: DevPKI) -> None:
    h = established(pki)
    inject(h, h.client, h.server, [Padding(1)])
    inject(h, h.client, h.server, [Padding(5000)])
    inject(h, h.client, h.server, [Ping(), Padding(3), Ping()])
    inject_raw(h, h.client, h.server, b"")  # an empty record holds no frames
    assert not h.server.closed, h.server.error


# ---------------------------------------------------------------- the peer's view of an alert


def test_a_fatal_error_alerts_every_connection(pki: DevPKI) -> None:
    h = established(pki)
    h.join()
    tap = Tap(h)
    inject(h, h.client, h.server, [StreamFrame(1, 0, b"x")], cid=1)
    assert h.server.closed and isinstance(h.server.error, IllegalParameter)
    h.pump()
    for cid in (0, 1):
        alerts = [r.content for r in tap.sent_by("server", cid) if r.is_alert]
        assert alerts == [b"\x02\x2f"], (cid, alerts)  # fatal illegal_parameter
    assert AlertDescription.illegal_parameter in alerts_received(h.client, h.client_events)


_VIOLATIONS: dict[str, tuple[str, list[Frame], int]] = {
    "client-parity": ("client", [StreamFrame(1, 0, b"x")], 47),
    "client-new-token": ("client", [NewToken(9, b"t" * 32)], 10),
    "client-fin": ("client", [StreamFrame(0, 0, b"", True), StreamFrame(0, 0, b"x")], 47),
    "server-parity": ("server", [StreamFrame(0, 0, b"x")], 47),
    "server-stream-change": ("server", [StreamChange(1, 5)], 0),
}


@pytest.mark.parametrize("case", sorted(_VIOLATIONS))
def test_offender_session_ends_with_peer_alert(pki: DevPKI, case: str) -> None:
    offender_name, frames, alert = _VIOLATIONS[case]
    h = established(pki)
    offender, victim = (h.client, h.server) if offender_name == "client" else (h.server, h.client)
    inject(h, offender, victim, frames)
    if not alert:  # a Stream Change is judged by the next record
        inject(h, offender, victim, [StreamFrame(1, 0, b"x")])
        alert = 10
    assert victim.closed
    h.pump()
    assert offender.closed
    assert isinstance(offender.error, PeerAlert)
    assert offender.error.alert == alert
    events = h.client_events if offender is h.client else h.server_events
    assert SessionClosed(offender.error) in events


def test_fatal_alert_on_one_connection_closes_the_whole_session(pki: DevPKI) -> None:
    h = established(pki)
    h.join()
    # the server alerts on connection 1 only (as if that connection's TLS had failed)
    h.server.connections[1].tls.abort(IllegalParameter("test"))
    h.pump()
    assert h.client.closed
    assert isinstance(h.client.error, PeerAlert) and h.client.error.alert == 47


def test_abort_with_a_protocol_error_alerts_the_peer(pki: DevPKI) -> None:
    h = established(pki)
    h.server.abort(IllegalParameter("test abort"))
    assert h.server.closed and isinstance(h.server.error, IllegalParameter)
    h.pump()
    assert AlertDescription.illegal_parameter in alerts_received(h.client, h.client_events)


def test_fatal_alert_in_plain_tls_mode_ends_the_session_with_peer_alert(pki: DevPKI) -> None:
    h = Harness(pki, server_tcpls=False)
    h.pump()
    h.server.abort(IllegalParameter("test abort"))
    h.pump()
    assert h.client.closed
    assert isinstance(h.client.error, PeerAlert) and h.client.error.alert == 47
