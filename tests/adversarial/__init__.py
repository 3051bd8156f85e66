"""Adversarial tests: a hostile but authenticated client against a live ``tcpls serve --echo``."""
