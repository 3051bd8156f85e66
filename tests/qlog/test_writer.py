"""The qlog writer: the JSON-SEQ format, its bounds in memory and size, and failures to write."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from tcpls.qlog.writer import RESERVE_BYTES, QlogWriter
from tests.qlog.qlog_util import names, validate


def _writer(path: Path, **kwargs: object) -> QlogWriter:
    return QlogWriter(
        path,
        vantage_point="client",
        start=100.0,
        reference_time=1_700_000_000.5,
        **kwargs,  # type: ignore[arg-type]
    )


def test_format_is_json_seq_with_a_header_and_relative_times(tmp_path: Path) -> None:
    path = tmp_path / "a.sqlog"
    writer = _writer(path)
    writer.event(100.25, "tcpls:session_started", {"role": "client"})
    writer.event(101.0, "tcpls:session_closed", {"error": None})
    writer.close(101.0)
    raw = path.read_bytes()
    records = raw.split(b"\x1e")
    assert records[0] == b"" and len(records) == 4
    assert all(r.endswith(b"\n") and r.count(b"\n") == 1 for r in records[1:])
    header, events = validate(path)
    assert header["qlog_version"] == "0.4"
    assert header["trace"]["vantage_point"] == {"name": "tcpls", "type": "client"}
    assert header["trace"]["common_fields"]["reference_time"] == 1_700_000_000_500
    assert [(e["time"], e["name"]) for e in events] == [
        (250.0, "tcpls:session_started"),
        (1000.0, "tcpls:session_closed"),
    ]
    assert json.loads(records[2]) == events[0]


def test_events_wait_in_a_bounded_buffer(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlog"
    writer = _writer(path, flush_bytes=4096, flush_interval=10.0)
    written = path.stat().st_size
    assert written == 0  # even the header waits
    for i in range(10):
        writer.event(100.0 + i * 0.001, "tcpls:record_sent", {"sequence": i}, bulk=True)
    assert path.stat().st_size == 0
    while path.stat().st_size == 0:  # written out once 4 KiB are buffered
        writer.event(100.1, "tcpls:record_sent", {"sequence": 0, "pad": "x" * 100}, bulk=True)
    assert path.stat().st_size <= 4096 + 200
    writer.event(111.0, "tcpls:peer_closed", {})  # more than flush_interval later
    assert path.stat().st_size == writer.size
    writer.close()
    validate(path)


def test_size_limit_drops_records_first_then_everything(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlog"
    writer = _writer(path, max_bytes=8192)
    record = {"connection_id": 0, "sequence": 1, "frames": [{"frame_type": "stream"}]}
    for _ in range(500):
        writer.event(100.0, "tcpls:record_sent", record, bulk=True)
    assert not writer.takes_bulk
    assert writer.event(100.0, "tcpls:connection_failed", {"connection_id": 1})
    assert not writer.event(100.0, "tcpls:record_sent", record, bulk=True)
    while writer.event(100.0, "tcpls:stream_opened", {"stream_id": 0, "pad": "y" * 200}):
        pass
    dropped = writer.dropped
    writer.close(101.0)
    size = path.stat().st_size
    assert size <= 8192 + RESERVE_BYTES + 1024
    _, events = validate(path)
    got = names(events)
    assert got.count("qlog_limit_reached") == 1
    limit_at = got.index("qlog_limit_reached")
    assert "record_sent" not in got[limit_at:]
    assert "connection_failed" in got[limit_at:]
    assert got[-1] == "qlog_dropped" and events[-1]["data"]["events"] == dropped > 0


def test_an_unwritable_directory_is_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with caplog.at_level(logging.WARNING, logger="tcpls.qlog"):
        writer = _writer(blocker / "sub" / "x.sqlog")
    assert writer.closed
    assert not writer.event(100.0, "tcpls:session_started", {})
    writer.close()
    assert len(caplog.records) == 1 and "not logged" in caplog.records[0].getMessage()
