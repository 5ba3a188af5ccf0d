"""The package's layering: the library below, the commands on top, no cycles.

Read from the source (every `import`, including those inside functions), so a lazy import cannot hide an
arrow that runs backwards.
"""

import ast
import re
from pathlib import Path

import pytest

from moderngpt2.cli import COMMANDS

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "moderngpt2"
COMMAND_LAYER = ("moderngpt2.cli", "moderngpt2.commands")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py")) if "configs" not in path.parts}


def imports_of(name: str, source: str, known: set[str], is_package: bool = False) -> set[str]:
    """The package modules `name` imports, at the top or inside a function (a `from package import module`
    counts as the module)."""
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                found.add(candidate if candidate in known else target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {module for module in found if module in known and module != name}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports_of(name, path.read_text(), set(found), path.name == "__init__.py")
            for name, path in found.items()}


def test_the_check_sees_relative_lazy_and_package_imports():
    known = {"moderngpt2.commands", "moderngpt2.commands.pretokenize", "moderngpt2.data.sources", "moderngpt2.cli"}
    source = ("import os\nimport moderngpt2.cli\n\ndef f():\n    from ..commands import pretokenize\n"
              "    from .sources import iter_texts\n")
    assert imports_of("moderngpt2.data.loader", source, known) == {
        "moderngpt2.cli", "moderngpt2.commands.pretokenize", "moderngpt2.data.sources"}


def test_the_import_graph_has_no_cycle(graph):
    state = {}

    def visit(node, trail):
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                pytest.fail("import cycle: " + " -> ".join(trail[trail.index(target):] + [target]))
            if target not in state:
                visit(target, trail + [target])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_the_library_never_imports_a_command(graph):
    backwards = sorted(f"{name} -> {target}" for name, targets in graph.items() for target in targets
                       if not name.startswith(COMMAND_LAYER) and target.startswith(COMMAND_LAYER))
    assert backwards == []


def test_commands_are_only_reached_through_the_command_line():
    side_doors = [module_name(path) for path in sorted(PACKAGE.rglob("*.py"))
                  if re.search(r"^if __name__ == .__main__.:", path.read_text(), re.M) and path.name != "cli.py"]
    assert side_doors == []


def command_modules(table=COMMANDS) -> list[str]:
    found = []
    for entry in table.values():
        found += command_modules(entry) if isinstance(entry, dict) else [entry[0]]
    return found


@pytest.mark.parametrize("module", command_modules())
def test_every_command_is_a_thin_module_with_main(module):
    import importlib

    command = importlib.import_module(f"moderngpt2.commands.{module}")
    assert callable(command.main)
    assert len((PACKAGE / "commands" / f"{module}.py").read_text().splitlines()) <= 150
