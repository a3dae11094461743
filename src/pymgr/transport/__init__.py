"""Listeners and servers: the edges that turn bytes on sockets into dispatch calls."""
