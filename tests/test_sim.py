"""The simulated cell behaves like the plant: inerting, leaks, crushing, runaway, faults.

Each test drives the real SimulatedCell with the outputs the controller would write in a given
state and checks what its sensors and inputs report.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pytest

from cellspec.names import EDGE_LATCHED_INPUTS, INPUTS, O2_SENSORS, OUTPUTS, SENSORS
from controller.config import load
from hal.sim import (
    CHATTER_HALF_PERIOD_MS,
    CONTACTOR_DELAY_MS,
    EVENTS,
    INPUT_FAULT_MODES,
    INPUT_FAULT_TARGETS,
    OUTPUT_FAULT_MODES,
    SENSOR_FAULT_MODES,
    SimulatedCell,
)

CONFIG = Path(__file__).resolve().parent.parent / "config" / "cell.toml"
S = {name: i for i, name in enumerate(SENSORS)}
I = {name: i for i, name in enumerate(INPUTS)}  # noqa: E741


def outputs(*active: str) -> list[bool]:
    return [name in active for name in OUTPUTS]


PURGING = outputs("n2_purge", "n2_boost", "exhaust")
READY = outputs("n2_purge", "exhaust")
RUNNING = outputs("crusher", "feed", "n2_purge", "exhaust")
ISOLATED = outputs("n2_purge")


@pytest.fixture(scope="module")
def config():
    return load(CONFIG)


@pytest.fixture(scope="module")
def tripped(config):
    return [config.safe_outputs()[name] for name in OUTPUTS]


@pytest.fixture(scope="module")
def warnings(config):
    """Reading -> is it at or beyond a warning of the default config?"""
    th = config.thresholds
    levels = {name: th[name]["warning"] for name in
              ("h2_cell", "lel_cell", "lel_rto", "co_cell", "hf_room", "temp_gas", "temp_material")}
    levels.update({name: th["o2"]["warning"] for name in O2_SENSORS})

    def beyond(readings) -> list[str]:
        bad = [f"{n}={readings[S[n]].value:.3f}" for n, lim in levels.items() if readings[S[n]].value >= lim]
        dp = readings[S["dp_cell"]].value
        if not th["dp_cell"]["warning_low"] < dp < th["dp_cell"]["warning_high"]:
            bad.append(f"dp_cell={dp:.1f}")
        if readings[S["n2_supply"]].value < th["n2_supply"]["low"]:
            bad.append(f"n2_supply={readings[S['n2_supply']].value:.2f}")
        return bad

    return beyond


class Rig:
    """A simulated cell and the caller's clock, scanned every 100 ms like the controller does."""

    def __init__(self, config, seed: int = 0, start_ms: int = 0):
        self.sim = SimulatedCell(config, seed=seed)
        self.t = start_ms
        self.readings = self.sim.read_sensors(self.t)
        self.inputs = self.sim.read_inputs(self.t)

    def scan(self, out=None):
        if out is not None:
            self.sim.write_outputs(out)
        self.t += 100
        self.readings = self.sim.read_sensors(self.t)
        self.inputs = self.sim.read_inputs(self.t)
        return self.readings

    def run(self, seconds: float, out=None):
        """Scan for `seconds`, yielding the readings of every scan."""
        if out is not None:
            self.sim.write_outputs(out)
        for _ in range(int(round(seconds * 10))):
            yield self.scan()

    def hold(self, seconds: float, out=None):
        for _ in self.run(seconds, out):
            pass
        return self.readings

    def jump(self, seconds: float, out=None):
        """One read after `seconds` (the sim integrates the gap in sub-steps)."""
        if out is not None:
            self.sim.write_outputs(out)
        self.t += int(seconds * 1000)
        self.readings = self.sim.read_sensors(self.t)
        self.inputs = self.sim.read_inputs(self.t)
        return self.readings

    def value(self, name: str) -> float:
        return self.readings[S[name]].value

    def voted_o2(self) -> float:
        return statistics.median(self.value(n) for n in O2_SENSORS)


def inert_rig(config, seed=0):
    rig = Rig(config, seed)
    rig.jump(180, PURGING)
    rig.jump(600, READY)
    return rig


# -- determinism and time ---------------------------------------------------------------------------

