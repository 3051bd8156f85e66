"""Adapter around the TLS 1.3 handshake engine of aioquic (``aioquic.tls``).

This is the only module of tcpls that imports aioquic. ``aioquic.tls`` is a
sans-I/O TLS 1.3 handshake state machine written for QUIC: it consumes and
produces handshake messages per epoch and reports traffic secrets through a
callback, but has no record layer. :class:`HandshakeEngine` wraps one
``aioquic.tls.Context`` and adds what TCPLS over TCP needs:

* the ``tcpls`` extension in the ClientHello and, only when offered, in
  EncryptedExtensions, plus a ``tcpls_token`` in EncryptedExtensions (design: Tokens);
* traffic secrets out (for the record layer and the NSS key log), and the
  exporter master secret;
* certificate verification on by default (a CA file or data, else certifi);
* PSK resumption with server-side ticket storage, with 0-RTT disabled (design: Early data);
* aioquic's exceptions mapped onto :mod:`tcpls.errors`.

The hellos of a join, which runs no handshake, are in :mod:`tcpls.tls.hello`.

``aioquic.tls`` is not a documented API, so the version is pinned exactly
(``aioquic==1.7.2``) and the interop tests exercise every hook used here.
"""

from __future__ import annotations

import logging
import os
import struct
from collections import OrderedDict
from collections.abc import Callable, Sequence
from enum import IntEnum
from typing import Any

from aioquic import tls
from aioquic._buffer import Buffer, BufferReadError
from cryptography import x509

from tcpls.errors import (
    AlertDescription,
    CertificateVerificationError,
    DecodeError,
    IllegalParameter,
    InternalError,
    ProtocolError,
)
from tcpls.tls.keylog import KeyLog
from tcpls.tls.record import CipherSuite, hkdf_expand_label, suite_hash
from tcpls.wire.extensions import (
    DEFAULT_CODEPOINTS,
    ExtensionCodepoints,
    decode_tcpls,
    decode_token_body,
    encode_token_body,
)

__all__ = [
    "Epoch",
    "HandshakeEngine",
    "HandshakeType",
    "SessionTicket",
    "TicketStore",
]

logger = logging.getLogger(__name__)

_BUFFER_CAPACITY = 128 * 1024  # aioquic's output buffers have a fixed capacity (pitfall #9)


class Epoch(IntEnum):
    """Key epochs of the handshake; records of each epoch use their own keys."""

    INITIAL = 0  # plaintext
    HANDSHAKE = 2
    ONE_RTT = 3  # application traffic keys


class HandshakeType(IntEnum):
    """TLS handshake message types tcpls looks at."""

    client_hello = 1
    server_hello = 2
    new_session_ticket = 4
    key_update = 24


_EPOCHS = {
    tls.Epoch.INITIAL: Epoch.INITIAL,
    tls.Epoch.HANDSHAKE: Epoch.HANDSHAKE,
    tls.Epoch.ONE_RTT: Epoch.ONE_RTT,
}

_GROUPS = {
    "x25519": tls.Group.X25519,
    "secp256r1": tls.Group.SECP256R1,
    "secp384r1": tls.Group.SECP384R1,
    "x448": tls.Group.X448,
}

# Key log labels by (is_client, is encrypt direction, epoch)
_KEYLOG_LABELS = {
    (True, True, Epoch.HANDSHAKE): "CLIENT_HANDSHAKE_TRAFFIC_SECRET",
    (True, False, Epoch.HANDSHAKE): "SERVER_HANDSHAKE_TRAFFIC_SECRET",
    (True, True, Epoch.ONE_RTT): "CLIENT_TRAFFIC_SECRET_0",
    (True, False, Epoch.ONE_RTT): "SERVER_TRAFFIC_SECRET_0",
    (False, True, Epoch.HANDSHAKE): "SERVER_HANDSHAKE_TRAFFIC_SECRET",
    (False, False, Epoch.HANDSHAKE): "CLIENT_HANDSHAKE_TRAFFIC_SECRET",
    (False, True, Epoch.ONE_RTT): "SERVER_TRAFFIC_SECRET_0",
    (False, False, Epoch.ONE_RTT): "CLIENT_TRAFFIC_SECRET_0",
}

