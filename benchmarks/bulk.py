"""One-stream bulk goodput: tcpls against stdlib ``ssl`` and aioquic, in one run.

The client uploads ``--bytes`` (default 1 GiB) in ``--chunk`` writes (default 1 MiB,
each followed by ``drain()``) on one stream; the server reads until the end of the
upload and answers with the byte count. The clock runs from the first write to the
answer; the handshake is done before. Client and server are separate processes on
127.0.0.1, started afresh for every run, so each peak RSS belongs to one transfer.

Systems (``--systems``):

* ``tcpls``: one tcpls session (TCPLS negotiated, checked), one stream, FIN at the end.
* ``ssl``: stdlib ``ssl`` over asyncio streams (``open_connection``/``start_server``);
  the upload is length-prefixed because asyncio's TLS transport cannot half-close.
* ``aioquic``: one bidirectional QUIC stream (aioquic's asyncio ``serve``/``connect``),
  FIN at the end, ``--quic-bytes`` (default 128 MiB: it is much slower). aioquic's
  stream writer has no back-pressure, so the client keeps at most
  ``--quic-send-buffer`` unacknowledged bytes in the stream (read from aioquic's
  private sender state). Windows ``--quic-window``, datagrams ``--quic-datagram-size``
  (aioquic's default of 1200 bytes is the minimum QUIC allows; 1452 fits an
  Ethernet MTU), congestion control ``--quic-cc``.

All use TLS_AES_128_GCM_SHA256 (stdlib ``ssl`` through ``OPENSSL_CONF``, see
``common.py``). Goodput is in MB/s (10^6 bytes/s). Rounds are interleaved (one run
of every system per round) so that background load hits them alike; the median of
``--runs`` rounds is reported, with every run. CPU is getrusage user+system time of
each process during the transfer, in seconds per GiB moved. ``peak_rss_mb`` is the
largest ``VmHWM`` of the tcpls client and server processes over the runs.

``--no-reliability`` runs tcpls with ``reliable=False`` on both sides (no
retransmission log, no ACKs); ``--reliability-cost`` runs tcpls both ways and reports
the difference. ``--profile`` adds one unmeasured tcpls run (``--profile-bytes``,
default 4 x ``--bytes``) with ``py-spy record`` attached to the server and the client,
and reports their top functions by self time (py-spy must be installed).

Prints one JSON line on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from aioquic.asyncio.protocol import QuicConnectionProtocol
from common import (
    CIPHER_SUITE,
    HOST,
    MB,
    BenchmarkError,
    Child,
    Control,
    GiB,
    Meter,
    MiB,
    PairResult,
    Peer,
    Pki,
    chunk_sizes,
    log,
    machine_info,
    make_pki,
    memory_mb,
    parse_size,
    run_benchmark,
    run_child,
    run_pair,
    serve_commands,
    summarize,
)
from peers import (
    READ_SIZE,
    ssl_sink_server,
    ssl_upload_client,
    tcpls_sink_server,
    tcpls_upload_client,
)

QUIC_ALPN = "tcpls-bench"


@dataclass(frozen=True)
class QuicOptions:
    """aioquic settings shared by the QUIC client and server."""

    datagram_size: int
    window: int
    send_buffer: int
    congestion_control: str

    def configuration(self, is_client: bool) -> Any:
        from aioquic.quic.configuration import QuicConfiguration
        from aioquic.tls import CipherSuite

        return QuicConfiguration(
            is_client=is_client,
            alpn_protocols=[QUIC_ALPN],
            cipher_suites=[CipherSuite.AES_128_GCM_SHA256],
            max_datagram_size=self.datagram_size,
            max_data=self.window,
            max_stream_data=self.window,
            congestion_control_algorithm=self.congestion_control,
            idle_timeout=60.0,
        )


# -- aioquic peers ------------------------------------------------------------------


def quic_sink_server(conn: Connection, pki: Pki, options: QuicOptions) -> None:
    """aioquic server: counts every stream and answers with the count on its FIN."""
    run_child(conn, lambda control: _quic_sink(control, pki, options))


async def _quic_sink(control: Control, pki: Pki, options: QuicOptions) -> None:
    from aioquic.asyncio.server import serve

    extra: dict[str, Any] = {"streams": 0, "bytes": 0}
    tasks: set[asyncio.Task[None]] = set()

    async def consume(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        count = 0
        while data := await reader.read(READ_SIZE):
            count += len(data)
        writer.write(b"%d\n" % count)
        writer.write_eof()
        extra["streams"] += 1
        extra["bytes"] += count

    def on_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(consume(reader, writer))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    config = options.configuration(is_client=False)
    config.load_cert_chain(pki.cert_file, pki.key_file)
    server = await serve(HOST, 0, configuration=config, stream_handler=on_stream)
    # aioquic's server object does not expose its socket; its transport does
    transport = server._transport
    if transport is None:
        raise BenchmarkError("the aioquic server has no transport")
    port = int(transport.get_extra_info("sockname")[1])
    try:
        await serve_commands(control, port, extra)
    finally:
        server.close()


class _ProgressProtocol(QuicConnectionProtocol):
    """aioquic's client protocol, plus an event set whenever a datagram arrives."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.progress = asyncio.Event()

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        super().datagram_received(data, addr)
        self.progress.set()


