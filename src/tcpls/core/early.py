"""Early data (0-RTT) on a session's first connection (design: Early data).

Client: the bytes the application queued on stream 0 before the handshake go out right
after the ClientHello, sealed with the early traffic keys, as TCPLS Stream frames when the
resumed session had TCPLS, as plain bytes otherwise. They are *copies*: the stream's send
state does not move. When the server accepts them, they count as sent and acknowledged;
when it declines them, the normal path sends the same bytes again under the application
keys, so they arrive exactly once either way.

Server: a server that accepts early data starts the session as soon as its flight is out,
so the application reads the early data and answers at once (RFC 8446 §4.4.4 allows data
then), a round trip before the client's Finished; the early records are read as they
come, before any later record. Each stream remembers how many of its first bytes came
early (they could be a replay: an application decides what it does with them).
"""

from __future__ import annotations

from tcpls.core.connection import Connection
from tcpls.core.streamset import StreamSet
from tcpls.errors import UnexpectedMessage
from tcpls.wire.frames import Padding, StreamFrame, parse_frames
from tcpls.wire.layout import STREAM_HEADER_SIZE, write_stream_header_into

__all__ = ["EarlyData"]

#: The stream that carries early data.
EARLY_STREAM = 0


class EarlyData:
    """What a session sent or received as early data (see the module)."""

    __slots__ = ("_streams", "sent")

    def __init__(self, streams: StreamSet) -> None:
        self._streams = streams
        #: Client: bytes of stream 0 sent as early data.
        self.sent = 0

    def send(self, conn: Connection) -> int:
        """Client, after the ClientHello: seal stream 0's queued bytes as early data."""
        tls = conn.tls
        room = tls.early.room
        stream = self._streams.table.get(EARLY_STREAM)
        if not room or stream is None:
            return 0
        tcpls = tls.early.tcpls
        overhead = STREAM_HEADER_SIZE if tcpls else 0
        view = tls.staging_buffer()
        offset, end = self.sent, stream.send.end
        while offset < end and room > overhead:
            chunk = min(end - offset, room - overhead, tls.max_record_size - overhead)
            stream.send.copy_into(offset, chunk, view)
            if tcpls:
                write_stream_header_into(view, chunk, EARLY_STREAM, offset, chunk, False)
            tls.early.seal(chunk + overhead)
            room -= chunk + overhead
            offset += chunk
        sent, self.sent = offset - self.sent, offset
        return sent

    def accepted(self, now: float) -> None:
        """Client: the server took the early data: it was sent and acknowledged."""
        stream = self._streams.table.get(EARLY_STREAM)
        if stream is None or not self.sent:
            return
        self._streams.sent(stream, 0, self.sent, False, now)
        self._streams.acked(stream, 0, self.sent, False)

    def deliver(self, conn: Connection, tcpls: bool) -> None:
        """Server: deliver the early records that arrived, in order (the session started
        when the server's flight went out, before the client's Finished)."""
        streams = self._streams
        for content in conn.tls.early.take():
            view = memoryview(content)
            if not tcpls:
                plain = streams.table[EARLY_STREAM]
                offset = plain.recv.delivered
                streams.receive(EARLY_STREAM, offset, view, False)
                plain.early_bytes = offset + len(view)
                continue
            for frame in parse_frames(view):
                if type(frame) is Padding:
                    continue
                if type(frame) is not StreamFrame:
                    raise UnexpectedMessage("early data may carry only Stream frames")
                sid, offset, data, fin = frame
                streams.receive(sid, offset, data, fin)
                stream = streams.table.get(sid)
                if stream is not None:
                    stream.early_bytes = max(stream.early_bytes, offset + len(data))
