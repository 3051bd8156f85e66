"""Time to first response on a 50 ms path: full handshake, 0-RTT, 0-RTT + TCP Fast Open, joins.

Needs root (network namespaces; see :mod:`tcpls.lab`). Run as root from the repository root::

    .venv/bin/python benchmarks/first_response.py              # 15 rounds, ~1 min
    .venv/bin/python benchmarks/first_response.py --runs 5     # quick check

A lab is built with one path of ``--rate`` Mbit/s (100) and ``--delay`` ms one-way delay (25,
so 50 ms RTT) through the lab's userspace forwarder; ``net.ipv4.tcp_fastopen`` is set to 3
inside both lab namespaces (the sysctl is per network namespace; the root namespace's value is
not touched, and the namespaces' own values are put back before they are deleted).

One server process in the server namespace runs two tcpls servers, both with
``fastopen=True`` and ``max_early_data=16384``: TCPLS mode (``ServerConfig(tcpls=True)``) and
plain TLS mode (``ServerConfig(tcpls=False)``, the client also says ``tcpls=False``), plus a
TCP echo port for the RTT. For every stream the server reads one line and answers one line
(which carries the server's ``time.monotonic()`` when the handler got the session, when the
request line was complete, how many of its bytes came as early data, and how many bytes of
data the client's SYN carried, seen by an ``AF_PACKET`` socket in the server namespace; the
clock is the same for both processes, so the client places those instants on its own time
line: ``established_ms``, ``server_session_ms``, ``server_request_ms``).

One client process in the client namespace measures, interleaved, ``--runs`` rounds after
``--warmup`` unmeasured ones; each round does, in each mode:

* ``full``: ``connect()`` (full handshake, no ticket, no Fast Open), ``open_stream()``, write the
  request; the time is from the start of ``connect()`` to the first byte of the answer read.
* ``0rtt``: resumption with the ticket of an earlier session (tickets are single-use: every
  session passes its newest ticket on), ``early_data=True`` and the request as
  ``connect(early_data=...)``; same clock. Checked: resumed, early data accepted.
* ``0rtt_tfo``: the same with ``fastopen=True`` (the kernel's Fast Open cookie for the server
  is fetched by one unmeasured Fast Open connection before the first round). Checked with the
  client namespace's TcpExt counters: ``TCPFastOpenActive`` rose (the SYN carried data).
* ``0rtt_tfo_x25519``: the same with the client offering only x25519 (one 32-byte key share
  instead of X25519MLKEM768's 1,216 + x25519's), a diagnostic: with the default groups the
  resumption ClientHello (1,540 bytes) plus the early data do not fit in a SYN (1,420 bytes
  of data on a 1,500-byte MTU), so the rest waits for the SYN-ACK and Fast Open saves nothing.

and, in TCPLS mode only (joins need TCPLS), on an established session:

* ``join``: ``session.join(server, port)`` from its start to its return (TCP connect, join
  ClientHello with a token, the server's answer), without Fast Open;
* ``join_tfo``: the same with ``fastopen=True`` (the join's ClientHello rides in the SYN).

The path RTT is measured in the same run: the median TCP ``connect()`` time to the echo port
(SYN to SYN-ACK) and the median one-byte echo round trip on that connection. Every figure is
given in ms and in RTTs (ms / median connect RTT); the expectation is about 3 RTT for
``full`` (SYN, TLS, request), 2 for ``0rtt``, 1 for ``0rtt_tfo`` (and its x25519 variant),
2 for ``join`` and 1 for ``join_tfo``. ``holds`` is true when the median is within 0.5 RTT
of it. The baseline is the full handshake of the same mode (``over_full``).

``--groups x25519`` (or any list) gives both ends those key exchange groups in every
measurement; by default the library default (the client sends key shares for X25519MLKEM768
and x25519).

Prints one JSON line on stdout; a table and progress on stderr. The script also runs itself
as the client (``_client``) and the server (``_server``) inside the namespaces.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Literal

HERE = Path(__file__).resolve().parent
ECHO_PORT = 5400
PORTS = {"tcpls": 5401, "plain": 5402}
MODES = ("tcpls", "plain")
KINDS = ("full", "0rtt", "0rtt_tfo", "0rtt_tfo_x25519")
JOIN_KINDS = ("join", "join_tfo")
EXPECTED_RTT = {
    "full": 3.0,
    "0rtt": 2.0,
    "0rtt_tfo": 1.0,
    "0rtt_tfo_x25519": 1.0,
    "join": 2.0,
    "join_tfo": 1.0,
}
TOLERANCE_RTT = 0.5
MAX_EARLY_DATA = 16384
REQUEST = b"GET /hello\n"
FASTOPEN_SYSCTL = "/proc/sys/net/ipv4/tcp_fastopen"
SIDES: tuple[Literal["client", "server"], ...] = ("client", "server")


def _groups(text: str | None) -> list[str] | None:
    if not text or text == "default":
        return None
    return [g.strip() for g in text.split(",") if g.strip()]


# -- server (runs in the server namespace) ----------------------------------------------------


class _SynSniffer:
    """Payload bytes of every SYN that reaches the server ports (an ``AF_PACKET`` socket in
    the server namespace, on a thread): what TCP Fast Open carried in the SYN."""

    def __init__(self) -> None:
        self.syn_data: dict[tuple[str, int], int] = {}
        self.error: str | None = None
        try:
            self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
        except OSError as exc:
            self.error = str(exc)
            return
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        ports = set(PORTS.values())
        while True:
            try:
                data, address = self._sock.recvfrom(65535)
            except OSError:
                return
            if address[2] == socket.PACKET_OUTGOING or len(data) < 20 or data[9] != 6:
                continue
            ihl = (data[0] & 15) * 4
            src_port, dst_port, _, _, offset_flags = struct.unpack_from("!HHIIH", data, ihl)
            if dst_port in ports and offset_flags & 0x12 == 0x02:  # SYN without ACK
                payload = len(data) - ihl - (offset_flags >> 12) * 4
                self.syn_data[(socket.inet_ntoa(data[12:16]), src_port)] = payload


async def _server(args: argparse.Namespace) -> None:
    import tcpls
    from tcpls.errors import ConnectionClosedError

    sniffer = _SynSniffer()

    async def handler(session: Any) -> None:
        t_session = time.monotonic()
        remote = session.connections[0].remote_address
        while True:
            try:
                reader, writer = await session.accept_stream()
            except ConnectionClosedError:
                return
            request = await reader.readuntil(b"\n")
            t_request = time.monotonic()
            answer = {
                "t_session": t_session,
                "t_request": t_request,
                "early": reader.early_data_bytes,
                "request_bytes": len(request),
                "syn_data": sniffer.syn_data.get(tuple(remote)) if remote else None,
                "sniffer_error": sniffer.error,
            }
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
            with contextlib.suppress(Exception):
                await reader.read()
            writer.write_eof()
            await writer.drain()

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(4096):
                writer.write(data)
                await writer.drain()
        writer.close()

    servers = []
    for mode, port in PORTS.items():
        config = tcpls.ServerConfig(
            certfile=args.cert,
            keyfile=args.key,
            tcpls=mode == "tcpls",
            fastopen=True,
            max_early_data=MAX_EARLY_DATA,
            cipher_suites=[args.cipher_suite],
            groups=_groups(args.groups),
        )
        servers.append(await tcpls.serve(handler, "0.0.0.0", port, config=config))
    echo_server = await asyncio.start_server(echo, "0.0.0.0", ECHO_PORT)
    print(json.dumps({"event": "serving"}), flush=True)
    # the parent closes our stdin to stop us
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    echo_server.close()
    for server in servers:
        server.close()


# -- client (runs in the client namespace) ----------------------------------------------------


def _tcp_ext() -> dict[str, int]:
    """The TcpExt counters of this process's network namespace."""
    with open("/proc/net/netstat") as f:
        lines = f.read().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            return dict(zip(names.split()[1:], map(int, values.split()[1:]), strict=True))
    return {}


