"""Tests of authentication and authorization from files."""
