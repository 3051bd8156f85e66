"""Building sessions from configurations, and routing joins on a server. Sans-I/O.

:func:`client_session` turns a :class:`~tcpls.config.ClientConfig` into a
:class:`~tcpls.core.session.CoreSession` whose connection 0 is ready to start the
handshake. :class:`ServerEndpoint` does the same for each TCP connection a
server accepts and owns what a server shares between sessions: the loaded
certificate, the session-ticket store and the token registry. A connection
whose ClientHello carries ``tcpls_join`` is handed to the session its token
belongs to (:meth:`ServerEndpoint.route_join`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization

from tcpls.config import ClientConfig, ServerConfig, parse_cipher_suites
from tcpls.core.scheduler import SchedulerName
from tcpls.core.session import CoreSession
from tcpls.core.steering import ServerID, TokenSteering
from tcpls.core.tokens import TokenRegistry
from tcpls.errors import ConfigurationError, HandshakeCanceled, IllegalParameter, TCPLSError
from tcpls.tls.connection import ConnectionState, TLSConnection
from tcpls.tls.events import ConnectionFailed, JoinRequested
from tcpls.tls.handshake import MAX_CLIENT_HELLO
from tcpls.tls.hello import ClientHelloInfo, check_client_hello
from tcpls.tls.hs.base import HandshakeEngine
from tcpls.tls.hs.certs import CertificateVerifier
from tcpls.tls.hs.client import ClientEngine
from tcpls.tls.hs.codec import ExtensionType, decode_pre_shared_key
from tcpls.tls.hs.groups import parse_groups
from tcpls.tls.hs.server import ServerEngine
from tcpls.tls.hs.tickets import TicketStore
from tcpls.tls.keylog import KeyLog, keylog_path

__all__ = [
    "MAX_HANDOFF_BYTES",
    "Accepted",
    "HandOff",
    "PendingConnection",
    "Refused",
    "ServerEndpoint",
    "client_session",
    "parse_host_port",
]


#: The most bytes a pending connection keeps to pass on with it (design: Join handoff):
#: the largest ClientHello read, and its record headers.
MAX_HANDOFF_BYTES = MAX_CLIENT_HELLO + 4096


def client_session(
    config: ClientConfig,
    host: str,
    *,
    scheduler: SchedulerName = "aggregate",
    reliable: bool = True,
) -> CoreSession:
    """A client session for ``host``; call ``session.connections[0].tls.start()`` to begin."""
    config.check()
    server_name = config.server_name or host
    path = keylog_path(config.keylog_file)
    chain, key = config.load_credentials()
    engine = ClientEngine(
        server_name=server_name,
        certificate_chain=chain,
        private_key=key,
        groups=parse_groups(config.groups),
        early_data=config.early_data,
        verify=config.verify,
        cafile=config.cafile,
        cadata=config.cadata,
        cipher_suites=parse_cipher_suites(config.cipher_suites),
        alpn_protocols=config.alpn_protocols,
        tcpls=config.tcpls,
        codepoints=config.codepoints,
        session_ticket=config.session_ticket,
        keylog=KeyLog(path) if path else None,
    )
    tls = TLSConnection.client(
        engine, codepoints=config.codepoints, max_record_size=config.tuning.max_record_size
    )
    session = CoreSession(
        is_client=True,
        tuning=config.tuning,
        scheduler=scheduler,
        reliable=reliable,
        server_name=server_name,
    )
    session.add_connection(tls, 0)
    return session


class ServerEndpoint:
    """What a server shares across its sessions; makes a session per accepted connection."""

    def __init__(
        self,
        config: ServerConfig,
        *,
        scheduler: SchedulerName = "aggregate",
        reliable: bool = True,
    ) -> None:
        config.check()
        self.config = config
        self.scheduler: SchedulerName = scheduler
        self.reliable = reliable
        self._chain, self._key = config.load_credentials()
        self._chain_der = [c.public_bytes(serialization.Encoding.DER) for c in self._chain]
        self._suites = parse_cipher_suites(config.cipher_suites)

        self._groups = parse_groups(config.groups)
        #: Verifies client certificates (when the server requires them).
        self.client_verifier = (
            CertificateVerifier(cafile=config.client_cafile) if config.client_cafile else None
        )
        steering = config.steering
        #: Mints tokens that name this process and reads those of the others (design:
        #: Token steering); ``None`` when the server is a single process.
        self.steering = (
            TokenSteering(steering.key, ServerID(steering.machine, steering.worker))
            if steering is not None
            else None
        )
        self.registry: TokenRegistry[CoreSession] = TokenRegistry(
            self.steering.mint if self.steering is not None else None
        )
        self.tickets = (
            TicketStore(
                config.max_tickets,
                config.ticket_lifetime,
                self.steering.mint if self.steering is not None else None,
            )
            if config.session_tickets
            else None
        )
        #: Joins refused because their token named another machine (design: Join handoff).
        self.foreign_joins = 0
        self._hands_off = steering is not None and steering.handoff_dir is not None
        path = keylog_path(config.keylog_file)
        self._keylog = KeyLog(path) if path else None
        #: Addresses advertised to every session, by address ID (design: Addresses).
        self.advertised: dict[int, tuple[str, int]] = dict(
            enumerate(parse_host_port(a) for a in config.advertise)
        )
        self._next_address_id = len(self.advertised)
        # What the handshake engine accepts, to refuse hopeless ClientHellos up front.
        probe = ServerEngine(
            certificate_chain=self._chain,
            private_key=self._key,
            cipher_suites=self._suites,
            groups=self._groups,
            tcpls=config.tcpls,
        )
        self._accepted_suites = probe.cipher_suites
        self._accepted_groups = probe.groups
        #: Says why no new session may start now (too many, out of memory), or ``None``.
        self.session_gate: Callable[[], str | None] | None = None

    def new_connection(self, *, handed_off: bool = False) -> PendingConnection:
        """A newly accepted TCP connection, before its first ClientHello is read.

        The session is created only when that ClientHello starts a handshake
        (:attr:`PendingConnection.session`); a join needs none: the connection
        goes to the session of its token (:meth:`route_join`). ``handed_off``: another
        worker passed it here (it is not passed on again).
        """
        return PendingConnection(self, handed_off=handed_off)

    def start_session(self, tls: TLSConnection) -> tuple[CoreSession, HandshakeEngine]:
        """A session for the connection ``tls``, whose ClientHello starts a handshake
        (its connection 0), and the engine that runs that handshake."""
        session = self._make_session()
        session.add_connection(tls, 0)
        return session, self._make_engine(session)

    def _make_session(self) -> CoreSession:
        config = self.config
        session = CoreSession(
            is_client=False,
            tuning=config.tuning,
            scheduler=self.scheduler,
            max_connections=config.max_connections if config.tcpls else 1,
            token_registry=self.registry if config.tcpls else None,
            reliable=self.reliable,
        )
        for address_id, (host, port) in self.advertised.items():
            session.advertise_address(address_id, host, port)
        return session

    def _make_tls(self, engine_factory: Callable[[], HandshakeEngine]) -> TLSConnection:
        config = self.config
        tls = TLSConnection.server(
            engine_factory,
            accept_joins=config.tcpls,
            codepoints=config.codepoints,
            max_record_size=config.tuning.max_record_size,
        )
        tls.hello_check = self.check_hello
        return tls

    def ticket_owner(self, info: ClientHelloInfo) -> int | None:
        """The worker of this machine, other than this one, that issued the ticket a
        resuming ClientHello presents first; ``None`` otherwise (design: Join handoff)."""
        steering = self.steering
        body = info.extensions.get(ExtensionType.pre_shared_key)
        if steering is None or body is None or not self._hands_off:
            return None
        try:
            offer = decode_pre_shared_key(body)
        except TCPLSError:
            return None  # the engine reports it
        owner = steering.elsewhere(offer.identities[0][0]) if offer.identities else None
        if owner is None or owner.machine != steering.server_id.machine:
            return None  # this worker's ticket, or none it can pass on
        return owner.worker

    def check_hello(self, info: ClientHelloInfo) -> None:
        """Refuse, before any session exists, a ClientHello that cannot succeed or that
        the server has no room for (design: Server limits)."""
        check_client_hello(info, self._accepted_suites, self._accepted_groups)
        refusal = self.session_gate() if self.session_gate is not None else None
        if refusal is not None:
            raise HandshakeCanceled(refusal)

    def _make_engine(self, session: CoreSession) -> HandshakeEngine:
        config = self.config
        return ServerEngine(
            certificate_chain=self._chain,
            certificate_ders=self._chain_der,
            private_key=self._key,
            cipher_suites=self._suites,
            groups=self._groups,
            client_verifier=self.client_verifier,
            max_early_data=config.max_early_data,
            alpn_protocols=config.alpn_protocols,
            tcpls=config.tcpls,
            codepoints=config.codepoints,
            ticket_store=self.tickets,
            token_provider=session.token_book.for_handshake,
            keylog=self._keylog,
        )

    def advertise(self, address: str, sessions: Iterable[CoreSession] = ()) -> int:
        """Advertise ``"ip:port"`` to new sessions and to ``sessions``; return its address ID."""
        host, port = parse_host_port(address)
        for address_id, known in self.advertised.items():
            if known == (host, port):
                return address_id
        address_id = self._next_address_id
        if address_id > 255:
            raise ConfigurationError("address IDs are 8 bits: at most 256 advertised addresses")
        self._next_address_id += 1
        self.advertised[address_id] = (host, port)
        for session in sessions:
            session.advertise_address(address_id, host, port)
        return address_id

    def reserve_address_id(self) -> int:
        """An address ID for an address that each session learns on its own (a worker's
        own port, advertised with the address its client reached)."""
        address_id = self._next_address_id
        if address_id > 255:
            raise ConfigurationError("address IDs are 8 bits: at most 256 advertised addresses")
        self._next_address_id += 1
        return address_id

    def withdraw(self, address: str, sessions: Iterable[CoreSession] = ()) -> None:
        """Stop advertising ``"ip:port"``; ``sessions`` get Remove Address (clients then close
        their connections to it, design: Addresses)."""
        target = parse_host_port(address)
        for address_id, known in list(self.advertised.items()):
            if known == target:
                del self.advertised[address_id]
                for session in sessions:
                    session.withdraw_address(address_id)
                return
        raise ConfigurationError(f"{address} is not advertised")

    def route_join(
        self, tls: TLSConnection, token: bytes, *, may_hand_off: bool = True
    ) -> tuple[CoreSession, int] | ServerID | None:
        """Hand the join waiting on ``tls`` to the session of ``token``.

        Returns ``(session, connection_id)``; the :class:`ServerID` of another worker of
        this machine that issued the token, when ``may_hand_off`` and hand-off is set up
        (the caller passes the connection on; design: Join handoff); ``None`` if the
        token is invalid, used, expired or another machine's, in which case the join was
        rejected with ``illegal_parameter`` (design: Joins): only this connection is
        affected.
        """
        if tls.state is not ConnectionState.JOIN_WAIT:
            return None  # the connection failed meanwhile: the token is not used up
        steering = self.steering
        if steering is not None:
            owner = steering.elsewhere(token)
            if owner is not None:
                same_machine = owner.machine == steering.server_id.machine
                if same_machine and may_hand_off and self._hands_off:
                    return owner
                if not same_machine:  # (a join that could not be passed is counted there)
                    self.foreign_joins += 1
                tls.reject_join()
                return None
        entry = self.registry.redeem(token)
        if entry is not None:
            session, sequence = entry
            if session.redeem_join(tls, sequence) is not None:
                return session, sequence
        tls.reject_join()
        return None


@dataclass(frozen=True, slots=True)
class Accepted:
    """A pending connection now belongs to ``session`` as its connection ``connection_id``
    (0: its ClientHello started the session; otherwise a join)."""

    session: CoreSession
    connection_id: int


@dataclass(frozen=True, slots=True)
class HandOff:
    """A pending connection is a join for a session another worker of this machine holds
    (``worker``): pass the socket and ``received`` (every byte read from it so far) to
    that worker (design: Join handoff)."""

    worker: int
    received: bytes


@dataclass(frozen=True, slots=True)
class Refused:
    """A pending connection ends: send what its TLS connection still has (an alert),
    then close it. Only this connection is affected (design: Joins)."""

    error: TCPLSError


class PendingConnection:
    """An accepted TCP connection whose first ClientHello decides what it is.

    The I/O layer feeds it bytes with :meth:`get_buffer` and :meth:`buffer_updated`
    until that returns what became of it: :class:`Accepted` (a new session, or a join
    routed to the session of its token) or :class:`Refused` (not TLS, a bad hello, an
    invalid token). This is the one way a server accepts connections.
    """

    def __init__(self, endpoint: ServerEndpoint, *, handed_off: bool = False) -> None:
        self.session: CoreSession | None = None
        self._endpoint = endpoint
        self.tls = endpoint._make_tls(self._start_session)
        #: Seconds the peer has to send its ClientHello.
        self.hello_timeout = endpoint.config.hello_timeout
        #: Whether another worker passed this connection on (it is not passed again).
        self.handed_off = handed_off
        # What was read so far, kept only when the connection may have to be passed on
        # (a join or a resumption for another worker, design: Join handoff).
        self._received: bytearray | None = (
            bytearray() if not handed_off and endpoint._hands_off else None
        )
        self._buffer: memoryview | None = None
        self._pass_to: int | None = None
        if self._received is not None:
            self.tls.hello_check = self._check_hello

    def _check_hello(self, info: ClientHelloInfo) -> None:
        worker = self._endpoint.ticket_owner(info)
        if worker is not None:
            # another worker holds the ticket: stop here (the alert this queues is never
            # sent; the connection goes to that worker as it arrived)
            self._pass_to = worker
            raise HandshakeCanceled("resumption passed to the worker holding the ticket")
        self._endpoint.check_hello(info)

    def _start_session(self) -> HandshakeEngine:
        self.session, engine = self._endpoint.start_session(self.tls)
        return engine

    def get_buffer(self) -> memoryview:
        """Where the next bytes of the connection go."""
        self._buffer = buffer = self.tls.get_buffer()
        return buffer

    def buffer_updated(self, nbytes: int, now: float) -> Accepted | HandOff | Refused | None:
        """``nbytes`` arrived in :meth:`get_buffer`; ``None`` while the ClientHello is
        incomplete."""
        tls = self.tls
        if self._received is not None and self._buffer is not None:
            self._received += self._buffer[:nbytes]
            if len(self._received) > MAX_HANDOFF_BYTES:
                self._received = None  # more than any ClientHello: never passed on
        tls.buffer_updated(nbytes)
        if self._pass_to is not None and self._received is not None:
            return HandOff(self._pass_to, bytes(self._received))
        if self.session is not None:  # the ClientHello started a handshake
            self._received = None
            self.session.poll_connection(0, now)
            return Accepted(self.session, 0)
        while (event := tls.next_event()) is not None:
            if isinstance(event, JoinRequested):
                routed = self._endpoint.route_join(
                    tls, event.token, may_hand_off=self._received is not None
                )
                if routed is None:
                    return Refused(IllegalParameter("the join token is invalid or used"))
                if isinstance(routed, ServerID):
                    assert self._received is not None
                    return HandOff(routed.worker, bytes(self._received))
                session, connection_id = routed
                return Accepted(session, connection_id)
            if isinstance(event, ConnectionFailed):  # not TLS, or a bad hello: the alert
                return Refused(event.error)
        return None


def parse_host_port(text: str) -> tuple[str, int]:
    """``"10.0.0.1:443"`` or ``"[2001:db8::1]:443"`` as ``(host, port)``."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ConfigurationError(f"expected HOST:PORT, got {text!r}")
    host = host.strip("[]")
    try:
        port = int(port_text)
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigurationError(
            f"expected IP:PORT with a numeric address, got {text!r}"
        ) from None
    if not 0 < port < 65536:
        raise ConfigurationError(f"port out of range in {text!r}")
    return host, port