def _tfo_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    keys = [k for k in after if k.startswith("TCPFastOpen")]
    return {k: after[k] - before.get(k, 0) for k in keys if after[k] != before.get(k, 0)}


class _Client:
    def __init__(self, args: argparse.Namespace) -> None:
        import tcpls

        self.tcpls = tcpls
        self.args = args
        self.host = args.host
        self.tickets: dict[str, list[Any]] = {m: [] for m in MODES}
        self.base = {
            mode: tcpls.ClientConfig(
                cafile=args.cafile,
                server_name="localhost",
                tcpls=mode == "tcpls",
                cipher_suites=[args.cipher_suite],
                groups=_groups(args.groups),
            )
            for mode in MODES
        }

    def config(
        self, mode: str, *, ticket: Any = None, fastopen: bool = False, groups: Any = None
    ) -> Any:
        base = self.base[mode]
        if groups is not None:
            base = dataclasses.replace(base, groups=groups)
        if ticket is None:
            return dataclasses.replace(base, fastopen=fastopen)
        return dataclasses.replace(base, session_ticket=ticket, early_data=True, fastopen=fastopen)

    async def _finish(
        self, session: Any, mode: str, reader: Any, writer: Any, first: bytes
    ) -> dict[str, Any]:
        """Read the rest of the answer, keep the newest ticket, close (untimed)."""
        writer.write_eof()
        rest = first + await asyncio.wait_for(reader.read(), 10)
        deadline = time.monotonic() + 2
        while session.session_ticket is None and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        if session.session_ticket is not None:
            self.tickets[mode].append(session.session_ticket)
        await session.aclose(timeout=5)
        return json.loads(rest.split(b"\n", 1)[0]) if rest else {}

    async def ticket(self, mode: str) -> Any:
        """A fresh ticket of ``mode`` (from an unmeasured full handshake when none is left)."""
        if not self.tickets[mode]:
            await self.exchange(mode, "full")
        if not self.tickets[mode]:
            raise RuntimeError(f"the {mode} server sent no session ticket")
        return self.tickets[mode].pop()

    async def exchange(self, mode: str, kind: str) -> dict[str, Any]:
        """One measured request/answer of ``kind`` in ``mode``."""
        tcpls = self.tcpls
        port = PORTS[mode]
        ticket = await self.ticket(mode) if kind != "full" else None
        config = self.config(
            mode,
            ticket=ticket,
            fastopen=kind.startswith("0rtt_tfo"),
            groups=["x25519"] if kind.endswith("_x25519") else None,
        )
        early = REQUEST if ticket is not None else None
        counters = _tcp_ext()
        t0 = time.monotonic()
        session = await tcpls.connect(self.host, port, config=config, early_data=early)
        t_established = time.monotonic()
        reader, writer = await session.open_stream()
        if early is None:
            writer.write(REQUEST)
        first = await asyncio.wait_for(reader.read(1), 10)
        t_first = time.monotonic()
        if not first:
            raise RuntimeError(f"{mode} {kind}: no answer")
        tfo = _tfo_delta(counters, _tcp_ext())
        resumed = session.session_resumed
        accepted = session.early_data_accepted
        negotiated = session.tcpls_negotiated
        group = session.group
        suite = session.cipher_suite
        server = await self._finish(session, mode, reader, writer, first)
        result = {
            "ms": (t_first - t0) * 1000,
            "established_ms": (t_established - t0) * 1000,
            "server_session_ms": _rel(server.get("t_session"), t0),
            "server_request_ms": _rel(server.get("t_request"), t0),
            "early_bytes": server.get("early"),
            "syn_data_bytes": server.get("syn_data"),
            "resumed": resumed,
            "early_accepted": accepted,
            "tcpls": negotiated,
            "group": group,
            "cipher_suite": suite,
            "tfo": tfo,
        }
        problems = []
        if negotiated != (mode == "tcpls"):
            problems.append(f"tcpls_negotiated={negotiated}")
        if suite != self.args.cipher_suite:
            problems.append(f"cipher suite {suite}")
        if kind != "full" and not (resumed and accepted):
            problems.append(f"resumed={resumed} early_data_accepted={accepted}")
        if kind.startswith("0rtt_tfo") and not tfo.get("TCPFastOpenActive"):
            problems.append(f"no Fast Open (TcpExt {tfo})")
        if problems:
            result["problems"] = problems
        return result

    async def join(self, kind: str) -> dict[str, Any]:
        tcpls = self.tcpls
        port = PORTS["tcpls"]
        fastopen = kind == "join_tfo"
        config = self.config("tcpls", fastopen=fastopen)
        session = await tcpls.connect(self.host, port, config=config)
        try:
            # let the server's post-handshake messages (tokens, tickets) settle first
            deadline = time.monotonic() + 2
            while session.session_ticket is None and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            await asyncio.sleep(0.05)
            counters = _tcp_ext()
            t0 = time.monotonic()
            info = await session.join(self.host, port)
            t1 = time.monotonic()
            tfo = _tfo_delta(counters, _tcp_ext())
        finally:
            await session.aclose(timeout=5)
        result: dict[str, Any] = {"ms": (t1 - t0) * 1000, "connection_id": info.id, "tfo": tfo}
        if fastopen and not tfo.get("TCPFastOpenActive"):
            result["problems"] = [f"no Fast Open (TcpExt {tfo})"]
        return result

    def rtt(self) -> dict[str, float]:
        t0 = time.monotonic()
        sock = socket.create_connection((self.host, ECHO_PORT), timeout=5)
        t1 = time.monotonic()
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(b"x")
            sock.recv(1)
            t2 = time.monotonic()
        finally:
            sock.close()
        return {"connect_ms": (t1 - t0) * 1000, "echo_ms": (t2 - t1) * 1000}

    async def fetch_cookie(self, mode: str) -> dict[str, int]:
        """One unmeasured Fast Open connection: the kernel gets the server's cookie."""
        before = _tcp_ext()
        config = self.config(mode, fastopen=True)
        session = await self.tcpls.connect(self.host, PORTS[mode], config=config)
        reader, writer = await session.open_stream()
        writer.write(REQUEST)
        first = await reader.read(1)
        await self._finish(session, mode, reader, writer, first)
        return _tfo_delta(before, _tcp_ext())


