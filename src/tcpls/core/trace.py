"""The optional hooks through which a session reports what it does (qlog, the session log).

The parts that report hold a ``qlog`` attribute, ``None`` by default, and call it only
after testing it: a session that nobody traces pays one attribute test per hook, and
nothing inside the loops of the data path (the hooks sit one level above them).
:meth:`tcpls.core.session.CoreSession.trace` sets the attributes; :mod:`tcpls.qlog`
implements the hooks.

Two kinds of hooks:

* :class:`SessionTrace`, the life cycle: the session's events as they are taken, a
  connection that failed (before what it carried is sent again), streams opened and
  forgotten. The links, the stream set and the session facade hold it.
* :class:`RecordTrace`, every record: sent (by the sender, from each of its filling
  paths) and received (the receiver hands its record handler to :meth:`RecordTrace.receiving`
  once per batch of records). The sender and the receiver hold it, and only when records
  are traced.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from tcpls.core.connection import Connection, StreamRef
from tcpls.core.events import SessionEvent
from tcpls.errors import TCPLSError
from tcpls.wire.frames import Frame

__all__ = ["RecordHandler", "RecordTrace", "SessionTrace"]

#: What the receiver calls for each decrypted record of a connection (returns whether a
#: view of the record was kept).
RecordHandler = Callable[[Connection, memoryview], bool]


class SessionTrace(Protocol):
    """Life-cycle hooks (see the module docstring)."""

    def event(self, event: SessionEvent) -> None:
        """The I/O layer took ``event`` from the session."""
        ...

    def connection_failed(self, conn: Connection, error: TCPLSError, tell_peer: bool) -> None:
        """``conn`` failed; what it carried unacknowledged (``conn.sent_log``) is about to be
        sent again, and with ``tell_peer`` a Connection Reset to be queued (without it, the
        peer reset the connection)."""
        ...

    def connection_suspect(self, conn: Connection, resent: int) -> None:
        """A probe timeout of ``conn`` expired (``conn.timing``: the estimate, the backoff):
        it is suspect, and ``resent`` stream bytes went out again elsewhere (design:
        Failure detection)."""
        ...

    def stream_opened(self, stream_id: int) -> None:
        """We opened stream ``stream_id`` (the peer's come as events)."""
        ...

    def stream_closed(self, stream_id: int, sent: int, received: int) -> None:
        """Stream ``stream_id`` is gone, after ``sent`` and ``received`` bytes."""
        ...


class RecordTrace(Protocol):
    """Per-record hooks (see the module docstring)."""

    def record_sent(
        self,
        conn: Connection,
        seq: int,
        size: int,
        refs: Sequence[StreamRef],
        control: list[Frame],
    ) -> None:
        """A record of ``size`` bytes of frames left on ``conn``: these stream ranges, then
        these control frames (ACKs included)."""
        ...

    def stream_records_sent(
        self, conn: Connection, stream_id: int, start: int, end: int, room: int, fin: bool
    ) -> None:
        """Records of one Stream frame each left on ``conn`` (the bulk path): stream bytes
        ``[start, end)`` in frames of ``room`` bytes, the last one shorter and with ``fin``."""
        ...

    def acks_sent(self, conn: Connection, seq: int, content: memoryview) -> None:
        """A record holding only ACK frames (``content``) left on ``conn``."""
        ...

    def plain_sent(self, conn: Connection, nbytes: int, record_size: int) -> None:
        """Plain TLS: ``nbytes`` of stream 0 left on ``conn`` in records of ``record_size``."""
        ...

    def receiving(self, handle: RecordHandler) -> RecordHandler:
        """The handler to use instead of ``handle`` for the next batch of records."""
        ...
