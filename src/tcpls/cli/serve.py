"""``tcpls serve``, and serving until interrupted (also for ``tcpls perf -s``)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import TYPE_CHECKING, Any

from tcpls.cli.errors import EXIT_OK, EXIT_USAGE, CommandError
from tcpls.cli.sessions import server_config

if TYPE_CHECKING:
    from tcpls.aio.api import Server

__all__ = ["cmd_serve", "serve_until_interrupted"]


async def cmd_serve(args: argparse.Namespace) -> int:
    """``tcpls serve``."""
    from tcpls.aio.api import serve

    config = server_config(args)
    if args.files:
        from tcpls.apps.fileserve import make_file_handler

        handler = make_file_handler(args.files)
    elif args.echo:
        from tcpls.apps.echo import echo_handler

        handler = echo_handler
    else:
        raise CommandError("choose what to serve: --echo or --files DIR", EXIT_USAGE)
    server = await serve(handler, args.host, args.port, config=config, scheduler=args.scheduler)
    mode = "plain TLS" if args.no_tcpls else "TCPLS (plain TLS fallback)"
    return await serve_until_interrupted(server, f"tcpls: serving {mode} on")


async def serve_until_interrupted(server: Server, banner: str) -> int:
    """Announce the listening addresses, then serve until SIGINT or SIGTERM."""
    addresses = ", ".join(_format_address(s.getsockname()) for s in server.sockets)
    print(f"{banner} {addresses}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print("tcpls: shutting down", file=sys.stderr, flush=True)
    server.close()
    await server.wait_closed()
    return EXIT_OK


def _format_address(addr: Any) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
