"""Self-checks of tests/vectors/rfc8448.json (RFC 8448, Example Handshake Traces for TLS 1.3).

Every value of the JSON was extracted from the RFC's text; these tests recompute what can be
recomputed (X25519 / P-256 shared secrets, the whole key schedule over transcripts built from
the handshake messages, Finished and PSK binder MACs, record protection, CertificateVerify
signatures) so that a transcription error in any message, secret or record shows up.
Only ``cryptography``, ``hashlib`` and ``hmac`` are used: no project code.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

VECTORS_PATH = Path(__file__).resolve().parent / "rfc8448.json"
DATA: dict[str, Any] = json.loads(VECTORS_PATH.read_text())
TRACES: dict[str, dict[str, Any]] = DATA["traces"]
ALL_TRACES = sorted(TRACES)
X25519_TRACES = [
    t for t in ALL_TRACES if "server_ephemeral_x25519_private_key" in TRACES[t]["values"]
]

HASH_LEN = 32

# Handshake messages of each trace in transcript order (TLS 1.3 transcript, RFC 8446 4.4.1).
# "message_hash" stands for the synthetic message that replaces ClientHello1 after an HRR.
TRANSCRIPTS: dict[str, list[str]] = {
    "simple_1rtt_handshake": [
        "client_hello",
        "server_hello",
        "encrypted_extensions",
        "server_certificate",
        "server_certificate_verify",
        "server_finished",
        "client_finished",
    ],
    "resumed_0rtt_handshake": [
        "client_hello_record_payload",  # the full ClientHello, binders included
        "server_hello",
        "encrypted_extensions",
        "server_finished",
        "end_of_early_data",
        "client_finished",
    ],
    "hello_retry_request": [
        "message_hash",
        "hello_retry_request",
        "client_hello_2",
        "server_hello",
        "encrypted_extensions",
        "server_certificate",
        "server_certificate_verify",
        "server_finished",
        "client_finished",
    ],
    "client_authentication": [
        "client_hello",
        "server_hello",
        "encrypted_extensions",
        "certificate_request",
        "server_certificate",
        "server_certificate_verify",
        "server_finished",
        "client_certificate",
        "client_certificate_verify",
        "client_finished",
    ],
    "compatibility_mode": [
        "client_hello",
        "server_hello",
        "encrypted_extensions",
        "server_certificate",
        "server_certificate_verify",
        "server_finished",
        "client_finished",
    ],
}

HANDSHAKE_TYPES: dict[str, int] = {
    "client_hello": 1,
    "client_hello_2": 1,
    "client_hello_record_payload": 1,
    "server_hello": 2,
    "hello_retry_request": 2,
    "new_session_ticket": 4,
    "end_of_early_data": 5,
    "encrypted_extensions": 8,
    "server_certificate": 11,
    "client_certificate": 11,
    "certificate_request": 13,
    "server_certificate_verify": 15,
    "client_certificate_verify": 15,
    "server_finished": 20,
    "client_finished": 20,
}

# Protected records: (record, write key prefix, sequence number, inner content type).
PROTECTED_RECORDS: dict[str, list[tuple[str, str, int, int]]] = {
    "simple_1rtt_handshake": [
        ("server_handshake_flight", "server_handshake", 0, 0x16),
        ("client_finished", "client_handshake", 0, 0x16),
        ("new_session_ticket", "server_application", 0, 0x16),
        ("client_application_data", "client_application", 0, 0x17),
        ("server_application_data", "server_application", 1, 0x17),
        ("client_close_notify_alert", "client_application", 1, 0x15),
        ("server_close_notify_alert", "server_application", 2, 0x15),
    ],
    "resumed_0rtt_handshake": [
        ("client_early_application_data", "client_early", 0, 0x17),
        ("server_handshake_flight", "server_handshake", 0, 0x16),
        ("end_of_early_data", "client_early", 1, 0x16),
        ("client_finished", "client_handshake", 0, 0x16),
        ("client_application_data", "client_application", 0, 0x17),
        ("server_application_data", "server_application", 0, 0x17),
        ("client_close_notify_alert", "client_application", 1, 0x15),
        ("server_close_notify_alert", "server_application", 1, 0x15),
    ],
    "hello_retry_request": [
        ("server_handshake_flight", "server_handshake", 0, 0x16),
        ("client_finished", "client_handshake", 0, 0x16),
        ("client_close_notify_alert", "client_application", 0, 0x15),
        ("server_close_notify_alert", "server_application", 0, 0x15),
    ],
    "client_authentication": [
        ("server_handshake_flight", "server_handshake", 0, 0x16),
        ("client_authentication_flight", "client_handshake", 0, 0x16),
        ("client_close_notify_alert", "client_application", 0, 0x15),
        ("server_close_notify_alert", "server_application", 0, 0x15),
    ],
    "compatibility_mode": [
        ("server_handshake_flight", "server_handshake", 0, 0x16),
        ("client_finished", "client_handshake", 0, 0x16),
        ("client_close_notify_alert", "client_application", 0, 0x15),
        ("server_close_notify_alert", "server_application", 0, 0x15),
    ],
}


def val(trace: str, name: str) -> bytes:
    """The bytes of one value of a trace."""
    return bytes.fromhex(TRACES[trace]["values"][name]["hex"])


def key_value(name: str) -> bytes:
    return bytes.fromhex(DATA["keys"][name]["hex"])


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    return hmac.new(salt, ikm, hashlib.sha256).digest()


def hkdf_label(label: str, context: bytes, length: int) -> bytes:
    full = b"tls13 " + label.encode()
    return length.to_bytes(2, "big") + bytes([len(full)]) + full + bytes([len(context)]) + context


def hkdf_expand_label(secret: bytes, label: str, context: bytes, length: int) -> bytes:
    info = hkdf_label(label, context, length)
    return HKDFExpand(hashes.SHA256(), length, info).derive(secret)


def derive_secret(secret: bytes, label: str, transcript: bytes) -> bytes:
    return hkdf_expand_label(secret, label, sha256(transcript), HASH_LEN)


def transcript(trace: str, upto: str) -> bytes:
    """Concatenation of the trace's handshake messages up to and including ``upto``."""
    out = b""
    for name in TRANSCRIPTS[trace]:
        if name == "message_hash":
            out += b"\xfe\x00\x00\x20" + sha256(val(trace, "client_hello"))
        else:
            out += val(trace, name)
        if name == upto:
            return out
    raise KeyError(upto)


