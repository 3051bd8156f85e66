"""The command line over loopback: ``--debug`` logs the failover, ``--qlog`` logs it in order.

``tcpls serve --files --scheduler backup`` and ``tcpls get --join`` run as processes, each
connection through a proxy in the test; the server sends the download on connection 0
(backup: the others only when it fails), whose proxy resets it (RST both ways) once 2 MiB
passed. The download must complete over connection 1, both ends must say on standard
error that connection 0 failed and what went out again on connection 1, and both qlog
files must validate and hold the failure, the Connection Reset, the ranges sent again
(the server) and the data moving again on connection 1, in that order. (With the
default scheduler the download would go over both connections, and a proxy slower than
the direct path, on a loaded machine, could hold back more than the receiver's 16 MiB
reassembly limit.)
"""

from __future__ import annotations

import hashlib
import os
import re
import selectors
import socket
import struct
import subprocess
import threading
from pathlib import Path

from tcpls.devcert import DevPKI
from tests.aio.cli_util import TCPLS, start_server
from tests.qlog.qlog_util import failover_marks, first, validate

SIZE = 48 << 20


class CuttingProxy:
    """Forwards one TCP connection to ``127.0.0.1:port`` and resets it (RST to both ends)
    once ``cut_after`` bytes came back from the server."""

    def __init__(self, port: int, cut_after: int) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._target = port
        self._cut_after = cut_after
        self.cut = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.listener.settimeout(30)
        client, _ = self.listener.accept()
        server = socket.create_connection(("127.0.0.1", self._target))
        peers = {client: server, server: client}
        selector = selectors.DefaultSelector()
        for sock in peers:
            sock.setblocking(True)
            selector.register(sock, selectors.EVENT_READ)
        back = 0
        try:
            while not self.cut.is_set():
                for key, _ in selector.select(timeout=30):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    data = sock.recv(65536)
                    if not data:
                        return
                    peers[sock].sendall(data)
                    if sock is server:
                        back += len(data)
                        if back >= self._cut_after:
                            self.cut.set()
                            break
        except OSError:
            return
        finally:
            for sock in peers:  # SO_LINGER 0: close() sends RST
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
            self.listener.close()


def test_get_logs_and_qlogs_a_failover(pki: DevPKI, tmp_path: Path) -> None:
    files = tmp_path / "files"
    files.mkdir()
    data = os.urandom(SIZE)
    (files / "big.bin").write_bytes(data)
    server_qlog, client_qlog = tmp_path / "qs", tmp_path / "qc"
    server, port = start_server(
        pki, "--files", str(files), "--scheduler", "backup", "--debug",
        "--qlog", str(server_qlog), stderr=subprocess.PIPE,
    )  # fmt: skip
    proxy = CuttingProxy(port, 2 << 20)
    other = CuttingProxy(port, 1 << 40)
    out = tmp_path / "big.out"
    try:
        get = subprocess.run(
            [*TCPLS, "get", "127.0.0.1", str(proxy.port), "/big.bin", "-o", str(out),
             "--cafile", str(pki.ca_file), "--join", f"127.0.0.1:{other.port}",
             "--debug", "--qlog", str(client_qlog)],
            capture_output=True,
            timeout=60,
        )  # fmt: skip
    finally:
        server.send_signal(2)
        server_err = server.communicate(timeout=10)[1].decode()
    client_err = get.stderr.decode()
    assert get.returncode == 0, client_err
    assert proxy.cut.is_set()
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(data).digest()

    # --debug: the life cycle and the failover, on both ends
    failover = re.compile(
        r"tcpls\.session: session with 127\.0\.0\.1:\d+: connection 0 failed \(.*\); "
        r"failover to connection 1: \d+ bytes in \d+ ranges"
    )
    for err in (client_err, server_err):
        assert "Traceback" not in err
        assert failover.search(err), err[-3000:]
        assert re.search(r"session with 127\.0\.0\.1:\d+: established: TCPLS, TLS_", err), err
        assert re.search(r"session with 127\.0\.0\.1:\d+: connection 1 joined", err), err
    assert re.search(r"session with 127\.0\.0\.1:\d+: closed", server_err), server_err
    assert len(re.findall(r"established: TCPLS", server_err)) == 1  # one line per session

    # --qlog: one file per session and end, in order
    (client_file,) = client_qlog.glob("*-client-*.sqlog")
    (server_file,) = server_qlog.glob("*-server-*.sqlog")
    for path, way in ((client_file, "record_received"), (server_file, "record_sent")):
        _, events = validate(path)
        started = first(events, "session_started")
        marks = failover_marks(events, 0, 1, way)
        assert started < marks[0] < marks[-1], marks
        assert events[-1]["name"] == "tcpls:session_closed"

    summary = subprocess.run(
        [*TCPLS, "qlog", "summary", str(client_file)], capture_output=True, text=True, check=True
    ).stdout
    assert "connection 0 FAILED" in summary and "data moves again on connection 1" in summary
