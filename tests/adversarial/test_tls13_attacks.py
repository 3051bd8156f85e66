"""Attacks on the TLS 1.3 engine's newer features, each against a live server.

HelloRetryRequest, key shares (X25519MLKEM768 included), PSK resumption and the ticket
store, 0-RTT early data (accepted, over the limit, declined, never confirmed), client
certificates and KeyUpdate, attacked the way a stranger or a malicious client can. Every
case checks a bound (CPU, memory, time, the alert) and ends, like the rest of the suite,
with a fresh good client served within a second and the peak RSS checked
(:meth:`~tests.adversarial.hostile.Arena.finish`).

Cases that need a server configured otherwise than ``tcpls serve --echo`` (early data
on, client certificates required, shorter timeouts, fewer tickets or sessions) run
:class:`TunedServer`: the same echo server, started from a :class:`~tcpls.ServerConfig`
built from JSON. Each weakness these cases found was fixed; the case stays as its
regression test, with the fix described in its docstring.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, x25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import tcpls
from tcpls.devcert import DevPKI
from tcpls.errors import AlertDescription
from tcpls.tls.connection import TLSConnection
from tcpls.tls.hs.client import ClientEngine
from tcpls.tls.hs.codec import (
    HRR_RANDOM,
    ClientHello,
    ExtensionType,
    ServerHello,
    decode_server_key_share,
    encode_client_key_shares,
    encode_u16_list,
    parse_client_hello,
    parse_server_hello,
    vector,
)
from tcpls.tls.hs.groups import Group
from tcpls.tls.hs.tickets import SessionTicket
from tcpls.tls.record import CipherSuite
from tcpls.wire.frames import Ack, StreamFrame, encode_frames
from tests.adversarial.hostile import (
    GOOD_CLIENT_DEADLINE,
    Arena,
    GoodClientResult,
    HostileClient,
    KiB,
    MiB,
    ServerProcess,
    client_hello_record,
    good_client_echo,
)

pytestmark = pytest.mark.adversarial

A = AlertDescription

# ----------------------------------------------------------------------------- bounds

#: ClientHellos that each force a HelloRetryRequest and never answer it.
HRR_FLOOD = 1_000
#: What one such half-done handshake may cost the server (an idle session costs ~40 KiB).
HRR_PENDING_BUDGET = 64 * KiB
#: Server CPU per HelloRetryRequest (0.25 ms measured: no key exchange is computed).
HRR_CPU_LIMIT = 0.002
#: handshake_timeout of the servers whose timers a case waits for.
SHORT_HANDSHAKE_TIMEOUT = 1.0
#: Slack on a timer the server must honour (scheduling, the close itself).
TIMER_SLACK = 2.0
#: max_sessions of the server the lock-out case fills (16,384 by default: the same
#: happens there with as many ClientHellos; 4,096 took 10 s to send).
LOCKOUT_MAX_SESSIONS = 128

#: ClientHellos of the CPU cases (key share bloat, garbage PSKs).
HELLO_BATCH = 80
#: Server CPU per answered ClientHello (a full handshake costs it ~1-2 ms).
HELLO_CPU_LIMIT = 0.010
#: Junk key shares in one ClientHello (groups the server does not take).
JUNK_SHARES = 400
#: Junk key shares of ML-KEM size (1,216 bytes) in one ClientHello.
JUNK_KEM_SHARES = 40

#: Full handshakes per group in the post-quantum CPU comparison (informational).
PQ_HANDSHAKES = 60
#: Server CPU per full handshake, either group (a regression bound, ~2-3 ms measured).
FULL_HANDSHAKE_CPU_LIMIT = 0.020

#: Handshakes with a 60 KB server name, each leaving a ticket in the server's store.
HUGE_SNI_HANDSHAKES = 400
HUGE_SNI = 60_000
#: What one ticket may keep in memory (max_tickets of them: 4,096 by default).
TICKET_BUDGET = 8 * KiB

#: max_early_data of the servers that accept early data.
EARLY_LIMIT = 16 * KiB
#: What a server that declines early data skips (design: Early data).
SKIPPED_EARLY_LIMIT = 64 * KiB

#: Server CPU one client Certificate may cost, whatever it holds (256 KiB at most).
CERTIFICATE_CPU_LIMIT = 0.075
#: Size of the huge client chain: under the 256 KiB handshake message limit.
HUGE_CHAIN_BYTES = 250 * KiB

#: KeyUpdates of the plain TLS case: read between batches, then not read at all.
KEY_UPDATES_READ = 20_000
KEY_UPDATES_UNREAD = 30_000
#: Server CPU per KeyUpdate (25 µs measured: a key derivation each way).
KEY_UPDATE_CPU_LIMIT = 100e-6
#: Growth allowed while the client does not read the server's answers.
KEY_UPDATE_GROWTH_LIMIT = 16 * MiB


# ----------------------------------------------------------------------------- a tuned server

_SERVER_SCRIPT = """
import asyncio, json, sys
import tcpls
from tcpls.apps.echo import echo_handler
from tcpls.cli.serve import serve_until_interrupted
from tcpls.config import ServerConfig, SessionTuning

spec = json.loads(sys.argv[1])
tuning = SessionTuning(**spec.pop("tuning", {}))
config = ServerConfig(tuning=tuning, **spec)

async def main():
    server = await tcpls.serve(echo_handler, "127.0.0.1", int(sys.argv[2]), config=config)
    await serve_until_interrupted(server, "tcpls: serving")

