"""Relay outputs, heartbeat and inputs through gpiozero's MockFactory: exact pin levels."""

from __future__ import annotations

import itertools

import pytest
from gpiozero.pins.mock import MockFactory
from hwfakes import FakeCellWiring, make_config

from cellspec.names import EDGE_LATCHED_INPUTS, INPUTS, OUTPUTS
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


# -- edge latch: an E-stop or door pulse shorter than a scan ---------------------------------------

def drive(factory, config, name, logical):
    """Drive input `name`'s pin to the level that reads as `logical`."""
    pin = factory.pin(config.inputs[name].pin)
    if logical != config.inputs[name].active_low:
        pin.drive_high()
    else:
        pin.drive_low()


def read(cell):
    return dict(zip(INPUTS, cell.read_inputs(0), strict=True))


def polarity_cell(active_low):
    def mutate(d):
        for name in INPUTS:
            d["inputs"][name]["active_low"] = active_low
    config = make_config(mutate)
    factory = MockFactory()
    wiring = FakeCellWiring()
    return HardwareCell(config, i2c=wiring.i2c, smbus=wiring.smbus, pin_factory=factory), factory, config


@pytest.mark.parametrize("active_low", [False, True])
@pytest.mark.parametrize("name", EDGE_LATCHED_INPUTS)
def test_pulse_between_two_reads_reads_false_once(name, active_low):
    cell, factory, config = polarity_cell(active_low)
    drive(factory, config, name, True)
    assert read(cell)[name] is True
    drive(factory, config, name, False)          # a 40 ms pulse: open, closed again before the read
    drive(factory, config, name, True)
    assert read(cell)[name] is False             # seen once, though the contact is closed now
    assert read(cell)[name] is True              # then the live value
    assert read(cell)[name] is True
    cell.close()


@pytest.mark.parametrize("name", EDGE_LATCHED_INPUTS)
def test_a_drop_held_across_reads_reads_false_until_released(cell, factory, config, name):
    drive(factory, config, name, True)
    assert read(cell)[name] is True
    drive(factory, config, name, False)
    assert [read(cell)[name] for _ in range(3)] == [False, False, False]
    drive(factory, config, name, True)
    assert read(cell)[name] is True              # the drop was already reported: no extra False


def test_only_the_edge_latched_inputs_are_latched(cell, factory, config):
    assert set(EDGE_LATCHED_INPUTS) == {"estop_ok", "door_closed"}
    drive(factory, config, "rto_ready", True)
    read(cell)
    drive(factory, config, "rto_ready", False)
    drive(factory, config, "rto_ready", True)
    assert read(cell)["rto_ready"] is True       # not latched: the live value
    # A rising edge of a latched input is no drop either.
    drive(factory, config, "estop_ok", False)
    read(cell)
    drive(factory, config, "estop_ok", True)
    drive(factory, config, "estop_ok", False)
    drive(factory, config, "estop_ok", True)
    assert read(cell)["estop_ok"] is False       # the drop inside the pulse counts
    assert read(cell)["estop_ok"] is True


def test_a_pulse_during_a_read_is_reported_by_the_next_read(cell, factory, config, monkeypatch):
    pin = factory.pin(config.inputs["estop_ok"].pin)
    drive(factory, config, "estop_ok", True)
    read(cell)
    real = pin._get_state
    pulses = [1]

    def state_with_a_pulse():
        if pulses:                               # the alert thread fires while we read the level
            pulses.pop()
            pin.drive_low()
            pin.drive_high()
        return real()
    monkeypatch.setattr(pin, "_get_state", state_with_a_pulse)
    first = read(cell)["estop_ok"]
    assert [first, read(cell)["estop_ok"]] in ([False, True], [True, False])   # seen, never lost
    assert read(cell)["estop_ok"] is True


def test_a_latched_drop_wins_over_a_failed_read(cell, factory, config, monkeypatch):
    drive(factory, config, "door_closed", True)
    read(cell)
    drive(factory, config, "door_closed", False)
    drive(factory, config, "door_closed", True)

    def boom():
        raise OSError(5, "read failed")
    monkeypatch.setattr(factory.pin(config.inputs["door_closed"].pin), "_get_state", boom)
    assert read(cell)["door_closed"] is False    # the known drop
    assert read(cell)["door_closed"] is None     # then the failed read


def test_edge_callbacks_watch_the_dropping_level_and_are_released_on_close(config, factory):
    wiring = FakeCellWiring()
    cell = HardwareCell(config, i2c=wiring.i2c, smbus=wiring.smbus, pin_factory=factory)
    for name in INPUTS:
        pin = factory.pin(config.inputs[name].pin)
        watched = name in EDGE_LATCHED_INPUTS
        assert (pin.when_changed is not None) is watched, name
        if watched:
            assert pin.edges == ("rising" if config.inputs[name].active_low else "falling")
            assert pin.bounce is None            # a debounce would swallow short pulses
    cell.close()
    assert all(factory.pin(config.inputs[n].pin).when_changed is None for n in INPUTS)


def test_no_edge_detection_is_a_pin_config_error(config, factory, monkeypatch):
    from gpiozero.exc import PinEdgeDetectUnsupported

    from hal.hardware.gpio import PinConfigError

    pin = factory.pin(config.inputs["door_closed"].pin)

    def unsupported(value):
        raise PinEdgeDetectUnsupported("no edge detection on this pin")
    monkeypatch.setattr(pin, "_set_edges", unsupported)
    wiring = FakeCellWiring()
    with pytest.raises(PinConfigError, match=r"\[inputs.door_closed\] pin = 6: edge detection unavailable"):
        HardwareCell(config, i2c=wiring.i2c, smbus=wiring.smbus, pin_factory=factory)


def test_planted_bug_without_the_latch_a_short_pulse_leaves_no_trace(cell, factory, config, monkeypatch):
    """Proof the pulse tests can fail: with the reads ignoring the counted drops (the plain level
    read of before), a pulse between reads reads True."""
    monkeypatch.setattr(cell.gpio, "_latched", ())
    drive(factory, config, "estop_ok", True)
    read(cell)
    drive(factory, config, "estop_ok", False)
    drive(factory, config, "estop_ok", True)
    assert read(cell)["estop_ok"] is True
