"""tcpls.lab: a network lab of two namespaces joined by several emulated paths.

Generic test and benchmark infrastructure (it knows nothing of TCPLS). Needs root,
iproute2 (``ip``, ``tc``, ``ss``) and, for delayed paths, ``/dev/net/tun``; everything else is
the standard library. :func:`lab_available` says whether it can run here.

Topology
--------
::

    namespace <name>-c (client side)                 namespace <name>-s (server side)
      10.10.1.1/24  veth0 ====== path 0 ====== veth0  10.10.1.2/24
      10.10.2.1/24  tun1  <-> forwarder <->    tun1   10.10.2.2/24
      ...           path i: 10.10.<i+1>.1  <->  10.10.<i+1>.2

Each :class:`PathSpec` (rate, one-way delay, loss, queue; the same in both directions)
becomes one path. Routing is by destination: a client uses path ``i`` by connecting to
``lab.paths[i].server_ip`` (the source address follows). Addresses repeat between labs,
which is fine since every lab has its own namespaces.

* A path **without delay** is a veth pair. ``rate_mbit``: a ``tbf`` qdisc on both ends
  (goodput is ~96 % of the rate, the Ethernet/TCP/IP overhead). ``loss``: a classic-BPF
  filter (``ld rand``) on the *receiving* end's ``clsact`` ingress of both ends, so TCP sees
  path loss, not local congestion.
* A path **with a delay** goes through the forwarder (:mod:`tcpls.lab.forwarder`): a separate
  Python process (never starved by the GIL of the test process) moving packets between a TUN
  device in each namespace through a drop-tail queue, a serialiser at the rate (counting IP
  bytes), random loss and the delay. Measured: connect RTT 20.0-20.3 ms for 2 x 10 ms,
  goodput 95 % of 20 Mbit/s, 93 % of 50, 91 % of 100 (about a third of a core).

Use from one process: :meth:`Lab.socket` returns a socket created inside a namespace (it stays
there; bind/connect it anywhere, or pass it to asyncio with ``sock=``), :func:`in_namespace`
moves the current thread into a namespace for a ``with`` block, :meth:`Lab.call` runs a
function in a namespace, :meth:`Lab.run`/:meth:`Lab.popen` run commands there
(``ip netns exec``).

What a cut looks like to a socket
---------------------------------
:meth:`Lab.cut` (undone by :meth:`Lab.restore`):

* ``"blackhole"``: every packet of the path is dropped silently, both ways. A sender sees
  ``ETIMEDOUT`` only when ``TCP_USER_TIMEOUT`` expires (500 ms gives the error 0.5-0.8 s after
  the cut; without it, about 15 minutes); a receiver with nothing in flight sees nothing. New
  ``connect()`` calls hang until their timeout (``ETIMEDOUT``).
* ``"reset"``: the client end goes down first, then ``ss -K`` destroys every TCP socket of the
  path in *both* namespaces. Both applications get ``ECONNABORTED`` (``ConnectionAbortedError``)
  from their pending or next ``recv``/``send`` within ~10-25 ms; new client connects fail at
  once with ``ENETUNREACH``; the path stays ``"down"`` until restored. (Destroying only one
  end gives the peer ``ECONNRESET``, but only after the RST crossed the path, 13-60 ms behind
  queued data, and never if the path is cut meanwhile; hence both ends.)
* ``"down"``: ``ip link set down`` on the client end. New client connects fail at once with
  ``ENETUNREACH``; established connections notice only when they time out (with
  ``TCP_USER_TIMEOUT`` the sender gets ``ENETUNREACH`` then).

Lifetime
--------
``Lab(specs)`` is owned by the calling process: ``close()`` (the ``with`` block, or interpreter
exit) kills processes started in the namespaces, destroys their TCP sockets (an orphaned socket
would keep a deleted namespace alive invisibly), stops the forwarder and deletes the
namespaces. If the owner is killed, the forwarder exits by itself and ``tcpls lab cleanup``
(:meth:`Lab.cleanup_stale`) removes the namespaces. :meth:`Lab.up` builds a persistent lab
(named ``<name>-c``/``<name>-s``, state in ``/run/tcpls-lab/<name>.json``) that other
processes open with :meth:`Lab.attach`; the command line ``tcpls lab`` / ``python -m tcpls.lab``
(:mod:`tcpls.lab.cli`) drives those.

Example::

    from tcpls.lab import Lab, PathSpec

    with Lab([PathSpec(rate_mbit=20), PathSpec(rate_mbit=50, delay_ms=10)]) as lab:
        server = lab.socket("server")
        server.bind((lab.paths[1].server_ip, 4443))
        server.listen()
        client = lab.socket("client")
        client.connect((lab.paths[1].server_ip, 4443))  # ~20 ms
        lab.cut(1, "reset")  # both ends: ConnectionAbortedError
"""

from __future__ import annotations

from tcpls.lab.errors import LabError, LabUnavailable
from tcpls.lab.lab import Lab
from tcpls.lab.model import STATE_DIR, CutMode, Path, PathKind, PathSpec, PathState, Side
from tcpls.lab.netns import in_namespace, run_in_namespace
from tcpls.lab.system import lab_available

__all__ = [
    "STATE_DIR",
    "CutMode",
    "Lab",
    "LabError",
    "LabUnavailable",
    "Path",
    "PathKind",
    "PathSpec",
    "PathState",
    "Side",
    "in_namespace",
    "lab_available",
    "run_in_namespace",
]
