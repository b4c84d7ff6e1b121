"""No module but ``agents/runtime/faust_internals.py`` touches a private name of faust, mode or
aiokafka: those are pinned there by contract tests (test_faust_internals.py), anywhere else an
upgrade would break them unnamed.

Read from the source (ast), for every Python file of the code base outside ``tests/``:

- a class deriving from a class of those libraries may not define or use (``self._x``,
  ``super()._x``) a private name that a library class of its MRO defines or uses;
- any other ``obj._x`` is flagged when the libraries define or use ``_x`` and the module
  itself does not (its own private names are its business).
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import inspect
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[4]
LIBRARIES = {"faust": "faust-streaming", "mode": "mode-streaming", "aiokafka": "aiokafka"}
INTERNALS = Path("agents/runtime/faust_internals.py")
# Not part of the code base: the virtualenv, tests (which may poke at anything), build output.
SKIPPED_DIRS = {"tests", "build", "dist", "node_modules", "site-packages"}


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_names(tree: ast.AST) -> set[str]:
    """Private names a piece of code defines or uses: defs, attributes, class-level names."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    return {n for n in names if is_private(n)}


@cache
def library_private_names() -> frozenset[str]:
    names: set[str] = set()
    for library, distribution in LIBRARIES.items():
        # Located through the distribution: faust replaces its module by a lazy one, no spec.
        root = Path(str(importlib.metadata.distribution(distribution).locate_file(library)))
        assert root.is_dir(), root
        for path in root.rglob("*.py"):
            names |= private_names(ast.parse(path.read_text(errors="replace")))
    return frozenset(names)


@cache
def mro_private_names(module: str, qualname: str) -> frozenset[str] | None:
    """Private names of the library classes in a class's MRO (None: class not importable)."""
    try:
        found: Any = importlib.import_module(module)
        for part in qualname.split("."):
            found = getattr(found, part)
    except Exception:  # noqa: BLE001 - fall back to every library name
        return None
    if not isinstance(found, type):
        return None
    names: set[str] = set()
    for base in inspect.getmro(found):
        if base.__module__.split(".")[0] in LIBRARIES:
            try:
                names |= private_names(ast.parse(inspect.getsource(base)))
            except (OSError, TypeError, SyntaxError):
                names |= library_private_names()
    return frozenset(names)


def library_bound_names(tree: ast.Module) -> set[str]:
    """Names this module binds to the libraries (``import faust``, ``from mode import X``)."""
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in LIBRARIES:
                    bound.add((alias.asname or alias.name).split(".")[0])
        elif (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.level == 0
            and node.module.split(".")[0] in LIBRARIES
        ):
            bound |= {alias.asname or alias.name for alias in node.names}
    return bound


def root_name(node: ast.expr) -> str | None:
    while isinstance(node, ast.Attribute | ast.Subscript | ast.Call):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def is_self(node: ast.expr) -> bool:
    if isinstance(node, ast.Name):
        return node.id in ("self", "cls")
    return (
        isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "super"
    )


def module_name(path: Path) -> str:
    return ".".join(path.with_suffix("").parts)


def violations_in(path: Path, source: str) -> Iterator[str]:
    """``file:line: what`` for each private library name ``source`` touches."""
    tree = ast.parse(source)
    libraries = library_private_names()
    own = private_names(tree) - libraries
    bound = library_bound_names(tree)

    def visit_class(node: ast.ClassDef, qualname: str) -> Iterator[str]:
        derived = any(root_name(base) in bound for base in node.bases)
        if not derived:
            return
        inherited = mro_private_names(module_name(path), qualname) or libraries
        for child in ast.walk(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                if child.name in inherited:
                    yield f"{path}:{child.lineno}: {qualname} overrides {child.name}"
            elif (
                isinstance(child, ast.Attribute)
                and child.attr in inherited
                and is_self(child.value)
            ):
                yield f"{path}:{child.lineno}: {qualname} uses {child.attr}"

    def classes(body: list[ast.stmt], prefix: str) -> Iterator[str]:
        for node in body:
            if isinstance(node, ast.ClassDef):
                yield from visit_class(node, prefix + node.name)
                yield from classes(node.body, f"{prefix}{node.name}.")

    yield from classes(tree.body, "")
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr in libraries
            and node.attr not in own
            and not is_self(node.value)
        ):
            yield f"{path}:{node.lineno}: {ast.unparse(node)}"


def code_base() -> Iterator[Path]:
    for path in sorted(REPO.rglob("*.py")):
        relative = path.relative_to(REPO)
        parts = set(relative.parts[:-1])
        if parts & SKIPPED_DIRS or any(p.startswith(".") for p in relative.parts):
            continue
        yield relative


def test_only_faust_internals_touches_private_names_of_faust_mode_aiokafka() -> None:
    found = [
        violation
        for path in code_base()
        if path != INTERNALS
        for violation in violations_in(path, (REPO / path).read_text())
    ]
    assert not found, (
        "private names of faust/mode/aiokafka outside agents/runtime/faust_internals.py "
        "(move them there, behind a named function with a contract test):\n" + "\n".join(found)
    )


def test_the_scan_covers_the_runtime_and_finds_its_internals() -> None:
    paths = set(code_base())
    assert Path("agents/runtime/streaming.py") in paths
    assert INTERNALS in paths
    found = list(violations_in(INTERNALS, (REPO / INTERNALS).read_text()))
    for name in ("_isolation_level", "_wait_next_records", "_new_transport", "_recovery"):
        assert any(name in v for v in found), f"the scan misses {name}: {found}"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (
            "from aiokafka import AIOKafkaProducer\n"
            "def abort(p: AIOKafkaProducer) -> bool:\n"
            "    return p._txn_manager.is_in_transaction()\n",
            "x.py:3: p._txn_manager",
        ),
        (
            "import faust\n"
            "class App(faust.App):\n"
            "    def _new_transport(self):\n"
            "        return super()._new_transport()\n",
            "x.py:3: App overrides _new_transport",
        ),
        (
            "from faust.tables.recovery import Recovery\n"
            "class R(Recovery):\n"
            "    def need_recovery(self):\n"
            "        return bool(self._active_events_received_at)\n",
            "x.py:4: R uses _active_events_received_at",
        ),
    ],
)
def test_the_scan_names_file_and_line(source: str, expected: str) -> None:
    assert expected in list(violations_in(Path("x.py"), source))


def test_own_private_names_are_not_flagged() -> None:
    source = (
        "from mode import Service\n"
        "class Server(Service):\n"
        "    def __init__(self):\n"
        "        self._registered = set()\n"
        "    def _unregister_all(self):\n"
        "        self._registered.clear()\n"
        "def helper(runner):\n"
        "    return runner._seek_to_stored()\n"
        "def _seek_to_stored():\n"
        "    pass\n"
    )
    assert list(violations_in(Path("x.py"), source)) == []
