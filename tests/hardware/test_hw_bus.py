"""Bus faults over the fake wire: one NACK retried in the scan, timeouts, a locked-up bus (SDA or
SCL held low by a slave, UM10204 3.1.16) cleared by nine clocks and a STOP, or by a supply cycle."""

from __future__ import annotations

import math

import pytest
from gpiozero.pins.mock import MockFactory
from hwfakes import FakeCellWiring, make_config, scan, wire_recovery

from cellspec.names import SENSORS
from controller.config import ConfigError
from hal.hardware import HardwareCell
from hal.hardware.busrecovery import CLOCKS, RECOVERY_INTERVAL_MS

BUS1 = ("o2_a", "lel_cell", "h2_cell", "o2_b", "co_cell", "lel_rto", "o2_c", "hf_room", "n2_supply",
        "dp_cell")
BUS3 = ("temp_gas", "temp_material")


def bad(readings, names=SENSORS):
    """The sensors among `names` that are faulted or have no value: {} when all are good."""
    return {n: readings[n].fault for n in names
            if readings[n].fault is not None or math.isnan(readings[n].value)}


def build(config=None, wired=True):
    config = config or make_config()
    wiring = FakeCellWiring()
    factory = MockFactory()
    if wired:
        wire_recovery(factory, wiring, config)
    cell = HardwareCell(config, i2c=wiring.i2c, smbus=wiring.smbus, pin_factory=factory)
    assert bad(scan(cell, wiring, 5)) == {}
    return cell, wiring, config


def with_supply_cut(d):
    d["i2c"]["1"].update(supply_cut_pin=11, supply_off_ms=300)


# -- one NACK -------------------------------------------------------------------------------------

@pytest.mark.parametrize("address, sensors", [(0x48, ("o2_a", "lel_cell", "h2_cell")), (0x25, ("dp_cell",))])
def test_one_nack_is_retried_within_the_scan(address, sensors):
    cell, wiring, _ = build()
    wiring.bus1.nack_once.add(address)
    r = scan(cell, wiring, 1)
    assert bad(r, sensors) == {}                   # no chip-wide fault for a second
    assert cell.fault_counts() == dict.fromkeys(SENSORS, 0)
    assert address not in wiring.bus1.nack_once    # the NACK did happen
    assert bad(scan(cell, wiring, 4)) == {}
    cell.close()


def test_a_chip_that_keeps_nacking_still_faults_after_one_retry():
    cell, wiring, _ = build()
    wiring.bus1.nacking.add(0x49)
    before = wiring.bus1.transactions
    r = scan(cell, wiring, 1)
    assert {n: r[n].fault for n in ("o2_b", "co_cell", "lel_rto")} == dict.fromkeys(
        ("o2_b", "co_cell", "lel_rto"), "disconnect")
    assert cell.fault_counts()["o2_b"] == 1
    # This scan: the other chips' usual transactions, plus the failed one and its single retry.
    assert wiring.bus1.transactions - before <= 2 * 3 + 1 + 2 + 1
    cell.close()


def test_a_timeout_is_never_retried_it_already_cost_the_adapter_timeout():
    cell, wiring, _ = build()
    wiring.bus1.timing_out.add(0x25)
    start = wiring.clock.now_ms
    r = scan(cell, wiring, 1, step_ms=100)
    # One transfer blocked for the adapter's timeout (1 s), not two: that scan overran, the heartbeat
    # was not toggled meanwhile (fail-safe: docs/hardware.md "A transfer can block the scan").
    assert wiring.clock.now_ms - start == 100 + wiring.bus1.adapter_timeout_ms
    assert r["dp_cell"].fault == "timeout"
    cell.close()


# -- a locked-up bus -------------------------------------------------------------------------------

def test_sda_held_low_is_cleared_by_clock_pulses_and_a_stop():
    cell, wiring, _ = build()
    wiring.bus1.hold_sda(7)                        # the slave wants seven more clocks
    r = scan(cell, wiring, 1)
    assert set(bad(r, BUS1)) == set(BUS1)          # every chip on bus 1 failed ...
    assert bad(r, BUS3) == {}                      # ... and bus 3 never noticed
    assert wiring.bus1.level("sda") and wiring.bus1.level("scl")
    assert wiring.bus1.clocks == 7 + 1 and wiring.bus1.stops == 1   # 7 pulses, then the STOP's clock
    assert cell.bus_recoveries()[1] == {"lockups": 1, "recoveries": 1, "cleared": 1, "power_cycles": 0}
    assert cell.buses_stuck() == [1]               # until a chip answers again
    r = scan(cell, wiring, 5)
    assert bad(r) == {}
    assert cell.buses_stuck() == []
    assert cell.bus_recoveries()[3] == {"lockups": 0, "recoveries": 0, "cleared": 0, "power_cycles": 0}
    cell.close()


