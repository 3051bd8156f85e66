"""Negative tests of the handshake engine: every message, broken, ends with the alert
RFC 8446 names.

Each case runs a real handshake between our :class:`ClientEngine` and :class:`ServerEngine`
(in memory, message by message, as in ``test_engine.py``), stops one message on its way to
the engine that receives it, hands that engine a mutated copy instead (or other messages:
out of order, twice) and checks the :class:`~tcpls.errors.ProtocolError` it raises: its
``alert`` is the one the RFC names for that fault (§4, §4.2, §6.2, §9.2, Appendix D.5).
``alert=None`` means the receiver must accept the message (a rule says to ignore it).

Cases where the engine does not do what the RFC says yet are strict xfails whose reason
names the fix (``_fix``); the state machines are fixed elsewhere.

Each regression found by fuzzing the engine (``tests/fuzz/fuzz_handshake_engine.py``) has
a case here too (marked "fuzz").
"""

from __future__ import annotations

import datetime
import hashlib
import struct
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tcpls.config import load_certificate_chain, load_private_key
from tcpls.devcert import DevPKI
from tcpls.errors import AlertDescription, ProtocolError
from tcpls.tls.hs.base import HandshakeEngine
from tcpls.tls.hs.certs import CertificateVerifier
from tcpls.tls.hs.client import ClientEngine
from tcpls.tls.hs.codec import (
    Certificate,
    CertificateRequest,
    CertificateVerify,
    ClientHello,
    EncryptedExtensions,
    ExtensionType,
    HandshakeType,
    NewSessionTicket,
    PskOffer,
    ServerHello,
    decode_alpn,
    decode_client_key_shares,
    decode_pre_shared_key,
    encode_alpn,
    encode_client_key_shares,
    encode_pre_shared_key,
    encode_u16_list,
    finished_message,
    handshake_message,
    parse_certificate,
    parse_certificate_request,
    parse_certificate_verify,
    parse_client_hello,
    parse_encrypted_extensions,
    parse_new_session_ticket,
    parse_server_hello,
    vector,
)
from tcpls.tls.hs.groups import Group, KeyShare
from tcpls.tls.hs.keyschedule import KeySchedule
from tcpls.tls.hs.server import ServerEngine
from tcpls.tls.hs.tickets import SessionTicket, TicketStore
from tcpls.tls.record import CipherSuite, suite_hash

A = AlertDescription
T = HandshakeType
E = ExtensionType
Receiver = Literal["client", "server"]

#: An extension type nobody assigned (not GREASE either).
UNKNOWN_EXTENSION = 0xFF01
#: A cipher suite we never offer (TLS_AES_128_CCM_SHA256).
CCM_SUITE = 0x1304
DOWNGRADE_TLS12 = b"DOWNGRD\x01"
DOWNGRADE_TLS11 = b"DOWNGRD\x00"
#: The version field of an X.509 v3 certificate (explicit [0] INTEGER 2).
V3 = b"\xa0\x03\x02\x01\x02"


# --------------------------------------------------------------------------- material


@dataclass(frozen=True)
class Material:
    """Keys and certificates of both ends, made once per test session."""

    pki: DevPKI
    server_chain: list[x509.Certificate]
    server_key: ec.EllipticCurvePrivateKey
    client_chain: list[x509.Certificate]
    client_key: ec.EllipticCurvePrivateKey
    other_chain: list[x509.Certificate]


def _client_certificate(pki: DevPKI) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_key = load_private_key(pki.ca_key_file)
    ca = load_certificate_chain(pki.ca_file)[0]
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "client")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("client")]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


@pytest.fixture(scope="module")
def material(pki: DevPKI, other_pki: DevPKI) -> Material:
    client_cert, client_key = _client_certificate(pki)
    return Material(
        pki=pki,
        server_chain=load_certificate_chain(pki.cert_file),
        server_key=load_private_key(pki.key_file),
        client_chain=[client_cert],
        client_key=client_key,
        other_chain=load_certificate_chain(other_pki.cert_file),
    )


# --------------------------------------------------------------------------- scenarios


@dataclass
class Scene:
    """One handshake being played: both engines, and what was delivered so far."""

    material: Material
    client: ClientEngine
    server: ServerEngine
    #: The ticket the client resumes with, if any.
    ticket: SessionTicket | None = None
    #: Messages delivered unchanged, in order, with the side that received them.
    log: list[tuple[Receiver, bytes]] = field(default_factory=list)

    def delivered(self, receiver: Receiver, msg_type: int) -> bytes:
        """The last message of ``msg_type`` that ``receiver`` was given."""
        for who, message in reversed(self.log):
            if who == receiver and message[0] == msg_type:
                return message
        raise AssertionError(f"the {receiver} was given no message of type {msg_type}")


def split(data: bytes) -> Iterator[bytes]:
    """Concatenated handshake messages, one by one."""
    while data:
        end = 4 + int.from_bytes(data[1:4], "big")
        yield data[:end]
        data = data[end:]


def _engines(
    m: Material, client_args: dict[str, Any], server_args: dict[str, Any]
) -> tuple[ClientEngine, ServerEngine]:
    client = ClientEngine(server_name="localhost", cafile=str(m.pki.ca_file), **client_args)
    server = ServerEngine(
        certificate_chain=m.server_chain, private_key=m.server_key, **server_args
    )
    return client, server


def _drive(client: ClientEngine, server: ServerEngine) -> None:
    """A whole handshake, tickets included (to make tickets for resumption)."""
    queue: deque[tuple[HandshakeEngine, bytes]] = deque(
        (server, msg) for _, data in client.start() for msg in split(data)
    )
    while queue:
        dest, message = queue.popleft()
        other: HandshakeEngine = server if dest is client else client
        queue.extend(
            (other, msg) for _, data in dest.handle_message(message) for msg in split(data)
        )
    assert client.complete and server.complete


def _ticket(m: Material, store: TicketStore, max_early_data: int = 0) -> SessionTicket:
    client, server = _engines(m, {}, {"ticket_store": store, "max_early_data": max_early_data})
    _drive(client, server)
    return client.session_tickets[0]


def _scene(m: Material, client_args: dict[str, Any], server_args: dict[str, Any]) -> Scene:
    client, server = _engines(m, client_args, server_args)
    return Scene(m, client, server, client_args.get("session_ticket"))


ALPN = {"alpn_protocols": ["h2", "http/1.1"]}


def _full(m: Material) -> Scene:
    return _scene(m, ALPN, {"alpn_protocols": ["h2"], "ticket_store": TicketStore()})


def _bare(m: Material) -> Scene:
    """No ALPN, no TCPLS: a client that offers only what TLS 1.3 needs."""
    return _scene(m, {"tcpls": False}, {"tcpls": False})


def _hrr(m: Material) -> Scene:
    groups = [Group.secp384r1, Group.x448, Group.x25519]
    return _scene(m, {"groups": groups}, {"groups": [Group.x25519]})


def _group(group: Group) -> Callable[[Material], Scene]:
    def make(m: Material) -> Scene:
        return _scene(m, {"groups": [group, Group.secp384r1]}, {"groups": [group]})

    return make


def _client_auth(m: Material) -> Scene:
    return _scene(
        m,
        {"certificate_chain": m.client_chain, "private_key": m.client_key},
        {"client_verifier": CertificateVerifier(cafile=str(m.pki.ca_file))},
    )


def _resume(m: Material) -> Scene:
    store = TicketStore()
    ticket = _ticket(m, store)
    return _scene(m, {"session_ticket": ticket}, {"ticket_store": store})


def _early(m: Material) -> Scene:
    store = TicketStore()
    ticket = _ticket(m, store, max_early_data=1024)
    return _scene(
        m,
        {"session_ticket": ticket, "early_data": True},
        {"ticket_store": store, "max_early_data": 1024},
    )


