"""Write the seed corpora of the fuzz targets into ``tests/fuzz/corpus/<target>/``.

Run from the repository root: ``python -m tests.fuzz.make_corpus``. Seeds are small and
meaningful: the test vectors' frames and records, records sealed with the targets' fixed
keys, ClientHellos of our client (full handshake and join) and, when the ``openssl``
command is installed, ClientHellos captured from ``openssl s_client`` on the loopback
interface. Existing seeds are replaced; ClientHellos hold random bytes, so a new run
writes other bytes for them.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import socket
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

from tcpls.config import ClientConfig, load_certificate_chain, load_private_key
from tcpls.core.endpoint import client_session
from tcpls.tls.hello import ClientHelloInfo, build_join_client_hello, build_join_server_hello
from tcpls.tls.hs.server import ServerEngine
from tcpls.tls.record import ContentType, RecordProtection, plaintext_record
from tcpls.wire.frames import (
    Ack,
    ConnectionReset,
    Frame,
    NewAddress,
    NewToken,
    Padding,
    Ping,
    RemoveAddress,
    StreamChange,
    StreamFrame,
    encode_frames,
)
from tests.fuzz.targets import (
    FIXED_SUITES,
    JOIN_SESSION_ID,
    KNOWN_TOKEN,
    client_keys,
    fuzz_pki,
    server_keys,
)

ROOT = Path(__file__).resolve().parent
CORPUS = ROOT / "corpus"
VECTORS = ROOT.parent / "vectors" / "vectors.json"
CCS = b"\x14\x03\x03\x00\x01\x01"


def _write(target: str, seeds: dict[str, bytes]) -> None:
    directory = CORPUS / target
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    for name, data in seeds.items():
        (directory / name).write_bytes(data)


def _vectors() -> dict[str, object]:
    data: dict[str, object] = json.loads(VECTORS.read_text())
    return data


# --------------------------------------------------------------------------- hellos


def _our_client_hello(tcpls: bool) -> bytes:
    """The first flight of our client (one plaintext record holding the ClientHello)."""
    pki = fuzz_pki()
    config = ClientConfig(cafile=str(pki.ca_file), server_name="localhost", tcpls=tcpls)
    session = client_session(config, "localhost")
    tls = session.connections[0].tls
    tls.start()
    return tls.data_to_send()


def _join_client_hello(token: bytes) -> bytes:
    hello, _ = build_join_client_hello(token, server_name="localhost")
    return hello


def _openssl_client_hellos() -> dict[str, bytes]:
    """ClientHello records sent by ``openssl s_client`` to a socket on 127.0.0.1."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return {}
    variants = {
        "openssl-default": [],
        "openssl-tls13-alpn": ["-tls1_3", "-alpn", "h2,http/1.1"],
        "openssl-p256-only": ["-tls1_3", "-groups", "P-256"],
        "openssl-chacha": ["-tls1_3", "-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256"],
        "openssl-no-middlebox": ["-tls1_3", "-no_middlebox"],
    }
    found: dict[str, bytes] = {}
    for name, extra in variants.items():
        data = _capture_openssl(openssl, extra)
        if data:
            found[name] = data
    return found


