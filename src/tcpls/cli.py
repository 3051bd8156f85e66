"""The ``tcpls`` command line (also ``python -m tcpls``).

Every command prints one clear line to standard error and exits non-zero on
errors (unreachable host, refused connection, bad certificate, handshake
alert, missing or truncated files, a peer that is not the right kind of
server); warnings of the library, such as a client reconnecting after losing
every connection, are ``tcpls: <message>`` lines too. ``--debug`` shows
tracebacks and protocol logs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import signal
import socket
import stat
import sys
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, BinaryIO

from tcpls.errors import (
    CertificateVerificationError,
    ConfigurationError,
    ConnectionClosedError,
    NotTLSError,
    PeerAlert,
    ProtocolError,
    TCPLSError,
)

if TYPE_CHECKING:
    from tcpls.aio.api import Server
    from tcpls.aio.session import Session
    from tcpls.config import ClientConfig, ServerConfig

__all__ = ["main"]

# Accepted --ciphers names (kept here so that --help needs no TLS import)
_CIPHER_NAMES = (
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
)

log = logging.getLogger("tcpls.cli")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

#: Seconds a client keeps trying to join again after losing every connection.
DEFAULT_RECONNECT_TIMEOUT = 30.0
#: Seconds a perf client waits for the server to accept a test.
PERF_ANSWER_TIMEOUT = 5.0
#: Seconds a timed perf test may run past its length (-t) before it fails.
PERF_GRACE = 5.0
#: Seconds ``tcpls get`` waits for the server's answer header (beyond any reconnection).
GET_ANSWER_TIMEOUT = 10.0


class CommandError(Exception):
    """An error to print as one line, with an exit status."""

    def __init__(self, message: str, status: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.status = status


# --------------------------------------------------------------------- errors


def describe_error(exc: BaseException, target: str = "") -> str:
    """One line explaining ``exc`` to a person (no class names, no reprs)."""
    where = f" {target}" if target else ""
    text = _one_line(str(exc))
    if isinstance(exc, CertificateVerificationError):
        return f"certificate verification failed for{where or ' the peer'}: {_strip(text)}"
    if isinstance(exc, NotTLSError):
        return f"{target or 'the peer'} is not a TLS {exc.peer}: it sent {exc.sent}"
    if isinstance(exc, PeerAlert):
        return f"the peer{where} rejected the connection: {text}"
    if isinstance(exc, ProtocolError):
        return f"TLS/TCPLS protocol error with{where or ' the peer'}: {text}"
    if isinstance(exc, ConfigurationError):
        return text or "invalid configuration"
    if isinstance(exc, ConnectionClosedError):
        return f"connection{where} closed: {text}" if text else f"connection{where} closed"
    if isinstance(exc, TCPLSError):
        return text or f"the session{where} failed"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve{where}: {exc.strerror or text or 'unknown host'}"
    if isinstance(exc, ConnectionRefusedError):
        return f"cannot connect to{where}: connection refused"
    if isinstance(exc, TimeoutError):
        return text or f"timed out{where}"
    if isinstance(exc, OSError):
        reason = _one_line(exc.strerror or "") or text or "input/output error"
        return f"cannot connect to{where}: {reason}" if target else reason
    return f"{exc.__class__.__name__}: {text}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _strip(text: str) -> str:
    prefix = "certificate verification failed: "
    return text[len(prefix) :] if text.startswith(prefix) else text


def run(coro_factory: Callable[[], Coroutine[Any, Any, int]], debug: bool = False) -> int:
    """Run a command coroutine: errors become one line on stderr and an exit status."""
    try:
        return asyncio.run(coro_factory(), debug=False)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except CommandError as exc:
        print(f"tcpls: {exc}", file=sys.stderr)
        return exc.status
    except (TCPLSError, OSError) as exc:
        if debug:
            log.exception("command failed")
        print(f"tcpls: {describe_error(exc)}", file=sys.stderr)
        return EXIT_ERROR


# ------------------------------------------------------------------- options


def add_tls_client_options(p: argparse.ArgumentParser) -> None:
    """Options shared by the client commands."""
    verify = p.add_mutually_exclusive_group()
    verify.add_argument(
        "--cafile",
        metavar="FILE",
        help="PEM file of CA certificates to verify the server with "
        "(default: the certifi bundle of public CAs)",
    )
    verify.add_argument(
        "--insecure",
        action="store_true",
        help="do not verify the server's certificate (testing only: anyone can impersonate it)",
    )
    p.add_argument(
        "--server-name",
        metavar="NAME",
        help="name sent in SNI and checked against the certificate (default: HOST)",
    )
    p.add_argument(
        "--keylog",
        metavar="FILE",
        help="append TLS secrets to FILE in NSS key log format, for Wireshark "
        "(default: $SSLKEYLOGFILE when set)",
    )
    add_multipath_options(p)
    add_reconnect_option(p)
    add_common_tls_options(p)


def add_reconnect_option(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """--reconnect-timeout, for the client commands."""
    p.add_argument(
        "--reconnect-timeout",
        metavar="SECONDS",
        type=_non_negative_seconds,
        default=DEFAULT_RECONNECT_TIMEOUT,
        help=f"{prefix}when every TCP connection to the server has failed, keep trying to "
        "join the session again for this long before giving up; 0: give up at once "
        f"(default: {DEFAULT_RECONNECT_TIMEOUT:g})",
    )


def add_multipath_options(p: argparse.ArgumentParser) -> None:
    """Client options for the TCP connections of a session."""
    p.add_argument(
        "--join",
        metavar="HOST:PORT[@LOCAL_IP]",
        action="append",
        default=[],
        type=_join_target,
        help="after connecting, join another TCP connection to HOST:PORT (from LOCAL_IP if "
        "given) with a server-issued token; repeatable",
    )
    p.add_argument(
        "--local",
        metavar="IP",
        help="local address of the first connection (default: chosen by the kernel)",
    )
    add_scheduler_option(p)


def add_scheduler_option(p: argparse.ArgumentParser) -> None:
    """--scheduler, for clients and servers."""
    p.add_argument(
        "--scheduler",
        choices=("aggregate", "pinned", "backup"),
        default="aggregate",
        help="how THIS END spreads the data it sends over the session's connections "
        "(each end schedules its own sending: a download follows the server's choice): "
        "aggregate (every connection, the default), pinned (each stream stays on one), "
        "backup (the first connection; the others only when it fails)",
    )


def _join_target(text: str) -> tuple[str, int, str | None]:
    target, _, local = text.partition("@")
    host, sep, port_text = target.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT[@LOCAL_IP], got {text!r}")
    try:
        port = int(port_text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad port in {text!r}") from None
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"port out of range in {text!r}")
    return host.strip("[]"), port, local or None


async def open_session(args: argparse.Namespace, host: str, port: int) -> Session:
    """Connect with the client options, then make the ``--join`` connections."""
    from tcpls.aio.api import connect

    target = f"{host}:{port}"
    local = (args.local, 0) if getattr(args, "local", None) else None
    try:
        session = await connect(
            host,
            port,
            config=client_config(args),
            local_addr=local,
            scheduler=getattr(args, "scheduler", "aggregate"),
        )
    except (TCPLSError, OSError) as exc:
        raise CommandError(describe_error(exc, target)) from None
    for join_host, join_port, join_local in getattr(args, "join", []):
        where = f"{join_host}:{join_port}"
        try:
            info = await session.join(
                join_host, join_port, (join_local, 0) if join_local else None
            )
        except (TCPLSError, OSError) as exc:
            session.abort()
            raise CommandError(f"cannot join {where}: {describe_error(exc)}") from None
        log.info("joined connection %d to %s", info.id, where)
    return session


def add_common_tls_options(p: argparse.ArgumentParser) -> None:
    """Options shared by clients and servers."""
    p.add_argument(
        "--ciphers",
        metavar="LIST",
        help="colon-separated TLS 1.3 cipher suites in preference order, e.g. "
        "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256 "
        f"(known: {', '.join(_CIPHER_NAMES)})",
    )
    p.add_argument(
        "--no-tcpls",
        action="store_true",
        help="speak plain TLS 1.3 only (do not offer or accept TCPLS)",
    )
    p.add_argument(
        "--user-timeout",
        metavar="MS",
        type=_positive_int,
        help="TCP_USER_TIMEOUT for every connection, in milliseconds (default: 2000)",
    )
    p.add_argument("--debug", action="store_true", help="log protocol details and tracebacks")


def _positive_int(text: str) -> int:
    return int(_positive(text, int, "a number"))


def _non_negative_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError("must be a finite number of seconds, 0 or more")
    return value


def _positive(text: str, kind: Callable[[str], float], what: str) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value < 65536:
        raise argparse.ArgumentTypeError("port must be between 0 and 65535")
    return value


def _ciphers(args: argparse.Namespace) -> list[str] | None:
    return args.ciphers.split(":") if args.ciphers else None


def client_config(args: argparse.Namespace) -> ClientConfig:
    """A :class:`ClientConfig` from the client options."""
    from tcpls.config import ClientConfig

    config = ClientConfig(
        cafile=args.cafile,
        verify=not args.insecure,
        server_name=args.server_name,
        keylog_file=args.keylog,
        tcpls=not args.no_tcpls,
        cipher_suites=_ciphers(args),
        user_timeout=args.user_timeout / 1000 if args.user_timeout else None,
    )
    reconnect = getattr(args, "reconnect_timeout", None)
    if reconnect is None:
        return config
    tuning = dataclasses.replace(config.tuning, rejoin_timeout=reconnect)
    return dataclasses.replace(config, tuning=tuning)


def server_config(args: argparse.Namespace) -> ServerConfig:
    """A :class:`ServerConfig` from the server options."""
    from tcpls.config import ServerConfig

    return ServerConfig(
        certfile=args.cert,
        keyfile=args.key,
        keylog_file=args.keylog,
        tcpls=not args.no_tcpls,
        cipher_suites=_ciphers(args),
        user_timeout=args.user_timeout / 1000 if args.user_timeout else None,
        max_connections=getattr(args, "max_connections", 4),
        advertise=tuple(getattr(args, "advertise", None) or ()),
    )


def add_server_options(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    """Options shared by the server commands."""
    p.add_argument(
        "--cert", required=required, metavar="FILE", help="PEM certificate (chain) file"
    )
    p.add_argument("--key", required=required, metavar="FILE", help="PEM private key file")
    p.add_argument(
        "--host", default="0.0.0.0", help="address to listen on (default: 0.0.0.0, all IPv4)"
    )
    p.add_argument("--keylog", metavar="FILE", help="append TLS secrets to FILE (NSS format)")
    p.add_argument(
        "--advertise",
        metavar="IP:PORT",
        action="append",
        default=[],
        help="advertise another address of this server to clients (New Address); they may "
        "join or fail over to it; repeatable",
    )
    p.add_argument(
        "--max-connections",
        metavar="N",
        type=_positive_int,
        default=4,
        help="TCP connections allowed per session, the first included: the server hands out "
        "N-1 join tokens and replenishes them as connections leave (default: 4)",
    )


# ----------------------------------------------------------------- serve


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
    return await _serve_until_interrupted(server, f"tcpls: serving {mode} on")


async def _serve_until_interrupted(server: Server, banner: str) -> int:
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


# --------------------------------------------------------------- connect


async def _stdin_chunks(chunk_size: int = 65536) -> AsyncIterator[bytes]:
    """Standard input in chunks, read by a daemon thread.

    A read blocked in a thread of the default executor would keep ``asyncio.run``
    from returning (it waits for that executor) until standard input ends, so a
    failed session would hang the command; a daemon thread does not. At most a
    few chunks are read ahead.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes | OSError] = asyncio.Queue()
    room = threading.Semaphore(4)
    # the raw descriptor: a daemon thread blocked inside sys.stdin.buffer would hold its
    # lock at interpreter shutdown, which is fatal
    fd = sys.stdin.fileno()

    def pump() -> None:
        while True:
            room.acquire()
            item: bytes | OSError
            try:
                item = os.read(fd, chunk_size)
            except OSError as exc:
                item = exc
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is closed: the command is over
                return
            if not isinstance(item, bytes) or not item:
                return

    threading.Thread(target=pump, name="tcpls-stdin", daemon=True).start()
    while True:
        item = await queue.get()
        room.release()
        if isinstance(item, OSError):
            raise CommandError(f"cannot read standard input: {item.strerror or item}")
        if not item:
            return
        yield item