def _early_declined(m: Material) -> Scene:
    store = TicketStore()
    ticket = _ticket(m, store, max_early_data=1024)
    return _scene(m, {"session_ticket": ticket, "early_data": True}, {"ticket_store": store})


SCENARIOS: dict[str, Callable[[Material], Scene]] = {
    "full": _full,
    "bare": _bare,
    "hrr": _hrr,
    "x25519": _group(Group.x25519),
    "p256": _group(Group.secp256r1),
    "mlkem": _group(Group.X25519MLKEM768),
    "client_auth": _client_auth,
    "resume": _resume,
    "early": _early,
    "early_declined": _early_declined,
}


# --------------------------------------------------------------------------- cases

#: Replaces the intercepted message by the messages to deliver instead.
Mutation = Callable[[bytes, Scene], Sequence[bytes]]


@dataclass(frozen=True)
class Case:
    """One broken message: where it goes, how it is broken, the alert it must get."""

    id: str
    receiver: Receiver
    target: int  # the handshake type of the message intercepted
    mutate: Mutation
    alert: AlertDescription | None  # None: the receiver must accept it
    scenario: str = "full"
    occurrence: int = 1  # intercept the n-th message of that type
    xfail: str | None = None  # the engine's bug, and the fix it needs


def play(case: Case, m: Material) -> ProtocolError | None:
    """Run the case's handshake; the error the receiver raised on the mutated message."""
    scene = SCENARIOS[case.scenario](m)
    client, server = scene.client, scene.server
    engines: dict[Receiver, HandshakeEngine] = {"client": client, "server": server}
    queue: deque[tuple[Receiver, bytes]] = deque(
        ("server", msg) for _, data in client.start() for msg in split(data)
    )
    seen = 0
    while queue:
        receiver, message = queue.popleft()
        engine = engines[receiver]
        if receiver == case.receiver and message[0] == case.target:
            seen += 1
            if seen == case.occurrence:
                try:
                    for replacement in case.mutate(message, scene):
                        engine.handle_message(replacement)
                except ProtocolError as error:
                    return error
                return None
        scene.log.append((receiver, message))
        other: Receiver = "client" if receiver == "server" else "server"
        for _epoch, data in engine.handle_message(message):
            queue.extend((other, msg) for msg in split(data))
    raise AssertionError(
        f"{case.id}: message type {case.target} #{case.occurrence} never reached the "
        f"{case.receiver}"
    )


def check(case: Case, m: Material) -> None:
    error = play(case, m)
    if case.alert is None:
        assert error is None, f"{case.id}: refused with {error!r}"
    else:
        assert error is not None, f"{case.id}: accepted, {case.alert.name} expected"
        assert error.alert == case.alert, f"{case.id}: {error!r}, {case.alert.name} expected"


def _fix(where: str, what: str) -> str:
    return f"engine bug; fix in {where}: {what}"


# --------------------------------------------------------------------------- mutations


def same(message: bytes, scene: Scene) -> list[bytes]:
    return [message]


def replace(*messages: bytes) -> Mutation:
    def mutate(message: bytes, scene: Scene) -> list[bytes]:
        return list(messages)

    return mutate


def twice(message: bytes, scene: Scene) -> list[bytes]:
    return [message, message]


def earlier(receiver: Receiver, msg_type: int) -> Mutation:
    """Deliver again a message ``receiver`` already got, instead of this one."""

    def mutate(message: bytes, scene: Scene) -> list[bytes]:
        return [scene.delivered(receiver, msg_type)]

    return mutate


def truncated(keep: int) -> Mutation:
    """The first ``keep`` bytes of the body (all but ``-keep`` if negative), with a length
    that says so."""

    def mutate(message: bytes, scene: Scene) -> list[bytes]:
        body = message[4:]
        return [handshake_message(message[0], body[:keep])]

    return mutate


def cut(size: int) -> Mutation:
    """The first ``size`` bytes of the message (all but ``-size`` if negative), its length
    unchanged (it overruns)."""

    def mutate(message: bytes, scene: Scene) -> list[bytes]:
        return [message[:size]]

    return mutate


def trailing(message: bytes, scene: Scene) -> list[bytes]:
    """One byte more at the end of the body, with a length that says so."""
    return [handshake_message(message[0], message[4:] + b"\x00")]


def flip_last(message: bytes, scene: Scene) -> list[bytes]:
    return [message[:-1] + bytes((message[-1] ^ 1,))]


def _ext_block(message: bytes) -> int:
    """Where the extension block of a message starts (its 2-byte length)."""
    pos = 4
    if message[0] == T.client_hello:
        pos += 34
        pos += 1 + message[pos]
        pos += 2 + int.from_bytes(message[pos : pos + 2], "big")
        pos += 1 + message[pos]
    elif message[0] == T.server_hello:
        pos += 34
        pos += 1 + message[pos] + 3
    elif message[0] == T.certificate_request:
        pos += 1 + message[pos]
    elif message[0] == T.new_session_ticket:
        pos += 8
        pos += 1 + message[pos]
        pos += 2 + int.from_bytes(message[pos : pos + 2], "big")
    else:
        assert message[0] == T.encrypted_extensions
    return pos


def _entries(block: bytes) -> list[bytes]:
    """The raw entries (type, length, body) of an extension block's contents."""
    out = []
    while block:
        end = 4 + int.from_bytes(block[2:4], "big")
        out.append(block[:end])
        block = block[end:]
    return out


def raw_extensions(edit: Callable[[list[bytes]], list[bytes]]) -> Mutation:
    """Edit the raw extension entries of a message (duplicates can be made here)."""

    def mutate(message: bytes, scene: Scene) -> list[bytes]:
        start = _ext_block(message)
        entries = edit(_entries(message[start + 2 :]))
        body = message[4:start] + vector(b"".join(entries), 2)
        return [handshake_message(message[0], body)]

    return mutate


def duplicate(ext_type: int) -> Mutation:
    """The first extension of ``ext_type`` appears twice (the copy appended at the end)."""

    def edit(entries: list[bytes]) -> list[bytes]:
        entry = next(e for e in entries if int.from_bytes(e[:2], "big") == ext_type)
        return [*entries, entry]

    return raw_extensions(edit)


def entry(ext_type: int, body: bytes) -> bytes:
    return struct.pack(">HH", ext_type, len(body)) + body


def put(exts: dict[int, bytes], ext_type: int, body: bytes) -> None:
    """Set an extension, keeping pre_shared_key last."""
    psk = exts.pop(E.pre_shared_key, None)
    exts[ext_type] = body
    if psk is not None and ext_type != E.pre_shared_key:
        exts[E.pre_shared_key] = psk


def rebind(message: bytes, ticket: SessionTicket) -> bytes:
    """A first ClientHello with its PSK binder computed again (after a mutation)."""
    hello = parse_client_hello(message)
    offer = decode_pre_shared_key(hello.extensions[E.pre_shared_key])
    digest = hashlib.new(suite_hash(ticket.cipher_suite).name)
    digest.update(message[: -offer.binders_size])
    schedule = KeySchedule(ticket.cipher_suite, ticket.psk)
    binder = schedule.finished(schedule.binder_key(), digest.digest())
    hello.extensions[E.pre_shared_key] = encode_pre_shared_key(offer.identities, [binder])
    return hello.encode()


def client_hello(edit: Callable[[ClientHello], None], *, bind: bool = False) -> Mutation:
    """Edit a ClientHello; ``bind``: with a valid binder again (the scene's ticket)."""

    def mutate(message: bytes, scene: Scene) -> list[bytes]:
        hello = parse_client_hello(message)
        edit(hello)
        encoded = hello.encode()
        if bind:
            assert scene.ticket is not None
            encoded = rebind(encoded, scene.ticket)
        return [encoded]

    return mutate


