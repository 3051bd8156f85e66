"""What the client and server handshakes share: epochs, secrets out, the message table.

A :class:`HandshakeEngine` is sans-I/O: it is fed whole handshake messages (the record
layer reassembles them) and returns the messages to send, per :class:`Epoch`, in the order
they must be sent. Traffic secrets go out through a callback *before* the messages of the
previous epoch are returned, so the record layer keeps one write key per epoch.

Each side is a state machine written as a table: for every state, the message types it
accepts and the method that handles each. Any other message is an ``unexpected_message``
(RFC 8446 §6.2). The client's table is in :mod:`tcpls.tls.hs.client`, the server's in
:mod:`tcpls.tls.hs.server`.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Mapping
from enum import IntEnum
from typing import Any, ClassVar

from cryptography import x509

from tcpls.errors import (
    AlertDescription,
    DecodeError,
    IllegalParameter,
    ProtocolError,
    UnexpectedMessage,
)
from tcpls.tls.hs.codec import (
    ExtensionType,
    HandshakeType,
    finished_message,
    parse_certificate_verify,
)
from tcpls.tls.hs.keyschedule import KeySchedule, Transcript
from tcpls.tls.hs.signatures import SIGNATURE_ALGORITHMS, verify_certificate_verify
from tcpls.tls.keylog import KeyLog
from tcpls.tls.record import CipherSuite, hkdf_expand_label, suite_hash
from tcpls.wire.extensions import DEFAULT_CODEPOINTS, ExtensionCodepoints

__all__ = [
    "ALLOWED_IN",
    "DEFAULT_CIPHER_SUITES",
    "Epoch",
    "Handler",
    "HandshakeEngine",
    "SecretCallback",
    "check_placement",
    "noop_secret",
]

logger = logging.getLogger("tcpls.tls")


#: Cipher suites offered and accepted by default, in preference order.
DEFAULT_CIPHER_SUITES = (
    CipherSuite.AES_256_GCM_SHA384,
    CipherSuite.AES_128_GCM_SHA256,
    CipherSuite.CHACHA20_POLY1305_SHA256,
)


class Epoch(IntEnum):
    """Key epochs of the handshake; records of each epoch use their own keys."""

    INITIAL = 0  # plaintext
    EARLY = 1  # 0-RTT: the client's early traffic keys
    HANDSHAKE = 2
    ONE_RTT = 3  # application traffic keys


#: Called for every traffic secret: ``(is_write, epoch, cipher_suite, secret)``.
SecretCallback = Callable[[bool, Epoch, CipherSuite, bytes], None]

#: NSS key log labels by (client's secret?, epoch).
_KEYLOG_LABELS = {
    (True, Epoch.EARLY): "CLIENT_EARLY_TRAFFIC_SECRET",
    (True, Epoch.HANDSHAKE): "CLIENT_HANDSHAKE_TRAFFIC_SECRET",
    (False, Epoch.HANDSHAKE): "SERVER_HANDSHAKE_TRAFFIC_SECRET",
    (True, Epoch.ONE_RTT): "CLIENT_TRAFFIC_SECRET_0",
    (False, Epoch.ONE_RTT): "SERVER_TRAFFIC_SECRET_0",
}


def noop_secret(is_write: bool, epoch: Epoch, suite: CipherSuite, secret: bytes) -> None:
    """A secret handler that drops the secret (until the record layer sets its own)."""
    return None


E = ExtensionType
#: Where each extension the engine knows may appear (RFC 8446 §4.2, RFC 8449 for
#: record_size_limit): CH ClientHello, SH ServerHello, HRR HelloRetryRequest,
#: EE EncryptedExtensions, CT Certificate entry, CR CertificateRequest, NST NewSessionTicket.
ALLOWED_IN: dict[int, frozenset[str]] = {
    E.server_name: frozenset({"CH", "EE"}),
    E.max_fragment_length: frozenset({"CH", "EE"}),
    E.status_request: frozenset({"CH", "CR", "CT"}),
    E.supported_groups: frozenset({"CH", "EE"}),
    E.signature_algorithms: frozenset({"CH", "CR"}),
    E.use_srtp: frozenset({"CH", "EE"}),
    E.heartbeat: frozenset({"CH", "EE"}),
    E.alpn: frozenset({"CH", "EE"}),
    E.signed_certificate_timestamp: frozenset({"CH", "CR", "CT"}),
    E.client_certificate_type: frozenset({"CH", "EE"}),
    E.server_certificate_type: frozenset({"CH", "EE"}),
    E.padding: frozenset({"CH"}),
    E.record_size_limit: frozenset({"CH", "EE"}),
    E.key_share: frozenset({"CH", "SH", "HRR"}),
    E.pre_shared_key: frozenset({"CH", "SH"}),
    E.psk_key_exchange_modes: frozenset({"CH"}),
    E.early_data: frozenset({"CH", "EE", "NST"}),
    E.cookie: frozenset({"CH", "HRR"}),
    E.supported_versions: frozenset({"CH", "SH", "HRR"}),
    E.certificate_authorities: frozenset({"CH", "CR"}),
    E.oid_filters: frozenset({"CR"}),
    E.post_handshake_auth: frozenset({"CH"}),
    E.signature_algorithms_cert: frozenset({"CH", "CR"}),
}


def check_placement(where: str, extensions: Mapping[int, bytes], what: str) -> None:
    """``illegal_parameter`` for a known extension that does not belong in ``where``
    (RFC 8446 §4.2); unknown types are left to the caller."""
    for ext in extensions:
        allowed = ALLOWED_IN.get(ext)
        if allowed is not None and where not in allowed:
            raise IllegalParameter(f"{ExtensionType(ext).name} does not belong in the {what}")


#: A handler of one message type in one state (a method of the side's engine).
Handler = Callable[[Any, bytes], None]


class HandshakeEngine:
    """One TLS 1.3 handshake, client or server (see the module)."""

    __slots__ = (
        "_alpn_protocols",
        "_keylog",
        "_offer_tcpls",
        "_on_secret",
        "_out",
        "alpn_protocol",
        "cipher_suite",
        "client_random",
        "codepoints",
        "early_data_accepted",
        "exporter_secret",
        "group",
        "issued_token",
        "legacy_session_id",
        "peer_certificate",
        "peer_token",
        "retried",
        "schedule",
        "session_resumed",
        "state",
        "tcpls_negotiated",
        "transcript",
    )

    #: state → {message type: handler}; filled by each side.
    TABLE: ClassVar[Mapping[str, Mapping[int, Handler]]] = {}
    #: What only the handshake needs: :meth:`finish` drops it (each side adds its own).
    HANDSHAKE_ONLY: ClassVar[tuple[str, ...]] = ("transcript", "schedule")
    is_client: bool

    def __init__(
        self,
        *,
        on_secret: SecretCallback = noop_secret,
        tcpls: bool = True,
        codepoints: ExtensionCodepoints = DEFAULT_CODEPOINTS,
        alpn_protocols: list[str] | tuple[str, ...] | None = None,
        keylog: KeyLog | None = None,
    ) -> None:
        self.codepoints = codepoints
        self._on_secret = on_secret
        self._offer_tcpls = tcpls
        self._keylog = keylog
        self._alpn_protocols = list(alpn_protocols) if alpn_protocols else []
        self.state = "start"
        self.transcript = Transcript()
        self.schedule: KeySchedule | None = None
        self._out: list[tuple[Epoch, bytes]] = []
        #: Whether TCPLS was negotiated.
        self.tcpls_negotiated = False
        #: Client: the token received in ``tcpls_token`` (sequence 1), if any.
        self.peer_token: bytes | None = None
        #: Server: the token sent in ``tcpls_token`` (sequence 1), if any.
        self.issued_token: bytes | None = None
        self.exporter_secret: bytes | None = None
        self.cipher_suite: CipherSuite | None = None
        #: The negotiated key exchange group (``None`` for a PSK-only handshake).
        self.group: int | None = None
        self.client_random: bytes | None = None
        self.legacy_session_id = b""
        self.session_resumed = False
        self.alpn_protocol: str | None = None
        self.peer_certificate: x509.Certificate | None = None
        #: Whether the server accepted the client's early data.
        self.early_data_accepted = False
        #: Whether a HelloRetryRequest was part of the handshake.
        self.retried = False

    # -- state ---------------------------------------------------------------

    @property
    def offers_tcpls(self) -> bool:
        """Whether this end speaks TCPLS (client: offers it; server: accepts it)."""
        return self._offer_tcpls

    @property
    def complete(self) -> bool:
        """Whether the handshake finished (the peer's Finished was verified)."""
        return self.state == "connected"

    def set_secret_handler(self, on_secret: SecretCallback) -> None:
        """Send the traffic secrets installed from now on to ``on_secret``."""
        self._on_secret = on_secret

    def detach(self, *, ended: bool = False) -> None:
        """Drop the callbacks into the owners (the handshake is over or the session ended)."""
        self._on_secret = noop_secret

    def finish(self) -> None:
        """The handshake completed: drop what only it needed (:attr:`HANDSHAKE_ONLY`: the
        transcript, the key schedule, key shares, handshake secrets, what a server signs
        with), keeping what is read afterwards: the negotiated parameters, the exporter
        secret, a client's tickets (design: Idle memory)."""
        for name in self.HANDSHAKE_ONLY:
            if hasattr(self, name):
                delattr(self, name)

    # -- driving -------------------------------------------------------------

    def handle_message(self, message: bytes) -> list[tuple[Epoch, bytes]]:
        """Process one complete handshake message; return what to send, by epoch."""
        if len(message) < 4:
            raise DecodeError("a handshake message shorter than its header")
        handlers = self.TABLE.get(self.state, {})
        handler = handlers.get(message[0])
        if handler is None:
            try:
                kind = HandshakeType(message[0]).name.replace("_", " ")
            except ValueError:
                kind = f"handshake message of type {message[0]}"
            raise UnexpectedMessage(f"unexpected {kind} (handshake state: {self.state})")
        try:
            handler(self, message)
        except ProtocolError as error:
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("handshake failed: %s", error)
            raise
        return self._take_output()

    def _take_output(self) -> list[tuple[Epoch, bytes]]:
        merged: list[tuple[Epoch, bytes]] = []
        for epoch, data in self._out:
            if merged and merged[-1][0] is epoch:
                merged[-1] = (epoch, merged[-1][1] + data)
            else:
                merged.append((epoch, data))
        self._out = []
        return merged

    def _send(self, epoch: Epoch, message: bytes, *, transcript: bool = True) -> None:
        if transcript:
            self.transcript.update(message)
        self._out.append((epoch, message))

    def _install(self, is_write: bool, epoch: Epoch, client_secret: bool, secret: bytes) -> None:
        assert self.cipher_suite is not None
        self._log_secret(_KEYLOG_LABELS[(client_secret, epoch)], secret)
        self._on_secret(is_write, epoch, self.cipher_suite, secret)

    def _log_secret(self, label: str, secret: bytes) -> None:
        if self._keylog is not None and self.client_random is not None:
            try:
                self._keylog.write(label, self.client_random, secret)
            except OSError as exc:
                logger.warning("cannot write key log %s: %s", self._keylog.path, exc)
                self._keylog = None

    def _verify_peer_signature(self, message: bytes) -> None:
        """The peer's CertificateVerify, over the transcript so far (RFC 8446 §4.4.3)."""
        verify = parse_certificate_verify(message)
        assert self.peer_certificate is not None
        verify_certificate_verify(
            self.peer_certificate,
            verify.scheme,
            verify.signature,
            self.transcript.digest(),
            server=self.is_client,
            offered=SIGNATURE_ALGORITHMS,
        )
        self.transcript.update(message)

    def _verify_peer_finished(self, message: bytes, base_key: bytes) -> None:
        """The peer's Finished: its length (``decode_error``) and value (``decrypt_error``)."""
        assert self.schedule is not None
        who = "server" if self.is_client else "client"
        if len(message) != 4 + self.schedule.hash_size:
            raise DecodeError(f"the {who}'s Finished has the wrong length")
        expected = finished_message(self.schedule.finished(base_key, self.transcript.digest()))
        if not hmac.compare_digest(expected, message):
            raise ProtocolError(
                f"the {who}'s Finished does not verify", AlertDescription.decrypt_error
            )
        self.transcript.update(message)

    def _derive_exporter(self, transcript_hash: bytes) -> None:
        assert self.schedule is not None
        self.exporter_secret = self.schedule.derive(b"exp master", transcript_hash)
        self._log_secret("EXPORTER_SECRET", self.exporter_secret)

    # -- exporter ------------------------------------------------------------

    def export_keying_material(self, label: bytes, context: bytes, length: int) -> bytes:
        """TLS-Exporter of RFC 8446 §7.5 (available once the handshake completed)."""
        if self.exporter_secret is None or self.cipher_suite is None:
            raise RuntimeError("the exporter secret is not available before the handshake")
        from cryptography.hazmat.primitives import hashes

        algorithm = suite_hash(self.cipher_suite)
        empty = hashes.Hash(suite_hash(self.cipher_suite)).finalize()
        size = algorithm.digest_size
        derived = hkdf_expand_label(algorithm, self.exporter_secret, label, empty, size)
        h = hashes.Hash(suite_hash(self.cipher_suite))
        h.update(context)
        return hkdf_expand_label(algorithm, derived, b"exporter", h.finalize(), length)
