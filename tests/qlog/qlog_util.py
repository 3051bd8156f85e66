"""Shared by the qlog tests: a structural validator of qlog JSON-SEQ files, and event lookups.

:func:`validate` checks what the qlog main schema (draft-ietf-quic-qlog-main-schema,
JSON-SEQ serialization, RFC 7464) requires of a file: records that each start with RS
(0x1E) and end with LF, each one JSON object; a first record that is the header
(``qlog_format`` ``"JSON-SEQ"``, a ``qlog_version`` string, a ``trace`` object with a
``vantage_point`` whose ``type`` is ``client`` or ``server`` and ``common_fields`` with
``time_format`` ``"relative"`` and a numeric ``reference_time``); then events that each
have a numeric ``time`` (milliseconds, not before the previous event's), a ``name`` in a
namespace (``tcpls:<event>``) and a ``data`` object.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RS = b"\x1e"


def validate(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Check ``path`` (see the module docstring); return its header and its events."""
    raw = path.read_bytes()
    assert raw.startswith(RS), "a JSON-SEQ file starts with RS"
    records = raw.split(RS)[1:]
    parsed: list[dict[str, Any]] = []
    for index, record in enumerate(records):
        assert record.endswith(b"\n"), f"record {index} does not end with LF"
        value = json.loads(record)
        assert isinstance(value, dict), f"record {index} is not a JSON object"
        parsed.append(value)
    header, events = parsed[0], parsed[1:]
    assert header["qlog_format"] == "JSON-SEQ"
    assert isinstance(header["qlog_version"], str) and header["qlog_version"]
    trace = header["trace"]
    assert isinstance(trace, dict)
    assert trace["vantage_point"]["type"] in ("client", "server")
    common = trace["common_fields"]
    assert common["time_format"] == "relative"
    assert isinstance(common["reference_time"], int | float)
    assert "events" not in trace, "JSON-SEQ events are records, not a list in the trace"
    previous = 0.0
    for index, event in enumerate(events, 1):
        assert set(event) >= {"time", "name", "data"}, f"record {index}: {event}"
        assert isinstance(event["time"], int | float) and event["time"] >= previous, event
        previous = event["time"]
        namespace, _, name = event["name"].partition(":")
        assert namespace == "tcpls" and name, event["name"]
        assert isinstance(event["data"], dict), event
    return header, events


def names(events: list[dict[str, Any]]) -> list[str]:
    """The events' names without the namespace."""
    return [e["name"].removeprefix("tcpls:") for e in events]


def first(events: list[dict[str, Any]], name: str, start: int = 0, **fields: Any) -> int:
    """The index of the first event ``tcpls:<name>`` from ``start`` whose data has ``fields``
    (an AssertionError if there is none)."""
    for index in range(start, len(events)):
        event = events[index]
        if event["name"] == f"tcpls:{name}" and all(
            event["data"].get(k) == v for k, v in fields.items()
        ):
            return index
    raise AssertionError(f"no tcpls:{name} {fields} from event {start}")


def carries_stream_data(event: dict[str, Any]) -> bool:
    """Whether a record event has a Stream frame with bytes."""
    return any(
        f.get("frame_type") == "stream" and f.get("length", 0) > 0
        for f in event["data"].get("frames") or []
    )


def failover_marks(
    events: list[dict[str, Any]], failed: int, survivor: int, way: str
) -> list[int]:
    """The indexes of the failure of connection ``failed`` and its Connection Reset (sent
    right after the failure, or received right before it when the peer noticed first),
    the first range sent again (with ``way`` ``record_sent``: the sender of the data) and
    the first record (``way``) of stream data on ``survivor`` after them, in order (an
    AssertionError if one is missing or out of place)."""
    failure = first(events, "connection_failed", connection_id=failed)
    if events[failure - 1]["name"] == "tcpls:connection_reset_received":
        marks = [failure - 1, failure]
    else:
        marks = [failure, first(events, "connection_reset_sent", failure, connection_id=failed)]
    assert marks[1] == marks[0] + 1, marks
    if way == "record_sent":
        marks.append(first(events, "data_reinjected", marks[-1], from_connection=failed))
        assert marks[2] == marks[1] + 1, marks
    recovered = next(
        i
        for i in range(marks[-1], len(events))
        if events[i]["name"] == f"tcpls:{way}"
        and events[i]["data"]["connection_id"] == survivor
        and carries_stream_data(events[i])
    )
    return [*marks, recovered]
