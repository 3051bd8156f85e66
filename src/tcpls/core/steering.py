"""Join tokens that name the server process which issued them (design: Token steering).

A server that runs as several processes (workers on one machine, machines behind a
load balancer) must bring each join to the process that holds its session, whatever
socket the kernel or the balancer gave its TCP connection to. With a
:class:`~tcpls.config.Steering` configured, the tokens a process issues carry its
*server ID* (machine and worker), encrypted under a key that all the processes of
the deployment share:

* bytes 0–15: one AES-128 block over ``machine (2) ‖ worker (2) ‖ check (4 zero
  bytes) ‖ nonce (8 random bytes)``;
* bytes 16–31: 16 random bytes.

Without the key a token is 32 bytes that look random, and two tokens of the same
process are as unrelated as two random strings (the block cipher's input differs by
its random nonce), so tokens stay uncorrelatable on the wire. With the key, any
process reads the server ID of any token in one block decryption; the check bytes
tell a token of this deployment from a forged or foreign one (a random token passes
with probability 2^-32). The token still has to be one its issuer holds: the server ID
only says where to look.

Sans-I/O: :class:`TokenSteering` mints tokens and reads server IDs; where a join goes
is decided by :meth:`tcpls.core.endpoint.ServerEndpoint.route_join`.
"""

from __future__ import annotations

import secrets
from typing import NamedTuple

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = ["STEERING_KEY_SIZE", "ServerID", "TokenSteering"]

#: Bytes of the key the processes of a deployment share.
STEERING_KEY_SIZE = 16
_CHECK = bytes(4)


class ServerID(NamedTuple):
    """Which server process issued a token."""

    #: The machine (one per address behind a load balancer), 0–65535.
    machine: int
    #: The worker process on that machine, 0–65535.
    worker: int


class TokenSteering:
    """Mints the tokens of one server process and reads the server ID of any token."""

    __slots__ = ("_decrypt", "_encrypt", "server_id")

    def __init__(self, key: bytes, server_id: ServerID) -> None:
        if len(key) != STEERING_KEY_SIZE:
            raise ValueError(f"the steering key is {STEERING_KEY_SIZE} bytes")
        for part in server_id:
            if not 0 <= part <= 0xFFFF:
                raise ValueError("machine and worker IDs run from 0 to 65535")
        #: The server ID this process writes into its tokens.
        self.server_id = server_id
        cipher = Cipher(algorithms.AES(key), modes.ECB())  # one block: a pseudorandom permutation
        self._encrypt = cipher.encryptor()
        self._decrypt = cipher.decryptor()

    def mint(self) -> bytes:
        """A fresh 32-byte token carrying this process's server ID."""
        machine, worker = self.server_id
        ids = machine.to_bytes(2, "big") + worker.to_bytes(2, "big")
        block = ids + _CHECK + secrets.token_bytes(8)
        return self._encrypt.update(block) + secrets.token_bytes(16)

    def owner(self, token: bytes) -> ServerID | None:
        """The server ID ``token`` carries; ``None`` when it is not a token of this
        deployment (wrong length, another key, forged)."""
        if len(token) != 32:
            return None
        block = self._decrypt.update(token[:16])
        if block[4:8] != _CHECK:
            return None
        return ServerID(int.from_bytes(block[0:2], "big"), int.from_bytes(block[2:4], "big"))

    def elsewhere(self, label: bytes) -> ServerID | None:
        """The other process of this deployment (on this machine or another) that minted
        ``label``, a token or a ticket label; ``None`` when this process did or when it
        is not one of this deployment's."""
        owner = self.owner(label)
        return None if owner is None or owner == self.server_id else owner
