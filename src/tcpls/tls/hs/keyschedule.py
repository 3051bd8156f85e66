"""The TLS 1.3 key schedule and transcript hash (RFC 8446 §7.1, §4.4.1).

:class:`Transcript` hashes the handshake messages in order. A client does not know the
hash until the ServerHello names the cipher suite, so the transcript keeps the messages
until :meth:`Transcript.start` is called, then hashes as it goes. After a
HelloRetryRequest the first ClientHello is replaced by a ``message_hash`` message.

:class:`KeySchedule` walks the three secrets (early, handshake, master) and derives every
traffic secret from them with HKDF (``HKDF-Expand-Label`` is shared with the record layer).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Protocol

from tcpls.tls.hs.codec import message_hash
from tcpls.tls.record import CipherSuite, hkdf_expand_label, suite_hash

__all__ = ["KeySchedule", "Transcript", "finished_verify_data", "hash_of", "ticket_psk"]

_HASH_NAMES = {32: "sha256", 48: "sha384"}


class _Hash(Protocol):
    """A running hash of :mod:`hashlib`."""

    def update(self, data: bytes, /) -> None: ...
    def digest(self) -> bytes: ...
    def copy(self) -> _Hash: ...


def _hash_name(suite: int) -> str:
    return _HASH_NAMES[suite_hash(suite).digest_size]


class Transcript:
    """The running hash of the handshake messages."""

    __slots__ = ("_hash", "_pending")

    def __init__(self) -> None:
        self._pending: list[bytes] = []
        self._hash: _Hash | None = None

    def start(self, suite: int) -> None:
        """Hash with the hash of ``suite`` from now on (the messages so far included)."""
        self._hash = hashlib.new(_hash_name(suite))
        for message in self._pending:
            self._hash.update(message)
        self._pending = []

    @property
    def started(self) -> bool:
        """Whether the hash algorithm is known."""
        return self._hash is not None

    def update(self, message: bytes) -> None:
        """Add one handshake message."""
        if self._hash is None:
            self._pending.append(message)
        else:
            self._hash.update(message)

    def digest(self) -> bytes:
        """The hash of the messages so far."""
        assert self._hash is not None, "transcript hash before the cipher suite is known"
        return self._hash.copy().digest()

    def copy_hash(self) -> _Hash:
        """A copy of the running hash, to hash a message that is not in the transcript."""
        assert self._hash is not None
        return self._hash.copy()

    def restart_after_retry(self, suite: int) -> None:
        """Replace ClientHello1 (all that was added so far) by its ``message_hash``."""
        self.start(suite)
        first = self.digest()
        self._hash = hashlib.new(_hash_name(suite))
        self._hash.update(message_hash(first))


def hash_of(suite: int, data: bytes) -> bytes:
    """The hash of ``data`` with the hash of ``suite``."""
    return hashlib.new(_hash_name(suite), data).digest()


def _extract(name: str, salt: bytes, ikm: bytes) -> bytes:
    return hmac.digest(salt, ikm, name)


def finished_verify_data(suite: int, base_key: bytes, transcript_hash: bytes) -> bytes:
    """The verify_data of a Finished message (RFC 8446 §4.4.4)."""
    algorithm = suite_hash(suite)
    finished_key = hkdf_expand_label(algorithm, base_key, b"finished", b"", algorithm.digest_size)
    return hmac.digest(finished_key, transcript_hash, _hash_name(suite))


def ticket_psk(suite: int, resumption_master_secret: bytes, nonce: bytes) -> bytes:
    """The PSK a ticket stands for (RFC 8446 §4.6.1)."""
    algorithm = suite_hash(suite)
    return hkdf_expand_label(
        algorithm, resumption_master_secret, b"resumption", nonce, algorithm.digest_size
    )


class KeySchedule:
    """The secrets of one handshake, stage by stage (RFC 8446 §7.1)."""

    __slots__ = ("_algorithm", "_name", "secret", "stage", "suite")

    def __init__(self, suite: int, psk: bytes | None = None) -> None:
        self.suite = CipherSuite(suite)
        self._algorithm = suite_hash(suite)
        self._name = _hash_name(suite)
        size = self._algorithm.digest_size
        #: The current stage secret: early, then handshake, then master.
        self.secret = _extract(self._name, bytes(size), psk if psk is not None else bytes(size))
        self.stage = "early"

    @property
    def hash_size(self) -> int:
        """Size of the suite's hash output."""
        return self._algorithm.digest_size

    def empty_hash(self) -> bytes:
        """Hash of the empty string."""
        return hashlib.new(self._name).digest()

    def derive(self, label: bytes, transcript_hash: bytes) -> bytes:
        """Derive-Secret(current secret, label, messages) given the messages' hash."""
        return hkdf_expand_label(
            self._algorithm, self.secret, label, transcript_hash, self._algorithm.digest_size
        )

    def _next(self, ikm: bytes, stage: str) -> None:
        derived = self.derive(b"derived", self.empty_hash())
        self.secret = _extract(self._name, derived, ikm)
        self.stage = stage

    def binder_key(self, *, external: bool = False) -> bytes:
        """The PSK binder key (early stage)."""
        assert self.stage == "early"
        return self.derive(b"ext binder" if external else b"res binder", self.empty_hash())

    def handshake(self, shared_secret: bytes) -> None:
        """Early → handshake secret, mixing in the (EC)DHE or hybrid shared secret."""
        assert self.stage == "early"
        self._next(shared_secret, "handshake")

    def master(self) -> None:
        """Handshake → master secret."""
        assert self.stage == "handshake"
        self._next(bytes(self.hash_size), "master")

    def traffic_secrets(self, transcript_hash: bytes) -> tuple[bytes, bytes]:
        """(client, server) traffic secrets of the current stage (handshake or master)."""
        if self.stage == "handshake":
            labels = (b"c hs traffic", b"s hs traffic")
        else:
            assert self.stage == "master"
            labels = (b"c ap traffic", b"s ap traffic")
        return self.derive(labels[0], transcript_hash), self.derive(labels[1], transcript_hash)

    def finished(self, base_key: bytes, transcript_hash: bytes) -> bytes:
        """verify_data of a Finished keyed by a handshake (or binder) secret."""
        return finished_verify_data(self.suite, base_key, transcript_hash)
