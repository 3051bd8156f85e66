"""Driving the handshake of one TLS connection: handshake messages in, flights and events out.

A :class:`Handshake` belongs to one :class:`~tcpls.tls.connection.TLSConnection` and holds
no reference to it. It owns:

* the :class:`~tcpls.tls.hs.base.HandshakeEngine` (a server builds it from a factory when a
  ClientHello that is not a join arrives), fed whole messages, its flights written through
  the :class:`~tcpls.tls.layer.RecordLayer`;
* the reassembly of handshake messages from records. It is done here, not in the engine,
  so that a message spanning a key change is detected (RFC 8446 §5.1);
* the checks a server makes on a ClientHello before any work: where TCPLS extensions may
  appear (design: Extension placement) and what a join must carry (design: Joins);
* both ends of a join, which runs no handshake (design: Joins): the client's
  :class:`JoinAttempt` and the server's pending join ClientHello;
* the messages after the handshake (NewSessionTicket, KeyUpdate) and whether a
  ChangeCipherSpec record may arrive now.

:meth:`Handshake.receive` yields the events the messages produce
(:class:`~tcpls.tls.events.JoinRequested`, :class:`~tcpls.tls.events.HandshakeCompleted`,
:class:`~tcpls.tls.events.SessionTicketReceived`); the connection turns each one into its
state before the next message is read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from tcpls.errors import DecodeError, IllegalParameter, InternalError, UnexpectedMessage
from tcpls.tls.events import (
    Event,
    HandshakeCompleted,
    HandshakeConfirmed,
    JoinRequested,
    SessionTicketReceived,
)
from tcpls.tls.hello import (
    ClientHelloInfo,
    build_join_client_hello,
    build_join_server_hello,
    check_tcpls_placement,
    parse_client_hello,
    parse_join_server_hello,
)
from tcpls.tls.hs.base import HandshakeEngine
from tcpls.tls.hs.client import ClientEngine
from tcpls.tls.hs.codec import HandshakeType
from tcpls.tls.hs.server import ServerEngine
from tcpls.tls.layer import MAX_SKIPPED_EARLY_DATA, RecordLayer
from tcpls.tls.record import CipherSuite, ContentType, TrafficKeys
from tcpls.wire.extensions import ExtensionCodepoints, decode_token_body

__all__ = [
    "MAX_CLIENT_HELLO",
    "MAX_HANDSHAKE_MESSAGE",
    "Handshake",
    "HelloCheck",
    "JoinAttempt",
]

#: Largest handshake message read, in bytes (a server's first one: MAX_CLIENT_HELLO).
MAX_HANDSHAKE_MESSAGE = 256 * 1024
#: Largest ClientHello a server reads: before it, a connection belongs to no session.
MAX_CLIENT_HELLO = 64 * 1024

#: Server: refuses a ClientHello it cannot complete before any work is done (by raising).
HelloCheck = Callable[[ClientHelloInfo], None]


@dataclass(frozen=True, slots=True)
class JoinAttempt:
    """A client joining a TCP connection to a session (design: Joins).

    ``hello`` is the join ClientHello, ``session_id`` its legacy_session_id (the
    ServerHello must echo it), ``read_keys``/``write_keys`` the session's application
    traffic keys (server's and client's) and ``connection_id`` the token's sequence.
    """

    hello: bytes
    session_id: bytes
    read_keys: TrafficKeys
    write_keys: TrafficKeys
    connection_id: int

    @classmethod
    def build(
        cls,
        token: bytes,
        *,
        read_keys: TrafficKeys,
        write_keys: TrafficKeys,
        connection_id: int,
        server_name: str | None,
        codepoints: ExtensionCodepoints,
    ) -> JoinAttempt:
        """A join with ``token``; its ClientHello offers the session's suite first."""
        suite = write_keys.cipher_suite
        hello, session_id = build_join_client_hello(
            token,
            server_name=server_name,
            cipher_suites=[suite, *(s for s in CipherSuite if s != suite)],
            codepoints=codepoints,
        )
        return cls(hello, session_id, read_keys, write_keys, connection_id)