def trace(config, seed):
    rig = Rig(config, seed)
    out = [tuple(r) for r in rig.run(20, PURGING)]
    rig.sim.event("thermal_runaway")
    out += [tuple(r) + tuple(rig.inputs) for r in rig.run(20, RUNNING)]
    return out


def test_same_seed_gives_identical_readings_and_another_seed_does_not(config):
    assert trace(config, 5) == trace(config, 5)
    assert trace(config, 5) != trace(config, 6)


def test_a_long_gap_integrates_exactly_like_many_short_scans(config):
    stepped, jumped = Rig(config, start_ms=10**9), Rig(config, start_ms=10**9)
    stepped.hold(60, PURGING)
    jumped.jump(60, PURGING)
    assert stepped.sim.snapshot() | {"t_ms": 0} == jumped.sim.snapshot() | {"t_ms": 0}


def test_a_clock_going_backwards_does_not_step_the_model(config):
    rig = Rig(config)
    rig.hold(5, PURGING)
    before = rig.sim.snapshot()
    readings = rig.sim.read_sensors(rig.t - 1000)
    assert rig.sim.snapshot() == before
    assert all(r.t_ms == rig.t - 1000 for r in readings)


# -- inerting ---------------------------------------------------------------------------------------

def test_power_up_reads_air_and_purge_from_air_passes_the_start_permissive_within_180_s(config):
    rig = Rig(config)
    assert all(20.0 < rig.value(n) < 21.5 for n in O2_SENSORS)
    seconds = None
    for k, readings in enumerate(rig.run(180, PURGING)):
        if all(readings[S[n]].value < 1.5 for n in O2_SENSORS):
            seconds = (k + 1) / 10
            break
    assert seconds is not None, f"O2 still {[rig.value(n) for n in O2_SENSORS]} after 180 s"
    assert seconds > 60, "inerting 2 m3 cannot be that fast"


def test_ready_outputs_hold_o2_below_one_percent(config):
    rig = Rig(config)
    rig.jump(180, PURGING)
    for readings in rig.run(1200, READY):
        assert all(readings[S[n]].value < 1.0 for n in O2_SENSORS)
    assert 0.1 < rig.voted_o2() < 0.4   # settled near 0.2 % plus the cells' zero offsets


def test_air_ingress_with_purge_only_pushes_voted_o2_over_the_trip(config):
    rig = inert_rig(config)
    rig.sim.event("air_ingress")
    peak = max(statistics.median(r[S[n]].value for n in O2_SENSORS) for r in rig.run(300, READY))
    assert peak > 2.5


def test_air_ingress_with_boost_open_stays_below_the_trip_and_recovers_after_the_leak(config):
    rig = inert_rig(config)
    rig.sim.event("air_ingress")
    for _ in rig.run(900, PURGING):
        assert rig.voted_o2() < 2.0
    rig.sim.event("air_ingress_end")
    rig.hold(600, READY)
    assert rig.voted_o2() < 0.5


def test_door_open_lets_air_in_and_clears_door_closed(config):
    rig = inert_rig(config)
    rig.sim.event("door_open")
    rig.hold(60, READY)
    assert rig.inputs[I["door_closed"]] is False
    assert rig.voted_o2() > 5.0
    rig.sim.event("door_close")
    rig.scan()
    assert rig.inputs[I["door_closed"]] is True


def test_n2_supply_loss_drops_pressure_and_flow_and_restore_brings_them_back(config):
    rig = inert_rig(config)
    rig.sim.event("n2_supply_loss")
    rig.hold(10, READY)
    assert rig.value("n2_supply") < 1.0
    assert rig.sim.snapshot()["n2_flow_m3_min"] < 0.1
    rig.jump(1800)
    assert rig.voted_o2() > 1.0          # with no purge the baseline leak wins
    rig.sim.event("n2_supply_restore")
    rig.hold(10)
    assert rig.value("n2_supply") > 5.5


# -- pressure ---------------------------------------------------------------------------------------

def test_exhaust_holds_minus_80_and_vent_minus_40(config, tripped):
    rig = Rig(config)
    rig.hold(10, PURGING)
    assert -85 < rig.value("dp_cell") < -75
    rig.hold(10, tripped)
    assert -45 < rig.value("dp_cell") < -35


