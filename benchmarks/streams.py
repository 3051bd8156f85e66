"""Concurrent streams: tcpls (N streams, one session) vs HTTP/2 (N POSTs, one connection).

Every stream uploads ``--bytes-per-stream`` (default 64 MiB) in ``--chunk`` writes;
all ``--streams`` (default 8) run at once. The clock runs from the first write to
the last answer (handshakes are done before). Reported: aggregate goodput in MB/s
(10^6 bytes/s), median of ``--runs`` interleaved rounds, CPU per GiB of each side,
and how unevenly the streams finished (slowest / fastest completion time).

Systems (``--systems``):

* ``tcpls``: one tcpls session (TCPLS negotiated), N streams, each ended by FIN; the
  server answers every stream with its byte count.
* ``h2``: HTTP/2 with the ``h2`` library over stdlib ``ssl`` (asyncio streams, ALPN
  ``h2``): N POST requests on one connection; the server consumes each body, hands
  the bytes back to flow control with ``acknowledge_received_data`` (h2 then sends
  WINDOW_UPDATE once half a window is consumed) and answers ``200`` with the byte
  count. So that h2 is not starved by flow control, the server advertises
  ``SETTINGS_INITIAL_WINDOW_SIZE`` = ``--h2-stream-window`` (default 4 MiB, instead of
  64 KiB - 1), raises the connection window to ``--h2-connection-window`` (default
  16 MiB) with a WINDOW_UPDATE on stream 0, and ``SETTINGS_MAX_FRAME_SIZE`` =
  ``--h2-max-frame`` (default 64 KiB, instead of 16 KiB: fewer DATA frames, less
  Python work per byte). The client sends DATA frames as large as the peer's frame
  size and the stream and connection windows allow, and waits for WINDOW_UPDATE
  when a window is empty. The timing starts once the client has applied the
  server's settings and connection window.
* ``h2_patched``: the same, except that hyperframe's ``DataFrame`` repr is made O(1)
  in both processes. h2 4.x evaluates ``repr(frame)`` for a trace log line on every
  frame it receives, logger or not, and a DATA frame's repr hex-encodes the whole
  body (then keeps 20 digits): with 64 KiB frames that is about a third of the h2
  server's CPU. This variant shows h2 without that artefact.
* ``ssl_conns``: an extra reference: N separate stdlib ``ssl`` connections (one
  process each side), one upload each.

Everything uses TLS_AES_128_GCM_SHA256 (stdlib ``ssl`` through ``OPENSSL_CONF``, see
``common.py``). Client and server are separate processes on 127.0.0.1, fresh for
every run. Prints one JSON line on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from common import (
    CIPHER_SUITE,
    CLOSE_TIMEOUT,
    HOST,
    MB,
    BenchmarkError,
    Control,
    GiB,
    Meter,
    MiB,
    PairResult,
    Peer,
    Pki,
    check_ssl_cipher,
    log,
    machine_info,
    make_pki,
    memory_mb,
    parse_size,
    run_benchmark,
    run_child,
    run_pair,
    serve_asyncio_server,
    ssl_client_context,
    ssl_server_context,
    summarize,
)
from peers import (
    READ_SIZE,
    ssl_sink_server,
    ssl_upload_client,
    tcpls_sink_server,
    tcpls_upload_client,
)

SYSTEMS = ("tcpls", "h2", "h2_patched", "ssl_conns")


@dataclass(frozen=True)
class H2Options:
    """HTTP/2 settings the server advertises (see the module docstring)."""

    stream_window: int
    connection_window: int
    max_frame: int
    #: Make hyperframe's ``DataFrame.__repr__`` O(1) (the ``h2_patched`` system).
    cheap_data_repr: bool = False

    def apply_patch(self) -> None:
        """h2 4.x logs ``repr(frame)`` of every received frame, eagerly, even with no
        logger; a DataFrame's repr hex-encodes its whole body then keeps 20 digits."""
        if self.cheap_data_repr:
            from hyperframe.frame import DataFrame

            def body_repr(frame: DataFrame) -> str:
                return f"data=<{len(frame.data)} bytes>"

            setattr(DataFrame, "_body_repr", body_repr)  # noqa: B010


def _h2_settings(options: H2Options) -> dict[Any, int]:
    from h2.settings import SettingCodes

    return {
        SettingCodes.INITIAL_WINDOW_SIZE: options.stream_window,
        SettingCodes.MAX_FRAME_SIZE: options.max_frame,
    }


# -- h2 server ----------------------------------------------------------------------


def h2_sink_server(conn: Connection, pki: Pki, options: H2Options) -> None:
    """HTTP/2 server: consumes every request body and answers with its byte count."""
    run_child(conn, lambda control: _h2_sink(control, pki, options))


