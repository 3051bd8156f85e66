"""A stateful property test: two sessions driven at random through links that fail.

:class:`SessionMachine` opens streams on both sides, writes random amounts (0 to 200 KB,
or several writes at once), ends streams, reads some or all of what arrived at random
moments (small receive buffers, so that reading pauses and resumes: backpressure), pumps
part-way or fully, lets time pass (ACK delays, Pings, TCP user timeouts, idle and rejoin
timers), joins connections (and cuts joins half-way), cuts links (reset, stall,
blackhole, or one direction only: the receiver's ACK records wait or vanish), restores
them, retires connections gracefully, pins streams, switches schedulers, pauses and
resumes the application's reading, closes one side early, and misuses the API.

After every step it checks that each side read exactly a prefix of what the other side
wrote on each stream and nothing beyond it, that the memory counters of both sessions add
up, that no connection fails unless its link did, and that neither session ended with an
error unless that was legitimate (every connection lost with no way back, idle timeout:
see :meth:`SessionMachine._judge`). At teardown it restores every link, lets time pass,
reads everything, closes both sessions gracefully and checks that every stream delivered
all its bytes, and its FIN.

The links are :class:`~tests.core.stateful_util.NetHarness` links: TCP and the I/O layer
are modelled (send buffers, zero windows, user timeouts, RST, EOF, reading pauses,
rejoins), so that a failure means a bug in ``src/`` rather than a link doing something
TCP never does.

The bugs it found are the regression tests at the end of this file (marked ``# bug found
by the stateful test``).

``make test`` runs a fixed, derandomized search of 400 examples (about 35 s). A longer,
random search (no time limit then)::

    TCPLS_STATEFUL_EXAMPLES=5000 .venv/bin/python -m pytest tests/core/test_stateful.py -k random

(``TCPLS_STATEFUL_STEPS`` sets the steps per example, 50 by default.)
"""

from __future__ import annotations

import logging
import os
import random
import traceback
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from tcpls.config import SessionTuning
from tcpls.core.connection import ConnectionStatus
from tcpls.core.events import StreamOpened
from tcpls.core.session import CoreSession, SessionState
from tcpls.devcert import DevPKI
from tcpls.errors import ConnectionClosedError, TCPLSError
from tcpls.tls.record import RecordReader
from tests.core.stateful_util import SIDES, NetHarness, NetLink, Side

IDLE_TIMEOUT = 45.0

#: Small receive buffers so that reading really pauses; short timers so that steps of
#: up to 2 s run into them.
TUNING = SessionTuning(
    stream_receive_buffer=64 * 1024,
    session_receive_buffer=256 * 1024,
    max_unacked_bytes=512 * 1024,
    ping_after=0.3,
    ping_timeout=0.3,
    user_timeout=1.0,
    rejoin_timeout=3.0,
    idle_timeout=IDLE_TIMEOUT,
    close_timeout=5.0,
    handshake_timeout=3.0,
)

_EXAMPLES = int(os.environ.get("TCPLS_STATEFUL_EXAMPLES", "0"))
_STEPS = int(os.environ.get("TCPLS_STATEFUL_STEPS", "50"))

MAX_STREAMS = 10  # per side
MAX_LINKS = 4

_sides = st.sampled_from(SIDES)
_sizes = st.one_of(
    st.sampled_from([0, 1, 700, 16_369, 16_370, 65_536, 200_000]),
    st.integers(0, 200_000),
)
_cuts = st.sampled_from(
    ["reset", "stall", "blackhole", "hold:client", "hold:server", "drop:client", "drop:server"]
)
_delays = st.sampled_from([0.001, 0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.6, 1.0, 2.0])


def _peer(side: Side) -> Side:
    return "server" if side == "client" else "client"


@dataclass
class Direction:
    """One direction of one stream: what the sender wrote, what the receiver read."""

    sender: Side
    sid: int
    written: bytearray = field(default_factory=bytearray)
    read: bytearray = field(default_factory=bytearray)
    fin: bool = False  # send_eof was called
    eof: bool = False  # the receiver reached the end

    def __repr__(self) -> str:
        return (
            f"<{self.sender} stream {self.sid}: wrote {len(self.written)}"
            f"{' +FIN' if self.fin else ''}, read {len(self.read)}{' +EOF' if self.eof else ''}>"
        )


