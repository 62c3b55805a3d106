"""The wiring advice of deploy/README.md against the code that drives the relays.

The table in step 2 says, for every output, its safe state, when its relay is energised and
which relay contact to use. hal/hardware/gpio.py `pin_level` decides the pin level; the default
config gives pins, safe states and the relay board's polarity. An advice that disagrees with them
(the old "wire the alarm normally-closed, fail-active": the relay is energised only *for* an
alarm, so a normally-closed beacon would be dark exactly when it should light) fails here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cellspec.names import OUTPUTS
from controller.config import load
from hal.hardware.gpio import pin_level

REPO = Path(__file__).resolve().parents[2]
README = REPO / "deploy" / "README.md"
HEADER = ("| output | GPIO | safe (no power) | relay energised when the output is | relay contact "
          "| without power |")
OVERLAY = "dtoverlay=i2c-gpio,bus=3,i2c_gpio_sda=16,i2c_gpio_scl=18"


def wiring_table() -> dict[str, dict[str, str]]:
    lines = [ln.strip() for ln in README.read_text().splitlines()]   # the table sits in a list item
    start = lines.index(HEADER)  # ValueError: the table is gone or its header changed
    names = [c.strip() for c in HEADER.strip("|").split("|")]
    rows: dict[str, dict[str, str]] = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip().strip("`") for c in line.strip("|").split("|")]
        row = dict(zip(names, cells, strict=True))
        rows[row["output"]] = row
    return rows


CONFIG = load(REPO / "config" / "cell.toml")
ON_OFF = {"on": True, "off": False}


def test_the_table_covers_every_output_in_order():
    assert list(wiring_table()) == list(OUTPUTS)


@pytest.mark.parametrize("name", OUTPUTS)
def test_advice_matches_pin_level(name):
    row = wiring_table()[name]
    out = CONFIG.outputs[name]
    assert int(row["GPIO"]) == out.pin
    assert ON_OFF[row["safe (no power)"]] == out.safe
    energised_when = ON_OFF[row["relay energised when the output is"]]
    for logical in (True, False):
        # pin_level gives the pin; the coil carries current when the pin is at the board's active level.
        energised = pin_level(logical, out.safe, out.active_low) != out.active_low
        assert energised == (logical == energised_when), (name, logical)
    # Energised only away from the safe state, so the actuator must get power through the
    # normally-open contact: no power, no contact, safe state.
    assert row["relay contact"] == "normally-open (NO)"


@pytest.mark.parametrize("name", ["alarm", "horn"])
def test_beacon_and_horn_light_only_when_energised(name):
    row = wiring_table()[name]
    assert row["relay energised when the output is"] == "on"
    assert CONFIG.outputs[name].safe is False   # the config refuses safe = true for them


def test_i2c_buses_are_named_as_wired():
    """The MCP9600s are on bus 3 (GPIO16/18), not on bus 1 with the other I2C devices."""
    text = README.read_text()
    assert "the I2C bus on GPIO 2/3" not in text
    assert any("bus 3" in line for line in text.splitlines() if "MCP9600" in line)
    assert f"`{OVERLAY}`" in text