def iter_entries() -> list[tuple[str, str, dict[str, Any]]]:
    out = [("keys", name, e) for name, e in DATA["keys"].items()]
    for trace in ALL_TRACES:
        out += [(trace, name, e) for name, e in TRACES[trace]["values"].items()]
    return out


def test_layout() -> None:
    assert isinstance(DATA["_format"], str) and DATA["_format"]
    assert set(TRACES) == set(TRANSCRIPTS)
    sections = {t: TRACES[t]["rfc_section"] for t in ALL_TRACES}
    assert sections == {
        "simple_1rtt_handshake": "3",
        "resumed_0rtt_handshake": "4",
        "hello_retry_request": "5",
        "client_authentication": "6",
        "compatibility_mode": "7",
    }


def test_hex_is_lowercase_and_matches_octet_count() -> None:
    entries = iter_entries()
    assert len(entries) > 500
    for where, name, e in entries:
        hx = e["hex"]
        assert isinstance(hx, str) and hx == hx.lower() and " " not in hx, (where, name)
        assert len(bytes.fromhex(hx)) == e["octets"], (where, name)
        assert e["rfc_section"] and e["label"], (where, name)
        if where != "keys":
            assert e["rfc_section"] == TRACES[where]["rfc_section"], (where, name)


@pytest.mark.parametrize("trace", ALL_TRACES)
def test_handshake_message_headers(trace: str) -> None:
    values = TRACES[trace]["values"]
    checked = 0
    for name, msg_type in HANDSHAKE_TYPES.items():
        if name not in values:
            continue
        msg = val(trace, name)
        assert msg[0] == msg_type, name
        assert int.from_bytes(msg[1:4], "big") == len(msg) - 4, name
        checked += 1
    assert checked >= 6


