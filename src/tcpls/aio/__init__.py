"""tcpls.aio"""
