"""The streams of a session, and the memory they hold.

Owns, for one session: the stream table, the stream IDs (ours and the peer's), which
streams have data to send, which readers and writers must be woken, and the memory
the streams hold against the limits: out-of-order bytes waiting for reassembly,
in-order bytes the application has not read, bytes written and not sent yet
(design: Streams, Receive memory, Backpressure).

Everything that creates, feeds, drains or forgets a stream goes through
:class:`StreamSet`, so that the counters always add up: the sender reports what it
took with :meth:`StreamSet.sent`, the receiver what arrived with
:meth:`StreamSet.receive`, the ACK tracker what was acknowledged with
:meth:`StreamSet.acked`.
"""

from __future__ import annotations

from collections import deque

from tcpls.config import SessionTuning
from tcpls.core.events import SessionEvent, StreamOpened
from tcpls.core.streams import Stream
from tcpls.core.trace import SessionTrace
from tcpls.errors import ConnectionClosedError, IllegalParameter, TCPLSError

__all__ = ["STREAM_COST", "StreamSet"]

#: What an open stream costs beyond its bytes: its objects here and in the I/O layer (a
#: reader, a writer, the handler's task). Measured: 14 MiB of server memory for 4,096
#: idle streams, which a peer opens with one frame (design: Server limits).
STREAM_COST = 3584

#: No streams, shared by every session (each ``frozenset()`` would be 216 bytes of its own).
_NO_STREAMS: frozenset[int] = frozenset()