async def cmd_connect(args: argparse.Namespace) -> int:
    """``tcpls connect``: standard input to the server, the server's bytes to standard output."""
    target = f"{args.host}:{args.port}"
    session = await open_session(args, args.host, args.port)
    mode = "TCPLS" if session.tcpls_negotiated else "plain TLS 1.3 (peer has no TCPLS)"
    log.info("connected to %s: %s, %s", target, mode, session.cipher_suite)
    reader, writer = await session.open_stream()

    async def upload() -> None:
        async for chunk in _stdin_chunks():
            writer.write(chunk)
            await writer.drain()
        writer.write_eof()

    out = sys.stdout.buffer
    upload_task = asyncio.create_task(upload())
    try:
        while data := await reader.read(256 * 1024):
            out.write(data)
            out.flush()
    except (TCPLSError, OSError) as exc:
        upload_task.cancel()
        session.abort()
        raise CommandError(describe_error(exc, target)) from None
    failure = upload_task.exception() if upload_task.done() else None
    if isinstance(failure, CommandError):
        raise failure
    if failure is not None:
        raise CommandError(describe_error(failure, target))
    upload_task.cancel()
    await session.aclose(timeout=5)
    return EXIT_OK


# -------------------------------------------------------------------- perf


def _size(text: str) -> int:
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    raw = text.strip().upper().removesuffix("B").removesuffix("I")
    suffix = raw[-1:] if raw[-1:] in units else ""
    try:
        value = float(raw[: len(raw) - len(suffix)]) * units[suffix]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 100M, 1G)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("size must be positive")
    return int(value)