#: Called for every traffic secret: ``(is_write, epoch, cipher_suite, secret)``.
SecretCallback = Callable[[bool, Epoch, CipherSuite, bytes], None]


def _noop_secret(is_write: bool, epoch: Epoch, suite: CipherSuite, secret: bytes) -> None:
    return None


def _noop_traffic_key(
    direction: tls.Direction, epoch: tls.Epoch, suite: tls.CipherSuite, secret: bytes
) -> None:
    return None


class SessionTicket:
    """A TLS 1.3 session ticket a client can use to resume (PSK, no 0-RTT).

    Opaque: pass it back in ``ClientConfig(session_ticket=...)``.
    """

    __slots__ = ("_ticket",)

    def __init__(self, ticket: Any) -> None:
        self._ticket = ticket

    @property
    def cipher_suite(self) -> CipherSuite:
        """The cipher suite of the session the ticket resumes."""
        return CipherSuite(int(self._ticket.cipher_suite))

    @property
    def server_name(self) -> str | None:
        """The server name the ticket was issued for."""
        name: str | None = self._ticket.server_name
        return name

    @property
    def is_valid(self) -> bool:
        """Whether the ticket is within its lifetime."""
        return bool(self._ticket.is_valid)

    def __repr__(self) -> str:
        return f"<SessionTicket {self.cipher_suite.name} for {self.server_name!r}>"


class TicketStore:
    """Server-side store of issued session tickets (aioquic tickets are stateful).

    Bounded (oldest evicted first) and single-use: a ticket is removed when a
    client presents it.
    """

    def __init__(self, max_size: int = 4096) -> None:
        self.max_size = max_size
        self._tickets: OrderedDict[bytes, Any] = OrderedDict()

    def add(self, ticket: Any) -> None:
        """Remember a ticket issued by the engine."""
        self._tickets[ticket.ticket] = ticket
        while len(self._tickets) > self.max_size:
            self._tickets.popitem(last=False)

    def pop(self, label: bytes) -> Any:
        """The ticket with this identity, removed from the store; ``None`` if unknown."""
        return self._tickets.pop(label, None)

    def __len__(self) -> int:
        return len(self._tickets)


def _map_exception(exc: Exception) -> ProtocolError:
    """Turn an aioquic exception into the matching tcpls error."""
    if isinstance(exc, ProtocolError):
        return exc
    if isinstance(exc, tls.Alert):
        description = AlertDescription(int(exc.description))
        message = str(exc) or description.name.replace("_", " ")
        if isinstance(exc, tls.AlertBadCertificate | tls.AlertCertificateExpired):
            if "issuer" in message or "self-signed" in message or "self signed" in message:
                description = AlertDescription.unknown_ca
            return CertificateVerificationError(
                f"certificate verification failed: {message}", description
            )
        return ProtocolError(message, description)
    if isinstance(exc, BufferReadError | ValueError | KeyError | IndexError | struct.error):
        return DecodeError(f"malformed handshake message ({exc.__class__.__name__}: {exc})")
    return InternalError(f"handshake engine failure ({exc.__class__.__name__}: {exc})")


