"""``tcpls qlog summary``: stalls, the plot, and the one-line errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tcpls.cli import main
from tcpls.qlog.writer import QlogWriter


def _session_file(path: Path, *, truncate: bool = False) -> Path:
    """A client's qlog: data on connections 0 and 1, 1 fails at 1 s, 1.5 s of stall."""
    w = QlogWriter(path, vantage_point="client", start=0.0, reference_time=1e9)
    w.event(
        0.0, "tcpls:session_started", {"role": "client", "tcpls": True, "scheduler": "aggregate"}
    )
    w.event(0.0, "tcpls:connection_added", {"connection_id": 0, "joined": False})
    w.event(0.1, "tcpls:connection_added", {"connection_id": 1, "joined": True})
    stream = [{"frame_type": "stream", "stream_id": 1, "offset": 0, "length": 16000}]
    total = {0: 0, 1: 0}
    t = 0.2
    while t < 1.0:
        for cid in (0, 1):
            total[cid] += 16000
            w.event(
                t,
                "tcpls:record_received",
                {"connection_id": cid, "frames": stream, "connection_bytes": total[cid]},
            )
        t += 0.01
    w.event(
        1.0,
        "tcpls:connection_failed",
        {
            "connection_id": 1,
            "cause": "reset",
            "reinjected_bytes": 0,
            "reinjected_ranges": 0,
            "survivors": [0],
        },
    )
    w.event(1.0, "tcpls:connection_reset_sent", {"connection_id": 1})
    total[0] += 16000
    w.event(
        2.5,
        "tcpls:record_received",
        {"connection_id": 0, "frames": stream, "connection_bytes": total[0], "gap_ms": 1500.0},
    )
    w.event(3.0, "tcpls:session_closed", {"error": None})
    w.close(3.0)
    if truncate:
        with open(path, "ab") as f:
            f.write(b'\x1e{"time": 3000, "na')
    return path


def test_stalls_failures_and_connections(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _session_file(tmp_path / "s.sqlog", truncate=True)
    assert main(["qlog", "summary", str(path), "--stall", "1"]) == 0
    out = capsys.readouterr().out
    assert "1.000 s  stall: no record received for 1.500 s" in out
    assert "connection 1 FAILED: reset" in out
    assert "data moves again on connection 0, 1500 ms after connection 1 failed" in out
    assert "1 failures, 1 stalls (longest 1.500 s)" in out
    assert "last record was cut short" in out
    assert main(["qlog", "summary", str(path), "--stall", "2"]) == 0
    assert "0 stalls" in capsys.readouterr().out


def test_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    path = _session_file(tmp_path / "s.sqlog")
    out = tmp_path / "rates.png"
    assert main(["qlog", "summary", str(path), "--plot", str(out)]) == 0
    assert out.read_bytes().startswith(b"\x89PNG")
    assert f"plot: {out}" in capsys.readouterr().out


def test_plot_without_matplotlib_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    path = _session_file(tmp_path / "s.sqlog")
    assert main(["qlog", "summary", str(path), "--plot", str(tmp_path / "x.png")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs matplotlib" in err and "tcpls[plot]" in err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"not": "seq"}\n', "is not a qlog file"),
        (b"\x1e[1, 2]\n", "is not a qlog file"),
        (
            b'\x1e{"qlog_format": "JSON-SEQ", "qlog_version": "0.4", '
            b'"trace": {"vantage_point": {}}}\n\x1e{"time": 1}\n',
            "not an event",
        ),
        (b"\x1enot json\n\x1e{}\n", "is not JSON"),
    ],
)
def test_not_qlog_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, message: str
) -> None:
    path = tmp_path / "bad.sqlog"
    path.write_bytes(content)
    assert main(["qlog", "summary", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tcpls: ") and err.count("\n") == 1 and message in err, err


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["qlog", "summary", str(tmp_path / "none.sqlog")]) == 1
    assert "cannot read" in capsys.readouterr().err
