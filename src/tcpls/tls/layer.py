"""The record layer of one TLS connection: the keys of each direction and the records it writes.

A :class:`RecordLayer` belongs to one :class:`~tcpls.tls.connection.TLSConnection` and
holds no reference to it or to any connection state. It owns that connection's
:class:`~tcpls.tls.record.RecordReader` and :class:`~tcpls.tls.record.RecordWriter`, the
protection incoming records are opened with, one write protection per epoch, and the
writing of records: handshake flights, ChangeCipherSpec (middlebox compatibility), alerts
(and which ones a failing connection sends), KeyUpdate, plain TLS application data.
:func:`read_alert` says what an alert from the peer means. Deciding what an incoming
record is, opening it, and sealing the records a TCPLS session builds in place (the path
of every record) are the connection's, on :attr:`RecordLayer.read` and
:attr:`RecordLayer.write`.

The :class:`~tcpls.tls.hs.base.HandshakeEngine` installs keys through a callback *before* it
returns the bytes of the previous epoch, so the layer keeps a write protection per epoch and
:meth:`RecordLayer.flush` writes the engine's output epoch by epoch, each with its own keys.
The read protection is replaced the moment the engine installs a new read key, so the next
record is opened with it.
"""

from __future__ import annotations

import logging

from tcpls.errors import (
    AlertDescription,
    BadRecordMac,
    ConnectionClosedError,
    DecodeError,
    HandshakeCanceled,
    PeerAlert,
    ProtocolError,
    TCPLSError,
    UnexpectedMessage,
)
from tcpls.tls.events import CloseNotifyReceived, ConnectionFailed
from tcpls.tls.hs.base import Epoch
from tcpls.tls.hs.codec import HandshakeType
from tcpls.tls.record import (
    HEADER_SIZE,
    LEGACY_VERSION,
    MAX_PLAINTEXT,
    TAG_SIZE,
    CipherSuite,
    ContentType,
    RecordProtection,
    RecordReader,
    RecordWriter,
    TrafficKeys,
    plaintext_record,
    scratch,
)

__all__ = [
    "ALERT_FATAL",
    "ALERT_WARNING",
    "CCS_RECORD",
    "MAX_SKIPPED_EARLY_DATA",
    "RecordLayer",
    "read_alert",
]

logger = logging.getLogger(__name__)

#: The one ChangeCipherSpec record of middlebox compatibility mode (RFC 8446 §D.4).
CCS_RECORD = b"\x14\x03\x03\x00\x01\x01"
#: AlertLevel of a warning alert (RFC 8446 §6; close_notify and user_canceled are sent so).
ALERT_WARNING = 1
#: AlertLevel of a fatal alert: the connection ends (RFC 8446 §6).
ALERT_FATAL = 2
#: Bytes of early data records a server that declines early data skips (RFC 8446 §4.2.10).
MAX_SKIPPED_EARLY_DATA = 64 * 1024