def test_isolated_cell_with_n2_flowing_goes_positive_and_reaches_the_trip(config):
    rig = Rig(config)
    rig.hold(10, PURGING)
    seconds = next((k + 1) / 10 for k, r in enumerate(rig.run(120, ISOLATED)) if r[S["dp_cell"]].value > 250)
    assert 10 < seconds < 60
    rig.hold(120)
    assert 250 < rig.value("dp_cell") <= 402   # the relief caps it


# -- crushing ---------------------------------------------------------------------------------------

def test_steady_crushing_stays_below_every_warning_in_range_and_never_stuck(config, warnings):
    rig = inert_rig(config, seed=3)
    ref = [r.value for r in rig.readings]
    ref_t = [rig.t] * len(SENSORS)
    longest = [0] * len(SENSORS)
    temps = []
    for k, readings in enumerate(rig.run(1800, RUNNING)):
        assert not warnings(readings), f"at {k / 10} s: {warnings(readings)}"
        for i, (r, name) in enumerate(zip(readings, SENSORS, strict=True)):
            s = config.sensors[name]
            assert r.fault is None and r.t_ms == rig.t
            assert s.low <= r.value <= s.high, f"{name}={r.value} out of its range"
            if abs(r.value - ref[i]) > s.resolution:
                ref[i], ref_t[i] = r.value, rig.t
            longest[i] = max(longest[i], rig.t - ref_t[i])
        if k % 10 == 0:
            snap = rig.sim.snapshot()
            temps.append((snap["temp_gas"], snap["temp_material"]))
    assert max(longest) <= 3000, dict(zip(SENSORS, longest, strict=True))
    # It did crush: gases and heat rose to the documented steady values.
    assert 6 < rig.value("lel_cell") < 10 and 0.2 < rig.value("h2_cell") < 0.4
    assert 40 < rig.value("co_cell") < 80 and rig.value("lel_rto") > 1.5
    assert 28 < temps[-1][0] < 32 and 31 < temps[-1][1] < 37
    # The warm-up never looks like a temperature-rise warning (2 K/min over 30 s).
    for a, b in zip(temps, temps[30:], strict=False):
        assert b[0] - a[0] < 1.0 and b[1] - a[1] < 1.0


def test_gases_decay_to_baselines_after_crushing(config):
    rig = inert_rig(config)
    rig.jump(600, RUNNING)
    rig.jump(1200, READY)
    snap = rig.sim.snapshot()
    assert snap["lel_cell"] < 1.0 and snap["h2_cell"] < 0.05 and snap["co_cell"] < 12


def test_no_crushing_without_the_contactor_or_the_feed(config):
    rig = inert_rig(config)
    rig.jump(300, outputs("feed", "n2_purge", "exhaust"))    # feed into a stopped crusher
    assert rig.sim.snapshot()["lel_cell"] < 1.0
    rig = inert_rig(config)
    rig.jump(300, outputs("crusher", "n2_purge", "exhaust"))  # running empty
    assert rig.sim.snapshot()["lel_cell"] < 1.0


# -- thermal runaway --------------------------------------------------------------------------------

def test_thermal_runaway_trips_temperature_and_co_then_cools_and_flushes(config, tripped, warnings):
    rig = inert_rig(config)
    rig.jump(300, RUNNING)
    rig.sim.event("thermal_runaway")
    t0 = rig.sim.snapshot()["temp_material"]
    rig.hold(10)
    rate = (rig.sim.snapshot()["temp_material"] - t0) * 6     # K/min over the first 10 s
    assert 20 <= rate <= 45
    peak_tm = peak_co = peak_dp = 0.0
    for readings in rig.run(900, tripped):              # the controller trips within a scan or so
        peak_tm = max(peak_tm, readings[S["temp_material"]].value)
        peak_co = max(peak_co, readings[S["co_cell"]].value)
        peak_dp = max(peak_dp, readings[S["dp_cell"]].value)
        for r, name in zip(readings, SENSORS, strict=True):
            assert config.sensors[name].low <= r.value <= config.sensors[name].high
    assert peak_tm > 120 and peak_tm > 400
    assert peak_co > 1000
    assert peak_dp > 0, "the runaway gas should push the vented cell above room pressure"
    snap = rig.sim.snapshot()
    assert not snap["runaway_burning"]
    assert not warnings(rig.readings)
    assert rig.value("temp_material") < 80 and rig.value("co_cell") < 200
    # Reset and re-purge: READY outputs then hold everything below the warnings.
    rig.hold(60, PURGING)
    assert not warnings(rig.readings)


