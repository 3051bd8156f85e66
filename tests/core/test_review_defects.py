"""Regression tests for protocol defects found in review: plain TLS fallback with addresses
configured, a held join that fails, Stream Change before a lone ACK, withdrawn addresses."""

from __future__ import annotations

import ipaddress

from tcpls.core.connection import ConnectionStatus
from tcpls.core.session import SessionState
from tcpls.devcert import DevPKI
from tcpls.errors import ConnectionClosedError, UnexpectedMessage
from tcpls.wire.frames import Ack, NewAddress, RemoveAddress, StreamChange
from tests.core.failover_util import begin_join, deliver_join_hello
from tests.core.harness import Harness
from tests.core.util import established, inject


def test_fallback_with_advertised_addresses_closes_cleanly(pki: DevPKI) -> None:
    """The server advertises an address, but the client speaks plain TLS: the queued New
    Address must not hold back close_notify."""
    h = Harness(pki, client_tcpls=False)
    h.server.advertise_address(0, "10.0.0.1", 8443)
    h.pump()
    assert h.server.tcpls is False
    h.client.send(0, b"hello")
    h.pump()
    assert h.server.read(0) == b"hello"
    h.client.close()
    h.server.close()
    h.pump()
    assert h.client.closed and h.client.error is None
    assert h.server.closed and h.server.error is None


def test_a_held_join_that_fails_leaves_the_session_alone(pki: DevPKI) -> None:
    h = Harness(pki)
    h.server.receive_data(0, h.client.transmit(0, h.now), h.now)
    h.client.receive_data(0, h.server.transmit(0, h.now), h.now)
    assert h.client.state is SessionState.ESTABLISHED and 1 in h.client.tokens
    client_finished = h.client.transmit(0, h.now)  # still in the network
    link = begin_join(h)
    deliver_join_hello(h, link)
    assert h.server.connections[1].status is ConnectionStatus.HANDSHAKE  # held
    h.cut(link, "reset")
    assert 1 not in h.server.connections
    assert not h.server.closed
    h.server.receive_data(0, client_finished, h.now)
    assert h.server.state is SessionState.ESTABLISHED
    h.pump()
    sid = h.client.open_stream()
    h.client.send(sid, b"still here")
    h.pump()
    assert h.server.read(sid) == b"still here"


def test_a_held_join_that_sends_garbage_leaves_the_session_alone(pki: DevPKI) -> None:
    h = Harness(pki)
    h.server.receive_data(0, h.client.transmit(0, h.now), h.now)
    h.client.receive_data(0, h.server.transmit(0, h.now), h.now)
    client_finished = h.client.transmit(0, h.now)
    link = begin_join(h)
    deliver_join_hello(h, link)
    h.server.receive_data(1, b"\x17\x03\x03\x00\x20" + bytes(32), h.now)
    h.server.receive_eof(1, h.now)
    h.server.connection_lost(1, ConnectionClosedError("gone"), h.now)
    assert not h.server.closed
    h.server.receive_data(0, client_finished, h.now)
    assert h.server.state is SessionState.ESTABLISHED


def test_stream_change_is_checked_before_a_record_holding_only_an_ack(pki: DevPKI) -> None:
    h = established(pki)
    sid = h.server.open_stream()
    h.server.send(sid, b"x")
    h.pump()
    seq = h.server.connections[0].tls.write_protection.sequence - 1  # type: ignore[union-attr]
    inject(h, h.client, h.server, [StreamChange(4, 0)])
    inject(h, h.client, h.server, [Ack(0, seq)])  # not the announced Stream frame
    assert h.server.closed and isinstance(h.server.error, UnexpectedMessage)


def test_a_new_address_arriving_after_its_removal_is_ignored(pki: DevPKI) -> None:
    h = established(pki)
    address = NewAddress(3, ipaddress.ip_address("10.0.2.2"), 8443)
    inject(h, h.server, h.client, [RemoveAddress(3)])  # reordered: removal first
    inject(h, h.server, h.client, [address])  # the reinjected New Address, late
    assert 3 not in h.client.peer_addresses


def test_a_withdrawn_address_is_remembered(pki: DevPKI) -> None:
    h = established(pki)
    inject(h, h.server, h.client, [NewAddress(3, ipaddress.ip_address("10.0.2.2"), 8443)])
    assert h.client.peer_addresses[3] == ("10.0.2.2", 8443)
    inject(h, h.server, h.client, [RemoveAddress(3)])
    assert 3 not in h.client.peer_addresses
    assert ("10.0.2.2", 8443) in h.client.withdrawn_addresses
    inject(h, h.server, h.client, [NewAddress(3, ipaddress.ip_address("10.0.2.2"), 8443)])
    assert 3 not in h.client.peer_addresses
