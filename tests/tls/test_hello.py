"""Join hellos and the light ClientHello parse, checked against the handshake engine's full
TLS 1.3 codec (a second, independent parser of the same bytes)."""

from __future__ import annotations

import contextlib
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcpls.errors import DecodeError, HandshakeFailure, IllegalParameter, ProtocolError
from tcpls.tls.hello import (
    build_join_client_hello,
    build_join_server_hello,
    parse_client_hello,
    parse_join_server_hello,
)
from tcpls.tls.hs import codec
from tcpls.tls.hs.codec import ExtensionType as E
from tcpls.tls.record import CipherSuite
from tcpls.wire.extensions import encode_token_body

TOKEN = bytes(range(32))


def test_join_client_hello_is_a_valid_tls13_client_hello() -> None:
    message, session_id = build_join_client_hello(
        TOKEN, server_name="example.net", cipher_suites=[CipherSuite.AES_128_GCM_SHA256]
    )
    hello = codec.parse_client_hello(message)  # the full TLS 1.3 parser accepts it
    assert hello.legacy_session_id == session_id and len(session_id) == 32
    assert hello.cipher_suites == (CipherSuite.AES_128_GCM_SHA256,)
    assert codec.decode_versions(hello.extensions[E.supported_versions]) == (codec.TLS13,)
    assert codec.decode_server_name(hello.extensions[E.server_name]) == "example.net"
    shares = codec.decode_client_key_shares(hello.extensions[E.key_share])
    assert [g for g, _ in shares] == [0x001D] and len(shares[0][1]) == 32
    assert hello.extensions[100] == b"" and hello.extensions[101] == encode_token_body(TOKEN)


def test_no_sni_for_literal_addresses() -> None:
    message, _ = build_join_client_hello(TOKEN, server_name="10.0.0.1")
    assert E.server_name not in codec.parse_client_hello(message).extensions


def test_light_parse_agrees_with_the_engine_codec() -> None:
    message, session_id = build_join_client_hello(TOKEN, server_name="h")
    info = parse_client_hello(message)
    full = codec.parse_client_hello(message)
    assert info.legacy_session_id == session_id == full.legacy_session_id
    assert info.cipher_suites == full.cipher_suites
    assert info.extensions == full.extensions
    assert info.extensions[101] == encode_token_body(TOKEN)
    assert info.has_extension(100) and info.has_extension(51)


def test_join_server_hello_is_valid_and_checked() -> None:
    message, session_id = build_join_client_hello(TOKEN, server_name=None)
    info = parse_client_hello(message)
    reply = build_join_server_hello(info, CipherSuite.AES_256_GCM_SHA384)
    hello = codec.parse_server_hello(reply)
    assert hello.legacy_session_id == session_id and not hello.is_retry_request
    assert codec.decode_u16(hello.extensions[E.supported_versions], "v") == codec.TLS13
    assert hello.cipher_suite == CipherSuite.AES_256_GCM_SHA384
    parse_join_server_hello(
        reply, legacy_session_id=session_id, cipher_suite=CipherSuite.AES_256_GCM_SHA384
    )
    with pytest.raises(IllegalParameter, match="session id"):
        parse_join_server_hello(
            reply, legacy_session_id=os.urandom(32), cipher_suite=CipherSuite.AES_256_GCM_SHA384
        )
    with pytest.raises(IllegalParameter, match="cipher suite"):
        parse_join_server_hello(
            reply, legacy_session_id=session_id, cipher_suite=CipherSuite.AES_128_GCM_SHA256
        )


def test_server_hello_needs_the_session_suite_offered() -> None:
    message, _ = build_join_client_hello(
        TOKEN, server_name=None, cipher_suites=[CipherSuite.CHACHA20_POLY1305_SHA256]
    )
    with pytest.raises(HandshakeFailure):
        build_join_server_hello(parse_client_hello(message), CipherSuite.AES_128_GCM_SHA256)


def test_hello_retry_request_is_refused() -> None:
    message, session_id = build_join_client_hello(TOKEN, server_name=None)
    reply = bytearray(build_join_server_hello(parse_client_hello(message), CipherSuite(0x1302)))
    reply[6:38] = bytes.fromhex("cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c")
    with pytest.raises(ProtocolError, match="HelloRetryRequest"):
        parse_join_server_hello(
            bytes(reply), legacy_session_id=session_id, cipher_suite=CipherSuite(0x1302)
        )


def test_duplicate_extension_is_a_decode_error() -> None:
    message, _ = build_join_client_hello(TOKEN, server_name=None)
    # header 4, version 2, random 32, session id 1+32, 3 suites 2+6, compression 2
    at = 4 + 2 + 32 + 33 + 8 + 2
    ext_len = int.from_bytes(message[at : at + 2], "big")
    assert at + 2 + ext_len == len(message)
    extra = b"\x00\x64\x00\x00"  # a second, empty tcpls extension
    body = message[4:at] + (ext_len + len(extra)).to_bytes(2, "big") + message[at + 2 :] + extra
    with pytest.raises(DecodeError, match="duplicate"):
        parse_client_hello(b"\x01" + len(body).to_bytes(3, "big") + body)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_truncated_or_corrupted_hellos_are_decode_errors(data: st.DataObject) -> None:
    message, _ = build_join_client_hello(TOKEN, server_name="example.net")
    cut = data.draw(st.integers(0, len(message) - 1))
    with pytest.raises(ProtocolError):
        parse_client_hello(message[:cut])
    garbage = data.draw(st.binary(max_size=200))
    with contextlib.suppress(ProtocolError):  # parses, or is refused cleanly
        parse_client_hello(b"\x01" + len(garbage).to_bytes(3, "big") + garbage)