# -- inputs and outputs -----------------------------------------------------------------------------

def test_default_inputs(config):
    rig = Rig(config)
    assert rig.inputs == [True, True, True, False, False, False]
    assert list(INPUTS) == ["estop_ok", "door_closed", "rto_ready", "crusher_running",
                            "local_reset", "remote_enable"]


@pytest.mark.parametrize("on, off, name", [
    ("estop", "estop_release", "estop_ok"),
    ("door_open", "door_close", "door_closed"),
    ("rto_trip", "rto_restore", "rto_ready"),
])
def test_events_clear_and_restore_their_input(config, on, off, name):
    rig = Rig(config)
    rig.sim.event(on)
    rig.scan()
    assert rig.inputs[I[name]] is False
    rig.sim.event(off)
    rig.scan()
    assert rig.inputs[I[name]] is True


def test_remote_enable_key_and_local_reset_press(config):
    rig = Rig(config)
    rig.sim.event("remote_enable_on")
    rig.sim.event("local_reset")
    rig.scan()
    assert rig.inputs[I["remote_enable"]] is True and rig.inputs[I["local_reset"]] is True
    rig.hold(1.0)
    assert rig.inputs[I["local_reset"]] is False
    rig.sim.event("remote_enable_off")
    rig.scan()
    assert rig.inputs[I["remote_enable"]] is False


def test_a_local_reset_press_is_read_once_even_by_a_scan_later_than_the_press(config):
    # At --speed 1000 a late scan spans more than RESET_PRESS_MS of simulated time: the press (the
    # panel's, a scenario's) must still reach the core, which acts on its rising edge.
    rig = Rig(config)
    rig.sim.event("local_reset")
    rig.jump(5.0)
    assert rig.inputs[I["local_reset"]] is True
    rig.scan()
    assert rig.inputs[I["local_reset"]] is False


def test_crusher_feedback_follows_the_command_after_the_contactor_delay(config):
    assert CONTACTOR_DELAY_MS == 300
    rig = inert_rig(config)
    rig.scan(outputs("crusher", "n2_purge", "exhaust"))   # written at t, applies from t
    seen = [rig.inputs[I["crusher_running"]]] + [rig.scan() and rig.inputs[I["crusher_running"]]
                                                  for _ in range(4)]
    assert seen == [False, False, True, True, True]
    rig.sim.write_outputs(READY)
    seen = [rig.scan() and rig.inputs[I["crusher_running"]] for _ in range(4)]
    assert seen == [True, True, False, False]


def test_welded_contactor_keeps_feedback_and_crusher_running(config):
    rig = inert_rig(config)
    rig.hold(1, RUNNING)
    rig.sim.inject_fault("crusher", "welded")
    rig.hold(5, READY)
    assert rig.inputs[I["crusher_running"]] is True
    assert rig.sim.snapshot()["crusher_running"] is True
    rig.sim.inject_fault("crusher", "clear")
    rig.hold(0.5)
    assert rig.inputs[I["crusher_running"]] is False


def test_welding_other_outputs_is_recorded(config):
    rig = Rig(config)
    rig.sim.inject_fault("exhaust", "welded")
    assert rig.sim.output_faults == {"exhaust": "welded"}
    rig.hold(1)
    assert rig.inputs[I["crusher_running"]] is False
    rig.sim.inject_fault("exhaust", "clear")
    assert rig.sim.output_faults == {}


def test_estop_drops_every_output_to_its_safe_state(config):
    rig = inert_rig(config)
    rig.hold(5, RUNNING)
    assert rig.inputs[I["crusher_running"]] is True
    rig.sim.event("estop")
    rig.hold(5)
    assert rig.inputs[I["crusher_running"]] is False
    assert -45 < rig.value("dp_cell") < -35        # exhaust closed, vent open
    rig.sim.event("estop_release")
    rig.hold(1)
    assert rig.inputs[I["crusher_running"]] is True  # the command was still RUNNING


def test_force_safe_close_heartbeat_and_write_result(config):
    rig = inert_rig(config)
    assert rig.sim.write_outputs(RUNNING) is True
    rig.hold(2)
    rig.sim.force_safe()
    rig.hold(5)
    assert rig.inputs[I["crusher_running"]] is False and -45 < rig.value("dp_cell") < -35
    rig.sim.write_outputs(RUNNING)
    rig.sim.close()
    rig.hold(1)
    assert rig.inputs[I["crusher_running"]] is False
    for _ in range(3):
        rig.sim.heartbeat()
    assert rig.sim.heartbeats == 3
    with pytest.raises(ValueError, match=r"needs 8 values \(crusher, feed, .*, alarm, horn\), got 1"):
        rig.sim.write_outputs([True])