async def _h2_sink(control: Control, pki: Pki, options: H2Options) -> None:
    options.apply_patch()
    from h2.config import H2Configuration
    from h2.connection import H2Connection
    from h2.events import (
        ConnectionTerminated,
        DataReceived,
        RequestReceived,
        StreamEnded,
        StreamReset,
    )

    extra: dict[str, Any] = {"connections": 0, "requests": 0, "bytes": 0}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        extra["connections"] += 1
        h2 = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        h2.initiate_connection()
        h2.update_settings(_h2_settings(options))
        h2.increment_flow_control_window(options.connection_window - 65535)
        writer.write(h2.data_to_send())
        counts: dict[int, int] = {}
        try:
            while True:
                data = await reader.read(READ_SIZE)
                if not data:
                    break
                for event in h2.receive_data(data):
                    if isinstance(event, RequestReceived):
                        counts[event.stream_id] = 0
                    elif isinstance(event, DataReceived):
                        counts[event.stream_id] += len(event.data)
                        h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    elif isinstance(event, StreamEnded):
                        count = counts.pop(event.stream_id)
                        body = b"%d\n" % count
                        h2.send_headers(
                            event.stream_id,
                            [(":status", "200"), ("content-length", str(len(body)))],
                        )
                        h2.send_data(event.stream_id, body, end_stream=True)
                        extra["requests"] += 1
                        extra["bytes"] += count
                    elif isinstance(event, StreamReset):
                        counts.pop(event.stream_id, None)
                    elif isinstance(event, ConnectionTerminated):
                        return
                out = h2.data_to_send()
                if out:
                    writer.write(out)
                    await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), CLOSE_TIMEOUT)

    ctx = ssl_server_context(pki, alpn=["h2"])
    server = await asyncio.start_server(handle, HOST, 0, ssl=ctx, limit=READ_SIZE)
    await serve_asyncio_server(control, server, extra)


# -- h2 client ----------------------------------------------------------------------


def h2_upload_client(
    conn: Connection,
    port: int,
    pki: Pki,
    streams: int,
    bytes_per_stream: int,
    options: H2Options,
) -> None:
    """HTTP/2 client: ``streams`` concurrent POSTs of ``bytes_per_stream`` on one connection."""
    run_child(
        conn,
        lambda control: _h2_upload(control, port, pki, streams, bytes_per_stream, options),
    )


