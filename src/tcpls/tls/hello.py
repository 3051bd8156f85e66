"""Hello messages of a TCPLS join (draft-04 §4.2.1, design: Joins), and a light ClientHello parse.

A server must know whether a new TCP connection starts a session or joins one
before it runs a handshake: :func:`parse_client_hello` reads just what that
decision needs (the session id, the cipher suites and the raw extensions) from
a ClientHello, checking every length. A full handshake is then left to the
handshake engine, which parses the message again completely.

A join exchanges hellos that look like the start of a TLS 1.3 handshake to
middleboxes (draft-04 §4.3) but no key exchange happens: the joined connection
is protected with the session's application keys. The key shares are therefore
32 random bytes, not generated keys. These codecs are plain TLS wire format,
written with :mod:`struct`.
"""

from __future__ import annotations

import ipaddress
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from tcpls.errors import DecodeError, HandshakeFailure, IllegalParameter, UnexpectedMessage
from tcpls.tls.record import CipherSuite
from tcpls.wire.extensions import DEFAULT_CODEPOINTS, ExtensionCodepoints, encode_token_body

__all__ = [
    "EARLY_DATA",
    "ClientHelloInfo",
    "build_join_client_hello",
    "build_join_server_hello",
    "check_client_hello",
    "check_tcpls_placement",
    "parse_client_hello",
    "parse_join_server_hello",
]

_CLIENT_HELLO = 1
_SERVER_HELLO = 2
_TLS12 = 0x0303
_TLS13 = 0x0304
_EXT_SERVER_NAME = 0
_EXT_SUPPORTED_GROUPS = 10
_EXT_SIGNATURE_ALGORITHMS = 13
_EXT_SUPPORTED_VERSIONS = 43
_EXT_KEY_SHARE = 51
#: The early_data extension (RFC 8446 §4.2.10).
EARLY_DATA = 42
_NEW_SESSION_TICKET = 4
_ENCRYPTED_EXTENSIONS = 8
_CERTIFICATE = 11
_CERTIFICATE_REQUEST = 13
_X25519 = 0x001D
_SECP256R1 = 0x0017
#: ServerHello.random of a HelloRetryRequest (RFC 8446 §4.1.3).
_HRR_RANDOM = bytes.fromhex("cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c")
#: What a join ClientHello lists, as a full handshake's ClientHello would.
_SIGNATURE_ALGORITHMS = (0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0807)
_ALL_SUITES = (
    CipherSuite.AES_256_GCM_SHA384,
    CipherSuite.AES_128_GCM_SHA256,
    CipherSuite.CHACHA20_POLY1305_SHA256,
)


@dataclass(frozen=True, slots=True)
class ClientHelloInfo:
    """What a server needs from a ClientHello before deciding how to answer it."""

    legacy_session_id: bytes
    cipher_suites: tuple[int, ...]
    #: Every extension, by type, with its raw body.
    extensions: dict[int, bytes]

    def has_extension(self, codepoint: int) -> bool:
        """Whether the ClientHello carried this extension."""
        return codepoint in self.extensions

    def key_share_groups(self) -> list[int]:
        """The groups of the ClientHello's key shares, in order (raises on a bad body)."""
        body = self.extensions.get(_EXT_KEY_SHARE)
        if body is None:
            return []
        shares = _Reader(_Reader(body).vector(2))
        groups: list[int] = []
        while shares.left:
            groups.append(shares.uint(2))
            if not shares.vector(2):
                raise DecodeError("empty key_exchange in a key share")
        return groups