# -- sensor faults ----------------------------------------------------------------------------------

def twins(config, seed=9):
    """Two identical cells: the first gets the fault, the second is the healthy reference."""
    a, b = Rig(config, seed), Rig(config, seed)
    a.hold(30, PURGING)
    b.hold(30, PURGING)
    return a, b


def scan_both(a, b):
    return a.scan(), b.scan()


def test_fault_disconnect_nan_and_out_of_range(config):
    a, b = twins(config)
    a.sim.inject_fault("co_cell", "disconnect")
    a.sim.inject_fault("h2_cell", "nan")
    a.sim.inject_fault("temp_gas", "out_of_range")
    for _ in range(20):
        ra, rb = scan_both(a, b)
        co, h2, tg = ra[S["co_cell"]], ra[S["h2_cell"]], ra[S["temp_gas"]]
        assert math.isnan(co.value) and co.fault == "disconnect" and co.t_ms == a.t
        assert math.isnan(h2.value) and h2.fault is None and h2.t_ms == a.t
        assert tg == (400.0 + 0.1 * 420.0, None, a.t)
        # The other sensors read exactly what the healthy twin reads.
        assert [r for i, r in enumerate(ra) if i not in (S["co_cell"], S["h2_cell"], S["temp_gas"])] == \
            [r for i, r in enumerate(rb) if i not in (S["co_cell"], S["h2_cell"], S["temp_gas"])]
    for name in ("co_cell", "h2_cell", "temp_gas"):
        a.sim.inject_fault(name, "clear")
    assert scan_both(a, b)[0] == b.readings


def test_fault_stuck_freezes_the_last_value_with_fresh_time(config):
    a, b = twins(config)
    last = a.value("o2_b")
    a.sim.inject_fault("o2_b", "stuck")
    for _ in range(600):                      # a minute: the truth keeps falling
        a.scan()
        assert a.readings[S["o2_b"]] == (last, None, a.t)
    assert abs(a.value("o2_a") - last) > 1.0


def test_fault_stale_repeats_the_last_reading_with_its_old_time(config):
    a, _ = twins(config)
    last = a.readings[S["dp_cell"]]
    a.sim.inject_fault("dp_cell", "stale")
    for _ in range(50):
        a.scan()
        assert a.readings[S["dp_cell"]] is last or a.readings[S["dp_cell"]] == last
    assert a.readings[S["dp_cell"]].t_ms < a.t - 4000


def test_fault_drift_grows_two_percent_of_span_per_minute_and_stays_clamped(config):
    a, b = twins(config)
    a.sim.inject_fault("n2_supply", "drift")
    t0 = a.t
    for _ in range(3000):                      # 5 minutes
        ra, rb = scan_both(a, b)
    expected = 0.02 * 10.0 * (a.t - t0) / 60000        # 1.0 bar
    assert ra[S["n2_supply"]].value - rb[S["n2_supply"]].value == pytest.approx(expected, abs=1e-9)
    assert ra[S["n2_supply"]].fault is None
    a.jump(1200)
    assert a.value("n2_supply") == 10.0       # 6 bar + 5 bar of drift, clamped to the range high


def test_force_holds_the_measured_quantity_and_releases_it(config):
    rig = inert_rig(config)
    rig.sim.force("co_cell", 1200.0)
    values = [r[S["co_cell"]].value for r in rig.run(5)]
    assert all(abs(v - 1200.0) < 10 for v in values) and len(set(values)) > 1
    assert rig.sim.snapshot()["co_cell"] < 20          # the truth is untouched
    rig.sim.force("co_cell", None)
    rig.hold(60)
    assert rig.value("co_cell") < 20
    rig.sim.force("o2_a", 3.0)
    rig.scan()
    assert rig.value("o2_a") > 2.9 and rig.value("o2_b") < 1.0


# -- errors -----------------------------------------------------------------------------------------