def test_partial_client_hello_of_the_binder() -> None:
    t = "resumed_0rtt_handshake"
    full = val(t, "client_hello_record_payload")
    prefix = val(t, "psk_binder_client_hello_prefix")
    assert val(t, "client_hello_without_binders") == prefix
    # the prefix stops right before the binders list: 2-byte length, 1-byte length, binder
    binder = val(t, "psk_binder")
    assert full == prefix + (len(binder) + 1).to_bytes(2, "big") + bytes([len(binder)]) + binder
    assert int.from_bytes(prefix[1:4], "big") == len(full) - 4


@pytest.mark.parametrize("trace", ALL_TRACES)
def test_randoms(trace: str) -> None:
    values = TRACES[trace]["values"]
    first_ch = "client_hello_without_binders" if "client_hello" not in values else "client_hello"
    assert val(trace, "client_random") == val(trace, first_ch)[6:38]
    assert val(trace, "server_random") == val(trace, "server_hello")[6:38]
    if "hello_retry_request" in values:
        assert val(trace, "hello_retry_request_random") == sha256(b"HelloRetryRequest")
        assert val(trace, "client_random_2") == val(trace, "client_random")


@pytest.mark.parametrize("trace", X25519_TRACES)
def test_x25519_shared_secret(trace: str) -> None:
    client = X25519PrivateKey.from_private_bytes(val(trace, "client_ephemeral_x25519_private_key"))
    server = X25519PrivateKey.from_private_bytes(val(trace, "server_ephemeral_x25519_private_key"))
    client_pub = client.public_key().public_bytes_raw()
    server_pub = server.public_key().public_bytes_raw()
    assert client_pub == val(trace, "client_ephemeral_x25519_public_key")
    assert server_pub == val(trace, "server_ephemeral_x25519_public_key")
    shared = val(trace, "ecdhe_shared_secret")
    assert client.exchange(X25519PublicKey.from_public_bytes(server_pub)) == shared
    assert server.exchange(X25519PublicKey.from_public_bytes(client_pub)) == shared
    # the key shares of the hellos carry these public keys
    assert client_pub in val(trace, "client_hello_record_payload")
    assert server_pub in val(trace, "server_hello")


def test_hrr_initial_x25519_key_and_p256_shared_secret() -> None:
    t = "hello_retry_request"
    client_x = X25519PrivateKey.from_private_bytes(val(t, "client_ephemeral_x25519_private_key"))
    assert client_x.public_key().public_bytes_raw() == val(t, "client_ephemeral_x25519_public_key")
    curve = ec.SECP256R1()
    client = ec.derive_private_key(
        int.from_bytes(val(t, "client_ephemeral_p256_private_key"), "big"), curve
    )
    server = ec.derive_private_key(
        int.from_bytes(val(t, "server_ephemeral_p256_private_key"), "big"), curve
    )

    def point(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)

    assert point(client) == val(t, "client_ephemeral_p256_public_key")
    assert point(server) == val(t, "server_ephemeral_p256_public_key")
    shared = client.exchange(ec.ECDH(), server.public_key())
    assert shared == server.exchange(ec.ECDH(), client.public_key())
    assert shared == val(t, "ecdhe_shared_secret")
    assert point(client) in val(t, "client_hello_2")
    assert point(server) in val(t, "server_hello")


def test_section3_handshake_secrets() -> None:
    """The brief's minimum: handshake secret, c hs / s hs traffic of section 3 from scratch."""
    t = "simple_1rtt_handshake"
    early = hkdf_extract(b"\x00" * HASH_LEN, b"\x00" * HASH_LEN)
    assert early == val(t, "early_secret")
    derived = derive_secret(early, "derived", b"")
    assert derived == val(t, "derived_secret_for_handshake")
    handshake_secret = hkdf_extract(derived, val(t, "ecdhe_shared_secret"))
    assert handshake_secret == val(t, "handshake_secret")
    ch_sh = val(t, "client_hello") + val(t, "server_hello")
    assert sha256(ch_sh) == val(t, "client_handshake_traffic_secret_transcript_hash")
    c_hs = hkdf_expand_label(handshake_secret, "c hs traffic", sha256(ch_sh), HASH_LEN)
    s_hs = hkdf_expand_label(handshake_secret, "s hs traffic", sha256(ch_sh), HASH_LEN)
    assert c_hs == val(t, "client_handshake_traffic_secret")
    assert s_hs == val(t, "server_handshake_traffic_secret")


