"""``tcpls perf``: the command around :mod:`tcpls.apps.perf` (server with -s, client with -c)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tcpls.cli.errors import EXIT_OK, EXIT_USAGE, CommandError, describe_error
from tcpls.cli.progress import start_perf_progress
from tcpls.cli.serve import serve_until_interrupted
from tcpls.cli.sessions import open_session, save_ticket, server_config
from tcpls.errors import TCPLSError

__all__ = ["PERF_ANSWER_TIMEOUT", "PERF_GRACE", "cmd_perf"]

#: Seconds a perf client waits for the server to accept a test.
PERF_ANSWER_TIMEOUT = 5.0
#: Seconds a timed perf test may run past its length (-t) before it fails.
PERF_GRACE = 5.0


async def cmd_perf(args: argparse.Namespace) -> int:
    """``tcpls perf``: server with -s, client with -c HOST."""
    if args.server:
        if not args.cert or not args.key:
            raise CommandError("perf -s needs --cert and --key", EXIT_USAGE)
        from tcpls.aio.api import serve
        from tcpls.apps.perf import perf_handler

        server = await serve(
            perf_handler,
            args.host,
            args.port,
            config=server_config(args),
            scheduler=args.scheduler,
        )
        return await serve_until_interrupted(server, "tcpls perf: server listening on")
    if not args.client:
        raise CommandError("choose a role: -s (server) or -c HOST (client)", EXIT_USAGE)
    return await _perf_client(args)


async def _perf_client(args: argparse.Namespace) -> int:
    import json

    from tcpls.apps.perf import (
        NotAPerfServer,
        format_bytes,
        format_rate,
        print_result,
        run_client,
    )

    target = f"{args.client}:{args.port}"
    session = await open_session(args, args.client, args.port)
    seconds = None if args.bytes else args.time
    live = not args.json and sys.stderr.isatty()
    progress: Any = None
    task: Any = None
    if live:
        total = args.bytes if args.bytes else seconds
        progress, task = start_perf_progress("receiving" if args.reverse else "sending", total)

    def on_interval(elapsed: float, done: int, rate: float) -> None:
        if progress is not None:
            progress.update(
                task,
                completed=done if args.bytes else elapsed,
                done=format_bytes(done),
                rate=format_rate(rate),
            )
        elif not args.json:
            print(
                f"{elapsed:6.1f} s  {format_bytes(done):>11}  {format_rate(rate):>14}",
                file=sys.stderr,
                flush=True,
            )

    try:
        result = await run_client(
            session,
            streams=args.parallel,
            seconds=seconds,
            total_bytes=args.bytes,
            reverse=args.reverse,
            on_interval=on_interval,
            interval=args.interval,
            answer_timeout=PERF_ANSWER_TIMEOUT,
            grace=PERF_GRACE,
        )
    except NotAPerfServer as exc:
        session.abort()
        raise CommandError(f"{target} is not a tcpls perf server ({exc.reason})") from None
    except (TCPLSError, OSError) as exc:
        session.abort()
        raise CommandError(describe_error(exc, target)) from None
    finally:
        if progress is not None:
            progress.stop()
    await session.aclose(timeout=5)
    save_ticket(args, session)
    if args.json:
        print(json.dumps(result.as_json()))
    else:
        print_result(result)
    unconfirmed = [s for s in result.streams if s.confirmed is not None and s.confirmed != s.bytes]
    if unconfirmed:
        raise CommandError("the peer counted different byte totals than were sent")
    return EXIT_OK
