"""``python -m build`` makes an sdist and a wheel that ``twine check --strict`` accepts.

The build runs as a user or a release would run it (an isolated environment with the
setuptools that ``[build-system]`` asks for), on a copy of the files that go into the
distributions, so the shared checkout gets no ``build/`` or ``*.egg-info``. It takes a few
seconds, so it is an ordinary test rather than only a nox session (``nox -s package``
does the same for a release, into ``dist/``).

``build`` and ``twine`` come with the ``dev`` extra; without them the test is skipped,
or fails under ``TRIO_MQTT_REQUIRE_TOOLS=1`` as CI sets it.
"""

from __future__ import annotations

import email.message
import email.parser
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
from tools import require_module

import trio_mqtt

ROOT = Path(__file__).resolve().parent.parent
#: What the sdist is made from (setuptools adds nothing else without a MANIFEST.in).
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "trio_mqtt")


def _pyproject() -> dict[str, Any]:
    with open(ROOT / "pyproject.toml", "rb") as stream:
        project: dict[str, Any] = tomllib.load(stream)["project"]
    return project


def _run(*args: str, cwd: Path) -> str:
    result = subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, (
        f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    )
    return result.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist and wheel built from a copy of the sources."""
    require_module("build")
    source = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, source / name)
    out = tmp_path_factory.mktemp("dist")
    _run("-m", "build", "--sdist", "--wheel", "--outdir", str(out), str(source), cwd=source)
    return out


def _one(dist: Path, pattern: str) -> Path:
    found = sorted(dist.glob(pattern))
    assert len(found) == 1, found
    return found[0]


def _wheel_metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as archive:
        [name] = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return email.parser.Parser().parsestr(archive.read(name).decode())


def test_twine_check_accepts_the_sdist_and_the_wheel(dist: Path) -> None:
    require_module("twine")
    files = [str(_one(dist, "*.tar.gz")), str(_one(dist, "*.whl"))]
    output = _run("-m", "twine", "check", "--strict", *files, cwd=dist)
    assert output.count("PASSED") == 2, output


def test_wheel_metadata_is_ready_for_pypi(dist: Path) -> None:
    project = _pyproject()
    metadata = _wheel_metadata(_one(dist, "*.whl"))
    assert metadata["Name"] == "trio-mqtt"
    assert metadata["Version"] == trio_mqtt.__version__
    assert metadata["Summary"] == project["description"]
    assert metadata["License-Expression"] == "MIT"
    assert metadata["License-File"] == "LICENSE"
    assert metadata["Requires-Python"] == ">=3.11"
    # The README is the long description, rendered as Markdown on PyPI.
    assert metadata["Description-Content-Type"] == "text/markdown"
    assert metadata.get_payload().startswith("# trio-mqtt")
    classifiers = metadata.get_all("Classifier")
    assert "Development Status :: 3 - Alpha" in classifiers
    assert "Framework :: Pytest" in classifiers  # it ships the mqtt_broker fixture
    assert "Programming Language :: Python :: 3.11" in classifiers
    assert "Typing :: Typed" in classifiers
    assert metadata["Keywords"]
    requires = metadata.get_all("Requires-Dist")
    runtime = [req for req in requires if "extra ==" not in req]
    assert sorted(runtime) == sorted(project["dependencies"])


def test_wheel_holds_the_package_its_types_license_and_entry_points(dist: Path) -> None:
    with zipfile.ZipFile(_one(dist, "*.whl")) as archive:
        names = archive.namelist()
        [entry_points] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        entry_text = archive.read(entry_points).decode()
    assert "trio_mqtt/py.typed" in names
    assert "trio_mqtt/server/app.py" in names
    assert any(re.search(r"\.dist-info/licenses/LICENSE$", name) for name in names)
    assert not any(name.startswith("tests/") for name in names)
    assert "trio-mqtt = trio_mqtt.cli:main" in entry_text
    assert "[pytest11]" in entry_text


def test_sdist_holds_the_readme_and_the_license(dist: Path) -> None:
    with tarfile.open(_one(dist, "*.tar.gz")) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert {"README.md", "LICENSE", "pyproject.toml", "PKG-INFO"} <= names
    assert "trio_mqtt/__init__.py" in names


def test_dev_extra_has_the_packaging_tools() -> None:
    dev = " ".join(_pyproject()["optional-dependencies"]["dev"])
    assert "build" in dev
    assert "twine" in dev


def test_build_backend_understands_the_license_metadata() -> None:
    # `license = "MIT"` (an SPDX expression) and `license-files` need setuptools 77.
    with open(ROOT / "pyproject.toml", "rb") as stream:
        requires = tomllib.load(stream)["build-system"]["requires"]
    [setuptools] = [req for req in requires if req.startswith("setuptools")]
    match = re.fullmatch(r"setuptools>=(\d+)(\.\d+)*", setuptools.replace(" ", ""))
    assert match is not None, setuptools
    assert int(match.group(1)) >= 77


def test_docs_name_the_runtime_dependencies() -> None:
    # README's "What it is" and docs/quickstart.md list what `pip install` brings in.
    names = [re.split(r"[<>=!~\[ ;]", req, maxsplit=1)[0] for req in _pyproject()["dependencies"]]
    for page in ("README.md", "docs/quickstart.md"):
        text = (ROOT / page).read_text()
        missing = [name for name in names if f"`{name}`" not in text]
        assert not missing, f"{page} does not name {missing}"