asyncio.run(main())
"""


class TunedServer(ServerProcess):
    """The echo server of ``tcpls serve --echo`` with a :class:`~tcpls.ServerConfig` of our
    choosing: ``spec`` holds its fields (JSON values), ``tuning`` those of its
    :class:`~tcpls.SessionTuning`. Watched like :class:`ServerProcess`."""

    def __init__(self, pki: DevPKI, workdir: Path, spec: dict[str, Any]) -> None:
        super().__init__(pki, workdir)
        self.spec = {**spec, "certfile": str(pki.cert_file), "keyfile": str(pki.key_file)}

    def start(self, timeout: float = 15.0) -> None:
        from tests.helpers import free_port

        for _ in range(3):
            self.port = free_port()
            with open(self._stderr_path, "wb") as err:
                self.proc = subprocess.Popen(
                    [sys.executable, "-c", _SERVER_SCRIPT, json.dumps(self.spec), str(self.port)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                    env=self._env,
                )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if "serving" in self.stderr_text():
                    self._watch = threading.Thread(target=self._watchdog, daemon=True)
                    self._watch.start()
                    return
                if self.proc.poll() is not None:
                    break  # the port was taken meanwhile, or a bad spec: try again
                time.sleep(0.02)
            self._kill()
        raise RuntimeError(f"the tuned server did not start: {self.stderr_text()[-2000:]}")


TunedArena = Callable[..., Arena]


@pytest.fixture
def tuned(pki: DevPKI, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[TunedArena]:
    """``tuned(spec)``: an arena around a fresh :class:`TunedServer`, warmed up by a good
    client (``warm(port)`` instead, when given: e.g. one with a client certificate)."""
    servers: list[TunedServer] = []
    arenas: list[Arena] = []

    def make(spec: dict[str, Any], *, warm: Callable[[int], object] | None = None) -> Arena:
        workdir = tmp_path / f"tuned-{len(servers)}"
        workdir.mkdir()
        server = TunedServer(pki, workdir, spec)
        servers.append(server)
        server.start()
        if warm is None:
            good_client_echo(server.port, pki, timeout=10.0)  # imports, first allocations
        else:
            warm(server.port)
        server.wait_idle(timeout=3.0)
        arena = Arena(server=server, pki=pki, name=request.node.name)
        arena.begin()
        arenas.append(arena)
        return arena

    try:
        yield make
    finally:
        for arena in arenas:
            for client in arena.clients:
                client.close()
        for server in servers:
            server.stop()


# ----------------------------------------------------------------------------- raw records


def _records(content_type: int, payload: bytes, *, first: bool = False) -> bytes:
    """``payload`` as plaintext records of at most 2^14 bytes."""
    out = bytearray()
    for at in range(0, max(len(payload), 1), 1 << 14):
        part = payload[at : at + (1 << 14)]
        version = 0x0301 if first and not out else 0x0303
        out += bytes([content_type]) + version.to_bytes(2, "big") + len(part).to_bytes(2, "big")
        out += part
    return bytes(out)


def _hello_bytes(hello: ClientHello, *, first: bool = True) -> bytes:
    return _records(22, hello.encode(), first=first)


class RawPeer:
    """One TCP connection speaking plaintext records by hand (hellos, alerts)."""

    def __init__(self, port: int, *, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buffer = bytearray()
        self.eof = False
        #: The plaintext alert the server sent, if one was read.
        self.alert: int | None = None

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or self.eof:
            return False
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            return False
        except OSError:
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.buffer += chunk
        return True

    def record(self, timeout: float = 5.0) -> tuple[int, bytes] | None:
        """The next whole record ``(type, body)``; ``None`` at EOF or on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            if len(self.buffer) >= 5:
                size = int.from_bytes(self.buffer[3:5], "big")
                if len(self.buffer) >= 5 + size:
                    record = (self.buffer[0], bytes(self.buffer[5 : 5 + size]))
                    del self.buffer[: 5 + size]
                    return record
            if not self._fill(deadline):
                return None

    def server_hello(self, timeout: float = 5.0) -> ServerHello | None:
        """The ServerHello or HelloRetryRequest that comes next (``None``: an alert or EOF)."""
        while (record := self.record(timeout)) is not None:
            content_type, body = record
            if content_type == 22:
                return parse_server_hello(body[: 4 + int.from_bytes(body[1:4], "big")])
            if content_type == 21 and len(body) == 2:
                self.alert = body[1]
                return None
        return None

    def wait_alert(self, timeout: float = 5.0) -> int | None:
        """Read until a plaintext alert (returned) or EOF (``None``)."""
        while self.alert is None and (record := self.record(timeout)) is not None:
            if record[0] == 21 and len(record[1]) == 2:
                self.alert = record[1][1]
        return self.alert

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


# ----------------------------------------------------------------------------- hellos

#: Group codes no server takes, for junk key shares.
_JUNK_GROUP = 0x0200


def _template(pki: DevPKI) -> ClientHello:
    """The ClientHello our client sends (X25519MLKEM768 and x25519 shares, TCPLS)."""
    record = client_hello_record(pki)
    return parse_client_hello(record[5 : 5 + int.from_bytes(record[3:5], "big")])


def _x25519_share() -> bytes:
    return x25519.X25519PrivateKey.generate().public_key().public_bytes_raw()


def _p256_share() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def _with_shares(
    template: ClientHello, shares: Sequence[tuple[int, bytes]], groups: Sequence[int]
) -> ClientHello:
    """``template`` with a fresh random and these key shares and supported groups."""
    extensions = dict(template.extensions)
    extensions[ExtensionType.key_share] = encode_client_key_shares(shares)
    extensions[ExtensionType.supported_groups] = encode_u16_list(groups)
    return dataclasses.replace(template, random=os.urandom(32), extensions=extensions)


def _hrr_hello(template: ClientHello) -> ClientHello:
    """A ClientHello whose only share is for x448 (not a default server group) and that
    supports x25519: the server must ask for x25519 with a HelloRetryRequest."""
    return _with_shares(template, [(Group.x448, os.urandom(56))], [Group.x448, Group.x25519])


def _send_hellos(port: int, hellos: Iterator[bytes], count: int) -> list[socket.socket]:
    sockets: list[socket.socket] = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sockets.append(sock)
        sock.sendall(next(hellos))
    return sockets


def _wait_all_closed(sockets: list[socket.socket], deadline: float) -> int:
    """Read every socket until EOF or ``deadline``; how many the server closed."""
    open_ = {s.fileno(): s for s in sockets}
    closed = 0
    while open_ and time.monotonic() < deadline:
        ready, _, _ = select.select(list(open_.values()), [], [], 0.1)
        for sock in ready:
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                del open_[sock.fileno()]
                closed += 1
    return closed


# ----------------------------------------------------------------------------- tickets


def _session_ticket(port: int, pki: DevPKI, **config: Any) -> SessionTicket:
    """A ticket from a good session (an echo, then a graceful close)."""

    async def run() -> SessionTicket:
        client_config = tcpls.ClientConfig(
            cafile=str(pki.ca_file), server_name="localhost", **config
        )
        session = await tcpls.connect("127.0.0.1", port, config=client_config)
        reader, writer = await session.open_stream()
        writer.write(b"a ticket, please")
        writer.write_eof()
        await reader.read()
        await session.aclose(timeout=5)
        ticket = session.session_ticket
        assert isinstance(ticket, SessionTicket), "the server sent no session ticket"
        return ticket

    return asyncio.run(asyncio.wait_for(run(), 10))


def _garbage_ticket(*, max_early_data: int = 0, tcpls_mode: bool = True) -> SessionTicket:
    """A ticket the server never issued (random label and secret)."""
    return SessionTicket(
        ticket=os.urandom(32),
        psk=os.urandom(48),
        cipher_suite=CipherSuite.AES_256_GCM_SHA384,
        lifetime=7200,
        age_add=int.from_bytes(os.urandom(4), "big"),
        received_at=time.time(),
        max_early_data=max_early_data,
        server_name="localhost",
        alpn_protocol=None,
        tcpls=tcpls_mode,
    )


