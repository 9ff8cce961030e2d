"""The layering rules of docs/architecture.md, checked on the source.

- No import cycle among ``trio_mqtt`` modules, counting imports under ``TYPE_CHECKING``
  and inside functions: a cycle there is still a two-way dependency.
- The sans-IO packages (``mqtt``, ``proxy``, ``broker``) and modules (the NATS protocol,
  the cluster's subjects, envelope and records) do no I/O: they import no trio, sockets,
  sqlite3, threads or file-system modules, and call no ``open()``.
- The broker core decides and the connection applies: ``broker/core.py`` never assigns
  an attribute of a connection object nor calls its private methods.
- The core and the sessions change their own state: no other module assigns to, or
  calls a mutating method (``add``, ``append``, ``clear``...) on, an attribute of
  ``core`` / ``self.core`` or of ``session`` (counting the core's statistics object
  apart, counted where the event happens).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "trio_mqtt"

SANS_IO_PACKAGES = (
    "mqtt",
    "proxy",
    "broker",
    "nats.protocol",
    "cluster.subjects",
    "cluster.envelope",
    "cluster.records",
    "cluster.handover",
    "mosquitto_conf",
)
IO_MODULES = frozenset(
    {
        "trio",
        "anyio",
        "asyncio",
        "socket",
        "ssl",
        "selectors",
        "sqlite3",
        "threading",
        "concurrent",
        "multiprocessing",
        "subprocess",
        "os",
        "io",
        "pathlib",
        "shutil",
        "tempfile",
    }
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, ast.Module]:
    return {
        _module_name(path): ast.parse(path.read_text(encoding="utf-8"), str(path))
        for path in sorted(PACKAGE.rglob("*.py"))
    }


MODULES = _modules()


def _imported(module: str, tree: ast.Module) -> Iterator[str]:
    """Every module name ``module`` imports, absolute, wherever the import statement is."""
    is_package = (PACKAGE.parent / module.replace(".", "/")).is_dir()
    package = module if is_package else module.rpartition(".")[0]  # what "." means
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = parts[: len(parts) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            for alias in node.names:  # ``from pkg import module`` imports the module
                if f"{base}.{alias.name}" in MODULES:
                    yield f"{base}.{alias.name}"


def _internal_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, tree in MODULES.items():
        targets = set()
        for name in _imported(module, tree):
            # ``import trio_mqtt.a.b`` depends on trio_mqtt.a.b (the package inits are
            # re-export surfaces and are checked as modules of their own)
            if name in MODULES and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle in ``graph`` (as a path that returns to its start), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state:
                found = visit(target)
                if found is not None:
                    return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found is not None:
                return found
    return None


def test_the_checker_sees_the_package() -> None:
    # guards the checks below against passing on an empty or misparsed tree
    graph = _internal_graph()
    assert "trio_mqtt.broker.core" in graph
    assert "trio_mqtt.broker.sessions" in graph["trio_mqtt.broker.core"]
    assert "trio_mqtt.broker.core" in graph["trio_mqtt.broker.mqtt_connection"]
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles() -> None:
    cycle = _find_cycle(_internal_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_broker_package_does_not_import_the_connection_except_where_it_is_made() -> None:
    importers = {
        module
        for module, targets in _internal_graph().items()
        if "trio_mqtt.broker.mqtt_connection" in targets
    }
    assert {m for m in importers if m.startswith("trio_mqtt.broker")} == set()


@pytest.mark.parametrize("package", SANS_IO_PACKAGES)
def test_sans_io_packages_do_no_io(package: str) -> None:
    prefix = f"trio_mqtt.{package}"
    offenders = []
    for module, tree in MODULES.items():
        if module != prefix and not module.startswith(prefix + "."):
            continue
        for name in _imported(module, tree):
            if name.split(".")[0] in IO_MODULES:
                offenders.append(f"{module} imports {name}")
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "open"
            ):
                offenders.append(f"{module} calls open() on line {node.lineno}")
    assert offenders == []


def _connection_names(function: ast.FunctionDef) -> set[str]:
    """Parameters and locals of ``function`` that hold a connection object."""
    names = set()
    for arg in [*function.args.args, *function.args.kwonlyargs]:
        if arg.annotation is not None and "Connection" in ast.unparse(arg.annotation):
            names.add(arg.arg)
    for node in ast.walk(function):
        if isinstance(node, (ast.Assign, ast.AnnAssign, ast.NamedExpr, ast.For)):
            value = node.iter if isinstance(node, ast.For) else node.value
            if value is not None and "connection" in ast.unparse(value).lower():
                targets = (
                    [node.target]
                    if isinstance(node, (ast.AnnAssign, ast.NamedExpr, ast.For))
                    else node.targets
                )
                names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def _assigned(node: ast.AST) -> list[ast.expr]:
    """What ``node`` assigns to, if it is an assignment."""
    if isinstance(node, ast.Assign):
        return node.targets
    if isinstance(node, (ast.AugAssign, ast.AnnAssign)):
        return [node.target]
    return []


def _touches_connection(node: ast.expr, names: set[str]) -> bool:
    """Whether ``node`` is (an attribute of) a connection object."""
    text = ast.unparse(node)
    return text.split(".")[0] in names or ".connection" in text


def test_the_core_neither_sets_connection_fields_nor_calls_their_private_methods() -> None:
    tree = MODULES["trio_mqtt.broker.core"]
    offences = []
    functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]
    assert len(functions) > 20
    seen_connection_names = set()
    for function in functions:
        names = _connection_names(function)
        seen_connection_names |= names
        for node in ast.walk(function):
            for target in _assigned(node):
                if isinstance(target, ast.Attribute) and _touches_connection(target.value, names):
                    offences.append(f"line {node.lineno}: assigns {ast.unparse(target)}")
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and _touches_connection(node.value, names)
            ):
                offences.append(f"line {node.lineno}: uses {ast.unparse(node)}")
    assert {"conn", "old"} <= seen_connection_names  # the check looks at the right names
    assert offences == []


#: methods that change the collection they are called on
_MUTATORS = frozenset(
    {"append", "appendleft", "extend", "add", "update", "clear", "discard", "pop", "popleft"}
    | {"remove", "insert", "setdefault"}
)


def _writes(tree: ast.AST) -> Iterator[tuple[int, ast.expr]]:
    """Each place in ``tree`` that assigns to an attribute or item, or calls a mutating
    method on an attribute: its line and what is written (``a.b`` for ``a.b = ...``,
    ``a.b[k] = ...`` and ``a.b.add(...)``)."""
    for node in ast.walk(tree):
        targets = _assigned(node)
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in _MUTATORS
        ):
            targets = [node.func.value]
        for target in targets:
            written = target
            while isinstance(written, ast.Subscript):
                written = written.value
            if isinstance(written, ast.Attribute):
                yield node.lineno, written


def _base_name(target: ast.Attribute) -> str:
    """What ``target`` is an attribute of, as written: ``core`` for ``self.core.x``."""
    value = target.value
    if isinstance(value, ast.Attribute):
        return value.attr
    return ast.unparse(value)


@pytest.mark.parametrize(
    ("owner", "name"),
    [("trio_mqtt.broker.core", "core"), ("trio_mqtt.broker.sessions", "session")],
)
def test_only_its_own_module_writes_the_core_or_a_session(owner: str, name: str) -> None:
    # (the core's statistics are counted where the event happens: docs/architecture.md)
    offences = [
        f"{module}:{line}: {ast.unparse(target)}"
        for module, tree in MODULES.items()
        if module != owner
        for line, target in _writes(tree)
        if _base_name(target) == name
    ]
    assert offences == []