def _seconds(text: str) -> float:
    return _positive(text, float, "a number of seconds")


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
        return await _serve_until_interrupted(server, "tcpls perf: server listening on")
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
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[done]}"),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            transient=True,
        )
        total = args.bytes if args.bytes else seconds
        task = progress.add_task(
            "receiving" if args.reverse else "sending", total=total, done="", rate=""
        )
        progress.start()

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
    if args.json:
        print(json.dumps(result.as_json()))
    else:
        print_result(result)
    unconfirmed = [s for s in result.streams if s.confirmed is not None and s.confirmed != s.bytes]
    if unconfirmed:
        raise CommandError("the peer counted different byte totals than were sent")
    return EXIT_OK


# --------------------------------------------------------------------- get


async def cmd_get(args: argparse.Namespace) -> int:
    """``tcpls get``: download a file with progress and per-connection rates."""
    from tcpls.apps.fileserve import FileTransferError, NotAFileServer, OutputError, download
    from tcpls.apps.perf import format_bytes, format_rate

    target = f"{args.host}:{args.port}"
    output = _Output(args.output)  # before connecting: a local problem needs no server
    try:
        session = await open_session(args, args.host, args.port)
        live = sys.stderr.isatty()
        rates = _ConnectionRates(session)
        progress: Any = None
        if live:
            from rich.progress import (
                DownloadColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TransferSpeedColumn,
            )

            progress = Progress(
                TextColumn("[bold]{task.description}"),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[paths]}"),
                transient=True,
            )
            task = progress.add_task(args.path, total=None, paths="")
            progress.start()

        def on_start(size: int) -> None:
            if progress is not None:
                progress.update(task, total=size)

        def on_progress(done: int) -> None:
            if progress is not None:
                progress.update(task, completed=done, paths=rates.describe(format_rate))

        try:
            result = await download(
                session,
                args.path,
                output.file,
                on_start=on_start,
                on_progress=on_progress,
                answer_timeout=GET_ANSWER_TIMEOUT + args.reconnect_timeout,
            )
        except NotAFileServer as exc:
            session.abort()
            raise CommandError(f"{target} is not a tcpls file server ({exc.reason})") from None
        except OutputError as exc:
            session.abort()
            raise CommandError(f"cannot write {output.label}: {exc.strerror}") from None
        except FileTransferError as exc:
            session.abort()
            raise CommandError(str(exc)) from None
        except (TCPLSError, OSError) as exc:
            session.abort()
            raise CommandError(describe_error(exc, target)) from None
        finally:
            if progress is not None:
                progress.stop()
        output.commit()
    finally:
        output.discard()
    connections = rates.describe(format_rate, final=True)
    await session.aclose(timeout=5)
    rate = result.bytes / result.seconds if result.seconds else 0.0
    print(
        f"tcpls: {args.path}: {format_bytes(result.bytes)} in {result.seconds:.2f} s "
        f"({format_rate(rate)}){'; ' + connections if connections else ''}",
        file=sys.stderr,
    )
    if args.sha256:
        print(
            f"{result.sha256}  {args.output}", file=sys.stderr if output.is_stdout else sys.stdout
        )
    return EXIT_OK


