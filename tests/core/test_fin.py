"""FIN and final sizes (design: Stream frames, Streams): zero-length FIN, data beyond the final
size,
a final size that changes, duplicate FINs."""

from __future__ import annotations

import pytest

from tcpls.core.events import SessionClosed, StreamOpened
from tcpls.devcert import DevPKI
from tcpls.errors import AlertDescription, ConnectionClosedError, IllegalParameter, PeerAlert
from tcpls.wire.frames import StreamFrame
from tests.core.harness import Harness
from tests.core.util import Tap, alerts_received, drain_events, established, inject


def test_zero_length_fin_frame_ends_a_new_stream(pki: DevPKI) -> None:
    h = established(pki)
    inject(h, h.client, h.server, [StreamFrame(0, 0, b"", fin=True)])
    assert not h.server.closed
    assert StreamOpened(0) in drain_events(h.server)
    recv = h.server.streams[0].recv
    assert recv.final_size == 0
    assert recv.complete and recv.at_eof
    assert 0 in h.server.readable  # a reader waiting on the stream wakes up to see EOF
    assert h.server.read(0) == b""


def test_zero_length_fin_after_data(pki: DevPKI) -> None:
    h = established(pki)
    inject(h, h.client, h.server, [StreamFrame(0, 0, b"hello")])
    assert not h.server.streams[0].recv.complete
    inject(h, h.client, h.server, [StreamFrame(0, 5, b"", fin=True)])
    recv = h.server.streams[0].recv
    assert recv.complete and not recv.at_eof  # not read yet
    assert h.server.read(0) == b"hello"
    assert recv.at_eof


def test_send_eof_without_data_sends_zero_length_fin(pki: DevPKI) -> None:
    h = established(pki)
    tap = Tap(h)
    sid = h.client.open_stream()
    h.client.send_eof(sid)
    h.pump()
    frames = [f for r in tap.sent_by("client") for f in r.frames if isinstance(f, StreamFrame)]
    assert frames == [StreamFrame(sid, 0, b"", True)]
    assert h.server.streams[sid].recv.at_eof


def test_send_eof_after_data_sets_fin_on_the_last_frame(pki: DevPKI) -> None:
    h = established(pki)
    tap = Tap(h)
    sid = h.client.open_stream()
    h.client.send(sid, b"x" * 40_000)
    h.client.send_eof(sid)
    h.pump()
    frames = [f for r in tap.sent_by("client") for f in r.frames if isinstance(f, StreamFrame)]
    assert [f.fin for f in frames] == [False] * (len(frames) - 1) + [True]
    assert frames[-1].offset + len(frames[-1].data) == 40_000
    assert h.server.read(sid) == b"x" * 40_000
    assert h.server.streams[sid].recv.at_eof


def test_send_after_eof_is_refused(pki: DevPKI) -> None:
    h = established(pki)
    sid = h.client.open_stream()
    h.client.send_eof(sid)
    with pytest.raises(ConnectionClosedError):
        h.client.send(sid, b"late")
    h.client.send_eof(sid)  # idempotent


def test_fin_before_the_data_waits_for_it(pki: DevPKI) -> None:
    h = established(pki)
    inject(h, h.client, h.server, [StreamFrame(0, 3, b"def", fin=True)])
    recv = h.server.streams[0].recv
    assert recv.final_size == 6 and not recv.complete
    inject(h, h.client, h.server, [StreamFrame(0, 0, b"abc")])
    assert h.server.read(0) == b"abcdef"
    assert recv.at_eof


def _expect_illegal(h: Harness, frames: list[list[StreamFrame]]) -> None:
    for record in frames[:-1]:
        inject(h, h.client, h.server, record)
        assert not h.server.closed, h.server.error
    inject(h, h.client, h.server, frames[-1])
    assert h.server.closed
    assert isinstance(h.server.error, IllegalParameter)
    assert SessionClosed(h.server.error) in drain_events(h.server)
    h.pump()
    # the alert went out and ended the client too (design: Alerts)
    assert h.client.closed
    assert AlertDescription.illegal_parameter in alerts_received(h.client, h.client_events)
    assert isinstance(h.client.error, PeerAlert) and h.client.error.alert == 47


