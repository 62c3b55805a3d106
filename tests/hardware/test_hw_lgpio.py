"""Relay pins on lgpio (every Pi 5), over a recording stand-in for the `lgpio` module.

gpiozero's own LGPIOFactory and LGPIOPin run unmodified on tests/hardware/fake_lgpio.py, which
records every lgpio call and what each line presents to the wire (None: not driven, 0/1: driven).
The reference relay board is active-low: a pin driven at 0 energises its relay.
"""

from __future__ import annotations

import sys

import pytest
from fake_lgpio import LG_OUTPUT, FakeLgpio
from hwfakes import FakeCellWiring, make_config

from cellspec.names import INPUTS, OUTPUTS
from hal.hardware import HardwareCell
from hal.hardware.gpio import NoGpio, board_model, header_gpiochip, open_factory

PI5_REVISION = 0xC04170          # Raspberry Pi 5 Model B, 4 GB, rev 1.0 (type 0x17)
PI5_MODEL = "Raspberry Pi 5 Model B Rev 1.0"


@pytest.fixture
def lg(monkeypatch, tmp_path):
    """The fake lgpio in sys.modules, gpiozero's lgpio pin module imported fresh on top of it,
    /proc's board revision answered as a Pi 5's, a fresh class-wide pin table."""
    import gpiozero.pins
    import gpiozero.pins.local as local

    fake = FakeLgpio()
    monkeypatch.setitem(sys.modules, "lgpio", fake.module())
    sys.modules.pop("gpiozero.pins.lgpio", None)
    monkeypatch.setattr(local, "get_pi_revision", lambda: PI5_REVISION)
    monkeypatch.setattr(local.LocalPiFactory, "pins", {})
    fake.dev = tmp_path / "dev"
    fake.dev.mkdir()
    for n in fake.chips:
        (fake.dev / f"gpiochip{n}").touch()
    yield fake
    sys.modules.pop("gpiozero.pins.lgpio", None)
    if hasattr(gpiozero.pins, "lgpio"):
        delattr(gpiozero.pins, "lgpio")


def lgpio_factory(lg):
    from gpiozero.pins.lgpio import LGPIOFactory

    return LGPIOFactory(chip=0)


def build(lg, factory=None, config=None):
    config = config or make_config()
    wiring = FakeCellWiring()
    cell = HardwareCell(config, i2c=wiring.i2c, smbus=wiring.smbus,
                        pin_factory=factory or lgpio_factory(lg))
    return cell, config


def safe_level(config, name):
    return 1 if config.outputs[name].active_low else 0     # de-energised


def test_relays_go_straight_to_their_safe_level_at_start(lg):
    cell, config = build(lg)
    for name in OUTPUTS:
        pin = config.outputs[name].pin
        # Not driven, then driven at the de-energised level: never a moment at the other level.
        assert lg.history(pin) == [None, safe_level(config, name)], name
    # One request makes each an output at its level (lgpio: gpio_claim_output(h, gpio, level, flags)).
    claims = {c[2]: c[3] for c in lg.calls if c[0] == "gpio_claim_output"}
    assert {config.outputs[n].pin: claims[config.outputs[n].pin] for n in OUTPUTS} == {
        config.outputs[n].pin: safe_level(config, n) for n in OUTPUTS}
    assert lg.history(config.heartbeat_pin) == [None, 0]
    cell.close()


def test_force_safe_remakes_a_reset_output_without_a_pulse(lg):
    cell, config = build(lg)
    pin = config.outputs["crusher"].pin
    cell.gpio.outputs[0][1].close()              # something reset the pin to an input (gpiozero close)
    assert lg.history(pin)[-1] is None           # floating now
    cell.force_safe()
    assert lg.history(pin) == [None, 1, None, 1]  # back to de-energised, no 0 in between
    cell.close()


def test_writes_still_reach_the_relays(lg):
    cell, config = build(lg)
    values = [not config.outputs[n].safe for n in OUTPUTS]
    assert cell.write_outputs(values) is True
    for name in OUTPUTS:
        assert lg.line(config.outputs[name].pin).level == 1 - safe_level(config, name), name
    cell.force_safe()
    for name in OUTPUTS:
        assert lg.history(config.outputs[name].pin)[-1] == safe_level(config, name), name
    cell.close()


def test_edge_latch_works_on_lgpio(lg):
    cell, config = build(lg)
    pin = config.inputs["estop_ok"].pin
    lg.drive(pin, 1)
    assert dict(zip(INPUTS, cell.read_inputs(0), strict=True))["estop_ok"] is True
    lg.drive(pin, 0)
    lg.drive(pin, 1)                              # a 40 ms E-stop pulse between two scans
    seen = [dict(zip(INPUTS, cell.read_inputs(0), strict=True))["estop_ok"] for _ in range(2)]
    assert seen == [False, True]
    cell.close()


