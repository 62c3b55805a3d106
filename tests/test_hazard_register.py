"""The hazard register of docs/safety.md is complete and every proof it names exists.

Why: "a row with no test is a defect". The register is for a safety engineer to read; this test
keeps it honest: every trip cause of the core has a row, every row names at least one proof, and
every named test function and scenario exists (a renamed or deleted test breaks the build).
"""

import importlib.util
import re
import sys
from pathlib import Path

from controller import core

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "safety.md"


def register_rows() -> list[dict[str, str]]:
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## Hazard register", 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = []
    for ln in lines[2:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        assert len(cells) == len(head), ln
        rows.append(dict(zip(head, cells, strict=True)))
    return rows


def load_test_module(path: Path) -> object:
    """Import a test file as pytest would (its folder on sys.path, for its helpers)."""
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location("register_" + path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def proofs(row: dict[str, str]) -> list[str]:
    return [p.strip() for p in row["proof"].split(";") if p.strip()]


def test_every_trip_cause_has_a_row():
    ids = set()
    for row in register_rows():
        ids.update(part.strip() for part in row["id"].split("/"))
    for cause in core.CAUSES:
        name = "sensor_fault:&lt;sensor&gt;" if cause.startswith("sensor_fault:") else cause
        assert name in ids, f"trip cause {cause} has no row in the hazard register"


def test_every_row_names_a_proof_and_every_proof_exists():
    modules: dict[str, object] = {}
    scenario_tests = (ROOT / "tests" / "test_scenarios.py").read_text(encoding="utf-8")
    rows = register_rows()
    assert len(rows) >= 30
    for row in rows:
        named = proofs(row)
        assert named, f"row {row['id']} has no test or scenario"
        for proof in named:
            if proof.startswith("scenario:"):
                name = proof.split(":", 1)[1]
                assert (ROOT / "config" / "scenarios" / name).is_file(), proof
                assert f'"{name}"' in scenario_tests, f"{proof} is not run by tests/test_scenarios.py"
                continue
            path, _, func = proof.rpartition("::")
            if not path:
                path, func = "tests/test_hazards.py", proof
            assert re.fullmatch(r"tests/[\w/]+\.py", path) and func.startswith("test_"), proof
            if path not in modules:
                modules[path] = load_test_module(ROOT / path)
            assert hasattr(modules[path], func), f"{row['id']}: {proof} does not exist"
