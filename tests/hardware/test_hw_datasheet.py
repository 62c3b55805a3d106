"""The chips as their datasheets describe them (issue 12 items 1-4), and the hazard each guards.

1. NAMUR NE43 per channel: a failure signal (at or below 3.6 mA, at or above 21.0 mA) is a fault
   even read with ±0.25 % shunt and gain error; a gas channel below 3.8 mA is never clean gas; a
   transmitter's maintenance current is its own fault.
2. ADS1115: an input is measured only up to VDD (SBAS444 9.3.3); config checks the shunt against it.
3. MCP9600 (DS20005426): status bit 4 is "input range"; open-circuit detection needs the bias
   network of 6.3.3.1; conversions every 320 ms at 18 bits; clear TH Update before reading TH.
4. SDP810: a command 500 us after a stop at the soonest, no second start while measuring, the
   scale factor names the part.
"""

from __future__ import annotations

import io
import math
import tomllib

import pytest
from gpiozero.pins.mock import MockFactory
from hwfakes import (
    CELL_TOML,
    FakeADS1115,
    FakeCellWiring,
    FakeClock,
    FakeMCP9600,
    FakeSDP810,
    make_config,
    scan,
    set_loop,
)

from controller.config import ConfigError, parse
from controller.probe import main as probe_main
from hal.hardware import HardwareCell
from hal.hardware.ads1115 import config_word

E = 0.0025          # shunt tolerance + ADC gain error: a current reads within ±0.25 %
ERRORS = (-E, 0.0, E)
NAME = "config/cell.toml"


def open_cell(config, wiring):
    return HardwareCell(config, i2c=wiring.i2c, smbus=wiring.smbus, pin_factory=MockFactory())


def hw(sensor, **keys):
    """A config mutation: set keys in [sensors.<sensor>.hardware]."""
    return lambda d: d["sensors"][sensor]["hardware"].update(keys)


def errors_of(mutate):
    data = tomllib.loads(CELL_TOML.read_text())
    mutate(data)
    with pytest.raises(ConfigError) as info:
        parse(data, NAME)
    return info.value.errors


def read_loop(config, sensor, ma, error, scans=4):
    wiring = FakeCellWiring()
    cell = open_cell(config, wiring)
    try:
        set_loop(wiring, config, sensor, ma, error)
        r = scan(cell, wiring, scans)[sensor]
        return r, cell.details()[sensor]
    finally:
        cell.close()


# -- 1. NE43 --------------------------------------------------------------------------------------
@pytest.mark.parametrize("error", ERRORS)
@pytest.mark.parametrize("ma, fault", [
    (0.0, "loop_low"), (2.0, "loop_low"),
    (3.6, "loop_low"),          # NE43 failure signal: read 0.25 % high it is 3.609 mA, never 0 % O2
    (3.7, "loop_low"),          # below the 3.8 mA measuring band: low is the permissive direction
    (3.78, "loop_low"),         # just below the band even read 0.25 % high (3.789 mA)
    (3.82, None),               # just inside even read 0.25 % low (3.8105 mA): span low, 0 %
    (4.0, None), (12.0, None),
    (20.5, None),               # top of the measuring band, 20.551 mA read high: span high
    (20.8, None),               # saturated high: clamped, trips on the thresholds
    (20.98, "loop_high"),       # 20.928 mA read low: above the 20.9 mA band end
    (21.0, "loop_high"),        # NE43 failure signal: read 0.25 % low it is 20.9475 mA, a fault
    (22.0, "loop_high"), (30.0, "loop_high"),
])
def test_gas_channel_currents_around_every_limit(ma, fault, error):
    config = make_config()
    r, d = read_loop(config, "o2_b", ma, error)
    assert r.fault == fault, (ma, error, d["ma"])
    if fault is None:
        expected = min(max((ma * (1 + error) - 4.0) / 16.0 * 25.0, 0.0), 25.0)
        assert r.value == pytest.approx(expected, abs=0.01)
    else:
        assert math.isnan(r.value)


@pytest.mark.parametrize("error", ERRORS)
@pytest.mark.parametrize("ma, fault", [(2.0, "maintenance"), (3.0, "maintenance"), (3.35, "maintenance"),
                                       (1.5, "loop_low"), (0.0, "loop_low"), (3.5, "loop_low")])
def test_maintenance_current_is_its_own_quality_never_clean_gas(ma, fault, error):
    config = make_config(hw("lel_cell", maintenance_ma=[1.9, 3.45]))
    r, _ = read_loop(config, "lel_cell", ma, error)
    assert r.fault == fault and math.isnan(r.value)


