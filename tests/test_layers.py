"""Layers run one way: api → relay → chat → llm / store. A module imports only from its own layer or below
(the shared base: config, errors, interrupts). ``service/gateway.py`` is the composition root that wires them
(for ``service/app.py`` and for apps that mount the gateway)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.servers import ROOT

SERVICE = ROOT / "service"
# each layer and the layers it may import (besides itself and the base modules)
BELOW = {
    "api": {"relay", "chat", "llm", "store"},
    "relay": {"chat", "llm", "store"},
    "chat": {"llm", "store"},
    "llm": set(),
    "store": set(),
}


def imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name == "service" or name.startswith("service.")}


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in BELOW else None


@pytest.mark.parametrize("layer", sorted(BELOW))
def test_each_layer_imports_only_itself_and_below(layer: str) -> None:
    wrong = []
    for path in sorted((SERVICE / layer).rglob("*.py")):
        for module in imported_modules(path):
            target = layer_of(module)
            if target is not None and target != layer and target not in BELOW[layer]:
                wrong.append(f"{path.relative_to(ROOT)} imports {module}")
    assert wrong == []


def test_nothing_but_the_composition_root_imports_the_views() -> None:
    importers = {
        str(path.relative_to(ROOT))
        for path in SERVICE.rglob("*.py")
        if "api" not in path.relative_to(SERVICE).parts[:1]
        and any(layer_of(module) == "api" for module in imported_modules(path))
    }
    assert importers == {"service/gateway.py"}


def test_every_package_says_what_it_is_for() -> None:
    for init in sorted(SERVICE.rglob("__init__.py")):
        docstring = ast.get_docstring(ast.parse(init.read_text()))
        assert docstring and len(docstring) > 30, f"{init.relative_to(ROOT)} has no docstring saying what it is for"
