"""Two tcpls servers behind HAProxy in TCP mode (docs/operations/load-balancer.md).

The lab has five namespaces of its own (built here, torn down by a fixture even when a
test fails)::

    client                  balancer (HAProxy)           switch (bridge)      m1, m2
      10.20.0.1 ==== A ==== 10.20.0.2 (VIP, :443)
                            10.30.0.2 ------------------ br0 --------------- 10.30.0.11 (m1)
      10.30.0.1 ==== B ============================== br0 ---------------- 10.30.0.12 (m2)

Path A (client to the balancer) and path B (client to the servers' own addresses) are
veth links shaped to ``RATE_MBIT`` both ways (tbf); the backend network behind the
balancer is not shaped. HAProxy (mode tcp, roundrobin, TCP health checks) forwards
``VIP:443`` to both servers. Each server is ``tcpls serve --files --workers 2`` with its
own ``--machine-id``, a shared ``--steering-key`` and ``--advertise`` of its own address:
sessions begin through the balancer, learn their server's address with New Address and
join it over path B. The client is ``tests/lab/lb_client.py``.

* ``test_sessions_join_their_backend``: sessions through the balancer reach both servers,
  join the address their server advertised (the joined connection goes straight to it,
  over B), and a download on each server is intact and runs over both paths: each carries a
  good share and the goodput is well above one path's rate.
* ``test_client_joins_by_itself``: the same with ``ClientConfig.join_advertised``: the
  sessions join their server's address without being told.
* ``test_join_through_the_balancer``: joins sent to the balancer's address land on either
  server: the right one accepts them, the other refuses them with ``illegal_parameter``
  (and counts them as another server's when it stops); the session goes on either way.
* ``test_backend_killed``: sessions on both servers download at once; one server's
  processes are killed (SIGKILL) a quarter of the way in: its sessions fail with a clear
  error, the other server's sessions finish intact, and HAProxy sends new sessions to the
  survivor.

Needs root and ``haproxy`` (``make system-deps`` installs it); skips otherwise. Runtime
about 20 s. ``pytest -s`` prints the figures.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tcpls.lab import PathSpec, lab_available
from tcpls.lab.netns import run_in_namespace
from tcpls.lab.system import disable_ipv6_default, run_command, run_parallel
from tcpls.lab.teardown import delete_namespaces, destroy_sockets, kill_namespace_processes
from tcpls.lab.topology import veth_qdisc_lines
from tests.lab.lab_util import JsonProcess

pytestmark = pytest.mark.lab

HERE = Path(__file__).resolve().parent
CLIENT_SCRIPT = HERE / "lb_client.py"

VIP = "10.20.0.2"
VIP_PORT = 443
CLIENT_A = "10.20.0.1"
CLIENT_B = "10.30.0.1"
BALANCER_BACK = "10.30.0.2"
PORT = 8443
#: machine ID -> its own (unicast) address
MACHINES = {1: "10.30.0.11", 2: "10.30.0.12"}
#: Per path, both ways: 16 MiB take about 4.6 s over one path, 2.3 s over both.
RATE_MBIT = 30
WORKERS = 2

SIZES = {"tiny.bin": 256 << 10, "small.bin": 2 << 20, "mid.bin": 8 << 20, "big.bin": 16 << 20}


def backend_of(machine: int) -> str:
    return f"{MACHINES[machine]}:{PORT}"


def machine_of(backend: str) -> int:
    return next(m for m in MACHINES if backend_of(m) == backend)


def report(name: str, **numbers: Any) -> None:
    print(f"\n{name}: " + json.dumps(numbers))


def haproxy_binary() -> str | None:
    return shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if os.access(p, os.X_OK)),
        None,
    )


# -- the lab ------------------------------------------------------------------------------


class BalancerLab:
    """The five namespaces above; :meth:`close` kills what runs in them and deletes them.

    ``popen``/``run`` take a role (``client``, ``balancer``, ``switch``, ``m1``, ``m2``);
    :class:`JsonProcess` only calls ``popen``.
    """

    ROLES = ("client", "balancer", "switch", "m1", "m2")

    def __init__(self, rate_mbit: float) -> None:
        name = f"tcplslb-{secrets.token_hex(3)}"
        self.ns = {role: f"{name}-{role}" for role in self.ROLES}
        self.children: list[subprocess.Popen[Any]] = []
        self.created: list[str] = []
        try:
            self._build(PathSpec(rate_mbit=rate_mbit))
        except BaseException:
            self.close()
            raise

    def _build(self, spec: PathSpec) -> None:
        ns = self.ns
        for role in self.ROLES:
            run_command(["ip", "netns", "add", ns[role]])
            self.created.append(ns[role])
            run_in_namespace(ns[role], disable_ipv6_default)
        veths = [
            ("client", "pa", "balancer", "pa"),  # path A
            ("client", "pb", "switch", "pc"),  # path B
            ("balancer", "eth1", "switch", "plb"),
            ("m1", "eth0", "switch", "pm1"),
            ("m2", "eth0", "switch", "pm2"),
        ]
        batch = "".join(
            f"link add name {a_dev} netns {ns[a]} type veth peer name {b_dev} netns {ns[b]}\n"
            for a, a_dev, b, b_dev in veths
        )
        run_command(["ip", "-batch", "-"], batch)
        ip_lines: dict[str, list[str]] = {role: ["link set dev lo up"] for role in self.ROLES}

        def address(role: str, dev: str, ip: str) -> None:
            ip_lines[role] += [f"addr add {ip}/24 dev {dev}", f"link set dev {dev} up"]

        address("client", "pa", CLIENT_A)
        address("client", "pb", CLIENT_B)
        address("balancer", "pa", VIP)
        address("balancer", "eth1", BALANCER_BACK)
        address("m1", "eth0", MACHINES[1])
        address("m2", "eth0", MACHINES[2])
        ip_lines["switch"].append("link add name br0 type bridge")
        for port in ("pc", "plb", "pm1", "pm2"):
            ip_lines["switch"] += [f"link set dev {port} master br0", f"link set dev {port} up"]
        ip_lines["switch"].append("link set dev br0 up")
        run_parallel(
            [
                (["ip", "-n", ns[role], "-batch", "-"], "\n".join(lines) + "\n")
                for role, lines in ip_lines.items()
            ]
        )
        # path A: both ends of the client-balancer veth; path B: the client's end and the
        # switch port towards the client
        tc_lines = {
            "client": veth_qdisc_lines("pa", spec) + veth_qdisc_lines("pb", spec),
            "balancer": veth_qdisc_lines("pa", spec),
            "switch": veth_qdisc_lines("pc", spec),
        }
        run_parallel(
            [
                (["tc", "-n", ns[role], "-batch", "-"], "\n".join(lines) + "\n")
                for role, lines in tc_lines.items()
            ]
        )
        self._wait_links_up()

    def _wait_links_up(self, timeout: float = 5.0) -> None:
        """Wait until every link is up and every bridge port forwards.

        The kernel reports a carrier (and a bridge enables a port) from a deferred task that
        may run up to a second later; until then packets are dropped, and the first
        connects wait for a SYN retransmission.
        """
        deadline = time.monotonic() + timeout
        while True:
            outputs = run_parallel(
                [(["ip", "-n", self.ns[role], "-j", "link", "show"], None) for role in self.ROLES]
                + [(["bridge", "-n", self.ns["switch"], "-j", "link", "show"], None)]
            )
            links = [link for out in outputs[:-1] for link in json.loads(out)]
            down = [
                link["ifname"]
                for link in links
                if link["ifname"] != "lo" and link.get("operstate") != "UP"
            ]
            down += [
                p["ifname"] for p in json.loads(outputs[-1]) if p.get("state") != "forwarding"
            ]
            if not down:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"links still down after {timeout:g} s: {down}")
            time.sleep(0.05)

    def popen(self, role: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        proc: subprocess.Popen[Any] = subprocess.Popen(
            ["ip", "netns", "exec", self.ns[role], *argv], **kwargs
        )
        self.children.append(proc)
        return proc

    def run(self, role: str, argv: Sequence[str]) -> str:
        return run_command(["ip", "netns", "exec", self.ns[role], *argv])

    def pids(self, role: str) -> set[int]:
        out = run_command(["ip", "netns", "pids", self.ns[role]], check=False)
        return {int(tok) for tok in out.split() if tok.isdigit()}

    def kill(self, role: str) -> set[int]:
        """SIGKILL every process in ``role``'s namespace (all started by this test)."""
        pids = self.pids(role)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return pids

    def close(self) -> None:
        namespaces = list(self.created)
        for proc in self.children:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        for proc in self.children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(2)
        with contextlib.suppress(Exception):
            kill_namespace_processes(namespaces)
        with contextlib.suppress(Exception):
            destroy_sockets(namespaces)
        with contextlib.suppress(Exception):
            delete_namespaces(namespaces)
        self.created.clear()


