"""Find the external programs some tests talk to (mosquitto, haproxy) or run under
(valgrind), and the Python tools of the ``dev`` extra some tests run (mypy, build, twine).

A missing program skips the test with the Debian package to install, except when
``TRIO_MQTT_REQUIRE_TOOLS=1`` (set by ``.ci/run``): then it fails, so CI can never go
green by silently skipping the interoperability tests.
"""

from __future__ import annotations

import importlib.util
import os
import shutil

import pytest

REQUIRE_TOOLS_ENV = "TRIO_MQTT_REQUIRE_TOOLS"

#: Which Debian package ships each program.
DEBIAN_PACKAGES = {
    "mosquitto": "mosquitto",
    "mosquitto_passwd": "mosquitto",
    "mosquitto_pub": "mosquitto-clients",
    "mosquitto_sub": "mosquitto-clients",
    "haproxy": "haproxy",
    "valgrind": "valgrind",
}

#: Debian installs daemons in sbin, which a non-root PATH often lacks.
SBIN_DIRS: tuple[str, ...] = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def tools_required() -> bool:
    """Whether a missing program must fail the test instead of skipping it."""
    return os.environ.get(REQUIRE_TOOLS_ENV, "").strip().lower() in ("1", "true", "yes")


def require_tool(name: str) -> str:
    """The path of program *name*; skips (or fails, see module doc) when it is missing."""
    path = shutil.which(name)
    if path is None and SBIN_DIRS:
        path = shutil.which(name, path=os.pathsep.join(SBIN_DIRS))
    if path is not None:
        return path
    package = DEBIAN_PACKAGES.get(name, name)
    if tools_required():
        pytest.fail(
            f"{name} not installed (Debian package {package}) but {REQUIRE_TOOLS_ENV}=1: "
            f"run 'apt-get install {package}'",
            pytrace=False,
        )
    pytest.skip(
        f"{name} not installed (Debian package {package}); "
        f"set {REQUIRE_TOOLS_ENV}=1 to make this a failure"
    )


def require_module(name: str) -> None:
    """Skip (or fail, see module doc) unless the Python package *name* is installed.

    A directory of that name on the path is not it: ``pip install .`` leaves ``build/``
    in the checkout, which Python would import as an empty namespace package ``build``
    (then ``python -m build`` fails), so only a package with a file of its own counts.
    """
    spec = importlib.util.find_spec(name)
    if spec is not None and spec.origin is not None:
        return
    message = f"{name} is not installed: python3 -m pip install -e '.[dev]'"
    if tools_required():
        pytest.fail(f"{message} ({REQUIRE_TOOLS_ENV}=1)", pytrace=False)
    pytest.skip(f"{message}; set {REQUIRE_TOOLS_ENV}=1 to make this a failure")
