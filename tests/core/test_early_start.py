"""A server that accepts early data reads it and answers before the client's Finished
(design: Early data): the first response comes one round trip sooner."""

from __future__ import annotations

import dataclasses

import pytest

from tcpls.config import ClientConfig, ServerConfig
from tcpls.core.endpoint import ServerEndpoint, client_session
from tcpls.core.session import CoreSession
from tcpls.devcert import DevPKI
from tcpls.tls.hs.tickets import SessionTicket


def _feed(session: CoreSession, data: bytes, now: float) -> None:
    session.receive_data(0, data, now)
    session.poll_connection(0, now)


def _server_session(endpoint: ServerEndpoint, flight: bytes) -> CoreSession:
    pending = endpoint.new_connection()
    pending.tls.receive_data(flight)
    assert pending.session is not None
    pending.session.poll_connection(0, 0.0)
    return pending.session


def _ticket(pki: DevPKI, endpoint: ServerEndpoint, config: ClientConfig) -> SessionTicket:
    client = client_session(config, "localhost")
    client.io.start_handshake()
    server = _server_session(endpoint, client.transmit(0, 0.0))
    for _ in range(3):
        _feed(client, server.transmit(0, 0.0), 0.0)
        _feed(server, client.transmit(0, 0.0), 0.0)
    (ticket,) = client.session_tickets
    assert isinstance(ticket, SessionTicket)
    return ticket


@pytest.mark.parametrize("tcpls", [True, False], ids=["tcpls", "plain"])
def test_the_server_answers_early_data_in_its_first_flight(pki: DevPKI, tcpls: bool) -> None:
    endpoint = ServerEndpoint(
        ServerConfig(
            certfile=str(pki.cert_file),
            keyfile=str(pki.key_file),
            max_early_data=16384,
            tcpls=tcpls,
        )
    )
    config = ClientConfig(cafile=str(pki.ca_file), server_name="localhost")
    ticket = _ticket(pki, endpoint, config)
    client = client_session(
        dataclasses.replace(config, session_ticket=ticket, early_data=True), "localhost"
    )
    client.queue_early_data(b"GET /\r\n")
    client.io.start_handshake()
    server = _server_session(endpoint, client.transmit(0, 0.0))
    # the ClientHello and the early data only: the client's Finished has not come
    assert server.state.value == "established"
    assert server.read(0) == b"GET /\r\n"
    assert server.io.stream(0) is not None and server.io.stream(0).early_bytes == 7  # type: ignore[union-attr]
    server.send(0, b"OK\r\n")
    # the answer leaves with the server's flight, under the application keys
    _feed(client, server.transmit(0, 0.0), 0.0)
    assert client.state.value == "established"
    assert client.read(0) == b"OK\r\n"
    # then the client's Finished confirms the session; joins become possible
    _feed(server, client.transmit(0, 0.0), 0.0)
    assert not server.closed and server.error is None
    if tcpls:
        tls, _ = client.start_join()
        assert tls is not None


def test_a_client_that_never_finishes_is_cut_at_the_handshake_timeout(pki: DevPKI) -> None:
    endpoint = ServerEndpoint(
        ServerConfig(certfile=str(pki.cert_file), keyfile=str(pki.key_file), max_early_data=64)
    )
    config = ClientConfig(cafile=str(pki.ca_file), server_name="localhost")
    ticket = _ticket(pki, endpoint, config)
    client = client_session(
        dataclasses.replace(config, session_ticket=ticket, early_data=True), "localhost"
    )
    client.queue_early_data(b"GET /\r\n")
    client.io.start_handshake()
    server = _server_session(endpoint, client.transmit(0, 0.0))
    assert server.state.value == "established"  # started early, the Finished never comes
    deadline = server.next_deadline()
    assert deadline is not None and deadline <= config.tuning.handshake_timeout
    server.handle_timer(config.tuning.handshake_timeout + 0.1)
    assert server.closed and "did not complete" in str(server.error)