# -- material and fixtures ----------------------------------------------------------------


@dataclass(frozen=True)
class Material:
    ca: str
    cert: str
    key: str
    steering_key: str
    files: str
    sha256: dict[str, str]
    base: Path


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> Material:
    ok, reason = lab_available()
    if not ok:
        pytest.skip(reason)
    if haproxy_binary() is None:
        pytest.skip("haproxy not found (Debian: apt-get install haproxy, or make system-deps)")
    from tcpls.devcert import make_test_pki

    base = tmp_path_factory.mktemp("balancer")
    # One certificate for the service, named by the balancer's address: only the first
    # connection of a session, the one through the balancer, has a handshake.
    pki = make_test_pki(base / "pki", hostnames=("tcpls.lab.test",), ip_addresses=(VIP,))
    key = base / "steering.key"
    key.write_text(secrets.token_hex(16) + "\n")
    files = base / "files"
    files.mkdir()
    sha256 = {}
    for name, size in SIZES.items():
        data = os.urandom(size)
        (files / name).write_bytes(data)
        sha256[name] = hashlib.sha256(data).hexdigest()
    return Material(
        ca=str(pki.ca_file),
        cert=str(pki.cert_file),
        key=str(pki.key_file),
        steering_key=str(key),
        files=str(files),
        sha256=sha256,
        base=base,
    )