class StreamSet:
    """The stream table of one session and its accounting (see the module docstring)."""

    __slots__ = (
        "_events",
        "_full",
        "_next_local",
        "_next_peer",
        "_peer_open",
        "_send_full",
        "_session_full",
        "ended_received",
        "ended_sent",
        "is_client",
        "last_sent",
        "qlog",
        "readable",
        "reassembly_held",
        "receive_buffered",
        "send_pending",
        "sendable",
        "table",
        "tuning",
        "writable",
    )

    def __init__(
        self, is_client: bool, tuning: SessionTuning, events: deque[SessionEvent]
    ) -> None:
        self.is_client = is_client
        self.tuning = tuning
        self._events = events
        #: The streams by ID.
        self.table: dict[int, Stream] = {}
        #: Stream IDs whose readers may have something new (data, EOF or an error).
        self.readable: set[int] = set()
        #: Stream IDs whose writers may go on (send buffer below half, FIN acknowledged).
        self.writable: set[int] = set()
        #: Streams with something to send, in round-robin order (a dict used as a set).
        self.sendable: dict[int, None] = {}
        #: Streams holding more unread data than ``stream_receive_buffer`` (replaced, not
        #: updated: rarely non-empty, it shares the empty set; design: Idle memory).
        self._full = _NO_STREAMS
        self._next_local = 0 if is_client else 1
        self._next_peer = 1 if is_client else 0
        #: Streams the peer opened that are not gone yet.
        self._peer_open = 0
        #: Memory of the out-of-order stream data held for reassembly, all streams.
        self.reassembly_held = 0
        #: Memory of the in-order stream data the application has not read, all streams.
        self.receive_buffered = 0
        #: Bytes the application wrote on all streams that never left yet.
        self.send_pending = 0
        #: When bytes written by the application last left (idleness).
        self.last_sent = 0.0
        self._send_full = False
        self._session_full = False
        #: Bytes sent and received on the streams already gone (for statistics).
        self.ended_sent = self.ended_received = 0
        self.qlog: SessionTrace | None = None  #: Life-cycle hooks (design: qlog).

    # ------------------------------------------------------------------ opening

    def open_local(self) -> int:
        """Open a stream of ours; returns its ID (even for a client, odd for a server)."""
        sid = self._next_local
        if sid >= 1 << 32:
            raise TCPLSError("stream IDs exhausted")
        self._next_local += 2
        self.table[sid] = Stream(sid, local=True)
        if self.qlog is not None:
            self.qlog.stream_opened(sid)
        return sid

    def use_plain_tls(self) -> None:
        """Plain TLS fallback: exactly one stream, 0, and no other (design: Fallback).

        A stream 0 that exists already (a client queued early data on it) is kept."""
        if 0 not in self.table:
            self.table[0] = Stream(0, local=True)
        self._next_local = self._next_peer = 2

    def require(self, stream_id: int) -> Stream:
        """The stream, or :class:`ConnectionClosedError` if it is gone."""
        stream = self.table.get(stream_id)
        if stream is None:
            raise ConnectionClosedError(f"stream {stream_id} is closed")
        return stream

    def _peer_stream(self, sid: int) -> Stream | None:
        """The stream a frame for the unknown ``sid`` refers to: opened now (with the
        lower IDs of the peer), or ``None`` if it is already gone (design: Streams)."""
        local_parity = 0 if self.is_client else 1
        if sid & 1 == local_parity:
            if sid >= self._next_local:
                raise IllegalParameter(f"Stream frame for stream {sid}, which we never opened")
            return None
        first = self._next_peer
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
            self.table[new_id] = stream
            self._events.append(StreamOpened(new_id))
        self._peer_open += opening
        self._next_peer = sid + 2
        return stream

    # ------------------------------------------------------------------ sending

    def queue(self, stream_id: int, data: bytes | bytearray | memoryview) -> None:
        """The application wrote ``data`` on a stream."""
        stream = self.require(stream_id)
        if stream.fin_queued:
            raise ConnectionClosedError(f"stream {stream_id} was closed for writing")
        if data:
            stream.send.append(data)
            self.send_pending += len(data)
            self.sendable[stream_id] = None

    def queue_eof(self, stream_id: int) -> None:
        """The application ended its direction of a stream (FIN after the queued bytes)."""
        stream = self.require(stream_id)
        if not stream.fin_queued:
            stream.fin_queued = True
            self.sendable[stream_id] = None

    def sent(self, stream: Stream, offset: int, n: int, fin: bool, now: float) -> None:
        """``n`` new bytes of ``stream`` from ``offset`` (and its FIN, if ``fin``) left.

        Every record-filling path reports here, so that a writer waiting for its
        buffer to go below half wakes whichever path sent (design: Backpressure).
        """
        pending = stream.send.end - offset
        stream.send_next = offset + n
        if fin:
            stream.fin_sent = True
        self.last_sent = now  # stream data moves: the session is not idle
        if n:
            if pending > self.tuning.stream_send_buffer // 2 >= pending - n:
                self.writable.add(stream.id)  # drain() may return
            self.send_pending -= n
            if self._send_full and self.send_pending <= self.tuning.session_send_buffer // 2:
                self._send_full = False
                self.wake_writers()  # every drain() may return

    def done_sending(self, stream: Stream) -> None:
        """``stream`` has nothing left to send: take it off the round robin."""
        self.sendable.pop(stream.id, None)

    def acked(self, stream: Stream, offset: int, length: int, fin: bool) -> None:
        """The peer acknowledged ``[offset, offset + length)`` of ``stream`` (and its FIN)."""
        fin_acked = stream.fin_acked
        stream.on_acked(offset, length, fin)
        # The ACK that completes the FIN need not carry it: with several connections
        # the FIN's record can be acknowledged before earlier bytes sent elsewhere.
        if stream.fin_acked and not fin_acked:
            self.writable.add(stream.id)  # wait_closed() returns
        if stream.closed:
            self.forget(stream)

    def resend(self, stream_id: int, offset: int, length: int, fin: bool) -> None:
        """A range of a stream went out on a connection that failed: send it again."""
        stream = self.table.get(stream_id)
        if stream is not None and not stream.fin_acked:
            stream.send_retransmit.append((offset, length, fin))
            self.sendable[stream_id] = None

    def sort_resends(self) -> None:
        """Ranges to send again go out in offset order."""
        for stream in self.table.values():
            if stream.send_retransmit:
                stream.send_retransmit.sort()

    @property
    def send_blocked(self) -> bool:
        """Whether the streams together hold more unsent bytes than ``session_send_buffer``
        (``drain()`` then waits, whatever its own stream holds, until half of it left)."""
        if self.send_pending > self.tuning.session_send_buffer:
            self._send_full = True
        return self._send_full

    def has_data_to_send(self) -> bool:
        """Whether any stream has bytes or a FIN that did not leave yet."""
        return any(stream.has_data_to_send for stream in self.table.values())

    def holds_unacknowledged(self) -> bool:
        """Whether any stream keeps bytes sent and not acknowledged yet."""
        return any(stream.send_buffered for stream in self.table.values())

    # ---------------------------------------------------------------- receiving

    def receive(
        self, sid: int, offset: int, data: bytes | bytearray | memoryview, fin: bool
    ) -> bool:
        """Stream data arrived; returns whether a view of ``data`` is kept (zero copy)."""
        stream = self.table.get(sid)
        if stream is None:
            stream = self._peer_stream(sid)
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
            if recv.buffered > self.tuning.stream_receive_buffer and sid not in self._full:
                self._full |= {sid}
        if recv.readable or recv.complete:
            self.readable.add(sid)
        return kept

    def read(self, stream_id: int, n: int = -1) -> bytes:
        """Up to ``n`` bytes that arrived in order on a stream (``-1``: all)."""
        stream = self.table.get(stream_id)
        if stream is None:
            return b""
        recv = stream.recv
        before = recv.buffered
        data = recv.read(n)
        self.receive_buffered -= before - recv.buffered
        if stream_id in self._full and recv.buffered <= self.tuning.stream_receive_buffer // 2:
            self._full -= {stream_id}
        if stream.closed:
            self.forget(stream)
        return data

    @property
    def reading_paused(self) -> bool:
        """Whether received data waits for the application (design: Backpressure).

        True while one stream holds more unread data than ``stream_receive_buffer``, or
        all streams together more than ``session_receive_buffer`` (counted in real
        memory), until the application has read half of it.
        """
        budget = self.tuning.session_receive_buffer
        if self._session_full:
            self._session_full = self.receive_buffered > budget // 2
        elif self.receive_buffered > budget:
            self._session_full = True
        return self._session_full or bool(self._full)

    def peer_finished(self, complete: bool) -> None:
        """The peer closed the session: every reader reaches its end.

        With ``complete``, a stream the peer never ended ends where its data stopped;
        otherwise (data may be missing) it stays incomplete and its reader gets an
        error.
        """
        for stream in self.table.values():
            recv = stream.recv
            if recv.final_size is None and complete:
                recv.final_size = recv.delivered
            self.readable.add(stream.id)
            self.writable.add(stream.id)

    # ------------------------------------------------------------------ the end

    def forget(self, stream: Stream) -> None:
        """Both directions of ``stream`` ended and were read: it is gone (design: Streams)."""
        if self.table.pop(stream.id, None) is None:
            return
        self.readable.add(stream.id)  # (the I/O layer then lets go of its reader and writer)
        self.sendable.pop(stream.id, None)
        if stream.id in self._full:
            self._full -= {stream.id}
        recv = stream.recv
        self.receive_buffered -= recv.buffered
        self.reassembly_held -= recv.held
        self.send_pending -= stream.send_pending
        if not stream.local:
            self._peer_open -= 1
        self.ended_sent += stream.send_next
        self.ended_received += recv.delivered
        if self.qlog is not None:
            self.qlog.stream_closed(stream.id, stream.send_next, recv.delivered)

    def unpin_all(self) -> None:
        """Every stream may use any connection again."""
        for stream in self.table.values():
            stream.pin = None

    def wake_writers(self) -> None:
        """Every writer waiting on a stream may go on."""
        self.writable.update(self.table)

    def release(self) -> None:
        """The session ended: keep only what arrived in order (design: Ownership)."""
        for stream in self.table.values():
            self.readable.add(stream.id)
            self.writable.add(stream.id)
            stream.recv.release()
            stream.release_send()
        self.reassembly_held = 0
        self.send_pending = 0
        self.sendable.clear()

    @property
    def memory(self) -> int:
        """What the streams hold: unread, out-of-order and unsent bytes, and each open
        stream's own objects (:data:`STREAM_COST`)."""
        return (
            self.receive_buffered
            + self.reassembly_held
            + self.send_pending
            + len(self.table) * STREAM_COST
        )