def test_a_slave_that_keeps_sda_low_past_nine_clocks_gets_its_supply_cycled():
    cell, wiring, config = build(make_config(with_supply_cut))
    wiring.bus1.hold_sda(50)                       # hung: nine clocks are not enough
    scan(cell, wiring, 1)
    assert wiring.bus1.clocks == CLOCKS + 1        # nine pulses and the STOP's
    assert not wiring.bus1.powered                 # supply cut
    counts = cell.bus_recoveries()[1]
    assert counts == {"lockups": 1, "recoveries": 1, "cleared": 0, "power_cycles": 1}
    scan(cell, wiring, 3)                          # 300 ms off
    assert wiring.bus1.powered
    r = scan(cell, wiring, 6)                      # chips restarted, every channel read again
    assert bad(r) == {}
    assert cell.buses_stuck() == []
    cell.close()


def test_scl_held_low_skips_the_clocks_and_cycles_the_supply():
    cell, wiring, _ = build(make_config(with_supply_cut))
    wiring.bus1.hold_scl()
    start = wiring.clock.now_ms
    r = scan(cell, wiring, 1)
    # The first transfer timed out after the adapter's timeout; the bus's other chips were not tried
    # in that scan (each would have blocked as long): one timeout per bus per scan, never four.
    assert wiring.clock.now_ms - start == 100 + wiring.bus1.adapter_timeout_ms
    assert {r[n].fault for n in BUS1} == {"timeout"} and bad(r, BUS3) == {}
    assert wiring.bus1.clocks == 0                 # clocks cannot help while SCL is held
    assert cell.bus_recoveries()[1]["power_cycles"] == 1 and not wiring.bus1.powered
    scan(cell, wiring, 3)
    assert bad(scan(cell, wiring, 6)) == {}
    cell.close()


def test_a_lockup_without_recovery_wiring_is_detected_and_counted():
    def unwired(d):
        del d["i2c"]
    cell, wiring, _ = build(make_config(unwired), wired=False)
    wiring.bus1.hold_sda(3)
    for _ in range(30):                            # 3 s: the chips retry every second, all fail
        scan(cell, wiring, 1)
    assert cell.buses_stuck() == [1]
    assert cell.bus_recoveries()[1] == {"lockups": 1, "recoveries": 0, "cleared": 0, "power_cycles": 0}
    assert wiring.bus1.sda_hold_clocks == 3        # nobody clocked it
    wiring.bus1.sda_hold_clocks = 0                # released on its own
    assert bad(scan(cell, wiring, 15)) == {}
    assert cell.buses_stuck() == []
    cell.close()


def test_recoveries_of_one_bus_are_spaced():
    cell, wiring, _ = build()
    wiring.bus1.hold_sda(1000)                     # never released by clocks, no supply cut wired
    for _ in range(100):                           # 10 s
        scan(cell, wiring, 1)
    runs = cell.bus_recoveries()[1]["recoveries"]
    assert 10_000 // RECOVERY_INTERVAL_MS <= runs <= 10_000 // RECOVERY_INTERVAL_MS + 1
    assert wiring.bus1.clocks == runs * (CLOCKS + 1)
    assert cell.bus_recoveries()[1]["lockups"] == 1    # one lock-up, however long
    cell.close()


def test_one_dead_chip_is_not_a_lockup():
    cell, wiring, _ = build()
    wiring.bus1.nacking.add(0x4A)
    for _ in range(20):
        scan(cell, wiring, 1)
    assert cell.buses_stuck() == [] and cell.bus_recoveries()[1]["recoveries"] == 0
    assert wiring.bus1.clocks == 0
    cell.close()


def test_recovery_pins_leave_the_bus_alone_while_it_works():
    cell, wiring, config = build()
    for bus in (1, 3):
        assert wiring.buses[bus].level("scl") and wiring.buses[bus].level("sda")
        assert wiring.buses[bus].clocks == 0
    cell.close()
    factory_pins = [cell.gpio.factory.pin(config.i2c[1][k]) for k in ("recovery_scl_pin", "recovery_sda_pin")]
    assert all(p.function == "input" for p in factory_pins)