def test_gpiozero_exit_hook_of_another_device_leaves_our_relays_driven(lg, monkeypatch):
    """gpiozero's atexit hook closes Device.pin_factory, which closes every pin in its table: with
    the class-wide table shared by all local factories, that would float every relay input."""
    from gpiozero import LED, Device
    from gpiozero.devices import _devices_shutdown
    from gpiozero.pins.lgpio import LGPIOFactory

    cell, config = build(lg)
    other = LGPIOFactory(chip=0)                 # another part of the process: a status LED
    monkeypatch.setattr(Device, "pin_factory", other)
    LED(11)                                      # a free GPIO
    _devices_shutdown()                          # what gpiozero runs at interpreter exit
    for name in OUTPUTS:
        line = lg.line(config.outputs[name].pin)
        assert line.mode & LG_OUTPUT and line.level == safe_level(config, name), name
    cell.close()


def test_another_gpiozero_device_cannot_take_a_relay_pin(lg, monkeypatch):
    from gpiozero import LED, Device
    from gpiozero.pins.lgpio import LGPIOFactory

    cell, config = build(lg)
    monkeypatch.setattr(Device, "pin_factory", LGPIOFactory(chip=0))
    pin = config.outputs["crusher"].pin
    with pytest.raises(Exception, match="GPIO busy"):
        LED(pin)                                 # the kernel refuses the line we hold
    assert lg.history(pin) == [None, 1]          # and our relay never moved
    cell.close()


def test_open_factory_finds_the_header_chip_by_its_label(lg):
    # A Pi 5 before kernel 6.6.45: RP1 is gpiochip4, four Broadcom chips before it.
    lg.chips.clear()
    lg.chips.update({0: ("gpio-brcmstb@107d508500", 32), 1: ("gpio-brcmstb@107d508520", 4),
                     2: ("gpio-brcmstb@107d517c00", 17), 3: ("gpio-brcmstb@107d517c20", 6),
                     4: ("pinctrl-rp1", 54)})
    for n in lg.chips:
        (lg.dev / f"gpiochip{n}").touch()
    assert header_gpiochip(sys.modules["lgpio"], str(lg.dev)) == 4
    factory = open_factory("lgpio", model=lambda: PI5_MODEL, dev=str(lg.dev))
    assert factory.chip == 4
    # Every chip it looked at was closed again.
    opened = [c for c in lg.calls if c[0] == "gpiochip_open"]
    closed = [c for c in lg.calls if c[0] == "gpiochip_close"]
    assert len(closed) == len(opened) - 1        # all but the factory's own handle


def test_open_factory_on_a_pi4(lg):
    lg.chips.clear()
    lg.chips.update({0: ("pinctrl-bcm2711", 58), 1: ("raspberrypi-exp-gpio", 8)})
    (lg.dev / "gpiochip1").touch()
    assert open_factory("lgpio", model=lambda: "Raspberry Pi 4 Model B Rev 1.5", dev=str(lg.dev)).chip == 0


@pytest.mark.parametrize("model", [PI5_MODEL, "Raspberry Pi 500 Rev 1.0",
                                   "Raspberry Pi Compute Module 5 Rev 1.0"])
def test_native_factory_is_refused_on_rp1_boards(model, monkeypatch):
    with pytest.raises(NoGpio, match="'native' pin factory has no Raspberry Pi 5 support"):
        open_factory("native", model=lambda: model)
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "native")
    with pytest.raises(NoGpio, match="no Raspberry Pi 5 support"):
        open_factory(model=lambda: model)


def test_native_factory_is_not_refused_for_being_a_pi4():
    try:
        open_factory("native", model=lambda: "Raspberry Pi 4 Model B Rev 1.5")
    except NoGpio as exc:                        # this test machine has no Pi GPIO registers
        assert "Raspberry Pi 5" not in str(exc)


def test_board_model_from_the_device_tree_else_cpuinfo(tmp_path):
    dt, cpuinfo = tmp_path / "model", tmp_path / "cpuinfo"
    dt.write_bytes(PI5_MODEL.encode() + b"\0")
    cpuinfo.write_text("processor\t: 0\nRevision\t: c04170\nModel\t\t: Raspberry Pi 4 Model B Rev 1.5\n")
    assert board_model((str(dt), str(cpuinfo))) == PI5_MODEL
    assert board_model((str(tmp_path / "absent"), str(cpuinfo))) == "Raspberry Pi 4 Model B Rev 1.5"
    assert board_model((str(tmp_path / "absent"), str(tmp_path / "absent"))) == ""


def test_planted_bug_gpiozeros_own_lgpio_pin_pulses_the_relays(lg):
    """Proof the start-up check can fail: gpiozero's LGPIOPin as it comes (claim at 0, then write)."""
    from gpiozero.pins.lgpio import LGPIOPin

    factory = lgpio_factory(lg)
    LGPIOPin.claims_at_level = True              # harden_factory leaves the pin class alone
    try:
        cell, config = build(lg, factory)
    finally:
        del LGPIOPin.claims_at_level
    assert lg.history(config.outputs["crusher"].pin) == [None, 0, 1]   # energised for a moment
    cell.close()
