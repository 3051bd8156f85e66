"""Applications built on tcpls, apart from the library.

* :mod:`tcpls.apps.echo`: the echo handler of ``tcpls serve --echo``;
* :mod:`tcpls.apps.fileserve`: ``tcpls serve --files DIR`` and ``tcpls get``;
* :mod:`tcpls.apps.perf`: ``tcpls perf``, goodput measurement like iperf3;
* :mod:`tcpls.apps.demo` (with :mod:`tcpls.apps.demo_lab`): the tour run by ``make demo``.

Nothing is imported here: each application pays for its own imports.
"""