@pytest.fixture(scope="module")
def lab(material: Material) -> Iterator[BalancerLab]:
    built = BalancerLab(RATE_MBIT)
    try:
        yield built
    finally:
        built.close()


#: As docs/operations/load-balancer.md recommends. The small socket buffers towards the
#: client and from the servers keep HAProxy from absorbing megabytes of a download: a
#: server's scheduler sees the real rate of path A only when HAProxy pushes back. With the
#: kernel's default (autotuned) buffers, path A looked faster than it is and carried 56 to
#: 80 % of a download, and the goodput was 36 to 51 Mbit/s instead of 55. The log (one
#: line per connection, which machine it went to) is the test's.
HAPROXY_CONFIG = """\
global
    log stdout format raw local0 info
    maxconn 4096
    tune.sndbuf.client 131072
    tune.rcvbuf.server 131072

defaults
    mode tcp
    log global
    option tcplog
    timeout connect 2s
    timeout check 1s
    timeout client 10m
    timeout server 10m
    retries 2
    option redispatch 1

frontend tcpls
    bind {vip}:{vip_port}
    default_backend tcpls_servers

backend tcpls_servers
    balance roundrobin
    server m1 {m1}:{port} check inter 1s fall 3 rise 2
    server m2 {m2}:{port} check inter 1s fall 3 rise 2
"""