def _capture_openssl(openssl: str, extra: Sequence[str]) -> bytes:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(10)
        port = listener.getsockname()[1]
        args = [openssl, "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost"]
        proc = subprocess.Popen(
            [*args, *extra],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        data = b""
        try:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(10)
                while True:
                    if len(data) >= 5 and len(data) >= 5 + int.from_bytes(data[3:5], "big"):
                        break
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
        finally:
            proc.kill()
            proc.wait()
    if len(data) < 5:
        return b""
    return data[: 5 + int.from_bytes(data[3:5], "big")]


# --------------------------------------------------------------------------- records


def _sealed(
    keys_for: str, cid: int, items: Iterable[tuple[bytes, int]], suite_index: int = 0
) -> bytes:
    """Records sealed with the fixed client or server keys, sequence from 0."""
    keys = (client_keys if keys_for == "client" else server_keys)(FIXED_SUITES[suite_index])
    protection = RecordProtection(keys, cid)
    return b"".join(protection.seal(content, ct) for content, ct in items)


def _sealed_padded(cid: int, inner: bytes, sequence: int, suite_index: int) -> bytes:
    """One record whose inner plaintext is exactly ``inner`` (padding included)."""
    keys = client_keys(FIXED_SUITES[suite_index])
    protection = RecordProtection(keys, cid)
    protection.sequence = sequence
    staging = bytearray(inner) + b"\x00"
    out = bytearray(len(inner) + 5 + 16)
    # seal the first len(inner) - 1 bytes with the last byte as the content type
    n = protection.seal_into(memoryview(staging), len(inner) - 1, inner[-1], memoryview(out))
    return bytes(out[:n])


def _record_reader_seeds() -> dict[str, bytes]:
    vectors = _vectors()
    seeds: dict[str, bytes] = {}
    records = vectors["records"]
    assert isinstance(records, list)
    names = {"TLS_AES_128_GCM_SHA256": 0, "TLS_CHACHA20_POLY1305_SHA256": 2}
    for i, rec in enumerate(records):
        suite = names[rec["cipher_suite"]]
        head = bytes((0, rec["connection_id"], rec["record_sequence"], suite))
        seeds[f"vector-{i}"] = head + bytes.fromhex(rec["record_hex"])
    app = encode_frames([StreamFrame(0, 0, b"hello"), Ack(0, 5)])
    flight = _sealed(
        "client",
        0,
        [(app, 23), (b"\x01\x00", 21), (b"\x18\x00\x00\x01\x00", 22), (b"x" * 300, 23)],
    )
    seeds["sealed-flight"] = bytes((0, 0, 0, 0)) + flight
    seeds["sealed-flight-small-reads"] = bytes((1, 0, 0, 0)) + flight
    seeds["sealed-flight-zero-copy"] = bytes((0x80 | 3, 0, 0, 0)) + flight
    for suite in range(3):
        big = _sealed("client", 2, [(bytes(range(256)) * 64, 23)], suite)
        seeds[f"full-record-suite{suite}"] = bytes((0x80, 2, 0, suite)) + big
    seeds["padded-record"] = bytes((0, 0, 0, 0)) + _sealed_padded(0, b"ab\x17" + bytes(40), 0, 0)
    seeds["all-zero-inner"] = bytes((0, 0, 0, 0)) + _sealed_padded(0, bytes(8), 0, 0)
    hello = _our_client_hello(True)
    seeds["client-hello-ccs-partial"] = bytes((5, 0, 0, 0)) + hello + CCS + flight[:20]
    seeds["overflow-header"] = bytes((0, 0, 0, 0)) + b"\x17\x03\x03\x41\x01" + bytes(16)
    seeds["not-tls"] = bytes((0, 0, 0, 0)) + b"GET / HTTP/1.1\r\n\r\n"
    return seeds


def _record_open_seeds() -> dict[str, bytes]:
    def head(suite: int, flags: int, cid: int, seq: int) -> bytes:
        return bytes((suite, flags)) + cid.to_bytes(4, "big") + seq.to_bytes(8, "big")

    frames = encode_frames([StreamFrame(0, 0, b"hello"), Ack(0, 5), Padding(2)])
    return {
        "app-data": head(0, 2, 0, 0) + frames + b"\x17",
        "padded-alert": head(1, 2, 3, 7) + b"\x01\x00\x15" + bytes(100),
        "chacha-handshake": head(2, 2, 1, 1 << 40) + b"\x18\x00\x00\x01\x01\x16",
        "all-zero": head(0, 0, 0, 0) + bytes(32),
        "empty": head(0, 0, 0, 0),
        "corrupted": head(0, 9, 0, 1) + b"hello\x17",
        "max-sequence": head(0, 2, 0xFFFFFFFF, (1 << 64) - 1) + b"z\x17",
        "full-size": head(1, 2, 2, 5) + b"q" * 16384 + b"\x17",
    }


# --------------------------------------------------------------------------- frames


def _vector_frames() -> dict[str, bytes]:
    vectors = _vectors()
    frames = vectors["frames"]
    assert isinstance(frames, list)
    out: dict[str, bytes] = {}
    for i, frame in enumerate(frames):
        out[f"{i:02d}-{frame['frame']}"] = bytes.fromhex(frame["hex"])
    example = vectors["record_content_example"]
    assert isinstance(example, dict)
    out["record-content-example"] = bytes.fromhex(example["hex"])
    return out


_ALL_FRAMES: list[Frame] = [
    StreamFrame(0, 0, b"data of a stream"),
    Ack(0, 5),
    Padding(3),
    Ping(),
    NewToken(2, KNOWN_TOKEN),
    ConnectionReset(1),
    NewAddress(0, ipaddress.ip_address("10.0.0.1"), 443),
    NewAddress(1, ipaddress.ip_address("2001:db8::1"), 8443),
    RemoveAddress(0),
    StreamChange(4, 100),
    StreamFrame(4, 100, b"", fin=True),
]


def _frames_seeds() -> dict[str, bytes]:
    seeds = _vector_frames()
    seeds["every-type"] = encode_frames(_ALL_FRAMES)
    seeds["long-padding"] = bytes(3000) + b"\x01"
    seeds["unknown-type"] = b"\x01\x0a"
    seeds["truncated-stream"] = bytes(10) + b"\x02"
    seeds["stream-length-too-big"] = encode_frames([StreamFrame(0, 0, b"abc")])[3:]
    seeds["address-version-5"] = b"\x20\xfb\x0a\x0a\x02\x02\x05\x00\x07"
    return seeds


def _extensions_seeds() -> dict[str, bytes]:
    vectors = _vectors()
    exts = vectors["extensions"]
    assert isinstance(exts, dict)
    seeds = {name: bytes.fromhex(ext["body_hex"]) for name, ext in exts.items()}
    seeds["bare-token"] = KNOWN_TOKEN
    seeds["wrong-length-byte"] = b"\x1f" + KNOWN_TOKEN
    seeds["too-long"] = b"\x20" + KNOWN_TOKEN + b"\x00"
    return seeds


# --------------------------------------------------------------------------- hellos


def _server_flight(client_hello: bytes) -> dict[str, bytes]:
    """The handshake messages our server engine answers a ClientHello with, by name."""
    pki = fuzz_pki()
    engine = ServerEngine(
        certificate_chain=load_certificate_chain(str(pki.cert_file)),
        private_key=load_private_key(str(pki.key_file)),
        token_provider=lambda: KNOWN_TOKEN,
    )
    names = {2: "server-hello", 8: "encrypted-extensions", 11: "certificate", 15: "verify"}
    found: dict[str, bytes] = {}
    for _, data in engine.handle_message(client_hello):
        while len(data) >= 4:
            end = 4 + int.from_bytes(data[1:4], "big")
            name = names.get(data[0])
            if name is not None:
                found[f"ours-{name}"] = data[:end]
            data = data[end:]
    return found


def _new_session_ticket() -> bytes:
    """A NewSessionTicket carrying the tcpls extension (where it does not belong)."""
    body = (
        bytes.fromhex("00001c2001020304")  # lifetime, age_add
        + b"\x01\xaa"  # nonce
        + b"\x00\x02\xbb\xbb"  # ticket
        + b"\x00\x04\x00\x64\x00\x00"  # extensions: tcpls
    )
    return b"\x04" + len(body).to_bytes(3, "big") + body


def _client_hello_seeds(openssl: dict[str, bytes]) -> dict[str, bytes]:
    ours = _our_client_hello(True)[5:]
    seeds = {
        "ours-tcpls": ours,
        "ours-plain-tls": _our_client_hello(False)[5:],
        "ours-join": _join_client_hello(KNOWN_TOKEN),
        **_server_flight(ours),
        "new-session-ticket": _new_session_ticket(),
    }
    for name, record in openssl.items():
        seeds[name] = record[5:]
    return seeds


def _join_server_hellos() -> dict[str, bytes]:
    seeds: dict[str, bytes] = {}
    info = ClientHelloInfo(JOIN_SESSION_ID, tuple(int(s) for s in FIXED_SUITES), {})
    for i, suite in enumerate(FIXED_SUITES):
        seeds[f"suite{i}"] = bytes((i,)) + build_join_server_hello(info, suite)
    empty = ClientHelloInfo(b"", tuple(int(s) for s in FIXED_SUITES), {})
    seeds["empty-session-id"] = bytes((0x80,)) + build_join_server_hello(empty, FIXED_SUITES[0])
    hrr = bytearray(build_join_server_hello(info, FIXED_SUITES[0]))
    hrr[6:38] = bytes.fromhex("cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c")
    seeds["hello-retry-request"] = b"\x00" + bytes(hrr)
    return seeds


def _server_records(items: Iterable[tuple[bytes, int]]) -> bytes:
    return _sealed("client", 1, items)


def _tls_server_seeds(openssl: dict[str, bytes]) -> dict[str, bytes]:
    ours = _our_client_hello(True)
    join = plaintext_record(ContentType.handshake, _join_client_hello(KNOWN_TOKEN))
    unknown = plaintext_record(ContentType.handshake, _join_client_hello(bytes(32)))
    app = encode_frames([StreamFrame(0, 0, b"hello"), Ping()])
    seeds = {
        "ours-tcpls": b"\x00" + ours,
        "ours-plain-tls-small-reads": b"\x03" + _our_client_hello(False),
        "ours-then-eof": b"\x40" + ours,
        "ours-split-records": b"\x00"
        + plaintext_record(22, ours[5:60])
        + plaintext_record(22, ours[60:]),
        "ours-then-junk": b"\x00" + ours + CCS + b"\x17\x03\x03\x00\x20" + bytes(32),
        "join-known-token": b"\x00" + join + CCS + _server_records([(app, 23), (b"\x01\x00", 21)]),
        "join-then-key-update": b"\x00"
        + join
        + CCS
        + _server_records([(b"\x18\x00\x00\x01\x00", 22), (b"\x04\x00\x00\x00", 22)]),
        "join-then-alert": b"\x07" + join + _server_records([(b"\x02\x28", 21)]),
        "join-unknown-token": b"\x00" + unknown,
        "plaintext-alert": b"\x00" + plaintext_record(ContentType.alert, b"\x02\x28"),
        "server-hello-first": b"\x00" + join[:5] + b"\x02" + join[6:],
    }
    for name, record in openssl.items():
        seeds[name] = b"\x00" + record
    return seeds


def _tls_join_client_seeds() -> dict[str, bytes]:
    info = ClientHelloInfo(JOIN_SESSION_ID, tuple(int(s) for s in FIXED_SUITES), {})
    hello = plaintext_record(ContentType.handshake, build_join_server_hello(info, FIXED_SUITES[0]))
    protection = RecordProtection(server_keys(FIXED_SUITES[0]), 1)
    app = encode_frames([NewToken(3, KNOWN_TOKEN), StreamFrame(1, 0, b"hi"), Ack(1, 0)])
    records = b"".join(
        protection.seal(content, ct)
        for content, ct in [
            (app, 23),
            (b"\x04\x00\x00\x04\x00\x00\x00\x00", 22),
            (b"\x01\x00", 21),
        ]
    )
    return {
        "accepted": b"\x00" + hello + CCS + records,
        "accepted-small-reads": b"\x02" + hello + CCS + records,
        "accepted-then-eof": b"\x40" + hello + CCS,
        "rejected": b"\x00" + plaintext_record(ContentType.alert, b"\x02\x2f"),
        "key-update": b"\x00"
        + hello
        + RecordProtection(server_keys(FIXED_SUITES[0]), 1).seal(b"\x18\x00\x00\x01\x01", 22),
    }


# --------------------------------------------------------------------------- session


def _session_input(
    flags: int, records: Sequence[Sequence[Frame] | bytes], joined: int = 0
) -> bytes:
    out = bytearray((flags,))
    for i, record in enumerate(records):
        content = record if isinstance(record, bytes) else encode_frames(record)
        head = len(content) | (0x8000 if joined and i % 2 else 0)
        out += head.to_bytes(2, "big") + content
    return bytes(out)


def _session_seeds() -> dict[str, bytes]:
    to_server = 0x00
    to_client = 0x01
    seeds = {
        "stream-fin": _session_input(to_server, [[StreamFrame(0, 0, b"hello", fin=True)]]),
        "out-of-order": _session_input(
            to_server,
            [[StreamFrame(0, 5, b"world")], [StreamFrame(0, 0, b"hello"), Ack(0, 0)]],
        ),
        "control-frames": _session_input(
            to_server,
            [
                [
                    Ping(),
                    Padding(7),
                    NewAddress(0, ipaddress.ip_address("10.0.0.1"), 443),
                    NewAddress(1, ipaddress.ip_address("2001:db8::1"), 8443),
                    RemoveAddress(0),
                ]
            ],
        ),
        "stream-change": _session_input(
            to_server, [[StreamChange(2, 0)], [StreamFrame(2, 0, b"x")], [StreamChange(4, 9)]]
        ),
        "connection-reset": _session_input(to_server, [[ConnectionReset(1)], [Ack(0, 0)]]),
        "client-new-token": _session_input(to_server, [[NewToken(5, KNOWN_TOKEN)]]),
        "server-stream-never-opened": _session_input(to_server, [[StreamFrame(1, 0, b"x")]]),
        "many-streams-small-tuning": _session_input(
            to_server | 0x10, [[StreamFrame(2 * i, 0, b"s") for i in range(12)]]
        ),
        "reassembly-small-tuning": _session_input(
            to_server | 0x10 | 0x04,
            [[StreamFrame(0, 10, b"x" * 1500)], [StreamFrame(0, 3000, b"y" * 1500)]],
        ),
        "to-client-token-and-stream": _session_input(
            to_client | 0x08, [[NewToken(5, KNOWN_TOKEN), StreamFrame(1, 0, b"hi")]]
        ),
        "to-client-ack-never-sent": _session_input(to_client, [[Ack(0, 1 << 40)]]),
        "joined-ping-reset": _session_input(
            to_server | 0x02 | 0x04,
            [[Ping()], [Ping(), Ack(1, 0)], [ConnectionReset(0)], [StreamFrame(0, 0, b"z")]],
            joined=1,
        ),
        "vector-record-content": _session_input(
            to_server, [bytes.fromhex(str(_record_content_hex()))]
        ),
        "not-frames": _session_input(to_client, [b"\x0a", b"\x0b\x0c"]),
        "ack-real-records-then-close": _session_input(
            to_server | 0x20 | 0x40, [[Ack(0, 2), StreamFrame(0, 0, b"req", fin=True)]]
        ),
        "plain-tls-bytes": _session_input(0x80 | 0x40, [b"GET / HTTP/1.0\r\n\r\n", b"\x00" * 9]),
        "plain-tls-to-client": _session_input(0x80 | 0x01 | 0x20 | 0x08, [b"hello", b""]),
        "to-client-ack-real-records": _session_input(
            to_client | 0x20 | 0x08, [[Ack(0, 0)], [Ping()], [Ack(0, 1), Padding(100)]]
        ),
    }
    for name, frame in _vector_frames().items():
        if not name.startswith("record"):
            seeds[f"vector-{name}"] = _session_input(to_server | 0x08, [frame])
    return seeds


def _record_content_hex() -> object:
    example = _vectors()["record_content_example"]
    assert isinstance(example, dict)
    return example["hex"]


def main() -> None:
    openssl = _openssl_client_hellos()
    _write("record_reader", _record_reader_seeds())
    _write("record_open", _record_open_seeds())
    _write("frames", _frames_seeds())
    _write("extensions", _extensions_seeds())
    _write("client_hello", _client_hello_seeds(openssl))
    _write("join_server_hello", _join_server_hellos())
    _write("tls_server", _tls_server_seeds(openssl))
    _write("tls_join_client", _tls_join_client_seeds())
    _write("session", _session_seeds())
    total = sum(f.stat().st_size for f in CORPUS.rglob("*") if f.is_file())
    count = sum(1 for f in CORPUS.rglob("*") if f.is_file())
    print(f"{count} seeds, {total} bytes, in {CORPUS}")
    if not openssl:
        print("note: openssl not found, no openssl ClientHellos")


if __name__ == "__main__":
    main()
