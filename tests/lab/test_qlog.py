"""qlog of a failover in the network lab: ``tcpls serve`` and ``tcpls get`` with ``--qlog``.

Two namespaces joined by paths A = 0 and B = 1 (40 Mbit/s each). ``tcpls get`` downloads
a 32 MiB file over A and joins B (``--join``); once a third of the file has arrived,
path A is blackholed. The end that notices first (user timeout, unanswered Ping) sends
Connection Reset on B, the other learns of the failure from it (or notices too), each
sends again what A carried unacknowledged, and the download ends intact over B. Each
end's qlog file must validate against the qlog main schema's structure
(:func:`tests.qlog.qlog_util.validate`) and hold, in order, the failure of connection 0
with its Connection Reset (sent right after, or received right before), the ranges sent
again (the server, which sends the download) and the data moving on connection 1;
``tcpls qlog summary`` prints its timeline. When the server finds connection 0 suspect
first (design: Failure detection), its data moves at the suspicion, before the failure.

Needs root (skips otherwise). Runtime about 15 s.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tcpls.lab import Lab, PathSpec, lab_available
from tests.qlog.qlog_util import carries_stream_data, failover_marks, first, validate

pytestmark = pytest.mark.lab

PORT = 8443
SERVER_A = "10.10.1.2"
SERVER_B = "10.10.2.2"
SIZE = 32 << 20
RATE_MBIT = 40
TCPLS = [sys.executable, "-m", "tcpls"]


def test_failover_qlog(tmp_path: Path) -> None:
    ok, reason = lab_available()
    if not ok:
        pytest.skip(reason)
    from tcpls.devcert import make_test_pki

    pki = make_test_pki(tmp_path / "pki", ip_addresses=(SERVER_A, SERVER_B))
    files = tmp_path / "files"
    files.mkdir()
    data = os.urandom(SIZE)
    (files / "big.bin").write_bytes(data)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    qlog_server, qlog_client = tmp_path / "qlog-server", tmp_path / "qlog-client"
    with Lab([PathSpec(rate_mbit=RATE_MBIT), PathSpec(rate_mbit=RATE_MBIT)]) as lab:
        log = tmp_path / "server.log"
        out = open(log, "wb")  # noqa: SIM115 - the child holds it
        server = lab.popen(
            "server",
            [*TCPLS, "serve", "--host", "0.0.0.0", "--port", str(PORT),
             "--cert", str(pki.cert_file), "--key", str(pki.key_file),
             "--files", str(files), "--user-timeout", "500", "--qlog", str(qlog_server)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        out.close()
        deadline = time.monotonic() + 15
        while "serving" not in log.read_text(errors="replace"):
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        target = downloads / "big.bin"
        client = lab.popen(
            "client",
            [*TCPLS, "get", SERVER_A, str(PORT), "/big.bin", "-o", str(target),
             "--cafile", str(pki.ca_file), "--join", f"{SERVER_B}:{PORT}",
             "--user-timeout", "500", "--debug", "--qlog", str(qlog_client)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:  # the download goes to a hidden .part file next to the target
            parts = list(downloads.glob(".big.bin.*.part"))
            if parts and parts[0].exists() and parts[0].stat().st_size >= SIZE // 3:
                break
            assert client.poll() is None, client.communicate()[1].decode()[-3000:]
            assert time.monotonic() < deadline, "the download did not reach a third"
            time.sleep(0.02)
        lab.cut(0, "blackhole")
        _, err = client.communicate(timeout=60)
        server.terminate()
        server.wait(10)
    stderr = err.decode()
    assert client.returncode == 0, stderr[-3000:]
    assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(data).digest()
    assert "connection 0 failed" in stderr and "failover to connection 1" in stderr, stderr

    (client_file,) = qlog_client.glob("*-client-*.sqlog")
    (server_file,) = qlog_server.glob("*-server-*.sqlog")
    _, server_events = validate(server_file)
    moved_when_suspect = _suspect_first(server_events)
    for path, way in ((client_file, "record_received"), (server_file, "record_sent")):
        _, events = validate(path)
        if way == "record_sent" and moved_when_suspect:
            continue  # (checked by _suspect_first: the data moved before the failure)
        marks = failover_marks(events, 0, 1, way)
        assert marks == sorted(marks) and len(set(marks)) == len(marks), (path.name, marks)
        assert marks[1] == marks[0] + 1
        failure = marks[0] + (events[marks[0]]["name"] != "tcpls:connection_failed")
        failed = events[failure]["data"]
        assert failed["survivors"] == [1]
        if way == "record_sent":
            assert failed["reinjected_bytes"] > 0
        print(f"\n{path.name}: failure at {events[marks[1]]['time']:.0f} ms, data again on "
              f"connection 1 {events[marks[-1]]['time'] - events[marks[1]]['time']:.0f} ms later, "
              f"{failed['reinjected_bytes']} bytes sent again")  # fmt: skip

    summary = subprocess.run(
        [*TCPLS, "qlog", "summary", str(server_file)], capture_output=True, text=True, check=True
    ).stdout
    for text in (
        "session started (server): TCPLS",
        "connection 1 joined",
        "connection 0 FAILED",
        "Connection Reset",
        "sent again from connection 0",
        "data moves again on connection 1",
        *(["connection 0 suspect"] if moved_when_suspect else []),
    ):
        assert text in summary, summary


def _suspect_first(events: list[dict[str, Any]]) -> bool:
    """Whether the server found connection 0 suspect and sent its data again before
    connection 0 failed (design: Failure detection); then, in order: that suspicion, the
    failure with its Connection Reset, and stream data on connection 1 after the
    suspicion (``False``: the failure came first, for :func:`failover_marks`)."""
    failure = first(events, "connection_failed", connection_id=0)
    suspect = next(
        (
            i
            for i in range(failure)
            if events[i]["name"] == "tcpls:connection_suspect"
            and events[i]["data"]["connection_id"] == 0
            and events[i]["data"]["resent_bytes"] > 0
        ),
        None,
    )
    if suspect is None:
        return False
    assert events[suspect]["data"]["probe_timeouts"] == 1
    moved = next(
        i
        for i in range(suspect, len(events))
        if events[i]["name"] == "tcpls:record_sent"
        and events[i]["data"]["connection_id"] == 1
        and carries_stream_data(events[i])
    )
    assert moved < len(events)
    print(
        f"\nserver: connection 0 suspect at {events[suspect]['time']:.0f} ms, "
        f"{events[suspect]['data']['resent_bytes']} bytes sent again, data on connection 1 "
        f"{events[moved]['time'] - events[suspect]['time']:.0f} ms later, failed at "
        f"{events[failure]['time']:.0f} ms"
    )
    return True
