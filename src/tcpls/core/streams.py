"""Stream state: send buffers kept until acknowledged, receive reassembly by offset.

A TCPLS stream (draft-04 §4.1, DECISIONS W12) is bidirectional and identified
by a 32-bit ID: even IDs are opened by the client, odd IDs by the server. Each
direction ends with FIN; the final size is ``offset + length`` of the Stream
frame that carries FIN (W4).

:class:`SendBuffer` keeps the bytes the application wrote, from the first byte
not yet acknowledged to the last byte written. The scheduler copies from it into
records (:meth:`SendBuffer.copy_into`); an acknowledged prefix is released.
Retransmission after a failure reads the same bytes again (W10: frames, never
ciphertext, are sent again).

:class:`ReceiveBuffer` delivers bytes in order. Frames may arrive out of order
(aggregation over several connections) or twice (reinjection after failover):
data below the delivered offset is dropped, data above it waits in a heap until
the gap is filled. The session bounds the out-of-order bytes it holds (W13).
"""

from __future__ import annotations

import bisect
import heapq
from collections import deque
from collections.abc import Iterator

from tcpls.errors import IllegalParameter

__all__ = ["RETAIN_MIN", "RangeSet", "ReceiveBuffer", "SendBuffer", "Stream"]

#: Stream data of at least this many bytes is kept as a view of the decrypted record.
RETAIN_MIN = 4096


class RangeSet:
    """A set of non-overlapping half-open integer ranges ``[start, end)``, kept merged."""

    __slots__ = ("_ends", "_starts")

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []

    def add(self, start: int, end: int) -> None:
        """Add ``[start, end)``, merging with overlapping or adjacent ranges."""
        if end <= start:
            return
        starts, ends = self._starts, self._ends
        # first range whose end >= start (could merge), last range whose start <= end
        i = bisect.bisect_left(ends, start)
        j = bisect.bisect_right(starts, end)
        if i < j:
            start = min(start, starts[i])
            end = max(end, ends[j - 1])
        starts[i:j] = [start]
        ends[i:j] = [end]

    def first_end_from(self, base: int) -> int:
        """If a range contains ``base``, its end; otherwise ``base``."""
        starts = self._starts
        if starts and starts[0] <= base:
            return max(base, self._ends[0])
        return base

    def discard_below(self, offset: int) -> None:
        """Forget everything below ``offset``."""
        starts, ends = self._starts, self._ends
        i = bisect.bisect_right(ends, offset)
        del starts[:i], ends[:i]
        if starts and starts[0] < offset:
            starts[0] = offset

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(zip(self._starts, self._ends, strict=True))

    def __bool__(self) -> bool:
        return bool(self._starts)

    def __repr__(self) -> str:
        return f"RangeSet({list(self)})"