async def _h2_upload(
    control: Control,
    port: int,
    pki: Pki,
    streams: int,
    bytes_per_stream: int,
    options: H2Options,
) -> None:
    from h2.config import H2Configuration
    from h2.connection import H2Connection
    from h2.events import (
        ConnectionTerminated,
        DataReceived,
        RemoteSettingsChanged,
        ResponseReceived,
        StreamEnded,
        StreamReset,
        WindowUpdated,
    )
    from h2.settings import SettingCodes

    options.apply_patch()
    loop = asyncio.get_running_loop()
    ctx = ssl_client_context(pki, alpn=["h2"])
    reader, writer = await asyncio.open_connection(
        HOST, port, ssl=ctx, server_hostname=HOST, limit=READ_SIZE
    )
    cipher = check_ssl_cipher(writer)
    alpn = writer.get_extra_info("ssl_object").selected_alpn_protocol()
    if alpn != "h2":
        raise BenchmarkError(f"the server selected ALPN {alpn!r}, not h2")

    h2 = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    h2.initiate_connection()
    h2.update_settings({SettingCodes.ENABLE_PUSH: 0})
    writer.write(h2.data_to_send())

    window_opened = asyncio.Event()  # set on WINDOW_UPDATE / SETTINGS from the server
    bodies: dict[int, bytearray] = {}
    responses: dict[int, asyncio.Future[bytes]] = {}
    failure: list[BaseException] = []

    def fail(exc: BaseException) -> None:
        failure.append(exc)
        window_opened.set()
        for future in responses.values():
            if not future.done():
                future.set_exception(exc)

    async def receive() -> None:
        try:
            while True:
                data = await reader.read(READ_SIZE)
                if not data:
                    raise BenchmarkError("the h2 server closed the connection")
                for event in h2.receive_data(data):
                    if isinstance(event, WindowUpdated | RemoteSettingsChanged):
                        window_opened.set()
                    elif isinstance(event, ResponseReceived):
                        status = dict(event.headers).get(b":status")
                        if status != b"200":
                            raise BenchmarkError(f"h2 stream {event.stream_id}: status {status!r}")
                        bodies[event.stream_id] = bytearray()
                    elif isinstance(event, DataReceived):
                        bodies[event.stream_id] += event.data
                        h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    elif isinstance(event, StreamEnded):
                        future = responses.get(event.stream_id)
                        if future is not None and not future.done():
                            future.set_result(bytes(bodies.pop(event.stream_id)))
                    elif isinstance(event, StreamReset):
                        raise BenchmarkError(f"h2 stream {event.stream_id} was reset")
                    elif isinstance(event, ConnectionTerminated):
                        raise BenchmarkError(f"h2 connection terminated: {event.error_code}")
                out = h2.data_to_send()
                if out:
                    writer.write(out)
        except BaseException as exc:
            fail(exc)
            raise

    receiver = loop.create_task(receive())

    # wait until the server's settings and connection window are in force
    async def settled() -> None:
        while not (
            h2.remote_settings.initial_window_size == options.stream_window
            and h2.max_outbound_frame_size == options.max_frame
            and h2.outbound_flow_control_window >= options.connection_window
        ):
            if failure:
                raise failure[0]
            window_opened.clear()
            await window_opened.wait()

    await asyncio.wait_for(settled(), 10)

    frame = bytes(os.urandom(options.max_frame))
    meter = Meter()
    finished: list[float] = []

    async def post() -> int:
        stream_id = h2.get_next_available_stream_id()
        responses[stream_id] = loop.create_future()
        h2.send_headers(
            stream_id,
            [
                (":method", "POST"),
                (":scheme", "https"),
                (":authority", f"{HOST}:{port}"),
                (":path", "/upload"),
                ("content-length", str(bytes_per_stream)),
            ],
        )
        remaining = bytes_per_stream
        while remaining:
            if failure:
                raise failure[0]
            size = min(
                remaining, h2.local_flow_control_window(stream_id), h2.max_outbound_frame_size
            )
            if size <= 0:
                window_opened.clear()
                await window_opened.wait()
                continue
            h2.send_data(stream_id, frame if size == len(frame) else frame[:size])
            remaining -= size
            writer.write(h2.data_to_send())
            await writer.drain()
        h2.end_stream(stream_id)
        writer.write(h2.data_to_send())
        body = await responses[stream_id]
        finished.append(meter.stop()["seconds"])
        return int(body)

    try:
        await control.ready()
        memory_before = memory_mb()
        meter.start()
        counts = await asyncio.gather(*(post() for _ in range(streams)))
        measured = meter.stop()
        wrong = [c for c in counts if c != bytes_per_stream]
        if wrong:
            raise BenchmarkError(f"h2: server counted {wrong[0]} bytes, not {bytes_per_stream}")
        control.reply(
            {
                **measured,
                "bytes": streams * bytes_per_stream,
                "stream_seconds": sorted(finished),
                "cipher": cipher,
                "memory_before_mb": memory_before,
                "memory_mb": memory_mb(),
            }
        )
    finally:
        receiver.cancel()
        with contextlib.suppress(BaseException):
            await receiver
        with contextlib.suppress(Exception):
            h2.close_connection()
            writer.write(h2.data_to_send())
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), CLOSE_TIMEOUT)


# -- orchestration ------------------------------------------------------------------


def _peers(system: str, args: argparse.Namespace, pki: Pki) -> tuple[Peer, Peer]:
    n, size, chunk = args.streams, args.bytes_per_stream, args.chunk
    if system == "tcpls":
        return (
            Peer("tcpls-server", tcpls_sink_server, (pki, True)),
            Peer("tcpls-client", tcpls_upload_client, (pki, n, size, chunk, True)),
        )
    env = pki.baseline_env
    if system in ("h2", "h2_patched"):
        options = H2Options(
            args.h2_stream_window,
            args.h2_connection_window,
            args.h2_max_frame,
            cheap_data_repr=system == "h2_patched",
        )
        return (
            Peer(f"{system}-server", h2_sink_server, (pki, options), env),
            Peer(f"{system}-client", h2_upload_client, (pki, n, size, options), env),
        )
    if system == "ssl_conns":
        return (
            Peer("ssl-server", ssl_sink_server, (pki,), env),
            Peer("ssl-client", ssl_upload_client, (pki, n, size, chunk), env),
        )
    raise BenchmarkError(f"unknown system {system!r}")


