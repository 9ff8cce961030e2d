"""Developer tasks: ``nox`` runs lint, typecheck and tests; ``-s docs`` / ``package`` / ``bench``.

Each session gets its own virtualenv; pass extra arguments after ``--``, e.g.
``nox -s tests -- -k proxy -x``.
"""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]

ROOT = Path(__file__).parent
LINT_PATHS = ("trio_mqtt", "tests", "benchmarks", "noxfile.py")


def _extras() -> dict[str, list[str]]:
    """The ``[project.optional-dependencies]`` table of pyproject.toml."""
    with open(ROOT / "pyproject.toml", "rb") as stream:
        project = tomllib.load(stream)["project"]
    extras: dict[str, list[str]] = project.get("optional-dependencies", {})
    return extras


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite (pytest arguments after ``--``)."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff")
    paths = [path for path in LINT_PATHS if (ROOT / path).exists()]
    session.run("ruff", "check", *paths)
    session.run("ruff", "format", "--check", *paths)


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package (with its test dependencies, for their types)."""
    session.install("-e", ".[test]", "mypy>=1.10")
    session.run("mypy", "--strict", "trio_mqtt")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the HTML docs into docs/_build/html; any Sphinx warning is an error."""
    session.install("-e", ".[docs]")  # the API reference imports trio_mqtt
    session.run("sphinx-build", "-W", "-b", "html", "docs", "docs/_build/html", *session.posargs)


@nox.session
def package(session: nox.Session) -> None:
    """Build the sdist and the wheel into dist/ and check them with ``twine check --strict``."""
    tools = [req for req in _extras()["dev"] if req.startswith(("build", "twine"))]
    session.install(*tools)
    dist = ROOT / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    session.run("python", "-m", "build", "--outdir", str(dist), str(ROOT))
    session.run("python", "-m", "twine", "check", "--strict", *map(str, sorted(dist.iterdir())))


@nox.session
def bench(session: nox.Session) -> None:
    """Run the benchmarks (``python -m benchmarks``; its arguments after ``--``)."""
    extra = "bench" if "bench" in _extras() else "test"
    session.install("-e", f".[{extra}]")
    session.run("python", "-m", "benchmarks", *session.posargs)
