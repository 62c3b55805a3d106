"""docs/sparkplug.md is a contract with SCADA engineers: its metric table must name every metric
the edge node declares in its NBIRTH, with the right datatype, and nothing it does not."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from cellspec.names import COMMANDS, INPUTS, OUTPUTS, SENSORS
from controller import config as cfg
from controller.link.sparkplug import schema
from controller.link.sparkplug.metrics import Catalogue, alarm_path
from controller.rules import ALARMS, CAUSES

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "sparkplug.md"
EXPAND = {
    "<cause>": list(CAUSES),
    "<alarm>": [alarm_path(a[0]) for a in ALARMS],
    "<sensor>": list(SENSORS),
    "<input>": list(INPUTS),
    "<output>": list(OUTPUTS),
    "<action>": list(COMMANDS),
}


def documented() -> dict[str, str]:
    text = DOC.read_text()
    section = text.split("### Metrics", 1)[1].split("\n### ", 1)[0]
    out: dict[str, str] = {}
    for line in section.splitlines():
        m = re.match(r"\| `([^`]+)` \| (\w+) \|", line)
        if not m:
            continue
        pattern, datatype = m.groups()
        names = [pattern]
        for key, values in EXPAND.items():
            if key in pattern:
                names = [n.replace(key, v) for n in names for v in values]
        for name in names:
            assert name not in out, f"{name} documented twice"
            out[name] = datatype
    return out


def declared() -> dict[str, str]:
    config = cfg.load(ROOT / "config" / "cell.toml")
    config = dataclasses.replace(config, sparkplug=dataclasses.replace(config.sparkplug, commands=True))
    cat = Catalogue(config, commands=True)
    defs = [cat.bdseq, cat.rebirth, *cat.defs]
    return {d.name: schema.DATATYPE_NAMES[d.datatype] for d in defs}


def test_every_declared_metric_is_documented_with_its_datatype():
    docs, code = documented(), declared()
    missing = sorted(set(code) - set(docs))
    assert not missing, f"metrics the NBIRTH declares that docs/sparkplug.md does not list: {missing}"
    wrong = {n: (docs[n], code[n]) for n in code if docs.get(n) != code[n]}
    assert not wrong, f"datatype in docs vs NBIRTH: {wrong}"


def test_every_documented_metric_is_declared():
    extra = sorted(set(documented()) - set(declared()))
    assert not extra, f"docs/sparkplug.md lists metrics the node never declares: {extra}"


def test_the_table_is_not_empty():
    # A parser that found nothing would make both checks above pass vacuously.
    assert len(documented()) > 150


TEST_FILES = (ROOT / "tests" / "mqtt" / "test_sparkplug_payloads.py",
              ROOT / "tests" / "mqtt" / "test_sparkplug_session.py",
              ROOT / "tests" / "mqtt" / "test_sparkplug_topics.py",
              ROOT / "tests" / "test_sparkplug_config_and_schema.py")


def cited_by_tests() -> dict[str, set[str]]:
    """tck-id -> the tests whose docstring names it."""
    import ast

    out: dict[str, set[str]] = {}
    for path in TEST_FILES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                for tck in re.findall(r"tck-id-([\w-]+)", ast.get_docstring(node) or ""):
                    out.setdefault(tck, set()).add(f"{path.stem}::{node.name}")
    return out


def statements_table() -> dict[str, set[str]]:
    section = DOC.read_text().split("## Sparkplug 3.0 statements we implement", 1)[1].split("\n## ", 1)[0]
    out: dict[str, set[str]] = {}
    for line in section.splitlines():
        m = re.match(r"\| `([\w-]+)` \| .* \| (.+) \|$", line)
        if m:
            out[m.group(1)] = set(re.findall(r"`([\w]+::[\w]+)`", m.group(2)))
    return out


def test_the_statements_table_matches_the_tests_docstrings_both_ways():
    """Every statement a test says it checks is in docs/sparkplug.md with that test, and every
    test the table names exists and says so."""
    tests, table = cited_by_tests(), statements_table()
    assert len(table) > 80
    assert set(tests) == set(table), (sorted(set(tests) - set(table)), sorted(set(table) - set(tests)))
    for tck, names in tests.items():
        assert table[tck] == names, (tck, sorted(names ^ table[tck]))