def _summarize(system: str, runs: list[PairResult]) -> dict[str, Any]:
    nbytes = runs[0].client["bytes"]
    for run in runs:
        if run.server.get("bytes") != run.client["bytes"]:
            raise BenchmarkError(
                f"{system}: the server counted {run.server.get('bytes')} bytes, "
                f"the client sent {run.client['bytes']}"
            )
    gib = nbytes / GiB
    spread = [
        r.client["stream_seconds"][-1] / r.client["stream_seconds"][0]
        for r in runs
        if r.client["stream_seconds"] and r.client["stream_seconds"][0] > 0
    ]
    return {
        "bytes": nbytes,
        "mb_per_s": summarize([r.client["bytes"] / r.client["seconds"] / MB for r in runs], 1),
        "seconds": summarize([r.client["seconds"] for r in runs], 3),
        "client_cpu_s_per_gib": summarize([r.client["cpu_s"] / gib for r in runs], 3),
        "server_cpu_s_per_gib": summarize([r.server["cpu_s"] / gib for r in runs], 3),
        "slowest_over_fastest_stream": summarize(spread, 2) if spread else None,
        "peak_rss_mb": {
            "client": round(max(r.client["memory_mb"]["peak"] for r in runs), 1),
            "server": round(max(r.server["memory_mb"]["peak"] for r in runs), 1),
        },
        "cipher": runs[0].client["cipher"],
    }


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Aggregate goodput of concurrent streams over 127.0.0.1: tcpls (one session) vs "
            "HTTP/2 (h2 over stdlib ssl) vs separate stdlib ssl connections. "
            "Prints one JSON line."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="Sizes take K, M or G suffixes (powers of 1024): 64M, 1G.",
    )
    parser.add_argument("--streams", type=int, default=8, help="concurrent streams")
    parser.add_argument(
        "--bytes-per-stream", type=parse_size, default=64 * MiB, help="bytes uploaded per stream"
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per system (median)")
    parser.add_argument(
        "--chunk", type=parse_size, default=MiB, help="size of each write (tcpls, ssl)"
    )
    parser.add_argument(
        "--systems", default=",".join(SYSTEMS), help=f"comma-separated subset of {SYSTEMS}"
    )
    parser.add_argument(
        "--h2-stream-window",
        type=parse_size,
        default=4 * MiB,
        help="SETTINGS_INITIAL_WINDOW_SIZE advertised by the h2 server",
    )
    parser.add_argument(
        "--h2-connection-window",
        type=parse_size,
        default=16 * MiB,
        help="connection flow-control window of the h2 server",
    )
    parser.add_argument(
        "--h2-max-frame",
        type=parse_size,
        default=64 * 1024,
        help="SETTINGS_MAX_FRAME_SIZE advertised by the h2 server (16 KiB .. 16 MiB - 1)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds allowed per run (unset: 60 s + 1 s per 4 MB)",
    )
    args = parser.parse_args(argv)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = set(systems) - set(SYSTEMS)
    if unknown or not systems:
        parser.error(f"--systems: unknown {sorted(unknown)}")
    if args.streams < 1 or args.runs < 1:
        parser.error("--streams and --runs must be at least 1")
    if not 16384 <= args.h2_max_frame <= (1 << 24) - 1:
        parser.error("--h2-max-frame must be between 16384 and 16777215")
    if not 65535 <= args.h2_stream_window <= (1 << 31) - 1:
        parser.error("--h2-stream-window must be between 65535 and 2^31-1")
    if not 65535 <= args.h2_connection_window <= (1 << 31) - 1:
        parser.error("--h2-connection-window must be between 65535 and 2^31-1")
    args.system_list = systems
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    total = args.streams * args.bytes_per_stream
    timeout = args.timeout if args.timeout is not None else 60.0 + total / (4 * MB)

    def body() -> dict[str, Any]:
        machine = machine_info()
        pki = make_pki()
        results: dict[str, list[PairResult]] = {s: [] for s in args.system_list}
        for round_no in range(1, args.runs + 1):
            for system in args.system_list:
                server, client = _peers(system, args, pki)
                run = run_pair(server, client, timeout)
                results[system].append(run)
                log(
                    f"round {round_no}/{args.runs} {system}: "
                    f"{run.client['bytes'] / run.client['seconds'] / MB:.1f} MB/s, cpu client "
                    f"{run.client['cpu_s']:.2f} s server {run.server['cpu_s']:.2f} s"
                )
        summary = {s: _summarize(s, runs) for s, runs in results.items()}

        def mbps(system: str) -> float:
            return float(summary[system]["mb_per_s"]["median"])

        ratios: dict[str, float | None] = {}
        if "tcpls" in summary:
            for other in ("h2", "h2_patched", "ssl_conns"):
                if other in summary and mbps(other):
                    ratios[f"tcpls_over_{other}"] = round(mbps("tcpls") / mbps(other), 3)
        return {
            "machine": machine,
            "config": {
                "streams": args.streams,
                "bytes_per_stream": args.bytes_per_stream,
                "runs": args.runs,
                "chunk": args.chunk,
                "cipher_suite": CIPHER_SUITE,
                "host": HOST,
                "ssl_cipher_via": "OPENSSL_CONF (Ciphersuites in system_default)",
                "h2": {
                    "initial_window_size": args.h2_stream_window,
                    "connection_window": args.h2_connection_window,
                    "max_frame_size": args.h2_max_frame,
                    "window_update": "h2 acknowledge_received_data (update at half a window)",
                },
                "units": "MB = 10^6 bytes; CPU = user+system seconds per GiB moved",
            },
            "results": summary,
            "ratios": ratios,
        }

    return run_benchmark("streams", body)


if __name__ == "__main__":
    sys.exit(main())
