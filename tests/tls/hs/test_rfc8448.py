"""The handshake engine replays the traces of RFC 8448 (Example Handshake Traces for TLS 1.3).

Each trace (§3 simple 1-RTT, §4 resumed 0-RTT, §5 HelloRetryRequest, §6 client
authentication, §7 compatibility mode) is replayed twice, once against our
:class:`ServerEngine` and once against our :class:`ClientEngine`, with the RFC's randoms,
ephemeral keys, server RSA key and certificates (vectors: ``tests/vectors/rfc8448.json``).
Every message the engine writes and every secret it installs is compared byte for byte
with the RFC.

Where the RFC's peer made choices ours does not make, the engine is made to see the RFC's
messages, and each substitution is checked first:

* **ClientHello**: the RFC's client sends extensions ours does not (record_size_limit,
  renegotiation_info, ffdhe groups, padding...). :class:`RfcClient` lets the engine build
  its own ClientHello (compared field by field with the RFC's), then encodes the RFC's
  ClientHello through the engine's own ``_finish_hello``, which for §4 computes the PSK
  binder: the bytes sent are then compared with the RFC's, binder included. The RFC's
  client uses no legacy_session_id in §3-§6: the client's second 32-byte draw returns
  ``b""`` there.
* **EncryptedExtensions**: :class:`RfcServer` returns the RFC's extensions from
  ``_server_extensions`` (ours are a subset: early_data, or nothing for plain TLS).
* **CertificateVerify**: RSA-PSS and ECDSA signatures are randomized, and the RFC does not
  publish the §6 keys (server ECDSA, client RSA). ``sign_certificate_verify`` is replaced
  by one that first verifies the RFC's signature over *our* transcript hash with our
  ``verify_certificate_verify`` (and, with the §2 RSA key, that our own signature verifies
  too), then returns the RFC's signature; the §6 keys given to the engines are stand-ins
  that only pick the signature scheme.
* **CertificateRequest** (§6): the server's signature_algorithms list is the RFC's
  (``tcpls.tls.hs.server.SIGNATURE_ALGORITHMS`` patched).
* **HelloRetryRequest** (§5): the cookie is the RFC's (``secrets.token_bytes`` patched);
  our HRR is then the RFC's, byte for byte (checked below).
  The client's P-256 share made after the HRR is the RFC's (``client.KeyShare`` patched:
  ``key_shares=`` only covers the first ClientHello).
* **Certificate path validation** is off: the RFC's certificates are self-signed test
  certificates, expired since 2026-07-30, without subjectAltName (client
  ``verify=False``; the server's client verifier accepts any chain). Signatures are still
  checked.
* **Tickets**: the §4 ticket is put in the server's store under the RFC's label, and the
  client is given a :class:`SessionTicket` whose obfuscated age is the RFC's. The §3
  server's NewSessionTicket gets the RFC's label and age_add (store subclass,
  ``secrets.token_bytes`` patched); the rest, its nonce included, is ours.
* **Configuration**, not substitution: the servers prefer TLS_AES_128_GCM_SHA256 as the
  RFC's does (ours prefer AES-256 by default), the §5 server supports P-256 only, and
  both ends run plain TLS 1.3 (``tcpls=False``).

Resumption master secrets, which the engines keep to themselves, are compared through the
PSK of a ticket: the one the server issues, and one (the RFC's in §3) fed to the client.

Not the engine's business, so not compared here: records, the §7 change_cipher_spec
records (record layer), the early exporter secret (not derived by the engine).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa, x25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from cryptography.hazmat.primitives.serialization import Encoding

from tcpls.errors import AlertDescription, ProtocolError
from tcpls.tls.hs import signatures
from tcpls.tls.hs.base import Epoch
from tcpls.tls.hs.certs import CertificateVerifier
from tcpls.tls.hs.client import ClientEngine
from tcpls.tls.hs.codec import (
    ClientHello,
    ExtensionType,
    NewSessionTicket,
    decode_client_key_shares,
    decode_cookie,
    decode_pre_shared_key,
    decode_u16_list,
    message_hash,
    parse_certificate_request,
    parse_certificate_verify,
    parse_client_hello,
    parse_encrypted_extensions,
    parse_new_session_ticket,
    parse_server_hello,
)
from tcpls.tls.hs.groups import Group, KeyShare
from tcpls.tls.hs.keyschedule import KeySchedule, Transcript
from tcpls.tls.hs.server import ServerEngine
from tcpls.tls.hs.signatures import verify_certificate_verify
from tcpls.tls.hs.tickets import ServerTicket, SessionTicket, TicketStore
from tcpls.tls.record import CipherSuite

VECTORS = Path(__file__).resolve().parents[2] / "vectors" / "rfc8448.json"
DATA: dict[str, Any] = json.loads(VECTORS.read_text())

SUITE = CipherSuite.AES_128_GCM_SHA256
#: The RFC's client offers TLS_AES_128_GCM_SHA256, TLS_CHACHA20_POLY1305_SHA256,
#: TLS_AES_256_GCM_SHA384 in this order; its server picks the first.
RFC_SUITES = (
    CipherSuite.AES_128_GCM_SHA256,
    CipherSuite.CHACHA20_POLY1305_SHA256,
    CipherSuite.AES_256_GCM_SHA384,
)
#: Traces of a full handshake without client authentication or HRR (§3, §7).
FULL_TRACES = ["simple_1rtt_handshake", "compatibility_mode"]
RESUMED = "resumed_0rtt_handshake"
RETRY = "hello_retry_request"
AUTH = "client_authentication"
ALL_TRACES = [
    "simple_1rtt_handshake",
    "resumed_0rtt_handshake",
    "hello_retry_request",
    "client_authentication",
    "compatibility_mode",
]

Secret = tuple[bool, Epoch, bytes]


# -- the vectors -------------------------------------------------------------------------


class Trace:
    """The values of one RFC 8448 trace, as bytes."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.values: dict[str, Any] = DATA["traces"][name]["values"]

    def __getitem__(self, key: str) -> bytes:
        return bytes.fromhex(self.values[key]["hex"])

    def __contains__(self, key: str) -> bool:
        return key in self.values

    @property
    def session_id(self) -> bytes:
        """The legacy_session_id of the RFC's ClientHello (empty but in §7)."""
        first = "client_hello" if "client_hello" in self else "client_hello_record_payload"
        return parse_client_hello(self[first]).legacy_session_id

    def secret(self, is_write: bool, epoch: Epoch, client_secret: bool) -> Secret:
        """(is_write, epoch, the RFC's secret of that epoch and side)."""
        names = {
            Epoch.EARLY: "client_early_traffic_secret",
            Epoch.HANDSHAKE: "{}_handshake_traffic_secret",
            Epoch.ONE_RTT: "{}_application_traffic_secret_0",
        }
        return (
            is_write,
            epoch,
            self[names[epoch].format("client" if client_secret else "server")],
        )


