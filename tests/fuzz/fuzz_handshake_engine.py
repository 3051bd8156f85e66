"""Fuzz target ``handshake_engine``: the TLS 1.3 handshake engine (:mod:`tcpls.tls.hs`) on
arbitrary bytes.

Input: handshake messages as they arrive, one after the other (each a type, a 24-bit length
and its body; bytes after the last whole message make one more, incomplete, message). They go

1. whole, to every ``parse_*`` function of :mod:`tcpls.tls.hs.codec`, and their bodies to
   every ``decode_*`` reader of an extension body: a value that parses must encode to bytes
   that parse to the same value;
2. message by message, to two fresh :class:`ServerEngine` (the first message as the
   ClientHello): one with a ticket store (holding :data:`TICKET_LABEL`, so a seed can resume
   and send early data) and 0-RTT allowed, one that asks for a client certificate;
3. message by message, to two :class:`ClientEngine` after ``start()`` (the first message as
   the ServerHello): a deterministic one (fixed random and X25519 key, no path validation),
   so that a seed holding a real server flight answering its ClientHello goes all the way to
   NewSessionTicket, and one that resumes with a ticket and offers early data.

The oracle: only :class:`tcpls.errors.ProtocolError` may escape, never with the
``internal_error`` alert; an engine stops at its first error. Anything else (an exception, a
broken round trip: :class:`FuzzFailure`) is a bug.

Seeds are real messages (``python -m tests.fuzz.fuzz_handshake_engine`` writes them into
``corpus/handshake_engine/``): our ClientHellos (full, resuming with early data, one that
gets a HelloRetryRequest), and server flights answering the deterministic client.

This module does not import atheris, nor :mod:`tests.fuzz.targets` at import time (that
module imports this one).
"""

from __future__ import annotations

import atexit
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import x25519

from tcpls.config import load_certificate_chain, load_private_key
from tcpls.devcert import DevPKI, make_test_pki
from tcpls.errors import AlertDescription, ProtocolError
from tcpls.tls.hs import codec
from tcpls.tls.hs.base import HandshakeEngine
from tcpls.tls.hs.certs import CertificateVerifier
from tcpls.tls.hs.client import ClientEngine
from tcpls.tls.hs.groups import Group, KeyShare
from tcpls.tls.hs.server import ServerEngine
from tcpls.tls.hs.tickets import ServerTicket, SessionTicket, TicketStore
from tcpls.tls.record import CipherSuite

__all__ = ["CLIENT_RANDOM", "TICKET_LABEL", "TICKET_PSK", "handshake_engine", "seeds"]

#: What the deterministic client's ``random`` returns (its random, then its session id).
CLIENT_RANDOM = bytes(range(0x20, 0x40))
#: The X25519 private key of the deterministic client.
CLIENT_X25519 = bytes(range(1, 33))
#: The ticket label the servers' store knows, the PSK it stands for, its suite.
TICKET_LABEL = b"tcpls fuzz ticket label........."
TICKET_PSK = bytes(range(0x80, 0xA0))
TICKET_SUITE = CipherSuite.AES_128_GCM_SHA256
TICKET_AGE_ADD = 0x01020304
MAX_EARLY_DATA = 16384
ALPN = ("h2", "http/1.1")


def _failure(text: str) -> AssertionError:
    """A :class:`~tests.fuzz.targets.FuzzFailure` (imported late: targets imports us)."""
    from tests.fuzz.targets import FuzzFailure

    return FuzzFailure(text)


# --------------------------------------------------------------------------- material


@dataclass(frozen=True)
class _Material:
    pki: DevPKI
    chain: list[x509.Certificate]
    key: Any


_material: _Material | None = None


def _get_material() -> _Material:
    """The fuzz PKI (:func:`tests.fuzz.targets.fuzz_pki`), loaded once per process."""
    global _material
    if _material is None:
        try:
            from tests.fuzz.targets import fuzz_pki

            pki = fuzz_pki()
        except ImportError:  # pragma: no cover - this module run on its own
            directory = Path(tempfile.mkdtemp(prefix="tcpls-fuzz-hs-pki-"))
            atexit.register(shutil.rmtree, directory, True)
            pki = make_test_pki(directory)
        _material = _Material(
            pki, load_certificate_chain(pki.cert_file), load_private_key(pki.key_file)
        )
    return _material


class _FixedTickets(TicketStore):
    """A store that knows :data:`TICKET_LABEL` (fresh, at every ``pop``) and nothing else."""

    def pop(self, label: bytes, now: float | None = None) -> ServerTicket | None:
        if label != TICKET_LABEL:
            return super().pop(label, now)
        return ServerTicket(
            psk=TICKET_PSK,
            cipher_suite=TICKET_SUITE,
            issued_at=time.time(),
            lifetime=3600,
            age_add=TICKET_AGE_ADD,
            max_early_data=MAX_EARLY_DATA,
            alpn_protocol="h2",
            tcpls=True,
        )


