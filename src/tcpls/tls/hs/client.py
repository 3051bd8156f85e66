"""The client side of the TLS 1.3 handshake (RFC 8446 §2, §4), as a table of states.

::

    start ──ClientHello──▶ wait_sh ──HelloRetryRequest (once)──▶ wait_sh
    wait_sh ──ServerHello──▶ wait_ee ──EncryptedExtensions──▶ wait_cert_cr (full)
                                                           └─▶ wait_finished (PSK)
    wait_cert_cr ──CertificateRequest──▶ wait_cert ──Certificate──▶ wait_cv
    wait_cert_cr ──Certificate──▶ wait_cv ──CertificateVerify──▶ wait_finished
    wait_finished ──Finished──▶ connected ──NewSessionTicket──▶ connected

The client offers X25519MLKEM768 first with a share for its first two groups (design: Key
exchange groups), resumes with a ticket when given one (PSK with (EC)DHE only), and sends
early data only when the ticket allows it and the application asked (design: Early data).
"""

from __future__ import annotations

import ipaddress
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tcpls.errors import (
    AlertDescription,
    DecodeError,
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
    DOWNGRADE_SENTINELS,
    TLS13,
    Certificate,
    CertificateVerify,
    ClientHello,
    ExtensionType,
    HandshakeType,
    decode_alpn,
    decode_cookie,
    decode_server_key_share,
    decode_u16,
    decode_u16_list,
    encode_alpn,
    encode_client_key_shares,
    encode_pre_shared_key,
    encode_server_name,
    encode_u16_list,
    finished_message,
    handshake_message,
    message_hash,
    parse_certificate,
    parse_certificate_request,
    parse_encrypted_extensions,
    parse_new_session_ticket,
    parse_server_hello,
    vector,
)
from tcpls.tls.hs.groups import DEFAULT_GROUPS, Group, KeyShare
from tcpls.tls.hs.keyschedule import KeySchedule, hash_of, ticket_psk
from tcpls.tls.hs.signatures import (
    CERTIFICATE_SIGNATURE_ALGORITHMS,
    SIGNATURE_ALGORITHMS,
    choose_scheme,
    sign_certificate_verify,
)
from tcpls.tls.hs.tickets import MAX_TICKET_LIFETIME, SessionTicket
from tcpls.tls.keylog import KeyLog
from tcpls.tls.record import CipherSuite, suite_hash
from tcpls.wire.extensions import (
    DEFAULT_CODEPOINTS,
    ExtensionCodepoints,
    decode_tcpls,
    decode_token_body,
)

__all__ = ["ClientEngine"]