def test_unknown_names_and_modes_raise_clear_value_errors(config):
    sim = SimulatedCell(config)
    with pytest.raises(ValueError, match=r"unknown fault target 'o2_x'.*o2_a.*crusher"):
        sim.inject_fault("o2_x", "stuck")
    with pytest.raises(ValueError, match=r"unknown fault mode 'melted' for sensor 'o2_a'.*disconnect"):
        sim.inject_fault("o2_a", "melted")
    with pytest.raises(ValueError, match=r"unknown fault mode 'stuck' for output 'crusher'.*welded"):
        sim.inject_fault("crusher", "stuck")
    with pytest.raises(ValueError, match=r"unknown fault mode 'welded' for input 'crusher_running'.*"
                                         r"chatter, drop, unreadable, clear"):
        sim.inject_fault("crusher_running", "welded")
    with pytest.raises(ValueError, match=r"unknown fault target 'estop_ok'.*an input \(crusher_running\)"):
        sim.inject_fault("estop_ok", "drop")
    with pytest.raises(ValueError, match=r"unknown event 'meteor'.*thermal_runaway"):
        sim.event("meteor")
    with pytest.raises(ValueError, match=r"unknown sensor 'o3'.*o2_a"):
        sim.force("o3", 1.0)


def test_allowed_sets_are_exported(config):
    assert set(SENSOR_FAULT_MODES) == {"disconnect", "stuck", "nan", "out_of_range", "drift", "stale",
                                       "clear"}
    assert set(OUTPUT_FAULT_MODES) == {"welded", "write_fail", "clear"}
    assert INPUT_FAULT_TARGETS == ("crusher_running",)
    assert set(INPUT_FAULT_MODES) == {"chatter", "drop", "unreadable", "clear"}
    sim = SimulatedCell(config)
    for name in EVENTS:
        sim.event(name)                      # every advertised event is accepted


# -- edge-latched inputs: pulses shorter than a scan -------------------------------------------------
# Events land at the time of the last read, so `estop` + `estop_release` between two reads is a pulse
# shorter than a scan (a 40 ms press). The next read must still show it; the one after it is live.

def fb(rig) -> bool | None:
    return rig.inputs[I["crusher_running"]]


def test_estop_pulse_between_reads_is_seen_once(config):
    rig = inert_rig(config)
    rig.hold(5, RUNNING)
    assert rig.inputs[I["estop_ok"]] is True and fb(rig) is True
    rig.sim.event("estop")
    rig.sim.event("estop_release")
    rig.scan()
    assert rig.inputs[I["estop_ok"]] is False          # the pulse, seen once
    rig.scan()
    assert rig.inputs[I["estop_ok"]] is True           # next-but-one read: the live value


def test_door_pulse_between_reads_is_seen_once(config):
    rig = inert_rig(config)
    rig.sim.event("door_open")
    rig.sim.event("door_close")
    seen = [rig.scan() and rig.inputs[I["door_closed"]] for _ in range(3)]
    assert seen == [False, True, True]


@pytest.mark.parametrize("on, off, name", [("estop", "estop_release", "estop_ok"),
                                           ("door_open", "door_close", "door_closed")])
def test_a_pulse_longer_than_a_scan_reads_false_for_its_duration(config, on, off, name):
    rig = Rig(config)
    rig.scan()
    rig.sim.event(on)
    seen = [rig.scan() and rig.inputs[I[name]] for _ in range(5)]   # held 500 ms
    rig.sim.event(off)
    seen += [rig.scan() and rig.inputs[I[name]] for _ in range(2)]
    assert seen == [False] * 5 + [True, True]          # no extra False after the release


def test_two_pulses_between_reads_read_false_once_and_only_latched_inputs_latch(config):
    assert set(EDGE_LATCHED_INPUTS) == {"estop_ok", "door_closed"}
    rig = Rig(config)
    rig.scan()
    for _ in range(2):
        rig.sim.event("door_open")
        rig.sim.event("door_close")
    rig.sim.event("rto_trip")                          # not edge-latched: the live value only
    rig.sim.event("rto_restore")
    rig.scan()
    assert rig.inputs[I["door_closed"]] is False and rig.inputs[I["rto_ready"]] is True
    rig.scan()
    assert rig.inputs[I["door_closed"]] is True
    # A close while already open is no drop: it reads True at once.
    rig.sim.event("door_open")
    rig.scan()
    rig.sim.event("door_close")
    rig.scan()
    assert rig.inputs[I["door_closed"]] is True


