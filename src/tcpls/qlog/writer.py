"""One qlog file: the JSON-SEQ serialization of the qlog main schema, bounded in memory and size.

A file is a sequence of records, each the byte RS (0x1E), one JSON text and a line feed
(RFC 7464). The first record is the header: ``qlog_format`` ``"JSON-SEQ"``,
``qlog_version`` and one ``trace`` with its ``vantage_point`` (``client`` or ``server``)
and ``common_fields`` (``time_format`` ``"relative"``, ``reference_time``: the wall-clock
time of the start, in milliseconds since the epoch). Each of the following records is
one event: ``time`` (milliseconds since the start), ``name`` and ``data``.

Bounds (design: qlog):

* memory: events wait in a buffer of at most ``flush_bytes`` (64 KiB), written out when
  it is full, when an event comes more than ``flush_interval`` (1 s) after the last
  write, and when the file is closed;
* size: past ``max_bytes`` (64 MiB by default) the events of records, frames and ACKs
  (``bulk``) are dropped, and the file says so once (``tcpls:qlog_limit_reached``); the
  other events go on for another :data:`RESERVE_BYTES`, after which nothing is written
  but, at the end, how many events were dropped (``tcpls:qlog_dropped``).

A file that cannot be created or written is given up with one warning: qlog never ends
a session.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import weakref
from typing import IO, Any

__all__ = [
    "DEFAULT_MAX_BYTES",
    "QLOG_FORMAT",
    "QLOG_VERSION",
    "RESERVE_BYTES",
    "RS",
    "QlogWriter",
]

logger = logging.getLogger("tcpls.qlog")

#: The record separator that starts every JSON-SEQ record (RFC 7464).
RS = "\x1e"
#: ``qlog_format`` of the header: the sequential (streamed) serialization.
QLOG_FORMAT = "JSON-SEQ"
#: ``qlog_version`` of the header (draft-ietf-quic-qlog-main-schema).
QLOG_VERSION = "0.4"
#: The default size limit of a qlog file, in bytes.
DEFAULT_MAX_BYTES = 64 << 20
#: What life-cycle events may still add past the limit, in bytes.
RESERVE_BYTES = 1 << 20

_open_writers: weakref.WeakSet[QlogWriter] = weakref.WeakSet()


class QlogWriter:
    """Writes one qlog file (see the module docstring).

    ``start`` is the monotonic time (seconds, the clock the events' ``now`` is read from)
    of the file's time 0; ``reference_time`` the wall-clock time (seconds since the epoch)
    of the same instant.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        vantage_point: str,
        start: float,
        reference_time: float,
        title: str = "tcpls session",
        max_bytes: int = DEFAULT_MAX_BYTES,
        flush_bytes: int = 64 << 10,
        flush_interval: float = 1.0,
    ) -> None:
        #: Where the file is.
        self.path = os.fspath(path)
        self.start = start
        self.max_bytes = max_bytes
        self._flush_bytes = flush_bytes
        self._flush_interval = flush_interval
        self._pending: list[str] = []
        self._pending_bytes = 0
        self._last_flush = start
        #: Bytes written or waiting to be: the size of the file once flushed.
        self.size = 0
        #: Events dropped because of the size limit.
        self.dropped = 0
        self._bulk_open = True
        self._open = True
        self._file: IO[str] | None = None
        try:
            directory = os.path.dirname(self.path)
            if directory:
                os.makedirs(directory, exist_ok=True)
            self._file = open(self.path, "x", encoding="ascii", newline="\n")  # noqa: SIM115
        except OSError as exc:
            self._give_up(exc)
            return
        _open_writers.add(self)
        self._append(
            {
                "qlog_format": QLOG_FORMAT,
                "qlog_version": QLOG_VERSION,
                "title": title,
                "trace": {
                    "title": title,
                    "vantage_point": {"name": "tcpls", "type": vantage_point},
                    "common_fields": {
                        "time_format": "relative",
                        "reference_time": round(reference_time * 1000, 3),
                        "protocol_type": ["TCPLS"],
                    },
                },
            }
        )

    @property
    def closed(self) -> bool:
        """Whether nothing more is written (closed, or given up)."""
        return not self._open

    @property
    def takes_bulk(self) -> bool:
        """Whether events of records, frames and ACKs are still written (size limit)."""
        return self._bulk_open

    def event(self, now: float, name: str, data: dict[str, Any], *, bulk: bool = False) -> bool:
        """Write the event ``name`` at monotonic time ``now``; returns whether it was kept.

        ``bulk``: an event of a record, a frame or an ACK, dropped first (see the module
        docstring).
        """
        if not self._open:
            return False
        if bulk and not self._bulk_open:
            self.dropped += 1
            return False
        if self.size >= self.max_bytes + RESERVE_BYTES:
            self.dropped += 1
            return False
        millis = round(max(0.0, now - self.start) * 1000, 3)
        if self.size >= self.max_bytes and self._bulk_open:
            self._bulk_open = False
            self._append(
                {
                    "time": millis,
                    "name": "tcpls:qlog_limit_reached",
                    "data": {"max_bytes": self.max_bytes, "dropping": "records, frames and acks"},
                }
            )
            if bulk:
                self.dropped += 1
                return False
        self._append({"time": millis, "name": name, "data": data})
        if (
            self._pending_bytes >= self._flush_bytes
            or now >= self._last_flush + self._flush_interval
        ):
            self._last_flush = now
            self.flush()
        return True

    def _append(self, record: dict[str, Any]) -> None:
        text = RS + json.dumps(record, separators=(",", ":"), default=str) + "\n"
        self._pending.append(text)
        self._pending_bytes += len(text)
        self.size += len(text)

    def flush(self) -> None:
        """Write out the buffered events."""
        file = self._file
        if file is None or not self._pending:
            return
        try:
            file.write("".join(self._pending))
            file.flush()
        except OSError as exc:
            self._give_up(exc)
        self._pending.clear()
        self._pending_bytes = 0

    def close(self, now: float | None = None) -> None:
        """Write out what is buffered (and how many events were dropped), close the file."""
        if not self._open:
            return
        if self.dropped:
            at = now if now is not None else self.start
            millis = round(max(0.0, at - self.start) * 1000, 3)
            self._append(
                {"time": millis, "name": "tcpls:qlog_dropped", "data": {"events": self.dropped}}
            )
        self.flush()
        self._open = False
        _open_writers.discard(self)
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    def _give_up(self, exc: OSError) -> None:
        logger.warning("qlog: cannot write %s: %s; this session is not logged", self.path, exc)
        self._open = False
        self._pending.clear()
        self._pending_bytes = 0
        _open_writers.discard(self)
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None


@atexit.register
def _flush_all() -> None:
    """At exit, write out what the open files still buffer (a session cut short by Ctrl-C)."""
    for writer in list(_open_writers):
        writer.flush()