class RecordLayer:
    """Keys, record buffers and record writing of one TLS connection (see the module)."""

    __slots__ = (
        "_first_record_version",
        "_updated_write",
        "alert_sent",
        "ccs_sent",
        "cipher_suite",
        "early_data_skip",
        "is_client",
        "read",
        "read_epoch",
        "reader",
        "write",
        "write_epoch",
        "writer",
    )

    def __init__(self, is_client: bool) -> None:
        self.is_client = is_client
        #: One record at a time until the handshake is done (a stranger's connection holds
        #: little); the connection raises ``max_capacity`` when it is established.
        self.reader = RecordReader(0)
        self.writer = RecordWriter()
        # The write protection our last KeyUpdate installed (see key_update_unused).
        self._updated_write: RecordProtection | None = None
        #: The protection incoming records are opened with (``None``: plaintext).
        self.read: RecordProtection | None = None
        self.read_epoch = Epoch.INITIAL
        #: The write protection of each epoch that has keys.
        self.write: dict[Epoch, RecordProtection] = {}
        #: The epoch alerts are written in: the newest one whose keys the peer has.
        self.write_epoch = Epoch.INITIAL
        #: The suite of the keys installed last.
        self.cipher_suite: CipherSuite | None = None
        self.ccs_sent = False
        #: Whether the alert of a failure was written (only the first failure has one).
        self.alert_sent = False
        #: Server that declined early data: bytes of early data records it may still skip.
        self.early_data_skip = 0
        # Only a client's initial ClientHello may say 0x0301; every other record says
        # 0x0303, a server's ServerHello included (RFC 8446 §5.1).
        self._first_record_version = 0x0301 if self.is_client else LEGACY_VERSION

    @property
    def memory(self) -> int:
        """Bytes held by the record buffers and the AEAD contexts now (given back
        together after a second without traffic: :meth:`trim`)."""
        total = self.reader.capacity + self.writer.capacity
        if not total:
            return 0  # idle: the contexts went with the buffers (records need both)
        read = self.read
        if read is not None:
            total += read.memory
        for protection in self.write.values():
            total += protection.memory
        return total

    def trim(self) -> None:
        """Give back the record buffers while nothing is pending, and the AEAD contexts
        (built again by the next record; design: Idle memory)."""
        self.reader.trim()
        self.writer.trim()
        if self.read is not None:
            self.read.release()
        for protection in self.write.values():
            protection.release()

    def drop_handshake_keys(self) -> None:
        """The handshake is over: only the application keys write from now on."""
        write = self.write
        for epoch in [e for e in write if e is not Epoch.ONE_RTT]:
            del write[epoch]

    # -- keys ------------------------------------------------------------------

    def install_secret(
        self, is_write: bool, epoch: Epoch, suite: CipherSuite, secret: bytes
    ) -> None:
        """Protect one direction of ``epoch`` with ``secret`` (the engine's secret handler)."""
        protection = RecordProtection(TrafficKeys(suite, secret))
        self.cipher_suite = suite
        if is_write:
            self.write[epoch] = protection
        else:
            self.read = protection
            self.read_epoch = epoch

    def install_join_keys(
        self, read_keys: TrafficKeys, write_keys: TrafficKeys, connection_id: int
    ) -> None:
        """Use a session's application keys with this connection's nonce (design: Joins)."""
        self.read = RecordProtection(read_keys, connection_id)
        self.read_epoch = Epoch.ONE_RTT
        self.write[Epoch.ONE_RTT] = RecordProtection(write_keys, connection_id)
        self.write_epoch = Epoch.ONE_RTT
        self.cipher_suite = write_keys.cipher_suite

    def update_read_keys(self) -> None:
        """The peer sent KeyUpdate: open its next records with the next generation of keys."""
        assert self.read is not None
        self.read = RecordProtection(self.read.keys.next_generation())

    # -- writing records -------------------------------------------------------

    def mark(self) -> tuple[int, Epoch]:
        """Where the output is now, for :meth:`rewind`."""
        return len(self.writer), self.write_epoch

    def rewind(self, mark: tuple[int, Epoch]) -> None:
        """Forget the records written since :meth:`mark` returned ``mark``."""
        self.writer.truncate(mark[0])
        self.write_epoch = mark[1]

    def seal(self, length: int, content_type: int, epoch: Epoch = Epoch.ONE_RTT) -> None:
        """Seal the first ``length`` bytes of the staging buffer as one record of ``epoch``."""
        protection = self.write[epoch]
        out = self.writer.reserve(length + 1 + TAG_SIZE + HEADER_SIZE)
        self.writer.commit(protection.seal_into(scratch.staging, length, content_type, out))

    def send_protected(self, content_type: int, payload: bytes, epoch: Epoch) -> None:
        """Write ``payload`` in protected records of ``epoch`` (at least one record)."""
        staging = scratch.staging
        for i in range(0, max(len(payload), 1), MAX_PLAINTEXT):
            chunk = payload[i : i + MAX_PLAINTEXT]
            staging[: len(chunk)] = chunk
            self.seal(len(chunk), content_type, epoch)

    def send_application(self, data: bytes | bytearray | memoryview, size: int) -> None:
        """Seal ``data`` in application records of at most ``size`` bytes (none if empty)."""
        mv = memoryview(data)
        staging = scratch.staging
        for i in range(0, len(mv), size):
            chunk = mv[i : i + size]
            n = len(chunk)
            staging[:n] = chunk
            self.seal(n, ContentType.application_data)

    def send_plaintext(self, content_type: int, payload: bytes) -> None:
        """Write ``payload`` in unprotected records (legacy version 0x0303)."""
        self.writer.append(plaintext_record(content_type, payload, LEGACY_VERSION))

    def send_initial(self, message: bytes) -> None:
        """Write handshake messages of the initial epoch; the first record says 0x0301."""
        self.writer.append(
            plaintext_record(ContentType.handshake, message, self._first_record_version)
        )
        self._first_record_version = LEGACY_VERSION

    def flush(self, outputs: list[tuple[Epoch, bytes]], *, echo_ccs: bool = False) -> None:
        """Write the handshake engine's output, each epoch with its own keys.

        A client sends ChangeCipherSpec before its first protected record; a server
        does so right after its ServerHello when ``echo_ccs`` (the client is in
        middlebox compatibility mode).
        """
        for epoch, data in outputs:
            if epoch is Epoch.INITIAL:
                self.send_initial(data)
                if echo_ccs and not self.is_client:
                    self.send_ccs()
            else:
                if self.is_client:
                    self.send_ccs()
                self.send_protected(ContentType.handshake, data, epoch)
        # Alerts go out in the newest epoch the peer surely reads: not the early one,
        # which a server may decline.
        epochs = [e for e in self.write if e is not Epoch.EARLY]
        if epochs:
            self.write_epoch = max(epochs)

    def send_ccs(self) -> None:
        """Write the ChangeCipherSpec record, once."""
        if not self.ccs_sent:
            self.ccs_sent = True
            self.writer.append(CCS_RECORD)

    def send_alert(self, description: int, level: int = ALERT_FATAL) -> None:
        """Write an alert, protected if the current write epoch has keys."""
        payload = bytes((level, description))
        if self.write.get(self.write_epoch) is None:
            self.send_plaintext(ContentType.alert, payload)
        else:
            self.send_protected(ContentType.alert, payload, self.write_epoch)

    def send_cancel(self) -> None:
        """Write ``user_canceled`` then ``close_notify``: we end the handshake (RFC 8446 §6.1)."""
        self.send_alert(AlertDescription.user_canceled, ALERT_WARNING)
        self.send_alert(AlertDescription.close_notify, ALERT_WARNING)

    def send_failure(self, error: TCPLSError, send_alert: bool = True) -> None:
        """Write what tells the peer that the connection fails with ``error``.

        A canceled handshake is canceled; a protocol error we detected gets its fatal
        alert (when ``send_alert``, and only the first one); other errors get nothing.
        """
        if isinstance(error, HandshakeCanceled):
            self.send_cancel()
        elif send_alert and isinstance(error, ProtocolError) and not self.alert_sent:
            self.alert_sent = True
            try:
                self.send_alert(error.alert)
            except Exception:  # pragma: no cover - best effort only
                logger.debug("could not send alert", exc_info=True)

    def send_key_update(self, request: bool, answer: bool = False) -> None:
        """Write KeyUpdate, then seal with the next generation of keys (RFC 8446 §4.6.3).
        ``answer``: it answers the peer's request (see :attr:`key_update_unused`)."""
        self.send_protected(
            ContentType.handshake,
            bytes((HandshakeType.key_update, 0, 0, 1, 1 if request else 0)),
            Epoch.ONE_RTT,
        )
        current = self.write[Epoch.ONE_RTT]
        updated = RecordProtection(current.keys.next_generation(), current.connection_id)
        self.write[Epoch.ONE_RTT] = updated
        self._updated_write = updated if answer else None

    @property
    def key_update_unused(self) -> bool:
        """Whether our last KeyUpdate answered a request and is still the last record we
        sealed: it then stands before our next application data, as the answer to any
        request received since. (A KeyUpdate of our own initiative answers nothing: a
        request that crosses it gets its answer.)"""
        protection = self._updated_write
        return (
            protection is not None
            and protection is self.write.get(Epoch.ONE_RTT)
            and (protection.sequence == 0)
        )

    # -- reading records -------------------------------------------------------

    def skip_unreadable(self, size: int) -> None:
        """An application data record before any read key: early data a server that sent
        a HelloRetryRequest skips (RFC 8446 §4.2.10), up to :data:`MAX_SKIPPED_EARLY_DATA`;
        anything else is an ``unexpected_message``."""
        if not self.early_data_skip:
            raise UnexpectedMessage("application data before the handshake")
        self.early_data_skip -= size
        if self.early_data_skip <= 0:
            self.early_data_skip = 0
            raise BadRecordMac("more early data than a server that declines it skips")

    def skip_early_data(
        self,
        protection: RecordProtection,
        header: memoryview,
        body: memoryview,
        plain: memoryview,
    ) -> bool:
        """Server, early data declined: whether this record is early data to skip.

        A record that fails to open with the handshake key is early data, skipped
        up to :data:`MAX_SKIPPED_EARLY_DATA` bytes; the first one that opens ends
        the skipping (and is opened again by the caller, with the same sequence).
        """
        sequence = protection.sequence
        try:
            protection.open_into(header, body, plain)
        except BadRecordMac:
            self.early_data_skip -= len(body)
            if self.early_data_skip <= 0:
                self.early_data_skip = 0
                raise BadRecordMac(
                    "more early data than a server that declines it skips"
                ) from None
            return True
        protection.sequence = sequence
        self.early_data_skip = 0
        return False


def read_alert(
    body: memoryview, *, established: bool, is_client: bool
) -> CloseNotifyReceived | ConnectionFailed | None:
    """What an alert from the peer means: the end of its data, a failure, or nothing.

    ``close_notify`` before the handshake completed is the peer canceling it
    (raised as :class:`ConnectionClosedError`); ``user_canceled`` as a warning
    announces that ``close_notify`` (``None``); any other alert is fatal.
    """
    if not body:
        # a record of the alert type must hold one whole alert: an empty one is not a
        # malformed alert but a record that should not exist (RFC 8446 §5.1)
        raise UnexpectedMessage("empty alert record")
    if len(body) != 2:
        raise DecodeError("malformed alert")
    level, description = body[0], body[1]
    if description == AlertDescription.close_notify:
        if not established:
            raise ConnectionClosedError(
                "the server canceled the handshake (it is full or shutting down)"
                if is_client
                else "the client canceled the handshake"
            )
        return CloseNotifyReceived()
    if description == AlertDescription.user_canceled and level == ALERT_WARNING:
        return None  # followed by close_notify
    return ConnectionFailed(PeerAlert(description))