def _client_tls(pki: DevPKI, **engine: Any) -> TLSConnection:
    """A client TLS connection with our engine, built with ``engine``'s options."""
    options: dict[str, Any] = {"server_name": "localhost", "cafile": str(pki.ca_file)}
    options.update(engine)
    return TLSConnection.client(ClientEngine(**options))


def _first_flight(pki: DevPKI, **engine: Any) -> bytes:
    tls = _client_tls(pki, **engine)
    tls.start()
    return tls.data_to_send()


def _resumed(port: int, flight: bytes) -> tuple[bool | None, int | None]:
    """Send a first flight; whether the ServerHello accepts its PSK (``None``: no
    ServerHello), and the plaintext alert if one came instead."""
    peer = RawPeer(port)
    try:
        peer.send(flight)
        hello = peer.server_hello()
        if hello is None:
            return None, peer.alert
        return ExtensionType.pre_shared_key in hello.extensions, None
    finally:
        peer.close()


def _end_session(client: HostileClient) -> None:
    """End a hostile client's session at once (an unknown frame type: decode_error)."""
    if not client.closed:
        with contextlib.suppress(OSError):
            client.send_record(b"\xfe")
        client.wait_closed(5.0)
    client.close()


# ----------------------------------------------------------------------------- early data


def _early_content(ticket: SessionTicket, data: bytes, offset: int) -> bytes:
    """One early record's content: a Stream frame of stream 0 in TCPLS mode, else bytes."""
    if ticket.tcpls:
        return encode_frames([StreamFrame(0, offset, data, False)])
    return data


def _seal_early(tls: TLSConnection, content: bytes) -> None:
    tls.staging_buffer()[: len(content)] = content
    tls.early.seal(len(content))


def _early_client(
    pki: DevPKI, ticket: SessionTicket, chunks: Sequence[bytes], **engine: Any
) -> TLSConnection:
    """A client that offers early data with ``ticket`` and seals ``chunks`` as early
    records (their contents, as they are) right after its ClientHello."""
    tls = _client_tls(pki, session_ticket=ticket, early_data=True, **engine)
    tls.start()
    for chunk in chunks:
        _seal_early(tls, chunk)
    return tls


def _wait_handshake(client: HostileClient, timeout: float = 5.0) -> None:
    """Read (answering what our TLS answers) until our handshake completes or it ends."""
    client.wait_until(lambda: client.handshake is not None or client.closed, timeout)


def _early_stream(ticket: SessionTicket, total: int, size: int = 4000) -> list[bytes]:
    return [
        _early_content(ticket, b"e" * min(size, total - at), at) for at in range(0, total, size)
    ]


# ----------------------------------------------------------------------------- certificates


def _name(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


def _client_credentials(pki: DevPKI, directory: Path) -> tuple[Path, Path]:
    """A client certificate from ``pki``'s CA (clientAuth, a subjectAltName) and its key."""
    ca_cert = x509.load_pem_x509_certificate(pki.ca_file.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca_key_file.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("good client"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("client.tcpls.test")]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = directory / "client.pem", directory / "client.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def _good_client_with_certificate(
    port: int, pki: DevPKI, cert_file: Path, key_file: Path, *, timeout: float = 3.0
) -> GoodClientResult:
    """:func:`good_client_echo` for a server that requires a client certificate."""
    payload = b"a good client with a certificate " + os.urandom(8).hex().encode()

    async def run() -> float:
        start = time.monotonic()
        config = tcpls.ClientConfig(
            cafile=str(pki.ca_file),
            server_name="localhost",
            certfile=str(cert_file),
            keyfile=str(key_file),
        )
        session = await tcpls.connect("127.0.0.1", port, config=config)
        try:
            reader, writer = await session.open_stream()
            writer.write(payload)
            writer.write_eof()
            echoed = await reader.read()
        except BaseException:
            session.abort()
            raise
        elapsed = time.monotonic() - start
        with contextlib.suppress(Exception):
            await asyncio.wait_for(session.aclose(), 2.0)
        if echoed != payload:
            raise OSError(f"echo mismatch: {echoed[:80]!r}")
        return elapsed

    start = time.monotonic()
    try:
        return GoodClientResult(asyncio.run(asyncio.wait_for(run(), timeout)))
    except (TimeoutError, OSError, tcpls.TCPLSError) as exc:
        return GoodClientResult(time.monotonic() - start, f"{type(exc).__name__}: {exc}")


def _certificate(
    subject: x509.Name,
    issuer: x509.Name,
    key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey,
    *,
    expired: bool = False,
    ca: bool = False,
    leaf: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=2))
        .not_valid_after(now + datetime.timedelta(days=-1 if expired else 1))
    )
    if ca:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=None), critical=True
        ).add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    if leaf:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("client.tcpls.test")]), critical=False
        ).add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False
        )
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm)


def _huge_reversed_chain(
    limit: int,
) -> tuple[list[x509.Certificate], ed25519.Ed25519PrivateKey]:
    """An expired leaf, then as many small intermediates as fit in ``limit`` bytes, each
    issuing the one before it, sent in the *reverse* order (the issuer of each comes
    last): a server that walks the chain by names does it in O(n²)."""
    key = ed25519.Ed25519PrivateKey.generate()
    leaf = _certificate(_name("0"), _name("1"), key, expired=True)
    size = len(leaf.public_bytes(serialization.Encoding.DER)) + 5
    count = limit // (size + 4)
    intermediates = [_certificate(_name(f"{i}"), _name(f"{i + 1}"), key) for i in range(1, count)]
    return [leaf, *reversed(intermediates)], key


class _RawDER:
    """Stands for a certificate in a client's chain: its DER is whatever we say."""

    def __init__(self, der: bytes) -> None:
        self.der = der

    def public_bytes(self, encoding: serialization.Encoding) -> bytes:
        return self.der


def _certificate_attempt(
    arena: Arena, pki: DevPKI, chain: Sequence[object], key: object
) -> tuple[int | None, float, HostileClient]:
    """One handshake presenting ``chain``: the alert the server answers, and its CPU."""
    tls = _client_tls(pki, certificate_chain=chain, private_key=key)
    before = arena.server.cpu()
    client = arena.track(HostileClient(arena.port, tls, timeout=10.0))
    with contextlib.suppress(ConnectionError, TimeoutError, OSError):
        client.complete_handshake()
    client.wait_closed(10.0)
    arena.server.wait_idle(window=0.1, timeout=5.0)
    return client.alert, arena.server.cpu() - before, client


# ============================================================================= HelloRetryRequest


