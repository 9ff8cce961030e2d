"""Find the external programs some tests talk to (mosquitto, haproxy) or run under
(valgrind).

A missing program skips the test with the Debian package to install, except when
``TRIO_MQTT_REQUIRE_TOOLS=1`` (set by ``.ci/run``): then it fails, so CI can never go
green by silently skipping the interoperability tests.
"""

from __future__ import annotations

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