class Handshake:
    """The handshake (or join) of one connection: see the module."""

    __slots__ = (
        "_accept_joins",
        "_complete",
        "_engine_factory",
        "_layer",
        "_started",
        "_tcpls",
        "ccs_allowed",
        "codepoints",
        "engine",
        "is_client",
        "join",
        "join_hello",
        "partial",
    )

    def __init__(
        self,
        layer: RecordLayer,
        *,
        is_client: bool,
        engine: HandshakeEngine | None,
        engine_factory: Callable[[], HandshakeEngine] | None,
        accept_joins: bool,
        codepoints: ExtensionCodepoints,
        join: JoinAttempt | None,
    ) -> None:
        self.is_client = is_client
        #: The engine (``None``: a server before the ClientHello, or a join).
        self.engine = engine
        if engine is not None:
            engine.set_secret_handler(layer.install_secret)
        self.codepoints = codepoints
        #: Client: the join this connection makes instead of a handshake.
        self.join = join
        #: Server: the ClientHello of the join that awaits an answer.
        self.join_hello: ClientHelloInfo | None = None
        #: Whether a ChangeCipherSpec record may arrive now (middlebox compatibility).
        self.ccs_allowed = False
        self._layer = layer
        self._engine_factory = engine_factory
        self._accept_joins = accept_joins
        #: Bytes of a handshake message received and not complete yet (one object for the
        #: connection's life: a record of another type may not come while it holds any).
        self.partial = bytearray()
        self._complete = False
        #: Server: reported complete before the client's Finished (it accepted early data).
        self._started = False
        self._tcpls = False

    @property
    def buffered(self) -> int:
        """Bytes of handshake messages received and not complete yet."""
        return len(self.partial)

    def detach(self) -> None:
        """Drop the callbacks into the connection's owner (its session ended)."""
        self._engine_factory = None
        if self.engine is not None:
            self.engine.detach(ended=True)

    # -- sending ---------------------------------------------------------------

    def start(self) -> None:
        """Client: write the ClientHello (of the handshake or of the join)."""
        self.ccs_allowed = True
        if self.join is not None:
            self._layer.send_initial(self.join.hello)
            return
        assert isinstance(self.engine, ClientEngine)
        self._layer.flush(self.engine.start())

    def accept_join(
        self, read_keys: TrafficKeys, write_keys: TrafficKeys, connection_id: int
    ) -> HandshakeCompleted:
        """Server: answer the pending join (ServerHello, ChangeCipherSpec); the event to report."""
        join_hello = self.join_hello
        assert join_hello is not None
        self.join_hello = None  # (answered: nothing of it is needed any more)
        hello = build_join_server_hello(join_hello, write_keys.cipher_suite)
        self._layer.send_plaintext(ContentType.handshake, hello)
        if join_hello.legacy_session_id:
            self._layer.send_ccs()
        return self._joined(read_keys, write_keys, connection_id)

    def _joined(
        self, read_keys: TrafficKeys, write_keys: TrafficKeys, connection_id: int
    ) -> HandshakeCompleted:
        self._layer.install_join_keys(read_keys, write_keys, connection_id)
        self._complete = self._tcpls = True
        # A join runs no engine: its factory, which refers to the connection's accept
        # path (and the buffers it read into), must not live on with the connection.
        self._engine_factory = None
        self.join = None
        return HandshakeCompleted(tcpls=True, cipher_suite=write_keys.cipher_suite, joined=True)

    # -- receiving -------------------------------------------------------------

    def receive(
        self, fragment: memoryview, hello_check: HelloCheck | None, answer_key_update: bool
    ) -> Iterator[Event]:
        """Take the content of one handshake record; yield the events of its messages.

        The caller applies each event before the next message is read. ``hello_check``
        may refuse a server's ClientHello; ``answer_key_update`` says whether a KeyUpdate
        that asks for ours gets it (not after close_notify). Protocol violations raise.
        """
        if not fragment:
            raise UnexpectedMessage("empty handshake record")
        buf = self.partial
        buf += fragment
        layer = self._layer
        while (message := self._next_message()) is not None:
            read_before = layer.read
            mark = layer.mark()
            events = self._handle(message, hello_check, answer_key_update)
            yield from events
            if layer.read is not read_before and buf:
                # Do not send the flight this message produced: the alert must be
                # readable by the peer in the epoch it is still in.
                layer.rewind(mark)
                raise UnexpectedMessage("a handshake message spans a key change")
            if events and isinstance(events[0], JoinRequested):
                if buf:
                    raise UnexpectedMessage("data after the join ClientHello")
                return

    def _next_message(self) -> bytes | None:
        buf = self.partial
        if len(buf) < 4:
            return None
        length = int.from_bytes(buf[1:4], "big")
        limit = MAX_HANDSHAKE_MESSAGE
        if not self.is_client and self.engine is None:
            limit = MAX_CLIENT_HELLO  # no session yet: a stranger's first message
        if length > limit:
            raise DecodeError(f"handshake message of {length} bytes is too large")
        if len(buf) < 4 + length:
            return None
        message = bytes(buf[: 4 + length])
        del buf[: 4 + length]
        return message

    def _handle(
        self, message: bytes, hello_check: HelloCheck | None, answer_key_update: bool
    ) -> list[Event]:
        msg_type = message[0]
        if self._complete:
            return self._post_handshake(msg_type, message, answer_key_update)
        join = self.join
        if join is not None:  # join client: expect the ServerHello
            if msg_type != HandshakeType.server_hello:
                raise UnexpectedMessage("expected a ServerHello answering the join")
            parse_join_server_hello(
                message,
                legacy_session_id=join.session_id,
                cipher_suite=join.write_keys.cipher_suite,
            )
            self._layer.send_ccs()
            completed = self._joined(join.read_keys, join.write_keys, join.connection_id)
            self.ccs_allowed = True  # the server's CCS may follow its ServerHello
            return [completed]
        checked = False
        if self.engine is None:  # server: first ClientHello decides full handshake or join
            self.ccs_allowed = True
            request = self._read_client_hello(msg_type, message, hello_check)
            if request is not None:
                return [request]
            checked = True  # its TCPLS extensions were just checked: no second parse
        engine = self.engine
        assert engine is not None
        if engine.offers_tcpls and not checked:
            check_tcpls_placement(msg_type, message, self.codepoints)
        outputs = engine.handle_message(message)
        if isinstance(engine, ServerEngine) and engine.skip_early_data:
            # Early data declined: its records, which we cannot decrypt, are skipped
            # (RFC 8446 §4.2.10).
            self._layer.early_data_skip = MAX_SKIPPED_EARLY_DATA
        self._layer.flush(outputs, echo_ccs=bool(engine.legacy_session_id))
        started = self._started
        if not engine.complete:
            if isinstance(engine, ServerEngine) and engine.early_data_accepted and not started:
                # answer the early data now, before the client's Finished (design: Early data)
                self._started = True
                return [self._completed(engine)]
            return []
        self._complete = True
        self._tcpls = engine.tcpls_negotiated
        self.ccs_allowed = False
        self._engine_factory = None  # needed for the ClientHello only
        self._layer.drop_handshake_keys()
        engine.detach()
        engine.finish()
        if started:
            return [HandshakeConfirmed()]
        return [self._completed(engine), *self._tickets()]

    def _completed(self, engine: HandshakeEngine) -> HandshakeCompleted:
        assert engine.cipher_suite is not None
        return HandshakeCompleted(
            tcpls=engine.tcpls_negotiated,
            cipher_suite=engine.cipher_suite,
            session_resumed=engine.session_resumed,
            alpn_protocol=engine.alpn_protocol,
            token=engine.peer_token,
            early_data_accepted=engine.early_data_accepted,
        )

    def _read_client_hello(
        self, msg_type: int, message: bytes, hello_check: HelloCheck | None
    ) -> JoinRequested | None:
        """Server: a join to answer (returned), or a full handshake (the engine is built)."""
        if msg_type != HandshakeType.client_hello:
            raise UnexpectedMessage("expected a ClientHello")
        info = parse_client_hello(message)
        cp = self.codepoints
        if self._accept_joins and info.has_extension(cp.tcpls_token):
            raise IllegalParameter("tcpls_token in a ClientHello (only a server sends tokens)")
        if self._accept_joins and info.has_extension(cp.tcpls_join):
            token = decode_token_body(info.extensions[cp.tcpls_join])
            if not info.has_extension(cp.tcpls):
                raise IllegalParameter("a join ClientHello must carry tcpls")
            self.join_hello = info
            return JoinRequested(token=token, client_hello=info)
        if self._engine_factory is None:
            raise InternalError("server connection without a handshake engine")
        if hello_check is not None:
            hello_check(info)
        self.engine = self._engine_factory()
        self.engine.set_secret_handler(self._layer.install_secret)
        return None

    def _post_handshake(
        self, msg_type: int, message: bytes, answer_key_update: bool
    ) -> list[Event]:
        if msg_type == HandshakeType.new_session_ticket and self.is_client:
            if self.engine is None:
                raise UnexpectedMessage("NewSessionTicket on a joined connection")
            self.engine.handle_message(message)
            return list(self._tickets())
        if msg_type != HandshakeType.key_update:
            raise UnexpectedMessage(f"unexpected post-handshake message type {msg_type}")
        if self._tcpls:
            raise UnexpectedMessage("KeyUpdate is not allowed in TCPLS mode")
        if len(message) != 5:
            raise DecodeError("malformed KeyUpdate")
        request = message[4]
        if request not in (0, 1):
            raise IllegalParameter("KeyUpdate request_update must be 0 or 1")
        self._layer.update_read_keys()
        # One answer stands for every request received before our next application data
        # (RFC 8446 §4.6.3 asks for no more): a peer that floods requests and reads
        # nothing must not grow our output (design: KeyUpdate).
        if request == 1 and answer_key_update and not self._layer.key_update_unused:
            self._layer.send_key_update(False, answer=True)
        return []

    def _tickets(self) -> Iterator[SessionTicketReceived]:
        engine = self.engine
        while isinstance(engine, ClientEngine) and engine.session_tickets:
            yield SessionTicketReceived(engine.session_tickets.pop(0))
