"""RFC 8446 §5.1: handshake messages may be fragmented across records, but no record of
another type may come between the fragments (a fragmented KeyUpdate with application
data in the middle is an unexpected_message)."""

from __future__ import annotations

from tcpls.config import load_certificate_chain, load_private_key
from tcpls.devcert import DevPKI
from tcpls.errors import AlertDescription, ProtocolError
from tcpls.tls.connection import TLSConnection
from tcpls.tls.events import ConnectionFailed, HandshakeCompleted
from tcpls.tls.hs.base import Epoch
from tcpls.tls.hs.client import ClientEngine
from tcpls.tls.hs.server import ServerEngine
from tcpls.tls.record import ContentType, RecordProtection
from tests.helpers import feed_tls


def _pair(pki: DevPKI) -> tuple[TLSConnection, TLSConnection]:
    client = TLSConnection.client(
        ClientEngine(server_name="localhost", cafile=str(pki.ca_file), tcpls=False)
    )
    server = TLSConnection.server(
        lambda: ServerEngine(
            certificate_chain=load_certificate_chain(pki.cert_file),
            private_key=load_private_key(pki.key_file),
            tcpls=False,
        )
    )
    client.start()
    done = 0
    for _ in range(4):
        _, events = feed_tls(server, client.data_to_send())
        done += sum(isinstance(e, HandshakeCompleted) for e in events)
        _, events = feed_tls(client, server.data_to_send())
        done += sum(isinstance(e, HandshakeCompleted) for e in events)
    assert done == 2
    return client, server


def _failure(events: list[object]) -> ProtocolError:
    (failed,) = [e for e in events if isinstance(e, ConnectionFailed)]
    assert isinstance(failed.error, ProtocolError)
    return failed.error


def test_application_data_inside_a_fragmented_key_update(pki: DevPKI) -> None:
    client, server = _pair(pki)
    layer = server._layer  # the record layer writes handshake records of our choosing
    layer.send_protected(ContentType.handshake, b"\x18\x00", Epoch.ONE_RTT)
    server.send_record(b"in between")
    layer.send_protected(ContentType.handshake, b"\x00\x01\x00", Epoch.ONE_RTT)
    data, events = feed_tls(client, server.data_to_send())
    assert data == b""
    assert _failure(events).alert == AlertDescription.unexpected_message


def test_a_fragmented_key_update_alone_is_fine(pki: DevPKI) -> None:
    client, server = _pair(pki)
    layer = server._layer
    layer.send_protected(ContentType.handshake, b"\x18\x00", Epoch.ONE_RTT)
    layer.send_protected(ContentType.handshake, b"\x00\x01\x00", Epoch.ONE_RTT)
    current = layer.write[Epoch.ONE_RTT]  # what the KeyUpdate announced
    layer.write[Epoch.ONE_RTT] = RecordProtection(current.keys.next_generation())
    server.send_record(b"after")
    data, events = feed_tls(client, server.data_to_send())
    assert data == b"after" and not [e for e in events if isinstance(e, ConnectionFailed)]


def test_a_flood_of_key_update_requests_gets_one_answer_per_burst(pki: DevPKI) -> None:
    """A peer that sends KeyUpdate(update_requested) thousands of times and reads nothing:
    one answer stands for every request until our next application data (RFC 8446
    §4.6.3), so our output does not grow with the flood; after our data, the next request
    gets its own answer, and both sides still read each other."""
    client, server = _pair(pki)
    for _ in range(5000):
        client.key_update(request_peer_update=True)
    feed_tls(server, client.data_to_send())
    answer = server.data_to_send()
    assert 0 < len(answer) < 100, len(answer)  # one KeyUpdate record, not 5000
    server.send_record(b"after the burst")
    data, events = feed_tls(client, answer + server.data_to_send())
    assert data == b"after the burst" and not [
        e for e in events if isinstance(e, ConnectionFailed)
    ]
    client.key_update(request_peer_update=True)
    client.send_record(b"once more")
    data, _ = feed_tls(server, client.data_to_send())
    assert data == b"once more"
    second = server.data_to_send()
    assert 0 < len(second) < 100  # answered again: our data came in between
    server.send_record(b"still in step")
    data, events = feed_tls(client, second + server.data_to_send())
    assert data == b"still in step" and not [e for e in events if isinstance(e, ConnectionFailed)]


def test_crossing_key_update_requests_are_both_answered(pki: DevPKI) -> None:
    """Both sides request an update at once (RFC 8446 §4.6.3): each answers the other's
    request, though it had just sent a KeyUpdate of its own, and both still read."""
    client, server = _pair(pki)
    client.key_update(request_peer_update=True)
    server.key_update(request_peer_update=True)
    to_server, to_client = client.data_to_send(), server.data_to_send()
    feed_tls(server, to_server)
    feed_tls(client, to_client)
    server_answer, client_answer = server.data_to_send(), client.data_to_send()
    assert server_answer and client_answer  # one KeyUpdate each
    server.send_record(b"server, two generations on")
    client.send_record(b"client, two generations on")
    data, events = feed_tls(client, server_answer + server.data_to_send())
    assert data == b"server, two generations on"
    assert not [e for e in events if isinstance(e, ConnectionFailed)]
    data, events = feed_tls(server, client_answer + client.data_to_send())
    assert data == b"client, two generations on"
    assert not [e for e in events if isinstance(e, ConnectionFailed)]
