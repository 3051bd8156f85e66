"""``tcpls serve``, and serving until interrupted (also for ``tcpls perf -s``)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import TYPE_CHECKING, Any

from tcpls.cli.errors import EXIT_OK, EXIT_USAGE, CommandError, run, run_command
from tcpls.cli.sessions import server_config

if TYPE_CHECKING:
    from tcpls.aio.api import Server
    from tcpls.aio.server import Handler

__all__ = ["cmd_serve", "serve_until_interrupted"]


def cmd_serve(args: argparse.Namespace) -> int:
    """``tcpls serve``: in this process, or with ``--workers`` in worker processes."""
    if args.workers is None:
        if args.worker_ports is not None or args.steering_key or args.machine_id:
            print(
                "tcpls: --worker-ports, --machine-id and --steering-key need --workers",
                file=sys.stderr,
            )
            return EXIT_USAGE
        return run(lambda: _serve_here(args), debug=args.debug)
    return run_command(lambda: _serve_workers(args), debug=args.debug)


def _handler(args: argparse.Namespace) -> Handler:
    if args.files:
        from tcpls.apps.fileserve import make_file_handler

        return make_file_handler(args.files)
    if args.echo:
        from tcpls.apps.echo import echo_handler

        return echo_handler
    raise CommandError("choose what to serve: --echo or --files DIR", EXIT_USAGE)


def _mode(args: argparse.Namespace) -> str:
    return "plain TLS" if args.no_tcpls else "TCPLS (plain TLS fallback)"


async def _serve_here(args: argparse.Namespace) -> int:
    from tcpls.aio.api import serve

    config = server_config(args)
    handler = _handler(args)
    server = await serve(handler, args.host, args.port, config=config, scheduler=args.scheduler)
    return await serve_until_interrupted(server, f"tcpls: serving {_mode(args)} on", args.grace)


def _serve_workers(args: argparse.Namespace) -> int:
    # (no event loop here: the supervisor forks the workers, see run_server)
    from tcpls.aio.workers import run_server, worker_count

    config = server_config(args)
    handler = _handler(args)
    key = _steering_key(args.steering_key) if args.steering_key else None
    count = worker_count(args.workers)
    banner = f"tcpls: serving {_mode(args)} with {count} workers on"

    def ready(addresses: list[tuple[str, int]]) -> None:
        listed = ", ".join(_format_address(a) for a in addresses)
        print(f"{banner} {listed}", file=sys.stderr, flush=True)

    return run_server(
        handler,
        args.host,
        args.port,
        config=config,
        workers=count,
        grace=args.grace,
        scheduler=args.scheduler,
        worker_ports=args.worker_ports,
        machine=args.machine_id,
        steering_key=key,
        ready=ready,
    )


def _steering_key(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            raw = f.read(256).strip()
    except OSError as exc:
        raise CommandError(f"cannot read the steering key {path}: {exc.strerror}", 1) from None
    try:
        key = bytes.fromhex(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        key = b""
    if len(key) != 16:
        raise CommandError(
            f"the steering key {path} must hold 32 hex digits (16 bytes), e.g. from "
            "`openssl rand -hex 16`",
            EXIT_USAGE,
        )
    return key


async def serve_until_interrupted(server: Server, banner: str, grace: float = 0.0) -> int:
    """Announce the listening addresses, then serve until a signal: SIGINT (Ctrl-C)
    closes the sessions at once (``close_notify``), SIGTERM first gives them ``grace``
    seconds to finish (design: Graceful restart); a second signal ends the wait."""
    addresses = ", ".join(_format_address(s.getsockname()) for s in server.sockets)
    print(f"{banner} {addresses}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    received: list[int] = []
    loop = asyncio.get_running_loop()

    def on_signal(sig: int) -> None:
        received.append(sig)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    await stop.wait()
    stop.clear()
    if received[0] == signal.SIGTERM and grace > 0 and server.sessions:
        print(
            f"tcpls: stopping: {len(server.sessions)} sessions have {grace:g}s to finish "
            "(signal again to end them now)",
            file=sys.stderr,
            flush=True,
        )
        drain = asyncio.ensure_future(server.shutdown(grace))
        again = asyncio.ensure_future(stop.wait())
        await asyncio.wait([drain, again], return_when=asyncio.FIRST_COMPLETED)
        again.cancel()
        server.end_grace()
        await drain
    print("tcpls: shutting down", file=sys.stderr, flush=True)
    server.close()
    await server.wait_closed()
    return EXIT_OK


def _format_address(addr: Any) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