def key_value(name: str) -> bytes:
    return bytes.fromhex(DATA["keys"][name]["hex"])


def certificate(name: str) -> x509.Certificate:
    return x509.load_der_x509_certificate(key_value(name))


@cache
def rfc_rsa_key() -> rsa.RSAPrivateKey:
    """The server's RSA key of RFC 8448 §2 (sections 3, 4, 5, 7)."""

    def number(name: str) -> int:
        return int.from_bytes(key_value(f"server_rsa_{name}"), "big")

    public = rsa.RSAPublicNumbers(number("public_exponent"), number("modulus"))
    return rsa.RSAPrivateNumbers(
        p=number("prime1"),
        q=number("prime2"),
        d=number("private_exponent"),
        dmp1=number("exponent1"),
        dmq1=number("exponent2"),
        iqmp=number("coefficient"),
        public_numbers=public,
    ).private_key()


def x25519_share(trace: Trace, side: str) -> KeyShare:
    private = x25519.X25519PrivateKey.from_private_bytes(
        trace[f"{side}_ephemeral_x25519_private_key"]
    )
    return KeyShare(Group.x25519, x25519_private=private)


def p256_share(trace: Trace, side: str) -> KeyShare:
    value = int.from_bytes(trace[f"{side}_ephemeral_p256_private_key"], "big")
    return KeyShare(Group.secp256r1, ec_private=ec.derive_private_key(value, ec.SECP256R1()))


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def expand_label(secret: bytes, label: bytes, context: bytes, length: int = 32) -> bytes:
    """HKDF-Expand-Label with SHA-256, written here (not the engine's) for expected values."""
    full = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes([len(full)]) + full + bytes([len(context)])
    return HKDFExpand(hashes.SHA256(), length, info + context).derive(secret)


# -- what the engines draw and install ----------------------------------------------------


class Draws:
    """A ``random=`` callable returning the RFC's bytes in order; records the sizes asked."""

    def __init__(self, *values: bytes) -> None:
        self.values = list(values)
        self.sizes: list[int] = []

    def __call__(self, size: int) -> bytes:
        self.sizes.append(size)
        return self.values.pop(0)


class TokenBytes:
    """Stands for ``secrets.token_bytes``: the queued (size, value) first, then real ones."""

    def __init__(self, *queued: tuple[int, bytes]) -> None:
        self.queued = list(queued)
        self._real: Callable[[int | None], bytes] = secrets.token_bytes

    def __call__(self, size: int | None = None) -> bytes:
        if not self.queued:
            return self._real(size)
        expected, value = self.queued.pop(0)
        assert size == expected
        return value


class Installed:
    """The ``on_secret`` callback: records what the engine installs, in order."""

    def __init__(self) -> None:
        self.calls: list[Secret] = []

    def __call__(self, is_write: bool, epoch: Epoch, suite: CipherSuite, secret: bytes) -> None:
        assert suite == SUITE
        self.calls.append((is_write, epoch, secret))

    def take(self) -> list[Secret]:
        calls, self.calls = self.calls, []
        return calls


class Signer:
    """Stands for ``sign_certificate_verify``: checks the RFC's signature, then returns it.

    The RFC's signature must verify over the transcript hash the engine gives (with our
    ``verify_certificate_verify``), and that hash must be the RFC transcript's. When the
    key is the real one (§2 RSA key), our own signature must verify as well.
    """

    def __init__(
        self,
        rfc_certificate_verify: bytes,
        certificate: x509.Certificate,
        transcript: bytes,
        *,
        server: bool,
        real_key: bool,
    ) -> None:
        verify = parse_certificate_verify(rfc_certificate_verify)
        self.scheme = verify.scheme
        self.signature = verify.signature
        self.certificate = certificate
        self.expected_hash = sha256(transcript)
        self.server = server
        self.real_key = real_key
        self.hashes: list[bytes] = []

    def __call__(
        self, private_key: Any, scheme: int, transcript_hash: bytes, *, server: bool
    ) -> bytes:
        assert scheme == self.scheme, "the engine chose another signature scheme"
        assert server is self.server
        assert transcript_hash == self.expected_hash, "the engine signs another transcript"
        verify_certificate_verify(
            self.certificate,
            scheme,
            self.signature,
            transcript_hash,
            server=server,
            offered=(scheme,),
        )
        if self.real_key:
            ours = signatures.sign_certificate_verify(
                private_key, scheme, transcript_hash, server=server
            )
            verify_certificate_verify(
                self.certificate, scheme, ours, transcript_hash, server=server, offered=(scheme,)
            )
        self.hashes.append(transcript_hash)
        return self.signature