def client_ticket(received_at: float | None = None) -> SessionTicket:
    """The client's side of :data:`TICKET_LABEL`."""
    return SessionTicket(
        ticket=TICKET_LABEL,
        psk=TICKET_PSK,
        cipher_suite=TICKET_SUITE,
        lifetime=3600,
        age_add=TICKET_AGE_ADD,
        received_at=time.time() if received_at is None else received_at,
        max_early_data=MAX_EARLY_DATA,
        server_name="localhost",
        alpn_protocol="h2",
        tcpls=True,
    )


def deterministic_client() -> ClientEngine:
    """A client whose ClientHello is the same bytes every time."""
    share = KeyShare(
        Group.x25519, x25519_private=x25519.X25519PrivateKey.from_private_bytes(CLIENT_X25519)
    )
    return ClientEngine(
        server_name="localhost",
        verify=False,
        alpn_protocols=ALPN,
        groups=[Group.x25519],
        key_shares=[share],
        random=lambda n: CLIENT_RANDOM[:n],
    )


def resuming_client() -> ClientEngine:
    """A client that resumes with :data:`TICKET_LABEL` and offers early data (its ticket age,
    and so its ClientHello, differ from one run to the next)."""
    m = _get_material()
    return ClientEngine(
        server_name="localhost",
        cafile=str(m.pki.ca_file),
        alpn_protocols=ALPN,
        groups=[Group.x25519, Group.secp256r1],
        session_ticket=client_ticket(),
        early_data=True,
        random=lambda n: CLIENT_RANDOM[:n],
    )


def resuming_server() -> ServerEngine:
    m = _get_material()
    return ServerEngine(
        certificate_chain=m.chain,
        private_key=m.key,
        alpn_protocols=["h2"],
        ticket_store=_FixedTickets(),
        max_early_data=MAX_EARLY_DATA,
        token_provider=lambda: bytes(32),
    )


def authenticating_server() -> ServerEngine:
    m = _get_material()
    return ServerEngine(
        certificate_chain=m.chain,
        private_key=m.key,
        client_verifier=CertificateVerifier(cafile=str(m.pki.ca_file)),
    )


# --------------------------------------------------------------------------- the target


def split(data: bytes) -> Iterator[bytes]:
    """Handshake messages by their headers; a last incomplete one is given as it is."""
    while data:
        end = 4 + int.from_bytes(data[1:4], "big") if len(data) >= 4 else len(data)
        yield data[:end]
        data = data[end:]


def _check(error: ProtocolError, where: str) -> None:
    if error.alert == AlertDescription.internal_error:
        raise _failure(f"{where}: internal_error: {error!r}") from error


def _feed(engine: HandshakeEngine, messages: list[bytes], where: str) -> None:
    """Messages to ``engine`` until the first refusal."""
    for message in messages:
        try:
            out = engine.handle_message(message)
        except ProtocolError as error:
            _check(error, where)
            return
        for _epoch, data in out:
            for sent in split(data):
                if len(sent) < 4 or len(sent) != 4 + int.from_bytes(sent[1:4], "big"):
                    raise _failure(f"{where}: sent a malformed message {sent[:8].hex()}")


_Parse = Callable[[bytes], Any]

#: Each parser of a whole message; its result's ``encode()`` must parse to the same value.
PARSERS: tuple[_Parse, ...] = (
    codec.parse_client_hello,
    codec.parse_server_hello,
    codec.parse_encrypted_extensions,
    codec.parse_certificate_request,
    codec.parse_certificate,
    codec.parse_certificate_verify,
    codec.parse_new_session_ticket,
)

#: Readers of extension bodies, and how to encode their result again (``None``: no encoder).
DECODERS: tuple[tuple[_Parse, Callable[[Any], bytes] | None], ...] = (
    (codec.decode_alpn, codec.encode_alpn),
    (codec.decode_client_key_shares, codec.encode_client_key_shares),
    (codec.decode_cookie, lambda cookie: codec.vector(cookie, 2)),
    (
        codec.decode_pre_shared_key,
        lambda offer: codec.encode_pre_shared_key(offer.identities, offer.binders),
    ),
    (codec.decode_psk_modes, lambda modes: codec.vector(modes, 1)),
    (codec.decode_server_name, None),
    (codec.decode_server_key_share, lambda s: s[0].to_bytes(2, "big") + codec.vector(s[1], 2)),
    (lambda body: codec.decode_u16(body, "fuzz"), lambda v: v.to_bytes(2, "big")),
    (lambda body: codec.decode_u16_list(body, "fuzz"), codec.encode_u16_list),
    (codec.decode_versions, lambda v: codec.encode_u16_list(v, 1)),
)


