"""Helpers for the session-core tests: inject hand-made records, look inside what is sent.

* :func:`inject` seals arbitrary frames with the *sender's* TLS write protection of a
  connection and hands the record to the receiving session, bypassing the sender's stream
  bookkeeping, so a test controls stream IDs, offsets and FIN exactly.
* :func:`peek` opens the records a session emitted with a copy of the *receiving* side's
  read protection (same keys, Connection ID and next sequence number) without disturbing
  the receiver, so a test can assert exactly which frames went on the wire.
* :func:`send_over` does both halves of one hop: ``transmit`` on the sender, peek, deliver.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tcpls.core.events import ConnectionRemoved, SessionClosed, SessionEvent
from tcpls.core.session import CoreSession
from tcpls.devcert import DevPKI
from tcpls.errors import PeerAlert, TCPLSError
from tcpls.tls.record import ContentType, RecordProtection
from tcpls.wire.frames import Ack, Frame, encode_frames, parse_frames
from tests.core.harness import Harness

__all__ = [
    "Record",
    "Tap",
    "acks_in",
    "alerts_received",
    "closed_with",
    "deliver_raw",
    "drain_events",
    "established",
    "frames_in",
    "inject",
    "inject_raw",
    "peek",
    "seal_raw",
    "send_over",
]

_HEADER = struct.Struct(">BHH")


@dataclass
class Record:
    """One record as the receiver would open it."""

    sequence: int
    inner_type: int
    content: bytes

    @property
    def frames(self) -> list[Frame]:
        """The TCPLS frames of an application-data record (``[]`` for other types)."""
        if self.inner_type != ContentType.application_data:
            return []
        return parse_frames(self.content)

    @property
    def is_alert(self) -> bool:
        return self.inner_type == ContentType.alert


def established(pki: DevPKI, **kwargs: Any) -> Harness:
    """A harness whose handshake is done and whose first control frames have settled."""
    h = Harness(pki, **kwargs)
    h.pump()
    assert h.client.tcpls is not None and h.server.tcpls is not None
    # let the New Token record be acknowledged so that logs start empty
    h.advance(0.1)
    return h


def seal_raw(sender: CoreSession, content: bytes, cid: int = 0) -> tuple[int, bytes]:
    """Seal ``content`` as one application record of ``sender`` on ``cid``.

    Returns ``(sequence, bytes_to_deliver)``; anything the sender's TLS had already
    queued on that connection comes first in the bytes, in order.
    """
    tls = sender.connections[cid].tls
    seq = tls.send_record(content)
    return seq, tls.data_to_send()


def deliver_raw(h: Harness, receiver: CoreSession, data: bytes, cid: int = 0) -> None:
    """Hand bytes to ``receiver`` as if they arrived on connection ``cid``."""
    receiver.receive_data(cid, data, h.now)


def inject_raw(
    h: Harness, sender: CoreSession, receiver: CoreSession, content: bytes, cid: int = 0
) -> int:
    """Seal ``content`` with ``sender``'s keys and deliver it to ``receiver``; return its seq."""
    seq, data = seal_raw(sender, content, cid)
    deliver_raw(h, receiver, data, cid)
    return seq


def inject(
    h: Harness, sender: CoreSession, receiver: CoreSession, frames: Iterable[Frame], cid: int = 0
) -> int:
    """Seal ``frames`` as one record with ``sender``'s keys, deliver it to ``receiver``."""
    return inject_raw(h, sender, receiver, encode_frames(frames), cid)


def _clone_read(receiver: CoreSession, cid: int) -> RecordProtection:
    read = receiver.connections[cid].tls.read_protection
    assert read is not None, "the receiver has no read keys on this connection yet"
    clone = RecordProtection(read.keys, read.connection_id)
    clone.sequence = read.sequence
    return clone


def _open_all(protection: RecordProtection, data: bytes) -> list[Record]:
    out: list[Record] = []
    pos = 0
    while pos < len(data):
        content_type, _, length = _HEADER.unpack_from(data, pos)
        end = pos + 5 + length
        assert end <= len(data), "partial record"
        if content_type == ContentType.application_data:
            seq = protection.sequence
            inner, content = protection.open(data[pos:end])
            out.append(Record(seq, inner, content))
        pos = end
    return out


def peek(receiver: CoreSession, data: bytes, cid: int = 0) -> list[Record]:
    """Open the records in ``data`` as ``receiver`` would, without changing ``receiver``.

    ``data`` must be exactly what the peer emitted next on ``cid`` (whole records).
    Plaintext records (handshake, ChangeCipherSpec) are skipped.
    """
    return _open_all(_clone_read(receiver, cid), data)


class Tap:
    """Opens every record the two sessions of a harness send from now on.

    Install it when nothing is in flight (after :meth:`Harness.pump`); it wraps
    ``transmit`` of both sessions and follows the connections that exist at that time.
    ``records`` holds ``(sender, connection_id, record)`` with sender ``"client"`` or
    ``"server"``.
    """

    def __init__(self, h: Harness) -> None:
        self.records: list[tuple[str, int, Record]] = []
        self._wrap("client", h.client, h.server)
        self._wrap("server", h.server, h.client)

    def _wrap(self, side: str, sender: CoreSession, receiver: CoreSession) -> None:
        clones = {cid: _clone_read(receiver, cid) for cid in receiver.connections}
        original = sender.transmit

        def transmit(cid: int, now: float, budget: int = 256 * 1024) -> bytes:
            data = original(cid, now, budget)
            if data and cid in clones:
                for record in _open_all(clones[cid], data):
                    self.records.append((side, cid, record))
            return data

        sender.transmit = transmit  # type: ignore[method-assign,assignment]

    def sent_by(self, side: str, cid: int | None = None) -> list[Record]:
        """The records ``side`` sent (on ``cid``, or on any connection)."""
        return [r for s, c, r in self.records if s == side and (cid is None or c == cid)]


def frames_in(records: Iterable[Record]) -> list[Frame]:
    """Every frame of the application-data records, in order."""
    return [f for r in records for f in r.frames]


def acks_in(records: Iterable[Record]) -> list[Ack]:
    """The ACK frames of the records, in order."""
    return [f for f in frames_in(records) if isinstance(f, Ack)]


def send_over(
    h: Harness, sender: CoreSession, receiver: CoreSession, cid: int = 0
) -> list[Record]:
    """``sender.transmit`` on ``cid``, open the records, deliver them; return the records."""
    data = sender.transmit(cid, h.now)
    if not data:
        return []
    records = peek(receiver, data, cid)
    receiver.receive_data(cid, data, h.now)
    return records


def drain_events(session: CoreSession) -> list[SessionEvent]:
    """The events ``session`` queued and nobody took yet (the harness takes them in pump)."""
    out: list[SessionEvent] = []
    while (ev := session.next_event()) is not None:
        out.append(ev)
    return out


def alerts_received(session: CoreSession, events: Iterable[SessionEvent]) -> set[int]:
    """Every fatal alert the peer sent that reached ``session``, as a connection error,
    a session error or the session's ``error``."""
    found: set[int] = set()
    errors: list[object] = [session.error]
    for ev in events:
        if isinstance(ev, ConnectionRemoved | SessionClosed):
            errors.append(ev.error)
    for err in errors:
        if isinstance(err, PeerAlert):
            found.add(err.alert)
    return found


def closed_with(session: CoreSession, kind: type[TCPLSError]) -> bool:
    """Whether ``session`` ended with an error of type ``kind``."""
    return session.closed and isinstance(session.error, kind)
