"""Tests of the broker core (sans-IO)."""