def server_hello(edit: Callable[[ServerHello], None]) -> Mutation:
    def mutate(message: bytes, scene: Scene) -> list[bytes]:
        hello = parse_server_hello(message)
        edit(hello)
        return [hello.encode()]

    return mutate


def encrypted_extensions(edit: Callable[[dict[int, bytes]], None]) -> Mutation:
    def mutate(message: bytes, scene: Scene) -> list[bytes]:
        ee = parse_encrypted_extensions(message)
        edit(ee.extensions)
        return [EncryptedExtensions(ee.extensions).encode()]

    return mutate


def certificate_request(edit: Callable[[CertificateRequest], None]) -> Mutation:
    def mutate(message: bytes, scene: Scene) -> list[bytes]:
        request = parse_certificate_request(message)
        edit(request)
        return [request.encode()]

    return mutate


def new_session_ticket(edit: Callable[[NewSessionTicket], None]) -> Mutation:
    def mutate(message: bytes, scene: Scene) -> list[bytes]:
        nst = parse_new_session_ticket(message)
        edit(nst)
        return [nst.encode()]

    return mutate


def certificate(edit: Callable[[Certificate], None]) -> Mutation:
    def mutate(message: bytes, scene: Scene) -> list[bytes]:
        cert = parse_certificate(message)
        edit(cert)
        return [cert.encode()]

    return mutate


def certificate_entry_extensions(block: bytes) -> Mutation:
    """The first CertificateEntry gets the extension entries ``block``."""

    def mutate(message: bytes, scene: Scene) -> list[bytes]:
        ders = parse_certificate(message).certificates
        entries = [
            vector(der, 3) + vector(block if i == 0 else b"", 2) for i, der in enumerate(ders)
        ]
        return [handshake_message(T.certificate, vector(b"", 1) + vector(b"".join(entries), 3))]

    return mutate


def certificate_verify(edit: Callable[[CertificateVerify], None]) -> Mutation:
    def mutate(message: bytes, scene: Scene) -> list[bytes]:
        verify = parse_certificate_verify(message)
        edit(verify)
        return [verify.encode()]

    return mutate


def _signed(transcript_hash: bytes, context: bytes) -> bytes:
    return b" " * 64 + b"TLS 1.3, " + context + b" CertificateVerify\x00" + transcript_hash


def signed_as(signer: Receiver, context: bytes) -> Mutation:
    """A CertificateVerify by ``signer`` (its real key and transcript) over ``context``."""

    def mutate(message: bytes, scene: Scene) -> list[bytes]:
        verifier = scene.client if signer == "server" else scene.server
        key = scene.material.server_key if signer == "server" else scene.material.client_key
        data = _signed(verifier.transcript.digest(), context)
        signature = key.sign(data, ec.ECDSA(hashes.SHA256()))
        return [CertificateVerify(0x0403, signature).encode()]

    return mutate


def _suite(hello: ServerHello, suite: int) -> None:
    hello.cipher_suite = suite


def _key_share_of(hello: ClientHello, group: int, key: bytes) -> None:
    shares = decode_client_key_shares(hello.extensions[E.key_share])
    hello.extensions[E.key_share] = encode_client_key_shares(
        [(g, key if g == group else k) for g, k in shares]
    )


def _psk(hello: ClientHello, edit: Callable[[PskOffer], tuple[list[Any], list[bytes]]]) -> None:
    offer = decode_pre_shared_key(hello.extensions[E.pre_shared_key])
    identities, binders = edit(offer)
    hello.extensions[E.pre_shared_key] = encode_pre_shared_key(identities, binders)


def _server_share(group: int, key: bytes) -> Callable[[ServerHello], None]:
    def edit(hello: ServerHello) -> None:
        hello.extensions[E.key_share] = struct.pack(">H", group) + vector(key, 2)

    return edit


def _u16(value: int) -> bytes:
    return value.to_bytes(2, "big")


def _pop(*ext_types: int) -> Callable[[Any], None]:
    def edit(message: Any) -> None:
        exts = message if isinstance(message, dict) else message.extensions
        for ext_type in ext_types:
            exts.pop(ext_type, None)

    return edit


def _set(ext_type: int, body: bytes) -> Callable[[Any], None]:
    def edit(message: Any) -> None:
        put(message if isinstance(message, dict) else message.extensions, ext_type, body)

    return edit


def _chain(*edits: Callable[[Any], None]) -> Callable[[Any], None]:
    def edit(message: Any) -> None:
        for one in edits:
            one(message)

    return edit


def _attr(name: str, value: Any) -> Callable[[Any], None]:
    def edit(message: Any) -> None:
        setattr(message, name, value)

    return edit


def _random_ending(tail: bytes) -> Callable[[ServerHello], None]:
    def edit(hello: ServerHello) -> None:
        hello.random = hello.random[:-8] + tail

    return edit


# The fixes the engine needs (the xfail reasons).