def test_hrr_flood_is_cheap_and_timed_out(tuned: TunedArena, pki: DevPKI) -> None:
    """Hellos that each force a HelloRetryRequest and never answer: the server computes
    no key exchange for them, holds a bounded amount for each, keeps serving others, and
    drops them all when ``handshake_timeout`` expires (hello_timeout no longer applies
    once a ClientHello came: design: Server limits)."""
    arena = tuned({"tuning": {"handshake_timeout": SHORT_HANDSHAKE_TIMEOUT}})
    template = _template(pki)
    hellos = (_hello_bytes(_hrr_hello(template)) for _ in iter(int, 1))
    sockets = _send_hellos(arena.port, hellos, HRR_FLOOD)
    sent_at = time.monotonic()
    try:
        arena.server.wait_idle(window=0.1, timeout=2.0)  # every hello was read
        cpu = arena.cpu_used()
        rss = arena.server.rss()
        result = good_client_echo(arena.port, pki)
        # the first of them got a HelloRetryRequest
        sock = sockets[0]
        sock.settimeout(5)
        reply = sock.recv(65536)
        is_hrr = reply[:1] == b"\x16" and reply[5 + 4 + 2 : 5 + 4 + 2 + 32] == HRR_RANDOM
        closed = _wait_all_closed(sockets, sent_at + SHORT_HANDSHAKE_TIMEOUT + TIMER_SLACK)
        arena.note(
            hellos=HRR_FLOOD,
            cpu_per_hello_ms=cpu / HRR_FLOOD * 1e3,
            per_pending_kib=(rss - arena.baseline_rss) / HRR_FLOOD / KiB,
            good_client_during_s=result.seconds,
            closed_by_timer=closed,
            seconds_to_close=time.monotonic() - sent_at,
        )
        arena.expect(is_hrr, f"the server did not answer with a HelloRetryRequest: {reply[:48]!r}")
        arena.expect(
            cpu / HRR_FLOOD <= HRR_CPU_LIMIT,
            f"a HelloRetryRequest cost the server {cpu / HRR_FLOOD * 1e3:.2f} ms of CPU",
        )
        arena.expect(
            rss - arena.baseline_rss <= HRR_PENDING_BUDGET * HRR_FLOOD,
            f"{HRR_FLOOD} pending retried handshakes cost the server "
            f"{(rss - arena.baseline_rss) / MiB:.1f} MiB",
        )
        arena.expect(
            result.ok,
            f"a good client was not served during the flood ({result.seconds:.2f} s, "
            f"{result.error})",
        )
        arena.expect(
            closed == HRR_FLOOD,
            f"only {closed} of {HRR_FLOOD} retried handshakes were dropped within "
            f"handshake_timeout ({SHORT_HANDSHAKE_TIMEOUT:g} s) + {TIMER_SLACK:g} s",
        )
    finally:
        for sock in sockets:
            sock.close()
    arena.finish()


def test_unanswered_hellos_do_not_lock_out_new_clients(tuned: TunedArena, pki: DevPKI) -> None:
    """max_sessions ClientHellos that are never followed up (here with a
    HelloRetryRequest: the server computes nothing for them) must not keep a good client
    out. Today every one of them holds a session slot until handshake_timeout (10 s by
    default), so max_sessions such hellos, re-sent every 10 s, refuse every new client with
    ``user_canceled``: the flood ``max_pending_connections`` stops, one message later.

    Fix: do not let unauthenticated handshakes take the slots of sessions. Count the
    sessions whose handshake is not complete apart (``ServerConfig.max_handshakes``,
    default e.g. 1,024) and, when a new ClientHello comes with that many in progress,
    abort the one that started longest ago (as ``_protocol_factory`` does for pending
    connections) instead of refusing the newcomer in ``_session_gate``; and wait for a
    second ClientHello after a HelloRetryRequest no longer than ``hello_timeout``.
    """
    arena = tuned({"max_sessions": LOCKOUT_MAX_SESSIONS})
    template = _template(pki)
    hellos = (_hello_bytes(_hrr_hello(template)) for _ in iter(int, 1))
    sockets = _send_hellos(arena.port, hellos, LOCKOUT_MAX_SESSIONS + 16)
    try:
        arena.server.wait_idle(timeout=5.0)
        result = good_client_echo(arena.port, pki)
        arena.note(unanswered=len(sockets), good_client_s=result.seconds, error=result.error)
        arena.expect(
            result.ok,
            f"{len(sockets)} unanswered ClientHellos (max_sessions {LOCKOUT_MAX_SESSIONS}) "
            f"locked a good client out: {result.error}",
        )
        arena.finish()
    finally:
        for sock in sockets:
            sock.close()


def test_second_client_hello_must_follow_the_hrr_rules(arena: Arena, pki: DevPKI) -> None:
    """design: HelloRetryRequest: the second ClientHello echoes the cookie, brings exactly
    the share asked for, keeps its random, session ID and cipher suites, and drops early
    data; anything else ends the handshake (no second HelloRetryRequest)."""
    template = _template(pki)
    good_share = [(Group.x25519, _x25519_share())]

    def ch2(first: ClientHello, cookie: bytes, **changes: Any) -> ClientHello:
        extensions = dict(first.extensions)
        extensions[ExtensionType.key_share] = encode_client_key_shares(
            changes.pop("shares", good_share)
        )
        extensions[ExtensionType.cookie] = cookie
        for ext, body in changes.pop("extensions", {}).items():
            if body is None:
                extensions.pop(ext, None)
            else:
                extensions[ext] = body
        return dataclasses.replace(first, extensions=extensions, **changes)

    variants: dict[str, tuple[Callable[[ClientHello, bytes], ClientHello], int | None]] = {
        "valid": (lambda f, c: ch2(f, c), None),
        "no cookie": (
            lambda f, c: ch2(f, c, extensions={ExtensionType.cookie: None}),
            A.illegal_parameter,
        ),
        "another cookie": (lambda f, c: ch2(f, vector(os.urandom(32), 2)), A.illegal_parameter),
        "early_data": (
            lambda f, c: ch2(f, c, extensions={ExtensionType.early_data: b""}),
            A.illegal_parameter,
        ),
        "another random": (lambda f, c: ch2(f, c, random=os.urandom(32)), A.illegal_parameter),
        "another session id": (
            lambda f, c: ch2(f, c, legacy_session_id=os.urandom(32)),
            A.illegal_parameter,
        ),
        "other cipher suites": (
            lambda f, c: ch2(f, c, cipher_suites=tuple(reversed(f.cipher_suites))),
            A.illegal_parameter,
        ),
        "a share for another group": (
            lambda f, c: ch2(f, c, shares=[(Group.secp256r1, _p256_share())]),
            A.illegal_parameter,
        ),
        "two shares": (
            lambda f, c: ch2(f, c, shares=[*good_share, (Group.secp256r1, _p256_share())]),
            A.illegal_parameter,
        ),
        "still no usable share (a second HRR)": (
            lambda f, c: ch2(f, c, shares=[(Group.x448, os.urandom(56))]),
            A.illegal_parameter,
        ),
        "an x25519 share of 31 bytes": (
            lambda f, c: ch2(f, c, shares=[(Group.x25519, os.urandom(31))]),
            A.illegal_parameter,
        ),
        "no key_share": (
            lambda f, c: ch2(f, c, extensions={ExtensionType.key_share: None}),
            A.missing_extension,
        ),
    }
    outcomes: dict[str, object] = {}
    for name, (make, alert) in variants.items():
        first = _hrr_hello(template)
        peer = RawPeer(arena.port)
        try:
            peer.send(_hello_bytes(first))
            retry = peer.server_hello()
            if retry is None or not retry.is_retry_request:
                arena.expect(False, f"{name}: no HelloRetryRequest (alert {peer.alert})")
                continue
            asked = int.from_bytes(retry.extensions[ExtensionType.key_share], "big")
            arena.expect(asked == Group.x25519, f"{name}: the HRR asked for group {asked:#x}")
            peer.send(
                _hello_bytes(make(first, retry.extensions[ExtensionType.cookie]), first=False)
            )
            if alert is None:
                answer = peer.server_hello()
                ok = answer is not None and not answer.is_retry_request
                outcomes[name] = "ServerHello" if ok else f"alert {peer.alert}"
                arena.expect(ok, f"{name}: no ServerHello (alert {peer.alert})")
            else:
                got = peer.wait_alert()
                outcomes[name] = got
                arena.expect(got == alert, f"{name}: expected alert {alert}, got {got}")
        finally:
            peer.close()
    arena.note(outcomes=outcomes)
    arena.finish()