def _rel(t: float | None, t0: float) -> float | None:
    return None if t is None else (t - t0) * 1000


async def _client_main(args: argparse.Namespace) -> dict[str, Any]:
    client = _Client(args)
    out: dict[str, Any] = {"cookie": {}, "rtt": [], "runs": {}}
    for mode in MODES:
        out["cookie"][mode] = await client.fetch_cookie(mode)
    names = [f"{m}/{k}" for m in MODES for k in KINDS] + [f"tcpls/{k}" for k in JOIN_KINDS]
    out["runs"] = {name: [] for name in names}
    for round_no in range(-args.warmup, args.runs):
        measured = round_no >= 0
        rtt = await asyncio.get_running_loop().run_in_executor(None, client.rtt)
        if measured:
            out["rtt"].append(rtt)
        for name in names:
            mode, kind = name.split("/")
            if kind in JOIN_KINDS:
                result = await client.join(kind)
            else:
                result = await client.exchange(mode, kind)
            if measured:
                out["runs"][name].append(result)
            print(
                f"round {round_no + 1}{'' if measured else ' (warm-up)'} {name}: "
                f"{result['ms']:.1f} ms {result.get('problems', '')}",
                file=sys.stderr,
                flush=True,
            )
            await asyncio.sleep(0.05)
    return out


