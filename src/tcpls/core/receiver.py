"""Incoming records: the frames of each decrypted record, dispatched to their owners.

Owns the receive pipeline of one session above TLS. Each application record of a
connection comes to :meth:`FrameReceiver.record`: the data path's records
(``[Stream]``, ``[Stream][ACK]`` or a lone ``[ACK]``, design: Records) take a fast path
that unpacks them in place; any other record is parsed from its end by
:func:`tcpls.wire.frames.parse_frames` and its frames are applied in wire order through
a table of handlers. Stream data goes to the stream set (possibly as a view of the
record: zero copy), ACKs to the ACK tracker, tokens to the token book, addresses to the
address book; what concerns the session's connections (a Connection Reset, a withdrawn
address) goes to the session through :class:`SessionHooks`.

A frame that breaks the rules raises a :class:`~tcpls.errors.ProtocolError`; the
session ends with its alert (design: Alerts).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from tcpls.core.acks import AckTracker
from tcpls.core.addresses import AddressBook
from tcpls.core.connection import Connection
from tcpls.core.events import AddressAdvertised, SessionEvent, TokenReceived
from tcpls.core.joins import TokenBook
from tcpls.core.streamset import StreamSet
from tcpls.core.trace import RecordHandler, RecordTrace
from tcpls.errors import UnexpectedMessage
from tcpls.wire.frames import (
    Ack,
    ConnectionReset,
    Frame,
    NewAddress,
    NewToken,
    Padding,
    Ping,
    RemoveAddress,
    StreamChange,
    StreamFrame,
    is_ack_eliciting,
    parse_frames,
)
from tcpls.wire.layout import (
    ACK_SIZE,
    STREAM_HEADER_SIZE,
    FrameType,
    unpack_ack_from,
    unpack_stream_header_from,
)

__all__ = ["FrameReceiver", "SessionHooks"]

_ACK = FrameType.ACK
_STREAM_KINDS = frozenset({int(FrameType.STREAM), int(FrameType.STREAM_FIN)})
_STREAM_FIN = FrameType.STREAM_FIN


class SessionHooks(Protocol):
    """What the receiver asks of the session for frames about its connections."""

    @property
    def connections(self) -> dict[int, Connection]:
        """The session's connections by ID."""
        ...

    @property
    def now(self) -> float:
        """The time of the input being processed."""
        ...

    def peer_reset(self, connection_id: int) -> None:
        """The peer sent Connection Reset for ``connection_id``."""
        ...

    def address_withdrawn(self, host: str, port: int) -> None:
        """The peer withdrew an address some of our connections may use."""
        ...

    def emit(self, event: SessionEvent) -> None:
        """Report ``event`` to the I/O layer."""
        ...

    def tokens_needed(self) -> None:
        """A token was revoked: hand out another one."""
        ...