class _Reader:
    """Bounds-checked reads from a message; any overrun is a ``decode_error``."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise DecodeError("truncated hello message")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def uint(self, size: int) -> int:
        end = self.pos + size
        if end > len(self.data):
            raise DecodeError("truncated hello message")
        value = int.from_bytes(self.data[self.pos : end], "big")
        self.pos = end
        return value

    def vector(self, length_size: int) -> bytes:
        data, start = self.data, self.pos + length_size  # (take(uint()), inlined)
        if start > len(data):
            raise DecodeError("truncated hello message")
        end = start + int.from_bytes(data[self.pos : start], "big")
        if end > len(data):
            raise DecodeError("truncated hello message")
        self.pos = end
        return data[start:end]

    @property
    def left(self) -> int:
        return len(self.data) - self.pos


def _header(reader: _Reader, expected_type: int) -> None:
    if reader.uint(1) != expected_type:
        raise UnexpectedMessage("unexpected handshake message type")
    if reader.uint(3) != reader.left:
        raise DecodeError("hello message length does not match")


def _extensions(reader: _Reader) -> dict[int, bytes]:
    extensions: dict[int, bytes] = {}
    if not reader.left:
        return extensions
    block = reader.vector(2)
    if reader.left:
        raise DecodeError("bytes after the extensions of a hello message")
    # _Reader's checks, inlined: this runs for every extension of every hello
    pos, end = 0, len(block)
    while pos < end:
        if pos + 2 > end:
            raise DecodeError("truncated hello message")
        ext_type = int.from_bytes(block[pos : pos + 2], "big")
        if ext_type in extensions:
            raise DecodeError(f"duplicate extension {ext_type}")
        if pos + 4 > end:
            raise DecodeError("truncated hello message")
        start = pos + 4
        pos = start + int.from_bytes(block[pos + 2 : start], "big")
        if pos > end:
            raise DecodeError("truncated hello message")
        extensions[ext_type] = block[start:pos]
    return extensions


def parse_client_hello(message: bytes) -> ClientHelloInfo:
    """Read the session id, cipher suites and extensions of a ClientHello message."""
    reader = _Reader(message)
    _header(reader, _CLIENT_HELLO)
    reader.take(2 + 32)  # legacy_version, random
    session_id = reader.vector(1)
    if len(session_id) > 32:
        raise DecodeError("legacy_session_id longer than 32 bytes")
    suites = reader.vector(2)
    if not suites or len(suites) % 2:
        raise DecodeError("malformed cipher_suites")
    if not reader.vector(1):
        raise DecodeError("empty legacy_compression_methods")
    return ClientHelloInfo(
        legacy_session_id=session_id,
        cipher_suites=struct.unpack(f">{len(suites) // 2}H", suites),
        extensions=_extensions(reader),
    )


def _extension(ext_type: int, body: bytes) -> bytes:
    return struct.pack(">HH", ext_type, len(body)) + body


def _u16_list(values: Sequence[int], length_size: int = 2) -> bytes:
    body = struct.pack(f">{len(values)}H", *values)
    return len(body).to_bytes(length_size, "big") + body


def _handshake(msg_type: int, body: bytes) -> bytes:
    return bytes((msg_type,)) + len(body).to_bytes(3, "big") + body


def build_join_client_hello(
    token: bytes,
    *,
    server_name: str | None,
    cipher_suites: Sequence[CipherSuite] | None = None,
    codepoints: ExtensionCodepoints = DEFAULT_CODEPOINTS,
) -> tuple[bytes, bytes]:
    """A realistic TLS 1.3 ClientHello carrying ``tcpls`` and ``tcpls_join(token)``.

    It has what a full handshake's ClientHello has (versions, groups, signature
    algorithms, SNI, an X25519 key share of 32 random bytes). Returns
    ``(client_hello_message, legacy_session_id)``.
    """
    session_id = os.urandom(32)
    extensions = [
        _extension(_EXT_KEY_SHARE, struct.pack(">HHH", 36, _X25519, 32) + os.urandom(32)),
        _extension(_EXT_SUPPORTED_VERSIONS, b"\x02" + _TLS13.to_bytes(2, "big")),
        _extension(_EXT_SIGNATURE_ALGORITHMS, _u16_list(_SIGNATURE_ALGORITHMS)),
        _extension(_EXT_SUPPORTED_GROUPS, _u16_list((_X25519, _SECP256R1))),
    ]
    if server_name is not None:
        try:
            ipaddress.ip_address(server_name)  # literal addresses are not sent in SNI
        except ValueError:
            name = server_name.encode("idna")
            entry = b"\x00" + len(name).to_bytes(2, "big") + name
            extensions.append(_extension(_EXT_SERVER_NAME, len(entry).to_bytes(2, "big") + entry))
    extensions.append(_extension(codepoints.tcpls, b""))
    extensions.append(_extension(codepoints.tcpls_join, encode_token_body(token)))
    ext_block = b"".join(extensions)
    body = (
        _TLS12.to_bytes(2, "big")
        + os.urandom(32)
        + b"\x20"
        + session_id
        + _u16_list([int(s) for s in (cipher_suites or _ALL_SUITES)])
        + b"\x01\x00"  # legacy_compression_methods: null
        + len(ext_block).to_bytes(2, "big")
        + ext_block
    )
    return _handshake(_CLIENT_HELLO, body), session_id


def build_join_server_hello(client_hello: ClientHelloInfo, cipher_suite: CipherSuite) -> bytes:
    """The ServerHello that accepts a join: the session's suite, TLS 1.3, a key share."""
    if int(cipher_suite) not in client_hello.cipher_suites:
        raise HandshakeFailure("the join ClientHello does not offer the session's cipher suite")
    ext_block = _extension(_EXT_SUPPORTED_VERSIONS, _TLS13.to_bytes(2, "big")) + _extension(
        _EXT_KEY_SHARE, struct.pack(">HH", _X25519, 32) + os.urandom(32)
    )
    session_id = client_hello.legacy_session_id
    body = (
        _TLS12.to_bytes(2, "big")
        + os.urandom(32)
        + bytes((len(session_id),))
        + session_id
        + int(cipher_suite).to_bytes(2, "big")
        + b"\x00"
        + len(ext_block).to_bytes(2, "big")
        + ext_block
    )
    return _handshake(_SERVER_HELLO, body)


