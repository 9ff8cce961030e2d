"""Trio I/O layer: listeners, connections, the running broker."""