# -- engines that see the RFC's messages ----------------------------------------------------


class RfcClient(ClientEngine):
    """A client that sends the RFC's ClientHellos, encoded by its own ``_finish_hello``.

    ``own_hellos`` are the ClientHellos the engine built from its configuration (binder
    included), ``sent_hellos`` what it sent: the RFC's ClientHello parsed and encoded again
    by the engine, which recomputes the PSK binder when it has a ticket.
    """

    def __init__(self, *, rfc_hellos: Sequence[bytes], random: Draws, **kwargs: Any) -> None:
        super().__init__(random=random, **kwargs)
        self.draws = random
        self._rfc_hellos = list(rfc_hellos)
        self.own_hellos: list[bytes] = []
        self.sent_hellos: list[bytes] = []

    def _finish_hello(self, hello: ClientHello, prefix: bytes) -> bytes:
        self.own_hellos.append(super()._finish_hello(hello, prefix))
        rfc = parse_client_hello(self._rfc_hellos.pop(0))
        message = super()._finish_hello(rfc, prefix)
        self.sent_hellos.append(message)
        return message


class RfcServer(ServerEngine):
    """A server that sends the RFC's EncryptedExtensions (and §5's HelloRetryRequest).

    ``own_extensions`` records what the engine would have put in EncryptedExtensions;
    ``own_retries`` the HelloRetryRequests it built before the RFC's took their place.
    """

    def __init__(
        self,
        *,
        rfc_extensions: dict[int, bytes],
        rfc_retry: bytes | None = None,
        random: Draws,
        **kwargs: Any,
    ) -> None:
        super().__init__(random=random, **kwargs)
        self.draws = random
        self._rfc_extensions = rfc_extensions
        self._rfc_retry = rfc_retry
        self.own_extensions: list[dict[int, bytes]] = []
        self.own_retries: list[bytes] = []

    def _server_extensions(self, early: bool) -> dict[int, bytes]:
        self.own_extensions.append(super()._server_extensions(early))
        return dict(self._rfc_extensions)

    def _send(self, epoch: Epoch, message: bytes, *, transcript: bool = True) -> None:
        if self._rfc_retry is not None and is_hello_retry(message):
            self.own_retries.append(message)
            message = self._rfc_retry
        super()._send(epoch, message, transcript=transcript)


def is_hello_retry(message: bytes) -> bool:
    return message[0] == 2 and parse_server_hello(message).is_retry_request


class RfcTicketStore(TicketStore):
    """A ticket store that issues the RFC's label and records the tickets issued."""

    def __init__(self, *, labels: Sequence[bytes] = (), lifetime: int = 30) -> None:
        super().__init__(lifetime=lifetime)
        self._labels = list(labels)
        self.issued: list[ServerTicket] = []

    def issue(self, ticket: ServerTicket) -> bytes:
        self.issued.append(ticket)
        if not self._labels:
            return super().issue(ticket)
        label = self._labels.pop(0)
        self.add(label, ticket)
        return label

    def add(self, label: bytes, ticket: ServerTicket) -> None:
        """Remember ``ticket`` under ``label`` (the RFC's ticket, issued in §3)."""
        self._tickets[label] = ticket


class AcceptingVerifier(CertificateVerifier):
    """A client verifier without path validation; records the chains it is given.

    RFC 8448's client certificate is a self-signed test certificate that expired on
    2026-07-30 and has neither authorityKeyIdentifier nor subjectAltName, which the profile
    of cryptography's verifier requires. Its CertificateVerify is still checked.
    """

    def __init__(self) -> None:
        pem = certificate("client_rsa_certificate_der").public_bytes(Encoding.PEM)
        super().__init__(cadata=pem)
        self.chains: list[list[x509.Certificate]] = []

    def verify_client(self, chain: Sequence[x509.Certificate], now: Any = None) -> None:
        self.chains.append(list(chain))


def ee_extensions(trace: Trace) -> dict[int, bytes]:
    return parse_encrypted_extensions(trace["encrypted_extensions"]).extensions


def make_server(
    trace: Trace,
    installed: Installed,
    *,
    store: TicketStore,
    rfc_retry: bytes | None = None,
    **kwargs: Any,
) -> RfcServer:
    if "certificate_chain" not in kwargs:
        kwargs["certificate_chain"] = [certificate("server_rsa_certificate_der")]
        kwargs["private_key"] = rfc_rsa_key()
    if "key_shares" not in kwargs:
        kwargs["key_shares"] = [x25519_share(trace, "server")]
    return RfcServer(
        rfc_extensions=ee_extensions(trace),
        rfc_retry=rfc_retry,
        on_secret=installed,
        cipher_suites=[SUITE],
        tcpls=False,
        ticket_store=store,
        random=Draws(trace["server_random"]),
        **kwargs,
    )


def make_client(
    trace: Trace, installed: Installed, rfc_hellos: Sequence[bytes], **kwargs: Any
) -> RfcClient:
    kwargs.setdefault("groups", [Group.x25519])
    if "key_shares" not in kwargs:
        kwargs["key_shares"] = [x25519_share(trace, "client")]
    return RfcClient(
        rfc_hellos=rfc_hellos,
        on_secret=installed,
        server_name="server",
        verify=False,
        cipher_suites=RFC_SUITES,
        tcpls=False,
        random=Draws(trace["client_random"], trace.session_id),
        **kwargs,
    )


def check_own_hello(own: bytes, rfc: bytes, same: Sequence[int]) -> None:
    """The engine's own ClientHello has the RFC's fields and these extensions' bodies."""
    ours, theirs = parse_client_hello(own), parse_client_hello(rfc)
    assert ours.legacy_version == theirs.legacy_version
    assert ours.random == theirs.random
    assert ours.legacy_session_id == theirs.legacy_session_id
    assert ours.cipher_suites == theirs.cipher_suites
    assert ours.compression_methods == theirs.compression_methods
    for ext in same:
        assert ours.extensions[ext] == theirs.extensions[ext], ExtensionType(ext).name