@pytest.mark.parametrize(
    "records",
    [
        pytest.param([[StreamFrame(0, 0, b"abc", True)], [StreamFrame(0, 3, b"d")]], id="after"),
        pytest.param(
            [[StreamFrame(0, 0, b"abc", True)], [StreamFrame(0, 1, b"bcd")]], id="straddling"
        ),
        pytest.param(
            [[StreamFrame(0, 0, b"", True)], [StreamFrame(0, 0, b"x")]], id="after-empty-fin"
        ),
        pytest.param(
            [[StreamFrame(0, 5, b"", True)], [StreamFrame(0, 3, b"abc")]], id="into-the-gap"
        ),
        pytest.param(
            [[StreamFrame(0, 0, b"abc", True), StreamFrame(0, 3, b"d")]], id="same-record"
        ),
    ],
)
def test_data_beyond_the_final_size_fails_the_session(
    pki: DevPKI, records: list[list[StreamFrame]]
) -> None:
    _expect_illegal(established(pki), records)


@pytest.mark.parametrize(
    "records",
    [
        pytest.param(
            [[StreamFrame(0, 0, b"abc", True)], [StreamFrame(0, 0, b"ab", True)]], id="smaller"
        ),
        pytest.param(
            [[StreamFrame(0, 0, b"abc", True)], [StreamFrame(0, 3, b"d", True)]], id="larger"
        ),
        pytest.param(
            [[StreamFrame(0, 0, b"abc", True)], [StreamFrame(0, 4, b"", True)]], id="empty-larger"
        ),
        pytest.param(
            [[StreamFrame(0, 6, b"", True)], [StreamFrame(0, 2, b"", True)]], id="before-data"
        ),
    ],
)
def test_second_fin_with_a_different_final_size_fails(
    pki: DevPKI, records: list[list[StreamFrame]]
) -> None:
    _expect_illegal(established(pki), records)


@pytest.mark.parametrize(
    "records",
    [
        pytest.param(
            [[StreamFrame(0, 0, b"abcdef")], [StreamFrame(0, 0, b"abc", True)]],
            id="below-delivered",
        ),
        pytest.param(
            [[StreamFrame(0, 10, b"held")], [StreamFrame(0, 0, b"abc", True)]], id="below-held"
        ),
    ],
)
def test_fin_below_data_already_received_fails(
    pki: DevPKI, records: list[list[StreamFrame]]
) -> None:
    _expect_illegal(established(pki), records)


def test_duplicate_fin_with_the_same_final_size_is_fine(pki: DevPKI) -> None:
    h = established(pki)
    inject(h, h.client, h.server, [StreamFrame(0, 0, b"abc", True)])
    inject(h, h.client, h.server, [StreamFrame(0, 0, b"abc", True)])  # exact duplicate
    inject(h, h.client, h.server, [StreamFrame(0, 3, b"", True)])  # empty FIN, same size
    inject(h, h.client, h.server, [StreamFrame(0, 1, b"bc", True)])  # tail again, with FIN
    inject(h, h.client, h.server, [StreamFrame(0, 0, b"ab")])  # data within the final size
    assert not h.server.closed
    assert h.server.read(0) == b"abc"
    assert h.server.streams[0].recv.at_eof
    h.pump()
    assert not h.client.closed


def test_duplicate_fin_after_the_stream_was_read(pki: DevPKI) -> None:
    h = established(pki)
    inject(h, h.client, h.server, [StreamFrame(0, 0, b"abc", True)])
    assert h.server.read(0) == b"abc"
    inject(h, h.client, h.server, [StreamFrame(0, 0, b"abc", True)])
    assert not h.server.closed
    assert h.server.read(0) == b""


def test_server_fin_violation_fails_the_client(pki: DevPKI) -> None:
    """The same rule in the other direction."""
    h = established(pki)
    inject(h, h.server, h.client, [StreamFrame(1, 0, b"abc", True)])
    inject(h, h.server, h.client, [StreamFrame(1, 3, b"more")])
    assert h.client.closed
    assert isinstance(h.client.error, IllegalParameter)
    h.pump()
    assert h.server.closed
    assert AlertDescription.illegal_parameter in alerts_received(h.server, h.server_events)
    assert isinstance(h.server.error, PeerAlert) and h.server.error.alert == 47