class Deployment:
    """Both servers and HAProxy, started for one test (their logs in ``directory``)."""

    def __init__(self, lab: BalancerLab, m: Material, directory: Path) -> None:
        self.lab = lab
        self.material = m
        self.directory = directory
        self.servers: dict[int, subprocess.Popen[bytes]] = {}
        for machine in MACHINES:
            self.servers[machine] = self._start_server(machine)
        for machine in MACHINES:
            self._wait_log(self.log(machine), "serving", self.servers[machine])
        config = directory / "haproxy.cfg"
        config.write_text(
            HAPROXY_CONFIG.format(
                vip=VIP, vip_port=VIP_PORT, m1=MACHINES[1], m2=MACHINES[2], port=PORT
            )
        )
        out = open(directory / "haproxy.log", "wb")  # noqa: SIM115 - the child holds it
        binary = haproxy_binary()
        assert binary is not None
        self.haproxy = lab.popen(
            "balancer", [binary, "-db", "-f", str(config)], stdout=out, stderr=subprocess.STDOUT
        )
        out.close()
        deadline = time.monotonic() + 10
        while f"{VIP}:{VIP_PORT}" not in lab.run("balancer", ["ss", "-l", "-t", "-n", "-H"]):
            if self.haproxy.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"HAProxy did not start:\n{self.haproxy_log()}")
            time.sleep(0.05)

    def log(self, machine: int) -> Path:
        return self.directory / f"m{machine}.log"

    def _start_server(self, machine: int) -> subprocess.Popen[bytes]:
        m = self.material
        argv = [sys.executable, "-m", "tcpls", "serve", "--files", m.files]
        argv += ["--cert", m.cert, "--key", m.key, "--host", MACHINES[machine]]
        argv += ["--port", str(PORT), "--advertise", backend_of(machine)]
        argv += ["--workers", str(WORKERS), "--machine-id", str(machine)]
        argv += ["--steering-key", m.steering_key, "--grace", "2"]
        out = open(self.log(machine), "wb")  # noqa: SIM115 - the child holds it
        proc = self.lab.popen(f"m{machine}", argv, stdout=out, stderr=subprocess.STDOUT)
        out.close()
        return proc

    @staticmethod
    def _wait_log(log: Path, text: str, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + 20
        while text not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"{log.name}: no {text!r}:\n{log.read_text(errors='replace')}"
                )
            time.sleep(0.05)

    def stop_server(self, machine: int) -> str:
        """Stop a server gracefully (SIGTERM); its log, with the workers' counters."""
        proc = self.servers[machine]
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(15)
        return self.log(machine).read_text(errors="replace")

    def haproxy_log(self) -> str:
        return (self.directory / "haproxy.log").read_text(errors="replace")

    def tails(self, size: int = 3000) -> str:
        """The end of HAProxy's and the servers' logs, for a failure's message."""
        logs = [self.directory / "haproxy.log", *(self.log(m) for m in MACHINES)]
        return "".join(
            f"\n{log.name}:\n{log.read_text(errors='replace')[-size:]}"
            for log in logs
            if log.exists()
        )

    def stop(self) -> None:
        for machine in MACHINES:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.stop_server(machine)
        if self.haproxy.poll() is None:
            self.haproxy.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.haproxy.wait(5)


@pytest.fixture
def deployment(lab: BalancerLab, material: Material, tmp_path: Path) -> Iterator[Deployment]:
    started = Deployment(lab, material, tmp_path)
    try:
        yield started
    finally:
        started.stop()


class Client(JsonProcess):
    """``lb_client.py`` in the client namespace."""

    def __init__(self, lab: BalancerLab, m: Material, log: Path, *args: str) -> None:
        argv = [str(CLIENT_SCRIPT), "--vip", VIP, "--port", str(VIP_PORT), "--cafile", m.ca]
        super().__init__(lab, "client", [*argv, *args], log)  # type: ignore[arg-type]

    def result(self, deployment: Deployment, timeout: float = 30) -> dict[str, Any]:
        event = self.wait_for("result", timeout)
        self.proc.wait(10)
        if event["error"] is not None:
            raise AssertionError(f"{event.get('traceback') or event['error']}{deployment.tails()}")
        return event


def events(client: Client, name: str) -> list[dict[str, Any]]:
    return [e for e in client.drain() if e["event"] == name]


def mbit(size: int, seconds: float) -> float:
    return size * 8 / seconds / 1e6


# -- a, b: sessions join their backends; downloads aggregate ------------------------------


def check_joined(client: Client, count: int) -> Counter[str]:
    """a. Every session began through the balancer, learnt its backend by New Address and
    joined that address over path B, not through the balancer; both backends got sessions.
    Returns the sessions per backend."""
    sessions = events(client, "session")
    joined = events(client, "joined")
    assert len(sessions) == len(joined) == count
    for s in sessions:
        # (with join_advertised, the join may have begun already)
        conn = next(c for c in s["connections"] if c["id"] == 0)
        assert conn["remote"] == [VIP, VIP_PORT], s
        assert s["backend"] in {backend_of(m) for m in MACHINES}, s
    spread = Counter(s["backend"] for s in sessions)
    assert set(spread) == {backend_of(m) for m in MACHINES}, spread
    for j in joined:
        new = next(c for c in j["connections"] if c["id"] == j["id"])
        host, port = j["backend"].split(":")
        assert new["remote"] == [host, int(port)], j
        assert new["local"][0] == CLIENT_B, j
    return spread