class SendBuffer:
    """Bytes written to one stream, from the first unacknowledged byte to the last written.

    Chunks are kept as written (``bytes`` are not copied), so releasing an
    acknowledged prefix costs no memmove.
    """

    __slots__ = ("_chunks", "_cursor", "_head", "base", "end")

    def __init__(self) -> None:
        self._chunks: list[memoryview] = []
        self._head = 0  # index of the first live chunk in _chunks
        self.base = 0  # stream offset of _chunks[_head][0]
        self.end = 0  # stream offset after the last written byte
        self._cursor: tuple[int, int] = (0, 0)  # (chunk index, its stream offset)

    def __len__(self) -> int:
        """Bytes held (written and not yet released)."""
        return self.end - self.base

    def append(self, data: bytes | bytearray | memoryview) -> None:
        """Add bytes at the end; mutable buffers are copied, ``bytes`` are kept by reference."""
        if not data:
            return
        chunk = memoryview(data if isinstance(data, bytes) else bytes(data))
        self._chunks.append(chunk)
        self.end += len(chunk)

    def copy_into(self, offset: int, length: int, out: memoryview) -> None:
        """Copy bytes ``[offset, offset + length)`` of the stream into ``out[:length]``."""
        if offset < self.base or offset + length > self.end:
            raise ValueError("range not held by the send buffer")
        if not length:
            return
        chunks = self._chunks
        index, chunk_offset = self._cursor
        if index < self._head or chunk_offset > offset:
            index, chunk_offset = self._head, self.base
        # walk to the chunk that holds `offset`
        while chunk_offset + len(chunks[index]) <= offset:
            chunk_offset += len(chunks[index])
            index += 1
        chunk = chunks[index]
        start = offset - chunk_offset
        if start + length < len(chunk):  # the common case: one chunk holds it all
            out[:length] = chunk[start : start + length]
            self._cursor = (index, chunk_offset)
            return
        pos = 0
        while pos < length:
            chunk = chunks[index]
            start = offset + pos - chunk_offset
            n = min(len(chunk) - start, length - pos)
            out[pos : pos + n] = chunk[start : start + n]
            pos += n
            if start + n == len(chunk):
                chunk_offset += len(chunk)
                index += 1
        self._cursor = (index, chunk_offset)

    def release(self, offset: int) -> None:
        """Drop the whole chunks that end at or below ``offset`` (acknowledged data)."""
        chunks = self._chunks
        head, base = self._head, self.base
        while head < len(chunks) and base + len(chunks[head]) <= offset:
            base += len(chunks[head])
            head += 1
        if head > 64 and head * 2 > len(chunks):
            del chunks[:head]
            index, chunk_offset = self._cursor
            self._cursor = (max(index - head, 0), chunk_offset) if index >= head else (0, base)
            head = 0
        self._head, self.base = head, base


