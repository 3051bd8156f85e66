"""Stream state: send buffers kept until acknowledged, receive reassembly by offset.

A TCPLS stream (draft-04 §4.1, design: Streams) is bidirectional and identified
by a 32-bit ID: even IDs are opened by the client, odd IDs by the server. Each
direction ends with FIN; the final size is ``offset + length`` of the Stream
frame that carries FIN (design: Stream frames).

:class:`SendBuffer` keeps the bytes the application wrote, from the first byte
not yet acknowledged to the last byte written. The scheduler copies from it into
records (:meth:`SendBuffer.copy_into`); an acknowledged prefix is released.
Retransmission after a failure reads the same bytes again (design: Retransmission; frames, never
ciphertext, are sent again).

:class:`ReceiveBuffer` delivers bytes in order. Frames may arrive out of order
(aggregation over several connections) or twice (reinjection after failover):
data below the delivered offset is dropped, data above it waits in a heap until
the gap is filled. The session bounds the out-of-order bytes it holds (design: Backpressure).
"""

from __future__ import annotations

import bisect
import heapq
from collections import deque
from collections.abc import Iterator

from tcpls.errors import DecodeError, IllegalParameter

__all__ = [
    "MAX_STREAM_OFFSET",
    "RETAIN_MIN",
    "RangeSet",
    "ReceiveBuffer",
    "SendBuffer",
    "Stream",
    "chunk_cost",
]

#: Stream data of at least this many bytes is kept as a view of the decrypted record.
#: More than half a record: a record buffer is pinned by at most one such view, and
#: the view is charged the whole buffer (see :func:`chunk_cost`).
RETAIN_MIN = 8192
#: Largest stream offset plus one: a frame may not end beyond 2^64 - 1 (offsets are 64-bit).
MAX_STREAM_OFFSET = (1 << 64) - 1
#: What holding one chunk costs beyond its bytes: the object header, the queue slot.
CHUNK_OVERHEAD = 64
#: Writes smaller than this join the last chunk of the send buffer while it stays this
#: small (see :meth:`SendBuffer.append`).
SMALL_CHUNK = 1024
#: What a view of a record buffer costs beyond the buffer (a ``memoryview`` object).
VIEW_OVERHEAD = 192
#: The extra cost of an out-of-order chunk: its heap entry (tuple, offset, sequence).
HELD_OVERHEAD = 128