def test_without_the_fix_a_held_sda_stays_held():
    """Proof the lock-up tests can fail: with no bus guard (the backend as it was), SDA held low
    stays held and every chip on bus 1 stays faulted."""
    cell, wiring, _ = build()
    cell.guards = {}
    wiring.bus1.hold_sda(7)
    r = scan(cell, wiring, 30)
    assert set(bad(r, BUS1)) == set(BUS1) and wiring.bus1.clocks == 0
    cell.close()


# -- the [i2c.<bus>] configuration ----------------------------------------------------------------

@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["i2c"].update({"2": {"recovery_scl_pin": 14, "recovery_sda_pin": 15}}),
     r"unknown table \[i2c.2\]: not a bus any sensor uses"),
    (lambda d: d["i2c"]["1"].pop("recovery_sda_pin"), r"\[i2c.1\] missing key 'recovery_sda_pin'"),
    (lambda d: d["i2c"]["1"].update(recovery_scl_pin=17),
     r"\[i2c.1.recovery_scl_pin\] pin = 17 is already used"),
    (lambda d: d["i2c"]["3"].update(supply_off_ms=20), "supply_off_ms = 20 must be at least 100"),
    (lambda d: d["i2c"]["3"].update(clocks=16), "unknown key 'clocks'"),
])
def test_bad_recovery_wiring_is_a_config_error(mutate, message):
    with pytest.raises(ConfigError) as err:
        make_config(mutate)
    assert any(__import__("re").search(message, e) for e in err.value.errors), err.value.errors


def test_the_reference_config_wires_both_buses():
    config = make_config()
    assert {b: (w["recovery_scl_pin"], w["recovery_sda_pin"]) for b, w in config.i2c.items()} == {
        1: (7, 8), 3: (9, 10)}


# -- the probe ------------------------------------------------------------------------------------

def run_probe(wired):
    import io

    from hwfakes import CELL_TOML

    from controller.probe import main
    wiring, factory, out = FakeCellWiring(), MockFactory(), io.StringIO()

    def open_cell(config):
        if wired:
            wire_recovery(factory, wiring, config)
        return HardwareCell(config, i2c=wiring.i2c, smbus=wiring.smbus, pin_factory=factory)

    def sleep(seconds):
        wiring.clock.advance(max(1, int(seconds * 1000)))
    code = main(["--config", str(CELL_TOML)], open_cell=open_cell, out=out,
                clock=lambda: wiring.clock.now_ms / 1000.0, sleep=sleep)
    return code, out.getvalue()


def test_probe_checks_the_recovery_wiring_at_rest():
    code, text = run_probe(wired=True)
    assert code == 0, text
    assert "     bus 1: SCL high, SDA high through the recovery pins  [lockups 0, recoveries 0" in text
    assert "     bus 3: SCL high, SDA high through the recovery pins" in text
    code, text = run_probe(wired=False)          # pins not connected to the lines: read low
    assert "?? bus 1: SCL and SDA read low through the recovery pins" in text


# -- the lock-up reaches the plant: platform alarms through the event pump -------------------------

def test_a_bus_lockup_raises_i2c_bus_stuck_and_its_clearing_i2c_bus_recovered():
    """The pump turns the backend's counters into alarms (events, status, MQTT), as it runs in `run`."""
    from controller.loop import ScanLoop
    from controller.runtime import Pump

    cell, wiring, config = build()
    loop = ScanLoop(config, cell)
    pump = Pump(loop, events_file=None, show_status=False, echo=False)

    def step(n=1):
        for _ in range(n):
            wiring.clock.advance(100)
            loop.scan(wiring.clock.now_ms)
            pump.safe_flush()
        loop.scan(wiring.clock.now_ms + 1)        # the scan applies what the pump set

    step(3)
    assert "i2c_bus_stuck" not in loop.platform_alarms()
    wiring.bus1.hold_sda(7)                       # cleared by the nine clocks within a scan or two
    step(2)
    assert "i2c_bus_recovered" in loop.platform_alarms()
    assert cell.buses_stuck() == [1] and "i2c_bus_stuck" in loop.platform_alarms()
    names = [a[0] for a in loop.core.active_alarms()]
    assert "i2c_bus_stuck" in names and "i2c_bus_recovered" in names
    step(10)                                      # the chips answer again
    assert cell.buses_stuck() == [] and "i2c_bus_stuck" not in loop.platform_alarms()
    assert pump.failures == 0
    cell.close()