def _quic_unacked(protocol: _ProgressProtocol, stream_id: int) -> int:
    """Bytes written to the stream and not yet acknowledged (aioquic private state)."""
    stream = protocol._quic._streams.get(stream_id)
    if stream is None:
        return 0
    sender = stream.sender
    return int(sender._buffer_stop - sender._buffer_start)


def quic_upload_client(
    conn: Connection, port: int, pki: Pki, nbytes: int, chunk: int, options: QuicOptions
) -> None:
    """aioquic client: one bidirectional stream uploading ``nbytes``."""
    run_child(conn, lambda control: _quic_upload(control, port, pki, nbytes, chunk, options))


async def _quic_upload(
    control: Control, port: int, pki: Pki, nbytes: int, chunk: int, options: QuicOptions
) -> None:
    from aioquic.asyncio.client import connect

    payload = os.urandom(chunk)
    config = options.configuration(is_client=True)
    config.load_verify_locations(pki.ca_file)
    async with connect(
        HOST, port, configuration=config, create_protocol=_ProgressProtocol
    ) as protocol:
        assert isinstance(protocol, _ProgressProtocol)
        reader, writer = await protocol.create_stream()
        stream_id = int(writer.get_extra_info("stream_id"))
        await control.ready()
        memory_before = memory_mb()
        meter = Meter()
        for size in chunk_sizes(nbytes, chunk):
            writer.write(payload if size == chunk else payload[:size])
            while _quic_unacked(protocol, stream_id) > options.send_buffer:
                protocol.progress.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(protocol.progress.wait(), 1.0)
        writer.write_eof()
        answer = await asyncio.wait_for(reader.read(), 60)
        measured = meter.stop()
        if not answer or int(answer) != nbytes:
            raise BenchmarkError(f"aioquic: server counted {answer!r} bytes, expected {nbytes}")
        control.reply(
            {
                **measured,
                "bytes": nbytes,
                "cipher": CIPHER_SUITE,
                "memory_before_mb": memory_before,
                "memory_mb": memory_mb(),
            }
        )
        protocol.close()


# -- orchestration ------------------------------------------------------------------


def _peers(system: str, args: argparse.Namespace, pki: Pki) -> tuple[Peer, Peer]:
    if system in ("tcpls", "tcpls_unreliable"):
        reliable = system == "tcpls" and not args.no_reliability
        return (
            Peer(f"{system}-server", tcpls_sink_server, (pki, reliable)),
            Peer(
                f"{system}-client", tcpls_upload_client, (pki, 1, args.bytes, args.chunk, reliable)
            ),
        )
    if system == "ssl":
        env = pki.baseline_env
        return (
            Peer("ssl-server", ssl_sink_server, (pki,), env),
            Peer("ssl-client", ssl_upload_client, (pki, 1, args.bytes, args.chunk), env),
        )
    if system == "aioquic":
        quic = QuicOptions(
            args.quic_datagram_size, args.quic_window, args.quic_send_buffer, args.quic_cc
        )
        return (
            Peer("aioquic-server", quic_sink_server, (pki, quic)),
            Peer("aioquic-client", quic_upload_client, (pki, args.quic_bytes, args.chunk, quic)),
        )
    raise BenchmarkError(f"unknown system {system!r}")


def _timeout(args: argparse.Namespace, nbytes: int) -> float:
    if args.timeout is not None:
        return float(args.timeout)
    return 60.0 + nbytes / (4 * MB)  # generous: 4 MB/s at worst