class _Output:
    """Where ``tcpls get`` writes.

    A regular file (or a new one) is written as a temporary file in the same
    directory, renamed over the destination by :meth:`commit` only; anything
    else that exists (``/dev/null``, a FIFO) is written directly, and ``-`` is
    standard output. :meth:`discard` removes the temporary file of a download
    that did not commit.
    """

    def __init__(self, name: str) -> None:
        self.is_stdout = name == "-"
        self.label = "standard output" if self.is_stdout else name
        self._temp: str | None = None
        self._final = ""
        self._owned = False
        if self.is_stdout:
            self.file: BinaryIO = sys.stdout.buffer
            return
        self._final = os.path.realpath(name)
        try:
            info: os.stat_result | None = os.stat(self._final)
        except FileNotFoundError:
            info = None
        except OSError as exc:
            raise CommandError(f"cannot write {name}: {exc.strerror}") from None
        try:
            if info is not None and stat.S_ISDIR(info.st_mode):
                raise CommandError(f"cannot write {name}: it is a directory")
            if info is not None and not stat.S_ISREG(info.st_mode):
                self.file = open(self._final, "wb")  # noqa: SIM115 - closed in discard()
            else:
                self.file = self._create_temp(info)
        except OSError as exc:
            raise CommandError(f"cannot write {name}: {exc.strerror}") from None
        self._owned = True

    def _create_temp(self, existing: os.stat_result | None) -> BinaryIO:
        directory, base = os.path.split(self._final)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        while True:
            temp = os.path.join(directory, f".{base}.{secrets.token_hex(4)}.part")
            try:
                fd = os.open(temp, flags, 0o666)  # the umask applies, as for a new file
            except FileExistsError:
                continue
            break
        self._temp = temp
        if existing is not None:
            with contextlib.suppress(OSError):
                os.fchmod(fd, stat.S_IMODE(existing.st_mode))
        return os.fdopen(fd, "wb")

    def commit(self) -> None:
        """Flush everything and put the file in place."""
        try:
            if self._owned:
                self.file.close()
            else:
                self.file.flush()
            if self._temp is not None:
                os.replace(self._temp, self._final)
                self._temp = None
        except OSError as exc:
            raise CommandError(f"cannot write {self.label}: {exc.strerror}") from None

    def discard(self) -> None:
        """Close the file; remove the temporary file unless :meth:`commit` renamed it."""
        if self._owned:
            with contextlib.suppress(OSError):
                self.file.close()
        if self._temp is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._temp)
            self._temp = None