class _Errors(logging.Handler):
    """Keeps the tracebacks tcpls logs (an internal error becomes an alert: its cause is here)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + "".join(traceback.format_exception(*record.exc_info))
        self.seen.append(text)


class SessionMachine(RuleBasedStateMachine):
    """Random use of a client and a server session over failing links (module docstring)."""

    pki: DevPKI  # set by the test function

    def __init__(self) -> None:
        super().__init__()
        self.logged = _Errors()
        h = NetHarness(self.pki, tuning=TUNING)
        h.pump()
        assert h.client.tcpls and h.server.tcpls
        h.client.rejoin = True  # break-before-make, as the aio layer sets it
        h.react_to_close = True  # an application closes when its peer closed
        h.auto_rejoin = True
        h.advance(0.1)
        self.h = h
        logging.getLogger("tcpls").addHandler(self.logged)
        self.rng = random.Random(0)
        self.dirs: dict[tuple[Side, int], Direction] = {}
        #: Streams each side knows (it opened them, or the peer's data announced them).
        self.known: dict[Side, list[int]] = {"client": [], "server": []}
        self._events_seen = {"client": 0, "server": 0}
        self._judged: set[Side] = set()
        self._failures_judged = 0
        #: Why losing the session is legitimate (every connection lost, no way back).
        self.ended: str | None = None
        self.ended_at = float("inf")
        self.final = False

    # ------------------------------------------------------------------ helpers

    def _session(self, side: Side) -> CoreSession:
        return self.h.session(side)

    def _open(self, side: Side) -> bool:
        """Whether ``side`` may still write (established, not closing)."""
        return self._session(side).state is SessionState.ESTABLISHED

    def _learn(self, side: Side, sid: int) -> None:
        if sid not in self.known[side]:
            self.known[side].append(sid)
        self.dirs.setdefault((side, sid), Direction(side, sid))

    def _writable(self, side: Side) -> list[Direction]:
        if not self._open(side):
            return []
        return [d for sid in self.known[side] if not (d := self.dirs[(side, sid)]).fin]

    def _incoming(self, side: Side) -> list[Direction]:
        """The directions ``side`` receives on."""
        return [d for d in self.dirs.values() if d.sender != side]

    def _links(self) -> list[NetLink]:
        return [link for link in self.h.net_links() if link.state != "closed"]

    def _settle(self) -> None:
        """What happens between two steps: learn new streams, judge failures and endings."""
        self._scan_events()
        self.no_healthy_connection_fails()  # (it marks the links whose failure is excused)
        self._judge()

    def _scan_events(self) -> None:
        h = self.h
        for side, events in (("client", h.client_events), ("server", h.server_events)):
            start = self._events_seen[side]
            self._events_seen[side] = len(events)
            for ev in events[start:]:
                if isinstance(ev, StreamOpened):
                    self._learn(side, ev.stream_id)  # type: ignore[arg-type]
                    self.dirs.setdefault(
                        (_peer(side), ev.stream_id),  # type: ignore[arg-type]
                        Direction(_peer(side), ev.stream_id),  # type: ignore[arg-type]
                    )

    def _read(self, side: Side, d: Direction, n: int) -> None:
        session = self._session(side)
        stream = session.streams.get(d.sid)
        data = session.read(d.sid, n)
        if data:
            start = len(d.read)
            end = start + len(data)
            assert end <= len(d.written), f"{side} read {end} bytes of {d}, more than written"
            if d.written[start:end] != data:
                first = next(i for i in range(len(data)) if data[i] != d.written[start + i])
                raise AssertionError(f"{side} read wrong bytes at offset {start + first} of {d}")
            d.read += data
        if not d.eof:
            # a stream both sides ended and read is forgotten, maybe before we looked
            # (design: Streams)
            gone = d.sid in self.known[side] and d.sid not in session.streams
            if (stream is not None and stream.recv.at_eof) or gone:
                d.eof = True
                assert len(d.read) == len(d.written), f"{side} reached EOF early on {d}"
                assert d.fin or self.h.app_closed[d.sender] or d.sender in self.h.idle_gap, (
                    f"{side} reached EOF on {d}, which the sender never ended"
                )
        self.h.after_read(side)

    def _read_all(self) -> None:
        for side in SIDES:
            for d in self._incoming(side):
                self._read(side, d, -1)
        self.h.pump()
        self._settle()

    # ------------------------------------------------------------------ rules

    @initialize(
        read_size=st.sampled_from([None, None, 1000, 16_384, 65_536, 200_000]),
        window=st.sampled_from([64 * 1024, 256 * 1024, 1024 * 1024]),
    )
    def network(self, read_size: int | None, window: int) -> None:
        """How the I/O layer reads (whole transmissions, or reads of ``read_size`` bytes
        into ``get_buffer`` as the aio layer does) and how much a socket buffers."""
        self.h.read_size = read_size
        self.h.window = window

    @rule(side=_sides)
    def open_stream(self, side: Side) -> None:
        if self._open(side) and len(self.known[side]) < MAX_STREAMS:
            self._learn(side, self._session(side).open_stream())
        self._settle()

    def _write(self, side: Side, index: int, sizes: list[int]) -> None:
        candidates = self._writable(side)
        if not candidates and self._open(side) and len(self.known[side]) < MAX_STREAMS:
            self._learn(side, self._session(side).open_stream())
            candidates = self._writable(side)
        if candidates:
            d = candidates[index % len(candidates)]
            for size in sizes:
                data = self.rng.randbytes(size)
                self._session(side).send(d.sid, data)
                d.written += data
        self._settle()

    @rule(side=_sides, index=st.integers(0, 2 * MAX_STREAMS), size=_sizes)
    def write(self, side: Side, index: int, size: int) -> None:
        self._write(side, index, [size])

    @rule(
        side=_sides,
        index=st.integers(0, 2 * MAX_STREAMS),
        sizes=st.lists(st.integers(0, 200_000), min_size=2, max_size=6),
    )
    def write_a_lot(self, side: Side, index: int, sizes: list[int]) -> None:
        """Several writes at once (up to 1.2 MB): buffers fill, reading pauses."""
        self._write(side, index, sizes)

    @rule(side=_sides, index=st.integers(0, 2 * MAX_STREAMS))
    def finish(self, side: Side, index: int) -> None:
        candidates = self._writable(side)
        if candidates:
            d = candidates[index % len(candidates)]
            self._session(side).send_eof(d.sid)
            d.fin = True
        self._settle()

    @rule(
        side=_sides,
        index=st.integers(0, 4 * MAX_STREAMS),
        n=st.one_of(st.just(-1), st.integers(1, 100_000)),
    )
    def read(self, side: Side, index: int, n: int) -> None:
        candidates = self._incoming(side)
        if candidates:
            self._read(side, candidates[index % len(candidates)], n)
            self.h.pump()
        self._settle()

    @rule(side=_sides)
    def read_everything(self, side: Side) -> None:
        for d in self._incoming(side):
            self._read(side, d, -1)
        self.h.pump()
        self._settle()

    @rule(rounds=st.integers(0, 3))
    def pump(self, rounds: int) -> None:
        if rounds:
            self.h.pump_rounds(rounds)
        else:
            self.h.pump()
        self._settle()

    @rule(seconds=_delays)
    def advance(self, seconds: float) -> None:
        self.h.advance(seconds)
        self._settle()

    @rule(go=st.integers(0, 31))
    def long_wait(self, go: int) -> None:
        """Now and then, long enough for the idle timeout (if nothing moves)."""
        if go == 0:
            self.h.advance(IDLE_TIMEOUT + 1.0)
        self._settle()

    @rule(pump=st.booleans())
    def join(self, pump: bool) -> None:
        """Join a connection; without ``pump`` the join's hello is only queued, so the
        next steps may cut its link in the middle of the exchange."""
        client = self.h.client
        if (
            client.state is SessionState.ESTABLISHED
            and client.tokens
            and len(client.connections) < MAX_LINKS
        ):
            self.h.join(pump=pump)
        self._settle()

    @rule(side=_sides, go=st.integers(0, 7))
    def close(self, side: Side, go: int) -> None:
        """Now and then, one side closes in the middle (the other may still send until
        close_notify reaches it; then its application closes too)."""
        if go == 0 and self._open(side):
            self.h.close(side)
        self._settle()

    @rule(index=st.integers(0, 7), how=_cuts)
    def cut(self, index: int, how: str) -> None:
        links = self._links()
        if links:
            self.h.cut(links[index % len(links)], how)
            self.h.pump()
        self._settle()

    @rule(index=st.integers(0, 7))
    def restore(self, index: int) -> None:
        links = [link for link in self._links() if link.state in ("stall", "blackhole")]
        if links:
            self.h.restore(links[index % len(links)])
            self.h.pump()
        self._settle()

    @rule(side=_sides, index=st.integers(0, 7))
    def remove_connection(self, side: Side, index: int) -> None:
        session = self._session(side)
        active = [
            cid for cid, c in session.connections.items() if c.status is ConnectionStatus.ACTIVE
        ]
        if len(active) > 1 and session.state is SessionState.ESTABLISHED:
            cid = active[index % len(active)]
            link = self.h.link_of(side, cid)
            if link is not None:
                # retiring a connection while the peer still sends on it may fail it
                link.faulted = True
            session.remove_connection(cid)
            self.h.pump()
        self._settle()

    @rule(side=_sides, paused=st.booleans())
    def app_reading(self, side: Side, paused: bool) -> None:
        self.h.set_app_paused(side, paused)
        self.h.pump()
        self._settle()

    @rule(side=_sides, index=st.integers(0, 2 * MAX_STREAMS), which=st.integers(-1, 7))
    def pin(self, side: Side, index: int, which: int) -> None:
        session = self._session(side)
        sids = [sid for sid in self.known[side] if sid in session.streams]
        if sids and not session.closed:
            sid = sids[index % len(sids)]
            cids = sorted(session.connections)
            if which < 0 or not cids:
                session.pin_stream(sid, None)
            else:
                session.pin_stream(sid, cids[which % len(cids)])
            self.h.pump()
        self._settle()

    @rule(side=_sides, name=st.sampled_from(["aggregate", "pinned", "backup"]))
    def scheduler(self, side: Side, name: str) -> None:
        self._session(side).scheduler.name = name  # type: ignore[assignment]
        self.h.pump()
        self._settle()

    @rule(side=_sides, what=st.integers(0, 4))
    def misuse(self, side: Side, what: int) -> None:
        """Calls that must fail with the documented error, and change nothing."""
        session = self._session(side)
        if what == 0:
            done = [d for sid in self.known[side] if (d := self.dirs[(side, sid)]).fin]
            if done:
                with pytest.raises(ConnectionClosedError):
                    session.send(done[0].sid, b"after FIN")
        elif what == 1 and session.state is not SessionState.ESTABLISHED:
            with pytest.raises(ConnectionClosedError):
                session.send(0 if side == "client" else 1, b"after close")
        elif what == 2 and side == "client" and not session.tokens:
            with pytest.raises(TCPLSError):
                session.start_join()
        elif what == 3:
            sids = [sid for sid in self.known[side] if sid in session.streams]
            if sids:
                with pytest.raises(ValueError):
                    session.pin_stream(sids[0], 1000)
        elif what == 4:
            assert session.read(1 << 30) == b""
            session.remove_connection(1000)
        self._settle()

    # ------------------------------------------------------------------ invariants

    @invariant()
    def memory_counters_add_up(self) -> None:
        for side in SIDES:
            session = self._session(side)
            streams = list(session.streams.values())
            buffered = sum(s.recv.buffered for s in streams)
            held = sum(s.recv.held for s in streams)
            pending = sum(s.send_pending for s in streams)
            assert session.receive_buffered == buffered, (side, session.receive_buffered, buffered)
            assert session.reassembly_held == held, (side, session.reassembly_held, held)
            assert session.send_pending_total == pending, (
                side,
                session.send_pending_total,
                pending,
            )
            unacked = sum(
                ref[2]
                for conn in session.connections.values()
                for _, refs, _ in conn.sent_log
                for ref in refs
            )
            assert session.unacked_bytes == unacked, (side, session.unacked_bytes, unacked)

    @invariant()
    def nothing_delivered_beyond_what_was_written(self) -> None:
        for d in self.dirs.values():
            assert len(d.read) <= len(d.written), d
            receiver = self._session(_peer(d.sender))
            stream = receiver.streams.get(d.sid)
            if stream is None:
                continue
            recv = stream.recv
            assert recv.delivered <= len(d.written), (d, recv.delivered)
            if recv.final_size is not None:
                assert recv.final_size <= len(d.written), (d, recv.final_size)
                if d.fin and not receiver.peer_closed:
                    assert recv.final_size == len(d.written), (d, recv.final_size)

    @invariant()
    def no_healthy_connection_fails(self) -> None:
        """A connection fails only if its link failed (or the peer's session ended)."""
        h = self.h
        failures = h.failures
        for when, side, cid, error, link in failures[self._failures_judged :]:
            self._failures_judged += 1
            if link is None:
                continue  # a join the server never routed
            # once the peer's session ended (how, _judge says), its connections go
            peer_end = h.closures.get(_peer(side))
            if (
                link.faulted
                or when >= self.ended_at
                or (peer_end is not None and when >= peer_end.now)
            ):
                link.faulted = True  # (what follows on this link is a consequence)
                continue
            raise AssertionError(
                f"the {side} lost connection {cid}, whose link never failed: {error}"
            )

    def _judge(self) -> None:
        """Every session that ended must have had a legitimate reason (see below)."""
        h = self.h
        for side in SIDES:
            closure = h.closures.get(side)
            if closure is None or side in self._judged:
                continue
            self._judged.add(side)
            error = closure.error
            text = str(error)
            if error is None:
                # a server whose peer closed ends with its last connection (design: Closing)
                assert h.app_closed[side] or (side == "server" and closure.saw_peer_close), (
                    f"the {side} closed cleanly without being asked to"
                )
                continue
            if self.ended is not None and type(error) is ConnectionClosedError:
                continue  # the consequence of the other side's legitimate end
            if (
                type(error) is ConnectionClosedError
                and "did not finish closing" in text
                and h.slow_during_close
            ):
                # a side did not read while a session closed: close_notify waited unread
                self._end(f"a side did not read while closing ({text})", closure.now)
                continue
            if (
                side == "client"
                and type(error) is ConnectionClosedError
                and "every connection of the session closed" in text
                and closure.tokens == 0
            ):
                self._end(
                    f"the client lost every connection with no token left ({text})", closure.now
                )
                continue
            if (
                type(error) is ConnectionClosedError
                and "every connection of the session closed" in text
                and h.app_closed[side]
                and self._all_links_failed(side)
            ):
                # closing, it lost its last connection (no join while closing)
                self._end(f"the {side} lost every connection while closing ({text})", closure.now)
                continue
            if (
                side == "server"
                and type(error) is ConnectionClosedError
                and "no connection joined again" in text
                and (closure.peer_closed or closure.peer_tokens == 0 or closure.peer_connections)
            ):
                self._end(f"the server was left without connections ({text})", closure.now)
                continue
            if (
                type(error) is ConnectionClosedError
                and h.idle_gap.get(side, 0.0) >= IDLE_TIMEOUT - 1e-6
            ):
                # idle: it closed by itself (and may not finish closing if the peer does
                # not read or the path is stalled: the close timeout or TCP's then end it)
                self._end(f"the {side} was idle ({text})", closure.now)
                continue
            if type(error) is ConnectionClosedError and "before the peer finished sending" in text:
                # a connection failed after our close_notify: what the peer sent on it may
                # be lost, and it cannot send it again (design: Closing)
                self._end(f"the {side} lost a connection while closing ({text})", closure.now)
                continue
            raise AssertionError(
                f"the {side} session ended with an error at {closure.now - 1000:.3f} s: "
                f"{error!r} ({closure})" + "".join(f"\nlogged: {t}" for t in self.logged.seen)
            )

    def _end(self, reason: str, when: float) -> None:
        """The session legitimately ends at ``when``; what follows is its consequence."""
        if self.ended is None:
            self.ended, self.ended_at = reason, when

    def _all_links_failed(self, side: Side) -> bool:
        """Whether every link that carried a connection of ``side`` failed at some point."""
        return all(
            link.faulted
            for link in self.h.net_links()
            if side == "client" or link.server is self.h.server
        )

    # ------------------------------------------------------------------ the end

    def teardown(self) -> None:
        if not hasattr(self, "h"):
            return
        try:
            self._final_phase()
        finally:
            logging.getLogger("tcpls").removeHandler(self.logged)

    def _final_phase(self) -> None:
        """Restore every link, read everything, close both sessions, compare the streams."""
        self.final = True
        h = self.h
        for side in SIDES:
            h.set_app_paused(side, False)
        for link in list(h.net_links()):
            h.restore(link)
        h.pump()
        self._settle()
        limit = h.now + 60.0
        while h.now < limit and not self._delivered():
            self._read_all()
            h.advance(0.05)
            self._settle()
        for _ in range(10):  # the last ACKs
            self._read_all()
            h.advance(0.05)
        if self.ended is None and self._delivered():
            for side in SIDES:
                session = self._session(side)
                if session.state is SessionState.ESTABLISHED:
                    # everything arrived and was acknowledged: nothing is kept to resend
                    assert session.unacked_bytes == 0, (side, session.unacked_bytes)
                    assert session.send_pending_total == 0, (side, session.send_pending_total)
        for side in SIDES:
            if not self._session(side).closed and not h.app_closed[side]:
                h.close(side)
        limit = h.now + 2 * TUNING.close_timeout
        while h.now < limit and not (h.client.closed and h.server.closed):
            self._read_all()
            h.advance(0.05)
        self._read_all()
        h.advance(2 * TUNING.rejoin_timeout)  # no timer of a closed session spins
        self._settle()
        self.memory_counters_add_up()
        self.nothing_delivered_beyond_what_was_written()
        self.no_healthy_connection_fails()
        if self.ended is not None:
            return  # what was read is a prefix (checked), the rest is legitimately lost
        # (how they ended, error or not, was judged by _judge)
        assert h.client.closed and h.server.closed, (h.client.state, h.server.state)
        for d in self.dirs.values():
            assert len(d.read) == len(d.written), f"bytes missing at the end: {d}"
            if d.fin:
                assert d.eof, f"FIN not delivered: {d}"

    def _delivered(self) -> bool:
        if self.ended is not None:
            return True
        return all(
            len(d.read) == len(d.written) and (d.eof or not d.fin) for d in self.dirs.values()
        )


def _refuse_spinning(monkeypatch: pytest.MonkeyPatch) -> None:
    """A record reader that is full and asked to read nothing would loop: fail instead."""
    original = RecordReader.buffer_updated

    def buffer_updated(self: RecordReader, nbytes: int) -> None:
        if nbytes == 0 and self.capacity >= self.max_capacity:
            raise AssertionError("receive_data spins: the record reader is full and held")
        original(self, nbytes)

    monkeypatch.setattr(RecordReader, "buffer_updated", buffer_updated)


@pytest.mark.timeout(0 if _EXAMPLES else 400)  # room to shrink a failure
def test_random_sessions_deliver_every_byte(
    pki_rsa: DevPKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    # RSA: signatures of one length, so that every run moves the same bytes (ECDSA's vary)
    _refuse_spinning(monkeypatch)
    machine = type("Machine", (SessionMachine,), {"pki": pki_rsa})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=_EXAMPLES or 400,
            stateful_step_count=_STEPS,
            deadline=None,
            derandomize=not _EXAMPLES,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )


# ---------------------------------------------------------------- regressions
#
# Each bug the machine found, shrunk to a deterministic test. They failed when written;
# the docstrings tell what used to happen (fixed in 94d1765 and 13da975).


def _fast(**kwargs: float) -> SessionTuning:
    return SessionTuning(ping_after=0.3, ping_timeout=0.3, **kwargs)  # type: ignore[arg-type]


# bug found by the stateful test
def test_a_timer_fires_at_the_deadline_it_announced(pki: DevPKI) -> None:
    """``handle_timer(next_deadline())`` must run the timer that set that deadline.

    ``next_deadline`` announces ``ping_sent_at + ping_timeout`` but ``handle_timer`` tests
    ``now - ping_sent_at >= ping_timeout``, which floating point can make false at that
    very instant (1000.8 - 1000.5 < 0.3): the deadline stays in the past, and an event
    loop calls again and again until its clock has moved past the rounding error.
    (``rejoin_timeout`` is compared the same way.)
    """
    h = NetHarness(pki, tuning=_fast())
    h.pump()
    sid = h.server.open_stream()
    h.cut(h.links[0], "stall")
    h.server.send(sid, b"x" * 1000)
    h.pump()
    conn = h.server.connections[0]
    assert conn.sent_log
    h.now = 1000.5  # the probe is due: the Ping leaves now, and is held by the stall
    h.server.handle_timer(h.now)
    h.pump()
    assert conn.ping_sent_at == 1000.5
    deadline = h.server.next_deadline()
    assert deadline == conn.ping_sent_at + h.server.tuning.ping_timeout
    h.server.handle_timer(deadline)
    assert conn.status is ConnectionStatus.FAILED, "the Ping timeout did not fire at its deadline"


# bug found by the stateful test
def test_a_closed_session_announces_no_deadline(pki: DevPKI) -> None:
    """A server left without connections waits ``rejoin_timeout``; closed meanwhile, it
    keeps announcing that deadline, which ``handle_timer`` never clears (``_orphaned_since``
    survives ``_set_closed``): a deadline in the past for ever."""
    h = NetHarness(pki, tuning=_fast(rejoin_timeout=3.0))
    h.pump()
    h.client.rejoin = True
    h.cut(h.links[0], "reset")
    h.server.close()
    assert h.server.closed
    h.now += 5.0
    h.server.handle_timer(h.now)
    deadline = h.server.next_deadline()
    assert deadline is None or deadline > h.now, f"deadline {deadline} at {h.now}"


# bug found by the stateful test
def test_a_peer_that_reads_slowly_keeps_its_connection(pki: DevPKI) -> None:
    """The server's application does not read for 3 s: its stream buffer is full, so its
    I/O layer stops reading the sockets (backpressure, ``reading_paused``). What the client
    sends next waits in the server's socket buffer: TCP acknowledged it and the window is
    open, so the client's flow guard sees no zero window (``set_flow_blocked``). The
    client's Ping waits there too, unanswered: after ``ping_after + ping_timeout`` the
    client declares the healthy connection dead, joins again, and the new connection dies
    the same way, one after another (spending the join tokens) for as long as the
    application does not read.
    """
    h = NetHarness(pki, tuning=_fast(stream_receive_buffer=64 * 1024))
    h.client.rejoin = h.auto_rejoin = True
    h.pump()
    h.advance(0.1)
    sid = h.client.open_stream()
    h.client.send(sid, b"x" * 100_000)
    h.pump()
    assert h.server.reading_paused  # more than the stream may buffer: reading pauses
    h.advance(0.001)
    h.client.send(sid, b"more")
    h.advance(3.0)  # the server's application reads nothing meanwhile
    got = bytearray()
    for _ in range(10):
        got += h.server.read(sid)
        h.advance(0.05)
    failed = [f"{side} lost connection {cid}: {err}" for _, side, cid, err, _ in h.failures]
    assert not failed, failed
    assert got == b"x" * 100_000 + b"more"


# bug found by the stateful test
def test_an_answered_ping_is_not_sent_again_at_once(pki: DevPKI) -> None:
    """A client that received stream data on connection 0 probes it once ``ping_after``
    passes without anything arriving there (``Connection.probe_at``). The server's bytes on
    connection 0 wait (that direction is stalled); its ACK of the Ping comes back on
    connection 1, which counts as an answer, but ``last_receive`` of connection 0 does not
    move: the probe deadline stays in the past and the client sends Ping after Ping, one per
    round trip (here: all at the same instant), until TCP gives up on the path.
    """
    h = NetHarness(pki, tuning=_fast())
    h.pump()
    h.advance(0.1)
    h.join()
    sid = h.server.open_stream()
    h.server.pin_stream(sid, 0)
    h.server.send(sid, b"x")  # stream data arrives on connection 0
    h.pump()
    h.advance(0.1)
    conn = h.client.connections[0]
    assert conn.last_data is not None and not conn.sent_log
    h.cut(h.links[0], "hold:server")  # what the server sends on connection 0 waits
    h.now = conn.last_receive + h.client.tuning.ping_after  # the probe is due
    pings = set()
    for _ in range(6):  # the event loop runs at once whatever is due
        h.client.handle_timer(h.now)
        h.pump()
        if conn.ping_sequence >= 0:
            pings.add(conn.ping_sequence)
    assert len(pings) == 1, f"{len(pings)} Pings at the same instant"


# bug found by the stateful test
def test_a_reply_after_the_peer_closed_is_not_cut_short(pki: DevPKI) -> None:
    """TLS close_notify is a half-close: once the client closed, the server may still send
    (test_reply_after_peer_closed_is_not_truncated). But the client can send no record on a
    connection after its close_notify, so no ACK and no answer to a Ping: the server keeps
    logging its records as unacknowledged and probing. After ``ping_after + ping_timeout``
    it declares the connection dead and, the peer having closed, ends *cleanly* with most
    of its reply unsent (``send`` then raises); the client ends with an error. (A reply
    larger than ``max_unacked_bytes`` stalls at that size for the same reason.)
    """
    h = NetHarness(pki, tuning=_fast())
    h.pump()
    h.advance(0.1)
    sid = h.server.open_stream()
    h.close("client")  # the client has nothing more to say
    assert h.server.peer_closed
    reply = random.Random(1).randbytes(2_000_000)
    got = bytearray()
    for pos in range(0, len(reply), 50_000):  # the reply takes 2 s
        assert not h.server.closed, f"the server ended after sending {pos} bytes"
        h.server.send(sid, reply[pos : pos + 50_000])
        h.advance(0.05)
        got += h.client.read(sid)
    h.close("server")
    for _ in range(20):
        h.advance(0.05)
        got += h.client.read(sid)
    assert len(got) == len(reply), f"{len(got)} bytes of {len(reply)} arrived"
    assert h.client.closed and h.client.error is None, h.client.error


# bug found by the stateful test
def test_a_connection_lost_before_its_close_notify_is_not_a_clean_close(pki: DevPKI) -> None:
    """The server closed first; the client still sends (a half-close), on connection 0,
    then closes: it cannot wait for ACKs (the server sends no record after close_notify),
    so it ends at once, cleanly. Connection 0 is then reset before the client's bytes and
    close_notify reach the server; connection 1 delivers its close_notify, and the server
    also ends cleanly, although the client's last bytes never arrived: silent data loss.
    With one connection the server would report the truncation; with two, a failed
    connection is simply forgotten by ``_check_peer_closed``.
    """
    h = NetHarness(pki, tuning=_fast())
    h.pump()
    h.advance(0.1)
    h.join()
    h.react_to_close = False  # the client's application sends its last words first
    sid = h.client.open_stream()
    h.client.pin_stream(sid, 0)
    h.pump()
    h.close("server")
    assert h.client.peer_closed and not h.server.closed
    h.cut(h.links[0], "hold:client")  # what the client sends on connection 0 waits
    h.client.send(sid, b"last words")
    h.close("client")
    assert h.client.closed and h.client.error is None  # the client thinks all is well
    link = h.links[0]
    assert isinstance(link, NetLink)
    h.reset(link)  # connection 0 dies with the client's bytes
    h.pump()
    assert h.server.read(sid) == b"last words" or h.server.error is not None, (
        "the server closed cleanly without the client's last bytes"
    )


# bug found by the stateful test
def test_a_failover_does_not_make_a_receiving_session_idle(pki: DevPKI) -> None:
    """Idleness is measured from when stream data last moved (``CoreSession._activity``): what
    the session sent (``_last_activity``) or what arrived, as ``last_data`` of the
    connection it arrived on. A client that only receives loses that time with the
    connection: right after a failover, with no stream data since, it finds itself idle
    for as long as it has been receiving, and closes.
    """
    h = NetHarness(pki, tuning=_fast(idle_timeout=45.0))
    h.client.rejoin = h.auto_rejoin = True
    h.pump()
    h.advance(0.1)
    sid = h.server.open_stream()
    for _ in range(50):  # the server streams to the client for 50 s
        h.server.send(sid, b"x" * 10_000)
        h.advance(1.0)
        assert h.client.read(sid) == b"x" * 10_000
    h.advance(1.0)
    link = h.links[0]
    assert isinstance(link, NetLink)
    h.reset(link)  # the connection dies; the client joins again at once
    h.pump()
    assert h.client.connections and h.client.state is SessionState.ESTABLISHED
    h.advance(1.0)  # 1 s after the last stream data
    assert h.client.state is SessionState.ESTABLISHED, "the client closes: it thinks it is idle"


# bug found by the stateful test
def test_traffic_without_stream_data_announces_no_past_deadline(pki: DevPKI) -> None:
    """The record buffers are given back ``TRIM_AFTER`` after stream data last moved
    (``_activity() + TRIM_AFTER``), but any record sent or received sets ``_trimmed``
    back to false: after a Ping, an ACK or a close_notify, ``next_deadline`` announces that
    same deadline, now in the past. It fires again at once, and the buffers are given
    back after every such record (design: Timers: a deadline in the past fires once).
    """
    h = NetHarness(pki, tuning=_fast())
    h.pump()
    h.advance(0.1)
    sid = h.client.open_stream()
    h.client.send(sid, b"x")
    h.pump()
    for _ in range(100):  # an event loop: the timers at their deadlines, then the I/O
        due = min(d for s in (h.client, h.server) if (d := s.next_deadline()) is not None)
        if due > 1003.0:
            break
        h.now = max(h.now, due)
        for session in (h.client, h.server):
            session.handle_timer(h.now)
        h.pump()
        for side in SIDES:
            later = h.session(side).next_deadline()
            assert later is None or later > h.now, f"the {side}: deadline {later} at {h.now}"


# bug found by the stateful test
def test_a_connection_the_peer_closed_is_not_probed(pki: DevPKI) -> None:
    """The client closes while connection 1 is slow: its close_notify arrives on
    connection 0 at once, on connection 1 later, so the server's session goes on. The
    server had received stream data on connection 0 lately, so it probes it
    (``Connection.probe_at``), but the client sends nothing more there after its
    close_notify: the Ping is never answered and the server declares the connection
    dead (RST), although the peer merely finished with it.
    """
    h = NetHarness(pki, tuning=_fast())
    h.react_to_close = True  # the server's application closes when the client closed
    h.pump()
    h.advance(0.1)
    h.join()
    h.advance(0.1)
    sid = h.client.open_stream()
    h.client.pin_stream(sid, 0)
    h.client.send(sid, b"x")  # stream data arrives on connection 0
    h.pump()
    h.advance(0.05)
    assert h.server.read(sid) == b"x"
    link = h.links[1]
    h.cut(link, "stall")  # connection 1 is slow for 0.7 s
    h.close("client")
    assert h.server.connections[0].tls.close_notify_received and not h.server.peer_closed
    h.advance(0.7)
    h.restore(link)
    h.advance(2.0)
    failed = [f"{side} lost connection {cid}: {err}" for _, side, cid, err, _ in h.failures]
    assert not failed, failed
    assert h.client.closed and h.client.error is None, h.client.error
    assert h.server.closed and h.server.error is None, h.server.error