@pytest.mark.parametrize("error", ERRORS)
@pytest.mark.parametrize("ma, value, fault", [
    (3.6, None, "loop_low"),     # NE43 failure: a fault in every band config allows
    (3.7, 0.0, None),            # N2 supply: low is the alarm direction, this channel reads 3.7 as 0 bar
    (20.5, 10.0, None),          # read 0.25 % high: 20.551 mA, inside
    (20.7, None, "loop_high"),   # N2 supply: high is the permissive direction, saturation is a fault
    (21.0, None, "loop_high"),
])
def test_valid_band_is_per_channel(ma, value, fault, error):
    config = make_config(hw("n2_supply", valid_ma=[3.65, 20.6]))
    r, _ = read_loop(config, "n2_supply", ma, error)
    assert r.fault == fault
    if value is not None:
        assert r.value == pytest.approx(value, abs=0.01)


@pytest.mark.parametrize("mutate, expected", [
    (hw("o2_a", valid_ma=[3.6, 20.5]),
     "config/cell.toml: [sensors.o2_a.hardware] valid_ma = [3.6, 20.5] must start above 3.609 mA and at most "
     "at 3.8 mA"),
    (hw("o2_a", valid_ma=[3.8, 21.0]),
     "config/cell.toml: [sensors.o2_a.hardware] valid_ma = [3.8, 21.0] must end at 20.5 mA or above and "
     "below 20.9475 mA"),
    (hw("o2_a", valid_ma=[3.9, 20.5]),
     "valid_ma = [3.9, 20.5] must start above 3.609 mA and at most at 3.8 mA"),
    (hw("o2_a", maintenance_ma=[0.0, 3.4]),
     "config/cell.toml: [sensors.o2_a.hardware] maintenance_ma = [0.0, 3.4] must lie within 1 to 3.6 mA"),
    (hw("o2_a", maintenance_ma=[2.0, 3.7]), "maintenance_ma = [2.0, 3.7] must lie within 1 to 3.6 mA"),
    (hw("o2_a", maintenance_ma=3.0), "maintenance_ma = 3.0 must be a pair of numbers [low, high]"),
])
def test_band_config_errors_name_file_key_and_problem(mutate, expected):
    assert any(expected in e for e in errors_of(mutate)), errors_of(mutate)


# -- 2. ADS1115 against VDD -------------------------------------------------------------------------
def test_fake_adc_measures_only_up_to_its_supply():
    clock = FakeClock()
    adc = FakeADS1115(clock, vdd=3.3)
    adc.volts[0] = 5.0                                    # 20 mA through 250 ohm
    adc.write(bytes((0x01,)) + config_word(0, 2 / 3, 860).to_bytes(2, "big"))
    clock.advance(2)
    adc.write(b"\x00")
    counts = int.from_bytes(adc.read(2), "big")
    assert counts == round(3.3 / 6.144 * 32768)           # 3.3 V, not 5.0 V: 13.2 mA, not 20 mA


def test_shunt_beyond_vdd_is_a_config_error():
    """250 ohm at gain 2/3 fits the 6.144 V full scale but clips at VDD = 3.3 V, near 13.2 mA."""
    errs = errors_of(hw("o2_a", shunt_ohm=250.0, gain=0.6667))
    assert any(e.startswith("config/cell.toml: [sensors.o2_a.hardware] shunt_ohm = 250.0 x 22 mA = 5.5 V is "
                            "above vdd_v = 3.3 V") and "clip at 13.2 mA" in e for e in errs), errs


def test_a_higher_supply_allows_the_larger_shunt_and_vdd_is_bounded():
    make_config(hw("o2_a", shunt_ohm=200.0, gain=0.6667, vdd_v=5.0))   # 4.4 V <= 5.0 V: accepted
    errs = errors_of(hw("o2_a", vdd_v=6.0))
    assert "config/cell.toml: [sensors.o2_a.hardware] vdd_v = 6.0 must be at most 5.5" in errs


def test_a_shorted_transmitter_clips_at_vdd_and_is_still_loop_high():
    config = make_config()
    r, d = read_loop(config, "o2_a", 30.0, 0.0)
    assert r.fault == "loop_high"
    assert d["ma"] == pytest.approx(22.0, abs=0.01)       # 3.3 V / 150 ohm: the fake clips at VDD


# -- 3. MCP9600 -------------------------------------------------------------------------------------
def test_fake_mcp9600_converts_every_320_ms_at_18_bits():
    clock = FakeClock()
    chip = FakeMCP9600(clock)
    clock.advance(319)
    chip.write(b"\x04")
    assert chip.read(1)[0] & 0x40 == 0
    clock.advance(1)
    assert chip.read(1)[0] & 0x40                         # table 5-3: 18-bit, 320 ms
    chip.write(bytes((0x06, 0b01 << 5)))                  # 16-bit resolution
    assert chip.conversion_ms == 80