def parse_join_server_hello(
    message: bytes, *, legacy_session_id: bytes, cipher_suite: CipherSuite
) -> None:
    """Check the ServerHello answering a join; raise a :class:`ProtocolError` if it is wrong."""
    reader = _Reader(message)
    _header(reader, _SERVER_HELLO)
    reader.take(2)  # legacy_version
    if reader.take(32) == _HRR_RANDOM:
        raise UnexpectedMessage("a HelloRetryRequest cannot answer a join")
    if reader.vector(1) != legacy_session_id:
        raise IllegalParameter("join ServerHello does not echo our session id")
    if reader.uint(2) != int(cipher_suite):
        raise IllegalParameter("join ServerHello selects another cipher suite than the session's")
    if reader.uint(1) != 0:
        raise IllegalParameter("join ServerHello selects a compression method")
    versions = _extensions(reader).get(_EXT_SUPPORTED_VERSIONS)
    if versions != _TLS13.to_bytes(2, "big"):
        raise IllegalParameter("join ServerHello does not select TLS 1.3")


def check_client_hello(
    info: ClientHelloInfo, cipher_suites: Sequence[int], groups: Sequence[int]
) -> None:
    """Refuse, before any work, a ClientHello the server cannot complete a handshake with.

    No cipher suite in common, or no group in common (neither among the key shares nor
    among the supported groups, which a HelloRetryRequest could ask for), is a
    ``handshake_failure``.
    """
    if not set(info.cipher_suites) & set(cipher_suites):
        raise HandshakeFailure("the client offered no cipher suite the server supports")
    if _EXT_KEY_SHARE not in info.extensions or _EXT_SUPPORTED_GROUPS not in info.extensions:
        return  # the engine answers missing_extension
    if set(info.key_share_groups()) & set(groups):
        return
    supported = _Reader(info.extensions[_EXT_SUPPORTED_GROUPS])
    body = _Reader(supported.vector(2))
    offered = {body.uint(2) for _ in range(body.left // 2)}
    if not offered & set(groups):
        raise HandshakeFailure("the client supports no key exchange group the server does")


def _extension_types(block: bytes) -> list[int]:
    reader = _Reader(block)
    types: list[int] = []
    while reader.left:
        types.append(reader.uint(2))
        reader.vector(2)
    return types


def _message_extensions(msg_type: int, message: bytes) -> list[int]:
    """The extension types carried by a handshake message (empty if it has none)."""
    reader = _Reader(message)
    reader.take(4)
    if msg_type == _SERVER_HELLO:
        reader.take(2 + 32)
        reader.vector(1)
        reader.take(3)
        return _extension_types(reader.vector(2)) if reader.left else []
    if msg_type in (_ENCRYPTED_EXTENSIONS, _CERTIFICATE_REQUEST):
        if msg_type == _CERTIFICATE_REQUEST:
            reader.vector(1)
        return _extension_types(reader.vector(2))
    if msg_type == _NEW_SESSION_TICKET:
        reader.take(8)
        reader.vector(1)
        reader.vector(2)
        return _extension_types(reader.vector(2))
    if msg_type == _CERTIFICATE:
        reader.vector(1)
        entries = _Reader(reader.vector(3))
        types: list[int] = []
        while entries.left:
            entries.vector(3)
            types += _extension_types(entries.vector(2))
        return types
    return []


def check_tcpls_placement(
    msg_type: int, message: bytes, codepoints: ExtensionCodepoints = DEFAULT_CODEPOINTS
) -> None:
    """Raise ``illegal_parameter`` for a TCPLS extension in a message it does not belong to.

    ``tcpls`` belongs in the ClientHello and EncryptedExtensions, ``tcpls_join`` in
    the ClientHello, ``tcpls_token`` in EncryptedExtensions (RFC 8446 §4.2: an
    extension in the wrong message is ``illegal_parameter``).
    """
    allowed = {
        _CLIENT_HELLO: {codepoints.tcpls, codepoints.tcpls_join},
        _ENCRYPTED_EXTENSIONS: {codepoints.tcpls, codepoints.tcpls_token},
    }.get(msg_type, set())
    ours = {codepoints.tcpls, codepoints.tcpls_join, codepoints.tcpls_token}
    if msg_type == _CLIENT_HELLO:
        found = list(parse_client_hello(message).extensions)
    else:
        found = _message_extensions(msg_type, message)
    for ext_type in found:
        if ext_type in ours and ext_type not in allowed:
            raise IllegalParameter(
                f"TCPLS extension {ext_type} in a handshake message of type {msg_type}"
            )