# ============================================================================= key shares


def test_key_share_bloat_costs_only_the_chosen_group(arena: Arena, pki: DevPKI) -> None:
    """ClientHellos with hundreds of junk key shares, or dozens of ML-KEM-sized ones, plus
    one x25519 share: the server decodes them but computes only the group it picks, so a
    bloated hello costs about what a plain one does. Invalid shares for the group it
    picks, and two shares for one group, are ``illegal_parameter`` (design: Key exchange
    groups)."""
    template = _template(pki)
    junk_groups = [_JUNK_GROUP + i for i in range(JUNK_SHARES)]
    kem_groups = [_JUNK_GROUP + i for i in range(JUNK_KEM_SHARES)]
    kinds: dict[str, Callable[[], ClientHello]] = {
        "plain": lambda: _with_shares(template, [(Group.x25519, _x25519_share())], [Group.x25519]),
        f"{JUNK_SHARES} junk shares": lambda: _with_shares(
            template,
            [*((g, os.urandom(100)) for g in junk_groups), (Group.x25519, _x25519_share())],
            [*junk_groups, Group.x25519],
        ),
        f"{JUNK_KEM_SHARES} ML-KEM-sized junk shares": lambda: _with_shares(
            template,
            [*((g, os.urandom(1216)) for g in kem_groups), (Group.x25519, _x25519_share())],
            [*kem_groups, Group.x25519],
        ),
    }
    cpu_ms: dict[str, float] = {}
    for kind, make in kinds.items():
        hellos = [_hello_bytes(make()) for _ in range(HELLO_BATCH)]
        groups: set[int] = set()
        arena.server.wait_idle(window=0.1, timeout=3.0)
        before = arena.server.cpu()
        for hello in hellos:
            peer = RawPeer(arena.port)
            try:
                peer.send(hello)
                answer = peer.server_hello()
                groups.add(
                    -1
                    if answer is None
                    else decode_server_key_share(answer.extensions[ExtensionType.key_share])[0]
                )
            finally:
                peer.close()
        arena.server.wait_idle(window=0.1, timeout=3.0)
        per_hello = (arena.server.cpu() - before) / HELLO_BATCH
        cpu_ms[kind] = round(per_hello * 1e3, 2)
        arena.expect(groups == {Group.x25519}, f"{kind}: answered with groups {groups}")
        arena.expect(
            per_hello <= HELLO_CPU_LIMIT,
            f"{kind}: {per_hello * 1e3:.2f} ms of server CPU per hello",
        )
    invalid: dict[str, tuple[list[tuple[int, bytes]], list[int]]] = {
        "ML-KEM share of the wrong size": (
            [(Group.X25519MLKEM768, os.urandom(1000))],
            [Group.X25519MLKEM768],
        ),
        "ML-KEM share that does not decode": (
            [(Group.X25519MLKEM768, b"\xff" * 1184 + _x25519_share())],
            [Group.X25519MLKEM768],
        ),
        "two shares for one group": (
            [(Group.x25519, _x25519_share()), (Group.x25519, _x25519_share())],
            [Group.x25519],
        ),
        "a share for a group not in supported_groups": (
            [(Group.x25519, _x25519_share())],
            [Group.secp256r1],
        ),
    }
    alerts: dict[str, int | None] = {}
    for name, (shares, supported) in invalid.items():
        peer = RawPeer(arena.port)
        try:
            peer.send(_hello_bytes(_with_shares(template, shares, supported)))
            alerts[name] = peer.wait_alert()
        finally:
            peer.close()
        arena.expect(alerts[name] == A.illegal_parameter, f"{name}: expected illegal_parameter")
    arena.note(cpu_per_hello_ms=cpu_ms, alerts=alerts)
    arena.finish()


def test_post_quantum_handshake_flood(arena: Arena, pki: DevPKI) -> None:
    """Informational: server CPU per full handshake with X25519MLKEM768 (our client's
    default) and with x25519 alone, under a regression bound; a good client is served."""
    per_group: dict[str, float] = {}
    for name, groups in (("X25519MLKEM768", None), ("x25519", [Group.x25519])):
        arena.server.wait_idle(window=0.1, timeout=3.0)
        before = arena.server.cpu()
        for _ in range(PQ_HANDSHAKES):
            options = {} if groups is None else {"groups": groups}
            client = HostileClient(arena.port, _client_tls(pki, **options))
            client.complete_handshake()
            arena.expect(client.tls.tcpls, f"{name}: TCPLS was not negotiated")
            _end_session(client)
        arena.server.wait_idle(window=0.1, timeout=3.0)
        per_group[name] = (arena.server.cpu() - before) / PQ_HANDSHAKES
    arena.note(cpu_per_handshake_ms={k: round(v * 1e3, 2) for k, v in per_group.items()})
    for name, cpu in per_group.items():
        arena.expect(
            cpu <= FULL_HANDSHAKE_CPU_LIMIT,
            f"a full {name} handshake cost the server {cpu * 1e3:.1f} ms of CPU",
        )
    arena.finish()


# ============================================================================= PSK and tickets


