"""``make demo`` / ``python -m tcpls.apps.demo``: a tour of what tcpls does.

Starts a tcpls server on 127.0.0.1 with a throw-away certificate, then:

1. a TCPLS session: several streams echoed at once, with what was negotiated;
2. a plain TLS 1.3 session (the client does not offer TCPLS): the fallback;
3. as root, in a network lab of two emulated paths: one download aggregated
   over both paths, then
4. a download that survives its path being blackholed (failover).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

import tcpls
from tcpls.apps.echo import echo_handler
from tcpls.devcert import make_test_pki

#: Where the tour is printed.
console = Console()


async def _echo_stream(session: tcpls.Session, size: int) -> tuple[int, float, bool]:
    reader, writer = await session.open_stream()
    payload = os.urandom(size)
    start = time.perf_counter()

    async def send() -> None:
        writer.write(payload)
        writer.write_eof()
        await writer.drain()

    # read while writing: the echo comes back while we still send
    _, echoed = await asyncio.gather(send(), reader.read())
    elapsed = time.perf_counter() - start
    ok = hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()
    return writer.stream_id, elapsed, ok


def _negotiated(session: tcpls.Session, title: str) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row(
        "protocol",
        "TCPLS (draft-piraux-tcpls-04)"
        if session.tcpls_negotiated
        else "plain TLS 1.3 (fallback)",
    )
    table.add_row("cipher suite", session.cipher_suite or "?")
    if session.tcpls_negotiated:
        tokens = session.spare_token_sequences
        table.add_row("join tokens received", ", ".join(f"#{s}" for s in tokens))
    for info in session.connections:
        rtt = f"{info.rtt * 1000:.2f} ms" if info.rtt is not None else "n/a"
        local = f"{info.local_address[0]}:{info.local_address[1]}" if info.local_address else "?"
        remote = (
            f"{info.remote_address[0]}:{info.remote_address[1]}" if info.remote_address else "?"
        )
        table.add_row(f"connection {info.id}", f"{local} → {remote}, TCP rtt {rtt}")
    return table


async def main() -> int:
    """Run the tour; the exit status: 1 if an echoed stream came back altered, else 0."""
    with tempfile.TemporaryDirectory() as tmp:
        pki = make_test_pki(tmp)
        server_config = tcpls.ServerConfig(certfile=str(pki.cert_file), keyfile=str(pki.key_file))
        async with await tcpls.serve(echo_handler, "127.0.0.1", 0, config=server_config) as server:
            console.print(
                f"[bold]tcpls echo server[/] on 127.0.0.1:{server.port} "
                f"(certificate from a throw-away CA)\n"
            )

            config = tcpls.ClientConfig(cafile=str(pki.ca_file), server_name="localhost")
            async with tcpls.connect("127.0.0.1", server.port, config=config) as session:
                sizes = [1 << 20, 4 << 20, 16 << 10, 8 << 20]
                results = await asyncio.gather(*(_echo_stream(session, n) for n in sizes))
                console.print(_negotiated(session, "1. TCPLS session"))
                streams = Table(title="streams echoed concurrently", title_justify="left")
                for col in ("stream", "bytes", "round trip", "intact (sha256)"):
                    streams.add_column(col)
                for size, (sid, elapsed, ok) in zip(sizes, results, strict=True):
                    streams.add_row(
                        str(sid),
                        f"{size:,}",
                        f"{elapsed * 1000:.1f} ms",
                        "[green]yes[/]" if ok else "[red]NO[/]",
                    )
                console.print(streams)
                if not all(ok for _, _, ok in results):
                    return 1

            plain = tcpls.ClientConfig(
                cafile=str(pki.ca_file), server_name="localhost", tcpls=False
            )
            async with tcpls.connect("127.0.0.1", server.port, config=plain) as session:
                console.print()
                console.print(_negotiated(session, "2. client without TCPLS: plain TLS 1.3"))
                sid, elapsed, ok = await _echo_stream(session, 1 << 20)
                console.print(
                    f"one bytestream echoed: 1,048,576 bytes in {elapsed * 1000:.1f} ms, "
                    f"intact: {'[green]yes[/]' if ok else '[red]NO[/]'}"
                )
                if not ok:
                    return 1
        console.print()
        from tcpls.apps import demo_lab

        skipped = await asyncio.to_thread(demo_lab.run, console, pki, Path(tmp))
        if skipped:
            console.print(f"[yellow]3-4. multipath in a network lab: skipped ({skipped})[/]")
    console.print("\n[bold green]demo complete[/]")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
