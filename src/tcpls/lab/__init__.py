"""tcpls.lab"""