def download_figures(client: Client, material: Material, name: str) -> dict[str, Any]:
    """b. The download on each backend is intact; its goodput and each path's share."""
    downloads = events(client, "download")
    assert {d["backend"] for d in downloads} == {backend_of(m) for m in MACHINES}
    figures = {}
    for d in downloads:
        assert d["bytes"] == SIZES[name] and d["sha256"] == material.sha256[name]
        per = d["per_connection"]
        by_path = {
            "A": sum(c["bytes"] for c in per.values() if c["remote"] == [VIP, VIP_PORT]),
            "B": sum(c["bytes"] for c in per.values() if c["remote"] != [VIP, VIP_PORT]),
        }
        total = sum(by_path.values())
        figures[f"m{machine_of(d['backend'])}"] = {
            "goodput_mbit": round(mbit(d["bytes"], d["seconds"]), 1),
            "seconds": round(d["seconds"], 2),
            "share_A": round(by_path["A"] / total, 3),
            "share_B": round(by_path["B"] / total, 3),
            "path_A_mbit": round(mbit(by_path["A"], d["seconds"]), 1),
            "path_B_mbit": round(mbit(by_path["B"], d["seconds"]), 1),
        }
    return figures


def test_sessions_join_their_backend(
    lab: BalancerLab, material: Material, deployment: Deployment, tmp_path: Path
) -> None:
    client = Client(
        lab, material, tmp_path / "client.log",
        "--mode", "spread", "--sessions", "4", "--baseline", "/small.bin",
        "--download", "/big.bin",
    )  # fmt: skip
    client.result(deployment, 60)
    spread = check_joined(client, 4)
    # b. a download on each backend, over both connections
    (baseline,) = events(client, "baseline")
    assert baseline["sha256"] == material.sha256["small.bin"]
    one_path = mbit(baseline["bytes"], baseline["seconds"])
    figures = download_figures(client, material, "big.bin")
    report(
        "sessions join their backend",
        sessions_per_backend=dict(spread),
        one_path_baseline_mbit=round(one_path, 1),
        rate_mbit=RATE_MBIT,
        downloads=figures,
    )
    for name, f in figures.items():
        assert min(f["share_A"], f["share_B"]) > 0.3, (name, f)
        assert f["goodput_mbit"] > 1.4 * RATE_MBIT, (name, f)
        assert f["goodput_mbit"] > 1.4 * one_path, (name, f, one_path)


def test_client_joins_by_itself(
    lab: BalancerLab, material: Material, deployment: Deployment, tmp_path: Path
) -> None:
    """``ClientConfig.join_advertised``: the sessions join their machine's address as soon
    as it is advertised, without the application asking."""
    client = Client(
        lab, material, tmp_path / "client.log",
        "--mode", "spread", "--sessions", "2", "--follow", "--download", "/mid.bin",
    )  # fmt: skip
    client.result(deployment, 30)
    spread = check_joined(client, 2)
    figures = download_figures(client, material, "mid.bin")
    report("join_advertised", sessions_per_backend=dict(spread), downloads=figures)
    for name, f in figures.items():
        assert min(f["share_A"], f["share_B"]) > 0.3, (name, f)


# -- c: joins sent to the balancer's address ----------------------------------------------

_FOREIGN = re.compile(r"worker \d+ stopped: .* (\d+) refused as another server's")
_PASSED = re.compile(r"worker \d+ stopped: \d+ sessions, (\d+) joins passed to another worker")


