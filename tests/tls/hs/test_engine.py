"""The project's TLS 1.3 engine, client against server, in memory (messages, no records).

Every scenario checks that both ends derive the same secrets for every epoch, which is
what makes the records of one readable by the other.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tcpls.config import load_certificate_chain, load_private_key
from tcpls.devcert import DevPKI
from tcpls.errors import AlertDescription, ProtocolError
from tcpls.tls.hs.base import Epoch
from tcpls.tls.hs.certs import CertificateVerifier
from tcpls.tls.hs.client import ClientEngine
from tcpls.tls.hs.groups import Group
from tcpls.tls.hs.server import ServerEngine
from tcpls.tls.hs.tickets import SessionTicket, TicketStore
from tcpls.tls.record import CipherSuite


class Secrets:
    """Records the secrets an engine installs."""

    def __init__(self) -> None:
        self.installed: dict[tuple[bool, Epoch], bytes] = {}

    def __call__(self, is_write: bool, epoch: Epoch, suite: CipherSuite, secret: bytes) -> None:
        self.installed[(is_write, epoch)] = secret


def messages(data: bytes) -> Iterator[bytes]:
    """Split concatenated handshake messages."""
    while data:
        length = int.from_bytes(data[1:4], "big")
        yield data[: 4 + length]
        data = data[4 + length :]


def run(client: ClientEngine, server: ServerEngine) -> list[tuple[Epoch, bytes]]:
    """Drive a handshake to its end; return what the server sent after it (tickets)."""
    to_server = client.start()
    after: list[tuple[Epoch, bytes]] = []
    for _ in range(10):
        to_client: list[tuple[Epoch, bytes]] = []
        for _epoch, data in to_server:
            for message in messages(data):
                to_client += server.handle_message(message)
        if server.complete and client.complete:
            after = to_client
            break
        to_server = []
        for _epoch, data in to_client:
            for message in messages(data):
                to_server += client.handle_message(message)
    assert client.complete and server.complete
    for epoch, data in after:
        assert epoch is Epoch.ONE_RTT
        for message in messages(data):
            client.handle_message(message)
    return after


def same_keys(client: Secrets, server: Secrets) -> None:
    for (is_write, epoch), secret in client.installed.items():
        assert server.installed[(not is_write, epoch)] == secret, (is_write, epoch)
    assert len(client.installed) == len(server.installed)


def pair(
    pki: DevPKI,
    *,
    client_args: dict[str, Any] | None = None,
    server_args: dict[str, Any] | None = None,
) -> tuple[ClientEngine, ServerEngine, Secrets, Secrets]:
    cs, ss = Secrets(), Secrets()
    client = ClientEngine(
        on_secret=cs, server_name="localhost", cafile=str(pki.ca_file), **(client_args or {})
    )
    server = ServerEngine(
        on_secret=ss,
        certificate_chain=load_certificate_chain(pki.cert_file),
        private_key=load_private_key(pki.key_file),
        **(server_args or {}),
    )
    return client, server, cs, ss


def test_full_handshake_prefers_x25519mlkem768(pki: DevPKI) -> None:
    client, server, cs, ss = pair(pki)
    run(client, server)
    same_keys(cs, ss)
    assert client.group == server.group == Group.X25519MLKEM768
    assert client.cipher_suite == server.cipher_suite
    assert not client.retried and not client.session_resumed
    assert client.tcpls_negotiated and server.tcpls_negotiated
    assert client.export_keying_material(b"x", b"", 32) == server.export_keying_material(
        b"x", b"", 32
    )
    assert client.peer_certificate is not None


@pytest.mark.parametrize("server_groups", [[Group.x25519], [Group.secp256r1]])
def test_hello_retry_request(pki: DevPKI, server_groups: list[Group]) -> None:
    client, server, cs, ss = pair(
        pki,
        client_args={"groups": [Group.secp384r1, Group.x448, *server_groups]},
        server_args={"groups": server_groups},
    )
    run(client, server)
    same_keys(cs, ss)
    assert client.retried and server.retried
    assert client.group == server.group == server_groups[0]


def test_no_common_group_is_handshake_failure(pki: DevPKI) -> None:
    client, server, _, _ = pair(
        pki, client_args={"groups": [Group.x448]}, server_args={"groups": [Group.x25519]}
    )
    with pytest.raises(ProtocolError) as info:
        run(client, server)
    assert info.value.alert == AlertDescription.handshake_failure


def _ticket(pki: DevPKI, store: TicketStore, **server_args: Any) -> SessionTicket:
    client, server, _, _ = pair(pki, server_args={"ticket_store": store, **server_args})
    run(client, server)
    assert len(client.session_tickets) == 1
    return client.session_tickets[0]


def test_resumption_and_single_use_tickets(pki: DevPKI) -> None:
    store = TicketStore()
    ticket = SessionTicket.from_bytes(_ticket(pki, store).to_bytes())
    assert ticket.tcpls
    client, server, cs, ss = pair(
        pki, client_args={"session_ticket": ticket}, server_args={"ticket_store": store}
    )
    run(client, server)
    same_keys(cs, ss)
    assert client.session_resumed and server.session_resumed
    # the same ticket again: a full handshake (tickets are single-use)
    client, server, cs, ss = pair(
        pki, client_args={"session_ticket": ticket}, server_args={"ticket_store": store}
    )
    run(client, server)
    same_keys(cs, ss)
    assert not client.session_resumed and not server.session_resumed


def test_resumption_after_hello_retry_request(pki: DevPKI) -> None:
    store = TicketStore()
    ticket = _ticket(pki, store, groups=[Group.x25519])
    client, server, cs, ss = pair(
        pki,
        client_args={
            "session_ticket": ticket,
            "groups": [Group.secp384r1, Group.x448, Group.x25519],
        },
        server_args={"ticket_store": store, "groups": [Group.x25519]},
    )
    run(client, server)
    same_keys(cs, ss)
    assert client.retried and client.session_resumed and server.session_resumed


def test_early_data_accepted(pki: DevPKI) -> None:
    store = TicketStore()
    ticket = _ticket(pki, store, max_early_data=16384)
    assert ticket.max_early_data == 16384
    client, server, cs, ss = pair(
        pki,
        client_args={"session_ticket": ticket, "early_data": True},
        server_args={"ticket_store": store, "max_early_data": 16384},
    )
    run(client, server)
    same_keys(cs, ss)
    assert (True, Epoch.EARLY) in cs.installed
    assert client.early_data_accepted and server.early_data_accepted


def test_early_data_declined_when_server_is_not_configured(pki: DevPKI) -> None:
    store = TicketStore()
    ticket = _ticket(pki, store, max_early_data=16384)
    client, server, cs, ss = pair(
        pki,
        client_args={"session_ticket": ticket, "early_data": True},
        server_args={"ticket_store": store},
    )
    run(client, server)
    assert not client.early_data_accepted and server.skip_early_data
    assert client.session_resumed
    # the client's early key has no counterpart on the server
    cs.installed.pop((True, Epoch.EARLY))
    same_keys(cs, ss)


def _client_credentials(pki: DevPKI) -> tuple[list[x509.Certificate], Any]:
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
    return [cert], key


def test_client_certificate(pki: DevPKI) -> None:
    chain, key = _client_credentials(pki)
    client, server, cs, ss = pair(
        pki,
        client_args={"certificate_chain": chain, "private_key": key},
        server_args={"client_verifier": CertificateVerifier(cafile=str(pki.ca_file))},
    )
    run(client, server)
    same_keys(cs, ss)
    assert server.peer_certificate == chain[0]


def test_missing_client_certificate_is_certificate_required(pki: DevPKI) -> None:
    client, server, _, _ = pair(
        pki, server_args={"client_verifier": CertificateVerifier(cafile=str(pki.ca_file))}
    )
    with pytest.raises(ProtocolError) as info:
        run(client, server)
    assert info.value.alert == AlertDescription.certificate_required


def test_ticket_file_round_trip(pki: DevPKI, tmp_path: Path) -> None:
    ticket = _ticket(pki, TicketStore())
    ticket.save(tmp_path / "session")
    assert SessionTicket.load(tmp_path / "session") == ticket
    assert SessionTicket.load(tmp_path / "missing") is None
    assert (tmp_path / "session").stat().st_mode & 0o777 == 0o600


def test_a_resumed_session_keeps_both_identities(pki: DevPKI) -> None:
    chain, key = _client_credentials(pki)
    store = TicketStore()
    verifier = CertificateVerifier(cafile=str(pki.ca_file))
    client, server, _, _ = pair(
        pki,
        client_args={"certificate_chain": chain, "private_key": key},
        server_args={"client_verifier": verifier, "ticket_store": store},
    )
    run(client, server)
    ticket = SessionTicket.from_bytes(client.session_tickets[0].to_bytes())
    client, server, _, _ = pair(
        pki,
        client_args={"certificate_chain": chain, "private_key": key, "session_ticket": ticket},
        server_args={"client_verifier": verifier, "ticket_store": store},
    )
    run(client, server)
    assert client.session_resumed and server.session_resumed
    assert server.peer_certificate == chain[0]
    assert client.peer_certificate == load_certificate_chain(pki.cert_file)[0]


def test_a_ticket_without_a_client_identity_does_not_resume_where_one_is_required(
    pki: DevPKI,
) -> None:
    store = TicketStore()
    ticket = _ticket(pki, store)
    chain, key = _client_credentials(pki)
    client, server, _, _ = pair(
        pki,
        client_args={"certificate_chain": chain, "private_key": key, "session_ticket": ticket},
        server_args={
            "client_verifier": CertificateVerifier(cafile=str(pki.ca_file)),
            "ticket_store": store,
        },
    )
    run(client, server)
    assert not server.session_resumed and server.peer_certificate == chain[0]


@pytest.mark.parametrize("message", [b"", b"\x02", b"\x02\x00\x00"])
def test_a_message_shorter_than_its_header_is_a_decode_error(pki: DevPKI, message: bytes) -> None:
    client, _, _, _ = pair(pki)
    client.start()
    with pytest.raises(ProtocolError) as info:
        client.handle_message(message)
    assert info.value.alert == AlertDescription.decode_error