def _cases() -> list[Case]:
    """The table: one line per broken message (``add(id, receiver, type, mutation, alert)``)."""
    cases: list[Case] = []

    def add(
        id: str,
        receiver: Receiver,
        target: int,
        mutate: Mutation,
        alert: AlertDescription | None,
        **kw: Any,
    ) -> None:
        cases.append(Case(id, receiver, target, mutate, alert, **kw))

    C: Receiver = "client"
    S: Receiver = "server"
    ch, sh, ee, cr = T.client_hello, T.server_hello, T.encrypted_extensions, T.certificate_request
    ct, cv, fin, nst = T.certificate, T.certificate_verify, T.finished, T.new_session_ticket
    hrr, auth, resume = "hrr", "client_auth", "resume"
    week = 7 * 24 * 3600
    fake_finished = finished_message(bytes(48))
    sig_algs: dict[int, bytes] = {E.signature_algorithms: encode_u16_list([0x0403])}

    def share(group: int, key: bytes) -> Mutation:
        return client_hello(lambda h: _key_share_of(h, group, key))

    def shares(*groups: Group) -> bytes:
        return encode_client_key_shares([(g, KeyShare(g).public) for g in groups])

    # fmt: off
    # -- ClientHello (to the server) --------------------------------------------------------
    add("ch/unchanged", S, ch, same, None)
    add("ch/trailing-byte", S, ch, trailing, A.decode_error)
    add("ch/length-overruns", S, ch, cut(100), A.decode_error)
    add("ch/duplicate-supported-versions", S, ch, duplicate(E.supported_versions),
        A.illegal_parameter)
    add("ch/duplicate-key-share", S, ch, duplicate(E.key_share), A.illegal_parameter)
    add("ch/unknown-extension-ignored", S, ch, client_hello(_set(UNKNOWN_EXTENSION, b"\x01")),
        None)
    add("ch/grease-extension-ignored", S, ch, client_hello(_set(0x0A0A, b"")), None)
    add("ch/oid-filters-belongs-in-cr", S, ch, client_hello(_set(E.oid_filters, b"\x00\x00")),
        A.illegal_parameter)
    add("ch/legacy-version-ssl3", S, ch, client_hello(_attr("legacy_version", 0x0300)),
        A.protocol_version)
    add("ch/legacy-version-ssl2", S, ch, client_hello(_attr("legacy_version", 0x0002)),
        A.protocol_version)
    add("ch/legacy-version-tls10-ignored", S, ch, client_hello(_attr("legacy_version", 0x0301)),
        None)
    add("ch/no-supported-versions", S, ch, client_hello(_pop(E.supported_versions)),
        A.protocol_version)
    add("ch/tls12-only", S, ch,
        client_hello(_set(E.supported_versions, encode_u16_list([0x0303], 1))),
        A.protocol_version)
    add("ch/tls13-among-unknown-versions", S, ch,
        client_hello(_set(E.supported_versions, encode_u16_list([0x7A7A, 0x0304, 0x0303], 1))),
        None)
    add("ch/supported-versions-odd-length", S, ch,
        client_hello(_set(E.supported_versions, b"\x03\x03\x04\x03")), A.decode_error)
    add("ch/supported-versions-empty", S, ch, client_hello(_set(E.supported_versions, b"\x00")),
        A.decode_error)
    add("ch/compression-deflate", S, ch, client_hello(_attr("compression_methods", b"\x01")),
        A.illegal_parameter)
    add("ch/compression-null-and-deflate", S, ch,
        client_hello(_attr("compression_methods", b"\x00\x01")), A.illegal_parameter)
    add("ch/compression-empty", S, ch, client_hello(_attr("compression_methods", b"")),
        A.decode_error)
    add("ch/no-cipher-suites", S, ch, client_hello(_attr("cipher_suites", ())), A.decode_error)
    add("ch/no-common-suite", S, ch, client_hello(_attr("cipher_suites", (CCM_SUITE,))),
        A.handshake_failure)
    add("ch/session-id-33-bytes", S, ch, client_hello(_attr("legacy_session_id", bytes(33))),
        A.decode_error)
    add("ch/signature-algorithms-empty", S, ch,
        client_hello(_set(E.signature_algorithms, b"\x00\x00")), A.decode_error)
    add("ch/signature-algorithms-odd", S, ch,
        client_hello(_set(E.signature_algorithms, b"\x00\x03\x04\x03\x08")), A.decode_error)
    add("ch/no-signature-algorithms", S, ch, client_hello(_pop(E.signature_algorithms)),
        A.missing_extension)
    add("ch/no-common-signature-algorithm", S, ch,
        client_hello(_set(E.signature_algorithms, encode_u16_list([0x0401, 0x0201]))),
        A.handshake_failure)
    add("ch/key-share-without-supported-groups", S, ch, client_hello(_pop(E.supported_groups)),
        A.missing_extension)
    add("ch/supported-groups-without-key-share", S, ch, client_hello(_pop(E.key_share)),
        A.missing_extension)
    add("ch/supported-groups-empty", S, ch, client_hello(_set(E.supported_groups, b"\x00\x00")),
        A.decode_error)
    add("ch/share-for-group-not-supported", S, ch,
        client_hello(_set(E.supported_groups, encode_u16_list([Group.X25519MLKEM768]))),
        A.illegal_parameter)
    add("ch/two-shares-for-one-group", S, ch,
        client_hello(_set(E.key_share, shares(Group.x25519, Group.x25519))),
        A.illegal_parameter)
    add("ch/key-share-empty-key", S, ch,
        client_hello(_set(E.key_share, vector(b"\x00\x1d\x00\x00", 2))), A.decode_error)
    add("ch/key-share-overruns", S, ch,
        client_hello(_set(E.key_share, vector(b"\x00\x1d\x00\x21" + bytes(32), 2))),
        A.decode_error)
    add("ch/no-common-group", S, ch,
        client_hello(_chain(_set(E.supported_groups, encode_u16_list([Group.x448])),
                            _set(E.key_share, shares(Group.x448)))),
        A.handshake_failure)
    add("ch/server-name-empty-list", S, ch, client_hello(_set(E.server_name, b"\x00\x00")),
        A.decode_error)
    add("ch/server-name-not-ascii", S, ch,
        client_hello(_set(E.server_name, vector(b"\x00" + vector("é".encode(), 2), 2))),
        A.illegal_parameter)
    add("ch/alpn-empty-name", S, ch, client_hello(_set(E.alpn, b"\x00\x01\x00")),
        A.decode_error)
    add("ch/alpn-no-common-protocol", S, ch, client_hello(_set(E.alpn, encode_alpn(["spdy/3"]))),
        A.no_application_protocol)
    add("ch/tcpls-not-empty", S, ch, client_hello(_set(100, b"\x00")), A.decode_error)
    add("ch/tcpls-join-in-new-session", S, ch, client_hello(_set(101, b"\x20" + bytes(32))),
        A.illegal_parameter)
    # key shares that are not keys (RFC 8446 §4.2.8.2; groups.py)
    add("ch/x25519-share-31-bytes", S, ch, share(Group.x25519, bytes(range(31))),
        A.illegal_parameter, scenario="x25519")
    add("ch/x25519-share-33-bytes", S, ch, share(Group.x25519, bytes(range(33))),
        A.illegal_parameter, scenario="x25519")
    add("ch/x25519-share-all-zero (fuzz)", S, ch, share(Group.x25519, bytes(32)),
        A.illegal_parameter, scenario="x25519")
    add("ch/x25519-share-low-order (fuzz)", S, ch, share(Group.x25519, b"\x01" + bytes(31)),
        A.illegal_parameter, scenario="x25519")
    add("ch/p256-share-not-on-curve", S, ch, share(Group.secp256r1, b"\x04" + bytes(range(64))),
        A.illegal_parameter, scenario="p256")
    add("ch/p256-share-compressed", S, ch, share(Group.secp256r1, b"\x02" + bytes(range(32))),
        A.illegal_parameter, scenario="p256")
    add("ch/p256-share-truncated", S, ch, share(Group.secp256r1, b"\x04" + bytes(40)),
        A.illegal_parameter, scenario="p256")
    add("ch/mlkem-share-short", S, ch, share(Group.X25519MLKEM768, bytes(1215)),
        A.illegal_parameter, scenario="mlkem")
    add("ch/mlkem-key-out-of-range", S, ch,
        share(Group.X25519MLKEM768, b"\xff" * 1184 + bytes(range(9, 41))),
        A.illegal_parameter, scenario="mlkem")
    add("ch/mlkem-x25519-part-all-zero (fuzz)", S, ch, share(Group.X25519MLKEM768, bytes(1216)),
        A.illegal_parameter, scenario="mlkem")
    # pre_shared_key and its binders (§4.2.11)
    add("ch/resumption-unchanged", S, ch, same, None, scenario=resume)
    add("ch/resumption-rebound", S, ch, client_hello(lambda h: None, bind=True), None,
        scenario=resume)
    add("ch/psk-not-last", S, ch, raw_extensions(lambda es: [es[-1], *es[:-1]]),
        A.illegal_parameter, scenario=resume)
    add("ch/psk-not-last-unknown-ticket", S, ch,
        raw_extensions(lambda es: [entry(E.pre_shared_key, encode_pre_shared_key(
            [(b"unknown", 0)], [bytes(32)])), *es]),
        A.illegal_parameter)
    add("ch/bad-binder", S, ch, flip_last, A.decrypt_error, scenario=resume)
    add("ch/binder-too-short", S, ch,
        client_hello(lambda h: _psk(h, lambda o: (list(o.identities), [bytes(31)]))),
        A.decode_error, scenario=resume)
    add("ch/binder-of-another-length", S, ch,
        client_hello(lambda h: _psk(h, lambda o: (list(o.identities), [o.binders[0][:32]]))),
        A.decrypt_error, scenario=resume)
    add("ch/two-binders-one-identity", S, ch,
        client_hello(lambda h: _psk(h, lambda o: (list(o.identities), [*o.binders] * 2))),
        A.illegal_parameter, scenario=resume)
    add("ch/two-identities-one-binder", S, ch,
        client_hello(lambda h: _psk(h, lambda o: ([*o.identities] * 2, list(o.binders)))),
        A.illegal_parameter, scenario=resume)
    add("ch/psk-without-psk-modes", S, ch,
        client_hello(_pop(E.psk_key_exchange_modes), bind=True), A.missing_extension,
        scenario=resume)
    add("ch/psk-modes-empty", S, ch,
        client_hello(_set(E.psk_key_exchange_modes, b"\x00"), bind=True), A.decode_error,
        scenario=resume)
    add("ch/early-data-not-empty", S, ch, client_hello(_set(E.early_data, b"\x00"), bind=True),
        A.decode_error, scenario="early")

    # -- HelloRetryRequest (to the client) ----------------------------------------------------
    add("hrr/unchanged", C, sh, same, None, scenario=hrr)
    add("hrr/twice", C, sh, twice, A.unexpected_message, scenario=hrr)
    add("hrr/group-already-offered", C, sh,
        server_hello(_set(E.key_share, _u16(Group.secp384r1))), A.illegal_parameter,
        scenario=hrr)
    add("hrr/group-not-supported", C, sh, server_hello(_set(E.key_share, _u16(Group.secp256r1))),
        A.illegal_parameter, scenario=hrr)
    add("hrr/changes-nothing", C, sh, server_hello(_pop(E.key_share, E.cookie)),
        A.illegal_parameter, scenario=hrr)
    add("hrr/cookie-only", C, sh, server_hello(_pop(E.key_share)), None, scenario=hrr)
    add("hrr/suite-not-offered", C, sh, server_hello(_attr("cipher_suite", CCM_SUITE)),
        A.illegal_parameter, scenario=hrr)
    add("hrr/wrong-session-id", C, sh, server_hello(_attr("legacy_session_id", b"x")),
        A.illegal_parameter, scenario=hrr)
    add("hrr/compression", C, sh, server_hello(_attr("compression_method", 1)),
        A.illegal_parameter, scenario=hrr)
    add("hrr/no-supported-versions", C, sh, server_hello(_pop(E.supported_versions)),
        A.missing_extension, scenario=hrr)
    add("hrr/tls12", C, sh, server_hello(_set(E.supported_versions, _u16(0x0303))),
        A.illegal_parameter, scenario=hrr)
    add("hrr/legacy-version-ssl3", C, sh, server_hello(_attr("legacy_version", 0x0300)),
        A.protocol_version, scenario=hrr)
    add("hrr/unknown-extension", C, sh, server_hello(_set(UNKNOWN_EXTENSION, b"")),
        A.unsupported_extension, scenario=hrr)
    add("hrr/signature-algorithms-belongs-in-ch", C, sh,
        server_hello(_set(E.signature_algorithms, encode_u16_list([0x0403]))),
        A.illegal_parameter, scenario=hrr)
    add("hrr/cookie-empty", C, sh, server_hello(_set(E.cookie, b"\x00\x00")), A.decode_error,
        scenario=hrr)
    add("hrr/key-share-malformed", C, sh, server_hello(_set(E.key_share, b"\x00\x1d\x00")),
        A.decode_error, scenario=hrr)
    add("hrr/duplicate-cookie", C, sh, duplicate(E.cookie), A.illegal_parameter, scenario=hrr)
    add("hrr/then-server-hello-changes-suite", C, sh,
        server_hello(_attr("cipher_suite", CipherSuite.CHACHA20_POLY1305_SHA256)),
        A.illegal_parameter, scenario=hrr, occurrence=2)
    add("hrr/then-server-hello-in-another-group", C, sh,
        server_hello(_server_share(Group.secp384r1, KeyShare(Group.secp384r1).public)),
        A.illegal_parameter, scenario=hrr, occurrence=2)
    # the second ClientHello (to the server)
    add("ch2/unchanged", S, ch, same, None, scenario=hrr, occurrence=2)
    add("ch2/without-cookie", S, ch, client_hello(_pop(E.cookie)), A.illegal_parameter,
        scenario=hrr, occurrence=2)
    add("ch2/other-cookie", S, ch, client_hello(_set(E.cookie, vector(b"forged", 2))),
        A.illegal_parameter, scenario=hrr, occurrence=2)
    add("ch2/share-for-another-group", S, ch,
        client_hello(_set(E.key_share, shares(Group.secp384r1))), A.illegal_parameter,
        scenario=hrr, occurrence=2)
    add("ch2/two-shares", S, ch, client_hello(_set(E.key_share, shares(Group.x25519,
                                                                        Group.secp384r1))),
        A.illegal_parameter, scenario=hrr, occurrence=2)
    add("ch2/early-data", S, ch, client_hello(_set(E.early_data, b"")), A.illegal_parameter,
        scenario=hrr, occurrence=2)
    add("ch2/other-random", S, ch, client_hello(_attr("random", bytes(32))),
        A.illegal_parameter, scenario=hrr, occurrence=2)
    add("ch2/other-suites", S, ch,
        client_hello(_attr("cipher_suites", (CipherSuite.AES_128_GCM_SHA256,))),
        A.illegal_parameter, scenario=hrr, occurrence=2)
    add("ch2/x25519-share-all-zero (fuzz)", S, ch, share(Group.x25519, bytes(32)),
        A.illegal_parameter, scenario=hrr, occurrence=2)

    # -- ServerHello (to the client) ----------------------------------------------------------
    add("sh/unchanged", C, sh, same, None)
    add("sh/trailing-byte", C, sh, trailing, A.decode_error)
    add("sh/length-overruns", C, sh, cut(50), A.decode_error)
    add("sh/wrong-session-id", C, sh, server_hello(_attr("legacy_session_id", bytes(32))),
        A.illegal_parameter)
    add("sh/session-id-33-bytes", C, sh, server_hello(_attr("legacy_session_id", bytes(33))),
        A.decode_error)
    add("sh/suite-not-offered", C, sh, server_hello(_attr("cipher_suite", CCM_SUITE)),
        A.illegal_parameter)
    add("sh/compression", C, sh, server_hello(_attr("compression_method", 1)),
        A.illegal_parameter)
    add("sh/downgrade-tls12-sentinel", C, sh,
        server_hello(_chain(_pop(E.supported_versions), _random_ending(DOWNGRADE_TLS12))),
        A.illegal_parameter)
    add("sh/downgrade-tls11-sentinel", C, sh,
        server_hello(_chain(_pop(E.supported_versions), _attr("legacy_version", 0x0302),
                            _random_ending(DOWNGRADE_TLS11))),
        A.illegal_parameter)
    add("sh/downgrade-sentinel-and-supported-versions-tls12", C, sh,
        server_hello(_chain(_set(E.supported_versions, _u16(0x0303)),
                            _random_ending(DOWNGRADE_TLS12))),
        A.illegal_parameter)
    # TLS 1.3 negotiated: the last 8 bytes are random, there is no sentinel to check (§4.1.3)
    add("sh/sentinel-bytes-in-a-tls13-random", C, sh,
        server_hello(_random_ending(DOWNGRADE_TLS12)), None)
    add("sh/tls12-without-sentinel", C, sh, server_hello(_pop(E.supported_versions)),
        A.protocol_version)
    add("sh/supported-versions-tls12", C, sh,
        server_hello(_set(E.supported_versions, _u16(0x0303))), A.illegal_parameter)
    add("sh/supported-versions-draft", C, sh,
        server_hello(_set(E.supported_versions, _u16(0x7F1C))), A.illegal_parameter)
    add("sh/supported-versions-list", C, sh,
        server_hello(_set(E.supported_versions, encode_u16_list([0x0304], 1))), A.decode_error)
    add("sh/legacy-version-ssl3", C, sh, server_hello(_attr("legacy_version", 0x0300)),
        A.protocol_version)
    add("sh/legacy-version-tls10-ignored", C, sh, server_hello(_attr("legacy_version", 0x0301)),
        None)
    add("sh/share-in-group-without-our-share", C, sh,
        server_hello(_server_share(Group.secp256r1, KeyShare(Group.secp256r1).public)),
        A.illegal_parameter)
    add("sh/share-in-unknown-group", C, sh, server_hello(_server_share(0x0A0A, b"\x01")),
        A.illegal_parameter)
    add("sh/no-key-share", C, sh, server_hello(_pop(E.key_share)), A.missing_extension)
    add("sh/key-share-empty-key", C, sh, server_hello(_set(E.key_share, b"\x00\x1d\x00\x00")),
        A.decode_error)
    add("sh/mlkem-share-short", C, sh, server_hello(_server_share(Group.X25519MLKEM768,
                                                                  bytes(1119))),
        A.illegal_parameter)
    add("sh/x25519-share-short", C, sh, server_hello(_server_share(Group.x25519,
                                                                   bytes(range(31)))),
        A.illegal_parameter)
    add("sh/x25519-share-all-zero (fuzz)", C, sh,
        server_hello(_server_share(Group.x25519, bytes(32))), A.illegal_parameter)
    add("sh/p256-share-not-on-curve", C, sh,
        server_hello(_server_share(Group.secp256r1, b"\x04" + bytes(range(64)))),
        A.illegal_parameter, scenario="p256")
    add("sh/psk-not-offered", C, sh, server_hello(_set(E.pre_shared_key, _u16(0))),
        A.unsupported_extension)
    add("sh/psk-identity-out-of-range", C, sh, server_hello(_set(E.pre_shared_key, _u16(1))),
        A.illegal_parameter, scenario=resume)
    add("sh/psk-with-suite-of-another-hash", C, sh,
        server_hello(_attr("cipher_suite", CipherSuite.AES_128_GCM_SHA256)),
        A.illegal_parameter, scenario=resume)
    add("sh/psk-without-key-share", C, sh, server_hello(_pop(E.key_share)), A.illegal_parameter,
        scenario=resume)
    add("sh/psk-malformed", C, sh, server_hello(_set(E.pre_shared_key, b"\x00")),
        A.decode_error, scenario=resume)
    add("sh/unknown-extension", C, sh, server_hello(_set(UNKNOWN_EXTENSION, b"")),
        A.unsupported_extension)
    add("sh/alpn-belongs-in-ee", C, sh, server_hello(_set(E.alpn, encode_alpn(["h2"]))),
        A.illegal_parameter)
    add("sh/server-name-belongs-in-ee", C, sh, server_hello(_set(E.server_name, b"")),
        A.illegal_parameter)
    add("sh/early-data-belongs-in-ee", C, sh, server_hello(_set(E.early_data, b"")),
        A.illegal_parameter, scenario="early")
    add("sh/duplicate-supported-versions", C, sh, duplicate(E.supported_versions),
        A.illegal_parameter)
    add("sh/duplicate-key-share", C, sh, duplicate(E.key_share), A.illegal_parameter)

    # -- EncryptedExtensions (to the client) --------------------------------------------------
    add("ee/unchanged", C, ee, same, None)
    add("ee/trailing-byte", C, ee, trailing, A.decode_error)
    add("ee/empty-body", C, ee, truncated(0), A.decode_error)
    for name, ext_type, body in [
        ("supported-versions", E.supported_versions, _u16(0x0304)),
        ("key-share", E.key_share, _u16(Group.x25519) + vector(bytes(range(32)), 2)),
        ("pre-shared-key", E.pre_shared_key, _u16(0)),
        ("signature-algorithms", E.signature_algorithms, encode_u16_list([0x0403])),
        ("signature-algorithms-cert", E.signature_algorithms_cert, encode_u16_list([0x0403])),
        ("psk-key-exchange-modes", E.psk_key_exchange_modes, b"\x01\x01"),
        ("cookie", E.cookie, vector(b"c", 2)),
        ("padding", E.padding, bytes(4)),
        ("status-request", E.status_request, b""),
        ("certificate-authorities", E.certificate_authorities, b""),
        ("post-handshake-auth", E.post_handshake_auth, b""),
        ("oid-filters", E.oid_filters, b"\x00\x00"),
    ]:
        add(f"ee/forbidden-{name}", C, ee, encrypted_extensions(_set(ext_type, body)),
            A.illegal_parameter)
    add("ee/supported-groups-unsolicited-allowed", C, ee,
        encrypted_extensions(_set(E.supported_groups, encode_u16_list([Group.x25519]))), None)
    add("ee/unknown-extension", C, ee, encrypted_extensions(_set(UNKNOWN_EXTENSION, b"")),
        A.unsupported_extension)
    add("ee/heartbeat-not-offered", C, ee, encrypted_extensions(_set(E.heartbeat, b"\x01")),
        A.unsupported_extension)
    add("ee/max-fragment-length-not-offered", C, ee,
        encrypted_extensions(_set(E.max_fragment_length, b"\x01")), A.unsupported_extension)
    add("ee/alpn-not-offered", C, ee, encrypted_extensions(_set(E.alpn, encode_alpn(["h2"]))),
        A.unsupported_extension, scenario="bare")
    add("ee/tcpls-not-offered", C, ee, encrypted_extensions(_set(100, b"")),
        A.unsupported_extension, scenario="bare")
    add("ee/early-data-not-offered", C, ee, encrypted_extensions(_set(E.early_data, b"")),
        A.unsupported_extension)
    # RFC 7301 names no alert for a protocol we did not offer: illegal_parameter, as OpenSSL
    add("ee/alpn-protocol-not-offered", C, ee,
        encrypted_extensions(_set(E.alpn, encode_alpn(["spdy/3"]))), A.illegal_parameter)
    add("ee/alpn-malformed", C, ee, encrypted_extensions(_set(E.alpn, b"\x00\x00")),
        A.decode_error)
    add("ee/early-data-not-empty", C, ee,
        encrypted_extensions(_set(E.early_data, b"\x00\x00\x04\x00")), A.decode_error,
        scenario="early")
    add("ee/server-name-not-empty", C, ee, encrypted_extensions(_set(E.server_name, b"\x00\x00")),
        A.decode_error)
    add("ee/tcpls-not-empty", C, ee, encrypted_extensions(_set(100, b"\x00")), A.decode_error)
    add("ee/duplicate-alpn", C, ee, duplicate(E.alpn), A.illegal_parameter)

    # -- CertificateRequest (to the client) ---------------------------------------------------
    add("cr/unchanged", C, cr, same, None, scenario=auth)
    add("cr/trailing-byte", C, cr, trailing, A.decode_error, scenario=auth)
    add("cr/context-not-empty", C, cr, certificate_request(_attr("context", b"\x01")),
        A.illegal_parameter, scenario=auth)
    add("cr/no-signature-algorithms", C, cr, certificate_request(_pop(E.signature_algorithms)),
        A.missing_extension, scenario=auth)
    add("cr/signature-algorithms-empty", C, cr,
        certificate_request(_set(E.signature_algorithms, b"\x00\x00")), A.decode_error,
        scenario=auth)
    add("cr/unknown-extension-ignored", C, cr,
        certificate_request(_set(UNKNOWN_EXTENSION, b"\x05")), None, scenario=auth)
    add("cr/key-share-belongs-in-hellos", C, cr,
        certificate_request(_set(E.key_share, _u16(Group.x25519))), A.illegal_parameter,
        scenario=auth)
    add("cr/duplicate-signature-algorithms", C, cr, duplicate(E.signature_algorithms),
        A.illegal_parameter, scenario=auth)
    add("cr/in-psk-handshake", C, fin, replace(CertificateRequest(b"", sig_algs).encode()),
        A.unexpected_message, scenario=resume)
    add("cr/after-handshake-without-post-handshake-auth", C, nst,
        replace(CertificateRequest(b"\x01", sig_algs).encode()), A.unexpected_message)

    # -- Certificate --------------------------------------------------------------------------
    add("cert/unchanged", C, ct, same, None)
    add("cert/empty-from-server", C, ct, certificate(_attr("certificates", [])), A.decode_error)
    add("cert/trailing-byte", C, ct, trailing, A.decode_error)
    add("cert/entry-length-overruns", C, ct,
        replace(handshake_message(ct, b"\x00" + vector(b"\x00\x10\x00" + bytes(10), 3))),
        A.decode_error)
    add("cert/empty-cert-data", C, ct,
        replace(handshake_message(ct, b"\x00" + vector(vector(b"", 3) + vector(b"", 2), 3))),
        A.decode_error)
    # RFC 8446 names no alert for bytes that are not DER: certs.py says decode_error
    add("cert/garbage-der", C, ct, certificate(_attr("certificates", [b"\x30\x03junk"])),
        A.decode_error)
    add("cert/context-not-empty", C, ct, certificate(_attr("context", b"\x01")),
        A.illegal_parameter)
    add("cert/unknown-ca", C, ct, other_certificate, A.unknown_ca)
    add("cert/duplicate-entry-extension", C, ct,
        certificate_entry_extensions(entry(E.status_request, b"") * 2), A.illegal_parameter)
    add("cert/unsolicited-entry-extension", C, ct,
        certificate_entry_extensions(entry(UNKNOWN_EXTENSION, b"")), A.unsupported_extension)
    add("cert/key-share-in-entry", C, ct,
        certificate_entry_extensions(entry(E.key_share, _u16(Group.x25519))),
        A.illegal_parameter)
    add("cert/entry-extensions-overrun", C, ct, certificate_entry_extensions(b"\x00\x05\x00\x09"),
        A.decode_error)
    add("cert/subject-not-utf8 (fuzz)", C, ct, leaf_bytes(b"\x0c\x09localhost", b"\x0c\x09\x93"),
        A.bad_certificate)
    add("cert/version-15 (fuzz)", C, ct, leaf_bytes(V3, b"\xa0\x03\x02\x01\x0f"),
        A.decode_error)
    add("cert/client-version-15 (fuzz)", S, ct, leaf_bytes(V3, b"\xa0\x03\x02\x01\x0f"),
        A.decode_error, scenario=auth)
    add("cert/issuer-cn-bit-string (fuzz)", C, ct,
        leaf_bytes(b"\x0c\x0dtcpls test CA", b"\x03\x0d\x00"), A.bad_certificate)
    add("cert/client-subject-not-utf8 (fuzz)", S, ct,
        leaf_bytes(b"\x0c\x06client", b"\x0c\x06\x93"), A.bad_certificate, scenario=auth)
    add("cert/client-empty-when-required", S, ct, certificate(_attr("certificates", [])),
        A.certificate_required, scenario=auth)
    add("cert/client-garbage-der", S, ct, certificate(_attr("certificates", [b"\x00"])),
        A.decode_error, scenario=auth)
    add("cert/client-context-not-echoed", S, ct, certificate(_attr("context", b"\x07")),
        A.illegal_parameter, scenario=auth)
    add("cert/client-truncated", S, ct, truncated(5), A.decode_error, scenario=auth)

    # -- CertificateVerify --------------------------------------------------------------------
    add("cv/unchanged", C, cv, same, None)
    add("cv/bad-signature", C, cv, flip_last, A.decrypt_error)
    add("cv/empty-signature", C, cv, certificate_verify(_attr("signature", b"")),
        A.decrypt_error)
    add("cv/trailing-byte", C, cv, trailing, A.decode_error)
    add("cv/scheme-pkcs1", C, cv, certificate_verify(_attr("scheme", 0x0401)),
        A.illegal_parameter)
    add("cv/scheme-sha1", C, cv, certificate_verify(_attr("scheme", 0x0203)),
        A.illegal_parameter)
    add("cv/scheme-not-offered", C, cv, certificate_verify(_attr("scheme", 0x0FFF)),
        A.illegal_parameter)
    add("cv/scheme-of-another-key", C, cv, certificate_verify(_attr("scheme", 0x0503)),
        A.illegal_parameter)
    add("cv/server-signs-client-context", C, cv, signed_as(S, b"client"), A.decrypt_error)
    add("cv/server-signs-server-context", C, cv, signed_as(S, b"server"), None)
    add("cv/client-bad-signature", S, cv, flip_last, A.decrypt_error, scenario=auth)
    add("cv/client-signs-server-context", S, cv, signed_as(C, b"server"), A.decrypt_error,
        scenario=auth)
    add("cv/client-signs-client-context", S, cv, signed_as(C, b"client"), None, scenario=auth)
    add("cv/client-scheme-sha1", S, cv, certificate_verify(_attr("scheme", 0x0203)),
        A.illegal_parameter, scenario=auth)

    # -- Finished -----------------------------------------------------------------------------
    add("fin/server-bad", C, fin, flip_last, A.decrypt_error)
    add("fin/server-resumed-bad", C, fin, flip_last, A.decrypt_error, scenario=resume)
    add("fin/server-truncated", C, fin, shorter, A.decode_error)
    add("fin/server-trailing-byte", C, fin, trailing, A.decode_error)
    add("fin/server-empty", C, fin, truncated(0), A.decode_error)
    add("fin/client-bad", S, fin, flip_last, A.decrypt_error)
    add("fin/client-after-certificate-bad", S, fin, flip_last, A.decrypt_error, scenario=auth)
    add("fin/client-truncated", S, fin, shorter, A.decode_error)

    # -- messages out of order ----------------------------------------------------------------
    add("order/finished-before-certificate", C, ct, replace(fake_finished), A.unexpected_message)
    add("order/verify-before-certificate", C, ct,
        replace(CertificateVerify(0x0403, b"\x30\x00").encode()), A.unexpected_message)
    add("order/second-server-hello", C, ee, earlier(C, sh), A.unexpected_message)
    add("order/encrypted-extensions-first", C, sh, replace(EncryptedExtensions({}).encode()),
        A.unexpected_message)
    add("order/finished-before-verify", C, cv, replace(fake_finished), A.unexpected_message)
    add("order/ticket-before-finished", C, fin,
        replace(NewSessionTicket(3600, 1, b"", b"t").encode()), A.unexpected_message)
    add("order/end-of-early-data-to-client", C, fin,
        replace(handshake_message(T.end_of_early_data, b"")), A.unexpected_message)
    add("order/client-hello-to-client", C, sh, earlier(S, ch), A.unexpected_message)
    add("order/key-update-before-finished", C, fin,
        replace(handshake_message(T.key_update, b"\x00")), A.unexpected_message)
    add("order/unknown-message-type", C, ee, replace(handshake_message(99, b"")),
        A.unexpected_message)
    add("order/certificate-in-psk-handshake", C, fin, own_certificate, A.unexpected_message,
        scenario=resume)
    add("order/server-hello-to-server", S, fin,
        replace(ServerHello(bytes(32), b"", CipherSuite.AES_128_GCM_SHA256).encode()),
        A.unexpected_message)
    add("order/end-of-early-data-without-early-data", S, fin,
        replace(handshake_message(T.end_of_early_data, b"")), A.unexpected_message)
    add("order/end-of-early-data-declined", S, fin,
        replace(handshake_message(T.end_of_early_data, b"")), A.unexpected_message,
        scenario="early_declined")
    add("order/end-of-early-data-not-empty", S, T.end_of_early_data, trailing, A.decode_error,
        scenario="early")
    add("order/finished-instead-of-end-of-early-data", S, T.end_of_early_data,
        replace(fake_finished), A.unexpected_message, scenario="early")
    add("order/client-finished-before-certificate", S, ct, replace(fake_finished),
        A.unexpected_message, scenario=auth)
    add("order/client-verify-before-certificate", S, ct,
        replace(CertificateVerify(0x0403, b"\x30\x00").encode()), A.unexpected_message,
        scenario=auth)
    add("order/client-certificate-not-requested", S, fin,
        replace(Certificate(b"", []).encode()), A.unexpected_message)
    add("order/second-client-hello-without-retry", S, fin, earlier(S, ch),
        A.unexpected_message)
    add("order/client-hello-after-finished", S, fin, lambda msg, s: [msg, s.delivered(S, ch)],
        A.unexpected_message)

    # -- NewSessionTicket (to the client) -----------------------------------------------------
    add("nst/unchanged", C, nst, same, None)
    add("nst/lifetime-seven-days", C, nst, new_session_ticket(_attr("lifetime", week)), None)
    add("nst/lifetime-over-seven-days", C, nst, new_session_ticket(_attr("lifetime", week + 1)),
        A.illegal_parameter)
    add("nst/early-data-3-bytes", C, nst, new_session_ticket(_set(E.early_data, b"\x00\x00\x01")),
        A.decode_error)
    add("nst/early-data-empty", C, nst, new_session_ticket(_set(E.early_data, b"")),
        A.decode_error)
    add("nst/empty-ticket", C, nst, new_session_ticket(_attr("ticket", b"")), A.decode_error)
    add("nst/trailing-byte", C, nst, trailing, A.decode_error)
    add("nst/unknown-extension-ignored", C, nst, new_session_ticket(_set(UNKNOWN_EXTENSION, b"x")),
        None)
    add("nst/key-share-belongs-in-hellos", C, nst,
        new_session_ticket(_set(E.key_share, _u16(Group.x25519))), A.illegal_parameter)
    add("nst/duplicate-early-data", C, nst,
        then(new_session_ticket(_set(E.early_data, bytes(4))), duplicate(E.early_data)),
        A.illegal_parameter)
    # fmt: on
    return cases


