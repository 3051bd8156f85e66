from __future__ import annotations

import os

from tcpls.core.events import SessionEstablished, StreamOpened
from tcpls.devcert import DevPKI
from tests.core.harness import Harness


def test_tcpls_handshake_and_tokens(pki: DevPKI) -> None:
    h = Harness(pki)
    h.pump()
    assert h.client.tcpls is True and h.server.tcpls is True
    assert SessionEstablished(True) in h.client_events
    # token 1 from EE, 2 and 3 from New Token frames (4 connections in all)
    assert sorted(h.client.tokens) == [1, 2, 3]


def test_stream_round_trip(pki: DevPKI) -> None:
    h = Harness(pki)
    h.pump()
    sid = h.client.open_stream()
    payload = os.urandom(200_000)
    h.client.send(sid, payload)
    h.client.send_eof(sid)
    h.pump()
    assert StreamOpened(sid) in h.server_events
    got = h.server.read(sid)
    assert got == payload
    assert h.server.streams[sid].recv.at_eof


def test_fallback_plain_tls(pki: DevPKI) -> None:
    h = Harness(pki, server_tcpls=False)
    h.pump()
    assert h.client.tcpls is False and h.server.tcpls is False
    h.client.send(0, b"hello")
    h.pump()
    assert h.server.read(0) == b"hello"
    h.server.send(0, b"world")
    h.server.send_eof(0)
    h.pump()
    assert h.client.read(0) == b"world"
    assert h.client.streams[0].recv.complete
