"""Reading a qlog file back: its checks, the story of the session, its stalls and rates.

:func:`read_qlog` reads a JSON-SEQ qlog file (:mod:`tcpls.qlog.writer`) and checks its
structure: the header's ``qlog_format``, ``qlog_version`` and ``trace`` with a
``vantage_point``, then events that each have a numeric ``time``, a ``name`` and a
``data`` object. A last record cut short (a process killed while writing) is left out,
as RFC 7464 allows; anything else malformed is a :class:`QlogError`.

:func:`summarize` turns the events into a :class:`Summary`: a timeline (session started,
connections added, joins that failed, failures with the Connection Reset and what was
sent again, the first data after each failure, stalls, the end), one line per
connection, and :func:`rates` the rate of each connection over time, from the
``connection_bytes`` of its record events (``tcpls qlog summary --plot``).
"""

from __future__ import annotations

import bisect
import json
import os
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ConnectionLine",
    "QlogError",
    "QlogEvent",
    "QlogFile",
    "Summary",
    "format_summary",
    "rates",
    "read_qlog",
    "summarize",
]

#: Default shortest silence, in seconds, reported as a stall.
DEFAULT_STALL = 0.5
_RECORD_EVENTS = ("tcpls:record_received", "tcpls:record_sent")


class QlogError(Exception):
    """The file is not a qlog file this module can read (one sentence says why)."""


@dataclass(frozen=True, slots=True)
class QlogEvent:
    """One event: ``time`` in seconds since the start of the trace, ``name``, ``data``."""

    time: float
    name: str
    data: dict[str, Any]


@dataclass(frozen=True)
class QlogFile:
    """A qlog file read back: its header and its events, in file order."""

    #: The header record (``qlog_format``, ``qlog_version``, ``trace``).
    header: dict[str, Any]
    #: The events.
    events: list[QlogEvent]
    #: Whether the last record was cut short (and left out).
    truncated: bool = False

    @property
    def vantage_point(self) -> str:
        """``client`` or ``server``."""
        return str(self.header["trace"]["vantage_point"].get("type", "unknown"))


