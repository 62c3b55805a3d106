"""Relay outputs, heartbeat and inputs through gpiozero's MockFactory: exact pin levels."""

from __future__ import annotations

import itertools

import pytest
from gpiozero.pins.mock import MockFactory
from hwfakes import FakeCellWiring, make_config

from controller.names import INPUTS, OUTPUTS
from hal.hardware import HardwareCell
from hal.hardware.gpio import pin_level


def levels(factory, config):
    return {name: factory.pin(config.outputs[name].pin).state for name in OUTPUTS}


def safe_levels(config):
    # De-energised = safe: the pin level with the relay coil off.
    return {name: config.outputs[name].active_low for name in OUTPUTS}


@pytest.mark.parametrize("logical, safe, active_low, high", [
    # safe state -> de-energised: pin high on an active-low board, low on an active-high one
    (False, False, True, True), (True, True, True, True),
    (False, False, False, False), (True, True, False, False),
    # away from the safe state -> energised
    (True, False, True, False), (False, True, True, False),
    (True, False, False, True), (False, True, False, True),
])
def test_pin_level_truth_table(logical, safe, active_low, high):
    assert pin_level(logical, safe, active_low) is high


def test_outputs_start_at_safe_levels_as_outputs(cell, factory, config):
    assert levels(factory, config) == safe_levels(config)
    for name in OUTPUTS:
        pin = factory.pin(config.outputs[name].pin)
        assert pin.function == "output"
        # Straight to the safe level: the pin never passed through the energised level.
        assert all(s.state == config.outputs[name].active_low for s in pin.states[1:])


def test_each_logical_state_on_the_reference_wiring(cell, factory, config):
    # crusher (safe off) on -> energised -> active-low pin low; n2_purge (safe open) closed -> low
    states = [False] * len(OUTPUTS)
    states[OUTPUTS.index("crusher")] = True
    states[OUTPUTS.index("n2_purge")] = False
    states[OUTPUTS.index("vent")] = True
    assert cell.write_outputs(states) is True
    got = levels(factory, config)
    assert got["crusher"] is False          # energised
    assert got["feed"] is True              # at safe (off): de-energised
    assert got["n2_purge"] is False         # closed = away from safe (open): energised
    assert got["n2_boost"] is False         # logical False, safe True: energised
    assert got["vent"] is True              # logical True = safe: de-energised
    assert got["alarm"] is True


@pytest.mark.parametrize("active_low", [True, False])
def test_every_output_every_value_both_board_polarities(active_low):
    def mutate(d):
        for name in OUTPUTS:
            d["outputs"][name]["active_low"] = active_low
    config = make_config(mutate)
    factory = MockFactory()
    wiring = FakeCellWiring()
    cell = HardwareCell(config, i2c=wiring.i2c, smbus=wiring.smbus, pin_factory=factory)
    for values in itertools.product((False, True), repeat=len(OUTPUTS)):
        assert cell.write_outputs(list(values))
        for name, value in zip(OUTPUTS, values, strict=True):
            out = config.outputs[name]
            energised = value != out.safe
            assert factory.pin(out.pin).state == (energised != active_low), (name, value)
    cell.close()


def test_heartbeat_toggles_once_per_call(cell, factory, config):
    pin = factory.pin(config.heartbeat_pin)
    seen = []
    for _ in range(4):
        cell.heartbeat()
        seen.append(pin.state)
    assert seen == [True, False, True, False]


def test_force_safe_restores_safe_levels(cell, factory, config):
    cell.write_outputs([not config.outputs[n].safe for n in OUTPUTS])
    assert levels(factory, config) == {n: not config.outputs[n].active_low for n in OUTPUTS}
    cell.force_safe()
    assert levels(factory, config) == safe_levels(config)


def test_close_leaves_pins_driven_at_safe_levels(config, factory):
    wiring = FakeCellWiring()
    cell = HardwareCell(config, i2c=wiring.i2c, smbus=wiring.smbus, pin_factory=factory)
    cell.write_outputs([not config.outputs[n].safe for n in OUTPUTS])
    cell.heartbeat()
    cell.close()
    for name in OUTPUTS:
        pin = factory.pin(config.outputs[name].pin)
        assert pin.function == "output", name          # not reset to a floating input
        assert pin.state == config.outputs[name].active_low, name
    assert factory.pin(config.heartbeat_pin).state is False
    assert cell.write_outputs([False] * len(OUTPUTS)) is False   # closed: nothing moves
    del cell
    import gc
    gc.collect()                                        # no __del__ clean-up either
    assert all(factory.pin(config.outputs[n].pin).function == "output" for n in OUTPUTS)


def test_failed_write_returns_false_and_still_writes_the_rest(cell, factory, config, monkeypatch):
    broken = factory.pin(config.outputs["feed"].pin)

    def boom(value):
        raise OSError(5, "GPIO write failed")
    monkeypatch.setattr(broken, "_set_state", boom)
    values = [True] * len(OUTPUTS)
    assert cell.write_outputs(values) is False
    assert factory.pin(config.outputs["alarm"].pin).state is False      # written after the failure


def test_write_that_does_not_stick_returns_false(cell, factory, config, monkeypatch):
    pin = factory.pin(config.outputs["alarm"].pin)
    monkeypatch.setattr(pin, "_get_state", lambda: True)                 # reads back de-energised
    values = [False] * len(OUTPUTS)
    values[OUTPUTS.index("alarm")] = True
    assert cell.write_outputs(values) is False


def test_force_safe_and_close_never_raise(cell, factory, config, monkeypatch):
    for name in OUTPUTS:
        pin = factory.pin(config.outputs[name].pin)
        monkeypatch.setattr(pin, "_set_state", lambda v: 1 / 0)
    cell.force_safe()
    cell.close()


def test_inputs_follow_pins_and_polarity(cell, factory, config):
    # Nothing driving: pulled to inactive (active-high pulled down, active-low pulled up).
    assert cell.read_inputs(0) == [False] * len(INPUTS)
    factory.pin(config.inputs["estop_ok"].pin).drive_high()
    factory.pin(config.inputs["local_reset"].pin).drive_low()           # active-low push-button
    got = dict(zip(INPUTS, cell.read_inputs(0), strict=True))
    assert got["estop_ok"] is True and got["local_reset"] is True and got["door_closed"] is False


def test_failed_input_read_is_none(cell, factory, config, monkeypatch):
    def boom():
        raise OSError(5, "read failed")
    monkeypatch.setattr(factory.pin(config.inputs["door_closed"].pin), "_get_state", boom)
    got = dict(zip(INPUTS, cell.read_inputs(0), strict=True))
    assert got["door_closed"] is None and got["estop_ok"] is False


def test_planted_bug_naive_polarity_is_caught(monkeypatch):
    """Proof these checks can fail: the naive `pin = logical != active_low` (no safe state)
    energises the safe=true valves at rest, and the safe-level check sees it."""
    import hal.hardware.gpio as gpio

    monkeypatch.setattr(gpio, "pin_level", lambda logical, safe, active_low: logical != active_low)
    config = make_config()
    factory = MockFactory()
    wiring = FakeCellWiring()
    cell = HardwareCell(config, i2c=wiring.i2c, smbus=wiring.smbus, pin_factory=factory)
    wrong = {n for n, lv in levels(factory, config).items() if lv != safe_levels(config)[n]}
    assert wrong == {n for n in OUTPUTS if config.outputs[n].safe}       # n2_purge, n2_boost, vent
    cell.close()
