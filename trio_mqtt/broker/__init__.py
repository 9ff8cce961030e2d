"""The broker core: routing, retained messages, sessions and auth as plain state (no I/O)."""
