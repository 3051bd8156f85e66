"""tcpls.core"""
