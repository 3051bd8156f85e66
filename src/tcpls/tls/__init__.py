"""tcpls.tls"""
