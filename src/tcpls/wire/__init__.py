"""tcpls.wire"""
