"""The hardware backend's sensors over register-level fakes: values, faults, staleness, retry."""

from __future__ import annotations

import math

import pytest
from hwfakes import FakeCellWiring, chip_of, make_config, scan, set_loop

from cellspec.names import SENSORS
from hal.base import Reading
from hal.hardware import HardwareCell
from hal.hardware.ads1115 import config_word

ADS_SENSORS = ("o2_a", "o2_b", "o2_c", "lel_cell", "h2_cell", "co_cell", "hf_room", "lel_rto", "n2_supply")


def healthy(readings, names=SENSORS):
    """The sensors among `names` that are faulted or have no value: {} when all are good."""
    return {n: readings[n].fault for n in names
            if readings[n].fault is not None or math.isnan(readings[n].value)}


def test_every_sensor_reads_in_order_after_one_round(cell, wiring, config):
    set_loop(wiring, config, "o2_a", 12.0)        # 12 mA on 0..25 % -> 12.5 %
    set_loop(wiring, config, "co_cell", 20.0)     # full scale
    set_loop(wiring, config, "n2_supply", 8.0)    # 8 mA on 0..10 bar -> 2.5 bar
    wiring.mcp[0x60].celsius = 35.25
    wiring.mcp[0x61].celsius = -5.5
    wiring.sdp.pascal = -95.5
    out = cell.read_sensors(wiring.clock.now_ms)
    assert len(out) == len(SENSORS) and all(isinstance(r, Reading) for r in out)
    r = scan(cell, wiring, 4)
    assert healthy(r) == {}
    assert r["o2_a"].value == pytest.approx(12.5, abs=0.01)
    assert r["co_cell"].value == pytest.approx(2000.0, abs=0.5)
    assert r["n2_supply"].value == pytest.approx(2.5, abs=0.005)
    assert r["temp_gas"].value == 35.25
    assert r["temp_material"].value == -5.5
    assert r["dp_cell"].value == pytest.approx(-95.5, abs=1 / 60)
    assert cell.fault_counts() == dict.fromkeys(SENSORS, 0)


def test_before_the_first_sample_a_sensor_has_no_value(cell, wiring):
    r = scan(cell, wiring, 1)
    assert math.isnan(r["o2_a"].value) and r["o2_a"].fault is None and r["o2_a"].t_ms == 0


def test_one_channel_per_chip_per_scan_round_robin(cell, wiring):
    ads = wiring.ads[0x48]
    scan(cell, wiring, 1)
    assert ads.conversions_started == 1
    scan(cell, wiring, 3)
    assert ads.conversions_started == 4       # one per scan, never more
    muxes = []
    for _ in range(3):
        scan(cell, wiring, 1)
        muxes.append((ads.config >> 12) & 0x7)
    assert sorted(muxes) == [4, 5, 6]         # AIN0, AIN1, AIN2 single-ended, each in turn


def test_config_word_matches_the_datasheet():
    # OS=1, MUX=100 (AIN0-GND), PGA=001 (4.096 V), MODE=1, DR=100 (128 SPS), COMP_QUE=11
    assert config_word(0, 1.0, 128) == 0b1_100_001_1_100_0_0_0_11
    assert config_word(3, 2 / 3, 860) == 0b1_111_000_1_111_0_0_0_11


@pytest.mark.parametrize("ma, value, fault", [
    (4.0, 0.0, None), (20.0, 25.0, None), (12.0, 12.5, None),
    (3.7, None, "loop_low"),   # below NE43's 3.8 mA measuring band: a fault on a gas channel
    (20.7, 25.0, None),        # NE43 saturated high: clamped to span high
    (2.0, None, "loop_low"), (3.5, None, "loop_low"), (0.0, None, "loop_low"),
    (22.0, None, "loop_high"), (21.2, None, "loop_high"),
])
def test_ne43_limits(cell, wiring, config, ma, value, fault):
    set_loop(wiring, config, "o2_b", ma)
    r = scan(cell, wiring, 4)["o2_b"]
    assert r.fault == fault
    if value is None:
        assert math.isnan(r.value)
        assert cell.fault_counts()["o2_b"] >= 1
    else:
        assert r.value == pytest.approx(value, abs=0.01)
    assert cell.details()["o2_b"]["ma"] == pytest.approx(ma, abs=0.01)


