"""Tests of persistence (the SQLite store)."""
