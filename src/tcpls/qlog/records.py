"""The qlog events of records: ``tcpls:record_sent``/``received``, ACKs, scheduler decisions.

:class:`RecordTracer` implements the per-record hooks of the core
(:class:`tcpls.core.trace.RecordTrace`). What it writes depends on ``records``:

* ``"all"``: one ``tcpls:record_sent`` or ``tcpls:record_received`` event per record,
  with its frames (never a token's bytes, never stream data);
* ``"sampled"`` (the default): 1 record in ``sample_every`` per direction, plus the
  records that come after a failure (:meth:`RecordTracer.force`) and a received record
  that ends a silence of :data:`GAP` or more (its ``gap_ms`` says how long), so that
  failovers and stalls are always in the log;
* ``"none"``: no record events (the session gets no per-record hooks then).

Every record event carries ``connection_bytes``: the record payload bytes of its
connection and direction so far, this record included, so that the rate of each
connection can be computed from sampled events. ``tcpls:ack_sent``/``received`` are
written for the ACK frames of the records logged, ``tcpls:token_issued`` for every New
Token frame sent, and ``tcpls:scheduler_decision`` with each record event that carries
stream data sent: the policy, the connection chosen, the streams and the usable
connections.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from tcpls.core.connection import Connection, StreamRef
from tcpls.core.session import CoreSession
from tcpls.core.trace import RecordHandler
from tcpls.errors import TCPLSError
from tcpls.qlog.writer import QlogWriter
from tcpls.wire.frames import (
    Ack,
    ConnectionReset,
    Frame,
    NewAddress,
    NewToken,
    Padding,
    RemoveAddress,
    StreamChange,
    StreamFrame,
    parse_frames,
)
from tcpls.wire.layout import STREAM_HEADER_SIZE

__all__ = ["GAP", "RecordMode", "RecordTracer", "frame_summary"]

#: What qlog writes of records: every one, a sample, or none.
RecordMode = Literal["all", "sampled", "none"]
#: A received record after this many seconds without any is always logged (stalls).
GAP = 0.05
#: Records logged in each direction after a connection failed, whatever the sampling.
AFTER_FAILURE = 8


def frame_summary(frame: Frame) -> dict[str, Any]:
    """What qlog says of a frame: its type and fields, without stream data or token bytes."""
    kind = type(frame)
    if kind is StreamFrame:
        assert isinstance(frame, StreamFrame)
        return _stream(frame.stream_id, frame.offset, len(frame.data), frame.fin)
    if kind is Ack:
        assert isinstance(frame, Ack)
        return {
            "frame_type": "ack",
            "connection_id": frame.connection_id,
            "highest_sequence": frame.highest_sequence,
        }
    if kind is NewToken:
        assert isinstance(frame, NewToken)
        return {"frame_type": "new_token", "sequence": frame.sequence}
    if kind is ConnectionReset:
        assert isinstance(frame, ConnectionReset)
        return {"frame_type": "connection_reset", "connection_id": frame.connection_id}
    if kind is NewAddress:
        assert isinstance(frame, NewAddress)
        return {
            "frame_type": "new_address",
            "address_id": frame.address_id,
            "address": str(frame.address),
            "port": frame.port,
        }
    if kind is RemoveAddress:
        assert isinstance(frame, RemoveAddress)
        return {"frame_type": "remove_address", "address_id": frame.address_id}
    if kind is StreamChange:
        assert isinstance(frame, StreamChange)
        return {
            "frame_type": "stream_change",
            "stream_id": frame.stream_id,
            "offset": frame.offset,
        }
    if kind is Padding:
        assert isinstance(frame, Padding)
        return {"frame_type": "padding", "length": frame.length}
    return {"frame_type": kind.__name__.lower()}


def _stream(stream_id: int, offset: int, length: int, fin: bool) -> dict[str, Any]:
    return {
        "frame_type": "stream",
        "stream_id": stream_id,
        "offset": offset,
        "length": length,
        "fin": fin,
    }


class RecordTracer:
    """The per-record hooks of one session, written to ``writer`` (see the module docstring)."""

    def __init__(
        self,
        core: CoreSession,
        writer: QlogWriter,
        *,
        records: RecordMode = "sampled",
        sample_every: int = 16,
    ) -> None:
        self._core: CoreSession | None = core
        self._writer = writer
        self.mode: RecordMode = records
        self._every = max(1, sample_every)
        self._sent_count = 0
        self._received_count = 0
        self._force_sent = 0
        self._force_received = 0
        self._sent_bytes: dict[int, int] = {}
        self._received_bytes: dict[int, int] = {}
        self._last_received: float | None = None

    def close(self) -> None:
        """The session ended: nothing more is written, and the session is let go."""
        self._core = None

    def force(self) -> None:
        """Log the next records in each direction whatever the sampling (after a failure)."""
        self._force_sent = self._force_received = AFTER_FAILURE

    # -------------------------------------------------------------- sampling

    def _take_sent(self) -> bool:
        if self.mode == "none" or not self._writer.takes_bulk:
            return False
        self._sent_count += 1
        if self._force_sent:
            self._force_sent -= 1
            return True
        return self.mode == "all" or self._sent_count % self._every == 1 % self._every

    def _take_received(self, gap: float | None) -> bool:
        if self.mode == "none" or not self._writer.takes_bulk:
            return False
        self._received_count += 1
        if self._force_received:
            self._force_received -= 1
            return True
        if gap is not None and gap >= GAP:
            return True
        return self.mode == "all" or self._received_count % self._every == 1 % self._every

    def _emit(self, name: str, data: dict[str, Any]) -> None:
        core = self._core
        if core is not None:
            self._writer.event(core.now, name, data, bulk=True)

    # -------------------------------------------------------------- sent

    def _count_sent(self, cid: int, size: int) -> int:
        total = self._sent_bytes.get(cid, 0) + size
        self._sent_bytes[cid] = total
        return total

    def record_sent(
        self,
        conn: Connection,
        seq: int,
        size: int,
        refs: Sequence[StreamRef],
        control: list[Frame],
    ) -> None:
        """A record of the general filling path (:class:`tcpls.core.trace.RecordTrace`)."""
        total = self._count_sent(conn.id, size)
        take = self._take_sent()
        for frame in control:
            kind = type(frame)
            if kind is Ack and take:
                self._ack("tcpls:ack_sent", frame, conn.id)
            elif kind is NewToken:
                assert isinstance(frame, NewToken)
                self._emit("tcpls:token_issued", {"sequence": frame.sequence, "via": "new_token"})
        if not take:
            return
        frames = [_stream(*ref) for ref in refs]
        frames += [frame_summary(f) for f in control]
        self._record("tcpls:record_sent", conn.id, seq, size, frames, total)
        if refs:
            self._decision(conn, sorted({ref[0] for ref in refs}))

    def stream_records_sent(
        self, conn: Connection, stream_id: int, start: int, end: int, room: int, fin: bool
    ) -> None:
        """Records of the bulk path: one Stream frame each (:class:`RecordTrace`)."""
        count = -(-(end - start) // room) if room > 0 else 0
        protection = conn.tls.write_protection
        if not count or protection is None:
            return
        first_seq = protection.sequence - count
        offset = start
        for index in range(count):
            n = min(room, end - offset)
            size = n + STREAM_HEADER_SIZE
            total = self._count_sent(conn.id, size)
            if self._take_sent():
                last = index == count - 1
                frames = [_stream(stream_id, offset, n, fin and last)]
                self._record("tcpls:record_sent", conn.id, first_seq + index, size, frames, total)
                self._decision(conn, [stream_id])
            offset += n

    def acks_sent(self, conn: Connection, seq: int, content: memoryview) -> None:
        """A record of ACK frames only (:class:`RecordTrace`)."""
        try:
            frames = parse_frames(content)
        except TCPLSError:
            return
        self.record_sent(conn, seq, len(content), (), frames)

    def plain_sent(self, conn: Connection, nbytes: int, record_size: int) -> None:
        """Plain TLS: stream 0's bytes in records of ``record_size`` (:class:`RecordTrace`)."""
        protection = conn.tls.write_protection
        count = -(-nbytes // record_size) if record_size > 0 else 0
        if not count or protection is None:
            return
        first_seq = protection.sequence - count
        for index in range(count):
            n = min(record_size, nbytes - index * record_size)
            total = self._count_sent(conn.id, n)
            if self._take_sent():
                frames = [{"frame_type": "application_data", "length": n}]
                self._record("tcpls:record_sent", conn.id, first_seq + index, n, frames, total)

    def _decision(self, conn: Connection, streams: list[int]) -> None:
        core = self._core
        if core is None:
            return
        usable = sorted(c.id for c in core.connections.values() if c.usable)
        self._emit(
            "tcpls:scheduler_decision",
            {
                "policy": core.scheduler.name,
                "connection_id": conn.id,
                "streams": streams,
                "usable": usable,
            },
        )

    # -------------------------------------------------------------- received

    def receiving(self, handle: RecordHandler) -> RecordHandler:
        """``handle``, with each record logged before it is handled (:class:`RecordTrace`)."""
        core = self._core
        plain = core is not None and core.tcpls is False
        trace = self._plain_received if plain else self._received

        def traced(conn: Connection, content: memoryview) -> bool:
            trace(conn, content)
            return handle(conn, content)

        return traced

    def _gap(self) -> tuple[float | None, float]:
        core = self._core
        now = core.now if core is not None else 0.0
        last = self._last_received
        self._last_received = now
        return (None if last is None else now - last), now

    def _count_received(self, cid: int, size: int) -> int:
        total = self._received_bytes.get(cid, 0) + size
        self._received_bytes[cid] = total
        return total

    def _received(self, conn: Connection, content: memoryview) -> None:
        size = len(content)
        total = self._count_received(conn.id, size)
        gap, _ = self._gap()
        if not self._take_received(gap):
            return
        try:
            frames = parse_frames(content)
        except TCPLSError:
            frames = None
        if frames is not None:
            for frame in frames:
                if type(frame) is Ack:
                    self._ack("tcpls:ack_received", frame, conn.id)
        protection = conn.tls.read_protection
        seq = protection.sequence - 1 if protection is not None else -1
        summary = [frame_summary(f) for f in frames] if frames is not None else None
        self._record("tcpls:record_received", conn.id, seq, size, summary, total, gap)
        del frames  # (views of the record: not kept beyond this call)

    def _plain_received(self, conn: Connection, content: memoryview) -> None:
        size = len(content)
        total = self._count_received(conn.id, size)
        gap, _ = self._gap()
        if self._take_received(gap):
            protection = conn.tls.read_protection
            seq = protection.sequence - 1 if protection is not None else -1
            frames = [{"frame_type": "application_data", "length": size}]
            self._record("tcpls:record_received", conn.id, seq, size, frames, total, gap)

    # -------------------------------------------------------------- events

    def _ack(self, name: str, frame: Frame, on_connection: int) -> None:
        assert isinstance(frame, Ack)
        self._emit(
            name,
            {
                "connection_id": frame.connection_id,
                "highest_sequence": frame.highest_sequence,
                "on_connection": on_connection,
            },
        )

    def _record(
        self,
        name: str,
        cid: int,
        seq: int,
        size: int,
        frames: list[dict[str, Any]] | None,
        total: int,
        gap: float | None = None,
    ) -> None:
        data: dict[str, Any] = {
            "connection_id": cid,
            "sequence": seq,
            "length": size,
            "frames": frames,
            "connection_bytes": total,
        }
        if gap is not None and gap >= GAP:
            data["gap_ms"] = round(gap * 1000, 3)
        self._emit(name, data)
