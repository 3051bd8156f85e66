"""Wire format of the TLS 1.3 handshake messages and extensions (RFC 8446 §4).

Every parse is bounds-checked: a length that overruns, bytes left after a structure, or
a vector outside the bounds the RFC gives end with ``decode_error``
(:class:`~tcpls.errors.DecodeError`). Decisions about *meaning* (which extension may
appear where, what a value must be) belong to the state machines of
:mod:`tcpls.tls.hs.client` and :mod:`tcpls.tls.hs.server`; this module only reads and
writes bytes. Messages are small frozen-free dataclasses with an ``encode`` method that
returns the whole handshake message, header included.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum

from tcpls.errors import DecodeError, IllegalParameter

__all__ = [
    "DOWNGRADE_SENTINELS",
    "HRR_RANDOM",
    "TLS12",
    "TLS13",
    "Certificate",
    "CertificateRequest",
    "CertificateVerify",
    "ClientHello",
    "EncryptedExtensions",
    "ExtensionType",
    "HandshakeType",
    "NewSessionTicket",
    "PskOffer",
    "Reader",
    "ServerHello",
    "decode_alpn",
    "decode_client_key_shares",
    "decode_cookie",
    "decode_pre_shared_key",
    "decode_psk_modes",
    "decode_server_name",
    "decode_u16",
    "decode_u16_list",
    "decode_versions",
    "encode_alpn",
    "encode_client_key_shares",
    "encode_extensions",
    "encode_pre_shared_key",
    "encode_server_name",
    "encode_u16_list",
    "handshake_message",
    "message_hash",
    "parse_certificate",
    "parse_certificate_request",
    "parse_certificate_verify",
    "parse_client_hello",
    "parse_encrypted_extensions",
    "parse_new_session_ticket",
    "parse_server_hello",
    "vector",
]

TLS12 = 0x0303  #: legacy_version of TLS 1.3 hellos and records: TLS 1.2 (RFC 8446 §4.1.2).
TLS13 = 0x0304  #: TLS 1.3 in supported_versions (RFC 8446 §4.2.1).
#: ServerHello.random of a HelloRetryRequest: SHA-256("HelloRetryRequest") (RFC 8446 §4.1.3).
HRR_RANDOM = bytes.fromhex("cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c")
#: The last 8 bytes of a ServerHello.random from a server that negotiated TLS 1.2 or
#: below although it supports TLS 1.3 (RFC 8446 §4.1.3).
DOWNGRADE_SENTINELS = (b"DOWNGRD\x01", b"DOWNGRD\x00")


class HandshakeType(IntEnum):
    """Handshake message types (RFC 8446 §4)."""

    client_hello = 1
    server_hello = 2
    new_session_ticket = 4
    end_of_early_data = 5
    encrypted_extensions = 8
    certificate = 11
    certificate_request = 13
    certificate_verify = 15
    finished = 20
    key_update = 24
    message_hash = 254


class ExtensionType(IntEnum):
    """The extension types the engine reads or writes (RFC 8446 §4.2)."""

    server_name = 0
    max_fragment_length = 1
    status_request = 5
    supported_groups = 10
    signature_algorithms = 13
    use_srtp = 14
    heartbeat = 15
    alpn = 16
    signed_certificate_timestamp = 18
    client_certificate_type = 19
    server_certificate_type = 20
    padding = 21
    record_size_limit = 28
    pre_shared_key = 41
    early_data = 42
    supported_versions = 43
    cookie = 44
    psk_key_exchange_modes = 45
    certificate_authorities = 47
    oid_filters = 48
    post_handshake_auth = 49
    signature_algorithms_cert = 50
    key_share = 51


class Reader:
    """Bounds-checked reads from bytes; any overrun is a ``decode_error``."""

    __slots__ = ("data", "pos", "what")

    def __init__(self, data: bytes, what: str = "handshake message") -> None:
        self.data = data
        self.pos = 0
        self.what = what

    def take(self, n: int) -> bytes:
        """The next ``n`` bytes."""
        end = self.pos + n
        if end > len(self.data):
            raise DecodeError(f"truncated {self.what}")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def uint(self, size: int) -> int:
        """A big-endian unsigned integer of ``size`` bytes."""
        return int.from_bytes(self.take(size), "big")

    def vector(self, length_size: int, minimum: int = 0, maximum: int | None = None) -> bytes:
        """A vector with a ``length_size``-byte length, within ``minimum..maximum`` bytes."""
        length = self.uint(length_size)
        if length < minimum or (maximum is not None and length > maximum):
            raise DecodeError(f"a vector of {length} bytes is out of bounds in the {self.what}")
        return self.take(length)

    @property
    def left(self) -> int:
        """Bytes not read yet."""
        return len(self.data) - self.pos

    def end(self) -> None:
        """Raise unless everything was read."""
        if self.pos != len(self.data):
            raise DecodeError(f"{len(self.data) - self.pos} trailing bytes in the {self.what}")


def vector(data: bytes, length_size: int) -> bytes:
    """``data`` prefixed with its length on ``length_size`` bytes."""
    return len(data).to_bytes(length_size, "big") + data


def handshake_message(msg_type: int, body: bytes) -> bytes:
    """A handshake message: type, 24-bit length, body."""
    return bytes((msg_type,)) + len(body).to_bytes(3, "big") + body


def message_hash(digest: bytes) -> bytes:
    """The synthetic message that replaces ClientHello1 in the transcript after an HRR."""
    return handshake_message(HandshakeType.message_hash, digest)


def encode_extensions(extensions: Iterable[tuple[int, bytes]]) -> bytes:
    """An extension block (always present, possibly empty)."""
    body = b"".join(struct.pack(">HH", t, len(b)) + b for t, b in extensions)
    return vector(body, 2)


def _decode_extensions(reader: Reader) -> dict[int, bytes]:
    """The extension block at the end of a message, in order; a duplicate is illegal."""
    block = Reader(reader.vector(2), reader.what)
    reader.end()
    return _extension_entries(block, reader.what)


def _extension_entries(block: Reader, what: str) -> dict[int, bytes]:
    """The extensions filling ``block``, in order; a duplicate is illegal (RFC 8446 §4.2)."""
    extensions: dict[int, bytes] = {}
    while block.left:
        ext_type = block.uint(2)
        body = block.vector(2)
        if ext_type in extensions:
            raise IllegalParameter(f"extension {ext_type} appears twice in the {what}")
        extensions[ext_type] = body
    return extensions


def _body(message: bytes, msg_type: HandshakeType) -> Reader:
    what = msg_type.name.replace("_", " ")
    if len(message) < 4 or message[0] != msg_type:
        raise DecodeError(f"not a {what} message")
    if int.from_bytes(message[1:4], "big") != len(message) - 4:
        raise DecodeError(f"the length of the {what} does not match")
    return Reader(message[4:], what)


# -- hellos --------------------------------------------------------------------------


@dataclass(slots=True)
class ClientHello:
    """A ClientHello; ``extensions`` keeps the order it was received in."""

    random: bytes
    legacy_session_id: bytes
    cipher_suites: tuple[int, ...]
    extensions: dict[int, bytes] = field(default_factory=dict)
    legacy_version: int = TLS12
    compression_methods: bytes = b"\x00"

    def encode(self) -> bytes:
        """The whole message, header included."""
        body = (
            struct.pack(">H", self.legacy_version)
            + self.random
            + vector(self.legacy_session_id, 1)
            + vector(struct.pack(f">{len(self.cipher_suites)}H", *self.cipher_suites), 2)
            + vector(self.compression_methods, 1)
            + encode_extensions(self.extensions.items())
        )
        return handshake_message(HandshakeType.client_hello, body)


def parse_client_hello(message: bytes) -> ClientHello:
    """Read a ClientHello (its meaning is checked by the server)."""
    r = _body(message, HandshakeType.client_hello)
    legacy_version = r.uint(2)
    random = r.take(32)
    session_id = r.vector(1, maximum=32)
    suites = r.vector(2, minimum=2)
    if len(suites) % 2:
        raise DecodeError("the cipher_suites list has an odd length")
    compression = r.vector(1, minimum=1)
    extensions = _decode_extensions(r) if r.left else {}
    return ClientHello(
        random=random,
        legacy_session_id=session_id,
        cipher_suites=struct.unpack(f">{len(suites) // 2}H", suites),
        extensions=extensions,
        legacy_version=legacy_version,
        compression_methods=compression,
    )


@dataclass(slots=True)
class ServerHello:
    """A ServerHello, or a HelloRetryRequest when ``random`` is :data:`HRR_RANDOM`."""

    random: bytes
    legacy_session_id: bytes
    cipher_suite: int
    extensions: dict[int, bytes] = field(default_factory=dict)
    legacy_version: int = TLS12
    compression_method: int = 0

    @property
    def is_retry_request(self) -> bool:
        """Whether this is a HelloRetryRequest."""
        return self.random == HRR_RANDOM

    def encode(self) -> bytes:
        """The whole message, header included."""
        body = (
            struct.pack(">H", self.legacy_version)
            + self.random
            + vector(self.legacy_session_id, 1)
            + struct.pack(">HB", self.cipher_suite, self.compression_method)
            + encode_extensions(self.extensions.items())
        )
        return handshake_message(HandshakeType.server_hello, body)


def parse_server_hello(message: bytes) -> ServerHello:
    """Read a ServerHello or HelloRetryRequest."""
    r = _body(message, HandshakeType.server_hello)
    legacy_version = r.uint(2)
    random = r.take(32)
    session_id = r.vector(1, maximum=32)
    suite = r.uint(2)
    compression = r.uint(1)
    extensions = _decode_extensions(r) if r.left else {}
    return ServerHello(random, session_id, suite, extensions, legacy_version, compression)


# -- server flight -------------------------------------------------------------------


@dataclass(slots=True)
class EncryptedExtensions:
    """EncryptedExtensions: the extensions that need no key exchange context."""

    extensions: dict[int, bytes] = field(default_factory=dict)

    def encode(self) -> bytes:
        """The whole message, header included."""
        return handshake_message(
            HandshakeType.encrypted_extensions, encode_extensions(self.extensions.items())
        )


def parse_encrypted_extensions(message: bytes) -> EncryptedExtensions:
    """Read EncryptedExtensions."""
    return EncryptedExtensions(
        _decode_extensions(_body(message, HandshakeType.encrypted_extensions))
    )


@dataclass(slots=True)
class CertificateRequest:
    """CertificateRequest: a server asks the client for a certificate."""

    context: bytes
    extensions: dict[int, bytes] = field(default_factory=dict)

    def encode(self) -> bytes:
        """The whole message, header included."""
        body = vector(self.context, 1) + encode_extensions(self.extensions.items())
        return handshake_message(HandshakeType.certificate_request, body)


def parse_certificate_request(message: bytes) -> CertificateRequest:
    """Read CertificateRequest."""
    r = _body(message, HandshakeType.certificate_request)
    context = r.vector(1)
    return CertificateRequest(context, _decode_extensions(r))


@dataclass(slots=True)
class Certificate:
    """Certificate: a chain of DER certificates, the end-entity first.

    ``extensions`` holds the extensions of each CertificateEntry, in the order of
    ``certificates`` (missing entries have none); the state machine decides what they may be.
    """

    context: bytes
    certificates: list[bytes]
    extensions: list[dict[int, bytes]] = field(default_factory=list)

    def encode(self) -> bytes:
        """The whole message, header included."""
        entries = b"".join(
            vector(der, 3)
            + encode_extensions((self.extensions[i] if i < len(self.extensions) else {}).items())
            for i, der in enumerate(self.certificates)
        )
        body = vector(self.context, 1) + vector(entries, 3)
        return handshake_message(HandshakeType.certificate, body)


def parse_certificate(message: bytes) -> Certificate:
    """Read Certificate, with the extensions of each entry (a duplicate is illegal)."""
    r = _body(message, HandshakeType.certificate)
    context = r.vector(1)
    entries = Reader(r.vector(3), "certificate list")
    r.end()
    certificates: list[bytes] = []
    extensions: list[dict[int, bytes]] = []
    while entries.left:
        certificates.append(entries.vector(3, minimum=1))
        block = Reader(entries.vector(2), "certificate entry extensions")
        extensions.append(_extension_entries(block, "certificate entry extensions"))
    return Certificate(context, certificates, extensions)


@dataclass(slots=True)
class CertificateVerify:
    """CertificateVerify: a signature over the transcript."""

    scheme: int
    signature: bytes

    def encode(self) -> bytes:
        """The whole message, header included."""
        body = struct.pack(">H", self.scheme) + vector(self.signature, 2)
        return handshake_message(HandshakeType.certificate_verify, body)


def parse_certificate_verify(message: bytes) -> CertificateVerify:
    """Read CertificateVerify."""
    r = _body(message, HandshakeType.certificate_verify)
    scheme = r.uint(2)
    signature = r.vector(2)  # <0..2^16-1>: an empty one decodes, and fails to verify
    r.end()
    return CertificateVerify(scheme, signature)


def finished_message(verify_data: bytes) -> bytes:
    """A Finished message."""
    return handshake_message(HandshakeType.finished, verify_data)


# -- after the handshake -------------------------------------------------------------


@dataclass(slots=True)
class NewSessionTicket:
    """NewSessionTicket (RFC 8446 §4.6.1)."""

    lifetime: int
    age_add: int
    nonce: bytes
    ticket: bytes
    extensions: dict[int, bytes] = field(default_factory=dict)

    def encode(self) -> bytes:
        """The whole message, header included."""
        body = (
            struct.pack(">II", self.lifetime, self.age_add)
            + vector(self.nonce, 1)
            + vector(self.ticket, 2)
            + encode_extensions(self.extensions.items())
        )
        return handshake_message(HandshakeType.new_session_ticket, body)


def parse_new_session_ticket(message: bytes) -> NewSessionTicket:
    """Read NewSessionTicket."""
    r = _body(message, HandshakeType.new_session_ticket)
    lifetime = r.uint(4)
    age_add = r.uint(4)
    nonce = r.vector(1)
    ticket = r.vector(2, minimum=1)
    return NewSessionTicket(lifetime, age_add, nonce, ticket, _decode_extensions(r))


# -- extension bodies ----------------------------------------------------------------


def encode_u16_list(values: Sequence[int], length_size: int = 2) -> bytes:
    """A vector of 16-bit values (supported_groups, signature_algorithms, versions)."""
    return vector(struct.pack(f">{len(values)}H", *values), length_size)


def decode_u16_list(body: bytes, what: str, length_size: int = 2) -> tuple[int, ...]:
    """A non-empty vector of 16-bit values filling ``body``."""
    r = Reader(body, what)
    data = r.vector(length_size, minimum=2)
    r.end()
    if len(data) % 2:
        raise DecodeError(f"the {what} list has an odd length")
    return struct.unpack(f">{len(data) // 2}H", data)


def decode_versions(body: bytes) -> tuple[int, ...]:
    """supported_versions of a ClientHello."""
    return decode_u16_list(body, "supported_versions", 1)


def decode_u16(body: bytes, what: str) -> int:
    """A body that is exactly one 16-bit value."""
    if len(body) != 2:
        raise DecodeError(f"malformed {what}")
    return int.from_bytes(body, "big")


def encode_client_key_shares(shares: Sequence[tuple[int, bytes]]) -> bytes:
    """key_share of a ClientHello."""
    return vector(b"".join(struct.pack(">H", g) + vector(k, 2) for g, k in shares), 2)


def decode_client_key_shares(body: bytes) -> list[tuple[int, bytes]]:
    """key_share of a ClientHello: (group, key_exchange) in order, each group once."""
    r = Reader(body, "key_share")
    entries = Reader(r.vector(2), "key_share")
    r.end()
    shares: list[tuple[int, bytes]] = []
    seen: set[int] = set()
    while entries.left:
        group = entries.uint(2)
        key = entries.vector(2, minimum=1)
        if group in seen:
            raise IllegalParameter(f"two key shares for group 0x{group:04x}")
        seen.add(group)
        shares.append((group, key))
    return shares


def decode_server_key_share(body: bytes) -> tuple[int, bytes]:
    """key_share of a ServerHello."""
    r = Reader(body, "key_share")
    group = r.uint(2)
    key = r.vector(2, minimum=1)
    r.end()
    return group, key


def encode_server_name(name: str) -> bytes:
    """server_name with one host_name."""
    host = name.encode("ascii")
    return vector(b"\x00" + vector(host, 2), 2)


def decode_server_name(body: bytes) -> str | None:
    """The host_name of a server_name extension (``None`` if it names no host)."""
    r = Reader(body, "server_name")
    names = Reader(r.vector(2, minimum=1), "server_name")
    r.end()
    host: str | None = None
    while names.left:
        name_type = names.uint(1)
        name = names.vector(2, minimum=1)
        if name_type == 0 and len(name) > 255:
            raise DecodeError("a host name in server_name longer than 255 bytes")
        if name_type == 0:
            if host is not None:
                raise IllegalParameter("two host names in server_name")
            try:
                host = name.decode("ascii")
            except UnicodeDecodeError:
                raise IllegalParameter("server_name is not an ASCII host name") from None
    return host


#: Protocol names are opaque bytes (RFC 7301 §3.1): they are UTF-8 text here, and bytes that
#: are not UTF-8 are kept as lone surrogates, so that what decodes encodes to the same bytes
#: and a name read from the peer compares equal to the same name configured here.
_ALPN_ENCODING = ("utf-8", "surrogateescape")


def encode_alpn(protocols: Sequence[str]) -> bytes:
    """application_layer_protocol_negotiation."""
    return vector(b"".join(vector(p.encode(*_ALPN_ENCODING), 1) for p in protocols), 2)


def decode_alpn(body: bytes) -> list[str]:
    """The protocol names of an ALPN extension (non-empty names, non-empty list)."""
    r = Reader(body, "ALPN extension")
    names = Reader(r.vector(2, minimum=2), "ALPN extension")
    r.end()
    protocols: list[str] = []
    while names.left:
        protocols.append(names.vector(1, minimum=1).decode(*_ALPN_ENCODING))
    return protocols


def decode_psk_modes(body: bytes) -> bytes:
    """psk_key_exchange_modes: the modes, one byte each."""
    r = Reader(body, "psk_key_exchange_modes")
    modes = r.vector(1, minimum=1)
    r.end()
    return modes


def decode_cookie(body: bytes) -> bytes:
    """The cookie extension."""
    r = Reader(body, "cookie")
    cookie = r.vector(2, minimum=1)
    r.end()
    return cookie


@dataclass(frozen=True, slots=True)
class PskOffer:
    """pre_shared_key of a ClientHello: identities with obfuscated ages, and binders."""

    identities: tuple[tuple[bytes, int], ...]
    binders: tuple[bytes, ...]

    @property
    def binders_size(self) -> int:
        """Bytes the binders list takes at the end of the ClientHello."""
        return 2 + sum(1 + len(b) for b in self.binders)


def encode_pre_shared_key(
    identities: Sequence[tuple[bytes, int]], binders: Sequence[bytes]
) -> bytes:
    """pre_shared_key of a ClientHello."""
    ids = b"".join(vector(i, 2) + struct.pack(">I", age) for i, age in identities)
    return vector(ids, 2) + vector(b"".join(vector(b, 1) for b in binders), 2)


def decode_pre_shared_key(body: bytes) -> PskOffer:
    """pre_shared_key of a ClientHello; as many binders as identities."""
    r = Reader(body, "pre_shared_key")
    ids = Reader(r.vector(2, minimum=7), "pre_shared_key identities")
    binder_list = Reader(r.vector(2, minimum=33), "pre_shared_key binders")
    r.end()
    identities: list[tuple[bytes, int]] = []
    while ids.left:
        identity = ids.vector(2, minimum=1)
        identities.append((identity, ids.uint(4)))
    binders: list[bytes] = []
    while binder_list.left:
        binders.append(binder_list.vector(1, minimum=32, maximum=255))
    if len(binders) != len(identities):
        raise IllegalParameter("pre_shared_key has not one binder per identity")
    return PskOffer(tuple(identities), tuple(binders))