def test_device_absent_at_boot_is_a_fault_then_retried(config, factory):
    wiring = FakeCellWiring(present=False)
    wiring.attach_all()
    del wiring.bus1.chips[0x49]
    cell = HardwareCell(config, i2c=wiring.i2c, smbus=wiring.smbus, pin_factory=factory, retry_ms=1000)
    r = scan(cell, wiring, 4)
    for name in ("o2_b", "co_cell", "lel_rto"):
        assert r[name].fault == "disconnect"
    assert healthy(r, ("o2_a", "o2_c", "temp_gas", "dp_cell")) == {}
    counts = cell.fault_counts()["o2_b"]
    assert counts == 1                      # one failed attempt, not one per scan
    wiring.bus1.attach(0x49, wiring.ads[0x49])
    r = scan(cell, wiring, 14)              # past the retry time, then a full round
    assert healthy(r) == {}
    cell.close()


def test_nack_mid_run_faults_that_chip_only(cell, wiring):
    assert healthy(scan(cell, wiring, 5)) == {}
    wiring.bus1.nacking.add(0x4A)
    r = scan(cell, wiring, 1)
    assert {n: r[n].fault for n in ("o2_c", "hf_room", "n2_supply")} == dict.fromkeys(
        ("o2_c", "hf_room", "n2_supply"), "disconnect")
    assert r["o2_c"].t_ms == wiring.clock.now_ms
    assert healthy(r, ("o2_a", "o2_b", "temp_gas", "temp_material", "dp_cell")) == {}
    assert cell.fault_counts()["o2_c"] == 1 and cell.fault_counts()["o2_a"] == 0
    wiring.bus1.nacking.discard(0x4A)
    r = scan(cell, wiring, 15)
    assert healthy(r) == {}


def test_errno_5_is_a_disconnect_too(cell, wiring):
    scan(cell, wiring, 5)

    def eio(n):
        raise OSError(5, "Input/output error")
    wiring.sdp.read = eio
    assert scan(cell, wiring, 1)["dp_cell"].fault == "disconnect"


def test_crc_error_is_a_crc_fault_and_recovers_next_scan(cell, wiring):
    assert scan(cell, wiring, 3)["dp_cell"].fault is None
    wiring.sdp.corrupt_crc = True
    r = scan(cell, wiring, 1)["dp_cell"]
    assert r.fault == "crc" and math.isnan(r.value)
    assert cell.fault_counts()["dp_cell"] == 1
    wiring.sdp.corrupt_crc = False
    assert scan(cell, wiring, 1)["dp_cell"].fault is None


def test_sdp810_restarted_after_a_power_loss(cell, wiring):
    scan(cell, wiring, 3)
    wiring.sdp.measuring_since = None         # sensor lost power: idle, NACKs reads
    assert scan(cell, wiring, 1)["dp_cell"].fault == "disconnect"
    r = scan(cell, wiring, 12)["dp_cell"]
    assert r.fault is None
    assert wiring.sdp.commands[-2:] == [0x3FF9, 0x3615]


def test_stuck_conversion_goes_stale_then_times_out(cell, wiring, config):
    r = scan(cell, wiring, 4)
    before = r["o2_a"]
    assert before.fault is None
    chip_of(wiring, config, "o2_a").stuck = True
    # Fast scans: not ready yet is no fault, the readings just keep their old sample time.
    r = scan(cell, wiring, 2, step_ms=5)
    assert r["o2_a"] == before
    r = scan(cell, wiring, 5, step_ms=5)        # past 2 x 7.8 ms + 10 ms
    for name in ("o2_a", "lel_cell", "h2_cell"):
        assert r[name].fault == "timeout"
    assert r["o2_b"].fault is None
    chip_of(wiring, config, "o2_a").stuck = False
    assert healthy(scan(cell, wiring, 4)) == {}


