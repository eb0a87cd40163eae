"""The layers import downwards only: data -> models -> methods -> training; evaluation a leaf."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_cl"
# Each layer may import from itself and the layers before it; evaluation from nothing of ours.
ORDER = ["data", "models", "methods", "training"]
ALLOWED = {layer: {*ORDER[: i + 1], "evaluation"} for i, layer in enumerate(ORDER)}
ALLOWED["evaluation"] = {"evaluation"}


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every ``lightning_cl.<layer>`` module imported by ``path``, anywhere in it (also inside functions)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            if node.module == "lightning_cl":
                found += [(node.lineno, f"lightning_cl.{alias.name}") for alias in node.names]
    return [(line, name) for line, name in found if name.startswith("lightning_cl.")]


def _layer_files() -> list[tuple[str, Path]]:
    return [
        (path.relative_to(PACKAGE).parts[0], path)
        for path in sorted(PACKAGE.rglob("*.py"))
        if len(path.relative_to(PACKAGE).parts) > 1
    ]


def test_every_layer_has_files() -> None:
    assert {layer for layer, _ in _layer_files()} >= set(ALLOWED)


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_no_layer_imports_a_layer_above_it(layer: str) -> None:
    upward = [
        f"{path.relative_to(PACKAGE)}:{line} imports {name}"
        for own, path in _layer_files()
        if own == layer
        for line, name in _imports(path)
        if name.split(".")[1] not in ALLOWED[layer]
    ]
    assert upward == []


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from lightning_cl.methods.base import ContinualCallback\n")
    assert _imports(bad) == [(2, "lightning_cl.methods.base")]