def test_estop_pulse_drops_the_contactor_at_once_and_only_the_command_recloses_it(config):
    """The hard-wired chain cuts the contactor coil: it drops out within tens of ms, so even a
    40 ms pulse opens it. With the crusher still commanded it pulls in again after the contactor
    delay: at 100 ms scans the controller reads 'feedback dropped while RUNNING' twice."""
    rig = inert_rig(config)
    rig.hold(5, RUNNING)
    assert fb(rig) is True
    rig.sim.event("estop")
    assert rig.sim.snapshot()["contactor"] is False    # at once, no contactor delay
    rig.sim.event("estop_release")
    seen = [rig.scan() and fb(rig) for _ in range(CONTACTOR_DELAY_MS // 100)]
    assert seen == [False, False, True]                # re-closes 300 ms later: the command is on
    # A controller that answers the drop (trips) keeps it open: the crusher stays stopped.
    rig.sim.event("estop")
    rig.sim.event("estop_release")
    rig.scan(READY)
    seen = [rig.scan() and fb(rig) for _ in range(10)]
    assert seen == [False] * 10 and rig.sim.snapshot()["contactor"] is False


def test_estop_cannot_open_a_welded_contactor(config):
    rig = inert_rig(config)
    rig.hold(2, RUNNING)
    rig.sim.inject_fault("crusher", "welded")
    rig.sim.event("estop")
    rig.hold(2)
    assert fb(rig) is True and rig.sim.snapshot()["contactor"] is True
    rig.sim.inject_fault("crusher", "clear")           # unwelded with the chain still open: drops now
    assert rig.sim.snapshot()["contactor"] is False


# -- contactor feedback faults ----------------------------------------------------------------------

def test_fault_chatter_toggles_the_feedback_at_5_hz_whatever_the_contactor_does(config):
    assert CHATTER_HALF_PERIOD_MS == 100               # 5 Hz: 100 ms closed, 100 ms open
    rig = inert_rig(config)
    rig.hold(2, RUNNING)
    t0 = rig.t
    rig.sim.inject_fault("crusher_running", "chatter")
    seen = []
    for _ in range(100):                               # 2 s read every 20 ms
        rig.t += 20
        rig.sim.read_sensors(rig.t)
        seen.append((rig.t - t0, rig.sim.read_inputs(rig.t)[I["crusher_running"]]))
    assert all(v is ((t // 100) % 2 == 0) for t, v in seen), seen[:12]
    changes = sum(a[1] != b[1] for a, b in zip(seen, seen[1:], strict=False))
    assert changes == 20                               # 10 changes a second: a 5 Hz square wave
    assert rig.sim.snapshot()["contactor"] is True     # the crusher itself still turns
    # Commanded off, the feedback chatters all the same; at 100 ms scans it alternates.
    rig.scan(READY)
    rig.hold(1)
    pattern = [rig.scan() and fb(rig) for _ in range(6)]
    assert pattern in ([True, False] * 3, [False, True] * 3)
    assert rig.sim.snapshot()["contactor"] is False
    rig.sim.inject_fault("crusher_running", "clear")
    assert [rig.scan() and fb(rig) for _ in range(3)] == [False] * 3


def test_fault_drop_opens_the_contactor_and_stops_the_crusher_whatever_the_command(config):
    a, b = inert_rig(config, seed=4), inert_rig(config, seed=4)
    a.hold(120, RUNNING)
    b.hold(120, RUNNING)
    a.sim.inject_fault("crusher_running", "drop")
    assert a.sim.snapshot()["contactor"] is False      # at once, as the hard-wired chain does
    empty_running = outputs("crusher", "n2_purge", "exhaust")   # feed off: a turning crusher empties
    for _ in range(300):                               # 30 s, the command re-written every scan
        a.scan(empty_running)
        b.scan(empty_running)
        assert fb(a) is False and a.inputs[I["estop_ok"]] is True
    sa, sb = a.sim.snapshot(), b.sim.snapshot()
    assert sa["contactor"] is False and sb["contactor"] is True
    assert sb["load"] < 0.1 < sa["load"]               # the stopped crusher did not empty itself
    assert sa["lel_cell"] < sb["lel_cell"]             # nor crush: less solvent vapour
    a.sim.inject_fault("crusher_running", "clear")     # the chain closes: pulls in if commanded
    assert [a.scan() and fb(a) for _ in range(3)] == [False, False, True]


def test_fault_drop_stops_crushing_gas_production(config):
    rig = inert_rig(config)
    rig.hold(600, RUNNING)
    lel = rig.sim.snapshot()["lel_cell"]
    assert lel > 6
    rig.sim.inject_fault("crusher_running", "drop")
    rig.hold(600, RUNNING)
    assert rig.sim.snapshot()["lel_cell"] < 2 and fb(rig) is False


def test_fault_unreadable_gives_none_and_the_contactor_still_works(config):
    rig = inert_rig(config)
    rig.sim.inject_fault("crusher_running", "unreadable")
    for out, contactor in ((RUNNING, True), (READY, False)):
        rig.hold(1, out)
        assert fb(rig) is None
        assert rig.sim.snapshot()["contactor"] is contactor
        assert rig.inputs[I["estop_ok"]] is True and rig.inputs[I["door_closed"]] is True
    rig.sim.inject_fault("crusher_running", "clear")
    rig.scan()
    assert fb(rig) is False


def test_fault_write_fail_refuses_the_write_and_keeps_the_output(config):
    rig = inert_rig(config)
    rig.hold(5, RUNNING)
    rig.sim.inject_fault("crusher", "write_fail")
    assert rig.sim.write_outputs(PURGING) is False     # the relay board did not take it
    rig.hold(5)
    snap = rig.sim.snapshot()
    assert snap["contactor"] is True and fb(rig) is True   # the crusher kept running
    assert snap["n2_flow_m3_min"] > 2.0                # the other outputs were written (boost open)
    rig.sim.force_safe()                               # the board takes no write, safe or not
    rig.hold(1)
    assert fb(rig) is True
    rig.sim.inject_fault("crusher", "clear")
    assert rig.sim.write_outputs(PURGING) is True
    rig.hold(1)
    assert fb(rig) is False and rig.sim.output_faults == {}


@pytest.mark.parametrize("name", OUTPUTS)
def test_fault_write_fail_on_any_output_fails_every_write_until_cleared(config, name):
    sim = SimulatedCell(config)
    sim.inject_fault(name, "write_fail")
    assert sim.write_outputs(PURGING) is False
    assert sim.write_outputs(PURGING) is False
    sim.inject_fault(name, "clear")
    assert sim.write_outputs(PURGING) is True


def test_input_faults_are_in_the_snapshot(config):
    sim = SimulatedCell(config)
    sim.inject_fault("crusher_running", "chatter")
    assert sim.snapshot()["input_faults"] == {"crusher_running": "chatter"}
    sim.inject_fault("crusher_running", "clear")
    assert sim.snapshot()["input_faults"] == {}


# -- the scenario format uses this vocabulary ---------------------------------------------------------

def scenario_errors(body):
    from controller import scenario

    data = __import__("tomllib").loads('name = "x"\nduration_s = 100\n' + body)
    try:
        return scenario.parse(data, "s.toml")
    except scenario.ScenarioError as exc:
        return exc.errors


def test_scenarios_accept_every_input_and_output_fault_mode():
    body = "".join(f'[[at]]\nt = {k}\nfault = "crusher_running"\nmode = "{m}"\n'
                   for k, m in enumerate(INPUT_FAULT_MODES))
    body += '[[at]]\nt = 10\nfault = "horn"\nmode = "write_fail"\n'
    sc = scenario_errors(body)
    assert [(s.name, s.arg) for s in sc.steps] == \
        [("crusher_running", m) for m in INPUT_FAULT_MODES] + [("horn", "write_fail")]


def test_scenario_unknown_input_fault_mode_or_target_is_a_clear_error():
    errs = scenario_errors('[[at]]\nt = 1\nfault = "crusher_running"\nmode = "welded"\n')
    assert errs == ['s.toml: [[at]] #1 (t = 1) mode = "welded" must be one of "chatter", "drop", '
                    '"unreadable", "clear"']
    errs = scenario_errors('[[at]]\nt = 1\nfault = "estop_ok"\nmode = "drop"\n')
    assert len(errs) == 1, errs
    assert errs[0].startswith('s.toml: [[at]] #1 (t = 1) fault = "estop_ok" must be one of "o2_a"')
    assert '"crusher_running"' in errs[0]
