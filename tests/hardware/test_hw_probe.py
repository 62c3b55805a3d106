"""`crushcell probe` over the fake wiring: devices found/missing/unexpected, exit codes, --outputs."""

from __future__ import annotations

import io
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory
from hwfakes import CELL_TOML, FakeADS1115, FakeCellWiring, make_config

from cellspec.names import OUTPUTS
from controller.probe import main
from hal.hardware import HardwareCell
from hal.hardware.gpio import NoGpio

ROOT = Path(__file__).resolve().parents[2]


class Bench:
    """The fake cell on a bench: fake chips, mock pins, a contactor whose aux contact follows."""

    def __init__(self, feedback=True):
        self.wiring = FakeCellWiring()
        self.factory = MockFactory()
        self.config = make_config()
        self.feedback = feedback
        self.out = io.StringIO()

    def open_cell(self, config):
        return HardwareCell(config, i2c=self.wiring.i2c, smbus=self.wiring.smbus, pin_factory=self.factory)

    def clock(self):
        return self.wiring.clock.now_ms / 1000.0

    def sleep(self, seconds):
        self.wiring.clock.advance(max(1, int(seconds * 1000)))
        if self.feedback:
            c = self.config.outputs["crusher"]
            energised = self.factory.pin(c.pin).state != c.active_low
            aux = self.factory.pin(self.config.inputs["crusher_running"].pin)
            aux.drive_high() if energised else aux.drive_low()

    def run(self, *argv, stdin="", state_dir=None, open_cell=None):
        # A fresh state dir by default: `--outputs` takes its lock (no controller runs there).
        state_dir = state_dir or tempfile.mkdtemp(prefix="crushcell-probe-")
        args = ["--config", str(CELL_TOML), "--state-dir", str(state_dir), *argv]
        return main(args, open_cell=open_cell or self.open_cell, stdin=io.StringIO(stdin), out=self.out,
                    clock=self.clock, sleep=self.sleep)

    @property
    def text(self):
        return self.out.getvalue()

    def output_history(self, name):
        return [s.state for s in self.factory.pin(self.config.outputs[name].pin).states]


def test_everything_found_exit_0():
    b = Bench()
    assert b.run() == 0, b.text
    for addr in ("0x48", "0x49", "0x4A", "0x25"):
        assert f"bus 1 {addr} found" in b.text
    assert "bus 3 0x60 found" in b.text and "bus 3 0x61 found" in b.text
    assert "ma=4.0" in b.text and "!!" not in b.text and "PROBE OK" in b.text
    assert "estop_ok" in b.text and "GPIO5 active-high" in b.text


def test_missing_device_exit_1():
    b = Bench()
    del b.wiring.bus1.chips[0x49]
    assert b.run() == 1
    assert "!! bus 1 0x49 MISSING   ADS1115 (o2_b, co_cell, lel_rto)" in b.text
    assert "!! o2_b           FAULT disconnect" in b.text
    assert "PROBE FAILED" in b.text


def test_unexpected_device_is_listed():
    b = Bench()
    b.wiring.bus1.attach(0x4B, FakeADS1115(b.wiring.clock))
    assert b.run() == 0
    assert "?? bus 1 0x4B unexpected" in b.text


def test_sensor_fault_exit_1():
    b = Bench()
    b.wiring.ads[0x48].set_ma(0, 2.0)
    assert b.run() == 1
    assert "!! o2_a           FAULT loop_low" in b.text and "ma=2.0" in b.text


@pytest.mark.parametrize("argv", [["--bogus"], ["--pulse-s", "0"], ["--config", "/nonexistent/cell.toml"]])
def test_usage_errors_exit_2(argv):
    b = Bench()
    assert main(argv, open_cell=b.open_cell, out=b.out) == 2


def test_config_error_exit_2_with_the_problem(tmp_path):
    bad = tmp_path / "cell.toml"
    bad.write_text(CELL_TOML.read_text().replace("scan_period_s = 0.1", "scan_period_s = 9.0"))
    b = Bench()
    assert main(["--config", str(bad)], open_cell=b.open_cell, out=b.out) == 2
    assert "[cell] scan_period_s = 9.0 must be at most 1.0" in b.text


def test_outputs_refused_without_confirmation():
    b = Bench()
    assert b.run("--outputs", stdin="") == 2
    assert "refused" in b.text and "nothing was moved" in b.text
    assert all(len(b.output_history(n)) == 1 for n in OUTPUTS)     # never even configured
    b = Bench()
    assert b.run("--outputs", stdin="cell2\n") == 2


def test_outputs_refused_while_controller_runs(tmp_path):
    """A real `crushcell run` holds the state dir's lock: the probe must not move its relays."""
    proc = subprocess.Popen([sys.executable, "-m", "controller.cli", "run", "--hal", "sim", "--no-mqtt",
                             "--no-status", "--state-dir", str(tmp_path)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "crushcell.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        b = Bench()
        assert b.run("--outputs", "--yes", state_dir=tmp_path) == 2
        assert "a controller is running" in b.text and f"pid {proc.pid}" in b.text, b.text
        assert all(len(b.output_history(n)) == 1 for n in OUTPUTS)     # nothing moved
    finally:
        proc.terminate()
        proc.wait(15)


def test_a_pid_file_naming_a_live_process_without_the_lock_is_not_a_controller(tmp_path):
    """After a kill -9 the pid in a stale pid file often belongs to another process: the lock decides."""
    (tmp_path / "crushcell.pid").write_text(f"{__import__('os').getpid()}\n")
    b = Bench()
    assert b.run("--outputs", "--yes", state_dir=tmp_path) == 0, b.text


def test_a_controller_cannot_start_while_the_probe_moves_outputs(tmp_path):
    """The probe holds the lock while it runs: a controller started meanwhile is refused."""
    seen: list[subprocess.CompletedProcess] = []
    b = Bench()

    def start_controller(config):
        argv = [sys.executable, "-m", "controller.cli", "run", "--hal", "sim", "--no-mqtt", "--no-status",
                "--duration", "1", "--state-dir", str(tmp_path)]
        seen.append(subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60))
        return b.open_cell(config)

    assert b.run("--outputs", "--yes", state_dir=tmp_path, open_cell=start_controller) == 0, b.text
    assert seen[0].returncode == 2 and "another controller" in seen[0].stderr, seen[0].stderr
    # ... and once the probe has ended, the controller starts.
    after = subprocess.run([sys.executable, "-m", "controller.cli", "run", "--hal", "sim", "--no-mqtt",
                            "--no-status", "--duration", "0.5", "--state-dir", str(tmp_path)], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
    assert after.returncode == 0, after.stderr


def test_outputs_loop_check_with_typed_cell_id():
    b = Bench()
    assert b.run("--outputs", stdin="cell1\n") == 0, b.text
    assert "Type the cell id (cell1)" in b.text
    assert "crusher_running: True then False" in b.text
    for name in OUTPUTS:
        safe_level = b.config.outputs[name].active_low
        # (mock pins start low) configured at the safe level, energised once, back to safe
        assert b.output_history(name)[1:] == [safe_level, not safe_level, safe_level], name


def test_outputs_feedback_missing_exit_1():
    b = Bench(feedback=False)
    assert b.run("--outputs", "--yes") == 1
    assert "crusher_running: False then False (should be True then False)" in b.text


def test_missing_gpio_library_is_a_message_not_a_traceback():
    b = Bench()

    def no_gpio(config):
        raise NoGpio("no GPIO pin factory works here")
    assert main(["--config", str(CELL_TOML)], open_cell=no_gpio, out=b.out) == 1
    assert "no GPIO pin factory" in b.text
