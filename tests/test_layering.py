"""The packages depend top-down: controller -> hal -> cellspec, never back up.

Why: a backend that imports the controller (or a names module that imports either) makes every
change ripple both ways and lets hardware code reach into the safety core. Read from the source
with `ast`, so a lazy import inside a function counts as much as one at the top.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAY_NOT_IMPORT = {"cellspec": ("controller", "hal"), "hal": ("controller",)}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("package", sorted(MAY_NOT_IMPORT))
def test_a_lower_layer_never_imports_a_higher_one(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, package
    wrong = {str(f.relative_to(ROOT)): sorted(imported_packages(f) & set(MAY_NOT_IMPORT[package]))
             for f in files if imported_packages(f) & set(MAY_NOT_IMPORT[package])}
    assert wrong == {}, f"{package} must not import {MAY_NOT_IMPORT[package]}: {wrong}"


def test_the_checker_sees_a_lazy_import(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from controller.config import load\n    import hal.sim\n")
    assert imported_packages(f) == {"controller", "hal"}
