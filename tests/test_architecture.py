"""The import graph: three wings (server, client, simulations) stand on shared/ and never import each other."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WINGS = ("server", "client", "simulations")
HARNESS = {"simulations/local.py",  # the in-process test harness runs both apps
           "simulations/attack.py"}  # a benchmark-only ClientApp wrapping the App's


def imports(path: Path) -> set[str]:
    """Top-level package of every module `path` imports, at any depth of the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def arrows(package: str) -> dict[str, set[str]]:
    return {str(p.relative_to(ROOT)): imports(p) for p in sorted((ROOT / package).glob("*.py"))}


def test_wings_import_only_the_ground_floor():
    crossing = {}
    for wing in WINGS:
        for module, targets in arrows(wing).items():
            others = targets & (set(WINGS) - {wing} | {"studies", "tests"})
            if others and module not in HARNESS:
                crossing[module] = sorted(others)
    assert crossing == {}


def test_the_ground_floor_knows_nothing_of_flower_or_the_wings():
    offending = {m: sorted(t & {"flwr", "ray", *WINGS, "studies"}) for m, t in arrows("shared").items()}
    assert {m: t for m, t in offending.items() if t} == {}


def test_studies_are_not_installed_and_the_product_does_not_import_them():
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert sorted(packages) == ["client", "server", "shared", "simulations"]
    assert (ROOT / "studies").is_dir()


def test_the_walk_sees_a_crossing_import(tmp_path):
    """The check itself: a module importing another wing is found, in a function body too."""
    module = tmp_path / "m.py"
    module.write_text("import json\n\ndef f():\n    from client.site import Site\n    return Site\n")
    assert imports(module) == {"json", "client"}
