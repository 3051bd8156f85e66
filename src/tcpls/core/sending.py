"""Outgoing records of a TCPLS session: the pull model and the retransmission log.

Part of :class:`tcpls.core.session.Session` (a mixin, split out by concern).
When the transport of a connection can take bytes, :meth:`transmit` builds
records for it: stream data chosen by the scheduler (the largest Stream frame
first, design: Records), then control frames and the ACKs that are due
(design: ACK policy). The stream ranges and retransmittable frames of each
record are logged under its sequence number until acknowledged
(design: Retransmission). A single busy stream with nothing
else pending takes a tight loop (:meth:`_fill_bulk`).
"""

from __future__ import annotations

import logging
import struct

from tcpls.core.connection import Connection, ConnectionStatus, StreamRef
from tcpls.core.state import SessionBase
from tcpls.core.streams import Stream
from tcpls.errors import ConnectionClosedError, TCPLSError
from tcpls.wire.frames import (
    STREAM_HEADER_SIZE,
    Ack,
    ConnectionReset,
    Frame,
    NewAddress,
    NewToken,
    Ping,
    RemoveAddress,
    encode_frame,
    frame_size,
    write_stream_header_into,
)

__all__ = ["SendingMixin"]

logger = logging.getLogger(__name__)

_RETRANSMITTED_CONTROL = (NewToken, NewAddress, RemoveAddress, ConnectionReset)
_ACK = struct.Struct(">QIB")  # Highest Record Sequence, Connection ID, Type (design: Frame layout)
#: Stop adding Stream frames to a record when less room than this is left.
_MIN_STREAM_CHUNK = 512


