"""Tests of the network lab (tcpls.lab). The ``lab`` ones need root and skip otherwise."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path as FsPath

import pytest

import tcpls
from tcpls.lab import (
    STATE_DIR,
    Lab,
    LabError,
    LabUnavailable,
    PathSpec,
    in_namespace,
    lab_available,
)
from tcpls.lab.bpf import drop_all_bytecode, random_loss_bytecode
from tcpls.lab.cli import main as cli_main

_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


@pytest.fixture
def need_lab() -> None:
    ok, reason = lab_available()
    if not ok:
        pytest.skip(reason)


def _netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _root_links() -> set[str]:
    out = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    return {line.split()[0].split("@")[0] for line in out.splitlines() if line.strip()}


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _listener(lab: Lab, ip: str) -> tuple[socket.socket, int]:
    srv = lab.socket("server")
    srv.bind((ip, 0))
    srv.listen(16)
    return srv, srv.getsockname()[1]


def _connected_pair(
    lab: Lab, index: int, user_timeout_ms: int | None = None
) -> tuple[socket.socket, socket.socket]:
    path = lab.paths[index]
    srv, port = _listener(lab, path.server_ip)
    cli = lab.socket("client")
    if user_timeout_ms is not None:
        cli.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, user_timeout_ms)
    cli.settimeout(5)
    cli.connect((path.server_ip, port))
    peer, _ = srv.accept()
    srv.close()
    return cli, peer


def _watch(sock: socket.socket, sending: bool, out: dict[str, object]) -> None:
    """Send (or receive) until an error; record the errno name and the time."""
    sock.settimeout(10)
    try:
        if sending:
            chunk = b"x" * 65536
            while True:
                sock.sendall(chunk)
        else:
            while sock.recv(65536):
                pass
            out["error"] = "EOF"
    except OSError as exc:
        out["error"] = errno.errorcode.get(exc.errno or 0, str(exc))
    out["time"] = time.monotonic()


def _connect_works(lab: Lab, index: int) -> bool:
    path = lab.paths[index]
    srv, port = _listener(lab, path.server_ip)
    with srv, lab.socket("client") as cli:
        cli.settimeout(3)
        cli.connect((path.server_ip, port))
        peer, _ = srv.accept()
        with peer:
            cli.sendall(b"ping")
            return peer.recv(4) == b"ping"


# ---------------------------------------------------------------------------------------------
# Unit tests (no root needed).


def test_pathspec_validation() -> None:
    assert PathSpec().kind == "veth"
    assert PathSpec(delay_ms=5).kind == "tun"
    assert PathSpec(queue_kb=64).queue_bytes == 65536
    assert PathSpec(rate_mbit=100, delay_ms=50).queue_bytes == 1_250_000  # one BDP
    assert PathSpec(rate_mbit=1).queue_bytes == 150_000  # 100 packets
    for bad in ({"rate_mbit": 0}, {"delay_ms": -1}, {"loss": 1.5}, {"queue_kb": 0}):
        with pytest.raises(ValueError):
            PathSpec(**bad)
    spec = PathSpec(rate_mbit=20, delay_ms=10, loss=0.01, queue_kb=32)
    assert PathSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec


def test_bpf_bytecode() -> None:
    assert drop_all_bytecode() == "1,6 0 0 2"
    prog = random_loss_bytecode(0.25)
    assert prog == "4,32 0 0 4294963256,53 0 1 1073741824,6 0 0 4294967295,6 0 0 2"
    assert random_loss_bytecode(1.0) == drop_all_bytecode()
    with pytest.raises(ValueError):
        random_loss_bytecode(-0.1)


def test_cli_usage_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli_main(["up", "--loss", "3"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "invalid loss" in err
    assert cli_main(["status", "--name", "bad name"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "invalid lab name" in err


# ---------------------------------------------------------------------------------------------
# Lab tests (root).


@pytest.mark.lab
def test_setup_and_teardown_leave_nothing(need_lab: None) -> None:
    before_links = _root_links()
    lab = Lab([PathSpec(rate_mbit=50), PathSpec(delay_ms=5, loss=0.01)], name_prefix="tlab")
    try:
        assert lab.setup_seconds < 1.0
        assert {lab.client_ns, lab.server_ns} <= _netns_names()
        assert lab.client_ns.startswith("tlab-") and lab.client_ns.endswith("-c")
        assert [(p.client_ip, p.server_ip) for p in lab.paths] == [
            ("10.10.1.1", "10.10.1.2"),
            ("10.10.2.1", "10.10.2.2"),
        ]
        assert [p.kind for p in lab.paths] == ["veth", "tun"]
        status = lab.status()
        forwarder_pid = status["forwarder"]["pid"]
        assert status["forwarder"]["alive"]
        assert {q["kind"] for q in status["paths"][0]["qdiscs"]["client"]} >= {"tbf", "clsact"}
        assert status["paths"][1]["links"]["server"] is not None
        assert status["paths"][1]["forwarder"]["c2s"]["dropped_cut"] == 0
        assert os.path.exists(os.path.join(STATE_DIR, f"{lab.name}.json"))
        sleeper = lab.popen("server", ["sleep", "60"])
    finally:
        lab.close()
    assert not {lab.client_ns, lab.server_ns} & _netns_names()
    assert not {"veth0", "tun1"} & (_root_links() - before_links)  # nothing leaked to the root
    assert not _pid_alive(forwarder_pid)
    assert sleeper.wait(5) is not None
    assert not os.path.exists(os.path.join(STATE_DIR, f"{lab.name}.json"))
    lab.close()  # idempotent
    with pytest.raises(LabError):
        lab.socket("client")


@pytest.mark.lab
def test_cleanup_after_errors(need_lab: None, monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = f"tfail{os.getpid()}"

    def leftovers() -> set[str]:
        return {ns for ns in _netns_names() if ns.startswith(prefix)}

    with pytest.raises(RuntimeError), Lab([PathSpec()], name_prefix=prefix) as lab:
        srv, port = _listener(lab, lab.paths[0].server_ip)
        cli = lab.socket("client")
        cli.connect((lab.paths[0].server_ip, port))
        raise RuntimeError("boom")
    assert not leftovers()
    cli.close()
    srv.close()

    import tcpls.lab.control as control_module

    def failing_start(*args: object, **kwargs: object) -> None:
        raise LabError("injected failure")

    monkeypatch.setattr(control_module, "start_forwarder", failing_start)
    with pytest.raises(LabError, match="injected"):
        Lab([PathSpec(delay_ms=1)], name_prefix=prefix)
    assert not leftovers()


@pytest.mark.lab
def test_tcp_over_each_path(need_lab: None) -> None:
    specs = [PathSpec(), PathSpec(rate_mbit=50), PathSpec(delay_ms=2), PathSpec(loss=0.01)]
    with Lab(specs) as lab:
        for path in lab.paths:
            cli, peer = _connected_pair(lab, path.index)
            with cli, peer:
                assert cli.getsockname()[0] == path.client_ip
                assert peer.getpeername()[0] == path.client_ip
                cli.sendall(b"hello " * 1000)
                got = b""
                while len(got) < 6000:
                    got += peer.recv(65536)
                assert got == b"hello " * 1000

        # One asyncio loop owning sockets in both namespaces.
        async def echo_roundtrip(index: int) -> bytes:
            path = lab.paths[index]

            async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                w.write(await r.readexactly(5))
                await w.drain()
                w.close()

            listen = lab.socket("server")
            listen.bind((path.server_ip, 0))
            server = await asyncio.start_server(handle, sock=listen)
            conn = lab.socket("client")
            conn.setblocking(False)
            await asyncio.get_running_loop().sock_connect(conn, listen.getsockname())
            reader, writer = await asyncio.open_connection(sock=conn)
            writer.write(b"howdy")
            data = await reader.readexactly(5)
            writer.close()
            server.close()
            await server.wait_closed()
            return data

        for path in lab.paths:
            assert asyncio.run(echo_roundtrip(path.index)) == b"howdy"


@pytest.mark.lab
def test_in_namespace_and_commands(need_lab: None) -> None:
    with Lab([PathSpec(), PathSpec(delay_ms=1)]) as lab:
        with in_namespace(lab.client_ns):
            devices = set(os.listdir("/proc/sys/net/ipv4/conf"))
        assert {"veth0", "tun1"} <= devices
        assert "veth0" not in os.listdir("/proc/sys/net/ipv4/conf")
        result = lab.run("server", ["ip", "-br", "addr"])
        assert result.returncode == 0
        assert "10.10.1.2" in result.stdout and "10.10.2.2" in result.stdout
        assert lab.call("client", socket.gethostname) == socket.gethostname()
        with pytest.raises(ValueError):
            lab.socket("middle")  # type: ignore[arg-type]
        with pytest.raises(LabError):
            lab.cut(7, "down")


@pytest.mark.lab
def test_loss_is_applied(need_lab: None) -> None:
    # 10 % loss each way; UDP datagrams one way: expect about 90 % delivered.
    with Lab([PathSpec(loss=0.1), PathSpec(delay_ms=1, loss=0.1)]) as lab:
        for path in lab.paths:
            rx = lab.socket("server", type=socket.SOCK_DGRAM)
            rx.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, 8 << 20)
            rx.bind((path.server_ip, 0))
            tx = lab.socket("client", type=socket.SOCK_DGRAM)
            count = 3000
            for i in range(count):
                tx.sendto(b"d" * 64, rx.getsockname())
                if i % 100 == 99:
                    time.sleep(0.002)
            time.sleep(0.05)
            rx.setblocking(False)
            received = 0
            while True:
                try:
                    rx.recv(100)
                except BlockingIOError:
                    break
                received += 1
            rx.close()
            tx.close()
            assert 0.85 * count < received < 0.95 * count, (path.kind, received)


@pytest.mark.lab
def test_tbf_rate(need_lab: None) -> None:
    with Lab([PathSpec(rate_mbit=20)]) as lab:
        goodput = _goodput_mbit(lab, 0, 3_000_000)
    assert 0.80 * 20 <= goodput <= 1.05 * 20, goodput


def _goodput_mbit(lab: Lab, index: int, size: int) -> float:
    cli, peer = _connected_pair(lab, index)
    result: dict[str, float] = {}

    def receive() -> None:
        got, start = 0, 0.0
        while got < size:
            chunk = peer.recv(1 << 20)
            if not chunk:
                break
            if not got:
                start = time.monotonic()
            got += len(chunk)
        result["mbit"] = got * 8 / (time.monotonic() - start) / 1e6

    thread = threading.Thread(target=receive)
    thread.start()
    cli.sendall(b"r" * size)
    thread.join(30)
    cli.close()
    peer.close()
    return result["mbit"]


@pytest.mark.lab
def test_delay_path_rtt_and_rate(need_lab: None) -> None:
    with Lab([PathSpec(delay_ms=10), PathSpec(rate_mbit=20, delay_ms=10)]) as lab:
        path = lab.paths[0]
        srv, port = _listener(lab, path.server_ip)
        rtts = []
        for _ in range(5):
            with lab.socket("client") as cli:
                start = time.monotonic()
                cli.connect((path.server_ip, port))
                rtts.append((time.monotonic() - start) * 1000)
                srv.accept()[0].close()
        srv.close()
        assert min(rtts) >= 18 and statistics.median(rtts) <= 35, rtts
        goodput = _goodput_mbit(lab, 1, 2_000_000)
        assert 0.80 * 20 <= goodput <= 1.05 * 20, goodput
        stats = lab.status()["paths"][1]["forwarder"]
        assert stats["c2s"]["forwarded_bytes"] > 2_000_000


@pytest.mark.lab
@pytest.mark.parametrize("delay_ms", [0.0, 5.0], ids=["veth", "tun"])
def test_blackhole_cut(need_lab: None, delay_ms: float) -> None:
    with Lab([PathSpec(rate_mbit=50, delay_ms=delay_ms)]) as lab:
        cli, peer = _connected_pair(lab, 0, user_timeout_ms=500)
        out: dict[str, object] = {}
        sender = threading.Thread(target=_watch, args=(cli, True, out), daemon=True)
        sender.start()
        time.sleep(0.3)
        cut_at = time.monotonic()
        lab.cut(0, "blackhole")
        assert lab.paths[0].state == "blackhole"
        sender.join(5)
        assert out.get("error") == "ETIMEDOUT", out
        assert isinstance(out["time"], float) and out["time"] - cut_at < 3.0
        cli.close()
        peer.close()
        lab.restore(0)
        assert lab.status()["paths"][0]["state"] == "up"
        assert _connect_works(lab, 0)


@pytest.mark.lab
@pytest.mark.parametrize("delay_ms", [0.0, 5.0], ids=["veth", "tun"])
def test_reset_cut(need_lab: None, delay_ms: float) -> None:
    with Lab([PathSpec(rate_mbit=50, delay_ms=delay_ms), PathSpec()]) as lab:
        cli, peer = _connected_pair(lab, 0)
        other_cli, other_peer = _connected_pair(lab, 1)
        sender_out: dict[str, object] = {}
        receiver_out: dict[str, object] = {}
        threads = [
            threading.Thread(target=_watch, args=(cli, True, sender_out), daemon=True),
            threading.Thread(target=_watch, args=(peer, False, receiver_out), daemon=True),
        ]
        for thread in threads:
            thread.start()
        time.sleep(0.3)
        cut_at = time.monotonic()
        lab.cut(0, "reset")
        for thread in threads:
            thread.join(3)
        for out in (sender_out, receiver_out):
            assert out.get("error") in ("ECONNABORTED", "ECONNRESET"), out
            assert isinstance(out["time"], float) and out["time"] - cut_at < 1.0
        assert lab.paths[0].state == "down"
        # New connects over the cut path fail at once; the other path is untouched.
        with lab.socket("client") as fresh, pytest.raises(OSError) as info:
            fresh.connect((lab.paths[0].server_ip, 9))
        assert info.value.errno == errno.ENETUNREACH
        other_cli.sendall(b"still")
        assert other_peer.recv(5) == b"still"
        for s in (cli, peer, other_cli, other_peer):
            s.close()
        lab.restore(0)
        assert _connect_works(lab, 0)


@pytest.mark.lab
def test_down_cut(need_lab: None) -> None:
    with Lab([PathSpec(), PathSpec(delay_ms=1)]) as lab:
        for path in lab.paths:
            lab.cut(path.index, "down")
            with lab.socket("client") as fresh, pytest.raises(OSError) as info:
                fresh.connect((path.server_ip, 9))
            assert info.value.errno == errno.ENETUNREACH
            lab.restore(path.index)
            assert _connect_works(lab, path.index)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    source = str(FsPath(tcpls.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "tcpls.lab", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )


@pytest.fixture
def cli_lab_name(need_lab: None) -> Iterator[str]:
    name = f"tcplstest{os.getpid()}"
    yield name
    with contextlib.suppress(LabError):
        Lab.down(name)


@pytest.mark.lab
def test_cli_round_trip(cli_lab_name: str) -> None:
    name = cli_lab_name
    up = _cli("up", "--name", name, "--rate", "50", "--delay", "0", "5")
    assert up.returncode == 0, up.stderr
    assert f"{name}-c" in up.stdout
    assert {f"{name}-c", f"{name}-s"} <= _netns_names()

    status = _cli("status", "--name", name, "--json")
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    forwarder_pid = data["forwarder"]["pid"]
    assert data["forwarder"]["alive"] and _pid_alive(forwarder_pid)
    assert [p["kind"] for p in data["paths"]] == ["veth", "tun"]

    # The persistent lab works from another process (this one) through attach().
    lab = Lab.attach(name)
    assert not lab.owned
    assert _connect_works(lab, 0) and _connect_works(lab, 1)

    for index, mode in ((1, "blackhole"), (0, "reset")):  # "down": see test_down_cut
        cut = _cli("cut", str(index), mode, "--name", name)
        assert cut.returncode == 0, cut.stderr
        data = json.loads(_cli("status", "--name", name, "--json").stdout)
        assert data["paths"][index]["state"] == ("blackhole" if mode == "blackhole" else "down")
        restore = _cli("restore", str(index), "--name", name)
        assert restore.returncode == 0, restore.stderr
    assert _connect_works(Lab.attach(name), 1)
    human = _cli("status", "--name", name)
    assert human.returncode == 0 and "forwarder" in human.stdout

    bad = _cli("cut", "9", "down", "--name", name)
    assert bad.returncode == 1
    assert bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr

    down = _cli("down", "--name", name)
    assert down.returncode == 0, down.stderr
    assert not {f"{name}-c", f"{name}-s"} & _netns_names()
    assert not _pid_alive(forwarder_pid)
    missing = _cli("status", "--name", name)
    assert missing.returncode == 1 and "no lab named" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_lab_unavailable_is_clear(monkeypatch: pytest.MonkeyPatch) -> None:
    import tcpls.lab.system as lab_module

    monkeypatch.setattr(lab_module, "_probe", lambda: (False, "the network lab needs root"))
    assert lab_available() == (False, "the network lab needs root")
    with pytest.raises(LabUnavailable, match="needs root") as info:
        Lab([PathSpec()])
    assert info.value.reason == "the network lab needs root"