class _ConnectionRates:
    """Per-connection receive rates of a session, for progress displays."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._start = asyncio.get_running_loop().time()
        self._last: dict[int, tuple[float, int]] = {}
        self._total: dict[int, int] = {}

    def describe(self, fmt: Callable[[float], str], final: bool = False) -> str:
        now = asyncio.get_running_loop().time()
        parts = []
        for info in self.session.connections:
            self._total[info.id] = info.bytes_received
            then, before = self._last.get(info.id, (self._start, 0))
            if final:
                then, before = self._start, 0
            rate = (info.bytes_received - before) / (now - then) if now > then else 0.0
            self._last[info.id] = (now, info.bytes_received)
            parts.append(f"conn {info.id}: {fmt(rate)}")
        return ", ".join(parts)


# ------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``tcpls`` command."""
    parser = argparse.ArgumentParser(
        prog="tcpls",
        description="TCPLS (draft-piraux-tcpls-04): TLS 1.3 over one or more TCP connections, "
        "with streams, joins and failover. Falls back to plain TLS 1.3 with ordinary peers.",
    )
    parser.add_argument("--version", action="version", version=f"tcpls {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "serve",
        help="run a server (echo, or files for `tcpls get`)",
        description="Accept TCPLS and TLS 1.3 sessions. With --echo, every byte received on a "
        "stream is sent back on it, and our direction ends after the peer's. Runs until "
        "interrupted; a failing session never stops the server.",
    )
    add_server_options(p)
    p.add_argument("--port", "-p", type=_port, default=8443, help="TCP port (default: 8443)")
    add_scheduler_option(p)
    add_common_tls_options(p)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--echo", action="store_true", help="echo every stream back to its sender")
    mode.add_argument(
        "--files",
        metavar="DIR",
        help="serve the files under DIR: a client writes `GET /path\\r\\n` on a stream; the "
        "server answers `OK <size>\\r\\n` and the file, or `ERR <code> <reason>\\r\\n`, "
        "and ends the stream (see `tcpls get`)",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "connect",
        help="connect and relay standard input/output",
        description="Connect to HOST PORT (TCPLS, or plain TLS 1.3 if the server has no TCPLS), "
        "like `openssl s_client -quiet`: standard input goes to the server, what the server "
        "sends goes to standard output. EOF on standard input ends our direction; the command "
        "exits 0 when the server's direction ends cleanly.",
    )
    p.add_argument("host", metavar="HOST", help="server name or address")
    p.add_argument("port", metavar="PORT", type=_port, help="server TCP port")
    add_tls_client_options(p)
    p.set_defaults(func=cmd_connect)

    p = sub.add_parser(
        "perf",
        help="measure goodput, like iperf3",
        description="Measure goodput between two hosts, like iperf3. Run `tcpls perf -s --cert "
        "F --key F` on one and `tcpls perf -c HOST` on the other. The client shows live "
        "progress and a final table (or one JSON object with --json). The client gives up "
        f"when the server has not accepted the test within {PERF_ANSWER_TIMEOUT:g} s (it is "
        f"not a perf server); a test of -t T seconds fails if it has not ended after T + "
        f"{PERF_ANSWER_TIMEOUT + PERF_GRACE:g} s.",
    )
    role = p.add_mutually_exclusive_group()
    role.add_argument("-s", "--server", action="store_true", help="run the server")
    role.add_argument("-c", "--client", metavar="HOST", help="run the client against HOST")
    p.add_argument("-p", "--port", type=_port, default=5201, help="TCP port (default: 5201)")
    add_server_options(p, required=False)
    amount = p.add_mutually_exclusive_group()
    amount.add_argument(
        "-t",
        "--time",
        type=_seconds,
        default=10.0,
        help="client: seconds to transmit (10); also bounds the whole run (see above)",
    )
    amount.add_argument(
        "-n", "--bytes", type=_size, help="client: bytes to transmit instead (e.g. 1G, 100M)"
    )
    p.add_argument(
        "-P", "--parallel", type=_positive_int, default=1, help="client: parallel streams (1)"
    )
    p.add_argument(
        "-R", "--reverse", action="store_true", help="client: the server sends, we receive"
    )
    p.add_argument(
        "-i", "--interval", type=_seconds, default=1.0, help="seconds between reports (1)"
    )
    p.add_argument("--json", action="store_true", help="client: print one JSON object")
    verify = p.add_mutually_exclusive_group()
    verify.add_argument("--cafile", metavar="FILE", help="client: CA certificates to verify with")
    verify.add_argument(
        "--insecure", action="store_true", help="client: do not verify the certificate"
    )
    p.add_argument("--server-name", metavar="NAME", help="client: name for SNI and verification")
    add_multipath_options(p)
    add_reconnect_option(p, prefix="client: ")
    add_common_tls_options(p)
    p.set_defaults(func=cmd_perf)

    p = sub.add_parser(
        "get",
        help="download a file from `tcpls serve --files`",
        description="Download PATH from a `tcpls serve --files DIR` server over one stream, "
        "with a progress bar and the rate of each TCP connection of the session. The server "
        "announces the file's size first: a missing file, a file the server cannot read and a "
        "transfer cut short are each reported as an error (exit status 1). The file is written "
        "to a temporary file next to FILE and renamed over it only when complete, so a failed "
        "download never damages an existing FILE.",
    )
    p.add_argument("host", metavar="HOST", help="server name or address")
    p.add_argument("port", metavar="PORT", type=_port, help="server TCP port")
    p.add_argument("path", metavar="PATH", help="the file to fetch, e.g. /big.bin")
    p.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        required=True,
        help="where to write it; - for standard output (streamed as it arrives: a transfer "
        "cut short leaves partial output there, and the exit status is 1)",
    )
    p.add_argument(
        "--sha256",
        action="store_true",
        help="after a complete download, print the SHA-256 of the file (on standard output, "
        "or on standard error with -o -)",
    )
    add_tls_client_options(p)
    p.set_defaults(func=cmd_get)

    from tcpls.lab.cli import add_subparser as add_lab

    add_lab(sub)
    return parser