def leaf_bytes(find: bytes, start: bytes) -> Mutation:
    """The end-entity certificate with the first ``find`` starting with ``start`` instead
    (its signature no longer verifies: the path validation fails)."""

    def mutate(message: bytes, scene: Scene) -> list[bytes]:
        cert = parse_certificate(message)
        der = cert.certificates[0]
        assert find in der
        cert.certificates[0] = der.replace(find, start + find[len(start) :], 1)
        return [cert.encode()]

    return mutate


def shorter(message: bytes, scene: Scene) -> list[bytes]:
    """The body less its last byte."""
    return [handshake_message(message[0], message[4:-1])]


def then(first: Mutation, second: Mutation) -> Mutation:
    """``second`` applied to what ``first`` gives (one message)."""

    def mutate(message: bytes, scene: Scene) -> list[bytes]:
        (one,) = first(message, scene)
        return list(second(one, scene))

    return mutate


def other_certificate(message: bytes, scene: Scene) -> list[bytes]:
    """The certificate of a server of another CA."""
    ders = [c.public_bytes(Encoding.DER) for c in scene.material.other_chain]
    return [Certificate(b"", ders).encode()]


def own_certificate(message: bytes, scene: Scene) -> list[bytes]:
    """The server's own certificate (where none is expected)."""
    return [Certificate(b"", [scene.material.server_chain[0].public_bytes(Encoding.DER)]).encode()]


