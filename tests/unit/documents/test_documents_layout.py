"""documents/ keeps the layout its package docstring promises: the server side never
imports a reader, no reader imports the worker's dispatch, every registry row names a
reader module that exists, and no module grows past the size a reader can take in."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from support import REPO
from zopilot_server.documents import formats

DOCUMENTS = REPO / "server" / "zopilot_server" / "documents"
PACKAGE = "zopilot_server.documents"
MAX_LINES = 400


def imported_modules(path: Path) -> set[str]:
    """The absolute names of the modules ``path`` imports (relative imports resolved;
    ``from . import x`` counts as ``package.x``)."""
    package = ".".join(path.relative_to(DOCUMENTS.parents[1]).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def modules_under(folder: str) -> list[Path]:
    return sorted((DOCUMENTS / folder).rglob("*.py"))


@pytest.mark.parametrize("path", modules_under("readers"), ids=lambda p: p.name)
def test_no_reader_imports_the_dispatch(path: Path) -> None:
    imported = imported_modules(path)
    assert f"{PACKAGE}.worker.dispatch" not in imported
    assert f"{PACKAGE}.worker.main" not in imported


@pytest.mark.parametrize("path", modules_under("server"), ids=lambda p: p.name)
def test_the_server_side_never_imports_a_reader(path: Path) -> None:
    readers = sorted(m for m in imported_modules(path) if m.startswith(f"{PACKAGE}.readers"))
    assert readers == [], f"{path.name} would load reader libraries into the server"


def test_every_registry_row_names_an_existing_reader_function() -> None:
    for doc_type in formats.TYPES:
        module, function = doc_type.reader.split(":")
        path = DOCUMENTS / (module.replace(".", "/") + ".py")
        assert path.is_file(), (doc_type.name, doc_type.reader)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert function in defined, (doc_type.name, doc_type.reader)


def test_the_imports_it_checks_are_the_ones_written() -> None:
    """The checker itself: a relative import resolves against the file's package."""
    eml = imported_modules(DOCUMENTS / "readers" / "eml.py")
    assert f"{PACKAGE}.readers.html_page" in eml and f"{PACKAGE}.domain" in eml
    parser = imported_modules(DOCUMENTS / "server" / "parser.py")
    assert f"{PACKAGE}.worker.sandbox" in parser and "zopilot_server.config" in parser


@pytest.mark.parametrize("path", sorted(DOCUMENTS.rglob("*.py")), ids=lambda p: p.name)
def test_no_module_is_over_the_size_limit(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(DOCUMENTS)} has {lines} lines: split it"
