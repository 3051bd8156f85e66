"""Helpers for the multipath and failover tests: byte accounting, partial pumping, joins.

* :class:`Flow` writes stream data on either side, reads everything that arrives on
  the other side and checks that every byte was delivered exactly once and in order.
* :func:`pump_rounds` moves bytes for a bounded number of rounds (a transfer stays
  part-way, unlike :meth:`Harness.pump`, which runs until nothing moves).
* :func:`begin_join` starts a join on a new link without pumping, so a test can cut
  the link at any step of the join exchange.
* :func:`chunked_delivery` makes both sessions take incoming bytes in pieces of at most
  64 KiB, as reads from a real socket come (see the note there).
* :func:`covered` merges the stream ranges of recorded frames (to see what was sent
  where, and what was sent again).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field

from tcpls.core.connection import ConnectionStatus
from tcpls.core.events import ConnectionRemoved, SessionEvent
from tcpls.core.session import CoreSession
from tcpls.wire.frames import StreamFrame
from tests.core.harness import Harness, Link
from tests.core.util import Record

__all__ = [
    "Flow",
    "begin_join",
    "chunked_delivery",
    "contains",
    "covered",
    "deliver_join_hello",
    "live_links",
    "mute",
    "pump_rounds",
    "removed",
    "settle",
    "stream_frames",
]


@dataclass
class _Direction:
    sender: str
    stream_id: int
    sent: bytearray = field(default_factory=bytearray)
    received: bytearray = field(default_factory=bytearray)
    fin_queued: bool = False
    eof: bool = False


class Flow:
    """Stream bytes written by each side of a harness, and what the other side read."""

    def __init__(self, h: Harness) -> None:
        self.h = h
        self.directions: dict[tuple[str, int], _Direction] = {}

    def _session(self, side: str) -> CoreSession:
        return self.h.client if side == "client" else self.h.server

    def _peer(self, side: str) -> CoreSession:
        return self.h.server if side == "client" else self.h.client

    def open(self, side: str) -> int:
        """Open a stream on ``side`` (``"client"`` or ``"server"``); return its ID."""
        sid = self._session(side).open_stream()
        self.directions[(side, sid)] = _Direction(side, sid)
        return sid

    def track(self, side: str, sid: int) -> None:
        """Also account for ``side``'s direction of a stream the peer opened."""
        self.directions.setdefault((side, sid), _Direction(side, sid))

    def send(self, side: str, sid: int, data: bytes | int) -> bytes:
        """Write ``data`` (or that many random bytes) on ``side``'s stream ``sid``."""
        if isinstance(data, int):
            data = os.urandom(data)
        self._session(side).send(sid, data)
        self.directions[(side, sid)].sent += data
        return data

    def finish(self, side: str, sid: int) -> None:
        """End ``side``'s direction of stream ``sid`` (FIN)."""
        direction = self.directions[(side, sid)]
        if not direction.fin_queued:
            self._session(side).send_eof(sid)
            direction.fin_queued = True

    def finish_all(self) -> None:
        for side, sid in self.directions:
            self.finish(side, sid)

    def collect(self) -> None:
        """Read whatever arrived in order, on both sides."""
        for (side, sid), direction in self.directions.items():
            receiver = self._peer(side)
            stream = receiver.streams.get(sid)
            if stream is None:
                continue
            direction.received += receiver.read(sid)
            if stream.recv.at_eof:
                direction.eof = True

    def delivered(self) -> bool:
        """Whether every byte written so far arrived (and the FINs queued, when queued)."""
        self.collect()
        return all(
            len(d.received) >= len(d.sent) and (d.eof or not d.fin_queued)
            for d in self.directions.values()
        )

    def check(self, *, complete: bool = True) -> None:
        """Assert that each direction received exactly the bytes sent, in order, once."""
        self.collect()
        for (side, sid), d in self.directions.items():
            assert len(d.received) == len(d.sent), (side, sid, len(d.received), len(d.sent))
            assert d.received == d.sent, f"stream {sid} from the {side}: bytes differ"
            if complete and d.fin_queued:
                assert d.eof, f"stream {sid} from the {side}: FIN not delivered"
        for session in (self.h.client, self.h.server):
            assert session.reassembly_held == 0
            if session.tcpls:
                for stream in session.streams.values():
                    assert not stream.recv.readable, f"unread bytes on stream {stream.id}"

    def run(self, *, limit: float = 30.0, step: float = 0.01) -> None:
        """Advance the clock until everything arrived."""
        self.h.run_until(self.delivered, step=step, limit=limit)


def chunked_delivery(h: Harness, size: int = 64 * 1024) -> None:
    """Both ends of every link read incoming bytes in pieces of at most ``size`` bytes.

    A socket read returns at most the buffer it was given, whereas the harness passes
    whatever one ``transmit`` produced (up to 256 KiB plus a record) in one delivery.
    Both must work; reading in pieces also splits records across calls. (Big
    deliveries right after a join used to make reading loop for ever:
    ``test_large_delivery_right_after_a_join_is_processed``.)
    """
    h.read_size = size


def mute(h: Harness, side: str, cid: int) -> None:
    """``side`` never writes on its connection ``cid`` again (its ACKs go elsewhere)."""
    for link in h.links:
        if (link.client_id if side == "client" else link.server_id) == cid and (
            side == "client" or link.server is h.server
        ):
            link.muted.add(side)


def pump_rounds(h: Harness, rounds: int) -> None:
    """Move bytes on every link for ``rounds`` rounds only (each pulls up to 256 KiB)."""
    for _ in range(rounds):
        for link in list(h.links):
            h.pump_link(link)
        h.collect_events()


def settle(h: Harness, seconds: float = 0.2) -> None:
    """Let ACK timers run so that what was delivered is also acknowledged."""
    for _ in range(int(seconds / 0.05) + 1):
        h.advance(0.05)


def begin_join(h: Harness) -> Link:
    """Start a join on a new link: the client's join ClientHello is queued, nothing moved."""
    tls, seq = h.client.start_join()
    link = Link(seq, None, 0, pending=h.endpoint.new_connection())
    h.links.append(link)
    tls.start()
    return link


def deliver_join_hello(h: Harness, link: Link) -> None:
    """Deliver the join ClientHello of ``link`` to the server and route the join."""
    data = h.client.transmit(link.client_id, h.now)
    assert data, "the join ClientHello was not queued"
    h.deliver_to_server(link, data)


def live_links(h: Harness) -> list[Link]:
    """Links that are up and whose connection exists on both sides."""
    return [
        link
        for link in h.links
        if link.state == "up"
        and link.client_id in h.client.connections
        and link.server is h.server
        and link.server_id in h.server.connections
        and h.client.connections[link.client_id].status is ConnectionStatus.ACTIVE
    ]


def removed(events: Iterable[SessionEvent]) -> list[ConnectionRemoved]:
    return [e for e in events if isinstance(e, ConnectionRemoved)]


def stream_frames(records: Iterable[Record]) -> list[StreamFrame]:
    return [f for r in records for f in r.frames if isinstance(f, StreamFrame)]


def covered(records: Iterable[Record], sid: int) -> list[tuple[int, int]]:
    """The merged byte ranges ``[start, end)`` of stream ``sid`` in the records."""
    spans = sorted(
        (f.offset, f.offset + len(f.data))
        for f in stream_frames(records)
        if f.stream_id == sid and f.data
    )
    merged: list[tuple[int, int]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def contains(spans: list[tuple[int, int]], start: int, end: int) -> bool:
    """Whether ``[start, end)`` lies within the merged ``spans``."""
    return any(s <= start and end <= e for s, e in spans)
