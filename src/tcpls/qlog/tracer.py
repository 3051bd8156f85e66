"""What a session tells qlog and the ``tcpls.session`` logger: its life cycle.

:class:`SessionTracer` implements the life-cycle hooks of the core
(:class:`tcpls.core.trace.SessionTrace`) and, through a :class:`~tcpls.qlog.records.RecordTracer`,
the per-record ones. :func:`trace_session` gives a session one when its configuration has
a ``qlog_dir`` (one file per session) or the ``tcpls.session`` logger shows INFO (the
command line's ``--debug``); otherwise the session has no tracer and its hooks cost one
attribute test each.

The life-cycle events (design: qlog):

* ``tcpls:session_started``: role, TCPLS or plain TLS, cipher suite, group, resumed,
  early data, ALPN, scheduler; with ``tcpls:connection_added`` for connection 0 and, on a
  server, ``tcpls:token_issued`` for the token of the handshake (``tcpls_token``);
* ``tcpls:connection_added`` (ID = the join token's sequence, addresses, ``joined``),
  ``tcpls:join_failed``, ``tcpls:connection_removed``;
* ``tcpls:token_received``, ``tcpls:stream_opened``, ``tcpls:stream_closed``;
* a failure, in this order: ``tcpls:connection_reset_received`` (when the peer reset
  it), ``tcpls:connection_failed`` (cause, what is sent again), ``tcpls:connection_reset_sent``
  (queued with the ACK of what arrived on it), then one ``tcpls:data_reinjected`` per
  stream range sent again (at most :data:`MAX_RANGES_LISTED`);
* ``tcpls:peer_closed``, ``tcpls:session_closed`` (with the error, if any).
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from typing import Any, Protocol

from tcpls.core.connection import Connection, ConnectionStatus
from tcpls.core.events import (
    ConnectionAdded,
    ConnectionRemoved,
    PeerClosed,
    SessionClosed,
    SessionEstablished,
    SessionEvent,
    StreamOpened,
    TokenReceived,
)
from tcpls.core.session import CoreSession
from tcpls.errors import TCPLSError
from tcpls.qlog.records import RecordMode, RecordTracer, frame_summary
from tcpls.qlog.writer import DEFAULT_MAX_BYTES, QlogWriter
from tcpls.tls.hs.groups import group_name

__all__ = ["MAX_RANGES_LISTED", "QlogSettings", "SessionTracer", "trace_session"]

#: The logger of sessions' life cycles (INFO: established, joins, failures, failovers, ends).
logger = logging.getLogger("tcpls.session")

#: Stream ranges listed one by one after a failure; the rest are counted.
MAX_RANGES_LISTED = 256


class QlogSettings(Protocol):
    """The qlog fields of a :class:`~tcpls.config.ClientConfig` or
    :class:`~tcpls.config.ServerConfig`."""

    @property
    def qlog_dir(self) -> str | None:
        """Where to write one qlog file per session (``None``: no qlog)."""
        ...

    @property
    def qlog_records(self) -> RecordMode:
        """``"all"``, ``"sampled"`` or ``"none"``."""
        ...

    @property
    def qlog_sample(self) -> int:
        """With ``"sampled"``: 1 record in this many."""
        ...

    @property
    def qlog_max_bytes(self) -> int:
        """The size limit of each file."""
        ...


def _address(address: tuple[str, int] | None) -> str | None:
    return f"{address[0]}:{address[1]}" if address is not None else None


class SessionTracer:
    """The life cycle of one session, to qlog (``writer``) and/or the session logger (``log``)."""

    def __init__(
        self,
        core: CoreSession,
        *,
        writer: QlogWriter | None,
        log: bool,
        records: RecordMode = "sampled",
        sample_every: int = 16,
    ) -> None:
        self._core: CoreSession | None = core
        #: The qlog file (``None``: logging only).
        self.writer = writer
        self._log = log
        #: The per-record hooks (``None`` without a qlog file).
        self.records = (
            RecordTracer(core, writer, records=records, sample_every=sample_every)
            if writer is not None and records != "none"
            else None
        )
        self._role = "client" if core.is_client else "server"
        self._added: set[int] = set()
        self._peer = "the peer"
        self._early_tokens: list[int] | None = []  # (the first comes before the start)

    def attach(self) -> None:
        """Install the hooks on the session (:meth:`CoreSession.trace`)."""
        if self._core is not None:
            self._core.trace(self, self.records)

    def close(self) -> None:
        """The session ended: close the file, take the hooks off, let the session go."""
        core = self._core
        if core is None:
            return
        core.trace(None, None)
        if self.records is not None:
            self.records.close()
        if self.writer is not None:
            self.writer.close(core.now)
        self._core = None

    # ------------------------------------------------------------- helpers

    def _emit(self, name: str, data: dict[str, Any]) -> None:
        core = self._core
        if self.writer is not None and core is not None:
            self.writer.event(core.now, name, data)

    def _info(self, message: str, *args: object) -> None:
        if self._log:
            logger.info("session with %s: " + message, self._peer, *args)

    def _connection(self, cid: int, *, joined: bool) -> None:
        core = self._core
        conn = core.connections.get(cid) if core is not None else None
        local = _address(conn.local_address) if conn is not None else None
        remote = _address(conn.remote_address) if conn is not None else None
        self._added.add(cid)
        self._emit(
            "tcpls:connection_added",
            {
                "connection_id": cid,
                "local": local,
                "remote": remote,
                "joined": joined,
                "token_sequence": cid if joined else None,
            },
        )
        if joined:
            self._info("connection %d joined (%s -> %s)", cid, local, remote)

    # ------------------------------------------------------------- SessionTrace

    def event(self, event: SessionEvent) -> None:
        """A session event, as the I/O layer takes it."""
        kind = type(event)
        if kind is SessionEstablished:
            self._established()
        elif kind is ConnectionAdded:
            assert isinstance(event, ConnectionAdded)
            self._connection(event.connection_id, joined=True)
        elif kind is ConnectionRemoved:
            assert isinstance(event, ConnectionRemoved)
            self._removed(event)
        elif kind is StreamOpened:
            assert isinstance(event, StreamOpened)
            self._emit("tcpls:stream_opened", {"stream_id": event.stream_id, "by": "peer"})
        elif kind is TokenReceived:
            assert isinstance(event, TokenReceived)
            if self._early_tokens is not None:
                self._early_tokens.append(event.sequence)
            else:
                self._emit("tcpls:token_received", {"sequence": event.sequence})
        elif kind is PeerClosed:
            self._emit("tcpls:peer_closed", {})
        elif kind is SessionClosed:
            assert isinstance(event, SessionClosed)
            self._closed(event.error)

    def _established(self) -> None:
        core = self._core
        if core is None:
            return
        conn = core.connections.get(0)
        if conn is not None and conn.remote_address is not None:
            self._peer = _address(conn.remote_address) or self._peer
        engine = core.handshake_engine
        suite = engine.cipher_suite if engine is not None else None
        group = engine.group if engine is not None else None
        data = {
            "role": self._role,
            "tcpls": bool(core.tcpls),
            "cipher_suite": f"TLS_{suite.name}" if suite is not None else None,
            "group": group_name(group) if group is not None else None,
            "resumed": bool(engine and engine.session_resumed),
            "early_data_accepted": bool(engine and engine.early_data_accepted),
            "alpn": engine.alpn_protocol if engine is not None else None,
            "scheduler": core.scheduler.name,
            "max_connections": core.max_connections,
        }
        self._emit("tcpls:session_started", data)
        self._connection(0, joined=False)
        for sequence in self._early_tokens or ():
            self._emit("tcpls:token_received", {"sequence": sequence})
        self._early_tokens = None
        if engine is not None and engine.issued_token is not None and core.tcpls:
            self._emit("tcpls:token_issued", {"sequence": 1, "via": "tcpls_token"})
        self._info(
            "established: %s, %s, %s, %s%s",
            "TCPLS" if core.tcpls else "plain TLS 1.3",
            data["cipher_suite"],
            data["group"],
            "resumed" if data["resumed"] else "full handshake",
            ", early data accepted" if data["early_data_accepted"] else "",
        )

    def _removed(self, event: ConnectionRemoved) -> None:
        cid, error = event.connection_id, event.error
        reason = str(error) if error is not None else None
        if cid not in self._added:
            self._emit("tcpls:join_failed", {"connection_id": cid, "error": reason})
            self._info("the join of connection %d failed: %s", cid, reason)
            return
        self._added.discard(cid)
        self._emit("tcpls:connection_removed", {"connection_id": cid, "error": reason})
        if error is None:
            self._info("connection %d retired", cid)

    def _closed(self, error: TCPLSError | None) -> None:
        data = {
            "error": str(error) if error is not None else None,
            "error_type": type(error).__name__ if error is not None else None,
        }
        self._emit("tcpls:session_closed", data)
        if error is None:
            self._info("closed cleanly")
        else:
            self._info("closed: %s", error)
        self.close()

    def connection_suspect(self, conn: Connection, resent: int) -> None:
        """A probe timeout of ``conn`` expired: it is suspect (design: Failure detection)."""
        timing = conn.timing
        self._emit(
            "tcpls:connection_suspect",
            {
                "connection_id": conn.id,
                "probe_timeouts": timing.backoff,
                "smoothed_rtt_ms": round(timing.srtt * 1000, 3),
                "rtt_variance_ms": round(timing.rttvar * 1000, 3),
                "unacknowledged_records": len(conn.sent_log),
                "resent_bytes": resent,
            },
        )

    def connection_failed(self, conn: Connection, error: TCPLSError, tell_peer: bool) -> None:
        """``conn`` failed; what its unacknowledged log holds and was not sent again while
        it was suspect is about to be sent again (design: Failure detection)."""
        core = self._core
        if core is None:
            return
        ranges: dict[int, list[list[int]]] = {}
        frames: list[str] = []
        nbytes = 0
        resent_through = conn.timing.resent_through  # (sent again while it was suspect)
        for seq, refs, control in conn.sent_log:
            if seq <= resent_through:
                continue
            for sid, offset, length, fin in refs:
                nbytes += length
                runs = ranges.setdefault(sid, [])
                if runs and runs[-1][1] == offset:
                    runs[-1][1] = offset + length
                    runs[-1][2] |= int(fin)
                else:
                    runs.append([offset, offset + length, int(fin)])
            if control:
                frames += [frame_summary(f)["frame_type"] for f in control]
        survivors = sorted(
            c.id
            for c in core.connections.values()
            if c is not conn and c.status is ConnectionStatus.ACTIVE
        )
        count = sum(len(runs) for runs in ranges.values())
        if not tell_peer:
            self._emit("tcpls:connection_reset_received", {"connection_id": conn.id})
        self._emit(
            "tcpls:connection_failed",
            {
                "connection_id": conn.id,
                "cause": str(error),
                "error_type": type(error).__name__,
                "unacknowledged_records": len(conn.sent_log),
                "reinjected_bytes": nbytes,
                "reinjected_ranges": count,
                "reinjected_frames": frames,
                "survivors": survivors,
            },
        )
        if tell_peer:
            self._emit(
                "tcpls:connection_reset_sent",
                {
                    "connection_id": conn.id,
                    "highest_received": conn.highest_received if conn.records_received else None,
                },
            )
        listed = 0
        for sid, runs in ranges.items():
            for start, end, ended in runs:
                if listed < MAX_RANGES_LISTED:
                    self._emit(
                        "tcpls:data_reinjected",
                        {
                            "stream_id": sid,
                            "offset": start,
                            "length": end - start,
                            "fin": bool(ended),
                            "from_connection": conn.id,
                        },
                    )
                listed += 1
        if listed > MAX_RANGES_LISTED:
            self._emit(
                "tcpls:data_reinjected",
                {"from_connection": conn.id, "ranges_not_listed": listed - MAX_RANGES_LISTED},
            )
        if self.records is not None:
            self.records.force()
        where = (
            f"connection {', '.join(map(str, survivors))}" if survivors else "no connection left"
        )
        self._info(
            "connection %d failed (%s)%s; failover to %s: %d bytes in %d ranges%s sent again",
            conn.id,
            error,
            "" if tell_peer else " (reset by the peer)",
            where,
            nbytes,
            count,
            f" and {len(frames)} control frames" if frames else "",
        )

    def stream_opened(self, stream_id: int) -> None:
        """We opened a stream."""
        self._emit("tcpls:stream_opened", {"stream_id": stream_id, "by": "local"})

    def stream_closed(self, stream_id: int, sent: int, received: int) -> None:
        """A stream is gone."""
        self._emit(
            "tcpls:stream_closed",
            {"stream_id": stream_id, "bytes_sent": sent, "bytes_received": received},
        )


def qlog_path(directory: str, role: str) -> str:
    """A new file name in ``directory`` for a session of ``role`` (``client``/``server``)."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    return os.path.join(directory, f"{stamp}-{role}-{secrets.token_hex(4)}.sqlog")


def trace_session(core: CoreSession, settings: QlogSettings, now: float) -> SessionTracer | None:
    """Give ``core`` a tracer if its configuration asks for qlog or the session log is on.

    ``now`` is the current monotonic time (the clock the session is driven with), the
    qlog file's time 0. Returns the tracer (``None``: the session is not traced).
    """
    log = logger.isEnabledFor(logging.INFO)
    directory = settings.qlog_dir
    if directory is None and not log:
        return None
    writer = None
    if directory is not None:
        role = "client" if core.is_client else "server"
        writer = QlogWriter(
            qlog_path(os.fspath(directory), role),
            vantage_point=role,
            start=now,
            reference_time=time.time(),
            max_bytes=settings.qlog_max_bytes or DEFAULT_MAX_BYTES,
        )
        if writer.closed:
            writer = None
    if writer is None and not log:
        return None
    tracer = SessionTracer(
        core,
        writer=writer,
        log=log,
        records=settings.qlog_records,
        sample_every=settings.qlog_sample,
    )
    tracer.attach()
    return tracer