def test_update_flag_is_cleared_before_the_temperature_is_read(cell, wiring):
    """A conversion completing between the read of TH and the clear of its flag must not be lost."""
    chip = wiring.mcp[0x60]
    assert scan(cell, wiring, 4)["temp_gas"].value == 21.0
    chip.frozen = True                                    # from now on only the conversions below
    chip.celsius = 25.0
    chip.convert()                                        # TH = 25, flag set

    def one_more():
        chip.after_hot_read = None
        chip.celsius = 30.0
        chip.convert()                                    # completes right after TH was read
    chip.after_hot_read = one_more
    assert scan(cell, wiring, 1)["temp_gas"].value == 25.0
    assert scan(cell, wiring, 1)["temp_gas"].value == 30.0


def no_bias(sensor="temp_material"):
    return hw(sensor, open_detect="none")


def test_without_bias_status_bit_4_is_input_range():
    config = make_config(no_bias())
    wiring = FakeCellWiring()
    cell = open_cell(config, wiring)
    scan(cell, wiring, 4)
    wiring.mcp[0x61].emf_out_of_range = True
    r = scan(cell, wiring, 4)["temp_material"]
    assert r.fault == "input_range" and math.isnan(r.value)
    cell.close()


def test_with_bias_an_open_thermocouple_is_open_circuit_without_it_the_reading_floats(cell, wiring):
    scan(cell, wiring, 4)
    wiring.mcp[0x61].open_circuit = True
    assert scan(cell, wiring, 4)["temp_material"].fault == "open_circuit"
    chip = FakeMCP9600(wiring.clock)
    chip.bias = False
    chip.open_circuit = True
    wiring.clock.advance(320)
    chip.write(b"\x04")
    assert chip.read(1)[0] & 0x50 == 0x40                 # no bit 4: the open input keeps converting


def test_without_bias_a_reading_pinned_at_the_cold_junction_is_open_suspect():
    config = make_config(no_bias())
    wiring = FakeCellWiring()
    chip = wiring.mcp[0x61]
    chip.bias = False
    cell = open_cell(config, wiring)
    scan(cell, wiring, 4)
    chip.celsius = 21.5
    scan(cell, wiring, 4)                                 # 21.5 -> 22.0: a plausible half degree
    chip.open_circuit = True                              # floats to the cold junction, 22.0 C
    r = scan(cell, wiring, 50, step_ms=500)               # 25 s: looks like a healthy 22 C
    assert r["temp_material"].fault is None and r["temp_material"].value == 22.0
    r = scan(cell, wiring, 12, step_ms=500)               # 31 s pinned
    assert r["temp_material"].fault == "open_suspect" and math.isnan(r["temp_material"].value)
    assert "cold junction" in cell.details()["temp_material"]["error"]
    assert r["temp_gas"].fault is None                    # the other one has its bias network
    cell.close()


def test_without_bias_a_jump_is_open_suspect_and_a_real_change_is_not():
    config = make_config(no_bias())
    wiring = FakeCellWiring()
    chip = wiring.mcp[0x61]
    chip.bias = False
    cell = open_cell(config, wiring)
    scan(cell, wiring, 4)
    chip.celsius = 41.0                                   # +20 C in one conversion: plausible
    assert scan(cell, wiring, 4)["temp_material"].value == 41.0
    chip.open_circuit = True
    chip.open_celsius = 140.0                             # the floating input wanders off
    assert scan(cell, wiring, 4)["temp_material"].fault == "open_suspect"
    cell.close()


def test_with_bias_no_plausibility_fault_at_the_cold_junction(cell, wiring):
    wiring.mcp[0x61].celsius = 22.0                       # the cold junction's own temperature
    r = scan(cell, wiring, 80, step_ms=500)               # 40 s
    assert r["temp_material"].fault is None


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: d["sensors"]["temp_gas"]["hardware"].pop("open_detect"),
     "config/cell.toml: [sensors.temp_gas.hardware] missing key 'open_detect': say whether the thermocouple "
     "has the open-circuit bias resistors of MCP9600 datasheet section 6.3.3.1"),
    (hw("temp_gas", open_detect="yes"),
     'config/cell.toml: [sensors.temp_gas.hardware] open_detect = "yes" must be one of "bias", "none"'),
])
def test_open_detect_config(mutate, expected):
    assert any(e.startswith(expected) for e in errors_of(mutate)), errors_of(mutate)


# -- 4. SDP810 --------------------------------------------------------------------------------------
def test_fake_sdp810_is_busy_after_a_stop_and_refuses_a_second_start():
    clock = FakeClock()
    sdp = FakeSDP810(clock)
    sdp.write(b"\x3f\xf9")
    with pytest.raises(OSError):
        sdp.write(b"\x36\x15")                           # within 500 us of the stop
    clock.advance(1)
    sdp.write(b"\x36\x15")
    with pytest.raises(OSError):
        sdp.write(b"\x36\x15")                           # must not be resent while measuring
    assert sdp.commands == [0x3FF9, 0x3615] and sdp.refused == [0x3615, 0x3615]


