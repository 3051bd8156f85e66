"""qlog for tcpls: a structured log of each session, and the session log (design: qlog).

* :mod:`tcpls.qlog.writer`: one qlog file, JSON-SEQ, bounded in memory and in size;
* :mod:`tcpls.qlog.tracer`: what a session reports of its life cycle, to qlog and to the
  ``tcpls.session`` logger, and :func:`~tcpls.qlog.tracer.trace_session`, which gives a
  session a tracer when its configuration has a ``qlog_dir`` or that logger shows INFO;
* :mod:`tcpls.qlog.records`: the events of records, frames, ACKs and scheduler decisions;
* :mod:`tcpls.qlog.summary`: reading a file back: its checks, the timeline of a
  session, its stalls and the rate of each connection (``tcpls qlog summary``), and
  :mod:`tcpls.qlog.plot` the plot of that rate (matplotlib, the ``plot`` extra).

The layer sits above :mod:`tcpls.core`, whose parts call it through
:mod:`tcpls.core.trace`, and below :mod:`tcpls.aio`, which attaches it to the sessions
it runs.
"""