@pytest.mark.parametrize("trace", ALL_TRACES)
def test_every_printed_hkdf_expansion(trace: str) -> None:
    """Each (PRK, HkdfLabel) the RFC prints expands to the value it prints."""
    values = TRACES[trace]["values"]
    checked = 0
    for name in values:
        if name.endswith("_hkdf_label"):
            stem = name[: -len("_hkdf_label")]
            info = val(trace, name)
            length = int.from_bytes(info[:2], "big")
            if stem in ("client_finished_key", "server_finished_key"):
                side = stem.split("_")[0]
                prk = val(trace, f"{side}_finished_base_key")
                out = val(trace, f"{side}_finished_key")
            elif stem == "psk_binder_finished_key":
                prk = val(trace, "binder_key")
                out = val(trace, "psk_binder_finished_key")
            elif stem.endswith(("_key", "_iv")):
                owner, kind = stem.rsplit("_", 1)
                prk = val(trace, f"{owner}_traffic_secret_for_keys")
                out = val(trace, f"{owner}_write_{kind}")
            elif stem == "resumption_psk":
                prk = val(trace, "resumption_psk_prk")
                out = val(trace, "resumption_psk")
                assert info.endswith(bytes([2]) + val(trace, "ticket_nonce"))
            else:
                prk = val(trace, f"{stem}_prk")
                out = val(trace, stem)
                assert info.endswith(bytes([HASH_LEN]) + val(trace, f"{stem}_transcript_hash"))
            assert HKDFExpand(hashes.SHA256(), length, info).derive(prk) == out, name
            checked += 1
    assert checked >= 15


@pytest.mark.parametrize("trace", ALL_TRACES)
def test_key_schedule_over_transcripts(trace: str) -> None:
    """The whole key schedule from the PSK/(EC)DHE inputs and the handshake messages."""
    v = TRACES[trace]["values"]
    psk = val(trace, "psk") if "psk" in v else b"\x00" * HASH_LEN
    early = hkdf_extract(b"\x00" * HASH_LEN, psk)
    assert early == val(trace, "early_secret")
    if "client_early_traffic_secret" in v:
        ch = transcript(trace, "client_hello_record_payload")
        assert derive_secret(early, "c e traffic", ch) == val(trace, "client_early_traffic_secret")
        assert derive_secret(early, "e exp master", ch) == val(
            trace, "early_exporter_master_secret"
        )
    hs = hkdf_extract(derive_secret(early, "derived", b""), val(trace, "ecdhe_shared_secret"))
    assert hs == val(trace, "handshake_secret")
    to_sh = transcript(trace, "server_hello")
    assert derive_secret(hs, "c hs traffic", to_sh) == val(
        trace, "client_handshake_traffic_secret"
    )
    assert derive_secret(hs, "s hs traffic", to_sh) == val(
        trace, "server_handshake_traffic_secret"
    )
    master = hkdf_extract(derive_secret(hs, "derived", b""), b"\x00" * HASH_LEN)
    assert master == val(trace, "master_secret")
    to_sf = transcript(trace, "server_finished")
    assert derive_secret(master, "c ap traffic", to_sf) == val(
        trace, "client_application_traffic_secret_0"
    )
    assert derive_secret(master, "s ap traffic", to_sf) == val(
        trace, "server_application_traffic_secret_0"
    )
    assert derive_secret(master, "exp master", to_sf) == val(trace, "exporter_master_secret")
    to_cf = transcript(trace, "client_finished")
    assert derive_secret(master, "res master", to_cf) == val(trace, "resumption_master_secret")
    # traffic keys and IVs
    for owner, secret_name in [
        ("client_handshake", "client_handshake_traffic_secret"),
        ("server_handshake", "server_handshake_traffic_secret"),
        ("client_application", "client_application_traffic_secret_0"),
        ("server_application", "server_application_traffic_secret_0"),
        ("client_early", "client_early_traffic_secret"),
    ]:
        if f"{owner}_write_key" not in v:
            continue
        secret = val(trace, secret_name)
        assert hkdf_expand_label(secret, "key", b"", 16) == val(trace, f"{owner}_write_key")
        assert hkdf_expand_label(secret, "iv", b"", 12) == val(trace, f"{owner}_write_iv")


