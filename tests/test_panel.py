"""The simulated cell's field panel against real `crushcell run` processes (issue 13, "The laptop
experience"): a latched trip on a laptop is cleared at "the panel", as at a real cell, and never
otherwise: the core still decides (every cause clear for reset_hold_s). With --hal hardware there
is no panel at all: no socket, and `crushcell panel` says why.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hal.sim_panel import SOCKET_NAME

ROOT = Path(__file__).resolve().parents[1]

ESTOP_AT_3_S = """name = "E-stop pressed after the self-test"
duration_s = 36000
[[at]]
t = 3
event = "estop"
"""


def panel(state: Path, *words: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "controller.cli", "panel", *words, "--state-dir",
                           str(state)], cwd=ROOT, capture_output=True, text=True, timeout=60)


def records(path: Path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines() if path.exists() else ():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass    # a line being written
    return out


def wait_for(proc: subprocess.Popen, what, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = what()
        if got:
            return got
        assert proc.poll() is None, f"the controller exited {proc.returncode}"
        time.sleep(0.05)
    raise AssertionError("timed out")


def raw(sock_path: Path, payload: bytes) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(15)
        s.connect(str(sock_path))
        s.sendall(payload)
        return json.loads(s.makefile().readline())


def test_a_latched_trip_is_cleared_at_the_simulated_panel(tmp_path):
    state, events, scenario = tmp_path / "state", tmp_path / "events.jsonl", tmp_path / "estop.toml"
    scenario.write_text(ESTOP_AT_3_S)
    proc = subprocess.Popen([sys.executable, "-m", "controller.cli", "run", "--hal", "sim", "--no-mqtt",
                             "--no-status", "--speed", "20", "--state-dir", str(state), "--events",
                             str(events), "--scenario", str(scenario)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    sock = state / SOCKET_NAME
    try:
        wait_for(proc, lambda: any(r["type"] == "trip" and "estop" in r["causes"] for r in records(events)))
        assert stat.S_ISSOCK(os.stat(sock).st_mode)
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600     # the controller's user only

        # The E-stop is still pressed: the panel's reset is the core's to refuse, with its reason.
        held = panel(state, "reset")
        assert held.returncode == 1, held.stdout + held.stderr
        assert held.stdout.startswith("reset refused: causes not clear for 5 s: estop"), held.stdout

        released = panel(state, "estop-release")
        assert released.returncode == 0 and released.stdout.startswith("E-stop released; state TRIPPED")

        # Once the cause has been clear for reset_hold_s (5 s simulated: 0.25 s at 20x), a press clears it.
        deadline = time.monotonic() + 20
        while True:
            reset = panel(state, "reset")
            if reset.returncode == 0 or time.monotonic() > deadline:
                break
            assert "reset refused: causes not clear for 5 s" in reset.stdout, reset.stdout + reset.stderr
            time.sleep(0.2)
        assert reset.returncode == 0, reset.stdout + reset.stderr
        assert reset.stdout.startswith("reset accepted: TRIPPED -> PURGING"), reset.stdout

        recs = wait_for(proc, lambda: [r for r in records(events) if r["type"] == "state"
                                       and r["from"] == "TRIPPED"] and records(events))
        assert any(r["type"] == "command" and r["action"] == "reset" and r["source"] == "local"
                   and r["accepted"] for r in recs)
        assert [r for r in recs if r["type"] == "state" and r["from"] == "TRIPPED"][0]["to"] == "PURGING"
        assert {r["action"] for r in recs if r["type"] == "panel"} >= {"reset", "estop-release"}

        status = panel(state, "status")
        assert status.returncode == 0 and status.stdout.startswith("status: state PURGING"), status.stdout
        assert "estop_ok true" in status.stdout

        # Malformed requests: refused with a message that says what is wrong, on the CLI and the socket.
        for words, says in [(("fault", "o2_a"), "fault takes 2 argument(s) (fault TARGET MODE), got 1"),
                            (("fault", "o2_q", "stuck"), "unknown fault target 'o2_q'"),
                            (("fault", "o2_a", "melt"), "unknown fault mode for o2_a 'melt'"),
                            (("reset", "now"), "reset takes no argument(s)")]:
            bad = panel(state, *words)
            assert bad.returncode == 2 and says in bad.stderr, (words, bad.stderr)
            assert "Traceback" not in bad.stderr
        unknown = panel(state, "rest")
        assert unknown.returncode == 2 and "invalid choice: 'rest'" in unknown.stderr
        assert raw(sock, b"reset\n") == {"ok": False, "message": 'not JSON (Expecting value: line 1 column 1 '
                                         '(char 0)): send one object on one line, e.g. {"action": "reset"}'}
        refused = raw(sock, b'{"action": "open-valve"}\n')
        assert refused["message"].startswith("unknown panel action 'open-valve'")
        assert raw(sock, b'{"action": "estop", "by": "x"}\n') == {"ok": False,
                                                                   "message": "estop: unexpected key(s) by"}

        fault = panel(state, "fault", "dp_cell", "disconnect")
        assert fault.returncode == 0 and fault.stdout.startswith("fault disconnect injected on dp_cell")
        wait_for(proc, lambda: any(r["type"] == "trip" and "sensor_fault:dp_cell" in r["causes"]
                                   for r in records(events)))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert proc.returncode == 0
    assert not sock.exists()   # removed on the way out
    gone = panel(state, "reset")
    assert gone.returncode == 2 and "no simulated panel in" in gone.stderr


def test_the_hardware_backend_never_has_a_panel(tmp_path):
    pytest.importorskip("gpiozero")
    from hal.hardware import HardwareCell
    from hal.sim import SimulatedCell

    assert hasattr(SimulatedCell, "open_panel") and not hasattr(HardwareCell, "open_panel")
    state, events = tmp_path / "state", tmp_path / "events.jsonl"
    # A laptop stands in for the board: gpiozero's mock pins, no I2C bus (every sensor faulted, the
    # self-test trips); what matters here is that the hardware backend runs.
    proc = subprocess.Popen([sys.executable, "-m", "controller.cli", "run", "--hal", "hardware", "--no-mqtt",
                             "--no-status", "--state-dir", str(state), "--events", str(events)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "GPIOZERO_PIN_FACTORY": "mock"})
    try:
        # Past the self-test (2 s): the scan loop has been running for a while.
        wait_for(proc, lambda: any(r["type"] == "state" and r["from"] == "BOOT" for r in records(events)))
        assert not (state / SOCKET_NAME).exists()
        said = panel(state, "reset")
        assert said.returncode == 2, said.stdout + said.stderr
        assert f"no simulated panel in {state}" in said.stderr
        assert "drives the hardware (--hal hardware), whose panel is the real one" in said.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def test_a_leftover_socket_is_replaced_and_anything_else_is_left_alone(tmp_path):
    from controller.config import load
    from controller.loop import ScanLoop
    from hal.sim import SimulatedCell

    config = load(ROOT / "config" / "cell.toml")
    cell = SimulatedCell(config)
    path = tmp_path / SOCKET_NAME
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))     # a controller killed with SIGKILL leaves its socket behind
    stale.close()
    told = panel(tmp_path, "status")
    assert told.returncode == 2 and f"no controller answers on {path}" in told.stderr
    server = cell.open_panel(tmp_path, ScanLoop(config, cell))
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    finally:
        server.close()
    assert not path.exists()
    path.write_text("not a socket")
    with pytest.raises(OSError, match="exists and is not a socket: left as it is"):
        cell.open_panel(tmp_path, ScanLoop(config, cell))
    assert path.read_text() == "not a socket"
