"""Key exchange groups: ECDHE over X25519, X448 and the NIST curves, and the X25519MLKEM768
hybrid (design: Key exchange groups).

A client makes a :class:`KeyShare` per group it offers a share for and later
:meth:`KeyShare.exchange` s it with the server's share. A server answers a client's
share with :func:`respond`, which returns its own share and the shared secret at once (for
the hybrid, the server *encapsulates* to the client's ML-KEM key instead of sending a key).

The hybrid's shares and secret are the concatenation of the ML-KEM-768 part and the
X25519 part, in that order (draft-ietf-tls-ecdhe-mlkem): client share = encapsulation key
(1184 bytes) ‖ X25519 key (32), server share = ciphertext (1088) ‖ X25519 key (32),
secret = ML-KEM secret (32) ‖ X25519 secret (32).

A share that does not decode (wrong size, a point not on the curve, an X25519 result of
all zeros) is an ``illegal_parameter``.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import IntEnum

from cryptography.hazmat.primitives.asymmetric import ec, mlkem, x448, x25519

from tcpls.errors import ConfigurationError, IllegalParameter

__all__ = [
    "DEFAULT_GROUPS",
    "GROUP_NAMES",
    "Group",
    "KeyShare",
    "group_name",
    "parse_groups",
    "respond",
]


class Group(IntEnum):
    """Named groups (RFC 8446 §4.2.7, draft-ietf-tls-ecdhe-mlkem)."""

    secp256r1 = 0x0017
    secp384r1 = 0x0018
    secp521r1 = 0x0019
    x25519 = 0x001D
    x448 = 0x001E
    X25519MLKEM768 = 0x11EC


#: Offered and preferred in this order; the client sends shares for the first two.
DEFAULT_GROUPS: tuple[Group, ...] = (
    Group.X25519MLKEM768,
    Group.x25519,
    Group.secp256r1,
    Group.secp384r1,
)

#: Accepted spellings of the group names (IANA, OpenSSL and curve names).
GROUP_NAMES: dict[str, Group] = {
    "x25519mlkem768": Group.X25519MLKEM768,
    "x25519": Group.x25519,
    "x448": Group.x448,
    "secp256r1": Group.secp256r1,
    "prime256v1": Group.secp256r1,
    "p-256": Group.secp256r1,
    "secp384r1": Group.secp384r1,
    "p-384": Group.secp384r1,
    "secp521r1": Group.secp521r1,
    "p-521": Group.secp521r1,
}

_CURVES: dict[int, type[ec.EllipticCurve]] = {
    Group.secp256r1: ec.SECP256R1,
    Group.secp384r1: ec.SECP384R1,
    Group.secp521r1: ec.SECP521R1,
}
_MLKEM_KEY = 1184
_MLKEM_CIPHERTEXT = 1088


def group_name(group: int) -> str:
    """The name of a group (``0x....`` for one we do not know)."""
    try:
        return Group(group).name
    except ValueError:
        return f"0x{group:04x}"


def parse_groups(names: Sequence[str | int] | str | None) -> tuple[Group, ...]:
    """Groups from names (``"X25519MLKEM768,x25519"`` or a list); ``None`` is the default."""
    if names is None:
        return DEFAULT_GROUPS
    if isinstance(names, str):
        names = [n for n in names.replace(":", ",").split(",") if n.strip()]
    groups: list[Group] = []
    for name in names:
        if isinstance(name, int):
            group = Group(name)
        else:
            try:
                group = GROUP_NAMES[name.strip().lower()]
            except KeyError:
                known = ", ".join(g.name for g in Group)
                raise ConfigurationError(f"unknown group {name!r} (known: {known})") from None
        if group not in groups:
            groups.append(group)
    if not groups:
        raise ConfigurationError("the list of key exchange groups is empty")
    return tuple(groups)


def _x25519(private: x25519.X25519PrivateKey, peer: bytes) -> bytes:
    if len(peer) != 32:
        raise IllegalParameter("an X25519 key share is not 32 bytes")
    try:
        secret = private.exchange(x25519.X25519PublicKey.from_public_bytes(peer))
    except ValueError:  # cryptography refuses an all-zero result itself
        secret = b""
    if not any(secret):  # a small-order point (RFC 8446 §7.4.2)
        raise IllegalParameter("the X25519 key share gives an all-zero secret")
    return secret


def _x448(private: x448.X448PrivateKey, peer: bytes) -> bytes:
    if len(peer) != 56:
        raise IllegalParameter("an X448 key share is not 56 bytes")
    try:
        secret = private.exchange(x448.X448PublicKey.from_public_bytes(peer))
    except ValueError:
        secret = b""
    if not any(secret):
        raise IllegalParameter("the X448 key share gives an all-zero secret")
    return secret


def _ecdh(group: int, private: ec.EllipticCurvePrivateKey, peer: bytes) -> bytes:
    if not peer or peer[0] != 4:
        raise IllegalParameter("an EC key share is not an uncompressed point")
    try:
        public = ec.EllipticCurvePublicKey.from_encoded_point(_CURVES[group](), peer)
    except ValueError:
        raise IllegalParameter("an EC key share is not a point on its curve") from None
    try:
        return private.exchange(ec.ECDH(), public)
    except ValueError:
        raise IllegalParameter("an EC key share does not give a shared secret") from None


def _ec_public(private: ec.EllipticCurvePrivateKey) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return private.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


class KeyShare:
    """A client's key share for one group: the private part and the bytes to send."""

    __slots__ = ("_ec", "_kem", "_x448", "_x25519", "group", "public")

    def __init__(
        self,
        group: int,
        *,
        x25519_private: x25519.X25519PrivateKey | None = None,
        ec_private: ec.EllipticCurvePrivateKey | None = None,
    ) -> None:
        """A fresh share for ``group``; tests may give the private key (RFC 8448 traces)."""
        self.group = Group(group)
        self._x25519: x25519.X25519PrivateKey | None = None
        self._x448: x448.X448PrivateKey | None = None
        self._ec: ec.EllipticCurvePrivateKey | None = None
        self._kem: mlkem.MLKEM768PrivateKey | None = None
        if self.group == Group.x25519:
            self._x25519 = x25519_private or x25519.X25519PrivateKey.generate()
            self.public = self._x25519.public_key().public_bytes_raw()
        elif self.group == Group.x448:
            self._x448 = x448.X448PrivateKey.generate()
            self.public = self._x448.public_key().public_bytes_raw()
        elif self.group == Group.X25519MLKEM768:
            self._kem = mlkem.MLKEM768PrivateKey.generate()
            self._x25519 = x25519_private or x25519.X25519PrivateKey.generate()
            self.public = (
                self._kem.public_key().public_bytes_raw()
                + self._x25519.public_key().public_bytes_raw()
            )
        else:
            self._ec = ec_private or ec.generate_private_key(_CURVES[self.group]())
            self.public = _ec_public(self._ec)

    def exchange(self, server_share: bytes) -> bytes:
        """The shared secret, given the server's share for this group."""
        if self._kem is not None:
            assert self._x25519 is not None
            if len(server_share) != _MLKEM_CIPHERTEXT + 32:
                raise IllegalParameter("an X25519MLKEM768 server share has the wrong size")
            try:
                kem_secret = self._kem.decapsulate(server_share[:_MLKEM_CIPHERTEXT])
            except ValueError:
                raise IllegalParameter("the ML-KEM ciphertext does not decode") from None
            return kem_secret + _x25519(self._x25519, server_share[_MLKEM_CIPHERTEXT:])
        if self._x25519 is not None:
            return _x25519(self._x25519, server_share)
        if self._x448 is not None:
            return _x448(self._x448, server_share)
        assert self._ec is not None
        return _ecdh(self.group, self._ec, server_share)


def respond(group: int, client_share: bytes, ours: KeyShare | None = None) -> tuple[bytes, bytes]:
    """Server: (our share, shared secret) answering the client's share for ``group``.

    ``ours`` is the server's share for an ECDHE group (made fresh when not given).
    """
    if group == Group.X25519MLKEM768:
        if len(client_share) != _MLKEM_KEY + 32:
            raise IllegalParameter("an X25519MLKEM768 client share has the wrong size")
        try:
            encapsulation_key = mlkem.MLKEM768PublicKey.from_public_bytes(
                client_share[:_MLKEM_KEY]
            )
            kem_secret, ciphertext = encapsulation_key.encapsulate()
        except ValueError:
            raise IllegalParameter("the ML-KEM encapsulation key does not decode") from None
        classic = x25519.X25519PrivateKey.generate()
        secret = kem_secret + _x25519(classic, client_share[_MLKEM_KEY:])
        return ciphertext + classic.public_key().public_bytes_raw(), secret
    share = ours if ours is not None else KeyShare(group)
    return share.public, share.exchange(client_share)