def test_join_through_the_balancer(
    lab: BalancerLab, material: Material, deployment: Deployment, tmp_path: Path
) -> None:
    client = Client(
        lab, material, tmp_path / "client.log",
        "--mode", "balancer-joins", "--sessions", "2", "--baseline", "/tiny.bin",
        "--attempts", "8", "--want-refusals", "2",
    )  # fmt: skip
    client.result(deployment, 60)
    sessions = events(client, "session")
    attempts = events(client, "attempt")
    home = {s["index"]: s["backend"] for s in sessions}
    assert set(home.values()) == {backend_of(m) for m in MACHINES}, home
    outcomes = Counter(a["outcome"] for a in attempts)
    refused_by: Counter[int] = Counter()  # machine -> joins it refused
    for a in attempts:
        # the session goes on after each attempt, whatever its outcome
        assert a["check"].get("sha256") == material.sha256["tiny.bin"], a
        assert a["backend"] == home[a["index"]], a
        if a["outcome"] == "refused":
            assert "illegal_parameter" in (a["alert"] + a["message"]), a
            other = next(m for m in MACHINES if backend_of(m) != home[a["index"]])
            refused_by[other] += 1
        else:
            assert a["outcome"] == "accepted", a
            assert a["remote"] == [VIP, VIP_PORT], a
    assert outcomes["refused"] >= 1, outcomes
    # the other server refused them, as another server's
    logs = {m: deployment.stop_server(m) for m in MACHINES}
    counted = {m: sum(int(n) for n in _FOREIGN.findall(logs[m])) for m in MACHINES}
    for m in MACHINES:
        assert len(_FOREIGN.findall(logs[m])) == WORKERS, logs[m]
    report(
        "joins through the balancer",
        attempts=len(attempts),
        outcomes=dict(outcomes),
        refused_by_client_count={f"m{m}": n for m, n in refused_by.items()},
        refused_by_server_count={f"m{m}": n for m, n in counted.items()},
        passed_between_workers={
            f"m{m}": sum(int(n) for n in _PASSED.findall(logs[m])) for m in MACHINES
        },
        refusal=next((a["message"] for a in attempts if a["outcome"] == "refused"), None),
    )
    assert counted == {m: refused_by[m] for m in MACHINES}, (counted, refused_by)


# -- d: a backend killed mid-session ------------------------------------------------------


def test_backend_killed(
    lab: BalancerLab, material: Material, deployment: Deployment, tmp_path: Path
) -> None:
    size = SIZES["mid.bin"]
    client = Client(
        lab, material, tmp_path / "client.log",
        "--mode", "kill", "--sessions", "4", "--download", "/mid.bin",
    )  # fmt: skip
    sessions = [client.wait_for("session", 20) for _ in range(4)]
    home = {s["index"]: machine_of(s["backend"]) for s in sessions}
    assert set(home.values()) == set(MACHINES), home
    for s in sessions:
        assert len(s["connections"]) == 2, s
    # every download is a quarter through: kill machine 1
    progress: dict[int, int] = {}
    while len(progress) < 4 or min(progress.values()) < size // 4:
        event = client.wait_until(lambda e: e["event"] == "progress", 30)
        progress[event["index"]] = event["bytes"]
    killed_at = time.monotonic()
    killed = lab.kill("m1")
    assert killed, "no process in m1"
    client.result(deployment, 60)
    transfers = {t["index"]: t for t in events(client, "transfer")}
    assert sorted(transfers) == [0, 1, 2, 3]
    failed_after = {}
    for index, t in transfers.items():
        if home[index] == 1:
            assert t["error"] is not None, t
            assert t["bytes"] < size, t
            failed_after[index] = round(t["error_t"] - killed_at, 2)
        else:
            assert t["error"] is None, t
            assert t["bytes"] == size and t["sha256"] == material.sha256["mid.bin"], t
    # new sessions go to the survivor once HAProxy's checks saw m1 gone
    time.sleep(1.0)
    after = Client(
        lab, material, tmp_path / "after.log",
        "--mode", "spread", "--sessions", "2", "--download", "/tiny.bin",
    )  # fmt: skip
    after.result(deployment)
    late = events(after, "session")
    report(
        "backend killed",
        sessions={f"m{m}": sum(1 for h in home.values() if h == m) for m in MACHINES},
        killed_at_bytes=progress,
        failed_after_s=failed_after,
        errors=sorted({t["error"] for t in transfers.values() if t["error"]}),
        session_errors=sorted({t["session_error"] for t in transfers.values() if t["error"]}),
        survivors_s={i: round(t["seconds"], 2) for i, t in transfers.items() if not t["error"]},
        new_sessions=[s["backend"] for s in late],
    )
    assert all(s["backend"] == backend_of(2) for s in late), late
    for seconds in failed_after.values():
        assert seconds < 10, failed_after
