"""Chaos in the network lab: downloads while paths are blackholed, reset and restored at random;
and the close time of a joined session over delayed paths.

Every test builds its own lab (paths A = 0 and B = 1; the client reaches the server over
path i by connecting to 10.10.<i+1>.2). The server is ``tests/lab/chaos_server.py`` (the
handler of ``tcpls serve --files``, the session timers on its command line, a JSON line when
a session opens and closes) in the server namespace, listening on every address and
advertising B.

* ``test_chaos_downloads``: ``tests/lab/chaos_client.py`` in the client namespace runs
  ``TRANSFERS`` downloads of files of random sizes, ``CONCURRENCY`` at a time, each in a
  session of its own that connects over A and joins B (and joins a lost path again while
  the session still has the other one). Meanwhile :class:`ChaosDriver` picks a path and an
  action every 0.3-1.5 s. Every file must arrive whole (SHA-256), no transfer may fail, and
  the longest stall (the longest gap between two received pieces of any transfer) must stay
  under :data:`STALL_BOUND`. The figures are printed as one JSON line (``pytest -s``).
  The random seed is printed too; ``TCPLS_CHAOS_SEED=<seed>`` replays the same file sizes
  and the same sequence of choices (the timing of the network is not replayed).
* ``test_joined_session_closes_promptly``: over an asymmetric lab (50 Mbit/s + 10 ms,
  20 Mbit/s + 30 ms), connect over A, join B, download, ``aclose()``: the session must be
  closed, gracefully, within 0.5 s of the last byte, on both ends.

Timers, shortened to keep the test short (both ends): ``TCP_USER_TIMEOUT`` 1 s instead of
2 s (a sender sees a blackholed path die in 1-1.5 s); the client's TCP connect 2 s, its
handshake and each join 4 s (a connect towards a blackholed path fails sooner). Ping timing
(1 s + 1 s) and the rejoin timeout (30 s) keep their defaults.

Failures this test found, now fixed, each a regression case under
``tests/aio/failover_cases/`` (loopback, run by ``tests/aio/test_failover_cases.py``):

* a receiver with nothing unacknowledged never probed its connections, so a connection
  whose server end died silently was never declared dead (``silent_receiver.py``);
* the rejoin tried only advertised addresses and addresses that once connected
  (``rejoin_targets.py``);
* a join under way held back the rejoin until it timed out (``pending_join.py``).

Needs root (skips otherwise). Runtime about 1-2 minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tcpls.lab import CutMode, Lab, LabError, PathSpec, lab_available
from tests.lab.lab_util import JsonProcess

pytestmark = pytest.mark.lab

HERE = Path(__file__).resolve().parent
CLIENT_SCRIPT = HERE / "chaos_client.py"
SERVER_SCRIPT = HERE / "chaos_server.py"
PORT = 8443
SERVER_A = "10.10.1.2"
SERVER_B = "10.10.2.2"

TRANSFERS = 50
CONCURRENCY = 5
MIN_SIZE = 1 << 20
MAX_SIZE = 8 << 20
#: Per path. Slow enough that a transfer lasts a few chaos actions (5 at a time share the
#: two paths), fast enough for the whole test to take about a minute.
RATE_MBIT = 40
USER_TIMEOUT = 1.0
#: The chaos driver never leaves both paths cut for longer than MAX_BOTH_DOWN: it then
#: restores one of them. A path restored while the other one is cut stays up for PROTECT
#: seconds, long enough for a session to notice and rejoin (see STALL_BOUND).
MAX_BOTH_DOWN = 2.0
PROTECT = 5.0
#: The longest stall allowed. The worst outage the driver makes: both paths cut for
#: MAX_BOTH_DOWN (2 s), then one path up for PROTECT (5 s). A session notices a dead
#: connection at once after a reset, and after a blackhole when the sender's user timeout
#: (1 s) or the Ping (nothing for ping_after 1 s, then no answer for ping_timeout 1 s)
#: expires: up to 2 s after the cut. When every connection is dead it rejoins, trying the
#: address the server advertised (B) first; if that path is the one still cut, the attempt
#: costs up to max(1, 2 x user timeout) = 2 s, then it joins over the other (about one
#: RTT). Reinjection and TCP's restart take well under a second. So about 2 + 2 + 2 + 1 =
#: 7 s at worst, doubled for a loaded 2-core machine (client, server and test processes,
#: and the rest of the suite or a fuzzer on the other core): 15 s.
STALL_BOUND = 15.0
#: The whole run; a transfer that hangs fails the test here.
RUN_TIMEOUT = 170.0


# -- material -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Material:
    seed: int
    ca: str
    cert: str
    key: str
    files: str
    #: path -> (size, sha256)
    expected: dict[str, tuple[int, str]] = field(default_factory=dict)


def _seed() -> int:
    text = os.environ.get("TCPLS_CHAOS_SEED")
    return int(text) if text else random.SystemRandom().randrange(1 << 32)


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> Material:
    ok, reason = lab_available()
    if not ok:
        pytest.skip(reason)
    from tcpls.devcert import make_test_pki

    seed = _seed()
    print(f"\nchaos seed {seed} (replay: TCPLS_CHAOS_SEED={seed})")
    rng = random.Random(seed)
    base = tmp_path_factory.mktemp("chaos")
    pki = make_test_pki(base / "pki", ip_addresses=(SERVER_A, SERVER_B))
    files = base / "files"
    files.mkdir()
    expected = {}
    for i in range(TRANSFERS):
        size = rng.randint(MIN_SIZE, MAX_SIZE)
        data = rng.randbytes(size)
        name = f"f{i:02d}.bin"
        (files / name).write_bytes(data)
        expected[f"/{name}"] = (size, hashlib.sha256(data).hexdigest())
    return Material(
        seed=seed,
        ca=str(pki.ca_file),
        cert=str(pki.cert_file),
        key=str(pki.key_file),
        files=str(files),
        expected=expected,
    )


@contextlib.contextmanager
def build_lab(specs: list[PathSpec]) -> Iterator[Lab]:
    ok, reason = lab_available()
    if not ok:
        pytest.skip(reason)
    try:
        lab = Lab(specs)
    except LabError as exc:  # LabUnavailable included: no lab can be built here
        pytest.skip(f"cannot build the lab: {exc}")
    with lab:
        yield lab


# -- processes ------------------------------------------------------------------------------


def start_server(
    lab: Lab, m: Material, log: Path, *, advertise: tuple[str, ...] = ()
) -> JsonProcess:
    argv = [str(SERVER_SCRIPT), "--cert", m.cert, "--key", m.key, "--files", m.files]
    argv += ["--port", str(PORT), "--user-timeout", str(USER_TIMEOUT)]
    for address in advertise:
        argv += ["--advertise", address]
    server = JsonProcess(lab, "server", argv, log)
    server.wait_for("serving", 15)
    return server


# -- the chaos driver -----------------------------------------------------------------------


class ChaosDriver:
    """Every 0.3-1.5 s: one path at random, one action at random (blackhole, reset, restore).

    Both paths may be cut at once, but never for longer than ``max_both_down``: the driver
    then restores one of them. A path restored while the other one is cut (by chance or so)
    is left alone for ``protect`` seconds, long enough for the sessions to come back over
    it: the outages the driver makes are at most ``max_both_down`` long. Every action is
    logged with its ``time.monotonic()`` (the clock of the client's events).
    """

    ACTIONS = ("blackhole", "reset", "restore")

    def __init__(
        self, lab: Lab, rng: random.Random, *, max_both_down: float, protect: float
    ) -> None:
        self.lab = lab
        self.rng = rng
        self.max_both_down = max_both_down
        self.protect = protect
        self.actions: list[dict[str, Any]] = []
        self.both_down_total = 0.0
        self.longest_both_down = 0.0
        self.error: BaseException | None = None
        self._protected = [0.0, 0.0]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        for index in range(len(self.lab.paths)):
            self.lab.restore(index)

    def _cut(self, index: int) -> bool:
        return self.lab.paths[index].state != "up"

    def _apply(self, index: int, action: str, forced: bool = False) -> None:
        if action == "restore":
            if self._cut(index) and self._cut(1 - index):
                self._protected[index] = time.monotonic() + self.protect
            self.lab.restore(index)
        else:
            mode: CutMode = "blackhole" if action == "blackhole" else "reset"
            self.lab.cut(index, mode)
        entry = {"t": time.monotonic(), "path": "AB"[index], "action": action}
        if forced:
            entry["forced"] = True
        self.actions.append(entry)

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # reported by the test
            self.error = exc

    def _loop(self) -> None:
        rng = self.rng
        protected = self._protected
        both_since: float | None = None
        next_at = time.monotonic() + rng.uniform(0.3, 1.5)
        while not self._stop.wait(0.01):
            now = time.monotonic()
            if both_since is not None and now - both_since >= self.max_both_down:
                self._apply(rng.randrange(2), "restore", forced=True)
            elif now >= next_at:
                index = rng.randrange(2)
                action = rng.choice(self.ACTIONS)
                if action != "restore" and protected[index] > now:
                    index = 1 - index
                if action == "restore" or protected[index] <= now:
                    self._apply(index, action)
                next_at = time.monotonic() + rng.uniform(0.3, 1.5)
            now = time.monotonic()
            both = self._cut(0) and self._cut(1)
            if both and both_since is None:
                both_since = now
            elif not both and both_since is not None:
                self.both_down_total += now - both_since
                self.longest_both_down = max(self.longest_both_down, now - both_since)
                both_since = None
        if both_since is not None:
            self.both_down_total += time.monotonic() - both_since

    def around(self, t: float, before: float = 6.0, after: float = 1.0) -> list[str]:
        """The actions from ``before`` seconds before ``t`` to ``after`` seconds after it."""
        return [
            f"{a['t'] - t:+.2f}s {a['path']} {a['action']}{' (forced)' if 'forced' in a else ''}"
            for a in self.actions
            if t - before <= a["t"] <= t + after
        ]


# -- 1. chaos -----------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_chaos_downloads(material: Material, tmp_path: Path) -> None:
    """50 downloads over A and B while the paths fail and come back at random."""
    m = material
    rng = random.Random(m.seed + 1)
    order = list(m.expected)
    rng.shuffle(order)
    with build_lab([PathSpec(rate_mbit=RATE_MBIT), PathSpec(rate_mbit=RATE_MBIT)]) as lab:
        server = start_server(lab, m, tmp_path / "server.log", advertise=(f"{SERVER_B}:{PORT}",))
        argv = [str(CLIENT_SCRIPT), "--host", SERVER_A, "--port", str(PORT)]
        argv += ["--join", f"{SERVER_B}:{PORT}", "--cafile", m.ca, "--keep-paths"]
        argv += ["--concurrency", str(CONCURRENCY), "--user-timeout", str(USER_TIMEOUT)]
        argv += ["--connect-timeout", "2", "--handshake-timeout", "4", "--join-timeout", "4"]
        argv += ["--connect-deadline", "60"]
        for path in order:
            argv += ["--path", path]
        chaos = ChaosDriver(lab, rng, max_both_down=MAX_BOTH_DOWN, protect=PROTECT)
        started = time.monotonic()
        client = JsonProcess(lab, "client", argv, tmp_path / "client.log")
        chaos.start()
        hung = None
        try:
            done = client.wait_for("done", RUN_TIMEOUT)
        except AssertionError as exc:  # a transfer hangs, or the client died
            hung, done = str(exc), {"reconnects": None}
        finally:
            chaos.stop()
            seconds = time.monotonic() - started
            client.stop()
            server.stop()
        transfers = [e for e in client.seen if e["event"] == "transfer"]
        server_events = server.drain()

    assert chaos.error is None, f"the chaos driver failed: {chaos.error!r}"
    if hung is not None:
        missing = sorted(set(m.expected) - {r["path"] for r in transfers})
        raise AssertionError(
            f"seed {m.seed}: {len(missing)} transfers never ended ({missing}); the last "
            f"chaos actions: {chaos.around(time.monotonic(), before=20, after=0)}\n{hung}"
        )
    worst = max(transfers, key=lambda r: r["longest_stall"])
    counts = Counter(f"{a['path']} {a['action']}" for a in chaos.actions)
    figures = {
        "transfers": len(transfers),
        "ok": sum(1 for r in transfers if r["error"] is None),
        "bytes": sum(r.get("bytes", 0) for r in transfers),
        "seconds": round(seconds, 2),
        "longest_stall_s": worst["longest_stall"],
        "median_transfer_s": sorted(r["seconds"] for r in transfers)[len(transfers) // 2],
        "actions": len(chaos.actions),
        "action_counts": dict(sorted(counts.items())),
        "forced_restores": sum(1 for a in chaos.actions if a.get("forced")),
        "both_down_s": round(chaos.both_down_total, 2),
        "longest_both_down_s": round(chaos.longest_both_down, 2),
        "connect_retries": sum(r.get("connect_attempts", 1) - 1 for r in transfers),
        "longest_connect_s": max(r.get("connect_s", 0.0) for r in transfers),
        "joins": sum(r.get("joins", 0) for r in transfers),
        "reconnects": done["reconnects"],
        "longest_close_s": max(r.get("close_s", 0.0) for r in transfers),
        "close_errors": sum(1 for r in transfers if r.get("close_error")),
        "server_sessions_closed": sum(1 for e in server_events if e["event"] == "session_closed"),
        "seed": m.seed,
    }
    print("\nchaos: " + json.dumps(figures))
    everything = {"figures": figures, "transfers": transfers, "actions": chaos.actions}
    everything["server"] = server_events
    (tmp_path / "chaos.json").write_text(json.dumps(everything, indent=1))

    failures = []
    for r in sorted(transfers, key=lambda r: r["index"]):
        size, sha256 = m.expected[r["path"]]
        if r["error"] is not None:
            r.pop("traceback", None)
            failures.append(
                f"{r['path']}: {r['error']}\n{json.dumps(r)}\n"
                f"chaos actions before it: {chaos.around(r['t'], before=10, after=0)}"
            )
        elif r["bytes"] != size or r["sha256"] != sha256:
            failures.append(f"{r['path']}: {r['bytes']} bytes, sha256 {r['sha256']}")
    assert not failures, f"seed {m.seed}:\n" + "\n".join(failures) + client.tail()
    assert sorted(r["path"] for r in transfers) == sorted(m.expected)
    assert worst["longest_stall"] < STALL_BOUND, (
        f"seed {m.seed}: {worst['path']} stalled {worst['longest_stall']} s; "
        f"chaos actions around it: "
        f"{chaos.around(worst['stall_at'])}; {json.dumps(worst)}"
    )


# -- 2. close time of a joined session --------------------------------------------------------

CLOSE_SIZE = 4 << 20
CLOSE_ROUNDS = 5
CLOSE_BOUND = 0.5


@dataclass
class CloseRound:
    last_byte: float = 0.0
    stream_end: float = 0.0
    closed: float = 0.0
    error: str | None = None
    connections: int = 0
    sha256: str = ""


async def _close_rounds(m: Material, path: str) -> list[CloseRound]:
    import tcpls
    from tcpls.apps.fileserve import download

    class Discard:
        def write(self, data: bytes, /) -> int:
            return len(data)

    config = tcpls.ClientConfig(cafile=m.ca, user_timeout=USER_TIMEOUT)
    rounds = []
    for _ in range(CLOSE_ROUNDS):
        result = CloseRound()
        session = await tcpls.connect(SERVER_A, PORT, config=config)
        await session.join(SERVER_B, PORT)
        result.connections = len(session.connections)

        def piece(_: int, result: CloseRound = result) -> None:
            result.last_byte = time.monotonic()

        got = await download(session, path, Discard(), on_progress=piece)
        result.stream_end = time.monotonic()
        result.sha256 = got.sha256
        await session.aclose(timeout=3.0)
        result.closed = time.monotonic()
        error = session.error
        result.error = None if error is None else f"{error.__class__.__name__}: {error}"
        rounds.append(result)
    return rounds


def test_joined_session_closes_promptly(material: Material, tmp_path: Path) -> None:
    """A joined session over delayed paths is closed within 0.5 s of the last byte, both ends."""
    m = material
    path, (size, sha256) = min(m.expected.items(), key=lambda kv: abs(kv[1][0] - CLOSE_SIZE))
    specs = [PathSpec(rate_mbit=50, delay_ms=10), PathSpec(rate_mbit=20, delay_ms=30)]
    with build_lab(specs) as lab:
        server = start_server(lab, m, tmp_path / "server.log")
        try:
            # the client runs in this process, on a thread inside the client namespace
            rounds = lab.call("client", asyncio.run, _close_rounds(m, path))
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                closed = [e for e in server.drain() if e["event"] == "session_closed"]
                if len(closed) >= CLOSE_ROUNDS:
                    break
                time.sleep(0.05)
        finally:
            server.stop()
    closed = sorted(
        (e for e in server.drain() if e["event"] == "session_closed"), key=lambda e: e["session"]
    )
    client_s = [round(r.closed - r.last_byte, 3) for r in rounds]
    server_s = [round(e["t"] - r.last_byte, 3) for e, r in zip(closed, rounds, strict=False)]
    print(
        "\nclose time: "
        + json.dumps(
            {
                "paths": [s.describe() for s in specs],
                "bytes": size,
                "client_close_after_last_byte_s": client_s,
                "stream_end_after_last_byte_s": [
                    round(r.stream_end - r.last_byte, 3) for r in rounds
                ],
                "server_closed_after_last_byte_s": server_s,
            }
        )
    )
    for r in rounds:
        assert r.connections == 2
        assert r.sha256 == sha256
        assert r.error is None, r.error  # closed gracefully, not aborted
    assert max(client_s) <= CLOSE_BOUND, client_s
    assert len(closed) == CLOSE_ROUNDS, closed
    assert all(e["error"] is None for e in closed), closed
    assert max(server_s) <= CLOSE_BOUND, server_s
