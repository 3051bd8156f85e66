"""tcpls.aio: TCPLS sessions over asyncio TCP connections.

Each module imports only modules listed before it:

* ``sockets``: socket options, ``TCP_INFO``, socket addresses;
* ``info``: :class:`ConnectionInfo`, what a session reports about a connection;
* ``streams``: the stream pairs, and what they need from their session;
* ``protocol``: the protocol of one TCP connection and the server's pending connections,
  and what they need from their session and server;
* ``liveness``: the zero-window guard and the slow-peer check;
* ``driver``: the I/O of a session, and its pump;
* ``joins``: join, migrate, retire and the client's rejoin;
* ``session``: the public :class:`Session`;
* ``server``: the :class:`Server`, its limits and its table of sessions;
* ``api``: :func:`connect` and :func:`serve`.
"""