CASES = _cases()


def _param(case: Case) -> Any:
    marks = [pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []
    return pytest.param(case, id=case.id, marks=marks)


def test_case_ids_are_unique() -> None:
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_scenarios_complete(material: Material, scenario: str) -> None:
    scene = SCENARIOS[scenario](material)
    _drive(scene.client, scene.server)
    assert scene.client.retried == (scenario == "hrr")
    assert scene.client.session_resumed == (scenario in ("resume", "early", "early_declined"))
    assert scene.client.early_data_accepted == (scenario == "early")


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_broken_message(material: Material, case: Case) -> None:
    check(case, material)


# --------------------------------------------------------------------------- truncation


@dataclass(frozen=True)
class Truncation:
    """A message truncated at many offsets: each must be a decode_error."""

    id: str
    receiver: Receiver
    target: int
    scenario: str = "full"
    #: The alert when the body stops right before the extension block (a message without
    #: extensions is well formed: a TLS 1.2 hello, or an HRR without supported_versions).
    at_extensions: AlertDescription = A.decode_error


TRUNCATIONS = [
    Truncation("client-hello", "server", T.client_hello, at_extensions=A.protocol_version),
    Truncation("server-hello", "client", T.server_hello, at_extensions=A.protocol_version),
    Truncation("hello-retry-request", "client", T.server_hello, "hrr", A.missing_extension),
    Truncation("encrypted-extensions", "client", T.encrypted_extensions),
    Truncation("certificate-request", "client", T.certificate_request, "client_auth"),
    Truncation("certificate", "client", T.certificate),
    Truncation("certificate-verify", "client", T.certificate_verify),
    Truncation("new-session-ticket", "client", T.new_session_ticket),
    Truncation("client-certificate", "server", T.certificate, "client_auth"),
    Truncation("client-certificate-verify", "server", T.certificate_verify, "client_auth"),
]


def _capture(t: Truncation, m: Material) -> bytes:
    captured: list[bytes] = []

    def keep(message: bytes, scene: Scene) -> list[bytes]:
        captured.append(message)
        return []

    assert play(Case("capture", t.receiver, t.target, keep, None, t.scenario), m) is None
    return captured[0]


_WITH_EXTENSIONS = frozenset(
    {
        T.client_hello,
        T.server_hello,
        T.encrypted_extensions,
        T.certificate_request,
        T.new_session_ticket,
    }
)


def _offsets(message: bytes) -> list[int]:
    """Body lengths to truncate to: every small one, a stride, and around each extension.

    Those near the end are negative (bytes dropped from the end): an ECDSA signature's
    length differs from one handshake to the next.
    """
    n = len(message) - 4
    offsets = set(range(min(n, 48))) | set(range(48, n - 8, 37)) | {-1, -2, -3, -5, -8}
    if message[0] in _WITH_EXTENSIONS:
        pos = _ext_block(message) - 4
        offsets |= {pos - 1, pos, pos + 1}
        pos += 2
        for one in _entries(message[4 + pos :]):
            offsets |= {pos, pos + 1, pos + 3, pos + 4, pos + len(one) - 1}
            pos += len(one)
    return sorted(o for o in offsets if -n < o < n)


@pytest.mark.parametrize("t", TRUNCATIONS, ids=[t.id for t in TRUNCATIONS])
def test_truncated(material: Material, t: Truncation) -> None:
    message = _capture(t, material)
    at_extensions = (
        _ext_block(message) - 4 if message[0] in (T.client_hello, T.server_hello) else -1
    )
    failures = []
    for keep in _offsets(message):
        case = Case(f"{t.id}[:{keep}]", t.receiver, t.target, truncated(keep), None, t.scenario)
        expected = t.at_extensions if keep == at_extensions else A.decode_error
        error = play(case, material)
        if error is None or error.alert != expected:
            failures.append(f"{case.id}: {error!r}, {expected.name} expected")
    for size in (1, 3, 4, 5, len(message) // 2, -1):
        case = Case(f"{t.id} cut to {size}", t.receiver, t.target, cut(size), None, t.scenario)
        error = play(case, material)
        if error is None or error.alert != A.decode_error:
            failures.append(f"{case.id}: {error!r}, decode_error expected")
    assert not failures, "\n".join(failures)


# --------------------------------------------------------------------------- fuzz regressions


def test_alpn_names_are_bytes_both_ways(material: Material) -> None:
    """ALPN names that are not ASCII: what is read encodes to the same bytes, and our client
    and server agree on one (it was encoded as UTF-8 and read as Latin-1)."""
    for body in (b"\x00\x03\x02\xff\xfe", encode_alpn(["é", "h2"])):
        assert encode_alpn(decode_alpn(body)) == body
    client, server = _engines(
        material, {"alpn_protocols": ["ü/1", "h2"]}, {"alpn_protocols": ["ü/1"]}
    )
    _drive(client, server)
    assert client.alpn_protocol == server.alpn_protocol == "ü/1"
