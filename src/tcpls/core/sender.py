"""Outgoing records: what goes into each record a connection sends.

Owns the record-filling of one session (the pull model): when the transport of a
connection can take bytes, :meth:`RecordSender.fill` seals records for it, stream data
first, chosen by the scheduler (the largest Stream frame at the start of the record,
design: Records), then the control frames and the ACKs that are due (design: ACK
policy). Each record is reported to the ACK tracker, which logs what must be sent
again if the connection fails (design: Retransmission), and each stream range to the
stream set, which keeps the accounting and wakes writers (design: Backpressure).

One loop fills every TCPLS record. A single busy stream with nothing else pending
takes an inner loop of records of one Stream frame each (the data path of a bulk
transfer); the receiving end of a transfer sends records of ACKs only. Plain TLS
(design: Fallback) sends stream 0's bytes as they are.
"""

from __future__ import annotations

import logging
from collections import deque

from tcpls.config import SessionTuning
from tcpls.core.acks import REF_COST, AckTracker
from tcpls.core.connection import Connection, ConnectionStatus, StreamRef
from tcpls.core.links import Links
from tcpls.core.scheduler import Scheduler
from tcpls.core.streams import Stream
from tcpls.core.streamset import StreamSet
from tcpls.core.timers import TRIM_AFTER, Timer, TimerSet
from tcpls.core.trace import RecordTrace
from tcpls.errors import ConnectionClosedError, TCPLSError
from tcpls.wire.frames import (
    Ack,
    Frame,
    Ping,
    encode_frame,
    frame_size,
    is_retransmittable,
)
from tcpls.wire.layout import (
    STREAM_HEADER_SIZE,
    FrameType,
    write_ack_into,
    write_stream_header_into,
)

__all__ = ["RecordSender"]

logger = logging.getLogger(__name__)

#: Stop adding Stream frames to a record when less room than this is left.
MIN_STREAM_CHUNK = 512
#: Most bytes of control frames in one record (the rest is for stream data).
MAX_CONTROL_BYTES = 4096

#: The Ping frame (its type byte alone).
PING = int(FrameType.PING)
#: A Stream frame planned for a record: the stream, offset, length and FIN.
_Planned = tuple[Stream, int, int, bool]


