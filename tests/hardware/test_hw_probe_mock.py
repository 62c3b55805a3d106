"""`crushcell probe` on a machine without the board (GPIOZERO_PIN_FACTORY=mock, the real Blinka and
smbus2): a report that ends in PROBE FAILED, never a traceback.

Before the fix Blinka's `busio.I2C` raised ImportError ("cannot import name 'i2cPorts' from
'microcontroller.pin'") on a board it does not know; the scan let it through, and the probe ended
in a traceback right after "!! bus 1: cannot scan".
"""

from __future__ import annotations

import io

import pytest
from hwfakes import CELL_TOML

from controller.probe import main
from hal.hardware.cell import _Buses
from hal.hardware.device import BusOpenError


class FakeTime:
    def __init__(self):
        self.now = 100.0

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def test_probe_with_a_mock_pin_factory_reports_instead_of_a_traceback(monkeypatch, tmp_path):
    pytest.importorskip("board")                 # the real Blinka: what a user's venv has
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    out, t = io.StringIO(), FakeTime()
    rc = main(["--config", str(CELL_TOML), "--state-dir", str(tmp_path)], out=out, clock=t.clock,
              sleep=t.sleep)
    text = out.getvalue()
    assert rc == 1, text
    if text.startswith("crushcell probe:"):      # Blinka refused this machine outright: said so
        assert "Blinka" in text or "smbus2" in text
        return
    assert "!! bus 1: cannot scan" in text
    assert "cannot open I2C bus 1" in text       # each sensor of bus 1 says why it has no value
    assert "FAULT disconnect" in text and text.rstrip().endswith("PROBE FAILED: see the lines marked !!")


@pytest.mark.parametrize("error", [ImportError("cannot import name 'i2cPorts' from 'microcontroller.pin'"),
                                   ValueError("No device found for /dev/i2c-3"),
                                   FileNotFoundError(2, "No such file or directory")])
def test_a_bus_that_cannot_be_opened_is_a_bus_open_error(error):
    def blinka_open(bus):
        raise error
    buses = _Buses(None, blinka_open)
    with pytest.raises(BusOpenError, match=f"cannot open I2C bus 1: {type(error).__name__}"):
        buses.get(1)
