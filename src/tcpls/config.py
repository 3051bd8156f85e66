"""Configuration of tcpls clients and servers: frozen dataclasses with sensible defaults.

:class:`ClientConfig` and :class:`ServerConfig` hold what a user chooses;
:class:`SessionTuning` holds the protocol constants of design.md (Tokens to Backpressure)
(ACK policy, buffers, timeouts) that both sides share. Files named in a config
are read when a connection or server starts, and a missing or unreadable file
raises :class:`tcpls.errors.ConfigurationError` with one clear sentence.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from tcpls.errors import ConfigurationError
from tcpls.tls.hs.groups import parse_groups
from tcpls.tls.record import CipherSuite
from tcpls.wire.extensions import DEFAULT_CODEPOINTS, ExtensionCodepoints

__all__ = [
    "CIPHER_SUITE_NAMES",
    "ClientConfig",
    "ServerConfig",
    "SessionTuning",
    "Steering",
    "load_certificate_chain",
    "load_private_key",
    "parse_cipher_suites",
]

#: Accepted names for the TLS 1.3 cipher suites (IANA and OpenSSL spellings).
CIPHER_SUITE_NAMES: dict[str, CipherSuite] = {
    "TLS_AES_128_GCM_SHA256": CipherSuite.AES_128_GCM_SHA256,
    "TLS_AES_256_GCM_SHA384": CipherSuite.AES_256_GCM_SHA384,
    "TLS_CHACHA20_POLY1305_SHA256": CipherSuite.CHACHA20_POLY1305_SHA256,
    "AES_128_GCM_SHA256": CipherSuite.AES_128_GCM_SHA256,
    "AES_256_GCM_SHA384": CipherSuite.AES_256_GCM_SHA384,
    "CHACHA20_POLY1305_SHA256": CipherSuite.CHACHA20_POLY1305_SHA256,
}


def parse_cipher_suites(
    names: Sequence[str | CipherSuite] | None,
) -> tuple[CipherSuite, ...] | None:
    """Cipher suites from names such as ``TLS_AES_128_GCM_SHA256``; ``None`` keeps the default."""
    if names is None:
        return None
    suites: list[CipherSuite] = []
    for name in names:
        if isinstance(name, CipherSuite):
            suites.append(name)
            continue
        try:
            suites.append(CIPHER_SUITE_NAMES[name.strip().upper()])
        except KeyError:
            known = ", ".join(k for k in CIPHER_SUITE_NAMES if k.startswith("TLS_"))
            raise ConfigurationError(f"unknown cipher suite {name!r} (known: {known})") from None
    if not suites:
        raise ConfigurationError("the list of cipher suites is empty")
    return tuple(suites)


def _read_file(path: str | os.PathLike[str], what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ConfigurationError(f"{what} file not found: {os.fspath(path)}") from None
    except IsADirectoryError:
        raise ConfigurationError(f"{what} file is a directory: {os.fspath(path)}") from None
    except PermissionError:
        raise ConfigurationError(f"{what} file is not readable: {os.fspath(path)}") from None
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read {what} file {os.fspath(path)}: {exc.strerror}"
        ) from None


def _check_ca_file(path: str) -> None:
    """Raise :class:`ConfigurationError` unless ``path`` is a readable file of PEM CAs.

    Each file version is parsed once (a client checks its configuration at every
    connection).
    """
    try:
        stat = os.stat(path)
    except OSError:
        _read_file(path, "CA")  # raises the right ConfigurationError
        raise
    _check_ca_file_version(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=16)
def _check_ca_file_version(path: str, mtime_ns: int, size: int) -> None:
    _check_ca_certificates(_read_file(path, "CA"), f"the CA file {path}")


def _check_ca_certificates(data: bytes, what: str) -> None:
    """Raise :class:`ConfigurationError` unless ``data`` holds PEM certificates."""
    try:
        found = x509.load_pem_x509_certificates(data)
    except ValueError:
        found = []
    if not found:
        raise ConfigurationError(f"{what} holds no PEM CA certificate")


def load_certificate_chain(path: str | os.PathLike[str]) -> list[x509.Certificate]:
    """The PEM certificates of ``path``: the end-entity certificate first, then intermediates."""
    data = _read_file(path, "certificate")
    try:
        chain = x509.load_pem_x509_certificates(data)
    except ValueError:
        chain = []
    if not chain:
        raise ConfigurationError(f"no PEM certificate found in {os.fspath(path)}")
    return chain


def _load_pair(
    certfile: str, keyfile: str, password: bytes | None
) -> tuple[list[x509.Certificate], Any]:
    """A certificate chain and its key, checked to belong together."""
    chain = load_certificate_chain(certfile)
    key = load_private_key(keyfile, password)
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if chain[0].public_key().public_bytes(der, fmt) != key.public_key().public_bytes(der, fmt):
        raise ConfigurationError(f"the key {keyfile} does not match the certificate {certfile}")
    return chain, key


def load_private_key(path: str | os.PathLike[str], password: bytes | None = None) -> Any:
    """The PEM private key of ``path`` (ECDSA P-256/P-384, RSA, Ed25519 or Ed448)."""
    data = _read_file(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=password)
    except TypeError:
        raise ConfigurationError(
            f"private key {os.fspath(path)} is encrypted; give its password"
        ) from None
    except ValueError:
        raise ConfigurationError(f"no usable PEM private key in {os.fspath(path)}") from None
    supported = (
        isinstance(key, ec.EllipticCurvePrivateKey)
        and isinstance(key.curve, ec.SECP256R1 | ec.SECP384R1)
    ) or isinstance(key, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey)
    if not supported:
        raise ConfigurationError(
            f"unsupported private key type in {os.fspath(path)} "
            "(use ECDSA P-256/P-384, RSA, Ed25519 or Ed448)"
        )
    return key


def _check_qlog(records: str, sample: int, max_bytes: int) -> None:
    if records not in ("all", "sampled", "none"):
        raise ConfigurationError("qlog_records must be 'all', 'sampled' or 'none'")
    if sample < 1:
        raise ConfigurationError("qlog_sample must be at least 1")
    if max_bytes < 4096:
        raise ConfigurationError("qlog_max_bytes must be at least 4096")


@dataclass(frozen=True)
class SessionTuning:
    """Protocol constants and limits shared by clients and servers.

    See the design notes: ACK policy, Failure detection, Backpressure, Limit violations,
    Timers.

    The defaults are the project's normative values; tests shorten the timers.
    """

    #: Send an ACK after this many ack-eliciting records on a connection (design: ACK policy).
    ack_records: int = 16
    #: ... or after this many bytes of records (design: ACK policy).
    ack_bytes: int = 256 * 1024
    #: ... or at the latest after this delay, in seconds (design: ACK policy).
    ack_delay: float = 0.025
    #: Largest plaintext per record (16 KiB; smaller records help aggregation).
    max_record_size: int = 16384
    #: Unread data one stream may hold (bytes of memory, overheads included); above it,
    #: reading from TCP pauses until the application reads (backpressure).
    stream_receive_buffer: int = 1024 * 1024
    #: Unread data all the streams of a session may hold together, likewise.
    session_receive_buffer: int = 16 * 1024 * 1024
    #: Per-stream high-water mark of bytes written and not yet sent: ``drain()`` waits above it.
    stream_send_buffer: int = 1024 * 1024
    #: The same for all the streams of a session together.
    session_send_buffer: int = 16 * 1024 * 1024
    #: Stream bytes sent and not yet acknowledged, per session, above which no new data is
    #: sent (they are kept for reinjection; TCP flow control normally bounds them).
    max_unacked_bytes: int = 16 * 1024 * 1024
    #: Streams the peer may have open at once; one more ends the session (illegal_parameter).
    max_open_streams: int = 4096
    #: Streams the peer may open over the whole session; one more ends it likewise.
    max_total_streams: int = 1 << 24
    #: Memory of the out-of-order stream data held for reassembly across the session;
    #: more ends the session (illegal_parameter).
    max_reassembly_bytes: int = 16 * 1024 * 1024
    #: TCP_USER_TIMEOUT on every socket, seconds; ``None`` leaves the kernel default
    #: (design: Failure detection).
    user_timeout: float | None = 2.0
    #: Send a Ping when data is outstanding and nothing arrived for this long, seconds.
    ping_after: float = 1.0
    #: ... and declare the connection failed if the Ping is not answered within this.
    ping_timeout: float = 1.0
    #: Time allowed for the TLS handshake (or a join exchange), seconds.
    handshake_timeout: float = 10.0
    #: A session with no traffic for this long is closed (``None``: never), seconds.
    idle_timeout: float | None = 300.0
    #: Time a closing session waits for the peer to finish before it aborts, seconds.
    close_timeout: float = 10.0
    #: With several connections: bytes each may hold in its transport's write buffer.
    multipath_write_buffer: int = 32 * 1024
    #: With several connections: TCP_NOTSENT_LOWAT of each socket (None: kernel default).
    multipath_notsent_lowat: int | None = 32 * 1024
    #: Server: how long a session with no connection left waits for the client to join
    #: again (break-before-make); client: how long it keeps trying to join.
    rejoin_timeout: float = 30.0
    #: The least probe timeout, seconds: a connection becomes suspect when its oldest
    #: unacknowledged record and its silence are older than ``srtt + 4 rttvar +
    #: ack_delay`` and than this (design: Failure detection).
    suspect_timeout_min: float = 0.1
    #: Stream bytes a suspect connection may have sent again on the others per probe
    #: timeout that expires (design: Failure detection).
    suspect_resend_bytes: int = 1024 * 1024

    def check(self) -> None:
        """Raise :class:`ConfigurationError` for unusable values of the failure detection."""
        if not 0.001 <= self.suspect_timeout_min <= 60:
            raise ConfigurationError("suspect_timeout_min must be between 1 ms and 60 s")
        if self.suspect_resend_bytes < 0:
            raise ConfigurationError("suspect_resend_bytes must be at least 0")
        if not 0 < self.ack_delay <= 1:
            raise ConfigurationError("ack_delay must be positive and at most 1 s")


@dataclass(frozen=True)
class ClientConfig:
    """Configuration of a tcpls client.

    Certificate verification is on by default: the server's chain is checked
    against ``cafile``/``cadata`` or, when neither is given, the certifi CA
    bundle, and its name against ``server_name`` (default: the host connected to).
    """

    #: PEM file of trusted CA certificates (default: certifi's bundle).
    cafile: str | None = None
    #: PEM data of trusted CA certificates, as an alternative to ``cafile``.
    cadata: bytes | None = None
    #: Verify the server's certificate (never turn off outside tests).
    verify: bool = True
    #: Name for SNI and certificate verification; default: the host passed to connect.
    server_name: str | None = None
    #: NSS key log file for Wireshark; default: ``$SSLKEYLOGFILE`` when set.
    keylog_file: str | None = None
    #: TCP_USER_TIMEOUT in seconds for every connection; ``None``: the tuning's.
    user_timeout: float | None = None
    #: Offer TCPLS; when false (or the server does not answer it) the session is plain TLS.
    tcpls: bool = True
    #: TLS 1.3 cipher suites in preference order (names or :class:`CipherSuite`).
    cipher_suites: Sequence[str | CipherSuite] | None = None
    #: ALPN protocols; when set, the server must select one (design: ALPN).
    alpn_protocols: Sequence[str] | None = None
    #: A ticket from an earlier session, for PSK resumption (a
    #: :class:`~tcpls.tls.hs.tickets.SessionTicket`; design: Tickets).
    session_ticket: Any = None
    #: Send early data (0-RTT) when the ticket allows it (design: Early data).
    early_data: bool = False
    #: Key exchange groups in preference order (names such as ``"X25519MLKEM768"``,
    #: ``"x25519"``, ``"secp256r1"``); ``None``: the default (design: Key exchange groups).
    groups: Sequence[str | int] | None = None
    #: PEM certificate chain to present when the server asks for one (design: Client
    #: certificates), with ``keyfile``.
    certfile: str | None = None
    #: PEM private key of ``certfile``.
    keyfile: str | None = None
    #: Password of an encrypted ``keyfile``.
    key_password: bytes | None = None
    #: TCP Fast Open: the first flight rides in the SYN once the kernel has a cookie.
    fastopen: bool = False
    #: Seconds allowed for the TCP connect.
    connect_timeout: float = 10.0
    #: Join each address the server advertises (New Address) as soon as it is advertised,
    #: while tokens last: behind a load balancer, the servers advertise their own
    #: addresses (design: Token steering). Eight per session at most, and no address of
    #: the client's own machine or link unless the server is there (design: Addresses).
    join_advertised: bool = False
    #: Write a qlog file per session in this directory (JSON-SEQ; design: qlog); ``None``: no qlog.
    qlog_dir: str | None = None
    #: What qlog logs of records: ``"all"``, ``"sampled"`` (1 in ``qlog_sample``) or ``"none"``.
    qlog_records: Literal["all", "sampled", "none"] = "sampled"
    #: With ``qlog_records="sampled"``: 1 record in this many, in each direction.
    qlog_sample: int = 16
    #: Size limit of each qlog file in bytes: beyond it, records are no longer logged.
    qlog_max_bytes: int = 64 * 1024 * 1024
    #: TLS extension codepoints for TCPLS (design: Extension codepoints).
    codepoints: ExtensionCodepoints = DEFAULT_CODEPOINTS
    #: Protocol constants.
    tuning: SessionTuning = field(default_factory=SessionTuning)

    def check(self) -> None:
        """Raise :class:`ConfigurationError` for unusable values (files are read here)."""
        self.tuning.check()
        if self.cafile is not None:
            _check_ca_file(self.cafile)
        if self.cadata is not None:
            _check_ca_certificates(self.cadata, "cadata")
        parse_cipher_suites(self.cipher_suites)
        parse_groups(self.groups)
        self.load_credentials()
        if self.user_timeout is not None and self.user_timeout <= 0:
            raise ConfigurationError("user_timeout must be positive")
        _check_qlog(self.qlog_records, self.qlog_sample, self.qlog_max_bytes)

    def load_credentials(self) -> tuple[list[x509.Certificate], Any]:
        """The client certificate chain and key (empty and ``None`` when there is none)."""
        if not self.certfile and not self.keyfile:
            return [], None
        if not self.certfile or not self.keyfile:
            raise ConfigurationError("a client certificate needs both a certificate and a key")
        return _load_pair(self.certfile, self.keyfile, self.key_password)

    @property
    def effective_user_timeout(self) -> float | None:
        """The TCP user timeout in force: ``user_timeout`` or the tuning default."""
        return self.user_timeout if self.user_timeout is not None else self.tuning.user_timeout


@dataclass(frozen=True)
class Steering:
    """Where this server process stands among the processes of one deployment, so that
    joins reach the process that holds their session (design: Token steering).

    Every process of the deployment (each worker of each machine) has the same ``key``
    and its own ``(machine, worker)`` pair. :func:`tcpls.run_server` fills this in for
    its workers; set it yourself when you run the processes.
    """

    #: 16 bytes shared by every process of the deployment (keep it secret: it reads the
    #: server ID of any token).
    key: bytes
    #: This machine's ID, 0–65535 (one per address a load balancer sends to).
    machine: int = 0
    #: This worker's ID on its machine, 0–65535 (unique among the live workers).
    worker: int = 0
    #: Directory of the workers' hand-off sockets (``w<ID>.sock``, design: Join handoff);
    #: ``None``: a join for another worker of this machine is refused instead.
    handoff_dir: str | None = None

    def check(self) -> None:
        """Raise :class:`ConfigurationError` for unusable values."""
        if not isinstance(self.key, bytes) or len(self.key) != 16:
            raise ConfigurationError("the steering key must be 16 bytes")
        for name in ("machine", "worker"):
            if not 0 <= getattr(self, name) <= 0xFFFF:
                raise ConfigurationError(f"steering {name} ID must be between 0 and 65535")
        if self.handoff_dir is not None and not os.path.isdir(self.handoff_dir):
            raise ConfigurationError(f"hand-off directory {self.handoff_dir} does not exist")


@dataclass(frozen=True)
class ServerConfig:
    """Configuration of a tcpls server."""

    #: PEM file with the server certificate, then any intermediates.
    certfile: str | None = None
    #: PEM file with the private key of the certificate.
    keyfile: str | None = None
    #: Password of an encrypted private key.
    key_password: bytes | None = None
    #: NSS key log file; default: ``$SSLKEYLOGFILE`` when set.
    keylog_file: str | None = None
    #: Accept TCPLS; when false the server is a plain TLS 1.3 server.
    tcpls: bool = True
    #: Connections allowed per session, the initial one included (tokens issued; design: Tokens).
    max_connections: int = 4
    #: Extra addresses (``"ip:port"``) advertised to clients with New Address (design: Addresses).
    advertise: Sequence[str] = ()
    #: TLS 1.3 cipher suites in preference order.
    cipher_suites: Sequence[str | CipherSuite] | None = None
    #: ALPN protocols (design: ALPN).
    alpn_protocols: Sequence[str] | None = None
    #: Issue session tickets for PSK resumption.
    session_tickets: bool = True
    #: Tickets remembered at once (oldest forgotten first) and their lifetime, seconds.
    max_tickets: int = 4096
    ticket_lifetime: int = 7200
    #: Accept up to this many bytes of early data (0-RTT) per resumed session; 0: off.
    max_early_data: int = 0
    #: Key exchange groups in preference order; ``None``: the default.
    groups: Sequence[str | int] | None = None
    #: PEM file of the CAs client certificates must chain to; when set, every client
    #: must present a certificate (design: Client certificates).
    client_cafile: str | None = None
    #: TCP Fast Open on the listening socket.
    fastopen: bool = False
    #: Sessions open at once; a new one beyond is refused (``user_canceled``).
    max_sessions: int = 16384
    #: Accepted TCP connections whose ClientHello has not come yet; beyond it, the one
    #: that waited longest is reset to make room.
    max_pending_connections: int = 512
    #: Seconds an accepted connection has to send its ClientHello.
    hello_timeout: float = 5.0
    #: Estimated memory of all sessions (buffers and per-session costs), bytes; beyond
    #: it new sessions are refused and the largest sessions are ended first.
    memory_budget: int = 512 * 1024 * 1024
    #: TCP_USER_TIMEOUT in seconds for accepted connections; ``None``: tuning default.
    user_timeout: float | None = None
    #: Write a qlog file per session in this directory (JSON-SEQ; design: qlog); ``None``: no qlog.
    qlog_dir: str | None = None
    #: What qlog logs of records: ``"all"``, ``"sampled"`` (1 in ``qlog_sample``) or ``"none"``.
    qlog_records: Literal["all", "sampled", "none"] = "sampled"
    #: With ``qlog_records="sampled"``: 1 record in this many, in each direction.
    qlog_sample: int = 16
    #: Size limit of each qlog file in bytes: beyond it, records are no longer logged.
    qlog_max_bytes: int = 64 * 1024 * 1024
    #: Several server processes: the tokens name this one (design: Token steering).
    steering: Steering | None = None
    #: TLS extension codepoints for TCPLS (design: Extension codepoints).
    codepoints: ExtensionCodepoints = DEFAULT_CODEPOINTS
    #: Protocol constants.
    tuning: SessionTuning = field(default_factory=SessionTuning)

    def load_credentials(self) -> tuple[list[x509.Certificate], Any]:
        """Read and check the certificate chain and key; :class:`ConfigurationError` if bad."""
        if not self.certfile or not self.keyfile:
            raise ConfigurationError("a server needs a certificate file and a key file")
        return _load_pair(self.certfile, self.keyfile, self.key_password)

    def check(self) -> None:
        """Raise :class:`ConfigurationError` for unusable values."""
        self.tuning.check()
        self.load_credentials()
        parse_cipher_suites(self.cipher_suites)
        parse_groups(self.groups)
        if self.client_cafile is not None:
            _check_ca_file(self.client_cafile)
        if not 0 <= self.max_early_data <= 0xFFFFFFFF:
            raise ConfigurationError("max_early_data must be between 0 and 2^32 - 1")
        if not 1 <= self.ticket_lifetime <= 7 * 24 * 3600:
            raise ConfigurationError("ticket_lifetime must be between 1 s and 7 days")
        if not 1 <= self.max_connections <= 256:
            raise ConfigurationError("max_connections must be between 1 and 256")
        for name in ("max_sessions", "max_pending_connections", "memory_budget", "max_tickets"):
            if getattr(self, name) < 1:
                raise ConfigurationError(f"{name} must be at least 1")
        if self.hello_timeout <= 0:
            raise ConfigurationError("hello_timeout must be positive")
        _check_qlog(self.qlog_records, self.qlog_sample, self.qlog_max_bytes)
        if self.steering is not None:
            self.steering.check()

    @property
    def effective_user_timeout(self) -> float | None:
        """The TCP user timeout in force: ``user_timeout`` or the tuning default."""
        return self.user_timeout if self.user_timeout is not None else self.tuning.user_timeout
