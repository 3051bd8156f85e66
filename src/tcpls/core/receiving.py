"""Incoming records of a TCPLS session: frames dispatched to streams, ACKs, tokens.

Part of :class:`tcpls.core.session.Session` (a mixin, split out by concern).
Each decrypted application record of a connection comes here: the data path's
records (``[Stream]`` or ``[Stream][ACK]``, design: Records) take a fast path; any other
record is parsed from its end by :func:`tcpls.wire.frames.parse_frames` and
its frames applied in wire order. Stream data goes to the stream's
reassembly buffer, possibly as a view of the record (zero copy); ACKs trim the
retransmission log (design: Retransmission) and release acknowledged stream bytes.
"""

from __future__ import annotations

import struct

from tcpls.core.connection import Connection, ConnectionStatus
from tcpls.core.events import StreamOpened, TokenReceived
from tcpls.core.state import SessionBase
from tcpls.core.streams import Stream
from tcpls.errors import ConnectionClosedError, IllegalParameter, UnexpectedMessage
from tcpls.wire.frames import (
    ACK_SIZE,
    STREAM_HEADER_SIZE,
    Ack,
    ConnectionReset,
    FrameType,
    NewAddress,
    NewToken,
    Padding,
    Ping,
    RemoveAddress,
    StreamChange,
    StreamFrame,
    parse_frames,
)

__all__ = ["ReceivingMixin"]

_STREAM_HEADER = struct.Struct(">HQIB")  # Length, Offset, Stream ID, Type (design: Frame layout)
_ACK = struct.Struct(">QIB")  # Highest Record Sequence, Connection ID, Type