def test_sdp810_starts_on_a_later_scan_than_its_stop(cell, wiring):
    scan(cell, wiring, 1)
    assert wiring.sdp.commands == [0x3FF9]                # the scan never waits: start next time
    r = scan(cell, wiring, 2)["dp_cell"]
    assert wiring.sdp.commands == [0x3FF9, 0x3615] and wiring.sdp.refused == []
    assert r.fault is None and r.value == pytest.approx(-80.0, abs=1 / 60)


def test_sdp810_restarts_after_a_nack_while_it_kept_measuring(cell, wiring):
    assert scan(cell, wiring, 3)["dp_cell"].fault is None
    wiring.bus1.nacking.add(0x25)                         # one glitch: the sensor itself still measures
    assert scan(cell, wiring, 1)["dp_cell"].fault == "disconnect"
    wiring.bus1.nacking.discard(0x25)
    r = scan(cell, wiring, 13)["dp_cell"]
    assert r.fault is None and wiring.sdp.refused == []
    assert wiring.sdp.commands[-2:] == [0x3FF9, 0x3615]


def test_sdp810_scale_factor_must_match_the_configured_part(cell, wiring):
    wiring.sdp.scale = 240                                # an SDP810-125Pa fitted, config says 500 Pa
    wiring.sdp.pascal = 200.0                             # it saturates at 136.5 Pa
    r = scan(cell, wiring, 3)["dp_cell"]
    assert r.fault == "device" and math.isnan(r.value)
    assert "SDP810-125Pa" in cell.details()["dp_cell"]["error"]


def test_sdp810_part_sets_the_range_config_may_use():
    errs = errors_of(hw("dp_cell", part="SDP810-125Pa"))
    assert any(e.startswith("config/cell.toml: [sensors.dp_cell] range = [-500.0, 500.0] is wider than the "
                            "SDP810-125Pa measures (-125 to 125 Pa)") for e in errs), errs
    errs = errors_of(hw("dp_cell", part="SDP611"))
    assert any("[sensors.dp_cell.hardware] part = \"SDP611\" must be one of" in e for e in errs), errs


# -- the probe -------------------------------------------------------------------------------------
def run_probe(wiring, config_text=None, tmp_path=None):
    path = CELL_TOML
    if config_text is not None:
        path = tmp_path / "cell.toml"
        path.write_text(config_text)
    out = io.StringIO()

    def clock():
        return wiring.clock.now_ms / 1000.0

    def sleep(seconds):
        wiring.clock.advance(max(1, int(seconds * 1000)))
    code = probe_main(["--config", str(path)], open_cell=lambda c: open_cell(c, wiring), out=out,
                      clock=clock, sleep=sleep)
    return code, out.getvalue()


def test_probe_shows_each_loop_against_its_band_the_sdp810_part_and_the_bias_test():
    code, text = run_probe(FakeCellWiring())
    assert code == 0, text
    assert "     o2_a             4.000 mA  in band  [valid 3.80..20.90 mA]" in text
    assert "     dp_cell        scale factor 60 per Pa: SDP810-500Pa or SDP800-500Pa, as configured" in text
    assert 'temp_gas       open_detect = "bias": status 0x40, bit 4 clear: connected' in text
    assert 'open-circuit test of each "bias" thermocouple: unplug it at the amplifier' in text


def test_probe_flags_a_loop_outside_its_band_and_the_wrong_part():
    wiring = FakeCellWiring()
    wiring.ads[0x49].set_ma(0, 3.7)                       # o2_b
    wiring.sdp.scale = 240
    code, text = run_probe(wiring)
    assert code == 1
    assert "  !! o2_b             3.700 mA  BELOW the valid band" in text
    assert "  !! dp_cell        scale factor 240 per Pa: that is the SDP810-125Pa or SDP800-125Pa" in text


def test_probe_open_thermocouple_with_and_without_bias(tmp_path):
    wiring = FakeCellWiring()
    wiring.mcp[0x61].open_circuit = True                  # the technician unplugged it
    text = CELL_TOML.read_text().replace('address = 0x60, thermocouple = "K", open_detect = "bias"',
                                         'address = 0x60, thermocouple = "K", open_detect = "none"')
    code, out = run_probe(wiring, text, tmp_path)
    assert code == 1
    assert 'temp_material  open_detect = "bias": status 0x10, bit 4 SET' in out
    assert '?? temp_gas       open_detect = "none"' in out and "Figure 6-6" in out