def _version() -> str:
    from tcpls import __version__

    return __version__


class _CleanFormatter(logging.Formatter):
    """``tcpls: <message>`` on one line, without tracebacks (the default, without --debug).

    Records of loggers outside the ``tcpls`` hierarchy also name their logger.
    """

    def format(self, record: logging.LogRecord) -> str:
        message = _one_line(record.getMessage())
        if record.name == "tcpls" or record.name.startswith("tcpls."):
            return f"tcpls: {message}"
        return f"tcpls: {record.name}: {message}"


class _StderrHandler(logging.Handler):
    """Writes to the current ``sys.stderr`` (so that a live progress display can redirect it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:
            self.handleError(record)


def configure_logging(debug: bool) -> None:
    """Warnings as ``tcpls: <message>`` lines; everything, with details, under ``--debug``."""
    handler = _StderrHandler()
    if debug:
        handler.setFormatter(logging.Formatter("tcpls: %(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(_CleanFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.WARNING)
    if not debug:
        # asyncio logs unretrieved exceptions with tracebacks; the commands report errors
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tcpls`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    debug = bool(getattr(args, "debug", False)) or bool(os.environ.get("TCPLS_DEBUG"))
    configure_logging(debug)
    func: Callable[[argparse.Namespace], Any] = args.func
    if not asyncio.iscoroutinefunction(func):
        status: int = func(args)  # synchronous commands (lab) report their own errors
        return status
    return run(lambda: func(args), debug=debug)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