DERIVE_SECRET_TRANSCRIPTS: dict[str, str | None] = {
    # derived secret -> last message of its transcript (None: the empty transcript)
    "derived_secret_for_handshake": None,
    "derived_secret_for_master": None,
    "client_early_traffic_secret": "client_hello_record_payload",
    "early_exporter_master_secret": "client_hello_record_payload",
    "client_handshake_traffic_secret": "server_hello",
    "server_handshake_traffic_secret": "server_hello",
    "client_application_traffic_secret_0": "server_finished",
    "server_application_traffic_secret_0": "server_finished",
    "exporter_master_secret": "server_finished",
    "resumption_master_secret": "client_finished",
}


@pytest.mark.parametrize("trace", ALL_TRACES)
def test_printed_extract_inputs_prks_and_transcript_hashes(trace: str) -> None:
    """Salts, IKMs, PRKs and transcript hashes the RFC prints next to each derivation."""
    v = TRACES[trace]["values"]
    zeros = b"\x00" * HASH_LEN
    ikm = "psk" if "psk" in v else "early_secret_ikm"
    assert hkdf_extract(zeros, val(trace, ikm)) == val(trace, "early_secret")
    if ikm == "early_secret_ikm":
        assert val(trace, ikm) == zeros
    assert val(trace, "handshake_secret_salt") == val(trace, "derived_secret_for_handshake")
    assert val(trace, "master_secret_salt") == val(trace, "derived_secret_for_master")
    assert val(trace, "master_secret_ikm") == zeros
    for salt, ikm_name, secret in [
        ("handshake_secret_salt", "ecdhe_shared_secret", "handshake_secret"),
        ("master_secret_salt", "master_secret_ikm", "master_secret"),
    ]:
        assert hkdf_extract(val(trace, salt), val(trace, ikm_name)) == val(trace, secret)
    parents = {
        "derived_secret_for_handshake": "early_secret",
        "client_early_traffic_secret": "early_secret",
        "early_exporter_master_secret": "early_secret",
        "derived_secret_for_master": "handshake_secret",
        "client_handshake_traffic_secret": "handshake_secret",
        "server_handshake_traffic_secret": "handshake_secret",
    }
    for stem, last in DERIVE_SECRET_TRANSCRIPTS.items():
        if f"{stem}_prk" not in v:
            continue
        assert val(trace, f"{stem}_prk") == val(trace, parents.get(stem, "master_secret")), stem
        messages = b"" if last is None else transcript(trace, last)
        assert val(trace, f"{stem}_transcript_hash") == sha256(messages), stem
    for owner, secret in [
        ("client_handshake", "client_handshake_traffic_secret"),
        ("server_handshake", "server_handshake_traffic_secret"),
        ("client_application", "client_application_traffic_secret_0"),
        ("server_application", "server_application_traffic_secret_0"),
        ("client_early", "client_early_traffic_secret"),
    ]:
        if f"{owner}_traffic_secret_for_keys" in v:
            assert val(trace, f"{owner}_traffic_secret_for_keys") == val(trace, secret), owner
            assert val(trace, f"{owner}_key_hkdf_label") == hkdf_label("key", b"", 16)
            assert val(trace, f"{owner}_iv_hkdf_label") == hkdf_label("iv", b"", 12)


