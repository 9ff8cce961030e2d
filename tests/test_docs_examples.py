"""Every Python example in README.md and docs/*.md runs.

A small Markdown fence parser takes each fenced block whose info string starts with
``python`` (or ``py``) from README.md and every ``docs/*.md``, and:

- a block that defines ``test_*`` functions is a pytest module, as docs/testing.md shows
  them: it is run by pytest in a temporary directory with ``trio_mode = true``, so the
  ``mqtt_broker`` fixture comes from the installed plugin;
- any other block is a script, run with ``python`` in a temporary directory;
- a block marked ``python no-run`` (a fragment that needs what the page around it
  provides: certificates, a running TLS listener, a broker core) only has to compile.
  Keep these rare: prefer an example that binds 127.0.0.1 port 0 and runs.

Each run is a subprocess with a timeout, so an example that hangs (a blocking client call
on the thread that runs the broker) fails instead of stalling the suite. New pages and new
blocks are picked up without changing this file.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import attrs
import pytest

ROOT = Path(__file__).resolve().parent.parent
PYTHON_LANGUAGES = frozenset({"python", "py", "python3"})
NO_RUN = "no-run"
#: Seconds an example may take; they all finish in one or two.
TIMEOUT = 60.0

_FENCE_OPEN = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


@attrs.frozen
class CodeBlock:
    """One fenced code block of a Markdown file."""

    path: Path
    line: int  # of the opening fence, 1-based
    info: str
    code: str

    @property
    def language(self) -> str:
        words = self.info.split()
        return words[0].lower() if words else ""

    @property
    def flags(self) -> tuple[str, ...]:
        return tuple(self.info.split()[1:])

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def code_blocks(path: Path) -> list[CodeBlock]:
    """The fenced code blocks of a Markdown file (CommonMark fences, ``` or ~~~)."""
    blocks = []
    lines = path.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        match = _FENCE_OPEN.match(lines[index])
        if match is None or (match["fence"][0] == "`" and "`" in match["info"]):
            index += 1
            continue
        fence, indent = match["fence"], len(match["indent"])
        closing = re.compile(rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        body = []
        end = index + 1
        while end < len(lines) and not closing.match(lines[end]):
            line = lines[end]
            # Content lines lose up to the fence's own indentation.
            strip = min(indent, len(line) - len(line.lstrip(" ")))
            body.append(line[strip:])
            end += 1
        blocks.append(CodeBlock(path, index + 1, match["info"].strip(), "\n".join(body) + "\n"))
        index = end + 1
    return blocks


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def python_blocks() -> list[CodeBlock]:
    return [
        block
        for path in markdown_files()
        for block in code_blocks(path)
        if block.language in PYTHON_LANGUAGES
    ]


def _defines_tests(tree: ast.Module) -> bool:
    return any(
        isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test")
        for node in tree.body
    )


def _run(args: list[str], cwd: Path, block: CodeBlock) -> None:
    env = dict(os.environ)
    env.pop("PYTEST_ADDOPTS", None)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    try:
        result = subprocess.run(
            args,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as timeout:
        pytest.fail(
            f"the example at {block.name} did not finish within {TIMEOUT:.0f} s:\n"
            f"{block.code}\n--- output:\n{timeout.stdout!r}\n{timeout.stderr!r}",
            pytrace=False,
        )
    if result.returncode != 0:
        pytest.fail(
            f"the example at {block.name} failed (exit status {result.returncode}):\n"
            f"{block.code}\n--- stdout:\n{result.stdout}\n--- stderr:\n{result.stderr}",
            pytrace=False,
        )


BLOCKS = python_blocks()


def test_the_docs_have_python_examples() -> None:
    # A parser that silently found nothing would make the test below vacuous.
    names = {block.name for block in BLOCKS}
    assert any(name.startswith("README.md:") for name in names)
    assert any(name.startswith("docs/testing.md:") for name in names)
    assert any(name.startswith("docs/quickstart.md:") for name in names)


def test_no_run_stays_rare() -> None:
    fragments = [block.name for block in BLOCKS if NO_RUN in block.flags]
    assert len(fragments) <= len(BLOCKS) // 2, fragments


def test_fence_parser(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "text\n"
        "```python\nprint(1)\n```\n"
        "````markdown\n```python\nnot a block of its own\n```\n````\n"
        "~~~ py no-run\nx = 1\n\n  y = 2\n~~~\n"
        "- item\n\n  ```python\n  print(2)\n  ```\n"
        "```{toctree}\nquickstart\n```\n"
    )
    blocks = code_blocks(page)
    assert [(block.line, block.language, block.flags) for block in blocks] == [
        (2, "python", ()),
        (5, "markdown", ()),
        (10, "py", ("no-run",)),
        (17, "python", ()),
        (20, "{toctree}", ()),
    ]
    assert blocks[0].code == "print(1)\n"
    assert blocks[1].code == "```python\nnot a block of its own\n```\n"
    assert blocks[2].code == "x = 1\n\n  y = 2\n"
    assert blocks[3].code == "print(2)\n"


@pytest.mark.parametrize("block", BLOCKS, ids=[block.name for block in BLOCKS])
def test_python_example(block: CodeBlock, tmp_path: Path) -> None:
    # Fragments may use top-level await (as inside an async function of the reader's).
    tree = compile(
        block.code,
        block.name,
        "exec",
        flags=ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
        dont_inherit=True,
    )
    assert isinstance(tree, ast.Module)
    if NO_RUN in block.flags:
        return
    if _defines_tests(tree):
        (tmp_path / "test_example.py").write_text(block.code)
        (tmp_path / "pytest.ini").write_text("[pytest]\ntrio_mode = true\n")
        _run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_example.py"],
            tmp_path,
            block,
        )
    else:
        (tmp_path / "example.py").write_text(block.code)
        _run([sys.executable, "example.py"], tmp_path, block)


def test_api_reference_covers_the_public_api() -> None:
    import trio_mqtt
    import trio_mqtt.testing

    api = (ROOT / "docs" / "api.md").read_text()
    documented = set(re.findall(r"^\.\. auto\w+:: ([\w.]+)", api, flags=re.MULTILINE))
    documented_names = {name.rsplit(".", 1)[-1] for name in documented}
    public = {name for name in trio_mqtt.__all__ if not name.startswith("_")}
    public |= {"mqtt_broker", "open_test_broker"}
    assert not public - documented_names, "docs/api.md lacks these"
    for name in documented:  # each target exists
        module, _, attribute = name.rpartition(".")
        assert hasattr(sys.modules[module], attribute), name
    assert re.search(r"^api$", (ROOT / "docs" / "index.md").read_text(), re.MULTILINE)
