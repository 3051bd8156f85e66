"""Adding, retiring and replacing the TCP connections of a session.

:class:`Joins` carries out the public ``join``, ``migrate`` and ``retire`` of
:class:`tcpls.aio.session.Session`, and the client's break-before-make rejoin: when
the last connection failed, it joins again with a spare token (design: Joins,
Failure detection). It owns where the client connected or joined (the addresses a
rejoin tries) and which joins are under way; the connections themselves belong to
the session's driver.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket

from tcpls.aio import fastopen
from tcpls.aio.driver import SessionDriver
from tcpls.aio.info import ConnectionInfo
from tcpls.aio.protocol import ConnectionProtocol
from tcpls.errors import ConnectionClosedError, TCPLSError, raisable

__all__ = ["Joins", "Target"]

#: Where a client connected or joined: host, port, and the local address it bound.
Target = tuple[str, int, tuple[str, int] | None]

# The reconnections are the session's to log (the command line shows its messages).
logger = logging.getLogger("tcpls.aio.session")

#: Most advertised addresses a client joins on its own (``join_advertised``) in one
#: session: a hostile server could advertise hundreds (design: Addresses).
MAX_FOLLOWED_ADDRESSES = 8


def _same_scope(host: str, server: str | None) -> bool:
    """Whether a client may connect on its own to ``host``, advertised by the server at
    ``server``: never to an unspecified or multicast address, and to a loopback or
    link-local one only when the server is there too (a server elsewhere that names
    them points at the client's own machine or network)."""
    address = _plain(host)
    if address is None or address.is_unspecified or address.is_multicast:
        return False
    if isinstance(address, ipaddress.IPv4Address) and address in _THIS_NETWORK:
        return False
    if not (address.is_loopback or address.is_link_local):
        return True
    peer = _plain(server) if server is not None else None
    return peer is not None and (peer.is_loopback, peer.is_link_local) == (
        address.is_loopback,
        address.is_link_local,
    )


#: 0.0.0.0/8, "this network": connecting there reaches this machine on Linux.
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")


def _plain(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``host`` as an address, an IPv4-mapped IPv6 address as the IPv4 address it reaches
    (``::ffff:127.0.0.1`` is loopback on a dual-stack socket); ``None``: not an address."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class Joins:
    """The joins of one session, and the client's rejoin (break-before-make)."""

    def __init__(self, driver: SessionDriver, target: Target | None = None) -> None:
        self._driver = driver
        self._core = driver.core
        self._loop = driver.loop
        #: Where this client connected or joined, for rejoining (break-before-make).
        self._targets: list[Target] = [target] if target is not None else []
        #: Addresses a join is under way to (a rejoin does not try them again meanwhile).
        self._joining: set[tuple[str, int]] = set()
        self._rejoin_task: asyncio.Task[None] | None = None
        #: Following the advertised addresses: those joined or being joined, the joins.
        self._followed: set[tuple[str, int]] = set()
        self._following: set[asyncio.Task[None]] = set()
        core = driver.core
        if core.is_client:
            core.rejoin = core.tuning.rejoin_timeout > 0
        driver.rejoin = self._start_rejoin

    async def join(
        self,
        host: str,
        port: int,
        local_addr: tuple[str, int] | None = None,
        *,
        timeout: float | None = None,
        sock: socket.socket | None = None,
    ) -> ConnectionInfo:
        """Client: add a connection to ``host:port`` (see :meth:`tcpls.Session.join`)."""
        core = self._core
        driver = self._driver
        loop = self._loop
        if not core.is_client:
            raise TCPLSError("only the client adds connections (draft-04 §4.2)")
        await driver.wait_established()
        if not core.tcpls:
            raise TCPLSError("joins need TCPLS; this session fell back to plain TLS")
        if self._withdrawn(host, port):
            raise TCPLSError(f"the server withdrew {host}:{port}; no new connection may go there")
        timeout = timeout if timeout is not None else core.tuning.handshake_timeout
        # Right after the handshake the server has sent one token; the others come a
        # round trip later: wait for them rather than fail (design: Tokens).
        deadline = loop.time() + min(timeout, driver.first_tokens_window())
        while not core.tokens and not core.closed and (left := deadline - loop.time()) > 0:
            await driver.wait_token(left)
        tls, cid = core.start_join()
        protocol = ConnectionProtocol(driver, cid)
        waiter = driver.expect_join(cid)
        if (host, port, local_addr) not in self._targets:
            # kept even if this attempt fails: the address may work again for a rejoin
            self._targets.append((host, port, local_addr))
        self._joining.add((host, port))
        try:
            try:
                async with asyncio.timeout(timeout):
                    if sock is not None:
                        await loop.create_connection(lambda: protocol, sock=sock)
                    elif driver.fastopen:
                        await fastopen.open_connection(lambda: protocol, host, port, local_addr)
                    else:
                        await loop.create_connection(
                            lambda: protocol, host, port, local_addr=local_addr
                        )
            except (OSError, TimeoutError) as exc:
                core.abandon_join(cid, ConnectionClosedError(str(exc)))
                driver.process()
                if isinstance(exc, TimeoutError):
                    raise TimeoutError(f"timed out connecting to {host}:{port}") from None
                raise
            if core.closed or cid not in core.connections:
                # the session ended (or dropped the join) while TCP was connecting
                raise ConnectionClosedError("the session closed during the join")
            tls.start()
            driver.process()
            try:
                async with asyncio.timeout(timeout):
                    error = await waiter
            except TimeoutError:
                core.fail_connection(cid, ConnectionClosedError("the join timed out"), loop.time())
                driver.process()
                raise TimeoutError(f"joining {host}:{port} timed out") from None
        finally:
            driver.forget_join(cid)
            self._joining.discard((host, port))
        if error is not None:
            raise _about_join(error, host, port)
        return driver.info(cid)

    async def migrate(
        self,
        host: str,
        port: int,
        local_addr: tuple[str, int] | None = None,
        *,
        timeout: float | None = None,
    ) -> ConnectionInfo:
        """Client: join ``host:port``, then retire every other connection."""
        core = self._core
        info = await self.join(host, port, local_addr, timeout=timeout)
        for cid in list(core.connections):
            if cid != info.id:
                core.remove_connection(cid)
        self._driver.schedule_flush()
        await self._wait_removed([c for c in core.connections if c != info.id], timeout)
        return info

    async def retire(self, connection_id: int, *, timeout: float | None = None) -> None:
        """Remove one connection gracefully and wait until it is gone."""
        core = self._core
        if connection_id not in core.connections:
            raise ValueError(f"no connection {connection_id} in this session")
        if len(core.connections) < 2:
            raise TCPLSError("cannot retire the last connection; close the session instead")
        core.remove_connection(connection_id)
        self._driver.schedule_flush()
        await self._wait_removed([connection_id], timeout)

    async def _wait_removed(self, ids: list[int], timeout: float | None) -> None:
        core = self._core
        limit = timeout if timeout is not None else max(10.0, core.tuning.rejoin_timeout)
        deadline = self._loop.time() + limit
        while any(cid in core.connections for cid in ids) and not core.closed:
            if self._loop.time() > deadline:
                raise TimeoutError("connections were not retired in time")
            waiter = self._driver.next_removal()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await waiter

    def _withdrawn(self, host: str, port: int) -> bool:
        """Whether the server withdrew ``host:port`` (Remove Address)."""
        withdrawn = self._core.withdrawn_addresses
        if not withdrawn:
            return False
        with contextlib.suppress(ValueError):  # a name is compared as given
            host = str(ipaddress.ip_address(host.strip("[]")))
        return (host, port) in withdrawn

    def follow_advertised(self) -> None:
        """Join each address the server advertises, once, as soon as it is advertised."""
        self._driver.address_advertised = self._join_advertised
        for host, port in self._core.peer_addresses.values():  # (those known already)
            self._join_advertised(host, port)

    def _join_advertised(self, host: str, port: int) -> None:
        if (host, port) in self._followed or len(self._followed) >= MAX_FOLLOWED_ADDRESSES:
            return
        self._followed.add((host, port))
        if not _same_scope(host, self._driver.server_host):
            logger.warning("not joining %s:%d: the server advertised it from afar", host, port)
            return
        task = self._loop.create_task(self._follow(host, port))
        self._following.add(task)
        task.add_done_callback(self._following.discard)

    async def _follow(self, host: str, port: int) -> None:
        core = self._core
        try:
            await self._driver.wait_established()
            if core.closed or not core.tcpls or not core.tokens:
                return
            await self.join(host, port)
        except (OSError, TimeoutError, TCPLSError) as exc:
            logger.warning("joining the advertised address %s:%d failed: %s", host, port, exc)

    def _start_rejoin(self) -> None:
        if self._rejoin_task is None or self._rejoin_task.done():
            self._rejoin_task = self._loop.create_task(self._rejoin())

    async def _rejoin(self) -> None:
        """Break-before-make: the last connection died; join again with a spare token.

        Tries the addresses the server advertised, then the ones this client
        used, until one joins or ``rejoin_timeout`` passes.
        """
        core = self._core
        driver = self._driver
        loop = self._loop
        failed = driver.failed_targets
        limit = core.tuning.rejoin_timeout
        deadline = loop.time() + limit
        attempt_timeout = max(1.0, 2 * (core.tuning.user_timeout or 1.0))
        logger.warning("every connection to the server failed; reconnecting for up to %g s", limit)
        last_error = ""
        while not driver.has_working_connection() and not core.closed:
            server = self._driver.server_host
            targets: list[Target] = [
                (host, port, None)
                for host, port in core.peer_addresses.values()
                if _same_scope(host, server)
            ]
            targets += [t for t in reversed(self._targets) if t not in targets]
            targets = [t for t in targets if not self._withdrawn(t[0], t[1])]
            # not where a join is under way; the addresses that just failed come last
            ready = [t for t in targets if (t[0], t[1]) not in self._joining]
            ready.sort(key=lambda t: (t[0], t[1]) in failed)
            for host, port, local in ready:
                remaining = deadline - loop.time()
                if (
                    core.closed
                    or driver.has_working_connection()
                    or not core.tokens
                    or remaining <= 0
                ):
                    break
                try:
                    await self.join(host, port, local, timeout=min(attempt_timeout, remaining))
                    logger.warning("reconnected to %s:%d; the session goes on", host, port)
                    failed.clear()
                    return
                except (OSError, TimeoutError, TCPLSError) as exc:
                    logger.info("reconnecting over %s:%d failed: %s", host, port, exc)
                    last_error = f"{exc}"
            if targets and not core.tokens and self._joining and loop.time() < deadline:
                # no token for another try, but a join under way (the application's, say,
                # which took the last token) may still carry the session: wait for it
                await asyncio.sleep(0.05)
                continue
            if not targets or not core.tokens or loop.time() >= deadline:
                why = (
                    "no address is left to reconnect to"
                    if not targets
                    else "no join token is left"
                    if not core.tokens
                    else f"none answered within {limit:g} s"
                )
                core.rejoin = False
                if last_error:
                    why += f" (last attempt: {last_error})"
                core.abort(
                    ConnectionClosedError(f"every connection to the server failed and {why}")
                )
                driver.process()
                return
            await asyncio.sleep(min(0.2, max(0.0, deadline - loop.time())))


def _about_join(error: TCPLSError, host: str, port: int) -> TCPLSError:
    """``error`` (same class and alert) with a message that names the join's address."""
    named = raisable(error)
    named.args = (f"joining {host}:{port} failed: {error}",)
    return named