def test_garbage_and_replayed_psks(arena: Arena, pki: DevPKI) -> None:
    """Resumption attempts with garbage identities and binders get full handshakes and
    do not disturb the store (a real ticket issued before them still resumes, once); a
    replayed resumption ClientHello gets a full handshake (tickets are single-use); a
    real identity with a wrong binder is ``decrypt_error``, and that ticket is spent
    (it was removed before the binder was checked: the first use may be an attacker's,
    as SECURITY.md says)."""
    ticket = _session_ticket(arena.port, pki)
    spent = _session_ticket(arena.port, pki)
    garbage = [_first_flight(pki, session_ticket=_garbage_ticket()) for _ in range(HELLO_BATCH)]
    arena.server.wait_idle(window=0.1, timeout=3.0)
    before = arena.server.cpu()
    answers = [_resumed(arena.port, flight) for flight in garbage]
    arena.server.wait_idle(window=0.1, timeout=3.0)
    per_hello = (arena.server.cpu() - before) / HELLO_BATCH
    arena.expect(
        all(answer == (False, None) for answer in answers),
        f"garbage PSKs must get full handshakes: {set(answers)}",
    )
    arena.expect(
        per_hello <= HELLO_CPU_LIMIT,
        f"a garbage PSK hello cost the server {per_hello * 1e3:.2f} ms of CPU",
    )
    resumption = _first_flight(pki, session_ticket=ticket)
    first = _resumed(arena.port, resumption)
    replay = _resumed(arena.port, resumption)
    arena.expect(first == (True, None), f"the real ticket must resume once: {first}")
    arena.expect(replay == (False, None), f"a replayed ClientHello must not resume: {replay}")
    flight = bytearray(_first_flight(pki, session_ticket=spent))
    flight[-1] ^= 1  # the last byte of the binder
    bad_binder = _resumed(arena.port, bytes(flight))
    after = _resumed(arena.port, _first_flight(pki, session_ticket=spent))
    arena.expect(
        bad_binder == (None, A.decrypt_error),
        f"a wrong binder: expected decrypt_error, {bad_binder}",
    )
    arena.note(
        garbage_cpu_per_hello_ms=per_hello * 1e3,
        resumed_then_replayed=(first, replay),
        wrong_binder=bad_binder,
        ticket_after_wrong_binder=after,
    )
    arena.finish()


def test_ticket_store_is_bounded_by_max_tickets(tuned: TunedArena, pki: DevPKI) -> None:
    """Each handshake leaves one ticket; the store keeps ``max_tickets`` of them and drops
    the oldest (design: Tickets): a ticket issued before max_tickets newer ones no longer
    resumes, the newest does."""
    max_tickets = 8
    arena = tuned({"max_tickets": max_tickets})
    oldest = _session_ticket(arena.port, pki)
    for _ in range(max_tickets + 4):
        client = HostileClient.connect(arena.port, pki)
        arena.expect(client.sync(), "a handshake did not complete")  # our Finished was read
        _end_session(client)
    newest = _session_ticket(arena.port, pki)
    evicted = _resumed(arena.port, _first_flight(pki, session_ticket=oldest))
    kept = _resumed(arena.port, _first_flight(pki, session_ticket=newest))
    arena.note(oldest=evicted, newest=kept)
    arena.expect(evicted == (False, None), f"the oldest ticket was not dropped: {evicted}")
    arena.expect(kept == (True, None), f"the newest ticket did not resume: {kept}")
    arena.finish()


def test_tickets_do_not_keep_huge_server_names(arena: Arena, pki: DevPKI) -> None:
    """A client may send a server_name of up to 64 KiB (the ClientHello limit), and the
    server keeps it in the ticket it issues (``ServerTicket.server_name``, never read on
    the server side) for ``ticket_lifetime`` (2 h). Each full x25519 handshake costs the
    server ~1 ms of CPU; 4,096 of them (max_tickets) pin ~240 MiB, which no limit counts
    (memory_budget covers sessions only). Measured: ~59 KiB kept per ticket, against
    ~0.7 KiB with a normal name.

    Fix: refuse a host_name longer than 255 bytes in ``codec.decode_server_name`` (RFC
    6066 §3 names are DNS host names, at most 253 characters; OpenSSL refuses longer
    ones) with ``decode_error``; and stop storing ``server_name`` in ``ServerTicket``
    (the server never uses it), or store at most 255 bytes of it.
    """
    refused = 0
    for _ in range(HUGE_SNI_HANDSHAKES):
        tls = _client_tls(pki, server_name="a" * HUGE_SNI, verify=False, groups=[Group.x25519])
        client = HostileClient(arena.port, tls)
        try:
            client.complete_handshake()
        except (ConnectionError, TimeoutError, OSError):
            refused += 1  # a server that refuses such names keeps nothing
            client.close()
            continue
        client.sync()  # the server read our Finished: it issued its ticket
        _end_session(client)
    arena.server.wait_idle(timeout=5.0)
    kept = arena.server.rss() - arena.baseline_rss
    per_ticket = kept / HUGE_SNI_HANDSHAKES
    arena.note(refused=refused, kept_mib=kept / MiB, per_ticket_kib=per_ticket / KiB)
    arena.expect(
        per_ticket <= TICKET_BUDGET,
        f"each handshake with a {HUGE_SNI}-byte server_name left {per_ticket / KiB:.1f} KiB "
        f"in the server after its session ended (max_tickets 4,096 of them: "
        f"{per_ticket * 4096 / MiB:.0f} MiB)",
    )
    arena.finish()


# ============================================================================= early data


@pytest.mark.parametrize("tcpls_mode", [True, False], ids=["tcpls", "plain"])
def test_early_data_beyond_max_early_data(
    tuned: TunedArena, pki: DevPKI, tcpls_mode: bool
) -> None:
    """A client whose ticket allows early data sends twice max_early_data of it: the server
    must end with ``unexpected_message`` (design: Early data), holding no more than
    max_early_data meanwhile."""
    arena = tuned({"max_early_data": EARLY_LIMIT, "tcpls": tcpls_mode})
    ticket = _session_ticket(arena.port, pki)
    arena.expect(ticket.max_early_data == EARLY_LIMIT, f"ticket limit {ticket.max_early_data}")
    unlimited = dataclasses.replace(ticket, max_early_data=1 << 30)  # our side: no limit
    tls = _early_client(pki, unlimited, _early_stream(ticket, 2 * EARLY_LIMIT))
    arena.server.reset_peak()
    client = arena.track(HostileClient(arena.port, tls))
    client.send_raw(tls.data_to_send())
    arena.expect_alert(client, A.unexpected_message, "early data beyond max_early_data")
    if arena.peak_reset:
        arena.note(peak_growth_mib=arena.peak_growth() / MiB)
        arena.expect(
            arena.peak_growth() < 8 * MiB,
            f"the server grew by {arena.peak_growth() / MiB:.1f} MiB",
        )
    arena.finish()


def test_early_records_carry_only_stream_frames(tuned: TunedArena, pki: DevPKI) -> None:
    """An early record with an ACK frame (design: Early data: only Stream and Padding) is
    ``unexpected_message``."""
    arena = tuned({"max_early_data": EARLY_LIMIT})
    ticket = _session_ticket(arena.port, pki)
    chunks = [encode_frames([StreamFrame(0, 0, b"early", False), Ack(0, 0)])]
    tls = _early_client(pki, ticket, chunks)
    client = arena.track(HostileClient(arena.port, tls))
    client.send_raw(tls.data_to_send())
    arena.expect_alert(client, A.unexpected_message, "an ACK frame in early data")
    arena.finish()