def _summarize(system: str, runs: list[PairResult], args: argparse.Namespace) -> dict[str, Any]:
    nbytes = runs[0].client["bytes"]
    for run in runs:
        if run.server.get("bytes") != run.client["bytes"]:
            raise BenchmarkError(
                f"{system}: the server counted {run.server.get('bytes')} bytes, "
                f"the client sent {run.client['bytes']}"
            )
    gib = nbytes / GiB
    out: dict[str, Any] = {
        "bytes": nbytes,
        "mb_per_s": summarize([r.client["bytes"] / r.client["seconds"] / MB for r in runs], 1),
        "seconds": summarize([r.client["seconds"] for r in runs], 3),
        "client_cpu_s_per_gib": summarize([r.client["cpu_s"] / gib for r in runs], 3),
        "server_cpu_s_per_gib": summarize([r.server["cpu_s"] / gib for r in runs], 3),
        "peak_rss_mb": {
            "client": round(max(r.client["memory_mb"]["peak"] for r in runs), 1),
            "server": round(max(r.server["memory_mb"]["peak"] for r in runs), 1),
        },
        "rss_before_transfer_mb": {
            "client": round(max(r.client["memory_before_mb"]["now"] for r in runs), 1),
        },
        "cipher": runs[0].client["cipher"],
    }
    if system.startswith("tcpls"):
        out["reliable"] = system == "tcpls" and not args.no_reliability
    return out


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


# -- profiling ----------------------------------------------------------------------


def _py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def _top_self(raw_file: Path, top: int) -> dict[str, Any]:
    """Top leaf frames (self time) of a ``py-spy record --format raw`` file."""
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw_file.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        if not stack or not number.isdigit():
            continue
        # "function (file.py:line)": aggregate the lines of one function
        leaf = re.sub(r":\d+\)$", ")", stack.split(";")[-1])
        counts[leaf] += int(number)
        total += int(number)
    return {
        "samples": total,
        "top": [
            {"function": name, "self_pct": round(100 * n / total, 1)}
            for name, n in counts.most_common(top)
        ],
    }


