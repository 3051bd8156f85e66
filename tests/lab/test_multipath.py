"""Multipath in the network lab: failover, break-before-make, migration, join tokens.

Every test builds its own lab (two namespaces joined by paths A = 0 and B = 1; the client
reaches the server over path i by connecting to 10.10.<i+1>.2), runs the server and the
client as separate processes in their namespaces and tears everything down at the end.

* The server is ``python -m tcpls serve --files DIR`` (the command line), except where the
  server's own scheduler matters: the sender of a download chooses the connection that
  carries it, and ``tcpls serve`` has no ``--scheduler`` (always ``aggregate``), so the
  make-before-break tests run ``tests/lab/mp_server.py`` (same file handler,
  ``scheduler="backup"``).
* The client is ``tests/lab/mp_client.py`` (asyncio API): it prints JSON events (progress
  with the bytes per connection, joins, migration, the result with the sha256 and the
  longest stall between two consecutive chunks). The test cuts a path once a third of the
  file has arrived.

Needs root (skips otherwise). Runtime about 30 s. ``pytest -s`` prints each test's numbers.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tcpls.lab import CutMode, Lab, PathSpec, lab_available
from tests.lab.lab_util import JsonProcess

pytestmark = pytest.mark.lab

HERE = Path(__file__).resolve().parent
CLIENT_SCRIPT = HERE / "mp_client.py"
SERVER_SCRIPT = HERE / "mp_server.py"
PORT = 8443
SERVER_A = "10.10.1.2"
SERVER_B = "10.10.2.2"
BIG = 64 << 20
SMALL = 4 << 20
RATE_MBIT = 150  # 64 MiB take ~3.7 s per path
#: The plaintext illegal_parameter alert of a rejected join (design: Joins).
ALERT_ILLEGAL_PARAMETER = bytes.fromhex("1503030002022f")


@dataclass(frozen=True)
class Material:
    ca: str
    cert: str
    key: str
    files: str
    big_sha256: str
    small_sha256: str


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> Material:
    ok, reason = lab_available()
    if not ok:
        pytest.skip(reason)
    from tcpls.devcert import make_test_pki

    base = tmp_path_factory.mktemp("multipath")
    pki = make_test_pki(base / "pki", ip_addresses=(SERVER_A, SERVER_B))
    files = base / "files"
    files.mkdir()
    digests = {}
    for name, size in (("big.bin", BIG), ("small.bin", SMALL)):
        data = os.urandom(size)
        (files / name).write_bytes(data)
        digests[name] = hashlib.sha256(data).hexdigest()
    return Material(
        ca=str(pki.ca_file),
        cert=str(pki.cert_file),
        key=str(pki.key_file),
        files=str(files),
        big_sha256=digests["big.bin"],
        small_sha256=digests["small.bin"],
    )


@pytest.fixture
def lab() -> Iterator[Lab]:
    ok, reason = lab_available()
    if not ok:
        pytest.skip(reason)
    with Lab([PathSpec(rate_mbit=RATE_MBIT), PathSpec(rate_mbit=RATE_MBIT)]) as built:
        yield built


# -- processes -----------------------------------------------------------------------------


def start_server(
    lab: Lab,
    m: Material,
    log: Path,
    *,
    cli: bool = True,
    scheduler: str = "aggregate",
    scheduler_flag: str | None = None,
    advertise: tuple[str, ...] = (),
    user_timeout_ms: int = 500,
) -> subprocess.Popen[bytes]:
    """Start the file server in the server namespace and wait until it listens."""
    if cli:
        argv = [sys.executable, "-m", "tcpls", "serve", "--host", "0.0.0.0"]
        argv += ["--user-timeout", str(user_timeout_ms)]
        if scheduler_flag:
            argv += ["--scheduler", scheduler_flag]
    else:
        argv = [sys.executable, str(SERVER_SCRIPT), "--scheduler", scheduler]
        argv += ["--user-timeout", str(user_timeout_ms / 1000)]
    argv += ["--cert", m.cert, "--key", m.key, "--port", str(PORT), "--files", m.files]
    for address in advertise:
        argv += ["--advertise", address]
    out = open(log, "wb")  # noqa: SIM115 - closed when the lab is gone, with the process
    proc = lab.popen("server", argv, stdout=out, stderr=subprocess.STDOUT)
    out.close()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if "serving" in log.read_text(errors="replace"):
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"the server did not start:\n{log.read_text(errors='replace')}")


class Client(JsonProcess):
    """``mp_client.py`` in the client namespace; its JSON events arrive on a queue."""

    def __init__(self, lab: Lab, m: Material, log: Path, *args: str) -> None:
        argv = [str(CLIENT_SCRIPT), "--host", SERVER_A, "--port", str(PORT)]
        argv += ["--cafile", m.ca, *args]
        super().__init__(lab, "client", argv, log, stdin=subprocess.PIPE)

    def result(self, timeout: float = 60) -> dict[str, Any]:
        event = self.wait_for("result", timeout)
        self.proc.wait(10)
        return event


def at_a_third(event: dict[str, Any]) -> bool:
    return bool(event["event"] == "progress" and event["bytes"] >= BIG // 3)


def check_intact(result: dict[str, Any], sha256: str, size: int) -> None:
    assert result["error"] is None, result.get("traceback") or result["error"]
    assert result["bytes"] == size
    assert result["sha256"] == sha256


def report(name: str, **numbers: Any) -> None:
    print(f"\n{name}: " + json.dumps(numbers))


def _stall_after(result: dict[str, Any], cut_at: float) -> float:
    """The longest stall that started within 50 ms before the cut or later."""
    return max((s[1] for s in result["stalls"] if s[0] >= cut_at - 0.05), default=0.0)


# -- 1. make-before-break -----------------------------------------------------------------


# blackhole: the connection is suspect within a probe timeout (design: Failure detection);
# measured 0.086-0.092 s (0.76-0.95 s before it). reset: 7-25 ms (5-21 ms before).
@pytest.mark.parametrize(("cut", "limit"), [("blackhole", 0.5), ("reset", 0.1)])
def test_make_before_break(
    lab: Lab, material: Material, tmp_path: Path, cut: CutMode, limit: float
) -> None:
    """64 MiB over A with B joined (backup): A cut at a third; intact, short stall."""
    start_server(lab, material, tmp_path / "server.log", cli=False, scheduler="backup")
    client = Client(
        lab,
        material,
        tmp_path / "client.log",
        "--path", "/big.bin", "--scheduler", "backup", "--user-timeout", "0.5",
        "--join", f"{SERVER_B}:{PORT}",
    )  # fmt: skip
    connected = client.wait_for("connected")
    assert sorted(c["id"] for c in connected["connections"]) == [0, 1]
    progress = client.wait_until(at_a_third)
    cut_at = time.monotonic()
    lab.cut(0, cut)
    # the data flowed on A (connection 0) until the cut
    on_a = progress["per_connection"].get("0", 0)
    assert on_a > 0.9 * sum(progress["per_connection"].values()), progress
    result = client.result()
    check_intact(result, material.big_sha256, BIG)
    assert [c["id"] for c in result["connections"]] == [1], result["connections"]
    report(
        f"make-before-break {cut}",
        max_stall_s=round(result["max_stall"], 3),
        stall_after_cut_s=round(_stall_after(result, cut_at), 3),
        cut_at_bytes=progress["bytes"],
        seconds=round(result["seconds"], 2),
    )
    assert result["max_stall"] < limit, result["stalls"]


# -- 2. break-before-make -----------------------------------------------------------------


@pytest.mark.parametrize("cut", ["reset", "blackhole"])
def test_break_before_make(lab: Lab, material: Material, tmp_path: Path, cut: CutMode) -> None:
    """One connection over A; the server advertises B; A is cut: the client rejoins over B."""
    start_server(lab, material, tmp_path / "server.log", advertise=(f"{SERVER_B}:{PORT}",))
    client = Client(
        lab,
        material,
        tmp_path / "client.log",
        "--path", "/big.bin", "--user-timeout", "0.5",
    )  # fmt: skip
    connected = client.wait_for("connected")
    assert [c["id"] for c in connected["connections"]] == [0]
    progress = client.wait_until(at_a_third)
    cut_at = time.monotonic()
    lab.cut(0, cut)
    result = client.result()
    check_intact(result, material.big_sha256, BIG)
    assert result["peer_addresses"] == {"0": [SERVER_B, PORT]}
    (conn,) = result["connections"]
    assert conn["id"] != 0
    assert conn["remote"] == [SERVER_B, PORT]
    assert conn["bytes_received"] > 0.5 * BIG
    report(
        f"break-before-make {cut}",
        max_stall_s=round(result["max_stall"], 3),
        stall_after_cut_s=round(_stall_after(result, cut_at), 3),
        cut_at_bytes=progress["bytes"],
        seconds=round(result["seconds"], 2),
    )


# -- 3. migration -------------------------------------------------------------------------


def _established(lab: Lab, server_ip: str) -> list[str]:
    out = lab.run("server", ["ss", "-t", "-n", "-H", "state", "established"], check=True)
    return [line for line in out.stdout.splitlines() if f"{server_ip}:{PORT}" in line]


def test_migration(lab: Lab, material: Material, tmp_path: Path) -> None:
    """A session on A migrates to B at a third of a download: intact, old connection gone."""
    start_server(lab, material, tmp_path / "server.log")
    client = Client(
        lab,
        material,
        tmp_path / "client.log",
        "--path", "/big.bin", "--user-timeout", "0.5",
        "--migrate-to", f"{SERVER_B}:{PORT}", "--migrate-at", str(BIG // 3),
    )  # fmt: skip
    connected = client.wait_for("connected")
    assert [c["id"] for c in connected["connections"]] == [0]
    assert len(_established(lab, SERVER_A)) == 1
    migrated = client.wait_for("migrated")
    assert [c["id"] for c in migrated["connections"]] == [migrated["id"]]
    (new,) = migrated["connections"]
    assert new["remote"] == [SERVER_B, PORT]
    # the server closed its end of the old connection too
    deadline = time.monotonic() + 3
    while _established(lab, SERVER_A) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _established(lab, SERVER_A) == []
    assert len(_established(lab, SERVER_B)) == 1
    result = client.result()
    check_intact(result, material.big_sha256, BIG)
    assert [c["id"] for c in result["connections"]] == [migrated["id"]]
    migrating = next(e for e in client.seen if e["event"] == "migrating")
    report(
        "migration",
        migrate_s=round(migrated["t"] - migrating["t"], 3),
        max_stall_s=round(result["max_stall"], 3),
        bytes_on_new=result["connections"][0]["bytes_received"],
        seconds=round(result["seconds"], 2),
    )


# -- 4. invalid and reused tokens ---------------------------------------------------------


def _forged_join(lab: Lab, token: bytes, server_ip: str) -> bytes:
    """Send a join ClientHello with ``token`` from the client namespace; the reply bytes."""
    from tcpls.tls.hello import build_join_client_hello

    message, _ = build_join_client_hello(token, server_name=SERVER_A)
    record = bytes([22, 3, 1]) + len(message).to_bytes(2, "big") + message
    sock = lab.socket("client")
    try:
        sock.settimeout(5)
        sock.connect((server_ip, PORT))
        sock.sendall(record)
        reply = b""
        while True:  # until the server closes (or 5 s)
            try:
                data = sock.recv(4096)
            except (TimeoutError, ConnectionResetError):
                break
            if not data:
                break
            reply += data
        return reply
    finally:
        sock.close()


def test_bad_tokens_rejected(lab: Lab, material: Material, tmp_path: Path) -> None:
    """Joins with a random or an already used token get alert 47; the session goes on."""
    server = start_server(lab, material, tmp_path / "server.log")
    client = Client(
        lab,
        material,
        tmp_path / "client.log",
        "--mode", "tokens", "--path", "/small.bin", "--user-timeout", "0.5",
        "--join", f"{SERVER_B}:{PORT}",
    )  # fmt: skip
    warmup = client.wait_for("warmup")
    assert warmup["sha256"] == material.small_sha256
    used = bytes.fromhex(client.wait_for("token")["token"])
    joined = client.wait_for("joined")
    assert sorted(c["id"] for c in joined["connections"]) == [0, 1]
    connected = client.wait_for("connected")

    replies = {
        "random_A": _forged_join(lab, secrets.token_bytes(32), SERVER_A),
        "random_B": _forged_join(lab, secrets.token_bytes(32), SERVER_B),
        "used_B": _forged_join(lab, used, SERVER_B),
        "used_A": _forged_join(lab, used, SERVER_A),
    }
    for name, reply in replies.items():
        assert reply == ALERT_ILLEGAL_PARAMETER, f"{name}: {reply.hex()}"

    client.send_line("go")
    result = client.result()
    check_intact(result, material.small_sha256, SMALL)
    assert sorted(c["id"] for c in result["connections"]) == [0, 1]
    assert result["spare_tokens"] == connected["spare_tokens"]
    assert server.poll() is None
    report("tokens", replies={k: v.hex() for k, v in replies.items()})


# -- the client's scheduler and downloads ---------------------------------------------------


def test_server_backup_scheduler_keeps_download_on_first_connection(
    lab: Lab, material: Material, tmp_path: Path
) -> None:
    """Each end schedules what it sends: `tcpls serve --scheduler backup` keeps a download
    on the first connection while it lives, whatever the client's own scheduler."""
    start_server(lab, material, tmp_path / "server.log", scheduler_flag="backup")
    client = Client(
        lab,
        material,
        tmp_path / "client.log",
        "--path", "/big.bin", "--join", f"{SERVER_B}:{PORT}",
    )  # fmt: skip
    result = client.result()
    check_intact(result, material.big_sha256, BIG)
    by_id = {c["id"]: c["bytes_received"] for c in result["connections"]}
    report("server backup scheduler", bytes_received=by_id)
    assert by_id[1] < 0.05 * BIG, by_id