@pytest.mark.parametrize("trace", ALL_TRACES)
def test_finished_verify_data(trace: str) -> None:
    order = TRANSCRIPTS[trace]
    for side in ("server", "client"):
        base = val(trace, f"{side}_handshake_traffic_secret")
        assert val(trace, f"{side}_finished_base_key") == base
        finished_key = hkdf_expand_label(base, "finished", b"", HASH_LEN)
        assert finished_key == val(trace, f"{side}_finished_key")
        before = order[order.index(f"{side}_finished") - 1]
        mac = hmac.new(finished_key, sha256(transcript(trace, before)), hashlib.sha256).digest()
        assert mac == val(trace, f"{side}_finished_verify_data")
        assert val(trace, f"{side}_finished") == b"\x14\x00\x00\x20" + mac


def test_psk_binder_and_resumption() -> None:
    t3, t4 = "simple_1rtt_handshake", "resumed_0rtt_handshake"
    res_master = val(t3, "resumption_master_secret")
    assert val(t3, "resumption_psk_prk") == res_master
    nonce = val(t3, "ticket_nonce")
    psk = hkdf_expand_label(res_master, "resumption", nonce, HASH_LEN)
    assert psk == val(t3, "resumption_psk") == val(t4, "psk")
    # NewSessionTicket: lifetime(4) age_add(4) nonce<1> ticket<2> extensions<2>
    nst = val(t3, "new_session_ticket")
    assert nst[12] == len(nonce) and nst[13 : 13 + len(nonce)] == nonce
    ticket_len = int.from_bytes(nst[13 + len(nonce) : 15 + len(nonce)], "big")
    ticket = nst[15 + len(nonce) : 15 + len(nonce) + ticket_len]
    assert ticket in val(t4, "client_hello_record_payload")  # offered as the PSK identity
    early = hkdf_extract(b"\x00" * HASH_LEN, psk)
    binder_key = derive_secret(early, "res binder", b"")
    assert binder_key == val(t4, "binder_key")
    finished_key = hkdf_expand_label(binder_key, "finished", b"", HASH_LEN)
    assert finished_key == val(t4, "psk_binder_finished_key")
    prefix_hash = sha256(val(t4, "psk_binder_client_hello_prefix"))
    assert prefix_hash == val(t4, "psk_binder_transcript_hash")
    binder = hmac.new(finished_key, prefix_hash, hashlib.sha256).digest()
    assert binder == val(t4, "psk_binder")


@pytest.mark.parametrize("trace", ALL_TRACES)
def test_plaintext_records(trace: str) -> None:
    v = TRACES[trace]["values"]
    protected = {r for r, _, _, _ in PROTECTED_RECORDS[trace]}
    checked = 0
    for name in v:
        if not name.endswith("_record_payload") or name[: -len("_payload")] in {
            f"{p}_record" for p in protected
        }:
            continue
        record = val(trace, name[: -len("_payload")])
        payload = val(trace, name)
        content_type = 0x14 if "change_cipher_spec" in name else 0x16
        legacy_version = b"\x03\x01" if name.startswith("client_hello") else b"\x03\x03"
        if name.startswith("client_hello_2"):
            legacy_version = b"\x03\x03"  # the RFC's second ClientHello record says 0x0303
        header = bytes([content_type]) + legacy_version + len(payload).to_bytes(2, "big")
        assert record == header + payload, name
        checked += 1
    assert checked >= 2
    # the handshake messages are what the plaintext records carry
    if "client_hello" in v:
        assert val(trace, "client_hello_record_payload") == val(trace, "client_hello")
    assert val(trace, "server_hello_record_payload") == val(trace, "server_hello")


@pytest.mark.parametrize("trace", ALL_TRACES)
def test_protected_records_decrypt(trace: str) -> None:
    for record_name, owner, seq, inner_type in PROTECTED_RECORDS[trace]:
        record = val(trace, f"{record_name}_record")
        payload = val(trace, f"{record_name}_record_payload")
        header, body = record[:5], record[5:]
        assert header == b"\x17\x03\x03" + len(body).to_bytes(2, "big"), record_name
        iv = val(trace, f"{owner}_write_iv")
        nonce = bytes(a ^ b for a, b in zip(iv, seq.to_bytes(12, "big"), strict=True))
        inner = AESGCM(val(trace, f"{owner}_write_key")).decrypt(nonce, body, header)
        assert inner == payload + bytes([inner_type]), record_name


