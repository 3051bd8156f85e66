"""The server side of the TLS 1.3 handshake (RFC 8446 §2, §4), as a table of states.

::

    start ──ClientHello──▶ (HelloRetryRequest) wait_ch2 ──ClientHello──▶ answered
    start ──ClientHello──▶ answered: ServerHello, EncryptedExtensions,
                           [CertificateRequest], Certificate, CertificateVerify, Finished
    wait_eoed ──EndOfEarlyData──▶ wait_client_cert | wait_finished   (0-RTT accepted)
    wait_client_cert ──Certificate──▶ wait_client_cv ──CertificateVerify──▶ wait_finished
    wait_finished ──Finished──▶ connected (NewSessionTicket sent)

The group is the most preferred of ours among the client's key shares; when the client
sent no share we can use but supports one of our groups, the server asks for it with one
HelloRetryRequest carrying a cookie the second ClientHello must echo (design:
HelloRetryRequest). Resumption is PSK with (EC)DHE, from single-use tickets; early data is
accepted only when configured, within the ticket's limit, for a ticket's first use and a
fresh ticket age (design: Early data). A server configured with a client verifier asks for
a certificate and refuses a handshake without one (``certificate_required``).
"""

from __future__ import annotations

import hmac
import os
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tcpls.errors import (
    AlertDescription,
    DecodeError,
    HandshakeFailure,
    IllegalParameter,
    ProtocolError,
)
from tcpls.tls.hs.base import (
    DEFAULT_CIPHER_SUITES,
    Epoch,
    Handler,
    HandshakeEngine,
    SecretCallback,
    check_placement,
    noop_secret,
)
from tcpls.tls.hs.certs import CertificateVerifier, parse_certificate_chain
from tcpls.tls.hs.codec import (
    HRR_RANDOM,
    TLS12,
    TLS13,
    Certificate,
    CertificateRequest,
    CertificateVerify,
    ClientHello,
    EncryptedExtensions,
    ExtensionType,
    HandshakeType,
    NewSessionTicket,
    ServerHello,
    decode_alpn,
    decode_client_key_shares,
    decode_cookie,
    decode_pre_shared_key,
    decode_psk_modes,
    decode_server_name,
    decode_u16_list,
    decode_versions,
    encode_alpn,
    encode_u16_list,
    finished_message,
    parse_certificate,
    parse_client_hello,
    vector,
)
from tcpls.tls.hs.groups import DEFAULT_GROUPS, Group, KeyShare, respond
from tcpls.tls.hs.keyschedule import KeySchedule, hash_of, ticket_psk
from tcpls.tls.hs.signatures import (
    SIGNATURE_ALGORITHMS,
    choose_scheme,
    sign_certificate_verify,
)
from tcpls.tls.hs.tickets import AGE_TOLERANCE, ServerTicket, TicketStore
from tcpls.tls.keylog import KeyLog
from tcpls.tls.record import CipherSuite, suite_hash
from tcpls.wire.extensions import (
    DEFAULT_CODEPOINTS,
    ExtensionCodepoints,
    decode_tcpls,
    encode_token_body,
)

__all__ = ["ServerEngine"]

_PSK_DHE_KE = 1


def _u16(value: int) -> bytes:
    return value.to_bytes(2, "big")


