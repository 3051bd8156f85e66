"""Early data (0-RTT) of one TLS connection: what may be sent, and what arrived (design:
Early data).

A client may seal early data after its ClientHello, under the early traffic keys, while
the ticket's ``max_early_data`` allows it and no HelloRetryRequest came. A server that
accepted early data keeps the early records it opens (at most the configured
``max_early_data`` bytes, beyond which the peer broke the rules: ``unexpected_message``)
until its owner takes them, which it does before any later record.
"""

from __future__ import annotations

from tcpls.errors import UnexpectedMessage
from tcpls.tls.handshake import Handshake
from tcpls.tls.hs.base import Epoch
from tcpls.tls.hs.client import ClientEngine
from tcpls.tls.hs.server import ServerEngine
from tcpls.tls.layer import RecordLayer
from tcpls.tls.record import ContentType

__all__ = ["EarlyData"]


class EarlyData:
    """The early data of one connection (see the module)."""

    __slots__ = ("_handshake", "_layer", "_records", "bytes", "pending")

    def __init__(self, layer: RecordLayer, handshake: Handshake) -> None:
        self._layer = layer
        self._handshake = handshake
        self._records: list[bytes] = []
        #: Server: bytes of early data received; client: bytes of early data sent.
        self.bytes = 0
        #: Server: whether early records wait to be taken.
        self.pending = False

    @property
    def room(self) -> int:
        """Client: bytes of early data that may still be sent now (0: none, or too late)."""
        engine = self._handshake.engine
        if (
            not isinstance(engine, ClientEngine)
            or engine.complete
            or not engine.early_data_offered
            or Epoch.EARLY not in self._layer.write
        ):
            return 0
        return max(engine.max_early_data - self.bytes, 0)

    @property
    def tcpls(self) -> bool:
        """Client: whether early data carries TCPLS frames (the resumed session had TCPLS)."""
        engine = self._handshake.engine
        return isinstance(engine, ClientEngine) and engine.early_data_tcpls

    def seal(self, length: int) -> None:
        """Client: seal the first ``length`` bytes of the staging buffer as one record of
        early data (sequence numbers from 0 under the early key)."""
        if not 0 < length <= self.room:
            raise RuntimeError("no room for this much early data")
        if not self.bytes:
            # middlebox compatibility: ChangeCipherSpec right after the ClientHello when
            # offering early data (RFC 8446 §D.4)
            self._layer.send_ccs()
        self.bytes += length
        self._layer.seal(length, ContentType.application_data, Epoch.EARLY)

    def receive(self, content: memoryview) -> None:
        """Server: keep one early record's content (the peer may not exceed the limit)."""
        engine = self._handshake.engine
        limit = engine.max_early_data if isinstance(engine, ServerEngine) else 0
        self.bytes += len(content)
        if self.bytes > limit:
            raise UnexpectedMessage(f"more early data than the {limit} bytes the server accepts")
        self._records.append(bytes(content))
        self.pending = True

    def take(self) -> list[bytes]:
        """Server: the content of the early records received, in order (once)."""
        records, self._records = self._records, []
        self.pending = False
        return records