def _profile(args: argparse.Namespace, pki: Pki) -> dict[str, Any]:
    py_spy = _py_spy()
    if py_spy is None:
        raise BenchmarkError("--profile needs py-spy (pip install py-spy)")
    outdir = Path(args.profile_dir)
    outdir.mkdir(parents=True, exist_ok=True)
    recorders: dict[str, subprocess.Popen[bytes]] = {}
    files: dict[str, Path] = {}

    def attach(server: Child, client: Child) -> None:
        for role, child in (("server", server), ("client", client)):
            files[role] = outdir / f"bulk-tcpls-{role}.raw"
            recorders[role] = subprocess.Popen(
                [py_spy, "record", "--pid", str(child.pid), "--format", "raw",
                 "--rate", str(args.profile_rate), "--nonblocking", "-o", str(files[role])],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip

    system = "tcpls" if not args.no_reliability else "tcpls_unreliable"
    nbytes = args.profile_bytes or 4 * args.bytes
    server, client = _peers(system, argparse.Namespace(**{**vars(args), "bytes": nbytes}), pki)
    log(f"profiling one {system} run of {nbytes / GiB:.1f} GiB with py-spy (not counted)")
    try:
        run_pair(server, client, _timeout(args, nbytes), on_started=attach)
    finally:
        for recorder in recorders.values():
            try:
                recorder.wait(30)
            except subprocess.TimeoutExpired:
                recorder.kill()
                recorder.wait()
    out: dict[str, Any] = {
        "system": system,
        "bytes": nbytes,
        "note": "py-spy self time, % of non-idle samples; raw stacks in files",
        "files": {role: str(path) for role, path in files.items()},
    }
    for role, path in files.items():
        if path.exists():
            out[f"{role}_top_self"] = _top_self(path, args.profile_top)
    return out


# -- main ---------------------------------------------------------------------------


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Bulk goodput of one stream over 127.0.0.1: tcpls vs stdlib ssl vs aioquic "
            "(client and server in separate processes). Prints one JSON line."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="Sizes take K, M or G suffixes (powers of 1024): 64M, 1G.",
    )
    parser.add_argument("--bytes", type=parse_size, default=GiB, help="bytes per upload")
    parser.add_argument(
        "--quic-bytes", type=parse_size, default=128 * MiB, help="bytes per aioquic upload"
    )
    parser.add_argument("--runs", type=int, default=5, help="runs per system (median)")
    parser.add_argument("--chunk", type=parse_size, default=MiB, help="size of each write")
    parser.add_argument(
        "--systems",
        default="tcpls,ssl,aioquic",
        help="comma-separated subset of tcpls,ssl,aioquic",
    )
    parser.add_argument(
        "--no-reliability",
        action="store_true",
        help="run tcpls with reliable=False (no retransmission log, no ACKs)",
    )
    parser.add_argument(
        "--reliability-cost",
        action="store_true",
        help="run tcpls with and without reliability and report both",
    )
    parser.add_argument(
        "--quic-datagram-size", type=int, default=1452, help="aioquic max_datagram_size"
    )
    parser.add_argument(
        "--quic-window",
        type=parse_size,
        default=8 * MiB,
        help="aioquic max_data and max_stream_data",
    )
    parser.add_argument(
        "--quic-send-buffer",
        type=parse_size,
        default=4 * MiB,
        help="unacknowledged bytes the aioquic client keeps in its stream at most",
    )
    parser.add_argument(
        "--quic-cc", default="reno", help="aioquic congestion control (reno or cubic)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds allowed per transfer (unset: 60 s + 1 s per 4 MB)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="add an unmeasured tcpls run profiled with py-spy; report top self-time frames",
    )
    parser.add_argument(
        "--profile-dir", default="/tmp/tcpls-bench-profile", help="where py-spy writes"
    )
    parser.add_argument("--profile-top", type=int, default=15, help="frames to report")
    parser.add_argument(
        "--profile-bytes",
        type=parse_size,
        default=None,
        help="bytes of the profiled run (unset: 4 x --bytes)",
    )
    parser.add_argument("--profile-rate", type=int, default=250, help="py-spy samples/s")
    args = parser.parse_args(argv)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = set(systems) - {"tcpls", "ssl", "aioquic"}
    if unknown or not systems:
        parser.error(f"--systems: unknown {sorted(unknown)}")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.reliability_cost:
        if "tcpls" not in systems:
            systems.insert(0, "tcpls")
        systems.insert(systems.index("tcpls") + 1, "tcpls_unreliable")
        args.no_reliability = False
    args.system_list = systems
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)

    def body() -> dict[str, Any]:
        machine = machine_info()
        pki = make_pki()
        results: dict[str, list[PairResult]] = {s: [] for s in args.system_list}
        for round_no in range(1, args.runs + 1):
            for system in args.system_list:
                server, client = _peers(system, args, pki)
                nbytes = args.quic_bytes if system == "aioquic" else args.bytes
                run = run_pair(server, client, _timeout(args, nbytes))
                results[system].append(run)
                rate = run.client["bytes"] / run.client["seconds"] / MB
                log(
                    f"round {round_no}/{args.runs} {system}: {rate:.1f} MB/s, "
                    f"cpu client {run.client['cpu_s']:.2f} s server {run.server['cpu_s']:.2f} s"
                )
        summary = {s: _summarize(s, runs, args) for s, runs in results.items()}
        out: dict[str, Any] = {
            "machine": machine,
            "config": {
                "bytes": args.bytes,
                "quic_bytes": args.quic_bytes,
                "runs": args.runs,
                "chunk": args.chunk,
                "cipher_suite": CIPHER_SUITE,
                "host": HOST,
                "ssl_cipher_via": "OPENSSL_CONF (Ciphersuites in system_default)",
                "aioquic": {
                    "max_datagram_size": args.quic_datagram_size,
                    "window": args.quic_window,
                    "client_send_buffer": args.quic_send_buffer,
                    "congestion_control": args.quic_cc,
                },
                "units": "MB = 10^6 bytes; CPU = user+system seconds per GiB moved",
            },
            "results": summary,
        }

        def mbps(system: str) -> float:
            return float(summary[system]["mb_per_s"]["median"])

        ratios: dict[str, float | None] = {}
        if "tcpls" in summary:
            out["peak_rss_mb"] = summary["tcpls"]["peak_rss_mb"]
            if "ssl" in summary:
                ratios["tcpls_over_ssl"] = _ratio(mbps("tcpls"), mbps("ssl"))
            if "aioquic" in summary:
                ratios["tcpls_over_aioquic"] = _ratio(mbps("tcpls"), mbps("aioquic"))
        out["ratios"] = ratios
        if "tcpls_unreliable" in summary:
            rel, unrel = summary["tcpls"], summary["tcpls_unreliable"]

            def cpu(entry: dict[str, Any], side: str) -> float:
                return float(entry[f"{side}_cpu_s_per_gib"]["median"])

            out["reliability_cost"] = {
                "reliable_mb_per_s": mbps("tcpls"),
                "unreliable_mb_per_s": mbps("tcpls_unreliable"),
                "goodput_unreliable_over_reliable": _ratio(
                    mbps("tcpls_unreliable"), mbps("tcpls")
                ),
                "client_cpu_reliable_over_unreliable": _ratio(
                    cpu(rel, "client"), cpu(unrel, "client")
                ),
                "server_cpu_reliable_over_unreliable": _ratio(
                    cpu(rel, "server"), cpu(unrel, "server")
                ),
                "peak_rss_mb_unreliable": unrel["peak_rss_mb"],
            }
        if args.profile:
            out["profile"] = _profile(args, pki)
        return out

    return run_benchmark("bulk", body)


if __name__ == "__main__":
    sys.exit(main())