def read_qlog(path: str | os.PathLike[str]) -> QlogFile:
    """Read and check the qlog file ``path`` (:class:`QlogError` if it is not one)."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise QlogError(f"cannot read {name}: {exc.strerror or exc}") from None
    if not raw.startswith(b"\x1e"):
        raise QlogError(f"{name} is not a qlog file (JSON-SEQ records start with RS, 0x1E)")
    chunks = raw.split(b"\x1e")[1:]
    records: list[Any] = []
    truncated = False
    for index, chunk in enumerate(chunks):
        try:
            records.append(json.loads(chunk))
        except (ValueError, UnicodeDecodeError):
            if index == len(chunks) - 1 and not chunk.endswith(b"\n"):
                truncated = True  # the last record, cut short (RFC 7464 §2.3)
                break
            raise QlogError(f"{name}: record {index} is not JSON") from None
    if not records:
        raise QlogError(f"{name} is not a qlog file (no header)")
    header = records[0]
    _check_header(name, header)
    events = [_event(name, index, record) for index, record in enumerate(records[1:], 1)]
    return QlogFile(header, events, truncated)


def _check_header(name: str, header: Any) -> None:
    if not isinstance(header, dict) or header.get("qlog_format") != "JSON-SEQ":
        raise QlogError(f"{name} is not a qlog file (no qlog_format JSON-SEQ header)")
    if not isinstance(header.get("qlog_version"), str):
        raise QlogError(f"{name}: the header has no qlog_version")
    trace = header.get("trace")
    if not isinstance(trace, dict) or not isinstance(trace.get("vantage_point"), dict):
        raise QlogError(f"{name}: the header has no trace with a vantage_point")


def _event(name: str, index: int, record: Any) -> QlogEvent:
    if (
        not isinstance(record, dict)
        or not isinstance(record.get("time"), int | float)
        or not isinstance(record.get("name"), str)
        or not isinstance(record.get("data"), dict)
    ):
        raise QlogError(f"{name}: record {index} is not an event (time, name, data)")
    return QlogEvent(record["time"] / 1000, record["name"], record["data"])


# ------------------------------------------------------------------ the story


@dataclass
class ConnectionLine:
    """What happened to one connection."""

    id: int
    added: float | None = None
    ended: float | None = None
    how: str = "open at the end"
    local: str | None = None
    remote: str | None = None
    bytes_sent: int = 0
    bytes_received: int = 0


@dataclass
class Summary:
    """The story of a session (:func:`summarize`)."""

    vantage_point: str
    #: ``(time, line)``, in time order.
    timeline: list[tuple[float, str]] = field(default_factory=list)
    #: By connection ID.
    connections: dict[int, ConnectionLine] = field(default_factory=dict)
    #: ``(start, seconds)`` of each stall: no record received for that long.
    stalls: list[tuple[float, float]] = field(default_factory=list)
    #: Times of the failures, with the connection that failed.
    failures: list[tuple[float, int]] = field(default_factory=list)
    #: The last event's time.
    duration: float = 0.0


def _mib(n: int) -> str:
    if n >= 1 << 20:
        return f"{n / (1 << 20):.1f} MiB"
    if n >= 1 << 10:
        return f"{n / (1 << 10):.1f} KiB"
    return f"{n} B"


def summarize(qlog: QlogFile, stall: float = DEFAULT_STALL) -> Summary:
    """The story of the session of ``qlog``; ``stall``: the shortest silence (seconds)
    without a received record reported as a stall."""
    out = Summary(qlog.vantage_point)
    add = out.timeline.append
    # failed or suspect connection -> when, and what it became (until data moves again)
    waiting: dict[int, tuple[float, str]] = {}
    reinjected: dict[int, list[int]] = {}  # failed connection -> [ranges, bytes, line]
    for event in qlog.events:
        t, name, data = event.time, event.name, event.data
        out.duration = max(out.duration, t)
        short = name.removeprefix("tcpls:")
        cid = data.get("connection_id")
        if name == "tcpls:session_started":
            add((t, _started(data)))
        elif name == "tcpls:connection_added" and isinstance(cid, int):
            line = out.connections.setdefault(cid, ConnectionLine(cid))
            line.added, line.local, line.remote = t, data.get("local"), data.get("remote")
            verb = "joined" if data.get("joined") else "added"
            add((t, f"connection {cid} {verb} ({line.local or '?'} -> {line.remote or '?'})"))
        elif name == "tcpls:join_failed":
            add((t, f"the join of connection {cid} failed: {data.get('error')}"))
        elif name == "tcpls:connection_suspect" and isinstance(cid, int):
            if data.get("probe_timeouts") == 1:
                waiting.setdefault(cid, (t, "became suspect"))
            add(
                (
                    t,
                    f"connection {cid} suspect (probe timeout {data.get('probe_timeouts')}, "
                    f"srtt {data.get('smoothed_rtt_ms')} ms): "
                    f"{_mib(int(data.get('resent_bytes', 0)))} sent again from connection "
                    f"{cid} on the others",
                )
            )
        elif name == "tcpls:connection_failed" and isinstance(cid, int):
            out.failures.append((t, cid))
            waiting.setdefault(cid, (t, "failed"))
            line = out.connections.setdefault(cid, ConnectionLine(cid))
            line.ended, line.how = t, f"failed: {data.get('cause')}"
            survivors = data.get("survivors") or []
            add(
                (
                    t,
                    f"connection {cid} FAILED: {data.get('cause')}; "
                    f"{_mib(int(data.get('reinjected_bytes', 0)))} in "
                    f"{data.get('reinjected_ranges', 0)} ranges to send again; "
                    f"left: {', '.join(map(str, survivors)) or 'none'}",
                )
            )
        elif name in ("tcpls:connection_reset_sent", "tcpls:connection_reset_received"):
            way = "sent" if name.endswith("sent") else "received"
            add((t, f"Connection Reset {way} for connection {cid}"))
        elif name == "tcpls:data_reinjected":
            source = data.get("from_connection", -1)
            entry = reinjected.get(source)
            if entry is None:  # one line per failure, its numbers filled in at the end
                entry = reinjected[source] = [0, 0, len(out.timeline)]
                add((t, ""))
            entry[0] += int(data.get("ranges_not_listed", 1))
            entry[1] += int(data.get("length", 0))
        elif name == "tcpls:connection_removed" and isinstance(cid, int):
            line = out.connections.setdefault(cid, ConnectionLine(cid))
            if line.ended is None:
                line.ended = t
                line.how = "removed" if data.get("error") is None else f"closed: {data['error']}"
                add((t, f"connection {cid} {line.how}"))
        elif name in _RECORD_EVENTS and isinstance(cid, int):
            line = out.connections.setdefault(cid, ConnectionLine(cid))
            total = int(data.get("connection_bytes", 0))
            if name == "tcpls:record_received":
                line.bytes_received = max(line.bytes_received, total)
                # a record after a silence is always logged, with its gap (sampled or not)
                gap = data.get("gap_ms")
                silence = gap / 1000 if isinstance(gap, int | float) else 0.0
                if silence >= stall:
                    out.stalls.append((t - silence, silence))
                    add((t - silence, f"stall: no record received for {silence:.3f} s"))
            else:
                line.bytes_sent = max(line.bytes_sent, total)
            if waiting and _carries_data(data) and cid not in waiting:
                for failed, (when, became) in waiting.items():
                    add(
                        (
                            t,
                            f"data moves again on connection {cid}, {(t - when) * 1000:.0f} ms "
                            f"after connection {failed} {became}",
                        )
                    )
                waiting.clear()
        elif name == "tcpls:session_closed":
            error = data.get("error")
            add((t, f"session closed: {error}" if error else "session closed cleanly"))
        elif name == "tcpls:qlog_limit_reached":
            add((t, f"qlog size limit reached: {data.get('dropping')} no longer logged"))
        elif short in ("peer_closed",):
            add((t, "the peer closed the session (close_notify)"))
    for source, (count, nbytes, index) in reinjected.items():
        when = out.timeline[index][0]
        text = f"sent again from connection {source}: {count} stream ranges, {_mib(nbytes)}"
        out.timeline[index] = (when, text)
    out.timeline.sort(key=lambda item: item[0])  # (stable: same-time lines keep file order)
    return out


def _carries_data(data: dict[str, Any]) -> bool:
    frames = data.get("frames") or []
    return any(
        isinstance(f, dict) and f.get("frame_type") in ("stream", "application_data")
        for f in frames
    )


def _started(data: dict[str, Any]) -> str:
    mode = "TCPLS" if data.get("tcpls") else "plain TLS 1.3"
    how = "resumed" if data.get("resumed") else "full handshake"
    early = ", early data accepted" if data.get("early_data_accepted") else ""
    return (
        f"session started ({data.get('role')}): {mode}, {data.get('cipher_suite')}, "
        f"{data.get('group')}, {how}{early}, scheduler {data.get('scheduler')}"
    )


def format_summary(summary: Summary, name: str = "") -> str:
    """The summary as text: the timeline, then one line per connection."""
    lines = [f"qlog of a {summary.vantage_point} session{f' ({name})' if name else ''}", ""]
    lines += [f"{t:10.3f} s  {text}" for t, text in summary.timeline]
    lines += ["", "connection  added      ended      sent        received    how it ended"]
    for cid in sorted(summary.connections):
        c = summary.connections[cid]
        added = f"{c.added:.3f} s" if c.added is not None else "?"
        ended = f"{c.ended:.3f} s" if c.ended is not None else "-"
        lines.append(
            f"{cid:>10}  {added:<9}  {ended:<9}  {_mib(c.bytes_sent):<10}  "
            f"{_mib(c.bytes_received):<10}  {c.how}"
        )
    stalls = summary.stalls
    longest = max((s for _, s in stalls), default=0.0)
    lines += [
        "",
        f"{len(summary.failures)} failures, {len(stalls)} stalls"
        + (f" (longest {longest:.3f} s)" if stalls else ""),
    ]
    return "\n".join(lines) + "\n"


def rates(
    qlog: QlogFile, direction: str | None = None, step: float | None = None
) -> tuple[str, dict[int, list[tuple[float, float]]]]:
    """The rate of each connection, bytes per second, in steps of ``step`` seconds (default:
    a hundredth of the trace, at least 10 ms): ``(direction, {id: [(time, rate)]})``.

    ``direction`` is ``"received"`` or ``"sent"``; by default the one that carried more.
    """
    points: dict[str, dict[int, list[tuple[float, int]]]] = {"received": {}, "sent": {}}
    for event in qlog.events:
        if event.name not in _RECORD_EVENTS:
            continue
        way = "received" if event.name == "tcpls:record_received" else "sent"
        cid = event.data.get("connection_id")
        total = event.data.get("connection_bytes")
        if isinstance(cid, int) and isinstance(total, int):
            points[way].setdefault(cid, []).append((event.time, total))
    if direction is None:
        volume = {way: sum(p[-1][1] for p in by.values()) for way, by in points.items()}
        direction = max(volume, key=lambda way: volume[way])
    chosen = points[direction]
    end = max((p[-1][0] for p in chosen.values()), default=0.0)
    width = step or max(end / 100, 0.01)
    out: dict[int, list[tuple[float, float]]] = {}
    for cid, series in chosen.items():
        bins: list[tuple[float, float]] = []
        steps = int(end / width) + 1
        times = [t for t, _ in series]
        previous = _bytes_at(series, times, 0.0)
        for i in range(1, steps + 1):
            at = i * width
            now = _bytes_at(series, times, at)
            bins.append((at - width / 2, (now - previous) / width))
            previous = now
        out[cid] = bins
    return direction, out


def _bytes_at(series: list[tuple[float, int]], times: list[float], t: float) -> float:
    """The cumulative bytes at time ``t``, linear between the points (0 before the first)."""
    i = bisect.bisect_right(times, t)
    if i == 0:
        return 0.0
    if i == len(series):
        return float(series[-1][1])
    (t0, b0), (t1, b1) = series[i - 1], series[i]
    return b0 + (b1 - b0) * ((t - t0) / (t1 - t0) if t1 > t0 else 1.0)