class SendingMixin(SessionBase):
    """How a session fills the records of its connections."""

    def wants_transmit(self, connection_id: int) -> bool:
        """Whether :meth:`transmit` would produce bytes for this connection now."""
        conn = self.connections.get(connection_id)
        if conn is None:
            return False
        tls = conn.tls
        if tls.pending_output:
            return True
        if not tls.can_send:
            return False
        if conn.ping_pending or conn.ping_answer:
            return True
        if conn.status is ConnectionStatus.ACTIVE:
            if self._control or self._sendable_for(conn):
                return True
        elif conn.status is not ConnectionStatus.DRAINING:
            return False
        if self._close_requested and self._flushed():
            return True
        return any(c.ack_due(self.now) for c in self._acks_pending)

    def _sendable_for(self, conn: Connection) -> bool:
        if not self._sendable:
            return False
        if self.scheduler.spreads:
            return True
        conns = self.connections
        allows = self.scheduler.allows
        return any(allows(self.streams[sid], conn, conns) for sid in self._sendable)

    def transmit(self, connection_id: int, now: float, budget: int = 256 * 1024) -> bytes:
        """Records for this connection, up to about ``budget`` bytes; ``b""`` if none."""
        self.now = now
        conn = self.connections.get(connection_id)
        if conn is None:
            return b""
        tls = conn.tls
        if tls.can_send and not self.closed:
            try:
                if self.tcpls:
                    self._fill_tcpls(conn, budget)
                    if self.records_sealed >= self._aead_limit:
                        self._key_limit_reached()
                else:
                    self._fill_plain(conn, budget)
                if self._close_requested and self._flushed():
                    if self.tcpls and self.reliable:
                        # acknowledge everything received before the last record we may send
                        for c in self._acks_pending:
                            c.ack_now = True
                        self._fill_tcpls(conn, budget)
                    self._send_close_notify()
            except TCPLSError as exc:
                self._fail(exc)
        data = tls.data_to_send()
        if data:
            conn.bytes_sent += len(data)
            self._last_io = now
            self._trimmed = False  # sealing may have taken a buffer again
        return data

    def _key_limit_reached(self) -> None:
        """TCPLS: the session's write key sealed as many records as it safely may.

        All the connections of a session share its keys and TCPLS has no KeyUpdate:
        the session closes, gracefully, before the key's usage limit (design: Key
        usage limits). Plain TLS updates its keys instead (:meth:`_fill_plain`).
        """
        if self._close_requested:
            return
        logger.info("closing a session whose key sealed %d records", self.records_sealed)
        self._close_error = ConnectionClosedError(
            f"the session sent {self.records_sealed} records under one key, the most "
            "TLS 1.3 allows for its cipher; a new session is needed"
        )
        self.close()

    def _fill_plain(self, conn: Connection, budget: int) -> None:
        stream = self.streams[0]
        tls = conn.tls
        protection = tls.write_protection
        if protection is not None and protection.sequence >= self._aead_limit:
            tls.key_update(False)  # plain TLS changes its keys (design: Key usage limits)
        pending = stream.send.end - stream.send_next
        if pending:
            n = min(pending, budget)
            view = tls.staging_buffer()
            size = self.tuning.max_record_size
            offset = stream.send_next
            end = offset + n
            while offset < end:
                chunk = min(size, end - offset)
                stream.send.copy_into(offset, chunk, view)
                tls.seal_staged(chunk)
                conn.records_sent += 1
                self.records_sealed += 1
                offset += chunk
            stream.on_acked(stream.send_next, n, False)
            stream.send_next = end
            self._sent_new(n)
            self.writable.add(0)
        if stream.fin_queued and not stream.fin_sent and stream.send_next == stream.send.end:
            stream.fin_sent = True
            stream.fin_acked = True
            tls.close()  # TLS 1.3 close_notify is a half-close
            self.writable.add(0)
        if stream.send_next == stream.send.end:
            self._sendable.pop(0, None)

    def _fill_bulk(self, conn: Connection, stream: Stream, budget: int, limit: int) -> None:
        """The data path of a single busy stream: records of one Stream frame, nothing else."""
        tls = conn.tls
        view = tls.staging_buffer()
        send = stream.send
        sid = stream.id
        room = limit - STREAM_HEADER_SIZE
        # after the peer's close_notify on this connection no ACK can come: TCP alone
        # delivers what we still send there (design: Closing)
        log = conn.sent_log if self.reliable and not tls.close_notify_received else None
        cap = self.tuning.max_unacked_bytes
        half_buffer = self.tuning.stream_send_buffer // 2
        sent = 0
        first = stream.send_next
        while tls.pending_output < budget and self.unacked_bytes < cap:
            offset = stream.send_next
            pending = send.end - offset
            if pending <= 0:
                break
            n = pending if pending < room else room
            fin = stream.fin_queued and n == pending
            send.copy_into(offset, n, view)
            seq = tls.seal_staged(write_stream_header_into(view, n, sid, offset, n, fin), False)
            stream.send_next = offset + n
            sent += 1
            if pending > half_buffer >= pending - n:
                self.writable.add(sid)
            if fin:
                stream.fin_sent = True
            if log is not None:
                log.append((seq, [(sid, offset, n, fin)], None))
                self.unacked_bytes += n
            else:
                self._stream_acked(stream, offset, n, fin)
        conn.records_sent += sent
        self.records_sealed += sent
        self._sent_new(stream.send_next - first)
        if not stream.has_data_to_send:
            self._sendable.pop(sid, None)

    def _bulk_stream(self, conn: Connection) -> Stream | None:
        """The one stream to send with :meth:`_fill_bulk`, when nothing else is pending."""
        if (
            len(self._sendable) != 1
            or self._control
            or conn.ping_pending
            or conn.ping_answer
            or not self.scheduler.spreads
        ):
            return None
        if self._acks_pending:
            return None
        stream = self.streams.get(next(iter(self._sendable)))
        if stream is None or stream.send_retransmit or stream.pin is not None or stream.fin_sent:
            return None
        return stream

    def _fill_tcpls(self, conn: Connection, budget: int) -> None:
        tls = conn.tls
        limit = min(self.tuning.max_record_size, 16384)
        usable = conn.status is ConnectionStatus.ACTIVE
        reliable = self.reliable and not tls.close_notify_received  # see _fill_bulk
        now = self.now
        if usable and (bulk := self._bulk_stream(conn)) is not None:
            self._fill_bulk(conn, bulk, budget, limit)
        elif not (self._sendable or self._control or conn.ping_pending or conn.ping_answer):
            self._send_acks(conn, now)  # the receiving end of a transfer: ACKs only
            return
        while tls.pending_output < budget:
            control = self._control_frames_for(conn, now, usable)
            space = limit - sum(frame_size(f) for f in control)
            view = tls.staging_buffer()
            pos = 0
            refs: list[StreamRef] = []
            logged: list[Frame] | None = None
            if usable and self._sendable:
                plan = self._plan_stream_frames(conn, space)
                if len(plan) > 1:
                    plan.sort(key=lambda p: -p[2])  # largest Stream frame first (design: Records)
                for stream, offset, length, fin in plan:
                    stream.send.copy_into(offset, length, view[pos:])
                    pos = write_stream_header_into(
                        view, pos + length, stream.id, offset, length, fin
                    )
                    refs.append((stream.id, offset, length, fin))
            for frame in control:
                if type(frame) is Ack:
                    _ACK.pack_into(view, pos, frame.highest_sequence, frame.connection_id, 4)
                    pos += _ACK.size
                    continue
                encoded = encode_frame(frame)
                view[pos : pos + len(encoded)] = encoded
                pos += len(encoded)
                if reliable and type(frame) in _RETRANSMITTED_CONTROL:
                    if logged is None:
                        logged = []
                    logged.append(frame)
            if pos == 0:
                return
            seq = tls.seal_staged(pos)
            conn.records_sent += 1
            self.records_sealed += 1
            if conn.ping_pending:
                conn.ping_pending = False
                conn.ping_sent_at = now
                conn.ping_sequence = seq
            if reliable:
                if refs or logged:
                    conn.sent_log.append((seq, refs, logged))
                    for ref in refs:
                        self.unacked_bytes += ref[2]
            else:
                for stream_id, offset, length, fin in refs:
                    acked = self.streams.get(stream_id)
                    if acked is not None:
                        self._stream_acked(acked, offset, length, fin)

    def _sent_new(self, n: int) -> None:
        """``n`` bytes written by the application left for the first time."""
        self.send_pending_total -= n
        self._last_activity = self.now  # stream data moves: the session is not idle
        if self._send_full and self.send_pending_total <= self.tuning.session_send_buffer // 2:
            self._send_full = False
            self.writable.update(self.streams)  # every drain() may return

    def _send_acks(self, conn: Connection, now: float) -> None:
        """One record holding the ACKs that are due, and nothing else."""
        view = conn.tls.staging_buffer()
        pos = 0
        for c in list(self._acks_pending):
            if c.ack_due(now):
                _ACK.pack_into(view, pos, c.highest_received, c.id, 4)
                pos += _ACK.size
                c.ack_pending_records = c.ack_pending_bytes = 0
                c.ack_deadline = None
                c.ack_now = False
                del self._acks_pending[c]
        if pos:
            conn.tls.seal_staged(pos, False)
            conn.records_sent += 1
            self.records_sealed += 1

    def _control_frames_for(self, conn: Connection, now: float, usable: bool) -> list[Frame]:
        frames: list[Frame] = []
        if self._acks_pending:
            for c in list(self._acks_pending):
                # due ACKs go out at once; a pending ACK for this connection rides along
                if c.ack_due(now) or (c is conn and self._sendable):
                    frames.append(Ack(c.id, c.highest_received))
                    c.ack_pending_records = 0
                    c.ack_pending_bytes = 0
                    c.ack_deadline = None
                    c.ack_now = False
                    del self._acks_pending[c]
        if conn.ping_answer and conn.records_received:
            conn.ping_answer = False
            if not any(type(f) is Ack and f.connection_id == conn.id for f in frames):
                frames.append(Ack(conn.id, conn.highest_received))
        if conn.ping_pending:
            frames.append(Ping())
        if usable or conn.status is ConnectionStatus.DRAINING:
            control = self._control
            size = sum(frame_size(f) for f in frames)
            while control and size + frame_size(control[0]) <= 4096:
                frame = control.popleft()
                frames.append(frame)
                size += frame_size(frame)
        return frames

    def _plan_stream_frames(
        self, conn: Connection, space: int
    ) -> list[tuple[Stream, int, int, bool]]:
        plan: list[tuple[Stream, int, int, bool]] = []
        sendable = self._sendable
        streams = self.streams
        conns = self.connections
        allows = self.scheduler.allows
        aggregate = self.scheduler.spreads
        unacked_cap = self.tuning.max_unacked_bytes if self.reliable else 1 << 62
        half_buffer = self.tuning.stream_send_buffer // 2
        for sid in list(sendable):
            if space < STREAM_HEADER_SIZE + (_MIN_STREAM_CHUNK if plan else 0):
                break
            stream = streams.get(sid)
            if stream is None:
                del sendable[sid]
                continue
            if not (aggregate and stream.pin is None) and not allows(stream, conn, conns):
                continue
            room = space - STREAM_HEADER_SIZE
            retransmit = stream.send_retransmit
            if retransmit:
                offset, length, fin = retransmit[0]
                if offset + length <= stream.send.base and not fin:
                    retransmit.pop(0)  # acknowledged meanwhile on another connection
                    continue
                if offset < stream.send.base:
                    length -= stream.send.base - offset
                    offset = stream.send.base
                n = min(length, room)
                if n < length:
                    retransmit[0] = (offset + n, length - n, fin)
                    fin = False
                else:
                    retransmit.pop(0)
            else:
                if self.unacked_bytes >= unacked_cap:
                    break  # the peer is not acknowledging: send nothing new (memory bound)
                offset = stream.send_next
                pending = stream.send.end - offset
                n = min(pending, room)
                fin = stream.fin_queued and not stream.fin_sent and n == pending
                if n == 0 and not fin:
                    del sendable[sid]
                    continue
                stream.send_next = offset + n
                self._sent_new(n)
                if pending > half_buffer >= pending - n:
                    self.writable.add(sid)  # drain() may return
                if fin:
                    stream.fin_sent = True
            plan.append((stream, offset, n, fin))
            space -= STREAM_HEADER_SIZE + n
            # round robin: move the stream to the end, or drop it when it has nothing left
            del sendable[sid]
            if stream.has_data_to_send:
                sendable[sid] = None
        return plan