@pytest.mark.parametrize("tcpls_mode", [True, False], ids=["tcpls", "plain"])
def test_early_data_without_finished_is_bounded_by_the_handshake_timeout(
    tuned: TunedArena, pki: DevPKI, tcpls_mode: bool
) -> None:
    """A resumed client sends early data, reads the server's answer (it comes before the
    client's Finished, as the design says) and never sends EndOfEarlyData or Finished:
    the server must end the session at ``handshake_timeout``. (Before 0239c73 such a
    session cancelled its handshake timer when it started early and was held until
    ``idle_timeout``, 300 s, plus ``close_timeout`` in TCPLS mode: the unanswered Ping
    did not end it either, since the client has no key to answer it with.)"""
    arena = tuned(
        {
            "max_early_data": EARLY_LIMIT,
            "tcpls": tcpls_mode,
            "tuning": {"handshake_timeout": SHORT_HANDSHAKE_TIMEOUT},
        }
    )
    ticket = _session_ticket(arena.port, pki)
    tls = _early_client(pki, ticket, [_early_content(ticket, b"hello, early", 0)])
    sock = socket.create_connection(("127.0.0.1", arena.port), timeout=5)
    sent = time.monotonic()
    answered = False
    closed_after: float | None = None
    try:
        sock.sendall(tls.data_to_send())  # the ClientHello and the early data: nothing more
        deadline = sent + SHORT_HANDSHAKE_TIMEOUT + TIMER_SLACK
        while time.monotonic() < deadline:
            sock.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                data = sock.recv(65536)
            except TimeoutError:
                break
            except OSError:
                data = b""
            if not data:
                closed_after = time.monotonic() - sent
                break
            tls.receive_data(data)  # we read the server, and never answer it
            while tls.next_event() is not None:
                pass
            while (record := tls.read_record()) is not None:
                answered = answered or b"hello, early" in bytes(record)
    finally:
        sock.close()
    arena.note(early_answered=answered, closed_after_s=closed_after)
    arena.expect(answered, "the server did not answer the early data before Finished")
    arena.expect(
        closed_after is not None,
        f"a session started early whose client never sent Finished was still up "
        f"{SHORT_HANDSHAKE_TIMEOUT + TIMER_SLACK:g} s later (handshake_timeout "
        f"{SHORT_HANDSHAKE_TIMEOUT:g} s)",
    )
    arena.finish()


def test_declined_early_data_is_skipped_up_to_64k(arena: Arena, pki: DevPKI) -> None:
    """A server that declines early data (off here; the ticket is unknown) skips the early
    records it cannot decrypt, up to 64 KiB (design: Early data): with less the handshake
    completes and the session works; with more it is ``bad_record_mac``."""
    outcomes: dict[str, object] = {}
    for total, expected in (
        (SKIPPED_EARLY_LIMIT - 4 * KiB, None),
        (SKIPPED_EARLY_LIMIT + 6 * KiB, A.bad_record_mac),
    ):
        ticket = _garbage_ticket(max_early_data=1 << 30)
        tls = _early_client(pki, ticket, _early_stream(ticket, total, 16_000))
        client = arena.track(HostileClient(arena.port, tls))
        client.send_raw(tls.data_to_send())
        _wait_handshake(client)
        if expected is None:
            works = client.handshake is not None and client.sync(5.0)
            outcomes[f"{total} bytes"] = "works" if works else f"alert {client.alert}"
            arena.expect(works, f"{total} bytes of declined early data: the session must work")
        else:
            client.sync(2.0)
            client.wait_closed(5.0)
            outcomes[f"{total} bytes"] = client.alert
            arena.expect(
                client.alert == expected,
                f"{total} bytes of declined early data: expected bad_record_mac, "
                f"got {client.alert}",
            )
    arena.note(outcomes=outcomes)
    arena.finish()


def test_early_data_after_a_hello_retry_request_is_skipped(tuned: TunedArena, pki: DevPKI) -> None:
    """A client offers early data with shares for groups the server does not take: it
    gets a HelloRetryRequest, and the early records it sent after its first ClientHello
    must be skipped (RFC 8446 §4.2.10: "skipping all records with an external content
    type of application_data ... up to the configured max_early_data_size"), then the
    handshake completes in one more round trip. Today they reach the record layer while
    the server has no read key and fail as "application data before the handshake"
    (``unexpected_message``): a 0-RTT client whose groups differ from the server's
    preferences (``--groups secp384r1`` here) cannot connect at all.

    Fix: in ``TLSConnection._records``, an ``application_data`` record that comes while
    ``layer.read is None`` and ``layer.early_data_skip > 0`` (set by the handshake after
    the HRR, since ``ServerEngine._retry`` sets ``skip_early_data``) is skipped without
    trial decryption, decrementing ``early_data_skip`` by its length and raising
    ``BadRecordMac`` once it reaches 0, as ``RecordLayer.skip_early_data`` does.
    """
    arena = tuned({"groups": ["secp384r1"]})
    ticket = _garbage_ticket(max_early_data=1 << 30)
    groups = [Group.x25519, Group.secp256r1, Group.secp384r1]  # shares for the first two
    tls = _early_client(pki, ticket, _early_stream(ticket, 4 * KiB), groups=groups)
    client = arena.track(HostileClient(arena.port, tls))
    client.send_raw(tls.data_to_send())
    _wait_handshake(client)
    works = client.handshake is not None and client.sync(5.0)
    arena.note(alert=client.alert, works=works)
    arena.expect(works, f"the handshake failed after the HRR: alert {client.alert}")
    arena.finish()


# ============================================================================= client certificates


@pytest.fixture
def client_cert_arena(tuned: TunedArena, pki: DevPKI, tmp_path: Path) -> tuple[Arena, Path, Path]:
    """A server that requires client certificates from ``pki``'s CA, and a good client's
    certificate and key."""
    cert_file, key_file = _client_credentials(pki, tmp_path / "client")
    arena = tuned(
        {"client_cafile": str(pki.ca_file)},
        warm=lambda port: _good_client_with_certificate(
            port, pki, cert_file, key_file, timeout=10
        ),
    )
    return arena, cert_file, key_file


def _finish_with_certificate(arena: Arena, pki: DevPKI, cert_file: Path, key_file: Path) -> None:
    result = _good_client_with_certificate(arena.port, pki, cert_file, key_file)
    arena.note(good_client_s=result.seconds)
    arena.expect(
        result.ok,
        f"a good client with a certificate was not served within {GOOD_CLIENT_DEADLINE} s "
        f"({result.seconds:.2f} s, {result.error})",
    )
    arena.finish(good_client=False)