def chunk_cost(chunk: bytes | memoryview) -> int:
    """The memory one received chunk really holds (design: Receive memory).

    A copied chunk costs its bytes plus :data:`CHUNK_OVERHEAD`; a view costs the whole
    record buffer it pins plus :data:`VIEW_OVERHEAD`.
    """
    if type(chunk) is memoryview:
        owner = chunk.obj
        return (len(owner) if type(owner) is bytearray else chunk.nbytes) + VIEW_OVERHEAD
    return len(chunk) + CHUNK_OVERHEAD


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

    def gaps(self, start: int, end: int) -> list[tuple[int, int]]:
        """The parts of ``[start, end)`` that no range covers, in order."""
        starts, ends = self._starts, self._ends
        i = bisect.bisect_right(ends, start)
        out: list[tuple[int, int]] = []
        pos = start
        while i < len(starts) and starts[i] < end:
            if starts[i] > pos:
                out.append((pos, starts[i]))
            pos = max(pos, ends[i])
            i += 1
        if pos < end:
            out.append((pos, end))
        return out

    @property
    def total(self) -> int:
        """How many integers the ranges cover."""
        return sum(self._ends) - sum(self._starts)

    @property
    def end(self) -> int:
        """The end of the last range (0 when empty)."""
        return self._ends[-1] if self._ends else 0

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
        """Add bytes at the end; mutable buffers are copied, ``bytes`` are kept by reference.

        A small write joins a small last chunk (one copy of at most :data:`SMALL_CHUNK`
        bytes): a chunk costs more than 200 bytes of objects, and a peer whose echo writes
        one byte at a time must not make each byte cost that (design: Backpressure).
        """
        if not data:
            return
        chunks = self._chunks
        n = len(data)
        if n < SMALL_CHUNK and len(chunks) > self._head:
            last = chunks[-1]
            if len(last) + n <= SMALL_CHUNK:
                # same place and offsets, more bytes: the sent ranges hold; a cursor past
                # the end (the last chunk was all copied) comes back to it
                chunks[-1] = memoryview(bytes(last) + bytes(data))
                if self._cursor[0] >= len(chunks):
                    self._cursor = (len(chunks) - 1, self.end - len(last))
                self.end += n
                return
        chunk = memoryview(data if isinstance(data, bytes) else bytes(data))
        chunks.append(chunk)
        self.end += n

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

    def clear(self) -> None:
        """Drop every byte held (the session ended); the offsets stay."""
        self._chunks = []
        self._head = 0
        self.base = self.end
        self._cursor = (0, self.end)

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

    In-order data waits in a queue of chunks until the application reads it;
    data above the delivered offset waits in a heap of non-overlapping chunks
    until the gap below it is filled. A chunk of at least :data:`RETAIN_MIN`
    bytes is kept as the ``memoryview`` it arrived as (a view of the decrypted
    record: no copy); smaller ones are copied so that a small frame does not pin
    a whole record buffer. :meth:`receive` reports whether it kept such a view,
    and the caller then must not reuse the record buffer.

    Memory is counted as it really is (design: Receive memory):
    a kept view costs its whole record buffer, and every chunk costs a fixed
    overhead for the Python objects that hold it. :attr:`buffered` is the cost
    of the in-order bytes the application has not read, :attr:`held` the cost of
    the out-of-order chunks. Duplicates are dropped: only the parts of a chunk
    that nothing held covers yet are stored, and a zero-length frame without FIN
    stores nothing.
    """

    __slots__ = (
        "_chunks",
        "_heap",
        "_ranges",
        "_readable",
        "_seq",
        "buffered",
        "delivered",
        "final_size",
        "held",
    )

    def __init__(self) -> None:
        self._chunks: deque[bytes | memoryview] = deque()  # in-order, not yet read
        self._readable = 0
        self.delivered = 0  # stream offset after the last in-order byte
        self.final_size: int | None = None
        self._heap: list[tuple[int, int, bytes | memoryview]] = []
        self._ranges = RangeSet()  # the stream ranges the heap holds
        self._seq = 0
        self.buffered = 0  # memory of the in-order chunks not yet read
        self.held = 0  # memory of the out-of-order chunks in the heap

    @property
    def readable(self) -> int:
        """In-order bytes waiting for the application."""
        return self._readable

    @property
    def memory(self) -> int:
        """What the chunks held by this buffer cost in memory, in bytes."""
        return self.buffered + self.held

    @property
    def held_bytes(self) -> int:
        """Stream bytes held out of order (their count, not their memory)."""
        return self._ranges.total

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

        Raises :class:`DecodeError` when the frame ends beyond 2^64 - 1 and
        :class:`IllegalParameter` for data beyond the final size or a final size
        that changes.
        """
        size = len(data)
        end = offset + size
        if end > MAX_STREAM_OFFSET:
            raise DecodeError("a Stream frame ends beyond the largest stream offset (2^64 - 1)")
        final = self.final_size
        if fin:
            if final is not None and final != end:
                raise IllegalParameter("a stream's final size changed")
            if final is None and (end < self.delivered or self._ranges.end > end):
                raise IllegalParameter("stream data beyond its final size")
            self.final_size = final = end
        elif final is not None and end > final:
            raise IllegalParameter("stream data after FIN")
        delivered = self.delivered
        if end <= delivered:
            return False  # a duplicate, or a zero-length frame: nothing to store
        if offset < delivered:
            data = data[delivered - offset :]
            size = end - delivered
            offset = delivered
        if offset == delivered:
            # chunk_cost() inlined: this is the data path
            if size >= RETAIN_MIN and type(data) is memoryview:
                keep = True
                self._chunks.append(data)
                owner = data.obj
                self.buffered += (
                    len(owner) if type(owner) is bytearray else data.nbytes
                ) + VIEW_OVERHEAD
            else:
                keep = False
                self._chunks.append(bytes(data))
                self.buffered += size + CHUNK_OVERHEAD
            self._readable += size
            self.delivered = end
            if self._heap:
                self._drain_heap()
            return keep
        return self._hold(offset, end, data)

    def _hold(self, offset: int, end: int, data: bytes | bytearray | memoryview) -> bool:
        """Keep the parts of an out-of-order chunk that the heap does not hold yet."""
        gaps = self._ranges.gaps(offset, end)
        if not gaps:
            return False  # everything is held already
        keep = False
        for start, stop in gaps:
            piece = data[start - offset : stop - offset]
            if len(gaps) == 1 and stop - start >= RETAIN_MIN and isinstance(piece, memoryview):
                keep = True
            else:
                piece = bytes(piece)
            self._seq += 1
            heapq.heappush(self._heap, (start, self._seq, piece))
            self.held += chunk_cost(piece) + HELD_OVERHEAD
        self._ranges.add(offset, end)
        return keep

    def _drain_heap(self) -> None:
        heap = self._heap
        delivered = self.delivered
        while heap and heap[0][0] <= delivered:
            offset, _, data = heapq.heappop(heap)
            self.held -= chunk_cost(data) + HELD_OVERHEAD
            end = offset + len(data)
            if end > delivered:
                if offset < delivered:
                    data = data[delivered - offset :]
                self._chunks.append(data)
                self.buffered += chunk_cost(data)
                self._readable += end - delivered
                delivered = end
        self.delivered = delivered
        self._ranges.discard_below(delivered)

    def release(self) -> None:
        """Drop the out-of-order chunks (the stream can no longer be completed)."""
        self._heap.clear()
        self._ranges = RangeSet()
        self.held = 0

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` in-order bytes (all when ``n < 0``)."""
        chunks = self._chunks
        if not chunks:
            return b""
        if n < 0 or n >= self._readable:
            data = b"".join(chunks)
            chunks.clear()
            self._readable = 0
            self.buffered = 0
            return data
        parts: list[bytes | memoryview] = []
        need = n
        released = 0
        while need:
            chunk = chunks[0]
            size = len(chunk)
            if size <= need:
                parts.append(chunks.popleft())
                if type(chunk) is memoryview:  # chunk_cost() inlined: the data path
                    owner = chunk.obj
                    released += (
                        len(owner) if type(owner) is bytearray else chunk.nbytes
                    ) + VIEW_OVERHEAD
                else:
                    released += size + CHUNK_OVERHEAD
                need -= size
            else:
                parts.append(chunk[:need])
                rest = chunk[need:]
                chunks[0] = rest
                released += chunk_cost(chunk) - chunk_cost(rest)
                need = 0
        self._readable -= n
        self.buffered -= released
        return b"".join(parts)

    def find(self, separator: bytes, start: int = 0) -> int:
        """Index of ``separator`` in the readable bytes, or -1."""
        chunks = self._chunks
        if len(chunks) > 1:
            joined = b"".join(chunks)
            chunks.clear()
            chunks.append(joined)
            self.buffered = chunk_cost(joined)
        return bytes(chunks[0]).find(separator, start) if chunks else -1


class Stream:
    """Both directions of one stream, as the session core sees them."""

    __slots__ = (
        "acked_to",
        "early_bytes",
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
        #: Receiver: the first bytes of the stream that arrived as early data (0-RTT).
        self.early_bytes = 0

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
        base = self.send.base
        if length and offset + length > base:
            # (a range below the base was acknowledged twice, as a suspect connection's
            # data sent again may be: adding it would hide the range at the base)
            acked = self.send_acked
            acked.add(max(offset, base), offset + length)
            new_base = acked.first_end_from(base)
            if new_base > base:
                self.acked_to = max(self.acked_to, new_base)
                self.send.release(new_base)
                acked.discard_below(self.send.base)
        if fin:
            self.fin_ack_seen = True
        if self.fin_ack_seen and self.acked_to >= self.send.end:
            self.fin_acked = True

    def release_send(self) -> None:
        """Forget what was to be sent or sent again (the session ended)."""
        self.send.clear()
        self.send_next = self.send.end
        self.send_retransmit.clear()

    # -- receive side ---------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Both directions finished and everything was read: the stream is gone.

        (design: Streams)
        """
        return self.fin_acked and self.recv.at_eof