_PSK_DHE_KE = 1
#: Extensions a server may put in EncryptedExtensions without our asking.
_EE_UNSOLICITED = {ExtensionType.supported_groups}


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class ClientEngine(HandshakeEngine):
    """The client's handshake (see the module)."""

    is_client = True
    HANDSHAKE_ONLY = (
        *HandshakeEngine.HANDSHAKE_ONLY,
        "_application_secrets",
        "_first_hello",
        "_handshake_secrets",
        "_hello",
        "_key",
        "_psk_schedule",
        "_shares",
    )

    def __init__(
        self,
        *,
        on_secret: SecretCallback = noop_secret,
        server_name: str | None = None,
        verify: bool = True,
        cafile: str | None = None,
        cadata: bytes | None = None,
        verifier: CertificateVerifier | None = None,
        certificate_chain: Sequence[x509.Certificate] = (),
        private_key: Any = None,
        cipher_suites: Sequence[int] | None = None,
        groups: Sequence[int] | None = None,
        alpn_protocols: Sequence[str] | None = None,
        tcpls: bool = True,
        codepoints: ExtensionCodepoints = DEFAULT_CODEPOINTS,
        session_ticket: SessionTicket | None = None,
        early_data: bool = False,
        keylog: KeyLog | None = None,
        random: Callable[[int], bytes] = os.urandom,
        key_shares: Sequence[KeyShare] | None = None,
    ) -> None:
        super().__init__(
            on_secret=on_secret,
            tcpls=tcpls,
            codepoints=codepoints,
            alpn_protocols=list(alpn_protocols) if alpn_protocols else None,
            keylog=keylog,
        )
        self.server_name = server_name
        self._verify = verify
        self._verifier = verifier
        if verify and verifier is None:
            self._verifier = CertificateVerifier(cafile=cafile, cadata=cadata)
        self._chain = list(certificate_chain)
        self._key = private_key
        self.cipher_suites = [CipherSuite(s) for s in cipher_suites or DEFAULT_CIPHER_SUITES]
        self.groups = [Group(g) for g in groups or DEFAULT_GROUPS]
        self._random = random
        self._shares = {s.group: s for s in key_shares} if key_shares else {}
        ticket = session_ticket
        if ticket is not None and (
            not ticket.is_valid
            or ticket.cipher_suite not in self.cipher_suites
            or (server_name is not None and ticket.server_name != server_name)
        ):
            ticket = None  # expired, or for another server: a full handshake
        self._ticket = ticket
        #: Whether early data is offered (the application may send it once keys exist).
        self.early_data_offered = bool(
            early_data and ticket is not None and ticket.max_early_data > 0
        )
        self._psk_schedule: KeySchedule | None = None
        self._hello: ClientHello | None = None
        self._first_hello = b""
        self._hrr_suite: int | None = None
        self._handshake_secrets: tuple[bytes, bytes] = (b"", b"")
        self._application_secrets: tuple[bytes, bytes] = (b"", b"")
        self._resumption_secret: bytes | None = None
        self._certificate_requested: bytes | None = None
        self._requested_schemes: tuple[int, ...] = ()
        self._psk_accepted = False
        #: Tickets received after the handshake, oldest first.
        self.session_tickets: list[SessionTicket] = []

    @property
    def early_data_tcpls(self) -> bool:
        """Whether early data carries TCPLS frames: the resumed session negotiated TCPLS."""
        return bool(self.early_data_offered and self._ticket is not None and self._ticket.tcpls)

    @property
    def max_early_data(self) -> int:
        """Bytes of early data the ticket allows (0 when none is offered)."""
        return self._ticket.max_early_data if self.early_data_offered and self._ticket else 0

    # -- ClientHello ---------------------------------------------------------------

    def start(self) -> list[tuple[Epoch, bytes]]:
        """Produce the ClientHello (and install the early keys when early data is offered)."""
        if self.state != "start":
            raise RuntimeError("the handshake already started")
        self.client_random = self._random(32)
        self.legacy_session_id = self._random(32)  # middlebox compatibility mode
        for group in self.groups[:2]:
            if group not in self._shares:
                self._shares[group] = KeyShare(group)
        extensions: dict[int, bytes] = {}
        if self.server_name and not _is_ip(self.server_name):
            extensions[ExtensionType.server_name] = encode_server_name(self.server_name)
        extensions[ExtensionType.supported_groups] = encode_u16_list(self.groups)
        extensions[ExtensionType.signature_algorithms] = encode_u16_list(SIGNATURE_ALGORITHMS)
        extensions[ExtensionType.signature_algorithms_cert] = encode_u16_list(
            CERTIFICATE_SIGNATURE_ALGORITHMS
        )
        if self._alpn_protocols:
            extensions[ExtensionType.alpn] = encode_alpn(self._alpn_protocols)
        extensions[ExtensionType.supported_versions] = vector(TLS13.to_bytes(2, "big"), 1)
        extensions[ExtensionType.psk_key_exchange_modes] = vector(bytes((_PSK_DHE_KE,)), 1)
        extensions[ExtensionType.key_share] = self._key_share_extension()
        if self._offer_tcpls:
            extensions[self.codepoints.tcpls] = b""
        if self.early_data_offered:
            extensions[ExtensionType.early_data] = b""
        hello = ClientHello(
            random=self.client_random,
            legacy_session_id=self.legacy_session_id,
            cipher_suites=tuple(self.cipher_suites),
            extensions=extensions,
        )
        message = self._finish_hello(hello, b"")
        self._first_hello = message
        self.state = "wait_sh"
        self._send(Epoch.INITIAL, message)
        if self.early_data_offered:
            assert self._ticket is not None and self._psk_schedule is not None
            self.cipher_suite = self._ticket.cipher_suite
            early = self._psk_schedule.derive(b"c e traffic", hash_of(self.cipher_suite, message))
            self._install(True, Epoch.EARLY, True, early)
        return self._take_output()

    def _key_share_extension(self) -> bytes:
        return encode_client_key_shares([(g, s.public) for g, s in self._shares.items()])

    def _finish_hello(self, hello: ClientHello, prefix: bytes) -> bytes:
        """Encode ``hello``, with the PSK binder over ``prefix`` ‖ the truncated hello."""
        self._hello = hello
        ticket = self._ticket
        if ticket is None:
            hello.extensions.pop(ExtensionType.pre_shared_key, None)
            return hello.encode()
        suite = ticket.cipher_suite
        size = suite_hash(suite).digest_size
        identity = [(ticket.ticket, ticket.obfuscated_age())]
        hello.extensions.pop(ExtensionType.pre_shared_key, None)
        hello.extensions[ExtensionType.pre_shared_key] = encode_pre_shared_key(
            identity, [bytes(size)]
        )
        draft = hello.encode()
        truncated = draft[: -(2 + 1 + size)]
        self._psk_schedule = KeySchedule(suite, ticket.psk)
        binder_key = self._psk_schedule.binder_key()
        binder = self._psk_schedule.finished(binder_key, hash_of(suite, prefix + truncated))
        hello.extensions[ExtensionType.pre_shared_key] = encode_pre_shared_key(identity, [binder])
        return hello.encode()

    # -- ServerHello ---------------------------------------------------------------

    def _server_hello(self, message: bytes) -> None:
        sh = parse_server_hello(message)
        if sh.is_retry_request:
            self._retry(sh, message)
            return
        exts = sh.extensions
        if ExtensionType.supported_versions not in exts:
            if sh.random[-8:] in DOWNGRADE_SENTINELS:
                raise IllegalParameter("the ServerHello carries a downgrade sentinel")
            raise ProtocolError(
                "the server does not support TLS 1.3", AlertDescription.protocol_version
            )
        if decode_u16(exts[ExtensionType.supported_versions], "supported_versions") != TLS13:
            raise IllegalParameter("the ServerHello selects a version other than TLS 1.3")
        if sh.legacy_version <= 0x0300:  # otherwise ignored (RFC 8446 §4.2.1, §D.5)
            raise ProtocolError(
                "the ServerHello's legacy_version is SSL 3.0 or older",
                AlertDescription.protocol_version,
            )
        self._check_common(sh.legacy_session_id, sh.cipher_suite, sh.compression_method)
        if self._hrr_suite is not None and sh.cipher_suite != self._hrr_suite:
            raise IllegalParameter("the ServerHello's suite differs from the HelloRetryRequest's")
        for ext in exts:
            if ext not in (
                ExtensionType.supported_versions,
                ExtensionType.key_share,
                ExtensionType.pre_shared_key,
            ):
                self._unexpected_extension(ext, "ServerHello")
        suite = CipherSuite(sh.cipher_suite)
        psk: bytes | None = None
        if ExtensionType.pre_shared_key in exts:
            selected = decode_u16(exts[ExtensionType.pre_shared_key], "pre_shared_key")
            ticket = self._ticket
            hello = self._hello
            if (
                ticket is None
                or hello is None
                or ExtensionType.pre_shared_key not in hello.extensions
            ):
                raise ProtocolError(
                    "the server selected a PSK we did not offer",
                    AlertDescription.unsupported_extension,
                )
            if selected != 0:
                raise IllegalParameter("the server selected a PSK identity we did not offer")
            if suite_hash(suite).name != suite_hash(ticket.cipher_suite).name:
                raise IllegalParameter("the server's suite does not fit the resumed session")
            psk = ticket.psk
            self._psk_accepted = self.session_resumed = True
            if ticket.server_certificate is not None:  # the same peer as the session's
                self.peer_certificate = x509.load_der_x509_certificate(ticket.server_certificate)
        if ExtensionType.key_share not in exts:
            if psk is not None:  # we offered psk_dhe_ke only (RFC 8446 §4.2.11)
                raise IllegalParameter("the ServerHello takes our PSK without a key share")
            raise ProtocolError(
                "the ServerHello has no key_share", AlertDescription.missing_extension
            )
        group, server_share = decode_server_key_share(exts[ExtensionType.key_share])
        share = next((s for g, s in self._shares.items() if g == group), None)
        if share is None:
            raise IllegalParameter("the server's key share is in a group we sent no share for")
        shared = share.exchange(server_share)
        self.group = group
        self.cipher_suite = suite
        if not self.transcript.started:
            self.transcript.start(suite)
        self.transcript.update(message)
        schedule = KeySchedule(suite, psk)
        schedule.handshake(shared)
        self.schedule = schedule
        self._shares = {}
        client, server = schedule.traffic_secrets(self.transcript.digest())
        self._handshake_secrets = (client, server)
        self._install(True, Epoch.HANDSHAKE, True, client)
        self._install(False, Epoch.HANDSHAKE, False, server)
        self.state = "wait_ee"

    def _check_common(self, session_id: bytes, suite: int, compression: int) -> None:
        if session_id != self.legacy_session_id:
            raise IllegalParameter("the server did not echo our legacy_session_id")
        if suite not in self.cipher_suites:
            raise IllegalParameter("the server selected a cipher suite we did not offer")
        if compression != 0:
            raise IllegalParameter("the server selected a compression method")

    def _unexpected_extension(self, ext: int, where: str) -> None:
        hello = self._hello
        if hello is not None and ext in hello.extensions:
            raise IllegalParameter(f"extension {ext} does not belong in the {where}")
        raise ProtocolError(
            f"the {where} carries extension {ext}, which we did not offer",
            AlertDescription.unsupported_extension,
        )

    def _retry(self, hrr: Any, message: bytes) -> None:
        """HelloRetryRequest: answer with a second ClientHello (RFC 8446 §4.1.4)."""
        if self.retried:
            raise ProtocolError("a second HelloRetryRequest", AlertDescription.unexpected_message)
        self.retried = True
        exts = hrr.extensions
        if hrr.legacy_version <= 0x0300:
            raise ProtocolError(
                "the HelloRetryRequest's legacy_version is SSL 3.0 or older",
                AlertDescription.protocol_version,
            )
        self._check_common(hrr.legacy_session_id, hrr.cipher_suite, hrr.compression_method)
        if ExtensionType.supported_versions not in exts:
            raise ProtocolError(
                "a HelloRetryRequest without supported_versions",
                AlertDescription.missing_extension,
            )
        if decode_u16(exts[ExtensionType.supported_versions], "supported_versions") != TLS13:
            raise IllegalParameter("the HelloRetryRequest selects a version other than TLS 1.3")
        for ext in exts:
            if ext not in (
                ExtensionType.supported_versions,
                ExtensionType.key_share,
                ExtensionType.cookie,
            ):
                self._unexpected_extension(ext, "HelloRetryRequest")
        hello = self._hello
        assert hello is not None
        changed = False
        if ExtensionType.key_share in exts:
            group = decode_u16(exts[ExtensionType.key_share], "key_share")
            if group not in self.groups:
                raise IllegalParameter("the HelloRetryRequest asks for a group we do not offer")
            if group in self._shares:
                raise IllegalParameter(
                    "the HelloRetryRequest asks for a group we already sent a share for"
                )
            self._shares = {Group(group): KeyShare(group)}
            hello.extensions[ExtensionType.key_share] = self._key_share_extension()
            changed = True
        if ExtensionType.cookie in exts:
            cookie = decode_cookie(exts[ExtensionType.cookie])
            hello.extensions[ExtensionType.cookie] = vector(cookie, 2)
            changed = True
        if not changed:
            raise IllegalParameter("the HelloRetryRequest would not change the ClientHello")
        suite = CipherSuite(hrr.cipher_suite)
        self._hrr_suite = suite
        self.cipher_suite = suite
        self.transcript.restart_after_retry(suite)
        self.transcript.update(message)
        # No early data after a HelloRetryRequest (RFC 8446 §4.2.10).
        hello.extensions.pop(ExtensionType.early_data, None)
        self.early_data_offered = False
        ticket = self._ticket
        if ticket is not None and suite_hash(ticket.cipher_suite).name != suite_hash(suite).name:
            self._ticket = None  # the PSK cannot be used with this suite's hash
        # The binder covers the transcript so far: message_hash(ClientHello1) ‖ HRR.
        prefix = message_hash(hash_of(suite, self._first_hello)) + message
        self._send(Epoch.INITIAL, self._finish_hello(hello, prefix))

    # -- the server's encrypted flight ----------------------------------------------

    def _encrypted_extensions(self, message: bytes) -> None:
        ee = parse_encrypted_extensions(message)
        hello = self._hello
        assert hello is not None
        cp = self.codepoints
        check_placement("EE", ee.extensions, "EncryptedExtensions")
        for ext in ee.extensions:
            if ext not in hello.extensions and ext not in _EE_UNSOLICITED:
                if ext == cp.tcpls_token and cp.tcpls in hello.extensions:
                    continue  # checked below, with tcpls
                raise ProtocolError(
                    f"EncryptedExtensions carries extension {ext}, which we did not offer",
                    AlertDescription.unsupported_extension,
                )
        exts = ee.extensions
        if ExtensionType.alpn in exts:
            protocols = decode_alpn(exts[ExtensionType.alpn])
            if len(protocols) != 1 or protocols[0] not in self._alpn_protocols:
                raise IllegalParameter("the server selected an ALPN protocol we did not offer")
            self.alpn_protocol = protocols[0]
        if ExtensionType.early_data in exts:
            if exts[ExtensionType.early_data]:
                raise DecodeError("early_data in EncryptedExtensions must be empty")
            self.early_data_accepted = True
        if exts.get(ExtensionType.server_name):
            raise DecodeError("server_name in EncryptedExtensions must be empty")
        if cp.tcpls in exts:
            if not self._offer_tcpls:
                raise ProtocolError(
                    "server sent the tcpls extension we did not offer",
                    AlertDescription.unsupported_extension,
                )
            decode_tcpls(exts[cp.tcpls])
            self.tcpls_negotiated = True
            if cp.tcpls_token in exts:
                self.peer_token = decode_token_body(exts[cp.tcpls_token])
        elif cp.tcpls_token in exts:
            raise ProtocolError(
                "server sent tcpls_token without tcpls", AlertDescription.unsupported_extension
            )
        self.transcript.update(message)
        self.state = "wait_finished" if self._psk_accepted else "wait_cert_cr"

    def _certificate_request(self, message: bytes) -> None:
        request = parse_certificate_request(message)
        check_placement("CR", request.extensions, "CertificateRequest")
        if request.context:
            raise IllegalParameter("a CertificateRequest during the handshake has a context")
        if ExtensionType.signature_algorithms not in request.extensions:
            raise ProtocolError(
                "a CertificateRequest without signature_algorithms",
                AlertDescription.missing_extension,
            )
        self._requested_schemes = decode_u16_list(
            request.extensions[ExtensionType.signature_algorithms], "signature_algorithms"
        )
        self._certificate_requested = request.context
        self.transcript.update(message)
        self.state = "wait_cert"

    def _certificate(self, message: bytes) -> None:
        certificate = parse_certificate(message)
        if certificate.context:
            raise IllegalParameter("the server's Certificate has a request context")
        if not certificate.certificates:
            raise DecodeError("the server sent an empty Certificate")
        hello = self._hello
        assert hello is not None
        for extensions in certificate.extensions:
            check_placement("CT", extensions, "Certificate")
            for ext in extensions:
                if ext not in hello.extensions:  # they answer ours (RFC 8446 §4.4.2)
                    raise ProtocolError(
                        f"the Certificate carries extension {ext}, which we did not offer",
                        AlertDescription.unsupported_extension,
                    )
        chain = parse_certificate_chain(certificate.certificates)
        if self._verifier is not None:
            self._verifier.verify_server(chain, self.server_name)
        self.peer_certificate = chain[0]
        self.transcript.update(message)
        self.state = "wait_cv"

    def _certificate_verify(self, message: bytes) -> None:
        self._verify_peer_signature(message)
        self.state = "wait_finished"

    def _finished(self, message: bytes) -> None:
        schedule = self.schedule
        assert schedule is not None
        client_hs, server_hs = self._handshake_secrets
        self._verify_peer_finished(message, server_hs)
        schedule.master()
        transcript_hash = self.transcript.digest()
        client_ap, server_ap = schedule.traffic_secrets(transcript_hash)
        self._derive_exporter(transcript_hash)
        self._install(False, Epoch.ONE_RTT, False, server_ap)
        if self.early_data_accepted:
            self._send(Epoch.EARLY, handshake_message(HandshakeType.end_of_early_data, b""))
        if self._certificate_requested is not None:
            self._send_certificate()
        verify_data = schedule.finished(client_hs, self.transcript.digest())
        self._send(Epoch.HANDSHAKE, finished_message(verify_data))
        self._install(True, Epoch.ONE_RTT, True, client_ap)
        self._resumption_secret = schedule.derive(b"res master", self.transcript.digest())
        self.state = "connected"

    def _send_certificate(self) -> None:
        ders = [c.public_bytes(Encoding.DER) for c in self._chain] if self._key else []
        self._send(Epoch.HANDSHAKE, Certificate(b"", ders).encode())
        if ders:
            scheme = choose_scheme(self._key, self._requested_schemes, certificate=self._chain[0])
            signature = sign_certificate_verify(
                self._key, scheme, self.transcript.digest(), server=False
            )
            self._send(Epoch.HANDSHAKE, CertificateVerify(scheme, signature).encode())

    # -- after the handshake ---------------------------------------------------------

    def _new_session_ticket(self, message: bytes) -> None:
        nst = parse_new_session_ticket(message)
        check_placement("NST", nst.extensions, "NewSessionTicket")
        if nst.lifetime > MAX_TICKET_LIFETIME:
            raise IllegalParameter("a ticket lifetime over seven days")
        max_early = 0
        body = nst.extensions.get(ExtensionType.early_data)
        if body is not None:
            if len(body) != 4:
                raise DecodeError("malformed early_data in NewSessionTicket")
            max_early = int.from_bytes(body, "big")
        if nst.lifetime == 0 or self._resumption_secret is None:
            return  # a ticket that must not be used
        assert self.cipher_suite is not None
        self.session_tickets.append(
            SessionTicket(
                ticket=nst.ticket,
                psk=ticket_psk(self.cipher_suite, self._resumption_secret, nst.nonce),
                cipher_suite=self.cipher_suite,
                lifetime=nst.lifetime,
                age_add=nst.age_add,
                received_at=time.time(),
                max_early_data=max_early,
                server_name=self.server_name,
                alpn_protocol=self.alpn_protocol,
                tcpls=self.tcpls_negotiated,
                server_certificate=(
                    self.peer_certificate.public_bytes(Encoding.DER)
                    if self.peer_certificate is not None
                    else None
                ),
            )
        )

    TABLE: ClassVar[Mapping[str, Mapping[int, Handler]]] = {
        "wait_sh": {HandshakeType.server_hello: _server_hello},
        "wait_ee": {HandshakeType.encrypted_extensions: _encrypted_extensions},
        "wait_cert_cr": {
            HandshakeType.certificate_request: _certificate_request,
            HandshakeType.certificate: _certificate,
        },
        "wait_cert": {HandshakeType.certificate: _certificate},
        "wait_cv": {HandshakeType.certificate_verify: _certificate_verify},
        "wait_finished": {HandshakeType.finished: _finished},
        "connected": {HandshakeType.new_session_ticket: _new_session_ticket},
    }
