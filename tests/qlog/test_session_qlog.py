"""qlog of sessions in memory (the core harness): a failover in order, sampling, the hooks' cost.

The failover: a download over two connections, connection 1 reset part-way. Each end's
file must hold, in this order, the failure, the Connection Reset, the stream ranges sent
again (on the sender) and then stream data moving on connection 0 again; the file
validates against the qlog main schema's structure (:func:`tests.qlog.qlog_util.validate`).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tcpls.config import ClientConfig, SessionTuning
from tcpls.core.session import CoreSession
from tcpls.devcert import DevPKI
from tcpls.qlog.tracer import SessionTracer, trace_session
from tests.core.failover_util import Flow, pump_rounds, settle
from tests.core.harness import Harness
from tests.qlog.qlog_util import carries_stream_data, first, names, validate

FAST = SessionTuning(ping_after=0.2, ping_timeout=0.2, rejoin_timeout=1.0)


def _traced(pki: DevPKI, directory: Path, **settings: Any) -> Harness:
    h = Harness(pki, tuning=FAST)
    config = ClientConfig(qlog_dir=str(directory), **settings)
    for core in (h.client, h.server):
        assert trace_session(core, config, h.now) is not None
    return h


def _files(directory: Path) -> dict[str, Path]:
    found = {p.name.split("-")[1]: p for p in directory.glob("*.sqlog")}
    assert sorted(found) == ["client", "server"], list(directory.iterdir())
    return found


def _close(h: Harness) -> None:
    h.client.close(h.now)
    h.server.close(h.now)
    h.run_until(lambda: h.client.closed and h.server.closed)


def _failover(h: Harness) -> Flow:
    h.pump()
    h.join()
    settle(h)
    flow = Flow(h)
    up, down = flow.open("client"), flow.open("server")
    flow.send("client", up, 200_000)
    flow.send("server", down, 3_000_000)
    flow.finish_all()
    pump_rounds(h, 2)
    link = h.links[1]
    h.cut(link, "stall")
    pump_rounds(h, 2)  # more goes out on connection 1 and is lost with it
    h.advance(0.01)
    h.cut(link, "reset")
    flow.run(limit=5)
    flow.check()
    return flow


def test_failover_is_logged_in_order(pki: DevPKI, tmp_path: Path) -> None:
    h = _traced(pki, tmp_path)
    _failover(h)
    _close(h)
    files = _files(tmp_path)
    for side, path in files.items():
        header, events = validate(path)
        assert header["trace"]["vantage_point"]["type"] == side
        got = names(events)
        assert got[0] == "session_started"
        start = first(events, "session_started")
        assert events[start]["data"]["tcpls"] is True
        assert events[start]["data"]["role"] == side
        assert first(events, "connection_added", connection_id=1, joined=True) > start
        failed = first(events, "connection_failed", connection_id=1)
        assert events[failed]["data"]["survivors"] == [0]
        reset = first(events, "connection_reset_sent", failed, connection_id=1)
        assert reset == failed + 1
        after = reset
        if side == "server":  # the sender of the download had records in flight there
            reinjected = [e for e in events if e["name"] == "tcpls:data_reinjected"]
            assert reinjected and all(e["data"]["from_connection"] == 1 for e in reinjected)
            assert (
                sum(e["data"]["length"] for e in reinjected)
                == (events[failed]["data"]["reinjected_bytes"])
                > 0
            )
            after = first(events, "data_reinjected", reset)
            assert after == reset + 1
        way = "record_sent" if side == "server" else "record_received"
        recovered = next(
            i
            for i in range(after, len(events))
            if events[i]["name"] == f"tcpls:{way}"
            and events[i]["data"]["connection_id"] == 0
            and carries_stream_data(events[i])
        )
        assert recovered > after
        if side == "server":  # the first data after the failure: a range sent again
            frame = next(
                f for f in events[recovered]["data"]["frames"] if f["frame_type"] == "stream"
            )
            ranges = [(e["data"]["offset"], e["data"]["length"]) for e in reinjected]
            assert any(o <= frame["offset"] < o + n for o, n in ranges), (frame, ranges)
        assert first(events, "connection_removed", failed, connection_id=1) > failed
        assert got[-1] == "session_closed" and events[-1]["data"]["error"] is None
        assert "connection_reset_received" not in got  # both ends saw the reset themselves


def test_peer_reset_is_received_before_the_failure(pki: DevPKI, tmp_path: Path) -> None:
    """Only the client sees connection 1 die: the server learns it from Connection Reset."""
    h = _traced(pki, tmp_path)
    h.pump()
    h.join()
    settle(h)
    h.client.connection_lost(1, None, h.now)
    settle(h)
    _close(h)
    _, events = validate(_files(tmp_path)["server"])
    received = first(events, "connection_reset_received", connection_id=1)
    assert events[received + 1]["name"] == "tcpls:connection_failed"
    assert "peer reset" in events[received + 1]["data"]["cause"]


def _record_events(directory: Path) -> tuple[int, list[str]]:
    _, events = validate(_files(directory)["server"])
    got = names(events)
    return got.count("record_sent"), got


@pytest.mark.parametrize("mode", ["all", "sampled", "none"])
def test_record_sampling(pki: DevPKI, tmp_path: Path, mode: str) -> None:
    h = _traced(pki, tmp_path, qlog_records=mode, qlog_sample=10)
    h.pump()
    flow = Flow(h)
    sid = flow.open("server")
    flow.send("server", sid, 2_000_000)  # about 123 records of 16 KiB
    flow.finish_all()
    flow.run()
    settle(h)
    _close(h)
    sent, got = _record_events(tmp_path)
    assert "session_started" in got and got[-1] == "session_closed"
    if mode == "none":
        assert sent == 0 and "ack_received" not in got and "record_received" not in got
    elif mode == "all":
        assert sent >= 123
        assert "ack_received" in got and "scheduler_decision" in got
    else:
        assert 12 <= sent <= 30, sent


def test_no_tracer_no_hooks(pki: DevPKI, tmp_path: Path) -> None:
    """Without qlog_dir and with the session log off, nothing is attached: each hook is a
    ``None`` test."""
    h = Harness(pki)
    assert trace_session(h.client, ClientConfig(), h.now) is None
    for core in (h.client, h.server):
        _assert_untraced(core)


def _assert_untraced(core: CoreSession) -> None:
    assert core.qlog is None and core.links.qlog is None and core.stream_set.qlog is None
    assert core.sender.qlog is None and core.receiver.qlog is None


def test_tracer_lets_go_of_the_session_when_it_ends(pki: DevPKI, tmp_path: Path) -> None:
    h = _traced(pki, tmp_path)
    tracer = h.client.qlog
    assert isinstance(tracer, SessionTracer)
    h.pump()
    _close(h)
    _assert_untraced(h.client)
    assert tracer.writer is not None and tracer.writer.closed


def test_summary_tells_the_story(pki: DevPKI, tmp_path: Path) -> None:
    h = _traced(pki, tmp_path / "q")
    _failover(h)
    _close(h)
    server = _files(tmp_path / "q")["server"]
    out = subprocess.run(
        [sys.executable, "-m", "tcpls", "qlog", "summary", str(server)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines = out.splitlines()
    assert lines[0].startswith("qlog of a server session")

    def at(text: str) -> int:
        return next(i for i, line in enumerate(lines) if text in line)

    started = at("session started (server): TCPLS")
    failed = at("connection 1 FAILED")
    assert started < at("connection 1 joined") < failed
    assert (
        failed
        < at("Connection Reset sent for connection 1")
        < at("sent again from connection 1")
        < at("data moves again on connection 0")
    )
    assert at("session closed cleanly") > failed
    assert "1 failures, 0 stalls" in out
