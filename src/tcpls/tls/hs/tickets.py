"""Session tickets: what a client keeps to resume, and the server's bounded store.

The server's tickets are *stateful*: the ticket a client holds is a random label, and the
store maps it to the resumption secret and what the session negotiated (design: Tickets).
That keeps the secret off the wire and makes every ticket single-use: presenting a ticket
removes it, so a replayed ClientHello cannot resume (or send 0-RTT) twice. The store is
bounded in entries (oldest evicted first) and in lifetime.

A client's :class:`SessionTicket` can be saved to a file and loaded again
(:meth:`SessionTicket.to_bytes`, :meth:`SessionTicket.from_bytes`).
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass

from cryptography import x509

from tcpls.errors import ConfigurationError
from tcpls.tls.record import CipherSuite

__all__ = ["MAX_TICKET_LIFETIME", "ServerTicket", "SessionTicket", "TicketStore"]

#: Longest lifetime a ticket may have (RFC 8446 §4.6.1: seven days).
MAX_TICKET_LIFETIME = 7 * 24 * 3600
#: How far the age a client claims may be from the age the server sees, for 0-RTT.
AGE_TOLERANCE = 10.0
_FORMAT = "tcpls-session-ticket-1"


@dataclass(frozen=True, slots=True)
class SessionTicket:
    """A ticket a client holds to resume a session (and perhaps send 0-RTT).

    Opaque to applications: pass it back as ``ClientConfig(session_ticket=...)``, or save it
    with :meth:`to_bytes` and load it with :meth:`from_bytes`.
    """

    #: The ticket's identity, as the server sent it.
    ticket: bytes
    #: The pre-shared key it stands for.
    psk: bytes
    cipher_suite: CipherSuite
    #: Lifetime the server gave, in seconds.
    lifetime: int
    age_add: int
    #: When it was received (``time.time()``).
    received_at: float
    #: Most early data the server accepts with it (0: no 0-RTT).
    max_early_data: int
    server_name: str | None
    alpn_protocol: str | None
    #: Whether the session it resumes negotiated TCPLS.
    tcpls: bool
    #: The server's certificate (DER) in the session it resumes: a resumed session has
    #: the same peer (design: Client certificates).
    server_certificate: bytes | None = None

    @property
    def is_valid(self) -> bool:
        """Whether the ticket is within its lifetime."""
        return time.time() < self.received_at + min(self.lifetime, MAX_TICKET_LIFETIME)

    def obfuscated_age(self, now: float | None = None) -> int:
        """The ticket age the ClientHello carries (milliseconds plus ``age_add``, mod 2^32)."""
        age_ms = int(((now if now is not None else time.time()) - self.received_at) * 1000)
        return (max(age_ms, 0) + self.age_add) & 0xFFFFFFFF

    def to_bytes(self) -> bytes:
        """A self-describing form to save (it holds a secret: keep the file private)."""
        fields = asdict(self)
        fields["ticket"] = self.ticket.hex()
        fields["psk"] = self.psk.hex()
        fields["server_certificate"] = (
            self.server_certificate.hex() if self.server_certificate is not None else None
        )
        fields["cipher_suite"] = int(self.cipher_suite)
        return json.dumps({"format": _FORMAT, **fields}, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> SessionTicket:
        """Load what :meth:`to_bytes` wrote; :class:`ConfigurationError` if it is not that."""
        try:
            fields = json.loads(data)
            if fields.pop("format") != _FORMAT:
                raise ValueError("format")
            return cls(
                ticket=bytes.fromhex(fields["ticket"]),
                psk=bytes.fromhex(fields["psk"]),
                cipher_suite=CipherSuite(fields["cipher_suite"]),
                lifetime=int(fields["lifetime"]),
                age_add=int(fields["age_add"]) & 0xFFFFFFFF,
                received_at=float(fields["received_at"]),
                max_early_data=int(fields["max_early_data"]),
                server_name=fields["server_name"],
                alpn_protocol=fields["alpn_protocol"],
                tcpls=bool(fields["tcpls"]),
                server_certificate=(
                    bytes.fromhex(fields["server_certificate"])
                    if fields.get("server_certificate")
                    else None
                ),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ConfigurationError("not a tcpls session ticket") from None

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the ticket to ``path`` (mode 0600, replaced atomically)."""
        tmp = f"{os.fspath(path)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(self.to_bytes())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SessionTicket | None:
        """The ticket saved in ``path``; ``None`` if there is no such file."""
        try:
            with open(path, "rb") as f:
                return cls.from_bytes(f.read(64 * 1024))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read session file {os.fspath(path)}: {exc.strerror}"
            ) from None

    def __repr__(self) -> str:
        return f"<SessionTicket {self.cipher_suite.name} for {self.server_name!r}>"


@dataclass(frozen=True, slots=True)
class ServerTicket:
    """What the server remembers about a ticket it issued."""

    psk: bytes
    cipher_suite: CipherSuite
    issued_at: float
    lifetime: int
    age_add: int
    max_early_data: int
    alpn_protocol: str | None
    tcpls: bool
    #: The client's certificate in the session, if it presented one.
    peer_certificate: x509.Certificate | None = None


class TicketStore:
    """Server-side store of issued tickets: bounded, expiring, single-use (see the module)."""

    def __init__(
        self,
        max_size: int = 4096,
        lifetime: int = 7200,
        mint: Callable[[], bytes] | None = None,
    ) -> None:
        """``mint`` makes the labels (default: 32 random bytes); a server of several
        processes mints labels that name the process (design: Token steering)."""
        if not 0 < lifetime <= MAX_TICKET_LIFETIME:
            raise ConfigurationError("a ticket lifetime is between 1 s and 7 days")
        self._mint = mint
        self.max_size = max_size
        self.lifetime = lifetime
        self._tickets: OrderedDict[bytes, ServerTicket] = OrderedDict()

    def issue(self, ticket: ServerTicket) -> bytes:
        """Remember ``ticket``; return the label the client gets."""
        label = self._mint() if self._mint is not None else secrets.token_bytes(32)
        self._tickets[label] = ticket
        while len(self._tickets) > self.max_size:
            self._tickets.popitem(last=False)
        return label

    def pop(self, label: bytes, now: float | None = None) -> ServerTicket | None:
        """The ticket with this label, removed from the store; ``None`` if unknown or expired."""
        ticket = self._tickets.pop(label, None)
        if ticket is None:
            return None
        if (now if now is not None else time.time()) >= ticket.issued_at + ticket.lifetime:
            return None
        return ticket

    def __len__(self) -> int:
        return len(self._tickets)