def test_chip_reset_is_a_device_fault_not_a_wrong_channel(cell, wiring):
    scan(cell, wiring, 4)
    wiring.ads[0x49].reset()                    # power glitch: back to AIN0-AIN1, 2.048 V
    wiring.ads[0x49].set_ma(1, 12.0)
    r = scan(cell, wiring, 1)
    assert r["o2_b"].fault == "device" and r["co_cell"].fault == "device"
    assert "chip reset" in cell.details()["o2_b"]["error"]
    assert healthy(scan(cell, wiring, 14)) == {}


def test_open_thermocouple(cell, wiring):
    assert scan(cell, wiring, 4)["temp_material"].fault is None
    wiring.mcp[0x61].open_circuit = True          # bias network fitted (the reference wiring)
    r = scan(cell, wiring, 4)                     # the next 320 ms conversion sees it
    assert r["temp_material"].fault == "open_circuit" and math.isnan(r["temp_material"].value)
    assert r["temp_gas"].fault is None
    wiring.mcp[0x61].open_circuit = False
    assert scan(cell, wiring, 4)["temp_material"].fault is None


def test_frozen_amplifier_goes_stale_then_times_out(cell, wiring):
    good = scan(cell, wiring, 4)["temp_gas"]
    assert good.fault is None and good.t_ms != 0
    wiring.mcp[0x60].frozen = True
    r = scan(cell, wiring, 10)["temp_gas"]
    assert r == good                            # no new conversion: same sample, same t_ms
    r = scan(cell, wiring, 6)["temp_gas"]       # > 1.5 s without an update
    assert r.fault == "timeout"


def test_wrong_chip_at_thermocouple_address_is_a_device_fault(config, factory):
    wiring = FakeCellWiring()
    wiring.mcp[0x60].device_id = 0x12
    cell = HardwareCell(config, i2c=wiring.i2c, smbus=wiring.smbus, pin_factory=factory)
    r = scan(cell, wiring, 2)
    assert r["temp_gas"].fault == "device"
    assert "MCP9600" in cell.details()["temp_gas"]["error"]
    cell.close()


def test_thermocouple_type_is_written_to_the_chip(config, factory):
    cfg = make_config(lambda d: d["sensors"]["temp_gas"]["hardware"].update(thermocouple="J"))
    wiring = FakeCellWiring()
    cell = HardwareCell(cfg, i2c=wiring.i2c, smbus=wiring.smbus, pin_factory=factory)
    scan(cell, wiring, 1)
    assert wiring.mcp[0x60].sensor_config >> 4 == 1     # J
    assert wiring.mcp[0x61].sensor_config >> 4 == 0     # K
    cell.close()


def test_missing_bus_is_a_fault_on_its_sensors(config, factory):
    wiring = FakeCellWiring()
    cell = HardwareCell(config, i2c={1: wiring.i2c[1]}, smbus=wiring.smbus, pin_factory=factory)
    r = scan(cell, wiring, 4)
    assert r["temp_gas"].fault == "disconnect" and r["o2_a"].fault is None
    cell.close()


def test_scan_is_bounded_in_transactions(cell, wiring):
    scan(cell, wiring, 5)
    before = wiring.transactions
    scan(cell, wiring, 10)
    per_scan = (wiring.transactions - before) / 10
    # 3 ADS1115 x 3 + 2 MCP9600 status + 1 SDP810 read, plus the occasional MCP9600 update.
    assert 12 <= per_scan <= 12 + 2 * 3


def test_two_sensors_on_one_adc_input_are_rejected(factory):
    from hal.hardware.plan import WiringError

    cfg = make_config(lambda d: d["sensors"]["o2_b"]["hardware"].update(address=0x48, channel=0))
    with pytest.raises(WiringError, match="channel 0 is already used by o2_a"):
        HardwareCell(cfg, i2c={}, smbus={}, pin_factory=factory)