class RecordSender:
    """Fills the records of one session's connections (see the module docstring)."""

    def __init__(
        self,
        tuning: SessionTuning,
        links: Links,
        streams: StreamSet,
        acks: AckTracker,
        scheduler: Scheduler,
        control: deque[Frame],
        timers: TimerSet,
    ) -> None:
        self.tuning = tuning
        self._links = links
        self._connections = links.connections
        self._streams = streams
        self._acks = acks
        self.scheduler = scheduler
        self._control = control
        self._timers = timers
        #: Records sealed with the session's application keys, over all connections.
        self.records_sealed = 0
        #: The per-record hooks of qlog (design: qlog), ``None`` unless records are traced.
        self.qlog: RecordTrace | None = None

    # ------------------------------------------------------------ the pull model

    def wants_transmit(self, conn: Connection, now: float) -> bool:
        """Whether :meth:`transmit` would produce bytes for ``conn`` now (asked for every
        connection on every pass of the I/O layer, hence one call)."""
        tls = conn.tls
        if tls.pending_output:
            return True
        if not tls.can_send:
            return False
        if conn.ping_pending or conn.ping_answer:
            return True
        if conn.status is ConnectionStatus.ACTIVE:
            if (self._control or self._sendable_for(conn)) and self.takes_new(conn):
                return True
        elif conn.status is not ConnectionStatus.DRAINING:
            return False
        links = self._links
        if links.close_requested and links.flushed():
            return True
        return self._acks.due_on(conn, now)

    def takes_new(self, conn: Connection) -> bool:
        """Whether new data and control frames may go on ``conn``: it is active and not
        suspect, or suspect while no healthy connection can take them (design: Failure
        detection)."""
        if conn.status is not ConnectionStatus.ACTIVE:
            return False
        if not conn.timing.suspect:
            return True
        return not any(c.usable for c in self._connections.values())

    def transmit(self, conn: Connection, now: float, budget: int) -> bytes:
        """Records for ``conn``, up to about ``budget`` bytes; ``b""`` if none.

        Once everything is flushed after a close, everything received is acknowledged
        in one last record and close_notify follows (design: Closing, ACK policy).
        """
        tls = conn.tls
        links = self._links
        if tls.can_send and not links.closed:
            try:
                if links.tcpls:
                    self.fill(conn, budget, now)
                    if self.records_sealed >= links.aead_limit:
                        self._key_limit_reached()
                else:
                    self.fill_plain(conn, budget, now)
                if links.close_requested and links.flushed():
                    if links.tcpls and self._acks.logs:
                        self._acks.all_due()
                        self.fill(conn, budget, now)
                    links.send_close_notify()
            except TCPLSError as exc:
                links.fail(exc)
        data = tls.data_to_send()
        if data:
            conn.bytes_sent += len(data)
            self._timers.set(Timer.TRIM, now + TRIM_AFTER)  # sealing may take a buffer
        return data

    def _key_limit_reached(self) -> None:
        """TCPLS: the session's write key sealed as many records as it safely may.

        All the connections of a session share its keys and TCPLS has no KeyUpdate:
        the session closes, gracefully, before the key's usage limit (design: Key
        usage limits). Plain TLS updates its keys instead (:meth:`fill_plain`).
        """
        links = self._links
        if links.close_requested:
            return
        sealed = self.records_sealed
        logger.info("closing a session whose key sealed %d records", sealed)
        links.close_error = ConnectionClosedError(
            f"the session sent {sealed} records under one key, the most "
            "TLS 1.3 allows for its cipher; a new session is needed"
        )
        links.close()

    # ------------------------------------------------------------ what is due

    def _sendable_for(self, conn: Connection) -> bool:
        sendable = self._streams.sendable
        if not sendable:
            return False
        if self.scheduler.spreads:
            return True
        table = self._streams.table
        conns = self._connections
        allows = self.scheduler.allows
        return any(allows(table[sid], conn, conns) for sid in sendable)

    # ------------------------------------------------------------ plain TLS

    def fill_plain(self, conn: Connection, budget: int, now: float) -> None:
        """Plain TLS: stream 0's bytes in records, then close_notify after its FIN."""
        streams = self._streams
        stream = streams.table[0]
        tls = conn.tls
        protection = tls.write_protection
        if protection is not None and protection.sequence >= self._links.aead_limit:
            tls.key_update(False)  # plain TLS changes its keys (design: Key usage limits)
        first = stream.send_next
        pending = stream.send.end - first
        if pending:
            n = min(pending, budget)
            view = tls.staging_buffer()
            size = self.tuning.max_record_size
            offset, end = first, first + n
            while offset < end:
                chunk = min(size, end - offset)
                stream.send.copy_into(offset, chunk, view)
                tls.seal_staged(chunk)
                conn.records_sent += 1
                self.records_sealed += 1
                offset += chunk
            stream.on_acked(first, n, False)  # TCP delivers: nothing is kept
            if self.qlog is not None:
                self.qlog.plain_sent(conn, n, size)
            streams.sent(stream, first, n, False, now)
            streams.writable.add(0)
        if stream.fin_queued and not stream.fin_sent and stream.send_next == stream.send.end:
            stream.fin_sent = True
            stream.fin_acked = True
            tls.close()  # TLS 1.3 close_notify is a half-close
            streams.writable.add(0)
        if stream.send_next == stream.send.end:
            streams.done_sending(stream)

    # ------------------------------------------------------------ TCPLS records

    def fill(self, conn: Connection, budget: int, now: float) -> None:
        """TCPLS: records for ``conn`` up to about ``budget`` bytes of ciphertext."""
        tls = conn.tls
        limit = min(self.tuning.max_record_size, 16384)
        usable = self.takes_new(conn)
        streams = self._streams
        if usable and (bulk := self._bulk_stream(conn)) is not None:
            self._fill_bulk(conn, bulk, budget, limit, now)
        elif not (streams.sendable or self._control or conn.ping_pending or conn.ping_answer):
            self._send_acks(conn, now)  # the receiving end of a transfer: ACKs only
            return
        acks = self._acks
        while tls.pending_output < budget:
            control = self._control_frames(conn, now, usable)
            space = limit - sum(frame_size(f) for f in control)
            view = tls.staging_buffer()
            pos = 0
            refs: list[StreamRef] = []
            logged: list[Frame] | None = None
            if usable and streams.sendable:
                plan = self._plan(conn, space, now)
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
                    pos = write_ack_into(view, pos, frame.connection_id, frame.highest_sequence)
                    continue
                encoded = encode_frame(frame)
                view[pos : pos + len(encoded)] = encoded
                pos += len(encoded)
                if is_retransmittable(frame):
                    if logged is None:
                        logged = []
                    logged.append(frame)
            if pos == 0:
                return
            seq = tls.seal_staged(pos)
            conn.records_sent += 1
            self.records_sealed += 1
            if self.qlog is not None:
                self.qlog.record_sent(conn, seq, pos, refs, control)
            if conn.ping_pending:
                conn.ping_pending = False
                conn.ping_sent_at = now
                conn.ping_sequence = seq
                acks.timed(conn, seq, seq, now)
            elif refs or logged:
                acks.timed(conn, seq, seq, now)
            acks.record_sent(conn, seq, refs, logged)

    def _bulk_stream(self, conn: Connection) -> Stream | None:
        """The one stream to send with :meth:`_fill_bulk`, when nothing else is pending."""
        sendable = self._streams.sendable
        if (
            len(sendable) != 1
            or self._control
            or conn.ping_pending
            or conn.ping_answer
            or not self.scheduler.spreads
            or self._acks.pending
        ):
            return None
        stream = self._streams.table.get(next(iter(sendable)))
        if stream is None or stream.send_retransmit or stream.pin is not None or stream.fin_sent:
            return None
        return stream

    def _fill_bulk(
        self, conn: Connection, stream: Stream, budget: int, limit: int, now: float
    ) -> None:
        """The data path of a single busy stream: records of one Stream frame, nothing else."""
        tls = conn.tls
        view = tls.staging_buffer()
        send = stream.send
        sid = stream.id
        streams = self._streams
        room = limit - STREAM_HEADER_SIZE
        acks = self._acks
        log = acks.log_for(conn)
        unacked = acks.unacked_cost
        cap = acks.cap()
        # no further ahead of the first byte not acknowledged than the peer may hold out of
        # order (design: Backpressure)
        ahead_end = stream.acked_to + self.tuning.max_reassembly_bytes // 2
        sent = logged = 0
        first = stream.send_next
        fin = False
        seq = -1
        while tls.pending_output < budget and unacked + logged + sent * REF_COST < cap:
            offset = stream.send_next
            pending = send.end - offset
            if pending <= 0 or offset >= ahead_end:
                break
            n = pending if pending < room else room
            fin = stream.fin_queued and n == pending
            send.copy_into(offset, n, view)
            seq = tls.seal_staged(write_stream_header_into(view, n, sid, offset, n, fin), False)
            stream.send_next = offset + n
            sent += 1
            if log is not None:
                log.append((seq, [(sid, offset, n, fin)], None))
                logged += n
            else:
                acks.record_sent(conn, seq, [(sid, offset, n, fin)], None)
        # what left, reported once: the bytes pending only go down, so the writer's
        # half-buffer mark is crossed in this batch exactly when it is across all of it
        streams.sent(stream, first, stream.send_next - first, fin, now)
        acks.logged(logged, sent if log is not None else 0)
        if sent:
            acks.timed(conn, seq - sent + 1, seq, now)
        conn.records_sent += sent
        self.records_sealed += sent
        if self.qlog is not None:
            self.qlog.stream_records_sent(conn, sid, first, stream.send_next, room, fin)
        if not stream.has_data_to_send:
            streams.done_sending(stream)

    def _send_acks(self, conn: Connection, now: float) -> None:
        """One record holding the ACKs that are due, and nothing else; now and then a
        Ping with them (:meth:`_heartbeat`)."""
        view = conn.tls.staging_buffer()
        owed = conn.ack_pending_records > 0
        n = self._acks.pack_due(view, conn, now)
        if n:
            ping = owed and not conn.ack_pending_records and self._heartbeat(conn, now)
            if ping:
                view[n] = PING
                n += 1
            seq = conn.tls.seal_staged(n, False)
            if ping:
                self._acks.timed(conn, seq, seq, now)
            if self.qlog is not None:
                self.qlog.acks_sent(conn, seq, view[:n])
            conn.records_sent += 1
            self.records_sealed += 1

    def _heartbeat(self, conn: Connection, now: float) -> bool:
        """Whether the ACK record of a connection that receives data carries a Ping.

        The receiving end of a transfer sends only ACKs, which the peer does not
        acknowledge: nothing of ours is in flight there, so it would learn of a dead path
        only by a Ping after ``ping_after`` of silence. A Ping rides on its ACKs at most
        once per RTT (and every 2 ``ack_delay``), when nothing of ours is in flight: the
        peer's immediate ACK keeps its RTT estimate fresh and its probe timeout running,
        so it suspects a dead path as soon as the sender does (design: Failure detection).
        """
        timing = conn.timing
        if timing.marks or now < timing.heartbeat_at or not self._acks.logs:
            return False
        if conn.status is not ConnectionStatus.ACTIVE or conn.ping_sent_at is not None:
            return False
        interval = 2 * self.tuning.ack_delay
        last_data = conn.last_data  # (only a connection that carries stream data)
        if last_data is None or now - last_data > interval or self._links.close_requested:
            return False
        timing.heartbeat_at = now + (timing.srtt if timing.srtt > interval else interval)
        return True

    def _control_frames(self, conn: Connection, now: float, usable: bool) -> list[Frame]:
        acks = self._acks
        # due ACKs go out at once; a pending ACK for this connection rides along
        frames = acks.take(conn, now, bool(self._streams.sendable)) if acks.pending else []
        if conn.ping_answer and conn.records_received:
            conn.ping_answer = False
            if not any(type(f) is Ack and f.connection_id == conn.id for f in frames):
                frames.append(Ack(conn.id, conn.highest_received))
        if conn.ping_pending:
            frames.append(Ping())
        if usable or conn.status is ConnectionStatus.DRAINING:
            control = self._control
            size = sum(frame_size(f) for f in frames)
            while control and size + frame_size(control[0]) <= MAX_CONTROL_BYTES:
                frame = control.popleft()
                frames.append(frame)
                size += frame_size(frame)
        return frames

    def _plan(self, conn: Connection, space: int, now: float) -> list[_Planned]:
        """The Stream frames of the next record for ``conn``, in round-robin order."""
        plan: list[_Planned] = []
        streams = self._streams
        sendable = streams.sendable
        table = streams.table
        conns = self._connections
        allows = self.scheduler.allows
        spreads = self.scheduler.spreads
        acks = self._acks
        unacked_cap = acks.cap()
        ahead = self.tuning.max_reassembly_bytes // 2
        for sid in list(sendable):
            if space < STREAM_HEADER_SIZE + (MIN_STREAM_CHUNK if plan else 0):
                break
            stream = table.get(sid)
            if stream is None:
                del sendable[sid]
                continue
            if not (spreads and stream.pin is None) and not allows(stream, conn, conns):
                continue
            room = space - STREAM_HEADER_SIZE
            retransmit = stream.send_retransmit
            base = stream.send.base
            while (
                retransmit and retransmit[0][0] + retransmit[0][1] <= base and not retransmit[0][2]
            ):
                retransmit.pop(0)  # acknowledged meanwhile on another connection
            if retransmit:
                offset, length, fin = retransmit[0]
                if offset < base:
                    length -= base - offset
                    offset = base
                n = min(length, room)
                if n < length:
                    retransmit[0] = (offset + n, length - n, fin)
                    fin = False
                else:
                    retransmit.pop(0)
            else:
                if acks.unacked_cost >= unacked_cap:
                    break  # the peer is not acknowledging: send nothing new (memory bound)
                offset = stream.send_next
                if offset - stream.acked_to >= ahead:
                    continue  # the peer could not hold more out of order (Backpressure)
                pending = stream.send.end - offset
                n = min(pending, room)
                fin = stream.fin_queued and not stream.fin_sent and n == pending
                if n == 0 and not fin:
                    del sendable[sid]
                    continue
                streams.sent(stream, offset, n, fin, now)
            plan.append((stream, offset, n, fin))
            space -= STREAM_HEADER_SIZE + n
            # round robin: move the stream to the end, or drop it when it has nothing left
            del sendable[sid]
            if stream.has_data_to_send:
                sendable[sid] = None
        return plan