class ServerEngine(HandshakeEngine):
    """The server's handshake (see the module)."""

    is_client = False
    __slots__ = (
        "_asked_certificate",
        "_chain",
        "_client_application_secret",
        "_client_schemes",
        "_client_verifier",
        "_cookie",
        "_first",
        "_handshake_secrets",
        "_key",
        "_leaf",
        "_max_early_data",
        "_random",
        "_retry_group",
        "_shares",
        "_ticket_age_ok",
        "_tickets",
        "_token_provider",
        "cipher_suites",
        "groups",
        "server_name",
        "skip_early_data",
    )
    HANDSHAKE_ONLY = (
        *HandshakeEngine.HANDSHAKE_ONLY,
        "_alpn_protocols",
        "_chain",
        "_client_application_secret",
        "_client_schemes",
        "_client_verifier",
        "_cookie",
        "_first",
        "_handshake_secrets",
        "_key",
        "_leaf",
        "_shares",
        "_tickets",
        "_token_provider",
        "cipher_suites",
        "groups",
    )

    def __init__(
        self,
        *,
        certificate_chain: Sequence[x509.Certificate],
        private_key: Any,
        on_secret: SecretCallback = noop_secret,
        cipher_suites: Sequence[int] | None = None,
        groups: Sequence[int] | None = None,
        alpn_protocols: Sequence[str] | None = None,
        tcpls: bool = True,
        codepoints: ExtensionCodepoints = DEFAULT_CODEPOINTS,
        ticket_store: TicketStore | None = None,
        token_provider: Callable[[], bytes | None] | None = None,
        client_verifier: CertificateVerifier | None = None,
        max_early_data: int = 0,
        keylog: KeyLog | None = None,
        random: Callable[[int], bytes] = os.urandom,
        key_shares: Sequence[KeyShare] = (),
        certificate_ders: Sequence[bytes] | None = None,
    ) -> None:
        if not certificate_chain or private_key is None:
            raise ValueError("a server needs a certificate and a private key")
        super().__init__(
            on_secret=on_secret,
            tcpls=tcpls,
            codepoints=codepoints,
            alpn_protocols=list(alpn_protocols) if alpn_protocols else None,
            keylog=keylog,
        )
        self._leaf = certificate_chain[0]
        #: The chain as sent; a server passes it encoded once (``certificate_ders``).
        self._chain = list(
            certificate_ders or (c.public_bytes(Encoding.DER) for c in certificate_chain)
        )
        self._key = private_key
        self.cipher_suites = [CipherSuite(s) for s in cipher_suites or DEFAULT_CIPHER_SUITES]
        self.groups = [Group(g) for g in groups or DEFAULT_GROUPS]
        self._tickets = ticket_store
        self._token_provider = token_provider
        self._client_verifier = client_verifier
        self._max_early_data = max_early_data
        self._random = random
        #: Our ECDHE shares by group, when given (tests replaying RFC 8448's traces).
        self._shares = {s.group: s for s in key_shares}
        #: The client's SNI host name, if it sent one.
        self.server_name: str | None = None
        #: Whether the client offered early data that is declined: its records are skipped.
        self.skip_early_data = False
        self._cookie = b""
        self._retry_group = 0
        self._first: ClientHello | None = None
        self._client_schemes: tuple[int, ...] = ()
        self._handshake_secrets: tuple[bytes, bytes] = (b"", b"")
        self._client_application_secret = b""
        self._asked_certificate = False
        self._ticket_age_ok = False

    # -- ClientHello -----------------------------------------------------------------

    def _client_hello(self, message: bytes) -> None:
        hello = parse_client_hello(message)
        exts = hello.extensions
        check_placement("CH", exts, "ClientHello")
        if hello.legacy_version <= 0x0300:
            raise ProtocolError(
                "the client offers SSL 3.0 or older", AlertDescription.protocol_version
            )
        if ExtensionType.supported_versions not in exts or TLS13 not in decode_versions(
            exts[ExtensionType.supported_versions]
        ):
            raise ProtocolError(
                "the client does not offer TLS 1.3", AlertDescription.protocol_version
            )
        if hello.compression_methods != b"\x00":
            raise IllegalParameter("a TLS 1.3 ClientHello must offer only null compression")
        if ExtensionType.pre_shared_key in exts and list(exts)[-1] != ExtensionType.pre_shared_key:
            raise IllegalParameter("pre_shared_key is not the last extension of the ClientHello")
        self.client_random = hello.random
        self.legacy_session_id = hello.legacy_session_id
        suite = next((s for s in self.cipher_suites if s in hello.cipher_suites), None)
        if suite is None:
            raise HandshakeFailure("the client offered no cipher suite the server supports")
        if ExtensionType.signature_algorithms in exts:
            self._client_schemes = decode_u16_list(
                exts[ExtensionType.signature_algorithms], "signature_algorithms"
            )
        elif ExtensionType.pre_shared_key not in exts:
            raise ProtocolError(
                "the ClientHello has no signature_algorithms", AlertDescription.missing_extension
            )
        if (ExtensionType.supported_groups in exts) != (ExtensionType.key_share in exts):
            raise ProtocolError(
                "the ClientHello must carry both supported_groups and key_share",
                AlertDescription.missing_extension,
            )
        if ExtensionType.key_share not in exts:
            raise ProtocolError(
                "the ClientHello has no key_share (PSK-only resumption is not supported)",
                AlertDescription.missing_extension,
            )
        supported = decode_u16_list(exts[ExtensionType.supported_groups], "supported_groups")
        shares = decode_client_key_shares(exts[ExtensionType.key_share])
        for share_group, _ in shares:
            if share_group not in supported:
                raise IllegalParameter("a key share for a group not in supported_groups")
        usable = {g: k for g, k in shares if g in self.groups}
        group = next((g for g in self.groups if g in usable), None)
        if group is None:
            common = next((g for g in self.groups if g in supported), None)
            if common is None:
                raise HandshakeFailure("the client supports no key exchange group we do")
            self._retry(hello, message, suite, common)
            return
        self._answer(hello, message, suite, group, usable[group])

    def _retry(self, hello: ClientHello, message: bytes, suite: CipherSuite, group: int) -> None:
        """Ask for a share in ``group`` with a HelloRetryRequest (RFC 8446 §4.1.4)."""
        self.retried = True
        self._first = hello
        self._retry_group = group
        self._cookie = secrets.token_bytes(32)
        self.cipher_suite = suite
        self.skip_early_data = ExtensionType.early_data in hello.extensions
        retry = ServerHello(
            random=HRR_RANDOM,
            legacy_session_id=hello.legacy_session_id,
            cipher_suite=suite,
            extensions={
                ExtensionType.key_share: _u16(group),
                ExtensionType.cookie: vector(self._cookie, 2),
                ExtensionType.supported_versions: _u16(TLS13),
            },
        )
        self.transcript.update(message)
        self.transcript.restart_after_retry(suite)
        self._send(Epoch.INITIAL, retry.encode())
        self.state = "wait_ch2"

    def _second_client_hello(self, message: bytes) -> None:
        hello = parse_client_hello(message)
        check_placement("CH", hello.extensions, "ClientHello")
        first = self._first
        assert first is not None and self.cipher_suite is not None
        exts = hello.extensions
        if (
            ExtensionType.cookie not in exts
            or decode_cookie(exts[ExtensionType.cookie]) != self._cookie
        ):
            raise IllegalParameter("the second ClientHello does not echo our cookie")
        if ExtensionType.early_data in exts:
            raise IllegalParameter("early_data in the ClientHello after a HelloRetryRequest")
        if (
            hello.legacy_session_id != first.legacy_session_id
            or hello.cipher_suites != first.cipher_suites
            or hello.random != first.random
        ):
            raise IllegalParameter("the second ClientHello differs from the first")
        if ExtensionType.pre_shared_key in exts and list(exts)[-1] != ExtensionType.pre_shared_key:
            raise IllegalParameter("pre_shared_key is not the last extension of the ClientHello")
        if ExtensionType.key_share not in exts:
            raise ProtocolError(
                "the second ClientHello has no key_share", AlertDescription.missing_extension
            )
        shares = decode_client_key_shares(exts[ExtensionType.key_share])
        if len(shares) != 1 or shares[0][0] != self._retry_group:
            raise IllegalParameter("the second ClientHello does not send the share we asked for")
        if ExtensionType.signature_algorithms in exts:
            self._client_schemes = decode_u16_list(
                exts[ExtensionType.signature_algorithms], "signature_algorithms"
            )
        self._answer(hello, message, self.cipher_suite, self._retry_group, shares[0][1])

    # -- the server's flight ---------------------------------------------------------

    def _answer(
        self, hello: ClientHello, message: bytes, suite: CipherSuite, group: int, share: bytes
    ) -> None:
        exts = hello.extensions
        if ExtensionType.server_name in exts:
            self.server_name = decode_server_name(exts[ExtensionType.server_name])
        self._choose_alpn(exts)
        self._check_tcpls(exts)
        psk, ticket, suite = self._resume(hello, message, suite)
        early = ticket is not None and self._accept_early(hello, ticket, suite)
        self.skip_early_data = ExtensionType.early_data in exts and not early
        self.cipher_suite = suite
        self.group = group
        if not self.transcript.started:
            self.transcript.start(suite)
        self.transcript.update(message)
        schedule = KeySchedule(suite, psk)
        self.schedule = schedule
        if early:
            self.early_data_accepted = True
            client_early = schedule.derive(b"c e traffic", self.transcript.digest())
            self._install(False, Epoch.EARLY, True, client_early)
        our_share, shared = respond(group, share, self._shares.get(Group(group)))
        extensions: dict[int, bytes] = {}
        if psk is not None:
            extensions[ExtensionType.pre_shared_key] = _u16(0)
        extensions[ExtensionType.key_share] = _u16(group) + vector(our_share, 2)
        extensions[ExtensionType.supported_versions] = _u16(TLS13)
        server_hello = ServerHello(
            random=self._random(32),
            legacy_session_id=hello.legacy_session_id,
            cipher_suite=suite,
            extensions=extensions,
            legacy_version=TLS12,
        )
        self._send(Epoch.INITIAL, server_hello.encode())
        schedule.handshake(shared)
        client_hs, server_hs = schedule.traffic_secrets(self.transcript.digest())
        self._handshake_secrets = (client_hs, server_hs)
        self._install(True, Epoch.HANDSHAKE, False, server_hs)
        if not early:
            self._install(False, Epoch.HANDSHAKE, True, client_hs)
        self._send(Epoch.HANDSHAKE, EncryptedExtensions(self._server_extensions(early)).encode())
        if psk is None:
            self._send_authentication()
        self._send(
            Epoch.HANDSHAKE,
            finished_message(schedule.finished(server_hs, self.transcript.digest())),
        )
        schedule.master()
        transcript_hash = self.transcript.digest()
        client_ap, server_ap = schedule.traffic_secrets(transcript_hash)
        self._client_application_secret = client_ap
        self._derive_exporter(transcript_hash)
        self._install(True, Epoch.ONE_RTT, False, server_ap)
        if early:
            self.state = "wait_eoed"
        elif self._asked_certificate:
            self.state = "wait_client_cert"
        else:
            self.state = "wait_finished"

    def _choose_alpn(self, exts: dict[int, bytes]) -> None:
        if ExtensionType.alpn not in exts or not self._alpn_protocols:
            return
        offered = decode_alpn(exts[ExtensionType.alpn])
        chosen = next((p for p in self._alpn_protocols if p in offered), None)
        if chosen is None:
            raise ProtocolError(
                "no ALPN protocol in common with the client",
                AlertDescription.no_application_protocol,
            )
        self.alpn_protocol = chosen

    def _check_tcpls(self, exts: dict[int, bytes]) -> None:
        cp = self.codepoints
        if not self._offer_tcpls:
            return  # a plain TLS server ignores the TCPLS extensions
        if cp.tcpls_join in exts:
            # Joins are answered by the record layer before the engine runs; a join
            # reaching a full handshake is a protocol error (design: Joins).
            raise IllegalParameter("tcpls_join in a ClientHello that starts a new session")
        if cp.tcpls in exts:
            decode_tcpls(exts[cp.tcpls])
            self.tcpls_negotiated = True

    def _server_extensions(self, early: bool) -> dict[int, bytes]:
        extensions: dict[int, bytes] = {}
        if self.alpn_protocol is not None:
            extensions[ExtensionType.alpn] = encode_alpn([self.alpn_protocol])
        if early:
            extensions[ExtensionType.early_data] = b""
        if self.tcpls_negotiated:
            cp = self.codepoints
            extensions[cp.tcpls] = b""
            token = self._token_provider() if self._token_provider else None
            if token is not None:
                self.issued_token = token
                extensions[cp.tcpls_token] = encode_token_body(token)
        return extensions

    def _send_authentication(self) -> None:
        if self._client_verifier is not None:
            self._asked_certificate = True
            request = CertificateRequest(
                b"",
                {ExtensionType.signature_algorithms: encode_u16_list(SIGNATURE_ALGORITHMS)},
            )
            self._send(Epoch.HANDSHAKE, request.encode())
        self._send(Epoch.HANDSHAKE, Certificate(b"", self._chain).encode())
        if not self._client_schemes:
            raise ProtocolError(
                "the ClientHello has no signature_algorithms", AlertDescription.missing_extension
            )
        scheme = choose_scheme(self._key, self._client_schemes, certificate=self._leaf)
        signature = sign_certificate_verify(
            self._key, scheme, self.transcript.digest(), server=True
        )
        self._send(Epoch.HANDSHAKE, CertificateVerify(scheme, signature).encode())

    # -- resumption and early data ---------------------------------------------------

    def _resume(
        self, hello: ClientHello, message: bytes, suite: CipherSuite
    ) -> tuple[bytes | None, ServerTicket | None, CipherSuite]:
        """The PSK to use (and its ticket and suite), or ``None`` for a full handshake."""
        exts = hello.extensions
        if ExtensionType.pre_shared_key not in exts:
            return None, None, suite
        if ExtensionType.psk_key_exchange_modes not in exts:
            raise ProtocolError(
                "pre_shared_key without psk_key_exchange_modes",
                AlertDescription.missing_extension,
            )
        offer = decode_pre_shared_key(exts[ExtensionType.pre_shared_key])
        modes = decode_psk_modes(exts[ExtensionType.psk_key_exchange_modes])
        if self._tickets is None or _PSK_DHE_KE not in modes:
            return None, None, suite
        identity, obfuscated_age = offer.identities[0]
        ticket = self._tickets.pop(identity)
        if ticket is None or ticket.cipher_suite not in hello.cipher_suites:
            return None, None, suite
        if ticket.cipher_suite not in self.cipher_suites:
            return None, None, suite
        if self._client_verifier is not None and ticket.peer_certificate is None:
            return None, None, suite  # a client certificate is required: a full handshake
        if self.retried and suite_hash(ticket.cipher_suite).name != suite_hash(suite).name:
            return None, None, suite
        # after a HelloRetryRequest, the suite is fixed
        ticket_suite = suite if self.retried else ticket.cipher_suite
        # The binder covers the transcript up to the truncated ClientHello.
        truncated = message[: -offer.binders_size]
        prefix_hash = self.transcript.digest() if self.transcript.started else None
        schedule = KeySchedule(ticket_suite, ticket.psk)
        if prefix_hash is None:
            binder_hash = hash_of(ticket_suite, truncated)
        else:
            # After a HelloRetryRequest: message_hash(ClientHello1) ‖ HRR ‖ truncated CH2.
            h = self.transcript.copy_hash()
            h.update(truncated)
            binder_hash = h.digest()
        expected = schedule.finished(schedule.binder_key(), binder_hash)
        if not hmac.compare_digest(expected, offer.binders[0]):
            raise ProtocolError("the PSK binder does not verify", AlertDescription.decrypt_error)
        self.session_resumed = True
        self.peer_certificate = ticket.peer_certificate  # the identity of the session
        self._ticket_age_ok = self._age_ok(ticket, obfuscated_age)
        return ticket.psk, ticket, ticket_suite

    def _age_ok(self, ticket: ServerTicket, obfuscated_age: int) -> bool:
        claimed = ((obfuscated_age - ticket.age_add) & 0xFFFFFFFF) / 1000
        actual = time.time() - ticket.issued_at
        return abs(claimed - actual) <= AGE_TOLERANCE

    def _accept_early(self, hello: ClientHello, ticket: ServerTicket, suite: CipherSuite) -> bool:
        exts = hello.extensions
        if ExtensionType.early_data not in exts or self.retried:
            return False
        if exts[ExtensionType.early_data]:
            raise DecodeError("early_data in a ClientHello must be empty")
        return (
            self._max_early_data > 0
            and ticket.max_early_data > 0
            and suite == ticket.cipher_suite
            and self.alpn_protocol == ticket.alpn_protocol
            and self.tcpls_negotiated == ticket.tcpls
            and self._ticket_age_ok
        )

    @property
    def max_early_data(self) -> int:
        """Bytes of early data this handshake accepts (0 when it declined them)."""
        return self._max_early_data if self.early_data_accepted else 0

    # -- the client's second flight ----------------------------------------------------

    def _end_of_early_data(self, message: bytes) -> None:
        if len(message) != 4:
            raise DecodeError("EndOfEarlyData is not empty")
        self.transcript.update(message)
        self._install(False, Epoch.HANDSHAKE, True, self._handshake_secrets[0])
        self.state = "wait_client_cert" if self._asked_certificate else "wait_finished"

    def _client_certificate(self, message: bytes) -> None:
        certificate = parse_certificate(message)
        if certificate.context:
            raise IllegalParameter("the client's Certificate has a request context")
        if not certificate.certificates:
            raise ProtocolError(
                "the client sent no certificate (one is required)",
                AlertDescription.certificate_required,
            )
        chain = parse_certificate_chain(certificate.certificates)
        assert self._client_verifier is not None
        self._client_verifier.verify_client(chain)
        self.peer_certificate = chain[0]
        self.transcript.update(message)
        self.state = "wait_client_cv"

    def _client_certificate_verify(self, message: bytes) -> None:
        self._verify_peer_signature(message)
        self.state = "wait_finished"

    def _finished(self, message: bytes) -> None:
        schedule = self.schedule
        assert schedule is not None and self.cipher_suite is not None
        self._verify_peer_finished(message, self._handshake_secrets[0])
        self._install(False, Epoch.ONE_RTT, True, self._client_application_secret)
        resumption = schedule.derive(b"res master", self.transcript.digest())
        self.state = "connected"
        if self._tickets is not None:
            self._issue_ticket(resumption)

    def _issue_ticket(self, resumption_secret: bytes) -> None:
        assert self._tickets is not None and self.cipher_suite is not None
        nonce = b"\x00\x00"  # one ticket per handshake (two bytes, as RFC 8448 shows)
        age_add = int.from_bytes(secrets.token_bytes(4), "big")
        max_early = self._max_early_data
        ticket = ServerTicket(
            psk=ticket_psk(self.cipher_suite, resumption_secret, nonce),
            cipher_suite=self.cipher_suite,
            issued_at=time.time(),
            lifetime=self._tickets.lifetime,
            age_add=age_add,
            max_early_data=max_early,
            alpn_protocol=self.alpn_protocol,
            tcpls=self.tcpls_negotiated,
            peer_certificate=self.peer_certificate,
        )
        label = self._tickets.issue(ticket)
        extensions: dict[int, bytes] = {}
        if max_early:
            extensions[ExtensionType.early_data] = max_early.to_bytes(4, "big")
        nst = NewSessionTicket(ticket.lifetime, age_add, nonce, label, extensions)
        self._send(Epoch.ONE_RTT, nst.encode(), transcript=False)

    TABLE: ClassVar[Mapping[str, Mapping[int, Handler]]] = {
        "start": {HandshakeType.client_hello: _client_hello},
        "wait_ch2": {HandshakeType.client_hello: _second_client_hello},
        "wait_eoed": {HandshakeType.end_of_early_data: _end_of_early_data},
        "wait_client_cert": {HandshakeType.certificate: _client_certificate},
        "wait_client_cv": {HandshakeType.certificate_verify: _client_certificate_verify},
        "wait_finished": {HandshakeType.finished: _finished},
    }
