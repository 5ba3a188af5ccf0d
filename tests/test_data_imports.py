"""The data library sits below the commands: tokenization and data/ import no command, the command line, or
(for tokenization) data/ itself, so the import graph has no cycle and no arrow upwards."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "moderngpt2"
LIBRARY = [PACKAGE / "tokenization.py", *sorted((PACKAGE / "data").glob("*.py"))]


def imported_modules(source: str, package: str) -> set[str]:
    """Absolute names of every module a module of `package` imports, at the top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def package_of(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).parts[:-1])


@pytest.mark.parametrize("path", LIBRARY, ids=lambda path: path.relative_to(PACKAGE).as_posix())
def test_the_data_library_imports_no_command(path):
    imported = imported_modules(path.read_text(encoding="utf-8"), package_of(path))
    upwards = {name for name in imported
               if name.startswith(("moderngpt2.commands", "moderngpt2.cli", "moderngpt2.argparsing"))}
    assert upwards == set()
    if path.name == "tokenization.py":
        assert {name for name in imported if name.startswith("moderngpt2.data")} == set()


def test_the_check_sees_relative_and_lazy_imports():
    source = "import os\n\ndef f():\n    from ..commands import pretokenize\n    from .sources import iter_texts\n"
    assert imported_modules(source, "moderngpt2.data") == {
        "os", "moderngpt2.commands", "moderngpt2.commands.pretokenize", "moderngpt2.data.sources",
        "moderngpt2.data.sources.iter_texts"}