class ReceivingMixin(SessionBase):
    """What a session does with the records it receives."""

    def _on_plain_data(self, data: memoryview) -> bool:
        self.connections[0].records_received += 1
        stream = self.streams[0]
        return self._on_stream_data(0, stream.recv.delivered, data, False)

    def _on_record(self, conn: Connection, content: memoryview) -> bool:
        """Process one decrypted record; return whether a view of ``content`` was kept."""
        conn.records_received += 1
        size = len(content)
        if (
            size == ACK_SIZE
            and content[ACK_SIZE - 1] == FrameType.ACK
            and conn.expected_stream_change is None
        ):
            # a lone ACK (the receiver of a bulk transfer sends nothing else)
            highest, ack_conn, _ = _ACK.unpack_from(content)
            self._on_ack(Ack(ack_conn, highest))
            return False
        if conn.expected_stream_change is None and size >= STREAM_HEADER_SIZE:
            # Fast path for the data path's records: [Stream] or [Stream][ACK] (design: Records).
            end = size
            kind = content[end - 1]
            ack: tuple[int, int] | None = None
            if kind == FrameType.ACK and size >= STREAM_HEADER_SIZE + ACK_SIZE:
                highest, ack_conn, _ = _ACK.unpack_from(content, end - ACK_SIZE)
                ack = (ack_conn, highest)
                end -= ACK_SIZE
                kind = content[end - 1]
            if kind == FrameType.STREAM or kind == FrameType.STREAM_FIN:
                length, offset, sid, _ = _STREAM_HEADER.unpack_from(
                    content, end - STREAM_HEADER_SIZE
                )
                if length == end - STREAM_HEADER_SIZE:
                    kept = self._on_stream_data(
                        sid, offset, content[:length], kind == FrameType.STREAM_FIN
                    )
                    if ack is not None:
                        self._on_ack(Ack(*ack))
                    conn.last_data = self.now
                    self._ack_eliciting(conn, size)
                    return kept
        return self._on_frames(conn, content)

    def _on_frames(self, conn: Connection, content: memoryview) -> bool:
        expected = conn.expected_stream_change
        conn.expected_stream_change = None
        eliciting = False
        kept = False
        for frame in parse_frames(content):
            kind = type(frame)
            if kind is StreamFrame:
                sid, offset, data, fin = frame  # type: ignore[misc]
                if expected is not None:
                    if (sid, offset) != expected:
                        raise UnexpectedMessage("a Stream Change does not match the next record")
                    expected = None
                kept |= self._on_stream_data(sid, offset, data, fin)
                conn.last_data = self.now
                eliciting = True
            elif kind is Ack:
                self._on_ack(frame)  # type: ignore[arg-type]
            elif kind is Padding:
                pass
            elif kind is Ping:
                eliciting = True
                conn.ack_now = True
                # the answer must also travel on the probed connection: sent on
                # another one, it would not show that this one works (design: Failure detection)
                conn.ping_answer = True
            elif kind is NewToken:
                self._on_new_token(frame)  # type: ignore[arg-type]
                eliciting = True
            elif kind is ConnectionReset:
                eliciting = True
                self._on_connection_reset(frame.connection_id)  # type: ignore[union-attr]
            elif kind is NewAddress:
                eliciting = True
                self._on_new_address(frame)  # type: ignore[arg-type]
            elif kind is RemoveAddress:
                eliciting = True
                self._on_remove_address(frame.address_id)  # type: ignore[union-attr]
            elif kind is StreamChange:
                eliciting = True
                # it announces the first Stream frame of the next record on this
                # connection (design: Stream Change and Padding)
                conn.expected_stream_change = (frame.stream_id, frame.offset)  # type: ignore[union-attr]
        if expected is not None:
            raise UnexpectedMessage(
                "the record after a Stream Change carries no such Stream frame"
            )
        if eliciting:
            self._ack_eliciting(conn, len(content))
        return kept

    def _ack_eliciting(self, conn: Connection, size: int) -> None:
        """An ack-eliciting record arrived on ``conn``: schedule its ACK (design: ACK policy)."""
        if not self.reliable:
            return
        conn.ack_pending_records += 1
        self._acks_pending[conn] = None
        conn.ack_pending_bytes += size
        tuning = self.tuning
        if (
            conn.ack_pending_records >= tuning.ack_records
            or conn.ack_pending_bytes >= tuning.ack_bytes
        ):
            conn.ack_now = True
        elif conn.ack_deadline is None:
            conn.ack_deadline = self.now + tuning.ack_delay

    def _on_stream_data(
        self, sid: int, offset: int, data: bytes | bytearray | memoryview, fin: bool
    ) -> bool:
        stream = self.streams.get(sid)
        if stream is None:
            stream = self._stream_for_frame(sid)
            if stream is None:
                return False  # a stream already closed: a duplicate after reinjection
        recv = stream.recv
        held, buffered = recv.held, recv.buffered
        kept = recv.receive(offset, data, fin)
        if recv.held != held:
            self.reassembly_held += recv.held - held
            if self.reassembly_held > self.tuning.max_reassembly_bytes:
                raise IllegalParameter(
                    f"the peer sent more out-of-order stream data than the "
                    f"{self.tuning.max_reassembly_bytes}-byte reassembly limit allows"
                )
        if recv.buffered != buffered:
            self.receive_buffered += recv.buffered - buffered
            if recv.buffered > self.tuning.stream_receive_buffer:
                self._full_streams.add(sid)
        if recv.readable or recv.complete:
            self.readable.add(sid)
        return kept

    def _stream_for_frame(self, sid: int) -> Stream | None:
        local_parity = 0 if self.is_client else 1
        if sid & 1 == local_parity:
            if sid >= self._next_stream_id:
                raise IllegalParameter(f"Stream frame for stream {sid}, which we never opened")
            return None
        first = self._peer_next_stream_id
        if sid < first:
            return None
        tuning = self.tuning
        opening = (sid - first) // 2 + 1
        if self._peer_open + opening > tuning.max_open_streams:
            raise IllegalParameter(
                f"the peer would have {self._peer_open + opening} streams open; "
                f"the limit is {tuning.max_open_streams}"
            )
        if sid // 2 + 1 > tuning.max_total_streams:
            raise IllegalParameter(
                f"the peer opened more than {tuning.max_total_streams} streams in this session"
            )
        stream = None
        for new_id in range(first, sid + 1, 2):
            stream = Stream(new_id, local=False)
            self.streams[new_id] = stream
            self._events.append(StreamOpened(new_id))
        self._peer_open += opening
        self._peer_next_stream_id = sid + 2
        return stream

    def _on_ack(self, ack: Ack) -> None:
        conn = self.connections.get(ack.connection_id)
        if conn is None:
            return  # a connection already removed
        sent = conn.tls.write_protection
        if sent is None or ack.highest_sequence >= sent.sequence:
            raise IllegalParameter(
                f"ACK for record {ack.highest_sequence} of connection {ack.connection_id}, "
                "which was never sent"
            )
        self._acknowledge(conn, ack.highest_sequence)

    def _acknowledge(self, conn: Connection, highest: int) -> None:
        if highest <= conn.peer_acked:
            return
        conn.peer_acked = highest
        log = conn.sent_log
        # coalesce contiguous ranges per stream: one on_acked call per run
        runs: dict[int, list[int]] = {}
        acked_bytes = 0
        while log and log[0][0] <= highest:
            _, refs, _ = log.popleft()
            for sid, offset, length, fin in refs:
                acked_bytes += length
                run = runs.get(sid)
                if run is not None and run[1] == offset:
                    run[1] = offset + length
                    run[2] |= fin
                    continue
                if run is not None:
                    self._range_acked(sid, run)
                runs[sid] = [offset, offset + length, fin]
        self.unacked_bytes -= acked_bytes
        for sid, run in runs.items():
            self._range_acked(sid, run)

    def _range_acked(self, sid: int, run: list[int]) -> None:
        stream = self.streams.get(sid)
        if stream is not None:
            start, end, fin = run
            self._stream_acked(stream, start, end - start, bool(fin))

    def _stream_acked(self, stream: Stream, offset: int, length: int, fin: bool) -> None:
        fin_acked = stream.fin_acked
        stream.on_acked(offset, length, fin)
        # The ACK that completes the FIN need not carry it: with several connections
        # the FIN's record can be acknowledged before earlier bytes sent elsewhere.
        if stream.fin_acked and not fin_acked:
            self.writable.add(stream.id)  # wait_closed() returns
        if stream.closed:
            self._forget_stream(stream)

    def _forget_stream(self, stream: Stream) -> None:
        if self.streams.pop(stream.id, None) is None:
            return
        self._sendable.pop(stream.id, None)
        self._full_streams.discard(stream.id)
        recv = stream.recv
        self.receive_buffered -= recv.buffered
        self.reassembly_held -= recv.held
        self.send_pending_total -= stream.send_pending
        if not stream.local:
            self._peer_open -= 1

    def _on_new_token(self, frame: NewToken) -> None:
        if not self.is_client:
            raise UnexpectedMessage("a client sent a New Token frame")
        if frame.sequence == 0:
            raise IllegalParameter("token sequence 0 is the initial connection")
        seq = frame.sequence
        if seq not in self._used_connection_ids and seq not in self.connections:
            if frame.sequence not in self.tokens:
                self._events.append(TokenReceived(frame.sequence))
            self.tokens[frame.sequence] = bytes(frame.token)

    def _on_connection_reset(self, connection_id: int) -> None:
        conn = self.connections.get(connection_id)
        if conn is None:
            if connection_id in self._outstanding_tokens and self._registry is not None:
                # a join with that token never reached us: revoke it, hand out another
                self._registry.revoke_sequence(self, connection_id)
                self._outstanding_tokens.discard(connection_id)
                self._replenish_tokens()
            return
        if conn.status not in (
            ConnectionStatus.FAILED,
            ConnectionStatus.CLOSED,
        ):
            self._connection_failed(
                conn,
                ConnectionClosedError(f"the peer reset connection {connection_id}"),
                tell_peer=False,
            )

    def _on_new_address(self, frame: NewAddress) -> None:
        aid = frame.address_id
        if aid in self._removed_addresses or aid in self.peer_addresses:
            return  # MUST ignore (draft-04 §5.2.7)
        self.peer_addresses[aid] = (str(frame.address), frame.port)

    def _on_remove_address(self, address_id: int) -> None:
        # Remembered even when unknown: a New Address sent earlier can arrive later
        # (reinjected on another connection) and must not bring the address back.
        self._removed_addresses.add(address_id)
        entry = self.peer_addresses.pop(address_id, None)
        if entry is None:
            return
        self.withdrawn_addresses.add(entry)
        host, port = entry
        for conn in list(self.connections.values()):
            remote = conn.remote_address
            if remote is not None and remote[0] == host and remote[1] == port:
                self.remove_connection(conn.id)
