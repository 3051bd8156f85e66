"""``tcpls tunnel`` in the network lab: a download through the tunnel survives a cut path.

Two namespaces joined by paths A = 0 and B = 1 (40 Mbit/s each). In the server
namespace, ``python -m http.server`` serves a 64 MiB file on its loopback, behind
``tcpls tunnel server --allow 127.0.0.1:8080``. In the client namespace,
``tcpls tunnel client`` connects over A, joins over B, and listens on 127.0.0.1:9000;
curl downloads the file through it. Once a third has arrived, one path is blackholed
(every packet dropped, both ways): the download goes on over the other and arrives
intact (sha256), in the same session (no new one opened); before the cut it went faster
than one path can carry (aggregation).

Needs root (skips otherwise). Runtime about 40 s. ``pytest -s`` prints each run's numbers.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tcpls.lab import Lab, PathSpec, lab_available

pytestmark = pytest.mark.lab

PORT = 8443
SERVER_A = "10.10.1.2"
SERVER_B = "10.10.2.2"
WEB = 8080
LISTEN = 9000
BIG = 64 << 20
#: 64 MiB take ~7 s over both paths, ~14 s over one. As in test_chaos.py: the receiver
#: holds what the other path brings while the sender detects the blackhole (1-1.5 s),
#: and at 100 Mbit/s per path that exceeds its 16 MiB reassembly limit
#: (``SessionTuning.max_reassembly_bytes``): the library then ends the session.
RATE_MBIT = 40


@dataclass(frozen=True)
class Material:
    ca: str
    cert: str
    key: str
    www: str
    sha256: str


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> Material:
    ok, reason = lab_available()
    if not ok:
        pytest.skip(reason)
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed (apt-get install curl)")
    from tcpls.devcert import make_test_pki

    base = tmp_path_factory.mktemp("tunnel")
    pki = make_test_pki(base / "pki", ip_addresses=(SERVER_A, SERVER_B))
    www = base / "www"
    www.mkdir()
    data = os.urandom(BIG)
    (www / "big.bin").write_bytes(data)
    return Material(
        ca=str(pki.ca_file),
        cert=str(pki.cert_file),
        key=str(pki.key_file),
        www=str(www),
        sha256=hashlib.sha256(data).hexdigest(),
    )


@pytest.fixture
def lab() -> Iterator[Lab]:
    ok, reason = lab_available()
    if not ok:
        pytest.skip(reason)
    with Lab([PathSpec(rate_mbit=RATE_MBIT), PathSpec(rate_mbit=RATE_MBIT)]) as built:
        yield built


def _start(lab: Lab, side: str, argv: list[str], log: Path, ready: str) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a namespace, its output in ``log``; wait for ``ready`` there."""
    out = open(log, "wb")  # noqa: SIM115 - the child holds it
    proc: subprocess.Popen[bytes] = lab.popen(side, argv, stdout=out, stderr=subprocess.STDOUT)  # type: ignore[arg-type]
    out.close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if ready in log.read_text(errors="replace"):
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"{argv[:5]} did not start:\n{log.read_text(errors='replace')}")


def _established(lab: Lab) -> int:
    """TCP connections from the client namespace to the tunnel server."""
    out = lab.run("client", ["ss", "-t", "-n", "-H", "state", "established"], check=True)
    return sum(1 for line in out.stdout.splitlines() if f":{PORT} " in line + " ")


@pytest.mark.parametrize("cut", [0, 1], ids=["path_A_first", "path_B_joined"])
def test_download_through_the_tunnel_survives_a_cut_path(
    lab: Lab, material: Material, tmp_path: Path, cut: int
) -> None:
    tcpls = [sys.executable, "-m", "tcpls", "tunnel"]
    _start(
        lab, "server",
        [sys.executable, "-c",
         "import http.server, functools, sys; "
         "h = functools.partial(http.server.SimpleHTTPRequestHandler, "
         f"directory={material.www!r}); "
         f"s = http.server.ThreadingHTTPServer(('127.0.0.1', {WEB}), h); "
         "print('listening', flush=True); s.serve_forever()"],
        tmp_path / "http.log", "listening",
    )  # fmt: skip
    _start(
        lab, "server",
        [*tcpls, "server", "--cert", material.cert, "--key", material.key, "--port", str(PORT),
         "--allow", f"127.0.0.1:{WEB}", "--user-timeout", "500"],
        tmp_path / "server.log", "serving on",
    )  # fmt: skip
    client_log = tmp_path / "client.log"
    client = _start(
        lab, "client",
        [*tcpls, "client", SERVER_A, str(PORT), "--cafile", material.ca,
         "--join", f"{SERVER_B}:{PORT}", "--listen", f"127.0.0.1:{LISTEN}",
         "--to", f"127.0.0.1:{WEB}", "--user-timeout", "500"],
        client_log, "through",
    )  # fmt: skip
    assert _established(lab) == 2  # A and the join over B

    out = tmp_path / "big.bin"
    started = time.monotonic()
    curl = lab.popen(
        "client",
        ["curl", "-sS", "--max-time", "120", "-o", str(out), f"http://127.0.0.1:{LISTEN}/big.bin"],
        stderr=subprocess.PIPE,
    )
    cut_at = None
    while curl.poll() is None:
        if cut_at is None and out.exists() and out.stat().st_size >= BIG // 3:
            lab.cut(cut, "blackhole")
            cut_at = time.monotonic()
            at_bytes = out.stat().st_size
        time.sleep(0.01)
    finished = time.monotonic()
    _, err = curl.communicate()
    assert cut_at is not None, "the download ended before a third arrived"
    logs = {
        name: (tmp_path / f"{name}.log").read_text(errors="replace")
        for name in ("client", "server")
    }
    assert curl.returncode == 0, (err, logs)
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    assert digest == material.sha256
    assert client.poll() is None
    log = client_log.read_text(errors="replace")
    assert "session ended" not in log, log  # the same session carried it all along
    before = at_bytes / (cut_at - started)
    # both paths carried it before the cut: faster than one path can go (~96 % of its rate)
    assert before > 1.2 * RATE_MBIT * 1e6 / 8, before
    print(
        "\ntunnel download, path "
        + "AB"[cut]
        + " blackholed: "
        + json.dumps(
            {
                "seconds": round(finished - started, 2),
                "after_cut_s": round(finished - cut_at, 2),
                "cut_at_bytes": at_bytes,
                "MB_per_s_before_cut": round(before / 1e6, 1),
                "MB_per_s": round(BIG / (finished - started) / 1e6, 1),
            }
        )
    )