# -- orchestration (root namespace) -----------------------------------------------------------


def _set_fastopen(lab: Any, value: str | None) -> dict[str, str]:
    """Set ``net.ipv4.tcp_fastopen`` in both namespaces (``None``: read only); old values."""
    old: dict[str, str] = {}
    for side in SIDES:
        script = f"cat {FASTOPEN_SYSCTL}" + (
            f" && echo {value} > {FASTOPEN_SYSCTL}" if value is not None else ""
        )
        cp = lab.run(side, ["sh", "-c", script], timeout=10)
        if cp.returncode != 0:
            raise RuntimeError(f"cannot set tcp_fastopen in the {side} namespace: {cp.stderr}")
        old[side] = cp.stdout.strip()
    return old


def _summarize(values: list[float], rtt_ms: float) -> dict[str, Any]:
    from common import summarize

    summary = summarize(values, 1)
    summary["rtt"] = round(summary["median"] / rtt_ms, 2)
    return summary


def _report(raw: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    from common import log, median

    rtt_ms = median([r["connect_ms"] for r in raw["rtt"]])
    echo_ms = median([r["echo_ms"] for r in raw["rtt"]])
    results: dict[str, Any] = {}
    for name, runs in raw["runs"].items():
        mode, kind = name.split("/")
        entry = _summarize([r["ms"] for r in runs], rtt_ms)
        entry["expected_rtt"] = EXPECTED_RTT[kind]
        entry["holds"] = abs(entry["rtt"] - EXPECTED_RTT[kind]) <= TOLERANCE_RTT
        if kind not in JOIN_KINDS:
            for key in ("established_ms", "server_session_ms", "server_request_ms"):
                values = [r[key] for r in runs if r.get(key) is not None]
                if values:
                    entry[f"{key.removesuffix('_ms')}_median_ms"] = round(median(values), 1)
            entry["early_bytes"] = sorted({r.get("early_bytes") for r in runs}, key=str)
            entry["syn_data_bytes"] = sorted({r.get("syn_data_bytes") for r in runs}, key=str)
            entry["groups"] = sorted({str(r.get("group")) for r in runs})
        tfo_runs = sum(1 for r in runs if r.get("tfo", {}).get("TCPFastOpenActive"))
        entry["runs_with_fastopen_syn_data"] = tfo_runs
        problems = sorted({p for r in runs for p in r.get("problems", [])})
        if problems:
            entry["problems"] = problems
        results[name] = entry
    for mode in MODES:
        full = results[f"{mode}/full"]["median"]
        for kind in (*KINDS, *(JOIN_KINDS if mode == "tcpls" else ())):
            results[f"{mode}/{kind}"]["over_full"] = round(
                results[f"{mode}/{kind}"]["median"] / full, 3
            )
    lines = [
        f"path RTT: TCP connect {rtt_ms:.1f} ms, 1-byte echo {echo_ms:.1f} ms "
        f"(median of {len(raw['rtt'])})",
        "(established: connect() returned; server request: the server's handler had the "
        "request; SYN data: bytes the client's SYN carried)",
        f"{'measurement':<22} {'median ms':>9} {'min':>6} {'max':>6} {'RTT':>5} {'expect':>6} "
        f"{'holds':<5} {'established RTT':>15} {'server request RTT':>18} {'SYN data':>8}",
    ]
    nan = float("nan")
    for name, e in results.items():
        syn = "/".join(str(v) for v in e.get("syn_data_bytes", []))
        lines.append(
            f"{name:<22} {e['median']:>9.1f} {e['min']:>6.1f} {e['max']:>6.1f} "
            f"{e['rtt']:>5.2f} {e['expected_rtt']:>6.1f} {e['holds']!s:<5} "
            f"{e.get('established_median_ms', nan) / rtt_ms:>15.2f} "
            f"{e.get('server_request_median_ms', nan) / rtt_ms:>18.2f} {syn:>8}"
        )
    log("\n" + "\n".join(lines))
    return {
        "path_rtt_ms": {"connect": round(rtt_ms, 2), "echo": round(echo_ms, 2)},
        "results": results,
        "baseline": {m: results[f"{m}/full"]["median"] for m in MODES},
        "holds": {name: e["holds"] for name, e in results.items()},
        "fastopen_cookie_fetch": raw["cookie"],
        "runs": raw["runs"],
        "rtt_runs": raw["rtt"],
    }


def _run(args: argparse.Namespace, pki: Any) -> dict[str, Any]:
    from common import CIPHER_SUITE, BenchmarkError, log

    from tcpls.lab import Lab, PathSpec

    spec = PathSpec(rate_mbit=args.rate, delay_ms=args.delay)
    me = str(Path(__file__).resolve())
    with Lab([spec], name_prefix="fr") as lab:
        host = lab.paths[0].server_ip
        old = _set_fastopen(lab, "3")
        log(f"lab {lab.name}: {spec.describe()}; tcp_fastopen {old} -> 3 in both namespaces")
        with tempfile.TemporaryFile("w+") as server_err:
            server = lab.popen(
                "server",
                [
                    sys.executable, me, "_server", "--cert", pki.cert_file, "--key",
                    pki.key_file, "--cipher-suite", CIPHER_SUITE, "--groups", args.groups,
                ],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=server_err, text=True,
            )  # fmt: skip
            try:
                assert server.stdout is not None and server.stdin is not None
                line = server.stdout.readline()
                if '"serving"' not in line:
                    server.wait(5)
                    server_err.seek(0)
                    raise BenchmarkError(f"the server did not start: {server_err.read()[-2000:]}")
                argv = [
                    sys.executable, me, "_client", "--host", host, "--cafile", pki.ca_file,
                    "--cipher-suite", CIPHER_SUITE, "--groups", args.groups,
                    "--runs", str(args.runs), "--warmup", str(args.warmup),
                ]  # fmt: skip
                proc = lab.popen("client", argv, stdout=subprocess.PIPE, text=True)
                stdout, _ = proc.communicate(timeout=60 + args.runs * 30)
                if proc.returncode != 0:
                    server_err.seek(0)
                    raise BenchmarkError(
                        f"the client failed (exit {proc.returncode}); server stderr: "
                        f"{server_err.read()[-2000:]}"
                    )
                raw = json.loads(stdout.strip().splitlines()[-1])
            finally:
                with contextlib.suppress(Exception):
                    server.stdin.close()  # type: ignore[union-attr]
                try:
                    server.wait(5)
                except subprocess.TimeoutExpired:
                    server.terminate()
                    server.wait(5)
                for side in SIDES:
                    with contextlib.suppress(Exception):
                        lab.run(side, ["sh", "-c", f"echo {old[side]} > {FASTOPEN_SYSCTL}"])
        stats = lab.forwarder_stats()
    out = _report(raw, args)
    out["lab"] = {
        "path": spec.describe(),
        "rate_mbit": args.rate,
        "one_way_delay_ms": args.delay,
        "tcp_fastopen_in_namespaces": 3,
        "forwarder": stats,
    }
    return out


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time to first response (full handshake, 0-RTT, 0-RTT + TCP Fast Open, "
        "join with and without Fast Open) over an emulated path; needs root. Prints one "
        "JSON line.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sub = parser.add_subparsers(dest="role")
    parser.add_argument("--runs", type=int, default=15, help="measured rounds (median)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured rounds first")
    parser.add_argument("--rate", type=float, default=100.0, help="path rate, Mbit/s")
    parser.add_argument("--delay", type=float, default=25.0, help="one-way delay, ms")
    parser.add_argument(
        "--groups", default="default", help="key exchange groups of both ends (comma list)"
    )
    server = sub.add_parser("_server")
    server.add_argument("--cert", required=True)
    server.add_argument("--key", required=True)
    server.add_argument("--cipher-suite", required=True)
    server.add_argument("--groups", default="default")
    client = sub.add_parser("_client")
    client.add_argument("--host", required=True)
    client.add_argument("--cafile", required=True)
    client.add_argument("--cipher-suite", required=True)
    client.add_argument("--groups", default="default")
    client.add_argument("--runs", type=int, default=15)
    client.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args(argv)
    if args.role is None and (args.runs < 1 or args.warmup < 0 or args.delay <= 0):
        parser.error("--runs >= 1, --warmup >= 0, --delay > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.role == "_server":
        asyncio.run(_server(args))
        return 0
    if args.role == "_client":
        print(json.dumps(asyncio.run(_client_main(args))), flush=True)
        return 0

    sys.path.insert(0, str(HERE))
    from common import emit, lab_unavailable, machine_info, make_pki, run_benchmark

    if os.geteuid() != 0:
        message = "needs root (network namespaces, net.ipv4.tcp_fastopen): skipped"
        print(f"first_response: {message}", file=sys.stderr)
        emit({"benchmark": "first_response", "ok": False, "skipped": True, "error": message})
        return 2
    if lab_unavailable("first_response"):
        return 2

    def body() -> dict[str, Any]:
        machine = machine_info()
        pki = make_pki()
        result = _run(args, pki)
        return {
            "machine": machine,
            "config": {
                "runs": args.runs,
                "warmup": args.warmup,
                "groups": args.groups,
                "request": REQUEST.decode().strip(),
                "max_early_data": MAX_EARLY_DATA,
                "units": "ms from the start of connect() (join: of join()) to the first byte "
                "of the answer read (join: join() returned); rtt = ms / path RTT (TCP connect)",
                "expected_rtt": EXPECTED_RTT,
                "tolerance_rtt": TOLERANCE_RTT,
            },
            **result,
        }

    return run_benchmark("first_response", body)


if __name__ == "__main__":
    sys.exit(main())
