"""A server may send any number of NewSessionTickets: a client keeps the newest few."""

from __future__ import annotations

import secrets

from tcpls.config import ClientConfig, ServerConfig
from tcpls.core.endpoint import ServerEndpoint, client_session
from tcpls.core.links import MAX_TICKETS_KEPT
from tcpls.devcert import DevPKI
from tcpls.tls.hs.base import Epoch
from tcpls.tls.hs.codec import NewSessionTicket
from tcpls.tls.record import ContentType


def test_a_flood_of_tickets_keeps_the_newest(pki: DevPKI) -> None:
    endpoint = ServerEndpoint(ServerConfig(certfile=str(pki.cert_file), keyfile=str(pki.key_file)))
    client = client_session(ClientConfig(cafile=str(pki.ca_file)), "localhost")
    client.io.start_handshake()
    pending = endpoint.new_connection()
    pending.tls.receive_data(client.transmit(0, 0.0))
    server = pending.session
    assert server is not None
    for _ in range(3):
        server.poll_connection(0, 0.0)
        client.receive_data(0, server.transmit(0, 0.0), 0.0)
        client.poll_connection(0, 0.0)
        server.receive_data(0, client.transmit(0, 0.0), 0.0)
    assert len(client.session_tickets) == 1
    layer = server.connections[0].tls._layer  # a hostile server: tickets without end
    labels = [secrets.token_bytes(32) for _ in range(200)]
    for label in labels:
        nst = NewSessionTicket(3600, 0, b"\x00\x01", label)
        layer.send_protected(ContentType.handshake, nst.encode(), Epoch.ONE_RTT)
    client.receive_data(0, server.transmit(0, 0.0) + server.connections[0].tls.data_to_send(), 0.0)
    client.poll_connection(0, 0.0)
    assert len(client.session_tickets) == MAX_TICKETS_KEPT
    assert client.session_tickets[-1].ticket == labels[-1]  # type: ignore[attr-defined]
