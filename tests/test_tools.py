"""tests/tools.require_tool: skip locally, fail in CI, return the path when present."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
import tools


@pytest.fixture
def empty_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """PATH with a single empty directory, and no sbin fallback."""
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(tools, "SBIN_DIRS", ())
    return tmp_path


def test_missing_tool_skips_with_the_debian_package(
    empty_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(tools.REQUIRE_TOOLS_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception) as info:
        tools.require_tool("mosquitto_pub")
    assert str(info.value.msg) == (
        "mosquitto_pub not installed (Debian package mosquitto-clients); "
        "set TRIO_MQTT_REQUIRE_TOOLS=1 to make this a failure"
    )


@pytest.mark.parametrize(
    ("name", "package"),
    [("mosquitto", "mosquitto"), ("mosquitto_sub", "mosquitto-clients"), ("haproxy", "haproxy")],
)
def test_missing_tool_fails_when_tools_are_required(
    empty_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, package: str
) -> None:
    monkeypatch.setenv(tools.REQUIRE_TOOLS_ENV, "1")
    with pytest.raises(pytest.fail.Exception) as info:
        tools.require_tool(name)
    assert str(info.value.msg) == (
        f"{name} not installed (Debian package {package}) but TRIO_MQTT_REQUIRE_TOOLS=1: "
        f"run 'apt-get install {package}'"
    )


def test_require_env_zero_still_skips(empty_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(tools.REQUIRE_TOOLS_ENV, "0")
    with pytest.raises(pytest.skip.Exception):
        tools.require_tool("haproxy")


def _make_executable(path: Path) -> None:
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_present_tool_returns_its_path(empty_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(tools.REQUIRE_TOOLS_ENV, "1")
    _make_executable(empty_path / "haproxy")
    assert tools.require_tool("haproxy") == str(empty_path / "haproxy")


def test_sbin_fallback_finds_daemons_outside_path(
    empty_path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    sbin = tmp_path_factory.mktemp("sbin")
    _make_executable(sbin / "mosquitto")
    monkeypatch.setattr(tools, "SBIN_DIRS", (str(sbin),))
    assert os.environ["PATH"] == str(empty_path)
    assert tools.require_tool("mosquitto") == str(sbin / "mosquitto")


def test_conftest_fixture_is_the_helper(require_tool: Callable[[str], str]) -> None:
    assert require_tool is tools.require_tool