class HandshakeEngine:
    """One TLS 1.3 handshake (client or server), without a record layer.

    Feed it whole handshake messages with :meth:`handle_message` (the record
    layer reassembles them); it returns the messages to send, per epoch, in
    the order they must be sent. Traffic secrets arrive through
    ``on_secret``, which is called *before* the bytes of the previous epoch
    are returned: the record layer must keep one write key per epoch.
    """

    def __init__(
        self,
        *,
        is_client: bool,
        on_secret: SecretCallback,
        server_name: str | None = None,
        verify: bool = True,
        cafile: str | None = None,
        cadata: bytes | None = None,
        certificate_chain: Sequence[x509.Certificate] = (),
        private_key: Any = None,
        cipher_suites: Sequence[CipherSuite] | None = None,
        groups: Sequence[str] | None = ("x25519", "secp256r1"),
        alpn_protocols: Sequence[str] | None = None,
        tcpls: bool = True,
        codepoints: ExtensionCodepoints = DEFAULT_CODEPOINTS,
        session_ticket: SessionTicket | None = None,
        ticket_store: TicketStore | None = None,
        token_provider: Callable[[], bytes | None] | None = None,
        keylog: KeyLog | None = None,
    ) -> None:
        self.is_client = is_client
        self.codepoints = codepoints
        self._on_secret = on_secret
        self._offer_tcpls = tcpls
        self._token_provider = token_provider
        self._ticket_store = ticket_store
        self._keylog = keylog
        self.tcpls_negotiated = False
        #: Client: the token received in ``tcpls_token`` (sequence 1), if any.
        self.peer_token: bytes | None = None
        #: Server: the token sent in ``tcpls_token`` (sequence 1), if any.
        self.issued_token: bytes | None = None
        self.exporter_secret: bytes | None = None
        self.session_tickets: list[SessionTicket] = []
        self.cipher_suite: CipherSuite | None = None
        self._secrets: dict[tuple[bool, Epoch], bytes] = {}

        ctx = tls.Context(
            is_client=is_client,
            alpn_protocols=list(alpn_protocols) if alpn_protocols else None,
            cadata=cadata,
            cafile=cafile,
            cipher_suites=(
                [tls.CipherSuite(int(s)) for s in cipher_suites] if cipher_suites else None
            ),
            server_name=server_name,
            verify_mode=None if verify else 0,  # 0 == ssl.CERT_NONE
        )
        ctx.update_traffic_key_cb = self._on_traffic_key
        ctx.alpn_cb = self._on_alpn
        if is_client:
            if groups:
                ctx._supported_groups = [_GROUPS[g] for g in groups]
            ctx.legacy_session_id = os.urandom(32)  # middlebox compatibility mode
            ctx.new_session_ticket_cb = self._on_new_ticket
            if session_ticket is not None:
                ticket = session_ticket._ticket
                ticket.max_early_data_size = None  # never offer 0-RTT (design: Early data)
                ctx.session_ticket = ticket
            if tcpls:
                ctx.handshake_extensions = [(codepoints.tcpls, b"")]
        else:
            if not certificate_chain or private_key is None:
                raise ValueError("a server needs a certificate and a private key")
            ctx.certificate = certificate_chain[0]
            ctx.certificate_chain = list(certificate_chain[1:])
            ctx.certificate_private_key = private_key
            if ticket_store is not None:
                ctx.new_session_ticket_cb = ticket_store.add
                ctx.get_session_ticket_cb = ticket_store.pop
        self._ctx = ctx

    # -- state ---------------------------------------------------------------

    @property
    def offers_tcpls(self) -> bool:
        """Whether this end speaks TCPLS (client: offers it; server: accepts it)."""
        return self._offer_tcpls

    @property
    def cipher_suites(self) -> list[int]:
        """The cipher suites this engine accepts, in preference order."""
        return [int(s) for s in self._ctx._cipher_suites]

    @property
    def groups(self) -> list[int]:
        """The key exchange groups this engine supports."""
        return [int(g) for g in self._ctx._supported_groups]

    @property
    def complete(self) -> bool:
        """Whether the handshake finished (the peer's Finished was verified)."""
        return self._ctx.state in (
            tls.State.CLIENT_POST_HANDSHAKE,
            tls.State.SERVER_POST_HANDSHAKE,
        )

    @property
    def client_random(self) -> bytes | None:
        """The ClientHello random (known to a server once the ClientHello is read)."""
        random: bytes | None = self._ctx.client_random
        return random

    @property
    def legacy_session_id(self) -> bytes:
        """The ClientHello's legacy_session_id (echoed by the server)."""
        sid: bytes | None = self._ctx.legacy_session_id
        return sid or b""

    @property
    def session_resumed(self) -> bool:
        """Whether the handshake resumed a session with a PSK."""
        return bool(self._ctx.session_resumed)

    @property
    def alpn_protocol(self) -> str | None:
        """The negotiated ALPN protocol, if any."""
        proto: str | None = self._ctx.alpn_negotiated
        return proto

    @property
    def peer_certificate(self) -> x509.Certificate | None:
        """The peer's end-entity certificate (client side)."""
        cert: x509.Certificate | None = self._ctx._peer_certificate
        return cert

    def traffic_secret(self, is_write: bool, epoch: Epoch) -> bytes | None:
        """The traffic secret of one direction and epoch, once installed."""
        return self._secrets.get((is_write, epoch))

    def set_secret_handler(self, on_secret: SecretCallback) -> None:
        """Send the traffic secrets installed from now on to ``on_secret``.

        The record layer that owns this engine calls it: the engine is often built
        before that record layer exists (a server builds it from a factory).
        """
        self._on_secret = on_secret

    def detach(self, *, ended: bool = False) -> None:
        """Drop the callbacks into the owners: the handshake is over (or the session ended).

        They would otherwise form reference cycles (the engine and its handshake
        context, the engine and its connection) that keep a finished session alive
        until a garbage collection. A client keeps the session-ticket callback until
        its session ends: tickets come after the handshake.
        """
        self._token_provider = None
        self._on_secret = _noop_secret
        ctx = self._ctx
        ctx.update_traffic_key_cb = _noop_traffic_key
        ctx.alpn_cb = None
        if ended or not self.is_client:
            ctx.new_session_ticket_cb = None
            ctx.get_session_ticket_cb = None

    # -- driving -------------------------------------------------------------

    def start(self) -> list[tuple[Epoch, bytes]]:
        """Client only: produce the ClientHello."""
        return self._run(b"")

    def handle_message(self, message: bytes) -> list[tuple[Epoch, bytes]]:
        """Process one complete handshake message; return what to send, by epoch."""
        return self._run(message)

    def _run(self, data: bytes) -> list[tuple[Epoch, bytes]]:
        buffers = {
            tls.Epoch.INITIAL: Buffer(capacity=_BUFFER_CAPACITY),
            tls.Epoch.HANDSHAKE: Buffer(capacity=_BUFFER_CAPACITY),
            tls.Epoch.ONE_RTT: Buffer(capacity=_BUFFER_CAPACITY),
        }
        try:
            self._ctx.handle_message(data, buffers)
        except Exception as exc:
            error = _map_exception(exc)
            if isinstance(error, CertificateVerificationError) and "match" in str(exc):
                error = CertificateVerificationError(self._name_mismatch(), error.alert)
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("handshake failed: %s", error, exc_info=exc)
            # Not chained: a stored error must not keep the engine's frames alive.
            raise error from None
        return [(_EPOCHS[e], buf.data) for e, buf in buffers.items() if buf.tell()]

    def _name_mismatch(self) -> str:
        """Why the peer's certificate does not match the name we asked for, in words."""
        wanted = self._ctx._server_name or "the address connected to"
        names: list[str] = []
        cert = self._ctx._peer_certificate
        if cert is not None:
            try:
                san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
                names = [str(n) for n in san.value.get_values_for_type(x509.DNSName)]
                names += [str(ip) for ip in san.value.get_values_for_type(x509.IPAddress)]
            except x509.ExtensionNotFound:
                names = []
        valid = f"is valid for {', '.join(names)}" if names else "names no host"
        return f"the certificate {valid}, not for {wanted}"

    # -- aioquic callbacks ---------------------------------------------------

    def _on_traffic_key(
        self, direction: tls.Direction, epoch: tls.Epoch, suite: tls.CipherSuite, secret: bytes
    ) -> None:
        if epoch not in _EPOCHS:
            return  # 0-RTT keys: never used (design: Early data)
        ours = _EPOCHS[epoch]
        is_write = direction == tls.Direction.ENCRYPT
        self.cipher_suite = CipherSuite(int(suite))
        self._secrets[(is_write, ours)] = secret
        if ours == Epoch.ONE_RTT and self.exporter_secret is None:
            # The transcript ends at the server Finished exactly when the first
            # application key is installed: derive the exporter master secret now.
            ks = self._ctx.key_schedule
            assert ks is not None
            self.exporter_secret = ks.derive_secret(b"exp master")
            self._log_secret("EXPORTER_SECRET", self.exporter_secret)
        self._log_secret(_KEYLOG_LABELS[(self.is_client, is_write, ours)], secret)
        self._on_secret(is_write, ours, self.cipher_suite, secret)

    def _log_secret(self, label: str, secret: bytes) -> None:
        if self._keylog is not None and self._ctx.client_random is not None:
            try:
                self._keylog.write(label, self._ctx.client_random, secret)
            except OSError as exc:
                logger.warning("cannot write key log %s: %s", self._keylog.path, exc)
                self._keylog = None

    def _on_alpn(self, alpn: str | None) -> None:
        cp = self.codepoints
        received = dict(self._ctx.received_extensions or [])
        if self.is_client:
            if cp.tcpls in received:
                if not self._offer_tcpls:
                    raise ProtocolError(
                        "server sent the tcpls extension we did not offer",
                        AlertDescription.unsupported_extension,
                    )
                decode_tcpls(received[cp.tcpls])
                self.tcpls_negotiated = True
                if cp.tcpls_token in received:
                    self.peer_token = decode_token_body(received[cp.tcpls_token])
            elif cp.tcpls_token in received:
                raise ProtocolError(
                    "server sent tcpls_token without tcpls", AlertDescription.unsupported_extension
                )
            return
        if not self._offer_tcpls:
            return  # a plain TLS server ignores the TCPLS extensions
        if cp.tcpls_join in received:
            # Joins are answered by the record layer before the engine runs;
            # a join reaching a full handshake is a protocol error (design: Joins).
            raise IllegalParameter("tcpls_join in a ClientHello that starts a new session")
        if cp.tcpls in received:
            decode_tcpls(received[cp.tcpls])
            self.tcpls_negotiated = True
            extensions: list[tuple[int, bytes]] = [(cp.tcpls, b"")]
            token = self._token_provider() if self._token_provider else None
            if token is not None:
                self.issued_token = token
                extensions.append((cp.tcpls_token, encode_token_body(token)))
            self._ctx.handshake_extensions = extensions

    def _on_new_ticket(self, ticket: Any) -> None:
        self.session_tickets.append(SessionTicket(ticket))

    # -- exporter ------------------------------------------------------------

    def export_keying_material(self, label: bytes, context: bytes, length: int) -> bytes:
        """TLS-Exporter of RFC 8446 §7.5 (available once the handshake completed)."""
        if self.exporter_secret is None or self.cipher_suite is None:
            raise RuntimeError("the exporter secret is not available before the handshake")
        from cryptography.hazmat.primitives import hashes

        algorithm = suite_hash(self.cipher_suite)
        empty_hash = hashes.Hash(suite_hash(self.cipher_suite))
        derived = hkdf_expand_label(
            algorithm,
            self.exporter_secret,
            label,
            empty_hash.finalize(),
            algorithm.digest_size,
        )
        h = hashes.Hash(suite_hash(self.cipher_suite))
        h.update(context)
        return hkdf_expand_label(algorithm, derived, b"exporter", h.finalize(), length)