def check_server_resumption(store: RfcTicketStore, trace: Trace) -> None:
    """The ticket the server issued stands for the RFC's resumption_master_secret."""
    (ticket,) = store.issued
    expected = expand_label(trace["resumption_master_secret"], b"resumption", b"\x00\x00")
    assert ticket.psk == expected
    assert ticket.cipher_suite == SUITE


def check_client_resumption(client: ClientEngine, trace: Trace) -> None:
    """A ticket given to the client stands for the RFC's resumption_master_secret."""
    nonce = b"\x00\x01"
    client.handle_message(NewSessionTicket(30, 1, nonce, b"ticket").encode())
    expected = expand_label(trace["resumption_master_secret"], b"resumption", nonce)
    assert client.session_tickets[-1].psk == expected


def transcript(trace: Trace, *names: str) -> bytes:
    return b"".join(trace[n] for n in names)


# -- inputs and key schedule -----------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_TRACES)
def test_key_shares_from_the_rfc_private_keys(name: str) -> None:
    trace = Trace(name)
    for side in ("client", "server"):
        if f"{side}_ephemeral_x25519_private_key" in trace:
            share = x25519_share(trace, side)
            assert share.public == trace[f"{side}_ephemeral_x25519_public_key"]
        if f"{side}_ephemeral_p256_private_key" in trace:
            assert p256_share(trace, side).public == trace[f"{side}_ephemeral_p256_public_key"]


def test_rfc_rsa_key_matches_the_certificate() -> None:
    public = certificate("server_rsa_certificate_der").public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    assert public.public_numbers() == rfc_rsa_key().public_key().public_numbers()


@pytest.mark.parametrize("name", ALL_TRACES)
def test_key_schedule_and_transcript(name: str) -> None:
    """KeySchedule and Transcript alone, stage by stage, against the RFC's values."""
    trace = Trace(name)
    psk = trace["psk"] if name == RESUMED else None
    schedule = KeySchedule(SUITE, psk)
    assert schedule.secret == trace["early_secret"]
    log = Transcript()
    if name == RETRY:
        log.update(trace["client_hello"])
        log.restart_after_retry(SUITE)
        log.update(trace["hello_retry_request"])
        log.update(trace["client_hello_2"])
    else:
        log.start(SUITE)
        first = "client_hello" if "client_hello" in trace else "client_hello_record_payload"
        log.update(trace[first])
    if psk is not None:
        binder_key = schedule.binder_key()
        assert binder_key == trace["binder_key"]
        prefix_hash = sha256(trace["psk_binder_client_hello_prefix"])
        assert prefix_hash == trace["psk_binder_transcript_hash"]
        assert schedule.finished(binder_key, prefix_hash) == trace["psk_binder"]
        early_hash = log.digest()
        assert early_hash == trace["client_early_traffic_secret_transcript_hash"]
        assert schedule.derive(b"c e traffic", early_hash) == trace["client_early_traffic_secret"]
    schedule.handshake(trace["ecdhe_shared_secret"])
    assert schedule.secret == trace["handshake_secret"]
    log.update(trace["server_hello"])
    assert log.digest() == trace["client_handshake_traffic_secret_transcript_hash"]
    client_hs, server_hs = schedule.traffic_secrets(log.digest())
    assert client_hs == trace["client_handshake_traffic_secret"]
    assert server_hs == trace["server_handshake_traffic_secret"]
    for message in (
        "encrypted_extensions",
        "certificate_request",
        "server_certificate",
        "server_certificate_verify",
    ):
        if message in trace:
            log.update(trace[message])
    assert schedule.finished(server_hs, log.digest()) == trace["server_finished_verify_data"]
    log.update(trace["server_finished"])
    schedule.master()
    assert schedule.secret == trace["master_secret"]
    client_ap, server_ap = schedule.traffic_secrets(log.digest())
    assert client_ap == trace["client_application_traffic_secret_0"]
    assert server_ap == trace["server_application_traffic_secret_0"]
    assert schedule.derive(b"exp master", log.digest()) == trace["exporter_master_secret"]
    for message in ("end_of_early_data", "client_certificate", "client_certificate_verify"):
        if message in trace:
            log.update(trace[message])
    assert schedule.finished(client_hs, log.digest()) == trace["client_finished_verify_data"]
    log.update(trace["client_finished"])
    assert schedule.derive(b"res master", log.digest()) == trace["resumption_master_secret"]


# -- §3 and §7: full handshakes ---------------------------------------------------------------


