"""The project's TLS 1.3 handshake engine, sans-I/O, on ``cryptography``.

* :mod:`~tcpls.tls.hs.codec`: handshake messages and extensions on the wire;
* :mod:`~tcpls.tls.hs.keyschedule`: the transcript hash and the key schedule;
* :mod:`~tcpls.tls.hs.groups`: key exchange, X25519MLKEM768 included;
* :mod:`~tcpls.tls.hs.certs`: signatures and certificate path validation;
* :mod:`~tcpls.tls.hs.tickets`: session tickets, the client's and the server's store;
* :mod:`~tcpls.tls.hs.base`, :mod:`~tcpls.tls.hs.client`, :mod:`~tcpls.tls.hs.server`:
  the two state machines, each a table of states and the messages they accept.

Written from RFC 8446; the record layer is :mod:`tcpls.tls.layer`.
"""
