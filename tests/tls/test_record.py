"""Record protection: the vectors of vectors.json, the TCPLS nonce, framing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tcpls.errors import BadRecordMac, DecodeError, RecordOverflow, UnexpectedMessage
from tcpls.tls.record import (
    CipherSuite,
    ContentType,
    RecordProtection,
    RecordReader,
    TrafficKeys,
)

VECTORS = json.loads((Path(__file__).parent.parent / "vectors" / "vectors.json").read_text())
SUITES = {
    "TLS_AES_128_GCM_SHA256": CipherSuite.AES_128_GCM_SHA256,
    "TLS_AES_256_GCM_SHA384": CipherSuite.AES_256_GCM_SHA384,
    "TLS_CHACHA20_POLY1305_SHA256": CipherSuite.CHACHA20_POLY1305_SHA256,
}


@pytest.mark.parametrize(
    "vector",
    VECTORS["records"],
    ids=lambda v: f"{v['cipher_suite']}-c{v['connection_id']}-s{v['record_sequence']}",
)
def test_record_vectors(vector: dict[str, object]) -> None:
    keys = TrafficKeys(
        SUITES[str(vector["cipher_suite"])], bytes.fromhex(str(vector["traffic_secret_hex"]))
    )
    assert keys.key.hex() == vector["key_hex"]
    assert keys.iv.hex() == vector["iv_hex"]
    seal = RecordProtection(keys, int(str(vector["connection_id"])))
    seq = int(str(vector["record_sequence"]))
    assert seal.nonce(seq).hex() == vector["nonce_hex"]
    seal.sequence = seq
    record = seal.seal(
        bytes.fromhex(str(vector["plaintext_frames_hex"])), int(str(vector["inner_content_type"]))
    )
    assert record.hex() == vector["record_hex"]
    opener = RecordProtection(keys, int(str(vector["connection_id"])))
    opener.sequence = seq
    content_type, content = opener.open(record)
    assert content_type == vector["inner_content_type"]
    assert content.hex() == vector["plaintext_frames_hex"]


def test_connection_zero_is_rfc8446_nonce() -> None:
    keys = TrafficKeys(CipherSuite.AES_128_GCM_SHA256, os.urandom(32))
    prot = RecordProtection(keys, 0)
    for seq in (0, 1, 7, 2**32 + 5, 2**64 - 1):
        # RFC 8446 §5.3: the 64-bit sequence number, left-padded to iv_length, XOR the IV
        padded = seq.to_bytes(12, "big")
        expected = bytes(a ^ b for a, b in zip(keys.iv, padded, strict=True))
        assert prot.nonce(seq) == expected


def test_nonce_puts_connection_id_in_top_32_bits() -> None:
    keys = TrafficKeys(CipherSuite.AES_128_GCM_SHA256, os.urandom(32))
    n = RecordProtection(keys, 0x01020304).nonce(0)
    assert bytes(a ^ b for a, b in zip(n, keys.iv, strict=True)) == bytes.fromhex(
        "01020304"
    ) + bytes(8)
    nonces = {RecordProtection(keys, c).nonce(s) for c in range(4) for s in range(4)}
    assert len(nonces) == 16


def test_record_for_connection_one_does_not_open_as_connection_zero() -> None:
    keys = TrafficKeys(CipherSuite.AES_128_GCM_SHA256, os.urandom(32))
    record = RecordProtection(keys, 1).seal(b"frames")
    with pytest.raises(BadRecordMac):
        RecordProtection(keys, 0).open(record)
    assert RecordProtection(keys, 1).open(record) == (ContentType.application_data, b"frames")


def test_sequence_numbers_advance_and_matter() -> None:
    keys = TrafficKeys(CipherSuite.CHACHA20_POLY1305_SHA256, os.urandom(32))
    sender, receiver = RecordProtection(keys), RecordProtection(keys)
    records = [sender.seal(bytes([i]) * 10) for i in range(3)]
    assert sender.sequence == 3
    with pytest.raises(BadRecordMac):
        RecordProtection(keys).open(records[1])  # opened as sequence 0
    for i, record in enumerate(records):
        assert receiver.open(record)[1] == bytes([i]) * 10


def test_padding_is_stripped_and_type_found() -> None:
    keys = TrafficKeys(CipherSuite.AES_128_GCM_SHA256, os.urandom(32))
    aead = AESGCM(keys.key)
    inner = b"alert!" + bytes([ContentType.alert]) + bytes(100)
    header = bytes([23, 3, 3]) + (len(inner) + 16).to_bytes(2, "big")
    record = header + aead.encrypt(RecordProtection(keys).nonce(0), inner, header)
    assert RecordProtection(keys).open(record) == (ContentType.alert, b"alert!")


def test_all_zero_inner_plaintext_is_unexpected_message() -> None:
    keys = TrafficKeys(CipherSuite.AES_128_GCM_SHA256, os.urandom(32))
    aead = AESGCM(keys.key)
    inner = bytes(20)
    header = bytes([23, 3, 3]) + (len(inner) + 16).to_bytes(2, "big")
    record = header + aead.encrypt(RecordProtection(keys).nonce(0), inner, header)
    with pytest.raises(UnexpectedMessage):
        RecordProtection(keys).open(record)


def test_key_update_derivation_changes_keys() -> None:
    keys = TrafficKeys(CipherSuite.AES_256_GCM_SHA384, os.urandom(48))
    nxt = keys.next_generation()
    assert nxt.key != keys.key and len(nxt.key) == 32 and len(nxt.secret) == 48


def test_reader_cuts_records_in_any_fragmentation() -> None:
    keys = TrafficKeys(CipherSuite.AES_128_GCM_SHA256, os.urandom(32))
    sender = RecordProtection(keys)
    payloads = [os.urandom(n) for n in (0, 1, 100, 16384, 5000)]
    stream = b"".join(sender.seal(p) for p in payloads)
    reader, receiver = RecordReader(), RecordProtection(keys)
    out = bytearray(17000)
    got = []
    for i in range(0, len(stream), 777):
        reader.feed(stream[i : i + 777])
        while (record := reader.next_record()) is not None:
            _, header, body = record
            _ctype, n = receiver.open_into(header, body, memoryview(out))
            got.append(bytes(out[:n]))
    assert got == payloads


def test_reader_rejects_oversized_and_non_tls_records() -> None:
    reader = RecordReader()
    reader.feed(bytes([23, 3, 3]) + (2**14 + 257).to_bytes(2, "big"))
    with pytest.raises(RecordOverflow):
        reader.next_record()
    reader = RecordReader()
    reader.feed(b"GET / HTTP/1.1\r\n")
    with pytest.raises(DecodeError):
        reader.next_record()


def _sealed_inner(keys: TrafficKeys, inner: bytes) -> bytes:
    """A record whose TLSInnerPlaintext is ``inner`` (content, type, padding) as given."""
    header = bytes([ContentType.application_data, 3, 3]) + (len(inner) + 16).to_bytes(2, "big")
    return header + AESGCM(keys.key).encrypt(keys.iv, inner, header)


def test_the_size_limit_covers_padding() -> None:
    """RFC 8446 §5.4: the whole TLSInnerPlaintext is at most 2^14 + 1 bytes; 2^14 - 8
    bytes of content with 9 bytes of padding is 2^14 + 2 and must be refused."""
    keys = TrafficKeys(CipherSuite.AES_128_GCM_SHA256, os.urandom(32))
    over = _sealed_inner(keys, b"x" * (16384 - 8) + b"\x17" + bytes(9))
    with pytest.raises(RecordOverflow):
        RecordProtection(keys).open(over)
    limit = _sealed_inner(keys, b"x" * (16384 - 8) + b"\x17" + bytes(8))  # exactly 2^14 + 1
    assert RecordProtection(keys).open(limit) == (ContentType.application_data, b"x" * 16376)


def test_padding_is_stripped_whatever_its_length() -> None:
    keys = TrafficKeys(CipherSuite.AES_128_GCM_SHA256, os.urandom(32))
    for padding in (0, 1, 1000, 16384 - 2):
        record = _sealed_inner(keys, b"ab" + b"\x17" + bytes(padding))
        assert RecordProtection(keys).open(record) == (ContentType.application_data, b"ab")
    with pytest.raises(UnexpectedMessage):
        RecordProtection(keys).open(_sealed_inner(keys, bytes(100)))  # no content type