def _parsers(data: bytes) -> None:
    for parse in PARSERS:
        try:
            value = parse(data)
        except ProtocolError as error:
            _check(error, parse.__name__)
            continue
        again = parse(value.encode())
        if again != value:
            raise _failure(f"{parse.__name__}: {value!r} encodes to {again!r}")
    for body in {data, data[4:]}:
        for decode, encode in DECODERS:
            try:
                value = decode(body)
            except ProtocolError as error:
                _check(error, "decoder")
                continue
            if encode is not None and decode(encode(value)) != value:
                raise _failure(f"decoder {decode!r}: {value!r} does not round-trip")


def handshake_engine(data: bytes) -> None:
    """The target (see the module)."""
    _parsers(data)
    messages = list(split(data))
    if not messages:
        return
    _feed(resuming_server(), messages, "server")
    _feed(authenticating_server(), messages, "authenticating server")
    for make, where in ((deterministic_client, "client"), (resuming_client, "resuming client")):
        client = make()
        client.start()
        _feed(client, messages, where)


# --------------------------------------------------------------------------- seeds


def _answer(engine: HandshakeEngine, messages: list[bytes]) -> list[bytes]:
    return [r for msg in messages for _, d in engine.handle_message(msg) for r in split(d)]


def _drive(client: ClientEngine, server: ServerEngine) -> tuple[list[bytes], list[bytes]]:
    """A handshake, to its end or to the first refusal: (what the client sent, what the
    server sent), message by message."""
    to_server = [m for _, data in client.start() for m in split(data)]
    sent_by_client = list(to_server)
    sent_by_server: list[bytes] = []
    try:
        while to_server:
            to_client = _answer(server, to_server)
            sent_by_server += to_client
            to_server = _answer(client, to_client)
            sent_by_client += to_server
    except ProtocolError:
        pass
    return sent_by_client, sent_by_server


def seeds() -> dict[str, bytes]:
    """The seed corpus: real messages of our engines, by name."""
    m = _get_material()
    out: dict[str, bytes] = {}
    # the deterministic client against a plain server, then one that issues a ticket
    store = TicketStore()
    server = ServerEngine(
        certificate_chain=m.chain,
        private_key=m.key,
        alpn_protocols=["h2"],
        ticket_store=store,
        token_provider=lambda: bytes(32),
    )
    client = deterministic_client()
    from_client, from_server = _drive(client, server)
    assert client.complete, "the deterministic client did not complete"
    out["client-hello"] = from_client[0]
    out["client-hello-and-finished"] = b"".join(from_client)
    out["server-flight-and-ticket"] = b"".join(from_server)
    for message in from_server:
        name = codec.HandshakeType(message[0]).name.replace("_", "-")
        out[f"server-{name}"] = message
    # a server that asks for a certificate (the client has none: an empty Certificate)
    client = deterministic_client()
    from_client, from_server = _drive(client, authenticating_server())
    out["server-flight-with-certificate-request"] = b"".join(from_server)
    out["client-empty-certificate-and-finished"] = b"".join(from_client[1:])
    # resumption with early data: accepted by the servers of the target
    client = ClientEngine(
        server_name="localhost",
        verify=False,
        alpn_protocols=ALPN,
        groups=[Group.x25519],
        session_ticket=client_ticket(),
        early_data=True,
        random=lambda n: CLIENT_RANDOM[:n],
    )
    from_client, from_server = _drive(client, resuming_server())
    out["client-hello-psk-early-data"] = from_client[0]
    out["client-hello-psk-then-end-of-early-data"] = b"".join(from_client)
    out["server-flight-psk-early-data"] = b"".join(from_server)
    # a ClientHello that gets a HelloRetryRequest (a share in x448 only), and the retry
    client = ClientEngine(server_name="localhost", verify=False, groups=[Group.x448, Group.x25519])
    server = ServerEngine(certificate_chain=m.chain, private_key=m.key, groups=[Group.x25519])
    first = [msg for _, d in client.start() for msg in split(d)]
    retry = _answer(server, first)
    second = _answer(client, retry)
    out["client-hello-then-retried"] = b"".join(first + second)
    out["hello-retry-request"] = retry[0]
    # a retry asking the deterministic client for a cookie only (it has one group)
    cookie_retry = codec.ServerHello(
        random=codec.HRR_RANDOM,
        legacy_session_id=CLIENT_RANDOM,
        cipher_suite=CipherSuite.AES_128_GCM_SHA256,
        extensions={
            codec.ExtensionType.supported_versions: codec.TLS13.to_bytes(2, "big"),
            codec.ExtensionType.cookie: codec.vector(b"a cookie", 2),
        },
    )
    out["hello-retry-request-cookie"] = cookie_retry.encode()
    return out


def main(argv: list[str]) -> None:
    directory = Path(__file__).resolve().parent / "corpus" / "handshake_engine"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    found = seeds()
    for name, data in found.items():
        (directory / name).write_bytes(data)
    total = sum(len(d) for d in found.values())
    print(f"{len(found)} seeds, {total} bytes, in {directory}")


if __name__ == "__main__":
    main(sys.argv)