@pytest.mark.parametrize("name", FULL_TRACES)
def test_server_full_handshake(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    trace = Trace(name)
    signer = Signer(
        trace["server_certificate_verify"],
        certificate("server_rsa_certificate_der"),
        transcript(
            trace, "client_hello", "server_hello", "encrypted_extensions", "server_certificate"
        ),
        server=True,
        real_key=True,
    )
    monkeypatch.setattr("tcpls.tls.hs.server.sign_certificate_verify", signer)
    nst = parse_new_session_ticket(trace["new_session_ticket"]) if name == FULL_TRACES[0] else None
    tokens = TokenBytes((4, nst.age_add.to_bytes(4, "big"))) if nst else TokenBytes()
    monkeypatch.setattr("tcpls.tls.hs.server.secrets.token_bytes", tokens)  # the age_add
    store = RfcTicketStore(labels=[nst.ticket] if nst else [])
    installed = Installed()
    server = make_server(trace, installed, store=store, max_early_data=1024)

    out = server.handle_message(trace["client_hello"])
    assert out == [
        (Epoch.INITIAL, trace["server_hello"]),
        (Epoch.HANDSHAKE, trace["server_handshake_flight_record_payload"]),
    ]
    assert signer.hashes == [signer.expected_hash]
    assert server.own_extensions == [{}]  # ours: nothing to say for plain TLS 1.3
    assert installed.take() == [
        trace.secret(True, Epoch.HANDSHAKE, False),
        trace.secret(False, Epoch.HANDSHAKE, True),
        trace.secret(True, Epoch.ONE_RTT, False),
    ]
    assert server.exporter_secret == trace["exporter_master_secret"]
    assert server.client_random == trace["client_random"]
    assert server.group == Group.x25519 and server.cipher_suite == SUITE

    after = server.handle_message(trace["client_finished"])
    assert server.complete
    assert installed.take() == [trace.secret(False, Epoch.ONE_RTT, True)]
    check_server_resumption(store, trace)
    assert [epoch for epoch, _ in after] == [Epoch.ONE_RTT]
    if nst is not None:
        # the RFC's ticket (its label and age_add are the test store's)
        assert after[0][1] == nst.encode()
    assert not tokens.queued
    assert server.draws.sizes == [32] and not server.draws.values


@pytest.mark.parametrize("name", FULL_TRACES)
def test_client_full_handshake(name: str) -> None:
    trace = Trace(name)
    installed = Installed()
    client = make_client(trace, installed, [trace["client_hello"]])

    assert client.start() == [(Epoch.INITIAL, trace["client_hello_record_payload"])]
    assert client.sent_hellos == [trace["client_hello"]]
    check_own_hello(
        client.own_hellos[0],
        trace["client_hello"],
        [
            ExtensionType.server_name,
            ExtensionType.key_share,
            ExtensionType.supported_versions,
            ExtensionType.psk_key_exchange_modes,
        ],
    )
    assert installed.take() == []
    assert client.handle_message(trace["server_hello"]) == []
    assert installed.take() == [
        trace.secret(True, Epoch.HANDSHAKE, True),
        trace.secret(False, Epoch.HANDSHAKE, False),
    ]
    for message in ("encrypted_extensions", "server_certificate", "server_certificate_verify"):
        assert client.handle_message(trace[message]) == []
    out = client.handle_message(trace["server_finished"])
    assert out == [(Epoch.HANDSHAKE, trace["client_finished_record_payload"])]
    assert client.complete
    assert installed.take() == [
        trace.secret(False, Epoch.ONE_RTT, False),
        trace.secret(True, Epoch.ONE_RTT, True),
    ]
    assert client.exporter_secret == trace["exporter_master_secret"]
    assert client.peer_certificate == certificate("server_rsa_certificate_der")
    if "new_session_ticket" in trace:
        assert client.handle_message(trace["new_session_ticket"]) == []
        (ticket,) = client.session_tickets
        nst = parse_new_session_ticket(trace["new_session_ticket"])
        assert ticket.psk == trace["resumption_psk"]
        assert ticket.ticket == nst.ticket
        assert (ticket.lifetime, ticket.age_add, ticket.max_early_data) == (30, nst.age_add, 1024)
        assert ticket.cipher_suite == SUITE and ticket.server_name == "server"
    else:
        check_client_resumption(client, trace)
    assert client.draws.sizes == [32, 32] and not client.draws.values


# -- §4: resumed 0-RTT ------------------------------------------------------------------------


def rfc_obfuscated_age() -> int:
    """The obfuscated_ticket_age of the §4 ClientHello."""
    hello = parse_client_hello(Trace(RESUMED)["client_hello_record_payload"])
    offer = decode_pre_shared_key(hello.extensions[ExtensionType.pre_shared_key])
    return offer.identities[0][1]


class RfcSessionTicket(SessionTicket):
    """The §3 ticket as the §4 client holds it: its age is the one the RFC's client sent."""

    def obfuscated_age(self, now: float | None = None) -> int:
        return rfc_obfuscated_age()


def rfc_ticket_fields() -> tuple[NewSessionTicket, bytes]:
    """The §3 NewSessionTicket and the PSK it stands for (the §4 PSK)."""
    nst = parse_new_session_ticket(Trace(FULL_TRACES[0])["new_session_ticket"])
    psk = Trace(RESUMED)["psk"]
    assert psk == Trace(FULL_TRACES[0])["resumption_psk"]
    return nst, psk


def test_server_resumed_0rtt() -> None:
    trace = Trace(RESUMED)
    nst, psk = rfc_ticket_fields()
    age = ((rfc_obfuscated_age() - nst.age_add) & 0xFFFFFFFF) / 1000
    store = RfcTicketStore()
    store.add(
        nst.ticket,
        ServerTicket(
            psk=psk,
            cipher_suite=SUITE,
            issued_at=time.time() - age,  # the ticket age the client claims (6 ms)
            lifetime=nst.lifetime,
            age_add=nst.age_add,
            max_early_data=1024,
            alpn_protocol=None,
            tcpls=False,
        ),
    )
    installed = Installed()
    server = make_server(trace, installed, store=store, max_early_data=1024)

    out = server.handle_message(trace["client_hello_record_payload"])  # binder verified
    assert out == [
        (Epoch.INITIAL, trace["server_hello"]),
        (Epoch.HANDSHAKE, trace["server_handshake_flight_record_payload"]),
    ]
    assert server.session_resumed and server.early_data_accepted
    assert server.own_extensions == [{ExtensionType.early_data: b""}]
    assert installed.take() == [
        trace.secret(False, Epoch.EARLY, True),
        trace.secret(True, Epoch.HANDSHAKE, False),
        trace.secret(True, Epoch.ONE_RTT, False),
    ]
    assert server.exporter_secret == trace["exporter_master_secret"]
    assert len(store) == 0  # single use

    assert server.handle_message(trace["end_of_early_data"]) == []
    assert installed.take() == [trace.secret(False, Epoch.HANDSHAKE, True)]
    server.handle_message(trace["client_finished"])
    assert server.complete
    assert installed.take() == [trace.secret(False, Epoch.ONE_RTT, True)]
    check_server_resumption(store, trace)
    assert server.draws.sizes == [32] and not server.draws.values


def test_server_refuses_the_rfc_client_hello_with_a_wrong_psk() -> None:
    """The binder check is real: the same ClientHello with another PSK is refused."""
    trace = Trace(RESUMED)
    nst, _ = rfc_ticket_fields()
    store = RfcTicketStore()
    ticket = ServerTicket(bytes(32), SUITE, time.time(), 30, nst.age_add, 0, None, False, None)
    store.add(nst.ticket, ticket)
    server = make_server(trace, Installed(), store=store)
    with pytest.raises(ProtocolError, match="binder") as info:
        server.handle_message(trace["client_hello_record_payload"])
    assert info.value.alert == AlertDescription.decrypt_error


def test_client_resumed_0rtt() -> None:
    trace = Trace(RESUMED)
    nst, psk = rfc_ticket_fields()
    ticket = RfcSessionTicket(
        ticket=nst.ticket,
        psk=psk,
        cipher_suite=SUITE,
        lifetime=nst.lifetime,
        age_add=nst.age_add,
        received_at=time.time(),
        max_early_data=1024,
        server_name="server",
        alpn_protocol=None,
        tcpls=False,
    )
    installed = Installed()
    client = make_client(
        trace,
        installed,
        [trace["client_hello_record_payload"]],
        session_ticket=ticket,
        early_data=True,
    )

    # The RFC's ClientHello, its PSK binder computed by the engine.
    assert client.start() == [(Epoch.INITIAL, trace["client_hello_record_payload"])]
    assert installed.take() == [trace.secret(True, Epoch.EARLY, True)]
    own = client.own_hellos[0]
    check_own_hello(
        own,
        trace["client_hello_record_payload"],
        [
            ExtensionType.server_name,
            ExtensionType.key_share,
            ExtensionType.supported_versions,
            ExtensionType.psk_key_exchange_modes,
            ExtensionType.early_data,
        ],
    )
    ours = decode_pre_shared_key(parse_client_hello(own).extensions[ExtensionType.pre_shared_key])
    theirs = decode_pre_shared_key(
        parse_client_hello(trace["client_hello_record_payload"]).extensions[
            ExtensionType.pre_shared_key
        ]
    )
    assert ours.identities == theirs.identities
    assert theirs.binders == (trace["psk_binder"],)

    assert client.handle_message(trace["server_hello"]) == []
    assert client.session_resumed
    assert installed.take() == [
        trace.secret(True, Epoch.HANDSHAKE, True),
        trace.secret(False, Epoch.HANDSHAKE, False),
    ]
    assert client.handle_message(trace["encrypted_extensions"]) == []
    assert client.early_data_accepted
    out = client.handle_message(trace["server_finished"])
    assert out == [
        (Epoch.EARLY, trace["end_of_early_data_record_payload"]),
        (Epoch.HANDSHAKE, trace["client_finished_record_payload"]),
    ]
    assert client.complete
    assert installed.take() == [
        trace.secret(False, Epoch.ONE_RTT, False),
        trace.secret(True, Epoch.ONE_RTT, True),
    ]
    assert client.exporter_secret == trace["exporter_master_secret"]
    check_client_resumption(client, trace)
    assert client.draws.sizes == [32, 32] and not client.draws.values


# -- §5: HelloRetryRequest --------------------------------------------------------------------


def rfc_cookie() -> bytes:
    hrr = parse_server_hello(Trace(RETRY)["hello_retry_request"])
    return decode_cookie(hrr.extensions[ExtensionType.cookie])


def retry_server(
    monkeypatch: pytest.MonkeyPatch, installed: Installed, store: RfcTicketStore
) -> tuple[RfcServer, TokenBytes]:
    """The §5 server: P-256 only, its HRR cookie the RFC's (``secrets.token_bytes(32)``)."""
    trace = Trace(RETRY)
    cookie = TokenBytes((32, rfc_cookie()))
    monkeypatch.setattr("tcpls.tls.hs.server.secrets.token_bytes", cookie)
    signer = Signer(
        trace["server_certificate_verify"],
        certificate("server_rsa_certificate_der"),
        message_hash(sha256(trace["client_hello"]))
        + transcript(
            trace,
            "hello_retry_request",
            "client_hello_2",
            "server_hello",
            "encrypted_extensions",
            "server_certificate",
        ),
        server=True,
        real_key=True,
    )
    monkeypatch.setattr("tcpls.tls.hs.server.sign_certificate_verify", signer)
    server = make_server(
        trace,
        installed,
        store=store,
        rfc_retry=trace["hello_retry_request"],
        groups=[Group.secp256r1],  # the RFC's server wants P-256
        key_shares=[p256_share(trace, "server")],
    )
    return server, cookie


def test_server_hello_retry_request(monkeypatch: pytest.MonkeyPatch) -> None:
    trace = Trace(RETRY)
    installed = Installed()
    store = RfcTicketStore()
    server, cookie = retry_server(monkeypatch, installed, store)

    assert server.handle_message(trace["client_hello"]) == [
        (Epoch.INITIAL, trace["hello_retry_request_record_payload"])
    ]
    # Ours has the RFC's fields and extensions, in the same order.
    (own,) = server.own_retries
    ours, theirs = parse_server_hello(own), parse_server_hello(trace["hello_retry_request"])
    assert ours.is_retry_request
    assert (ours.legacy_version, ours.legacy_session_id, ours.cipher_suite) == (
        theirs.legacy_version,
        theirs.legacy_session_id,
        theirs.cipher_suite,
    )
    assert ours.compression_method == theirs.compression_method
    assert ours.extensions == theirs.extensions
    assert len(own) == len(trace["hello_retry_request"])
    assert not cookie.queued
    assert installed.take() == []

    out = server.handle_message(trace["client_hello_2"])
    assert out == [
        (Epoch.INITIAL, trace["server_hello"]),
        (Epoch.HANDSHAKE, trace["server_handshake_flight_record_payload"]),
    ]
    assert server.retried and server.group == Group.secp256r1
    assert server.own_extensions == [{}]
    assert installed.take() == [
        trace.secret(True, Epoch.HANDSHAKE, False),
        trace.secret(False, Epoch.HANDSHAKE, True),
        trace.secret(True, Epoch.ONE_RTT, False),
    ]
    assert server.exporter_secret == trace["exporter_master_secret"]
    server.handle_message(trace["client_finished"])
    assert server.complete
    assert installed.take() == [trace.secret(False, Epoch.ONE_RTT, True)]
    check_server_resumption(store, trace)
    assert server.draws.sizes == [32] and not server.draws.values


def test_client_hello_retry_request(monkeypatch: pytest.MonkeyPatch) -> None:
    trace = Trace(RETRY)
    rfc_share = p256_share(trace, "client")
    real_key_share = KeyShare

    def key_share(group: int, **kwargs: Any) -> KeyShare:
        """The share the engine makes after the HRR is the RFC's P-256 share."""
        return rfc_share if group == Group.secp256r1 else real_key_share(group, **kwargs)

    monkeypatch.setattr("tcpls.tls.hs.client.KeyShare", key_share)
    installed = Installed()
    client = make_client(
        trace,
        installed,
        [trace["client_hello"], trace["client_hello_2"]],
        # a share for the first two groups: x25519 (the RFC's) and P-384; not for P-256
        groups=[Group.x25519, Group.secp384r1, Group.secp256r1],
    )

    assert client.start() == [(Epoch.INITIAL, trace["client_hello_record_payload"])]
    check_own_hello(
        client.own_hellos[0],
        trace["client_hello"],
        [
            ExtensionType.server_name,
            ExtensionType.supported_versions,
            ExtensionType.psk_key_exchange_modes,
        ],
    )
    own_shares = decode_client_key_shares(
        parse_client_hello(client.own_hellos[0]).extensions[ExtensionType.key_share]
    )
    assert own_shares[0] == (Group.x25519, trace["client_ephemeral_x25519_public_key"])

    out = client.handle_message(trace["hello_retry_request"])
    assert out == [(Epoch.INITIAL, trace["client_hello_2_record_payload"])]
    assert client.retried
    # The second ClientHello the engine built from the RFC's first: the RFC's, but for
    # the padding extension and the place of the cookie.
    ours = parse_client_hello(client.own_hellos[1])
    theirs = parse_client_hello(trace["client_hello_2"])
    theirs.extensions.pop(ExtensionType.padding)
    assert ours.extensions == theirs.extensions
    assert (
        ours.extensions[ExtensionType.key_share][-65:] == trace["client_ephemeral_p256_public_key"]
    )
    assert (ours.random, ours.legacy_session_id, ours.cipher_suites) == (
        theirs.random,
        theirs.legacy_session_id,
        theirs.cipher_suites,
    )

    assert client.handle_message(trace["server_hello"]) == []
    assert installed.take() == [
        trace.secret(True, Epoch.HANDSHAKE, True),
        trace.secret(False, Epoch.HANDSHAKE, False),
    ]
    for message in ("encrypted_extensions", "server_certificate", "server_certificate_verify"):
        assert client.handle_message(trace[message]) == []
    out = client.handle_message(trace["server_finished"])
    assert out == [(Epoch.HANDSHAKE, trace["client_finished_record_payload"])]
    assert client.complete and client.group == Group.secp256r1
    assert installed.take() == [
        trace.secret(False, Epoch.ONE_RTT, False),
        trace.secret(True, Epoch.ONE_RTT, True),
    ]
    assert client.exporter_secret == trace["exporter_master_secret"]
    check_client_resumption(client, trace)
    assert client.draws.sizes == [32, 32] and not client.draws.values


# -- §6: client authentication ----------------------------------------------------------------


def test_server_client_authentication(monkeypatch: pytest.MonkeyPatch) -> None:
    trace = Trace(AUTH)
    requested = decode_u16_list(
        parse_certificate_request(trace["certificate_request"]).extensions[
            ExtensionType.signature_algorithms
        ],
        "signature_algorithms",
    )
    monkeypatch.setattr("tcpls.tls.hs.server.SIGNATURE_ALGORITHMS", requested)
    server_certificate = certificate("server_ecdsa_p256_certificate_der")
    signer = Signer(
        trace["server_certificate_verify"],
        server_certificate,
        transcript(
            trace,
            "client_hello",
            "server_hello",
            "encrypted_extensions",
            "certificate_request",
            "server_certificate",
        ),
        server=True,
        real_key=False,
    )
    monkeypatch.setattr("tcpls.tls.hs.server.sign_certificate_verify", signer)
    verifier = AcceptingVerifier()
    installed = Installed()
    store = RfcTicketStore()
    server = make_server(
        trace,
        installed,
        store=store,
        certificate_chain=[server_certificate],
        # the RFC does not publish the server's ECDSA key: a P-256 stand-in picks the scheme
        private_key=ec.generate_private_key(ec.SECP256R1()),
        client_verifier=verifier,
    )

    out = server.handle_message(trace["client_hello"])
    assert out == [
        (Epoch.INITIAL, trace["server_hello"]),
        (Epoch.HANDSHAKE, trace["server_handshake_flight_record_payload"]),
    ]
    assert signer.hashes == [signer.expected_hash]
    assert installed.take() == [
        trace.secret(True, Epoch.HANDSHAKE, False),
        trace.secret(False, Epoch.HANDSHAKE, True),
        trace.secret(True, Epoch.ONE_RTT, False),
    ]
    assert server.exporter_secret == trace["exporter_master_secret"]

    assert server.handle_message(trace["client_certificate"]) == []
    assert verifier.chains == [[certificate("client_rsa_certificate_der")]]
    # the client's signature, checked by the engine over its own transcript
    assert server.handle_message(trace["client_certificate_verify"]) == []
    server.handle_message(trace["client_finished"])
    assert server.complete
    assert server.peer_certificate == certificate("client_rsa_certificate_der")
    assert installed.take() == [trace.secret(False, Epoch.ONE_RTT, True)]
    check_server_resumption(store, trace)


def test_server_refuses_the_rfc_client_signature_over_another_transcript(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The check of the client's CertificateVerify is real: a changed signature fails."""
    trace = Trace(AUTH)
    monkeypatch.setattr(
        "tcpls.tls.hs.server.sign_certificate_verify",
        lambda *args, **kwargs: (
            parse_certificate_verify(trace["server_certificate_verify"]).signature
        ),
    )
    server = make_server(
        trace,
        Installed(),
        store=RfcTicketStore(),
        certificate_chain=[certificate("server_ecdsa_p256_certificate_der")],
        private_key=ec.generate_private_key(ec.SECP256R1()),
        client_verifier=AcceptingVerifier(),
    )
    server.handle_message(trace["client_hello"])
    server.handle_message(trace["client_certificate"])
    forged = bytearray(trace["client_certificate_verify"])
    forged[-1] ^= 1
    with pytest.raises(ProtocolError, match="does not verify") as info:
        server.handle_message(bytes(forged))
    assert info.value.alert == AlertDescription.decrypt_error


def test_client_client_authentication(monkeypatch: pytest.MonkeyPatch) -> None:
    trace = Trace(AUTH)
    client_certificate = certificate("client_rsa_certificate_der")
    signer = Signer(
        trace["client_certificate_verify"],
        client_certificate,
        transcript(
            trace,
            "client_hello",
            "server_hello",
            "encrypted_extensions",
            "certificate_request",
            "server_certificate",
            "server_certificate_verify",
            "server_finished",
            "client_certificate",
        ),
        server=False,
        real_key=False,
    )
    monkeypatch.setattr("tcpls.tls.hs.client.sign_certificate_verify", signer)
    installed = Installed()
    client = make_client(
        trace,
        installed,
        [trace["client_hello"]],
        certificate_chain=[client_certificate],
        # the RFC does not publish the client's key: an RSA-1024 stand-in picks the scheme
        private_key=rfc_rsa_key(),
    )

    assert client.start() == [(Epoch.INITIAL, trace["client_hello_record_payload"])]
    check_own_hello(
        client.own_hellos[0],
        trace["client_hello"],
        [
            ExtensionType.server_name,
            ExtensionType.key_share,
            ExtensionType.supported_versions,
            ExtensionType.psk_key_exchange_modes,
        ],
    )
    assert client.handle_message(trace["server_hello"]) == []
    assert installed.take() == [
        trace.secret(True, Epoch.HANDSHAKE, True),
        trace.secret(False, Epoch.HANDSHAKE, False),
    ]
    for message in (
        "encrypted_extensions",
        "certificate_request",
        "server_certificate",
        "server_certificate_verify",  # ECDSA P-256, verified by the engine
    ):
        assert client.handle_message(trace[message]) == []
    out = client.handle_message(trace["server_finished"])
    assert out == [(Epoch.HANDSHAKE, trace["client_authentication_flight_record_payload"])]
    assert signer.hashes == [signer.expected_hash]
    assert client.complete
    assert client.peer_certificate == certificate("server_ecdsa_p256_certificate_der")
    assert installed.take() == [
        trace.secret(False, Epoch.ONE_RTT, False),
        trace.secret(True, Epoch.ONE_RTT, True),
    ]
    assert client.exporter_secret == trace["exporter_master_secret"]
    check_client_resumption(client, trace)
    assert client.draws.sizes == [32, 32] and not client.draws.values


# -- the engine's own HelloRetryRequest and NewSessionTicket are the RFC's --------------------


def test_hello_retry_request_is_the_rfc_s(monkeypatch: pytest.MonkeyPatch) -> None:
    trace = Trace(RETRY)
    server, _ = retry_server(monkeypatch, Installed(), RfcTicketStore())
    server.handle_message(trace["client_hello"])
    assert server.own_retries == [trace["hello_retry_request"]]


def test_new_session_ticket_is_the_rfc_s(monkeypatch: pytest.MonkeyPatch) -> None:
    trace = Trace(FULL_TRACES[0])
    nst = parse_new_session_ticket(trace["new_session_ticket"])
    monkeypatch.setattr(
        "tcpls.tls.hs.server.secrets.token_bytes",
        TokenBytes((4, nst.age_add.to_bytes(4, "big"))),
    )
    monkeypatch.setattr(
        "tcpls.tls.hs.server.sign_certificate_verify",
        lambda *args, **kwargs: (
            parse_certificate_verify(trace["server_certificate_verify"]).signature
        ),
    )
    server = make_server(
        trace, Installed(), store=RfcTicketStore(labels=[nst.ticket]), max_early_data=1024
    )
    server.handle_message(trace["client_hello"])
    assert server.handle_message(trace["client_finished"]) == [
        (Epoch.ONE_RTT, trace["new_session_ticket_record_payload"])
    ]