def test_bad_client_certificate_chains(
    client_cert_arena: tuple[Arena, Path, Path], pki: DevPKI
) -> None:
    """Chains deeper than max_chain_depth (8), chains with garbage in them, and a
    Certificate message over the 256 KiB handshake message limit: each gets its alert
    for a bounded amount of server CPU; a client without a certificate gets
    ``certificate_required``."""
    arena, cert_file, key_file = client_cert_arena
    key = ec.generate_private_key(ec.SECP256R1())
    depth = 12
    cas = [
        _certificate(_name(f"rogue CA {i}"), _name(f"rogue CA {i + 1}"), key, ca=True)
        for i in range(1, depth + 1)
    ]
    deep = [_certificate(_name("deep leaf"), _name("rogue CA 1"), key, leaf=True), *cas]
    garbage = [deep[0], *(_RawDER(os.urandom(1000)) for _ in range(200))]
    ed_key = ed25519.Ed25519PrivateKey.generate()
    small = _certificate(_name("x"), _name("y"), ed_key)
    over = [small] * (260 * KiB // len(small.public_bytes(serialization.Encoding.DER)))
    cases: list[tuple[str, Sequence[object], object, set[int]]] = [
        (f"a chain {depth} CAs deep", deep, key, {A.unknown_ca}),
        ("200 garbage certificates", garbage, key, {A.bad_certificate}),  # > 16 read
        ("a Certificate over 256 KiB", over, ed_key, {A.decode_error}),
        ("no certificate", [], None, {A.certificate_required}),
    ]
    results: dict[str, tuple[int | None, float]] = {}
    for name, chain, chain_key, alerts in cases:
        alert, cpu, _ = _certificate_attempt(arena, pki, chain, chain_key)
        results[name] = (alert, round(cpu * 1e3, 1))
        arena.expect(alert in alerts, f"{name}: expected alert {alerts}, got {alert}")
        arena.expect(
            cpu <= CERTIFICATE_CPU_LIMIT,
            f"{name}: the server spent {cpu * 1e3:.0f} ms of CPU on it",
        )
    arena.note(alert_and_cpu_ms=results)
    _finish_with_certificate(arena, pki, cert_file, key_file)


def test_huge_client_chain_costs_bounded_cpu(
    client_cert_arena: tuple[Arena, Path, Path], pki: DevPKI
) -> None:
    """An unauthenticated client sends, under the 256 KiB message limit, an expired leaf
    and ~1,100 tiny Ed25519 intermediates in reverse order. cryptography gives up at once
    (expired), but ``CertificateVerifier._explain`` → ``_validity`` → ``_issuers`` walks
    the chain by subject/issuer names with a linear search and ``list.remove`` per step:
    O(n²) Name comparisons: 130-150 ms of CPU (and of event loop stall: every other
    client waits) per handshake, for 250 KiB of input (~25 ms with the fix below);
    ``_unknown_issuer`` does the same for "exceeds max depth" and unknown issuers. A
    handful of such clients in a loop keep the server's event loop busy.

    Fix: make ``_issuers`` linear and bounded: index ``chain[1:]`` by subject once
    (``dict[Name, list[Certificate]]``) and stop after ``max_chain_depth + 1`` steps; and
    refuse, before parsing, a client Certificate with more entries than any usable chain
    has (e.g. ``max_chain_depth + 2``, or 16) with ``bad_certificate`` in
    ``ServerEngine._client_certificate``.
    """
    arena, cert_file, key_file = client_cert_arena
    chain, key = _huge_reversed_chain(HUGE_CHAIN_BYTES)
    results: list[tuple[int | None, float]] = []
    for _ in range(3):
        alert, cpu, _ = _certificate_attempt(arena, pki, chain, key)
        results.append((alert, round(cpu * 1e3, 1)))
    worst = max(cpu for _, cpu in results) / 1e3
    arena.note(certificates=len(chain), alert_and_cpu_ms=results)
    arena.expect(  # bad_certificate: refused for its length, before it is parsed
        all(alert in (A.certificate_expired, A.bad_certificate) for alert, _ in results),
        f"expected certificate_expired or bad_certificate: {results}",
    )
    arena.expect(
        worst <= CERTIFICATE_CPU_LIMIT,
        f"a {len(chain)}-certificate client chain cost the server {worst * 1e3:.0f} ms of "
        f"CPU (limit {CERTIFICATE_CPU_LIMIT * 1e3:.0f} ms)",
    )
    _finish_with_certificate(arena, pki, cert_file, key_file)


# ============================================================================= KeyUpdate


def test_key_update_loop_in_plain_tls(arena: Arena, pki: DevPKI) -> None:
    """A plain TLS client sends KeyUpdate(update_requested) in a loop, reading the
    answers, then without reading them: the server answers (one answer stands for the
    requests until its next application data), its CPU per KeyUpdate stays bounded, its
    memory does not follow the unread answers (TCP backpressure), and the session still
    echoes afterwards."""
    client = arena.track(HostileClient(arena.port, _client_tls(pki, tcpls=False)))
    client.complete_handshake()
    arena.expect(not client.tls.tcpls, "the session negotiated TCPLS")
    arena.server.reset_peak()
    sent = 0
    before = arena.server.cpu()
    for read, count in ((True, KEY_UPDATES_READ), (False, KEY_UPDATES_UNREAD)):
        for i in range(count):
            client.tls.key_update(request_peer_update=True)
            if i % 1000 == 999:
                try:
                    client.flush(5.0)
                except OSError:
                    break  # the server stopped reading: backpressure
                sent += 1000
                if read:
                    client.poll()
    arena.server.wait_idle(timeout=10.0)
    cpu = arena.server.cpu() - before
    growth = arena.peak_growth() if arena.peak_reset else arena.server.rss() - arena.baseline_rss
    message = b"still echoing after the key updates"
    client.tls.send_data(message)
    client.flush()
    client.wait_until(lambda: message in b"".join(client.records), 5.0)
    echoed = message in b"".join(client.records)
    arena.note(
        key_updates=sent,
        cpu_per_key_update_us=cpu / max(sent, 1) * 1e6,
        growth_mib=growth / MiB,
        echoed=echoed,
    )
    arena.expect(sent == KEY_UPDATES_READ + KEY_UPDATES_UNREAD, f"only {sent} were sent")
    arena.expect(
        cpu / max(sent, 1) <= KEY_UPDATE_CPU_LIMIT,
        f"a KeyUpdate cost the server {cpu / max(sent, 1) * 1e6:.0f} µs of CPU",
    )
    arena.expect(
        growth <= KEY_UPDATE_GROWTH_LIMIT,
        f"unread KeyUpdate answers grew the server by {growth / MiB:.1f} MiB",
    )
    arena.expect(echoed, f"the session no longer echoes (alert {client.alert})")
    arena.finish()
