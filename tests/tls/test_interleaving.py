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
