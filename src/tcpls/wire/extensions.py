"""TCPLS TLS extensions: codepoints and bodies (draft-04 §5.1).

See the design notes: Extension codepoints, Token encoding, Extension placement.

``tcpls`` is empty; ``tcpls_join`` and ``tcpls_token`` carry one 32-byte token,
sent as one length byte (always 32) followed by the token. A receiver also
accepts a bare 32-byte body; anything else is a ``decode_error``.
"""

from __future__ import annotations

from dataclasses import dataclass

from tcpls.errors import DecodeError

__all__ = [
    "DEFAULT_CODEPOINTS",
    "TOKEN_SIZE",
    "ExtensionCodepoints",
    "decode_tcpls",
    "decode_token_body",
    "encode_token_body",
]

#: Bytes of a join token (draft-04 §5.1; design: Token encoding).
TOKEN_SIZE = 32


@dataclass(frozen=True, slots=True)
class ExtensionCodepoints:
    """The TLS extension types used for TCPLS (design: Extension codepoints)."""

    tcpls: int = 100
    tcpls_join: int = 101
    tcpls_token: int = 102


#: The codepoints tcpls uses unless configured otherwise: 100, 101 and 102.
DEFAULT_CODEPOINTS = ExtensionCodepoints()


def encode_token_body(token: bytes) -> bytes:
    """The body of ``tcpls_join`` or ``tcpls_token``: a length byte (32), then the token."""
    if len(token) != TOKEN_SIZE:
        raise ValueError(f"a TCPLS token is {TOKEN_SIZE} bytes, not {len(token)}")
    return bytes((TOKEN_SIZE,)) + token


def decode_token_body(body: bytes) -> bytes:
    """Parse a ``tcpls_join`` or ``tcpls_token`` body; raise :class:`DecodeError` if malformed."""
    if len(body) == TOKEN_SIZE + 1 and body[0] == TOKEN_SIZE:
        return bytes(body[1:])
    if len(body) == TOKEN_SIZE:
        return bytes(body)
    raise DecodeError(f"malformed TCPLS token extension ({len(body)} bytes)")


def decode_tcpls(body: bytes) -> None:
    """Check a ``tcpls`` extension body, which must be empty."""
    if body:
        raise DecodeError("the tcpls extension must be empty")
