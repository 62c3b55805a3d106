"""The tests' side of the independent Sparkplug B decoder (tests/sparkplug/spb_decode.py).

spb_decode.py runs in its own venv (.venv-spb, `make .venv-spb/.installed-stamp`: pysparkplug 0.6.1 pins
paho-mqtt<2, ours is paho-mqtt 2), so the tests call it as a subprocess: `decode()` feeds it every
message at once, in arrival order (an NDATA's aliases resolve against the NBIRTH before it), and returns
its answers, one dict per message; the schema is in spb_decode.py's docstring.

A missing decoder venv is an error, never a skip: these are acceptance checks of our encoder.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).resolve().parent / "spb_decode.py"
PYTHON_ENV = "CRUSHCELL_SPB_PYTHON"
INSTALL_HINT = "run `make .venv-spb/.installed-stamp` (or `make test`, which builds it)"
TIMEOUT_S = 120


def decoder_python() -> str:
    """The decoder venv's Python: $CRUSHCELL_SPB_PYTHON, else .venv-spb/bin/python at the repo root.

    Not resolved: a venv's bin/python is a symlink to the base interpreter, which has no pysparkplug.
    """
    override = os.environ.get(PYTHON_ENV)
    if override:
        return override
    return str(REPO_ROOT / ".venv-spb" / "bin" / "python")


def _require_python() -> str:
    python = decoder_python()
    if not os.path.isfile(python) or not os.access(python, os.X_OK):
        source = f"${PYTHON_ENV}" if os.environ.get(PYTHON_ENV) else "the default"
        raise RuntimeError(
            f"the Sparkplug B decoder venv is missing: no Python at {python} ({source}); {INSTALL_HINT}"
        )
    return python


def run_in_decoder_venv(code: str, stdin: str = "") -> str:
    """Run a Python snippet with the decoder venv's Python; its stdout (AssertionError if it fails)."""
    cmd = [_require_python(), "-I", "-c", code]
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    if proc.returncode != 0:
        raise AssertionError(
            f"{cmd[0]} -I -c <snippet> exited {proc.returncode}\n"
            f"stderr:\n{proc.stderr}\nstdout:\n{proc.stdout}"
        )
    return proc.stdout


def decode(messages: list[tuple[str, bytes]]) -> list[dict]:
    """Decode (topic, payload) pairs, in arrival order, with pysparkplug: one dict per message."""
    cmd = [_require_python(), "-I", str(SCRIPT)]
    stdin = "".join(
        json.dumps({"topic": topic, "payload_b64": base64.b64encode(payload).decode("ascii")}) + "\n"
        for topic, payload in messages
    )
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    shown = " ".join(cmd)
    if proc.returncode != 0:
        raise AssertionError(
            f"{shown} exited {proc.returncode} on {len(messages)} message(s)\n"
            f"stderr:\n{proc.stderr}\nstdout:\n{proc.stdout}"
        )
    results = []
    for number, line in enumerate(proc.stdout.splitlines(), 1):
        try:
            result = json.loads(line)
        except ValueError as exc:
            raise AssertionError(
                f"{shown} printed a line that is not JSON (line {number}: {exc}): {line!r}\n"
                f"stderr:\n{proc.stderr}"
            ) from None
        if not isinstance(result, dict):
            raise AssertionError(f"{shown} printed JSON that is not an object (line {number}): {line!r}")
        results.append(result)
    if len(results) != len(messages):
        raise AssertionError(
            f"{shown} answered {len(results)} line(s) for {len(messages)} message(s)\n"
            f"stderr:\n{proc.stderr}\nstdout:\n{proc.stdout}"
        )
    return results