@pytest.mark.parametrize("trace", ALL_TRACES)
def test_flights_are_the_messages(trace: str) -> None:
    v = TRACES[trace]["values"]
    order = TRANSCRIPTS[trace]
    server_flight = b"".join(
        val(trace, m)
        for m in order[order.index("encrypted_extensions") : order.index("server_finished") + 1]
    )
    assert val(trace, "server_handshake_flight_record_payload") == server_flight
    if "client_authentication_flight_record_payload" in v:
        client_flight = b"".join(
            val(trace, m) for m in ("client_certificate", "client_certificate_verify")
        ) + val(trace, "client_finished")
        assert val(trace, "client_authentication_flight_record_payload") == client_flight
    else:
        assert val(trace, "client_finished_record_payload") == val(trace, "client_finished")
    if "new_session_ticket" in v:
        assert val(trace, "new_session_ticket_record_payload") == val(trace, "new_session_ticket")
    if "end_of_early_data" in v:
        assert val(trace, "end_of_early_data_record_payload") == val(trace, "end_of_early_data")


def test_server_rsa_key_and_certificate() -> None:
    n = int.from_bytes(key_value("server_rsa_modulus"), "big")
    e = int.from_bytes(key_value("server_rsa_public_exponent"), "big")
    d = int.from_bytes(key_value("server_rsa_private_exponent"), "big")
    p = int.from_bytes(key_value("server_rsa_prime1"), "big")
    q = int.from_bytes(key_value("server_rsa_prime2"), "big")
    dp = int.from_bytes(key_value("server_rsa_exponent1"), "big")
    dq = int.from_bytes(key_value("server_rsa_exponent2"), "big")
    qi = int.from_bytes(key_value("server_rsa_coefficient"), "big")
    assert p * q == n and e == 65537
    assert d % (p - 1) == dp and d % (q - 1) == dq and (qi * q) % p == 1
    private = rsa.RSAPrivateNumbers(p, q, d, dp, dq, qi, rsa.RSAPublicNumbers(e, n)).private_key()
    cert = x509.load_der_x509_certificate(key_value("server_rsa_certificate_der"))
    public = cert.public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    assert public.public_numbers() == private.public_key().public_numbers()
    for trace in ("simple_1rtt_handshake", "hello_retry_request", "compatibility_mode"):
        assert key_value("server_rsa_certificate_der") in val(trace, "server_certificate")


def certificate_verify_input(trace: str, side: str) -> bytes:
    """The signed content of a CertificateVerify (RFC 8446 4.4.3)."""
    context = f"TLS 1.3, {side} CertificateVerify".encode()
    return b" " * 64 + context + b"\x00" + sha256(transcript(trace, f"{side}_certificate"))


@pytest.mark.parametrize(
    ("trace", "side", "cert_key"),
    [
        ("simple_1rtt_handshake", "server", "server_rsa_certificate_der"),
        ("hello_retry_request", "server", "server_rsa_certificate_der"),
        ("compatibility_mode", "server", "server_rsa_certificate_der"),
        ("client_authentication", "server", "server_ecdsa_p256_certificate_der"),
        ("client_authentication", "client", "client_rsa_certificate_der"),
    ],
)
def test_certificate_verify_signatures(trace: str, side: str, cert_key: str) -> None:
    cert_der = key_value(cert_key)
    assert cert_der in val(trace, f"{side}_certificate")
    public = x509.load_der_x509_certificate(cert_der).public_key()
    cv = val(trace, f"{side}_certificate_verify")
    scheme = int.from_bytes(cv[4:6], "big")
    signature = cv[8 : 8 + int.from_bytes(cv[6:8], "big")]
    assert 8 + len(signature) == len(cv)
    message = certificate_verify_input(trace, side)
    if isinstance(public, rsa.RSAPublicKey):
        assert scheme == 0x0804  # rsa_pss_rsae_sha256
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=HASH_LEN)
        public.verify(signature, message, pss, hashes.SHA256())
    else:
        assert isinstance(public, ec.EllipticCurvePublicKey)
        assert scheme == 0x0403  # ecdsa_secp256r1_sha256
        public.verify(signature, message, ec.ECDSA(hashes.SHA256()))
