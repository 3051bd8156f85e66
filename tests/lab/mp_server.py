"""A tcpls file server for the multipath lab tests and benchmarks, run in the server namespace.

Like ``tcpls serve --files DIR`` (same handler: :func:`tcpls.apps.fileserve.make_file_handler`),
plus what the command line does not offer: the server's own ``--scheduler`` (the sender of a
download decides which connection carries the data; ``tcpls serve`` always uses
``aggregate``) and ``--record-size`` (``SessionTuning.max_record_size``). Prints
``serving <port>`` on stdout once it listens; stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from lab_util import serve_until_signal  # (this folder: run as a script)

import tcpls
from tcpls.apps.fileserve import make_file_handler


async def main(args: argparse.Namespace) -> int:
    tuning = tcpls.SessionTuning()
    if args.record_size:
        tuning = tcpls.SessionTuning(max_record_size=args.record_size)
    config = tcpls.ServerConfig(
        certfile=args.cert,
        keyfile=args.key,
        advertise=tuple(args.advertise),
        user_timeout=args.user_timeout,
        max_connections=args.max_connections,
        tuning=tuning,
    )
    server = await tcpls.serve(
        make_file_handler(args.files),
        args.host,
        args.port,
        config=config,
        scheduler=args.scheduler,
    )
    print(f"serving {server.port}", flush=True)
    return await serve_until_signal(server)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--files", required=True)
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8443)
    p.add_argument("--scheduler", default="aggregate", choices=("aggregate", "pinned", "backup"))
    p.add_argument("--user-timeout", type=float, default=None, help="seconds")
    p.add_argument("--record-size", type=int, default=None)
    p.add_argument("--max-connections", type=int, default=4)
    p.add_argument("--advertise", action="append", default=[], metavar="IP:PORT")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse())))