class FrameReceiver:
    """Applies the frames of one session's records (see the module docstring)."""

    def __init__(
        self,
        is_client: bool,
        hooks: SessionHooks,
        streams: StreamSet,
        acks: AckTracker,
        tokens: TokenBook[object],
        addresses: AddressBook,
    ) -> None:
        self.is_client = is_client
        self._hooks = hooks
        self._streams = streams
        self._acks = acks
        self._tokens = tokens
        self._addresses = addresses
        #: The per-record hooks of qlog (design: qlog), ``None`` unless records are traced.
        self.qlog: RecordTrace | None = None

    # ------------------------------------------------------------- the data path

    def pull(self, conn: Connection, tcpls: bool) -> None:
        """Read the records ``conn``'s TLS has, up to its next event (frame errors raise)."""
        tls = conn.tls
        handle: RecordHandler = self.record if tcpls else self.plain
        if self.qlog is not None:  # (once per batch of records, not per record)
            handle = self.qlog.receiving(handle)
        for content in tls.records():
            if handle(conn, content):
                tls.keep_record()  # a view of the record was kept: the next goes elsewhere

    def plain(self, conn: Connection, data: memoryview) -> bool:
        """Plain TLS: the record's bytes are the next bytes of stream 0."""
        conn.records_received += 1
        stream = self._streams.table.get(0)
        delivered = stream.recv.delivered if stream is not None else 0
        return self._streams.receive(0, delivered, data, False)

    def record(self, conn: Connection, content: memoryview) -> bool:
        """Process one decrypted record; return whether a view of ``content`` was kept."""
        conn.records_received += 1
        size = len(content)
        if conn.expected_stream_change is None:
            if size == ACK_SIZE and content[ACK_SIZE - 1] == _ACK:
                # a lone ACK (the receiver of a bulk transfer sends nothing else)
                highest, ack_conn, _ = unpack_ack_from(content)
                hooks = self._hooks
                self._acks.received(
                    hooks.connections.get(ack_conn), Ack(ack_conn, highest), hooks.now
                )
                return False
            if size >= STREAM_HEADER_SIZE:
                # [Stream] or [Stream][ACK] (design: Records)
                end = size
                kind = content[end - 1]
                ack: Ack | None = None
                if kind == _ACK and size >= STREAM_HEADER_SIZE + ACK_SIZE:
                    highest, ack_conn, _ = unpack_ack_from(content, end - ACK_SIZE)
                    ack = Ack(ack_conn, highest)
                    end -= ACK_SIZE
                    kind = content[end - 1]
                if kind in _STREAM_KINDS:
                    length, offset, sid, _ = unpack_stream_header_from(
                        content, end - STREAM_HEADER_SIZE
                    )
                    if length == end - STREAM_HEADER_SIZE:
                        kept = self._streams.receive(
                            sid, offset, content[:length], kind == _STREAM_FIN
                        )
                        now = self._hooks.now
                        if ack is not None:
                            self._acks.received(
                                self._hooks.connections.get(ack.connection_id), ack, now
                            )
                        conn.last_data = now
                        self._acks.eliciting(conn, size, now)
                        return kept
        return self._frames(conn, content)

    def _frames(self, conn: Connection, content: memoryview) -> bool:
        """Any record: its frames, in wire order, through the handler table."""
        expected = conn.expected_stream_change
        conn.expected_stream_change = None
        eliciting = False
        kept = False
        handlers = _HANDLERS
        for frame in parse_frames(content):
            if type(frame) is StreamFrame:
                sid, offset, data, fin = frame
                if expected is not None:
                    if (sid, offset) != expected:
                        raise UnexpectedMessage("a Stream Change does not match the next record")
                    expected = None
                kept |= self._streams.receive(sid, offset, data, fin)
                conn.last_data = self._hooks.now
                eliciting = True
                continue
            handlers[type(frame)](self, conn, frame)
            eliciting = eliciting or is_ack_eliciting(frame)
        if expected is not None:
            raise UnexpectedMessage(
                "the record after a Stream Change carries no such Stream frame"
            )
        if eliciting:
            self._acks.eliciting(conn, len(content), self._hooks.now)
        return kept

    # -------------------------------------------------------------- handlers

    def _ack(self, conn: Connection, frame: Frame) -> None:
        assert type(frame) is Ack
        hooks = self._hooks
        self._acks.received(hooks.connections.get(frame.connection_id), frame, hooks.now)

    def _ignore(self, conn: Connection, frame: Frame) -> None:
        """Padding: skipped."""

    def _ping(self, conn: Connection, frame: Frame) -> None:
        conn.ack_now = True
        # the answer must also travel on the probed connection: sent on another one, it
        # would not show that this one works (design: Failure detection)
        conn.ping_answer = True

    def _new_token(self, conn: Connection, frame: Frame) -> None:
        assert type(frame) is NewToken
        if not self.is_client:
            raise UnexpectedMessage("a client sent a New Token frame")
        if self._tokens.received(frame, self._hooks.connections):
            self._hooks.emit(TokenReceived(frame.sequence))

    def _connection_reset(self, conn: Connection, frame: Frame) -> None:
        assert type(frame) is ConnectionReset
        cid = frame.connection_id
        if cid in self._hooks.connections:
            self._hooks.peer_reset(cid)
        elif self._tokens.join_never_arrived(cid):
            # a join with that token never reached us: revoked, hand out another
            self._hooks.tokens_needed()

    def _new_address(self, conn: Connection, frame: Frame) -> None:
        assert type(frame) is NewAddress
        entry = self._addresses.advertised(frame)
        if entry is not None:
            self._hooks.emit(AddressAdvertised(*entry))

    def _remove_address(self, conn: Connection, frame: Frame) -> None:
        assert type(frame) is RemoveAddress
        entry = self._addresses.removed(frame.address_id)
        if entry is not None:
            self._hooks.address_withdrawn(*entry)

    def _stream_change(self, conn: Connection, frame: Frame) -> None:
        assert type(frame) is StreamChange
        # it announces the first Stream frame of the next record on this connection
        # (design: Stream Change and Padding)
        conn.expected_stream_change = (frame.stream_id, frame.offset)


#: What to do with each frame type other than Stream (a table: one line per type; the
#: handlers are plain functions, so the receiver holds no reference to itself).
_HANDLERS: dict[type, Callable[[FrameReceiver, Connection, Frame], None]] = {
    Ack: FrameReceiver._ack,
    Padding: FrameReceiver._ignore,
    Ping: FrameReceiver._ping,
    NewToken: FrameReceiver._new_token,
    ConnectionReset: FrameReceiver._connection_reset,
    NewAddress: FrameReceiver._new_address,
    RemoveAddress: FrameReceiver._remove_address,
    StreamChange: FrameReceiver._stream_change,
}