class ReceiveBuffer:
    """In-order delivery of one stream's incoming bytes, with a reassembly heap.

    In-order data waits in a queue of chunks until the application reads it.
    A chunk of at least :data:`RETAIN_MIN` bytes is kept as the ``memoryview``
    it arrived as (a view of the decrypted record: no copy); smaller ones are
    copied so that a small frame does not pin a whole record buffer.
    :meth:`receive` reports whether it kept such a view, and the caller then
    must not reuse the record buffer.
    """

    __slots__ = ("_chunks", "_heap", "_readable", "_seq", "delivered", "final_size", "held")

    def __init__(self) -> None:
        self._chunks: deque[bytes | memoryview] = deque()  # in-order, not yet read
        self._readable = 0
        self.delivered = 0  # stream offset after the last in-order byte
        self.final_size: int | None = None
        self._heap: list[tuple[int, int, bytes | memoryview]] = []
        self._seq = 0
        self.held = 0  # out-of-order bytes held in the heap

    @property
    def readable(self) -> int:
        """In-order bytes waiting for the application."""
        return self._readable

    @property
    def at_eof(self) -> bool:
        """Whether every byte up to the final size was delivered and read."""
        return (
            self.final_size is not None
            and self.delivered == self.final_size
            and not self._readable
        )

    @property
    def complete(self) -> bool:
        """Whether every byte up to the final size was delivered (read or not)."""
        return self.final_size is not None and self.delivered == self.final_size

    def receive(self, offset: int, data: bytes | bytearray | memoryview, fin: bool) -> bool:
        """Take a Stream frame's data; return whether a view of ``data`` was kept.

        Out-of-order bytes are counted in :attr:`held`. Raises
        :class:`IllegalParameter` for data beyond the final size or a final size
        that changes.
        """
        size = len(data)
        end = offset + size
        final = self.final_size
        if fin:
            if final is not None and final != end:
                raise IllegalParameter("a stream's final size changed")
            if final is None and (end < self.delivered or self._beyond(end)):
                raise IllegalParameter("stream data beyond its final size")
            self.final_size = final = end
        elif final is not None and end > final:
            raise IllegalParameter("stream data after FIN")
        delivered = self.delivered
        if end <= delivered:
            return False  # duplicate
        if offset < delivered:
            data = data[delivered - offset :]
            size = end - delivered
            offset = delivered
        keep = size >= RETAIN_MIN and isinstance(data, memoryview)
        if isinstance(data, bytearray) or (isinstance(data, memoryview) and not keep):
            data = bytes(data)
        chunk = data
        if offset == delivered:
            self._chunks.append(chunk)
            self._readable += size
            self.delivered = end
            if self._heap:
                self._drain_heap()
        else:
            self._seq += 1
            heapq.heappush(self._heap, (offset, self._seq, chunk))
            self.held += size
        return keep

    def _beyond(self, end: int) -> bool:
        return any(off + len(d) > end for off, _, d in self._heap)

    def _drain_heap(self) -> None:
        heap = self._heap
        delivered = self.delivered
        while heap and heap[0][0] <= delivered:
            offset, _, data = heapq.heappop(heap)
            self.held -= len(data)
            end = offset + len(data)
            if end > delivered:
                tail = data[delivered - offset :]
                self._chunks.append(tail)
                self._readable += len(tail)
                delivered = end
        self.delivered = delivered

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` in-order bytes (all when ``n < 0``)."""
        chunks = self._chunks
        if not chunks:
            return b""
        if n < 0 or n >= self._readable:
            data = b"".join(chunks)
            chunks.clear()
            self._readable = 0
            return data
        parts: list[bytes | memoryview] = []
        need = n
        while need:
            chunk = chunks[0]
            if len(chunk) <= need:
                parts.append(chunks.popleft())
                need -= len(chunk)
            else:
                parts.append(chunk[:need])
                chunks[0] = chunk[need:]
                need = 0
        self._readable -= n
        return b"".join(parts)

    def find(self, separator: bytes, start: int = 0) -> int:
        """Index of ``separator`` in the readable bytes, or -1."""
        chunks = self._chunks
        if len(chunks) > 1:
            joined = b"".join(chunks)
            chunks.clear()
            chunks.append(joined)
        return bytes(chunks[0]).find(separator, start) if chunks else -1


class Stream:
    """Both directions of one stream, as the session core sees them."""

    __slots__ = (
        "acked_to",
        "fin_ack_seen",
        "fin_acked",
        "fin_queued",
        "fin_sent",
        "id",
        "local",
        "pin",
        "recv",
        "send",
        "send_acked",
        "send_next",
        "send_retransmit",
    )

    def __init__(self, stream_id: int, local: bool) -> None:
        self.id = stream_id
        self.local = local  # opened by this endpoint
        self.pin: int | None = None  # connection the scheduler keeps this stream on
        self.send = SendBuffer()
        self.send_next = 0  # first offset never sent
        self.send_acked = RangeSet()
        self.send_retransmit: list[tuple[int, int, bool]] = []  # (offset, length, fin) to resend
        self.fin_queued = False
        self.fin_sent = False
        self.fin_acked = False  # FIN and all the data before it acknowledged
        self.fin_ack_seen = False  # the record carrying FIN was acknowledged
        self.acked_to = 0  # every byte below this offset was acknowledged
        self.recv = ReceiveBuffer()

    # -- send side -----------------------------------------------------------

    @property
    def send_pending(self) -> int:
        """Bytes written by the application and never sent."""
        return self.send.end - self.send_next

    @property
    def has_data_to_send(self) -> bool:
        """Whether the scheduler has something to send for this stream."""
        return (
            self.send.end > self.send_next
            or bool(self.send_retransmit)
            or (self.fin_queued and not self.fin_sent)
        )

    @property
    def send_buffered(self) -> int:
        """Bytes held for this stream: unsent plus sent but unacknowledged."""
        return len(self.send)

    def on_acked(self, offset: int, length: int, fin: bool) -> None:
        """Bytes ``[offset, offset + length)`` (and FIN) reached the peer.

        ``fin_acked`` becomes true only when the FIN *and every byte before it*
        were acknowledged: with several connections the record carrying FIN
        can be acknowledged before earlier bytes sent elsewhere.
        """
        if length:
            acked = self.send_acked
            acked.add(offset, offset + length)
            base = self.send.base
            new_base = acked.first_end_from(base)
            if new_base > base:
                self.acked_to = max(self.acked_to, new_base)
                self.send.release(new_base)
                acked.discard_below(self.send.base)
        if fin:
            self.fin_ack_seen = True
        if self.fin_ack_seen and self.acked_to >= self.send.end:
            self.fin_acked = True

    # -- receive side ---------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Both directions finished and everything was read (W12: the stream is gone)."""
        return self.fin_acked and self.recv.at_eof
